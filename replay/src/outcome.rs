//! What replay records for each request it sent.

use serde::{Deserialize, Serialize};

/// One request's result, as seen by the client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The dataset row's id.
    pub id: String,
    /// The id it was published under (row id plus run tag).
    pub request_id: String,
    /// `label_tier`, when the dataset has labels.
    pub label_tier: Option<u8>,
    /// Whether the small model answered this prompt well (dataset outcome).
    pub small_ok: Option<bool>,
    /// Whether the large model answered it well.
    pub large_ok: Option<bool>,
    /// The tier that answered (`None` in a direct run: no routing).
    pub tier: Option<u8>,
    /// The router's score (`None` in a direct run).
    pub score: Option<f64>,
    /// The routing and escalation reasons.
    pub reasons: Vec<String>,
    /// Client-side time to first chunk, ms (from just before publishing).
    pub ttft_ms: Option<f64>,
    /// Client-side time to the completion, ms.
    pub total_ms: Option<f64>,
    /// Prompt tokens of the answering attempt.
    pub prompt_tokens: u32,
    /// Completion tokens of the answering attempt.
    pub completion_tokens: u32,
    /// The attempt that answered (1 unless a stream restarted).
    pub attempts: u32,
    /// The error code, when the request failed.
    pub error: Option<String>,
    /// What the error said, when it said something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The first characters of the answer.
    pub answer_preview: Option<String>,
    /// Cost booked in the ledger for all attempts, USD.
    pub cost: Option<f64>,
    /// The same tokens at tier-2 prices, USD.
    pub baseline_cost: Option<f64>,
}

impl Outcome {
    /// Answered without error (through Triage: a completion; direct: the
    /// stream ended normally).
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.total_ms.is_some()
    }

    /// Whether any reason says the request was escalated.
    pub fn escalated(&self) -> bool {
        self.reasons.iter().any(|r| r.starts_with("escalated"))
    }
}
