//! OpenAI request bodies → Triage's protocol `Request`.
//!
//! The body is read as JSON once and each field is checked by hand, so every
//! error names the field at fault (`messages[2].content`), as OpenAI's do.
//! Generation options (`top_p`, `stop`, `seed`, `response_format`, and any
//! field this module does not know, e.g. vLLM's `top_k`) travel in the
//! request's `params` to the backend, checked by the protocol's one check.
//! The few the pipeline cannot honour yet (tools, logprobs in the answer,
//! completions-only options) are accepted and listed in
//! [`Parsed::ignored`], never silently dropped.

use serde_json::{Map, Value};
use triage_protocol::{ChatMessage, Request};

use crate::error::ApiError;

/// Which OpenAI endpoint a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions` (prompt form).
    Completions,
}

impl Endpoint {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completions => "completions",
        }
    }

    /// `e` with its `param` named as this endpoint names the input: the
    /// pipeline's prompt errors say `messages`, which a completions client
    /// sent as `prompt`.
    pub fn name_input(self, mut e: ApiError) -> ApiError {
        if self == Endpoint::Completions && e.param.as_deref() == Some("messages") {
            e.param = Some("prompt".into());
        }
        e
    }

    /// Fields mapped to the protocol; every other field is ignored.
    fn mapped(self) -> &'static [&'static str] {
        match self {
            Endpoint::Chat => &[
                "model",
                "messages",
                "max_tokens",
                "max_completion_tokens",
                "temperature",
                "stream",
                "stream_options",
                "n",
                "user",
            ],
            Endpoint::Completions => &[
                "model",
                "prompt",
                "max_tokens",
                "temperature",
                "stream",
                "stream_options",
                "n",
                "user",
            ],
        }
    }
}

/// Fields accepted but not honoured yet: the answer cannot carry tool calls,
/// and the worker always uses the backend's chat endpoint.
const NOT_FORWARDED: &[&str] = &[
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "suffix",
    "echo",
    "best_of",
    "store",
    "metadata",
    "modalities",
    "audio",
    "prediction",
    "service_tier",
];

/// A body read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The model asked for (not yet looked up).
    pub model: String,
    /// The protocol request, without id, tier, deadline or reply subject.
    pub request: Request,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Fields accepted but not honoured yet, sorted.
    pub ignored: Vec<String>,
}

/// The model used when a body names none (vLLM's behaviour; OpenAI's SDKs
/// always send one).
pub const DEFAULT_MODEL: &str = crate::models::AUTO;

/// Reads `body` sent to `endpoint`.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(None, "the body must be a JSON object"));
    };
    let model = opt_str(&map, "model")?.unwrap_or(DEFAULT_MODEL).to_string();
    let stream = opt_bool(&map, "stream")?.unwrap_or(false);
    let include_usage = stream_options(&map, stream)?;
    let n = opt_u32(&map, "n")?.unwrap_or(1);
    if n == 0 {
        return Err(ApiError::invalid(Some("n"), "`n` must be at least 1"));
    }
    if n > 1 && stream {
        return Err(ApiError::invalid(
            Some("n"),
            "`n` > 1 cannot be streamed: ask for n = 1 or stream = false",
        ));
    }
    let mut request = Request {
        stream,
        n,
        max_tokens: max_tokens(&map, endpoint)?,
        temperature: temperature(&map)?,
        ..Request::default()
    };
    match endpoint {
        Endpoint::Chat => request.messages = Some(messages(&map)?),
        Endpoint::Completions => request.prompt = Some(prompt(&map)?),
    }
    // `user` identifies an end user for the client's own records; it is not
    // the tenant (that will come from the API key), so it is metadata.
    if let Some(user) = opt_str(&map, "user")? {
        request.metadata.insert("user".into(), Value::from(user));
    }
    let mapped = endpoint.mapped();
    let mut ignored = Vec::new();
    for (name, value) in &map {
        if mapped.contains(&name.as_str()) || value.is_null() {
            continue;
        }
        // The other endpoint's input (`messages` sent to /v1/completions) is
        // ignored too: it is no backend option.
        let reserved = triage_protocol::params::RESERVED.contains(&name.as_str());
        if reserved || NOT_FORWARDED.contains(&name.as_str()) {
            ignored.push(name.clone());
        } else {
            request.params.insert(name.clone(), value.clone());
        }
    }
    triage_protocol::params::check(&request.params)
        .map_err(|e| ApiError::invalid(Some(&e.field), format!("`{}` {}", e.field, e.reason)))?;
    Ok(Parsed {
        model,
        request,
        include_usage,
        ignored,
    })
}

/// A field's value, treating JSON `null` as absent.
fn field<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).filter(|v| !v.is_null())
}

fn wrong_type(name: &str, expected: &str, got: &Value) -> ApiError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::invalid(
        Some(name),
        format!("`{name}` must be {expected}, got {got}"),
    )
}

fn opt_str<'a>(map: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match field(map, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(name, "a string", v)),
    }
}

fn opt_bool(map: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match field(map, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(name, "a boolean", v)),
    }
}

fn opt_u32(map: &Map<String, Value>, name: &str) -> Result<Option<u32>, ApiError> {
    match field(map, name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| wrong_type(name, "a non-negative integer", v)),
    }
}

fn stream_options(map: &Map<String, Value>, stream: bool) -> Result<bool, ApiError> {
    let Some(options) = field(map, "stream_options") else {
        return Ok(false);
    };
    let Value::Object(options) = options else {
        return Err(wrong_type("stream_options", "an object", options));
    };
    if !stream {
        return Err(ApiError::invalid(
            Some("stream_options"),
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    match field(options, "include_usage") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(wrong_type("stream_options.include_usage", "a boolean", v)),
    }
}

fn max_tokens(map: &Map<String, Value>, endpoint: Endpoint) -> Result<Option<u32>, ApiError> {
    // The newer name wins, as in OpenAI's API (which deprecated `max_tokens`).
    let (name, value) = match (endpoint, opt_u32(map, "max_completion_tokens")?) {
        (Endpoint::Chat, Some(v)) => ("max_completion_tokens", Some(v)),
        _ => ("max_tokens", opt_u32(map, "max_tokens")?),
    };
    match value {
        Some(0) => Err(ApiError::invalid(
            Some(name),
            format!("`{name}` must be at least 1"),
        )),
        v => Ok(v),
    }
}

fn temperature(map: &Map<String, Value>) -> Result<Option<f32>, ApiError> {
    match field(map, "temperature") {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => Ok(Some(t as f32)),
            Some(_) => Err(ApiError::invalid(
                Some("temperature"),
                "`temperature` must be between 0 and 2",
            )),
            None => Err(wrong_type("temperature", "a number", v)),
        },
    }
}

fn messages(map: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let value = field(map, "messages")
        .ok_or_else(|| ApiError::invalid(Some("messages"), "`messages` is required"))?;
    let Value::Array(items) = value else {
        return Err(wrong_type("messages", "an array of messages", value));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` must hold at least one message",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| message(&format!("messages[{i}]"), m))
        .collect()
}

fn message(path: &str, value: &Value) -> Result<ChatMessage, ApiError> {
    let Value::Object(m) = value else {
        return Err(wrong_type(path, "an object", value));
    };
    let role_path = format!("{path}.role");
    let role = match field(m, "role") {
        None => {
            return Err(ApiError::invalid(
                Some(&role_path),
                format!("`{role_path}` is required"),
            ))
        }
        Some(Value::String(r)) => r.as_str(),
        Some(v) => return Err(wrong_type(&role_path, "a string", v)),
    };
    let role = match role {
        // OpenAI's newer name for the system role; chat templates know `system`.
        "developer" => "system",
        "system" | "user" | "assistant" | "tool" => role,
        other => {
            return Err(ApiError::invalid(
                Some(&role_path),
                format!(
                "`{role_path}` must be system, developer, user, assistant or tool, got {other:?}"
            ),
            ))
        }
    };
    let content = content(&format!("{path}.content"), field(m, "content"))?;
    Ok(ChatMessage {
        role: role.to_string(),
        content,
    })
}

/// A string, or content parts of which only text parts are supported
/// (joined with newlines, as vLLM does); absent content (an assistant's tool
/// call) is empty text.
fn content(path: &str, value: Option<&Value>) -> Result<String, ApiError> {
    let parts = match value {
        None => return Ok(String::new()),
        Some(Value::String(s)) => return Ok(s.clone()),
        Some(Value::Array(parts)) => parts,
        Some(v) => return Err(wrong_type(path, "a string or an array of content parts", v)),
    };
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let part_path = format!("{path}[{j}]");
        let kind = part.get("type").and_then(Value::as_str);
        match (kind, part.get("text")) {
            (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
            (Some("text"), _) => {
                return Err(ApiError::invalid(
                    Some(&format!("{part_path}.text")),
                    format!("`{part_path}.text` must be a string"),
                ))
            }
            (Some(other), _) => {
                return Err(ApiError::invalid(
                    Some(&format!("{part_path}.type")),
                    format!("content parts of type {other:?} are not supported; only \"text\" is"),
                ))
            }
            (None, _) => {
                return Err(ApiError::invalid(
                    Some(&format!("{part_path}.type")),
                    format!("`{part_path}.type` is required"),
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}

/// `prompt`: a string, or an array holding one string.
fn prompt(map: &Map<String, Value>) -> Result<String, ApiError> {
    let value = field(map, "prompt")
        .ok_or_else(|| ApiError::invalid(Some("prompt"), "`prompt` is required"))?;
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(items) => match items.as_slice() {
            [Value::String(s)] => Ok(s.clone()),
            [_] | [] => Err(ApiError::invalid(
                Some("prompt"),
                "`prompt` must be a string (token-id prompts are not supported)",
            )),
            _ => Err(ApiError::invalid(
                Some("prompt"),
                "several prompts in one request are not supported yet: send one request per prompt",
            )),
        },
        v => Err(wrong_type("prompt", "a string", v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<Parsed, ApiError> {
        parse(Endpoint::Chat, body.to_string().as_bytes())
    }

    fn param_of(r: Result<Parsed, ApiError>) -> Option<String> {
        let e = r.expect_err("must be refused");
        assert_eq!(e.status.as_u16(), 400, "{e}");
        e.param
    }

    #[test]
    fn a_full_chat_body_maps_to_the_protocol() {
        let p = chat(serde_json::json!({
            "model": "triage-tier1",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": null},
            ],
            "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5,
            "stream": true, "stream_options": {"include_usage": true},
            "n": 1, "user": "u-1", "top_p": 0.9, "stop": ["\n"], "seed": 3,
            "response_format": {"type": "json_object"}, "top_k": 20, "tools": [], "logprobs": true
        }))
        .unwrap();
        assert_eq!(p.model, "triage-tier1");
        assert!(p.include_usage);
        let r = &p.request;
        assert!(r.stream);
        assert_eq!(r.max_tokens, Some(7), "max_completion_tokens wins");
        assert_eq!(r.temperature, Some(0.5));
        let m = r.messages.as_ref().unwrap();
        assert_eq!(m[0], ChatMessage::system("Be brief."));
        assert_eq!(m[1], ChatMessage::user("Hi\nthere"));
        assert_eq!(
            (m[2].role.as_str(), m[2].content.as_str()),
            ("assistant", "")
        );
        assert_eq!(r.metadata["user"], "u-1");
        assert_eq!(r.tenant, None, "the tenant never comes from the body");
        assert_eq!(r.params["top_p"], 0.9);
        assert_eq!(r.params["stop"], serde_json::json!(["\n"]));
        assert_eq!(r.params["seed"], 3);
        assert_eq!(r.params["response_format"]["type"], "json_object");
        assert_eq!(r.params["top_k"], 20, "unknown options are forwarded");
        assert_eq!(r.params["logprobs"], true, "streamed chunks carry them");
        assert_eq!(r.params.len(), 6, "{:?}", r.params);
        assert_eq!(p.ignored, ["tools"]);
    }

    #[test]
    fn bad_generation_options_are_named() {
        let refused = |extra: Value| {
            let mut body = serde_json::json!({"messages": [{"role": "user", "content": "x"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            chat(body).unwrap_err().param.unwrap()
        };
        assert_eq!(refused(serde_json::json!({"top_p": 2})), "top_p");
        assert_eq!(refused(serde_json::json!({"stop": 5})), "stop");
        assert_eq!(
            refused(serde_json::json!({"response_format": {"type": "yaml"}})),
            "response_format.type"
        );
    }

    #[test]
    fn defaults_are_openais_not_the_protocols() {
        let p = chat(serde_json::json!({"messages": [{"role": "user", "content": "x"}]})).unwrap();
        assert!(!p.request.stream, "OpenAI streams only when asked");
        assert_eq!(p.model, DEFAULT_MODEL);
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn each_error_names_its_field() {
        let base = |extra: Value| {
            let mut b =
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            chat(b)
        };
        assert_eq!(
            param_of(chat(serde_json::json!({"model": "m"}))).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"messages": []}))).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"messages": "hi"}))).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(base(
                serde_json::json!({"messages": [{"role": "user", "content": 5}]})
            ))
            .as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"messages": [{"content": "x"}]}))).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param_of(base(
                serde_json::json!({"messages": [{"role": "robot", "content": "x"}]})
            ))
            .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})))
                .as_deref(),
            Some("messages[0].content[0].type")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"model": 4}))).as_deref(),
            Some("model")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"stream": "yes"}))).as_deref(),
            Some("stream")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"max_tokens": -1}))).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"max_tokens": 0}))).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"temperature": 3}))).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param_of(base(serde_json::json!({"n": 2, "stream": true}))).as_deref(),
            Some("n")
        );
        assert_eq!(
            base(serde_json::json!({"n": 2})).unwrap().request.n,
            2,
            "whole answers may have several choices"
        );
        assert_eq!(
            param_of(base(
                serde_json::json!({"stream_options": {"include_usage": true}})
            ))
            .as_deref(),
            Some("stream_options")
        );
        let e = parse(Endpoint::Chat, b"{\"messages\": [").unwrap_err();
        assert!(
            e.param.is_none() && e.message.contains("not valid JSON"),
            "{e}"
        );
        assert!(parse(Endpoint::Chat, b"[1]").is_err());
    }

    #[test]
    fn prompt_errors_name_the_endpoints_input_field() {
        let e = || crate::error::from_code(triage_protocol::ErrorCode::EmptyPrompt, "none");
        assert_eq!(
            Endpoint::Completions.name_input(e()).param.as_deref(),
            Some("prompt")
        );
        assert_eq!(
            Endpoint::Chat.name_input(e()).param.as_deref(),
            Some("messages")
        );
    }

    #[test]
    fn completions_take_one_string_prompt() {
        let p = parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":["Say hi"],"max_tokens":3}"#,
        )
        .unwrap();
        assert_eq!(p.request.prompt.as_deref(), Some("Say hi"));
        assert_eq!(p.request.messages, None);
        let refused = |body: &[u8]| parse(Endpoint::Completions, body).unwrap_err().param;
        assert_eq!(refused(br#"{"model":"m"}"#).as_deref(), Some("prompt"));
        assert_eq!(
            refused(br#"{"prompt":["a","b"]}"#).as_deref(),
            Some("prompt")
        );
        assert_eq!(refused(br#"{"prompt":[[1,2]]}"#).as_deref(), Some("prompt"));
        // `messages` is not a completions field: ignored, not mapped.
        let p = parse(
            Endpoint::Completions,
            br#"{"prompt":"x","messages":[],"echo":true}"#,
        )
        .unwrap();
        assert_eq!(p.ignored, ["echo", "messages"]);
    }
}
