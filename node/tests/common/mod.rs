//! Test harness: runs the real `rushes serve` binary on loopback, waits for conditions with
//! deadlines (never bare sleeps), and can kill it with SIGKILL and restart it on the same data.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use rushes_client::wait::wait_until;
use rushes_client::Client;

pub struct TestNode {
    pub data_dir: PathBuf,
    pub port: u16,
    pub extra_args: Vec<String>,
    /// Environment variables of the node process (besides `RUST_LOG=warn` and its API key).
    pub env: Vec<(String, String)>,
    /// The node runs with API keys on: this key has every scope, and `client()` sends it.
    pub token: String,
    child: Option<Child>,
    log_path: PathBuf,
    /// Set when the node serves HTTPS: the CA its clients trust.
    https_ca_pem: Option<Vec<u8>>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl TestNode {
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> TestNode {
        TestNode::start_with_env(data_dir, extra_args, &[])
    }

    pub fn start_with_env(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> TestNode {
        let mut node = TestNode {
            data_dir: data_dir.to_path_buf(),
            port: free_port(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            token: rushes_node::http::auth::new_key(),
            child: None,
            log_path: data_dir.join("node.log"),
            https_ca_pem: None,
        };
        node.spawn();
        node
    }

    /// A node serving HTTPS with `cert_file` and `key_file`; its clients trust `ca_pem`.
    pub fn start_https(data_dir: &Path, cert_file: &Path, key_file: &Path, ca_pem: Vec<u8>) -> TestNode {
        let mut node = TestNode {
            data_dir: data_dir.to_path_buf(),
            port: free_port(),
            extra_args: vec![
                "--set".to_string(),
                format!("http.tls_cert_file={}", cert_file.display()),
                "--set".to_string(),
                format!("http.tls_key_file={}", key_file.display()),
            ],
            env: Vec::new(),
            token: rushes_node::http::auth::new_key(),
            child: None,
            log_path: data_dir.join("node.log"),
            https_ca_pem: Some(ca_pem),
        };
        node.spawn();
        node
    }

    pub fn base_url(&self) -> String {
        let scheme = if self.https_ca_pem.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client with the node's all-scopes API key.
    pub fn client(&self) -> Client {
        self.anonymous_client().with_token(Some(self.token.clone()))
    }

    /// A client without any key (the node must refuse it, except `/health` and `/ready`).
    pub fn anonymous_client(&self) -> Client {
        let client = Client::new(&self.base_url());
        match &self.https_ca_pem {
            Some(ca_pem) => client.with_ca_pem(ca_pem).expect("the test CA loads"),
            None => client,
        }
    }

    /// `RUSHES_AUTH_KEYS`: the test's all-scopes key, and any `extra` entries.
    fn auth_keys(&self) -> String {
        format!(
            "[{{ name = \"test-admin\", hash = \"{}\", scopes = [\"read\", \"write\", \"admin\"] }}]",
            rushes_node::http::auth::key_hash(&self.token)
        )
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("create data dir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open node log");
        let child = Command::new(env!("CARGO_BIN_EXE_rushes"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("RUST_LOG", "warn")
            .env("RUSHES_AUTH_KEYS", self.auth_keys())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start rushes serve");
        self.child = Some(child);
        let client = self.client();
        let log_path = self.log_path.clone();
        wait_until("the node to answer /health", Duration::from_secs(60), || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("node exited early with {status}; log:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
                }
            }
            client.get("/health").is_ok()
        });
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("node did not stop on SIGTERM within 30 s");
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "stop or kill the node first");
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits until every shard has fused and indexed everything it applied.
    pub fn wait_searchable(&self, timeout: Duration) {
        let client = self.client();
        wait_until("every shard to index all applied entries", timeout, || {
            let Ok(status) = client.get_json("/v1/cluster") else { return false };
            status["shards"].as_array().is_some_and(|shards| {
                shards.iter().all(|s| {
                    let r = &s["replicas"][0];
                    r["indexed_index"] == r["applied_index"] && r["fused_index"] == r["applied_index"]
                })
            })
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Generates a small deterministic season into `dir` and returns its path.
pub fn sample(dir: &Path, hours: f64, seed: u64) -> PathBuf {
    let out = dir.join(format!("sample-{hours}-{seed}"));
    std::fs::create_dir_all(&out).expect("sample dir");
    rushes_sample::write_season(&rushes_sample::GenConfig { hours, seed, ..Default::default() }, &out, &mut |_, _| {})
        .expect("generate sample");
    out
}

/// Sends the sample's assets and annotations (NDJSON batches) to the node.
pub fn load_sample(node: &TestNode, sample: &Path, batch_lines: usize) -> usize {
    let client = node.client();
    for line in std::fs::read_to_string(sample.join("assets.ndjson")).expect("assets").lines() {
        let mut value: serde_json::Value = serde_json::from_str(line).expect("asset json");
        let asset_id = value["asset_id"].as_str().expect("asset_id").to_string();
        value.as_object_mut().expect("object").remove("asset_id");
        client.send("PUT", &format!("/v1/assets/{asset_id}"), "application/json", value.to_string().as_bytes()).expect("put asset");
    }
    let text = std::fs::read_to_string(sample.join("annotations.ndjson")).expect("annotations");
    let lines: Vec<&str> = text.lines().collect();
    for chunk in lines.chunks(batch_lines) {
        let body = chunk.join("\n");
        client.post_ndjson_retrying(body.as_bytes(), 20).expect("ingest batch");
    }
    lines.len()
}

/// Runs a command to completion within `timeout` (killed and reported otherwise).
pub fn run_with_deadline(command: &mut Command, timeout: Duration) -> Output {
    let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn command");
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(timeout) {
        Ok(output) => output.expect("command output"),
        Err(_) => {
            // SAFETY: signals only the child this function started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("{command:?} did not finish within {timeout:?}");
        }
    }
}
