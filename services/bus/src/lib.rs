//! Triage on NATS JetStream.
//!
//! The protocol crate says *what* goes on the wire; this crate puts it
//! there: connecting ([`connect`]), creating the streams idempotently
//! ([`streams`]), reading and writing headers with W3C trace context
//! ([`envelope`], [`trace`]), answering on reply subjects ([`reply`]),
//! publishing to a stream and waiting for its ack ([`publish`]),
//! dead-lettering ([`dead`]), durable pull consumers ([`consumer`]) and the
//! client API that tests, replay and the demo use ([`client`]).

pub mod client;
pub mod config;
pub mod connect;
pub mod consumer;
pub mod dead;
pub mod envelope;
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
}
