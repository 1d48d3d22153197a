#!/usr/bin/env bash
# The README's test command (and CI's, via .ci/run): set up, then run every
# test suite — the Rust workspace (cargo-nextest when installed, else cargo
# test; doc tests with cargo test; it includes the gateway's end-to-end tests,
# which drive the official `openai` package from the venv and `curl -N`), the
# Python and JavaScript clients' tests, a short run of every fuzz target
# (scripts/fuzz.sh), the chaos suite's short form (scripts/chaos.sh --short:
# last, so no other suite shares the machine with its kills; it restarts
# its own private Postgres once) and a lint of these scripts (when
# the shellcheck tool is installed). Runs all
# suites even when one fails, prints a summary, exits non-zero on any failure.
#
#   scripts/test.sh [PACKAGE SELECTION]   e.g. -p triage-protocol (default: --workspace)
#   TRIAGE_TEST_SKIP_SETUP=1   skip scripts/setup.sh
#   TRIAGE_TEST_TIMEOUT=60m    limit of the whole Rust suite without cargo-nextest
#   CI=true                    tests needing the set-up's files fail, never skip (.ci/run sets it)
set -uo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRIAGE_ROOT" || exit 1
total_start=$(_now_ms)

if [[ ${TRIAGE_TEST_SKIP_SETUP:-0} != 1 ]]; then
    scripts/setup.sh || { echo "test: set-up failed, no tests run" >&2; exit 1; }
fi

failed=()
# suite NAME COMMAND...: runs one suite, records its outcome and time.
suite() {
    local name=$1 rc
    shift
    step "$name"
    printf '    $ %s\n' "$*"
    "$@"
    rc=$?
    if ((rc == 0)); then
        done_ "passed"
    else
        TRIAGE_STEPS+=("FAILED|$_step_name|$(_step_secs)|exit code $rc")
        printf '    %sFAILED%s (exit code %s)\n' "$_red" "$_reset" "$rc"
        failed+=("$name")
    fi
}

# Arguments select packages instead of the whole workspace (e.g. -p triage-protocol).
scope=("$@")
((${#scope[@]})) || scope=(--workspace)
# nextest reads .config/nextest.toml: a hung test fails after its time limit.
# cargo test has no per-test limit, so the whole suite gets one instead.
if cargo nextest --version >/dev/null 2>&1; then
    suite "Rust tests (nextest)" cargo nextest run --no-fail-fast "${scope[@]}"
    suite "Rust doc tests" cargo test --doc "${scope[@]}"
else
    warn "cargo-nextest is not installed: no per-test time limit, ${TRIAGE_TEST_TIMEOUT:-60m} for all tests"
    suite "Rust tests" timeout -k 30s "${TRIAGE_TEST_TIMEOUT:-60m}" cargo test --no-fail-fast "${scope[@]}"
fi
if command -v shellcheck >/dev/null; then
    suite "shell scripts (shellcheck)" shellcheck -x -P SCRIPTDIR/.. -S warning scripts/*.sh .ci/run
fi
suite "fuzz targets, short form (RUNS=${TRIAGE_FUZZ_RUNS:-20000} each)" env RUNS="${TRIAGE_FUZZ_RUNS:-20000}" scripts/fuzz.sh
suite "Python client tests" "$TRIAGE_VENV/bin/python" -m unittest discover -s clients/python/tests -v
suite "JavaScript client tests" node --test clients/js/test/
suite "chaos suite, short form (300 requests under SIGKILLs, Postgres restarted once)" scripts/chaos.sh --short

print_summary "Test summary ($(awk -v ms=$(($(_now_ms) - total_start)) 'BEGIN { printf "%.0f", ms / 1000 }') s in all)"
if ((${#failed[@]})); then
    printf '%sFAILED%s: %s\n' "$_red" "$_reset" "${failed[*]}"
    exit 1
fi
printf '%sall test suites passed%s\n' "$_green" "$_reset"
