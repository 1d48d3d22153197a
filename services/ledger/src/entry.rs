//! From a usage event to a ledger row. Pure: no I/O.
//!
//! An event that can never be booked (an empty id, a timestamp from nowhere,
//! text Postgres cannot store) is rejected here with a specific reason, so
//! the writer dead-letters it instead of retrying it forever.

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use triage_protocol::{ErrorCode, Tier, UsageEvent, UsageStatus};

use crate::price::{NoPrice, PriceBook};

/// Events that finished this far in the future are refused: a clock that
/// wrong would book spend on days that have not happened.
pub const MAX_FUTURE_MS: u64 = 24 * 3600 * 1000;

/// The earliest plausible `finished_at_ms` (2020-01-01T00:00:00Z); anything
/// earlier is a unit mistake (seconds for milliseconds) or a zero.
pub const MIN_FINISHED_AT_MS: u64 = 1_577_836_800_000;

/// Why an event cannot be booked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// The code put on the dead letter.
    pub code: ErrorCode,
    /// What is wrong, for a person.
    pub reason: String,
}

impl Rejection {
    fn invalid(reason: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidRequest,
            reason: reason.into(),
        }
    }
}

impl From<NoPrice> for Rejection {
    fn from(e: NoPrice) -> Self {
        // Not the event's fault, but no price means no honest booking; the
        // dead letter can be re-driven once a price is added.
        Self {
            code: ErrorCode::Internal,
            reason: e.to_string(),
        }
    }
}

/// One row of `ledger_entries`.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    /// The request id.
    pub request_id: String,
    /// The attempt, from 1.
    pub attempt: i32,
    /// Who pays.
    pub tenant: Option<String>,
    /// The tier that generated.
    pub tier: Tier,
    /// The model that generated.
    pub model: String,
    /// `ok`, `error` or `cancelled`.
    pub status: UsageStatus,
    /// The error code when the attempt failed.
    pub error_code: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: i32,
    /// Completion tokens.
    pub completion_tokens: i32,
    /// Whether the counts were estimated by Triage.
    pub tokens_estimated: bool,
    /// Prompt tokens at the input price, USD.
    pub input_cost: Decimal,
    /// Completion tokens at the output price, USD.
    pub output_cost: Decimal,
    /// `input_cost + output_cost`.
    pub cost: Decimal,
    /// The same tokens at tier-2 prices, USD.
    pub baseline_cost: Decimal,
    /// The price line applied.
    pub price_id: i64,
    /// The tier-2 price line used for the baseline.
    pub baseline_price_id: i64,
    /// The router's score.
    pub score: Option<f64>,
    /// Routing and escalation reasons.
    pub reasons: Vec<String>,
    /// Time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Total time, ms.
    pub total_ms: f64,
    /// When the attempt finished.
    pub finished_at: DateTime<Utc>,
}

fn check_text(field: &str, value: &str) -> Result<(), Rejection> {
    if value.contains('\0') {
        return Err(Rejection::invalid(format!(
            "`{field}` contains a NUL character, which Postgres text cannot store"
        )));
    }
    Ok(())
}

fn check_millis(field: &str, value: f64) -> Result<(), Rejection> {
    if !value.is_finite() || value < 0.0 {
        return Err(Rejection::invalid(format!(
            "`{field}` must be a finite, non-negative number of milliseconds, got {value}"
        )));
    }
    Ok(())
}

fn check_i32(field: &str, value: u32) -> Result<i32, Rejection> {
    i32::try_from(value)
        .map_err(|_| Rejection::invalid(format!("`{field}` = {value} is beyond 2^31-1")))
}

/// Checks what can be checked without prices. `now_ms` bounds how far in
/// the future `finished_at_ms` may be.
pub fn validate(event: &UsageEvent, now_ms: u64) -> Result<DateTime<Utc>, Rejection> {
    if event.id.trim().is_empty() {
        return Err(Rejection::invalid("`id` is empty"));
    }
    if event.attempt == 0 {
        return Err(Rejection::invalid("`attempt` must be at least 1"));
    }
    check_i32("attempt", event.attempt)?;
    if event.model.trim().is_empty() {
        return Err(Rejection::invalid("`model` is empty"));
    }
    check_text("id", &event.id)?;
    check_text("model", &event.model)?;
    if let Some(t) = &event.tenant {
        check_text("tenant", t)?;
    }
    for r in &event.reasons {
        check_text("reasons", r)?;
    }
    check_i32("usage.prompt_tokens", event.usage.prompt_tokens)?;
    check_i32("usage.completion_tokens", event.usage.completion_tokens)?;
    if let Some(s) = event.score {
        if !s.is_finite() {
            return Err(Rejection::invalid(format!(
                "`score` must be finite, got {s}"
            )));
        }
    }
    if let Some(t) = event.ttft_ms {
        check_millis("ttft_ms", t)?;
    }
    check_millis("total_ms", event.total_ms)?;
    if event.finished_at_ms < MIN_FINISHED_AT_MS {
        return Err(Rejection::invalid(format!(
            "`finished_at_ms` = {} is before 2020-01-01; it must be Unix epoch milliseconds",
            event.finished_at_ms
        )));
    }
    if event.finished_at_ms > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(Rejection::invalid(format!(
            "`finished_at_ms` = {} is more than 24 h in the future (now {now_ms})",
            event.finished_at_ms
        )));
    }
    let ms = i64::try_from(event.finished_at_ms)
        .map_err(|_| Rejection::invalid("`finished_at_ms` is out of range"))?;
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| Rejection::invalid("`finished_at_ms` is out of range"))
}

impl LedgerEntry {
    /// The row for `event`, priced from `prices` at the event's finish time.
    pub fn price(event: &UsageEvent, prices: &PriceBook, now_ms: u64) -> Result<Self, Rejection> {
        let finished_at = validate(event, now_ms)?;
        let cost = prices.cost(event.tier, &event.model, &event.usage, finished_at)?;
        // Prices from the database always carry ids; a book built from
        // configuration alone cannot be booked against.
        let (Some(price_id), Some(baseline_price_id)) = (cost.price_id, cost.baseline_price_id)
        else {
            return Err(Rejection {
                code: ErrorCode::Internal,
                reason: "the price applied has not been stored".into(),
            });
        };
        Ok(Self {
            request_id: event.id.clone(),
            attempt: event.attempt as i32,
            tenant: event.tenant.clone().filter(|t| !t.is_empty()),
            tier: event.tier,
            model: event.model.clone(),
            status: event.status,
            error_code: event.error_code.map(|c| c.as_str().to_string()),
            prompt_tokens: event.usage.prompt_tokens as i32,
            completion_tokens: event.usage.completion_tokens as i32,
            tokens_estimated: event.usage.estimated,
            input_cost: cost.input,
            output_cost: cost.output,
            cost: cost.total,
            baseline_cost: if outside_savings(event.status) {
                cost.total
            } else {
                cost.baseline
            },
            price_id,
            baseline_price_id,
            score: event.score,
            reasons: event.reasons.clone(),
            ttft_ms: event.ttft_ms,
            total_ms: event.total_ms,
            finished_at,
        })
    }
}

/// Whether attempts of `status` are spend that routing did not choose —
/// shadow answers and judge calls: booked with their baseline equal to
/// their cost, so they count in spend and add nothing to savings (every
/// report, view and the cost exporter take savings as baseline − cost).
pub fn outside_savings(status: UsageStatus) -> bool {
    matches!(status, UsageStatus::Shadow | UsageStatus::Judge)
}

/// A Postgres array literal for `text[]` (`{"a","b \"c\""}`), so a batch
/// can carry one ragged list per row through `UNNEST` as plain text.
pub fn text_array_literal(items: &[String]) -> String {
    let mut out = String::with_capacity(2 + items.iter().map(|s| s.len() + 3).sum::<usize>());
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::price::Price;
    use std::str::FromStr;
    use triage_protocol::Usage;

    const NOW: u64 = 1_750_000_000_000;

    fn event() -> UsageEvent {
        UsageEvent {
            version: 1,
            id: "req-1".into(),
            attempt: 1,
            tenant: Some("acme".into()),
            tier: Tier::Small,
            model: "llama-8b".into(),
            usage: Usage {
                prompt_tokens: 100,
                completion_tokens: 20,
                estimated: true,
            },
            status: UsageStatus::Ok,
            score: Some(0.2),
            reasons: vec!["embedding=0.2".into()],
            ttft_ms: Some(35.0),
            total_ms: 400.0,
            finished_at_ms: NOW - 1000,
            error_code: None,
            judged: None,
        }
    }

    fn book() -> PriceBook {
        let epoch = Utc.timestamp_millis_opt(0).unwrap();
        PriceBook::new(vec![
            Price {
                id: Some(10),
                tier: Tier::Small,
                model: None,
                input_per_1k: Decimal::from_str("0.00015").unwrap(),
                output_per_1k: Decimal::from_str("0.00015").unwrap(),
                effective_from: epoch,
            },
            Price {
                id: Some(20),
                tier: Tier::Large,
                model: None,
                input_per_1k: Decimal::from_str("0.0012").unwrap(),
                output_per_1k: Decimal::from_str("0.0012").unwrap(),
                effective_from: epoch,
            },
        ])
        .unwrap()
    }

    #[test]
    fn a_valid_event_becomes_a_priced_row() {
        let e = LedgerEntry::price(&event(), &book(), NOW).unwrap();
        assert_eq!(e.cost, Decimal::from_str("0.000018").unwrap());
        assert_eq!(e.baseline_cost, Decimal::from_str("0.000144").unwrap());
        assert_eq!((e.price_id, e.baseline_price_id), (10, 20));
        assert!(e.tokens_estimated);
        assert_eq!(e.finished_at.timestamp_millis() as u64, NOW - 1000);
    }

    #[test]
    fn shadow_and_judge_rows_are_spend_without_savings() {
        for status in [UsageStatus::Shadow, UsageStatus::Judge] {
            let mut ev = event();
            ev.status = status;
            let e = LedgerEntry::price(&ev, &book(), NOW).unwrap();
            assert_eq!(e.cost, Decimal::from_str("0.000018").unwrap(), "{status:?}");
            assert_eq!(e.baseline_cost, e.cost, "{status:?}: no savings");
        }
    }

    #[test]
    fn an_empty_tenant_is_no_tenant() {
        let mut ev = event();
        ev.tenant = Some(String::new());
        assert_eq!(LedgerEntry::price(&ev, &book(), NOW).unwrap().tenant, None);
    }

    type Mutation = Box<dyn Fn(&mut UsageEvent)>;

    #[test]
    fn unbookable_events_are_rejected_with_the_field_named() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("`id` is empty", Box::new(|e| e.id = " ".into())),
            ("`attempt`", Box::new(|e| e.attempt = 0)),
            ("`model` is empty", Box::new(|e| e.model = String::new())),
            ("NUL", Box::new(|e| e.tenant = Some("a\0b".into()))),
            ("`score`", Box::new(|e| e.score = Some(f64::NAN))),
            ("`total_ms`", Box::new(|e| e.total_ms = -1.0)),
            ("`ttft_ms`", Box::new(|e| e.ttft_ms = Some(f64::INFINITY))),
            (
                "before 2020",
                Box::new(|e| e.finished_at_ms = 1_700_000_000),
            ),
            (
                "in the future",
                Box::new(|e| e.finished_at_ms = NOW + MAX_FUTURE_MS + 1),
            ),
            ("2^31", Box::new(|e| e.usage.prompt_tokens = u32::MAX)),
        ];
        for (expected, mutate) in cases {
            let mut ev = event();
            mutate(&mut ev);
            let err = LedgerEntry::price(&ev, &book(), NOW).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest);
            assert!(
                err.reason.contains(expected),
                "{expected:?} not in {:?}",
                err.reason
            );
        }
    }

    #[test]
    fn an_unpriced_event_is_rejected_as_internal() {
        let err = LedgerEntry::price(&event(), &PriceBook::default(), NOW).unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal);
        assert!(err.reason.contains("no price for tier 1"), "{}", err.reason);
    }

    #[test]
    fn text_arrays_are_quoted_and_escaped() {
        assert_eq!(text_array_literal(&[]), "{}");
        let items = vec![
            "a".to_string(),
            "b,c".into(),
            "q\"uote".into(),
            "back\\slash".into(),
            "NULL".into(),
        ];
        assert_eq!(
            text_array_literal(&items),
            r#"{"a","b,c","q\"uote","back\\slash","NULL"}"#
        );
    }
}
