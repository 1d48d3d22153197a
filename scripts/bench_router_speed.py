"""The sentence-transformers + PyTorch side of scripts/bench-router-speed.sh.

Runs all-MiniLM-L6-v2 on the prompts the Rust bench wrote (its
--prompts-out file: each case's texts and token budget) with the same
batch sizes, then prints both sides' prompts/s and the ratios. Timing
matches the Rust side: model loaded and warmed on the first batch, then
encode() (tokenising included) over all the case's texts.
"""

import argparse
import json
import os
import time

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer


def rate(model, texts, batch):
    model.encode(texts[:batch], batch_size=batch, normalize_embeddings=True)
    started = time.perf_counter()
    model.encode(texts, batch_size=batch, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - started)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="sentence-transformers model folder")
    p.add_argument("--prompts", required=True, help="the Rust bench's --prompts-out file")
    p.add_argument("--rust", required=True, help="the Rust bench's --results file")
    args = p.parse_args()
    with open(args.prompts, encoding="utf-8") as f:
        cases = {c["case"]: c for c in map(json.loads, f)}
    with open(args.rust, encoding="utf-8") as f:
        rust = [json.loads(line) for line in f]
    model = SentenceTransformer(args.model, device="cpu")
    torch_rates = {}
    with torch.inference_mode():
        for r in rust:
            case = cases.get(r["case"])
            if case is None:
                continue
            model.max_seq_length = case["tokens"]
            torch_rates[(r["case"], r["batch"])] = rate(model, case["texts"], r["batch"])
    print(
        f"\nsentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| prompts | batch | Triage (prompts/s) | sentence-transformers (prompts/s) | ratio |")
    print("|---|---|---|---|---|")
    dev_torch = torch_rates.get(("dev prompts", 32))
    for r in rust:
        theirs = torch_rates.get((r["case"], r["batch"]), dev_torch if r["case"] == "dev shipped" else None)
        ratio = f"{r['rate'] / theirs:.2f}x" if theirs else "—"
        label = r["case"] + (f" {r['note']}" if r.get("note") else "")
        theirs_s = f"{theirs:.1f}" if theirs else "—"
        print(f"| {label} | {r['batch']} | {r['rate']:.1f} | {theirs_s} | {ratio} |")


if __name__ == "__main__":
    main()
