//! `triage-router`: the router service and its offline commands.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use triage_complexity::scorer::{Scorer, ScorerConfig};
use triage_complexity::verifier::Verifier;
use triage_complexity::PrecisionSetting;
use triage_router::config::{RouterConfig, CONFIG_HELP, ENV_PREFIX};
use triage_router::heads;
use triage_router::offline::{self, CalibrateOptions, TrainOptions};
use triage_router::offline_db;
use triage_router::offline_verify::{self, TrainVerifierOptions};
use triage_router::self_rating::{LlmSelfRater, SelfRater};
use triage_router::{service, Router};
use triage_runtime::telemetry::{self, LogFormat};

/// triage-router: decides, for every request on `llm.requests`, whether the
/// small tier can serve it, and republishes it to `llm.tier1` or `llm.tier2`
/// with the decision (score, confidence, reasons).
///
/// Scoring: the last user message with the system message, truncated to
/// the first 512 model tokens; rules (code fences, code syntax, math
/// notation, keyword patterns) force tier 2; otherwise all-MiniLM-L6-v2
/// (candle, in-process) and a trained logistic head give P(needs tier 2),
/// optionally blended 0.6/0.4 with an LLM self-rating; tier 2 at or above
/// the threshold.
///
/// Configuration: defaults, then the TOML file given with --config, then
/// environment variables TRIAGE_ROUTER_<FIELD> (nested with `__`, e.g.
/// TRIAGE_ROUTER_SCORING__THRESHOLD=0.5, TRIAGE_ROUTER_NATS__URL=...). Every
/// field is listed below (`--help`) and in services/router/README.md; `run`
/// prints the effective configuration (secrets masked) at start.
#[derive(Debug, Parser)]
#[command(name = "triage-router", version, about, long_about, after_long_help = CONFIG_HELP)]
struct Cli {
    /// TOML configuration file with any RouterConfig fields.
    #[arg(long, short, env = "TRIAGE_ROUTER_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Log format: `text` for people, `json` for log pipelines (level via
    /// RUST_LOG); overrides the `log_format` key (TRIAGE_ROUTER_LOG_FORMAT).
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: a durable pull consumer on llm.requests shared by
    /// all replicas; validates, scores in micro-batches, publishes to
    /// llm.tier1/llm.tier2 and acks only after JetStream confirmed the
    /// publish. SIGTERM drains in-flight messages.
    #[command(after_long_help = CONFIG_HELP)]
    Run,

    /// Fit the embedding head from a labelled JSONL (fields `prompt` or
    /// `messages`, `label_tier`, `small_ok`, `large_ok`), choosing the L2
    /// penalty by cross-validated APGR, and write the weights file (JSON).
    /// Deterministic: the same input gives the same file. With --from-db,
    /// also (or only) on the ledger's judged traffic, comparing the
    /// candidate with the live head on the most recent judged slice.
    Train(TrainArgs),

    /// Fit the verifier of tier 1's answers from a labelled JSONL with
    /// `small_response` (P(small_ok is false) from the answer's form and the
    /// MiniLM embedding of its last 512 characters), choosing the L2 penalty
    /// by cross-validated ROC AUC and the combined policy's thresholds
    /// (router score straight to tier 2, verify score to escalate) by
    /// out-of-fold PGR at --target-cost; writes the verifier file (JSON).
    TrainVerifier {
        /// Labelled JSONL with `small_response`, e.g. data/routing-train.jsonl.
        #[arg(long)]
        input: PathBuf,
        /// Verifier file to write (the shipped one is
        /// services/complexity/heads/verifier.json).
        #[arg(long)]
        output: PathBuf,
        /// Answer-tail vectors written by `export_embeddings --answers`,
        /// used instead of running the model (checked against the
        /// truncation).
        #[arg(long)]
        answer_vectors: Option<PathBuf>,
        /// Cross-validation folds (stratified by label).
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Seed of the folds.
        #[arg(long, default_value_t = 20261124)]
        seed: u64,
        /// L2 penalties to try, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0.01, 0.03, 0.1, 0.3, 1.0])]
        l2: Vec<f64>,
        /// Answer form only: no embedding (no model pass at all).
        #[arg(long)]
        no_embedding: bool,
        /// Without the answer checks (arithmetic, chosen option, final
        /// number) and the question's prompt-form features: the layout of
        /// verifiers trained before them.
        #[arg(long)]
        no_checks: bool,
        /// Cost relative to all tier 2 the thresholds are chosen for.
        #[arg(long, default_value_t = 0.5)]
        target_cost: f64,
        /// Tier-2 price over tier-1 price.
        #[arg(long, default_value_t = 8.0)]
        price_ratio: f64,
        /// Train on the first N answered rows only.
        #[arg(long)]
        limit: Option<usize>,
        /// Fit on label_tier = 2 (tier 1 wrong and tier 2 right: what an
        /// escalation can rescue) instead of small_ok = false.
        #[arg(long)]
        rescuable: bool,
        /// One head for every question, not one per kind (multiple choice,
        /// numeric, open) beside the general one.
        #[arg(long)]
        one_head: bool,
        /// Write each answered row's out-of-fold verify score, the router
        /// score the thresholds were chosen with and the question's kind
        /// here (JSONL: id, verify, router, kind), for analysis.
        #[arg(long)]
        scores_out: Option<PathBuf>,
    },

    /// Score a JSONL of requests offline (fields as in routing-dev.jsonl:
    /// `id`, `prompt` or `messages`; `tier` and `tenant` are honoured like
    /// the service does) with the same code and configuration as the
    /// service; writes one JSON line per input with `id`, `score`, `tier`,
    /// `confidence`, `reasons` (or `error`), and prints the tier split.
    /// A line with `small_response` (tier 1's answer) also gets
    /// `verify_score` (0–1, higher = more likely poor) and `verify_tier`
    /// (what the combined policy does with that answer: 1 keep it, 2 not
    /// release it, because the verify score is at or above
    /// `verify.threshold` or the router score at or above
    /// `verify.hard_threshold`; with `scoring.share.target` set, what the
    /// router sent to tier 2 instead of the hard threshold, and with
    /// `verify.share.target` the share of the answers verified so far, in
    /// input order, as live).
    Score {
        /// Requests, one JSON object a line.
        #[arg(long)]
        input: PathBuf,
        /// Decisions, one JSON object a line.
        #[arg(long)]
        output: PathBuf,
        /// Requests per model pass.
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },

    /// Measure the configured score on labelled data: ROC AUC, APGR,
    /// CPT(50%), CPT(80%) for the head alone, with rules and with the
    /// self-rating, and the threshold sweep (tier-2 share, accuracy, cost
    /// relative to all tier 2, PGR). Chooses the threshold with the best
    /// accuracy, or the one for --target-share.
    Calibrate {
        /// Labelled JSONL.
        #[arg(long)]
        input: PathBuf,
        /// Choose the threshold that sends this share (0–1) to tier 2.
        #[arg(long)]
        target_share: Option<f64>,
        /// Score with heads cross-validated on this file (K folds) instead
        /// of the configured head: honest numbers on training data.
        #[arg(long)]
        cv_folds: Option<usize>,
        /// Seed of folds and of --limit's sample.
        #[arg(long, default_value_t = 20261124)]
        seed: u64,
        /// Use a seeded sample of this many rows (the self-rating is slow on CPU).
        #[arg(long)]
        limit: Option<usize>,
        /// Tier-2 price over tier-1 price, for the relative cost column.
        #[arg(long, default_value_t = 8.0)]
        price_ratio: f64,
        /// Turn the rules off (same as TRIAGE_ROUTER_SCORING__RULES__* = false).
        #[arg(long)]
        no_rules: bool,
        /// Turn the self-rating on (needs self_rating.backend.base_url).
        #[arg(long)]
        self_rating: bool,
        /// Write per-row scores (embedding, llm, rule, final, verify) as JSONL here.
        #[arg(long)]
        scores_out: Option<PathBuf>,
        /// MiniLM vectors of the input (see `train --vectors`).
        #[arg(long)]
        vectors: Option<PathBuf>,
        /// Answer-tail vectors of the input (see `train-verifier
        /// --answer-vectors`); rows with `small_response` also get the
        /// pre-hoc / verify-only / combined quality-at-cost report.
        #[arg(long)]
        answer_vectors: Option<PathBuf>,
    },
    /// Publish a head file (as `train` writes it) to the heads bucket:
    /// every running router checks it against its model and swaps it in
    /// between batches, no restart (see follow_heads). Prints its version.
    Promote {
        /// The head file (JSON).
        #[arg(long)]
        head: PathBuf,
    },
    /// Put back the head promoted before the current one (a new revision
    /// every router follows).
    Rollback,
}

#[derive(Debug, clap::Args)]
struct TrainArgs {
    /// Labelled JSONL, e.g. data/routing-train.jsonl (exactly one without
    /// --from-db; any number with it, trained on besides the database).
    #[arg(long)]
    input: Vec<PathBuf>,
    /// Weights file to write (the shipped one is
    /// services/complexity/heads/minilm-head.json).
    #[arg(long)]
    output: PathBuf,
    /// Cross-validation folds (stratified by label).
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Cross-validation repeats with different fold seeds, averaged.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seed of the folds.
    #[arg(long, default_value_t = 20261124)]
    seed: u64,
    /// L2 penalties to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.01, 0.03, 0.1, 0.3, 1.0])]
    l2: Vec<f64>,
    /// Also train the static-embedding first stage and write its head
    /// here (the static token table is distilled into $TRIAGE_CACHE
    /// first if absent); prints its quality and speed against the full
    /// model.
    #[arg(long)]
    first_stage_output: Option<PathBuf>,
    /// MiniLM vectors of the input written by the `export_embeddings`
    /// example, used instead of running the model (checked against the
    /// ids and the truncation).
    #[arg(long, conflicts_with = "from_db")]
    vectors: Option<PathBuf>,
    /// Train the transformer head on the first N rows only (the first
    /// stage always uses every row).
    #[arg(long)]
    limit: Option<usize>,
    /// Leave the prompt-form features out of both heads (the heads of
    /// before, on vectors alone).
    #[arg(long)]
    no_form: bool,
    /// Train on the ledger's judged outcomes that have text (the shadow
    /// service with learning.store_text), holding out the most recently
    /// judged --holdout share, and print candidate against live on it.
    #[arg(long)]
    from_db: bool,
    /// The ledger's database (with --from-db).
    #[arg(
        long,
        env = "TRIAGE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/triage"
    )]
    database_url: String,
    /// Only outcomes judged since then: RFC 3339 (2026-11-01T00:00:00Z)
    /// or a duration ago (30d, 12h). Default: all.
    #[arg(long, value_parser = parse_since, requires = "from_db")]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Share of the database rows, the most recent, held out for the
    /// comparison and never trained on.
    #[arg(long, default_value_t = 0.2, requires = "from_db")]
    holdout: f64,
    /// With --from-db: also fit the verifier on the same rows and write it
    /// here (as `train-verifier` does).
    #[arg(long, requires = "from_db")]
    verifier_output: Option<PathBuf>,
}

/// `--since`: a time, or a duration before now.
fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration like 30d"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok(chrono::Utc::now() - ago)
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<RouterConfig> {
    let config: RouterConfig = triage_runtime::load(path, ENV_PREFIX)?;
    config.validate()?;
    Ok(config)
}

async fn heads_bucket(config: &RouterConfig) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    let client = triage_bus::connect(&config.nats).await?;
    let js = async_nats::jetstream::new(client);
    Ok(heads::bucket(&js, &config.nats.namespace()?, config.nats.streams.replicas).await?)
}

fn rater(config: &RouterConfig) -> anyhow::Result<Option<Arc<dyn SelfRater>>> {
    if !config.self_rating.enabled {
        return Ok(None);
    }
    let r = LlmSelfRater::new(&config.self_rating).context("self-rating client")?;
    Ok(Some(Arc::new(r)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = load_config(cli.config.as_deref())?;
    let format = cli.log_format.unwrap_or(config.log_format);
    // Kept to the end of main: dropping it flushes the spans not yet sent.
    let _telemetry = telemetry::install("triage-router", format, &config.telemetry)?;
    match cli.command {
        Command::Run => service::run(config).await,
        Command::Promote { head } => {
            let json =
                std::fs::read(&head).with_context(|| format!("cannot read {}", head.display()))?;
            let store = heads_bucket(&config).await?;
            let (version, revision) = heads::promote(&store, &json)
                .await
                .with_context(|| format!("cannot promote {}", head.display()))?;
            println!("promoted {version} (revision {revision}); routers following the bucket switch at their next batch");
            Ok(())
        }
        Command::Rollback => {
            let store = heads_bucket(&config).await?;
            match heads::rollback(&store).await? {
                Some(heads::RolledBack::Head(version, revision)) => {
                    println!("rolled back to {version} (revision {revision})");
                    Ok(())
                }
                Some(heads::RolledBack::Configured) => {
                    println!("rolled back to each router's configured head (the key was deleted)");
                    Ok(())
                }
                None => anyhow::bail!("nothing to roll back: no promoted head is in force"),
            }
        }
        Command::Train(args) => train_command(&config, args).await,
        Command::TrainVerifier {
            input,
            output,
            answer_vectors,
            folds,
            seed,
            l2,
            no_embedding,
            no_checks,
            target_cost,
            price_ratio,
            limit,
            rescuable,
            one_head,
            scores_out,
        } => {
            let scorer = Scorer::new(fitting_scoring(&config.scoring))?;
            let opts = TrainVerifierOptions {
                input,
                output,
                answer_vectors,
                folds,
                seed,
                l2_grid: l2,
                embedding: !no_embedding,
                checks: !no_checks,
                target_cost,
                price_ratio,
                limit,
                rescuable,
                kind_heads: !one_head,
                scores_out,
            };
            tokio::task::spawn_blocking(move || offline_verify::train_verifier(&scorer, &opts))
                .await?
        }
        Command::Score {
            input,
            output,
            batch,
        } => {
            let verifier = Verifier::from_config(&config.verify)?;
            let scorer = Arc::new(Scorer::new(config.scoring.clone())?);
            let router = Router::new(
                Ok(scorer),
                rater(&config)?,
                config.self_rating.max_concurrency,
                config.batching.model_threads,
                config.policy.clone(),
                std::time::Duration::from_secs(600),
            )
            .with_max_batch(batch);
            offline::score(
                &router,
                &verifier,
                &config.verify.share,
                &input,
                &output,
                batch,
            )
            .await
        }
        Command::Calibrate {
            input,
            target_share,
            cv_folds,
            seed,
            limit,
            price_ratio,
            no_rules,
            self_rating,
            scores_out,
            vectors,
            answer_vectors,
        } => {
            if no_rules {
                config.scoring.rules = triage_complexity::RuleConfig::none();
            }
            if self_rating {
                config.self_rating.enabled = true;
            }
            let scorer = Arc::new(Scorer::new(fitting_scoring(&config.scoring))?);
            let rater = rater(&config)?;
            let opts = CalibrateOptions {
                input,
                target_share,
                cv_folds,
                seed,
                limit,
                price_ratio,
                scores_out,
                vectors,
                answer_vectors,
                verify: config.verify.clone(),
            };
            offline::calibrate(
                &scorer,
                rater.as_ref(),
                config.self_rating.max_concurrency,
                &opts,
            )
            .await
        }
    }
}

/// The scorer configuration of the commands that fit and evaluate heads and
/// thresholds: no score cache (every text is scored), and f32 whatever
/// `scoring.precision` says. The shipped heads and thresholds were fit on
/// f32 vectors, and a verifier's answer vectors must match the worker's,
/// which are f32; int8's effect on decisions is measured separately
/// (`tests/int8_equivalence.rs`).
fn fitting_scoring(scoring: &ScorerConfig) -> ScorerConfig {
    ScorerConfig {
        cache_capacity: 0,
        precision: PrecisionSetting::F32,
        ..scoring.clone()
    }
}

async fn train_command(config: &RouterConfig, args: TrainArgs) -> anyhow::Result<()> {
    if !args.from_db && args.input.len() != 1 {
        anyhow::bail!("train needs exactly one --input (or --from-db, with any number)");
    }
    if !(0.0..1.0).contains(&args.holdout) || args.holdout == 0.0 {
        anyhow::bail!(
            "--holdout must be above 0 and below 1, got {}",
            args.holdout
        );
    }
    let mut scoring = fitting_scoring(&config.scoring);
    // The head being trained must not need the one it replaces; the
    // verifier needs the first stage for the router's score.
    scoring.first_stage.enabled = args.verifier_output.is_some();
    let scorer = Scorer::new(scoring)?;
    let train = TrainOptions {
        input: args.input.first().cloned().unwrap_or_default(),
        output: args.output,
        folds: args.folds,
        repeats: args.repeats,
        seed: args.seed,
        l2_grid: args.l2.clone(),
        first_stage: args.first_stage_output,
        vectors: args.vectors,
        limit: args.limit,
        form: !args.no_form,
    };
    if !args.from_db {
        return tokio::task::spawn_blocking(move || offline::train(&scorer, &train)).await?;
    }
    let verifier = args.verifier_output.map(|output| TrainVerifierOptions {
        input: PathBuf::new(),
        output,
        answer_vectors: None,
        folds: args.folds,
        seed: args.seed,
        l2_grid: args.l2,
        embedding: true,
        checks: true,
        target_cost: 0.5,
        price_ratio: 8.0,
        limit: None,
        rescuable: false,
        kind_heads: true,
        scores_out: None,
    });
    let opts = offline_db::FromDbOptions {
        database_url: args.database_url,
        since: args.since,
        holdout: args.holdout,
        inputs: args.input,
        train,
        verifier,
        live: live_head(config).await,
    };
    offline_db::train_from_db(scorer, opts).await
}

/// The live head to compare against: the promoted one when the heads
/// bucket answers, else the configured file, else the shipped head.
async fn live_head(config: &RouterConfig) -> Option<Vec<u8>> {
    // Read only: an absent bucket is not created for a comparison.
    let promoted = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let client = triage_bus::connect(&config.nats).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let bucket = config.nats.namespace().ok()?.heads_bucket();
        let store = js.get_key_value(bucket).await.ok()?;
        store.get(heads::KEY).await.ok().flatten()
    })
    .await
    .ok()
    .flatten();
    if let Some(json) = promoted {
        println!("live head: the promoted one (heads bucket)");
        return Some(json.to_vec());
    }
    if let Some(path) = &config.scoring.head_path {
        println!("live head: {} (scoring.head_path)", path.display());
        return std::fs::read(path).ok();
    }
    println!("live head: the shipped one");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting_is_in_f32_without_a_cache_whatever_the_config_says() {
        for precision in [PrecisionSetting::Auto, PrecisionSetting::Int8] {
            let configured = ScorerConfig {
                precision,
                threshold: 0.5,
                ..ScorerConfig::default()
            };
            let fitting = fitting_scoring(&configured);
            assert_eq!(fitting.precision, PrecisionSetting::F32);
            assert_eq!(fitting.cache_capacity, 0);
            assert_eq!(fitting.threshold, 0.5, "the rest is kept");
        }
    }
}
