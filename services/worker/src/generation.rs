//! Generating one request's answer: backend choice, the context check,
//! streaming with coalescing and the early-exit gate, retries, restarts and
//! the decision to escalate. One call of [`generate`] covers one delivery.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use triage_backend::{
    BackendError, ChatMessage as BackendMessage, ChatRequest, StreamEvent, StreamOptions,
};
use triage_protocol::{Completion, ErrorCode, RoutedRequest, Tier, Usage, UsageEvent, UsageStatus};

use crate::coalesce::Coalescer;
use crate::early_exit::{ConfidenceGate, Verdict};
use crate::outbox::Outbox;
use crate::pool::Lease;
use crate::retry::{classify, FailureClass, Next, RetryBudget};
use crate::tokens::{attempt_usage, fit_max_tokens};
use crate::worker::Shared;

/// Routing reason appended when tier 1 could not answer.
pub const ESCALATED_UNAVAILABLE: &str = "escalated_tier1_unavailable";
/// Routing reason appended when tier 1's start was not confident enough.
pub const ESCALATED_LOW_CONFIDENCE: &str = "escalated_low_confidence";

/// How a delivery ends.
#[derive(Debug)]
pub enum Outcome {
    /// Answered; the completion and the answering attempt's usage event
    /// still have to be published (in that order), then the id recorded.
    Answered {
        /// The final reply.
        completion: Box<Completion>,
        /// Usage of the answering attempt.
        usage: Box<UsageEvent>,
    },
    /// Final failure: an error reply, maybe a dead letter.
    Failed {
        /// The code.
        code: ErrorCode,
        /// For the client.
        message: String,
        /// Whether the message goes to `llm.dead` as well.
        dead_letter: bool,
    },
    /// Republish to tier 2.
    Escalate {
        /// The reason appended to the routing reasons.
        reason: &'static str,
        /// The lowest attempt number tier 2 may use.
        attempt_base: u32,
    },
    /// Shutting down: hand the message back (nak) for another replica.
    HandBack,
}

/// One request being generated.
pub struct Job<'a> {
    /// Worker state.
    pub shared: &'a Shared,
    /// The request.
    pub routed: &'a RoutedRequest,
    /// Where answers go.
    pub outbox: &'a Outbox<'a>,
    /// The first attempt number of this delivery.
    pub first_attempt: u32,
    /// When the worker received the message (ttft and total are measured
    /// from here).
    pub received_at: Instant,
    /// Fired when the shutdown grace period is over.
    pub cancel: &'a CancellationToken,
}

/// What a usage event says about one attempt.
struct Booking<'a> {
    attempt: u32,
    model: &'a str,
    usage: Usage,
    started_at: Instant,
    first_token: Option<Instant>,
}

/// How one backend call ended.
enum AttemptEnd {
    Done {
        text: String,
        finish_reason: String,
        usage: Usage,
        model: String,
        first_token: Option<Instant>,
        chunks: u32,
    },
    LowConfidence {
        mean_logprob: f64,
        usage: Usage,
        model: String,
        first_token: Option<Instant>,
    },
    Failed {
        error: BackendError,
        reached_client: bool,
        started: bool,
        usage: Usage,
        model: String,
        first_token: Option<Instant>,
    },
    Cancelled {
        started: bool,
        usage: Usage,
        model: String,
        first_token: Option<Instant>,
    },
}

impl Job<'_> {
    fn tier(&self) -> Tier {
        self.shared.tier
    }

    fn early_exit(&self) -> bool {
        self.tier() == Tier::Small && self.shared.config.early_exit.enabled
    }

    fn streams_to_client(&self) -> bool {
        self.routed.request.stream && self.outbox.can_stream()
    }

    fn usage_event(
        &self,
        b: Booking<'_>,
        status: UsageStatus,
        extra_reason: Option<&str>,
        error_code: Option<ErrorCode>,
    ) -> UsageEvent {
        let Booking {
            attempt,
            model,
            usage,
            started_at,
            first_token,
        } = b;
        let mut reasons = self.routed.routing.reasons.clone();
        reasons.extend(extra_reason.map(str::to_string));
        UsageEvent {
            version: triage_protocol::SCHEMA_VERSION,
            id: self.routed.request.id.clone(),
            attempt,
            tenant: self.routed.request.tenant.clone(),
            tier: self.tier(),
            model: model.to_string(),
            usage,
            status,
            score: Some(self.routed.routing.score),
            reasons,
            ttft_ms: first_token.map(|t| ms(t.duration_since(started_at))),
            total_ms: ms(started_at.elapsed()),
            finished_at_ms: triage_protocol::now_ms(),
            error_code,
        }
    }

    /// Runs the delivery to its outcome. Usage events of attempts that did
    /// not answer are published here; the answering one is returned.
    pub async fn generate(&self) -> Outcome {
        let shared = self.shared;
        let request = &self.routed.request;
        let messages: Vec<BackendMessage> = request
            .chat_messages()
            .into_iter()
            .map(|m| BackendMessage::new(m.role, m.content))
            .collect();
        let prompt_tokens = shared.counter.count_chat(&request.chat_messages());
        let mut budget = RetryBudget::new(&shared.config.retry);
        let mut avoid = None;
        let mut last_error: Option<String> = None;
        let last = |e: &Option<String>| {
            e.as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        };
        let mut last_attempt = self.first_attempt.saturating_sub(1);

        let exhausted = loop {
            if request.is_expired(triage_protocol::now_ms()) {
                return Outcome::Failed {
                    code: ErrorCode::DeadlineExceeded,
                    message: format!(
                        "the deadline passed after {} backend call(s){}",
                        budget.calls(),
                        last(&last_error)
                    ),
                    dead_letter: false,
                };
            }
            let Some(lease) = shared.pool.choose(avoid) else {
                break format!(
                    "every backend is out of service (circuit breakers open){}",
                    last(&last_error)
                );
            };
            let backend = lease.backend().clone();
            let max_tokens =
                match fit_max_tokens(prompt_tokens, request.max_tokens, backend.max_model_len()) {
                    Ok(m) => m,
                    Err(tokens) => {
                        return Outcome::Failed {
                            code: ErrorCode::ContextLengthExceeded,
                            message: format!(
                                "the prompt is about {tokens} tokens, which does not fit the \
                                 model's context of {} tokens ({})",
                                backend.max_model_len().unwrap_or_default(),
                                backend.label
                            ),
                            dead_letter: false,
                        }
                    }
                };
            let attempt = self.first_attempt + budget.begin_call();
            last_attempt = attempt;
            tracing::Span::current().record("attempt", attempt);
            let mut chat = ChatRequest::new(messages.clone());
            chat.model = backend.model();
            chat.max_tokens = max_tokens;
            chat.temperature = request.temperature;
            if !backend.spec.include_usage {
                chat.stream_options = Some(StreamOptions {
                    include_usage: Some(false),
                });
            }
            if self.early_exit() {
                chat.logprobs = Some(true);
            }
            let started_at = Instant::now();
            let end = self.attempt(&lease, attempt, &chat, prompt_tokens).await;
            let label = backend.label.clone();
            match end {
                AttemptEnd::Done {
                    text,
                    finish_reason,
                    usage,
                    model,
                    first_token,
                    chunks,
                } => {
                    shared.pool.record_success(&backend);
                    let m = &shared.metrics;
                    m.generation
                        .get_or_create(&m.backend(&label))
                        .observe(started_at.elapsed().as_secs_f64());
                    let event = self.usage_event(
                        Booking {
                            attempt,
                            model: &model,
                            usage,
                            started_at,
                            first_token,
                        },
                        UsageStatus::Ok,
                        None,
                        None,
                    );
                    let keep_text = !self.streams_to_client() || self.outbox.keep_result;
                    let completion = Completion {
                        id: request.id.clone(),
                        attempt,
                        finish_reason,
                        usage,
                        tier: self.tier(),
                        model,
                        ttft_ms: first_token
                            .map(|t| ms(t.duration_since(self.received_at)))
                            .unwrap_or_else(|| ms(self.received_at.elapsed())),
                        total_ms: ms(self.received_at.elapsed()),
                        chunks,
                        text: keep_text.then_some(text),
                        routing: Some(self.routed.routing.clone()),
                    };
                    return Outcome::Answered {
                        completion: Box::new(completion),
                        usage: Box::new(event),
                    };
                }
                AttemptEnd::LowConfidence {
                    mean_logprob,
                    usage,
                    model,
                    first_token,
                } => {
                    tracing::info!(
                        attempt,
                        mean_logprob,
                        threshold = shared.config.early_exit.min_mean_logprob,
                        "low confidence at the start: escalating to tier 2"
                    );
                    let event = self.usage_event(
                        Booking {
                            attempt,
                            model: &model,
                            usage,
                            started_at,
                            first_token,
                        },
                        UsageStatus::Cancelled,
                        Some(ESCALATED_LOW_CONFIDENCE),
                        None,
                    );
                    if let Err(e) = self.outbox.usage(&event).await {
                        tracing::error!(error = %e, "usage event of the cancelled attempt not published");
                        return Outcome::HandBack;
                    }
                    return Outcome::Escalate {
                        reason: ESCALATED_LOW_CONFIDENCE,
                        attempt_base: attempt + 1,
                    };
                }
                AttemptEnd::Cancelled {
                    started,
                    usage,
                    model,
                    first_token,
                } => {
                    if started {
                        let event = self.usage_event(
                            Booking {
                                attempt,
                                model: &model,
                                usage,
                                started_at,
                                first_token,
                            },
                            UsageStatus::Cancelled,
                            None,
                            None,
                        );
                        if let Err(e) = self.outbox.usage(&event).await {
                            tracing::warn!(error = %e, "usage event of the cancelled attempt not published");
                        }
                    }
                    return Outcome::HandBack;
                }
                AttemptEnd::Failed {
                    error,
                    reached_client,
                    started,
                    usage,
                    model,
                    first_token,
                } => {
                    let class = classify(&error);
                    if started {
                        let code = match &class {
                            FailureClass::Retryable => ErrorCode::BackendUnavailable,
                            FailureClass::Rejected { code, .. } => *code,
                        };
                        let event = self.usage_event(
                            Booking {
                                attempt,
                                model: &model,
                                usage,
                                started_at,
                                first_token,
                            },
                            UsageStatus::Error,
                            None,
                            Some(code),
                        );
                        if let Err(e) = self.outbox.usage(&event).await {
                            tracing::error!(error = %e, "usage event of the failed attempt not published");
                            return Outcome::HandBack;
                        }
                    }
                    match class {
                        FailureClass::Rejected { code, message } => {
                            tracing::warn!(backend = %label, attempt, %error, "backend rejected the request");
                            return Outcome::Failed {
                                code,
                                message,
                                dead_letter: code == ErrorCode::BackendRejected,
                            };
                        }
                        FailureClass::Retryable => {
                            shared.pool.record_failure(&backend);
                            let m = &shared.metrics;
                            m.retries
                                .get_or_create(&m.backend_kind(&label, error.kind()))
                                .inc();
                            if reached_client {
                                m.restarts.get_or_create(&m.backend(&label)).inc();
                            }
                            last_error = Some(format!("{label}: {error}"));
                            match budget.after_failure(reached_client) {
                                Next::RetryAfter(wait) => {
                                    tracing::warn!(
                                        backend = %label, attempt, %error, ?wait,
                                        restart = reached_client, "backend call failed; retrying"
                                    );
                                    avoid = Some(lease.index());
                                    drop(lease);
                                    let wait = cap_to_deadline(wait, request.deadline_ms);
                                    tokio::select! {
                                        _ = tokio::time::sleep(wait) => {}
                                        _ = self.cancel.cancelled() => return Outcome::HandBack,
                                    }
                                }
                                Next::GiveUp(why) => {
                                    tracing::warn!(backend = %label, attempt, %error, "{}", why.describe());
                                    break format!("{}{}", why.describe(), last(&last_error));
                                }
                            }
                        }
                    }
                }
            }
        };

        if self.tier() == Tier::Small && shared.config.escalate_when_unavailable {
            tracing::warn!(reason = %exhausted, "tier 1 exhausted: escalating to tier 2");
            Outcome::Escalate {
                reason: ESCALATED_UNAVAILABLE,
                attempt_base: last_attempt + 1,
            }
        } else {
            Outcome::Failed {
                code: ErrorCode::BackendUnavailable,
                message: format!("tier {} could not answer: {exhausted}", self.tier()),
                dead_letter: true,
            }
        }
    }

    /// One backend call, streamed to the client.
    async fn attempt(
        &self,
        lease: &Lease,
        attempt: u32,
        chat: &ChatRequest,
        prompt_tokens: u32,
    ) -> AttemptEnd {
        let shared = self.shared;
        let backend = lease.backend();
        let m = &shared.metrics;
        let labels = m.backend(&backend.label);
        let started_at = Instant::now();
        let streaming = self.streams_to_client();
        let mut stream = backend.client.chat_stream(chat);
        let mut coalescer = Coalescer::new(shared.config.coalesce.interval);
        let mut gate = self.early_exit().then(|| {
            ConfidenceGate::new(
                shared.config.early_exit.hold_tokens,
                shared.config.early_exit.min_mean_logprob,
            )
        });
        let mut text = String::new();
        let mut seq = 0u32;
        let mut started = false;
        let mut reported: Option<triage_backend::Usage> = None;
        let mut finish_reason: Option<String> = None;
        let mut model = backend.model().unwrap_or_default();
        let mut first_token: Option<Instant> = None;
        let counter = &shared.counter;
        let usage_so_far = |reported: Option<triage_backend::Usage>, text: &str| {
            attempt_usage(reported, prompt_tokens, || counter.count(text))
        };

        loop {
            let flush_at = coalescer.deadline();
            let event = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    return AttemptEnd::Cancelled {
                        started,
                        usage: usage_so_far(reported, &text),
                        model,
                        first_token,
                    };
                }
                _ = sleep_until(flush_at) => {
                    if let Some(t) = coalescer.due(Instant::now()) {
                        self.outbox.chunk(seq, attempt, t).await;
                        seq += 1;
                    }
                    continue;
                }
                event = stream.next() => event,
            };
            let event = match event {
                None => break,
                Some(Ok(event)) => event,
                Some(Err(error)) => {
                    let started = started
                        || matches!(
                            error,
                            BackendError::StreamBroken { .. } | BackendError::ErrorEvent { .. }
                        );
                    return AttemptEnd::Failed {
                        usage: usage_so_far(reported, &text),
                        error,
                        reached_client: seq > 0,
                        started,
                        model,
                        first_token,
                    };
                }
            };
            started = true;
            match event {
                StreamEvent::Start {
                    model: Some(name), ..
                } => model = name,
                StreamEvent::Start { .. } => {}
                StreamEvent::Delta {
                    index: 0,
                    content,
                    logprobs,
                } => {
                    if first_token.is_none() && !content.is_empty() {
                        let now = Instant::now();
                        first_token = Some(now);
                        m.ttft
                            .get_or_create(&labels)
                            .observe(now.duration_since(started_at).as_secs_f64());
                    }
                    text.push_str(&content);
                    let release = match gate.as_mut() {
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
                                    drop(stream);
                                    return AttemptEnd::LowConfidence {
                                        mean_logprob,
                                        usage: Usage {
                                            prompt_tokens,
                                            completion_tokens: u32::try_from(
                                                tokens.max(g.tokens_seen()),
                                            )
                                            .unwrap_or(u32::MAX),
                                            estimated: true,
                                        },
                                        model,
                                        first_token,
                                    };
                                }
                            }
                        }
                    };
                    if let (true, Some(t)) = (streaming, release) {
                        if let Some(t) = coalescer.push(&t, Instant::now()) {
                            self.outbox.chunk(seq, attempt, t).await;
                            seq += 1;
                        }
                    }
                }
                StreamEvent::Delta { .. } => {}
                StreamEvent::Finish {
                    index: 0, reason, ..
                } => finish_reason = Some(reason.as_str().to_string()),
                StreamEvent::Finish { .. } => {}
                StreamEvent::Usage(u) => reported = Some(u),
                StreamEvent::Malformed { .. } => {
                    m.malformed.get_or_create(&labels).inc();
                }
            }
        }

        // The stream ended well. Judge a short answer the gate still holds.
        if let Some(g) = gate.as_mut() {
            match g.finish() {
                Verdict::Escalate { mean_logprob, .. } => {
                    return AttemptEnd::LowConfidence {
                        mean_logprob,
                        usage: usage_so_far(reported, &text),
                        model,
                        first_token,
                    };
                }
                Verdict::Release(t) if streaming => {
                    if let Some(t) = coalescer.push(&t, Instant::now()) {
                        self.outbox.chunk(seq, attempt, t).await;
                        seq += 1;
                    }
                }
                _ => {}
            }
        }
        if let Some(t) = coalescer.flush() {
            self.outbox.chunk(seq, attempt, t).await;
            seq += 1;
        }
        let usage = usage_so_far(reported, &text);
        m.tokens
            .get_or_create(&m.backend_kind(&backend.label, "prompt"))
            .inc_by(u64::from(usage.prompt_tokens));
        m.tokens
            .get_or_create(&m.backend_kind(&backend.label, "completion"))
            .inc_by(u64::from(usage.completion_tokens));
        AttemptEnd::Done {
            text,
            finish_reason: finish_reason.unwrap_or_else(|| "stop".into()),
            usage,
            model,
            first_token,
            chunks: seq,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// A backoff never sleeps past the request's deadline (the loop then
/// reports `deadline_exceeded` instead of calling again).
fn cap_to_deadline(wait: Duration, deadline_ms: Option<u64>) -> Duration {
    match deadline_ms {
        Some(d) => wait.min(Duration::from_millis(
            d.saturating_sub(triage_protocol::now_ms()),
        )),
        None => wait,
    }
}
