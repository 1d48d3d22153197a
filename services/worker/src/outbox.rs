//! Where everything about one request goes: chunks and the final reply to
//! the client's reply subject, the kept result, usage events, dead letters,
//! the escalated copy for tier 2, and the finished-ids record.
//!
//! Every durable publish waits for JetStream's ack, so a caller that acks
//! the request afterwards knows nothing was lost.

use std::time::Duration;

use async_nats::jetstream;
use triage_bus::{envelope, BusError, DeadLetter, Envelope};
use triage_protocol::{
    encode, headers, Chunk, Encoding, ErrorCode, Namespace, Reply, RoutedRequest, Tier, UsageEvent,
};

use crate::attempt::ATTEMPT_BASE_HEADER;
use crate::metrics::WorkerMetrics;

/// The answer channels of one request.
pub struct Outbox<'a> {
    /// Core NATS client (replies).
    pub client: &'a async_nats::Client,
    /// JetStream (results, usage, dead letters, escalation).
    pub js: &'a jetstream::Context,
    /// The deployment's names.
    pub ns: &'a Namespace,
    /// The request's encoding, used for everything written about it.
    pub encoding: Encoding,
    /// The checked reply subject, if the client gave a usable one.
    pub reply_to: Option<String>,
    /// Whether the final reply is also kept on `llm.results.<id>`.
    pub keep_result: bool,
    /// The request id.
    pub id: String,
    /// Metrics.
    pub metrics: &'a WorkerMetrics,
    /// `worker-tier1` / `worker-tier2`, for dead letters.
    pub service: &'a str,
}

impl Outbox<'_> {
    /// Whether chunks can reach anyone.
    pub fn can_stream(&self) -> bool {
        self.reply_to.is_some()
    }

    /// Sends one chunk (core NATS; a lost chunk shows as a gap in `seq` and
    /// the completion's `chunks` count).
    pub async fn chunk(&self, seq: u32, attempt: u32, delta: String) {
        let Some(subject) = &self.reply_to else {
            return;
        };
        let reply = Reply::Chunk(Chunk {
            id: self.id.clone(),
            seq,
            attempt,
            delta,
        });
        match triage_bus::reply::send(self.client, subject, self.encoding, &reply).await {
            Ok(()) => self.metrics.published("chunk"),
            Err(e) => tracing::warn!(error = %e, "chunk not sent"),
        }
    }

    /// Sends the final reply: to the reply subject (if any) and, for kept
    /// results, to `llm.results.<id>` (awaited). Only the kept result's
    /// failure is an error: the reply subject is fire-and-forget by design.
    pub async fn finish(&self, reply: &Reply) -> Result<(), BusError> {
        if self.keep_result {
            let h = envelope::outgoing(self.encoding, None);
            let payload = encode(self.encoding, reply);
            self.publish_durable("kept result", self.ns.result(&self.id), h, payload)
                .await?;
            self.metrics.published("result");
        }
        if let Some(subject) = &self.reply_to {
            match triage_bus::reply::send(self.client, subject, self.encoding, reply).await {
                Ok(()) => self.metrics.published("final"),
                Err(e) => tracing::warn!(error = %e, "final reply not sent"),
            }
        }
        Ok(())
    }

    /// Publishes a usage event on `llm.usage` with its idempotent message
    /// id, waiting for JetStream's ack.
    pub async fn usage(&self, event: &UsageEvent) -> Result<(), BusError> {
        let h = envelope::outgoing(self.encoding, Some(&event.msg_id()));
        let payload = encode(self.encoding, event);
        self.publish_durable("usage event", self.ns.usage(), h, payload)
            .await?;
        self.metrics.published("usage");
        Ok(())
    }

    /// Dead-letters the original message (awaited).
    pub async fn dead_letter(
        &self,
        env: &Envelope,
        payload: &[u8],
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), BusError> {
        let letter = DeadLetter {
            subject: &env.subject,
            payload,
            headers: Some(&env.headers),
            reason,
            code,
            service: self.service,
            deliveries: env.deliveries,
        };
        with_retries("dead letter", || letter.publish(self.js, self.ns)).await?;
        self.metrics.published("dead");
        Ok(())
    }

    /// Republishes the request to tier 2 with `reason` appended to its
    /// routing reasons; attempt numbers there start at `attempt_base`. The
    /// message id makes a repeat (a crash before the tier-1 ack) a no-op.
    pub async fn escalate(
        &self,
        env: &Envelope,
        routed: &RoutedRequest,
        reason: &str,
        attempt_base: u32,
    ) -> Result<(), BusError> {
        let mut routed = routed.clone();
        routed.routing.tier = Tier::Large;
        routed.routing.reasons.push(reason.to_string());
        routed.routed_at_ms = triage_protocol::now_ms();
        let msg_id = format!("escalate:{}", self.id);
        let mut h = envelope::outgoing(self.encoding, Some(&msg_id));
        if let Some(reply) = &env.reply_hint {
            h.insert(headers::REPLY_TO, reply.as_str());
        }
        h.insert(ATTEMPT_BASE_HEADER, attempt_base.to_string().as_str());
        let payload = encode(self.encoding, &routed);
        self.publish_durable("escalation", self.ns.tier(Tier::Large), h, payload)
            .await?;
        self.metrics.published("escalation");
        self.metrics.escalation(reason);
        Ok(())
    }
}

fn js_err(op: impl Into<String>, e: impl std::fmt::Display) -> BusError {
    BusError::JetStream {
        op: op.into(),
        detail: e.to_string(),
    }
}

/// Retries a durable publish a few times (JetStream leader changes and
/// short outages), so one hiccup does not turn into a redelivery and a
/// second generation.
impl Outbox<'_> {
    /// Publishes to a stream and waits for JetStream's ack, retrying with
    /// backoff (the payload is shared between tries, not copied).
    async fn publish_durable(
        &self,
        what: &str,
        subject: String,
        headers: async_nats::HeaderMap,
        payload: Vec<u8>,
    ) -> Result<(), BusError> {
        let payload = bytes::Bytes::from(payload);
        with_retries(what, || async {
            self.js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(|e| js_err(format!("publish to {subject}"), e))?
                .await
                .map_err(|e| js_err(format!("ack of publish to {subject}"), e))
                .map(drop)
        })
        .await
    }
}

async fn with_retries<F, Fut>(what: &str, mut publish: F) -> Result<(), BusError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BusError>>,
{
    let mut wait = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match publish().await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 3 => {
                tries += 1;
                tracing::warn!(error = %e, tries, "{what} not published; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The finished-ids record: written after the final answer and its usage
/// are durable and before the ack, so a redelivery (a crash between the two)
/// is acked without generating again.
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

    /// What was recorded for `id`, if it was finished.
    pub async fn get(&self, id: &str) -> Result<Option<String>, BusError> {
        self.store
            .get(Self::key(id))
            .await
            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| js_err("finished-ids get", e))
    }

    fn escalated_key(id: &str) -> String {
        format!("escalated.{}", Self::key(id))
    }

    /// What was recorded when tier 1 escalated `id`, if it did.
    pub async fn escalated(&self, id: &str) -> Result<Option<String>, BusError> {
        self.store
            .get(Self::escalated_key(id))
            .await
            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| js_err("finished-ids get", e))
    }

    /// Records that tier 1 handed `id` to tier 2 (a tier-1 redelivery is
    /// then acked instead of answered a second time).
    pub async fn mark_escalated(&self, id: &str, note: &str) -> Result<(), BusError> {
        self.store
            .put(Self::escalated_key(id), note.to_string().into())
            .await
            .map(drop)
            .map_err(|e| js_err("finished-ids put", e))
    }

    /// Records `id` as finished with a short note (outcome and attempt).
    pub async fn put(&self, id: &str, note: &str) -> Result<(), BusError> {
        self.store
            .put(Self::key(id), note.to_string().into())
            .await
            .map(drop)
            .map_err(|e| js_err("finished-ids put", e))
    }
}
