//! Publish to a stream and wait for JetStream's ack, retrying a few times:
//! the one implementation every service uses before it acks the message it
//! is working on (JetStream leader changes and short outages should not turn
//! into a redelivery and a second generation).

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::publish::PublishAck;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::BusError;

/// Tries after the first one.
const RETRIES: u32 = 3;
/// Wait before the first retry; doubled each time.
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// Publishes `payload` with `headers` to `subject` and waits for the
/// stream's ack, retrying with backoff. `what` names the message in logs.
pub async fn durable(
    js: &jetstream::Context,
    what: &str,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<(), BusError> {
    with_retries(what, || once(js, subject, headers.clone(), payload.clone())).await
}

/// One publish and its ack, no retry.
pub async fn once(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<(), BusError> {
    acked(js, subject, headers, payload).await.map(drop)
}

/// One publish, returning the stream's ack (which says, for one, whether
/// the stream dropped the message as a duplicate of its `Nats-Msg-Id`).
pub async fn acked(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAck, BusError> {
    js.publish_with_headers(subject.to_string(), headers, payload)
        .await
        .map_err(|e| BusError::js(format!("publish to {subject}"), e))?
        .await
        .map_err(|e| match full_stream_refusal(&e) {
            Some(detail) => BusError::QueueFull {
                subject: subject.to_string(),
                detail,
            },
            None => BusError::js(format!("ack of publish to {subject}"), e),
        })
}

/// The server's reason when a stream refused a message for being at its
/// `max_msgs` or `max_bytes` (discard-new): NATS answers error code 10077
/// with `maximum messages exceeded` or `maximum bytes exceeded`.
pub fn full_stream_refusal(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            let text = js.to_string();
            let full = js.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED
                && (text.contains("maximum messages exceeded")
                    || text.contains("maximum bytes exceeded"));
            return full.then_some(text);
        }
        cause = e.source();
    }
    None
}

/// Runs `publish` until it succeeds or has failed `1 + RETRIES` times.
pub async fn with_retries<F, Fut>(what: &str, mut publish: F) -> Result<(), BusError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), BusError>>,
{
    let mut wait = FIRST_WAIT;
    let mut tries = 0;
    loop {
        match publish().await {
            Ok(()) => return Ok(()),
            Err(e) if tries < RETRIES => {
                tries += 1;
                tracing::warn!(error = %e, tries, "{what} not published; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(json: &str) -> jetstream::Error {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_stream_at_its_limits_is_told_apart_from_other_failures() {
        for reason in ["maximum messages exceeded", "maximum bytes exceeded"] {
            let e = server_error(&format!(
                r#"{{"code":503,"err_code":10077,"description":"{reason}"}}"#
            ));
            let detail = full_stream_refusal(&e).expect("a full stream");
            assert!(detail.contains(reason), "{detail}");
        }
        let other_store_failure =
            server_error(r#"{"code":503,"err_code":10077,"description":"disk full"}"#);
        assert_eq!(full_stream_refusal(&other_store_failure), None);
        let not_found =
            server_error(r#"{"code":404,"err_code":10059,"description":"stream not found"}"#);
        assert_eq!(full_stream_refusal(&not_found), None);
    }
}
