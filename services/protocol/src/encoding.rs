//! MessagePack (default) and JSON encodings.
//!
//! MessagePack is written with named fields (maps, not arrays) so any
//! language's msgpack library decodes it into a dictionary. JSON is chosen
//! per message by the `Content-Type: application/json` header and answered
//! in kind. Unknown fields are ignored; a missing or ill-typed field gives a
//! [`DecodeError`] that names it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::SCHEMA_VERSION;

/// A payload encoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// MessagePack with named fields.
    #[default]
    MsgPack,
    /// UTF-8 JSON.
    Json,
}

impl Encoding {
    /// The encoding a `Content-Type` header value selects; absent or
    /// anything but JSON means MessagePack.
    pub fn from_content_type(value: Option<&str>) -> Self {
        match value {
            Some(v)
                if v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case(crate::headers::JSON_MIME)) =>
            {
                Encoding::Json
            }
            _ => Encoding::MsgPack,
        }
    }

    /// The encoding of a payload that may come without a `Content-Type`
    /// (`nats req subject '{...}'`): the header when present, else JSON when
    /// the payload starts with `{` — a MessagePack map never does (0x7b is a
    /// bare integer) — else MessagePack.
    pub fn sniff(content_type: Option<&str>, payload: &[u8]) -> Self {
        if content_type.is_some() {
            return Self::from_content_type(content_type);
        }
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Encoding::Json,
            _ => Encoding::MsgPack,
        }
    }

    /// The `Content-Type` header value for this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::MsgPack => crate::headers::MSGPACK_MIME,
            Encoding::Json => crate::headers::JSON_MIME,
        }
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid MessagePack/JSON, or not a map at the top.
    #[error("malformed {encoding:?} payload: {reason}")]
    Malformed {
        /// The encoding tried.
        encoding: Encoding,
        /// The parser's complaint.
        reason: String,
    },
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// Dotted path of the field.
        field: String,
    },
    /// A field has the wrong type or an invalid value.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// Dotted path of the field.
        field: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A schema version this build does not speak.
    #[error("unsupported schema version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version in the message.
        found: u64,
        /// The version this build speaks.
        supported: u32,
    },
}

impl DecodeError {
    /// The error code a client or dead letter gets for this failure: one
    /// mapping for every service that decodes a message.
    pub fn error_code(&self) -> crate::ErrorCode {
        match self {
            DecodeError::UnsupportedVersion { .. } => crate::ErrorCode::UnsupportedVersion,
            _ => crate::ErrorCode::InvalidRequest,
        }
    }
}

/// Encodes a message.
pub fn encode<T: Serialize>(encoding: Encoding, value: &T) -> Vec<u8> {
    match encoding {
        // Serializing our own types to a Vec cannot fail: every map key is a
        // string and no type has a custom fallible Serialize.
        Encoding::MsgPack => {
            rmp_serde::to_vec_named(value).expect("msgpack encoding of a protocol type")
        }
        Encoding::Json => serde_json::to_vec(value).expect("json encoding of a protocol type"),
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    #[serde(default)]
    version: Option<serde_json::Value>,
}

/// Decodes a message, checking its `version` first so a message from a
/// newer schema is reported as such rather than as a confusing field error.
pub fn decode<T: DeserializeOwned>(encoding: Encoding, bytes: &[u8]) -> Result<T, DecodeError> {
    let probe: VersionProbe = decode_fields(encoding, bytes)?;
    if let Some(v) = probe.version {
        match v.as_u64() {
            Some(n) if n == SCHEMA_VERSION as u64 => {}
            Some(n) => {
                return Err(DecodeError::UnsupportedVersion {
                    found: n,
                    supported: SCHEMA_VERSION,
                })
            }
            None => {
                return Err(DecodeError::InvalidField {
                    field: "version".into(),
                    reason: format!("expected an unsigned integer, got {v}"),
                })
            }
        }
    }
    decode_fields(encoding, bytes)
}

fn decode_fields<T: DeserializeOwned>(encoding: Encoding, bytes: &[u8]) -> Result<T, DecodeError> {
    match encoding {
        Encoding::MsgPack => {
            if !starts_with_msgpack_map(bytes) {
                return Err(DecodeError::Malformed {
                    encoding,
                    reason: "expected a MessagePack map with named fields at the top level".into(),
                });
            }
            let mut de = rmp_serde::Deserializer::new(bytes);
            serde_path_to_error::deserialize(&mut de).map_err(|e| classify(encoding, e))
        }
        Encoding::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                if e.inner().is_syntax() || e.inner().is_eof() {
                    DecodeError::Malformed {
                        encoding,
                        reason: e.inner().to_string(),
                    }
                } else {
                    classify(encoding, e)
                }
            })?;
            de.end().map_err(|e| DecodeError::Malformed {
                encoding,
                reason: e.to_string(),
            })?;
            Ok(value)
        }
    }
}

fn starts_with_msgpack_map(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

fn classify<E: std::fmt::Display>(
    encoding: Encoding,
    err: serde_path_to_error::Error<E>,
) -> DecodeError {
    let path = err.path().to_string();
    let message = err.inner().to_string();
    if let Some(field) = missing_field_name(&message) {
        let field = if path == "." || path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return DecodeError::MissingField { field };
    }
    if path == "." || path.is_empty() {
        return DecodeError::Malformed {
            encoding,
            reason: message,
        };
    }
    DecodeError::InvalidField {
        field: path,
        reason: strip_position(&message),
    }
}

fn missing_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// serde_json appends " at line 1 column 17"; the field path already says
/// where.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Request, Tier, UsageEvent};

    #[test]
    fn a_payload_without_content_type_is_sniffed() {
        let json = br#" {"prompt":"hi"}"#;
        assert_eq!(Encoding::sniff(None, json), Encoding::Json);
        let request = Request::from_prompt("hi");
        let msgpack = encode(Encoding::MsgPack, &request);
        assert_eq!(Encoding::sniff(None, &msgpack), Encoding::MsgPack);
        assert_eq!(Encoding::sniff(None, b""), Encoding::MsgPack);
        assert_eq!(
            Encoding::sniff(Some("application/msgpack"), json),
            Encoding::MsgPack,
            "the header wins"
        );
    }

    #[test]
    fn content_type_selects_json_only_for_json() {
        assert_eq!(
            Encoding::from_content_type(Some("application/json")),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some("Application/JSON; charset=utf-8")),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some("application/msgpack")),
            Encoding::MsgPack
        );
        assert_eq!(Encoding::from_content_type(None), Encoding::MsgPack);
    }

    #[test]
    fn request_round_trips_in_both_encodings() {
        let mut req = Request::from_prompt("hello");
        req.id = "r1".into();
        req.max_tokens = Some(16);
        req.tier = Some(2);
        for enc in [Encoding::MsgPack, Encoding::Json] {
            let bytes = encode(enc, &req);
            let back: Request = decode(enc, &bytes).unwrap();
            assert_eq!(back, req);
        }
    }

    #[test]
    fn msgpack_uses_named_fields() {
        let bytes = encode(Encoding::MsgPack, &Request::from_prompt("x"));
        let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(value["prompt"], "x");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let req: Request =
            decode(Encoding::Json, br#"{"prompt":"hi","future_field":[1,2]}"#).unwrap();
        assert_eq!(req.prompt.as_deref(), Some("hi"));
    }

    #[test]
    fn missing_field_is_named() {
        let err = decode::<UsageEvent>(Encoding::Json, br#"{"id":"a","attempt":1}"#).unwrap_err();
        assert!(
            matches!(err, DecodeError::MissingField { ref field } if field == "tier"),
            "{err:?}"
        );
    }

    #[test]
    fn ill_typed_field_is_named() {
        let err = decode::<Request>(Encoding::Json, br#"{"prompt":"hi","max_tokens":"many"}"#)
            .unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidField { ref field, .. } if field == "max_tokens"),
            "{err:?}"
        );
        let bytes = rmp_serde::to_vec_named(&serde_json::json!({"prompt": 5})).unwrap();
        let err = decode::<Request>(Encoding::MsgPack, &bytes).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidField { ref field, .. } if field == "prompt"),
            "{err:?}"
        );
    }

    #[test]
    fn nested_invalid_value_is_named_with_its_path() {
        let err = decode::<UsageEvent>(
            Encoding::Json,
            br#"{"id":"a","attempt":1,"tier":3,"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2},"status":"ok","total_ms":1,"finished_at_ms":1}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidField { ref field, .. } if field == "tier"),
            "{err:?}"
        );
        let _ = Tier::Small;
    }

    #[test]
    fn malformed_payloads_are_reported_as_such() {
        assert!(matches!(
            decode::<Request>(Encoding::Json, b"{not json"),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            decode::<Request>(Encoding::MsgPack, b"\x93\x01\x02\x03"),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            decode::<Request>(Encoding::MsgPack, b""),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn unknown_version_is_reported_before_field_errors() {
        let err = decode::<Request>(Encoding::Json, br#"{"version":7,"prompt":12}"#).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnsupportedVersion {
                found: 7,
                supported: SCHEMA_VERSION
            }
        );
        let err = decode::<Request>(Encoding::Json, br#"{"version":"one"}"#).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidField { ref field, .. } if field == "version"));
    }
}
