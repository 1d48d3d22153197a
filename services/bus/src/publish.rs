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

/// Tries after the first one: about 9 s of waiting in all, enough for a
/// cluster to elect new stream leaders after a node dies (the chaos suite
/// saw "no stream found" answers for several seconds from a restarted node).
const RETRIES: u32 = 8;
/// A full stream is told to the caller sooner: it is not going away.
const FULL_RETRIES: u32 = 3;
/// Wait before the first retry; doubled each time up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(2);
/// No new try starts this long after the first: a try that times out
/// (JetStream's 10 s request timeout, a node that died under the
/// connection) would otherwise stretch the retries to minutes, with the
/// message kept alive by in-progress acks and its reply waiting.
const PATIENCE: Duration = Duration::from_secs(10);

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

/// Runs `publish` until it succeeds or has failed `1 + RETRIES` times
/// (`1 + FULL_RETRIES` when the stream is full), starting no try after
/// [`PATIENCE`]. Also for reads whose
/// failure would be taken for "not there" (a finished-ids look-up): it
/// returns what the successful try returned.
pub async fn with_retries<T, F, Fut>(what: &str, mut publish: F) -> Result<T, BusError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BusError>>,
{
    let mut wait = FIRST_WAIT;
    let mut tries = 0;
    let started = tokio::time::Instant::now();
    loop {
        match publish().await {
            Ok(value) => return Ok(value),
            Err(e) if tries < retries_for(&e) && started.elapsed() < PATIENCE => {
                tries += 1;
                tracing::warn!(error = %e, tries, "{what} failed; retrying");
                crate::failover::suspect(&e.to_string()).await;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_WAIT);
            }
            Err(e) => return Err(e),
        }
    }
}

fn retries_for(e: &BusError) -> u32 {
    match e {
        BusError::QueueFull { .. } => FULL_RETRIES,
        _ => RETRIES,
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

    async fn tries_until_given_up(each_try: Duration) -> u32 {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let result: Result<(), BusError> = with_retries("test", || async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(each_try).await;
            Err(BusError::js("test", std::io::Error::other("no responders")))
        })
        .await;
        assert!(result.is_err());
        tries.into_inner()
    }

    #[tokio::test(start_paused = true)]
    async fn quick_failures_are_retried_and_slow_ones_stop_at_the_patience() {
        assert_eq!(tries_until_given_up(Duration::ZERO).await, 1 + RETRIES);
        // Tries that time out (10 s each): one, not nine minutes of them.
        assert_eq!(tries_until_given_up(Duration::from_secs(10)).await, 1);
        let started = tokio::time::Instant::now();
        tries_until_given_up(Duration::from_secs(3)).await;
        assert!(started.elapsed() < PATIENCE + Duration::from_secs(5));
    }
}
