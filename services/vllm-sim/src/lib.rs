//! # triage-vllm-sim — a SIMULATOR of vLLM's OpenAI-compatible server
//!
//! This is not vLLM and runs no model. It speaks the same HTTP API as `vllm serve`
//! (`POST /v1/chat/completions` streamed and not, with logprobs; `GET /v1/models`,
//! `GET /health`, `GET /metrics` with vLLM's metric names) so that Triage's tier workers,
//! router and tests can run without a GPU, with controllable latency, queueing, context limit
//! and fault injection. Generated text is deterministic pseudo-text (see [`text`]); token
//! counts use the documented approximation of `triage-token-estimate`, the one the tier
//! worker uses when a backend reports no usage.
//!
//! Tests start it in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use triage_vllm_sim::{spawn, FaultConfig, SimConfig};
//! let sim = spawn(SimConfig::instant("tier1-sim", 8)).await?;
//! let url = sim.url().to_owned(); // http://127.0.0.1:<free port>
//! sim.set_faults(FaultConfig::always_error(503))?; // now every request fails
//! sim.set_faults(FaultConfig::none())?;            // healthy again
//! sim.shutdown(std::time::Duration::from_secs(5)).await;
//! # let _ = url; Ok(()) }
//! ```

pub mod api;
pub mod cli;
pub mod config;
pub mod faults;
pub mod metrics;
pub mod rng;
pub mod server;
pub mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, FaultConfig, FaultKind, ScriptedReply, SimConfig};
pub use server::{SimStats, Simulator};

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address tried.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A running simulator. Dropping it kills the server (open streams are cut).
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    url: String,
    sim: Arc<Simulator>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Starts a simulator on `config.host:config.port` (port 0 = any free port) and returns
/// once it accepts connections.
pub async fn spawn(config: SimConfig) -> Result<SimHandle, SpawnError> {
    config.validate()?;
    let addr = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SpawnError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SpawnError::Bind { addr, source })?;
    let sim = Arc::new(Simulator::new(config));
    let shutdown = CancellationToken::new();
    let app = server::router(sim.clone());
    let signal = shutdown.clone();
    let task = tokio::spawn(async move {
        // Like uvicorn under vLLM: no Nagle delay on small SSE writes (else ~40 ms stalls
        // against delayed ACKs).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(async move { signal.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "simulator server failed");
        }
    });
    tracing::info!(%addr, model = %sim.config.model, "vLLM simulator listening");
    Ok(SimHandle {
        url: format!("http://{addr}"),
        addr,
        sim,
        shutdown,
        task: Some(task),
    })
}

impl SimHandle {
    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash, no `/v1`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it was started with (faults as at start).
    pub fn config(&self) -> &SimConfig {
        &self.sim.config
    }

    /// Replaces the fault settings from the next request on.
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), ConfigError> {
        faults.validate()?;
        self.sim.faults.set(faults);
        Ok(())
    }

    /// Current fault settings (with what is left of the script).
    pub fn faults(&self) -> FaultConfig {
        self.sim.faults.get()
    }

    /// Counters: requests received, completed, faults injected, running, waiting.
    pub fn stats(&self) -> SimStats {
        self.sim.stats()
    }

    /// Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.sim.metrics.encode()
    }

    /// Graceful shutdown: stop accepting, let in-flight requests finish for up to `grace`,
    /// then cut whatever is left.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                tracing::warn!(
                    ?grace,
                    "in-flight requests outlived the grace period; cutting"
                );
                self.sim.kill.cancel();
                if tokio::time::timeout(Duration::from_secs(1), &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                }
            }
        }
    }

    /// Simulates a crash: every open stream is cut mid-way, hangs end, the listener closes.
    pub fn kill(&mut self) {
        self.sim.kill.cancel();
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.kill();
    }
}
