//! The consumer loop on `llm.shadow`: fetch only as many jobs as there are
//! free slots, one task per job, and settle each message:
//!
//! - done (every call booked): ack;
//! - undecodable or impossible: dead letter with the reason, then ack;
//! - failed, retryable, deliveries left: nak after `retry_delay`;
//! - failed otherwise, or on its last delivery: dead letter, then ack.
//!
//! A dead letter that cannot be stored leaves the message unacked (it comes
//! back). On shutdown the loop stops fetching and gives jobs in hand
//! `shutdown_grace`; what is left is handed back (nak).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use triage_bus::{consumer, publish, BusError, DeadLetter, Envelope};
use triage_protocol::{decode, headers, Encoding, ErrorCode, Namespace, ShadowJob};

use crate::config::ConsumerConfig;
use crate::job::Shadower;
use crate::metrics::ShadowMetrics;

/// The service name on dead letters.
pub const SERVICE: &str = "shadow";

/// What settling a message needs.
pub struct Settler {
    /// Does the jobs.
    pub shadower: Shadower,
    /// JetStream, for dead letters.
    pub js: jetstream::Context,
    /// The deployment's names.
    pub ns: Namespace,
    /// Deliveries and retry delay.
    pub consumer: ConsumerConfig,
    /// Counts outcomes.
    pub metrics: ShadowMetrics,
}

/// Consumes until `shutdown`, then drains for `grace`.
pub async fn run(
    settler: Arc<Settler>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settler.consumer.max_in_flight));
    let mut tasks = JoinSet::new();
    while !shutdown.is_cancelled() {
        while tasks.try_join_next().is_some() {}
        let free = slots.available_permits();
        if free == 0 {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tasks.join_next() => continue,
            }
        }
        let batch = consumer
            .fetch()
            .max_messages(free)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fetch from llm.shadow failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        while let Some(next) = batch.next().await {
            let Ok(message) = next else { continue };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let settler = settler.clone();
            tasks.spawn(async move {
                settler.settle(&message).await;
                drop(permit);
                message
            });
        }
    }
    drain(tasks, grace).await;
}

/// Lets jobs in hand finish for `grace`; the rest are aborted and come
/// back after their ack wait.
async fn drain(mut tasks: JoinSet<jetstream::Message>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while !tasks.is_empty() {
        if tokio::time::timeout_at(deadline, tasks.join_next())
            .await
            .is_err()
        {
            tracing::warn!(
                left = tasks.len(),
                "shutdown grace over; unfinished jobs come back after their ack wait"
            );
            tasks.abort_all();
            break;
        }
    }
}

impl Settler {
    /// Does the job in `message` and acks, naks or dead-letters it.
    pub async fn settle(&self, message: &jetstream::Message) {
        let env = Envelope::of(message);
        let content_type = env.headers.get(headers::CONTENT_TYPE).map(|v| v.as_str());
        let encoding = Encoding::sniff(content_type, &message.payload);
        let job = match decode::<ShadowJob>(encoding, &message.payload) {
            Ok(job) => job,
            Err(e) => {
                let reason = format!("undecodable shadow job: {e}");
                return self.give_up(message, &env, e.error_code(), &reason).await;
            }
        };
        let span = tracing::info_span!("shadow.job", request_id = %job.request.id,
            tier = %job.tier, delivery = env.deliveries, trace_id = tracing::field::Empty);
        triage_bus::trace::adopt_parent(&span, &env.headers);
        let outcome = self.shadower.handle(&job, encoding).instrument(span).await;
        match outcome {
            Ok(verdict) => {
                tracing::info!(answer = ?verdict.answer, shadow = ?verdict.shadow, "judged");
                if let Err(e) = consumer::ack_confirmed(message).await {
                    tracing::warn!(error = %e, "ack failed; the redelivery books nothing twice");
                }
            }
            Err(e) if e.is_retryable() && env.deliveries < self.consumer.max_deliveries as u64 => {
                tracing::warn!(error = %e, "shadow job failed; it will be delivered again");
                self.metrics.job("retried");
                let _ = consumer::nak(message, Some(self.consumer.retry_delay)).await;
            }
            Err(e) => {
                let reason = format!("{e} (delivery {})", env.deliveries);
                self.give_up(message, &env, e.code(), &reason).await;
            }
        }
    }

    async fn give_up(
        &self,
        message: &jetstream::Message,
        env: &Envelope,
        code: ErrorCode,
        reason: &str,
    ) {
        tracing::warn!(%code, %reason, "dead-lettering shadow job");
        match self.dead_letter(message, env, code, reason).await {
            Ok(()) => {
                self.metrics.job("dead_lettered");
                if let Err(e) = consumer::ack_confirmed(message).await {
                    tracing::warn!(error = %e, "ack of a dead-lettered job failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "dead letter not stored; the job comes back"),
        }
    }

    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        env: &Envelope,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), BusError> {
        let letter = DeadLetter {
            subject: &env.subject,
            payload: &message.payload,
            headers: Some(&env.headers),
            reason,
            code,
            service: SERVICE,
            deliveries: env.deliveries,
        };
        publish::with_retries("dead letter", || letter.publish(&self.js, &self.ns)).await
    }
}
