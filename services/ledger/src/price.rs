//! Prices and cost arithmetic. Pure: no I/O.
//!
//! A price is USD per 1K tokens, separately for input (prompt) and output
//! (completion) tokens, for a tier (all its models) or one model of a tier,
//! in force from `effective_from` until the next price of the same line.
//! Cost is exact decimal arithmetic: `tokens × price_per_1k / 1000`, no
//! floating point anywhere.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use triage_protocol::{Tier, Usage};

/// The largest number of decimal places a price may have. Cost adds three
/// (the division by 1000), and a sum of millions of rows must still fit
/// `rust_decimal`'s 28 significant digits.
pub const MAX_PRICE_SCALE: u32 = 15;

/// One price line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Database id; `None` before the price is stored (e.g. from config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// The tier it applies to.
    pub tier: Tier,
    /// One model of the tier, or `None` for every model of the tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// USD per 1K prompt tokens (a string or number in configuration;
    /// written as a string so it stays exact).
    pub input_per_1k: Decimal,
    /// USD per 1K completion tokens.
    pub output_per_1k: Decimal,
    /// When the price starts to apply (inclusive).
    pub effective_from: DateTime<Utc>,
}

/// A price line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// Negative prices make no sense for a ledger.
    #[error("price for {line} is negative")]
    Negative {
        /// `tier N` or `tier N model M`.
        line: String,
    },
    /// Too many decimal places to sum exactly.
    #[error("price for {line} has {scale} decimal places; at most {MAX_PRICE_SCALE} are allowed")]
    TooPrecise {
        /// `tier N` or `tier N model M`.
        line: String,
        /// The decimal places given.
        scale: u32,
    },
    /// Two prices for the same line start at the same instant.
    #[error("two prices for {line} start at {at}")]
    Duplicate {
        /// `tier N` or `tier N model M`.
        line: String,
        /// The shared start.
        at: DateTime<Utc>,
    },
    /// An empty model name (use no model for "every model").
    #[error("price for tier {tier} has an empty model name; omit the model to price every model of the tier")]
    EmptyModel {
        /// The tier.
        tier: Tier,
    },
}

impl Price {
    fn line(&self) -> String {
        match &self.model {
            Some(m) => format!("tier {} model {m}", self.tier),
            None => format!("tier {}", self.tier),
        }
    }

    /// Checks the price is usable on its own.
    pub fn validate(&self) -> Result<(), PriceError> {
        if self.model.as_deref() == Some("") {
            return Err(PriceError::EmptyModel { tier: self.tier });
        }
        for d in [self.input_per_1k, self.output_per_1k] {
            if d.is_sign_negative() && !d.is_zero() {
                return Err(PriceError::Negative { line: self.line() });
            }
            if d.scale() > MAX_PRICE_SCALE {
                return Err(PriceError::TooPrecise {
                    line: self.line(),
                    scale: d.scale(),
                });
            }
        }
        Ok(())
    }

    /// Whether two prices have the same amounts (ids and sources aside).
    pub fn same_amounts(&self, other: &Price) -> bool {
        self.input_per_1k == other.input_per_1k && self.output_per_1k == other.output_per_1k
    }
}

/// The cost of one generation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Prompt tokens at the input price.
    pub input: Decimal,
    /// Completion tokens at the output price.
    pub output: Decimal,
    /// `input + output`.
    pub total: Decimal,
    /// The same tokens at tier-2 prices (the all-tier-2 baseline).
    pub baseline: Decimal,
    /// The id of the price applied, when it is stored.
    pub price_id: Option<i64>,
    /// The id of the tier-2 price used for the baseline.
    pub baseline_price_id: Option<i64>,
}

impl Cost {
    /// What routing saved on this attempt: `baseline - total`.
    pub fn savings(&self) -> Decimal {
        self.baseline - self.total
    }
}

/// No price in force for an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPrice {
    /// Nothing prices this tier and model at that time.
    #[error("no price for tier {tier} model {model} in force at {at}")]
    ForModel {
        /// The event's tier.
        tier: Tier,
        /// The event's model.
        model: String,
        /// The event's time.
        at: DateTime<Utc>,
    },
    /// No tier-wide tier-2 price to compute the all-tier-2 baseline with.
    #[error("no tier-wide tier 2 price in force at {at} for the all-tier-2 baseline")]
    Baseline {
        /// The event's time.
        at: DateTime<Utc>,
    },
}

/// All price lines, for lookups at any time.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    // Sorted by (tier, model, effective_from).
    prices: Vec<Price>,
}

fn tokens_at(tokens: u32, per_1k: Decimal) -> Decimal {
    // tokens < 2^32 and a price of at most 28 digits with scale ≤ 15: the
    // product fits; dividing by 1000 is exact (the scale grows by 3).
    // Normalized so the ledger stores 0.0024, not 0.0024000.
    let mut product = Decimal::from(tokens) * per_1k;
    let scale = product.scale() + 3;
    if scale <= 28 {
        product.set_scale(scale).expect("scale within range");
        product.normalize()
    } else {
        (product / Decimal::ONE_THOUSAND).normalize()
    }
}

impl PriceBook {
    /// A book of the given lines. Each must be valid and no two lines may
    /// start at the same instant.
    pub fn new(mut prices: Vec<Price>) -> Result<Self, PriceError> {
        for p in &prices {
            p.validate()?;
        }
        prices.sort_by(|a, b| {
            (a.tier, &a.model, a.effective_from).cmp(&(b.tier, &b.model, b.effective_from))
        });
        for pair in prices.windows(2) {
            if pair[0].tier == pair[1].tier
                && pair[0].model == pair[1].model
                && pair[0].effective_from == pair[1].effective_from
            {
                return Err(PriceError::Duplicate {
                    line: pair[0].line(),
                    at: pair[0].effective_from,
                });
            }
        }
        Ok(Self { prices })
    }

    /// All lines, sorted by tier, model and start.
    pub fn prices(&self) -> &[Price] {
        &self.prices
    }

    fn latest(&self, tier: Tier, model: Option<&str>, at: DateTime<Utc>) -> Option<&Price> {
        self.prices
            .iter()
            .rev()
            .find(|p| p.tier == tier && p.model.as_deref() == model && p.effective_from <= at)
    }

    /// The price in force for `tier` and `model` at `at`: the model's own
    /// line if it has one in force, otherwise the tier-wide line.
    pub fn lookup(&self, tier: Tier, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        self.latest(tier, Some(model), at)
            .or_else(|| self.latest(tier, None, at))
    }

    /// The tier-2 price the all-tier-2 baseline uses at `at`: for a tier-2
    /// attempt its own price, for a tier-1 attempt the tier-wide tier-2
    /// price.
    pub fn baseline(&self, tier: Tier, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        match tier {
            Tier::Large => self.lookup(Tier::Large, model, at),
            Tier::Small => self.latest(Tier::Large, None, at),
        }
    }

    /// The cost of `usage` generated by `model` on `tier`, finished at `at`.
    pub fn cost(
        &self,
        tier: Tier,
        model: &str,
        usage: &Usage,
        at: DateTime<Utc>,
    ) -> Result<Cost, NoPrice> {
        let price = self
            .lookup(tier, model, at)
            .ok_or_else(|| NoPrice::ForModel {
                tier,
                model: model.to_string(),
                at,
            })?;
        let input = tokens_at(usage.prompt_tokens, price.input_per_1k);
        let output = tokens_at(usage.completion_tokens, price.output_per_1k);
        let total = input + output;
        let (baseline, baseline_price_id) = match tier {
            Tier::Large => (total, price.id),
            Tier::Small => {
                let b = self
                    .baseline(tier, model, at)
                    .ok_or(NoPrice::Baseline { at })?;
                (
                    tokens_at(usage.prompt_tokens, b.input_per_1k)
                        + tokens_at(usage.completion_tokens, b.output_per_1k),
                    b.id,
                )
            }
        };
        Ok(Cost {
            input,
            output,
            total,
            baseline,
            price_id: price.id,
            baseline_price_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn at(y: i32, m: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, day, 0, 0, 0).unwrap()
    }

    fn price(
        id: i64,
        tier: Tier,
        model: Option<&str>,
        input: &str,
        output: &str,
        from: DateTime<Utc>,
    ) -> Price {
        Price {
            id: Some(id),
            tier,
            model: model.map(str::to_string),
            input_per_1k: d(input),
            output_per_1k: d(output),
            effective_from: from,
        }
    }

    fn reference_book() -> PriceBook {
        PriceBook::new(vec![
            price(1, Tier::Small, None, "0.00015", "0.00015", at(1970, 1, 1)),
            price(2, Tier::Large, None, "0.0012", "0.0012", at(1970, 1, 1)),
        ])
        .unwrap()
    }

    fn usage(p: u32, c: u32) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            estimated: false,
        }
    }

    #[test]
    fn reference_prices_give_exact_costs_and_an_eight_fold_baseline() {
        let book = reference_book();
        let cost = book
            .cost(Tier::Small, "llama-8b", &usage(1000, 500), at(2025, 1, 1))
            .unwrap();
        // 1000 × 0.00015/1000 + 500 × 0.00015/1000 = 0.000225
        assert_eq!(cost.input, d("0.00015"));
        assert_eq!(cost.output, d("0.000075"));
        assert_eq!(cost.total, d("0.000225"));
        assert_eq!(cost.baseline, d("0.0018"));
        assert_eq!(cost.baseline, cost.total * Decimal::from(8));
        assert_eq!(cost.savings(), d("0.001575"));
        assert_eq!((cost.price_id, cost.baseline_price_id), (Some(1), Some(2)));
    }

    #[test]
    fn tier_two_baseline_is_its_own_cost() {
        let book = reference_book();
        let cost = book
            .cost(Tier::Large, "llama-70b", &usage(7, 3), at(2025, 1, 1))
            .unwrap();
        assert_eq!(cost.total, d("0.000012"));
        assert_eq!(cost.baseline, cost.total);
        assert_eq!(cost.savings(), Decimal::ZERO);
    }

    #[test]
    fn one_token_is_priced_exactly_not_rounded() {
        let book = reference_book();
        let cost = book
            .cost(Tier::Small, "m", &usage(1, 0), at(2025, 1, 1))
            .unwrap();
        assert_eq!(cost.total, d("0.00000015"));
        // A million single-token costs sum to exactly 0.15.
        let sum: Decimal = std::iter::repeat_n(cost.total, 1_000_000).sum();
        assert_eq!(sum, d("0.15"));
    }

    #[test]
    fn the_price_in_force_at_the_event_time_applies() {
        let book = PriceBook::new(vec![
            price(1, Tier::Small, None, "0.00015", "0.00015", at(1970, 1, 1)),
            price(3, Tier::Small, None, "0.0003", "0.0006", at(2025, 3, 1)),
            price(2, Tier::Large, None, "0.0012", "0.0012", at(1970, 1, 1)),
        ])
        .unwrap();
        let before = Utc.with_ymd_and_hms(2025, 2, 28, 23, 59, 59).unwrap();
        let boundary = at(2025, 3, 1);
        let u = usage(2000, 1000);
        assert_eq!(
            book.cost(Tier::Small, "m", &u, before).unwrap().total,
            d("0.00045")
        );
        let after = book.cost(Tier::Small, "m", &u, boundary).unwrap();
        assert_eq!(after.total, d("0.0012"));
        assert_eq!(after.price_id, Some(3));
    }

    #[test]
    fn a_model_line_overrides_the_tier_line_from_its_start() {
        let book = PriceBook::new(vec![
            price(1, Tier::Large, None, "0.0012", "0.0012", at(1970, 1, 1)),
            price(
                2,
                Tier::Large,
                Some("big"),
                "0.002",
                "0.004",
                at(2025, 6, 1),
            ),
            price(3, Tier::Large, None, "0.001", "0.001", at(2025, 9, 1)),
        ])
        .unwrap();
        assert_eq!(
            book.lookup(Tier::Large, "big", at(2025, 5, 1)).unwrap().id,
            Some(1)
        );
        assert_eq!(
            book.lookup(Tier::Large, "big", at(2025, 7, 1)).unwrap().id,
            Some(2)
        );
        // A later tier-wide change does not override the model's own line.
        assert_eq!(
            book.lookup(Tier::Large, "big", at(2025, 10, 1)).unwrap().id,
            Some(2)
        );
        assert_eq!(
            book.lookup(Tier::Large, "other", at(2025, 10, 1))
                .unwrap()
                .id,
            Some(3)
        );
    }

    #[test]
    fn tier_one_baseline_uses_the_tier_wide_tier_two_price() {
        let book = PriceBook::new(vec![
            price(1, Tier::Small, None, "0.00015", "0.00015", at(1970, 1, 1)),
            price(2, Tier::Large, None, "0.0012", "0.0012", at(1970, 1, 1)),
            price(3, Tier::Large, Some("big"), "0.5", "0.5", at(1970, 1, 1)),
        ])
        .unwrap();
        let cost = book
            .cost(Tier::Small, "big", &usage(1000, 0), at(2025, 1, 1))
            .unwrap();
        assert_eq!(cost.baseline, d("0.0012"));
        assert_eq!(cost.baseline_price_id, Some(2));
    }

    #[test]
    fn missing_prices_are_specific_errors() {
        let only_tier1 =
            PriceBook::new(vec![price(1, Tier::Small, None, "1", "1", at(2025, 1, 1))]).unwrap();
        let err = only_tier1
            .cost(Tier::Small, "m", &usage(1, 1), at(2024, 12, 31))
            .unwrap_err();
        assert!(matches!(err, NoPrice::ForModel { .. }), "{err}");
        let err = only_tier1
            .cost(Tier::Small, "m", &usage(1, 1), at(2025, 2, 1))
            .unwrap_err();
        assert_eq!(err, NoPrice::Baseline { at: at(2025, 2, 1) });
    }

    #[test]
    fn invalid_price_lines_are_rejected() {
        let neg = price(1, Tier::Small, None, "-0.1", "0", at(2025, 1, 1));
        assert!(matches!(
            PriceBook::new(vec![neg]),
            Err(PriceError::Negative { .. })
        ));
        let precise = price(
            1,
            Tier::Small,
            None,
            "0.0000000000000001",
            "0",
            at(2025, 1, 1),
        );
        assert!(matches!(
            PriceBook::new(vec![precise]),
            Err(PriceError::TooPrecise { .. })
        ));
        let dup = vec![
            price(1, Tier::Small, None, "1", "1", at(2025, 1, 1)),
            price(2, Tier::Small, None, "2", "2", at(2025, 1, 1)),
        ];
        assert!(matches!(
            PriceBook::new(dup),
            Err(PriceError::Duplicate { .. })
        ));
        let empty = price(1, Tier::Small, Some(""), "1", "1", at(2025, 1, 1));
        assert!(matches!(
            PriceBook::new(vec![empty]),
            Err(PriceError::EmptyModel { .. })
        ));
    }

    #[test]
    fn largest_token_counts_do_not_overflow() {
        let book = reference_book();
        let cost = book
            .cost(Tier::Small, "m", &usage(u32::MAX, u32::MAX), at(2025, 1, 1))
            .unwrap();
        assert_eq!(cost.input, d("644.24509425"));
    }
}
