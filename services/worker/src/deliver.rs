//! The deliver stage: publishes how a request ended, each step durable
//! before the next, so a crash anywhere loses nothing and answers nothing
//! twice:
//!
//! - answer: usage event (awaited, idempotent message id) → kept result
//!   (awaited) → finished-ids record → final reply. Every write that can
//!   stall (a NATS leader election) comes before the final, so a worker
//!   killed while stalled has sent none and the redelivery's answer is the
//!   only one; only a crash in the instant between the record and the
//!   final's (core, unawaited) publish leaves the client without it — the
//!   chunks and, for `keep_result`, the kept result are there;
//! - failure: dead letter (if asked) → error reply (and kept result) →
//!   finished-ids record;
//! - escalation: the escalation record, written ahead (`escalating`) → the
//!   copy for tier 2 (awaited, de-duplicated by its message id) → the
//!   record confirmed (`escalated`);
//! - an earlier delivery's interrupted attempt (its worker died): its usage
//!   event from the progress record (idempotent message id) → the record
//!   deleted;
//! - invalid message: error reply (if a reply subject is known) → dead letter.
//!
//! The ack comes after, from the caller. A crash before the record means a
//! redelivery generates again with a higher attempt; after it, the
//! redelivery is acked without generating. An error here (JetStream did not
//! take a durable publish) means: hand the message back.

use triage_bus::{BusError, Envelope};
use triage_protocol::{
    Completion, Encoding, ErrorCode, ErrorReply, Reply, Request, RoutedRequest, Tier, UsageEvent,
};

use crate::crash::{self, CrashPoint};
use crate::failure::Failure;
use crate::finished::{EscalationNote, FinishedIds};
use crate::outbox::{Outbox, Publisher};
use crate::progress::Progress;

/// What the deliver stage needs: the NATS handles and the finished record.
pub struct Deliverer {
    /// The tier served (noted in the finished record).
    pub tier: Tier,
    /// Where things are published.
    pub publisher: Publisher,
    /// Requests answered or escalated for good.
    pub finished: FinishedIds,
    /// Tests only: where to abort the process.
    pub crash_at: CrashPoint,
}

impl Deliverer {
    /// The answer channels of `request` (see [`Publisher::outbox`]).
    pub fn outbox(
        &self,
        encoding: Encoding,
        request: &Request,
        reply_to: Option<String>,
    ) -> Outbox<'_> {
        self.publisher.outbox(encoding, request, reply_to)
    }

    /// The usage, the kept result, the record, then the final answer.
    pub async fn answer(
        &self,
        outbox: &Outbox<'_>,
        completion: Completion,
        usage: &UsageEvent,
    ) -> Result<(), BusError> {
        let attempt = completion.attempt;
        let reply = Reply::Completion(completion);
        outbox.usage(usage).await?;
        outbox.keep(&reply).await?;
        let note = format!("completed tier={} attempt={attempt}", self.tier);
        self.record_finished(outbox, &note).await;
        outbox.reply(&reply).await;
        outbox.offer_shadow(&reply).await;
        Ok(())
    }

    /// A final error: dead letter if asked, reply (and kept result), record.
    pub async fn failure(
        &self,
        outbox: &Outbox<'_>,
        env: &Envelope,
        payload: &[u8],
        failure: Failure,
    ) -> Result<(), BusError> {
        let Failure {
            code,
            message: reason,
            dead_letter,
        } = failure;
        tracing::warn!(%code, %reason, "request failed");
        self.publisher.metrics.error(code);
        if dead_letter {
            self.publisher
                .dead_letter(env, payload, code, &reason)
                .await?;
        }
        let reply = Reply::Error(ErrorReply::new(outbox.id.clone(), code, reason));
        outbox.finish(&reply).await?;
        self.record_finished(outbox, &format!("error code={code}"))
            .await;
        Ok(())
    }

    /// Cancelled by its client: only the record, so a redelivery does not
    /// generate it again (the usage was booked by the generate stage).
    pub async fn cancelled(&self, outbox: &Outbox<'_>) {
        tracing::info!("cancelled by the client");
        self.record_finished(outbox, "cancelled by the client")
            .await;
    }

    /// A reused request id: a `duplicate_request` error on the new reply
    /// subject only. Nothing is recorded or kept: the first request's record
    /// and kept result stay as they are.
    pub async fn repeat(&self, outbox: &Outbox<'_>, note: &str) {
        let code = ErrorCode::DuplicateRequest;
        let mut message = format!(
            "request id {:?} was already handled ({note}); a request id is an idempotency key: \
             send a new request with a new id",
            outbox.id
        );
        if outbox.keep_result {
            message.push_str(&format!(
                "; its kept result is on {}",
                self.publisher.ns.result(outbox.key())
            ));
        }
        tracing::warn!(%code, %note, "request id reused");
        self.publisher.metrics.error(code);
        outbox
            .reply(&Reply::Error(ErrorReply::new(
                outbox.id.clone(),
                code,
                message,
            )))
            .await;
    }

    /// The escalation record written ahead, the copy for tier 2, then the
    /// record confirmed. A redelivery that finds the record unconfirmed
    /// calls this again: the copy's message id makes the second publish a
    /// no-op within the duplicate window.
    pub async fn escalation(
        &self,
        outbox: &Outbox<'_>,
        env: &Envelope,
        routed: &RoutedRequest,
        reason: &str,
        attempt_base: u32,
    ) -> Result<(), BusError> {
        // Tier 1's attempts are booked: their progress record goes before
        // tier 2 (same request key) can write its own.
        outbox.close_progress().await;
        let mut note = EscalationNote {
            published: false,
            reason: reason.to_string(),
            attempt_base,
        };
        self.record_escalation(outbox, &note).await;
        crash::at(self.crash_at, CrashPoint::EscalationRecorded);
        outbox.escalate(env, routed, reason, attempt_base).await?;
        crash::at(self.crash_at, CrashPoint::EscalationPublished);
        note.published = true;
        self.record_escalation(outbox, &note).await;
        Ok(())
    }

    /// An earlier delivery's attempt that its worker never finished: booked
    /// `interrupted` with the tokens of its last progress record, then the
    /// record deleted. Booking it twice (a crash before the delete) is a
    /// no-op: the usage event's message id and the ledger's key are the
    /// attempt's own.
    pub async fn interrupted(
        &self,
        outbox: &Outbox<'_>,
        routed: &RoutedRequest,
        progress: &Progress,
    ) -> Result<(), BusError> {
        tracing::info!(
            attempt = progress.attempt,
            completion_tokens = progress.completion_tokens,
            backend = %progress.backend,
            "booking an attempt whose worker died mid-stream"
        );
        outbox.usage(&progress.interrupted_event(routed)).await?;
        let m = &self.publisher.metrics;
        m.interrupted.get_or_create(&m.tier()).inc();
        crash::at(self.crash_at, CrashPoint::InterruptedBooked);
        outbox.forget_progress().await;
        Ok(())
    }

    /// An answered attempt that is not released (tier 1's answer failed
    /// verification): its usage, booked like any other, then the copy for
    /// tier 2 and the escalation record. The answer itself is never sent.
    pub async fn booked_escalation(
        &self,
        outbox: &Outbox<'_>,
        env: &Envelope,
        routed: &RoutedRequest,
        usage: &UsageEvent,
        reason: &str,
        attempt_base: u32,
    ) -> Result<(), BusError> {
        outbox.usage(usage).await?;
        self.escalation(outbox, env, routed, reason, attempt_base)
            .await
    }

    /// A message that is not a usable request: tell `tell` (a checked
    /// reply subject, if one is known), and dead-letter it.
    pub async fn invalid(
        &self,
        env: &Envelope,
        payload: &[u8],
        code: ErrorCode,
        reason: &str,
        tell: Option<&str>,
    ) -> Result<(), BusError> {
        let p = &self.publisher;
        if let Some(subject) = tell {
            let reply = Reply::Error(ErrorReply::new("", code, reason));
            // Best effort: the dead letter below is what must not be lost.
            let _ = p.reply(subject, env.encoding, &reply).await;
        }
        p.metrics.error(code);
        p.dead_letter(env, payload, code, reason).await
    }

    async fn record_finished(&self, outbox: &Outbox<'_>, note: &str) {
        let note = format!("{note} req={}", outbox.fingerprint);
        if let Err(e) = self.finished.put(outbox.key(), &note).await {
            // The ack still follows: without it the request would be generated
            // again; the record only guards the window between answer and ack.
            self.count_record_failure();
            tracing::warn!(error = %e, "finished-ids record not written");
        }
    }

    /// Writes an escalation record; a failure is counted and the
    /// escalation goes on (refusing it would turn a full bucket into an
    /// outage; the redelivery window is then the old one).
    async fn record_escalation(&self, outbox: &Outbox<'_>, note: &EscalationNote) {
        if let Err(e) = self
            .finished
            .mark_escalation(outbox.key(), note, &outbox.fingerprint)
            .await
        {
            self.count_record_failure();
            tracing::warn!(error = %e, %note, "escalation record not written");
        }
    }

    fn count_record_failure(&self) {
        let m = &self.publisher.metrics;
        m.finished_write_failures.get_or_create(&m.tier()).inc();
    }
}
