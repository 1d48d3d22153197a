//! Converts one protocol message between MessagePack and JSON through the
//! Rust types, so other languages' tests can check that what they encode
//! decodes here and the other way round (see clients/python/tests).
//!
//! ```text
//! cargo run -p triage-protocol --example codec -- TYPE [--from msgpack|json] [--to json|msgpack] < IN > OUT
//! TYPE: request | routed_request | reply | usage_event
//! ```
//!
//! Reads the message from stdin (MessagePack by default), decodes it with
//! `triage_protocol::decode` into the Rust type and writes that value
//! re-encoded (JSON by default) to stdout. On a decoding error it prints
//! `{"error": KIND, "field": FIELD, "code": CODE, "message": TEXT}` to
//! stdout and exits with status 3, KIND being one of `malformed`,
//! `missing_field`, `invalid_field`, `unsupported_version`, and CODE the
//! error code a Triage service answers that failure with
//! (`DecodeError::error_code`). Usage errors exit with status 2.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use serde::Serialize;
use triage_protocol::{
    decode, encode, DecodeError, Encoding, Reply, Request, RoutedRequest, UsageEvent,
};

const USAGE: &str = "usage: codec request|routed_request|reply|usage_event [--from msgpack|json] [--to json|msgpack] < IN > OUT";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("codec: {message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let mut args = std::env::args().skip(1);
    let kind = args.next().ok_or("missing TYPE")?;
    let (mut from, mut to) = (Encoding::MsgPack, Encoding::Json);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let encoding = match value.as_str() {
            "json" => Encoding::Json,
            "msgpack" => Encoding::MsgPack,
            other => return Err(format!("unknown encoding {other:?}")),
        };
        match flag.as_str() {
            "--from" => from = encoding,
            "--to" => to = encoding,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let output = match kind.as_str() {
        "request" => convert::<Request>(from, to, &input),
        "routed_request" => convert::<RoutedRequest>(from, to, &input),
        "reply" => convert::<Reply>(from, to, &input),
        "usage_event" => convert::<UsageEvent>(from, to, &input),
        other => return Err(format!("unknown TYPE {other:?}")),
    };
    let (bytes, code) = match output {
        Ok(bytes) => (bytes, ExitCode::SUCCESS),
        Err(err) => (describe(&err).into_bytes(), ExitCode::from(3)),
    };
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| format!("writing stdout: {e}"))?;
    Ok(code)
}

fn convert<T: Serialize + DeserializeOwned>(
    from: Encoding,
    to: Encoding,
    input: &[u8],
) -> Result<Vec<u8>, DecodeError> {
    let value: T = decode(from, input)?;
    Ok(encode(to, &value))
}

fn describe(err: &DecodeError) -> String {
    let (kind, field) = match err {
        DecodeError::Malformed { .. } => ("malformed", None),
        DecodeError::MissingField { field } => ("missing_field", Some(field.as_str())),
        DecodeError::InvalidField { field, .. } => ("invalid_field", Some(field.as_str())),
        DecodeError::UnsupportedVersion { .. } => ("unsupported_version", None),
    };
    serde_json::json!({
        "error": kind,
        "field": field,
        "code": err.error_code().as_str(),
        "message": err.to_string(),
    })
    .to_string()
}
