//! Request ids: what a client may choose, and the one way an id (scoped by
//! its tenant) is written into a subject token, a key-value key or a
//! JetStream message id.
//!
//! Ids are idempotency keys, so two different (tenant, id) pairs must never
//! share a key: [`key_token`] is injective (it has an inverse,
//! [`decode_key_token`]) and its output never holds `.`, so joining tokens
//! with `.` stays injective too.

use crate::message::Request;

/// The longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Why a client-chosen request id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequestId {
    /// Longer than [`MAX_REQUEST_ID_BYTES`].
    #[error("`id` is {len} bytes; at most {max} are allowed", max = MAX_REQUEST_ID_BYTES)]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9._:-]`.
    #[error("`id` holds {found:?} at byte {at}; use only letters, digits and `.`, `_`, `:`, `-`")]
    BadCharacter {
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
}

/// Checks a client-chosen request id: 1 to [`MAX_REQUEST_ID_BYTES`] bytes
/// of `[A-Za-z0-9._:-]` (printable, no spaces, safe in logs and headers).
/// An empty id is the caller's business (the router assigns one).
pub fn check_request_id(id: &str) -> Result<(), InvalidRequestId> {
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(InvalidRequestId::TooLong { len: id.len() });
    }
    match id
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        Some((at, found)) => Err(InvalidRequestId::BadCharacter { found, at }),
        None => Ok(()),
    }
}

/// The escape character of [`key_token`]: always followed by two
/// upper-case hex digits, except alone, which is the empty string.
const ESCAPE: char = '_';

/// `s` as one subject token / key-value key token: letters, digits and `-`
/// are kept, every other byte becomes `_XX` (upper-case hex), and the empty
/// string is `_`. Injective; the output holds only `[A-Za-z0-9_-]`.
pub fn key_token(s: &str) -> String {
    if s.is_empty() {
        return ESCAPE.to_string();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push(ESCAPE);
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

/// The inverse of [`key_token`]; `None` for a string it never produces.
pub fn decode_key_token(token: &str) -> Option<String> {
    if token == "_" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                let hex = token.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h))
                {
                    return None;
                }
                let b = u8::from_str_radix(hex, 16).ok()?;
                if b.is_ascii_alphanumeric() || b == b'-' {
                    return None; // never escaped: not canonical
                }
                out.push(b);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// A request's identity: its id within its tenant. Two tenants may use the
/// same id; every key, result subject and de-duplication id is built from
/// this, never from the id alone. No tenant and the empty tenant are the
/// same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestKey<'a> {
    tenant: &'a str,
    id: &'a str,
}

impl<'a> RequestKey<'a> {
    /// The key of `id` in `tenant`.
    pub fn new(tenant: Option<&'a str>, id: &'a str) -> Self {
        Self {
            tenant: tenant.unwrap_or(""),
            id,
        }
    }

    /// The key of a request (its `tenant` and `id`).
    pub fn of(request: &'a Request) -> Self {
        Self::new(request.tenant.as_deref(), &request.id)
    }

    /// The request id.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// `<tenant>.<id>`, each part a [`key_token`]: two subject tokens, or a
    /// key-value key.
    pub fn tokens(&self) -> String {
        format!("{}.{}", key_token(self.tenant), key_token(self.id))
    }

    /// A JetStream `Nats-Msg-Id`: `<purpose>:<tenant>.<id>`. `purpose`
    /// (`request`, `route`, `escalate`, …) keeps the ids of different
    /// publishes of one request apart; it must not contain `:`.
    pub fn msg_id(&self, purpose: &str) -> String {
        debug_assert!(!purpose.contains(':'), "purpose {purpose:?} holds ':'");
        format!("{purpose}:{}", self.tokens())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A small deterministic generator (no dependency needed).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        /// A string of up to 6 characters drawn from those most likely to
        /// collide: the escape, `.`, hex digits, `x` and non-ASCII.
        fn string(&mut self) -> String {
            const ALPHABET: [char; 12] =
                ['_', '.', 'x', 'a', 'E', '2', '6', 'F', ':', '-', ' ', 'é'];
            let len = (self.next() % 7) as usize;
            (0..len)
                .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize])
                .collect()
        }
    }

    #[test]
    fn key_tokens_round_trip_and_never_collide() {
        let mut rng = Lcg(12);
        let mut seen: HashMap<String, String> = HashMap::new();
        for _ in 0..20_000 {
            let s = rng.string();
            let token = key_token(&s);
            assert!(
                token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{token:?} is not a plain token"
            );
            assert_eq!(decode_key_token(&token).as_deref(), Some(s.as_str()));
            if let Some(other) = seen.insert(token.clone(), s.clone()) {
                assert_eq!(other, s, "{other:?} and {s:?} share the token {token:?}");
            }
        }
        assert!(
            seen.len() > 5_000,
            "the generator drew too few distinct strings"
        );
    }

    #[test]
    fn escaped_forms_do_not_collide_with_their_source() {
        let cases = [
            "a.b", "a_2Eb", "x612e62", "_", "", "__", "_2E", ".", "a-b", "a_b",
        ];
        let tokens: Vec<String> = cases.iter().map(|c| key_token(c)).collect();
        for (i, a) in tokens.iter().enumerate() {
            for (j, b) in tokens.iter().enumerate() {
                assert!(
                    i == j || a != b,
                    "{:?} and {:?} both give {a:?}",
                    cases[i],
                    cases[j]
                );
            }
        }
        assert_eq!(key_token("req-1"), "req-1", "plain ids stay readable");
        assert_eq!(key_token("a.b"), "a_2Eb");
    }

    #[test]
    fn non_canonical_tokens_are_not_decoded() {
        for t in ["_2", "_zz", "_41", "a.b", "_2e", "é"] {
            assert_eq!(decode_key_token(t), None, "{t:?}");
        }
    }

    #[test]
    fn keys_are_scoped_by_tenant_and_split_unambiguously() {
        let mut rng = Lcg(7);
        let mut seen: HashMap<String, (String, String)> = HashMap::new();
        for _ in 0..20_000 {
            let (tenant, id) = (rng.string(), rng.string());
            let key = RequestKey::new(Some(&tenant), &id).tokens();
            if let Some(other) = seen.insert(key.clone(), (tenant.clone(), id.clone())) {
                assert_eq!(other, (tenant, id), "two pairs share the key {key:?}");
            }
        }
        let a = RequestKey::new(Some("a.b"), "c").tokens();
        let b = RequestKey::new(Some("a"), "b.c").tokens();
        assert_ne!(a, b);
        assert_ne!(
            RequestKey::new(Some("acme"), "r1").tokens(),
            RequestKey::new(Some("globex"), "r1").tokens()
        );
        assert_eq!(
            RequestKey::new(None, "r1").tokens(),
            RequestKey::new(Some(""), "r1").tokens()
        );
        assert_eq!(
            RequestKey::new(Some("acme"), "r1").msg_id("route"),
            "route:acme.r1"
        );
        // The vector the Python and JavaScript clients' tests check too.
        assert_eq!(
            RequestKey::new(Some("a.b"), "x_1é").msg_id("request"),
            "request:a_2Eb.x_5F1_C3_A9"
        );
    }

    #[test]
    fn request_ids_are_bounded_in_length_and_charset() {
        let longest = "x".repeat(MAX_REQUEST_ID_BYTES);
        for ok in ["a", "req-1", "2024.01.02:run_7", longest.as_str()] {
            assert_eq!(check_request_id(ok), Ok(()), "{ok:?}");
        }
        let long = "x".repeat(MAX_REQUEST_ID_BYTES + 1);
        assert_eq!(
            check_request_id(&long),
            Err(InvalidRequestId::TooLong { len: 129 })
        );
        for (bad, found, at) in [
            ("a b", ' ', 1),
            ("a/b", '/', 1),
            ("é", 'é', 0),
            ("a\n", '\n', 1),
            ("*", '*', 0),
        ] {
            assert_eq!(
                check_request_id(bad),
                Err(InvalidRequestId::BadCharacter { found, at }),
                "{bad:?}"
            );
        }
        let message = check_request_id("a b").unwrap_err().to_string();
        assert!(message.contains("`id`"), "{message}");
    }
}
