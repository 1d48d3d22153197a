#!/usr/bin/env bash
# What shadow sampling costs: the same open load through the pipeline with
# the workers sampling no answers and then --fraction of them, reporting
# the client's throughput and time to first token and, from the ledger,
# the tokens and cost of the shadow answers and judge calls against the
# answers' own (README, "Learning from your own traffic").
#
#   scripts/bench-shadow.sh [--fraction 0.1] [--rate 25] [--count 600] [--out DIR] [--no-build]
#
# Release builds; both simulators at the pipeline benchmark's latencies
# (TRIAGE_BENCH_TTFT_MS 40, TRIAGE_BENCH_ITL_MS 12); sim-tier1, sim-tier2,
# the router, one worker per tier, the ledger writer and triage-shadow (its
# judge is tier 2's simulator, whose pseudo-text carries no rating, so the
# judge calls are booked but give no grade: their prompt tokens are real,
# their completions as long as the simulator's). 25 req/s is half the
# pipeline's sustained rate. Writes DIR/summary.json (default
# replay-out/bench-shadow). Needs NATS and Postgres (scripts/setup.sh) and
# no local stack already running.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRIAGE_ROOT"

fraction=0.1 rate=25 count=600 build=1 out=replay-out/bench-shadow
while (($#)); do
    case $1 in
    --fraction) fraction=${2:?}; shift ;;
    --rate) rate=${2:?}; shift ;;
    --count) count=${2:?}; shift ;;
    --out) out=${2:?}; shift ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-shadow: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
data=$TRIAGE_DATA_DIR/routing-dev.jsonl
[[ -f $data ]] || { echo "bench-shadow: $data not found (set TRIAGE_DATA_DIR)" >&2; exit 1; }
db=${TRIAGE_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/triage}

export TRIAGE_PROFILE=release TRIAGE_BACKEND=sim
ttft=${TRIAGE_BENCH_TTFT_MS:-40} itl=${TRIAGE_BENCH_ITL_MS:-12}
export TRIAGE_SIM1_TTFT_MS=$ttft TRIAGE_SIM2_TTFT_MS=$ttft TRIAGE_SIM1_ITL_MS=$itl TRIAGE_SIM2_ITL_MS=$itl
export TRIAGE_ROUTER_SCORING__CACHE_CAPACITY=0
stack=scripts/local-stack.sh
base=(sim-tier1 sim-tier2 router ledger shadow)
workers=(worker-tier1 worker-tier2)
replay=$CARGO_TARGET_DIR/release/triage-replay

if "$stack" status | grep -q running; then
    echo "bench-shadow: the local stack is running (scripts/local-stack.sh status); stop it first" >&2
    exit 1
fi
if ((build)); then
    step "release build"
    cargo build --release -p triage-router -p triage-worker -p triage-ledger -p triage-vllm-sim \
        -p triage-replay -p triage-shadow
    done_ "built"
fi
cleanup() {
    "$stack" stop "${workers[@]}" >/dev/null 2>&1 || true
    local i
    for ((i = ${#base[@]} - 1; i >= 0; i--)); do "$stack" stop "${base[i]}" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
step "stack (release, simulators at ${ttft} ms ttft, ${itl} ms between tokens)"
"$stack" start "${base[@]}"
done_ "up"
mkdir -p "$out"

sql() { psql "$db" -Atqc "$1"; }
# settled SINCE: waits until the shadow and judge rows booked since SINCE
# stop growing (the shadow service works through its backlog), at most 3 min.
settled() {
    local last=-1 n i
    for ((i = 0; i < 180; i++)); do
        n=$(sql "SELECT count(*) FROM ledger_entries WHERE booked_at >= '$1' AND status IN ('shadow', 'judge')")
        [[ $n == "$last" ]] && return 0
        last=$n
        sleep 5
    done
}
# measure NAME FRACTION: workers sampling FRACTION, one replay run, its figures.
measure() {
    local name=$1 f=$2 since
    "$stack" stop "${workers[@]}" >/dev/null 2>&1 || true
    TRIAGE_SHADOW_FRACTION=$f "$stack" start "${workers[@]}" >/dev/null
    "$replay" run --input "$data" --mode open --poisson --rate 10 --count 50 --max-tokens 32 \
        --out "$out/$name-warmup" >"$out/$name-warmup.log" 2>&1
    since=$(sql "SELECT now()")
    "$replay" run --input "$data" --mode open --poisson --rate "$rate" --count "$count" --max-tokens 32 \
        --ledger-wait 10s --out "$out/$name" >"$out/$name.log" 2>&1 || {
        tail -n 20 "$out/$name.log" >&2
        return 1
    }
    settled "$since"
    python3 - "$out/$name/report.json" "$f" "$(sql "SELECT status, count(*), sum(prompt_tokens + completion_tokens), sum(cost)
        FROM ledger_entries WHERE booked_at >= '$since' GROUP BY status ORDER BY status")" >"$out/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
rows = {}
for line in sys.argv[3].splitlines():
    status, n, tokens, cost = line.split("|")
    rows[status] = {"rows": int(n), "tokens": int(tokens), "cost_usd": float(cost)}
print(json.dumps({"fraction": float(sys.argv[2]), "sent": r["sent"], "throughput_rps": r["throughput_rps"],
                  "ttft_p50_ms": r["ttft_ms"]["p50"], "ttft_p99_ms": r["ttft_ms"]["p99"],
                  "error_rate": r["error_rate"], "ledger": rows}))
PY
}

step "no sampling"
measure off 0
done_ "measured"
step "sampling $fraction of answers"
measure on "$fraction"
done_ "measured"

python3 - "$out/off.json" "$out/on.json" "$out/summary.json" <<'PY'
import json, sys
off, on = (json.load(open(p)) for p in sys.argv[1:3])
def spend(run, statuses):
    return sum(v["cost_usd"] for s, v in run["ledger"].items() if s in statuses)
def tokens(run, statuses):
    return sum(v["tokens"] for s, v in run["ledger"].items() if s in statuses)
served = ("ok", "error", "cancelled", "interrupted")
extra = ("shadow", "judge")
print(f"    {'sampling':>9} {'sent':>5} {'req/s':>6} {'ttft p50':>9} {'ttft p99':>9} {'errors':>7} {'answer $':>10} {'shadow+judge $':>15} {'overhead':>9}")
for run in (off, on):
    own, more = spend(run, served), spend(run, extra)
    print(f"    {run['fraction']:>9.2f} {run['sent']:>5} {run['throughput_rps']:>6.1f} {run['ttft_p50_ms']:>9.1f} "
          f"{run['ttft_p99_ms']:>9.1f} {run['error_rate']:>7.4f} {own:>10.5f} {more:>15.5f} {100 * more / own if own else 0:>8.1f}%")
shadow_rows = on["ledger"].get("shadow", {}).get("rows", 0)
print(f"    shadowed {shadow_rows} of {on['sent']} answers; judge calls {on['ledger'].get('judge', {}).get('rows', 0)}; "
      f"tokens: answers {tokens(on, served)}, shadow {tokens(on, ('shadow',))}, judge {tokens(on, ('judge',))}")
json.dump({"off": off, "on": on}, open(sys.argv[3], "w"), indent=1)
PY
print_summary "bench-shadow (summary: $out/summary.json)"
