//! `triage-gateway`: the OpenAI-compatible HTTP front door.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use triage_gateway::config::{GatewayConfig, CONFIG_HELP};
use triage_gateway::Gateway;

/// triage-gateway: serves the OpenAI API (POST /v1/chat/completions,
/// POST /v1/completions, GET /v1/models) over Triage. Each request is
/// published on `llm.requests` and answered from its replies, streamed as
/// server-sent events or whole. Models: `triage-auto` (the router decides),
/// `triage-tier1` and `triage-tier2` (forced), and configured aliases.
///
/// Configuration: defaults, then the TOML file given with --config, then
/// environment variables TRIAGE_GATEWAY_<KEY> (nested with `__`, e.g.
/// TRIAGE_GATEWAY_NATS__URL=...). `run` prints the effective configuration
/// (secrets masked) at start. See services/gateway/README.md.
#[derive(Debug, Parser)]
#[command(name = "triage-gateway", version, about, long_about, after_long_help = CONFIG_HELP)]
struct Cli {
    /// TOML configuration file with any of the keys below. (No environment
    /// variable: every TRIAGE_GATEWAY_* variable is read as a setting, and an
    /// unknown one is refused, so that typos do not pass silently.)
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API until SIGTERM/Ctrl-C, then let open answers finish.
    Run,
    /// Print the effective configuration (secrets masked) and exit.
    Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = GatewayConfig::load(cli.config.as_deref())?;
    if matches!(cli.command, Command::Config) {
        println!("{}", triage_runtime::masked(&config));
        return Ok(());
    }
    triage_runtime::telemetry::init("triage-gateway", config.log_format);
    tracing::info!(config = %triage_runtime::masked(&config), "triage-gateway starting");
    let shutdown = triage_runtime::shutdown_token();
    let mut registry = Registry::default();
    let metrics_addr = config.metrics_addr;
    let gateway = Gateway::connect(config, &mut registry).await?;
    let bound = triage_runtime::metrics::serve(metrics_addr, Arc::new(registry), shutdown.clone())
        .await
        .with_context(|| format!("serving metrics on {metrics_addr}"))?;
    let running = gateway.serve(shutdown).await?;
    tracing::info!(api = %running.addr, metrics = %bound, "serving the OpenAI API");
    running.task.await??;
    tracing::info!("triage-gateway stopped");
    Ok(())
}
