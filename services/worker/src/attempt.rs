//! Attempt numbers.
//!
//! A chunk's `attempt` tells the client which text is current: a higher
//! attempt voids everything before it. Numbers must therefore only grow, even
//! across worker crashes (where the new worker knows nothing of the old one)
//! and across escalation to tier 2 (a new message on another stream). Both
//! are solved without coordination:
//!
//! - each JetStream delivery owns a block of [`ATTEMPTS_PER_DELIVERY`]
//!   numbers, found from the delivery count JetStream reports, so delivery
//!   `d` starts above every number delivery `d - 1` could have used;
//! - an escalated message carries the [`ATTEMPT_BASE_HEADER`] header: the
//!   first number its blocks may use, one above tier 1's last.

use async_nats::HeaderMap;

/// Attempt numbers reserved per delivery; `retry.max_attempts` may not
/// exceed it.
pub const ATTEMPTS_PER_DELIVERY: u32 = 16;

/// Header of an escalated message: the lowest attempt number it may use.
pub const ATTEMPT_BASE_HEADER: &str = "Triage-Attempt-Base";

/// The first attempt number of delivery `deliveries` (from 1) of a message
/// whose numbers start at `base` (1 unless escalated).
pub fn first_attempt(base: u32, deliveries: u64) -> u32 {
    let block = u32::try_from(deliveries.saturating_sub(1)).unwrap_or(u32::MAX);
    base.max(1)
        .saturating_add(block.saturating_mul(ATTEMPTS_PER_DELIVERY))
}

/// The attempt base a message carries (1 when it has no valid header).
pub fn base_from_headers(headers: &HeaderMap) -> u32 {
    headers
        .get(ATTEMPT_BASE_HEADER)
        .and_then(|v| v.as_str().trim().parse::<u32>().ok())
        .filter(|b| *b >= 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_delivery_starts_above_everything_before() {
        assert_eq!(first_attempt(1, 1), 1);
        assert_eq!(first_attempt(1, 2), 1 + ATTEMPTS_PER_DELIVERY);
        for d in 1..10u64 {
            let last_of_this = first_attempt(1, d) + ATTEMPTS_PER_DELIVERY - 1;
            assert!(first_attempt(1, d + 1) > last_of_this);
        }
        // An escalated message starts above tier 1's last attempt.
        assert_eq!(first_attempt(5, 1), 5);
        assert!(first_attempt(5, 2) > 5 + ATTEMPTS_PER_DELIVERY - 1);
        // Absurd delivery counts saturate instead of wrapping to small numbers.
        assert_eq!(first_attempt(1, u64::MAX), u32::MAX);
    }

    #[test]
    fn base_header_is_read_defensively() {
        let mut h = HeaderMap::new();
        assert_eq!(base_from_headers(&h), 1);
        h.insert(ATTEMPT_BASE_HEADER, "7");
        assert_eq!(base_from_headers(&h), 7);
        h.insert(ATTEMPT_BASE_HEADER, "zero");
        assert_eq!(base_from_headers(&h), 1);
        h.insert(ATTEMPT_BASE_HEADER, "0");
        assert_eq!(base_from_headers(&h), 1);
    }
}
