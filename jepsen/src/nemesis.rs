//! The nemesis: real faults on a [`DockerCluster`], each with its heal, drawn from a seeded
//! schedule.
//!
//! - **Partitions**: iptables `DROP` rules in each node's own network namespace (`nsenter -n`),
//!   in a chain of their own (`JEPSEN`) hooked into `INPUT`: node B drops what comes from A.
//!   A symmetric cut drops both ways; a one-way cut only one.
//! - **Lossy network**: the same rules with the `statistic` match (a random fraction dropped).
//! - **Slow network**: a tbf bandwidth limit on a node's interface, and latency, jitter, stalls
//!   and resets from a [`FaultProxy`] put on a pair's peer paths by DNAT inside both nodes'
//!   namespaces (the kernel here has no netem).
//! - **Processes**: `SIGKILL` and restart of one node, a minority, a majority or all;
//!   `docker pause` past the election timeout.
//! - **Snapshots**: a follower is cut off until the logs compact past it, healed, and killed or
//!   cut off again as soon as it starts fetching its snapshot.
//! - **Disk full**: a node's loop-mounted data file system is filled, then emptied.
//!
//! A container that restarts gets a fresh namespace; the nemesis re-applies the rules in force.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::docker::{DockerCluster, DockerError, RAFT_PORT};
use crate::proxy::{ProxyMode, ProxySet};
use crate::wait::poll_until;

/// Every fault kind the schedule can draw, by the name the CLI takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    IsolateNode,
    IsolateLeader,
    RandomHalves,
    MajoritiesRing,
    Bridge,
    OneWay,
    LossyNetwork,
    SlowNetwork,
    BandwidthLimit,
    StalledConnections,
    ResetConnections,
    KillOne,
    KillMinority,
    KillMajority,
    KillAll,
    Pause,
    SnapshotFault,
    DiskFull,
}

impl FaultKind {
    pub const ALL: [FaultKind; 18] = [
        FaultKind::IsolateNode,
        FaultKind::IsolateLeader,
        FaultKind::RandomHalves,
        FaultKind::MajoritiesRing,
        FaultKind::Bridge,
        FaultKind::OneWay,
        FaultKind::LossyNetwork,
        FaultKind::SlowNetwork,
        FaultKind::BandwidthLimit,
        FaultKind::StalledConnections,
        FaultKind::ResetConnections,
        FaultKind::KillOne,
        FaultKind::KillMinority,
        FaultKind::KillMajority,
        FaultKind::KillAll,
        FaultKind::Pause,
        FaultKind::SnapshotFault,
        FaultKind::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::IsolateNode => "isolate-node",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::RandomHalves => "random-halves",
            FaultKind::MajoritiesRing => "majorities-ring",
            FaultKind::Bridge => "bridge",
            FaultKind::OneWay => "one-way",
            FaultKind::LossyNetwork => "lossy-network",
            FaultKind::SlowNetwork => "slow-network",
            FaultKind::BandwidthLimit => "bandwidth-limit",
            FaultKind::StalledConnections => "stalled-connections",
            FaultKind::ResetConnections => "reset-connections",
            FaultKind::KillOne => "kill-one",
            FaultKind::KillMinority => "kill-minority",
            FaultKind::KillMajority => "kill-majority",
            FaultKind::KillAll => "kill-all",
            FaultKind::Pause => "pause",
            FaultKind::SnapshotFault => "snapshot-fault",
            FaultKind::DiskFull => "disk-full",
        }
    }

    /// Needs five nodes (a ring or bridge of majorities is meaningless with three).
    pub fn needs_five_nodes(self) -> bool {
        matches!(self, FaultKind::MajoritiesRing | FaultKind::Bridge)
    }

    /// Parses a comma-separated list of names and groups: `partition` (every cut),
    /// `network` (loss, delay, bandwidth, stalls, resets), `kill` (every kill), `all`, `none`.
    pub fn parse_list(text: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = BTreeSet::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let group: &[FaultKind] = match name {
                "none" => &[],
                "all" => &FaultKind::ALL,
                "partition" => &[
                    FaultKind::IsolateNode,
                    FaultKind::IsolateLeader,
                    FaultKind::RandomHalves,
                    FaultKind::MajoritiesRing,
                    FaultKind::Bridge,
                    FaultKind::OneWay,
                ],
                "network" => &[
                    FaultKind::LossyNetwork,
                    FaultKind::SlowNetwork,
                    FaultKind::BandwidthLimit,
                    FaultKind::StalledConnections,
                    FaultKind::ResetConnections,
                ],
                "kill" => &[FaultKind::KillOne, FaultKind::KillMinority, FaultKind::KillMajority, FaultKind::KillAll],
                other => match FaultKind::ALL.iter().find(|k| k.name() == other) {
                    Some(kind) => std::slice::from_ref(kind),
                    None => {
                        return Err(format!(
                            "unknown nemesis {other:?}: use none, all, partition, network, kill, or any of {}",
                            FaultKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                        ))
                    }
                },
            };
            kinds.extend(group.iter().copied());
        }
        Ok(kinds.into_iter().collect())
    }
}

/// One entry of the schedule: after `quiet` of no fault, `kind` for `hold`. `choice` picks
/// the targets (which node, which shard) when the fault starts, so a replay with the same seed
/// picks the same ones whenever the cluster is in the same state.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledFault {
    pub kind: FaultKind,
    pub quiet_ms: u64,
    pub hold_ms: u64,
    pub choice: u64,
}

/// A seeded schedule filling `duration`: faults of the enabled kinds, in random order and
/// targets, each held 8 to 20 s after 4 to 10 s of quiet.
pub fn schedule(seed: u64, kinds: &[FaultKind], duration: Duration) -> Vec<ScheduledFault> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e65_6d65_7369_73);
    let mut planned = Vec::new();
    if kinds.is_empty() {
        return planned;
    }
    let mut elapsed = 0u64;
    let limit = duration.as_millis() as u64;
    loop {
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let quiet_ms = rng.gen_range(4_000..10_000);
        let hold_ms = rng.gen_range(8_000..20_000);
        if elapsed + quiet_ms + hold_ms > limit {
            break;
        }
        elapsed += quiet_ms + hold_ms;
        planned.push(ScheduledFault { kind, quiet_ms, hold_ms, choice: rng.gen() });
    }
    planned
}

/// What a started fault needs undone.
#[derive(Debug, Clone)]
enum Undo {
    /// Drop rules: node → its rules (iptables arguments after `-A JEPSEN`).
    Rules(Vec<u64>),
    Bandwidth(Vec<u64>),
    Proxy(Vec<(u64, u64)>),
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    DiskFull(u64),
    Nothing,
}

/// A fault in force, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveFault {
    pub kind: FaultKind,
    pub description: String,
}

/// Applies and heals faults on one cluster.
pub struct Nemesis<'a> {
    cluster: &'a DockerCluster,
    /// Node → iptables rule arguments in force in its `JEPSEN` chain.
    rules: Mutex<BTreeMap<u64, Vec<Vec<String>>>>,
    /// Nodes with a tbf qdisc.
    shaped: Mutex<BTreeSet<u64>>,
    /// Pairs with DNAT to a proxy in force.
    proxied: Mutex<BTreeSet<(u64, u64)>>,
    proxies: ProxySet,
    undo: Mutex<Option<Undo>>,
    filler_name: &'static str,
}

fn ip_of(cluster: &DockerCluster, id: u64) -> Ipv4Addr {
    cluster.node(id).ip
}

/// Picks `count` distinct nodes with `rng`.
fn pick(rng: &mut ChaCha8Rng, nodes: &[u64], count: usize) -> Vec<u64> {
    let mut pool = nodes.to_vec();
    let mut chosen = Vec::new();
    while chosen.len() < count && !pool.is_empty() {
        chosen.push(pool.swap_remove(rng.gen_range(0..pool.len())));
    }
    chosen.sort_unstable();
    chosen
}

/// Symmetric drops between `a` and `b` groups: node → sources it drops.
fn cut(a: &[u64], b: &[u64]) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut drops: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for x in a {
        for y in b {
            if x != y {
                drops.entry(*x).or_default().insert(*y);
                drops.entry(*y).or_default().insert(*x);
            }
        }
    }
    drops
}

/// The "majorities ring": in a ring of five, each node reaches only its two neighbours, so every
/// node sees a majority (itself and two neighbours) but no two nodes see the same majority.
fn majorities_ring(nodes: &[u64]) -> BTreeMap<u64, BTreeSet<u64>> {
    let n = nodes.len();
    let mut drops: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let neighbours = [nodes[(i + 1) % n], nodes[(i + n - 1) % n]];
        for other in nodes {
            if other != node && !neighbours.contains(other) {
                drops.entry(*node).or_default().insert(*other);
            }
        }
    }
    drops
}

/// Two halves joined by one bridge node that sees both.
fn bridge(nodes: &[u64], bridge_index: usize) -> (BTreeMap<u64, BTreeSet<u64>>, u64) {
    let bridge = nodes[bridge_index % nodes.len()];
    let others: Vec<u64> = nodes.iter().copied().filter(|n| *n != bridge).collect();
    let (left, right) = others.split_at(others.len() / 2);
    (cut(left, right), bridge)
}

impl<'a> Nemesis<'a> {
    pub fn new(cluster: &'a DockerCluster) -> Nemesis<'a> {
        Nemesis {
            cluster,
            rules: Mutex::new(BTreeMap::new()),
            shaped: Mutex::new(BTreeSet::new()),
            proxied: Mutex::new(BTreeSet::new()),
            proxies: ProxySet::new(cluster.options.cluster.nodes as u64),
            undo: Mutex::new(None),
            filler_name: "jepsen-disk-filler",
        }
    }

    /// Writes node `id`'s `JEPSEN` chain: created and hooked into `INPUT` if missing, then
    /// flushed and filled with the rules in force.
    fn sync_rules(&self, id: u64) -> Result<(), DockerError> {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned().unwrap_or_default();
        let cluster = self.cluster;
        if cluster.in_netns(id, "iptables", &["-w", "-L", "JEPSEN", "-n"]).is_err() {
            cluster.in_netns(id, "iptables", &["-w", "-N", "JEPSEN"])?;
        }
        if cluster.in_netns(id, "iptables", &["-w", "-C", "INPUT", "-j", "JEPSEN"]).is_err() {
            cluster.in_netns(id, "iptables", &["-w", "-I", "INPUT", "-j", "JEPSEN"])?;
        }
        cluster.in_netns(id, "iptables", &["-w", "-F", "JEPSEN"])?;
        for rule in rules {
            let mut args = vec!["-w", "-A", "JEPSEN"];
            args.extend(rule.iter().map(String::as_str));
            cluster.in_netns(id, "iptables", &args)?;
        }
        Ok(())
    }

    /// Puts drop rules in force: node → sources it drops (all of it, or `probability` of it).
    fn set_drops(&self, drops: &BTreeMap<u64, BTreeSet<u64>>, probability: Option<f64>) -> Result<Vec<u64>, DockerError> {
        let mut touched = Vec::new();
        for (node, sources) in drops {
            let rules: Vec<Vec<String>> = sources
                .iter()
                .map(|source| {
                    let mut rule = vec!["-s".to_string(), ip_of(self.cluster, *source).to_string()];
                    if let Some(p) = probability {
                        rule.extend(["-m", "statistic", "--mode", "random", "--probability"].map(str::to_string));
                        rule.push(format!("{p:.3}"));
                    }
                    rule.extend(["-j".to_string(), "DROP".to_string()]);
                    rule
                })
                .collect();
            self.rules.lock().unwrap_or_else(|e| e.into_inner()).insert(*node, rules);
            if self.cluster.node(*node).is_running() {
                self.sync_rules(*node)?;
            }
            touched.push(*node);
        }
        Ok(touched)
    }

    fn clear_rules(&self, nodes: &[u64]) -> Result<(), DockerError> {
        for node in nodes {
            self.rules.lock().unwrap_or_else(|e| e.into_inner()).remove(node);
            if self.cluster.node(*node).is_running() {
                self.sync_rules(*node)?;
            }
        }
        Ok(())
    }

    /// The proxy for `from → to`'s Raft port, started on the host side of the network.
    fn proxy_for(&self, from: u64, to: u64, seed: u64) -> Result<SocketAddr, DockerError> {
        if let Some(proxy) = self.proxies.get((from, to)) {
            return Ok(proxy.local_addr());
        }
        let listen = SocketAddr::new(self.cluster.gateway.into(), 0);
        let upstream = SocketAddr::new(ip_of(self.cluster, to).into(), RAFT_PORT);
        let _ = seed;
        self.proxies.add(from, to, listen, upstream).map_err(|e| DockerError::Other(format!("start a proxy for {from}→{to}: {e}")))
    }

    /// Redirects `from`'s new connections to `to`'s Raft port through the pair's proxy, and
    /// resets its direct ones so they reconnect through it.
    fn route_through_proxy(&self, from: u64, to: u64, proxy: SocketAddr) -> Result<(), DockerError> {
        let target = ip_of(self.cluster, to).to_string();
        let port = RAFT_PORT.to_string();
        let destination = proxy.to_string();
        self.cluster.in_netns(
            from,
            "iptables",
            &[
                "-w",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                &target,
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &destination,
            ],
        )?;
        // The filter table sees the translated destination, so only the old direct connections
        // match and are reset.
        self.cluster.in_netns(
            from,
            "iptables",
            &["-w", "-A", "OUTPUT", "-p", "tcp", "-d", &target, "--dport", &port, "-j", "REJECT", "--reject-with", "tcp-reset"],
        )?;
        self.proxied.lock().unwrap_or_else(|e| e.into_inner()).insert((from, to));
        Ok(())
    }

    fn unroute_proxy(&self, from: u64, to: u64) -> Result<(), DockerError> {
        self.proxied.lock().unwrap_or_else(|e| e.into_inner()).remove(&(from, to));
        if !self.cluster.node(from).is_running() {
            return Ok(());
        }
        // A new namespace after a restart has neither rule; flushing is the heal either way.
        self.cluster.in_netns(from, "iptables", &["-w", "-t", "nat", "-F", "OUTPUT"])?;
        self.cluster.in_netns(from, "iptables", &["-w", "-F", "OUTPUT"])?;
        Ok(())
    }

    /// Re-applies every network rule in force on node `id` after its container restarted
    /// (a new network namespace).
    pub fn after_restart(&self, id: u64) -> Result<(), DockerError> {
        self.sync_rules(id)?;
        let pairs: Vec<(u64, u64)> =
            self.proxied.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().filter(|(f, _)| *f == id).collect();
        for (from, to) in pairs {
            if let Some(proxy) = self.proxies.get((from, to)) {
                self.route_through_proxy(from, to, proxy.local_addr())?;
            }
        }
        if self.shaped.lock().unwrap_or_else(|e| e.into_inner()).contains(&id) {
            self.shape(id)?;
        }
        Ok(())
    }

    fn shape(&self, id: u64) -> Result<(), DockerError> {
        // 2 Mbit/s with a small burst: Raft heartbeats pass, snapshot chunks and big batches crawl.
        let _ = self.cluster.in_netns(id, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
        self.cluster.in_netns(
            id,
            "tc",
            &["qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "2mbit", "burst", "32kb", "latency", "400ms"],
        )?;
        Ok(())
    }

    /// Starts `fault`; returns what it did, for the history. The targets come from `fault.choice`.
    pub fn start(&self, fault: &ScheduledFault, shards: u32) -> Result<ActiveFault, DockerError> {
        let nodes = self.cluster.node_ids();
        let n = nodes.len();
        let mut rng = ChaCha8Rng::seed_from_u64(fault.choice);
        let (undo, description) = match fault.kind {
            FaultKind::IsolateNode => {
                let victim = pick(&mut rng, &nodes, 1);
                let rest: Vec<u64> = nodes.iter().copied().filter(|x| !victim.contains(x)).collect();
                let touched = self.set_drops(&cut(&victim, &rest), None)?;
                (Undo::Rules(touched), format!("node {} cut off from the others", victim[0]))
            }
            FaultKind::IsolateLeader => {
                let shard = rng.gen_range(0..shards.max(1));
                let leader = self.cluster.leader_of(shard).unwrap_or_else(|| pick(&mut rng, &nodes, 1)[0]);
                let rest: Vec<u64> = nodes.iter().copied().filter(|x| *x != leader).collect();
                let touched = self.set_drops(&cut(&[leader], &rest), None)?;
                (Undo::Rules(touched), format!("node {leader}, leader of shard {shard}, cut off from the others"))
            }
            FaultKind::RandomHalves => {
                let minority = pick(&mut rng, &nodes, n / 2);
                let rest: Vec<u64> = nodes.iter().copied().filter(|x| !minority.contains(x)).collect();
                let touched = self.set_drops(&cut(&minority, &rest), None)?;
                (Undo::Rules(touched), format!("halves {minority:?} | {rest:?}"))
            }
            FaultKind::MajoritiesRing => {
                let mut order = nodes.clone();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.gen_range(0..=i));
                }
                let touched = self.set_drops(&majorities_ring(&order), None)?;
                (Undo::Rules(touched), format!("majorities ring {order:?}: each node reaches only its two neighbours"))
            }
            FaultKind::Bridge => {
                let (drops, bridge_node) = bridge(&nodes, rng.gen_range(0..n));
                let touched = self.set_drops(&drops, None)?;
                (Undo::Rules(touched), format!("two halves joined only through node {bridge_node}"))
            }
            FaultKind::OneWay => {
                let pair = pick(&mut rng, &nodes, 2);
                let (from, to) = if rng.gen_bool(0.5) { (pair[0], pair[1]) } else { (pair[1], pair[0]) };
                let others: Vec<u64> = nodes.iter().copied().filter(|x| *x != to).collect();
                // `to` hears nobody else, but everyone hears `to`: its messages go out, replies never come back.
                let drops: BTreeMap<u64, BTreeSet<u64>> = [(to, others.iter().copied().collect())].into_iter().collect();
                let touched = self.set_drops(&drops, None)?;
                let _ = from;
                (Undo::Rules(touched), format!("one-way: node {to} receives nothing from {others:?}, they still receive from it"))
            }
            FaultKind::LossyNetwork => {
                let probability = [0.1, 0.25, 0.4][rng.gen_range(0..3)];
                let all: BTreeMap<u64, BTreeSet<u64>> =
                    nodes.iter().map(|x| (*x, nodes.iter().copied().filter(|y| y != x).collect())).collect();
                let touched = self.set_drops(&all, Some(probability))?;
                (Undo::Rules(touched), format!("every peer packet dropped with probability {probability}"))
            }
            FaultKind::BandwidthLimit => {
                let victims = pick(&mut rng, &nodes, (n / 2).max(1));
                for victim in &victims {
                    self.shape(*victim)?;
                    self.shaped.lock().unwrap_or_else(|e| e.into_inner()).insert(*victim);
                }
                (Undo::Bandwidth(victims.clone()), format!("nodes {victims:?} limited to 2 Mbit/s out (tbf)"))
            }
            FaultKind::SlowNetwork | FaultKind::StalledConnections | FaultKind::ResetConnections => {
                let victim = pick(&mut rng, &nodes, 1)[0];
                let mode = match fault.kind {
                    FaultKind::SlowNetwork => {
                        ProxyMode::Delay { delay_ms: [50, 150, 400][rng.gen_range(0..3)], jitter_ms: [10, 50, 100][rng.gen_range(0..3)] }
                    }
                    FaultKind::StalledConnections => ProxyMode::Stall,
                    _ => ProxyMode::Reset,
                };
                let mut pairs = Vec::new();
                for other in nodes.iter().copied().filter(|x| *x != victim) {
                    for (from, to) in [(victim, other), (other, victim)] {
                        let proxy = self.proxy_for(from, to, rng.gen())?;
                        let _ = self.proxies.set_mode((from, to), mode.clone());
                        self.route_through_proxy(from, to, proxy)?;
                        pairs.push((from, to));
                    }
                }
                (Undo::Proxy(pairs), format!("node {victim}'s peer links through a proxy: {mode:?}"))
            }
            FaultKind::KillOne | FaultKind::KillMinority | FaultKind::KillMajority | FaultKind::KillAll => {
                let count = match fault.kind {
                    FaultKind::KillOne => 1,
                    FaultKind::KillMinority => (n - 1) / 2,
                    FaultKind::KillMajority => n / 2 + 1,
                    _ => n,
                }
                .max(1);
                let victims = pick(&mut rng, &nodes, count);
                for victim in &victims {
                    self.cluster.kill(*victim)?;
                }
                (Undo::Killed(victims.clone()), format!("SIGKILL nodes {victims:?}"))
            }
            FaultKind::Pause => {
                let count = rng.gen_range(1..=((n - 1) / 2).max(1));
                let victims = pick(&mut rng, &nodes, count);
                for victim in &victims {
                    self.cluster.pause(*victim)?;
                }
                (Undo::Paused(victims.clone()), format!("docker pause nodes {victims:?}"))
            }
            FaultKind::SnapshotFault => {
                let description = self.snapshot_fault(&mut rng, shards, fault.hold_ms)?;
                (Undo::Nothing, description)
            }
            FaultKind::DiskFull => {
                let Some(victim) = self.cluster.options.small_disk_nodes.first().copied() else {
                    return Err(DockerError::Other("disk-full needs a node on a small disk (DockerOptions::small_disk_nodes)".into()));
                };
                let filled = self.fill_disk(victim)?;
                let data_dir = self.cluster.node(victim).data_dir.display().to_string();
                let available = crate::docker::run("df", &["-B1", "--output=avail", &data_dir])
                    .ok()
                    .and_then(|text| text.lines().nth(1).and_then(|line| line.trim().parse::<u64>().ok()));
                (
                    Undo::DiskFull(victim),
                    format!("node {victim}'s data file system filled ({} MiB written, {available:?} bytes left)", filled >> 20),
                )
            }
        };
        *self.undo.lock().unwrap_or_else(|e| e.into_inner()) = Some(undo);
        Ok(ActiveFault { kind: fault.kind, description })
    }

    /// Undoes the fault in force, if any; returns what the fault observably did, when that is
    /// worth reporting (the proxy's connections and bytes).
    pub fn heal(&self) -> Result<Option<String>, DockerError> {
        let Some(undo) = self.undo.lock().unwrap_or_else(|e| e.into_inner()).take() else { return Ok(None) };
        let mut observed = None;
        match undo {
            Undo::Rules(nodes) => self.clear_rules(&nodes)?,
            Undo::Bandwidth(nodes) => {
                for node in nodes {
                    self.shaped.lock().unwrap_or_else(|e| e.into_inner()).remove(&node);
                    if self.cluster.node(node).is_running() {
                        let _ = self.cluster.in_netns(node, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
                    }
                }
            }
            Undo::Proxy(pairs) => {
                let (mut connections, mut bytes) = (0, 0);
                for pair in &pairs {
                    if let Some(proxy) = self.proxies.get(*pair) {
                        let stats = proxy.stats();
                        connections += stats.accepted;
                        bytes += stats.bytes_to_upstream + stats.bytes_to_client;
                    }
                }
                observed = Some(format!("{connections} connections and {} KiB went through the proxies", bytes / 1024));
                for (from, to) in pairs {
                    self.unroute_proxy(from, to)?;
                    // Connections made through the proxy stay on it; they flow freely again.
                    let _ = self.proxies.set_mode((from, to), ProxyMode::Pass);
                }
            }
            Undo::Killed(nodes) => {
                for node in nodes {
                    self.cluster.start_node(node)?;
                    self.after_restart(node)?;
                }
            }
            Undo::Paused(nodes) => {
                for node in nodes {
                    self.cluster.unpause(node)?;
                }
            }
            Undo::DiskFull(node) => {
                let filler = self.cluster.node(node).data_dir.join(self.filler_name);
                std::fs::remove_file(&filler).map_err(|e| DockerError::Other(format!("remove {}: {e}", filler.display())))?;
            }
            Undo::Nothing => {}
        }
        Ok(observed)
    }

    /// Heals everything that might still be in force (the end of a run, or after an error).
    pub fn heal_all(&self) {
        if let Err(e) = self.heal() {
            eprintln!("jepsen: heal failed: {e}");
        }
        for node in self.cluster.nodes() {
            if node.is_paused() {
                let _ = self.cluster.unpause(node.id);
            }
            if !node.is_running() {
                if let Err(e) = self.cluster.start_node(node.id) {
                    eprintln!("jepsen: restarting node {}: {e}", node.id);
                }
            }
            let filler = node.data_dir.join(self.filler_name);
            let _ = std::fs::remove_file(filler);
        }
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.shaped.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let pairs: Vec<(u64, u64)> = self.proxied.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        for (from, to) in pairs {
            let _ = self.unroute_proxy(from, to);
        }
        self.proxies.set_all(ProxyMode::Pass);
        for node in self.cluster.node_ids() {
            let _ = self.sync_rules(node);
            let _ = self.cluster.in_netns(node, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
        }
    }

    /// Fills node `id`'s data file system until writes fail with ENOSPC; returns bytes written.
    fn fill_disk(&self, id: u64) -> Result<u64, DockerError> {
        use std::io::Write as _;
        let path = self.cluster.node(id).data_dir.join(self.filler_name);
        let mut file = std::fs::File::create(&path).map_err(|e| DockerError::Other(format!("create {}: {e}", path.display())))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(count) => written += count as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(DockerError::Other(format!("fill {}: {e}", path.display()))),
            }
        }
        let _ = file.sync_all();
        Ok(written)
    }

    /// Cuts a follower of a shard off until both other replicas compacted their logs past it,
    /// heals, and the moment it fetches snapshot chunks, kills it (or cuts it off again) for a
    /// few seconds, then lets it finish.
    fn snapshot_fault(&self, rng: &mut ChaCha8Rng, shards: u32, hold_ms: u64) -> Result<String, DockerError> {
        // The shard with the most entries applied: a workload may write to only some shards, and
        // only a shard that keeps taking writes compacts its log past a cut-off follower.
        let busiest = self
            .cluster
            .statuses(false)
            .into_values()
            .flatten()
            .flat_map(|status| status.local_replicas().map(|(shard, r)| (r.applied_index.unwrap_or(0), shard)).collect::<Vec<_>>())
            .max()
            .map(|(_, shard)| shard);
        let shard = busiest.unwrap_or_else(|| rng.gen_range(0..shards.max(1)));
        let Some(leader) = self.cluster.leader_of(shard) else { return Ok(format!("snapshot fault skipped: shard {shard} has no leader")) };
        let followers: Vec<u64> = self.cluster.replicas_of(shard).into_iter().filter(|x| *x != leader).collect();
        if followers.is_empty() {
            return Ok(format!("snapshot fault skipped: shard {shard} has no follower"));
        }
        let victim = followers[rng.gen_range(0..followers.len())];
        let kill = rng.gen_bool(0.5);
        let others: Vec<u64> = self.cluster.node_ids().into_iter().filter(|x| *x != victim).collect();
        let status_of = |node: u64| self.cluster.node(node).status(false).ok().and_then(|s| s.local_replica(shard).cloned());
        let applied_before = status_of(victim).and_then(|r| r.applied_index).unwrap_or(0);
        let fetched_before = status_of(victim).and_then(|r| r.snapshot_chunks_fetched).unwrap_or(0);
        let touched = self.set_drops(&cut(&[victim], &others), None)?;
        // The writers keep going; the leader's log must move past what the victim has.
        let compacted = poll_until(Duration::from_millis(hold_ms.max(5_000)), || {
            status_of(leader).and_then(|r| r.log_first_index).is_some_and(|first| first > applied_before + 1)
        });
        self.clear_rules(&touched)?;
        if !compacted {
            let leader_log = status_of(leader).map(|r| (r.log_first_index, r.applied_index));
            return Ok(format!(
                "node {victim} (shard {shard}) cut off, but the log did not compact past it (it had applied {applied_before}; \
                 leader {leader}'s log starts at / applied: {leader_log:?}): no snapshot was needed"
            ));
        }
        let started = Instant::now();
        let fetching = poll_until(Duration::from_secs(20), || {
            status_of(victim).and_then(|r| r.snapshot_chunks_fetched).is_some_and(|fetched| fetched > fetched_before)
        });
        if !fetching {
            return Ok(format!("node {victim} (shard {shard}) fell behind the compacted log but fetched no snapshot chunk within 20 s"));
        }
        // Strike at once (mid-fetch) or a little later, which with a small shard lands in the
        // install; the description says which it was.
        let installed_before = status_of(victim).and_then(|r| r.snapshots_installed).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1_500)));
        let installed_at_fault = status_of(victim).and_then(|r| r.snapshots_installed).unwrap_or(0);
        let phase = if installed_at_fault > installed_before { "after the install" } else { "during the fetch or install" };
        let fault = if kill {
            self.cluster.kill(victim)?;
            std::thread::sleep(Duration::from_secs(3));
            self.cluster.start_node(victim)?;
            self.after_restart(victim)?;
            "killed"
        } else {
            let touched = self.set_drops(&cut(&[victim], &others), None)?;
            std::thread::sleep(Duration::from_secs(5));
            self.clear_rules(&touched)?;
            "cut off again"
        };
        Ok(format!(
            "node {victim} (shard {shard}) fell behind the compacted log; {fault} {} ms after its snapshot fetch began ({phase})",
            started.elapsed().as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let kinds = FaultKind::parse_list("partition,kill,pause").unwrap();
        let a = schedule(7, &kinds, Duration::from_secs(120));
        let b = schedule(7, &kinds, Duration::from_secs(120));
        let c = schedule(8, &kinds, Duration::from_secs(120));
        let describe = |s: &[ScheduledFault]| s.iter().map(|f| (f.kind, f.quiet_ms, f.hold_ms, f.choice)).collect::<Vec<_>>();
        assert_eq!(describe(&a), describe(&b));
        assert_ne!(describe(&a), describe(&c));
        assert!(a.len() >= 4, "120 s holds several faults: {}", a.len());
        let total: u64 = a.iter().map(|f| f.quiet_ms + f.hold_ms).sum();
        assert!(total <= 120_000);
        assert!(schedule(7, &[], Duration::from_secs(120)).is_empty());
    }

    #[test]
    fn names_and_groups_parse_and_unknown_names_are_refused() {
        assert_eq!(FaultKind::parse_list("kill").unwrap().len(), 4);
        assert_eq!(FaultKind::parse_list("all").unwrap().len(), FaultKind::ALL.len());
        assert_eq!(FaultKind::parse_list("pause,pause").unwrap(), vec![FaultKind::Pause]);
        assert!(FaultKind::parse_list("none").unwrap().is_empty());
        let error = FaultKind::parse_list("partition,explode").unwrap_err();
        assert!(error.contains("explode") && error.contains("isolate-leader"), "{error}");
    }

    #[test]
    fn a_majorities_ring_leaves_every_node_a_different_majority() {
        let nodes = [1, 2, 3, 4, 5];
        let drops = majorities_ring(&nodes);
        let mut majorities = BTreeSet::new();
        for node in nodes {
            let reached: BTreeSet<u64> = nodes.iter().copied().filter(|x| !drops.get(&node).is_some_and(|d| d.contains(x))).collect();
            assert_eq!(reached.len(), 3, "node {node} reaches itself and two neighbours: {reached:?}");
            majorities.insert(reached);
        }
        assert_eq!(majorities.len(), 5, "no two nodes share a majority");
        // Symmetric: if a drops b, b drops a.
        for (a, sources) in &drops {
            for b in sources {
                assert!(drops[b].contains(a));
            }
        }
    }

    #[test]
    fn a_bridge_node_reaches_both_halves_that_cannot_reach_each_other() {
        let (drops, bridge_node) = bridge(&[1, 2, 3, 4, 5], 2);
        assert_eq!(bridge_node, 3);
        assert!(!drops.contains_key(&3), "the bridge drops nothing");
        assert!(drops[&1].contains(&4) && drops[&1].contains(&5) && !drops[&1].contains(&2));
        assert!(drops[&5].contains(&1) && drops[&5].contains(&2) && !drops[&5].contains(&4));
    }

    #[test]
    fn a_cut_is_symmetric() {
        let drops = cut(&[1], &[2, 3]);
        assert_eq!(drops[&1], [2, 3].into_iter().collect());
        assert_eq!(drops[&2], [1].into_iter().collect());
        assert_eq!(drops[&3], [1].into_iter().collect());
    }
}
