//! `triage-worker`: the tier worker service and the batch command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use triage_protocol::{Encoding, Tier};
use triage_worker::batch::{self, BatchOptions, SubmitTo};
use triage_worker::config::CONFIG_HELP;
use triage_worker::{Worker, WorkerConfig};

/// Triage's tier worker: takes routed requests from `llm.tier1` or
/// `llm.tier2` (a durable JetStream consumer shared by all replicas of the
/// tier), streams the answer from vLLM-compatible backends to the client's
/// reply subject, books usage on `llm.usage`, retries, escalates tier 1 to
/// tier 2 when it cannot answer, and never loses an accepted request.
///
/// Configuration comes from defaults, then the TOML file given with
/// --config, then TRIAGE_WORKER_* environment variables (nested keys with
/// `__`); TRIAGE_NATS_URL sets the default NATS URL. The effective
/// configuration is printed (secrets masked) at start. Every key is listed
/// below; services/worker/README.md explains the behaviour behind them.
#[derive(Debug, Parser)]
#[command(name = "triage-worker", version, after_long_help = CONFIG_HELP)]
struct Cli {
    /// TOML configuration file.
    #[arg(short, long, global = true, env = "TRIAGE_WORKER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one tier until SIGTERM/Ctrl-C, then stop fetching, let
    /// in-flight requests finish within `shutdown_grace` and hand back
    /// (nak) the rest.
    Run {
        /// The tier to serve: 1 (small model) or 2 (large model).
        #[arg(long, env = "TRIAGE_WORKER_TIER", value_parser = parse_tier)]
        tier: Tier,
    },
    /// Submit a JSONL file of requests with `keep_result`, collect their
    /// results from the results stream and write them as JSONL. Resumable:
    /// run the same command again after an interruption.
    Batch(BatchArgs),
    /// Print the effective configuration (secrets masked) and exit.
    Config,
}

#[derive(Debug, Args)]
struct BatchArgs {
    /// Requests, one JSON object per line: `id` (required, the idempotency
    /// key), `prompt` or `messages`, and optionally `max_tokens`,
    /// `temperature`, `tenant`, `metadata`, `deadline_ms`, `tier`.
    #[arg(long, short)]
    input: PathBuf,
    /// Results, one JSON object per line: the final reply of each request
    /// (`"type": "completion"` with `text` and `usage`, or `"type": "error"`
    /// with `code` and `message`). Appended to when it exists: ids already
    /// in it are skipped.
    #[arg(long, short)]
    output: PathBuf,
    /// Where to submit: `requests` (through the router), or `tier1`/`tier2`
    /// directly as routed requests (bypassing the router).
    #[arg(long, value_enum, default_value_t = SubmitTo::Requests)]
    subject: SubmitTo,
    /// Requests submitted and not yet answered, at most.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Stop waiting after this long (e.g. `30m`); a later run resumes.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    timeout: Duration,
    /// How often unanswered requests are looked up in the results stream.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Submit JSON instead of MessagePack.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    let n: u8 = s
        .trim()
        .parse()
        .map_err(|_| format!("tier must be 1 or 2, got {s:?}"))?;
    Tier::try_from(n).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = WorkerConfig::load(cli.config.as_deref()).context("loading the configuration")?;
    // Kept to the end of main: dropping it flushes the spans not yet sent.
    let _telemetry =
        triage_runtime::telemetry::install("triage-worker", config.log_format, &config.telemetry)?;
    match cli.command {
        Command::Config => {
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{}", triage_runtime::masked(&config));
            config.validate()?;
            Ok(())
        }
        Command::Run { tier } => run(config, tier).await,
        Command::Batch(args) => run_batch(config, args).await,
    }
}

async fn run(config: WorkerConfig, tier: Tier) -> anyhow::Result<()> {
    tracing::info!(
        tier = tier.number(),
        "effective configuration:\n{}",
        triage_runtime::masked(&config)
    );
    let shutdown = triage_runtime::shutdown_token();
    let mut registry = Registry::default();
    let metrics_addr = config.metrics_addr;
    let worker = Worker::connect(config, tier, &mut registry)
        .await
        .context("starting the worker")?;
    let metrics_stop = CancellationToken::new();
    let bound = triage_runtime::metrics::serve_with_readiness(
        metrics_addr,
        Arc::new(registry),
        worker.readiness(),
        metrics_stop.clone(),
    )
    .await
    .with_context(|| format!("serving metrics on {metrics_addr}"))?;
    tracing::info!(%bound, "metrics at /metrics");
    let result = worker.run(shutdown).await;
    metrics_stop.cancel();
    result?;
    Ok(())
}

async fn run_batch(config: WorkerConfig, args: BatchArgs) -> anyhow::Result<()> {
    let client = triage_bus::connect(&config.nats).await?;
    let js = async_nats::jetstream::new(client.clone());
    let ns = config.nats.namespace()?;
    triage_bus::provision(&js, &ns, &config.nats.streams).await?;
    let options = BatchOptions {
        input: args.input,
        output: args.output,
        submit_to: args.subject,
        window: args.window,
        timeout: args.timeout,
        poll_interval: args.poll_interval,
        encoding: if args.json {
            Encoding::Json
        } else {
            Encoding::MsgPack
        },
        progress: !args.no_progress,
    };
    let shutdown = triage_runtime::shutdown_token();
    let report = batch::run(&client, &ns, &options, &shutdown).await?;
    client.flush().await.ok();
    eprintln!(
        "batch: {} requests, {} already written, {} recovered from the results stream, {} submitted, \
         {} completed, {} errors, {} missing",
        report.total,
        report.already_written,
        report.recovered,
        report.submitted,
        report.completed,
        report.errors,
        report.missing.len()
    );
    if !report.missing.is_empty() {
        bail!(
            "{} requests have no result yet (first: {}); run the same command again to resume",
            report.missing.len(),
            report.missing[0]
        );
    }
    Ok(())
}
