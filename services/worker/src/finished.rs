//! The finished-ids record (a JetStream key-value bucket): written after a
//! request's final answer and its usage are durable and before the ack, so a
//! redelivery (a crash between the two) is acked without generating again.
//! Tier 1 also records escalations, write-ahead: `escalating` before the
//! copy for tier 2 is published, `escalated` once it is durable, so a
//! redelivery never answers on tier 1 what tier 2 answers too; one that
//! finds `escalating` publishes the same copy again (de-duplicated by its
//! message id).
//!
//! Keys are the request's tenant and id ([`RequestKey::tokens`]): two
//! tenants may use the same id, and `a.b` never meets its escaped form.
//!
//! Read by the admit stage, written by the deliver stage.

use std::fmt;

use async_nats::jetstream;
use sha2::{Digest, Sha256};
use triage_bus::BusError;
use triage_protocol::{Request, RequestKey};

/// The record of requests answered (or escalated) for good.
#[derive(Clone)]
pub struct FinishedIds {
    store: jetstream::kv::Store,
}

impl FinishedIds {
    /// Wraps the bucket.
    pub fn new(store: jetstream::kv::Store) -> Self {
        Self { store }
    }

    /// `done.<tenant>.<id>`; three tokens, so it never meets an
    /// escalation key.
    fn key(key: RequestKey<'_>) -> String {
        format!("done.{}", key.tokens())
    }

    /// `escalated.<tenant>.<id>`.
    fn escalated_key(key: RequestKey<'_>) -> String {
        format!("escalated.{}", key.tokens())
    }

    /// What was recorded for the request, if it was finished.
    pub async fn get(&self, key: RequestKey<'_>) -> Result<Option<String>, BusError> {
        self.read(Self::key(key)).await
    }

    /// What was recorded when tier 1 escalated the request, if it did.
    pub async fn escalated(&self, key: RequestKey<'_>) -> Result<Option<String>, BusError> {
        self.read(Self::escalated_key(key)).await
    }

    /// Records the request as finished with a short note (outcome and
    /// attempt).
    pub async fn put(&self, key: RequestKey<'_>, note: &str) -> Result<(), BusError> {
        self.write(Self::key(key), note).await
    }

    /// Records what tier 1 is doing (or did) with the request: a tier-1
    /// redelivery then re-publishes or acks instead of answering.
    pub async fn mark_escalation(
        &self,
        key: RequestKey<'_>,
        note: &EscalationNote,
        fingerprint: &str,
    ) -> Result<(), BusError> {
        self.write(
            Self::escalated_key(key),
            &format!("{note} req={fingerprint}"),
        )
        .await
    }

    /// Retried like the writes: a look-up that fails while this worker's
    /// NATS node fails over is taken for "not finished", and the request
    /// would be answered a second time.
    async fn read(&self, key: String) -> Result<Option<String>, BusError> {
        triage_bus::publish::with_retries("finished-ids look-up", || async {
            self.store
                .get(key.clone())
                .await
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .map_err(|e| BusError::js("finished-ids get", e))
        })
        .await
    }

    /// Retried like a durable publish: a record lost while this worker's
    /// NATS node fails over would let the redelivery answer again (the
    /// chaos suite saw exactly that).
    async fn write(&self, key: String, note: &str) -> Result<(), BusError> {
        triage_bus::publish::with_retries("finished-ids record", || async {
            self.store
                .put(key.clone(), note.to_string().into())
                .await
                .map(drop)
                .map_err(|e| BusError::js("finished-ids put", e))
        })
        .await
    }
}

/// An escalation record: tier 1 hands the request to tier 2 for `reason`,
/// tier 2 numbering its attempts from `attempt_base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationNote {
    /// `false` (written ahead): the copy for tier 2 may not be durable yet.
    pub published: bool,
    /// The routing reason appended.
    pub reason: String,
    /// The lowest attempt number tier 2 may use.
    pub attempt_base: u32,
}

impl EscalationNote {
    /// Reads a record back; `None` for a note of another shape (one
    /// written before escalations were recorded ahead, which only ever
    /// followed the publish, reads as published).
    pub fn parse(note: &str) -> Option<Self> {
        let mut words = note.split(' ');
        let published = match words.next()? {
            "escalating" => false,
            "escalated" => true,
            _ => return None,
        };
        let reason = words.next()?.strip_prefix("reason=");
        let base = words.next().and_then(|w| w.strip_prefix("base="));
        match (reason, base.and_then(|b| b.parse().ok())) {
            (Some(reason), Some(attempt_base)) => Some(Self {
                published,
                reason: reason.to_string(),
                attempt_base,
            }),
            _ => published.then(|| Self {
                published,
                reason: String::new(),
                attempt_base: 0,
            }),
        }
    }
}

impl fmt::Display for EscalationNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.published {
            "escalated"
        } else {
            "escalating"
        };
        write!(
            f,
            "{state} reason={} base={}",
            self.reason, self.attempt_base
        )
    }
}

/// A short digest of what the client sent, its reply subject included.
/// Records carry it (`req=…`), so a first delivery of a finished id tells
/// the same request routed again (a router's or client's retry across a
/// NATS failover: acked, nothing sent) from a client reusing the id (told
/// what became of the first).
pub fn fingerprint(request: &Request, reply_to: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    let bare = Request {
        reply_to: None,
        ..request.clone()
    };
    hasher.update(serde_json::to_vec(&bare).unwrap_or_default());
    hasher.update([0]);
    hasher.update(reply_to.unwrap_or_default().as_bytes());
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint a record was written with, if it has one.
pub fn recorded_fingerprint(note: &str) -> Option<&str> {
    note.split(' ').find_map(|w| w.strip_prefix("req="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation_notes_read_back_as_written() {
        for published in [false, true] {
            let note = EscalationNote {
                published,
                reason: "escalated_verify".into(),
                attempt_base: 18,
            };
            assert_eq!(EscalationNote::parse(&note.to_string()), Some(note));
        }
        assert_eq!(
            EscalationNote::parse("escalating reason=x base=3").map(|n| n.published),
            Some(false)
        );
        // Written by an earlier version, after the publish.
        let old = EscalationNote::parse("escalated escalated_tier1_unavailable").unwrap();
        assert!(old.published);
        // A write-ahead record must be whole to be acted on.
        assert_eq!(EscalationNote::parse("escalating reason=x"), None);
        assert_eq!(EscalationNote::parse("completed tier=1 attempt=1"), None);
    }

    #[test]
    fn fingerprints_tell_the_same_request_from_a_reused_id() {
        let mut a = Request::from_prompt("hello");
        a.id = "r1".into();
        a.reply_to = Some("_INBOX.x".into());
        let fp = fingerprint(&a, Some("_INBOX.x"));
        assert_eq!(fp.len(), 16);
        assert_eq!(fp, fingerprint(&a.clone(), Some("_INBOX.x")), "stable");
        assert_ne!(
            fp,
            fingerprint(&a, Some("_INBOX.y")),
            "another reply subject"
        );
        let other = Request::from_prompt("hello again");
        assert_ne!(
            fp,
            fingerprint(
                &Request {
                    id: "r1".into(),
                    ..other
                },
                Some("_INBOX.x")
            )
        );
        let note = format!("completed tier=1 attempt=1 req={fp}");
        assert_eq!(recorded_fingerprint(&note), Some(fp.as_str()));
        assert_eq!(recorded_fingerprint("completed tier=1 attempt=1"), None);
        // Escalation records keep reading back with the fingerprint after them.
        let escalating = EscalationNote::parse(&format!("escalating reason=x base=3 req={fp}"));
        assert_eq!(
            escalating.map(|n| (n.published, n.attempt_base)),
            Some((false, 3))
        );
    }
}
