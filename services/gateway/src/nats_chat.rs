//! `llm.chat`: one core NATS request, one whole answer — so that
//! `nats req llm.chat '{"prompt":"hi"}'` and any NATS client's `request()`
//! just work.
//!
//! Every gateway replica queue-subscribes (group `triage-gateway`, so each
//! request is answered once). A message is a [`Request`] — JSON when its
//! `Content-Type` says so or it starts with `{`, MessagePack otherwise — and
//! is submitted like any other: on `llm.requests` through JetStream with the
//! ack awaited (durable), not streamed. Its single reply, in the request's
//! encoding, is the final [`Reply`]: the completion carrying the whole text,
//! or an error naming what went wrong.

use std::sync::Arc;

use async_nats::{HeaderMap, Message};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use triage_bus::BusError;
use triage_protocol::{decode, headers, Encoding, ErrorReply, Reply, Request};

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
    let subject = state.ns.chat();
    let mut sub = state
        .nats
        .queue_subscribe(subject.clone(), QUEUE_GROUP.into())
        .await
        .map_err(|e| BusError::Subscribe {
            subject: subject.clone(),
            detail: e.to_string(),
        })?;
    tracing::info!(%subject, "answering core NATS requests");
    Ok(tokio::spawn(async move {
        let open = tokio_util::task::TaskTracker::new();
        loop {
            let message = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => break },
                _ = shutdown.cancelled() => break,
            };
            let state = state.clone();
            open.spawn(async move { answer(&state, message).await });
        }
        let _ = sub.unsubscribe().await;
        open.close();
        open.wait().await;
    }))
}

/// A message turned into a request to submit, or the error to answer with.
pub fn prepare(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> (Encoding, Result<Request, ErrorReply>) {
    let content_type = headers
        .and_then(|h| h.get(headers::CONTENT_TYPE))
        .map(|v| v.as_str());
    let encoding = Encoding::sniff(content_type, payload);
    let request = decode::<Request>(encoding, payload)
        .map_err(|e| ErrorReply::new("", e.error_code(), e.to_string()))
        .map(|mut r| {
            // One whole answer: the worker sends no chunks, only the text.
            r.stream = false;
            r.ensure_id();
            r
        });
    (encoding, request)
}

async fn answer(state: &AppState, message: Message) {
    let Some(reply_to) = message.reply.clone() else {
        tracing::warn!("a message on llm.chat without a reply subject: use a request");
        count(state, "no_reply_subject");
        return;
    };
    let (encoding, prepared) = prepare(message.headers.as_ref(), &message.payload);
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
                        triage_protocol::ErrorCode::Internal,
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
    use triage_protocol::{encode, ErrorCode};

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
