//! The finished-ids record (a JetStream key-value bucket): written after a
//! request's final answer and its usage are durable and before the ack, so a
//! redelivery (a crash between the two) is acked without generating again.
//! Tier 1 also records escalations, so a redelivered escalated request is
//! not answered on tier 1 as well.
//!
//! Keys are the request's tenant and id ([`RequestKey::tokens`]): two
//! tenants may use the same id, and `a.b` never meets its escaped form.
//!
//! Read by the admit stage, written by the deliver stage.

use async_nats::jetstream;
use triage_bus::BusError;
use triage_protocol::RequestKey;

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

    /// Records that tier 1 handed the request to tier 2 (a tier-1
    /// redelivery is then acked instead of answered a second time).
    pub async fn mark_escalated(&self, key: RequestKey<'_>, note: &str) -> Result<(), BusError> {
        self.write(Self::escalated_key(key), note).await
    }

    async fn read(&self, key: String) -> Result<Option<String>, BusError> {
        self.store
            .get(key)
            .await
            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| BusError::js("finished-ids get", e))
    }

    async fn write(&self, key: String, note: &str) -> Result<(), BusError> {
        self.store
            .put(key, note.to_string().into())
            .await
            .map(drop)
            .map_err(|e| BusError::js("finished-ids put", e))
    }
}
