//! The ledger's prices, for `usage.cost_usd`: read from Postgres on first
//! use and again after `prices_refresh`; without a database (or before the
//! ledger stored any) answers simply carry no cost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use triage_ledger::{PriceBook, Store};

/// A cached price book.
pub struct Prices {
    store: Option<Store>,
    refresh: Duration,
    cached: Mutex<Option<(Option<Arc<PriceBook>>, Instant)>>,
}

impl Prices {
    /// Prices from `store` (none: never any cost), re-read every `refresh`.
    pub fn new(store: Option<Store>, refresh: Duration) -> Self {
        Self {
            store,
            refresh,
            cached: Mutex::new(None),
        }
    }

    /// The prices now, if there are any.
    pub async fn current(&self) -> Option<Arc<PriceBook>> {
        let store = self.store.as_ref()?;
        if let Some((book, at)) = self.cached.lock().expect("prices").clone() {
            if at.elapsed() < self.refresh {
                return book;
            }
        }
        let book = match tokio::time::timeout(Duration::from_secs(2), store.prices()).await {
            Ok(Ok(book)) => Some(Arc::new(book)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "prices unavailable: answers carry no cost_usd");
                None
            }
            Err(_) => {
                tracing::warn!("prices not read within 2 s: answers carry no cost_usd");
                None
            }
        };
        *self.cached.lock().expect("prices") = Some((book.clone(), Instant::now()));
        book
    }
}
