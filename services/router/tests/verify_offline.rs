//! The verifier's offline contract, with the real model: `score` gives
//! `verify_score` and `verify_tier` to exactly the lines that carry
//! `small_response`, from the shipped combined policy. Needs
//! all-MiniLM-L6-v2 in $TRIAGE_CACHE (the set-up fetches it).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use triage_complexity::question_kind::QuestionKind;
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
    let no_share = triage_complexity::share_threshold::ShareConfig::default();
    offline::score(router, verifier, &no_share, &input, &output, 2)
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

/// `train-verifier` without the embedding, 2 folds, one L2: the file it
/// writes to `output`, loaded.
fn trained(
    scorer: &Scorer,
    input: &Path,
    output: &Path,
    checks: bool,
    kind_heads: bool,
) -> Verifier {
    let opts = triage_router::offline_verify::TrainVerifierOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        answer_vectors: None,
        folds: 2,
        seed: 7,
        l2_grid: vec![0.1],
        embedding: false,
        checks,
        target_cost: 0.5,
        price_ratio: 8.0,
        limit: None,
        rescuable: false,
        kind_heads,
        scores_out: Some(output.with_extension("scores.jsonl")),
    };
    triage_router::offline_verify::train_verifier(scorer, &opts).unwrap();
    // One line of out-of-fold scores per answered row, for analysis.
    let rows = std::fs::read_to_string(input).unwrap().lines().count();
    let scores = std::fs::read_to_string(output.with_extension("scores.jsonl")).unwrap();
    let scores: Vec<Value> = scores
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(scores.len(), rows);
    for s in &scores {
        assert!(
            s["verify"].is_f64() && s["router"].is_f64() && s["kind"].is_string(),
            "{s}"
        );
    }
    Verifier::load(output).unwrap()
}

/// A labelled file where tier 1 fails exactly the word problems whose
/// worked sums it got wrong (and tier 2 rescues them).
fn arithmetic_outcomes(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (a, b) = (3 + i, 4 + 2 * i);
            let wrong = i % 2 == 0;
            let stated = if wrong { a + b + 7 } else { a + b };
            json!({
                "id": format!("q{i}"),
                "prompt": format!("Tom has {a} apples and buys {b} more. How many apples does he have?"),
                "small_response": format!("He has {a} + {b} = {stated} apples.\n#### {stated}"),
                "label_tier": if wrong { 2 } else { 1 },
                "small_ok": !wrong,
                "large_ok": true,
            })
            .to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn train_verifier_fits_the_answer_checks_and_its_file_scores_wrong_sums_as_poor() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("outcomes.jsonl");
    std::fs::write(&input, arithmetic_outcomes(40)).unwrap();
    let scorer = Scorer::new(ScorerConfig::default()).unwrap();
    let train =
        |checks: bool, name: &str| trained(&scorer, &input, &dir.path().join(name), checks, true);
    let with_checks = train(true, "checks.json");
    assert_eq!(
        with_checks.file().head.features,
        "answer-form/1+answer-check/1+prompt-form/1"
    );
    let question = "Tom has 5 apples and buys 8 more. How many apples does he have?";
    let right = with_checks.score(question, "He has 5 + 8 = 13 apples.\n#### 13", &[], None);
    let wrong = with_checks.score(question, "He has 5 + 8 = 20 apples.\n#### 20", &[], None);
    assert!(
        wrong > right,
        "a wrong sum scores as poorer: {wrong} vs {right}"
    );
    // Without the checks the layout is the one verifiers had before.
    let without = train(false, "form.json");
    assert_eq!(without.file().head.features, "answer-form/1");
}

/// Word problems answered right, where tier 1 fails exactly the ones it
/// answered at length, and open requests (no options, no numbers) where it
/// fails exactly the ones it answered in a word: length means "poor" in one
/// kind and "good" in the other, which one head cannot weigh both ways.
fn opposite_length_outcomes(problems: usize, requests: usize) -> String {
    let word = |mut i: usize| {
        let mut w = String::new();
        loop {
            w.push((b'a' + (i % 26) as u8) as char);
            i /= 26;
            if i == 0 {
                return w;
            }
        }
    };
    let problem = (0..problems).map(|i| {
        let (a, b, poor) = (3 + i, 4 + 2 * i, i % 2 == 0);
        let padding = if poor {
            ", counting each of them carefully one by one as they come into the basket"
        } else {
            ""
        };
        (
            format!("p{i}"),
            format!("Tom has {a} apples and buys {b} more. How many apples does he have?"),
            format!(
                "He has {a} + {b} = {} apples{padding}.\n#### {}",
                a + b,
                a + b
            ),
            poor,
        )
    });
    let request = (0..requests).map(|i| {
        let (topic, poor) = (word(i), i % 2 == 0);
        let answer = if poor {
            "Sure.".to_string()
        } else {
            format!("A note about {topic}: it is worth knowing well, and here is why it matters to everyone who meets it.")
        };
        (format!("o{i}"), format!("Write a short note about {topic}."), answer, poor)
    });
    problem
        .chain(request)
        .map(|(id, prompt, answer, poor)| {
            json!({
                "id": id,
                "prompt": prompt,
                "small_response": answer,
                "label_tier": if poor { 2 } else { 1 },
                "small_ok": !poor,
                "large_ok": true,
            })
            .to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn train_verifier_fits_a_head_for_a_kind_the_general_head_ranks_wrongly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("outcomes.jsonl");
    std::fs::write(&input, opposite_length_outcomes(200, 120)).unwrap();
    let scorer = Scorer::new(ScorerConfig::default()).unwrap();
    let train = |kind_heads: bool, name: &str| {
        trained(&scorer, &input, &dir.path().join(name), true, kind_heads)
    };
    let open = "Write a short note about otters.";
    let long_note = "A note about otters: they are worth knowing well, and here is why they matter to everyone who meets them.";
    let problem = "Tom has 5 apples and buys 8 more. How many apples does he have?";
    let padded = "He has 5 + 8 = 13 apples, counting each of them carefully one by one as they come into the basket.\n#### 13";
    let plain = "He has 5 + 8 = 13 apples.\n#### 13";
    let ranks_both = |v: &Verifier| {
        let open_right = v.score(open, "Sure.", &[], None) > v.score(open, long_note, &[], None);
        let problem_right =
            v.score(problem, padded, &[], None) > v.score(problem, plain, &[], None);
        (open_right, problem_right)
    };
    let one = train(false, "one.json");
    assert!(one.file().kind_heads.is_empty());
    assert_ne!(
        ranks_both(&one),
        (true, true),
        "one head cannot rank both kinds"
    );
    let by_kind = train(true, "kinds.json");
    // The kind the general head ranks backwards gets a head of its own;
    // the other stays with the general head (its own would be no better).
    let kinds: Vec<QuestionKind> = by_kind.file().kind_heads.keys().copied().collect();
    assert_eq!(kinds.len(), 1, "{kinds:?}");
    assert_eq!(ranks_both(&by_kind), (true, true));
}
