//! `llm.chat`: one core NATS request, one whole answer — so that
//! `nats req llm.chat '{"prompt":"hi"}'` and any NATS client's `request()`
//! just work.
//!
//! Every gateway replica queue-subscribes (group `triage-gateway`, so each
//! request is answered once) to `llm.chat` and `llm.chat.<tenant>`; on the
//! latter the tenant is the subject's (deploy/nats lets each client user
//! publish only its own) and a body tenant that disagrees is refused, as the
//! router does for `llm.requests.<tenant>`. A message is a [`Request`] — JSON when its
//! `Content-Type` says so or it starts with `{`, MessagePack otherwise — and
//! is submitted like any other: on `llm.requests` through JetStream with the
//! ack awaited (durable), not streamed. Its single reply, in the request's
//! encoding, is the final [`Reply`]: the completion carrying the whole text,
//! or an error naming what went wrong.

use std::sync::Arc;

use async_nats::{HeaderMap, Message};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use triage_bus::BusError;
use triage_protocol::{
    decode, headers, Encoding, ErrorCode, ErrorReply, Namespace, Reply, Request,
};

use crate::metrics::NatsChatLabels;
use crate::server::AppState;

/// The queue group shared by every gateway replica.
pub const QUEUE_GROUP: &str = "triage-gateway";

/// Subscribes to `llm.chat` and answers until `shutdown`; open answers are
/// finished first.
pub async fn serve(
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let subscribe = |subject: String| {
        let nats = state.nats.clone();
        async move {
            nats.queue_subscribe(subject.clone(), QUEUE_GROUP.into())
                .await
                .map_err(|e| BusError::Subscribe {
                    subject,
                    detail: e.to_string(),
                })
        }
    };
    let plain = subscribe(state.ns.chat()).await?;
    let tenants = subscribe(format!("{}.*", state.ns.chat())).await?;
    let mut sub = futures::stream::select(plain, tenants);
    tracing::info!(subject = %state.ns.chat(), "answering core NATS requests (and on <subject>.<tenant>)");
    Ok(tokio::spawn(async move {
        let open = tokio_util::task::TaskTracker::new();
        loop {
            let message = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => break },
                _ = shutdown.cancelled() => break,
            };
            let state = state.clone();
            // A caller's `traceparent` header makes the answer part of its trace.
            let span = tracing::info_span!(
                "gateway.chat",
                trace_id = tracing::field::Empty,
                otel.kind = "server",
            );
            let headers = message.headers.clone().unwrap_or_default();
            triage_bus::trace::adopt_parent(&span, &headers);
            open.spawn(async move { answer(&state, message).await }.instrument(span));
        }
        drop(sub);
        open.close();
        open.wait().await;
    }))
}

/// A message on `subject` turned into a request to submit, or the error to
/// answer with.
pub fn prepare(
    ns: &Namespace,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> (Encoding, Result<Request, ErrorReply>) {
    let content_type = headers
        .and_then(|h| h.get(headers::CONTENT_TYPE))
        .map(|v| v.as_str());
    let encoding = Encoding::sniff(content_type, payload);
    let request = decode::<Request>(encoding, payload)
        .map_err(|e| ErrorReply::new("", e.error_code(), e.to_string()))
        .and_then(|mut r| {
            // One whole answer: the worker sends no chunks, only the text.
            r.stream = false;
            r.ensure_id();
            bind_tenant(ns, subject, &mut r)?;
            Ok(r)
        });
    (encoding, request)
}

/// The tenant of `llm.chat.<tenant>` is the request's; a body that names
/// another is refused. Plain `llm.chat` keeps the body's (only trusted users
/// may publish there under deploy/nats).
fn bind_tenant(ns: &Namespace, subject: &str, r: &mut Request) -> Result<(), ErrorReply> {
    let refuse = |message: String| ErrorReply::new(&r.id, ErrorCode::InvalidRequest, message);
    match ns.chat_tenant(subject) {
        Ok(None) => Ok(()),
        Ok(Some(tenant)) => match r.tenant.as_deref() {
            Some(body) if body != tenant => Err(refuse(format!(
                "field `tenant`: {body:?} disagrees with the subject's tenant {tenant:?}"
            ))),
            _ => {
                r.tenant = Some(tenant.to_string());
                Ok(())
            }
        },
        Err(e) => Err(refuse(e.to_string())),
    }
}

async fn answer(state: &AppState, message: Message) {
    let Some(reply_to) = message.reply.clone() else {
        tracing::warn!("a message on llm.chat without a reply subject: use a request");
        count(state, "no_reply_subject");
        return;
    };
    let (encoding, prepared) = prepare(
        &state.ns,
        &message.subject,
        message.headers.as_ref(),
        &message.payload,
    );
    let reply = match prepared {
        Err(e) => Reply::Error(e),
        Ok(mut request) => {
            let id = request.id.clone();
            let timeout = state.config.request_timeout;
            // Work not started within the gateway's timeout is dropped, as
            // for HTTP requests; a client's earlier deadline is kept.
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let latest = triage_protocol::now_ms().saturating_add(timeout_ms);
            request.deadline_ms = Some(request.deadline_ms.map_or(latest, |d| d.min(latest)));
            match state.client.ask(request, timeout).await {
                Ok(answer) => match answer.completion {
                    Some(mut c) => {
                        c.text = Some(answer.text);
                        Reply::Completion(c)
                    }
                    None => Reply::Error(ErrorReply::new(
                        &id,
                        ErrorCode::Internal,
                        "the answer ended without a completion",
                    )),
                },
                Err(e) => Reply::Error(e.to_reply(&id)),
            }
        }
    };
    count(
        state,
        match &reply {
            Reply::Error(e) => e.code.as_str(),
            _ => "ok",
        },
    );
    if let Err(e) = triage_bus::reply::send(&state.nats, reply_to.as_str(), encoding, &reply).await
    {
        tracing::warn!(error = %e, "the llm.chat answer could not be sent");
    }
}

fn count(state: &AppState, outcome: &str) {
    state
        .metrics
        .nats_chat
        .get_or_create(&NatsChatLabels {
            outcome: outcome.to_string(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_protocol::encode;

    fn prepare(
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> (Encoding, Result<Request, ErrorReply>) {
        super::prepare(&Namespace::default(), "llm.chat", headers, payload)
    }

    #[test]
    fn a_tenant_subject_binds_the_tenant() {
        let ns = Namespace::default();
        let (_, r) = super::prepare(&ns, "llm.chat.acme", None, br#"{"prompt":"hi"}"#);
        assert_eq!(r.unwrap().tenant.as_deref(), Some("acme"));
        let (_, r) = super::prepare(
            &ns,
            "llm.chat.acme",
            None,
            br#"{"prompt":"hi","tenant":"globex"}"#,
        );
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("globex"), "{}", e.message);
        let (_, r) = super::prepare(
            &ns,
            "llm.chat",
            None,
            br#"{"prompt":"hi","tenant":"globex"}"#,
        );
        assert_eq!(
            r.unwrap().tenant.as_deref(),
            Some("globex"),
            "plain: the body's"
        );
    }

    #[test]
    fn json_without_a_header_is_read_and_forced_whole() {
        let (encoding, r) = prepare(None, br#"{"prompt":"hi"}"#);
        assert_eq!(encoding, Encoding::Json);
        let r = r.unwrap();
        assert_eq!(r.prompt.as_deref(), Some("hi"));
        assert!(!r.stream, "one whole answer");
        assert!(!r.id.is_empty(), "an id is chosen");
    }

    #[test]
    fn msgpack_keeps_the_clients_id() {
        let mut request = Request::from_prompt("hi");
        request.id = "mine-1".into();
        let (encoding, r) = prepare(None, &encode(Encoding::MsgPack, &request));
        assert_eq!(encoding, Encoding::MsgPack);
        assert_eq!(r.unwrap().id, "mine-1");
    }

    #[test]
    fn a_bad_field_is_an_invalid_request_naming_it() {
        let (encoding, r) = prepare(None, br#"{"prompt":"hi","max_tokens":"many"}"#);
        assert_eq!(encoding, Encoding::Json);
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("max_tokens"), "{}", e.message);
    }
}
