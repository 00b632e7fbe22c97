//! The node's side of the cluster: the peer transport on its own runtime, Raft messages between
//! shard replicas, and the requests nodes send each other (forwarded writes, status).
//!
//! The transport lives on a small dedicated tokio runtime, so Raft traffic keeps flowing while
//! the HTTP workers are busy, and the raft threads (plain OS threads) can queue messages
//! without an async context.

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
use rushes_protocol::ApiError;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::query::plan::WirePlan;
use crate::search::{GlobalStats, LeafSummary, RankedAssets};
use crate::shard::RaftOutbox;
use crate::storage::store::{ApplyOutcome, RawChunk};

/// Format version of [`PeerRequest`] / [`PeerReply`] bodies.
pub const PEER_FORMAT: u8 = 1;
/// Largest frame between nodes: a forwarded write or a Raft entry holds up to one request body
/// (`limits.max_body_bytes`) as raw and parsed annotations. Snapshots travel in chunks of
/// `raft.snapshot_chunk_bytes` (at most 64 MiB), so a raw store of any size fits.
const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// Raft messages and requests queued per peer before senders see `QueueFull`.
const PEER_QUEUE_FRAMES: usize = 8192;

/// What one node asks another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Propose an encoded `ShardCommand` on `shard` if the receiver leads it, and answer once
    /// it is committed on a quorum and applied.
    Propose {
        shard: ShardId,
        // Bytes, not a sequence of u8 (same encoding, one copy to decode): these are whole batches.
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// The receiver's local replicas (for `GET /v1/cluster`).
    Status,
    /// Search phase one on the receiver's replica of `shard`: every leaf's hits, kept there
    /// under `query` for the next phases; replies with their summaries. `strong` first waits
    /// for a read index.
    SearchHits { query: u64, shard: ShardId, plan: WirePlan, strong: bool },
    /// Phase two with the global statistics: the shard's ranked assets.
    SearchCandidates { query: u64, shard: ShardId, stats: GlobalStats },
    /// Phase three: clips and evidence of the chosen assets (then the session is dropped).
    SearchFinish { query: u64, shard: ShardId, keep: Vec<String> },
    /// Label vocabulary and series names of the receiver's replicas (query understanding on a
    /// node that does not hold every shard).
    Vocabulary,
    /// A read of one asset's data on the receiver's replica.
    AssetRead(AssetRead),
    /// The next chunk of the receiver's raw store of `shard` after `after` (for a replica
    /// installing a snapshot), if the receiver has applied through `min_applied`.
    SnapshotChunk {
        shard: ShardId,
        #[serde(with = "serde_bytes")]
        after: Option<Vec<u8>>,
        min_applied: u64,
    },
    /// Whether the receiver's replica of `shard` holds `word` (a folded token) in dialogue:
    /// query understanding on a node that lacks that shard. Appended last, so the variants
    /// before keep their encoding.
    DialogueWord { word: String, shard: ShardId },
}

/// Reads a node without the asset's shard forwards to a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AssetRead {
    View { asset_id: String },
    RawAnnotation { asset_id: String, annotation_id: String },
    Buckets { asset_id: String, from_ms: Option<u64>, to_ms: Option<u64> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerReply {
    /// The forwarded write is committed on a quorum and applied.
    Applied(ApplyOutcome),
    /// The receiver does not lead the shard; `leader` is who it thinks does.
    NotLeader {
        leader: Option<NodeId>,
    },
    Error(ApiError),
    Status(Vec<ReplicaStatus>),
    Summary(Vec<LeafSummary>),
    Ranked(RankedAssets),
    /// JSON bytes (search results and reads: their API types are JSON-shaped).
    Json(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Raw bytes (a stored annotation exactly as received).
    Raw(#[serde(with = "serde_bytes")] Vec<u8>),
    Vocabulary {
        labels: Vec<(String, Vec<String>)>,
        series: Vec<String>,
    },
    /// A chunk of a raw store, read when the sender had applied through `applied`.
    SnapshotChunk {
        chunk: RawChunk,
        applied: u64,
    },
    /// Reply to `DialogueWord`.
    DialogueWord {
        known: bool,
    },
}

/// One local replica as its node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub shard: ShardId,
    pub node: NodeId,
    pub leader: bool,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub fused_index: u64,
    pub indexed_index: u64,
    pub raw_annotations: u64,
    pub failed: bool,
}

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
