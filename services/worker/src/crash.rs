//! Test-only crash points: `crash_at` names one moment of the deliver
//! stage at which the worker process aborts, as if SIGKILLed there, so the
//! tests can prove what a redelivery does after a crash at exactly that
//! moment. Never set in production (`none` by default); checked only on
//! the escalation and interrupted-booking paths, not per token.

use serde::{Deserialize, Serialize};

/// Where the process may be made to abort.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashPoint {
    /// Never (the default).
    #[default]
    None,
    /// After the write-ahead escalation record, before the tier-2 copy.
    EscalationRecorded,
    /// After the tier-2 copy, before the escalation is confirmed and acked.
    EscalationPublished,
    /// After an interrupted attempt's usage event, before its progress
    /// record is deleted.
    InterruptedBooked,
}

/// Aborts the process when `configured` is `point`.
pub fn at(configured: CrashPoint, point: CrashPoint) {
    if configured != CrashPoint::None && configured == point {
        tracing::error!(?point, "crash_at: aborting the process (test fault)");
        std::process::abort();
    }
}
