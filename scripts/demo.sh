#!/usr/bin/env bash
# The README's main job: the whole pipeline locally. Sets up (first run:
# downloads and builds, with progress), brings up NATS and Postgres (if
# needed), two model servers standing in for the vLLM tiers, the router with
# the real embedding model, a worker per tier, the ledger writer and the cost
# exporter and the OpenAI-compatible gateway; replays a sample of
# data/routing-dev.jsonl through it, asks the gateway once with the openai
# SDK and curl,
# streams a few answers to the terminal and prints the report (terminal,
# JSON and an HTML page with plots). Stops what it started at the end.
#
#   scripts/demo.sh [--sim] [--vllm] [--sample N] [--max-tokens N] [--baseline] [--keep] [--no-setup]
#     (default)     real local models on llama-server: SmolLM2-135M as tier 1,
#                   Qwen2.5-0.5B as tier 2 and as the router's self-rating model
#     --sim         vLLM simulators at realistic latencies instead (fast; larger samples)
#     --vllm        real vLLM servers: set TRIAGE_TIER1_URL and TRIAGE_TIER2_URL
#     --sample N    prompts to replay (default 12; 200 with --sim)
#     --baseline    also replay everything forced to tier 2, side by side
#     --keep        leave the stack running (stop: scripts/local-stack.sh stop)
#     --no-setup    skip scripts/setup.sh
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

keep=0 setup=1 max_tokens=48 sample='' baseline=()
export TRIAGE_BACKEND=llama
while (($#)); do
    case $1 in
    --keep) keep=1 ;;
    --no-setup) setup=0 ;;
    --sim) TRIAGE_BACKEND=sim ;;
    --vllm) TRIAGE_BACKEND=vllm ;;
    --baseline) baseline=(--baseline) ;;
    --sample) sample=${2:?--sample needs a number}; shift ;;
    --max-tokens) max_tokens=${2:?--max-tokens needs a number}; shift ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ -n $sample ]] || { [[ $TRIAGE_BACKEND == sim ]] && sample=200 || sample=12; }
data=$TRIAGE_DATA_DIR/routing-dev.jsonl
[[ -f $data ]] || { echo "demo: $data not found (set TRIAGE_DATA_DIR to the folder holding routing-dev.jsonl)" >&2; exit 1; }

stack=$TRIAGE_ROOT/scripts/local-stack.sh
gateway=${TRIAGE_GATEWAY_LISTEN:-127.0.0.1:8080}
started=()
cleanup() {
    ((keep)) && { echo "left running: ${started[*]:-nothing new} (stop with scripts/local-stack.sh stop)"; return; }
    # Stop in reverse: the router first, so nothing new reaches the workers.
    local i
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do "$stack" stop "${started[i]}" || true; done
    return 0
}
trap cleanup EXIT

# up COMPONENT...: starts what is not running yet; stops at the end only
# what this run started.
up() {
    local c
    for c in "$@"; do
        "$stack" status "$c" | grep -q running || started+=("$c")
        "$stack" start "$c"
    done
}

((setup)) && "$TRIAGE_ROOT/scripts/setup.sh"

case $TRIAGE_BACKEND in
llama)
    step "model servers (llama-server: tier stand-ins)"
    up llama-tier1 llama-tier2
    export TRIAGE_SELF_RATING=true
    # The rating model shares 2 CPU cores with both tiers here; a GPU
    # router model answers in tens of milliseconds.
    export TRIAGE_SELF_RATING_TIMEOUT=${TRIAGE_SELF_RATING_TIMEOUT:-8s}
    done_ "tier 1 $TRIAGE_TIER1_ALIAS on :$TRIAGE_TIER1_PORT, tier 2 $TRIAGE_TIER2_ALIAS on :$TRIAGE_TIER2_PORT"
    ;;
sim)
    step "vLLM simulators"
    up sim-tier1 sim-tier2
    export TRIAGE_SELF_RATING=false
    done_ "tier 1 on :$TRIAGE_SIM1_PORT, tier 2 on :$TRIAGE_SIM2_PORT"
    ;;
vllm)
    step "vLLM servers"
    export TRIAGE_SELF_RATING=${TRIAGE_SELF_RATING:-false}
    done_ "tier 1 $TRIAGE_TIER1_URL, tier 2 $TRIAGE_TIER2_URL"
    ;;
esac

step "Triage services"
up ledger cost-exporter worker-tier1 worker-tier2 router gateway
done_ "router :9101, workers :9472/:9473, ledger :9470, cost exporter :9471 (/metrics each), gateway :${gateway##*:}"

step "replay $sample prompts of routing-dev.jsonl"
out=$TRIAGE_ROOT/replay-out/demo-$(date +%Y%m%d-%H%M%S)
"$CARGO_TARGET_DIR/debug/triage-replay" run --input "$data" --sample "$sample" --mode closed --concurrency 2 \
    --max-tokens "$max_tokens" --show-answers 3 "${baseline[@]}" --out "$out"
done_ "report: $out/report.html"

step "one answer through the gateway (the OpenAI API)"
# What an application does: the official openai SDK, and the same with curl.
"$TRIAGE_VENV/bin/python" - "http://$gateway/v1" <<'PY' || die "the gateway did not answer the openai SDK"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused")
r = client.chat.completions.create(
    model="triage-auto", max_tokens=24,
    messages=[{"role": "user", "content": "What is the capital of France?"}])
print("    openai SDK:", " ".join(r.choices[0].message.content.split())[:200])
print("    routing:   ", (r.model_extra or {}).get("triage"))
PY
printf '    curl:       '
curl -fsS "http://$gateway/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "triage-auto", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello."}]}' |
    head -c 400 || die "the gateway did not answer curl"
echo
done_ "answered on http://$gateway/v1"

step "cost exporter"
curl -fs http://127.0.0.1:9471/metrics | grep -E '^triage_(cost_usd|baseline_cost_usd|savings_usd|savings_ratio)' | head -8 || true
done_ "scraped"

print_summary "Demo finished"
