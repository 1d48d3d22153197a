//! Triage's cost exporter: Prometheus metrics from the ledger's rollups
//! (spend and tokens by tier and tenant, requests by tier and status, the
//! tier-2 share over recent windows, savings against an all-tier-2
//! baseline, today's spend and a spend-anomaly ratio) and queue health from
//! JetStream (queue depths, consumer backlogs).
//!
//! - [`config`] — settings;
//! - [`refresh`] — periodic readings of Postgres and NATS;
//! - [`collector`] — readings to metrics at scrape time (pure);
//! - [`queues`] — stream and consumer stats from JetStream.

pub mod collector;
pub mod config;
pub mod queues;
pub mod refresh;

use std::sync::{Arc, RwLock};

use prometheus_client::registry::Registry;

pub use collector::{CostCollector, Readings, SharedReadings};
pub use config::ExporterConfig;
pub use refresh::{RefreshMetrics, Refresher};

/// A registry with the exporter's metrics, and the readings it serves.
pub fn registry() -> (Registry, SharedReadings, RefreshMetrics) {
    let readings: SharedReadings = Arc::new(RwLock::new(Readings::default()));
    let metrics = RefreshMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(CostCollector::new(readings.clone())));
    (registry, readings, metrics)
}
