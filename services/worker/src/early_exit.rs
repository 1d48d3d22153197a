//! The early-exit gate (pure): hold back the first tokens of a tier-1
//! answer and judge the model's confidence from their log-probabilities.
//!
//! A small model that is unsure of its first tokens tends to produce a poor
//! answer; escalating before anything reaches the client costs only those
//! few tokens. The judgement is the mean logprob of the first `hold` tokens
//! against a threshold. A backend that sends no logprobs cannot be judged:
//! its text is released once `hold` deltas arrived.

/// What the gate says after a delta.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep holding.
    Hold,
    /// Confident enough: send this text (everything held so far), and pass
    /// later deltas straight through.
    Release(String),
    /// Not confident: cancel and escalate.
    Escalate {
        /// The mean logprob of the held tokens.
        mean_logprob: f64,
        /// Tokens judged.
        tokens: usize,
    },
}

/// The gate of one attempt.
#[derive(Debug)]
pub struct ConfidenceGate {
    hold: usize,
    threshold: f64,
    held: String,
    logprobs: Vec<f64>,
    deltas: usize,
    open: bool,
}

impl ConfidenceGate {
    /// Holds `hold` tokens and escalates below `threshold` mean logprob.
    pub fn new(hold: u32, threshold: f64) -> Self {
        Self {
            hold: hold.max(1) as usize,
            threshold,
            held: String::new(),
            logprobs: Vec::new(),
            deltas: 0,
            open: false,
        }
    }

    /// Whether the gate has released (deltas now pass straight through).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Tokens seen by the gate (by logprob entries, else by deltas).
    pub fn tokens_seen(&self) -> usize {
        self.logprobs.len().max(self.deltas)
    }

    /// Feeds a delta and the logprobs of its tokens (empty if none came).
    pub fn push(&mut self, content: &str, logprobs: &[f64]) -> Verdict {
        if self.open {
            return Verdict::Release(content.to_string());
        }
        self.held.push_str(content);
        self.logprobs.extend_from_slice(logprobs);
        self.deltas += 1;
        if self.logprobs.len() >= self.hold
            || (self.logprobs.is_empty() && self.deltas >= self.hold)
        {
            self.decide()
        } else {
            Verdict::Hold
        }
    }

    /// The stream ended: judge what was held.
    pub fn finish(&mut self) -> Verdict {
        if self.open {
            return Verdict::Release(String::new());
        }
        self.decide()
    }

    fn decide(&mut self) -> Verdict {
        let judged = &self.logprobs[..self.logprobs.len().min(self.hold)];
        if !judged.is_empty() {
            let mean = judged.iter().sum::<f64>() / judged.len() as f64;
            if mean < self.threshold {
                return Verdict::Escalate {
                    mean_logprob: mean,
                    tokens: judged.len(),
                };
            }
        }
        self.open = true;
        Verdict::Release(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confident_start_is_released_whole_then_passes_through() {
        let mut g = ConfidenceGate::new(3, -1.0);
        assert_eq!(g.push(" The", &[-0.1]), Verdict::Hold);
        assert_eq!(g.push(" sky", &[-0.2]), Verdict::Hold);
        assert_eq!(
            g.push(" is", &[-0.3]),
            Verdict::Release(" The sky is".into())
        );
        assert!(g.is_open());
        assert_eq!(g.push(" blue", &[-5.0]), Verdict::Release(" blue".into()));
    }

    #[test]
    fn unsure_start_escalates_before_anything_is_released() {
        let mut g = ConfidenceGate::new(4, -1.0);
        assert_eq!(g.push(" a b", &[-2.0, -1.5]), Verdict::Hold);
        match g.push(" c d e", &[-2.0, -0.5, -0.1]) {
            Verdict::Escalate {
                mean_logprob,
                tokens,
            } => {
                // Only the first four tokens are judged.
                assert_eq!(tokens, 4);
                assert!((mean_logprob - (-1.5)).abs() < 1e-9);
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(g.tokens_seen(), 5);
    }

    #[test]
    fn short_answers_are_judged_at_the_end() {
        let mut g = ConfidenceGate::new(8, -1.0);
        assert_eq!(g.push(" ok", &[-0.2]), Verdict::Hold);
        assert_eq!(g.finish(), Verdict::Release(" ok".into()));
        let mut g = ConfidenceGate::new(8, -1.0);
        g.push(" hmm", &[-3.0]);
        assert!(matches!(g.finish(), Verdict::Escalate { tokens: 1, .. }));
    }

    #[test]
    fn without_logprobs_text_is_released_after_hold_deltas() {
        let mut g = ConfidenceGate::new(2, -1.0);
        assert_eq!(g.push("a", &[]), Verdict::Hold);
        assert_eq!(g.push("b", &[]), Verdict::Release("ab".into()));
    }
}
