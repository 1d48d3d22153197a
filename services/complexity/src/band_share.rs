//! What the first stage decides for a text of its band that the
//! transformer had no time for (the router's `batching.model_budget`).
//!
//! The band holds the texts the first stage is unsure of, and it lies below
//! the routing threshold ([0.35, 0.65) against 0.65 as shipped), so a band
//! score compared with the threshold always says tier 1: with the band
//! emptied the tier-2 share of dev fell from 34.1% to 28.8%. The
//! transformer sends some of those texts to tier 2. A [`BandShare`]
//! remembers the first stage's scores of the band texts the transformer
//! did score, and how many of them it sent to tier 2, and answers the
//! first-stage score at or above which that same share of them lies: a
//! text the budget hands to the first stage goes to tier 2 as often as the
//! transformer would have sent it, ranked by the first stage (whose
//! ranking is nearly the transformer's: dev ROC AUC 0.584 against 0.586).
//! The window belongs to one transformer head: a promoted head decides on
//! a scale of its own, so its first text starts the window over.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::share_threshold::ShareThreshold;

/// Band texts remembered: about ten thousand requests at the shipped
/// band's ~21% of traffic.
pub const WINDOW: usize = 2000;

/// Band texts seen before the share is trusted; until then a budgeted
/// text is compared with the routing threshold, which sends none of them
/// to tier 2. Few, because any estimate beats that: the share of 50 has a
/// standard error of 6 points at the shipped band's 29%, and under load
/// most band texts are budgeted, so the window fills slowly (a run of
/// 1,024 dev requests at 742/s let the transformer score about 40).
pub const MIN_SCORES: usize = 50;

/// The transformer's tier-2 share of the first stage's band, in the first
/// stage's scores; shared between threads (one short lock per text).
#[derive(Debug)]
pub struct BandShare {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    scores: ShareThreshold,
    tier2: VecDeque<bool>,
    sent: usize,
    size: usize,
    min_scores: usize,
    /// The version of the head whose decisions are remembered.
    head: Option<String>,
}

impl Window {
    fn new(size: usize, min_scores: usize) -> Self {
        let size = size.max(1);
        Self {
            // The target is unused: the share comes from `tier2`.
            scores: ShareThreshold::new(0.5, size, 1),
            tier2: VecDeque::with_capacity(size),
            sent: 0,
            size,
            min_scores: min_scores.clamp(1, size),
            head: None,
        }
    }
}

impl BandShare {
    /// An empty window of `size` band texts, trusted after `min_scores`.
    pub fn new(size: usize, min_scores: usize) -> Self {
        Self {
            window: Mutex::new(Window::new(size, min_scores)),
        }
    }

    /// The transformer, with the head of version `head`, scored a band
    /// text whose first-stage score is `first_stage` and sent it to tier 2
    /// or not. Another head than before starts the window over;
    /// non-finite scores are ignored.
    pub fn observe(&self, head: &str, first_stage: f64, tier2: bool) {
        if !first_stage.is_finite() {
            return;
        }
        let mut w = self.lock();
        if w.head.as_deref() != Some(head) {
            *w = Window::new(w.size, w.min_scores);
            w.head = Some(head.to_owned());
        }
        if w.tier2.len() == w.size && w.tier2.pop_front() == Some(true) {
            w.sent -= 1;
        }
        w.tier2.push_back(tier2);
        w.sent += usize::from(tier2);
        // Same size as `tier2`, so both forget the same text.
        w.scores.observe(first_stage);
    }

    /// The first-stage score at or above which the tier-2 share that the
    /// head of version `head` gave the remembered band texts lies; `None`
    /// before `min_scores` of its texts, or when it sent none of them to
    /// tier 2 (then the routing threshold, above the band, sends none
    /// either).
    pub fn threshold(&self, head: &str) -> Option<f64> {
        let w = self.lock();
        let n = w.tier2.len();
        if w.head.as_deref() != Some(head) || n < w.min_scores || w.sent == 0 {
            return None;
        }
        w.scores.threshold_at(w.sent as f64 / n as f64)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for BandShare {
    fn default() -> Self {
        Self::new(WINDOW, MIN_SCORES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "sha256:aaaaaaaaaaaa";

    #[test]
    fn nothing_is_answered_before_the_window_is_trusted() {
        let band = BandShare::new(100, 10);
        for i in 0..9 {
            band.observe(H, 0.4 + f64::from(i) / 100.0, true);
        }
        assert_eq!(band.threshold(H), None);
        band.observe(H, 0.5, true);
        assert!(band.threshold(H).is_some());
    }

    #[test]
    fn the_threshold_puts_the_transformers_share_above_it() {
        let band = BandShare::new(1000, 10);
        // 100 band texts at 0.35..0.65; the transformer sent 25 of them
        // to tier 2 (which ones does not matter: only the share does).
        for i in 0..100 {
            band.observe(H, 0.35 + 0.003 * f64::from(i), i % 4 == 0);
        }
        let t = band.threshold(H).expect("warm");
        let above = (0..100)
            .filter(|i| 0.35 + 0.003 * f64::from(*i) >= t)
            .count();
        assert_eq!(above, 25, "threshold {t}");
    }

    #[test]
    fn no_tier2_in_the_band_means_no_threshold() {
        let band = BandShare::new(100, 10);
        for i in 0..50 {
            band.observe(H, 0.4 + f64::from(i) / 1000.0, false);
        }
        assert_eq!(band.threshold(H), None);
    }

    #[test]
    fn the_window_forgets_the_oldest_texts_and_their_decisions() {
        let band = BandShare::new(10, 10);
        // Ten texts all sent to tier 2, then ten that were not, with one
        // exception: only the last ten count.
        for i in 0..10 {
            band.observe(H, 0.6 + f64::from(i) / 1000.0, true);
        }
        for i in 0..10 {
            band.observe(H, 0.4 + f64::from(i) / 100.0, i == 0);
        }
        // One in ten: the highest of the remaining scores.
        assert_eq!(band.threshold(H), Some(0.4 + 9.0 / 100.0));
    }

    #[test]
    fn another_head_starts_the_window_over() {
        let band = BandShare::new(100, 10);
        for i in 0..20 {
            band.observe(H, 0.4 + f64::from(i) / 100.0, true);
        }
        assert!(band.threshold(H).is_some());
        const NEW: &str = "sha256:bbbbbbbbbbbb";
        assert_eq!(band.threshold(NEW), None, "the new head has no texts yet");
        band.observe(NEW, 0.5, true);
        assert_eq!(band.threshold(H), None, "the old head's texts are gone");
        assert_eq!(band.threshold(NEW), None, "one text is not enough");
        band.observe(NEW, f64::NAN, true);
        for i in 0..9 {
            band.observe(NEW, 0.4 + f64::from(i) / 100.0, false);
        }
        assert!(band.threshold(NEW).is_some(), "NaN ignored, ten texts seen");
    }
}
