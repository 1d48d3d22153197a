//! The whole pipeline end to end: real NATS and Postgres, the router with
//! the real embedding model, a worker per tier, the ledger writer (all as
//! child processes of the built binaries) and two vLLM simulators; replay
//! drives it in each mode, records a trace, survives an interrupt, and the
//! Python and JavaScript example clients get a streamed answer from it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{start, wait_ready, wait_within, REPLAY_LIMIT};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
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
