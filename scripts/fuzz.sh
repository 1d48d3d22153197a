#!/usr/bin/env bash
# Runs every libFuzzer target of fuzz/ (cargo-fuzz) for RUNS executions each
# and prints a table: target, executions, seconds, result. Corpora are seeded
# from schemas/examples (and a few SSE, subject and TOML seeds) into
# $TRIAGE_CACHE/fuzz/corpus/<target>, kept between runs. A crash stops that
# target, leaves its input under fuzz/artifacts/ and fails the script.
#
#   scripts/fuzz.sh                 1,000,000 executions per target
#   RUNS=20000 scripts/fuzz.sh      the short form the test command runs
#   scripts/fuzz.sh sse_parser      one target
#
# cargo-fuzz runs on the stable toolchain here: no sanitizer (--sanitizer
# none: libFuzzer's coverage instrumentation is stable), RUSTC_BOOTSTRAP=1 for
# the one unstable flag cargo-fuzz passes.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRIAGE_ROOT/fuzz"
RUNS=${RUNS:-1000000}
export RUSTC_BOOTSTRAP=1
# One build directory for every clone, like the workspace's.
export CARGO_TARGET_DIR=$TRIAGE_CACHE/fuzz-target
command -v cargo-fuzz >/dev/null || die "cargo-fuzz is not installed (scripts/setup.sh installs it)"

targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo fuzz list)
corpus=$TRIAGE_CACHE/fuzz/corpus
ex=$TRIAGE_ROOT/schemas/examples

seed() {
    local target=$1 dir=$corpus/$1
    mkdir -p "$dir"
    case $target in
        request_decode) cp "$ex"/request/* "$dir"/ ;;
        reply_decode) cp "$ex"/reply/* "$dir"/ ;;
        usage_decode) cp "$ex"/usage_event/* "$dir"/ ;;
        sse_parser)
            printf 'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n' >"$dir/stream"
            printf ': keep-alive\r\nevent: error\r\ndata: {"error":{"message":"x"}}\r\n\r\n' >"$dir/error" ;;
        reply_subject) printf '_INBOX.abc.1' >"$dir/inbox"; printf '_GW.gw1.7' >"$dir/gw"; printf 'llm.tier2' >"$dir/own" ;;
        config_loader)
            printf 'url = "nats://u:p@a:4222,nats://b:4222"\nprefix = "acme"\n' >"$dir/nats"
            printf '[streams.requests]\nmax_bytes = 1048576\n' >"$dir/streams" ;;
    esac
}

cargo fuzz build --sanitizer none -O >/dev/null 2>&1 || cargo fuzz build --sanitizer none -O
printf '%-16s %12s %9s  %s\n' target executions seconds result
status=0
for t in "${targets[@]}"; do
    seed "$t"
    log=$(mktemp)
    start=$(_now_ms)
    if cargo fuzz run --sanitizer none -O "$t" "$corpus/$t" -- -runs="$RUNS" -max_len=4096 >"$log" 2>&1; then
        result="0 crashes"
    else
        result="CRASH (see fuzz/artifacts/$t; log below)"
        status=1
    fi
    done_runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo 0)
    printf '%-16s %12s %9s  %s\n' "$t" "$done_runs" \
        "$(awk -v ms=$(($(_now_ms) - start)) 'BEGIN { printf "%.1f", ms / 1000 }')" "$result"
    ((status == 0)) || tail -n 30 "$log"
    rm -f "$log"
done
exit "$status"
