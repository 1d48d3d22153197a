//! Where everything about a request is published: chunks and the final
//! reply to the client's reply subject, the kept result, usage events, dead
//! letters, the escalated copy for tier 2 and shadow jobs.
//!
//! [`Publisher`] holds the NATS handles and names (one per worker);
//! [`Outbox`] is one request's channels on it. Every durable publish waits
//! for JetStream's ack (`triage_bus::publish`, which retries a few times), so
//! a caller that acks the request afterwards knows nothing was lost. The
//! order of the publishes is the deliver stage's business, not this module's.

use async_nats::jetstream;
use bytes::Bytes;
use triage_bus::{envelope, publish, BusError, DeadLetter, Envelope};
use triage_protocol::{
    encode, headers, Chunk, Encoding, ErrorCode, Namespace, Reply, Request, RequestKey,
    RoutedRequest, Tier, UsageEvent,
};

use crate::attempt::ATTEMPT_BASE_HEADER;
use crate::metrics::WorkerMetrics;
use crate::progress::{Progress, ProgressLog, Recorder};
use crate::shadow::{Sample, ShadowConfig};

/// The worker's NATS handles and names.
pub struct Publisher {
    /// Core NATS (replies).
    pub client: async_nats::Client,
    /// JetStream (results, usage, dead letters, escalation).
    pub js: jetstream::Context,
    /// The deployment's names.
    pub ns: Namespace,
    /// `worker-tier1` / `worker-tier2`, for dead letters.
    pub service: String,
    /// Counts what is published.
    pub metrics: WorkerMetrics,
    /// Progress records of generating attempts.
    pub progress: ProgressLog,
    /// Which answered requests get a shadow answer.
    pub shadow: ShadowConfig,
}

impl Publisher {
    /// The channels of `request`. `reply_to` is the checked reply subject,
    /// if the client gave a usable one; the request's `keep_result` also
    /// keeps the final reply on `llm.results.<tenant>.<id>`.
    pub fn outbox(
        &self,
        encoding: Encoding,
        request: &Request,
        reply_to: Option<String>,
    ) -> Outbox<'_> {
        Outbox {
            publisher: self,
            encoding,
            keep_result: request.keep_result,
            fingerprint: crate::finished::fingerprint(request, reply_to.as_deref()),
            reply_to,
            id: request.id.clone(),
            tenant: request.tenant.clone(),
            progress: self.progress.recorder(RequestKey::of(request)),
            shadow: self
                .shadow
                .sampled(request.tenant.as_deref(), &request.id)
                .then(|| Sample::new(request)),
        }
    }

    /// Sends a reply on core NATS (not awaited by anyone: the reply subject
    /// is fire-and-forget by design, the client may be gone).
    pub async fn reply(
        &self,
        subject: &str,
        encoding: Encoding,
        reply: &Reply,
    ) -> Result<(), BusError> {
        triage_bus::reply::send(&self.client, subject, encoding, reply).await
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
            service: &self.service,
            deliveries: env.deliveries,
        };
        publish::with_retries("dead letter", || letter.publish(&self.js, &self.ns)).await?;
        self.metrics.published("dead");
        Ok(())
    }
}

/// The answer channels of one request.
pub struct Outbox<'a> {
    publisher: &'a Publisher,
    /// The request's encoding, used for everything written about it.
    pub encoding: Encoding,
    /// The checked reply subject, if the client gave a usable one.
    pub reply_to: Option<String>,
    /// Whether the final reply is also kept on `llm.results.<id>`.
    pub keep_result: bool,
    /// What the finished record carries to recognise this request
    /// ([`crate::finished::fingerprint`]).
    pub fingerprint: String,
    /// The request id.
    pub id: String,
    /// The request's tenant (ids are unique per tenant).
    pub tenant: Option<String>,
    /// This delivery's progress records.
    progress: Recorder,
    /// Set when the request is sampled for a shadow answer.
    pub shadow: Option<Sample>,
}

impl Outbox<'_> {
    /// The request's identity in keys, subjects and message ids.
    pub fn key(&self) -> RequestKey<'_> {
        RequestKey::new(self.tenant.as_deref(), &self.id)
    }

    /// Whether chunks can reach anyone.
    pub fn can_stream(&self) -> bool {
        self.reply_to.is_some()
    }

    /// Sends one chunk (core NATS; a lost chunk shows as a gap in `seq` and
    /// the completion's `chunks` count).
    pub async fn chunk(
        &self,
        seq: u32,
        attempt: u32,
        delta: String,
        logprobs: Option<Vec<triage_protocol::TokenLogprob>>,
    ) {
        if let Some(sample) = &self.shadow {
            sample.chunk(attempt, &delta);
        }
        let Some(subject) = &self.reply_to else {
            return;
        };
        let reply = Reply::Chunk(Chunk {
            id: self.id.clone(),
            seq,
            attempt,
            delta,
            logprobs,
        });
        let p = self.publisher;
        match p.reply(subject, self.encoding, &reply).await {
            Ok(()) => p.metrics.published("chunk"),
            Err(e) => tracing::warn!(error = %e, "chunk not sent"),
        }
    }

    /// Sends the final reply: for kept results to `llm.results.<id>`
    /// (awaited), then to the reply subject (if any). Only the kept result's
    /// failure is an error: the reply subject is fire-and-forget by design.
    pub async fn finish(&self, reply: &Reply) -> Result<(), BusError> {
        self.keep(reply).await?;
        self.reply(reply).await;
        Ok(())
    }

    /// For kept results only: the final reply on `llm.results.<id>`,
    /// awaited.
    pub async fn keep(&self, reply: &Reply) -> Result<(), BusError> {
        let p = self.publisher;
        if self.keep_result {
            let h = envelope::outgoing(self.encoding, None);
            let payload: Bytes = encode(self.encoding, reply).into();
            let subject = p.ns.result(self.key());
            publish::durable(&p.js, "kept result", &subject, h, payload).await?;
            p.metrics.published("result");
        }
        Ok(())
    }

    /// Sends a final reply to the reply subject only (if there is one):
    /// fire-and-forget, like every reply.
    pub async fn reply(&self, reply: &Reply) {
        let p = self.publisher;
        if let Some(subject) = &self.reply_to {
            match p.reply(subject, self.encoding, reply).await {
                Ok(()) => p.metrics.published("final"),
                Err(e) => tracing::warn!(error = %e, "final reply not sent"),
            }
        }
    }

    /// After the final reply: the shadow job of a sampled request on
    /// `llm.shadow` ([`crate::shadow`]). Best effort: one publish, no
    /// retry; a failure is counted and logged, never the answer's concern.
    pub async fn offer_shadow(&self, reply: &Reply) {
        let (Some(sample), Reply::Completion(completion)) = (&self.shadow, reply) else {
            return;
        };
        let p = self.publisher;
        let Some(job) = sample.job(completion) else {
            p.metrics.shadow_job("failed");
            tracing::warn!("shadow job dropped: the answer's text was not seen");
            return;
        };
        let h = envelope::outgoing(self.encoding, Some(&job.msg_id()));
        let payload: Bytes = encode(self.encoding, &job).into();
        match publish::once(&p.js, &p.ns.shadow(), h, payload).await {
            Ok(()) => {
                p.metrics.shadow_job("published");
                p.metrics.published("shadow");
            }
            Err(e) => {
                p.metrics.shadow_job("failed");
                tracing::warn!(error = %e, "shadow job not published (the answer is unaffected)");
            }
        }
    }

    /// Publishes a usage event on `llm.usage` with its idempotent message
    /// id, waiting for JetStream's ack.
    pub async fn usage(&self, event: &UsageEvent) -> Result<(), BusError> {
        let p = self.publisher;
        let h = envelope::outgoing(self.encoding, Some(&event.msg_id()));
        let payload: Bytes = encode(self.encoding, event).into();
        publish::durable(&p.js, "usage event", &p.ns.usage(), h, payload).await?;
        p.metrics.published("usage");
        self.progress.booked(event.attempt);
        Ok(())
    }

    /// Records a generating attempt's progress (in the background).
    pub fn record_progress(&self, progress: Progress) {
        self.progress.record(progress);
    }

    /// Waits (at most `limit`) until the progress record of `attempt`, if
    /// one was made, is durable; false when it is not by then.
    pub async fn progress_durable(&self, attempt: u32, limit: std::time::Duration) -> bool {
        self.progress.durable(attempt, limit).await
    }

    /// Ends this delivery's progress records: deleted once their attempt's
    /// usage is durable, kept for the next delivery otherwise.
    pub async fn close_progress(&self) {
        self.progress.close().await;
    }

    /// Deletes the request's progress record (an earlier delivery's,
    /// booked now).
    pub async fn forget_progress(&self) {
        self.publisher.progress.delete(&self.key().tokens()).await;
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
        let p = self.publisher;
        let mut routed = routed.clone();
        routed.routing.tier = Tier::Large;
        routed.routing.reasons.push(reason.to_string());
        routed.routed_at_ms = triage_protocol::now_ms();
        let msg_id = self.key().msg_id("escalate");
        let mut h = envelope::outgoing(self.encoding, Some(&msg_id));
        if let Some(reply) = &env.reply_hint {
            h.insert(headers::REPLY_TO, reply.as_str());
        }
        h.insert(ATTEMPT_BASE_HEADER, attempt_base.to_string().as_str());
        let payload: Bytes = encode(self.encoding, &routed).into();
        let subject = p.ns.tier(Tier::Large);
        publish::durable(&p.js, "escalation", &subject, h, payload).await?;
        p.metrics.published("escalation");
        p.metrics.escalation(reason);
        Ok(())
    }
}
