//! `llm.feedback`: clients rate answered requests (core NATS
//! request–reply; the gateway's `POST /v1/feedback` sends here too).
//!
//! Every ledger replica queue-subscribes to `llm.feedback` and
//! `llm.feedback.<tenant>`, so each rating is answered once. On the latter
//! the tenant is the subject's (deploy/nats lets each client user publish
//! only its own); plain `llm.feedback` keeps the body's (only the gateway
//! and operators may publish there). A rating is accepted only for a
//! request the ledger booked for that tenant — a tenant rates only its own
//! requests, and an unknown id and a foreign one get the same
//! `unknown_request`, so ids of other tenants cannot be probed. Booking
//! lags the answer by a batch, so the look-up waits up to
//! `feedback.booking_wait` for it. The rating is stored in `outcomes`
//! before the receipt is sent.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use triage_protocol::{
    decode, encode, headers, Encoding, ErrorCode, ErrorReply, Feedback, FeedbackReceipt, Namespace,
};

use crate::outcomes::{self, Answering, NewOutcome, Source};
use crate::store::Store;

/// How ratings are taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeedbackConfig {
    /// Answer `llm.feedback` (and `llm.feedback.<tenant>`).
    pub enabled: bool,
    /// The queue group shared by every ledger replica.
    pub queue_group: String,
    /// How long a rating waits for its request to be booked before it is
    /// refused as `unknown_request`.
    #[serde(with = "humantime_serde")]
    pub booking_wait: Duration,
    /// Keep the rating's free-text `comment` (off: client text is not
    /// stored unless the deployment says so).
    pub store_comments: bool,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queue_group: "triage-ledger-feedback".into(),
            booking_wait: Duration::from_secs(5),
            store_comments: false,
        }
    }
}

/// `triage_ledger_feedback_total{result}`.
#[derive(Debug, Clone, Default)]
pub struct FeedbackMetrics {
    ratings: Family<ResultLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl FeedbackMetrics {
    /// Registers the counter.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "triage_ledger_feedback",
            "Ratings received on llm.feedback, by result (good, bad, invalid, unknown, unavailable)",
            self.ratings.clone(),
        );
    }

    fn count(&self, result: &'static str) {
        self.ratings.get_or_create(&ResultLabel { result }).inc();
    }

    /// Ratings with `result` so far.
    pub fn get(&self, result: &'static str) -> u64 {
        self.ratings.get_or_create(&ResultLabel { result }).get()
    }
}

/// A message on `subject` as feedback with its bound tenant, or the error
/// to answer with (pure: decoding, field checks, tenant binding).
pub fn prepare(
    ns: &Namespace,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> (Encoding, Result<(Feedback, Option<String>), ErrorReply>) {
    let content_type = headers
        .and_then(|h| h.get(headers::CONTENT_TYPE))
        .map(|v| v.as_str());
    let encoding = Encoding::sniff(content_type, payload);
    let prepared = decode::<Feedback>(encoding, payload)
        .map_err(|e| ErrorReply::new("", e.error_code(), e.to_string()))
        .and_then(|f| {
            let refuse = |m: String| ErrorReply::new(&f.id, ErrorCode::InvalidRequest, m);
            f.check()
                .map_err(|e| refuse(format!("field `{}`: {}", e.field, e.reason)))?;
            let tenant = ns
                .bind_tenant(&ns.feedback(), subject, f.tenant.as_deref())
                .map_err(refuse)?
                .map(str::to_string);
            Ok((f, tenant))
        });
    (encoding, prepared)
}

/// Answers `llm.feedback` until `shutdown`; open ratings are finished first.
pub async fn serve(
    store: Store,
    client: async_nats::Client,
    ns: Namespace,
    config: FeedbackConfig,
    metrics: FeedbackMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let plain = client
        .queue_subscribe(ns.feedback(), config.queue_group.clone())
        .await?;
    let tenants = client
        .queue_subscribe(format!("{}.*", ns.feedback()), config.queue_group.clone())
        .await?;
    let mut sub = futures::stream::select(plain, tenants);
    tracing::info!(subject = %ns.feedback(), "taking ratings (and on <subject>.<tenant>)");
    let responder = Arc::new(Responder {
        store,
        client,
        ns,
        config,
        metrics,
    });
    Ok(tokio::spawn(async move {
        let open = tokio_util::task::TaskTracker::new();
        loop {
            let message = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => break },
                _ = shutdown.cancelled() => break,
            };
            let responder = responder.clone();
            open.spawn(async move { responder.answer(message).await });
        }
        drop(sub);
        open.close();
        open.wait().await;
    }))
}

struct Responder {
    store: Store,
    client: async_nats::Client,
    ns: Namespace,
    config: FeedbackConfig,
    metrics: FeedbackMetrics,
}

impl Responder {
    async fn answer(&self, message: Message) {
        let Some(reply_to) = message.reply.clone() else {
            tracing::warn!(
                "a rating on llm.feedback without a reply subject: send it as a request"
            );
            self.metrics.count("invalid");
            return;
        };
        let (encoding, prepared) = prepare(
            &self.ns,
            &message.subject,
            message.headers.as_ref(),
            &message.payload,
        );
        let payload = match prepared {
            Err(e) => {
                self.metrics.count("invalid");
                encode(encoding, &tagged_error(e))
            }
            Ok((feedback, tenant)) => match self.book(&feedback, tenant.as_deref()).await {
                Ok(receipt) => {
                    self.metrics
                        .count(if receipt.good { "good" } else { "bad" });
                    encode(encoding, &receipt)
                }
                Err(e) => {
                    self.metrics.count(match e.code {
                        ErrorCode::UnknownRequest => "unknown",
                        _ => "unavailable",
                    });
                    encode(encoding, &tagged_error(e))
                }
            },
        };
        if let Err(e) = self.client.publish(reply_to, payload.into()).await {
            tracing::warn!(error = %e, "could not send the feedback reply");
        }
    }

    /// Stores the rating once its request is found booked for `tenant`.
    async fn book(
        &self,
        feedback: &Feedback,
        tenant: Option<&str>,
    ) -> Result<FeedbackReceipt, ErrorReply> {
        let unavailable = |e: crate::store::StoreError| {
            tracing::warn!(error = %e, "feedback not stored: postgres unavailable");
            ErrorReply::new(
                &feedback.id,
                ErrorCode::Internal,
                "the ledger's database is unavailable; send the rating again later",
            )
        };
        let answering = self
            .wait_for_booking(tenant, &feedback.id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                ErrorReply::new(
                    &feedback.id,
                    ErrorCode::UnknownRequest,
                    format!(
                        "no request {:?} of {} was answered: a tenant rates only its own requests",
                        feedback.id,
                        tenant.map_or("the untenanted traffic".to_string(), |t| format!(
                            "tenant {t:?}"
                        ))
                    ),
                )
            })?;
        let outcome = NewOutcome {
            tenant,
            request_id: &feedback.id,
            source: Source::Feedback,
            judged: outcomes::JudgedRole::Answer,
            good: feedback.rating.is_good(),
            score: feedback.rating.score(),
            answering: &answering,
            comment: feedback
                .comment
                .as_deref()
                .filter(|_| self.config.store_comments),
        };
        let replaced = outcomes::record(self.store.pool(), &outcome)
            .await
            .map_err(unavailable)?;
        Ok(FeedbackReceipt::new(
            feedback,
            tenant.map(str::to_string),
            replaced,
        ))
    }

    /// The request's answering attempt, polling until it is booked or
    /// `booking_wait` has passed.
    async fn wait_for_booking(
        &self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<Answering>, crate::store::StoreError> {
        let deadline = tokio::time::Instant::now() + self.config.booking_wait;
        loop {
            if let Some(a) = outcomes::answering_attempt(self.store.pool(), tenant, id).await? {
                return Ok(Some(a));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An error as the tagged reply clients already decode (`type: error`).
fn tagged_error(e: ErrorReply) -> triage_protocol::Reply {
    triage_protocol::Reply::Error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(subject: &str, json: &str) -> Result<(Feedback, Option<String>), ErrorReply> {
        prepare(&Namespace::default(), subject, None, json.as_bytes()).1
    }

    #[test]
    fn the_subject_binds_the_tenant() {
        let (f, t) = prep("llm.feedback.acme", r#"{"id":"r1","rating":"good"}"#).unwrap();
        assert_eq!((f.id.as_str(), t.as_deref()), ("r1", Some("acme")));
        let (_, t) = prep("llm.feedback", r#"{"id":"r1","rating":3,"tenant":"x"}"#).unwrap();
        assert_eq!(t.as_deref(), Some("x"));
        let e = prep(
            "llm.feedback.acme",
            r#"{"id":"r1","rating":3,"tenant":"x"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("tenant"), "{}", e.message);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = prep("llm.feedback", r#"{"id":"r1","rating":12}"#).unwrap_err();
        assert!(e.message.contains("`rating`"), "{}", e.message);
        assert_eq!(e.id, "r1");
        let e = prep("llm.feedback", r#"{"id":"r1"}"#).unwrap_err();
        assert!(e.message.contains("rating"), "{}", e.message);
        let e = prep("llm.feedback", r#"{"id":"r 1","rating":"good"}"#).unwrap_err();
        assert!(e.message.contains("`id`"), "{}", e.message);
        let e = prep("llm.feedback", "not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }
}
