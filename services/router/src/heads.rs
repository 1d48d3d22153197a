//! Router heads promoted without a restart: `triage-router promote` puts a
//! head file (the JSON `train` writes) under the key `router` of the KV
//! bucket `TRIAGE_HEADS` (NATS 2.9 has KV, with history), and every running
//! router follows that key ([`follow`]): each new value is checked against
//! the model and swapped in whole between batches
//! ([`Scorer::swap_head`]), so no request is scored half by one head and
//! half by another, and none waits. Each decision's reasons name the head
//! that scored it (`head=sha256:…`). `triage-router rollback` puts the
//! head in force before the current one back as a new revision, so rolling
//! back is itself a promotion every router follows; rolling back the first
//! promotion deletes the key, and routers return to their configured head.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use triage_bus::BusError;
use triage_complexity::head::LogisticHead;
use triage_complexity::scorer::{head_version, Scorer, MINILM_FEATURES};
use triage_protocol::Namespace;

use crate::metrics::RouterMetrics;

/// The key routers follow.
pub const KEY: &str = "router";

/// Revisions kept (what `rollback` can go back to).
pub const HISTORY: i64 = 16;

/// The stream behind the heads bucket: a few small values, history kept.
pub fn bucket_config(bucket: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("Triage: promoted router heads".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: HISTORY,
        // As the server reports "no limit" (see triage_bus::streams).
        max_messages: -1,
        max_bytes: 64 << 20,
        num_replicas: replicas,
        allow_rollup: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The heads bucket, created when missing (idempotent, like the streams).
pub async fn bucket(
    js: &jetstream::Context,
    ns: &Namespace,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    let name = ns.heads_bucket();
    triage_bus::streams::ensure_stream(js, bucket_config(&name, replicas)).await?;
    js.get_key_value(&name)
        .await
        .map_err(|e| BusError::js(format!("open bucket {name}"), e))
}

/// A head file's contents as a head for the MiniLM scorer, or why not.
pub fn parse(json: &[u8]) -> Result<LogisticHead, String> {
    let text = std::str::from_utf8(json).map_err(|e| format!("not UTF-8: {e}"))?;
    LogisticHead::from_json_input(text, MINILM_FEATURES)
        .map(|(head, _)| head)
        .map_err(|e| e.to_string())
}

/// Publishes `json` as the head routers use; its version and revision.
pub async fn promote(store: &kv::Store, json: &[u8]) -> anyhow::Result<(String, u64)> {
    let head = parse(json).map_err(anyhow::Error::msg)?;
    let revision = store.put(KEY, json.to_vec().into()).await?;
    Ok((head_version(&head), revision))
}

/// What `rollback` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolledBack {
    /// An earlier promoted head is in force again (version, revision).
    Head(String, u64),
    /// The key was deleted: routers went back to their configured head.
    Configured,
}

/// The heads that were in force, as a stack: the last is in force now, the
/// one before it is what `rollback` restores. `None` is the routers'
/// configured head (before any promotion, or after a delete). Putting back
/// the head below the top pops the stack — that is what a rollback does,
/// so rolling back again goes further back — and values that are not
/// heads change nothing, as in [`follow`].
fn in_force(history: &[kv::Entry]) -> Vec<Option<bytes::Bytes>> {
    let mut stack: Vec<Option<bytes::Bytes>> = vec![None];
    for entry in history {
        let next = match entry.operation {
            kv::Operation::Put if parse(&entry.value).is_ok() => Some(entry.value.clone()),
            kv::Operation::Put => continue,
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        if stack.len() >= 2 && stack[stack.len() - 2] == next {
            stack.pop();
        } else if stack.last() != Some(&next) {
            stack.push(next);
        }
    }
    stack
}

/// Puts back the head in force before the current one: an earlier
/// promoted head as a new revision, or, when the current one was the first
/// promotion, deletes the key so routers return to their configured head.
/// `None` when the configured head is already in force.
pub async fn rollback(store: &kv::Store) -> anyhow::Result<Option<RolledBack>> {
    let mut entries = store.history(KEY).await?;
    let mut history = Vec::new();
    while let Some(entry) = entries.next().await {
        history.push(entry?);
    }
    let stack = in_force(&history);
    let (Some(Some(_)), previous) = (stack.last(), stack.iter().rev().nth(1)) else {
        return Ok(None);
    };
    match previous {
        Some(Some(previous)) => {
            let (version, revision) = promote(store, previous).await?;
            Ok(Some(RolledBack::Head(version, revision)))
        }
        _ => {
            store.delete(KEY).await?;
            Ok(Some(RolledBack::Configured))
        }
    }
}

/// Follows the bucket until `shutdown`: the current head first, then each
/// promotion. A value that is not a usable head is logged and counted; the
/// head in force stays.
pub async fn follow(
    store: kv::Store,
    scorer: Arc<Scorer>,
    metrics: Arc<RouterMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut entries = store.watch_with_history(KEY).await?;
    let configured = scorer.head().head.clone();
    metrics.set_head(&scorer.head().version);
    Ok(tokio::spawn(async move {
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = entries.next() => e,
            };
            match entry {
                None => break,
                Some(Err(e)) => warn!(error = %e, "watching the heads bucket"),
                Some(Ok(e)) if e.operation == kv::Operation::Put => {
                    let head = parse(&e.value);
                    apply(&scorer, &metrics, head, e.revision)
                }
                // Rolled back past the first promotion.
                Some(Ok(e)) => apply(&scorer, &metrics, Ok(configured.clone()), e.revision),
            }
        }
    }))
}

fn apply(
    scorer: &Scorer,
    metrics: &RouterMetrics,
    head: Result<LogisticHead, String>,
    revision: u64,
) {
    let swapped = head.and_then(|h| scorer.swap_head(h).map_err(|e| e.to_string()));
    match swapped {
        Ok(version) => {
            info!(%version, revision, "router head in force");
            metrics.set_head(&version);
        }
        Err(why) => {
            warn!(revision, error = %why, "promoted head refused; the head in force stays");
            metrics.head_refusals.inc();
        }
    }
}
