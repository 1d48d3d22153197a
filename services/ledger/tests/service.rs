//! `triage-ledger run` as a process: configured from the environment, books
//! what is published, serves its metrics, and exits cleanly on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::*;
use triage_protocol::{Tier, UsageEvent};

const LIMIT: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_service_books_serves_metrics_and_stops_on_sigterm() {
    let db = TestDb::create().await;
    let nats = TestNats::create().await;
    let port = free_port();
    let small = (16u64 << 20).to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_triage-ledger"));
    cmd.arg("run")
        .env("TRIAGE_LEDGER_DATABASE__URL", &db.url)
        .env("TRIAGE_LEDGER_NATS__URL", triage_bus::default_nats_url())
        .env("TRIAGE_LEDGER_NATS__PREFIX", nats.ns.prefix().unwrap())
        .env("TRIAGE_LEDGER_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("TRIAGE_LEDGER_WRITER__BATCH_WAIT", "10ms")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The shared JetStream reserves each stream's max_bytes: keep them small.
    for stream in ["REQUESTS", "TIERS", "USAGE", "DEAD", "RESULTS"] {
        cmd.env(
            format!("TRIAGE_LEDGER_NATS__STREAMS__{stream}__MAX_BYTES"),
            &small,
        );
    }
    let child = cmd.spawn().expect("start triage-ledger run");
    let pid = child.id();

    let t = Utc::now() - chrono::Duration::minutes(2);
    let events: Vec<UsageEvent> = (0..50)
        .map(|i| event(&format!("s{i}"), Tier::Small, 10, 10, t))
        .collect();
    nats.publish_many(&events).await;
    let pool = db.pool().clone();
    wait_until(LIMIT, "50 rows booked by the service", || async {
        count_rows(&pool).await == 50
    })
    .await;

    // The configured reference prices were stored at start.
    let prices: i64 = sqlx::query_scalar("SELECT count(*) FROM prices WHERE source = 'config'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(prices, 2);

    let metrics = reqwest_free_get(port).await;
    assert!(
        metrics.contains("triage_ledger_events_total{outcome=\"booked\"} 50"),
        "{metrics}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = tokio::time::timeout(LIMIT, exited)
        .await
        .unwrap_or_else(|_| {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("triage-ledger still running {LIMIT:?} after SIGTERM");
        })
        .unwrap()
        .unwrap();
    // Logs go to stdout (the runtime's formatter), errors to stderr.
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "exit {:?}\n{log}", output.status);
    assert!(log.contains("shutdown signal received"), "{log}");
    assert!(log.contains("triage-ledger stopped"), "{log}");
    // It printed its configuration at start, password-free.
    assert!(log.contains("triage-ledger starting"), "{log}");

    nats.cleanup().await;
    db.drop().await;
}

/// GET /metrics over a plain TCP connection (the ledger crate has no HTTP
/// client dependency).
async fn reqwest_free_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}
