"""Whether the combined policy's budget should be split by question kind
(multiple choice, numeric, open): the best PGR at cost 0.5 when the two
shares (straight to tier 2, escalated of the rest) are chosen per kind.

    triage-router calibrate --input data/routing-dev.jsonl --scores-out S
    triage-router train-verifier ... --scores-out TRAIN_OOF      # train's out-of-fold scores
    triage-router train-verifier --input data/routing-dev.jsonl \\
        --answer-vectors dev.answers.jsonl --output /tmp/x.json --scores-out DEV_KINDS
    python3 services/router/analysis/kind_allocation.py data S TRAIN_OOF DEV_KINDS

prints (1) the shares chosen on train's out-of-fold scores and what they
do on dev, and (2) an oracle: the shares chosen on dev itself, which
overfits the test set, so no policy tuned on train can be expected to
beat it. (DEV_KINDS is read only for each dev row's question kind.)
"""
import json
import sys

import numpy as np

data_dir, dev_scores, train_oof, dev_kinds = sys.argv[1:5]
PRICE = 8
KINDS = ["multiple_choice", "numeric", "open"]


def jsonl(path):
    return [json.loads(line) for line in open(path)]


def arrays(rows, scores, router_key, kinds):
    gain = np.array([float(r["large_ok"]) - float(r["small_ok"]) for r in rows])
    router = np.array([scores[r["id"]][router_key] for r in rows])
    verify = np.array([scores[r["id"]]["verify"] for r in rows])
    return gain, router, verify, np.array([kinds[r["id"]] for r in rows])


def apply(router, verify, gain, idx, n, d, e):
    """Cost share and gain of sending the top d of idx direct and
    escalating the top e of the rest."""
    cut = np.quantile(router[idx], 1 - d) if d > 0 else np.inf
    direct = router[idx] >= cut
    rest = idx[~direct]
    m = int(round(e * len(rest)))
    escalated = rest[np.argsort(-verify[rest], kind="stable")[:m]]
    cost = (direct.sum() + (len(idx) - direct.sum()) / PRICE + m) / n
    return cost, gain[idx[direct]].sum() + gain[escalated].sum()


def best_allocation(gain, router, verify, kind, budget=0.5):
    n = len(gain)
    options = {}
    for k in KINDS:
        idx = np.where(kind == k)[0]
        options[k] = [(*apply(router, verify, gain, idx, n, d, e), d, e)
                      for d in np.linspace(0, 0.8, 17) for e in np.linspace(0, 0.6, 13)]
    best = None
    for a in options[KINDS[0]]:
        for b in options[KINDS[1]]:
            if a[0] + b[0] > budget:
                continue
            for c in options[KINDS[2]]:
                if a[0] + b[0] + c[0] <= budget and (best is None or a[1] + b[1] + c[1] > best[0]):
                    best = (a[1] + b[1] + c[1], {k: (o[2], o[3]) for k, o in zip(KINDS, (a, b, c))})
    return best[0] / gain.sum(), best[1]


def on_dev(shares, gain, router, verify, kind):
    cost = total = 0.0
    for k, (d, e) in shares.items():
        c, g = apply(router, verify, gain, np.where(kind == k)[0], len(gain), d, e)
        cost, total = cost + c, total + g
    return cost, total / gain.sum()


def show(label, shares):
    return label + "; ".join(f"{k} {d:.0%} direct, {e:.0%} of the rest escalated" for k, (d, e) in shares.items())


oof = {o["id"]: o for o in jsonl(train_oof)}
train = [r for r in jsonl(f"{data_dir}/routing-train.jsonl") if r["id"] in oof]
pgr, chosen = best_allocation(*arrays(train, oof, "router", {i: o["kind"] for i, o in oof.items()}))
dev = jsonl(f"{data_dir}/routing-dev.jsonl")
kinds = {o["id"]: o["kind"] for o in jsonl(dev_kinds)}
dev_arrays = arrays(dev, {o["id"]: o for o in jsonl(dev_scores)}, "score", kinds)
cost, dev_pgr = on_dev(chosen, *dev_arrays)
print(f"chosen on train (out of fold PGR {pgr:.3f}): dev cost {cost:.3f}, PGR {dev_pgr:.3f}")
print(show("  ", chosen))
pgr, oracle = best_allocation(*dev_arrays)
print(f"oracle, chosen on dev itself: PGR {pgr:.3f} at cost <= 0.5")
print(show("  ", oracle))
