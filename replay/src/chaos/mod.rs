//! The chaos suite (`triage-replay chaos`, `scripts/chaos.sh`): the whole
//! pipeline on a 3-node NATS cluster under an open-loop replay while
//! routers, workers of both tiers, ledger writers and a NATS node are
//! SIGKILLed and restarted at seeded random times (and Postgres restarted
//! once); then, per request id, one final reply or not, and the ledger
//! against the usage events.
//!
//! Pure parts — [`plan`] (when to kill what), [`verdict`] (judging the
//! evidence), [`summary`] (the report and its table) — are unit-tested;
//! [`observe`], [`evidence`] and [`run`] do the I/O.

pub mod evidence;
pub mod observe;
pub mod plan;
pub mod run;
pub mod summary;
pub mod verdict;

pub use run::{run, ChaosError, ChaosSpec};
pub use summary::{table, ChaosReport};
