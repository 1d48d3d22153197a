//! Which of a request's replies reach a streaming client, and when a stream
//! must end in an error instead.
//!
//! The pipeline may restart a generation (a worker died, a backend failed,
//! tier 1 escalated to tier 2): chunks of the new attempt carry a higher
//! `attempt`, and the earlier text is void. A NATS client resets its text;
//! an HTTP client cannot take back bytes it has received. So:
//!
//! - before any text was sent, a higher attempt simply replaces the old one;
//! - after text was sent, a higher attempt (in a chunk or the completion)
//!   ends the stream with an error event (`generation_restarted`): the
//!   client never sees duplicated or spliced text and knows to retry;
//! - chunks of an older attempt are dropped;
//! - a gap or repeat in `seq`, or a completion whose chunk count or text
//!   length disagrees with what arrived (`triage_protocol::AnswerCheck`,
//!   the check every client runs), ends the stream with `stream_incomplete`
//!   rather than wrong text.
//!
//! Non-streamed answers do not need this: they use the completion's text,
//! which is the final attempt's.

use triage_protocol::{AnswerCheck, AnswerText, Chunk, ChunkVerdict, Completion, Reply};

use crate::error::{from_code, ApiError};

/// The relay's state for one stream.
#[derive(Debug, Default)]
pub struct Relay {
    check: AnswerCheck,
    text_sent: bool,
    /// The logprobs of the text of the last `Step::Text`, if it had any.
    logprobs: Option<Vec<triage_protocol::TokenLogprob>>,
}

/// What to do with one reply.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send this text.
    Text(String),
    /// Nothing to send (an empty or stale chunk).
    Skip,
    /// The answer is complete; send `unsent_text` first (a worker that
    /// could not stream puts the whole text in the completion).
    Finish {
        /// The completion.
        completion: Box<Completion>,
        /// Text not yet sent, if any.
        unsent_text: Option<String>,
    },
    /// End the stream with this error.
    Fail(ApiError),
}

impl Relay {
    /// Whether any text reached the client.
    pub fn text_sent(&self) -> bool {
        self.text_sent
    }

    /// The logprobs of the text the last [`Step::Text`] returned (taken).
    pub fn take_logprobs(&mut self) -> Option<Vec<triage_protocol::TokenLogprob>> {
        self.logprobs.take()
    }

    /// Decides about the next reply.
    pub fn step(&mut self, reply: Reply) -> Step {
        match reply {
            Reply::Chunk(c) => self.chunk(c),
            Reply::Completion(c) => self.completion(c),
            Reply::Error(e) => Step::Fail(from_code(e.code, e.message)),
        }
    }

    /// Whether a reply of `attempt` voids text already sent (`newer_only`:
    /// an older chunk is merely stale).
    fn voids_sent_text(&self, attempt: u32, newer_only: bool) -> bool {
        let voids = |sent: u32| attempt > sent || (!newer_only && attempt != sent);
        self.text_sent && self.check.attempt().is_some_and(voids)
    }

    fn chunk(&mut self, c: Chunk) -> Step {
        if self.voids_sent_text(c.attempt, true) {
            return Step::Fail(ApiError::restarted());
        }
        match self.check.chunk(&c) {
            Err(e) => Step::Fail(ApiError::chunk_gap(&e.to_string())),
            Ok(ChunkVerdict::Stale) => Step::Skip,
            Ok(ChunkVerdict::Append { .. }) if c.delta.is_empty() => Step::Skip,
            Ok(ChunkVerdict::Append { .. }) => {
                self.text_sent = true;
                self.logprobs = c.logprobs;
                Step::Text(c.delta)
            }
        }
    }

    fn completion(&mut self, c: Completion) -> Step {
        if self.voids_sent_text(c.attempt, false) {
            return Step::Fail(ApiError::restarted());
        }
        let unsent_text = match self.check.completion(&c) {
            Err(e) => return Step::Fail(ApiError::chunk_gap(&e.to_string())),
            Ok(AnswerText::Streamed) => None,
            Ok(AnswerText::InCompletion) => c.text.clone().filter(|t| !t.is_empty()),
        };
        Step::Finish {
            completion: Box::new(c),
            unsent_text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_protocol::{ErrorCode, ErrorReply, Tier, Usage};

    fn chunk(attempt: u32, seq: u32, delta: &str) -> Reply {
        Reply::Chunk(Chunk {
            id: "r".into(),
            seq,
            attempt,
            delta: delta.into(),
            logprobs: None,
        })
    }

    fn done(attempt: u32, chunks: u32, text: Option<&str>) -> Reply {
        done_with_length(attempt, chunks, None, text)
    }

    fn done_with_length(
        attempt: u32,
        chunks: u32,
        bytes: Option<u64>,
        text: Option<&str>,
    ) -> Reply {
        Reply::Completion(Completion {
            id: "r".into(),
            attempt,
            finish_reason: "stop".into(),
            usage: Usage::default(),
            tier: Tier::Small,
            model: "m".into(),
            ttft_ms: 0.0,
            total_ms: 0.0,
            chunks,
            text_bytes: bytes,
            text: text.map(str::to_string),
            routing: None,
            logprobs: None,
            alternatives: Vec::new(),
        })
    }

    fn code(step: Step) -> String {
        match step {
            Step::Fail(e) => e.code.unwrap(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn one_attempt_streams_through() {
        let mut r = Relay::default();
        assert_eq!(r.step(chunk(1, 0, "Hel")), Step::Text("Hel".into()));
        assert_eq!(r.step(chunk(1, 1, "")), Step::Skip);
        assert_eq!(r.step(chunk(1, 2, "lo")), Step::Text("lo".into()));
        assert!(matches!(
            r.step(done(1, 3, None)),
            Step::Finish {
                unsent_text: None,
                ..
            }
        ));
    }

    #[test]
    fn a_restart_after_text_was_sent_ends_the_stream() {
        let mut r = Relay::default();
        assert_eq!(r.step(chunk(1, 0, "Hel")), Step::Text("Hel".into()));
        assert_eq!(code(r.step(chunk(17, 0, "Good"))), "generation_restarted");

        // The restart seen only in the completion (its chunks were lost).
        let mut r = Relay::default();
        r.step(chunk(1, 0, "Hel"));
        assert_eq!(code(r.step(done(2, 1, None))), "generation_restarted");
    }

    #[test]
    fn a_restart_before_any_text_replaces_the_attempt() {
        let mut r = Relay::default();
        assert_eq!(r.step(chunk(1, 0, "")), Step::Skip);
        assert_eq!(r.step(chunk(2, 0, "Good")), Step::Text("Good".into()));
        assert_eq!(
            r.step(chunk(1, 1, "stale")),
            Step::Skip,
            "older attempts are dropped"
        );
        assert!(matches!(r.step(done(2, 1, None)), Step::Finish { .. }));
    }

    #[test]
    fn gaps_and_missing_chunks_end_the_stream() {
        let mut r = Relay::default();
        r.step(chunk(1, 0, "a"));
        assert_eq!(code(r.step(chunk(1, 2, "c"))), "stream_incomplete");
        let mut r = Relay::default();
        r.step(chunk(1, 0, "a"));
        assert_eq!(code(r.step(done(1, 2, None))), "stream_incomplete");
        let mut r = Relay::default();
        assert_eq!(code(r.step(chunk(1, 1, "b"))), "stream_incomplete");
        // A repeated chunk would duplicate text.
        let mut r = Relay::default();
        r.step(chunk(1, 0, "a"));
        assert_eq!(code(r.step(chunk(1, 0, "a"))), "stream_incomplete");
        // The count matches but the text is shorter than the worker sent.
        let mut r = Relay::default();
        r.step(chunk(1, 0, "ab"));
        let e = r.step(done_with_length(1, 1, Some(3), None));
        assert_eq!(code(e), "stream_incomplete");
        let mut r = Relay::default();
        r.step(chunk(1, 0, "ab"));
        assert!(matches!(
            r.step(done_with_length(1, 1, Some(2), None)),
            Step::Finish { .. }
        ));
    }

    #[test]
    fn a_completion_without_chunks_carries_the_text() {
        let mut r = Relay::default();
        match r.step(done(3, 0, Some("whole"))) {
            Step::Finish { unsent_text, .. } => assert_eq!(unsent_text.as_deref(), Some("whole")),
            other => panic!("{other:?}"),
        }
        assert!(!r.text_sent());
    }

    #[test]
    fn error_replies_use_the_one_mapping() {
        let mut r = Relay::default();
        let e = Reply::Error(ErrorReply::new("r", ErrorCode::BackendUnavailable, "down"));
        match r.step(e) {
            Step::Fail(e) => assert_eq!(e.status.as_u16(), 503),
            other => panic!("{other:?}"),
        }
    }
}
