//! Token-level confidence of an answer from the backend's logprobs: the
//! mean, the minimum and low quantiles of the chosen tokens' log
//! probabilities (Gupta et al. 2024 found low quantiles predict a poor
//! answer better than the mean), and whether there were any.
//!
//! The published outcome data carries no logprobs, so the shipped verifier
//! head gives these features no weight; a head calibrated on a team's own
//! outcomes (with logprobs requested from vLLM) can use them.

/// Feature tag of the logprob features, part of a verifier head's
/// `features`.
pub const LOGPROB_FEATURES: &str = "token-logprobs/1";

/// Names of the features, in order.
pub const LOGPROB_NAMES: [&str; LOGPROB_DIM] = [
    "has_logprobs",
    "mean_logprob",
    "min_logprob",
    "q05_logprob",
    "q10_logprob",
    "q25_logprob",
];

/// Number of logprob features.
pub const LOGPROB_DIM: usize = 6;

/// Quantile `q` (0–1) of sorted values, linearly interpolated.
fn quantile(sorted: &[f32], q: f64) -> f32 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = (pos - lo as f64) as f32;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// The features of the chosen tokens' logprobs (natural log). Non-finite
/// values (a backend's `-inf`) are floored at −100 so one token cannot
/// make the vector unusable. No logprobs: all zeros, `has_logprobs` 0.
pub fn logprob_features(logprobs: &[f32]) -> [f32; LOGPROB_DIM] {
    if logprobs.is_empty() {
        return [0.0; LOGPROB_DIM];
    }
    let mut sorted: Vec<f32> = logprobs
        .iter()
        .map(|v| {
            if v.is_finite() {
                v.clamp(-100.0, 0.0)
            } else {
                -100.0
            }
        })
        .collect();
    sorted.sort_by(f32::total_cmp);
    let mean = sorted.iter().map(|v| f64::from(*v)).sum::<f64>() / sorted.len() as f64;
    [
        1.0,
        mean as f32,
        sorted[0],
        quantile(&sorted, 0.05),
        quantile(&sorted, 0.10),
        quantile(&sorted, 0.25),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_mean_minimum_and_low_quantiles() {
        // 11 values −1.0, −0.9, …, 0.0 (in shuffled order).
        let mut v: Vec<f32> = (0..=10).map(|i| -1.0 + 0.1 * i as f32).collect();
        v.reverse();
        v.swap(2, 7);
        let f = logprob_features(&v);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - -0.5).abs() < 1e-6, "mean {}", f[1]);
        assert_eq!(f[2], -1.0);
        // q05 sits halfway between the lowest two, q10 on the second, q25
        // halfway between the third and fourth.
        assert!((f[3] - -0.95).abs() < 1e-6, "q05 {}", f[3]);
        assert!((f[4] - -0.9).abs() < 1e-6, "q10 {}", f[4]);
        assert!((f[5] - -0.75).abs() < 1e-6, "q25 {}", f[5]);
    }

    #[test]
    fn no_logprobs_are_all_zeros_and_infinities_are_floored() {
        assert_eq!(logprob_features(&[]), [0.0; LOGPROB_DIM]);
        let f = logprob_features(&[f32::NEG_INFINITY, -0.5]);
        assert_eq!(f[2], -100.0);
        assert!(f.iter().all(|v| v.is_finite()));
        let one = logprob_features(&[-0.25]);
        assert_eq!(&one[1..], &[-0.25; 5]);
    }
}
