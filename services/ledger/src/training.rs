//! Labelled rows for training a deployment's own router head
//! (`triage-router train --from-db`), read from `outcomes` and
//! `outcome_texts`: a request is a row when a judge graded both answers —
//! the client's and the other tier's shadow answer — and its text was
//! stored (the shadow service's `learning.store_text`). Tier 1's grade is
//! `small_ok`, tier 2's `large_ok`, and `label_tier` follows the shipped
//! data's rule: 2 when only the large model answered well.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use triage_protocol::ChatMessage;

use crate::store::StoreError;

/// One judged request, both tiers graded.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRow {
    /// The tenant (`None`: untenanted).
    pub tenant: Option<String>,
    /// The request id.
    pub request_id: String,
    /// The conversation as the client sent it.
    pub messages: Vec<ChatMessage>,
    /// Whether tier 1's answer was good.
    pub small_ok: bool,
    /// Whether tier 2's answer was good.
    pub large_ok: bool,
    /// Tier 1's answer, when its text was stored (the verifier's input).
    pub small_response: Option<String>,
    /// When the later of the two grades was recorded.
    pub judged_at: DateTime<Utc>,
}

impl TrainingRow {
    /// The shipped data's label: 2 when only the large model answered well.
    pub fn label_tier(&self) -> u8 {
        if self.large_ok && !self.small_ok {
            2
        } else {
            1
        }
    }

    /// The row in the `routing-train.jsonl` format (`id` is
    /// `tenant/request` so ids of two tenants stay apart).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": match &self.tenant {
                Some(t) => format!("{t}/{}", self.request_id),
                None => self.request_id.clone(),
            },
            "messages": self.messages,
            "label_tier": self.label_tier(),
            "small_ok": self.small_ok,
            "large_ok": self.large_ok,
            "small_response": self.small_response,
            "source": "judge",
            "judged_at": self.judged_at.to_rfc3339(),
        })
    }
}

/// Why a stored row could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored conversation is not `[{role, content}, ...]`.
    #[error("outcome_texts row {tenant_key:?}/{request_id:?}: messages are not [{{role, content}}]: {source}")]
    Messages {
        /// Its tenant key.
        tenant_key: String,
        /// Its request id.
        request_id: String,
        /// What was wrong.
        source: serde_json::Error,
    },
}

impl From<sqlx::Error> for TrainingError {
    fn from(e: sqlx::Error) -> Self {
        TrainingError::Store(e.into())
    }
}

const QUERY: &str = "
    SELECT a.tenant_key, a.tenant, a.request_id, a.tier AS answer_tier, a.good AS answer_good,
           s.good AS shadow_good, t.messages::text AS messages,
           t.answer AS answer_text, ts.answer AS shadow_text,
           GREATEST(a.recorded_at, s.recorded_at) AS judged_at
    FROM outcomes a
    JOIN outcomes s ON s.tenant_key = a.tenant_key AND s.request_id = a.request_id
                   AND s.source = 'judge' AND s.judged = 'shadow' AND s.tier <> a.tier
    JOIN outcome_texts t ON t.tenant_key = a.tenant_key AND t.request_id = a.request_id
                        AND t.judged = 'answer'
    LEFT JOIN outcome_texts ts ON ts.tenant_key = a.tenant_key AND ts.request_id = a.request_id
                              AND ts.judged = 'shadow'
    WHERE a.source = 'judge' AND a.judged = 'answer'
      AND ($1::timestamptz IS NULL OR GREATEST(a.recorded_at, s.recorded_at) >= $1)
    ORDER BY judged_at, a.tenant_key, a.request_id";

/// Every trainable request judged at or after `since` (all without),
/// oldest first.
pub async fn rows_since(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<TrainingRow>, TrainingError> {
    let rows = sqlx::query(QUERY).bind(since).fetch_all(pool).await?;
    rows.iter().map(read_row).collect()
}

fn read_row(r: &sqlx::postgres::PgRow) -> Result<TrainingRow, TrainingError> {
    let tenant_key: String = r.try_get("tenant_key")?;
    let request_id: String = r.try_get("request_id")?;
    let messages: String = r.try_get("messages")?;
    let messages = serde_json::from_str(&messages).map_err(|source| TrainingError::Messages {
        tenant_key: tenant_key.clone(),
        request_id: request_id.clone(),
        source,
    })?;
    let answer_tier: i16 = r.try_get("answer_tier")?;
    let answer_good: bool = r.try_get("answer_good")?;
    let shadow_good: bool = r.try_get("shadow_good")?;
    let answer_text: String = r.try_get("answer_text")?;
    let shadow_text: Option<String> = r.try_get("shadow_text")?;
    let (small_ok, large_ok, small_response) = if answer_tier == 1 {
        (answer_good, shadow_good, Some(answer_text))
    } else {
        (shadow_good, answer_good, shadow_text)
    };
    Ok(TrainingRow {
        tenant: r.try_get("tenant")?,
        request_id,
        messages,
        small_ok,
        large_ok,
        small_response,
        judged_at: r.try_get("judged_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(small_ok: bool, large_ok: bool) -> TrainingRow {
        TrainingRow {
            tenant: Some("acme".into()),
            request_id: "r1".into(),
            messages: vec![ChatMessage::user("q")],
            small_ok,
            large_ok,
            small_response: Some("a".into()),
            judged_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn tier_2_only_when_the_large_model_alone_answered_well() {
        assert_eq!(row(false, true).label_tier(), 2);
        assert_eq!(row(true, true).label_tier(), 1);
        assert_eq!(row(true, false).label_tier(), 1);
        assert_eq!(row(false, false).label_tier(), 1);
    }

    #[test]
    fn the_json_row_reads_as_the_shipped_format() {
        let j = row(false, true).to_json();
        assert_eq!(j["id"], "acme/r1");
        assert_eq!(j["label_tier"], 2);
        assert_eq!(j["messages"][0]["content"], "q");
        assert_eq!(j["small_response"], "a");
    }
}
