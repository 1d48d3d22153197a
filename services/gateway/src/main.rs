//! `triage-gateway`: the OpenAI-compatible HTTP front door.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use triage_gateway::config::{GatewayConfig, CONFIG_HELP};
use triage_gateway::keys::{KeyStore, NewKey};
use triage_gateway::models::Catalogue;
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
    /// Manage API keys (in Postgres: `database.url`).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a key; prints it once (only a hash is stored).
    Create {
        /// The tenant every request made with it is booked to.
        #[arg(long)]
        tenant: String,
        /// Requests per minute (per gateway replica).
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute: prompt estimate + max_tokens (per replica).
        #[arg(long)]
        tpm: Option<u32>,
        /// The tenant's daily spend limit in USD (from the ledger).
        #[arg(long)]
        budget_usd_day: Option<rust_decimal::Decimal>,
        /// The models it may use, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// List keys (never their secrets).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by its id (the 12 hex digits after `trk_`).
    Revoke {
        /// The key id.
        key_id: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = GatewayConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            println!("{}", triage_runtime::masked(&config));
            return Ok(());
        }
        Command::Keys(keys) => return manage_keys(&config, keys).await,
        Command::Run => {}
    }
    // Kept to the end of main: dropping it flushes the spans not yet sent.
    let _telemetry =
        triage_runtime::telemetry::install("triage-gateway", config.log_format, &config.telemetry)?;
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

async fn manage_keys(config: &GatewayConfig, command: KeysCommand) -> anyhow::Result<()> {
    let store = config.database.store()?;
    store.migrate().await.context("migrating the database")?;
    let keys = KeyStore::new(store.pool().clone());
    match command {
        KeysCommand::Create {
            tenant,
            rpm,
            tpm,
            budget_usd_day,
            models,
        } => {
            // Tenants travel as subject tokens (llm.requests.<tenant>, keys).
            triage_protocol::Namespace::default()
                .tenant_requests(&tenant)
                .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
            for m in &models {
                anyhow::ensure!(
                    Catalogue::new(&config.aliases)?.resolve(m).is_some(),
                    "--models: {m:?} is not a model of this gateway (GET /v1/models lists them)"
                );
            }
            let new = NewKey {
                tenant,
                rpm,
                tpm,
                budget_usd_day,
                models,
            };
            let (record, key) = keys.create(&new).await.context("creating the key")?;
            println!("{key}");
            eprintln!(
                "key {} for tenant {}: shown once, only its hash is stored",
                record.key_id, record.tenant
            );
        }
        KeysCommand::List { tenant } => {
            println!("key_id        tenant            rpm     tpm     budget_usd_day  models  created  revoked");
            for k in keys.list(tenant.as_deref()).await? {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                println!(
                    "{:<13} {:<17} {:<7} {:<7} {:<15} {:<7} {} {}",
                    k.key_id,
                    k.tenant,
                    opt(k.rpm.map(|n| n.to_string())),
                    opt(k.tpm.map(|n| n.to_string())),
                    opt(k.budget_usd_day.map(|n| n.to_string())),
                    opt(k.models.map(|m| m.join(","))),
                    k.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    opt(k
                        .revoked_at
                        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())),
                );
            }
        }
        KeysCommand::Revoke { key_id } => {
            anyhow::ensure!(
                keys.revoke(&key_id).await?,
                "no active key {key_id} (see `triage-gateway keys list`)"
            );
            println!("revoked {key_id}");
        }
    }
    Ok(())
}
