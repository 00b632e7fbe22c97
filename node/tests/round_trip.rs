//! Round trip through HTTP on loopback: ingest a generated season, search, and check the clips
//! against the generator's ground truth (never against our own output). Then `rushes rebuild`
//! must give identical search results.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{load_sample, sample, TestNode};
use rushes_protocol::{Clause, SearchRequest, SearchResponse};
use rushes_sample::{EpisodeTruth, TruthInterval};

const BUCKET_MS: u64 = 1000;

fn truths(sample: &std::path::Path) -> Vec<EpisodeTruth> {
    std::fs::read_to_string(sample.join("truth.ndjson"))
        .expect("truth file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("truth line"))
        .collect()
}

/// Seconds that any true interval with this label touches (lenient at the edges).
fn touched_seconds(intervals: &[TruthInterval], label: &str) -> BTreeSet<u64> {
    intervals.iter().filter(|i| i.label == label).flat_map(|i| (i.start_ms / BUCKET_MS)..=((i.end_ms - 1) / BUCKET_MS)).collect()
}

/// Returned seconds per asset.
fn returned_seconds(response: &SearchResponse) -> BTreeMap<String, BTreeSet<u64>> {
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for asset in &response.assets {
        let seconds = out.entry(asset.asset_id.clone()).or_default();
        for clip in &asset.clips {
            seconds.extend((clip.start_ms / BUCKET_MS)..(clip.end_ms / BUCKET_MS));
        }
    }
    out
}

struct Score {
    precision: f64,
    recall: f64,
}

/// Precision: returned seconds the truth touches. Recall: truth seconds (at least half the
/// bucket covered) that were returned.
fn score(
    returned: &BTreeMap<String, BTreeSet<u64>>,
    truth_touched: &BTreeMap<String, BTreeSet<u64>>,
    truth_core: &BTreeMap<String, BTreeSet<u64>>,
) -> Score {
    let empty = BTreeSet::new();
    let (mut hit, mut total) = (0usize, 0usize);
    for (asset, seconds) in returned {
        let truth = truth_touched.get(asset).unwrap_or(&empty);
        hit += seconds.intersection(truth).count();
        total += seconds.len();
    }
    let (mut found, mut wanted) = (0usize, 0usize);
    for (asset, seconds) in truth_core {
        let got = returned.get(asset).unwrap_or(&empty);
        found += seconds.intersection(got).count();
        wanted += seconds.len();
    }
    Score { precision: hit as f64 / total.max(1) as f64, recall: found as f64 / wanted.max(1) as f64 }
}

fn search(node: &TestNode, request: &SearchRequest) -> SearchResponse {
    node.client().search(request).unwrap_or_else(|e| panic!("search {request:?} failed: {e}"))
}

fn wide(request: SearchRequest) -> SearchRequest {
    SearchRequest { per_asset: Some(100), limit: Some(1000), ..request }
}

#[test]
fn ingest_search_and_rebuild_against_ground_truth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = sample(dir.path(), 2.0, 7);
    let truths = truths(&sample);
    let mut node = TestNode::start(&dir.path().join("node"), &[]);
    let ingested = load_sample(&node, &sample, 1000);
    node.wait_searchable(Duration::from_secs(120));

    // Raw store: counts per asset and bytes exactly as sent.
    let annotation_lines = std::fs::read_to_string(sample.join("annotations.ndjson")).expect("annotations");
    let mut per_asset: BTreeMap<String, u64> = BTreeMap::new();
    let mut parsed = Vec::new();
    for line in annotation_lines.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("json");
        *per_asset.entry(value["asset_id"].as_str().expect("asset").to_string()).or_default() += 1;
        parsed.push((line, value));
    }
    assert_eq!(parsed.len(), ingested);
    for (asset, count) in &per_asset {
        let view = node.client().get_json(&format!("/v1/assets/{asset}")).expect("asset view");
        assert_eq!(view["annotations"]["total"].as_u64(), Some(*count), "raw count of {asset}");
        assert!(view["title"].is_string(), "asset record stored");
    }
    for (line, value) in parsed.iter().step_by(97) {
        let raw = node
            .client()
            .get(&format!("/v1/assets/{}/annotations/{}", value["asset_id"].as_str().unwrap(), value["id"].as_str().unwrap()))
            .expect("raw annotation");
        assert_eq!(raw, *line, "raw store keeps the exact bytes");
    }

    // Fusion, end to end: bucket 10..40 of the first asset hold exactly the annotations that
    // overlap them (highest model version only; the sample has one version per model).
    let first_asset = truths[0].asset_id.clone();
    let buckets = node.client().get_json(&format!("/v1/assets/{first_asset}/buckets?from_ms=10000&to_ms=40000")).expect("buckets");
    for bucket in buckets["buckets"].as_array().expect("buckets array") {
        let second = bucket["second"].as_u64().expect("second");
        let (lo, hi) = (second * BUCKET_MS, (second + 1) * BUCKET_MS);
        let mut expected: Vec<&str> = parsed
            .iter()
            .filter(|(_, v)| v["asset_id"] == first_asset.as_str())
            .filter(|(_, v)| v["start_ms"].as_u64().unwrap() < hi && v["end_ms"].as_u64().unwrap() > lo)
            .map(|(_, v)| v["id"].as_str().unwrap())
            .collect();
        expected.sort();
        let mut got: Vec<&str> = bucket["annotations"].as_array().unwrap().iter().map(|a| a["annotation_id"].as_str().unwrap()).collect();
        got.sort();
        assert_eq!(got, expected, "bucket {second} of {first_asset}");
    }

    // 1. A character alone.
    let character = "Joey";
    let touched: BTreeMap<String, BTreeSet<u64>> =
        truths.iter().map(|t| (t.asset_id.clone(), touched_seconds(&t.characters, character))).collect();
    let core: BTreeMap<String, BTreeSet<u64>> =
        truths.iter().map(|t| (t.asset_id.clone(), t.seconds_where("character", character, BUCKET_MS))).collect();
    let response = search(&node, &wide(SearchRequest { q: Some(character.into()), ..Default::default() }));
    let s = score(&returned_seconds(&response), &touched, &core);
    assert!(s.precision >= 0.95, "label precision {:.3}", s.precision);
    assert!(s.recall >= 0.9, "label recall {:.3}", s.recall);

    // 2. Character + place, intersection: only seconds where both co-occur.
    let place = "kitchen";
    let touched: BTreeMap<String, BTreeSet<u64>> = truths
        .iter()
        .map(|t| {
            (
                t.asset_id.clone(),
                touched_seconds(&t.characters, character).intersection(&touched_seconds(&t.scenes, place)).copied().collect(),
            )
        })
        .collect();
    let core: BTreeMap<String, BTreeSet<u64>> = truths
        .iter()
        .map(|t| {
            let both = t
                .seconds_where("character", character, BUCKET_MS)
                .intersection(&t.seconds_where("scene", place, BUCKET_MS))
                .copied()
                .collect();
            (t.asset_id.clone(), both)
        })
        .collect();
    let response = search(&node, &wide(SearchRequest { q: Some(format!("{character} in the {place}")), ..Default::default() }));
    let s = score(&returned_seconds(&response), &touched, &core);
    assert!(core.values().any(|s| !s.is_empty()), "the sample has {character} in the {place}");
    assert!(s.precision >= 0.95, "intersection precision {:.3}", s.precision);
    assert!(s.recall >= 0.9, "intersection recall {:.3}", s.recall);
    for asset in &response.assets {
        for clip in &asset.clips {
            let clauses: BTreeSet<usize> = clip.matches.iter().map(|m| m.clause).collect();
            assert_eq!(clauses.len(), 2, "every clip has evidence for both clauses");
        }
    }

    // 3. Default per_asset is 5, and union covers at least what intersection does.
    let response = search(&node, &SearchRequest { q: Some(character.into()), ..Default::default() });
    assert!(response.assets.iter().all(|a| a.clips.len() <= 5 && !a.clips.is_empty()));
    assert_eq!(response.shards.failed, 0);
    let union = search(
        &node,
        &wide(SearchRequest {
            q: Some(format!("{character} {place}")),
            mode: Some(rushes_protocol::SearchMode::Union),
            ..Default::default()
        }),
    );
    let union_seconds: usize = returned_seconds(&union).values().map(|s| s.len()).sum();
    let both_seconds: usize =
        returned_seconds(&search(&node, &wide(SearchRequest { q: Some(format!("{character} {place}")), ..Default::default() })))
            .values()
            .map(|s| s.len())
            .sum();
    assert!(union_seconds > both_seconds, "union {union_seconds} > intersection {both_seconds}");

    // 4. A quoted line: every line that says it is found, and nothing else.
    let phrase = truths
        .iter()
        .flat_map(|t| t.dialogue.iter())
        .map(|l| l.text.clone())
        .find(|t| t.split_whitespace().count() >= 4)
        .expect("a dialogue line");
    let words: Vec<&str> = phrase.split_whitespace().take(4).collect();
    let phrase = words.join(" ");
    let response = search(&node, &wide(SearchRequest { q: Some(format!("\"{phrase}\"")), ..Default::default() }));
    let returned = returned_seconds(&response);
    let mut expected_lines = 0;
    let mut found_lines = 0;
    for truth in &truths {
        for line in truth.lines_containing(&phrase) {
            expected_lines += 1;
            let seconds = (line.start_ms / BUCKET_MS)..=((line.end_ms - 1) / BUCKET_MS);
            if returned.get(&truth.asset_id).is_some_and(|r| seconds.clone().any(|s| r.contains(&s))) {
                found_lines += 1;
            }
        }
    }
    assert!(expected_lines > 0);
    assert!(found_lines as f64 / expected_lines as f64 >= 0.9, "phrase recall {found_lines}/{expected_lines} for {phrase:?}");
    for asset in &response.assets {
        for clip in &asset.clips {
            assert!(clip.matches.iter().any(|m| m.text.as_deref().is_some_and(|t| t.to_lowercase().contains(&words[0].to_lowercase()))));
        }
    }

    // 5. A place by its embedding: hits land in that place's scenes.
    let centroid: Vec<f64> = rushes_sample::location_centroid(7, place, 512).into_iter().map(f64::from).collect();
    let response = search(
        &node,
        &wide(SearchRequest {
            clauses: Some(vec![Clause::Vector {
                space: "scene".into(),
                vector: Some(centroid),
                text: None,
                k: Some(20),
                min_similarity: Some(0.5),
                exact: None,
                ef: None,
                metric: None,
                weight: None,
            }]),
            ..Default::default()
        }),
    );
    let touched: BTreeMap<String, BTreeSet<u64>> = truths.iter().map(|t| (t.asset_id.clone(), touched_seconds(&t.scenes, place))).collect();
    let s = score(&returned_seconds(&response), &touched, &BTreeMap::new());
    assert!(!response.assets.is_empty());
    assert!(s.precision >= 0.9, "vector precision {:.3}", s.precision);

    // 6. Filters: one asset only.
    let response = search(
        &node,
        &SearchRequest {
            q: Some(character.into()),
            filters: Some(rushes_protocol::Filters { asset_ids: Some(vec![first_asset.clone()]), ..Default::default() }),
            ..Default::default()
        },
    );
    assert!(response.assets.iter().all(|a| a.asset_id == first_asset));
    // Only the shard owning the asset is asked; the others are skipped, not failed.
    let shards = &response.shards;
    assert!(shards.total > 1, "the test needs several shards: {shards:?}");
    assert_eq!((shards.ok, shards.failed, shards.skipped), (shards.total, 0, shards.total - 1));

    // Rebuild from raw: identical results.
    let queries = vec![
        SearchRequest { q: Some(character.into()), ..Default::default() },
        SearchRequest { q: Some(format!("{character} in the {place}")), per_asset: Some(10), ..Default::default() },
        SearchRequest { q: Some(format!("\"{phrase}\"")), ..Default::default() },
        SearchRequest { q: Some("Monica coffee shop".into()), mode: Some(rushes_protocol::SearchMode::Union), ..Default::default() },
    ];
    let strip = |mut r: SearchResponse| {
        r.took_ms = 0;
        serde_json::to_value(r).expect("json")
    };
    let before: Vec<serde_json::Value> = queries.iter().map(|q| strip(search(&node, q))).collect();
    node.stop();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_rushes"))
        .args(["rebuild", "--data-dir"])
        .arg(&node.data_dir)
        .status()
        .expect("run rebuild");
    assert!(status.success(), "rebuild failed");
    node.start_again();
    node.wait_searchable(Duration::from_secs(60));
    let after: Vec<serde_json::Value> = queries.iter().map(|q| strip(search(&node, q))).collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if let Some(difference) = first_difference(b, a, "") {
            panic!("rebuild changed the results of query {i} ({:?}): {difference}", queries[i]);
        }
    }
}

/// The first JSON path where two values differ, with both values.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let (xa, yb) = (x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null));
                if let Some(d) = first_difference(xa, yb, &format!("{path}.{key}")) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} items before, {} after", x.len(), y.len()));
            }
            x.iter().zip(y).enumerate().find_map(|(i, (xa, yb))| first_difference(xa, yb, &format!("{path}[{i}]")))
        }
        _ if a != b => Some(format!("{path}: {a} before, {b} after")),
        _ => None,
    }
}
