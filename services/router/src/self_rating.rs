//! The LLM self-rating: ask a small instruction model how complex the
//! request is, 0–10, and use digit / 10 as a second score.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use triage_backend::{BackendClient, BackendError, ChatMessage, ChatRequest};

use crate::config::SelfRatingConfig;

/// The system prompt, verbatim from the seed design.
pub const SYSTEM_PROMPT: &str =
    "Rate the complexity of this request from 0 (simple) to 10 (expert reasoning). Output only the number.";

/// Why there is no rating.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    /// No answer within the limit.
    #[error("self-rating timed out")]
    Timeout,
    /// The server failed or could not be reached.
    #[error("self-rating backend failed: {0}")]
    Backend(String),
    /// The answer was not a number from 0 to 10.
    #[error("self-rating answer is not a number from 0 to 10: {0:?}")]
    Unparsable(String),
}

impl RatingError {
    /// Short label for metrics and reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            RatingError::Timeout => "timeout",
            RatingError::Backend(_) => "error",
            RatingError::Unparsable(_) => "unparsable",
        }
    }
}

/// A boxed future, so raters can be swapped behind a trait object.
pub type RatingFuture<'a> = Pin<Box<dyn Future<Output = Result<f64, RatingError>> + Send + 'a>>;

/// Something that rates a text's complexity in [0, 1].
pub trait SelfRater: Send + Sync {
    /// The rating of the (truncated) text.
    fn rate<'a>(&'a self, text: &'a str) -> RatingFuture<'a>;
}

/// The request sent for `text`: temperature 0, at most 2 tokens, stop at
/// the first newline.
pub fn rating_request(text: &str, model: Option<&str>) -> ChatRequest {
    let mut r = ChatRequest::new(vec![
        ChatMessage::new("system", SYSTEM_PROMPT),
        ChatMessage::new("user", text),
    ]);
    r.model = model.map(str::to_string);
    r.temperature = Some(0.0);
    r.max_tokens = Some(2);
    r.stop = Some(vec!["\n".to_string()]);
    r
}

/// Reads the model's answer: a whole number 0–10 at the start (after
/// whitespace), divided by 10. "7", " 7", "7." and "10" parse; "seven",
/// "11" and "" do not.
pub fn parse_rating(answer: &str) -> Result<f64, RatingError> {
    let trimmed = answer.trim_start();
    let digits: String = trimmed.chars().take_while(char::is_ascii_digit).collect();
    match digits.parse::<u32>() {
        Ok(n) if n <= 10 => Ok(f64::from(n) / 10.0),
        _ => Err(RatingError::Unparsable(answer.chars().take(40).collect())),
    }
}

/// Rates through an OpenAI-compatible server.
pub struct LlmSelfRater {
    client: BackendClient,
    model: Option<String>,
    timeout: Duration,
}

impl LlmSelfRater {
    /// A rater for the configured server.
    pub fn new(config: &SelfRatingConfig) -> Result<Self, BackendError> {
        let mut backend = config.backend.clone();
        // The rating's own timeout is the one that matters; keep the
        // client's from cutting in first.
        backend.request_timeout = backend.request_timeout.max(config.timeout);
        Ok(Self {
            client: BackendClient::new(backend)?,
            model: config.model.clone(),
            timeout: config.timeout,
        })
    }
}

impl SelfRater for LlmSelfRater {
    fn rate<'a>(&'a self, text: &'a str) -> RatingFuture<'a> {
        Box::pin(async move {
            let request = rating_request(text, self.model.as_deref());
            let answer = tokio::time::timeout(self.timeout, self.client.chat(&request))
                .await
                .map_err(|_| RatingError::Timeout)?
                .map_err(|e| match e {
                    BackendError::Timeout { .. } => RatingError::Timeout,
                    other => RatingError::Backend(other.to_string()),
                })?;
            parse_rating(answer.text())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_exact_prompt_and_sampling() {
        let r = rating_request("What is 2+2?", Some("qwen"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["messages"][0]["role"], "system");
        assert_eq!(
            json["messages"][0]["content"],
            "Rate the complexity of this request from 0 (simple) to 10 (expert reasoning). Output only the number."
        );
        assert_eq!(json["messages"][1]["content"], "What is 2+2?");
        assert_eq!(json["temperature"], 0.0);
        assert_eq!(json["max_tokens"], 2);
        assert_eq!(json["stop"], serde_json::json!(["\n"]));
        assert_eq!(json["model"], "qwen");
    }

    #[test]
    fn parses_digits_zero_to_ten() {
        assert_eq!(parse_rating("7"), Ok(0.7));
        assert_eq!(parse_rating(" 3."), Ok(0.3));
        assert_eq!(parse_rating("10"), Ok(1.0));
        assert_eq!(parse_rating("0"), Ok(0.0));
        for bad in ["", "seven", "11", "-1", "99"] {
            assert!(
                matches!(parse_rating(bad), Err(RatingError::Unparsable(_))),
                "{bad:?}"
            );
        }
    }
}
