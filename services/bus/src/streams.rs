//! Creating Triage's streams, idempotently.
//!
//! Every service calls [`provision`] at start: a missing stream is created,
//! one whose limits differ from the configuration is updated, and one that
//! already matches is left alone, so any number of replicas may start at
//! once. Only features of NATS 2.9 are used.
//!
//! Nothing accepted is deleted to make room: at its `max_msgs` or
//! `max_bytes` a work queue (`llm.requests`, `llm.tier1/2`) or `llm.usage`
//! refuses the new message (discard-new), and the publisher gets
//! [`BusError::QueueFull`]. `llm.dead` and `llm.results` keep the newest
//! (discard-old): there an old dead letter or kept result matters less than
//! the next one.

use async_nats::jetstream::{self, stream};
use triage_protocol::{Namespace, StreamKind};

use crate::{BusError, StreamLimits, StreamsConfig};

/// The stream configuration Triage wants for `kind`.
pub fn desired_config(ns: &Namespace, kind: StreamKind, cfg: &StreamsConfig) -> stream::Config {
    let limits: &StreamLimits = match kind {
        StreamKind::Requests => &cfg.requests,
        StreamKind::Tier1 | StreamKind::Tier2 => &cfg.tiers,
        StreamKind::Usage => &cfg.usage,
        StreamKind::Dead => &cfg.dead,
        StreamKind::Results => &cfg.results,
        StreamKind::Shadow => &cfg.shadow,
    };
    stream::Config {
        name: ns.stream_name(kind),
        subjects: ns.stream_subjects(kind),
        retention: if kind.is_work_queue() {
            stream::RetentionPolicy::WorkQueue
        } else {
            stream::RetentionPolicy::Limits
        },
        max_age: limits.max_age,
        max_bytes: limits.max_bytes,
        max_messages: limits.max_msgs,
        // A kept result is looked up by id: only the latest per id matters.
        max_messages_per_subject: if kind == StreamKind::Results { 1 } else { -1 },
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        storage: stream::StorageType::File,
        discard: if refuses_when_full(kind) {
            stream::DiscardPolicy::New
        } else {
            stream::DiscardPolicy::Old
        },
        ..Default::default()
    }
}

/// Whether the stream holds work or records that must not be deleted to
/// make room: it refuses new messages at its limits instead.
pub fn refuses_when_full(kind: StreamKind) -> bool {
    kind.is_work_queue() || kind == StreamKind::Usage
}

/// What [`provision`] did to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// It did not exist.
    Created,
    /// Its limits differed and were updated.
    Updated,
    /// It already matched.
    Unchanged,
}

/// How long [`provision`] keeps retrying a JetStream API that does not
/// answer — a cluster electing new leaders after a node died — before the
/// service gives up (and exits, for its orchestrator to restart it).
pub const PROVISION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(90);

/// Creates or updates every stream and the finished-ids bucket (the last
/// entry of the report). Safe to call concurrently from many replicas.
/// A JetStream that does not answer ([`BusError::is_unavailable`]) is
/// retried with backoff for [`PROVISION_PATIENCE`].
pub async fn provision(
    js: &jetstream::Context,
    ns: &Namespace,
    cfg: &StreamsConfig,
) -> Result<Vec<(String, Provisioned)>, BusError> {
    let deadline = tokio::time::Instant::now() + PROVISION_PATIENCE;
    let mut pause = std::time::Duration::from_millis(500);
    loop {
        match provision_once(js, ns, cfg).await {
            Err(e) if e.is_unavailable() && tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, retry_in = ?pause, "JetStream not answering; provisioning again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

async fn provision_once(
    js: &jetstream::Context,
    ns: &Namespace,
    cfg: &StreamsConfig,
) -> Result<Vec<(String, Provisioned)>, BusError> {
    let mut report = Vec::new();
    for kind in StreamKind::ALL {
        let want = desired_config(ns, kind, cfg);
        let outcome = ensure_stream(js, want.clone()).await?;
        report.push((want.name, outcome));
    }
    let (_, outcome) = ensure_finished_bucket(js, ns, cfg).await?;
    report.push((format!("KV_{}", ns.finished_bucket()), outcome));
    Ok(report)
}

/// Creates `want` if missing, updates it if its managed fields differ.
pub async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<Provisioned, BusError> {
    let name = want.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| BusError::js(format!("stream info {name}"), e))?;
            let have = &info.config;
            if have.retention != want.retention {
                return Err(BusError::JetStream {
                    op: format!("update stream {name}"),
                    detail: format!(
                        "it exists with retention {:?} but Triage needs {:?}; NATS cannot change retention, \
                         so delete the stream (after draining it) and restart",
                        have.retention, want.retention
                    ),
                });
            }
            if same_managed_fields(have, &want) {
                return Ok(Provisioned::Unchanged);
            }
            js.update_stream(want)
                .await
                .map_err(|e| BusError::js(format!("update stream {name}"), e))?;
            Ok(Provisioned::Updated)
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref err)
                if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            match js.create_stream(want.clone()).await {
                Ok(_) => Ok(Provisioned::Created),
                // Another replica created it between our look-up and create.
                Err(create_err) => match js.get_stream(&name).await {
                    Ok(_) => Ok(Provisioned::Unchanged),
                    Err(_) => Err(BusError::js(format!("create stream {name}"), create_err)),
                },
            }
        }
        Err(e) => Err(BusError::js(format!("look up stream {name}"), e)),
    }
}

fn same_managed_fields(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects == want.subjects
        && have.max_age == want.max_age
        && have.max_bytes == want.max_bytes
        && have.max_messages == want.max_messages
        && have.discard == want.discard
        && have.max_messages_per_subject == want.max_messages_per_subject
        && have.num_replicas.max(1) == want.num_replicas.max(1)
        && have.duplicate_window == want.duplicate_window
}

/// The key-value bucket of finished request ids (NATS 2.9 has KV), which
/// lets a worker ack a redelivered request it already answered. Its
/// retention, size and history come from `cfg`; an existing bucket whose
/// limits differ is updated.
pub async fn finished_bucket(
    js: &jetstream::Context,
    ns: &Namespace,
    cfg: &StreamsConfig,
) -> Result<jetstream::kv::Store, BusError> {
    Ok(ensure_finished_bucket(js, ns, cfg).await?.0)
}

async fn ensure_finished_bucket(
    js: &jetstream::Context,
    ns: &Namespace,
    cfg: &StreamsConfig,
) -> Result<(jetstream::kv::Store, Provisioned), BusError> {
    let bucket = ns.finished_bucket();
    key_value(js, &bucket, finished_config(&bucket, cfg)).await
}

/// The key-value bucket of the workers' progress records (tokens of
/// attempts still generating), created or updated like
/// [`finished_bucket`]. Only workers use it, so [`provision`] leaves it out.
pub async fn progress_bucket(
    js: &jetstream::Context,
    ns: &Namespace,
    cfg: &StreamsConfig,
) -> Result<jetstream::kv::Store, BusError> {
    let bucket = ns.progress_bucket();
    Ok(key_value(js, &bucket, progress_config(&bucket, cfg))
        .await?
        .0)
}

/// Opens `bucket` (backed by the stream `want`), creating it or updating
/// its limits; what provisioning did.
async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    want: stream::Config,
) -> Result<(jetstream::kv::Store, Provisioned), BusError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        let outcome = ensure_stream(js, want).await?;
        return Ok((store, outcome));
    }
    // The bucket's stream is created directly: async-nats's
    // `create_key_value` first queries account info in a shape NATS 2.9
    // does not send. This is the same stream config a KV bucket gets.
    let created = js.create_stream(want).await;
    let created = match created {
        Ok(_) => js.get_key_value(bucket).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match created {
        Ok(store) => Ok((store, Provisioned::Created)),
        // Another replica may have created it concurrently.
        Err(create_err) => js
            .get_key_value(bucket)
            .await
            .map(|store| (store, Provisioned::Unchanged))
            .map_err(|_| BusError::js(format!("create bucket {bucket}"), create_err)),
    }
}

/// The stream behind the finished-ids bucket. Full means new records are
/// refused (`discard: new`), never old ones dropped early.
pub fn finished_config(bucket: &str, cfg: &StreamsConfig) -> stream::Config {
    stream::Config {
        description: Some("Triage: ids of requests whose final answer was sent".into()),
        max_messages_per_subject: cfg.finished_history,
        max_bytes: cfg.finished_max_bytes,
        discard: stream::DiscardPolicy::New,
        ..kv_config(bucket, cfg)
    }
}

/// The stream behind the progress bucket: one value per request, kept as
/// long as finished ids. Full means the oldest records go (`discard:
/// old`): they are long past any redelivery, unlike a live attempt's.
pub fn progress_config(bucket: &str, cfg: &StreamsConfig) -> stream::Config {
    stream::Config {
        description: Some("Triage: tokens of generation attempts in progress".into()),
        max_messages_per_subject: 1,
        max_bytes: cfg.progress_max_bytes,
        discard: stream::DiscardPolicy::Old,
        ..kv_config(bucket, cfg)
    }
}

/// What every Triage KV bucket's stream shares.
fn kv_config(bucket: &str, cfg: &StreamsConfig) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_age: cfg.finished_ttl,
        // As the server reports "no limit" back: with the default 0 every
        // start found the bucket different and updated it, which on a
        // cluster races the other replicas' provisioning into timeouts.
        max_messages: -1,
        num_replicas: cfg.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        // What the server would choose (2 minutes, at most the TTL), so an
        // unchanged bucket compares equal and is not updated.
        duplicate_window: match cfg.finished_ttl {
            ttl if ttl.is_zero() => DEFAULT_DUPLICATE_WINDOW,
            ttl => ttl.min(DEFAULT_DUPLICATE_WINDOW),
        },
        ..Default::default()
    }
}

/// JetStream's default de-duplication window.
const DEFAULT_DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);
