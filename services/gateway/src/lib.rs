//! `triage-gateway`: an OpenAI-compatible HTTP front door to Triage.
//!
//! Each `POST /v1/chat/completions` or `POST /v1/completions` is checked and
//! translated ([`request`]), its model looked up ([`models`]: `triage-auto`
//! is routed, `triage-tier1`/`triage-tier2` force a tier), published on
//! `llm.requests` with the Rust client API (JetStream ack awaited) and a
//! reply subject of this instance's own (`_GW.<instance>.<n>`), and its
//! replies are relayed ([`relay`]: no spliced text after a restart) as
//! OpenAI objects or server-sent events ([`openai`]). Errors are OpenAI's
//! error bodies with the right status ([`error`]). [`server`] holds the
//! routes, [`health`] the readiness check, [`metrics`] the Prometheus
//! metrics. [`nats_chat`] answers core NATS requests on `llm.chat` whole.
//! [`auth`] checks API keys ([`api_key`]: the format, [`keys`]: the table),
//! rates and budgets, and gives each request its tenant. [`cancel`] stops
//! the generation of an answer whose client went away. [`feedback`] takes
//! `POST /v1/feedback`, clients' ratings of their answers, to the ledger.
//! [`trace_context`] makes each request's span a child of the caller's
//! `traceparent`.

pub mod api_key;
pub mod auth;
pub mod cancel;
pub mod config;
pub mod error;
pub mod feedback;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod models;
pub mod nats_chat;
pub mod openai;
pub mod prices;
pub mod relay;
pub mod request;
pub mod server;
pub mod trace_context;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use triage_bus::TriageClient;

pub use config::GatewayConfig;

use crate::metrics::GatewayMetrics;
use crate::models::Catalogue;
use crate::server::AppState;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A setting is unusable.
    #[error(transparent)]
    Config(#[from] config::InvalidConfig),
    /// NATS is unreachable.
    #[error(transparent)]
    Bus(#[from] triage_bus::BusError),
    /// Postgres (the API keys) is unusable.
    #[error("API keys need Postgres: {0}")]
    Keys(#[from] triage_ledger::StoreError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Keys checked against Postgres (the table migrated first), or off.
async fn authenticator(config: &GatewayConfig) -> Result<auth::Authenticator, GatewayError> {
    let store = if config.auth.keys {
        let store = config.database.store()?;
        store.migrate().await?;
        tracing::info!("API keys required on /v1/* (auth.keys = true)");
        Some(keys::KeyStore::new(store.pool().clone()))
    } else {
        tracing::warn!(
            "API keys are OFF: every request is accepted and booked without a tenant; \
             set auth.keys = true (TRIAGE_GATEWAY_AUTH__KEYS=true) outside local use"
        );
        None
    };
    Ok(auth::Authenticator::new(
        store,
        config.auth.cache_ttl,
        config.auth.spend_cache_ttl,
    ))
}

/// A gateway connected to NATS, not yet listening.
pub struct Gateway {
    state: Arc<AppState>,
}

/// A listening gateway.
pub struct Running {
    /// The bound API address (useful with port 0).
    pub addr: SocketAddr,
    /// The server task (HTTP and `llm.chat`); ends after `shutdown` fired
    /// and open answers finished.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    /// Checks `config`, connects to NATS and registers the metrics.
    pub async fn connect(
        config: GatewayConfig,
        registry: &mut Registry,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        let catalogue =
            Catalogue::new(&config.aliases).map_err(|e| config::InvalidConfig(e.to_string()))?;
        let ns = config.nats.namespace()?;
        let nats = triage_bus::connect(&config.nats).await?;
        let reply_prefix = config.instance_reply_prefix();
        tracing::info!(%reply_prefix, "answers arrive on {reply_prefix}.<n>");
        // The tenant comes from the API key the gateway checked, so it goes
        // in the body on plain llm.requests (see TriageClient::with_body_tenants).
        let client = TriageClient::new(nats.clone(), ns.clone())
            .with_reply_prefix(reply_prefix)
            .with_body_tenants();
        let auth = authenticator(&config).await?;
        let prices = prices::Prices::new(
            config
                .cost_usd
                .then(|| config.database.store())
                .transpose()?,
            config.prices_refresh,
        );
        let state = AppState {
            auth,
            prices,
            client,
            js: async_nats::jetstream::new(nats.clone()),
            nats,
            ns,
            catalogue,
            metrics: GatewayMetrics::register(registry),
            started: triage_protocol::now_ms() / 1000,
            config,
        };
        Ok(Self {
            state: Arc::new(state),
        })
    }

    /// Listens on the configured address until `shutdown` fires, then lets
    /// open answers finish.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<Running, GatewayError> {
        let addr = self.state.config.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let chat = if self.state.config.nats_chat {
            Some(nats_chat::serve(self.state.clone(), shutdown.clone()).await?)
        } else {
            None
        };
        let app = server::routes(self.state);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Some(chat) = chat {
                let _ = chat.await;
            }
            served
        });
        Ok(Running { addr, task })
    }
}
