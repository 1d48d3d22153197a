//! The Rust client API: submit a request, read its chunks, then a
//! completion or an error. Tests, replay and the demo all use it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use triage_protocol::{
    encode, headers, Completion, DecodeError, Encoding, ErrorReply, Namespace, Reply, Request,
};

use crate::envelope::header;

/// Why an answer could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Publishing the request failed (NATS down, stream missing).
    #[error("could not submit request {id}: {detail}")]
    Submit {
        /// The request id.
        id: String,
        /// The cause.
        detail: String,
    },
    /// No final message within the timeout.
    #[error("no answer to request {id} within {timeout:?}")]
    Timeout {
        /// The request id.
        id: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A reply could not be decoded.
    #[error("undecodable reply to request {id}: {source}")]
    Decode {
        /// The request id.
        id: String,
        /// The cause.
        source: DecodeError,
    },
    /// Triage answered with an error.
    #[error("request {}: {} ({})", .0.id, .0.message, .0.code)]
    Reply(ErrorReply),
    /// A request with this id was accepted moments ago (within the stream's
    /// duplicate window) and this one was dropped: its answer goes to the
    /// first submission. Ids are idempotency keys; a new request needs a new id.
    #[error(
        "duplicate_request: request {id} was already accepted (the stream de-duplicated this \
         submission by its id); its answer goes to the first submission — send a new request \
         with a new id, or keep_result to fetch a result later"
    )]
    Duplicate {
        /// The request id.
        id: String,
    },
    /// The subscription ended before a final message.
    #[error("reply subscription for {0} closed before a final message")]
    Closed(String),
}

/// A handle on Triage for clients.
#[derive(Clone)]
pub struct TriageClient {
    client: async_nats::Client,
    js: jetstream::Context,
    ns: Namespace,
    encoding: Encoding,
    reply_prefix: Option<Arc<ReplyPrefix>>,
}

/// A reply-subject prefix of the client's own and the counter that makes
/// each request's subject under it unique.
struct ReplyPrefix {
    prefix: String,
    next: AtomicU64,
}

impl TriageClient {
    /// A client on an existing connection, speaking MessagePack.
    pub fn new(client: async_nats::Client, ns: Namespace) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            client,
            js,
            ns,
            encoding: Encoding::MsgPack,
            reply_prefix: None,
        }
    }

    /// Receives answers on `<prefix>.<n>` (n counting from 1) instead of the
    /// connection's shared `_INBOX.`, so a service (the HTTP gateway) can be
    /// given NATS permissions for its own reply subjects only. The prefix must
    /// be one the workers' reply policy allows.
    pub fn with_reply_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.reply_prefix = Some(Arc::new(ReplyPrefix {
            prefix: prefix.into(),
            next: AtomicU64::new(1),
        }));
        self
    }

    fn reply_subject(&self) -> String {
        match &self.reply_prefix {
            Some(p) => format!("{}.{}", p.prefix, p.next.fetch_add(1, Ordering::Relaxed)),
            None => self.client.new_inbox(),
        }
    }

    /// Uses `encoding` for requests (answers come back in the same).
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The namespace requests are published in.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The subject `request` goes to: `llm.requests.<tenant>` when it names
    /// a tenant (the router binds the tenant to that subject, and NATS
    /// permissions bind the subject to a user), else plain `llm.requests`.
    pub fn request_subject(&self, request: &Request) -> Result<String, ClientError> {
        match &request.tenant {
            None => Ok(self.ns.requests()),
            Some(tenant) => self
                .ns
                .tenant_requests(tenant)
                .map_err(|e| ClientError::Submit {
                    id: request.id.clone(),
                    detail: format!("field `tenant`: {e}"),
                }),
        }
    }

    /// Publishes `request` on its [request subject](Self::request_subject)
    /// (waiting for JetStream's ack: once this returns, the request is
    /// durable) and returns the stream of its replies. `timeout` bounds the
    /// whole answer.
    pub async fn submit(
        &self,
        mut request: Request,
        timeout: Duration,
    ) -> Result<ReplyStream, ClientError> {
        request.ensure_id();
        if request.submitted_at_ms.is_none() {
            request.submitted_at_ms = Some(triage_protocol::now_ms());
        }
        let id = request.id.clone();
        let subject = self.request_subject(&request)?;
        let inbox = self.reply_subject();
        let subscriber =
            self.client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| ClientError::Submit {
                    id: id.clone(),
                    detail: e.to_string(),
                })?;
        request.reply_to = Some(inbox.clone());
        let mut h = crate::envelope::outgoing(self.encoding, Some(&id));
        h.insert(headers::REPLY_TO, inbox.as_str());
        // One try: the application owns its retry policy (and its deadline).
        let payload = encode(self.encoding, &request).into();
        let ack = crate::publish::acked(&self.js, &subject, h, payload)
            .await
            .map_err(|e| ClientError::Submit {
                id: id.clone(),
                detail: e.to_string(),
            })?;
        if ack.duplicate {
            // The stream kept the first request with this id (its
            // `Nats-Msg-Id`) and dropped this one: no answer would come.
            return Err(ClientError::Duplicate { id });
        }
        Ok(ReplyStream {
            id,
            subscriber,
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
            finished: false,
        })
    }

    /// Submits and waits for the whole answer.
    pub async fn ask(&self, request: Request, timeout: Duration) -> Result<Answer, ClientError> {
        self.submit(request, timeout).await?.collect().await
    }
}

/// The replies to one request, in order.
pub struct ReplyStream {
    id: String,
    subscriber: async_nats::Subscriber,
    deadline: tokio::time::Instant,
    timeout: Duration,
    finished: bool,
}

impl ReplyStream {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next reply; `None` after the final one.
    pub async fn next(&mut self) -> Option<Result<Reply, ClientError>> {
        if self.finished {
            return None;
        }
        let message = match tokio::time::timeout_at(self.deadline, self.subscriber.next()).await {
            Err(_) => {
                self.finished = true;
                return Some(Err(ClientError::Timeout {
                    id: self.id.clone(),
                    timeout: self.timeout,
                }));
            }
            Ok(None) => {
                self.finished = true;
                return Some(Err(ClientError::Closed(self.id.clone())));
            }
            Ok(Some(m)) => m,
        };
        let encoding = Encoding::from_content_type(
            message
                .headers
                .as_ref()
                .and_then(|h| header(h, headers::CONTENT_TYPE)),
        );
        let reply =
            Reply::decode(encoding, &message.payload).map_err(|source| ClientError::Decode {
                id: self.id.clone(),
                source,
            });
        if reply.as_ref().map_or(true, Reply::is_final) {
            self.finished = true;
        }
        Some(reply)
    }

    /// Reads to the end, assembling the text. A chunk of a later attempt
    /// discards the text of earlier ones, as the protocol says.
    pub async fn collect(mut self) -> Result<Answer, ClientError> {
        let mut answer = Answer::default();
        let mut attempt = 0;
        while let Some(reply) = self.next().await {
            match reply? {
                Reply::Chunk(c) => {
                    if c.attempt > attempt {
                        attempt = c.attempt;
                        answer.text.clear();
                        answer.restarts += u32::from(answer.chunks > 0);
                        answer.chunks = 0;
                    }
                    if c.attempt == attempt {
                        answer.text.push_str(&c.delta);
                        answer.chunks += 1;
                        if answer.first_chunk_at.is_none() {
                            answer.first_chunk_at = Some(tokio::time::Instant::now());
                        }
                    }
                }
                Reply::Completion(c) => {
                    if let Some(text) = &c.text {
                        if answer.chunks == 0 || c.attempt != attempt {
                            answer.text = text.clone();
                        }
                    }
                    answer.completion = Some(c);
                    return Ok(answer);
                }
                Reply::Error(e) => return Err(ClientError::Reply(e)),
            }
        }
        Err(ClientError::Closed(self.id.clone()))
    }
}

/// A whole answer.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    /// The generated text of the final attempt.
    pub text: String,
    /// Chunks received in the final attempt.
    pub chunks: u32,
    /// How many times the stream restarted with a new attempt.
    pub restarts: u32,
    /// When the first chunk arrived.
    pub first_chunk_at: Option<tokio::time::Instant>,
    /// The completion message.
    pub completion: Option<Completion>,
}
