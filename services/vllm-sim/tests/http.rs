//! The simulator over real HTTP on loopback, read with a deliberately naive SSE reader
//! (independent of triage-backend's parser).

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use triage_vllm_sim::{spawn, FaultConfig, FaultKind, SimConfig, SimHandle};

fn chat_body(content: &str, max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "logprobs": true,
        "top_logprobs": 2,
        "seed": 11,
    })
}

/// An HTTP client whose every request, body included, ends within 30 s: a
/// stream that stalls fails its test instead of hanging it.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post(sim: &SimHandle, body: &Value) -> reqwest::Response {
    http()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// `data:` payloads of a complete SSE body; panics on anything but `data: ...\n\n` frames.
fn frames(text: &str) -> Vec<String> {
    assert!(text.ends_with("\n\n"), "body must end with a blank line");
    text.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|f| {
            f.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data frame: {f:?}"))
                .to_owned()
        })
        .collect()
}

/// Reads the body as far as it goes; returns the text and whether it ended in an error.
async fn read_all(resp: reqwest::Response) -> (String, bool) {
    let mut body = resp.bytes_stream();
    let mut text = Vec::new();
    while let Some(part) = body.next().await {
        match part {
            Ok(b) => text.extend_from_slice(&b),
            Err(_) => return (String::from_utf8(text).unwrap(), true),
        }
    }
    (String::from_utf8(text).unwrap(), false)
}

fn config(output: u32) -> SimConfig {
    SimConfig {
        seed: 5,
        ..SimConfig::instant("m", output)
    }
}

#[tokio::test]
async fn streaming_format_matches_vllm() {
    let sim = spawn(config(8)).await.unwrap();
    let resp = post(&sim, &chat_body("Say hi", 5, true)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (text, broken) = read_all(resp).await;
    assert!(!broken);
    let frames = frames(&text);
    assert_eq!(frames.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    // role chunk, 5 deltas (the last with finish_reason), usage chunk
    assert_eq!(chunks.len(), 7, "{text}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "m");
        assert!(c["created"].as_u64().unwrap() > 1_600_000_000);
    }
    let role = &chunks[0]["choices"][0];
    assert_eq!(role["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!(role["finish_reason"], Value::Null);
    let deltas = &chunks[1..6];
    for (i, c) in deltas.iter().enumerate() {
        let choice = &c["choices"][0];
        assert_eq!(choice["index"], 0);
        let content = choice["delta"]["content"].as_str().unwrap();
        assert!(!content.is_empty());
        let lp = &choice["logprobs"]["content"][0];
        assert_eq!(lp["token"], content);
        assert_eq!(lp["bytes"], json!(content.as_bytes()));
        assert!(lp["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), 2);
        let expected_finish = if i == 4 { json!("length") } else { Value::Null };
        assert_eq!(choice["finish_reason"], expected_finish);
    }
    let usage_chunk = &chunks[6];
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    assert_eq!(usage["completion_tokens"], 5);
    // "Say hi": 3 (assistant header) + 3 + "user" 1 + 2 = 9
    assert_eq!(usage["prompt_tokens"], 9);
    assert_eq!(usage["total_tokens"], 14);
}

#[tokio::test]
async fn no_usage_chunk_unless_asked() {
    let sim = spawn(config(3)).await.unwrap();
    let mut body = chat_body("x", 10, true);
    body["stream_options"] = json!({"include_usage": false});
    body["logprobs"] = json!(false);
    body.as_object_mut().unwrap().remove("top_logprobs");
    let (text, _) = read_all(post(&sim, &body).await).await;
    let frames = frames(&text);
    assert_eq!(frames.len(), 1 + 3 + 1);
    assert!(!text.contains("usage"));
    // logprobs not requested: null on every chunk
    let last: Value = serde_json::from_str(&frames[3]).unwrap();
    assert_eq!(last["choices"][0]["logprobs"], Value::Null);
    // natural end before max_tokens: finish "stop" with stop_reason null (EOS)
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["stop_reason"], Value::Null);
}

#[tokio::test]
async fn non_streamed_text_equals_streamed_text_and_usage_is_consistent() {
    let sim = spawn(config(12)).await.unwrap();
    let (text, _) = read_all(post(&sim, &chat_body("Explain queues", 50, true)).await).await;
    let streamed: String = frames(&text)
        .iter()
        .filter(|f| *f != "[DONE]")
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let resp = post(&sim, &chat_body("Explain queues", 50, false)).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], streamed.as_str());
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + 12)
    );
    let lps = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lps.len(), 12);
    let joined: String = lps.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(joined, streamed);
}

#[tokio::test]
async fn n_choices_stop_strings_and_model_check() {
    let sim = spawn(config(10)).await.unwrap();
    let mut body = chat_body("two answers", 10, false);
    body["n"] = json!(2);
    body["temperature"] = json!(0.8);
    let v: Value = post(&sim, &body).await.json().await.unwrap();
    let a = v["choices"][0]["message"]["content"].as_str().unwrap();
    let b = v["choices"][1]["message"]["content"].as_str().unwrap();
    assert_ne!(a, b);
    assert_eq!(v["usage"]["completion_tokens"], 20);

    // temperature 0 is greedy: identical choices
    body["temperature"] = json!(0.0);
    let v: Value = post(&sim, &body).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"], v["choices"][1]["message"]);

    // stop string: text cut before it, reported in stop_reason
    let stop = a
        .split(' ')
        .nth(3)
        .unwrap()
        .trim_matches([',', '.'])
        .to_owned();
    let mut body = chat_body("two answers", 10, false);
    body["n"] = json!(1);
    body["temperature"] = json!(0.8);
    body["stop"] = json!([format!(" {stop}")]);
    let v: Value = post(&sim, &body).await.json().await.unwrap();
    let cut = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        a.starts_with(cut) && cut.len() < a.len(),
        "{cut:?} vs {a:?}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["stop_reason"], format!(" {stop}"));

    let mut other = chat_body("x", 5, false);
    other["model"] = json!("gpt-4");
    let resp = post(&sim, &other).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["message"], "The model `gpt-4` does not exist.");
    assert_eq!(v["type"], "NotFoundError");
}

#[tokio::test]
async fn over_max_model_len_gives_vllms_exact_400() {
    let sim = spawn(SimConfig {
        max_model_len: 100,
        ..config(5)
    })
    .await
    .unwrap();
    // "hello world": 3 + 3 + 1 + 2 = 9 prompt tokens; 9 + 95 = 104 > 100
    let resp = post(&sim, &chat_body("hello world", 95, true)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"object":"error","message":"This model's maximum context length is 100 tokens. However, you requested 104 tokens (9 in the messages, 95 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","param":null,"code":400}"#
    );
    // exactly at the limit is accepted
    assert_eq!(
        post(&sim, &chat_body("hello world", 91, false))
            .await
            .status(),
        200
    );
    assert_eq!(sim.stats().rejected, 1);
}

#[tokio::test]
async fn error_faults_from_script_and_runtime_switch() {
    let sim = spawn(config(4)).await.unwrap();
    let client = http();
    let resp = client
        .post(format!("{}/sim/faults", sim.url()))
        .json(&json!({"script": [{"error": 500}, {"error": 503}, "ok"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for (expected, kind) in [
        (500, "InternalServerError"),
        (503, "ServiceUnavailableError"),
    ] {
        let resp = post(&sim, &chat_body("x", 4, true)).await;
        assert_eq!(resp.status().as_u16(), expected);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "error");
        assert_eq!(v["type"], kind);
        assert_eq!(v["code"], expected);
    }
    assert_eq!(post(&sim, &chat_body("x", 4, true)).await.status(), 200);

    // flip to always failing and back, through the handle
    sim.set_faults(FaultConfig::always_error(503)).unwrap();
    assert_eq!(post(&sim, &chat_body("x", 4, false)).await.status(), 503);
    sim.set_faults(FaultConfig::none()).unwrap();
    assert_eq!(post(&sim, &chat_body("x", 4, false)).await.status(), 200);
    assert_eq!(sim.stats().injected_errors, 3);

    let bad = client
        .post(format!("{}/sim/faults", sim.url()))
        .json(&json!({"error_rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn hang_delays_the_first_byte() {
    let sim = spawn(config(3)).await.unwrap();
    sim.set_faults(FaultConfig {
        hang_ms: 60_000,
        script: vec![FaultKind::Hang],
        ..FaultConfig::default()
    })
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .post(format!("{}/v1/chat/completions", sim.url()))
        .json(&chat_body("x", 3, true))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(sim.stats().injected_hangs, 1);
    // the next request is served normally
    assert_eq!(post(&sim, &chat_body("x", 3, true)).await.status(), 200);
}

#[tokio::test]
async fn drop_cuts_the_stream_after_k_events() {
    let sim = spawn(config(10)).await.unwrap();
    sim.set_faults(FaultConfig {
        drop_after_chunks: 3,
        script: vec![FaultKind::Drop, FaultKind::Drop],
        ..FaultConfig::default()
    })
    .unwrap();
    let (text, broken) = read_all(post(&sim, &chat_body("x", 10, true)).await).await;
    assert!(broken, "the body must end in an error, got {text:?}");
    assert_eq!(frames(&text).len(), 3);
    assert!(!text.contains("[DONE]"));
    // non-streamed: body cut half-way
    let resp = post(&sim, &chat_body("x", 10, false)).await;
    assert_eq!(resp.status(), 200);
    let (_, broken) = read_all(resp).await;
    assert!(broken);
    assert_eq!(sim.stats().injected_drops, 2);
}

#[tokio::test]
async fn malformed_line_then_stream_continues() {
    let sim = spawn(config(6)).await.unwrap();
    let (clean, _) = read_all(post(&sim, &chat_body("x", 6, true)).await).await;
    sim.set_faults(FaultConfig {
        malformed_after_chunks: 2,
        script: vec![FaultKind::Malformed],
        ..FaultConfig::default()
    })
    .unwrap();
    let (text, broken) = read_all(post(&sim, &chat_body("x", 6, true)).await).await;
    assert!(!broken);
    let frames = frames(&text);
    assert_eq!(frames.len(), frames_len(&clean) + 1);
    let bad: Vec<_> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| *f != "[DONE]" && serde_json::from_str::<Value>(f).is_err())
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].0, 2, "malformed line comes after 2 events");
    assert_eq!(frames.last().unwrap(), "[DONE]");
}

fn frames_len(text: &str) -> usize {
    frames(text).len()
}

#[tokio::test]
async fn health_models_and_metrics() {
    let sim = spawn(config(4)).await.unwrap();
    let client = http();
    let health = client
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.text().await.unwrap().is_empty());
    sim.set_faults(FaultConfig {
        unhealthy: true,
        ..FaultConfig::default()
    })
    .unwrap();
    let health = client
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);

    let models: Value = client
        .get(format!("{}/v1/models", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "m");
    assert_eq!(models["data"][0]["max_model_len"], 4096);

    let _ = read_all(post(&sim, &chat_body("hello world", 4, true)).await).await;
    let text = client
        .get(format!("{}/metrics", sim.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "# TYPE vllm:num_requests_running gauge",
        "# TYPE vllm:num_requests_waiting gauge",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        "vllm:num_requests_running{model_name=\"m\"} 0",
        "vllm:prompt_tokens_total{model_name=\"m\"} 9",
        "vllm:generation_tokens_total{model_name=\"m\"} 4",
        "vllm:time_to_first_token_seconds_count{model_name=\"m\"} 1",
        "vllm:e2e_request_latency_seconds_count{model_name=\"m\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn requests_beyond_max_num_seqs_wait() {
    let sim = spawn(SimConfig {
        max_num_seqs: 1,
        itl_ms: 20,
        ..config(40)
    })
    .await
    .unwrap();
    let first = post(&sim, &chat_body("first", 40, true)).await;
    let mut first_body = first.bytes_stream();
    first_body.next().await.unwrap().unwrap(); // holds the only slot now
    let url = sim.url().to_owned();
    let second = tokio::spawn(async move {
        let resp = http()
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat_body("second", 3, true))
            .send()
            .await
            .unwrap();
        read_all(resp).await
    });
    // Wait (bounded) until the second request is visibly queued.
    let mut seen_waiting = false;
    for _ in 0..200 {
        if sim.stats().waiting == 1 {
            seen_waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen_waiting,
        "second request never waited: {:?}",
        sim.stats()
    );
    assert!(sim
        .metrics_text()
        .contains("vllm:num_requests_waiting{model_name=\"m\"} 1"));
    assert!(sim
        .metrics_text()
        .contains("vllm:num_requests_running{model_name=\"m\"} 1"));
    while let Some(part) = first_body.next().await {
        part.unwrap();
    }
    let (text, broken) = second.await.unwrap();
    assert!(!broken && text.ends_with("data: [DONE]\n\n"));
    assert_eq!(sim.stats().waiting, 0);
    assert_eq!(sim.stats().completed, 2);
}

/// Statuses and texts of 30 sequential requests against a fresh instance.
async fn run_sequence(seed: u64) -> Vec<(u16, String)> {
    let sim = spawn(SimConfig {
        seed,
        faults: FaultConfig {
            error_rate: 0.5,
            ..FaultConfig::default()
        },
        ..SimConfig::instant("m", 5)
    })
    .await
    .unwrap();
    let mut out = Vec::new();
    for i in 0..30 {
        let mut body = chat_body(&format!("prompt {}", i % 3), 5, false);
        body.as_object_mut().unwrap().remove("seed");
        let resp = post(&sim, &body).await;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        out.push((status, text));
    }
    out
}

#[tokio::test]
async fn deterministic_under_a_seed() {
    let a = run_sequence(42).await;
    let b = run_sequence(42).await;
    assert_eq!(a, b);
    assert!(a.iter().any(|(s, _)| *s == 503) && a.iter().any(|(s, _)| *s == 200));
    let c = run_sequence(43).await;
    assert_ne!(a, c);
}

#[tokio::test]
async fn kill_cuts_open_streams() {
    let mut sim = spawn(SimConfig {
        itl_ms: 20,
        ..config(100)
    })
    .await
    .unwrap();
    let resp = post(&sim, &chat_body("x", 100, true)).await;
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    sim.kill();
    let mut broken = false;
    while let Some(part) = body.next().await {
        if part.is_err() {
            broken = true;
            break;
        }
    }
    assert!(broken);
}

#[tokio::test]
async fn graceful_shutdown_lets_streams_finish() {
    let sim = spawn(SimConfig {
        itl_ms: 5,
        ..config(20)
    })
    .await
    .unwrap();
    let resp = post(&sim, &chat_body("x", 20, true)).await;
    let reader = tokio::spawn(read_all(resp));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let url = sim.url().to_owned();
    sim.shutdown(Duration::from_secs(10)).await;
    let (text, broken) = reader.await.unwrap();
    assert!(!broken && text.ends_with("data: [DONE]\n\n"));
    assert!(http().get(format!("{url}/health")).send().await.is_err());
}

#[tokio::test]
async fn streamed_n_choices_interleave_and_each_finish() {
    let sim = spawn(config(4)).await.unwrap();
    let mut body = chat_body("two", 10, true);
    body["n"] = json!(2);
    let (text, broken) = read_all(post(&sim, &body).await).await;
    assert!(!broken);
    let chunks: Vec<Value> = frames(&text)
        .iter()
        .filter(|f| *f != "[DONE]")
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    let mut finished = Vec::new();
    let mut roles = Vec::new();
    for c in &chunks {
        for choice in c["choices"].as_array().unwrap() {
            if choice["delta"]["role"] == "assistant" {
                roles.push(choice["index"].as_u64().unwrap());
            }
            if !choice["finish_reason"].is_null() {
                finished.push(choice["index"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(roles, [0, 1]);
    finished.sort();
    assert_eq!(finished, [0, 1]);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 8);
}
