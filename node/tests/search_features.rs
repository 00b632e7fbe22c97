//! HTTP-level tests of the search features beyond the core contract (docs/search.md): subtitle
//! import (HTTP and CLI), phrases across lines, stemming, fuzzy words, highlights, clip curation,
//! sequences and co-occurrence, pagination and grouping, hybrid and exact vector search, explain
//! and suggest. Each test runs one real `rushes serve` node on small hand-made data with exact
//! times, so every expectation is exact.
//!
//! Checks are collected rather than stopping at the first one, so one run reports every broken
//! feature of a test; the test fails at the end with the list.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_with_deadline, TestNode};
use rushes_client::ClientError;
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/subtitles");
const SEARCHABLE_WITHIN: Duration = Duration::from_secs(30);
/// Status of an `invalid_field` error (docs/api.md's error table).
const INVALID_FIELD: u16 = 422;

// ---------------------------------------------------------------------------------------------
// Harness

struct Harness {
    name: &'static str,
    node: TestNode,
    // Dropped after the node (fields drop in declaration order), so the node dies first.
    _dir: tempfile::TempDir,
    failures: RefCell<Vec<String>>,
    checks: RefCell<usize>,
    started: Instant,
}

impl Harness {
    fn start(name: &'static str, args: &[&str]) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = TestNode::start(&dir.path().join("node"), args);
        Harness { name, node, _dir: dir, failures: RefCell::new(Vec::new()), checks: RefCell::new(0), started: Instant::now() }
    }

    fn check(&self, ok: bool, message: impl FnOnce() -> String) {
        *self.checks.borrow_mut() += 1;
        if !ok {
            self.failures.borrow_mut().push(message());
        }
    }

    fn check_eq<T: PartialEq + Debug>(&self, what: &str, got: T, expected: T) {
        self.check(got == expected, || format!("{what}: expected {expected:?}, got {got:?}"));
    }

    fn finish(self) {
        let failures = self.failures.borrow();
        let checks = *self.checks.borrow();
        eprintln!("[{}] {} checks, {} failed, {:.1}s", self.name, checks, failures.len(), self.started.elapsed().as_secs_f64());
        if !failures.is_empty() {
            let list: Vec<String> = failures.iter().enumerate().map(|(i, f)| format!("  {}. {f}", i + 1)).collect();
            panic!("{}: {} of {checks} checks failed:\n{}", self.name, failures.len(), list.join("\n"));
        }
    }

    fn url(&self) -> String {
        self.node.base_url()
    }

    /// Any request: (status, JSON body, or the text as a JSON string when it is not JSON).
    fn call(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let parse = |text: String| serde_json::from_str(&text).unwrap_or(Value::String(text));
        match self.node.client().send(method, path, content_type, body) {
            Ok(text) => (200, parse(text)),
            Err(ClientError::Status { status, body, .. }) => (status, parse(body)),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        match self.node.client().get(path) {
            Ok(text) => (200, serde_json::from_str(&text).unwrap_or(Value::String(text))),
            Err(ClientError::Status { status, body, .. }) => (status, serde_json::from_str(&body).unwrap_or(Value::String(body))),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    fn put_asset(&self, asset_id: &str, record: Value) {
        let (status, body) = self.call("PUT", &format!("/v1/assets/{asset_id}"), "application/json", record.to_string().as_bytes());
        assert_eq!(status, 200, "PUT asset {asset_id}: {body}");
    }

    fn ingest(&self, items: &[Value]) -> Value {
        let body = serde_json::to_vec(items).expect("json");
        let (status, reply) = self.call("POST", "/v1/annotations", "application/json", &body);
        assert_eq!(status, 200, "ingest of {} annotations: {reply}", items.len());
        reply
    }

    fn searchable(&self) {
        self.node.wait_searchable(SEARCHABLE_WITHIN);
    }

    /// POST /v1/search; a non-200 is recorded as a failure and answers with no assets.
    fn search(&self, what: &str, body: Value) -> Value {
        let (status, reply) = self.call("POST", "/v1/search", "application/json", body.to_string().as_bytes());
        self.check(status == 200, || format!("{what}: search {body} answered {status}: {reply}"));
        if status == 200 {
            reply
        } else {
            json!({"assets": [], "failed": true})
        }
    }

    /// POST /v1/search that must be refused with an `invalid_field` error naming `field`.
    fn search_refused(&self, what: &str, body: Value, field: &str) {
        let (status, reply) = self.call("POST", "/v1/search", "application/json", body.to_string().as_bytes());
        self.check_error(what, status, &reply, INVALID_FIELD, "invalid_field", Some(field), &[]);
    }

    #[allow(clippy::too_many_arguments)]
    fn check_error(&self, what: &str, status: u16, reply: &Value, want_status: u16, code: &str, field: Option<&str>, words: &[&str]) {
        let error = &reply["error"];
        self.check(status == want_status && error["code"] == code, || {
            format!("{what}: expected {want_status} {code}, got {status}: {reply}")
        });
        if let Some(field) = field {
            self.check(error["field"] == field, || format!("{what}: expected the error to name field {field:?}, got {reply}"));
        }
        let message = error["message"].as_str().unwrap_or("");
        for word in words {
            self.check(message.contains(word), || format!("{what}: expected the error message to contain {word:?}, got {message:?}"));
        }
    }
}

/// Asset ids in reply order.
fn ids(reply: &Value) -> Vec<String> {
    reply["assets"].as_array().map(|a| a.iter().map(|x| x["asset_id"].as_str().unwrap_or("?").to_string()).collect()).unwrap_or_default()
}

fn asset<'a>(reply: &'a Value, asset_id: &str) -> Option<&'a Value> {
    reply["assets"].as_array()?.iter().find(|a| a["asset_id"] == asset_id)
}

/// (start_ms, end_ms) of an asset's clips, in reply order.
fn clips(reply: &Value, asset_id: &str) -> Vec<(u64, u64)> {
    asset(reply, asset_id)
        .and_then(|a| a["clips"].as_array())
        .map(|c| c.iter().map(|c| (c["start_ms"].as_u64().unwrap_or(0), c["end_ms"].as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

/// Every evidence match of every clip of the reply.
fn matches(reply: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for a in reply["assets"].as_array().into_iter().flatten() {
        for c in a["clips"].as_array().into_iter().flatten() {
            out.extend(c["matches"].as_array().into_iter().flatten().cloned());
        }
    }
    out
}

/// The text slices a match's highlights point at; an invalid range shows as `<bad a..b>`.
fn highlighted(m: &Value) -> Vec<String> {
    let text = m["text"].as_str().unwrap_or("");
    m["highlights"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|range| {
            let (a, b) = (range[0].as_u64().unwrap_or(0) as usize, range[1].as_u64().unwrap_or(0) as usize);
            text.get(a..b).filter(|_| a < b).map(str::to_string).unwrap_or_else(|| format!("<bad {a}..{b} of {text:?}>"))
        })
        .collect()
}

fn label_annotation(id: &str, asset: &str, track: &str, label: &str, start_ms: u64, end_ms: u64, confidence: f64) -> Value {
    json!({"id": id, "asset_id": asset, "model": format!("{track}-model"), "model_version": "1", "track": track,
           "start_ms": start_ms, "end_ms": end_ms, "label": label, "confidence": confidence})
}

fn line_annotation(id: &str, asset: &str, text: &str, language: &str, start_ms: u64, end_ms: u64) -> Value {
    json!({"id": id, "asset_id": asset, "model": "asr", "model_version": "1", "track": "dialogue",
           "start_ms": start_ms, "end_ms": end_ms, "text": text, "language": language, "confidence": 1.0})
}

fn vector_annotation(id: &str, asset: &str, vector: &[f32], start_ms: u64, end_ms: u64) -> Value {
    json!({"id": id, "asset_id": asset, "model": "places", "model_version": "1", "track": "scene",
           "start_ms": start_ms, "end_ms": end_ms, "vector_space": "scene", "vector": vector})
}

fn label_clause(label: &str) -> Value {
    json!({"type": "label", "label": label})
}

fn only(asset_id: &str) -> Value {
    json!({"asset_ids": [asset_id]})
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// 1-4. Subtitles, phrases across lines, stemming, fuzzy words, highlights

#[test]
fn subtitles_phrases_stems_fuzzy_and_highlights() {
    let h = Harness::start("subtitles+dialogue", &[]);
    for (id, title) in [("ep-vtt", "The One Where They Take a Break"), ("ep-srt", "Celui qui était au café")] {
        h.put_asset(id, json!({"title": title, "series": "friends", "season": 3, "episode": 15, "duration_ms": 60000}));
    }
    let vtt = fixture("sample.vtt");
    let srt = fixture("sample.srt");
    assert!(vtt.starts_with(b"\xEF\xBB\xBF"), "sample.vtt starts with a UTF-8 BOM");
    assert!(srt.windows(2).any(|w| w == b"\r\n") && std::str::from_utf8(&srt).is_err(), "sample.srt is Windows-1252 with CRLF");

    // --- Import: reply counts.
    let post_subtitles =
        |asset: &str, query: &str, body: &[u8]| h.call("POST", &format!("/v1/assets/{asset}/subtitles?{query}"), "text/plain", body);
    let (status, reply) = post_subtitles("ep-vtt", "language=en", &vtt);
    h.check_eq("vtt import status", status, 200);
    h.check_eq(
        "vtt import reply (imported, created, format, encoding, model, version)",
        (
            reply["imported"].clone(),
            reply["created"].clone(),
            reply["format"].clone(),
            reply["encoding"].clone(),
            reply["model"].clone(),
            reply["model_version"].clone(),
        ),
        (json!(5), json!(5), json!("vtt"), json!("Utf8Bom"), json!("subtitles-en"), json!("1")),
    );
    let (status, reply) = post_subtitles("ep-srt", "language=fr", &srt);
    h.check_eq("srt import status", status, 200);
    h.check_eq(
        "srt import reply (imported, created, format, encoding, model)",
        (reply["imported"].clone(), reply["created"].clone(), reply["format"].clone(), reply["encoding"].clone(), reply["model"].clone()),
        (json!(4), json!(4), json!("srt"), json!("Windows1252"), json!("subtitles-fr")),
    );

    // UTF-16LE with a byte order mark, built here.
    let utf16_text = "WEBVTT\n\n00:00:01.000 --> 00:00:02.500\nÇa marche très bien\n";
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(utf16_text.encode_utf16().flat_map(u16::to_le_bytes));
    let (status, reply) = post_subtitles("ep-utf16", "language=fr", &utf16);
    h.check_eq("utf-16 import status", status, 200);
    h.check_eq(
        "utf-16 import reply (imported, format, encoding)",
        (reply["imported"].clone(), reply["format"].clone(), reply["encoding"].clone()),
        (json!(1), json!("vtt"), json!("Utf16Le")),
    );

    // Dialogue for stemming, one language per asset.
    h.ingest(&[
        line_annotation("stem-en-1", "stem-en", "They were running home", "en", 2000, 4000),
        line_annotation("stem-fr-1", "stem-fr", "vous mangez des pommes", "fr", 2000, 4000),
        line_annotation("stem-fr2-1", "stem-fr2", "nous avons mangé", "fr", 2000, 4000),
        line_annotation("stem-de-1", "stem-de", "Die Kinder spielen im Garten", "de", 2000, 4000),
        line_annotation("stem-es-1", "stem-es", "Estamos corriendo por la playa", "es", 2000, 4000),
    ]);
    h.searchable();

    // --- The dialogue annotations are stored, with their times and decoded text.
    let (_, view) = h.get("/v1/assets/ep-vtt");
    h.check_eq("GET ep-vtt dialogue count", view["annotations"]["by_track"]["dialogue"].clone(), json!(5));
    h.check_eq("GET ep-vtt record title", view["title"].clone(), json!("The One Where They Take a Break"));
    let (_, view) = h.get("/v1/assets/ep-srt");
    h.check_eq("GET ep-srt dialogue count", view["annotations"]["by_track"]["dialogue"].clone(), json!(4));
    let (status, raw) = h.get("/v1/assets/ep-vtt/annotations/subtitles-en-v1-000004");
    h.check_eq(
        "raw cue 4 of the vtt (status, text, start, end, language, track)",
        (status, raw["text"].clone(), raw["start_ms"].clone(), raw["end_ms"].clone(), raw["language"].clone(), raw["track"].clone()),
        (200, json!("we were on a"), json!(8100), json!(9400), json!("en"), json!("dialogue")),
    );
    let (_, raw) = h.get("/v1/assets/ep-vtt/annotations/subtitles-en-v1-000002");
    h.check_eq("raw cue 2 of the vtt: tags removed, lines joined", raw["text"].clone(), json!("Ross, please, not again. Not tonight."));
    let (_, raw) = h.get("/v1/assets/ep-srt/annotations/subtitles-fr-v1-000001");
    h.check_eq(
        "raw cue 1 of the srt (Windows-1252 decoded)",
        (raw["text"].clone(), raw["start_ms"].clone(), raw["end_ms"].clone()),
        (json!("Bonjour ! On se retrouve au café ?"), json!(1000), json!(3200)),
    );
    let (_, raw) = h.get("/v1/assets/ep-srt/annotations/subtitles-fr-v1-000004");
    h.check(raw["text"].as_str().is_some_and(|t| t.contains("crème") && t.contains("4 €")), || {
        format!("raw cue 4 of the srt keeps è and €: {raw}")
    });

    // --- Re-posting the same file is a no-op.
    let (status, reply) = post_subtitles("ep-vtt", "language=en", &vtt);
    h.check_eq(
        "re-post of the same vtt (status, imported, created)",
        (status, reply["imported"].clone(), reply["created"].clone()),
        (200, json!(5), json!(0)),
    );

    // --- Accents: "café" from the Windows-1252 file, searched with and without the accent.
    for (what, request) in [
        ("q café", json!({"q": "café"})),
        ("q cafe", json!({"q": "cafe"})),
        ("dialogue café", json!({"clauses": [{"type": "dialogue", "text": "café"}]})),
        ("dialogue cafe", json!({"clauses": [{"type": "dialogue", "text": "cafe"}]})),
    ] {
        let reply = h.search(what, request);
        h.check_eq(&format!("{what}: assets"), ids(&reply), vec!["ep-srt".to_string()]);
        h.check_eq(&format!("{what}: clips"), clips(&reply, "ep-srt"), vec![(1000, 4000)]);
        let words: Vec<String> = matches(&reply).iter().flat_map(highlighted).collect();
        h.check_eq(&format!("{what}: highlighted words"), words, vec!["café".to_string()]);
    }
    let reply = h.search("q marche (utf-16 import)", json!({"q": "marche"}));
    h.check_eq("q marche: assets", ids(&reply), vec!["ep-utf16".to_string()]);
    h.check_eq("q marche: clips", clips(&reply, "ep-utf16"), vec![(1000, 3000)]);

    // --- 2. A phrase across two lines: "we were on a" (8.1-9.4 s) / "break!" (9.4-10.6 s).
    let phrase = |text: &str, slop: Option<u32>| {
        let mut clause = json!({"type": "phrase", "text": text});
        if let Some(slop) = slop {
            clause["slop"] = json!(slop);
        }
        json!({"clauses": [clause]})
    };
    for (what, request) in [
        ("phrase 'on a break'", phrase("on a break", None)),
        ("q '\"on a break\"'", json!({"q": "\"on a break\""})),
        ("phrase 'were a break' slop 1", phrase("were a break", Some(1))),
    ] {
        let reply = h.search(what, request);
        h.check_eq(&format!("{what}: assets"), ids(&reply), vec!["ep-vtt".to_string()]);
        h.check_eq(&format!("{what}: clip at the second line's start"), clips(&reply, "ep-vtt"), vec![(9000, 10000)]);
        let dialogue: Vec<Value> = matches(&reply).into_iter().filter(|m| m["track"] == "dialogue").collect();
        h.check(!dialogue.is_empty(), || format!("{what}: dialogue evidence expected: {reply}"));
        for m in &dialogue {
            let words = highlighted(m);
            h.check(!words.is_empty(), || format!("{what}: dialogue match without highlights: {m}"));
            for word in words {
                h.check(["were", "on", "a", "break"].contains(&word.to_lowercase().as_str()), || {
                    format!("{what}: highlight {word:?} of {:?} is not a query word", m["text"])
                });
            }
        }
        let all: BTreeSet<String> = dialogue.iter().flat_map(highlighted).collect();
        h.check(all.contains("break"), || format!("{what}: \"break\" is highlighted: {all:?}"));
    }
    let reply = h.search("phrase 'were a break' slop 0", phrase("were a break", Some(0)));
    h.check_eq("phrase 'were a break' slop 0: assets", ids(&reply), Vec::<String>::new());

    // --- 3. Stemming (fuzziness 0 so that only stems can match) and fuzzy words.
    let dialogue = |text: &str, language: Option<&str>, fuzziness: Option<Value>| {
        let mut clause = json!({"type": "dialogue", "text": text});
        if let Some(language) = language {
            clause["language"] = json!(language);
        }
        if let Some(fuzziness) = fuzziness {
            clause["fuzziness"] = fuzziness;
        }
        json!({"clauses": [clause]})
    };
    for (what, text, language, expected, highlight) in [
        ("en: run finds running", "run", None, vec!["stem-en"], "running"),
        ("en: run (language en) finds running", "run", Some("en"), vec!["stem-en"], "running"),
        ("fr: manger finds mangez and mangé", "manger", Some("fr"), vec!["stem-fr", "stem-fr2"], "mangez"),
        ("de: Kindern finds Kinder", "Kindern", Some("de"), vec!["stem-de"], "Kinder"),
        ("es: correr finds corriendo", "correr", Some("es"), vec!["stem-es"], "corriendo"),
    ] {
        let reply = h.search(what, dialogue(text, language, Some(json!(0))));
        let mut got = ids(&reply);
        got.sort();
        h.check_eq(&format!("{what} (fuzziness 0): assets"), got, expected.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        if let Some(a) = asset(&reply, expected[0]) {
            h.check_eq(&format!("{what}: clip"), clips(&reply, expected[0]), vec![(2000, 4000)]);
            let words: Vec<String> = a["clips"][0]["matches"].as_array().into_iter().flatten().flat_map(highlighted).collect();
            h.check_eq(&format!("{what}: highlights slice the text to the matched word"), words, vec![highlight.to_string()]);
        }
    }
    // With default fuzziness the stem still matches (and may be joined by fuzzy neighbours).
    let reply = h.search("run, default fuzziness", dialogue("run", None, None));
    h.check(ids(&reply).contains(&"stem-en".to_string()), || format!("run (default fuzziness) finds stem-en: {:?}", ids(&reply)));
    for m in matches(&reply) {
        for word in highlighted(&m) {
            h.check(!word.starts_with("<bad"), || format!("run: highlight out of the text: {word}"));
        }
    }

    let reply = h.search("brek, auto fuzziness", dialogue("brek", None, None));
    h.check_eq("brek (auto): assets", ids(&reply), vec!["ep-vtt".to_string()]);
    h.check_eq("brek (auto): clip over \"break!\"", clips(&reply, "ep-vtt"), vec![(9000, 11000)]);
    let words: Vec<String> = matches(&reply).iter().flat_map(highlighted).collect();
    h.check_eq("brek (auto): fuzzy highlight", words, vec!["break".to_string()]);
    let reply = h.search("brek, fuzziness \"auto\"", dialogue("brek", None, Some(json!("auto"))));
    h.check_eq("brek (\"auto\"): assets", ids(&reply), vec!["ep-vtt".to_string()]);
    let reply = h.search("brek, fuzziness 0", dialogue("brek", None, Some(json!(0))));
    h.check_eq("brek (fuzziness 0): assets", ids(&reply), Vec::<String>::new());

    // --- A different file under the same version is a conflict that names the fix.
    let vtt_text = String::from_utf8(vtt[3..].to_vec()).expect("utf-8");
    let corrected = vtt_text.replace("How you doin'?", "Hello there, friend");
    assert_ne!(corrected, vtt_text);
    let (status, reply) = post_subtitles("ep-vtt", "language=en", corrected.as_bytes());
    h.check_error("different file, same model_version", status, &reply, 409, "conflict", None, &["model_version"]);
    // ... and a higher model_version replaces the old one in search.
    let (status, reply) = post_subtitles("ep-vtt", "language=en&model_version=2", corrected.as_bytes());
    h.check_eq(
        "model_version 2 import (status, imported, created, model_version)",
        (status, reply["imported"].clone(), reply["created"].clone(), reply["model_version"].clone()),
        (200, json!(5), json!(5), json!("2")),
    );
    h.searchable();
    let reply = h
        .search("old text after v2", json!({"clauses": [{"type": "dialogue", "text": "doin", "fuzziness": 0}], "filters": only("ep-vtt")}));
    h.check_eq("old text (\"doin\") after model_version 2: assets", ids(&reply), Vec::<String>::new());
    let reply = h.search("new text after v2", json!({"clauses": [{"type": "dialogue", "text": "friend", "fuzziness": 0}]}));
    h.check_eq("new text (\"friend\") after model_version 2: assets", ids(&reply), vec!["ep-vtt".to_string()]);
    h.check_eq("new text: clip", clips(&reply, "ep-vtt"), vec![(1000, 4000)]);
    let ids_of_match: Vec<String> = matches(&reply).iter().map(|m| m["annotation_id"].as_str().unwrap_or("").to_string()).collect();
    h.check_eq("new text: evidence is the v2 cue", ids_of_match, vec!["subtitles-en-v2-000001".to_string()]);
    let reply = h.search("phrase after v2", phrase("on a break", None));
    h.check_eq("phrase after v2: clip", clips(&reply, "ep-vtt"), vec![(9000, 10000)]);
    let (_, view) = h.get("/v1/assets/ep-vtt");
    h.check_eq("raw store keeps both versions", view["annotations"]["by_track"]["dialogue"].clone(), json!(10));

    // --- Broken input.
    let broken_vtt = "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nFine line\n\n00:00:05.000 --> 00:00:03.000\nBackwards\n";
    let (status, reply) = post_subtitles("ep-broken", "language=en", broken_vtt.as_bytes());
    h.check_error("broken cue", status, &reply, INVALID_FIELD, "invalid_field", Some("body"), &["line 6"]);
    let (status, reply) = post_subtitles("ep-broken", "language=e%20n", &vtt);
    h.check_error("bad language", status, &reply, INVALID_FIELD, "invalid_field", Some("language"), &[]);
    let (status, _) = h.get("/v1/assets/ep-broken");
    h.check_eq("nothing stored for refused files", status, 404);

    // --- The CLI: parse locally, send, searchable; a broken file names its line.
    let work = tempfile::tempdir().expect("tempdir");
    let good = work.path().join("episode.srt");
    std::fs::write(&good, &srt).expect("write srt");
    let output = run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_rushes")).env("RUSHES_TOKEN", &h.node.token).arg("import").arg(&good).args([
            "--asset",
            "cli-srt",
            "--language",
            "fr",
            "--server",
            &h.url(),
        ]),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    h.check(output.status.success() && stdout.contains("imported 4 cues (4 new)"), || {
        format!("rushes import episode.srt: {} stdout {stdout:?} stderr {:?}", output.status, String::from_utf8_lossy(&output.stderr))
    });
    h.searchable();
    let reply = h.search("glacé after CLI import", json!({"q": "glacé", "filters": only("cli-srt")}));
    h.check_eq("CLI import is searchable: assets", ids(&reply), vec!["cli-srt".to_string()]);
    h.check_eq("CLI import is searchable: clip of the last cue", clips(&reply, "cli-srt"), vec![(10000, 13000)]);
    let broken = work.path().join("broken.srt");
    std::fs::write(&broken, "1\r\n00:00:01,000 --> 00:00:02,000\r\nBonjour\r\n\r\n2\r\n00:00:03,000 --> 00:0x:04,000\r\nOups\r\n")
        .expect("write");
    let output = run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_rushes")).env("RUSHES_TOKEN", &h.node.token).arg("import").arg(&broken).args([
            "--asset",
            "cli-broken",
            "--language",
            "fr",
            "--server",
            &h.url(),
        ]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    h.check(!output.status.success() && stderr.contains("line 6"), || {
        format!("rushes import broken.srt: expected failure naming line 6, got {} stderr {stderr:?}", output.status)
    });
    let (status, _) = h.get("/v1/assets/cli-broken");
    h.check_eq("CLI sends nothing from a broken file", status, 404);

    h.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. Curation

#[test]
fn curation_snaps_pads_shapes_merges_and_caps() {
    let h = Harness::start("curation", &[]);
    h.put_asset("cut", json!({"title": "Cutting room", "duration_ms": 100000}));
    let mut items: Vec<Value> = [(0, 12000), (12000, 25000), (25000, 60000), (60000, 100000)]
        .iter()
        .enumerate()
        .map(|(i, &(start, end))| label_annotation(&format!("shot-{i}"), "cut", "shot", "shot", start, end, 1.0))
        .collect();
    for (id, label, start, end, confidence) in [
        ("snap", "xsnap", 15000, 18000, 0.9),
        ("far", "xfar", 41000, 43000, 0.9),
        ("pad0", "xpad0", 0, 2000, 0.9),
        ("tail", "xtail", 97000, 100000, 0.9),
        ("long-a", "xlong", 30000, 35000, 0.6),
        ("long-b", "xlong", 35000, 40000, 0.9),
        ("gap-a", "xgap", 50000, 52000, 0.9),
        ("gap-b", "xgap", 54000, 56000, 0.9),
        ("over-a", "xover", 70000, 72000, 0.95),
        ("over-b", "xover", 74000, 76000, 0.75),
        ("per-1", "xper", 80000, 81000, 0.55),
        ("per-2", "xper", 83000, 84000, 0.65),
        ("per-3", "xper", 86000, 87000, 0.75),
        ("per-4", "xper", 89000, 90000, 0.85),
        ("per-5", "xper", 92000, 93000, 0.95),
    ] {
        items.push(label_annotation(id, "cut", "object", label, start, end, confidence));
    }
    h.ingest(&items);
    h.searchable();

    let run = |what: &str, label: &str, options: Value| -> Vec<(u64, u64)> {
        let mut request = json!({"clauses": [label_clause(label)], "per_asset": 20});
        for (key, value) in options.as_object().into_iter().flatten() {
            request[key] = value.clone();
        }
        let reply = h.search(what, request);
        clips(&reply, "cut")
    };
    type Case = (&'static str, &'static str, Value, Vec<(u64, u64)>);
    let cases: Vec<Case> = vec![
        ("plain clip", "xsnap", json!({}), vec![(15000, 18000)]),
        ("snap_to_shots extends to the shot edges", "xsnap", json!({"snap_to_shots": true}), vec![(12000, 25000)]),
        ("snap then padding", "xsnap", json!({"snap_to_shots": true, "padding_ms": 1000}), vec![(11000, 26000)]),
        ("no snap further than 10 s", "xfar", json!({"snap_to_shots": true}), vec![(41000, 43000)]),
        ("padding", "xsnap", json!({"padding_ms": 2000}), vec![(13000, 20000)]),
        ("padding never below 0", "xpad0", json!({"padding_ms": 5000}), vec![(0, 7000)]),
        ("padding never past duration_ms", "xtail", json!({"padding_ms": 5000}), vec![(92000, 100000)]),
        ("min_length grows around the centre", "xsnap", json!({"min_length_ms": 7000}), vec![(13000, 20000)]),
        ("min_length at the asset start", "xpad0", json!({"min_length_ms": 6000}), vec![(0, 6000)]),
        ("one run over two annotations", "xlong", json!({}), vec![(30000, 40000)]),
        ("max_length cuts around the best window", "xlong", json!({"max_length_ms": 4000}), vec![(35000, 39000)]),
        ("gap 0 keeps two runs", "xgap", json!({}), vec![(50000, 52000), (54000, 56000)]),
        ("gap_ms 1000 < silence keeps two runs", "xgap", json!({"gap_ms": 1000}), vec![(50000, 52000), (54000, 56000)]),
        ("gap_ms 2000 merges two runs", "xgap", json!({"gap_ms": 2000}), vec![(50000, 56000)]),
        ("two clips, best first", "xover", json!({}), vec![(70000, 72000), (74000, 76000)]),
        ("overlapping clips: the better one stays", "xover", json!({"padding_ms": 3000}), vec![(67000, 75000)]),
        ("per_asset 2 keeps the two best", "xper", json!({"per_asset": 2}), vec![(92000, 93000), (89000, 90000)]),
        (
            "all five clips best first",
            "xper",
            json!({}),
            vec![(92000, 93000), (89000, 90000), (86000, 87000), (83000, 84000), (80000, 81000)],
        ),
    ];
    for (what, label, options, expected) in cases {
        let got = run(what, label, options.clone());
        h.check_eq(&format!("{what} ({label} {options})"), got, expected);
    }
    // Evidence comes from the matched seconds, not from the snapped shot around them.
    let reply = h.search("snap evidence", json!({"clauses": [label_clause("xsnap")], "snap_to_shots": true}));
    let labels: Vec<Value> = matches(&reply).iter().map(|m| m["label"].clone()).collect();
    h.check_eq("snapped clip evidence", labels, vec![json!("xsnap")]);
    // The default per_asset is 5.
    let reply = h.search("default per_asset", json!({"clauses": [{"type": "label", "label": "xper"}]}));
    h.check_eq("default per_asset", clips(&reply, "cut").len(), 5);
    let reply = h.search("per_asset 1", json!({"clauses": [label_clause("xper")], "per_asset": 1}));
    h.check_eq("per_asset 1", clips(&reply, "cut"), vec![(92000, 93000)]);
    h.search_refused(
        "min_length > max_length",
        json!({"clauses": [label_clause("xsnap")], "min_length_ms": 5000, "max_length_ms": 1000}),
        "min_length_ms",
    );
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// 6, 9, 10. Sequence and while; explain; suggest

#[test]
fn sequences_co_occurrence_explain_and_suggest() {
    let h = Harness::start("sequence+explain+suggest", &[]);
    for (id, season) in [("joey-s2", 2), ("joey-s1", 1)] {
        let record = json!({"title": format!("Joey cooks, season {season}"), "series": "friends", "season": season, "episode": 1,
                            "duration_ms": 60000});
        h.put_asset(id, record);
    }
    h.ingest(&[
        // Alice 10-20 s then Bob 25-30 s.
        label_annotation("seq1-a", "seq1", "character", "Alice", 10000, 20000, 0.9),
        label_annotation("seq1-b", "seq1", "character", "Bob", 25000, 30000, 0.9),
        // Bob first, then Alice.
        label_annotation("seq2-b", "seq2", "character", "Bob", 10000, 20000, 0.9),
        label_annotation("seq2-a", "seq2", "character", "Alice", 25000, 30000, 0.9),
        // Both at once from 15 to 20 s (Bob starts first, so no "Alice then Bob").
        label_annotation("seq3-b", "seq3", "character", "Bob", 10000, 20000, 0.9),
        label_annotation("seq3-a", "seq3", "character", "Alice", 15000, 25000, 0.9),
        label_annotation("s2-joey", "joey-s2", "character", "Joey", 5000, 15000, 0.9),
        label_annotation("s2-kitchen", "joey-s2", "scene", "kitchen", 0, 20000, 0.8),
        label_annotation("s1-joey", "joey-s1", "character", "Joey", 5000, 15000, 0.9),
        label_annotation("s1-kitchen", "joey-s1", "scene", "kitchen", 0, 20000, 0.8),
    ]);
    h.searchable();

    let sequence = |within_ms: u64| {
        json!({"clauses": [{"type": "sequence", "first": label_clause("Alice"), "then": label_clause("Bob"),
                            "within_ms": within_ms}]})
    };
    for (what, request) in [
        ("sequence clause within 10 s", sequence(10000)),
        ("q: Alice then Bob within 10 seconds", json!({"q": "Alice then Bob within 10 seconds"})),
    ] {
        let reply = h.search(what, request);
        h.check_eq(&format!("{what}: assets"), ids(&reply), vec!["seq1".to_string()]);
        h.check_eq(&format!("{what}: clip spans both"), clips(&reply, "seq1"), vec![(10000, 30000)]);
    }
    for (what, request) in [
        ("sequence clause within 2 s", sequence(2000)),
        ("q: Alice then Bob within 2 seconds", json!({"q": "Alice then Bob within 2 seconds"})),
    ] {
        let reply = h.search(what, request);
        h.check_eq(&format!("{what}: assets"), ids(&reply), Vec::<String>::new());
    }
    for (what, request) in [
        ("while clause", json!({"clauses": [{"type": "while", "clauses": [label_clause("Alice"), label_clause("Bob")]}]})),
        ("q: Alice while Bob", json!({"q": "Alice while Bob"})),
    ] {
        let reply = h.search(what, request);
        h.check_eq(&format!("{what}: assets"), ids(&reply), vec!["seq3".to_string()]);
        h.check_eq(&format!("{what}: only the overlap"), clips(&reply, "seq3"), vec![(15000, 20000)]);
    }

    // --- Explain: corrections, the season filter, the leaves.
    let (status, reply) =
        h.call("POST", "/v1/search/explain", "application/json", json!({"q": "Jooey in the kitchn season 2"}).to_string().as_bytes());
    h.check_eq("explain status", status, 200);
    let plan = &reply["plan"];
    let corrections: BTreeSet<(String, String)> = plan["understanding"]["corrections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pair| (pair[0].as_str().unwrap_or("").to_string(), pair[1].as_str().unwrap_or("").to_string()))
        .collect();
    h.check_eq(
        "explain: corrections",
        corrections,
        // Labels are shown as the models wrote them ("Joey"); what was typed stays as matched.
        [("jooey", "Joey"), ("kitchn", "kitchen")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
    );
    h.check_eq("explain: season filter understood", plan["understanding"]["filters"]["season"].clone(), json!(2));
    h.check_eq("explain: season filter applied", plan["filters"]["season"].clone(), json!(2));
    let leaves: Vec<(Value, Value, Value)> =
        plan["leaves"].as_array().into_iter().flatten().map(|l| (l["type"].clone(), l["label"].clone(), l["typed"].clone())).collect();
    h.check_eq(
        "explain: leaves",
        leaves,
        vec![(json!("label"), json!("Joey"), json!("jooey")), (json!("label"), json!("kitchen"), json!("kitchn"))],
    );
    let reply = h.search("the explained query", json!({"q": "Jooey in the kitchn season 2"}));
    h.check_eq("Jooey in the kitchn season 2: assets", ids(&reply), vec!["joey-s2".to_string()]);
    h.check_eq("Jooey in the kitchn season 2: clip", clips(&reply, "joey-s2"), vec![(5000, 15000)]);
    // The reply carries what `q` became, as explain shows it: "did you mean" needs no second request.
    h.check_eq("search reply: understanding", reply["understanding"].clone(), plan["understanding"].clone());
    h.check_eq("search reply: understanding.kind", reply["understanding"]["kind"].clone(), json!("label"));
    let reply = h.search("a co-occurrence's kind", json!({"q": "Alice while Bob"}));
    h.check_eq(
        "Alice while Bob: understanding.kind (snake_case as documented)",
        reply["understanding"]["kind"].clone(),
        json!("co_occurrence"),
    );
    h.check(reply.get("warnings").is_none(), || format!("no warnings without a failure: {reply}"));
    let (status, reply) =
        h.call("POST", "/v1/search/explain", "application/json", json!({"q": "\"we were on a break\" Joey"}).to_string().as_bytes());
    h.check_eq("explain (quoted) status", status, 200);
    let leaves = reply["plan"]["leaves"].as_array().cloned().unwrap_or_default();
    h.check(
        leaves.iter().any(|l| l["type"] == "phrase" && l["words"] == json!(["we", "were", "on", "a", "break"]) && l["slop"] == 0),
        || format!("explain (quoted): a phrase leaf with the quoted words: {leaves:?}"),
    );
    h.check(leaves.iter().any(|l| l["type"] == "label" && l["label"] == "Joey"), || {
        format!("explain (quoted): a Joey label leaf: {leaves:?}")
    });

    // --- Suggest.
    let (status, reply) = h.get("/v1/suggest?q=Jo");
    h.check_eq("suggest status", status, 200);
    let completions = reply["completions"].as_array().cloned().unwrap_or_default();
    h.check(completions.iter().any(|c| c["text"] == "Joey" && c["kind"] == "label" && c["query"] == "Joey"), || {
        format!("suggest Jo: a label completion \"Joey\", as the model wrote it: {completions:?}")
    });
    h.check_eq("suggest Jo: first completion", completions.first().map(|c| c["text"].clone()), Some(json!("Joey")));
    // Characters whose lower case is shorter (the Kelvin sign: 3 bytes, then `k`: 1 byte) or
    // longer (İ: 2 bytes, then i̇: 3 bytes) complete like any other text.
    for (typed, encoded) in
        [("KK (Kelvin signs)", "%E2%84%AA%E2%84%AA"), ("İ", "%C4%B0"), ("Jo İ", "Jo%20%C4%B0"), ("K Jo", "%E2%84%AA%20Jo")]
    {
        let (status, reply) = h.get(&format!("/v1/suggest?q={encoded}"));
        h.check_eq(&format!("suggest {typed}: status"), (status, reply["completions"].is_array()), (200, true));
    }
    let mut moments = ids(&json!({"assets": reply["moments"].clone()}));
    moments.sort();
    h.check_eq("suggest Jo: moments", moments, vec!["joey-s1".to_string(), "joey-s2".to_string()]);
    // Moments are cached per completion; new data must show up at the next keystroke.
    h.ingest(&[label_annotation("s3-joey", "joey-s3", "character", "Joey", 1000, 4000, 0.95)]);
    h.searchable();
    let (_, reply) = h.get("/v1/suggest?q=Joe");
    let mut moments = ids(&json!({"assets": reply["moments"].clone()}));
    moments.sort();
    h.check_eq(
        "suggest Joe after new data: moments include it",
        moments,
        vec!["joey-s1".to_string(), "joey-s2".to_string(), "joey-s3".to_string()],
    );

    // A typed line's moments are where all its words are said; a search for the same words
    // also takes seconds with half of them.
    h.ingest(&[
        line_annotation("said-all", "line-all", "Purple monkeys dance tonight", "en", 1000, 4000),
        line_annotation("said-half-1", "line-half-1", "Purple monkeys sleep", "en", 1000, 4000),
        line_annotation("said-half-2", "line-half-2", "Monkeys dance badly", "en", 1000, 4000),
    ]);
    h.searchable();
    let moments_of = |typed: &str| {
        let (status, reply) = h.get(&format!("/v1/suggest?q={}", typed.replace(' ', "%20")));
        let first = reply["completions"].as_array().and_then(|c| c.first()).map(|c| c["query"].clone());
        let mut moments = ids(&json!({"assets": reply["moments"].clone()}));
        moments.sort();
        (status, first, moments)
    };
    let mut searched = ids(&h.search("purple monkeys dance", json!({"q": "purple monkeys dance"})));
    searched.sort();
    h.check_eq(
        "purple monkeys dance: a search takes half the words",
        searched,
        ["line-all", "line-half-1", "line-half-2"].map(String::from).to_vec(),
    );
    h.check_eq(
        "suggest purple monkeys da: moments where every word is said",
        moments_of("purple monkeys da"),
        (200, Some(json!("purple monkeys dance")), vec!["line-all".to_string()]),
    );
    // A typo in a finished word keeps its edits (it is not in the dictionary).
    h.check_eq(
        "suggest purpel monkeys da: the misspelled word still matches",
        moments_of("purpel monkeys da"),
        (200, Some(json!("purpel monkeys dance")), vec!["line-all".to_string()]),
    );
    // Never said together: the moments are the search's (half the words).
    h.check_eq(
        "suggest purple sleep bad: moments of half the words",
        moments_of("purple sleep bad"),
        (200, Some(json!("purple sleep badly")), vec!["line-half-1".to_string()]),
    );
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// 7. Pagination and grouping

#[test]
fn pagination_and_grouping() {
    let h = Harness::start("pagination", &[]);
    let mut confidence: BTreeMap<String, f64> = BTreeMap::new();
    let mut items = Vec::new();
    for i in 0..30u32 {
        let id = format!("page-{i:02}");
        let series = if i % 2 == 0 { "alpha" } else { "beta" };
        h.put_asset(
            &id,
            json!({"title": format!("Episode {i}"), "series": series, "season": 1 + i % 3, "episode": i + 1, "duration_ms": 60000}),
        );
        // Distinct confidences, shuffled against the ids (i * 7 mod 30).
        let c = ((0.5 + 0.49 * f64::from((i * 7) % 30) / 29.0) * 1000.0).round() / 1000.0;
        confidence.insert(id.clone(), c);
        items.push(label_annotation(&format!("{id}-phoebe"), &id, "character", "Phoebe", 1000, 6000, c));
    }
    h.ingest(&items);
    h.searchable();

    let request = |cursor: Option<&str>| {
        let mut r = json!({"clauses": [label_clause("Phoebe")], "limit": 7});
        if let Some(cursor) = cursor {
            r["cursor"] = json!(cursor);
        }
        r
    };
    let mut pages: Vec<Vec<(String, f64)>> = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..10 {
        let reply = h.search(&format!("page {page}"), request(cursor.as_deref()));
        h.check_eq(&format!("page {page}: total_assets"), reply["total_assets"].clone(), json!(30));
        pages.push(
            reply["assets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| (a["asset_id"].as_str().unwrap_or("?").to_string(), a["score"].as_f64().unwrap_or(f64::NAN)))
                .collect(),
        );
        match reply["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    h.check_eq("page sizes (limit 7, 30 assets)", sizes, vec![7, 7, 7, 7, 2]);
    let all: Vec<(String, f64)> = pages.concat();
    let distinct: BTreeSet<&String> = all.iter().map(|(id, _)| id).collect();
    h.check_eq("pages are disjoint", distinct.len(), all.len());
    h.check_eq(
        "pages cover every asset",
        distinct.into_iter().cloned().collect::<Vec<_>>(),
        confidence.keys().cloned().collect::<Vec<_>>(),
    );
    for pair in all.windows(2) {
        let ((a, sa), (b, sb)) = (&pair[0], &pair[1]);
        h.check(sa > sb || (sa == sb && a < b), || format!("order: ({a}, {sa}) must come before ({b}, {sb}): score desc, then asset id"));
    }
    for (a, sa) in &all {
        for (b, sb) in &all {
            if confidence[a] > confidence[b] {
                h.check(sa >= sb, || format!("{a} (confidence {}) scores {sa} < {b} (confidence {}) {sb}", confidence[a], confidence[b]));
            }
        }
    }
    h.search_refused("garbage cursor", json!({"clauses": [label_clause("Phoebe")], "cursor": "not-a-cursor"}), "cursor");

    // Groups: consistent with the asset records.
    let records: BTreeMap<String, Value> = confidence.keys().map(|id| (id.clone(), h.get(&format!("/v1/assets/{id}")).1)).collect();
    for (by, limit) in [("season", 30), ("series", 30), ("season", 7)] {
        let what = format!("group_by {by}, limit {limit}");
        let reply = h.search(&what, json!({"clauses": [label_clause("Phoebe")], "limit": limit, "group_by": by}));
        let page: BTreeMap<String, f64> = reply["assets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| (a["asset_id"].as_str().unwrap_or("?").to_string(), a["score"].as_f64().unwrap_or(0.0)))
            .collect();
        h.check_eq(&format!("{what}: page size"), page.len(), limit);
        for a in reply["assets"].as_array().into_iter().flatten() {
            let record = &records[a["asset_id"].as_str().unwrap_or("?")];
            h.check(a["series"] == record["series"] && a["season"] == record["season"], || {
                format!("{what}: asset hit {a} vs record {record}")
            });
        }
        let groups = reply["groups"].as_array().cloned().unwrap_or_default();
        h.check(!groups.is_empty(), || format!("{what}: groups expected: {reply}"));
        let mut grouped: Vec<String> = Vec::new();
        let mut previous_score = f64::INFINITY;
        for group in &groups {
            let members: Vec<String> =
                group["asset_ids"].as_array().into_iter().flatten().map(|v| v.as_str().unwrap_or("?").to_string()).collect();
            for id in &members {
                let record = records.get(id).cloned().unwrap_or(Value::Null);
                h.check(record["series"] == group["series"], || format!("{what}: {id} (series {}) in group {group}", record["series"]));
                if by == "season" {
                    h.check(record["season"] == group["season"], || format!("{what}: {id} (season {}) in group {group}", record["season"]));
                } else {
                    h.check(group["season"].is_null(), || format!("{what}: a series group has no season: {group}"));
                }
            }
            let best = members.iter().filter_map(|id| page.get(id)).copied().fold(f64::NEG_INFINITY, f64::max);
            let score = group["score"].as_f64().unwrap_or(f64::NAN);
            h.check(score == best, || format!("{what}: group score {score} is its best asset's {best}: {group}"));
            h.check(score <= previous_score, || format!("{what}: groups best first: {groups:?}"));
            previous_score = score;
            grouped.extend(members);
        }
        grouped.sort();
        h.check_eq(&format!("{what}: groups hold exactly the page's assets"), grouped, page.keys().cloned().collect::<Vec<_>>());
        let expected_groups = if by == "series" { 2 } else { 6 };
        if limit == 30 {
            h.check_eq(&format!("{what}: group count"), groups.len(), expected_groups);
        }
    }

    // A shard keeps a label's ranking with its cached hits: the same search again answers the
    // same, `min_score` still counts only the assets that reach it, and new data is ranked.
    let top = |reply: &Value| -> Vec<(String, f64)> {
        reply["assets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| (a["asset_id"].as_str().unwrap_or("?").to_string(), a["score"].as_f64().unwrap_or(f64::NAN)))
            .collect()
    };
    let first = h.search("label again", request(None));
    h.check_eq("the same search again: the same first page", top(&first), pages[0].clone());
    let median = all[all.len() / 2].1;
    let reaching = all.iter().filter(|(_, score)| *score >= median).count();
    let floored = h.search("label with min_score", json!({"clauses": [label_clause("Phoebe")], "limit": 30, "min_score": median}));
    h.check_eq("min_score: total_assets counts the assets reaching it", floored["total_assets"].clone(), json!(reaching));
    h.check_eq("min_score: the assets reaching it", top(&floored), all[..reaching].to_vec());
    h.put_asset("page-30", json!({"title": "Episode 31", "series": "alpha", "season": 1, "episode": 31, "duration_ms": 60000}));
    h.ingest(&[label_annotation("page-30-phoebe", "page-30", "character", "Phoebe", 1000, 30000, 0.995)]);
    h.searchable();
    let after = h.search("label after new data", request(None));
    h.check_eq("new data: total_assets", after["total_assets"].clone(), json!(31));
    h.check_eq("new data: the new best asset first", top(&after).first().map(|(id, _)| id.clone()), Some("page-30".to_string()));
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// 8. Hybrid fusion, exact and L2 vector search

fn axis(i: usize, scale: f32) -> Vec<f32> {
    let mut v = vec![0.0; 8];
    v[i] = scale;
    v
}

#[test]
fn hybrid_fusion_and_vector_metrics() {
    let h = Harness::start("hybrid", &["--set", "vector_spaces[0].dimensions=8"]);
    let mut l2_a = axis(7, 10.0);
    l2_a[6] = 1.0;
    let mut l2_b = axis(7, 1.0);
    l2_b[6] = 0.5;
    h.ingest(&[
        vector_annotation("hyb-v1-scene", "hyb-v1", &axis(0, 1.0), 0, 10000),
        vector_annotation("hyb-v2-scene", "hyb-v2", &axis(0, 2.0), 0, 10000),
        vector_annotation("hyb-d1-scene", "hyb-d1", &axis(1, 1.0), 0, 10000),
        line_annotation("hyb-d1-line", "hyb-d1", "the pineapple is ripe", "en", 0, 10000),
        vector_annotation("l2-a-scene", "l2-a", &l2_a, 0, 5000),
        vector_annotation("l2-b-scene", "l2-b", &l2_b, 0, 5000),
    ]);
    h.searchable();

    let hybrid = |method: &str, vector_weight: f64, dialogue_weight: f64| {
        let mut fusion = json!({"method": method});
        if method == "rrf" {
            fusion["rank_constant"] = json!(10);
        }
        json!({"clauses": [{"type": "any", "clauses": [
            {"type": "vector", "space": "scene", "vector": axis(0, 1.0), "min_similarity": 0.9, "weight": vector_weight},
            {"type": "dialogue", "text": "pineapple", "weight": dialogue_weight}]}],
            "fusion": fusion})
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for method in ["weighted", "rrf"] {
        let reply = h.search(&format!("{method}, equal weights"), hybrid(method, 1.0, 1.0));
        let mut got = ids(&reply);
        got.sort();
        h.check_eq(&format!("{method}, equal weights: both kinds of hits"), got, strings(&["hyb-d1", "hyb-v1", "hyb-v2"]));
        let reply = h.search(&format!("{method}, vector weight 5"), hybrid(method, 5.0, 1.0));
        h.check_eq(&format!("{method}, vector weight 5: order"), ids(&reply), strings(&["hyb-v1", "hyb-v2", "hyb-d1"]));
        let reply = h.search(&format!("{method}, dialogue weight 5"), hybrid(method, 1.0, 5.0));
        h.check_eq(&format!("{method}, dialogue weight 5: order"), ids(&reply), strings(&["hyb-d1", "hyb-v1", "hyb-v2"]));
        // Evidence names the clause each asset matched: the vector (0, with its similarity) or the words (1).
        let evidence: BTreeMap<String, Vec<(Value, Value)>> = reply["assets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let list = a["clips"][0]["matches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| (m["clause"].clone(), m["annotation_id"].clone()))
                    .collect();
                (a["asset_id"].as_str().unwrap_or("?").to_string(), list)
            })
            .collect();
        h.check_eq(&format!("{method}: evidence of hyb-d1"), evidence.get("hyb-d1").cloned(), Some(vec![(json!(1), json!("hyb-d1-line"))]));
        h.check_eq(
            &format!("{method}: evidence of hyb-v1"),
            evidence.get("hyb-v1").cloned(),
            Some(vec![(json!(0), json!("hyb-v1-scene"))]),
        );
    }

    let nearest = |what: &str, extra: Value| -> Vec<(String, f64)> {
        let mut clause = json!({"type": "vector", "space": "scene", "vector": axis(7, 1.0), "k": 1});
        for (key, value) in extra.as_object().into_iter().flatten() {
            clause[key] = value.clone();
        }
        let reply = h.search(what, json!({"clauses": [clause]}));
        matches(&reply)
            .iter()
            .map(|m| (m["annotation_id"].as_str().unwrap_or("?").to_string(), m["similarity"].as_f64().unwrap_or(f64::NAN)))
            .collect()
    };
    let close = |got: &[(String, f64)], id: &str, similarity: f64| got.len() == 1 && got[0].0 == id && (got[0].1 - similarity).abs() < 1e-3;
    let cosine_a = 10.0 / 101f64.sqrt();
    let got = nearest("approximate cosine k=1", json!({}));
    h.check(close(&got, "l2-a-scene", cosine_a), || format!("approximate cosine k=1: expected l2-a-scene ({cosine_a:.4}), got {got:?}"));
    let got = nearest("exact cosine k=1", json!({"exact": true}));
    h.check(close(&got, "l2-a-scene", cosine_a), || format!("exact cosine k=1: expected l2-a-scene ({cosine_a:.4}), got {got:?}"));
    let got = nearest("exact l2 k=1", json!({"exact": true, "metric": "l2"}));
    h.check(close(&got, "l2-b-scene", -0.25), || format!("exact l2 k=1: expected l2-b-scene (-0.25), got {got:?}"));
    let got = nearest("exact ip k=1", json!({"exact": true, "metric": "ip"}));
    h.check(close(&got, "l2-a-scene", 10.0), || format!("exact ip k=1: expected l2-a-scene (10), got {got:?}"));
    h.search_refused(
        "l2 without exact",
        json!({"clauses": [{"type": "vector", "space": "scene", "vector": axis(7, 1.0), "metric": "l2"}]}),
        "clauses[0].metric",
    );
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// 8 (cont.). A filtered vector search returns the filtered set's k best, computed exactly here

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn minus_l2(a: &[f32], b: &[f32]) -> f64 {
    -a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>()
}

#[test]
fn filtered_and_exact_vector_search_match_brute_force() {
    let h = Harness::start("filtered vectors", &["--set", "vector_spaces[0].dimensions=8"]);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // (asset, annotation id, vector); three per asset, at 0-3 s, 10-13 s and 20-23 s.
    let mut vectors: Vec<(String, String, Vec<f32>)> = Vec::new();
    let mut items = Vec::new();
    for a in 0..200 {
        let asset = format!("rand-{a:03}");
        for j in 0..3u64 {
            let v: Vec<f32> = (0..8).map(|_| rng.next()).collect();
            let id = format!("{asset}-v{j}");
            items.push(vector_annotation(&id, &asset, &v, j * 10000, j * 10000 + 3000));
            vectors.push((asset.clone(), id, v));
        }
    }
    h.ingest(&items);
    h.searchable();

    // Near asset 0's first vector.
    let query: Vec<f32> = vectors[0].2.iter().map(|x| x + 0.01 * rng.next()).collect();
    let best = |metric: fn(&[f32], &[f32]) -> f64, asset: Option<&str>, k: usize| -> Vec<(String, f64)> {
        let mut scored: Vec<(String, f64)> =
            vectors.iter().filter(|(a, _, _)| asset.is_none_or(|x| x == a)).map(|(_, id, v)| (id.clone(), metric(&query, v))).collect();
        scored.sort_by(|x, y| y.1.total_cmp(&x.1));
        scored.truncate(k);
        scored
    };
    let found = |what: &str, clause: Value, filters: Option<Value>| -> (Vec<String>, Vec<(String, f64)>) {
        let mut request = json!({"clauses": [clause], "limit": 50, "per_asset": 10});
        if let Some(filters) = filters {
            request["filters"] = filters;
        }
        let reply = h.search(what, request);
        let mut hits: Vec<(String, f64)> = matches(&reply)
            .iter()
            .filter(|m| m["similarity"].is_number())
            .map(|m| (m["annotation_id"].as_str().unwrap_or("?").to_string(), m["similarity"].as_f64().unwrap_or(f64::NAN)))
            .collect();
        hits.sort_by(|x, y| y.1.total_cmp(&x.1));
        let mut assets = ids(&reply);
        assets.sort();
        (assets, hits)
    };
    let same = |got: &[(String, f64)], expected: &[(String, f64)]| {
        got.len() == expected.len() && got.iter().zip(expected).all(|(g, e)| g.0 == e.0 && (g.1 - e.1).abs() < 1e-3)
    };

    // Filtered to one far-away asset: its k best, even though they are far from the query.
    for exact in [false, true] {
        let what = format!("filter rand-150, k=2, exact {exact}");
        let expected = best(cosine, Some("rand-150"), 2);
        let (assets, hits) = found(
            &what,
            json!({"type": "vector", "space": "scene", "vector": query, "k": 2, "exact": exact}),
            Some(json!({"asset_ids": ["rand-150"]})),
        );
        h.check_eq(&format!("{what}: assets"), assets, vec!["rand-150".to_string()]);
        h.check(same(&hits, &expected), || format!("{what}: expected {expected:?} (exact, computed here), got {hits:?}"));
    }
    // Exact over everything, cosine and L2.
    for (metric, function) in [("cosine", cosine as fn(&[f32], &[f32]) -> f64), ("l2", minus_l2)] {
        let what = format!("exact {metric}, k=5, no filter");
        let expected = best(function, None, 5);
        let (_, hits) =
            found(&what, json!({"type": "vector", "space": "scene", "vector": query, "k": 5, "exact": true, "metric": metric}), None);
        h.check(same(&hits, &expected), || format!("{what}: expected {expected:?}, got {hits:?}"));
    }
    // Approximate, unfiltered: the nearest is asset 0's first vector.
    let (_, hits) = found("approximate k=1", json!({"type": "vector", "space": "scene", "vector": query, "k": 1}), None);
    h.check(hits.first().is_some_and(|(id, _)| id == "rand-000-v0"), || {
        format!("approximate k=1: expected rand-000-v0 first, got {hits:?}")
    });
    // k means k: every k from 1 to 8 returns exactly the k nearest (the k-th included).
    for (metric, function) in [("cosine", cosine as fn(&[f32], &[f32]) -> f64), ("l2", minus_l2)] {
        let mut wrong = Vec::new();
        for k in 1..=8 {
            let expected = best(function, None, k);
            let clause = json!({"type": "vector", "space": "scene", "vector": query, "k": k, "exact": true, "metric": metric});
            let (_, hits) = found(&format!("exact {metric} k={k}"), clause, None);
            if !same(&hits, &expected) {
                let missing: Vec<&(String, f64)> = expected.iter().filter(|e| !hits.iter().any(|g| g.0 == e.0)).collect();
                wrong.push(format!("k={k}: {} hits, missing {missing:?}", hits.len()));
            }
        }
        h.check(wrong.is_empty(), || format!("exact {metric}, k = 1..=8 against brute force: {}", wrong.join("; ")));
    }
    h.finish();
}

/// With an embedder configured that cannot be reached, `q`'s free words still search the
/// dialogue, and the reply says the embedder failed (`warnings`) instead of hiding it.
#[test]
fn an_embedder_failure_is_a_warning_in_the_search_reply_and_the_words_still_search_the_dialogue() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 9 (discard) has no listener here: the connection is refused at once.
    let node = TestNode::start(dir.path(), &["--set", "embedder.url=http://127.0.0.1:9/v1/embeddings"]);
    let client = node.client();
    let line = json!({
        "id": "line-1", "asset_id": "brk", "model": "asr", "model_version": "1", "track": "dialogue",
        "start_ms": 1000, "end_ms": 3000, "text": "we were on a break", "language": "en"
    });
    client.post_ndjson_retrying(line.to_string().as_bytes(), 20).expect("ingest");
    node.wait_searchable(std::time::Duration::from_secs(30));
    let reply = client.send("POST", "/v1/search", "application/json", json!({"q": "break"}).to_string().as_bytes()).expect("search");
    let reply: Value = serde_json::from_str(&reply).expect("JSON reply");
    assert_eq!(reply["assets"][0]["asset_id"], "brk", "the words searched the dialogue: {reply}");
    let warnings = reply["warnings"].to_string();
    assert!(warnings.contains("embedder failed"), "the reply names the embedder's failure: {reply}");
}
