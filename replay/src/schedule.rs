//! When each request is sent: open loop at a fixed or Poisson rate, or at a
//! recorded trace's inter-arrival times. (Closed loop has no schedule: a
//! fixed number of requests are in flight and each completion sends the
//! next.)

use std::time::Duration;

use rand::{Rng, SeedableRng};

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Evenly spaced at `rate` per second.
    Fixed {
        /// Requests per second.
        rate: f64,
    },
    /// Exponential inter-arrival times with mean 1/`rate` (seeded).
    Poisson {
        /// Requests per second.
        rate: f64,
        /// RNG seed.
        seed: u64,
    },
}

/// Send offsets from the start for `n` requests.
pub fn offsets(arrivals: Arrivals, n: usize) -> Vec<Duration> {
    match arrivals {
        Arrivals::Fixed { rate } => (0..n)
            .map(|i| Duration::from_secs_f64(i as f64 / rate))
            .collect(),
        Arrivals::Poisson { rate, seed } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut t = 0.0;
            (0..n)
                .map(|_| {
                    let at = t;
                    // Inverse-CDF sampling; 1-u avoids ln(0).
                    let u: f64 = rng.gen();
                    t += -(1.0 - u).ln() / rate;
                    Duration::from_secs_f64(at)
                })
                .collect()
        }
    }
}

/// Send offsets that reproduce recorded arrival times (Unix ms), played
/// `speed` times faster. Rows without a time follow the previous one.
pub fn trace_offsets(timestamps: &[Option<u64>], speed: f64) -> Vec<Duration> {
    let start = timestamps.iter().flatten().min().copied().unwrap_or(0);
    let mut last = 0.0f64;
    timestamps
        .iter()
        .map(|t| {
            if let Some(t) = t {
                last = (t.saturating_sub(start)) as f64 / 1000.0 / speed;
            }
            Duration::from_secs_f64(last)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_is_evenly_spaced() {
        let o = offsets(Arrivals::Fixed { rate: 4.0 }, 3);
        assert_eq!(
            o,
            vec![
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_millis(500)
            ]
        );
    }

    #[test]
    fn poisson_has_the_right_mean_and_is_seeded() {
        let a = offsets(
            Arrivals::Poisson {
                rate: 100.0,
                seed: 1,
            },
            20_000,
        );
        let b = offsets(
            Arrivals::Poisson {
                rate: 100.0,
                seed: 1,
            },
            20_000,
        );
        assert_eq!(a, b);
        let mean_gap = a.last().unwrap().as_secs_f64() / (a.len() - 1) as f64;
        assert!((mean_gap - 0.01).abs() < 0.0005, "mean gap {mean_gap}");
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn traces_keep_gaps_scaled_by_speed() {
        let o = trace_offsets(&[Some(10_000), Some(10_500), None, Some(12_000)], 2.0);
        assert_eq!(
            o,
            vec![
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_millis(250),
                Duration::from_millis(1000)
            ]
        );
    }
}
