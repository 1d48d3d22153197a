//! `triage-cost-exporter`: Prometheus metrics for Triage's cost and queues.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use triage_cost_exporter::{ExporterConfig, Refresher};

/// Serves Prometheus metrics about Triage's spend (from the ledger's
/// rollups in Postgres) and queues (from NATS JetStream) on
/// `GET /metrics`.
///
/// Configuration comes from defaults, then the TOML file given with
/// --config, then TRIAGE_COST_EXPORTER_* environment variables (nested keys
/// with `__`, e.g. TRIAGE_COST_EXPORTER_REFRESH_INTERVAL=15s).
/// TRIAGE_DATABASE_URL and TRIAGE_NATS_URL set the default URLs. See
/// services/ledger/README.md for the metrics and settings.
#[derive(Debug, Parser)]
#[command(name = "triage-cost-exporter", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(short, long, global = true, env = "TRIAGE_COST_EXPORTER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve /metrics until SIGTERM/Ctrl-C.
    Run,
    /// Take one reading, print the metrics (OpenMetrics text) and exit.
    Once,
    /// Print the effective configuration (secrets masked) and exit.
    Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = ExporterConfig::load(cli.config.as_deref())?;
    if matches!(cli.command, Command::Config) {
        println!("{}", triage_runtime::masked(&config));
        return Ok(());
    }
    // Kept to the end of main: dropping it flushes the spans not yet sent.
    let _telemetry = triage_runtime::telemetry::install(
        "triage-cost-exporter",
        config.log_format,
        &config.telemetry,
    )?;
    config.check().map_err(anyhow::Error::msg)?;
    let store = config.database.store()?;
    let nats = if config.queues {
        let client = triage_bus::connect(&config.nats).await?;
        Some((async_nats::jetstream::new(client), config.nats.namespace()?))
    } else {
        None
    };
    let (registry, readings, metrics) = triage_cost_exporter::registry();
    let refresher = Refresher::new(
        store.pool().clone(),
        nats,
        config.clone(),
        readings,
        metrics,
    );

    match cli.command {
        Command::Once => {
            refresher.refresh_once().await;
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry)?;
            print!("{text}");
        }
        Command::Run => {
            tracing::info!(config = %triage_runtime::masked(&config), "triage-cost-exporter starting");
            let shutdown = triage_runtime::shutdown_token();
            let readiness = triage_runtime::Readiness::new().check("postgres", store.ready_check());
            let bound = triage_runtime::metrics::serve_with_readiness(
                config.metrics_addr,
                Arc::new(registry),
                readiness,
                shutdown.clone(),
            )
            .await
            .with_context(|| format!("serving metrics on {}", config.metrics_addr))?;
            tracing::info!(metrics = %bound, every = ?config.refresh_interval, "serving cost metrics");
            refresher.run(shutdown).await;
            tracing::info!("triage-cost-exporter stopped");
        }
        Command::Config => unreachable!("handled above"),
    }
    Ok(())
}
