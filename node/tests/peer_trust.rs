//! The peer port as an attacker meets it. A node of a two-node cluster runs for real (mutual
//! TLS on); the test plays the other member, and strangers. A certificate from another CA and a
//! hello claiming another node's id never get past the handshake; a member's non-member Raft
//! message, forged sender, forged or misplaced write, request for a shard that does not exist
//! and unsolicited snapshot chunk are refused; and none of it changes anything.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_until;
use protobuf::Message as _;
use rushes_client::Client;
use rushes_cluster::transport::{ClusterCertificates, PeerTls, Transport, TransportConfig};
use rushes_protocol::codec;
use rushes_protocol::peer::{PeerReply, PeerRequest, PEER_FORMAT};
use rushes_protocol::ErrorCode;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr")
}

/// Runs `rushes serve` with `config` (written to `dir/node-1.toml`); its log goes to the
/// returned path.
fn serve(dir: &Path, config: &str) -> (std::process::Child, std::path::PathBuf) {
    let config_path = dir.join("node-1.toml");
    write(&config_path, config);
    let log = dir.join("node.log");
    let child = Command::new(env!("CARGO_BIN_EXE_rushes"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("start the node");
    (child, log)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

/// A transport speaking as `node_id` with `cert`/`key`, trusting `ca`, dialing node 1.
async fn member(node_id: u64, listen: SocketAddr, node1: SocketAddr, ca: &str, cert: &str, key: &str) -> Transport {
    let mut config = TransportConfig::new("trust", node_id, listen);
    config.tls = Some(std::sync::Arc::new(PeerTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).expect("tls")));
    config.handshake_timeout_ms = 2_000;
    config.connect_timeout_ms = 1_000;
    let (transport, _inbound) = Transport::bind(config).await.expect("bind");
    transport.add_peer(1, node1).expect("peer");
    transport
}

async fn ask(transport: &Transport, request: &PeerRequest) -> Result<PeerReply, String> {
    let body = codec::encode(PEER_FORMAT, request).expect("encode");
    let reply = transport.call(1, body, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    codec::decode(PEER_FORMAT, &reply).map_err(|e| e.to_string())
}

fn raft_message(from: u64, to: u64) -> Vec<u8> {
    let mut message = raft::eraftpb::Message::default();
    message.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    (message.from, message.to, message.term) = (from, to, 1_000);
    message.write_to_bytes().expect("protobuf")
}

fn refused(metrics: &str, reason: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("rushes_peer_refused_total{{reason=\"{reason}\"}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn strangers_and_forgeries_on_the_peer_port_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = ClusterCertificates::generate("trust", &[1, 2]).expect("certs");
    let stranger = ClusterCertificates::generate("trust", &[2]).expect("another CA");
    write(&dir.path().join("ca.pem"), &certs.ca_cert_pem);
    write(&dir.path().join("node-1.pem"), &certs.nodes[0].1);
    write(&dir.path().join("node-1.key"), &certs.nodes[0].2);
    let (http, raft1, raft2) = (free_addr(), free_addr(), free_addr());
    let token = rushes_node::http::auth::new_key();
    let config = format!(
        "[node]\nid = 1\nlisten = \"{http}\"\ndata_dir = {:?}\n\n[cluster]\ncluster_id = \"trust\"\nshards = 4\nreplication_factor = 1\n\
         tls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n\
         nodes = [{{ id = 1, raft_addr = \"{raft1}\", http_addr = \"{http}\" }}, {{ id = 2, raft_addr = \"{raft2}\", http_addr = \"127.0.0.1:9\" }}]\n\n\
         [[auth.keys]]\nname = \"admin\"\nhash = \"{}\"\nscopes = [\"read\", \"write\", \"admin\"]\n",
        dir.path().join("data").display().to_string(),
        dir.path().join("ca.pem").display().to_string(),
        dir.path().join("node-1.pem").display().to_string(),
        dir.path().join("node-1.key").display().to_string(),
        rushes_node::http::auth::key_hash(&token),
    );
    let (mut child, _log) = serve(dir.path(), &config);
    let client = Client::new(&format!("http://{http}")).with_token(Some(token));
    wait_until("node 1 to serve", Duration::from_secs(60), || client.get("/health").is_ok());
    // With replication factor 1, each shard lives on node 1 or on node 2 (played here).
    let map = rushes_cluster::ShardMap::new(4, &[1, 2], 1).expect("map");
    let own = (0..4).find(|s| map.replicas(*s) == [1]).expect("a shard of node 1");
    let theirs = (0..4).find(|s| map.replicas(*s) == [2]).expect("a shard of node 2");
    wait_until("node 1 to lead its shard", Duration::from_secs(30), || {
        client.get_json("/v1/cluster").is_ok_and(|s| s["shards"][own as usize]["leader"] == 1)
    });
    let before = client.get_json("/v1/cluster").expect("status");
    assert_eq!(
        (before["security"]["peers"].clone(), before["security"]["api_keys"].clone(), before["security"]["warnings"].clone()),
        (serde_json::json!("mutual_tls"), serde_json::json!(true), serde_json::json!([])),
        "{}",
        before["security"]
    );
    let applied_before = before["shards"][own as usize]["replicas"][0]["applied_index"].clone();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let (node2_cert, node2_key) = (&certs.nodes[1].1, &certs.nodes[1].2);
        // A certificate from another CA: no handshake.
        let outsider = member(2, free_addr(), raft1, &stranger.ca_cert_pem, &stranger.nodes[0].1, &stranger.nodes[0].2).await;
        assert!(ask(&outsider, &PeerRequest::Status).await.is_err(), "a stranger's certificate was accepted");
        outsider.shutdown();
        // Node 2's certificate, claiming to be node 3 (and node 3 is not a member either).
        let forger = member(3, free_addr(), raft1, &certs.ca_cert_pem, node2_cert, node2_key).await;
        assert!(ask(&forger, &PeerRequest::Status).await.is_err(), "a hello with another node's id was accepted");
        forger.shutdown();

        // The real node 2: answered, but held to what node 2 may do.
        let node2 = member(2, raft2, raft1, &certs.ca_cert_pem, node2_cert, node2_key).await;
        // The first call waits for the connection (a call to a peer still connecting is queued).
        let status = ask(&node2, &PeerRequest::Status).await;
        assert!(matches!(status, Ok(PeerReply::Status(_))), "the real node 2 is answered: {status:?}");
        // Raft messages: for a shard node 2 holds no replica of, and with a forged sender.
        node2.send_raft(1, own, raft_message(2, 1)).expect("queued");
        node2.send_raft(1, theirs, raft_message(5, 1)).expect("queued");
        // A megabyte of nested protobuf groups (the shape of RUSTSEC-2024-0437): refused
        // before parsing, counted, and the node carries on.
        let nested: Vec<u8> = [0xa3u8, 0x06].iter().copied().cycle().take(1 << 20).collect();
        node2.send_raft(1, own, nested).expect("queued");
        // Writes: undecodable, and one whose asset belongs to another shard.
        let garbage = PeerRequest::Propose { shard: own, command: vec![1, 0xff, 0xff, 0xff, 0x7f, 3] };
        let code = |reply: Result<PeerReply, String>| match reply {
            Ok(PeerReply::Error(e)) => Some(e.code),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(code(ask(&node2, &garbage).await), Some(ErrorCode::InvalidJson));
        let misplaced_asset = (0..1000).map(|i| format!("asset-{i}")).find(|a| map.shard_for_asset(a) == theirs).expect("an asset of node 2");
        let line = format!(
            "{{\"id\":\"x1\",\"asset_id\":\"{misplaced_asset}\",\"model\":\"faces\",\"model_version\":\"1\",\"track\":\"character\",\"start_ms\":0,\"end_ms\":1000,\"label\":\"Joey\"}}"
        );
        let items = rushes_protocol::validate::parse_batch(line.as_bytes(), rushes_protocol::validate::BodyFormat::Ndjson, &Default::default())
            .expect("valid annotation")
            .into_iter()
            .map(|item| {
                let (annotation, vector) = rushes_protocol::model::StoredAnnotation::from_validated(item.annotation);
                rushes_protocol::model::IngestItem { raw_json: item.raw_json, annotation, vector }
            })
            .collect();
        let command = codec::encode(rushes_protocol::model::SHARD_COMMAND_FORMAT, &rushes_protocol::model::ShardCommand::Ingest { items }).expect("encode");
        assert_eq!(code(ask(&node2, &PeerRequest::Propose { shard: own, command }).await), Some(ErrorCode::InvalidField));
        // A shard that does not exist, and a raw store node 2 holds no replica of.
        assert_eq!(code(ask(&node2, &PeerRequest::Propose { shard: 99, command: vec![] }).await), Some(ErrorCode::Forbidden));
        let chunk = PeerRequest::SnapshotChunk { shard: own, after: None, min_applied: 0 };
        assert_eq!(code(ask(&node2, &chunk).await), Some(ErrorCode::Forbidden));
        node2.shutdown();
    });

    wait_until("the refusals to be counted", Duration::from_secs(10), || {
        client.get("/metrics").is_ok_and(|m| refused(&m, "raft_sender") >= 2.0)
    });
    let metrics = client.get("/metrics").expect("metrics");
    assert!(refused(&metrics, "invalid_write") >= 2.0, "{metrics}");
    assert!(refused(&metrics, "undecodable_raft") >= 1.0, "{metrics}");
    assert!(refused(&metrics, "request_scope") >= 2.0, "{metrics}");
    let after = client.get_json("/v1/cluster").expect("status");
    assert_eq!(after["shards"][own as usize]["replicas"][0]["applied_index"], applied_before, "nothing was committed");
    assert_eq!(after["shards"][own as usize]["raw_annotations"], 0);
    assert_eq!(client.get_json("/health").expect("health")["status"], "ok");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn an_insecure_cluster_says_so_in_the_log_and_in_the_cluster_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, raft1, raft2) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        "[node]\nid = 1\nlisten = \"{http}\"\ndata_dir = {:?}\n\n[cluster]\ncluster_id = \"open\"\nshards = 2\nreplication_factor = 1\ninsecure_peers = true\n\
         nodes = [{{ id = 1, raft_addr = \"{raft1}\", http_addr = \"{http}\" }}, {{ id = 2, raft_addr = \"{raft2}\", http_addr = \"127.0.0.1:9\" }}]\n",
        dir.path().join("data").display().to_string(),
    );
    let (mut child, log) = serve(dir.path(), &config);
    // No keys on loopback: open, and said to be.
    let client = Client::new(&format!("http://{http}"));
    wait_until("node 1 to serve", Duration::from_secs(60), || client.get("/health").is_ok());
    let status = client.get_json("/v1/cluster").expect("status");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status["security"]["peers"], "insecure", "{}", status["security"]);
    assert_eq!(status["security"]["api_keys"], false, "{}", status["security"]);
    let warnings = status["security"]["warnings"].to_string();
    assert!(warnings.contains("PEERS ARE NOT AUTHENTICATED") && warnings.contains("NO API KEYS"), "{warnings}");
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(log.contains("PEERS ARE NOT AUTHENTICATED"), "the log does not shout: {log}");
}
