//! The pipeline's real binaries under the shipped NATS permissions
//! (deploy/nats/triage.conf on a private nats-server 2.9): router, both
//! workers, the ledger, the cost exporter and the gateway each connect as their own user
//! with their own inbox prefix, as compose configures them; a client of
//! tenant `acme` gets an answer and its usage is booked under `acme`, the
//! tenant the subject bound; a body claiming another tenant is refused.
//! Every answer is sampled for a shadow answer (`shadow.fraction = 1`), so
//! triage-shadow, as its own user, books the shadow and judge calls too.

#[allow(dead_code)]
#[path = "../../services/bus/tests/support/auth_nats.rs"]
mod auth_nats;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use auth_nats::{password, AuthNats};
use futures::StreamExt;
use triage_bus::{NatsConfig, TriageClient};
use triage_protocol::{encode, headers, Encoding, ErrorCode, Namespace, Reply, Request};
use triage_vllm_sim::{spawn, SimConfig};

/// Kills its child on drop, so a failing test leaves nothing running.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn target_bin(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps; binaries sit in target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `bin args` as NATS user `user`, configured through its environment
/// variables (`<env>NATS__USER`, …) the way compose does it.
fn service(
    server: &AuthNats,
    logs: &std::path::Path,
    bin: &str,
    args: &[&str],
    env: &str,
    user: &str,
    extra: &[(&str, String)],
) -> Service {
    let mut cmd = Command::new(target_bin(bin));
    cmd.args(args)
        .env(format!("{env}NATS__URL"), &server.url)
        .env(format!("{env}NATS__USER"), user)
        .env(format!("{env}NATS__PASSWORD"), password(user))
        .env(
            format!("{env}NATS__INBOX_PREFIX"),
            format!("_TRIAGE.{user}"),
        )
        .env(format!("{env}METRICS_ADDR"), "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.join(format!("{user}.log"))).unwrap())
        .stderr(std::fs::File::create(logs.join(format!("{user}.err"))).unwrap());
    for kind in ["REQUESTS", "TIERS", "USAGE", "DEAD", "RESULTS", "SHADOW"] {
        cmd.env(
            format!("{env}NATS__STREAMS__{kind}__MAX_BYTES"),
            (64u64 << 20).to_string(),
        );
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Service(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}")),
    )
}

fn logs_tail(dir: &std::path::Path) -> String {
    let mut s = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        s.push_str(&format!(
            "--- {}\n{}\n",
            e.path().display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    s
}

/// The response to one HTTP/1.0 request to 127.0.0.1:`port` (a JSON body
/// when `body` is given), or empty while nothing answers there.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.as_bytes()));
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// [`http`] off the test's thread: the simulators run on it.
async fn fetch(port: u16, method: &'static str, path: &'static str, body: Option<&str>) -> String {
    let body = body.map(str::to_string);
    tokio::task::spawn_blocking(move || http(port, method, path, body.as_deref()))
        .await
        .unwrap()
}

fn admin_db_url() -> String {
    std::env::var("TRIAGE_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[tokio::test]
async fn every_service_runs_with_its_own_nats_user_and_the_tenant_comes_from_the_subject() {
    let server = AuthNats::start();
    let db_name = format!("triage_secured_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&admin_db_url())
        .await
        .expect("Postgres must be running");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&admin)
        .await
        .unwrap();
    let base = admin_db_url();
    let db_url = format!("{}/{db_name}", &base[..base.rfind('/').unwrap()]);
    let logs = tempfile::tempdir().unwrap();
    let sim = |model: &str| {
        let mut c = SimConfig::instant(model, 8);
        c.ttft_ms = 5;
        c.itl_ms = 1;
        c
    };
    let sims = (
        spawn(sim("sim-small")).await.unwrap(),
        spawn(sim("sim-large")).await.unwrap(),
    );
    let exporter_port = free_port();
    let db = [("TRIAGE_DATABASE_URL", db_url.clone())];
    let _services = vec![
        service(
            &server,
            logs.path(),
            "triage-ledger",
            &["run"],
            "TRIAGE_LEDGER_",
            "ledger",
            &[
                ("TRIAGE_LEDGER_DATABASE__URL", db_url.clone()),
                db[0].clone(),
            ],
        ),
        service(
            &server,
            logs.path(),
            "triage-worker",
            &["run", "--tier", "1"],
            "TRIAGE_WORKER_",
            "worker-tier1",
            &[
                ("TRIAGE_WORKER_BACKEND_URLS", sims.0.url().to_string()),
                ("TRIAGE_WORKER_SHADOW__FRACTION", "1".into()),
            ],
        ),
        service(
            &server,
            logs.path(),
            "triage-worker",
            &["run", "--tier", "2"],
            "TRIAGE_WORKER_",
            "worker-tier2",
            &[
                ("TRIAGE_WORKER_BACKEND_URLS", sims.1.url().to_string()),
                ("TRIAGE_WORKER_SHADOW__FRACTION", "1".into()),
            ],
        ),
        service(
            &server,
            logs.path(),
            "triage-shadow",
            &["run"],
            "TRIAGE_SHADOW_",
            "shadow",
            &[
                ("TRIAGE_SHADOW_TIER1__URL", sims.0.url().to_string()),
                ("TRIAGE_SHADOW_TIER1__MODEL", "sim-small".into()),
                ("TRIAGE_SHADOW_TIER2__URL", sims.1.url().to_string()),
                ("TRIAGE_SHADOW_TIER2__MODEL", "sim-large".into()),
            ],
        ),
        service(
            &server,
            logs.path(),
            "triage-router",
            &["run"],
            "TRIAGE_ROUTER_",
            "router",
            &[],
        ),
    ];
    let acme = TriageClient::new(
        triage_bus::connect(&NatsConfig {
            url: server.url.clone(),
            user: Some("acme".into()),
            password: Some(password("acme")),
            inbox_prefix: Some("_INBOX.acme".into()),
            ..NatsConfig::default()
        })
        .await
        .unwrap(),
        Namespace::default(),
    );
    let id = ask_until_answered(&acme, logs.path()).await;

    forged_tenant_is_refused(&server).await;

    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let tenant: Option<String> = loop {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT tenant FROM ledger_entries WHERE request_id = $1")
                .bind(&id)
                .fetch_optional(&pool)
                .await
                .unwrap_or(None);
        if let Some((t,)) = row {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "usage of {id} not booked within 60 s\n{}",
            logs_tail(logs.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        tenant.as_deref(),
        Some("acme"),
        "booked under the subject's tenant"
    );
    shadow_calls_are_booked(&pool, &id, logs.path()).await;
    pool.close().await;
    acme_rates_its_answer(&server, &id).await;

    exporter_reads_queues(&server, logs.path(), exporter_port, &db_url).await;
    gateway_answers(&server, logs.path()).await;
    // Nothing any service tried was refused, not even what it only logs.
    assert_eq!(
        server.violations(),
        Vec::<String>::new(),
        "\n{}",
        logs_tail(logs.path())
    );
    drop(_services);
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}

/// The answer was shadowed: triage-shadow (user `shadow`) answered it on
/// the other tier and had both answers judged, and the ledger booked the
/// three calls under acme (the simulator judge gives no rating, so no
/// grade is stored; the tokens are booked all the same).
async fn shadow_calls_are_booked(pool: &sqlx::PgPool, id: &str, logs: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, tenant FROM ledger_entries
             WHERE request_id = $1 AND status IN ('shadow', 'judge') ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let acme = |s: &str| (s.to_string(), Some("acme".to_string()));
        if rows == vec![acme("shadow"), acme("judge"), acme("judge")] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shadow and judge calls of {id} not booked within 60 s: {rows:?}\n{}",
            logs_tail(logs)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// On its own subject, acme's body may not claim another tenant: the
/// router answers `invalid_request` (and the Rust client would not even
/// publish it: globex's subject is not acme's to use).
async fn forged_tenant_is_refused(server: &AuthNats) {
    let (client, _errors) = server.probe("acme", "_INBOX.acme").await;
    let js = async_nats::jetstream::new(client.clone());
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let mut forged = Request::from_prompt("Say hello.");
    forged.tenant = Some("globex".into());
    let mut h = triage_bus::envelope::outgoing(Encoding::MsgPack, None);
    h.insert(headers::REPLY_TO, inbox.as_str());
    let payload = encode(Encoding::MsgPack, &forged).into();
    triage_bus::publish::once(&js, "llm.requests.acme", h, payload)
        .await
        .expect("acme publishes on its subject");
    let m = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .expect("a refusal within 30 s")
        .unwrap();
    match Reply::decode(Encoding::MsgPack, &m.payload).unwrap() {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest, "{}", e.message),
        other => panic!("expected invalid_request, got {other:?}"),
    }
}

/// Asks as acme (tenant from the subject only) until the pipeline answers:
/// the router loads its model at start. Returns the answered request's id.
async fn ask_until_answered(acme: &TriageClient, logs: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut r = Request::from_prompt("Say hello.");
        r.tenant = Some("acme".into());
        r.max_tokens = Some(4);
        let id = r.ensure_id().to_string();
        match acme.ask(r, Duration::from_secs(20)).await {
            Ok(answer) => {
                assert!(answer.completion.is_some());
                return id;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("no answer within 120 s: {e}\n{}", logs_tail(logs))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The cost exporter, as its own user, reads the queue depths from JetStream.
async fn exporter_reads_queues(server: &AuthNats, logs: &std::path::Path, port: u16, db_url: &str) {
    let _exporter = service(
        server,
        logs,
        "triage-cost-exporter",
        &["run"],
        "TRIAGE_COST_EXPORTER_",
        "cost-exporter",
        &[
            ("TRIAGE_COST_EXPORTER_DATABASE__URL", db_url.to_string()),
            ("TRIAGE_DATABASE_URL", db_url.to_string()),
            (
                "TRIAGE_COST_EXPORTER_METRICS_ADDR",
                format!("127.0.0.1:{port}"),
            ),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = fetch(port, "GET", "/metrics", None).await;
        if body.contains("triage_queue_depth{queue=\"llm.requests\"") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no queue depth on the exporter's /metrics within 60 s\n{body}\n{}",
            logs_tail(logs)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The gateway, as its own user: publishes on plain llm.requests, reads its
/// answers on `_GW.>`, looks the streams up for `/health`.
/// acme rates its own answer on its own subject (`nats req
/// llm.feedback.acme`): the ledger answers on acme's inbox; an id acme
/// never sent is refused.
async fn acme_rates_its_answer(server: &AuthNats, id: &str) {
    let (acme, _errors) = server.probe("acme", "_INBOX.acme").await;
    let rate = |id: String| {
        let acme = acme.clone();
        async move {
            let body = serde_json::json!({"id": id, "rating": "good"}).to_string();
            // An unknown id is refused only after the ledger's booking wait
            // (5 s), longer than the probe's 2 s request timeout.
            let request = async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(Duration::from_secs(20)));
            let reply = tokio::time::timeout(
                Duration::from_secs(30),
                acme.send_request("llm.feedback.acme", request),
            )
            .await
            .expect("a feedback answer within 30 s")
            .expect("the ledger answers acme's rating");
            serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
        }
    };
    let receipt = rate(id.to_string()).await;
    assert_eq!(
        (receipt["type"].as_str(), receipt["tenant"].as_str()),
        (Some("feedback"), Some("acme")),
        "{receipt}"
    );
    let refused = rate("never-sent-by-acme".into()).await;
    assert_eq!(refused["code"], "unknown_request", "{refused}");
}

async fn gateway_answers(server: &AuthNats, logs: &std::path::Path) {
    let port = free_port();
    let _gateway = service(
        server,
        logs,
        "triage-gateway",
        &["run"],
        "TRIAGE_GATEWAY_",
        "gateway",
        &[("TRIAGE_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))],
    );
    const BODY: &str = r#"{"model": "triage-auto", "max_tokens": 4, "messages": [{"role": "user", "content": "Say hello."}]}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = fetch(port, "POST", "/v1/chat/completions", Some(BODY)).await;
        if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
            assert!(answer.contains("chat.completion"), "{answer}");
            // POST /v1/feedback with the response's id reaches the ledger
            // through the gateway's own NATS user.
            let id = answer
                .split("\"id\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("the completion's id");
            let rating = format!(r#"{{"id": "{id}", "rating": 8}}"#);
            let receipt = fetch(port, "POST", "/v1/feedback", Some(&rating)).await;
            assert!(
                receipt.contains(" 200 ") && receipt.contains(r#""object":"feedback""#),
                "{receipt}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not answer within 60 s: {answer}\n{}",
            logs_tail(logs)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let health = fetch(port, "GET", "/health", None).await;
    assert!(health.contains(" 200 "), "{health}");

    // `nats req llm.chat.acme …` as acme: the gateway answers on acme's own
    // inbox (allow_responses), with the tenant bound by the subject.
    let (acme, _errors) = server.probe("acme", "_INBOX.acme").await;
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        acme.request(
            "llm.chat.acme",
            r#"{"prompt": "Say hello.", "max_tokens": 4}"#.into(),
        ),
    )
    .await
    .expect("an llm.chat answer within 60 s")
    .expect("the gateway answers acme's request");
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(answer["type"], "completion", "{answer}");
}
