//! The dead-letter stream: reading letters by sequence and re-driving them.

use async_nats::jetstream::{self, message::StreamMessage, stream::Stream};
use triage_bus::BusError;
use triage_protocol::{Namespace, StreamKind};

use crate::filter::Filter;
use crate::letter::{redrive_headers, Letter};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// NATS or JetStream failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// No message with this sequence (never, or deleted or re-driven).
    #[error("no dead letter with sequence {0} in {1}")]
    NotFound(u64, String),
    /// The letter has no `Triage-Dead-Subject`: nowhere to re-drive it.
    #[error("dead letter {0} has no Triage-Dead-Subject header: nowhere to re-drive it")]
    NoSubject(u64),
    /// The target is not one of the deployment's own subjects.
    #[error("dead letter {seq}: {subject:?} is not one of this deployment's subjects; refusing to re-drive there")]
    ForeignSubject {
        /// The letter.
        seq: u64,
        /// Its `Triage-Dead-Subject`.
        subject: String,
    },
}

/// The deployment's dead-letter stream.
pub struct DeadLetters {
    js: jetstream::Context,
    ns: Namespace,
    stream: Stream,
    name: String,
}

fn time_of(m: &StreamMessage) -> i64 {
    m.time.unix_timestamp()
}

impl DeadLetters {
    /// Opens `LLM_DEAD` of `ns`.
    pub async fn open(client: async_nats::Client, ns: Namespace) -> Result<Self, StoreError> {
        let js = jetstream::new(client);
        let name = ns.stream_name(StreamKind::Dead);
        let stream = js
            .get_stream(&name)
            .await
            .map_err(|e| BusError::js(format!("open stream {name}"), e))?;
        Ok(Self {
            js,
            ns,
            stream,
            name,
        })
    }

    /// The message at `seq`.
    pub async fn get(&self, seq: u64) -> Result<StreamMessage, StoreError> {
        self.stream
            .get_raw_message(seq)
            .await
            .map_err(|_| StoreError::NotFound(seq, self.name.clone()))
    }

    /// The letters `filter` selects, oldest first, at most `limit`.
    pub async fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<Letter>, StoreError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| BusError::js(format!("info of stream {}", self.name), e))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return Ok(out);
        }
        for seq in first..=last {
            if out.len() >= limit {
                break;
            }
            // Gaps are letters deleted or re-driven.
            let Ok(m) = self.stream.get_raw_message(seq).await else {
                continue;
            };
            let letter = Letter::read(seq, time_of(&m), &m.headers, m.payload.len());
            if filter.matches(&letter) {
                out.push(letter);
            }
        }
        Ok(out)
    }

    /// Publishes the letter at `seq` back to its `Triage-Dead-Subject`
    /// (waiting for JetStream's ack) with its original headers, then deletes
    /// it from the dead-letter stream, so it is re-driven once.
    pub async fn redrive(&self, seq: u64) -> Result<Letter, StoreError> {
        let m = self.get(seq).await?;
        let letter = Letter::read(seq, time_of(&m), &m.headers, m.payload.len());
        if letter.subject.is_empty() {
            return Err(StoreError::NoSubject(seq));
        }
        // Only back into the deployment's own llm.* subjects (never the
        // JetStream API, never llm.dead itself).
        let own = self.ns.is_internal(&letter.subject) && !letter.subject.starts_with('$');
        if !own || letter.subject == self.ns.dead() {
            return Err(StoreError::ForeignSubject {
                seq,
                subject: letter.subject,
            });
        }
        let h = redrive_headers(&m.headers);
        triage_bus::publish::durable(&self.js, "re-drive", &letter.subject, h, m.payload.clone())
            .await?;
        self.stream
            .delete_message(seq)
            .await
            .map_err(|e| BusError::js(format!("delete message {seq} of {}", self.name), e))?;
        Ok(letter)
    }
}
