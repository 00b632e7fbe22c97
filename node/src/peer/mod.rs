//! The node's side of the cluster: the peer transport on its own runtime, Raft messages between
//! shard replicas, and the requests nodes send each other (forwarded writes, status).
//!
//! The transport lives on a small dedicated tokio runtime, so Raft traffic keeps flowing while
//! the HTTP workers are busy, and the raft threads (plain OS threads) can queue messages
//! without an async context.

pub mod hedge;
pub mod serve;

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::Message;
use rushes_cluster::transport::{Inbound, Transport, TransportConfig, TransportError, WireError};
use rushes_cluster::{NodeId, ShardId};
use rushes_config::Config;
use rushes_protocol::codec;
use rushes_protocol::peer::{PeerReply, PeerRequest, PEER_FORMAT};
use rushes_protocol::ApiError;
use tokio::sync::mpsc;

use crate::shard::RaftOutbox;

/// Raft messages and requests queued per peer before senders see `QueueFull`.
const PEER_QUEUE_FRAMES: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cluster.nodes[{position}].raft_addr {addr:?} does not resolve to an address: {detail}")]
    Address { position: usize, addr: String, detail: String },
    #[error("cannot start the peer runtime: {0}")]
    Runtime(String),
    #[error("peer transport: {0}")]
    Transport(#[from] TransportError),
    #[error("cannot read {key} = {path:?}: {detail}")]
    TlsFile { key: &'static str, path: String, detail: String },
    #[error("peer TLS from cluster.tls_*_file: {0}")]
    Tls(#[from] rushes_cluster::transport::TlsError),
}

/// How this node's peers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerSecurity {
    /// Mutual TLS with the cluster's CA; a peer's id is the one its certificate names.
    MutualTls,
    /// `cluster.insecure_peers`: plain TCP, a peer's id taken on trust.
    Insecure,
}

/// Loads the peer TLS configuration named by `cluster.tls_*_file`, if set.
fn peer_tls(config: &Config) -> Result<Option<Arc<rushes_cluster::transport::PeerTls>>, PeerError> {
    let cluster = &config.cluster;
    if cluster.tls_cert_file.is_empty() {
        return Ok(None);
    }
    let read = |key: &'static str, path: &str| {
        std::fs::read(path).map_err(|e| PeerError::TlsFile { key, path: path.to_string(), detail: e.to_string() })
    };
    let ca = read("cluster.tls_ca_file", &cluster.tls_ca_file)?;
    let cert = read("cluster.tls_cert_file", &cluster.tls_cert_file)?;
    let key = read("cluster.tls_key_file", &cluster.tls_key_file)?;
    Ok(Some(Arc::new(rushes_cluster::transport::PeerTls::from_pem(&ca, &cert, &key)?)))
}

/// The running peer transport plus fault injection for the test suites.
pub struct ClusterNet {
    runtime: Option<tokio::runtime::Runtime>,
    pub transport: Transport,
    pub node_id: NodeId,
    /// Nodes this one pretends it cannot reach (fault injection: `POST /v1/debug/partition`).
    isolated: RwLock<HashSet<NodeId>>,
    pub security: PeerSecurity,
    /// `raft.snapshot_transfer_bytes_per_s`: how fast this node fetches a snapshot (0: no limit).
    pub snapshot_transfer_bytes_per_s: u64,
}

impl Drop for ClusterNet {
    fn drop(&mut self) {
        self.transport.shutdown();
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime from async code panics; this never waits.
            runtime.shutdown_background();
        }
    }
}

fn resolve(position: usize, addr: &str) -> Result<SocketAddr, PeerError> {
    let error = |detail: String| PeerError::Address { position, addr: addr.to_string(), detail };
    addr.to_socket_addrs().map_err(|e| error(e.to_string()))?.next().ok_or_else(|| error("no address".to_string()))
}

impl ClusterNet {
    /// Binds this node's raft address and dials every other member. Returns the inbound
    /// channel, to be served by [`ClusterNet::serve`] once the engine exists.
    pub fn start(config: &Config) -> Result<(Arc<ClusterNet>, mpsc::Receiver<Inbound>), PeerError> {
        let node_id = config.node.id;
        let mut listen = None;
        let mut peers = Vec::new();
        for (position, member) in config.cluster.nodes.iter().enumerate() {
            let addr = resolve(position, &member.raft_addr)?;
            if member.id == node_id {
                listen = Some(addr);
            } else {
                peers.push((member.id, addr));
            }
        }
        let listen = listen.ok_or_else(|| PeerError::Address {
            position: 0,
            addr: String::new(),
            detail: format!("node.id {node_id} is not in cluster.nodes"),
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("peer")
            .enable_all()
            .build()
            .map_err(|e| PeerError::Runtime(e.to_string()))?;
        let mut transport_config = TransportConfig::new(config.cluster.cluster_id.clone(), node_id, listen);
        transport_config.max_frame_bytes = config.cluster.max_frame_bytes;
        transport_config.queue_capacity = PEER_QUEUE_FRAMES;
        transport_config.max_inbound_connections = config.cluster.max_inbound_connections;
        transport_config.idle_timeout_ms = config.cluster.peer_idle_timeout_ms;
        transport_config.allowed_peers = Some(rushes_cluster::transport::AllowedPeers::new(config.cluster.nodes.iter().map(|m| m.id)));
        transport_config.tls = peer_tls(config)?;
        let security = if transport_config.tls.is_some() { PeerSecurity::MutualTls } else { PeerSecurity::Insecure };
        if security == PeerSecurity::Insecure {
            tracing::warn!(
                "PEERS ARE NOT AUTHENTICATED (cluster.insecure_peers = true): anyone who reaches {listen} can speak for any node of this cluster; set cluster.tls_ca_file, tls_cert_file and tls_key_file (rushes cluster certs)"
            );
        }
        // Bind on a plain thread: this may be called from async code, where block_on panics.
        let handle = runtime.handle().clone();
        let (transport, inbound) = std::thread::scope(|scope| {
            scope
                .spawn(|| handle.block_on(Transport::bind(transport_config)))
                .join()
                .map_err(|_| PeerError::Runtime("bind panicked".into()))
        })??;
        for (peer, addr) in peers {
            transport.add_peer(peer, addr)?;
        }
        let net = ClusterNet {
            runtime: Some(runtime),
            transport,
            node_id,
            isolated: RwLock::new(HashSet::new()),
            security,
            snapshot_transfer_bytes_per_s: config.raft.snapshot_transfer_bytes_per_s,
        };
        Ok((Arc::new(net), inbound))
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        // `runtime` is only taken in Drop.
        self.runtime.as_ref().map(|r| r.handle()).expect("peer runtime present until drop")
    }

    pub fn is_isolated_from(&self, peer: NodeId) -> bool {
        self.isolated.read().contains(&peer)
    }

    pub fn isolate_from(&self, peers: &[NodeId]) {
        *self.isolated.write() = peers.iter().copied().filter(|p| *p != self.node_id).collect();
    }

    pub fn isolated(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self.isolated.read().iter().copied().collect();
        peers.sort_unstable();
        peers
    }

    /// Sends a request and decodes the reply; every failure is an [`ApiError`] (retryable ones
    /// are `unavailable`).
    pub async fn call(&self, peer: NodeId, request: &PeerRequest, timeout: Duration) -> Result<PeerReply, ApiError> {
        if self.is_isolated_from(peer) {
            return Err(ApiError::unavailable(format!("node {peer} is unreachable (partitioned by fault injection)")).with_retry_after(1));
        }
        let body = codec::encode(PEER_FORMAT, request).map_err(|e| ApiError::internal(e.to_string()))?;
        let reply = self.transport.call(peer, body, timeout).await.map_err(|e| transport_error(peer, e))?;
        codec::decode_received(PEER_FORMAT, &reply).map_err(|e| ApiError::internal(format!("node {peer} sent an unreadable reply: {e}")))
    }
}

/// Why a forwarded write got no reply: whether the peer may have received it decides
/// whether its outcome is known (nothing applied) or not.
#[derive(Debug)]
pub enum WriteCallError {
    /// The request never left this node (no connection, a full queue, refused at the
    /// handshake) or the peer refused it unread (malformed, too large, overloaded): nothing was
    /// carried out.
    NotSent(ApiError),
    /// Sent, then no answer (lost connection, timeout): the peer may have carried it out.
    MaybeDelivered(ApiError),
}

impl ClusterNet {
    /// [`ClusterNet::call`] for a write: says whether a failed request may have been delivered.
    pub async fn call_write(&self, peer: NodeId, request: &PeerRequest, timeout: Duration) -> Result<PeerReply, WriteCallError> {
        if self.is_isolated_from(peer) {
            return Err(WriteCallError::NotSent(
                ApiError::unavailable(format!("node {peer} is unreachable (partitioned by fault injection)")).with_retry_after(1),
            ));
        }
        let body = codec::encode(PEER_FORMAT, request).map_err(|e| WriteCallError::NotSent(ApiError::internal(e.to_string())))?;
        let reply = self.transport.call(peer, body, timeout).await.map_err(|e| {
            let maybe_delivered = matches!(
                e,
                TransportError::Disconnected { .. }
                    | TransportError::Timeout { .. }
                    | TransportError::Io { .. }
                    | TransportError::Frame(_)
                    | TransportError::Protocol { .. }
                    | TransportError::Remote(WireError { code: WireError::NO_RESPONSE | WireError::INTERNAL, .. })
            );
            let error = transport_error(peer, e);
            if maybe_delivered {
                WriteCallError::MaybeDelivered(error)
            } else {
                WriteCallError::NotSent(error)
            }
        })?;
        // An unreadable reply came from a peer that did read the request.
        codec::decode_received(PEER_FORMAT, &reply)
            .map_err(|e| WriteCallError::MaybeDelivered(ApiError::internal(format!("node {peer} sent an unreadable reply: {e}"))))
    }
}

fn transport_error(peer: NodeId, error: TransportError) -> ApiError {
    match error {
        TransportError::Remote(WireError { code: WireError::BAD_REQUEST | WireError::TOO_LARGE, message }) => {
            ApiError::internal(format!("node {peer} refused the request: {message}"))
        }
        other => ApiError::unavailable(format!("node {peer}: {other}; retry")).with_retry_after(1),
    }
}

impl RaftOutbox for ClusterNet {
    fn send(&self, to: NodeId, shard: ShardId, message: Message) -> bool {
        if self.is_isolated_from(to) {
            return false;
        }
        let Ok(bytes) = message.write_to_bytes() else { return false };
        self.transport.send_raft(to, shard, bytes).is_ok()
    }
}

/// Decodes a peer's Raft message (protobuf, size already bounded by the frame limit), once its
/// structure has passed [`rushes_cluster::raft_wire::check_raft_message`]: the protobuf crate
/// would recurse without limit on nested groups (RUSTSEC-2024-0437) and abort the process.
pub fn decode_raft(bytes: &[u8]) -> Option<Message> {
    rushes_cluster::raft_wire::check_raft_message(bytes).ok()?;
    Message::parse_from_bytes(bytes).ok()
}

/// Largest body of a peer request other than a forwarded write (a search plan with its query
/// vectors is the biggest); far below the frame limit.
pub const SMALL_REQUEST_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Decodes a peer's request body. Only a forwarded write may be large (a whole batch); every
/// other request is refused above [`SMALL_REQUEST_BYTES_MAX`] before decoding, and no request
/// may claim more memory than four times its bytes.
pub fn decode_request(body: &[u8]) -> Result<PeerRequest, WireError> {
    // bincode writes the variant's position first: one byte after the format byte.
    const PROPOSE_POSITION: u8 = 0;
    if body.len() > SMALL_REQUEST_BYTES_MAX && body.get(1) != Some(&PROPOSE_POSITION) {
        return Err(WireError::new(
            WireError::TOO_LARGE,
            format!("a {}-byte request; only forwarded writes may exceed {SMALL_REQUEST_BYTES_MAX} bytes", body.len()),
        ));
    }
    codec::decode_received(PEER_FORMAT, body).map_err(|e| WireError::new(WireError::BAD_REQUEST, format!("unreadable request: {e}")))
}

pub fn encode_reply(reply: &PeerReply) -> Result<Vec<u8>, WireError> {
    codec::encode(PEER_FORMAT, reply).map_err(|e| WireError::new(WireError::INTERNAL, e.to_string()))
}
