//! Binding a request's tenant to the subject it arrived on.
//!
//! On `llm.requests.<tenant>` the tenant is the subject's: NATS permissions
//! (deploy/nats) let each client user publish only there, so tenant pins,
//! tier-override rights, ledger attribution and metric labels rest on who
//! published, not on what the body claims. Plain `llm.requests` keeps the
//! body's tenant: under deploy/nats only trusted services (the gateway, an
//! operator) may publish there.

use triage_protocol::{ErrorCode, Namespace, Request};

use crate::validation::Rejection;

/// Where a request's tenant comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Plain `llm.requests`: the body's tenant, if any, as sent.
    Untenanted,
    /// `llm.requests.<tenant>`: the subject's tenant.
    Subject,
}

/// Sets `request.tenant` from `subject` when the subject names one. A body
/// tenant that disagrees, or a subject that is no request subject of this
/// deployment, is refused with `invalid_request`.
pub fn bind(ns: &Namespace, subject: &str, request: &mut Request) -> Result<Binding, Rejection> {
    let tenant = ns.subject_tenant(subject).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidRequest,
            format!("subject {subject:?}: {e}"),
        )
    })?;
    let Some(tenant) = tenant else {
        return Ok(Binding::Untenanted);
    };
    match request.tenant.as_deref() {
        Some(claimed) if claimed != tenant => Err(Rejection::new(
            ErrorCode::InvalidRequest,
            format!(
                "field `tenant` is {claimed:?} but the request was published on {subject}, \
                 tenant {tenant:?}: leave `tenant` unset or make it agree"
            ),
        )),
        _ => {
            request.tenant = Some(tenant.to_string());
            Ok(Binding::Subject)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(subject: &str, body: Option<&str>) -> Result<(Binding, Option<String>), ErrorCode> {
        let mut r = Request::from_prompt("hi");
        r.tenant = body.map(String::from);
        bind(&Namespace::default(), subject, &mut r)
            .map(|b| (b, r.tenant))
            .map_err(|e| e.code)
    }

    #[test]
    fn the_subject_sets_the_tenant() {
        assert_eq!(
            bound("llm.requests.acme", None),
            Ok((Binding::Subject, Some("acme".into())))
        );
        assert_eq!(
            bound("llm.requests.acme", Some("acme")),
            Ok((Binding::Subject, Some("acme".into())))
        );
    }

    #[test]
    fn plain_subject_keeps_the_body_tenant() {
        assert_eq!(
            bound("llm.requests", Some("any")),
            Ok((Binding::Untenanted, Some("any".into())))
        );
        assert_eq!(bound("llm.requests", None), Ok((Binding::Untenanted, None)));
    }

    #[test]
    fn a_disagreeing_body_or_odd_subject_is_refused() {
        let mut r = Request::from_prompt("hi");
        r.tenant = Some("beta".into());
        let err = bind(&Namespace::default(), "llm.requests.acme", &mut r).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(
            err.message.contains("`tenant`") && err.message.contains("\"beta\""),
            "{}",
            err.message
        );
        assert_eq!(
            bound("llm.requests.a.b", None),
            Err(ErrorCode::InvalidRequest)
        );
    }
}
