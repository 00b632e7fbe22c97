//! Node-to-node peer transport: TCP, length-prefixed versioned bincode frames, a handshake,
//! bounded per-peer send queues, reconnect with backoff and request/response with timeouts.
//!
//! # Design
//!
//! * **Connections.** Each node dials every peer it was told about ([`Transport::add_peer`]) and
//!   uses that *outbound* connection for what it sends (Raft messages and requests); responses
//!   come back on the same connection. Connections a node *accepts* carry the peer's Raft
//!   messages and requests to it, and its responses back. Two nodes that know each other so
//!   hold two TCP connections; that keeps each one's ownership simple (one writer task, one
//!   reader task, one pending-request map) and avoids any "who dials whom" tie-breaking.
//! * **Frames** ([`frame`]): `[u32 BE length][u8 wire version][bincode body]`, with a maximum
//!   frame size enforced by senders (typed error) and receivers (connection closed, nothing
//!   allocated for the announced length).
//! * **Handshake.** Both sides send [`Hello`] first; a peer with another cluster id, an
//!   unsupported wire version, our own node id, or (for a dialed peer) an unexpected node id is
//!   refused: the connection is closed, the refusal logged and counted.
//! * **Outbound queue.** One bounded queue per peer. [`Transport::send_raft`] and
//!   [`Transport::call`] never block on it: a full queue is [`TransportError::QueueFull`], which
//!   callers turn into backpressure (503). A writer task drains whatever is queued into one
//!   buffer and writes it with a single `write_all`.
//! * **Disconnects.** The writer reconnects with jittered exponential backoff. While a peer is
//!   down, queued Raft messages wait (bounded by the queue); a batch lost in a failing write is
//!   dropped (Raft retransmits). Calls fail fast: pending calls fail with
//!   [`TransportError::Disconnected`] when the connection drops or a connection attempt fails,
//!   new calls to a peer known to be down fail with [`TransportError::NotConnected`], and queued
//!   requests whose caller has already given up are skipped rather than sent.
//! * **Inbound delivery.** Decoded messages go to the application through the bounded
//!   [`Inbound`] channel returned by [`Transport::bind`]. Delivery never blocks a connection:
//!   when the channel is full a Raft message is dropped (Raft retransmits) and a request is
//!   answered with [`WireError::OVERLOADED`]. A request carries a [`Responder`] that sends the
//!   response back on the connection it came from; dropping it unanswered sends
//!   [`WireError::NO_RESPONSE`] so the caller does not wait for its timeout.

pub mod frame;
mod handshake;
mod inbound;
mod peer;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::placement::NodeId;

pub use frame::{FrameError, DEFAULT_MAX_FRAME_BYTES, WIRE_VERSION};
pub use handshake::{HandshakeError, Hello};
pub use inbound::{Inbound, Responder};
pub use peer::{PeerState, PeerStatus};
pub use tls::{ClusterCertificates, PeerTls, TlsError};

/// The node ids a transport accepts connections from, changed while it runs.
#[derive(Debug, Clone, Default)]
pub struct AllowedPeers(Arc<RwLock<std::collections::HashSet<NodeId>>>);

impl AllowedPeers {
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> AllowedPeers {
        AllowedPeers(Arc::new(RwLock::new(ids.into_iter().collect())))
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.0.read().contains(&id)
    }

    /// Replaces the set (connections of nodes no longer in it are refused from their next
    /// handshake; Raft and request checks refuse their messages meanwhile).
    pub fn set(&self, ids: impl IntoIterator<Item = NodeId>) {
        *self.0.write() = ids.into_iter().collect();
    }
}

/// A connection's byte stream: plain TCP, or TLS over TCP.
pub(crate) trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> PeerIo for T {}
pub(crate) type PeerStream = Box<dyn PeerIo>;

/// An error returned to a remote caller in a [`Envelope::Response`]: a small code (HTTP-like, so
/// callers can map it directly) and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("remote error {code}: {message}")]
pub struct WireError {
    pub code: u16,
    pub message: String,
}

impl WireError {
    pub const BAD_REQUEST: u16 = 400;
    pub const TOO_LARGE: u16 = 413;
    pub const INTERNAL: u16 = 500;
    /// The handler dropped the request without answering.
    pub const NO_RESPONSE: u16 = 502;
    /// The receiving node's inbound channel was full.
    pub const OVERLOADED: u16 = 503;

    pub fn new(code: u16, message: impl Into<String>) -> Self {
        WireError { code, message: message.into() }
    }
}

/// Everything that travels in a frame. Raft messages are opaque protobuf bytes so the transport
/// does not depend on raft types; request and response bodies are opaque to the transport too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    /// First frame on every connection, in both directions.
    Hello(Hello),
    // Byte fields are serialized as bytes, not sequences of u8: bincode encodes both the same
    // way (length, then the bytes), but decodes bytes with one copy instead of a call per byte.
    Raft {
        shard: u32,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    Request {
        request_id: u64,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    Response {
        request_id: u64,
        #[serde(with = "response_body")]
        body: Result<Vec<u8>, WireError>,
    },
}

/// `Result<Vec<u8>, WireError>` encoded exactly as serde encodes a `Result`, with the bytes as bytes.
mod response_body {
    use super::WireError;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    enum Borrowed<'a> {
        Ok(#[serde(with = "serde_bytes")] &'a [u8]),
        Err(&'a WireError),
    }

    #[derive(Deserialize)]
    enum Owned {
        Ok(#[serde(with = "serde_bytes")] Vec<u8>),
        Err(WireError),
    }

    pub fn serialize<S: Serializer>(body: &Result<Vec<u8>, WireError>, serializer: S) -> Result<S::Ok, S::Error> {
        match body {
            Ok(bytes) => Borrowed::Ok(bytes),
            Err(error) => Borrowed::Err(error),
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Result<Vec<u8>, WireError>, D::Error> {
        Ok(match Owned::deserialize(deserializer)? {
            Owned::Ok(bytes) => Ok(bytes),
            Owned::Err(error) => Err(error),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("send queue to node {peer} is full")]
    QueueFull { peer: NodeId },
    #[error("node {peer} is not a known peer")]
    UnknownPeer { peer: NodeId },
    #[error("node {peer} is not connected")]
    NotConnected { peer: NodeId },
    #[error("connection to node {peer} was lost")]
    Disconnected { peer: NodeId },
    #[error("node {peer} did not answer within {timeout_ms} ms")]
    Timeout { peer: NodeId, timeout_ms: u64 },
    #[error("connecting to node {peer} timed out after {timeout_ms} ms")]
    ConnectTimeout { peer: NodeId, timeout_ms: u64 },
    #[error("frame error: {0}")]
    Frame(#[from] FrameError),
    #[error("handshake refused: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("protocol violation by node {peer}: {detail}")]
    Protocol { peer: NodeId, detail: String },
    #[error(transparent)]
    Remote(#[from] WireError),
    #[error("i/o error ({kind:?}): {message}")]
    Io { kind: std::io::ErrorKind, message: String },
    #[error("the transport is shut down")]
    Shutdown,
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        TransportError::Io { kind: e.kind(), message: e.to_string() }
    }
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Peers with another cluster id are refused at the handshake.
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Where to accept peers; port 0 picks a free port (see [`Transport::local_addr`]).
    pub listen_addr: SocketAddr,
    /// Largest frame (version byte + body) sent or accepted.
    pub max_frame_bytes: usize,
    /// Capacity of each peer's outbound queue, and of each inbound connection's response queue.
    pub queue_capacity: usize,
    /// Capacity of the channel delivering inbound messages to the application.
    pub inbound_capacity: usize,
    /// A writer stops adding queued frames to a batch once it holds this many bytes.
    pub max_batch_bytes: usize,
    pub connect_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    /// A write that makes no progress for this long (peer not reading) drops the connection.
    pub write_timeout_ms: u64,
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// Mutual TLS: every connection is TLS, and a peer's hello must name the node its
    /// certificate names. `None`: plain TCP, and a peer's claimed id is taken on trust.
    pub tls: Option<Arc<PeerTls>>,
    /// Node ids that may connect; `None` accepts any. Shared, so the node can change it as
    /// members join and leave.
    pub allowed_peers: Option<AllowedPeers>,
    /// Accepted connections open at once; more are closed at once.
    pub max_inbound_connections: usize,
    /// An accepted connection that sends no frame for this long is closed.
    pub idle_timeout_ms: u64,
}

impl TransportConfig {
    pub fn new(cluster_id: impl Into<String>, node_id: NodeId, listen_addr: SocketAddr) -> Self {
        TransportConfig {
            cluster_id: cluster_id.into(),
            node_id,
            listen_addr,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            queue_capacity: 1024,
            inbound_capacity: 4096,
            max_batch_bytes: 1024 * 1024,
            connect_timeout_ms: 1_000,
            handshake_timeout_ms: 2_000,
            write_timeout_ms: 10_000,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 5_000,
            tls: None,
            allowed_peers: None,
            max_inbound_connections: 256,
            idle_timeout_ms: 120_000,
        }
    }
}

/// Counters since the transport started (a snapshot; see [`Transport::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub frames_sent: u64,
    /// Number of `write_all` calls; `frames_sent / batches_written` is the batching factor.
    pub batches_written: u64,
    pub frames_received: u64,
    pub connections_established: u64,
    pub connections_accepted: u64,
    pub handshakes_refused: u64,
    /// Inbound Raft messages dropped and requests refused because the inbound channel was full.
    pub inbound_dropped: u64,
    /// Accepted connections closed at once because `max_inbound_connections` were open.
    pub connections_refused: u64,
    /// Accepted connections closed after `idle_timeout_ms` without a frame.
    pub idle_closed: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub frames_sent: AtomicU64,
    pub batches_written: AtomicU64,
    pub frames_received: AtomicU64,
    pub connections_established: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub inbound_dropped: AtomicU64,
    pub connections_refused: AtomicU64,
    pub idle_closed: AtomicU64,
    /// Accepted connections open now.
    pub inbound_open: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: get(&self.frames_sent),
            batches_written: get(&self.batches_written),
            frames_received: get(&self.frames_received),
            connections_established: get(&self.connections_established),
            connections_accepted: get(&self.connections_accepted),
            handshakes_refused: get(&self.handshakes_refused),
            inbound_dropped: get(&self.inbound_dropped),
            connections_refused: get(&self.connections_refused),
            idle_closed: get(&self.idle_closed),
        }
    }
}

/// State shared by the transport's tasks. Tasks hold this, never [`Inner`], so dropping the last
/// [`Transport`] handle stops them.
pub(crate) struct Shared {
    pub config: TransportConfig,
    pub counters: Counters,
    pub inbound_tx: mpsc::Sender<Inbound>,
}

/// A running transport. Cheap to clone; the tasks stop on [`Transport::shutdown`] or when the
/// last clone is dropped. Must be created inside a tokio runtime; its methods can be called from
/// anywhere (tasks are spawned on the runtime captured by [`Transport::bind`]).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    peers: RwLock<HashMap<NodeId, Arc<peer::PeerHandle>>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    shut_down: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.get_mut().take() {
            task.abort();
        }
        // Dropping the peer handles aborts their tasks and fails their pending calls.
    }
}

impl Transport {
    /// Binds the listener and starts accepting peers. Returns the transport and the channel on
    /// which inbound Raft messages and requests are delivered.
    pub async fn bind(config: TransportConfig) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        let listener = TcpListener::bind(config.listen_addr).await?;
        let local_addr = listener.local_addr()?;
        // A zero capacity would panic in tokio; treat it as 1.
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity.max(1));
        let shared = Arc::new(Shared { config, counters: Counters::default(), inbound_tx });
        let runtime = tokio::runtime::Handle::current();
        let accept_task = runtime.spawn(inbound::accept_loop(shared.clone(), listener));
        tracing::info!(node_id = shared.config.node_id, %local_addr, "peer transport listening");
        let inner = Inner {
            shared,
            local_addr,
            runtime,
            peers: RwLock::new(HashMap::new()),
            accept_task: Mutex::new(Some(accept_task)),
            shut_down: AtomicBool::new(false),
        };
        Ok((Transport { inner: Arc::new(inner) }, inbound_rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.shared.config.node_id
    }

    pub fn config(&self) -> &TransportConfig {
        &self.inner.shared.config
    }

    /// Starts (or restarts, if the address changed) the outbound connection to `peer`. Re-adding
    /// a peer at the same address keeps its connection and queue.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) -> Result<(), TransportError> {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(TransportError::Shutdown);
        }
        let mut peers = self.inner.peers.write();
        if peers.get(&peer).is_some_and(|h| h.addr() == addr) {
            return Ok(());
        }
        let handle = peer::PeerHandle::spawn(&self.inner.runtime, self.inner.shared.clone(), peer, addr);
        // The replaced handle (if any) is dropped here, which stops its task.
        peers.insert(peer, Arc::new(handle));
        Ok(())
    }

    /// Stops the outbound connection to `peer`; its pending calls fail with `Disconnected`.
    pub fn remove_peer(&self, peer: NodeId) -> bool {
        self.inner.peers.write().remove(&peer).is_some()
    }

    fn peer(&self, peer: NodeId) -> Result<Arc<peer::PeerHandle>, TransportError> {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(TransportError::Shutdown);
        }
        self.inner.peers.read().get(&peer).cloned().ok_or(TransportError::UnknownPeer { peer })
    }

    /// Queues a Raft message for `peer` without waiting. Fails with `QueueFull` when the peer's
    /// queue is full and with a frame error when the message exceeds the maximum frame size.
    pub fn send_raft(&self, peer: NodeId, shard: u32, message: Vec<u8>) -> Result<(), TransportError> {
        self.peer(peer)?.send_raft(shard, message, self.inner.shared.config.max_frame_bytes)
    }

    /// Sends a request to `peer` and waits for its response, at most `timeout`. Never waits on a
    /// full queue (`QueueFull`), fails fast when the peer is down (`NotConnected`) or the
    /// connection drops (`Disconnected`); a remote handler error is `Remote`.
    pub async fn call(&self, peer: NodeId, body: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        // Clone only the queue sender and state: holding the handle across the await would keep
        // a removed peer's task alive until the call ends.
        let (state, tx) = {
            let handle = self.peer(peer)?;
            (handle.state.clone(), handle.sender())
        };
        peer::call(&state, &tx, body, timeout, self.inner.shared.config.max_frame_bytes).await
    }

    pub fn peer_status(&self, peer: NodeId) -> Option<PeerStatus> {
        self.inner.peers.read().get(&peer).map(|h| h.status())
    }

    /// Calls to `peer` waiting for a response (0 for an unknown peer).
    pub fn pending_requests(&self, peer: NodeId) -> usize {
        self.inner.peers.read().get(&peer).map_or(0, |h| h.state.pending_len())
    }

    pub fn stats(&self) -> TransportStats {
        self.inner.shared.counters.snapshot()
    }

    /// Stops accepting, closes every connection and fails pending calls. Idempotent. The
    /// listening socket is closed once the runtime has dropped the aborted accept task.
    pub fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::SeqCst);
        if let Some(task) = self.inner.accept_task.lock().take() {
            task.abort();
        }
        let peers = std::mem::take(&mut *self.inner.peers.write());
        drop(peers);
    }
}

#[cfg(test)]
mod envelope_encoding_tests {
    use super::*;

    /// The envelope as it was before its byte fields were marked as bytes.
    #[derive(Serialize)]
    enum PlainEnvelope {
        #[allow(dead_code)]
        Hello(Hello),
        Raft {
            shard: u32,
            message: Vec<u8>,
        },
        Request {
            request_id: u64,
            body: Vec<u8>,
        },
        Response {
            request_id: u64,
            body: Result<Vec<u8>, WireError>,
        },
    }

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        frame::encode_payload(value, 1 << 20).expect("encodes")
    }

    #[test]
    fn byte_fields_keep_the_wire_encoding_and_round_trip() {
        let bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        let error = WireError { code: 503, message: "no leader".into() };
        let pairs = [
            (Envelope::Raft { shard: 3, message: bytes.clone() }, PlainEnvelope::Raft { shard: 3, message: bytes.clone() }),
            (Envelope::Request { request_id: 7, body: bytes.clone() }, PlainEnvelope::Request { request_id: 7, body: bytes.clone() }),
            (
                Envelope::Response { request_id: 8, body: Ok(bytes.clone()) },
                PlainEnvelope::Response { request_id: 8, body: Ok(bytes.clone()) },
            ),
            (
                Envelope::Response { request_id: 9, body: Err(error.clone()) },
                PlainEnvelope::Response { request_id: 9, body: Err(error.clone()) },
            ),
        ];
        for (envelope, plain) in pairs {
            let encoded = encode(&envelope);
            assert_eq!(encoded, encode(&plain), "{envelope:?} changed its wire encoding");
            let decoded: Envelope = frame::decode_payload(&encoded).expect("decodes");
            assert_eq!(decoded, envelope);
        }
    }
}
