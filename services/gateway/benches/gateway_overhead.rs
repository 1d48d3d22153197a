//! The gateway's added time to first token: the same requests at a fixed
//! rate through the Rust NATS client (`TriageClient`, the path every NATS
//! client takes) and through the gateway (`POST /v1/chat/completions` with
//! `stream: true`, first content delta read by an HTTP client), against a
//! pipeline played by this process that answers each request at once with
//! one chunk and a completion. The difference of the two is what the
//! gateway adds (HTTP parsing, translation, SSE framing, the HTTP hop).
//!
//! Needs the local NATS (TRIAGE_NATS_URL). Run:
//! `cargo bench -p triage-gateway --bench gateway_overhead` (add
//! `-- --quick` for a short run). Prints p50/p99 per path and the added
//! p50/p99.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use hdrhistogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use triage_bus::{StreamsConfig, TriageClient};
use triage_gateway::{Gateway, GatewayConfig};
use triage_protocol::{
    decode, headers, Chunk, Completion, Encoding, Namespace, Reply, Request, StreamKind, Tier,
    Usage,
};

fn nats_url() -> String {
    std::env::var("TRIAGE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Answers every request on `ns`'s `llm.requests` with one chunk and a
/// completion, until `stop`.
async fn responder(client: async_nats::Client, ns: Namespace, stop: CancellationToken) {
    let mut sub = triage_bus::connect::subscribe_synced(&client, ns.requests())
        .await
        .unwrap();
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => return },
            _ = stop.cancelled() => return,
        };
        let encoding = Encoding::from_content_type(
            msg.headers
                .as_ref()
                .and_then(|h| h.get(headers::CONTENT_TYPE))
                .map(|v| v.as_str()),
        );
        let Ok(request) = decode::<Request>(encoding, &msg.payload) else {
            continue;
        };
        let Some(to) = request.reply_to.clone() else {
            continue;
        };
        let id = request.id.clone();
        let replies = [
            Reply::Chunk(Chunk {
                id: id.clone(),
                seq: 0,
                attempt: 1,
                delta: "Hello".into(),
                logprobs: None,
            }),
            Reply::Completion(Completion {
                id,
                attempt: 1,
                finish_reason: "stop".into(),
                usage: Usage::default(),
                tier: Tier::Small,
                model: "bench".into(),
                ttft_ms: 0.0,
                total_ms: 0.0,
                chunks: 1,
                text_bytes: Some(5),
                text: None,
                routing: None,
                logprobs: None,
                alternatives: Vec::new(),
            }),
        ];
        for reply in &replies {
            let _ = triage_bus::reply::send(&client, &to, encoding, reply).await;
        }
    }
}

async fn via_nats(client: &TriageClient) -> Duration {
    let started = Instant::now();
    let mut replies = client
        .submit(Request::from_prompt("Say hello."), Duration::from_secs(10))
        .await
        .expect("submitted");
    match replies.next().await {
        Some(Ok(Reply::Chunk(_))) => {}
        other => panic!("expected a chunk first, got {other:?}"),
    }
    let ttft = started.elapsed();
    while replies.next().await.is_some() {}
    ttft
}

async fn via_gateway(http: &reqwest::Client, url: &str) -> Duration {
    let body = serde_json::json!({"model": "triage-auto", "stream": true,
        "messages": [{"role": "user", "content": "Say hello."}]});
    let started = Instant::now();
    let response = http.post(url).json(&body).send().await.expect("answered");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut seen = Vec::new();
    let mut ttft = None;
    while let Some(bytes) = stream.next().await {
        seen.extend_from_slice(&bytes.expect("body"));
        // The role chunk's content is ""; the first delta's is the text.
        if ttft.is_none() && seen.windows(17).any(|w| w == b"\"content\":\"Hello\"") {
            ttft = Some(started.elapsed());
        }
    }
    ttft.expect("a content delta")
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<22} n={:<5} p50 {:>7.3} ms  p99 {:>7.3} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rate, count) = (25.0, if quick { 100 } else { 500 });
    let prefix = format!("gwbench{}", std::process::id());
    let ns = Namespace::new(prefix.clone()).unwrap();
    let client = async_nats::connect(nats_url()).await.expect("NATS running");
    let js = jetstream::new(client.clone());
    triage_bus::provision(&js, &ns, &StreamsConfig::small())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(responder(client.clone(), ns.clone(), stop.clone()));

    let mut config = GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..GatewayConfig::default()
    };
    config.nats.url = nats_url();
    config.nats.prefix = prefix;
    let mut registry = Registry::default();
    let gateway = Gateway::connect(config, &mut registry).await.unwrap();
    let running = gateway.serve(stop.clone()).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", running.addr);
    let http = reqwest::Client::new();
    let nats = TriageClient::new(client.clone(), ns.clone());

    // Warm up both paths (connections, JIT-free but caches and pools).
    for _ in 0..20 {
        via_nats(&nats).await;
        via_gateway(&http, &url).await;
    }
    let mut direct = Histogram::<u64>::new(3).unwrap();
    let mut gateway = Histogram::<u64>::new(3).unwrap();
    let mut added = Histogram::<u64>::new(3).unwrap();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    // Alternating pairs at `rate` requests a second, so both paths see the
    // same load on the same NATS.
    for _ in 0..count / 2 {
        next += interval;
        tokio::time::sleep_until(next).await;
        let d = via_nats(&nats).await;
        next += interval;
        tokio::time::sleep_until(next).await;
        let g = via_gateway(&http, &url).await;
        direct.record(d.as_micros() as u64).unwrap();
        gateway.record(g.as_micros() as u64).unwrap();
        added
            .record(g.saturating_sub(d).as_micros() as u64)
            .unwrap();
    }
    println!("time to first token at {rate} req/s, answer at once (pipeline played in-process)");
    report("NATS client", &direct);
    report("gateway (HTTP, SSE)", &gateway);
    println!(
        "added by the gateway: p50 {:.3} ms, p99 {:.3} ms (of paired differences, p99 of the pairs: {:.3} ms)",
        (gateway.value_at_quantile(0.5) as f64 - direct.value_at_quantile(0.5) as f64) / 1000.0,
        (gateway.value_at_quantile(0.99) as f64 - direct.value_at_quantile(0.99) as f64) / 1000.0,
        added.value_at_quantile(0.99) as f64 / 1000.0
    );
    stop.cancel();
    for kind in StreamKind::ALL {
        let _ = js.delete_stream(ns.stream_name(kind)).await;
    }
    for bucket in [ns.finished_bucket(), ns.progress_bucket()] {
        let _ = js.delete_stream(format!("KV_{bucket}")).await;
    }
}
