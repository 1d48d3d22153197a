//! # triage-backend — OpenAI-compatible streaming chat client
//!
//! Talks to vLLM (or llama.cpp's `llama-server`, or the `triage-vllm-sim` simulator) over
//! `POST /v1/chat/completions`, streamed or not, plus `GET /health` and `GET /v1/models`.
//! Used by the tier workers, the router's self-rating and replay.
//!
//! - [`sse`]: a pure, incremental SSE parser turning body bytes into [`ChatChunk`]s,
//!   `[DONE]`, in-stream error objects, and malformed lines (reported, never fatal).
//! - [`BackendClient::chat_stream`]: a `Stream` of [`StreamEvent`]s (start, content delta with
//!   optional logprobs, finish, usage, malformed) with first-byte and between-chunk timeouts.
//! - [`BackendError`]: typed failures with [`BackendError::is_retryable`] and
//!   [`BackendError::is_context_length`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), triage_backend::BackendError> {
//! use futures::StreamExt;
//! use triage_backend::{BackendClient, BackendConfig, ChatMessage, ChatRequest, StreamEvent};
//! let client = BackendClient::new(BackendConfig::new("http://127.0.0.1:8000"))?;
//! let mut request = ChatRequest::new(vec![ChatMessage::user("Hello")]);
//! request.max_tokens = Some(16);
//! let mut stream = client.chat_stream(&request);
//! while let Some(event) = stream.next().await {
//!     match event? {
//!         StreamEvent::Delta { content, .. } => print!("{content}"),
//!         StreamEvent::Usage(usage) => println!("\n{usage:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod config;
pub mod error;
pub mod events;
pub mod sse;
pub mod types;

pub use client::{BackendClient, ChatStream};
pub use config::{ApiKey, BackendConfig};
pub use error::{ApiError, BackendError, TimeoutPhase};
pub use events::{FinishReason, StreamEvent, StreamSummary};
pub use sse::{SseItem, SseParser};
pub use types::{
    ChatChunk, ChatCompletion, ChatMessage, ChatRequest, ChoiceLogprobs, ModelCard, ModelList,
    StreamOptions, TokenLogprob, TopLogprob, Usage,
};
