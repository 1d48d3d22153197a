//! The client against the vLLM simulator in-process (real HTTP on loopback), plus a few
//! canned raw-HTTP servers for shapes the simulator does not produce.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use triage_backend::{
    ApiKey, BackendClient, BackendConfig, BackendError, ChatMessage, ChatRequest, FinishReason,
    StreamEvent, StreamSummary, TimeoutPhase,
};
use triage_vllm_sim::{spawn, FaultConfig, FaultKind, SimConfig, SimHandle};

fn sim_config(output: u32) -> SimConfig {
    SimConfig {
        seed: 3,
        ..SimConfig::instant("sim", output)
    }
}

fn client_for(sim: &SimHandle) -> BackendClient {
    BackendClient::new(BackendConfig::new(sim.url())).unwrap()
}

fn request(prompt: &str, max_tokens: u32) -> ChatRequest {
    let mut r = ChatRequest::new(vec![
        ChatMessage::system("Be brief."),
        ChatMessage::user(prompt),
    ]);
    r.model = Some("sim".into());
    r.max_tokens = Some(max_tokens);
    r.seed = Some(7);
    r.logprobs = Some(true);
    r.top_logprobs = Some(2);
    r
}

/// Collects a stream without stopping at the first error: (events, final
/// error). Fails if the stream has not ended within 60 s.
async fn drain(
    client: &BackendClient,
    req: &ChatRequest,
) -> (Vec<StreamEvent>, Option<BackendError>) {
    let mut stream = client.chat_stream(req);
    let mut events = Vec::new();
    let read = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(e) => events.push(e),
                Err(e) => {
                    assert!(stream.next().await.is_none(), "nothing may follow an error");
                    return Some(e);
                }
            }
        }
        None
    };
    let error = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the stream ended within 60 s");
    (events, error)
}

#[tokio::test]
async fn streamed_deltas_equal_non_streamed_text_with_usage_and_logprobs() {
    let sim = spawn(sim_config(12)).await.unwrap();
    let client = client_for(&sim);
    let req = request("Describe a queue", 40);

    let (events, error) = drain(&client, &req).await;
    assert!(error.is_none(), "{error:?}");
    assert!(
        matches!(&events[0], StreamEvent::Start { id, model } if id.starts_with("chatcmpl-") && model.as_deref() == Some("sim"))
    );
    let mut summary = StreamSummary::default();
    for e in events {
        summary.apply(e);
    }
    let completion = client.chat(&req).await.unwrap();
    assert!(!summary.text.is_empty());
    assert_eq!(summary.text, completion.text());
    assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
    assert_eq!(summary.deltas, 12);
    let usage = summary.usage.expect("usage chunk requested by default");
    assert_eq!(usage.completion_tokens, 12);
    assert_eq!(usage.total_tokens, usage.prompt_tokens + 12);
    assert_eq!(Some(usage), completion.usage);
    assert_eq!(summary.logprobs.len(), 12);
    let joined: String = summary.logprobs.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(joined, summary.text);
    assert!(summary
        .logprobs
        .iter()
        .all(|t| t.top_logprobs.len() == 2 && t.logprob <= 0.0));
    let non_stream_lps = completion.choices[0]
        .logprobs
        .as_ref()
        .unwrap()
        .content
        .as_ref()
        .unwrap();
    assert_eq!(non_stream_lps, &summary.logprobs);
    assert_eq!(summary.malformed, 0);
}

#[tokio::test]
async fn length_finish_and_no_usage_when_opted_out() {
    let sim = spawn(sim_config(50)).await.unwrap();
    let client = client_for(&sim);
    let mut req = request("x", 4);
    req.stream_options = Some(triage_backend::StreamOptions {
        include_usage: Some(false),
    });
    let summary = client.chat_stream_collect(&req).await.unwrap();
    assert_eq!(summary.finish_reason, Some(FinishReason::Length));
    assert_eq!(summary.deltas, 4);
    assert_eq!(summary.usage, None);
}

#[tokio::test]
async fn error_statuses_map_to_typed_errors() {
    let sim = spawn(SimConfig {
        max_model_len: 64,
        ..sim_config(4)
    })
    .await
    .unwrap();
    let client = client_for(&sim);

    for status in [500u16, 503] {
        sim.set_faults(FaultConfig::always_error(status)).unwrap();
        let (events, error) = drain(&client, &request("x", 4)).await;
        assert!(events.is_empty());
        let error = error.unwrap();
        assert!(
            matches!(&error, BackendError::Status { status: s, .. } if *s == status),
            "{error}"
        );
        assert!(error.is_retryable());
        assert_eq!(error.kind(), "http_5xx");
        let error = client.chat(&request("x", 4)).await.unwrap_err();
        assert!(error.is_retryable() && !error.is_context_length());
    }
    sim.set_faults(FaultConfig::none()).unwrap();

    let error = drain(&client, &request("x", 60)).await.1.unwrap();
    assert!(error.is_context_length(), "{error}");
    assert!(!error.is_retryable());
    assert_eq!(error.kind(), "context_length");
    let message = &error.api_error().unwrap().message;
    assert!(message.starts_with("This model's maximum context length is 64 tokens."));
    assert!(
        error.to_string().contains(&format!("{message:?}")),
        "message quoted: {error}"
    );

    let mut wrong_model = request("x", 4);
    wrong_model.model = Some("other".into());
    let error = client.chat(&wrong_model).await.unwrap_err();
    assert!(matches!(error, BackendError::Status { status: 404, .. }));
    assert!(!error.is_retryable() && !error.is_context_length());
}

#[tokio::test]
async fn hang_is_a_first_byte_timeout() {
    let sim = spawn(sim_config(4)).await.unwrap();
    sim.set_faults(FaultConfig {
        hang_ms: 30_000,
        script: vec![FaultKind::Hang],
        ..FaultConfig::default()
    })
    .unwrap();
    let client = BackendClient::new(BackendConfig {
        first_byte_timeout: Duration::from_millis(200),
        ..BackendConfig::new(sim.url())
    })
    .unwrap();
    let error = drain(&client, &request("x", 4)).await.1.unwrap();
    assert!(
        matches!(
            error,
            BackendError::Timeout {
                phase: TimeoutPhase::FirstByte,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.is_retryable());
    assert_eq!(error.kind(), "timeout_first_byte");
    // the retry works
    assert!(client.chat_stream_collect(&request("x", 4)).await.is_ok());
}

#[tokio::test]
async fn slow_tokens_are_an_idle_timeout() {
    let sim = spawn(SimConfig {
        itl_ms: 2_000,
        ..sim_config(5)
    })
    .await
    .unwrap();
    let client = BackendClient::new(BackendConfig {
        idle_timeout: Duration::from_millis(150),
        ..BackendConfig::new(sim.url())
    })
    .unwrap();
    let (events, error) = drain(&client, &request("x", 5)).await;
    let error = error.unwrap();
    assert!(
        matches!(
            error,
            BackendError::Timeout {
                phase: TimeoutPhase::Idle,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.is_retryable());
    // the first token arrived before the silence
    assert!(events
        .iter()
        .any(|e| matches!(e, StreamEvent::Delta { .. })));
}

#[tokio::test]
async fn dropped_connection_is_stream_broken() {
    let sim = spawn(sim_config(10)).await.unwrap();
    sim.set_faults(FaultConfig {
        drop_after_chunks: 4,
        script: vec![FaultKind::Drop, FaultKind::Drop],
        ..FaultConfig::default()
    })
    .unwrap();
    let client = client_for(&sim);
    let (events, error) = drain(&client, &request("x", 10)).await;
    let error = error.unwrap();
    assert!(
        matches!(error, BackendError::StreamBroken { .. }),
        "{error}"
    );
    assert!(error.is_retryable());
    // role chunk + 3 deltas came through: Start + 3 Delta events
    let deltas = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Delta { .. }))
        .count();
    assert_eq!(deltas, 3, "{events:?}");
    // non-streamed body cut half-way
    let error = client.chat(&request("x", 10)).await.unwrap_err();
    assert!(
        matches!(error, BackendError::StreamBroken { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn malformed_line_is_an_event_and_the_stream_continues() {
    let sim = spawn(sim_config(8)).await.unwrap();
    let client = client_for(&sim);
    let clean = client.chat_stream_collect(&request("x", 8)).await.unwrap();
    sim.set_faults(FaultConfig {
        malformed_after_chunks: 2,
        script: vec![FaultKind::Malformed, FaultKind::Malformed],
        ..FaultConfig::default()
    })
    .unwrap();
    let (events, error) = drain(&client, &request("x", 8)).await;
    assert!(error.is_none(), "{error:?}");
    let malformed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Malformed { .. }))
        .collect();
    assert_eq!(malformed.len(), 1);
    let mut summary = StreamSummary::default();
    for e in events {
        summary.apply(e);
    }
    assert_eq!(summary.text, clean.text);
    assert_eq!(summary.usage, clean.usage);
    // non-streamed: a truncated JSON body is a decode error, not retryable
    let error = client.chat(&request("x", 8)).await.unwrap_err();
    assert!(matches!(error, BackendError::Decode { .. }), "{error}");
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client =
        BackendClient::new(BackendConfig::new(format!("http://127.0.0.1:{port}"))).unwrap();
    let error = drain(&client, &request("x", 4)).await.1.unwrap();
    assert!(matches!(error, BackendError::Connect { .. }), "{error}");
    assert!(error.is_retryable());
    assert!(matches!(
        client.health().await,
        Err(BackendError::Connect { .. })
    ));
}

#[tokio::test]
async fn health_models_and_api_key() {
    let sim = spawn(SimConfig {
        api_key: Some("sk-test".into()),
        max_model_len: 2048,
        ..sim_config(4)
    })
    .await
    .unwrap();
    let with_key = BackendClient::new(BackendConfig {
        api_key: Some(ApiKey::new("sk-test")),
        ..BackendConfig::new(format!("{}/v1/", sim.url()))
    })
    .unwrap();
    with_key.health().await.unwrap();
    let models = with_key.models().await.unwrap();
    assert_eq!(models.data[0].id, "sim");
    assert_eq!(models.data[0].context_length(), Some(2048));
    assert!(with_key.chat(&request("x", 4)).await.is_ok());

    let without = client_for(&sim);
    let error = without.chat(&request("x", 4)).await.unwrap_err();
    assert!(
        matches!(error, BackendError::Status { status: 401, .. }),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert_eq!(error.api_error().unwrap().message, "Unauthorized");

    sim.set_faults(FaultConfig {
        unhealthy: true,
        ..FaultConfig::default()
    })
    .unwrap();
    let error = with_key.health().await.unwrap_err();
    assert!(
        matches!(error, BackendError::Status { status: 503, .. }),
        "{error}"
    );
    assert!(error.is_retryable());
}

/// Serves one canned HTTP response per connection, whatever the request.
async fn canned_server(response: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                // Read the request head and body (small JSON), then answer and close.
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if seen.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

const CHUNK_A: &str = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;

#[tokio::test]
async fn error_object_mid_stream_is_an_error_event() {
    let body: &'static str = Box::leak(
        format!(
            "data: {CHUNK_A}\r\n\r\ndata: {{\"error\":{{\"message\":\"engine died\",\"type\":\"InternalServerError\",\"code\":500}}}}\r\n\r\n"
        )
        .into_boxed_str(),
    );
    let response: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let url = canned_server(response).await;
    let client = BackendClient::new(BackendConfig::new(url)).unwrap();
    let (events, error) = drain(&client, &request("x", 4)).await;
    assert!(events
        .iter()
        .any(|e| matches!(e, StreamEvent::Delta { content, .. } if content == "Hi")));
    let error = error.unwrap();
    assert!(
        matches!(&error, BackendError::ErrorEvent { error } if error.message == "engine died"),
        "{error}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn clean_end_without_done_or_finish_is_stream_broken() {
    let body: &'static str = Box::leak(format!("data: {CHUNK_A}\n\n").into_boxed_str());
    let response: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let url = canned_server(response).await;
    let client = BackendClient::new(BackendConfig::new(url)).unwrap();
    let (_, error) = drain(&client, &request("x", 4)).await;
    assert!(
        matches!(error, Some(BackendError::StreamBroken { events: 2, .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn non_json_error_page_keeps_its_text() {
    let url = canned_server(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 20\r\nconnection: close\r\n\r\n<h1>bad gateway</h1>",
    )
    .await;
    let client = BackendClient::new(BackendConfig::new(url)).unwrap();
    let error = client.chat(&request("x", 4)).await.unwrap_err();
    assert!(
        matches!(&error, BackendError::Status { status: 502, error } if error.message == "<h1>bad gateway</h1>"),
        "{error}"
    );
    assert!(error.is_retryable());
}
