//! Queue health from JetStream: how many messages each Triage stream holds
//! and how far behind each consumer is. For the work-queue streams
//! (`llm.requests`, `llm.tier1`, `llm.tier2`) the message count is the
//! queue depth: messages leave them when acked.

use async_nats::jetstream;
use futures::TryStreamExt;
use triage_protocol::{Namespace, StreamKind};

/// One stream's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStat {
    /// The stream's name (with the deployment prefix).
    pub stream: String,
    /// The stream's subject, e.g. `llm.tier1` (with the prefix).
    pub subject: String,
    /// Whether it is a work queue (its message count is a queue depth).
    pub work_queue: bool,
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Sequence of the last message ever stored (only grows).
    pub last_sequence: u64,
    /// The stream's `max_msgs`; -1 (or 0) means none.
    pub max_messages: i64,
    /// The stream's `max_bytes`; -1 (or 0) means none.
    pub max_bytes: i64,
}

impl StreamStat {
    /// How full the stream is, 0 to 1: the larger of messages / `max_msgs`
    /// and bytes / `max_bytes`; `None` when it has neither limit. At 1 a
    /// work queue or `llm.usage` refuses new messages (`queue_full`).
    pub fn fill_ratio(&self) -> Option<f64> {
        let share = |held: u64, limit: i64| (limit > 0).then(|| held as f64 / limit as f64);
        match (
            share(self.messages, self.max_messages),
            share(self.bytes, self.max_bytes),
        ) {
            (Some(m), Some(b)) => Some(m.max(b)),
            (m, b) => m.or(b),
        }
    }
}

/// One consumer's backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStat {
    /// The stream it reads.
    pub stream: String,
    /// The consumer's name.
    pub consumer: String,
    /// Messages not yet delivered to it.
    pub pending: u64,
    /// Delivered, not yet acked.
    pub ack_pending: u64,
    /// Delivered more than once and not yet acked.
    pub redelivered: u64,
}

/// Every Triage stream and consumer of one deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Streams that exist.
    pub streams: Vec<StreamStat>,
    /// Their durable consumers.
    pub consumers: Vec<ConsumerStat>,
}

/// Reads the stats of the namespace's streams; a stream that does not
/// exist (yet) is left out.
pub async fn read(js: &jetstream::Context, ns: &Namespace) -> Result<QueueStats, String> {
    let mut stats = QueueStats::default();
    for kind in StreamKind::ALL {
        let name = ns.stream_name(kind);
        let mut stream = match js.get_stream(&name).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("stream {name}: {e}")),
        };
        let info = stream
            .info()
            .await
            .map_err(|e| format!("stream {name} info: {e}"))?;
        stats.streams.push(StreamStat {
            stream: name.clone(),
            subject: ns.stream_subject(kind),
            work_queue: kind.is_work_queue(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            last_sequence: info.state.last_sequence,
            max_messages: info.config.max_messages,
            max_bytes: info.config.max_bytes,
        });
        let consumers: Vec<jetstream::consumer::Info> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|e| format!("consumers of {name}: {e}"))?;
        for c in consumers {
            stats.consumers.push(ConsumerStat {
                stream: name.clone(),
                consumer: c.name,
                pending: c.num_pending,
                ack_pending: c.num_ack_pending as u64,
                redelivered: c.num_redelivered as u64,
            });
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(messages: u64, bytes: u64, max_messages: i64, max_bytes: i64) -> StreamStat {
        StreamStat {
            stream: "LLM_REQUESTS".into(),
            subject: "llm.requests".into(),
            work_queue: true,
            messages,
            bytes,
            last_sequence: messages,
            max_messages,
            max_bytes,
        }
    }

    #[test]
    fn the_fill_ratio_is_the_nearer_limit() {
        assert_eq!(stat(50, 10, 100, 1000).fill_ratio(), Some(0.5));
        assert_eq!(stat(5, 900, 100, 1000).fill_ratio(), Some(0.9));
        assert_eq!(stat(5, 900, -1, 1000).fill_ratio(), Some(0.9));
        assert_eq!(stat(25, 900, 100, -1).fill_ratio(), Some(0.25));
        assert_eq!(stat(5, 900, -1, -1).fill_ratio(), None);
        assert_eq!(stat(5, 900, 0, 0).fill_ratio(), None);
    }
}
