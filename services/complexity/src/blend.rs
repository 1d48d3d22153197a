//! Blending the embedding score with the LLM self-rating, the threshold and
//! the confidence.

use serde::{Deserialize, Serialize};

/// Weights of the two scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlendWeights {
    /// Weight of the embedding head's probability.
    pub embedding: f64,
    /// Weight of the LLM self-rating (digit / 10).
    pub llm: f64,
}

impl Default for BlendWeights {
    fn default() -> Self {
        Self {
            embedding: 0.6,
            llm: 0.4,
        }
    }
}

/// Turns scores into a tier decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Blend {
    /// The weights.
    pub weights: BlendWeights,
    /// Tier 2 when the blended score is at or above this.
    pub threshold: f64,
}

/// A scored decision (before overrides and shadow mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The blended score in [0, 1].
    pub score: f64,
    /// Whether it goes to tier 2.
    pub tier2: bool,
    /// Grows from 0 at the threshold to 1 at either end of the scale.
    pub confidence: f64,
    /// The threshold the score was compared with (a tracked share's when
    /// one is kept, see [`crate::share_threshold`]).
    pub threshold: f64,
    /// Every step's contribution, in order.
    pub reasons: Vec<String>,
}

/// Invalid weights or threshold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlendError {
    /// Negative or non-finite weight, or no weight on the embedding.
    #[error("blend weights must be finite and >= 0 with embedding > 0, got embedding={embedding}, llm={llm}")]
    Weights {
        /// The embedding weight.
        embedding: f64,
        /// The LLM weight.
        llm: f64,
    },
    /// A threshold outside [0, 1].
    #[error("threshold must be within [0, 1], got {0}")]
    Threshold(f64),
}

impl Blend {
    /// Checks and builds.
    pub fn new(weights: BlendWeights, threshold: f64) -> Result<Self, BlendError> {
        let ok = |w: f64| w.is_finite() && w >= 0.0;
        if !ok(weights.embedding) || !ok(weights.llm) || weights.embedding == 0.0 {
            return Err(BlendError::Weights {
                embedding: weights.embedding,
                llm: weights.llm,
            });
        }
        if !(0.0..=1.0).contains(&threshold) {
            return Err(BlendError::Threshold(threshold));
        }
        Ok(Self { weights, threshold })
    }

    /// `(we·embedding + wl·llm) / (we + wl)`; the embedding alone when the
    /// LLM score is missing (the weights renormalised).
    pub fn combine(&self, embedding: f64, llm: Option<f64>) -> f64 {
        let w = self.weights;
        let score = match llm {
            Some(l) if w.llm > 0.0 => (w.embedding * embedding + w.llm * l) / (w.embedding + w.llm),
            _ => embedding,
        };
        score.clamp(0.0, 1.0)
    }

    /// The same weights with another threshold (one kept at a share of
    /// traffic).
    pub fn at(&self, threshold: f64) -> Self {
        Self {
            weights: self.weights,
            threshold,
        }
    }

    /// Distance from the threshold, as a share of the room on that side.
    pub fn confidence(&self, score: f64) -> f64 {
        let t = self.threshold;
        let room = if score >= t { 1.0 - t } else { t };
        if room <= 0.0 {
            return 1.0;
        }
        ((score - t).abs() / room).clamp(0.0, 1.0)
    }

    /// The decision for a scored prompt; `reasons` are the steps so far,
    /// to which the blend and threshold are appended.
    pub fn decide(&self, embedding: f64, llm: Option<f64>, mut reasons: Vec<String>) -> Decision {
        let score = self.combine(embedding, llm);
        reasons.push(format!("blend={score:.4}"));
        let tier2 = score >= self.threshold;
        Decision {
            score,
            tier2,
            confidence: self.confidence(score),
            threshold: self.threshold,
            reasons,
        }
    }

    /// A decision forced by a rule: tier 2, score 1.
    pub fn forced_tier2(&self, mut reasons: Vec<String>, reason: String) -> Decision {
        reasons.push(reason);
        Decision {
            score: 1.0,
            tier2: true,
            confidence: 1.0,
            threshold: self.threshold,
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blend() -> Blend {
        Blend::new(BlendWeights::default(), 0.65).unwrap()
    }

    #[test]
    fn blends_point_six_point_four() {
        let b = blend();
        assert!((b.combine(0.5, Some(1.0)) - 0.7).abs() < 1e-12);
        assert!((b.combine(1.0, Some(0.0)) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn missing_llm_renormalises_to_the_embedding() {
        let b = blend();
        assert_eq!(b.combine(0.42, None), 0.42);
        let no_llm = Blend::new(
            BlendWeights {
                embedding: 1.0,
                llm: 0.0,
            },
            0.5,
        )
        .unwrap();
        assert_eq!(no_llm.combine(0.42, Some(1.0)), 0.42);
    }

    #[test]
    fn threshold_is_inclusive() {
        let b = blend();
        assert!(b.decide(0.65, None, vec![]).tier2);
        assert!(!b.decide(0.6499, None, vec![]).tier2);
    }

    #[test]
    fn confidence_grows_with_distance_from_threshold() {
        let b = blend();
        assert_eq!(b.confidence(0.65), 0.0);
        assert!((b.confidence(1.0) - 1.0).abs() < 1e-12);
        assert!((b.confidence(0.0) - 1.0).abs() < 1e-12);
        assert!(b.confidence(0.3) > b.confidence(0.5));
        assert!(b.confidence(0.9) > b.confidence(0.7));
    }

    #[test]
    fn decision_records_the_blend() {
        let d = blend().decide(0.5, Some(0.9), vec!["embedding=0.5000".into()]);
        assert_eq!(d.reasons, vec!["embedding=0.5000", "blend=0.6600"]);
        assert!(d.tier2);
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(Blend::new(BlendWeights::default(), 1.5).is_err());
        assert!(Blend::new(
            BlendWeights {
                embedding: 0.0,
                llm: 1.0
            },
            0.5
        )
        .is_err());
        assert!(Blend::new(
            BlendWeights {
                embedding: f64::NAN,
                llm: 1.0
            },
            0.5
        )
        .is_err());
    }
}
