//! Turns the latest ledger snapshot and queue stats into Prometheus
//! metrics at scrape time. Encoding is pure: the readings are taken by the
//! refresher in the background, so a scrape never waits on Postgres.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use triage_ledger::snapshot::LedgerSnapshot;

use crate::queues::QueueStats;

/// The latest readings.
#[derive(Debug, Default, Clone)]
pub struct Readings {
    /// From the ledger; `None` until the first successful reading.
    pub ledger: Option<LedgerSnapshot>,
    /// From NATS; `None` when disabled or not read yet.
    pub queues: Option<QueueStats>,
}

/// Shared between the refresher (writer) and the collector (reader).
pub type SharedReadings = Arc<RwLock<Readings>>;

/// The collector registered with the metrics registry.
#[derive(Debug, Clone)]
pub struct CostCollector {
    readings: SharedReadings,
}

impl CostCollector {
    /// A collector over `readings`.
    pub fn new(readings: SharedReadings) -> Self {
        Self { readings }
    }
}

/// A sample's labels.
pub type Labels = Vec<(&'static str, String)>;

fn f(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(f64::NAN)
}

fn tenant_label(t: &str) -> String {
    // Prometheus treats an empty label as absent; name it instead.
    if t.is_empty() {
        "none".into()
    } else {
        t.to_string()
    }
}

fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: &[(Labels, f64)],
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(labels)?;
        match metric_type {
            MetricType::Counter => ConstCounter::new(*value).encode(sample)?,
            _ => ConstGauge::new(*value).encode(sample)?,
        }
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<f64>,
) -> fmt::Result {
    let Some(value) = value else { return Ok(()) };
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// One metric family: name, help, type and samples.
pub type MetricFamily = (&'static str, &'static str, MetricType, Vec<(Labels, f64)>);

/// Every ledger metric family, in output order.
pub fn ledger_families(s: &LedgerSnapshot) -> Vec<MetricFamily> {
    let mut cost: BTreeMap<(i16, String), Decimal> = BTreeMap::new();
    let mut baseline: BTreeMap<(i16, String), Decimal> = BTreeMap::new();
    let mut savings: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut tokens: BTreeMap<(i16, String, &'static str), i64> = BTreeMap::new();
    let mut requests: BTreeMap<(i16, String), i64> = BTreeMap::new();
    let mut learning: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for r in &s.totals {
        if matches!(r.status.as_str(), "shadow" | "judge") {
            *learning
                .entry((r.status.clone(), tenant_label(&r.tenant)))
                .or_default() += r.cost;
        }
        let tenant = tenant_label(&r.tenant);
        *cost.entry((r.tier, tenant.clone())).or_default() += r.cost;
        *baseline.entry((r.tier, tenant.clone())).or_default() += r.baseline_cost;
        *savings.entry(tenant.clone()).or_default() += r.baseline_cost - r.cost;
        *tokens
            .entry((r.tier, tenant.clone(), "prompt"))
            .or_default() += r.prompt_tokens;
        *tokens.entry((r.tier, tenant, "completion")).or_default() += r.completion_tokens;
        *requests.entry((r.tier, r.status.clone())).or_default() += r.requests;
    }
    let tier_tenant = |m: BTreeMap<(i16, String), Decimal>| -> Vec<(Labels, f64)> {
        m.into_iter()
            .map(|((tier, tenant), v)| (vec![("tier", tier.to_string()), ("tenant", tenant)], f(v)))
            .collect()
    };

    let mut out = vec![
        (
            "triage_cost_usd",
            "USD booked in the ledger, by tier and tenant",
            MetricType::Counter,
            tier_tenant(cost),
        ),
        (
            "triage_baseline_cost_usd",
            "USD the same tokens would have cost on tier 2 (the all-tier-2 baseline)",
            MetricType::Counter,
            tier_tenant(baseline),
        ),
        (
            "triage_shadow_cost_usd",
            "USD booked for shadow answers and judge calls (triage-shadow), by status and tenant; \
             part of triage_cost_usd, none of triage_savings_usd",
            MetricType::Counter,
            learning
                .into_iter()
                .map(|((status, tenant), v)| (vec![("status", status), ("tenant", tenant)], f(v)))
                .collect(),
        ),
        (
            "triage_savings_usd",
            "USD saved against the all-tier-2 baseline (baseline - cost), by tenant",
            MetricType::Counter,
            savings
                .into_iter()
                .map(|(t, v)| (vec![("tenant", t)], f(v)))
                .collect(),
        ),
        (
            "triage_tokens",
            "Tokens booked, by tier, tenant and kind (prompt or completion)",
            MetricType::Counter,
            tokens
                .into_iter()
                .map(|((tier, tenant, kind), v)| {
                    (
                        vec![
                            ("tier", tier.to_string()),
                            ("tenant", tenant),
                            ("kind", kind.to_string()),
                        ],
                        v as f64,
                    )
                })
                .collect(),
        ),
        (
            "triage_requests",
            "Generation attempts booked, by tier and status (ok, error, cancelled, interrupted, shadow, judge)",
            MetricType::Counter,
            requests
                .into_iter()
                .map(|((tier, status), v)| {
                    (
                        vec![("tier", tier.to_string()), ("status", status)],
                        v as f64,
                    )
                })
                .collect(),
        ),
    ];

    let window = |w: &triage_ledger::snapshot::Window| ("window", w.label.clone());
    let per_window =
        |get: &dyn Fn(&triage_ledger::snapshot::Window) -> Option<f64>| -> Vec<(Labels, f64)> {
            s.windows
                .iter()
                .filter_map(|w| get(w).map(|v| (vec![window(w)], v)))
                .collect()
        };
    let per_window_tier =
        |get: &dyn Fn(&triage_ledger::snapshot::Window, usize) -> Option<f64>| -> Vec<(Labels, f64)> {
            s.windows
                .iter()
                .flat_map(|w| {
                    (1..=2).filter_map(move |t| get(w, t).map(|v| (vec![window(w), ("tier", t.to_string())], v)))
                })
                .collect()
        };
    out.push((
        "triage_tier2_share",
        "Share of generation attempts that ran on tier 2 over the recent window (minute buckets)",
        MetricType::Gauge,
        per_window(&|w| w.tier2_share()),
    ));
    out.push((
        "triage_savings_ratio",
        "Savings as a fraction of the all-tier-2 baseline over the recent window",
        MetricType::Gauge,
        per_window(&|w| w.savings_ratio()),
    ));
    out.push((
        "triage_window_requests",
        "Generation attempts over the recent window, by tier",
        MetricType::Gauge,
        per_window_tier(&|w, t| Some(w.tiers[t - 1].requests as f64)),
    ));
    out.push((
        "triage_window_cost_usd",
        "USD spent over the recent window, by tier",
        MetricType::Gauge,
        per_window_tier(&|w, t| Some(f(w.tiers[t - 1].cost))),
    ));
    out.push((
        "triage_ledger_ttft_mean_ms",
        "Mean time to first token over the recent window, by tier (from the ledger)",
        MetricType::Gauge,
        per_window_tier(&|w, t| w.mean_ttft_ms(t)),
    ));
    out.push((
        "triage_ledger_total_time_mean_ms",
        "Mean generation time over the recent window, by tier (from the ledger)",
        MetricType::Gauge,
        per_window_tier(&|w, t| w.mean_total_ms(t)),
    ));
    out.push((
        "triage_spend_today_usd",
        "USD spent today (UTC) so far, by tier",
        MetricType::Gauge,
        (1..=2)
            .map(|t| (vec![("tier", t.to_string())], f(s.spend.today[t - 1])))
            .collect(),
    ));
    out
}

fn encode_ledger(encoder: &mut DescriptorEncoder, s: &LedgerSnapshot) -> fmt::Result {
    for (name, help, ty, samples) in ledger_families(s) {
        family(encoder, name, help, ty, &samples)?;
    }
    gauge(
        encoder,
        "triage_spend_trailing_mean_usd",
        "Mean spend of the trailing days from 00:00 UTC up to the current time of day",
        s.spend.trailing_mean().map(f),
    )?;
    gauge(
        encoder,
        "triage_spend_trailing_days",
        "Trailing days with spend that the anomaly ratio compares with",
        Some(s.spend.trailing.len() as f64),
    )?;
    gauge(
        encoder,
        "triage_spend_anomaly_ratio",
        "Today's spend so far divided by the trailing days' mean at the same time of day (1 = usual; absent without history)",
        s.spend.anomaly_ratio(),
    )?;
    gauge(
        encoder,
        "triage_ledger_last_event_timestamp_seconds",
        "Start of the newest minute with a booked event, Unix seconds",
        s.last_event_minute.map(|t| t.timestamp() as f64),
    )?;
    gauge(
        encoder,
        "triage_ledger_snapshot_timestamp_seconds",
        "When the ledger figures above were read, Unix seconds",
        Some(s.at.timestamp_millis() as f64 / 1000.0),
    )
}

fn encode_queues(encoder: &mut DescriptorEncoder, q: &QueueStats) -> fmt::Result {
    let depth: Vec<(Labels, f64)> = q
        .streams
        .iter()
        .filter(|s| s.work_queue)
        .map(|s| {
            (
                vec![("queue", s.subject.clone()), ("stream", s.stream.clone())],
                s.messages as f64,
            )
        })
        .collect();
    family(
        encoder,
        "triage_queue_depth",
        "Messages waiting or in flight in a work queue (llm.requests, llm.tier1, llm.tier2)",
        MetricType::Gauge,
        &depth,
    )?;
    let stream = |get: fn(&crate::queues::StreamStat) -> u64| -> Vec<(Labels, f64)> {
        q.streams
            .iter()
            .map(|s| (vec![("stream", s.stream.clone())], get(s) as f64))
            .collect()
    };
    family(
        encoder,
        "triage_stream_messages",
        "Messages held by each Triage stream",
        MetricType::Gauge,
        &stream(|s| s.messages),
    )?;
    family(
        encoder,
        "triage_stream_bytes",
        "Bytes held by each Triage stream",
        MetricType::Gauge,
        &stream(|s| s.bytes),
    )?;
    let fill: Vec<(Labels, f64)> = q
        .streams
        .iter()
        .filter_map(|s| Some((vec![("stream", s.stream.clone())], s.fill_ratio()?)))
        .collect();
    family(
        encoder,
        "triage_stream_fill_ratio",
        "How full each Triage stream is against its max_msgs / max_bytes (the nearer limit), 0-1; \
         at 1 the work queues and llm.usage refuse new messages (queue_full)",
        MetricType::Gauge,
        &fill,
    )?;
    family(
        encoder,
        "triage_stream_last_sequence",
        "Sequence number of the last message stored in each Triage stream (only grows)",
        MetricType::Gauge,
        &stream(|s| s.last_sequence),
    )?;
    let consumer = |get: fn(&crate::queues::ConsumerStat) -> u64| -> Vec<(Labels, f64)> {
        q.consumers
            .iter()
            .map(|c| {
                (
                    vec![
                        ("stream", c.stream.clone()),
                        ("consumer", c.consumer.clone()),
                    ],
                    get(c) as f64,
                )
            })
            .collect()
    };
    family(
        encoder,
        "triage_consumer_pending",
        "Messages not yet delivered to a consumer (its backlog)",
        MetricType::Gauge,
        &consumer(|c| c.pending),
    )?;
    family(
        encoder,
        "triage_consumer_ack_pending",
        "Messages delivered to a consumer and not yet acked",
        MetricType::Gauge,
        &consumer(|c| c.ack_pending),
    )?;
    family(
        encoder,
        "triage_consumer_redelivered",
        "Messages redelivered to a consumer and not yet acked",
        MetricType::Gauge,
        &consumer(|c| c.redelivered),
    )
}

impl Collector for CostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // A poisoned lock only means a refresher panicked mid-update; the
        // readings are still whole values.
        let readings = match self.readings.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(s) = &readings.ledger {
            encode_ledger(&mut encoder, s)?;
        }
        if let Some(q) = &readings.queues {
            encode_queues(&mut encoder, q)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use std::time::Duration;

    use chrono::{NaiveDate, TimeZone, Utc};
    use prometheus_client::registry::Registry;
    use triage_ledger::snapshot::{SpendComparison, TotalsRow, Window, WindowTier};

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn snapshot() -> LedgerSnapshot {
        let row =
            |tier: i16, tenant: &str, status: &str, requests: i64, cost: &str, baseline: &str| {
                TotalsRow {
                    tier,
                    tenant: tenant.into(),
                    status: status.into(),
                    requests,
                    prompt_tokens: requests * 100,
                    completion_tokens: requests * 10,
                    cost: d(cost),
                    baseline_cost: d(baseline),
                }
            };
        let mut trailing = BTreeMap::new();
        trailing.insert(NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(), d("2"));
        LedgerSnapshot {
            at: Utc.with_ymd_and_hms(2025, 1, 2, 12, 0, 0).unwrap(),
            totals: vec![
                row(1, "acme", "ok", 3, "0.3", "2.4"),
                row(1, "acme", "error", 1, "0.1", "0.8"),
                row(2, "acme", "ok", 1, "0.5", "0.5"),
                row(1, "", "ok", 2, "0.2", "1.6"),
            ],
            windows: vec![Window {
                label: "5m".into(),
                length: Duration::from_secs(300),
                tiers: [
                    WindowTier {
                        requests: 3,
                        cost: d("0.3"),
                        baseline_cost: d("2.4"),
                        ttft_ms_sum: 90.0,
                        ttft_count: 3,
                        total_ms_sum: 300.0,
                    },
                    WindowTier {
                        requests: 1,
                        cost: d("0.5"),
                        baseline_cost: d("0.5"),
                        ..Default::default()
                    },
                ],
            }],
            spend: SpendComparison {
                today: [d("1"), d("3")],
                trailing,
            },
            last_event_minute: Some(Utc.with_ymd_and_hms(2025, 1, 2, 11, 59, 0).unwrap()),
        }
    }

    fn render(readings: Readings) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(CostCollector::new(Arc::new(RwLock::new(
            readings,
        )))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn ledger_figures_become_metrics() {
        let text = render(Readings {
            ledger: Some(snapshot()),
            queues: None,
        });
        for line in [
            "# TYPE triage_cost_usd counter",
            r#"triage_cost_usd_total{tier="1",tenant="acme"} 0.4"#,
            r#"triage_cost_usd_total{tier="1",tenant="none"} 0.2"#,
            r#"triage_cost_usd_total{tier="2",tenant="acme"} 0.5"#,
            r#"triage_baseline_cost_usd_total{tier="1",tenant="acme"} 3.2"#,
            r#"triage_savings_usd_total{tenant="acme"} 2.8"#,
            r#"triage_tokens_total{tier="1",tenant="acme",kind="prompt"} 400.0"#,
            r#"triage_requests_total{tier="1",status="error"} 1"#,
            r#"triage_requests_total{tier="1",status="ok"} 5"#,
            r#"triage_tier2_share{window="5m"} 0.25"#,
            r#"triage_savings_ratio{window="5m"} 0.7"#,
            r#"triage_ledger_ttft_mean_ms{window="5m",tier="1"} 30.0"#,
            r#"triage_spend_today_usd{tier="2"} 3.0"#,
            "triage_spend_trailing_mean_usd 2.0",
            "triage_spend_anomaly_ratio 2.0",
            "triage_ledger_last_event_timestamp_seconds 1735819140.0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // No tier-2 ttft in the window: no sample rather than a made-up 0.
        assert!(
            !text.contains(r#"triage_ledger_ttft_mean_ms{window="5m",tier="2"}"#),
            "{text}"
        );
    }

    #[test]
    fn shadow_and_judge_spend_is_shown_and_saves_nothing() {
        let mut s = snapshot();
        let row = |status: &str, cost: &str| TotalsRow {
            tier: 2,
            tenant: "acme".into(),
            status: status.into(),
            requests: 1,
            prompt_tokens: 100,
            completion_tokens: 10,
            cost: d(cost),
            // As the ledger books them: baseline = cost.
            baseline_cost: d(cost),
        };
        s.totals.push(row("shadow", "0.7"));
        s.totals.push(row("judge", "0.25"));
        let text = render(Readings {
            ledger: Some(s),
            queues: None,
        });
        for line in [
            r#"triage_shadow_cost_usd_total{status="shadow",tenant="acme"} 0.7"#,
            r#"triage_shadow_cost_usd_total{status="judge",tenant="acme"} 0.25"#,
            r#"triage_cost_usd_total{tier="2",tenant="acme"} 1.45"#,
            r#"triage_savings_usd_total{tenant="acme"} 2.8"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn without_history_there_is_no_anomaly_ratio() {
        let mut s = snapshot();
        s.spend.trailing.clear();
        let text = render(Readings {
            ledger: Some(s),
            queues: None,
        });
        assert!(!text.contains("triage_spend_anomaly_ratio "), "{text}");
        assert!(text.contains("triage_spend_trailing_days 0"), "{text}");
    }

    #[test]
    fn queue_stats_become_depths_and_backlogs() {
        let q = QueueStats {
            streams: vec![
                crate::queues::StreamStat {
                    stream: "LLM_TIER1".into(),
                    subject: "llm.tier1".into(),
                    work_queue: true,
                    messages: 57,
                    bytes: 1000,
                    last_sequence: 900,
                    max_messages: 100,
                    max_bytes: -1,
                },
                crate::queues::StreamStat {
                    stream: "LLM_USAGE".into(),
                    subject: "llm.usage".into(),
                    work_queue: false,
                    messages: 9000,
                    bytes: 9_000_000,
                    last_sequence: 9000,
                    max_messages: -1,
                    max_bytes: -1,
                },
            ],
            consumers: vec![crate::queues::ConsumerStat {
                stream: "LLM_USAGE".into(),
                consumer: "ledger".into(),
                pending: 120,
                ack_pending: 30,
                redelivered: 2,
            }],
        };
        let text = render(Readings {
            ledger: None,
            queues: Some(q),
        });
        assert!(
            text.contains(r#"triage_queue_depth{queue="llm.tier1",stream="LLM_TIER1"} 57"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"triage_queue_depth{queue="llm.usage""#),
            "{text}"
        );
        assert!(
            text.contains(r#"triage_consumer_pending{stream="LLM_USAGE",consumer="ledger"} 120"#),
            "{text}"
        );
        assert!(
            text.contains(r#"triage_stream_messages{stream="LLM_USAGE"} 9000"#),
            "{text}"
        );
        assert!(
            text.contains(r#"triage_stream_fill_ratio{stream="LLM_TIER1"} 0.57"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"triage_stream_fill_ratio{stream="LLM_USAGE"}"#),
            "a stream without limits has no fill ratio: {text}"
        );
    }
}
