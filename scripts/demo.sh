#!/usr/bin/env bash
# The README's main job. For now: set up, bring up the two local model
# servers that stand in for the vLLM tiers (SmolLM2-135M as tier 1, Qwen2.5-
# Coder-0.5B as tier 2), show each answering a prompt, and stop them again.
# Later issues add the router, the workers, the ledger and replay as further
# stages below (each a component of scripts/local-stack.sh).
#
#   scripts/demo.sh [--keep] [--no-setup] [--max-tokens N]
#     --keep        leave the servers running (stop: scripts/local-stack.sh stop)
#     --no-setup    skip scripts/setup.sh (when it has just run)
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

keep=0 setup=1 max_tokens=64
while (($#)); do
    case $1 in
    --keep) keep=1 ;;
    --no-setup) setup=0 ;;
    --max-tokens) max_tokens=${2:?--max-tokens needs a number}; shift ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

stack=$TRIAGE_ROOT/scripts/local-stack.sh
started=()
cleanup() {
    ((keep)) && { echo "left running: ${started[*]:-nothing new} (stop with scripts/local-stack.sh stop)"; return; }
    ((${#started[@]})) && "$stack" stop "${started[@]}"
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

step "local model servers (tier stand-ins)"
up llama-tier1 llama-tier2
done_ "tier 1 on :$TRIAGE_TIER1_PORT, tier 2 on :$TRIAGE_TIER2_PORT"

step "tier 1 answers ($TRIAGE_TIER1_ALIAS)"
"$TRIAGE_VENV/bin/python" "$TRIAGE_ROOT/scripts/chat.py" --url "http://127.0.0.1:$TRIAGE_TIER1_PORT" \
    --model "$TRIAGE_TIER1_ALIAS" --max-tokens "$max_tokens" \
    "In two sentences: why send easy questions to a small language model?"
done_ "streamed"

step "tier 2 answers ($TRIAGE_TIER2_ALIAS)"
"$TRIAGE_VENV/bin/python" "$TRIAGE_ROOT/scripts/chat.py" --url "http://127.0.0.1:$TRIAGE_TIER2_PORT" \
    --model "$TRIAGE_TIER2_ALIAS" --max-tokens "$max_tokens" \
    "Write a Python function that checks whether a string is a palindrome."
done_ "streamed"

print_summary "Demo finished"
