//! Cost per request, read from the ledger: every attempt of a request
//! (including escalated and failed ones) is summed, with the same tokens
//! at tier-2 prices as the baseline.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

use crate::outcome::Outcome;

/// Fills `cost` and `baseline_cost` of answered outcomes from the ledger,
/// waiting up to `wait` for the ledger writer to book them. Returns how
/// many were found.
pub async fn fill_from_ledger(
    database_url: &str,
    outcomes: &mut [Outcome],
    wait: Duration,
) -> Result<usize, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url)
        .await?;
    let ids: Vec<String> = outcomes
        .iter()
        .filter(|o| o.ok())
        .map(|o| o.request_id.clone())
        .collect();
    let deadline = tokio::time::Instant::now() + wait;
    let found: std::collections::HashMap<String, (f64, f64)> = loop {
        let rows: Vec<(String, f64, f64)> = sqlx::query_as(
            "SELECT request_id, sum(cost)::float8, sum(baseline_cost)::float8 \
             FROM ledger_entries WHERE request_id = ANY($1) GROUP BY request_id",
        )
        .bind(&ids)
        .fetch_all(&pool)
        .await?;
        if rows.len() >= ids.len() || tokio::time::Instant::now() >= deadline {
            break rows.into_iter().map(|(id, c, b)| (id, (c, b))).collect();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for o in outcomes.iter_mut() {
        if let Some(&(c, b)) = found.get(&o.request_id) {
            o.cost = Some(c);
            o.baseline_cost = Some(b);
        }
    }
    pool.close().await;
    Ok(found.len())
}
