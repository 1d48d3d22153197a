# shellcheck shell=bash
# Sourced by the scripts in this directory: the environment every script
# agrees on (cache layout, service URLs, ports) and the step/progress output.
# Every value can be overridden from the environment.

TRIAGE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TRIAGE_ROOT

# Downloaded models, the Python venv, the llama-server build, the Cargo target
# directory and the local stack's pid/log files live here, outside the repo.
export TRIAGE_CACHE=${TRIAGE_CACHE:-$HOME/.cache/triage}
export TRIAGE_VENV=${TRIAGE_VENV:-$TRIAGE_CACHE/venv}
export TRIAGE_MODELS=${TRIAGE_MODELS:-$TRIAGE_CACHE/models}
export TRIAGE_RUN=${TRIAGE_RUN:-$TRIAGE_CACHE/run}
# The labelled prompts (shipped in the repository; point elsewhere to use your own).
export TRIAGE_DATA_DIR=${TRIAGE_DATA_DIR:-$TRIAGE_ROOT/data}
export TRIAGE_LLAMA_SERVER=${TRIAGE_LLAMA_SERVER:-$TRIAGE_CACHE/bin/llama-server}

export TRIAGE_NATS_URL=${TRIAGE_NATS_URL:-nats://127.0.0.1:4222}
# The local 3-node cluster (scripts/local-stack.sh start nats-cluster).
export TRIAGE_NATS_CLUSTER_URL=${TRIAGE_NATS_CLUSTER_URL:-nats://127.0.0.1:4231,nats://127.0.0.1:4232,nats://127.0.0.1:4233}
export TRIAGE_DATABASE_URL=${TRIAGE_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/triage}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TRIAGE_CACHE/target}
# CI builds each clone once: incremental state would only fill the disk.
[[ -n ${CI:-} ]] && export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

# The local model servers standing in for the two vLLM tiers.
export TRIAGE_TIER1_PORT=${TRIAGE_TIER1_PORT:-8101}
export TRIAGE_TIER2_PORT=${TRIAGE_TIER2_PORT:-8102}
export TRIAGE_TIER1_MODEL=${TRIAGE_TIER1_MODEL:-$TRIAGE_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf}
export TRIAGE_TIER2_MODEL=${TRIAGE_TIER2_MODEL:-$TRIAGE_MODELS/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
export TRIAGE_SIM1_PORT=${TRIAGE_SIM1_PORT:-8111}
export TRIAGE_SIM2_PORT=${TRIAGE_SIM2_PORT:-8112}
export TRIAGE_TIER1_ALIAS=${TRIAGE_TIER1_ALIAS:-smollm2-135m-instruct}
export TRIAGE_TIER2_ALIAS=${TRIAGE_TIER2_ALIAS:-qwen2.5-coder-0.5b-instruct}
export TRIAGE_LLAMA_THREADS=${TRIAGE_LLAMA_THREADS:-2}
export TRIAGE_LLAMA_CONTEXT=${TRIAGE_LLAMA_CONTEXT:-4096}

if [[ -t 1 ]]; then
    _bold=$'\e[1m' _green=$'\e[32m' _yellow=$'\e[33m' _red=$'\e[31m' _reset=$'\e[0m'
else
    _bold='' _green='' _yellow='' _red='' _reset=''
fi

_now_ms() { date +%s%3N; }

# One line per step in the final summary: "status|name|seconds|detail".
TRIAGE_STEPS=()
_step_name=''
_step_start=0

# step NAME: starts a step; its outcome is reported by skip/done/die.
step() {
    _step_name=$1
    _step_start=$(_now_ms)
    printf '%s==> %s%s\n' "$_bold" "$_step_name" "$_reset"
}

_step_secs() { awk -v ms=$(($(_now_ms) - _step_start)) 'BEGIN { printf "%.1f", ms / 1000 }'; }

# skip REASON: the step had nothing to do.
skip() {
    local t
    t=$(_step_secs)
    printf '    %sskipped%s: %s (%ss)\n' "$_green" "$_reset" "$1" "$t"
    TRIAGE_STEPS+=("skipped|$_step_name|$t|$1")
}

# done_ WHAT: the step did WHAT.
done_() {
    local t
    t=$(_step_secs)
    printf '    %sdone%s: %s (%ss)\n' "$_green" "$_reset" "$1" "$t"
    TRIAGE_STEPS+=("done|$_step_name|$t|$1")
}

note() { printf '    %s\n' "$*"; }
warn() { printf '    %swarning%s: %s\n' "$_yellow" "$_reset" "$*" >&2; }

# die MESSAGE: the current step failed; says which and why, then exits 1.
die() {
    printf '%serror%s%s: %s\n' "$_red" "$_reset" "${_step_name:+ in step \"$_step_name\"}" "$*" >&2
    exit 1
}

# print_summary TITLE: the table of steps run so far.
print_summary() {
    local line status name secs detail
    printf '\n%s%s%s\n' "$_bold" "$1" "$_reset"
    for line in "${TRIAGE_STEPS[@]}"; do
        IFS='|' read -r status name secs detail <<<"$line"
        printf '  %-8s %-44s %6ss  %s\n' "$status" "$name" "$secs" "$detail"
    done
}

# url_host URL / url_port URL DEFAULT / url_path URL: pieces of the first URL
# of a comma-separated list (credentials and query dropped).
_url_authority() {
    local url=${1%%,*}
    url=${url#*://}
    url=${url%%/*}
    url=${url%%\?*}
    printf '%s' "${url##*@}"
}
url_host() {
    local a
    a=$(_url_authority "$1")
    if [[ $a == \[* ]]; then a=${a%%]*}; printf '%s' "${a#[}"; else printf '%s' "${a%%:*}"; fi
}
url_port() {
    local a
    a=$(_url_authority "$1")
    a=${a##*]}
    if [[ $a == *:* ]]; then printf '%s' "${a##*:}"; else printf '%s' "$2"; fi
}
url_path() {
    local url=${1%%,*}
    url=${url#*://}
    if [[ $url == */* ]]; then url=${url#*/}; printf '%s' "${url%%\?*}"; fi
}
is_local_host() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

# mask_url URL: the URL (or comma-separated list) with every credential
# replaced by ***, for printing: the same rules as triage_runtime::mask_url
# (user:password@, a NATS token@, secret-named query parameters), which a
# Rust test checks this against.
mask_url() {
    printf '%s' "$1" | sed -E \
        -e 's#((^|,|://)[^/@,:?]*):[^,/?\#]*@#\1:***@#g' \
        -e 's#((^|,)((nats|tls|ws|wss)://)?)[^/@,:?]+@#\1***@#g' \
        -e 's#([?&][^=&\#,]*([Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]|[Ss][Ee][Cc][Rr][Ee][Tt]|[Tt][Oo][Kk][Ee][Nn]|[Aa][Pp][Ii]_?[Kk][Ee][Yy]|[Cc][Rr][Ee][Dd][Ss])[^=&\#,]*=)[^&\#,]+#\1***#g'
}

# nats_info HOST PORT: prints the server's INFO line; fails if nothing
# answers within 5 s (an unroutable host must not hang the set-up).
nats_info() {
    local line
    line=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2" && IFS= read -r -t 3 line <&3 && printf "%s" "$line"' _ "$1" "$2" 2>/dev/null) || return 1
    [[ $line == INFO* ]] || return 1
    printf '%s\n' "$line"
}

# wait_for DESCRIPTION SECONDS COMMAND...: retries COMMAND every half second.
wait_for() {
    local what=$1 secs=$2
    shift 2
    local deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < deadline)) || return 1
        sleep 0.5
    done
    note "$what is answering"
}
