//! Deleting data through the log, and exporting it: a deleted asset or annotation leaves no
//! trace in search, buckets, suggest or the vocabulary; a purge removes superseded model
//! versions from the raw store; deletes are idempotent and survive a restart; re-sending a
//! deleted annotation stores it again; the export is the raw store byte for byte, filtered,
//! and loads into another node that then answers searches identically.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::TestNode;
use rushes_protocol::{Clause, Filters, SearchRequest};
use serde_json::{json, Value};

fn label(id: &str, asset: &str, model: &str, version: &str, track: &str, start_ms: u64, end_ms: u64, label: &str) -> Value {
    json!({"id": id, "asset_id": asset, "model": model, "model_version": version, "track": track,
           "start_ms": start_ms, "end_ms": end_ms, "label": label, "confidence": 0.9})
}

fn line(id: &str, asset: &str, start_ms: u64, text: &str) -> Value {
    json!({"id": id, "asset_id": asset, "model": "whisper", "model_version": "1", "track": "dialogue",
           "start_ms": start_ms, "end_ms": start_ms + 2000, "text": text, "language": "en"})
}

fn scene(id: &str, asset: &str, start_ms: u64, place: &str, vector: &[f64]) -> Value {
    json!({"id": id, "asset_id": asset, "model": "clip", "model_version": "1", "track": "scene",
           "start_ms": start_ms, "end_ms": start_ms + 4000, "label": place, "vector_space": "scene", "vector": vector})
}

/// The lines as sent (compact JSON, one per annotation), so the export can be compared byte
/// for byte.
fn post(node: &TestNode, items: &[Value]) -> Vec<String> {
    let lines: Vec<String> = items.iter().map(|item| item.to_string()).collect();
    node.client().send("POST", "/v1/annotations", "application/x-ndjson", lines.join("\n").as_bytes()).expect("ingest");
    lines
}

fn found(node: &TestNode, clause: Clause, asset: Option<&str>) -> BTreeSet<String> {
    let request = SearchRequest {
        clauses: Some(vec![clause]),
        filters: asset.map(|a| Filters { asset_ids: Some(vec![a.into()]), ..Default::default() }),
        limit: Some(100),
        ..Default::default()
    };
    node.client().search(&request).expect("search").assets.iter().map(|a| a.asset_id.clone()).collect()
}

fn label_clause(text: &str) -> Clause {
    Clause::Label { label: text.into(), track: None, min_confidence: None, weight: None }
}

fn completions(node: &TestNode, q: &str) -> Vec<String> {
    let reply = node.client().get_json(&format!("/v1/suggest?q={q}")).expect("suggest");
    reply["completions"].as_array().expect("completions").iter().map(|c| c["text"].as_str().unwrap_or("").to_string()).collect()
}

fn bucket_ids(node: &TestNode, asset: &str) -> BTreeSet<String> {
    let reply = node.client().get_json(&format!("/v1/assets/{asset}/buckets?from_ms=0&to_ms=60000")).expect("buckets");
    reply["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .flat_map(|b| {
            b["annotations"].as_array().expect("annotations").iter().map(|a| a["annotation_id"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

fn delete(node: &TestNode, path: &str) -> Value {
    let reply = node.client().send("DELETE", path, "", b"").unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
    serde_json::from_str(&reply).expect("json reply")
}

fn export(node: &TestNode, query: &str) -> Vec<String> {
    let body = node.client().get(&format!("/v1/export{query}")).expect("export");
    body.lines().map(str::to_string).collect()
}

fn vector(seed: f64) -> Vec<f64> {
    (0..512).map(|i| ((i as f64 + 1.0) * seed).sin()).collect()
}

#[test]
fn deletes_leave_no_trace_and_exports_are_the_raw_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(&dir.path().join("a"), &[]);
    let client = node.client();
    client
        .send("PUT", "/v1/assets/doomed", "application/json", br#"{"title": "Pilot", "series": "Zebra Show", "season": 1}"#)
        .expect("record");
    client.send("PUT", "/v1/assets/kept", "application/json", br#"{"title": "Second", "series": "Other", "season": 1}"#).expect("record");
    let mut sent = Vec::new();
    sent.extend(post(
        &node,
        &[
            label("d-face", "doomed", "faces", "1", "character", 0, 5000, "Zebulon"),
            line("d-line", "doomed", 1000, "the xylophone is broken"),
            scene("d-scene", "doomed", 0, "lighthouse", &vector(0.37)),
            label("k-face", "kept", "faces", "1", "character", 0, 5000, "Monica"),
            label("k-face-2", "kept", "faces", "1", "character", 10_000, 15_000, "Quentin"),
            line("k-line", "kept", 1000, "we were on a break"),
            scene("k-scene", "kept", 0, "kitchen", &vector(0.91)),
        ],
    ));
    node.wait_searchable(Duration::from_secs(30));
    assert_eq!(found(&node, label_clause("Zebulon"), None), BTreeSet::from(["doomed".to_string()]));
    assert!(completions(&node, "Zeb").contains(&"Zebulon".to_string()));
    assert!(completions(&node, "xylo").contains(&"xylophone".to_string()));

    // The whole export is every annotation exactly as sent, and filters narrow it.
    let everything: BTreeSet<String> = export(&node, "").into_iter().collect();
    assert_eq!(everything, sent.iter().cloned().collect::<BTreeSet<_>>(), "the export is the raw store, byte for byte");
    assert_eq!(export(&node, "?asset_id=kept").len(), 4);
    assert_eq!(export(&node, "?series=zebra%20show").len(), 3, "series is matched without case");
    let window: Vec<String> = export(&node, "?from_ms=9000&to_ms=20000");
    assert_eq!(window, vec![sent[4].clone()], "only the annotation overlapping 9..20 s");
    assert!(node.anonymous_client().get("/v1/export").is_err(), "export needs a key");

    // Delete one annotation: its seconds are fused again without it, its label leaves search.
    let reply = delete(&node, "/v1/assets/kept/annotations/k-face-2");
    assert_eq!(reply["deleted_annotations"], 1, "{reply}");
    node.wait_searchable(Duration::from_secs(30));
    assert!(found(&node, label_clause("Quentin"), None).is_empty(), "a deleted annotation is not found");
    assert!(!bucket_ids(&node, "kept").contains("k-face-2"));
    assert!(bucket_ids(&node, "kept").contains("k-face"));
    assert!(client.get("/v1/assets/kept/annotations/k-face-2").is_err());
    assert!(!completions(&node, "Quen").contains(&"Quentin".to_string()), "its label leaves the vocabulary");

    // Delete the whole asset: no search, bucket, suggestion, vector or record is left.
    let reply = delete(&node, "/v1/assets/doomed");
    assert_eq!(reply["deleted_annotations"], 3, "{reply}");
    node.wait_searchable(Duration::from_secs(30));
    assert!(found(&node, label_clause("Zebulon"), None).is_empty());
    let phrase: Clause = serde_json::from_value(json!({"type": "phrase", "text": "the xylophone"})).expect("clause");
    assert!(found(&node, phrase, None).is_empty());
    assert!(!completions(&node, "Zeb").contains(&"Zebulon".to_string()), "{:?}", completions(&node, "Zeb"));
    assert!(!completions(&node, "xylo").contains(&"xylophone".to_string()), "{:?}", completions(&node, "xylo"));
    let near_doomed: Clause =
        serde_json::from_value(json!({"type": "vector", "space": "scene", "vector": vector(0.37), "k": 10})).expect("clause");
    assert_eq!(found(&node, near_doomed, None), BTreeSet::from(["kept".to_string()]), "its vector is gone");
    assert!(bucket_ids(&node, "doomed").is_empty());
    assert!(client.get("/v1/assets/doomed").is_err(), "no record and no annotations: 404");
    assert_eq!(found(&node, label_clause("Monica"), None), BTreeSet::from(["kept".to_string()]), "other assets are untouched");
    assert_eq!(export(&node, "").len(), 3);

    // Idempotent: a second delete succeeds and removes nothing.
    assert_eq!(delete(&node, "/v1/assets/doomed")["deleted_annotations"], 0);
    assert_eq!(delete(&node, "/v1/assets/kept/annotations/k-face-2")["deleted_annotations"], 0);

    // Superseded versions: kept until purged, then gone from the raw store only.
    post(&node, &[label("v1-a", "kept", "places", "1", "scene", 20_000, 25_000, "garage")]);
    post(&node, &[label("v2-a", "kept", "places", "2", "scene", 20_000, 25_000, "garden")]);
    node.wait_searchable(Duration::from_secs(30));
    assert!(client.get("/v1/assets/kept/annotations/v1-a").is_ok(), "a superseded version is kept by default");
    let purged = client.send("POST", "/v1/admin/purge-superseded", "application/json", b"{}").expect("purge");
    let purged: Value = serde_json::from_str(&purged).expect("json");
    assert_eq!((purged["assets"].clone(), purged["deleted_annotations"].clone()), (json!(1), json!(1)), "{purged}");
    assert!(client.get("/v1/assets/kept/annotations/v1-a").is_err());
    assert!(client.get("/v1/assets/kept/annotations/v2-a").is_ok());
    node.wait_searchable(Duration::from_secs(30));
    assert_eq!(found(&node, label_clause("garden"), None), BTreeSet::from(["kept".to_string()]));

    // Deletes are in the log: a restart (and its replay) keeps them deleted.
    node.kill();
    node.start_again();
    node.wait_searchable(Duration::from_secs(60));
    assert!(found(&node, label_clause("Zebulon"), None).is_empty());
    assert!(node.client().get("/v1/assets/doomed").is_err());
    assert!(!completions(&node, "Zeb").contains(&"Zebulon".to_string()));

    // Re-sending a deleted annotation stores it again (a delete is not a tombstone).
    post(&node, &[label("d-face", "doomed", "faces", "1", "character", 0, 5000, "Zebulon")]);
    node.wait_searchable(Duration::from_secs(30));
    assert_eq!(found(&node, label_clause("Zebulon"), None), BTreeSet::from(["doomed".to_string()]));

    // The export loads into an empty node, which then answers like this one.
    let exported = export(&node, "");
    let other = TestNode::start(&dir.path().join("b"), &[]);
    other.client().send("POST", "/v1/annotations", "application/x-ndjson", exported.join("\n").as_bytes()).expect("load the export");
    other.wait_searchable(Duration::from_secs(30));
    for clause in [label_clause("Zebulon"), label_clause("Monica"), label_clause("garden")] {
        assert_eq!(found(&other, clause.clone(), None), found(&node, clause, None));
    }
    assert_eq!(export(&other, "").into_iter().collect::<BTreeSet<_>>(), exported.into_iter().collect::<BTreeSet<_>>());
}

#[test]
fn deletes_refuse_bad_ids_and_need_the_write_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path(), &[]);
    let error = node.client().send("DELETE", "/v1/assets/bad%20id", "", b"").expect_err("bad id");
    assert!(error.to_string().contains("asset_id"), "{error}");
    let error = node.anonymous_client().send("DELETE", "/v1/assets/any", "", b"").expect_err("no key");
    assert!(error.to_string().contains("401") || error.to_string().contains("unauthenticated"), "{error}");
    let error = node.client().get("/v1/export?from_ms=5&to_ms=5").expect_err("empty window");
    assert!(error.to_string().contains("to_ms"), "{error}");
}

/// `retention.purge_superseded_interval_ms`: without any call, the shard leader purges a
/// superseded model version on its own within an interval, and keeps the current one.
#[test]
fn retention_purges_superseded_versions_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path(), &["--set", "retention.purge_superseded_interval_ms=60000"]);
    post(&node, &[label("old", "kept", "places", "1", "scene", 0, 5000, "garage")]);
    post(&node, &[label("new", "kept", "places", "2", "scene", 0, 5000, "garden")]);
    let client = node.client();
    assert!(client.get("/v1/assets/kept/annotations/old").is_ok(), "kept until the first round");
    common::wait_until("the superseded version is purged", Duration::from_secs(150), || {
        client.get("/v1/assets/kept/annotations/old").is_err()
    });
    assert!(client.get("/v1/assets/kept/annotations/new").is_ok(), "the current version stays");
}
