//! The `outcomes` table (migrations 0006, 0008): judged outcomes of
//! answered requests, one row per (tenant, request, source, judged answer).
//! The feedback responder writes the `feedback` source, the ledger writer
//! the `judge` source (from judge calls' usage events); training reads
//! every source.

use sqlx::{PgExecutor, PgPool, Row};
pub use triage_protocol::shadow::JudgedRole;

use crate::store::StoreError;

/// Where an outcome comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's rating (`llm.feedback`, `POST /v1/feedback`).
    Feedback,
    /// A gold answer (offline outcome runs).
    Gold,
    /// A judge model grading answers.
    Judge,
}

impl Source {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Feedback => "feedback",
            Source::Gold => "gold",
            Source::Judge => "judge",
        }
    }
}

/// The booked attempt that answered a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answering {
    /// Its tier.
    pub tier: i16,
    /// Its model.
    pub model: String,
    /// Its attempt number.
    pub attempt: i32,
}

/// One outcome to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutcome<'a> {
    /// The tenant (`None`: untenanted).
    pub tenant: Option<&'a str>,
    /// The request id.
    pub request_id: &'a str,
    /// Who judged.
    pub source: Source,
    /// Which answer: the client's, or (judge only) the shadow answer.
    pub judged: JudgedRole,
    /// Whether the answer was good.
    pub good: bool,
    /// The 0–10 score, when one was given.
    pub score: Option<f64>,
    /// The attempt judged.
    pub answering: &'a Answering,
    /// Free text, only when the deployment stores text.
    pub comment: Option<&'a str>,
}

/// The attempt that answered `request_id` of `tenant`, as booked: the
/// last successful attempt, else the last attempt. `None` when the ledger
/// has no attempt of that request for that tenant (never made, someone
/// else's, or not booked yet).
pub async fn answering_attempt(
    pool: &PgPool,
    tenant: Option<&str>,
    request_id: &str,
) -> Result<Option<Answering>, StoreError> {
    let row = sqlx::query(
        "SELECT tier, model, attempt FROM ledger_entries
         WHERE tenant_key = $1 AND request_id = $2
         ORDER BY (status = 'ok') DESC, attempt DESC LIMIT 1",
    )
    .bind(tenant.unwrap_or(""))
    .bind(request_id)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => None,
        Some(r) => Some(Answering {
            tier: r.try_get("tier")?,
            model: r.try_get("model")?,
            attempt: r.try_get("attempt")?,
        }),
    })
}

/// Records `outcome`, replacing an earlier one of the same source and
/// judged answer; returns whether one was replaced.
pub async fn record<'e>(
    db: impl PgExecutor<'e>,
    outcome: &NewOutcome<'_>,
) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "INSERT INTO outcomes AS o
             (tenant_key, tenant, request_id, source, good, score, tier, model, attempt, comment,
              judged)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (tenant_key, request_id, source, judged) DO UPDATE SET
             good = EXCLUDED.good, score = EXCLUDED.score, tier = EXCLUDED.tier,
             model = EXCLUDED.model, attempt = EXCLUDED.attempt,
             comment = EXCLUDED.comment, recorded_at = now()
         RETURNING (xmax <> 0) AS replaced",
    )
    .bind(outcome.tenant.unwrap_or(""))
    .bind(outcome.tenant)
    .bind(outcome.request_id)
    .bind(outcome.source.as_str())
    .bind(outcome.good)
    .bind(outcome.score)
    .bind(outcome.answering.tier)
    .bind(&outcome.answering.model)
    .bind(outcome.answering.attempt)
    .bind(outcome.comment)
    .bind(outcome.judged.as_str())
    .fetch_one(db)
    .await?;
    Ok(row.try_get("replaced")?)
}
