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
    /// Mutual TLS between the nodes (off only to measure what it costs).
    pub peer_tls: bool,
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
    #[error("certificates: {0}")]
    Certificates(#[from] rushes_cluster::transport::TlsError),
}

/// Where a local cluster keeps its secrets: `D/certs/` (the CA and a certificate per node) and
/// `D/admin.key` (an API key with every scope; its hash is in each node's config).
pub struct LocalSecrets {
    pub certs_dir: PathBuf,
    pub admin_key: String,
}

fn write_secret(path: &Path, contents: &str) -> Result<(), LocalClusterError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |error| LocalClusterError::Io { path: path.to_path_buf(), error };
    // Only the owner may read a key.
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

/// Writes a CA and node certificates 1..=`nodes` into `dir` (`ca.pem`, `ca.key`, `node-N.pem`,
/// `node-N.key`). An existing CA is kept, and only nodes without a certificate get one, so a
/// node added later joins the same cluster. Returns the files written.
pub fn write_certificates(dir: &Path, cluster_id: &str, nodes: u64) -> Result<Vec<PathBuf>, LocalClusterError> {
    write_certificates_with_http(dir, cluster_id, nodes, &[])
}

/// [`write_certificates`], plus DIR/http.pem and DIR/http.key, a server certificate for HTTPS
/// valid for `http_names` (host names or IP addresses), when any are given.
pub fn write_certificates_with_http(
    dir: &Path,
    cluster_id: &str,
    nodes: u64,
    http_names: &[String],
) -> Result<Vec<PathBuf>, LocalClusterError> {
    use rushes_cluster::transport::ClusterCertificates;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| LocalClusterError::Io { path, error }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut written = Vec::new();
    let (ca_cert_pem, ca_key_pem) = if ca_cert.exists() && ca_key.exists() {
        (std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?, std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?)
    } else {
        let fresh = ClusterCertificates::generate(cluster_id, &[])?;
        std::fs::write(&ca_cert, &fresh.ca_cert_pem).map_err(io(&ca_cert))?;
        write_secret(&ca_key, &fresh.ca_key_pem)?;
        written.extend([ca_cert.clone(), ca_key.clone()]);
        (fresh.ca_cert_pem, fresh.ca_key_pem)
    };
    for node in 1..=nodes {
        let (cert, key) = (dir.join(format!("node-{node}.pem")), dir.join(format!("node-{node}.key")));
        if cert.exists() && key.exists() {
            continue;
        }
        let (cert_pem, key_pem) = ClusterCertificates::issue_with(&ca_cert_pem, &ca_key_pem, cluster_id, node)?;
        std::fs::write(&cert, cert_pem).map_err(io(&cert))?;
        write_secret(&key, &key_pem)?;
        written.extend([cert, key]);
    }
    if !http_names.is_empty() {
        let (cert, key) = (dir.join("http.pem"), dir.join("http.key"));
        let (cert_pem, key_pem) = ClusterCertificates::issue_server(&ca_cert_pem, &ca_key_pem, http_names)?;
        std::fs::write(&cert, cert_pem).map_err(io(&cert))?;
        write_secret(&key, &key_pem)?;
        written.extend([cert, key]);
    }
    Ok(written)
}

/// The local cluster's certificates and admin key, made on first use and kept in `data_dir`.
pub fn prepare_secrets(options: &LocalClusterOptions) -> Result<LocalSecrets, LocalClusterError> {
    let certs_dir = options.data_dir.join("certs");
    write_certificates(&certs_dir, "rushes-local", options.nodes as u64)?;
    let key_path = options.data_dir.join("admin.key");
    let admin_key = match std::fs::read_to_string(&key_path) {
        Ok(key) if !key.trim().is_empty() => key.trim().to_string(),
        _ => {
            let key = crate::http::auth::new_key();
            write_secret(&key_path, &key)?;
            key
        }
    };
    Ok(LocalSecrets { certs_dir, admin_key })
}

/// HTTP and raft address of node `n` (1-based).
pub fn node_addrs(base_port: u16, n: usize) -> (String, String) {
    let http = base_port as usize + n - 1;
    (format!("127.0.0.1:{http}"), format!("127.0.0.1:{}", http + RAFT_PORT_OFFSET as usize))
}

/// The config file of node `n` of a local cluster: mutual TLS between the nodes and the admin
/// key required on the API.
pub fn node_config(options: &LocalClusterOptions, n: usize, secrets: &LocalSecrets) -> String {
    node_config_with(options, n, secrets, false)
}

/// [`node_config`]; `join`: the node joins the running cluster (`cluster.join = true`).
fn node_config_with(options: &LocalClusterOptions, n: usize, secrets: &LocalSecrets, join: bool) -> String {
    let (http, _) = node_addrs(options.base_port, n);
    let data_dir = options.data_dir.join(format!("node-{n}"));
    let mut text = String::new();
    let _ = writeln!(text, "# Node {n} of a local cluster written by `rushes cluster local`.");
    let _ = writeln!(text, "[node]\nid = {n}\ndata_dir = {:?}\nlisten = \"{http}\"\n", data_dir.display().to_string());
    let _ = writeln!(
        text,
        "[cluster]\ncluster_id = \"rushes-local\"\nshards = {}\nreplication_factor = {}",
        options.shards, options.replication_factor
    );
    if join {
        let _ = writeln!(text, "join = true");
    }
    let cert = |name: &str| format!("{:?}", secrets.certs_dir.join(name).display().to_string());
    if options.peer_tls {
        let _ = writeln!(
            text,
            "tls_ca_file = {}\ntls_cert_file = {}\ntls_key_file = {}\n",
            cert("ca.pem"),
            cert(&format!("node-{n}.pem")),
            cert(&format!("node-{n}.key"))
        );
    } else {
        let _ = writeln!(text, "insecure_peers = true\n");
    }
    let _ = writeln!(
        text,
        "[[auth.keys]]\nname = \"local-admin\"\nhash = \"{}\"\nscopes = [\"read\", \"write\", \"admin\"]\n",
        crate::http::auth::key_hash(&secrets.admin_key)
    );
    for member in 1..=options.nodes {
        let (member_http, member_raft) = node_addrs(options.base_port, member);
        let _ = writeln!(text, "[[cluster.nodes]]\nid = {member}\nraft_addr = \"{member_raft}\"\nhttp_addr = \"{member_http}\"\n");
    }
    text
}

/// Writes `data_dir/node-N.toml` for every node (and the cluster's certificates and admin key,
/// the first time); returns the configs' paths and the secrets.
pub fn write_configs(options: &LocalClusterOptions) -> Result<(Vec<PathBuf>, LocalSecrets), LocalClusterError> {
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
    let secrets = prepare_secrets(options)?;
    let mut paths = Vec::new();
    for n in 1..=options.nodes {
        let path = options.data_dir.join(format!("node-{n}.toml"));
        std::fs::write(&path, node_config(options, n, &secrets)).map_err(io(&path))?;
        paths.push(path);
    }
    Ok((paths, secrets))
}

/// Writes the config of node `n`, joining the running cluster of `options` (nodes 1..n-1): its
/// certificate from the cluster's CA, and `[[cluster.nodes]]` listing 1..=n. Returns its path.
pub fn write_joining_config(options: &LocalClusterOptions, n: usize) -> Result<PathBuf, LocalClusterError> {
    let grown = LocalClusterOptions { nodes: n, ..options.clone() };
    let secrets = prepare_secrets(&grown)?;
    let path = options.data_dir.join(format!("node-{n}.toml"));
    std::fs::write(&path, node_config_with(&grown, n, &secrets, true))
        .map_err(|error| LocalClusterError::Io { path: path.clone(), error })?;
    Ok(path)
}

/// `rushes cluster local-add-node`: starts one more node for the local cluster in
/// `options.data_dir` (the next id), adds it through node 1 (`rushes cluster add-node`, then a
/// rebalance when asked), and runs it until `stop` (Ctrl-C).
pub fn add_node(
    options: &LocalClusterOptions,
    binary: &Path,
    rebalance: bool,
    mut stop: impl FnMut() -> bool,
) -> Result<(), LocalClusterError> {
    let existing = (1..=9).take_while(|n| options.data_dir.join(format!("node-{n}.toml")).exists()).count();
    if existing == 0 {
        return Err(LocalClusterError::Io {
            path: options.data_dir.join("node-1.toml"),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "no local cluster here: start one with `rushes cluster local` first"),
        });
    }
    let n = existing + 1;
    if n > 9 {
        return Err(LocalClusterError::Nodes(n));
    }
    let config = write_joining_config(options, n)?;
    let secrets = prepare_secrets(&LocalClusterOptions { nodes: n, ..options.clone() })?;
    let log_path = options.data_dir.join(format!("node-{n}.log"));
    let mut child = spawn_node(binary, &config, &log_path)?;
    let (http, raft) = node_addrs(options.base_port, n);
    println!("node {n}: http://{http} (raft {raft}), log {}", log_path.display());
    let first = Client::new(&format!("http://{}", node_addrs(options.base_port, 1).0)).with_token(Some(secrets.admin_key.clone()));
    let wait = Some(Duration::from_secs(3600));
    let added = crate::cli::membership::add_node(&first, n as u64, &raft, &http, rebalance, wait);
    if let Err(e) = added {
        let _ = child.kill();
        let _ = child.wait();
        return Err(LocalClusterError::Io { path: config, error: std::io::Error::other(e.to_string()) });
    }
    println!("node {n} runs until Ctrl-C; `rushes cluster remove-node {n}` first to take it out of the cluster");
    while !stop() {
        if let Ok(Some(status)) = child.try_wait() {
            println!("node {n} exited ({status}); see its log");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
    println!("node {n} stopped");
    Ok(())
}

/// `rushes serve --config CONFIG` with its log appended to `log_path`.
fn spawn_node(binary: &Path, config: &Path, log_path: &Path) -> Result<Child, LocalClusterError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|error| LocalClusterError::Io { path: log_path.to_path_buf(), error })?;
    Command::new(binary)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|error| LocalClusterError::Io { path: binary.to_path_buf(), error })
}

/// Starts `rushes serve --config D/node-N.toml` for every node, waits until all answer, and
/// stops them when `stop` resolves (Ctrl-C). A node that exits on its own is reported and
/// left down: restart it by hand with the printed command.
pub fn run(options: &LocalClusterOptions, binary: &Path, mut stop: impl FnMut() -> bool) -> Result<(), LocalClusterError> {
    let (configs, secrets) = write_configs(options)?;
    println!(
        "peers use mutual TLS (certificates in {}); the API needs a key: export RUSHES_TOKEN=$(cat {})",
        secrets.certs_dir.display(),
        options.data_dir.join("admin.key").display()
    );
    let mut children: Vec<(usize, Child)> = Vec::new();
    for (position, config) in configs.iter().enumerate() {
        let n = position + 1;
        let log_path = options.data_dir.join(format!("node-{n}.log"));
        let child = spawn_node(binary, config, &log_path)?;
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
        let draining = if node["draining"].as_bool() == Some(true) { "  draining" } else { "" };
        let _ = writeln!(
            out,
            "  node {:<3} {:<5} http {}  raft {}{draining}",
            text(&node["id"]),
            up,
            text(&node["http_addr"]),
            text(&node["raft_addr"])
        );
    }
    let membership = &status["membership"];
    if !membership.is_null() {
        let _ = writeln!(
            out,
            "cluster map epoch {}, metadata leader {}, metadata voters {}",
            text(&membership["epoch"]),
            text(&membership["meta_leader"]),
            text(&membership["meta_voters"])
        );
        for m in membership["moves"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  moving {}: node {} -> node {} ({})",
                text(&m["group"]),
                text(&m["remove"]),
                text(&m["add"]),
                text(&m["phase"])
            );
        }
        let queued = membership["queued_moves"].as_array().map_or(0, Vec::len);
        if queued > 0 {
            let _ = writeln!(out, "  {queued} moves queued");
        }
        if let Some(problem) = membership["join_problem"].as_str() {
            let _ = writeln!(out, "  joining: {problem}");
        }
    }
    let _ = writeln!(out, "shard  leader  node  role      term   commit  applied    fused  indexed   lag");
    for shard in status["shards"].as_array().into_iter().flatten() {
        let leader = shard["leader"].as_u64().map_or("none".to_string(), |l| l.to_string());
        for replica in shard["replicas"].as_array().into_iter().flatten() {
            if replica["reachable"].as_bool() == Some(false) {
                let _ = writeln!(out, "{:>5}  {:>6}  {:>4}  unreachable", text(&shard["shard"]), leader, text(&replica["node"]));
                continue;
            }
            let role = match (replica["leader"].as_bool(), replica["role"].as_str()) {
                (Some(true), _) => "leader",
                (_, Some("learner")) => "learner",
                _ => "follower",
            };
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
        let options = LocalClusterOptions {
            nodes: 3,
            data_dir: dir.path().to_path_buf(),
            base_port: 7800,
            shards: 4,
            replication_factor: 3,
            peer_tls: true,
        };
        let (paths, _) = write_configs(&options).expect("configs");
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
        let options = LocalClusterOptions {
            nodes: 2,
            data_dir: dir.path().join("x"),
            base_port: 7800,
            shards: 4,
            replication_factor: 3,
            peer_tls: true,
        };
        assert!(matches!(write_configs(&options), Err(LocalClusterError::ReplicationFactor { .. })));
        assert!(!dir.path().join("x").exists());
        let options = LocalClusterOptions { base_port: 65_500, replication_factor: 1, ..options };
        assert!(matches!(write_configs(&options), Err(LocalClusterError::Ports { .. })));
    }
}
