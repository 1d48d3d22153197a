//! The API key format: `trk_<key_id>_<secret>`, shown once at creation.
//!
//! `key_id` (12 hex digits) is the public handle — listed, revoked, logged —
//! and finds the row; `secret` (43 base64url characters, 256 random bits) is
//! checked against an argon2id hash, so the table alone never lets anyone
//! call the API.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// What every key starts with (and what secret scanners can look for).
pub const PREFIX: &str = "trk_";

/// A key as parsed from `Authorization: Bearer …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts<'a> {
    /// The public handle.
    pub key_id: &'a str,
    /// The secret part.
    pub secret: &'a str,
}

/// Splits a presented key; `None` if it cannot be one of ours.
pub fn parse(key: &str) -> Option<KeyParts<'_>> {
    let (key_id, secret) = key.strip_prefix(PREFIX)?.split_once('_')?;
    let id_ok = key_id.len() == 12 && key_id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = (32..=128).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(KeyParts { key_id, secret })
}

/// The key as `Authorization` shows it in logs: prefix and id, never the secret.
pub fn redacted(key_id: &str) -> String {
    format!("{PREFIX}{key_id}_…")
}

/// A new key: `(key_id, whole key to show once, hash of the secret to store)`.
pub fn generate() -> (String, String, String) {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut id);
    OsRng.fill_bytes(&mut secret);
    let key_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let hash = hash_secret(&secret);
    (key_id.clone(), format!("{PREFIX}{key_id}_{secret}"), hash)
}

/// The argon2id PHC string of `secret`, with a random salt.
pub fn hash_secret(secret: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any input")
        .to_string()
}

/// Whether `secret` matches the stored `hash` (false for a malformed hash).
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_and_verifies_against_its_hash_only() {
        let (key_id, key, hash) = generate();
        let parts = parse(&key).unwrap();
        assert_eq!(parts.key_id, key_id);
        assert_eq!(parts.secret.len(), 43);
        assert!(verify_secret(parts.secret, &hash));
        let (_, other, _) = generate();
        assert!(!verify_secret(parse(&other).unwrap().secret, &hash));
        assert!(!verify_secret(parts.secret, "not a phc string"));
        assert!(!key.contains(&hash) && hash.starts_with("$argon2id$"));
    }

    #[test]
    fn what_cannot_be_a_key_is_refused_before_any_lookup() {
        for bad in [
            "",
            "sk-proj-abc",
            "trk_",
            "trk_0123456789ab",
            "trk_0123456789ab_short",
            "trk_0123456789zz_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "trk_0123456789ab_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa aaaaaaaaaa",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(redacted("0123456789ab"), "trk_0123456789ab_…");
    }
}
