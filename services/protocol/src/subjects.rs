//! Subject and stream names.
//!
//! Every name carries an optional deployment prefix so that several
//! deployments (staging, a second team) can share one NATS cluster: with
//! prefix `acme`, `llm.requests` becomes `acme.llm.requests` and the stream
//! `LLM_REQUESTS` becomes `ACME_LLM_REQUESTS`.

use serde::{Deserialize, Serialize};

use crate::ids::RequestKey;
use crate::message::Tier;

/// The streams Triage owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// `llm.requests`: what clients publish (work queue).
    Requests,
    /// `llm.tier1`: routed to the small model (work queue).
    Tier1,
    /// `llm.tier2`: routed to the large model (work queue).
    Tier2,
    /// `llm.usage`: one event per finished generation attempt.
    Usage,
    /// `llm.dead`: what could not be processed, with the reason in headers.
    Dead,
    /// `llm.results.<id>`: completions kept for batch jobs, one per id.
    Results,
    /// `llm.shadow`: answered requests sampled for a shadow answer and a
    /// judge's grade (work queue, consumed by `triage-shadow`).
    Shadow,
}

impl StreamKind {
    /// All streams, in provisioning order.
    pub const ALL: [StreamKind; 7] = [
        StreamKind::Requests,
        StreamKind::Tier1,
        StreamKind::Tier2,
        StreamKind::Usage,
        StreamKind::Dead,
        StreamKind::Results,
        StreamKind::Shadow,
    ];

    fn base_subject(self) -> &'static str {
        match self {
            StreamKind::Requests => "llm.requests",
            StreamKind::Tier1 => "llm.tier1",
            StreamKind::Tier2 => "llm.tier2",
            StreamKind::Usage => "llm.usage",
            StreamKind::Dead => "llm.dead",
            StreamKind::Results => "llm.results",
            StreamKind::Shadow => "llm.shadow",
        }
    }

    fn base_stream(self) -> &'static str {
        match self {
            StreamKind::Requests => "LLM_REQUESTS",
            StreamKind::Tier1 => "LLM_TIER1",
            StreamKind::Tier2 => "LLM_TIER2",
            StreamKind::Usage => "LLM_USAGE",
            StreamKind::Dead => "LLM_DEAD",
            StreamKind::Results => "LLM_RESULTS",
            StreamKind::Shadow => "LLM_SHADOW",
        }
    }

    /// Work-queue streams delete a message once it is acked: each request is
    /// handled by exactly one consumer. The others keep history by limits.
    pub fn is_work_queue(self) -> bool {
        matches!(
            self,
            StreamKind::Requests | StreamKind::Tier1 | StreamKind::Tier2 | StreamKind::Shadow
        )
    }
}

/// A deployment's names: subjects, streams, consumers and buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    prefix: Option<String>,
}

/// A prefix that would make invalid or overlapping subject names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid subject prefix {prefix:?}: use letters, digits, '-' and '_' in dot-separated tokens"
)]
pub struct InvalidPrefix {
    /// The rejected prefix.
    pub prefix: String,
}

impl Namespace {
    /// A namespace with the given prefix; an empty prefix means none.
    pub fn new(prefix: impl Into<String>) -> Result<Self, InvalidPrefix> {
        let prefix = prefix.into();
        let prefix = prefix.trim().trim_end_matches('.').to_string();
        if prefix.is_empty() {
            return Ok(Self { prefix: None });
        }
        let valid = prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        if !valid {
            return Err(InvalidPrefix { prefix });
        }
        Ok(Self {
            prefix: Some(prefix),
        })
    }

    /// The prefix, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    fn qualify(&self, base: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{base}"),
            None => base.to_string(),
        }
    }

    fn qualify_name(&self, base: &str) -> String {
        match &self.prefix {
            Some(p) => {
                let p: String = p
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("{p}_{base}")
            }
            None => base.to_string(),
        }
    }

    /// Every subject a stream captures: `llm.requests` also takes the
    /// tenant-bound `llm.requests.<tenant>`.
    pub fn stream_subjects(&self, kind: StreamKind) -> Vec<String> {
        let main = self.stream_subject(kind);
        match kind {
            StreamKind::Requests => vec![main.clone(), format!("{main}.>")],
            _ => vec![main],
        }
    }

    /// The subject of a stream (for `Results`, the wildcard it captures).
    pub fn stream_subject(&self, kind: StreamKind) -> String {
        match kind {
            StreamKind::Results => format!("{}.>", self.qualify(kind.base_subject())),
            _ => self.qualify(kind.base_subject()),
        }
    }

    /// The JetStream stream name.
    pub fn stream_name(&self, kind: StreamKind) -> String {
        self.qualify_name(kind.base_stream())
    }

    /// `llm.requests`.
    pub fn requests(&self) -> String {
        self.stream_subject(StreamKind::Requests)
    }

    /// `llm.shadow`: jobs for `triage-shadow`.
    pub fn shadow(&self) -> String {
        self.stream_subject(StreamKind::Shadow)
    }

    /// `llm.chat`: core NATS request–reply, one whole answer per request
    /// (served by the gateway; not a stream — the request it makes is).
    pub fn chat(&self) -> String {
        self.qualify("llm.chat")
    }

    /// `llm.cancel.<tenant>.<id>`: core NATS; a message here asks the worker
    /// generating that request to stop (its client went away). Not a
    /// stream: a cancel for a request not being generated is dropped.
    pub fn cancel(&self, key: RequestKey<'_>) -> String {
        format!("{}.{}", self.qualify("llm.cancel"), key.tokens())
    }

    /// `llm.requests.<tenant>`: requests of one tenant, bound to it by the
    /// NATS permission to publish there (deploy/nats).
    pub fn tenant_requests(&self, tenant: &str) -> Result<String, InvalidTenant> {
        check_tenant(tenant)?;
        Ok(format!("{}.{tenant}", self.requests()))
    }

    /// The tenant a request subject binds: `None` for plain `llm.requests`,
    /// the token of `llm.requests.<tenant>`, an error for anything else.
    pub fn subject_tenant<'s>(&self, subject: &'s str) -> Result<Option<&'s str>, InvalidTenant> {
        Self::tenant_under(&self.requests(), subject)
    }

    /// `llm.chat.<tenant>`: one tenant's core requests of [`Self::chat`].
    pub fn tenant_chat(&self, tenant: &str) -> Result<String, InvalidTenant> {
        check_tenant(tenant)?;
        Ok(format!("{}.{tenant}", self.chat()))
    }

    /// The tenant an `llm.chat` subject binds, as [`Self::subject_tenant`].
    pub fn chat_tenant<'s>(&self, subject: &'s str) -> Result<Option<&'s str>, InvalidTenant> {
        Self::tenant_under(&self.chat(), subject)
    }

    /// `llm.feedback`: core NATS request–reply, ratings of answered
    /// requests (the ledger answers).
    pub fn feedback(&self) -> String {
        self.qualify("llm.feedback")
    }

    /// `llm.feedback.<tenant>`: one tenant's [`Self::feedback`].
    pub fn tenant_feedback(&self, tenant: &str) -> Result<String, InvalidTenant> {
        check_tenant(tenant)?;
        Ok(format!("{}.{tenant}", self.feedback()))
    }

    /// The tenant an `llm.feedback` subject binds, as [`Self::subject_tenant`].
    pub fn feedback_tenant<'s>(&self, subject: &'s str) -> Result<Option<&'s str>, InvalidTenant> {
        Self::tenant_under(&self.feedback(), subject)
    }

    /// The tenant of a message that arrived on `subject` under `plain`
    /// (e.g. [`Self::feedback`]) with `body` claiming one: a tenant-bound
    /// subject's tenant, which the body must agree with, else the body's
    /// (under deploy/nats only trusted users publish on plain subjects).
    /// The error says what is wrong, for an `invalid_request` reply.
    pub fn bind_tenant<'s>(
        &self,
        plain: &str,
        subject: &'s str,
        body: Option<&'s str>,
    ) -> Result<Option<&'s str>, String> {
        match Self::tenant_under(plain, subject) {
            Err(e) => Err(format!("subject {subject:?}: {e}")),
            Ok(None) => Ok(body),
            Ok(Some(tenant)) => match body {
                Some(claimed) if claimed != tenant => Err(format!(
                    "field `tenant` is {claimed:?} but the message was published on {subject}, \
                     tenant {tenant:?}: leave `tenant` unset or make it agree"
                )),
                _ => Ok(Some(tenant)),
            },
        }
    }

    fn tenant_under<'s>(plain: &str, subject: &'s str) -> Result<Option<&'s str>, InvalidTenant> {
        let Some(rest) = subject.strip_prefix(plain) else {
            return Err(InvalidTenant(subject.to_string()));
        };
        match rest.strip_prefix('.') {
            None if rest.is_empty() => Ok(None),
            Some(tenant) => check_tenant(tenant).map(|()| Some(tenant)),
            None => Err(InvalidTenant(subject.to_string())),
        }
    }

    /// `llm.tier1` or `llm.tier2`.
    pub fn tier(&self, tier: Tier) -> String {
        self.stream_subject(Self::tier_stream(tier))
    }

    /// The stream that holds a tier's queue.
    pub fn tier_stream(tier: Tier) -> StreamKind {
        match tier {
            Tier::Small => StreamKind::Tier1,
            Tier::Large => StreamKind::Tier2,
        }
    }

    /// `llm.usage`.
    pub fn usage(&self) -> String {
        self.stream_subject(StreamKind::Usage)
    }

    /// `llm.dead`.
    pub fn dead(&self) -> String {
        self.stream_subject(StreamKind::Dead)
    }

    /// `llm.results.<tenant>.<id>`: where a kept result of the request is
    /// stored, both parts encoded by [`RequestKey::tokens`] (so two tenants'
    /// equal ids, or `a.b` and its escaped form, never share a subject).
    pub fn result(&self, key: RequestKey<'_>) -> String {
        format!(
            "{}.{}",
            self.qualify(StreamKind::Results.base_subject()),
            key.tokens()
        )
    }

    /// A durable consumer's name, prefixed like the streams.
    pub fn consumer(&self, base: &str) -> String {
        self.qualify_name(base)
    }

    /// The key-value bucket of finished request ids.
    pub fn finished_bucket(&self) -> String {
        self.qualify_name("TRIAGE_FINISHED")
    }

    /// The key-value bucket of promoted router heads (`triage-router
    /// promote`), which running routers follow.
    pub fn heads_bucket(&self) -> String {
        self.qualify_name("TRIAGE_HEADS")
    }

    /// The key-value bucket of the workers' progress records (tokens of
    /// attempts still generating, booked by the next delivery if their
    /// worker dies).
    pub fn progress_bucket(&self) -> String {
        self.qualify_name("TRIAGE_PROGRESS")
    }

    /// Whether `subject` is one of this deployment's internal subjects (or a
    /// JetStream API subject), which no client may choose as a reply subject.
    pub fn is_internal(&self, subject: &str) -> bool {
        let llm = self.qualify("llm");
        subject == llm
            || subject.starts_with(&format!("{llm}."))
            || subject.starts_with("$JS.")
            || subject.starts_with("$KV.")
            || subject.starts_with("$SYS.")
    }
}

/// Longest tenant name a subject can carry.
pub const MAX_TENANT_LEN: usize = 64;

/// A tenant that cannot be one subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid tenant {0:?}: a tenant bound to a subject is 1 to 64 letters, digits, '-' or '_' \
     (requests go to llm.requests.<tenant>)"
)]
pub struct InvalidTenant(pub String);

fn check_tenant(tenant: &str) -> Result<(), InvalidTenant> {
    let plain = (1..=MAX_TENANT_LEN).contains(&tenant.len())
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        Ok(())
    } else {
        Err(InvalidTenant(tenant.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_design() {
        let ns = Namespace::default();
        assert_eq!(ns.requests(), "llm.requests");
        assert_eq!(ns.tier(Tier::Small), "llm.tier1");
        assert_eq!(ns.tier(Tier::Large), "llm.tier2");
        assert_eq!(ns.usage(), "llm.usage");
        assert_eq!(ns.dead(), "llm.dead");
        assert_eq!(ns.stream_subject(StreamKind::Results), "llm.results.>");
        assert_eq!(ns.stream_name(StreamKind::Requests), "LLM_REQUESTS");
    }

    #[test]
    fn prefix_qualifies_subjects_streams_and_consumers() {
        let ns = Namespace::new("acme-prod").unwrap();
        assert_eq!(ns.requests(), "acme-prod.llm.requests");
        assert_eq!(ns.chat(), "acme-prod.llm.chat");
        assert_eq!(ns.stream_name(StreamKind::Tier2), "ACME_PROD_LLM_TIER2");
        assert_eq!(ns.consumer("router"), "ACME_PROD_router");
        assert!(ns.is_internal("acme-prod.llm.tier2"));
        assert!(!ns.is_internal("llm.tier2"));
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        for p in ["a b", "a..b", "a.*", ">"] {
            assert!(Namespace::new(p).is_err(), "{p} should be rejected");
        }
        assert_eq!(Namespace::new("").unwrap(), Namespace::default());
    }

    #[test]
    fn tenant_subjects_round_trip_and_bad_ones_are_refused() {
        let ns = Namespace::new("acme").unwrap();
        assert_eq!(
            ns.stream_subjects(StreamKind::Requests),
            ["acme.llm.requests", "acme.llm.requests.>"]
        );
        let subject = ns.tenant_requests("team-a_1").unwrap();
        assert_eq!(subject, "acme.llm.requests.team-a_1");
        assert_eq!(ns.subject_tenant(&subject), Ok(Some("team-a_1")));
        assert_eq!(ns.subject_tenant("acme.llm.requests"), Ok(None));
        let chat = ns.tenant_chat("team-a_1").unwrap();
        assert_eq!(chat, "acme.llm.chat.team-a_1");
        assert_eq!(ns.chat_tenant(&chat), Ok(Some("team-a_1")));
        assert_eq!(ns.chat_tenant("acme.llm.chat"), Ok(None));
        assert!(ns.chat_tenant("acme.llm.chat.a.b").is_err());
        let feedback = ns.tenant_feedback("team-a_1").unwrap();
        assert_eq!(feedback, "acme.llm.feedback.team-a_1");
        assert_eq!(ns.feedback_tenant(&feedback), Ok(Some("team-a_1")));
        assert_eq!(ns.feedback_tenant("acme.llm.feedback"), Ok(None));
        assert!(ns.feedback_tenant("acme.llm.feedbackX").is_err());
        let plain = ns.feedback();
        assert_eq!(
            ns.bind_tenant(&plain, &feedback, None),
            Ok(Some("team-a_1"))
        );
        assert_eq!(
            ns.bind_tenant(&plain, &feedback, Some("team-a_1")),
            Ok(Some("team-a_1"))
        );
        assert!(ns
            .bind_tenant(&plain, &feedback, Some("other"))
            .unwrap_err()
            .contains("other"));
        assert_eq!(ns.bind_tenant(&plain, &plain, Some("any")), Ok(Some("any")));
        assert!(ns.bind_tenant(&plain, "acme.llm.chat", None).is_err());
        for bad in [
            "acme.llm.requests.a.b",
            "acme.llm.requestsX",
            "llm.requests.a",
            "acme.llm.requests.",
        ] {
            assert!(ns.subject_tenant(bad).is_err(), "{bad}");
        }
        for bad in ["", "a.b", "a b", "*", ">", &"t".repeat(65)] {
            assert!(ns.tenant_requests(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn result_subjects_are_tenant_and_id_tokens() {
        let ns = Namespace::default();
        assert_eq!(
            ns.result(RequestKey::new(None, "req-1")),
            "llm.results._.req-1"
        );
        assert_eq!(
            ns.result(RequestKey::new(Some("acme"), "a.b")),
            "llm.results.acme.a_2Eb"
        );
    }
}
