//! The exporter over HTTP against the real Postgres and NATS: booked events
//! and queued messages show up as the right metric values.

#[path = "../../ledger/tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use triage_cost_exporter::{ExporterConfig, Refresher};
use triage_protocol::{StreamKind, Tier, UsageEvent, UsageStatus};

/// The value of the sample whose line starts with `series` (name and
/// labels exactly as exported).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn events(now: chrono::DateTime<chrono::Utc>) -> Vec<UsageEvent> {
    let t = now - chrono::Duration::seconds(30);
    let mut out = Vec::new();
    for i in 0..3 {
        // 1000 prompt + 1000 completion on tier 1: 0.0003 each, baseline 0.0024.
        out.push(event(&format!("a{i}"), Tier::Small, 1000, 1000, t));
    }
    let mut failed = event("a-err", Tier::Small, 1000, 0, t); // 0.00015, baseline 0.0012
    failed.status = UsageStatus::Error;
    out.push(failed);
    let mut big = event("b0", Tier::Large, 1000, 1000, t); // 0.0024
    big.tenant = Some("beta".into());
    out.push(big);
    out
}

#[tokio::test]
async fn metrics_show_booked_spend_shares_and_queue_depth() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let now = chrono::Utc::now();
    let evs = events(now);
    let refs: Vec<&UsageEvent> = evs.iter().collect();
    assert_eq!(
        db.store
            .book(&refs, triage_protocol::now_ms())
            .await
            .unwrap()
            .inserted,
        5
    );

    // Three requests waiting on llm.tier1 (a work queue).
    let nats = TestNats::create().await;
    let mut limits = triage_bus::StreamsConfig::default();
    limits.tiers.max_bytes = 16 << 20;
    triage_bus::streams::ensure_stream(
        &nats.js,
        triage_bus::streams::desired_config(&nats.ns, StreamKind::Tier1, &limits),
    )
    .await
    .unwrap();
    for i in 0..3 {
        let payload = format!("req {i}").into();
        let subject = nats.ns.tier(Tier::Small);
        triage_bus::publish::once(&nats.js, &subject, Default::default(), payload)
            .await
            .unwrap();
    }

    let config = ExporterConfig {
        refresh_interval: Duration::from_millis(200),
        ..ExporterConfig::default()
    };
    let (registry, readings, metrics) = triage_cost_exporter::registry();
    let refresher = Refresher::new(
        db.pool().clone(),
        Some((nats.js.clone(), nats.ns.clone())),
        config,
        readings,
        metrics,
    );
    let shutdown = CancellationToken::new();
    let addr = triage_runtime::metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(registry),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let refresh = tokio::spawn(refresher.run(shutdown.clone()));

    let url = format!("http://{addr}/metrics");
    // Readings are taken every 200 ms; wait for the first with both sources.
    let mut text = String::new();
    for _ in 0..150 {
        text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if text.contains("triage_cost_usd_total") && text.contains("triage_queue_depth") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let v =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(
        close(
            v(r#"triage_cost_usd_total{tier="1",tenant="acme"}"#),
            0.00105
        ),
        "{text}"
    );
    assert!(close(
        v(r#"triage_cost_usd_total{tier="2",tenant="beta"}"#),
        0.0024
    ));
    assert!(close(
        v(r#"triage_baseline_cost_usd_total{tier="1",tenant="acme"}"#),
        0.0084
    ));
    assert!(close(
        v(r#"triage_savings_usd_total{tenant="acme"}"#),
        0.00735
    ));
    assert!(close(v(r#"triage_savings_usd_total{tenant="beta"}"#), 0.0));
    assert_eq!(
        v(r#"triage_tokens_total{tier="1",tenant="acme",kind="prompt"}"#),
        4000.0
    );
    assert_eq!(v(r#"triage_requests_total{tier="1",status="ok"}"#), 3.0);
    assert_eq!(v(r#"triage_requests_total{tier="1",status="error"}"#), 1.0);
    assert_eq!(v(r#"triage_requests_total{tier="2",status="ok"}"#), 1.0);
    assert_eq!(v(r#"triage_tier2_share{window="5m"}"#), 0.2);
    assert_eq!(v(r#"triage_tier2_share{window="24h"}"#), 0.2);
    // (0.0084 + 0.0024 - 0.00105 - 0.0024) / 0.0108
    assert!(close(
        v(r#"triage_savings_ratio{window="1h"}"#),
        0.00735 / 0.0108
    ));
    let today: f64 =
        v(r#"triage_spend_today_usd{tier="1"}"#) + v(r#"triage_spend_today_usd{tier="2"}"#);
    if now.date_naive() == (now - chrono::Duration::seconds(30)).date_naive() {
        assert!(close(today, 0.00345), "{today}");
    }
    let queue = format!(
        r#"triage_queue_depth{{queue="{}",stream="{}"}}"#,
        nats.ns.tier(Tier::Small),
        nats.ns.stream_name(StreamKind::Tier1)
    );
    assert_eq!(v(&queue), 3.0, "{text}");
    assert_eq!(v(r#"triage_cost_exporter_up{source="ledger"}"#), 1.0);
    assert_eq!(v(r#"triage_cost_exporter_up{source="nats"}"#), 1.0);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), refresh)
        .await
        .expect("the refresher stopped within 30 s of its shutdown")
        .unwrap();
    nats.cleanup().await;
    db.drop().await;
}

#[tokio::test]
async fn the_once_command_prints_the_metrics() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let now = chrono::Utc::now();
    let evs = events(now);
    let refs: Vec<&UsageEvent> = evs.iter().collect();
    db.store
        .book(&refs, triage_protocol::now_ms())
        .await
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_triage-cost-exporter"))
        .arg("once")
        .env("TRIAGE_COST_EXPORTER_DATABASE__URL", &db.url)
        .env("TRIAGE_COST_EXPORTER_QUEUES", "false")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        sample(&text, r#"triage_requests_total{tier="1",status="ok"}"#),
        Some(3.0),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    db.drop().await;
}

#[tokio::test]
async fn the_service_serves_metrics_and_stops_on_sigterm() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_triage-cost-exporter"))
        .arg("run")
        .env("TRIAGE_COST_EXPORTER_DATABASE__URL", &db.url)
        .env("TRIAGE_COST_EXPORTER_QUEUES", "false")
        .env("TRIAGE_COST_EXPORTER_REFRESH_INTERVAL", "200ms")
        .env(
            "TRIAGE_COST_EXPORTER_METRICS_ADDR",
            format!("127.0.0.1:{port}"),
        )
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut text = String::new();
    for _ in 0..150 {
        if let Ok(r) = reqwest::get(&url).await {
            text = r.text().await.unwrap_or_default();
            if sample(&text, r#"triage_cost_exporter_up{source="ledger"}"#) == Some(1.0) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        sample(&text, r#"triage_cost_exporter_up{source="ledger"}"#),
        Some(1.0),
        "{text}"
    );
    // An empty ledger: spend today is zero, no anomaly ratio without history.
    assert_eq!(
        sample(&text, r#"triage_spend_today_usd{tier="2"}"#),
        Some(0.0),
        "{text}"
    );
    assert!(!text.contains("triage_spend_anomaly_ratio "), "{text}");

    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = tokio::time::timeout(Duration::from_secs(30), exited)
        .await
        .unwrap_or_else(|_| {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("triage-cost-exporter still running 30 s after SIGTERM");
        })
        .unwrap()
        .unwrap();
    // Logs go to stdout (the runtime's formatter), errors to stderr.
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{log}");
    assert!(log.contains("triage-cost-exporter stopped"), "{log}");
    db.drop().await;
}
