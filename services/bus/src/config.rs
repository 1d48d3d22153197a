//! NATS and JetStream settings, shared by every service's configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to reach NATS and which names to use there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated; may embed `user:password@`.
    pub url: String,
    /// User name (alternative to embedding it in the URL).
    pub user: Option<String>,
    /// Password (masked when printed).
    pub password: Option<String>,
    /// Token authentication (masked when printed).
    pub token: Option<String>,
    /// A `.creds` file (JWT + NKey) for NATS accounts.
    pub creds_file: Option<String>,
    /// First tokens of this connection's inboxes (JetStream acks, pull
    /// deliveries, replies) instead of `_INBOX`: with deploy/nats a client
    /// user `alice` may only read `_INBOX.alice.>`, a service `_TRIAGE.<role>.>`.
    pub inbox_prefix: Option<String>,
    /// Subject/stream prefix so several deployments can share one NATS.
    pub prefix: String,
    /// Connection name shown by the server's monitoring.
    pub name: Option<String>,
    /// Stream limits.
    pub streams: StreamsConfig,
}

/// The URL when nothing is configured: `TRIAGE_NATS_URL` (shared by every
/// service, script and test), else the local server. The one place that
/// reads it: services get it through [`NatsConfig::default`], command-line
/// tools and tests call it.
pub fn default_nats_url() -> String {
    std::env::var("TRIAGE_NATS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into())
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: default_nats_url(),
            user: None,
            password: None,
            token: None,
            creds_file: None,
            inbox_prefix: None,
            prefix: String::new(),
            name: None,
            streams: StreamsConfig::default(),
        }
    }
}

impl NatsConfig {
    /// The deployment's names.
    pub fn namespace(&self) -> Result<triage_protocol::Namespace, crate::BusError> {
        triage_protocol::Namespace::new(&self.prefix)
            .map_err(|e| crate::BusError::Config(e.to_string()))
    }
}

/// Limits of one stream. The work queues and `llm.usage` refuse new
/// messages at a limit (the publisher gets `queue_full`); `llm.dead` and
/// `llm.results` drop their oldest messages instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamLimits {
    /// Oldest message kept; `0s` means no limit.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Bytes kept; -1 means no limit.
    pub max_bytes: i64,
    /// Messages kept; -1 means no limit.
    #[serde(default = "no_limit")]
    pub max_msgs: i64,
}

fn no_limit() -> i64 {
    -1
}

impl StreamLimits {
    fn new(max_age: Duration, max_bytes: i64) -> Self {
        Self {
            max_age,
            max_bytes,
            max_msgs: no_limit(),
        }
    }
}

const DAY: u64 = 24 * 3600;
const GIB: i64 = 1 << 30;

/// Limits and replication of Triage's streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamsConfig {
    /// Replicas of every stream (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// `llm.requests`.
    pub requests: StreamLimits,
    /// `llm.tier1` and `llm.tier2`.
    pub tiers: StreamLimits,
    /// `llm.usage`: kept after the ledger booked it, for audit and re-booking.
    pub usage: StreamLimits,
    /// `llm.dead`.
    pub dead: StreamLimits,
    /// `llm.results.*`.
    pub results: StreamLimits,
    /// `llm.shadow`: jobs for `triage-shadow` (best effort: a full stream
    /// refuses a job, which the worker counts and drops).
    pub shadow: StreamLimits,
    /// JetStream's de-duplication window for `Nats-Msg-Id`.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long finished request ids are remembered (against double answers);
    /// workers refuse to start when it is shorter than their redelivery
    /// window (`ack_wait` x deliveries).
    #[serde(with = "humantime_serde")]
    pub finished_ttl: Duration,
    /// Bytes the finished-ids bucket may hold (about 150 bytes a request);
    /// when full, new records are refused (and counted), none is dropped.
    pub finished_max_bytes: i64,
    /// Values kept per key of the finished-ids bucket.
    pub finished_history: i64,
    /// Bytes the workers' progress bucket may hold (about 250 bytes a
    /// request, kept as long as finished ids); when full, the oldest
    /// records are dropped.
    pub progress_max_bytes: i64,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            requests: StreamLimits::new(Duration::from_secs(DAY), GIB),
            tiers: StreamLimits::new(Duration::from_secs(DAY), GIB),
            usage: StreamLimits::new(Duration::from_secs(7 * DAY), 2 * GIB),
            dead: StreamLimits::new(Duration::from_secs(30 * DAY), GIB / 2),
            results: StreamLimits::new(Duration::from_secs(7 * DAY), GIB),
            shadow: StreamLimits::new(Duration::from_secs(DAY), GIB / 4),
            duplicate_window: Duration::from_secs(120),
            finished_ttl: Duration::from_secs(DAY),
            // About 400,000 requests at ~150 bytes a record.
            finished_max_bytes: 64 << 20,
            finished_history: 1,
            // About 65,000 requests a day at ~250 bytes a record.
            progress_max_bytes: 16 << 20,
        }
    }
}

impl StreamsConfig {
    /// Small limits (64 MiB a stream) for tests and demos: JetStream reserves
    /// `max_bytes` up front, so many test namespaces with production limits
    /// would exhaust the server's storage.
    pub fn small() -> Self {
        let limits = |age: u64| StreamLimits::new(Duration::from_secs(age), 64 << 20);
        Self {
            requests: limits(3600),
            tiers: limits(3600),
            usage: limits(3600),
            dead: limits(3600),
            results: limits(3600),
            shadow: limits(3600),
            finished_ttl: Duration::from_secs(3600),
            progress_max_bytes: 8 << 20,
            ..Self::default()
        }
    }
}

/// A durable pull consumer's delivery settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerSettings {
    /// Redelivered when not acked (or marked in progress) within this time.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries before the message is given up (dead-lettered by the service).
    pub max_deliver: i64,
    /// Unacked messages in flight across all replicas.
    pub max_ack_pending: i64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1024,
        }
    }
}
