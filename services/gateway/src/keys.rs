//! API keys in Postgres (`api_keys`, migrations/0003): create, list, revoke,
//! look up — and the tenant's spend today, from the ledger's daily rollup,
//! for budgets.

use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::api_key;

/// A key's row, without its hash.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct KeyRecord {
    /// The public handle.
    pub key_id: String,
    /// Who pays for every request made with it.
    pub tenant: String,
    /// Requests per minute, if limited.
    pub rpm: Option<i32>,
    /// Tokens (prompt estimate + `max_tokens`) per minute, if limited.
    pub tpm: Option<i32>,
    /// Daily spend limit of the tenant, in USD, if any.
    pub budget_usd_day: Option<Decimal>,
    /// The catalogue models it may use; `None`: all.
    pub models: Option<Vec<String>>,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a new key may do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewKey {
    /// Who pays.
    pub tenant: String,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
    /// Daily budget, USD.
    pub budget_usd_day: Option<Decimal>,
    /// Allowed models (empty: all).
    pub models: Vec<String>,
}

/// The key table.
#[derive(Debug, Clone)]
pub struct KeyStore {
    pool: PgPool,
}

const COLUMNS: &str = "key_id, tenant, rpm, tpm, budget_usd_day, models, created_at, revoked_at";

fn positive(name: &str, v: Option<u32>) -> Result<Option<i32>, sqlx::Error> {
    v.map(|n| {
        i32::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| sqlx::Error::Protocol(format!("{name} must be from 1 to {}", i32::MAX)))
    })
    .transpose()
}

impl KeyStore {
    /// The table in the database of `pool` (migrated by the ledger's migrator).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores a new key; returns its row and the whole key, to show once.
    pub async fn create(&self, new: &NewKey) -> Result<(KeyRecord, String), sqlx::Error> {
        let (key_id, key, hash) = api_key::generate();
        let models = (!new.models.is_empty()).then(|| new.models.clone());
        let row = sqlx::query_as::<_, KeyRecord>(&format!(
            "INSERT INTO api_keys (key_id, tenant, secret_hash, rpm, tpm, budget_usd_day, models)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        ))
        .bind(&key_id)
        .bind(&new.tenant)
        .bind(&hash)
        .bind(positive("--rpm", new.rpm)?)
        .bind(positive("--tpm", new.tpm)?)
        .bind(new.budget_usd_day)
        .bind(models)
        .fetch_one(&self.pool)
        .await?;
        Ok((row, key))
    }

    /// Every key (of `tenant` if given), newest first.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, sqlx::Error> {
        sqlx::query_as::<_, KeyRecord>(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE $1::text IS NULL OR tenant = $1
             ORDER BY created_at DESC, key_id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
    }

    /// Revokes a key; `false` if there is no such (unrevoked) key.
    pub async fn revoke(&self, key_id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The row and secret hash of `key_id`, revoked or not.
    pub async fn find(&self, key_id: &str) -> Result<Option<(KeyRecord, String)>, sqlx::Error> {
        #[derive(sqlx::FromRow)]
        struct Found {
            #[sqlx(flatten)]
            record: KeyRecord,
            secret_hash: String,
        }
        let found = sqlx::query_as::<_, Found>(&format!(
            "SELECT {COLUMNS}, secret_hash FROM api_keys WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.map(|f| (f.record, f.secret_hash)))
    }

    /// What `tenant` has spent today (UTC), from the ledger's daily rollup.
    pub async fn spent_today(&self, tenant: &str) -> Result<Decimal, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COALESCE(sum(cost), 0) FROM usage_daily
             WHERE tenant = $1 AND day = (now() AT TIME ZONE 'UTC')::date",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await
    }
}
