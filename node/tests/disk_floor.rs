//! A node below its free-space floor (`limits.min_free_disk_bytes`) writes nothing: ingest gets
//! a 503 that names the disk and the setting, with Retry-After, nothing is stored, and the
//! node stays up and answers reads. (Space returning is exercised by the container fault
//! suite's disk-full nemesis, which fills a real file system: docs/jepsen.md.)

mod common;

use common::TestNode;
use rushes_client::ClientError;

/// The largest floor the configuration allows (1 TiB): above the free space of any test disk.
const FLOOR_BYTES: u64 = 1 << 40;

fn free_bytes(path: &std::path::Path) -> u64 {
    let output = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().expect("df");
    String::from_utf8_lossy(&output.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df prints the free bytes")
}

#[test]
fn below_the_floor_writes_are_refused_by_name_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(free_bytes(dir.path()) < FLOOR_BYTES, "this test needs a disk with less than 1 TiB free");
    let floor = format!("limits.min_free_disk_bytes={FLOOR_BYTES}");
    let node = TestNode::start(dir.path(), &["--set", &floor]);
    let client = node.client();
    let line = r#"{"id": "a1", "asset_id": "s01e01", "model": "faces", "model_version": "1", "track": "character", "start_ms": 0, "end_ms": 2000, "label": "Joey"}"#;
    match client.post_ndjson(line.as_bytes()) {
        Err(ClientError::Status { status, body, retry_after_s, .. }) => {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("min_free_disk_bytes") && body.contains("bytes free"), "the error names the disk floor: {body}");
            assert!(retry_after_s.is_some(), "a 503 carries Retry-After: {body}");
        }
        other => panic!("a write below the floor must be refused, got {other:?}"),
    }
    let health = client.get_json("/health").expect("the node stays up");
    assert_eq!(health["status"], "ok", "{health}");
    assert!(health["disk_below_floor"].as_array().is_some_and(|shards| !shards.is_empty()), "{health}");
    let cluster = client.get_json("/v1/cluster").expect("status");
    let replicas: Vec<&serde_json::Value> =
        cluster["shards"].as_array().into_iter().flatten().flat_map(|s| s["replicas"].as_array().into_iter().flatten()).collect();
    assert!(replicas.iter().all(|r| r["raw_annotations"] == 0), "nothing was stored: {cluster}");
    assert!(replicas.iter().any(|r| r["disk_below_floor"] == true), "{cluster}");
    // Alive, but not ready: a load balancer sends its traffic elsewhere, and is told why.
    match client.get("/ready") {
        Err(ClientError::Status { status, body, .. }) => {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("not_ready") && body.contains("min_free_disk_bytes"), "/ready names the disk floor: {body}");
        }
        other => panic!("/ready below the disk floor must be 503, got {other:?}"),
    }
    // The same node with the default floor takes the write: the refusal was the floor's.
    drop(node);
    let node = TestNode::start(dir.path(), &[]);
    let reply = node.client().post_ndjson_retrying(line.as_bytes(), 20).expect("accepted with room on the disk");
    assert_eq!(reply.accepted, 1);
    common::wait_until("the node to be ready with room on its disk", std::time::Duration::from_secs(30), || {
        node.client().get_json("/ready").is_ok_and(|ready| ready["status"] == "ready")
    });
}
