//! The shadow loop over the real NATS and Postgres, with simulators as
//! both tiers and as a judge with scripted grades (tier 1's answer 3,
//! tier 2's 8): a worker samples its answers, `triage-shadow` answers them
//! on the other tier and has them judged, the ledger books every call and
//! writes the grades into `outcomes`.

mod common;

use std::time::Duration;

use common::{World, LARGE_ANSWER, SMALL_ANSWER};
use triage_protocol::{encode, Encoding, Request, ShadowJob, StreamKind, Tier};

const WAIT: Duration = Duration::from_secs(30);

fn expected_rows() -> Vec<(String, i32)> {
    vec![
        ("ok".into(), 1),
        ("shadow".into(), 1_000_001),
        ("judge".into(), 2_000_001),
        ("judge".into(), 3_000_001),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sampling_everything_books_shadow_and_judge_rows_and_judged_outcomes() {
    let world = World::new().await;
    let (stop, worker) = world.worker(Tier::Small, 1.0).await;
    let answer = world.ask(Tier::Small, "req-1", "acme").await;
    assert_eq!(
        answer, SMALL_ANSWER,
        "the client gets its own tier's answer only"
    );

    world
        .eventually("shadow and judge rows booked", WAIT, || async {
            world.ledger_statuses("req-1").await == expected_rows()
        })
        .await;
    world
        .eventually("both grades recorded", WAIT, || async {
            world.judged("req-1").await.len() == 2
        })
        .await;
    assert_eq!(
        world.judged("req-1").await,
        vec![
            ("answer".into(), 1, false, 3.0),
            ("shadow".into(), 2, true, 8.0)
        ]
    );
    let (tier, model, tenant): (i16, String, Option<String>) = sqlx::query_as(
        "SELECT tier, model, tenant FROM ledger_entries WHERE request_id = 'req-1' AND status = 'shadow'",
    )
    .fetch_one(&world.db)
    .await
    .unwrap();
    assert_eq!(
        (tier, model.as_str(), tenant.as_deref()),
        (2, "tier2-sim", Some("acme"))
    );
    // Shadow and judge rows are spend, and no savings.
    let (cost, savings): (rust_decimal::Decimal, rust_decimal::Decimal) = sqlx::query_as(
        "SELECT sum(cost), sum(baseline_cost - cost) FROM ledger_entries
         WHERE request_id = 'req-1' AND status IN ('shadow', 'judge')",
    )
    .fetch_one(&world.db)
    .await
    .unwrap();
    assert!(cost > rust_decimal::Decimal::ZERO);
    assert_eq!(savings, rust_decimal::Decimal::ZERO);
    assert_eq!(world.shadow_metrics.jobs_with("judged"), 1);
    assert!(
        world.texts("req-1").await.is_empty(),
        "no text is stored unless learning.store_text is on"
    );

    // The same job delivered again (a lost ack) books nothing twice.
    let mut request = Request::from_prompt("Why is the sky blue?");
    request.id = "req-1".into();
    request.tenant = Some("acme".into());
    let again = ShadowJob {
        version: 1,
        request,
        tier: Tier::Small,
        model: "tier1-sim".into(),
        attempt: 1,
        answer: SMALL_ANSWER.into(),
        answered_at_ms: triage_protocol::now_ms(),
    };
    world
        .publish(
            &world.ns.shadow(),
            encode(Encoding::Json, &again),
            Encoding::Json,
        )
        .await;
    world
        .eventually("the repeat judged", WAIT, || async {
            world.shadow_metrics.jobs_with("judged") == 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.ledger_statuses("req-1").await, expected_rows());
    assert_eq!(world.judged("req-1").await.len(), 2);

    stop.cancel();
    worker.await.unwrap();
    world.teardown().await;
}

/// With `learning.store_text` the grades carry the conversation and both
/// answers, which the ledger keeps in `outcome_texts` for training.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storing_text_keeps_the_prompt_and_both_answers_with_the_grades() {
    let world = World::storing_text().await;
    let (stop, worker) = world.worker(Tier::Small, 1.0).await;
    world.ask(Tier::Small, "req-t", "acme").await;
    world
        .eventually("both texts stored", WAIT, || async {
            world.texts("req-t").await.len() == 2
        })
        .await;
    let prompt = "Why is the sky blue?".to_string();
    assert_eq!(
        world.texts("req-t").await,
        vec![
            ("answer".into(), prompt.clone(), SMALL_ANSWER.into()),
            ("shadow".into(), prompt, LARGE_ANSWER.into())
        ]
    );
    assert_eq!(world.judged("req-t").await.len(), 2);
    stop.cancel();
    worker.await.unwrap();
    world.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tier_two_answers_are_shadowed_by_tier_one() {
    let world = World::new().await;
    let (stop, worker) = world.worker(Tier::Large, 1.0).await;
    assert_eq!(world.ask(Tier::Large, "req-2", "acme").await, LARGE_ANSWER);
    world
        .eventually("both grades recorded", WAIT, || async {
            world.judged("req-2").await.len() == 2
        })
        .await;
    assert_eq!(
        world.judged("req-2").await,
        vec![
            ("answer".into(), 2, true, 8.0),
            ("shadow".into(), 1, false, 3.0)
        ]
    );
    stop.cancel();
    worker.await.unwrap();
    world.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sampling_nothing_publishes_no_job_and_books_no_shadow() {
    let world = World::new().await;
    let (stop, worker) = world.worker(Tier::Small, 0.0).await;
    world.ask(Tier::Small, "req-3", "acme").await;
    world
        .eventually("the answer booked", WAIT, || async {
            !world.ledger_statuses("req-3").await.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.stream_seq(StreamKind::Shadow).await, 0);
    assert_eq!(world.ledger_statuses("req-3").await, vec![("ok".into(), 1)]);
    assert!(world.judged("req-3").await.is_empty());
    stop.cancel();
    worker.await.unwrap();
    world.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_jobs_go_to_the_dead_letter_with_the_reason() {
    let world = World::new().await;
    let dead_sub = world.ns.dead();
    let mut dead = world.client.subscribe(dead_sub).await.unwrap();
    world
        .publish(&world.ns.shadow(), b"{not json".to_vec(), Encoding::Json)
        .await;
    let empty = ShadowJob {
        version: 1,
        request: Request {
            id: "req-4".into(),
            ..Request::default()
        },
        tier: Tier::Small,
        model: "m".into(),
        attempt: 1,
        answer: "a".into(),
        answered_at_ms: 0,
    };
    world
        .publish(
            &world.ns.shadow(),
            encode(Encoding::MsgPack, &empty),
            Encoding::MsgPack,
        )
        .await;
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut dead))
            .await
            .expect("a dead letter")
            .unwrap();
        let h = m.headers.unwrap();
        assert_eq!(
            h.get(triage_protocol::headers::DEAD_SERVICE)
                .unwrap()
                .as_str(),
            "shadow"
        );
        reasons.push(
            h.get(triage_protocol::headers::DEAD_REASON)
                .unwrap()
                .to_string(),
        );
    }
    reasons.sort();
    assert!(reasons[0].contains("undecodable shadow job"), "{reasons:?}");
    assert!(reasons[1].contains("unusable shadow job"), "{reasons:?}");
    assert!(
        reasons[1].contains("neither `messages` nor `prompt`"),
        "{reasons:?}"
    );
    world
        .eventually("both counted", WAIT, || async {
            world.shadow_metrics.jobs_with("dead_lettered") == 2
        })
        .await;
    world.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_judge_that_fails_once_is_retried_and_nothing_is_booked_twice() {
    let world = World::new().await;
    let mut faults = triage_vllm_sim::FaultConfig::none();
    faults.script = vec![triage_vllm_sim::FaultKind::Error(503)];
    world.judge.set_faults(faults).unwrap();
    let (stop, worker) = world.worker(Tier::Small, 1.0).await;
    world.ask(Tier::Small, "req-5", "acme").await;
    world
        .eventually("judged on the second delivery", WAIT, || async {
            world.judged("req-5").await.len() == 2
        })
        .await;
    assert_eq!(world.shadow_metrics.jobs_with("retried"), 1);
    assert_eq!(world.shadow_metrics.jobs_with("judged"), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.ledger_statuses("req-5").await, expected_rows());
    stop.cancel();
    worker.await.unwrap();
    world.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_judge_that_refuses_sends_the_job_to_the_dead_letter() {
    let world = World::new().await;
    world
        .judge
        .set_faults(triage_vllm_sim::FaultConfig::always_error(400))
        .unwrap();
    let mut dead = world.client.subscribe(world.ns.dead()).await.unwrap();
    let (stop, worker) = world.worker(Tier::Small, 1.0).await;
    world.ask(Tier::Small, "req-6", "acme").await;
    let m = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut dead))
        .await
        .expect("a dead letter")
        .unwrap();
    let h = m.headers.unwrap();
    let reason = h
        .get(triage_protocol::headers::DEAD_REASON)
        .unwrap()
        .to_string();
    assert!(reason.contains("judge call"), "{reason}");
    assert_eq!(
        h.get(triage_protocol::headers::DEAD_CODE).unwrap().as_str(),
        "backend_rejected"
    );
    world
        .eventually("the answer booked", WAIT, || async {
            !world.ledger_statuses("req-6").await.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.ledger_statuses("req-6").await, vec![("ok".into(), 1)]);
    stop.cancel();
    worker.await.unwrap();
    world.teardown().await;
}
