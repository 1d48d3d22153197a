//! The router service over the real NATS JetStream (TRIAGE_NATS_URL,
//! default nats://127.0.0.1:4222), with the vLLM simulator as the
//! self-rating model and the real MiniLM model (from $TRIAGE_CACHE).
//!
//! Each test uses its own subject prefix and deletes its streams.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use triage_bus::{publish, NatsConfig, StreamsConfig, TriageClient};
use triage_complexity::scorer::{Scorer, ScorerConfig};
use triage_complexity::ModelFiles;
use triage_protocol::{
    decode, encode, headers, Encoding, ErrorCode, Namespace, Reply, Request, RoutedRequest,
    StreamKind, Tier,
};
use triage_router::config::RouterConfig;
use triage_router::metrics::RouterMetrics;
use triage_router::{service, Router};
use triage_vllm_sim::{FaultConfig, SimConfig};

/// Shuts a router from `Env::start` down and checks it ended cleanly, within
/// 30 s: a drain that never finishes fails here instead of hanging.
async fn stop_router(stop: CancellationToken, task: JoinHandle<anyhow::Result<()>>) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the router drained and stopped within 30 s")
        .unwrap()
        .unwrap();
}

/// One scorer for all tests (loading the model takes a moment).
fn scorer() -> Arc<Scorer> {
    static SCORER: OnceLock<Arc<Scorer>> = OnceLock::new();
    SCORER
        .get_or_init(|| {
            if let Err(e) = ModelFiles::default_minilm().check() {
                panic!("{e}");
            }
            Arc::new(Scorer::new(ScorerConfig::default()).unwrap())
        })
        .clone()
}

struct Env {
    client: async_nats::Client,
    js: jetstream::Context,
    ns: Namespace,
    config: RouterConfig,
}

impl Env {
    async fn new() -> Self {
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let client = async_nats::connect(triage_bus::default_nats_url())
            .await
            .unwrap_or_else(|e| {
                panic!("NATS at {} is needed: {e}", triage_bus::default_nats_url())
            });
        let mut config = RouterConfig {
            nats: NatsConfig {
                url: triage_bus::default_nats_url(),
                prefix: prefix.clone(),
                streams: StreamsConfig::small(),
                ..NatsConfig::default()
            },
            ..RouterConfig::default()
        };
        config.consumer.settings.ack_wait = Duration::from_secs(2);
        config.batching.max_wait = Duration::from_millis(2);
        Self {
            js: jetstream::new(client.clone()),
            client,
            ns: Namespace::new(prefix).unwrap(),
            config,
        }
    }

    /// Starts a router with `config` in-process; returns its stop token and task.
    async fn start(
        &self,
        config: &RouterConfig,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        // The shared scorer unless the test configures scoring itself.
        let scorer = if config.scoring == ScorerConfig::default() {
            scorer()
        } else {
            Arc::new(Scorer::new(config.scoring.clone()).unwrap())
        };
        self.start_with(
            config,
            scorer,
            Arc::new(RouterMetrics::register(&mut Registry::default())),
        )
        .await
    }

    /// Starts a router with its own `scorer` and `metrics`.
    async fn start_with(
        &self,
        config: &RouterConfig,
        scorer: Arc<Scorer>,
        metrics: Arc<RouterMetrics>,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let rater = if config.self_rating.enabled {
            let r: Arc<dyn triage_router::self_rating::SelfRater> = Arc::new(
                triage_router::self_rating::LlmSelfRater::new(&config.self_rating).unwrap(),
            );
            Some(r)
        } else {
            None
        };
        let router = Router::new(
            Ok(scorer),
            rater,
            config.self_rating.max_concurrency,
            1,
            config.policy.clone(),
            Duration::from_secs(30),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service::serve(
            self.client.clone(),
            config.clone(),
            router,
            metrics,
            shutdown.clone(),
        ));
        // Ready when its consumer exists.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = self
                .js
                .get_stream(self.ns.stream_name(StreamKind::Requests))
                .await
            {
                if s.consumer_info(self.ns.consumer("router")).await.is_ok() {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline && !task.is_finished(),
                "the router's consumer did not appear within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (shutdown, task)
    }

    async fn publish(&self, request: &Request) {
        let payload = encode(Encoding::MsgPack, request).into();
        self.publish_raw(async_nats::HeaderMap::new(), payload)
            .await;
    }

    /// Publishes to `llm.requests` and waits for the stream's ack.
    async fn publish_raw(&self, headers: async_nats::HeaderMap, payload: bytes::Bytes) {
        publish::once(&self.js, &self.ns.requests(), headers, payload)
            .await
            .unwrap();
    }

    /// Messages in a tier stream now.
    async fn count(&self, tier: Tier) -> usize {
        let name = self.ns.stream_name(Namespace::tier_stream(tier));
        let mut stream = self.js.get_stream(&name).await.unwrap();
        stream.info().await.unwrap().state.messages as usize
    }

    /// Everything routed to either tier, once at least `expect` messages are
    /// there (or after a minute).
    async fn all_routed(&self, expect: usize) -> Vec<RoutedRequest> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.count(Tier::Small).await + self.count(Tier::Large).await < expect
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut all = self.routed(Tier::Small).await;
        all.extend(self.routed(Tier::Large).await);
        all
    }

    /// Everything in a tier stream, read by sequence (a work-queue stream
    /// admits no second consumer, and nothing here removes messages).
    async fn routed(&self, tier: Tier) -> Vec<RoutedRequest> {
        let name = self.ns.stream_name(Namespace::tier_stream(tier));
        let mut stream = self.js.get_stream(&name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let ct = m.headers.get(headers::CONTENT_TYPE).map(|v| v.as_str());
                out.push(decode(Encoding::from_content_type(ct), &m.payload).unwrap());
            }
        }
        out
    }

    async fn cleanup(self) {
        for kind in StreamKind::ALL {
            let _ = self.js.delete_stream(self.ns.stream_name(kind)).await;
        }
        let _ = self.js.delete_key_value(self.ns.finished_bucket()).await;
        let _ = self.js.delete_key_value(self.ns.heads_bucket()).await;
    }
}

fn request(id: &str, prompt: &str) -> Request {
    let mut r = Request::from_prompt(prompt);
    r.id = id.into();
    r
}

const PLAIN: [&str; 4] = [
    "Why does warmth make you feel tired?",
    "Write a short poem about the sea at night.",
    "What are the main differences between a crocodile and an alligator?",
    "Give me three tips for a job interview.",
];

#[tokio::test]
async fn routes_a_mixed_set_like_the_offline_scorer() {
    let env = Env::new().await;
    let mut config = env.config.clone();
    config.policy.tenant_tiers.insert("pinned-small".into(), 1);
    config.policy.tier_override_untenanted = true;
    // The model budget makes decisions depend on load (a loaded CI machine
    // would hand band texts to the first stage); this compares with the
    // unloaded offline router.
    config.batching.model_budget = Some(Duration::ZERO);
    let (stop, task) = env.start(&config).await;

    let mut sent = Vec::new();
    for (i, p) in PLAIN.iter().enumerate() {
        sent.push(request(&format!("plain-{i}"), p));
    }
    sent.push(request(
        "fence",
        "Why does this fail?\n```\nlet x: u8 = 256;\n```",
    ));
    sent.push(request("math", "Solve 3x + 2 = 11 for x."));
    let mut explicit = request("explicit", "Prove that there are infinitely many primes.");
    explicit.tier = Some(1);
    sent.push(explicit);
    let mut pinned = request("pinned", "Explain quantum chromodynamics in depth.");
    pinned.tenant = Some("pinned-small".into());
    sent.push(pinned);
    // JSON is accepted too and answered in JSON.
    let json_req = request("json", PLAIN[0]);
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, headers::JSON_MIME);
    for r in &sent {
        env.publish(r).await;
    }
    env.publish_raw(h, encode(Encoding::Json, &json_req).into())
        .await;

    let offline = Router::new(
        Ok(scorer()),
        None,
        1,
        1,
        config.policy.clone(),
        Duration::from_secs(30),
    );
    let expected = offline.route(&sent).await;
    let total = sent.len() + 1;
    let got = env.all_routed(total).await;
    assert_eq!(got.len(), total, "every request routed once");
    for (r, e) in sent.iter().zip(&expected) {
        let live = got.iter().find(|g| g.request.id == r.id).unwrap();
        assert_eq!(live.routing.tier, e.decision.tier, "{}", r.id);
        assert_eq!(
            live.routing.score.to_bits(),
            e.decision.score.to_bits(),
            "{}",
            r.id
        );
        assert_eq!(live.routing.reasons, e.decision.reasons, "{}", r.id);
    }
    let by_id = |id: &str| {
        got.iter()
            .find(|g| g.request.id == id)
            .unwrap()
            .routing
            .clone()
    };
    assert_eq!(by_id("fence").tier, Tier::Large);
    assert_eq!(by_id("fence").reasons, vec!["rule:code_fence"]);
    assert_eq!(by_id("math").reasons, vec!["rule:math"]);
    assert_eq!(by_id("explicit").tier, Tier::Small);
    assert_eq!(by_id("pinned").tier, Tier::Small);
    let r = &by_id("plain-0").reasons[0];
    assert!(
        r.starts_with("embedding=") || r.starts_with("first_stage="),
        "{r}"
    );
    assert_eq!(
        by_id("json").score.to_bits(),
        by_id("plain-0").score.to_bits()
    );

    stop_router(stop, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn validation_errors_are_answered_and_undecodable_messages_dead_lettered() {
    let env = Env::new().await;
    let mut config = env.config.clone();
    config.policy.max_prompt_bytes = 1000;
    let (stop, task) = env.start(&config).await;
    let client = TriageClient::new(env.client.clone(), env.ns.clone());

    let mut n_stream = Request::from_prompt("hi");
    n_stream.n = 2;
    n_stream.stream = true;
    let mut bad_tier = Request::from_prompt("hi");
    bad_tier.tier = Some(7);
    let cases = [
        (Request::from_prompt("   "), ErrorCode::EmptyPrompt),
        (
            Request::from_prompt("x".repeat(1001)),
            ErrorCode::PromptTooLarge,
        ),
        (n_stream, ErrorCode::UnsupportedNWithStream),
        (bad_tier, ErrorCode::InvalidTier),
    ];
    for (req, code) in cases {
        let mut replies = client.submit(req, Duration::from_secs(20)).await.unwrap();
        match replies.next().await {
            Some(Ok(Reply::Error(e))) => {
                assert_eq!(e.code, code);
                assert!(!e.message.is_empty());
            }
            other => panic!("expected {code} error, got {other:?}"),
        }
    }

    // Garbage with a reply subject in the header: error reply + dead letter.
    let inbox = env.client.new_inbox();
    let mut sub = env.client.subscribe(inbox.clone()).await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::REPLY_TO, inbox.as_str());
    env.publish_raw(h, bytes::Bytes::from_static(b"\xc1not msgpack"))
        .await;
    let m = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .unwrap()
        .unwrap();
    match Reply::decode(Encoding::MsgPack, &m.payload).unwrap() {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
        other => panic!("{other:?}"),
    }
    // And without any reply subject: only the dead letter.
    env.publish_raw(
        async_nats::HeaderMap::new(),
        bytes::Bytes::from_static(b"{not json either"),
    )
    .await;
    let dead = env
        .js
        .get_stream(env.ns.stream_name(StreamKind::Dead))
        .await
        .unwrap();
    let mut count = 0;
    for _ in 0..200 {
        count = dead.cached_info().state.messages;
        let mut d = env
            .js
            .get_stream(env.ns.stream_name(StreamKind::Dead))
            .await
            .unwrap();
        count = count.max(d.info().await.unwrap().state.messages);
        if count >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count, 2);
    let first = dead.get_raw_message(1).await.unwrap();
    let reason = first
        .headers
        .get(headers::DEAD_REASON)
        .unwrap()
        .as_str()
        .to_string();
    assert!(reason.contains("malformed"), "{reason}");
    assert_eq!(
        first.headers.get(headers::DEAD_CODE).unwrap().as_str(),
        "invalid_request"
    );
    // Nothing was routed.
    assert!(env.all_routed(0).await.is_empty());

    stop_router(stop, task).await;
    env.cleanup().await;
}

/// A tier queue at its limit (`max_msgs` 1, no worker): the router answers
/// the next request for that tier with `queue_full` at once instead of
/// handing it back until its deliveries run out, and keeps the one queued.
#[tokio::test]
async fn a_full_tier_queue_is_answered_with_queue_full() {
    let env = Env::new().await;
    let mut config = env.config.clone();
    config.nats.streams.tiers.max_msgs = 1;
    config.policy.tenant_tiers.insert("small".into(), 1);
    let (stop, task) = env.start(&config).await;
    let client = TriageClient::new(env.client.clone(), env.ns.clone());
    let pinned = |id: &str| {
        let mut r = request(id, PLAIN[0]);
        r.tenant = Some("small".into());
        r
    };
    let first = client
        .submit(pinned("fits"), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        env.all_routed(1).await.len(),
        1,
        "the first request is queued"
    );
    let mut second = client
        .submit(pinned("refused"), Duration::from_secs(20))
        .await
        .unwrap();
    match second.next().await {
        Some(Ok(Reply::Error(e))) => {
            assert_eq!(e.code, ErrorCode::QueueFull);
            assert!(e.retryable);
            assert!(
                e.message.contains("maximum messages exceeded"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a queue_full error, got {other:?}"),
    }
    let queued = env.routed(Tier::Small).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].request.id, first.id());
    stop_router(stop, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn self_rating_failure_falls_back_to_the_embedding() {
    let env = Env::new().await;
    // The simulator answers with words, never a number: unparsable.
    let sim = triage_vllm_sim::spawn(SimConfig::instant("router-rater", 2))
        .await
        .unwrap();
    let mut config = env.config.clone();
    config.self_rating.enabled = true;
    config.self_rating.backend.base_url = sim.url().to_string();
    config.self_rating.model = Some("router-rater".into());
    config.self_rating.timeout = Duration::from_millis(500);
    config.scoring.cache_capacity = 0;
    // The LLM is asked only about what reaches the transformer.
    config.scoring.first_stage.enabled = false;
    let (stop, task) = env.start(&config).await;

    env.publish(&request("unparsable", PLAIN[1])).await;
    assert_eq!(env.all_routed(1).await.len(), 1);
    // Then the server fails outright, then it hangs past the timeout.
    sim.set_faults(FaultConfig::always_error(503)).unwrap();
    env.publish(&request("error", PLAIN[1])).await;
    assert_eq!(env.all_routed(2).await.len(), 2);
    sim.set_faults(FaultConfig {
        hang_rate: 1.0,
        hang_ms: 5_000,
        ..FaultConfig::none()
    })
    .unwrap();
    env.publish(&request("timeout", PLAIN[1])).await;
    let all = env.all_routed(3).await;
    assert_eq!(all.len(), 3);
    let transformer_only = Scorer::new(config.scoring.clone()).unwrap();
    let alone = Router::new(
        Ok(Arc::new(transformer_only)),
        None,
        1,
        1,
        config.policy.clone(),
        Duration::from_secs(30),
    )
    .route(&[request("x", PLAIN[1])])
    .await
    .remove(0);
    for (id, kind) in [
        ("unparsable", "unparsable"),
        ("error", "error"),
        ("timeout", "timeout"),
    ] {
        let r = all.iter().find(|r| r.request.id == id).unwrap();
        assert!(
            r.routing.reasons.contains(&format!("llm_failed:{kind}")),
            "{id}: {:?}",
            r.routing.reasons
        );
        assert_eq!(
            r.routing.score.to_bits(),
            alone.decision.score.to_bits(),
            "{id}: embedding alone"
        );
        assert_eq!(r.routing.tier, alone.decision.tier);
    }
    stop_router(stop, task).await;
    sim.shutdown(Duration::from_secs(1)).await;
    env.cleanup().await;
}

#[tokio::test]
async fn shadow_mode_sends_everything_to_the_default_tier() {
    let env = Env::new().await;
    let mut config = env.config.clone();
    config.policy.shadow = true;
    config.policy.shadow_default_tier = 2;
    let (stop, task) = env.start(&config).await;
    for (i, p) in PLAIN.iter().enumerate() {
        env.publish(&request(&format!("s{i}"), p)).await;
    }
    let got = env.all_routed(PLAIN.len()).await;
    assert_eq!(got.len(), PLAIN.len());
    assert!(got.iter().all(|g| g.routing.tier == Tier::Large));
    assert_eq!(env.count(Tier::Small).await, 0);
    let offline = Router::new(
        Ok(scorer()),
        None,
        1,
        1,
        env.config.policy.clone(),
        Duration::from_secs(30),
    );
    for g in &got {
        assert!(g.routing.shadow);
        let i: usize = g.request.id[1..].parse().unwrap();
        let decided = offline.route(&[request("x", PLAIN[i])]).await.remove(0);
        assert_eq!(
            g.routing.shadow_tier,
            Some(decided.decision.tier),
            "recorded decision"
        );
    }
    stop_router(stop, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_router_killed_mid_load_loses_no_request() {
    let env = Env::new().await;
    let config = env.config.clone();
    let (_stop, task) = env.start(&config).await;
    let total = 120;
    let ids: BTreeSet<String> = (0..total).map(|i| format!("load-{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        // Distinct texts so nothing is served from the cache.
        env.publish(&request(
            id,
            &format!("{} (variant {i})", PLAIN[i % PLAIN.len()]),
        ))
        .await;
    }
    // Kill the first router abruptly once some work is done: no draining,
    // acks and republishes in flight are simply cut.
    for _ in 0..400 {
        if env.count(Tier::Small).await + env.count(Tier::Large).await >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;
    // A new replica takes over; what the first had pulled comes back
    // after ack_wait.
    let (stop, task) = env.start(&config).await;
    let got = env.all_routed(total).await;
    let seen: BTreeSet<String> = got.iter().map(|r| r.request.id.clone()).collect();
    assert_eq!(seen, ids, "every request routed");
    assert_eq!(got.len(), total, "and none twice (republish de-duplicated)");
    // The request stream is empty: everything acked.
    let mut req = env
        .js
        .get_stream(env.ns.stream_name(StreamKind::Requests))
        .await
        .unwrap();
    for _ in 0..100 {
        if req.info().await.unwrap().state.messages == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(req.info().await.unwrap().state.messages, 0);
    stop_router(stop, task).await;
    env.cleanup().await;
}

/// The tenant of `llm.requests.<tenant>` is the subject's: it reaches the
/// routed request, a body that claims another is refused, and choosing the
/// tier is a per-tenant grant.
#[tokio::test]
async fn tenant_subjects_bind_the_tenant_and_grant_tier_choice_per_tenant() {
    let env = Env::new().await;
    let mut config = env.config.clone();
    config.policy.tier_override_tenants = vec!["batch".into()];
    let (stop, task) = env.start(&config).await;
    let client = TriageClient::new(env.client.clone(), env.ns.clone());
    let submit = |tenant: &str, body_tenant: Option<&str>, tier: Option<u8>| {
        let mut r = Request::from_prompt("Say hello.");
        r.tier = tier;
        r.tenant = body_tenant.map(String::from);
        r.ensure_id();
        let subject = env.ns.tenant_requests(tenant).unwrap();
        let payload = encode(Encoding::MsgPack, &r).into();
        let inbox = env.client.new_inbox();
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::REPLY_TO, inbox.as_str());
        let js = env.js.clone();
        let nats = env.client.clone();
        async move {
            let sub = nats.subscribe(inbox).await.unwrap();
            publish::once(&js, &subject, h, payload).await.unwrap();
            (r.id, sub)
        }
    };
    // The Rust client publishes a tenant's request on its subject.
    let mut bound = Request::from_prompt("Say hello.");
    bound.tenant = Some("acme".into());
    bound.ensure_id();
    assert_eq!(
        client.request_subject(&bound).unwrap(),
        env.ns.tenant_requests("acme").unwrap()
    );
    let _bound = client
        .submit(bound.clone(), Duration::from_secs(20))
        .await
        .unwrap();
    let (granted, _g) = submit("batch", None, Some(2)).await;

    for (body, tier, code, needle) in [
        (Some("beta"), None, ErrorCode::InvalidRequest, "`tenant`"),
        (None, Some(1), ErrorCode::InvalidTier, "\"acme\""),
    ] {
        let (_, mut sub) = submit("acme", body, tier).await;
        let m = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a refusal within 20 s")
            .unwrap();
        match Reply::decode(Encoding::MsgPack, &m.payload).unwrap() {
            Reply::Error(e) => {
                assert_eq!(e.code, code);
                assert!(e.message.contains(needle), "{}", e.message);
            }
            other => panic!("expected {code}, got {other:?}"),
        }
    }
    let got = env.all_routed(2).await;
    assert_eq!(got.len(), 2, "only the two valid requests are routed");
    let find = |id: &str| got.iter().find(|g| g.request.id == id).unwrap();
    assert_eq!(find(&bound.id).request.tenant.as_deref(), Some("acme"));
    let granted = find(&granted);
    assert_eq!(granted.request.tenant.as_deref(), Some("batch"));
    assert_eq!(granted.routing.tier, Tier::Large);
    assert_eq!(granted.routing.reasons, vec!["override:2"]);
    stop_router(stop, task).await;
    env.cleanup().await;
}

/// The version each routed request's reasons name (`head=…`), by id; only
/// requests the model scored carry one.
fn head_versions(routed: &[RoutedRequest]) -> Vec<(String, String)> {
    routed
        .iter()
        .filter_map(|r| {
            let v = r
                .routing
                .reasons
                .iter()
                .find_map(|x| x.strip_prefix("head="))?;
            Some((r.request.id.clone(), v.to_string()))
        })
        .collect()
}

/// The shipped head with its intercept moved: another valid head.
fn shifted_head(by: f64) -> Vec<u8> {
    let mut head: serde_json::Value =
        serde_json::from_str(triage_complexity::scorer::SHIPPED_HEAD).unwrap();
    let bias = head["bias"].as_f64().unwrap();
    head["bias"] = serde_json::json!(bias + by);
    serde_json::to_vec(&head).unwrap()
}

/// Waits (up to 10 s) until `scorer`'s head in force is `version`.
async fn head_becomes(scorer: &Scorer, version: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while &*scorer.head().version != version {
        assert!(
            tokio::time::Instant::now() < deadline,
            "head {version} not in force within 10 s (still {})",
            scorer.head().version
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `promote` during load: requests keep flowing, none lost or doubled,
/// each decision names one head, later ones the new head; a value that is
/// not a head is refused and the head in force stays; `rollback` puts the
/// earlier head back.
#[tokio::test]
async fn promoted_heads_switch_a_running_router_without_losing_a_request() {
    use triage_router::heads;
    let env = Env::new().await;
    // Every prompt through the model (the first stage would settle these).
    let mut config = env.config.clone();
    config.scoring.first_stage.enabled = false;
    let scorer = Arc::new(Scorer::new(config.scoring.clone()).unwrap());
    let mut registry = Registry::default();
    let metrics = Arc::new(RouterMetrics::register(&mut registry));
    let (stop, task) = env
        .start_with(&config, scorer.clone(), metrics.clone())
        .await;
    let shipped = scorer.head().version.to_string();
    let store = heads::bucket(&env.js, &env.ns, 1).await.unwrap();

    let publish_batch = |from: usize, n: usize| {
        let env = &env;
        async move {
            for i in from..from + n {
                let prompt = format!("{} (variant {i})", PLAIN[i % PLAIN.len()]);
                env.publish(&request(&format!("h-{i:03}"), &prompt)).await;
            }
        }
    };
    // Load before, during and after the promotion.
    let promoted = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        heads::promote(&store, &shifted_head(0.25)).await.unwrap()
    };
    let ((new_version, _), ()) = tokio::join!(promoted, publish_batch(0, 80));
    assert_ne!(new_version, shipped);
    head_becomes(&scorer, &new_version).await;
    publish_batch(80, 20).await;
    // Scored before anything changes again.
    assert_eq!(env.all_routed(100).await.len(), 100);

    // Not a head: refused, counted, the new head stays.
    store.put(heads::KEY, "not a head".into()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.head_refusals.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusal not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(&*scorer.head().version, new_version);

    // A second promotion, then two rollbacks: to the first promoted head
    // (the refused value skipped), then past it to the configured head.
    let (third, _) = heads::promote(&store, &shifted_head(-0.25)).await.unwrap();
    head_becomes(&scorer, &third).await;
    let back = heads::rollback(&store)
        .await
        .unwrap()
        .expect("an earlier head");
    assert!(
        matches!(&back, heads::RolledBack::Head(v, _) if *v == new_version),
        "{back:?}"
    );
    head_becomes(&scorer, &new_version).await;
    let back = heads::rollback(&store).await.unwrap();
    assert_eq!(back, Some(heads::RolledBack::Configured));
    head_becomes(&scorer, &shipped).await;
    assert_eq!(
        heads::rollback(&store).await.unwrap(),
        None,
        "nothing left to undo"
    );
    publish_batch(100, 20).await;

    let got = env.all_routed(120).await;
    let ids: BTreeSet<String> = got.iter().map(|r| r.request.id.clone()).collect();
    assert_eq!((ids.len(), got.len()), (120, 120), "all routed, none twice");
    let versions = head_versions(&got);
    assert!(
        versions.len() >= 100,
        "the model scored most: {}",
        versions.len()
    );
    for (id, v) in &versions {
        let i: usize = id[2..].parse().unwrap();
        let want: &[&str] = match i {
            0..80 => &[&shipped, &new_version],
            80..100 => &[&new_version],
            _ => &[&shipped],
        };
        assert!(
            want.contains(&v.as_str()),
            "{id} scored by {v}, want one of {want:?}"
        );
    }
    assert!(
        versions.iter().any(|(_, v)| *v == new_version),
        "the promoted head scored some"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(&format!(
            "triage_router_head_info{{version=\"{shipped}\"}} 1"
        )),
        "{text}"
    );
    stop_router(stop, task).await;
    env.cleanup().await;
}

/// Prompts the first stage leaves to the transformer (inside its band).
fn band_prompts(n: usize) -> Vec<String> {
    let found: Vec<String> = (0..60)
        .map(|i| {
            format!(
                "Question {i}: which of these best explains the result? (A) inflation (B) tariffs (C) {} (D) none of these. Think step by step.",
                PLAIN[i % PLAIN.len()]
            )
        })
        .filter(|t| {
            let p = scorer().prepare(t).unwrap();
            p.rule.is_none() && scorer().score_without_model(&p).is_none()
        })
        .take(n)
        .collect();
    assert_eq!(found.len(), n, "band prompts");
    found
}

#[tokio::test]
async fn with_a_model_budget_the_first_stage_decides_what_the_transformer_has_no_time_for() {
    let env = Env::new().await;
    let mut config = env.config.clone();
    // Nothing fits a budget of 1 ns once the first pass has been timed
    // (zero turns the budget off).
    config.batching.model_budget = Some(Duration::from_nanos(1));
    let mut registry = Registry::default();
    let metrics = Arc::new(RouterMetrics::register(&mut registry));
    let (stop, task) = env.start_with(&config, scorer(), metrics).await;
    let texts = band_prompts(2);
    env.publish(&request("timed", &texts[0])).await;
    let first = env.all_routed(1).await;
    assert_eq!(first.len(), 1);
    env.publish(&request("over", &texts[1])).await;
    let got = env.all_routed(2).await;
    stop_router(stop, task).await;
    let reasons = |id: &str| {
        got.iter()
            .find(|g| g.request.id == id)
            .unwrap_or_else(|| panic!("{id} routed"))
            .routing
            .reasons
            .clone()
    };
    assert!(
        reasons("timed").iter().any(|r| r.starts_with("embedding=")),
        "{:?}",
        reasons("timed")
    );
    let over = reasons("over");
    assert!(over.iter().any(|r| r == "model_budget"), "{over:?}");
    assert!(
        over.iter().any(|r| r.starts_with("first_stage=")),
        "{over:?}"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("triage_router_decisions_total")
                && l.contains("reason=\"model_budget\"")
                && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        text.contains("triage_router_model_pass_size_count 1"),
        "one pass, for the first text: {text}"
    );
}
