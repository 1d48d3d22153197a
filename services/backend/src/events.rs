//! What a chat stream means to its consumer: typed events made from chunks (pure).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{ChatChunk, TokenLogprob, Usage};

/// Why a choice ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or a stop string.
    Stop,
    /// `max_tokens` (or the context) reached.
    Length,
    /// The model called a tool.
    ToolCalls,
    /// Filtered.
    ContentFilter,
    /// Anything else the server said.
    #[serde(untagged)]
    Other(String),
}

impl FinishReason {
    /// From the wire string.
    pub fn parse(s: &str) -> Self {
        match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_owned()),
        }
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => s,
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of [`crate::BackendClient::chat_stream`].
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// First chunk seen: the completion id and the model that answers.
    Start {
        /// `chatcmpl-…`.
        id: String,
        /// Model name reported by the server.
        model: Option<String>,
    },
    /// New text for choice `index` (never empty unless it carries logprobs).
    Delta {
        /// Choice index.
        index: u32,
        /// The new text.
        content: String,
        /// Logprobs of the tokens in this delta, when requested and sent.
        logprobs: Option<Vec<TokenLogprob>>,
    },
    /// Choice `index` ended.
    Finish {
        /// Choice index.
        index: u32,
        /// Why.
        reason: FinishReason,
        /// vLLM's `stop_reason` (the matched stop string), as text.
        stop_reason: Option<String>,
    },
    /// Token counts (the usage chunk).
    Usage(Usage),
    /// A line that could not be used; log, count and carry on.
    Malformed {
        /// The offending text (truncated).
        line: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// Appends the events one chunk stands for. `started` tracks whether `Start` was emitted.
pub fn chunk_events(chunk: ChatChunk, started: &mut bool, out: &mut Vec<StreamEvent>) {
    if !*started {
        *started = true;
        out.push(StreamEvent::Start {
            id: chunk.id,
            model: chunk.model,
        });
    }
    for choice in chunk.choices {
        let logprobs = choice
            .logprobs
            .and_then(|l| l.content)
            .filter(|c| !c.is_empty());
        let content = choice.delta.content.unwrap_or_default();
        if !content.is_empty() || logprobs.is_some() {
            out.push(StreamEvent::Delta {
                index: choice.index,
                content,
                logprobs,
            });
        }
        if let Some(reason) = choice.finish_reason {
            out.push(StreamEvent::Finish {
                index: choice.index,
                reason: FinishReason::parse(&reason),
                stop_reason: choice.stop_reason.and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                }),
            });
        }
    }
    if let Some(usage) = chunk.usage {
        out.push(StreamEvent::Usage(usage));
    }
}

/// A whole stream folded up (choice 0's text; all logprobs of choice 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSummary {
    /// Completion id.
    pub id: String,
    /// Model reported by the server.
    pub model: Option<String>,
    /// Concatenated deltas of choice 0.
    pub text: String,
    /// Finish reason of choice 0.
    pub finish_reason: Option<FinishReason>,
    /// Usage, if the server sent it.
    pub usage: Option<Usage>,
    /// Logprobs of choice 0's tokens, in order.
    pub logprobs: Vec<TokenLogprob>,
    /// Content deltas received (all choices).
    pub deltas: u64,
    /// Malformed lines skipped.
    pub malformed: u64,
}

impl StreamSummary {
    /// Folds one event in.
    pub fn apply(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Start { id, model } => {
                self.id = id;
                self.model = model;
            }
            StreamEvent::Delta {
                index,
                content,
                logprobs,
            } => {
                self.deltas += 1;
                if index == 0 {
                    self.text.push_str(&content);
                    self.logprobs.extend(logprobs.unwrap_or_default());
                }
            }
            StreamEvent::Finish {
                index: 0, reason, ..
            } => self.finish_reason = Some(reason),
            StreamEvent::Finish { .. } => {}
            StreamEvent::Usage(usage) => self.usage = Some(usage),
            StreamEvent::Malformed { .. } => self.malformed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(json: &str) -> ChatChunk {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn vllm_last_delta_carries_finish_reason() {
        let mut started = false;
        let mut out = Vec::new();
        chunk_events(
            chunk(
                r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            ),
            &mut started,
            &mut out,
        );
        chunk_events(
            chunk(
                r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":" end"},"logprobs":{"content":[{"token":" end","logprob":-0.5,"bytes":[32,101,110,100],"top_logprobs":[]}]},"finish_reason":"stop","stop_reason":"END"}]}"#,
            ),
            &mut started,
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[0], StreamEvent::Start { id, .. } if id == "c"));
        let StreamEvent::Delta {
            content, logprobs, ..
        } = &out[1]
        else {
            panic!("{out:?}")
        };
        assert_eq!(content, " end");
        assert_eq!(logprobs.as_ref().unwrap()[0].logprob, -0.5);
        assert_eq!(
            out[2],
            StreamEvent::Finish {
                index: 0,
                reason: FinishReason::Stop,
                stop_reason: Some("END".into())
            }
        );
    }

    #[test]
    fn llamacpp_role_chunk_with_null_content_and_separate_finish() {
        let mut started = true;
        let mut out = Vec::new();
        chunk_events(
            chunk(
                r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"id":"c"}"#,
            ),
            &mut started,
            &mut out,
        );
        assert!(out.is_empty());
        chunk_events(
            chunk(r#"{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"id":"c"}"#),
            &mut started,
            &mut out,
        );
        assert_eq!(
            out,
            [StreamEvent::Finish {
                index: 0,
                reason: FinishReason::Length,
                stop_reason: None
            }]
        );
    }

    #[test]
    fn summary_folds_events() {
        let mut s = StreamSummary::default();
        for e in [
            StreamEvent::Delta {
                index: 0,
                content: "a".into(),
                logprobs: None,
            },
            StreamEvent::Malformed {
                line: "x".into(),
                reason: "y".into(),
            },
            StreamEvent::Delta {
                index: 0,
                content: "b".into(),
                logprobs: None,
            },
            StreamEvent::Finish {
                index: 0,
                reason: FinishReason::parse("weird"),
                stop_reason: None,
            },
        ] {
            s.apply(e);
        }
        assert_eq!(s.text, "ab");
        assert_eq!(s.malformed, 1);
        assert_eq!(s.finish_reason, Some(FinishReason::Other("weird".into())));
    }
}
