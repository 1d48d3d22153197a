//! The shadow service's test world: a namespace of its own on the real
//! NATS (small streams, deleted at the end), a throwaway Postgres database
//! with the ledger writer booking into it, simulators with scripted
//! replies as both tiers and the judge, and in-process workers and shadow
//! service.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use prometheus_client::registry::Registry;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use triage_bus::StreamsConfig;
use triage_ledger::writer::{Writer, WriterConfig, WriterMetrics};
use triage_ledger::Store;
use triage_protocol::{
    decode, encode, headers, Encoding, Namespace, Reply, Request, RoutedRequest, RoutingDecision,
    StreamKind, Tier,
};
use triage_shadow::job::Shadower;
use triage_shadow::metrics::ShadowMetrics;
use triage_shadow::service::{self, Settler};
use triage_shadow::ShadowConfig;
use triage_vllm_sim::{SimConfig, SimHandle};
use triage_worker::config::{BackendSpec, WorkerConfig};
use triage_worker::Worker;

/// What tier 1 always answers; the judge grades it 3 (bad).
pub const SMALL_ANSWER: &str = "small answer from tier one";
/// What tier 2 always answers; the judge grades it 8 (good).
pub const LARGE_ANSWER: &str = "large answer from tier two";

pub fn streams() -> StreamsConfig {
    let mut s = StreamsConfig::small();
    for l in [
        &mut s.requests,
        &mut s.tiers,
        &mut s.usage,
        &mut s.dead,
        &mut s.results,
        &mut s.shadow,
    ] {
        l.max_bytes = 8 << 20;
    }
    s.finished_max_bytes = 8 << 20;
    s.progress_max_bytes = 1 << 20;
    s
}

async fn sim(model: &str, replies: &[(&str, &str)]) -> SimHandle {
    let c = SimConfig::instant(model, 8).with_replies(replies);
    triage_vllm_sim::spawn(c).await.unwrap()
}

pub struct World {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub prefix: String,
    pub db: PgPool,
    db_name: String,
    pub tier1: SimHandle,
    pub tier2: SimHandle,
    pub judge: SimHandle,
    pub shadow_metrics: ShadowMetrics,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn database_url(db: &str) -> String {
    let base = std::env::var("TRIAGE_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/triage".into());
    let (root, _) = base.rsplit_once('/').expect("a database URL");
    format!("{root}/{db}")
}

impl World {
    /// NATS namespace, database, ledger writer, simulators and the shadow service.
    pub async fn new() -> Self {
        Self::build(false).await
    }

    /// [`World::new`] with the shadow service storing learning text.
    pub async fn storing_text() -> Self {
        Self::build(true).await
    }

    async fn build(store_text: bool) -> Self {
        triage_runtime::telemetry::init("shadow-test", triage_runtime::telemetry::LogFormat::Text);
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let ns = Namespace::new(prefix.clone()).unwrap();
        let client = async_nats::connect(triage_bus::default_nats_url())
            .await
            .expect("NATS must be running (scripts/setup.sh starts it)");
        let js = jetstream::new(client.clone());
        triage_bus::provision(&js, &ns, &streams()).await.unwrap();

        let db_name = format!("triage_test_{}", uuid::Uuid::now_v7().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&database_url("postgres"))
            .await
            .expect("Postgres must be running (scripts/setup.sh starts it)");
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let db = PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url(&db_name))
            .await
            .unwrap();
        let store = Store::from_pool(db.clone());
        store.migrate().await.unwrap();
        for p in triage_ledger::config::reference_prices() {
            store.ensure_price(&p, "test").await.unwrap();
        }

        let tier1 = sim("tier1-sim", &[("", SMALL_ANSWER)]).await;
        let tier2 = sim("tier2-sim", &[("", LARGE_ANSWER)]).await;
        let judge = sim(
            "judge-sim",
            &[
                (SMALL_ANSWER, "Thin and vague. Rating: [[3]]"),
                (LARGE_ANSWER, "Helpful and correct. Rating: [[8]]"),
            ],
        )
        .await;

        let stop = CancellationToken::new();
        let writer_config = WriterConfig {
            batch_wait: Duration::from_millis(5),
            ..WriterConfig::default()
        };
        let writer = Writer::new(
            store,
            client.clone(),
            ns.clone(),
            writer_config,
            WriterMetrics::default(),
        );
        let s = stop.clone();
        let mut tasks = vec![tokio::spawn(async move {
            writer.run(s).await.unwrap();
        })];

        let mut registry = Registry::default();
        let shadow_metrics = ShadowMetrics::register(&mut registry);
        let mut config = shadow_config(&prefix, &tier1, &tier2, &judge);
        config.learning.store_text = store_text;
        let consumer = triage_bus::consumer::durable(
            &js,
            &ns,
            StreamKind::Shadow,
            &config.consumer.name,
            &config.consumer.settings(),
        )
        .await
        .unwrap();
        let settler = Arc::new(Settler {
            shadower: Shadower::new(&config, js.clone(), ns.clone(), shadow_metrics.clone())
                .unwrap(),
            js: js.clone(),
            ns: ns.clone(),
            consumer: config.consumer.clone(),
            metrics: shadow_metrics.clone(),
        });
        tasks.push(tokio::spawn(service::run(
            settler,
            consumer,
            Duration::from_secs(2),
            stop.clone(),
        )));
        Self {
            client,
            js,
            ns,
            prefix,
            db,
            db_name,
            tier1,
            tier2,
            judge,
            shadow_metrics,
            stop,
            tasks,
        }
    }

    /// A tier worker sampling `fraction` of its answers.
    pub async fn worker(
        &self,
        tier: Tier,
        fraction: f64,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let sim = match tier {
            Tier::Small => &self.tier1,
            Tier::Large => &self.tier2,
        };
        let mut c = WorkerConfig::default();
        c.nats.prefix = self.prefix.clone();
        c.nats.streams = streams();
        c.backend_urls = String::new();
        c.backends = vec![BackendSpec::new(sim.url())];
        c.consumer.fetch_expires = Duration::from_millis(200);
        c.health.interval = Duration::from_millis(200);
        c.prewarm.idle_after = Duration::ZERO;
        c.shutdown_grace = Duration::from_secs(2);
        c.metrics_addr = "127.0.0.1:0".parse().unwrap();
        c.shadow.fraction = fraction;
        let mut registry = Registry::default();
        let worker = Worker::connect(c, tier, &mut registry).await.unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            worker.run(s).await.unwrap();
        });
        (stop, handle)
    }

    /// Sends `id` to `tier` as the router would and waits for its completion text.
    pub async fn ask(&self, tier: Tier, id: &str, tenant: &str) -> String {
        let mut request = Request::from_prompt("Why is the sky blue?");
        request.id = id.into();
        request.tenant = Some(tenant.into());
        request.max_tokens = Some(32);
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.unwrap();
        request.reply_to = Some(inbox);
        let routed = RoutedRequest {
            version: 1,
            request,
            routing: RoutingDecision::fixed(tier, "test"),
            routed_at_ms: triage_protocol::now_ms(),
        };
        self.publish(
            &self.ns.tier(tier),
            encode(Encoding::MsgPack, &routed),
            Encoding::MsgPack,
        )
        .await;
        let mut text = String::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .expect("an answer within 20 s")
                .unwrap();
            match decode::<Reply>(Encoding::MsgPack, &m.payload).unwrap() {
                Reply::Chunk(c) => text.push_str(&c.delta),
                Reply::Completion(c) => return c.text.unwrap_or(text),
                Reply::Error(e) => panic!("{id} failed: {e:?}"),
            }
        }
    }

    /// Publishes `payload` durably on `subject` (no message id).
    pub async fn publish(&self, subject: &str, payload: Vec<u8>, encoding: Encoding) {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::CONTENT_TYPE, encoding.content_type());
        self.js
            .publish_with_headers(subject.to_string(), h, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Ledger rows of request `id` by status, sorted.
    pub async fn ledger_statuses(&self, id: &str) -> Vec<(String, i32)> {
        sqlx::query_as(
            "SELECT status, attempt FROM ledger_entries WHERE request_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.db)
        .await
        .unwrap()
    }

    /// Judge outcomes of `id`: (judged, tier, good, score).
    pub async fn judged(&self, id: &str) -> Vec<(String, i16, bool, f64)> {
        sqlx::query_as(
            "SELECT judged, tier, good, score FROM outcomes
             WHERE request_id = $1 AND source = 'judge' ORDER BY judged",
        )
        .bind(id)
        .fetch_all(&self.db)
        .await
        .unwrap()
    }

    /// Stored text of `id`'s judged answers: (judged, last message, answer).
    pub async fn texts(&self, id: &str) -> Vec<(String, String, String)> {
        sqlx::query_as(
            "SELECT judged, messages->-1->>'content', answer FROM outcome_texts
             WHERE request_id = $1 ORDER BY judged",
        )
        .bind(id)
        .fetch_all(&self.db)
        .await
        .unwrap()
    }

    /// Polls `check` every 100 ms until it holds, for at most `limit`.
    pub async fn eventually<F, Fut>(&self, what: &str, limit: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages the stream of `kind` ever took.
    pub async fn stream_seq(&self, kind: StreamKind) -> u64 {
        let mut s = self.js.get_stream(self.ns.stream_name(kind)).await.unwrap();
        s.info().await.unwrap().state.last_sequence
    }

    /// Stops everything and deletes the namespace and the database.
    pub async fn teardown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        for kind in StreamKind::ALL {
            let _ = self.js.delete_stream(self.ns.stream_name(kind)).await;
        }
        for bucket in [self.ns.finished_bucket(), self.ns.progress_bucket()] {
            let _ = self.js.delete_stream(format!("KV_{bucket}")).await;
        }
        self.db.close().await;
        if let Ok(admin) = PgPoolOptions::new()
            .max_connections(1)
            .connect(&database_url("postgres"))
            .await
        {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .execute(&admin)
            .await;
        }
    }
}

fn shadow_config(
    prefix: &str,
    tier1: &SimHandle,
    tier2: &SimHandle,
    judge: &SimHandle,
) -> ShadowConfig {
    let mut c = ShadowConfig::default();
    c.nats.prefix = prefix.into();
    c.nats.streams = streams();
    c.tier1.url = tier1.url().into();
    c.tier1.model = "tier1-sim".into();
    c.tier2.url = tier2.url().into();
    c.tier2.model = "tier2-sim".into();
    c.judge.url = judge.url().into();
    c.judge.model = "judge-sim".into();
    c.call_timeout = Duration::from_secs(10);
    c.consumer.ack_wait = Duration::from_secs(30);
    c.consumer.retry_delay = Duration::from_millis(200);
    c
}
