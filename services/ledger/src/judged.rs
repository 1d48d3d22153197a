//! Judge grades in `outcomes`: a judge call's usage event (status `judge`)
//! carries the grade it gave one answer ([`triage_protocol::Judged`]); the
//! writer books the call's tokens and then records the grade here, before
//! the event is acked. Recording is an upsert keyed by (tenant, request,
//! `judge`, judged answer), so a redelivered event changes nothing.

use sqlx::PgPool;
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
        recorded += 1;
    }
    tx.commit().await?;
    Ok(recorded)
}
