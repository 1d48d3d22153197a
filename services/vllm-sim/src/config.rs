//! The simulator's one typed configuration, with defaults that work locally.
//!
//! Layering (lowest first): built-in defaults, an optional TOML file, then environment
//! variables and command-line flags (see [`crate::cli`]). The fault part ([`FaultConfig`]) can
//! also be replaced at run time with `POST /sim/faults` or [`crate::SimHandle::set_faults`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Everything one simulated vLLM instance needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Name served in `/v1/models` and expected in the request's `model` field
    /// (vLLM's `--served-model-name`). A request naming another model gets vLLM's 404.
    pub model: String,
    /// Address to listen on.
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    pub port: u16,
    /// Seed for everything pseudo-random: generated text, logprobs, latency jitter and fault
    /// decisions. Same seed + same requests in the same order = same answers.
    pub seed: u64,
    /// Time to first token, in milliseconds (after a free sequence slot is obtained).
    pub ttft_ms: u64,
    /// Uniform jitter added to or removed from `ttft_ms` (± this many ms).
    pub ttft_jitter_ms: u64,
    /// Inter-token latency, in milliseconds.
    pub itl_ms: u64,
    /// Uniform jitter on `itl_ms` (± this many ms).
    pub itl_jitter_ms: u64,
    /// Smallest natural output length in tokens (the model "emits EOS" after a length drawn
    /// uniformly from `output_tokens_min..=output_tokens_max`; `max_tokens` cuts it shorter).
    pub output_tokens_min: u32,
    /// Largest natural output length in tokens.
    pub output_tokens_max: u32,
    /// vLLM's `--max-model-len`: prompt tokens + `max_tokens` above it is rejected with 400.
    pub max_model_len: u32,
    /// vLLM's `--max-num-seqs`: generations running at once; the rest wait (visible in
    /// `vllm:num_requests_waiting`).
    pub max_num_seqs: u32,
    /// Lowest log-probability given to a generated token.
    pub logprob_min: f64,
    /// Highest log-probability given to a generated token (must be <= 0).
    pub logprob_max: f64,
    /// After SIGTERM, how long in-flight requests may take to finish before the process exits.
    pub shutdown_grace_ms: u64,
    /// vLLM's `--api-key`: when set, `/v1/*` requests need `Authorization: Bearer <key>`
    /// (else 401 `{"error":"Unauthorized"}`). Masked when printed at start.
    pub api_key: Option<String>,
    /// Scripted replies (`[[replies]]` in TOML): the first rule whose
    /// `contains` occurs in the request's last message answers with its
    /// `reply` instead of pseudo-text — a judge with scripted grades in
    /// tests. Empty: pseudo-text for every request.
    pub replies: Vec<ScriptedReply>,
    /// Fault injection (replaceable at run time).
    pub faults: FaultConfig,
}

/// A per-prompt rule of [`SimConfig::replies`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedReply {
    /// Text the last message must contain ("" matches every request).
    #[serde(default)]
    pub contains: String,
    /// The whole reply (split into tokens at spaces; `max_tokens` still cuts it).
    pub reply: String,
}

impl SimConfig {
    /// The scripted reply for a request whose last message is `last`, if a rule matches.
    pub fn scripted_reply(&self, last: &str) -> Option<&str> {
        self.replies
            .iter()
            .find(|r| last.contains(&r.contains))
            .map(|r| r.reply.as_str())
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            model: "sim-model".to_owned(),
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8000,
            seed: 0,
            ttft_ms: 50,
            ttft_jitter_ms: 10,
            itl_ms: 10,
            itl_jitter_ms: 2,
            output_tokens_min: 16,
            output_tokens_max: 64,
            max_model_len: 4096,
            max_num_seqs: 256,
            logprob_min: -2.5,
            logprob_max: -0.05,
            shutdown_grace_ms: 10_000,
            api_key: None,
            replies: Vec::new(),
            faults: FaultConfig::default(),
        }
    }
}

impl SimConfig {
    /// A configuration for tests: no latency, a fixed output length of `output_tokens`,
    /// port 0 (any free port), no faults.
    pub fn instant(model: &str, output_tokens: u32) -> Self {
        Self {
            model: model.to_owned(),
            port: 0,
            ttft_ms: 0,
            ttft_jitter_ms: 0,
            itl_ms: 0,
            itl_jitter_ms: 0,
            output_tokens_min: output_tokens,
            output_tokens_max: output_tokens,
            ..Self::default()
        }
    }

    /// This configuration answering with scripted `(contains, reply)` rules
    /// (see [`SimConfig::replies`]), e.g. a judge with fixed grades.
    pub fn with_replies(mut self, replies: &[(&str, &str)]) -> Self {
        self.replies = replies
            .iter()
            .map(|(contains, reply)| ScriptedReply {
                contains: contains.to_string(),
                reply: reply.to_string(),
            })
            .collect();
        self
    }

    /// Checks ranges that would otherwise fail later in confusing ways.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.model.trim().is_empty() {
            return Err(ConfigError::Invalid("model must not be empty".into()));
        }
        if self.output_tokens_min == 0 || self.output_tokens_min > self.output_tokens_max {
            return Err(ConfigError::Invalid(format!(
                "output tokens must satisfy 1 <= min <= max, got {}..={}",
                self.output_tokens_min, self.output_tokens_max
            )));
        }
        if self.max_model_len == 0 {
            return Err(ConfigError::Invalid(
                "max_model_len must be at least 1".into(),
            ));
        }
        if self.max_num_seqs == 0 {
            return Err(ConfigError::Invalid(
                "max_num_seqs must be at least 1".into(),
            ));
        }
        if !(self.logprob_min <= self.logprob_max && self.logprob_max <= 0.0) {
            return Err(ConfigError::Invalid(format!(
                "logprobs must satisfy logprob_min <= logprob_max <= 0, got {}..={}",
                self.logprob_min, self.logprob_max
            )));
        }
        self.faults.validate()
    }
}

/// Fault injection settings. At most one fault is applied per chat-completion request.
///
/// Decision per request: if `script` is not empty its first entry is taken (and removed);
/// otherwise one number `u` in `[0, 1)` is drawn from an RNG seeded with
/// `(seed, request number)` — the request number counts chat-completion requests received by
/// this instance, starting at 0 — and compared with the cumulative rates in the order
/// error, hang, drop, malformed. So the rates must add up to at most 1, and with a given seed
/// the n-th request always gets the same decision, however the requests' bodies differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Fraction of requests answered with `error_status` and a vLLM-style error body.
    pub error_rate: f64,
    /// HTTP status used by `error_rate` (e.g. 500 or 503; any 4xx/5xx is accepted).
    pub error_status: u16,
    /// Fraction of requests that hang before the first byte (no headers) for `hang_ms`,
    /// then continue normally.
    pub hang_rate: f64,
    /// How long a hang lasts, in milliseconds.
    pub hang_ms: u64,
    /// Fraction of requests whose connection is dropped mid-stream.
    pub drop_rate: f64,
    /// Number of SSE `data:` events (the role chunk included) sent before the drop.
    pub drop_after_chunks: u32,
    /// Fraction of streamed requests that get one malformed SSE line (truncated JSON); the
    /// stream then continues normally, so no content is lost.
    pub malformed_rate: f64,
    /// Number of SSE `data:` events sent before the malformed line.
    pub malformed_after_chunks: u32,
    /// When true, `GET /health` answers 503 (as vLLM does when its engine is dead).
    pub unhealthy: bool,
    /// Faults for the next requests, in order, taken before the rates apply.
    pub script: Vec<FaultKind>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 503,
            hang_rate: 0.0,
            hang_ms: 30_000,
            drop_rate: 0.0,
            drop_after_chunks: 3,
            malformed_rate: 0.0,
            malformed_after_chunks: 1,
            unhealthy: false,
            script: Vec::new(),
        }
    }
}

impl FaultConfig {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every request answered with `status`.
    pub fn always_error(status: u16) -> Self {
        Self {
            error_rate: 1.0,
            error_status: status,
            ..Self::default()
        }
    }

    /// Checks that rates are fractions adding up to at most 1 and statuses are errors.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rates = [
            ("error_rate", self.error_rate),
            ("hang_rate", self.hang_rate),
            ("drop_rate", self.drop_rate),
            ("malformed_rate", self.malformed_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::Invalid(format!(
                    "faults.{name} must be within 0..=1, got {rate}"
                )));
            }
        }
        let sum: f64 = rates.iter().map(|(_, r)| r).sum();
        if sum > 1.0 + 1e-9 {
            return Err(ConfigError::Invalid(format!(
                "fault rates add up to {sum}, more than 1 (one fault per request at most)"
            )));
        }
        check_status(self.error_status)?;
        for kind in &self.script {
            if let FaultKind::Error(status) = kind {
                check_status(*status)?;
            }
        }
        Ok(())
    }
}

fn check_status(status: u16) -> Result<(), ConfigError> {
    if (400..=599).contains(&status) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "fault error status must be a 4xx or 5xx code, got {status}"
        )))
    }
}

/// One fault decision. In JSON/TOML: `"ok"`, `{"error": 503}`, `"hang"`, `"drop"`,
/// `"malformed"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Serve the request normally.
    Ok,
    /// Answer with this HTTP status and a vLLM error body.
    Error(u16),
    /// Hang before the first byte for `hang_ms`, then serve normally.
    Hang,
    /// Drop the connection after `drop_after_chunks` SSE events (for a non-streamed request:
    /// after part of the JSON body).
    Drop,
    /// Insert one malformed SSE line after `malformed_after_chunks` events (for a non-streamed
    /// request: answer 200 with a truncated JSON body).
    Malformed,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range.
    #[error("invalid simulator configuration: {0}")]
    Invalid(String),
    /// The file or a flag could not be read into the typed configuration.
    #[error("cannot load simulator configuration: {0}")]
    Load(String),
}
