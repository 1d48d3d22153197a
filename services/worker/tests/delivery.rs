//! Crash safety and delivery: a worker process killed mid-stream, the
//! first-chunk gate on a durable progress record, maximum deliveries,
//! back-pressure, graceful shutdown (in-process and SIGTERM to the binary)
//! and a resumed batch job.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use triage_bus::consumer;
use triage_protocol::{headers, ErrorCode, Namespace, RequestKey, StreamKind, Tier, UsageStatus};
use triage_vllm_sim::{FaultConfig, SimHandle};
use triage_worker::batch::{self, BatchOptions, SubmitTo};
use triage_worker::metrics::WorkerMetrics;
use triage_worker::progress::{Progress, ProgressLog};

/// The environment that configures a child `triage-worker` like
/// [`World::config`] does in-process.
fn child_env(world: &World, backends: &[&SimHandle]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("NATS__URL", nats_url()),
        ("NATS__PREFIX", world.prefix.clone()),
        (
            "BACKEND_URLS",
            backends
                .iter()
                .map(|b| b.url().to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("CONSUMER__ACK_WAIT", "2s".into()),
        ("CONSUMER__FETCH_EXPIRES", "200ms".into()),
        ("COALESCE__INTERVAL", "5ms".into()),
        ("PREWARM__IDLE_AFTER", "0s".into()),
        ("HEALTH__INTERVAL", "200ms".into()),
        ("SHUTDOWN_GRACE", "5s".into()),
        ("METRICS_ADDR", "127.0.0.1:0".into()),
        ("PROGRESS__INTERVAL", "50ms".into()),
        (
            "NATS__STREAMS__PROGRESS_MAX_BYTES",
            (1u64 << 20).to_string(),
        ),
        ("NATS__STREAMS__FINISHED_TTL", "1h".into()),
        (
            "NATS__STREAMS__FINISHED_MAX_BYTES",
            (8u64 << 20).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (format!("TRIAGE_WORKER_{k}"), v))
    .collect();
    for kind in ["REQUESTS", "TIERS", "USAGE", "DEAD", "RESULTS"] {
        env.push((
            format!("TRIAGE_WORKER_NATS__STREAMS__{kind}__MAX_BYTES"),
            (8u64 << 20).to_string(),
        ));
        env.push((
            format!("TRIAGE_WORKER_NATS__STREAMS__{kind}__MAX_AGE"),
            "1h".into(),
        ));
    }
    env.push(("RUST_LOG".into(), "warn".into()));
    env
}

fn spawn_child(world: &World, backends: &[&SimHandle], args: &[&str]) -> tokio::process::Child {
    spawn_child_with(world, backends, args, &[])
}

/// [`spawn_child`] with more settings (`KEY` of `TRIAGE_WORKER_KEY`).
fn spawn_child_with(
    world: &World,
    backends: &[&SimHandle],
    args: &[&str],
    extra: &[(&str, &str)],
) -> tokio::process::Child {
    let extra = extra
        .iter()
        .map(|(k, v)| (format!("TRIAGE_WORKER_{k}"), v.to_string()));
    tokio::process::Command::new(env!("CARGO_BIN_EXE_triage-worker"))
        .args(args)
        .envs(child_env(world, backends))
        .envs(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the triage-worker binary runs")
}

/// Waits for a child process to end by itself; whether it succeeded.
async fn exited(child: &mut tokio::process::Child, what: &str) -> bool {
    let status = tokio::time::timeout(LONG, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {LONG:?}"))
        .unwrap();
    status.success()
}

#[tokio::test]
async fn a_worker_killed_mid_stream_is_replaced_and_its_tokens_are_booked_once() {
    let world = World::new().await;
    // 64 tokens: 3.8 s of generation, so the kill below lands mid-stream
    // even on a loaded machine (at 20 ms a token, 1.3 s, attempt 1 once
    // finished before the kill and its completion was the reply).
    let backend = sim("m", 100, 60).await;
    let reference = sim("m", 100, 0).await;
    let mut first = spawn_child(&world, &[&backend], &["run", "--tier", "1"]);

    let mut replies = world.submit(Tier::Small, prompt("survive a crash")).await;
    let chunk = replies.first_chunk(LONG).await;
    assert_eq!(chunk.attempt, 1);
    // Progress is recorded every 50 ms here: kill once some is.
    let wait = Deadline::after(LONG, "a progress record of attempt 1");
    while world.progress_of(&replies.id).await.is_none() {
        wait.poll_again().await;
    }
    first.kill().await.unwrap(); // SIGKILL: no goodbye, no nak
    first.wait().await.unwrap();
    // A write the dead process had already sent lands first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recorded = world.progress_of(&replies.id).await.unwrap();
    assert_eq!((recorded.attempt, recorded.tier), (1, Tier::Small));
    assert!(
        (1..64).contains(&recorded.completion_tokens),
        "{recorded:?}"
    );

    // Delivery 2 books attempt 1 and dies before deleting the record ...
    let mut second = spawn_child_with(
        &world,
        &[&backend],
        &["run", "--tier", "1"],
        &[("CRASH_AT", "interrupted_booked")],
    );
    assert!(!exited(&mut second, "the worker crashing after booking").await);
    assert!(world.progress_of(&replies.id).await.is_some());
    // ... so delivery 3 books it again (a no-op), deletes it and answers.
    let mut third = spawn_child(&world, &[&backend], &["run", "--tier", "1"]);
    let rest = replies.collect(LONG).await;
    let (expected, usage) = direct_text(&reference, "survive a crash", Some(64)).await;
    let mut attempts = vec![1];
    attempts.extend(rest.attempts());
    attempts.dedup();
    assert_eq!(
        attempts,
        [1, 33],
        "redelivery 3 numbers its attempts from 33"
    );
    assert_eq!(rest.text(), expected, "the new attempt is whole");
    let c = rest.completion();
    assert_eq!(c.attempt, 33);
    assert_eq!(c.usage.completion_tokens, usage.completion_tokens);

    // Each attempt booked once: the killed one with its recorded tokens.
    world.settled().await;
    let events = world.usage_of(&replies.id).await;
    let got: Vec<_> = events.iter().map(|e| (e.attempt, e.status)).collect();
    assert_eq!(
        got,
        [(1, UsageStatus::Interrupted), (33, UsageStatus::Ok)],
        "{events:?}"
    );
    assert_eq!(
        events[0].usage.completion_tokens,
        recorded.completion_tokens
    );
    assert_eq!(events[0].usage.prompt_tokens, recorded.prompt_tokens);
    assert!(events[0].usage.estimated);
    assert!(world.progress_of(&replies.id).await.is_none(), "deleted");
    assert_eq!(world.tier_messages(Tier::Small).await, 0);
    assert!(replies.extra(Duration::from_millis(300)).await.is_empty());

    // SIGTERM: the binary drains and exits cleanly.
    let pid = third.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(exited(&mut third, "the worker after SIGTERM").await);
    world.teardown().await;
}

/// A record of attempt `attempt` with `tokens` generated.
fn progress(attempt: u32, tokens: u32) -> Progress {
    Progress {
        attempt,
        tier: Tier::Small,
        model: "m".into(),
        backend: "sim".into(),
        prompt_tokens: 5,
        completion_tokens: tokens,
        started_at_ms: 1,
        recorded_at_ms: 2,
    }
}

/// The gate before an attempt's first chunk (`generate/stream.rs`): it
/// opens once the attempt's progress record is durable, at once when the
/// attempt recorded nothing, and not before its limit when the record
/// cannot be written.
#[tokio::test]
async fn the_first_chunk_gate_waits_for_a_durable_progress_record() {
    let world = World::new().await;
    let store = triage_bus::streams::progress_bucket(&world.js, &world.ns, &tiny_streams())
        .await
        .unwrap();
    let metrics = WorkerMetrics::register(1, &mut prometheus_client::registry::Registry::default());
    let log = ProgressLog::new(store, metrics);
    let key = RequestKey::new(None, "gate");
    let recorder = log.recorder(key);
    assert!(
        recorder.durable(1, LONG).await,
        "nothing recorded: nothing to wait for"
    );

    recorder.record(progress(1, 3));
    assert!(recorder.durable(1, LONG).await);
    let stored = log.get(key).await.unwrap().expect("durable means stored");
    assert_eq!((stored.attempt, stored.completion_tokens), (1, 3));

    // Records that cannot land (the bucket is gone) keep the gate shut
    // until its limit.
    world
        .js
        .delete_key_value(world.ns.progress_bucket())
        .await
        .unwrap();
    recorder.record(progress(2, 1));
    assert!(!recorder.durable(2, Duration::from_millis(600)).await);
    drop(recorder);
    world.teardown().await;
}

#[tokio::test]
async fn a_tier1_worker_crashing_mid_escalation_leaves_one_answer_from_tier2() {
    for point in ["escalation_recorded", "escalation_published"] {
        let world = World::new().await;
        let small = sim("small", 8, 0).await;
        small.set_faults(FaultConfig::always_error(503)).unwrap();
        let large = sim("large", 8, 0).await;
        let mut crashing = spawn_child_with(
            &world,
            &[&small],
            &["run", "--tier", "1"],
            &[("CRASH_AT", point), ("RETRY__MAX_ATTEMPTS", "1")],
        );
        let mut replies = world
            .submit(Tier::Small, prompt("escalate, then die"))
            .await;
        assert!(!exited(&mut crashing, point).await, "{point}: it crashed");
        let copies = u64::from(point == "escalation_published");
        assert_eq!(world.tier_published(Tier::Large).await, copies, "{point}");

        // Tier 1 works again: a redelivery answered there would now succeed.
        small.set_faults(FaultConfig::default()).unwrap();
        let t1 = world.start(world.config(&[&small]), Tier::Small).await;
        let t2 = world.start(world.config(&[&large]), Tier::Large).await;
        let got = replies.collect(LONG).await;
        let c = got.completion();
        assert_eq!(
            (c.tier, c.model.as_str()),
            (Tier::Large, "large"),
            "{point}"
        );
        assert_eq!(c.attempt, 2, "{point}: above tier 1's one attempt");
        assert_eq!(got.attempts(), [2], "{point}: no tier-1 text");
        world.settled().await;
        assert!(replies.extra(Duration::from_millis(300)).await.is_empty());
        assert_eq!(
            world.tier_published(Tier::Large).await,
            1,
            "{point}: one copy"
        );
        assert_eq!(
            small.stats().requests_received,
            1,
            "{point}: not generated on tier 1"
        );
        let usage = world.usage_of(&replies.id).await;
        let got: Vec<_> = usage.iter().map(|e| (e.attempt, e.tier)).collect();
        assert_eq!(got, [(2, Tier::Large)], "{point}");
        t1.stop().await;
        t2.stop().await;
        world.teardown().await;
    }
}

#[tokio::test]
async fn a_request_delivered_too_often_goes_to_llm_dead_and_the_client_is_told() {
    let world = World::new().await;
    let backend = sim("m", 5, 0).await;
    let mut config = world.config(&[&backend]);
    config.consumer.max_deliveries = 2;

    // Two deliveries that "die" (handed back unanswered) before any worker
    // that survives sees it.
    let mut replies = world.submit(Tier::Small, prompt("cursed")).await;
    let durable = consumer::durable(
        &world.js,
        &world.ns,
        Namespace::tier_stream(Tier::Small),
        &config.consumer.durable_name(Tier::Small),
        &config.consumer.settings(),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let mut batch = durable
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let m = futures::StreamExt::next(&mut batch).await.unwrap().unwrap();
        consumer::nak(&m, None).await.unwrap();
    }

    let worker = world.start(config, Tier::Small).await;
    let e = replies.collect(LONG).await;
    assert_eq!(e.error().code, ErrorCode::MaxDeliveriesExceeded);
    let dead = world.stream_messages(StreamKind::Dead).await;
    assert_eq!(dead.len(), 1);
    let h = &dead[0].headers;
    assert_eq!(
        h.get(headers::DEAD_CODE).unwrap().as_str(),
        "max_deliveries_exceeded"
    );
    assert_eq!(h.get(headers::DEAD_DELIVERIES).unwrap().as_str(), "3");
    assert_eq!(backend.stats().requests_received, 0);
    world.settled().await;
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn more_requests_than_capacity_wait_in_jetstream_and_all_complete() {
    let world = World::new().await;
    let backend = sim("m", 20, 10).await; // about 200 ms each
    let mut config = world.config(&[&backend]);
    config.consumer.max_in_flight = 2;
    let worker = world.start(config, Tier::Small).await;

    let mut pending = Vec::new();
    for i in 0..8 {
        pending.push(
            world
                .submit(Tier::Small, prompt(&format!("queued {i}")))
                .await,
        );
    }
    let (mut max_running, mut saw_queued, mut max_ack_pending) = (0, false, 0);
    let collect = async {
        let mut done = Vec::new();
        for mut r in pending {
            done.push(r.collect(LONG).await);
        }
        done
    };
    tokio::pin!(collect);
    let wait = Deadline::after(LONG, "all 8 queued requests answered");
    let results = loop {
        tokio::select! {
            done = &mut collect => break done,
            _ = wait.poll_again() => {
                max_running = max_running.max(backend.stats().running);
                let (pending, ack_pending) = world.queue_depth(Tier::Small).await;
                saw_queued |= pending > 0;
                max_ack_pending = max_ack_pending.max(ack_pending);
            }
        }
    };
    assert_eq!(results.len(), 8);
    for r in &results {
        r.completion();
    }
    assert!(max_running <= 2, "{max_running} generations at once");
    assert!(max_ack_pending <= 2, "{max_ack_pending} delivered at once");
    assert!(saw_queued, "the rest waited in JetStream");
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_work_within_the_grace_period() {
    let world = World::new().await;
    let backend = sim("m", 40, 10).await;
    let worker = world.start(world.config(&[&backend]), Tier::Small).await;
    let mut replies = world.submit(Tier::Small, prompt("finish me")).await;
    replies.first_chunk(LONG).await;
    let stop = tokio::spawn(worker.stop());
    let rest = replies.collect(LONG).await;
    assert_eq!(rest.completion().attempt, 1);
    let summary = stop.await.unwrap();
    assert_eq!((summary.acked, summary.nakked), (1, 0));
    world.settled().await;
    world.teardown().await;
}

#[tokio::test]
async fn shutdown_hands_back_what_outlives_the_grace_period() {
    let world = World::new().await;
    let backend = sim("m", 100, 20).await;
    let reference = sim("m", 100, 0).await;
    let mut config = world.config(&[&backend]);
    config.shutdown_grace = Duration::from_millis(200);
    let worker = world.start(config.clone(), Tier::Small).await;
    let mut replies = world.submit(Tier::Small, prompt("hand me back")).await;
    replies.first_chunk(LONG).await;
    let summary = worker.stop().await;
    assert_eq!((summary.acked, summary.nakked), (0, 1));
    // The cancelled attempt's tokens are booked as cancelled.
    let events = world.usage_of(&replies.id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].attempt, events[0].status),
        (1, UsageStatus::Cancelled)
    );

    // Another replica picks it up at once (nak, not the ack wait).
    config.shutdown_grace = Duration::from_secs(5);
    let next = world.start(config, Tier::Small).await;
    let rest = replies.collect(LONG).await;
    let (expected, _) = direct_text(&reference, "hand me back", Some(64)).await;
    assert_eq!(rest.completion().attempt, 17);
    assert_eq!(rest.text(), expected);
    next.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn an_interrupted_batch_resumes_without_losing_or_repeating_requests() {
    let world = World::new().await;
    let backend = sim("m", 20, 5).await; // about 100 ms each
    let mut config = world.config(&[&backend]);
    config.consumer.max_in_flight = 1;
    let worker = world.start(config, Tier::Small).await;

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let ids: Vec<String> = (0..8).map(|i| format!("job-{i}")).collect();
    let lines: String = ids
        .iter()
        .map(|id| {
            format!("{{\"id\":\"{id}\",\"prompt\":\"summarise item {id}\",\"max_tokens\":32}}\n")
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let options = BatchOptions {
        input: input.clone(),
        output: output.clone(),
        submit_to: SubmitTo::Tier1,
        window: 8,
        timeout: Duration::from_millis(250),
        poll_interval: Duration::from_millis(100),
        encoding: triage_protocol::Encoding::MsgPack,
        progress: false,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();

    // First run: interrupted by its timeout with results still missing.
    let first = batch::run(&world.client, &world.ns, &options, &shutdown)
        .await
        .unwrap();
    assert_eq!(first.submitted, 8);
    assert!(!first.missing.is_empty(), "{first:?}");
    let written_first = first.completed;
    // ...and a write torn by the interruption.
    let mut torn = std::fs::read_to_string(&output).unwrap();
    torn.push_str("{\"type\":\"completion\",\"id\":\"job-");
    std::fs::write(&output, torn).unwrap();

    // Second run, through the binary: resumes (killed if it overstays).
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_triage-worker"))
        .args([
            "batch",
            "--subject",
            "tier1",
            "--no-progress",
            "--poll-interval",
            "100ms",
        ])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .envs(child_env(&world, &[&backend]))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(LONG, second)
        .await
        .unwrap_or_else(|_| panic!("the resumed batch did not finish within {LONG:?}"))
        .unwrap();
    assert!(status.success(), "{status:?}");

    let text = std::fs::read_to_string(&output).unwrap();
    let mut seen = HashSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["type"], "completion", "{line}");
        assert!(!v["text"].as_str().unwrap().is_empty());
        assert!(
            seen.insert(v["id"].as_str().unwrap().to_string()),
            "duplicate {line}"
        );
    }
    assert_eq!(seen, ids.iter().cloned().collect::<HashSet<_>>());
    assert!(written_first < 8, "{written_first}");
    // Each request was generated exactly once across both runs.
    assert_eq!(backend.stats().requests_received, 8);
    world.settled().await;
    assert_eq!(world.usage_events().await.len(), 8);
    worker.stop().await;
    world.teardown().await;
}

#[tokio::test]
async fn the_finished_record_is_sized_from_configuration_and_failed_writes_are_counted() {
    let world = World::new().await;
    let bucket_stream = format!("KV_{}", world.ns.finished_bucket());
    let (js, name) = (&world.js, &bucket_stream);
    let bucket_config = || async move {
        let mut stream = js.get_stream(name).await.unwrap();
        stream.info().await.unwrap().config.clone()
    };
    let provisioned = bucket_config().await;
    assert_eq!(provisioned.max_bytes, 8 << 20);
    assert_eq!(provisioned.max_age, Duration::from_secs(3600));
    assert_eq!(provisioned.max_messages_per_subject, 1);
    assert_eq!(
        provisioned.discard,
        async_nats::jetstream::stream::DiscardPolicy::New,
        "a full bucket refuses new records, it never drops live ones"
    );

    // A worker configured otherwise resizes the bucket at start.
    let backend = sim("m", 4, 0).await;
    let mut config = world.config(&[&backend]);
    config.nats.streams.finished_max_bytes = 4 << 20;
    config.nats.streams.finished_history = 2;
    config.nats.streams.finished_ttl = Duration::from_secs(7200);
    let worker = world.start(config, Tier::Small).await;
    let resized = bucket_config().await;
    assert_eq!(resized.max_bytes, 4 << 20);
    assert_eq!(resized.max_messages_per_subject, 2);
    assert_eq!(resized.max_age, Duration::from_secs(7200));
    let failures = "triage_worker_finished_write_failures_total{tier=\"1\"}";
    assert_eq!(
        worker.metric(failures),
        Some(0.0),
        "exported before any failure"
    );

    // Without the bucket the answer still comes; the lost record is counted.
    // The look-up and the write are each retried for about 10 s first (a
    // bucket that is only failing over comes back in that time), and the
    // first delivery is handed back after a failed look-up.
    world.js.delete_stream(&bucket_stream).await.unwrap();
    let got = world
        .submit(Tier::Small, prompt("remember me"))
        .await
        .collect(3 * LONG)
        .await;
    got.completion();
    world.settled().await;
    assert_eq!(worker.metric(failures), Some(1.0));
    worker.stop().await;
    world.teardown().await;
}
