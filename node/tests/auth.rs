//! Client authentication as a client meets it: every endpoint needs its scope (401 without a
//! valid key, 403 with a key that lacks the scope), `/health`, `/ready` and the page stay open, and a node without
//! keys refuses to serve anything but loopback.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_until, TestNode};
use rushes_client::{Client, ClientError};
use rushes_node::http::auth::key_hash;

/// (method, path, content type, body, scope it needs).
fn endpoints() -> Vec<(&'static str, &'static str, &'static str, &'static [u8], &'static str)> {
    vec![
        ("GET", "/v1/cluster", "", b"", "read"),
        ("GET", "/v1/cluster?digest=true", "", b"", "admin"),
        ("GET", "/metrics", "", b"", "read"),
        ("POST", "/v1/search", "application/json", br#"{"q": "Joey"}"#, "read"),
        ("POST", "/v1/search/explain", "application/json", br#"{"q": "Joey"}"#, "read"),
        ("GET", "/v1/suggest?q=jo", "", b"", "read"),
        ("GET", "/v1/assets/ep1", "", b"", "read"),
        ("GET", "/v1/assets/ep1/buckets", "", b"", "read"),
        ("GET", "/v1/assets/ep1/annotations/a1", "", b"", "read"),
        (
            "POST",
            "/v1/annotations",
            "application/x-ndjson",
            br#"{"id":"a1","asset_id":"ep1","model":"faces","model_version":"1","track":"character","start_ms":0,"end_ms":1000,"label":"Joey"}"#,
            "write",
        ),
        ("PUT", "/v1/assets/ep1", "application/json", br#"{"title": "Pilot"}"#, "write"),
        ("POST", "/v1/assets/ep1/subtitles?language=en", "text/plain", b"1\n00:00:01,000 --> 00:00:02,000\nHello\n", "write"),
        ("DELETE", "/v1/assets/gone/annotations/a9", "", b"", "write"),
        ("DELETE", "/v1/assets/gone", "", b"", "write"),
        ("GET", "/v1/export?asset_id=ep1", "", b"", "admin"),
        ("GET", "/v1/admin/shards/0/log?after=0&through=1", "", b"", "admin"),
        ("POST", "/v1/admin/purge-superseded", "application/json", b"{}", "admin"),
        ("POST", "/v1/debug/partition", "application/json", br#"{"isolate_from": []}"#, "admin"),
        ("POST", "/v1/debug/actor-fault", "application/json", br#"{"shard": 0, "actor": "index"}"#, "admin"),
    ]
}

fn status_of(result: Result<String, ClientError>) -> (u16, String) {
    match result {
        Ok(body) => (200, body),
        Err(ClientError::Status { status, body, .. }) => (status, body),
        Err(e) => panic!("no answer: {e}"),
    }
}

fn call(client: &Client, (method, path, content_type, body): (&str, &str, &str, &[u8])) -> (u16, String) {
    match method {
        "GET" => status_of(client.get(path)),
        _ => status_of(client.send(method, path, content_type, body)),
    }
}

#[test]
fn every_endpoint_needs_its_scope_and_health_stays_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<(&str, String)> = ["read", "write", "admin"].iter().map(|scope| (*scope, format!("key-for-{scope}"))).collect();
    let entries: Vec<String> = keys
        .iter()
        .map(|(scope, key)| format!("{{ name = \"only-{scope}\", hash = \"{}\", scopes = [\"{scope}\"] }}", key_hash(key)))
        .collect();
    let node = TestNode::start_with_env(
        &dir.path().join("node"),
        &[],
        &[("RUSHES_AUTH_KEYS", &format!("[{}]", entries.join(", "))), ("RUSHES_FAULT_INJECTION", "1")],
    );
    let base = node.base_url();
    let with_key = |key: &str| Client::new(&base).with_token(Some(key.to_string()));
    for (method, path, content_type, body, needed) in endpoints() {
        let request = (method, path, content_type, body);
        let (status, reply) = call(&node.anonymous_client(), request);
        assert_eq!(status, 401, "{method} {path} without a key: {reply}");
        assert!(reply.contains("\"unauthenticated\""), "{reply}");
        let (status, _) = call(&with_key("not-a-key"), request);
        assert_eq!(status, 401, "{method} {path} with an unknown key");
        for (scope, key) in &keys {
            let (status, reply) = call(&with_key(key), request);
            if *scope == needed {
                assert!(status != 401 && status != 403, "{method} {path} with the {scope} key: {status} {reply}");
            } else {
                assert_eq!(status, 403, "{method} {path} with the {scope} key: {reply}");
                assert!(reply.contains("\"forbidden\"") && reply.contains(needed), "{reply}");
            }
        }
    }
    // Liveness, readiness and the search page (which asks for a key, then sends it with its
    // own API requests) need none; they say nothing about the data.
    for open in ["/health", "/ready", "/openapi.json", "/", "/ui/app.js", "/ui/app.css"] {
        assert_eq!(status_of(node.anonymous_client().get(open)).0, 200, "{open} needs no key");
    }
}

/// Runs `rushes serve` with `args` and no API key; returns its exit status and log if it exits
/// within the deadline, or None if it kept running (it is then killed).
fn serve_without_keys(dir: &std::path::Path, args: &[&str]) -> Option<(std::process::ExitStatus, String)> {
    let log = dir.join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rushes"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env_remove("RUSHES_AUTH_KEYS")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("start rushes serve");
    let mut exited = None;
    let finished = rushes_client::wait::poll_until(Duration::from_secs(20), || {
        exited = child.try_wait().ok().flatten();
        exited.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    exited.map(|status| (status, std::fs::read_to_string(&log).unwrap_or_default()))
}

#[test]
fn a_node_without_keys_serves_only_loopback_unless_told_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let everyone = format!("0.0.0.0:{port}");
    let (status, log) = serve_without_keys(dir.path(), &["--listen", &everyone]).expect("refused at start");
    assert!(!status.success());
    assert!(log.contains("node.listen") && log.contains("auth.keys") && log.contains("http.allow_unauthenticated"), "{log}");
    // Told explicitly, it starts (and says so in its log); it is stopped right after.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rushes"))
        .args(["serve", "--listen", &everyone, "--set", "http.allow_unauthenticated=true", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("start");
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    wait_until("the open node to serve", Duration::from_secs(30), || client.get("/health").is_ok());
    assert!(client.get("/v1/cluster").is_ok(), "no key needed when explicitly open");
    let _ = child.kill();
    let _ = child.wait();
    assert!(std::fs::read_to_string(&log).unwrap_or_default().contains("NO API KEYS"));
}

/// With `http.tls_cert_file` and `http.tls_key_file` the node speaks HTTPS only: a client that
/// trusts the CA (`--ca-file`) gets answers, a client that does not, or that speaks plain HTTP,
/// gets none; the CLI takes the CA and the key like any client.
#[test]
fn https_with_a_certificate_from_rushes_cluster_certs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let made = Command::new(env!("CARGO_BIN_EXE_rushes"))
        .args(["cluster", "certs", "--nodes", "1", "--http-names", "127.0.0.1,localhost", "--out"])
        .arg(&certs)
        .output()
        .expect("rushes cluster certs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let ca_pem = std::fs::read(certs.join("ca.pem")).expect("ca.pem");
    let node = TestNode::start_https(&dir.path().join("data"), &certs.join("http.pem"), &certs.join("http.key"), ca_pem);
    let https = node.base_url();
    assert!(https.starts_with("https://"));
    assert!(node.client().get_json("/v1/cluster").is_ok_and(|status| status["security"]["https"] == true));
    // Public roots do not know the cluster's CA; plain HTTP gets no answer.
    assert!(Client::new(&https).with_token(Some(node.token.clone())).get("/health").is_err(), "an unknown CA was trusted");
    let plain = format!("http://127.0.0.1:{}", node.port);
    assert!(Client::with_timeout(&plain, Duration::from_secs(5)).get("/health").is_err(), "plain HTTP was answered");
    // The CLI, with the CA and the key from the environment.
    let searched = Command::new(env!("CARGO_BIN_EXE_rushes"))
        .args(["search", "Joey", "--json", "--server", &https])
        .env("RUSHES_TOKEN", &node.token)
        .env("RUSHES_CA_FILE", certs.join("ca.pem"))
        .output()
        .expect("rushes search");
    assert!(searched.status.success(), "rushes search over HTTPS: {}", String::from_utf8_lossy(&searched.stderr));
}
