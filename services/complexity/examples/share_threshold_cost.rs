//! What keeping a traffic share costs per score: `observe` on a full
//! window of pseudo-random scores, lock included, at the default window
//! and at ten times it.
//!
//!     cargo run --release -p triage-complexity --example share_threshold_cost

use std::time::Instant;

use triage_complexity::share_threshold::{ShareConfig, TrackedThreshold};

fn main() {
    for window in [2000usize, 20000] {
        let config = ShareConfig {
            target: Some(0.34),
            window,
            min_scores: 200,
        };
        let tracked = TrackedThreshold::new(0.65, &config);
        // xorshift: scores in [0, 1) without a dependency.
        let mut x: u64 = 88172645463325252;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1_000_000) as f64 / 1e6
        };
        for _ in 0..window {
            tracked.observe(next());
        }
        let n = 1_000_000;
        let started = Instant::now();
        let mut sum = 0.0;
        for _ in 0..n {
            sum += tracked.observe(next());
        }
        let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!(
            "window {window}: {per:.3} µs a score (mean threshold {:.3})",
            sum / f64::from(n)
        );
    }
}
