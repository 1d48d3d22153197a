//! Triage's cost ledger.
//!
//! Every generation attempt ends with a usage event on `llm.usage`; the
//! ledger writer books each exactly once in Postgres, priced at the tier's
//! price in force when the attempt finished, in exact decimal arithmetic.
//! Rollups maintained in the same transaction keep reports and the cost
//! exporter's queries cheap at any ledger size.
//!
//! - [`price`] — prices, the price book and cost arithmetic (pure);
//! - [`entry`] — from a usage event to a ledger row, validation (pure);
//! - [`store`] — migrations, prices and batch booking in Postgres;
//! - [`report`] — the cost report (query, table/CSV/JSON rendering);
//! - [`snapshot`] — the figures the cost exporter publishes;
//! - [`writer`] — the durable consumer that books `llm.usage`;
//! - [`outcomes`] — judged outcomes of answered requests in Postgres;
//! - [`feedback`] — `llm.feedback`, clients' ratings of their answers;
//! - [`judged`] — judge calls' grades (from their usage events) in `outcomes`;
//! - [`training`] — judged outcomes with their text, as training rows;
//! - [`retention`] — the purge of learning text past its retention;
//! - [`config`] — the service's configuration.

pub mod config;
pub mod entry;
pub mod feedback;
pub mod judged;
pub mod outcomes;
pub mod price;
pub mod report;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod training;
pub mod writer;

pub use entry::{LedgerEntry, Rejection};
pub use price::{Cost, Price, PriceBook};
pub use store::{Booked, Store, StoreError};
