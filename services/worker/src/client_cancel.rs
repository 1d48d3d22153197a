//! A client's "stop" for the request being generated: the gateway publishes
//! on `llm.cancel.<tenant>.<id>` when its HTTP client goes away, and the
//! worker generating that request stops the backend call, books what was
//! generated as `cancelled` and answers nothing more.
//!
//! Core NATS, not a stream: a cancel that comes while the request is still
//! queued (or after it finished) finds no listener and is dropped, so that
//! request is generated as usual — cancellation saves GPU time when it can,
//! it never loses a booking.

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use triage_protocol::{Namespace, RequestKey};

/// The reason booked on an attempt its client cancelled.
pub const CLIENT_CANCELLED: &str = "client_cancelled";

/// Listens for the cancel of one request while it is generated; stops
/// listening when dropped.
pub struct CancelWatch {
    /// Fired when the client cancelled.
    pub gone: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CancelWatch {
    /// Subscribes to the request's cancel subject. When NATS refuses the
    /// subscription the request is generated without one (logged): a cancel
    /// is an optimisation, not a guarantee.
    pub async fn start(client: &async_nats::Client, ns: &Namespace, key: RequestKey<'_>) -> Self {
        let gone = CancellationToken::new();
        let subject = ns.cancel(key);
        let task = match client.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                let token = gone.clone();
                Some(tokio::spawn(async move {
                    if sub.next().await.is_some() {
                        tracing::info!(%subject, "the client cancelled: stopping the generation");
                        token.cancel();
                    }
                }))
            }
            Err(e) => {
                tracing::warn!(error = %e, %subject, "no cancel subscription: generating regardless");
                None
            }
        };
        Self { gone, task }
    }
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
