//! The report's numbers against hand-computed ones, through the library and
//! the `triage-ledger` command (table, CSV, JSON), and the price commands.

mod common;

use std::process::Command;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use common::*;
use triage_ledger::report::{self, Dimension, ReportSpec};
use triage_protocol::{Tier, UsageEvent, UsageStatus};

fn at(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap()
}

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// Six attempts; prices are the reference ones (tier 1 $0.00015, tier 2
/// $0.0012 per 1K tokens). Costs worked out by hand in the comments.
fn events() -> Vec<UsageEvent> {
    let mut a = event("A", Tier::Small, 1000, 500, at(2025, 3, 10, 10, 0, 0));
    a.tenant = Some("acme".into()); // cost 0.000225, baseline 0.0018
    let mut b = event("B", Tier::Small, 2000, 0, at(2025, 3, 10, 23, 59, 59));
    b.tenant = Some("beta".into()); // cost 0.0003, baseline 0.0024
    b.status = UsageStatus::Error;
    let mut c = event("C", Tier::Large, 400, 600, at(2025, 3, 10, 12, 0, 0));
    c.tenant = Some("acme".into()); // cost = baseline = 0.0012
    let mut d = event("D", Tier::Large, 10, 5, at(2025, 3, 11, 0, 0, 0));
    d.tenant = None; // cost = baseline = 0.000018
    d.status = UsageStatus::Cancelled;
    let mut e = event("E", Tier::Small, 3, 7, at(2025, 3, 12, 8, 0, 0));
    e.tenant = Some("acme".into()); // cost 0.0000015, baseline 0.000012
    let mut f = event("F", Tier::Small, 1000, 0, at(2025, 3, 9, 23, 59, 59));
    f.tenant = Some("acme".into()); // the day before the period
    vec![a, b, c, d, e, f]
}

async fn booked_db() -> TestDb {
    let db = TestDb::create().await;
    db.reference_prices().await;
    let evs = events();
    let refs: Vec<&UsageEvent> = evs.iter().collect();
    let booked = db
        .store
        .book(&refs, triage_protocol::now_ms())
        .await
        .unwrap();
    assert_eq!(booked.inserted, 6);
    db
}

/// Keys, requests, failed, prompt and completion tokens, cost, baseline,
/// savings.
type Line = (
    Vec<Option<String>>,
    i64,
    i64,
    i64,
    i64,
    String,
    String,
    String,
);

fn spec(by: Vec<Dimension>) -> ReportSpec {
    ReportSpec {
        from: day("2025-03-10"),
        to: day("2025-03-12"),
        by,
        tier: None,
        tenant: None,
        model: None,
    }
}

#[tokio::test]
async fn report_by_day_and_tier_matches_hand_computed_numbers() {
    let db = booked_db().await;
    let r = report::run(db.pool(), &spec(vec![Dimension::Day, Dimension::Tier]))
        .await
        .unwrap();
    let lines: Vec<Line> = r
        .rows
        .iter()
        .map(|row| {
            (
                row.keys.clone(),
                row.requests,
                row.failed,
                row.prompt_tokens,
                row.completion_tokens,
                row.cost.to_string(),
                row.baseline_cost.to_string(),
                row.savings.to_string(),
            )
        })
        .collect();
    let k = |d: &str, t: &str| vec![Some(d.to_string()), Some(t.to_string())];
    assert_eq!(
        lines,
        vec![
            (
                k("2025-03-10", "1"),
                2,
                1,
                3000,
                500,
                "0.000525".into(),
                "0.0042".into(),
                "0.003675".into()
            ),
            (
                k("2025-03-10", "2"),
                1,
                0,
                400,
                600,
                "0.0012".into(),
                "0.0012".into(),
                "0".into()
            ),
            (
                k("2025-03-11", "2"),
                1,
                1,
                10,
                5,
                "0.000018".into(),
                "0.000018".into(),
                "0".into()
            ),
            (
                k("2025-03-12", "1"),
                1,
                0,
                3,
                7,
                "0.0000015".into(),
                "0.000012".into(),
                "0.0000105".into()
            ),
        ]
    );
    assert_eq!(r.total.requests, 5);
    assert_eq!(r.total.total_tokens, 4525);
    assert_eq!(r.total.cost, dec("0.0017445"));
    assert_eq!(r.total.baseline_cost, dec("0.00543"));
    assert_eq!(r.total.savings, dec("0.0036855"));
    assert_eq!(r.total.savings_pct().unwrap().to_string(), "67.87");
    assert_eq!(r.rows[0].savings_pct().unwrap().to_string(), "87.50");
    db.drop().await;
}

#[tokio::test]
async fn report_filters_and_groups_by_tenant() {
    let db = booked_db().await;
    let r = report::run(db.pool(), &spec(vec![Dimension::Tenant]))
        .await
        .unwrap();
    let by_tenant: Vec<(Option<String>, i64, String)> = r
        .rows
        .iter()
        .map(|row| (row.keys[0].clone(), row.requests, row.cost.to_string()))
        .collect();
    assert_eq!(
        by_tenant,
        vec![
            (Some("acme".into()), 3, "0.0014265".into()),
            (Some("beta".into()), 1, "0.0003".into()),
            (None, 1, "0.000018".into()),
        ]
    );
    let mut tier1 = spec(vec![Dimension::Day]);
    tier1.tier = Some(Tier::Small);
    tier1.tenant = Some("acme".into());
    let r = report::run(db.pool(), &tier1).await.unwrap();
    assert_eq!(r.rows.len(), 2);
    assert_eq!(r.total.cost, dec("0.0002265"));
    // An empty period yields no rows, not a row of NULLs.
    let mut empty = spec(vec![]);
    empty.from = day("2024-01-01");
    empty.to = day("2024-01-31");
    assert!(report::run(db.pool(), &empty)
        .await
        .unwrap()
        .rows
        .is_empty());
    db.drop().await;
}

fn ledger_cli(db: &TestDb, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_triage-ledger"))
        .args(args)
        .env("TRIAGE_LEDGER_DATABASE__URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run triage-ledger");
    assert!(
        out.status.success(),
        "triage-ledger {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_report_command_prints_csv_json_and_tables() {
    let db = booked_db().await;
    let csv = ledger_cli(
        &db,
        &[
            "report",
            "--from",
            "2025-03-10",
            "--to",
            "2025-03-12",
            "--by",
            "tenant",
            "--format",
            "csv",
        ],
    );
    assert_eq!(
        csv,
        "tenant,requests,failed,prompt_tokens,completion_tokens,total_tokens,cost_usd,baseline_usd,savings_usd,savings_pct\r\n\
         acme,3,0,1403,1107,2510,0.0014265,0.003012,0.0015855,52.64\r\n\
         beta,1,1,2000,0,2000,0.0003,0.0024,0.0021,87.50\r\n\
         ,1,1,10,5,15,0.000018,0.000018,0,0.00\r\n"
    );

    let json = ledger_cli(
        &db,
        &[
            "report",
            "--from",
            "2025-03-10",
            "--to",
            "2025-03-12",
            "--format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["by"], serde_json::json!(["day", "tier"]));
    assert_eq!(v["rows"].as_array().unwrap().len(), 4);
    assert_eq!(v["rows"][3]["day"], "2025-03-12");
    assert_eq!(v["rows"][3]["tier"], 1);
    assert_eq!(v["rows"][3]["cost_usd"], "0.0000015");
    assert_eq!(v["total"]["cost_usd"], "0.0017445");
    assert_eq!(v["total"]["savings_pct"], "67.87");

    let table = ledger_cli(
        &db,
        &[
            "report",
            "--from",
            "2025-03-10",
            "--to",
            "2025-03-12",
            "--by",
            "tier",
        ],
    );
    let last = table.lines().last().unwrap();
    assert!(last.starts_with("TOTAL"), "{table}");
    assert!(last.contains("0.0017445"), "{table}");

    let sql = ledger_cli(
        &db,
        &["report", "--by", "day,model", "--tier", "2", "--sql"],
    );
    assert!(
        sql.contains("FROM ledger_daily")
            && sql.contains("AND tier = $3")
            && sql.contains("GROUP BY day, model"),
        "{sql}"
    );
    db.drop().await;
}

#[tokio::test]
async fn price_commands_add_and_list() {
    let db = TestDb::create().await;
    let out = ledger_cli(&db, &["migrate"]);
    assert!(out.contains("up to date"), "{out}");
    let out = ledger_cli(
        &db,
        &[
            "prices",
            "add",
            "--tier",
            "2",
            "--model",
            "llama-70b",
            "--input",
            "0.001",
            "--output",
            "0.002",
            "--from",
            "2030-01-01T00:00:00Z",
        ],
    );
    assert!(out.contains("added"), "{out}");
    let list = ledger_cli(&db, &["prices", "list"]);
    // The configured reference prices (stored by `migrate`) and the new line.
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(
        list.contains("0.00015") && list.contains("0.0012") && list.contains("llama-70b"),
        "{list}"
    );
    assert!(list.contains("2030-01-01T00:00:00+00:00"), "{list}");
    db.drop().await;
}

/// Shadow answers and judge calls (triage-shadow) are spend: the report's
/// cost grows by theirs, its savings do not move, and they are not failures.
#[tokio::test]
async fn shadow_and_judge_rows_count_in_spend_not_in_savings_or_failures() {
    let db = booked_db().await;
    let before = report::run(db.pool(), &spec(vec![])).await.unwrap().total;
    let mut shadow = event("A", Tier::Large, 1000, 500, at(2025, 3, 10, 10, 0, 1));
    shadow.attempt = 1_000_001; // cost = 0.0018
    shadow.status = UsageStatus::Shadow;
    let mut judge = event("A", Tier::Large, 500, 500, at(2025, 3, 10, 10, 0, 2));
    judge.attempt = 2_000_001; // cost = 0.0012
    judge.status = UsageStatus::Judge;
    db.store
        .book(&[&shadow, &judge], triage_protocol::now_ms())
        .await
        .unwrap();
    let after = report::run(db.pool(), &spec(vec![])).await.unwrap().total;
    assert_eq!(after.cost - before.cost, dec("0.003"));
    assert_eq!(after.savings, before.savings);
    assert_eq!(after.failed, before.failed);
    assert_eq!(after.requests, before.requests + 2);
    assert_books_balance(db.pool()).await;
    db.drop().await;
}
