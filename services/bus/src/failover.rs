//! Leaving a cluster node that cannot reach the streams. A node just
//! restarted can take longer than a retry budget to learn where the
//! streams are, and meanwhile answers every publish to them with "no
//! responders" ("no stream found for given subject") — while the client
//! stays happily connected to it. A durable write that sees that answer
//! calls [`suspect`]; this process's connection (the one [`crate::connect`]
//! made) then reconnects, at most once per [`PAUSE`], picking again from
//! its server list. On one server the reconnect is harmless.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Shortest time between two reconnects.
pub const PAUSE: Duration = Duration::from_secs(2);

struct Connection {
    client: async_nats::Client,
    last: Option<Instant>,
}

static CONNECTION: OnceLock<Mutex<Option<Connection>>> = OnceLock::new();

fn slot() -> &'static Mutex<Option<Connection>> {
    CONNECTION.get_or_init(|| Mutex::new(None))
}

/// Makes `client` the connection [`suspect`] reconnects (the latest one
/// connected in this process).
pub fn register(client: &async_nats::Client) {
    *slot().lock().unwrap_or_else(|e| e.into_inner()) = Some(Connection {
        client: client.clone(),
        last: None,
    });
}

/// Whether `error` (its text, sources included) is a publish that found no
/// stream behind its subject.
pub fn is_unreachable_stream(error: &str) -> bool {
    error.contains("no stream found for given subject") || error.contains("no responders")
}

/// Called with a failed durable write's error: when it says the streams
/// are out of reach from this node, the connection moves (rate-limited).
/// Returns whether a reconnect was asked for.
pub async fn suspect(error: &str) -> bool {
    if !is_unreachable_stream(error) {
        return false;
    }
    let client = {
        let mut guard = slot().lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = guard.as_mut() else {
            return false;
        };
        let now = Instant::now();
        if conn.last.is_some_and(|t| now.duration_since(t) < PAUSE) {
            return false;
        }
        conn.last = Some(now);
        conn.client.clone()
    };
    tracing::warn!(
        server = %client.server_info().host,
        "streams out of reach from this NATS server; reconnecting"
    );
    let _ = client.force_reconnect().await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_unreachable_streams_are_suspected() {
        assert!(is_unreachable_stream(
            "JetStream finished-ids put failed: ack error: no stream found for given subject"
        ));
        assert!(!is_unreachable_stream("maximum bytes exceeded"));
        // Nothing registered: nothing to do.
        assert!(!suspect("timed out").await);
    }
}
