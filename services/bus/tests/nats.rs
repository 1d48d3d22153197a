//! Against the real NATS server (TRIAGE_NATS_URL, default 127.0.0.1:4222).

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use triage_bus::streams::{desired_config, ensure_stream, provision, Provisioned};
use triage_bus::{
    consumer, ClientError, ConsumerSettings, DeadLetter, Envelope, NatsConfig, StreamsConfig,
    TriageClient,
};
use triage_protocol::{
    encode, headers, Chunk, Completion, Encoding, ErrorCode, ErrorReply, Namespace, Reply,
    ReplyPolicy, Request, StreamKind, Tier, Usage,
};

/// A namespace of its own per test, so tests run in parallel and never
/// touch a real deployment's streams.
fn test_namespace() -> Namespace {
    Namespace::new(format!("t{}", uuid::Uuid::now_v7().simple())).unwrap()
}

async fn setup() -> (async_nats::Client, jetstream::Context, Namespace) {
    let config = NatsConfig {
        url: triage_bus::default_nats_url(),
        ..NatsConfig::default()
    };
    let client = triage_bus::connect(&config)
        .await
        .expect("NATS must be running (scripts/setup.sh starts it)");
    let js = jetstream::new(client.clone());
    (client, js, test_namespace())
}

async fn teardown(js: &jetstream::Context, ns: &Namespace) {
    for kind in StreamKind::ALL {
        let _ = js.delete_stream(ns.stream_name(kind)).await;
    }
    let _ = js
        .delete_stream(format!("KV_{}", ns.finished_bucket()))
        .await;
}

#[tokio::test]
async fn provisioning_is_idempotent_and_applies_changed_limits() {
    let (_client, js, ns) = setup().await;
    let cfg = StreamsConfig::small();

    let first = provision(&js, &ns, &cfg).await.unwrap();
    assert!(
        first.iter().all(|(_, p)| *p == Provisioned::Created),
        "{first:?}"
    );
    let second = provision(&js, &ns, &cfg).await.unwrap();
    assert!(
        second.iter().all(|(_, p)| *p == Provisioned::Unchanged),
        "{second:?}"
    );
    let kv = triage_bus::streams::finished_bucket(&js, &ns, &cfg)
        .await
        .unwrap();
    kv.put("req-1", "done".into()).await.unwrap();
    assert_eq!(
        kv.get("req-1").await.unwrap().as_deref(),
        Some(&b"done"[..])
    );

    // Many replicas starting at once must all succeed.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (js, ns, cfg) = (js.clone(), ns.clone(), cfg.clone());
            tokio::spawn(async move { provision(&js, &ns, &cfg).await })
        })
        .collect();
    for h in handles {
        h.await.unwrap().unwrap();
    }

    let mut changed = cfg.clone();
    changed.usage.max_age = Duration::from_secs(1800);
    let third = provision(&js, &ns, &changed).await.unwrap();
    let usage_name = ns.stream_name(StreamKind::Usage);
    for (name, outcome) in &third {
        let expected = if *name == usage_name {
            Provisioned::Updated
        } else {
            Provisioned::Unchanged
        };
        assert_eq!(*outcome, expected, "{name}");
    }
    let mut stream = js.get_stream(&usage_name).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.max_age,
        Duration::from_secs(1800)
    );

    let requests = js
        .get_stream(ns.stream_name(StreamKind::Requests))
        .await
        .unwrap();
    assert_eq!(
        requests.cached_info().config.retention,
        jetstream::stream::RetentionPolicy::WorkQueue
    );
    teardown(&js, &ns).await;
}

/// Work queues and `llm.usage` refuse new messages at their limits
/// (discard-new) instead of deleting accepted ones; `llm.dead` and
/// `llm.results` keep the newest. A stream provisioned by an older build
/// (discard-old, no message limit) is updated in place.
#[tokio::test]
async fn full_streams_refuse_new_messages_and_older_streams_are_updated() {
    let (_client, js, ns) = setup().await;
    for kind in StreamKind::ALL {
        let mut old = desired_config(&ns, kind, &StreamsConfig::small());
        old.discard = jetstream::stream::DiscardPolicy::Old;
        js.create_stream(old).await.unwrap();
    }
    let mut cfg = StreamsConfig::small();
    cfg.tiers.max_msgs = 1000;
    let report = provision(&js, &ns, &cfg).await.unwrap();
    // The last entry is the finished-ids bucket, not one of the streams.
    for (name, outcome) in &report[..StreamKind::ALL.len()] {
        let kind = StreamKind::ALL
            .into_iter()
            .find(|k| ns.stream_name(*k) == *name)
            .unwrap();
        let info = js.get_stream(name).await.unwrap().cached_info().clone();
        let refuses = kind.is_work_queue() || kind == StreamKind::Usage;
        let want = if refuses {
            jetstream::stream::DiscardPolicy::New
        } else {
            jetstream::stream::DiscardPolicy::Old
        };
        assert_eq!(info.config.discard, want, "{name}");
        let expected = if refuses {
            Provisioned::Updated
        } else {
            Provisioned::Unchanged
        };
        assert_eq!(*outcome, expected, "{name}");
        let max_msgs = if matches!(kind, StreamKind::Tier1 | StreamKind::Tier2) {
            1000
        } else {
            -1
        };
        assert_eq!(info.config.max_messages, max_msgs, "{name}");
    }
    teardown(&js, &ns).await;
}

/// `llm.requests` configured for two messages, no consumer: the third
/// submission is refused with `queue_full`, and the two accepted stay.
#[tokio::test]
async fn a_full_request_queue_answers_queue_full_and_keeps_what_it_accepted() {
    let (client, js, ns) = setup().await;
    let mut cfg = StreamsConfig::small();
    cfg.requests.max_msgs = 2;
    provision(&js, &ns, &cfg).await.unwrap();
    let triage = TriageClient::new(client, ns.clone());
    let mut accepted = Vec::new();
    for _ in 0..2 {
        let request = Request::from_prompt("hello");
        let stream = triage.submit(request, Duration::from_secs(5)).await;
        accepted.push(stream.expect("room for two").id().to_string());
    }
    let third = Request::from_prompt("one too many");
    match triage.submit(third, Duration::from_secs(5)).await {
        Err(e @ ClientError::QueueFull { .. }) => {
            assert!(e.to_string().starts_with("queue_full:"), "{e}");
            assert!(e.to_string().contains("maximum messages exceeded"), "{e}");
        }
        Err(other) => panic!("expected ClientError::QueueFull, got {other}"),
        Ok(_) => panic!("expected ClientError::QueueFull, got an accepted submission"),
    }
    let requests = js
        .get_stream(ns.stream_name(StreamKind::Requests))
        .await
        .unwrap();
    for (seq, id) in (1..).zip(&accepted) {
        let kept = requests.get_raw_message(seq).await.unwrap();
        let kept: Request = triage_protocol::decode(Encoding::MsgPack, &kept.payload).unwrap();
        assert_eq!(&kept.id, id, "message {seq} is still the accepted request");
    }
    teardown(&js, &ns).await;
}

/// A service's durable publish to a full stream (here `llm.usage` at its
/// byte limit) fails with `BusError::QueueFull`, not a generic error.
#[tokio::test]
async fn a_publish_to_a_stream_at_its_byte_limit_is_queue_full() {
    let (_client, js, ns) = setup().await;
    let mut cfg = StreamsConfig::small();
    cfg.usage.max_bytes = 4096;
    provision(&js, &ns, &cfg).await.unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 1000]);
    let mut stored = 0;
    let refused = loop {
        let published = triage_bus::publish::once(
            &js,
            &ns.usage(),
            async_nats::HeaderMap::new(),
            payload.clone(),
        )
        .await;
        match published {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10, "4 KiB should not hold {stored} KB");
    };
    assert!(
        matches!(refused, triage_bus::BusError::QueueFull { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("maximum bytes exceeded"));
    let usage = js
        .get_stream(ns.stream_name(StreamKind::Usage))
        .await
        .unwrap();
    assert_eq!(
        usage.cached_info().state.first_sequence,
        1,
        "nothing dropped"
    );
    assert!(stored >= 1);
    teardown(&js, &ns).await;
}

#[tokio::test]
async fn a_stream_with_the_wrong_retention_is_reported_not_clobbered() {
    let (_client, js, ns) = setup().await;
    let cfg = StreamsConfig::small();
    let mut wrong = desired_config(&ns, StreamKind::Tier1, &cfg);
    wrong.retention = jetstream::stream::RetentionPolicy::Limits;
    js.create_stream(wrong).await.unwrap();
    let err = ensure_stream(&js, desired_config(&ns, StreamKind::Tier1, &cfg))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("retention"), "{err}");
    teardown(&js, &ns).await;
}

/// A stand-in worker: answers each request on its reply subject with two
/// chunks of attempt 1, a restart with attempt 2, and a completion.
async fn answer_requests(
    client: async_nats::Client,
    js: jetstream::Context,
    ns: Namespace,
    count: usize,
) {
    let consumer = consumer::durable(
        &js,
        &ns,
        StreamKind::Requests,
        "test",
        &ConsumerSettings::default(),
    )
    .await
    .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(count);
    while let Some(Ok(message)) = messages.next().await {
        let env = Envelope::of(&message);
        let request: Request = triage_protocol::decode(env.encoding, &message.payload).unwrap();
        let reply_to = env
            .reply_subject(request.reply_to.as_deref(), &ReplyPolicy::default(), &ns)
            .unwrap();
        let chunk = |seq, attempt, delta: &str| {
            Reply::Chunk(Chunk {
                id: request.id.clone(),
                seq,
                attempt,
                delta: delta.into(),
                logprobs: None,
            })
        };
        for r in [
            chunk(0, 1, "lost "),
            chunk(0, 2, "Hello, "),
            chunk(1, 2, "world"),
        ] {
            triage_bus::reply::send(&client, &reply_to, env.encoding, &r)
                .await
                .unwrap();
        }
        let done = Reply::Completion(Completion {
            id: request.id.clone(),
            attempt: 2,
            finish_reason: "stop".into(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                estimated: false,
            },
            tier: Tier::Small,
            model: "m".into(),
            ttft_ms: 1.0,
            total_ms: 2.0,
            chunks: 2,
            text_bytes: Some("Hello, world".len() as u64),
            text: None,
            routing: None,
            logprobs: None,
            alternatives: Vec::new(),
        });
        triage_bus::reply::send(&client, &reply_to, env.encoding, &done)
            .await
            .unwrap();
        consumer::ack_confirmed(&message).await.unwrap();
    }
}

#[tokio::test]
async fn client_submits_durably_and_assembles_the_answer_in_both_encodings() {
    let (client, js, ns) = setup().await;
    provision(&js, &ns, &StreamsConfig::small()).await.unwrap();
    let worker = tokio::spawn(answer_requests(client.clone(), js.clone(), ns.clone(), 2));

    for encoding in [Encoding::MsgPack, Encoding::Json] {
        let triage = TriageClient::new(client.clone(), ns.clone()).with_encoding(encoding);
        let answer = triage
            .ask(Request::from_prompt("hi"), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            answer.text, "Hello, world",
            "{encoding:?}: a later attempt resets the text"
        );
        assert_eq!(answer.restarts, 1);
        assert_eq!(answer.chunks, 2);
        assert_eq!(answer.completion.unwrap().usage.total_tokens(), 5);
    }
    // A request the stand-in missed would leave it waiting for ever.
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the stand-in worker answered both requests within 30 s")
        .unwrap();
    // Work-queue retention: acked requests are gone.
    let mut requests = js
        .get_stream(ns.stream_name(StreamKind::Requests))
        .await
        .unwrap();
    assert_eq!(requests.info().await.unwrap().state.messages, 0);
    teardown(&js, &ns).await;
}

/// A stand-in worker whose second chunk is lost on the way: the client
/// fails the request with `stream_incomplete` rather than return "Hel!".
#[tokio::test]
async fn a_lost_chunk_fails_the_answer_instead_of_returning_wrong_text() {
    let (client, js, ns) = setup().await;
    provision(&js, &ns, &StreamsConfig::small()).await.unwrap();
    let consumer = consumer::durable(
        &js,
        &ns,
        StreamKind::Requests,
        "test",
        &ConsumerSettings::default(),
    )
    .await
    .unwrap();
    let answering = client.clone();
    let worker = tokio::spawn(async move {
        let mut messages = consumer.messages().await.unwrap();
        let message = messages.next().await.unwrap().unwrap();
        let env = Envelope::of(&message);
        let request: Request = triage_protocol::decode(env.encoding, &message.payload).unwrap();
        let to = request.reply_to.clone().unwrap();
        let chunk = |seq, delta: &str| {
            Reply::Chunk(Chunk {
                id: request.id.clone(),
                seq,
                attempt: 1,
                delta: delta.into(),
                logprobs: None,
            })
        };
        let done = Reply::Completion(Completion {
            id: request.id.clone(),
            attempt: 1,
            finish_reason: "stop".into(),
            usage: Usage::default(),
            tier: Tier::Small,
            model: "m".into(),
            ttft_ms: 1.0,
            total_ms: 2.0,
            chunks: 3,
            text_bytes: Some("Hello!".len() as u64),
            text: None,
            routing: None,
            logprobs: None,
            alternatives: Vec::new(),
        });
        // Chunk 1 ("lo") never arrives.
        for r in [chunk(0, "Hel"), chunk(2, "!"), done] {
            triage_bus::reply::send(&answering, &to, env.encoding, &r)
                .await
                .unwrap();
        }
        consumer::ack_confirmed(&message).await.unwrap();
    });
    let triage = TriageClient::new(client, ns.clone());
    let result = triage
        .ask(Request::from_prompt("hi"), Duration::from_secs(10))
        .await;
    match result {
        Err(e @ ClientError::Incomplete { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("stream_incomplete:"), "{text}");
            assert!(
                text.contains("chunk 2 of attempt 1 came where chunk 1 was due"),
                "{text}"
            );
        }
        Err(other) => panic!("expected ClientError::Incomplete, got {other}"),
        Ok(answer) => panic!(
            "expected ClientError::Incomplete, got the text {:?}",
            answer.text
        ),
    }
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the stand-in answered within 10 s")
        .unwrap();
    teardown(&js, &ns).await;
}

#[tokio::test]
async fn an_error_reply_and_a_silent_backend_surface_as_typed_client_errors() {
    let (client, js, ns) = setup().await;
    provision(&js, &ns, &StreamsConfig::small()).await.unwrap();
    let triage = TriageClient::new(client.clone(), ns.clone());

    // Nobody answers: timeout, but the request is durably queued.
    let err = triage
        .ask(Request::from_prompt("anyone?"), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err, triage_bus::ClientError::Timeout { .. }),
        "{err}"
    );
    let mut requests = js
        .get_stream(ns.stream_name(StreamKind::Requests))
        .await
        .unwrap();
    assert_eq!(requests.info().await.unwrap().state.messages, 1);

    let mut stream = triage
        .submit(Request::from_prompt("x"), Duration::from_secs(5))
        .await
        .unwrap();
    let inbox = {
        // Read the queued request to find its reply subject, and answer with an error.
        let consumer = consumer::durable(
            &js,
            &ns,
            StreamKind::Requests,
            "t",
            &ConsumerSettings::default(),
        )
        .await
        .unwrap();
        let mut batch = consumer.fetch().max_messages(2).messages().await.unwrap();
        let mut subject = None;
        let read = async {
            while let Some(Ok(m)) = batch.next().await {
                let r: Request = triage_protocol::decode(Encoding::MsgPack, &m.payload).unwrap();
                if r.id == stream.id() {
                    subject = r.reply_to;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the fetch ended within 10 s");
        subject.unwrap()
    };
    let reply = Reply::Error(ErrorReply::new(
        stream.id(),
        ErrorCode::EmptyPrompt,
        "no text",
    ));
    client
        .publish(inbox, encode(Encoding::MsgPack, &reply).into())
        .await
        .unwrap();
    match stream.next().await {
        Some(Ok(Reply::Error(e))) => assert_eq!(e.code, ErrorCode::EmptyPrompt),
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert!(
        stream.next().await.is_none(),
        "nothing after the final message"
    );
    teardown(&js, &ns).await;
}

#[tokio::test]
async fn dead_letters_keep_the_payload_and_say_why() {
    let (_client, js, ns) = setup().await;
    provision(&js, &ns, &StreamsConfig::small()).await.unwrap();
    let mut original = async_nats::HeaderMap::new();
    original.insert(headers::CONTENT_TYPE, "application/json");
    // JetStream's own headers from the client are not copied: a kept
    // Nats-Msg-Id would de-duplicate the next dead letter of the same id, and
    // Nats-Expected-Stream would refuse this one.
    original.insert("Nats-Msg-Id", "client-chosen");
    original.insert("Nats-Expected-Stream", "SOMEONE_ELSE");
    DeadLetter {
        subject: &ns.requests(),
        payload: b"{broken",
        headers: Some(&original),
        reason: "malformed JSON payload:\nkey must be a string",
        code: ErrorCode::InvalidRequest,
        service: "router",
        deliveries: 1,
    }
    .publish(&js, &ns)
    .await
    .unwrap();
    let mut dead = js
        .get_stream(ns.stream_name(StreamKind::Dead))
        .await
        .unwrap();
    let last = dead.info().await.unwrap().state.last_sequence;
    let msg = dead.get_raw_message(last).await.unwrap();
    assert_eq!(&msg.payload[..], b"{broken");
    let h = msg.headers;
    assert_eq!(
        h.get(headers::DEAD_CODE).unwrap().as_str(),
        "invalid_request"
    );
    assert_eq!(
        h.get(headers::DEAD_SUBJECT).unwrap().as_str(),
        ns.requests()
    );
    assert_eq!(
        h.get(headers::CONTENT_TYPE).unwrap().as_str(),
        "application/json"
    );
    assert!(h.get("Nats-Msg-Id").is_none() && h.get("Nats-Expected-Stream").is_none());
    assert!(h
        .get(headers::DEAD_REASON)
        .unwrap()
        .as_str()
        .contains("key must be a string"));
    teardown(&js, &ns).await;
}

/// A second submission with an id the stream has just seen is dropped by
/// JetStream (de-duplication by `Nats-Msg-Id`): the client says so at once
/// instead of waiting for an answer that goes to the first submission.
#[tokio::test]
async fn a_resubmitted_id_is_a_duplicate_error_not_a_silent_wait() {
    let (client, js, ns) = setup().await;
    provision(&js, &ns, &StreamsConfig::small()).await.unwrap();
    let triage = TriageClient::new(client, ns.clone());
    let mut request = Request::from_prompt("hello");
    request.id = format!("dup-{}", uuid::Uuid::now_v7());
    let first = triage.submit(request.clone(), Duration::from_secs(5)).await;
    assert!(first.is_ok(), "{:?}", first.err());
    match triage.submit(request.clone(), Duration::from_secs(5)).await {
        Err(ClientError::Duplicate { id }) => assert_eq!(id, request.id),
        Err(other) => panic!("expected ClientError::Duplicate, got {other}"),
        Ok(_) => panic!("expected ClientError::Duplicate, got an accepted submission"),
    }
    teardown(&js, &ns).await;
}
