//! Connecting to NATS.

use crate::{BusError, NatsConfig};

/// Connects with the configured credentials. Retries the initial connection
/// so a service started before NATS waits for it instead of exiting.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, BusError> {
    let mut options = async_nats::ConnectOptions::new().retry_on_initial_connect();
    if let Some(name) = &config.name {
        options = options.name(name);
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(prefix) = &config.inbox_prefix {
        let concrete = prefix
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace));
        if !concrete {
            return Err(BusError::Config(format!(
                "nats.inbox_prefix {prefix:?} must be dot-separated tokens without wildcards or spaces"
            )));
        }
        options = options.custom_inbox_prefix(prefix);
    }
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| BusError::Config(format!("cannot read creds file {path}: {e}")))?;
    }
    let urls: Vec<async_nats::ServerAddr> = config
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            BusError::Config(format!("invalid NATS URL {:?}: {e}", mask_url(&config.url)))
        })?;
    // retry_on_initial_connect returns at once; wait for the first connection
    // so callers fail loudly on a wrong URL rather than hanging later.
    let client = options
        .connect(urls)
        .await
        .map_err(|source| BusError::Connect {
            url: mask_url(&config.url),
            source,
        })?;
    crate::failover::register(&client);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(BusError::Config(format!(
                "no connection to NATS at {} after 30 s",
                mask_url(&config.url)
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(client)
}

/// The URL (list) with every credential masked: the one masking function,
/// re-exported for the bus's callers.
pub use triage_runtime::mask_url;

/// Subscribes and returns only once the server has registered the interest.
///
/// async-nats's `flush` only writes the socket, so a message published right
/// after it on *another* connection can reach the server before this `SUB`
/// does and is never seen. A request on the same connection is a round trip
/// the server answers in order (the JetStream API's account info: any answer,
/// even an error, proves the earlier `SUB` was processed).
pub async fn subscribe_synced(
    client: &async_nats::Client,
    subject: String,
) -> Result<async_nats::Subscriber, BusError> {
    let sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| BusError::Subscribe {
            subject: subject.clone(),
            detail: e.to_string(),
        })?;
    let round_trip = client.request("$JS.API.INFO", bytes::Bytes::new());
    match tokio::time::timeout(std::time::Duration::from_secs(10), round_trip).await {
        Ok(_) => Ok(sub),
        Err(_) => Err(BusError::Subscribe {
            subject,
            detail: "no answer from the server within 10 s".into(),
        }),
    }
}

/// Readiness of NATS for a service: connected, and each of `streams` answers
/// its info request (so JetStream is up and the streams are provisioned).
/// The `Err` names what is missing, for `/health/ready`.
pub async fn streams_ready(client: &async_nats::Client, streams: &[String]) -> Result<(), String> {
    if client.connection_state() != async_nats::connection::State::Connected {
        return Err(format!("not connected ({:?})", client.connection_state()));
    }
    let js = async_nats::jetstream::new(client.clone());
    for name in streams {
        js.get_stream(name)
            .await
            .map_err(|e| format!("stream {name}: {e}"))?;
    }
    Ok(())
}

/// A readiness check's future (`triage_runtime::Readiness::check`).
pub type CheckFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// [`streams_ready`] as a readiness check: `Readiness::check("nats", …)`.
pub fn streams_check(
    client: async_nats::Client,
    streams: Vec<String>,
) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    move || {
        let (client, streams) = (client.clone(), streams.clone());
        Box::pin(async move { streams_ready(&client, &streams).await })
    }
}
