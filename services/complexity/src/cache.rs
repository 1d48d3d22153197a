//! A bounded LRU of scores, keyed by a hash of the truncated text, so
//! repeated prompts (retries, templated traffic) skip the model.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;
use sha2::{Digest, Sha256};

/// SHA-256 of the scored text.
pub type CacheKey = [u8; 32];

/// The key for a truncated text.
pub fn cache_key(text: &str) -> CacheKey {
    Sha256::digest(text.as_bytes()).into()
}

/// What is remembered for a text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CachedScore {
    /// The embedding stage's probability.
    pub embedding: f64,
    /// Which stage produced it (`true`: the static first stage settled it).
    pub settled_by_first_stage: bool,
    /// The LLM self-rating, when one succeeded (failures are not cached so
    /// they are retried).
    pub llm: Option<f64>,
    /// The generation of the head that gave `embedding` (a model score of
    /// an earlier head is not reused after a swap).
    pub head: u64,
}

/// Thread-safe LRU; capacity 0 disables it.
pub struct ScoreCache {
    inner: Option<Mutex<LruCache<CacheKey, CachedScore>>>,
}

impl ScoreCache {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    /// The remembered score, refreshing its recency.
    pub fn get(&self, key: &CacheKey) -> Option<CachedScore> {
        let inner = self.inner.as_ref()?;
        let mut lru = inner.lock().unwrap_or_else(|e| e.into_inner());
        lru.get(key).copied()
    }

    /// Remembers a score, evicting the least recently used beyond capacity.
    pub fn put(&self, key: CacheKey, score: CachedScore) {
        if let Some(inner) = &self.inner {
            let mut lru = inner.lock().unwrap_or_else(|e| e.into_inner());
            lru.put(key, score);
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |m| m.lock().unwrap_or_else(|e| e.into_inner()).len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(e: f64) -> CachedScore {
        CachedScore {
            embedding: e,
            settled_by_first_stage: false,
            llm: None,
            head: 0,
        }
    }

    #[test]
    fn remembers_and_evicts_least_recently_used() {
        let cache = ScoreCache::new(2);
        let (a, b, c) = (cache_key("a"), cache_key("b"), cache_key("c"));
        cache.put(a, score(0.1));
        cache.put(b, score(0.2));
        assert_eq!(cache.get(&a), Some(score(0.1))); // a now most recent
        cache.put(c, score(0.3)); // evicts b
        assert_eq!(cache.get(&b), None);
        assert_eq!(cache.get(&c), Some(score(0.3)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn zero_capacity_disables() {
        let cache = ScoreCache::new(0);
        cache.put(cache_key("a"), score(0.1));
        assert_eq!(cache.get(&cache_key("a")), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn key_depends_on_every_byte() {
        assert_ne!(cache_key("abc"), cache_key("abd"));
        assert_eq!(cache_key("abc"), cache_key("abc"));
    }
}
