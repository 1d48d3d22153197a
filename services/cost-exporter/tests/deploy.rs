//! The shipped Prometheus alert rules and Grafana dashboard: the rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), every
//! dashboard query is valid PromQL, and every Triage metric either refers to
//! is one that the ledger writer or the cost exporter actually exports (the
//! router's and workers' metrics are checked by their own crates).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use triage_cost_exporter::queues::{ConsumerStat, QueueStats, StreamStat};
use triage_ledger::snapshot::{LedgerSnapshot, SpendComparison, TotalsRow, Window, WindowTier};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` \
             (apt-get install -y prometheus; scripts/setup.sh does it)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_pass_promtool_check() {
    let (ok, out) = promtool(&["check", "rules", "deploy/prometheus/rules/triage.rules.yml"]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
}

#[test]
fn alert_rules_fire_when_they_should_and_not_otherwise() {
    let (ok, out) = promtool(&[
        "test",
        "rules",
        "deploy/prometheus/tests/triage.rules.test.yml",
    ]);
    assert!(ok, "{out}");
}

#[test]
fn a_broken_rule_is_caught() {
    // The check above can fail: promtool rejects an invalid expression.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m]) > \n",
    )
    .unwrap();
    let (ok, _) = promtool(&["check", "rules", bad.to_str().unwrap()]);
    assert!(!ok);
}

fn dashboard() -> serde_json::Value {
    let text =
        std::fs::read_to_string(repo().join("deploy/grafana/triage-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("dashboard is valid JSON")
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard()["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn dashboard_covers_routing_latency_queues_and_cost_with_valid_promql() {
    let d = dashboard();
    let rows: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![
            "Route distribution",
            "Latency by tier",
            "Queue health",
            "Cost"
        ]
    );
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    // promtool has no query linter, but it parses recording rules: wrap
    // each panel query in one.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(ok, "a dashboard query is not valid PromQL:\n{out}");
    let ids: BTreeSet<i64> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        d["panels"].as_array().unwrap().len(),
        "panel ids are unique"
    );
}

/// Every sample name the ledger writer and the exporter can export.
fn exported_names() -> BTreeSet<String> {
    let d = |s: &str| Decimal::from_str(s).unwrap();
    let mut trailing = BTreeMap::new();
    trailing.insert(NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(), d("1"));
    let snapshot = LedgerSnapshot {
        at: Utc::now(),
        totals: vec![TotalsRow {
            tier: 1,
            tenant: "a".into(),
            status: "ok".into(),
            requests: 1,
            prompt_tokens: 1,
            completion_tokens: 1,
            cost: d("1"),
            baseline_cost: d("8"),
        }],
        windows: vec![Window {
            label: "5m".into(),
            length: Duration::from_secs(300),
            tiers: [
                WindowTier {
                    requests: 1,
                    cost: d("1"),
                    baseline_cost: d("8"),
                    ttft_ms_sum: 1.0,
                    ttft_count: 1,
                    total_ms_sum: 1.0,
                },
                WindowTier::default(),
            ],
        }],
        spend: SpendComparison {
            today: [d("1"), d("1")],
            trailing,
        },
        last_event_minute: Some(Utc.timestamp_opt(0, 0).unwrap()),
    };
    let queues = QueueStats {
        streams: vec![StreamStat {
            stream: "LLM_TIER1".into(),
            subject: "llm.tier1".into(),
            work_queue: true,
            messages: 1,
            bytes: 1,
            last_sequence: 1,
            max_messages: 10,
            max_bytes: -1,
        }],
        consumers: vec![ConsumerStat {
            stream: "LLM_USAGE".into(),
            consumer: "ledger".into(),
            pending: 1,
            ack_pending: 1,
            redelivered: 1,
        }],
    };
    let (mut registry, readings, metrics) = triage_cost_exporter::registry();
    *readings.write().unwrap() = triage_cost_exporter::Readings {
        ledger: Some(snapshot),
        queues: Some(queues),
    };
    for source in ["ledger", "nats"] {
        let l = triage_cost_exporter::refresh::SourceLabel { source };
        metrics.seconds.get_or_create(&l).observe(0.1);
        metrics.errors.get_or_create(&l).inc();
        metrics.up.get_or_create(&l).set(1);
        metrics.last_success.get_or_create(&l).set(1.0);
    }
    let writer = triage_ledger::writer::WriterMetrics::default();
    writer.register(&mut registry);
    for outcome in ["booked", "duplicate", "dead_lettered"] {
        writer
            .events
            .get_or_create(&triage_ledger::writer::OutcomeLabel { outcome })
            .inc();
    }
    let registry = Arc::new(registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("triage_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn rules_and_dashboard_only_use_metrics_that_exist() {
    let exported = exported_names();
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/rules/triage.rules.yml")).unwrap();
    let exprs: String = dashboard_exprs()
        .into_iter()
        .map(|(_, e)| e + "\n")
        .collect();
    let mut missing = Vec::new();
    for (source, text) in [
        ("alert rules", rules.as_str()),
        ("dashboard", exprs.as_str()),
    ] {
        for name in referenced(text) {
            // The router's and workers' metrics are theirs to keep.
            if name.starts_with("triage_router_") || name.starts_with("triage_worker_") {
                continue;
            }
            if !exported.contains(&name) {
                missing.push(format!("{source}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not exported by the ledger or the cost exporter: {missing:?}\nexported: {exported:?}"
    );
}
