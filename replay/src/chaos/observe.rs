//! The observer: one wildcard subscription on the run's reply prefix that
//! records every reply to every request, including any that arrives after
//! a request's first final reply (which a client would stop reading for),
//! so doubled answers are seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use triage_bus::envelope::header;
use triage_protocol::{headers, Encoding, Reply};

use super::verdict::Seen;

/// Replies by request id.
pub type SeenMap = Arc<Mutex<HashMap<String, Seen>>>;

/// A running observer.
pub struct Observer {
    seen: SeenMap,
    undecodable: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Subscribes to `<reply_prefix>.>` (registered with the server before
    /// this returns) and records what arrives until dropped.
    pub async fn start(
        client: &async_nats::Client,
        reply_prefix: &str,
    ) -> Result<Self, triage_bus::BusError> {
        let mut sub =
            triage_bus::connect::subscribe_synced(client, format!("{reply_prefix}.>")).await?;
        let seen: SeenMap = Arc::default();
        let undecodable = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (map, bad) = (seen.clone(), undecodable.clone());
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let encoding = Encoding::from_content_type(
                    m.headers
                        .as_ref()
                        .and_then(|h| header(h, headers::CONTENT_TYPE)),
                );
                match Reply::decode(encoding, &m.payload) {
                    Ok(reply) => {
                        let id = reply_id(&reply).to_string();
                        map.lock().unwrap().entry(id).or_default().record(&reply);
                    }
                    Err(_) => {
                        bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Self {
            seen,
            undecodable,
            task,
        })
    }

    /// The shared record.
    pub fn seen(&self) -> SeenMap {
        self.seen.clone()
    }

    /// Replies that could not be decoded.
    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many of `ids` have at least one final reply.
    pub fn with_final(&self, ids: &[String]) -> usize {
        let seen = self.seen.lock().unwrap();
        ids.iter()
            .filter(|id| seen.get(*id).is_some_and(|s| !s.finals.is_empty()))
            .count()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply_id(r: &Reply) -> &str {
    match r {
        Reply::Chunk(c) => &c.id,
        Reply::Completion(c) => &c.id,
        Reply::Error(e) => &e.id,
    }
}
