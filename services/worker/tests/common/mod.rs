//! Shared set-up of the worker's integration tests: a namespace of their own
//! on the real NATS (small stream limits, deleted at the end), simulators,
//! in-process and child-process workers, and readers of what was published.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use triage_bus::StreamsConfig;
use triage_protocol::{
    decode, encode, headers, Chunk, Completion, Encoding, ErrorReply, Namespace, Reply, Request,
    RoutedRequest, RoutingDecision, StreamKind, Tier, UsageEvent,
};
use triage_vllm_sim::{SimConfig, SimHandle};
use triage_worker::config::{BackendSpec, WorkerConfig};
use triage_worker::{RunSummary, Worker};

pub fn nats_url() -> String {
    triage_bus::default_nats_url()
}

/// Stream limits for tests: JetStream reserves `max_bytes` up front, and
/// many tests run at once next to other crates' tests.
pub fn tiny_streams() -> StreamsConfig {
    let mut s = StreamsConfig::small();
    for limits in [
        &mut s.requests,
        &mut s.tiers,
        &mut s.usage,
        &mut s.dead,
        &mut s.results,
    ] {
        limits.max_bytes = 8 << 20;
    }
    s.finished_max_bytes = 8 << 20;
    s.progress_max_bytes = 1 << 20;
    s
}

/// One test's world on NATS; its streams are deleted by `teardown`, or
/// when it is dropped (a failed test).
pub struct World {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub prefix: String,
    torn_down: bool,
}

async fn delete_streams(js: &jetstream::Context, ns: &Namespace) {
    for kind in StreamKind::ALL {
        let _ = js.delete_stream(ns.stream_name(kind)).await;
    }
    for bucket in [ns.finished_bucket(), ns.progress_bucket()] {
        let _ = js.delete_stream(format!("KV_{bucket}")).await;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let ns = self.ns.clone();
        // A panicking test cannot await: clean up from a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    delete_streams(&jetstream::new(client), &ns).await;
                }
            });
        })
        .join();
    }
}

impl World {
    pub async fn new() -> Self {
        triage_runtime::telemetry::init("worker-test", triage_runtime::telemetry::LogFormat::Text);
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let ns = Namespace::new(prefix.clone()).unwrap();
        let client = async_nats::connect(nats_url())
            .await
            .expect("NATS must be running (scripts/setup.sh starts it)");
        let js = jetstream::new(client.clone());
        let world = Self {
            client,
            js,
            ns,
            prefix,
            torn_down: false,
        };
        triage_bus::provision(&world.js, &world.ns, &tiny_streams())
            .await
            .expect("provision");
        world
    }

    /// Deletes the test's streams.
    pub async fn teardown(mut self) {
        delete_streams(&self.js, &self.ns).await;
        self.torn_down = true;
    }

    /// A configuration for fast tests against `backends`.
    pub fn config(&self, backends: &[&SimHandle]) -> WorkerConfig {
        let mut c = WorkerConfig::default();
        c.nats.url = nats_url();
        c.nats.prefix = self.prefix.clone();
        c.nats.streams = tiny_streams();
        c.backend_urls = String::new();
        c.backends = backends.iter().map(|s| BackendSpec::new(s.url())).collect();
        c.consumer.ack_wait = Duration::from_secs(2);
        c.consumer.fetch_expires = Duration::from_millis(200);
        c.timeouts.first_byte = Duration::from_secs(5);
        c.timeouts.between_chunks = Duration::from_secs(5);
        c.health.interval = Duration::from_millis(200);
        c.health.open_for = Duration::from_millis(500);
        c.retry.initial_interval = Duration::from_millis(10);
        c.retry.max_interval = Duration::from_millis(50);
        c.retry.max_elapsed = Duration::from_secs(10);
        c.coalesce.interval = Duration::from_millis(5);
        c.prewarm.idle_after = Duration::ZERO;
        c.shutdown_grace = Duration::from_secs(5);
        c.depth_poll_interval = Duration::from_millis(100);
        c.metrics_addr = "127.0.0.1:0".parse().unwrap();
        c
    }

    /// Starts a worker in this process.
    pub async fn start(&self, config: WorkerConfig, tier: Tier) -> RunningWorker {
        let mut registry = Registry::default();
        let worker = Worker::connect(config, tier, &mut registry)
            .await
            .expect("worker starts");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        RunningWorker {
            shutdown,
            handle,
            registry: Arc::new(registry),
        }
    }

    /// Publishes `request` routed to `tier` (as the router would) with a
    /// fresh inbox as reply subject, and returns the subscription.
    pub async fn submit(&self, tier: Tier, request: Request) -> Replies {
        self.submit_with(tier, request, Encoding::MsgPack).await
    }

    pub async fn submit_with(&self, tier: Tier, request: Request, encoding: Encoding) -> Replies {
        let routing = RoutingDecision::fixed(tier, "test");
        self.submit_routed(routing, request, encoding).await
    }

    /// Publishes `request` with the router's decision `routing` (on the
    /// queue of `routing.tier`).
    pub async fn submit_routed(
        &self,
        routing: RoutingDecision,
        mut request: Request,
        encoding: Encoding,
    ) -> Replies {
        request.ensure_id();
        let inbox = self.client.new_inbox();
        let sub = self.client.subscribe(inbox.clone()).await.unwrap();
        request.reply_to = Some(inbox.clone());
        let tier = routing.tier;
        let routed = RoutedRequest {
            version: 1,
            request: request.clone(),
            routing,
            routed_at_ms: triage_protocol::now_ms(),
        };
        self.publish_routed(tier, &routed, encoding).await;
        Replies {
            id: request.id,
            sub,
        }
    }

    pub async fn publish_routed(&self, tier: Tier, routed: &RoutedRequest, encoding: Encoding) {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::CONTENT_TYPE, encoding.content_type());
        self.js
            .publish_with_headers(self.ns.tier(tier), h, encode(encoding, routed).into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Every message of a stream, with headers, in order.
    pub async fn stream_messages(
        &self,
        kind: StreamKind,
    ) -> Vec<jetstream::message::StreamMessage> {
        let mut stream = self.js.get_stream(self.ns.stream_name(kind)).await.unwrap();
        let info = stream.info().await.unwrap();
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return out;
        }
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push(m);
            }
        }
        out
    }

    /// Every usage event published so far.
    pub async fn usage_events(&self) -> Vec<UsageEvent> {
        self.stream_messages(StreamKind::Usage)
            .await
            .into_iter()
            .map(|m| {
                let enc = Encoding::from_content_type(
                    m.headers.get(headers::CONTENT_TYPE).map(|v| v.as_str()),
                );
                decode(enc, &m.payload).unwrap()
            })
            .collect()
    }

    /// Usage events of one request, by attempt.
    pub async fn usage_of(&self, id: &str) -> Vec<UsageEvent> {
        let mut v: Vec<_> = self
            .usage_events()
            .await
            .into_iter()
            .filter(|e| e.id == id)
            .collect();
        v.sort_by_key(|e| e.attempt);
        v
    }

    /// Pending + ack-pending of a tier's worker consumer.
    pub async fn queue_depth(&self, tier: Tier) -> (u64, usize) {
        let stream = self
            .js
            .get_stream(self.ns.stream_name(Namespace::tier_stream(tier)))
            .await
            .unwrap();
        let mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> = stream
            .get_consumer(&self.ns.consumer(&format!("worker-tier{}", tier.number())))
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        (info.num_pending, info.num_ack_pending)
    }

    /// Waits until both tier queues are empty: every request acked, which
    /// a worker does last (after the final reply, the kept result, the usage
    /// event and the finished record).
    pub async fn settled(&self) {
        let wait = Deadline::after(LONG, "every request acked");
        while self.tier_messages(Tier::Small).await > 0 || self.tier_messages(Tier::Large).await > 0
        {
            wait.poll_again().await;
        }
    }

    /// Messages ever published to a tier's queue (its last sequence; the
    /// de-duplicated repeats of one message id are not among them).
    pub async fn tier_published(&self, tier: Tier) -> u64 {
        let mut stream = self
            .js
            .get_stream(self.ns.stream_name(Namespace::tier_stream(tier)))
            .await
            .unwrap();
        stream.info().await.unwrap().state.last_sequence
    }

    /// The progress record of request `id` (no tenant), if there is one.
    pub async fn progress_of(&self, id: &str) -> Option<triage_worker::progress::Progress> {
        let store = self
            .js
            .get_key_value(self.ns.progress_bucket())
            .await
            .expect("the progress bucket exists once a worker started");
        let key = triage_protocol::RequestKey::new(None, id).tokens();
        store
            .get(key)
            .await
            .unwrap()
            .map(|v| serde_json::from_slice(&v).expect("a progress record"))
    }

    /// Messages still in a tier's work queue (acked ones are deleted).
    pub async fn tier_messages(&self, tier: Tier) -> u64 {
        let mut stream = self
            .js
            .get_stream(self.ns.stream_name(Namespace::tier_stream(tier)))
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }
}

pub struct RunningWorker {
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<RunSummary, triage_worker::WorkerError>>,
    pub registry: Arc<Registry>,
}

impl RunningWorker {
    /// Signals shutdown and waits for the run to end (at most [`LONG`]:
    /// the tests' grace period is far shorter).
    pub async fn stop(self) -> RunSummary {
        self.shutdown.cancel();
        tokio::time::timeout(LONG, self.handle)
            .await
            .unwrap_or_else(|_| panic!("the worker did not stop within {LONG:?} of shutdown"))
            .unwrap()
            .unwrap()
    }

    pub fn metrics(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }

    /// The value of the first metric line starting with `prefix`.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// The replies to one request.
pub struct Replies {
    pub id: String,
    pub sub: async_nats::Subscriber,
}

/// Everything received for one request, up to the final message.
#[derive(Debug, Default)]
pub struct Received {
    pub chunks: Vec<Chunk>,
    pub completion: Option<Completion>,
    pub error: Option<ErrorReply>,
}

impl Received {
    /// The text a client following the protocol assembles: the chunks of
    /// the highest attempt, which must be gap-free and in order.
    pub fn text(&self) -> String {
        let last = self.chunks.iter().map(|c| c.attempt).max().unwrap_or(0);
        let mine: Vec<&Chunk> = self.chunks.iter().filter(|c| c.attempt == last).collect();
        for (i, c) in mine.iter().enumerate() {
            assert_eq!(
                c.seq as usize, i,
                "chunks of attempt {last} out of order: {mine:?}"
            );
        }
        mine.iter().map(|c| c.delta.as_str()).collect()
    }

    pub fn attempts(&self) -> Vec<u32> {
        let mut a: Vec<u32> = self.chunks.iter().map(|c| c.attempt).collect();
        a.dedup();
        a
    }

    pub fn completion(&self) -> &Completion {
        self.completion
            .as_ref()
            .unwrap_or_else(|| panic!("expected a completion, got {self:?}"))
    }

    pub fn error(&self) -> &ErrorReply {
        self.error
            .as_ref()
            .unwrap_or_else(|| panic!("expected an error, got {self:?}"))
    }
}

impl Replies {
    /// Reads until the final message (or panics after `timeout`).
    pub async fn collect(&mut self, timeout: Duration) -> Received {
        let mut got = Received::default();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.sub.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("no final reply for {} within {timeout:?}: {got:?}", self.id)
                })
                .expect("subscription open");
            let enc = Encoding::from_content_type(
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(headers::CONTENT_TYPE))
                    .map(|v| v.as_str()),
            );
            match decode::<Reply>(enc, &m.payload).unwrap() {
                Reply::Chunk(c) => got.chunks.push(c),
                Reply::Completion(c) => {
                    got.completion = Some(c);
                    return got;
                }
                Reply::Error(e) => {
                    got.error = Some(e);
                    return got;
                }
            }
        }
    }

    /// Waits for the first chunk.
    pub async fn first_chunk(&mut self, timeout: Duration) -> Chunk {
        let m = tokio::time::timeout(timeout, self.sub.next())
            .await
            .expect("a chunk in time")
            .unwrap();
        match decode::<Reply>(Encoding::MsgPack, &m.payload).unwrap() {
            Reply::Chunk(c) => c,
            other => panic!("expected a chunk, got {other:?}"),
        }
    }

    /// Whatever else arrives within `wait` (for "nothing doubled" checks).
    pub async fn extra(&mut self, wait: Duration) -> Vec<Reply> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(wait, self.sub.next()).await {
            out.push(decode::<Reply>(Encoding::MsgPack, &m.payload).unwrap());
        }
        out
    }
}

/// A simulator with a fixed output length and small latencies.
pub async fn sim(model: &str, tokens: u32, itl_ms: u64) -> SimHandle {
    let mut c = SimConfig::instant(model, tokens);
    c.itl_ms = itl_ms;
    triage_vllm_sim::spawn(c).await.unwrap()
}

pub async fn sim_with(config: SimConfig) -> SimHandle {
    triage_vllm_sim::spawn(config).await.unwrap()
}

/// The text the simulator generates for `prompt` (it is deterministic),
/// asked directly over HTTP without the worker.
pub async fn direct_text(
    sim: &SimHandle,
    prompt: &str,
    max_tokens: Option<u32>,
) -> (String, triage_backend::Usage) {
    let client =
        triage_backend::BackendClient::new(triage_backend::BackendConfig::new(sim.url())).unwrap();
    let mut req = triage_backend::ChatRequest::new(vec![triage_backend::ChatMessage::user(prompt)]);
    req.max_tokens = max_tokens;
    let s = client.chat_stream_collect(&req).await.unwrap();
    (s.text, s.usage.unwrap())
}

pub fn prompt(text: &str) -> Request {
    Request {
        max_tokens: Some(64),
        ..Request::from_prompt(text)
    }
}

pub const LONG: Duration = Duration::from_secs(30);

/// How often polling loops look again.
pub const POLL: Duration = Duration::from_millis(20);

/// The deadline of one polling loop: call [`Deadline::poll_again`] where
/// the loop would sleep, and a condition that never comes fails the test
/// with `what` instead of hanging it.
pub struct Deadline {
    at: tokio::time::Instant,
    after: Duration,
    what: &'static str,
}

impl Deadline {
    pub fn after(after: Duration, what: &'static str) -> Self {
        Self {
            at: tokio::time::Instant::now() + after,
            after,
            what,
        }
    }

    /// Sleeps [`POLL`], or panics once the deadline has passed.
    pub async fn poll_again(&self) {
        assert!(
            tokio::time::Instant::now() < self.at,
            "waited {:?} for {}: it did not happen",
            self.after,
            self.what
        );
        tokio::time::sleep(POLL).await;
    }
}
