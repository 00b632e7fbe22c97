//! One `rushes serve` process of a local cluster: spawn, SIGKILL, restart on the same data,
//! SIGSTOP / SIGCONT, and its log.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::http::{Http, HttpError};
use crate::status::ClusterStatus;
use crate::wait::poll_until;

/// Environment variable naming the `rushes` binary to run.
pub const RUSHES_BIN_ENV: &str = "RUSHES_BIN";

/// The `rushes` binary: `$RUSHES_BIN`, else `rushes` next to the profile directory of the
/// running executable (a test lives in `target/<profile>/deps/`, the binary in
/// `target/<profile>/`). Panics with the command to build it when it is missing.
pub fn rushes_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(RUSHES_BIN_ENV) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{RUSHES_BIN_ENV}={} is not a file; point it at a built `rushes` binary", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("path of the running executable");
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(3).map(|dir| dir.join("rushes")).collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return found.clone();
    }
    panic!(
        "the `rushes` binary is missing (looked for {}). Build it first with `cargo build --release -p rushes-node` \
         (same profile as the tests), or set {RUSHES_BIN_ENV} to its path.",
        candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
}

/// Last `lines` lines of a file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A node process. The config file, data directory and addresses stay the same across
/// restarts, so a restarted node comes back on its own data and ports.
pub struct LocalNode {
    pub id: u64,
    /// `127.0.0.1:port` of the HTTP API.
    pub http_addr: String,
    /// `127.0.0.1:port` of the Raft transport.
    pub raft_addr: String,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// The `rushes` binary the next start runs (a rolling upgrade swaps it).
    binary: Mutex<PathBuf>,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
    paused: Mutex<bool>,
    http: Http,
}

impl LocalNode {
    pub(crate) fn new(id: u64, http_addr: String, raft_addr: String, dir: &Path, binary: PathBuf, env: Vec<(String, String)>) -> LocalNode {
        LocalNode {
            id,
            http_addr,
            raft_addr,
            config_path: dir.join(format!("node-{id}.toml")),
            data_dir: dir.join(format!("node-{id}")),
            log_path: dir.join(format!("node-{id}.log")),
            binary: Mutex::new(binary),
            env,
            child: Mutex::new(None),
            paused: Mutex::new(false),
            http: Http::new(Duration::from_secs(5)),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The node crate's client (120 s timeouts: do not point it at a paused node).
    pub fn client(&self) -> rushes_client::Client {
        rushes_client::Client::new(&self.base_url()).with_token(crate::http::api_key())
    }

    /// The harness's client for this node, with 5 s timeouts.
    pub fn http(&self) -> &Http {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Process id while the process exists.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// The process exists and has not exited (it may be paused).
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap();
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap()
    }

    /// Running and not paused: it can answer requests.
    pub fn is_serving(&self) -> bool {
        self.is_running() && !self.is_paused()
    }

    /// Starts the process (it must not be running) and waits until `GET /health` is 200.
    pub fn start(&self, timeout: Duration) {
        self.spawn();
        self.wait_healthy(timeout);
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn(&self) {
        assert!(!self.is_running(), "node {} is already running", self.id);
        let mut slot = self.child.lock().unwrap();
        let log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open the node log");
        let binary = self.binary.lock().unwrap().clone();
        let mut command = Command::new(&binary);
        command.arg("serve").arg("--config").arg(&self.config_path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
        // The node reads every RUSHES_* variable as a config key and refuses unknown ones, so
        // the harness's own (RUSHES_BIN) and anything else inherited stay out; RUSHES_LOG (a log
        // filter) passes through for debugging.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("RUSHES_") && k != "RUSHES_LOG") {
                command.env_remove(&key);
            }
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {} for node {}: {e}", binary.display(), self.id));
        *slot = Some(child);
        *self.paused.lock().unwrap() = false;
    }

    /// Waits until `GET /health` answers 200; panics with the log tail if the process exits or
    /// the deadline passes.
    pub fn wait_healthy(&self, timeout: Duration) {
        let mut exited = None;
        let healthy = poll_until(timeout, || {
            if let Some(child) = self.child.lock().unwrap().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
            }
            self.http.get(&self.url("/health")).is_ok()
        });
        if let Some(status) = exited {
            self.fail(&format!("node {} exited with {status} while starting", self.id));
        }
        if !healthy {
            self.fail(&format!("node {} did not answer GET /health with 200 within {timeout:?}", self.id));
        }
    }

    /// Panics with `message` and the tail of this node's log.
    /// A panic's message is quoted first: with backtraces on, it is far above the tail.
    pub fn fail(&self, message: &str) -> ! {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let panics: Vec<String> = lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.contains("panicked at"))
            .take(3)
            .map(|(i, line)| format!("{line}\n{}", lines.get(i + 1).copied().unwrap_or("")))
            .collect();
        panic!(
            "{message}\n--- panics in {} ---\n{}\n--- last lines ---\n{}",
            self.log_path.display(),
            panics.join("\n"),
            self.log_tail(60)
        );
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// SIGKILL (works on a paused process too) and reap it. No shutdown code runs.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        *self.paused.lock().unwrap() = false;
    }

    /// Runs `binary` from the next start on (a rolling upgrade).
    pub fn set_binary(&self, binary: PathBuf) {
        *self.binary.lock().unwrap() = binary;
    }

    /// SIGKILL if running, then start again on the same config and data and wait for health.
    pub fn restart(&self, timeout: Duration) {
        self.kill();
        self.start(timeout);
    }

    /// SIGSTOP: the process keeps its sockets but stops running; peers see it as silent.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP, "SIGSTOP");
        *self.paused.lock().unwrap() = true;
        // kill(2) returns before every thread has stopped: on a busy machine one of them could
        // still answer a request. Wait until the kernel reports each thread stopped.
        if let Some(pid) = self.pid() {
            let stopped = poll_until(Duration::from_secs(10), || every_thread_stopped(pid));
            assert!(stopped, "node {} (pid {pid}) did not stop within 10 s of SIGSTOP", self.id);
        }
    }

    /// SIGCONT after [`LocalNode::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT, "SIGCONT");
        *self.paused.lock().unwrap() = false;
    }

    fn signal(&self, signal: libc::c_int, name: &str) {
        let pid = self.pid().unwrap_or_else(|| panic!("node {} is not running; cannot send {name}", self.id));
        // SAFETY: plain kill(2) on a child process we spawned and have not reaped.
        let result = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(result, 0, "{name} to node {} (pid {pid}) failed: {}", self.id, std::io::Error::last_os_error());
    }

    /// `GET /v1/cluster` (with `?digest=true` when asked) from this node.
    pub fn status(&self, digest: bool) -> Result<ClusterStatus, String> {
        crate::status::fetch(&self.http, &self.base_url(), self.id, digest)
    }

    /// `POST /v1/debug/partition`: this node drops all Raft and peer traffic to and from
    /// `isolate_from` (empty heals).
    pub fn set_isolation(&self, isolate_from: &[u64]) -> Result<(), HttpError> {
        let body = serde_json::json!({ "isolate_from": isolate_from });
        self.http.send("POST", &self.url("/v1/debug/partition"), "application/json", body.to_string().as_bytes()).map(|_| ())
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in `/proc/PID/task/TID/stat`).
/// Where there is no `/proc`, the signal is trusted.
fn every_thread_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return true };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            // The state follows the parenthesised command name, which may itself hold spaces.
            .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
            .is_some_and(|state| state == 'T' || state == 't')
    })
}
