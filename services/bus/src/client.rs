//! The Rust client API: submit a request, read its chunks, then a
//! completion or an error. Tests, replay and the demo all use it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tracing::Instrument;
use triage_protocol::{
    encode, headers, AnswerCheck, AnswerText, ChunkVerdict, Completion, DecodeError, Encoding,
    ErrorReply, IncompleteAnswer, Namespace, Reply, Request,
};

use crate::envelope::header;
use crate::BusError;

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
    /// `llm.requests` is at its configured limit and refused the request
    /// (nothing it holds was dropped to make room): retry later.
    #[error(
        "queue_full: request {id} was not accepted, the request queue is full ({detail}); \
         retry later"
    )]
    QueueFull {
        /// The request id.
        id: String,
        /// The server's reason.
        detail: String,
    },
    /// Chunks were lost or repeated, or the completion disagrees with what
    /// arrived: the text would be wrong, so there is none.
    #[error(
        "stream_incomplete: the answer to request {id} did not arrive whole ({detail}); \
         send the request again"
    )]
    Incomplete {
        /// The request id.
        id: String,
        /// What was wrong.
        detail: IncompleteAnswer,
    },
    /// The subscription ended before a final message.
    #[error("reply subscription for {0} closed before a final message")]
    Closed(String),
}

impl ClientError {
    /// The protocol's code for this failure: the one mapping for callers
    /// that answer in the protocol's own terms (the `llm.chat` door).
    pub fn code(&self) -> triage_protocol::ErrorCode {
        use triage_protocol::ErrorCode;
        match self {
            ClientError::Reply(e) => e.code,
            ClientError::Submit { .. } | ClientError::Closed(_) => ErrorCode::BackendUnavailable,
            ClientError::Timeout { .. } => ErrorCode::DeadlineExceeded,
            ClientError::Duplicate { .. } => ErrorCode::DuplicateRequest,
            ClientError::QueueFull { .. } => ErrorCode::QueueFull,
            // Lost chunks are Triage's fault, not the request's.
            ClientError::Decode { .. } | ClientError::Incomplete { .. } => ErrorCode::Internal,
        }
    }

    /// This failure as the final error reply of request `id`.
    pub fn to_reply(&self, id: &str) -> ErrorReply {
        match self {
            ClientError::Reply(e) => e.clone(),
            other => ErrorReply::new(id, other.code(), other.to_string()),
        }
    }
}

/// A handle on Triage for clients.
#[derive(Clone)]
pub struct TriageClient {
    client: async_nats::Client,
    js: jetstream::Context,
    ns: Namespace,
    encoding: Encoding,
    reply_prefix: Option<Arc<ReplyPrefix>>,
    /// Publish on plain `llm.requests` whatever the tenant (a trusted
    /// publisher that set the tenant from its own identity check).
    untenanted: bool,
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
            untenanted: false,
        }
    }

    /// Publishes every request on plain `llm.requests`, its `tenant` in the
    /// body: for the gateway, which sets the tenant from an API key it
    /// checked itself. Under deploy/nats only trusted users may publish
    /// there, and the router's `tier_override_untenanted` grants them the
    /// choice of tier (the gateway's forced models).
    pub fn with_body_tenants(mut self) -> Self {
        self.untenanted = true;
        self
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
            _ if self.untenanted => Ok(self.ns.requests()),
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
        // The request's first span, whose trace router, worker and ledger
        // join (a child of the caller's span when there is one).
        let span = tracing::info_span!(
            "submit",
            request_id = %request.id,
            trace_id = tracing::field::Empty,
            otel.kind = "producer",
        );
        triage_runtime::telemetry::record_trace_id(&span);
        self.publish(request, timeout).instrument(span).await
    }

    /// [`submit`](Self::submit) inside the request's span.
    async fn publish(
        &self,
        mut request: Request,
        timeout: Duration,
    ) -> Result<ReplyStream, ClientError> {
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
        // De-duplicated per tenant: two tenants may use the same id.
        let msg_id = triage_protocol::RequestKey::of(&request).msg_id("request");
        let mut h = crate::envelope::outgoing(self.encoding, Some(&msg_id));
        h.insert(headers::REPLY_TO, inbox.as_str());
        // One try: the application owns its retry policy (and its deadline).
        let payload = encode(self.encoding, &request).into();
        let ack = crate::publish::acked(&self.js, &subject, h, payload)
            .await
            .map_err(|e| match e {
                BusError::QueueFull { detail, .. } => ClientError::QueueFull {
                    id: id.clone(),
                    detail,
                },
                e => ClientError::Submit {
                    id: id.clone(),
                    detail: e.to_string(),
                },
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
    /// discards the text of earlier ones, as the protocol says; a lost or
    /// repeated chunk, or a completion that disagrees with the chunks that
    /// arrived ([`AnswerCheck`]), fails the request instead of returning
    /// wrong text.
    pub async fn collect(mut self) -> Result<Answer, ClientError> {
        let mut answer = Answer::default();
        let mut check = AnswerCheck::default();
        while let Some(reply) = self.next().await {
            let checked = match reply? {
                Reply::Chunk(c) => check.chunk(&c).map(|verdict| {
                    if let ChunkVerdict::Append { restarted } = verdict {
                        answer.append(&c.delta, restarted);
                    }
                }),
                Reply::Completion(c) => {
                    let source = check.completion(&c).map_err(|e| self.incomplete(e))?;
                    if source == AnswerText::InCompletion {
                        answer.replace(c.text.clone().unwrap_or_default());
                    }
                    answer.completion = Some(c);
                    return Ok(answer);
                }
                Reply::Error(e) => return Err(ClientError::Reply(e)),
            };
            checked.map_err(|e| self.incomplete(e))?;
        }
        Err(ClientError::Closed(self.id.clone()))
    }

    fn incomplete(&self, detail: IncompleteAnswer) -> ClientError {
        ClientError::Incomplete {
            id: self.id.clone(),
            detail,
        }
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

impl Answer {
    /// The completion's text is the answer; chunks of other attempts are void.
    fn replace(&mut self, text: String) {
        self.restarts += u32::from(self.chunks > 0);
        self.chunks = 0;
        self.text = text;
    }

    /// Adds a checked chunk's text; `restarted` voids the text before it.
    fn append(&mut self, delta: &str, restarted: bool) {
        if restarted {
            self.text.clear();
            self.restarts += 1;
            self.chunks = 0;
        }
        self.text.push_str(delta);
        self.chunks += 1;
        if self.first_chunk_at.is_none() {
            self.first_chunk_at = Some(tokio::time::Instant::now());
        }
    }
}
