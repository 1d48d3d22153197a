//! `triage-deadletters` against the real NATS: letters written by the bus's
//! own dead-letter publisher are listed by code and service, shown, and
//! re-driven once to where they came from without their Triage-Dead-*
//! headers.

use std::process::Output;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::StreamExt;
use triage_bus::{DeadLetter, StreamsConfig};
use triage_protocol::{headers, ErrorCode, Namespace, StreamKind};

fn small_streams() -> StreamsConfig {
    let mut s = StreamsConfig::small();
    for l in [
        &mut s.requests,
        &mut s.tiers,
        &mut s.usage,
        &mut s.dead,
        &mut s.results,
    ] {
        l.max_bytes = 8 << 20;
    }
    s
}

async fn cli(prefix: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_triage-deadletters"));
    cmd.args(args)
        .env(
            "TRIAGE_DEADLETTERS_NATS__URL",
            triage_bus::default_nats_url(),
        )
        .env("TRIAGE_DEADLETTERS_NATS__PREFIX", prefix)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the CLI finishes within 30 s")
        .expect("the CLI starts")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn bury(js: &jetstream::Context, ns: &Namespace, code: ErrorCode, service: &str, body: &str) {
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, "application/json");
    h.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    DeadLetter {
        subject: &ns.requests(),
        payload: body.as_bytes(),
        headers: Some(&h),
        reason: "scripted for the test",
        code,
        service,
        deliveries: 1,
    }
    .publish(js, ns)
    .await
    .unwrap();
}

#[tokio::test]
async fn list_show_and_redrive_once() {
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let ns = Namespace::new(prefix.clone()).unwrap();
    let client = async_nats::connect(triage_bus::default_nats_url())
        .await
        .expect("NATS must be running (scripts/setup.sh starts it)");
    let js = jetstream::new(client.clone());
    triage_bus::provision(&js, &ns, &small_streams())
        .await
        .unwrap();
    bury(
        &js,
        &ns,
        ErrorCode::InvalidRequest,
        "router",
        r#"{"prompt":""}"#,
    )
    .await;
    bury(
        &js,
        &ns,
        ErrorCode::BackendUnavailable,
        "worker-tier1",
        r#"{"prompt":"a"}"#,
    )
    .await;
    bury(
        &js,
        &ns,
        ErrorCode::BackendUnavailable,
        "worker-tier1",
        r#"{"prompt":"b"}"#,
    )
    .await;

    let all = stdout(&cli(&prefix, &["list"]).await);
    assert_eq!(all.lines().count(), 4, "a header and three letters:\n{all}");
    let unavailable = stdout(
        &cli(
            &prefix,
            &["list", "--code", "backend_unavailable", "--json"],
        )
        .await,
    );
    let seqs: Vec<u64> = unavailable
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [2, 3], "{unavailable}");
    let by_router = stdout(&cli(&prefix, &["list", "--service", "router", "--since", "1h"]).await);
    assert!(
        by_router.contains("invalid_request") && by_router.lines().count() == 2,
        "{by_router}"
    );
    let none = stdout(&cli(&prefix, &["list", "--before", "1h"]).await);
    assert_eq!(none.lines().count(), 1, "only the header: {none}");

    let shown = stdout(&cli(&prefix, &["show", "2"]).await);
    assert!(
        shown.contains("Triage-Dead-Code: backend_unavailable"),
        "{shown}"
    );
    assert!(shown.contains("\"prompt\": \"a\""), "{shown}");

    // Re-drive: the request reaches llm.requests as it was first sent.
    let mut requests = triage_bus::connect::subscribe_synced(&client, ns.requests())
        .await
        .unwrap();
    let dry = stdout(
        &cli(
            &prefix,
            &[
                "redrive",
                "--all",
                "--code",
                "backend_unavailable",
                "--dry-run",
            ],
        )
        .await,
    );
    assert!(
        dry.contains("would re-drive 2") && dry.contains("would re-drive 3"),
        "{dry}"
    );
    let done = stdout(
        &cli(
            &prefix,
            &["redrive", "--all", "--code", "backend_unavailable"],
        )
        .await,
    );
    assert!(
        done.contains("re-drove 2") && done.contains("re-drove 3"),
        "{done}"
    );
    for want in [r#"{"prompt":"a"}"#, r#"{"prompt":"b"}"#] {
        let m = tokio::time::timeout(Duration::from_secs(10), requests.next())
            .await
            .expect("the re-driven request within 10 s")
            .unwrap();
        assert_eq!(m.payload.as_ref(), want.as_bytes());
        let h = m.headers.unwrap();
        assert_eq!(
            h.get(headers::CONTENT_TYPE).unwrap().as_str(),
            "application/json"
        );
        assert!(h.get("traceparent").is_some(), "the trace context is kept");
        assert!(
            h.get(headers::DEAD_CODE).is_none(),
            "Triage-Dead-* are stripped"
        );
    }

    // Re-driven letters are gone from llm.dead; the other stays.
    let left = stdout(&cli(&prefix, &["list"]).await);
    assert_eq!(left.lines().count(), 2, "{left}");
    let again = cli(&prefix, &["redrive", "2"]).await;
    assert!(!again.status.success(), "a letter is re-driven once");
    assert!(String::from_utf8_lossy(&again.stderr).contains("no dead letter with sequence 2"));
    let nothing = cli(&prefix, &["redrive"]).await;
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("--all"));

    for kind in StreamKind::ALL {
        let _ = js.delete_stream(ns.stream_name(kind)).await;
    }
}
