//! Scatter-gather with replication factor 2 on three nodes, so every node lacks some shards:
//! every node answers every search with the same results (the coordinator runs the shards it
//! lacks on other nodes' replicas), reads of any asset work from any node, and with one node
//! down or paused the others still answer from all shards (hedged to the other replica).

use std::time::Duration;

use rushes_jepsen::{Http, LocalCluster, Sample};
use serde_json::{json, Value};

const SHARDS: u32 = 4;

fn searches() -> Vec<Value> {
    vec![
        json!({"q": "Monica", "limit": 10}),
        json!({"q": "Joey in the kitchen", "limit": 10, "per_asset": 3}),
        json!({"clauses": [{"type": "label", "track": "character", "label": "Ross"}], "mode": "union", "limit": 10}),
        json!({"q": "Rachel then Ross within 20 seconds", "limit": 10}),
        json!({"clauses": [{"type": "dialogue", "text": "coffee"}], "limit": 10}),
        // Small pages: each shard ranks more assets than make the global top, so the
        // coordinator's choice of which to finish decides the page and its cursor.
        json!({"q": "Monica", "limit": 2}),
        json!({"clauses": [{"type": "label", "track": "object", "label": "coffee mug"}], "limit": 3, "per_asset": 2}),
    ]
}

/// The parts of a reply that must not depend on the node asked.
fn comparable(reply: &Value) -> Value {
    json!({
        "assets": reply["assets"],
        "total_assets": reply["total_assets"],
        "next_cursor": reply["next_cursor"],
        "shards": reply["shards"],
    })
}

#[test]
fn every_node_answers_every_search_identically_with_replication_factor_2() {
    let dir = match std::env::var_os("JEPSEN_DIR") {
        Some(base) => tempfile::Builder::new().prefix("scatter-").disable_cleanup(true).tempdir_in(base).expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    };
    let mut options = rushes_jepsen::ClusterOptions::new(3, SHARDS, 2);
    options.rust_log = std::env::var("JEPSEN_RUST_LOG").unwrap_or_else(|_| "warn".to_string());
    let cluster = LocalCluster::start_with(&dir.path().join("cluster"), options);
    cluster.wait_for_leaders(Duration::from_secs(60));
    let http = Http::new(Duration::from_secs(30));
    let sample = Sample::generate(dir.path(), 2.0, 5);
    let urls = cluster.base_urls();
    sample.put_assets(&urls, Duration::from_secs(60));
    for (position, batch) in sample.batches(500).iter().enumerate() {
        let url = format!("{}/v1/annotations", urls[position % urls.len()]);
        http.send("POST", &url, "application/x-ndjson", &batch.body).unwrap_or_else(|e| panic!("batch {position}: {e}"));
    }
    cluster.wait_converged(Duration::from_secs(120));
    // The test means something only if some node lacks some shard.
    let lacking: Vec<u64> = cluster
        .statuses(false)
        .iter()
        .filter_map(|(node, status)| {
            let status = status.as_ref().unwrap_or_else(|e| panic!("status of node {node}: {e}"));
            let local = status.shards.iter().filter(|s| s.replicas.iter().any(|r| r.node == *node && r.local)).count();
            (local < SHARDS as usize).then_some(*node)
        })
        .collect();
    assert!(!lacking.is_empty(), "with 4 shards × 2 replicas on 3 nodes some node must lack a shard");

    let ask_all = |nodes: &[u64]| -> Vec<Vec<Value>> {
        searches()
            .iter()
            .map(|search| {
                nodes
                    .iter()
                    .map(|&node| {
                        let reply =
                            http.post_json(&cluster.node(node).url("/v1/search"), search).unwrap_or_else(|e| panic!("node {node}: {e}"));
                        assert_eq!(reply["shards"]["failed"], 0, "node {node} lost a shard on {search}: {reply}");
                        comparable(&reply)
                    })
                    .collect()
            })
            .collect()
    };
    let answers = ask_all(&[1, 2, 3]);
    for (search, replies) in searches().iter().zip(&answers) {
        assert!(replies[0]["assets"].as_array().is_some_and(|a| !a.is_empty()), "no results for {search}");
        assert!(replies.windows(2).all(|w| w[0] == w[1]), "nodes disagree on {search}:\n{replies:#?}");
    }

    // An `asset_ids` filter asks only the shard that owns the asset (local or remote): the
    // others are reported skipped, and every node finds the asset.
    let asset = answers[0][0]["assets"][0]["asset_id"].as_str().expect("the first search found an asset").to_string();
    let filtered = json!({"q": "Monica", "limit": 10, "filters": {"asset_ids": [asset]}});
    let mut filtered_replies = Vec::new();
    for node in [1, 2, 3] {
        let reply = http.post_json(&cluster.node(node).url("/v1/search"), &filtered).unwrap_or_else(|e| panic!("node {node}: {e}"));
        assert_eq!(reply["shards"], json!({"total": SHARDS, "ok": SHARDS, "failed": 0, "skipped": SHARDS - 1}), "node {node}: {reply}");
        assert_eq!(reply["assets"][0]["asset_id"], json!(asset), "node {node} filtered to {asset}: {reply}");
        filtered_replies.push(comparable(&reply));
    }
    assert!(filtered_replies.windows(2).all(|w| w[0] == w[1]), "nodes disagree on {filtered}:\n{filtered_replies:#?}");

    // Reads of every asset from every node, whichever nodes hold it.
    for (asset_id, _) in &sample.assets {
        let mut views = Vec::new();
        for node in [1, 2, 3] {
            let view =
                http.get_json(&cluster.node(node).url(&format!("/v1/assets/{asset_id}"))).unwrap_or_else(|e| panic!("node {node}: {e}"));
            views.push(view);
        }
        assert!(views.windows(2).all(|w| w[0] == w[1]), "asset views differ for {asset_id}: {views:#?}");
    }

    // One node down: the others still answer from every shard, with the same results.
    cluster.kill(2);
    let without_2 = ask_all(&[1, 3]);
    for ((search, before), after) in searches().iter().zip(&answers).zip(&without_2) {
        assert!(after.iter().all(|reply| reply == &before[0]), "results changed with node 2 down for {search}");
    }
    cluster.restart(2);
    // One node paused: searches hedge to the other replica instead of waiting for it.
    cluster.pause(3);
    let while_paused = ask_all(&[1, 2]);
    cluster.resume(3);
    for ((search, before), after) in searches().iter().zip(&answers).zip(&while_paused) {
        assert!(after.iter().all(|reply| reply == &before[0]), "results changed with node 3 paused for {search}");
    }

    // Last, as it changes the corpus: a typed word one edit from a label ("monika" → Monica)
    // is corrected to the label until some shard's dialogue holds it; then it reads as the
    // dialogue word on every node, including the one lacking that shard.
    let leaf_kinds = |node: u64| -> Vec<String> {
        let explain = http
            .post_json(&cluster.node(node).url("/v1/search/explain"), &json!({"q": "monika"}))
            .unwrap_or_else(|e| panic!("explain on node {node}: {e}"));
        explain["plan"]["leaves"].as_array().into_iter().flatten().map(|leaf| leaf["type"].to_string()).collect()
    };
    for node in [1, 2, 3] {
        assert_eq!(leaf_kinds(node), vec!["\"label\""], "node {node} did not correct \"monika\" to the label");
    }
    let (asset_id, _) = sample.assets.iter().next().expect("the sample has assets");
    let line = json!({
        "id": "scatter-monika", "asset_id": asset_id, "model": "asr", "model_version": "3", "track": "dialogue",
        "start_ms": 1000, "end_ms": 2500, "confidence": 0.9, "text": "Monika is here", "language": "en",
    });
    http.send("POST", &format!("{}/v1/annotations", urls[0]), "application/x-ndjson", format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| panic!("posting the dialogue line: {e}"));
    cluster.wait_converged(Duration::from_secs(120));
    let mut replies = Vec::new();
    for node in [1, 2, 3] {
        assert_eq!(leaf_kinds(node), vec!["\"words\""], "node {node} did not read \"monika\" as the dialogue word");
        let reply =
            http.post_json(&cluster.node(node).url("/v1/search"), &json!({"q": "monika"})).unwrap_or_else(|e| panic!("node {node}: {e}"));
        assert_eq!(reply["assets"][0]["clips"][0]["matches"][0]["annotation_id"], "scatter-monika", "node {node}: {reply}");
        replies.push(comparable(&reply));
    }
    assert!(replies.windows(2).all(|w| w[0] == w[1]), "nodes disagree on \"monika\":\n{replies:#?}");
}
