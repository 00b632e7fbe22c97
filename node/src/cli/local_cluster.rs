//! `rushes cluster local` (a cluster of child processes on loopback, for development, demos and
//! tests) and `rushes cluster status` (the cluster as a table).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rushes_client::Client;

/// Raft ports sit this far above the HTTP ports.
pub const RAFT_PORT_OFFSET: u16 = 100;

#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    pub nodes: usize,
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub shards: u32,
    pub replication_factor: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error("--nodes must be 1..=9 (got {0})")]
    Nodes(usize),
    #[error("--replication-factor must be 1..={nodes} (at most --nodes; got {factor})")]
    ReplicationFactor { factor: usize, nodes: usize },
    #[error("--base-port {base}: node ports {base}..{end} and raft ports {raft}.. must fit below 65536")]
    Ports { base: u16, end: u32, raft: u32 },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
}

/// HTTP and raft address of node `n` (1-based).
pub fn node_addrs(base_port: u16, n: usize) -> (String, String) {
    let http = base_port as usize + n - 1;
    (format!("127.0.0.1:{http}"), format!("127.0.0.1:{}", http + RAFT_PORT_OFFSET as usize))
}

/// The config file of node `n` of a local cluster.
pub fn node_config(options: &LocalClusterOptions, n: usize) -> String {
    let (http, _) = node_addrs(options.base_port, n);
    let data_dir = options.data_dir.join(format!("node-{n}"));
    let mut text = String::new();
    let _ = writeln!(text, "# Node {n} of a local cluster written by `rushes cluster local`.");
    let _ = writeln!(text, "[node]\nid = {n}\ndata_dir = {:?}\nlisten = \"{http}\"\n", data_dir.display().to_string());
    let _ = writeln!(
        text,
        "[cluster]\ncluster_id = \"rushes-local\"\nshards = {}\nreplication_factor = {}\n",
        options.shards, options.replication_factor
    );
    for member in 1..=options.nodes {
        let (member_http, member_raft) = node_addrs(options.base_port, member);
        let _ = writeln!(text, "[[cluster.nodes]]\nid = {member}\nraft_addr = \"{member_raft}\"\nhttp_addr = \"{member_http}\"\n");
    }
    text
}

/// Writes `data_dir/node-N.toml` for every node; returns their paths.
pub fn write_configs(options: &LocalClusterOptions) -> Result<Vec<PathBuf>, LocalClusterError> {
    if options.nodes == 0 || options.nodes > 9 {
        return Err(LocalClusterError::Nodes(options.nodes));
    }
    if options.replication_factor == 0 || options.replication_factor > options.nodes {
        return Err(LocalClusterError::ReplicationFactor { factor: options.replication_factor, nodes: options.nodes });
    }
    let end = options.base_port as u32 + options.nodes as u32;
    if end + RAFT_PORT_OFFSET as u32 > 65_535 || (options.nodes as u16) > RAFT_PORT_OFFSET {
        return Err(LocalClusterError::Ports { base: options.base_port, end, raft: options.base_port as u32 + RAFT_PORT_OFFSET as u32 });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| LocalClusterError::Io { path, error }
    };
    std::fs::create_dir_all(&options.data_dir).map_err(io(&options.data_dir))?;
    let mut paths = Vec::new();
    for n in 1..=options.nodes {
        let path = options.data_dir.join(format!("node-{n}.toml"));
        std::fs::write(&path, node_config(options, n)).map_err(io(&path))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Starts `rushes serve --config D/node-N.toml` for every node, waits until all answer, and
/// stops them when `stop` resolves (Ctrl-C). A node that exits on its own is reported and
/// left down: restart it by hand with the printed command.
pub fn run(options: &LocalClusterOptions, binary: &Path, mut stop: impl FnMut() -> bool) -> Result<(), LocalClusterError> {
    let configs = write_configs(options)?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for (position, config) in configs.iter().enumerate() {
        let n = position + 1;
        let log_path = options.data_dir.join(format!("node-{n}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| LocalClusterError::Io { path: log_path.clone(), error })?;
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|error| LocalClusterError::Io { path: binary.to_path_buf(), error })?;
        let (http, raft) = node_addrs(options.base_port, n);
        println!("node {n}: http://{http} (raft {raft}), log {}", log_path.display());
        println!("        restart by hand: {} serve --config {}", binary.display(), config.display());
        children.push((n, child));
    }
    let started = Instant::now();
    let mut ready = vec![false; children.len()];
    let mut exited = vec![false; children.len()];
    while !stop() {
        for (position, (n, child)) in children.iter_mut().enumerate() {
            if exited[position] {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                println!("node {n} exited ({status}); the others keep running (see its log)");
                exited[position] = true;
            } else if !ready[position] {
                let (http, _) = node_addrs(options.base_port, *n);
                if Client::new(&format!("http://{http}")).get("/health").is_ok() {
                    println!("node {n} is up after {:.1}s", started.elapsed().as_secs_f64());
                    ready[position] = true;
                }
            }
        }
        // Polling children and Ctrl-C: a short pause bounds both reaction times.
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("stopping {} nodes", children.len());
    for (_, child) in &mut children {
        // SIGTERM: each node stops serving, commits its indexes and flushes.
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for (n, child) in &mut children {
        let _ = child.wait();
        println!("node {n} stopped");
    }
    Ok(())
}

/// A status reply (`GET /v1/cluster`) as a table: nodes, then one line per replica.
pub fn format_status(status: &serde_json::Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cluster {} (seen from node {})", status["cluster_id"].as_str().unwrap_or("?"), status["node_id"]);
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    for node in status["nodes"].as_array().into_iter().flatten() {
        let up = if node["up"].as_bool() == Some(true) { "up" } else { "DOWN" };
        let _ =
            writeln!(out, "  node {:<3} {:<5} http {}  raft {}", text(&node["id"]), up, text(&node["http_addr"]), text(&node["raft_addr"]));
    }
    let _ = writeln!(out, "shard  leader  node  role      term   commit  applied    fused  indexed   lag");
    for shard in status["shards"].as_array().into_iter().flatten() {
        let leader = shard["leader"].as_u64().map_or("none".to_string(), |l| l.to_string());
        for replica in shard["replicas"].as_array().into_iter().flatten() {
            if replica["reachable"].as_bool() == Some(false) {
                let _ = writeln!(out, "{:>5}  {:>6}  {:>4}  unreachable", text(&shard["shard"]), leader, text(&replica["node"]));
                continue;
            }
            let role = if replica["leader"].as_bool() == Some(true) { "leader" } else { "follower" };
            let number = |key: &str| replica[key].as_u64().unwrap_or(0);
            let lag = number("commit_index").saturating_sub(number("indexed_index"));
            let _ = writeln!(
                out,
                "{:>5}  {:>6}  {:>4}  {:<8} {:>5} {:>8} {:>8} {:>8} {:>8} {:>5}",
                text(&shard["shard"]),
                leader,
                text(&replica["node"]),
                role,
                number("term"),
                number("commit_index"),
                number("applied_index"),
                number("fused_index"),
                number("indexed_index"),
                lag
            );
        }
    }
    format_actor_map(status, &mut out);
    out
}

/// The actor map: every node's ingest router and coordinator, and every replica's Raft, fusion
/// and index actors, with state, mailbox depth/capacity, messages handled, restarts and the
/// last error (a node that predates the actor map shows none).
fn format_actor_map(status: &serde_json::Value, out: &mut String) {
    let _ = writeln!(out, "actors");
    let _ = writeln!(out, "  node  shard  actor          thread         state       mailbox   handled  restarts  last error");
    let row = |out: &mut String, node: &serde_json::Value, actor: &serde_json::Value| {
        let number = |key: &str| actor[key].as_u64().unwrap_or(0);
        let shard = actor["shard"].as_u64().map_or("-".to_string(), |s| s.to_string());
        let _ = writeln!(
            out,
            "  {:>4}  {:>5}  {:<13}  {:<13}  {:<10} {:>4}/{:<5} {:>8} {:>9}  {}",
            node,
            shard,
            actor["actor"].as_str().unwrap_or("?"),
            actor["thread"].as_str().unwrap_or("?"),
            actor["state"].as_str().unwrap_or("?"),
            number("mailbox_depth"),
            number("mailbox_capacity"),
            number("messages_handled"),
            number("restarts"),
            actor["last_error"].as_str().unwrap_or("-")
        );
    };
    for node in status["nodes"].as_array().into_iter().flatten() {
        for actor in node["actors"].as_array().into_iter().flatten() {
            row(out, &node["id"], actor);
        }
    }
    for shard in status["shards"].as_array().into_iter().flatten() {
        for replica in shard["replicas"].as_array().into_iter().flatten() {
            for actor in replica["actors"].as_array().into_iter().flatten() {
                row(out, &replica["node"], actor);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_prints_the_actor_map_of_nodes_and_replicas() {
        let actor = |name: &str, shard: Option<u32>, restarts: u64, error: Option<&str>| {
            serde_json::json!({"actor": name, "shard": shard, "thread": format!("{name}-0"), "state": "idle",
                "mailbox_depth": 2, "mailbox_capacity": 16, "messages_handled": 40, "restarts": restarts, "last_error": error})
        };
        let status = serde_json::json!({
            "cluster_id": "c", "node_id": 1,
            "nodes": [{"id": 1, "up": true, "http_addr": "a", "raft_addr": "b",
                       "actors": [actor("ingest_router", None, 0, None), actor("coordinator", None, 0, None)]}],
            "shards": [{"shard": 0, "leader": 1, "replicas": [{"node": 1, "reachable": true, "leader": true,
                "actors": [actor("raft", Some(0), 0, None), actor("index", Some(0), 3, Some("injected fault"))]}]}],
        });
        let text = format_status(&status);
        assert!(text.contains("ingest_router"), "{text}");
        let index_line = text.lines().find(|l| l.contains(" index ")).expect("the index actor's row");
        assert!(index_line.contains("2/16") && index_line.contains(" 3 ") && index_line.ends_with("injected fault"), "{index_line}");
    }

    #[test]
    fn configs_load_and_agree_on_members() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options =
            LocalClusterOptions { nodes: 3, data_dir: dir.path().to_path_buf(), base_port: 7800, shards: 4, replication_factor: 3 };
        let paths = write_configs(&options).expect("configs");
        assert_eq!(paths.len(), 3);
        let mut members = Vec::new();
        for (position, path) in paths.iter().enumerate() {
            let config = rushes_config::Config::load(Some(path), std::iter::empty::<(String, String)>(), &[])
                .expect("a written config loads and validates");
            assert_eq!(config.node.id, position as u64 + 1);
            assert_eq!(config.node.listen.port(), 7800 + position as u16);
            assert_eq!(config.cluster.replication_factor, 3);
            members.push(config.cluster.nodes.clone());
        }
        assert!(members.windows(2).all(|w| w[0] == w[1]), "every node lists the same members");
        assert_eq!(members[0][2].raft_addr, "127.0.0.1:7902");
    }

    #[test]
    fn impossible_layouts_are_refused_before_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LocalClusterOptions { nodes: 2, data_dir: dir.path().join("x"), base_port: 7800, shards: 4, replication_factor: 3 };
        assert!(matches!(write_configs(&options), Err(LocalClusterError::ReplicationFactor { .. })));
        assert!(!dir.path().join("x").exists());
        let options = LocalClusterOptions { base_port: 65_500, replication_factor: 1, ..options };
        assert!(matches!(write_configs(&options), Err(LocalClusterError::Ports { .. })));
    }
}
