//! Loopback integration tests of the peer transport. Every wait is on a condition with a
//! deadline; no test depends on a sleep being "long enough".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rushes_cluster::transport::frame::{self, LENGTH_PREFIX_BYTES};
use rushes_cluster::transport::{
    Envelope, FrameError, Hello, Inbound, PeerState, Responder, Transport, TransportConfig, TransportError, WireError, WIRE_VERSION,
};
use rushes_cluster::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn config(cluster: &str, node_id: NodeId) -> TransportConfig {
    let mut config = TransportConfig::new(cluster, node_id, loopback());
    config.connect_timeout_ms = 500;
    config.handshake_timeout_ms = 1_000;
    config.reconnect_backoff_min_ms = 10;
    config.reconnect_backoff_max_ms = 100;
    config
}

/// Polls `condition` until it holds (the project's shared wait, with this suite's deadline).
async fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    rushes_client::wait::wait_until_async(what, DEADLINE, condition).await;
}

/// A node under test: the transport plus a small application that records Raft messages and
/// answers requests: `fail` -> remote error, `hold` -> never answered (responder kept), `drop` ->
/// responder dropped, anything else -> `echo:<body>`.
struct Node {
    transport: Transport,
    raft_rx: mpsc::UnboundedReceiver<(NodeId, u32, Vec<u8>)>,
    held: Arc<Mutex<Vec<Responder>>>,
    app: JoinHandle<()>,
}

impl Node {
    async fn start(config: TransportConfig) -> Result<Node, TransportError> {
        let (transport, mut inbound) = Transport::bind(config).await?;
        let (raft_tx, raft_rx) = mpsc::unbounded_channel();
        let held = Arc::new(Mutex::new(Vec::new()));
        let held_by_app = held.clone();
        let app = tokio::spawn(async move {
            while let Some(message) = inbound.recv().await {
                match message {
                    Inbound::Raft { from, shard, message } => {
                        let _ = raft_tx.send((from, shard, message));
                    }
                    Inbound::Request { body, responder, .. } => match body.as_slice() {
                        b"fail" => responder.respond(Err(WireError::new(WireError::BAD_REQUEST, "asked to fail"))).expect("respond"),
                        b"hold" => held_by_app.lock().push(responder),
                        b"drop" => drop(responder),
                        _ => {
                            let mut reply = b"echo:".to_vec();
                            reply.extend_from_slice(&body);
                            responder.respond(Ok(reply)).expect("respond");
                        }
                    },
                }
            }
        });
        Ok(Node { transport, raft_rx, held, app })
    }

    async fn new(cluster: &str, node_id: NodeId) -> Node {
        Node::start(config(cluster, node_id)).await.expect("bind")
    }

    fn id(&self) -> NodeId {
        self.transport.node_id()
    }

    fn addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    async fn recv_raft(&mut self) -> (NodeId, u32, Vec<u8>) {
        tokio::time::timeout(DEADLINE, self.raft_rx.recv()).await.expect("raft message within the deadline").expect("app running")
    }

    fn stop(self) {
        self.transport.shutdown();
        self.app.abort();
    }
}

fn connect(a: &Node, b: &Node) {
    a.transport.add_peer(b.id(), b.addr()).expect("add peer");
}

async fn wait_connected(a: &Node, peer: NodeId) {
    wait_until(&format!("node {} is connected to {peer}", a.id()), || {
        a.transport.peer_status(peer).is_some_and(|s| s.state == PeerState::Connected)
    })
    .await;
}

/// An address on which nothing listens (a port that was just free).
async fn dead_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_raft_messages_and_requests() {
    let mut a = Node::new("two_nodes_exchange_raft_messages_and_req", 1).await;
    let mut b = Node::new("two_nodes_exchange_raft_messages_and_req", 2).await;
    connect(&a, &b);
    connect(&b, &a);

    // Many messages in a burst: they arrive complete and in order (one connection per direction).
    for i in 0..200u32 {
        a.transport.send_raft(2, i % 4, i.to_be_bytes().to_vec()).expect("send");
    }
    for i in 0..200u32 {
        assert_eq!(b.recv_raft().await, (1, i % 4, i.to_be_bytes().to_vec()));
    }
    b.transport.send_raft(1, 7, b"vote".to_vec()).expect("send");
    assert_eq!(a.recv_raft().await, (2, 7, b"vote".to_vec()));

    let timeout = Duration::from_secs(5);
    assert_eq!(a.transport.call(2, b"ping".to_vec(), timeout).await, Ok(b"echo:ping".to_vec()));
    assert_eq!(b.transport.call(1, b"pong".to_vec(), timeout).await, Ok(b"echo:pong".to_vec()));
    assert_eq!(
        a.transport.call(2, b"fail".to_vec(), timeout).await,
        Err(TransportError::Remote(WireError::new(WireError::BAD_REQUEST, "asked to fail")))
    );
    // A dropped responder answers at once rather than leaving the caller to its timeout.
    let started = Instant::now();
    let dropped = a.transport.call(2, b"drop".to_vec(), timeout).await;
    assert!(matches!(dropped, Err(TransportError::Remote(WireError { code: WireError::NO_RESPONSE, .. }))), "{dropped:?}");
    assert!(started.elapsed() < timeout);

    // Unknown peers are a typed error.
    assert_eq!(a.transport.send_raft(99, 0, vec![]), Err(TransportError::UnknownPeer { peer: 99 }));

    let stats = a.transport.stats();
    assert!(stats.frames_sent >= 203 && stats.batches_written >= 1 && stats.batches_written <= stats.frames_sent, "{stats:?}");
    assert_eq!(a.transport.pending_requests(2), 0);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_full_mesh_with_concurrent_calls() {
    let mut nodes = vec![
        Node::new("three_nodes_full_mesh_with_concurrent_ca", 1).await,
        Node::new("three_nodes_full_mesh_with_concurrent_ca", 2).await,
        Node::new("three_nodes_full_mesh_with_concurrent_ca", 3).await,
    ];
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                connect(&nodes[i], &nodes[j]);
            }
        }
    }
    for node in &nodes {
        for peer in 1..=3 {
            if peer != node.id() {
                node.transport.send_raft(peer, peer as u32, format!("{}->{peer}", node.id()).into_bytes()).expect("send");
            }
        }
    }
    for node in &mut nodes {
        let mut got = vec![node.recv_raft().await, node.recv_raft().await];
        got.sort();
        let me = node.id();
        let expected: Vec<_> = (1..=3).filter(|&p| p != me).map(|p| (p, me as u32, format!("{p}->{me}").into_bytes())).collect();
        assert_eq!(got, expected);
    }

    // Concurrent calls from every node to every other node; each gets its own answer back.
    let mut calls = Vec::new();
    for node in &nodes {
        for peer in (1..=3).filter(|&p| p != node.id()) {
            for k in 0..20 {
                let transport = node.transport.clone();
                let body = format!("{}:{peer}:{k}", node.id()).into_bytes();
                calls.push(tokio::spawn(async move {
                    let reply = transport.call(peer, body.clone(), Duration::from_secs(5)).await;
                    (body, reply)
                }));
            }
        }
    }
    for call in calls {
        let (body, reply) = call.await.expect("task");
        let mut expected = b"echo:".to_vec();
        expected.extend_from_slice(&body);
        assert_eq!(reply, Ok(expected));
    }
    for node in &nodes {
        for peer in (1..=3).filter(|&p| p != node.id()) {
            assert_eq!(node.transport.pending_requests(peer), 0);
        }
    }
    for node in nodes {
        node.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_id_mismatch_is_refused() {
    let a = Node::new("alpha", 1).await;
    let mut b = Node::new("beta", 2).await;
    connect(&a, &b);

    wait_until("b refused a's handshake", || b.transport.stats().handshakes_refused >= 1).await;
    // b answers a stranger nothing (not even which cluster it is): a only sees the connection
    // closed during the handshake.
    wait_until("a recorded the refusal", || {
        a.transport.peer_status(2).is_some_and(|s| s.state == PeerState::Down && matches!(s.last_error, Some(TransportError::Handshake(_))))
    })
    .await;
    assert_eq!(a.transport.peer_status(2).map(|s| s.connections_established), Some(0));

    // Calls fail fast with a typed error; Raft messages are only queued, never delivered.
    assert_eq!(a.transport.call(2, b"ping".to_vec(), Duration::from_secs(5)).await, Err(TransportError::NotConnected { peer: 2 }));
    a.transport.send_raft(2, 0, b"x".to_vec()).expect("queued");
    assert!(tokio::time::timeout(Duration::from_millis(200), b.raft_rx.recv()).await.is_err(), "b must not receive anything");
    a.stop();
    b.stop();
}

/// Reads one frame from a raw socket with a deadline.
async fn read_envelope(stream: &mut TcpStream) -> Envelope {
    let mut scratch = Vec::new();
    tokio::time::timeout(DEADLINE, frame::read_frame::<_, Envelope>(stream, 4096, &mut scratch))
        .await
        .expect("frame within the deadline")
        .expect("valid frame")
        .expect("not end of stream")
}

/// Waits for the peer to close the connection (EOF or reset), draining anything it sends.
async fn wait_closed(stream: &mut TcpStream) {
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "connection still open at the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_wire_version_is_refused() {
    let b = Node::new("unsupported_wire_version_is_refused", 2).await;
    let mut raw = TcpStream::connect(b.addr()).await.expect("connect");
    // A hello in a frame whose version byte is from the future.
    let hello =
        Envelope::Hello(Hello { cluster_id: "unsupported_wire_version_is_refused".into(), node_id: 1, wire_version: WIRE_VERSION + 1 });
    let payload = rushes_protocol::codec::encode(WIRE_VERSION + 1, &hello).expect("encode");
    let mut bytes = Vec::new();
    frame::append_frame(&mut bytes, &payload);
    raw.write_all(&bytes).await.expect("write");

    // b checks the caller's hello before saying anything, and closes on this one.
    wait_closed(&mut raw).await;
    wait_until("b counted the refusal", || b.transport.stats().handshakes_refused == 1).await;

    // Same frame version but a hello that claims another wire version: refused as well.
    let mut raw = TcpStream::connect(b.addr()).await.expect("connect");
    let bytes = frame::encode_frame(&hello, 4096).expect("encode");
    raw.write_all(&bytes).await.expect("write");
    wait_closed(&mut raw).await;
    wait_until("b counted the second refusal", || b.transport.stats().handshakes_refused == 2).await;
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_length_prefix_closes_the_connection() {
    let mut b = Node::new("oversize_length_prefix_closes_the_connec", 2).await;
    let mut raw = TcpStream::connect(b.addr()).await.expect("connect");
    let hello =
        Envelope::Hello(Hello { cluster_id: "oversize_length_prefix_closes_the_connec".into(), node_id: 1, wire_version: WIRE_VERSION });
    raw.write_all(&frame::encode_frame(&hello, 4096).expect("encode")).await.expect("write");
    assert!(matches!(read_envelope(&mut raw).await, Envelope::Hello(_)));

    // A valid Raft frame is delivered, then a 4 GiB length prefix makes b hang up.
    let raft = Envelope::Raft { shard: 3, message: b"ok".to_vec() };
    raw.write_all(&frame::encode_frame(&raft, 4096).expect("encode")).await.expect("write");
    assert_eq!(b.recv_raft().await, (1, 3, b"ok".to_vec()));
    raw.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    wait_closed(&mut raw).await;
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_refuses_oversize_frames() {
    let mut small = config("sender_refuses_oversize_frames", 1);
    small.max_frame_bytes = 1024;
    let a = Node::start(small).await.expect("bind");
    let b = Node::new("sender_refuses_oversize_frames", 2).await;
    connect(&a, &b);
    let too_big = vec![0u8; 2000];
    assert!(matches!(
        a.transport.send_raft(2, 0, too_big.clone()),
        Err(TransportError::Frame(FrameError::TooLarge { max_frame_bytes: 1024, .. }))
    ));
    let call = a.transport.call(2, too_big, Duration::from_secs(5)).await;
    assert!(matches!(call, Err(TransportError::Frame(FrameError::TooLarge { .. }))), "{call:?}");
    assert_eq!(a.transport.pending_requests(2), 0);
    // Below the limit still works.
    assert_eq!(a.transport.call(2, vec![1; 100], Duration::from_secs(5)).await.map(|r| r.len()), Ok(105));
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_to_a_down_peer_fails_within_its_timeout() {
    let a = Node::new("call_to_a_down_peer_fails_within_its_tim", 1).await;
    a.transport.add_peer(2, dead_addr().await).expect("add peer");
    let timeout = Duration::from_secs(2);

    // Whether the first connection attempt has failed yet or not, the call ends with a typed
    // error well within its timeout (refused connections fail pending calls immediately).
    let started = Instant::now();
    let first = a.transport.call(2, b"ping".to_vec(), timeout).await;
    assert!(
        matches!(
            first,
            Err(TransportError::NotConnected { peer: 2 }
                | TransportError::Disconnected { peer: 2 }
                | TransportError::Timeout { peer: 2, .. })
        ),
        "{first:?}"
    );
    assert!(started.elapsed() <= timeout + Duration::from_millis(500), "took {:?}", started.elapsed());

    // Once the peer is known to be down, calls fail fast with NotConnected.
    wait_until("peer 2 is down", || a.transport.peer_status(2).is_some_and(|s| s.state == PeerState::Down)).await;
    let started = Instant::now();
    assert_eq!(a.transport.call(2, b"ping".to_vec(), timeout).await, Err(TransportError::NotConnected { peer: 2 }));
    assert!(started.elapsed() < timeout);
    assert_eq!(a.transport.pending_requests(2), 0);
    assert!(a.transport.peer_status(2).is_some_and(|s| s.last_error.is_some()));
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_peer_listener_restarts() {
    let a = Node::new("reconnects_after_the_peer_listener_resta", 1).await;
    let mut b = Node::new("reconnects_after_the_peer_listener_resta", 2).await;
    let b_addr = b.addr();
    connect(&a, &b);
    a.transport.send_raft(2, 1, b"before".to_vec()).expect("send");
    assert_eq!(b.recv_raft().await, (1, 1, b"before".to_vec()));
    assert_eq!(a.transport.call(2, b"x".to_vec(), Duration::from_secs(5)).await, Ok(b"echo:x".to_vec()));

    b.stop();
    wait_until("a notices b is gone", || a.transport.peer_status(2).is_some_and(|s| s.state == PeerState::Down)).await;

    // Restart b on the same port (the old socket is closed asynchronously: retry the bind).
    let started = Instant::now();
    let mut b2 = loop {
        match Node::start({
            let mut c = config("reconnects_after_the_peer_listener_resta", 2);
            c.listen_addr = b_addr;
            c
        })
        .await
        {
            Ok(node) => break node,
            Err(error) => {
                assert!(started.elapsed() < DEADLINE, "cannot rebind {b_addr}: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    wait_until("a reconnected to b", || a.transport.peer_status(2).is_some_and(|s| s.connections_established >= 2)).await;
    a.transport.send_raft(2, 1, b"after".to_vec()).expect("send");
    assert_eq!(b2.recv_raft().await, (1, 1, b"after".to_vec()));
    assert_eq!(a.transport.call(2, b"y".to_vec(), Duration::from_secs(5)).await, Ok(b"echo:y".to_vec()));
    a.stop();
    b2.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_queued_while_down_are_delivered_after_connecting() {
    let a = Node::new("raft_messages_queued_while_down_are_deli", 1).await;
    let addr = dead_addr().await;
    a.transport.add_peer(2, addr).expect("add peer");
    wait_until("peer 2 is down", || a.transport.peer_status(2).is_some_and(|s| s.state == PeerState::Down)).await;
    for i in 0..5u8 {
        a.transport.send_raft(2, 0, vec![i]).expect("queued while down");
    }
    assert_eq!(a.transport.peer_status(2).map(|s| s.queued_messages), Some(5));
    let mut b = Node::start({
        let mut c = config("raft_messages_queued_while_down_are_deli", 2);
        c.listen_addr = addr;
        c
    })
    .await
    .expect("bind the reserved port");
    for i in 0..5u8 {
        assert_eq!(b.recv_raft().await, (1, 0, vec![i]));
    }
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_returns_queue_full() {
    let mut small = config("full_queue_returns_queue_full", 1);
    small.queue_capacity = 4;
    let a = Node::start(small).await.expect("bind");
    // Never reachable, so the writer never drains the queue: the fill level is deterministic.
    a.transport.add_peer(2, dead_addr().await).expect("add peer");
    for i in 0..4u8 {
        a.transport.send_raft(2, 0, vec![i]).expect("room in the queue");
    }
    assert_eq!(a.transport.send_raft(2, 0, vec![9]), Err(TransportError::QueueFull { peer: 2 }));
    assert_eq!(a.transport.peer_status(2).map(|s| s.queued_messages), Some(4));
    // A call does not wait for room either (QueueFull, or NotConnected once known down).
    let call = a.transport.call(2, b"ping".to_vec(), Duration::from_secs(5)).await;
    assert!(matches!(call, Err(TransportError::QueueFull { .. } | TransportError::NotConnected { .. })), "{call:?}");
    assert_eq!(a.transport.pending_requests(2), 0);
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_request_times_out_and_pending_is_cleaned() {
    let a = Node::new("unanswered_request_times_out_and_pending", 1).await;
    let b = Node::new("unanswered_request_times_out_and_pending", 2).await;
    connect(&a, &b);
    wait_connected(&a, 2).await;

    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(a.transport.call(2, b"hold".to_vec(), timeout).await, Err(TransportError::Timeout { peer: 2, timeout_ms: 300 }));
    assert!(started.elapsed() >= timeout);
    assert_eq!(a.transport.pending_requests(2), 0);

    // The late answer is discarded without harm, and the connection keeps working.
    wait_until("b holds the request", || b.held.lock().len() == 1).await;
    let late = b.held.lock().pop().expect("held");
    late.respond(Ok(b"too late".to_vec())).expect("queued");
    assert_eq!(a.transport.call(2, b"z".to_vec(), Duration::from_secs(5)).await, Ok(b"echo:z".to_vec()));
    assert_eq!(a.transport.pending_requests(2), 0);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_calls_fail_with_disconnected_when_the_connection_drops() {
    let a = Node::new("pending_calls_fail_with_disconnected_whe", 1).await;
    let b = Node::new("pending_calls_fail_with_disconnected_whe", 2).await;
    connect(&a, &b);
    wait_connected(&a, 2).await;

    let caller = a.transport.clone();
    let call = tokio::spawn(async move { caller.call(2, b"hold".to_vec(), Duration::from_secs(30)).await });
    wait_until("b holds the request", || b.held.lock().len() == 1).await;
    assert_eq!(a.transport.pending_requests(2), 1);

    // Shut b down while keeping its held responder alive, so nothing answers the call.
    b.transport.shutdown();
    let started = Instant::now();
    let result = tokio::time::timeout(DEADLINE, call).await.expect("call ends before the deadline").expect("task");
    assert_eq!(result, Err(TransportError::Disconnected { peer: 2 }));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(a.transport.pending_requests(2), 0);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_receiver_answers_requests_with_503() {
    let a = Node::new("pending_calls_fail_with_disconnected_whe", 1).await;
    // A receiver whose application never reads: the inbound channel (capacity 1) fills up.
    let mut cfg = config("pending_calls_fail_with_disconnected_whe", 2);
    cfg.inbound_capacity = 1;
    let (b, _inbound_never_read) = Transport::bind(cfg).await.expect("bind");
    a.transport.add_peer(2, b.local_addr()).expect("add peer");
    wait_connected(&a, 2).await;
    a.transport.send_raft(2, 0, b"fills the channel".to_vec()).expect("send");
    wait_until("b received the raft message", || b.stats().frames_received >= 1).await;
    let reply = a.transport.call(2, b"ping".to_vec(), Duration::from_secs(5)).await;
    assert!(matches!(reply, Err(TransportError::Remote(WireError { code: WireError::OVERLOADED, .. }))), "{reply:?}");
    assert!(b.stats().inbound_dropped >= 1);
    a.stop();
    b.shutdown();
}

#[test]
fn frame_layout_is_length_version_body() {
    let envelope = Envelope::Request { request_id: 5, body: vec![1, 2, 3] };
    let bytes = frame::encode_frame(&envelope, 1024).expect("encode");
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    assert_eq!(len, bytes.len() - LENGTH_PREFIX_BYTES);
    assert_eq!(bytes[LENGTH_PREFIX_BYTES], WIRE_VERSION);
    assert_eq!(frame::decode_frame::<Envelope>(&bytes, 1024).expect("decode"), Some((envelope, bytes.len())));
}

/// A transport config of `node_id` in a TLS cluster, presenting `cert`/`key` and trusting `ca`.
fn tls_config(cluster: &str, node_id: NodeId, ca: &str, cert: &str, key: &str) -> TransportConfig {
    let mut config = config(cluster, node_id);
    config.tls = Some(Arc::new(rushes_cluster::transport::PeerTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).expect("tls")));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_binds_each_connection_to_its_certificates_node() {
    use rushes_cluster::transport::ClusterCertificates;
    let cluster = "mutual_tls_binds_each_connection";
    let certs = ClusterCertificates::generate(cluster, &[1, 2]).expect("certs");
    let other = ClusterCertificates::generate(cluster, &[1]).expect("another CA");
    let (cert1, key1) = (&certs.nodes[0].1, &certs.nodes[0].2);
    let (cert2, key2) = (&certs.nodes[1].1, &certs.nodes[1].2);
    let mut b = Node::start(tls_config(cluster, 2, &certs.ca_cert_pem, cert2, key2)).await.expect("bind");
    // A member with its own certificate: messages and calls both ways over TLS.
    let a = Node::start(tls_config(cluster, 1, &certs.ca_cert_pem, cert1, key1)).await.expect("bind");
    connect(&a, &b);
    a.transport.send_raft(2, 5, b"over tls".to_vec()).expect("send");
    assert_eq!(b.recv_raft().await, (1, 5, b"over tls".to_vec()));
    assert_eq!(a.transport.call(2, b"ping".to_vec(), Duration::from_secs(5)).await, Ok(b"echo:ping".to_vec()));
    a.stop();
    // Node 1's certificate claiming to be node 3: refused, never delivered.
    let forger = Node::start(tls_config(cluster, 3, &certs.ca_cert_pem, cert1, key1)).await.expect("bind");
    connect(&forger, &b);
    forger.transport.send_raft(2, 5, b"forged".to_vec()).expect("queued");
    wait_until("b refused the forged id", || b.transport.stats().handshakes_refused >= 1).await;
    // A certificate from another CA: refused by TLS itself.
    let stranger = Node::start(tls_config(cluster, 1, &other.ca_cert_pem, &other.nodes[0].1, &other.nodes[0].2)).await.expect("bind");
    connect(&stranger, &b);
    stranger.transport.send_raft(2, 5, b"stranger".to_vec()).expect("queued");
    wait_until("b refused the stranger", || b.transport.stats().handshakes_refused >= 2).await;
    // And plain TCP to a TLS node gets nowhere.
    let plain = Node::new(cluster, 1).await;
    connect(&plain, &b);
    plain.transport.send_raft(2, 5, b"plain".to_vec()).expect("queued");
    wait_until("b refused plain TCP", || b.transport.stats().handshakes_refused >= 3).await;
    assert!(tokio::time::timeout(Duration::from_millis(300), b.raft_rx.recv()).await.is_err(), "nothing got through");
    for node in [forger, stranger, plain] {
        node.stop();
    }
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connections_are_capped_and_idle_ones_closed() {
    let mut limited = config("inbound_connections_are_capped", 2);
    limited.max_inbound_connections = 2;
    limited.idle_timeout_ms = 300;
    limited.handshake_timeout_ms = 5_000;
    let b = Node::start(limited).await.expect("bind");
    // Two raw connections that never say a word hold the two places (until the handshake
    // timeout); a third is closed at once.
    let _first = TcpStream::connect(b.addr()).await.expect("connect");
    let _second = TcpStream::connect(b.addr()).await.expect("connect");
    wait_until("two connections are held", || b.transport.stats().connections_accepted >= 2).await;
    let mut third = TcpStream::connect(b.addr()).await.expect("connect");
    wait_closed(&mut third).await;
    assert!(b.transport.stats().connections_refused >= 1);
    drop((_first, _second));
    // An established connection that goes quiet is closed after the idle timeout.
    let a = Node::new("inbound_connections_are_capped", 1).await;
    connect(&a, &b);
    wait_until("the silent connection to be closed", || b.transport.stats().idle_closed >= 1).await;
    a.stop();
    b.stop();
}
