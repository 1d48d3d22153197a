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
    /// and cost relative to all tier 2 per threshold; for rows with tier
    /// 1's recorded answer (`small_response`), also the pre-hoc,
    /// verify-only and combined policies' quality at cost.
    Score(ScoreArgs),
    /// Make outcome labels for a tier pair: answer each prompt on both
    /// tiers (temperature 0, logprobs requested), grade each answer against
    /// the row's gold `answer` (option letter, final number, `answer_regex`
    /// or text) or with --judge, and append rows in the routing-dev.jsonl
    /// format (small_ok, large_ok, label_tier, both responses, tier 1's
    /// token confidence) to --out. Resumes: ids already in --out are skipped.
    Outcomes(OutcomesArgs),
    /// The chaos suite: start a 3-node NATS cluster, two simulators and the
    /// services, replay open loop while SIGKILLing and restarting routers,
    /// workers, ledger writers and a NATS node at seeded random times, then
    /// check every request got exactly one final reply and the ledger booked
    /// every attempt exactly once. Exits 1 when a target fails.
    Chaos(ChaosArgs),
}

#[derive(Args)]
struct OutcomesArgs {
    /// JSONL of prompts (routing-dev.jsonl format; `answer`, `answer_regex` used).
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL (appended to; rows already there are skipped).
    #[arg(long)]
    out: PathBuf,
    /// Tier 1's OpenAI-compatible server.
    #[arg(long)]
    tier1: String,
    /// Tier 1's model (default: the first of its /v1/models).
    #[arg(long)]
    tier1_model: Option<String>,
    /// Tier 2's OpenAI-compatible server.
    #[arg(long)]
    tier2: String,
    /// Tier 2's model (default: the first of its /v1/models).
    #[arg(long)]
    tier2_model: Option<String>,
    /// A judge for rows without a gold answer (single-answer 1-10 grade, good at 7).
    /// Without it such rows are left out.
    #[arg(long)]
    judge: Option<String>,
    /// The judge's model (default: the first of its /v1/models).
    #[arg(long)]
    judge_model: Option<String>,
    /// Completion token limit per answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// A system message before each prompt (e.g. how to state the answer).
    #[arg(long)]
    system: Option<String>,
    /// Only the first N gradable rows.
    #[arg(long)]
    limit: Option<usize>,
    /// Prompts answered at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

#[derive(Args)]
struct ChaosArgs {
    /// JSONL of prompts (reused when fewer than --requests).
    #[arg(long, default_value_os_t = triage_complexity::dataset::data_dir().join("routing-dev.jsonl"))]
    input: PathBuf,
    /// Requests to send.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Mean rate (Poisson arrivals), requests/s.
    #[arg(long, default_value_t = 25.0)]
    rate: f64,
    /// Seed of the fault times and targets and of the arrivals.
    #[arg(long, default_value_t = 14)]
    seed: u64,
    /// max_tokens of every request.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Router replicas.
    #[arg(long, default_value_t = 2)]
    routers: usize,
    /// Workers per tier.
    #[arg(long, default_value_t = 2)]
    workers_per_tier: usize,
    /// Ledger writers.
    #[arg(long, default_value_t = 1)]
    ledgers: usize,
    /// SIGKILLs per class of target (routers, tier-1 workers, tier-2
    /// workers, ledger writers, NATS nodes).
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Shortest time a killed process stays down.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pause_min: Duration,
    /// Longest time a killed process stays down.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "4s")]
    pause_max: Duration,
    /// Restart Postgres once mid-run with this shell command (e.g.
    /// `pg_ctlcluster 15 main restart`); not given: Postgres is left alone.
    #[arg(long, value_name = "COMMAND")]
    postgres_restart: Option<String>,
    /// Ack wait of every consumer: how soon a killed process's work is
    /// redelivered. Keep it above the cluster's failover time (durable
    /// writes retry for about 9 s), or a slow write loses its message.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    ack_wait: Duration,
    /// After the last request, how long to wait for final replies.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    drain: Duration,
    /// Where the service binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Logs and the cluster's store (default: a new directory under the system temp dir).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// A Postgres URL that may create and drop the run's private database.
    #[arg(
        long,
        env = "TRIAGE_TEST_ADMIN_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    admin_database_url: String,
    /// Keep the database and run directory afterwards.
    #[arg(long)]
    keep: bool,
    /// Directory for chaos.json and chaos.md.
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
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
    // Its requests' client spans are exported when OTEL_EXPORTER_OTLP_ENDPOINT
    // is set, so a replay's traces start at the client; kept to the end of main.
    let _telemetry = triage_runtime::telemetry::install(
        "triage-replay",
        triage_runtime::telemetry::LogFormat::Text,
        &triage_runtime::telemetry::TelemetryConfig::default(),
    )?;
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
        Command::Outcomes(a) => {
            triage_replay::labelling::run(&triage_replay::labelling::LabelOptions {
                input: a.input,
                out: a.out,
                tier1: (a.tier1, a.tier1_model),
                tier2: (a.tier2, a.tier2_model),
                judge: a.judge.map(|j| (j, a.judge_model)),
                max_tokens: a.max_tokens,
                system: a.system,
                limit: a.limit,
                concurrency: a.concurrency,
            })
            .await
        }
        Command::Chaos(args) => chaos_command(args, cancel).await,
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

async fn chaos_command(
    args: ChaosArgs,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use triage_replay::chaos;
    anyhow::ensure!(
        args.rate > 0.0,
        "--rate must be positive, got {}",
        args.rate
    );
    anyhow::ensure!(args.requests > 0, "--requests must be at least 1");
    anyhow::ensure!(
        args.pause_min <= args.pause_max,
        "--pause-min must not exceed --pause-max"
    );
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("this binary's directory")?
            .to_path_buf(),
    };
    let run_dir = args.run_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("triage-chaos-{}", std::process::id()))
    });
    let spec = chaos::ChaosSpec {
        seed: args.seed,
        rows: dataset::load(&args.input)?,
        requests: args.requests,
        rate: args.rate,
        max_tokens: args.max_tokens,
        routers: args.routers,
        workers_per_tier: args.workers_per_tier,
        ledgers: args.ledgers,
        kills: args.kills,
        pause: (args.pause_min, args.pause_max),
        postgres_restart: args.postgres_restart,
        ack_wait: args.ack_wait,
        drain: args.drain,
        bin_dir,
        run_dir: run_dir.clone(),
        admin_database_url: args.admin_database_url,
        keep: args.keep,
    };
    println!("chaos: logs in {}", run_dir.join("logs").display());
    // Interrupted: dropping the run kills every process it started.
    let report = tokio::select! {
        r = chaos::run(&spec) => r?,
        _ = cancel.cancelled() => anyhow::bail!("interrupted; every process it started was killed"),
    };
    let table = chaos::table(&report);
    println!("\n{table}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("chaos.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("chaos.md"), &table)?;
    println!("wrote {}", args.out.join("chaos.json").display());
    if !report.passed() {
        anyhow::bail!("chaos targets failed: {}", report.failures.join(", "));
    }
    Ok(())
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
    let mut report = score::build_report(
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
    report.policies = score::policies(&router, &config.verify, &scored, args.price_ratio)?;
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
