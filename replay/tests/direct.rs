//! `triage-replay run --direct`: the latency baseline without Triage. The
//! built binary sends straight to an in-process vLLM simulator (real HTTP,
//! real SSE) on the same schedules as a pipeline run; NATS and the ledger
//! are not involved (the NATS URL given points nowhere).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use triage_vllm_sim::{spawn, SimConfig};

/// Completion tokens the simulator generates when `max_tokens` allows.
const SIM_TOKENS: u32 = 7;

async fn replay(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_triage-replay"))
            .args(&args)
            // Proves NATS is not needed: nothing listens there.
            .args(["--nats-url", "nats://127.0.0.1:1"])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn prompts(dir: &Path, n: usize) -> PathBuf {
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"p{i}\",\"prompt\":\"Question number {i}: why is the sky blue?\",\"label_tier\":{}}}\n",
                1 + i % 2
            )
        })
        .collect();
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn check_success(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn read_run(out: &Path) -> (Value, Vec<Value>) {
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let outcomes = std::fs::read_to_string(out.join("outcomes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (report, outcomes)
}

/// Every request completed, ttft ≤ total, the simulator's token counts, no
/// tier and no score.
fn check_outcomes(outcomes: &[Value], count: usize, tokens: u32, min_ttft_ms: f64) {
    assert_eq!(outcomes.len(), count);
    for o in outcomes {
        assert!(o["error"].is_null(), "{o}");
        let ttft = o["ttft_ms"].as_f64().unwrap_or_else(|| panic!("{o}"));
        let total = o["total_ms"].as_f64().unwrap();
        assert!(ttft <= total, "{o}");
        assert!(
            ttft >= min_ttft_ms,
            "the simulator's time to first token: {o}"
        );
        assert_eq!(o["completion_tokens"], tokens, "{o}");
        assert!(o["prompt_tokens"].as_u64().unwrap() > 0, "{o}");
        assert!(o["tier"].is_null() && o["score"].is_null(), "{o}");
        assert_eq!(o["run"], "direct");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_runs_in_open_and_closed_loop_complete_every_request() {
    let mut config = SimConfig::instant("sim-direct", SIM_TOKENS);
    config.ttft_ms = 20;
    config.itl_ms = 2;
    let sim = spawn(config).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = prompts(tmp.path(), 6);

    // Closed loop: 10 requests (rows reused), 3 in flight, the model taken
    // from GET /v1/models (the simulator refuses any other name).
    let closed = tmp.path().join("closed");
    let o = replay(vec![
        "run".into(),
        "--input".into(),
        s(&data),
        "--direct".into(),
        sim.url().into(),
        "--mode".into(),
        "closed".into(),
        "--concurrency".into(),
        "3".into(),
        "--count".into(),
        "10".into(),
        "--max-tokens".into(),
        "32".into(),
        "--out".into(),
        s(&closed),
    ])
    .await;
    let text = check_success(&o);
    assert!(
        text.contains("== run: direct ==")
            && text.contains("ttft all")
            && text.contains("tier split n/a"),
        "{text}"
    );
    let (report, outcomes) = read_run(&closed);
    let run = &report["runs"][0];
    assert_eq!(report["runs"].as_array().unwrap().len(), 1);
    assert_eq!(
        (run["sent"].as_u64(), run["completed"].as_u64()),
        (Some(10), Some(10)),
        "{run}"
    );
    assert!(run["errors"].as_object().unwrap().is_empty(), "{run}");
    assert_eq!(run["ttft_ms"]["count"], 10);
    assert!(run["ttft_ms"]["p50"].as_f64().unwrap() <= run["total_ms"]["p50"].as_f64().unwrap());
    assert_eq!(run["completion_tokens"], 10 * u64::from(SIM_TOKENS));
    assert!(run["cost"].is_null(), "no ledger in direct mode");
    assert!(
        report["target"]
            .as_str()
            .unwrap()
            .contains("model sim-direct"),
        "{report}"
    );
    check_outcomes(&outcomes, 10, SIM_TOKENS, 20.0);
    assert!(closed.join("report.html").exists());
    assert_eq!(sim.stats().completed, 10);

    // Open loop, Poisson arrivals, max_tokens below the natural length:
    // the server stops at max_tokens and says so in its usage.
    let open = tmp.path().join("open");
    let o = replay(vec![
        "run".into(),
        "--input".into(),
        s(&data),
        "--direct".into(),
        format!("{}/v1", sim.url()),
        "--direct-model".into(),
        "sim-direct".into(),
        "--mode".into(),
        "open".into(),
        "--rate".into(),
        "25".into(),
        "--poisson".into(),
        "--count".into(),
        "12".into(),
        "--max-tokens".into(),
        "4".into(),
        "--out".into(),
        s(&open),
    ])
    .await;
    check_success(&o);
    let (report, outcomes) = read_run(&open);
    assert_eq!(report["runs"][0]["completed"], 12, "{report}");
    assert!(report["mode"].as_str().unwrap().contains("Poisson"));
    check_outcomes(&outcomes, 12, 4, 20.0);
    assert_eq!(sim.stats().completed, 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_to_a_dead_server_reports_errors_without_hanging() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = prompts(tmp.path(), 4);
    let out = tmp.path().join("dead");
    let started = Instant::now();
    let o = tokio::time::timeout(
        Duration::from_secs(60),
        replay(vec![
            "run".into(),
            "--input".into(),
            s(&data),
            "--direct".into(),
            format!("http://127.0.0.1:{port}"),
            "--mode".into(),
            "closed".into(),
            "--concurrency".into(),
            "2".into(),
            "--timeout".into(),
            "20s".into(),
            "--out".into(),
            s(&out),
        ]),
    )
    .await
    .expect("a dead server must not hang the run");
    let text = check_success(&o);
    assert!(started.elapsed() < Duration::from_secs(30));
    let (report, outcomes) = read_run(&out);
    let run = &report["runs"][0];
    assert_eq!(
        (run["sent"].as_u64(), run["completed"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(run["errors"]["connect"], 4, "{run}");
    assert_eq!(run["error_rate"], 1.0);
    assert!(outcomes
        .iter()
        .all(|o| o["error"] == "connect" && o["error_message"].is_string()));
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("cannot ask") && notes.contains("4 x connect"),
        "{notes}"
    );
    assert!(text.contains("connect: 4"), "{text}");

    // --direct with --baseline is refused up front, with the reason.
    let o = replay(vec![
        "run".into(),
        "--input".into(),
        s(&data),
        "--direct".into(),
        format!("http://127.0.0.1:{port}"),
        "--baseline".into(),
    ])
    .await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--direct and --baseline cannot be combined"),
        "{err}"
    );
}
