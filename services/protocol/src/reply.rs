//! Which subjects a worker may answer on.
//!
//! A reply subject comes from the client, so it is untrusted: without this
//! check a client could make a worker publish into `llm.tier2`, `llm.usage`
//! or the JetStream API. Only subjects under an allowed prefix (`_INBOX.`,
//! NATS clients' inboxes, and `_GW.`, the HTTP gateway's, by default) that
//! are concrete (no wildcards) and outside the deployment's own namespace
//! are answered.

use serde::{Deserialize, Serialize};

use crate::subjects::Namespace;

/// The first token of the HTTP gateway's reply subjects
/// (`_GW.<instance>.<n>`): a prefix of its own rather than the shared
/// `_INBOX.`, so NATS permissions can give the gateway exactly its replies.
pub const GATEWAY_REPLY_PREFIX: &str = "_GW";

/// Allowed reply-subject prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyPolicy {
    /// A reply subject must start with one of these.
    pub allowed_prefixes: Vec<String>,
}

impl Default for ReplyPolicy {
    fn default() -> Self {
        Self {
            allowed_prefixes: vec!["_INBOX.".to_string(), format!("{GATEWAY_REPLY_PREFIX}.")],
        }
    }
}

/// Why a reply subject was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplySubjectError {
    /// No reply subject anywhere (field, header, NATS reply).
    #[error("no reply subject: set `reply_to`, the Triage-Reply-To header, or publish with a reply subject")]
    Missing,
    /// Not a valid concrete NATS subject.
    #[error("reply subject {0:?} is not a valid concrete subject (no spaces, wildcards or empty tokens)")]
    Invalid(String),
    /// Under no allowed prefix, or inside Triage's own subjects.
    #[error("reply subject {subject:?} is not allowed: it must start with one of {allowed:?}")]
    NotAllowed {
        /// The refused subject.
        subject: String,
        /// The allowed prefixes.
        allowed: Vec<String>,
    },
}

impl ReplyPolicy {
    /// Checks `subject` against the policy.
    pub fn check(&self, ns: &Namespace, subject: &str) -> Result<(), ReplySubjectError> {
        if subject.is_empty() {
            return Err(ReplySubjectError::Missing);
        }
        let concrete = subject.len() <= 512
            && subject.split('.').all(|t| {
                !t.is_empty()
                    && t != "*"
                    && t != ">"
                    && !t.chars().any(|c| c.is_whitespace() || c.is_control())
            });
        if !concrete {
            return Err(ReplySubjectError::Invalid(subject.to_string()));
        }
        let allowed = self
            .allowed_prefixes
            .iter()
            .any(|p| !p.is_empty() && subject.starts_with(p.as_str()) && subject.len() > p.len());
        if !allowed || ns.is_internal(subject) {
            return Err(ReplySubjectError::NotAllowed {
                subject: subject.to_string(),
                allowed: self.allowed_prefixes.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_subjects_are_allowed() {
        let p = ReplyPolicy::default();
        let ns = Namespace::default();
        assert!(p.check(&ns, "_INBOX.abc.def").is_ok());
        assert!(p.check(&ns, "_GW.instance-1.42").is_ok());
        assert!(
            p.check(&ns, "_GWX.1").is_err(),
            "the prefix is a whole token"
        );
    }

    #[test]
    fn internal_and_foreign_subjects_are_refused() {
        let p = ReplyPolicy::default();
        let ns = Namespace::default();
        for s in [
            "llm.tier2",
            "llm.usage",
            "$JS.API.STREAM.DELETE.LLM_USAGE",
            "orders.created",
        ] {
            assert!(
                matches!(p.check(&ns, s), Err(ReplySubjectError::NotAllowed { .. })),
                "{s} must be refused"
            );
        }
    }

    #[test]
    fn wildcards_and_malformed_subjects_are_invalid() {
        let p = ReplyPolicy::default();
        let ns = Namespace::default();
        for s in ["_INBOX.*", "_INBOX.>", "_INBOX..x", "_INBOX.a b"] {
            assert!(
                matches!(p.check(&ns, s), Err(ReplySubjectError::Invalid(_))),
                "{s}"
            );
        }
        assert_eq!(p.check(&ns, ""), Err(ReplySubjectError::Missing));
    }

    #[test]
    fn a_broad_prefix_still_cannot_reach_internal_subjects() {
        let p = ReplyPolicy {
            allowed_prefixes: vec!["llm.".into()],
        };
        assert!(p.check(&Namespace::default(), "llm.tier2").is_err());
    }
}
