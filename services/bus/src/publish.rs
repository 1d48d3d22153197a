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
        .map_err(|e| BusError::js(format!("ack of publish to {subject}"), e))
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
