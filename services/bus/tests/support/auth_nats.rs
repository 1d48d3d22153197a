//! A private nats-server 2.9 running the shipped `deploy/nats/triage.conf`
//! on a free port, with JetStream in a temporary directory; killed on drop.
//! Used by this crate's permission tests and (by path) replay's secured
//! pipeline test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

/// Every user of the shipped configuration, as the password variable names
/// it (`TRIAGE_NATS_<NAME>_PASSWORD`) and the user name.
pub const USERS: [(&str, &str); 10] = [
    ("ROUTER", "router"),
    ("WORKER_TIER1", "worker-tier1"),
    ("WORKER_TIER2", "worker-tier2"),
    ("LEDGER", "ledger"),
    ("SHADOW", "shadow"),
    ("COST_EXPORTER", "cost-exporter"),
    ("GATEWAY", "gateway"),
    ("ADMIN", "admin"),
    ("CLIENT_ACME", "acme"),
    ("CLIENT_GLOBEX", "globex"),
];

/// The test password of `user`.
pub fn password(user: &str) -> String {
    format!("pw-{user}-secret")
}

/// The running server.
pub struct AuthNats {
    child: Child,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    _store: TempDir,
}

impl AuthNats {
    /// Starts the server and waits (10 s at most) until it accepts connections.
    pub fn start() -> Self {
        let conf = shipped_config();
        let store = TempDir::new();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut command = Command::new(nats_server());
        command
            .arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", "0", "-sd"])
            .arg(&store.0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(store.0.join("server.log")).expect("log file"));
        for (var, user) in USERS {
            command.env(format!("TRIAGE_NATS_{var}_PASSWORD"), password(user));
        }
        let mut child = command.spawn().expect("nats-server starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(store.0.join("server.log")).unwrap_or_default();
                panic!(
                    "nats-server with {} exited ({status}):\n{log}",
                    conf.display()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server with {} did not listen on {port} within 10 s",
                conf.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        }
    }

    /// The server's log lines reporting a permissions violation, by anyone.
    pub fn violations(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self._store.0.join("server.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("Violation"))
            .map(String::from)
            .collect()
    }

    /// A raw connection as `user` whose server errors (permission
    /// violations) arrive on the returned channel.
    pub async fn probe(
        &self,
        user: &str,
        inbox_prefix: &str,
    ) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let client =
            async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
                .custom_inbox_prefix(inbox_prefix)
                // A refused request is never answered: fail it soon.
                .request_timeout(Some(Duration::from_secs(2)))
                .event_callback(move |event| {
                    let tx = tx.clone();
                    async move {
                        if let async_nats::Event::ServerError(e) = event {
                            let _ = tx.send(e.to_string());
                        }
                    }
                })
                .connect(&self.url)
                .await
                .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        (client, rx)
    }
}

impl Drop for AuthNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `deploy/nats/triage.conf`, found above the crate being tested.
fn shipped_config() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("deploy/nats/triage.conf"))
        .find(|conf| conf.exists())
        .unwrap_or_else(|| panic!("no deploy/nats/triage.conf above {}", manifest.display()))
}

/// `TRIAGE_NATS_SERVER`, else the Debian package's binary, else `PATH`.
fn nats_server() -> String {
    std::env::var("TRIAGE_NATS_SERVER").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server".into()
        } else {
            "nats-server".into()
        }
    })
}

/// Waits (5 s at most) for a server error containing `needle`; earlier,
/// unrelated errors are skipped.
pub async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Some(e)) if e.contains(needle) => return,
            Ok(Some(e)) => seen.push(e),
            Ok(None) | Err(_) => {
                panic!("no server error containing {needle:?} within 5 s; saw {seen:?}")
            }
        }
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        // Std only, so other crates' tests can include this file too.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("triage-nats-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
