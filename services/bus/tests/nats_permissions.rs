//! The shipped NATS permissions (deploy/nats/triage.conf) on a private
//! nats-server 2.9: every role does its part of a request's journey with
//! its own credentials, the way its service does it (the same bus calls),
//! and what a role must not do is refused by the server.

mod support;

use std::time::Duration;

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};
use support::auth_nats::{expect_violation, password, AuthNats};
use triage_bus::{
    consumer, publish, ConsumerSettings, DeadLetter, Envelope, NatsConfig, StreamsConfig,
    TriageClient,
};
use triage_protocol::{
    decode, encode, Chunk, Completion, ErrorCode, Namespace, Reply, ReplyPolicy, Request,
    RoutedRequest, RoutingDecision, StreamKind, Tier, Usage, SCHEMA_VERSION,
};

const WAIT: Duration = Duration::from_secs(10);

/// A service's connection: its user, its password, its inbox prefix.
async fn connect(server: &AuthNats, user: &str, inbox_prefix: &str) -> async_nats::Client {
    let config = NatsConfig {
        url: server.url.clone(),
        user: Some(user.into()),
        password: Some(password(user)),
        inbox_prefix: Some(inbox_prefix.into()),
        streams: StreamsConfig::small(),
        ..NatsConfig::default()
    };
    triage_bus::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("{user} connects: {e}"))
}

/// A service's start: connect and provision the streams, as all do.
async fn service(server: &AuthNats, user: &str) -> (async_nats::Client, jetstream::Context) {
    let client = connect(server, user, &format!("_TRIAGE.{user}")).await;
    let js = jetstream::new(client.clone());
    triage_bus::provision(&js, &Namespace::default(), &StreamsConfig::small())
        .await
        .unwrap_or_else(|e| panic!("{user} provisions the streams: {e}"));
    (client, js)
}

/// The next message of durable `name` on `kind`, pulled as the services do.
async fn next(js: &jetstream::Context, kind: StreamKind, name: &str) -> jetstream::Message {
    let ns = Namespace::default();
    let consumer = consumer::durable(js, &ns, kind, name, &ConsumerSettings::default())
        .await
        .unwrap_or_else(|e| panic!("{name} creates its consumer: {e}"));
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(WAIT)
        .messages()
        .await
        .unwrap_or_else(|e| panic!("{name} pulls: {e}"));
    tokio::time::timeout(WAIT, batch.next())
        .await
        .unwrap_or_else(|_| panic!("{name} got no message within {WAIT:?}"))
        .expect("a message")
        .expect("not an error")
}

#[tokio::test]
async fn every_role_works_with_its_own_credentials() {
    let server = AuthNats::start();
    let ns = Namespace::default();
    let (router, router_js) = service(&server, "router").await;
    let (tier1, tier1_js) = service(&server, "worker-tier1").await;
    let (_tier2, tier2_js) = service(&server, "worker-tier2").await;
    let (_ledger, ledger_js) = service(&server, "ledger").await;

    // A client of tenant acme, on its own inboxes and its tenant's subject.
    let acme = connect(&server, "acme", "_INBOX.acme").await;
    let mut request = Request::from_prompt("hello");
    request.tenant = Some("acme".into());
    let replies = TriageClient::new(acme, ns.clone())
        .submit(request, WAIT)
        .await
        .expect("acme submits on llm.requests.acme");

    // Router: takes it, republishes it to tier 1, acks.
    let message = next(&router_js, StreamKind::Requests, "router").await;
    assert_eq!(message.subject.as_str(), "llm.requests.acme");
    let env = Envelope::of(&message);
    let request: Request = decode(env.encoding, &message.payload).unwrap();
    let routed = RoutedRequest {
        version: SCHEMA_VERSION,
        request,
        routing: RoutingDecision::fixed(Tier::Small, "test"),
        routed_at_ms: 0,
    };
    let body = encode(env.encoding, &routed).into();
    let headers = triage_bus::envelope::outgoing(env.encoding, None);
    publish::durable(&router_js, "routed", &ns.tier(Tier::Small), headers, body)
        .await
        .expect("router publishes to llm.tier1");
    consumer::ack_confirmed(&message)
        .await
        .expect("router acks");
    let refusal = Reply::Error(triage_protocol::ErrorReply::new(
        "x",
        ErrorCode::InvalidRequest,
        "test",
    ));
    triage_bus::reply::send(&router, "_INBOX.acme.refusals", env.encoding, &refusal)
        .await
        .expect("router answers on _INBOX.>");

    let message = next(&tier1_js, StreamKind::Tier1, "worker-tier1").await;
    work_as_tier1(&tier1, &tier1_js, &message).await;

    let answer = replies.collect().await.expect("acme reads its answer");
    assert_eq!(answer.text, "Hi acme");

    // Escalation reached tier 2; the usage event reached the ledger.
    let escalated = next(&tier2_js, StreamKind::Tier2, "worker-tier2").await;
    consumer::ack_confirmed(&escalated)
        .await
        .expect("tier 2 acks");
    let usage = next(&ledger_js, StreamKind::Usage, "ledger").await;
    consumer::ack_confirmed(&usage).await.expect("ledger acks");
    dead_letter(&ledger_js, &usage).await;

    gateway_asks(&server).await;
    exporter_reads_queues(&server).await;
    assert_eq!(
        server.violations(),
        Vec::<String>::new(),
        "every step was allowed"
    );
}

/// Tier 1's part: the finished-ids bucket, an answer, a usage event, a kept
/// result, an escalation to tier 2, a dead letter, the ack.
async fn work_as_tier1(
    client: &async_nats::Client,
    js: &jetstream::Context,
    message: &jetstream::Message,
) {
    let ns = Namespace::default();
    let env = Envelope::of(message);
    let routed: RoutedRequest = decode(env.encoding, &message.payload).unwrap();
    let id = routed.request.id.clone();
    let finished = triage_bus::streams::finished_bucket(js, &ns, &StreamsConfig::small())
        .await
        .expect("tier 1 opens the finished-ids bucket");
    assert!(finished
        .get(&id)
        .await
        .expect("tier 1 reads the bucket")
        .is_none());
    // The progress bucket: created, written, read and deleted from.
    let progress = triage_bus::streams::progress_bucket(js, &ns, &StreamsConfig::small())
        .await
        .expect("tier 1 opens the progress bucket");
    progress
        .put(&id, "{}".into())
        .await
        .expect("tier 1 records progress");
    assert!(progress
        .get(&id)
        .await
        .expect("tier 1 reads progress")
        .is_some());
    progress.delete(&id).await.expect("tier 1 deletes progress");
    let reply_to = env
        .reply_subject(
            routed.request.reply_to.as_deref(),
            &ReplyPolicy::default(),
            &ns,
        )
        .unwrap();
    let chunk = Reply::Chunk(Chunk {
        id: id.clone(),
        seq: 0,
        attempt: 1,
        delta: "Hi acme".into(),
        logprobs: None,
    });
    triage_bus::reply::send(client, &reply_to, env.encoding, &chunk)
        .await
        .unwrap();
    let completion = Reply::Completion(Completion {
        id: id.clone(),
        attempt: 1,
        finish_reason: "stop".into(),
        usage: Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            estimated: false,
        },
        tier: Tier::Small,
        model: "m".into(),
        ttft_ms: 1.0,
        total_ms: 2.0,
        chunks: 1,
        text_bytes: Some(7),
        text: None,
        routing: None,
        logprobs: None,
        alternatives: Vec::new(),
    });
    triage_bus::reply::send(client, &reply_to, env.encoding, &completion)
        .await
        .unwrap();
    let h = || triage_bus::envelope::outgoing(env.encoding, None);
    for (what, subject) in [
        ("usage", ns.usage()),
        (
            "result",
            ns.result(triage_protocol::RequestKey::new(None, &id)),
        ),
        ("escalation", ns.tier(Tier::Large)),
    ] {
        publish::durable(js, what, &subject, h(), message.payload.clone())
            .await
            .unwrap_or_else(|e| panic!("tier 1 publishes its {what} to {subject}: {e}"));
    }
    finished
        .put(&id, "answered".into())
        .await
        .expect("tier 1 records the id");
    dead_letter(js, message).await;
    consumer::ack_confirmed(message).await.expect("tier 1 acks");
}

async fn dead_letter(js: &jetstream::Context, message: &jetstream::Message) {
    let letter = DeadLetter {
        subject: message.subject.as_str(),
        payload: &message.payload,
        headers: None,
        reason: "test",
        code: ErrorCode::InvalidRequest,
        service: "test",
        deliveries: 1,
    };
    letter
        .publish(js, &Namespace::default())
        .await
        .expect("a dead letter is stored");
}

/// The gateway: health look-up of a stream, a request on plain
/// llm.requests with its answer on `_GW.>` (answered here as a worker would).
async fn gateway_asks(server: &AuthNats) {
    let ns = Namespace::default();
    let gateway = connect(server, "gateway", "_TRIAGE.gateway").await;
    jetstream::new(gateway.clone())
        .get_stream(ns.stream_name(StreamKind::Requests))
        .await
        .expect("gateway looks up a stream for /health");
    let replies = TriageClient::new(gateway, ns.clone())
        .with_reply_prefix("_GW.test")
        .submit(Request::from_prompt("via http"), WAIT)
        .await
        .expect("gateway submits on llm.requests");
    let (router, router_js) = service(server, "router").await;
    let message = next(&router_js, StreamKind::Requests, "router").await;
    assert_eq!(message.subject.as_str(), "llm.requests");
    let env = Envelope::of(&message);
    let request: Request = decode(env.encoding, &message.payload).unwrap();
    let reply_to = env
        .reply_subject(request.reply_to.as_deref(), &ReplyPolicy::default(), &ns)
        .unwrap();
    assert!(reply_to.starts_with("_GW.test."), "{reply_to}");
    let refusal = Reply::Error(triage_protocol::ErrorReply::new(
        &request.id,
        ErrorCode::InvalidRequest,
        "refused",
    ));
    triage_bus::reply::send(&router, &reply_to, env.encoding, &refusal)
        .await
        .unwrap();
    consumer::ack_confirmed(&message).await.unwrap();
    let err = replies.collect().await.expect_err("the refusal");
    assert!(err.to_string().contains("refused"), "{err}");
}

/// The cost exporter's queue reading: stream info and consumer lists.
async fn exporter_reads_queues(server: &AuthNats) {
    let ns = Namespace::default();
    let js = jetstream::new(connect(server, "cost-exporter", "_TRIAGE.cost-exporter").await);
    let mut stream = js
        .get_stream(ns.stream_name(StreamKind::Requests))
        .await
        .expect("exporter looks up a stream");
    stream.info().await.expect("exporter reads stream info");
    let consumers: Vec<_> = stream
        .consumers()
        .try_collect()
        .await
        .expect("exporter lists consumers");
    assert!(
        consumers.iter().any(|c| c.name == "router"),
        "{consumers:?}"
    );
}

/// Publishes to each subject and expects the server to refuse each one.
async fn refused_publishes(
    client: &async_nats::Client,
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    subjects: &[&str],
) {
    for subject in subjects {
        client
            .publish(subject.to_string(), "x".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        expect_violation(errors, &format!("Publish to \"{subject}\"")).await;
    }
}

/// Subscribes to each subject and expects the server to refuse each one.
async fn refused_subscriptions(
    client: &async_nats::Client,
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    subjects: &[&str],
) {
    for subject in subjects {
        let _sub = client.subscribe(subject.to_string()).await.unwrap();
        client.flush().await.unwrap();
        expect_violation(errors, &format!("Subscription to \"{subject}\"")).await;
    }
}

#[tokio::test]
async fn a_client_can_only_submit_its_own_requests_and_read_its_own_answers() {
    let server = AuthNats::start();
    let ns = Namespace::default();
    let (_router, _) = service(&server, "router").await;
    let (acme, mut errors) = server.probe("acme", "_INBOX.acme").await;
    refused_publishes(
        &acme,
        &mut errors,
        &[
            "llm.tier1",
            "llm.tier2",
            "llm.usage",
            "llm.dead",
            "llm.results.x",
            "llm.requests",
            "llm.requests.globex",
            "_INBOX.globex.1",
        ],
    )
    .await;
    refused_subscriptions(
        &acme,
        &mut errors,
        &[
            "llm.dead",
            "llm.requests.>",
            "_INBOX.globex.>",
            "_INBOX.>",
            "_GW.>",
            "$JS.ACK.>",
        ],
    )
    .await;

    // The Rust client refuses nothing itself: another tenant's subject is
    // refused by the server and the publish is never acked.
    let mut other = Request::from_prompt("as globex");
    other.tenant = Some("globex".into());
    let js = jetstream::new(acme.clone());
    let err = TriageClient::new(acme.clone(), ns.clone())
        .submit(other, WAIT)
        .await;
    assert!(
        matches!(err, Err(triage_bus::ClientError::Submit { .. })),
        "{:?}",
        err.err()
    );
    expect_violation(&mut errors, "Publish to \"llm.requests.globex\"").await;

    // No JetStream API: no stream look-up, no consumer of its own.
    assert!(js
        .get_stream(ns.stream_name(StreamKind::Requests))
        .await
        .is_err());
    expect_violation(
        &mut errors,
        "Publish to \"$JS.API.STREAM.INFO.LLM_REQUESTS\"",
    )
    .await;
    let sneaky = jetstream::consumer::pull::Config {
        durable_name: Some("sneaky".into()),
        ..Default::default()
    };
    assert!(js
        .create_consumer_on_stream(sneaky, "LLM_DEAD")
        .await
        .is_err());
    expect_violation(&mut errors, "Publish to \"$JS.API.CONSUMER.").await;

    // Its own tenant's subject works, and nothing refused reached a stream.
    let mut own = Request::from_prompt("as acme");
    own.tenant = Some("acme".into());
    TriageClient::new(acme, ns.clone())
        .submit(own, WAIT)
        .await
        .expect("own tenant");
    let admin = jetstream::new(connect(&server, "admin", "_INBOX.admin").await);
    for (kind, expected) in [
        (StreamKind::Requests, 1),
        (StreamKind::Tier1, 0),
        (StreamKind::Usage, 0),
        (StreamKind::Dead, 0),
    ] {
        let mut stream = admin.get_stream(ns.stream_name(kind)).await.unwrap();
        assert_eq!(
            stream.info().await.unwrap().state.messages,
            expected,
            "{kind:?}"
        );
    }
    // The server logged the refusals (what the other tests check is absent).
    let logged = server.violations();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("User \"acme\"") && l.contains("llm.tier1")),
        "{logged:?}"
    );
}

#[tokio::test]
async fn services_are_confined_to_their_own_subjects() {
    let server = AuthNats::start();
    let (_router, _) = service(&server, "router").await;
    for (user, publishes, subscriptions) in [
        (
            "router",
            &[
                "llm.usage",
                "llm.requests",
                "$JS.API.STREAM.DELETE.LLM_USAGE",
                "$JS.API.STREAM.PURGE.LLM_REQUESTS",
            ][..],
            &["_INBOX.>", "llm.tier1"][..],
        ),
        (
            "worker-tier1",
            &[
                "llm.tier1",
                "llm.requests",
                "$JS.ACK.LLM_TIER2.worker-tier2.1",
            ][..],
            &["_INBOX.>", "_TRIAGE.router.>"][..],
        ),
        (
            "worker-tier2",
            &["llm.tier1", "llm.tier2", "llm.requests"][..],
            &["_GW.>"][..],
        ),
        (
            "ledger",
            &["llm.tier1", "llm.usage", "_INBOX.acme.1"][..],
            &["llm.usage"][..],
        ),
        (
            "cost-exporter",
            &["$JS.API.STREAM.CREATE.LLM_X", "llm.requests", "llm.dead"][..],
            &["_INBOX.>"][..],
        ),
        (
            "gateway",
            &[
                "llm.tier2",
                "llm.usage",
                "$JS.API.STREAM.UPDATE.LLM_REQUESTS",
            ][..],
            &["_INBOX.>", "llm.requests"][..],
        ),
    ] {
        let (client, mut errors) = server.probe(user, &format!("_TRIAGE.{user}")).await;
        refused_publishes(&client, &mut errors, publishes).await;
        refused_subscriptions(&client, &mut errors, subscriptions).await;
    }
    // A wrong password gets no connection at all.
    let wrong = async_nats::ConnectOptions::with_user_and_password("router".into(), "guess".into())
        .connect(&server.url)
        .await;
    assert!(wrong.is_err(), "a wrong password must be refused");
}
