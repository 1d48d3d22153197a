//! `triage-router run`: the JetStream service.
//!
//! One durable pull consumer on `llm.requests` (and the tenant-bound
//! `llm.requests.<tenant>`, see [`crate::tenancy`]), shared by every replica.
//! Messages are collected into micro-batches (up to `max_batch` or
//! `max_wait`); what needs the transformer joins the model queue
//! ([`crate::model_queue`]), whose passes take everything waiting; each is
//! republished to `llm.tier1` /
//! `llm.tier2`; each original is acked only after JetStream confirmed its
//! republish, so a crash at any point loses nothing (the message comes back
//! after `ack_wait`, and the republish's `Nats-Msg-Id` makes a repeat a
//! no-op). Undecodable or invalid messages get an error reply when a reply
//! subject is known; what cannot be answered goes to `llm.dead` with the
//! reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Message};
use futures::{FutureExt, StreamExt};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};
use triage_bus::{consumer, publish, DeadLetter, Envelope};
use triage_complexity::scorer::Scorer;
use triage_protocol::{
    decode, encode, ErrorCode, ErrorReply, Namespace, Reply, ReplySubjectError, Request,
    RoutedRequest, StreamKind, SCHEMA_VERSION,
};

use crate::config::RouterConfig;
use crate::heads;
use crate::metrics::{kind_label, RouterMetrics};
use crate::policy;
use crate::routing::{RouteInfo, Routed, Router};
use crate::self_rating::{LlmSelfRater, SelfRater};
use crate::tenancy;
use crate::validation::validate;

/// The service name in dead letters and logs.
pub const SERVICE: &str = "router";

/// The pull consumer's message stream.
type Messages = jetstream::consumer::pull::Stream;

/// How long shutdown keeps handing back messages already pulled.
const SHUTDOWN_RETURN_WINDOW: Duration = Duration::from_millis(300);

/// Runs the service until SIGTERM/Ctrl-C, then drains in-flight batches.
pub async fn run(config: RouterConfig) -> anyhow::Result<()> {
    info!(config = %triage_runtime::masked(&config), "triage-router starting");
    let shutdown = triage_runtime::shutdown_token();
    let mut registry = Registry::default();
    let metrics = Arc::new(RouterMetrics::register(&mut registry));
    let client = triage_bus::connect(&config.nats).await?;
    // Ready once the scorer is loaded and NATS has the streams it uses.
    let built = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = triage_runtime::metrics::serve_with_readiness(
        config.metrics_addr,
        Arc::new(registry),
        readiness(&client, &config, built.clone())?,
        shutdown.clone(),
    )
    .await?;
    info!(%addr, "metrics on /metrics, readiness on /health/ready");
    let router = build_router(&config).await?;
    built.store(true, std::sync::atomic::Ordering::Relaxed);
    serve(client, config, router, metrics, shutdown).await
}

fn readiness(
    client: &async_nats::Client,
    config: &RouterConfig,
    built: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<triage_runtime::Readiness> {
    let ns = config.nats.namespace()?;
    let streams: Vec<String> = [StreamKind::Requests, StreamKind::Tier1, StreamKind::Tier2]
        .map(|k| ns.stream_name(k))
        .into();
    Ok(triage_runtime::Readiness::new()
        .check(
            "nats",
            triage_bus::connect::streams_check(client.clone(), streams),
        )
        .check("scorer", move || {
            let loaded = built.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                loaded
                    .then_some(())
                    .ok_or_else(|| "still loading".to_string())
            }
        }))
}

/// Loads the scorer (off the async threads) and the self-rater. A scorer
/// that cannot load is logged and kept as an error: every request then
/// goes to tier 2 with `router_failure` rather than failing.
pub async fn build_router(config: &RouterConfig) -> anyhow::Result<Router> {
    let scoring = config.scoring.clone();
    let started = Instant::now();
    let scorer = tokio::task::spawn_blocking(move || Scorer::new(scoring))
        .await?
        .map(Arc::new)
        .map_err(|e| e.to_string());
    match &scorer {
        Ok(s) => info!(
            ms = started.elapsed().as_millis() as u64,
            precision = ?s.model().precision(),
            "scoring model loaded"
        ),
        Err(e) => {
            error!(error = %e, "scoring model unavailable: every request goes to tier 2 (router_failure)")
        }
    }
    let rater: Option<Arc<dyn SelfRater>> = if config.self_rating.enabled {
        Some(Arc::new(LlmSelfRater::new(&config.self_rating)?))
    } else {
        None
    };
    Ok(Router::new(
        scorer,
        rater,
        config.self_rating.max_concurrency,
        config.batching.model_threads,
        config.policy.clone(),
        config.batching.score_timeout,
    ))
}

/// Admits, routes and republishes one micro-batch at a time; what every
/// batch task shares.
struct BatchProcessor {
    client: async_nats::Client,
    js: jetstream::Context,
    ns: Namespace,
    router: Router,
    metrics: Arc<RouterMetrics>,
    config: RouterConfig,
}

/// Consumes `llm.requests` until `shutdown` fires, then stops pulling,
/// hands back what it pulled but did not start, and waits for in-flight
/// batches to finish.
pub async fn serve(
    client: async_nats::Client,
    config: RouterConfig,
    router: Router,
    metrics: Arc<RouterMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let ns = config.nats.namespace()?;
    let js = jetstream::new(client.clone());
    triage_bus::provision(&js, &ns, &config.nats.streams).await?;
    let consumer = consumer::durable(
        &js,
        &ns,
        StreamKind::Requests,
        &config.consumer.durable,
        &config.consumer.settings,
    )
    .await?;
    let max_batch = config.batching.max_batch;
    let max_wait = config.batching.max_wait;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(max_batch * 2)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    info!(
        subject = %ns.requests(),
        durable = %ns.consumer(&config.consumer.durable),
        max_batch,
        max_wait_ms = max_wait.as_millis() as u64,
        "routing"
    );
    let following = match (config.follow_heads, router.scorer()) {
        (true, Some(scorer)) => Some(
            heads::follow(
                heads::bucket(&js, &ns, config.nats.streams.replicas).await?,
                scorer.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    if config.batching.budget().is_some() && !config.scoring.first_stage.enabled {
        info!("batching.model_budget is off: it needs scoring.first_stage.enabled");
    }
    // The model queue starts with the first scored text, so these apply.
    let router = router
        .with_max_batch(config.batching.max_batch)
        .with_model_budget(config.batching.budget())
        .with_pass_sizes(metrics.model_pass_size.clone());
    let slots = Arc::new(Semaphore::new(config.batching.concurrency));
    let processor = Arc::new(BatchProcessor {
        client,
        js,
        ns,
        router,
        metrics,
        config,
    });
    let mut tasks = JoinSet::new();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = messages.next() => m,
        };
        let first = match first {
            None => break,
            Some(Err(e)) => {
                warn!(error = %e, "pull consumer error");
                continue;
            }
            Some(Ok(m)) => m,
        };
        let batch = fill_batch(first, &mut messages, max_batch, max_wait).await;
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p?,
            _ = shutdown.cancelled() => {
                return_unstarted(batch.into_iter().map(|(m, _)| m).collect()).await;
                break;
            }
        };
        let processor = Arc::clone(&processor);
        tasks.spawn(async move {
            let _permit = permit;
            processor.process(batch).await;
        });
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                error!(error = %e, "batch task failed");
            }
        }
    }
    drain(messages, tasks).await;
    if let Some(following) = following {
        following.abort();
    }
    info!("stopped");
    Ok(())
}

/// The batch `first` opens: more messages until `max_batch` or `max_wait`.
async fn fill_batch(
    first: Message,
    messages: &mut Messages,
    max_batch: usize,
    max_wait: Duration,
) -> Vec<(Message, Instant)> {
    let mut batch = vec![(first, Instant::now())];
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max_batch {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(Ok(m))) => batch.push((m, Instant::now())),
            Ok(Some(Err(e))) => warn!(error = %e, "pull consumer error"),
            Ok(None) | Err(_) => break,
        }
    }
    batch
}

/// Hands back what was pulled but not started, so another replica takes it
/// now rather than after ack_wait, then waits for the batches in flight.
async fn drain(mut messages: Messages, mut tasks: JoinSet<()>) {
    let mut unstarted = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(SHUTDOWN_RETURN_WINDOW, messages.next()).await
    {
        unstarted.push(m);
    }
    drop(messages);
    return_unstarted(unstarted).await;
    info!(in_flight = tasks.len(), "draining");
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            error!(error = %e, "batch task failed");
        }
    }
}

async fn return_unstarted(messages: Vec<Message>) {
    for m in messages {
        if let Err(e) = consumer::nak(&m, None).await {
            warn!(error = %e, "could not hand back a message; it returns after ack_wait");
        }
    }
}

/// A message that passed validation.
struct Admitted {
    message: Message,
    received: Instant,
    envelope: Envelope,
    request: Request,
    span: tracing::Span,
}

impl BatchProcessor {
    async fn process(&self, batch: Vec<(Message, Instant)>) {
        self.metrics.batch_size.observe(batch.len() as f64);
        let mut admitted = Vec::with_capacity(batch.len());
        for (message, received) in batch {
            let envelope = Envelope::of(&message);
            let span = tracing::info_span!(
                "route",
                request_id = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                deliveries = envelope.deliveries,
                otel.kind = "consumer",
            );
            triage_bus::trace::adopt_parent(&span, &envelope.headers);
            if let Some(request) = self
                .admit(&message, &envelope)
                .instrument(span.clone())
                .await
            {
                span.record("request_id", request.id.as_str());
                admitted.push(Admitted {
                    message,
                    received,
                    envelope,
                    request,
                    span,
                });
            }
        }
        if admitted.is_empty() {
            return;
        }
        // A message delivered again and again may be what crashes the
        // scorer: past half the allowed deliveries it skips scoring.
        let max_deliver = self.config.consumer.settings.max_deliver.max(1) as u64;
        let (suspect, fresh): (Vec<Admitted>, Vec<Admitted>) = admitted
            .into_iter()
            .partition(|a| a.envelope.deliveries > 1 && a.envelope.deliveries * 2 > max_deliver);
        // What needs no model pass (overrides, rules, cached or clear-cut
        // texts) is published at once, not held behind the batch's model
        // pass; the rest is scored together.
        // Tokenising a batch of long prompts is milliseconds of CPU: off the
        // async threads, like the model pass.
        let requests: Vec<Request> = fresh.iter().map(|a| a.request.clone()).collect();
        let router = self.router.clone();
        let quick = tokio::task::spawn_blocking(move || router.route_without_model(&requests))
            .await
            .unwrap_or_else(|_| {
                error!("routing without the model panicked; the batch takes the full path");
                vec![None; fresh.len()]
            });
        let mut early = Vec::new();
        let mut late = Vec::new();
        for (a, q) in fresh.into_iter().zip(quick) {
            match q {
                Some(r) => early.push((a, r)),
                None => late.push(a),
            }
        }
        let suspect_routed = suspect.into_iter().map(|a| {
            warn!(request_id = %a.request.id, deliveries = a.envelope.deliveries, "redelivered repeatedly; not scored");
            let r = fallback(&format!("redelivered {} times", a.envelope.deliveries), &self.router);
            (a, r)
        });
        let publish_early =
            futures::future::join_all(early.into_iter().chain(suspect_routed).map(|(a, r)| {
                let span = a.span.clone();
                self.publish(a, r).instrument(span)
            }));
        let route_late = async {
            if late.is_empty() {
                return;
            }
            let requests: Vec<Request> = late.iter().map(|a| a.request.clone()).collect();
            let routed = match std::panic::AssertUnwindSafe(self.router.route(&requests))
                .catch_unwind()
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    error!("routing panicked; the batch goes to tier 2");
                    requests
                        .iter()
                        .map(|_| fallback("routing panicked", &self.router))
                        .collect()
                }
            };
            futures::future::join_all(late.into_iter().zip(routed).map(|(a, r)| {
                let span = a.span.clone();
                self.publish(a, r).instrument(span)
            }))
            .await;
        };
        futures::join!(publish_early, route_late);
    }

    /// Decodes, resolves the reply subject and validates. Anything refused
    /// is answered/dead-lettered and acked here.
    async fn admit(&self, message: &Message, envelope: &Envelope) -> Option<Request> {
        let policy = &self.config.reply;
        let mut request: Request = match decode(envelope.encoding, &message.payload) {
            Ok(r) => r,
            Err(e) => {
                let code = e.error_code();
                // The body is unreadable: only the header can name a reply subject.
                let reply = envelope.reply_subject(None, policy, &self.ns).ok();
                warn!(error = %e, "undecodable request");
                self.refuse(
                    message,
                    envelope,
                    "",
                    reply.as_deref(),
                    code,
                    &e.to_string(),
                    true,
                )
                .await;
                return None;
            }
        };
        if request.id.is_empty() {
            request.id = derived_id(message);
        }
        match envelope.reply_subject(request.reply_to.as_deref(), policy, &self.ns) {
            Ok(subject) => request.reply_to = Some(subject),
            // Fire-and-forget or kept results: routed, nobody to answer.
            Err(ReplySubjectError::Missing) => request.reply_to = None,
            Err(e) => {
                warn!(request_id = %request.id, error = %e, "reply subject refused");
                let reason = format!("reply subject refused: {e}");
                self.refuse(
                    message,
                    envelope,
                    &request.id,
                    None,
                    ErrorCode::InvalidRequest,
                    &reason,
                    true,
                )
                .await;
                return None;
            }
        }
        let checked = tenancy::bind(&self.ns, &envelope.subject, &mut request)
            .and_then(|binding| validate(&request, &self.config.policy, binding));
        if let Err(rejection) = checked {
            debug!(request_id = %request.id, code = %rejection.code, "request refused");
            let reply = request.reply_to.clone();
            // With nobody to tell, the refusal is kept on llm.dead.
            self.refuse(
                message,
                envelope,
                &request.id,
                reply.as_deref(),
                rejection.code,
                &rejection.message,
                reply.is_none(),
            )
            .await;
            return None;
        }
        if self.config.log_prompts {
            let text = triage_complexity::prompt_text::text_to_score(&request.chat_messages());
            info!(request_id = %request.id, prompt = %text, "request");
        }
        Some(request)
    }

    /// Sends an error reply (if a subject is known), dead-letters (if asked)
    /// and acks. If neither can be done, the message is nak'ed for another
    /// try rather than lost.
    #[allow(clippy::too_many_arguments)]
    async fn refuse(
        &self,
        message: &Message,
        envelope: &Envelope,
        id: &str,
        reply: Option<&str>,
        code: ErrorCode,
        reason: &str,
        dead_letter: bool,
    ) {
        self.metrics
            .errors
            .get_or_create(&kind_label(code.as_str()))
            .inc();
        let mut ok = true;
        if let Some(subject) = reply {
            let answer = Reply::Error(ErrorReply::new(id, code, reason));
            if let Err(e) =
                triage_bus::reply::send(&self.client, subject, envelope.encoding, &answer).await
            {
                warn!(error = %e, "error reply not sent");
                ok = false;
            }
        }
        if dead_letter {
            let letter = DeadLetter {
                subject: &envelope.subject,
                payload: &message.payload,
                headers: Some(&envelope.headers),
                reason,
                code,
                service: SERVICE,
                deliveries: envelope.deliveries,
            };
            match letter.publish(&self.js, &self.ns).await {
                Ok(()) => {
                    self.metrics
                        .dead_letters
                        .get_or_create(&kind_label(code.as_str()))
                        .inc();
                }
                Err(e) => {
                    warn!(error = %e, "dead letter not stored");
                    ok = false;
                }
            }
        }
        let done = if ok {
            consumer::ack_confirmed(message).await
        } else {
            consumer::nak(message, Some(Duration::from_secs(1))).await
        };
        if let Err(e) = done {
            warn!(error = %e, "ack/nak failed; the message may come back");
        }
    }

    /// Republishes a routed request and acks the original once JetStream
    /// confirmed it.
    async fn publish(&self, a: Admitted, routed: Routed) {
        let Admitted {
            message,
            received,
            envelope,
            request,
            ..
        } = a;
        let Routed { decision, info } = routed;
        self.metrics.record(&decision, &info);
        debug!(
            request_id = %request.id,
            tier = %decision.tier,
            score = decision.score,
            reasons = ?decision.reasons,
            "routed"
        );
        let subject = self.ns.tier(decision.tier);
        let id = request.id.clone();
        let msg_id = triage_protocol::RequestKey::of(&request).msg_id("route");
        let body = RoutedRequest {
            version: SCHEMA_VERSION,
            request,
            routing: decision,
            routed_at_ms: triage_protocol::now_ms(),
        };
        let headers = triage_bus::envelope::outgoing(envelope.encoding, Some(&msg_id));
        // Retried in place: the message id makes a repeat a no-op, and a
        // redelivery would score the request again.
        let payload = encode(envelope.encoding, &body).into();
        match publish::durable(&self.js, "routed request", &subject, headers, payload).await {
            Ok(()) => {
                if let Err(e) = consumer::ack_confirmed(&message).await {
                    // Republished but not acked: it comes back and the
                    // republish is de-duplicated by its message id.
                    warn!(request_id = %id, error = %e, "ack failed after republish");
                }
                self.metrics
                    .routing_delay
                    .observe(received.elapsed().as_secs_f64());
            }
            // The tier's queue is at its limit: handing the request back
            // would only spend its deliveries, so the client is told now
            // (and a request nobody would hear about is dead-lettered).
            Err(e @ triage_bus::BusError::QueueFull { .. }) => {
                self.metrics.publish_failures.inc();
                warn!(request_id = %id, %subject, error = %e, "tier queue full; refusing the request");
                let reply = body.request.reply_to.as_deref();
                let reason = e.to_string();
                self.refuse(
                    &message,
                    &envelope,
                    &id,
                    reply,
                    ErrorCode::QueueFull,
                    &reason,
                    reply.is_none(),
                )
                .await;
            }
            Err(e) => {
                self.metrics.publish_failures.inc();
                warn!(request_id = %id, %subject, error = %e, "republish not confirmed after retries; handing the request back");
                if let Err(e) = consumer::nak(&message, Some(Duration::from_secs(1))).await {
                    warn!(request_id = %id, error = %e, "nak failed; the request returns after ack_wait");
                }
            }
        }
    }
}

fn fallback(why: &str, _router: &Router) -> Routed {
    Routed {
        decision: policy::router_failure(why),
        info: RouteInfo {
            router_failure: true,
            ..RouteInfo::default()
        },
    }
}

/// An id for a request that came without one, the same on every
/// redelivery: a UUIDv7 from the stream's publish time and sequence.
fn derived_id(message: &Message) -> String {
    let (ms, seq) = message
        .info()
        .map(|i| {
            let ms = (i.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
            (ms, i.stream_sequence)
        })
        .unwrap_or((triage_protocol::now_ms(), 0));
    let mut tail = [0u8; 10];
    tail[2..].copy_from_slice(&seq.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(ms, &tail)
        .into_uuid()
        .to_string()
}
