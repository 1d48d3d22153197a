//! `triage-deadletters`: what an operator does with `llm.dead` — list the
//! letters by code, service and time, show one (headers and payload as
//! JSON), and re-drive them to the subject they were taken from with their
//! original headers (the `Triage-Dead-*` ones stripped), deleting each from
//! the dead-letter stream once JetStream has acked its re-publication.
//!
//! [`letter`] reads a letter's facts and builds what re-driving publishes,
//! [`filter`] selects letters, [`store`] is the stream I/O.

pub mod filter;
pub mod letter;
pub mod store;

pub use filter::Filter;
pub use letter::Letter;
pub use store::{DeadLetters, StoreError};
