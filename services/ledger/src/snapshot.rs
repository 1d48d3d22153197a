//! What the cost exporter publishes, read from the rollups in a few cheap
//! queries: all-time totals (`usage_totals`), recent windows and today's
//! spend against the trailing days (`usage_minute`). None of them touches
//! `ledger_entries`, so a scrape costs the same at any ledger size.
//!
//! The arithmetic on the rows (tier-2 share, savings ratio, the spend
//! anomaly) is pure and unit-tested.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};

/// All-time sums for one (tier, tenant, status).
#[derive(Debug, Clone, PartialEq)]
pub struct TotalsRow {
    /// 1 or 2.
    pub tier: i16,
    /// Tenant, `""` for none (or the overflow label after folding).
    pub tenant: String,
    /// ok, error or cancelled.
    pub status: String,
    /// Generation attempts.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// USD spent.
    pub cost: Decimal,
    /// USD the same tokens would have cost on tier 2.
    pub baseline_cost: Decimal,
}

/// Sums over one recent window for one tier.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowTier {
    /// Generation attempts.
    pub requests: i64,
    /// USD spent.
    pub cost: Decimal,
    /// USD at tier-2 prices.
    pub baseline_cost: Decimal,
    /// Sum of time to first token, ms.
    pub ttft_ms_sum: f64,
    /// Attempts with a time to first token.
    pub ttft_count: i64,
    /// Sum of total time, ms.
    pub total_ms_sum: f64,
}

/// A recent window, e.g. the last 15 minutes.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Prometheus-style label: `5m`, `1h`, `24h`.
    pub label: String,
    /// Length.
    pub length: Duration,
    /// Per tier (index 0 is tier 1).
    pub tiers: [WindowTier; 2],
}

impl WindowTier {
    fn add(&mut self, other: &WindowTier) {
        self.requests += other.requests;
        self.cost += other.cost;
        self.baseline_cost += other.baseline_cost;
        self.ttft_ms_sum += other.ttft_ms_sum;
        self.ttft_count += other.ttft_count;
        self.total_ms_sum += other.total_ms_sum;
    }
}

/// Whether the minute bucket starting at `minute` counts in the window of
/// `length` ending at `now`: buckets that start after `now - length`.
pub fn in_window(minute: DateTime<Utc>, now: DateTime<Utc>, length: Duration) -> bool {
    let Ok(length) = ChronoDuration::from_std(length) else {
        return true;
    };
    minute > now - length && minute <= now
}

impl Window {
    /// Share of attempts that ran on tier 2, `None` without traffic.
    pub fn tier2_share(&self) -> Option<f64> {
        let total = self.tiers[0].requests + self.tiers[1].requests;
        (total > 0).then(|| self.tiers[1].requests as f64 / total as f64)
    }

    /// Savings as a fraction of the all-tier-2 baseline, `None` when the
    /// baseline is zero.
    pub fn savings_ratio(&self) -> Option<f64> {
        let baseline = self.tiers[0].baseline_cost + self.tiers[1].baseline_cost;
        let cost = self.tiers[0].cost + self.tiers[1].cost;
        if baseline.is_zero() {
            return None;
        }
        ((baseline - cost) / baseline).to_f64()
    }

    /// Mean time to first token on `tier` (1 or 2), ms.
    pub fn mean_ttft_ms(&self, tier: usize) -> Option<f64> {
        let t = &self.tiers[tier - 1];
        (t.ttft_count > 0).then(|| t.ttft_ms_sum / t.ttft_count as f64)
    }

    /// Mean total time on `tier` (1 or 2), ms.
    pub fn mean_total_ms(&self, tier: usize) -> Option<f64> {
        let t = &self.tiers[tier - 1];
        (t.requests > 0).then(|| t.total_ms_sum / t.requests as f64)
    }
}

/// Today's spend against the same part of the trailing days.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendComparison {
    /// Spend today (UTC) so far, per tier (index 0 is tier 1).
    pub today: [Decimal; 2],
    /// Spend on each trailing day from 00:00 up to the current time of
    /// day, for the days that had any spend at all (a young ledger has
    /// fewer days).
    pub trailing: BTreeMap<NaiveDate, Decimal>,
}

impl SpendComparison {
    /// Spend today so far, all tiers.
    pub fn today_total(&self) -> Decimal {
        self.today[0] + self.today[1]
    }

    /// Mean spend of the trailing days up to the same time of day; `None`
    /// without history.
    pub fn trailing_mean(&self) -> Option<Decimal> {
        if self.trailing.is_empty() {
            return None;
        }
        let sum: Decimal = self.trailing.values().copied().sum();
        Some(sum / Decimal::from(self.trailing.len()))
    }

    /// Today's spend divided by the trailing mean at the same time of day:
    /// 1 is a normal day, 3 is triple the usual spend. `None` without
    /// history or when the trailing days spent nothing by this time.
    pub fn anomaly_ratio(&self) -> Option<f64> {
        let mean = self.trailing_mean()?;
        if mean.is_zero() {
            return None;
        }
        (self.today_total() / mean).to_f64()
    }
}

/// Everything the exporter publishes, read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerSnapshot {
    /// When it was read.
    pub at: DateTime<Utc>,
    /// All-time sums by tier, tenant and status.
    pub totals: Vec<TotalsRow>,
    /// The recent windows asked for.
    pub windows: Vec<Window>,
    /// Today against the trailing days.
    pub spend: SpendComparison,
    /// Start of the newest minute with a booked event.
    pub last_event_minute: Option<DateTime<Utc>>,
}

/// What to read.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotOptions {
    /// Recent windows, each with its label.
    pub windows: Vec<(String, Duration)>,
    /// How many trailing days today is compared with.
    pub trailing_days: u32,
    /// Tenants with the highest spend keep their own label; the rest are
    /// summed under [`OTHER_TENANTS`], bounding Prometheus cardinality.
    pub max_tenants: usize,
}

/// The tenant label for tenants beyond [`SnapshotOptions::max_tenants`].
pub const OTHER_TENANTS: &str = "_other";

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            windows: vec![
                ("5m".into(), Duration::from_secs(300)),
                ("15m".into(), Duration::from_secs(900)),
                ("1h".into(), Duration::from_secs(3600)),
                ("24h".into(), Duration::from_secs(86_400)),
            ],
            trailing_days: 7,
            max_tenants: 50,
        }
    }
}

/// Keeps the `max_tenants` tenants with the highest all-time cost (ties by
/// name) and sums the others under [`OTHER_TENANTS`]; "no tenant" (`""`)
/// is always kept. Sums are unchanged.
pub fn fold_tenants(rows: Vec<TotalsRow>, max_tenants: usize) -> Vec<TotalsRow> {
    let mut spend: BTreeMap<&str, Decimal> = BTreeMap::new();
    for r in &rows {
        if !r.tenant.is_empty() {
            *spend.entry(r.tenant.as_str()).or_default() += r.cost;
        }
    }
    if spend.len() <= max_tenants {
        return rows;
    }
    let mut ranked: Vec<(&str, Decimal)> = spend.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let kept: std::collections::BTreeSet<String> = ranked
        .iter()
        .take(max_tenants)
        .map(|(t, _)| t.to_string())
        .collect();
    let mut folded: BTreeMap<(i16, String, String), TotalsRow> = BTreeMap::new();
    for mut r in rows {
        if !r.tenant.is_empty() && !kept.contains(&r.tenant) {
            r.tenant = OTHER_TENANTS.to_string();
        }
        let key = (r.tier, r.tenant.clone(), r.status.clone());
        match folded.get_mut(&key) {
            Some(acc) => {
                acc.requests += r.requests;
                acc.prompt_tokens += r.prompt_tokens;
                acc.completion_tokens += r.completion_tokens;
                acc.cost += r.cost;
                acc.baseline_cost += r.baseline_cost;
            }
            None => {
                folded.insert(key, r);
            }
        }
    }
    folded.into_values().collect()
}

fn tier_index(tier: i16) -> Option<usize> {
    match tier {
        1 => Some(0),
        2 => Some(1),
        _ => None,
    }
}

/// The start of `at`'s UTC day.
pub fn utc_midnight(at: DateTime<Utc>) -> DateTime<Utc> {
    at.date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

/// The SQL of the snapshot's queries, named, for the benchmark and docs.
pub mod sql {
    /// All-time totals by tier, tenant and status.
    pub const TOTALS: &str = "SELECT tier, tenant, status, sum(requests)::bigint AS requests,
        sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
        sum(cost) AS cost, sum(baseline_cost) AS baseline_cost
        FROM usage_totals GROUP BY tier, tenant, status";
    /// Per minute and tier over the longest window: `$1` now, `$2` the
    /// longest window in seconds. One index range scan; the windows are
    /// summed from these rows (a join with the window list made the planner
    /// scan the whole table).
    pub const WINDOWS: &str = "SELECT minute, tier, sum(requests)::bigint AS requests,
        sum(cost) AS cost, sum(baseline_cost) AS baseline_cost,
        sum(ttft_ms_sum) AS ttft_ms_sum, sum(ttft_count)::bigint AS ttft_count,
        sum(total_ms_sum) AS total_ms_sum
        FROM usage_minute
        WHERE minute > $1 - make_interval(secs => $2) AND minute <= $1
        GROUP BY minute, tier";
    /// Spend per UTC day and tier from midnight up to the current time of
    /// day, today and the trailing days: `$1` now, `$2` today's midnight,
    /// `$3` trailing days.
    pub const SPEND_BY_DAY: &str =
        "SELECT (minute AT TIME ZONE 'UTC')::date AS day, tier, sum(cost) AS cost
        FROM usage_minute
        WHERE minute >= $2 - make_interval(days => $3) AND minute <= $1
          AND minute - date_trunc('day', minute, 'UTC') <= $1 - $2
        GROUP BY 1, 2";
    /// The newest minute with a booked event.
    pub const LAST_EVENT: &str = "SELECT max(minute) FROM usage_minute";
}

impl LedgerSnapshot {
    /// Reads the snapshot as of `now`.
    pub async fn load(
        pool: &PgPool,
        now: DateTime<Utc>,
        options: &SnapshotOptions,
    ) -> Result<Self, sqlx::Error> {
        let totals = sqlx::query(sql::TOTALS)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(TotalsRow {
                    tier: r.try_get("tier")?,
                    tenant: r.try_get("tenant")?,
                    status: r.try_get("status")?,
                    requests: r.try_get("requests")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    cost: r.try_get("cost")?,
                    baseline_cost: r.try_get("baseline_cost")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let totals = fold_tenants(totals, options.max_tenants);

        let longest = options
            .windows
            .iter()
            .map(|(_, d)| d.as_secs_f64())
            .fold(0.0, f64::max);
        let mut windows: Vec<Window> = options
            .windows
            .iter()
            .map(|(label, length)| Window {
                label: label.clone(),
                length: *length,
                tiers: Default::default(),
            })
            .collect();
        for r in sqlx::query(sql::WINDOWS)
            .bind(now)
            .bind(longest)
            .fetch_all(pool)
            .await?
        {
            let minute: DateTime<Utc> = r.try_get("minute")?;
            let Some(t) = tier_index(r.try_get("tier")?) else {
                continue;
            };
            let row = WindowTier {
                requests: r.try_get("requests")?,
                cost: r.try_get("cost")?,
                baseline_cost: r.try_get("baseline_cost")?,
                ttft_ms_sum: r.try_get("ttft_ms_sum")?,
                ttft_count: r.try_get("ttft_count")?,
                total_ms_sum: r.try_get("total_ms_sum")?,
            };
            for w in windows.iter_mut() {
                if in_window(minute, now, w.length) {
                    w.tiers[t].add(&row);
                }
            }
        }

        let midnight = utc_midnight(now);
        let today = midnight.date_naive();
        let mut spend = SpendComparison {
            today: [Decimal::ZERO; 2],
            trailing: BTreeMap::new(),
        };
        for r in sqlx::query(sql::SPEND_BY_DAY)
            .bind(now)
            .bind(midnight)
            .bind(options.trailing_days as i32)
            .fetch_all(pool)
            .await?
        {
            let day: NaiveDate = r.try_get("day")?;
            let cost: Decimal = r.try_get("cost")?;
            let Some(t) = tier_index(r.try_get("tier")?) else {
                continue;
            };
            if day == today {
                spend.today[t] += cost;
            } else if day < today
                && day >= today - ChronoDuration::days(options.trailing_days as i64)
            {
                *spend.trailing.entry(day).or_default() += cost;
            }
        }

        let last_event_minute: Option<DateTime<Utc>> =
            sqlx::query_scalar(sql::LAST_EVENT).fetch_one(pool).await?;

        Ok(Self {
            at: now,
            totals,
            windows,
            spend,
            last_event_minute,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn totals(tier: i16, tenant: &str, cost: &str) -> TotalsRow {
        TotalsRow {
            tier,
            tenant: tenant.into(),
            status: "ok".into(),
            requests: 1,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost: d(cost),
            baseline_cost: d(cost) * Decimal::from(8),
        }
    }

    #[test]
    fn tier2_share_and_savings_ratio() {
        let mut w = Window {
            label: "5m".into(),
            length: Duration::from_secs(300),
            tiers: Default::default(),
        };
        assert_eq!(w.tier2_share(), None);
        assert_eq!(w.savings_ratio(), None);
        w.tiers[0] = WindowTier {
            requests: 3,
            cost: d("1"),
            baseline_cost: d("8"),
            ..Default::default()
        };
        w.tiers[1] = WindowTier {
            requests: 1,
            cost: d("2"),
            baseline_cost: d("2"),
            ttft_ms_sum: 300.0,
            ttft_count: 2,
            total_ms_sum: 900.0,
        };
        assert_eq!(w.tier2_share(), Some(0.25));
        assert_eq!(w.savings_ratio(), Some(0.7));
        assert_eq!(w.mean_ttft_ms(2), Some(150.0));
        assert_eq!(w.mean_total_ms(2), Some(900.0));
        assert_eq!(w.mean_ttft_ms(1), None);
    }

    #[test]
    fn minute_buckets_belong_to_windows_that_cover_their_start() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 30).unwrap();
        let five = Duration::from_secs(300);
        let minute = |m: u32| Utc.with_ymd_and_hms(2025, 1, 1, 11, m, 0).unwrap();
        // 11:56..=12:00 are the last five buckets; 11:55 started before the window.
        assert!(in_window(minute(56), now, five));
        assert!(!in_window(minute(55), now, five));
        assert!(in_window(
            Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap(),
            now,
            five
        ));
        assert!(!in_window(
            Utc.with_ymd_and_hms(2025, 1, 1, 12, 1, 0).unwrap(),
            now,
            five
        ));
    }

    #[test]
    fn anomaly_compares_today_with_the_trailing_mean() {
        let day = |s: &str| NaiveDate::from_str(s).unwrap();
        let mut s = SpendComparison {
            today: [d("3"), d("3")],
            trailing: BTreeMap::new(),
        };
        assert_eq!(s.anomaly_ratio(), None);
        s.trailing.insert(day("2025-01-01"), d("1"));
        s.trailing.insert(day("2025-01-02"), d("3"));
        assert_eq!(s.trailing_mean(), Some(d("2")));
        assert_eq!(s.anomaly_ratio(), Some(3.0));
        s.trailing.values_mut().for_each(|v| *v = Decimal::ZERO);
        assert_eq!(s.anomaly_ratio(), None);
    }

    #[test]
    fn tenants_beyond_the_limit_are_folded_without_losing_spend() {
        let rows = vec![
            totals(1, "big", "5"),
            totals(2, "big", "5"),
            totals(1, "mid", "3"),
            totals(1, "small", "1"),
            totals(1, "tiny", "0.5"),
            totals(1, "", "7"),
        ];
        let sum_before: Decimal = rows.iter().map(|r| r.cost).sum();
        let folded = fold_tenants(rows.clone(), 2);
        let tenants: std::collections::BTreeSet<&str> =
            folded.iter().map(|r| r.tenant.as_str()).collect();
        assert_eq!(tenants, ["", "_other", "big", "mid"].into_iter().collect());
        let other = folded.iter().find(|r| r.tenant == OTHER_TENANTS).unwrap();
        assert_eq!((other.cost, other.requests), (d("1.5"), 2));
        assert_eq!(folded.iter().map(|r| r.cost).sum::<Decimal>(), sum_before);
        assert_eq!(fold_tenants(rows.clone(), 10), rows);
    }
}
