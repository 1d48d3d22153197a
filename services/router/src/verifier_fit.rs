//! Fitting the verifier's heads for `train-verifier`: a general head on
//! every answer and, unless told otherwise, a head per question kind that
//! has enough answers of both labels, each with the L2 penalty of its best
//! cross-validated AUC. A kind keeps its own head only when that head's
//! cross-validated AUC on the kind's answers beats the general head's
//! out-of-fold AUC on the same answers (so a kind with few answers, where
//! a head of its own overfits, stays with the general one). With kind heads, every head maps its probability
//! through one calibration pooled over the training answers (each scored
//! by the head that scores its kind), so a verify threshold means the same
//! share of training-like answers whatever their kinds.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use triage_complexity::calibration::roc_auc;
use triage_complexity::head::{
    out_of_fold, percentile, percentile_knots, stratified_folds, FitOptions, LogisticHead,
};
use triage_complexity::question_kind::QuestionKind;

use crate::policy_report::fmt;

/// Fewer answers of a kind than this: the general head scores the kind.
pub const MIN_KIND_ROWS: usize = 100;
/// Fewer answers of either label in a kind than this: likewise.
pub const MIN_KIND_LABELS: usize = 10;

/// What to fit.
pub struct HeadsToFit<'a> {
    /// The verifier input of every answer.
    pub xs: &'a [Vec<f32>],
    /// The label fitted (poor, or rescuable).
    pub ys: &'a [bool],
    /// `label_tier` 2, reported beside the fitted label.
    pub tier2: &'a [bool],
    /// Each answer's question kind; `None`: one head for all.
    pub kinds: Option<&'a [QuestionKind]>,
    /// Cross-validation folds.
    pub folds: usize,
    /// Seed of the folds.
    pub seed: u64,
    /// L2 penalties to try.
    pub l2_grid: &'a [f64],
    /// The heads' features tag.
    pub tag: &'a str,
}

/// The fitted heads.
pub struct FittedHeads {
    /// The general head.
    pub head: LogisticHead,
    /// The kinds' own heads.
    pub kind_heads: BTreeMap<QuestionKind, LogisticHead>,
    /// Every answer's out-of-fold verify score (what the thresholds are
    /// chosen on).
    pub cv_scores: Vec<f64>,
    /// The cross-validation record, for the file's `training`.
    pub report: Value,
}

/// One head's cross-validation over the L2 grid.
struct Validated {
    l2: f64,
    auc: f64,
    probability: Vec<f64>,
    score: Vec<f64>,
    grid: Vec<Value>,
}

/// Cross-validates each L2 of the grid; keeps the best AUC's.
fn validate(
    xs: &[Vec<f32>],
    ys: &[bool],
    tier2: &[bool],
    spec: &HeadsToFit,
    what: &str,
) -> Validated {
    let folds = stratified_folds(ys, spec.folds, spec.seed);
    let mut best: Option<Validated> = None;
    let mut grid = Vec::new();
    for &l2 in spec.l2_grid {
        let both = out_of_fold(xs, ys, &folds, FitOptions::standardised(l2), |h, x| {
            (h.probability(x), h.score(x))
        });
        let (probability, score): (Vec<f64>, Vec<f64>) = both.into_iter().unzip();
        let auc = roc_auc(&score, ys).unwrap_or(0.5);
        let auc_tier2 = roc_auc(&score, tier2);
        println!(
            "  {what}l2={l2}: cross-validated AUC (label fitted) {auc:.4}, AUC (label_tier) {}",
            fmt(auc_tier2)
        );
        grid.push(json!({"l2": l2, "auc_fitted_label": auc, "auc_label_tier": auc_tier2}));
        if best.as_ref().is_none_or(|b| auc > b.auc) {
            best = Some(Validated {
                l2,
                auc,
                probability,
                score,
                grid: Vec::new(),
            });
        }
    }
    let mut chosen = best.expect("the L2 grid is not empty");
    chosen.grid = grid;
    chosen
}

/// The rows of `kind` when it has enough of both labels for a head.
fn rows_of_kind(kinds: &[QuestionKind], ys: &[bool], kind: QuestionKind) -> Option<Vec<usize>> {
    let rows: Vec<usize> = (0..kinds.len()).filter(|&i| kinds[i] == kind).collect();
    let positives = rows.iter().filter(|&&i| ys[i]).count();
    let enough = rows.len() >= MIN_KIND_ROWS
        && positives >= MIN_KIND_LABELS
        && rows.len() - positives >= MIN_KIND_LABELS;
    println!(
        "  {}: {} answers, {positives} of the fitted label{}",
        kind.name(),
        rows.len(),
        if enough {
            ""
        } else {
            ": too few for a head of its own, the general head scores them"
        }
    );
    enough.then_some(rows)
}

fn pick<T: Clone>(values: &[T], rows: &[usize]) -> Vec<T> {
    rows.iter().map(|&i| values[i].clone()).collect()
}

/// A kind's own head, when it beats the general head on the kind's
/// answers in cross-validation.
struct KindHead {
    head: LogisticHead,
    rows: Vec<usize>,
    /// Out-of-fold probabilities of `rows`.
    probability: Vec<f64>,
}

/// Cross-validates a head for `kind` against the general head's
/// out-of-fold scores; records the comparison in `report`.
fn kind_head(
    spec: &HeadsToFit,
    kinds: &[QuestionKind],
    kind: QuestionKind,
    general_scores: &[f64],
    report: &mut serde_json::Map<String, Value>,
) -> Option<KindHead> {
    let rows = rows_of_kind(kinds, spec.ys, kind)?;
    let (xs, ys) = (pick(spec.xs, &rows), pick(spec.ys, &rows));
    let what = format!("{} ", kind.name());
    let cv = validate(&xs, &ys, &pick(spec.tier2, &rows), spec, &what);
    let general_auc = roc_auc(&pick(general_scores, &rows), &ys).unwrap_or(0.5);
    let keep = cv.auc > general_auc;
    println!(
        "  {}: own head AUC {:.4} (l2={}), the general head's {general_auc:.4} on these answers: {}",
        kind.name(),
        cv.auc,
        cv.l2,
        if keep { "own head" } else { "the general head scores them" }
    );
    report.insert(
        kind.name().into(),
        json!({"rows": rows.len(), "chosen_l2": cv.l2, "cross_validation": cv.grid,
               "general_head_auc": general_auc, "own_head": keep}),
    );
    keep.then(|| KindHead {
        head: LogisticHead::fit(&xs, &ys, spec.tag, FitOptions::standardised(cv.l2)),
        rows,
        probability: cv.probability,
    })
}

/// Percentiles of `probability` among themselves.
fn ranks(probability: &[f64]) -> Vec<f64> {
    let knots = percentile_knots(probability.to_vec());
    probability.iter().map(|p| percentile(&knots, *p)).collect()
}

/// Fits the general head and the kinds' heads.
pub fn fit_heads(spec: &HeadsToFit) -> FittedHeads {
    let general = validate(spec.xs, spec.ys, spec.tier2, spec, "");
    println!("chose l2={} (best cross-validated AUC)", general.l2);
    let fit = FitOptions::standardised(general.l2);
    let mut head = LogisticHead::fit(spec.xs, spec.ys, spec.tag, fit);
    let mut report = json!({"chosen_l2": general.l2, "cross_validation": general.grid});
    let mut fitted = FittedHeads {
        head: head.clone(),
        kind_heads: BTreeMap::new(),
        cv_scores: general.score,
        report: Value::Null,
    };
    let Some(kinds) = spec.kinds else {
        fitted.report = report;
        return fitted;
    };
    let mut kind_report = serde_json::Map::new();
    let mut probability = general.probability;
    for kind in QuestionKind::ALL {
        let found = kind_head(spec, kinds, kind, &fitted.cv_scores, &mut kind_report);
        if let Some(k) = found {
            for (&i, p) in k.rows.iter().zip(&k.probability) {
                probability[i] = *p;
            }
            fitted.kind_heads.insert(kind, k.head);
        }
    }
    report["kind_heads"] = Value::Object(kind_report);
    if !fitted.kind_heads.is_empty() {
        // One calibration: every training answer's probability under the
        // head that scores its kind.
        let served: Vec<f64> = (0..spec.xs.len())
            .map(|i| {
                let h = fitted.kind_heads.get(&kinds[i]).unwrap_or(&head);
                h.probability(&spec.xs[i])
            })
            .collect();
        let knots = percentile_knots(served);
        head.calibration = knots.clone();
        for h in fitted.kind_heads.values_mut() {
            h.calibration = knots.clone();
        }
        fitted.head = head;
        fitted.cv_scores = ranks(&probability);
        println!(
            "pooled out-of-fold AUC with the kind heads: (label fitted) {}, (label_tier) {}",
            fmt(roc_auc(&fitted.cv_scores, spec.ys)),
            fmt(roc_auc(&fitted.cv_scores, spec.tier2))
        );
        report["pooled_cv_auc_fitted_label"] = json!(roc_auc(&fitted.cv_scores, spec.ys));
    }
    fitted.report = report;
    fitted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two kinds whose poor answers are marked by opposite signs of the
    /// same feature: one head cannot rank both, a head per kind can.
    fn opposite_kinds(n: usize) -> (Vec<Vec<f32>>, Vec<bool>, Vec<QuestionKind>) {
        let (mut xs, mut ys, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let poor = i % 3 == 0;
            let open = i % 2 == 0;
            let noise = ((i * 37 % 101) as f32 / 101.0) - 0.5;
            let signal = if poor { 1.0 } else { -1.0 } * if open { -1.0 } else { 1.0 };
            xs.push(vec![signal + noise, noise]);
            ys.push(poor);
            kinds.push(if open {
                QuestionKind::Open
            } else {
                QuestionKind::MultipleChoice
            });
        }
        (xs, ys, kinds)
    }

    #[test]
    fn a_head_per_kind_ranks_what_one_head_cannot_and_shares_one_scale() {
        let (xs, ys, kinds) = opposite_kinds(600);
        let spec = |kinds| HeadsToFit {
            xs: &xs,
            ys: &ys,
            tier2: &ys,
            kinds,
            folds: 3,
            seed: 7,
            l2_grid: &[0.01, 0.1],
            tag: "t",
        };
        let one = fit_heads(&spec(None));
        assert!(one.kind_heads.is_empty());
        let by_kind = fit_heads(&spec(Some(&kinds)));
        let auc = |s: &[f64]| roc_auc(s, &ys).unwrap();
        assert!(auc(&one.cv_scores) < 0.6, "{}", auc(&one.cv_scores));
        assert!(
            auc(&by_kind.cv_scores) > 0.95,
            "{}",
            auc(&by_kind.cv_scores)
        );
        // Numeric has no answers: the general head scores it.
        let heads: Vec<_> = by_kind.kind_heads.keys().copied().collect();
        assert_eq!(heads, [QuestionKind::MultipleChoice, QuestionKind::Open]);
        // One calibration for all.
        for h in by_kind.kind_heads.values() {
            assert_eq!(h.calibration, by_kind.head.calibration);
        }
        assert_eq!(by_kind.report["kind_heads"]["open"]["rows"], 300);
    }

    #[test]
    fn a_kind_with_too_few_answers_gets_no_head() {
        let ys: Vec<bool> = (0..150).map(|i| i < 5).collect();
        let kinds = vec![QuestionKind::Numeric; 150];
        assert_eq!(rows_of_kind(&kinds, &ys, QuestionKind::Numeric), None);
        let ys: Vec<bool> = (0..150).map(|i| i < 30).collect();
        assert_eq!(
            rows_of_kind(&kinds, &ys, QuestionKind::Numeric).map(|r| r.len()),
            Some(150)
        );
        assert_eq!(rows_of_kind(&kinds, &ys, QuestionKind::Open), None);
    }
}
