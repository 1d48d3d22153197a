//! Durable pull consumers shared by all replicas of a service.

use async_nats::jetstream::{self, consumer::pull, AckKind};
use triage_protocol::{Namespace, StreamKind};

use crate::{BusError, ConsumerSettings};

/// Creates (or updates, or joins) the durable pull consumer `name` on the
/// stream of `kind`. All replicas of a service use the same name, so
/// JetStream spreads messages across them.
pub async fn durable(
    js: &jetstream::Context,
    ns: &Namespace,
    kind: StreamKind,
    name: &str,
    settings: &ConsumerSettings,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
    let stream_name = ns.stream_name(kind);
    let durable_name = ns.consumer(name);
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| BusError::js(format!("look up stream {stream_name}"), e))?;
    let config = pull::Config {
        durable_name: Some(durable_name.clone()),
        description: Some(format!("Triage {name}")),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    };
    match stream.create_consumer(config).await {
        Ok(c) => Ok(c),
        // An older server refuses some updates of a live consumer; joining
        // the existing one is what a new replica wants anyway.
        Err(create_err) => stream.get_consumer(&durable_name).await.map_err(|_| {
            BusError::js(
                format!("create consumer {durable_name} on {stream_name}"),
                create_err,
            )
        }),
    }
}

/// Acks and waits for the server's confirmation, so "acked" means the
/// message will not come back.
pub async fn ack_confirmed(message: &jetstream::Message) -> Result<(), BusError> {
    message
        .double_ack()
        .await
        .map_err(|e| BusError::js("ack", e))
}

/// Hands a message back for redelivery after `delay` (e.g. on shutdown).
pub async fn nak(
    message: &jetstream::Message,
    delay: Option<std::time::Duration>,
) -> Result<(), BusError> {
    message
        .ack_with(AckKind::Nak(delay))
        .await
        .map_err(|e| BusError::js("nak", e))
}

/// Resets the ack timer of a long-running message.
pub async fn in_progress(message: &jetstream::Message) -> Result<(), BusError> {
    message
        .ack_with(AckKind::Progress)
        .await
        .map_err(|e| BusError::js("in-progress ack", e))
}

/// Pending and ack-pending counts of a consumer: the queue depth to scale on.
pub async fn depth(
    consumer: &mut jetstream::consumer::Consumer<pull::Config>,
) -> Result<(u64, usize), BusError> {
    let info = consumer
        .info()
        .await
        .map_err(|e| BusError::js("consumer info", e))?;
    Ok((info.num_pending, info.num_ack_pending))
}
