//! The circuit breaker of one backend (pure; time is passed in).
//!
//! Closed: the backend takes requests; consecutive failures (retryable
//! request failures or failed health checks) are counted, and reaching the
//! threshold opens the breaker. Open: the backend takes nothing until
//! `open_for` has passed. Half-open: the next health check decides — success
//! closes it, failure opens it again. A backend's 4xx answers (a bad
//! request) are not its fault and never count.

use std::time::{Duration, Instant};

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Healthy: takes requests.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Taken out until `until`.
    Open {
        /// When it may be probed again.
        until: Instant,
    },
    /// Waiting for a probe to decide.
    HalfOpen,
}

/// One backend's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures
    /// and stays open for `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            state: BreakerState::Closed { failures: 0 },
            threshold: threshold.max(1),
            open_for,
        }
    }

    /// The state at `now` (an expired open state reads as half-open).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        if let BreakerState::Open { until } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen;
            }
        }
        self.state
    }

    /// Whether requests may go to the backend now.
    pub fn allows_requests(&mut self, now: Instant) -> bool {
        matches!(self.state(now), BreakerState::Closed { .. })
    }

    /// Whether a health check should run now: always, except while open.
    pub fn wants_probe(&mut self, now: Instant) -> bool {
        !matches!(self.state(now), BreakerState::Open { .. })
    }

    /// A request or health check succeeded.
    pub fn record_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// A request failed in a way that may be the backend's fault, or a
    /// health check failed. Returns true if this opened the breaker.
    pub fn record_failure(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    self.state = BreakerState::Open {
                        until: now + self.open_for,
                    };
                    true
                } else {
                    self.state = BreakerState::Closed { failures };
                    false
                }
            }
            BreakerState::HalfOpen => {
                self.state = BreakerState::Open {
                    until: now + self.open_for,
                };
                true
            }
            BreakerState::Open { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_reprobes_after_open_for() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert!(b.allows_requests(t0));
        assert!(!b.record_failure(t0));
        assert!(!b.record_failure(t0));
        assert!(b.allows_requests(t0));
        assert!(b.record_failure(t0), "third failure opens");
        assert!(!b.allows_requests(t0));
        assert!(!b.wants_probe(t0 + Duration::from_secs(9)));
        // After open_for: half-open, probed, not yet taking requests.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.wants_probe(t1));
        assert!(!b.allows_requests(t1));
        // A failed probe opens it again at once.
        assert!(b.record_failure(t1));
        assert!(!b.allows_requests(t1 + Duration::from_secs(5)));
        // A successful probe closes it.
        let t2 = t1 + Duration::from_secs(10);
        assert!(b.wants_probe(t2));
        b.record_success();
        assert!(b.allows_requests(t2));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.record_failure(t0);
        b.record_success();
        assert!(!b.record_failure(t0));
        assert!(b.allows_requests(t0));
    }
}
