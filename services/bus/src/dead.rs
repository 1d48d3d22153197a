//! The dead-letter subject.
//!
//! A message that cannot be processed is republished to `llm.dead` verbatim
//! (payload and original headers), with `Triage-Dead-*` headers saying why,
//! from where and by whom; re-driving it is publishing the payload back to
//! `Triage-Dead-Subject`.

use async_nats::{jetstream, HeaderMap};
use triage_protocol::{headers, ErrorCode, Namespace};

use crate::BusError;

/// A message given up on.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The subject it was taken from.
    pub subject: &'a str,
    /// Its payload, verbatim.
    pub payload: &'a [u8],
    /// Its headers, kept (trace context, content type).
    pub headers: Option<&'a async_nats::HeaderMap>,
    /// Why, for a person.
    pub reason: &'a str,
    /// The error code.
    pub code: ErrorCode,
    /// The service that gave up.
    pub service: &'a str,
    /// Deliveries so far.
    pub deliveries: u64,
}

/// The original's headers without JetStream's own `Nats-*` ones: a copied
/// `Nats-Msg-Id` would make the dead-letter stream drop a second dead letter
/// of the same request as a duplicate, and a client-supplied
/// `Nats-Expected-*` could make the publish itself fail.
fn client_headers(original: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, values) in original.iter() {
        let name_str: &str = name.as_ref();
        if name_str.to_ascii_lowercase().starts_with("nats-") {
            continue;
        }
        for value in values {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

impl DeadLetter<'_> {
    /// Publishes to `llm.dead` and waits for JetStream's ack, so the caller
    /// may then ack the original safely.
    pub async fn publish(&self, js: &jetstream::Context, ns: &Namespace) -> Result<(), BusError> {
        let mut h = self.headers.map(client_headers).unwrap_or_default();
        // Header values must be one line.
        let reason: String = self
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        h.insert(headers::DEAD_REASON, reason.as_str());
        h.insert(headers::DEAD_CODE, self.code.as_str());
        h.insert(headers::DEAD_SUBJECT, self.subject);
        h.insert(headers::DEAD_SERVICE, self.service);
        h.insert(
            headers::DEAD_DELIVERIES,
            self.deliveries.to_string().as_str(),
        );
        // One try: each caller decides whether a failure is retried here
        // (`publish::with_retries`) or the original is handed back.
        let payload = bytes::Bytes::copy_from_slice(self.payload);
        crate::publish::once(js, &ns.dead(), h, payload).await
    }
}
