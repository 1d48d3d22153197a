"""Which verifier signals earn their place: each feature set of tier 1's
answer fitted on routing-train.jsonl (5-fold CV inside it) and reported on
routing-dev.jsonl, the test set, with the cost-honest cascade curves of
services/complexity/src/cascade.rs. The evidence behind the router README's
"Verifying tier 1's answer" tables (its "tried and not kept" lines).

    E=target/debug/examples/export_embeddings   # cargo build --workspace --all-targets
    for f in train dev; do
      $E data/routing-$f.jsonl /tmp/$f.aform.jsonl --answer-form      # seconds
      $E data/routing-$f.jsonl /tmp/$f.static.jsonl --static-only     # seconds
      $E data/routing-$f.jsonl /tmp/$f.answers.jsonl --answers        # train: ~11 min (release)
    done
    python3 -m venv /tmp/analysis && /tmp/analysis/bin/pip install numpy scikit-learn
    /tmp/analysis/bin/python services/router/analysis/verifier_signals.py data /tmp [SCORES]

SCORES, optional, is `triage-router calibrate --input data/routing-dev.jsonl
--scores-out SCORES` (the shipped router's and verifier's own scores): with
it the script also prints the per-source table of the README.

The verifier's own features come from the Rust code (`--answer-form`: answer
form, answer checks, question form); the ideas tried and not kept are
computed here. sklearn fits at a fixed L2 (C = 0.1 on standardised inputs),
so numbers differ from `train-verifier`'s in the third decimal. The router
score for the combined policy is the static first stage fitted on train
(out-of-fold on train, where the hard threshold is chosen), rules at 1.0.
"""

import json
import math
import re
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

data_dir, vec_dir = sys.argv[1:3]
PRICE = 8.0
FORM, CHECKS = 18, 26  # columns of --answer-form: form, +checks, +question form


def rows_of(name):
    return [json.loads(line) for line in open(f"{data_dir}/routing-{name}.jsonl")]


def by_id(path):
    return {o["id"]: o for o in map(json.loads, open(path))}


# --- the cost-honest curves (cascade.rs) ---------------------------------

def pgr_at(points, c):
    xs = [p[0] for p in points]
    if c >= xs[-1]:
        return points[-1][1]
    k = int(np.searchsorted(xs, c))
    if k == 0:
        return points[0][1]
    (xa, ya), (xb, yb) = points[k - 1], points[k]
    return max(ya, yb) if xb - xa < 1e-15 else ya + (yb - ya) * (c - xa) / (xb - xa)


def area(points):
    lo = 1 / PRICE
    xs = [lo] + [p[0] for p in points if lo < p[0] < 1] + [1.0]
    return sum((pgr_at(points, a) + pgr_at(points, b)) / 2 * (b - a)
               for a, b in zip(xs, xs[1:])) / (1 - lo)


def escalation(direct, verify, small, large):
    n, gain = len(small), large.astype(float) - small
    base, gap = small.sum(), large.sum() - small.sum()
    good = base + gain[direct].sum()
    cost = (direct.sum() + (~direct).sum() / PRICE) / n
    pts = [(1 / PRICE, 0.0)] + ([(cost, (good - base) / gap)] if direct.any() else [])
    tried = np.where(~direct)[0]
    for i in tried[np.argsort(-verify[tried], kind="stable")]:
        good += gain[i]
        cost += 1 / n
        pts.append((cost, (good - base) / gap))
    return pts


# --- fitting ----------------------------------------------------------------

def fit_predict(x_train, y, x_test):
    scale = StandardScaler().fit(x_train)
    model = LogisticRegression(C=0.1, max_iter=3000).fit(scale.transform(x_train), y)
    return model.predict_proba(scale.transform(x_test))[:, 1]


def out_of_fold(x, y):
    p = np.zeros(len(y))
    for a, b in StratifiedKFold(5, shuffle=True, random_state=20261124).split(x, y):
        p[b] = fit_predict(x[a], y[a], x[b])
    return p


# --- signals tried and not kept -------------------------------------------

LETTER = re.compile(r"(?i)(?:answer is:?\s*\(?|answer:\s*\(?)([A-J])\b")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
RESULT = re.compile(r"=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)")
WORD = re.compile(r"[a-z0-9]+")
STOP = set("the a an of to in and or is are be for on with by as at from that this it its which".split())


def options(prompt):
    return [l[3:] for l in prompt.split("\n") if len(l) >= 3 and l[0] in "ABCDEFGHIJ" and l[1:3] == ". "]


def chosen(answer, opts):
    m = list(LETTER.finditer(answer))
    if not m or len(opts) < 2:
        return None, answer
    i = "ABCDEFGHIJ".index(m[-1].group(1).upper())
    return (i if i < len(opts) else None), answer[:m[-1].start()]


def letter_one_hot(row):
    m = LETTER.findall(row["small_response"] or "")
    return [float(bool(m) and m[-1].upper() == c) for c in "ABCDEFGHIJ"]


def nearest_option(row):
    opts = options(row["prompt"])
    i, reasoning = chosen(row["small_response"] or "", opts)
    values = [NUMBER.search(o) for o in opts]
    values = [float(v.group(0).replace(",", "")) if v else None for v in values]
    results = RESULT.findall(reasoning)
    if i is None or values[i] is None or not results:
        return [0.0, 0.0]
    last = float(results[-1].replace(",", ""))
    dist = [abs(v - last) / max(abs(last), 1e-9) if v is not None else math.inf for v in values]
    return [float(int(np.argmin(dist)) != i), math.log1p(min(dist[i], 1e6))]


def option_coverage(row):
    opts = options(row["prompt"])
    i, reasoning = chosen(row["small_response"] or "", opts)
    if i is None:
        return [0.0, 0.0, 0.0]
    used = {w for w in WORD.findall(reasoning.lower()) if w not in STOP}

    def share(text):
        words = [w for w in WORD.findall(text.lower()) if w not in STOP]
        return sum(w in used for w in words) / len(words) if words else 0.0

    shares = [share(o) for o in opts]
    other = max(s for k, s in enumerate(shares) if k != i)
    return [shares[i], other, float(other > shares[i])]


# --- the data ---------------------------------------------------------------

def load(split):
    rows = rows_of(split)
    form, static = by_id(f"{vec_dir}/{split}.aform.jsonl"), by_id(f"{vec_dir}/{split}.static.jsonl")
    answers = by_id(f"{vec_dir}/{split}.answers.jsonl")
    get = lambda table, key: np.array([table[r["id"]][key] for r in rows], float)
    extra = lambda f: np.array([f(r) for r in rows], float)
    return {
        "rows": rows,
        "small": np.array([r["small_ok"] for r in rows], bool),
        "large": np.array([r["large_ok"] for r in rows], bool),
        "answer": get(form, "f"),
        "tail": get(answers, "v"),
        "prompt": np.hstack([get(static, "s"), get(static, "f")]),
        "rule": np.array([static[r["id"]]["rule"] for r in rows]),
        "one_hot": extra(letter_one_hot),
        "nearest": extra(nearest_option),
        "coverage": extra(option_coverage),
    }


train, dev = load("train"), load("dev")
for s in (train, dev):
    s["rescuable"] = s["large"] & ~s["small"]
    # The question kind (question_kind.rs) from the question-form columns:
    # 0 multiple choice, 1 numeric, 2 open.
    mc, numbers = s["answer"][:, CHECKS] > 0, s["answer"][:, CHECKS + 6] > 0
    s["kind"] = np.where(mc, 0, np.where(numbers, 1, 2))
    s["x_kind"] = np.hstack([s["answer"][:, :FORM] * (s["kind"] == k)[:, None] for k in (1, 2)]
                            + [(s["kind"] == k)[:, None].astype(float) for k in (1, 2)])

# How often an answer with a wrong equation (ln_equations_wrong > 0) is
# rescuable, per source.
for name, s in (("train", train), ("dev", dev)):
    for source in ("gsm8k", "mmlu-pro"):
        rows = np.array([r["source"].startswith(source) for r in s["rows"]])
        wrong = rows & (s["answer"][:, FORM + 1] > 0)
        print(f"{name} {source}: {wrong.sum()} answers with a wrong equation, rescuable "
              f"{s['rescuable'][wrong].mean():.0%} against {s['rescuable'][rows].mean():.0%}")
router_train = out_of_fold(train["prompt"], train["rescuable"])
router_dev = fit_predict(train["prompt"], train["rescuable"], dev["prompt"])
router_train[train["rule"]], router_dev[dev["rule"]] = 1.0, 1.0
knots = np.sort(router_train)
pct = lambda x: np.searchsorted(knots, x) / len(knots)
router_train, router_dev = pct(router_train), pct(router_dev)

print(f"{'verifier input':44s} {'CV AUC':>6s} {'dev AUC':>7s} {'resc':>5s} {'VO@50':>6s} {'comb@50':>7s} (hard chosen on train)")


def report(name, verify_train, verify_dev):
    best = None
    for hard in (0.6, 0.65, 0.7, 0.75, 0.8, 1.01):
        on_train = pgr_at(escalation(router_train >= hard, verify_train, train["small"], train["large"]), 0.5)
        if best is None or on_train > best[1]:
            best = (hard, on_train)
    combined = escalation(router_dev >= best[0], verify_dev, dev["small"], dev["large"])
    verify_only = escalation(np.zeros(len(verify_dev), bool), verify_dev, dev["small"], dev["large"])
    print(f"{name:44s} {roc_auc_score(~train['small'], verify_train):6.3f} "
          f"{roc_auc_score(~dev['small'], verify_dev):7.3f} {roc_auc_score(dev['rescuable'], verify_dev):5.3f} "
          f"{pgr_at(verify_only, 0.5):6.3f} {pgr_at(combined, 0.5):7.3f} (>= {best[0]}, area {area(combined):.3f})",
          flush=True)


def poor_head(name, columns):
    x_train = np.hstack([train[c] if isinstance(c, str) else train["answer"][:, c] for c in columns])
    x_dev = np.hstack([dev[c] if isinstance(c, str) else dev["answer"][:, c] for c in columns])
    report(name, out_of_fold(x_train, ~train["small"]), fit_predict(x_train, ~train["small"], x_dev))
    return x_train, x_dev


shipped = [slice(None), "tail"]
poor_head("answer form", [slice(0, FORM)])
poor_head("answer form + checks", [slice(0, CHECKS)])
poor_head("answer form + checks + question form", [slice(None)])
poor_head("answer form + answer tail (shipped before)", [slice(0, FORM), "tail"])
x_train, x_dev = poor_head("all of the above (shipped)", shipped)
print("tried, not kept:")
poor_head("  + stated letter one-hot", shipped + ["one_hot"])
poor_head("  + question's static vector and form", shipped + ["prompt"])
poor_head("  + chosen option nearest the last result", shipped + ["nearest"])
poor_head("  + chosen option's wording in the reasoning", shipped + ["coverage"])
poor_head("  + answer form crossed with the question kind, one head", shipped + ["x_kind"])


def per_kind(name, columns):
    """A head per question kind at the fixed L2 (train-verifier also
    chooses each kind's L2 and keeps a kind's head only where CV says)."""
    x_train = np.hstack([train[c] if isinstance(c, str) else train["answer"][:, c] for c in columns])
    x_dev = np.hstack([dev[c] if isinstance(c, str) else dev["answer"][:, c] for c in columns])
    p_train, p_dev = np.zeros(len(x_train)), np.zeros(len(x_dev))
    for k in range(3):
        a, b = train["kind"] == k, dev["kind"] == k
        p_train[a] = out_of_fold(x_train[a], ~train["small"][a])
        p_dev[b] = fit_predict(x_train[a], ~train["small"][a], x_dev[b])
    report(name, p_train, p_dev)


per_kind("a head per question kind (shipped: train-verifier's)", shipped)
# Expected gain of an escalation: P(poor) + P(tier 2 right) - 1.
poor_train, poor_dev = out_of_fold(x_train, ~train["small"]), fit_predict(x_train, ~train["small"], x_dev)
px_train, px_dev = np.hstack([train["prompt"], x_train]), np.hstack([dev["prompt"], x_dev])
report("  expected gain, P(tier 2 right | prompt, answer)",
       poor_train + out_of_fold(px_train, train["large"]),
       poor_dev + fit_predict(px_train, train["large"], px_dev))

if len(sys.argv) > 3:
    scores = by_id(sys.argv[3])
    print("per dev source, the shipped scores (calibrate --scores-out):")
    sources = sorted({r["source"].split("/")[0] for r in dev["rows"]}) + ["all"]
    for source in sources:
        rows = [r for r in dev["rows"] if source == "all" or r["source"].startswith(source + "/") or r["source"] == source]
        poor = np.array([not r["small_ok"] for r in rows])
        resc = np.array([r["label_tier"] == 2 for r in rows])
        verify = np.array([scores[r["id"]]["verify"] for r in rows])
        router = np.array([scores[r["id"]]["score"] for r in rows])
        print(f"  {source:15s} {len(rows):5d} poor {poor.mean():.0%} rescuable {resc.mean():.0%} "
              f"verify AUC poor {roc_auc_score(poor, verify):.3f} rescuable {roc_auc_score(resc, verify):.3f} "
              f"router AUC rescuable {roc_auc_score(resc, router):.3f}")
        small = np.array([r["small_ok"] for r in rows], bool)
        large = np.array([r["large_ok"] for r in rows], bool)
        for label, direct in (("verify only", np.zeros(len(rows), bool)), ("combined >= 0.75", router >= 0.75)):
            pts = escalation(direct, verify, small, large)
            print(f"    {label:17s} PGR@30% {pgr_at(pts, 0.3):.3f} PGR@50% {pgr_at(pts, 0.5):.3f} area {area(pts):.3f}")
