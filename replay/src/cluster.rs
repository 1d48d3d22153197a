//! A 3-node NATS JetStream cluster on this machine: three real
//! `nats-server` processes, each started from its file in
//! `deploy/nats/cluster/` (the same files `scripts/local-stack.sh start
//! nats-cluster` uses) with ports and store directory overridden on the
//! command line, so tests and chaos runs get free ports and a private store.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{ProcessError, ProcessSpec, Supervised};

/// Nodes in the cluster.
pub const NODES: usize = 3;

/// Why the cluster is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A node could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// No free port, or the store directory could not be made.
    #[error("cluster set-up: {0}")]
    Io(#[from] std::io::Error),
    /// Not every node answered `/healthz` (which on 2.9 also needs a
    /// JetStream meta leader) in time.
    #[error("NATS cluster not healthy after {limit:?}: {detail}")]
    Unhealthy {
        /// The wait.
        limit: Duration,
        /// What the last check said.
        detail: String,
    },
}

/// Client, route and monitoring ports of the three nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterPorts {
    /// Client ports.
    pub client: [u16; NODES],
    /// Cluster (route) ports.
    pub cluster: [u16; NODES],
    /// HTTP monitoring ports.
    pub monitor: [u16; NODES],
}

impl ClusterPorts {
    /// The ports written in deploy/nats/cluster (4231-4233, 6231-6233, 8231-8233).
    pub fn standard() -> Self {
        Self {
            client: [4231, 4232, 4233],
            cluster: [6231, 6232, 6233],
            monitor: [8231, 8232, 8233],
        }
    }

    /// Nine ports free right now, below Linux's ephemeral range
    /// (32768–60999 by default). Ports the OS hands out for `bind(0)` are
    /// also the ones it gives outgoing connections, so between releasing
    /// them and nats-server binding them another process's connection (a
    /// second cluster's routes, in a parallel test) could take one: a node
    /// then fails with "address already in use" or joins the wrong cluster.
    pub fn free() -> std::io::Result<Self> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        let mut candidates = (0..).scan(seed, |s, _| {
            *s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            Some(FREE_PORTS.start + ((*s >> 33) % u64::from(FREE_PORTS.len() as u16)) as u16)
        });
        // Hold all nine listeners at once so no two are the same.
        let mut listeners: Vec<TcpListener> = Vec::with_capacity(3 * NODES);
        for _ in 0..FREE_PORT_TRIES {
            if listeners.len() == 3 * NODES {
                break;
            }
            let port = candidates.next().expect("endless");
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(l);
            }
        }
        if listeners.len() < 3 * NODES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("fewer than {} free ports in {FREE_PORTS:?}", 3 * NODES),
            ));
        }
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?;
        let pick = |k: usize| [ports[k * NODES], ports[k * NODES + 1], ports[k * NODES + 2]];
        Ok(Self {
            client: pick(0),
            cluster: pick(1),
            monitor: pick(2),
        })
    }
}

/// Where [`ClusterPorts::free`] looks: below the ephemeral range, above
/// the well-known services.
const FREE_PORTS: std::ops::Range<u16> = 20_000..32_000;
/// Ports tried before giving up.
const FREE_PORT_TRIES: usize = 1_000;

/// Where the node configuration files and the server binary are.
#[derive(Debug, Clone)]
pub struct ClusterSetup {
    /// The directory holding `nats-1.conf` … `nats-3.conf`.
    pub config_dir: PathBuf,
    /// The nats-server executable.
    pub server: PathBuf,
    /// Store directories (`<store>/nats-N`).
    pub store: PathBuf,
    /// Log files (`<logs>/nats-N.log`).
    pub logs: PathBuf,
    /// The ports.
    pub ports: ClusterPorts,
}

impl ClusterSetup {
    /// The repository's node files, `$TRIAGE_NATS_SERVER` or Debian's
    /// `/usr/sbin/nats-server` (else `nats-server` on the PATH), storing
    /// under `store` and logging to `logs`.
    pub fn local(store: PathBuf, logs: PathBuf, ports: ClusterPorts) -> Self {
        let root = std::env::var_os("TRIAGE_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        let server = std::env::var_os("TRIAGE_NATS_SERVER")
            .map(PathBuf::from)
            .or_else(|| {
                let debian = PathBuf::from("/usr/sbin/nats-server");
                debian.exists().then_some(debian)
            })
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        Self {
            config_dir: root.join("deploy/nats/cluster"),
            server,
            store,
            logs,
            ports,
        }
    }

    /// The command line of node `i` (0-based): its file, with ports, routes
    /// and store directory from this set-up.
    pub fn node_spec(&self, i: usize) -> ProcessSpec {
        let name = node_name(i);
        let p = &self.ports;
        let routes: Vec<String> = p
            .cluster
            .iter()
            .map(|c| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let conf = self.config_dir.join(format!("{name}.conf"));
        let store = self.store.join(&name);
        ProcessSpec::new(&name, &self.server, self.logs.join(format!("{name}.log"))).args([
            "-c".to_string(),
            conf.display().to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            p.client[i].to_string(),
            "-m".into(),
            p.monitor[i].to_string(),
            "--cluster".into(),
            format!("nats-route://127.0.0.1:{}", p.cluster[i]),
            "--routes".into(),
            routes.join(","),
            "-sd".into(),
            store.display().to_string(),
        ])
    }
}

/// `nats-1` … `nats-3` for 0 … 2.
pub fn node_name(i: usize) -> String {
    format!("nats-{}", i + 1)
}

/// The running cluster; every node is killed when it is dropped.
pub struct NatsCluster {
    setup: ClusterSetup,
    nodes: Vec<Supervised>,
    http: reqwest::Client,
}

impl NatsCluster {
    /// Starts the three nodes (it does not wait: see [`Self::wait_healthy`]).
    pub fn start(setup: ClusterSetup) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(&setup.store)?;
        std::fs::create_dir_all(&setup.logs)?;
        let nodes = (0..NODES)
            .map(|i| Supervised::start(setup.node_spec(i)))
            .collect::<Result<_, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("a plain HTTP client builds");
        Ok(Self { setup, nodes, http })
    }

    /// Every node's client URL, comma-separated (what services are given).
    pub fn urls(&self) -> String {
        (0..NODES)
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.setup.ports.client[i])
    }

    /// Node `i`'s process.
    pub fn node(&mut self, i: usize) -> &mut Supervised {
        &mut self.nodes[i]
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again (same store: it catches up from its peers).
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        Ok(self.nodes[i].restart()?)
    }

    /// Node `i`'s `/healthz`: `Ok` when it answers 200, else what it said.
    pub async fn node_health(&self, i: usize) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{}/healthz", self.setup.ports.monitor[i]);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{}: {e}", node_name(i)))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(format!("{}: {}", node_name(i), body.trim()))
    }

    /// Waits until all three nodes are healthy (up, routed, and with a
    /// JetStream meta leader: 2.9's `/healthz` checks that).
    pub async fn wait_healthy(&self, limit: Duration) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut last = Ok(());
            for i in 0..NODES {
                if let Err(e) = self.node_health(i).await {
                    last = Err(e);
                    break;
                }
            }
            match last {
                Ok(()) => return Ok(()),
                Err(detail) if tokio::time::Instant::now() >= deadline => {
                    return Err(ClusterError::Unhealthy { limit, detail })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_command_lines_override_ports_routes_and_store() {
        let setup = ClusterSetup {
            config_dir: "/cfg".into(),
            server: "/usr/sbin/nats-server".into(),
            store: "/run/c".into(),
            logs: "/logs".into(),
            ports: ClusterPorts::standard(),
        };
        let spec = setup.node_spec(1);
        assert_eq!(spec.name, "nats-2");
        assert_eq!(spec.log, PathBuf::from("/logs/nats-2.log"));
        let line = spec.args.join(" ");
        assert_eq!(
            line,
            "-c /cfg/nats-2.conf -a 127.0.0.1 -p 4232 -m 8232 \
             --cluster nats-route://127.0.0.1:6232 \
             --routes nats-route://127.0.0.1:6231,nats-route://127.0.0.1:6232,nats-route://127.0.0.1:6233 \
             -sd /run/c/nats-2"
        );
    }

    #[test]
    fn free_ports_are_nine_distinct_ports() {
        let p = ClusterPorts::free().unwrap();
        let mut all: Vec<u16> = p
            .client
            .into_iter()
            .chain(p.cluster)
            .chain(p.monitor)
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 9);
        assert!(all.iter().all(|p| FREE_PORTS.contains(p)), "{all:?}");
    }
}
