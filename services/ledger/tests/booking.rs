//! Booking against the real Postgres: exact costs across a price change,
//! idempotency, rollups that balance, refused rows isolated, and the
//! append-only price history.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use rust_decimal::Decimal;
use triage_ledger::{Price, StoreError};
use triage_protocol::{ErrorCode, Tier, UsageEvent};

fn refs(events: &[UsageEvent]) -> Vec<&UsageEvent> {
    events.iter().collect()
}

#[tokio::test]
async fn costs_are_exact_across_a_price_change() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    // Tier 1 doubles its input price and quadruples output from 1 March.
    let change = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
    let (new_id, inserted) = db
        .store
        .ensure_price(
            &Price {
                id: None,
                tier: Tier::Small,
                model: None,
                input_per_1k: dec("0.0003"),
                output_per_1k: dec("0.0006"),
                effective_from: change,
            },
            "test",
        )
        .await
        .unwrap();
    assert!(inserted);

    let before = change - Duration::milliseconds(1);
    let events = vec![
        event("before", Tier::Small, 1234, 567, before),
        event("at", Tier::Small, 1234, 567, change),
        event("large", Tier::Large, 1234, 567, change + Duration::hours(1)),
    ];
    let now = (change + Duration::days(1)).timestamp_millis() as u64;
    let booked = db.store.book(&refs(&events), now).await.unwrap();
    assert_eq!((booked.inserted, booked.duplicates), (3, 0));
    assert!(booked.rejected.is_empty());

    let rows: Vec<(String, Decimal, Decimal, Decimal, Decimal, i64)> = sqlx::query_as(
        "SELECT request_id, input_cost, output_cost, cost, baseline_cost, price_id FROM ledger_entries ORDER BY finished_at",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    // Hand-computed: 1234 × 0.00015 / 1000 = 0.0001851; 567 × 0.00015 / 1000 = 0.00008505.
    assert_eq!(rows[0].0, "before");
    assert_eq!(
        (rows[0].1, rows[0].2, rows[0].3),
        (dec("0.0001851"), dec("0.00008505"), dec("0.00027015"))
    );
    // Baseline at tier 2: 1801 × 0.0012 / 1000 = 0.0021612.
    assert_eq!(rows[0].4, dec("0.0021612"));
    // From the change: 1234 × 0.0003 / 1000 = 0.0003702; 567 × 0.0006 / 1000 = 0.0003402.
    assert_eq!(rows[1].0, "at");
    assert_eq!(
        (rows[1].1, rows[1].2, rows[1].3),
        (dec("0.0003702"), dec("0.0003402"), dec("0.0007104"))
    );
    assert_eq!(rows[1].5, new_id);
    assert_eq!(rows[1].4, dec("0.0021612"));
    // Tier 2 is untouched by the tier-1 change and is its own baseline.
    assert_eq!((rows[2].3, rows[2].4), (dec("0.0021612"), dec("0.0021612")));

    let total: Decimal = sqlx::query_scalar("SELECT sum(cost) FROM ledger_daily")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(
        total,
        dec("0.00027015") + dec("0.0007104") + dec("0.0021612")
    );
    assert_books_balance(db.pool()).await;
    db.drop().await;
}

#[tokio::test]
async fn booking_twice_changes_nothing() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let t0 = Utc::now() - Duration::hours(3);
    let mut events: Vec<UsageEvent> = (0..200)
        .map(|i| {
            let tier = if i % 4 == 0 { Tier::Large } else { Tier::Small };
            let mut e = event(
                &format!("r{i}"),
                tier,
                100 + i,
                10 + i,
                t0 + Duration::seconds(i as i64 * 37),
            );
            e.tenant = Some(format!("tenant-{}", i % 3));
            e
        })
        .collect();
    // A second attempt of one request is a different booking.
    let mut retry = events[5].clone();
    retry.attempt = 2;
    events.push(retry);
    let now = triage_protocol::now_ms();

    let first = db.store.book(&refs(&events), now).await.unwrap();
    assert_eq!((first.inserted, first.duplicates), (201, 0));
    let cost_after_first: Decimal = sqlx::query_scalar("SELECT sum(cost) FROM usage_totals")
        .fetch_one(db.pool())
        .await
        .unwrap();

    // The whole batch redelivered, plus duplicates inside one batch.
    let mut again = events.clone();
    again.extend(events[..50].iter().cloned());
    let second = db.store.book(&refs(&again), now).await.unwrap();
    assert_eq!((second.inserted, second.duplicates), (0, 251));

    assert_eq!(count_rows(db.pool()).await, 201);
    let cost_after_second: Decimal = sqlx::query_scalar("SELECT sum(cost) FROM usage_totals")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(cost_after_first, cost_after_second);
    assert_books_balance(db.pool()).await;

    // Rebuilding the rollups from the rows gives the same books.
    let before: Vec<(i16, String, Decimal)> =
        sqlx::query_as("SELECT tier, tenant, cost FROM usage_totals ORDER BY 1, 2")
            .fetch_all(db.pool())
            .await
            .unwrap();
    sqlx::query("SELECT ledger_rebuild_rollups()")
        .execute(db.pool())
        .await
        .unwrap();
    let after: Vec<(i16, String, Decimal)> =
        sqlx::query_as("SELECT tier, tenant, cost FROM usage_totals ORDER BY 1, 2")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(before, after);
    db.drop().await;
}

#[tokio::test]
async fn unbookable_events_are_rejected_and_the_rest_booked() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    // A rule only Postgres knows about: the writer must isolate the row it
    // refuses instead of failing the whole batch forever.
    sqlx::query("ALTER TABLE ledger_entries ADD CONSTRAINT test_no_forbidden_model CHECK (model <> 'forbidden')")
        .execute(db.pool())
        .await
        .unwrap();
    let t = Utc::now() - Duration::minutes(5);
    let mut events: Vec<UsageEvent> = (0..9)
        .map(|i| event(&format!("ok{i}"), Tier::Small, 10, 10, t))
        .collect();
    events[6].model = "forbidden".into();
    events[2].id = String::new();
    let booked = db
        .store
        .book_isolating(&refs(&events), triage_protocol::now_ms())
        .await
        .unwrap();
    assert_eq!(booked.inserted, 7);
    let rejected: Vec<usize> = booked.rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(rejected, vec![2, 6]);
    assert_eq!(booked.rejected[0].1.code, ErrorCode::InvalidRequest);
    assert!(booked.rejected[0].1.reason.contains("`id` is empty"));
    assert!(
        booked.rejected[1]
            .1
            .reason
            .contains("test_no_forbidden_model"),
        "{}",
        booked.rejected[1].1.reason
    );
    assert_books_balance(db.pool()).await;
    db.drop().await;
}

#[tokio::test]
async fn an_event_without_a_price_is_rejected_not_guessed() {
    let db = TestDb::create().await;
    // Only tier 1 is priced: no baseline, and nothing for tier 2.
    db.store
        .ensure_price(&reference_prices()[0], "test")
        .await
        .unwrap();
    let t = Utc::now() - Duration::minutes(1);
    let events = vec![event("a", Tier::Large, 1, 1, t)];
    let booked = db
        .store
        .book(&refs(&events), triage_protocol::now_ms())
        .await
        .unwrap();
    assert_eq!(booked.inserted, 0);
    assert_eq!(booked.rejected[0].1.code, ErrorCode::Internal);
    assert!(booked.rejected[0].1.reason.contains("no price for tier 2"));
    db.drop().await;
}

#[tokio::test]
async fn configured_prices_are_idempotent_and_history_is_append_only() {
    let db = TestDb::create().await;
    let p = reference_prices()[0].clone();
    let (id, inserted) = db.store.ensure_price(&p, "config").await.unwrap();
    assert!(inserted);
    assert_eq!(
        db.store.ensure_price(&p, "config").await.unwrap(),
        (id, false)
    );

    let mut changed = p.clone();
    changed.input_per_1k = dec("0.0002");
    let err = db.store.ensure_price(&changed, "config").await.unwrap_err();
    assert!(matches!(err, StoreError::PriceConflict { .. }), "{err}");
    assert!(err.to_string().contains("later effective_from"), "{err}");

    let update = sqlx::query("UPDATE prices SET input_per_1k = 1")
        .execute(db.pool())
        .await
        .unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = sqlx::query("DELETE FROM prices")
        .execute(db.pool())
        .await
        .unwrap_err();
    assert!(delete.to_string().contains("cannot be deleted"), "{delete}");
    // A price scheduled for the future can still be withdrawn.
    let mut future = p.clone();
    future.effective_from = Utc::now() + Duration::days(30);
    let (fid, _) = db.store.ensure_price(&future, "manual").await.unwrap();
    sqlx::query("DELETE FROM prices WHERE id = $1")
        .bind(fid)
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(db.store.prices().await.unwrap().prices().len(), 1);
    db.drop().await;
}

#[tokio::test]
async fn the_same_id_in_two_tenants_is_two_requests() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let at = Utc::now() - Duration::minutes(5);
    let tenant = |t: Option<&str>| {
        let mut e = event("shared-id", Tier::Small, 100, 10, at);
        e.tenant = t.map(String::from);
        e
    };
    let events = vec![tenant(Some("acme")), tenant(Some("globex")), tenant(None)];
    let now = triage_protocol::now_ms();
    let booked = db.store.book(&refs(&events), now).await.unwrap();
    assert_eq!(
        (booked.inserted, booked.duplicates),
        (3, 0),
        "ids are scoped by tenant"
    );
    let again = db.store.book(&refs(&events), now).await.unwrap();
    assert_eq!(
        (again.inserted, again.duplicates),
        (0, 3),
        "still booked once each"
    );
    assert_eq!(count_rows(db.pool()).await, 3);
    assert_books_balance(db.pool()).await;
    db.drop().await;
}

#[tokio::test]
async fn an_interrupted_attempt_is_booked_once_and_counts_as_spend() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let t0 = Utc::now() - Duration::hours(1);
    // Attempt 1 died mid-stream (booked from its progress record by the
    // next delivery); attempt 17 answered.
    let mut killed = event("crashy", Tier::Small, 100, 40, t0);
    killed.status = triage_protocol::UsageStatus::Interrupted;
    killed.usage.estimated = true;
    killed.ttft_ms = None;
    let mut answer = event("crashy", Tier::Small, 100, 64, t0 + Duration::seconds(3));
    answer.attempt = 17;
    let now = triage_protocol::now_ms();
    let booked = db.store.book(&[&killed, &answer], now).await.unwrap();
    assert_eq!((booked.inserted, booked.duplicates), (2, 0));
    // Booked again by a later delivery (a crash before the record was
    // deleted): nothing changes.
    let again = db.store.book(&[&killed], now).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 1));

    let rows: Vec<(i32, String, bool, Decimal, Decimal)> = sqlx::query_as(
        "SELECT attempt, status, tokens_estimated, cost, baseline_cost FROM ledger_entries ORDER BY attempt",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].0, rows[0].1.as_str(), rows[0].2),
        (1, "interrupted", true)
    );
    assert!(rows[0].3 > Decimal::ZERO, "interrupted tokens are spend");
    assert!(rows[0].4 >= rows[0].3, "and in the baseline too");
    let spent: Decimal = sqlx::query_scalar("SELECT sum(cost) FROM usage_totals")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(spent, rows[0].3 + rows[1].3);
    assert_books_balance(db.pool()).await;
    db.drop().await;
}
