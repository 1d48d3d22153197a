//! Handling one delivered message, from decoding to the ack.
//!
//! Order of the durable steps (so a crash anywhere loses nothing and answers
//! nothing twice): final reply (and kept result, awaited) → usage event
//! (awaited, idempotent message id) → finished-ids record → ack. A crash
//! before the record means a redelivery generates again with a higher
//! attempt; after it, the redelivery is acked without generating.

use std::time::Instant;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use triage_bus::{consumer, Envelope};
use triage_protocol::{decode, ErrorCode, ErrorReply, Reply, RoutedRequest};

use crate::attempt::{base_from_headers, first_attempt};
use crate::generation::{Job, Outcome};
use crate::outbox::Outbox;
use crate::worker::Shared;

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Acked: answered, failed for good, escalated or a duplicate.
    Acked,
    /// Handed back for redelivery.
    Nakked,
}

/// Keeps a long-running message alive with in-progress acks until dropped.
struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    fn start(message: &jetstream::Message, every: std::time::Duration) -> Self {
        let message = message.clone();
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = consumer::in_progress(&message).await {
                    tracing::warn!(error = %e, "in-progress ack failed");
                }
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handles one message; `cancel` fires when the shutdown grace is over.
pub async fn handle(
    shared: &Shared,
    message: jetstream::Message,
    cancel: &CancellationToken,
) -> Disposition {
    let env = Envelope::of(&message);
    let span = tracing::info_span!(
        "request",
        tier = shared.tier.number(),
        id = tracing::field::Empty,
        delivery = env.deliveries,
        attempt = tracing::field::Empty,
    );
    triage_bus::trace::adopt_parent(&span, &env.headers);
    let in_flight = shared
        .metrics
        .in_flight
        .get_or_create(&shared.metrics.tier())
        .clone();
    in_flight.inc();
    let result = handle_inner(shared, &message, &env, cancel)
        .instrument(span)
        .await;
    in_flight.dec();
    let disposition = match result {
        Ok(Step::Ack(outcome)) => match consumer::ack_confirmed(&message).await {
            Ok(()) => {
                shared.metrics.outcome(outcome);
                Disposition::Acked
            }
            Err(e) => {
                // The work is durable; a redelivery finds the finished record.
                tracing::warn!(error = %e, "ack not confirmed");
                shared.metrics.outcome(outcome);
                Disposition::Acked
            }
        },
        Ok(Step::Nak) | Err(_) => {
            // Handed back on shutdown: at once, for another replica. After a
            // NATS failure: a little later, so a persistent fault does not
            // spin through the deliveries.
            let delay = result.is_err().then_some(std::time::Duration::from_secs(1));
            if let Err(e) = &result {
                tracing::warn!(error = %e, "publishing failed; handed back for a retry");
            }
            if let Err(e) = consumer::nak(&message, delay).await {
                tracing::warn!(error = %e, "nak failed; the message returns after the ack wait");
            }
            shared.metrics.outcome("handed_back");
            Disposition::Nakked
        }
    };
    disposition
}

enum Step {
    Ack(&'static str),
    Nak,
}

async fn handle_inner(
    shared: &Shared,
    message: &jetstream::Message,
    env: &Envelope,
    cancel: &CancellationToken,
) -> Result<Step, triage_bus::BusError> {
    let received_at = Instant::now();
    let _alive = KeepAlive::start(message, shared.config.consumer.progress_interval());
    let service = shared.service_name();

    let routed: RoutedRequest = match decode(env.encoding, &message.payload) {
        Ok(r) => r,
        Err(e) => {
            let code = match e {
                triage_protocol::DecodeError::UnsupportedVersion { .. } => {
                    ErrorCode::UnsupportedVersion
                }
                _ => ErrorCode::InvalidRequest,
            };
            tracing::warn!(error = %e, "undecodable routed request: dead-lettered");
            let outbox = shared.outbox(env, String::new(), None, false, &service);
            // Answer if the header names a usable reply subject.
            let reply_to = env
                .reply_hint
                .as_deref()
                .filter(|s| shared.config.reply_policy.check(&shared.ns, s).is_ok());
            if let Some(subject) = reply_to {
                let reply = Reply::Error(ErrorReply::new("", code, e.to_string()));
                let _ =
                    triage_bus::reply::send(&shared.client, subject, env.encoding, &reply).await;
            }
            shared.metrics.error(code);
            outbox
                .dead_letter(env, &message.payload, code, &e.to_string())
                .await?;
            return Ok(Step::Ack("invalid"));
        }
    };
    let request = &routed.request;
    tracing::Span::current().record("id", request.id.as_str());

    let reply_to = match env.reply_subject(
        request.reply_to.as_deref(),
        &shared.config.reply_policy,
        &shared.ns,
    ) {
        Ok(s) => Some(s),
        Err(e) if request.keep_result => {
            if request.reply_to.is_some() || env.reply_hint.is_some() {
                tracing::warn!(error = %e, "reply subject refused; the result is only kept");
            }
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "no usable reply subject: dead-lettered");
            let outbox = shared.outbox(env, request.id.clone(), None, false, &service);
            shared.metrics.error(ErrorCode::InvalidRequest);
            outbox
                .dead_letter(
                    env,
                    &message.payload,
                    ErrorCode::InvalidRequest,
                    &e.to_string(),
                )
                .await?;
            return Ok(Step::Ack("invalid"));
        }
    };
    let outbox = shared.outbox(
        env,
        request.id.clone(),
        reply_to,
        request.keep_result,
        &service,
    );

    // Answered before (a crash between the final answer and the ack), or
    // escalated before (a crash between the escalation and the ack)?
    let escalated = async {
        if shared.tier == triage_protocol::Tier::Small {
            shared.finished.escalated(&request.id).await
        } else {
            Ok(None)
        }
    };
    let (finished, escalated) = tokio::join!(shared.finished.get(&request.id), escalated);
    match finished.and_then(|f| escalated.map(|e| f.or(e))) {
        Ok(Some(note)) => {
            tracing::info!(%note, "already answered or escalated: acked without generating again");
            return Ok(Step::Ack("duplicate"));
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "finished-ids look-up failed; generating"),
    }

    if env.deliveries > u64::from(shared.config.consumer.max_deliveries) {
        let msg = format!(
            "delivered {} times without an answer (workers kept failing on it); the limit is {}",
            env.deliveries, shared.config.consumer.max_deliveries
        );
        fail_request(
            shared,
            &outbox,
            env,
            message,
            ErrorCode::MaxDeliveriesExceeded,
            msg,
            true,
        )
        .await?;
        return Ok(Step::Ack("error"));
    }
    if request.is_expired(triage_protocol::now_ms()) {
        fail_request(
            shared,
            &outbox,
            env,
            message,
            ErrorCode::DeadlineExceeded,
            "the deadline passed before the work could start".into(),
            false,
        )
        .await?;
        return Ok(Step::Ack("error"));
    }
    if request.n > 1 {
        let (code, msg) = if request.stream {
            (
                ErrorCode::UnsupportedNWithStream,
                "n > 1 cannot be streamed: ask for n = 1, or stream = false",
            )
        } else {
            (
                ErrorCode::InvalidRequest,
                "n > 1 is not supported: a completion carries one choice",
            )
        };
        fail_request(shared, &outbox, env, message, code, msg.into(), false).await?;
        return Ok(Step::Ack("error"));
    }
    if request
        .chat_messages()
        .iter()
        .all(|m| m.content.trim().is_empty())
    {
        fail_request(
            shared,
            &outbox,
            env,
            message,
            ErrorCode::EmptyPrompt,
            "the request has no prompt text".into(),
            false,
        )
        .await?;
        return Ok(Step::Ack("error"));
    }

    let job = Job {
        shared,
        routed: &routed,
        outbox: &outbox,
        first_attempt: first_attempt(base_from_headers(&env.headers), env.deliveries),
        received_at,
        cancel,
    };
    match job.generate().await {
        Outcome::Answered { completion, usage } => {
            let attempt = completion.attempt;
            outbox.finish(&Reply::Completion(*completion)).await?;
            outbox.usage(&usage).await?;
            record_finished(
                shared,
                &request.id,
                &format!("completed tier={} attempt={attempt}", shared.tier),
            )
            .await;
            Ok(Step::Ack("completed"))
        }
        Outcome::Failed {
            code,
            message: msg,
            dead_letter,
        } => {
            fail_request(shared, &outbox, env, message, code, msg, dead_letter).await?;
            Ok(Step::Ack("error"))
        }
        Outcome::Escalate {
            reason,
            attempt_base,
        } => {
            outbox.escalate(env, &routed, reason, attempt_base).await?;
            if let Err(e) = shared
                .finished
                .mark_escalated(&request.id, &format!("escalated {reason}"))
                .await
            {
                tracing::warn!(error = %e, "escalation record not written");
            }
            Ok(Step::Ack("escalated"))
        }
        Outcome::HandBack => Ok(Step::Nak),
    }
}

/// Final error: reply (and kept result), dead letter if asked, record.
async fn fail_request(
    shared: &Shared,
    outbox: &Outbox<'_>,
    env: &Envelope,
    message: &jetstream::Message,
    code: ErrorCode,
    reason: String,
    dead_letter: bool,
) -> Result<(), triage_bus::BusError> {
    tracing::warn!(%code, %reason, "request failed");
    shared.metrics.error(code);
    if dead_letter {
        outbox
            .dead_letter(env, &message.payload, code, &reason)
            .await?;
    }
    let reply = Reply::Error(ErrorReply::new(outbox.id.clone(), code, reason));
    outbox.finish(&reply).await?;
    record_finished(shared, &outbox.id, &format!("error code={code}")).await;
    Ok(())
}

async fn record_finished(shared: &Shared, id: &str, note: &str) {
    if let Err(e) = shared.finished.put(id, note).await {
        // The ack still follows: without it the request would be generated
        // again; the record only guards the window between answer and ack.
        tracing::warn!(error = %e, "finished-ids record not written");
    }
}
