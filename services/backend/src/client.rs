//! The HTTP client (reqwest) for one OpenAI-compatible backend.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use tokio::time::{timeout, timeout_at, Instant};

use crate::config::BackendConfig;
use crate::error::{truncate, ApiError, BackendError, TimeoutPhase};
use crate::events::{chunk_events, StreamEvent, StreamSummary};
use crate::sse::{SseItem, SseParser};
use crate::types::{ChatCompletion, ChatRequest, ModelList, StreamOptions};

/// Client for one backend URL. Cheap to clone (shares the connection pool).
#[derive(Debug, Clone)]
pub struct BackendClient {
    http: reqwest::Client,
    config: BackendConfig,
    root: String,
}

impl BackendClient {
    /// Builds a client; fails only on an unusable configuration.
    pub fn new(config: BackendConfig) -> Result<Self, BackendError> {
        let root = config.root().to_owned();
        let parsed = reqwest::Url::parse(&root)
            .map_err(|e| BackendError::InvalidConfig(format!("base_url {root:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BackendError::InvalidConfig(format!(
                "base_url {root:?} must be http or https"
            )));
        }
        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    BackendError::InvalidConfig(
                        "api_key has characters not allowed in a header".into(),
                    )
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .default_headers(headers)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| BackendError::InvalidConfig(e.to_string()))?;
        Ok(Self { http, config, root })
    }

    /// The configuration in use.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Server root URL (no trailing `/`, no `/v1`).
    pub fn base_url(&self) -> &str {
        &self.root
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// Streams a chat completion. Sets `stream: true`, and when `stream_options` is unset asks
    /// for the usage chunk (`include_usage: true`). The request is sent on first poll.
    ///
    /// Items: [`StreamEvent`]s until `[DONE]`, or one `Err` that ends the stream:
    /// connect/timeout/status errors before anything was received; `Timeout { Idle }`,
    /// `StreamBroken` or `ErrorEvent` after. Malformed lines are `Ok(Malformed)` and the
    /// stream goes on.
    pub fn chat_stream(&self, request: &ChatRequest) -> ChatStream {
        let mut request = request.clone();
        request.stream = Some(true);
        if request.stream_options.is_none() {
            request.stream_options = Some(StreamOptions {
                include_usage: Some(true),
            });
        }
        let state = StreamState {
            client: self.clone(),
            phase: Phase::NotSent(Box::new(request)),
            parser: SseParser::new(),
            pending: VecDeque::new(),
            items: Vec::new(),
            started: false,
            events: 0,
            finished_choices: 0,
        };
        ChatStream {
            inner: futures::stream::unfold(state, StreamState::next).boxed(),
        }
    }

    /// Streams and folds the whole answer (choice 0), e.g. for replay and self-rating.
    pub async fn chat_stream_collect(
        &self,
        request: &ChatRequest,
    ) -> Result<StreamSummary, BackendError> {
        let mut stream = self.chat_stream(request);
        let mut summary = StreamSummary::default();
        while let Some(event) = stream.next().await {
            summary.apply(event?);
        }
        Ok(summary)
    }

    /// A non-streamed chat completion (`stream: false`), bounded by `request_timeout`.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatCompletion, BackendError> {
        let mut request = request.clone();
        request.stream = Some(false);
        request.stream_options = None;
        let limit = self.config.request_timeout;
        let url = self.url("/v1/chat/completions");
        let work = async {
            let response = self
                .http
                .post(&url)
                .json(&request)
                .send()
                .await
                .map_err(|e| connect_error(&url, &e))?;
            let response = check_status(response).await?;
            let body = response
                .bytes()
                .await
                .map_err(|e| BackendError::StreamBroken {
                    events: 0,
                    reason: error_chain(&e),
                })?;
            serde_json::from_slice::<ChatCompletion>(&body).map_err(|e| BackendError::Decode {
                message: format!(
                    "{e} in chat.completion body {:?}",
                    truncate(&String::from_utf8_lossy(&body), 300)
                ),
            })
        };
        timeout(limit, work)
            .await
            .map_err(|_| BackendError::Timeout {
                phase: TimeoutPhase::Total,
                after: limit,
            })?
    }

    /// `GET /health`: `Ok` on any 2xx.
    pub async fn health(&self) -> Result<(), BackendError> {
        let url = self.url("/health");
        self.bounded(async {
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| connect_error(&url, &e))?;
            check_status(response).await.map(drop)
        })
        .await
    }

    /// `GET /v1/models`.
    pub async fn models(&self) -> Result<ModelList, BackendError> {
        let url = self.url("/v1/models");
        self.bounded(async {
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| connect_error(&url, &e))?;
            let body = check_status(response).await?.bytes().await.map_err(|e| {
                BackendError::StreamBroken {
                    events: 0,
                    reason: error_chain(&e),
                }
            })?;
            serde_json::from_slice(&body).map_err(|e| BackendError::Decode {
                message: format!("{e} in /v1/models body"),
            })
        })
        .await
    }

    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let limit = self.config.health_timeout;
        timeout(limit, work)
            .await
            .map_err(|_| BackendError::Timeout {
                phase: TimeoutPhase::Total,
                after: limit,
            })?
    }
}

/// The stream returned by [`BackendClient::chat_stream`].
pub struct ChatStream {
    inner: BoxStream<'static, Result<StreamEvent, BackendError>>,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatStream")
    }
}

impl Stream for ChatStream {
    type Item = Result<StreamEvent, BackendError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

enum Phase {
    NotSent(Box<ChatRequest>),
    Receiving {
        body: BoxStream<'static, reqwest::Result<Bytes>>,
        first_byte_deadline: Option<Instant>,
    },
    /// `[DONE]` seen or an error yielded: emit what is pending, then end.
    Over,
}

struct StreamState {
    client: BackendClient,
    phase: Phase,
    parser: SseParser,
    pending: VecDeque<Result<StreamEvent, BackendError>>,
    items: Vec<SseItem>,
    started: bool,
    events: u64,
    finished_choices: u32,
}

impl StreamState {
    async fn next(mut self) -> Option<(Result<StreamEvent, BackendError>, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if item.is_err() {
                    self.pending.clear();
                    self.phase = Phase::Over;
                } else {
                    self.events += 1;
                }
                return Some((item, self));
            }
            match std::mem::replace(&mut self.phase, Phase::Over) {
                Phase::Over => return None,
                Phase::NotSent(request) => match send(&self.client, &request).await {
                    Ok(phase) => self.phase = phase,
                    Err(e) => self.pending.push_back(Err(e)),
                },
                Phase::Receiving {
                    mut body,
                    first_byte_deadline,
                } => {
                    let read = match first_byte_deadline {
                        Some(deadline) => timeout_at(deadline, body.next()).await.map_err(|_| {
                            BackendError::Timeout {
                                phase: TimeoutPhase::FirstByte,
                                after: self.client.config.first_byte_timeout,
                            }
                        }),
                        None => {
                            let idle = self.client.config.idle_timeout;
                            timeout(idle, body.next())
                                .await
                                .map_err(|_| BackendError::Timeout {
                                    phase: TimeoutPhase::Idle,
                                    after: idle,
                                })
                        }
                    };
                    match read {
                        Err(e) => self.pending.push_back(Err(e)),
                        Ok(Some(Ok(bytes))) => {
                            let mut items = std::mem::take(&mut self.items);
                            self.parser.push(&bytes, &mut items);
                            let done = self.absorb(&mut items);
                            self.items = items;
                            if done {
                                // If the end of the body is already here, reading it lets the
                                // connection go back to the pool; never wait for it.
                                let _ = body.next().now_or_never();
                            } else {
                                self.phase = Phase::Receiving {
                                    body,
                                    first_byte_deadline: None,
                                };
                            }
                        }
                        Ok(Some(Err(e))) => {
                            let events = self.events + self.pending.len() as u64;
                            self.pending.push_back(Err(BackendError::StreamBroken {
                                events,
                                reason: error_chain(&e),
                            }));
                        }
                        Ok(None) => {
                            let mut items = std::mem::take(&mut self.items);
                            self.parser.finish(&mut items);
                            let done = self.absorb(&mut items);
                            if !done && self.finished_choices == 0 {
                                let events = self.events + self.pending.len() as u64;
                                self.pending.push_back(Err(BackendError::StreamBroken {
                                    events,
                                    reason: "body ended without finish_reason or [DONE]".to_owned(),
                                }));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Moves parsed items into `pending`; true once `[DONE]` or an error ends the stream.
    fn absorb(&mut self, items: &mut Vec<SseItem>) -> bool {
        let mut events = Vec::new();
        let mut over = false;
        for item in items.drain(..) {
            if over {
                break;
            }
            match item {
                SseItem::Chunk(chunk) => {
                    self.finished_choices += chunk
                        .choices
                        .iter()
                        .filter(|c| c.finish_reason.is_some())
                        .count() as u32;
                    chunk_events(*chunk, &mut self.started, &mut events);
                }
                SseItem::Done => over = true,
                SseItem::Error(error) => {
                    self.pending.extend(events.drain(..).map(Ok));
                    self.pending
                        .push_back(Err(BackendError::ErrorEvent { error }));
                    over = true;
                }
                SseItem::Malformed { line, reason } => {
                    tracing::warn!(%line, %reason, "malformed SSE line from backend; skipped");
                    events.push(StreamEvent::Malformed { line, reason });
                }
            }
        }
        self.pending.extend(events.into_iter().map(Ok));
        over
    }
}

/// Sends the request and checks the status; the first-byte clock starts here.
async fn send(client: &BackendClient, request: &ChatRequest) -> Result<Phase, BackendError> {
    let config = &client.config;
    let deadline = Instant::now() + config.first_byte_timeout;
    let url = client.url("/v1/chat/completions");
    let sent = client
        .http
        .post(&url)
        .header(ACCEPT, "text/event-stream")
        .json(request)
        .send();
    let response = timeout_at(deadline, sent)
        .await
        .map_err(|_| BackendError::Timeout {
            phase: TimeoutPhase::FirstByte,
            after: config.first_byte_timeout,
        })?
        .map_err(|e| connect_error(&url, &e))?;
    let response = timeout_at(deadline, check_status(response))
        .await
        .map_err(|_| BackendError::Timeout {
            phase: TimeoutPhase::FirstByte,
            after: config.first_byte_timeout,
        })??;
    Ok(Phase::Receiving {
        body: response.bytes_stream().boxed(),
        first_byte_deadline: Some(deadline),
    })
}

/// Turns a non-2xx response into `Status` with its parsed body.
async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, BackendError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    // A body that cannot be read still leaves a useful status error.
    let body = response.bytes().await.unwrap_or_default();
    let mut error = ApiError::from_body(&body);
    if error.message.is_empty() {
        error.message = status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_owned();
    }
    Err(BackendError::Status {
        status: status.as_u16(),
        error,
    })
}

fn connect_error(url: &str, e: &reqwest::Error) -> BackendError {
    // reqwest's messages quote the URL: credentials in it must not reach logs.
    let message = triage_runtime::masking::mask_urls_in(&error_chain(e));
    if e.is_decode() {
        return BackendError::Decode { message };
    }
    BackendError::Connect {
        url: triage_runtime::mask_url(url),
        message,
    }
}

/// reqwest's messages hide the cause ("error sending request"); include the whole chain.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
