//! Judge grades in `outcomes`: a judge call's usage event (status `judge`)
//! carries the grade it gave one answer ([`triage_protocol::Judged`]); the
//! writer books the call's tokens and then records the grade here, before
//! the event is acked. Recording is an upsert keyed by (tenant, request,
//! `judge`, judged answer), so a redelivered event changes nothing.
//! A grade that carries its text (the shadow service's
//! `learning.store_text`) also stores the conversation and the answer in
//! `outcome_texts`, in the same transaction; the text is never logged.

use sqlx::{PgExecutor, PgPool};
use triage_protocol::shadow::{JudgedRole, JudgedText};
use triage_protocol::UsageEvent;

use crate::outcomes::{self, Answering, NewOutcome, Source};
use crate::store::StoreError;

/// Records the grade of every judge event in `events` (others are
/// skipped), in one transaction; returns how many were recorded.
pub async fn record_all(pool: &PgPool, events: &[&UsageEvent]) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let mut recorded = 0;
    for event in events {
        let Some(judged) = &event.judged else {
            continue;
        };
        let answering = Answering {
            tier: i16::from(judged.tier.number()),
            model: judged.model.clone(),
            attempt: judged.attempt as i32,
        };
        let outcome = NewOutcome {
            tenant: event.tenant.as_deref().filter(|t| !t.is_empty()),
            request_id: &event.id,
            source: Source::Judge,
            judged: judged.role,
            good: judged.good,
            score: Some(judged.score),
            answering: &answering,
            comment: None,
        };
        outcomes::record(&mut *tx, &outcome).await?;
        if let Some(text) = &judged.text {
            record_text(&mut *tx, outcome.tenant, &event.id, judged.role, text).await?;
        }
        recorded += 1;
    }
    tx.commit().await?;
    Ok(recorded)
}

/// Stores (or replaces) the text of one judged answer.
async fn record_text<'e>(
    db: impl PgExecutor<'e>,
    tenant: Option<&str>,
    request_id: &str,
    role: JudgedRole,
    text: &JudgedText,
) -> Result<(), StoreError> {
    // Bound as text and cast: the workspace's sqlx has no JSON feature.
    let messages = serde_json::to_string(&text.messages).expect("messages serialise");
    sqlx::query(
        "INSERT INTO outcome_texts (tenant_key, request_id, judged, messages, answer)
         VALUES ($1, $2, $3, $4::jsonb, $5)
         ON CONFLICT (tenant_key, request_id, judged) DO UPDATE SET
             messages = EXCLUDED.messages, answer = EXCLUDED.answer, recorded_at = now()",
    )
    .bind(tenant.unwrap_or(""))
    .bind(request_id)
    .bind(role.as_str())
    .bind(messages)
    .bind(&text.answer)
    .execute(db)
    .await?;
    Ok(())
}
