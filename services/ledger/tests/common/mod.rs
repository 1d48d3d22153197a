//! Helpers for tests against the real Postgres (and NATS): a throwaway
//! database per test, usage events, and a private Postgres instance that a
//! test may stop and start without disturbing anyone else.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use triage_ledger::{Price, Store};
use triage_protocol::{Tier, Usage, UsageEvent, UsageStatus};

/// The server the tests use (TRIAGE_DATABASE_URL or the local default).
pub fn base_url() -> String {
    std::env::var("TRIAGE_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/triage".into())
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

pub fn random_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// A database created for one test and dropped by [`TestDb::drop`].
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
    pub store: Store,
}

impl TestDb {
    /// Creates `triage_test_<random>` on the server at `server_url` and
    /// applies the migrations.
    pub async fn create_on(server_url: &str) -> TestDb {
        let name = format!("triage_test_{}", random_suffix());
        let admin_url = with_database(server_url, "postgres");
        let admin = connect_retrying(&admin_url).await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = with_database(server_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect test database");
        let store = Store::from_pool(pool);
        store.migrate().await.expect("migrations apply");
        TestDb {
            name,
            url,
            admin_url,
            store,
        }
    }

    /// A fresh database on the shared server.
    pub async fn create() -> TestDb {
        Self::create_on(&base_url()).await
    }

    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// Stores the reference prices (tier 1 $0.00015, tier 2 $0.0012 per 1K
    /// tokens, input and output) from the epoch.
    pub async fn reference_prices(&self) {
        for p in reference_prices() {
            self.store
                .ensure_price(&p, "test")
                .await
                .expect("store price");
        }
    }

    pub async fn drop(self) {
        self.store.pool().close().await;
        if let Ok(admin) = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.admin_url)
            .await
        {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

async fn connect_retrying(url: &str) -> PgPool {
    let mut last = None;
    for _ in 0..50 {
        match PgPoolOptions::new().max_connections(1).connect(url).await {
            Ok(p) => return p,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to {url}: {last:?}");
}

pub fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub fn epoch() -> DateTime<Utc> {
    Utc.timestamp_opt(0, 0).unwrap()
}

pub fn reference_prices() -> Vec<Price> {
    vec![
        Price {
            id: None,
            tier: Tier::Small,
            model: None,
            input_per_1k: dec("0.00015"),
            output_per_1k: dec("0.00015"),
            effective_from: epoch(),
        },
        Price {
            id: None,
            tier: Tier::Large,
            model: None,
            input_per_1k: dec("0.0012"),
            output_per_1k: dec("0.0012"),
            effective_from: epoch(),
        },
    ]
}

/// A successful attempt.
pub fn event(
    id: &str,
    tier: Tier,
    prompt: u32,
    completion: u32,
    finished_at: DateTime<Utc>,
) -> UsageEvent {
    UsageEvent {
        version: 1,
        id: id.into(),
        attempt: 1,
        tenant: Some("acme".into()),
        tier,
        model: match tier {
            Tier::Small => "llama-8b".into(),
            Tier::Large => "llama-70b".into(),
        },
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            estimated: false,
        },
        status: UsageStatus::Ok,
        score: Some(0.3),
        reasons: vec!["embedding=0.30".into()],
        ttft_ms: Some(40.0),
        total_ms: 500.0,
        finished_at_ms: finished_at.timestamp_millis() as u64,
        error_code: None,
        judged: None,
    }
}

pub async fn count_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger_entries")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Asserts the three rollups agree with the ledger rows exactly.
pub async fn assert_books_balance(pool: &PgPool) {
    let drift: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_reconciliation")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(drift, 0, "daily rollup disagrees with ledger_entries");
    let (raw_n, raw_cost): (i64, Option<Decimal>) =
        sqlx::query_as("SELECT count(*), sum(cost) FROM ledger_entries")
            .fetch_one(pool)
            .await
            .unwrap();
    for table in ["usage_minute", "usage_totals", "usage_daily"] {
        let (n, cost): (Option<Decimal>, Option<Decimal>) = sqlx::query_as(&format!(
            "SELECT sum(requests)::numeric, sum(cost) FROM {table}"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            n.unwrap_or_default(),
            Decimal::from(raw_n),
            "{table} request count"
        );
        assert_eq!(
            cost.unwrap_or_default(),
            raw_cost.unwrap_or_default(),
            "{table} cost"
        );
    }
}

/// A Postgres server of the test's own (initdb in a temp dir, its own
/// port), so the test can stop and restart it. Runs as the `postgres` user
/// when the tests run as root (initdb refuses root).
pub struct PrivatePostgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("TRIAGE_PG_BIN") {
        return PathBuf::from(dir);
    }
    for v in ["17", "16", "15", "14", "13"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return p;
        }
    }
    panic!("initdb not found under /usr/lib/postgresql/*/bin; install the postgresql package (or set TRIAGE_PG_BIN)");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("triage-pg-")
            .tempdir()
            .unwrap();
        let pg = PrivatePostgres {
            port: free_port(),
            bin: pg_bin(),
            as_postgres,
            dir,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the private postgres dir failed");
        }
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.ctl_start();
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let output = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn ctl_start(&self) {
        let data = self.data_dir();
        let log = self.dir.path().join("postgres.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Fast shutdown: open connections are cut, like a crash of the server
    /// from the client's point of view.
    pub fn ctl_stop(&self) {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let exe = self.bin.join("pg_ctl");
        let args = [
            "-D",
            data.to_str().unwrap_or_default(),
            "-m",
            "immediate",
            "stop",
        ];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}

/// NATS for one test: its own subject prefix, streams provisioned.
pub struct TestNats {
    pub ns: triage_protocol::Namespace,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    marker: String,
}

impl TestNats {
    pub async fn create() -> TestNats {
        let prefix = format!("t{}", random_suffix());
        let ns = triage_protocol::Namespace::new(&prefix).unwrap();
        let client = async_nats::connect(triage_bus::default_nats_url())
            .await
            .expect("connect to NATS (is nats-server running?)");
        let js = async_nats::jetstream::new(client.clone());
        // Only the two streams the ledger touches, and small: JetStream
        // reserves max_bytes up front and the server is shared.
        let mut streams = triage_bus::StreamsConfig::default();
        for l in [&mut streams.usage, &mut streams.dead] {
            l.max_bytes = 64 << 20;
            l.max_age = Duration::from_secs(3600);
        }
        for kind in [
            triage_protocol::StreamKind::Usage,
            triage_protocol::StreamKind::Dead,
        ] {
            triage_bus::streams::ensure_stream(
                &js,
                triage_bus::streams::desired_config(&ns, kind, &streams),
            )
            .await
            .expect("provision streams");
        }
        TestNats {
            ns,
            client,
            js,
            marker: prefix.to_ascii_uppercase(),
        }
    }

    /// Publishes a usage event as the workers do (msgpack, with its msg id).
    pub async fn publish_event(&self, e: &UsageEvent) {
        self.publish_event_as(e, triage_protocol::Encoding::MsgPack, Some(&e.msg_id()))
            .await;
    }

    pub async fn publish_event_as(
        &self,
        e: &UsageEvent,
        enc: triage_protocol::Encoding,
        msg_id: Option<&str>,
    ) {
        let payload = triage_protocol::encode(enc, e);
        self.publish_raw(&payload, Some(enc.content_type()), msg_id)
            .await;
    }

    pub async fn publish_raw(
        &self,
        payload: &[u8],
        content_type: Option<&str>,
        msg_id: Option<&str>,
    ) {
        let mut h = async_nats::HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(triage_protocol::headers::CONTENT_TYPE, ct);
        }
        if let Some(id) = msg_id {
            h.insert(triage_protocol::headers::MSG_ID, id);
        }
        triage_bus::publish::once(&self.js, &self.ns.usage(), h, payload.to_vec().into())
            .await
            .expect("publish");
    }

    /// Publishes many events without waiting for each ack in turn.
    pub async fn publish_many(&self, events: &[UsageEvent]) {
        let subject = self.ns.usage();
        for chunk in events.chunks(2000) {
            let publishes = chunk.iter().map(|e| {
                let mut h = async_nats::HeaderMap::new();
                h.insert(
                    triage_protocol::headers::CONTENT_TYPE,
                    triage_protocol::headers::MSGPACK_MIME,
                );
                h.insert(triage_protocol::headers::MSG_ID, e.msg_id().as_str());
                let payload = triage_protocol::encode(triage_protocol::Encoding::MsgPack, e);
                triage_bus::publish::once(&self.js, &subject, h, payload.into())
            });
            futures::future::try_join_all(publishes)
                .await
                .expect("publish");
        }
    }

    pub async fn stream_messages(&self, kind: triage_protocol::StreamKind) -> u64 {
        let mut s = self.js.get_stream(self.ns.stream_name(kind)).await.unwrap();
        s.info().await.unwrap().state.messages
    }

    /// Every message on llm.dead.
    pub async fn dead_letters(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let mut stream = self
            .js
            .get_stream(self.ns.stream_name(triage_protocol::StreamKind::Dead))
            .await
            .unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push(m);
            }
        }
        out
    }

    /// Deletes this test's streams.
    pub async fn cleanup(self) {
        use futures::StreamExt;
        let names: Vec<String> = self
            .js
            .stream_names()
            .filter_map(|n| async { n.ok() })
            .collect()
            .await;
        for n in names.into_iter().filter(|n| n.contains(&self.marker)) {
            let _ = self.js.delete_stream(&n).await;
        }
    }
}

/// Writer settings for tests: quick batches and quick retries.
pub fn test_writer_config() -> triage_ledger::writer::WriterConfig {
    triage_ledger::writer::WriterConfig {
        batch_wait: Duration::from_millis(10),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        pending_poll: Duration::from_millis(200),
        ..Default::default()
    }
}

/// Runs a writer in the background until the returned token is cancelled.
pub fn spawn_writer(
    store: &Store,
    nats: &TestNats,
    config: triage_ledger::writer::WriterConfig,
) -> (
    tokio_util::sync::CancellationToken,
    triage_ledger::writer::WriterMetrics,
    tokio::task::JoinHandle<Result<(), triage_ledger::writer::WriterError>>,
) {
    let token = tokio_util::sync::CancellationToken::new();
    let metrics = triage_ledger::writer::WriterMetrics::default();
    let writer = triage_ledger::writer::Writer::new(
        store.clone(),
        nats.client.clone(),
        nats.ns.clone(),
        config,
        metrics.clone(),
    );
    let handle = tokio::spawn(writer.run(token.clone()));
    (token, metrics, handle)
}

/// Stops a writer from [`spawn_writer`] and checks it ended cleanly, within
/// 30 s: a shutdown that never finishes fails here instead of hanging.
pub async fn stop_writer(
    stop: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), triage_ledger::writer::WriterError>>,
) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the writer stopped within 30 s of its shutdown")
        .unwrap()
        .unwrap();
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
