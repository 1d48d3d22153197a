//! The whole pipeline end to end: real NATS and Postgres, the router with
//! the real embedding model, a worker per tier, the ledger writer (all as
//! child processes of the built binaries) and two vLLM simulators; replay
//! drives it in each mode, records a trace, survives an interrupt, and the
//! Python and JavaScript example clients get a streamed answer from it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use triage_vllm_sim::{spawn, SimConfig, SimHandle};

fn target_bin(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps; binaries sit in target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` (scripts/test.sh does)",
        path.display()
    );
    path
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn admin_db_url() -> String {
    std::env::var("TRIAGE_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Kills its child on drop, so a failing test leaves nothing running.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pipeline {
    prefix: String,
    db_url: String,
    db_name: String,
    _services: Vec<Service>,
    _sims: (SimHandle, SimHandle),
    logs: PathBuf,
}

/// Small stream limits: JetStream reserves max_bytes, and production
/// limits on a shared test server would exhaust its storage.
fn small_streams(prefix_env: &str, cmd: &mut Command) {
    for kind in ["REQUESTS", "TIERS", "USAGE", "DEAD", "RESULTS"] {
        cmd.env(
            format!("{prefix_env}NATS__STREAMS__{kind}__MAX_BYTES"),
            (64u64 << 20).to_string(),
        );
        cmd.env(format!("{prefix_env}NATS__STREAMS__{kind}__MAX_AGE"), "1h");
    }
}

fn service(
    name: &'static str,
    bin: &str,
    args: &[&str],
    env_prefix: &str,
    p: &Pipeline,
    extra: &[(&str, String)],
) -> Service {
    let mut cmd = Command::new(target_bin(bin));
    cmd.args(args)
        .env(
            format!("{env_prefix}NATS__URL"),
            triage_bus::default_nats_url(),
        )
        .env(format!("{env_prefix}NATS__PREFIX"), &p.prefix)
        .env(format!("{env_prefix}METRICS_ADDR"), "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(p.logs.join(format!("{name}.log"))).unwrap())
        .stderr(std::fs::File::create(p.logs.join(format!("{name}.err"))).unwrap());
    small_streams(env_prefix, &mut cmd);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Service(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}")),
    )
}

async fn start() -> Pipeline {
    let prefix = format!("t{}", &uuid_like()[..16]);
    let db_name = format!("triage_replay_{prefix}");
    let admin = sqlx::PgPool::connect(&admin_db_url())
        .await
        .expect("Postgres must be running (scripts/setup.sh)");
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let db_url = {
        let base = admin_db_url();
        format!("{}/{db_name}", &base[..base.rfind('/').unwrap()])
    };
    let sim = |model: &str| {
        let mut c = SimConfig::instant(model, 12);
        c.ttft_ms = 5;
        c.itl_ms = 1;
        c
    };
    let sims = (
        spawn(sim("sim-small")).await.unwrap(),
        spawn(sim("sim-large")).await.unwrap(),
    );
    let logs = std::env::temp_dir().join(format!("triage-pipeline-{prefix}"));
    std::fs::create_dir_all(&logs).unwrap();
    let mut p = Pipeline {
        prefix,
        db_url: db_url.clone(),
        db_name,
        _services: Vec::new(),
        _sims: sims,
        logs,
    };
    let (u1, u2) = (p._sims.0.url().to_string(), p._sims.1.url().to_string());
    let services = vec![
        service(
            "ledger",
            "triage-ledger",
            &["run"],
            "TRIAGE_LEDGER_",
            &p,
            &[
                ("TRIAGE_LEDGER_DATABASE__URL", db_url.clone()),
                ("TRIAGE_DATABASE_URL", db_url),
            ],
        ),
        service(
            "worker1",
            "triage-worker",
            &["run", "--tier", "1"],
            "TRIAGE_WORKER_",
            &p,
            &[("TRIAGE_WORKER_BACKEND_URLS", u1)],
        ),
        service(
            "worker2",
            "triage-worker",
            &["run", "--tier", "2"],
            "TRIAGE_WORKER_",
            &p,
            &[("TRIAGE_WORKER_BACKEND_URLS", u2)],
        ),
        service(
            "router",
            "triage-router",
            &["run"],
            "TRIAGE_ROUTER_",
            &p,
            // --baseline forces tier 2 with `tier` (off by default).
            &[("TRIAGE_ROUTER_POLICY__ALLOW_TIER_OVERRIDE", "true".into())],
        ),
    ];
    p._services = services;
    p
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:08x}", t, std::process::id())
}

/// Waits for `child` to exit, or kills it and fails after `limit`: a replay
/// that never finishes fails the test instead of hanging it.
fn wait_within(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match exited.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} still running after {limit:?}");
        }
    }
}

/// Longest any replay command here may take.
const REPLAY_LIMIT: Duration = Duration::from_secs(120);

impl Pipeline {
    fn replay(&self, args: &[&str]) -> Output {
        let child = Command::new(env!("CARGO_BIN_EXE_triage-replay"))
            .args(args)
            .args([
                "--prefix",
                &self.prefix,
                "--nats-url",
                &triage_bus::default_nats_url(),
                "--database-url",
                &self.db_url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_within(child, REPLAY_LIMIT, &format!("triage-replay {args:?}"))
    }

    async fn teardown(self) {
        let client = async_nats::connect(triage_bus::default_nats_url())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let ns = triage_protocol::Namespace::new(&self.prefix).unwrap();
        drop(self._services);
        for kind in triage_protocol::StreamKind::ALL {
            let _ = js.delete_stream(ns.stream_name(kind)).await;
        }
        let _ = js
            .delete_stream(format!("KV_{}", ns.finished_bucket()))
            .await;
        if let Ok(admin) = sqlx::PgPool::connect(&admin_db_url()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .execute(&admin)
            .await;
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for e in std::fs::read_dir(&self.logs).unwrap().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s.push_str(&format!(
                "--- {}\n{}\n",
                e.path().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        s
    }
}

fn dataset(dir: &Path, n: usize) -> PathBuf {
    let data = triage_complexity::dataset::data_dir();
    let text = std::fs::read_to_string(data.join("routing-dev.jsonl"))
        .expect("data/routing-dev.jsonl in the repository (or TRIAGE_DATA_DIR)");
    // A spread of sources: every 37th row.
    let rows: Vec<&str> = text.lines().step_by(37).take(n).collect();
    let path = dir.join("sample.jsonl");
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    path
}

fn report(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json written"))
        .unwrap()
}

/// Waits until the router answers a request end to end (it loads the
/// embedding model at start).
async fn wait_ready(p: &Pipeline) {
    let client = async_nats::connect(triage_bus::default_nats_url())
        .await
        .unwrap();
    let triage =
        triage_bus::TriageClient::new(client, triage_protocol::Namespace::new(&p.prefix).unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut req = triage_protocol::Request::from_prompt("warm-up");
        req.max_tokens = Some(4);
        match triage.ask(req, Duration::from_secs(30)).await {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("pipeline never answered: {e}\n{}", p.logs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_modes_record_interrupt_and_example_clients_end_to_end() {
    let p = start().await;
    wait_ready(&p).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 12);
    let out = |name: &str| tmp.path().join(name);

    // Closed loop with the all-tier-2 baseline beside it.
    let o = p.replay(&[
        "run",
        "--input",
        data.to_str().unwrap(),
        "--mode",
        "closed",
        "--concurrency",
        "4",
        "--baseline",
        "--max-tokens",
        "8",
        "--out",
        out("closed").to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        p.logs()
    );
    let r = report(&out("closed"));
    let (routed, baseline) = (&r["runs"][0], &r["runs"][1]);
    assert_eq!(routed["sent"], 12);
    assert_eq!(routed["completed"], 12, "{routed}\n{}", p.logs());
    assert_eq!(
        routed["tier1"].as_u64().unwrap() + routed["tier2"].as_u64().unwrap(),
        12
    );
    assert_eq!(baseline["tier2"], 12, "the baseline forces tier 2");
    assert_eq!(
        routed["cost"]["booked"], 12,
        "every request booked in the ledger: {routed}"
    );
    assert_eq!(baseline["cost"]["booked"], 12);
    // Baseline cost equals its all-tier-2 baseline; the routed run can only be cheaper or equal.
    let b = &baseline["cost"];
    assert!(
        (b["total"].as_f64().unwrap() - b["all_tier2_baseline"].as_f64().unwrap()).abs() < 1e-12
    );
    assert!(routed["cost"]["saving"].as_f64().unwrap() >= 0.0);
    assert!(routed["accuracy"].is_number() && routed["score_quality"]["auc"].is_number());
    assert!(out("closed").join("report.html").exists());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("== run: routed ==") && text.contains("== routed vs baseline =="),
        "{text}"
    );

    // Open loop, Poisson arrivals.
    let o = p.replay(&[
        "run",
        "--input",
        data.to_str().unwrap(),
        "--mode",
        "open",
        "--rate",
        "20",
        "--poisson",
        "--count",
        "12",
        "--max-tokens",
        "8",
        "--out",
        out("open").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(report(&out("open"))["runs"][0]["completed"], 12);

    // Record while a replay runs, then replay the recorded trace.
    let trace = out("trace.jsonl");
    // --duration: a missed request must not leave it waiting for a fifth.
    let recorder = Command::new(env!("CARGO_BIN_EXE_triage-replay"))
        .args([
            "record",
            "--output",
            trace.to_str().unwrap(),
            "--count",
            "5",
            "--duration",
            "60s",
            "--prefix",
            &p.prefix,
            "--nats-url",
            &triage_bus::default_nats_url(),
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let o = p.replay(&[
        "run",
        "--input",
        data.to_str().unwrap(),
        "--mode",
        "open",
        "--rate",
        "10",
        "--count",
        "5",
        "--max-tokens",
        "8",
        "--out",
        out("recorded").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let recorded = wait_within(recorder, REPLAY_LIMIT, "triage-replay record");
    assert!(recorded.status.success());
    let lines: Vec<Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines
        .iter()
        .all(|l| l["timestamp_ms"].is_u64() && l["messages"].is_array()));
    let o = p.replay(&[
        "run",
        "--input",
        trace.to_str().unwrap(),
        "--mode",
        "trace",
        "--speed",
        "2",
        "--max-tokens",
        "8",
        "--out",
        out("trace").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tr = report(&out("trace"));
    assert_eq!(tr["runs"][0]["completed"], 5);
    assert!(tr["mode"].as_str().unwrap().contains("trace"));

    // An interrupted run still writes its report for what finished.
    let long = Command::new(env!("CARGO_BIN_EXE_triage-replay"))
        .args([
            "run",
            "--input",
            data.to_str().unwrap(),
            "--mode",
            "open",
            "--rate",
            "20",
            "--count",
            "2000",
            "--max-tokens",
            "8",
            "--ledger-wait",
            "2s",
            "--out",
            out("interrupted").to_str().unwrap(),
            "--prefix",
            &p.prefix,
            "--nats-url",
            &triage_bus::default_nats_url(),
            "--database-url",
            &p.db_url,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SIGINT, as Ctrl-C sends.
    assert!(Command::new("kill")
        .args(["-INT", &long.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = wait_within(long, REPLAY_LIMIT, "the interrupted replay").status;
    assert!(status.success(), "an interrupted run exits cleanly");
    let ir = report(&out("interrupted"));
    let run = &ir["runs"][0];
    assert!(run["completed"].as_u64().unwrap() > 0, "{run}");
    assert!(
        run["sent"].as_u64().unwrap() < 2000,
        "sending stopped at the interrupt: {run}"
    );

    // The Python and JavaScript example clients, against the running
    // pipeline; then both again with a request id the stream has just seen:
    // an immediate `duplicate_request`, not a wait for nothing.
    for client in [ExampleClient::Python, ExampleClient::JavaScript] {
        let o = client.ask(&p.prefix, &format!("{client:?}-{}", p.prefix));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{client:?}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("[tier ") && stdout.contains("model sim-"),
            "{client:?} prints the completion: {stdout}"
        );
    }
    let reused = format!("{:?}-{}", ExampleClient::JavaScript, p.prefix);
    for client in [ExampleClient::Python, ExampleClient::JavaScript] {
        let o = client.ask(&p.prefix, &reused);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{client:?}: {stderr}");
        assert!(stderr.contains("duplicate_request"), "{client:?}: {stderr}");
    }

    p.teardown().await;
}

/// The example clients in clients/, as a user runs them.
#[derive(Debug, Clone, Copy)]
enum ExampleClient {
    Python,
    JavaScript,
}

impl ExampleClient {
    /// Asks the pipeline under `prefix` one short question with request id `id`.
    fn ask(self, prefix: &str, id: &str) -> std::process::Output {
        let mut cmd = match self {
            ExampleClient::Python => {
                let cache = std::env::var("TRIAGE_CACHE").unwrap_or_else(|_| {
                    format!("{}/.cache/triage", std::env::var("HOME").unwrap())
                });
                let venv = std::env::var("TRIAGE_VENV")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| PathBuf::from(cache).join("venv"));
                let mut c = Command::new(venv.join("bin/python"));
                c.arg(repo_root().join("clients/python/triage_client.py"));
                c
            }
            ExampleClient::JavaScript => {
                let mut c = Command::new("node");
                c.arg(repo_root().join("clients/js/triage_client.mjs"));
                c
            }
        };
        let nats = triage_bus::default_nats_url();
        cmd.args(["--prefix", prefix, "--nats-url", &nats, "--id", id])
            .args(["--max-tokens", "8", "--timeout", "60", "Say hello."])
            .output()
            .unwrap_or_else(|e| {
                panic!("{self:?} client (installed by scripts/setup.sh) does not run: {e}")
            })
    }
}
