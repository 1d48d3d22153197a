//! # triage-shadow — shadow answers graded by a judge
//!
//! A sampled share of answered requests (the workers' `shadow.fraction`)
//! arrives here as [`triage_protocol::ShadowJob`]s on `llm.shadow`. For
//! each, the other tier answers the request in the background (never sent
//! to the client), a judge model grades both answers with a fixed
//! single-answer rubric, and every call is booked on `llm.usage` with its
//! own status (`shadow`, `judge`); the judge calls carry their grades,
//! which the ledger writes into `outcomes` (source `judge`).
//!
//! - [`config`] — the typed configuration and `--help` text;
//! - [`rubric`] — the judge's prompt and the reading of its rating (pure);
//! - [`call`] — one model call through the shared backend client;
//! - [`booking`] — the usage events of a job's calls (pure);
//! - [`job`] — one job, start to booked;
//! - [`service`] — the consumer loop and how each message is settled;
//! - [`metrics`] — `triage_shadow_*`.

pub mod booking;
pub mod call;
pub mod config;
pub mod job;
pub mod metrics;
pub mod rubric;
pub mod service;

pub use config::ShadowConfig;
