//! `rushes backup` and `rushes restore`: a backup restored on another shard count answers every
//! search as the source did, a damaged backup is refused, and a backup taken while writes and
//! deletes continue holds each shard exactly as it was at one point of its log: a prefix of the
//! writes that shard acknowledged, never a mix.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{load_sample, sample, TestNode};
use rushes_client::Client;
use rushes_node::cli::backup;
use rushes_protocol::peer::shard_for_asset;
use rushes_protocol::{SearchRequest, SearchResponse};
use serde_json::Value;

fn search(client: &Client, q: &str) -> SearchResponse {
    let request = SearchRequest { q: Some(q.into()), limit: Some(20), ..Default::default() };
    client.search(&request).unwrap_or_else(|e| panic!("search {q:?}: {e}"))
}

/// What a search answered, without timings: assets in order with their clips.
fn answer(response: &SearchResponse) -> Vec<(String, Vec<(u64, u64)>)> {
    response.assets.iter().map(|a| (a.asset_id.clone(), a.clips.iter().map(|c| (c.start_ms, c.end_ms)).collect())).collect()
}

fn exported(client: &Client) -> BTreeSet<String> {
    client.get("/v1/export").expect("export").lines().map(str::to_string).collect()
}

/// Labels, a label with a place (labels and the scene vector), a name with a meaning (hybrid).
const QUERIES: &[&str] = &["Joey", "Monica in the kitchen", "Gunther", "Rachel", "Chandler somewhere they cook", "Phoebe"];

#[test]
fn a_backup_restores_on_another_shard_count_and_answers_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let season = sample(dir.path(), 1.0, 7);
    let source = TestNode::start(&dir.path().join("source"), &[]);
    let loaded = load_sample(&source, &season, 2_000);
    source.client().send("DELETE", "/v1/assets/s01e01", "", b"").expect("delete an episode");
    source.wait_searchable(Duration::from_secs(60));

    // The CLI, as an operator runs it.
    let out = dir.path().join("backup");
    let status = Command::new(env!("CARGO_BIN_EXE_rushes"))
        .args(["backup", "--out"])
        .arg(&out)
        .args(["--server", &source.base_url(), "--token", &source.token])
        .status()
        .expect("run rushes backup");
    assert!(status.success(), "rushes backup failed");
    let manifest = backup::verify(&out).expect("the backup verifies");
    assert_eq!(manifest.shard_count, 4);
    assert!(manifest.annotations > 0 && (manifest.annotations as usize) < loaded, "the deleted episode is not in it");
    assert!(manifest.asset_records > 0);

    // Restored on two shards instead of four.
    let target = TestNode::start(&dir.path().join("target"), &["--set", "cluster.shards=2"]);
    let status = Command::new(env!("CARGO_BIN_EXE_rushes"))
        .arg("restore")
        .arg(&out)
        .args(["--server", &target.base_url(), "--token", &target.token])
        .status()
        .expect("run rushes restore");
    assert!(status.success(), "rushes restore failed");
    target.wait_searchable(Duration::from_secs(60));
    assert_eq!(exported(&target.client()), exported(&source.client()), "the same raw annotations, byte for byte");
    for &q in QUERIES {
        let (a, b) = (search(&source.client(), q), search(&target.client(), q));
        assert_eq!(answer(&a), answer(&b), "{q:?}");
        for (x, y) in a.assets.iter().zip(&b.assets) {
            assert!((x.score - y.score).abs() <= 1e-3 * x.score.abs().max(1.0), "{q:?}: {} scored {} and {}", x.asset_id, x.score, y.score);
            assert_eq!(x.title, y.title, "asset records came back");
        }
    }
    assert!(target.client().get("/v1/assets/s01e01").is_err(), "the deleted episode stays deleted");

    // A damaged file is found before anything is sent.
    let largest = manifest.shards.iter().max_by_key(|s| s.bytes).expect("shards");
    let file = out.join(&largest.file);
    let mut bytes = std::fs::read(&file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&file, bytes).expect("damage");
    let error = backup::restore(&target.client(), &out, |_| {}).expect_err("damaged");
    assert!(error.to_string().contains("damaged"), "{error}");
}

/// One writer's operations, in the order they were acknowledged.
#[derive(Clone, Debug)]
enum Op {
    Write(u64),
    Delete(u64),
}

fn live(n: u64) -> String {
    format!("live-{n}")
}

#[test]
fn a_backup_under_writes_and_deletes_holds_each_shard_at_one_point_of_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let season = sample(dir.path(), 4.0, 3);
    let source = TestNode::start(&dir.path().join("source"), &[]);
    load_sample(&source, &season, 2_000);
    source.wait_searchable(Duration::from_secs(60));

    // Every operation below is one entry in its shard's log: the log index a shard's backup
    // records says exactly how many of them it holds.
    let status = source.client().get_json("/v1/cluster").expect("status");
    let baseline: Vec<u64> = (0..4).map(|s| status["shards"][s]["replicas"][0]["commit_index"].as_u64().expect("commit index")).collect();

    // A writer adds one asset per request and deletes every third one two steps later.
    let acked: Arc<Mutex<Vec<(Op, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (source.client(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let line = format!(
                    r#"{{"id":"w","asset_id":"{}","model":"faces","model_version":"1","track":"character","start_ms":0,"end_ms":1000,"label":"Writer"}}"#,
                    live(n)
                );
                client.post_ndjson_retrying(line.as_bytes(), 20).expect("write");
                acked.lock().expect("lock").push((Op::Write(n), Instant::now()));
                if n % 3 == 0 && n > 2 {
                    client.send("DELETE", &format!("/v1/assets/{}", live(n - 2)), "", b"").expect("delete");
                    acked.lock().expect("lock").push((Op::Delete(n - 2), Instant::now()));
                }
            }
        })
    };
    common::wait_until("the writer is going", Duration::from_secs(30), || acked.lock().expect("lock").len() >= 20);
    let started = Instant::now();
    let out = dir.path().join("backup");
    let manifest = backup::backup(&source.client(), &out, |_| {}).expect("backup under writes");
    let finished = Instant::now();
    common::wait_until("the writer went on after the backup", Duration::from_secs(30), || {
        acked.lock().expect("lock").last().is_some_and(|(_, at)| *at > finished)
    });
    stop.store(true, Ordering::Release);
    writer.join().expect("writer");
    let ops = acked.lock().expect("lock").clone();
    let during = ops.iter().filter(|(_, at)| *at > started && *at < finished).count();
    assert!(during > 0, "no write was acknowledged while the backup ran: the check would prove nothing");
    assert!(manifest.shards.iter().any(|s| s.index > s.started_at_index), "no shard had commands to replay: {:?}", manifest.shards);

    let target = TestNode::start(&dir.path().join("target"), &["--set", "cluster.shards=3"]);
    backup::restore(&target.client(), &out, |_| {}).expect("restore");
    target.wait_searchable(Duration::from_secs(60));
    let present: BTreeSet<String> = target
        .client()
        .get("/v1/export")
        .expect("export")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["asset_id"].as_str().filter(|a| a.starts_with("live-")).map(str::to_string))
        .collect();

    // Per source shard: the restored assets are exactly what the prefix of that shard's
    // acknowledged operations up to the recorded index leaves; that prefix covers everything
    // acknowledged before the backup started, and nothing sent after it finished.
    for shard in 0..manifest.shard_count {
        let shard_ops: Vec<&(Op, Instant)> = ops
            .iter()
            .filter(|(op, _)| {
                let n = match op {
                    Op::Write(n) | Op::Delete(n) => *n,
                };
                shard_for_asset(&live(n), manifest.shard_count) == shard
            })
            .collect();
        let restored: BTreeSet<String> = present.iter().filter(|a| shard_for_asset(a, manifest.shard_count) == shard).cloned().collect();
        let mut state: BTreeSet<String> = BTreeSet::new();
        let mut matching = Vec::new();
        for k in 0..=shard_ops.len() {
            if state == restored {
                matching.push(k);
            }
            if let Some((op, _)) = shard_ops.get(k) {
                match op {
                    Op::Write(n) => state.insert(live(*n)),
                    Op::Delete(n) => state.remove(&live(*n)),
                };
            }
        }
        let before = shard_ops.iter().filter(|(_, at)| *at < started).count();
        let sent_by_end = shard_ops.iter().filter(|(_, at)| *at < finished).count() + 1;
        let at_index = (manifest.shards[shard as usize].index - baseline[shard as usize]) as usize;
        assert!(
            before <= at_index && at_index <= sent_by_end,
            "shard {shard}: index {} holds {at_index} operations, outside {before}..={sent_by_end}",
            manifest.shards[shard as usize].index
        );
        assert!(
            matching.contains(&at_index),
            "shard {shard}: the restored assets {restored:?} are not the shard at index {} ({at_index} operations; prefixes that \
             match: {matching:?})",
            manifest.shards[shard as usize].index
        );
    }
}
