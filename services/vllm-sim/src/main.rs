//! `triage-vllm-sim`: runs one simulated vLLM instance until SIGTERM/Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use triage_vllm_sim::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let config = cli.load()?;
    tracing::info!(
        config = %serde_json::to_string(&config.masked()).context("printing configuration")?,
        "triage-vllm-sim (a vLLM SIMULATOR, not vLLM) starting"
    );
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let sim = triage_vllm_sim::spawn(config).await?;
    println!("triage-vllm-sim listening on {}", sim.url());
    shutdown_signal().await;
    tracing::info!(?grace, "shutdown requested; draining in-flight requests");
    sim.shutdown(grace).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
