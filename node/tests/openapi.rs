//! `GET /openapi.json` is the contract client authors generate from: it must be OpenAPI 3.1,
//! name every route the server has (read from the router's source, so a new route without
//! documentation fails here) and nothing else, and the replies the server really sends, to
//! good and bad requests, must validate against its schemas. Objects are validated closed
//! (`additionalProperties: false` where the document lists properties), so a field the server
//! sends but the document lacks fails too.

mod common;

use std::collections::BTreeSet;

use common::TestNode;
use rushes_client::{Client, ClientError};
use serde_json::{json, Value};

/// (path, method) of every route in `http::configure`, from its source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")).expect("read src/http/mod.rs");
    let start = source.find("pub fn configure(").expect("http::configure in the source");
    let configure = &source[start..];
    let end = configure.find("\n}\n").map(|i| i + 1).unwrap_or(configure.len());
    let configure = &configure[..end];
    let mut routes = BTreeSet::new();
    let pieces: Vec<&str> = configure.split("resource(\"").skip(1).collect();
    for piece in pieces {
        let path = piece.split('"').next().expect("a quoted path").to_string();
        for method in ["get", "post", "put", "delete"] {
            if piece.contains(&format!("web::{method}()")) {
                routes.insert((path.clone(), method.to_string()));
            }
        }
    }
    assert!(routes.len() > 20, "the route list was not found in http::configure: {routes:?}");
    routes
}

fn documented_routes(document: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                routes.insert((path.clone(), method.to_string()));
            }
        }
    }
    routes
}

/// Sets `additionalProperties: false` on every object schema that lists its properties and
/// says nothing about others, and is not combined with others by `allOf`.
fn close_objects(schema: &mut Value, inside_all_of: bool) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") && !inside_all_of {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, value) in map.iter_mut() {
                close_objects(value, key == "allOf" || (inside_all_of && key != "properties"));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| close_objects(item, inside_all_of)),
        _ => {}
    }
}

/// Every error code a handler can answer (`method_not_allowed` answers a route's other
/// methods, outside any operation).
fn handler_codes() -> impl Iterator<Item = &'static str> {
    rushes_protocol::ErrorCode::ALL
        .into_iter()
        .filter(|code| *code != rushes_protocol::ErrorCode::MethodNotAllowed)
        .map(|code| code.as_str())
}

/// The schema `schema` names, following one `$ref` into `components`.
fn resolve<'d>(document: &'d Value, schema: &'d Value) -> &'d Value {
    match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => &document["components"]["schemas"][name],
        None => schema,
    }
}

/// The examples a JSON media type carries, its own or its schema's, by name.
fn media_examples(document: &Value, media: &Value) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    if let Some(example) = media.get("example") {
        found.push(("example".to_string(), example.clone()));
    }
    for (name, example) in media.get("examples").and_then(Value::as_object).into_iter().flatten() {
        found.push((name.clone(), example["value"].clone()));
    }
    if found.is_empty() {
        if let Some(example) = resolve(document, &media["schema"]).get("example") {
            found.push(("schema example".to_string(), example.clone()));
        }
    }
    found
}

fn validate_example(document: &Value, schema: &Value, example: &Value, what: &str) {
    let mut root = schema.clone();
    if let Value::Object(map) = &mut root {
        map.insert("components".into(), document["components"].clone());
    }
    let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{what}: bad schema: {e}"));
    let errors: Vec<String> = validator.iter_errors(example).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{what}: the example does not match the schema: {}\nexample: {example}", errors.join("; "));
}

/// Every JSON request body and reply of every operation carries an example, each error reply
/// one per code its status carries, and every example is an instance of its (closed) schema;
/// every error code a handler can answer appears in some example.
fn every_operation_has_examples_that_match_its_schemas(document: &Value) {
    let mut codes_shown = BTreeSet::new();
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let mut media = Vec::new();
            if let Some(body) = operation.pointer("/requestBody/content/application~1json") {
                media.push(("request body".to_string(), body));
            }
            for (status, response) in operation["responses"].as_object().expect("responses") {
                if let Some(body) = response.pointer("/content/application~1json") {
                    media.push((format!("{status} reply"), body));
                }
                if status == "429" || status == "503" {
                    assert!(
                        response.pointer("/headers/Retry-After").is_some(),
                        "{method} {path} {status}: no Retry-After header documented"
                    );
                }
            }
            for (what, body) in media {
                let what = format!("{method} {path} {what}");
                let examples = media_examples(document, body);
                assert!(!examples.is_empty(), "{what}: no example");
                for (name, example) in examples {
                    validate_example(document, &body["schema"], &example, &format!("{what} ({name})"));
                    if let Some(code) = example.pointer("/error/code").and_then(Value::as_str) {
                        codes_shown.insert(code.to_string());
                    }
                    checked += 1;
                }
            }
        }
    }
    for code in handler_codes() {
        assert!(codes_shown.contains(code), "no operation shows an example of error code {code}");
    }
    eprintln!("{checked} request and reply examples validated against their schemas");
}

struct Contract {
    document: Value,
    checked: std::cell::RefCell<Vec<String>>,
}

impl Contract {
    /// Validates `body` as the reply to `method path` with `status`.
    fn check(&self, method: &str, path: &str, status: u16, body: &str) {
        let operation = &self.document["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let response = &operation["responses"][status.to_string()];
        assert!(response.is_object(), "{method} {path} answered {status}, a status the document does not list: {body}");
        let schema = &response["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {path} {status}: no application/json schema documented");
        let mut root = schema.clone();
        if let Value::Object(map) = &mut root {
            map.insert("components".into(), self.document["components"].clone());
        }
        let instance: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {body}"));
        let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{method} {path} {status}: bad schema: {e}"));
        let errors: Vec<String> = validator.iter_errors(&instance).map(|e| format!("{} at {}", e, e.instance_path)).collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: the reply does not match the document:\n{}\nreply: {body}",
            errors.join("\n")
        );
        self.checked.borrow_mut().push(format!("{method} {path} {status}"));
    }

    /// Sends a request and validates the reply, whatever its status.
    fn call(&self, client: &Client, method: &str, path: &str, template: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        let result = match method {
            "get" => client.get(path),
            _ => client.send(&method.to_uppercase(), path, content_type, body),
        };
        let (status, text) = match result {
            Ok(text) => (200, text),
            Err(ClientError::Status { status, body, .. }) => (status, body),
            Err(e) => panic!("{method} {path}: {e}"),
        };
        self.check(method, template, status, &text);
        (status, text)
    }
}

#[test]
fn the_openapi_document_names_every_route_and_real_replies_match_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client();

    // Open, like the page: it describes the API, not the data.
    let text = node.anonymous_client().get("/openapi.json").expect("GET /openapi.json without a key");
    let mut document: Value = serde_json::from_str(&text).expect("the document is JSON");
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "OpenAPI 3.1: {}", document["openapi"]);

    // Every route, and only routes that exist.
    let in_source = routes_in_source();
    let documented = documented_routes(&document);
    let undocumented: Vec<_> = in_source.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&in_source).collect();
    assert!(undocumented.is_empty(), "routes missing from /openapi.json: {undocumented:?}");
    assert!(stale.is_empty(), "documented routes the server does not have: {stale:?}");
    // Every error code of the API is in the document's ErrorCode.
    let codes: BTreeSet<String> = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    for code in handler_codes() {
        assert!(codes.contains(code), "error code {code} missing from the document: {codes:?}");
    }

    // Every example in the document is an instance of its own schema.
    let mut examples = 0;
    for (name, schema) in document["components"]["schemas"].as_object().expect("schemas") {
        if let Some(example) = schema.get("example") {
            let mut root = schema.clone();
            if let Value::Object(map) = &mut root {
                map.remove("example");
                map.insert("components".into(), document["components"].clone());
            }
            let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema {name}: {e}"));
            let errors: Vec<String> = validator.iter_errors(example).map(|e| format!("{e} at {}", e.instance_path)).collect();
            assert!(errors.is_empty(), "the example of {name} does not match its schema: {}", errors.join("; "));
            examples += 1;
        }
    }
    assert!(examples >= 10, "{examples} schemas carry an example");

    close_objects(&mut document, false);
    every_operation_has_examples_that_match_its_schemas(&document);
    let contract = Contract { document, checked: Default::default() };
    let json_type = "application/json";

    // Writes.
    let batch = [
        json!({"id": "c1", "asset_id": "ep1", "model": "faces", "model_version": "1", "track": "character",
               "start_ms": 0, "end_ms": 4000, "label": "Joey", "confidence": 0.9}),
        json!({"id": "s1", "asset_id": "ep1", "model": "places", "model_version": "1", "track": "scene",
               "start_ms": 0, "end_ms": 8000, "label": "kitchen", "confidence": 0.8}),
        json!({"id": "d1", "asset_id": "ep1", "model": "asr", "model_version": "1", "track": "dialogue",
               "start_ms": 1000, "end_ms": 3000, "text": "we were on a break", "language": "en"}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let (status, _) = contract.call(&client, "post", "/v1/annotations", "/v1/annotations", "application/x-ndjson", batch.as_bytes());
    assert_eq!(status, 200);
    let record =
        json!({"title": "The One with the Test", "series": "central-perk", "season": 1, "episode": 1, "fps": 23.976, "duration_ms": 60000});
    let (status, _) = contract.call(&client, "put", "/v1/assets/ep1", "/v1/assets/{asset_id}", json_type, record.to_string().as_bytes());
    assert_eq!(status, 200);
    let subtitles = b"1\n00:00:10,000 --> 00:00:12,000\nHow you doin'?\n";
    let (status, _) =
        contract.call(&client, "post", "/v1/assets/ep1/subtitles?language=en", "/v1/assets/{asset_id}/subtitles", "text/plain", subtitles);
    assert_eq!(status, 200);
    node.wait_searchable(std::time::Duration::from_secs(30));

    // Reads.
    for path in ["/v1/assets/ep1", "/v1/assets/ep1?consistency=strong"] {
        assert_eq!(contract.call(&client, "get", path, "/v1/assets/{asset_id}", "", b"").0, 200);
    }
    assert_eq!(
        contract.call(&client, "get", "/v1/assets/ep1/buckets?from_ms=0&to_ms=5000", "/v1/assets/{asset_id}/buckets", "", b"").0,
        200
    );
    for search in [
        json!({"q": "Jooey in the kitchn"}),
        json!({"q": "\"on a break\"", "per_asset": 2, "group_by": "season"}),
        json!({"clauses": [{"type": "label", "label": "Joey", "track": "character"}, {"type": "any", "clauses": [{"type": "dialogue", "text": "break"}]}], "mode": "union"}),
    ] {
        let (status, body) = contract.call(&client, "post", "/v1/search", "/v1/search", json_type, search.to_string().as_bytes());
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        contract.call(&client, "post", "/v1/search/explain", "/v1/search/explain", json_type, br#"{"q": "Joey then Monica"}"#).0,
        200
    );
    assert_eq!(contract.call(&client, "get", "/v1/suggest?q=Jo", "/v1/suggest", "", b"").0, 200);
    assert_eq!(contract.call(&client, "get", "/health", "/health", "", b"").0, 200);
    assert_eq!(contract.call(&client, "get", "/ready", "/ready", "", b"").0, 200);

    // Errors, as clients meet them.
    let (status, _) = contract.call(&client, "post", "/v1/search", "/v1/search", json_type, br#"{"q": "Joey", "limit": 0}"#);
    assert_eq!(status, 422);
    let (status, _) = contract.call(&client, "post", "/v1/search", "/v1/search", json_type, b"{not json");
    assert_eq!(status, 400);
    let (status, _) = contract.call(&node.anonymous_client(), "post", "/v1/search", "/v1/search", json_type, br#"{"q": "Joey"}"#);
    assert_eq!(status, 401);
    let (status, _) = contract.call(&client, "get", "/v1/assets/nothing-here", "/v1/assets/{asset_id}", "", b"");
    assert_eq!(status, 404);
    let conflicting = json!({"id": "c1", "asset_id": "ep1", "model": "faces", "model_version": "1", "track": "character",
                             "start_ms": 0, "end_ms": 4000, "label": "Ross"});
    let (status, _) =
        contract.call(&client, "post", "/v1/annotations", "/v1/annotations", "application/x-ndjson", conflicting.to_string().as_bytes());
    assert_eq!(status, 409);

    // Operations and admin reads.
    assert_eq!(contract.call(&client, "get", "/v1/cluster", "/v1/cluster", "", b"").0, 200);
    assert_eq!(contract.call(&client, "get", "/v1/cluster?digest=true", "/v1/cluster", "", b"").0, 200);
    let (status, body) = contract.call(&client, "get", "/v1/admin/shards/0/log?after=0&through=1", "/v1/admin/shards/{shard}/log", "", b"");
    assert_eq!(status, 200, "{body}");
    let (status, _) = contract.call(&client, "get", "/v1/admin/shards/0/log?limit=2", "/v1/admin/shards/{shard}/log", "", b"");
    assert_eq!(status, 422);
    assert_eq!(contract.call(&client, "post", "/v1/admin/purge-superseded", "/v1/admin/purge-superseded", "", b"").0, 200);
    // A single node is no cluster: membership commands are refused, as documented.
    assert_eq!(contract.call(&client, "get", "/v1/admin/cluster/map", "/v1/admin/cluster/map", "", b"").0, 422);
    let (status, _) = contract.call(&client, "post", "/v1/admin/cluster/rebalance", "/v1/admin/cluster/rebalance", json_type, b"{}");
    assert_eq!(status, 422);
    // Fault injection is off on this node: the endpoint hides.
    let (status, _) = contract.call(&client, "post", "/v1/debug/partition", "/v1/debug/partition", json_type, br#"{"isolate_from": [2]}"#);
    assert_eq!(status, 404);

    // Deletes.
    assert_eq!(
        contract.call(&client, "delete", "/v1/assets/ep1/annotations/d1", "/v1/assets/{asset_id}/annotations/{annotation_id}", "", b"").0,
        200
    );
    assert_eq!(contract.call(&client, "delete", "/v1/assets/ep1", "/v1/assets/{asset_id}", "", b"").0, 200);

    let checked = contract.checked.borrow();
    eprintln!("{} replies validated against /openapi.json:\n  {}", checked.len(), checked.join("\n  "));
}
