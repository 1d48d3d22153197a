//! Cost reports: cost, tokens, requests and savings over a period, grouped
//! by day, tier, model, tenant and/or status, as a table, CSV or JSON.
//!
//! The numbers come from the `ledger_daily` view (the daily rollup), so a
//! report costs the same at ten million rows as at ten; [`ReportSpec::sql`]
//! is the exact query, printable for analysts who prefer psql.

use std::fmt::Write as _;

use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;
use sqlx::{PgPool, Row};
use triage_protocol::Tier;

/// A column to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// The UTC day the attempt finished.
    Day,
    /// 1 or 2.
    Tier,
    /// The model that generated.
    Model,
    /// Who pays (empty when the request named no tenant).
    Tenant,
    /// ok, error or cancelled.
    Status,
}

impl Dimension {
    /// The column name in `ledger_daily` and in the output.
    pub fn column(self) -> &'static str {
        match self {
            Dimension::Day => "day",
            Dimension::Tier => "tier",
            Dimension::Model => "model",
            Dimension::Tenant => "tenant",
            Dimension::Status => "status",
        }
    }
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a total line, for a terminal.
    #[default]
    Table,
    /// RFC 4180 CSV with a header, no total line.
    Csv,
    /// One JSON document; amounts are decimal strings (exact).
    Json,
}

/// What to report on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSpec {
    /// First day included (UTC).
    pub from: NaiveDate,
    /// Last day included (UTC).
    pub to: NaiveDate,
    /// Grouping columns, in output order; empty means one total row.
    pub by: Vec<Dimension>,
    /// Only this tier.
    pub tier: Option<Tier>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this model.
    pub model: Option<String>,
}

/// A report specification that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `from` after `to`.
    #[error("the period is empty: --from {from} is after --to {to}")]
    EmptyPeriod {
        /// First day.
        from: NaiveDate,
        /// Last day.
        to: NaiveDate,
    },
    /// The same grouping column twice.
    #[error("`{0}` appears twice in --by")]
    RepeatedDimension(&'static str),
}

impl ReportSpec {
    /// Checks the period and the grouping.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.from > self.to {
            return Err(SpecError::EmptyPeriod {
                from: self.from,
                to: self.to,
            });
        }
        for (i, d) in self.by.iter().enumerate() {
            if self.by[..i].contains(d) {
                return Err(SpecError::RepeatedDimension(d.column()));
            }
        }
        Ok(())
    }

    /// The query: `$1` is `from`, `$2` is `to`, then the tier, tenant and
    /// model filters that are set, in that order.
    pub fn sql(&self) -> String {
        let dims: Vec<&str> = self.by.iter().map(|d| d.column()).collect();
        let mut sql = String::from("SELECT ");
        for d in &dims {
            let _ = write!(sql, "{d}, ");
        }
        sql.push_str(
            "sum(requests)::bigint AS requests,\n       \
             (sum(requests) FILTER (WHERE status NOT IN ('ok', 'shadow', 'judge')))::bigint AS failed,\n       \
             sum(prompt_tokens)::bigint AS prompt_tokens,\n       \
             sum(completion_tokens)::bigint AS completion_tokens,\n       \
             sum(total_tokens)::bigint AS total_tokens,\n       \
             sum(cost) AS cost,\n       \
             sum(baseline_cost) AS baseline_cost,\n       \
             sum(savings) AS savings\n\
             FROM ledger_daily\n\
             WHERE day BETWEEN $1 AND $2",
        );
        let mut n = 2;
        for (set, col) in [
            (self.tier.is_some(), "tier"),
            (self.tenant.is_some(), "tenant"),
            (self.model.is_some(), "model"),
        ] {
            if set {
                n += 1;
                let _ = write!(sql, " AND {col} = ${n}");
            }
        }
        if !dims.is_empty() {
            let list = dims.join(", ");
            let _ = write!(sql, "\nGROUP BY {list}\nORDER BY {list}");
        } else {
            // Without grouping an empty period still yields one row of
            // NULLs; keep the output empty instead.
            sql.push_str("\nHAVING count(*) > 0");
        }
        sql
    }
}

/// One line of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    /// The grouping values, in [`ReportSpec::by`] order (`None` for "no
    /// tenant").
    #[serde(skip)]
    pub keys: Vec<Option<String>>,
    /// Generation attempts booked.
    pub requests: i64,
    /// Attempts that ended in error or were cancelled.
    pub failed: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Prompt plus completion tokens.
    pub total_tokens: i64,
    /// What was spent, USD.
    #[serde(rename = "cost_usd", with = "rust_decimal::serde::str")]
    pub cost: Decimal,
    /// What the same tokens would have cost on tier 2, USD.
    #[serde(rename = "baseline_usd", with = "rust_decimal::serde::str")]
    pub baseline_cost: Decimal,
    /// `baseline - cost`, USD.
    #[serde(rename = "savings_usd", with = "rust_decimal::serde::str")]
    pub savings: Decimal,
}

impl ReportRow {
    fn zero() -> Self {
        Self {
            keys: Vec::new(),
            requests: 0,
            failed: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cost: Decimal::ZERO,
            baseline_cost: Decimal::ZERO,
            savings: Decimal::ZERO,
        }
    }

    fn add(&mut self, other: &ReportRow) {
        self.requests += other.requests;
        self.failed += other.failed;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cost += other.cost;
        self.baseline_cost += other.baseline_cost;
        self.savings += other.savings;
    }

    /// Drops trailing zeros from the amounts (`0.0000` → `0`).
    fn normalize(&mut self) {
        self.cost = self.cost.normalize();
        self.baseline_cost = self.baseline_cost.normalize();
        self.savings = self.savings.normalize();
    }

    /// Savings as a percentage of the baseline, two decimals; `None` when
    /// the baseline is zero.
    pub fn savings_pct(&self) -> Option<Decimal> {
        if self.baseline_cost.is_zero() {
            return None;
        }
        let mut pct = (self.savings * Decimal::ONE_HUNDRED / self.baseline_cost)
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        pct.rescale(2);
        Some(pct)
    }
}

/// A computed report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What was asked.
    pub spec: ReportSpec,
    /// The lines, ordered by the grouping columns.
    pub rows: Vec<ReportRow>,
    /// The sum of all lines.
    pub total: ReportRow,
}

/// Runs the report's query.
pub async fn run(pool: &PgPool, spec: &ReportSpec) -> Result<Report, sqlx::Error> {
    let sql = spec.sql();
    let mut query = sqlx::query(&sql).bind(spec.from).bind(spec.to);
    if let Some(t) = spec.tier {
        query = query.bind(t.number() as i16);
    }
    if let Some(t) = &spec.tenant {
        query = query.bind(t);
    }
    if let Some(m) = &spec.model {
        query = query.bind(m);
    }
    let rows = query.fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut keys = Vec::with_capacity(spec.by.len());
        for d in &spec.by {
            let key = match d {
                Dimension::Day => Some(row.try_get::<NaiveDate, _>("day")?.to_string()),
                Dimension::Tier => Some(row.try_get::<i16, _>("tier")?.to_string()),
                Dimension::Model => Some(row.try_get::<String, _>("model")?),
                Dimension::Tenant => row.try_get::<Option<String>, _>("tenant")?,
                Dimension::Status => Some(row.try_get::<String, _>("status")?),
            };
            keys.push(key);
        }
        out.push(ReportRow {
            keys,
            requests: row.try_get("requests")?,
            failed: row.try_get::<Option<i64>, _>("failed")?.unwrap_or(0),
            prompt_tokens: row.try_get("prompt_tokens")?,
            completion_tokens: row.try_get("completion_tokens")?,
            total_tokens: row.try_get("total_tokens")?,
            cost: row.try_get("cost")?,
            baseline_cost: row.try_get("baseline_cost")?,
            savings: row.try_get("savings")?,
        });
    }
    Ok(Report::new(spec.clone(), out))
}

const METRIC_COLUMNS: [&str; 9] = [
    "requests",
    "failed",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "baseline_usd",
    "savings_usd",
    "savings_pct",
];

fn metric_cells(row: &ReportRow) -> [String; 9] {
    [
        row.requests.to_string(),
        row.failed.to_string(),
        row.prompt_tokens.to_string(),
        row.completion_tokens.to_string(),
        row.total_tokens.to_string(),
        row.cost.normalize().to_string(),
        row.baseline_cost.normalize().to_string(),
        row.savings.normalize().to_string(),
        row.savings_pct().map(|p| p.to_string()).unwrap_or_default(),
    ]
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Report {
    /// A report of `rows`, with their total.
    pub fn new(spec: ReportSpec, mut rows: Vec<ReportRow>) -> Self {
        let mut total = ReportRow::zero();
        for r in &mut rows {
            r.normalize();
            total.add(r);
        }
        total.normalize();
        Self { spec, rows, total }
    }

    /// Renders in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.table(),
            Format::Csv => self.csv(),
            Format::Json => self.json(),
        }
    }

    fn header(&self) -> Vec<String> {
        self.spec
            .by
            .iter()
            .map(|d| d.column().to_string())
            .chain(METRIC_COLUMNS.iter().map(|c| c.to_string()))
            .collect()
    }

    fn key_cells(&self, row: &ReportRow) -> Vec<String> {
        row.keys
            .iter()
            .map(|k| k.clone().unwrap_or_default())
            .collect()
    }

    /// Aligned text: grouping columns left, numbers right, a total line.
    pub fn table(&self) -> String {
        let header = self.header();
        let mut lines: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let mut cells = self.key_cells(r);
                cells.extend(metric_cells(r));
                cells
            })
            .collect();
        let mut total = vec![String::new(); self.spec.by.len()];
        if let Some(first) = total.first_mut() {
            *first = "TOTAL".into();
        }
        total.extend(metric_cells(&self.total));
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                lines
                    .iter()
                    .chain(std::iter::once(&total))
                    .map(|l| l[i].len())
                    .chain(std::iter::once(header[i].len()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let dims = self.spec.by.len();
        let fmt_line = |cells: &[String]| -> String {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i < dims {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let mut out = format!(
            "Triage cost report {} .. {} (UTC days, amounts in USD)\n",
            self.spec.from, self.spec.to
        );
        out.push_str(&fmt_line(&header));
        out.push('\n');
        let rule: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        out.push_str(&"-".repeat(rule));
        out.push('\n');
        for l in lines.drain(..) {
            out.push_str(&fmt_line(&l));
            out.push('\n');
        }
        out.push_str(&"-".repeat(rule));
        out.push('\n');
        out.push_str(&fmt_line(&total));
        out.push('\n');
        out
    }

    /// CSV with a header line; one line per row, no total.
    pub fn csv(&self) -> String {
        let mut out = self
            .header()
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(",");
        out.push_str("\r\n");
        for r in &self.rows {
            let mut cells = self.key_cells(r);
            cells.extend(metric_cells(r));
            out.push_str(
                &cells
                    .iter()
                    .map(|c| csv_field(c))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push_str("\r\n");
        }
        out
    }

    /// `{"from", "to", "by", "rows": [...], "total": {...}}`; amounts are
    /// decimal strings so no precision is lost in transit.
    pub fn json(&self) -> String {
        let row_json = |r: &ReportRow, keys: bool| -> serde_json::Value {
            let mut v = serde_json::to_value(r).expect("report row serializes");
            let obj = v.as_object_mut().expect("report row is an object");
            obj.insert(
                "savings_pct".into(),
                r.savings_pct()
                    .map(|p| serde_json::Value::String(p.to_string()))
                    .unwrap_or(serde_json::Value::Null),
            );
            if keys {
                for (d, k) in self.spec.by.iter().zip(&r.keys) {
                    let value = match (d, k) {
                        (_, None) => serde_json::Value::Null,
                        (Dimension::Tier, Some(k)) => k
                            .parse::<u8>()
                            .map(serde_json::Value::from)
                            .unwrap_or_else(|_| serde_json::Value::String(k.clone())),
                        (_, Some(k)) => serde_json::Value::String(k.clone()),
                    };
                    obj.insert(d.column().into(), value);
                }
            }
            v
        };
        let doc = serde_json::json!({
            "from": self.spec.from.to_string(),
            "to": self.spec.to.to_string(),
            "by": self.spec.by,
            "rows": self.rows.iter().map(|r| row_json(r, true)).collect::<Vec<_>>(),
            "total": row_json(&self.total, false),
        });
        let mut s = serde_json::to_string_pretty(&doc).expect("report serializes");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::from_str(s).unwrap()
    }

    fn spec(by: Vec<Dimension>) -> ReportSpec {
        ReportSpec {
            from: day("2025-01-01"),
            to: day("2025-01-31"),
            by,
            tier: None,
            tenant: None,
            model: None,
        }
    }

    fn row(keys: &[Option<&str>], requests: i64, cost: &str, baseline: &str) -> ReportRow {
        let cost = Decimal::from_str(cost).unwrap();
        let baseline_cost = Decimal::from_str(baseline).unwrap();
        ReportRow {
            keys: keys.iter().map(|k| k.map(str::to_string)).collect(),
            requests,
            failed: 0,
            prompt_tokens: requests * 10,
            completion_tokens: requests * 5,
            total_tokens: requests * 15,
            cost,
            baseline_cost,
            savings: baseline_cost - cost,
        }
    }

    #[test]
    fn sql_groups_filters_and_orders() {
        let mut s = spec(vec![Dimension::Day, Dimension::Tier]);
        s.tenant = Some("acme".into());
        s.model = Some("m".into());
        let sql = s.sql();
        assert!(sql.starts_with("SELECT day, tier, sum(requests)"), "{sql}");
        assert!(sql.contains("FROM ledger_daily"));
        assert!(
            sql.contains("WHERE day BETWEEN $1 AND $2 AND tenant = $3 AND model = $4"),
            "{sql}"
        );
        assert!(
            sql.ends_with("GROUP BY day, tier\nORDER BY day, tier"),
            "{sql}"
        );
        assert!(spec(vec![]).sql().ends_with("HAVING count(*) > 0"));
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = spec(vec![Dimension::Tier, Dimension::Tier]);
        assert_eq!(s.validate(), Err(SpecError::RepeatedDimension("tier")));
        s.by = vec![];
        s.from = day("2025-02-01");
        assert!(matches!(s.validate(), Err(SpecError::EmptyPeriod { .. })));
    }

    #[test]
    fn totals_and_savings_are_exact() {
        let r = Report::new(
            spec(vec![Dimension::Tier]),
            vec![
                row(&[Some("1")], 3, "0.000225", "0.0018"),
                row(&[Some("2")], 1, "0.0012", "0.0012"),
            ],
        );
        assert_eq!(r.total.requests, 4);
        assert_eq!(r.total.cost, Decimal::from_str("0.001425").unwrap());
        assert_eq!(r.total.savings, Decimal::from_str("0.001575").unwrap());
        assert_eq!(
            r.rows[0].savings_pct(),
            Some(Decimal::from_str("87.50").unwrap())
        );
        assert_eq!(
            r.total.savings_pct(),
            Some(Decimal::from_str("52.50").unwrap())
        );
    }

    #[test]
    fn csv_quotes_and_keeps_exact_amounts() {
        let r = Report::new(
            spec(vec![Dimension::Tenant]),
            vec![
                row(&[Some("a,b")], 1, "0.00000015", "0.0000012"),
                row(&[None], 2, "0", "0"),
            ],
        );
        let csv = r.csv();
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "tenant,requests,failed,prompt_tokens,completion_tokens,total_tokens,cost_usd,baseline_usd,savings_usd,savings_pct"
        );
        assert_eq!(
            lines[1],
            "\"a,b\",1,0,10,5,15,0.00000015,0.0000012,0.00000105,87.50"
        );
        assert_eq!(lines[2], ",2,0,20,10,30,0,0,0,");
    }

    #[test]
    fn json_has_typed_keys_and_string_amounts() {
        let r = Report::new(
            spec(vec![Dimension::Day, Dimension::Tier]),
            vec![row(&[Some("2025-01-02"), Some("2")], 1, "0.0012", "0.0012")],
        );
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["rows"][0]["day"], "2025-01-02");
        assert_eq!(v["rows"][0]["tier"], 2);
        assert_eq!(v["rows"][0]["cost_usd"], "0.0012");
        assert_eq!(v["total"]["savings_usd"], "0");
        assert_eq!(v["total"]["savings_pct"], "0.00");
        assert_eq!(v["by"], serde_json::json!(["day", "tier"]));
    }

    #[test]
    fn table_aligns_and_totals() {
        let r = Report::new(
            spec(vec![Dimension::Tier]),
            vec![
                row(&[Some("1")], 3, "0.000225", "0.0018"),
                row(&[Some("2")], 10, "0.0012", "0.0012"),
            ],
        );
        let t = r.table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("tier   requests"), "{t}");
        assert!(lines.last().unwrap().starts_with("TOTAL        13"), "{t}");
        // Every data line has the same width as the header line.
        assert_eq!(lines[3].len(), lines[4].len());
    }
}
