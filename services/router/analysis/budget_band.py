"""What `batching.model_budget` costs in quality on dev, with budgeted
texts compared with the routing threshold (before) and with the band
threshold that keeps the transformer's tier-2 share of the first stage's
band (`band_share.rs`, now).

    triage-router calibrate --input data/routing-dev.jsonl --scores-out SHIPPED
    TRIAGE_ROUTER_SCORING__FIRST_STAGE__LOWER=0.5 \\
    TRIAGE_ROUTER_SCORING__FIRST_STAGE__UPPER=0.5 \\
        triage-router calibrate --input data/routing-dev.jsonl --scores-out FIRST
    python3 services/router/analysis/budget_band.py data SHIPPED FIRST

SHIPPED holds each prompt's score on the shipped two-stage path, FIRST its
first-stage score (the band emptied, so the first stage decides every
text). The budget refuses the texts whose pass would not finish in time,
the longest first, so the script budgets the longest share q of the band's
texts; the band share is learned, as live, from the band texts the
transformer did score (at q = 1, from the whole band: a router warmed
before the load).
"""

import json
import sys

import numpy as np

data_dir, shipped_path, first_path = sys.argv[1:4]
PRICE = 8.0
THRESHOLD = 0.65  # scoring.threshold
LOWER, UPPER = 0.35, 0.65  # the shipped band

rows = [json.loads(line) for line in open(f"{data_dir}/routing-dev.jsonl")]
shipped = {o["id"]: o for o in map(json.loads, open(shipped_path))}
first = {o["id"]: o for o in map(json.loads, open(first_path))}
small = np.array([r["small_ok"] for r in rows], float)
large = np.array([r["large_ok"] for r in rows], float)
gain, gap, n = large - small, large.sum() - small.sum(), len(rows)
score = np.array([shipped[r["id"]]["score"] for r in rows])
stage1 = np.array([first[r["id"]]["score"] for r in rows])
length = np.array([len(r["prompt"]) for r in rows])
# Rule-forced prompts never reach the band.
forced = np.array([shipped[r["id"]]["rule"] is not None for r in rows])
band = (stage1 >= LOWER) & (stage1 < UPPER) & ~forced
by_length = np.where(band)[0][np.argsort(-length[band], kind="stable")]
print(f"dev: {n} prompts, {band.sum()} in the band [{LOWER}, {UPPER}) ({band.mean():.1%})")
print(f"the transformer sends {np.mean(score[band] >= THRESHOLD):.1%} of the band to tier 2")


def outcome(tier2):
    cost = (tier2.sum() + (~tier2).sum() / PRICE) / n
    return tier2.mean(), cost, gain[tier2].sum() / gap


print("budgeted share of band | decided by | tier 2 | cost | PGR")
for q in (0.0, 0.1, 0.25, 0.5, 1.0):
    budgeted = np.zeros(n, bool)
    budgeted[by_length[: int(round(q * len(by_length)))]] = True
    scored = band & ~budgeted if q < 1.0 else band
    share = np.mean(score[scored] >= THRESHOLD)
    window = np.sort(stage1[scored])
    top = min(max(int(np.ceil(share * len(window))), 1), len(window))
    band_threshold = window[len(window) - top] if share > 0 else np.inf
    base = score >= THRESHOLD
    before = np.where(budgeted, stage1 >= THRESHOLD, base)
    now = np.where(budgeted, stage1 >= band_threshold, base)
    for label, tier2 in (("routing threshold (before)", before), (f"band threshold {band_threshold:.3f}", now)):
        s, cost, pgr = outcome(tier2)
        print(f"  {q:4.0%} | {label} | {s:.1%} | {cost:.3f} | {pgr:.3f}")
