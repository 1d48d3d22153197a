//! Triage on NATS JetStream.
//!
//! The protocol crate says *what* goes on the wire; this crate puts it
//! there: connecting ([`connect`]), creating the streams idempotently
//! ([`streams`]), reading and writing headers with W3C trace context
//! ([`envelope`], [`trace`]), answering on reply subjects ([`reply`]),
//! publishing to a stream and waiting for its ack ([`publish`]), leaving a
//! cluster node that cannot reach the streams ([`failover`]),
//! dead-lettering ([`dead`]), durable pull consumers ([`consumer`]) and the
//! client API that tests, replay and the demo use ([`client`]).

pub mod client;
pub mod config;
pub mod connect;
pub mod consumer;
pub mod dead;
pub mod envelope;
pub mod failover;
pub mod publish;
pub mod reply;
pub mod streams;
pub mod trace;

pub use client::{Answer, ClientError, ReplyStream, TriageClient};
pub use config::{default_nats_url, ConsumerSettings, NatsConfig, StreamLimits, StreamsConfig};
pub use connect::connect;
pub use dead::DeadLetter;
pub use envelope::Envelope;
pub use streams::provision;

/// Errors talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Could not connect.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL, with any password masked.
        url: String,
        /// The cause.
        source: async_nats::ConnectError,
    },
    /// The configuration is unusable.
    #[error("invalid NATS configuration: {0}")]
    Config(String),
    /// A JetStream API call failed.
    #[error("JetStream {op} failed: {detail}")]
    JetStream {
        /// What was attempted, e.g. `create stream LLM_REQUESTS`.
        op: String,
        /// The server's or client's error.
        detail: String,
    },
    /// The stream is at its `max_msgs` or `max_bytes` and refused the
    /// message (it keeps everything it accepted): `queue_full` to clients.
    #[error("queue_full: {subject} is full and refused the message ({detail}); retry later")]
    QueueFull {
        /// The subject published to.
        subject: String,
        /// The server's reason.
        detail: String,
    },
    /// A core publish failed.
    #[error("publish to {subject} failed: {detail}")]
    Publish {
        /// The subject.
        subject: String,
        /// The cause.
        detail: String,
    },
    /// A subscription could not be made or confirmed.
    #[error("subscribe to {subject} failed: {detail}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The cause.
        detail: String,
    },
}

impl BusError {
    /// A failed JetStream call: `op` says what was attempted.
    pub fn js(op: impl Into<String>, err: impl std::fmt::Display) -> Self {
        BusError::JetStream {
            op: op.into(),
            detail: err.to_string(),
        }
    }

    /// Whether JetStream did not answer (a timeout, no responders, or the
    /// server's "temporarily unavailable" while a cluster elects leaders):
    /// worth trying again, unlike a refusal. The client's error kinds are
    /// flattened into `detail`, so this reads their wording.
    pub fn is_unavailable(&self) -> bool {
        match self {
            BusError::JetStream { detail, .. } => {
                let d = detail.to_ascii_lowercase();
                [
                    "timed out",
                    "no responders",
                    "temporarily unavailable",
                    "leader",
                    // A cluster still placing a stream another service
                    // just created, or a node that has not learnt of it.
                    "stream not found",
                    "no stream found",
                ]
                .iter()
                .any(|w| d.contains(w))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BusError;

    #[test]
    fn timeouts_and_leaderless_clusters_are_unavailable_refusals_are_not() {
        let js = |d: &str| BusError::js("look up stream X", d);
        assert!(
            js("request error: timed out: request timed out: deadline has elapsed")
                .is_unavailable()
        );
        assert!(js("jetstream error: JetStream system temporarily unavailable (code 503, error code 10008)").is_unavailable());
        assert!(js("no responders").is_unavailable());
        // Two services creating the same stream on a cluster at once.
        assert!(BusError::js("create stream X", "stream not found").is_unavailable());
        assert!(!js("stream name already in use with a different configuration").is_unavailable());
        assert!(!BusError::Config("bad".into()).is_unavailable());
    }
}
