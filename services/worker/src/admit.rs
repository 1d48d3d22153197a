//! The admit stage: everything decided about a delivered message before any
//! GPU time is spent. Decode it, find its reply subject, look it up in the
//! finished-ids record, and check the delivery count, the deadline, `n` and
//! the prompt. The result is an [`Admission`]: generate, or what to deliver
//! instead.

use triage_bus::{BusError, Envelope};
use triage_protocol::{
    decode, ErrorCode, Namespace, ReplyPolicy, Request, RequestKey, RoutedRequest, Tier,
};

use crate::attempt::{base_from_headers, first_attempt};
use crate::failure::Failure;
use crate::finished::{fingerprint, recorded_fingerprint, EscalationNote, FinishedIds};
use crate::progress::{Progress, ProgressLog};

/// What the admit stage needs.
pub struct Admitter {
    /// The tier served (tier 1 also looks up escalation records).
    pub tier: Tier,
    /// The deployment's names (reply subjects are checked against them).
    pub ns: Namespace,
    /// Which reply subjects may be answered.
    pub reply_policy: ReplyPolicy,
    /// Deliveries after which a request is given up.
    pub max_deliveries: u32,
    /// Requests already answered or escalated.
    pub finished: FinishedIds,
    /// Progress records of attempts whose worker may have died.
    pub progress: ProgressLog,
}

/// A decoded request and where it may be answered.
#[derive(Debug)]
pub struct Decoded {
    /// The request as routed.
    pub routed: RoutedRequest,
    /// The checked reply subject; `None` only for a kept result.
    pub reply_to: Option<String>,
    /// An earlier delivery's attempt that never ended (its worker died):
    /// to be booked before anything else happens to the request.
    pub interrupted: Option<Progress>,
}

/// A message that cannot be handled as a request: dead-lettered (and the
/// client told, when a usable reply subject is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `invalid_request` or `unsupported_version`.
    pub code: ErrorCode,
    /// Why.
    pub reason: String,
    /// Where to send the error reply, if anywhere.
    pub tell: Option<String>,
}

/// What becomes of a delivered message before generation.
#[derive(Debug)]
pub enum Admission {
    /// Generate an answer, numbering attempts from `first_attempt`.
    Admitted {
        /// The request.
        request: Decoded,
        /// The first attempt number of this delivery.
        first_attempt: u32,
    },
    /// Answered or escalated before, and this is a redelivery of that same
    /// message (a crash before its ack): ack without generating again.
    Duplicate,
    /// Tier 1 recorded that it was escalating this message, and crashed
    /// before confirming the copy for tier 2: publish the same copy again
    /// (de-duplicated by its message id), generate nothing.
    Escalating {
        /// The request.
        request: Decoded,
        /// The write-ahead record.
        note: EscalationNote,
    },
    /// Answered or escalated before, and this is a new message reusing the
    /// id: tell its sender what became of the first one, generate nothing.
    Repeat {
        /// The new request.
        request: Decoded,
        /// The finished record of the first one.
        note: String,
    },
    /// Refused before any backend call: an error reply.
    Refused {
        /// The request.
        request: Decoded,
        /// The error.
        failure: Failure,
    },
    /// Not a usable request.
    Invalid(Invalid),
    /// The finished-ids look-up of a first delivery failed (a NATS node
    /// failing over): hand the message back for a later look-up rather than
    /// risk answering a request that was answered already. A redelivery
    /// whose look-up fails again generates: answering twice beats not
    /// answering.
    Unsure(BusError),
}

impl Admitter {
    /// Decides what to do with one delivery of `payload`.
    pub async fn admit(&self, env: &Envelope, payload: &[u8]) -> Admission {
        let routed: RoutedRequest = match decode(env.encoding, payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable routed request: dead-lettered");
                // Answer if the header names a usable reply subject.
                let tell = env
                    .reply_hint
                    .clone()
                    .filter(|s| self.reply_policy.check(&self.ns, s).is_ok());
                return Admission::Invalid(Invalid {
                    code: e.error_code(),
                    reason: e.to_string(),
                    tell,
                });
            }
        };
        tracing::Span::current().record("id", routed.request.id.as_str());
        let request = match self.reply_subject(env, routed) {
            Ok(request) => request,
            Err(invalid) => return Admission::Invalid(invalid),
        };
        let key = RequestKey::of(&request.routed.request);
        let first_attempt = first_attempt(base_from_headers(&env.headers), env.deliveries);
        let (before, interrupted) = tokio::join!(
            self.answered_before(key),
            self.interrupted(key, env.deliveries, first_attempt)
        );
        let before = match before {
            Ok(before) => before,
            Err(e) if env.deliveries <= 1 => return Admission::Unsure(e),
            Err(e) => {
                tracing::warn!(error = %e, "finished-ids look-up failed again; generating");
                None
            }
        };
        if let Some(note) = before {
            // A first delivery of a finished id is a new publish: the same
            // request again (a router or client retry that a failover kept
            // from being de-duplicated) is acked like a redelivery; another
            // request reusing the id gets an answer.
            let fp = fingerprint(&request.routed.request, request.reply_to.as_deref());
            if env.deliveries <= 1 && recorded_fingerprint(&note) != Some(fp.as_str()) {
                return Admission::Repeat { request, note };
            }
            return match EscalationNote::parse(&note) {
                Some(note) if !note.published => Admission::Escalating { request, note },
                _ => Admission::Duplicate,
            };
        }
        let request = Decoded {
            interrupted,
            ..request
        };
        let refused = refusal(&request.routed.request, env.deliveries, self.max_deliveries);
        if let Some(failure) = refused {
            return Admission::Refused { request, failure };
        }
        Admission::Admitted {
            request,
            first_attempt,
        }
    }

    /// On a redelivery: the progress record of an earlier delivery's
    /// attempt, if its worker died before booking it. A failed look-up
    /// books nothing (logged): the request itself matters more.
    async fn interrupted(
        &self,
        key: RequestKey<'_>,
        deliveries: u64,
        first_attempt: u32,
    ) -> Option<Progress> {
        if deliveries <= 1 {
            return None;
        }
        match self.progress.get(key).await {
            Ok(record) => record.filter(|p| p.attempt < first_attempt),
            Err(e) => {
                tracing::warn!(error = %e, "progress look-up failed; an interrupted attempt may go unbooked");
                None
            }
        }
    }

    /// The request's own `reply_to` or the header, checked; a kept result
    /// may do without.
    fn reply_subject(&self, env: &Envelope, routed: RoutedRequest) -> Result<Decoded, Invalid> {
        let request = &routed.request;
        let reply_to = match env.reply_subject(
            request.reply_to.as_deref(),
            &self.reply_policy,
            &self.ns,
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
                return Err(Invalid {
                    code: ErrorCode::InvalidRequest,
                    reason: e.to_string(),
                    tell: None,
                });
            }
        };
        Ok(Decoded {
            routed,
            reply_to,
            interrupted: None,
        })
    }

    /// Answered before (a crash between the final answer and the ack), or
    /// escalated before (a crash between the escalation and the ack)?
    /// Returns the record's note.
    async fn answered_before(&self, key: RequestKey<'_>) -> Result<Option<String>, BusError> {
        let escalated = async {
            if self.tier == Tier::Small {
                self.finished.escalated(key).await
            } else {
                Ok(None)
            }
        };
        let (finished, escalated) = tokio::join!(self.finished.get(key), escalated);
        let note = finished.and_then(|f| escalated.map(|e| f.or(e)))?;
        if let Some(note) = &note {
            tracing::info!(%note, "already answered or escalated: not generated again");
        }
        Ok(note)
    }
}

/// Why `request` (on delivery `deliveries`) is refused without calling a
/// backend, if it is. The order matters: a request that keeps failing is
/// given up on before anything else is said about it.
fn refusal(request: &Request, deliveries: u64, max_deliveries: u32) -> Option<Failure> {
    if deliveries > u64::from(max_deliveries) {
        let msg = format!(
            "delivered {deliveries} times without an answer (workers kept failing on it); the limit is {max_deliveries}"
        );
        return Some(Failure::dead(ErrorCode::MaxDeliveriesExceeded, msg));
    }
    // Publishers straight to a tier queue skip the router's check.
    if let Err(e) = triage_protocol::check_request_id(&request.id) {
        return Some(Failure::reply(ErrorCode::InvalidRequest, e.to_string()));
    }
    if request.is_expired(triage_protocol::now_ms()) {
        return Some(Failure::reply(
            ErrorCode::DeadlineExceeded,
            "the deadline passed before the work could start",
        ));
    }
    // Several choices come whole, in one completion (its alternatives).
    if request.n > 1 && request.stream {
        return Some(Failure::reply(
            ErrorCode::UnsupportedNWithStream,
            "n > 1 cannot be streamed: ask for n = 1, or stream = false",
        ));
    }
    if request
        .chat_messages()
        .iter()
        .all(|m| m.content.trim().is_empty())
    {
        return Some(Failure::reply(
            ErrorCode::EmptyPrompt,
            "the request has no prompt text",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(request: &Request, deliveries: u64) -> Option<(ErrorCode, bool)> {
        refusal(request, deliveries, 3).map(|f| (f.code, f.dead_letter))
    }

    #[test]
    fn refusals_come_in_order_and_only_max_deliveries_is_dead_lettered() {
        let fine = Request::from_prompt("hello");
        assert_eq!(code(&fine, 1), None);
        assert_eq!(code(&fine, 3), None, "the limit itself is allowed");
        assert_eq!(
            code(&fine, 4),
            Some((ErrorCode::MaxDeliveriesExceeded, true))
        );

        let expired = Request {
            deadline_ms: Some(triage_protocol::now_ms() - 1),
            n: 2,
            ..Request::from_prompt("")
        };
        // Everything is wrong with it: the first check decides.
        assert_eq!(
            code(&expired, 4),
            Some((ErrorCode::MaxDeliveriesExceeded, true))
        );
        assert_eq!(
            code(&expired, 1),
            Some((ErrorCode::DeadlineExceeded, false))
        );

        let two = Request {
            n: 2,
            ..Request::from_prompt("hello")
        };
        let streamed = Request {
            stream: true,
            ..two.clone()
        };
        let unstreamed = Request {
            stream: false,
            ..two
        };
        assert_eq!(
            code(&streamed, 1),
            Some((ErrorCode::UnsupportedNWithStream, false))
        );
        assert_eq!(code(&unstreamed, 1), None, "whole choices are served");

        let spaced = Request {
            id: "a b".into(),
            ..Request::from_prompt("hello")
        };
        assert_eq!(code(&spaced, 1), Some((ErrorCode::InvalidRequest, false)));

        let blank = Request::from_prompt("  \n\t ");
        assert_eq!(code(&blank, 1), Some((ErrorCode::EmptyPrompt, false)));
    }
}
