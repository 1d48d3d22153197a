//! Chunk coalescing (pure; time is passed in).
//!
//! Time to first token matters most, so the first delta of an attempt goes
//! out at once. After that, deltas arriving within `interval` of the first
//! pending one are joined into one chunk: fewer NATS messages for the same
//! text, at the cost of at most `interval` extra latency per chunk.

use std::time::{Duration, Instant};

/// Joins deltas into chunks.
#[derive(Debug)]
pub struct Coalescer {
    interval: Duration,
    pending: String,
    flush_at: Option<Instant>,
    sent_first: bool,
}

impl Coalescer {
    /// A coalescer; a zero `interval` passes every delta through.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            pending: String::new(),
            flush_at: None,
            sent_first: false,
        }
    }

    /// Adds a delta received at `now`; returns text to send now, if any.
    pub fn push(&mut self, delta: &str, now: Instant) -> Option<String> {
        if delta.is_empty() {
            return self.due(now);
        }
        if !self.sent_first || self.interval.is_zero() {
            self.sent_first = true;
            // Anything pending (only possible with a zero interval) goes first.
            self.pending.push_str(delta);
            self.flush_at = None;
            return Some(std::mem::take(&mut self.pending));
        }
        self.pending.push_str(delta);
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.interval);
        }
        self.due(now)
    }

    /// When pending text must go out, if any is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.flush_at
    }

    /// Pending text whose time has come.
    pub fn due(&mut self, now: Instant) -> Option<String> {
        match self.flush_at {
            Some(at) if now >= at => self.flush(),
            _ => None,
        }
    }

    /// All pending text, regardless of time (end of stream).
    pub fn flush(&mut self) -> Option<String> {
        self.flush_at = None;
        if self.pending.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.pending))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_delta_goes_at_once_then_deltas_are_joined() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = Coalescer::new(Duration::from_millis(10));
        assert_eq!(c.push("Hel", t0).as_deref(), Some("Hel"));
        assert_eq!(c.push("lo", ms(1)), None);
        assert_eq!(c.deadline(), Some(ms(11)));
        assert_eq!(c.push(",", ms(5)), None);
        assert_eq!(c.due(ms(10)), None);
        assert_eq!(c.due(ms(11)).as_deref(), Some("lo,"));
        assert_eq!(c.deadline(), None);
        // A delta arriving after the deadline passed is sent with the rest.
        assert_eq!(c.push(" wor", ms(20)), None);
        assert_eq!(c.push("ld", ms(31)).as_deref(), Some(" world"));
        assert_eq!(c.push("!", ms(32)), None);
        assert_eq!(c.flush().as_deref(), Some("!"));
        assert_eq!(c.flush(), None);
    }

    #[test]
    fn zero_interval_passes_everything_through() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::ZERO);
        for d in ["a", "b", "c"] {
            assert_eq!(c.push(d, t0).as_deref(), Some(d));
        }
        assert_eq!(c.push("", t0), None);
        assert_eq!(c.flush(), None);
    }

    #[test]
    fn text_is_never_lost_or_reordered() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_millis(3));
        let mut out = String::new();
        let mut sent = 0;
        for i in 0..100u64 {
            let delta = format!("{i},");
            if let Some(s) = c.push(&delta, t0 + Duration::from_millis(i)) {
                out.push_str(&s);
                sent += 1;
            }
        }
        out.push_str(&c.flush().unwrap_or_default());
        let expected: String = (0..100).map(|i| format!("{i},")).collect();
        assert_eq!(out, expected);
        assert!(sent < 50, "coalescing should cut messages: {sent}");
    }
}
