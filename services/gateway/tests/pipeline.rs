//! The gateway in front of the real pipeline: the router (with the real
//! MiniLM embedding), a worker per tier and two vLLM simulators, all in this
//! process on the real NATS. Clients nobody here wrote drive it: the
//! official `openai` Python package (tests/python/test_openai_sdk.py), the
//! `openai` npm package under Node (tests/js/openai_sdk.test.mjs) and
//! `curl -N`; `llm.chat` is asked with async-nats' request(); and a simulator fault makes a real worker restart a stream.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_success, http, run, sse_events, streamed_text, venv_python, World};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use triage_protocol::Tier;
use triage_router::config::RouterConfig;
use triage_router::metrics::RouterMetrics;
use triage_vllm_sim::{FaultConfig, FaultKind, SimConfig, SimHandle};
use triage_worker::config::{BackendSpec, WorkerConfig};
use triage_worker::Worker;

fn worker_config(world: &World, sim: &SimHandle) -> WorkerConfig {
    let mut c = WorkerConfig::default();
    c.nats.url = common::nats_url();
    c.nats.prefix = world.prefix.clone();
    c.nats.streams = common::tiny_streams();
    c.backend_urls = String::new();
    c.backends = vec![BackendSpec::new(sim.url())];
    c.consumer.ack_wait = Duration::from_secs(5);
    c.consumer.fetch_expires = Duration::from_millis(200);
    c.timeouts.first_byte = Duration::from_secs(5);
    c.timeouts.between_chunks = Duration::from_secs(5);
    c.health.interval = Duration::from_millis(200);
    c.health.failure_threshold = 10;
    c.retry.initial_interval = Duration::from_millis(10);
    c.retry.max_interval = Duration::from_millis(50);
    c.retry.max_elapsed = Duration::from_secs(10);
    c.coalesce.interval = Duration::from_millis(5);
    c.prewarm.idle_after = Duration::ZERO;
    c.shutdown_grace = Duration::from_secs(2);
    c.depth_poll_interval = Duration::from_millis(200);
    c.metrics_addr = "127.0.0.1:0".parse().unwrap();
    c
}

/// Everything that runs behind the gateway; stopped when dropped.
struct Pipeline {
    stop: CancellationToken,
    sims: (SimHandle, SimHandle),
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_pipeline(world: &World) -> Pipeline {
    let sim = |model: &str, itl_ms: u64| {
        // Tier 1 talks long enough (64 tokens, 2.5 s) for a client to leave.
        let tokens = if itl_ms > 1 { 64 } else { 12 };
        let mut c = SimConfig::instant(model, tokens);
        c.ttft_ms = 5;
        // Tier 1 much slower than the worker's 5 ms coalescing, so its first
        // tokens reach the client, even on a loaded machine, before a
        // scripted drop cuts the stream.
        c.itl_ms = itl_ms;
        c
    };
    let sims = (
        triage_vllm_sim::spawn(sim("sim-small", 40)).await.unwrap(),
        triage_vllm_sim::spawn(sim("sim-large", 1)).await.unwrap(),
    );
    let stop = CancellationToken::new();
    for (tier, sim) in [(Tier::Small, &sims.0), (Tier::Large, &sims.1)] {
        let mut registry = Registry::default();
        let worker = Worker::connect(worker_config(world, sim), tier, &mut registry)
            .await
            .expect("worker starts");
        tokio::spawn(worker.run(stop.clone()));
    }
    let mut config = RouterConfig::default();
    config.nats.url = common::nats_url();
    config.nats.prefix = world.prefix.clone();
    config.nats.streams = common::tiny_streams();
    config.consumer.settings.ack_wait = Duration::from_secs(5);
    // The gateway's triage-tier1/-tier2 models set `tier` on plain llm.requests.
    config.policy.tier_override_untenanted = true;
    let router = triage_router::service::build_router(&config)
        .await
        .expect("router builds");
    let mut registry = Registry::default();
    let metrics = Arc::new(RouterMetrics::register(&mut registry));
    let client = triage_bus::connect(&config.nats).await.unwrap();
    tokio::spawn(triage_router::service::serve(
        client,
        config,
        router,
        metrics,
        stop.clone(),
    ));
    Pipeline { stop, sims }
}

/// Waits until the gateway is ready and the pipeline answers through it.
async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = json!({"model": "triage-auto", "messages": [{"role": "user", "content": "warm-up"}], "max_tokens": 2});
    let mut last = String::new();
    while Instant::now() < deadline {
        let r = http()
            .post(format!("{url}/v1/chat/completions"))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the pipeline never answered through the gateway: {last}");
}

async fn curl_stream(url: &str, body: Value) -> String {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-N",
        "--max-time",
        "30",
        "-H",
        "content-type: application/json",
    ])
    .args([
        "-d",
        &body.to_string(),
        &format!("{url}/v1/chat/completions"),
    ]);
    let out = run(cmd, Duration::from_secs(40)).await;
    assert_success(&out);
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_and_curl_through_the_whole_pipeline() {
    let world = World::new().await;
    let pipeline = start_pipeline(&world).await;
    let mut config = world.gateway_config();
    config
        .aliases
        .insert("gpt-4o-mini".into(), "triage-tier1".into());
    let gw = world.gateway(config).await;
    wait_ready(&gw.url).await;

    // The official openai package.
    let tests = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/test_openai_sdk.py"
    );
    let mut cmd = tokio::process::Command::new(venv_python());
    cmd.arg(tests)
        .env("TRIAGE_TEST_GATEWAY_URL", format!("{}/v1", gw.url));
    let out = run(cmd, Duration::from_secs(180)).await;
    assert_success(&out);
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains("Ran 11 tests") && report.contains("\nOK"),
        "{report}"
    );

    // The official openai npm package under Node.
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/openai_sdk.test.mjs");
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--test", tests])
        .env("TRIAGE_TEST_GATEWAY_URL", format!("{}/v1", gw.url));
    let out = run(cmd, Duration::from_secs(180)).await;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("# pass 5") && report.contains("# fail 0"),
        "the openai npm package's tests (npm ci in services/gateway/tests/js: scripts/setup.sh \
         does it):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // curl -N: the frames as they arrive, then [DONE].
    let body = curl_stream(
        &gw.url,
        json!({"model": "triage-tier2", "messages": [{"role": "user", "content": "Say hello."}],
               "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let events = sse_events(&body);
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(!streamed_text(&events).is_empty(), "{body}");
    let n = events.len();
    assert_eq!(
        events[n - 3]["choices"][0]["finish_reason"],
        "length",
        "{body}"
    );
    assert_eq!(events[n - 3]["triage"]["tier"], 2);
    assert_eq!(events[n - 3]["triage"]["model"], "sim-large");
    assert_eq!(events[n - 2]["usage"]["completion_tokens"], 8);
    assert_eq!(events[n - 1], "[DONE]");

    // A backend connection dropped mid-stream: the worker restarts the
    // generation (attempt 2) after text reached the client.
    let drop_once = FaultConfig {
        drop_after_chunks: 6,
        script: vec![FaultKind::Drop],
        ..FaultConfig::default()
    };
    pipeline.sims.0.set_faults(drop_once.clone()).unwrap();
    let body = curl_stream(
        &gw.url,
        json!({"model": "triage-tier1", "messages": [{"role": "user", "content": "Say hello."}],
               "max_tokens": 12, "stream": true}),
    )
    .await;
    let events = sse_events(&body);
    let n = events.len();
    assert_eq!(
        events[n - 2]["error"]["code"],
        "generation_restarted",
        "{body}"
    );
    assert_eq!(events[n - 1], "[DONE]");
    let sent = streamed_text(&events);
    assert!(
        !sent.is_empty(),
        "text of the first attempt was sent: {body}"
    );

    // The same fault under a whole answer: only the final attempt's text.
    pipeline.sims.0.set_faults(drop_once).unwrap();
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "triage-tier1", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();
    assert_eq!(whole["usage"]["completion_tokens"], 12, "{whole}");
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());

    // `nats req llm.chat '{...}'`: a core NATS request (no headers, JSON)
    // gets the whole answer as its single reply, in JSON.
    let chat = world.ns.chat();
    let ask = |payload: &'static str| {
        let client = world.client.clone();
        let chat = chat.clone();
        async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(30),
                client.request(chat, payload.into()),
            )
            .await
            .expect("an llm.chat answer within 30 s")
            .expect("a reply, not no-responders");
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    let answer = ask(r#"{"prompt": "Say hello.", "max_tokens": 5, "tier": 1}"#).await;
    assert_eq!(answer["type"], "completion", "{answer}");
    assert_eq!(answer["tier"], 1, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 5, "{answer}");
    assert!(!answer["text"].as_str().unwrap().is_empty(), "{answer}");
    let refused = ask(r#"{"prompt": "hi", "temperature": "hot"}"#).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "invalid_request", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("temperature"),
        "{refused}"
    );
    let empty = ask(r#"{"prompt": ""}"#).await;
    assert_eq!(
        empty["code"], "empty_prompt",
        "the router's refusal: {empty}"
    );

    client_goes_away_mid_stream(&world, &gw).await;

    let metrics = gw.metrics();
    assert!(
        metrics.contains("triage_gateway_nats_chat_requests_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("triage_gateway_time_to_first_token_seconds_count{model=\"triage-tier2\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("triage_gateway_in_flight 0"), "{metrics}");
    drop(gw);
    drop(pipeline);
    world.teardown().await;
}

/// A client that leaves after the first frames: the worker stops generating
/// and books the attempt as `cancelled` (`client_cancelled`), with fewer
/// tokens than the answer would have had.
async fn client_goes_away_mid_stream(world: &World, gw: &common::Gw) {
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "triage-tier1", "messages": [{"role": "user", "content": "Tell a long story."}],
                      "max_tokens": 64, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-triage-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = r.bytes_stream();
    tokio::time::timeout(Duration::from_secs(20), futures::StreamExt::next(&mut body))
        .await
        .expect("the first frames within 20 s");
    drop(body);

    let usage = world
        .js
        .get_stream(world.ns.stream_name(triage_protocol::StreamKind::Usage))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let last = usage.get_info().await.unwrap().state.last_sequence;
        let found = futures::future::join_all((1..=last).map(|seq| usage.get_raw_message(seq)))
            .await
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let encoding = triage_protocol::Encoding::from_content_type(
                    m.headers
                        .get(triage_protocol::headers::CONTENT_TYPE)
                        .map(|v| v.as_str()),
                );
                triage_protocol::decode::<triage_protocol::UsageEvent>(encoding, &m.payload).ok()
            })
            .find(|e| e.id == id);
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no usage event of {id} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        event.status,
        triage_protocol::UsageStatus::Cancelled,
        "{event:?}"
    );
    assert!(
        event.reasons.iter().any(|r| r == "client_cancelled"),
        "{event:?}"
    );
    assert!(
        event.usage.completion_tokens < 64,
        "stopped early: {event:?}"
    );
}
