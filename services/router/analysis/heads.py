"""Which head to ship: every head and feature set trained on routing-train.jsonl
(tuned by 5-fold CV inside it) and reported on routing-dev.jsonl, the test set.
The evidence behind the router README's Quality table.

    E=target/release/examples/export_embeddings   # cargo build --release -p triage-complexity --example export_embeddings
    $E data/routing-dev.jsonl /tmp/dev.vec.jsonl
    $E data/routing-train.jsonl /tmp/train.vec.jsonl          # ~10 min of 2 idle cores
    $E data/routing-train.jsonl /tmp/train.static.jsonl --static-only
    python3 -m venv /tmp/analysis && /tmp/analysis/bin/pip install numpy scikit-learn
    /tmp/analysis/bin/python services/router/analysis/heads.py data /tmp/train.vec.jsonl \
        /tmp/train.static.jsonl /tmp/dev.vec.jsonl [--limit N]

`--limit N` trains the transformer heads on the first N train rows only (the
file is in random order), as `triage-router train --limit N` does; the static
and form heads always use every row. The vectors are the router's own (candle
MiniLM, the distilled static table, the Rust form features), so the numbers
match `triage-router calibrate`. CPT is the smallest tier-2 share reaching that
PGR; "PGR@0.65" sends prompts whose score, as a percentile of the training
scores, is at least 0.65 (the shipped threshold; rules not applied).
"""

import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import NearestNeighbors
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

data_dir, train_vec, train_static, dev_vec = sys.argv[1:5]
limit = int(sys.argv[sys.argv.index("--limit") + 1]) if "--limit" in sys.argv else None


def rows_of(name):
    return [json.loads(line) for line in open(f"{data_dir}/{name}")]


def vectors(path):
    out = {}
    for line in open(path):
        try:
            o = json.loads(line)
        except json.JSONDecodeError:  # a file still being written
            break
        out[o["id"]] = o
    return out


tr, dev = rows_of("routing-train.jsonl"), rows_of("routing-dev.jsonl")


def outcomes(rows):
    return (np.array([r["label_tier"] == 2 for r in rows]),
            np.array([bool(r["small_ok"]) for r in rows]),
            np.array([bool(r["large_ok"]) for r in rows]))


yt, st, lt = outcomes(tr)
yd, sd, ld = outcomes(dev)
vs_tr, vt_tr, v_dev = vectors(train_static), vectors(train_vec), vectors(dev_vec)
S_tr = np.array([vs_tr[r["id"]]["s"] for r in tr])
F_tr = np.array([vs_tr[r["id"]]["f"] for r in tr])
S_dev = np.array([v_dev[r["id"]]["s"] for r in dev])
F_dev = np.array([v_dev[r["id"]]["f"] for r in dev])
V_dev = np.array([v_dev[r["id"]]["v"] for r in dev])
rule_dev = np.array([v_dev[r["id"]]["rule"] for r in dev])
have = [i for i, r in enumerate(tr) if r["id"] in vt_tr]
n_model = min(len(have), limit or len(have))
model_rows = np.array(have[:n_model])
assert list(model_rows) == list(range(n_model)), "transformer vectors must cover a prefix of train"
V_tr = np.array([vt_tr[tr[i]["id"]]["v"] for i in model_rows])


def pgr_curve(score, s, l):
    order = np.argsort(-np.asarray(score), kind="stable")
    gain = np.concatenate([[0], np.cumsum((l.astype(int) - s.astype(int))[order])])
    return gain / (l.sum() - s.sum())


def measures(score, y=yd, s=sd, l=ld):
    p = pgr_curve(score, s, l)
    n = len(p) - 1
    return {"auc": roc_auc_score(y, score), "apgr": ((p[1:] + p[:-1]) / 2).sum() / n,
            "cpt50": np.argmax(p >= 0.5 - 1e-12) / n, "cpt80": np.argmax(p >= 0.8 - 1e-12) / n}


def pgr_at(share_scores, threshold=0.65):
    tier2 = share_scores >= threshold
    got = np.where(tier2, ld, sd).sum()
    return (got - sd.sum()) / (ld.sum() - sd.sum()), tier2.mean()


def percentile(train_p, p):
    return np.searchsorted(np.sort(train_p), p, side="right") / len(train_p)


def logistic(l2):
    """Our head: L2 per example on standardised inputs (sklearn's C = 1/(l2·n))."""
    def fit(X, y):
        scale = StandardScaler().fit(X)
        m = LogisticRegression(C=1 / (l2 * len(y)), max_iter=5000).fit(scale.transform(X), y)
        return lambda Z: m.predict_proba(scale.transform(Z))[:, 1]
    return fit


def knn(k):
    def fit(X, y):
        nn = NearestNeighbors(n_neighbors=k, metric="cosine").fit(X)
        prior = y.mean()
        return lambda Z: (y[nn.kneighbors(Z)[1]].sum(1) + 10 * prior) / (k + 10)
    return fit


def mlp(hidden, alpha):
    def fit(X, y):
        scale = StandardScaler().fit(X)
        m = MLPClassifier((hidden,), alpha=alpha, early_stopping=True, random_state=0,
                          max_iter=300).fit(scale.transform(X), y)
        return lambda Z: m.predict_proba(scale.transform(Z))[:, 1]
    return fit


def cv_train(fit, X, y, s, l):
    score = np.zeros(len(y))
    for a, b in StratifiedKFold(5, shuffle=True, random_state=20261124).split(X, y):
        score[b] = fit(X[a], y[a])(X[b])
    return measures(score, y, s, l)


results = {}


def row(name, fit, X, X_dev, rows=None):
    """Fits on train rows `rows` (all by default), reports dev and CV on train."""
    idx = np.arange(len(X)) if rows is None else rows
    y, s, l = yt[idx], st[idx], lt[idx]
    predict = fit(X, y)
    p_train, p_dev = predict(X), predict(X_dev)
    pct = percentile(p_train, p_dev)
    m = measures(p_dev)
    pgr, share = pgr_at(pct)
    cv = cv_train(fit, X, y, s, l)
    results[name] = pct
    print(f"| {name} | {len(y)} | {m['auc']:.3f} | {m['apgr']:.3f} | {m['cpt50']:.1%} | {m['cpt80']:.1%} "
          f"| {pgr:.3f} ({share:.0%}) | {cv['auc']:.3f} / {cv['apgr']:.3f} |", flush=True)


def mixed(name, parts, settle=None, band_mean=False):
    """Mean of percentiles; with `settle`, the first part's score outside the
    band, and inside it the last part's (or the mean with `band_mean`)."""
    score = np.mean([results[p] for p in parts], axis=0)
    if settle is not None:
        lo, hi = settle
        first = results[parts[0]]
        settled = (first < lo) | (first >= hi)
        score = np.where(settled, first, score if band_mean else results[parts[-1]])
        name += f", {settled.mean():.0%} settled"
    m = measures(score)
    pgr, share = pgr_at(score)
    ruled = measures(np.where(rule_dev, 1.0, score))
    print(f"| {name} | | {m['auc']:.3f} | {m['apgr']:.3f} | {m['cpt50']:.1%} | {m['cpt80']:.1%} "
          f"| {pgr:.3f} ({share:.0%}) | with rules: APGR {ruled['apgr']:.3f} |", flush=True)


print(f"transformer heads on the first {n_model} train rows; static and form heads on all {len(tr)}")
print("| head | train rows | dev AUC | dev APGR | CPT(50%) | CPT(80%) | PGR@0.65 (share) | CV on train AUC / APGR |")
print("|---|---|---|---|---|---|---|---|")
SF_tr, SF_dev = np.hstack([S_tr, F_tr]), np.hstack([S_dev, F_dev])
VF_tr, VF_dev = np.hstack([V_tr, F_tr[model_rows]]), np.hstack([V_dev, F_dev])
row("form features alone, logistic", logistic(0.01), F_tr, F_dev)
row("static, logistic", logistic(0.1), S_tr, S_dev)
row("static + form, logistic", logistic(0.1), SF_tr, SF_dev)
row("static + form, MLP 32, alpha 10", mlp(32, 10.0), SF_tr, SF_dev)
for k in (50, 600):
    row(f"static, cosine k-NN k={k}", knn(k), S_tr, S_dev)
row("MiniLM, logistic", logistic(0.1), V_tr, V_dev, model_rows)
row("MiniLM + form, logistic", logistic(0.1), VF_tr, VF_dev, model_rows)
row("MiniLM, cosine k-NN k=200", knn(200), V_tr, V_dev, model_rows)
row("MiniLM + form, MLP 32, alpha 10", mlp(32, 10.0), VF_tr, VF_dev, model_rows)
mixed("two-stage: static + form, band [0.35, 0.65) to MiniLM + form",
      ["static + form, logistic", "MiniLM + form, logistic"], settle=(0.35, 0.65))
mixed("two-stage, mean of both in the band [0.35, 0.65)",
      ["static + form, logistic", "MiniLM + form, logistic"], settle=(0.35, 0.65), band_mean=True)
mixed("mean of static + form and MiniLM + form percentiles (transformer for all)",
      ["static + form, logistic", "MiniLM + form, logistic"])
