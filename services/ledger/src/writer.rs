//! The ledger writer: a durable pull consumer on `llm.usage` that books
//! events in batches.
//!
//! Durability, step by step, for each batch:
//! 1. decode every message; a message that cannot be decoded is
//!    dead-lettered (`llm.dead`, with the reason) and acked;
//! 2. book the decodable events in ONE Postgres transaction (ledger rows
//!    plus rollups), retrying with exponential backoff for as long as
//!    Postgres is unreachable — the messages stay unacked in JetStream
//!    meanwhile (kept alive with in-progress acks);
//!    then record the grades judge events carry in `outcomes` ([`crate::judged`]);
//! 3. dead-letter events Postgres can never take (validation, no price);
//! 4. only then ack every message of the batch.
//!
//! While one batch is being booked the next is already being pulled, so
//! Postgres never waits on NATS; commits themselves happen one at a time.
//!
//! Acks are sent without waiting for the server's confirmation: an ack lost
//! on the way means JetStream redelivers the message after `ack_wait`, and
//! booking it again inserts nothing because rows are keyed by
//! (request id, attempt) with `ON CONFLICT DO NOTHING` and the rollups only
//! count inserted rows. So a crash or lost ack at any point leads to a
//! redelivery, never to a loss or a double booking.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use triage_protocol::{decode, headers, Encoding, ErrorCode, Namespace, UsageEvent};

use crate::entry::Rejection;
use crate::store::{Booked, Store, StoreError};

/// The service name written on dead letters.
pub const SERVICE: &str = "ledger";

/// How the writer consumes and retries.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct WriterConfig {
    /// Durable consumer name (prefixed by the deployment's namespace).
    pub consumer: String,
    /// Most events booked in one transaction.
    pub batch_size: usize,
    /// How long to wait for a batch to fill once its first event arrived.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Messages requested from JetStream ahead of processing.
    pub prefetch: usize,
    /// Redelivery after this long without an ack or in-progress ack.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacked messages the consumer allows in flight.
    pub max_ack_pending: i64,
    /// First retry delay when Postgres or NATS fails.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest retry delay (backoff doubles up to it, with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How often the consumer's pending count is read for metrics.
    #[serde(with = "humantime_serde")]
    pub pending_poll: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            consumer: "ledger".into(),
            batch_size: 1000,
            batch_wait: Duration::from_millis(20),
            prefetch: 2000,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 20_000,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(15),
            pending_poll: Duration::from_secs(5),
        }
    }
}

/// The outcomes of a usage event.
pub const OUTCOMES: [&str; 3] = ["booked", "duplicate", "dead_lettered"];

/// Labels of the events counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `booked`, `duplicate` or `dead_lettered`.
    pub outcome: &'static str,
}

/// The writer's Prometheus metrics.
#[derive(Debug, Clone)]
pub struct WriterMetrics {
    /// Events by outcome.
    pub events: Family<OutcomeLabel, Counter>,
    /// Committed batches.
    pub batches: Counter,
    /// Events per batch.
    pub batch_size: Histogram,
    /// Time to book a batch (one successful transaction), seconds.
    pub commit_seconds: Histogram,
    /// From the attempt's end to its booking, seconds.
    pub lag_seconds: Histogram,
    /// Failed booking attempts (each is retried).
    pub db_errors: Counter,
    /// 1 while the writer is backing off after a failure.
    pub retrying: Gauge,
    /// Unix time of the last commit, seconds.
    pub last_commit: Gauge<f64, AtomicU64>,
    /// Messages in the stream the consumer has not been delivered yet.
    pub consumer_pending: Gauge<i64, AtomicI64>,
    /// Messages delivered and not yet acked.
    pub consumer_ack_pending: Gauge<i64, AtomicI64>,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        let events: Family<OutcomeLabel, Counter> = Family::default();
        // Every outcome exists from the start: the series show 0 rather than
        // being absent, and reading one never needs the family's write lock.
        for outcome in OUTCOMES {
            drop(events.get_or_create(&OutcomeLabel { outcome }));
        }
        Self {
            events,
            batches: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            lag_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            db_errors: Counter::default(),
            retrying: Gauge::default(),
            last_commit: Gauge::default(),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
        }
    }
}

impl WriterMetrics {
    /// Registers every metric under `triage_ledger_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("triage_ledger");
        r.register(
            "events",
            "Usage events handled, by outcome",
            self.events.clone(),
        );
        r.register("batches", "Batches committed", self.batches.clone());
        r.register(
            "batch_size",
            "Events per committed batch",
            self.batch_size.clone(),
        );
        r.register(
            "commit_seconds",
            "Time to book one batch in Postgres",
            self.commit_seconds.clone(),
        );
        r.register(
            "lag_seconds",
            "Time from a generation attempt's end to its booking",
            self.lag_seconds.clone(),
        );
        r.register(
            "db_errors",
            "Failed booking attempts (retried with backoff)",
            self.db_errors.clone(),
        );
        r.register(
            "retrying",
            "1 while backing off after a Postgres or NATS failure",
            self.retrying.clone(),
        );
        r.register(
            "last_commit_timestamp_seconds",
            "Unix time of the last committed batch",
            self.last_commit.clone(),
        );
        r.register(
            "consumer_pending",
            "Usage events in JetStream not yet delivered to the ledger writer",
            self.consumer_pending.clone(),
        );
        r.register(
            "consumer_ack_pending",
            "Usage events delivered to the ledger writer and not yet acked",
            self.consumer_ack_pending.clone(),
        );
    }

    /// Events so far with `outcome` (`booked`, `duplicate`, `dead_lettered`).
    pub fn events_with(&self, outcome: &'static str) -> u64 {
        self.events.get_or_create(&OutcomeLabel { outcome }).get()
    }

    fn count(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.events
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
    }
}

/// Why the writer stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// A JetStream call failed in a way the writer cannot recover from.
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// A running writer's parts.
pub struct Writer {
    store: Store,
    client: async_nats::Client,
    js: jetstream::Context,
    ns: Namespace,
    config: WriterConfig,
    metrics: WriterMetrics,
}

/// What one batch came to, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    /// Rows inserted.
    pub booked: u64,
    /// Events already booked.
    pub duplicates: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
}

enum Collected {
    /// A batch to book.
    Batch(Vec<jetstream::Message>),
    /// Shutdown was requested while waiting for a first message.
    Shutdown,
    /// The pull stream ended (with what was gathered before).
    Ended(Vec<jetstream::Message>),
}

struct DeadItem {
    index: usize,
    code: ErrorCode,
    reason: String,
}

fn backoff_policy(config: &WriterConfig) -> backoff::ExponentialBackoff {
    backoff::ExponentialBackoff {
        initial_interval: config.retry_initial,
        max_interval: config.retry_max,
        multiplier: 2.0,
        randomization_factor: 0.3,
        // Retry for as long as it takes: the events are safe in JetStream.
        max_elapsed_time: None,
        ..Default::default()
    }
}

impl Writer {
    /// A writer booking into `store` from the namespace's usage stream.
    pub fn new(
        store: Store,
        client: async_nats::Client,
        ns: Namespace,
        config: WriterConfig,
        metrics: WriterMetrics,
    ) -> Self {
        Self {
            store,
            js: jetstream::new(client.clone()),
            client,
            ns,
            config,
            metrics,
        }
    }

    /// The durable consumer's configuration: explicit acks, and unlimited
    /// deliveries — an event must never be dropped because Postgres was
    /// down for a while; poison messages are dead-lettered instead.
    pub fn consumer_config(&self) -> pull::Config {
        let durable = self.ns.consumer(&self.config.consumer);
        pull::Config {
            durable_name: Some(durable),
            description: Some("Triage ledger writer: books llm.usage into Postgres".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            max_deliver: -1,
            max_ack_pending: self.config.max_ack_pending,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        }
    }

    async fn consumer(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, WriterError> {
        let stream_name = self.ns.stream_name(triage_protocol::StreamKind::Usage);
        let stream =
            self.js.get_stream(&stream_name).await.map_err(|e| {
                WriterError::JetStream(format!("look up stream {stream_name}: {e}"))
            })?;
        let config = self.consumer_config();
        let name = config.durable_name.clone().unwrap_or_default();
        match stream.create_consumer(config).await {
            Ok(c) => Ok(c),
            // NATS 2.9 refuses some updates of a live consumer; another
            // replica created it, so join it.
            Err(create_err) => stream.get_consumer(&name).await.map_err(|_| {
                WriterError::JetStream(format!(
                    "create consumer {name} on {stream_name}: {create_err}"
                ))
            }),
        }
    }

    /// Consumes until `shutdown` is cancelled, then finishes the batch in
    /// hand (or hands it back) and flushes acks.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WriterError> {
        let consumer = self.consumer().await?;
        let poller = tokio::spawn(poll_pending(
            consumer.clone(),
            self.metrics.clone(),
            self.config.pending_poll,
            shutdown.clone(),
        ));
        let result = self.consume(&consumer, &shutdown).await;
        poller.abort();
        // Acks are buffered by the client; push them out before exiting.
        if let Err(e) = self.js_client_flush().await {
            tracing::warn!(error = %e, "flushing acks at shutdown failed; unflushed events will be redelivered and skipped as duplicates");
        }
        result
    }

    async fn js_client_flush(&self) -> Result<(), async_nats::client::FlushError> {
        self.client.flush().await
    }

    async fn consume(
        &self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        shutdown: &CancellationToken,
    ) -> Result<(), WriterError> {
        let mut retry = backoff_policy(&self.config);
        'reconnect: loop {
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(self.config.prefetch.max(self.config.batch_size))
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    let delay = backoff::backoff::Backoff::next_backoff(&mut retry)
                        .unwrap_or(self.config.retry_max);
                    tracing::warn!(error = %e, ?delay, "cannot start pulling from llm.usage; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => continue 'reconnect,
                    }
                }
            };
            backoff::backoff::Backoff::reset(&mut retry);
            // A two-stage pipeline: the next batch is pulled and collected
            // while the current one is being booked, so the commit (the
            // bottleneck) is never waiting on NATS. Commits stay strictly
            // one at a time.
            let mut current: Option<Vec<jetstream::Message>> = None;
            loop {
                let next = match current.take() {
                    Some(batch) => {
                        let (_, next) = tokio::join!(
                            self.process(batch, shutdown),
                            self.collect(&mut messages, shutdown)
                        );
                        next
                    }
                    None => self.collect(&mut messages, shutdown).await,
                };
                match next {
                    Collected::Batch(batch) => current = Some(batch),
                    Collected::Shutdown => return Ok(()),
                    Collected::Ended(batch) => {
                        if !batch.is_empty() {
                            self.process(batch, shutdown).await;
                        }
                        tracing::warn!("pull stream ended; re-subscribing");
                        continue 'reconnect;
                    }
                }
            }
        }
    }

    /// Waits for a first message, then gathers more until the batch is
    /// full or `batch_wait` has passed.
    async fn collect(
        &self,
        messages: &mut pull::Stream,
        shutdown: &CancellationToken,
    ) -> Collected {
        let first = loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Collected::Shutdown,
                m = messages.next() => m,
            };
            match next {
                Some(Ok(m)) => break m,
                // Missed heartbeats after a long Postgres outage, a NATS
                // reconnect: the stream resumes by itself.
                Some(Err(e)) => tracing::debug!(error = %e, "pull stream hiccup"),
                None => return Collected::Ended(Vec::new()),
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.config.batch_wait;
        while batch.len() < self.config.batch_size {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => batch.push(m),
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "pull stream hiccup");
                    break;
                }
                Ok(None) => return Collected::Ended(batch),
                Err(_) => break,
            }
        }
        Collected::Batch(batch)
    }

    /// Books one batch of messages and acks them; see the module docs for
    /// the order of steps. Returns when every message is acked, or handed
    /// back on shutdown.
    pub async fn process(
        &self,
        batch: Vec<jetstream::Message>,
        shutdown: &CancellationToken,
    ) -> BatchOutcome {
        let mut events: Vec<(usize, UsageEvent)> = Vec::with_capacity(batch.len());
        let mut dead: Vec<DeadItem> = Vec::new();
        // Ids are scoped by tenant: the same id of two tenants is two requests.
        let mut seen: HashSet<(Option<String>, String, u32)> = HashSet::with_capacity(batch.len());
        let mut in_batch_duplicates = 0u64;
        for (index, m) in batch.iter().enumerate() {
            let encoding = Encoding::from_content_type(
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(headers::CONTENT_TYPE))
                    .map(|v| v.as_str()),
            );
            match decode::<UsageEvent>(encoding, &m.payload) {
                Ok(event) => {
                    if seen.insert((event.tenant.clone(), event.id.clone(), event.attempt)) {
                        events.push((index, event));
                    } else {
                        in_batch_duplicates += 1;
                    }
                }
                Err(e) => dead.push(DeadItem {
                    index,
                    code: e.error_code(),
                    reason: format!("undecodable usage event: {e}"),
                }),
            }
        }

        // One span per event, child of the trace the event carries, so a
        // request's trace runs from the client to its booking. They close
        // when the batch is acked.
        let _spans: Vec<tracing::Span> = events
            .iter()
            .filter_map(|(i, e)| {
                let h = batch[*i].headers.as_ref()?;
                triage_bus::trace::traceparent(h)?;
                let span = tracing::info_span!("ledger.book", request_id = %e.id, attempt = e.attempt, tier = %e.tier,
                    trace_id = tracing::field::Empty, otel.kind = "consumer");
                triage_bus::trace::adopt_parent(&span, h);
                Some(span)
            })
            .collect();
        let refs: Vec<&UsageEvent> = events.iter().map(|(_, e)| e).collect();
        let Some(booked) = self.book_with_retry(&refs, &batch, shutdown).await else {
            self.hand_back(&batch).await;
            return BatchOutcome::default();
        };
        let judged = judged_events(&events, &booked);
        if !self
            .record_judged_with_retry(&judged, &batch, shutdown)
            .await
        {
            self.hand_back(&batch).await;
            return BatchOutcome::default();
        }
        dead.extend(
            booked
                .rejected
                .iter()
                .map(|(i, r): &(usize, Rejection)| DeadItem {
                    index: events[*i].0,
                    code: r.code,
                    reason: r.reason.clone(),
                }),
        );

        let mut dead_lettered = 0u64;
        let mut not_acked: HashSet<usize> = HashSet::new();
        for item in &dead {
            if self
                .dead_letter_with_retry(&batch[item.index], item, shutdown)
                .await
            {
                dead_lettered += 1;
            } else {
                // Shutting down before the dead letter was stored: leave the
                // message unacked so it comes back.
                not_acked.insert(item.index);
            }
        }
        for (index, m) in batch.iter().enumerate() {
            if not_acked.contains(&index) {
                continue;
            }
            if let Err(e) = m.ack().await {
                tracing::warn!(error = %e, "ack failed; the event will be redelivered and skipped as a duplicate");
            }
        }

        let outcome = BatchOutcome {
            booked: booked.inserted,
            duplicates: booked.duplicates + in_batch_duplicates,
            dead_lettered,
        };
        self.metrics.count("booked", outcome.booked);
        self.metrics.count("duplicate", outcome.duplicates);
        self.metrics.count("dead_lettered", outcome.dead_lettered);
        let now_ms = triage_protocol::now_ms();
        for (_, e) in &events {
            self.metrics
                .lag_seconds
                .observe(now_ms.saturating_sub(e.finished_at_ms) as f64 / 1000.0);
        }
        tracing::debug!(
            booked = outcome.booked,
            duplicates = outcome.duplicates,
            dead_lettered = outcome.dead_lettered,
            "batch committed"
        );
        outcome
    }

    /// Books until it succeeds or shutdown is requested (`None`). Keeps
    /// the batch's messages alive in JetStream while retrying.
    async fn book_with_retry(
        &self,
        events: &[&UsageEvent],
        batch: &[jetstream::Message],
        shutdown: &CancellationToken,
    ) -> Option<Booked> {
        let mut retry = backoff_policy(&self.config);
        let mut last_progress = Instant::now();
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            match self
                .store
                .book_isolating(events, triage_protocol::now_ms())
                .await
            {
                Ok(booked) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batches.inc();
                    self.metrics.batch_size.observe(batch.len() as f64);
                    self.metrics
                        .last_commit
                        .set(triage_protocol::now_ms() as f64 / 1000.0);
                    self.metrics.retrying.set(0);
                    if failures > 0 {
                        tracing::info!(failures, "postgres is back; batch booked");
                    }
                    return Some(booked);
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.db_errors.inc();
                    self.metrics.retrying.set(1);
                    let delay = backoff::backoff::Backoff::next_backoff(&mut retry)
                        .unwrap_or(self.config.retry_max);
                    log_store_error(&e, failures, delay, batch.len());
                    if last_progress.elapsed() >= self.config.ack_wait / 3 {
                        keep_alive(batch).await;
                        last_progress = Instant::now();
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Records the judge grades of booked judge events (step 2 continued:
    /// before the ack); retries like booking, `false` on shutdown.
    async fn record_judged_with_retry(
        &self,
        judged: &[&UsageEvent],
        batch: &[jetstream::Message],
        shutdown: &CancellationToken,
    ) -> bool {
        if judged.is_empty() {
            return true;
        }
        let mut retry = backoff_policy(&self.config);
        let mut failures = 0u32;
        loop {
            match crate::judged::record_all(self.store.pool(), judged).await {
                Ok(_) => return true,
                Err(e) => {
                    failures += 1;
                    self.metrics.db_errors.inc();
                    let delay = backoff::backoff::Backoff::next_backoff(&mut retry)
                        .unwrap_or(self.config.retry_max);
                    log_store_error(&e, failures, delay, batch.len());
                    keep_alive(batch).await;
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Publishes a dead letter and waits for JetStream to store it; retries
    /// until stored or shutdown (`false`).
    async fn dead_letter_with_retry(
        &self,
        message: &jetstream::Message,
        item: &DeadItem,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut retry = backoff_policy(&self.config);
        loop {
            match self.dead_letter(message, item).await {
                Ok(()) => return true,
                Err(e) => {
                    let delay = backoff::backoff::Backoff::next_backoff(&mut retry)
                        .unwrap_or(self.config.retry_max);
                    tracing::warn!(error = %e, ?delay, "dead-lettering failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        item: &DeadItem,
    ) -> Result<(), String> {
        let (deliveries, seq) = message
            .info()
            .map(|i| (i.delivered as u64, i.stream_sequence))
            .unwrap_or((1, 0));
        let mut h = message.headers.clone().unwrap_or_default();
        // One dead letter per original message even if this is retried
        // after a lost ack: JetStream de-duplicates on this id.
        h.insert(
            headers::MSG_ID,
            format!("ledger-dead:{}:{seq}", self.ns.usage()).as_str(),
        );
        tracing::warn!(code = %item.code, reason = %item.reason, stream_seq = seq, "dead-lettering usage event");
        triage_bus::DeadLetter {
            subject: message.subject.as_str(),
            payload: &message.payload,
            headers: Some(&h),
            reason: &item.reason,
            code: item.code,
            service: SERVICE,
            deliveries,
        }
        .publish(&self.js, &self.ns)
        .await
        .map_err(|e| e.to_string())
    }

    async fn hand_back(&self, batch: &[jetstream::Message]) {
        for m in batch {
            // Best effort: unacked messages come back after ack_wait anyway.
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// The booked (not rejected) events that carry a judge's grade.
fn judged_events<'a>(events: &'a [(usize, UsageEvent)], booked: &Booked) -> Vec<&'a UsageEvent> {
    let rejected: HashSet<usize> = booked.rejected.iter().map(|(i, _)| *i).collect();
    let mut judged = Vec::new();
    for (i, (_, e)) in events.iter().enumerate() {
        if e.judged.is_some() && !rejected.contains(&i) {
            judged.push(e);
        }
    }
    judged
}

fn log_store_error(e: &StoreError, failures: u32, delay: Duration, events: usize) {
    if e.is_transient() {
        tracing::warn!(error = %e, failures, ?delay, events, "postgres unavailable; events stay in JetStream, retrying");
    } else {
        tracing::error!(error = %e, failures, ?delay, events, "booking failed; retrying");
    }
}

async fn keep_alive(batch: &[jetstream::Message]) {
    for m in batch {
        let _ = m.ack_with(AckKind::Progress).await;
    }
}

async fn poll_pending(
    mut consumer: jetstream::consumer::Consumer<pull::Config>,
    metrics: WriterMetrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match consumer.info().await {
            Ok(info) => {
                metrics.consumer_pending.set(info.num_pending as i64);
                metrics
                    .consumer_ack_pending
                    .set(info.num_ack_pending as i64);
            }
            Err(e) => tracing::debug!(error = %e, "consumer info failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
