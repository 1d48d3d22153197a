//! The verify stage: before a tier-1 answer to a `stream: false` request
//! is released, the verifier of `triage-complexity` estimates P(the answer
//! is poor) from the question and the finished answer; at or above
//! `verify.threshold` the request is answered again on tier 2 (reason
//! `escalated_verify`, attempt + 1), the tier-1 attempt booked like any
//! other. With `verify.share.target` the threshold instead escalates that
//! share of the recent answers this worker verified (see
//! `triage_complexity::share_threshold`).
//!
//! The embedding (MiniLM over the answer's end) is the router's own model
//! and code path, loaded once; scoring runs on the blocking pool. A
//! verifier that fails on one answer releases it (logged and counted): the
//! answer exists, and refusing it would turn a verifier fault into an
//! outage.

use std::sync::Arc;

use triage_complexity::prompt_text::text_to_score;
use triage_complexity::share_threshold::TrackedThreshold;
use triage_complexity::verifier::{AnswerToVerify, Verifier, VerifyConfig};
use triage_complexity::{MiniLm, ModelFiles, Truncator};
use triage_protocol::{Completion, RoutedRequest, Tier};

/// Routing reason of a request whose tier-1 answer failed verification.
pub const ESCALATED_VERIFY: &str = "escalated_verify";

/// Tokens of the answer's end the embedding sees (the router's limit).
const MAX_TOKENS: usize = 512;

/// Why the verifier could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum VerifyLoadError {
    /// The head file.
    #[error(transparent)]
    Head(#[from] triage_complexity::head::HeadError),
    /// The embedding model.
    #[error(transparent)]
    Model(#[from] triage_complexity::EmbedError),
}

/// What the stage decided about an answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Release it.
    Release,
    /// Answer again on tier 2.
    Escalate {
        /// The verify score (≥ the threshold).
        score: f64,
    },
}

/// The loaded verifier with its model.
pub struct AnswerCheck {
    verifier: Verifier,
    model: Option<(MiniLm, Truncator)>,
    threshold: TrackedThreshold,
}

impl AnswerCheck {
    /// Loads the head `config` names and, if it needs one, the model.
    pub fn load(config: &VerifyConfig) -> Result<Self, VerifyLoadError> {
        let verifier = Verifier::from_config(config)?;
        let model = if verifier.needs_embedding() {
            let files = config
                .model_dir
                .as_ref()
                .map_or_else(ModelFiles::default_minilm, ModelFiles::new);
            let model = MiniLm::load(&files)?;
            let truncator = Truncator::from_file(&files.tokenizer(), MAX_TOKENS)?;
            Some((model, truncator))
        } else {
            None
        };
        let threshold = TrackedThreshold::new(verifier.verify_threshold(), &config.share);
        Ok(Self {
            verifier,
            model,
            threshold,
        })
    }

    /// The escalation threshold in use now: the verify score configured,
    /// or the one escalating `verify.share.target` of recent answers.
    pub fn threshold(&self) -> f64 {
        self.threshold.current()
    }

    /// Counts `score` as a verified answer and says whether it escalates.
    pub fn escalates(&self, score: f64) -> bool {
        score >= self.threshold.observe(score)
    }

    /// Whether an answer of `tier` to `routed` is verified: tier 1, not
    /// streamed (a streamed answer is already with the client; its verify
    /// stage is the early-exit gate on the first tokens), and not fixed to
    /// tier 1 by a tenant pin or the client's `tier` (no escalation may move
    /// such a request).
    pub fn applies(tier: Tier, routed: &RoutedRequest) -> bool {
        tier == Tier::Small && !routed.request.stream && routed.routing.fixed_tier().is_none()
    }

    /// The verify score of one answer (blocking: a model pass).
    pub fn score(
        &self,
        question: &str,
        answer: &str,
    ) -> Result<f64, triage_complexity::EmbedError> {
        let item = AnswerToVerify {
            question,
            answer,
            logprobs: &[],
        };
        match &self.model {
            Some((model, truncator)) => {
                Ok(self.verifier.score_batch(model, truncator, &[item])?[0])
            }
            None => Ok(self.verifier.score(question, answer, &[], None)),
        }
    }

    /// Judges a finished completion on the blocking pool.
    pub async fn judge(
        self: &Arc<Self>,
        routed: &RoutedRequest,
        completion: &Completion,
    ) -> Verdict {
        let question = text_to_score(&routed.request.chat_messages());
        let answer = completion.text.clone().unwrap_or_default();
        let me = Arc::clone(self);
        let scored = tokio::task::spawn_blocking(move || me.score(&question, &answer)).await;
        match scored {
            Ok(Ok(score)) if self.escalates(score) => {
                tracing::info!(
                    score,
                    threshold = self.threshold(),
                    "tier-1 answer failed verification: escalating"
                );
                Verdict::Escalate { score }
            }
            Ok(Ok(score)) => {
                tracing::debug!(score, "tier-1 answer verified");
                Verdict::Release
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "verifier failed: answer released unverified");
                Verdict::Release
            }
            Err(e) => {
                tracing::warn!(error = %e, "verifier task failed: answer released unverified");
                Verdict::Release
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_protocol::{Request, RoutingDecision};

    fn routed(stream: bool, routing: RoutingDecision) -> RoutedRequest {
        RoutedRequest {
            version: 1,
            request: Request {
                stream,
                ..Request::from_prompt("hi")
            },
            routing,
            routed_at_ms: 0,
        }
    }

    #[test]
    fn only_whole_tier1_answers_the_router_chose_are_verified() {
        let scored = || RoutingDecision::fixed(Tier::Small, "embedding=0.2");
        assert!(AnswerCheck::applies(Tier::Small, &routed(false, scored())));
        assert!(!AnswerCheck::applies(Tier::Small, &routed(true, scored())));
        assert!(!AnswerCheck::applies(Tier::Large, &routed(false, scored())));
        let pinned = RoutingDecision::tenant_pin(Tier::Small);
        assert!(!AnswerCheck::applies(Tier::Small, &routed(false, pinned)));
        let asked = RoutingDecision::requested(Tier::Small);
        assert!(!AnswerCheck::applies(Tier::Small, &routed(false, asked)));
    }
}
