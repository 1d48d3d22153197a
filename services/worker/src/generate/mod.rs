//! The generate stage: one delivery's backend calls. Each attempt chooses a
//! backend, checks the context window, and streams the answer (`stream.rs`:
//! chunks, the early-exit gate); then one function per way an attempt ends
//! decides what follows: the answer, a retry (maybe on another backend), a
//! final error, escalation to tier 2, or handing the message back. Usage
//! events of attempts that did not answer are published as they end (so a
//! crash later loses none); the answering one is returned with the answer.

mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use triage_backend::{ChatMessage as BackendMessage, ChatRequest, StreamOptions};
use triage_protocol::{
    Completion, ErrorCode, RoutedRequest, RoutingDecision, Tier, UsageEvent, UsageStatus,
};

use crate::config::{EarlyExitConfig, RetryConfig, WorkerConfig};
use crate::early_exit::ConfidenceGate;
use crate::failure::Failure;
use crate::metrics::WorkerMetrics;
use crate::outbox::Outbox;
use crate::pool::{Backend, BackendPool, Lease};
use crate::progress::Cadence;
use crate::retry::{classify, FailureClass, Next, RetryBudget};
use crate::token_cap::MaxTokensCap;
use crate::tokens::{fit_max_tokens, TokenCounter};
use stream::{CallFailed, Done, How, Spent};

/// Routing reason appended when tier 1 could not answer.
pub const ESCALATED_UNAVAILABLE: &str = "escalated_tier1_unavailable";
/// Routing reason appended when tier 1's start was not confident enough.
pub const ESCALATED_LOW_CONFIDENCE: &str = "escalated_low_confidence";

/// The generate stage's settings, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Retries of failed backend calls.
    pub retry: RetryConfig,
    /// Chunk coalescing interval (zero: one chunk per delta).
    pub coalesce: Duration,
    /// The early-exit gate; `None` where it is off (always on tier 2).
    pub early_exit: Option<EarlyExitConfig>,
    /// Whether exhausting the backends escalates to tier 2 (tier 1 with
    /// `escalate_when_unavailable`) instead of failing.
    pub escalate: bool,
    /// The operator's ceilings on `max_tokens`.
    pub max_tokens: MaxTokensCap,
    /// How often a generating attempt records its progress.
    pub progress: Cadence,
}

impl Settings {
    /// The settings `config` gives `tier`.
    pub fn new(config: &WorkerConfig, tier: Tier) -> Self {
        let tier1 = tier == Tier::Small;
        Self {
            retry: config.retry.clone(),
            coalesce: config.coalesce.interval,
            early_exit: (tier1 && config.early_exit.enabled).then(|| config.early_exit.clone()),
            escalate: tier1 && config.escalate_when_unavailable,
            max_tokens: config.max_tokens.clone(),
            progress: config.progress.cadence(),
        }
    }
}

/// What the generate stage needs.
pub struct Generator {
    /// The tier served.
    pub tier: Tier,
    /// The tier's backends.
    pub pool: Arc<BackendPool>,
    /// Token counting (context check, usage estimates).
    pub counter: TokenCounter,
    /// Retries, coalescing, early exit, escalation.
    pub settings: Settings,
    /// Metrics.
    pub metrics: WorkerMetrics,
}

/// One delivery to generate.
pub struct Job<'a> {
    /// The request.
    pub routed: &'a RoutedRequest,
    /// Where chunks and the usage of unanswered attempts go.
    pub outbox: &'a Outbox<'a>,
    /// The first attempt number of this delivery.
    pub first_attempt: u32,
    /// When the worker received the message (ttft and total are measured
    /// from here).
    pub received_at: Instant,
    /// Fired when the shutdown grace period is over.
    pub cancel: &'a CancellationToken,
    /// Fired when the client cancelled the request (`client_cancel`).
    pub client_gone: &'a CancellationToken,
}

impl Job<'_> {
    fn streams_to_client(&self) -> bool {
        self.routed.request.stream && self.outbox.can_stream()
    }
}

/// Whether the request asked for its tokens' logprobs.
fn wants_logprobs(job: &Job<'_>) -> bool {
    job.routed.request.params.get("logprobs") == Some(&serde_json::Value::Bool(true))
}

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
    Failed(Failure),
    /// Republish to tier 2.
    Escalate {
        /// The reason appended to the routing reasons.
        reason: &'static str,
        /// The lowest attempt number tier 2 may use.
        attempt_base: u32,
    },
    /// Shutting down: hand the message back (nak) for another replica.
    HandBack,
    /// The client cancelled: what was generated is booked; nothing more is
    /// sent, and the request is recorded as finished.
    ClientGone,
}

/// What the attempt loop remembers between attempts of one delivery.
struct Attempts {
    budget: RetryBudget,
    /// The backend that failed last, avoided next time if possible.
    avoid: Option<usize>,
    last_error: Option<String>,
    last_attempt: u32,
}

impl Attempts {
    /// "; last error: …", or nothing before any error.
    fn last_error(&self) -> String {
        self.last_error
            .as_ref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    }
}

/// What one attempt's usage event says.
struct Booking {
    attempt: u32,
    started_at: Instant,
    spent: Spent,
}

impl Generator {
    /// Runs the delivery to its outcome.
    pub async fn generate(&self, job: &Job<'_>) -> Outcome {
        let request = &job.routed.request;
        let messages: Vec<BackendMessage> = request
            .chat_messages()
            .into_iter()
            .map(|m| BackendMessage::new(m.role, m.content))
            .collect();
        let prompt_tokens = self.counter.count_chat(&request.chat_messages());
        let caps = &self.settings.max_tokens;
        let wanted = caps.apply(request.tenant.as_deref(), request.max_tokens);
        let mut run = Attempts {
            budget: RetryBudget::new(&self.settings.retry),
            avoid: None,
            last_error: None,
            last_attempt: job.first_attempt.saturating_sub(1),
        };
        loop {
            if request.is_expired(triage_protocol::now_ms()) {
                let message = format!(
                    "the deadline passed after {} backend call(s){}",
                    run.budget.calls(),
                    run.last_error()
                );
                return Outcome::Failed(Failure::reply(ErrorCode::DeadlineExceeded, message));
            }
            let Some(lease) = self.pool.choose(run.avoid) else {
                let why = "every backend is out of service (circuit breakers open)";
                return self.exhausted(job, format!("{why}{}", run.last_error()), &run);
            };
            let backend = lease.backend();
            let max_tokens = match fit_max_tokens(prompt_tokens, wanted, backend.max_model_len()) {
                Ok(m) => m,
                Err(tokens) => return context_too_long(tokens, backend),
            };
            let attempt = job.first_attempt + run.budget.begin_call();
            run.last_attempt = attempt;
            tracing::Span::current().record("attempt", attempt);
            let chat = self.chat_request(job, backend, messages.clone(), max_tokens);
            let started_at = Instant::now();
            let call = self.call(job, backend, attempt, prompt_tokens, started_at);
            let end = stream::consume(call, &chat, job.cancel).await;
            let booking = Booking {
                attempt,
                started_at,
                spent: end.spent,
            };
            let wait = match end.how {
                How::Done(done) => return self.answered(job, &lease, booking, done),
                How::LowConfidence { mean_logprob } => {
                    return self.low_confidence(job, booking, mean_logprob).await
                }
                How::Cancelled { started } => return self.cancelled(job, booking, started).await,
                How::ClientGone { started } => {
                    return self.client_gone(job, booking, started).await
                }
                How::Failed(failed) => {
                    match self.failed(job, &mut run, lease, booking, failed).await {
                        Ok(wait) => wait,
                        Err(outcome) => return outcome,
                    }
                }
            };
            // A backoff never sleeps past the deadline (the loop then
            // reports `deadline_exceeded` instead of calling again).
            let wait = cap_to_deadline(wait, request.deadline_ms);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = job.cancel.cancelled() => return Outcome::HandBack,
                _ = job.client_gone.cancelled() => return Outcome::ClientGone,
            }
        }
    }

    fn call<'a>(
        &'a self,
        job: &'a Job<'a>,
        backend: &'a Backend,
        attempt: u32,
        prompt_tokens: u32,
        started_at: Instant,
    ) -> stream::Call<'a> {
        stream::Call {
            outbox: job.outbox,
            metrics: &self.metrics,
            counter: &self.counter,
            backend,
            attempt,
            prompt_tokens,
            streaming: job.streams_to_client(),
            keep_logprobs: !job.streams_to_client() && wants_logprobs(job),
            stream_logprobs: job.streams_to_client() && wants_logprobs(job),
            client_gone: job.client_gone,
            coalesce: self.settings.coalesce,
            // A request fixed to tier 1 could not be moved: not judged either.
            gate: self
                .settings
                .early_exit
                .as_ref()
                .filter(|_| job.routed.routing.fixed_tier() != Some(Tier::Small))
                .map(|g| ConfidenceGate::new(g.hold_tokens, g.min_mean_logprob)),
            started_at,
            tier: self.tier,
            progress: self.settings.progress,
        }
    }

    fn chat_request(
        &self,
        job: &Job<'_>,
        backend: &Backend,
        messages: Vec<BackendMessage>,
        max_tokens: Option<u32>,
    ) -> ChatRequest {
        let mut chat = ChatRequest::new(messages);
        chat.model = backend.model();
        chat.max_tokens = max_tokens;
        chat.temperature = job.routed.request.temperature;
        // n > 1 is refused with stream by the router: the choices come whole.
        let n = job.routed.request.n;
        chat.n = (n > 1 && !job.streams_to_client()).then_some(n);
        if self.settings.early_exit.is_some() {
            chat.logprobs = Some(true);
        }
        chat.apply_params(&job.routed.request.params);
        if !backend.spec.include_usage {
            chat.stream_options = Some(StreamOptions {
                include_usage: Some(false),
            });
        }
        chat
    }

    /// The attempt answered: the completion and its usage, to deliver.
    fn answered(&self, job: &Job<'_>, lease: &Lease, booking: Booking, done: Done) -> Outcome {
        let backend = lease.backend();
        self.pool.record_success(backend);
        let m = &self.metrics;
        m.generation
            .get_or_create(&m.backend(&backend.label))
            .observe(booking.started_at.elapsed().as_secs_f64());
        let event = self.usage_event(job, &booking, UsageStatus::Ok, None, None);
        let spent = booking.spent;
        let keep_text = !job.streams_to_client() || job.outbox.keep_result;
        let completion = Completion {
            id: job.routed.request.id.clone(),
            attempt: booking.attempt,
            finish_reason: done.finish_reason,
            usage: spent.usage,
            tier: self.tier,
            model: spent.model,
            ttft_ms: spent
                .first_token
                .map(|t| ms(t.duration_since(job.received_at)))
                .unwrap_or_else(|| ms(job.received_at.elapsed())),
            total_ms: ms(job.received_at.elapsed()),
            chunks: done.chunks,
            text_bytes: Some(done.text.len() as u64),
            text: keep_text.then_some(done.text),
            routing: Some(job.routed.routing.clone()),
            logprobs: done.logprobs,
            alternatives: done.alternatives,
        };
        Outcome::Answered {
            completion: Box::new(completion),
            usage: Box::new(event),
        }
    }

    /// Tier 1 was unsure of its start: book the cancelled attempt, escalate.
    async fn low_confidence(&self, job: &Job<'_>, booking: Booking, mean_logprob: f64) -> Outcome {
        let threshold = self
            .settings
            .early_exit
            .as_ref()
            .map(|g| g.min_mean_logprob);
        tracing::info!(
            attempt = booking.attempt,
            mean_logprob,
            threshold = threshold.unwrap_or_default(),
            "low confidence at the start: escalating to tier 2"
        );
        let event = self.usage_event(
            job,
            &booking,
            UsageStatus::Cancelled,
            Some(ESCALATED_LOW_CONFIDENCE),
            None,
        );
        if let Err(e) = job.outbox.usage(&event).await {
            tracing::error!(error = %e, "usage event of the cancelled attempt not published");
            return Outcome::HandBack;
        }
        Outcome::Escalate {
            reason: ESCALATED_LOW_CONFIDENCE,
            attempt_base: booking.attempt + 1,
        }
    }

    /// The client cancelled: book what was generated, and stop.
    async fn client_gone(&self, job: &Job<'_>, booking: Booking, started: bool) -> Outcome {
        if started {
            let reason = Some(crate::client_cancel::CLIENT_CANCELLED);
            let event = self.usage_event(job, &booking, UsageStatus::Cancelled, reason, None);
            if let Err(e) = job.outbox.usage(&event).await {
                tracing::error!(error = %e, "usage event of the cancelled attempt not published");
                return Outcome::HandBack;
            }
        }
        Outcome::ClientGone
    }

    /// Shutdown cancelled the attempt: book it if it started, hand back.
    async fn cancelled(&self, job: &Job<'_>, booking: Booking, started: bool) -> Outcome {
        if started {
            let event = self.usage_event(job, &booking, UsageStatus::Cancelled, None, None);
            if let Err(e) = job.outbox.usage(&event).await {
                tracing::warn!(error = %e, "usage event of the cancelled attempt not published");
            }
        }
        Outcome::HandBack
    }

    /// The call failed: book it if it started, then either the wait before
    /// the next attempt or how the delivery ends.
    async fn failed(
        &self,
        job: &Job<'_>,
        run: &mut Attempts,
        lease: Lease,
        booking: Booking,
        failed: CallFailed,
    ) -> Result<Duration, Outcome> {
        let CallFailed {
            error,
            reached_client,
            started,
        } = failed;
        let class = classify(&error);
        if started {
            let code = match &class {
                FailureClass::Retryable => ErrorCode::BackendUnavailable,
                FailureClass::Rejected { code, .. } => *code,
            };
            let event = self.usage_event(job, &booking, UsageStatus::Error, None, Some(code));
            if let Err(e) = job.outbox.usage(&event).await {
                tracing::error!(error = %e, "usage event of the failed attempt not published");
                return Err(Outcome::HandBack);
            }
        }
        let (attempt, label) = (booking.attempt, &lease.backend().label);
        if let FailureClass::Rejected { code, message } = class {
            tracing::warn!(backend = %label, attempt, %error, "backend rejected the request");
            let dead_letter = code == ErrorCode::BackendRejected;
            return Err(Outcome::Failed(Failure {
                code,
                message,
                dead_letter,
            }));
        }
        self.pool.record_failure(lease.backend());
        let m = &self.metrics;
        m.retries
            .get_or_create(&m.backend_kind(label, error.kind()))
            .inc();
        if reached_client {
            m.restarts.get_or_create(&m.backend(label)).inc();
        }
        run.last_error = Some(format!("{label}: {error}"));
        match run.budget.after_failure(reached_client) {
            Next::RetryAfter(wait) => {
                tracing::warn!(
                    backend = %label, attempt, %error, ?wait,
                    restart = reached_client, "backend call failed; retrying"
                );
                run.avoid = Some(lease.index());
                Ok(wait)
            }
            Next::GiveUp(why) => {
                tracing::warn!(backend = %label, attempt, %error, "{}", why.describe());
                let why = format!("{}{}", why.describe(), run.last_error());
                Err(self.exhausted(job, why, run))
            }
        }
    }

    /// No backend can answer: escalate from tier 1 where allowed, else
    /// fail for good.
    fn exhausted(&self, job: &Job<'_>, why: String, run: &Attempts) -> Outcome {
        match may_escalate(&self.settings, &job.routed.routing) {
            Ok(()) => {
                tracing::warn!(reason = %why, "tier 1 exhausted: escalating to tier 2");
                Outcome::Escalate {
                    reason: ESCALATED_UNAVAILABLE,
                    attempt_base: run.last_attempt + 1,
                }
            }
            Err(not_moved) => {
                let message = format!("tier {} could not answer: {why}{not_moved}", self.tier);
                Outcome::Failed(Failure::dead(ErrorCode::BackendUnavailable, message))
            }
        }
    }

    fn usage_event(
        &self,
        job: &Job<'_>,
        booking: &Booking,
        status: UsageStatus,
        extra_reason: Option<&str>,
        error_code: Option<ErrorCode>,
    ) -> UsageEvent {
        let (routed, spent, started_at) = (job.routed, &booking.spent, booking.started_at);
        let mut reasons = routed.routing.reasons.clone();
        reasons.extend(extra_reason.map(str::to_string));
        UsageEvent {
            version: triage_protocol::SCHEMA_VERSION,
            id: routed.request.id.clone(),
            attempt: booking.attempt,
            tenant: routed.request.tenant.clone(),
            tier: self.tier,
            model: spent.model.clone(),
            usage: spent.usage,
            status,
            score: Some(routed.routing.score),
            reasons,
            ttft_ms: spent.first_token.map(|t| ms(t.duration_since(started_at))),
            total_ms: ms(started_at.elapsed()),
            finished_at_ms: triage_protocol::now_ms(),
            error_code,
            judged: None,
        }
    }
}

/// Whether a request may be moved to tier 2: only from a tier-1 worker that
/// escalates, and only if neither the operator (tenant pin) nor the client
/// (explicit `tier`) fixed its tier to 1. `Err` holds what the error
/// message adds about why it stayed (empty when escalation is simply off).
fn may_escalate(settings: &Settings, routing: &RoutingDecision) -> Result<(), String> {
    if !settings.escalate {
        return Err(String::new());
    }
    match routing.fixed_tier() {
        Some(Tier::Small) => Err(format!(
            "; not escalated to tier 2: the request is fixed to tier 1 ({})",
            routing.reasons.join(", ")
        )),
        _ => Ok(()),
    }
}

/// The prompt does not fit the backend's context window.
fn context_too_long(tokens: u32, backend: &Backend) -> Outcome {
    let message = format!(
        "the prompt is about {tokens} tokens, which does not fit the model's context of {} \
         tokens ({})",
        backend.max_model_len().unwrap_or_default(),
        backend.label
    );
    Outcome::Failed(Failure::reply(ErrorCode::ContextLengthExceeded, message))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn cap_to_deadline(wait: Duration, deadline_ms: Option<u64>) -> Duration {
    match deadline_ms {
        Some(d) => wait.min(Duration::from_millis(
            d.saturating_sub(triage_protocol::now_ms()),
        )),
        None => wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_exit_and_escalation_are_tier_1_only() {
        let mut config = WorkerConfig::default();
        config.early_exit.enabled = true;
        config.escalate_when_unavailable = true;
        let t1 = Settings::new(&config, Tier::Small);
        let t2 = Settings::new(&config, Tier::Large);
        assert_eq!(t1.early_exit, Some(config.early_exit.clone()));
        assert!(t1.escalate);
        assert_eq!(t2.early_exit, None, "tier 2 has no one to escalate to");
        assert!(!t2.escalate);

        config.early_exit.enabled = false;
        config.escalate_when_unavailable = false;
        let t1 = Settings::new(&config, Tier::Small);
        assert_eq!(t1.early_exit, None);
        assert!(!t1.escalate);
    }

    #[test]
    fn requests_fixed_to_tier_1_are_not_escalated() {
        let mut config = WorkerConfig {
            escalate_when_unavailable: true,
            ..WorkerConfig::default()
        };
        let t1 = Settings::new(&config, Tier::Small);
        let scored = RoutingDecision::fixed(Tier::Small, "embedding=0.2");
        assert_eq!(may_escalate(&t1, &scored), Ok(()));
        for fixed in [
            RoutingDecision::tenant_pin(Tier::Small),
            RoutingDecision::requested(Tier::Small),
        ] {
            let why = may_escalate(&t1, &fixed).unwrap_err();
            assert!(why.contains("fixed to tier 1"), "{why}");
            assert!(why.contains(&fixed.reasons[0]), "{why}");
        }
        // A tier-2 pin that reached tier 1 anyway is not held there.
        assert_eq!(
            may_escalate(&t1, &RoutingDecision::tenant_pin(Tier::Large)),
            Ok(())
        );
        config.escalate_when_unavailable = false;
        let off = Settings::new(&config, Tier::Small);
        assert_eq!(may_escalate(&off, &scored), Err(String::new()));
    }

    #[test]
    fn backoff_never_sleeps_past_the_deadline() {
        let wait = Duration::from_secs(2);
        assert_eq!(cap_to_deadline(wait, None), wait);
        let soon = triage_protocol::now_ms() + 100;
        assert!(cap_to_deadline(wait, Some(soon)) <= Duration::from_millis(100));
        let past = triage_protocol::now_ms() - 1;
        assert_eq!(cap_to_deadline(wait, Some(past)), Duration::ZERO);
    }
}
