//! A new model_version of a model on an asset replaces that model's earlier output on that
//! asset in buckets and search, leaves other models and other assets alone, and keeps the old
//! version in the raw store. Arrival order does not matter: the highest version wins.

mod common;

use std::time::Duration;

use common::TestNode;
use rushes_protocol::{Clause, Filters, SearchRequest};
use serde_json::json;

fn annotation(
    id: &str,
    asset: &str,
    model: &str,
    version: &str,
    track: &str,
    start_ms: u64,
    end_ms: u64,
    label: &str,
) -> serde_json::Value {
    json!({"id": id, "asset_id": asset, "model": model, "model_version": version, "track": track,
           "start_ms": start_ms, "end_ms": end_ms, "label": label, "confidence": 0.9})
}

fn post(node: &TestNode, items: &[serde_json::Value]) {
    let body = serde_json::to_vec(items).expect("json");
    node.client().send("POST", "/v1/annotations", "application/json", &body).expect("ingest");
}

fn labels_found(node: &TestNode, asset: &str, label: &str) -> usize {
    let request = SearchRequest {
        clauses: Some(vec![Clause::Label { label: label.into(), track: None, min_confidence: None, weight: None }]),
        filters: Some(Filters { asset_ids: Some(vec![asset.into()]), ..Default::default() }),
        ..Default::default()
    };
    node.client().search(&request).expect("search").assets.iter().map(|a| a.clips.len()).sum()
}

fn bucket_ids(node: &TestNode, asset: &str, second: u64) -> Vec<String> {
    let reply = node
        .client()
        .get_json(&format!("/v1/assets/{asset}/buckets?from_ms={}&to_ms={}", second * 1000, second * 1000 + 1000))
        .expect("buckets");
    let mut ids: Vec<String> = reply["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .flat_map(|b| {
            b["annotations"].as_array().expect("annotations").iter().map(|a| a["annotation_id"].as_str().unwrap_or("").to_string())
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_new_model_version_replaces_only_its_own_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path(), &[]);
    post(
        &node,
        &[
            annotation("f1-a", "ep1", "faces", "1.9", "character", 0, 10_000, "Joey"),
            annotation("f1-b", "ep1", "faces", "1.9", "character", 20_000, 30_000, "Joey"),
            annotation("p1", "ep1", "places", "1", "scene", 0, 30_000, "kitchen"),
            annotation("f1-other", "ep2", "faces", "1.9", "character", 0, 5_000, "Joey"),
        ],
    );
    node.wait_searchable(Duration::from_secs(30));
    assert!(labels_found(&node, "ep1", "Joey") > 0);

    // Version 1.10 of the faces model (newer than 1.9) now sees Monica in 5..8 s only.
    post(&node, &[annotation("f2-a", "ep1", "faces", "1.10", "character", 5_000, 8_000, "Monica")]);
    node.wait_searchable(Duration::from_secs(30));
    assert_eq!(labels_found(&node, "ep1", "Joey"), 0, "the old faces output no longer matches on ep1");
    assert_eq!(labels_found(&node, "ep1", "Monica"), 1);
    assert_eq!(
        bucket_ids(&node, "ep1", 6),
        vec!["f2-a".to_string(), "p1".to_string()],
        "bucket holds the new faces output and the other model"
    );
    assert_eq!(bucket_ids(&node, "ep1", 25), vec!["p1".to_string()], "old faces output is gone where the new version says nothing");
    assert!(labels_found(&node, "ep2", "Joey") > 0, "other assets keep their faces output");
    assert_eq!(labels_found(&node, "ep1", "kitchen"), 1, "other models are untouched");

    // The raw store keeps every version.
    let view = node.client().get_json("/v1/assets/ep1").expect("asset");
    assert_eq!(view["annotations"]["by_track"]["character"], 3);

    // An older version arriving late changes nothing: the highest version wins.
    post(&node, &[annotation("f0-late", "ep1", "faces", "1.2", "character", 5_000, 9_000, "Ross")]);
    node.wait_searchable(Duration::from_secs(30));
    assert_eq!(labels_found(&node, "ep1", "Ross"), 0);
    assert_eq!(bucket_ids(&node, "ep1", 6), vec!["f2-a".to_string(), "p1".to_string()]);
}
