//! Serde types of the OpenAI chat-completions API as vLLM and llama.cpp serve it.
//!
//! Response types are lenient (unknown fields ignored, optional fields defaulted) because
//! servers differ: vLLM sends `delta.content: ""` in the role chunk and `stop_reason`,
//! llama.cpp sends `content: null`, token `id`s and `timings`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A chat message of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// Text content.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// `stream_options` of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final chunk with `usage` (and empty `choices`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// Body of `POST /v1/chat/completions`. Unset options are not sent, so the server's defaults
/// apply; `extra` carries any other field (e.g. vLLM's `top_k`, `repetition_penalty`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model name; vLLM answers 404 if it differs from `--served-model-name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Completion token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stop strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Return token logprobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Alternatives per token (needs `logprobs: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Set by the client: true for [`crate::BackendClient::chat_stream`], false for
    /// [`crate::BackendClient::chat`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Any other fields, sent as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// A request with these messages and nothing else set.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// Adds a client's generation options (the protocol's `params`, already
    /// checked) under their own names. Logprobs asked for by the client are
    /// merged with Triage's own need for them rather than sent twice; the
    /// rest go as they are, so a backend option Triage has never heard of
    /// still reaches the backend.
    pub fn apply_params<'a>(&mut self, params: impl IntoIterator<Item = (&'a String, &'a Value)>) {
        for (name, value) in params {
            match (name.as_str(), value) {
                ("logprobs", Value::Bool(b)) => {
                    self.logprobs = Some(self.logprobs.unwrap_or(false) || *b);
                }
                ("top_logprobs", v) if v.as_u64().is_some() => {
                    self.top_logprobs = v.as_u64().and_then(|n| u32::try_from(n).ok());
                }
                _ => {
                    self.extra.insert(name.clone(), value.clone());
                }
            }
        }
    }
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u32,
    /// Generated tokens (all choices).
    #[serde(default)]
    pub completion_tokens: u32,
    /// Sum of both.
    #[serde(default)]
    pub total_tokens: u32,
}

/// One alternative in `top_logprobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Natural log probability.
    pub logprob: f64,
    /// UTF-8 bytes of the token (may be absent).
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
}

/// Logprob of one generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// Token text.
    pub token: String,
    /// Natural log probability.
    pub logprob: f64,
    /// UTF-8 bytes of the token (may be absent).
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    /// Most likely alternatives.
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

/// `logprobs` of a choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    /// Per-token entries (null for some servers when empty).
    #[serde(default)]
    pub content: Option<Vec<TokenLogprob>>,
}

/// `delta` of a streamed choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkDelta {
    /// `assistant` in the first chunk.
    #[serde(default)]
    pub role: Option<String>,
    /// New text (empty or null in role and finish chunks).
    #[serde(default)]
    pub content: Option<String>,
}

/// A choice in a streamed chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Choice index.
    #[serde(default)]
    pub index: u32,
    /// What is new.
    #[serde(default)]
    pub delta: ChunkDelta,
    /// Logprobs of the tokens in this delta.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// Set when the choice ends.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// vLLM: the stop string (or token id) that ended it.
    #[serde(default)]
    pub stop_reason: Option<Value>,
}

/// One `chat.completion.chunk`. `choices` is required (it is present, maybe empty, in every
/// real chunk), which is what tells a chunk apart from an error object in the stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// `chatcmpl-…`.
    #[serde(default)]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(default)]
    pub object: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created: Option<u64>,
    /// Model that answered.
    #[serde(default)]
    pub model: Option<String>,
    /// Choices (empty in the usage chunk).
    pub choices: Vec<ChunkChoice>,
    /// Present in the usage chunk.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Assistant message of a non-streamed choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// `assistant`.
    #[serde(default)]
    pub role: Option<String>,
    /// The text (null for tool calls).
    #[serde(default)]
    pub content: Option<String>,
}

/// A non-streamed choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// Choice index.
    #[serde(default)]
    pub index: u32,
    /// The answer.
    #[serde(default)]
    pub message: ResponseMessage,
    /// Token logprobs when asked for.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop`, `length`, ...
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// vLLM: stop string or token that ended it.
    #[serde(default)]
    pub stop_reason: Option<Value>,
}

/// A non-streamed `chat.completion`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    #[serde(default)]
    pub id: String,
    /// Model that answered.
    #[serde(default)]
    pub model: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created: Option<u64>,
    /// One per `n`.
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    #[serde(default)]
    pub usage: Option<Usage>,
}

impl ChatCompletion {
    /// Text of the first choice ("" if none).
    pub fn text(&self) -> &str {
        self.choices
            .first()
            .and_then(|c| c.message.content.as_deref())
            .unwrap_or("")
    }
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Served model name.
    pub id: String,
    /// `vllm`, `llamacpp`, ...
    #[serde(default)]
    pub owned_by: Option<String>,
    /// vLLM: the context window.
    #[serde(default)]
    pub max_model_len: Option<u32>,
    /// llama.cpp: model metadata, including `n_ctx`.
    #[serde(default)]
    pub meta: Option<Value>,
}

impl ModelCard {
    /// Context window in tokens: vLLM's `max_model_len`, else llama.cpp's `meta.n_ctx`.
    pub fn context_length(&self) -> Option<u32> {
        self.max_model_len.or_else(|| {
            self.meta
                .as_ref()?
                .get("n_ctx")?
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
        })
    }
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// The served models.
    #[serde(default)]
    pub data: Vec<ModelCard>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_are_sent_once_under_their_own_names() {
        let mut chat = ChatRequest::new(vec![ChatMessage::user("hi")]);
        chat.logprobs = Some(true); // Triage's early-exit gate wants them
        let params: Map<String, Value> = serde_json::from_value(json!({
            "top_p": 0.5, "stop": ["END"], "seed": 3, "logprobs": false, "top_logprobs": 2,
            "response_format": {"type": "json_object"}, "top_k": 40
        }))
        .unwrap();
        chat.apply_params(&params);
        let body = serde_json::to_string(&chat).unwrap();
        assert_eq!(body.matches("\"logprobs\"").count(), 1, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["logprobs"], true, "the gate still gets them");
        assert_eq!(body["top_logprobs"], 2);
        assert_eq!(body["top_p"], 0.5);
        assert_eq!(body["stop"], json!(["END"]));
        assert_eq!(body["seed"], 3);
        assert_eq!(body["response_format"]["type"], "json_object");
        assert_eq!(body["top_k"], 40, "unknown options reach the backend");
    }
}
