//! Child processes that the chaos suite and the cluster tests start, kill
//! with SIGKILL and start again. Each keeps its command line so a restart
//! runs the same thing, appends to one log file across restarts, and is
//! killed when dropped, so nothing outlives a failed test or run.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Spawning failed (binary missing, not executable, …).
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        /// The process's name.
        name: String,
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The log file could not be opened.
    #[error("cannot open log file {path}: {source}")]
    Log {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Short name for logs and reports (`router-1`, `nats-3`).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set on top of this process's own.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
}

impl ProcessSpec {
    /// A spec running `program` with no arguments, logging to `log`.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, log: PathBuf) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log,
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (a later value for the same key wins).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A started process that can be killed and started again.
#[derive(Debug)]
pub struct Supervised {
    spec: ProcessSpec,
    child: Option<Child>,
    starts: u32,
    kills: u32,
}

impl Supervised {
    /// Starts `spec`.
    pub fn start(spec: ProcessSpec) -> Result<Self, ProcessError> {
        let mut s = Self {
            spec,
            child: None,
            starts: 0,
            kills: 0,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), ProcessError> {
        let log = |s: &Self| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&s.spec.log)
                .map_err(|source| ProcessError::Log {
                    path: s.spec.log.display().to_string(),
                    source,
                })
        };
        let (out, err) = (log(self)?, log(self)?);
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: self.spec.name.clone(),
            program: self.spec.program.display().to_string(),
            source,
        })?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is running (a process that exited on its own is reaped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGKILL (no chance to clean up), then reaps it. Nothing if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
            self.kills += 1;
        }
    }

    /// SIGTERM (a graceful shutdown), then waits for the exit at most
    /// `limit`; `None` when it was not running or did not exit in time
    /// (it is then still running, and killed when dropped).
    pub fn terminate(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let pid = self.pid()?.to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        if !sent.is_ok_and(|s| s.success()) {
            return None;
        }
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Starts it again (killing it first if it still runs).
    pub fn restart(&mut self) -> Result<(), ProcessError> {
        self.kill();
        self.spawn()
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// How many times it was killed while running.
    pub fn kills(&self) -> u32 {
        self.kills
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_and_restart_run_the_same_command_again_into_one_log() {
        let dir = std::env::temp_dir().join(format!("triage-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("sleeper.log");
        let spec = ProcessSpec::new("sleeper", "/bin/sh", log.clone())
            .args(["-c", "echo started; exec sleep 30"]);
        let started = |n: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("started")
                .count()
                < n
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "log never had {n} starts"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        let mut p = Supervised::start(spec).unwrap();
        let first = p.pid().unwrap();
        started(1);
        assert!(p.is_running());
        p.kill();
        assert!(!p.is_running() && p.pid().is_none());
        p.restart().unwrap();
        assert!(p.is_running() && p.pid() != Some(first));
        assert_eq!((p.starts(), p.kills()), (2, 1));
        // Both starts wrote to the same file.
        started(2);
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let spec = ProcessSpec::new(
            "ghost",
            "/nonexistent/ghost",
            std::env::temp_dir().join("g.log"),
        );
        let e = Supervised::start(spec).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ghost"), "{e}");
    }
}
