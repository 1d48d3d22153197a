//! HTTP side: routes, the chat-completion handler and the SSE producer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::api::{
    error_body, AssistantMessage, ChatCompletionRequest, ChoiceLogprobs, Chunk, ChunkChoice,
    Completion, CompletionChoice, Delta, TokenLogprob, TopLogprob, Usage,
};
use crate::config::{FaultConfig, FaultKind, SimConfig};
use crate::faults::FaultState;
use crate::metrics::SimMetrics;
use crate::rng::{fnv1a, mix, SimRng, FNV_OFFSET};
use crate::text::{generate, GenParams, Generation};

const LATENCY_SALT: u64 = 0x1a7e;
const ID_SALT: u64 = 0x1d;

/// Counters a test can read through [`crate::SimHandle::stats`] or `GET /sim/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// Chat-completion requests received (the request number of the next one).
    pub requests_received: u64,
    /// Requests answered completely (JSON body sent, or `[DONE]` sent).
    pub completed: u64,
    /// Requests refused by validation (400/404).
    pub rejected: u64,
    /// Injected error statuses.
    pub injected_errors: u64,
    /// Injected hangs.
    pub injected_hangs: u64,
    /// Injected connection drops.
    pub injected_drops: u64,
    /// Injected malformed SSE lines / bodies.
    pub injected_malformed: u64,
    /// Generations holding a sequence slot now.
    pub running: u64,
    /// Requests waiting for a slot now.
    pub waiting: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    completed: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    hangs: AtomicU64,
    drops: AtomicU64,
    malformed: AtomicU64,
    running: AtomicU64,
    waiting: AtomicU64,
}

/// Shared state of one simulator instance.
#[derive(Debug)]
pub struct Simulator {
    pub(crate) config: SimConfig,
    pub(crate) faults: FaultState,
    pub(crate) metrics: SimMetrics,
    slots: Arc<Semaphore>,
    counters: Counters,
    /// Cancelled to cut every open stream and hang at once (a crash).
    pub(crate) kill: CancellationToken,
    started_unix: u64,
}

impl Simulator {
    /// State for `config` (assumed validated).
    pub fn new(config: SimConfig) -> Self {
        Self {
            faults: FaultState::new(config.seed, config.faults.clone()),
            metrics: SimMetrics::new(&config.model),
            slots: Arc::new(Semaphore::new(config.max_num_seqs as usize)),
            counters: Counters::default(),
            kill: CancellationToken::new(),
            started_unix: unix_now(),
            config,
        }
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        let c = &self.counters;
        SimStats {
            requests_received: c.received.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            injected_errors: c.errors.load(Ordering::Relaxed),
            injected_hangs: c.hangs.load(Ordering::Relaxed),
            injected_drops: c.drops.load(Ordering::Relaxed),
            injected_malformed: c.malformed.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed),
            waiting: c.waiting.load(Ordering::Relaxed),
        }
    }
}

/// All routes of the simulator.
pub fn router(sim: Arc<Simulator>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/sim/faults", get(get_faults).post(set_faults))
        .route("/sim/stats", get(stats))
        .with_state(sim)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error_response(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(error_body(status, message))).into_response()
}

/// vLLM's `--api-key` check; `None` when allowed, else its 401 answer.
fn unauthorized(sim: &Simulator, headers: &HeaderMap) -> Option<Response> {
    let key = sim.config.api_key.as_deref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "Unauthorized"})),
        )
            .into_response(),
    )
}

async fn health(State(sim): State<Arc<Simulator>>) -> StatusCode {
    if sim.faults.unhealthy() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn models(State(sim): State<Arc<Simulator>>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&sim, &headers) {
        return denied;
    }
    let model = &sim.config.model;
    Json(json!({
        "object": "list",
        "data": [{
            "id": model,
            "object": "model",
            "created": sim.started_unix,
            "owned_by": "vllm",
            "root": model,
            "parent": null,
            "max_model_len": sim.config.max_model_len,
            "permission": [],
        }],
    }))
    .into_response()
}

async fn metrics(State(sim): State<Arc<Simulator>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        sim.metrics.encode(),
    )
        .into_response()
}

async fn get_faults(State(sim): State<Arc<Simulator>>) -> Json<FaultConfig> {
    Json(sim.faults.get())
}

async fn set_faults(State(sim): State<Arc<Simulator>>, body: Bytes) -> Response {
    let faults: FaultConfig = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return error_response(400, &format!("invalid fault settings: {e}")),
    };
    if let Err(e) = faults.validate() {
        return error_response(400, &e.to_string());
    }
    tracing::info!(?faults, "fault settings replaced");
    sim.faults.set(faults.clone());
    Json(faults).into_response()
}

async fn stats(State(sim): State<Arc<Simulator>>) -> Json<SimStats> {
    Json(sim.stats())
}

/// A request that passed validation, with everything needed to answer it.
struct Plan {
    request_no: u64,
    id: String,
    created: u64,
    prompt_tokens: u32,
    choices: Vec<Generation>,
    logprobs: bool,
    include_usage: bool,
    stream: bool,
    fault: FaultKind,
    faults: FaultConfig,
    latency: SimRng,
    received_at: Instant,
}

async fn chat_completions(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&sim, &headers) {
        return denied;
    }
    let received_at = Instant::now();
    let request_no = sim.counters.received.fetch_add(1, Ordering::Relaxed);
    let (fault, faults) = sim.faults.decide(request_no);

    match fault {
        FaultKind::Error(status) => {
            sim.counters.errors.fetch_add(1, Ordering::Relaxed);
            sim.metrics.fault("error");
            tracing::info!(request_no, status, "injecting error status");
            let message = match status {
                503 => "The server is temporarily unable to serve requests (simulated fault)",
                s if s >= 500 => "Internal server error (simulated fault)",
                _ => "Request refused (simulated fault)",
            };
            return error_response(status, message);
        }
        FaultKind::Hang => {
            sim.counters.hangs.fetch_add(1, Ordering::Relaxed);
            sim.metrics.fault("hang");
            tracing::info!(request_no, hang_ms = faults.hang_ms, "injecting hang");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(faults.hang_ms)) => {}
                _ = sim.kill.cancelled() => return error_response(503, "simulator killed"),
            }
        }
        _ => {}
    }

    let request: ChatCompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            sim.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return error_response(400, &format!("Invalid request body: {e}"));
        }
    };
    let plan = match plan(&sim, request, request_no, fault, faults, received_at) {
        Ok(plan) => plan,
        Err((status, message)) => {
            sim.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(request_no, status, %message, "request rejected");
            return error_response(status, &message);
        }
    };
    sim.metrics
        .prompt_tokens
        .inc_by(u64::from(plan.prompt_tokens));

    if plan.stream {
        stream_response(sim, plan)
    } else {
        complete_response(sim, plan).await
    }
}

/// Validates like vLLM and generates the text of every choice.
fn plan(
    sim: &Simulator,
    request: ChatCompletionRequest,
    request_no: u64,
    fault: FaultKind,
    faults: FaultConfig,
    received_at: Instant,
) -> Result<Plan, (u16, String)> {
    let config = &sim.config;
    if let Some(model) = &request.model {
        if model != &config.model {
            return Err((404, format!("The model `{model}` does not exist.")));
        }
    }
    if request.messages.is_empty() {
        return Err((400, "messages must not be empty".to_owned()));
    }
    let n = request.n.unwrap_or(1);
    if n == 0 {
        return Err((400, "n must be at least 1, got 0.".to_owned()));
    }
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    if max_tokens == Some(0) {
        return Err((400, "max_tokens must be at least 1, got 0.".to_owned()));
    }
    let logprobs = request.logprobs.unwrap_or(false);
    let top_logprobs = request.top_logprobs.unwrap_or(0);
    if top_logprobs > 20 {
        return Err((
            400,
            format!("top_logprobs must be between 0 and 20, got {top_logprobs}."),
        ));
    }
    if top_logprobs > 0 && !logprobs {
        return Err((
            400,
            "when using `top_logprobs`, `logprobs` must be set to true.".to_owned(),
        ));
    }

    let texts: Vec<(String, String)> = request
        .messages
        .iter()
        .map(|m| {
            (
                m.role.clone(),
                m.content.as_ref().map(|c| c.text()).unwrap_or_default(),
            )
        })
        .collect();
    let prompt_tokens =
        triage_token_estimate::count_chat(texts.iter().map(|(r, c)| (r.as_str(), c.as_str())));
    let max_len = config.max_model_len;
    let max_tokens = match max_tokens {
        Some(m) if prompt_tokens + m > max_len => {
            return Err((
                400,
                format!(
                    "This model's maximum context length is {max_len} tokens. However, you \
                     requested {} tokens ({prompt_tokens} in the messages, {m} in the \
                     completion). Please reduce the length of the messages or completion.",
                    prompt_tokens + m
                ),
            ));
        }
        Some(m) => m,
        None if prompt_tokens >= max_len => {
            return Err((
                400,
                format!(
                    "This model's maximum context length is {max_len} tokens. However, you \
                     requested {prompt_tokens} tokens in the messages, Please reduce the \
                     length of the messages."
                ),
            ));
        }
        None => max_len - prompt_tokens,
    };

    let prompt_hash = texts.iter().fold(FNV_OFFSET, |h, (r, c)| {
        fnv1a(fnv1a(fnv1a(h, r.as_bytes()), b"\x00"), c.as_bytes())
    });
    let greedy = request.temperature == Some(0.0);
    let json = request.wants_json();
    let stop = request.stop.map(|s| s.into_vec()).unwrap_or_default();
    let params = GenParams {
        json,
        natural_len: (config.output_tokens_min, config.output_tokens_max),
        max_tokens,
        stop: &stop,
        logprob_range: (config.logprob_min, config.logprob_max),
        top_logprobs,
    };
    let scripted = texts
        .last()
        .and_then(|(_, last)| config.scripted_reply(last));
    let choices = (0..n)
        .map(|index| {
            if let Some(reply) = scripted {
                return crate::text::scripted(reply, max_tokens, config.logprob_max);
            }
            let seed = mix(&[
                config.seed,
                request.seed.unwrap_or(0) as u64,
                prompt_hash,
                if greedy { 0 } else { u64::from(index) },
            ]);
            generate(&mut SimRng::new(seed), &params)
        })
        .collect();

    let mut id_rng = SimRng::new(mix(&[config.seed, ID_SALT, request_no]));
    Ok(Plan {
        request_no,
        id: format!(
            "chatcmpl-{:016x}{:016x}",
            id_rng.next_u64(),
            id_rng.next_u64()
        ),
        created: unix_now(),
        prompt_tokens,
        choices,
        logprobs,
        include_usage: request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        stream: request.stream.unwrap_or(false),
        fault,
        faults,
        latency: SimRng::new(mix(&[config.seed, LATENCY_SALT, request_no])),
        received_at,
    })
}

/// Marks a request as waiting for a sequence slot while it exists.
struct Waiting<'a>(&'a Simulator);

impl<'a> Waiting<'a> {
    fn new(sim: &'a Simulator) -> Self {
        sim.metrics.waiting.inc();
        sim.counters.waiting.fetch_add(1, Ordering::Relaxed);
        Self(sim)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.metrics.waiting.dec();
        self.0.counters.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A held sequence slot; keeps `num_requests_running` right however the generation ends.
struct Slot {
    sim: Arc<Simulator>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sim.metrics.running.dec();
        self.sim.counters.running.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn acquire_slot(sim: &Arc<Simulator>) -> Slot {
    let waiting = Waiting::new(sim);
    let permit = match sim.slots.clone().acquire_owned().await {
        Ok(p) => p,
        // The semaphore is never closed.
        Err(_) => unreachable!("sequence slots semaphore closed"),
    };
    drop(waiting);
    sim.metrics.running.inc();
    sim.counters.running.fetch_add(1, Ordering::Relaxed);
    Slot {
        sim: sim.clone(),
        _permit: permit,
    }
}

fn token_logprobs(gen: &Generation, range: std::ops::Range<usize>) -> ChoiceLogprobs {
    ChoiceLogprobs {
        content: gen.tokens[range]
            .iter()
            .map(|t| TokenLogprob {
                token: t.text.clone(),
                logprob: t.logprob,
                bytes: t.text.as_bytes().to_vec(),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|(token, logprob)| TopLogprob {
                        token: token.clone(),
                        logprob: *logprob,
                        bytes: token.as_bytes().to_vec(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn completion_tokens(plan: &Plan) -> u32 {
    plan.choices.iter().map(|g| g.tokens.len() as u32).sum()
}

/// Why the SSE producer stopped early.
#[derive(Debug)]
enum Stop {
    /// The client went away.
    Disconnected,
    /// A drop fault or a kill cut the connection.
    Cut,
}

type Frame = Result<Bytes, std::io::Error>;

/// Writes SSE frames, applying the drop/malformed faults by event count.
struct SseOut {
    tx: mpsc::Sender<Frame>,
    kill: CancellationToken,
    sent: u32,
    drop_after: Option<u32>,
    malformed_after: Option<u32>,
}

impl SseOut {
    async fn raw(&self, frame: Frame) -> Result<(), Stop> {
        self.tx.send(frame).await.map_err(|_| Stop::Disconnected)
    }

    async fn cut(&self, why: &str) -> Stop {
        // hyper discards bytes it has not flushed when the body fails, so let it drain and
        // flush what was sent before (it flushes once the body stream is pending).
        for _ in 0..200 {
            if self.tx.capacity() == self.tx.max_capacity() || self.tx.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = self
            .tx
            .send(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                why.to_owned(),
            )))
            .await;
        Stop::Cut
    }

    /// Applies faults due before the next event.
    async fn before_event(&mut self) -> Result<(), Stop> {
        if self.kill.is_cancelled() {
            return Err(self.cut("simulator killed").await);
        }
        if self.drop_after == Some(self.sent) {
            return Err(self.cut("simulated connection drop").await);
        }
        if self.malformed_after == Some(self.sent) {
            self.malformed_after = None;
            self.raw(Ok(Bytes::from_static(
                b"data: {\"id\":\"chatcmpl-malformed\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\n\n",
            )))
            .await?;
        }
        Ok(())
    }

    async fn event(&mut self, json: &impl Serialize) -> Result<(), Stop> {
        self.before_event().await?;
        let mut frame = Vec::with_capacity(256);
        frame.extend_from_slice(b"data: ");
        // Serialising these plain structs cannot fail.
        serde_json::to_writer(&mut frame, json).expect("chunk serialises");
        frame.extend_from_slice(b"\n\n");
        self.raw(Ok(Bytes::from(frame))).await?;
        self.sent += 1;
        Ok(())
    }

    async fn done(&mut self) -> Result<(), Stop> {
        // Faults whose event count was never reached happen just before `[DONE]`.
        if self.drop_after.is_some() {
            self.drop_after = Some(self.sent);
        }
        if self.malformed_after.is_some() {
            self.malformed_after = Some(self.sent);
        }
        self.before_event().await?;
        self.raw(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await
    }

    async fn pause(&self, ms: u64) -> Result<(), Stop> {
        if ms == 0 {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
            _ = self.tx.closed() => Err(Stop::Disconnected),
            _ = self.kill.cancelled() => Err(self.cut("simulator killed").await),
        }
    }
}

fn stream_response(sim: Arc<Simulator>, plan: Plan) -> Response {
    let (tx, rx) = mpsc::channel::<Frame>(32);
    let request_no = plan.request_no;
    tokio::spawn(async move {
        if let Err(stop) = produce_stream(&sim, plan, tx).await {
            tracing::debug!(request_no, ?stop, "stream ended early");
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    let mut response = Response::new(Body::from_stream(frames));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    response
}

async fn produce_stream(
    sim: &Arc<Simulator>,
    mut plan: Plan,
    tx: mpsc::Sender<Frame>,
) -> Result<(), Stop> {
    let config = &sim.config;
    let mut out = SseOut {
        tx,
        kill: sim.kill.clone(),
        sent: 0,
        drop_after: None,
        malformed_after: None,
    };
    match plan.fault {
        FaultKind::Drop => {
            sim.counters.drops.fetch_add(1, Ordering::Relaxed);
            sim.metrics.fault("drop");
            out.drop_after = Some(plan.faults.drop_after_chunks);
        }
        FaultKind::Malformed => {
            sim.counters.malformed.fetch_add(1, Ordering::Relaxed);
            sim.metrics.fault("malformed");
            out.malformed_after = Some(plan.faults.malformed_after_chunks);
        }
        _ => {}
    }

    let _slot = tokio::select! {
        slot = acquire_slot(sim) => slot,
        _ = out.tx.closed() => return Err(Stop::Disconnected),
        _ = out.kill.cancelled() => return Err(out.cut("simulator killed").await),
    };
    let ttft = plan.latency.jittered(config.ttft_ms, config.ttft_jitter_ms);
    out.pause(ttft).await?;

    let (id, model, created) = (plan.id.as_str(), config.model.as_str(), plan.created);
    let chunk = |choices| Chunk {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices,
        usage: None,
    };
    for index in 0..plan.choices.len() as u32 {
        let role = ChunkChoice {
            index,
            delta: Delta {
                role: Some("assistant"),
                content: Some(""),
            },
            logprobs: None,
            finish_reason: None,
            stop_reason: None,
        };
        out.event(&chunk(vec![role])).await?;
    }

    let steps = plan
        .choices
        .iter()
        .map(|g| g.tokens.len())
        .max()
        .unwrap_or(0);
    for step in 0..steps {
        if step > 0 {
            let itl = plan.latency.jittered(config.itl_ms, config.itl_jitter_ms);
            out.pause(itl).await?;
        }
        for (index, gen) in plan.choices.iter().enumerate() {
            let Some(token) = gen.tokens.get(step) else {
                continue;
            };
            let last = step + 1 == gen.tokens.len();
            let choice = ChunkChoice {
                index: index as u32,
                delta: Delta {
                    role: None,
                    content: Some(&token.text),
                },
                logprobs: plan.logprobs.then(|| token_logprobs(gen, step..step + 1)),
                finish_reason: last.then(|| gen.finish.reason()),
                stop_reason: last.then(|| gen.finish.stop_reason()),
            };
            out.event(&chunk(vec![choice])).await?;
            sim.metrics.generation_tokens.inc();
        }
        if step == 0 {
            sim.metrics
                .ttft
                .observe(plan.received_at.elapsed().as_secs_f64());
        }
    }

    if plan.include_usage {
        let usage = Chunk {
            usage: Some(Usage::new(plan.prompt_tokens, completion_tokens(&plan))),
            ..chunk(Vec::new())
        };
        out.event(&usage).await?;
    }
    out.done().await?;
    finish_metrics(sim, &plan);
    Ok(())
}

fn finish_metrics(sim: &Simulator, plan: &Plan) {
    sim.counters.completed.fetch_add(1, Ordering::Relaxed);
    sim.metrics
        .e2e
        .observe(plan.received_at.elapsed().as_secs_f64());
    for gen in &plan.choices {
        sim.metrics.finished(gen.finish.reason());
    }
}

async fn complete_response(sim: Arc<Simulator>, mut plan: Plan) -> Response {
    let config = &sim.config;
    let slot = acquire_slot(&sim).await;
    let ttft = plan.latency.jittered(config.ttft_ms, config.ttft_jitter_ms);
    let longest = plan
        .choices
        .iter()
        .map(|g| g.tokens.len())
        .max()
        .unwrap_or(0);
    let generation: u64 = (1..longest)
        .map(|_| plan.latency.jittered(config.itl_ms, config.itl_jitter_ms))
        .sum();
    for (ms, first) in [(ttft, true), (generation, false)] {
        if ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = sim.kill.cancelled() => return error_response(503, "simulator killed"),
            }
        }
        if first {
            sim.metrics
                .ttft
                .observe(plan.received_at.elapsed().as_secs_f64());
        }
    }
    sim.metrics
        .generation_tokens
        .inc_by(u64::from(completion_tokens(&plan)));
    drop(slot);

    let completion = Completion {
        id: plan.id.clone(),
        object: "chat.completion",
        created: plan.created,
        model: config.model.clone(),
        choices: plan
            .choices
            .iter()
            .enumerate()
            .map(|(index, gen)| CompletionChoice {
                index: index as u32,
                message: AssistantMessage {
                    role: "assistant",
                    reasoning_content: None,
                    content: gen.text(),
                    tool_calls: Vec::new(),
                },
                logprobs: plan
                    .logprobs
                    .then(|| token_logprobs(gen, 0..gen.tokens.len())),
                finish_reason: gen.finish.reason(),
                stop_reason: gen.finish.stop_reason().map(str::to_owned),
            })
            .collect(),
        usage: Usage::new(plan.prompt_tokens, completion_tokens(&plan)),
        prompt_logprobs: None,
    };
    // Serialising these plain structs cannot fail.
    let body = serde_json::to_vec(&completion).expect("completion serialises");
    let json_response = |body: Body| {
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    match plan.fault {
        FaultKind::Drop => {
            sim.counters.drops.fetch_add(1, Ordering::Relaxed);
            sim.metrics.fault("drop");
            let half = Bytes::copy_from_slice(&body[..body.len() / 2]);
            // The pause lets hyper flush the headers and the first half before the cut.
            let frames = futures::stream::iter([Ok::<_, std::io::Error>(half)]).chain(
                futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "simulated connection drop",
                    ))
                }),
            );
            json_response(Body::from_stream(frames))
        }
        FaultKind::Malformed => {
            sim.counters.malformed.fetch_add(1, Ordering::Relaxed);
            sim.metrics.fault("malformed");
            json_response(Body::from(body[..body.len() / 2].to_vec()))
        }
        _ => {
            finish_metrics(&sim, &plan);
            json_response(Body::from(body))
        }
    }
}
