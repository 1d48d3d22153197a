//! Triage on a 3-node NATS JetStream cluster (three real nats-server
//! processes from deploy/nats/cluster on free ports, killed when the test
//! ends): provisioning with 3 replicas from two services at once, and the
//! whole pipeline — router, a worker per tier, the ledger writer, as the
//! built binaries — answering end to end while one node is killed and
//! brought back.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use triage_bus::{provision, streams::Provisioned, NatsConfig, StreamsConfig, TriageClient};
use triage_protocol::{Namespace, Request, StreamKind};
use triage_replay::cluster::{ClusterPorts, ClusterSetup, NatsCluster};
use triage_replay::process::Supervised;
use triage_replay::stack::{self, Stack};
use triage_vllm_sim::{spawn, SimConfig};

/// A running cluster under a temporary directory.
async fn cluster(dir: &tempfile::TempDir) -> NatsCluster {
    let setup = ClusterSetup::local(
        dir.path().join("store"),
        dir.path().join("store"),
        ClusterPorts::free().unwrap(),
    );
    let cluster = NatsCluster::start(setup).expect("nats-server is installed (scripts/setup.sh)");
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack::logs_tail(&dir.path().join("store"), 20)));
    cluster
}

fn unique(what: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}{:x}{:x}", t % (1 << 40), std::process::id())
}

fn r3() -> StreamsConfig {
    StreamsConfig {
        replicas: 3,
        ..StreamsConfig::small()
    }
}

/// Connects like a service does, to all three URLs.
async fn connect(cluster: &NatsCluster) -> async_nats::Client {
    let cfg = NatsConfig {
        url: cluster.urls(),
        ..NatsConfig::default()
    };
    triage_bus::connect(&cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_provisioning_at_once_get_every_stream_with_three_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir).await;
    let ns = Namespace::new(unique("c")).unwrap();
    let (a, b) = (connect(&cluster).await, connect(&cluster).await);
    let (ja, jb) = (async_nats::jetstream::new(a), async_nats::jetstream::new(b));
    let cfg = r3();
    let (ra, rb) = tokio::join!(provision(&ja, &ns, &cfg), provision(&jb, &ns, &cfg));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // Both succeed and nobody had to update a stream. Who reports Created is
    // not fixed: JetStream answers an identical concurrent create as a
    // success, and a create whose reply is lost while the cluster is busy is
    // retried and then finds the stream (Unchanged) — CI saw both sides
    // report Unchanged that way.
    for ((name, x), (_, y)) in ra.iter().zip(&rb) {
        assert!(
            ![x, y].contains(&&Provisioned::Updated),
            "{name}: {x:?} and {y:?}"
        );
    }
    // A restart finds everything as it wants it: nothing is updated (an
    // update on a cluster is a RAFT round per stream, racing the others).
    let again = provision(&ja, &ns, &cfg).await.unwrap();
    assert_eq!(
        again.len(),
        StreamKind::ALL.len() + 1,
        "the streams and the bucket"
    );
    assert!(
        again.iter().all(|(_, p)| *p == Provisioned::Unchanged),
        "{again:?}"
    );

    let mut names: Vec<String> = StreamKind::ALL.iter().map(|k| ns.stream_name(*k)).collect();
    names.push(format!("KV_{}", ns.finished_bucket()));
    for name in &names {
        let info = ja
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let c = info.cluster.expect("clustered stream info");
        assert!(c.leader.is_some(), "{name} has a leader");
        assert_eq!(c.replicas.len(), 2, "{name}: a leader and two followers");
    }
    stack::delete_namespace(&ja, &ns).await;
}

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    assert!(
        dir.join("triage-router").exists(),
        "the service binaries are not built: run `cargo build --workspace`"
    );
    dir
}

fn admin_db_url() -> String {
    std::env::var("TRIAGE_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Submits until JetStream stores it (a client's retry during a node
/// fault; the stream de-duplicates a retry by id), then reads the answer.
async fn ask(client: &TriageClient, mut req: Request) -> Result<triage_bus::Answer, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    req.ensure_id();
    loop {
        match client.submit(req.clone(), Duration::from_secs(60)).await {
            Ok(stream) => return stream.collect().await.map_err(|e| e.to_string()),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_answers_on_the_cluster_while_a_node_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir).await;
    let prefix = unique("p");
    let db_name = format!("triage_cluster_{prefix}");
    let db_url = stack::create_database(&admin_db_url(), &db_name)
        .await
        .unwrap();
    let sim = |model: &str| SimConfig {
        ttft_ms: 5,
        itl_ms: 2,
        ..SimConfig::instant(model, 12)
    };
    let sims = (
        spawn(sim("sim-small")).await.unwrap(),
        spawn(sim("sim-large")).await.unwrap(),
    );
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let stack = Stack {
        bin_dir: bin_dir(),
        nats_url: cluster.urls(),
        prefix: prefix.clone(),
        database_url: db_url.clone(),
        replicas: 3,
        logs: logs.clone(),
    };
    let services: Vec<Supervised> = [
        stack.ledger("ledger"),
        stack
            .worker("worker1", 1, sims.0.url())
            .env("TRIAGE_WORKER_CONSUMER__ACK_WAIT", "5s"),
        stack
            .worker("worker2", 2, sims.1.url())
            .env("TRIAGE_WORKER_CONSUMER__ACK_WAIT", "5s"),
        stack
            .router("router")
            .env("TRIAGE_ROUTER_CONSUMER__ACK_WAIT", "5s"),
    ]
    .into_iter()
    .map(|s| Supervised::start(s).unwrap())
    .collect();
    // The client stays on node 1; node 3 is the one killed.
    let client = async_nats::connect(cluster.url(0)).await.unwrap();
    let ns = Namespace::new(&prefix).unwrap();
    let triage = TriageClient::new(client.clone(), ns.clone());
    if let Err(e) = stack::wait_answering(&triage, Duration::from_secs(120)).await {
        panic!("{e}\n{}", stack::logs_tail(&logs, 20));
    }

    // 60 requests at 10/s; node 3 is SIGKILLed after 2 s and back 3 s later.
    let mut asks = Vec::new();
    for i in 0..60 {
        let triage = triage.clone();
        let mut req = Request::from_prompt(format!("Question {i}: what is {i} plus {i}?"));
        req.id = format!("{prefix}-{i}");
        req.max_tokens = Some(8);
        asks.push(tokio::spawn(async move { ask(&triage, req).await }));
        tokio::time::sleep(Duration::from_millis(100)).await;
        if i == 20 {
            cluster.kill(2);
        }
        if i == 50 {
            cluster.restart(2).unwrap();
        }
    }
    let mut answered = HashSet::new();
    for (i, a) in asks.into_iter().enumerate() {
        let answer = tokio::time::timeout(Duration::from_secs(120), a)
            .await
            .expect("every answer within 2 minutes")
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", stack::logs_tail(&logs, 20)));
        let c = answer.completion.expect("a completion");
        assert!(!answer.text.is_empty() || c.text.is_some());
        answered.insert((c.id, c.attempt));
    }
    assert_eq!(answered.len(), 60);
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("node 3 rejoins");

    // Every answering attempt is booked once.
    let db = sqlx::PgPool::connect(&db_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "SELECT request_id, attempt FROM ledger_entries WHERE request_id LIKE $1",
        )
        .bind(format!("{prefix}-%"))
        .fetch_all(&db)
        .await
        .unwrap();
        let booked: HashSet<(String, u32)> =
            rows.into_iter().map(|(id, a)| (id, a as u32)).collect();
        if answered.iter().all(|k| booked.contains(k)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not booked within 60 s: {:?}\n{}",
            answered.difference(&booked).collect::<Vec<_>>(),
            stack::logs_tail(&logs, 20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    db.close().await;
    drop(services);
    stack::delete_namespace(&async_nats::jetstream::new(client), &ns).await;
    let _ = stack::drop_database(&admin_db_url(), &db_name).await;
}
