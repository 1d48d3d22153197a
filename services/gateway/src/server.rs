//! The HTTP side: routes, and the handlers that turn a body into a queued
//! request and its replies into an OpenAI answer, streamed or whole.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tracing::Instrument;
use triage_bus::{ReplyStream, TriageClient};
use triage_protocol::{Completion, Namespace, Request, RequestKey};

use crate::auth::Identity;
use crate::cancel::CancelOnDrop;
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::health;
use crate::metrics::{GatewayMetrics, ModelLabels, RequestLabels, StreamErrorLabels};
use crate::models::Catalogue;
use crate::openai::Shape;
use crate::relay::{Relay, Step};
use crate::request::{self, Endpoint};

/// The request id, on every answer of the completion endpoints.
pub const REQUEST_ID_HEADER: &str = "x-triage-request-id";
/// The tier that answered (non-streamed answers).
pub const TIER_HEADER: &str = "x-triage-tier";
/// The router's score (non-streamed answers that were scored).
pub const SCORE_HEADER: &str = "x-triage-score";
/// The backend model that answered (non-streamed answers).
pub const MODEL_HEADER: &str = "x-triage-model";
/// Request fields accepted but not forwarded yet.
pub const IGNORED_HEADER: &str = "x-triage-ignored-params";

/// What every handler shares.
pub struct AppState {
    pub(crate) auth: crate::auth::Authenticator,
    pub(crate) prices: crate::prices::Prices,
    pub(crate) client: TriageClient,
    pub(crate) nats: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) ns: Namespace,
    pub(crate) catalogue: Catalogue,
    pub(crate) config: GatewayConfig,
    pub(crate) metrics: GatewayMetrics,
    /// When the gateway started, Unix seconds (the models' `created`).
    pub(crate) started: u64,
}

/// The API's routes.
pub fn routes(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/feedback", post(feedback))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/health", get(health::handler))
        .fallback(|uri: Uri| async move { ApiError::unknown_path(uri.path()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = s.auth.authenticate(&headers).await {
        return e.into_response();
    }
    Json(s.catalogue.list(s.started)).into_response()
}

async fn model(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = s.auth.authenticate(&headers).await {
        return e.into_response();
    }
    match s.catalogue.resolve(&id) {
        Some(m) => Json(s.catalogue.card(m, s.started)).into_response(),
        None => ApiError::unknown_model(&id).into_response(),
    }
}

async fn chat(
    s: State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete(s.0, Endpoint::Chat, &headers, body).await
}

async fn feedback(
    s: State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    crate::feedback::handle(&s.0, &headers, body).await
}

async fn completions(
    s: State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete(s.0, Endpoint::Completions, &headers, body).await
}

/// The key's checks for a parsed request: its tenant set from the key, the
/// model allowed, rates and the budget. Tokens counted against the
/// per-minute limit: the prompt's estimate plus what may be generated.
async fn authorize(s: &AppState, identity: &Identity, p: &mut Prepared) -> Result<(), ApiError> {
    let messages = p.request.chat_messages();
    let prompt = triage_token_estimate::count_chat(
        messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str())),
    );
    let tokens = prompt.saturating_add(p.request.max_tokens.unwrap_or(DEFAULT_TOKEN_CHARGE));
    s.auth.admit(identity, &p.model, tokens)?;
    s.auth.within_budget(identity).await?;
    p.request.tenant = identity.tenant();
    Ok(())
}

/// Tokens charged to a per-minute limit for a request without `max_tokens`.
const DEFAULT_TOKEN_CHARGE: u32 = 256;

/// A checked request, ready to queue.
struct Prepared {
    endpoint: Endpoint,
    /// The catalogue name asked for (echoed in `model`, used as label).
    model: String,
    request: Request,
    include_usage: bool,
    ignored: Vec<String>,
}

fn prepare(
    s: &AppState,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
    request_id: &str,
) -> Result<Prepared, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(s.config.max_body_bytes)
        } else {
            ApiError::invalid(
                None,
                format!("the body could not be read: {}", r.body_text()),
            )
        }
    })?;
    let parsed = request::parse(endpoint, &body)?;
    let model = s
        .catalogue
        .resolve(&parsed.model)
        .ok_or_else(|| ApiError::unknown_model(&parsed.model))?;
    let mut request = parsed.request;
    request.id = request_id.to_string();
    request.tier = model.tier;
    let timeout_ms = u64::try_from(s.config.request_timeout.as_millis()).unwrap_or(u64::MAX);
    request.deadline_ms = Some(triage_protocol::now_ms().saturating_add(timeout_ms));
    if s.nats.connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::unavailable(
            "the gateway is not connected to NATS",
        ));
    }
    Ok(Prepared {
        endpoint,
        model: model.id.clone(),
        request,
        include_usage: parsed.include_usage,
        ignored: parsed.ignored,
    })
}

async fn complete(
    s: Arc<AppState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = uuid::Uuid::now_v7().to_string();
    let span = crate::trace_context::request_span(headers, &request_id, endpoint.label());
    let (model, mut response) = answer(&s, endpoint, headers, body, &request_id)
        .instrument(span)
        .await;
    insert(response.headers_mut(), REQUEST_ID_HEADER, &request_id);
    s.metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint: endpoint.label(),
            model,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The response to one request and the model it named.
async fn answer(
    s: &AppState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_id: &str,
) -> (String, Response) {
    // An unauthenticated caller learns nothing about its body first.
    let prepared = async {
        let identity = s.auth.authenticate(headers).await?;
        let mut p = prepare(s, endpoint, body, request_id)?;
        authorize(s, &identity, &mut p).await?;
        Ok::<_, ApiError>(p)
    }
    .await;
    match prepared {
        Err(e) => ("unknown".to_string(), e.into_response()),
        Ok(p) => {
            let model = p.model.clone();
            let ignored = p.ignored.join(",");
            let ticket = Ticket::new(&s.metrics, &model);
            let mut response = if p.request.stream {
                stream(s, p, request_id, ticket).await
            } else {
                whole(s, p, request_id).await
            };
            if !ignored.is_empty() {
                insert(response.headers_mut(), IGNORED_HEADER, &ignored);
            }
            (model, response)
        }
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Tier, score and model headers, for answers whose routing is known
/// before their first byte.
fn routing_headers(headers: &mut HeaderMap, c: &Completion) {
    insert(headers, TIER_HEADER, &c.tier.to_string());
    if let Some(r) = &c.routing {
        insert(headers, SCORE_HEADER, &format!("{:.4}", r.score));
    }
    insert(headers, MODEL_HEADER, &c.model);
}

async fn whole(s: &AppState, p: Prepared, request_id: &str) -> Response {
    let key = RequestKey::new(p.request.tenant.as_deref(), request_id);
    let mut guard = CancelOnDrop::new(s.nats.clone(), &s.ns, key);
    let asked = s.client.ask(p.request, s.config.request_timeout).await;
    guard.disarm();
    let answer = match asked {
        Ok(a) => a,
        Err(e) => return p.endpoint.name_input(e.into()).into_response(),
    };
    let Some(completion) = answer.completion else {
        return ApiError::internal("the answer ended without a completion").into_response();
    };
    let shape =
        Shape::new(p.endpoint, request_id, &p.model, false).with_prices(s.prices.current().await);
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        shape.whole(&answer.text, &completion),
    )
        .into_response();
    routing_headers(response.headers_mut(), &completion);
    response
}

async fn next_step(replies: &mut ReplyStream, relay: &mut Relay) -> Step {
    loop {
        let step = match replies.next().await {
            // The stream ended without a final reply: treated as a close.
            None => Step::Fail(ApiError::unavailable(
                "the reply subscription ended before the answer",
            )),
            Some(Err(e)) => Step::Fail(e.into()),
            Some(Ok(reply)) => relay.step(reply),
        };
        if !matches!(step, Step::Skip) {
            return step;
        }
    }
}

/// Streams the answer. The status is decided by the first reply: an error
/// before any text is an ordinary error response with its own status; once
/// text was sent (200), a failure ends the stream with an error event.
async fn stream(s: &AppState, p: Prepared, request_id: &str, mut ticket: Ticket) -> Response {
    let key = RequestKey::new(p.request.tenant.as_deref(), request_id);
    let mut guard = CancelOnDrop::new(s.nats.clone(), &s.ns, key);
    let mut replies = match s.client.submit(p.request, s.config.request_timeout).await {
        Ok(r) => r,
        Err(e) => {
            guard.disarm();
            return p.endpoint.name_input(e.into()).into_response();
        }
    };
    let mut relay = Relay::default();
    let shape = Shape::new(p.endpoint, request_id, &p.model, p.include_usage)
        .with_prices(s.prices.current().await);
    let mut head = shape.start();
    let mut finished = None;
    match next_step(&mut replies, &mut relay).await {
        Step::Fail(e) => {
            guard.disarm();
            return p.endpoint.name_input(e).into_response();
        }
        Step::Text(text) => {
            ticket.first_token();
            head.extend(shape.delta_with(&text, relay.take_logprobs().as_deref()));
        }
        Step::Finish {
            completion,
            unsent_text,
        } => {
            if let Some(text) = unsent_text {
                ticket.first_token();
                head.extend(shape.delta(&text));
            }
            head.extend(shape.finish(&completion));
            finished = Some(completion);
            guard.disarm();
        }
        Step::Skip => unreachable!("next_step skips empty chunks"),
    }
    let live = Live {
        replies,
        relay,
        shape,
        ticket,
        metrics: s.metrics.clone(),
        finished: finished.is_some(),
        guard,
    };
    let rest = futures::stream::unfold(live, Live::next_frames);
    let head = futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from(head)) });
    let mut response = Response::new(Body::from_stream(futures::StreamExt::chain(head, rest)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(c) = finished {
        routing_headers(headers, &c);
    }
    response
}

/// A stream after its first frames.
struct Live {
    replies: ReplyStream,
    relay: Relay,
    shape: Shape,
    ticket: Ticket,
    metrics: GatewayMetrics,
    finished: bool,
    /// Cancels the generation if the body is dropped before its end.
    guard: CancelOnDrop,
}

impl Live {
    async fn next_frames(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.finished {
            return None;
        }
        let frames = match next_step(&mut self.replies, &mut self.relay).await {
            Step::Text(text) => {
                self.ticket.first_token();
                let logprobs = self.relay.take_logprobs();
                self.shape.delta_with(&text, logprobs.as_deref())
            }
            Step::Finish {
                completion,
                unsent_text,
            } => {
                self.finished = true;
                self.guard.disarm();
                let mut out = unsent_text.map_or_else(Vec::new, |t| self.shape.delta(&t));
                out.extend(self.shape.finish(&completion));
                out
            }
            Step::Fail(e) => {
                self.finished = true;
                self.guard.disarm();
                let code = e.code.clone().unwrap_or_default();
                tracing::warn!(error = %e, code, "stream ended by an error event");
                self.metrics
                    .stream_errors
                    .get_or_create(&StreamErrorLabels { code })
                    .inc();
                self.shape.error(&e)
            }
            Step::Skip => unreachable!("next_step skips empty chunks"),
        };
        Some((Ok(Bytes::from(frames)), self))
    }
}

/// One request being answered: counted in flight until dropped (for a
/// stream, when its body ends or the client goes away), then timed.
struct Ticket {
    metrics: GatewayMetrics,
    labels: ModelLabels,
    arrived: Instant,
    first_token_seen: bool,
}

impl Ticket {
    fn new(metrics: &GatewayMetrics, model: &str) -> Self {
        metrics.in_flight.inc();
        Self {
            metrics: metrics.clone(),
            labels: ModelLabels {
                model: model.to_string(),
            },
            arrived: Instant::now(),
            first_token_seen: false,
        }
    }

    fn first_token(&mut self) {
        if !self.first_token_seen {
            self.first_token_seen = true;
            self.metrics
                .ttft
                .get_or_create(&self.labels)
                .observe(self.arrived.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics
            .duration
            .get_or_create(&self.labels)
            .observe(self.arrived.elapsed().as_secs_f64());
    }
}
