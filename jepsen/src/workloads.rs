//! The workloads' clients: each runs one operation at a time against its node and records it
//! in the history with when it was invoked and how it ended.
//!
//! - **set**: batches adding annotations to several assets at once (so to several shards), and
//!   reads, half of them strong: of one asset's fused buckets, of one annotation this client
//!   tried to add (`GET /v1/assets/{asset}/annotations/{id}`), or searches for the word only one
//!   such annotation says (every other element is a dialogue line saying a word of its own).
//! - **register**: `PUT /v1/assets/{key}` of a record carrying a unique value, and strong
//!   reads of the record (`GET /v1/assets/{key}?consistency=strong`).
//! - **versions**: version N of a model for an asset replaces version N-1 (four annotations in
//!   one batch), and reads of the asset's buckets.
//!
//! A write that ends without a definite answer (a timeout, a reset connection, a 5xx) is
//! recorded as `info` and never re-sent: the checkers decide from the reads whether it took
//! effect. The client then continues as a new process (Jepsen's convention), since the old
//! operation may still be in flight.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::history::{Action, Op, Outcome};
use crate::http::{encode_segment, Http, HttpError};

/// Which workload a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    Set,
    Register,
    Versions,
}

impl WorkloadKind {
    pub fn parse(text: &str) -> Result<WorkloadKind, String> {
        match text {
            "set" => Ok(WorkloadKind::Set),
            "register" => Ok(WorkloadKind::Register),
            "versions" | "model-version" => Ok(WorkloadKind::Versions),
            other => Err(format!("unknown workload {other:?}: use set, register or versions")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Set => "set",
            WorkloadKind::Register => "register",
            WorkloadKind::Versions => "versions",
        }
    }

    /// The assets (or register keys) the workload uses.
    pub fn assets(self) -> Vec<String> {
        match self {
            WorkloadKind::Set => (0..SET_ASSETS).map(|i| format!("set-{i:02}")).collect(),
            WorkloadKind::Register => (0..REGISTER_KEYS).map(|i| format!("reg-{i}")).collect(),
            WorkloadKind::Versions => (0..VERSION_ASSETS).map(|i| format!("ver-{i}")).collect(),
        }
    }
}

pub const SET_ASSETS: usize = 16;
/// Annotations of one set batch, each on a different asset.
pub const SET_BATCH: usize = 6;
pub const REGISTER_KEYS: usize = 5;
pub const VERSION_ASSETS: usize = 4;
/// Annotations per model version.
pub const VERSION_ANNOTATIONS: u64 = 4;
/// The model the versions workload replaces.
pub const VERSION_MODEL: &str = "jepsen-faces";
/// The model of the set workload's annotations.
pub const SET_MODEL: &str = "jepsen";

/// The history being recorded, shared by every client.
#[derive(Clone, Default)]
pub struct Recorder {
    ops: Arc<Mutex<Vec<Op>>>,
    started: Arc<Mutex<Option<Instant>>>,
}

impl Recorder {
    pub fn new(started: Instant) -> Recorder {
        Recorder { ops: Arc::new(Mutex::new(Vec::new())), started: Arc::new(Mutex::new(Some(started))) }
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        let started = self.started.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(Instant::now);
        started.elapsed().as_nanos() as u64
    }

    /// Appends a completed operation (its index is its place in the history).
    pub fn record(&self, mut op: Op) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        op.index = ops.len() as u64;
        ops.push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a write's error is classified: a definite refusal (the request was invalid, nothing was
/// done) or unknown.
pub fn write_outcome(error: &HttpError) -> Outcome {
    match error.status() {
        Some(400 | 401 | 403 | 404 | 409 | 413 | 415 | 422) => Outcome::Fail,
        _ => Outcome::Info,
    }
}

/// Whether the set element with counter `k` is a dialogue line (findable by search) rather than
/// an object label: every other one.
pub fn is_dialogue(k: u64) -> bool {
    k % 2 == 1
}

/// The word only element `e{client}-{k}`'s dialogue says: its id without the dash, `e{client}x{k}`
/// (one token for the index: letters and digits only; never a season/episode filter in `q`).
pub fn search_word(id: &str) -> String {
    id.replace('-', "x")
}

/// One annotation line of the set workload: element `asset/id`, whose counter is `k`. A dialogue
/// line saying [`search_word`] when [`is_dialogue`]`(k)`, else an object labelled `thing-N` (N
/// runs over 0..20, so the final phase's label searches `thing-0`..`thing-3` find some).
fn set_annotation(asset: &str, id: &str, k: u64) -> serde_json::Value {
    let start_ms = (k % 3_000) * 1_000;
    if is_dialogue(k) {
        serde_json::json!({
            "id": id, "asset_id": asset, "model": SET_MODEL, "model_version": "1", "track": "dialogue",
            "start_ms": start_ms, "end_ms": start_ms + 1_000, "text": format!("line {}", search_word(id)), "language": "en",
            "confidence": 0.9,
        })
    } else {
        serde_json::json!({
            "id": id, "asset_id": asset, "model": SET_MODEL, "model_version": "1", "track": "object",
            "start_ms": start_ms, "end_ms": start_ms + 1_000, "label": format!("thing-{}", (k / 2) % 20), "confidence": 0.9,
        })
    }
}

/// Version `version` of the versions workload's model for `asset`: its annotation ids are
/// `m{version}-{j}`.
pub fn version_batch(asset: &str, version: u64) -> Vec<serde_json::Value> {
    (0..VERSION_ANNOTATIONS)
        .map(|j| {
            serde_json::json!({
                "id": format!("m{version}-{j}"), "asset_id": asset, "model": VERSION_MODEL,
                "model_version": version.to_string(), "track": "character",
                "start_ms": j * 1_000, "end_ms": (j + 2) * 1_000, "label": format!("Version {version}"),
            })
        })
        .collect()
}

/// The version an element `asset/m{version}-{j}` belongs to.
pub fn version_of(element: &str) -> Option<u64> {
    let id = element.split_once('/')?.1;
    id.strip_prefix('m')?.split_once('-')?.0.parse().ok()
}

/// Reads `asset`'s fused buckets for the workload's hour; returns the elements (`asset/id`)
/// of `model` present.
pub fn read_buckets(http: &Http, base_url: &str, asset: &str, model: &str, strong: bool) -> Result<Vec<String>, HttpError> {
    let mut url = format!("{base_url}/v1/assets/{}/buckets?from_ms=0&to_ms=3600000", encode_segment(asset));
    if strong {
        url.push_str("&consistency=strong");
    }
    let reply = http.get_json(&url)?;
    let mut seen = BTreeSet::new();
    for bucket in reply["buckets"].as_array().map(Vec::as_slice).unwrap_or_default() {
        for annotation in bucket["annotations"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if annotation["model"].as_str() == Some(model) {
                if let Some(id) = annotation["annotation_id"].as_str() {
                    seen.insert(format!("{asset}/{id}"));
                }
            }
        }
    }
    Ok(seen.into_iter().collect())
}

/// An annotation GET of element `asset/id`: what it returned (`asset/id` when present, nothing
/// on a 404 `not_found`; the element the reply holds if it is another one).
pub fn read_annotation(http: &Http, base_url: &str, asset: &str, id: &str, strong: bool) -> Result<Vec<String>, HttpError> {
    let mut url = format!("{base_url}/v1/assets/{}/annotations/{}", encode_segment(asset), encode_segment(id));
    if strong {
        url.push_str("?consistency=strong");
    }
    match http.get_json(&url) {
        Ok(reply) => match (reply["asset_id"].as_str(), reply["id"].as_str()) {
            (Some(asset), Some(id)) => Ok(vec![format!("{asset}/{id}")]),
            _ => Err(HttpError::Transport { url, message: format!("the reply is not an annotation: {:.200}", reply.to_string()) }),
        },
        Err(HttpError::Status { status: 404, body, .. })
            if serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|b| b["error"]["code"] == "not_found") =>
        {
            Ok(vec![])
        }
        Err(e) => Err(e),
    }
}

/// A search for the word only element `asset/id` says (`q` holding it as a quoted phrase: exact,
/// no fuzzy matching, never a label or filter). Returns the element when the reply has a hit on
/// `asset`, and, for every hit on another asset, the annotations its clips cite as `other/id`
/// (`other/?` when they cite none) so the checker reports them. A reply missing a shard
/// (`shards.failed > 0`) proves no absence: it is an error.
pub fn search_element(http: &Http, base_url: &str, asset: &str, id: &str, strong: bool) -> Result<Vec<String>, HttpError> {
    let url = format!("{base_url}/v1/search");
    let consistency = if strong { "strong" } else { "eventual" };
    let body = serde_json::json!({
        "q": format!("\"{}\"", search_word(id)), "consistency": consistency, "limit": SET_ASSETS, "evidence": true,
    });
    let reply = http.post_json(&url, &body)?;
    let failed = reply["shards"]["failed"].as_u64();
    if failed != Some(0) {
        return Err(HttpError::Transport {
            url,
            message: format!("partial search reply: {} of {} shards failed", reply["shards"]["failed"], reply["shards"]["total"]),
        });
    }
    let Some(hits) = reply["assets"].as_array() else {
        return Err(HttpError::Transport { url, message: format!("the reply has no assets: {:.200}", reply.to_string()) });
    };
    let mut seen = BTreeSet::new();
    for hit in hits {
        let hit_asset = hit["asset_id"].as_str().unwrap_or("?");
        if hit_asset == asset {
            seen.insert(format!("{asset}/{id}"));
            continue;
        }
        let mut cited = false;
        for clip in hit["clips"].as_array().map(Vec::as_slice).unwrap_or_default() {
            for m in clip["matches"].as_array().map(Vec::as_slice).unwrap_or_default() {
                if let Some(annotation) = m["annotation_id"].as_str() {
                    seen.insert(format!("{hit_asset}/{annotation}"));
                    cited = true;
                }
            }
        }
        if !cited {
            seen.insert(format!("{hit_asset}/?"));
        }
    }
    Ok(seen.into_iter().collect())
}

/// A strong read of register `key`: the value its record's title carries, or `None` (404).
pub fn read_register(http: &Http, base_url: &str, key: &str) -> Result<Option<u64>, HttpError> {
    let url = format!("{base_url}/v1/assets/{}?consistency=strong", encode_segment(key));
    match http.get_json(&url) {
        Ok(reply) => {
            let title = reply["title"].as_str().unwrap_or_default();
            match title.strip_prefix("value ").and_then(|v| v.parse().ok()) {
                Some(value) => Ok(Some(value)),
                None => Err(HttpError::Transport { url, message: format!("register {key} holds an unexpected record: {reply}") }),
            }
        }
        Err(HttpError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// State shared by all clients of a run.
pub struct Shared {
    pub workload: WorkloadKind,
    pub urls: Vec<String>,
    pub recorder: Recorder,
    pub stop: AtomicBool,
    /// Next register value (unique across the run).
    pub next_value: AtomicU64,
    /// Next model version per versions-workload asset.
    pub next_version: Vec<AtomicU64>,
    pub seed: u64,
}

impl Shared {
    pub fn new(workload: WorkloadKind, urls: Vec<String>, recorder: Recorder, seed: u64) -> Shared {
        Shared {
            workload,
            urls,
            recorder,
            stop: AtomicBool::new(false),
            next_value: AtomicU64::new(1),
            next_version: (0..VERSION_ASSETS).map(|_| AtomicU64::new(1)).collect(),
            seed,
        }
    }
}

/// Runs client `client` until `shared.stop`: node `client % nodes` first, the next node after
/// every unknown outcome.
pub fn run_client(shared: &Shared, client: usize, concurrency: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(shared.seed.wrapping_mul(1_000_003).wrapping_add(client as u64));
    // Longer than the nodes' request timeout (10 s), so the node answers 503 before we give up.
    let http = Http::new(Duration::from_secs(12));
    let mut process = client as u64;
    let mut node_index = client % shared.urls.len();
    let mut counter = 0u64;
    // Set: the elements this client tried to add (any outcome), as (asset index, id), and the
    // positions in it of the dialogue ones.
    let mut tried: Vec<(usize, String)> = Vec::new();
    let mut tried_dialogue: Vec<usize> = Vec::new();
    let assets = shared.workload.assets();
    while !shared.stop.load(Ordering::Acquire) {
        let base = &shared.urls[node_index];
        let node = node_index as u64 + 1;
        let start_ns = shared.recorder.now_ns();
        let (action, result): (Action, Result<(), HttpError>) = match shared.workload {
            WorkloadKind::Set => {
                // 60% adds; reads: 20% buckets, 10% annotation GETs, 10% searches (buckets until
                // there is something to look up).
                let roll = rng.gen_range(0..10);
                if roll < 6 {
                    let mut chosen = BTreeSet::new();
                    while chosen.len() < SET_BATCH {
                        chosen.insert(rng.gen_range(0..assets.len()));
                    }
                    let mut lines = Vec::new();
                    let mut elements = Vec::new();
                    for asset_index in chosen {
                        counter += 1;
                        let asset = &assets[asset_index];
                        let id = format!("e{client}-{counter}");
                        lines.push(set_annotation(asset, &id, counter).to_string());
                        elements.push(format!("{asset}/{id}"));
                        if is_dialogue(counter) {
                            tried_dialogue.push(tried.len());
                        }
                        tried.push((asset_index, id));
                    }
                    let body = lines.join("\n");
                    let result = http.send("POST", &format!("{base}/v1/annotations"), "application/x-ndjson", body.as_bytes()).map(|_| ());
                    (Action::Add { elements }, result)
                } else {
                    let strong = rng.gen_bool(0.5);
                    let lookup = match roll {
                        8 if !tried.is_empty() => Some(("annotation", rng.gen_range(0..tried.len()))),
                        9 if !tried_dialogue.is_empty() => Some(("search", tried_dialogue[rng.gen_range(0..tried_dialogue.len())])),
                        _ => None,
                    };
                    match lookup {
                        Some((via, position)) => {
                            let (asset_index, id) = &tried[position];
                            let asset = &assets[*asset_index];
                            let elements = vec![format!("{asset}/{id}")];
                            let result = if via == "search" {
                                search_element(&http, base, asset, id, strong)
                            } else {
                                read_annotation(&http, base, asset, id, strong)
                            };
                            let via = via.to_string();
                            match result {
                                Ok(seen) => (Action::Lookup { via, strong, elements, seen }, Ok(())),
                                Err(e) => (Action::Lookup { via, strong, elements, seen: vec![] }, Err(e)),
                            }
                        }
                        None => {
                            let asset = assets[rng.gen_range(0..assets.len())].clone();
                            match read_buckets(&http, base, &asset, SET_MODEL, strong) {
                                Ok(seen) => (Action::Read { asset, strong, seen }, Ok(())),
                                Err(e) => (Action::Read { asset, strong, seen: vec![] }, Err(e)),
                            }
                        }
                    }
                }
            }
            WorkloadKind::Register => {
                let key = assets[rng.gen_range(0..assets.len())].clone();
                if rng.gen_bool(0.5) {
                    let value = shared.next_value.fetch_add(1, Ordering::AcqRel);
                    let body = serde_json::json!({ "title": format!("value {value}") }).to_string();
                    let url = format!("{base}/v1/assets/{}", encode_segment(&key));
                    let result = http.send("PUT", &url, "application/json", body.as_bytes()).map(|_| ());
                    (Action::Write { key, value }, result)
                } else {
                    match read_register(&http, base, &key) {
                        Ok(value) => (Action::RegisterRead { key, value }, Ok(())),
                        Err(e) => (Action::RegisterRead { key, value: None }, Err(e)),
                    }
                }
            }
            WorkloadKind::Versions => {
                let asset_index = rng.gen_range(0..assets.len());
                let asset = assets[asset_index].clone();
                if rng.gen_bool(0.4) {
                    let version = shared.next_version[asset_index].fetch_add(1, Ordering::AcqRel);
                    let body: Vec<String> = version_batch(&asset, version).iter().map(|v| v.to_string()).collect();
                    let result = http
                        .send("POST", &format!("{base}/v1/annotations"), "application/x-ndjson", body.join("\n").as_bytes())
                        .map(|_| ());
                    (Action::Version { asset, model: VERSION_MODEL.to_string(), version }, result)
                } else {
                    let strong = rng.gen_bool(0.5);
                    match read_buckets(&http, base, &asset, VERSION_MODEL, strong) {
                        Ok(seen) => (Action::Read { asset, strong, seen }, Ok(())),
                        Err(e) => (Action::Read { asset, strong, seen: vec![] }, Err(e)),
                    }
                }
            }
        };
        let end_ns = shared.recorder.now_ns();
        let is_write = matches!(action, Action::Add { .. } | Action::Write { .. } | Action::Version { .. });
        let (outcome, error) = match &result {
            Ok(()) => (Outcome::Ok, None),
            // A read that failed observed nothing: it certainly changed nothing.
            Err(e) if !is_write => (Outcome::Fail, Some(e.to_string())),
            Err(e) => (write_outcome(e), Some(e.to_string())),
        };
        shared.recorder.record(Op { index: 0, process, node, action, outcome, start_ns, end_ns, error });
        if let Err(e) = &result {
            if outcome == Outcome::Info {
                process += concurrency as u64;
            }
            node_index = (node_index + 1) % shared.urls.len();
            // A refused or unreachable node: do not spin on it.
            if e.is_retryable() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_carry_their_version() {
        let batch = version_batch("ver-1", 12);
        assert_eq!(batch.len(), VERSION_ANNOTATIONS as usize);
        assert_eq!(batch[0]["id"], "m12-0");
        assert_eq!(batch[0]["model_version"], "12");
        assert_eq!(version_of("ver-1/m12-3"), Some(12));
        assert_eq!(version_of("ver-1/e1-3"), None);
    }

    #[test]
    fn refusals_fail_and_everything_else_is_unknown() {
        let status = |status| HttpError::Status { url: String::new(), status, body: String::new() };
        assert_eq!(write_outcome(&status(400)), Outcome::Fail);
        assert_eq!(write_outcome(&status(409)), Outcome::Fail);
        assert_eq!(write_outcome(&status(503)), Outcome::Info);
        assert_eq!(write_outcome(&status(500)), Outcome::Info);
        assert_eq!(write_outcome(&status(429)), Outcome::Info);
        assert_eq!(write_outcome(&HttpError::Transport { url: String::new(), message: "timeout".into() }), Outcome::Info);
    }

    #[test]
    fn a_set_annotation_is_a_valid_ingest_line() {
        let limits = rushes_protocol::validate::IngestLimits::default();
        for (id, k) in [("e1-7", 7), ("e1-8", 8), ("e12-2999", 2_999), ("e0-3000", 3_000)] {
            let line = set_annotation("set-01", id, k);
            let parsed: rushes_protocol::Annotation = serde_json::from_value(line.clone()).expect("parses as an annotation");
            assert_eq!(parsed.asset_id, "set-01");
            let body = line.to_string();
            let valid = rushes_protocol::validate::parse_annotation(&body, &limits).unwrap_or_else(|e| panic!("{body} is refused: {e:?}"));
            assert_eq!(valid.id, id);
        }
        let dialogue = set_annotation("set-01", "e3-17", 17);
        assert_eq!((dialogue["track"].as_str(), dialogue["language"].as_str()), (Some("dialogue"), Some("en")));
        assert_eq!(dialogue["text"], "line e3x17");
        assert!(dialogue.get("label").is_none());
        let object = set_annotation("set-01", "e3-18", 18);
        assert_eq!((object["track"].as_str(), object["label"].as_str()), (Some("object"), Some("thing-9")));
    }

    #[test]
    fn search_words_are_one_token_unique_to_their_element() {
        assert_eq!(search_word("e3-17"), "e3x17");
        assert!(search_word("e12-345").chars().all(|c| c.is_ascii_alphanumeric()));
        // "e1-23" and "e12-3" must not say the same word.
        assert_ne!(search_word("e1-23"), search_word("e12-3"));
        assert!(is_dialogue(1) && !is_dialogue(2));
    }
}
