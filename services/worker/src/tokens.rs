//! Counting tokens, for the context-length check before a request is sent
//! and for usage when a backend reports none.
//!
//! With a Hugging Face `tokenizer.json` configured (the served model's own),
//! counts are the model's. Without one, the documented approximation of
//! `triage-token-estimate` is used — the simulator's rule too, so tests are
//! exact against it; its error against a real tokenizer is measured there.
//! Either way the chat-template overhead is approximate, so the check leaves
//! the final word to the backend: a 400 it still sends becomes
//! `context_length_exceeded` with its message quoted.

use std::path::Path;
use std::sync::Arc;

use triage_protocol::{ChatMessage, Usage};

/// Counts tokens of text and chat prompts.
#[derive(Clone, Default)]
pub enum TokenCounter {
    /// The documented approximation.
    #[default]
    Approximate,
    /// A real tokenizer.
    Tokenizer(Arc<tokenizers::Tokenizer>),
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenCounter::Approximate => f.write_str("TokenCounter::Approximate"),
            TokenCounter::Tokenizer(_) => f.write_str("TokenCounter::Tokenizer"),
        }
    }
}

/// A tokenizer file that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load tokenizer {path}: {reason}")]
pub struct TokenizerError {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

impl TokenCounter {
    /// Loads `tokenizer.json`, or the approximation when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, TokenizerError> {
        match path {
            None => Ok(TokenCounter::Approximate),
            Some(p) => {
                let mut t = tokenizers::Tokenizer::from_file(p).map_err(|e| TokenizerError {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                // Counting wants the text's own tokens: no padding to a
                // fixed length, no truncation.
                t.with_padding(None);
                t.with_truncation(None).map_err(|e| TokenizerError {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                Ok(TokenCounter::Tokenizer(Arc::new(t)))
            }
        }
    }

    /// Tokens in `text`.
    pub fn count(&self, text: &str) -> u32 {
        match self {
            TokenCounter::Approximate => triage_token_estimate::count(text),
            TokenCounter::Tokenizer(t) => t
                .encode(text, false)
                .map(|e| e.len() as u32)
                .unwrap_or_else(|_| triage_token_estimate::count(text)),
        }
    }

    /// Tokens of a chat prompt, template overhead included.
    pub fn count_chat(&self, messages: &[ChatMessage]) -> u32 {
        triage_token_estimate::count_chat_with(
            messages
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str())),
            |text| self.count(text),
        )
    }
}

/// The usage to report for an attempt: the backend's when it sent one,
/// otherwise counted here and flagged `estimated`.
pub fn attempt_usage(
    reported: Option<triage_backend::Usage>,
    prompt_estimate: u32,
    completion_tokens: impl FnOnce() -> u32,
) -> Usage {
    match reported {
        Some(u) => Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            estimated: false,
        },
        None => Usage {
            prompt_tokens: prompt_estimate,
            completion_tokens: completion_tokens(),
            estimated: true,
        },
    }
}

/// Clamps `max_tokens` so the prompt plus completion fit `max_model_len`;
/// `Err` with the prompt's size when the prompt alone does not fit.
pub fn fit_max_tokens(
    prompt_tokens: u32,
    requested: Option<u32>,
    max_model_len: Option<u32>,
) -> Result<Option<u32>, u32> {
    let Some(limit) = max_model_len else {
        return Ok(requested);
    };
    if prompt_tokens >= limit {
        return Err(prompt_tokens);
    }
    let room = limit - prompt_tokens;
    Ok(Some(requested.map_or(room, |r| r.min(room))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximation_is_the_shared_estimate_with_template_overhead() {
        let c = TokenCounter::Approximate;
        assert_eq!(c.count("hello, world!"), 4);
        assert_eq!(
            c.count_chat(&[ChatMessage::user("hi")]),
            3 + 3 + 1 + 1,
            "template overhead"
        );
    }

    #[test]
    fn reported_usage_wins_and_estimates_are_flagged() {
        let reported = triage_backend::Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
        };
        let u = attempt_usage(Some(reported), 99, || 99);
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.estimated),
            (10, 5, false)
        );
        let u = attempt_usage(None, 12, || 7);
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.estimated),
            (12, 7, true)
        );
    }

    #[test]
    fn max_tokens_are_fitted_to_the_context() {
        assert_eq!(fit_max_tokens(10, Some(50), None), Ok(Some(50)));
        assert_eq!(fit_max_tokens(10, Some(50), Some(100)), Ok(Some(50)));
        assert_eq!(fit_max_tokens(80, Some(50), Some(100)), Ok(Some(20)));
        assert_eq!(fit_max_tokens(80, None, Some(100)), Ok(Some(20)));
        assert_eq!(fit_max_tokens(100, Some(1), Some(100)), Err(100));
        assert_eq!(fit_max_tokens(150, None, Some(100)), Err(150));
    }

    #[test]
    fn a_real_tokenizer_counts_and_a_missing_one_is_an_error() {
        // The MiniLM tokenizer the set-up fetches: missing, this fails
        // (like every test needing the set-up's files), it never skips.
        let cache = std::env::var_os("TRIAGE_CACHE")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/triage")
            });
        let path = cache.join("models/all-MiniLM-L6-v2/tokenizer.json");
        let c = TokenCounter::load(Some(&path))
            .unwrap_or_else(|e| panic!("{e} (run the project set-up, which fetches it)"));
        assert_eq!(c.count("hello world"), 2);
        // WordPiece splits what the approximation counts as one token.
        assert_eq!(c.count("tokenizers"), 3);
        assert!(TokenCounter::load(Some(Path::new("/nonexistent.json"))).is_err());
    }
}
