//! The tier worker service: connects, provisions, joins the tier's durable
//! consumer, builds each stage's context, and runs the consumer loop with
//! the background jobs (health checks, pre-warm, queue depth) until
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use triage_bus::{consumer, BusError};
use triage_protocol::{Namespace, Tier};

use crate::admit::Admitter;
use crate::config::{InvalidConfig, WorkerConfig};
use crate::consume::{Limits, RunSummary};
use crate::deliver::Deliverer;
use crate::finished::FinishedIds;
use crate::generate::{Generator, Settings};
use crate::metrics::WorkerMetrics;
use crate::outbox::Publisher;
use crate::pipeline::Pipeline;
use crate::pool::{BackendPool, PoolError};
use crate::progress::ProgressLog;
use crate::tokens::{TokenCounter, TokenizerError};
use crate::verify::{AnswerCheck, VerifyLoadError};

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
    /// `verify.enabled` but the verifier or its model could not be loaded.
    #[error("verifier: {0}")]
    Verify(#[from] VerifyLoadError),
}

/// A connected worker, ready to run.
pub struct Worker {
    tier: Tier,
    config: WorkerConfig,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    pool: Arc<BackendPool>,
    metrics: WorkerMetrics,
    pipeline: Arc<Pipeline>,
}

impl Worker {
    /// What `/health/ready` checks: NATS connected with the tier's stream
    /// there, and at least one backend whose breaker lets requests through.
    pub fn readiness(&self) -> triage_runtime::Readiness {
        let publisher = &self.pipeline.deliver.publisher;
        let client = publisher.client.clone();
        let streams = vec![publisher.ns.stream_name(Namespace::tier_stream(self.tier))];
        let pool = self.pool.clone();
        triage_runtime::Readiness::new()
            .check("nats", triage_bus::connect::streams_check(client, streams))
            .check("backends", move || {
                let backends = pool.backends();
                let healthy = backends.iter().filter(|b| b.available()).count();
                let total = backends.len();
                async move {
                    match healthy {
                        0 => Err(format!("none of {total} backend(s) is healthy")),
                        _ => Ok(()),
                    }
                }
            })
    }

    /// Validates the configuration, connects to NATS, provisions the
    /// streams, the finished-ids and the progress buckets, joins the tier's durable
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
        let progress_store =
            triage_bus::streams::progress_bucket(&js, &ns, &config.nats.streams).await?;
        let progress = ProgressLog::new(progress_store, metrics.clone());
        let consumer = consumer::durable(
            &js,
            &ns,
            Namespace::tier_stream(tier),
            &config.consumer.durable_name(tier),
            &config.consumer.settings(),
        )
        .await?;
        pool.check_health().await;
        let finished = FinishedIds::new(store);
        // Only tier 1's answers are verified (tier 2 is the last resort).
        let verify = (tier == Tier::Small && config.verify.enabled)
            .then(|| AnswerCheck::load(&config.verify).map(Arc::new))
            .transpose()?;
        let pipeline = Pipeline {
            admit: Admitter {
                tier,
                ns: ns.clone(),
                reply_policy: config.reply_policy.clone(),
                max_deliveries: config.consumer.max_deliveries,
                finished: finished.clone(),
                progress: progress.clone(),
            },
            generate: Generator {
                tier,
                pool: pool.clone(),
                counter,
                settings: Settings::new(&config, tier),
                metrics: metrics.clone(),
            },
            deliver: Deliverer {
                tier,
                publisher: Publisher {
                    client,
                    js,
                    ns,
                    service: format!("worker-tier{}", tier.number()),
                    metrics: metrics.clone(),
                    progress,
                    shadow: config.shadow.clone(),
                },
                finished,
                crash_at: config.crash_at,
            },
            verify,
            metrics: metrics.clone(),
            progress_interval: config.consumer.progress_interval(),
        };
        Ok(Self {
            tier,
            config,
            consumer,
            pool,
            metrics,
            pipeline: Arc::new(pipeline),
        })
    }

    /// Handles messages until `shutdown` fires, then stops fetching, lets
    /// in-flight requests finish for `shutdown_grace`, cancels and hands
    /// back (nak) whatever is left, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunSummary, WorkerError> {
        let config = &self.config;
        let background = CancellationToken::new();
        let mut helpers = JoinSet::new();
        helpers.spawn(
            self.pool
                .clone()
                .run_health_checks(config.health.interval, background.clone()),
        );
        helpers.spawn(
            self.pool
                .clone()
                .run_prewarm(config.prewarm.idle_after, background.clone()),
        );
        helpers.spawn(poll_depth(
            self.consumer.clone(),
            self.metrics.clone(),
            config.depth_poll_interval,
            background.clone(),
        ));
        tracing::info!(
            tier = self.tier.number(),
            consumer = %config.consumer.durable_name(self.tier),
            max_in_flight = config.consumer.max_in_flight,
            backends = self.pool.backends().len(),
            "worker running"
        );
        let limits = Limits {
            max_in_flight: config.consumer.max_in_flight,
            fetch_expires: config.consumer.fetch_expires,
            shutdown_grace: config.shutdown_grace,
        };
        let summary =
            crate::consume::run(&self.consumer, self.pipeline.clone(), limits, &shutdown).await;
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
