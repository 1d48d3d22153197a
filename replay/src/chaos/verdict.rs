//! What the chaos run's evidence says, as pure functions of it: per request
//! id, what its client saw (one final reply, none, two, or text that is not
//! the answering attempt's), and for the ledger, whether every usage event
//! was booked exactly once with its own numbers and the totals add up.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use triage_protocol::{Reply, UsageEvent};

/// Everything the observer saw on one request's reply subject.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Chunks by attempt, then `seq` → text (a repeat is counted, not kept).
    pub chunks: BTreeMap<u32, BTreeMap<u32, String>>,
    /// Chunks that arrived twice.
    pub repeated_chunks: u32,
    /// Final replies in arrival order.
    pub finals: Vec<Final>,
}

/// A final reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Final {
    /// A completion of `attempt`.
    Completion {
        /// The answering attempt.
        attempt: u32,
        /// Its chunk count.
        chunks: u32,
        /// Its text length, when sent.
        text_bytes: Option<u64>,
        /// Its text, when sent in the completion.
        text: Option<String>,
    },
    /// An error reply.
    Error {
        /// Its code.
        code: String,
    },
}

impl Seen {
    /// Records one reply.
    pub fn record(&mut self, reply: &Reply) {
        match reply {
            Reply::Chunk(c) => {
                let attempt = self.chunks.entry(c.attempt).or_default();
                if attempt.insert(c.seq, c.delta.clone()).is_some() {
                    self.repeated_chunks += 1;
                }
            }
            Reply::Completion(c) => self.finals.push(Final::Completion {
                attempt: c.attempt,
                chunks: c.chunks,
                text_bytes: c.text_bytes,
                text: c.text.clone(),
            }),
            Reply::Error(e) => self.finals.push(Final::Error {
                code: e.code.as_str().to_string(),
            }),
        }
    }

    /// The attempts that streamed at least one chunk.
    pub fn streamed_attempts(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks.keys().copied()
    }
}

/// What became of one accepted request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Fate {
    /// One completion, its text exactly its attempt's chunks.
    Answered,
    /// One error reply (a final answer, but not text).
    ErrorReply {
        /// Its code.
        code: String,
    },
    /// No final reply reached the client, but the kept result on
    /// `llm.results` holds it: the reply (core NATS) was lost in transit.
    ReplyLostResultKept,
    /// No final reply and no kept result by the deadline.
    Lost,
    /// More than one final reply.
    Doubled {
        /// How many.
        finals: usize,
    },
    /// The completion's text is not the concatenation of its attempt's
    /// chunks (chunks of that attempt beyond its count, or other text).
    WrongText {
        /// The answering attempt.
        attempt: u32,
    },
    /// Chunks of the answering attempt never reached the client (core NATS
    /// lost them in transit), so its text cannot be checked.
    ChunksMissing {
        /// The answering attempt.
        attempt: u32,
    },
}

/// Classifies one request from what was seen and whether a kept result exists.
pub fn fate(seen: Option<&Seen>, kept: bool) -> Fate {
    let finals = seen.map_or(&[][..], |s| &s.finals[..]);
    match finals {
        [] if kept => Fate::ReplyLostResultKept,
        [] => Fate::Lost,
        [Final::Error { code }] => Fate::ErrorReply { code: code.clone() },
        [Final::Completion {
            attempt,
            chunks,
            text_bytes,
            text,
        }] => check_text(
            seen.and_then(|s| s.chunks.get(attempt)),
            *attempt,
            *chunks,
            *text_bytes,
            text.as_deref(),
        ),
        more => Fate::Doubled { finals: more.len() },
    }
}

fn check_text(
    chunks: Option<&BTreeMap<u32, String>>,
    attempt: u32,
    count: u32,
    text_bytes: Option<u64>,
    text: Option<&str>,
) -> Fate {
    let empty = BTreeMap::new();
    let chunks = chunks.unwrap_or(&empty);
    if chunks.keys().any(|&seq| seq >= count) {
        return Fate::WrongText { attempt };
    }
    if chunks.len() < count as usize {
        return Fate::ChunksMissing { attempt };
    }
    let streamed: String = chunks.values().map(String::as_str).collect();
    let ok = match (text, count) {
        // Not streamed (or the worker kept the text): the text is the answer.
        (Some(t), 0) => text_bytes.is_none_or(|n| n == t.len() as u64),
        (Some(t), _) => t == streamed,
        (None, _) => text_bytes.is_none_or(|n| n == streamed.len() as u64),
    };
    if ok {
        Fate::Answered
    } else {
        Fate::WrongText { attempt }
    }
}

/// A ledger row as the check reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookedRow {
    /// The tenant ('' for none).
    pub tenant: String,
    /// The request id.
    pub request_id: String,
    /// The attempt.
    pub attempt: u32,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// `ok`, `error` or `cancelled`.
    pub status: String,
}

/// The ledger's all-time rollup (`usage_totals`), summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Attempts.
    pub attempts: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// (tenant, request id, attempt): one attempt, as the ledger keys it.
pub type AttemptKey = (String, String, u32);

/// What the ledger check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LedgerVerdict {
    /// Usage events on the stream (every message).
    pub events: usize,
    /// Distinct attempts among them.
    pub distinct_attempts: usize,
    /// Ledger rows.
    pub rows: usize,
    /// Attempts with an event but no row.
    pub not_booked: Vec<AttemptKey>,
    /// Rows without an event.
    pub without_event: Vec<AttemptKey>,
    /// Rows whose tokens or status differ from their event.
    pub differing: Vec<AttemptKey>,
    /// Two events for one attempt that disagree.
    pub conflicting_events: Vec<AttemptKey>,
    /// The events' sum.
    pub event_totals: Totals,
    /// The rows' sum.
    pub row_totals: Totals,
    /// The rollup's sum.
    pub rollup_totals: Totals,
}

impl LedgerVerdict {
    /// Every attempt booked exactly once with its own numbers, totals equal.
    pub fn exact(&self) -> bool {
        self.not_booked.is_empty()
            && self.without_event.is_empty()
            && self.differing.is_empty()
            && self.conflicting_events.is_empty()
            && self.event_totals == self.row_totals
            && self.event_totals == self.rollup_totals
    }
}

fn status_of(e: &UsageEvent) -> String {
    serde_json::to_value(e.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Compares the usage events with the ledger rows and its rollup.
pub fn ledger(events: &[UsageEvent], rows: &[BookedRow], rollup: Totals) -> LedgerVerdict {
    let mut v = LedgerVerdict {
        events: events.len(),
        rows: rows.len(),
        rollup_totals: rollup,
        ..LedgerVerdict::default()
    };
    let mut by_key: HashMap<AttemptKey, &UsageEvent> = HashMap::new();
    for e in events {
        let key = (
            e.tenant.clone().unwrap_or_default(),
            e.id.clone(),
            e.attempt,
        );
        match by_key.get(&key) {
            Some(first) if first.usage != e.usage || first.status != e.status => {
                v.conflicting_events.push(key)
            }
            Some(_) => {}
            None => {
                by_key.insert(key, e);
            }
        }
    }
    v.distinct_attempts = by_key.len();
    for e in by_key.values() {
        add(
            &mut v.event_totals,
            e.usage.prompt_tokens,
            e.usage.completion_tokens,
        );
    }
    let mut booked = BTreeSet::new();
    for r in rows {
        add(&mut v.row_totals, r.prompt_tokens, r.completion_tokens);
        let key = (r.tenant.clone(), r.request_id.clone(), r.attempt);
        match by_key.get(&key) {
            None => v.without_event.push(key.clone()),
            Some(e)
                if e.usage.prompt_tokens != r.prompt_tokens
                    || e.usage.completion_tokens != r.completion_tokens
                    || status_of(e) != r.status =>
            {
                v.differing.push(key.clone())
            }
            Some(_) => {}
        }
        booked.insert(key);
    }
    v.not_booked = by_key
        .keys()
        .filter(|k| !booked.contains(*k))
        .cloned()
        .collect();
    v.not_booked.sort();
    v
}

fn add(t: &mut Totals, prompt: u32, completion: u32) {
    t.attempts += 1;
    t.prompt_tokens += u64::from(prompt);
    t.completion_tokens += u64::from(completion);
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_protocol::{Chunk, Completion, ErrorCode, ErrorReply, Tier, Usage, UsageStatus};

    fn chunk(attempt: u32, seq: u32, delta: &str) -> Reply {
        Reply::Chunk(Chunk {
            id: "r".into(),
            seq,
            attempt,
            delta: delta.into(),
            logprobs: None,
        })
    }

    fn done(attempt: u32, chunks: u32, text_bytes: Option<u64>, text: Option<&str>) -> Reply {
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
            text_bytes,
            text: text.map(str::to_string),
            routing: None,
            logprobs: None,
            alternatives: Vec::new(),
        })
    }

    fn seen(replies: &[Reply]) -> Seen {
        let mut s = Seen::default();
        for r in replies {
            s.record(r);
        }
        s
    }

    #[test]
    fn one_completion_matching_its_attempts_chunks_is_answered() {
        let s = seen(&[
            chunk(1, 0, "Hel"),
            chunk(1, 1, "lo"),
            done(1, 2, Some(5), None),
        ]);
        assert_eq!(fate(Some(&s), false), Fate::Answered);
        let with_text = seen(&[
            chunk(1, 0, "Hel"),
            chunk(1, 1, "lo"),
            done(1, 2, Some(5), Some("Hello")),
        ]);
        assert_eq!(fate(Some(&with_text), true), Fate::Answered);
        let unstreamed = seen(&[done(1, 0, Some(2), Some("Hi"))]);
        assert_eq!(fate(Some(&unstreamed), false), Fate::Answered);
    }

    #[test]
    fn a_restart_voids_the_earlier_attempts_text() {
        // Attempt 1 streamed, was killed; attempt 17 (the redelivery) answered.
        let s = seen(&[
            chunk(1, 0, "stale"),
            chunk(17, 0, "fresh"),
            done(17, 1, Some(5), None),
        ]);
        assert_eq!(fate(Some(&s), false), Fate::Answered);
        assert_eq!(s.streamed_attempts().collect::<Vec<_>>(), [1, 17]);
    }

    #[test]
    fn text_that_is_not_the_answering_attempts_is_wrong() {
        let other = seen(&[chunk(1, 0, "Hello"), done(1, 1, Some(5), Some("Howdy"))]);
        assert_eq!(fate(Some(&other), false), Fate::WrongText { attempt: 1 });
        let longer = seen(&[chunk(2, 0, "a"), chunk(2, 1, "b"), done(2, 1, None, None)]);
        assert_eq!(fate(Some(&longer), false), Fate::WrongText { attempt: 2 });
        let length = seen(&[chunk(1, 0, "abc"), done(1, 1, Some(4), None)]);
        assert_eq!(fate(Some(&length), false), Fate::WrongText { attempt: 1 });
    }

    #[test]
    fn missing_chunks_lost_doubled_and_errors_are_told_apart() {
        let missing = seen(&[chunk(1, 1, "b"), done(1, 2, None, None)]);
        assert_eq!(
            fate(Some(&missing), false),
            Fate::ChunksMissing { attempt: 1 }
        );
        assert_eq!(fate(None, false), Fate::Lost);
        assert_eq!(fate(Some(&seen(&[chunk(1, 0, "x")])), false), Fate::Lost);
        assert_eq!(fate(None, true), Fate::ReplyLostResultKept);
        let doubled = seen(&[done(1, 0, None, Some("a")), done(17, 0, None, Some("a"))]);
        assert_eq!(fate(Some(&doubled), false), Fate::Doubled { finals: 2 });
        let error = seen(&[Reply::Error(ErrorReply::new(
            "r",
            ErrorCode::BackendUnavailable,
            "x",
        ))]);
        assert_eq!(
            fate(Some(&error), false),
            Fate::ErrorReply {
                code: "backend_unavailable".into()
            }
        );
        let repeat = seen(&[chunk(1, 0, "a"), chunk(1, 0, "a")]);
        assert_eq!(repeat.repeated_chunks, 1);
    }

    fn event(id: &str, attempt: u32, prompt: u32, completion: u32) -> UsageEvent {
        UsageEvent {
            version: 1,
            id: id.into(),
            attempt,
            tenant: None,
            tier: Tier::Small,
            model: "m".into(),
            usage: Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                estimated: false,
            },
            status: UsageStatus::Ok,
            score: None,
            reasons: Vec::new(),
            ttft_ms: None,
            total_ms: 1.0,
            finished_at_ms: 0,
            error_code: None,
            judged: None,
        }
    }

    fn row(id: &str, attempt: u32, prompt: u32, completion: u32) -> BookedRow {
        BookedRow {
            tenant: String::new(),
            request_id: id.into(),
            attempt,
            prompt_tokens: prompt,
            completion_tokens: completion,
            status: "ok".into(),
        }
    }

    fn totals(attempts: u64, prompt: u64, completion: u64) -> Totals {
        Totals {
            attempts,
            prompt_tokens: prompt,
            completion_tokens: completion,
        }
    }

    #[test]
    fn every_event_booked_once_with_its_numbers_is_exact() {
        // The second copy of a's event (a redelivered publish) counts once.
        let events = [
            event("a", 1, 10, 5),
            event("a", 1, 10, 5),
            event("b", 17, 3, 2),
        ];
        let rows = [row("a", 1, 10, 5), row("b", 17, 3, 2)];
        let v = ledger(&events, &rows, totals(2, 13, 7));
        assert!(v.exact(), "{v:?}");
        assert_eq!((v.events, v.distinct_attempts, v.rows), (3, 2, 2));
    }

    #[test]
    fn missing_extra_differing_rows_and_wrong_rollups_are_not_exact() {
        let events = [event("a", 1, 10, 5), event("b", 1, 3, 2)];
        let v = ledger(&events, &[row("a", 1, 10, 5)], totals(1, 10, 5));
        assert_eq!(v.not_booked, [(String::new(), "b".to_string(), 1)]);
        assert!(!v.exact());
        let v = ledger(
            &events[..1],
            &[row("a", 1, 10, 5), row("z", 1, 1, 1)],
            totals(2, 11, 6),
        );
        assert_eq!(v.without_event, [(String::new(), "z".to_string(), 1)]);
        let v = ledger(&events[..1], &[row("a", 1, 10, 4)], totals(1, 10, 4));
        assert_eq!(v.differing.len(), 1);
        let v = ledger(&events[..1], &[row("a", 1, 10, 5)], totals(2, 20, 10));
        assert!(!v.exact(), "a rollup counting twice is caught");
        let conflicting = [event("a", 1, 10, 5), event("a", 1, 10, 6)];
        assert_eq!(
            ledger(&conflicting, &[row("a", 1, 10, 5)], totals(1, 10, 5))
                .conflicting_events
                .len(),
            1
        );
    }
}
