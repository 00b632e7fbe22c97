//! The CLI as people use it (issue "Rushes in people's hands"), each against a real
//! `rushes serve` node:
//!
//! 1. `rushes search` prints each (track, label) of a clip's evidence once with its count, and
//!    in and out points as `HH:MM:SS:FF` at the asset's fps (`HH:MM:SS.mmm` without one).
//! 2. `rushes import` returns only once what it imported is searchable (or says `--no-wait`),
//!    and a wait that cannot finish ends with a clear error within `--wait-timeout`.
//! 3. `rushes import --asset` refuses ids the server refuses, before reading or sending.
//! 4. `embedder.url = "demo:SEED"` makes the demo embedder match a season generated with
//!    another seed than 42.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{load_sample, run_with_deadline, sample, TestNode};
use rushes_protocol::SearchResponse;
use serde_json::{json, Value};

const SEARCHABLE_WITHIN: Duration = Duration::from_secs(60);
const COMMAND_WITHIN: Duration = Duration::from_secs(120);

/// Runs `rushes ARGS` against `node` (its URL and all-scopes key); killed if it outlives `timeout`.
fn rushes(node: &TestNode, args: &[&str], timeout: Duration) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rushes"));
    command.args(args).args(["--server", &node.base_url(), "--token", &node.token]);
    run_with_deadline(&mut command, timeout)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn put_asset(node: &TestNode, asset_id: &str, record: Value) {
    node.client()
        .send("PUT", &format!("/v1/assets/{asset_id}"), "application/json", record.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("PUT asset {asset_id}: {e}"));
}

fn label(id: &str, asset: &str, track: &str, label: &str, start_ms: u64, end_ms: u64) -> Value {
    json!({"id": id, "asset_id": asset, "model": format!("{track}-model"), "model_version": "1", "track": track,
           "start_ms": start_ms, "end_ms": end_ms, "label": label, "confidence": 0.9})
}

fn ingest(node: &TestNode, items: &[Value]) {
    let body = serde_json::to_vec(items).expect("json");
    node.client().send("POST", "/v1/annotations", "application/json", &body).expect("ingest");
}

fn search(node: &TestNode, body: Value) -> SearchResponse {
    let reply = node.client().send("POST", "/v1/search", "application/json", body.to_string().as_bytes()).expect("search");
    serde_json::from_str(&reply).expect("a search response")
}

/// Timecode at 24000/1001 frames per second counted at 24, written independently of the code
/// under test: the nearest frame in exact integer arithmetic.
fn timecode_23_976(frames: u64) -> String {
    let (ff, seconds) = (frames % 24, frames / 24);
    format!("{:02}:{:02}:{:02}:{:02}", seconds / 3600, (seconds / 60) % 60, seconds % 60, ff)
}

fn frames_23_976(ms: u64) -> u64 {
    (2 * ms * 24 + 1001) / 2002
}

// ---------------------------------------------------------------------------------------------
// 1. Search output

#[test]
fn search_lists_each_label_once_with_frame_timecodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(&dir.path().join("node"), &[]);
    put_asset(&node, "tc-ep", json!({"title": "At 23.976", "fps": 23.976, "duration_ms": 600_000}));
    put_asset(&node, "raw-ep", json!({"title": "No rate", "duration_ms": 600_000}));
    let mut items = Vec::new();
    for asset in ["tc-ep", "raw-ep"] {
        // Three face tracks of one character across one scene: three annotations of one label.
        items.push(label(&format!("{asset}-f1"), asset, "character", "Joey", 61_500, 70_000));
        items.push(label(&format!("{asset}-f2"), asset, "character", "Joey", 65_000, 75_000));
        items.push(label(&format!("{asset}-f3"), asset, "character", "Joey", 68_000, 72_000));
        items.push(label(&format!("{asset}-p1"), asset, "scene", "kitchen", 60_000, 90_000));
    }
    ingest(&node, &items);
    node.wait_searchable(SEARCHABLE_WITHIN);

    let output = rushes(&node, &["search", "Joey in the kitchen"], COMMAND_WITHIN);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "rushes search: {} stdout {stdout} stderr {}", output.status, text(&output.stderr));
    let reply = search(&node, json!({"q": "Joey in the kitchen", "mode": "intersection", "per_asset": 5, "limit": 10}));
    let clips: BTreeMap<&str, (u64, u64)> = reply
        .assets
        .iter()
        .map(|asset| {
            assert_eq!(asset.clips.len(), 1, "{asset:?}");
            (asset.asset_id.as_str(), (asset.clips[0].start_ms, asset.clips[0].end_ms))
        })
        .collect();
    assert_eq!(clips.keys().copied().collect::<Vec<_>>(), vec!["raw-ep", "tc-ep"], "{stdout}");
    let clip_lines: Vec<&str> = stdout.lines().filter(|line| line.starts_with("  ")).collect();
    assert_eq!(clip_lines.len(), 2, "{stdout}");
    for line in &clip_lines {
        assert!(line.ends_with("Joey (character) ×3, kitchen (scene)"), "each label once with its count: {line:?}");
        assert_eq!(line.matches("Joey").count(), 1, "{line:?}");
    }

    // tc-ep: HH:MM:SS:FF at 24000/1001, counted at 24, the out point the first frame after.
    let (start_ms, end_ms) = clips["tc-ep"];
    let first = frames_23_976(start_ms);
    let after = frames_23_976(end_ms).max(first + 1);
    let expected = format!("  {} - {}  ", timecode_23_976(first), timecode_23_976(after));
    assert!(stdout.contains("tc-ep  At 23.976  score "), "{stdout}");
    assert!(stdout.contains("[23.976 fps, timecode 24 NDF]"), "{stdout}");
    assert!(stdout.contains(&expected), "expected {expected:?} for [{start_ms}, {end_ms}) in:\n{stdout}");
    // raw-ep has no fps: milliseconds, and the reason.
    let (start_ms, end_ms) = clips["raw-ep"];
    let clock = |ms: u64| format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, (ms / 60_000) % 60, (ms / 1000) % 60, ms % 1000);
    assert!(stdout.contains(&format!("  {} - {}  ", clock(start_ms), clock(end_ms))), "{stdout}");
    assert!(stdout.contains("[no fps in the asset record: times in HH:MM:SS.mmm]"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// 2. Import waits until searchable

#[test]
fn import_returns_once_searchable() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Commits every 3 s: a search right after the last acknowledgement would miss most of it.
    let node = TestNode::start(&dir.path().join("node"), &["--set", "index.commit_interval_ms=3000"]);
    let season = sample(dir.path(), 1.0, 7);
    let assets: Vec<String> = std::fs::read_to_string(season.join("assets.ndjson"))
        .expect("assets")
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("asset line")["asset_id"].as_str().expect("asset_id").to_string())
        .collect();
    assert!(assets.len() >= 2, "{assets:?}");
    let annotations = season.join("annotations.ndjson");
    let annotations = annotations.to_str().expect("utf-8 path");
    let started = Instant::now();
    let output = rushes(&node, &["import", annotations, "--batch", "500"], COMMAND_WITHIN);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "rushes import: {} stdout {stdout} stderr {}", output.status, text(&output.stderr));
    assert!(stdout.contains(&format!("searchable: {} assets confirmed in ", assets.len())), "{stdout}");
    eprintln!("import + wait took {:.1} s: {stdout}", started.elapsed().as_secs_f64());

    // At once, with no waiting: every replica holding imported annotations has indexed all it
    // applied (a shard that got none of them may still be indexing its first, empty entry: the
    // import promises nothing about it), and an ordinary (eventual) search finds every
    // episode's main character.
    let status = node.client().get_json("/v1/cluster").expect("cluster");
    let mut holding = 0;
    for shard in status["shards"].as_array().expect("shards") {
        for replica in shard["replicas"].as_array().expect("replicas") {
            if replica["raw_annotations"].as_u64().unwrap_or(0) > 0 {
                holding += 1;
                assert_eq!(replica["indexed_index"], replica["applied_index"], "right after the import: {replica}");
            }
        }
    }
    assert!(holding > 0, "no replica holds the import: {status}");
    let reply = search(&node, json!({"clauses": [{"type": "label", "track": "character", "label": "Joey"}], "limit": 100}));
    assert_eq!(reply.total_assets, assets.len(), "every imported episode is searchable right away");

    // --no-wait says so (the re-sent annotations are duplicates: nothing changes).
    let output = rushes(&node, &["import", annotations, "--no-wait"], COMMAND_WITHIN);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", text(&output.stderr));
    assert!(stdout.contains("(0 new)") && stdout.contains("--no-wait: not waiting until searchable"), "{stdout}");
    assert!(!stdout.contains("searchable: "), "{stdout}");
}

#[test]
fn import_wait_is_bounded_and_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No index commit for 10 minutes: nothing becomes searchable during this test.
    let node = TestNode::start(&dir.path().join("node"), &["--set", "index.commit_interval_ms=600000"]);
    let file = dir.path().join("few.ndjson");
    let lines: Vec<String> =
        (0..5).map(|i| label(&format!("a{i}"), "slow-ep", "character", "Joey", i * 1000, i * 1000 + 900).to_string()).collect();
    std::fs::write(&file, lines.join("\n")).expect("write ndjson");
    let started = Instant::now();
    let output = rushes(&node, &["import", file.to_str().expect("utf-8 path"), "--wait-timeout", "1"], COMMAND_WITHIN);
    let elapsed = started.elapsed();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(!output.status.success(), "not searchable in 1 s must fail: {stdout} {stderr}");
    assert!(stdout.contains("imported 5 annotations (5 new)"), "the import itself is reported: {stdout}");
    assert!(
        stderr.contains("not confirmed searchable within --wait-timeout 1 s")
            && stderr.contains("\"slow-ep\"")
            && stderr.contains("--no-wait"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(15), "bounded by --wait-timeout: {elapsed:?}");
    // The annotations are stored all the same.
    let view = node.client().get_json("/v1/assets/slow-ep").expect("stored");
    assert_eq!(view["annotations"]["total"], 5, "{view}");
    // A bad timeout is refused before anything is sent.
    let output = rushes(&node, &["import", file.to_str().expect("utf-8 path"), "--wait-timeout", "0"], COMMAND_WITHIN);
    assert!(!output.status.success() && text(&output.stderr).contains("--wait-timeout 0"), "{}", text(&output.stderr));
}

// ---------------------------------------------------------------------------------------------
// 3. --asset follows the server's rule

#[test]
fn import_asset_flag_follows_the_server_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let srt = dir.path().join("episode.srt");
    std::fs::write(&srt, "1\n00:00:01,000 --> 00:00:02,500\nHow you doin'?\n\n2\n00:00:03,000 --> 00:00:04,000\nHi.\n").expect("srt");
    let srt = srt.to_str().expect("utf-8 path");
    let longest = "a".repeat(128);
    let too_long = "a".repeat(129);

    // The server's rule, as the server applies it.
    let client = node.client();
    let refused = client.send("PUT", &format!("/v1/assets/{too_long}"), "application/json", b"{}");
    assert!(matches!(refused, Err(rushes_client::ClientError::Status { status: 422, .. })), "{refused:?}");

    for (bad, problem) in [(too_long.as_str(), "is 129 bytes; the limit is 128"), ("ep 1", "contains ' '"), ("", "must not be empty")] {
        // A file that does not exist: the id is refused before the file is read.
        let output = rushes(&node, &["import", "/nonexistent/episode.srt", "--asset", bad, "--language", "en"], COMMAND_WITHIN);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "--asset {bad:?} accepted: {stderr}");
        assert!(stderr.contains("--asset") && stderr.contains(problem), "{stderr}");
        assert!(stderr.contains("1 to 128 bytes of A-Z a-z 0-9 - _ . :"), "the rule is named: {stderr}");
        assert!(!stderr.contains("cannot read"), "nothing is read: {stderr}");
        // Also for a real file, and before --language is looked at: nothing is sent.
        let output = rushes(&node, &["import", srt, "--asset", bad], COMMAND_WITHIN);
        assert!(!output.status.success() && text(&output.stderr).contains(problem), "{}", text(&output.stderr));
    }
    let view = client.get_json(&format!("/v1/assets/{too_long}"));
    assert!(matches!(view, Err(rushes_client::ClientError::Status { status: 404 | 422, .. })), "nothing stored: {view:?}");

    // The longest id the server takes, the CLI takes too (and waits until it is searchable).
    let output = rushes(&node, &["import", srt, "--asset", &longest, "--language", "en"], COMMAND_WITHIN);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", text(&output.stderr));
    assert!(stdout.contains("imported 2 cues (2 new)") && stdout.contains("searchable: 1 assets confirmed"), "{stdout}");
    let view = client.get_json(&format!("/v1/assets/{longest}")).expect("stored");
    assert_eq!(view["annotations"]["total"], 2, "{view}");
}

// ---------------------------------------------------------------------------------------------
// 4. The demo embedder of the season's seed

/// Of the `k` annotations nearest to the embedded `place` (exact search), the share labelled
/// `place`, and the best similarity.
fn semantic_precision(node: &TestNode, place: &str, k: usize) -> (f64, f64, usize) {
    let reply = search(
        node,
        json!({"clauses": [{"type": "vector", "space": "scene", "text": place, "k": k, "exact": true}],
               "mode": "union", "per_asset": 100, "limit": 100}),
    );
    let mut seen = BTreeMap::new();
    for asset in &reply.assets {
        for clip in &asset.clips {
            for m in clip.matches.iter().filter(|m| m.similarity.is_some()) {
                seen.insert((asset.asset_id.clone(), m.annotation_id.clone()), (m.label.clone(), m.similarity.unwrap_or(0.0)));
            }
        }
    }
    assert!(!seen.is_empty(), "the vector clause found nothing: {reply:?}");
    let right = seen.values().filter(|(label, _)| label.as_deref() == Some(place)).count();
    let best = seen.values().map(|(_, similarity)| *similarity).fold(f64::MIN, f64::max);
    (right as f64 / seen.len() as f64, best, seen.len())
}

/// The place most scene vectors of the season show, and how many show it.
fn commonest_place(season: &Path) -> (String, usize) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(season.join("annotations.ndjson")).expect("annotations").lines() {
        let annotation: Value = serde_json::from_str(line).expect("annotation line");
        if let (Some(place), Some(_)) = (annotation["label"].as_str(), annotation.get("vector")) {
            *counts.entry(place.to_string()).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(_, count)| *count).expect("scene vectors")
}

#[test]
fn demo_seed_matches_the_generated_season() {
    let dir = tempfile::tempdir().expect("tempdir");
    let season = sample(dir.path(), 0.5, 1);
    let (place, scenes) = commonest_place(&season);
    // As many nearest annotations as there are scenes of that place: all of them, if the
    // embedder points where the generator put them.
    let k = scenes.min(100);
    let seeded = ["--set", "embedder.url=demo:1"];
    let mut node = TestNode::start(&dir.path().join("node"), &seeded);
    load_sample(&node, &season, 2000);
    node.wait_searchable(SEARCHABLE_WITHIN);
    let (precision_seed_1, best_seed_1, hits) = semantic_precision(&node, &place, k);

    // The same data served as if it were the default season (seed 42).
    node.kill();
    node.extra_args = ["--set", "embedder.url=demo"].iter().map(|s| s.to_string()).collect();
    node.start_again();
    node.wait_searchable(SEARCHABLE_WITHIN);
    let (precision_seed_42, best_seed_42, _) = semantic_precision(&node, &place, k);
    eprintln!(
        "{place:?} ({scenes} scenes): seed 1 precision {precision_seed_1:.2} (best similarity {best_seed_1:.2}, {hits} hits); \
         seed 42 precision {precision_seed_42:.2} (best {best_seed_42:.2})"
    );
    assert!(precision_seed_1 >= 0.9 && best_seed_1 > 0.8, "seed 1 finds {place}: {precision_seed_1} {best_seed_1}");
    assert!(best_seed_42 < 0.5, "seed 42's vectors do not match this season: {best_seed_42}");
    assert!(precision_seed_1 > precision_seed_42, "{precision_seed_1} vs {precision_seed_42}");

    // A seed that is not a number is refused, naming the key and the form.
    node.kill();
    let output = run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_rushes")).args(["serve", "--print-config", "--set", "embedder.url=demo:one"]),
        COMMAND_WITHIN,
    );
    let stderr = text(&output.stderr);
    assert!(!output.status.success() && stderr.contains("embedder.url = \"demo:one\"") && stderr.contains("\"demo:SEED\""), "{stderr}");
    let output = run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_rushes")).args(["serve", "--print-config", "--set", "embedder.url=demo:1"]),
        COMMAND_WITHIN,
    );
    assert!(output.status.success() && text(&output.stdout).contains("url = \"demo:1\""), "{}", text(&output.stderr));
}
