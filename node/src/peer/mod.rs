//! The node's side of the cluster: the peer transport on its own runtime, Raft messages between
//! shard replicas, and the requests nodes send each other (forwarded writes, status).
//!
//! The transport lives on a small dedicated tokio runtime, so Raft traffic keeps flowing while
//! the HTTP workers are busy, and the raft threads (plain OS threads) can queue messages
//! without an async context.

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

/// Largest frame between nodes: a forwarded write or a Raft entry holds up to one request body
/// (`limits.max_body_bytes`) as raw and parsed annotations. Snapshots travel in chunks of
/// `raft.snapshot_chunk_bytes` (at most 64 MiB), so a raw store of any size fits.
const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
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
}

/// The running peer transport plus fault injection for the test suites.
pub struct ClusterNet {
    runtime: Option<tokio::runtime::Runtime>,
    pub transport: Transport,
    pub node_id: NodeId,
    /// Nodes this one pretends it cannot reach (fault injection: `POST /v1/debug/partition`).
    isolated: RwLock<HashSet<NodeId>>,
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
        transport_config.max_frame_bytes = MAX_FRAME_BYTES;
        transport_config.queue_capacity = PEER_QUEUE_FRAMES;
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
        let net = ClusterNet { runtime: Some(runtime), transport, node_id, isolated: RwLock::new(HashSet::new()) };
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
        codec::decode(PEER_FORMAT, &reply).map_err(|e| ApiError::internal(format!("node {peer} sent an unreadable reply: {e}")))
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

/// Decodes a peer's Raft message (protobuf, size already bounded by the frame limit).
pub fn decode_raft(bytes: &[u8]) -> Option<Message> {
    Message::parse_from_bytes(bytes).ok()
}

/// Decodes a peer's request body.
pub fn decode_request(body: &[u8]) -> Result<PeerRequest, WireError> {
    codec::decode(PEER_FORMAT, body).map_err(|e| WireError::new(WireError::BAD_REQUEST, format!("unreadable request: {e}")))
}

pub fn encode_reply(reply: &PeerReply) -> Result<Vec<u8>, WireError> {
    codec::encode(PEER_FORMAT, reply).map_err(|e| WireError::new(WireError::INTERNAL, e.to_string()))
}
