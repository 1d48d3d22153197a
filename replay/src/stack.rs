//! The pipeline's services as child processes of the built binaries — the
//! ledger writer, tier workers, router and shadow service — set up for one private NATS
//! namespace and Postgres database: what the end-to-end tests and the chaos
//! suite start. Also the set-up and clean-up around them (the database,
//! the namespace's streams) and the wait until the pipeline answers.

use std::path::PathBuf;
use std::time::Duration;

use triage_bus::TriageClient;
use triage_protocol::{Namespace, Request, StreamKind};

use crate::process::ProcessSpec;

/// How the services are configured.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Where the binaries are (`target/<profile>`).
    pub bin_dir: PathBuf,
    /// NATS URL(s), comma-separated.
    pub nats_url: String,
    /// The namespace's subject prefix.
    pub prefix: String,
    /// The ledger's database.
    pub database_url: String,
    /// Stream replicas (3 on the cluster).
    pub replicas: usize,
    /// Log directory (`<name>.log` per service).
    pub logs: PathBuf,
}

impl Stack {
    /// The ledger writer `name`.
    pub fn ledger(&self, name: &str) -> ProcessSpec {
        self.service(name, "triage-ledger", &["run"], "TRIAGE_LEDGER_")
            .env("TRIAGE_LEDGER_DATABASE__URL", &self.database_url)
            .env("TRIAGE_DATABASE_URL", &self.database_url)
    }

    /// A worker `name` of `tier` calling `backend_urls`.
    pub fn worker(&self, name: &str, tier: u8, backend_urls: &str) -> ProcessSpec {
        let tier = tier.to_string();
        self.service(
            name,
            "triage-worker",
            &["run", "--tier", &tier],
            "TRIAGE_WORKER_",
        )
        .env("TRIAGE_WORKER_BACKEND_URLS", backend_urls)
    }

    /// A router `name` (the real embedding model; replay's `--baseline`
    /// forces tier 2, which the tier override allows).
    pub fn router(&self, name: &str) -> ProcessSpec {
        self.service(name, "triage-router", &["run"], "TRIAGE_ROUTER_")
            .env("TRIAGE_ROUTER_POLICY__ALLOW_TIER_OVERRIDE", "true")
    }

    /// The shadow service `name`: the other tier's answers from `tier1` or
    /// `tier2` (base URL, model), graded by the judge at `judge`.
    pub fn shadow(
        &self,
        name: &str,
        tier1: (&str, &str),
        tier2: (&str, &str),
        judge: (&str, &str),
    ) -> ProcessSpec {
        self.service(name, "triage-shadow", &["run"], "TRIAGE_SHADOW_")
            .env("TRIAGE_SHADOW_TIER1__URL", tier1.0)
            .env("TRIAGE_SHADOW_TIER1__MODEL", tier1.1)
            .env("TRIAGE_SHADOW_TIER2__URL", tier2.0)
            .env("TRIAGE_SHADOW_TIER2__MODEL", tier2.1)
            .env("TRIAGE_SHADOW_JUDGE__URL", judge.0)
            .env("TRIAGE_SHADOW_JUDGE__MODEL", judge.1)
    }

    fn service(&self, name: &str, bin: &str, args: &[&str], env_prefix: &str) -> ProcessSpec {
        let mut spec = ProcessSpec::new(
            name,
            self.bin_dir.join(bin),
            self.logs.join(format!("{name}.log")),
        )
        .args(args.iter().copied())
        .env(format!("{env_prefix}NATS__URL"), &self.nats_url)
        .env(format!("{env_prefix}NATS__PREFIX"), &self.prefix)
        .env(format!("{env_prefix}NATS__NAME"), name)
        .env(format!("{env_prefix}METRICS_ADDR"), "127.0.0.1:0")
        .env("RUST_LOG", "info");
        spec.env.extend(stream_env(env_prefix, self.replicas));
        spec
    }
}

/// Small stream limits (64 MiB, 1 h) and `replicas`: JetStream reserves
/// `max_bytes` up front, so production limits on a shared test server
/// would exhaust its storage.
pub fn stream_env(env_prefix: &str, replicas: usize) -> Vec<(String, String)> {
    let mut env = vec![(
        format!("{env_prefix}NATS__STREAMS__REPLICAS"),
        replicas.to_string(),
    )];
    for kind in ["REQUESTS", "TIERS", "USAGE", "DEAD", "RESULTS"] {
        let key = |k: &str| format!("{env_prefix}NATS__STREAMS__{kind}__{k}");
        env.push((key("MAX_BYTES"), (64u64 << 20).to_string()));
        env.push((key("MAX_AGE"), "1h".into()));
    }
    env.push((
        format!("{env_prefix}NATS__STREAMS__FINISHED_TTL"),
        "1h".into(),
    ));
    env
}

/// `admin_url` (a database URL) with its database replaced by `name`.
pub fn database_url(admin_url: &str, name: &str) -> String {
    let base = admin_url.split('?').next().unwrap_or(admin_url);
    match base.rfind('/') {
        Some(slash) if slash > base.find("//").map_or(0, |i| i + 1) => {
            format!("{}/{name}", &base[..slash])
        }
        _ => format!("{base}/{name}"),
    }
}

/// Creates database `name` (`name` must be a plain identifier) and returns its URL.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String, sqlx::Error> {
    let admin = sqlx::PgPool::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(database_url(admin_url, name))
}

/// Drops database `name`, disconnecting whoever is still in it.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let admin = sqlx::PgPool::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

/// Deletes the namespace's streams and KV buckets (errors ignored:
/// clean-up of what may not exist).
pub async fn delete_namespace(js: &async_nats::jetstream::Context, ns: &Namespace) {
    for kind in StreamKind::ALL {
        let _ = js.delete_stream(ns.stream_name(kind)).await;
    }
    for bucket in [
        ns.finished_bucket(),
        ns.progress_bucket(),
        ns.heads_bucket(),
    ] {
        let _ = js.delete_stream(format!("KV_{bucket}")).await;
    }
}

/// Asks a short question until the pipeline answers (the router loads the
/// embedding model at start), for at most `limit`; the error is the last failure.
pub async fn wait_answering(client: &TriageClient, limit: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut req = Request::from_prompt("warm-up");
        req.max_tokens = Some(4);
        match client.ask(req, Duration::from_secs(30)).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(format!("pipeline never answered within {limit:?}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The last `lines` lines of every log in `dir`, for a failure message.
pub fn logs_tail(dir: &std::path::Path, lines: usize) -> String {
    let mut s = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return s;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        s.push_str(&format!(
            "--- {}\n{}\n",
            path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x"
        );
        assert_eq!(
            database_url("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }

    #[test]
    fn every_service_gets_the_namespace_replicas_and_small_streams() {
        let stack = Stack {
            bin_dir: "/t".into(),
            nats_url: "nats://a:1,nats://b:2".into(),
            prefix: "p1".into(),
            database_url: "postgres://h/db".into(),
            replicas: 3,
            logs: "/logs".into(),
        };
        let w = stack.worker("worker-tier1-a", 1, "http://sim");
        let env = |k: &str| {
            w.env
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(w.program, PathBuf::from("/t/triage-worker"));
        assert_eq!(w.args, ["run", "--tier", "1"]);
        assert_eq!(
            env("TRIAGE_WORKER_NATS__URL"),
            Some("nats://a:1,nats://b:2")
        );
        assert_eq!(env("TRIAGE_WORKER_NATS__STREAMS__REPLICAS"), Some("3"));
        assert_eq!(
            env("TRIAGE_WORKER_NATS__STREAMS__USAGE__MAX_BYTES"),
            Some("67108864")
        );
        assert_eq!(env("TRIAGE_WORKER_BACKEND_URLS"), Some("http://sim"));
        assert_eq!(w.log, PathBuf::from("/logs/worker-tier1-a.log"));
        let l = stack.ledger("ledger");
        assert!(l.env.contains(&(
            "TRIAGE_LEDGER_DATABASE__URL".into(),
            "postgres://h/db".into()
        )));
    }
}
