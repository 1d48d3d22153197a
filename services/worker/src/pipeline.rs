//! One delivered message through the stages, in one direction:
//!
//! ```text
//! message ─▶ admit ─▶ generate ─▶ deliver ─▶ ack / nak
//! ```
//!
//! [`Pipeline`] holds each stage's own context and hands each stage only
//! that; the stages do not know each other. This module is the only place
//! that reads one stage's result and chooses the next step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use triage_bus::{consumer, BusError, Envelope};
use triage_protocol::RequestKey;

use crate::admit::{Admission, Admitter, Decoded};
use crate::client_cancel::CancelWatch;
use crate::deliver::Deliverer;
use crate::generate::{Generator, Job, Outcome};
use crate::metrics::WorkerMetrics;
use crate::outbox::Outbox;
use crate::verify::{AnswerCheck, Verdict, ESCALATED_VERIFY};

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Acked: answered, failed for good, escalated or a duplicate.
    Acked,
    /// Handed back for redelivery.
    Nakked,
}

/// The stages of one worker.
pub struct Pipeline {
    /// Decode and check.
    pub admit: Admitter,
    /// Backend calls.
    pub generate: Generator,
    /// Publishing the ending.
    pub deliver: Deliverer,
    /// Tier 1's answer check (`verify.enabled`), between generate and
    /// deliver.
    pub verify: Option<Arc<AnswerCheck>>,
    /// In-flight and outcome counts.
    pub metrics: WorkerMetrics,
    /// How often a long generation signals "in progress".
    pub progress_interval: Duration,
}

/// After the stages: ack (with the outcome counted), or hand back.
enum Step {
    Ack(&'static str),
    Nak,
}

impl Pipeline {
    /// Handles one message; `cancel` fires when the shutdown grace is over.
    pub async fn handle(
        &self,
        message: jetstream::Message,
        cancel: &CancellationToken,
    ) -> Disposition {
        let env = Envelope::of(&message);
        let span = tracing::info_span!(
            "request",
            tier = self.generate.tier.number(),
            id = tracing::field::Empty,
            delivery = env.deliveries,
            attempt = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            otel.kind = "consumer",
        );
        triage_bus::trace::adopt_parent(&span, &env.headers);
        let in_flight = self
            .metrics
            .in_flight
            .get_or_create(&self.metrics.tier())
            .clone();
        in_flight.inc();
        let result = self
            .stages(&message, &env, cancel)
            .instrument(span.clone())
            .await;
        in_flight.dec();
        // In the request's span: its ack/nak lines carry the id and trace id.
        self.settle(&message, result).instrument(span).await
    }

    /// Admit → generate → deliver.
    async fn stages(
        &self,
        message: &jetstream::Message,
        env: &Envelope,
        cancel: &CancellationToken,
    ) -> Result<Step, BusError> {
        let received_at = Instant::now();
        let _alive = KeepAlive::start(message, self.progress_interval);
        let payload = &message.payload[..];
        let (request, first_attempt) = match self.admit.admit(env, payload).await {
            Admission::Admitted {
                request,
                first_attempt,
            } => (request, first_attempt),
            Admission::Duplicate => return Ok(Step::Ack("duplicate")),
            Admission::Unsure(e) => return Err(e),
            Admission::Escalating { request, note } => {
                let outbox = self.outbox(env, &request);
                let (reason, base) = (&note.reason, note.attempt_base);
                self.deliver
                    .escalation(&outbox, env, &request.routed, reason, base)
                    .await?;
                return Ok(Step::Ack("escalated"));
            }
            Admission::Repeat { request, note } => {
                let outbox = self.outbox(env, &request);
                self.deliver.repeat(&outbox, &note).await;
                return Ok(Step::Ack("duplicate"));
            }
            Admission::Invalid(invalid) => {
                let tell = invalid.tell.as_deref();
                self.deliver
                    .invalid(env, payload, invalid.code, &invalid.reason, tell)
                    .await?;
                return Ok(Step::Ack("invalid"));
            }
            Admission::Refused { request, failure } => {
                let outbox = self.outbox(env, &request);
                self.book_interrupted(&outbox, &request).await?;
                self.deliver.failure(&outbox, env, payload, failure).await?;
                return Ok(Step::Ack("error"));
            }
        };
        let outbox = self.outbox(env, &request);
        self.book_interrupted(&outbox, &request).await?;
        let publisher = &self.deliver.publisher;
        let key = RequestKey::of(&request.routed.request);
        let watch = CancelWatch::start(&publisher.client, &publisher.ns, key).await;
        let job = Job {
            routed: &request.routed,
            outbox: &outbox,
            first_attempt,
            received_at,
            cancel,
            client_gone: &watch.gone,
        };
        let step = self.generate_and_deliver(&job, env, payload).await;
        outbox.close_progress().await;
        step
    }

    /// An earlier delivery's unfinished attempt, booked before anything
    /// else (a failure hands the message back, the record still there).
    async fn book_interrupted(
        &self,
        outbox: &Outbox<'_>,
        request: &Decoded,
    ) -> Result<(), BusError> {
        match &request.interrupted {
            Some(progress) => {
                let routed = &request.routed;
                self.deliver.interrupted(outbox, routed, progress).await
            }
            None => Ok(()),
        }
    }

    /// Generate → (verify) → deliver, for an admitted request.
    async fn generate_and_deliver(
        &self,
        job: &Job<'_>,
        env: &Envelope,
        payload: &[u8],
    ) -> Result<Step, BusError> {
        let (outbox, routed) = (job.outbox, job.routed);
        match self.generate.generate(job).await {
            Outcome::Answered { completion, usage } => {
                if let Some(score) = self.verify_fails(routed, &completion).await {
                    let mut usage = *usage;
                    usage.reasons.push(ESCALATED_VERIFY.to_string());
                    usage.reasons.push(format!("verify={score:.4}"));
                    let base = completion.attempt + 1;
                    self.deliver
                        .booked_escalation(outbox, env, routed, &usage, ESCALATED_VERIFY, base)
                        .await?;
                    return Ok(Step::Ack("escalated"));
                }
                self.deliver.answer(outbox, *completion, &usage).await?;
                Ok(Step::Ack("completed"))
            }
            Outcome::Failed(failure) => {
                self.deliver.failure(outbox, env, payload, failure).await?;
                Ok(Step::Ack("error"))
            }
            Outcome::Escalate {
                reason,
                attempt_base,
            } => {
                self.deliver
                    .escalation(outbox, env, routed, reason, attempt_base)
                    .await?;
                Ok(Step::Ack("escalated"))
            }
            Outcome::ClientGone => {
                self.deliver.cancelled(outbox).await;
                Ok(Step::Ack("cancelled"))
            }
            Outcome::HandBack => Ok(Step::Nak),
        }
    }

    /// The verify score when tier 1's answer is to be escalated instead of
    /// released (`None`: release it, or nothing to verify).
    async fn verify_fails(
        &self,
        routed: &triage_protocol::RoutedRequest,
        completion: &triage_protocol::Completion,
    ) -> Option<f64> {
        let check = self.verify.as_ref()?;
        if !AnswerCheck::applies(self.generate.tier, routed) {
            return None;
        }
        let verdict = check.judge(routed, completion).await;
        self.metrics
            .verify_threshold
            .get_or_create(&self.metrics.tier())
            .set(check.threshold());
        match verdict {
            Verdict::Release => None,
            Verdict::Escalate { score } => Some(score),
        }
    }

    fn outbox(&self, env: &Envelope, request: &Decoded) -> Outbox<'_> {
        let r = &request.routed.request;
        self.deliver
            .outbox(env.encoding, r, request.reply_to.clone())
    }

    /// Acks or naks the message as the stages decided.
    async fn settle(
        &self,
        message: &jetstream::Message,
        result: Result<Step, BusError>,
    ) -> Disposition {
        match result {
            Ok(Step::Ack(outcome)) => {
                if let Err(e) = consumer::ack_confirmed(message).await {
                    // The work is durable; a redelivery finds the finished record.
                    tracing::warn!(error = %e, "ack not confirmed");
                }
                tracing::debug!(outcome, "acked");
                self.metrics.outcome(outcome);
                Disposition::Acked
            }
            Ok(Step::Nak) | Err(_) => {
                // Handed back on shutdown: at once, for another replica. After a
                // NATS failure: a little later, so a persistent fault does not
                // spin through the deliveries.
                let delay = result.is_err().then_some(Duration::from_secs(1));
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "publishing failed; handed back for a retry");
                }
                if let Err(e) = consumer::nak(message, delay).await {
                    tracing::warn!(error = %e, "nak failed; the message returns after the ack wait");
                }
                self.metrics.outcome("handed_back");
                Disposition::Nakked
            }
        }
    }
}

/// Keeps a long-running message alive with in-progress acks until dropped.
struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    fn start(message: &jetstream::Message, every: Duration) -> Self {
        let message = message.clone();
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = consumer::in_progress(&message).await {
                    tracing::warn!(error = %e, "in-progress ack failed");
                }
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}
