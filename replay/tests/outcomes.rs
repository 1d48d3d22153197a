//! `triage-replay outcomes` against scripted OpenAI-compatible servers:
//! tier 1 always states (A) and 18, tier 2 (C) and 18, and a judge grades
//! tier 2's answers 8 and tier 1's 3. Checks the grading of each rule, the
//! judge's, the label, tier 1's logprob features, resuming, and a bad line
//! named by its number.

use std::path::Path;
use std::process::{Command, Output};

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// A server answering every chat completion with `answer(prompt)`, with
/// logprobs.
async fn serve(name: &'static str, answer: fn(&str) -> String) -> String {
    let app = Router::new()
        .route(
            "/v1/models",
            get(move || async move {
                Json(json!({"object": "list", "data": [{"id": name, "object": "model"}]}))
            }),
        )
        .route(
            "/v1/chat/completions",
            post(move |Json(body): Json<Value>| async move {
                let prompt = body["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or_default()
                    .to_string();
                assert_eq!(body["temperature"], 0.0, "graded at temperature 0");
                let text = answer(&prompt);
                let logprobs: Vec<Value> = text
                    .split(' ')
                    .map(|t| json!({"token": t, "logprob": -0.5, "top_logprobs": []}))
                    .collect();
                Json(json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": name,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text},
                                 "logprobs": {"content": logprobs}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn small(prompt: &str) -> String {
    if prompt.contains("eggs") {
        "She has 18 left. The answer is 18".into()
    } else {
        "I pick the answer is (A)".into()
    }
}

fn large(prompt: &str) -> String {
    if prompt.contains("eggs") {
        "16 - 3 - 4 = 9, 9 * 2 = 18".into()
    } else {
        "Large answer: the answer is (C)".into()
    }
}

fn judge(prompt: &str) -> String {
    if prompt.contains("Large answer") {
        "Accurate. Rating: [[8]]".into()
    } else {
        "Wrong. Rating: [[3]]".into()
    }
}

async fn outcomes(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_triage-replay"))
            .arg("outcomes")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_tiers_are_graded_labelled_and_a_rerun_resumes() {
    let (t1, t2, j) = (
        serve("small", small).await,
        serve("large", large).await,
        serve("judge", judge).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let rows = [
        json!({"id": "mc", "prompt": "Which?\nA. one\nB. two\nC. three", "source": "mmlu-pro/x", "answer": "C"}),
        json!({"id": "num", "prompt": "How many eggs?", "source": "gsm8k/test", "answer": "18"}),
        json!({"id": "open", "prompt": "Write a haiku.", "source": "alpacaeval/x", "answer": null}),
    ];
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = vec![
        "--input".into(),
        s(&input),
        "--out".into(),
        s(&out),
        "--tier1".into(),
        t1,
        "--tier2".into(),
        t2,
        "--judge".into(),
        j,
    ];
    let o = outcomes(args.clone()).await;
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = lines(&out);
    assert_eq!(got.len(), 3);
    let row = |id: &str| got.iter().find(|r| r["id"] == id).unwrap().clone();

    let mc = row("mc");
    assert_eq!(
        (
            mc["small_ok"].as_bool(),
            mc["large_ok"].as_bool(),
            mc["label_tier"].as_u64()
        ),
        (Some(false), Some(true), Some(2)),
        "{mc}"
    );
    assert_eq!(
        (mc["small_pred"].as_str(), mc["large_pred"].as_str()),
        (Some("A"), Some("C"))
    );
    assert_eq!(
        (mc["small_model"].as_str(), mc["large_model"].as_str()),
        (Some("small"), Some("large"))
    );
    assert_eq!(mc["small_logprobs"]["has_logprobs"], 1.0);
    assert_eq!(mc["small_logprobs"]["mean_logprob"], -0.5);

    let num = row("num");
    assert_eq!(
        (
            num["small_ok"].as_bool(),
            num["large_ok"].as_bool(),
            num["label_tier"].as_u64()
        ),
        (Some(true), Some(true), Some(1)),
        "{num}"
    );

    let open = row("open");
    assert_eq!(
        (open["small_score"].as_f64(), open["large_score"].as_f64()),
        (Some(3.0), Some(8.0)),
        "{open}"
    );
    assert_eq!(open["label_tier"], 2);
    assert!(
        open["label_basis"].as_str().unwrap().contains("judge"),
        "{open}"
    );
    assert!(
        stdout.contains("3 rows: tier 1 answered well 33.3%, tier 2 100.0%"),
        "{stdout}"
    );

    // The output is a routing-dev file: the router's own reader takes it.
    let read = triage_complexity::dataset::read_rows(&out).unwrap();
    assert_eq!(read.len(), 3);

    // A rerun answers nothing again.
    let o = outcomes(args.clone()).await;
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("3 already in"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(lines(&out).len(), 3);

    // A bad line is named.
    std::fs::write(&input, format!("{}\n{{not json\n", rows[0])).unwrap();
    let o = outcomes(args).await;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in.jsonl:2"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
