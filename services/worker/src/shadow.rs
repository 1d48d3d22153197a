//! Shadow sampling: a configured share of answered requests is also
//! answered by the other tier in the background, and a judge grades both
//! answers (`triage-shadow`). This module decides which requests and keeps
//! the text streamed to the client of a sampled one; the outbox publishes
//! its [`ShadowJob`] on `llm.shadow` once the client has its answer
//! ([`crate::outbox::Outbox::offer_shadow`]).
//!
//! Best effort by design: the job is published once, after the final
//! reply, and a failure is counted and logged — it never fails, delays
//! (beyond that one publish) or repeats the client's answer. The choice is
//! a hash of (tenant, request id), so a redelivery or the other tier's
//! worker (after an escalation) decides the same way; both tiers' workers
//! need the same `shadow` settings.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use triage_protocol::{Completion, Request, RequestKey, ShadowJob};

/// Which answered requests get a shadow answer (`[shadow]` in TOML).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShadowConfig {
    /// Share of answered requests sampled, 0 to 1 (0: off).
    pub fraction: f64,
    /// Shares per tenant (`shadow.tenants.acme = 0.5`), instead of
    /// `fraction`.
    pub tenants: BTreeMap<String, f64>,
}

impl ShadowConfig {
    /// The share that applies to `tenant`'s requests.
    pub fn fraction_for(&self, tenant: Option<&str>) -> f64 {
        tenant
            .and_then(|t| self.tenants.get(t).copied())
            .unwrap_or(self.fraction)
    }

    /// Whether the request `id` of `tenant` is shadowed: the same answer
    /// on every delivery and in every worker.
    pub fn sampled(&self, tenant: Option<&str>, id: &str) -> bool {
        let fraction = self.fraction_for(tenant);
        fraction > 0.0 && unit_hash(RequestKey::new(tenant, id)) < fraction
    }

    /// Every share must be a fraction.
    pub fn check(&self) -> Result<(), String> {
        let bad = |key: String, f: f64| format!("{key} must be between 0 and 1, got {f}");
        if !(0.0..=1.0).contains(&self.fraction) {
            return Err(bad("shadow.fraction".into(), self.fraction));
        }
        match self.tenants.iter().find(|(_, f)| !(0.0..=1.0).contains(*f)) {
            Some((t, f)) => Err(bad(format!("shadow.tenants.{t}"), *f)),
            None => Ok(()),
        }
    }
}

/// A request key mapped to [0, 1) by FNV-1a (64 bit) and MurmurHash3's
/// 64-bit finaliser: fixed by their definitions, unlike std's hasher, so
/// every build samples alike. (FNV-1a alone leaves its high bits poorly
/// mixed for ids that differ in their last characters: a 0.3 share sampled
/// 4.5% of `req-0` … `req-1999`.)
fn unit_hash(key: RequestKey<'_>) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.tokens().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A sampled request: what its job needs, and the text of the attempt
/// streaming to its client (a streamed completion carries no text).
#[derive(Debug)]
pub struct Sample {
    request: Request,
    /// (attempt, its text so far): a restarted attempt starts over.
    streamed: Mutex<(u32, String)>,
}

impl Sample {
    /// Keeps `request` without its reply subject: the shadow answers no one.
    pub fn new(request: &Request) -> Self {
        let mut request = request.clone();
        request.reply_to = None;
        request.keep_result = false;
        Self {
            request,
            streamed: Mutex::new((0, String::new())),
        }
    }

    /// Notes a chunk sent to the client.
    pub fn chunk(&self, attempt: u32, delta: &str) {
        let mut s = self.streamed.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 != attempt {
            *s = (attempt, String::new());
        }
        s.1.push_str(delta);
    }

    /// The job for `completion`, if its text is known.
    pub fn job(&self, completion: &Completion) -> Option<ShadowJob> {
        let answer = match &completion.text {
            Some(text) => text.clone(),
            None => {
                let s = self.streamed.lock().unwrap_or_else(|p| p.into_inner());
                (s.0 == completion.attempt).then(|| s.1.clone())?
            }
        };
        Some(ShadowJob {
            version: triage_protocol::SCHEMA_VERSION,
            request: self.request.clone(),
            tier: completion.tier,
            model: completion.model.clone(),
            attempt: completion.attempt,
            answer,
            answered_at_ms: triage_protocol::now_ms(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(fraction: f64) -> ShadowConfig {
        ShadowConfig {
            fraction,
            tenants: BTreeMap::from([("all".to_string(), 1.0), ("none".to_string(), 0.0)]),
        }
    }

    #[test]
    fn sampling_is_a_fixed_function_of_tenant_and_id() {
        let c = config(0.3);
        let ids: Vec<String> = (0..2000).map(|i| format!("req-{i}")).collect();
        let first: Vec<bool> = ids.iter().map(|id| c.sampled(Some("t"), id)).collect();
        let again: Vec<bool> = ids.iter().map(|id| c.sampled(Some("t"), id)).collect();
        assert_eq!(first, again, "a redelivery decides the same way");
        let share = first.iter().filter(|s| **s).count() as f64 / ids.len() as f64;
        assert!((share - 0.3).abs() < 0.05, "sampled share {share}");
        // The tenant is part of the key: another tenant's sample differs.
        let other: Vec<bool> = ids.iter().map(|id| c.sampled(Some("u"), id)).collect();
        assert_ne!(first, other);
    }

    #[test]
    fn zero_samples_nothing_one_everything_and_tenants_override() {
        let c = config(0.0);
        assert!((0..500).all(|i| !c.sampled(None, &format!("r{i}"))));
        assert!((0..500).all(|i| c.sampled(Some("all"), &format!("r{i}"))));
        let c = config(1.0);
        assert!((0..500).all(|i| c.sampled(None, &format!("r{i}"))));
        assert!((0..500).all(|i| !c.sampled(Some("none"), &format!("r{i}"))));
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused_by_name() {
        assert!(config(0.5).check().is_ok());
        assert!(config(1.5).check().unwrap_err().contains("shadow.fraction"));
        let mut c = config(0.5);
        c.tenants.insert("acme".into(), -0.1);
        assert!(c.check().unwrap_err().contains("shadow.tenants.acme"));
    }

    #[test]
    fn the_job_carries_the_streamed_text_of_the_answering_attempt() {
        let mut req = Request::from_prompt("hi");
        req.id = "r1".into();
        req.reply_to = Some("_INBOX.x".into());
        let s = Sample::new(&req);
        s.chunk(1, "void");
        s.chunk(2, "Hello, ");
        s.chunk(2, "world");
        let completion = Completion {
            id: "r1".into(),
            attempt: 2,
            finish_reason: "stop".into(),
            usage: Default::default(),
            tier: triage_protocol::Tier::Small,
            model: "small".into(),
            ttft_ms: 1.0,
            total_ms: 2.0,
            chunks: 2,
            text_bytes: None,
            text: None,
            routing: None,
            logprobs: None,
            alternatives: Vec::new(),
        };
        let job = s.job(&completion).unwrap();
        assert_eq!(job.answer, "Hello, world");
        assert_eq!(job.request.reply_to, None, "the shadow answers no one");
        assert_eq!((job.tier, job.attempt), (triage_protocol::Tier::Small, 2));
        let other_attempt = Completion {
            attempt: 3,
            ..completion
        };
        assert!(s.job(&other_attempt).is_none());
    }
}
