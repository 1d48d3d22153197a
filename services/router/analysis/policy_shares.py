"""Two analyses behind the router README's "Verifying tier 1's answer"
section that need no model: how well the answer's length alone ranks poor
answers per open-ended source (why the verifier has a head per question
kind), and what the combined policy does on dev when its thresholds are
applied as train's traffic shares instead of scores, or with the router
left at its own `scoring.threshold`.

    triage-router calibrate --input data/routing-dev.jsonl --scores-out S
    python3 services/router/analysis/policy_shares.py data S

With `--live L`, L from `TRIAGE_ROUTER_SCORING__SHARE__TARGET=0.3403
triage-router score --input data/routing-dev.jsonl --output L` (the
router keeping its share in arrival order, as live), it also replays a
tier-1 worker's `verify.share` window over those answers in the same
order (warm-up at the file's verify_threshold included) — a check of
`score`'s own `verify_tier` with `TRIAGE_ROUTER_VERIFY__SHARE__TARGET=0.117`
as well, which gives the same row.

The shares are the ones `train-verifier` printed for the shipped pair
(hard >= 0.75: 34.0% direct, 7.7% escalated) and its runners-up; pass
others with --shares D:E,D:E.
"""

import json
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

data_dir, scores_path = sys.argv[1:3]
shares = [(0.340, 0.077), (0.376, 0.046), (0.413, 0.014)]
if "--shares" in sys.argv:
    raw = sys.argv[sys.argv.index("--shares") + 1]
    shares = [tuple(float(v) for v in pair.split(":")) for pair in raw.split(",")]
PRICE = 8.0
VERIFY = 0.8249  # the shipped verify_threshold
ROUTER = 0.65  # the router's scoring.threshold
HARD = 0.75  # the shipped hard_threshold


def rows_of(name):
    return [json.loads(line) for line in open(f"{data_dir}/routing-{name}.jsonl")]


print("answer length alone against poor answers (shorter = poorer):")
for split in ("train", "dev"):
    for source in ("alpacaeval", "arena-bench-v1"):
        rows = [r for r in rows_of(split) if r["source"].startswith(source)]
        if not rows:
            continue
        poor = np.array([not r["small_ok"] for r in rows])
        length = np.array([len(r["small_response"]) for r in rows], float)
        print(f"  {split} {source}: {len(rows)} rows, {poor.mean():.0%} poor, AUC {roc_auc_score(poor, -length):.3f}")

rows = rows_of("dev")
scores = {o["id"]: o for o in map(json.loads, open(scores_path))}
small = np.array([r["small_ok"] for r in rows], bool)
large = np.array([r["large_ok"] for r in rows], bool)
verify = np.array([scores[r["id"]]["verify"] for r in rows])
router = np.array([scores[r["id"]]["score"] for r in rows])
n, gain, gap = len(rows), large.astype(float) - small, large.sum() - small.sum()


def outcome(direct, escalated):
    cost = (direct.sum() + (~direct).sum() / PRICE + escalated.sum()) / n
    return cost, (gain[direct].sum() + gain[escalated].sum()) / gap


print("dev, thresholds as train's shares applied to dev's own scores:")
for d, e in shares:
    cut = np.quantile(router, 1 - d)
    direct = router >= cut
    rest = np.where(~direct)[0]
    escalated = np.zeros(n, bool)
    escalated[rest[np.argsort(-verify[rest], kind="stable")[: int(round(e * n))]]] = True
    cost, pgr = outcome(direct, escalated)
    print(f"  direct {d:.1%}, escalated {e:.1%}: router threshold {cut:.3f}, cost {cost:.3f}, PGR {pgr:.3f}")
print("dev, score thresholds as a live deployment applies them:")
for hard in (HARD, ROUTER):
    direct = router >= hard
    escalated = ~direct & (verify >= VERIFY)
    cost, pgr = outcome(direct, escalated)
    print(f"  router >= {hard}, verify >= {VERIFY}: direct {direct.mean():.1%}, "
          f"escalated {escalated.mean():.1%}, cost {cost:.3f}, PGR {pgr:.3f}")
cost, pgr = outcome(router >= ROUTER, np.zeros(n, bool))
print(f"  router >= {ROUTER}, no verification: cost {cost:.3f}, PGR {pgr:.3f}")

if "--live" in sys.argv:
    from bisect import bisect_left, insort
    from collections import deque

    live = {o["id"]: o for o in map(json.loads, open(sys.argv[sys.argv.index("--live") + 1]))}
    target, window, min_scores = 0.117, 2000, 200  # verify.share as configured
    arrivals, ordered = deque(), []
    direct = np.array([live[r["id"]]["tier"] == 2 for r in rows])
    escalated = np.zeros(n, bool)
    for i, r in enumerate(rows):
        if direct[i]:
            continue
        v = live[r["id"]]["verify_score"]
        if len(arrivals) == window:
            ordered.pop(bisect_left(ordered, arrivals.popleft()))
        arrivals.append(v)
        insort(ordered, v)
        k = len(ordered)
        cut = ordered[k - min(k, max(1, int(np.ceil(target * k))))] if k >= min_scores else VERIFY
        escalated[i] = v >= cut
    cost, pgr = outcome(direct, escalated)
    print(f"dev in arrival order, router scoring.share.target 0.3403 and worker verify.share.target {target}: "
          f"direct {direct.mean():.1%}, escalated {escalated.mean():.1%}, cost {cost:.3f}, PGR {pgr:.3f}")

