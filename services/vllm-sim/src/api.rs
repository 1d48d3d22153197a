//! The OpenAI/vLLM wire shapes the simulator reads and writes.
//!
//! Kept separate from the client's types in `triage-backend` on purpose: the simulator plays
//! the server, and tests are only meaningful if the two sides are written independently.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Body of `POST /v1/chat/completions` (the fields the simulator uses; others are accepted
/// and ignored, as vLLM ignores unsupported sampling fields).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// Model name; when present it must equal the served name.
    #[serde(default)]
    pub model: Option<String>,
    /// Conversation.
    pub messages: Vec<Message>,
    /// Token limit for the completion.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Newer OpenAI name for `max_tokens` (vLLM accepts both).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature; 0 means greedy (all `n` choices identical).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Number of choices.
    #[serde(default)]
    pub n: Option<u32>,
    /// Stop string(s).
    #[serde(default)]
    pub stop: Option<StopSpec>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Return token logprobs.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per token (0..=20), requires `logprobs`.
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// Stream as SSE.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// `{"type": "json_object" | "json_schema", ...}` makes the text one JSON
    /// object (as vLLM's guided decoding does); `text` or absent, plain text.
    #[serde(default)]
    pub response_format: Option<Value>,
}

impl ChatCompletionRequest {
    /// Whether the answer must be a JSON object.
    pub fn wants_json(&self) -> bool {
        self.response_format
            .as_ref()
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t == "json_object" || t == "json_schema")
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with `usage` and empty `choices`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl StopSpec {
    /// All stop strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// Text, or OpenAI content parts (text parts are used).
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts; `{"type":"text","text":...}` parts are joined.
    Parts(Vec<Value>),
}

impl Content {
    /// The text of this content.
    pub fn text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// vLLM's error body (`ErrorResponse`), e.g. for 400/404/500/503, fields in vLLM's order:
/// `{"object":"error","message":…,"type":…,"param":null,"code":…}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    /// Always `error`.
    pub object: &'static str,
    /// Human-readable message.
    pub message: String,
    /// vLLM's error type, e.g. `BadRequestError`.
    #[serde(rename = "type")]
    pub error_type: &'static str,
    /// Always null here.
    pub param: Option<String>,
    /// HTTP status code.
    pub code: u16,
}

/// Builds vLLM's error body for `status`.
pub fn error_body(status: u16, message: &str) -> ErrorBody {
    ErrorBody {
        object: "error",
        message: message.to_owned(),
        error_type: error_type_for(status),
        param: None,
        code: status,
    }
}

/// The vLLM `type` for a status code.
pub fn error_type_for(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "Unauthorized",
        404 => "NotFoundError",
        429 => "TooManyRequestsError",
        500 => "InternalServerError",
        503 => "ServiceUnavailableError",
        s if s >= 500 => "InternalServerError",
        _ => "BadRequestError",
    }
}

/// `logprobs.content[]` entry in OpenAI chat format.
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    /// Token text.
    pub token: String,
    /// Natural log probability.
    pub logprob: f64,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
    /// Most likely alternatives (empty unless `top_logprobs` > 0).
    pub top_logprobs: Vec<TopLogprob>,
}

/// One `top_logprobs` entry.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Natural log probability.
    pub logprob: f64,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
}

/// Usage block.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Prompt tokens (the approximation of `triage-token-estimate`).
    pub prompt_tokens: u32,
    /// Total = prompt + completion.
    pub total_tokens: u32,
    /// Generated tokens over all choices.
    pub completion_tokens: u32,
}

impl Usage {
    /// Builds a consistent usage block.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// `logprobs` object of a choice: `{"content": [...]}`.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceLogprobs {
    /// One entry per token.
    pub content: Vec<TokenLogprob>,
}

/// `delta` of a streamed choice.
#[derive(Debug, Clone, Serialize)]
pub struct Delta<'a> {
    /// Only in the first chunk of a choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'a str>,
    /// Text of this step (`""` in the role chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

/// A choice inside a `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice<'a> {
    /// Choice index.
    pub index: u32,
    /// The delta.
    pub delta: Delta<'a>,
    /// Token logprobs for this delta, or null.
    pub logprobs: Option<ChoiceLogprobs>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<&'a str>,
    /// vLLM extra, present on the last chunk only: the matched stop string or null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Option<&'a str>>,
}

/// One streamed `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize)]
pub struct Chunk<'a> {
    /// `chatcmpl-…`, the same for every chunk of a response.
    pub id: &'a str,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds, the same for every chunk.
    pub created: u64,
    /// Served model name.
    pub model: &'a str,
    /// Choices (empty in the usage chunk).
    pub choices: Vec<ChunkChoice<'a>>,
    /// Only in the final usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `message` of a non-streamed choice.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// vLLM field for reasoning models; always null here.
    pub reasoning_content: Option<String>,
    /// The generated text.
    pub content: String,
    /// Always empty here.
    pub tool_calls: Vec<Value>,
}

/// A non-streamed choice.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    /// Choice index.
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// Token logprobs, or null.
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Matched stop string, or null.
    pub stop_reason: Option<String>,
}

/// A non-streamed `chat.completion`.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// `chatcmpl-…`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    pub usage: Usage,
    /// vLLM extra; always null here.
    pub prompt_logprobs: Option<Value>,
}
