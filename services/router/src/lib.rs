//! Triage's router: takes each request from `llm.requests`, validates it,
//! scores how likely it needs the large model, and republishes it to
//! `llm.tier1` or `llm.tier2` with the routing decision.
//!
//! - [`config`]: the typed configuration;
//! - [`tenancy`]: the tenant bound to the request subject;
//! - [`validation`]: the error replies a request can get;
//! - [`policy`]: tier overrides, tenant pins, shadow mode, failure fallback;
//! - [`self_rating`]: the optional LLM complexity rating;
//! - [`routing`]: the scoring of a batch, shared by service and offline;
//! - [`service`]: the NATS JetStream service (`triage-router run`);
//! - [`metrics`]: its Prometheus metrics;
//! - [`offline`]: `train`, `score` and `calibrate`;
//! - [`offline_verify`]: `train-verifier` and the cost-honest report of
//!   the pre-hoc, verify-only and combined policies.

pub mod config;
pub mod metrics;
pub mod offline;
pub mod offline_verify;
pub mod policy;
pub mod routing;
pub mod self_rating;
pub mod service;
pub mod tenancy;
pub mod validation;

pub use config::RouterConfig;
pub use routing::{Routed, Router};
