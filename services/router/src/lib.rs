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
//! - [`model_queue`]: texts waiting for the transformer, taken a pass at a time;
//! - [`service`]: the NATS JetStream service (`triage-router run`);
//! - [`heads`]: heads promoted to a KV bucket and followed without a restart;
//! - [`metrics`]: its Prometheus metrics;
//! - [`offline`]: `train`, `score` and `calibrate`;
//! - [`offline_db`]: `train --from-db`, on the ledger's judged traffic;
//! - [`offline_verify`]: `train-verifier` and the verify scores of
//!   recorded answers;
//! - [`policy_report`]: the cost-honest table of the pre-hoc,
//!   verify-only and combined policies;
//! - [`combined_policy`]: what the configured combined policy does with
//!   one answered request (`score`'s `verify_tier`).

pub mod combined_policy;
pub mod config;
pub mod heads;
pub mod metrics;
pub mod model_queue;
pub mod offline;
pub mod offline_db;
pub mod offline_verify;
pub mod policy;
pub mod policy_report;
pub mod routing;
pub mod self_rating;
pub mod service;
pub mod tenancy;
pub mod validation;
pub mod verifier_fit;

pub use config::RouterConfig;
pub use routing::{Routed, Router};
