//! Routing contract on a three-node cluster: any node accepts writes and forwards them to the
//! shard leader; a node cut off from the majority answers a retryable 503 with Retry-After in
//! bounded time (never a hang, never a false success); a strong read sees every write
//! acknowledged before it, from any node.

use std::time::{Duration, Instant};

use rushes_jepsen::{ClusterOptions, Http, LocalCluster};
use serde_json::json;

/// The nodes' request timeout (limits.request_timeout_ms), shortened so the test is quick.
const REQUEST_TIMEOUT_MS: u64 = 3_000;
/// The request timeout plus slack for the reply.
const BOUNDED_WAIT: Duration = Duration::from_millis(REQUEST_TIMEOUT_MS + 3_000);

fn annotation(asset: &str, id: &str, start_ms: u64, label: &str) -> String {
    json!({
        "id": id, "asset_id": asset, "model": "faces", "model_version": "1", "track": "character",
        "start_ms": start_ms, "end_ms": start_ms + 3000, "label": label, "confidence": 0.9
    })
    .to_string()
}

#[test]
fn minority_writes_fail_fast_and_retryably_and_strong_reads_see_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = ClusterOptions::new(3, 4, 3);
    options.extra_toml = format!("[limits]\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\n");
    let cluster = LocalCluster::start_with(&dir.path().join("cluster"), options);
    cluster.wait_for_leaders(Duration::from_secs(60));
    let http = Http::new(Duration::from_secs(30));

    // Any node takes a write for any shard; a strong search on another node sees it at once.
    for (round, writer) in [1u64, 2, 3].into_iter().enumerate() {
        let asset = format!("routing-{round}");
        let body = annotation(&asset, &format!("a-{round}"), 1000, "Phoebe");
        http.send("POST", &cluster.node(writer).url("/v1/annotations"), "application/x-ndjson", body.as_bytes())
            .unwrap_or_else(|e| panic!("write through node {writer}: {e}\n{}", cluster.diagnostics()));
        let reader = writer % 3 + 1;
        let search = json!({
            "clauses": [{"type": "label", "track": "character", "label": "Phoebe"}],
            "filters": {"asset_ids": [asset]},
            "consistency": "strong"
        });
        let reply = http.post_json(&cluster.node(reader).url("/v1/search"), &search).expect("strong search");
        assert_eq!(reply["shards"]["failed"], 0, "{reply}");
        assert_eq!(
            reply["assets"][0]["asset_id"],
            json!(asset),
            "a strong read on node {reader} misses a write acknowledged by node {writer}: {reply}"
        );
    }

    // Cut node 3 off. Its writes cannot reach a quorum: a retryable 503 within the bound.
    cluster.partition(&[3]);
    let minority = cluster.node(3).url("/v1/annotations");
    let mut refused = 0;
    for i in 0..4 {
        let asset = format!("cut-{i}");
        let body = annotation(&asset, "cut", 0, "Ross");
        let started = Instant::now();
        let result = http.send("POST", &minority, "application/x-ndjson", body.as_bytes());
        let took = started.elapsed();
        assert!(took <= BOUNDED_WAIT, "the minority node took {took:?} to answer");
        match result {
            Ok(reply) => panic!("node 3 acknowledged a write while cut off from the majority: {reply}"),
            Err(e) => {
                assert_eq!(e.status(), Some(503), "expected 503 from the minority, got {e}");
                assert!(e.to_string().contains("unavailable"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 4);
    // The majority keeps accepting writes meanwhile.
    let body = annotation("majority", "m", 0, "Chandler");
    http.send("POST", &cluster.node(1).url("/v1/annotations"), "application/x-ndjson", body.as_bytes())
        .unwrap_or_else(|e| panic!("the majority refused a write during the partition: {e}\n{}", cluster.diagnostics()));

    // Healed, the same node accepts writes again, and every node converges.
    cluster.heal();
    let body = annotation("cut-0", "cut", 0, "Ross");
    let started = Instant::now();
    loop {
        match http.send("POST", &minority, "application/x-ndjson", body.as_bytes()) {
            Ok(_) => break,
            Err(e) if e.is_retryable() && started.elapsed() < Duration::from_secs(60) => {}
            Err(e) => panic!("node 3 still refuses writes after healing: {e}\n{}", cluster.diagnostics()),
        }
    }
    cluster.wait_converged(Duration::from_secs(60));
    let digests = cluster.digests();
    for shard in 0..4u32 {
        let of_shard: Vec<&String> = digests.iter().filter(|((s, _), _)| *s == shard).map(|(_, d)| d).collect();
        assert_eq!(of_shard.len(), 3, "shard {shard} has 3 replicas");
        assert!(of_shard.windows(2).all(|w| w[0] == w[1]), "replicas of shard {shard} differ: {digests:?}");
    }
}
