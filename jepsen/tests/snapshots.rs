//! Catch-up by snapshot on a real three-node cluster: a node is cut off while the others write
//! and compact their logs past it, so once healed it can only catch up by fetching a snapshot
//! of each shard's raw store in chunks. Afterwards every replica holds the same raw store,
//! everything acknowledged is searchable from that node, it restarts cleanly from the
//! installed snapshot, and writes through it keep working.
//!
//! (A node that is merely killed often catches up from the log anyway: the leaders' appends
//! sent while it was down wait in the transport's queue and arrive when it reconnects. A
//! partition drops them.)

use std::collections::BTreeSet;
use std::time::Duration;

use rushes_jepsen::{poll_until, ClusterOptions, Http, LocalCluster, ReplicaStatus};
use serde_json::json;

const SHARDS: u32 = 2;
/// One three-node cluster at a time: two at once on a 2-core machine starve each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Entries kept after compaction, and entries beyond them that trigger it: tiny, so a few
/// hundred single-annotation writes compact the log many times over. Snapshot chunks of 1 KiB
/// make every fetch take many chunks, so chunk continuation is exercised across processes while
/// writes continue. (These fetches are too short for the leader to resend a snapshot meanwhile:
/// the concurrent-fetch race is covered by the store's and shard's unit tests.)
const RAFT_TOML: &str =
    "[raft]\nlog_retain_entries = 10\nsnapshot_log_entries = 20\ncompaction_interval_ms = 100\nsnapshot_chunk_bytes = 1024\n";

fn annotation(asset: &str, id: &str, start_ms: u64, label: &str) -> String {
    json!({
        "id": id, "asset_id": asset, "model": "faces", "model_version": "1", "track": "character",
        "start_ms": start_ms, "end_ms": start_ms + 2000, "label": label, "confidence": 0.9
    })
    .to_string()
}

/// Writes `count` annotations one request each (one log entry each) through `node`'s URL.
fn write_one_by_one(http: &Http, cluster: &LocalCluster, node: u64, prefix: &str, count: usize) -> BTreeSet<String> {
    let mut assets = BTreeSet::new();
    for i in 0..count {
        let asset = format!("{prefix}-asset-{}", i % 17);
        let body = annotation(&asset, &format!("{prefix}-{i}"), (i as u64) * 1000, if i % 2 == 0 { "Joey" } else { "Monica" });
        let url = cluster.node(node).url("/v1/annotations");
        // Retry the transient refusals of a busy 2-core machine (ids are idempotent).
        let ok = poll_until(Duration::from_secs(30), || http.send("POST", &url, "application/x-ndjson", body.as_bytes()).is_ok());
        assert!(ok, "write {prefix}-{i} through node {node} not acknowledged within 30 s\n{}", cluster.diagnostics());
        assets.insert(asset);
    }
    assets
}

/// Three nodes whose logs compact after a few writes ([`RAFT_TOML`]), with leaders elected.
fn start_compacting_cluster(dir: &std::path::Path) -> LocalCluster {
    let mut options = ClusterOptions::new(3, SHARDS, 3);
    options.extra_toml = RAFT_TOML.to_string();
    let cluster = LocalCluster::start_with(&dir.join("cluster"), options);
    cluster.wait_for_leaders(Duration::from_secs(60));
    cluster
}

/// Every shard's replicas hold byte-identical raw stores.
fn assert_replicas_identical(cluster: &LocalCluster, when: &str) {
    let digests = cluster.digests();
    for shard in 0..SHARDS {
        let of_shard: BTreeSet<&String> = digests.iter().filter(|((s, _), _)| *s == shard).map(|(_, d)| d).collect();
        assert_eq!(of_shard.len(), 1, "raw stores of shard {shard} differ {when}: {digests:?}");
    }
}

/// Nodes 1 and 2 compacted every shard's log past what node 3 had applied (`applied_before`),
/// so the log alone cannot catch node 3 up.
fn wait_compacted_past(cluster: &LocalCluster, applied_before: &[u64]) {
    for shard in 0..SHARDS {
        for node in [1u64, 2] {
            let compacted = poll_until(Duration::from_secs(60), || {
                replica_field(cluster, node, shard, |r| r.log_first_index).is_some_and(|first| first > applied_before[shard as usize] + 1)
            });
            assert!(
                compacted,
                "node {node} did not compact shard {shard} past node 3's index {}\n{}",
                applied_before[shard as usize],
                cluster.diagnostics()
            );
        }
    }
}

fn replica_field(cluster: &LocalCluster, node: u64, shard: u32, field: impl Fn(&ReplicaStatus) -> Option<u64>) -> Option<u64> {
    let status = cluster.node(node).status(false).ok()?;
    let value = status.local_replicas().into_iter().find(|(s, _)| *s == shard).and_then(|(_, replica)| field(replica));
    value
}

#[test]
fn a_replica_behind_the_compacted_log_catches_up_by_snapshot() {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start_compacting_cluster(dir.path());
    let http = Http::new(Duration::from_secs(30));

    let mut assets = write_one_by_one(&http, &cluster, 1, "before", 40);
    cluster.wait_converged(Duration::from_secs(60));
    let applied_before: Vec<u64> =
        (0..SHARDS).map(|s| replica_field(&cluster, 3, s, |r| r.applied_index).expect("node 3 status")).collect();

    cluster.partition(&[3]);
    assets.extend(write_one_by_one(&http, &cluster, 1, "while-down", 150));
    assets.extend(write_one_by_one(&http, &cluster, 2, "while-down-2", 150));
    // Both live replicas of every shard compacted past what node 3 has: the log cannot help it.
    wait_compacted_past(&cluster, &applied_before);

    // Writes continue while node 3 fetches its snapshots.
    let during = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_one_by_one(&http, &cluster, 1, "during-catch-up", 60));
        cluster.heal();
        writer.join().expect("writer thread")
    });
    assets.extend(during);
    cluster.wait_converged(Duration::from_secs(120));
    for shard in 0..SHARDS {
        let installed = replica_field(&cluster, 3, shard, |r| r.snapshots_installed).unwrap_or(0);
        assert!(installed >= 1, "node 3 caught up on shard {shard} without a snapshot\n{}", cluster.diagnostics());
        let chunks = replica_field(&cluster, 3, shard, |r| r.snapshot_chunks_fetched).unwrap_or(0);
        assert!(
            chunks >= 2,
            "node 3 fetched shard {shard}'s snapshot in {chunks} chunk(s); 1 KiB chunks should take many\n{}",
            cluster.diagnostics()
        );
    }
    assert_replicas_identical(&cluster, "after the catch-up");
    let counts = cluster.raw_counts();
    let total_on_node_3: u64 = counts.iter().filter(|((_, node), _)| *node == 3).map(|(_, c)| c.unwrap_or(0)).sum();
    assert_eq!(total_on_node_3, 400, "node 3's replicas hold every annotation once: {counts:?}");

    // Everything is searchable from the restarted node, and it takes writes again.
    let search = json!({ "clauses": [{"type": "label", "track": "character", "label": "Joey"}], "limit": 100 });
    let reply = http.post_json(&cluster.node(3).url("/v1/search"), &search).expect("search on node 3");
    assert_eq!(reply["shards"]["failed"], 0, "{reply}");
    let found: BTreeSet<String> =
        reply["assets"].as_array().expect("assets").iter().filter_map(|a| a["asset_id"].as_str().map(String::from)).collect();
    assert_eq!(found, assets, "node 3 searches every asset after catching up");

    // A restart opens from the installed snapshot and the log after it.
    cluster.kill(3);
    cluster.restart(3);
    cluster.wait_converged(Duration::from_secs(120));
    write_one_by_one(&http, &cluster, 3, "after", 10);
    cluster.wait_converged(Duration::from_secs(60));
    assert_replicas_identical(&cluster, "after more writes");
}

/// A node restarted with an empty data dir under its old id. Whichever reaches it first
/// decides what happens, and both outcomes are checked: a leader's heartbeat reveals that it
/// acknowledged entries it no longer has, and its replicas stop with an error that says so
/// (raft-rs would panic on that heartbeat); or the leader's probe refills its log from entry 1
/// before any heartbeat, and it ends up identical to the others. Never a panic, and the other
/// two nodes keep serving either way. (Rejoining with lost data is not made safe: it would need
/// membership changes, which are not implemented.)
#[test]
fn a_node_that_lost_its_data_dir_stops_cleanly_or_is_refilled_never_panics() {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start_with(&dir.path().join("cluster"), ClusterOptions::new(3, SHARDS, 3));
    cluster.wait_for_leaders(Duration::from_secs(60));
    let http = Http::new(Duration::from_secs(30));
    write_one_by_one(&http, &cluster, 1, "before", 20);
    cluster.wait_converged(Duration::from_secs(60));

    cluster.kill(3);
    std::fs::remove_dir_all(&cluster.node(3).data_dir).expect("wipe node 3's data dir");
    // Not `restart`: that waits for a healthy /health, which a node whose replicas stopped
    // never gives.
    cluster.node(3).spawn();
    // Each of node 3's replicas either stops (failed) or catches up with the others.
    let settled = poll_until(Duration::from_secs(60), || {
        let Ok(status) = cluster.node(3).status(false) else { return false };
        let states: Vec<(bool, Option<u64>)> = status.local_replicas().map(|(_, r)| (r.failed, r.applied_index)).collect();
        states.len() == SHARDS as usize && states.iter().all(|(failed, applied)| *failed || applied.is_some_and(|a| a > 1))
    });
    assert!(settled, "node 3's replicas neither stopped nor caught up after losing their data\n{}", cluster.diagnostics());
    let log = std::fs::read_to_string(&cluster.node(3).log_path).unwrap_or_default();
    assert!(!log.contains("panicked"), "no panic:\n{}", cluster.node(3).log_tail(40));
    let failed = cluster.node(3).status(false).map(|s| s.local_replicas().filter(|(_, r)| r.failed).count()).unwrap_or(0);
    if failed > 0 {
        assert!(log.contains("the data dir was lost"), "the node log names the cause:\n{}", cluster.node(3).log_tail(20));
    }
    // The other two still form a quorum for every shard.
    write_one_by_one(&http, &cluster, 1, "after", 10);
    if failed == 0 {
        cluster.wait_converged(Duration::from_secs(60));
        assert_replicas_identical(&cluster, "after the refill");
    }
}

/// Deletes on a cluster: an asset and an annotation deleted while a node is cut off reach it
/// through a snapshot (the others compacted their logs past it meanwhile). Afterwards every
/// replica holds the same raw store, and from every node the deleted data is gone from search,
/// buckets and suggest, while what was not deleted is all there.
#[test]
fn deletes_reach_a_replica_that_catches_up_by_snapshot() {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start_compacting_cluster(dir.path());
    let http = Http::new(Duration::from_secs(30));

    let mut kept = write_one_by_one(&http, &cluster, 1, "kept", 30);
    let doomed = ["doomed-1", "doomed-2"];
    for asset in doomed {
        let body =
            [annotation(asset, &format!("{asset}-face"), 0, "Zebulon"), annotation(asset, &format!("{asset}-x"), 4000, "Joey")].join("\n");
        http.send("POST", &cluster.node(2).url("/v1/annotations"), "application/x-ndjson", body.as_bytes()).expect("write doomed");
    }
    let partial = annotation("kept-asset-0", "quentin-line", 0, "Quentin");
    http.send("POST", &cluster.node(1).url("/v1/annotations"), "application/x-ndjson", partial.as_bytes()).expect("write");
    cluster.wait_converged(Duration::from_secs(60));
    let applied_before: Vec<u64> =
        (0..SHARDS).map(|s| replica_field(&cluster, 3, s, |r| r.applied_index).expect("node 3 status")).collect();

    cluster.partition(&[3]);
    for asset in doomed {
        let reply = http.send("DELETE", &cluster.node(1).url(&format!("/v1/assets/{asset}")), "", b"").expect("delete asset");
        assert!(reply.contains("\"deleted_annotations\":2"), "{reply}");
    }
    http.send("DELETE", &cluster.node(2).url("/v1/assets/kept-asset-0/annotations/quentin-line"), "", b"").expect("delete annotation");
    kept.extend(write_one_by_one(&http, &cluster, 1, "while-down", 150));
    wait_compacted_past(&cluster, &applied_before);
    cluster.heal();
    cluster.wait_converged(Duration::from_secs(120));
    let installed: u64 = (0..SHARDS).map(|s| replica_field(&cluster, 3, s, |r| r.snapshots_installed).unwrap_or(0)).sum();
    assert!(installed >= 1, "node 3 caught up without a snapshot\n{}", cluster.diagnostics());
    assert_replicas_identical(&cluster, "after the catch-up");

    let label_search = |node: u64, label: &str| -> BTreeSet<String> {
        let search = json!({ "clauses": [{"type": "label", "track": "character", "label": label}], "limit": 100 });
        let reply = http.post_json(&cluster.node(node).url("/v1/search"), &search).expect("search");
        assert_eq!(reply["shards"]["failed"], 0, "{reply}");
        reply["assets"].as_array().expect("assets").iter().filter_map(|a| a["asset_id"].as_str().map(String::from)).collect()
    };
    for node in [1u64, 2, 3] {
        // Searchable once indexed: wait for the kept assets, then check what must be gone.
        let all_kept = poll_until(Duration::from_secs(60), || {
            let mut found = label_search(node, "Joey");
            found.extend(label_search(node, "Monica"));
            found == kept
        });
        assert!(all_kept, "node {node} does not find exactly the kept assets\n{}", cluster.diagnostics());
        assert!(label_search(node, "Zebulon").is_empty(), "node {node} still finds a deleted asset");
        assert!(label_search(node, "Quentin").is_empty(), "node {node} still finds a deleted annotation");
        let suggest = http.get_json(&cluster.node(node).url("/v1/suggest?q=Zebu")).expect("suggest");
        assert!(!suggest.to_string().to_lowercase().contains("zebulon"), "node {node} still suggests a deleted label: {suggest}");
        let buckets = http.get_json(&cluster.node(node).url("/v1/assets/doomed-1/buckets?from_ms=0&to_ms=10000"));
        let empty = match &buckets {
            Ok(reply) => {
                reply["buckets"].as_array().is_none_or(|b| b.iter().all(|b| b["annotations"].as_array().is_none_or(Vec::is_empty)))
            }
            Err(e) => e.status() == Some(404),
        };
        assert!(empty, "node {node} still has buckets of a deleted asset: {buckets:?}");
    }
}
