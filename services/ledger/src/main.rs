//! `triage-ledger`: the ledger writer service and its commands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use triage_ledger::config::LedgerConfig;
use triage_ledger::feedback;
use triage_ledger::report::{self, Dimension, Format, ReportSpec};
use triage_ledger::retention;
use triage_ledger::writer::{Writer, WriterMetrics};
use triage_ledger::{Price, Store};
use triage_protocol::Tier;

/// Triage's cost ledger: books every usage event from `llm.usage` exactly
/// once in Postgres at the price in force, and reports cost and savings.
///
/// Configuration comes from defaults, then the TOML file given with
/// --config, then TRIAGE_LEDGER_* environment variables (nested keys with
/// `__`, e.g. TRIAGE_LEDGER_WRITER__BATCH_SIZE=500). TRIAGE_DATABASE_URL and
/// TRIAGE_NATS_URL set the default database and NATS URLs. See
/// services/ledger/README.md for every setting.
#[derive(Debug, Parser)]
#[command(name = "triage-ledger", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(short, long, global = true, env = "TRIAGE_LEDGER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the ledger writer: apply migrations, store configured prices,
    /// then book llm.usage into Postgres until SIGTERM/Ctrl-C.
    Run,
    /// Apply pending schema migrations and store the configured prices,
    /// then exit.
    Migrate,
    /// Print cost, tokens, requests and savings over a period.
    Report(ReportArgs),
    /// List or add prices.
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Delete learning text (outcome_texts, feedback comments) older than
    /// `learning.text_retention` — or --older-than — once, and exit.
    /// `run` does the same every `learning.purge_interval`.
    Purge {
        /// Retention for this run instead of learning.text_retention
        /// (e.g. 7d, 12h; 0s deletes all learning text).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
    /// Print the effective configuration (secrets masked) and exit.
    Config,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// First UTC day included (YYYY-MM-DD). Default: 29 days before --to.
    #[arg(long)]
    from: Option<NaiveDate>,
    /// Last UTC day included (YYYY-MM-DD). Default: today (UTC).
    #[arg(long)]
    to: Option<NaiveDate>,
    /// Report the last N days up to --to (instead of --from).
    #[arg(long, conflicts_with = "from")]
    days: Option<u32>,
    /// Group by these columns, comma-separated, in this order (none: one
    /// total line).
    #[arg(long, value_delimiter = ',', default_value = "day,tier")]
    by: Vec<Dimension>,
    /// Only this tier (1 or 2).
    #[arg(long, value_parser = parse_tier)]
    tier: Option<Tier>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Print the SQL instead of running it (for psql; $1 and $2 are the
    /// first and last day, then the filters in order tier, tenant, model).
    #[arg(long)]
    sql: bool,
}

#[derive(Debug, Subcommand)]
enum PricesCommand {
    /// List every stored price line.
    List,
    /// Add a price line. Prices in force never change: to change a price,
    /// add a line with a later --from.
    Add {
        /// Tier (1 or 2).
        #[arg(long, value_parser = parse_tier)]
        tier: Tier,
        /// Only this model of the tier (default: every model of the tier).
        #[arg(long)]
        model: Option<String>,
        /// USD per 1K prompt tokens, e.g. 0.00015.
        #[arg(long)]
        input: Decimal,
        /// USD per 1K completion tokens.
        #[arg(long)]
        output: Decimal,
        /// When it starts to apply (RFC 3339, e.g. 2025-07-01T00:00:00Z).
        #[arg(long)]
        from: DateTime<Utc>,
    },
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    let n: u8 = s
        .parse()
        .map_err(|_| format!("tier must be 1 or 2, got {s:?}"))?;
    Tier::try_from(n).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = LedgerConfig::load(cli.config.as_deref())?;
    let telemetry = || {
        triage_runtime::telemetry::install("triage-ledger", config.log_format, &config.telemetry)
    };
    match cli.command {
        Command::Run => {
            // Kept until run returns: dropping it flushes the spans not yet sent.
            let _telemetry = telemetry()?;
            run(config).await
        }
        Command::Migrate => {
            let _telemetry = telemetry()?;
            config.check()?;
            let store = config.database.store()?;
            store.migrate().await.context("applying migrations")?;
            store_prices(&store, &config).await?;
            println!("ledger schema is up to date; configured prices stored");
            Ok(())
        }
        Command::Report(args) => report_command(config, args).await,
        Command::Prices(cmd) => prices_command(config, cmd).await,
        Command::Purge { older_than } => {
            let store = config.database.store()?;
            let retention = older_than.unwrap_or(config.learning.text_retention);
            let before = retention::cutoff(Utc::now(), retention);
            let purged = retention::purge(store.pool(), before)
                .await
                .context("purging learning text (has `triage-ledger migrate` been run?)")?;
            println!(
                "purged text recorded before {}: {} outcome texts deleted, {} comments cleared",
                before.to_rfc3339(),
                purged.texts,
                purged.comments
            );
            Ok(())
        }
        Command::Config => {
            println!("{}", triage_runtime::masked(&config));
            Ok(())
        }
    }
}

async fn store_prices(store: &Store, config: &LedgerConfig) -> anyhow::Result<()> {
    for price in &config.prices {
        let (id, inserted) = store.ensure_price(price, "config").await?;
        if inserted {
            tracing::info!(id, tier = %price.tier, model = ?price.model, input_per_1k = %price.input_per_1k,
                output_per_1k = %price.output_per_1k, effective_from = %price.effective_from, "price stored");
        }
    }
    Ok(())
}

async fn run(config: LedgerConfig) -> anyhow::Result<()> {
    tracing::info!(config = %triage_runtime::masked(&config), "triage-ledger starting");
    config.check()?;
    let shutdown = triage_runtime::shutdown_token();

    let store = config.database.store()?;
    // Postgres may be down at start: usage events wait in JetStream, so
    // wait for it rather than crash-looping.
    if !wait_for_schema(&store, &config, &shutdown).await? {
        return Ok(());
    }
    store_prices(&store, &config).await?;

    let client = triage_bus::connect(&config.nats).await?;
    let ns = config.nats.namespace()?;
    let js = async_nats::jetstream::new(client.clone());
    triage_bus::provision(&js, &ns, &config.nats.streams).await?;

    let metrics = WriterMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let feedback_metrics = feedback::FeedbackMetrics::default();
    feedback_metrics.register(&mut registry);
    let purge_metrics = retention::PurgeMetrics::default();
    purge_metrics.register(&mut registry);
    let streams = vec![ns.stream_name(triage_protocol::StreamKind::Usage)];
    let readiness = triage_runtime::Readiness::new()
        .check(
            "nats",
            triage_bus::connect::streams_check(client.clone(), streams),
        )
        .check("postgres", store.ready_check());
    let bound = triage_runtime::metrics::serve_with_readiness(
        config.metrics_addr,
        Arc::new(registry),
        readiness,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("serving metrics on {}", config.metrics_addr))?;
    tracing::info!(metrics = %bound, usage = %ns.usage(), consumer = %ns.consumer(&config.writer.consumer), "booking usage events");

    let ratings = if config.feedback.enabled {
        Some(
            feedback::serve(
                store.clone(),
                client.clone(),
                ns.clone(),
                config.feedback.clone(),
                feedback_metrics,
                shutdown.clone(),
            )
            .await
            .context("subscribing to llm.feedback")?,
        )
    } else {
        None
    };
    let purging = tokio::spawn(retention::run_purge_loop(
        store.pool().clone(),
        config.learning.clone(),
        purge_metrics,
        shutdown.clone(),
    ));
    Writer::new(store, client, ns, config.writer.clone(), metrics)
        .run(shutdown)
        .await?;
    purging.await.context("the retention purge")?;
    if let Some(ratings) = ratings {
        ratings.await.context("the feedback responder")?;
    }
    tracing::info!("triage-ledger stopped");
    Ok(())
}

async fn wait_for_schema(
    store: &Store,
    config: &LedgerConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    if !config.migrate_on_start {
        return Ok(true);
    }
    let mut delay = config.writer.retry_initial;
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(true),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, ?delay, "postgres unavailable at start; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2)
                    .min(config.writer.retry_max)
                    .max(Duration::from_millis(100));
            }
            Err(e) => return Err(e).context("applying migrations"),
        }
    }
}

async fn report_command(config: LedgerConfig, args: ReportArgs) -> anyhow::Result<()> {
    let to = args.to.unwrap_or_else(|| Utc::now().date_naive());
    let from = match (args.from, args.days) {
        (Some(f), _) => f,
        (None, Some(0)) => bail!("--days must be at least 1"),
        (None, Some(d)) => to - chrono::Duration::days(d as i64 - 1),
        (None, None) => to - chrono::Duration::days(29),
    };
    let spec = ReportSpec {
        from,
        to,
        by: args.by,
        tier: args.tier,
        tenant: args.tenant,
        model: args.model,
    };
    spec.validate()?;
    if args.sql {
        println!("{};", spec.sql());
        return Ok(());
    }
    let store = config.database.store()?;
    let report = report::run(store.pool(), &spec)
        .await
        .context("running the report query (has `triage-ledger migrate` been run?)")?;
    print!("{}", report.render(args.format));
    Ok(())
}

async fn prices_command(config: LedgerConfig, cmd: PricesCommand) -> anyhow::Result<()> {
    let store = config.database.store()?;
    match cmd {
        PricesCommand::List => {
            let book = store.prices().await?;
            println!(
                "{:>5}  {:<4}  {:<24}  {:>14}  {:>14}  effective_from",
                "id", "tier", "model", "input_per_1k", "output_per_1k"
            );
            for p in book.prices() {
                println!(
                    "{:>5}  {:<4}  {:<24}  {:>14}  {:>14}  {}",
                    p.id.unwrap_or_default(),
                    p.tier,
                    p.model.as_deref().unwrap_or("(all)"),
                    p.input_per_1k.normalize(),
                    p.output_per_1k.normalize(),
                    p.effective_from.to_rfc3339()
                );
            }
        }
        PricesCommand::Add {
            tier,
            model,
            input,
            output,
            from,
        } => {
            let price = Price {
                id: None,
                tier,
                model,
                input_per_1k: input,
                output_per_1k: output,
                effective_from: from,
            };
            let (id, inserted) = store.ensure_price(&price, "cli").await?;
            if inserted {
                println!("price {id} added");
            } else {
                println!("price {id} already stored with these amounts");
            }
        }
    }
    Ok(())
}
