//! One backend call, consumed: each delta goes through the early-exit gate
//! (tier 1) and the coalescer to the client's chunks; the model name, the
//! usage chunk and the finish reason are noted; what was generated is
//! recorded as progress on the request's cadence (booked if the worker
//! dies); the call ends in an [`AttemptEnd`] that the attempt loop decides
//! on.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use triage_backend::{BackendError, ChatRequest, ChatStream, StreamEvent, TokenLogprob};
use triage_protocol::Usage;

use crate::coalesce::Coalescer;
use crate::early_exit::{ConfidenceGate, Verdict};
use crate::metrics::{BackendLabels, WorkerMetrics};
use crate::outbox::Outbox;
use crate::pool::Backend;
use crate::progress::{Cadence, Clock, Progress};
use crate::tokens::{attempt_usage, TokenCounter};

/// Longest an attempt's first chunk waits for its first progress record to
/// be durable (a JetStream stream elects a new leader within a few seconds
/// after a NATS node dies).
const FIRST_RECORD_WAIT: Duration = Duration::from_secs(5);

/// How one backend call ended, and what it spent.
pub(super) struct AttemptEnd {
    /// The ending itself.
    pub how: How,
    /// What every ending books.
    pub spent: Spent,
}

/// What an attempt's usage event books.
pub(super) struct Spent {
    /// Tokens used (the backend's usage chunk, else counted here).
    pub usage: Usage,
    /// The model that answered (as the backend names it).
    pub model: String,
    /// When the first content arrived.
    pub first_token: Option<Instant>,
}

/// The endings of a backend call.
pub(super) enum How {
    /// The stream ended well.
    Done(Done),
    /// The early-exit gate judged the start not confident enough.
    LowConfidence { mean_logprob: f64 },
    /// The call failed.
    Failed(CallFailed),
    /// The shutdown grace period ran out; `started` when the backend had
    /// begun generating (so it is booked).
    Cancelled { started: bool },
    /// The client cancelled the request; `started` as for `Cancelled`.
    ClientGone { started: bool },
}

/// An answer streamed to its end.
pub(super) struct Done {
    pub text: String,
    pub finish_reason: String,
    /// Chunks sent to the client.
    pub chunks: u32,
    /// The tokens' logprobs, when the answer keeps them.
    pub logprobs: Option<Vec<triage_protocol::TokenLogprob>>,
    /// Choices 1.. of an `n` > 1 request.
    pub alternatives: Vec<triage_protocol::Alternative>,
}

/// A failed call: `reached_client` when chunks were already sent, `started`
/// when the backend had begun generating (so it is booked).
pub(super) struct CallFailed {
    pub error: BackendError,
    pub reached_client: bool,
    pub started: bool,
}

/// What one call needs.
pub(super) struct Call<'a> {
    pub outbox: &'a Outbox<'a>,
    pub metrics: &'a WorkerMetrics,
    pub counter: &'a TokenCounter,
    pub backend: &'a Backend,
    pub attempt: u32,
    pub prompt_tokens: u32,
    /// Whether chunks go to the client.
    pub streaming: bool,
    /// Whether the answer carries its tokens' logprobs (asked for, whole).
    pub keep_logprobs: bool,
    /// Whether the chunks carry their tokens' logprobs (asked for, streamed).
    pub stream_logprobs: bool,
    /// Fired when the client cancelled.
    pub client_gone: &'a CancellationToken,
    pub coalesce: Duration,
    /// The early-exit gate, on tier 1 when enabled.
    pub gate: Option<ConfidenceGate>,
    pub started_at: Instant,
    /// The tier generating (noted in progress records).
    pub tier: triage_protocol::Tier,
    /// How often progress is recorded.
    pub progress: Cadence,
}

/// Makes the call and consumes its stream until it ends or `cancel` fires.
pub(super) async fn consume(
    call: Call<'_>,
    chat: &ChatRequest,
    cancel: &CancellationToken,
) -> AttemptEnd {
    let stream = call.backend.client.chat_stream(chat);
    Reader::new(call).run(stream, cancel).await
}

/// The state of one call's stream.
struct Reader<'a> {
    call: Call<'a>,
    labels: BackendLabels,
    coalescer: Coalescer,
    text: String,
    seq: u32,
    started: bool,
    reported: Option<triage_backend::Usage>,
    finish_reason: Option<String>,
    model: String,
    first_token: Option<Instant>,
    /// The answer's logprobs so far, when it keeps them.
    logprobs: Option<Vec<triage_protocol::TokenLogprob>>,
    /// Logprobs received but not yet sent in a chunk, when the client
    /// streams and asked for them.
    streamed_logprobs: Option<Vec<triage_protocol::TokenLogprob>>,
    /// Text and finish reason of choices 1.. (`n` > 1, never streamed).
    others: std::collections::BTreeMap<u32, (String, Option<String>)>,
    /// Content deltas received (about one token each): the progress
    /// cadence's count, cheaper than counting the text each time.
    deltas: u32,
    progress: Clock,
    started_at_ms: u64,
}

impl<'a> Reader<'a> {
    fn new(call: Call<'a>) -> Self {
        let logprobs = call.keep_logprobs.then(Vec::new);
        let streamed_logprobs = call.stream_logprobs.then(Vec::new);
        Self {
            labels: call.metrics.backend(&call.backend.label),
            deltas: 0,
            progress: Clock::new(call.progress, call.started_at),
            started_at_ms: triage_protocol::now_ms(),
            coalescer: Coalescer::new(call.coalesce),
            model: call.backend.model().unwrap_or_default(),
            call,
            text: String::new(),
            seq: 0,
            started: false,
            reported: None,
            finish_reason: None,
            first_token: None,
            logprobs,
            streamed_logprobs,
            others: std::collections::BTreeMap::new(),
        }
    }

    async fn run(mut self, mut stream: ChatStream, cancel: &CancellationToken) -> AttemptEnd {
        let gone = self.call.client_gone;
        loop {
            let flush_at = self.coalescer.deadline();
            let event = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let started = self.started;
                    return self.end(How::Cancelled { started });
                }
                _ = gone.cancelled() => {
                    let started = self.started;
                    return self.end(How::ClientGone { started });
                }
                _ = sleep_until(flush_at) => {
                    if let Some(t) = self.coalescer.due(Instant::now()) {
                        self.send(t).await;
                    }
                    continue;
                }
                event = stream.next() => event,
            };
            // Returning drops the stream, which cancels the backend call.
            match event {
                None => return self.finish().await,
                Some(Ok(event)) => {
                    if let Some(end) = self.on_event(event).await {
                        return end;
                    }
                }
                Some(Err(error)) => {
                    let started = self.started
                        || matches!(
                            error,
                            BackendError::StreamBroken { .. } | BackendError::ErrorEvent { .. }
                        );
                    let reached_client = self.seq > 0;
                    return self.end(How::Failed(CallFailed {
                        error,
                        reached_client,
                        started,
                    }));
                }
            }
        }
    }

    /// One event; `Some` when it ends the call.
    async fn on_event(&mut self, event: StreamEvent) -> Option<AttemptEnd> {
        self.started = true;
        match event {
            StreamEvent::Start {
                model: Some(name), ..
            } => self.model = name,
            StreamEvent::Start { .. } => {}
            StreamEvent::Delta {
                index: 0,
                content,
                logprobs,
            } => return self.on_delta(content, logprobs).await,
            StreamEvent::Delta { index, content, .. } => {
                self.others.entry(index).or_default().0.push_str(&content);
                self.note_progress();
            }
            StreamEvent::Finish {
                index: 0, reason, ..
            } => self.finish_reason = Some(reason.as_str().to_string()),
            StreamEvent::Finish { index, reason, .. } => {
                self.others.entry(index).or_default().1 = Some(reason.as_str().to_string());
            }
            StreamEvent::Usage(u) => self.reported = Some(u),
            StreamEvent::Malformed { .. } => {
                self.call
                    .metrics
                    .malformed
                    .get_or_create(&self.labels)
                    .inc();
            }
        }
        None
    }

    /// New text of the first choice: through the gate, then to the client.
    async fn on_delta(
        &mut self,
        content: String,
        logprobs: Option<Vec<TokenLogprob>>,
    ) -> Option<AttemptEnd> {
        if self.first_token.is_none() && !content.is_empty() {
            let now = Instant::now();
            self.first_token = Some(now);
            self.call
                .metrics
                .ttft
                .get_or_create(&self.labels)
                .observe(now.duration_since(self.call.started_at).as_secs_f64());
        }
        self.text.push_str(&content);
        self.note_progress();
        if let (Some(kept), Some(lps)) = (self.logprobs.as_mut(), logprobs.as_ref()) {
            kept.extend(lps.iter().map(protocol_logprob));
        }
        if let (Some(pending), Some(lps)) = (self.streamed_logprobs.as_mut(), logprobs.as_ref()) {
            pending.extend(lps.iter().map(protocol_logprob));
        }
        let release = match self.call.gate.as_mut() {
            None => Some(content),
            Some(g) => {
                let lps: Vec<f64> = logprobs
                    .unwrap_or_default()
                    .iter()
                    .map(|l| l.logprob)
                    .collect();
                match g.push(&content, &lps) {
                    Verdict::Hold => None,
                    Verdict::Release(t) => Some(t),
                    Verdict::Escalate {
                        mean_logprob,
                        tokens,
                    } => {
                        // Nothing was counted by the backend yet: book
                        // what the gate saw.
                        let completion = tokens.max(g.tokens_seen());
                        let usage = Usage {
                            prompt_tokens: self.call.prompt_tokens,
                            completion_tokens: u32::try_from(completion).unwrap_or(u32::MAX),
                            estimated: true,
                        };
                        let spent = Spent {
                            usage,
                            model: std::mem::take(&mut self.model),
                            first_token: self.first_token,
                        };
                        let how = How::LowConfidence { mean_logprob };
                        return Some(AttemptEnd { how, spent });
                    }
                }
            }
        };
        if let (true, Some(t)) = (self.call.streaming, release) {
            self.push(&t).await;
        }
        None
    }

    /// The stream ended well: judge a short answer the gate still holds,
    /// send what is pending, count the tokens.
    async fn finish(&mut self) -> AttemptEnd {
        if let Some(g) = self.call.gate.as_mut() {
            match g.finish() {
                Verdict::Escalate { mean_logprob, .. } => {
                    return self.end(How::LowConfidence { mean_logprob });
                }
                Verdict::Release(t) if self.call.streaming => self.push(&t).await,
                _ => {}
            }
        }
        if let Some(t) = self.coalescer.flush() {
            self.send(t).await;
        }
        let usage = self.usage_so_far();
        let m = self.call.metrics;
        let label = &self.call.backend.label;
        m.tokens
            .get_or_create(&m.backend_kind(label, "prompt"))
            .inc_by(u64::from(usage.prompt_tokens));
        m.tokens
            .get_or_create(&m.backend_kind(label, "completion"))
            .inc_by(u64::from(usage.completion_tokens));
        let done = Done {
            text: std::mem::take(&mut self.text),
            finish_reason: self.finish_reason.take().unwrap_or_else(|| "stop".into()),
            chunks: self.seq,
            logprobs: self.logprobs.take(),
            alternatives: std::mem::take(&mut self.others)
                .into_iter()
                .map(|(index, (text, reason))| triage_protocol::Alternative {
                    index,
                    text,
                    finish_reason: reason.unwrap_or_else(|| "stop".into()),
                })
                .collect(),
        };
        let spent = Spent {
            usage,
            model: std::mem::take(&mut self.model),
            first_token: self.first_token,
        };
        AttemptEnd {
            how: How::Done(done),
            spent,
        }
    }

    /// Coalesces `text` and sends whatever is due.
    async fn push(&mut self, text: &str) {
        if let Some(t) = self.coalescer.push(text, Instant::now()) {
            self.send(t).await;
        }
    }

    async fn send(&mut self, text: String) {
        // No text reaches the client before the attempt's first progress
        // record is durable: if this worker dies now, the next delivery
        // books what was generated. Bounded: past the wait, availability
        // wins over bookkeeping.
        if self.seq == 0
            && !self
                .call
                .outbox
                .progress_durable(self.call.attempt, FIRST_RECORD_WAIT)
                .await
        {
            tracing::warn!("first progress record not durable in time; streaming anyway");
        }
        // The logprobs of every token received so far go with the text sent.
        let logprobs = self.streamed_logprobs.as_mut().map(std::mem::take);
        self.call
            .outbox
            .chunk(self.seq, self.call.attempt, text, logprobs)
            .await;
        self.seq += 1;
    }

    /// One more delta: record the progress when it is due.
    fn note_progress(&mut self) {
        self.deltas += 1;
        if !self.progress.tick(Instant::now(), self.deltas) {
            return;
        }
        let usage = self.usage_so_far();
        self.call.outbox.record_progress(Progress {
            attempt: self.call.attempt,
            tier: self.call.tier,
            model: self.model.clone(),
            backend: self.call.backend.label.clone(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            started_at_ms: self.started_at_ms,
            recorded_at_ms: triage_protocol::now_ms(),
        });
    }

    fn usage_so_far(&self) -> Usage {
        attempt_usage(self.reported, self.call.prompt_tokens, || {
            self.call.counter.count(&self.text)
        })
    }

    fn end(&mut self, how: How) -> AttemptEnd {
        let spent = Spent {
            usage: self.usage_so_far(),
            model: std::mem::take(&mut self.model),
            first_token: self.first_token,
        };
        AttemptEnd { how, spent }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// A backend token logprob as the protocol carries it.
fn protocol_logprob(l: &TokenLogprob) -> triage_protocol::TokenLogprob {
    triage_protocol::TokenLogprob {
        token: l.token.clone(),
        logprob: l.logprob,
        top_logprobs: l
            .top_logprobs
            .iter()
            .map(|t| triage_protocol::TopLogprob {
                token: t.token.clone(),
                logprob: t.logprob,
            })
            .collect(),
    }
}
