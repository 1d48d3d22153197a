//! Fault decisions: pure, seeded, one per request (see [`FaultConfig`] for the rule).

use std::sync::Mutex;

use crate::config::{FaultConfig, FaultKind};
use crate::rng::{mix, SimRng};

/// Salt so fault draws never coincide with text draws for the same request number.
const FAULT_SALT: u64 = 0xfa17;

/// Decides the fault for request number `request_no` from the rates alone (no script).
pub fn draw(config: &FaultConfig, seed: u64, request_no: u64) -> FaultKind {
    let u = SimRng::new(mix(&[seed, FAULT_SALT, request_no])).next_f64();
    let mut edge = config.error_rate;
    if u < edge {
        return FaultKind::Error(config.error_status);
    }
    edge += config.hang_rate;
    if u < edge {
        return FaultKind::Hang;
    }
    edge += config.drop_rate;
    if u < edge {
        return FaultKind::Drop;
    }
    edge += config.malformed_rate;
    if u < edge {
        return FaultKind::Malformed;
    }
    FaultKind::Ok
}

/// The fault settings of a running instance, replaceable at run time.
#[derive(Debug)]
pub struct FaultState {
    seed: u64,
    config: Mutex<FaultConfig>,
}

impl FaultState {
    /// Starts with `config`.
    pub fn new(seed: u64, config: FaultConfig) -> Self {
        Self {
            seed,
            config: Mutex::new(config),
        }
    }

    /// Replaces the settings (script included).
    pub fn set(&self, config: FaultConfig) {
        *self.lock() = config;
    }

    /// Current settings, with the remaining script.
    pub fn get(&self) -> FaultConfig {
        self.lock().clone()
    }

    /// The fault for request `request_no`, and the settings in force for it.
    pub fn decide(&self, request_no: u64) -> (FaultKind, FaultConfig) {
        let mut config = self.lock();
        let kind = if config.script.is_empty() {
            draw(&config, self.seed, request_no)
        } else {
            config.script.remove(0)
        };
        (kind, config.clone())
    }

    /// Whether /health should fail.
    pub fn unhealthy(&self) -> bool {
        self.lock().unhealthy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultConfig> {
        // A panic while holding this lock cannot leave the config half-written.
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_full_rates() {
        let none = FaultConfig::none();
        assert!((0..200).all(|n| draw(&none, 1, n) == FaultKind::Ok));
        let all = FaultConfig::always_error(500);
        assert!((0..200).all(|n| draw(&all, 1, n) == FaultKind::Error(500)));
    }

    #[test]
    fn rates_are_roughly_respected_and_deterministic() {
        let config = FaultConfig {
            error_rate: 0.25,
            drop_rate: 0.25,
            ..FaultConfig::default()
        };
        let a: Vec<_> = (0..2000).map(|n| draw(&config, 7, n)).collect();
        let b: Vec<_> = (0..2000).map(|n| draw(&config, 7, n)).collect();
        assert_eq!(a, b);
        let errors = a.iter().filter(|k| **k == FaultKind::Error(503)).count();
        let drops = a.iter().filter(|k| **k == FaultKind::Drop).count();
        assert!((400..600).contains(&errors), "{errors}");
        assert!((400..600).contains(&drops), "{drops}");
        let c: Vec<_> = (0..2000).map(|n| draw(&config, 8, n)).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn script_goes_first_then_rates() {
        let state = FaultState::new(
            0,
            FaultConfig {
                script: vec![FaultKind::Error(500), FaultKind::Drop],
                ..FaultConfig::default()
            },
        );
        assert_eq!(state.decide(0).0, FaultKind::Error(500));
        assert_eq!(state.decide(1).0, FaultKind::Drop);
        assert_eq!(state.decide(2).0, FaultKind::Ok);
        assert!(state.get().script.is_empty());
    }
}
