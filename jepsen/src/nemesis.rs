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
//! - **Snapshots**: a follower is cut off while the nemesis writes filler into its shard until
//!   the leader's log compacts past it; healed, it must fetch a snapshot of megabytes, and is
//!   killed or cut off again mid-fetch or mid-install (its status counters tell which).
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
    /// False when the fault's point did not come about (a snapshot fault whose follower never
    /// fetched a snapshot, or was struck too late); its description says why. The run's
    /// verdict is then at best unknown, as for a fault during which no operation was invoked.
    pub happened: bool,
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
    /// Shards holding the workload's assets: the snapshot fault strikes one of them (all
    /// shards when empty).
    workload_shards: Vec<u32>,
    /// The snapshot fault's filler assets not deleted yet.
    filler: Mutex<BTreeSet<String>>,
    filler_tags: std::sync::atomic::AtomicU64,
    http: crate::http::Http,
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
            workload_shards: Vec::new(),
            filler: Mutex::new(BTreeSet::new()),
            filler_tags: std::sync::atomic::AtomicU64::new(0),
            http: crate::http::Http::new(Duration::from_secs(12)),
        }
    }

    /// The shards the workload writes to (the snapshot fault strikes one of them).
    pub fn with_workload_shards(mut self, shards: Vec<u32>) -> Nemesis<'a> {
        self.workload_shards = shards;
        self
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
        let mut happened = true;
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
                let (description, struck) = self.snapshot_fault(&mut rng, shards)?;
                happened = struck;
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
        Ok(ActiveFault { kind: fault.kind, description, happened })
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

    /// The snapshot fault (see [`SnapshotFaultPlan`] for what the seed decides):
    ///
    /// 1. a follower of the shard is cut off, and the nemesis writes filler annotations into the
    ///    shard through the other replicas until the leader's log is compacted past anything the
    ///    follower can hold and the shard holds megabytes more (so the fetch takes seconds at the
    ///    suite's `snapshot_transfer_bytes_per_s`, whatever the workload writes there);
    /// 2. healed, the follower must fetch a snapshot: the nemesis watches its chunk counters;
    /// 3. mid-fetch (after a number of chunks), or for one kill in three as soon as the fetch
    ///    ends and the install begins, the follower is killed (restarted 3 s later) or cut off
    ///    again for 5 s;
    /// 4. it must then catch up; the filler is deleted.
    ///
    /// Returns the description and whether the strike landed during the fetch or the install.
    fn snapshot_fault(&self, rng: &mut ChaCha8Rng, shards: u32) -> Result<(String, bool), DockerError> {
        let candidates: Vec<u32> =
            if self.workload_shards.is_empty() { (0..shards.max(1)).collect() } else { self.workload_shards.clone() };
        let shard = candidates[rng.gen_range(0..candidates.len())];
        let Some(leader) = self.cluster.leader_of(shard) else {
            return Ok((format!("snapshot fault did not happen: shard {shard} has no leader"), false));
        };
        let followers: Vec<u64> = self.cluster.replicas_of(shard).into_iter().filter(|x| *x != leader).collect();
        if followers.is_empty() {
            return Ok((format!("snapshot fault did not happen: shard {shard} has no follower"), false));
        }
        let victim = followers[rng.gen_range(0..followers.len())];
        let plan = SnapshotFaultPlan::draw(rng);
        let others: Vec<u64> = self.cluster.node_ids().into_iter().filter(|x| *x != victim).collect();
        let replica = |node: u64| self.cluster.node(node).status(false).ok().and_then(|s| s.local_replica(shard).cloned());
        let counters = |node: u64| replica(node).map(|r| SnapshotCounters::of(&r));
        let base = counters(victim).unwrap_or_default();
        let what = format!("node {victim} (shard {shard}, leader {leader})");

        // 1. Cut off; filler until the leader's log starts past what the victim can hold.
        let cut_started = Instant::now();
        let touched = self.set_drops(&cut(&[victim], &others), None)?;
        // From here nothing reaches the victim: it holds at most what the leader had appended
        // by now, and the leader's uncommitted tail is a few group commits.
        let leader_end = replica(leader).map(|r| r.commit_index.unwrap_or(0).max(r.applied_index.unwrap_or(0))).unwrap_or(0);
        let victim_bound = leader_end + SNAPSHOT_LOG_MARGIN;
        let mut urls: Vec<String> = vec![self.cluster.node(leader).base_url()];
        urls.extend(others.iter().filter(|x| **x != leader).map(|x| self.cluster.node(*x).base_url()));
        let mut filler = Filler::new(filler_assets(shard, shards, self.next_filler_tag(), FILLER_ASSETS), plan.filler_seed);
        self.filler.lock().unwrap_or_else(|e| e.into_inner()).extend(filler.assets.iter().cloned());
        // A status call waits up to a second for the cut-off peer: a thread of its own watches
        // where the leader's log starts while the filler goes in.
        let first_index = std::sync::atomic::AtomicU64::new(0);
        let done = std::sync::atomic::AtomicBool::new(false);
        let compacted = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    if let Some(first) = replica(leader).and_then(|r| r.log_first_index) {
                        first_index.store(first, std::sync::atomic::Ordering::Release);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let compacted = loop {
                let first = first_index.load(std::sync::atomic::Ordering::Acquire);
                if first > victim_bound + 1 && filler.text_bytes >= FILLER_TEXT_BYTES {
                    break true;
                }
                if cut_started.elapsed() >= SNAPSHOT_CUT_LIMIT {
                    break false;
                }
                filler.write(&self.http, &urls, filler.text_bytes < FILLER_TEXT_BYTES);
                if filler.text_bytes >= FILLER_TEXT_BYTES {
                    // Enough to move the log on without flooding it.
                    std::thread::sleep(Duration::from_millis(10));
                }
            };
            done.store(true, std::sync::atomic::Ordering::Release);
            compacted
        });
        let leader_first = first_index.load(std::sync::atomic::Ordering::Acquire);
        // The victim's own view: had anything reached it, the log would not need a snapshot.
        let victim_commit = replica(victim).and_then(|r| r.commit_index).unwrap_or(0);
        self.clear_rules(&touched)?;
        // Connections that lost packets wait out TCP's retransmission back-off (seconds after a
        // cut of seconds) before anything moves: reset them, and the nodes reconnect at once.
        for node in &others {
            let victim_ip = ip_of(self.cluster, victim).to_string();
            let _ = self.cluster.in_netns(*node, "ss", &["-K", "dst", &victim_ip]);
            let _ = self.cluster.in_netns(victim, "ss", &["-K", "dst", &ip_of(self.cluster, *node).to_string()]);
        }
        let cut_for = cut_started.elapsed();
        let cut_text = format!(
            "{what} cut off {:.1} s while the nemesis wrote {} filler annotations ({} KiB of text, {} requests) into the shard{}",
            cut_for.as_secs_f64(),
            filler.annotations,
            filler.text_bytes / 1024,
            filler.requests,
            filler.trouble()
        );
        if compacted && victim_commit > victim_bound {
            let cleanup = self.remove_filler(FILLER_REMOVAL_LIMIT);
            return Ok((
                format!(
                    "snapshot fault did not happen: {cut_text}, but the cut did not hold: the node's commit index reached \
                     {victim_commit}, past the {victim_bound} it could hold{}",
                    removal_note(cleanup)
                ),
                false,
            ));
        }
        if !compacted {
            let cleanup = self.remove_filler(FILLER_REMOVAL_LIMIT);
            return Ok((
                format!(
                    "snapshot fault did not happen: {cut_text}, but within {} s the leader's log did not start past index {} \
                     (what the node could hold; it starts at {leader_first}), so no snapshot was needed{}",
                    SNAPSHOT_CUT_LIMIT.as_secs(),
                    victim_bound + 1,
                    removal_note(cleanup)
                ),
                false,
            ));
        }

        // 2. Healed: the victim must fetch a snapshot.
        let healed = Instant::now();
        // What the victim's log said of this shard's snapshots so far (kills are placed by it).
        let logged_before = if plan.kill { self.snapshot_log_events(victim, shard) } else { None };
        // Kills signal the process itself: `docker kill` takes longer than an install.
        let pid = if plan.kill { self.cluster.node(victim).pid().ok() } else { None };
        let mut last = base;
        let began = watch(SNAPSHOT_FETCH_START_LIMIT, Duration::from_millis(20), || {
            if let Some(now) = counters(victim) {
                last = now;
            }
            last.chunks > base.chunks || last.installed > base.installed
        });
        let cut_text = format!("{cut_text}, until the leader's log started at {leader_first} (the node could hold at most {victim_bound})");
        if !began {
            let cleanup = self.remove_filler(FILLER_REMOVAL_LIMIT);
            return Ok((
                format!(
                    "snapshot fault did not happen: {cut_text}; healed, it fetched no snapshot chunk within {} s \
                     (it has applied {}){}",
                    SNAPSHOT_FETCH_START_LIMIT.as_secs(),
                    last.applied,
                    removal_note(cleanup)
                ),
                false,
            ));
        }
        let fetch_began = Instant::now();
        let began_after = fetch_began.duration_since(healed);

        // 3. Strike: after `plan.strike_after_chunks` chunks, or (aiming at the install) the
        //    moment the fetch ends.
        let interval = Duration::from_millis(if plan.aim_install { 5 } else { 10 });
        watch(SNAPSHOT_STRIKE_LIMIT, interval, || {
            if let Some(now) = counters(victim) {
                last = now;
            }
            let ended = last.fetch_ms > base.fetch_ms || last.installed > base.installed;
            ended || (!plan.aim_install && last.chunks >= base.chunks + plan.strike_after_chunks)
        });
        let mut before = last;
        let strike_at = fetch_began.elapsed();
        let mut phase = SnapshotPhase::of(&base, &before);
        let leader_applied = replica(leader).and_then(|r| r.applied_index).unwrap_or(0);
        let (strike_text, after_text) = if plan.kill {
            self.kill_now(victim, pid)?;
            // The last status reading is a few tens of milliseconds older than the kill; the
            // killed process's log says whether it had staged or installed the snapshot by then.
            if let (Some((staged_before, installed_before)), Some((staged, installed))) =
                (logged_before, self.snapshot_log_events(victim, shard))
            {
                phase = match (staged > staged_before, installed > installed_before) {
                    (_, true) if phase == SnapshotPhase::Done => SnapshotPhase::Done,
                    (_, true) => SnapshotPhase::Rederiving,
                    (true, false) => SnapshotPhase::FetchEnded,
                    (false, false) => SnapshotPhase::Fetching,
                };
            }
            std::thread::sleep(Duration::from_secs(3));
            self.cluster.start_node(victim)?;
            self.after_restart(victim)?;
            // A new process: its counters start from zero.
            let caught_up = self.catch_up(victim, shard, leader_applied);
            let now = counters(victim).unwrap_or_default();
            let how = match (now.installed, now.chunks) {
                (0, _) => "installed no snapshot after the restart: the log was enough".to_string(),
                (_, 0) => format!(
                    "installed a snapshot without fetching a chunk (the copy it had staged before the kill); {}",
                    now.describe_install()
                ),
                (installed, chunks) => {
                    format!("fetched {chunks} chunks ({} KiB) again and installed {installed} snapshot(s)", now.bytes / 1024)
                }
            };
            (
                format!("killed {} ms into the fetch", strike_at.as_millis()),
                format!("restarted 3 s later, it {how}{}", caught_up_note(caught_up)),
            )
        } else {
            let touched = self.set_drops(&cut(&[victim], &others), None)?;
            // The victim's HTTP port still answers the host: where it was when the cut began.
            let at_cut = counters(victim).unwrap_or(before);
            (before, phase) = (at_cut, SnapshotPhase::of(&base, &at_cut));
            std::thread::sleep(Duration::from_secs(5));
            let at_heal = counters(victim).unwrap_or(at_cut);
            self.clear_rules(&touched)?;
            let caught_up = self.catch_up(victim, shard, leader_applied);
            let now = counters(victim).unwrap_or(at_heal);
            let during = if at_heal.chunks == at_cut.chunks && at_heal.fetch_ms == at_cut.fetch_ms && at_heal.installed == at_cut.installed
            {
                format!("its fetch stood still at {} chunks through the cut", at_cut.chunks - base.chunks)
            } else {
                format!("during the cut it went from {} to {} chunks", at_cut.chunks - base.chunks, at_heal.chunks - base.chunks)
            };
            let how = format!(
                "{during}; healed 5 s later, it fetched {} chunks in all and installed {} snapshot(s)",
                now.chunks - base.chunks,
                now.installed - base.installed
            );
            (format!("cut off again {} ms into the fetch", strike_at.as_millis()), format!("{how}{}", caught_up_note(caught_up)))
        };
        let (landed, happened) = phase.describe(&base, &before, plan.kill);
        let strike_text = format!("{strike_text}, {landed}");
        let cleanup = self.remove_filler(FILLER_REMOVAL_LIMIT);
        let aim = if plan.aim_install { "the install" } else { "the fetch" };
        let prefix = if happened { String::new() } else { format!("snapshot fault did not happen (aimed at {aim}): ") };
        Ok((
            format!(
                "{prefix}{cut_text}; healed, it began fetching a snapshot {} ms later; {strike_text}; {after_text}{}",
                began_after.as_millis(),
                removal_note(cleanup)
            ),
            happened,
        ))
    }

    /// SIGKILL of node `id`'s process (`pid`, its container's init, seen from the host) at once,
    /// then the suite's own kill (which waits for the container to stop). `docker kill` alone
    /// takes tens of milliseconds: longer than installing a staged snapshot of megabytes.
    fn kill_now(&self, id: u64, pid: Option<u32>) -> Result<(), DockerError> {
        if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) with a process id read from `docker inspect` for this container.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        self.cluster.kill(id)
    }

    /// How many snapshots of `shard` node `id`'s log says it staged and installed so far (runs
    /// with the snapshot fault log both at info: `SNAPSHOT_RUST_LOG`); `None` without its log.
    fn snapshot_log_events(&self, id: u64, shard: u32) -> Option<(usize, usize)> {
        let log = self.cluster.node(id).log_tail(1_000_000);
        if log.starts_with("(docker logs failed") {
            return None;
        }
        let field = format!(" shard={shard} ");
        let (mut staged, mut installed) = (0, 0);
        for line in log.lines() {
            let line = strip_ansi(line);
            if !line.contains(&field) {
                continue;
            }
            if line.contains("snapshot fetched and staged") {
                staged += 1;
            } else if line.contains("raw store replaced by the leader's snapshot") {
                installed += 1;
            }
        }
        Some((staged, installed))
    }

    /// Waits until `node`'s replica of `shard` has applied `target`; returns how long that took.
    fn catch_up(&self, node: u64, shard: u32, target: u64) -> Option<Duration> {
        let started = Instant::now();
        let done = watch(SNAPSHOT_CATCH_UP_LIMIT, Duration::from_millis(200), || {
            self.cluster
                .node(node)
                .status(false)
                .ok()
                .and_then(|s| s.local_replica(shard).and_then(|r| r.applied_index))
                .is_some_and(|applied| applied >= target)
        });
        done.then(|| started.elapsed())
    }

    /// A tag no earlier window's filler assets used.
    fn next_filler_tag(&self) -> u64 {
        self.filler_tags.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Deletes every filler asset the snapshot fault wrote and has not deleted yet, through any
    /// serving node, retrying until `limit`. Returns how many are left (0: none).
    pub fn remove_filler(&self, limit: Duration) -> usize {
        let started = Instant::now();
        loop {
            let left: Vec<String> = self.filler.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
            if left.is_empty() {
                return 0;
            }
            for asset in left {
                for node in self.cluster.nodes().iter().filter(|n| n.is_serving()) {
                    let url = format!("{}/v1/assets/{}", node.base_url(), crate::http::encode_segment(&asset));
                    match self.http.send("DELETE", &url, "application/json", b"") {
                        Ok(_) | Err(crate::http::HttpError::Status { status: 404, .. }) => {
                            self.filler.lock().unwrap_or_else(|e| e.into_inner()).remove(&asset);
                            break;
                        }
                        Err(_) => continue,
                    }
                }
            }
            if started.elapsed() >= limit {
                return self.filler.lock().unwrap_or_else(|e| e.into_inner()).len();
            }
            if !self.filler.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// What the seed decides for one snapshot fault (besides the shard and the victim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnapshotFaultPlan {
    /// Kill the follower (restarted 3 s later) rather than cut it off again for 5 s.
    kill: bool,
    /// Strike the moment the fetch ends, when the install begins (kills only: an install needs
    /// no network, so a cut then would test nothing the fetch does not).
    aim_install: bool,
    /// Otherwise strike once this many chunks arrived (the filler alone makes about 75).
    strike_after_chunks: u64,
    filler_seed: u64,
}

impl SnapshotFaultPlan {
    fn draw(rng: &mut ChaCha8Rng) -> SnapshotFaultPlan {
        let kill = rng.gen_bool(0.5);
        let aim_install = rng.gen_bool(1.0 / 3.0) && kill;
        SnapshotFaultPlan { kill, aim_install, strike_after_chunks: rng.gen_range(1..=40), filler_seed: rng.gen() }
    }
}

/// Filler text per window. The raw store keeps each annotation's bytes and its parsed form, so
/// the shard grows by about twice this (some 75 chunks of 28 KiB), which a fetch at the suite's
/// 1 MiB/s (`snapshot_transfer_bytes_per_s`) takes two seconds to copy.
const FILLER_TEXT_BYTES: usize = 1024 * 1024;
/// Text of one filler annotation (`limits.max_text_bytes` is 8 KiB).
const FILLER_ANNOTATION_TEXT: usize = 7 * 1024;
/// Filler annotations per request (one log entry) until [`FILLER_TEXT_BYTES`] are written; then
/// one short annotation per request, which moves the log on cheaply.
const FILLER_BATCH: usize = 16;
/// Filler assets per window (each annotation on a second of its own of one of them).
const FILLER_ASSETS: usize = 4;
/// Entries the victim may hold beyond the leader's commit index read once the cut is in force.
const SNAPSHOT_LOG_MARGIN: u64 = 32;
/// The longest the victim stays cut off while the leader's log moves past it.
const SNAPSHOT_CUT_LIMIT: Duration = Duration::from_secs(20);
/// The longest the healed victim may take to fetch its first chunk.
const SNAPSHOT_FETCH_START_LIMIT: Duration = Duration::from_secs(15);
/// The longest the nemesis waits for the strike point (a fetch at 1 MiB/s takes a few seconds).
const SNAPSHOT_STRIKE_LIMIT: Duration = Duration::from_secs(30);
/// The longest the nemesis waits for the struck follower to catch up.
const SNAPSHOT_CATCH_UP_LIMIT: Duration = Duration::from_secs(30);
/// The longest the nemesis tries to delete a window's filler.
const FILLER_REMOVAL_LIMIT: Duration = Duration::from_secs(15);

/// The model of the snapshot fault's filler annotations. No checker reads it: they are on
/// assets of their own (`jepsen-filler-*`), carry no label and only lower-case letters in their
/// text, and the fault deletes them before its window ends (the run deletes any left before the
/// final checks count raw annotations).
pub const FILLER_MODEL: &str = "jepsen-snapshot-filler";

/// `count` asset ids of window `tag` that live on `shard` (of `shards`).
fn filler_assets(shard: u32, shards: u32, tag: u64, count: usize) -> Vec<String> {
    (0u64..)
        .map(|k| format!("jepsen-filler-{tag}-{k}"))
        .filter(|asset| rushes_protocol::peer::shard_for_asset(asset, shards.max(1)) == shard)
        .take(count)
        .collect()
}

/// Words of lower-case letters, `bytes` long: no digits, so no set search word (`e3x17`)
/// ever matches them.
fn filler_text(rng: &mut ChaCha8Rng, bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 10);
    while text.len() < bytes {
        if !text.is_empty() {
            text.push(' ');
        }
        for _ in 0..rng.gen_range(3..10) {
            text.push(char::from(b'a' + rng.gen_range(0..26u8)));
        }
    }
    text.truncate(bytes);
    text.trim_end().to_string()
}

/// One filler annotation: on second `second` of `asset`.
fn filler_annotation(asset: &str, second: u64, text: String) -> serde_json::Value {
    serde_json::json!({
        "id": format!("f{second}"), "asset_id": asset, "model": FILLER_MODEL, "model_version": "1", "track": "filler",
        "start_ms": second * 1_000, "end_ms": second * 1_000 + 1_000, "text": text,
    })
}

/// The filler of one window, as it is written.
struct Filler {
    assets: Vec<String>,
    rng: ChaCha8Rng,
    next: u64,
    /// Requests made.
    requests: u64,
    /// Acknowledged annotations, and their text.
    annotations: u64,
    text_bytes: usize,
    /// Requests not acknowledged, and the last error.
    failures: u64,
    last_error: Option<String>,
}

impl Filler {
    fn new(assets: Vec<String>, seed: u64) -> Filler {
        Filler {
            assets,
            rng: ChaCha8Rng::seed_from_u64(seed),
            next: 0,
            requests: 0,
            annotations: 0,
            text_bytes: 0,
            failures: 0,
            last_error: None,
        }
    }

    /// One request: a batch of big annotations, or one short one; through the first of `urls`
    /// (the leader), else the next. Annotation ids are idempotent, so a repeat is harmless.
    fn write(&mut self, http: &crate::http::Http, urls: &[String], big: bool) {
        let (count, text_bytes) = if big { (FILLER_BATCH, FILLER_ANNOTATION_TEXT) } else { (1, 64) };
        let mut lines = Vec::with_capacity(count);
        for _ in 0..count {
            let asset = &self.assets[(self.next % self.assets.len() as u64) as usize];
            let second = self.next / self.assets.len() as u64;
            self.next += 1;
            lines.push(filler_annotation(asset, second, filler_text(&mut self.rng, text_bytes)).to_string());
        }
        let body = lines.join("\n");
        self.requests += 1;
        for url in urls {
            match http.send("POST", &format!("{url}/v1/annotations"), "application/x-ndjson", body.as_bytes()) {
                Ok(_) => {
                    self.annotations += count as u64;
                    self.text_bytes += count * text_bytes;
                    return;
                }
                Err(e) => {
                    self.failures += 1;
                    self.last_error = Some(e.to_string());
                }
            }
        }
        // Nobody took it: do not spin.
        std::thread::sleep(Duration::from_millis(100));
    }

    fn trouble(&self) -> String {
        match &self.last_error {
            Some(error) => format!(" ({} requests failed, the last with: {error:.160})", self.failures),
            None => String::new(),
        }
    }
}

/// A replica's snapshot counters and indexes, from its node's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SnapshotCounters {
    chunks: u64,
    bytes: u64,
    fetch_ms: u64,
    installed: u64,
    applied: u64,
    indexed: u64,
}

impl SnapshotCounters {
    fn of(replica: &crate::status::ReplicaStatus) -> SnapshotCounters {
        SnapshotCounters {
            chunks: replica.snapshot_chunks_fetched.unwrap_or(0),
            bytes: replica.snapshot_bytes_fetched.unwrap_or(0),
            fetch_ms: replica.snapshot_fetch_ms.unwrap_or(0),
            installed: replica.snapshots_installed.unwrap_or(0),
            applied: replica.applied_index.unwrap_or(0),
            indexed: replica.indexed_index.unwrap_or(0),
        }
    }

    fn describe_install(&self) -> String {
        format!("applied {}, indexed {}", self.applied, self.indexed)
    }
}

/// Where a follower is in catching up by snapshot, from its counters before and now (one
/// process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapshotPhase {
    /// No chunk yet.
    NotStarted,
    /// Chunks arrive; the fetch has not ended.
    Fetching,
    /// The fetch ended (`snapshot_fetch_ms` moved: staged, or failed and to be retried), no
    /// install counted yet: the install runs now.
    FetchEnded,
    /// Installed (the raw store replaced), buckets and index still being re-derived.
    Rederiving,
    /// Installed and re-derived.
    Done,
}

impl SnapshotPhase {
    fn of(base: &SnapshotCounters, now: &SnapshotCounters) -> SnapshotPhase {
        if now.installed > base.installed {
            if now.indexed < now.applied {
                SnapshotPhase::Rederiving
            } else {
                SnapshotPhase::Done
            }
        } else if now.fetch_ms > base.fetch_ms {
            SnapshotPhase::FetchEnded
        } else if now.chunks > base.chunks {
            SnapshotPhase::Fetching
        } else {
            SnapshotPhase::NotStarted
        }
    }

    /// Where a strike at `now` landed, and whether that was during the fetch or the install.
    /// A cut counts only mid-fetch: installing needs no network.
    fn describe(self, base: &SnapshotCounters, now: &SnapshotCounters, kill: bool) -> (String, bool) {
        let fetched = format!("{} chunks ({} KiB)", now.chunks - base.chunks, (now.bytes - base.bytes) / 1024);
        match self {
            SnapshotPhase::NotStarted => ("before any chunk arrived".to_string(), false),
            SnapshotPhase::Fetching => (format!("mid-fetch: {fetched} fetched, the fetch not finished"), true),
            _ if !kill => (format!("too late for a cut: the fetch had ended ({fetched})"), false),
            SnapshotPhase::FetchEnded => (format!("mid-install: the fetch had ended ({fetched}), the staged copy not installed yet"), true),
            SnapshotPhase::Rederiving => (
                format!(
                    "at the end of the install: the raw store was just replaced ({fetched}), its buckets and index being \
                     re-derived (last reading: {})",
                    now.describe_install()
                ),
                true,
            ),
            SnapshotPhase::Done => (format!("too late: the snapshot was fetched ({fetched}) and installed"), false),
        }
    }
}

/// `line` without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Calls `check` every `interval` until it holds or `limit` passed; whether it held.
fn watch(limit: Duration, interval: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

fn caught_up_note(caught_up: Option<Duration>) -> String {
    match caught_up {
        Some(took) => format!("; back in step {:.1} s later", took.as_secs_f64()),
        None => format!("; not back in step {} s later (the final checks tell)", SNAPSHOT_CATCH_UP_LIMIT.as_secs()),
    }
}

fn removal_note(left: usize) -> String {
    if left == 0 {
        "; filler deleted".to_string()
    } else {
        format!("; {left} filler assets not deleted yet (the run deletes them before its final checks)")
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
    fn filler_lives_on_the_struck_shard_and_is_valid_wordy_ingest() {
        for shard in 0..4 {
            let assets = filler_assets(shard, 4, 7, FILLER_ASSETS);
            assert_eq!(assets.len(), FILLER_ASSETS);
            assert!(assets.iter().all(|a| rushes_protocol::peer::shard_for_asset(a, 4) == shard), "{assets:?}");
            assert!(assets.iter().all(|a| a.starts_with("jepsen-filler-7-")));
        }
        assert_ne!(filler_assets(0, 4, 1, 2), filler_assets(0, 4, 2, 2), "each window has assets of its own");
        let limits = rushes_protocol::validate::IngestLimits::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for bytes in [64, FILLER_ANNOTATION_TEXT] {
            let text = filler_text(&mut rng, bytes);
            assert!(text.len() <= bytes && text.len() + 10 >= bytes, "{} bytes for {bytes}", text.len());
            assert!(text.chars().all(|c| c.is_ascii_lowercase() || c == ' '), "only letters: no set search word (e3x17) matches");
            let line = filler_annotation("jepsen-filler-0-3", 41, text).to_string();
            let parsed = rushes_protocol::validate::parse_annotation(&line, &limits).unwrap_or_else(|e| panic!("refused: {e:?}"));
            assert_eq!((parsed.model.as_str(), parsed.start_ms, parsed.label.as_deref()), (FILLER_MODEL, 41_000, None));
        }
        assert_eq!(filler_text(&mut ChaCha8Rng::seed_from_u64(9), 500), filler_text(&mut ChaCha8Rng::seed_from_u64(9), 500));
    }

    #[test]
    fn the_seed_decides_the_snapshot_strike_and_only_kills_aim_at_the_install() {
        let plans: Vec<SnapshotFaultPlan> = (0..200).map(|seed| SnapshotFaultPlan::draw(&mut ChaCha8Rng::seed_from_u64(seed))).collect();
        assert_eq!(plans[5], SnapshotFaultPlan::draw(&mut ChaCha8Rng::seed_from_u64(5)));
        assert!(plans.iter().all(|p| p.kill || !p.aim_install));
        assert!(plans.iter().any(|p| p.aim_install) && plans.iter().any(|p| p.kill && !p.aim_install) && plans.iter().any(|p| !p.kill));
        assert!(plans.iter().all(|p| (1..=40).contains(&p.strike_after_chunks)));
    }

    #[test]
    fn log_lines_lose_their_colours() {
        let line = "\u{1b}[2m2026-12-06T16:07:03Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m snapshot fetched and staged \u{1b}[3mshard\u{1b}[0m\u{1b}[2m=\u{1b}[0m1 from=1";
        assert_eq!(strip_ansi(line), "2026-12-06T16:07:03Z  INFO snapshot fetched and staged shard=1 from=1");
    }

    #[test]
    fn snapshot_counters_tell_fetch_from_install() {
        let base = SnapshotCounters { chunks: 10, bytes: 160 << 10, fetch_ms: 700, installed: 1, applied: 500, indexed: 500 };
        let at = |chunks, fetch_ms, installed, indexed| SnapshotCounters {
            chunks,
            bytes: (chunks * 16) << 10,
            fetch_ms,
            installed,
            applied: 900,
            indexed,
        };
        assert_eq!(SnapshotPhase::of(&base, &base), SnapshotPhase::NotStarted);
        let fetching = at(37, 700, 1, 500);
        assert_eq!(SnapshotPhase::of(&base, &fetching), SnapshotPhase::Fetching);
        for kill in [true, false] {
            let (text, struck) = SnapshotPhase::of(&base, &fetching).describe(&base, &fetching, kill);
            assert!(struck && text.contains("mid-fetch: 27 chunks (432 KiB)"), "{text}");
        }
        let ended = at(210, 2_900, 1, 500);
        assert_eq!(SnapshotPhase::of(&base, &ended), SnapshotPhase::FetchEnded);
        assert!(SnapshotPhase::FetchEnded.describe(&base, &ended, true).1, "a kill then lands in the install");
        assert!(!SnapshotPhase::FetchEnded.describe(&base, &ended, false).1, "a cut then tests nothing: installing needs no network");
        assert_eq!(SnapshotPhase::of(&base, &at(210, 2_900, 2, 700)), SnapshotPhase::Rederiving);
        let done = at(210, 2_900, 2, 900);
        let (text, struck) = SnapshotPhase::of(&base, &done).describe(&base, &done, true);
        assert!(!struck && text.contains("too late"), "{text}");
    }

    #[test]
    fn a_cut_is_symmetric() {
        let drops = cut(&[1], &[2, 3]);
        assert_eq!(drops[&1], [2, 3].into_iter().collect());
        assert_eq!(drops[&2], [1].into_iter().collect());
        assert_eq!(drops[&3], [1].into_iter().collect());
    }
}
