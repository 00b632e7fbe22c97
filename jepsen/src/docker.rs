//! Nodes as Docker containers on a private network, built and run without any registry.
//!
//! The image holds only the release `rushes` binary and the shared libraries it links (from
//! `ldd`), imported as a root file system with `docker import`; its tag is the binary's hash,
//! so a rebuilt binary gets a new image and an unchanged one is reused. Each node runs in its
//! own container with its own address on a network made for the run, its data directory bound
//! from the host (a loop-mounted file system when the disk-full fault needs one), and its
//! config and certificates bound read-only. Everything a run creates carries the label
//! [`LABEL`]`=<run id>`, and [`remove_labelled`] removes it: at the end of every run, on a panic
//! (the cluster's `Drop`), and at the start of the next run for anything a killed run left.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cluster::{make_credentials, node_config_toml, ClusterOptions, Credentials, FAULT_INJECTION_ENV};
use crate::http::Http;
use crate::status::ClusterStatus;
use crate::wait::poll_until;

/// Every container, network and image of the suite carries this label (value: the run id;
/// images: `image`).
pub const LABEL: &str = "rushes-jepsen";
/// Image repository name; the tag is the first 16 hex digits of the binary's SHA-256.
pub const IMAGE_REPOSITORY: &str = "rushes-local";
/// Ports inside each container (every node has its own address, so all use the same ports).
pub const HTTP_PORT: u16 = 8080;
pub const RAFT_PORT: u16 = 7000;

/// Why a Docker step failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot run `{command}`: {source} (is Docker installed and the daemon running?)")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    #[error("{0}")]
    Other(String),
}

/// Runs `program args`, returns its stdout; an error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, DockerError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DockerError::Spawn { command: command.clone(), source })?;
    if !output.status.success() {
        return Err(DockerError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().chars().take(2000).collect(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn docker(args: &[&str]) -> Result<String, DockerError> {
    run("docker", args)
}

/// Whether a Docker daemon answers (the suite's container tests skip, loudly, without one).
pub fn available() -> bool {
    docker(&["version", "--format", "{{.Server.Version}}"]).is_ok()
}

/// The shared libraries `binary` loads, as absolute paths (`ldd`), the dynamic loader included.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>, DockerError> {
    let printed = run("ldd", &[&binary.display().to_string()])?;
    let mut libraries = Vec::new();
    for line in printed.lines() {
        // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// The image tag for `binary` (its hash).
pub fn image_tag(binary: &Path) -> Result<String, DockerError> {
    let bytes = std::fs::read(binary).map_err(|e| DockerError::Other(format!("read {}: {e}", binary.display())))?;
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(format!("{IMAGE_REPOSITORY}:{hex}"))
}

/// Builds (or finds) the image of `binary`: its root file system holds `/rushes`, the libraries
/// it links at their paths, and empty `/data`, `/config`, `/certs` and `/tmp`. Returns the tag.
pub fn ensure_image(binary: &Path) -> Result<String, DockerError> {
    let tag = image_tag(binary)?;
    if docker(&["image", "inspect", "--format", "{{.Id}}", &tag]).is_ok() {
        return Ok(tag);
    }
    import_image(binary, &tag, &format!("{LABEL}=image"))?;
    Ok(tag)
}

/// Label of the images [`ensure_named_image`] builds; its value is the hash part of
/// [`image_tag`], so an unchanged binary reuses the image.
pub const NAMED_IMAGE_LABEL: &str = "rushes-image";

/// Builds (or finds) the image of `binary` under a stable name such as `rushes:local`, the one
/// a deployment refers to (deploy/compose.yaml). The file system is [`ensure_image`]'s, but the
/// image is labelled [`NAMED_IMAGE_LABEL`]`=<hash>` instead of [`LABEL`]: containers inherit
/// their image's labels, and the suite removes whatever carries its label
/// (`rushes-jepsen clean`), so a deployment's containers must not. When the name moves to a new
/// binary, the image it named before is removed if it was built here and no container uses it.
/// Returns the binary's hash (as in [`image_tag`]) and whether an image was imported (false:
/// the name already held this binary).
pub fn ensure_named_image(binary: &Path, name: &str) -> Result<(String, bool), DockerError> {
    check_image_name(name)?;
    let tag = image_tag(binary)?;
    let hash = tag.rsplit(':').next().unwrap_or_default().to_string();
    let label_format = format!("{{{{index .Config.Labels \"{NAMED_IMAGE_LABEL}\"}}}}|{{{{.Id}}}}");
    let previous = docker(&["image", "inspect", "--format", &label_format, name]).ok();
    let previous = previous.as_deref().map(str::trim).and_then(|p| p.split_once('|')).map(|(l, id)| (l.to_string(), id.to_string()));
    if previous.as_ref().is_some_and(|(label, _)| *label == hash) {
        return Ok((hash, false));
    }
    import_image(binary, name, &format!("{NAMED_IMAGE_LABEL}={hash}"))?;
    if let Some((label, id)) = previous {
        if !label.is_empty() && label != "<no value>" {
            // Fails while a container still uses it; it stays then, untagged.
            let _ = docker(&["image", "rm", &id]);
        }
    }
    Ok((hash, true))
}

/// A `repository[:tag]` Docker accepts: lower-case letters, digits and `._-/` in the
/// repository, letters, digits and `._-` in the tag (at most 128).
fn check_image_name(name: &str) -> Result<(), DockerError> {
    let (repository, tag) = match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        _ => (name, None),
    };
    let repository_ok = !repository.is_empty()
        && repository.len() <= 255
        && repository.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/'))
        && repository.starts_with(|c: char| c.is_ascii_alphanumeric());
    let tag_ok = match tag {
        None => true,
        Some(t) => !t.is_empty() && t.len() <= 128 && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
    };
    if repository_ok && tag_ok {
        Ok(())
    } else {
        Err(DockerError::Other(format!(
            "{name:?} is not an image name: give repository[:tag] such as rushes:local (lower-case letters, digits, '.', '_', '-', '/'; the tag also upper-case, at most 128)"
        )))
    }
}

/// Imports the file system [`ensure_image`] describes as image `tag`, labelled `label`
/// (`key=value`).
fn import_image(binary: &Path, tag: &str, label: &str) -> Result<(), DockerError> {
    let root = tempfile::tempdir().map_err(|e| DockerError::Other(format!("temporary directory: {e}")))?;
    let copy = |from: &Path, to: &Path| -> Result<(), DockerError> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DockerError::Other(format!("create {}: {e}", parent.display())))?;
        }
        // Follow symlinks: the file system gets the library itself under the linked name.
        std::fs::copy(from, to).map_err(|e| DockerError::Other(format!("copy {} to {}: {e}", from.display(), to.display())))?;
        Ok(())
    };
    copy(binary, &root.path().join("rushes"))?;
    for library in linked_libraries(binary)? {
        let relative = library.strip_prefix("/").unwrap_or(&library);
        copy(&library, &root.path().join(relative))?;
    }
    for dir in ["data", "config", "certs", "tmp"] {
        std::fs::create_dir_all(root.path().join(dir)).map_err(|e| DockerError::Other(format!("create /{dir}: {e}")))?;
    }
    let tar = Command::new("tar")
        .args(["-C", &root.path().display().to_string(), "--owner=0", "--group=0", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| DockerError::Spawn { command: "tar".into(), source })?;
    let Some(tar_out) = tar.stdout else { return Err(DockerError::Other("tar has no stdout".into())) };
    let label = format!("LABEL {label}");
    let output = Command::new("docker")
        .args(["import", "--change", r#"ENTRYPOINT ["/rushes"]"#, "--change", &label, "--change", "WORKDIR /data", "-", tag])
        .stdin(Stdio::from(tar_out))
        .output()
        .map_err(|source| DockerError::Spawn { command: "docker import".into(), source })?;
    if !output.status.success() {
        return Err(DockerError::Failed {
            command: "docker import".into(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Removes what runs left behind whose process is gone (a run id starts with its process id),
/// leaving runs in progress (a CI smoke beside a matrix, say) alone.
pub fn remove_abandoned() -> Result<usize, DockerError> {
    let filter = format!("label={LABEL}");
    let format = format!("{{{{.Label \"{LABEL}\"}}}}");
    let mut runs: std::collections::BTreeSet<String> =
        docker(&["ps", "-a", "--filter", &filter, "--format", &format])?.split_whitespace().map(str::to_string).collect();
    runs.extend(docker(&["network", "ls", "--filter", &filter, "--format", &format])?.split_whitespace().map(str::to_string));
    let mut removed = 0;
    for run in runs {
        let pid = run.split('-').next().and_then(|p| p.parse::<i32>().ok());
        // SAFETY: kill(pid, 0) only asks whether the process exists.
        let alive = pid.is_some_and(|pid| pid > 0 && unsafe { libc::kill(pid, 0) } == 0);
        if !alive && run != "image" {
            removed += remove_labelled(Some(&run))?;
        }
    }
    Ok(removed)
}

/// Removes every container and network labelled `rushes-jepsen=<run>` (every run's when `run`
/// is `None`).
pub fn remove_labelled(run: Option<&str>) -> Result<usize, DockerError> {
    let filter = match run {
        Some(run) => format!("label={LABEL}={run}"),
        None => format!("label={LABEL}"),
    };
    let containers: Vec<String> = docker(&["ps", "-aq", "--filter", &filter])?.split_whitespace().map(str::to_string).collect();
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        docker(&args)?;
    }
    let networks: Vec<String> = docker(&["network", "ls", "-q", "--filter", &filter])?.split_whitespace().map(str::to_string).collect();
    for network in &networks {
        docker(&["network", "rm", network])?;
    }
    Ok(containers.len() + networks.len())
}

/// One node's container.
pub struct DockerNode {
    pub id: u64,
    pub ip: Ipv4Addr,
    pub container: String,
    /// Host directory bound at `/data`.
    pub data_dir: PathBuf,
    /// Where `docker logs` is saved when the run ends.
    pub log_path: PathBuf,
    paused: Mutex<bool>,
    running: Mutex<bool>,
    http: Http,
}

impl DockerNode {
    pub fn base_url(&self) -> String {
        format!("http://{}:{HTTP_PORT}", self.ip)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    /// Running and not paused (as the suite left it).
    pub fn is_serving(&self) -> bool {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) && !self.is_paused()
    }

    pub fn is_running(&self) -> bool {
        *self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The container's init process id on the host (for `nsenter -t PID -n`).
    pub fn pid(&self) -> Result<u32, DockerError> {
        let printed = docker(&["inspect", "--format", "{{.State.Pid}}", &self.container])?;
        match printed.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(pid),
            _ => Err(DockerError::Other(format!("container {} is not running (pid {:?})", self.container, printed.trim()))),
        }
    }

    /// `GET /v1/cluster` from this node.
    pub fn status(&self, digest: bool) -> Result<ClusterStatus, String> {
        crate::status::fetch(&self.http, &self.base_url(), self.id, digest)
    }

    /// The last `lines` lines of the container's output.
    pub fn log_tail(&self, lines: usize) -> String {
        let output = Command::new("docker").args(["logs", "--tail", &lines.to_string(), &self.container]).output();
        match output {
            Ok(output) => format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
            Err(e) => format!("(docker logs failed: {e})"),
        }
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<(), DockerError> {
        let mut last = String::new();
        let healthy = poll_until(timeout, || match self.http.get(&self.url("/health")) {
            Ok(_) => true,
            Err(e) => {
                last = e.to_string();
                false
            }
        });
        if healthy {
            Ok(())
        } else {
            Err(DockerError::Other(format!("node {} did not answer /health within {timeout:?} ({last})\n{}", self.id, self.log_tail(40))))
        }
    }
}

/// How a [`DockerCluster`] is laid out.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    pub cluster: ClusterOptions,
    /// The run id: names and labels everything (letters, digits and `-`).
    pub run_id: String,
    /// Third octet of the run's `10.213.X.0/24` network.
    pub subnet_octet: u8,
    /// Nodes whose `/data` is a small loop-mounted ext4 file system of this many MiB (the
    /// disk-full fault fills it).
    pub small_disk_nodes: Vec<u64>,
    pub small_disk_mib: u64,
}

/// A cluster of containers. Dropping it removes the containers, the network and the loop
/// mounts.
pub struct DockerCluster {
    pub dir: PathBuf,
    pub options: DockerOptions,
    pub image: String,
    pub network: String,
    pub gateway: Ipv4Addr,
    nodes: Vec<DockerNode>,
    loop_mounts: Vec<PathBuf>,
}

impl DockerCluster {
    /// Builds the image if needed, creates the network and one container per node, and waits
    /// until every node answers `/health`.
    pub fn start(dir: &Path, binary: &Path, options: DockerOptions) -> Result<DockerCluster, DockerError> {
        std::fs::create_dir_all(dir).map_err(|e| DockerError::Other(format!("create {}: {e}", dir.display())))?;
        let dir = dir.canonicalize().map_err(|e| DockerError::Other(format!("{}: {e}", dir.display())))?;
        let image = ensure_image(binary)?;
        let network = format!("{LABEL}-{}", options.run_id);
        let label = format!("{LABEL}={}", options.run_id);
        // Another run may hold the preferred subnet: take the next free one.
        let mut options = options;
        let mut attempt = 0u8;
        let gateway = loop {
            let octet = options.subnet_octet.wrapping_add(attempt).max(16);
            let subnet = format!("10.213.{octet}.0/24");
            let gateway = Ipv4Addr::new(10, 213, octet, 1);
            let gateway_text = gateway.to_string();
            let created = docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &subnet,
                "--gateway",
                &gateway_text,
                "--label",
                &label,
                &network,
            ]);
            match created {
                Ok(_) => {
                    options.subnet_octet = octet;
                    break gateway;
                }
                Err(e) if attempt >= 40 => return Err(e),
                Err(_) => attempt += 1,
            }
        };
        let mut cluster = DockerCluster {
            dir: dir.clone(),
            options: options.clone(),
            image,
            network,
            gateway,
            nodes: Vec::new(),
            loop_mounts: Vec::new(),
        };
        cluster.create_nodes(binary)?;
        Ok(cluster)
    }

    fn create_nodes(&mut self, binary: &Path) -> Result<(), DockerError> {
        let count = self.options.cluster.nodes;
        let ips: Vec<Ipv4Addr> = (0..count).map(|i| Ipv4Addr::new(10, 213, self.options.subnet_octet, 11 + i as u8)).collect();
        let members: Vec<(u64, String, String)> =
            ips.iter().enumerate().map(|(i, ip)| (i as u64 + 1, format!("{ip}:{HTTP_PORT}"), format!("{ip}:{RAFT_PORT}"))).collect();
        let (host_credentials, api_key) = make_credentials(binary, &self.dir, &self.options.cluster);
        if api_key.is_some() {
            crate::http::set_api_key(api_key);
        }
        // Inside a container the certificates are at /certs.
        let credentials =
            Credentials { certs_dir: host_credentials.certs_dir.as_ref().map(|_| PathBuf::from("/certs")), ..host_credentials.clone() };
        let config_dir = self.dir.join("config");
        std::fs::create_dir_all(&config_dir).map_err(|e| DockerError::Other(format!("create {}: {e}", config_dir.display())))?;
        let certs_dir = host_credentials.certs_dir.clone().unwrap_or_else(|| self.dir.join("no-certs"));
        std::fs::create_dir_all(&certs_dir).map_err(|e| DockerError::Other(format!("create {}: {e}", certs_dir.display())))?;
        for (id, _, _) in &members {
            let config = node_config_toml(&self.options.cluster, &credentials, *id, Path::new("/data"), &members);
            std::fs::write(config_dir.join(format!("node-{id}.toml")), config)
                .map_err(|e| DockerError::Other(format!("write the config of node {id}: {e}")))?;
            let data_dir = self.dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&data_dir).map_err(|e| DockerError::Other(format!("create {}: {e}", data_dir.display())))?;
            if self.options.small_disk_nodes.contains(id) {
                self.mount_small_disk(&data_dir)?;
            }
            let container = format!("{LABEL}-{}-n{id}", self.options.run_id);
            let ip = ips[*id as usize - 1];
            let label = format!("{LABEL}={}", self.options.run_id);
            let data_volume = format!("{}:/data", data_dir.display());
            let config_volume = format!("{}:/config:ro", config_dir.display());
            let certs_volume = format!("{}:/certs:ro", certs_dir.display());
            let rust_log = format!("RUST_LOG={}", self.options.cluster.rust_log);
            let fault_injection = format!("{FAULT_INJECTION_ENV}=1");
            let config_path = format!("/config/node-{id}.toml");
            let hostname = format!("n{id}");
            let ip_text = ip.to_string();
            let mut args = vec![
                "create",
                "--name",
                &container,
                "--hostname",
                &hostname,
                "--label",
                &label,
                "--network",
                &self.network,
                "--ip",
                &ip_text,
                "-v",
                &data_volume,
                "-v",
                &config_volume,
                "-v",
                &certs_volume,
                "-e",
                &rust_log,
                "--stop-timeout",
                "2",
            ];
            if self.options.cluster.fault_injection {
                args.extend(["-e", fault_injection.as_str()]);
            }
            args.extend([self.image.as_str(), "serve", "--config", &config_path]);
            docker(&args)?;
            self.nodes.push(DockerNode {
                id: *id,
                ip,
                container,
                data_dir,
                log_path: self.dir.join(format!("node-{id}.log")),
                paused: Mutex::new(false),
                running: Mutex::new(false),
                http: Http::new(Duration::from_secs(5)),
            });
        }
        // Every container first: a node may wait for its peers before it serves.
        for node in &self.nodes {
            docker(&["start", &node.container])?;
            *node.running.lock().unwrap_or_else(|e| e.into_inner()) = true;
        }
        for node in &self.nodes {
            node.wait_healthy(self.options.cluster.start_timeout)?;
        }
        Ok(())
    }

    /// Makes `data_dir` a loop-mounted ext4 file system of `small_disk_mib` MiB.
    fn mount_small_disk(&mut self, data_dir: &Path) -> Result<(), DockerError> {
        let image = data_dir.with_extension("img");
        let size = format!("{}M", self.options.small_disk_mib);
        run("truncate", &["-s", &size, &image.display().to_string()])?;
        // No blocks reserved for root: the node runs as root in its container and would
        // otherwise write into them after the nemesis filled the rest.
        run("mkfs.ext4", &["-q", "-F", "-m", "0", &image.display().to_string()])?;
        run("mount", &["-o", "loop", &image.display().to_string(), &data_dir.display().to_string()])?;
        self.loop_mounts.push(data_dir.to_path_buf());
        Ok(())
    }

    pub fn nodes(&self) -> &[DockerNode] {
        &self.nodes
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: u64) -> &DockerNode {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id} (nodes are 1..={})", self.nodes.len()))
    }

    pub fn base_urls(&self) -> Vec<String> {
        self.nodes.iter().map(DockerNode::base_url).collect()
    }

    /// `docker kill -s KILL`: the process dies at once, its network namespace with it.
    pub fn kill(&self, id: u64) -> Result<(), DockerError> {
        let node = self.node(id);
        if node.is_paused() {
            // A frozen container is killed too, but unpause first so the state is clean.
            let _ = docker(&["unpause", &node.container]);
            *node.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
        }
        // Killing a container that already exited fails; that is fine.
        let _ = docker(&["kill", "--signal", "KILL", &node.container]);
        let _ = docker(&["wait", &node.container]);
        *node.running.lock().unwrap_or_else(|e| e.into_inner()) = false;
        Ok(())
    }

    /// Starts a killed node's container on the same data and waits for `/health`. The network
    /// namespace is new: the nemesis re-applies its rules afterwards.
    pub fn start_node(&self, id: u64) -> Result<(), DockerError> {
        let node = self.node(id);
        docker(&["start", &node.container])?;
        *node.running.lock().unwrap_or_else(|e| e.into_inner()) = true;
        node.wait_healthy(self.options.cluster.start_timeout)
    }

    /// `docker pause` (cgroup freezer: every thread stops, sockets stay open).
    pub fn pause(&self, id: u64) -> Result<(), DockerError> {
        let node = self.node(id);
        docker(&["pause", &node.container])?;
        *node.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Ok(())
    }

    pub fn unpause(&self, id: u64) -> Result<(), DockerError> {
        let node = self.node(id);
        docker(&["unpause", &node.container])?;
        *node.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
        Ok(())
    }

    /// Runs `program args` in node `id`'s network namespace (`nsenter -t PID -n`): the host's
    /// iptables and tc act on the container's own interfaces, with nothing installed in the image.
    pub fn in_netns(&self, id: u64, program: &str, args: &[&str]) -> Result<String, DockerError> {
        let pid = self.node(id).pid()?.to_string();
        let mut full = vec!["-t", pid.as_str(), "-n", program];
        full.extend_from_slice(args);
        run("nsenter", &full)
    }

    /// `GET /v1/cluster` from every serving node.
    pub fn statuses(&self, digest: bool) -> BTreeMap<u64, Result<ClusterStatus, String>> {
        self.nodes.iter().filter(|n| n.is_serving()).map(|n| (n.id, n.status(digest))).collect()
    }

    /// The leader of `shard` as the leader itself confirms it (the highest term if two claim it).
    pub fn leader_of(&self, shard: u32) -> Option<u64> {
        let statuses = self.statuses(false);
        statuses
            .iter()
            .filter_map(|(id, status)| {
                let replica = status.as_ref().ok()?.local_replica(shard)?;
                replica.leader.then_some((replica.term.unwrap_or(0), *id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Nodes holding a replica of `shard`, from any serving node's view.
    pub fn replicas_of(&self, shard: u32) -> Vec<u64> {
        for status in self.statuses(false).into_values().flatten() {
            if let Some(s) = status.shard(shard) {
                return s.replicas.iter().map(|r| r.node).collect();
            }
        }
        Vec::new()
    }

    /// `Ok` when every node is up and every shard's local replicas agree on `applied_index`, have
    /// indexed it, and there are `replication_factor` of them.
    pub fn convergence(&self) -> Result<BTreeMap<u32, u64>, String> {
        let mut statuses = Vec::new();
        for node in &self.nodes {
            if !node.is_serving() {
                return Err(format!("node {} is not serving", node.id));
            }
            statuses.push((node.id, node.status(false).map_err(|e| format!("node {}: {e}", node.id))?));
        }
        crate::status::convergence(&statuses, self.options.cluster.shards, self.options.cluster.replication_factor)
    }

    /// Saves every container's output to `node-N.log` in the run directory.
    pub fn save_logs(&self) {
        for node in &self.nodes {
            if let Ok(output) = Command::new("docker").args(["logs", &node.container]).output() {
                if let Ok(mut file) = std::fs::File::create(&node.log_path) {
                    let _ = file.write_all(&output.stdout);
                    let _ = file.write_all(&output.stderr);
                }
            }
        }
    }

    /// Every node's state and log tail, for failure reports.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let state = match (node.is_running(), node.is_paused()) {
                (false, _) => "down",
                (true, true) => "paused",
                (true, false) => "running",
            };
            let _ = writeln!(out, "=== node {} ({state}, {})", node.id, node.ip);
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
            let _ = writeln!(out, "--- last lines of its log ---\n{}", node.log_tail(30));
        }
        out
    }

    /// Removes the containers and the network, and unmounts the small disks.
    pub fn teardown(&mut self) {
        self.save_logs();
        if let Err(e) = remove_labelled(Some(&self.options.run_id)) {
            eprintln!("jepsen: cleaning up run {}: {e}", self.options.run_id);
        }
        for mount in self.loop_mounts.drain(..) {
            let _ = run("umount", &["-l", &mount.display().to_string()]);
        }
        self.nodes.clear();
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linked_libraries_of_a_system_binary_include_the_loader() {
        let libraries = linked_libraries(Path::new("/bin/ls")).expect("ldd /bin/ls");
        assert!(libraries.iter().any(|l| l.to_string_lossy().contains("ld-linux")), "{libraries:?}");
        assert!(libraries.iter().all(|l| l.is_absolute()), "{libraries:?}");
    }

    #[test]
    fn named_images_are_checked() {
        for good in ["rushes:local", "rushes", "example.com/team/rushes:v1.2_3", "rushes-node:Local"] {
            assert!(check_image_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Rushes:local", "rushes:", "rushes:a/b", "rushes local", "-rushes", ":local", "rushes:lo cal"] {
            assert!(check_image_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_image_tag_follows_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"one").unwrap();
        std::fs::write(&b, b"two").unwrap();
        let (tag_a, tag_b) = (image_tag(&a).unwrap(), image_tag(&b).unwrap());
        assert!(tag_a.starts_with("rushes-local:") && tag_a.len() == "rushes-local:".len() + 16, "{tag_a}");
        assert_ne!(tag_a, tag_b);
        assert_eq!(tag_a, image_tag(&a).unwrap());
    }
}
