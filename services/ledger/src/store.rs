//! The ledger's Postgres side: schema migrations, prices, and booking a
//! batch of usage events in one transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};
use triage_protocol::{Tier, UsageEvent};

use crate::entry::{text_array_literal, LedgerEntry, Rejection};
use crate::price::{Price, PriceBook, PriceError};

/// The migrations in `migrations/` at the repository root, embedded at
/// build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A failure talking to Postgres or in the data it holds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres refused or could not be reached.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migrating the ledger schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The prices table holds a price that cannot be used.
    #[error("invalid price in the prices table: {0}")]
    Price(#[from] PriceError),
    /// A configured price contradicts one already stored.
    #[error(
        "configured price for tier {tier}{model} from {effective_from} is {configured_input}/{configured_output} per 1K, \
         but the ledger already has {stored_input}/{stored_output}; prices in force cannot change: \
         configure the new price with a later effective_from"
    )]
    PriceConflict {
        /// The tier.
        tier: Tier,
        /// ` model M` or empty.
        model: String,
        /// The shared start.
        effective_from: DateTime<Utc>,
        /// Configured input price.
        configured_input: Decimal,
        /// Configured output price.
        configured_output: Decimal,
        /// Stored input price.
        stored_input: Decimal,
        /// Stored output price.
        stored_output: Decimal,
    },
}

impl StoreError {
    /// Whether the same work may succeed if retried later (Postgres down,
    /// restarting, overloaded, a deadlock), as opposed to a problem with the
    /// data itself.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => sqlx_transient(e),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => sqlx_transient(e),
            _ => false,
        }
    }

    /// Whether Postgres refused the rows themselves (SQLSTATE class 22 data
    /// exception or 23 integrity violation): retrying the same rows cannot
    /// help, so the batch is split to find the culprit.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
            _ => false,
        }
    }
}

fn sqlx_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08 connection, 40 transaction rollback (deadlock,
            // serialization), 53 resources, 57 operator intervention
            // (shutdown, cannot connect now), 58 system error.
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|p| c.starts_with(p))
        }),
        _ => false,
    }
}

/// The outcome of booking a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Booked {
    /// Rows inserted (new events).
    pub inserted: u64,
    /// Events already in the ledger (redeliveries, duplicates in the batch).
    pub duplicates: u64,
    /// Events that can never be booked, by index into the batch.
    pub rejected: Vec<(usize, Rejection)>,
}

/// The ledger database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

const INSERT_BATCH: &str = r#"
WITH batch AS (
    SELECT * FROM UNNEST(
        $1::text[], $2::int4[], $3::text[], $4::int2[], $5::text[], $6::text[], $7::text[],
        $8::int4[], $9::int4[], $10::bool[], $11::numeric[], $12::numeric[], $13::numeric[],
        $14::numeric[], $15::int8[], $16::int8[], $17::float8[], $18::text[], $19::float8[],
        $20::float8[], $21::timestamptz[]
    ) AS b(request_id, attempt, tenant, tier, model, status, error_code,
           prompt_tokens, completion_tokens, tokens_estimated, input_cost, output_cost, cost,
           baseline_cost, price_id, baseline_price_id, score, reasons, ttft_ms,
           total_ms, finished_at)
),
ins AS (
    INSERT INTO ledger_entries (
        request_id, attempt, tenant, tier, model, status, error_code,
        prompt_tokens, completion_tokens, tokens_estimated, input_cost, output_cost, cost,
        baseline_cost, price_id, baseline_price_id, score, reasons, ttft_ms,
        total_ms, finished_at)
    SELECT request_id, attempt, tenant, tier, model, status, error_code,
           prompt_tokens, completion_tokens, tokens_estimated, input_cost, output_cost, cost,
           baseline_cost, price_id, baseline_price_id, score, reasons::text[], ttft_ms,
           total_ms, finished_at
    FROM batch
    ON CONFLICT (tenant_key, request_id, attempt) DO NOTHING
    RETURNING tier, model, COALESCE(tenant, '') AS tenant, status, prompt_tokens,
              completion_tokens, tokens_estimated, cost, baseline_cost, ttft_ms, total_ms,
              finished_at
),
-- Rollups count only the rows actually inserted above, so a redelivered
-- event changes nothing. ORDER BY makes concurrent writers lock rollup rows
-- in the same order (no deadlocks).
minute_rollup AS (
    INSERT INTO usage_minute AS u
    SELECT date_trunc('minute', finished_at, 'UTC'), tier, status,
           count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(baseline_cost),
           COALESCE(sum(ttft_ms), 0), count(ttft_ms), sum(total_ms)
    FROM ins
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (minute, tier, status) DO UPDATE SET
        requests = u.requests + EXCLUDED.requests,
        prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
        cost = u.cost + EXCLUDED.cost,
        baseline_cost = u.baseline_cost + EXCLUDED.baseline_cost,
        ttft_ms_sum = u.ttft_ms_sum + EXCLUDED.ttft_ms_sum,
        ttft_count = u.ttft_count + EXCLUDED.ttft_count,
        total_ms_sum = u.total_ms_sum + EXCLUDED.total_ms_sum
),
daily_rollup AS (
    INSERT INTO usage_daily AS u
    SELECT (finished_at AT TIME ZONE 'UTC')::date, tier, model, tenant, status,
           count(*), count(*) FILTER (WHERE tokens_estimated),
           sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(baseline_cost),
           COALESCE(sum(ttft_ms), 0), count(ttft_ms), sum(total_ms)
    FROM ins
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (day, tier, model, tenant, status) DO UPDATE SET
        requests = u.requests + EXCLUDED.requests,
        estimated_requests = u.estimated_requests + EXCLUDED.estimated_requests,
        prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
        cost = u.cost + EXCLUDED.cost,
        baseline_cost = u.baseline_cost + EXCLUDED.baseline_cost,
        ttft_ms_sum = u.ttft_ms_sum + EXCLUDED.ttft_ms_sum,
        ttft_count = u.ttft_count + EXCLUDED.ttft_count,
        total_ms_sum = u.total_ms_sum + EXCLUDED.total_ms_sum
),
totals_rollup AS (
    INSERT INTO usage_totals AS u
    SELECT tier, model, tenant, status,
           count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(baseline_cost)
    FROM ins
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (tier, model, tenant, status) DO UPDATE SET
        requests = u.requests + EXCLUDED.requests,
        prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
        cost = u.cost + EXCLUDED.cost,
        baseline_cost = u.baseline_cost + EXCLUDED.baseline_cost
)
SELECT count(*) FROM ins
"#;

fn price_from_row(row: &sqlx::postgres::PgRow) -> Result<Price, StoreError> {
    let tier: i16 = row.try_get("tier")?;
    let tier = u8::try_from(tier)
        .ok()
        .and_then(|t| Tier::try_from(t).ok())
        .ok_or_else(|| sqlx::Error::Decode(format!("tier {tier} in prices").into()))?;
    Ok(Price {
        id: Some(row.try_get("id")?),
        tier,
        model: row.try_get("model")?,
        input_per_1k: row.try_get("input_per_1k")?,
        output_per_1k: row.try_get("output_per_1k")?,
        effective_from: row.try_get("effective_from")?,
    })
}

impl Store {
    /// Connects a pool of at most `max_connections` to `url`. Connections
    /// are made lazily, so this succeeds while Postgres is down; a query
    /// fails after `acquire_timeout` without a connection.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options.application_name("triage-ledger"));
        Ok(Self { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The connection pool, for read queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `/health/ready`'s Postgres check: one round trip on the pool.
    pub async fn ready(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| format!("postgres: {e}"))
    }

    /// [`Store::ready`] as a readiness check: `Readiness::check("postgres", …)`.
    pub fn ready_check(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
           + Send
           + Sync
           + 'static {
        let store = self.clone();
        move || {
            let store = store.clone();
            Box::pin(async move { store.ready().await })
        }
    }

    /// Applies pending migrations (idempotent; safe with concurrent
    /// callers, which wait on an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// All stored prices.
    pub async fn prices(&self) -> Result<PriceBook, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_prices(&mut conn).await
    }

    /// Stores `price` unless the same line already starts at the same
    /// instant. Returns the price's id and whether it was inserted. A
    /// stored line with different amounts is a [`StoreError::PriceConflict`].
    pub async fn ensure_price(
        &self,
        price: &Price,
        source: &str,
    ) -> Result<(i64, bool), StoreError> {
        price.validate()?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO prices (tier, model, input_per_1k, output_per_1k, effective_from, source)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT ON CONSTRAINT prices_one_line_per_start DO NOTHING
             RETURNING id",
        )
        .bind(price.tier.number() as i16)
        .bind(&price.model)
        .bind(price.input_per_1k)
        .bind(price.output_per_1k)
        .bind(price.effective_from)
        .bind(source)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(id) = inserted {
            return Ok((id, true));
        }
        let row = sqlx::query(
            "SELECT id, tier, model, input_per_1k, output_per_1k, effective_from FROM prices
             WHERE tier = $1 AND model IS NOT DISTINCT FROM $2 AND effective_from = $3",
        )
        .bind(price.tier.number() as i16)
        .bind(&price.model)
        .bind(price.effective_from)
        .fetch_one(&self.pool)
        .await?;
        let stored = price_from_row(&row)?;
        if !stored.same_amounts(price) {
            return Err(StoreError::PriceConflict {
                tier: price.tier,
                model: price
                    .model
                    .as_ref()
                    .map(|m| format!(" model {m}"))
                    .unwrap_or_default(),
                effective_from: price.effective_from,
                configured_input: price.input_per_1k,
                configured_output: price.output_per_1k,
                stored_input: stored.input_per_1k,
                stored_output: stored.output_per_1k,
            });
        }
        Ok((stored.id.unwrap_or_default(), false))
    }

    /// Books `events` in one transaction: prices them with the prices
    /// stored at that moment, inserts the new ones and updates the rollups
    /// from exactly the rows inserted. Events already booked are counted as
    /// duplicates; events that can never be booked are returned as
    /// rejected (and not booked). Nothing is booked if it fails.
    pub async fn book(&self, events: &[&UsageEvent], now_ms: u64) -> Result<Booked, StoreError> {
        let mut tx = self.pool.begin().await?;
        let prices = load_prices(&mut tx).await?;
        let mut entries = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match LedgerEntry::price(event, &prices, now_ms) {
                Ok(e) => entries.push(e),
                Err(r) => rejected.push((i, r)),
            }
        }
        let inserted = insert_entries(&mut tx, &entries).await?;
        tx.commit().await?;
        Ok(Booked {
            inserted,
            duplicates: entries.len() as u64 - inserted,
            rejected,
        })
    }

    /// Like [`Store::book`], but when Postgres refuses the data itself the
    /// batch is split until the refused events are isolated; they come back
    /// as rejected with Postgres's reason and the rest is booked. Each part
    /// commits on its own, which is safe because booking is idempotent.
    pub async fn book_isolating(
        &self,
        events: &[&UsageEvent],
        now_ms: u64,
    ) -> Result<Booked, StoreError> {
        let mut total = Booked::default();
        // Work list of (offset, len) ranges still to book.
        let mut ranges = vec![(0usize, events.len())];
        while let Some((start, len)) = ranges.pop() {
            if len == 0 {
                continue;
            }
            match self.book(&events[start..start + len], now_ms).await {
                Ok(b) => {
                    total.inserted += b.inserted;
                    total.duplicates += b.duplicates;
                    total
                        .rejected
                        .extend(b.rejected.into_iter().map(|(i, r)| (start + i, r)));
                }
                Err(e) if e.is_data_error() && len == 1 => total.rejected.push((
                    start,
                    Rejection {
                        code: triage_protocol::ErrorCode::InvalidRequest,
                        reason: format!("postgres refused the row: {e}"),
                    },
                )),
                Err(e) if e.is_data_error() => {
                    tracing::warn!(error = %e, batch = len, "postgres refused a batch; splitting it to isolate the bad event");
                    let half = len / 2;
                    ranges.push((start + half, len - half));
                    ranges.push((start, half));
                }
                Err(e) => return Err(e),
            }
        }
        total.rejected.sort_by_key(|(i, _)| *i);
        Ok(total)
    }
}

async fn load_prices(conn: &mut sqlx::PgConnection) -> Result<PriceBook, StoreError> {
    let rows = sqlx::query(
        "SELECT id, tier, model, input_per_1k, output_per_1k, effective_from FROM prices",
    )
    .fetch_all(&mut *conn)
    .await?;
    let prices = rows
        .iter()
        .map(price_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PriceBook::new(prices)?)
}

async fn insert_entries(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[LedgerEntry],
) -> Result<u64, StoreError> {
    if entries.is_empty() {
        return Ok(0);
    }
    let n = entries.len();
    let mut request_id = Vec::with_capacity(n);
    let mut attempt = Vec::with_capacity(n);
    let mut tenant = Vec::with_capacity(n);
    let mut tier = Vec::with_capacity(n);
    let mut model = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut error_code = Vec::with_capacity(n);
    let mut prompt_tokens = Vec::with_capacity(n);
    let mut completion_tokens = Vec::with_capacity(n);
    let mut estimated = Vec::with_capacity(n);
    let mut input_cost = Vec::with_capacity(n);
    let mut output_cost = Vec::with_capacity(n);
    let mut cost = Vec::with_capacity(n);
    let mut baseline_cost = Vec::with_capacity(n);
    let mut price_id = Vec::with_capacity(n);
    let mut baseline_price_id = Vec::with_capacity(n);
    let mut score = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut ttft_ms = Vec::with_capacity(n);
    let mut total_ms = Vec::with_capacity(n);
    let mut finished_at = Vec::with_capacity(n);
    for e in entries {
        request_id.push(e.request_id.as_str());
        attempt.push(e.attempt);
        tenant.push(e.tenant.as_deref());
        tier.push(e.tier.number() as i16);
        model.push(e.model.as_str());
        status.push(e.status.as_str());
        error_code.push(e.error_code.as_deref());
        prompt_tokens.push(e.prompt_tokens);
        completion_tokens.push(e.completion_tokens);
        estimated.push(e.tokens_estimated);
        input_cost.push(e.input_cost);
        output_cost.push(e.output_cost);
        cost.push(e.cost);
        baseline_cost.push(e.baseline_cost);
        price_id.push(e.price_id);
        baseline_price_id.push(e.baseline_price_id);
        score.push(e.score);
        reasons.push(text_array_literal(&e.reasons));
        ttft_ms.push(e.ttft_ms);
        total_ms.push(e.total_ms);
        finished_at.push(e.finished_at);
    }
    let inserted: i64 = sqlx::query_scalar(INSERT_BATCH)
        .bind(request_id)
        .bind(attempt)
        .bind(tenant)
        .bind(tier)
        .bind(model)
        .bind(status)
        .bind(error_code)
        .bind(prompt_tokens)
        .bind(completion_tokens)
        .bind(estimated)
        .bind(input_cost)
        .bind(output_cost)
        .bind(cost)
        .bind(baseline_cost)
        .bind(price_id)
        .bind(baseline_price_id)
        .bind(score)
        .bind(reasons)
        .bind(ttft_ms)
        .bind(total_ms)
        .bind(finished_at)
        .fetch_one(&mut **tx)
        .await?;
    Ok(inserted as u64)
}
