//! The exporter's figures read from the rollups at a fixed "now", against
//! hand-computed values: windows, tier-2 share, savings ratio, today's
//! spend against the same part of the trailing days, tenant folding.

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::*;
use triage_ledger::snapshot::{LedgerSnapshot, SnapshotOptions, OTHER_TENANTS};
use triage_protocol::{Tier, UsageEvent};

fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, d, h, m, 0).unwrap()
}

fn ev(
    id: &str,
    tier: Tier,
    prompt: u32,
    completion: u32,
    when: DateTime<Utc>,
    tenant: Option<&str>,
) -> UsageEvent {
    let mut e = event(id, tier, prompt, completion, when);
    e.tenant = tenant.map(str::to_string);
    e
}

#[tokio::test]
async fn snapshot_figures_match_hand_computed_ones() {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let now = at(15, 12, 0);
    let events = vec![
        // Today. Tier 1 at 1000 prompt tokens: 0.00015 (baseline 0.0012).
        ev("t1a", Tier::Small, 1000, 0, at(15, 11, 58), Some("acme")),
        ev("t1b", Tier::Small, 1000, 0, at(15, 11, 58), Some("acme")),
        ev("t1c", Tier::Small, 1000, 0, at(15, 11, 58), Some("acme")),
        ev("t2a", Tier::Large, 1000, 0, at(15, 11, 57), Some("acme")), // 0.0012
        ev("t2b", Tier::Large, 500, 500, at(15, 11, 40), Some("beta")), // 0.0012
        ev("t2c", Tier::Large, 500, 500, at(15, 11, 40), Some("beta")), // 0.0012
        ev("t1d", Tier::Small, 2000, 0, at(15, 6, 0), None),           // 0.0003
        // Trailing days, up to 12:00 of their day.
        ev("y1", Tier::Large, 1000, 0, at(14, 11, 0), Some("gamma")), // 0.0012
        ev("y2", Tier::Large, 1000, 0, at(14, 13, 0), Some("gamma")), // after 12:00: not compared
        ev("d3", Tier::Large, 2000, 0, at(12, 10, 0), Some("gamma")), // 0.0024
        ev("old", Tier::Large, 10000, 0, at(7, 10, 0), Some("gamma")), // 8 days ago: outside
    ];
    let refs: Vec<&UsageEvent> = events.iter().collect();
    assert_eq!(
        db.store
            .book(&refs, triage_protocol::now_ms())
            .await
            .unwrap()
            .inserted,
        11
    );

    let options = SnapshotOptions {
        max_tenants: 2,
        ..SnapshotOptions::default()
    };
    let s = LedgerSnapshot::load(db.pool(), now, &options)
        .await
        .unwrap();
    let window = |label: &str| s.windows.iter().find(|w| w.label == label).unwrap().clone();

    // Last 5 minutes (buckets after 11:55): 3 on tier 1, 1 on tier 2.
    let w5 = window("5m");
    assert_eq!((w5.tiers[0].requests, w5.tiers[1].requests), (3, 1));
    assert_eq!(w5.tier2_share(), Some(0.25));
    // Savings: baseline 4 × 0.0012 = 0.0048, cost 0.00045 + 0.0012 = 0.00165.
    assert_eq!(w5.savings_ratio(), Some(0.65625));
    assert_eq!(w5.length, Duration::from_secs(300));
    // Last 15 minutes still excludes 11:40; last hour includes it.
    assert_eq!(window("15m").tier2_share(), Some(0.25));
    assert_eq!(window("1h").tier2_share(), Some(0.5));
    // Last 24 h: today's 7 plus yesterday 13:00; yesterday 11:00 is older.
    let w24 = window("24h");
    assert_eq!((w24.tiers[0].requests, w24.tiers[1].requests), (4, 4));
    assert_eq!(w24.mean_ttft_ms(1), Some(40.0));

    // Today: tier 1 3 × 0.00015 + 0.0003, tier 2 3 × 0.0012.
    assert_eq!(s.spend.today, [dec("0.00075"), dec("0.0036")]);
    // Trailing: 06-14 up to 12:00 = 0.0012, 06-12 = 0.0024; 06-07 is out.
    let trailing: Vec<(String, rust_decimal::Decimal)> = s
        .spend
        .trailing
        .iter()
        .map(|(d, v)| (d.to_string(), *v))
        .collect();
    assert_eq!(
        trailing,
        vec![
            ("2025-06-12".to_string(), dec("0.0024")),
            ("2025-06-14".to_string(), dec("0.0012"))
        ]
    );
    assert_eq!(s.spend.trailing_mean(), Some(dec("0.0018")));
    let ratio = s.spend.anomaly_ratio().unwrap();
    assert!((ratio - 0.00435 / 0.0018).abs() < 1e-12, "{ratio}");

    // Tenants by spend: gamma 0.0168, beta 0.0024, acme 0.00165. The top
    // two keep their labels, acme is folded; "no tenant" is always kept.
    let mut tenants: Vec<&str> = s.totals.iter().map(|r| r.tenant.as_str()).collect();
    tenants.sort();
    tenants.dedup();
    assert_eq!(tenants, vec!["", OTHER_TENANTS, "beta", "gamma"]);
    let total: rust_decimal::Decimal = s.totals.iter().map(|r| r.cost).sum();
    let raw: rust_decimal::Decimal = sqlx::query_scalar("SELECT sum(cost) FROM ledger_entries")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(total, raw);
    assert_eq!(s.last_event_minute, Some(at(15, 11, 58)));
    db.drop().await;
}
