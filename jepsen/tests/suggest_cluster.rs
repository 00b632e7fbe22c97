//! Search as you type on a cluster whose nodes hold different shards (two nodes, replication
//! factor 1): each node completes dialogue words said only in the other node's shards, with
//! frequencies added up over every shard and spellings as said, and labels only the other node
//! holds spelled as the models wrote them, in completions and in explain. With the other node
//! down, a node still answers in bounded time with what its own shards hold; once the other node
//! is back, its words are offered again.
//!
//! Build the binary first: `cargo build --release -p rushes-node`.

use std::time::{Duration, Instant};

use rushes_jepsen::{poll_until, wait_until, ClusterOptions, Http, LocalCluster};
use serde_json::{json, Value};

/// The nodes' request timeout (limits.request_timeout_ms), shortened so the test is quick.
const REQUEST_TIMEOUT_MS: u64 = 3_000;
/// A keystroke asks the shards the node lacks within the request timeout, then its moments run
/// a search under the same timeout: both, plus slack.
const KEYSTROKE_BOUND: Duration = Duration::from_millis(2 * REQUEST_TIMEOUT_MS + 3_000);
const SHARDS: u32 = 4;

/// An asset id that `shard_for_asset` puts on `shard`.
fn asset_on(shard: u32, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|a| rushes_protocol::peer::shard_for_asset(a, SHARDS) == shard)
        .expect("some asset lands on every shard")
}

fn line(id: &str, asset: &str, text: &str, end_ms: u64) -> String {
    json!({"id": id, "asset_id": asset, "model": "asr", "model_version": "1", "track": "dialogue",
           "start_ms": 0, "end_ms": end_ms, "text": text, "language": "de", "confidence": 1.0})
    .to_string()
}

fn label(id: &str, asset: &str, name: &str, end_ms: u64) -> String {
    json!({"id": id, "asset_id": asset, "model": "faces", "model_version": "1", "track": "character",
           "start_ms": 0, "end_ms": end_ms, "label": name, "confidence": 0.9})
    .to_string()
}

/// (text, kind, frequency) of each completion of `q` on `node`, and how long the answer took.
fn suggest(cluster: &LocalCluster, http: &Http, node: u64, q: &str) -> (Vec<(String, String, u64)>, Duration) {
    let started = Instant::now();
    let reply = http
        .get_json(&cluster.node(node).url(&format!("/v1/suggest?q={}", rushes_client::percent_encode(q))))
        .unwrap_or_else(|e| panic!("suggest {q:?} on node {node}: {e}\n{}", cluster.diagnostics()));
    let took = started.elapsed();
    let completions = reply["completions"]
        .as_array()
        .unwrap_or_else(|| panic!("suggest {q:?} on node {node}: {reply}"))
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap_or_default().to_string(),
                c["kind"].as_str().unwrap_or_default().to_string(),
                c["frequency"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    (completions, took)
}

fn search_ids(cluster: &LocalCluster, http: &Http, node: u64, q: &str) -> Option<Vec<String>> {
    let reply = http.post_json(&cluster.node(node).url("/v1/search"), &json!({"q": q})).ok()?;
    if reply["shards"]["failed"] != 0 {
        return None;
    }
    let mut ids: Vec<String> = reply["assets"].as_array()?.iter().filter_map(|a| a["asset_id"].as_str().map(String::from)).collect();
    ids.sort();
    Some(ids)
}

#[test]
fn each_node_completes_words_and_spells_labels_of_shards_it_does_not_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = ClusterOptions::new(2, SHARDS, 1);
    options.extra_toml = format!("[limits]\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\n");
    let cluster = LocalCluster::start_with(&dir.path().join("cluster"), options);
    cluster.wait_for_leaders(Duration::from_secs(60));
    let http = Http::new(Duration::from_secs(30));
    let owner = |shard: u32| cluster.leader_of(shard).expect("every shard has a leader");
    let node1_shard = (0..SHARDS).find(|s| owner(*s) == 1).expect("node 1 holds a shard");
    let node2_shard = (0..SHARDS).find(|s| owner(*s) == 2).expect("node 2 holds a shard");
    let (near, far) = (asset_on(node1_shard, "near"), asset_on(node2_shard, "far"));

    // "glühwein" is said in both nodes' shards (5 s on node 2's, 2 s on node 1's);
    // "bürgermeister" only on node 2's, "schnitzel" only on node 1's. "Ünal" is a label only
    // node 2's shard holds.
    let lines = [
        line("far-1", &far, "Der Bürgermeister trinkt Glühwein", 5_000),
        label("far-2", &far, "Ünal", 4_000),
        line("near-1", &near, "Schnitzel und glühwein", 2_000),
    ];
    http.send("POST", &cluster.node(1).url("/v1/annotations"), "application/x-ndjson", lines.join("\n").as_bytes())
        .unwrap_or_else(|e| panic!("ingest through node 1: {e}\n{}", cluster.diagnostics()));
    let both = {
        let mut ids = vec![near.clone(), far.clone()];
        ids.sort();
        ids
    };
    for node in [1, 2] {
        wait_until(&format!("node {node} to search both shards' dialogue"), Duration::from_secs(60), || {
            search_ids(&cluster, &http, node, "glühwein").as_ref() == Some(&both)
        });
    }

    // Each node completes the words only the other node's shard holds, as said.
    let (on1, _) = suggest(&cluster, &http, 1, "bürg");
    assert_eq!(on1, vec![("bürgermeister".into(), "word".into(), 5)], "node 1 offers node 2's word");
    let (on2, _) = suggest(&cluster, &http, 2, "schn");
    assert_eq!(on2, vec![("schnitzel".into(), "word".into(), 2)], "node 2 offers node 1's word");
    // Frequencies add up over every shard, whichever node is asked; accents fold.
    for (node, typed) in [(1, "gluh"), (2, "GLÜ"), (1, "glü")] {
        let (words, _) = suggest(&cluster, &http, node, typed);
        assert_eq!(words, vec![("glühwein".into(), "word".into(), 7)], "suggest {typed:?} on node {node}");
    }

    // A label held only by node 2 is spelled as written on node 1: in completions, and in
    // explain (understanding and leaves).
    let (labels, _) = suggest(&cluster, &http, 1, "una");
    assert_eq!(labels.first(), Some(&("Ünal".into(), "label".into(), 0)), "node 1 spells node 2's label: {labels:?}");
    let plan = http.post_json(&cluster.node(1).url("/v1/search/explain"), &json!({"q": "ünal"})).expect("explain")["plan"].clone();
    assert_eq!(plan["understanding"]["root"]["label"], json!("Ünal"), "{plan}");
    let leaves: Vec<Value> = plan["leaves"].as_array().into_iter().flatten().map(|l| l["label"].clone()).collect();
    assert_eq!(leaves, vec![json!("Ünal")], "{plan}");

    // Node 2 down: node 1 still answers in bounded time, with what its own shard holds.
    cluster.kill(2);
    let (words, took) = suggest(&cluster, &http, 1, "gluh");
    assert!(took <= KEYSTROKE_BOUND, "suggest took {took:?} with node 2 down");
    assert_eq!(words, vec![("glühwein".into(), "word".into(), 2)], "node 1's own seconds only");
    let (words, took) = suggest(&cluster, &http, 1, "bürg");
    assert!(took <= KEYSTROKE_BOUND, "suggest took {took:?} with node 2 down");
    assert!(words.iter().all(|(_, kind, _)| kind != "word"), "no word of node 2's shard without node 2: {words:?}");

    // Back: its words are offered again.
    cluster.restart(2);
    cluster.wait_for_leaders(Duration::from_secs(60));
    let back = poll_until(Duration::from_secs(60), || {
        suggest(&cluster, &http, 1, "bürg").0 == vec![("bürgermeister".to_string(), "word".to_string(), 5)]
    });
    assert!(back, "node 1 does not offer node 2's words again after its restart\n{}", cluster.diagnostics());
}
