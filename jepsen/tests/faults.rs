//! Faults on a three-node cluster (4 shards, replication factor 3) under concurrent writes:
//! SIGKILL of a shard leader, SIGSTOP of a node past the election timeout, a partitioned
//! minority; plus a smoke test without faults. After each: converge, then check that every
//! acknowledged annotation is stored, fused and searchable on every node and that replicas agree.
//!
//! Build the binary first: `cargo build --release -p rushes-node`, then
//! `cargo test --release -p rushes-jepsen`. `JEPSEN_SEED` replays a run, `JEPSEN_DIR` keeps the
//! cluster directories (see the crate documentation).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rushes_jepsen::{
    check_cluster, hold_fault, poll_until, CheckOptions, ClusterOptions, LocalCluster, Progress, Sample, Workload, WorkloadOptions,
};

const NODES: usize = 3;
const SHARDS: u32 = 4;
const REPLICATION_FACTOR: usize = 3;
/// Generated footage: whole episodes, about 6,500 annotations.
const HOURS: f64 = 2.0;
const BATCH_LINES: usize = 100;
const DEFAULT_SEED: u64 = 20261201;

/// The tests of this binary share two cores: one cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    KillLeader,
    Pause,
    Partition,
    /// Every node in turn is killed and started again while writes go on, as a rolling
    /// upgrade restarts them (a longer load, so the last restart still meets writes).
    RollingRestart,
    /// The cluster starts on the previous release (`JEPSEN_PREVIOUS_BIN`, built by
    /// `.ci/build-previous`), and every node in turn is restarted on this build under writes.
    RollingUpgrade,
}

/// The previous release's `rushes` binary, for the rolling upgrade.
fn previous_binary() -> PathBuf {
    let path = std::env::var_os("JEPSEN_PREVIOUS_BIN").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "JEPSEN_PREVIOUS_BIN is not set: the rolling upgrade starts from the previous release's binary. \
             Run the tests with .ci/test (it builds that binary with .ci/build-previous and sets the variable)"
        )
    });
    assert!(path.is_file(), "JEPSEN_PREVIOUS_BIN={} is not a file", path.display());
    path
}

fn seed() -> u64 {
    match std::env::var("JEPSEN_SEED") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("JEPSEN_SEED={text:?} is not a u64")),
        Err(_) => DEFAULT_SEED,
    }
}

/// A fresh directory for one test: under `$JEPSEN_DIR` (kept), else a temporary one.
fn test_dir(name: &str) -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("JEPSEN_DIR") {
        Some(base) => {
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
            let dir = PathBuf::from(base).join(format!("{name}-{stamp}"));
            std::fs::create_dir_all(&dir).expect("create the test directory");
            eprintln!("[{name}] keeping the cluster directory {}", dir.display());
            (None, dir)
        }
        None => {
            let tmp = tempfile::Builder::new().prefix(&format!("jepsen-{name}-")).tempdir().expect("tempdir");
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    }
}

/// The test's view of the writers while a fault is injected.
struct Writers<'a> {
    workload: &'a Workload,
    progress: Arc<Progress>,
    cluster: &'a LocalCluster,
    name: &'a str,
}

impl Writers<'_> {
    fn check_failures(&self) {
        let failures = self.progress.failures();
        if !failures.is_empty() {
            panic!("[{}] writers failed:\n  {}\n{}", self.name, failures.join("\n  "), self.cluster.diagnostics());
        }
    }

    /// Waits until `fraction` of the batches are acknowledged; the writers must still have work
    /// left then, or the fault that follows would meet no load and prove nothing.
    fn wait_for_fraction(&self, fraction: f64, timeout: Duration) {
        let reached = poll_until(timeout, || {
            self.progress.fraction() >= fraction || self.workload.is_finished() || !self.progress.failures().is_empty()
        });
        self.check_failures();
        assert!(
            reached,
            "[{}] writers did not reach {:.0}% within {timeout:?}\n{}",
            self.name,
            fraction * 100.0,
            self.cluster.diagnostics()
        );
        assert!(
            !self.workload.is_finished() && self.progress.fraction() < 1.0,
            "[{}] the writers finished before the fault: it would meet no load (a larger sample is needed)",
            self.name
        );
    }

    /// Liveness: at least one more batch is acknowledged within `timeout`, while the fault
    /// holds. Writers that ran out of batches before the fault fail this: the fault met no load.
    fn expect_progress(&self, what: &str, timeout: Duration) {
        let before = self.progress.acknowledged_batches();
        let started = Instant::now();
        assert!(
            before < self.progress.total_batches(),
            "[{}] every batch was acknowledged before the fault ({what}): it met no load",
            self.name
        );
        let progressed = poll_until(timeout, || self.progress.acknowledged_batches() > before || !self.progress.failures().is_empty());
        self.check_failures();
        assert!(progressed, "[{}] no write acknowledged within {timeout:?}: {what}\n{}", self.name, self.cluster.diagnostics());
        eprintln!("[{}] {what}: next acknowledgement after {:.1?}", self.name, started.elapsed());
    }
}

// Each fault below stays in place for its seeded duration, and in any case until a write has
// been acknowledged despite it (a majority is up, so the cluster must stay available): the
// liveness check runs while the fault holds.

/// A shard that holds data (random among them, or any shard if none does yet) and its leader.
fn busy_shard_and_leader(cluster: &LocalCluster, rng: &mut ChaCha8Rng) -> (u32, u64) {
    let busy: Vec<u32> = cluster.shards_with_data().into_iter().collect();
    let shard = if busy.is_empty() { rng.gen_range(0..SHARDS) } else { busy[rng.gen_range(0..busy.len())] };
    (shard, cluster.wait_for_leader(shard, Duration::from_secs(30)))
}

fn run(name: &str, fault: Fault) {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let seed = seed();
    eprintln!("[{name}] jepsen seed {seed} (set JEPSEN_SEED={seed} to replay)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let (_tmp, dir) = test_dir(name);

    let rolling = matches!(fault, Fault::RollingRestart | Fault::RollingUpgrade);
    let hours = if rolling { HOURS * 4.0 } else { HOURS };
    let sample = Sample::generate(&dir, hours, rng.gen_range(1..1_000_000));
    let batches = Arc::new(sample.batches(BATCH_LINES));
    eprintln!("[{name}] sample: {} assets, {} annotations, {} batches", sample.assets.len(), sample.annotations.len(), batches.len());

    let mut options = ClusterOptions::new(NODES, SHARDS, REPLICATION_FACTOR);
    if matches!(fault, Fault::RollingUpgrade) {
        options.binary = Some(previous_binary());
    }
    let cluster = LocalCluster::start_with(&dir.join("cluster"), options);
    let leaders = cluster.wait_for_leaders(Duration::from_secs(60));
    eprintln!("[{name}] cluster up after {:.1?}; leaders per shard {leaders:?}", started.elapsed());
    sample.put_assets(&cluster.base_urls(), Duration::from_secs(60));

    let workload = Workload::start(cluster.base_urls(), batches.clone(), WorkloadOptions::default());
    {
        let writers = Writers { workload: &workload, progress: workload.progress(), cluster: &cluster, name };
        match fault {
            Fault::None => {}
            Fault::KillLeader => {
                writers.wait_for_fraction(rng.gen_range(0.15..0.35), Duration::from_secs(60));
                let leader = cluster.wait_for_leader(0, Duration::from_secs(30));
                let down_for = Duration::from_millis(rng.gen_range(2_000..4_000));
                eprintln!("[{name}] SIGKILL node {leader} (leader of shard 0) for {down_for:?}");
                let killed = Instant::now();
                cluster.kill(leader);
                let new_leader = cluster.wait_for_new_leader(0, leader, Duration::from_secs(30));
                eprintln!("[{name}] shard 0 elected node {new_leader} after {:.1?}", killed.elapsed());
                writers.expect_progress(&format!("writes while node {leader} is down"), Duration::from_secs(30));
                hold_fault(down_for.saturating_sub(killed.elapsed()));
                cluster.restart(leader);
                eprintln!("[{name}] node {leader} restarted; shard 0 leader now {:?}", cluster.leader_of(0));
            }
            Fault::Pause => {
                writers.wait_for_fraction(rng.gen_range(0.15..0.35), Duration::from_secs(60));
                let (shard, node) = busy_shard_and_leader(&cluster, &mut rng);
                let paused_for = Duration::from_millis(rng.gen_range(3_500..5_000));
                eprintln!("[{name}] SIGSTOP node {node} (leader of shard {shard}) for {paused_for:?}");
                let paused = Instant::now();
                cluster.pause(node);
                let new_leader = cluster.wait_for_new_leader(shard, node, Duration::from_secs(30));
                eprintln!("[{name}] shard {shard} elected node {new_leader} after {:.1?}", paused.elapsed());
                writers.expect_progress(&format!("writes while node {node} is paused"), Duration::from_secs(30));
                hold_fault(paused_for.saturating_sub(paused.elapsed()));
                cluster.resume(node);
                eprintln!("[{name}] node {node} resumed after {:.1?}", paused.elapsed());
            }
            Fault::Partition => {
                writers.wait_for_fraction(rng.gen_range(0.15..0.35), Duration::from_secs(60));
                let (shard, node) = busy_shard_and_leader(&cluster, &mut rng);
                let cut_for = Duration::from_millis(rng.gen_range(4_000..6_000));
                eprintln!("[{name}] partition node {node} (leader of shard {shard}) from the others for {cut_for:?}");
                let cut = Instant::now();
                cluster.partition(&[node]);
                let new_leader = cluster.wait_for_new_leader(shard, node, Duration::from_secs(30));
                eprintln!("[{name}] shard {shard} elected node {new_leader} after {:.1?}", cut.elapsed());
                writers.expect_progress(&format!("writes while node {node} is cut off"), Duration::from_secs(30));
                hold_fault(cut_for.saturating_sub(cut.elapsed()));
                cluster.heal();
                eprintln!("[{name}] healed after {:.1?}", cut.elapsed());
            }
            Fault::RollingRestart | Fault::RollingUpgrade => {
                writers.wait_for_fraction(rng.gen_range(0.05..0.15), Duration::from_secs(60));
                for node in cluster.node_ids() {
                    if matches!(fault, Fault::RollingUpgrade) {
                        cluster.node(node).set_binary(rushes_jepsen::rushes_binary());
                    }
                    assert!(
                        !workload.is_finished(),
                        "[{name}] the writers finished before node {node}'s restart: the restarts would meet no load"
                    );
                    let restarted = Instant::now();
                    cluster.kill(node);
                    writers.expect_progress(&format!("writes while node {node} is down"), Duration::from_secs(30));
                    cluster.restart(node);
                    // As an operator does between nodes: every shard has a leader again.
                    cluster.wait_for_leaders(Duration::from_secs(60));
                    eprintln!("[{name}] node {node} restarted in {:.1?}", restarted.elapsed());
                }
                if matches!(fault, Fault::RollingUpgrade) {
                    // The upgraded cluster bootstrapped its replicated map from the config,
                    // with the placement the previous release computed.
                    let http = rushes_jepsen::Http::new(Duration::from_secs(10));
                    for node in cluster.nodes() {
                        let map = poll_until(Duration::from_secs(60), || http.get_json(&node.url("/v1/admin/cluster/map")).is_ok());
                        assert!(map, "[{name}] node {} has no cluster map after the upgrade\n{}", node.id, cluster.diagnostics());
                        let map = http.get_json(&node.url("/v1/admin/cluster/map")).expect("map");
                        assert_eq!(map["members"].as_object().map(|m| m.len()), Some(NODES), "[{name}] {map}");
                        assert_eq!(map["shard_count"], SHARDS, "[{name}] {map}");
                    }
                }
            }
        }
        if !matches!(fault, Fault::None) {
            writers.expect_progress("writes after the fault", Duration::from_secs(60));
        }
    }
    let finished = poll_until(Duration::from_secs(180), || workload.is_finished());
    assert!(finished, "[{name}] writers still running after 180 s\n{}", cluster.diagnostics());
    let progress = workload.join();
    let failures = progress.failures();
    if !failures.is_empty() {
        panic!("[{name}] writers failed:\n  {}\n{}", failures.join("\n  "), cluster.diagnostics());
    }
    assert_eq!(progress.acknowledged_batches(), batches.len(), "[{name}] every batch is acknowledged in the end");
    eprintln!(
        "[{name}] writes done after {:.1?}: {} batches acknowledged, {} retries, per node {:?}",
        started.elapsed(),
        progress.acknowledged_batches(),
        progress.retries.load(std::sync::atomic::Ordering::SeqCst),
        progress.served()
    );

    let applied = cluster.wait_converged(Duration::from_secs(120));
    eprintln!("[{name}] converged after {:.1?}; applied index per shard {applied:?}", started.elapsed());
    let report = check_cluster(&cluster, &sample, &progress.acknowledged(), &CheckOptions::default());
    eprintln!("[{name}] {}", report.summary());
    report.assert_ok();
    eprintln!("[{name}] passed in {:.1?}", started.elapsed());
}

#[test]
fn no_faults_smoke() {
    run("no-faults", Fault::None);
}

#[test]
fn sigkill_and_restart_the_leader_of_shard_0() {
    run("kill-leader", Fault::KillLeader);
}

#[test]
fn sigstop_a_leader_past_the_election_timeout() {
    run("pause", Fault::Pause);
}

#[test]
fn partition_a_minority_then_heal() {
    run("partition", Fault::Partition);
}

#[test]
fn a_rolling_restart_of_every_node_under_load_loses_nothing() {
    run("rolling-restart", Fault::RollingRestart);
}

#[test]
fn rolling_upgrade_from_the_previous_release_under_writes() {
    run("rolling-upgrade", Fault::RollingUpgrade);
}
