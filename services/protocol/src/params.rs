//! `Request::params`: generation options passed to the backend as they are,
//! under their OpenAI/vLLM names (`top_p`, `stop`, `seed`,
//! `response_format`, vLLM's `top_k`, …).
//!
//! The options Triage understands are checked here, once, for every door
//! (the router for NATS clients, the gateway for HTTP ones), so a bad value
//! is refused naming its field instead of reaching the backend as a 400 on
//! every retry. Fields Triage sets itself cannot be given here.

use std::collections::BTreeMap;

use serde_json::Value;

/// Fields the request carries itself (or Triage decides): never in `params`.
pub const RESERVED: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
];

/// A refused option: its name (a key of `params`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct InvalidParam {
    /// The key in `params` (`top_p`, `response_format.type`).
    pub field: String,
    /// What is wrong, for a person.
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> InvalidParam {
    InvalidParam {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn number_in(v: &Value, field: &str, lo: f64, hi: f64) -> Result<(), InvalidParam> {
    match v.as_f64() {
        Some(x) if (lo..=hi).contains(&x) => Ok(()),
        _ => Err(invalid(
            field,
            format!("must be a number from {lo} to {hi}"),
        )),
    }
}

fn stop(v: &Value) -> Result<(), InvalidParam> {
    let ok = match v {
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => {
            (1..=4).contains(&a.len())
                && a.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty()))
        }
        _ => false,
    };
    ok.then_some(())
        .ok_or_else(|| invalid("stop", "must be a non-empty string or 1 to 4 of them"))
}

fn response_format(v: &Value) -> Result<(), InvalidParam> {
    let Some(kind) = v.get("type").and_then(Value::as_str) else {
        return Err(invalid(
            "response_format.type",
            "must be \"text\", \"json_object\" or \"json_schema\"",
        ));
    };
    match kind {
        "text" | "json_object" => Ok(()),
        "json_schema" => match v.get("json_schema").and_then(|s| s.get("schema")) {
            Some(Value::Object(_)) => Ok(()),
            _ => Err(invalid(
                "response_format.json_schema.schema",
                "must be a JSON Schema object",
            )),
        },
        other => Err(invalid(
            "response_format.type",
            format!("{other:?} is not \"text\", \"json_object\" or \"json_schema\""),
        )),
    }
}

/// Checks one option.
fn check_one(field: &str, v: &Value) -> Result<(), InvalidParam> {
    if RESERVED.contains(&field) {
        return Err(invalid(
            field,
            "is a field of the request itself, not a param",
        ));
    }
    match field {
        "top_p" => number_in(v, field, 0.0, 1.0),
        "presence_penalty" | "frequency_penalty" => number_in(v, field, -2.0, 2.0),
        "seed" if v.is_i64() || v.is_u64() => Ok(()),
        "seed" => Err(invalid(field, "must be an integer")),
        "stop" => stop(v),
        "logprobs" if v.is_boolean() => Ok(()),
        "logprobs" => Err(invalid(field, "must be a boolean")),
        "top_logprobs" => number_in(v, field, 0.0, 20.0).and_then(|()| {
            v.is_u64()
                .then_some(())
                .ok_or_else(|| invalid(field, "must be an integer from 0 to 20"))
        }),
        "response_format" => response_format(v),
        _ => Ok(()),
    }
}

/// Checks every option (`null` values are refused: omit the field instead).
pub fn check(params: &BTreeMap<String, Value>) -> Result<(), InvalidParam> {
    for (field, v) in params {
        if v.is_null() {
            return Err(invalid(field, "is null: omit it instead"));
        }
        check_one(field, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    fn refused(v: Value) -> String {
        check(&params(v)).unwrap_err().field
    }

    #[test]
    fn known_options_in_range_and_unknown_ones_pass() {
        check(&params(json!({
            "top_p": 0.9, "stop": ["\n\n", "END"], "seed": 7, "presence_penalty": -1.5,
            "frequency_penalty": 2, "logprobs": true, "top_logprobs": 5,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            "top_k": 40, "repetition_penalty": 1.1
        })))
        .unwrap();
        check(&params(
            json!({"stop": "END", "response_format": {"type": "json_object"}}),
        ))
        .unwrap();
    }

    #[test]
    fn each_bad_option_is_named() {
        assert_eq!(refused(json!({"top_p": 1.5})), "top_p");
        assert_eq!(refused(json!({"top_p": "high"})), "top_p");
        assert_eq!(refused(json!({"stop": []})), "stop");
        assert_eq!(refused(json!({"stop": ["a", "b", "c", "d", "e"]})), "stop");
        assert_eq!(refused(json!({"stop": [1]})), "stop");
        assert_eq!(refused(json!({"seed": 1.5})), "seed");
        assert_eq!(
            refused(json!({"frequency_penalty": -3})),
            "frequency_penalty"
        );
        assert_eq!(refused(json!({"logprobs": "yes"})), "logprobs");
        assert_eq!(refused(json!({"top_logprobs": 21})), "top_logprobs");
        assert_eq!(refused(json!({"top_logprobs": 2.5})), "top_logprobs");
        assert_eq!(
            refused(json!({"response_format": {"type": "xml"}})),
            "response_format.type"
        );
        assert_eq!(
            refused(json!({"response_format": {"type": "json_schema", "json_schema": {}}})),
            "response_format.json_schema.schema"
        );
        assert_eq!(refused(json!({"top_k": null})), "top_k");
    }

    #[test]
    fn the_requests_own_fields_cannot_be_params() {
        for field in RESERVED {
            assert_eq!(refused(json!({ *field: 1 })), *field);
        }
    }
}
