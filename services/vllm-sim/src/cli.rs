//! Command line of `triage-vllm-sim`: every option is a flag with an environment fallback,
//! and `--config FILE` reads a TOML file of [`SimConfig`] fields. Precedence, lowest first:
//! defaults, the file, environment variables, flags (clap folds the last two together).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;

use triage_runtime::telemetry::LogFormat;

use crate::config::{ConfigError, SimConfig};

/// triage-vllm-sim: a SIMULATOR of vLLM's OpenAI-compatible server (it is not vLLM and runs
/// no model). It serves `POST /v1/chat/completions` (streamed and not, with logprobs),
/// `GET /v1/models`, `GET /health` and `GET /metrics` with vLLM's metric names, producing
/// deterministic pseudo-text with configurable latency, queueing (`--max-num-seqs`), context
/// limit (`--max-model-len`) and fault injection. Faults can be changed at run time with
/// `POST /sim/faults` (JSON body, see README); `GET /sim/faults` shows them, `GET /sim/stats`
/// shows counters.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "triage-vllm-sim", version, about, long_about)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log pipelines (level via RUST_LOG).
    #[arg(long, env = "TRIAGE_SIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// TOML file with any SimConfig fields (e.g. `model = "x"`, `[faults] error_rate = 0.1`).
    /// Flags and environment variables override it.
    #[arg(long, env = "TRIAGE_SIM_CONFIG")]
    pub config: Option<PathBuf>,

    /// Model name served in /v1/models and required in requests' `model` field when given
    /// [default: sim-model].
    #[arg(long, alias = "served-model-name", env = "TRIAGE_SIM_MODEL")]
    pub model: Option<String>,

    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "TRIAGE_SIM_HOST")]
    pub host: Option<IpAddr>,

    /// Port to listen on; 0 picks a free one [default: 8000].
    #[arg(long, env = "TRIAGE_SIM_PORT")]
    pub port: Option<u16>,

    /// Seed of all pseudo-randomness (text, logprobs, jitter, fault decisions) [default: 0].
    #[arg(long, env = "TRIAGE_SIM_SEED")]
    pub seed: Option<u64>,

    /// Time to first token in ms, counted once a sequence slot is free [default: 50].
    #[arg(long, env = "TRIAGE_SIM_TTFT_MS")]
    pub ttft_ms: Option<u64>,

    /// ± uniform jitter on the time to first token, ms [default: 10].
    #[arg(long, env = "TRIAGE_SIM_TTFT_JITTER_MS")]
    pub ttft_jitter_ms: Option<u64>,

    /// Inter-token latency in ms [default: 10].
    #[arg(long, env = "TRIAGE_SIM_ITL_MS")]
    pub itl_ms: Option<u64>,

    /// ± uniform jitter on the inter-token latency, ms [default: 2].
    #[arg(long, env = "TRIAGE_SIM_ITL_JITTER_MS")]
    pub itl_jitter_ms: Option<u64>,

    /// Natural output length in tokens: `N` (fixed) or `MIN-MAX` (drawn per request);
    /// `max_tokens` in a request cuts it shorter [default: 16-64].
    #[arg(long, env = "TRIAGE_SIM_OUTPUT_TOKENS", value_parser = parse_output_tokens)]
    pub output_tokens: Option<(u32, u32)>,

    /// Context window: prompt + max_tokens above it gets vLLM's 400 error [default: 4096].
    #[arg(long, env = "TRIAGE_SIM_MAX_MODEL_LEN")]
    pub max_model_len: Option<u32>,

    /// Generations running at once; further requests wait in a queue [default: 256].
    #[arg(long, env = "TRIAGE_SIM_MAX_NUM_SEQS")]
    pub max_num_seqs: Option<u32>,

    /// Lowest logprob of a generated token [default: -2.5].
    #[arg(long, env = "TRIAGE_SIM_LOGPROB_MIN", allow_hyphen_values = true)]
    pub logprob_min: Option<f64>,

    /// Highest logprob of a generated token, <= 0 [default: -0.05].
    #[arg(long, env = "TRIAGE_SIM_LOGPROB_MAX", allow_hyphen_values = true)]
    pub logprob_max: Option<f64>,

    /// After SIGTERM, ms allowed for in-flight requests to finish [default: 10000].
    #[arg(long, env = "TRIAGE_SIM_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,

    /// Require `Authorization: Bearer <KEY>` on /v1/* like vLLM's --api-key [default: none].
    #[arg(long, env = "TRIAGE_SIM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Fault: fraction of requests answered with --error-status [default: 0].
    #[arg(long, env = "TRIAGE_SIM_ERROR_RATE")]
    pub error_rate: Option<f64>,

    /// Fault: HTTP status of injected errors, e.g. 500 or 503 [default: 503].
    #[arg(long, env = "TRIAGE_SIM_ERROR_STATUS")]
    pub error_status: Option<u16>,

    /// Fault: fraction of requests that hang before the first byte [default: 0].
    #[arg(long, env = "TRIAGE_SIM_HANG_RATE")]
    pub hang_rate: Option<f64>,

    /// Fault: duration of a hang in ms, after which the request is served [default: 30000].
    #[arg(long, env = "TRIAGE_SIM_HANG_MS")]
    pub hang_ms: Option<u64>,

    /// Fault: fraction of requests whose connection drops mid-stream [default: 0].
    #[arg(long, env = "TRIAGE_SIM_DROP_RATE")]
    pub drop_rate: Option<f64>,

    /// Fault: SSE events (role chunk included) sent before a drop [default: 3].
    #[arg(long, env = "TRIAGE_SIM_DROP_AFTER_CHUNKS")]
    pub drop_after_chunks: Option<u32>,

    /// Fault: fraction of streams that get one malformed SSE line [default: 0].
    #[arg(long, env = "TRIAGE_SIM_MALFORMED_RATE")]
    pub malformed_rate: Option<f64>,

    /// Fault: SSE events sent before the malformed line [default: 1].
    #[arg(long, env = "TRIAGE_SIM_MALFORMED_AFTER_CHUNKS")]
    pub malformed_after_chunks: Option<u32>,

    /// Fault: answer /health with 503 [default: false].
    #[arg(long, env = "TRIAGE_SIM_UNHEALTHY")]
    pub unhealthy: Option<bool>,
}

impl Cli {
    /// Builds the configuration: defaults, then `--config` TOML, then env/flags; validated.
    pub fn load(&self) -> Result<SimConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(SimConfig::default()));
        if let Some(path) = &self.config {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        macro_rules! set {
            ($($field:ident => $key:literal),* $(,)?) => {
                $(if let Some(v) = &self.$field {
                    figment = figment.merge(Serialized::default($key, v));
                })*
            };
        }
        set!(
            model => "model",
            host => "host",
            port => "port",
            seed => "seed",
            ttft_ms => "ttft_ms",
            ttft_jitter_ms => "ttft_jitter_ms",
            itl_ms => "itl_ms",
            itl_jitter_ms => "itl_jitter_ms",
            max_model_len => "max_model_len",
            max_num_seqs => "max_num_seqs",
            logprob_min => "logprob_min",
            logprob_max => "logprob_max",
            shutdown_grace_ms => "shutdown_grace_ms",
            api_key => "api_key",
            error_rate => "faults.error_rate",
            error_status => "faults.error_status",
            hang_rate => "faults.hang_rate",
            hang_ms => "faults.hang_ms",
            drop_rate => "faults.drop_rate",
            drop_after_chunks => "faults.drop_after_chunks",
            malformed_rate => "faults.malformed_rate",
            malformed_after_chunks => "faults.malformed_after_chunks",
            unhealthy => "faults.unhealthy",
        );
        if let Some((min, max)) = self.output_tokens {
            figment = figment
                .merge(Serialized::default("output_tokens_min", min))
                .merge(Serialized::default("output_tokens_max", max));
        }
        let config: SimConfig = figment
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

/// Parses `N` or `MIN-MAX`.
fn parse_output_tokens(s: &str) -> Result<(u32, u32), String> {
    let parse = |x: &str| {
        x.trim()
            .parse::<u32>()
            .map_err(|e| format!("`{x}` is not a token count: {e}"))
    };
    match s.split_once('-') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => {
            let n = parse(s)?;
            Ok((n, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tokens_accepts_fixed_and_range() {
        assert_eq!(parse_output_tokens("32"), Ok((32, 32)));
        assert_eq!(parse_output_tokens("8-64"), Ok((8, 64)));
        assert!(parse_output_tokens("x").is_err());
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("sim-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sim.toml");
        std::fs::write(
            &file,
            "model = \"from-file\"\nitl_ms = 7\n[faults]\nerror_rate = 0.25\nscript = [\"ok\", { error = 500 }, \"drop\"]\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "triage-vllm-sim",
            "--config",
            file.to_str().unwrap(),
            "--model",
            "from-flag",
            "--output-tokens",
            "5-9",
            "--drop-rate",
            "0.5",
        ]);
        let config = cli.load().unwrap();
        assert_eq!(config.model, "from-flag");
        assert_eq!(config.itl_ms, 7);
        assert_eq!(config.ttft_ms, SimConfig::default().ttft_ms);
        assert_eq!((config.output_tokens_min, config.output_tokens_max), (5, 9));
        assert_eq!(config.faults.error_rate, 0.25);
        assert_eq!(config.faults.drop_rate, 0.5);
        assert_eq!(
            config.faults.script,
            vec![
                crate::FaultKind::Ok,
                crate::FaultKind::Error(500),
                crate::FaultKind::Drop
            ]
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn rates_over_one_are_rejected() {
        let cli = Cli::parse_from([
            "triage-vllm-sim",
            "--error-rate",
            "0.7",
            "--hang-rate",
            "0.7",
        ]);
        let err = cli.load().unwrap_err().to_string();
        assert!(err.contains("add up to"), "{err}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let cli = Cli::parse_from(["triage-vllm-sim", "--config", "/nonexistent/sim.toml"]);
        assert!(cli
            .load()
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
    }
}
