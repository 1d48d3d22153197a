//! Learning text over the real NATS and Postgres: judge events that carry
//! their text (the shadow service's `learning.store_text`) leave the
//! conversation and both answers in `outcome_texts`, read back as one
//! training row per judged request; the purge deletes text past its
//! retention and clears old feedback comments, keeping the grades.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use triage_ledger::{retention, training};
use triage_protocol::shadow::{Judged, JudgedRole, JudgedText};
use triage_protocol::{ChatMessage, Tier, UsageEvent, UsageStatus};

const LIMIT: Duration = Duration::from_secs(90);

/// The judge's grade of one answer of request `id`.
fn judge_event(
    id: &str,
    role: JudgedRole,
    tier: Tier,
    score: f64,
    text: Option<&str>,
) -> UsageEvent {
    let t = Utc::now() - chrono::Duration::minutes(5);
    let mut e = event(id, Tier::Large, 300, 40, t);
    let (attempt, graded_attempt) = match role {
        JudgedRole::Answer => (2_000_001, 1),
        JudgedRole::Shadow => (3_000_001, 1_000_001),
    };
    e.attempt = attempt;
    e.status = UsageStatus::Judge;
    e.judged = Some(Judged {
        role,
        tier,
        model: format!("model-{tier}"),
        attempt: graded_attempt,
        score,
        good: score >= 7.0,
        text: text.map(|answer| JudgedText {
            messages: vec![
                ChatMessage::system("be brief"),
                ChatMessage::user(format!("question of {id}")),
            ],
            answer: answer.into(),
        }),
    });
    e
}

#[tokio::test]
async fn judged_text_becomes_training_rows_and_the_purge_removes_it() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let nats = TestNats::create().await;
    let events = vec![
        // Tier 1 answered badly, tier 2's shadow answer was good: tier 2.
        judge_event(
            "req-a",
            JudgedRole::Answer,
            Tier::Small,
            3.0,
            Some("tier 1 says 4"),
        ),
        judge_event(
            "req-a",
            JudgedRole::Shadow,
            Tier::Large,
            9.0,
            Some("tier 2 says 5"),
        ),
        // Tier 2 answered; tier 1's shadow was as good: tier 1 would do.
        judge_event(
            "req-b",
            JudgedRole::Answer,
            Tier::Large,
            8.0,
            Some("tier 2 on b"),
        ),
        judge_event(
            "req-b",
            JudgedRole::Shadow,
            Tier::Small,
            8.0,
            Some("tier 1 on b"),
        ),
        // Grades without text (store_text off): no training row.
        judge_event("req-c", JudgedRole::Answer, Tier::Small, 8.0, None),
        judge_event("req-c", JudgedRole::Shadow, Tier::Large, 8.0, None),
    ];
    nats.publish_many(&events).await;
    let (stop, metrics, handle) = spawn_writer(&db.store, &nats, test_writer_config());
    wait_until(LIMIT, "all 6 events booked", || {
        let m = metrics.clone();
        async move { m.events_with("booked") == 6 }
    })
    .await;
    stop_writer(stop, handle).await;

    let texts: i64 = sqlx::query_scalar("SELECT count(*) FROM outcome_texts")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(texts, 4, "two answers of req-a and of req-b, none of req-c");

    let rows = training::rows_since(db.pool(), None).await.unwrap();
    let mut rows: Vec<_> = rows
        .into_iter()
        .map(|r| (r.request_id.clone(), r))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (a, b) = (&rows[0].1, &rows[1].1);
    assert_eq!((a.small_ok, a.large_ok, a.label_tier()), (false, true, 2));
    assert_eq!(a.small_response.as_deref(), Some("tier 1 says 4"));
    assert_eq!(a.messages[1].content, "question of req-a");
    assert_eq!(a.tenant.as_deref(), Some("acme"));
    assert_eq!((b.small_ok, b.large_ok, b.label_tier()), (true, true, 1));
    assert_eq!(
        b.small_response.as_deref(),
        Some("tier 1 on b"),
        "tier 1's answer is the shadow's when tier 2 answered"
    );
    let json = a.to_json();
    assert_eq!(
        (json["id"].as_str(), json["label_tier"].as_u64()),
        (Some("acme/req-a"), Some(2))
    );

    // Nothing judged after now.
    let later = training::rows_since(db.pool(), Some(Utc::now() + chrono::Duration::hours(1)))
        .await
        .unwrap();
    assert!(later.is_empty());

    // req-a's text and a feedback comment on it are 40 days old; req-b's
    // text is fresh.
    sqlx::query(
        "UPDATE outcome_texts SET recorded_at = now() - interval '40 days' WHERE request_id = 'req-a'",
    )
    .execute(db.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outcomes (tenant_key, tenant, request_id, source, good, comment, recorded_at)
         VALUES ('acme', 'acme', 'req-a', 'feedback', false, 'wrong: it is 5', now() - interval '40 days'),
                ('acme', 'acme', 'req-b', 'feedback', true, 'thanks', now())",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let before = retention::cutoff(Utc::now(), Duration::from_secs(30 * 24 * 3600));
    let purged = retention::purge(db.pool(), before).await.unwrap();
    assert_eq!(
        purged,
        retention::Purged {
            texts: 2,
            comments: 1
        }
    );
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT request_id, judged FROM outcome_texts ORDER BY 1, 2")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        left,
        [
            ("req-b".into(), "answer".into()),
            ("req-b".into(), "shadow".into())
        ]
    );
    let comments: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT request_id, comment FROM outcomes WHERE source = 'feedback' ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        comments,
        [
            ("req-a".into(), None),
            ("req-b".into(), Some("thanks".into()))
        ]
    );
    let grades: i64 = sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE source = 'judge'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(grades, 6, "the grades stay");
    // A second purge finds nothing more: replicas racing are harmless.
    assert_eq!(
        retention::purge(db.pool(), before).await.unwrap(),
        retention::Purged::default()
    );
    nats.cleanup().await;
    db.drop().await;
}
