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
            text: None,
            routing: None,
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
