//! `triage-vllm-sim`: runs one simulated vLLM instance until SIGTERM/Ctrl-C.

use std::time::Duration;

use clap::Parser;
use triage_runtime::telemetry;
use triage_vllm_sim::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init("triage-vllm-sim", cli.log_format);
    let config = cli.load()?;
    tracing::info!(
        config = %triage_runtime::masked(&config),
        "triage-vllm-sim (a vLLM SIMULATOR, not vLLM) starting"
    );
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let shutdown = triage_runtime::shutdown_token();
    let sim = triage_vllm_sim::spawn(config).await?;
    println!("triage-vllm-sim listening on {}", sim.url());
    shutdown.cancelled().await;
    tracing::info!(?grace, "draining in-flight requests");
    sim.shutdown(grace).await;
    tracing::info!("stopped");
    Ok(())
}
