//! Malformed requests, table-driven: every row must be refused with the documented status and
//! the JSON error body `{"error": {"code", "message", "field"?, "item"?}}` (../shared/API.md),
//! the node must survive all of them, and none may store anything. Afterwards a valid batch
//! proves the node still ingests, re-sends are idempotent and a changed re-send conflicts.
//!
//! Limits are lowered or pinned on the command line so the "too large" rows stay cheap and do
//! not depend on defaults.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::TestNode;
use rushes_client::{Client, ClientError};
use serde_json::{json, Value};

const MAX_BATCH_ITEMS: usize = 50;
const MAX_BODY_BYTES: usize = 1_000_000;
const MAX_ID_BYTES: usize = 256;
const MAX_LABEL_BYTES: usize = 256;
const MAX_TEXT_BYTES: usize = 8 * 1024;
const MAX_TIME_MS: u64 = 604_800_000;
const MAX_LIMIT: usize = 1000;
const MAX_QUERY_BYTES: usize = 4096;
/// Fixed body limits of `POST /v1/search` and `PUT /v1/assets/{id}` (node/src/http.rs).
const SEARCH_BODY_BYTES: usize = 1024 * 1024;
const ASSET_BODY_BYTES: usize = 64 * 1024;
/// The default vector space "scene" (not configurable from the command line).
const SCENE_DIMENSIONS: usize = 512;
/// Far deeper than serde_json's recursion limit (128).
const DEEP: usize = 10_000;

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

fn node_args() -> Vec<String> {
    [
        ("limits.max_batch_items", MAX_BATCH_ITEMS.to_string()),
        ("limits.max_body_bytes", MAX_BODY_BYTES.to_string()),
        ("limits.max_id_bytes", MAX_ID_BYTES.to_string()),
        ("limits.max_label_bytes", MAX_LABEL_BYTES.to_string()),
        ("limits.max_text_bytes", MAX_TEXT_BYTES.to_string()),
        ("limits.max_time_ms", MAX_TIME_MS.to_string()),
        ("limits.max_limit", MAX_LIMIT.to_string()),
        ("limits.max_query_bytes", MAX_QUERY_BYTES.to_string()),
    ]
    .into_iter()
    .flat_map(|(key, value)| ["--set".to_string(), format!("{key}={value}")])
    .collect()
}

// ---------------------------------------------------------------------------------------------
// Annotation builders

/// A valid annotation (the API.md example).
fn good(id: &str) -> Value {
    json!({"id": id, "asset_id": "s03e07", "model": "faces", "model_version": "2.1",
           "track": "character", "start_ms": 2000, "end_ms": 8000, "label": "Joey",
           "confidence": 0.93})
}

/// A valid annotation carrying a vector in the "scene" space.
fn good_vector(id: &str) -> Value {
    json!({"id": id, "asset_id": "s03e07", "model": "places", "model_version": "1.0",
           "track": "scene", "start_ms": 4000, "end_ms": 9000, "label": "kitchen",
           "vector_space": "scene", "vector": vec![0.01; SCENE_DIMENSIONS]})
}

/// `base` with `key` set to `value`.
fn with(mut base: Value, key: &str, value: Value) -> Value {
    base.as_object_mut().expect("annotation builders make objects").insert(key.to_string(), value);
    base
}

/// `base` without `key`.
fn without(mut base: Value, key: &str) -> Value {
    let removed = base.as_object_mut().expect("annotation builders make objects").remove(key);
    assert!(removed.is_some(), "test bug: {key} is not in the base annotation");
    base
}

/// A JSON-array body.
fn array(items: &[Value]) -> Vec<u8> {
    serde_json::to_vec(items).expect("serialize a batch")
}

/// An NDJSON body, one raw line each.
fn lines(lines: &[String]) -> Vec<u8> {
    let mut body = lines.join("\n");
    body.push('\n');
    body.into_bytes()
}

/// `[good("ok-0"), bad]`: the bad item is item 1, and the good one must not be stored either.
fn after_good(bad: Value) -> Vec<u8> {
    array(&[good("ok-0"), bad])
}

/// `text` with `from` replaced once; panics if `from` is absent (a test bug).
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "test bug: {from:?} not in {text}");
    text.replacen(from, to, 1)
}

// ---------------------------------------------------------------------------------------------
// The table

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// Expected `error.field`; `None`: the body must not carry one.
    field: Option<&'static str>,
    /// Expected `error.item`; `None`: the body must not carry one.
    item: Option<usize>,
    /// A string the message must contain.
    mentions: Option<&'static str>,
}

impl Case {
    fn request(
        name: &'static str,
        method: &'static str,
        path: impl Into<String>,
        content_type: &'static str,
        body: impl Into<Vec<u8>>,
    ) -> Case {
        Case {
            name,
            method,
            path: path.into(),
            content_type,
            body: body.into(),
            status: 0,
            code: "",
            field: None,
            item: None,
            mentions: None,
        }
    }

    fn ingest(name: &'static str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Case {
        Case::request(name, "POST", "/v1/annotations", content_type, body)
    }

    fn search(name: &'static str, body: impl Into<Vec<u8>>) -> Case {
        Case::request(name, "POST", "/v1/search", JSON, body)
    }

    fn put_asset(name: &'static str, asset_id: &str, body: impl Into<Vec<u8>>) -> Case {
        Case::request(name, "PUT", format!("/v1/assets/{asset_id}"), JSON, body)
    }

    fn get(name: &'static str, path: impl Into<String>) -> Case {
        Case::request(name, "GET", path, "", Vec::new())
    }

    fn rejects(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }

    fn field(mut self, field: &'static str) -> Case {
        self.field = Some(field);
        self
    }

    fn item(mut self, item: usize) -> Case {
        self.item = Some(item);
        self
    }

    fn mentions(mut self, text: &'static str) -> Case {
        self.mentions = Some(text);
        self
    }
}

fn cases() -> Vec<Case> {
    let good_line = |id: &str| good(id).to_string();
    let deep_arrays = format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(DEEP), "}".repeat(DEEP));
    let over_limit_batch: Vec<Value> = (0..=MAX_BATCH_ITEMS).map(|i| good(&format!("many-{i}"))).collect();
    // Valid annotations, but the body is over max_body_bytes (and under max_batch_items).
    let padding = "p".repeat(MAX_BODY_BYTES / 30);
    let big_body = array(&(0..40).map(|i| with(good(&format!("big-{i}")), "padding", json!(padding))).collect::<Vec<_>>());
    assert!(big_body.len() > MAX_BODY_BYTES && big_body.len() < MAX_BODY_BYTES * 2, "test bug: big body is {} bytes", big_body.len());
    let mut invalid_utf8 = good("utf8-0").to_string().into_bytes();
    let joey = invalid_utf8.windows(4).position(|w| w == b"Joey").expect("label in the good annotation");
    invalid_utf8[joey + 1] = 0xff;

    vec![
        // --- Broken JSON, application/json: the array itself does not parse, so no item.
        Case::ingest("json: truncated body", JSON, br#"[{"id": "t-1", "asset_id": "s03e07", "model": "fa"#.to_vec())
            .rejects(400, "invalid_json"),
        Case::ingest("json: trailing garbage after the array", JSON, format!("[{}] xyz", good_line("tg-0"))).rejects(400, "invalid_json"),
        Case::ingest("json: single-quoted strings", JSON, format!("[{}]", good_line("sq-0").replace('"', "'")))
            .rejects(400, "invalid_json"),
        Case::ingest("json: body is an object, not an array", JSON, good_line("obj-0")).rejects(400, "invalid_json"),
        Case::ingest("json: body is a number, not an array", JSON, "42").rejects(400, "invalid_json"),
        Case::ingest("json: empty body", JSON, "").rejects(400, "invalid_json"),
        Case::ingest(
            "json: NaN literal as confidence",
            JSON,
            format!("[{}, {}]", good_line("ok-0"), replace(&good_line("nan-1"), "0.93", "NaN")),
        )
        .rejects(400, "invalid_json"),
        Case::ingest(
            "json: Infinity literal in a vector",
            JSON,
            format!("[{}]", replace(&good_vector("inf-0").to_string(), "[0.01,", "[Infinity,")),
        )
        .rejects(400, "invalid_json"),
        Case::ingest("json: invalid UTF-8 bytes", JSON, [b"[".as_slice(), &invalid_utf8, b"]"].concat()).rejects(400, "invalid_json"),
        Case::ingest(
            "json: 10,000 nested arrays inside a field",
            JSON,
            format!("[{}]", replace(&good_line("deep-0"), "{", &format!("{{\"nested_notes\":{deep_arrays},"))),
        )
        .rejects(400, "invalid_json")
        .item(0),
        // --- NDJSON: items are the non-empty lines, counted from 0.
        Case::ingest(
            "ndjson: one broken line among good ones (blank lines not counted)",
            NDJSON,
            lines(&[
                good_line("nd-0"),
                String::new(),
                good_line("nd-1"),
                "   ".into(),
                "{\"id\": \"nd-2\", \"asset_id\": ".into(),
                good_line("nd-3"),
            ]),
        )
        .rejects(400, "invalid_json")
        .item(2),
        Case::ingest(
            "ndjson: NaN literal as confidence",
            NDJSON,
            lines(&[good_line("ndn-0"), replace(&good_line("ndn-1"), "0.93", "NaN")]),
        )
        .rejects(400, "invalid_json")
        .item(1),
        Case::ingest("ndjson: -Infinity literal as start_ms", NDJSON, lines(&[replace(&good_line("ndi-0"), "2000", "-Infinity")]))
            .rejects(400, "invalid_json")
            .item(0),
        Case::ingest(
            "ndjson: a line holding an array instead of an object",
            NDJSON,
            lines(&[good_line("nda-0"), format!("[{}]", good_line("nda-1"))]),
        )
        .rejects(422, "invalid_field")
        .item(1),
        Case::ingest(
            "ndjson: 10,000 nested objects inside a field",
            NDJSON,
            lines(&[replace(&good_line("ndd-0"), "{", &format!("{{\"nested_notes\":{deep_objects},"))]),
        )
        .rejects(400, "invalid_json")
        .item(0),
        Case::ingest("ndjson: only blank lines", NDJSON, "\n  \n\r\n").rejects(422, "invalid_field"),
        Case::ingest("ndjson: invalid UTF-8 bytes", NDJSON, [good_line("ndu-0").as_bytes(), b"\n", &invalid_utf8, b"\n"].concat())
            .rejects(400, "invalid_json"),
        // --- Wrong types and out-of-range values: 422 naming the item and the field.
        Case::ingest("id is a number", JSON, after_good(with(good("x"), "id", json!(7)))).rejects(422, "invalid_field").field("id").item(1),
        Case::ingest("start_ms is a string", JSON, after_good(with(good("ty-1"), "start_ms", json!("2000"))))
            .rejects(422, "invalid_field")
            .field("start_ms")
            .item(1),
        Case::ingest("start_ms is negative", JSON, after_good(with(good("ty-1"), "start_ms", json!(-3))))
            .rejects(422, "invalid_field")
            .field("start_ms")
            .item(1),
        Case::ingest("start_ms is fractional (1.5)", JSON, after_good(with(good("ty-1"), "start_ms", json!(1.5))))
            .rejects(422, "invalid_field")
            .field("start_ms")
            .item(1),
        Case::ingest("confidence is a string", JSON, after_good(with(good("ty-1"), "confidence", json!("high"))))
            .rejects(422, "invalid_field")
            .field("confidence")
            .item(1),
        Case::ingest("vector is a string", JSON, after_good(with(good_vector("ty-1"), "vector", json!("0.1, 0.2"))))
            .rejects(422, "invalid_field")
            .field("vector")
            .item(1),
        Case::ingest(
            "vector has a string element",
            JSON,
            after_good(with(good_vector("ty-1"), "vector", {
                let mut v: Vec<Value> = vec![json!(0.01); SCENE_DIMENSIONS];
                v[7] = json!("0.5");
                Value::Array(v)
            })),
        )
        .rejects(422, "invalid_field")
        .field("vector")
        .item(1),
        Case::ingest(
            "vector element 1e39 overflows f32",
            JSON,
            after_good(with(good_vector("ty-1"), "vector", {
                let mut v = vec![0.01; SCENE_DIMENSIONS];
                v[3] = 1e39;
                json!(v)
            })),
        )
        .rejects(422, "invalid_field")
        .field("vector")
        .item(1),
        Case::ingest("confidence 1.5 is above 1", JSON, after_good(with(good("ty-1"), "confidence", json!(1.5))))
            .rejects(422, "invalid_field")
            .field("confidence")
            .item(1),
        Case::ingest("confidence -0.1 is below 0", JSON, after_good(with(good("ty-1"), "confidence", json!(-0.1))))
            .rejects(422, "invalid_field")
            .field("confidence")
            .item(1),
        Case::ingest("inverted interval (end_ms < start_ms)", JSON, after_good(with(good("ty-1"), "end_ms", json!(1000))))
            .rejects(422, "invalid_field")
            .field("end_ms")
            .item(1),
        Case::ingest("empty interval (end_ms == start_ms)", JSON, after_good(with(good("ty-1"), "end_ms", json!(2000))))
            .rejects(422, "invalid_field")
            .field("end_ms")
            .item(1),
        Case::ingest("end_ms beyond max_time_ms", JSON, after_good(with(good("ty-1"), "end_ms", json!(MAX_TIME_MS + 1))))
            .rejects(422, "invalid_field")
            .field("end_ms")
            .item(1),
        Case::ingest("language tag with a space", JSON, after_good(with(good("ty-1"), "language", json!("en us"))))
            .rejects(422, "invalid_field")
            .field("language")
            .item(1),
        Case::ingest("label with a control character", JSON, after_good(with(good("ty-1"), "label", json!("Jo\u{7}ey"))))
            .rejects(422, "invalid_field")
            .field("label")
            .item(1),
        // --- Missing or malformed required fields (bad item first, then a good one).
        Case::ingest("missing id", JSON, array(&[without(good("m-0"), "id"), good("ok-1")]))
            .rejects(422, "invalid_field")
            .field("id")
            .item(0),
        Case::ingest("missing asset_id", JSON, array(&[without(good("m-0"), "asset_id"), good("ok-1")]))
            .rejects(422, "invalid_field")
            .field("asset_id")
            .item(0),
        Case::ingest("missing model", JSON, array(&[without(good("m-0"), "model"), good("ok-1")]))
            .rejects(422, "invalid_field")
            .field("model")
            .item(0),
        Case::ingest("missing model_version", JSON, array(&[without(good("m-0"), "model_version"), good("ok-1")]))
            .rejects(422, "invalid_field")
            .field("model_version")
            .item(0),
        Case::ingest("missing track", JSON, array(&[without(good("m-0"), "track"), good("ok-1")]))
            .rejects(422, "invalid_field")
            .field("track")
            .item(0),
        Case::ingest("missing start_ms", JSON, array(&[without(good("m-0"), "start_ms"), good("ok-1")]))
            .rejects(422, "invalid_field")
            .field("start_ms")
            .item(0),
        Case::ingest("empty id string", JSON, after_good(with(good("x"), "id", json!(""))))
            .rejects(422, "invalid_field")
            .field("id")
            .item(1),
        Case::ingest("blank id string", JSON, after_good(with(good("x"), "id", json!("   "))))
            .rejects(422, "invalid_field")
            .field("id")
            .item(1),
        Case::ingest("asset_id with a slash", JSON, after_good(with(good("f-1"), "asset_id", json!("s03/e07"))))
            .rejects(422, "invalid_field")
            .field("asset_id")
            .item(1),
        Case::ingest("asset_id with a space", JSON, after_good(with(good("f-1"), "asset_id", json!("s03 e07"))))
            .rejects(422, "invalid_field")
            .field("asset_id")
            .item(1),
        Case::ingest("track with upper case", JSON, after_good(with(good("f-1"), "track", json!("Character"))))
            .rejects(422, "invalid_field")
            .field("track")
            .item(1),
        // --- Vectors and payload.
        Case::ingest(
            "vector with the wrong dimension (3, scene has 512)",
            JSON,
            after_good(with(good_vector("v-1"), "vector", json!([0.1, 0.2, 0.3]))),
        )
        .rejects(422, "invalid_field")
        .field("vector")
        .item(1)
        .mentions("512"),
        Case::ingest("unknown vector_space", JSON, after_good(with(good_vector("v-1"), "vector_space", json!("faces"))))
            .rejects(422, "invalid_field")
            .field("vector_space")
            .item(1),
        Case::ingest("vector without vector_space", JSON, after_good(without(good_vector("v-1"), "vector_space")))
            .rejects(422, "invalid_field")
            .field("vector_space")
            .item(1),
        Case::ingest("vector_space without vector", JSON, after_good(without(good_vector("v-1"), "vector")))
            .rejects(422, "invalid_field")
            .field("vector")
            .item(1),
        Case::ingest("all-zero vector", JSON, after_good(with(good_vector("v-1"), "vector", json!(vec![0.0; SCENE_DIMENSIONS]))))
            .rejects(422, "invalid_field")
            .field("vector")
            .item(1),
        Case::ingest("no payload (no label, text or vector)", JSON, after_good(without(good("v-1"), "label")))
            .rejects(422, "invalid_field")
            .field("label")
            .item(1),
        Case::ingest(
            "misspelled field \"confidance\"",
            JSON,
            after_good(with(without(good("v-1"), "confidence"), "confidance", json!(0.9))),
        )
        .rejects(422, "invalid_field")
        .field("confidance")
        .item(1)
        .mentions("confidence"),
        Case::ingest("batch item is a number, not an object", JSON, format!("[{}, 7]", good_line("ok-0")))
            .rejects(422, "invalid_field")
            .item(1),
        // --- Size limits: 413 too_large.
        Case::ingest(
            "label one byte over max_label_bytes",
            JSON,
            after_good(with(good("s-1"), "label", json!("J".repeat(MAX_LABEL_BYTES + 1)))),
        )
        .rejects(413, "too_large")
        .field("label")
        .item(1),
        Case::ingest(
            "text one byte over max_text_bytes",
            JSON,
            after_good(with(without(good("s-1"), "label"), "text", json!("w".repeat(MAX_TEXT_BYTES + 1)))),
        )
        .rejects(413, "too_large")
        .field("text")
        .item(1),
        Case::ingest("id one byte over max_id_bytes", JSON, after_good(with(good("s-1"), "id", json!("i".repeat(MAX_ID_BYTES + 1)))))
            .rejects(413, "too_large")
            .field("id")
            .item(1),
        Case::ingest("json batch over max_batch_items", JSON, array(&over_limit_batch)).rejects(413, "too_large"),
        Case::ingest(
            "ndjson batch over max_batch_items",
            NDJSON,
            lines(&over_limit_batch.iter().map(Value::to_string).collect::<Vec<_>>()),
        )
        .rejects(413, "too_large"),
        Case::ingest("body over max_body_bytes", JSON, big_body).rejects(413, "too_large"),
        // --- Whole-batch errors.
        Case::ingest("empty array", JSON, "[]").rejects(422, "invalid_field"),
        Case::ingest("unsupported Content-Type text/plain", "text/plain", array(&[good("ct-0")])).rejects(415, "unsupported_media_type"),
        Case::ingest(
            "same id twice in one batch with different content",
            JSON,
            array(&[good("dup-0"), with(good("dup-0"), "label", json!("Chandler"))]),
        )
        .rejects(409, "conflict")
        .field("id")
        .item(1),
        // --- Search.
        Case::search("search: unknown field \"per_aset\"", r#"{"q": "Joey", "per_aset": 3}"#)
            .rejects(422, "invalid_field")
            .field("per_aset")
            .mentions("per_aset"),
        Case::search("search: per_asset 0", r#"{"q": "Joey", "per_asset": 0}"#).rejects(422, "invalid_field").field("per_asset"),
        Case::search("search: per_asset negative", r#"{"q": "Joey", "per_asset": -1}"#).rejects(422, "invalid_field").field("per_asset"),
        Case::search("search: limit 100000", r#"{"q": "Joey", "limit": 100000}"#).rejects(422, "invalid_field").field("limit"),
        Case::search("search: no q and no clauses", "{}").rejects(422, "invalid_field").field("q"),
        Case::search(
            "search: vector clause with the wrong dimension",
            json!({"clauses": [{"type": "vector", "space": "scene", "vector": [0.1, 0.2]}]}).to_string(),
        )
        .rejects(422, "invalid_field")
        .field("clauses[0].vector")
        .mentions("512"),
        Case::search("search: q over max_query_bytes", json!({"q": "joey ".repeat(MAX_QUERY_BYTES / 5 + 1)}).to_string())
            .rejects(413, "too_large")
            .field("q"),
        Case::search("search: filters.to_ms before filters.from_ms", r#"{"q": "Joey", "filters": {"from_ms": 5000, "to_ms": 1000}}"#)
            .rejects(422, "invalid_field")
            .field("filters.to_ms"),
        Case::search("search: unknown mode", r#"{"q": "Joey", "mode": "both"}"#).rejects(422, "invalid_field").field("mode"),
        Case::search("search: unknown clause type", r#"{"clauses": [{"type": "labl", "label": "Joey"}]}"#)
            .rejects(422, "invalid_field")
            .field("clauses[0].type"),
        Case::search("search: limit 0", r#"{"q": "Joey", "limit": 0}"#).rejects(422, "invalid_field").field("limit"),
        Case::search("search: body over its 1 MiB limit", json!({"q": "j".repeat(SEARCH_BODY_BYTES + 1)}).to_string())
            .rejects(413, "too_large"),
        Case::search("search: broken JSON", r#"{"q": "Joey", "#).rejects(400, "invalid_json"),
        Case::search("search: trailing garbage", r#"{"q": "Joey"} {"q": "Ross"}"#).rejects(400, "invalid_json"),
        Case::request("explain: unknown field", "POST", "/v1/search/explain", JSON, r#"{"q": "Joey", "per_aset": 3}"#)
            .rejects(422, "invalid_field")
            .field("per_aset"),
        // --- Assets.
        Case::put_asset("put asset: unknown field \"titel\"", "s03e07", r#"{"titel": "The One with the Kitchen"}"#)
            .rejects(422, "invalid_field")
            .field("titel"),
        Case::put_asset("put asset: fps -1", "s03e07", r#"{"title": "The One with the Kitchen", "fps": -1}"#)
            .rejects(422, "invalid_field")
            .field("fps"),
        Case::put_asset("put asset: season as a string", "s03e07", r#"{"title": "The One with the Kitchen", "season": "3"}"#)
            .rejects(422, "invalid_field")
            .field("season"),
        Case::put_asset("put asset: asset id with '!'", "s03!e07", r#"{"title": "The One with the Kitchen"}"#)
            .rejects(422, "invalid_field")
            .field("asset_id"),
        Case::put_asset("put asset: body over its 64 KiB limit", "s03e07", json!({"title": "t".repeat(ASSET_BODY_BYTES + 1)}).to_string())
            .rejects(413, "too_large"),
        Case::put_asset("put asset: broken JSON", "s03e07", r#"{"title": "The One"#).rejects(400, "invalid_json"),
        // --- Reads.
        Case::get("buckets: to_ms before from_ms", "/v1/assets/s03e07/buckets?from_ms=5000&to_ms=1000")
            .rejects(422, "invalid_field")
            .field("to_ms"),
        Case::get("buckets: to_ms equal to from_ms", "/v1/assets/s03e07/buckets?from_ms=5000&to_ms=5000")
            .rejects(422, "invalid_field")
            .field("to_ms"),
        Case::get("buckets: unknown query parameter", "/v1/assets/s03e07/buckets?frm_ms=0").rejects(422, "invalid_field").field("query"),
        Case::get("suggest: no q", "/v1/suggest").rejects(422, "invalid_field").field("query"),
        Case::get("buckets: negative from_ms", "/v1/assets/s03e07/buckets?from_ms=-1").rejects(422, "invalid_field").field("query"),
        Case::get("asset id one byte over 128 in the path", format!("/v1/assets/{}", "a".repeat(129)))
            .rejects(422, "invalid_field")
            .field("asset_id"),
        Case::get("unknown route", "/v1/nope").rejects(404, "not_found"),
        Case::request("wrong method on a known route", "DELETE", "/v1/annotations", JSON, Vec::new()).rejects(405, "method_not_allowed"),
        Case::search("search: body is an array", r#"["Joey"]"#).rejects(422, "invalid_field").field("body"),
        Case::put_asset("put asset: title over 512 bytes", "s03e07", json!({"title": "t".repeat(513)}).to_string())
            .rejects(413, "too_large")
            .field("title"),
        Case::get("asset that does not exist", "/v1/assets/no-such-asset").rejects(404, "not_found"),
        Case::get("raw annotation that does not exist", "/v1/assets/s03e07/annotations/no-such-annotation").rejects(404, "not_found"),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running and checking

fn shorten(text: &str) -> String {
    const MAX: usize = 400;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Sends one row and returns what is wrong with the answer, if anything.
fn check(client: &Client, case: &Case) -> Result<(), String> {
    assert!(case.status != 0 && !case.code.is_empty(), "test bug: row {:?} has no expectation", case.name);
    let result = if case.method == "GET" && case.body.is_empty() {
        client.get(&case.path)
    } else {
        client.send(case.method, &case.path, case.content_type, &case.body)
    };
    let (status, body) = match result {
        Ok(body) => return Err(format!("expected {} {}, but the request succeeded: {}", case.status, case.code, shorten(&body))),
        Err(ClientError::Status { status, body, .. }) => (status, body),
        Err(other) => return Err(format!("expected {} {}, got no HTTP answer: {other}", case.status, case.code)),
    };
    let json: Value =
        serde_json::from_str(&body).map_err(|e| format!("status {status}; the body is not JSON ({e}): {}", shorten(&body)))?;
    let Some(error) = json.get("error").and_then(Value::as_object) else {
        return Err(format!("status {status}; the body has no \"error\" object: {}", shorten(&body)));
    };
    let mut problems = Vec::new();
    if status != case.status {
        problems.push(format!("status {status}, expected {}", case.status));
    }
    let code = error.get("code").and_then(Value::as_str);
    if code != Some(case.code) {
        problems.push(format!("code {code:?}, expected {:?}", case.code));
    }
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    if message.trim().is_empty() {
        problems.push("the message is missing or empty".to_string());
    }
    if let Some(text) = case.mentions {
        if !message.contains(text) {
            problems.push(format!("the message does not mention {text:?}"));
        }
    }
    let field = error.get("field").and_then(Value::as_str);
    if field != case.field {
        problems.push(format!("field {field:?}, expected {:?}", case.field));
    }
    let item = error.get("item").map(|v| v.as_u64().map(|i| i as usize).ok_or_else(|| format!("{v}")));
    match (&item, case.item) {
        (None, None) => {}
        (Some(Ok(got)), Some(want)) if *got == want => {}
        _ => problems.push(format!("item {item:?}, expected {:?}", case.item)),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}; body: {}", problems.join("; "), shorten(&body)))
    }
}

/// `raw_annotations` of every shard, from `GET /v1/cluster`.
fn raw_counts(client: &Client) -> Vec<u64> {
    let status = client.get_json("/v1/cluster").expect("GET /v1/cluster");
    let shards = status["shards"].as_array().unwrap_or_else(|| panic!("/v1/cluster has no shards array: {status}"));
    assert!(!shards.is_empty(), "/v1/cluster lists no shards: {status}");
    shards.iter().map(|s| s["raw_annotations"].as_u64().unwrap_or_else(|| panic!("shard without raw_annotations: {s}"))).collect()
}

/// Posts a JSON-array batch that must succeed and returns (accepted, created).
fn ingest_ok(client: &Client, items: &[Value]) -> (u64, u64) {
    let reply = client
        .send("POST", "/v1/annotations", JSON, &array(items))
        .unwrap_or_else(|e| panic!("the valid batch {items:?} was refused: {e}"));
    let reply: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("ingest reply is not JSON ({e}): {reply}"));
    let count = |key: &str| reply[key].as_u64().unwrap_or_else(|| panic!("ingest reply without {key}: {reply}"));
    (count("accepted"), count("created"))
}

/// A body larger than the limit sent with chunked transfer encoding (no Content-Length, so the
/// server only finds out while reading). Returns the status and the response body.
fn post_chunked(port: u16, token: &str, path: &str, total_bytes: usize) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the node");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    stream.set_write_timeout(Some(Duration::from_secs(60))).expect("write timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: {JSON}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("write the request head");
    let chunk = format!("[{}", " ".repeat(64 * 1024 - 1));
    let mut sent = 0;
    // The server may answer and stop reading before the whole body is sent: a failed write is
    // expected then, and the answer is read below.
    while sent < total_bytes {
        let frame = format!("{:x}\r\n{chunk}\r\n", chunk.len());
        if stream.write_all(frame.as_bytes()).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        assert!(!response.is_empty(), "no answer to the chunked over-limit body: {e}");
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in the answer: {}", shorten(&text)));
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

#[test]
fn malformed_requests_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = node_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = TestNode::start(dir.path(), &args);
    let client = node.client();
    assert!(raw_counts(&client).iter().all(|&n| n == 0), "a fresh node already holds annotations");

    let cases = cases();
    assert!(cases.len() >= 35, "the table has only {} rows", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(problem) = check(&client, case) {
            failures.push(format!("[{}] {} {}: {problem}", case.name, case.method, shorten(&case.path)));
        }
        assert!(node.is_running(), "the node died on row {:?}; log:\n{}", case.name, node.log());
    }
    assert!(failures.is_empty(), "{} of {} rows got the wrong answer:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // Over the body limit without a Content-Length: found while reading.
    let (status, body) = post_chunked(node.port, &node.token, "/v1/annotations", MAX_BODY_BYTES + 256 * 1024);
    assert_eq!(status, 413, "chunked body over max_body_bytes: {}", shorten(&body));
    let error: Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("chunked 413 body is not JSON ({e}): {}", shorten(&body)));
    assert_eq!(error["error"]["code"], "too_large", "chunked body over max_body_bytes: {error}");

    // The node survived everything and stored nothing.
    client.get("/health").unwrap_or_else(|e| panic!("/health after the bad input: {e}"));
    assert!(node.is_running(), "the node exited; log:\n{}", node.log());
    let counts = raw_counts(&client);
    assert!(counts.iter().all(|&n| n == 0), "rejected requests stored annotations: raw_annotations per shard {counts:?}");

    // It still ingests; a re-send is a no-op; a changed re-send under the same id conflicts.
    let valid = good("final-0");
    assert_eq!(ingest_ok(&client, &[valid.clone()]), (1, 1), "a valid annotation after the bad input");
    assert_eq!(ingest_ok(&client, &[valid.clone()]), (1, 0), "re-sending the same annotation");
    let changed = Case::ingest("same id, different content", JSON, array(&[with(valid, "label", json!("Chandler"))]))
        .rejects(409, "conflict")
        .field("id")
        .item(0);
    check(&client, &changed).unwrap_or_else(|problem| panic!("[{}]: {problem}", changed.name));
    // Extra fields are content too (the raw store keeps them): changing one is a conflict,
    // while reordering keys or respacing is the same content.
    let with_extra = with(good("final-1"), "bbox", json!([1, 2, 3, 4]));
    assert_eq!(ingest_ok(&client, &[with_extra.clone()]), (1, 1), "an annotation with an extra field");
    let reordered: serde_json::Map<String, Value> = with_extra.as_object().expect("object").clone().into_iter().rev().collect();
    assert_eq!(ingest_ok(&client, &[Value::Object(reordered)]), (1, 0), "the same content with keys in another order");
    let changed_extra = Case::ingest("same id, different extra field", JSON, array(&[with(with_extra, "bbox", json!([9, 9, 9, 9]))]))
        .rejects(409, "conflict")
        .field("id")
        .item(0);
    check(&client, &changed_extra).unwrap_or_else(|problem| panic!("[{}]: {problem}", changed_extra.name));
    let counts = raw_counts(&client);
    assert_eq!(counts.iter().sum::<u64>(), 2, "exactly the two valid annotations are stored: per shard {counts:?}");
    assert!(node.is_running(), "the node exited; log:\n{}", node.log());
}
