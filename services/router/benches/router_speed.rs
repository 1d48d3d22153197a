//! Speed of the router on this machine: the raw model in a tight loop (the
//! floor), the full router path over NATS JetStream, and the routing delay
//! at half the full path's throughput (after routing the prompts not measured, one
//! at a time, so the model budget's band has seen the transformer).
//!
//! `cargo bench -p triage-router --bench router_speed` (needs NATS at
//! TRIAGE_NATS_URL and the model in $TRIAGE_CACHE). Options via env:
//! BENCH_REQUESTS (default 256), TRIAGE_DATA_DIR (default: the repository's data/),
//! BENCH_MAX_TOKENS (the service's `scoring.max_tokens`, default as shipped),
//! BENCH_ONLY_DEV=1 (skip the short and long synthetic cases),
//! BENCH_MODEL_BUDGET_MS (the shipped path's `batching.model_budget`, default as shipped),
//! BENCH_PRECISION (`scoring.precision`: auto as shipped, f32 or int8).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use triage_bus::{NatsConfig, StreamsConfig};
use triage_complexity::dataset::read_rows;
use triage_complexity::scorer::{Scorer, ScorerConfig};
use triage_complexity::{PrecisionSetting, RuleConfig, Truncator};
use triage_protocol::{
    decode, encode, Encoding, Namespace, Request, RoutedRequest, StreamKind, Tier,
};
use triage_router::config::{BatchingConfig, RouterConfig};
use triage_router::metrics::RouterMetrics;
use triage_router::service;

fn transformer_only() -> triage_complexity::static_embedding::FirstStageConfig {
    triage_complexity::static_embedding::FirstStageConfig {
        enabled: false,
        ..Default::default()
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Distinct real prompts cut to exactly `tokens` model tokens.
fn prompts(truncator: &Truncator, n: usize) -> Vec<String> {
    let dir = triage_complexity::dataset::data_dir();
    triage_complexity::dataset::prompts_of_length(&dir, truncator, n).expect("bench prompts")
}

fn raw_model(scorer: &Scorer, texts: &[String], batch: usize) -> f64 {
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| scorer.truncator().truncate(t).unwrap().ids)
        .collect();
    let started = Instant::now();
    for chunk in ids.chunks(batch) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        let v = scorer.model().embed(&refs).unwrap();
        for x in &v {
            std::hint::black_box(scorer.head().probability(x));
        }
    }
    texts.len() as f64 / started.elapsed().as_secs_f64()
}

struct Path {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    ns: Namespace,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    sent: Arc<Mutex<HashMap<String, Instant>>>,
    delays: Arc<Mutex<Vec<f64>>>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
    over_budget: Arc<std::sync::atomic::AtomicUsize>,
    tier2: Arc<std::sync::atomic::AtomicUsize>,
}

/// What the service scores with.
#[derive(Clone, Copy)]
enum Stages {
    /// The transformer for every text.
    TransformerOnly,
    /// The two-stage path without `batching.model_budget` (as shipped
    /// before it was on by default).
    NoBudget,
    /// The shipped two-stage path, with this `batching.model_budget`.
    TwoStage(Duration),
}

async fn start_path(url: &str, batch: usize, stages: Stages) -> Path {
    let two_stage = !matches!(stages, Stages::TransformerOnly);
    let prefix = format!("bench{}", std::process::id());
    let mut config = RouterConfig {
        nats: NatsConfig {
            url: url.into(),
            prefix: prefix.clone(),
            streams: StreamsConfig::small(),
            ..NatsConfig::default()
        },
        scoring: ScorerConfig {
            cache_capacity: 0,
            rules: RuleConfig::none(),
            first_stage: if two_stage {
                Default::default()
            } else {
                transformer_only()
            },
            max_tokens: env_usize("BENCH_MAX_TOKENS", ScorerConfig::default().max_tokens),
            ..bench_scoring()
        },
        ..RouterConfig::default()
    };
    config.batching.max_batch = batch;
    config.batching.model_budget = match stages {
        Stages::TwoStage(budget) => Some(budget),
        // Zero: off.
        Stages::TransformerOnly | Stages::NoBudget => Some(Duration::ZERO),
    };
    let ns = Namespace::new(&prefix).unwrap();
    let client = async_nats::connect(url).await.expect("NATS");
    let js = async_nats::jetstream::new(client.clone());
    let router = service::build_router(&config).await.unwrap();
    let mut registry = Registry::default();
    let metrics = Arc::new(RouterMetrics::register(&mut registry));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(service::serve(
        client.clone(),
        config,
        router,
        metrics,
        shutdown.clone(),
    ));
    // Wait for the streams, then listen on both tier subjects.
    for _ in 0..100 {
        if js
            .get_stream(ns.stream_name(StreamKind::Tier2))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let delays: Arc<Mutex<Vec<f64>>> = Arc::default();
    let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let over_budget = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tier2 = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for tier in [Tier::Small, Tier::Large] {
        let mut sub = client.subscribe(ns.tier(tier)).await.unwrap();
        let (sent, delays, arrived) = (sent.clone(), delays.clone(), arrived.clone());
        let (over_budget, tier2) = (over_budget.clone(), tier2.clone());
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let now = Instant::now();
                let routed: RoutedRequest = decode(Encoding::MsgPack, &m.payload).unwrap();
                if let Some(t0) = sent.lock().await.get(&routed.request.id) {
                    delays
                        .lock()
                        .await
                        .push(now.duration_since(*t0).as_secs_f64() * 1000.0);
                }
                if routed.routing.reasons.iter().any(|r| r == "model_budget") {
                    over_budget.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                if tier == Tier::Large {
                    tier2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Path {
        client,
        js,
        ns,
        shutdown,
        task,
        sent,
        delays,
        arrived,
        over_budget,
        tier2,
    }
}

impl Path {
    async fn send(&self, id: &str, text: &str) {
        let mut r = Request::from_prompt(text);
        r.id = id.into();
        self.sent.lock().await.insert(id.into(), Instant::now());
        self.js
            .publish(self.ns.requests(), encode(Encoding::MsgPack, &r).into())
            .await
            .unwrap();
    }

    async fn wait_for(&self, n: usize) {
        // A lost request fails the run instead of hanging it.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let arrived = self.arrived.load(std::sync::atomic::Ordering::SeqCst);
            if arrived >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {arrived} of {n} requests routed within 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
        for kind in StreamKind::ALL {
            let _ = self.js.delete_stream(self.ns.stream_name(kind)).await;
        }
        let _ = self.js.delete_key_value(self.ns.finished_bucket()).await;
        drop(self.client);
    }
}

/// Full path throughput: everything published at once, until all routed.
async fn full_path(url: &str, texts: &[String], tag: &str, batch: usize, stages: Stages) -> f64 {
    let path = start_path(url, batch, stages).await;
    // Warm-up.
    path.send(&format!("{tag}-warm"), &texts[0]).await;
    path.wait_for(1).await;
    let started = Instant::now();
    for (i, t) in texts.iter().enumerate() {
        path.send(&format!("{tag}-{i}"), t).await;
    }
    path.wait_for(texts.len() + 1).await;
    let rate = texts.len() as f64 / started.elapsed().as_secs_f64();
    path.stop().await;
    rate
}

/// Routing delay at a fixed rate: publish → arrival on the tier subject,
/// after `warm` (or the first text) routed one at a time — a router that
/// has been running, whose model-budget band has seen the transformer.
async fn delay_at_rate(
    url: &str,
    (texts, warm): (&[String], &[String]),
    rate: f64,
    tag: &str,
    batch: usize,
    stages: Stages,
) -> (f64, f64, f64) {
    let path = start_path(url, batch, stages).await;
    let warm = if warm.is_empty() { &texts[..1] } else { warm };
    for (i, t) in warm.iter().enumerate() {
        path.send(&format!("{tag}-warm{i}"), t).await;
        path.wait_for(i + 1).await;
    }
    path.delays.lock().await.clear();
    path.over_budget
        .store(0, std::sync::atomic::Ordering::SeqCst);
    path.tier2.store(0, std::sync::atomic::Ordering::SeqCst);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (i, t) in texts.iter().enumerate() {
        tick.tick().await;
        path.send(&format!("{tag}-{i}"), t).await;
    }
    path.wait_for(texts.len() + warm.len()).await;
    let mut h = Histogram::<u64>::new(3).unwrap();
    for d in path.delays.lock().await.iter() {
        h.record((d * 1000.0) as u64).unwrap();
    }
    let over_budget = path.over_budget.load(std::sync::atomic::Ordering::SeqCst);
    let tier2 = path.tier2.load(std::sync::atomic::Ordering::SeqCst);
    path.stop().await;
    // Rules are off here, so this is the scores' share alone.
    println!("  {tier2} of {} to tier 2", texts.len());
    if over_budget > 0 {
        println!(
            "  {over_budget} of {} decided by the first stage over the model budget",
            texts.len()
        );
    }
    (
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.mean() / 1000.0,
    )
}

/// Two-stage scoring speed and share settled on real dev prompts: the
/// static first stage with a band, against the transformer alone.
fn first_stage(texts: &[String]) {
    let full = Scorer::new(ScorerConfig {
        cache_capacity: 0,
        rules: RuleConfig::none(),
        first_stage: transformer_only(),
        ..bench_scoring()
    })
    .unwrap();
    let rate = |scorer: &Scorer| {
        let prepared: Vec<_> = texts.iter().map(|t| scorer.prepare(t).unwrap()).collect();
        let started = Instant::now();
        let mut settled = 0usize;
        for chunk in prepared.chunks(16) {
            let refs: Vec<_> = chunk.iter().collect();
            for s in scorer
                .embedding_scores(&refs)
                .unwrap()
                .into_iter()
                .flatten()
            {
                settled += usize::from(s.source == triage_complexity::scorer::Source::FirstStage);
            }
        }
        (
            texts.len() as f64 / started.elapsed().as_secs_f64(),
            settled as f64 / texts.len() as f64,
        )
    };
    let (model_rate, _) = rate(&full);
    println!(
        "dev prompts ({}): transformer + head {model_rate:.1}/s",
        texts.len()
    );
    for (lower, upper) in [(0.2, 0.8), (0.3, 0.7), (0.35, 0.65), (0.4, 0.6)] {
        let fs = Scorer::new(ScorerConfig {
            cache_capacity: 0,
            rules: RuleConfig::none(),
            first_stage: triage_complexity::static_embedding::FirstStageConfig {
                lower,
                upper,
                ..Default::default()
            },
            ..bench_scoring()
        })
        .expect("static table (run `triage-router train --first-stage-output ...` once)");
        let (r, settled) = rate(&fs);
        println!(
            "dev prompts: two-stage band [{lower}, {upper}) {r:.1}/s ({:.1}x), {:.0}% settled by the first stage",
            r / model_rate,
            100.0 * settled
        );
    }
}

/// The shipped scorer configuration, in `BENCH_PRECISION` (`auto`, the
/// default, `f32` or `int8`).
fn bench_scoring() -> ScorerConfig {
    let precision = std::env::var("BENCH_PRECISION")
        .map_or(Ok(PrecisionSetting::Auto), |v| v.parse())
        .unwrap_or_else(|e| panic!("BENCH_PRECISION: {e}"));
    ScorerConfig {
        precision,
        ..ScorerConfig::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = triage_bus::default_nats_url();
    let n = env_usize("BENCH_REQUESTS", 256);
    let scorer = Scorer::new(ScorerConfig {
        cache_capacity: 0,
        first_stage: transformer_only(),
        ..bench_scoring()
    })
    .expect("model (run the set-up)");
    println!(
        "router speed, {} cores, {n} prompts per case, precision {:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        scorer.model().precision()
    );
    let only_dev = std::env::var("BENCH_ONLY_DEV").is_ok_and(|v| v == "1");
    let cases = [("short (32 tokens)", 32usize), ("long (302 tokens)", 302)];
    for (label, tokens) in cases.into_iter().filter(|_| !only_dev) {
        let t = Truncator::from_file(
            &triage_complexity::ModelFiles::default_minilm().tokenizer(),
            tokens,
        )
        .unwrap();
        let texts = prompts(&t, n);
        let raw1 = raw_model(&scorer, &texts, 1);
        let raw16 = raw_model(&scorer, &texts, 16);
        println!("{label}: raw model {raw1:.1}/s batch 1, {raw16:.1}/s batch 16");
        let full = full_path(
            &url,
            &texts,
            &format!("full{tokens}"),
            16,
            Stages::TransformerOnly,
        )
        .await;
        // Measured again after the path, so a change in background load
        // shows up as a difference between the two raw numbers.
        let raw16_after = raw_model(&scorer, &texts, 16);
        let floor = raw1.max(raw16).max(raw16_after);
        println!(
            "{label}: full router path over NATS {full:.1}/s ({:.0}% of the raw model's best; raw batch 16 again after: {raw16_after:.1}/s)",
            100.0 * full / floor
        );
        let rate = full / 2.0;
        let (p50, p99, mean) = delay_at_rate(
            &url,
            (&texts[..n.min(200)], &[]),
            rate,
            &format!("delay{tokens}"),
            16,
            Stages::TransformerOnly,
        )
        .await;
        println!("{label}: routing delay at {rate:.1}/s: p50 {p50:.1} ms, p99 {p99:.1} ms, mean {mean:.1} ms");
    }
    let dir = triage_complexity::dataset::data_dir();
    let rows: Vec<String> = read_rows(&dir.join("routing-dev.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.text())
        .collect();
    // The prompts after the measured ones warm the delay runs.
    let (dev, warm) = rows.split_at(n.min(rows.len()));
    let dev = dev.to_vec();
    first_stage(&dev);
    // The shipped configuration (first stage on) on real dev prompts.
    let off = full_path(&url, &dev, "devoff", 16, Stages::TransformerOnly).await;
    let unbudgeted = full_path(&url, &dev, "devon", 16, Stages::NoBudget).await;
    println!("dev prompts, full router path: transformer only {off:.1}/s, with the first stage and no budget {unbudgeted:.1}/s");
    let default = BatchingConfig::default().model_budget.unwrap_or_default();
    let budget = Duration::from_millis(env_usize(
        "BENCH_MODEL_BUDGET_MS",
        default.as_millis() as usize,
    ) as u64);
    let shipped = Stages::TwoStage(budget);
    let on = full_path(&url, &dev, "devbudget", 16, shipped).await;
    println!(
        "dev prompts, full router path as shipped (model_budget {} ms): {on:.1}/s",
        budget.as_millis()
    );
    // Both at the unbudgeted path's half rate, then the shipped one at its own.
    for (label, stages, rate) in [
        (
            "with the first stage and no budget",
            Stages::NoBudget,
            unbudgeted / 2.0,
        ),
        ("as shipped", shipped, unbudgeted / 2.0),
        ("as shipped", shipped, on / 2.0),
    ] {
        let (p50, p99, mean) =
            delay_at_rate(&url, (&dev, warm), rate, "devdelay", 16, stages).await;
        println!(
            "dev prompts, routing delay {label} at {rate:.1}/s: p50 {p50:.1} ms, p99 {p99:.1} ms, mean {mean:.1} ms"
        );
    }
}
