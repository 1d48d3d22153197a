//! The finished-ids record (a JetStream key-value bucket): written after a
//! request's final answer and its usage are durable and before the ack, so a
//! redelivery (a crash between the two) is acked without generating again.
//! Tier 1 also records escalations, so a redelivered escalated request is
//! not answered on tier 1 as well.
//!
//! Read by the admit stage, written by the deliver stage.

use async_nats::jetstream;
use triage_bus::BusError;

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

    fn key(id: &str) -> String {
        triage_protocol::subjects::subject_token(id)
    }

    fn escalated_key(id: &str) -> String {
        format!("escalated.{}", Self::key(id))
    }

    /// What was recorded for `id`, if it was finished.
    pub async fn get(&self, id: &str) -> Result<Option<String>, BusError> {
        self.read(Self::key(id)).await
    }

    /// What was recorded when tier 1 escalated `id`, if it did.
    pub async fn escalated(&self, id: &str) -> Result<Option<String>, BusError> {
        self.read(Self::escalated_key(id)).await
    }

    /// Records `id` as finished with a short note (outcome and attempt).
    pub async fn put(&self, id: &str, note: &str) -> Result<(), BusError> {
        self.write(Self::key(id), note).await
    }

    /// Records that tier 1 handed `id` to tier 2 (a tier-1 redelivery is
    /// then acked instead of answered a second time).
    pub async fn mark_escalated(&self, id: &str, note: &str) -> Result<(), BusError> {
        self.write(Self::escalated_key(id), note).await
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
