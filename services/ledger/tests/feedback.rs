//! `llm.feedback` over the real NATS and Postgres: ratings of booked
//! requests are stored in `outcomes`; unknown and foreign ids, bad fields
//! and disagreeing tenants are refused with the field or reason named.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use triage_ledger::feedback::{self, FeedbackConfig, FeedbackMetrics};
use triage_protocol::Tier;

const LIMIT: Duration = Duration::from_secs(20);

async fn rate(nats: &TestNats, subject: String, body: Value) -> Value {
    let reply = tokio::time::timeout(
        LIMIT,
        nats.client
            .request(subject, serde_json::to_vec(&body).unwrap().into()),
    )
    .await
    .expect("a feedback reply within the limit")
    .expect("a reply, not a NATS error");
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratings_of_own_requests_are_stored_and_the_rest_refused() {
    let db = TestDb::create().await;
    let nats = TestNats::create().await;
    let t = Utc::now() - chrono::Duration::minutes(1);
    // acme's r1 failed on tier 1 (attempt 1) and was answered on tier 2.
    let mut first = event("r1", Tier::Small, 10, 5, t);
    first.status = triage_protocol::UsageStatus::Error;
    let mut second = event("r1", Tier::Large, 10, 20, t);
    second.attempt = 2;
    let mut untenanted = event("u1", Tier::Small, 10, 5, t);
    untenanted.tenant = None;
    db.reference_prices().await;
    let booked = db
        .store
        .book(
            &[&first, &second, &untenanted],
            Utc::now().timestamp_millis() as u64,
        )
        .await
        .unwrap();
    assert_eq!(booked.inserted, 3, "{booked:?}");

    let metrics = FeedbackMetrics::default();
    let shutdown = CancellationToken::new();
    let config = FeedbackConfig {
        booking_wait: Duration::from_millis(1500),
        store_comments: true,
        ..FeedbackConfig::default()
    };
    let task = feedback::serve(
        db.store.clone(),
        nats.client.clone(),
        nats.ns.clone(),
        config,
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    // The subscriptions are registered before the first request.
    nats.client.flush().await.unwrap();
    let ns = &nats.ns;
    let acme = ns.tenant_feedback("acme").unwrap();

    let r = rate(
        &nats,
        acme.clone(),
        json!({"id": "r1", "rating": "good", "comment": "spot on"}),
    )
    .await;
    assert_eq!(r["type"], "feedback", "{r}");
    assert_eq!(
        (
            r["tenant"].as_str(),
            r["good"].as_bool(),
            r["replaced"].as_bool()
        ),
        (Some("acme"), Some(true), Some(false)),
        "{r}"
    );
    let row: (bool, Option<f64>, i16, String, i32, Option<String>) = sqlx::query_as(
        "SELECT good, score, tier, model, attempt, comment FROM outcomes
         WHERE tenant_key = 'acme' AND request_id = 'r1' AND source = 'feedback'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (true, None, 2, "llama-70b".into(), 2, Some("spot on".into())),
        "the answering attempt"
    );

    // A second rating replaces the first.
    let r = rate(&nats, acme.clone(), json!({"id": "r1", "rating": 3})).await;
    assert_eq!(
        (r["good"].as_bool(), r["replaced"].as_bool()),
        (Some(false), Some(true)),
        "{r}"
    );
    let (n, score): (i64, Option<f64>) =
        sqlx::query_as("SELECT count(*), max(score) FROM outcomes")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((n, score), (1, Some(3.0)));

    // Another tenant cannot rate acme's request, nor can anyone an unknown id:
    // the same answer for both.
    for (subject, id) in [
        (ns.tenant_feedback("bob").unwrap(), "r1"),
        (acme.clone(), "nope"),
    ] {
        let r = rate(&nats, subject, json!({"id": id, "rating": "bad"})).await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("unknown_request")),
            "{r}"
        );
        assert!(
            r["message"].as_str().unwrap().contains("own requests"),
            "{r}"
        );
    }
    // Bad fields and a disagreeing tenant are named.
    let r = rate(&nats, acme.clone(), json!({"id": "r1", "rating": 11})).await;
    assert_eq!(r["code"], "invalid_request", "{r}");
    assert!(r["message"].as_str().unwrap().contains("`rating`"), "{r}");
    let r = rate(
        &nats,
        acme.clone(),
        json!({"id": "r1", "rating": "good", "tenant": "bob"}),
    )
    .await;
    assert!(r["message"].as_str().unwrap().contains("tenant"), "{r}");

    // Plain llm.feedback (the gateway's) takes the body's tenant, or none.
    let r = rate(&nats, ns.feedback(), json!({"id": "u1", "rating": 9})).await;
    assert_eq!(
        (r["good"].as_bool(), r.get("tenant")),
        (Some(true), None),
        "{r}"
    );

    // A rating that arrives before its request is booked waits for it.
    let late = event("r2", Tier::Small, 10, 5, t);
    let store = db.store.clone();
    let booker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let booked = store
            .book(&[&late], Utc::now().timestamp_millis() as u64)
            .await
            .unwrap();
        assert_eq!(booked.inserted, 1);
    });
    let r = rate(&nats, acme, json!({"id": "r2", "rating": "good"})).await;
    assert_eq!(r["type"], "feedback", "{r}");
    booker.await.unwrap();

    assert_eq!(metrics.get("good"), 3);
    assert_eq!(metrics.get("bad"), 1);
    assert_eq!(metrics.get("unknown"), 2);
    assert_eq!(metrics.get("invalid"), 2);
    shutdown.cancel();
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("stops on shutdown")
        .unwrap();
    nats.cleanup().await;
    db.drop().await;
}
