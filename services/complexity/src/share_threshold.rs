//! Thresholds that keep a traffic share instead of a score.
//!
//! A threshold chosen on training data is a pair of things at once: a
//! score and the share of traffic at or above it. When live traffic scores
//! lower or higher than the training file (dev's open-ended prompts score
//! lower than train's), the score keeps its value and the share drifts, so
//! a policy chosen to spend half of all-tier-2 spends 0.40. A
//! [`ShareThreshold`] keeps the share: it remembers the last `window`
//! scores and puts the threshold where `target` of them are at or above it
//! (the router README's "Thresholds as shares" has the evidence). Until it
//! has seen `min_scores` scores it answers with the fixed threshold it was
//! given, so a restart starts from the score threshold and moves off it as
//! traffic arrives.
//!
//! The window is a ring of arrival order plus the same scores sorted; each
//! score costs one binary search and one shift of at most `window` values
//! (0.24–0.29 µs a score at the default 2,000, 2.0–2.5 µs at 20,000, lock
//! included, on a 2-core EPYC: `cargo run --release -p triage-complexity
//! --example share_threshold_cost`).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The `share` section of a threshold (`scoring.share`, `verify.share`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShareConfig {
    /// Share (0–1, exclusive) of recent scores at or above the threshold;
    /// none: the fixed score threshold.
    pub target: Option<f64>,
    /// Recent scores the share is kept over.
    pub window: usize,
    /// Scores seen before the share replaces the fixed threshold.
    pub min_scores: usize,
}

impl Default for ShareConfig {
    fn default() -> Self {
        Self {
            target: None,
            window: 2000,
            min_scores: 200,
        }
    }
}

impl ShareConfig {
    /// Checks the values; `key` names the section in the message
    /// (e.g. `scoring.share`).
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if let Some(t) = self.target {
            if !(t > 0.0 && t < 1.0) {
                return Err(format!(
                    "{key}.target is a share of traffic: it must be between 0 and 1 (exclusive), got {t}"
                ));
            }
        }
        if self.window == 0 {
            return Err(format!("{key}.window must be at least 1"));
        }
        if self.min_scores == 0 || self.min_scores > self.window {
            return Err(format!(
                "{key}.min_scores must be between 1 and {key}.window ({}), got {}",
                self.window, self.min_scores
            ));
        }
        Ok(())
    }
}

/// The last scores seen and the threshold that keeps the target share.
#[derive(Debug, Clone)]
pub struct ShareThreshold {
    target: f64,
    window: usize,
    min_scores: usize,
    arrivals: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl ShareThreshold {
    /// An empty window keeping `target` (0–1, see
    /// [`ShareConfig::validate`]) of the last `window` scores.
    pub fn new(target: f64, window: usize, min_scores: usize) -> Self {
        Self {
            target,
            window: window.max(1),
            min_scores: min_scores.max(1),
            arrivals: VecDeque::with_capacity(window),
            sorted: Vec::with_capacity(window),
        }
    }

    /// Remembers `score`, forgetting the oldest once the window is full.
    /// Non-finite scores are ignored.
    pub fn observe(&mut self, score: f64) {
        if !score.is_finite() {
            return;
        }
        if self.arrivals.len() == self.window {
            if let Some(old) = self.arrivals.pop_front() {
                let at = self.sorted.partition_point(|v| v.total_cmp(&old).is_lt());
                self.sorted.remove(at);
            }
        }
        self.arrivals.push_back(score);
        let at = self.sorted.partition_point(|v| v.total_cmp(&score).is_lt());
        self.sorted.insert(at, score);
    }

    /// Scores remembered.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The lowest of the top `target` share of remembered scores (at least
    /// one of them), or `None` before `min_scores` have been seen.
    pub fn threshold(&self) -> Option<f64> {
        self.threshold_at(self.target)
    }

    /// The same for a `share` other than the target (0–1).
    pub fn threshold_at(&self, share: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n < self.min_scores {
            return None;
        }
        let top = ((share * n as f64).ceil() as usize).clamp(1, n);
        Some(self.sorted[n - top])
    }
}

/// A fixed threshold, or one keeping a share of traffic; shared between
/// threads (one short lock per score).
#[derive(Debug)]
pub struct TrackedThreshold {
    fixed: f64,
    share: Option<Mutex<ShareThreshold>>,
}

impl TrackedThreshold {
    /// `fixed` alone when `config.target` is unset; otherwise a share
    /// window that answers `fixed` until it has `min_scores` scores.
    pub fn new(fixed: f64, config: &ShareConfig) -> Self {
        let share = config
            .target
            .map(|t| Mutex::new(ShareThreshold::new(t, config.window, config.min_scores)));
        Self { fixed, share }
    }

    /// Whether the threshold follows a share of traffic.
    pub fn keeps_share(&self) -> bool {
        self.share.is_some()
    }

    /// Counts `score` as traffic and returns the threshold to compare it
    /// with (the window includes it).
    pub fn observe(&self, score: f64) -> f64 {
        match &self.share {
            None => self.fixed,
            Some(window) => {
                let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
                w.observe(score);
                w.threshold().unwrap_or(self.fixed)
            }
        }
    }

    /// The threshold now, without counting anything.
    pub fn current(&self) -> f64 {
        match &self.share {
            None => self.fixed,
            Some(window) => window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .threshold()
                .unwrap_or(self.fixed),
        }
    }

    /// Forgets every score (a new head scores on another scale).
    pub fn reset(&self) {
        if let Some(window) = &self.share {
            let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
            *w = ShareThreshold::new(w.target, w.window, w.min_scores);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_keeps_the_target_share_of_the_window() {
        let mut s = ShareThreshold::new(0.25, 100, 10);
        for i in 0..100 {
            s.observe(f64::from(i) / 100.0);
        }
        let t = s.threshold().unwrap();
        assert_eq!(t, 0.75);
        let above = (0..100).filter(|i| f64::from(*i) / 100.0 >= t).count();
        assert_eq!(above, 25);
    }

    #[test]
    fn the_fixed_threshold_answers_until_min_scores_are_seen() {
        let config = ShareConfig {
            target: Some(0.5),
            window: 10,
            min_scores: 3,
        };
        let t = TrackedThreshold::new(0.65, &config);
        assert_eq!(t.observe(0.1), 0.65);
        assert_eq!(t.observe(0.2), 0.65);
        // Three scores: the top half (two of them) are at or above 0.2.
        assert_eq!(t.observe(0.3), 0.2);
        assert_eq!(t.current(), 0.2);
        t.reset();
        assert_eq!(t.current(), 0.65);
    }

    #[test]
    fn old_scores_leave_the_window() {
        let mut s = ShareThreshold::new(0.5, 4, 4);
        for v in [0.9, 0.9, 0.9, 0.9] {
            s.observe(v);
        }
        assert_eq!(s.threshold(), Some(0.9));
        for v in [0.1, 0.2, 0.3, 0.4] {
            s.observe(v);
        }
        assert_eq!(s.len(), 4);
        assert_eq!(s.threshold(), Some(0.3));
    }

    #[test]
    fn ties_and_duplicates_are_removed_one_at_a_time() {
        let mut s = ShareThreshold::new(0.5, 3, 1);
        for v in [0.5, 0.5, 0.2, 0.7] {
            s.observe(v);
        }
        // 0.5 left once; 0.5, 0.2, 0.7 remain.
        assert_eq!(s.len(), 3);
        assert_eq!(s.threshold(), Some(0.5));
        s.observe(f64::NAN);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_shifted_score_distribution_keeps_its_share() {
        // Traffic scoring lower than the training scale (0 to 0.8): a fixed
        // 0.65 sends 19%, the share keeps 35%.
        let config = ShareConfig {
            target: Some(0.35),
            window: 1000,
            min_scores: 100,
        };
        let t = TrackedThreshold::new(0.65, &config);
        // Every value of [0, 0.8) in steps of 0.0008, in a shuffled order.
        let scores: Vec<f64> = (0..2000)
            .map(|i| f64::from((i * 7919) % 1000) / 1000.0 * 0.8)
            .collect();
        let sent = scores.iter().filter(|s| **s >= t.observe(**s)).count();
        let fixed = scores.iter().filter(|s| **s >= 0.65).count();
        assert!((fixed as f64 / 2000.0 - 0.19).abs() < 0.01, "{fixed}");
        let share = sent as f64 / 2000.0;
        assert!((share - 0.35).abs() < 0.03, "{share}");
    }

    #[test]
    fn invalid_settings_name_the_key() {
        let mut c = ShareConfig {
            target: Some(1.0),
            ..ShareConfig::default()
        };
        assert!(c
            .validate("scoring.share")
            .unwrap_err()
            .contains("scoring.share.target"));
        c.target = Some(0.3);
        assert!(c.validate("x").is_ok());
        c.min_scores = c.window + 1;
        assert!(c
            .validate("verify.share")
            .unwrap_err()
            .contains("verify.share.min_scores"));
        c.min_scores = 1;
        c.window = 0;
        assert!(c.validate("x").unwrap_err().contains("x.window"));
    }
}
