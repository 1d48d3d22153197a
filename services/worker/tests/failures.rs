//! Retries, restarts, escalation, the early-exit fallback, circuit breakers
//! and pre-warm, against the real NATS and the simulator's fault injection.

mod common;

use std::time::Duration;

use common::*;
use prometheus_client::registry::Registry;
use triage_protocol::{
    headers, Encoding, ErrorCode, RoutingDecision, StreamKind, Tier, UsageStatus,
};
use triage_vllm_sim::{FaultConfig, FaultKind, SimConfig};
use triage_worker::Worker;

fn script(kinds: Vec<FaultKind>) -> FaultConfig {
    FaultConfig {
        script: kinds,
        ..FaultConfig::none()
    }
}

#[tokio::test]
async fn connection_errors_429_and_5xx_are_retried_with_new_attempts() {
    let world = World::new().await;
    let backend = sim("m", 10, 0).await;
    let reference = sim("m", 10, 0).await;
    backend
        .set_faults(script(vec![
            FaultKind::Error(503),
            FaultKind::Error(429),
            FaultKind::Error(500),
        ]))
        .unwrap();
    let mut config = world.config(&[&backend]);
    // Three straight failures would otherwise take the only backend out.
    config.health.failure_threshold = 5;
    let worker = world.start(config, Tier::Small).await;
    let mut replies = world.submit(Tier::Small, prompt("retry me")).await;
    let got = replies.collect(LONG).await;
    let (expected, _) = direct_text(&reference, "retry me", Some(64)).await;
    assert_eq!(got.text(), expected);
    assert_eq!(
        got.completion().attempt,
        4,
        "three failed calls, then the answer"
    );
    assert_eq!(backend.stats().requests_received, 4);
    // Calls refused before generating cost nothing: only the answer is booked.
    world.settled().await;
    let usage = world.usage_of(&replies.id).await;
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].attempt, usage[0].status), (4, UsageStatus::Ok));
    let retries: f64 = worker
        .metrics()
        .lines()
        .filter(|l| l.starts_with("triage_worker_retries_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(retries, 3.0);
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn a_backend_that_is_down_is_a_connection_error_and_retried_elsewhere() {
    let world = World::new().await;
    let mut dead = sim("m", 5, 0).await;
    let alive = sim("m", 5, 0).await;
    let mut config = world.config(&[&dead, &alive]);
    config.health.interval = Duration::from_secs(3600); // only requests see the failure
    let worker = world.start(config, Tier::Small).await;
    dead.kill();
    for i in 0..4 {
        let got = world
            .submit(Tier::Small, prompt(&format!("q{i}")))
            .await
            .collect(LONG)
            .await;
        got.completion();
    }
    assert_eq!(alive.stats().completed, 4);
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn first_byte_timeouts_are_retried() {
    let world = World::new().await;
    let backend = sim("m", 5, 0).await;
    backend
        .set_faults(FaultConfig {
            script: vec![FaultKind::Hang],
            hang_ms: 3_000,
            ..FaultConfig::none()
        })
        .unwrap();
    let mut config = world.config(&[&backend]);
    config.timeouts.first_byte = Duration::from_millis(300);
    let worker = world.start(config, Tier::Small).await;
    let got = world
        .submit(Tier::Small, prompt("hang first"))
        .await
        .collect(LONG)
        .await;
    assert_eq!(got.completion().attempt, 2);
    assert_eq!(backend.stats().injected_hangs, 1);
    assert!(worker
        .metrics()
        .contains("triage_worker_retries_total{tier=\"1\",backend"));
    assert!(worker.metrics().contains("kind=\"timeout_first_byte\"} 1"));
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn silence_between_chunks_is_a_timeout_and_restarts_elsewhere() {
    let world = World::new().await;
    let stalling = sim("m", 5, 2_000).await; // first token at once, then 2 s gaps
    let fine = sim("m", 5, 0).await;
    let reference = sim("m", 5, 0).await;
    let mut config = world.config(&[&stalling, &fine]);
    config.timeouts.between_chunks = Duration::from_millis(300);
    let worker = world.start(config, Tier::Small).await;
    // The first request of a worker goes to its first backend.
    let got = world
        .submit(Tier::Small, prompt("stall"))
        .await
        .collect(LONG)
        .await;
    let (expected, _) = direct_text(&reference, "stall", Some(64)).await;
    assert_eq!(
        got.attempts(),
        [1, 2],
        "attempt 1 sent its first token, then stalled"
    );
    assert_eq!(got.text(), expected);
    assert!(
        worker.metrics().contains("kind=\"timeout_idle\"} 1"),
        "{}",
        worker.metrics()
    );
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn a_stream_broken_after_chunks_restarts_as_a_new_attempt() {
    let world = World::new().await;
    let backend = sim("m", 30, 2).await;
    let reference = sim("m", 30, 0).await;
    backend
        .set_faults(FaultConfig {
            script: vec![FaultKind::Drop],
            drop_after_chunks: 10,
            ..FaultConfig::none()
        })
        .unwrap();
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;
    let mut replies = world.submit(Tier::Small, prompt("break me")).await;
    let got = replies.collect(LONG).await;
    let (expected, usage) = direct_text(&reference, "break me", Some(64)).await;
    assert_eq!(
        got.attempts(),
        [1, 2],
        "the client saw attempt 1, then the restart"
    );
    assert_eq!(
        got.text(),
        expected,
        "attempt 2's text is whole and in order"
    );
    assert_eq!(got.completion().attempt, 2);
    // The broken attempt's tokens are booked too (estimated), then the answer.
    world.settled().await;
    let events = world.usage_of(&replies.id).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].status, UsageStatus::Error);
    assert!(events[0].usage.estimated);
    assert!(events[0].usage.completion_tokens > 0);
    assert_eq!(events[1].status, UsageStatus::Ok);
    assert_eq!(events[1].usage.completion_tokens, usage.completion_tokens);
    assert!(worker
        .metrics()
        .contains("triage_worker_restarts_total{tier=\"1\""));
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn other_4xx_are_not_retried_and_the_vllm_error_is_quoted() {
    let world = World::new().await;
    let backend = sim("m", 5, 0).await;
    backend
        .set_faults(script(vec![FaultKind::Error(422)]))
        .unwrap();
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;
    let got = world
        .submit(Tier::Small, prompt("refused"))
        .await
        .collect(LONG)
        .await;
    let e = got.error();
    assert_eq!(e.code, ErrorCode::BackendRejected);
    assert!(e.message.contains("422"), "{}", e.message);
    assert!(
        e.message.contains("Request refused (simulated fault)"),
        "{}",
        e.message
    );
    assert_eq!(backend.stats().requests_received, 1, "never retried");
    // Not the backend's fault: it stays in service.
    assert_eq!(
        worker.metric("triage_worker_backend_healthy{tier=\"1\""),
        Some(1.0)
    );
    // The message is kept for re-drive once the cause is fixed.
    let dead = world.stream_messages(StreamKind::Dead).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers.get(headers::DEAD_CODE).unwrap().as_str(),
        "backend_rejected"
    );
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn tier1_exhausted_escalates_to_tier2_and_tier2_exhausted_is_dead_lettered() {
    let world = World::new().await;
    let small = sim("small", 8, 0).await;
    let large = sim("large", 8, 0).await;
    small.set_faults(FaultConfig::always_error(503)).unwrap();
    let t1 = world.start(world.config(&[&small]), Tier::Small).await;
    let t2 = world.start(world.config(&[&large]), Tier::Large).await;

    let mut replies = world.submit(Tier::Small, prompt("escalate me")).await;
    let got = replies.collect(LONG).await;
    let c = got.completion();
    assert_eq!(c.tier, Tier::Large);
    assert_eq!(c.model, "large");
    let reasons = &c.routing.as_ref().unwrap().reasons;
    assert_eq!(reasons.last().unwrap(), "escalated_tier1_unavailable");
    // Tier 1 gave up when its breaker opened (3 failures) or after
    // retry.max_attempts calls; tier 2's attempt numbers start above its.
    let tier1_calls = small.stats().requests_received;
    assert!((3..=4).contains(&tier1_calls), "{tier1_calls}");
    assert_eq!(u64::from(c.attempt), tier1_calls + 1);
    assert_eq!(
        t1.metric(
            "triage_worker_escalations_total{tier=\"1\",reason=\"escalated_tier1_unavailable\"}"
        ),
        Some(1.0)
    );
    world.settled().await;
    let usage = world.usage_of(&replies.id).await;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].tier, Tier::Large);
    assert!(usage[0]
        .reasons
        .contains(&"escalated_tier1_unavailable".to_string()));

    // Now tier 2 fails too: an error, and the request on llm.dead.
    large.set_faults(FaultConfig::always_error(500)).unwrap();
    let mut replies = world.submit(Tier::Small, prompt("nobody home")).await;
    let e = replies.collect(LONG).await;
    assert_eq!(e.error().code, ErrorCode::BackendUnavailable);
    assert!(e.error().retryable);
    assert!(e.error().message.contains("500"), "{}", e.error().message);
    let dead = world.stream_messages(StreamKind::Dead).await;
    assert_eq!(dead.len(), 1);
    let h = &dead[0].headers;
    assert_eq!(
        h.get(headers::DEAD_CODE).unwrap().as_str(),
        "backend_unavailable"
    );
    assert_eq!(
        h.get(headers::DEAD_SERVICE).unwrap().as_str(),
        "worker-tier2"
    );
    assert_eq!(
        h.get(headers::DEAD_SUBJECT).unwrap().as_str(),
        world.ns.tier(Tier::Large)
    );
    assert!(h
        .get(headers::DEAD_REASON)
        .unwrap()
        .as_str()
        .contains("500"));
    world.settled().await;

    t1.stop().await;
    t2.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn requests_pinned_or_forced_to_tier1_fail_instead_of_escalating() {
    let world = World::new().await;
    let small = sim("small", 8, 0).await;
    small.set_faults(FaultConfig::always_error(503)).unwrap();
    let t1 = world.start(world.config(&[&small]), Tier::Small).await;

    for (routing, reason) in [
        (RoutingDecision::tenant_pin(Tier::Small), "tenant_pin:1"),
        (RoutingDecision::requested(Tier::Small), "override:1"),
    ] {
        let mut replies = world
            .submit_routed(routing, prompt("stay on tier 1"), Encoding::MsgPack)
            .await;
        let e = replies.collect(LONG).await;
        assert_eq!(e.error().code, ErrorCode::BackendUnavailable);
        let message = &e.error().message;
        assert!(
            message.contains("not escalated") && message.contains(reason),
            "{message}"
        );
        world.settled().await;
        assert_eq!(
            world.tier_messages(Tier::Large).await,
            0,
            "{reason}: nothing for tier 2"
        );
    }
    assert_eq!(
        t1.metric("triage_worker_escalations_total{tier=\"1\""),
        None,
        "no escalation counted"
    );

    // The same failure without a pin escalates (nobody serves tier 2 here,
    // so the copy waits in its queue).
    let scored = RoutingDecision::fixed(Tier::Small, "embedding=0.1000");
    let _replies = world
        .submit_routed(scored, prompt("move me"), Encoding::MsgPack)
        .await;
    let wait = Deadline::after(LONG, "the unpinned request escalated to tier 2");
    while world.tier_messages(Tier::Large).await == 0 {
        wait.poll_again().await;
    }
    t1.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn every_tier1_backend_out_of_service_escalates_at_once() {
    let world = World::new().await;
    let small = sim("small", 8, 0).await;
    let large = sim("large", 8, 0).await;
    small
        .set_faults(FaultConfig {
            unhealthy: true,
            ..FaultConfig::none()
        })
        .unwrap();
    let mut config = world.config(&[&small]);
    config.health.failure_threshold = 1;
    config.health.open_for = Duration::from_secs(60);
    let t1 = world.start(config, Tier::Small).await;
    let t2 = world.start(world.config(&[&large]), Tier::Large).await;
    assert_eq!(
        t1.metric("triage_worker_backend_healthy{tier=\"1\""),
        Some(0.0),
        "the start-up health check took it out"
    );
    let c = world
        .submit(Tier::Small, prompt("anyone?"))
        .await
        .collect(LONG)
        .await;
    assert_eq!(c.completion().tier, Tier::Large);
    assert_eq!(
        small.stats().requests_received,
        0,
        "no call to a backend that is out"
    );
    t1.stop().await;
    t2.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn the_circuit_breaker_takes_a_failing_backend_out_and_back_in() {
    let world = World::new().await;
    let flaky = sim("m", 5, 0).await;
    let steady = sim("m", 5, 0).await;
    let mut config = world.config(&[&flaky, &steady]);
    config.health.failure_threshold = 2;
    config.health.open_for = Duration::from_millis(300);
    let worker = world.start(config, Tier::Small).await;
    flaky
        .set_faults(FaultConfig {
            unhealthy: true,
            ..FaultConfig::always_error(503)
        })
        .unwrap();
    let label = flaky.url().trim_start_matches("http://").to_string();
    let gauge = format!("triage_worker_backend_healthy{{tier=\"1\",backend=\"{label}\"}}");
    let wait = Deadline::after(LONG, "the breaker to take the failing backend out");
    while worker.metric(&gauge) != Some(0.0) {
        wait.poll_again().await;
    }
    // While it is out every request goes to the other backend.
    let before = flaky.stats().requests_received;
    for i in 0..5 {
        world
            .submit(Tier::Small, prompt(&format!("r{i}")))
            .await
            .collect(LONG)
            .await
            .completion();
    }
    assert_eq!(flaky.stats().requests_received, before);
    // Healthy again: probed after open_for and back in service.
    flaky.set_faults(FaultConfig::none()).unwrap();
    let wait = Deadline::after(LONG, "the probe to put the healed backend back");
    while worker.metric(&gauge) != Some(1.0) {
        wait.poll_again().await;
    }
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn requests_are_spread_over_backends_by_requests_in_flight() {
    let world = World::new().await;
    let a = sim("m", 20, 10).await;
    let b = sim("m", 20, 10).await;
    let worker = world.start(world.config(&[&a, &b]), Tier::Small).await;
    let mut pending = Vec::new();
    for i in 0..6 {
        pending.push(world.submit(Tier::Small, prompt(&format!("p{i}"))).await);
    }
    for mut r in pending {
        r.collect(LONG).await.completion();
    }
    // Six concurrent requests on two idle backends: three each.
    assert_eq!(a.stats().requests_received, 3);
    assert_eq!(b.stats().requests_received, 3);
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn low_confidence_starts_escalate_before_anything_reaches_the_client() {
    let world = World::new().await;
    let unsure = sim_with(SimConfig {
        logprob_min: -3.0,
        logprob_max: -2.0,
        ..SimConfig::instant("small", 30)
    })
    .await;
    let large = sim("large", 12, 0).await;
    let reference = sim("large", 12, 0).await;
    let mut config = world.config(&[&unsure]);
    config.early_exit.enabled = true;
    config.early_exit.hold_tokens = 4;
    config.early_exit.min_mean_logprob = -1.0;
    let t1 = world.start(config, Tier::Small).await;
    let t2 = world.start(world.config(&[&large]), Tier::Large).await;

    let mut replies = world.submit(Tier::Small, prompt("hard question")).await;
    let got = replies.collect(LONG).await;
    let (expected, _) = direct_text(&reference, "hard question", Some(64)).await;
    assert_eq!(got.attempts(), [2], "no tier-1 text reached the client");
    assert_eq!(got.text(), expected);
    let c = got.completion();
    assert_eq!(c.tier, Tier::Large);
    assert_eq!(
        c.routing.as_ref().unwrap().reasons.last().unwrap(),
        "escalated_low_confidence"
    );
    // Both attempts are booked: tier 1's cancelled start and tier 2's answer.
    world.settled().await;
    let usage = world.usage_of(&replies.id).await;
    assert_eq!(usage.len(), 2);
    assert_eq!(
        (usage[0].attempt, usage[0].tier, usage[0].status),
        (1, Tier::Small, UsageStatus::Cancelled)
    );
    assert!(usage[0].usage.completion_tokens >= 4);
    assert!(usage[0]
        .reasons
        .contains(&"escalated_low_confidence".to_string()));
    assert_eq!(
        (usage[1].attempt, usage[1].tier, usage[1].status),
        (2, Tier::Large, UsageStatus::Ok)
    );
    t1.stop().await;
    t2.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn unsure_starts_of_requests_pinned_to_tier1_are_answered_there() {
    let world = World::new().await;
    let unsure = sim_with(SimConfig {
        logprob_min: -3.0,
        logprob_max: -2.0,
        ..SimConfig::instant("small", 30)
    })
    .await;
    let mut config = world.config(&[&unsure]);
    config.early_exit.enabled = true;
    config.early_exit.hold_tokens = 4;
    config.early_exit.min_mean_logprob = -1.0;
    let t1 = world.start(config, Tier::Small).await;
    let pinned = RoutingDecision::tenant_pin(Tier::Small);
    let got = world
        .submit_routed(pinned, prompt("hard question"), Encoding::MsgPack)
        .await
        .collect(LONG)
        .await;
    assert_eq!(
        got.completion().tier,
        Tier::Small,
        "the gate does not judge it"
    );
    assert_eq!(got.completion().attempt, 1);
    world.settled().await;
    assert_eq!(world.tier_messages(Tier::Large).await, 0);
    t1.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn confident_starts_are_answered_by_tier1_whole() {
    let world = World::new().await;
    let sure_config = SimConfig {
        logprob_min: -0.3,
        logprob_max: -0.05,
        ..SimConfig::instant("small", 30)
    };
    let sure = sim_with(sure_config.clone()).await;
    let reference = sim_with(sure_config).await;
    let mut config = world.config(&[&sure]);
    config.early_exit.enabled = true;
    config.early_exit.hold_tokens = 4;
    let t1 = world.start(config, Tier::Small).await;
    let got = world
        .submit(Tier::Small, prompt("easy question"))
        .await
        .collect(LONG)
        .await;
    let (expected, _) = direct_text(&reference, "easy question", Some(64)).await;
    assert_eq!(got.completion().tier, Tier::Small);
    assert_eq!(
        got.text(),
        expected,
        "held tokens are released, nothing lost"
    );
    t1.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn idle_backends_are_prewarmed() {
    let world = World::new().await;
    let backend = sim("m", 5, 0).await;
    let mut config = world.config(&[&backend]);
    config.prewarm.idle_after = Duration::from_millis(200);
    let worker = world.start(config, Tier::Small).await;
    let wait = Deadline::after(LONG, "a pre-warm request to complete");
    while backend.stats().completed == 0 {
        wait.poll_again().await;
    }
    assert!(worker
        .metrics()
        .contains("triage_worker_prewarms_total{tier=\"1\""));
    assert!(
        world.usage_events().await.is_empty(),
        "pre-warm is not a request"
    );
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn a_redelivered_escalated_request_is_not_answered_twice() {
    let world = World::new().await;
    let small = sim("small", 5, 0).await;
    small.set_faults(FaultConfig::always_error(503)).unwrap();
    let t1 = world.start(world.config(&[&small]), Tier::Small).await;
    let request = triage_protocol::Request {
        id: "escalate-once".into(),
        ..prompt("twice?")
    };
    let _first = world.submit(Tier::Small, request.clone()).await;
    // Escalated and acked (the record is written before the ack).
    let wait = Deadline::after(LONG, "the request escalated to tier 2 and acked on tier 1");
    while world.tier_messages(Tier::Large).await == 0 || world.tier_messages(Tier::Small).await > 0
    {
        wait.poll_again().await;
    }
    let calls = small.stats().requests_received;
    // The same message again, as after a crash between escalation and ack.
    let _second = world.submit(Tier::Small, request).await;
    let wait = Deadline::after(LONG, "the redelivered copy acked on tier 1");
    while world.tier_messages(Tier::Small).await > 0 {
        wait.poll_again().await;
    }
    assert_eq!(
        small.stats().requests_received,
        calls,
        "not generated again"
    );
    assert_eq!(world.tier_messages(Tier::Large).await, 1, "escalated once");
    t1.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn readiness_needs_nats_and_a_healthy_backend() {
    let world = World::new().await;
    let healthy = sim("m", 5, 0).await;
    let mut registry = Registry::default();
    let worker = Worker::connect(world.config(&[&healthy]), Tier::Small, &mut registry)
        .await
        .expect("worker starts");
    let report = worker.readiness().report().await;
    assert!(report.ready, "{report:?}");
    assert_eq!(report.checks["nats"], "ok");

    let down = sim("m", 5, 0).await;
    down.set_faults(FaultConfig {
        unhealthy: true,
        ..FaultConfig::always_error(503)
    })
    .unwrap();
    let mut config = world.config(&[&down]);
    config.health.failure_threshold = 1;
    let mut registry = Registry::default();
    let worker = Worker::connect(config, Tier::Small, &mut registry)
        .await
        .expect("worker starts");
    let report = worker.readiness().report().await;
    assert!(!report.ready, "{report:?}");
    assert_eq!(report.checks["backends"], "none of 1 backend(s) is healthy");
    world.teardown().await;
}
