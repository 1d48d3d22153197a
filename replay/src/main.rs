//! `triage-replay`: the benchmark and evaluation tool.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use triage_bus::{NatsConfig, TriageClient};
use triage_replay::drive::{self, Direct, Load, RunSpec, Via};
use triage_replay::report::{self, Report};
use triage_replay::schedule::Arrivals;
use triage_replay::{cost, dataset, html, record, score};

#[derive(Parser)]
#[command(
    name = "triage-replay",
    version,
    about = "Replays labelled or recorded traffic through Triage and reports tier split, routing accuracy, latency and cost against an all-tier-2 baseline."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send a dataset through the running pipeline and write the report.
    Run(RunArgs),
    /// Capture requests arriving on llm.requests into a trace for `run --mode trace`.
    Record(RecordArgs),
    /// Score a dataset with the router's own scoring (no generation, no
    /// NATS) and sweep the threshold: tier-2 share, routing accuracy, PGR
    /// and cost relative to all tier 2 per threshold.
    Score(ScoreArgs),
}

#[derive(Args)]
struct ScoreArgs {
    /// JSONL of prompts: id, prompt or messages, optional label_tier, small_ok, large_ok, tenant, tier.
    #[arg(long)]
    input: PathBuf,
    /// Use a deterministic sample of this many rows (default: all).
    #[arg(long)]
    sample: Option<usize>,
    /// Seed for sampling.
    #[arg(long, default_value_t = 20261125)]
    seed: u64,
    /// Also evaluate (and mark) these thresholds, comma-separated; the
    /// router's configured threshold and the shipped default are always
    /// marked.
    #[arg(long, value_delimiter = ',')]
    threshold: Vec<f64>,
    /// Tier-2 price over tier-1 price, for the relative cost column.
    #[arg(long, default_value_t = 8.0)]
    price_ratio: f64,
    /// The router's TOML configuration (as `triage-router --config`);
    /// TRIAGE_ROUTER_* variables apply on top, as for the router.
    #[arg(long, env = "TRIAGE_ROUTER_CONFIG")]
    config: Option<PathBuf>,
    /// Requests per model pass (as `triage-router score --batch`).
    #[arg(long, default_value_t = score::DEFAULT_BATCH)]
    batch: usize,
    /// Directory for score-sweep.json and scores.jsonl (default: terminal only).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct Target {
    /// NATS server URL (the default comes from $TRIAGE_NATS_URL, else the local server).
    #[arg(long, default_value_t = triage_bus::default_nats_url())]
    nats_url: String,
    /// Subject prefix of the deployment (empty: none).
    #[arg(long, env = "TRIAGE_PREFIX", default_value = "")]
    prefix: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Requests at a fixed or Poisson rate regardless of answers.
    Open,
    /// A fixed number in flight.
    Closed,
    /// The input's recorded timestamps.
    Trace,
}

#[derive(Args)]
struct RunArgs {
    /// JSONL of requests: id, prompt or messages, optional label_tier, small_ok, large_ok, max_tokens, tenant, timestamp_ms.
    #[arg(long)]
    input: PathBuf,
    /// Use a deterministic sample of this many rows (default: all).
    #[arg(long)]
    sample: Option<usize>,
    /// Seed for sampling and Poisson arrivals.
    #[arg(long, default_value_t = 20261125)]
    seed: u64,
    /// How load is applied.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Open loop: requests per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Open loop: exponential inter-arrival times instead of even spacing.
    #[arg(long)]
    poisson: bool,
    /// Open/closed loop: requests to send (rows are reused when larger than the input). Default: one per row.
    #[arg(long)]
    count: Option<usize>,
    /// Open loop: send for this long instead of --count (e.g. 30s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Closed loop: requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Trace mode: play this many times faster than recorded.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Also run every request forced to tier 2, and report both runs side by side.
    #[arg(long)]
    baseline: bool,
    /// Bypass Triage: send each request straight to this OpenAI-compatible
    /// server (POST URL/v1/chat/completions, streamed) on the same
    /// schedule, to measure the time to first token without Triage. No
    /// NATS, no routing, no ledger.
    #[arg(long, value_name = "URL")]
    direct: Option<String>,
    /// With --direct: the `model` to ask for (default: the first of GET URL/v1/models).
    #[arg(long, requires = "direct")]
    direct_model: Option<String>,
    /// max_tokens for rows that do not set it.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Bound on one answer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    timeout: Duration,
    /// Print this many answers as they finish.
    #[arg(long, default_value_t = 0)]
    show_answers: usize,
    /// Ledger database for cost per request (cost is omitted when unreachable).
    #[arg(
        long,
        env = "TRIAGE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/triage"
    )]
    database_url: String,
    /// How long to wait for the ledger to book the run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    ledger_wait: Duration,
    /// Tier-2 price over tier-1 price, for the sweep's relative cost.
    #[arg(long, default_value_t = 8.0)]
    price_ratio: f64,
    /// Directory for report.json, report.html and outcomes.jsonl.
    #[arg(long, default_value = "replay-out")]
    out: PathBuf,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct RecordArgs {
    /// Trace file to write (JSONL).
    #[arg(long)]
    output: PathBuf,
    /// Stop after this many requests.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this long (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    target: Target,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The report is the output; library chatter only when asked for.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    triage_runtime::telemetry::init("triage-replay", triage_runtime::telemetry::LogFormat::Text);
    let cancel = tokio_util::sync::CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("\ninterrupted: finishing the report with what completed");
            cancel.cancel();
        });
    }
    match cli.command {
        Command::Run(args) => run(args, cancel).await,
        Command::Score(args) => score_command(args).await,
        Command::Record(args) => {
            let (client, ns) = connect(&args.target).await?;
            let (n, bad) = record::record(
                &client,
                &ns,
                &args.output,
                args.count,
                args.duration,
                &cancel,
            )
            .await?;
            println!(
                "recorded {n} requests to {} ({bad} undecodable skipped)",
                args.output.display()
            );
            Ok(())
        }
    }
}

async fn connect(
    target: &Target,
) -> anyhow::Result<(async_nats::Client, triage_protocol::Namespace)> {
    let cfg = NatsConfig {
        url: target.nats_url.clone(),
        prefix: target.prefix.clone(),
        name: Some("triage-replay".into()),
        ..NatsConfig::default()
    };
    let ns = cfg.namespace()?;
    let client = triage_bus::connect(&cfg).await?;
    Ok((client, ns))
}

/// The first message of each error code in a run, so the report says what
/// went wrong and not only how often.
fn error_notes(run: &str, outcomes: &[triage_replay::outcome::Outcome]) -> Vec<String> {
    let mut first: std::collections::BTreeMap<&str, (usize, Option<&str>)> = Default::default();
    for o in outcomes {
        if let Some(code) = &o.error {
            let e = first.entry(code).or_insert((0, None));
            e.0 += 1;
            if e.1.is_none() {
                e.1 = o.error_message.as_deref();
            }
        }
    }
    first
        .into_iter()
        .map(|(code, (n, message))| match message {
            Some(m) => format!("{run}: {n} x {code}, e.g. {m}"),
            None => format!("{run}: {n} x {code}"),
        })
        .collect()
}

async fn score_command(args: ScoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.price_ratio > 0.0,
        "--price-ratio must be positive, got {}",
        args.price_ratio
    );
    if let Some(t) = args.threshold.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        anyhow::bail!("--threshold must be within [0, 1], got {t}");
    }
    let rows = dataset::load(&args.input)?;
    let rows = match args.sample {
        Some(n) => dataset::sample(rows, n, args.seed),
        None => rows,
    };
    let config = score::load_router_config(args.config.as_deref())?;
    eprintln!("loading the router's scorer ...");
    let router = score::build_router(&config)?;
    eprintln!("scoring {} rows ...", rows.len());
    let (scored, seconds) = score::score_timed(&router, &rows, args.batch).await;
    let report = score::build_report(
        &args.input.display().to_string(),
        args.sample.map(|n| (n, args.seed)),
        &scored,
        router
            .scorer()
            .map_or(config.scoring.threshold, |s| s.blend().threshold),
        config.self_rating.enabled,
        &score::SweepOptions {
            thresholds: args.threshold.clone(),
            price_ratio: args.price_ratio,
        },
        seconds,
    );
    print!("{}", score::render_text(&report));
    if let Some(dir) = &args.out {
        score::write_out(dir, &report, &scored)?;
        println!(
            "
wrote {} and {}",
            dir.join("score-sweep.json").display(),
            dir.join("scores.jsonl").display()
        );
    }
    Ok(())
}

async fn run(args: RunArgs, cancel: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    if args.direct.is_some() && args.baseline {
        anyhow::bail!(
            "--direct and --baseline cannot be combined: --direct bypasses Triage (no routing, \
             no ledger), so there is no all-tier-2 run to compare with; run the pipeline with \
             --baseline and the server with --direct separately"
        );
    }
    let rows = dataset::load(&args.input)?;
    let rows = match args.sample {
        Some(n) => dataset::sample(rows, n, args.seed),
        None => rows,
    };
    let count = match (args.count, args.duration) {
        (Some(c), _) => c,
        (None, Some(d)) => (d.as_secs_f64() * args.rate).ceil() as usize,
        (None, None) => rows.len(),
    };
    let load = match args.mode {
        Mode::Open => Load::Open {
            arrivals: if args.poisson {
                Arrivals::Poisson {
                    rate: args.rate,
                    seed: args.seed,
                }
            } else {
                Arrivals::Fixed { rate: args.rate }
            },
            count,
        },
        Mode::Closed => Load::Closed {
            concurrency: args.concurrency,
            count,
        },
        Mode::Trace => Load::Trace { speed: args.speed },
    };
    anyhow::ensure!(
        args.rate > 0.0 && args.speed > 0.0,
        "--rate and --speed must be positive"
    );
    let mut notes = Vec::new();
    let (via, target) = match &args.direct {
        Some(url) => {
            let (direct, note) = Direct::new(url, args.direct_model.clone(), args.timeout)
                .await
                .with_context(|| format!("--direct {url}"))?;
            notes.extend(note);
            notes.push(format!(
                "{}: no routing, no ledger, so no tier split and no cost",
                direct.describe()
            ));
            let target = direct.describe();
            (Via::Direct(direct), target)
        }
        None => {
            let (client, ns) = connect(&args.target).await?;
            (
                Via::Triage(TriageClient::new(client, ns)),
                format!("{} prefix {:?}", args.target.nats_url, args.target.prefix),
            )
        }
    };
    let tag = format!("{:x}", triage_protocol::now_ms());
    let mut specs = vec![RunSpec {
        name: if args.direct.is_some() {
            "direct".into()
        } else {
            "routed".into()
        },
        force_tier: None,
        load,
        timeout: args.timeout,
        max_tokens: args.max_tokens,
        run_tag: format!("r{tag}"),
        show_answers: args.show_answers,
    }];
    if args.baseline {
        specs.push(RunSpec {
            name: "baseline".into(),
            force_tier: Some(2),
            run_tag: format!("b{tag}"),
            show_answers: 0,
            ..specs[0].clone()
        });
    }
    let mut runs = Vec::new();
    for spec in &specs {
        if cancel.is_cancelled() {
            break;
        }
        let bar = ProgressBar::new(load.count(rows.len()) as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .expect("static template"),
        );
        bar.set_prefix(spec.name.clone());
        let (mut outcomes, wall) = drive::run(&via, &rows, spec, &cancel, &bar).await;
        bar.finish();
        notes.extend(error_notes(&spec.name, &outcomes));
        if matches!(via, Via::Triage(_)) {
            match cost::fill_from_ledger(&args.database_url, &mut outcomes, args.ledger_wait).await
            {
                Ok(found) => {
                    let answered = outcomes.iter().filter(|o| o.ok()).count();
                    if found < answered {
                        notes.push(format!(
                        "{}: the ledger booked {found} of {answered} answered requests within {:?}",
                        spec.name, args.ledger_wait
                    ));
                    }
                }
                Err(e) => notes.push(format!("{}: no cost: ledger unreachable ({e})", spec.name)),
            }
        }
        runs.push((spec.name.clone(), outcomes, wall));
    }
    let report = Report {
        dataset: args.input.display().to_string(),
        mode: load.describe(),
        target,
        generated_at_ms: triage_protocol::now_ms(),
        runs: runs
            .iter()
            .map(|(n, o, w)| report::summarise_run(n, o, *w))
            .collect(),
        sweep: runs
            .first()
            .map(|(_, o, _)| report::sweep(o, args.price_ratio))
            .unwrap_or_default(),
        notes,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let json_path = args.out.join("report.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    let mut lines = String::new();
    for (name, outcomes, _) in &runs {
        for o in outcomes {
            let mut v = serde_json::to_value(o)?;
            v["run"] = name.clone().into();
            lines.push_str(&v.to_string());
            lines.push('\n');
        }
    }
    std::fs::write(args.out.join("outcomes.jsonl"), lines)?;
    let html_path = args.out.join("report.html");
    let by_run: Vec<(String, Vec<_>)> = runs.into_iter().map(|(n, o, _)| (n, o)).collect();
    std::fs::write(&html_path, html::render(&report, &by_run))?;
    print!("{}", report::render_text(&report));
    println!(
        "\nreport: {}\n        {}",
        html_path.display(),
        json_path.display()
    );
    Ok(())
}
