//! The worker's own cost, against the simulator with zero latency:
//!
//! - time to first token calling the simulator directly vs through the
//!   worker (client publish on `llm.tier1` → first chunk on the inbox, and
//!   the worker's own receipt → first token), p50/p99 with hdrhistogram;
//! - requests per second of one worker at 100 output tokens;
//! - NATS messages per request with and without coalescing;
//! - the same with progress records every 25 tokens (five writes and a
//!   delete per request) to show what they cost; by default (first token,
//!   then 500 ms / 256 tokens) these short requests write one.
//!
//! Needs the local NATS (TRIAGE_NATS_URL). Run:
//! `cargo bench -p triage-worker --bench worker_overhead` (add `-- --quick`
//! for a short run). Simulator, worker and client share this process.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use hdrhistogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use triage_backend::{BackendClient, BackendConfig, ChatMessage, ChatRequest, StreamEvent};
use triage_bus::StreamsConfig;
use triage_protocol::{
    decode, encode, headers, Encoding, Namespace, Reply, Request, RoutedRequest, RoutingDecision,
    StreamKind, Tier,
};
use triage_vllm_sim::SimConfig;
use triage_worker::config::{BackendSpec, WorkerConfig};
use triage_worker::Worker;

fn nats_url() -> String {
    triage_bus::default_nats_url()
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

struct Bench {
    client: async_nats::Client,
    js: jetstream::Context,
    ns: Namespace,
    prefix: String,
}

impl Bench {
    async fn new() -> Self {
        let prefix = format!("bench{}", std::process::id());
        let ns = Namespace::new(prefix.clone()).unwrap();
        let client = async_nats::connect(nats_url()).await.expect("NATS running");
        let js = jetstream::new(client.clone());
        let b = Self {
            client,
            js,
            ns,
            prefix,
        };
        b.teardown().await;
        triage_bus::provision(&b.js, &b.ns, &streams())
            .await
            .unwrap();
        b
    }

    async fn teardown(&self) {
        for kind in StreamKind::ALL {
            let _ = self.js.delete_stream(self.ns.stream_name(kind)).await;
        }
        for bucket in [self.ns.finished_bucket(), self.ns.progress_bucket()] {
            let _ = self.js.delete_stream(format!("KV_{bucket}")).await;
        }
    }

    fn config(&self, url: &str, coalesce: Duration) -> WorkerConfig {
        let mut c = WorkerConfig::default();
        c.nats.url = nats_url();
        c.nats.prefix = self.prefix.clone();
        c.nats.streams = streams();
        c.backend_urls = String::new();
        c.backends = vec![BackendSpec::new(url)];
        c.coalesce.interval = coalesce;
        c.consumer.max_in_flight = 64;
        c.prewarm.idle_after = Duration::ZERO;
        c.metrics_addr = "127.0.0.1:0".parse().unwrap();
        c
    }

    async fn publish(
        &self,
        id: String,
        prompt: &str,
        inbox: &str,
    ) -> jetstream::context::PublishAckFuture {
        let request = Request {
            id,
            max_tokens: Some(100),
            reply_to: Some(inbox.to_string()),
            ..Request::from_prompt(prompt)
        };
        let routed = RoutedRequest {
            version: 1,
            request,
            routing: RoutingDecision::fixed(Tier::Small, "bench"),
            routed_at_ms: 0,
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::CONTENT_TYPE, Encoding::MsgPack.content_type());
        self.js
            .publish_with_headers(
                self.ns.tier(Tier::Small),
                h,
                encode(Encoding::MsgPack, &routed).into(),
            )
            .await
            .unwrap()
    }
}

fn streams() -> StreamsConfig {
    let mut s = StreamsConfig::small();
    s.usage.max_bytes = 256 << 20;
    s.results.max_bytes = 8 << 20;
    s
}

fn published(registry: &Registry, kind: &str) -> f64 {
    counter(
        registry,
        "triage_worker_published_messages_total{",
        &format!("kind=\"{kind}\""),
    )
}

/// The value of the first sample line starting with `name` and holding `label`.
fn counter(registry: &Registry, name: &str, label: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Runs `n` requests with at most `concurrency` outstanding; returns
/// (elapsed, client-side ttft histogram, worker-side ttft histogram, replies).
async fn run_requests(
    b: &Bench,
    n: usize,
    concurrency: usize,
    tag: &str,
) -> (Duration, Histogram<u64>, Histogram<u64>, u64) {
    let inbox = b.client.new_inbox();
    let mut sub = b.client.subscribe(format!("{inbox}.*")).await.unwrap();
    let mut ttft_client = Histogram::<u64>::new(3).unwrap();
    let mut ttft_worker = Histogram::<u64>::new(3).unwrap();
    let mut sent_at = std::collections::HashMap::new();
    let mut first_seen = std::collections::HashSet::new();
    let mut replies = 0u64;
    let started = Instant::now();
    let mut next = 0usize;
    let mut done = 0usize;
    while done < n {
        while next < n && next - done < concurrency {
            let id = format!("{tag}-{next}");
            let ack = b
                .publish(
                    id.clone(),
                    &format!("question {next} of {tag}"),
                    &format!("{inbox}.{next}"),
                )
                .await;
            sent_at.insert(id, Instant::now());
            drop(ack); // acks are not awaited one by one: pipelined
            next += 1;
        }
        let m = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .expect("replies keep coming")
            .unwrap();
        replies += 1;
        match decode::<Reply>(Encoding::MsgPack, &m.payload).unwrap() {
            Reply::Chunk(c) => {
                if first_seen.insert(c.id.clone()) {
                    ttft_client.record(us(sent_at[&c.id].elapsed())).unwrap();
                }
            }
            Reply::Completion(c) => {
                ttft_worker.record((c.ttft_ms * 1000.0) as u64).unwrap();
                done += 1;
            }
            Reply::Error(e) => panic!("{e:?}"),
        }
    }
    (started.elapsed(), ttft_client, ttft_worker, replies)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n_latency, n_throughput) = if quick { (100, 200) } else { (500, 2000) };
    let sim = triage_vllm_sim::spawn(SimConfig::instant("bench", 100))
        .await
        .unwrap();

    // 1. Direct: time to the first content delta over HTTP.
    let direct = BackendClient::new(BackendConfig::new(sim.url())).unwrap();
    let mut ttft_direct = Histogram::<u64>::new(3).unwrap();
    for i in 0..n_latency {
        let mut req = ChatRequest::new(vec![ChatMessage::user(format!("direct {i}"))]);
        req.max_tokens = Some(100);
        req.model = Some("bench".into());
        let t0 = Instant::now();
        let mut s = direct.chat_stream(&req);
        let mut first = None;
        while let Some(e) = s.next().await {
            if let (None, Ok(StreamEvent::Delta { .. })) = (first, &e) {
                first = Some(t0.elapsed());
            }
        }
        ttft_direct.record(us(first.unwrap())).unwrap();
    }

    let mut lines = Vec::new();
    lines.push(format!(
        "direct to simulator: ttft p50 {:.3} ms, p99 {:.3} ms (n={n_latency})",
        ms(&ttft_direct, 0.5),
        ms(&ttft_direct, 0.99)
    ));

    // (label, coalescing, progress records every N tokens, at the first token)
    for (label, coalesce, progress_tokens, first_token) in [
        ("coalescing 20ms", Duration::from_millis(20), None, true),
        ("no coalescing", Duration::ZERO, None, true),
        (
            "coalescing 20ms, no first-token progress record",
            Duration::from_millis(20),
            None,
            false,
        ),
        (
            "coalescing 20ms, progress every 25 tokens",
            Duration::from_millis(20),
            Some(25),
            true,
        ),
    ] {
        let b = Bench::new().await;
        let mut registry = Registry::default();
        let mut config = b.config(sim.url(), coalesce);
        config.progress.first_token = first_token;
        if let Some(tokens) = progress_tokens {
            config.progress.tokens = tokens;
        }
        let worker = Worker::connect(config, Tier::Small, &mut registry)
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker.run(stop.clone()));

        // 2. Latency: one request at a time.
        let (_, ttft_client, ttft_worker, _) =
            run_requests(&b, n_latency, 1, &format!("lat{}", coalesce.as_millis())).await;
        // 3. Throughput: many at once; messages per request.
        let before: Vec<f64> = ["chunk", "final", "usage"]
            .iter()
            .map(|k| published(&registry, k))
            .collect();
        let (elapsed, _, _, replies) = run_requests(
            &b,
            n_throughput,
            256,
            &format!("tp{}", coalesce.as_millis()),
        )
        .await;
        let after: Vec<f64> = ["chunk", "final", "usage"]
            .iter()
            .map(|k| published(&registry, k))
            .collect();
        let per = |i: usize| (after[i] - before[i]) / n_throughput as f64;
        let writes = counter(&registry, "triage_worker_progress_writes_total{", "tier=");
        lines.push(format!(
            "worker, {label}: ttft via worker (client publish -> first chunk) p50 {:.3} ms, p99 {:.3} ms; \
             worker receipt -> first token p50 {:.3} ms, p99 {:.3} ms; added over direct p50 {:+.3} ms, p99 {:+.3} ms",
            ms(&ttft_client, 0.5),
            ms(&ttft_client, 0.99),
            ms(&ttft_worker, 0.5),
            ms(&ttft_worker, 0.99),
            ms(&ttft_client, 0.5) - ms(&ttft_direct, 0.5),
            ms(&ttft_client, 0.99) - ms(&ttft_direct, 0.99),
        ));
        lines.push(format!(
            "worker, {label}: {:.0} requests/s at 100 output tokens ({n_throughput} requests, 256 outstanding, max_in_flight 64); \
             per request: {:.2} chunks + {:.2} final + {:.2} usage = {:.2} published, {:.2} reply messages received, \
             {:.2} progress records written (all runs)",
            n_throughput as f64 / elapsed.as_secs_f64(),
            per(0),
            per(1),
            per(2),
            per(0) + per(1) + per(2),
            replies as f64 / n_throughput as f64,
            writes / (n_latency + n_throughput) as f64,
        ));
        stop.cancel();
        handle.await.unwrap().unwrap();
        b.teardown().await;
    }

    // 4. Coalescing with a realistic inter-token latency (5 ms).
    let slow = triage_vllm_sim::spawn(SimConfig {
        itl_ms: 5,
        ..SimConfig::instant("bench", 100)
    })
    .await
    .unwrap();
    for (label, coalesce) in [
        ("coalescing 20ms", Duration::from_millis(20)),
        ("no coalescing", Duration::ZERO),
    ] {
        let b = Bench::new().await;
        let mut registry = Registry::default();
        let worker = Worker::connect(b.config(slow.url(), coalesce), Tier::Small, &mut registry)
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker.run(stop.clone()));
        let n = if quick { 10 } else { 40 };
        let (_, _, _, replies) =
            run_requests(&b, n, 8, &format!("itl{}", coalesce.as_millis())).await;
        lines.push(format!(
            "itl 5 ms, {label}: {:.1} reply messages per request (100 tokens)",
            replies as f64 / n as f64
        ));
        stop.cancel();
        handle.await.unwrap().unwrap();
        b.teardown().await;
    }

    println!();
    for l in lines {
        println!("{l}");
    }
}
