//! The pipeline's real binaries for the end-to-end tests: router, a
//! worker per tier and the ledger writer as child processes
//! ([`triage_replay::stack`], the same the chaos suite starts) on a private
//! NATS prefix and database, with two vLLM simulators in this process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use triage_replay::process::{ProcessSpec, Supervised};
use triage_replay::stack::{self, Stack};
use triage_vllm_sim::{spawn, SimConfig, SimHandle};

/// Where the built binaries are: tests run from target/<profile>/deps.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let router = dir.join("triage-router");
    assert!(
        router.exists(),
        "{} is not built: run `cargo build --workspace` (scripts/test.sh does)",
        router.display()
    );
    dir
}

pub fn admin_db_url() -> String {
    std::env::var("TRIAGE_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct Pipeline {
    pub prefix: String,
    pub db_url: String,
    pub db_name: String,
    /// Ledger, worker1, worker2, router, in that order, then any extra.
    pub services: Vec<Supervised>,
    pub sims: (SimHandle, SimHandle),
    /// Each service's output, as `<name>.log`.
    pub logs: PathBuf,
}

/// The pipeline with each service's default settings.
pub async fn start() -> Pipeline {
    start_with(|_| Vec::new()).await
}

/// The pipeline with `env(prefix)` added to the environment of the service
/// whose variables start with `prefix` (e.g. `TRIAGE_WORKER_`).
pub async fn start_with(env: impl Fn(&str) -> Vec<(String, String)>) -> Pipeline {
    let sim = |model: &str| {
        let mut c = SimConfig::instant(model, 12);
        c.ttft_ms = 5;
        c.itl_ms = 1;
        c
    };
    start_custom((sim("sim-small"), sim("sim-large")), env, |_, _, _| {
        Vec::new()
    })
    .await
}

/// [`start_with`] on simulators of the given configurations, with the
/// services `extra(stack, tier-1 URL, tier-2 URL)` adds, started after the
/// router.
pub async fn start_custom(
    sims: (SimConfig, SimConfig),
    env: impl Fn(&str) -> Vec<(String, String)>,
    extra: impl Fn(&Stack, &str, &str) -> Vec<ProcessSpec>,
) -> Pipeline {
    let prefix = format!("t{}", &uuid_like()[..16]);
    let db_name = format!("triage_replay_{prefix}");
    let db_url = stack::create_database(&admin_db_url(), &db_name)
        .await
        .expect("Postgres must be running (scripts/setup.sh)");
    let sims = (spawn(sims.0).await.unwrap(), spawn(sims.1).await.unwrap());
    let logs = std::env::temp_dir().join(format!("triage-pipeline-{prefix}"));
    std::fs::create_dir_all(&logs).unwrap();
    let stack = Stack {
        bin_dir: bin_dir(),
        nats_url: triage_bus::default_nats_url(),
        prefix: prefix.clone(),
        database_url: db_url.clone(),
        replicas: 1,
        logs: logs.clone(),
    };
    let (u1, u2) = (sims.0.url().to_string(), sims.1.url().to_string());
    let services = [
        (stack.ledger("ledger"), "TRIAGE_LEDGER_"),
        (stack.worker("worker1", 1, &u1), "TRIAGE_WORKER_"),
        (stack.worker("worker2", 2, &u2), "TRIAGE_WORKER_"),
        (stack.router("router"), "TRIAGE_ROUTER_"),
    ]
    .into_iter()
    .map(|(mut spec, env_prefix)| {
        spec.env.extend(env(env_prefix));
        spec
    })
    .chain(extra(&stack, &u1, &u2))
    .map(|spec| Supervised::start(spec).unwrap())
    .collect();
    Pipeline {
        prefix,
        db_url,
        db_name,
        services,
        sims,
        logs,
    }
}

pub fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:08x}", t, std::process::id())
}

/// Waits for `child` to exit, or kills it and fails after `limit`: a replay
/// that never finishes fails the test instead of hanging it.
pub fn wait_within(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match exited.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} still running after {limit:?}");
        }
    }
}

/// Longest any replay command here may take.
pub const REPLAY_LIMIT: Duration = Duration::from_secs(120);

impl Pipeline {
    pub fn replay(&self, args: &[&str]) -> Output {
        let child = Command::new(env!("CARGO_BIN_EXE_triage-replay"))
            .args(args)
            .args([
                "--prefix",
                &self.prefix,
                "--nats-url",
                &triage_bus::default_nats_url(),
                "--database-url",
                &self.db_url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_within(child, REPLAY_LIMIT, &format!("triage-replay {args:?}"))
    }

    pub async fn teardown(self) {
        let client = async_nats::connect(triage_bus::default_nats_url())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let ns = triage_protocol::Namespace::new(&self.prefix).unwrap();
        drop(self.services);
        stack::delete_namespace(&js, &ns).await;
        let _ = stack::drop_database(&admin_db_url(), &self.db_name).await;
        let _ = std::fs::remove_dir_all(&self.logs);
    }

    /// The last lines of every service's log, for a failure message.
    pub fn logs(&self) -> String {
        stack::logs_tail(&self.logs, 15)
    }
}

/// Waits until the router answers a request end to end (it loads the
/// embedding model at start).
pub async fn wait_ready(p: &Pipeline) {
    let client = async_nats::connect(triage_bus::default_nats_url())
        .await
        .unwrap();
    let triage =
        triage_bus::TriageClient::new(client, triage_protocol::Namespace::new(&p.prefix).unwrap());
    if let Err(e) = stack::wait_answering(&triage, Duration::from_secs(120)).await {
        panic!("{e}\n{}", p.logs());
    }
}
