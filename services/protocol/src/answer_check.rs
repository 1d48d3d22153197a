//! Checks that a streamed answer arrived whole: every client (the Rust API,
//! the gateway's relay) runs its replies through one [`AnswerCheck`], the
//! same rules the Python and JavaScript clients implement.
//!
//! Chunks are sent on core NATS, so one can be lost or, in theory, repeat.
//! Within an attempt `seq` must count 0, 1, 2, … without a gap or repeat; a
//! chunk of a higher attempt starts a new count (the generation restarted
//! and the earlier text is void); a chunk of a lower attempt is stale. The
//! completion then says how many chunks its attempt sent and how many bytes
//! of text it produced, and both must match what arrived, else the text is
//! wrong and the request fails instead of returning it.

use crate::{Chunk, Completion};

/// One request's replies so far.
#[derive(Debug, Default, Clone)]
pub struct AnswerCheck {
    attempt: Option<u32>,
    chunks: u32,
    bytes: u64,
}

/// What to do with a chunk that passed the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// It belongs to the current attempt: append its delta. `restarted`
    /// when it began a new attempt after chunks of an earlier one arrived
    /// (their text is void).
    Append {
        /// Whether earlier attempts' text must be discarded.
        restarted: bool,
    },
    /// A late chunk of an attempt already replaced: ignore it.
    Stale,
}

/// Where a checked answer's text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerText {
    /// In the chunks received (possibly none: an empty answer).
    Streamed,
    /// In the completion's `text` (the request did not stream, or its
    /// chunks were of no use and the worker kept the text).
    InCompletion,
}

/// Why an answer is not whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncompleteAnswer {
    /// A chunk is missing before this one.
    #[error(
        "chunk {got} of attempt {attempt} came where chunk {expected} was due (a chunk was lost)"
    )]
    Gap {
        /// The attempt.
        attempt: u32,
        /// The `seq` due.
        expected: u32,
        /// The `seq` that came.
        got: u32,
    },
    /// A chunk came twice.
    #[error("chunk {got} of attempt {attempt} came again after chunk {last} (a chunk repeated)")]
    Repeat {
        /// The attempt.
        attempt: u32,
        /// The last `seq` received.
        last: u32,
        /// The `seq` that came again.
        got: u32,
    },
    /// The completion counts other chunks than arrived.
    #[error(
        "the completion of attempt {attempt} says {sent} chunks were sent, {received} arrived"
    )]
    ChunkCount {
        /// The answering attempt.
        attempt: u32,
        /// The completion's `chunks`.
        sent: u32,
        /// Chunks of that attempt received.
        received: u32,
    },
    /// The completion's text length differs from the text received.
    #[error("the completion of attempt {attempt} says {sent} bytes of text, {received} arrived")]
    TextLength {
        /// The answering attempt.
        attempt: u32,
        /// The completion's `text_bytes`.
        sent: u64,
        /// Bytes of text received.
        received: u64,
    },
}

impl AnswerCheck {
    /// The attempt whose chunks are being received, if any arrived.
    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }

    /// Chunks of the current attempt received.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// Checks one chunk.
    pub fn chunk(&mut self, c: &Chunk) -> Result<ChunkVerdict, IncompleteAnswer> {
        let mut restarted = false;
        match self.attempt {
            Some(current) if c.attempt < current => return Ok(ChunkVerdict::Stale),
            Some(current) if c.attempt == current => {}
            previous => {
                restarted = previous.is_some() && self.chunks > 0;
                *self = Self {
                    attempt: Some(c.attempt),
                    ..Self::default()
                };
            }
        }
        if c.seq != self.chunks {
            return Err(if c.seq < self.chunks {
                IncompleteAnswer::Repeat {
                    attempt: c.attempt,
                    last: self.chunks - 1,
                    got: c.seq,
                }
            } else {
                IncompleteAnswer::Gap {
                    attempt: c.attempt,
                    expected: self.chunks,
                    got: c.seq,
                }
            });
        }
        self.chunks += 1;
        self.bytes += c.delta.len() as u64;
        Ok(ChunkVerdict::Append { restarted })
    }

    /// Checks the completion against the chunks of its attempt; says where
    /// the answer's text is. Chunks of another attempt do not count.
    pub fn completion(&self, c: &Completion) -> Result<AnswerText, IncompleteAnswer> {
        let (chunks, bytes) = if self.attempt == Some(c.attempt) {
            (self.chunks, self.bytes)
        } else {
            (0, 0)
        };
        let (source, received) = match &c.text {
            Some(text) if chunks == 0 => (AnswerText::InCompletion, text.len() as u64),
            _ => {
                if c.chunks != chunks {
                    return Err(IncompleteAnswer::ChunkCount {
                        attempt: c.attempt,
                        sent: c.chunks,
                        received: chunks,
                    });
                }
                (AnswerText::Streamed, bytes)
            }
        };
        match c.text_bytes {
            Some(sent) if sent != received => Err(IncompleteAnswer::TextLength {
                attempt: c.attempt,
                sent,
                received,
            }),
            _ => Ok(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Tier, Usage};

    fn chunk(attempt: u32, seq: u32, delta: &str) -> Chunk {
        Chunk {
            id: "r".into(),
            seq,
            attempt,
            delta: delta.into(),
            logprobs: None,
        }
    }

    fn done(attempt: u32, chunks: u32, text_bytes: Option<u64>, text: Option<&str>) -> Completion {
        Completion {
            id: "r".into(),
            attempt,
            finish_reason: "stop".into(),
            usage: Usage::default(),
            tier: Tier::Small,
            model: "m".into(),
            ttft_ms: 0.0,
            total_ms: 0.0,
            chunks,
            text_bytes,
            text: text.map(str::to_string),
            routing: None,
            logprobs: None,
            alternatives: Vec::new(),
        }
    }

    fn append(restarted: bool) -> Result<ChunkVerdict, IncompleteAnswer> {
        Ok(ChunkVerdict::Append { restarted })
    }

    #[test]
    fn a_whole_answer_passes() {
        let mut a = AnswerCheck::default();
        assert_eq!(a.chunk(&chunk(1, 0, "Hé")), append(false));
        assert_eq!(a.chunk(&chunk(1, 1, "llo")), append(false));
        assert_eq!(
            a.completion(&done(1, 2, Some(6), None)),
            Ok(AnswerText::Streamed)
        );
        // An older worker sends no length: only the count is checked.
        assert_eq!(
            a.completion(&done(1, 2, None, None)),
            Ok(AnswerText::Streamed)
        );
    }

    #[test]
    fn a_gap_or_a_repeat_in_seq_fails() {
        let mut a = AnswerCheck::default();
        a.chunk(&chunk(1, 0, "a")).unwrap();
        let gap = a.chunk(&chunk(1, 2, "c")).unwrap_err();
        assert_eq!(
            gap,
            IncompleteAnswer::Gap {
                attempt: 1,
                expected: 1,
                got: 2
            }
        );
        let mut a = AnswerCheck::default();
        a.chunk(&chunk(1, 0, "a")).unwrap();
        a.chunk(&chunk(1, 1, "b")).unwrap();
        let repeat = a.chunk(&chunk(1, 1, "b")).unwrap_err();
        assert!(repeat.to_string().contains("came again"), "{repeat}");
        // The first chunk itself lost.
        let mut a = AnswerCheck::default();
        assert!(matches!(
            a.chunk(&chunk(1, 1, "b")),
            Err(IncompleteAnswer::Gap { expected: 0, .. })
        ));
    }

    #[test]
    fn a_completion_that_disagrees_with_what_arrived_fails() {
        let mut a = AnswerCheck::default();
        a.chunk(&chunk(1, 0, "abc")).unwrap();
        // The last chunk was lost: the count says so.
        assert!(matches!(
            a.completion(&done(1, 2, Some(5), None)),
            Err(IncompleteAnswer::ChunkCount {
                sent: 2,
                received: 1,
                ..
            })
        ));
        // Right count, wrong length (a delta was cut short).
        let e = a.completion(&done(1, 1, Some(4), None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the completion of attempt 1 says 4 bytes of text, 3 arrived"
        );
        // Every chunk of the answering attempt lost, no text kept.
        let a = AnswerCheck::default();
        assert!(a.completion(&done(1, 3, Some(9), None)).is_err());
    }

    #[test]
    fn a_new_attempt_restarts_the_count_and_old_chunks_are_stale() {
        let mut a = AnswerCheck::default();
        a.chunk(&chunk(1, 0, "Hel")).unwrap();
        a.chunk(&chunk(1, 1, "lo")).unwrap();
        assert_eq!(a.chunk(&chunk(2, 0, "Good")), append(true));
        assert_eq!(a.chunk(&chunk(1, 2, "late")), Ok(ChunkVerdict::Stale));
        assert_eq!(a.chunk(&chunk(2, 1, " day")), append(false));
        assert_eq!(a.attempt(), Some(2));
        assert_eq!(
            a.completion(&done(2, 2, Some(8), None)),
            Ok(AnswerText::Streamed)
        );
        // A restart before any chunk arrived is no restart for the client.
        let mut a = AnswerCheck::default();
        assert_eq!(a.chunk(&chunk(3, 0, "x")), append(false));
    }

    #[test]
    fn the_text_in_the_completion_is_checked_against_its_length() {
        let a = AnswerCheck::default();
        let whole = done(2, 0, Some(5), Some("whole"));
        assert_eq!(a.completion(&whole), Ok(AnswerText::InCompletion));
        let cut = done(2, 0, Some(9), Some("whole"));
        assert!(matches!(
            a.completion(&cut),
            Err(IncompleteAnswer::TextLength {
                sent: 9,
                received: 5,
                ..
            })
        ));
        // Chunks of an earlier attempt, the answer kept in the completion.
        let mut a = AnswerCheck::default();
        a.chunk(&chunk(1, 0, "void")).unwrap();
        assert_eq!(
            a.completion(&done(2, 4, Some(5), Some("whole"))),
            Ok(AnswerText::InCompletion)
        );
        // An empty answer that did not stream any chunk.
        assert_eq!(
            AnswerCheck::default().completion(&done(1, 0, Some(0), None)),
            Ok(AnswerText::Streamed)
        );
    }
}
