//! End to end through a REAL llama.cpp `llama-server` serving SmolLM2-135M: proves the client
//! parses a real server's SSE (role chunk with `content: null`, separate finish chunk, usage
//! chunk, streamed logprobs) and its error bodies.
//!
//! Needs llama-server (`$TRIAGE_LLAMA_SERVER`, default `$TRIAGE_CACHE/bin/llama-server`) and
//! the model (made by the project set-up). When missing: fails under CI (`CI` set to anything
//! but `false`/`0`; `.ci/run` sets it), otherwise prints a skip notice.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use triage_backend::{
    BackendClient, BackendConfig, BackendError, ChatMessage, ChatRequest, StreamEvent,
    StreamSummary,
};

fn cache_dir() -> PathBuf {
    match std::env::var_os("TRIAGE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/triage"),
    }
}

/// Kills the server however the test ends.
struct ServerGuard {
    child: Child,
    log: PathBuf,
}

impl ServerGuard {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether this is a CI run, where a missing prerequisite is a failure.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// `Some((binary, model))`, or `None` after printing a skip notice (panics under CI).
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    let cache = cache_dir();
    // Where the set-up writes it (scripts/env.sh).
    let binary = std::env::var_os("TRIAGE_LLAMA_SERVER")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("bin/llama-server"));
    let model = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    for path in [&binary, &model] {
        if !path.exists() {
            let message = format!(
                "{} is missing: run the project set-up (see the README) to build llama-server \
                 and fetch the models",
                path.display()
            );
            if under_ci() {
                panic!("{message}");
            }
            eprintln!("SKIPPED real llama-server test: {message}");
            return None;
        }
    }
    Some((binary, model))
}

#[tokio::test]
async fn real_llama_server_stream_parses() {
    let Some((binary, model)) = prerequisites() else {
        return;
    };
    let port = free_port();
    let log = std::env::temp_dir().join(format!("triage-llama-server-{port}.log"));
    let log_file = std::fs::File::create(&log).unwrap();
    let child = Command::new(&binary)
        .args(["-m", model.to_str().unwrap()])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", "2", "-c", "2048", "--alias", "smollm2", "--metrics"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let mut server = ServerGuard { child, log };

    let client = BackendClient::new(BackendConfig {
        first_byte_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(30),
        health_timeout: Duration::from_secs(2),
        ..BackendConfig::new(format!("http://127.0.0.1:{port}"))
    })
    .unwrap();

    // Loading the model takes a few seconds; /health answers 503 meanwhile.
    let mut ready = false;
    for _ in 0..600 {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!(
                "llama-server exited early ({status}):\n{}",
                server.log_tail()
            );
        }
        if client.health().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ready,
        "llama-server never became healthy:\n{}",
        server.log_tail()
    );

    let models = client.models().await.unwrap();
    assert_eq!(models.data[0].id, "smollm2");
    assert_eq!(models.data[0].context_length(), Some(2048));

    let mut request = ChatRequest::new(vec![ChatMessage::user(
        "What is the capital of France? Answer in one sentence.",
    )]);
    request.model = Some("smollm2".into());
    request.max_tokens = Some(16);
    request.temperature = Some(0.0);
    request.seed = Some(1);
    request.logprobs = Some(true);
    request.top_logprobs = Some(2);

    let mut stream = client.chat_stream(&request);
    let mut summary = StreamSummary::default();
    let mut first_delta_at = None;
    let started = std::time::Instant::now();
    let read = async {
        while let Some(event) = stream.next().await {
            let event =
                event.unwrap_or_else(|e| panic!("stream failed: {e}\n{}", server.log_tail()));
            if let StreamEvent::Malformed { line, reason } = &event {
                panic!("real server sent a line we cannot parse: {reason}: {line}");
            }
            if matches!(event, StreamEvent::Delta { .. }) && first_delta_at.is_none() {
                first_delta_at = Some(started.elapsed());
            }
            summary.apply(event);
        }
    };
    if tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .is_err()
    {
        panic!(
            "the stream did not end within 120 s:\n{}",
            server.log_tail()
        );
    }
    eprintln!(
        "llama-server: first delta after {:?}, whole stream {:?}, text {:?}, usage {:?}",
        first_delta_at.unwrap_or_default(),
        started.elapsed(),
        summary.text,
        summary.usage
    );
    assert!(!summary.text.trim().is_empty());
    assert!(summary.id.starts_with("chatcmpl-"));
    assert!(summary.finish_reason.is_some());
    let usage = summary.usage.expect("usage chunk");
    assert!(usage.prompt_tokens > 0);
    assert!(usage.completion_tokens > 0 && usage.completion_tokens <= 16);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert!(!summary.logprobs.is_empty());
    assert!(summary.logprobs.iter().all(|t| t.logprob <= 0.0));
    assert!(summary.logprobs.iter().all(|t| !t.top_logprobs.is_empty()));
    let joined: String = summary.logprobs.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(joined, summary.text);

    // Same greedy request, not streamed: the same text.
    let completion = client.chat(&request).await.unwrap();
    assert_eq!(completion.text(), summary.text);

    // A prompt over the context window: llama.cpp's 400 is recognised as a context error.
    let mut too_long = request.clone();
    too_long.messages = vec![ChatMessage::user("hello ".repeat(3000))];
    let error = client.chat_stream_collect(&too_long).await.unwrap_err();
    assert!(
        matches!(error, BackendError::Status { status: 400, .. }),
        "{error}"
    );
    assert!(error.is_context_length(), "{error}");
    assert!(!error.is_retryable());
}
