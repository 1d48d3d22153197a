//! One model call through the shared backend client: the shadow
//! generation or a judge call, non-streamed (nobody reads it as it comes),
//! with what the ledger needs to book it.

use std::time::Instant;

use triage_backend::{BackendClient, BackendError, ChatRequest};
use triage_protocol::{ChatMessage, Usage};

/// What a call asks for.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// The served model name.
    pub model: &'a str,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0 for the judge).
    pub temperature: Option<f32>,
    /// The client's generation options (shadow generation only).
    pub params: Option<&'a std::collections::BTreeMap<String, serde_json::Value>>,
}

/// What a call came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The text of choice 0.
    pub text: String,
    /// Token counts (estimated when the server sent none).
    pub usage: Usage,
    /// Milliseconds the call took.
    pub total_ms: f64,
    /// When it ended, Unix epoch milliseconds.
    pub finished_at_ms: u64,
}

/// Makes the call.
pub async fn ask(client: &BackendClient, ask: &Ask<'_>) -> Result<Answer, BackendError> {
    let messages = ask
        .messages
        .iter()
        .map(|m| triage_backend::ChatMessage::new(m.role.clone(), m.content.clone()))
        .collect();
    let mut request = ChatRequest::new(messages);
    request.model = Some(ask.model.to_string());
    request.max_tokens = ask.max_tokens;
    request.temperature = ask.temperature;
    if let Some(params) = ask.params {
        request.apply_params(params);
    }
    let started = Instant::now();
    let completion = client.chat(&request).await?;
    let text = completion.text().to_string();
    let usage = match completion.usage {
        Some(u) => Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            estimated: false,
        },
        None => Usage {
            prompt_tokens: triage_token_estimate::count_chat(
                ask.messages
                    .iter()
                    .map(|m| (m.role.as_str(), m.content.as_str())),
            ),
            completion_tokens: triage_token_estimate::count(&text),
            estimated: true,
        },
    };
    Ok(Answer {
        text,
        usage,
        total_ms: started.elapsed().as_secs_f64() * 1000.0,
        finished_at_ms: triage_protocol::now_ms(),
    })
}
