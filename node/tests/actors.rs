//! The pipeline's actors as an operator sees them: supervision of a panicking index or fusion
//! actor (restarted, counted, caught up, nothing acknowledged missing from search) and the
//! actor map of `GET /v1/cluster` and `/metrics`.

mod common;

use std::time::Duration;

use common::{load_sample, sample, wait_until, TestNode};
use rushes_protocol::{SearchRequest, SearchResponse};

const FAULTS: (&str, &str) = ("RUSHES_FAULT_INJECTION", "1");

/// Searches that cover labels, dialogue and scenes of the sample season.
fn queries() -> Vec<SearchRequest> {
    ["Joey", "Monica in the kitchen", "\"on a break\"", "coffee", "Rachel and Ross", "Phoebe"]
        .into_iter()
        .map(|q| SearchRequest { q: Some(q.to_string()), limit: Some(50), ..Default::default() })
        .collect()
}

/// The parts of a search reply that depend on the data (not on time taken).
fn answer(node: &TestNode, request: &SearchRequest) -> serde_json::Value {
    let response: SearchResponse = node.client().search(request).expect("search");
    assert_eq!(response.shards.failed, 0, "{:?}", response.shards);
    serde_json::json!({ "total": response.total_assets, "assets": response.assets })
}

fn actor_rows(status: &serde_json::Value, name: &str) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for shard in status["shards"].as_array().expect("shards") {
        for replica in shard["replicas"].as_array().expect("replicas") {
            for actor in replica["actors"].as_array().expect("a replica's actor map") {
                if actor["actor"] == name {
                    rows.push(actor.clone());
                }
            }
        }
    }
    rows
}

/// Every index actor panics twice and every fusion actor once while the season streams in: each
/// is restarted from its watermark, the restarts are counted with their cause, and the node
/// then answers every search exactly as a node that never failed.
#[test]
fn panicking_derived_actors_restart_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let season = sample(dir.path(), 3.0, 5);
    let faulty = TestNode::start_with_env(&dir.path().join("faulty"), &["--set", "index.commit_interval_ms=100"], &[FAULTS]);
    let control = TestNode::start(&dir.path().join("control"), &[]);
    let client = faulty.client();
    let status = client.get_json("/v1/cluster").expect("status");
    let shard_count = status["shards"].as_array().expect("shards").len() as u32;
    // Faults are armed on the shards that will receive data (placement is a pure function).
    let assets = std::fs::read_to_string(season.join("assets.ndjson")).expect("assets");
    let mut shards: Vec<u32> = assets
        .lines()
        .map(|line| {
            let asset: serde_json::Value = serde_json::from_str(line).expect("asset");
            rushes_cluster::shard_for_asset(asset["asset_id"].as_str().expect("asset_id"), shard_count)
        })
        .collect();
    shards.sort_unstable();
    shards.dedup();
    assert!(shards.len() >= 2, "the sample spreads over several shards: {shards:?}");
    for shard in &shards {
        for (actor, panics) in [("index", 2), ("fusion", 1)] {
            let body = serde_json::json!({ "shard": shard, "actor": actor, "panics": panics }).to_string();
            client.send("POST", "/v1/debug/actor-fault", "application/json", body.as_bytes()).expect("arm the fault");
        }
    }
    let loaded = load_sample(&faulty, &season, 200);
    assert_eq!(load_sample(&control, &season, 200), loaded);
    faulty.wait_searchable(Duration::from_secs(120));
    control.wait_searchable(Duration::from_secs(120));
    wait_until("every armed panic fired and its actor restarted", Duration::from_secs(60), || {
        let status = client.get_json("/v1/cluster").expect("status");
        let restarts = |name: &str| actor_rows(&status, name).iter().map(|a| a["restarts"].as_u64().unwrap_or(0)).sum::<u64>();
        restarts("index") == 2 * shards.len() as u64 && restarts("fusion") == shards.len() as u64
    });
    faulty.wait_searchable(Duration::from_secs(120));
    let status = client.get_json("/v1/cluster").expect("status");
    for index in actor_rows(&status, "index").into_iter().filter(|a| shards.contains(&(a["shard"].as_u64().unwrap_or(0) as u32))) {
        assert_eq!(index["restarts"], 2, "{index}");
        assert!(index["last_error"].as_str().is_some_and(|e| e.contains("injected fault")), "{index}");
        assert!(["idle", "busy"].contains(&index["state"].as_str().unwrap_or("")), "{index}");
    }
    for raft in actor_rows(&status, "raft") {
        assert_eq!(raft["restarts"], 0, "{raft}");
    }
    for shard in status["shards"].as_array().expect("shards") {
        assert_eq!(shard["index_docs"], shard["buckets"], "one document per bucket: {shard}");
    }
    let control_status = control.client().get_json("/v1/cluster").expect("status");
    let totals = |status: &serde_json::Value, key: &str| {
        status["shards"].as_array().map(|s| s.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum::<u64>())
    };
    for key in ["raw_annotations", "buckets", "index_docs"] {
        assert_eq!(totals(&status, key), totals(&control_status, key), "{key}");
    }
    for request in queries() {
        assert_eq!(answer(&faulty, &request), answer(&control, &request), "{:?}", request.q);
    }
    let metrics = client.get("/metrics").expect("metrics");
    let restarts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("rushes_actor_restarts_total{actor=\"index\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(restarts, 2.0 * shards.len() as f64, "restarts in /metrics");
    assert!(metrics.contains("rushes_actor_handler_seconds_bucket{actor=\"raft\""), "handler latency per actor");
    assert!(metrics.contains("rushes_actor_mailbox_capacity{actor=\"coordinator\""), "mailbox capacity per actor");
}

#[test]
fn the_actor_map_lists_node_and_replica_actors_and_the_fault_hook_is_off_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let status = node.client().get_json("/v1/cluster").expect("status");
    let node_actors: Vec<&str> =
        status["nodes"][0]["actors"].as_array().expect("node actors").iter().filter_map(|a| a["actor"].as_str()).collect();
    assert_eq!(node_actors, ["ingest_router", "coordinator"]);
    for name in ["raft", "fusion", "index"] {
        let rows = actor_rows(&status, name);
        assert_eq!(rows.len(), status["shards"].as_array().map_or(0, Vec::len), "one {name} actor per replica");
        for row in rows {
            assert!(row["mailbox_capacity"].as_u64().is_some_and(|c| c > 0), "{row}");
            assert_eq!(row["restarts"], 0);
            assert!(row["thread"].as_str().is_some_and(|t| t.starts_with(name)), "{row}");
        }
    }
    let refused = node
        .client()
        .send("POST", "/v1/debug/actor-fault", "application/json", br#"{"shard": 0, "actor": "index"}"#)
        .expect_err("fault injection is off unless the node runs with it");
    assert!(refused.to_string().contains("404"), "{refused}");
}
