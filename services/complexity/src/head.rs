//! The trained head: L2-regularised logistic regression from an embedding
//! to P(needs tier 2).
//!
//! Fitted by Newton's method (iteratively reweighted least squares) in
//! `f64` with every sum in a fixed order, so training is reproducible bit
//! for bit and the shipped weights file can be regenerated exactly.

use serde::{Deserialize, Serialize};

use crate::head_input::HeadInput;
use crate::prompt_form::FORM_FEATURES;

/// The weights file's format tag.
pub const HEAD_FORMAT: &str = "triage-logistic-head/1";

/// A fitted head, as stored in the weights file (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticHead {
    /// [`HEAD_FORMAT`].
    pub format: String,
    /// What the inputs are, e.g. `minilm-l6-v2/mean/l2/512`; checked when
    /// loading so a head is never fed the wrong features.
    pub features: String,
    /// One weight per input dimension.
    pub weights: Vec<f64>,
    /// The intercept.
    pub bias: f64,
    /// The L2 penalty it was fitted with.
    pub l2: f64,
    /// Whether it was fitted on standardised inputs (the penalty's scale;
    /// the weights always take raw inputs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standardised: bool,
    /// The training set's probabilities at quantiles 0, 1, …, 100 %:
    /// [`LogisticHead::score`] maps a probability through this empirical
    /// CDF. Empty: the score is the probability itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<f64>,
    /// How it was trained and how it scored under cross-validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

/// Why a head cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The file could not be read or parsed.
    #[error("cannot load head {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Format or features do not match what the caller computes.
    #[error("head {path} is for {found:?}, expected {expected:?}")]
    Mismatch {
        /// The file.
        path: String,
        /// What the file says.
        found: String,
        /// What the caller computes.
        expected: String,
    },
}

/// Fitting options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// L2 penalty on the weights (not the bias), per example.
    pub l2: f64,
    /// Newton steps at most.
    pub max_iter: usize,
    /// Stop when the largest step component is below this.
    pub tolerance: f64,
    /// Fit on inputs scaled to zero mean and unit variance (per dimension,
    /// over the training rows), then fold the scaling into the weights, so
    /// the penalty treats a unit-length embedding's tiny coordinates and a
    /// log-length feature alike. The stored head takes raw inputs.
    pub standardise: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            l2: 1e-2,
            max_iter: 50,
            tolerance: 1e-9,
            standardise: false,
        }
    }
}

impl FitOptions {
    /// Standardised inputs at penalty `l2`, the rest default: how `train`
    /// and `train-verifier` fit, so one penalty suits an embedding's small
    /// coordinates and the form features alike.
    pub fn standardised(l2: f64) -> Self {
        Self {
            l2,
            standardise: true,
            ..Self::default()
        }
    }
}

/// The logistic function, stable for large |z|.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl LogisticHead {
    /// P(needs tier 2) for one feature vector.
    pub fn probability(&self, x: &[f32]) -> f64 {
        sigmoid(self.logit(x))
    }

    /// The routing score in [0, 1]: the probability's rank among the
    /// training prompts' (its empirical CDF, linearly interpolated between
    /// percentiles). A monotone map of the probability, so it ranks prompts
    /// identically (same AUC, APGR, CPT), but it spreads over [0, 1] even
    /// when the probabilities cluster near the base rate: a threshold `t`
    /// sends about `1 − t` of training-like traffic to tier 2, and blending
    /// with a 0–10 LLM rating weighs both on the same scale.
    pub fn score(&self, x: &[f32]) -> f64 {
        percentile(&self.calibration, self.probability(x))
    }

    /// The linear score before the sigmoid.
    pub fn logit(&self, x: &[f32]) -> f64 {
        let mut z = self.bias;
        for (w, v) in self.weights.iter().zip(x) {
            z += w * f64::from(*v);
        }
        z
    }

    /// Loads a weights file and checks it is for `features`.
    pub fn load(path: &std::path::Path, features: &str) -> Result<Self, HeadError> {
        let p = path.display().to_string();
        let head = Self::parse_file(path)?;
        head.check(&p, features)?;
        Ok(head)
    }

    /// Parses a weights file's contents and checks it is for `features`.
    pub fn from_json(json: &str, features: &str) -> Result<Self, HeadError> {
        let head = Self::parse_json(json, "<embedded>")?;
        head.check("<embedded>", features)?;
        Ok(head)
    }

    /// Loads a weights file whose input is `vector`, with or without the
    /// form features, and says which.
    pub fn load_input(
        path: &std::path::Path,
        vector: &'static str,
    ) -> Result<(Self, HeadInput), HeadError> {
        let head = Self::parse_file(path)?;
        let input = head.input(&path.display().to_string(), vector)?;
        Ok((head, input))
    }

    /// [`LogisticHead::load_input`] for a file's contents.
    pub fn from_json_input(
        json: &str,
        vector: &'static str,
    ) -> Result<(Self, HeadInput), HeadError> {
        let head = Self::parse_json(json, "<embedded>")?;
        let input = head.input("<embedded>", vector)?;
        Ok((head, input))
    }

    fn parse_file(path: &std::path::Path) -> Result<Self, HeadError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| HeadError::Load {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        Self::parse_json(&text, &p)
    }

    fn parse_json(json: &str, path: &str) -> Result<Self, HeadError> {
        serde_json::from_str(json).map_err(|e| HeadError::Load {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    fn input(&self, path: &str, vector: &'static str) -> Result<HeadInput, HeadError> {
        let input =
            HeadInput::parse(&self.features, vector).ok_or_else(|| HeadError::Mismatch {
                path: path.to_string(),
                found: self.features.clone(),
                expected: format!("{vector}[+{FORM_FEATURES}]"),
            })?;
        self.check(path, &self.features)?;
        Ok(input)
    }

    /// Options that refit this head the way it was fitted (cross-validation).
    pub fn fit_options(&self) -> FitOptions {
        FitOptions {
            l2: self.l2,
            standardise: self.standardised,
            ..FitOptions::default()
        }
    }

    fn check(&self, path: &str, features: &str) -> Result<(), HeadError> {
        let mismatch = |found: &str, expected: &str| HeadError::Mismatch {
            path: path.to_string(),
            found: found.to_string(),
            expected: expected.to_string(),
        };
        if self.format != HEAD_FORMAT {
            return Err(mismatch(&self.format, HEAD_FORMAT));
        }
        if self.features != features {
            return Err(mismatch(&self.features, features));
        }
        Ok(())
    }

    /// Fits a head to feature vectors `xs` with labels `ys` (true = tier 2).
    pub fn fit(xs: &[Vec<f32>], ys: &[bool], features: &str, opts: FitOptions) -> Self {
        let mut head = if opts.standardise {
            let scaling = Scaling::of(xs);
            let scaled: Vec<Vec<f32>> = xs.iter().map(|x| scaling.apply(x)).collect();
            let mut head = Self::fit_raw(&scaled, ys, features, opts);
            scaling.fold_into(&mut head);
            head
        } else {
            Self::fit_raw(xs, ys, features, opts)
        };
        let probs: Vec<f64> = xs.iter().map(|x| head.probability(x)).collect();
        head.calibration = percentile_knots(probs);
        head
    }

    /// Newton's method on the inputs as given; no calibration yet.
    fn fit_raw(xs: &[Vec<f32>], ys: &[bool], features: &str, opts: FitOptions) -> Self {
        let d = xs.first().map_or(0, Vec::len);
        let n = xs.len().max(1) as f64;
        // Parameters: d weights then the bias.
        let mut theta = vec![0.0f64; d + 1];
        let positives = ys.iter().filter(|y| **y).count() as f64;
        let prior = ((positives + 0.5) / (n + 1.0)).clamp(1e-6, 1.0 - 1e-6);
        theta[d] = (prior / (1.0 - prior)).ln();
        let mut hessian = vec![0.0f64; (d + 1) * (d + 1)];
        let mut grad = vec![0.0f64; d + 1];
        let mut row = vec![0.0f64; d + 1];
        for _ in 0..opts.max_iter {
            hessian.iter_mut().for_each(|h| *h = 0.0);
            grad.iter_mut().for_each(|g| *g = 0.0);
            for (x, y) in xs.iter().zip(ys) {
                for (r, v) in row.iter_mut().zip(x) {
                    *r = f64::from(*v);
                }
                row[d] = 1.0;
                let z: f64 = row.iter().zip(&theta).map(|(a, b)| a * b).sum();
                let p = sigmoid(z);
                let err = p - if *y { 1.0 } else { 0.0 };
                let w = (p * (1.0 - p)).max(1e-12);
                for i in 0..=d {
                    grad[i] += err * row[i];
                    let wi = w * row[i];
                    let hrow = &mut hessian[i * (d + 1)..i * (d + 1) + i + 1];
                    for (h, rj) in hrow.iter_mut().zip(&row[..=i]) {
                        *h += wi * rj;
                    }
                }
            }
            // Mean loss + l2/2 |w|^2: scale by 1/n, penalise weights only.
            for i in 0..=d {
                grad[i] /= n;
                for j in 0..=i {
                    hessian[i * (d + 1) + j] /= n;
                }
                if i < d {
                    grad[i] += opts.l2 * theta[i];
                    hessian[i * (d + 1) + i] += opts.l2;
                }
            }
            let step = cholesky_solve(&mut hessian, &grad, d + 1);
            let mut largest = 0.0f64;
            for (t, s) in theta.iter_mut().zip(&step) {
                *t -= s;
                largest = largest.max(s.abs());
            }
            if largest < opts.tolerance {
                break;
            }
        }
        let bias = theta.pop().unwrap_or(0.0);
        Self {
            format: HEAD_FORMAT.to_string(),
            features: features.to_string(),
            weights: theta,
            bias,
            l2: opts.l2,
            standardised: opts.standardise,
            calibration: Vec::new(),
            training: None,
        }
    }
}

/// Per-dimension mean and standard deviation of training inputs.
struct Scaling {
    mean: Vec<f64>,
    sd: Vec<f64>,
}

impl Scaling {
    /// Computed in `f64`, summed in row order (reproducible). A constant
    /// dimension keeps scale 1.
    fn of(xs: &[Vec<f32>]) -> Self {
        let d = xs.first().map_or(0, Vec::len);
        let n = xs.len().max(1) as f64;
        let mut mean = vec![0.0f64; d];
        for x in xs {
            for (m, v) in mean.iter_mut().zip(x) {
                *m += f64::from(*v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0f64; d];
        for x in xs {
            for ((s, v), m) in var.iter_mut().zip(x).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2);
            }
        }
        let sd = var
            .iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > 1e-12 {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        Self { mean, sd }
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        x.iter()
            .zip(self.mean.iter().zip(&self.sd))
            .map(|(v, (m, s))| ((f64::from(*v) - m) / s) as f32)
            .collect()
    }

    /// `w·(x − m)/s + b` = `(w/s)·x + (b − Σ w·m/s)`: the same logit on raw
    /// inputs.
    fn fold_into(&self, head: &mut LogisticHead) {
        for ((w, m), s) in head.weights.iter_mut().zip(&self.mean).zip(&self.sd) {
            *w /= s;
            head.bias -= *w * m;
        }
    }
}

/// The values at quantiles 0, 1, …, 100 % of `values` (a head's
/// `calibration`); empty for no values.
pub fn percentile_knots(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return Vec::new();
    }
    let last = (values.len() - 1) as f64;
    (0..=100)
        .map(|k| values[(k as f64 * last / 100.0).round() as usize])
        .collect()
}

/// Where `p` falls among `knots` (values at quantiles 0..=100 %), in
/// [0, 1], interpolating linearly; `p` itself when there are no knots.
pub fn percentile(knots: &[f64], p: f64) -> f64 {
    if knots.len() < 2 {
        return p;
    }
    let last = knots.len() - 1;
    if p <= knots[0] {
        return 0.0;
    }
    if p >= knots[last] {
        return 1.0;
    }
    // First knot above p; p lies in [knots[i-1], knots[i]).
    let i = knots.partition_point(|k| *k <= p);
    let (lo, hi) = (knots[i - 1], knots[i]);
    let t = if hi > lo { (p - lo) / (hi - lo) } else { 0.0 };
    ((i - 1) as f64 + t) / last as f64
}

/// Solves `A x = b` for symmetric positive definite `A` given by its lower
/// triangle (row-major, n×n); `A` is overwritten by its Cholesky factor.
/// A tiny ridge keeps a numerically semi-definite matrix solvable.
fn cholesky_solve(a: &mut [f64], b: &[f64], n: usize) -> Vec<f64> {
    for j in 0..n {
        let mut s = a[j * n + j];
        for k in 0..j {
            s -= a[j * n + k] * a[j * n + k];
        }
        let diag = s.max(1e-12).sqrt();
        a[j * n + j] = diag;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / diag;
        }
    }
    // Forward then backward substitution.
    let mut y = vec![0.0f64; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * n + k] * y[k];
        }
        y[i] = s / a[i * n + i];
    }
    let mut x = vec![0.0f64; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= a[k * n + i] * x[k];
        }
        x[i] = s / a[i * n + i];
    }
    x
}

/// Splits `0..n` into `k` folds stratified by label, shuffled with `seed`:
/// `fold[i]` is the fold of example `i`. Deterministic for a given seed.
pub fn stratified_folds(ys: &[bool], k: usize, seed: u64) -> Vec<usize> {
    let k = k.max(2);
    let mut fold = vec![0usize; ys.len()];
    let mut rng = SplitMix64(seed);
    for class in [false, true] {
        let mut idx: Vec<usize> = (0..ys.len()).filter(|&i| ys[i] == class).collect();
        // Fisher–Yates.
        for i in (1..idx.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        for (pos, i) in idx.into_iter().enumerate() {
            fold[i] = pos % k;
        }
    }
    fold
}

/// Out-of-fold scores ([`LogisticHead::score`]): each example scored by a
/// head fitted on the other folds.
pub fn cross_validated_scores(
    xs: &[Vec<f32>],
    ys: &[bool],
    folds: &[usize],
    opts: FitOptions,
) -> Vec<f64> {
    out_of_fold(xs, ys, folds, opts, LogisticHead::score)
}

/// Each example's `value` under a head fitted on the other folds.
pub fn out_of_fold<T: Clone + Default>(
    xs: &[Vec<f32>],
    ys: &[bool],
    folds: &[usize],
    opts: FitOptions,
    value: impl Fn(&LogisticHead, &[f32]) -> T,
) -> Vec<T> {
    let k = folds.iter().copied().max().map_or(0, |m| m + 1);
    let mut out = vec![T::default(); xs.len()];
    for f in 0..k {
        let (train_x, train_y): (Vec<Vec<f32>>, Vec<bool>) = xs
            .iter()
            .zip(ys)
            .zip(folds)
            .filter(|(_, fi)| **fi != f)
            .map(|((x, y), _)| (x.clone(), *y))
            .unzip();
        let head = LogisticHead::fit(&train_x, &train_y, "cv", opts);
        for i in (0..xs.len()).filter(|&i| folds[i] == f) {
            out[i] = value(&head, &xs[i]);
        }
    }
    out
}

/// A small, fixed pseudo-random generator (SplitMix64), so fold
/// assignment never changes with a dependency upgrade.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian-ish blobs along the first axis.
    fn blobs(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<bool>) {
        let mut rng = SplitMix64(seed);
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..n {
            let y = i % 3 == 0;
            let centre = if y { 1.0 } else { -1.0 };
            let noise = |r: &mut SplitMix64| (r.next_f64() - 0.5) as f32;
            xs.push(vec![centre + 1.5 * noise(&mut rng), noise(&mut rng)]);
            ys.push(y);
        }
        (xs, ys)
    }

    #[test]
    fn separates_separable_classes() {
        let (xs, ys) = blobs(300, 1);
        let head = LogisticHead::fit(&xs, &ys, "t", FitOptions::default());
        assert!(head.weights[0] > 1.0, "first axis carries the label");
        assert!(head.weights[1].abs() < head.weights[0].abs() / 4.0);
        let correct = xs
            .iter()
            .zip(&ys)
            .filter(|(x, y)| (head.probability(x) >= 0.5) == **y)
            .count();
        assert!(correct as f64 / xs.len() as f64 > 0.9);
    }

    #[test]
    fn matches_the_optimum_of_a_one_dimensional_problem() {
        // With l2 → 0 and x ∈ {0, 1}, the MLE is the log-odds per group:
        // group 0: 1 of 4 positive; group 1: 3 of 4 positive.
        let xs: Vec<Vec<f32>> = [0., 0., 0., 0., 1., 1., 1., 1.]
            .iter()
            .map(|v| vec![*v])
            .collect();
        let ys = [true, false, false, false, true, true, true, false];
        let opts = FitOptions {
            l2: 1e-12,
            ..FitOptions::default()
        };
        let head = LogisticHead::fit(&xs, &ys, "t", opts);
        assert!((head.bias - (1.0f64 / 3.0).ln()).abs() < 1e-6);
        assert!((head.weights[0] - 2.0 * 3.0f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn standardised_fit_ignores_the_scale_of_an_input() {
        // Shrinking a dimension 1000-fold changes a plain fit (the penalty
        // bites harder) but not a standardised one, whose folded weights
        // take the raw inputs.
        let (xs, ys) = blobs(300, 13);
        let shrunk: Vec<Vec<f32>> = xs.iter().map(|x| vec![x[0] / 1000.0, x[1]]).collect();
        let opts = FitOptions {
            l2: 0.1,
            standardise: true,
            ..FitOptions::default()
        };
        let a = LogisticHead::fit(&xs, &ys, "t", opts);
        let b = LogisticHead::fit(&shrunk, &ys, "t", opts);
        assert!(a.standardised);
        for (x, s) in xs.iter().zip(&shrunk) {
            assert!((a.probability(x) - b.probability(s)).abs() < 1e-6);
        }
        assert!((b.weights[0] / a.weights[0] - 1000.0).abs() < 1e-3);
        let plain = LogisticHead::fit(
            &shrunk,
            &ys,
            "t",
            FitOptions {
                standardise: false,
                ..opts
            },
        );
        assert!(plain.weights[0].abs() < b.weights[0].abs() / 10.0);
        assert_eq!(b.fit_options(), opts);
    }

    #[test]
    fn training_is_bit_for_bit_reproducible() {
        let (xs, ys) = blobs(200, 7);
        let a = LogisticHead::fit(&xs, &ys, "t", FitOptions::default());
        let b = LogisticHead::fit(&xs, &ys, "t", FitOptions::default());
        assert_eq!(a, b);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }

    #[test]
    fn weights_file_round_trips_and_checks_features() {
        let (xs, ys) = blobs(60, 3);
        let head = LogisticHead::fit(&xs, &ys, "minilm", FitOptions::default());
        let json = serde_json::to_string(&head).unwrap();
        let back = LogisticHead::from_json(&json, "minilm").unwrap();
        assert_eq!(back, head, "f64 survives JSON exactly");
        assert!(matches!(
            LogisticHead::from_json(&json, "static"),
            Err(HeadError::Mismatch { .. })
        ));
    }

    #[test]
    fn score_is_the_training_percentile() {
        let (xs, ys) = blobs(301, 11);
        let head = LogisticHead::fit(&xs, &ys, "t", FitOptions::default());
        assert_eq!(head.calibration.len(), 101);
        assert!(head.calibration.windows(2).all(|w| w[0] <= w[1]));
        let mut scores: Vec<f64> = xs.iter().map(|x| head.score(x)).collect();
        // Monotone in the probability.
        let mut pairs: Vec<(f64, f64)> = xs
            .iter()
            .map(|x| (head.probability(x), head.score(x)))
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(pairs.windows(2).all(|w| w[0].1 <= w[1].1));
        // About uniform on the training data: the median scores about 0.5.
        scores.sort_by(|a, b| a.total_cmp(b));
        assert!((scores[150] - 0.5).abs() < 0.02, "{}", scores[150]);
        assert_eq!(scores[0], 0.0);
        assert_eq!(scores[300], 1.0);
    }

    #[test]
    fn percentile_interpolates_between_knots() {
        let knots = [0.1, 0.2, 0.4];
        assert_eq!(percentile(&knots, 0.05), 0.0);
        assert!((percentile(&knots, 0.15) - 0.25).abs() < 1e-12);
        assert!((percentile(&knots, 0.3) - 0.75).abs() < 1e-12);
        assert_eq!(percentile(&knots, 0.5), 1.0);
        assert_eq!(percentile(&[], 0.3), 0.3);
    }

    #[test]
    fn folds_are_stratified_and_seeded() {
        let ys: Vec<bool> = (0..100).map(|i| i % 4 == 0).collect();
        let folds = stratified_folds(&ys, 5, 42);
        for f in 0..5 {
            let members: Vec<usize> = (0..100).filter(|&i| folds[i] == f).collect();
            assert_eq!(members.len(), 20);
            assert_eq!(members.iter().filter(|&&i| ys[i]).count(), 5);
        }
        assert_eq!(folds, stratified_folds(&ys, 5, 42));
        assert_ne!(folds, stratified_folds(&ys, 5, 43));
    }

    #[test]
    fn out_of_fold_scores_never_see_their_own_label() {
        let (xs, ys) = blobs(90, 5);
        let folds = stratified_folds(&ys, 3, 1);
        let oof = cross_validated_scores(&xs, &ys, &folds, FitOptions::default());
        assert_eq!(oof.len(), 90);
        let correct = oof
            .iter()
            .zip(&ys)
            .filter(|(p, y)| (**p >= 0.5) == **y)
            .count();
        assert!(correct > 70);
    }
}
