"""How well can any head do on this data? The evidence behind the router
README's Quality section: cross-validated ROC AUC and APGR of other models on
the same MiniLM vectors, of the dataset's own category/source tier-2 rates
(metadata no router sees), and the outcome statistics behind the rule
defaults.

    cargo run --release -p triage-complexity --example export_embeddings -- \
        data/routing-dev.jsonl /tmp/emb.jsonl
    python3 -m venv /tmp/analysis && /tmp/analysis/bin/pip install numpy scikit-learn
    /tmp/analysis/bin/python services/router/analysis/head_ceiling.py \
        data/routing-dev.jsonl /tmp/emb.jsonl

Folds: 5-fold stratified, 3 repeats, seeds 20261124.. (as `triage-router train`).
"""

import json
import re
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier

data_path, emb_path = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(data_path)]
emb = {d["id"]: d for d in map(json.loads, open(emb_path))}
X = np.array([emb[r["id"]]["v"] for r in rows])
y = np.array([r["label_tier"] == 2 for r in rows])
small = np.array([bool(r["small_ok"]) for r in rows])
large = np.array([bool(r["large_ok"]) for r in rows])
rule = np.array([emb[r["id"]]["rule"] for r in rows])


def apgr(score):
    """Area under PGR(x), top x% by score to tier 2 (the data README's definition)."""
    order = np.argsort(-score, kind="stable")
    n = len(score)
    qs, ql = small.mean(), large.mean()
    gain = np.concatenate([[0], np.cumsum((large.astype(int) - small.astype(int))[order])])
    pgr = ((qs * n + gain) / n - qs) / (ql - qs)
    return np.trapezoid(pgr, dx=1 / n)


def cv(fit_predict):
    aucs, apgrs = [], []
    for rep in range(3):
        score = np.zeros(len(y))
        folds = StratifiedKFold(5, shuffle=True, random_state=20261124 + rep)
        for train, test in folds.split(X, y):
            score[test] = fit_predict(train, test)
        aucs.append(roc_auc_score(y, score))
        apgrs.append(apgr(score))
    return f"AUC {np.mean(aucs):.3f}  APGR {np.mean(apgrs):.3f}"


def proba(model, target):
    return lambda tr, te: model.fit(X[tr], target[tr]).predict_proba(X[te])[:, 1]


for c in [0.01, 0.03, 0.1, 0.3, 1, 3, 10]:
    print(f"logistic regression C={c:<5}", cv(proba(LogisticRegression(C=c, max_iter=2000), y)))
for k in [15, 50, 150]:
    print(f"cosine k-NN k={k:<4}", cv(proba(KNeighborsClassifier(k, metric="cosine"), y)))
for c in [0.03, 0.3]:
    def two_heads(tr, te, c=c):
        fails = LogisticRegression(C=c, max_iter=2000).fit(X[tr], ~small[tr])
        succeeds = LogisticRegression(C=c, max_iter=2000).fit(X[tr], large[tr])
        return fails.predict_proba(X[te])[:, 1] * succeeds.predict_proba(X[te])[:, 1]
    print(f"P(small fails)*P(large ok) C={c}", cv(two_heads))
for alpha in [10, 100]:
    gain = large.astype(float) - small
    print(f"ridge on the gain alpha={alpha}",
          cv(lambda tr, te, a=alpha: Ridge(alpha=a).fit(X[tr], gain[tr]).predict(X[te])))
for key in ["source", "category"]:
    keys = np.array([r[key] for r in rows])

    def rate(tr, te, keys=keys):
        rates = {k: (y[tr][keys[tr] == k].sum() + 1) / ((keys[tr] == k).sum() + 3) for k in set(keys[tr])}
        return np.array([rates.get(k, y[tr].mean()) for k in keys[te]])
    print(f"tier-2 rate of the {len(set(keys))} `{key}` values, fitted in-fold", cv(rate))


def outcomes(label, mask):
    n = mask.sum()
    print(f"{label}: {n} prompts, tier 2 {y[mask].mean():.3f}, small ok {small[mask].mean():.3f}, "
          f"large ok {large[mask].mean():.3f}, gain {(large[mask].mean() - small[mask].mean()):.3f}")


outcomes("rule-forced (built-in rules)", rule)
outcomes("not rule-forced", ~rule)
code_request = re.compile(
    r"(?i)\b(implement|write|create|generate|debug|fix|refactor|optimi[sz]e)\b[^.?!\n]{0,60}"
    r"\b(code|function|program|script|algorithm|class|method|query|regex|api|app)\b")
outcomes("code asked for in words", np.array([bool(code_request.search(r["prompt"])) for r in rows]))
