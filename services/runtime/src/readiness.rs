//! Liveness and readiness, as an orchestrator asks them.
//!
//! `GET /health/live` (and `/health`, as before) answers 200 while the
//! process serves at all: restart me only if this fails. `GET /health/ready`
//! runs the service's named checks (NATS connected, streams there, Postgres
//! answering, a backend healthy), each within a time limit, and answers 200
//! only when all pass, else 503 naming each failure: send me work only when
//! this passes. A dependency's outage makes a service unready, never dead, so
//! it is not restarted in a loop while NATS or Postgres is away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

type CheckFn =
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync + 'static;

/// The named checks of `/health/ready`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, Arc<CheckFn>)>,
    timeout: Option<Duration>,
}

/// What `/health/ready` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Every check passed.
    pub ready: bool,
    /// Each check: `ok` or why it failed.
    pub checks: std::collections::BTreeMap<String, String>,
}

impl Readiness {
    /// No checks (ready while live); each check gets `timeout` (2 s unless set).
    pub fn new() -> Self {
        Self::default()
    }

    /// Each check's time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds the check `name`: `Ok` when that dependency can be used now.
    pub fn check<F, Fut>(mut self, name: &str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name.to_string(), Arc::new(move || Box::pin(check()))));
        self
    }

    /// Runs every check at once.
    pub async fn report(&self) -> Report {
        let limit = self.timeout.unwrap_or(Duration::from_secs(2));
        let runs = self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(limit, check()).await {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(why)) => why,
                Err(_) => format!("no answer within {limit:?}"),
            };
            (name.clone(), outcome)
        });
        let checks: std::collections::BTreeMap<_, _> =
            futures::future::join_all(runs).await.into_iter().collect();
        Report {
            ready: checks.values().all(|v| v == "ok"),
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_check_passes_in_time() {
        assert!(Readiness::new().report().await.ready, "no checks: ready");
        let r = Readiness::new()
            .with_timeout(Duration::from_millis(50))
            .check("nats", || async { Ok(()) })
            .check("postgres", || async {
                Err("connection refused".to_string())
            })
            .check("backend", || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            });
        let report = r.report().await;
        assert!(!report.ready);
        assert_eq!(report.checks["nats"], "ok");
        assert_eq!(report.checks["postgres"], "connection refused");
        assert!(report.checks["backend"].contains("no answer within"));
    }
}
