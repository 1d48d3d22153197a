//! Telling the pipeline that an HTTP client went away, so the worker stops
//! generating for nobody: a guard armed while an answer is being relayed
//! publishes on `llm.cancel.<tenant>.<id>` if it is dropped before the
//! answer ended — which is what happens to a stream's body, or a whole
//! answer's handler, when the client disconnects.

use triage_protocol::{Namespace, RequestKey};

/// Publishes the request's cancel when dropped while armed.
pub struct CancelOnDrop {
    nats: async_nats::Client,
    subject: String,
    armed: bool,
}

impl CancelOnDrop {
    /// Armed for the request of `key`.
    pub fn new(nats: async_nats::Client, ns: &Namespace, key: RequestKey<'_>) -> Self {
        Self {
            nats,
            subject: ns.cancel(key),
            armed: true,
        }
    }

    /// The answer ended (or failed) on its own: nothing to cancel.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (nats, subject) = (self.nats.clone(), std::mem::take(&mut self.subject));
        tracing::info!(%subject, "the client went away: cancelling its generation");
        // Drop cannot wait; the runtime outlives the request.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = nats.publish(subject, bytes::Bytes::new()).await {
                    tracing::warn!(error = %e, "the cancel could not be published");
                }
                let _ = nats.flush().await;
            });
        }
    }
}
