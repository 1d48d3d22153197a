//! How long learning text is kept: prompt and answer text of judged
//! outcomes (`outcome_texts`, only written with the shadow service's
//! `learning.store_text`) and feedback comments (`feedback.store_comments`)
//! are deleted once older than `learning.text_retention`. Every ledger
//! replica runs the purge every `learning.purge_interval` (the deletes are
//! idempotent, so replicas racing each other is harmless); `triage-ledger
//! purge` runs it once. Grades, tiers and scores stay: training needs the
//! text only until a head is fitted on it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// The retention of learning text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LearningConfig {
    /// Text older than this is deleted (prompts, answers, comments).
    #[serde(with = "humantime_serde")]
    pub text_retention: Duration,
    /// How often `run` purges; 0 turns the purge off in `run`.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            text_retention: Duration::from_secs(30 * 24 * 3600),
            purge_interval: Duration::from_secs(3600),
        }
    }
}

/// What one purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// `outcome_texts` rows deleted.
    pub texts: u64,
    /// Feedback comments cleared.
    pub comments: u64,
}

/// The oldest text `retention` keeps at `now`.
pub fn cutoff(now: DateTime<Utc>, retention: Duration) -> DateTime<Utc> {
    let keep = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    now.checked_sub_signed(keep)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Deletes the text recorded before `before`, in one transaction.
pub async fn purge(pool: &PgPool, before: DateTime<Utc>) -> Result<Purged, StoreError> {
    let mut tx = pool.begin().await?;
    let texts = sqlx::query("DELETE FROM outcome_texts WHERE recorded_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let comments = sqlx::query(
        "UPDATE outcomes SET comment = NULL WHERE comment IS NOT NULL AND recorded_at < $1",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Purged { texts, comments })
}

/// `triage_ledger_purged_total{what}`.
#[derive(Debug, Clone, Default)]
pub struct PurgeMetrics {
    purged: Family<WhatLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct WhatLabel {
    what: &'static str,
}

impl PurgeMetrics {
    /// Registers the counter.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "triage_ledger_purged",
            "Learning text removed by the retention purge (what: texts, comments)",
            self.purged.clone(),
        );
    }

    fn add(&self, p: Purged) {
        for (what, n) in [("texts", p.texts), ("comments", p.comments)] {
            self.purged.get_or_create(&WhatLabel { what }).inc_by(n);
        }
    }
}

/// Purges every `config.purge_interval` until `cancel` (first right away);
/// a failed purge is logged and tried at the next tick.
pub async fn run_purge_loop(
    pool: PgPool,
    config: LearningConfig,
    metrics: PurgeMetrics,
    cancel: CancellationToken,
) {
    if config.purge_interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(config.purge_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match purge(&pool, cutoff(Utc::now(), config.text_retention)).await {
            Ok(p) => {
                metrics.add(p);
                if p != Purged::default() {
                    tracing::info!(
                        texts = p.texts,
                        comments = p.comments,
                        "purged learning text past its retention"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention purge failed; trying again at the next tick")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_the_retention_before_now_and_saturates() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(
            cutoff(now, 30 * day).to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(cutoff(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
        assert_eq!(cutoff(now, Duration::ZERO), now);
    }
}
