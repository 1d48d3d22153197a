//! What every Triage service runs on: typed configuration loaded from file
//! and environment and printed with secrets masked ([`config`], [`masking`]), structured
//! logs with OpenTelemetry trace context and OTLP span export ([`telemetry`], [`otlp`]), the Prometheus
//! endpoint with liveness and readiness ([`metrics`], [`readiness`]) and graceful shutdown on SIGTERM ([`shutdown`]).

pub mod config;
pub mod masking;
pub mod metrics;
pub mod otlp;
pub mod readiness;
pub mod shutdown;
pub mod telemetry;

pub use config::{load, masked, ConfigError};
pub use masking::mask_url;
pub use readiness::Readiness;
pub use shutdown::shutdown_token;
