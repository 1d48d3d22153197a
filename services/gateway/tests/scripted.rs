//! The gateway against a pipeline played by the test, on the real NATS: the
//! test reads each request from `llm.requests` and answers on its reply
//! subject with exactly the replies a scenario needs (a restart after text
//! was streamed, an error code, silence), which a real worker produces only
//! by chance.

mod common;

use std::time::Duration;

use common::{http, run, sse_events, streamed_text, venv_python, World};
use futures::StreamExt;
use serde_json::{json, Value};
use triage_protocol::{
    decode, headers, Chunk, Completion, Encoding, ErrorCode, ErrorReply, Reply, Request,
    RoutingDecision, Tier, Usage,
};

/// A request as the pipeline received it.
struct Asked {
    request: Request,
    /// Its W3C trace context header.
    traceparent: Option<String>,
}

/// Reads requests from the namespace's `llm.requests`.
struct Responder {
    client: async_nats::Client,
    sub: async_nats::Subscriber,
}

impl World {
    async fn responder(&self) -> Responder {
        let sub = triage_bus::connect::subscribe_synced(&self.client, self.ns.requests())
            .await
            .unwrap();
        Responder {
            client: self.client.clone(),
            sub,
        }
    }
}

impl Responder {
    /// Waits for the next request and answers it with `script(id)`.
    fn answer(
        mut self,
        script: impl FnOnce(&str) -> Vec<Reply> + Send + 'static,
    ) -> tokio::task::JoinHandle<Asked> {
        tokio::spawn(async move {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.sub.next())
                .await
                .expect("a request within 20 s")
                .expect("subscription open");
            let encoding = Encoding::from_content_type(
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(headers::CONTENT_TYPE))
                    .map(|v| v.as_str()),
            );
            let request: Request = decode(encoding, &msg.payload).unwrap();
            let traceparent = msg
                .headers
                .as_ref()
                .and_then(triage_bus::trace::traceparent);
            let reply_to = request.reply_to.clone().expect("a reply subject");
            for reply in script(&request.id) {
                triage_bus::reply::send(&self.client, &reply_to, encoding, &reply)
                    .await
                    .unwrap();
            }
            self.client.flush().await.unwrap();
            Asked {
                request,
                traceparent: traceparent.map(String::from),
            }
        })
    }
}

fn chunk(id: &str, attempt: u32, seq: u32, delta: &str) -> Reply {
    Reply::Chunk(Chunk {
        id: id.into(),
        seq,
        attempt,
        delta: delta.into(),
        logprobs: None,
    })
}

fn completion(id: &str, attempt: u32, chunks: u32, text: Option<&str>) -> Reply {
    Reply::Completion(Completion {
        id: id.into(),
        attempt,
        finish_reason: "stop".into(),
        usage: Usage {
            prompt_tokens: 4,
            completion_tokens: 2,
            estimated: false,
        },
        tier: Tier::Large,
        model: "scripted-large".into(),
        ttft_ms: 1.0,
        total_ms: 2.0,
        chunks,
        text_bytes: None,
        text: text.map(str::to_string),
        routing: Some(RoutingDecision {
            score: 0.75,
            ..RoutingDecision::fixed(Tier::Large, "test")
        }),
        logprobs: None,
        alternatives: Vec::new(),
    })
}

/// The restart script: two chunks of attempt 1, then attempt 17 (a second
/// delivery) from the start.
fn restart(id: &str) -> Vec<Reply> {
    vec![
        chunk(id, 1, 0, "Hel"),
        chunk(id, 1, 1, "lo "),
        chunk(id, 17, 0, "Good"),
        chunk(id, 17, 1, "bye"),
        completion(id, 17, 2, Some("Goodbye")),
    ]
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "triage-auto", "messages": [{"role": "user", "content": "Say hello."}], "stream": stream})
}

#[tokio::test]
async fn a_restart_mid_stream_ends_it_with_an_error_event_and_never_splices() {
    let world = World::new().await;
    let gw = world.gateway(world.gateway_config()).await;
    let asked = world.responder().await.answer(restart);
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let id = r.headers()["x-triage-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = r.text().await.unwrap();
    let request = asked.await.unwrap().request;
    assert_eq!(request.id, id);
    assert!(request.reply_to.as_deref().unwrap().starts_with("_GW."));
    assert!(request.stream && request.tier.is_none() && request.deadline_ms.is_some());

    let events = sse_events(&body);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        streamed_text(&events),
        "Hello ",
        "only the first attempt's text"
    );
    assert!(
        !body.contains("Good"),
        "no text of the second attempt: {body}"
    );
    let error = &events[events.len() - 2]["error"];
    assert_eq!(error["code"], "generation_restarted", "{body}");
    assert_eq!(error["type"], "server_error");
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(gw
        .metrics()
        .contains("triage_gateway_stream_errors_total{code=\"generation_restarted\"} 1"));
    world.teardown().await;
}

/// A chunk lost between worker and gateway: a stream ends with a
/// `stream_incomplete` error event after the text before the gap, a whole
/// answer is a 502 — never text with a hole in it.
#[tokio::test]
async fn a_lost_chunk_is_stream_incomplete_never_wrong_text() {
    let world = World::new().await;
    let gw = world.gateway(world.gateway_config()).await;
    let lossy = |id: &str| {
        vec![
            chunk(id, 1, 0, "Hel"),
            chunk(id, 1, 2, "!"),
            completion(id, 1, 3, None),
        ]
    };
    let asked = world.responder().await.answer(lossy);
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    asked.await.unwrap();
    let events = sse_events(&body);
    assert_eq!(streamed_text(&events), "Hel", "{body}");
    let error = &events[events.len() - 2]["error"];
    assert_eq!(error["code"], "stream_incomplete", "{body}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("chunk 2 of attempt 1 came where chunk 1 was due"),
        "{body}"
    );
    assert_eq!(events.last().unwrap(), "[DONE]");

    let asked = world.responder().await.answer(lossy);
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    asked.await.unwrap();
    assert_eq!(r.status(), 502);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "stream_incomplete", "{err}");
    world.teardown().await;
}

/// A namespace whose `llm.requests` is at its limit: `max_msgs` 1, holding one.
async fn full_request_queue() -> World {
    let world = World::bare().await;
    let mut streams = common::tiny_streams();
    streams.requests.max_msgs = 1;
    triage_bus::provision(&world.js, &world.ns, &streams)
        .await
        .unwrap();
    let filler = bytes::Bytes::from_static(b"queued");
    triage_bus::publish::once(&world.js, &world.ns.requests(), Default::default(), filler)
        .await
        .unwrap();
    world
}

/// `llm.requests` at its limit (`max_msgs` 1, holding one): the gateway
/// answers 503 `queue_full` in OpenAI's format, streamed or not.
#[tokio::test]
async fn a_full_request_queue_is_503_queue_full() {
    let world = full_request_queue().await;
    let gw = world.gateway(world.gateway_config()).await;
    for stream in [false, true] {
        let r = http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "stream={stream}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "queue_full", "{err}");
        assert_eq!(err["error"]["type"], "server_error");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("maximum messages exceeded"), "{message}");
    }
    world.teardown().await;
}

#[tokio::test]
async fn a_whole_answer_uses_only_the_final_attempts_text() {
    let world = World::new().await;
    let gw = world.gateway(world.gateway_config()).await;
    let asked = world.responder().await.answer(restart);
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-triage-tier"], "2");
    assert_eq!(r.headers()["x-triage-score"], "0.7500");
    assert_eq!(r.headers()["x-triage-model"], "scripted-large");
    let body: Value = r.json().await.unwrap();
    assert!(!asked.await.unwrap().request.stream);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Goodbye");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6})
    );
    assert_eq!(body["triage"]["tier"], 2);
    assert_eq!(body["model"], "triage-auto");
    world.teardown().await;
}

#[tokio::test]
async fn a_callers_traceparent_makes_the_request_part_of_its_trace() {
    let world = World::new().await;
    let gw = world.gateway(world.gateway_config()).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let asked = world.responder().await.answer(restart);
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("traceparent", &caller)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = asked
        .await
        .unwrap()
        .traceparent
        .expect("a traceparent header");
    // Same trace, a span of the gateway's own between the caller and the router.
    assert!(sent.starts_with(&format!("00-{trace_id}-")), "{sent}");
    assert!(!sent.contains("00f067aa0ba902b7"), "{sent}");

    // Without one, the request starts a trace of its own.
    let asked = world.responder().await.answer(restart);
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = asked
        .await
        .unwrap()
        .traceparent
        .expect("a traceparent header");
    assert!(
        sent.starts_with("00-") && !sent.contains(trace_id),
        "{sent}"
    );
    world.teardown().await;
}

#[tokio::test]
async fn pipeline_errors_keep_their_status_before_the_first_byte() {
    let world = World::new().await;
    let gw = world.gateway(world.gateway_config()).await;
    let cases = [
        (
            ErrorCode::BackendUnavailable,
            "triage-auto",
            true,
            503,
            None,
        ),
        (
            ErrorCode::InvalidTier,
            "triage-tier2",
            true,
            400,
            Some("model"),
        ),
        (
            ErrorCode::EmptyPrompt,
            "triage-tier1",
            false,
            400,
            Some("messages"),
        ),
        (ErrorCode::DeadlineExceeded, "triage-auto", false, 504, None),
    ];
    for (code, model, stream, status, param) in cases {
        let asked = world.responder().await.answer(move |id| {
            vec![Reply::Error(ErrorReply::new(
                id,
                code,
                format!("scripted {code}"),
            ))]
        });
        let mut body = chat_body(stream);
        body["model"] = json!(model);
        let r = http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{code}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], code.as_str());
        assert_eq!(err["error"]["message"], format!("scripted {code}"));
        assert_eq!(err["error"]["param"].as_str(), param);
        let request = asked.await.unwrap().request;
        let forced = match model {
            "triage-tier1" => Some(1),
            "triage-tier2" => Some(2),
            _ => None,
        };
        assert_eq!(request.tier, forced, "{model} forces its tier");
    }
    world.teardown().await;
}

#[tokio::test]
async fn an_unanswered_request_gets_504_after_the_timeout() {
    let world = World::new().await;
    let mut config = world.gateway_config();
    config.request_timeout = Duration::from_millis(800);
    let gw = world.gateway(config).await;
    for stream in [false, true] {
        let started = std::time::Instant::now();
        let r = http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 504);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "deadline_exceeded");
        assert!(started.elapsed() >= Duration::from_millis(800));
    }
    world.teardown().await;
}

#[tokio::test]
async fn refusals_need_no_pipeline() {
    let world = World::new().await;
    let mut config = world.gateway_config();
    config.max_body_bytes = 4096;
    config
        .aliases
        .insert("gpt-4o-mini".into(), "triage-tier1".into());
    let gw = world.gateway(config).await;
    let post = |path: &str, body: String| {
        http()
            .post(format!("{}{path}", gw.url))
            .header("content-type", "application/json")
            .body(body)
    };
    let check = |status: u16, param: Option<&'static str>, code: &'static str| {
        move |r: reqwest::Response| async move {
            assert_eq!(r.status().as_u16(), status);
            assert!(r.headers().contains_key("x-triage-request-id"));
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["param"].as_str(), param, "{v}");
            assert_eq!(v["error"]["code"], code, "{v}");
            assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string());
        }
    };
    let r = post("/v1/chat/completions", "{\"messages\": [".into())
        .send()
        .await
        .unwrap();
    check(400, None, "invalid_request")(r).await;
    let r = post(
        "/v1/chat/completions",
        json!({"model": "triage-auto"}).to_string(),
    )
    .send()
    .await
    .unwrap();
    check(400, Some("messages"), "invalid_request")(r).await;
    let r = post(
        "/v1/chat/completions",
        json!({"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}).to_string(),
    )
    .send()
    .await
    .unwrap();
    check(404, Some("model"), "model_not_found")(r).await;
    let big = json!({"model": "triage-auto", "prompt": "x".repeat(5000)}).to_string();
    let r = post("/v1/completions", big).send().await.unwrap();
    check(413, None, "request_too_large")(r).await;

    let models: Value = http()
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["triage-auto", "triage-tier1", "triage-tier2", "gpt-4o-mini"]
    );
    let r = http()
        .get(format!("{}/v1/models/gpt-5", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            "triage_gateway_requests_total{endpoint=\"chat_completions\",model=\"unknown\",status=\"404\"} 1"
        ),
        "{metrics}"
    );
    world.teardown().await;
}

#[tokio::test]
async fn health_is_ready_only_once_the_streams_exist() {
    let world = World::bare().await;
    let gw = world.gateway(world.gateway_config()).await;
    let health = || async {
        let r = http()
            .get(format!("{}/health", gw.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, body) = health().await;
    assert_eq!(status, 503);
    assert!(
        body["reason"].as_str().unwrap().contains("LLM_REQUESTS"),
        "{body}"
    );
    world.provision().await;
    assert_eq!(health().await, (200, json!({"status": "ready"})));
    world.teardown().await;
}

/// The official SDK raises the streamed error event as an `APIError` and
/// never yields the second attempt's text.
#[tokio::test]
async fn the_openai_sdk_raises_the_restart_error_event() {
    let world = World::new().await;
    let gw = world.gateway(world.gateway_config()).await;
    let asked = world.responder().await.answer(restart);
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=30)
text = ""
try:
    for chunk in client.chat.completions.create(
            model="triage-auto", messages=[{"role": "user", "content": "Say hello."}], stream=True):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
except openai.APIError as e:
    assert "restarted" in e.message, e.message
    assert text == "Hello ", repr(text)
    print("raised", e.code)
    sys.exit(0)
sys.exit("no error raised; text " + repr(text))
"#;
    let mut cmd = tokio::process::Command::new(venv_python());
    cmd.args(["-c", script, &format!("{}/v1", gw.url)]);
    let out = run(cmd, Duration::from_secs(60)).await;
    common::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("raised generation_restarted"));
    asked.await.unwrap();
    world.teardown().await;
}

/// `triage-gateway <args>` (the keys commands) on the default database.
async fn gateway_cli(args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_triage-gateway"));
    cmd.args(args);
    run(cmd, Duration::from_secs(60)).await
}

async fn create_key(args: &[&str]) -> String {
    let out = gateway_cli(&[&["keys", "create"], args].concat()).await;
    common::assert_success(&out);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn keyed_config(world: &World) -> triage_gateway::GatewayConfig {
    let mut config = world.gateway_config();
    config.auth.keys = true;
    // Re-read every key's row each time: a revocation is seen at once.
    config.auth.cache_ttl = Duration::ZERO;
    config
}

fn ask(gw: &common::Gw, key: Option<&str>) -> reqwest::RequestBuilder {
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "triage-auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}));
    match key {
        Some(k) => r.bearer_auth(k),
        None => r,
    }
}

fn whole(id: &str) -> Vec<Reply> {
    vec![completion(id, 1, 0, Some("Hi."))]
}

#[tokio::test]
async fn api_keys_give_the_tenant_limit_the_rate_and_can_be_revoked() {
    let world = World::new().await;
    let gw = world.gateway(keyed_config(&world)).await;
    let tenant = format!("tenant-{}", world.prefix);
    let key = create_key(&["--tenant", &tenant, "--rpm", "2"]).await;
    assert!(key.starts_with("trk_"), "{key}");

    for (presented, why) in [(None, "no key"), (Some("sk-not-ours"), "not a key")] {
        let r = ask(&gw, presented).send().await.unwrap();
        assert_eq!(r.status(), 401, "{why}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key", "{why}: {body}");
    }
    let forged = format!("{}x", &key[..key.len() - 1]);
    assert_eq!(ask(&gw, Some(&forged)).send().await.unwrap().status(), 401);
    let models = http()
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401, "the models need a key too");

    // The tenant comes from the key, whatever the body says.
    for _ in 0..2 {
        let asked = world.responder().await.answer(whole);
        let r = ask(&gw, Some(&key)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            asked.await.unwrap().request.tenant.as_deref(),
            Some(tenant.as_str())
        );
    }
    let limited = ask(&gw, Some(&key)).send().await.unwrap();
    assert_eq!(limited.status(), 429, "the third request in a minute");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=31).contains(&retry), "{retry}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 requests per minute"));

    let key_id = &key[4..16];
    let listed = gateway_cli(&["keys", "list", "--tenant", &tenant]).await;
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains(key_id) && !listed.contains(&key),
        "{listed}"
    );
    common::assert_success(&gateway_cli(&["keys", "revoke", key_id]).await);
    let r = ask(&gw, Some(&key)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let again = gateway_cli(&["keys", "revoke", key_id]).await;
    assert!(!again.status.success(), "a key is revoked once");
    world.teardown().await;
}

#[tokio::test]
async fn a_spent_budget_and_a_foreign_model_are_refused_as_the_openai_sdk_expects() {
    let world = World::new().await;
    let gw = world.gateway(keyed_config(&world)).await;
    let tenant = format!("spender-{}", world.prefix);
    let key = create_key(&[
        "--tenant",
        &tenant,
        "--budget-usd-day",
        "0.5",
        "--models",
        "triage-auto,triage-tier1",
    ])
    .await;
    let pool = sqlx::PgPool::connect(&triage_ledger::config::DatabaseConfig::default().url)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO usage_daily VALUES ((now() AT TIME ZONE 'UTC')::date, 1, 'm', $1, 'ok',
         1, 0, 10, 10, 0.75, 6, 0, 0, 0)",
    )
    .bind(&tenant)
    .execute(&pool)
    .await
    .unwrap();
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=30)
hi = [{"role": "user", "content": "hi"}]
try:
    client.chat.completions.create(model="triage-auto", messages=hi)
    sys.exit("no error for a spent budget")
except openai.RateLimitError as e:
    assert e.code == "insufficient_quota" and "daily budget" in e.message, e.message
try:
    client.chat.completions.create(model="triage-tier2", messages=hi)
    sys.exit("no error for a model the key may not use")
except openai.NotFoundError as e:
    assert e.status_code == 404, e
try:
    openai.OpenAI(base_url=sys.argv[1], api_key="trk_000000000000_" + "a" * 43, max_retries=0).models.list()
    sys.exit("no error for an unknown key")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.code == "invalid_api_key", e
print("all refused")
"#;
    let mut cmd = tokio::process::Command::new(venv_python());
    cmd.args(["-c", script, &format!("{}/v1", gw.url), &key]);
    let out = run(cmd, Duration::from_secs(60)).await;
    common::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("all refused"));
    sqlx::query("DELETE FROM usage_daily WHERE tenant = $1")
        .bind(&tenant)
        .execute(&pool)
        .await
        .unwrap();
    world.teardown().await;
}

#[tokio::test]
async fn the_openai_sdk_raises_413_503_and_504_as_its_own_classes() {
    // A full request queue: 503 queue_full.
    let full = full_request_queue().await;
    let gw_full = full.gateway(full.gateway_config()).await;
    // Nobody answers within 1 s: 504; bodies over 2 KiB: 413.
    let silent = World::new().await;
    let mut config = silent.gateway_config();
    config.request_timeout = Duration::from_secs(1);
    config.max_body_bytes = 2048;
    let gw_silent = silent.gateway(config).await;
    let script = r#"
import sys, openai
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
hi = [{"role": "user", "content": "hi"}]
try:
    client(sys.argv[1]).chat.completions.create(model="triage-auto", messages=hi)
    sys.exit("no error for a full queue")
except openai.InternalServerError as e:
    assert e.status_code == 503 and e.code == "queue_full", e
try:
    client(sys.argv[2]).chat.completions.create(model="triage-auto", messages=[{"role": "user", "content": "x" * 4096}])
    sys.exit("no error for a body over the limit")
except openai.APIStatusError as e:
    assert e.status_code == 413 and e.code == "request_too_large", e
try:
    client(sys.argv[2]).chat.completions.create(model="triage-auto", messages=hi)
    sys.exit("no error for an unanswered request")
except openai.InternalServerError as e:
    assert e.status_code == 504 and e.code == "deadline_exceeded", e
print("all raised")
"#;
    let mut cmd = tokio::process::Command::new(venv_python());
    cmd.args(["-c", script, &gw_full.url, &gw_silent.url]);
    let out = run(cmd, Duration::from_secs(60)).await;
    common::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("all raised"));
    full.teardown().await;
    silent.teardown().await;
}
