//! One chaos run: the cluster, the simulators and the services started as
//! child processes, an open-loop replay through them while the plan's
//! faults are applied, then the evidence read back and judged.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use triage_bus::{ClientError, TriageClient};
use triage_protocol::{Namespace, Request, StreamKind};

use super::evidence;
use super::observe::Observer;
use super::plan::{self, Fault, PlanSpec, Step, Target};
use super::summary::{self, ChaosReport, FaultRecord};
use super::verdict::{self, Fate};
use crate::cluster::{ClusterPorts, ClusterSetup, NatsCluster};
use crate::dataset::Row;
use crate::process::{ProcessSpec, Supervised};
use crate::schedule::{self, Arrivals};
use crate::stack::{self, Stack};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosSpec {
    /// Seed of the fault plan and of the Poisson arrivals.
    pub seed: u64,
    /// Prompts (rows are reused when fewer than `requests`).
    pub rows: Vec<Row>,
    /// Requests to send.
    pub requests: usize,
    /// Mean arrival rate, requests/s.
    pub rate: f64,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// Router replicas.
    pub routers: usize,
    /// Workers per tier.
    pub workers_per_tier: usize,
    /// Ledger writers.
    pub ledgers: usize,
    /// Kills per class of target.
    pub kills: usize,
    /// Shortest and longest time a killed process stays down.
    pub pause: (Duration, Duration),
    /// The command that restarts Postgres (run with `sh -c`), if any.
    pub postgres_restart: Option<String>,
    /// Consumers' ack wait: how soon a killed process's work is redelivered.
    pub ack_wait: Duration,
    /// After the last request, how long to wait for the final replies.
    pub drain: Duration,
    /// Where the binaries are.
    pub bin_dir: PathBuf,
    /// Logs and the cluster's store go here.
    pub run_dir: PathBuf,
    /// A Postgres URL allowed to create and drop databases.
    pub admin_database_url: String,
    /// Keep the database and the run directory afterwards.
    pub keep: bool,
}

/// Why the run could not be carried out (as opposed to its targets failing).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Setting something up failed.
    #[error("chaos set-up: {0}")]
    Setup(String),
    /// Reading the evidence failed.
    #[error(transparent)]
    Evidence(#[from] evidence::EvidenceError),
}

fn setup(what: &str) -> impl Fn(String) -> ChaosError + '_ {
    move |e| ChaosError::Setup(format!("{what}: {e}"))
}

/// The running parts.
struct Fleet {
    cluster: NatsCluster,
    procs: BTreeMap<Target, Supervised>,
    _sims: Vec<Supervised>,
}

/// Runs the suite and judges it.
pub async fn run(spec: &ChaosSpec) -> Result<ChaosReport, ChaosError> {
    let tag = format!("{}{}", spec.seed, triage_protocol::now_ms() % 1_000_000_000);
    let logs = spec.run_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| setup("run directory")(e.to_string()))?;
    let db_name = format!("triage_chaos_{tag}");
    let db_url = stack::create_database(&spec.admin_database_url, &db_name)
        .await
        .map_err(|e| setup("create database")(e.to_string()))?;
    let result = run_in(spec, &tag, &logs, &db_url).await;
    if !spec.keep {
        let _ = stack::drop_database(&spec.admin_database_url, &db_name).await;
        let _ = std::fs::remove_dir_all(spec.run_dir.join("store"));
    }
    result
}

async fn run_in(
    spec: &ChaosSpec,
    tag: &str,
    logs: &std::path::Path,
    db_url: &str,
) -> Result<ChaosReport, ChaosError> {
    let prefix = format!("chaos{tag}");
    let ns = Namespace::new(&prefix).map_err(|e| setup("namespace")(e.to_string()))?;
    let mut fleet = start_fleet(spec, &prefix, logs, db_url).await?;
    // The client (and observer) stays on node 1, which is never killed: what
    // it misses is then what Triage lost, not what its own reconnect dropped.
    let client = async_nats::connect(fleet.cluster.url(0))
        .await
        .map_err(|e| setup("connect to nats-1")(e.to_string()))?;
    let reply_prefix = format!("_INBOX.chaos{tag}");
    let observer = Observer::start(&client, &reply_prefix)
        .await
        .map_err(|e| setup("observer")(e.to_string()))?;
    let triage = TriageClient::new(client.clone(), ns.clone()).with_reply_prefix(&reply_prefix);
    println!("chaos: waiting for the pipeline to answer (routers load their model)");
    stack::wait_answering(&triage, Duration::from_secs(240))
        .await
        .map_err(|e| setup("warm-up")(format!("{e}\n{}", stack::logs_tail(logs, 10))))?;

    let requests = requests(spec, tag);
    let offsets = schedule::offsets(
        Arrivals::Poisson {
            rate: spec.rate,
            seed: spec.seed,
        },
        requests.len(),
    );
    let load = offsets.last().copied().unwrap_or_default();
    let faults = plan::faults(&plan_spec(spec, load));
    println!(
        "chaos: {} requests at {} req/s (about {:.0} s), {} faults, seed {}",
        requests.len(),
        spec.rate,
        load.as_secs_f64(),
        faults.len(),
        spec.seed
    );
    let started = Instant::now();
    let stop = CancellationToken::new();
    let driving = async {
        let sent = send_all(triage.clone(), requests.clone(), offsets, started).await;
        drain(&observer, &sent.0, spec.drain).await;
        stop.cancel();
        sent
    };
    let ((records, crashes), (accepted, not_accepted)) = tokio::join!(
        apply_faults(&mut fleet, &faults, started, spec, &stop),
        driving
    );
    println!(
        "chaos: load done after {:.0} s; reading the evidence",
        started.elapsed().as_secs_f64()
    );

    let js = async_nats::jetstream::new(client.clone());
    let db = evidence::patiently("the ledger database", || sqlx::PgPool::connect(db_url))
        .await
        .map_err(|e| setup("connect to the ledger database")(e.to_string()))?;
    let (events, bad_usage) = wait_ledger(&js, &ns, &db, Duration::from_secs(90)).await?;
    let rows = evidence::patiently("ledger rows", || evidence::ledger_rows(&db)).await?;
    let rollup = evidence::patiently("the rollup", || evidence::rollup_totals(&db)).await?;
    let ledger = verdict::ledger(&events, &rows, rollup);
    let fates = fates(&js, &ns, &observer, &accepted).await?;
    let booked: HashSet<(String, u32)> = events.iter().map(|e| (e.id.clone(), e.attempt)).collect();
    let (streamed_unbooked, answered_unbooked) = unbooked(&observer, &accepted, &booked);
    let report = summary::report(summary::Inputs {
        seed: spec.seed,
        rate: spec.rate,
        load_secs: load.as_secs_f64(),
        sent: requests.len(),
        not_accepted,
        fates,
        ledger,
        streamed_unbooked,
        answered_unbooked,
        undecodable: (observer.undecodable(), bad_usage),
        faults: records,
        crashes,
    });
    db.close().await;
    stack::delete_namespace(&js, &ns).await;
    drop(fleet);
    Ok(report)
}

fn plan_spec(spec: &ChaosSpec, load: Duration) -> PlanSpec {
    PlanSpec {
        seed: spec.seed,
        start: load / 20,
        end: load * 9 / 10,
        routers: spec.routers,
        workers_per_tier: spec.workers_per_tier,
        ledgers: spec.ledgers,
        nats_nodes: vec![1, 2],
        kills: spec.kills,
        pause: spec.pause,
        restart_postgres: spec.postgres_restart.is_some(),
    }
}

fn requests(spec: &ChaosSpec, tag: &str) -> Vec<Request> {
    (0..spec.requests)
        .map(|i| {
            let row = &spec.rows[i % spec.rows.len()];
            let mut r = row.to_request(spec.max_tokens, tag);
            r.id = format!("chaos-{tag}-{i}");
            r.max_tokens = Some(spec.max_tokens);
            // No tenant: ids alone key the evidence.
            r.tenant = None;
            // A final reply lost in transit can still be told from a lost request.
            r.keep_result = true;
            r
        })
        .collect()
}

async fn start_fleet(
    spec: &ChaosSpec,
    prefix: &str,
    logs: &std::path::Path,
    db_url: &str,
) -> Result<Fleet, ChaosError> {
    let ports = ClusterPorts::free().map_err(|e| setup("ports")(e.to_string()))?;
    let nodes = ClusterSetup::local(spec.run_dir.join("store"), logs.to_path_buf(), ports);
    let cluster = NatsCluster::start(nodes).map_err(|e| setup("cluster")(e.to_string()))?;
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .map_err(|e| setup("cluster")(e.to_string()))?;
    let sims = start_sims(spec, logs).await?;
    let stack = Stack {
        bin_dir: spec.bin_dir.clone(),
        nats_url: cluster.urls(),
        prefix: prefix.to_string(),
        database_url: db_url.to_string(),
        replicas: 3,
        logs: logs.to_path_buf(),
    };
    let ack = humantime::format_duration(spec.ack_wait).to_string();
    let mut specs: Vec<(Target, ProcessSpec)> = Vec::new();
    for i in 0..spec.ledgers {
        let s = stack.ledger(&format!("ledger-{}", i + 1));
        specs.push((
            Target::Ledger(i),
            s.env("TRIAGE_LEDGER_WRITER__ACK_WAIT", &ack),
        ));
    }
    for tier in [1u8, 2] {
        for index in 0..spec.workers_per_tier {
            let s = stack.worker(
                &format!("worker-tier{tier}-{}", index + 1),
                tier,
                &sims.1[tier as usize - 1],
            );
            specs.push((
                Target::Worker { tier, index },
                s.env("TRIAGE_WORKER_CONSUMER__ACK_WAIT", &ack),
            ));
        }
    }
    for i in 0..spec.routers {
        let s = stack.router(&format!("router-{}", i + 1));
        specs.push((
            Target::Router(i),
            s.env("TRIAGE_ROUTER_CONSUMER__ACK_WAIT", &ack),
        ));
    }
    let mut procs = BTreeMap::new();
    for (target, s) in specs {
        let p = Supervised::start(s).map_err(|e| setup("services")(e.to_string()))?;
        procs.insert(target, p);
    }
    Ok(Fleet {
        cluster,
        procs,
        _sims: sims.0,
    })
}

/// The two simulators (processes, on free ports) and their URLs.
async fn start_sims(
    spec: &ChaosSpec,
    logs: &std::path::Path,
) -> Result<(Vec<Supervised>, Vec<String>), ChaosError> {
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    // An 8B and a 70B server under light load, as scripts/local-stack.sh's sims.
    for (tier, ttft, itl) in [(1, "40", "12"), (2, "120", "30")] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| setup("sim port")(e.to_string()))?
            .port();
        let name = format!("sim-tier{tier}");
        let s = ProcessSpec::new(
            &name,
            spec.bin_dir.join("triage-vllm-sim"),
            logs.join(format!("{name}.log")),
        )
        .args([
            "--model",
            &name,
            "--port",
            &port.to_string(),
            "--ttft-ms",
            ttft,
            "--itl-ms",
            itl,
        ])
        .args(["--output-tokens", "16-64", "--seed", &spec.seed.to_string()]);
        procs.push(Supervised::start(s).map_err(|e| setup("simulator")(e.to_string()))?);
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    let http = reqwest::Client::new();
    for url in &urls {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(format!("{url}/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > deadline {
                return Err(setup("simulator")(format!("{url} not healthy after 30 s")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((procs, urls))
}

/// Sends every request at its offset; returns the accepted ids and how many
/// were not accepted. A failed submit is retried with the same id for up
/// to 30 s (the stream de-duplicates it, so a retry of a request that was
/// in fact stored is answered once): a client's retry during a NATS fault.
async fn send_all(
    triage: TriageClient,
    requests: Vec<Request>,
    offsets: Vec<Duration>,
    started: Instant,
) -> (Vec<String>, usize) {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for (req, at) in requests.into_iter().zip(offsets) {
        tokio::time::sleep_until(started + at).await;
        let (triage, accepted) = (triage.clone(), accepted.clone());
        handles.push(tokio::spawn(async move {
            let id = req.id.clone();
            let ok = submit(&triage, req).await;
            if ok {
                accepted.lock().await.push(id);
            }
            ok
        }));
    }
    let mut refused = 0;
    for h in handles {
        if !h.await.unwrap_or(false) {
            refused += 1;
        }
    }
    let ids = accepted.lock().await.clone();
    (ids, refused)
}

async fn submit(triage: &TriageClient, req: Request) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match triage.submit(req.clone(), Duration::from_secs(1)).await {
            // The observer reads the replies; this stream is not needed.
            Ok(_) | Err(ClientError::Duplicate { .. }) => return true,
            Err(e) if Instant::now() > deadline => {
                eprintln!("chaos: request {} not accepted: {e}", req.id);
                return false;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Applies the plan's steps at their times, and until `stop` restarts any
/// process that exited on its own, as an orchestrator would (counted per
/// process: a crash is a finding). Returns what was done and the crashes.
async fn apply_faults(
    fleet: &mut Fleet,
    faults: &[Fault],
    started: Instant,
    spec: &ChaosSpec,
    stop: &CancellationToken,
) -> (Vec<FaultRecord>, BTreeMap<String, usize>) {
    let mut records: Vec<FaultRecord> = faults.iter().map(FaultRecord::planned).collect();
    let mut crashes = BTreeMap::new();
    let mut down: HashSet<Target> = HashSet::new();
    let mut steps = plan::steps(faults).into_iter().peekable();
    loop {
        let due = steps
            .peek()
            .is_some_and(|(at, _, _)| started + *at <= Instant::now());
        if due {
            let (at, i, step) = steps.next().expect("peeked");
            let outcome = apply(fleet, step, spec).await;
            let t = started.elapsed().as_secs_f64();
            match &outcome {
                Ok(()) => println!(
                    "chaos: {t:7.1} s  {step:?} (planned {:.1} s)",
                    at.as_secs_f64()
                ),
                Err(e) => println!("chaos: {t:7.1} s  {step:?} FAILED: {e}"),
            }
            match step {
                Step::Kill(t) if outcome.is_ok() && t != Target::Postgres => down.insert(t),
                Step::Restart(t) => down.remove(&t),
                _ => false,
            };
            records[i].record(step, outcome);
            continue;
        }
        if steps.peek().is_none() && stop.is_cancelled() {
            break;
        }
        restart_crashed(fleet, &down, &mut crashes, started);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.cancelled() => {}
        }
    }
    (records, crashes)
}

/// Restarts what is not running although not killed by the plan.
fn restart_crashed(
    fleet: &mut Fleet,
    down: &HashSet<Target>,
    crashes: &mut BTreeMap<String, usize>,
    started: Instant,
) {
    let mut crashed: Vec<Target> = fleet
        .procs
        .iter_mut()
        .filter_map(|(t, p)| (!down.contains(t) && !p.is_running()).then_some(*t))
        .collect();
    for i in 0..crate::cluster::NODES {
        if !down.contains(&Target::Nats(i)) && !fleet.cluster.node(i).is_running() {
            crashed.push(Target::Nats(i));
        }
    }
    for t in crashed {
        let restarted = match t {
            Target::Nats(i) => fleet.cluster.restart(i).map_err(|e| e.to_string()),
            _ => fleet
                .procs
                .get_mut(&t)
                .map_or(Ok(()), |p| p.restart().map_err(|e| e.to_string())),
        };
        *crashes.entry(t.to_string()).or_insert(0) += 1;
        println!(
            "chaos: {:7.1} s  {t} exited on its own; restarted ({restarted:?})",
            started.elapsed().as_secs_f64()
        );
    }
}

async fn apply(fleet: &mut Fleet, step: Step, spec: &ChaosSpec) -> Result<(), String> {
    match step {
        Step::Kill(Target::Postgres) => restart_postgres(spec.postgres_restart.as_deref()).await,
        // One node down at a time, and only once the cluster has caught up
        // from the last: killing a second node while the first is still
        // behind would take R3 streams below quorum (two failures, not one).
        Step::Kill(Target::Nats(i)) => {
            fleet
                .cluster
                .wait_healthy(Duration::from_secs(90))
                .await
                .map_err(|e| format!("not killed: {e}"))?;
            fleet.cluster.kill(i);
            Ok(())
        }
        Step::Restart(Target::Nats(i)) => fleet.cluster.restart(i).map_err(|e| e.to_string()),
        Step::Kill(t) => {
            let p = fleet.procs.get_mut(&t).ok_or(format!("no process {t}"))?;
            p.kill();
            Ok(())
        }
        Step::Restart(t) => {
            let p = fleet.procs.get_mut(&t).ok_or(format!("no process {t}"))?;
            p.restart().map_err(|e| e.to_string())
        }
    }
}

async fn restart_postgres(cmd: Option<&str>) -> Result<(), String> {
    let Some(cmd) = cmd else {
        return Ok(());
    };
    let run = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!(
            "`{cmd}` exited {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(Err(e)) => Err(format!("`{cmd}`: {e}")),
        Err(_) => Err(format!("`{cmd}` still running after 60 s")),
    }
}

/// Waits until every accepted request has a final reply, or `limit`.
async fn drain(observer: &Observer, accepted: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    while observer.with_final(accepted) < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads the usage events until the ledger holds as many rows as there are
/// distinct attempts among them (the writer caught up), or `limit`.
async fn wait_ledger(
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    db: &sqlx::PgPool,
    limit: Duration,
) -> Result<(Vec<triage_protocol::UsageEvent>, usize), ChaosError> {
    let deadline = Instant::now() + limit;
    loop {
        let (events, bad) =
            evidence::patiently("llm.usage", || evidence::usage_events(js, ns)).await?;
        let distinct: HashSet<(Option<&str>, &str, u32)> = events
            .iter()
            .map(|e| (e.tenant.as_deref(), e.id.as_str(), e.attempt))
            .collect();
        let rows = evidence::ledger_count(db).await.unwrap_or(0);
        if rows >= distinct.len() || Instant::now() > deadline {
            return Ok((events, bad));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn fates(
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    observer: &Observer,
    accepted: &[String],
) -> Result<Vec<(String, Fate)>, ChaosError> {
    let name = ns.stream_name(StreamKind::Results);
    let results = evidence::patiently("the results stream", || js.get_stream(&name))
        .await
        .map_err(|e| setup("results stream")(e.to_string()))?;
    let seen = observer.seen();
    let mut out = Vec::with_capacity(accepted.len());
    for id in accepted {
        let s = seen.lock().unwrap().get(id).cloned();
        let no_final = s.as_ref().is_none_or(|s| s.finals.is_empty());
        let kept = no_final
            && evidence::patiently("kept results", || {
                evidence::has_kept_result(&results, ns, id)
            })
            .await?;
        out.push((id.clone(), verdict::fate(s.as_ref(), kept)));
    }
    Ok(out)
}

/// Attempts that streamed chunks, and attempts that sent a completion,
/// without a usage event: ids of the form `id#attempt`.
fn unbooked(
    observer: &Observer,
    accepted: &[String],
    booked: &HashSet<(String, u32)>,
) -> (Vec<String>, Vec<String>) {
    let seen = observer.seen();
    let seen = seen.lock().unwrap();
    let (mut streamed, mut answered) = (Vec::new(), Vec::new());
    for id in accepted {
        let Some(s) = seen.get(id) else { continue };
        for a in s.streamed_attempts() {
            if !booked.contains(&(id.clone(), a)) {
                streamed.push(format!("{id}#{a}"));
            }
        }
        for f in &s.finals {
            if let verdict::Final::Completion { attempt, .. } = f {
                if !booked.contains(&(id.clone(), *attempt)) {
                    answered.push(format!("{id}#{attempt}"));
                }
            }
        }
    }
    (streamed, answered)
}
