//! Checks a request before it is scored. Each failure is an error reply
//! with a specific code; the message is not retried.

use triage_protocol::{check_request_id, ErrorCode, Request};

use crate::config::PolicyConfig;
use crate::tenancy::Binding;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The code the client receives.
    pub code: ErrorCode,
    /// What to fix.
    pub message: String,
}

impl Rejection {
    /// A refusal with `code` and what to fix.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Validates `request`, in order: id, text present, size, `n` with
/// `stream`, backend params, tier override (allowed or not by the tenant and
/// its `binding`).
pub fn validate(
    request: &Request,
    policy: &PolicyConfig,
    binding: Binding,
) -> Result<(), Rejection> {
    // The id becomes keys and subject tokens downstream: bounded and plain.
    if let Err(e) = check_request_id(&request.id) {
        return Err(Rejection::new(ErrorCode::InvalidRequest, e.to_string()));
    }
    let has_text = request
        .chat_messages()
        .iter()
        .any(|m| !m.content.trim().is_empty());
    if !has_text {
        return Err(Rejection::new(
            ErrorCode::EmptyPrompt,
            "the request has no prompt text: set `prompt` or `messages` with non-empty content",
        ));
    }
    let bytes = request.input_bytes();
    if bytes > policy.max_prompt_bytes {
        return Err(Rejection::new(
            ErrorCode::PromptTooLarge,
            format!(
                "the prompt is {bytes} bytes; this deployment accepts at most {}",
                policy.max_prompt_bytes
            ),
        ));
    }
    if request.n > 1 && request.stream {
        return Err(Rejection::new(
            ErrorCode::UnsupportedNWithStream,
            format!(
                "n = {} with stream = true is not supported (vLLM before 0.6.2 hangs on it); use n = 1 or stream = false",
                request.n
            ),
        ));
    }
    if let Err(e) = triage_protocol::params::check(&request.params) {
        return Err(Rejection::new(
            ErrorCode::InvalidRequest,
            format!("invalid field `params.{}`: {}", e.field, e.reason),
        ));
    }
    match request.tier {
        None => {}
        Some(t) if !matches!(t, 1 | 2) => {
            return Err(Rejection::new(
                ErrorCode::InvalidTier,
                format!("tier must be 1 or 2, got {t}"),
            ));
        }
        Some(t) if !policy.may_choose_tier(request.tenant.as_deref(), binding) => {
            let who = match &request.tenant {
                Some(tenant) => format!("tenant {tenant:?}"),
                None => "requests without a tenant".to_string(),
            };
            return Err(Rejection::new(
                ErrorCode::InvalidTier,
                format!("this deployment does not let {who} choose the tier (got tier {t}); leave `tier` unset"),
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_protocol::ChatMessage;

    fn check(r: &Request) -> Option<ErrorCode> {
        validate(r, &PolicyConfig::default(), Binding::Untenanted)
            .err()
            .map(|e| e.code)
    }

    #[test]
    fn accepts_a_normal_request() {
        assert_eq!(check(&Request::from_prompt("hello")), None);
    }

    #[test]
    fn request_ids_are_bounded_and_plain() {
        let mut r = Request::from_prompt("hello");
        r.id = "tenant-7:run.2_b".into();
        assert_eq!(check(&r), None);
        for bad in ["a b".to_string(), "a/b".into(), "x".repeat(129)] {
            r.id = bad.clone();
            let err = validate(&r, &PolicyConfig::default(), Binding::Untenanted).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{bad:?}");
            assert!(err.message.contains("`id`"), "{}", err.message);
        }
    }

    #[test]
    fn empty_prompt() {
        assert_eq!(check(&Request::default()), Some(ErrorCode::EmptyPrompt));
        assert_eq!(
            check(&Request::from_prompt("  \n")),
            Some(ErrorCode::EmptyPrompt)
        );
        let r = Request {
            messages: Some(vec![ChatMessage::user("")]),
            ..Request::default()
        };
        assert_eq!(check(&r), Some(ErrorCode::EmptyPrompt));
    }

    #[test]
    fn prompt_too_large() {
        let policy = PolicyConfig {
            max_prompt_bytes: 10,
            ..PolicyConfig::default()
        };
        let err = validate(
            &Request::from_prompt("x".repeat(11)),
            &policy,
            Binding::Untenanted,
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::PromptTooLarge);
        assert!(err.message.contains("11 bytes"));
        assert!(validate(
            &Request::from_prompt("x".repeat(10)),
            &policy,
            Binding::Untenanted
        )
        .is_ok());
    }

    #[test]
    fn n_with_stream() {
        let mut r = Request::from_prompt("hi");
        r.n = 2;
        assert_eq!(check(&r), Some(ErrorCode::UnsupportedNWithStream));
        r.stream = false;
        assert_eq!(check(&r), None);
    }

    #[test]
    fn bad_backend_params_are_named() {
        let mut r = Request::from_prompt("hi");
        r.params.insert("top_p".into(), serde_json::json!(0.5));
        assert_eq!(check(&r), None);
        r.params.insert("stop".into(), serde_json::json!([]));
        let err = validate(&r, &PolicyConfig::default(), Binding::Untenanted).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(err.message.contains("`params.stop`"), "{}", err.message);
    }

    #[test]
    fn invalid_or_forbidden_tier() {
        let mut r = Request::from_prompt("hi");
        r.tier = Some(3);
        assert_eq!(check(&r), Some(ErrorCode::InvalidTier));
        r.tier = Some(1);
        assert_eq!(check(&r), Some(ErrorCode::InvalidTier), "off by default");
        let open = PolicyConfig {
            allow_tier_override: true,
            ..PolicyConfig::default()
        };
        assert!(validate(&r, &open, Binding::Subject).is_ok());
    }

    #[test]
    fn tier_choice_is_granted_per_tenant_and_to_untenanted_publishers() {
        let policy = PolicyConfig {
            tier_override_tenants: vec!["batch".into()],
            tier_override_untenanted: true,
            ..PolicyConfig::default()
        };
        let mut r = Request::from_prompt("hi");
        r.tier = Some(2);
        let code = |r: &Request, b| validate(r, &policy, b).err().map(|e| e.code);
        assert_eq!(code(&r, Binding::Untenanted), None, "trusted plain subject");
        r.tenant = Some("batch".into());
        assert_eq!(code(&r, Binding::Subject), None, "a granted tenant");
        r.tenant = Some("acme".into());
        let err = validate(&r, &policy, Binding::Subject).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidTier);
        assert!(err.message.contains("\"acme\""), "{}", err.message);
    }
}
