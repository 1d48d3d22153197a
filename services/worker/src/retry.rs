//! Retry decisions (pure apart from the backoff clock).
//!
//! What is retried: connection errors, timeouts (to the first byte, between
//! chunks), 408/429/5xx, broken streams and error events inside a stream —
//! never another 4xx, which would fail the same way again. How: exponential
//! backoff with jitter from the `backoff` crate, bounded by a number of
//! calls, a number of restarts after text reached the client, and a total
//! time. Exhausting the budget is what escalates tier 1 to tier 2.

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use triage_backend::BackendError;
use triage_protocol::ErrorCode;

use crate::config::RetryConfig;

/// What a failed backend call means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureClass {
    /// Worth trying again, maybe on another backend; counts against the
    /// backend's breaker.
    Retryable,
    /// The backend refused the request itself; final, the backend is fine.
    Rejected {
        /// `context_length_exceeded` or `backend_rejected`.
        code: ErrorCode,
        /// The backend's message, quoted to the client.
        message: String,
    },
}

/// Classifies a backend error.
pub fn classify(error: &BackendError) -> FailureClass {
    if error.is_retryable() {
        return FailureClass::Retryable;
    }
    let code = if error.is_context_length() {
        ErrorCode::ContextLengthExceeded
    } else {
        ErrorCode::BackendRejected
    };
    let message = match error {
        BackendError::Status { status, error } => {
            format!("backend answered HTTP {status}: {:?}", error.message)
        }
        other => other.to_string(),
    };
    FailureClass::Rejected { code, message }
}

/// Why retrying stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// `max_attempts` calls made.
    Attempts,
    /// `max_restarts` streams restarted after text reached the client.
    Restarts,
    /// `max_elapsed` spent.
    Time,
}

impl Exhausted {
    /// For logs and error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Exhausted::Attempts => "all attempts failed",
            Exhausted::Restarts => "too many restarts of a broken stream",
            Exhausted::Time => "retry time limit reached",
        }
    }
}

/// What to do after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait this long, then call again (a new attempt).
    RetryAfter(Duration),
    /// Give up.
    GiveUp(Exhausted),
}

/// The retry budget of one delivery of one request.
#[derive(Debug)]
pub struct RetryBudget {
    max_attempts: u32,
    max_restarts: u32,
    backoff: ExponentialBackoff,
    calls: u32,
    restarts: u32,
}

impl RetryBudget {
    /// A fresh budget.
    pub fn new(config: &RetryConfig) -> Self {
        let backoff = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(config.initial_interval)
            .with_multiplier(config.multiplier)
            .with_max_interval(config.max_interval)
            .with_randomization_factor(config.randomization_factor)
            .with_max_elapsed_time(Some(config.max_elapsed))
            .build();
        Self {
            max_attempts: config.max_attempts.max(1),
            max_restarts: config.max_restarts,
            backoff,
            calls: 0,
            restarts: 0,
        }
    }

    /// Records that a call is about to be made; returns its index within
    /// this delivery (0 for the first).
    pub fn begin_call(&mut self) -> u32 {
        self.calls += 1;
        self.calls - 1
    }

    /// Calls made so far.
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// Streams restarted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Decides after a retryable failure. `reached_client` says whether the
    /// failed attempt had already sent chunks (so retrying is a restart).
    pub fn after_failure(&mut self, reached_client: bool) -> Next {
        if reached_client {
            self.restarts += 1;
            if self.restarts > self.max_restarts {
                return Next::GiveUp(Exhausted::Restarts);
            }
        }
        if self.calls >= self.max_attempts {
            return Next::GiveUp(Exhausted::Attempts);
        }
        match self.backoff.next_backoff() {
            Some(wait) => Next::RetryAfter(wait),
            None => Next::GiveUp(Exhausted::Time),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_backend::{ApiError, TimeoutPhase};

    fn status(code: u16, message: &str) -> BackendError {
        BackendError::Status {
            status: code,
            error: ApiError {
                message: message.into(),
                error_type: Some("BadRequestError".into()),
                code: None,
            },
        }
    }

    fn steady(max_attempts: u32, max_restarts: u32) -> RetryConfig {
        RetryConfig {
            max_attempts,
            max_restarts,
            initial_interval: Duration::from_millis(100),
            multiplier: 2.0,
            max_interval: Duration::from_millis(300),
            randomization_factor: 0.0,
            max_elapsed: Duration::from_secs(3600),
        }
    }

    #[test]
    fn retryable_and_final_failures() {
        for e in [
            status(429, "slow down"),
            status(500, "boom"),
            status(503, "busy"),
            BackendError::Connect {
                url: "u".into(),
                message: "refused".into(),
            },
            BackendError::Timeout {
                phase: TimeoutPhase::FirstByte,
                after: Duration::from_secs(1),
            },
            BackendError::Timeout {
                phase: TimeoutPhase::Idle,
                after: Duration::from_secs(1),
            },
            BackendError::StreamBroken {
                events: 4,
                reason: "reset".into(),
            },
        ] {
            assert_eq!(classify(&e), FailureClass::Retryable, "{e}");
        }
        let ctx = classify(&status(
            400,
            "This model's maximum context length is 100 tokens.",
        ));
        assert!(matches!(
            ctx,
            FailureClass::Rejected { code: ErrorCode::ContextLengthExceeded, ref message }
                if message.contains("maximum context length is 100")
        ));
        for code in [400, 401, 404, 422] {
            let c = classify(&status(code, "nope"));
            assert!(
                matches!(c, FailureClass::Rejected { code: ErrorCode::BackendRejected, ref message }
                    if message.contains("nope") && message.contains(&code.to_string())),
                "{code}: {c:?}"
            );
        }
    }

    #[test]
    fn exponential_backoff_bounded_by_attempts() {
        let mut b = RetryBudget::new(&steady(4, 2));
        let mut waits = Vec::new();
        loop {
            b.begin_call();
            match b.after_failure(false) {
                Next::RetryAfter(w) => waits.push(w.as_millis()),
                Next::GiveUp(why) => {
                    assert_eq!(why, Exhausted::Attempts);
                    break;
                }
            }
        }
        assert_eq!(waits, [100, 200, 300]);
        assert_eq!(b.calls(), 4);
    }

    #[test]
    fn restarts_after_text_reached_the_client_are_bounded() {
        let mut b = RetryBudget::new(&steady(10, 1));
        b.begin_call();
        assert!(matches!(b.after_failure(true), Next::RetryAfter(_)));
        b.begin_call();
        assert_eq!(b.after_failure(true), Next::GiveUp(Exhausted::Restarts));
        assert_eq!(b.restarts(), 2);
    }

    #[test]
    fn total_time_is_bounded() {
        let mut cfg = steady(10, 0);
        cfg.max_elapsed = Duration::ZERO;
        let mut b = RetryBudget::new(&cfg);
        b.begin_call();
        // The first wait alone would pass the limit.
        assert_eq!(b.after_failure(false), Next::GiveUp(Exhausted::Time));
    }

    #[test]
    fn jitter_stays_within_the_factor() {
        let mut cfg = steady(16, 0);
        cfg.randomization_factor = 0.5;
        cfg.max_interval = Duration::from_secs(100);
        for _ in 0..50 {
            let mut b = RetryBudget::new(&cfg);
            b.begin_call();
            let Next::RetryAfter(w) = b.after_failure(false) else {
                panic!()
            };
            assert!((50..=150).contains(&w.as_millis()), "{w:?}");
        }
    }
}
