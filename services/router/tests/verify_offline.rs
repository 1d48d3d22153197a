//! The verifier's offline contract, with the real model: `score` gives
//! `verify_score` and `verify_tier` to exactly the lines that carry
//! `small_response`, from the shipped combined policy. Needs
//! all-MiniLM-L6-v2 in $TRIAGE_CACHE (the set-up fetches it).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use triage_complexity::scorer::{Scorer, ScorerConfig};
use triage_complexity::verifier::{Verifier, VerifyConfig};
use triage_complexity::ModelFiles;
use triage_router::config::PolicyConfig;
use triage_router::{offline, Router};

const QUESTION: &str = "What is 6 x 7?\nA. 36\nB. 42\nC. 48\nD. 54";

fn router() -> Router {
    if let Err(e) = ModelFiles::default_minilm().check() {
        panic!("{e}");
    }
    let scorer = Arc::new(Scorer::new(ScorerConfig::default()).unwrap());
    Router::new(
        Ok(scorer),
        None,
        4,
        1,
        PolicyConfig::default(),
        Duration::from_secs(60),
    )
}

/// Scores `lines` with `verifier`; returns the output lines by id.
async fn score(router: &Router, verifier: &Verifier, lines: &[Value]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).unwrap();
    offline::score(router, verifier, &input, &output, 2)
        .await
        .unwrap();
    std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn inputs() -> Vec<Value> {
    vec![
        json!({"id": "stated", "prompt": QUESTION,
               "small_response": "6 x 7 = 42, which is option B. The answer is (B)."}),
        json!({"id": "unanswered", "prompt": "Why is the sky blue?"}),
        json!({"id": "cut", "prompt": QUESTION,
               "small_response": "We add 6 seven times: 6 + 6 + 6 + 6 + 6 + 6 + 6 + 6 + 6 + 6 + 6 +"}),
    ]
}

#[tokio::test]
async fn only_answered_lines_get_verify_fields_from_the_shipped_policy() {
    let router = router();
    let verifier = Verifier::shipped().unwrap();
    let out = score(&router, &verifier, &inputs()).await;
    let ids: Vec<&str> = out.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["stated", "unanswered", "cut"],
        "one line per input, in order"
    );
    assert!(out[1].get("verify_score").is_none() && out[1].get("verify_tier").is_none());
    for line in [&out[0], &out[2]] {
        let v = line["verify_score"].as_f64().expect("verify_score");
        assert!((0.0..=1.0).contains(&v), "{line}");
        let escalate = v >= verifier.verify_threshold()
            || line["score"].as_f64().unwrap() >= verifier.hard_threshold();
        assert_eq!(
            line["verify_tier"],
            json!(if escalate { 2 } else { 1 }),
            "{line}"
        );
    }
    let (stated, cut) = (
        out[0]["verify_score"].as_f64(),
        out[2]["verify_score"].as_f64(),
    );
    assert!(
        cut > stated,
        "a cut-off answer without a letter scores poorer: {cut:?} vs {stated:?}"
    );
}

#[tokio::test]
async fn the_configured_thresholds_decide_verify_tier() {
    let router = router();
    let keep_all = Verifier::from_config(&VerifyConfig {
        threshold: Some(1.01),
        hard_threshold: Some(1.01),
        ..VerifyConfig::default()
    })
    .unwrap();
    let out = score(&router, &keep_all, &inputs()).await;
    assert_eq!(out[0]["verify_tier"], json!(1));
    assert_eq!(out[2]["verify_tier"], json!(1));
    let escalate_all = Verifier::from_config(&VerifyConfig {
        threshold: Some(0.0),
        ..VerifyConfig::default()
    })
    .unwrap();
    let out = score(&router, &escalate_all, &inputs()).await;
    assert_eq!(out[0]["verify_tier"], json!(2));
    assert_eq!(out[2]["verify_tier"], json!(2));
    assert!(out[1].get("verify_tier").is_none());
}
