//! Liveness and readiness over HTTP, asked with curl as an orchestrator's
//! probe would: live whatever the dependencies do, ready only when every
//! check passes, and the failing check named.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use triage_runtime::Readiness;

/// `curl -s -w '\n%{http_code}' URL`: the body and the status.
async fn curl(url: &str) -> (String, u16) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url])
            .output(),
    )
    .await
    .expect("curl within 20 s")
    .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (body.to_string(), status.parse().unwrap())
}

#[tokio::test]
async fn ready_only_when_every_dependency_answers() {
    let postgres_up = Arc::new(AtomicBool::new(false));
    let up = postgres_up.clone();
    let readiness =
        Readiness::new()
            .check("nats", || async { Ok(()) })
            .check("postgres", move || {
                let up = up.load(Ordering::Relaxed);
                async move {
                    up.then_some(())
                        .ok_or_else(|| "connection refused".to_string())
                }
            });
    let stop = CancellationToken::new();
    let addr = triage_runtime::metrics::serve_with_readiness(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Registry::default()),
        readiness,
        stop.clone(),
    )
    .await
    .unwrap();
    let url = |path: &str| format!("http://{addr}{path}");

    assert_eq!(curl(&url("/health/live")).await, ("ok".into(), 200));
    assert_eq!(curl(&url("/health")).await, ("ok".into(), 200));
    let (body, status) = curl(&url("/health/ready")).await;
    assert_eq!(status, 503, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false);
    assert_eq!(report["checks"]["postgres"], "connection refused");
    assert_eq!(report["checks"]["nats"], "ok");

    postgres_up.store(true, Ordering::Relaxed);
    let (body, status) = curl(&url("/health/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    stop.cancel();
}
