//! Reading an incoming message's envelope: encoding, reply subject, trace
//! context and delivery count; and building outgoing headers.

use async_nats::HeaderMap;
use triage_protocol::{headers, Encoding, Namespace, ReplyPolicy, ReplySubjectError};

/// What a service needs to know about a message besides its payload.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The payload's encoding, from `Content-Type`; answers use the same.
    pub encoding: Encoding,
    /// The reply subject from the header or the NATS reply, not yet checked.
    pub reply_hint: Option<String>,
    /// How many times JetStream has delivered it (1 on first delivery).
    pub deliveries: u64,
    /// The subject it arrived on.
    pub subject: String,
    /// Its headers, for trace context and dead-lettering.
    pub headers: HeaderMap,
}

impl Envelope {
    /// Reads a JetStream message's envelope.
    pub fn of(message: &async_nats::jetstream::Message) -> Self {
        let headers = message.headers.clone().unwrap_or_default();
        let deliveries = message.info().map(|i| i.delivered as u64).unwrap_or(1);
        Self::from_parts(message.subject.to_string(), headers, deliveries)
    }

    /// Builds an envelope from its parts (core NATS messages, tests).
    pub fn from_parts(subject: String, headers: HeaderMap, deliveries: u64) -> Self {
        let encoding = Encoding::from_content_type(header(&headers, headers::CONTENT_TYPE));
        let reply_hint = header(&headers, headers::REPLY_TO).map(str::to_string);
        Self {
            encoding,
            reply_hint,
            deliveries,
            subject,
            headers,
        }
    }

    /// The reply subject for a request: its own `reply_to` field first, then
    /// the header, checked against the policy.
    pub fn reply_subject(
        &self,
        field: Option<&str>,
        policy: &ReplyPolicy,
        ns: &Namespace,
    ) -> Result<String, ReplySubjectError> {
        let subject = field
            .filter(|s| !s.is_empty())
            .or(self.reply_hint.as_deref())
            .ok_or(ReplySubjectError::Missing)?;
        policy.check(ns, subject)?;
        Ok(subject.to_string())
    }
}

/// A header's value as text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

/// Headers for a message Triage publishes: content type, the current trace
/// context and, when given, a JetStream de-duplication id.
pub fn outgoing(encoding: Encoding, msg_id: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, encoding.content_type());
    if let Some(id) = msg_id {
        h.insert(headers::MSG_ID, id);
    }
    crate::trace::inject_current(&mut h);
    h
}
