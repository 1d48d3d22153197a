//! Replay: drives labelled or recorded traffic through Triage and reports
//! tier split, routing accuracy, latency and cost against an all-tier-2
//! baseline.
//!
//! Pure parts ([`dataset`], [`schedule`], [`stats`], [`report`], [`html`])
//! are tested on fixed inputs; [`drive`], [`cost`] and [`record`] talk to
//! NATS and Postgres ([`drive`] also straight to an OpenAI-compatible
//! server with `--direct`); [`score`] runs the router's scoring offline.

pub mod cost;
pub mod dataset;
pub mod drive;
pub mod html;
pub mod outcome;
pub mod record;
pub mod report;
pub mod schedule;
pub mod score;
pub mod stats;
