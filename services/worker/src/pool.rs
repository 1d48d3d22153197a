//! The tier's backends: least-in-flight choice, circuit breakers fed by
//! health checks and request failures, what each backend serves (model name,
//! `max_model_len`), and pre-warming of idle ones.
//!
//! [`pick`] is the pure selection rule; the rest is I/O at the edge.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use triage_backend::{BackendClient, ChatMessage, ChatRequest};

use crate::breaker::Breaker;
use crate::config::{BackendSpec, WorkerConfig};
use crate::metrics::WorkerMetrics;

/// One candidate for [`pick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Generations running on it now.
    pub in_flight: usize,
    /// Whether its breaker lets requests through.
    pub available: bool,
}

/// The backend with the fewest requests in flight among the available ones,
/// preferring any other than `avoid` (the one that just failed); ties go to
/// the first at or after `start`, so equal backends share the load.
pub fn pick(candidates: &[Candidate], avoid: Option<usize>, start: usize) -> Option<usize> {
    let n = candidates.len();
    let available: Vec<usize> = (0..n)
        .map(|i| (start + i) % n.max(1))
        .filter(|&i| candidates[i].available)
        .collect();
    let preferred: Vec<usize> = available
        .iter()
        .copied()
        .filter(|&i| Some(i) != avoid)
        .collect();
    let pool = if preferred.is_empty() {
        &available
    } else {
        &preferred
    };
    pool.iter()
        .copied()
        .min_by_key(|&i| candidates[i].in_flight)
}

#[derive(Debug)]
struct Discovered {
    breaker: Breaker,
    model: Option<String>,
    max_model_len: Option<u32>,
    last_used: Instant,
}

/// One backend of the tier.
#[derive(Debug)]
pub struct Backend {
    /// Metrics/log label.
    pub label: String,
    /// Its HTTP client.
    pub client: BackendClient,
    /// Its configuration.
    pub spec: BackendSpec,
    configured_model: Option<String>,
    in_flight: AtomicUsize,
    state: Mutex<Discovered>,
}

impl Backend {
    fn lock(&self) -> std::sync::MutexGuard<'_, Discovered> {
        // Nothing panics while holding it; a poisoned lock holds valid data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model name to send: configured, else discovered, else none.
    pub fn model(&self) -> Option<String> {
        self.configured_model
            .clone()
            .or_else(|| self.lock().model.clone())
    }

    /// The context window: configured, else discovered from `/v1/models`.
    pub fn max_model_len(&self) -> Option<u32> {
        self.spec
            .max_model_len
            .or_else(|| self.lock().max_model_len)
    }

    /// Generations running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the breaker lets requests through now.
    pub fn available(&self) -> bool {
        self.lock().breaker.allows_requests(Instant::now())
    }
}

/// A backend taken for one call; gives its in-flight slot back when dropped.
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    index: usize,
    metrics: WorkerMetrics,
}

impl Lease {
    /// The backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Its position in the pool (for `avoid`).
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .backend_in_flight
            .get_or_create(&self.metrics.backend(&self.backend.label))
            .dec();
    }
}

/// The tier's backends.
#[derive(Debug)]
pub struct BackendPool {
    backends: Vec<Arc<Backend>>,
    metrics: WorkerMetrics,
    rotate: AtomicUsize,
}

/// A backend client that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("backend {label}: {source}")]
pub struct PoolError {
    /// The backend.
    pub label: String,
    /// Why.
    pub source: triage_backend::BackendError,
}

impl BackendPool {
    /// Builds the clients; every breaker starts closed.
    pub fn new(config: &WorkerConfig, metrics: WorkerMetrics) -> Result<Self, PoolError> {
        let now = Instant::now();
        let mut backends = Vec::new();
        for spec in config.backend_specs() {
            let label = spec.label();
            let client =
                BackendClient::new(config.client_config(&spec)).map_err(|source| PoolError {
                    label: label.clone(),
                    source,
                })?;
            let configured_model = spec
                .model
                .clone()
                .or_else(|| (!config.model.is_empty()).then(|| config.model.clone()));
            metrics
                .backend_healthy
                .get_or_create(&metrics.backend(&label))
                .set(1);
            metrics
                .backend_in_flight
                .get_or_create(&metrics.backend(&label))
                .set(0);
            backends.push(Arc::new(Backend {
                label,
                client,
                spec,
                configured_model,
                in_flight: AtomicUsize::new(0),
                state: Mutex::new(Discovered {
                    breaker: Breaker::new(config.health.failure_threshold, config.health.open_for),
                    model: None,
                    max_model_len: None,
                    last_used: now,
                }),
            }));
        }
        Ok(Self {
            backends,
            metrics,
            rotate: AtomicUsize::new(0),
        })
    }

    /// The backends.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Takes the least busy available backend, avoiding `avoid` if another
    /// is available. `None` when every breaker is open.
    pub fn choose(&self, avoid: Option<usize>) -> Option<Lease> {
        let now = Instant::now();
        let candidates: Vec<Candidate> = self
            .backends
            .iter()
            .map(|b| Candidate {
                in_flight: b.in_flight(),
                available: b.lock().breaker.allows_requests(now),
            })
            .collect();
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        let index = pick(&candidates, avoid, start)?;
        let backend = self.backends[index].clone();
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        backend.lock().last_used = now;
        self.metrics
            .backend_in_flight
            .get_or_create(&self.metrics.backend(&backend.label))
            .inc();
        Some(Lease {
            backend,
            index,
            metrics: self.metrics.clone(),
        })
    }

    /// A call on `backend` succeeded.
    pub fn record_success(&self, backend: &Backend) {
        backend.lock().breaker.record_success();
        self.set_health_gauge(backend);
    }

    /// A call on `backend` failed in a way that may be its fault.
    pub fn record_failure(&self, backend: &Backend) {
        let opened = backend.lock().breaker.record_failure(Instant::now());
        if opened {
            tracing::warn!(backend = %backend.label, "backend taken out (circuit breaker open)");
        }
        self.set_health_gauge(backend);
    }

    fn set_health_gauge(&self, backend: &Backend) {
        let healthy = backend.available();
        self.metrics
            .backend_healthy
            .get_or_create(&self.metrics.backend(&backend.label))
            .set(i64::from(healthy));
    }

    /// One round of health checks (skipping backends whose breaker is open
    /// and not yet due for a probe); learns model names and context windows
    /// from `/v1/models` while they are unknown.
    pub async fn check_health(&self) {
        let checks = self.backends.iter().map(|b| async move {
            let due = b.lock().breaker.wants_probe(Instant::now());
            if !due {
                self.set_health_gauge(b);
                return;
            }
            match b.client.health().await {
                Ok(()) => {
                    let was_available = b.available();
                    self.record_success(b);
                    if !was_available {
                        tracing::info!(backend = %b.label, "backend back in service");
                    }
                    self.discover(b).await;
                }
                Err(e) => {
                    tracing::warn!(backend = %b.label, error = %e, "health check failed");
                    self.record_failure(b);
                }
            }
        });
        futures::future::join_all(checks).await;
    }

    async fn discover(&self, b: &Backend) {
        let need_len = b.spec.max_model_len.is_none() && b.lock().max_model_len.is_none();
        let need_model = b.configured_model.is_none() && b.lock().model.is_none();
        if !need_len && !need_model {
            return;
        }
        match b.client.models().await {
            Ok(list) => {
                let wanted = b.model();
                let card = list
                    .data
                    .iter()
                    .find(|c| Some(&c.id) == wanted.as_ref())
                    .or(list.data.first());
                if let Some(card) = card {
                    let mut s = b.lock();
                    if s.model.is_none() {
                        s.model = Some(card.id.clone());
                    }
                    if s.max_model_len.is_none() {
                        s.max_model_len = card.context_length();
                    }
                    tracing::info!(
                        backend = %b.label,
                        model = %card.id,
                        max_model_len = ?card.context_length(),
                        "backend serves"
                    );
                }
            }
            Err(e) => tracing::warn!(backend = %b.label, error = %e, "cannot list models"),
        }
    }

    /// Health-checks every `interval` until `shutdown`.
    pub async fn run_health_checks(
        self: Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.check_health().await,
            }
        }
    }

    /// Sends a one-token request to every available backend idle for
    /// `idle_after`, so its weights and caches stay hot; until `shutdown`.
    pub async fn run_prewarm(self: Arc<Self>, idle_after: Duration, shutdown: CancellationToken) {
        if idle_after.is_zero() {
            return;
        }
        let every = (idle_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            for b in &self.backends {
                let idle = {
                    let mut s = b.lock();
                    let idle = b.in_flight() == 0
                        && s.breaker.allows_requests(now)
                        && now.duration_since(s.last_used) >= idle_after;
                    if idle {
                        s.last_used = now;
                    }
                    idle
                };
                if !idle {
                    continue;
                }
                let mut request = ChatRequest::new(vec![ChatMessage::user("ping")]);
                request.model = b.model();
                request.max_tokens = Some(1);
                self.metrics
                    .prewarms
                    .get_or_create(&self.metrics.backend(&b.label))
                    .inc();
                match b.client.chat(&request).await {
                    Ok(_) => tracing::debug!(backend = %b.label, "pre-warmed idle backend"),
                    Err(e) => {
                        tracing::warn!(backend = %b.label, error = %e, "pre-warm request failed");
                        if e.is_retryable() {
                            self.record_failure(b);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(in_flight: usize, available: bool) -> Candidate {
        Candidate {
            in_flight,
            available,
        }
    }

    #[test]
    fn least_in_flight_among_available() {
        let cs = [c(3, true), c(1, true), c(0, false), c(2, true)];
        assert_eq!(pick(&cs, None, 0), Some(1));
        assert_eq!(pick(&[c(0, false), c(0, false)], None, 0), None);
        assert_eq!(pick(&[], None, 0), None);
    }

    #[test]
    fn ties_rotate_and_the_failed_backend_is_avoided() {
        let cs = [c(0, true), c(0, true), c(0, true)];
        assert_eq!(pick(&cs, None, 0), Some(0));
        assert_eq!(pick(&cs, None, 1), Some(1));
        assert_eq!(pick(&cs, None, 5), Some(2));
        // Avoided even when it is the least busy, if another is available...
        let cs = [c(0, true), c(4, true)];
        assert_eq!(pick(&cs, Some(0), 0), Some(1));
        // ...but used when it is the only one.
        let cs = [c(0, true), c(0, false)];
        assert_eq!(pick(&cs, Some(0), 0), Some(0));
    }
}
