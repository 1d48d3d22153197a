//! Reads the ledger and NATS every `refresh_interval` and publishes the
//! readings for the collector. A failed reading keeps the previous one
//! (its timestamp shows its age) and is counted.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use triage_ledger::snapshot::{LedgerSnapshot, SnapshotOptions};
use triage_protocol::Namespace;

use crate::collector::SharedReadings;
use crate::config::ExporterConfig;

/// Which reading.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `ledger` or `nats`.
    pub source: &'static str,
}

/// The exporter's own health metrics.
#[derive(Debug, Clone)]
pub struct RefreshMetrics {
    /// Time to take a reading, seconds.
    pub seconds: Family<SourceLabel, Histogram, fn() -> Histogram>,
    /// Failed readings.
    pub errors: Family<SourceLabel, Counter>,
    /// 1 when the last reading succeeded.
    pub up: Family<SourceLabel, Gauge>,
    /// Unix time of the last successful reading, seconds.
    pub last_success: Family<SourceLabel, Gauge<f64, AtomicU64>>,
}

fn reading_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Default for RefreshMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RefreshMetrics {
    /// Fresh metrics.
    pub fn new() -> Self {
        Self {
            seconds: Family::new_with_constructor(reading_histogram),
            errors: Family::default(),
            up: Family::default(),
            last_success: Family::default(),
        }
    }

    /// Registers under `triage_cost_exporter_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("triage_cost_exporter");
        r.register(
            "reading_seconds",
            "Time to read the ledger or NATS",
            self.seconds.clone(),
        );
        r.register(
            "reading_errors",
            "Failed readings (the previous reading is kept)",
            self.errors.clone(),
        );
        r.register(
            "up",
            "1 when the last reading of the source succeeded",
            self.up.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful reading",
            self.last_success.clone(),
        );
    }

    fn record(&self, source: &'static str, started: Instant, ok: bool) {
        let l = SourceLabel { source };
        self.seconds
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
        self.up.get_or_create(&l).set(ok as i64);
        if ok {
            self.last_success
                .get_or_create(&l)
                .set(triage_protocol::now_ms() as f64 / 1000.0);
        } else {
            self.errors.get_or_create(&l).inc();
        }
    }
}

/// Takes readings into `readings`.
pub struct Refresher {
    pool: sqlx::PgPool,
    nats: Option<(async_nats::jetstream::Context, Namespace)>,
    options: SnapshotOptions,
    config: ExporterConfig,
    readings: SharedReadings,
    metrics: RefreshMetrics,
}

impl Refresher {
    /// A refresher reading the ledger through `pool` and, when given, NATS.
    pub fn new(
        pool: sqlx::PgPool,
        nats: Option<(async_nats::jetstream::Context, Namespace)>,
        config: ExporterConfig,
        readings: SharedReadings,
        metrics: RefreshMetrics,
    ) -> Self {
        Self {
            pool,
            nats,
            options: config.snapshot_options(),
            config,
            readings,
            metrics,
        }
    }

    /// Takes one reading of each source now.
    pub async fn refresh_once(&self) {
        let started = Instant::now();
        let ledger = tokio::time::timeout(
            self.config.query_timeout,
            LedgerSnapshot::load(&self.pool, Utc::now(), &self.options),
        )
        .await;
        match ledger {
            Ok(Ok(snapshot)) => {
                self.metrics.record("ledger", started, true);
                self.write(|r| r.ledger = Some(snapshot));
            }
            Ok(Err(e)) => {
                self.metrics.record("ledger", started, false);
                tracing::warn!(error = %e, "reading the ledger failed; serving the previous reading");
            }
            Err(_) => {
                self.metrics.record("ledger", started, false);
                tracing::warn!(timeout = ?self.config.query_timeout, "reading the ledger timed out");
            }
        }
        if let Some((js, ns)) = &self.nats {
            let started = Instant::now();
            match tokio::time::timeout(self.config.query_timeout, crate::queues::read(js, ns)).await
            {
                Ok(Ok(stats)) => {
                    self.metrics.record("nats", started, true);
                    self.write(|r| r.queues = Some(stats));
                }
                Ok(Err(e)) => {
                    self.metrics.record("nats", started, false);
                    tracing::warn!(error = %e, "reading NATS failed");
                }
                Err(_) => {
                    self.metrics.record("nats", started, false);
                    tracing::warn!("reading NATS timed out");
                }
            }
        }
    }

    fn write(&self, update: impl FnOnce(&mut crate::collector::Readings)) {
        let mut guard = match self.readings.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        update(&mut guard);
    }

    /// Refreshes every `refresh_interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.refresh_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => self.refresh_once().await,
            }
        }
    }
}
