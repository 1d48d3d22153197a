//! The reply-subject policy over any string: never panics, and never allows
//! a wildcard, whitespace or one of the deployment's own subjects.
#![no_main]
use libfuzzer_sys::fuzz_target;
use triage_protocol::{Namespace, ReplyPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(subject) = std::str::from_utf8(data) else {
        return;
    };
    let ns = Namespace::default();
    if ReplyPolicy::default().check(&ns, subject).is_ok() {
        assert!(!subject
            .split('.')
            .any(|t| t == "*" || t == ">" || t.is_empty()));
        assert!(!subject.chars().any(char::is_whitespace));
        assert!(!ns.is_internal(subject));
    }
});
