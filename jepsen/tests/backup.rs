//! Backup and restore across cluster shapes: `rushes backup` of a three-node cluster (4 shards,
//! RF 3) while a client keeps writing, restored with `rushes restore` on one node with 2
//! shards. The restored node answers every search of the data loaded before as the cluster does,
//! and of the writes made during the backup it holds, per source shard, a prefix in the order
//! they were acknowledged (each shard at one point of its log), covering every write
//! acknowledged before the backup began.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rushes_jepsen::http::api_key;
use rushes_jepsen::{poll_until, rushes_binary, ClusterOptions, Http, LocalCluster};
use rushes_protocol::peer::shard_for_asset;
use serde_json::{json, Value};

const CAST: &[&str] = &["Joey", "Monica", "Rachel", "Ross", "Chandler", "Phoebe"];
const SOURCE_SHARDS: u32 = 4;

fn annotation(asset: &str, id: &str, start_ms: u64, label: &str) -> String {
    json!({
        "id": id, "asset_id": asset, "model": "faces", "model_version": "1", "track": "character",
        "start_ms": start_ms, "end_ms": start_ms + 3000, "label": label, "confidence": 0.9
    })
    .to_string()
}

fn answer(http: &Http, url: &str, label: &str) -> Vec<(String, Vec<(u64, u64)>)> {
    let search = json!({ "clauses": [{"type": "label", "track": "character", "label": label}], "limit": 100 });
    let reply = http.post_json(url, &search).unwrap_or_else(|e| panic!("search {label}: {e}"));
    assert_eq!(reply["shards"]["failed"], 0, "{reply}");
    reply["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let clips = a["clips"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            (
                a["asset_id"].as_str().unwrap_or("").to_string(),
                clips.iter().map(|c| (c["start_ms"].as_u64().unwrap_or(0), c["end_ms"].as_u64().unwrap_or(0))).collect(),
            )
        })
        .collect()
}

fn rushes(args: &[&str]) {
    let key = api_key().unwrap_or_default();
    let output = Command::new(rushes_binary()).args(args).args(["--token", &key]).output().expect("run rushes");
    assert!(output.status.success(), "rushes {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_backup_of_a_cluster_under_writes_restores_on_one_node_with_other_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = LocalCluster::start_with(&dir.path().join("source"), ClusterOptions::new(3, SOURCE_SHARDS, 3));
    source.wait_for_leaders(Duration::from_secs(60));
    let http = Http::new(Duration::from_secs(30));

    // 24 episodes, 40 faces each, posted through every node in turn.
    for episode in 0..24u64 {
        let lines: Vec<String> = (0..40u64)
            .map(|i| annotation(&format!("ep-{episode}"), &format!("f-{i}"), i * 5000, CAST[((episode + i) % CAST.len() as u64) as usize]))
            .collect();
        let node = source.node(episode % 3 + 1);
        let ok = poll_until(Duration::from_secs(30), || {
            http.send("POST", &node.url("/v1/annotations"), "application/x-ndjson", lines.join("\n").as_bytes()).is_ok()
        });
        assert!(ok, "episode {episode} not acknowledged\n{}", source.diagnostics());
        http.send(
            "PUT",
            &node.url(&format!("/v1/assets/ep-{episode}")),
            "application/json",
            format!(r#"{{"title": "Episode {episode}"}}"#).as_bytes(),
        )
        .expect("record");
    }
    source.wait_converged(Duration::from_secs(60));

    // A writer keeps adding one asset per request through node 2 while the backup runs.
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, url, acked, stop) = (http.clone(), source.node(2).url("/v1/annotations"), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let line = annotation(&format!("live-{n}"), "w", 0, "Writer");
                if poll_until(Duration::from_secs(30), || http.send("POST", &url, "application/x-ndjson", line.as_bytes()).is_ok()) {
                    acked.lock().expect("lock").push((n, Instant::now()));
                } else {
                    break;
                }
            }
        })
    };
    assert!(poll_until(Duration::from_secs(30), || acked.lock().expect("lock").len() >= 10), "the writer is not going");
    let started = Instant::now();
    let out = dir.path().join("backup");
    rushes(&["backup", "--out", &out.display().to_string(), "--server", &format!("http://{}", source.node(1).http_addr)]);
    let finished = Instant::now();
    assert!(
        poll_until(Duration::from_secs(30), || acked.lock().expect("lock").last().is_some_and(|(_, at)| *at > finished)),
        "the writer stopped before the backup ended"
    );
    stop.store(true, Ordering::Release);
    writer.join().expect("writer");
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.iter().any(|(_, at)| *at > started && *at < finished), "no write was acknowledged during the backup");
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["shard_count"], SOURCE_SHARDS);

    let target = LocalCluster::start_with(&dir.path().join("target"), ClusterOptions::new(1, 2, 1));
    target.wait_for_leaders(Duration::from_secs(60));
    rushes(&["restore", &out.display().to_string(), "--server", &format!("http://{}", target.node(1).http_addr)]);

    // What was there before the backup: the same answers, once indexed.
    for label in CAST {
        let expected = answer(&http, &source.node(3).url("/v1/search"), label);
        assert!(!expected.is_empty());
        let same = poll_until(Duration::from_secs(60), || answer(&http, &target.node(1).url("/v1/search"), label) == expected);
        assert!(
            same,
            "{label}: the restored node answers {:?}, the cluster {expected:?}",
            answer(&http, &target.node(1).url("/v1/search"), label)
        );
    }
    let record = http.get_json(&target.node(1).url("/v1/assets/ep-7")).expect("record");
    assert_eq!(record["title"], "Episode 7", "{record}");

    // The writes of the backup's window: a prefix per source shard.
    let restored: BTreeSet<u64> = http
        .get(&target.node(1).url("/v1/export"))
        .expect("export")
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|v| v["asset_id"].as_str().and_then(|a| a.strip_prefix("live-")).and_then(|n| n.parse().ok()))
        .collect();
    let writer_total = acked.len();
    assert!(restored.len() < writer_total, "writes after the backup are not in it");
    for shard in 0..SOURCE_SHARDS {
        let order: Vec<&(u64, Instant)> =
            acked.iter().filter(|(n, _)| shard_for_asset(&format!("live-{n}"), SOURCE_SHARDS) == shard).collect();
        let held: Vec<bool> = order.iter().map(|(n, _)| restored.contains(n)).collect();
        let prefix = held.iter().take_while(|h| **h).count();
        assert!(held[prefix..].iter().all(|h| !h), "shard {shard}: the restored writes are not a prefix: {held:?}");
        let before = order.iter().filter(|(_, at)| *at < started).count();
        assert!(prefix >= before, "shard {shard}: {before} writes acknowledged before the backup, only {prefix} restored");
    }
}
