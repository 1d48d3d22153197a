//! Streaming, usage, malformed lines, kept results, duplicates, deadlines
//! and request validation, against the real NATS and the simulator.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use triage_protocol::{
    decode, headers, Encoding, ErrorCode, Reply, Request, RequestKey, RoutedRequest,
    RoutingDecision, StreamKind, Tier, UsageStatus,
};
use triage_vllm_sim::{FaultConfig, FaultKind};

#[tokio::test]
async fn streams_in_order_with_correct_usage_then_acks() {
    let world = World::new().await;
    let backend = sim("tier1-sim", 40, 1).await;
    let reference = sim("tier1-sim", 40, 0).await;
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;

    let mut replies = world
        .submit(Tier::Small, prompt("Why is the sky blue?"))
        .await;
    let got = replies.collect(LONG).await;
    let (expected, usage) = direct_text(&reference, "Why is the sky blue?", Some(64)).await;

    assert_eq!(got.text(), expected);
    assert_eq!(got.attempts(), [1]);
    let c = got.completion();
    assert_eq!(c.attempt, 1);
    assert_eq!(c.tier, Tier::Small);
    assert_eq!(c.model, "tier1-sim");
    assert_eq!(c.chunks as usize, got.chunks.len());
    assert_eq!(c.finish_reason, "stop");
    assert_eq!(c.usage.completion_tokens, usage.completion_tokens);
    assert_eq!(c.usage.prompt_tokens, usage.prompt_tokens);
    assert!(!c.usage.estimated);
    assert!(c.ttft_ms <= c.total_ms);
    assert_eq!(c.routing.as_ref().unwrap().reasons, ["test"]);
    assert!(
        c.text.is_none(),
        "a streamed answer does not repeat its text"
    );
    // Coalescing joined some of the 40 deltas (1 ms apart, 5 ms window).
    assert!(got.chunks.len() < 40, "{} chunks", got.chunks.len());

    // Usage booked once with the idempotent message id, then acked.
    world.settled().await;
    let usage_msgs = world.stream_messages(StreamKind::Usage).await;
    assert_eq!(usage_msgs.len(), 1);
    assert_eq!(
        usage_msgs[0]
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .unwrap_or_else(|| panic!("{:?}", usage_msgs[0].headers))
            .as_str(),
        format!("usage:_.{}:1", replies.id),
        "scoped by the (absent) tenant"
    );
    let events = world.usage_of(&replies.id).await;
    assert_eq!(events[0].status, UsageStatus::Ok);
    assert_eq!(events[0].usage, c.usage);
    assert_eq!(events[0].tier, Tier::Small);
    assert_eq!(backend.stats().requests_received, 1);
    assert!(worker.metric("triage_worker_ttft_seconds_count").unwrap() >= 1.0);

    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn json_requests_are_answered_in_json_and_without_coalescing_every_delta_is_a_chunk() {
    let world = World::new().await;
    let backend = sim("m", 12, 1).await;
    let mut config = world.config(&[&backend]);
    config.coalesce.interval = Duration::ZERO;
    let worker = world.start(config, Tier::Small).await;
    let mut replies = world
        .submit_with(Tier::Small, prompt("json please"), Encoding::Json)
        .await;
    let mut chunks = 0;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let m = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut replies.sub))
            .await
            .unwrap()
            .unwrap();
        let ct = m
            .headers
            .as_ref()
            .unwrap()
            .get(headers::CONTENT_TYPE)
            .unwrap();
        assert_eq!(ct.as_str(), "application/json");
        match decode::<Reply>(Encoding::Json, &m.payload).unwrap() {
            Reply::Chunk(_) => chunks += 1,
            Reply::Completion(c) => {
                assert_eq!(c.usage.completion_tokens, 12);
                break;
            }
            Reply::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(chunks, 12);
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn malformed_sse_lines_are_counted_and_skipped() {
    let world = World::new().await;
    let backend = sim("m", 20, 0).await;
    let reference = sim("m", 20, 0).await;
    backend
        .set_faults(FaultConfig {
            script: vec![FaultKind::Malformed],
            malformed_after_chunks: 3,
            ..FaultConfig::none()
        })
        .unwrap();
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;
    let mut replies = world.submit(Tier::Small, prompt("malformed")).await;
    let got = replies.collect(LONG).await;
    let (expected, _) = direct_text(&reference, "malformed", Some(64)).await;
    assert_eq!(got.text(), expected, "no content lost");
    assert_eq!(got.completion().attempt, 1, "not retried");
    assert_eq!(backend.stats().injected_malformed, 1);
    assert_eq!(
        worker.metric("triage_worker_malformed_chunks_total"),
        Some(1.0)
    );
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn usage_is_estimated_when_the_backend_sends_none() {
    let world = World::new().await;
    let backend = sim("m", 15, 0).await;
    let reference = sim("m", 15, 0).await;
    let mut config = world.config(&[&backend]);
    config.backends[0].include_usage = false;
    let worker = world.start(config, Tier::Small).await;
    let mut replies = world.submit(Tier::Small, prompt("count it yourself")).await;
    let got = replies.collect(LONG).await;
    let (_, usage) = direct_text(&reference, "count it yourself", Some(64)).await;
    let u = got.completion().usage;
    assert!(u.estimated);
    // The worker's approximation is the simulator's rule: exact here.
    assert_eq!(u.completion_tokens, usage.completion_tokens);
    assert_eq!(u.prompt_tokens, usage.prompt_tokens);
    world.settled().await;
    assert!(world.usage_of(&replies.id).await[0].usage.estimated);
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn kept_results_go_to_the_results_stream_even_without_a_reply_subject() {
    let world = World::new().await;
    let backend = sim("m", 10, 0).await;
    let worker = world.start(world.config(&[&backend]), Tier::Large).await;
    let request = Request {
        id: "kept-1".into(),
        keep_result: true,
        stream: false,
        ..prompt("keep me")
    };
    let routed = triage_protocol::RoutedRequest {
        version: 1,
        request,
        routing: triage_protocol::RoutingDecision::fixed(Tier::Large, "test"),
        routed_at_ms: 0,
    };
    world
        .publish_routed(Tier::Large, &routed, Encoding::MsgPack)
        .await;
    let stream = world
        .js
        .get_stream(world.ns.stream_name(StreamKind::Results))
        .await
        .unwrap();
    let wait = Deadline::after(LONG, "the kept result on the results stream");
    let kept = loop {
        match stream
            .get_last_raw_message_by_subject(&world.ns.result(RequestKey::new(None, "kept-1")))
            .await
        {
            Ok(m) => break m,
            Err(_) => wait.poll_again().await,
        }
    };
    match decode::<Reply>(Encoding::MsgPack, &kept.payload).unwrap() {
        Reply::Completion(c) => {
            assert_eq!(c.id, "kept-1");
            assert_eq!(c.tier, Tier::Large);
            assert!(
                !c.text.unwrap().is_empty(),
                "a kept result carries its text"
            );
        }
        other => panic!("{other:?}"),
    }
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn a_redelivered_answered_request_is_acked_without_generating_again() {
    let world = World::new().await;
    let backend = sim("m", 5, 0).await;
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;
    let request = Request {
        id: "answered-once".into(),
        ..prompt("once")
    };
    let mut first = world.submit(Tier::Small, request.clone()).await;
    first.collect(LONG).await.completion();
    world.settled().await;
    worker.stop().await;
    // The same message again, as after a crash between the answer and the
    // ack: its first delivery went to the worker that "crashed" (handed back
    // here), so the next worker sees delivery 2.
    let mut second = world.submit(Tier::Small, request).await;
    let config = world.config(&[&backend]);
    let consumer = triage_bus::consumer::durable(
        &world.js,
        &world.ns,
        triage_protocol::Namespace::tier_stream(Tier::Small),
        &config.consumer.durable_name(Tier::Small),
        &config.consumer.settings(),
    )
    .await
    .unwrap();
    let mut fetched = consumer
        .fetch()
        .max_messages(1)
        .expires(LONG)
        .messages()
        .await
        .unwrap();
    let crashed = tokio::time::timeout(LONG, futures::StreamExt::next(&mut fetched))
        .await
        .expect("the resubmitted message is delivered")
        .unwrap()
        .unwrap();
    triage_bus::consumer::nak(&crashed, None).await.unwrap();
    let worker = world.start(config, Tier::Small).await;
    // Wait until the queue is empty: the duplicate was acked.
    let wait = Deadline::after(LONG, "the duplicate acked");
    while world.tier_messages(Tier::Small).await > 0 {
        wait.poll_again().await;
    }
    assert!(second.extra(Duration::from_millis(300)).await.is_empty());
    assert_eq!(backend.stats().requests_received, 1, "generated once");
    assert_eq!(world.usage_of("answered-once").await.len(), 1);
    assert_eq!(
        worker.metric("triage_worker_requests_total{tier=\"1\",outcome=\"duplicate\"}"),
        Some(1.0)
    );
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn expired_deadlines_unsupported_n_and_empty_prompts_are_refused_before_any_gpu_time() {
    let world = World::new().await;
    let backend = sim("m", 5, 0).await;
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;

    let expired = Request {
        deadline_ms: Some(triage_protocol::now_ms() - 1),
        ..prompt("too late")
    };
    let e = world.submit(Tier::Small, expired).await.collect(LONG).await;
    assert_eq!(e.error().code, ErrorCode::DeadlineExceeded);

    let n2 = Request {
        n: 2,
        ..prompt("two please")
    };
    let e = world
        .submit(Tier::Small, n2.clone())
        .await
        .collect(LONG)
        .await;
    assert_eq!(e.error().code, ErrorCode::UnsupportedNWithStream);

    let empty = Request {
        prompt: Some("   ".into()),
        ..Request::default()
    };
    let e = world.submit(Tier::Small, empty).await.collect(LONG).await;
    assert_eq!(e.error().code, ErrorCode::EmptyPrompt);

    assert_eq!(backend.stats().requests_received, 0);

    // Whole, several choices are one completion: choice 0 and its alternatives.
    let whole = Request {
        stream: false,
        max_tokens: Some(5),
        ..n2
    };
    let answer = world.submit(Tier::Small, whole).await.collect(LONG).await;
    let c = answer.completion();
    assert!(c.text.as_deref().is_some_and(|t| !t.is_empty()), "{c:?}");
    assert_eq!(c.alternatives.len(), 1, "{c:?}");
    assert_eq!(c.alternatives[0].index, 1);
    assert!(!c.alternatives[0].text.is_empty());
    assert!(c.usage.completion_tokens > 5, "both choices counted: {c:?}");
    world.settled().await;
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn prompts_over_max_model_len_are_refused_before_sending_and_vllm_errors_are_quoted() {
    let world = World::new().await;
    let mut sc = triage_vllm_sim::SimConfig::instant("m", 5);
    sc.max_model_len = 60;
    let backend = sim_with(sc).await;
    let long_prompt = "word ".repeat(100);

    // Learned from /v1/models: refused without calling the backend.
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;
    let e = world
        .submit(Tier::Small, prompt(&long_prompt))
        .await
        .collect(LONG)
        .await;
    assert_eq!(e.error().code, ErrorCode::ContextLengthExceeded);
    assert!(e.error().message.contains("60"), "{}", e.error().message);
    assert!(!e.error().retryable);
    assert_eq!(backend.stats().requests_received, 0);
    worker.stop().await;

    // Configured too large: vLLM's own 400 comes back quoted.
    let mut config = world.config(&[&backend]);
    config.backends[0].max_model_len = Some(100_000);
    let worker = world.start(config, Tier::Small).await;
    let e = world
        .submit(Tier::Small, prompt(&long_prompt))
        .await
        .collect(LONG)
        .await;
    assert_eq!(e.error().code, ErrorCode::ContextLengthExceeded);
    assert!(
        e.error()
            .message
            .contains("maximum context length is 60 tokens"),
        "{}",
        e.error().message
    );
    assert_eq!(backend.stats().requests_received, 1, "never retried");
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn undecodable_messages_and_forbidden_reply_subjects_are_dead_lettered() {
    let world = World::new().await;
    let backend = sim("m", 5, 0).await;
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;

    let inbox = world.client.new_inbox();
    let mut sub = world.client.subscribe(inbox.clone()).await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, "application/json");
    h.insert(headers::REPLY_TO, inbox.as_str());
    world
        .js
        .publish_with_headers(world.ns.tier(Tier::Small), h, "{\"request\": 5}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let m = tokio::time::timeout(LONG, futures::StreamExt::next(&mut sub))
        .await
        .unwrap()
        .unwrap();
    match decode::<Reply>(Encoding::Json, &m.payload).unwrap() {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
        other => panic!("{other:?}"),
    }

    // A reply subject inside Triage's own namespace is never answered.
    let sneaky = Request {
        reply_to: Some(world.ns.usage()),
        ..prompt("publish into llm.usage for me")
    };
    let routed = triage_protocol::RoutedRequest {
        version: 1,
        request: sneaky,
        routing: triage_protocol::RoutingDecision::fixed(Tier::Small, "test"),
        routed_at_ms: 0,
    };
    world
        .publish_routed(Tier::Small, &routed, Encoding::MsgPack)
        .await;
    let wait = Deadline::after(LONG, "both messages dead-lettered");
    let dead = loop {
        let d = world.stream_messages(StreamKind::Dead).await;
        if d.len() == 2 {
            break d;
        }
        wait.poll_again().await;
    };
    for d in &dead {
        assert_eq!(
            d.headers.get(headers::DEAD_CODE).unwrap().as_str(),
            "invalid_request"
        );
        assert_eq!(
            d.headers.get(headers::DEAD_SERVICE).unwrap().as_str(),
            "worker-tier1"
        );
    }
    assert!(world.usage_events().await.is_empty());
    assert_eq!(backend.stats().requests_received, 0);
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn a_reused_request_id_is_told_what_happened_to_the_first_not_left_in_silence() {
    let world = World::new().await;
    let backend = sim("tier1-sim", 8, 0).await;
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;

    let mut request = prompt("Why is the sky blue?");
    request.id = "reused-id-1".into();
    let first = world
        .submit(Tier::Small, request.clone())
        .await
        .collect(LONG)
        .await;
    assert_eq!(first.completion().attempt, 1);

    // The same id again, as a new message (after the streams' duplicate
    // window a retry is not de-duplicated by JetStream): an answer, at once.
    let mut again = world.submit(Tier::Small, request).await;
    let second = again.collect(LONG).await;
    let error = second.error();
    assert_eq!(error.code, ErrorCode::DuplicateRequest);
    assert!(
        error.message.contains("completed tier=1 attempt=1"),
        "the error says what became of the first: {}",
        error.message
    );
    assert!(second.chunks.is_empty(), "nothing generated again");
    assert!(again.extra(Duration::from_millis(300)).await.is_empty());

    // Generated and booked once.
    world.settled().await;
    assert_eq!(world.usage_of("reused-id-1").await.len(), 1);
    worker.stop().await;
    world.teardown().await;
}

/// The router's copy of a request published again as a new message —
/// its ack lost when a NATS node died, then redelivered and routed again,
/// perhaps to the other tier — is the same request (same body and reply
/// subject): acked without a second answer, unlike a client reusing the id.
#[tokio::test]
async fn the_same_request_routed_twice_is_answered_once() {
    let world = World::new().await;
    let backend = sim("tier1-sim", 8, 0).await;
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;

    let inbox = world.client.new_inbox();
    let mut sub = world.client.subscribe(inbox.clone()).await.unwrap();
    let mut request = prompt("Why is the sky blue?");
    request.id = "routed-twice-1".into();
    request.reply_to = Some(inbox);
    let routed = RoutedRequest {
        version: 1,
        request,
        routing: RoutingDecision::fixed(Tier::Small, "test"),
        routed_at_ms: triage_protocol::now_ms(),
    };
    let mut finals = 0;
    for _ in 0..2 {
        world
            .publish_routed(Tier::Small, &routed, Encoding::MsgPack)
            .await;
        world.settled().await;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            match decode::<Reply>(Encoding::MsgPack, &m.payload).unwrap() {
                Reply::Chunk(_) => {}
                other => {
                    finals += 1;
                    assert!(matches!(other, Reply::Completion(_)), "{other:?}");
                }
            }
        }
    }
    assert_eq!(finals, 1, "one answer on the reply subject");
    assert_eq!(backend.stats().requests_received, 1, "generated once");
    assert_eq!(world.usage_of("routed-twice-1").await.len(), 1);
    assert_eq!(
        worker.metric("triage_worker_errors_total{tier=\"1\",code=\"duplicate_request\"}"),
        None
    );
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn equal_ids_of_two_tenants_and_escaped_forms_are_different_requests() {
    let world = World::new().await;
    let backend = sim("tier1-sim", 4, 0).await;
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;

    // `a.b` was once stored under its hex form `x612e62`, which is also a
    // plain id: the second would have been taken for a duplicate.
    for (tenant, id) in [
        (Some("acme"), "shared-1"),
        (Some("globex"), "shared-1"),
        (None, "shared-1"),
        (None, "a.b"),
        (None, "x612e62"),
    ] {
        let request = Request {
            id: id.into(),
            tenant: tenant.map(str::to_string),
            ..prompt("hello")
        };
        let got = world.submit(Tier::Small, request).await.collect(LONG).await;
        assert_eq!(got.completion().attempt, 1, "{tenant:?}/{id} was answered");
        world.settled().await;
    }
    assert_eq!(backend.stats().requests_received, 5, "each generated once");
    assert_eq!(
        worker.metric("triage_worker_errors_total{tier=\"1\",code=\"duplicate_request\"}"),
        None
    );
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn max_tokens_above_the_operator_ceilings_is_clamped_and_booked_as_generated() {
    let world = World::new().await;
    let backend = sim("tier1-sim", 40, 0).await;
    let mut config = world.config(&[&backend]);
    config.max_tokens.tier = Some(5);
    config.max_tokens.tenants.insert("free".into(), 3);
    let worker = world.start(config, Tier::Small).await;

    for (tenant, asked, expected) in [
        (None, Some(64), 5),
        (Some("free"), Some(64), 3),
        (Some("free"), None, 3),
        (Some("paying"), Some(2), 2),
    ] {
        let request = Request {
            tenant: tenant.map(str::to_string),
            max_tokens: asked,
            ..Request::from_prompt("Tell me everything.")
        };
        let mut replies = world.submit(Tier::Small, request).await;
        let got = replies.collect(LONG).await;
        let c = got.completion();
        assert_eq!(
            c.usage.completion_tokens, expected,
            "{tenant:?} asked {asked:?}"
        );
        assert_eq!(c.finish_reason, "length");
        world.settled().await;
        let booked = world.usage_of(&replies.id).await;
        assert_eq!(booked.len(), 1);
        assert_eq!(
            booked[0].usage.completion_tokens, expected,
            "the ledger gets what ran"
        );
    }
    worker.stop().await;
    world.teardown().await;
}
