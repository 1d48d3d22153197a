//! The messages. Field names are the wire names: MessagePack maps and JSON
//! objects use exactly these keys (see `schemas/`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::SCHEMA_VERSION;

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

fn default_true() -> bool {
    true
}

fn default_one() -> u32 {
    1
}

/// A model tier: 1 is the small, cheap model; 2 the large one. On the wire
/// it is the integer 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Tier {
    /// Tier 1: the small model (Llama-3.1-8B INT4 in the reference deployment).
    Small,
    /// Tier 2: the large model (Llama-3.1-70B FP8 in the reference deployment).
    Large,
}

impl Tier {
    /// 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            Tier::Small => 1,
            Tier::Large => 2,
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// A tier number other than 1 or 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tier must be 1 or 2, got {0}")]
pub struct InvalidTier(pub u8);

impl TryFrom<u8> for Tier {
    type Error = InvalidTier;
    fn try_from(n: u8) -> Result<Self, InvalidTier> {
        match n {
            1 => Ok(Tier::Small),
            2 => Ok(Tier::Large),
            other => Err(InvalidTier(other)),
        }
    }
}

impl From<Tier> for u8 {
    fn from(t: Tier) -> u8 {
        t.number()
    }
}

/// One OpenAI-style chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }
}

/// What a client publishes on `llm.requests`.
///
/// Either `messages` or `prompt` carries the input; a plain `prompt` is a
/// single user message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Schema version; this build speaks [`SCHEMA_VERSION`].
    #[serde(default = "schema_version")]
    pub version: u32,
    /// Client-chosen id, the idempotency key. Clients that leave it empty
    /// get a UUIDv7 (see [`Request::ensure_id`]).
    #[serde(default)]
    pub id: String,
    /// OpenAI-style chat messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// A plain prompt, used when `messages` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Upper bound on generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Stream chunks to the reply subject (true) or send only the completion.
    #[serde(default = "default_true")]
    pub stream: bool,
    /// Number of choices (only 1 is supported with `stream`).
    #[serde(default = "default_one")]
    pub n: u32,
    /// Explicit tier, honoured when the router's policy allows overrides.
    /// Kept as a raw number so an invalid value reaches the router's
    /// validation (`invalid_tier`) instead of failing decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u8>,
    /// Who pays: the ledger books cost per tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Free-form client metadata, carried through untouched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Generation options passed to the backend as they are, under their
    /// OpenAI/vLLM names (`top_p`, `stop`, `seed`, `response_format`, …);
    /// checked by [`crate::params::check`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Absolute deadline, Unix epoch milliseconds; work not started by then
    /// is dropped with `deadline_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Where chunks, the completion and errors go. Taken, in order, from this
    /// field, the `Triage-Reply-To` header, or the NATS reply subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Keep the completion on `llm.results.<id>` (batch jobs) instead of
    /// needing a listener on the reply subject.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_result: bool,
    /// When the client submitted it, Unix epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at_ms: Option<u64>,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            version: SCHEMA_VERSION,
            id: String::new(),
            messages: None,
            prompt: None,
            max_tokens: None,
            temperature: None,
            stream: true,
            n: 1,
            tier: None,
            tenant: None,
            metadata: BTreeMap::new(),
            params: BTreeMap::new(),
            deadline_ms: None,
            reply_to: None,
            keep_result: false,
            submitted_at_ms: None,
        }
    }
}

impl Request {
    /// A request for a single user prompt.
    pub fn from_prompt(prompt: impl Into<String>) -> Self {
        Self {
            prompt: Some(prompt.into()),
            ..Self::default()
        }
    }

    /// Gives the request a UUIDv7 id if the client chose none.
    pub fn ensure_id(&mut self) -> &str {
        if self.id.is_empty() {
            self.id = uuid::Uuid::now_v7().to_string();
        }
        &self.id
    }

    /// The conversation as chat messages: `messages`, or `prompt` as one
    /// user message.
    pub fn chat_messages(&self) -> Vec<ChatMessage> {
        match (&self.messages, &self.prompt) {
            (Some(m), _) if !m.is_empty() => m.clone(),
            (_, Some(p)) => vec![ChatMessage::user(p.clone())],
            _ => Vec::new(),
        }
    }

    /// Total bytes of input text, for size limits.
    pub fn input_bytes(&self) -> usize {
        let m: usize = self
            .messages
            .iter()
            .flatten()
            .map(|m| m.content.len())
            .sum();
        m + self.prompt.as_ref().map_or(0, String::len)
    }

    /// Whether the deadline, if any, has passed at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.deadline_ms.is_some_and(|d| now_ms >= d)
    }
}

/// Why a request went where it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingDecision {
    /// The tier the request is sent to.
    pub tier: Tier,
    /// The blended complexity score in [0, 1]; tier 2 at or above the
    /// threshold.
    pub score: f64,
    /// How sure the router is, in [0, 1]: grows with the distance from the
    /// threshold.
    pub confidence: f64,
    /// Each scoring step's contribution and any override, in order, e.g.
    /// `rule:code_fence`, `embedding=0.71`, `escalated_tier1_unavailable`.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Shadow mode: `tier` is where the request was sent, `shadow_tier`
    /// where the router would have sent it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// In shadow mode, the tier the router decided on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_tier: Option<Tier>,
    /// The threshold the score was compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

impl RoutingDecision {
    /// A decision made without scoring (an override or a fallback).
    pub fn fixed(tier: Tier, reason: impl Into<String>) -> Self {
        Self {
            tier,
            score: if tier == Tier::Large { 1.0 } else { 0.0 },
            confidence: 1.0,
            reasons: vec![reason.into()],
            shadow: false,
            shadow_tier: None,
            threshold: None,
        }
    }

    /// The operator pinned the request's tenant to `tier`
    /// (reason `tenant_pin:<tier>`).
    pub fn tenant_pin(tier: Tier) -> Self {
        Self::fixed(tier, format!("{TENANT_PIN}:{tier}"))
    }

    /// The client asked for `tier` and the policy allowed it
    /// (reason `override:<tier>`).
    pub fn requested(tier: Tier) -> Self {
        Self::fixed(tier, format!("{OVERRIDE}:{tier}"))
    }

    /// The tier fixed by a tenant pin or the client's explicit `tier`, if
    /// either chose one: such a request is answered there or not at all
    /// (no escalation moves it).
    pub fn fixed_tier(&self) -> Option<Tier> {
        self.reasons.iter().find_map(|r| {
            let (kind, tier) = r.split_once(':')?;
            if kind != TENANT_PIN && kind != OVERRIDE {
                return None;
            }
            tier.parse::<u8>().ok().and_then(|t| Tier::try_from(t).ok())
        })
    }
}

/// The reason kind of a tenant pin.
const TENANT_PIN: &str = "tenant_pin";
/// The reason kind of a client's explicit tier.
const OVERRIDE: &str = "override";

/// What the router publishes on `llm.tier1` / `llm.tier2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutedRequest {
    /// Schema version.
    #[serde(default = "schema_version")]
    pub version: u32,
    /// The client's request, with `id` and `reply_to` resolved.
    pub request: Request,
    /// The router's decision.
    pub routing: RoutingDecision,
    /// When the router published it, Unix epoch milliseconds.
    #[serde(default)]
    pub routed_at_ms: u64,
}

/// A piece of streamed text, sent to the reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// The request id.
    pub id: String,
    /// Position within the attempt, from 0, without gaps.
    pub seq: u32,
    /// Generation attempt, from 1. A chunk with a higher attempt than the
    /// ones before means the earlier text is void: reset and start over.
    pub attempt: u32,
    /// The text to append.
    pub delta: String,
    /// The log probabilities of the tokens this chunk's text came from,
    /// when the request asked for them (`params.logprobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// Token counts of one generation attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// True when the backend sent no usage and Triage counted the tokens
    /// itself.
    #[serde(default)]
    pub estimated: bool,
}

impl Usage {
    /// Prompt plus completion tokens.
    pub fn total_tokens(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// The last message of a successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The request id.
    pub id: String,
    /// The attempt that produced the answer.
    pub attempt: u32,
    /// `stop`, `length`, … as the backend reported it.
    pub finish_reason: String,
    /// Token counts.
    pub usage: Usage,
    /// The tier that answered.
    pub tier: Tier,
    /// The model that answered, as the backend names it.
    pub model: String,
    /// Time to first token, milliseconds, from the worker's start of work.
    pub ttft_ms: f64,
    /// Total generation time, milliseconds.
    pub total_ms: f64,
    /// Chunks sent in this attempt (so a client can tell it missed none).
    #[serde(default)]
    pub chunks: u32,
    /// Bytes (UTF-8) of the answering attempt's text: what its chunks add up
    /// to, or the length of `text`. With `chunks`, lets a client tell that
    /// the text it has is whole ([`crate::AnswerCheck`]). Absent from older
    /// workers: then only the count is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_bytes: Option<u64>,
    /// The whole text; set when the request did not stream, or kept its
    /// result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The routing decision, including any escalation reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingDecision>,
    /// The answering attempt's token log probabilities, when the request
    /// asked for them (`params.logprobs`) and did not stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Choices 1 to n-1 of a request with `n` > 1 (not streamed): choice 0
    /// is `text` and `finish_reason`. `usage` counts every choice's tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Alternative>,
}

/// Another choice of an `n` > 1 answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    /// Its index among the choices (1 to n-1).
    pub index: u32,
    /// Its whole text.
    pub text: String,
    /// `stop`, `length`, … for this choice.
    pub finish_reason: String,
}

/// One generated token's log probability (OpenAI's `logprobs.content[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural log probability.
    pub logprob: f64,
    /// The most likely alternatives (`params.top_logprobs` of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative of a [`TokenLogprob`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The alternative token's text.
    pub token: String,
    /// Its natural log probability.
    pub logprob: f64,
}

/// An error answer: the request will not be answered further.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The request id, when it could be read.
    #[serde(default)]
    pub id: String,
    /// Machine-readable code from a closed list.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// Whether sending the same request again may succeed.
    pub retryable: bool,
}

impl ErrorReply {
    /// An error with the code's default retryability.
    pub fn new(id: impl Into<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            code,
            message: message.into(),
            retryable: code.is_retryable(),
        }
    }
}

/// Everything published on a reply subject, tagged by `type`.
// A completion is larger than a chunk, but each reply is built once and
// encoded at once: boxing would only add an allocation per answer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// A piece of text.
    Chunk(Chunk),
    /// The final success message.
    Completion(Completion),
    /// The final error message.
    Error(ErrorReply),
}

impl Reply {
    /// Decodes a reply, naming the offending field on error. (Decoding the
    /// tagged enum directly would lose the field path: serde buffers
    /// internally tagged enums before choosing the variant.)
    pub fn decode(encoding: crate::Encoding, bytes: &[u8]) -> Result<Reply, crate::DecodeError> {
        #[derive(Deserialize)]
        struct Tag {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        let tag: Tag = crate::decode(encoding, bytes)?;
        match tag.kind.as_deref() {
            Some("chunk") => crate::decode(encoding, bytes).map(Reply::Chunk),
            Some("completion") => crate::decode(encoding, bytes).map(Reply::Completion),
            Some("error") => crate::decode(encoding, bytes).map(Reply::Error),
            Some(other) => Err(crate::DecodeError::InvalidField {
                field: "type".into(),
                reason: format!(
                    "unknown variant `{other}`, expected one of `chunk`, `completion`, `error`"
                ),
            }),
            None => Err(crate::DecodeError::MissingField {
                field: "type".into(),
            }),
        }
    }

    /// Whether this ends the answer.
    pub fn is_final(&self) -> bool {
        !matches!(self, Reply::Chunk(_))
    }
}

/// How a generation attempt ended, for the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageStatus {
    /// Answered.
    Ok,
    /// Failed; tokens generated before the failure are still booked.
    Error,
    /// Cancelled by Triage (early-exit escalation) or by shutdown.
    Cancelled,
    /// The worker died mid-generation: booked by the next delivery from the
    /// attempt's last progress record (up to one progress interval of
    /// tokens may be missing; always `estimated`).
    Interrupted,
    /// The other tier's answer to a sampled request, generated in the
    /// background and never sent to the client (`triage-shadow`): spend,
    /// but no part of the savings figures.
    Shadow,
    /// A judge model grading an answer (`triage-shadow`); counted like
    /// [`UsageStatus::Shadow`].
    Judge,
}

impl UsageStatus {
    /// The wire and ledger spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageStatus::Ok => "ok",
            UsageStatus::Error => "error",
            UsageStatus::Cancelled => "cancelled",
            UsageStatus::Interrupted => "interrupted",
            UsageStatus::Shadow => "shadow",
            UsageStatus::Judge => "judge",
        }
    }
}

/// Published on `llm.usage` once per finished generation attempt; the
/// ledger books exactly one row per (`id`, `attempt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Schema version.
    #[serde(default = "schema_version")]
    pub version: u32,
    /// The request id.
    pub id: String,
    /// The attempt, from 1.
    pub attempt: u32,
    /// Who pays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The tier that generated.
    pub tier: Tier,
    /// The model that generated.
    pub model: String,
    /// Token counts.
    pub usage: Usage,
    /// How the attempt ended.
    pub status: UsageStatus,
    /// The router's score, if the request was scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Routing and escalation reasons.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Time to first token, milliseconds, if a token came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Total time of the attempt, milliseconds.
    pub total_ms: f64,
    /// When the attempt ended, Unix epoch milliseconds; prices in force at
    /// this time apply.
    pub finished_at_ms: u64,
    /// The error code when `status` is `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// With status `judge`: the grade this judge call gave, which the
    /// ledger records in `outcomes` together with the call's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged: Option<crate::shadow::Judged>,
}

impl UsageEvent {
    /// The JetStream message id that makes publishing idempotent:
    /// `usage:<tenant>.<id>:<attempt>` (see [`crate::RequestKey::msg_id`]).
    pub fn msg_id(&self) -> String {
        let key = crate::RequestKey::new(self.tenant.as_deref(), &self.id);
        format!("{}:{}", key.msg_id("usage"), self.attempt)
    }
}
