//! Measures the client's own cost against a zero-latency simulator on loopback:
//! time to first delta and whole-stream time for 100-token answers through `chat_stream`,
//! compared with reading the same SSE bytes with bare reqwest (no parsing), and the SSE
//! parser's throughput in memory.
//!
//! `cargo run --release -p triage-backend --example sim_roundtrip [-- REQUESTS]`

use std::time::{Duration, Instant};

use futures::StreamExt;
use triage_backend::{
    BackendClient, BackendConfig, ChatMessage, ChatRequest, SseParser, StreamEvent,
};
use triage_vllm_sim::{spawn, SimConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<34} p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let sim = spawn(SimConfig::instant("bench", 100)).await.unwrap();
    let client = BackendClient::new(BackendConfig::new(sim.url())).unwrap();
    let mut request = ChatRequest::new(vec![ChatMessage::user("Benchmark prompt")]);
    request.max_tokens = Some(100);
    request.logprobs = Some(true);
    request.top_logprobs = Some(1);

    // Warm up the connection pool.
    for _ in 0..20 {
        client.chat_stream_collect(&request).await.unwrap();
    }

    let (mut ttft, mut total) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for _ in 0..requests {
        let t0 = Instant::now();
        let mut stream = client.chat_stream(&request);
        let mut first = None;
        while let Some(event) = stream.next().await {
            if let StreamEvent::Delta { .. } = event.unwrap() {
                first.get_or_insert_with(|| t0.elapsed());
            }
        }
        ttft.push(first.unwrap());
        total.push(t0.elapsed());
    }
    let elapsed = started.elapsed();
    println!(
        "{requests} streamed requests x 100 tokens (logprobs on): {:.0} req/s, {:.0} tokens/s",
        requests as f64 / elapsed.as_secs_f64(),
        (requests * 100) as f64 / elapsed.as_secs_f64()
    );
    report("client: first delta", ttft);
    report("client: whole stream", total);

    // Same requests, bytes only, no SSE parsing: the floor set by HTTP + the simulator.
    let raw = reqwest::Client::new();
    let mut body = serde_json::to_value(&request).unwrap();
    body["stream"] = true.into();
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let (mut ttfb, mut raw_total) = (Vec::new(), Vec::new());
    let mut sample_body = Vec::new();
    for i in 0..requests {
        let t0 = Instant::now();
        let resp = raw
            .post(format!("{}/v1/chat/completions", sim.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let mut bytes = resp.bytes_stream();
        let mut first = None;
        while let Some(part) = bytes.next().await {
            let part = part.unwrap();
            first.get_or_insert_with(|| t0.elapsed());
            if i == 0 {
                sample_body.extend_from_slice(&part);
            }
        }
        ttfb.push(first.unwrap());
        raw_total.push(t0.elapsed());
    }
    report("bare reqwest: first body bytes", ttfb);
    report("bare reqwest: whole body", raw_total);

    // Parser alone, in memory.
    let rounds = 2000;
    let t0 = Instant::now();
    let mut items = Vec::new();
    for _ in 0..rounds {
        items.clear();
        let mut parser = SseParser::new();
        for piece in sample_body.chunks(1460) {
            parser.push(piece, &mut items);
        }
        parser.finish(&mut items);
    }
    let spent = t0.elapsed();
    println!(
        "SSE parser: {} bytes/stream, {} items/stream, {:.1} µs/stream, {:.0} MB/s",
        sample_body.len(),
        items.len(),
        spent.as_secs_f64() * 1e6 / rounds as f64,
        (sample_body.len() * rounds) as f64 / spent.as_secs_f64() / 1e6
    );
}
