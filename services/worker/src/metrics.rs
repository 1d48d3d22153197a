//! The worker's Prometheus metrics, labelled by tier (and backend where one
//! is involved). Names start with `triage_worker_`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use triage_runtime::metrics::Registrar;

/// `tier`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// 1 or 2.
    pub tier: u8,
}

/// `tier`, `backend`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// 1 or 2.
    pub tier: u8,
    /// The backend's label (`host:port` or its configured name).
    pub backend: String,
}

/// `tier`, `backend`, `kind` (prompt/completion tokens; retry cause).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendKindLabels {
    /// 1 or 2.
    pub tier: u8,
    /// The backend's label.
    pub backend: String,
    /// What is counted.
    pub kind: String,
}

/// `tier`, `reason` (escalations).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierReasonLabels {
    /// 1 or 2.
    pub tier: u8,
    /// Why.
    pub reason: String,
}

/// `tier`, `code` (error replies).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierCodeLabels {
    /// 1 or 2.
    pub tier: u8,
    /// The error code.
    pub code: String,
}

/// `tier`, `outcome` (requests).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierOutcomeLabels {
    /// 1 or 2.
    pub tier: u8,
    /// How handling ended.
    pub outcome: String,
}

/// `tier`, `kind` (published messages).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierKindLabels {
    /// 1 or 2.
    pub tier: u8,
    /// What was published.
    pub kind: String,
}

/// Every metric of one worker.
#[derive(Clone)]
pub struct WorkerMetrics {
    tier: u8,
    /// Time to first token, seconds, from the start of the attempt.
    pub ttft: Family<BackendLabels, Histogram>,
    /// Whole generation time of successful attempts, seconds.
    pub generation: Family<BackendLabels, Histogram>,
    /// Tokens by kind (`prompt`, `completion`).
    pub tokens: Family<BackendKindLabels, Counter>,
    /// Generations running now, per backend.
    pub backend_in_flight: Family<BackendLabels, Gauge>,
    /// Requests being handled now by this replica.
    pub in_flight: Family<TierLabels, Gauge>,
    /// Retries by cause (the backend error kind).
    pub retries: Family<BackendKindLabels, Counter>,
    /// Streams restarted as a new attempt after text reached the client.
    pub restarts: Family<BackendLabels, Counter>,
    /// Escalations to tier 2 by reason.
    pub escalations: Family<TierReasonLabels, Counter>,
    /// Error replies by code.
    pub errors: Family<TierCodeLabels, Counter>,
    /// Requests finished, by outcome (`completed`, `error`, `escalated`,
    /// `duplicate`, `handed_back`).
    pub requests: Family<TierOutcomeLabels, Counter>,
    /// Malformed SSE lines skipped.
    pub malformed: Family<BackendLabels, Counter>,
    /// 1 when the backend takes requests (breaker closed), else 0.
    pub backend_healthy: Family<BackendLabels, Gauge>,
    /// Pre-warm requests sent.
    pub prewarms: Family<BackendLabels, Counter>,
    /// Messages published, by kind (`chunk`, `final`, `result`, `usage`,
    /// `dead`, `escalation`): the NATS cost of an answer.
    pub published: Family<TierKindLabels, Counter>,
    /// The consumer's pending messages (not yet delivered): the queue depth
    /// to scale on.
    pub consumer_pending: Family<TierLabels, Gauge>,
    /// The consumer's delivered-but-unacked messages.
    pub consumer_ack_pending: Family<TierLabels, Gauge>,
    /// Finished-ids (or escalation) records that could not be written: a
    /// redelivery of those requests would be generated again.
    pub finished_write_failures: Family<TierLabels, Counter>,
    /// Progress records written (attempts generating longer than one
    /// progress interval).
    pub progress_writes: Family<TierLabels, Counter>,
    /// Progress records not written: a crash of those attempts would lose
    /// their tokens since the last record.
    pub progress_write_failures: Family<TierLabels, Counter>,
    /// Attempts of earlier deliveries booked `interrupted` from their
    /// progress record (their worker died mid-stream).
    pub interrupted: Family<TierLabels, Counter>,
    /// Shadow jobs by result (`published`, `failed`: the job was dropped,
    /// the client's answer is unaffected).
    pub shadow_jobs: Family<TierOutcomeLabels, Counter>,
    /// `verify_threshold`: the verify score that escalates now (moves with
    /// the answers when `verify.share.target` is set).
    pub verify_threshold: Family<TierLabels, Gauge<f64, AtomicU64>>,
}

impl WorkerMetrics {
    /// Creates the metrics for `tier` and registers them.
    pub fn register(tier: u8, registry: &mut Registry) -> Self {
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 18));
        let mut r = Registrar::new(registry, "triage_worker");
        let metrics = Self {
            tier,
            ttft: r.add(
                "ttft_seconds",
                "Time to first token from the start of the attempt",
                Family::new_with_constructor(latency),
            ),
            generation: r.add(
                "generation_seconds",
                "Generation time of answered attempts",
                Family::new_with_constructor(latency),
            ),
            tokens: r.add("tokens", "Tokens by kind", Family::default()),
            backend_in_flight: r.add(
                "backend_in_flight",
                "Generations running per backend",
                Family::default(),
            ),
            in_flight: r.add(
                "in_flight",
                "Requests being handled by this replica",
                Family::default(),
            ),
            retries: r.add(
                "retries",
                "Retried backend calls by cause",
                Family::default(),
            ),
            restarts: r.add(
                "restarts",
                "Streams restarted as a new attempt after text was sent",
                Family::default(),
            ),
            escalations: r.add(
                "escalations",
                "Requests escalated to tier 2 by reason",
                Family::default(),
            ),
            errors: r.add("errors", "Error replies by code", Family::default()),
            requests: r.add("requests", "Requests handled by outcome", Family::default()),
            malformed: r.add(
                "malformed_chunks",
                "Malformed SSE lines skipped",
                Family::default(),
            ),
            backend_healthy: r.add(
                "backend_healthy",
                "1 when the backend takes requests (breaker closed)",
                Family::default(),
            ),
            prewarms: r.add("prewarms", "Pre-warm requests sent", Family::default()),
            published: r.add(
                "published_messages",
                "NATS messages published by kind",
                Family::default(),
            ),
            consumer_pending: r.add(
                "consumer_pending",
                "Messages waiting in the tier's queue (not yet delivered)",
                Family::default(),
            ),
            consumer_ack_pending: r.add(
                "consumer_ack_pending",
                "Messages delivered to the tier's workers and not yet acked",
                Family::default(),
            ),
            finished_write_failures: r.add(
                "finished_write_failures",
                "Finished-ids or escalation records not written (a redelivery would generate again)",
                Family::default(),
            ),
            progress_writes: r.add(
                "progress_writes",
                "Progress records of generating attempts written",
                Family::default(),
            ),
            progress_write_failures: r.add(
                "progress_write_failures",
                "Progress records not written (a crash would lose those tokens)",
                Family::default(),
            ),
            interrupted: r.add(
                "interrupted_attempts",
                "Attempts of dead workers booked from their progress record",
                Family::default(),
            ),
            shadow_jobs: r.add(
                "shadow_jobs",
                "Answered requests sampled for a shadow answer, by result (published, failed)",
                Family::default(),
            ),
            verify_threshold: r.add(
                "verify_threshold",
                "Verify score at or above which tier 1's answers are escalated now",
                Family::default(),
            ),
        };
        // Exported as 0 from the start, so the alert's increase() sees the first failure.
        let _ = metrics
            .finished_write_failures
            .get_or_create(&metrics.tier());
        metrics
    }

    /// Labels for `backend`.
    pub fn backend(&self, backend: &str) -> BackendLabels {
        BackendLabels {
            tier: self.tier,
            backend: backend.to_string(),
        }
    }

    /// Labels for `backend` and `kind`.
    pub fn backend_kind(&self, backend: &str, kind: &str) -> BackendKindLabels {
        BackendKindLabels {
            tier: self.tier,
            backend: backend.to_string(),
            kind: kind.to_string(),
        }
    }

    /// Labels for this tier.
    pub fn tier(&self) -> TierLabels {
        TierLabels { tier: self.tier }
    }

    /// Labels for this tier and `reason`.
    pub fn reason(&self, reason: &str) -> TierReasonLabels {
        TierReasonLabels {
            tier: self.tier,
            reason: reason.to_string(),
        }
    }

    /// Counts a shadow job by `result`.
    pub fn shadow_job(&self, result: &str) {
        self.shadow_jobs
            .get_or_create(&TierOutcomeLabels {
                tier: self.tier,
                outcome: result.to_string(),
            })
            .inc();
    }

    /// Counts a published message of `kind`.
    pub fn published(&self, kind: &str) {
        self.published
            .get_or_create(&TierKindLabels {
                tier: self.tier,
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts a request outcome.
    pub fn outcome(&self, outcome: &str) {
        self.requests
            .get_or_create(&TierOutcomeLabels {
                tier: self.tier,
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts an error reply.
    pub fn error(&self, code: triage_protocol::ErrorCode) {
        self.errors
            .get_or_create(&TierCodeLabels {
                tier: self.tier,
                code: code.as_str().to_string(),
            })
            .inc();
    }

    /// Counts an escalation.
    pub fn escalation(&self, reason: &str) {
        self.escalations.get_or_create(&self.reason(reason)).inc();
    }
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerMetrics")
    }
}
