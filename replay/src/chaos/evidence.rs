//! Reading the run's evidence back: every usage event on `llm.usage`, the
//! ledger's rows and rollup, and the kept results of requests whose final
//! reply the observer did not see.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use sqlx::Row;
use triage_protocol::{decode, headers, Encoding, Namespace, RequestKey, StreamKind, UsageEvent};

use super::verdict::{BookedRow, Totals};

/// Why evidence could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// A JetStream call failed.
    #[error("{op}: {detail}")]
    Nats {
        /// What was being read.
        op: String,
        /// The cause.
        detail: String,
    },
    /// A query failed.
    #[error("ledger query: {0}")]
    Db(#[from] sqlx::Error),
}

/// How long a read of the evidence is retried: a NATS node restarted near
/// the end of the load can leave a stream electing its leader, and
/// Postgres restarting, for seconds after the last request.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Runs `read` until it succeeds or [`PATIENCE`] has passed, a second apart,
/// saying on stderr what failed; the last error is returned.
pub async fn patiently<T, E, F, Fut>(what: &str, mut read: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    loop {
        match read().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < PATIENCE => {
                eprintln!("chaos: reading {what} failed ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn nats(op: impl Into<String>, e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Nats {
        op: op.into(),
        detail: e.to_string(),
    }
}

/// Every message on the namespace's usage stream, decoded, and how many
/// could not be decoded.
pub async fn usage_events(
    js: &jetstream::Context,
    ns: &Namespace,
) -> Result<(Vec<UsageEvent>, usize), EvidenceError> {
    let name = ns.stream_name(StreamKind::Usage);
    let mut stream = js
        .get_stream(&name)
        .await
        .map_err(|e| nats(format!("look up {name}"), e))?;
    let state = stream
        .info()
        .await
        .map_err(|e| nats(format!("info {name}"), e))?
        .state
        .clone();
    let (mut events, mut bad) = (Vec::new(), 0);
    if state.messages == 0 {
        return Ok((events, bad));
    }
    for seq in state.first_sequence..=state.last_sequence {
        let m = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            // A deleted sequence (none expected: usage is never deleted).
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(nats(format!("read {name} #{seq}"), e)),
        };
        let encoding =
            Encoding::from_content_type(m.headers.get(headers::CONTENT_TYPE).map(|v| v.as_str()));
        match decode::<UsageEvent>(encoding, &m.payload) {
            Ok(e) => events.push(e),
            Err(_) => bad += 1,
        }
    }
    Ok((events, bad))
}

/// Every ledger row.
pub async fn ledger_rows(db: &sqlx::PgPool) -> Result<Vec<BookedRow>, EvidenceError> {
    let rows = sqlx::query(
        "SELECT tenant_key, request_id, attempt, prompt_tokens, completion_tokens, status \
         FROM ledger_entries",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(BookedRow {
                tenant: r.try_get("tenant_key")?,
                request_id: r.try_get("request_id")?,
                attempt: r.try_get::<i32, _>("attempt")? as u32,
                prompt_tokens: r.try_get::<i32, _>("prompt_tokens")? as u32,
                completion_tokens: r.try_get::<i32, _>("completion_tokens")? as u32,
                status: r.try_get("status")?,
            })
        })
        .collect()
}

/// The all-time rollup, summed over its rows.
pub async fn rollup_totals(db: &sqlx::PgPool) -> Result<Totals, EvidenceError> {
    let r = sqlx::query(
        "SELECT COALESCE(sum(requests), 0)::bigint AS a, COALESCE(sum(prompt_tokens), 0)::bigint AS p, \
         COALESCE(sum(completion_tokens), 0)::bigint AS c FROM usage_totals",
    )
    .fetch_one(db)
    .await?;
    Ok(Totals {
        attempts: r.try_get::<i64, _>("a")? as u64,
        prompt_tokens: r.try_get::<i64, _>("p")? as u64,
        completion_tokens: r.try_get::<i64, _>("c")? as u64,
    })
}

/// Ledger rows so far (to wait for the writer to catch up).
pub async fn ledger_count(db: &sqlx::PgPool) -> Result<usize, EvidenceError> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_entries")
        .fetch_one(db)
        .await?;
    Ok(n as usize)
}

/// Whether request `id` (no tenant) has a kept result on `llm.results`.
pub async fn has_kept_result(
    results: &jetstream::stream::Stream,
    ns: &Namespace,
    id: &str,
) -> Result<bool, EvidenceError> {
    let subject = ns.result(RequestKey::new(None, id));
    match results.get_last_raw_message_by_subject(&subject).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
        Err(e) => Err(nats(format!("look up {subject}"), e)),
    }
}
