//! The consumer loop: take deliveries from the tier's durable pull consumer
//! only while there is a free slot, hand each to the [`Pipeline`] in a task
//! of its own, and on shutdown stop fetching, drain, and hand back what
//! outlives the grace period.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Batch};
use async_nats::jetstream::consumer::Consumer;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use triage_bus::consumer;

use crate::pipeline::{Disposition, Pipeline};

/// How long after `fetch_expires` a fetch may still be waiting for the
/// server's end-of-fetch status before a new fetch is made.
const FETCH_GRACE: Duration = Duration::from_millis(250);

/// The loop's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages handled at once.
    pub max_in_flight: usize,
    /// Long-poll duration of each fetch.
    pub fetch_expires: Duration,
    /// How long in-flight messages may finish after shutdown.
    pub shutdown_grace: Duration,
}

/// Counts of what a run did, returned when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Messages acked (answered, failed for good, escalated, duplicates).
    pub acked: u64,
    /// Messages handed back for redelivery.
    pub nakked: u64,
}

impl RunSummary {
    fn count(&mut self, d: Disposition) {
        match d {
            Disposition::Acked => self.acked += 1,
            Disposition::Nakked => self.nakked += 1,
        }
    }
}

/// The messages being handled.
struct InFlight {
    pipeline: Arc<Pipeline>,
    tasks: JoinSet<Disposition>,
    /// Fired when the shutdown grace is over.
    cancel: CancellationToken,
    summary: RunSummary,
}

impl InFlight {
    fn spawn(&mut self, message: async_nats::jetstream::Message, slot: OwnedSemaphorePermit) {
        let pipeline = self.pipeline.clone();
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let d = pipeline.handle(message, &cancel).await;
            drop(slot);
            d
        });
    }

    /// Counts the tasks that have finished, without waiting.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok(d) = done {
                self.summary.count(d);
            }
        }
    }

    async fn join_all(&mut self) {
        while let Some(done) = self.tasks.join_next().await {
            if let Ok(d) = done {
                self.summary.count(d);
            }
        }
    }

    /// Lets in-flight messages finish within `grace`, then cancels the rest
    /// (they hand themselves back) and waits for them.
    async fn drain(mut self, grace: Duration) -> RunSummary {
        tracing::info!(
            in_flight = self.tasks.len(),
            ?grace,
            "stopped fetching; draining in-flight requests"
        );
        if tokio::time::timeout(grace, self.join_all()).await.is_err() {
            tracing::warn!(
                left = self.tasks.len(),
                "grace period over: cancelling and handing back the rest"
            );
            self.cancel.cancel();
            self.join_all().await;
        }
        self.summary
    }
}

/// Handles messages until `shutdown` fires, then drains.
pub async fn run(
    consumer: &Consumer<pull::Config>,
    pipeline: Arc<Pipeline>,
    limits: Limits,
    shutdown: &CancellationToken,
) -> RunSummary {
    let permits = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut in_flight = InFlight {
        pipeline,
        tasks: JoinSet::new(),
        cancel: CancellationToken::new(),
        summary: RunSummary::default(),
    };
    while !shutdown.is_cancelled() {
        // Take at least one free slot before asking for work: what this
        // replica cannot handle now stays in JetStream for the others.
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break,
        };
        let mut slots = vec![first];
        while let Ok(p) = permits.clone().try_acquire_owned() {
            slots.push(p);
        }
        let batch = consumer
            .batch()
            .max_messages(slots.len())
            .expires(limits.fetch_expires)
            .messages()
            .await;
        match batch {
            Ok(batch) => dispatch(batch, slots, limits, &mut in_flight, shutdown).await,
            Err(e) => {
                tracing::warn!(error = %e, "fetch failed; retrying");
                drop(slots);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        in_flight.reap();
    }
    in_flight.drain(limits.shutdown_grace).await
}

/// Gives each message of one fetch a slot and a task, until the fetch ends.
async fn dispatch(
    mut batch: Batch,
    mut slots: Vec<OwnedSemaphorePermit>,
    limits: Limits,
    in_flight: &mut InFlight,
    shutdown: &CancellationToken,
) {
    // The server ends a fetch with a 408 at `fetch_expires`. When that
    // status goes missing, async-nats waits 5 s more before giving up, and
    // meanwhile nothing new is fetched: requests arriving then waited ~5 s
    // (seen under load). Past our own deadline the fetch is left to end in
    // the background, handing back anything late.
    let deadline = tokio::time::Instant::now() + limits.fetch_expires + FETCH_GRACE;
    loop {
        let message = tokio::select! {
            m = batch.next() => m,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!("fetch not ended by the server; fetching again");
                tokio::spawn(async move {
                    while let Some(Ok(late)) = batch.next().await {
                        let _ = consumer::nak(&late, None).await;
                    }
                });
                return;
            }
        };
        let message = match message {
            None => return,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "fetch ended");
                return;
            }
        };
        if shutdown.is_cancelled() {
            // Arrived after the signal: hand it straight back.
            let _ = consumer::nak(&message, None).await;
            in_flight.summary.nakked += 1;
            continue;
        }
        let Some(slot) = slots.pop() else {
            let _ = consumer::nak(&message, None).await;
            continue;
        };
        in_flight.spawn(message, slot);
    }
}
