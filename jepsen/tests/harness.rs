//! The harness on one node (replication factor 1), independent of multi-node replication:
//! start from a generated config, ingest, read back, SIGKILL + restart on the same data,
//! SIGSTOP + SIGCONT.

use std::time::Duration;

use rushes_jepsen::{poll_until, ClusterOptions, Http, LocalCluster, Sample};

#[test]
fn one_node_starts_ingests_restarts_and_pauses() {
    let dir = tempfile::Builder::new().prefix("jepsen-harness-").tempdir().expect("tempdir");
    let sample = Sample::generate(dir.path(), 0.1, 3);
    let batch = sample.batches(50).into_iter().next().expect("a batch");
    // No partitions here, so no fault-injection endpoint needed: this test checks the harness
    // against any node build, including one whose config loader does not know
    // RUSHES_FAULT_INJECTION yet (see cluster::tests::the_node_config_loader_accepts_it).
    let mut options = ClusterOptions::new(1, 2, 1);
    options.fault_injection = false;
    let cluster = LocalCluster::start_with(&dir.path().join("cluster"), options);
    let node = cluster.node(1);
    assert!(node.is_running() && node.is_serving());
    assert!(node.client().get("/health").is_ok());

    let http = Http::new(Duration::from_secs(15));
    let reply = http.send("POST", &node.url("/v1/annotations"), "application/x-ndjson", &batch.body).expect("ingest");
    let reply: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
    assert_eq!(reply["accepted"].as_u64(), Some(batch.annotations.len() as u64));
    let first = &sample.annotations[batch.annotations[0]];
    let path = format!("/v1/assets/{}/annotations/{}", first.asset_id, first.id);
    let read_back = || -> serde_json::Value { serde_json::from_str(&http.get(&node.url(&path)).expect("read back")).expect("JSON") };
    assert_eq!(read_back(), first.raw);

    cluster.restart(1);
    assert_eq!(read_back(), first.raw, "acknowledged annotation after SIGKILL + restart");

    cluster.pause(1);
    assert!(node.is_paused() && node.is_running() && !node.is_serving());
    let quick = Http::new(Duration::from_millis(500));
    assert!(quick.get(&node.url("/health")).is_err(), "a paused node does not answer");
    cluster.resume(1);
    assert!(poll_until(Duration::from_secs(10), || quick.get(&node.url("/health")).is_ok()), "the node answers again after SIGCONT");

    cluster.kill(1);
    assert!(!node.is_running());
}
