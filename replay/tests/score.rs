//! `triage-replay score`: the built binary over labelled rows of
//! routing-dev.jsonl with the real embedding model. Checks the sweep's
//! arithmetic against the per-row scores it writes, and that the scores are
//! the router's own: `triage-router score`'s code (the `triage_router`
//! library, configured as its binary configures it) gives the same lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::Value;

/// `n` labelled rows spread over routing-dev.jsonl.
fn dataset(dir: &Path, n: usize) -> PathBuf {
    let data = triage_complexity::dataset::data_dir();
    let text = std::fs::read_to_string(data.join("routing-dev.jsonl"))
        .expect("data/routing-dev.jsonl in the repository (or TRIAGE_DATA_DIR)");
    let rows: Vec<&str> = text.lines().step_by(41).take(n).collect();
    assert_eq!(rows.len(), n);
    let path = dir.join("labelled.jsonl");
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    path
}

async fn replay(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_triage-replay"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_sweep_is_consistent_and_equals_the_routers_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 30);
    let out = tmp.path().join("out");
    let o = replay(vec![
        "score".into(),
        "--input".into(),
        s(&data),
        "--threshold".into(),
        "0.42,0.9".into(),
        "--out".into(),
        s(&out),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("threshold  tier-2 share  accuracy") && stdout.contains("<- configured"),
        "{stdout}"
    );

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("score-sweep.json")).unwrap()).unwrap();
    let lines = jsonl(&out.join("scores.jsonl"));
    assert_eq!(lines.len(), 30);
    assert_eq!(report["rows"], 30);
    assert_eq!(report["labelled"], 30);
    let n = lines.len() as f64;
    let configured = report["configured_threshold"].as_f64().unwrap();

    // Every line: id, score, tier, reasons, label_tier; the tier is the
    // score against the configured threshold (no pins or overrides here).
    for l in &lines {
        let score = l["score"].as_f64().unwrap_or_else(|| panic!("{l}"));
        assert!((0.0..=1.0).contains(&score), "{l}");
        assert!(l["reasons"].is_array() && l["label_tier"].is_u64(), "{l}");
        let tier = l["tier"].as_u64().unwrap();
        assert_eq!(tier == 2, score >= configured, "{l}");
    }

    let sweep = report["sweep"].as_array().unwrap();
    assert!(
        sweep.len() >= 21,
        "the 0.05 grid plus the marked thresholds"
    );
    let price_ratio = report["price_ratio"].as_f64().unwrap();
    assert_eq!(price_ratio, 8.0);
    let mut last: Option<(f64, f64)> = None;
    for row in sweep {
        let t = row["threshold"].as_f64().unwrap();
        let share = row["tier2_share"].as_f64().unwrap();
        if let Some((lt, ls)) = last {
            assert!(t > lt, "thresholds ascend: {lt} then {t}");
            assert!(
                share <= ls,
                "tier-2 share never grows with the threshold: {sweep:?}"
            );
        }
        last = Some((t, share));
        // Recomputed from scores.jsonl.
        let tier2 = lines
            .iter()
            .filter(|l| l["score"].as_f64().unwrap() >= t)
            .count() as f64;
        let correct = lines
            .iter()
            .filter(|l| (l["score"].as_f64().unwrap() >= t) == (l["label_tier"] == 2))
            .count() as f64;
        assert!((share - tier2 / n).abs() < 1e-12, "{row}");
        assert!(
            (row["accuracy"].as_f64().unwrap() - correct / n).abs() < 1e-12,
            "{row}"
        );
        let cost = share + (1.0 - share) / price_ratio;
        assert!(
            (row["relative_cost"].as_f64().unwrap() - cost).abs() < 1e-12,
            "{row}"
        );
        let marks: Vec<&str> = row["marks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(marks.contains(&"configured"), t == configured, "{row}");
        if t == 0.42 || t == 0.9 {
            assert!(marks.contains(&"--threshold"), "{row}");
        }
        if t == configured {
            // The decisions as made are the sweep's row at the configured threshold.
            assert_eq!(share, report["decided"]["tier2_share"].as_f64().unwrap());
            assert_eq!(row["accuracy"], report["accuracy"]);
        }
    }
    assert_eq!(sweep[0]["threshold"].as_f64().unwrap(), 0.0);
    assert_eq!(sweep[0]["tier2_share"].as_f64().unwrap(), 1.0);
    assert_eq!(
        sweep[0]["relative_cost"].as_f64().unwrap(),
        1.0,
        "all tier 2 costs what all tier 2 costs"
    );
    assert!(sweep
        .iter()
        .any(|r| r["threshold"].as_f64().unwrap() == configured));

    // The router's own `score` command, configured as its binary does.
    let config: triage_router::RouterConfig =
        triage_runtime::load(None, triage_router::config::ENV_PREFIX).unwrap();
    config.validate().unwrap();
    let routed_path = tmp.path().join("router-scores.jsonl");
    {
        let scorer = Arc::new(
            triage_complexity::scorer::Scorer::new(config.scoring.clone())
                .expect("the embedding model (scripts/setup.sh)"),
        );
        assert!(
            !config.self_rating.enabled,
            "the test expects no self-rating"
        );
        let router = triage_router::Router::new(
            Ok(scorer),
            None,
            config.self_rating.max_concurrency,
            config.batching.model_threads,
            config.policy.clone(),
            std::time::Duration::from_secs(600),
        );
        let verifier = triage_complexity::verifier::Verifier::from_config(&config.verify).unwrap();
        let share = &config.verify.share;
        triage_router::offline::score(&router, &verifier, share, &data, &routed_path, 32)
            .await
            .unwrap();
    }
    let routed = jsonl(&routed_path);
    assert_eq!(routed.len(), lines.len());

    // The three policies over the rows with tier 1's recorded answer: the
    // same rows the router's `score` gives a verify score.
    let answered = routed
        .iter()
        .filter(|l| l.get("verify_score").is_some())
        .count();
    assert!(answered > 0, "the sample has rows with small_response");
    let policies = &report["policies"];
    assert_eq!(policies["answered"], answered, "{policies}");
    let rows = policies["policies"].as_array().unwrap();
    assert_eq!(rows[0]["policy"], "pre-hoc (router score)");
    assert_eq!(rows[1]["policy"], "verify only");
    assert!(rows.len() > 2 && rows[2..].iter().all(|r| r["hard_threshold"].is_number()));
    for r in rows {
        if let Some(a) = r["area"].as_f64() {
            assert!((0.0..=1.0).contains(&a), "{r}");
        }
    }
    assert!(
        stdout.contains("verify only") && stdout.contains("configured policy"),
        "{stdout}"
    );
    for (mine, theirs) in lines.iter().zip(&routed) {
        for key in ["id", "score", "tier", "confidence", "reasons"] {
            assert_eq!(mine[key], theirs[key], "{key}: {mine} vs {theirs}");
        }
        // Bit for bit, not just equal as printed.
        assert_eq!(
            mine["score"].as_f64().unwrap().to_bits(),
            theirs["score"].as_f64().unwrap().to_bits()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_names_a_missing_file_and_a_bad_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.jsonl");
    let o = replay(vec!["score".into(), "--input".into(), s(&missing)]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot read") && err.contains("nope.jsonl"),
        "{err}"
    );

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\":\"a\",\"prompt\":\"hi\",\"label_tier\":1}\n\n{\"id\":\"b\",\"prompt\":\n",
    )
    .unwrap();
    let o = replay(vec!["score".into(), "--input".into(), s(&bad)]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("bad.jsonl:3:"), "names the line: {err}");

    let o = replay(vec![
        "score".into(),
        "--input".into(),
        s(&bad),
        "--threshold".into(),
        "1.5".into(),
    ])
    .await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--threshold must be within [0, 1]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_samples_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 30);
    let run = |out: &str| {
        vec![
            "score".into(),
            "--input".into(),
            s(&data),
            "--sample".into(),
            "8".into(),
            "--seed".into(),
            "5".into(),
            "--out".into(),
            s(&tmp.path().join(out)),
        ]
    };
    let a = replay(run("a")).await;
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = replay(run("b")).await;
    assert!(b.status.success());
    let a = jsonl(&tmp.path().join("a/scores.jsonl"));
    let b = jsonl(&tmp.path().join("b/scores.jsonl"));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b);
}
