//! Membership changes on a running cluster under concurrent ingest, through the operator's
//! commands (`rushes cluster add-node | move-replica | remove-node | replace-node`):
//!
//! - a node added to a 3-node cluster receives a moved replica (the shard's leader's, so
//!   leadership is handed over first);
//! - a node is drained and removed;
//! - a killed node is replaced by an empty one.
//!
//! In each, a writer keeps posting cross-shard batches through the nodes before, during and
//! after the change (the test checks writes were acknowledged while moves were in flight and
//! after they finished); at the end nothing acknowledged is missing, every replica of a shard
//! has the same raw digest, every shard has exactly its replication factor of replicas on the
//! nodes the map names, and every node answers the same searches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rushes_jepsen::{poll_until, ClusterOptions, Http, LocalCluster};
use serde_json::{json, Value};

const SHARDS: u32 = 4;
const CAST: &[&str] = &["Joey", "Monica", "Rachel", "Ross", "Chandler", "Phoebe"];

fn annotation(asset: &str, id: &str, start_ms: u64, label: &str) -> String {
    json!({
        "id": id, "asset_id": asset, "model": "faces", "model_version": "1", "track": "character",
        "start_ms": start_ms, "end_ms": start_ms + 3000, "label": label, "confidence": 0.9
    })
    .to_string()
}

/// Episodes every search below finds, loaded before any change.
fn preload(cluster: &LocalCluster, http: &Http) {
    for episode in 0..16u64 {
        let lines: Vec<String> = (0..30u64)
            .map(|i| annotation(&format!("ep-{episode}"), &format!("f-{i}"), i * 5000, CAST[((episode + i) % CAST.len() as u64) as usize]))
            .collect();
        let url = cluster.node(episode % 3 + 1).url("/v1/annotations");
        assert!(
            poll_until(Duration::from_secs(30), || http.send("POST", &url, "application/x-ndjson", lines.join("\n").as_bytes()).is_ok()),
            "episode {episode} not acknowledged\n{}",
            cluster.diagnostics()
        );
    }
}

/// Posts batches of four assets (so most batches span shards), one annotation each, through
/// the nodes in `targets` in turn; every batch is retried (on the next node) until
/// acknowledged, and recorded with the time of its acknowledgement.
struct Writer {
    acked: Arc<Mutex<Vec<(String, String, Instant)>>>,
    stop: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<String>>>,
    failures: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(targets: Vec<String>) -> Writer {
        let acked: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(targets));
        let failures = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (acked, stop, targets, failures) = (acked.clone(), stop.clone(), targets.clone(), failures.clone());
            std::thread::spawn(move || {
                let http = Http::new(Duration::from_secs(15));
                let mut batch = 0u64;
                let mut turn = 0usize;
                while !stop.load(Ordering::Acquire) {
                    batch += 1;
                    let items: Vec<(String, String)> =
                        (0..4).map(|k| (format!("live-{}", (batch * 4 + k) % 64), format!("w-{batch}-{k}"))).collect();
                    let body: Vec<String> = items.iter().map(|(asset, id)| annotation(asset, id, (batch % 500) * 1000, "Writer")).collect();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let url = {
                            let targets = targets.lock().expect("targets");
                            turn += 1;
                            format!("{}/v1/annotations", targets[turn % targets.len()])
                        };
                        if http.send("POST", &url, "application/x-ndjson", body.join("\n").as_bytes()).is_ok() {
                            let now = Instant::now();
                            acked.lock().expect("acked").extend(items.iter().map(|(a, i)| (a.clone(), i.clone(), now)));
                            break;
                        }
                        failures.fetch_add(1, Ordering::AcqRel);
                        if Instant::now() > deadline {
                            panic!("batch {batch} was not acknowledged by any node within 60 s");
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        };
        Writer { acked, stop, targets, failures, thread: Some(thread) }
    }

    fn acked_between(&self, from: Instant, to: Instant) -> usize {
        self.acked.lock().expect("acked").iter().filter(|(_, _, at)| *at > from && *at < to).count()
    }

    fn wait_for_acks_after(&self, at: Instant, what: &str) {
        assert!(
            poll_until(Duration::from_secs(60), || self.acked.lock().expect("acked").iter().any(|(_, _, t)| *t > at)),
            "no write was acknowledged after {what}"
        );
    }

    fn set_targets(&self, targets: Vec<String>) {
        *self.targets.lock().expect("targets") = targets;
    }

    fn finish(mut self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the writer panicked");
        }
        eprintln!(
            "writer: {} annotations acknowledged, {} attempts refused or failed",
            self.acked.lock().expect("acked").len(),
            self.failures.load(Ordering::Acquire)
        );
        self.acked.lock().expect("acked").iter().map(|(a, i, _)| (a.clone(), i.clone())).collect()
    }
}

/// A cluster of `nodes` (4 shards, RF 3, `raft_toml` appended to every config), loaded with
/// the episodes every search finds, and a writer already acknowledged through nodes
/// 1..=`writer_nodes`.
fn start_loaded(dir: &std::path::Path, nodes: usize, raft_toml: Option<&str>, writer_nodes: u64) -> (LocalCluster, Http, Writer) {
    let mut options = ClusterOptions::new(nodes, SHARDS, 3);
    options.extra_toml = raft_toml.unwrap_or_default().to_string();
    let cluster = LocalCluster::start_with(dir, options);
    cluster.wait_for_leaders(Duration::from_secs(60));
    let http = Http::new(Duration::from_secs(30));
    preload(&cluster, &http);
    let writer = Writer::start((1..=writer_nodes).map(|id| cluster.node(id).base_url()).collect());
    writer.wait_for_acks_after(Instant::now(), "the writer started");
    (cluster, http, writer)
}

/// `rushes cluster add-node` for the running joining node `new`, through node `via`; it
/// returns once the node follows the map.
fn add_node(cluster: &LocalCluster, via: u64, new: u64) {
    let (raft_addr, http_addr) = (cluster.node(new).raft_addr.clone(), cluster.node(new).http_addr.clone());
    let printed =
        cluster.cli(via, &["cluster", "add-node", "--id", &new.to_string(), "--raft-addr", &raft_addr, "--http-addr", &http_addr]);
    assert!(printed.contains(&format!("node {new} is up")), "{printed}");
}

fn search(http: &Http, base: &str, label: &str) -> Value {
    let request = json!({ "clauses": [{"type": "label", "track": "character", "label": label}], "limit": 100 });
    let reply = http.post_json(&format!("{base}/v1/search"), &request).unwrap_or_else(|e| panic!("search {label} on {base}: {e}"));
    assert_eq!(reply["shards"]["failed"], 0, "{reply}");
    reply["assets"].clone()
}

/// Everything a run must end with (see the module docs).
fn check_end_state(cluster: &LocalCluster, http: &Http, acked: &[(String, String)], running: &[u64]) {
    cluster.wait_converged(Duration::from_secs(120));
    // Every replica of a shard holds the same raw store.
    let digests = cluster.digests();
    let mut per_shard: BTreeMap<u32, BTreeSet<&String>> = BTreeMap::new();
    for ((shard, _), digest) in &digests {
        per_shard.entry(*shard).or_default().insert(digest);
    }
    for (shard, distinct) in &per_shard {
        assert_eq!(distinct.len(), 1, "shard {shard}: replicas differ: {digests:?}\n{}", cluster.diagnostics());
    }
    // The replicas are where the cluster map says.
    let map = http.get_json(&cluster.node(running[0]).url("/v1/admin/cluster/map")).expect("map");
    for (shard, placement) in map["shards"].as_array().expect("shards").iter().enumerate() {
        let mut voters: Vec<u64> = placement["voters"].as_array().expect("voters").iter().filter_map(Value::as_u64).collect();
        voters.sort();
        let mut holders: Vec<u64> = digests.keys().filter(|(s, _)| *s == shard as u32).map(|(_, node)| *node).collect();
        holders.sort();
        assert_eq!(voters, holders, "shard {shard}: the map's voters and the nodes holding replicas differ\n{map}");
        assert!(placement["moving"].is_null(), "shard {shard} still moving: {map}");
    }
    // Nothing acknowledged is missing.
    let exported: BTreeSet<(String, String)> = http
        .get(&cluster.node(running[0]).url("/v1/export"))
        .expect("export")
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|v| Some((v["asset_id"].as_str()?.to_string(), v["id"].as_str()?.to_string())))
        .collect();
    let missing: Vec<&(String, String)> = acked.iter().filter(|item| !exported.contains(item)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged annotations are missing: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    // Every node answers every search alike.
    for label in CAST.iter().chain(["Writer"].iter()) {
        let expected = search(http, &cluster.node(running[0]).base_url(), label);
        assert!(expected.as_array().is_some_and(|a| !a.is_empty()), "{label}: no results");
        for &id in &running[1..] {
            let base = cluster.node(id).base_url();
            assert!(
                poll_until(Duration::from_secs(30), || search(http, &base, label) == expected),
                "{label}: node {id} answers differently from node {}",
                running[0]
            );
        }
    }
}

fn local_shards(http: &Http, cluster: &LocalCluster, id: u64) -> Vec<u64> {
    let status = http.get_json(&cluster.node(id).url("/v1/cluster")).expect("status");
    let mut shards = Vec::new();
    for shard in status["shards"].as_array().into_iter().flatten() {
        if shard["replicas"].as_array().into_iter().flatten().any(|r| r["local"].as_bool() == Some(true)) {
            shards.push(shard["shard"].as_u64().unwrap_or(u64::MAX));
        }
    }
    shards
}

/// Logs compact after a few writes, so a new replica must catch up by snapshot (fetched in
/// 1 KiB chunks, throttled to 256 KiB/s).
const COMPACTING_RAFT_TOML: &str = "[raft]\nlog_retain_entries = 10\nsnapshot_log_entries = 20\ncompaction_interval_ms = 100\n\
                                    snapshot_chunk_bytes = 1024\nsnapshot_transfer_bytes_per_s = 262144\n";

#[test]
fn a_node_added_under_ingest_takes_over_a_leaders_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, http, writer) = start_loaded(dir.path(), 3, Some(COMPACTING_RAFT_TOML), 3);

    // The new replica must then catch up by snapshot: wait until shard 0's log is compacted on
    // every replica (vector files are saved, and the log compacted past them, every 30 s).
    let compacted = poll_until(Duration::from_secs(90), || {
        (1..=3).all(|id| {
            cluster
                .node(id)
                .status(false)
                .ok()
                .is_some_and(|status| status.local_replicas().any(|(shard, r)| shard == 0 && r.log_first_index.unwrap_or(0) > 1))
        })
    });
    assert!(compacted, "shard 0's log was not compacted\n{}", cluster.diagnostics());
    let new = cluster.start_joining_node();
    assert!(local_shards(&http, &cluster, new).is_empty(), "a joining node holds nothing before it is added");
    add_node(&cluster, 2, new);

    // Move shard 0's replica off its leader, while the writer goes on.
    let leader = cluster.wait_for_leader(0, Duration::from_secs(30));
    let started = Instant::now();
    let printed = cluster.cli(3, &["cluster", "move-replica", "--shard", "0", "--from", &leader.to_string(), "--to", &new.to_string()]);
    let finished = Instant::now();
    eprintln!("{printed}");
    assert!(printed.contains("done in"), "{printed}");
    writer.wait_for_acks_after(finished, "the move");
    assert!(writer.acked_between(started, finished) > 0, "no write was acknowledged while the replica moved");
    let acked = writer.finish();

    assert_eq!(local_shards(&http, &cluster, new), vec![0], "the new node holds exactly the moved replica");
    let status = cluster.node(new).status(false).expect("status of the new node");
    let installed = status.local_replicas().find(|(shard, _)| *shard == 0).and_then(|(_, r)| r.snapshots_installed).unwrap_or(0);
    assert!(installed >= 1, "the new replica caught up without a snapshot although the logs were compacted\n{}", cluster.diagnostics());
    assert!(!local_shards(&http, &cluster, leader).contains(&0), "node {leader} still holds shard 0");
    check_end_state(&cluster, &http, &acked, &[1, 2, 3, new]);
}

#[test]
fn a_drained_node_leaves_the_cluster_under_ingest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, http, writer) = start_loaded(dir.path(), 4, None, 3);
    assert!(!local_shards(&http, &cluster, 4).is_empty(), "node 4 starts with replicas");

    let started = Instant::now();
    let printed = cluster.cli(1, &["cluster", "remove-node", "4"]);
    let finished = Instant::now();
    eprintln!("{printed}");
    assert!(printed.contains("no longer a member"), "{printed}");
    writer.wait_for_acks_after(finished, "the removal");
    assert!(writer.acked_between(started, finished) > 0, "no write was acknowledged while node 4 drained");
    let acked = writer.finish();

    assert!(local_shards(&http, &cluster, 4).is_empty(), "node 4 still holds replicas");
    // The CLI returns once the metadata leader applied the removal; node 1 may be a follower
    // whose copy of the map follows within a heartbeat or two.
    let map = || http.get_json(&cluster.node(1).url("/v1/admin/cluster/map")).expect("map");
    let forgotten =
        |map: &Value| map["members"].get("4").is_none() && map["meta"]["voters"].as_array().is_some_and(|v| !v.contains(&json!(4)));
    assert!(poll_until(Duration::from_secs(30), || forgotten(&map())), "node 4 is still a member or a metadata voter: {}", map());
    cluster.kill(4);
    check_end_state(&cluster, &http, &acked, &[1, 2, 3]);
}

#[test]
fn a_killed_node_is_replaced_by_an_empty_one_under_ingest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, http, writer) = start_loaded(dir.path(), 3, None, 2);

    cluster.kill(3);
    let killed = Instant::now();
    writer.wait_for_acks_after(killed, "node 3 was killed");
    let new = cluster.start_joining_node();
    let (raft_addr, http_addr) = (cluster.node(new).raft_addr.clone(), cluster.node(new).http_addr.clone());
    let started = Instant::now();
    let printed =
        cluster.cli(1, &["cluster", "replace-node", "3", "--with", &new.to_string(), "--raft-addr", &raft_addr, "--http-addr", &http_addr]);
    let finished = Instant::now();
    eprintln!("{printed}");
    assert!(printed.contains("no longer a member"), "{printed}");
    writer.set_targets(vec![cluster.node(1).base_url(), cluster.node(new).base_url()]);
    writer.wait_for_acks_after(finished, "the replacement");
    assert!(writer.acked_between(started, finished) > 0, "no write was acknowledged during the replacement");
    let acked = writer.finish();

    let mut held = local_shards(&http, &cluster, new);
    held.sort();
    assert_eq!(held, (0..SHARDS as u64).collect::<Vec<_>>(), "the new node holds every shard node 3 held");
    check_end_state(&cluster, &http, &acked, &[1, 2, new]);
}

/// The metadata leader, as node `via` reports it.
fn meta_leader(http: &Http, cluster: &LocalCluster, via: u64) -> Option<u64> {
    http.get_json(&cluster.node(via).url("/v1/cluster")).ok()?["membership"]["meta_leader"].as_u64()
}

#[test]
fn a_move_survives_a_crash_of_the_metadata_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, http, writer) = start_loaded(dir.path(), 3, Some(COMPACTING_RAFT_TOML), 3);
    let new = cluster.start_joining_node();
    add_node(&cluster, 1, new);

    // Queue the move without waiting, and crash the metadata leader while it is in flight.
    let from = (1..=3).find(|&id| Some(id) != meta_leader(&http, &cluster, 1)).expect("a node that does not lead the metadata group");
    cluster.cli(2, &["cluster", "move-replica", "--shard", "1", "--from", &from.to_string(), "--to", &new.to_string(), "--no-wait"]);
    let mut victim = None;
    let in_flight = poll_until(Duration::from_secs(30), || {
        let Ok(status) = http.get_json(&cluster.node(new).url("/v1/cluster")) else { return false };
        let moving = status["membership"]["moves"].as_array().is_some_and(|m| !m.is_empty());
        victim = status["membership"]["meta_leader"].as_u64().filter(|&l| l != new);
        moving && victim.is_some()
    });
    assert!(in_flight, "the move never showed as in flight\n{}", cluster.diagnostics());
    let victim = victim.expect("metadata leader");
    eprintln!("SIGKILL node {victim} (metadata leader) during the move");
    cluster.kill(victim);
    let targets: Vec<String> = [1, 2, 3].iter().filter(|&&id| id != victim).map(|&id| cluster.node(id).base_url()).collect();
    writer.set_targets(targets);
    // The other nodes elect a metadata leader and carry on with the move, which finishes
    // whether the victim is back or not; it comes back and follows.
    let survivor = (1..=3).find(|&id| id != victim).expect("a survivor");
    let moved = poll_until(Duration::from_secs(120), || {
        http.get_json(&cluster.node(survivor).url("/v1/admin/cluster/map")).is_ok_and(|map| {
            map["shards"][1]["moving"].is_null() && map["shards"][1]["voters"].as_array().is_some_and(|v| v.contains(&json!(new)))
        })
    });
    assert!(moved, "the move did not finish after the metadata leader crashed\n{}", cluster.diagnostics());
    cluster.restart(victim);
    writer.set_targets((1..=3).map(|id| cluster.node(id).base_url()).collect());
    writer.wait_for_acks_after(Instant::now(), "the victim came back");
    let acked = writer.finish();
    check_end_state(&cluster, &http, &acked, &[1, 2, 3, new]);
}

#[test]
fn a_move_to_a_node_that_never_started_is_cancelled_and_the_node_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start_with(dir.path(), ClusterOptions::new(3, SHARDS, 3));
    cluster.wait_for_leaders(Duration::from_secs(60));
    let http = Http::new(Duration::from_secs(30));
    preload(&cluster, &http);
    // Node 9 is added but never started: its metadata move cannot finish and holds the queue.
    cluster.cli(1, &["cluster", "add-node", "--id", "9", "--raft-addr", "127.0.0.1:9", "--http-addr", "127.0.0.1:9", "--no-wait"]);
    cluster.cli(2, &["cluster", "move-replica", "--shard", "0", "--from", "1", "--to", "9", "--no-wait"]);
    let map = |via: u64| http.get_json(&cluster.node(via).url("/v1/admin/cluster/map")).expect("map");
    assert!(
        poll_until(Duration::from_secs(30), || !map(1)["meta"]["moving"].is_null()),
        "the metadata move to node 9 never started\n{}",
        cluster.diagnostics()
    );
    let added = poll_until(Duration::from_secs(30), || {
        http.get_json(&cluster.node(1).url("/v1/cluster"))
            .is_ok_and(|s| s["membership"]["meta_configuration"]["learners"].as_array().is_some_and(|l| l.contains(&json!(9))))
    });
    assert!(added, "node 9 never became a learner of the metadata group\n{}", cluster.diagnostics());
    let printed = cluster.cli(3, &["cluster", "cancel-moves"]);
    assert!(printed.contains("moves cancelled"), "{printed}");
    // Node 3's CLI returns once the metadata leader applied the cancellation; node 1 serves
    // its own copy of the map, which follows within a heartbeat or two.
    let is_cancelled = |map: &Value| map["meta"]["moving"].is_null() && map["queued"].as_array().is_some_and(Vec::is_empty);
    assert!(poll_until(Duration::from_secs(30), || is_cancelled(&map(1))), "{}", map(1));
    // The learner the cancelled move added leaves the metadata group's configuration.
    let cleaned = poll_until(Duration::from_secs(30), || {
        http.get_json(&cluster.node(1).url("/v1/cluster")).is_ok_and(|s| {
            let conf = &s["membership"]["meta_configuration"];
            conf["learners"].as_array().is_some_and(Vec::is_empty) && conf["voters"].as_array().is_some_and(|v| v.len() == 3)
        })
    });
    assert!(cleaned, "the metadata group still names node 9\n{}", cluster.diagnostics());
    let printed = cluster.cli(1, &["cluster", "remove-node", "9"]);
    assert!(printed.contains("no longer a member"), "{printed}");
    // Node 2 serves its own copy of the map, which follows the leader within a heartbeat or two.
    assert!(poll_until(Duration::from_secs(30), || map(2)["members"].get("9").is_none()), "node 2 still lists node 9\n{}", map(2));
    // Moves work again.
    let printed = cluster.cli(1, &["cluster", "rebalance"]);
    assert!(printed.contains("rebalance: 0 moves queued"), "{printed}");
}
