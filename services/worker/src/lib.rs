//! # triage-worker — the tier workers
//!
//! A tier worker turns a routed request into a streamed answer from a
//! vLLM-compatible backend, and is where GPUs, networks and processes fail:
//! every request ends in exactly one completion or one clear error, and no
//! accepted request is lost.
//!
//! A delivered message passes through stages one way; each takes values
//! and returns a value, and none imports another (see README.md for the
//! diagram):
//!
//! - [`consume`]: the consumer loop (fetch with free slots only, one task
//!   per message, shutdown and drain);
//! - [`pipeline`]: one message through the stages, then ack or nak;
//! - [`admit`]: decode, reply subject, finished-ids look-up, refusals →
//!   an [`admit::Admission`];
//! - [`generate`]: the attempt loop (backend choice, retries, early exit,
//!   escalation) → a [`generate::Outcome`];
//! - [`verify`]: tier 1's finished non-streamed answer checked before it
//!   is released (escalated to tier 2 when it looks poor);
//! - [`deliver`]: publishes the ending in its durable order.
//!
//! Below them, pure logic unit-tested without servers: [`retry`] (what is
//! retried and for how long), [`breaker`] and [`pool::pick`] (backend
//! choice), [`coalesce`] (chunk coalescing), [`early_exit`] (the confidence
//! gate), [`attempt`] (attempt numbering across crashes and escalation),
//! [`tokens`] (token counting and usage estimation), [`token_cap`] (the
//! operator's `max_tokens` ceilings) and [`failure`] (a final error). I/O at the edges: [`pool`] (health checks, pre-warm),
//! [`outbox`] (everything published), [`finished`] (the finished-ids and
//! escalation records), [`progress`] (progress records of generating
//! attempts, booked if their worker dies), [`shadow`] (sampling answered
//! requests for a shadow answer and its job on `llm.shadow`), [`crash`] (test-only crash
//! points), [`worker`] (connecting, background jobs) and [`batch`] (the
//! `batch` command).

pub mod admit;
pub mod attempt;
pub mod batch;
pub mod breaker;
pub mod client_cancel;
pub mod coalesce;
pub mod config;
pub mod consume;
pub mod crash;
pub mod deliver;
pub mod early_exit;
pub mod failure;
pub mod finished;
pub mod generate;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod pool;
pub mod progress;
pub mod retry;
pub mod shadow;
pub mod token_cap;
pub mod tokens;
pub mod verify;
pub mod worker;

pub use config::WorkerConfig;
pub use consume::RunSummary;
pub use worker::{Worker, WorkerError};
