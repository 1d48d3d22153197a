//! The tier worker service: connects, provisions, joins the tier's durable
//! consumer, and handles messages with bounded concurrency until shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use triage_bus::{consumer, BusError, Envelope};
use triage_protocol::{Namespace, Tier};

use crate::config::{InvalidConfig, WorkerConfig};

/// How long after `fetch_expires` a fetch may still be waiting for the
/// server's end-of-fetch status before a new fetch is made.
const FETCH_GRACE: Duration = Duration::from_millis(250);
use crate::handler::{handle, Disposition};
use crate::metrics::WorkerMetrics;
use crate::outbox::{FinishedIds, Outbox};
use crate::pool::{BackendPool, PoolError};
use crate::tokens::{TokenCounter, TokenizerError};

/// Why the worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    /// A backend client could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The tokenizer could not be loaded.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// NATS or JetStream failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// What every handler shares.
pub struct Shared {
    /// The tier served.
    pub tier: Tier,
    /// The configuration.
    pub config: WorkerConfig,
    /// Core NATS.
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
    /// Names.
    pub ns: Namespace,
    /// Finished request ids.
    pub finished: FinishedIds,
    /// Backends.
    pub pool: Arc<BackendPool>,
    /// Token counting.
    pub counter: TokenCounter,
    /// Metrics.
    pub metrics: WorkerMetrics,
}

impl Shared {
    /// `worker-tier1` / `worker-tier2`.
    pub fn service_name(&self) -> String {
        format!("worker-tier{}", self.tier.number())
    }

    /// The answer channels of one request.
    pub fn outbox<'a>(
        &'a self,
        env: &Envelope,
        id: String,
        reply_to: Option<String>,
        keep_result: bool,
        service: &'a str,
    ) -> Outbox<'a> {
        Outbox {
            client: &self.client,
            js: &self.js,
            ns: &self.ns,
            encoding: env.encoding,
            reply_to,
            keep_result,
            id,
            metrics: &self.metrics,
            service,
        }
    }
}

/// A connected worker, ready to run.
pub struct Worker {
    shared: Arc<Shared>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
}

/// Counts of what a run did, returned when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Messages acked (answered, failed for good, escalated, duplicates).
    pub acked: u64,
    /// Messages handed back for redelivery.
    pub nakked: u64,
}

impl Worker {
    /// Validates the configuration, connects to NATS, provisions the
    /// streams and the finished-ids bucket, joins the tier's durable
    /// consumer and checks the backends once (learning their models and
    /// context windows). Metrics are registered in `registry`.
    pub async fn connect(
        config: WorkerConfig,
        tier: Tier,
        registry: &mut Registry,
    ) -> Result<Self, WorkerError> {
        config.validate()?;
        let counter = TokenCounter::load(config.tokenizer.as_deref())?;
        let metrics = WorkerMetrics::register(tier.number(), registry);
        let pool = Arc::new(BackendPool::new(&config, metrics.clone())?);
        let client = triage_bus::connect(&config.nats).await?;
        let js = jetstream::new(client.clone());
        let ns = config.nats.namespace()?;
        triage_bus::provision(&js, &ns, &config.nats.streams).await?;
        let store = triage_bus::streams::finished_bucket(&js, &ns, &config.nats.streams).await?;
        let consumer = consumer::durable(
            &js,
            &ns,
            Namespace::tier_stream(tier),
            &config.consumer.durable_name(tier),
            &config.consumer.settings(),
        )
        .await?;
        pool.check_health().await;
        Ok(Self {
            shared: Arc::new(Shared {
                tier,
                config,
                client,
                js,
                ns,
                finished: FinishedIds::new(store),
                pool,
                counter,
                metrics,
            }),
            consumer,
        })
    }

    /// The shared state (tests and the benchmark read the pool and metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Handles messages until `shutdown` fires, then stops fetching, lets
    /// in-flight requests finish for `shutdown_grace`, cancels and hands
    /// back (nak) whatever is left, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunSummary, WorkerError> {
        let shared = self.shared;
        let config = &shared.config;
        let background = CancellationToken::new();
        let mut helpers = JoinSet::new();
        helpers.spawn(
            shared
                .pool
                .clone()
                .run_health_checks(config.health.interval, background.clone()),
        );
        helpers.spawn(
            shared
                .pool
                .clone()
                .run_prewarm(config.prewarm.idle_after, background.clone()),
        );
        helpers.spawn(poll_depth(
            self.consumer.clone(),
            shared.metrics.clone(),
            config.depth_poll_interval,
            background.clone(),
        ));
        tracing::info!(
            tier = shared.tier.number(),
            consumer = %config.consumer.durable_name(shared.tier),
            max_in_flight = config.consumer.max_in_flight,
            backends = shared.pool.backends().len(),
            "worker running"
        );

        let cancel = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(config.consumer.max_in_flight));
        let mut tasks: JoinSet<Disposition> = JoinSet::new();
        let mut summary = RunSummary::default();
        let count = |d: Disposition, s: &mut RunSummary| match d {
            Disposition::Acked => s.acked += 1,
            Disposition::Nakked => s.nakked += 1,
        };

        'fetch: while !shutdown.is_cancelled() {
            // Take at least one free slot before asking for work: what this
            // replica cannot handle now stays in JetStream for the others.
            let first = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.cancelled() => break 'fetch,
            };
            let mut slots = vec![first];
            while let Ok(p) = permits.clone().try_acquire_owned() {
                slots.push(p);
            }
            let batch = self
                .consumer
                .batch()
                .max_messages(slots.len())
                .expires(config.consumer.fetch_expires)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "fetch failed; retrying");
                    drop(slots);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'fetch,
                        _ = shutdown.cancelled() => break 'fetch,
                    }
                }
            };
            // The server ends a fetch with a 408 at `fetch_expires`. When that
            // status goes missing, async-nats waits 5 s more before giving up,
            // and meanwhile nothing new is fetched: requests arriving then
            // waited ~5 s (seen under load). Past our own deadline the fetch is
            // left to end in the background, handing back anything late.
            let deadline =
                tokio::time::Instant::now() + config.consumer.fetch_expires + FETCH_GRACE;
            loop {
                let message = tokio::select! {
                    m = batch.next() => m,
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::debug!("fetch not ended by the server; fetching again");
                        drop(slots);
                        tokio::spawn(async move {
                            while let Some(Ok(late)) = batch.next().await {
                                let _ = consumer::nak(&late, None).await;
                            }
                        });
                        continue 'fetch;
                    }
                };
                let Some(message) = message else { break };
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "fetch ended");
                        break;
                    }
                };
                if shutdown.is_cancelled() {
                    // Arrived after the signal: hand it straight back.
                    let _ = consumer::nak(&message, None).await;
                    summary.nakked += 1;
                    continue;
                }
                let Some(slot) = slots.pop() else {
                    let _ = consumer::nak(&message, None).await;
                    continue;
                };
                let shared = shared.clone();
                let cancel = cancel.clone();
                tasks.spawn(async move {
                    let d = handle(&shared, message, &cancel).await;
                    drop(slot);
                    d
                });
            }
            drop(slots);
            while let Some(done) = tasks.try_join_next() {
                if let Ok(d) = done {
                    count(d, &mut summary);
                }
            }
        }

        tracing::info!(
            in_flight = tasks.len(),
            grace = ?config.shutdown_grace,
            "stopped fetching; draining in-flight requests"
        );
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while let Some(done) = tasks.join_next().await {
                if let Ok(d) = done {
                    count(d, &mut summary);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "grace period over: cancelling and handing back the rest"
            );
            cancel.cancel();
            while let Some(done) = tasks.join_next().await {
                if let Ok(d) = done {
                    count(d, &mut summary);
                }
            }
        }
        background.cancel();
        while helpers.join_next().await.is_some() {}
        tracing::info!(
            acked = summary.acked,
            handed_back = summary.nakked,
            "worker stopped"
        );
        Ok(summary)
    }
}

/// Polls the consumer's pending and ack-pending counts into the metrics.
async fn poll_depth(
    mut consumer: jetstream::consumer::Consumer<pull::Config>,
    metrics: WorkerMetrics,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match consumer::depth(&mut consumer).await {
            Ok((pending, ack_pending)) => {
                metrics
                    .consumer_pending
                    .get_or_create(&metrics.tier())
                    .set(i64::try_from(pending).unwrap_or(i64::MAX));
                metrics
                    .consumer_ack_pending
                    .get_or_create(&metrics.tier())
                    .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::debug!(error = %e, "consumer depth not read"),
        }
    }
}
