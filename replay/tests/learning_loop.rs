//! The learning loop end to end, on the real binaries, NATS and Postgres:
//! workers shadow every answer, `triage-shadow` (storing text) has a judge
//! simulator with scripted grades grade both tiers, the ledger keeps the
//! grades and the text; `triage-router train --from-db` fits a head on
//! them and compares it with the live one on the most recent slice;
//! `promote` switches the running router with no request lost and each
//! decision naming one head; `rollback` puts the shipped head back; and
//! `triage-ledger purge` deletes the text.
//!
//! The traffic is made learnable on purpose: tier 1 fails every question
//! marked HARD-Q (the judge grades its answer 2, tier 2's 9) and does well
//! on the rest (8), so the label is tier 2 exactly for the hard ones.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{bin_dir, start_custom, wait_ready, wait_within, Pipeline};
use triage_bus::TriageClient;
use triage_protocol::{Namespace, Request};
use triage_vllm_sim::SimConfig;

const TOPICS: [&str; 20] = [
    "the Roman empire",
    "the Hanseatic league",
    "the Ming dynasty",
    "the Inca road system",
    "the Ottoman tax farms",
    "the Venetian arsenal",
    "the Mughal mint",
    "the Silk Road caravans",
    "the Dutch East India Company",
    "the Byzantine guilds",
    "the Aztec markets",
    "the Mali empire",
    "the Khmer reservoirs",
    "the Carolingian manors",
    "the Songhai trade",
    "the Tang canals",
    "the Phoenician colonies",
    "the Abbasid banks",
    "the Swahili ports",
    "the Hittite iron trade",
];
const NAMES: [&str; 20] = [
    "Ada", "Bea", "Cy", "Dot", "Eve", "Flo", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lou", "Mo", "Ned",
    "Oz", "Pat", "Quin", "Roy", "Sue", "Ty",
];
const LIMIT: Duration = Duration::from_secs(120);

fn scripted(model: &str, replies: &[(&str, &str)]) -> SimConfig {
    SimConfig::instant(model, 16).with_replies(replies)
}

fn question(i: usize) -> (String, String) {
    let (kind, text) = if i.is_multiple_of(2) {
        let t = TOPICS[i / 2 % TOPICS.len()];
        ("hard", format!("HARD-Q: Explain in depth how the economy of {t} worked, its causes and consequences."))
    } else {
        let n = NAMES[i / 2 % NAMES.len()];
        ("easy", format!("EASY-Q: Say hello to {n} in one word."))
    };
    (format!("loop-{kind}-{i}"), text)
}

/// Runs a built binary with the pipeline's namespace and database.
fn run_bin(p: &Pipeline, bin: &str, args: &[&str]) -> Output {
    let child = Command::new(bin_dir().join(bin))
        .args(args)
        .env("TRIAGE_ROUTER_NATS__PREFIX", &p.prefix)
        .env("TRIAGE_ROUTER_NATS__URL", triage_bus::default_nats_url())
        .env("TRIAGE_ROUTER_SCORING__FIRST_STAGE__ENABLED", "false")
        .env("TRIAGE_LEDGER_DATABASE__URL", &p.db_url)
        .env("TRIAGE_DATABASE_URL", &p.db_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_within(child, Duration::from_secs(300), &format!("{bin} {args:?}"));
    assert!(
        out.status.success(),
        "{bin} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asks `text` as `id`; the head version its decision names (exactly one).
async fn ask(client: &TriageClient, id: &str, text: &str) -> String {
    let mut r = Request::from_prompt(text);
    r.id = id.into();
    r.max_tokens = Some(16);
    let answer = client
        .ask(r, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    let routing = answer
        .completion
        .and_then(|c| c.routing)
        .expect("a routing decision");
    let heads: Vec<&str> = routing
        .reasons
        .iter()
        .filter_map(|r| r.strip_prefix("head="))
        .collect();
    assert_eq!(
        heads.len(),
        1,
        "{id}: one head per decision, got {:?}",
        routing.reasons
    );
    heads[0].to_string()
}

/// Asks until a decision names `version` (the router follows the bucket).
async fn until_head(client: &TriageClient, version: &str, tag: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        if ask(
            client,
            &format!("{tag}-{i}"),
            "EASY-Q: Say hello to Zed in one word.",
        )
        .await
            == version
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "head {version} not in force within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(db: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_judge_train_promote_rollback_and_purge() {
    let judge = triage_vllm_sim::spawn(scripted(
        "judge-sim",
        &[
            ("small-hard", "Wrong. Rating: [[2]]"),
            ("small-easy", "Fine. Rating: [[8]]"),
            ("large-answer", "Right. Rating: [[9]]"),
        ],
    ))
    .await
    .unwrap();
    let judge_url = judge.url().to_string();
    let small = scripted(
        "sim-small",
        &[("HARD-Q", "small-hard guess"), ("", "small-easy reply")],
    );
    let large = scripted("sim-large", &[("", "large-answer reply")]);
    let env = |prefix: &str| match prefix {
        "TRIAGE_WORKER_" => vec![("TRIAGE_WORKER_SHADOW__FRACTION".into(), "1.0".into())],
        // Every prompt through the model, whose head is what changes.
        "TRIAGE_ROUTER_" => vec![(
            "TRIAGE_ROUTER_SCORING__FIRST_STAGE__ENABLED".into(),
            "false".into(),
        )],
        _ => Vec::new(),
    };
    let p = start_custom((small, large), env, |stack, tier1, tier2| {
        let shadow = stack.shadow(
            "shadow",
            (tier1, "sim-small"),
            (tier2, "sim-large"),
            (&judge_url, "judge-sim"),
        );
        vec![shadow.env("TRIAGE_SHADOW_LEARNING__STORE_TEXT", "true")]
    })
    .await;
    wait_ready(&p).await;
    let client = async_nats::connect(triage_bus::default_nats_url())
        .await
        .unwrap();
    let triage = TriageClient::new(client, Namespace::new(&p.prefix).unwrap());
    let db = sqlx::PgPool::connect(&p.db_url).await.unwrap();

    // 1. Traffic, shadowed and judged with its text.
    let mut shipped = String::new();
    for i in 0..40 {
        let (id, text) = question(i);
        shipped = ask(&triage, &id, &text).await;
    }
    let texts = "SELECT count(*) FROM outcome_texts WHERE request_id LIKE 'loop-%'";
    let deadline = tokio::time::Instant::now() + LIMIT;
    while count(&db, texts).await < 80 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "80 judged texts not stored\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let bad_hard =
        "SELECT count(*) FROM outcomes WHERE source = 'judge' AND judged IN ('answer', 'shadow')
                    AND tier = 1 AND NOT good AND request_id LIKE 'loop-hard-%'";
    assert_eq!(
        count(&db, bad_hard).await,
        20,
        "tier 1 failed every hard question"
    );

    // 2. Train on them; the candidate against the live (shipped) head.
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head.json");
    let verifier = dir.path().join("verifier.json");
    let out = run_bin(
        &p,
        "triage-router",
        &[
            "train",
            "--from-db",
            "--database-url",
            &p.db_url,
            "--output",
            head.to_str().unwrap(),
            "--holdout",
            "0.25",
            "--folds",
            "2",
            "--repeats",
            "1",
            "--l2",
            "0.1",
            "--verifier-output",
            verifier.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{stdout}");
    assert!(stdout.contains("live head: the shipped one"), "{stdout}");
    // The verifier was fitted on tier 1's stored answers, in the shipped
    // layout, and loads as a verifier.
    let fitted = triage_complexity::verifier::Verifier::load(&verifier)
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(
        fitted.file().head.features,
        triage_complexity::verifier::Verifier::shipped()
            .unwrap()
            .file()
            .head
            .features
    );
    assert!(stdout.contains("most recent"), "a held-out slice: {stdout}");
    let candidate_auc: f64 = stdout
        .lines()
        .find(|l| l.starts_with("candidate "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no candidate line with an AUC: {stdout}"));
    assert!(
        candidate_auc >= 0.8,
        "the candidate learnt the hard questions: {stdout}"
    );

    // 3. Promote while requests are in flight: none lost, each one head.
    let in_flight = async {
        let asks = (0..20).map(|i| {
            let t = triage.clone();
            async move {
                ask(
                    &t,
                    &format!("switch-{i}"),
                    "EASY-Q: Say hello to Max in one word.",
                )
                .await
            }
        });
        futures::future::join_all(asks).await
    };
    let (promoted, heads) = tokio::join!(
        async {
            run_bin(
                &p,
                "triage-router",
                &["promote", "--head", head.to_str().unwrap()],
            )
        },
        in_flight
    );
    assert_eq!(
        heads.len(),
        20,
        "every request in flight during the switch was answered"
    );
    let promoted = String::from_utf8_lossy(&promoted.stdout).to_string();
    // stdout also has the command's log lines: the version follows "promoted ".
    let version = promoted
        .split("promoted ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|v| v.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no version in {promoted:?}"))
        .to_string();
    assert_ne!(version, shipped);
    until_head(&triage, &version, "after-promote").await;

    // 4. Roll back: the shipped head again.
    let rolled = run_bin(&p, "triage-router", &["rollback"]);
    assert!(String::from_utf8_lossy(&rolled.stdout).contains("rolled back"));
    until_head(&triage, &shipped, "after-rollback").await;

    // 5. Purge every text; the grades stay. (The requests of steps 3 and
    // 4 are still being shadowed: their texts may arrive after the purge.)
    let before: String = sqlx::query_scalar("SELECT now()::text")
        .fetch_one(&db)
        .await
        .unwrap();
    let purged = run_bin(&p, "triage-ledger", &["purge", "--older-than", "0s"]);
    assert!(String::from_utf8_lossy(&purged.stdout).contains("outcome texts deleted"));
    assert_eq!(count(&db, texts).await, 0, "the loop's texts are gone");
    let old: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outcome_texts WHERE recorded_at < $1::timestamptz",
    )
    .bind(before)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(old, 0, "nothing recorded before the purge is left");
    assert!(count(&db, "SELECT count(*) FROM outcomes WHERE source = 'judge'").await >= 80);

    db.close().await;
    p.teardown().await;
}
