//! Shared set-up of the gateway's integration tests: a namespace of their
//! own on the real NATS (small streams, deleted at the end), a gateway in
//! this process on a free port, and readers of what it answers.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use async_nats::jetstream;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use triage_bus::StreamsConfig;
use triage_gateway::{Gateway, GatewayConfig};
use triage_protocol::{Namespace, StreamKind};

pub fn nats_url() -> String {
    std::env::var("TRIAGE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Small stream limits: JetStream reserves `max_bytes` up front, and many
/// tests share the server.
pub fn tiny_streams() -> StreamsConfig {
    let mut s = StreamsConfig::small();
    for limits in [
        &mut s.requests,
        &mut s.tiers,
        &mut s.usage,
        &mut s.dead,
        &mut s.results,
    ] {
        limits.max_bytes = 8 << 20;
    }
    s
}

/// One test's namespace; its streams are deleted by `teardown`, or when it
/// is dropped (a failed test).
pub struct World {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub ns: Namespace,
    pub prefix: String,
    torn_down: bool,
}

async fn delete_streams(js: &jetstream::Context, ns: &Namespace) {
    for kind in StreamKind::ALL {
        let _ = js.delete_stream(ns.stream_name(kind)).await;
    }
    for bucket in [ns.finished_bucket(), ns.progress_bucket()] {
        let _ = js.delete_stream(format!("KV_{bucket}")).await;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let ns = self.ns.clone();
        // A panicking test cannot await: clean up from a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    delete_streams(&jetstream::new(client), &ns).await;
                }
            });
        })
        .join();
    }
}

impl World {
    /// A namespace whose streams are not created yet.
    pub async fn bare() -> Self {
        triage_runtime::telemetry::init("gateway-test", triage_runtime::telemetry::LogFormat::Text);
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let client = async_nats::connect(nats_url())
            .await
            .expect("NATS must be running (scripts/setup.sh starts it)");
        Self {
            js: jetstream::new(client.clone()),
            client,
            ns: Namespace::new(prefix.clone()).unwrap(),
            prefix,
            torn_down: false,
        }
    }

    /// A namespace with its streams.
    pub async fn new() -> Self {
        let world = Self::bare().await;
        world.provision().await;
        world
    }

    pub async fn provision(&self) {
        triage_bus::provision(&self.js, &self.ns, &tiny_streams())
            .await
            .expect("provision");
    }

    pub async fn teardown(mut self) {
        delete_streams(&self.js, &self.ns).await;
        self.torn_down = true;
    }

    /// A gateway configuration for this namespace on a free port.
    pub fn gateway_config(&self) -> GatewayConfig {
        let mut c = GatewayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            request_timeout: Duration::from_secs(30),
            ..GatewayConfig::default()
        };
        c.nats.url = nats_url();
        c.nats.prefix = self.prefix.clone();
        // Whether the shared database holds prices depends on what ran
        // before (the demo's ledger stores them): answers stay comparable.
        c.cost_usd = false;
        c
    }

    /// Starts a gateway in this process.
    pub async fn gateway(&self, config: GatewayConfig) -> Gw {
        let mut registry = Registry::default();
        let gateway = Gateway::connect(config, &mut registry)
            .await
            .expect("gateway connects");
        let shutdown = CancellationToken::new();
        let running = gateway
            .serve(shutdown.clone())
            .await
            .expect("gateway listens");
        Gw {
            url: format!("http://{}", running.addr),
            registry,
            shutdown,
        }
    }
}

/// A running gateway; stopped when dropped.
pub struct Gw {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    registry: Registry,
    shutdown: CancellationToken,
}

impl Gw {
    /// The metrics as Prometheus text.
    pub fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP client whose every request has a deadline.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The data of each server-sent event: JSON, or `[DONE]` as a string.
pub fn sse_events(body: &str) -> Vec<Value> {
    assert!(
        body.ends_with("\n\n"),
        "events end with a blank line: {body:?}"
    );
    body.split_terminator("\n\n")
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string()))
        })
        .collect()
}

/// The text of a chat stream's content deltas.
pub fn streamed_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The set-up's Python venv (scripts/setup.sh installs the openai package).
pub fn venv_python() -> PathBuf {
    let venv =
        std::env::var("TRIAGE_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("TRIAGE_CACHE").unwrap_or_else(|_| {
                    format!("{}/.cache/triage", std::env::var("HOME").unwrap())
                }))
                .join("venv")
            });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    python
}

/// Runs `cmd`, killing it after `limit`.
pub async fn run(mut cmd: tokio::process::Command, limit: Duration) -> Output {
    cmd.kill_on_drop(true);
    let what = format!("{cmd:?}");
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} still running after {limit:?}"))
        .unwrap_or_else(|e| panic!("{what} could not start: {e}"))
}

/// Asserts `out` succeeded, showing its output otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
