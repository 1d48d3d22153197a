//! The verify stage over real NATS and the vLLM simulator: a `stream:
//! false` request whose tier-1 answer fails verification is answered by
//! tier 2 (one final reply, attempt 2, both attempts booked); one that
//! passes is released as is. The simulator's text is deterministic, so the
//! test scores it first and puts the threshold just at or just above it.
//! (The streamed verify stage, the early-exit gate with scripted logprobs,
//! is tested in failures.rs.) Needs all-MiniLM-L6-v2 in $TRIAGE_CACHE.

mod common;

use std::time::Duration;

use common::*;
use triage_complexity::verifier::VerifyConfig;
use triage_protocol::{Request, Tier, UsageStatus};
use triage_worker::verify::{AnswerCheck, ESCALATED_VERIFY};

const QUESTION: &str = "What is 6 x 7?\nA. 36\nB. 42\nC. 48";

fn unstreamed() -> Request {
    Request {
        stream: false,
        ..prompt(QUESTION)
    }
}

/// The verify score of the simulator's answer to [`QUESTION`].
async fn score_of_answer(small: &triage_vllm_sim::SimHandle) -> (String, f64) {
    let (answer, _) = direct_text(small, QUESTION, Some(64)).await;
    let check =
        AnswerCheck::load(&VerifyConfig::default()).expect("the shipped verifier and MiniLM");
    let a = answer.clone();
    let score = tokio::task::spawn_blocking(move || check.score(QUESTION, &a).unwrap())
        .await
        .unwrap();
    (answer, score)
}

/// A tier-1 worker verifying with the settings `verify` makes (given the
/// verify score of the simulator's answer) and a tier-2 worker, each on a
/// simulator of its own.
struct Cascade {
    world: World,
    _small: triage_vllm_sim::SimHandle,
    large: triage_vllm_sim::SimHandle,
    /// Tier 1's answer to [`QUESTION`].
    answer: String,
    t1: RunningWorker,
    t2: RunningWorker,
}

impl Cascade {
    async fn start(verify: impl FnOnce(&mut VerifyConfig, f64)) -> Self {
        let world = World::new().await;
        let small = sim("small", 12, 0).await;
        let large = sim("large", 12, 0).await;
        let (answer, score) = score_of_answer(&small).await;
        let mut config = world.config(&[&small]);
        config.verify.enabled = true;
        verify(&mut config.verify, score);
        let t1 = world.start(config, Tier::Small).await;
        let t2 = world.start(world.config(&[&large]), Tier::Large).await;
        Self {
            world,
            _small: small,
            large,
            answer,
            t1,
            t2,
        }
    }

    async fn stop(self) {
        self.t1.stop().await;
        self.t2.stop().await;
        self.world.teardown().await;
    }
}

#[tokio::test]
async fn an_answer_that_fails_verification_is_answered_by_tier2() {
    let reference = sim("large", 12, 0).await;
    let cascade = Cascade::start(|v, score| v.threshold = Some(score)).await;
    let world = &cascade.world;

    let mut replies = world.submit(Tier::Small, unstreamed()).await;
    let got = replies.collect(LONG).await;
    let c = got.completion();
    assert_eq!((c.tier, c.attempt), (Tier::Large, 2));
    let (expected, _) = direct_text(&reference, QUESTION, Some(64)).await;
    assert_eq!(
        c.text.as_deref(),
        Some(expected.as_str()),
        "tier 2's answer"
    );
    assert_eq!(
        c.routing.as_ref().unwrap().reasons.last().unwrap(),
        ESCALATED_VERIFY
    );
    assert!(
        replies.extra(Duration::from_millis(300)).await.is_empty(),
        "one final reply"
    );
    world.settled().await;
    let usage = world.usage_of(&replies.id).await;
    assert_eq!(usage.len(), 2, "{usage:?}");
    assert_eq!(
        (usage[0].attempt, usage[0].tier, usage[0].status),
        (1, Tier::Small, UsageStatus::Ok)
    );
    assert!(usage[0].usage.completion_tokens > 0);
    assert!(usage[0].reasons.contains(&ESCALATED_VERIFY.to_string()));
    assert_eq!((usage[1].attempt, usage[1].tier), (2, Tier::Large));
    cascade.stop().await;
}

#[tokio::test]
async fn an_answer_that_passes_is_released_as_is() {
    let cascade = Cascade::start(|v, score| v.threshold = Some(score + 1e-6)).await;
    let (world, answer) = (&cascade.world, &cascade.answer);

    let mut replies = world.submit(Tier::Small, unstreamed()).await;
    let got = replies.collect(LONG).await;
    let c = got.completion();
    assert_eq!((c.tier, c.attempt), (Tier::Small, 1));
    assert_eq!(c.text.as_deref(), Some(answer.as_str()));
    world.settled().await;
    let usage = world.usage_of(&replies.id).await;
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(
        world.tier_messages(Tier::Large).await,
        0,
        "nothing escalated"
    );
    assert_eq!(cascade.large.stats().requests_received, 0);
    cascade.stop().await;
}

#[tokio::test]
async fn a_kept_share_replaces_the_score_threshold_once_warm() {
    // The fixed threshold releases this answer; the share, once two answers
    // are seen, escalates the top half of them, ties included.
    let cascade = Cascade::start(|v, score| {
        v.threshold = Some(score + 1e-6);
        v.share.target = Some(0.5);
        v.share.window = 10;
        v.share.min_scores = 2;
    })
    .await;
    let (world, answer) = (&cascade.world, &cascade.answer);

    let mut first = world.submit(Tier::Small, unstreamed()).await;
    let got = first.collect(LONG).await;
    let c = got.completion();
    assert_eq!(
        (c.tier, c.attempt),
        (Tier::Small, 1),
        "warming up: the score threshold"
    );
    assert_eq!(c.text.as_deref(), Some(answer.as_str()));
    let gauge = "triage_worker_verify_threshold";
    let fixed = cascade
        .t1
        .metric(gauge)
        .expect("set after a verified answer");
    let mut second = world.submit(Tier::Small, unstreamed()).await;
    let got = second.collect(LONG).await;
    let c = got.completion();
    assert_eq!(
        (c.tier, c.attempt),
        (Tier::Large, 2),
        "warm: the share escalates"
    );
    assert_eq!(
        c.routing.as_ref().unwrap().reasons.last().unwrap(),
        ESCALATED_VERIFY
    );
    let kept = cascade.t1.metric(gauge).unwrap();
    assert!(
        kept < fixed,
        "the gauge shows the share's threshold: {kept} vs {fixed}"
    );
    world.settled().await;
    assert_eq!(world.usage_of(&second.id).await.len(), 2);
    cascade.stop().await;
}
