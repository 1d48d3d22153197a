//! Progress records: while an attempt generates, what it has spent so far
//! (tier, model, backend, prompt and generated tokens) is written to a
//! JetStream key-value bucket (`TRIAGE_PROGRESS`, one key per request), at
//! most every `progress.interval` or `progress.tokens` tokens. If the worker
//! dies mid-stream, the next delivery of the request finds the record and
//! books the attempt as `interrupted` (see the deliver stage); an attempt
//! whose usage was booked normally has its record deleted at the end of the
//! delivery.
//!
//! Writing never holds up the stream: a delivery's records go through one
//! background writer that always writes the latest snapshot. Correctness
//! does not rest on the deletes: a usage event's message id is
//! `usage:<tenant>.<id>:<attempt>` and the ledger's key is (tenant, id,
//! attempt), so booking a record whose attempt was already booked is a
//! no-op. Pure parts ([`Cadence`], [`Progress::interrupted_event`]) are
//! unit-tested here; the rest is I/O.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use triage_bus::BusError;
use triage_protocol::{RequestKey, RoutedRequest, Tier, Usage, UsageEvent, UsageStatus};

use crate::metrics::WorkerMetrics;

/// What an attempt had spent when last recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The attempt number.
    pub attempt: u32,
    /// The tier generating it.
    pub tier: Tier,
    /// The model (as the backend names it).
    pub model: String,
    /// The backend's label.
    pub backend: String,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens generated so far (counted by the worker).
    pub completion_tokens: u32,
    /// When the attempt started (Unix ms).
    pub started_at_ms: u64,
    /// When this record was taken (Unix ms).
    pub recorded_at_ms: u64,
}

impl Progress {
    /// The usage event booking this attempt as `interrupted`: the recorded
    /// tokens, flagged estimated, finished at the record's time.
    pub fn interrupted_event(&self, routed: &RoutedRequest) -> UsageEvent {
        UsageEvent {
            version: triage_protocol::SCHEMA_VERSION,
            id: routed.request.id.clone(),
            attempt: self.attempt,
            tenant: routed.request.tenant.clone(),
            tier: self.tier,
            model: self.model.clone(),
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.completion_tokens,
                estimated: true,
            },
            status: UsageStatus::Interrupted,
            score: Some(routed.routing.score),
            reasons: routed.routing.reasons.clone(),
            ttft_ms: None,
            total_ms: self.recorded_at_ms.saturating_sub(self.started_at_ms) as f64,
            finished_at_ms: self.recorded_at_ms,
            error_code: None,
            judged: None,
        }
    }
}

/// How often an attempt's progress is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// At most this long between records.
    pub every: Duration,
    /// At most this many new tokens between records.
    pub tokens: u32,
    /// A record at the first token too, so that no attempt that reached
    /// the model goes unbooked however short (one more write per attempt).
    pub first_token: bool,
}

/// One attempt's position against its [`Cadence`].
#[derive(Debug, Clone)]
pub struct Clock {
    cadence: Cadence,
    last: Instant,
    tokens_at_last: u32,
}

impl Clock {
    /// Starts counting at the attempt's start: the first record comes at
    /// the first token with `first_token`, else one interval (or `tokens`
    /// tokens) in, so short attempts write none.
    pub fn new(cadence: Cadence, start: Instant) -> Self {
        Self {
            cadence,
            last: start,
            tokens_at_last: 0,
        }
    }

    /// Whether a record is due at `now` with `tokens` generated; if so,
    /// the clock restarts from here.
    pub fn tick(&mut self, now: Instant, tokens: u32) -> bool {
        let new_tokens = tokens.saturating_sub(self.tokens_at_last);
        let first = self.cadence.first_token && self.tokens_at_last == 0;
        let due = new_tokens > 0
            && (first
                || now.saturating_duration_since(self.last) >= self.cadence.every
                || new_tokens >= self.cadence.tokens);
        if due {
            self.last = now;
            self.tokens_at_last = tokens;
        }
        due
    }
}

/// The progress bucket.
#[derive(Clone)]
pub struct ProgressLog {
    store: jetstream::kv::Store,
    metrics: WorkerMetrics,
}

impl ProgressLog {
    /// Wraps the bucket.
    pub fn new(store: jetstream::kv::Store, metrics: WorkerMetrics) -> Self {
        Self { store, metrics }
    }

    /// The request's record, if one is there.
    pub async fn get(&self, key: RequestKey<'_>) -> Result<Option<Progress>, BusError> {
        let value = self
            .store
            .get(key.tokens())
            .await
            .map_err(|e| BusError::js("progress get", e))?;
        Ok(value.and_then(|v| match serde_json::from_slice(&v) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable progress record ignored");
                None
            }
        }))
    }

    /// Deletes the request's record (logged, not returned: a record left
    /// behind expires, and booking it again is a no-op).
    pub async fn delete(&self, key: &str) {
        if let Err(e) = self.store.delete(key).await {
            tracing::warn!(error = %e, "progress record not deleted");
        }
    }

    /// Writes the record; whether it is durable.
    async fn put(&self, key: &str, progress: &Progress) -> bool {
        let value = serde_json::to_vec(progress).expect("a progress record serializes");
        let m = &self.metrics;
        match self.store.put(key, value.into()).await {
            Ok(_) => {
                m.progress_writes.get_or_create(&m.tier()).inc();
                true
            }
            Err(e) => {
                m.progress_write_failures.get_or_create(&m.tier()).inc();
                tracing::warn!(error = %e, "progress record not written; trying again");
                triage_bus::failover::suspect(&e.to_string()).await;
                false
            }
        }
    }

    /// The recorder of one delivery of `key`.
    pub fn recorder(&self, key: RequestKey<'_>) -> Recorder {
        Recorder {
            log: self.clone(),
            key: key.tokens(),
            state: Mutex::new(RecorderState::default()),
        }
    }
}

/// One delivery's progress records: a background writer started by the
/// first record, and what was written and booked.
pub struct Recorder {
    log: ProgressLog,
    key: String,
    state: Mutex<RecorderState>,
}

/// The background writer of one delivery's records.
struct Writer {
    latest: watch::Sender<Progress>,
    task: JoinHandle<()>,
    /// The attempt of the last record that is durable.
    durable: watch::Receiver<Option<u32>>,
}

#[derive(Default)]
struct RecorderState {
    writer: Option<Writer>,
    /// The attempt last recorded.
    written: Option<u32>,
    /// The highest attempt whose usage event was published.
    booked: Option<u32>,
}

impl Recorder {
    /// Records `progress` soon, without waiting (a newer snapshot replaces
    /// one not yet written).
    pub fn record(&self, progress: Progress) {
        let mut state = self.state.lock().expect("recorder lock");
        state.written = Some(progress.attempt);
        match &state.writer {
            Some(w) => {
                let _ = w.latest.send(progress);
            }
            None => {
                let (latest, rx) = watch::channel(progress);
                let (done, durable) = watch::channel(None);
                let task = tokio::spawn(write_latest(self.log.clone(), self.key.clone(), rx, done));
                state.writer = Some(Writer {
                    latest,
                    task,
                    durable,
                });
            }
        }
    }

    /// Waits, at most `limit`, until a record of `attempt` is durable;
    /// true at once when none of it was recorded (nothing to wait for).
    /// The worker sends an attempt's first chunk only after this, so an
    /// attempt whose text reached the client always leaves a record for
    /// the next delivery to book if this worker dies.
    pub async fn durable(&self, attempt: u32, limit: Duration) -> bool {
        let mut durable = {
            let state = self.state.lock().expect("recorder lock");
            match (&state.writer, state.written) {
                (Some(w), Some(a)) if a == attempt => w.durable.clone(),
                _ => return true,
            }
        };
        let wait = durable.wait_for(|d| d.is_some_and(|a| a >= attempt));
        let landed = matches!(tokio::time::timeout(limit, wait).await, Ok(Ok(_)));
        landed
    }

    /// Notes that `attempt`'s usage event is durable.
    pub fn booked(&self, attempt: u32) {
        let mut state = self.state.lock().expect("recorder lock");
        state.booked = state.booked.max(Some(attempt));
    }

    /// Ends the delivery's recording: waits for the writer, then deletes
    /// the record if its attempt was booked (else it stays for the next
    /// delivery to book). Nothing to do when nothing was recorded.
    pub async fn close(&self) {
        let (writer, written, booked) = {
            let mut state = self.state.lock().expect("recorder lock");
            (state.writer.take(), state.written, state.booked)
        };
        let Some(Writer { latest, task, .. }) = writer else {
            return;
        };
        drop(latest);
        let _ = task.await;
        if written <= booked {
            self.log.delete(&self.key).await;
        }
    }
}

/// A failed write is tried again after this (with the latest snapshot).
const RETRY: Duration = Duration::from_millis(200);

/// Writes the latest snapshot until the sender is dropped, trying a failed
/// write again until it lands (a stream electing its leader after a NATS
/// node died refuses writes for a few seconds); says which attempt is
/// durable on `done`.
async fn write_latest(
    log: ProgressLog,
    key: String,
    mut rx: watch::Receiver<Progress>,
    done: watch::Sender<Option<u32>>,
) {
    loop {
        let progress = rx.borrow_and_update().clone();
        if log.put(&key, &progress).await {
            done.send_replace(Some(progress.attempt));
        } else {
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => continue,
                changed = rx.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_protocol::{Request, RoutingDecision};

    #[test]
    fn records_come_every_interval_or_every_n_tokens_and_never_without_new_tokens() {
        let start = Instant::now();
        let cadence = Cadence {
            every: Duration::from_millis(500),
            tokens: 10,
            first_token: false,
        };
        let mut clock = Clock::new(cadence, start);
        let at = |ms| start + Duration::from_millis(ms);
        assert!(!clock.tick(at(100), 3), "short attempts write nothing");
        assert!(clock.tick(at(200), 10), "ten new tokens");
        assert!(!clock.tick(at(300), 12));
        assert!(clock.tick(at(700), 13), "half a second since the last");
        assert!(!clock.tick(at(2000), 13), "nothing new to record");
        assert!(clock.tick(at(2001), 14));

        let mut clock = Clock::new(
            Cadence {
                first_token: true,
                ..cadence
            },
            start,
        );
        assert!(!clock.tick(at(50), 0), "no token yet");
        assert!(clock.tick(at(60), 1), "the first token is recorded");
        assert!(!clock.tick(at(100), 3), "then the cadence");
        assert!(clock.tick(at(200), 11), "ten new tokens");
    }

    #[test]
    fn an_interrupted_attempt_is_booked_with_its_recorded_tokens_as_an_estimate() {
        let routed = RoutedRequest {
            version: 1,
            request: Request {
                id: "r1".into(),
                tenant: Some("acme".into()),
                ..Request::from_prompt("hi")
            },
            routing: RoutingDecision::fixed(Tier::Small, "embedding=0.2"),
            routed_at_ms: 1,
        };
        let p = Progress {
            attempt: 3,
            tier: Tier::Small,
            model: "m".into(),
            backend: "gpu-a".into(),
            prompt_tokens: 12,
            completion_tokens: 40,
            started_at_ms: 1_000,
            recorded_at_ms: 3_500,
        };
        let e = p.interrupted_event(&routed);
        assert_eq!((e.attempt, e.status), (3, UsageStatus::Interrupted));
        assert_eq!((e.usage.prompt_tokens, e.usage.completion_tokens), (12, 40));
        assert!(e.usage.estimated);
        assert_eq!((e.total_ms, e.finished_at_ms), (2500.0, 3_500));
        assert_eq!(e.tenant.as_deref(), Some("acme"));
        assert_eq!(e.reasons, routed.routing.reasons);
        // The same message id as the attempt's own event would have had.
        assert_eq!(e.msg_id(), "usage:acme.r1:3");
    }
}
