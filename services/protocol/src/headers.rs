//! NATS header names Triage reads and writes. Values are plain ASCII so any
//! client library can set them.

/// `application/json` selects JSON; anything else (or none) means MessagePack.
pub const CONTENT_TYPE: &str = "Content-Type";
/// The MIME type for JSON payloads.
pub const JSON_MIME: &str = "application/json";
/// The MIME type for MessagePack payloads (what Triage writes by default).
pub const MSGPACK_MIME: &str = "application/msgpack";
/// Where the answer goes when the client publishes with JetStream (which
/// has no reply subject of its own) and did not set `reply_to` in the body.
pub const REPLY_TO: &str = "Triage-Reply-To";
/// W3C trace context, carried on every hop.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state, carried with `traceparent` when present.
pub const TRACESTATE: &str = "tracestate";
/// JetStream's de-duplication key.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// On `llm.dead`: why the message could not be processed.
pub const DEAD_REASON: &str = "Triage-Dead-Reason";
/// On `llm.dead`: the error code (see [`crate::ErrorCode`]).
pub const DEAD_CODE: &str = "Triage-Dead-Code";
/// On `llm.dead`: the subject the message was taken from (re-drive target).
pub const DEAD_SUBJECT: &str = "Triage-Dead-Subject";
/// On `llm.dead`: which service gave up on it.
pub const DEAD_SERVICE: &str = "Triage-Dead-Service";
/// On `llm.dead`: how many times it had been delivered.
pub const DEAD_DELIVERIES: &str = "Triage-Dead-Deliveries";
