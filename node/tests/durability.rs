//! Durability: ingest while the node is killed with SIGKILL at random points, restart, and check
//! that every acknowledged annotation is in the raw store, fused into exactly the seconds it
//! covers (once), indexed once, and searchable.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sample, wait_until, TestNode};
use rand::{Rng, SeedableRng};
use rushes_client::Client;
use rushes_protocol::{Clause, Filters, SearchRequest};

const BATCH_LINES: usize = 100;

/// Posts until acknowledged; the node may be down or restarting in between.
fn post_until_acknowledged(client: &Client, body: &[u8], deadline: Duration) {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        match client.post_ndjson(body) {
            Ok(reply) => {
                assert_eq!(reply.accepted, body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count());
                return;
            }
            Err(e) if e.is_retryable() && started.elapsed() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => panic!("batch not acknowledged: {e}"),
        }
    }
}

#[test]
fn acknowledged_annotations_survive_sigkill_at_random_points() {
    let seed: u64 = std::env::var("DURABILITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261122);
    eprintln!("durability seed {seed} (set DURABILITY_SEED to replay)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = sample(dir.path(), 1.0, 11);
    let text = std::fs::read_to_string(sample.join("annotations.ndjson")).expect("annotations");
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let batches: Vec<Vec<u8>> = lines.chunks(BATCH_LINES).map(|c| c.join("\n").into_bytes()).collect();
    // Short commit interval so kills also land around index commits.
    let mut node = TestNode::start(&dir.path().join("node"), &["--set", "index.commit_interval_ms=100"]);
    let port = node.port;
    let token = node.token.clone();

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let failure = Arc::new(Mutex::new(None::<String>));
    let writer = {
        let acknowledged = acknowledged.clone();
        let failure = failure.clone();
        let batches = batches.clone();
        std::thread::spawn(move || {
            let client = Client::new(&format!("http://127.0.0.1:{port}")).with_token(Some(token));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for batch in &batches {
                    post_until_acknowledged(&client, batch, Duration::from_secs(120));
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
            }));
            if let Err(panic) = result {
                *failure.lock().unwrap() = Some(format!("{panic:?}"));
            }
        })
    };

    // Kill at random moments: after a random number of further acknowledgements, or right away.
    for round in 0..12 {
        let target = (acknowledged.load(Ordering::SeqCst) + rng.gen_range(0..6)).min(batches.len());
        wait_until("more acknowledgements before the next kill", Duration::from_secs(120), || {
            acknowledged.load(Ordering::SeqCst) >= target || failure.lock().unwrap().is_some()
        });
        eprintln!("kill {round} after {} acknowledged batches", acknowledged.load(Ordering::SeqCst));
        node.restart();
    }
    writer.join().expect("writer thread");
    if let Some(failure) = failure.lock().unwrap().take() {
        panic!("writer failed: {failure}\nnode log:\n{}", node.log());
    }
    assert_eq!(acknowledged.load(Ordering::SeqCst), batches.len());
    // One more crash right after the last acknowledgement, before fusion/indexing can finish.
    node.restart();
    node.wait_searchable(Duration::from_secs(120));

    // Expected state, computed from the input alone.
    let mut expected_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_buckets: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    let mut labels_per_asset: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let asset = v["asset_id"].as_str().unwrap().to_string();
        *expected_counts.entry(asset.clone()).or_default() += 1;
        let (start, end) = (v["start_ms"].as_u64().unwrap(), v["end_ms"].as_u64().unwrap());
        for second in (start / 1000)..=((end - 1) / 1000) {
            expected_buckets.entry((asset.clone(), second)).or_default().push(v["id"].as_str().unwrap().to_string());
        }
        if let Some(label) = v["label"].as_str() {
            labels_per_asset.entry(asset).or_default().insert((v["track"].as_str().unwrap().to_string(), label.to_string()));
        }
    }
    let client = node.client();

    // Raw store: every acknowledged annotation, once.
    for (asset, count) in &expected_counts {
        let view = client.get_json(&format!("/v1/assets/{asset}")).expect("asset");
        assert_eq!(view["annotations"]["total"].as_u64(), Some(*count), "raw annotations of {asset}");
    }

    // Fused: every bucket holds exactly the annotations covering it, none twice.
    let mut fused: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    let mut label_seconds: BTreeMap<(String, String, String), BTreeSet<u64>> = BTreeMap::new();
    for asset in expected_counts.keys() {
        let mut from_ms = 0;
        while from_ms < 4 * 3600 * 1000 {
            let reply =
                client.get_json(&format!("/v1/assets/{asset}/buckets?from_ms={from_ms}&to_ms={}", from_ms + 3_600_000)).expect("buckets");
            for bucket in reply["buckets"].as_array().unwrap() {
                let second = bucket["second"].as_u64().unwrap();
                let mut ids = Vec::new();
                for a in bucket["annotations"].as_array().unwrap() {
                    ids.push(a["annotation_id"].as_str().unwrap().to_string());
                    if let Some(label) = a["label"].as_str() {
                        let key = (asset.clone(), a["track"].as_str().unwrap().to_string(), label.to_string());
                        label_seconds.entry(key).or_default().insert(second);
                    }
                }
                ids.sort();
                fused.insert((asset.clone(), second), ids);
            }
            from_ms += 3_600_000;
        }
    }
    for ids in expected_buckets.values_mut() {
        ids.sort();
    }
    assert_eq!(fused.len(), expected_buckets.len(), "number of fused buckets");
    for (key, ids) in &expected_buckets {
        assert_eq!(fused.get(key), Some(ids), "bucket {key:?}");
    }

    // Indexed once: one document per bucket.
    let status = client.get_json("/v1/cluster").expect("cluster");
    for shard in status["shards"].as_array().unwrap() {
        assert_eq!(shard["index_docs"], shard["buckets"], "documents of shard {}", shard["shard"]);
    }

    // Searchable: every label query returns exactly the seconds whose buckets hold the label.
    for ((asset, track, label), seconds) in &label_seconds {
        let request = SearchRequest {
            clauses: Some(vec![Clause::Label {
                label: label.clone(),
                track: Some(track.clone()),
                min_confidence: Some(0.0),
                weight: None,
            }]),
            filters: Some(Filters { asset_ids: Some(vec![asset.clone()]), ..Default::default() }),
            per_asset: Some(100),
            ..Default::default()
        };
        let response = client.search(&request).expect("search");
        let mut returned = BTreeSet::new();
        for hit in &response.assets {
            for clip in &hit.clips {
                returned.extend((clip.start_ms / 1000)..(clip.end_ms / 1000));
            }
        }
        // per_asset caps clips, so compare only when the answer could fit.
        if response.assets.first().is_some_and(|a| a.clips.len() < 100) {
            assert_eq!(&returned, seconds, "search for {track}={label} on {asset}");
        } else {
            assert!(returned.is_subset(seconds));
        }
    }
}

fn replicas(client: &Client) -> Vec<serde_json::Value> {
    let cluster = client.get_json("/v1/cluster").expect("cluster status");
    cluster["shards"].as_array().into_iter().flatten().flat_map(|s| s["replicas"].as_array().cloned().unwrap_or_default()).collect()
}

/// Entries in each replica's log, of the replicas holding data (at least two, each with more
/// entries than a small byte budget keeps, else the checks show nothing).
fn log_lengths(client: &Client) -> Vec<u64> {
    let lengths: Vec<u64> = replicas(client)
        .iter()
        .filter(|r| r["raw_annotations"].as_u64().unwrap_or(0) > 0)
        .map(|r| {
            let (first, commit) = (r["log_first_index"].as_u64().unwrap_or(0), r["commit_index"].as_u64().unwrap_or(u64::MAX));
            commit + 1 - first.min(commit + 1)
        })
        .collect();
    assert!(lengths.len() >= 2, "the sample fills at least two shards: {lengths:?}");
    lengths
}

/// Consumed log entries are bounded in bytes as well as in number: the count (1,000 by default)
/// alone let a single-node shard of 240 KiB batches keep 200 MB of log per shard that the raw
/// store already held (docs/benchmarks.md).
#[test]
fn the_log_keeps_at_most_its_byte_budget_of_consumed_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = sample(dir.path(), 2.0, 7);
    let data = dir.path().join("data");
    let node = TestNode::start(&data, &["--set", "raft.log_retain_bytes=8192", "--set", "raft.compaction_interval_ms=100"]);
    let loaded = common::load_sample(&node, &sample, BATCH_LINES / 2);
    let written = log_lengths(&node.client());
    assert!(written.iter().all(|&entries| entries > 32), "more entries were written than the budget keeps: {written:?}");
    // Batches of 50 annotations are ~3 KB per shard: an 8 KiB budget keeps about 3 entries,
    // and compaction runs once twice that many accumulated (by count alone, all ~70 stay).
    wait_until("every shard's log to shrink to its byte budget", Duration::from_secs(60), || {
        log_lengths(&node.client()).iter().all(|&entries| entries <= 16)
    });
    // Only consumed entries went: after a restart, everything is still there.
    drop(node);
    let node = TestNode::start(&data, &[]);
    node.wait_searchable(Duration::from_secs(60));
    let stored: u64 = replicas(&node.client()).iter().map(|r| r["raw_annotations"].as_u64().unwrap_or(0)).sum();
    assert_eq!(stored, loaded as u64);
}

/// A clean stop compacts the log of a single-replica shard down to its budget after the last
/// index commit, whenever the periodic compaction last ran (here: never, its interval is an hour).
#[test]
fn a_clean_stop_leaves_only_the_retained_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = sample(dir.path(), 2.0, 7);
    let data = dir.path().join("data");
    let args = ["--set", "raft.log_retain_bytes=8192", "--set", "raft.compaction_interval_ms=3600000"];
    let mut node = TestNode::start(&data, &args);
    let loaded = common::load_sample(&node, &sample, BATCH_LINES / 2);
    node.wait_searchable(Duration::from_secs(60));
    let written = log_lengths(&node.client());
    assert!(written.iter().all(|&entries| entries > 32), "the whole log is still there before the stop: {written:?}");
    node.stop();
    node.start_again();
    node.wait_searchable(Duration::from_secs(60));
    let client = node.client();
    // About 3 entries of ~3 KB, and the new leader's empty entry.
    let kept = log_lengths(&client);
    assert!(kept.iter().all(|&entries| entries <= 8), "the stop compacted the log: {kept:?} (before: {written:?})");
    let stored: u64 = replicas(&client).iter().map(|r| r["raw_annotations"].as_u64().unwrap_or(0)).sum();
    assert_eq!(stored, loaded as u64, "only consumed entries went");
}
