//! One dead letter as an operator sees it: why, from where, by whom, when —
//! read from its `Triage-Dead-*` headers — and what re-driving it publishes.

use async_nats::HeaderMap;
use serde::Serialize;
use triage_protocol::{headers, Encoding};

/// A dead letter's facts (its payload stays in the stream).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Letter {
    /// Its sequence number in the dead-letter stream: how to name it.
    pub seq: u64,
    /// When it was dead-lettered, Unix seconds.
    pub time: i64,
    /// `Triage-Dead-Code`: an `ErrorCode`.
    pub code: String,
    /// `Triage-Dead-Service`: the service that gave up.
    pub service: String,
    /// `Triage-Dead-Subject`: where it was taken from (the re-drive target).
    pub subject: String,
    /// `Triage-Dead-Reason`: why, for a person.
    pub reason: String,
    /// `Triage-Dead-Deliveries`.
    pub deliveries: u64,
    /// Payload size in bytes.
    pub bytes: usize,
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

impl Letter {
    /// Reads the facts of the message at `seq`.
    pub fn read(seq: u64, time: i64, h: &HeaderMap, payload_len: usize) -> Self {
        Self {
            seq,
            time,
            code: header(h, headers::DEAD_CODE),
            service: header(h, headers::DEAD_SERVICE),
            subject: header(h, headers::DEAD_SUBJECT),
            reason: header(h, headers::DEAD_REASON),
            deliveries: header(h, headers::DEAD_DELIVERIES).parse().unwrap_or(0),
            bytes: payload_len,
        }
    }

    /// One line of `list`.
    pub fn line(&self) -> String {
        let when = chrono::DateTime::from_timestamp(self.time, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        format!(
            "{:>8}  {when}  {:<24} {:<14} {:<18} {}",
            self.seq, self.code, self.service, self.subject, self.reason
        )
    }
}

/// The header line of `list`.
pub const LIST_HEADER: &str =
    "     seq  time                  code                     service        subject            reason";

/// The headers a re-driven message is published with: the original's, as
/// kept in the dead letter, without `Triage-Dead-*` (and without any
/// JetStream `Nats-*` header, which would make the publish be taken as a
/// duplicate or fail an expectation).
pub fn redrive_headers(dead: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, values) in dead.iter() {
        let name_str: &str = name.as_ref();
        let lower = name_str.to_ascii_lowercase();
        if lower.starts_with("triage-dead-") || lower.starts_with("nats-") {
            continue;
        }
        for value in values {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// The payload for `show`: JSON as it is, MessagePack decoded to JSON, and
/// anything undecodable as a note with its size.
pub fn readable_payload(h: &HeaderMap, payload: &[u8]) -> String {
    let content_type = h.get(headers::CONTENT_TYPE).map(|v| v.as_str());
    let value: Option<serde_json::Value> = match Encoding::sniff(content_type, payload) {
        Encoding::Json => serde_json::from_slice(payload).ok(),
        Encoding::MsgPack => rmp_serde::from_slice(payload).ok(),
    };
    match value {
        Some(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        None => match std::str::from_utf8(payload) {
            Ok(text) => text.to_string(),
            Err(_) => format!("<{} bytes, not JSON, MessagePack or UTF-8>", payload.len()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(headers::CONTENT_TYPE, "application/json");
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        h.insert(headers::DEAD_CODE, "invalid_request");
        h.insert(headers::DEAD_SERVICE, "router");
        h.insert(headers::DEAD_SUBJECT, "llm.requests");
        h.insert(headers::DEAD_REASON, "missing field `prompt`");
        h.insert(headers::DEAD_DELIVERIES, "1");
        h.insert("Nats-Msg-Id", "r-1");
        h
    }

    #[test]
    fn the_facts_come_from_the_dead_headers() {
        let l = Letter::read(7, 1_764_000_000, &dead_headers(), 12);
        assert_eq!(
            (l.code.as_str(), l.service.as_str(), l.subject.as_str()),
            ("invalid_request", "router", "llm.requests")
        );
        assert_eq!(l.deliveries, 1);
        assert!(l.line().contains("2025-11-24T16:00:00Z"), "{}", l.line());
    }

    #[test]
    fn redrive_keeps_the_originals_headers_only() {
        let h = redrive_headers(&dead_headers());
        assert_eq!(
            h.get(headers::CONTENT_TYPE).unwrap().as_str(),
            "application/json"
        );
        assert!(h.get("traceparent").is_some());
        assert!(h.get(headers::DEAD_CODE).is_none());
        assert!(h.get(headers::DEAD_SUBJECT).is_none());
        assert!(h.get("Nats-Msg-Id").is_none());
    }

    #[test]
    fn payloads_are_shown_as_json() {
        let mut h = HeaderMap::new();
        let msgpack = rmp_serde::to_vec_named(&serde_json::json!({"prompt": "hi"})).unwrap();
        assert!(readable_payload(&h, &msgpack).contains("\"prompt\": \"hi\""));
        h.insert(headers::CONTENT_TYPE, "application/json");
        assert!(readable_payload(&h, br#"{"a":1}"#).contains("\"a\": 1"));
        assert!(readable_payload(&h, &[0xff, 0xfe]).contains("2 bytes"));
    }
}
