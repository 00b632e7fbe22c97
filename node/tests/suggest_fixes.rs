//! Search as you type and query understanding show names and words as they were written, and
//! match them without case or accents (docs/search.md §1 and §6):
//!
//! - labels are shown as the models wrote them, the most frequent spelling when several exist
//!   ("Joey", not "joey"), in completions, `understanding` (tree and "did you mean") and
//!   explain's leaves, while "JOEY", "joey" and "jOeY" all find every spelling;
//! - accents fold for matching: "cre", "crè" and "CRÈ" complete to "crème", "zoe" to "Zoë",
//!   and a search for "zoe" finds the label "Zoë";
//! - a spelling follows the data: when the spelling that led is deleted, the other one shows.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{wait_until, TestNode};
use rushes_client::Client;
use serde_json::{json, Value};

const SEARCHABLE_WITHIN: Duration = Duration::from_secs(30);

fn label(id: &str, asset: &str, track: &str, label: &str, start_ms: u64, end_ms: u64) -> Value {
    json!({"id": id, "asset_id": asset, "model": format!("{track}-model"), "model_version": "1", "track": track,
           "start_ms": start_ms, "end_ms": end_ms, "label": label, "confidence": 0.9})
}

fn line(id: &str, asset: &str, text: &str, start_ms: u64, end_ms: u64) -> Value {
    json!({"id": id, "asset_id": asset, "model": "asr", "model_version": "1", "track": "dialogue",
           "start_ms": start_ms, "end_ms": end_ms, "text": text, "language": "fr", "confidence": 1.0})
}

fn ingest(client: &Client, items: &[Value]) {
    let body = serde_json::to_vec(items).expect("json");
    client.send("POST", "/v1/annotations", "application/json", &body).expect("ingest");
}

/// (text, kind, query) of each completion of `q`.
fn completions(client: &Client, q: &str) -> Vec<(String, String, String)> {
    let reply =
        client.get_json(&format!("/v1/suggest?q={}", rushes_client::percent_encode(q))).unwrap_or_else(|e| panic!("suggest {q:?}: {e}"));
    reply["completions"]
        .as_array()
        .unwrap_or_else(|| panic!("suggest {q:?}: no completions array: {reply}"))
        .iter()
        .map(|c| {
            let field = |name: &str| c[name].as_str().unwrap_or_default().to_string();
            (field("text"), field("kind"), field("query"))
        })
        .collect()
}

fn texts(client: &Client, q: &str) -> Vec<String> {
    completions(client, q).into_iter().map(|(text, _, _)| text).collect()
}

fn post(client: &Client, path: &str, body: Value) -> Value {
    let text = client.send("POST", path, "application/json", body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{path} {body}: {e}"));
    serde_json::from_str(&text).expect("a JSON reply")
}

fn found(client: &Client, body: Value) -> BTreeSet<String> {
    let reply = post(client, "/v1/search", body);
    reply["assets"].as_array().into_iter().flatten().map(|a| a["asset_id"].as_str().unwrap_or("?").to_string()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn labels_show_as_the_models_wrote_them_and_match_in_any_case() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let client = node.client();
    ingest(
        &client,
        &[
            // "Joey" covers 30 seconds over three assets, "joey" 2 seconds on a fourth.
            label("j1", "cap-1", "character", "Joey", 0, 10_000),
            label("j2", "cap-2", "character", "Joey", 0, 10_000),
            label("j3", "cap-3", "character", "Joey", 0, 10_000),
            label("j4", "low-1", "character", "joey", 0, 2_000),
            label("k1", "cap-1", "scene", "kitchen", 0, 20_000),
            label("z1", "cap-2", "character", "Zebulon", 20_000, 30_000),
            label("z2", "cap-3", "character", "ZEBULON", 20_000, 21_000),
            label("b1", "cap-1", "object", "BMW  X5", 30_000, 40_000),
        ],
    );
    node.wait_searchable(SEARCHABLE_WITHIN);

    // Completions: the most frequent spelling, whatever the case typed.
    for typed in ["jo", "Jo", "JO", "joe"] {
        let all = completions(&client, typed);
        assert_eq!(all.first(), Some(&("Joey".into(), "label".into(), "Joey".into())), "suggest {typed:?}: {all:?}");
        assert!(!all.iter().any(|(text, _, _)| text == "joey"), "suggest {typed:?}: one completion per label: {all:?}");
    }
    assert_eq!(texts(&client, "zeb").first().map(String::as_str), Some("Zebulon"));
    // White space inside a label collapses; its case stays. A multi-word label completes the
    // whole text.
    assert_eq!(completions(&client, "bmw x").first(), Some(&("BMW X5".into(), "label".into(), "BMW X5".into())));
    // After finished words, the query keeps them as typed and adds the spelled label.
    let after = completions(&client, "Joey and ZE");
    assert!(after.contains(&("Zebulon".into(), "label".into(), "Joey and Zebulon".into())), "{after:?}");

    // Matching ignores case: every spelling is found by any spelling.
    let everyone = set(&["cap-1", "cap-2", "cap-3", "low-1"]);
    for q in ["JOEY", "joey", "Joey"] {
        assert_eq!(found(&client, json!({"q": q})), everyone, "q {q:?}");
    }
    assert_eq!(found(&client, json!({"clauses": [{"type": "label", "label": "jOeY"}]})), everyone);

    // Understanding and explain show the spelling; `typed` stays as matched.
    let plan = post(&client, "/v1/search/explain", json!({"q": "jooey in the kitchn"}))["plan"].clone();
    assert_eq!(plan["understanding"]["corrections"], json!([["jooey", "Joey"], ["kitchn", "kitchen"]]), "{plan}");
    let root_labels: Vec<Value> =
        plan["understanding"]["root"]["nodes"].as_array().into_iter().flatten().map(|n| n["label"].clone()).collect();
    assert_eq!(root_labels, vec![json!("Joey"), json!("kitchen")], "{plan}");
    let leaves: Vec<(Value, Value)> =
        plan["leaves"].as_array().into_iter().flatten().map(|l| (l["label"].clone(), l["typed"].clone())).collect();
    assert_eq!(leaves, vec![(json!("Joey"), json!("jooey")), (json!("kitchen"), json!("kitchn"))], "{plan}");
    let reply = post(&client, "/v1/search", json!({"q": "jooey in the kitchn"}));
    assert_eq!(reply["understanding"], plan["understanding"], "the search reply shows what explain shows");
    assert_eq!(found(&client, json!({"q": "jooey in the kitchn"})), set(&["cap-1"]));

    // The spelling follows the data: with the "Joey" seconds deleted, "joey" leads.
    for asset in ["cap-1", "cap-2", "cap-3"] {
        client.send("DELETE", &format!("/v1/assets/{asset}"), "application/json", b"").expect("delete");
    }
    node.wait_searchable(SEARCHABLE_WITHIN);
    wait_until("suggest to show the remaining spelling", SEARCHABLE_WITHIN, || {
        completions(&client, "jo").first() == Some(&("joey".into(), "label".into(), "joey".into()))
    });
    assert!(texts(&client, "zeb").is_empty(), "{:?}", texts(&client, "zeb"));
}

#[test]
fn accents_fold_for_matching_and_completions_show_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let client = node.client();
    ingest(
        &client,
        &[
            line("l1", "dessert-1", "Crème brûlée pour tout le monde", 0, 4_000),
            line("l2", "dessert-2", "Encore de la crème, merci", 0, 3_000),
            line("l3", "funeral-1", "La crémation était triste", 0, 1_000),
            label("zoe", "dessert-1", "character", "Zoë", 0, 5_000),
            label("cafe", "dessert-2", "scene", "Café Crème", 0, 5_000),
        ],
    );
    node.wait_searchable(SEARCHABLE_WITHIN);

    // "crème" (7 seconds) before "crémation" (1), whether accents and capitals are typed or not.
    for typed in ["crè", "cre", "CRÈ", "Cre", "crem"] {
        let words: Vec<String> = completions(&client, typed).into_iter().filter(|(_, kind, _)| kind == "word").map(|(t, _, _)| t).collect();
        assert_eq!(words, vec!["crème".to_string(), "crémation".to_string()], "suggest {typed:?}");
    }
    assert_eq!(completions(&client, "brul"), vec![("brûlée".into(), "word".into(), "brûlée".into())]);
    // The completed query keeps the finished words as typed.
    assert!(completions(&client, "Encore de la cre").contains(&("crème".into(), "word".into(), "Encore de la crème".into())));

    // Labels fold the same way and show as written.
    for typed in ["zoe", "ZO", "zoë", "Zoë"] {
        assert_eq!(completions(&client, typed).first(), Some(&("Zoë".into(), "label".into(), "Zoë".into())), "suggest {typed:?}");
    }
    let whole = completions(&client, "cafe cr");
    assert_eq!(whole.first(), Some(&("Café Crème".into(), "label".into(), "Café Crème".into())), "{whole:?}");

    // What a completion puts in the box finds what it names.
    assert_eq!(found(&client, json!({"q": "crème"})), set(&["dessert-1", "dessert-2"]));
    assert_eq!(found(&client, json!({"q": "Zoë"})), set(&["dessert-1"]));
    assert_eq!(found(&client, json!({"q": "Café Crème"})), set(&["dessert-2"]));
    // A full search folds accents as the completions do: typed without them, the label is found.
    assert_eq!(found(&client, json!({"q": "zoe"})), set(&["dessert-1"]));
    assert_eq!(found(&client, json!({"q": "cafe creme"})), set(&["dessert-2"]));
}

/// A two-node cluster (replication factor 1) whose node 2 runs an earlier version, played by
/// the test: it answers what it knows, and cannot decode `PeerRequest::Completions` (as a node
/// built before that request existed refuses any request it cannot decode). Node 1 still
/// completes from its own shards at once, and does not ask node 2 again at every keystroke.
#[test]
fn a_node_of_an_earlier_version_is_left_out_and_not_asked_at_every_keystroke() {
    use std::net::SocketAddr;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use rushes_cluster::transport::{Inbound, Transport, TransportConfig, WireError};
    use rushes_protocol::codec;
    use rushes_protocol::peer::{PeerReply, PeerRequest, PEER_FORMAT};

    let free_addr = || -> SocketAddr { std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr") };
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, raft1, raft2) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        "[node]\nid = 1\nlisten = \"{http}\"\ndata_dir = {:?}\n\n[cluster]\ncluster_id = \"mixed\"\nshards = 4\nreplication_factor = 1\n\
         insecure_peers = true\n\
         nodes = [{{ id = 1, raft_addr = \"{raft1}\", http_addr = \"{http}\" }}, {{ id = 2, raft_addr = \"{raft2}\", http_addr = \"127.0.0.1:9\" }}]\n\n\
         [limits]\nrequest_timeout_ms = 3000\n",
        dir.path().join("data").display().to_string(),
    );
    let config_path = dir.path().join("node-1.toml");
    std::fs::write(&config_path, config).expect("config");
    let log = dir.path().join("node.log");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _node1 = Kill(
        Command::new(env!("CARGO_BIN_EXE_rushes"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("start node 1"),
    );

    // Node 2, of an earlier version: every request it knows is answered (the vocabulary is
    // empty, anything else fails at once); a variant past its last one is undecodable to it.
    let completions_position = codec::encode(
        PEER_FORMAT,
        &PeerRequest::Completions { shard: 0, prefix: String::new(), whole: String::new(), limit: 0, labels: vec![] },
    )
    .expect("encodes")[1];
    let asked = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let _node2 = runtime.block_on(async {
        let (transport, mut inbound) = Transport::bind(TransportConfig::new("mixed", 2, raft2)).await.expect("bind node 2");
        let asked = asked.clone();
        tokio::spawn(async move {
            while let Some(message) = inbound.recv().await {
                let Inbound::Request { body, responder, .. } = message else { continue };
                if body.get(1).is_some_and(|position| *position >= completions_position) {
                    asked.fetch_add(1, Ordering::SeqCst);
                    let _ = responder.respond(Err(WireError::new(WireError::BAD_REQUEST, "unreadable request: unknown variant")));
                    continue;
                }
                let reply = match codec::decode::<PeerRequest>(PEER_FORMAT, &body) {
                    Ok(PeerRequest::Vocabulary) => PeerReply::Vocabulary { labels: vec![], series: vec![] },
                    _ => PeerReply::Error(rushes_protocol::ApiError::internal("node 2 plays an old node and answers nothing else")),
                };
                let _ = responder.respond(Ok(codec::encode(PEER_FORMAT, &reply).expect("encodes")));
            }
        });
        transport
    });

    let client = Client::new(&format!("http://{http}"));
    wait_until("node 1 to serve", Duration::from_secs(60), || client.get("/health").is_ok());
    let map = rushes_cluster::ShardMap::new(4, &[1, 2], 1).expect("map");
    let own = (0..4).find(|s| map.replicas(*s) == [1]).expect("a shard of node 1");
    let theirs = (0..4).filter(|s| map.replicas(*s) == [2]).count();
    wait_until("node 1 to lead its shard", Duration::from_secs(30), || {
        client.get_json("/v1/cluster").is_ok_and(|s| s["shards"][own as usize]["leader"] == 1)
    });
    let asset = (0..1000).map(|i| format!("near-{i}")).find(|a| map.shard_for_asset(a) == own).expect("an asset of node 1");
    ingest(&client, &[line("near-1", &asset, "Schnitzel und Glühwein", 0, 2_000)]);

    // Node 1 answers from its own shard; node 2's refusal costs no wait.
    wait_until("node 1 to complete its own words", SEARCHABLE_WITHIN, || {
        let started = Instant::now();
        let words = texts(&client, "gluh");
        assert!(started.elapsed() < Duration::from_secs(2), "a keystroke took {:?} with an old node 2", started.elapsed());
        words == vec!["glühwein".to_string()]
    });
    let first = asked.load(Ordering::SeqCst);
    assert_eq!(first, theirs, "node 2 is asked once for each of its shards");
    // Later keystrokes leave node 2 alone for a while, and still answer at once.
    for typed in ["schn", "Schni", "glüh"] {
        let started = Instant::now();
        assert_eq!(texts(&client, typed).len(), 1, "suggest {typed:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "suggest {typed:?} took {:?}", started.elapsed());
    }
    assert_eq!(asked.load(Ordering::SeqCst), first, "node 2 was asked again at every keystroke");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}
