//! A local cluster of `rushes serve` processes on loopback, with faults: SIGKILL + restart,
//! SIGSTOP + SIGCONT, and network partitions through the nodes' fault-injection endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::node::{rushes_binary, LocalNode};
use crate::status::ClusterStatus;
use crate::wait::poll_until;

/// Environment variable that makes a node expose `/v1/debug/*`; the harness always sets it.
pub const FAULT_INJECTION_ENV: &str = "RUSHES_FAULT_INJECTION";

/// How to build a [`LocalCluster`]. [`ClusterOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub shards: u32,
    pub replication_factor: usize,
    pub cluster_id: String,
    /// `index.commit_interval_ms` (short, so indexing keeps up within a test).
    pub commit_interval_ms: u64,
    /// Appended verbatim to every node's config file (more sections, e.g. `[raft]`).
    pub extra_toml: String,
    /// Top-level keys written before every section of the config file (e.g. `vector_spaces = []`).
    pub root_toml: String,
    /// More keys of the `[cluster]` section (e.g. `max_frame_bytes = 16777216`).
    pub cluster_toml: String,
    /// `RUST_LOG` of the nodes.
    pub rust_log: String,
    /// How long a start or restart may take to answer `/health`.
    pub start_timeout: Duration,
    /// The `rushes` binary; default [`rushes_binary`].
    pub binary: Option<PathBuf>,
    /// Start the nodes with `RUSHES_FAULT_INJECTION=1` (default true; [`LocalCluster::partition`]
    /// needs it).
    pub fault_injection: bool,
    /// Mutual TLS between the nodes, with certificates from `rushes cluster certs` (default true).
    pub peer_tls: bool,
    /// An API key with every scope required on the nodes' API, and sent by every request of the
    /// suite (default true).
    pub api_key: bool,
}

impl ClusterOptions {
    pub fn new(nodes: usize, shards: u32, replication_factor: usize) -> ClusterOptions {
        ClusterOptions {
            nodes,
            shards,
            replication_factor,
            cluster_id: "jepsen".to_string(),
            commit_interval_ms: 200,
            extra_toml: String::new(),
            root_toml: String::new(),
            cluster_toml: String::new(),
            rust_log: "warn".to_string(),
            start_timeout: Duration::from_secs(60),
            binary: None,
            fault_injection: true,
            peer_tls: true,
            api_key: true,
        }
    }
}

/// Ports picked by binding port 0: every listener is held until all are chosen, so the ports of
/// one cluster are distinct.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local address").port()).collect()
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    serde_json::Value::String(value.to_string()).to_string()
}

/// What a cluster's nodes need besides their addresses: peer certificates and the API key.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Directory of `ca.pem` and `node-N.pem` / `node-N.key`.
    pub certs_dir: Option<PathBuf>,
    /// The key's hash, as `[[auth.keys]]` holds it.
    pub api_key_hash: Option<String>,
}

/// Makes the certificates and the API key with the `rushes` binary under test (`rushes cluster
/// certs`, `rushes keys create`); returns them and the key itself.
pub fn make_credentials(binary: &Path, dir: &Path, options: &ClusterOptions) -> (Credentials, Option<String>) {
    let run = |args: &[&str]| -> String {
        let output = std::process::Command::new(binary).args(args).output().expect("run the rushes binary");
        assert!(output.status.success(), "rushes {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let mut credentials = Credentials::default();
    if options.peer_tls {
        let certs = dir.join("certs");
        let nodes = options.nodes.to_string();
        run(&["cluster", "certs", "--nodes", &nodes, "--out", &certs.display().to_string(), "--cluster-id", &options.cluster_id]);
        credentials.certs_dir = Some(certs);
    }
    let mut key = None;
    if options.api_key {
        // One key for every cluster of this test process: tests of one binary may run clusters
        // side by side, and every request of the suite sends the same key.
        static SUITE_KEY: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        let (suite_key, hash) = SUITE_KEY.get_or_init(|| {
            let printed = run(&["keys", "create", "--name", "jepsen", "--scopes", "read,write,admin"]);
            let value_after = |marker: &str| {
                printed.lines().find_map(|line| line.split_once(marker).map(|(_, rest)| rest.trim().trim_matches('"').to_string()))
            };
            (
                value_after("): ").expect("`rushes keys create` printed the key"),
                value_after("hash = ").expect("`rushes keys create` printed the hash"),
            )
        });
        key = Some(suite_key.clone());
        credentials.api_key_hash = Some(hash.clone());
    }
    (credentials, key)
}

/// The config file of node `id` (the format `rushes serve --config` reads).
pub fn node_config_toml(
    options: &ClusterOptions,
    credentials: &Credentials,
    id: u64,
    data_dir: &Path,
    members: &[(u64, String, String)],
) -> String {
    let listen = &members.iter().find(|(member, _, _)| *member == id).expect("node is a member").1;
    let mut text = String::new();
    if !options.root_toml.is_empty() {
        let _ = writeln!(text, "{}\n", options.root_toml);
    }
    let _ = writeln!(
        text,
        "[node]\nid = {id}\ndata_dir = {}\nlisten = {}\n",
        toml_string(&data_dir.display().to_string()),
        toml_string(listen)
    );
    let _ = writeln!(
        text,
        "[cluster]\ncluster_id = {}\nshards = {}\nreplication_factor = {}",
        toml_string(&options.cluster_id),
        options.shards,
        options.replication_factor
    );
    if !options.cluster_toml.is_empty() {
        let _ = writeln!(text, "{}", options.cluster_toml);
    }
    match &credentials.certs_dir {
        Some(certs) => {
            let file = |name: String| toml_string(&certs.join(name).display().to_string());
            let _ = writeln!(
                text,
                "tls_ca_file = {}\ntls_cert_file = {}\ntls_key_file = {}\n",
                file("ca.pem".into()),
                file(format!("node-{id}.pem")),
                file(format!("node-{id}.key"))
            );
        }
        None => {
            let _ = writeln!(text, "insecure_peers = true\n");
        }
    }
    for (member, http_addr, raft_addr) in members {
        let _ = writeln!(
            text,
            "[[cluster.nodes]]\nid = {member}\nraft_addr = {}\nhttp_addr = {}\n",
            toml_string(raft_addr),
            toml_string(http_addr)
        );
    }
    if let Some(hash) = &credentials.api_key_hash {
        let _ =
            writeln!(text, "[[auth.keys]]\nname = \"jepsen\"\nhash = {}\nscopes = [\"read\", \"write\", \"admin\"]\n", toml_string(hash));
    }
    let _ = writeln!(text, "[index]\ncommit_interval_ms = {}", options.commit_interval_ms);
    if !options.extra_toml.is_empty() {
        let _ = writeln!(text, "\n{}", options.extra_toml);
    }
    text
}

/// Node ids are 1..=n; `nodes[i]` has id `i + 1`.
pub struct LocalCluster {
    pub dir: PathBuf,
    pub options: ClusterOptions,
    nodes: Vec<LocalNode>,
    /// Desired isolation per node (who it drops traffic from); empty when healed.
    isolation: Mutex<BTreeMap<u64, Vec<u64>>>,
    /// Isolation each running node was last told; a fresh process starts with none.
    told: Mutex<BTreeMap<u64, Vec<u64>>>,
}

impl LocalCluster {
    /// Starts `nodes` nodes (ids 1..=nodes) under `dir` and waits until every one answers
    /// `GET /health`.
    pub fn start(dir: &Path, nodes: usize, shards: u32, replication_factor: usize) -> LocalCluster {
        LocalCluster::start_with(dir, ClusterOptions::new(nodes, shards, replication_factor))
    }

    pub fn start_with(dir: &Path, options: ClusterOptions) -> LocalCluster {
        assert!(options.nodes >= 1, "a cluster needs at least one node");
        std::fs::create_dir_all(dir).expect("create the cluster directory");
        let dir = dir.canonicalize().expect("absolute cluster directory");
        let binary = options.binary.clone().unwrap_or_else(rushes_binary);
        let ports = free_ports(options.nodes * 2);
        let members: Vec<(u64, String, String)> = (0..options.nodes)
            .map(|i| (i as u64 + 1, format!("127.0.0.1:{}", ports[2 * i]), format!("127.0.0.1:{}", ports[2 * i + 1])))
            .collect();
        let (credentials, api_key) = make_credentials(&binary, &dir, &options);
        // Every request of the suite carries the key from here on (the same for every cluster).
        if api_key.is_some() {
            crate::http::set_api_key(api_key);
        }
        let mut env = vec![("RUST_LOG".to_string(), options.rust_log.clone())];
        if options.fault_injection {
            env.push((FAULT_INJECTION_ENV.to_string(), "1".to_string()));
        }
        let nodes: Vec<LocalNode> = members
            .iter()
            .map(|(id, http_addr, raft_addr)| {
                let node = LocalNode::new(*id, http_addr.clone(), raft_addr.clone(), &dir, binary.clone(), env.clone());
                std::fs::create_dir_all(&node.data_dir).expect("create the node's data directory");
                let config = node_config_toml(&options, &credentials, *id, &node.data_dir, &members);
                std::fs::write(&node.config_path, config).expect("write the node config");
                node
            })
            .collect();
        // All processes first: a node may wait for its peers before it serves.
        for node in &nodes {
            node.spawn();
        }
        for node in &nodes {
            node.wait_healthy(options.start_timeout);
        }
        LocalCluster { dir, options, nodes, isolation: Mutex::new(BTreeMap::new()), told: Mutex::new(BTreeMap::new()) }
    }

    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    /// Starts a new node (the next id) with `cluster.join = true`: its config lists the running
    /// members and itself, it gets a certificate from the cluster's CA, and it waits to be added
    /// (`rushes cluster add-node`). Returns its id once it answers `/health`.
    pub fn start_joining_node(&mut self) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let binary = self.options.binary.clone().unwrap_or_else(rushes_binary);
        let ports = free_ports(2);
        let mut members: Vec<(u64, String, String)> = self.nodes.iter().map(|n| (n.id, n.http_addr.clone(), n.raft_addr.clone())).collect();
        members.push((id, format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1])));
        let mut options = self.options.clone();
        options.nodes = id as usize;
        // Issues only the certificates that are missing (the CA stays the cluster's).
        let (credentials, _) = make_credentials(&binary, &self.dir, &options);
        options.cluster_toml = format!("{}\njoin = true", options.cluster_toml);
        let mut env = vec![("RUST_LOG".to_string(), options.rust_log.clone())];
        if options.fault_injection {
            env.push((FAULT_INJECTION_ENV.to_string(), "1".to_string()));
        }
        let node = LocalNode::new(
            id,
            members.last().expect("new member").1.clone(),
            members.last().expect("new member").2.clone(),
            &self.dir,
            binary,
            env,
        );
        std::fs::create_dir_all(&node.data_dir).expect("create the node's data directory");
        std::fs::write(&node.config_path, node_config_toml(&options, &credentials, id, &node.data_dir, &members))
            .expect("write the node config");
        node.spawn();
        node.wait_healthy(self.options.start_timeout);
        self.nodes.push(node);
        id
    }

    /// Runs `rushes ARGS --server <node via> --token <suite key>` (a membership command) and
    /// returns its stdout; panics with its output and the diagnostics if it fails.
    pub fn cli(&self, via: u64, args: &[&str]) -> String {
        let binary = self.options.binary.clone().unwrap_or_else(rushes_binary);
        let mut command = std::process::Command::new(binary);
        command.args(args).arg("--server").arg(self.node(via).base_url());
        if let Some(key) = crate::http::api_key() {
            command.env("RUSHES_TOKEN", key);
        }
        let output = command.output().expect("run the rushes binary");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            panic!(
                "rushes {args:?} failed ({}):\n{stdout}\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.diagnostics()
            );
        }
        stdout
    }

    /// Expected replicas per shard (changes when the test removes nodes below it).
    pub fn set_replication_factor(&mut self, replication_factor: usize) {
        self.options.replication_factor = replication_factor;
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: u64) -> &LocalNode {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id} (nodes are 1..={})", self.nodes.len()))
    }

    /// Base URLs of all nodes, in id order (stable across restarts).
    pub fn base_urls(&self) -> Vec<String> {
        self.nodes.iter().map(LocalNode::base_url).collect()
    }

    /// SIGKILL node `id`.
    pub fn kill(&self, id: u64) {
        self.node(id).kill();
        self.told.lock().unwrap().remove(&id);
    }

    /// SIGKILL node `id` if running, start it again on the same data, wait for `/health`, and
    /// re-apply a partition that is in force.
    pub fn restart(&self, id: u64) {
        self.kill(id);
        self.node(id).start(self.options.start_timeout);
        self.sync_isolation(id);
    }

    /// SIGSTOP node `id`.
    pub fn pause(&self, id: u64) {
        self.node(id).pause();
    }

    /// SIGCONT node `id`, and bring its partition settings up to date.
    pub fn resume(&self, id: u64) {
        self.node(id).resume();
        self.sync_isolation(id);
    }

    /// Cuts `minority` off from the other nodes: every node in `minority` drops traffic from
    /// every node outside it, and the other way round. Nodes that are down or paused get the
    /// setting when they are restarted or resumed.
    pub fn partition(&self, minority: &[u64]) {
        assert!(
            self.options.fault_injection,
            "partitions need the nodes started with {FAULT_INJECTION_ENV}=1 (ClusterOptions::fault_injection)"
        );
        let minority: BTreeSet<u64> = minority.iter().copied().collect();
        for id in &minority {
            self.node(*id);
        }
        let ids = self.node_ids();
        let majority: Vec<u64> = ids.iter().copied().filter(|id| !minority.contains(id)).collect();
        *self.isolation.lock().unwrap() =
            ids.iter().map(|id| (*id, if minority.contains(id) { majority.clone() } else { minority.iter().copied().collect() })).collect();
        for id in ids {
            self.sync_isolation(id);
        }
    }

    /// Removes every partition on every node that can be reached.
    pub fn heal(&self) {
        self.isolation.lock().unwrap().clear();
        for id in self.node_ids() {
            self.sync_isolation(id);
        }
    }

    /// The partition currently requested: node → nodes it is cut off from (empty when healed).
    pub fn isolation(&self) -> BTreeMap<u64, Vec<u64>> {
        self.isolation.lock().unwrap().clone()
    }

    /// Tells node `id` its desired isolation if it is serving and was told something else.
    fn sync_isolation(&self, id: u64) {
        let node = self.node(id);
        if !node.is_serving() {
            return;
        }
        let desired = self.isolation.lock().unwrap().get(&id).cloned().unwrap_or_default();
        let current = self.told.lock().unwrap().get(&id).cloned().unwrap_or_default();
        if desired == current {
            return;
        }
        let mut last_error = None;
        let done = poll_until(Duration::from_secs(15), || match node.set_isolation(&desired) {
            Ok(()) => true,
            Err(e) if e.is_retryable() => {
                last_error = Some(e.to_string());
                false
            }
            Err(e) => node.fail(&format!(
                "POST /v1/debug/partition on node {id} failed: {e}\n(the node must expose it when started with {FAULT_INJECTION_ENV}=1)"
            )),
        });
        if !done {
            node.fail(&format!("POST /v1/debug/partition on node {id} did not succeed within 15 s: {}", last_error.unwrap_or_default()));
        }
        self.told.lock().unwrap().insert(id, desired);
    }

    /// `GET /v1/cluster` from every serving node (node id → reply or why there is none).
    pub fn statuses(&self, digest: bool) -> BTreeMap<u64, Result<ClusterStatus, String>> {
        self.nodes.iter().filter(|n| n.is_serving()).map(|n| (n.id, n.status(digest))).collect()
    }

    /// The leader of `shard`, confirmed by the leader itself: some serving node names it, and
    /// that node reports its own replica of the shard as leader. If two nodes claim it (a cut-off
    /// leader that has not stepped down yet), the one with the higher term.
    pub fn leader_of(&self, shard: u32) -> Option<u64> {
        let statuses = self.statuses(false);
        let named: BTreeSet<u64> =
            statuses.values().filter_map(|s| s.as_ref().ok()).filter_map(|s| s.shard(shard).and_then(|s| s.leader)).collect();
        named
            .into_iter()
            .filter_map(|candidate| {
                let replica = statuses.get(&candidate)?.as_ref().ok()?.local_replica(shard)?;
                replica.leader.then_some((replica.term.unwrap_or(0), candidate))
            })
            .max()
            .map(|(_, leader)| leader)
    }

    /// Waits until `shard` has a confirmed leader and returns it.
    pub fn wait_for_leader(&self, shard: u32, timeout: Duration) -> u64 {
        let mut leader = None;
        if !poll_until(timeout, || {
            leader = self.leader_of(shard);
            leader.is_some()
        }) {
            panic!("no leader for shard {shard} within {timeout:?}\n{}", self.diagnostics());
        }
        leader.expect("leader")
    }

    /// Waits until `shard` has a confirmed leader other than `old` (an election after `old` was
    /// killed, paused or cut off) and returns it.
    pub fn wait_for_new_leader(&self, shard: u32, old: u64, timeout: Duration) -> u64 {
        let mut leader = None;
        if !poll_until(timeout, || {
            leader = self.leader_of(shard);
            leader.is_some_and(|l| l != old)
        }) {
            panic!("shard {shard} elected no leader other than node {old} within {timeout:?} (last {leader:?})\n{}", self.diagnostics());
        }
        leader.expect("leader")
    }

    /// Shards holding data (a local replica reports raw annotations), from any serving node.
    pub fn shards_with_data(&self) -> BTreeSet<u32> {
        let mut shards = BTreeSet::new();
        for status in self.statuses(false).into_values().flatten() {
            shards.extend(status.local_replicas().filter(|(_, r)| r.raw_annotations.unwrap_or(0) > 0).map(|(shard, _)| shard));
        }
        shards
    }

    /// Waits until every shard has a confirmed leader.
    pub fn wait_for_leaders(&self, timeout: Duration) -> BTreeMap<u32, u64> {
        let mut leaders = BTreeMap::new();
        if !poll_until(timeout, || {
            leaders = (0..self.options.shards).filter_map(|shard| self.leader_of(shard).map(|l| (shard, l))).collect();
            leaders.len() == self.options.shards as usize
        }) {
            panic!("not every shard has a leader within {timeout:?} (have {leaders:?})\n{}", self.diagnostics());
        }
        leaders
    }

    /// Why the cluster has not converged, or `Ok` when it has: every running node answers, and
    /// for each shard the replicas the nodes report as their own (`local: true`) all have the
    /// same `applied_index`, `indexed_index >= applied_index`, and there are
    /// `replication_factor` of them.
    pub fn convergence(&self) -> Result<BTreeMap<u32, u64>, String> {
        let mut statuses = Vec::new();
        for node in &self.nodes {
            if !node.is_running() {
                continue;
            }
            if node.is_paused() {
                return Err(format!("node {} is paused", node.id));
            }
            statuses.push((node.id, node.status(false).map_err(|e| format!("node {}: {e}", node.id))?));
        }
        crate::status::convergence(&statuses, self.options.shards, self.options.replication_factor)
    }

    /// True when [`LocalCluster::convergence`] is `Ok`.
    pub fn converged(&self) -> bool {
        self.convergence().is_ok()
    }

    /// Waits until converged; returns each shard's applied index. Panics with the last reason,
    /// the cluster status and the node logs otherwise.
    pub fn wait_converged(&self, timeout: Duration) -> BTreeMap<u32, u64> {
        let mut last = Err(String::new());
        if !poll_until(timeout, || {
            last = self.convergence();
            last.is_ok()
        }) {
            panic!("not converged within {timeout:?}: {}\n{}", last.unwrap_err(), self.diagnostics());
        }
        last.expect("converged")
    }

    /// Raw-store digest of every local replica: (shard, node) → digest. Asks with
    /// `?digest=true`; panics if a serving node does not answer.
    pub fn digests(&self) -> BTreeMap<(u32, u64), String> {
        let mut digests = BTreeMap::new();
        for (id, status) in self.statuses(true) {
            let status = status.unwrap_or_else(|e| self.node(id).fail(&format!("GET /v1/cluster?digest=true on node {id}: {e}")));
            for (shard, replica) in status.local_replicas() {
                let digest = replica.raw_digest.clone().unwrap_or_else(|| {
                    self.node(id).fail(&format!("node {id} reports no raw_digest for its replica of shard {shard} with ?digest=true"))
                });
                digests.insert((shard, id), digest);
            }
        }
        digests
    }

    /// The raw annotation count of every local replica: (shard, node) → count.
    pub fn raw_counts(&self) -> BTreeMap<(u32, u64), Option<u64>> {
        let mut counts = BTreeMap::new();
        for (id, status) in self.statuses(false) {
            if let Ok(status) = status {
                for (shard, replica) in status.local_replicas() {
                    counts.insert((shard, id), replica.raw_annotations);
                }
            }
        }
        counts
    }

    /// State of every node and the tail of its log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let state = match (node.is_running(), node.is_paused()) {
                (false, _) => "down",
                (true, true) => "paused",
                (true, false) => "running",
            };
            let _ = writeln!(out, "=== node {} ({state}, http {}, raft {})", node.id, node.http_addr, node.raft_addr);
            if state == "running" {
                match node.http().get(&node.url("/v1/cluster")) {
                    Ok(text) => {
                        let _ = writeln!(out, "/v1/cluster: {text:.3000}");
                    }
                    Err(e) => {
                        let _ = writeln!(out, "/v1/cluster: {e}");
                    }
                }
            }
            let _ = writeln!(out, "--- last lines of {} ---\n{}", node.log_path.display(), node.log_tail(30));
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_documented_keys() {
        let options = ClusterOptions::new(2, 4, 2);
        let members =
            vec![(1, "127.0.0.1:1001".to_string(), "127.0.0.1:2001".to_string()), (2, "127.0.0.1:1002".into(), "127.0.0.1:2002".into())];
        let credentials =
            Credentials { certs_dir: Some(PathBuf::from("/tmp/x/certs")), api_key_hash: Some(format!("sha256:{}", "a".repeat(64))) };
        let text = node_config_toml(&options, &credentials, 2, Path::new("/tmp/x/node-2"), &members);
        for expected in [
            "[node]\nid = 2\ndata_dir = \"/tmp/x/node-2\"\nlisten = \"127.0.0.1:1002\"",
            "[cluster]\ncluster_id = \"jepsen\"\nshards = 4\nreplication_factor = 2",
            "[[cluster.nodes]]\nid = 1\nraft_addr = \"127.0.0.1:2001\"\nhttp_addr = \"127.0.0.1:1001\"",
            "[[cluster.nodes]]\nid = 2\nraft_addr = \"127.0.0.1:2002\"\nhttp_addr = \"127.0.0.1:1002\"",
            "[index]\ncommit_interval_ms = 200",
            "tls_ca_file = \"/tmp/x/certs/ca.pem\"\ntls_cert_file = \"/tmp/x/certs/node-2.pem\"",
            "[[auth.keys]]\nname = \"jepsen\"",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn the_node_config_loader_accepts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ClusterOptions::new(3, 4, 3);
        options.extra_toml = "[raft]\nelection_ticks = 12".to_string();
        let members: Vec<(u64, String, String)> =
            (1..=3).map(|id| (id, format!("127.0.0.1:{}", 1000 + id), format!("127.0.0.1:{}", 2000 + id))).collect();
        let path = dir.path().join("node-3.toml");
        let credentials = Credentials { certs_dir: None, api_key_hash: Some(format!("sha256:{}", "b".repeat(64))) };
        std::fs::write(&path, node_config_toml(&options, &credentials, 3, &dir.path().join("node-3"), &members)).unwrap();
        // With the environment the harness gives the nodes: RUSHES_FAULT_INJECTION must not be
        // taken for (and rejected as) a config key.
        let environment = vec![("RUST_LOG".to_string(), "warn".to_string()), (FAULT_INJECTION_ENV.to_string(), "1".to_string())];
        let config = rushes_config::Config::load(Some(&path), environment, &[]).expect("the node accepts the generated config");
        assert_eq!(config.node.id, 3);
        assert_eq!(config.node.listen.to_string(), "127.0.0.1:1003");
        assert_eq!(config.cluster.cluster_id, "jepsen");
        assert_eq!(config.cluster.shards, 4);
        assert_eq!(config.cluster.replication_factor, 3);
        assert_eq!(config.cluster.nodes.len(), 3);
        assert_eq!(config.cluster.nodes[1].raft_addr, "127.0.0.1:2002");
        assert_eq!(config.index.commit_interval_ms, 200);
        assert_eq!(config.raft.election_ticks, 12);
        assert!(config.cluster.insecure_peers, "without certificates the harness says so explicitly");
        assert_eq!(config.auth.keys.len(), 1);
    }

    #[test]
    fn ports_are_distinct() {
        let ports = free_ports(8);
        assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), 8);
    }
}
