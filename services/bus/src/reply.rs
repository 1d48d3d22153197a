//! Answering on a client's reply subject.

use async_nats::Client;
use triage_protocol::{encode, Encoding, Reply};

use crate::BusError;

/// Publishes `reply` to `subject` (already checked against the reply
/// policy) in the client's encoding. Core NATS: the client listens on an
/// inbox, and the final message is also recorded durably by the worker.
pub async fn send(
    client: &Client,
    subject: &str,
    encoding: Encoding,
    reply: &Reply,
) -> Result<(), BusError> {
    let headers = crate::envelope::outgoing(encoding, None);
    client
        .publish_with_headers(subject.to_string(), headers, encode(encoding, reply).into())
        .await
        .map_err(|e| BusError::Publish {
            subject: subject.to_string(),
            detail: e.to_string(),
        })
}
