//! The writer end to end, over the real NATS and Postgres: events published
//! on llm.usage become ledger rows exactly once, at the right price;
//! redeliveries change nothing; malformed events go to llm.dead with the
//! reason.

mod common;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::*;
use rust_decimal::Decimal;
use triage_ledger::Price;
use triage_protocol::{headers, Encoding, StreamKind, Tier, UsageEvent};

const LIMIT: Duration = Duration::from_secs(90);

fn tokens_at(tokens: u32, per_1k: &str) -> Decimal {
    Decimal::from(tokens) * dec(per_1k) / Decimal::from(1000)
}

#[tokio::test]
async fn events_are_booked_once_at_the_price_in_force() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    // Tier 2 gets cheaper from one hour ago.
    let change = Utc::now() - chrono::Duration::hours(1);
    let change = Utc.timestamp_millis_opt(change.timestamp_millis()).unwrap();
    db.store
        .ensure_price(
            &Price {
                id: None,
                tier: Tier::Large,
                model: None,
                input_per_1k: dec("0.001"),
                output_per_1k: dec("0.002"),
                effective_from: change,
            },
            "test",
        )
        .await
        .unwrap();
    let nats = TestNats::create().await;

    // 600 events straddling the change, on both tiers, in both encodings.
    let mut events = Vec::new();
    let mut expected_cost = Decimal::ZERO;
    let mut expected_baseline = Decimal::ZERO;
    for i in 0..600u32 {
        let tier = if i % 3 == 0 { Tier::Large } else { Tier::Small };
        let at = change + chrono::Duration::seconds(i as i64 * 7 - 2100);
        let (p, c) = (50 + i * 3, 7 + i % 101);
        let e = event(&format!("req-{i}"), tier, p, c, at);
        let (t2_in, t2_out) = if at >= change {
            ("0.001", "0.002")
        } else {
            ("0.0012", "0.0012")
        };
        let baseline = tokens_at(p, t2_in) + tokens_at(c, t2_out);
        let cost = match tier {
            Tier::Small => tokens_at(p, "0.00015") + tokens_at(c, "0.00015"),
            Tier::Large => baseline,
        };
        expected_cost += cost;
        expected_baseline += baseline;
        events.push(e);
    }
    for (i, e) in events.iter().enumerate() {
        let enc = if i % 2 == 0 {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        nats.publish_event_as(e, enc, Some(&e.msg_id())).await;
    }
    // The same events again without msg ids, so JetStream cannot drop them:
    // the ledger itself must refuse to book them twice.
    for e in events.iter().step_by(5) {
        nats.publish_event_as(e, Encoding::MsgPack, None).await;
    }

    let (stop, metrics, handle) = spawn_writer(&db.store, &nats, test_writer_config());
    let pool = db.pool().clone();
    wait_until(LIMIT, "600 rows", || async {
        count_rows(&pool).await == 600
    })
    .await;
    // Wait until every message, duplicates included, has been handled.
    wait_until(LIMIT, "all 720 messages handled", || {
        let m = metrics.clone();
        async move { m.events_with("booked") + m.events_with("duplicate") == 720 }
    })
    .await;

    assert_eq!(count_rows(db.pool()).await, 600);
    let (cost, baseline): (Decimal, Decimal) =
        sqlx::query_as("SELECT sum(cost), sum(baseline_cost) FROM ledger_entries")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(cost, expected_cost);
    assert_eq!(baseline, expected_baseline);
    let rollup: Decimal = sqlx::query_scalar("SELECT sum(cost) FROM usage_totals")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(rollup, expected_cost);
    assert_books_balance(db.pool()).await;

    stop_writer(stop, handle).await;
    nats.cleanup().await;
    db.drop().await;
}

#[tokio::test]
async fn a_full_redelivery_books_nothing_new() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let nats = TestNats::create().await;
    let t = Utc::now() - chrono::Duration::minutes(30);
    let events: Vec<UsageEvent> = (0..500)
        .map(|i| {
            event(
                &format!("r{i}"),
                if i % 2 == 0 { Tier::Small } else { Tier::Large },
                100,
                20,
                t,
            )
        })
        .collect();
    nats.publish_many(&events).await;

    let (stop, _, handle) = spawn_writer(&db.store, &nats, test_writer_config());
    let pool = db.pool().clone();
    wait_until(LIMIT, "500 rows", || async {
        count_rows(&pool).await == 500
    })
    .await;
    stop_writer(stop, handle).await;
    let totals_before: Vec<(i16, String, i64, Decimal)> =
        sqlx::query_as("SELECT tier, status, requests, cost FROM usage_totals ORDER BY 1, 2")
            .fetch_all(db.pool())
            .await
            .unwrap();

    // Delete the durable consumer: the next writer starts from the
    // beginning of llm.usage and is handed every event a second time.
    let consumer = nats.ns.consumer(&test_writer_config().consumer);
    nats.js
        .delete_consumer_from_stream(&consumer, nats.ns.stream_name(StreamKind::Usage))
        .await
        .unwrap();
    let (stop, metrics, handle) = spawn_writer(&db.store, &nats, test_writer_config());
    wait_until(LIMIT, "500 redeliveries seen", || {
        let m = metrics.clone();
        async move { m.events_with("duplicate") == 500 }
    })
    .await;
    stop_writer(stop, handle).await;

    assert_eq!(count_rows(db.pool()).await, 500);
    let totals_after: Vec<(i16, String, i64, Decimal)> =
        sqlx::query_as("SELECT tier, status, requests, cost FROM usage_totals ORDER BY 1, 2")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(totals_before, totals_after);
    assert_books_balance(db.pool()).await;
    nats.cleanup().await;
    db.drop().await;
}

#[tokio::test]
async fn malformed_events_are_dead_lettered_with_the_reason() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let nats = TestNats::create().await;
    let t = Utc::now() - chrono::Duration::minutes(1);

    nats.publish_raw(b"\xc1 not msgpack", None, None).await;
    nats.publish_raw(
        br#"{"version":1,"id":"x","attempt":1}"#,
        Some("application/json"),
        None,
    )
    .await;
    let mut future_version = serde_json::to_value(event("v9", Tier::Small, 1, 1, t)).unwrap();
    future_version["version"] = 9.into();
    nats.publish_raw(
        future_version.to_string().as_bytes(),
        Some("application/json"),
        None,
    )
    .await;
    let mut empty_id = event("", Tier::Small, 1, 1, t);
    empty_id.id = String::new();
    nats.publish_event_as(&empty_id, Encoding::MsgPack, None)
        .await;
    let good = event("good", Tier::Small, 10, 10, t);
    nats.publish_event(&good).await;

    let (stop, _, handle) = spawn_writer(&db.store, &nats, test_writer_config());
    wait_until(LIMIT, "4 dead letters", || async {
        nats.stream_messages(StreamKind::Dead).await >= 4
    })
    .await;
    let pool = db.pool().clone();
    wait_until(LIMIT, "the good event booked", || async {
        count_rows(&pool).await == 1
    })
    .await;

    let dead = nats.dead_letters().await;
    assert_eq!(dead.len(), 4);
    let reason = |i: usize| {
        dead[i]
            .headers
            .get(headers::DEAD_REASON)
            .unwrap()
            .as_str()
            .to_string()
    };
    let code = |i: usize| {
        dead[i]
            .headers
            .get(headers::DEAD_CODE)
            .unwrap()
            .as_str()
            .to_string()
    };
    // Undecodable messages are dead-lettered as the batch is decoded,
    // before the invalid-but-decodable one found while pricing.
    assert!(reason(0).contains("malformed"), "{}", reason(0));
    assert_eq!(code(0), "invalid_request");
    assert!(reason(1).contains("missing field `tier`"), "{}", reason(1));
    assert!(
        reason(2).contains("unsupported schema version 9"),
        "{}",
        reason(2)
    );
    assert_eq!(code(2), "unsupported_version");
    assert!(reason(3).contains("`id` is empty"), "{}", reason(3));
    for m in &dead {
        assert_eq!(
            m.headers.get(headers::DEAD_SERVICE).unwrap().as_str(),
            "ledger"
        );
        assert_eq!(
            m.headers.get(headers::DEAD_SUBJECT).unwrap().as_str(),
            nats.ns.usage()
        );
    }
    // The payload is kept verbatim for inspection and re-drive.
    assert_eq!(&dead[0].payload[..], b"\xc1 not msgpack");

    // Everything was acked: nothing is left for the consumer.
    let consumer = nats.ns.consumer(&test_writer_config().consumer);
    wait_until(LIMIT, "consumer drained", || async {
        let stream = nats
            .js
            .get_stream(nats.ns.stream_name(StreamKind::Usage))
            .await
            .unwrap();
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&consumer).await.unwrap();
        let info = c.info().await.unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    stop_writer(stop, handle).await;
    nats.cleanup().await;
    db.drop().await;
}

/// A judge call's usage event (triage-shadow) carries its grade: the
/// writer books the call and records the grade in `outcomes` (source
/// `judge`, one row per judged answer); the same events again, with no
/// message id for JetStream to drop them by, change neither.
#[tokio::test]
async fn judge_grades_are_recorded_once_with_the_call() {
    use triage_protocol::shadow::{Judged, JudgedRole};
    use triage_protocol::UsageStatus;
    let db = TestDb::create().await;
    db.reference_prices().await;
    let nats = TestNats::create().await;
    let t = Utc::now() - chrono::Duration::minutes(5);
    let judge = |attempt: u32, role, tier, score: f64| {
        let mut e = event("req-j", Tier::Large, 300, 40, t);
        e.attempt = attempt;
        e.status = UsageStatus::Judge;
        e.judged = Some(Judged {
            role,
            tier,
            model: format!("model-{tier}"),
            attempt: if role == JudgedRole::Answer {
                1
            } else {
                1_000_001
            },
            score,
            good: score >= 7.0,
            text: None,
        });
        e
    };
    let events = vec![
        event("req-j", Tier::Small, 50, 20, t),
        judge(2_000_001, JudgedRole::Answer, Tier::Small, 4.0),
        judge(3_000_001, JudgedRole::Shadow, Tier::Large, 9.0),
    ];
    nats.publish_many(&events).await;
    for e in &events[1..] {
        nats.publish_event_as(e, Encoding::Json, None).await;
    }
    let (stop, metrics, handle) = spawn_writer(&db.store, &nats, test_writer_config());
    wait_until(LIMIT, "all 5 messages handled", || {
        let m = metrics.clone();
        async move { m.events_with("booked") + m.events_with("duplicate") == 5 }
    })
    .await;
    stop_writer(stop, handle).await;

    assert_eq!(count_rows(db.pool()).await, 3);
    let grades: Vec<(String, i16, i32, bool, f64)> = sqlx::query_as(
        "SELECT judged, tier, attempt, good, score FROM outcomes
         WHERE tenant = 'acme' AND request_id = 'req-j' AND source = 'judge' ORDER BY judged",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        grades,
        vec![
            ("answer".into(), 1, 1, false, 4.0),
            ("shadow".into(), 2, 1_000_001, true, 9.0)
        ]
    );
    assert_books_balance(db.pool()).await;
    nats.cleanup().await;
    db.drop().await;
}
