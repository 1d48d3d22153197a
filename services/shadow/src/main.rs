//! `triage-shadow`: shadow answers and their judge.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use triage_protocol::StreamKind;
use triage_shadow::config::CONFIG_HELP;
use triage_shadow::job::Shadower;
use triage_shadow::metrics::ShadowMetrics;
use triage_shadow::service::{self, Settler};
use triage_shadow::ShadowConfig;

/// Triage's shadow service: takes the jobs the tier workers publish on
/// `llm.shadow` for a sampled share of answered requests, has the other
/// tier answer each in the background (never sent to the client), has a
/// judge model grade both answers (1-10, good at 7 or more), and books
/// every call on `llm.usage` (statuses `shadow` and `judge`); the ledger
/// stores the grades in `outcomes` (source `judge`).
///
/// Configuration comes from defaults, then the TOML file given with
/// --config, then TRIAGE_SHADOW_* environment variables (nested keys with
/// `__`); TRIAGE_NATS_URL sets the default NATS URL. The effective
/// configuration is printed (secrets masked) at start. Every key is listed
/// below; services/shadow/README.md explains them.
#[derive(Debug, Parser)]
#[command(name = "triage-shadow", version, after_long_help = CONFIG_HELP)]
struct Cli {
    /// TOML configuration file.
    #[arg(short, long, global = true, env = "TRIAGE_SHADOW_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take shadow jobs until SIGTERM/Ctrl-C, then stop fetching, let jobs
    /// in hand finish within `shutdown_grace` and leave the rest for
    /// redelivery.
    Run,
    /// Print the effective configuration (secrets masked) and exit.
    Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = ShadowConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run => {
            // Kept until run returns: dropping it flushes the spans not yet sent.
            let _telemetry = triage_runtime::telemetry::install(
                "triage-shadow",
                config.log_format,
                &config.telemetry,
            )?;
            run(config).await
        }
        Command::Config => {
            println!("{}", triage_runtime::masked(&config));
            Ok(())
        }
    }
}

async fn run(config: ShadowConfig) -> anyhow::Result<()> {
    tracing::info!(config = %triage_runtime::masked(&config), "triage-shadow starting");
    config.check()?;
    let shutdown = triage_runtime::shutdown_token();
    let client = triage_bus::connect(&config.nats).await?;
    let ns = config.nats.namespace()?;
    let js = async_nats::jetstream::new(client.clone());
    triage_bus::provision(&js, &ns, &config.nats.streams).await?;
    let consumer = triage_bus::consumer::durable(
        &js,
        &ns,
        StreamKind::Shadow,
        &config.consumer.name,
        &config.consumer.settings(),
    )
    .await
    .context("creating the llm.shadow consumer")?;

    let mut registry = Registry::default();
    let metrics = ShadowMetrics::register(&mut registry);
    let streams = [StreamKind::Shadow, StreamKind::Usage]
        .map(|k| ns.stream_name(k))
        .to_vec();
    let readiness = triage_runtime::Readiness::new().check(
        "nats",
        triage_bus::connect::streams_check(client.clone(), streams),
    );
    let bound = triage_runtime::metrics::serve_with_readiness(
        config.metrics_addr,
        Arc::new(registry),
        readiness,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("serving metrics on {}", config.metrics_addr))?;
    tracing::info!(metrics = %bound, jobs = %ns.shadow(), judge = %config.judge_endpoint().url, "taking shadow jobs");

    let shadower = Shadower::new(&config, js.clone(), ns.clone(), metrics.clone())?;
    let settler = Arc::new(Settler {
        shadower,
        js,
        ns,
        consumer: config.consumer.clone(),
        metrics,
    });
    service::run(settler, consumer, config.shutdown_grace, shutdown).await;
    client.flush().await.ok();
    tracing::info!("triage-shadow stopped");
    Ok(())
}
