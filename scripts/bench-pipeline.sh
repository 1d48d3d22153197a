#!/usr/bin/env bash
# Speed of the whole pipeline on this machine (release builds, vLLM
# simulators at realistic latencies): the sustained request rate before p99
# time to first token doubles, and the overhead Triage adds to time to first
# token over calling the simulator directly, at half that rate.
#
#   scripts/bench-pipeline.sh [--rates "10 20 40 ..."] [--min-count N] [--step-seconds S]
#                             [--half-count N] [--out DIR] [--no-build]
#
# How it measures:
#   1. Builds the release binaries and starts sim-tier1, sim-tier2, the
#      router, one worker per tier and the ledger writer (scripts/local-stack.sh
#      with TRIAGE_PROFILE=release). Both simulators get the same latency
#      profile (TRIAGE_BENCH_TTFT_MS, default 40 ms; TRIAGE_BENCH_ITL_MS,
#      default 12 ms: an 8B model on vLLM under light load), so a direct call
#      to either is the same baseline. The router's score cache is off, so
#      every request is scored even when rows repeat.
#   2. Steps an open Poisson load (triage-replay run --mode open --poisson)
#      through the rates; each step sends max(--min-count, rate x
#      --step-seconds) requests. The reference is the first step's p99 time
#      to first token; the sustained rate is the last step whose p99 stays
#      within twice that, with under 1% errors and throughput within 10% of
#      the offered rate.
#   3. At half the sustained rate it runs the pipeline (routed, then the
#      same requests forced to tier 2 with --baseline: every hop but the
#      scoring) and then `triage-replay run --direct` (the same requests,
#      schedule and seed, straight to sim-tier1), and reports the
#      differences of their p50/p99: Triage's whole overhead, and the part
#      that is NATS, JetStream and the worker (the plumbing).
# Writes DIR/summary.json and one replay report per run (default
# replay-out/bench-pipeline). Needs NATS and Postgres (scripts/setup.sh) and
# no local stack already running.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRIAGE_ROOT"

rates="2 5 10 20 30 40 50 60 70 80 100"
min_count=200 step_seconds=10 half_count=600 build=1
out="replay-out/bench-pipeline"
while (($#)); do
    case $1 in
    --rates) rates=${2:?}; shift ;;
    --min-count) min_count=${2:?}; shift ;;
    --step-seconds) step_seconds=${2:?}; shift ;;
    --half-count) half_count=${2:?}; shift ;;
    --out) out=${2:?}; shift ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-pipeline: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
data=$TRIAGE_DATA_DIR/routing-dev.jsonl
[[ -f $data ]] || { echo "bench-pipeline: $data not found (set TRIAGE_DATA_DIR)" >&2; exit 1; }

export TRIAGE_PROFILE=release TRIAGE_BACKEND=sim
ttft=${TRIAGE_BENCH_TTFT_MS:-40} itl=${TRIAGE_BENCH_ITL_MS:-12}
export TRIAGE_SIM1_TTFT_MS=$ttft TRIAGE_SIM2_TTFT_MS=$ttft TRIAGE_SIM1_ITL_MS=$itl TRIAGE_SIM2_ITL_MS=$itl
export TRIAGE_ROUTER_SCORING__CACHE_CAPACITY=0
stack=scripts/local-stack.sh
components=(sim-tier1 sim-tier2 router worker-tier1 worker-tier2 ledger)
replay=$CARGO_TARGET_DIR/release/triage-replay

if "$stack" status | grep -q running; then
    echo "bench-pipeline: the local stack is running (scripts/local-stack.sh status); stop it first" >&2
    exit 1
fi
if ((build)); then
    step "release build"
    cargo build --release -p triage-router -p triage-worker -p triage-ledger -p triage-vllm-sim -p triage-replay
    done_ "built"
fi

cleanup() {
    local i
    for ((i = ${#components[@]} - 1; i >= 0; i--)); do "$stack" stop "${components[i]}" >/dev/null || true; done
}
trap cleanup EXIT
step "stack (release, simulators at ${ttft} ms ttft, ${itl} ms between tokens)"
"$stack" start "${components[@]}"
done_ "up"
mkdir -p "$out"

# run NAME ARGS...: one replay run into $out/NAME; prints nothing but errors.
run() {
    local name=$1
    shift
    "$replay" run --input "$data" --mode open --poisson --max-tokens 32 --ledger-wait 10s \
        --out "$out/$name" "$@" >"$out/$name.log" 2>&1 || {
        tail -n 20 "$out/$name.log" >&2
        return 1
    }
}
# field NAME EXPR [RUN]: a number from $out/NAME/report.json (EXPR on run
# number RUN, default 0, as `r`).
field() {
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["runs"][int(sys.argv[3])]; print(eval(sys.argv[2]))' \
        "$out/$1/report.json" "$2" "${3:-0}"
}

step "warm-up"
run warmup --rate 10 --count 50
done_ "50 requests"

step "rate steps"
printf '    %8s %8s %9s %9s %9s %8s\n' rate/s sent achieved ttft_p50 ttft_p99 errors
ref_p99='' sustained=0 steps_json=()
for rate in $rates; do
    count=$(python3 -c "print(max($min_count, int($rate * $step_seconds)))")
    run "rate-$rate" --rate "$rate" --count "$count"
    read -r sent thr p50 p99 err < <(field "rate-$rate" \
        '"%d %.1f %.1f %.1f %.4f" % (r["sent"], r["throughput_rps"], r["ttft_ms"]["p50"], r["ttft_ms"]["p99"], r["error_rate"])')
    printf '    %8s %8s %9s %9s %9s %8s\n' "$rate" "$sent" "$thr" "$p50" "$p99" "$err"
    steps_json+=("{\"rate\": $rate, \"sent\": $sent, \"throughput_rps\": $thr, \"ttft_p50_ms\": $p50, \"ttft_p99_ms\": $p99, \"error_rate\": $err}")
    [[ -n $ref_p99 ]] || ref_p99=$p99
    if python3 -c "import sys; sys.exit(0 if $p99 <= 2 * $ref_p99 and $err < 0.01 and $thr >= 0.9 * $rate else 1)"; then
        sustained=$rate
    else
        break
    fi
done
((sustained > 0)) || { echo "bench-pipeline: even the first rate was not sustained" >&2; exit 1; }
done_ "sustained $sustained req/s (reference p99 ttft $ref_p99 ms)"

half=$(python3 -c "print($sustained / 2)")
step "overhead at half the sustained rate ($half req/s, $half_count requests)"
run half-pipeline --rate "$half" --count "$half_count" --baseline
run half-direct --rate "$half" --count "$half_count" --direct "http://127.0.0.1:$TRIAGE_SIM1_PORT"
p5099='"%.2f %.2f" % (r["ttft_ms"]["p50"], r["ttft_ms"]["p99"])'
read -r pp50 pp99 < <(field half-pipeline "$p5099" 0)
read -r bp50 bp99 < <(field half-pipeline "$p5099" 1)
read -r dp50 dp99 < <(field half-direct "$p5099")
read -r o50 o99 b50 b99 < <(python3 -c "print('%.2f %.2f %.2f %.2f' % ($pp50 - $dp50, $pp99 - $dp99, $bp50 - $dp50, $bp99 - $dp99))")
note "time to first token, ms: routed p50 $pp50, p99 $pp99; forced to tier 2 (no scoring) p50 $bp50, p99 $bp99; direct p50 $dp50, p99 $dp99"
note "plumbing (NATS, JetStream, worker) adds $b50 ms p50, $b99 ms p99"
done_ "Triage adds $o50 ms p50, $o99 ms p99 to time to first token (plumbing alone $b50 / $b99)"

steps=$(IFS=,; printf '%s' "${steps_json[*]}")
cat >"$out/summary.json" <<JSON
{"simulator": {"ttft_ms": $ttft, "itl_ms": $itl}, "steps": [$steps],
 "reference_ttft_p99_ms": $ref_p99, "sustained_rps": $sustained, "half_rate_rps": $half,
 "pipeline_ttft_ms": {"p50": $pp50, "p99": $pp99}, "unscored_ttft_ms": {"p50": $bp50, "p99": $bp99},
 "direct_ttft_ms": {"p50": $dp50, "p99": $dp99},
 "overhead_ttft_ms": {"p50": $o50, "p99": $o99}, "plumbing_overhead_ttft_ms": {"p50": $b50, "p99": $b99}}
JSON
print_summary "bench-pipeline (summary: $out/summary.json)"
