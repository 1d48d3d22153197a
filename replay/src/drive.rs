//! Sending requests through Triage exactly as a client would, and timing
//! what comes back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;
use triage_backend::{
    BackendClient, BackendConfig, ChatMessage as BackendMessage, ChatRequest, StreamEvent,
};
use triage_bus::{ClientError, TriageClient};
use triage_protocol::{Reply, Request};

use crate::dataset::Row;
use crate::outcome::Outcome;
use crate::schedule::{self, Arrivals};

/// How load is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Requests sent on a schedule regardless of answers.
    Open {
        /// The schedule.
        arrivals: Arrivals,
        /// How many.
        count: usize,
    },
    /// A fixed number in flight; each answer sends the next.
    Closed {
        /// Requests in flight.
        concurrency: usize,
        /// How many in all.
        count: usize,
    },
    /// The rows' recorded `timestamp_ms`, played `speed` times faster.
    Trace {
        /// Speed factor.
        speed: f64,
    },
}

impl Load {
    /// How many requests the run sends over `rows` rows.
    pub fn count(&self, rows: usize) -> usize {
        match *self {
            Load::Open { count, .. } | Load::Closed { count, .. } => count,
            Load::Trace { .. } => rows,
        }
    }

    /// In words, for the report.
    pub fn describe(&self) -> String {
        match *self {
            Load::Open {
                arrivals: Arrivals::Fixed { rate },
                count,
            } => format!("open loop, {count} requests at a fixed {rate} req/s"),
            Load::Open {
                arrivals: Arrivals::Poisson { rate, seed },
                count,
            } => format!(
                "open loop, {count} requests, Poisson arrivals at {rate} req/s (seed {seed})"
            ),
            Load::Closed { concurrency, count } => {
                format!("closed loop, {count} requests, {concurrency} in flight")
            }
            Load::Trace { speed } => format!("trace replay at {speed}x recorded speed"),
        }
    }
}

/// Where requests go.
#[derive(Clone)]
pub enum Via {
    /// Through Triage: published on `llm.requests` like any client does.
    Triage(TriageClient),
    /// Straight to one OpenAI-compatible server, bypassing Triage (the
    /// latency baseline).
    Direct(Direct),
}

/// An OpenAI-compatible server requests go to directly.
#[derive(Debug, Clone)]
pub struct Direct {
    /// The streaming client (the workers' own).
    pub client: BackendClient,
    /// The `model` field sent (`None`: not sent).
    pub model: Option<String>,
}

impl Direct {
    /// A client for `url` whose waits are bounded by `timeout`; the model
    /// is `model`, else the first of `GET /v1/models`. When the server
    /// cannot say, requests go without a model name (and will most likely
    /// fail, each recorded as an error) and the second value says why.
    pub async fn new(
        url: &str,
        model: Option<String>,
        timeout: Duration,
    ) -> Result<(Self, Option<String>), triage_backend::BackendError> {
        let config = BackendConfig {
            first_byte_timeout: timeout,
            idle_timeout: timeout,
            request_timeout: timeout,
            ..BackendConfig::new(url)
        };
        let client = BackendClient::new(config)?;
        if model.is_some() {
            return Ok((Self { client, model }, None));
        }
        let (model, note) = match client.models().await {
            Ok(list) => match list.data.into_iter().next() {
                Some(card) => (Some(card.id), None),
                None => (
                    None,
                    Some(format!(
                        "{}/v1/models lists no model; sending requests without one (set --direct-model)",
                        client.base_url()
                    )),
                ),
            },
            Err(e) => (
                None,
                Some(format!(
                    "cannot ask {} for its model ({e}); sending requests without one",
                    client.base_url()
                )),
            ),
        };
        Ok((Self { client, model }, note))
    }

    /// `url (model m)`, for the report.
    pub fn describe(&self) -> String {
        format!(
            "direct to {} (model {})",
            self.client.base_url(),
            self.model.as_deref().unwrap_or("not set")
        )
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// `routed` or `baseline`.
    pub name: String,
    /// Force every request to this tier (the baseline run uses 2).
    pub force_tier: Option<u8>,
    /// How load is applied.
    pub load: Load,
    /// Bound on one answer.
    pub timeout: Duration,
    /// `max_tokens` for rows that do not set it.
    pub max_tokens: u32,
    /// Appended to ids so runs never collide in JetStream or the ledger.
    pub run_tag: String,
    /// Print this many answers as they finish.
    pub show_answers: usize,
}

/// Sends the run and returns one outcome per request sent, in send order,
/// and the wall time. When `cancel` fires no new request is sent and the
/// ones in flight are recorded as unfinished.
pub async fn run(
    via: &Via,
    rows: &[Row],
    spec: &RunSpec,
    cancel: &CancellationToken,
    progress: &ProgressBar,
) -> (Vec<Outcome>, f64) {
    let count = spec.load.count(rows.len());
    let requests: Vec<(Row, Request)> = (0..count)
        .map(|i| {
            let row = rows[i % rows.len()].clone();
            let tag = if count > rows.len() {
                format!("{}-{}", spec.run_tag, i / rows.len())
            } else {
                spec.run_tag.clone()
            };
            let mut req = row.to_request(spec.max_tokens, &tag);
            req.tier = spec.force_tier;
            (row, req)
        })
        .collect();
    progress.set_length(count as u64);
    let started = Instant::now();
    let shown = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let ctx = Ctx {
        via: via.clone(),
        timeout: spec.timeout,
        cancel: cancel.clone(),
        progress: progress.clone(),
        shown,
        show: spec.show_answers,
        errors,
        started,
    };
    let outcomes = match spec.load {
        Load::Open { arrivals, .. } => {
            let offsets = schedule::offsets(arrivals, count);
            send_on_schedule(&ctx, requests, offsets).await
        }
        Load::Trace { speed } => {
            let stamps: Vec<Option<u64>> = requests.iter().map(|(r, _)| r.timestamp_ms).collect();
            send_on_schedule(&ctx, requests, schedule::trace_offsets(&stamps, speed)).await
        }
        Load::Closed { concurrency, .. } => send_closed(&ctx, requests, concurrency.max(1)).await,
    };
    (outcomes, started.elapsed().as_secs_f64())
}

#[derive(Clone)]
struct Ctx {
    via: Via,
    timeout: Duration,
    cancel: CancellationToken,
    progress: ProgressBar,
    shown: Arc<AtomicUsize>,
    show: usize,
    errors: Arc<AtomicUsize>,
    started: Instant,
}

async fn send_on_schedule(
    ctx: &Ctx,
    requests: Vec<(Row, Request)>,
    offsets: Vec<Duration>,
) -> Vec<Outcome> {
    let mut handles = Vec::with_capacity(requests.len());
    let mut skipped = Vec::new();
    for ((row, req), at) in requests.into_iter().zip(offsets) {
        let due = ctx.started + at;
        tokio::select! {
            _ = ctx.cancel.cancelled() => {}
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        if ctx.cancel.is_cancelled() {
            skipped.push((row, req));
            continue;
        }
        let ctx = ctx.clone();
        handles.push(tokio::spawn(async move { ctx.one(row, req).await }));
    }
    let mut outcomes = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(o) = h.await {
            outcomes.push(o);
        }
    }
    // Never sent: not part of the run.
    drop(skipped);
    outcomes
}

async fn send_closed(ctx: &Ctx, requests: Vec<(Row, Request)>, concurrency: usize) -> Vec<Outcome> {
    let queue = Arc::new(tokio::sync::Mutex::new(requests.into_iter().enumerate()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ctx, queue) = (ctx.clone(), queue.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    if ctx.cancel.is_cancelled() {
                        break;
                    }
                    let Some((i, (row, req))) = queue.lock().await.next() else {
                        break;
                    };
                    done.push((i, ctx.one(row, req).await));
                }
                done
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        if let Ok(done) = w.await {
            all.extend(done);
        }
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, o)| o).collect()
}

impl Ctx {
    async fn one(&self, row: Row, request: Request) -> Outcome {
        let mut outcome = Outcome {
            id: row.id().to_string(),
            request_id: request.id.clone(),
            label_tier: row.prompt.label_tier,
            small_ok: row.prompt.small_ok,
            large_ok: row.prompt.large_ok,
            ..Outcome::default()
        };
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = self.send(request, &mut outcome) => {}
        }
        if outcome.error.is_some() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.progress.inc(1);
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        self.progress.set_message(format!(
            "{:.1} req/s, {} errors",
            self.progress.position() as f64 / elapsed,
            self.errors.load(Ordering::Relaxed)
        ));
        if outcome.ok() && self.shown.fetch_add(1, Ordering::Relaxed) < self.show {
            let line = format!(
                "── {} → {} (score {}, {})\n   Q: {}\n   A: {}",
                outcome.id,
                outcome
                    .tier
                    .map_or("direct".to_string(), |t| format!("tier {t}")),
                outcome.score.map_or("n/a".into(), |s| format!("{s:.2}")),
                outcome.reasons.join(", "),
                preview(&row.prompt.text(), 100),
                outcome.answer_preview.as_deref().unwrap_or("")
            );
            // A hidden bar (output not a terminal) drops println.
            if self.progress.is_hidden() {
                println!("{line}");
            } else {
                self.progress.println(line);
            }
        }
        outcome
    }

    async fn send(&self, request: Request, outcome: &mut Outcome) {
        match &self.via {
            Via::Triage(client) => self.ask(client, request, outcome).await,
            Via::Direct(direct) => {
                let work = ask_direct(direct, &request, outcome);
                if tokio::time::timeout(self.timeout, work).await.is_err() {
                    outcome.error = Some("client_timeout".into());
                    outcome.error_message = Some(format!("no answer within {:?}", self.timeout));
                }
            }
        }
    }

    async fn ask(&self, client: &TriageClient, request: Request, outcome: &mut Outcome) {
        let start = Instant::now();
        let mut stream = match client.submit(request, self.timeout).await {
            Ok(s) => s,
            Err(e) => {
                outcome.error = Some(client_error_code(&e));
                return;
            }
        };
        let mut text = String::new();
        let mut attempt = 0;
        while let Some(reply) = stream.next().await {
            match reply {
                Ok(Reply::Chunk(c)) => {
                    if outcome.ttft_ms.is_none() {
                        outcome.ttft_ms = Some(ms(start));
                    }
                    if c.attempt > attempt {
                        attempt = c.attempt;
                        text.clear();
                    }
                    text.push_str(&c.delta);
                }
                Ok(Reply::Completion(c)) => {
                    outcome.total_ms = Some(ms(start));
                    outcome
                        .ttft_ms
                        .get_or_insert(outcome.total_ms.unwrap_or_default());
                    outcome.tier = Some(c.tier.number());
                    outcome.prompt_tokens = c.usage.prompt_tokens;
                    outcome.completion_tokens = c.usage.completion_tokens;
                    outcome.attempts = c.attempt;
                    if let Some(r) = &c.routing {
                        outcome.score = Some(r.score);
                        outcome.reasons = r.reasons.clone();
                    }
                    let text = c.text.clone().unwrap_or(text);
                    outcome.answer_preview = Some(preview(&text, 160));
                    return;
                }
                Ok(Reply::Error(e)) => {
                    outcome.error = Some(e.code.as_str().to_string());
                    outcome.error_message = Some(e.message.clone());
                    return;
                }
                Err(e) => {
                    outcome.error = Some(client_error_code(&e));
                    outcome.error_message = Some(e.to_string());
                    return;
                }
            }
        }
    }
}

/// One request straight to the server, as the tier workers send it
/// (messages, `max_tokens`, `temperature`, streamed with usage): time to
/// the first content delta, to the end of the stream, and the server's
/// token counts. Errors are recorded with the client's error kind
/// (`connect`, `http_5xx`, `timeout_first_byte`, …).
async fn ask_direct(direct: &Direct, request: &Request, outcome: &mut Outcome) {
    let mut chat = ChatRequest::new(
        request
            .chat_messages()
            .into_iter()
            .map(|m| BackendMessage::new(m.role, m.content))
            .collect(),
    );
    chat.model = direct.model.clone();
    chat.max_tokens = request.max_tokens;
    chat.temperature = request.temperature;
    let start = Instant::now();
    let mut stream = direct.client.chat_stream(&chat);
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(StreamEvent::Delta {
                index: 0, content, ..
            }) if !content.is_empty() => {
                if outcome.ttft_ms.is_none() {
                    outcome.ttft_ms = Some(ms(start));
                }
                text.push_str(&content);
            }
            Ok(StreamEvent::Usage(u)) => {
                outcome.prompt_tokens = u.prompt_tokens;
                outcome.completion_tokens = u.completion_tokens;
            }
            Ok(_) => {}
            Err(e) => {
                outcome.error = Some(e.kind().to_string());
                outcome.error_message = Some(e.to_string());
                return;
            }
        }
    }
    outcome.total_ms = Some(ms(start));
    outcome
        .ttft_ms
        .get_or_insert(outcome.total_ms.unwrap_or_default());
    outcome.attempts = 1;
    outcome.answer_preview = Some(preview(&text, 160));
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn client_error_code(e: &ClientError) -> String {
    match e {
        ClientError::Submit { .. } => "submit_failed".into(),
        ClientError::Timeout { .. } => "client_timeout".into(),
        ClientError::Decode { .. } => "undecodable_reply".into(),
        ClientError::Reply(r) => r.code.as_str().into(),
        ClientError::Duplicate { .. } => {
            triage_protocol::ErrorCode::DuplicateRequest.as_str().into()
        }
        ClientError::QueueFull { .. } => triage_protocol::ErrorCode::QueueFull.as_str().into(),
        ClientError::Incomplete { .. } => "stream_incomplete".into(),
        ClientError::Closed(_) => "subscription_closed".into(),
    }
}

/// The first `n` characters on one line.
pub fn preview(text: &str, n: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > n {
        format!("{}…", flat.chars().take(n).collect::<String>())
    } else {
        flat
    }
}
