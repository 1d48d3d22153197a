//! `schemas/` and the Rust types agree.
//!
//! For every example in `schemas/examples/<message>/`:
//! - it validates against its published schema, and against a strict copy
//!   (no undeclared fields), so examples cannot carry typos;
//! - it decodes into the Rust type and re-encodes to the same JSON, modulo
//!   defaults; the re-encoded JSON validates against the strict schema, so
//!   the schema declares every field Rust writes;
//! - the committed `.msgpack` next to it is exactly what the Rust type
//!   encodes, and decodes to the same value.
//!
//! Every example in `schemas/examples/invalid/` fails its schema and fails
//! Rust decoding with the error it names. The schema's error codes are
//! `ErrorCode::ALL`.
//!
//! After an intended change, regenerate the `.msgpack` files with
//! `TRIAGE_BLESS=1 cargo test -p triage-protocol --test schema_examples`.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};

use jsonschema::{Draft, Resource, Validator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use triage_protocol::{
    decode, encode, DecodeError, Encoding, ErrorCode, Feedback, Reply, Request, RoutedRequest,
    ShadowJob, Tier, UsageEvent, UsageStatus,
};

const BASE_URI: &str = "https://example.invalid/triage/schemas/";
const BLESS: &str = "TRIAGE_BLESS";

/// The messages with a schema and examples, by file stem.
const MESSAGES: [&str; 6] = [
    "request",
    "routed_request",
    "reply",
    "usage_event",
    "feedback",
    "shadow_job",
];

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

fn schema_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(schemas_dir())
        .expect("schemas/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".schema.json"))
        .collect();
    files.sort();
    files
}

/// Adds `additionalProperties: false` to every object schema that lists
/// its properties: the strict reading used to catch undeclared fields.
fn strict(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: serde_json::Map<String, Value> =
                map.iter().map(|(k, v)| (k.clone(), strict(v))).collect();
            if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(strict).collect()),
        other => other.clone(),
    }
}

/// The validator for `schemas/<message>.schema.json`, with every other
/// schema file registered so relative `$ref`s resolve offline.
fn validator(message: &str, strict_mode: bool) -> Validator {
    let prepare = |v: Value| if strict_mode { strict(&v) } else { v };
    let mut options = jsonschema::options().with_draft(Draft::Draft202012);
    for file in schema_files() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let resource = Resource::from_contents(prepare(read_json(&file))).expect("schema resource");
        options = options.with_resource(format!("{BASE_URI}{name}"), resource);
    }
    let schema = prepare(read_json(
        &schemas_dir().join(format!("{message}.schema.json")),
    ));
    options
        .build(&schema)
        .unwrap_or_else(|e| panic!("{message}.schema.json does not compile: {e}"))
}

fn schema_errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("at `{}`: {e}", e.instance_path))
        .collect()
}

/// Values serde writes for a field the example left out (or skips writing
/// for a field the example set to its default).
fn is_default(key: &str, value: &Value) -> bool {
    match (key, value) {
        ("version" | "n", v) => v.as_u64() == Some(1),
        ("stream", Value::Bool(true)) => true,
        (_, Value::Null | Value::Bool(false)) => true,
        (_, Value::Number(n)) => n.as_f64() == Some(0.0),
        (_, Value::String(s)) => s.is_empty(),
        (_, Value::Array(a)) => a.is_empty(),
        (_, Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

/// Differences between an example and its re-encoding, ignoring fields
/// either side has at their default and integer-vs-float spelling.
fn differences(example: &Value, actual: &Value, path: &str, out: &mut Vec<String>) {
    match (example, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let keys: BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            for key in keys {
                let here = format!("{path}.{key}");
                match (e.get(key), a.get(key)) {
                    (Some(ev), Some(av)) => differences(ev, av, &here, out),
                    (Some(ev), None) if !is_default(key, ev) => {
                        out.push(format!("{here}: {ev} was dropped by the Rust type"))
                    }
                    (None, Some(av)) if !is_default(key, av) => {
                        out.push(format!("{here}: Rust added {av}"))
                    }
                    _ => {}
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                differences(ev, av, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) if e == a => {}
        (e, a) => out.push(format!("{path}: example has {e}, Rust wrote {a}")),
    }
}

fn examples(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Runs every check on the examples of one message type; returns the
/// problems found, one line each.
fn check_examples<T>(message: &str) -> Vec<String>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let published = validator(message, false);
    let strict_schema = validator(message, true);
    let dir = schemas_dir().join("examples").join(message);
    let bless = std::env::var_os(BLESS).is_some();
    let mut problems = Vec::new();
    let files = examples(&dir);
    if files.len() < 2 {
        problems.push(format!(
            "{message}: {} example(s), at least 2 wanted",
            files.len()
        ));
    }
    for file in files {
        let name = format!(
            "examples/{message}/{}",
            file.file_name().unwrap().to_string_lossy()
        );
        let mut problem = |p: String| problems.push(format!("{name}: {p}"));
        let example = read_json(&file);
        for e in schema_errors(&published, &example) {
            problem(format!("invalid against {message}.schema.json {e}"));
        }
        for e in schema_errors(&strict_schema, &example) {
            problem(format!("uses a field the schema does not declare: {e}"));
        }
        let bytes = fs::read(&file).unwrap();
        let value: T = match decode(Encoding::Json, &bytes) {
            Ok(v) => v,
            Err(e) => {
                problem(format!("the Rust type refuses it: {e}"));
                continue;
            }
        };
        let reencoded: Value = serde_json::from_slice(&encode(Encoding::Json, &value)).unwrap();
        for e in schema_errors(&strict_schema, &reencoded) {
            problem(format!(
                "Rust writes a field the schema does not declare or allow: {e}"
            ));
        }
        let mut diffs = Vec::new();
        differences(&example, &reencoded, "", &mut diffs);
        for d in diffs {
            problem(format!("does not round-trip: {d}"));
        }

        let msgpack = encode(Encoding::MsgPack, &value);
        let msgpack_file = file.with_extension("msgpack");
        if bless {
            fs::write(&msgpack_file, &msgpack).unwrap();
        }
        match fs::read(&msgpack_file) {
            Err(_) => problem(format!(
                "{} is missing; run {BLESS}=1 cargo test -p triage-protocol --test schema_examples",
                msgpack_file.display()
            )),
            Ok(committed) => {
                if committed != msgpack {
                    problem(format!(
                        "the committed .msgpack differs from what the Rust type encodes; if the change is intended run {BLESS}=1 cargo test -p triage-protocol --test schema_examples"
                    ));
                }
                match decode::<T>(Encoding::MsgPack, &committed) {
                    Ok(v) if v == value => {}
                    Ok(v) => problem(format!(".msgpack decodes to {v:?}, the .json to {value:?}")),
                    Err(e) => problem(format!(".msgpack does not decode: {e}")),
                }
            }
        }
    }
    // A .msgpack whose .json is gone would mislead other languages' tests.
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "msgpack") && !path.with_extension("json").exists()
        {
            problems.push(format!("{}: no .json next to it", path.display()));
        }
    }
    problems
}

fn assert_no_problems(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn request_examples_match_schema_and_types() {
    assert_no_problems(check_examples::<Request>("request"));
}

#[test]
fn routed_request_examples_match_schema_and_types() {
    assert_no_problems(check_examples::<RoutedRequest>("routed_request"));
}

#[test]
fn reply_examples_match_schema_and_types() {
    let problems = check_examples::<Reply>("reply");
    // Each kind of reply has two examples.
    let dir = schemas_dir().join("examples/reply");
    let mut counts = std::collections::BTreeMap::new();
    for file in examples(&dir) {
        let t = read_json(&file)["type"].as_str().unwrap_or("?").to_string();
        *counts.entry(t).or_insert(0) += 1;
    }
    for t in ["chunk", "completion", "error"] {
        assert!(
            counts.get(t).copied().unwrap_or(0) >= 2,
            "want 2 `{t}` reply examples, have {counts:?}"
        );
    }
    assert_no_problems(problems);
}

#[test]
fn usage_event_examples_match_schema_and_types() {
    assert_no_problems(check_examples::<UsageEvent>("usage_event"));
}

#[test]
fn shadow_job_examples_match_schema_and_types() {
    assert_no_problems(check_examples::<ShadowJob>("shadow_job"));
}

#[test]
fn feedback_examples_match_schema_and_types() {
    assert_no_problems(check_examples::<Feedback>("feedback"));
}

#[test]
fn every_schema_is_valid_draft_2020_12_and_has_examples() {
    for file in schema_files() {
        let schema = read_json(&file);
        if let Err(e) = jsonschema::meta::validate(&schema) {
            panic!("{} is not a valid JSON Schema: {e}", file.display());
        }
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema",
            "{}",
            file.display()
        );
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(schema["$id"], format!("{BASE_URI}{name}"), "$id of {name}");
        let stem = name.trim_end_matches(".schema.json");
        assert!(
            stem == "common" || MESSAGES.contains(&stem),
            "{name} is neither a message schema nor common.schema.json; add its examples and a test"
        );
    }
}

fn common_def(name: &str) -> Value {
    read_json(&schemas_dir().join("common.schema.json"))["$defs"][name].clone()
}

#[test]
fn schema_error_codes_are_exactly_the_rust_list() {
    let in_schema: Vec<String> = common_def("ErrorCode")["enum"]
        .as_array()
        .expect("ErrorCode has an enum")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let in_rust: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    assert_eq!(
        in_schema, in_rust,
        "schemas/common.schema.json ErrorCode vs ErrorCode::ALL"
    );
}

#[test]
fn schema_enums_match_tiers_and_usage_statuses() {
    let tiers: Vec<u64> = common_def("Tier")["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let rust_tiers: Vec<u64> = [Tier::Small, Tier::Large]
        .iter()
        .map(|t| t.number() as u64)
        .collect();
    assert_eq!(tiers, rust_tiers);
    let statuses: Vec<Value> = common_def("UsageStatus")["enum"]
        .as_array()
        .unwrap()
        .clone();
    let rust_statuses: Vec<Value> = [
        UsageStatus::Ok,
        UsageStatus::Error,
        UsageStatus::Cancelled,
        UsageStatus::Interrupted,
        UsageStatus::Shadow,
        UsageStatus::Judge,
    ]
    .iter()
    .map(|s| serde_json::to_value(s).unwrap())
    .collect();
    assert_eq!(statuses, rust_statuses);
}

fn decode_as(message: &str, encoding: Encoding, bytes: &[u8]) -> Result<(), DecodeError> {
    match message {
        "request" => decode::<Request>(encoding, bytes).map(drop),
        "routed_request" => decode::<RoutedRequest>(encoding, bytes).map(drop),
        "reply" => Reply::decode(encoding, bytes).map(drop),
        "usage_event" => decode::<UsageEvent>(encoding, bytes).map(drop),
        "feedback" => decode::<Feedback>(encoding, bytes).map(drop),
        "shadow_job" => decode::<ShadowJob>(encoding, bytes).map(drop),
        other => panic!("unknown message type {other}"),
    }
}

fn matches_expectation(err: &DecodeError, expect: &Value) -> bool {
    let field = expect["field"].as_str();
    match (expect["error"].as_str(), err) {
        (Some("malformed"), DecodeError::Malformed { .. }) => true,
        (Some("missing_field"), DecodeError::MissingField { field: f }) => field == Some(f),
        (Some("invalid_field"), DecodeError::InvalidField { field: f, .. }) => field == Some(f),
        (Some("unsupported_version"), DecodeError::UnsupportedVersion { found, .. }) => {
            expect["found"].as_u64() == Some(*found)
        }
        _ => false,
    }
}

#[test]
fn invalid_examples_fail_the_schema_and_decoding_with_the_named_error() {
    let dir = schemas_dir().join("examples/invalid");
    let files = examples(&dir);
    assert!(
        files.len() >= 4,
        "want invalid examples in {}",
        dir.display()
    );
    let mut problems = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let case = read_json(&file);
        let message = case["message_type"].as_str().expect("message_type");
        let payload = &case["message"];
        if validator(message, false).is_valid(payload) {
            problems.push(format!("{name}: passes {message}.schema.json"));
        }
        let encodings = [
            (Encoding::Json, serde_json::to_vec(payload).unwrap()),
            (Encoding::MsgPack, rmp_serde::to_vec_named(payload).unwrap()),
        ];
        for (encoding, bytes) in encodings {
            match decode_as(message, encoding, &bytes) {
                Ok(()) => problems.push(format!("{name}: {encoding:?} decodes without error")),
                Err(e) if matches_expectation(&e, &case["expect"]) => {}
                Err(e) => problems.push(format!(
                    "{name}: {encoding:?} gives {e:?}, expected {}",
                    case["expect"]
                )),
            }
        }
    }
    assert_no_problems(problems);
}

#[test]
fn strict_reading_rejects_an_undeclared_field() {
    // The check the example tests rely on: it must be able to fail.
    let mut example = read_json(&schemas_dir().join("examples/request/prompt_minimal.json"));
    example["promtp"] = Value::String("typo".into());
    assert!(validator("request", false).is_valid(&example));
    assert!(!validator("request", true).is_valid(&example));
}
