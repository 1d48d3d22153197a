//! Postgres stopped and restarted in the middle of a stream of usage
//! events: nothing is lost, nothing is booked twice.
//!
//! Uses a private Postgres (initdb + pg_ctl in a temp dir, its own port) so
//! stopping it cannot disturb anyone else's tests on the shared server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::*;
use triage_protocol::{StreamKind, Tier, UsageEvent};

const LIMIT: Duration = Duration::from_secs(120);
const TOTAL: usize = 10_000;

#[tokio::test]
async fn postgres_outage_mid_stream_loses_and_doubles_nothing() {
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    let db = TestDb::create_on(&pg.url()).await;
    db.reference_prices().await;
    let nats = Arc::new(TestNats::create().await);

    let t0 = Utc::now() - chrono::Duration::hours(2);
    let events: Arc<Vec<UsageEvent>> = Arc::new(
        (0..TOTAL)
            .map(|i| {
                let tier = if i % 5 == 0 { Tier::Large } else { Tier::Small };
                let mut e = event(
                    &format!("o{i}"),
                    tier,
                    100 + (i % 50) as u32,
                    10 + (i % 7) as u32,
                    t0 + chrono::Duration::milliseconds(i as i64 * 500),
                );
                e.tenant = Some(format!("tenant-{}", i % 4));
                e
            })
            .collect(),
    );

    // The writer's own lazy pool, as in production, with a short acquire
    // timeout so each failed attempt is quick.
    let writer_store =
        triage_ledger::Store::connect_lazy(&db.url, 4, Duration::from_millis(500)).unwrap();
    let (stop, metrics, handle) = spawn_writer(&writer_store, &nats, test_writer_config());

    // The publisher sends the first half at a steady pace, waits until
    // Postgres is down, then sends the second half into the outage.
    let (db_down_tx, db_down_rx) = tokio::sync::oneshot::channel::<()>();
    let publisher = {
        let nats = nats.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let half = TOTAL / 2;
            for chunk in events[..half].chunks(250) {
                nats.publish_many(chunk).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            db_down_rx.await.unwrap();
            nats.publish_many(&events[half..]).await;
        })
    };

    let pool = db.pool().clone();
    wait_until(LIMIT, "the writer to be booking", || async {
        count_rows(&pool).await >= 1000
    })
    .await;
    let pg = Arc::new(pg);
    {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.ctl_stop())
            .await
            .unwrap();
    }
    db_down_tx.send(()).unwrap();
    publisher.await.unwrap();
    assert_eq!(
        nats.stream_messages(StreamKind::Usage).await,
        TOTAL as u64,
        "all events are in JetStream"
    );
    // The writer has noticed and is backing off, holding the events.
    wait_until(LIMIT, "the writer to hit the outage", || {
        let m = metrics.clone();
        async move { m.db_errors.get() >= 2 && m.retrying.get() == 1 }
    })
    .await;

    {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.ctl_start())
            .await
            .unwrap();
    }
    let pool = db.pool().clone();
    wait_until(LIMIT, "every event booked after the restart", || async {
        count_rows(&pool).await == TOTAL as i64
    })
    .await;
    wait_until(LIMIT, "the writer to recover", || {
        let m = metrics.clone();
        async move { m.retrying.get() == 0 }
    })
    .await;

    assert_eq!(count_rows(db.pool()).await, TOTAL as i64);
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT request_id) FROM ledger_entries")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(distinct, TOTAL as i64);
    assert_books_balance(db.pool()).await;
    // The rollups count every event exactly once.
    let booked: i64 = sqlx::query_scalar("SELECT sum(requests)::bigint FROM usage_totals")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(booked, TOTAL as i64);

    stop_writer(stop, handle).await;
    if let Ok(nats) = Arc::try_unwrap(nats) {
        nats.cleanup().await;
    }
    db.drop().await;
    drop(pg);
}
