//! Shadow answers: a sampled request answered again by the other tier in
//! the background, and both answers graded by a judge model.
//!
//! The worker publishes a [`ShadowJob`] on `llm.shadow` after it answered;
//! `triage-shadow` generates the other tier's answer, has the judge grade
//! both and books every call on `llm.usage` — the judge's calls carry
//! their grade ([`Judged`]), which the ledger writes into `outcomes`.
//!
//! Ledger rows are keyed by (tenant, request id, attempt), so the shadow
//! service's calls get attempt numbers of their own, far above any real
//! attempt ([`ShadowAttempts`]): a redelivered job books the same keys and
//! the same message ids, and nothing twice.

use serde::{Deserialize, Serialize};

use crate::message::{ChatMessage, Request, Tier};
use crate::SCHEMA_VERSION;

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

/// What `triage-shadow` needs to answer a request again and grade both
/// answers. Published on `llm.shadow` once per answered, sampled request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowJob {
    /// Schema version.
    #[serde(default = "schema_version")]
    pub version: u32,
    /// The client's request (messages, params, tenant, id); its reply
    /// subject is dropped: nothing of the shadow reaches the client.
    pub request: Request,
    /// The tier that answered; the shadow runs the other one.
    pub tier: Tier,
    /// The model that answered.
    pub model: String,
    /// The answering attempt.
    pub attempt: u32,
    /// The answer the client got.
    pub answer: String,
    /// When the answer was sent, Unix epoch milliseconds.
    #[serde(default)]
    pub answered_at_ms: u64,
}

impl ShadowJob {
    /// The tier the shadow answer comes from.
    pub fn shadow_tier(&self) -> Tier {
        match self.tier {
            Tier::Small => Tier::Large,
            Tier::Large => Tier::Small,
        }
    }

    /// The JetStream message id: one job per request and answering attempt.
    pub fn msg_id(&self) -> String {
        let key = crate::RequestKey::of(&self.request);
        format!("{}:{}", key.msg_id("shadow"), self.attempt)
    }

    /// The ledger attempts of this job's calls.
    pub fn attempts(&self) -> ShadowAttempts {
        ShadowAttempts::of(self.attempt)
    }
}

/// Ledger attempt numbers of one job's three calls, derived from the
/// answering attempt so that they are the same on every delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowAttempts {
    /// The other tier's generation.
    pub shadow: u32,
    /// The judge grading the client's answer.
    pub judge_answer: u32,
    /// The judge grading the shadow answer.
    pub judge_shadow: u32,
}

/// Real attempts stay far below this (a request is given up after a
/// handful of deliveries); shadow calls are numbered from here.
pub const SHADOW_ATTEMPT_BASE: u32 = 1_000_000;

impl ShadowAttempts {
    /// The attempts for a job whose answer came from `attempt`.
    pub fn of(attempt: u32) -> Self {
        let a = attempt % SHADOW_ATTEMPT_BASE;
        Self {
            shadow: SHADOW_ATTEMPT_BASE + a,
            judge_answer: 2 * SHADOW_ATTEMPT_BASE + a,
            judge_shadow: 3 * SHADOW_ATTEMPT_BASE + a,
        }
    }
}

/// Which answer a judge call graded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgedRole {
    /// The answer the client got.
    Answer,
    /// The other tier's shadow answer.
    Shadow,
}

impl JudgedRole {
    /// The stored spelling (`outcomes.judged`).
    pub fn as_str(self) -> &'static str {
        match self {
            JudgedRole::Answer => "answer",
            JudgedRole::Shadow => "shadow",
        }
    }
}

/// A judge's grade of one answer, carried by the judge call's usage event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    /// Which answer was graded.
    pub role: JudgedRole,
    /// The tier that generated it.
    pub tier: Tier,
    /// The model that generated it.
    pub model: String,
    /// Its ledger attempt.
    pub attempt: u32,
    /// The rubric's score, 1 to 10.
    pub score: f64,
    /// Whether the score is a good one (7 or more).
    pub good: bool,
    /// The conversation and the graded answer, only when the shadow
    /// service stores learning text (`learning.store_text`, off by
    /// default): the ledger keeps them in `outcome_texts` for training
    /// and purges them after its retention period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<JudgedText>,
}

/// The text of a judged answer, for training on a deployment's own traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedText {
    /// The request's conversation as the client sent it.
    pub messages: Vec<ChatMessage>,
    /// The graded answer.
    pub answer: String,
}

/// The rubric's good-answer threshold (the rule of the shipped data).
pub const GOOD_SCORE: f64 = 7.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_attempts_never_meet_real_ones_or_each_other() {
        let a = ShadowAttempts::of(3);
        assert_eq!(
            (a.shadow, a.judge_answer, a.judge_shadow),
            (1_000_003, 2_000_003, 3_000_003)
        );
        assert_eq!(ShadowAttempts::of(3), a, "the same on every delivery");
    }

    #[test]
    fn the_shadow_runs_the_other_tier() {
        let job = |tier| ShadowJob {
            version: 1,
            request: Request::from_prompt("hi"),
            tier,
            model: "m".into(),
            attempt: 1,
            answer: "a".into(),
            answered_at_ms: 0,
        };
        assert_eq!(job(Tier::Small).shadow_tier(), Tier::Large);
        assert_eq!(job(Tier::Large).shadow_tier(), Tier::Small);
    }
}
