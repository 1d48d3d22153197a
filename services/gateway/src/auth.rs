//! Who is asking, and may they: the API key of `Authorization: Bearer …`,
//! the tenant it belongs to, the models it may use, its request and token
//! rates, and its tenant's daily budget.
//!
//! Verifying an argon2 hash costs tens of milliseconds, so a key that
//! verified is remembered (a SHA-256 of its secret) for `auth.cache_ttl`;
//! the row is read again after that, which is also how soon a revocation
//! takes effect. Rates are per key and per gateway replica (GCRA, governor);
//! the budget compares the tenant's spend today in the ledger (cached for
//! `auth.spend_cache_ttl`) with the key's limit, so it lags the ledger by up
//! to that long plus the ledger's own delay.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::api_key::{self, redacted};
use crate::error::ApiError;
use crate::keys::{KeyRecord, KeyStore};

/// Who a request is from.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// Keys are off (local use): no tenant.
    Anonymous,
    /// A valid key.
    Key(Arc<KeyRecord>),
}

impl Identity {
    /// The tenant the ledger books the request to.
    pub fn tenant(&self) -> Option<String> {
        match self {
            Identity::Anonymous => None,
            Identity::Key(k) => Some(k.tenant.clone()),
        }
    }
}

struct Verified {
    record: Arc<KeyRecord>,
    secret_digest: [u8; 32],
    at: Instant,
}

struct Limiters {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<DefaultDirectRateLimiter>,
}

/// Checks keys and limits; `None` store means keys are off.
pub struct Authenticator {
    store: Option<KeyStore>,
    cache_ttl: Duration,
    spend_ttl: Duration,
    verified: Mutex<HashMap<String, Verified>>,
    limiters: Mutex<HashMap<String, Arc<Limiters>>>,
    spend: Mutex<HashMap<String, (Decimal, Instant)>>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn per_minute(n: Option<i32>) -> Option<DefaultDirectRateLimiter> {
    let n = NonZeroU32::new(u32::try_from(n?).ok()?)?;
    Some(RateLimiter::direct(Quota::per_minute(n)))
}

/// Seconds to the next UTC midnight, when daily budgets reset.
fn until_midnight_utc() -> u64 {
    let now = chrono::Utc::now();
    let tomorrow = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0);
    tomorrow.map_or(3600, |t| (t.and_utc() - now).num_seconds().max(1) as u64)
}

/// The bearer token of `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Authenticator {
    /// Keys checked against `store`, or off when it is `None`.
    pub fn new(store: Option<KeyStore>, cache_ttl: Duration, spend_ttl: Duration) -> Self {
        Self {
            store,
            cache_ttl,
            spend_ttl,
            verified: Mutex::default(),
            limiters: Mutex::default(),
            spend: Mutex::default(),
        }
    }

    /// Whether keys are checked.
    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }

    /// The identity of a request's headers, or 401.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, ApiError> {
        let Some(store) = &self.store else {
            return Ok(Identity::Anonymous);
        };
        let token = bearer(headers).ok_or_else(|| {
            ApiError::unauthorized(
                "You didn't provide an API key: send it as `Authorization: Bearer trk_…` \
                 (triage-gateway keys create makes one)",
            )
        })?;
        let parts = api_key::parse(token).ok_or_else(|| {
            ApiError::unauthorized("Incorrect API key provided: not a Triage key")
        })?;
        let secret_digest = digest(parts.secret);
        if let Some(record) = self.remembered(parts.key_id, &secret_digest) {
            return Ok(Identity::Key(record));
        }
        let found = store
            .find(parts.key_id)
            .await
            .map_err(|e| ApiError::unavailable(format!("API keys cannot be checked now: {e}")))?;
        let unknown = || {
            ApiError::unauthorized(format!(
                "Incorrect API key provided: {}",
                redacted(parts.key_id)
            ))
        };
        let (record, hash) = found.ok_or_else(unknown)?;
        if !api_key::verify_secret(parts.secret, &hash) {
            return Err(unknown());
        }
        if record.revoked_at.is_some() {
            return Err(ApiError::unauthorized(format!(
                "The API key {} was revoked",
                redacted(parts.key_id)
            )));
        }
        let record = Arc::new(record);
        self.verified.lock().expect("auth cache").insert(
            parts.key_id.to_string(),
            Verified {
                record: record.clone(),
                secret_digest,
                at: Instant::now(),
            },
        );
        Ok(Identity::Key(record))
    }

    fn remembered(&self, key_id: &str, secret_digest: &[u8; 32]) -> Option<Arc<KeyRecord>> {
        let cache = self.verified.lock().expect("auth cache");
        let v = cache.get(key_id)?;
        (v.at.elapsed() < self.cache_ttl && v.secret_digest == *secret_digest)
            .then(|| v.record.clone())
    }

    /// Whether `identity` may ask `model` for about `tokens` tokens now:
    /// 404 for a model the key may not use, 429 for a rate.
    pub fn admit(&self, identity: &Identity, model: &str, tokens: u32) -> Result<(), ApiError> {
        let Identity::Key(key) = identity else {
            return Ok(());
        };
        if let Some(models) = &key.models {
            if !models.iter().any(|m| m == model) {
                return Err(ApiError::unknown_model(model));
            }
        }
        let limiters = self.limiters_of(key);
        let now = DefaultClock::default().now();
        let wait = |until: governor::NotUntil<_>| until.wait_time_from(now).as_secs() + 1;
        if let Some(l) = &limiters.requests {
            l.check().map_err(|until| {
                let secs = wait(until);
                ApiError::rate_limited(
                    "requests",
                    format!(
                        "Rate limit reached for {}: {} requests per minute; retry in {secs} s",
                        redacted(&key.key_id),
                        key.rpm.unwrap_or_default(),
                    ),
                    secs,
                )
            })?;
        }
        if let (Some(l), Some(n)) = (&limiters.tokens, NonZeroU32::new(tokens)) {
            let limit = key.tpm.unwrap_or_default();
            match l.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(until)) => {
                    let secs = wait(until);
                    return Err(ApiError::rate_limited(
                        "tokens",
                        format!(
                            "Rate limit reached for {}: {limit} tokens per minute, this request \
                             needs about {tokens}; retry in {secs} s",
                            redacted(&key.key_id),
                        ),
                        secs,
                    ));
                }
                Err(_) => {
                    return Err(ApiError::rate_limited(
                        "tokens",
                        format!(
                            "This request needs about {tokens} tokens, more than {}'s whole \
                             limit of {limit} per minute: lower max_tokens",
                            redacted(&key.key_id)
                        ),
                        60,
                    ))
                }
            }
        }
        Ok(())
    }

    fn limiters_of(&self, key: &KeyRecord) -> Arc<Limiters> {
        let mut all = self.limiters.lock().expect("limiters");
        all.entry(key.key_id.clone())
            .or_insert_with(|| {
                Arc::new(Limiters {
                    requests: per_minute(key.rpm),
                    tokens: per_minute(key.tpm),
                })
            })
            .clone()
    }

    /// 429 when the key's tenant has spent its daily budget.
    pub async fn within_budget(&self, identity: &Identity) -> Result<(), ApiError> {
        let (Identity::Key(key), Some(store)) = (identity, &self.store) else {
            return Ok(());
        };
        let Some(budget) = key.budget_usd_day else {
            return Ok(());
        };
        let cached = {
            let spend = self.spend.lock().expect("spend cache");
            spend
                .get(&key.tenant)
                .filter(|(_, at)| at.elapsed() < self.spend_ttl)
                .map(|(s, _)| *s)
        };
        let spent = match cached {
            Some(s) => s,
            None => {
                let s = store.spent_today(&key.tenant).await.map_err(|e| {
                    ApiError::unavailable(format!("the budget cannot be checked now: {e}"))
                })?;
                let mut spend = self.spend.lock().expect("spend cache");
                spend.insert(key.tenant.clone(), (s, Instant::now()));
                s
            }
        };
        if spent >= budget {
            let reset = until_midnight_utc();
            return Err(ApiError::budget_spent(
                format!(
                    "Tenant {} has spent ${spent:.4} of its ${budget} daily budget \
                     ({}); it resets at 00:00 UTC, in {reset} s",
                    key.tenant,
                    redacted(&key.key_id)
                ),
                reset,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<i32>, tpm: Option<i32>, models: Option<Vec<&str>>) -> Identity {
        Identity::Key(Arc::new(KeyRecord {
            key_id: "0123456789ab".into(),
            tenant: "acme".into(),
            rpm,
            tpm,
            budget_usd_day: None,
            models: models.map(|m| m.into_iter().map(String::from).collect()),
            created_at: chrono::Utc::now(),
            revoked_at: None,
        }))
    }

    fn auth() -> Authenticator {
        Authenticator::new(None, Duration::from_secs(30), Duration::from_secs(30))
    }

    #[test]
    fn the_bearer_token_is_read_case_insensitively() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "bearer trk_x_y".parse().unwrap());
        assert_eq!(bearer(&h), Some("trk_x_y"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn requests_per_minute_are_limited_with_a_retry_time() {
        let a = auth();
        let id = key(Some(2), None, None);
        a.admit(&id, "triage-auto", 10).unwrap();
        a.admit(&id, "triage-auto", 10).unwrap();
        let e = a.admit(&id, "triage-auto", 10).unwrap_err();
        assert_eq!(e.status, 429);
        assert_eq!(e.code.as_deref(), Some("rate_limit_exceeded"));
        assert!(e.message.contains("2 requests per minute"), "{}", e.message);
        assert!((1..=31).contains(&e.retry_after_s.unwrap()), "{e:?}");
    }

    #[test]
    fn tokens_per_minute_count_each_requests_estimate() {
        let a = auth();
        let id = key(None, Some(100), None);
        a.admit(&id, "triage-auto", 60).unwrap();
        let e = a.admit(&id, "triage-auto", 60).unwrap_err();
        assert!(e.message.contains("100 tokens per minute"), "{}", e.message);
        let e = a.admit(&id, "triage-auto", 500).unwrap_err();
        assert!(e.message.contains("lower max_tokens"), "{}", e.message);
    }

    #[test]
    fn a_key_limited_to_some_models_gets_404_for_others() {
        let a = auth();
        let id = key(None, None, Some(vec!["triage-tier1"]));
        a.admit(&id, "triage-tier1", 1).unwrap();
        assert_eq!(a.admit(&id, "triage-tier2", 1).unwrap_err().status, 404);
        assert!(a.admit(&Identity::Anonymous, "triage-tier2", 1).is_ok());
    }

    #[test]
    fn budgets_reset_at_the_next_utc_midnight() {
        assert!((1..=86_400).contains(&until_midnight_utc()));
    }
}
