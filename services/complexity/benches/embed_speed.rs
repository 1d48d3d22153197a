//! Embedding speed of all-MiniLM-L6-v2 on this machine: prompts/s at 32,
//! 128 and 512 tokens, batch 1 and 32, then on dev prompts (cut to 512
//! tokens, batches of 32) for the transformer path and for the shipped
//! two-stage scorer. Tokenising is inside the timed part, as it is in
//! sentence-transformers' `encode`; the model is loaded and warmed first.
//!
//! `scripts/bench-router-speed.sh` runs it beside sentence-transformers on
//! the same prompts and prints the ratios. Alone:
//!
//! ```sh
//! cargo bench --bench embed_speed -- [--prompts-out FILE] [--results FILE] [--profile]
//! ```
//!
//! `--prompts-out` writes the prompts of every case (JSON lines), for the
//! other side to run; `--results` writes the rates (JSON lines);
//! `--profile` prints where a pass spends its time instead (the encoder's
//! TRACE spans, summed). Env: `BENCH_PROMPTS` prompts per case (64),
//! `BENCH_DEV` dev prompts (384), `BENCH_PRECISION` the encoder's
//! precision (`auto`, the router's default, `f32` or `int8`), `TRIAGE_DATA_DIR`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use triage_complexity::dataset::{data_dir, prompts_of_length, read_rows};
use triage_complexity::scorer::{Scorer, ScorerConfig};
use triage_complexity::static_embedding::FirstStageConfig;
use triage_complexity::{ModelFiles, PrecisionSetting, RuleConfig, Truncator};

const LENGTHS: [usize; 3] = [32, 128, 512];
const BATCHES: [usize; 2] = [1, 32];
const DEV_BATCH: usize = 32;
const DEV_TOKENS: usize = 512;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn arg_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn precision() -> PrecisionSetting {
    std::env::var("BENCH_PRECISION")
        .map_or(Ok(PrecisionSetting::Auto), |v| v.parse())
        .unwrap_or_else(|e| panic!("BENCH_PRECISION: {e}"))
}

fn scorer(first_stage: bool) -> Scorer {
    Scorer::new(ScorerConfig {
        precision: precision(),
        cache_capacity: 0,
        rules: RuleConfig::none(),
        max_tokens: DEV_TOKENS,
        first_stage: FirstStageConfig {
            enabled: first_stage,
            ..Default::default()
        },
        ..ScorerConfig::default()
    })
    .expect("model and static table (run scripts/setup.sh)")
}

/// Prompts/s embedding `texts` (tokenising included) in batches.
fn embed_rate(scorer: &Scorer, truncator: &Truncator, texts: &[String], batch: usize) -> f64 {
    let run = |texts: &[String]| {
        for chunk in texts.chunks(batch) {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .map(|t| truncator.truncate(t).expect("tokenize").ids)
                .collect();
            let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
            std::hint::black_box(scorer.model().embed(&refs).expect("embed"));
        }
    };
    run(&texts[..batch.min(texts.len())]);
    let started = Instant::now();
    run(texts);
    texts.len() as f64 / started.elapsed().as_secs_f64()
}

/// Prompts/s through the scorer's embedding stage (first stage, then one
/// model pass for the unsettled), and the share the first stage settled.
fn scorer_rate(scorer: &Scorer, texts: &[String]) -> (f64, f64) {
    let run = |texts: &[String]| {
        let mut settled = 0usize;
        for chunk in texts.chunks(DEV_BATCH) {
            let prepared: Vec<_> = chunk
                .iter()
                .map(|t| scorer.prepare(t).expect("prepare"))
                .collect();
            let refs: Vec<_> = prepared.iter().collect();
            for s in scorer
                .embedding_scores(&refs)
                .expect("score")
                .into_iter()
                .flatten()
            {
                settled += usize::from(s.source == triage_complexity::scorer::Source::FirstStage);
            }
        }
        settled
    };
    run(&texts[..DEV_BATCH.min(texts.len())]);
    let started = Instant::now();
    let settled = run(texts);
    let rate = texts.len() as f64 / started.elapsed().as_secs_f64();
    (rate, settled as f64 / texts.len() as f64)
}

struct Case {
    name: String,
    tokens: usize,
    texts: Vec<String>,
}

fn cases() -> Vec<Case> {
    let n = env_usize("BENCH_PROMPTS", 64);
    let dir = data_dir();
    let tokenizer = ModelFiles::default_minilm().tokenizer();
    let mut out = Vec::new();
    for tokens in LENGTHS {
        let t = Truncator::from_file(&tokenizer, tokens).expect("tokenizer");
        let texts = prompts_of_length(&dir, &t, n).expect("prompts");
        out.push(Case {
            name: format!("{tokens} tokens"),
            tokens,
            texts,
        });
    }
    let dev = read_rows(&dir.join("routing-dev.jsonl")).expect("routing-dev.jsonl");
    out.push(Case {
        name: "dev prompts".into(),
        tokens: DEV_TOKENS,
        texts: dev
            .iter()
            .take(env_usize("BENCH_DEV", 384))
            .map(|r| r.text())
            .collect(),
    });
    out
}

fn write_prompts(path: &str, cases: &[Case]) {
    let mut f = std::fs::File::create(path).expect("prompts file");
    for c in cases {
        let line = serde_json::json!({"case": c.name, "tokens": c.tokens, "texts": c.texts});
        writeln!(f, "{line}").expect("write prompts");
    }
}

fn main() {
    let cases = cases();
    if let Some(path) = arg_value("--prompts-out") {
        write_prompts(&path, &cases);
    }
    if std::env::args().any(|a| a == "--profile") {
        profile(&cases);
        return;
    }
    let mut results = Vec::new();
    let mut record = |case: &str, batch: usize, rate: f64, note: String| {
        println!("{case:<12} batch {batch:>2}: {rate:>7.1} prompts/s {note}");
        results.push(serde_json::json!({"case": case, "batch": batch, "rate": rate, "note": note}));
    };
    let transformer = scorer(false);
    println!(
        "embed_speed: {} cores, rayon threads {}, precision {:?} ({:?})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rayon::current_num_threads(),
        precision(),
        precision().resolve()
    );
    for c in &cases {
        let t = Truncator::from_file(&ModelFiles::default_minilm().tokenizer(), c.tokens)
            .expect("tokenizer");
        let batches: &[usize] = if c.name == "dev prompts" {
            &[DEV_BATCH]
        } else {
            &BATCHES
        };
        for &b in batches {
            record(
                &c.name,
                b,
                embed_rate(&transformer, &t, &c.texts, b),
                String::new(),
            );
        }
    }
    let dev = &cases.last().expect("dev case").texts;
    let (rate, settled) = scorer_rate(&scorer(true), dev);
    record(
        "dev shipped",
        DEV_BATCH,
        rate,
        format!(
            "(two-stage, {:.0}% settled by the first stage)",
            100.0 * settled
        ),
    );
    if let Some(path) = arg_value("--results") {
        let mut f = std::fs::File::create(path).expect("results file");
        for r in results {
            writeln!(f, "{r}").expect("write results");
        }
    }
}

/// Time inside each span name, summed over every entry.
#[derive(Default, Clone)]
struct SpanTimes(Arc<Mutex<HashMap<&'static str, Duration>>>);

struct Entered(Instant);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanTimes {
    fn on_new_span(&self, _: &Attributes<'_>, _: &Id, _: Context<'_, S>) {}

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Entered(Instant::now()));
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(Entered(t)) = span.extensions_mut().remove::<Entered>() {
                *self.0.lock().unwrap().entry(span.name()).or_default() += t.elapsed();
            }
        }
    }
}

/// Prints the share of a pass in each span at 128 and 512 tokens, batch 32.
fn profile(cases: &[Case]) {
    let times = SpanTimes::default();
    let subscriber = tracing_subscriber::registry().with(times.clone());
    tracing::subscriber::set_global_default(subscriber).expect("subscriber");
    let transformer = scorer(false);
    for c in cases.iter().filter(|c| c.tokens == 128 || c.tokens == 512) {
        let t = Truncator::from_file(&ModelFiles::default_minilm().tokenizer(), c.tokens)
            .expect("tokenizer");
        embed_rate(&transformer, &t, &c.texts[..32.min(c.texts.len())], 32);
        times.0.lock().unwrap().clear();
        let started = Instant::now();
        let rate = embed_rate(&transformer, &t, &c.texts, 32);
        let wall = started.elapsed().as_secs_f64();
        println!(
            "{}, batch 32: {rate:.1} prompts/s; time in each span:",
            c.name
        );
        let mut rows: Vec<_> = times.0.lock().unwrap().clone().into_iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        for (name, d) in rows {
            println!("  {name:<16} {:>5.1}%", 100.0 * d.as_secs_f64() / wall);
        }
    }
}
