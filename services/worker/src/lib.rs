//! # triage-worker — the tier workers
//!
//! A tier worker turns a routed request into a streamed answer from a
//! vLLM-compatible backend, and is where GPUs, networks and processes fail:
//! every request ends in exactly one completion or one clear error, and no
//! accepted request is lost.
//!
//! Pure logic, unit-tested without servers: [`retry`] (what is retried and
//! for how long), [`breaker`] and [`pool::pick`] (backend choice),
//! [`coalesce`] (chunk coalescing), [`early_exit`] (the confidence gate),
//! [`attempt`] (attempt numbering across crashes and escalation) and
//! [`tokens`] (token counting and usage estimation). I/O at the edges:
//! [`pool`] (health checks, pre-warm), [`generation`] (one delivery's
//! backend calls), [`outbox`] (everything published), [`handler`] (one
//! message, decode to ack), [`worker`] (the consumer loop) and [`batch`]
//! (the `batch` command). See README.md for behaviour and configuration.

pub mod attempt;
pub mod batch;
pub mod breaker;
pub mod coalesce;
pub mod config;
pub mod early_exit;
pub mod generation;
pub mod handler;
pub mod metrics;
pub mod outbox;
pub mod pool;
pub mod retry;
pub mod tokens;
pub mod worker;

pub use config::WorkerConfig;
pub use worker::{RunSummary, Worker, WorkerError};
