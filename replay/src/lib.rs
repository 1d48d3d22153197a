//! Replay: drives labelled or recorded traffic through Triage and reports
//! tier split, routing accuracy, latency and cost against an all-tier-2
//! baseline.
//!
//! Pure parts ([`dataset`], [`schedule`], [`stats`], [`report`], [`html`])
//! are tested on fixed inputs; [`drive`], [`cost`] and [`record`] talk to
//! NATS and Postgres ([`drive`] also straight to an OpenAI-compatible
//! server with `--direct`); [`score`] runs the router's scoring offline;
//! [`labelling`] makes outcome labels for a tier pair (`outcomes`), graded
//! by [`grade`].
//! [`process`], [`cluster`] and [`stack`] start the pipeline's processes
//! (a 3-node NATS cluster, the services) for the end-to-end tests and the
//! [`chaos`] suite, which kills and restarts them under load.

pub mod chaos;
pub mod cluster;
pub mod cost;
pub mod dataset;
pub mod drive;
pub mod grade;
pub mod html;
pub mod labelling;
pub mod outcome;
pub mod process;
pub mod record;
pub mod report;
pub mod schedule;
pub mod score;
pub mod stack;
pub mod stats;
