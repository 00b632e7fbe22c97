//! What nodes say to each other: requests, replies and the values they carry. Bodies are encoded
//! with [`crate::codec`] under [`PEER_FORMAT`]. bincode encodes an enum by its variant's position,
//! so variants are only ever appended (the `variant_positions_are_the_format` test pins them).

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Shards are numbered `0..cluster.shards`.
pub type ShardId = u32;
/// Nodes are numbered by the operator (`node.id`); 0 means "none" in Raft.
pub type NodeId = u64;

/// Seed of the stable hash. Changing it moves every asset: it is part of the storage format.
const ASSET_HASH_SEED: u64 = 0x7275_7368_6573_0001;

/// A hash that is the same on every machine, build and Rust version (unlike `DefaultHasher`).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, ASSET_HASH_SEED)
}

/// The shard that owns an asset: `stable_hash(asset_id) mod shard_count`. A whole asset lives
/// on one shard.
pub fn shard_for_asset(asset_id: &str, shard_count: u32) -> ShardId {
    debug_assert!(shard_count > 0, "shard_count must be positive");
    (stable_hash(asset_id.as_bytes()) % u64::from(shard_count.max(1))) as ShardId
}

/// Format version of [`PeerRequest`] / [`PeerReply`] bodies.
pub const PEER_FORMAT: u8 = 1;

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
    /// query understanding on a node that lacks that shard.
    DialogueWord { word: String, shard: ShardId },
    /// The receiver's replicas and actors (for `GET /v1/cluster`); a node of an earlier
    /// version refuses it, and is asked `Status` instead.
    NodeStatus,
    /// Which of these annotations the receiver's replica of `shard` already stores with other
    /// bytes: an ingest checks every shard before proposing anything, so a conflict normally
    /// stores nothing anywhere.
    CheckConflicts { shard: ShardId, probes: Vec<ConflictProbe> },
    /// The next page of raw annotations of the receiver's replica of `shard` matching
    /// `filter`, after `cursor`, about `max_bytes` at most (`GET /v1/export`). A replica that
    /// has applied less than `min_applied` answers a retryable error (a backup reads every
    /// page at or after the index it started from).
    ExportPage { shard: ShardId, filter: ExportFilter, cursor: Option<ExportCursor>, max_bytes: u32, min_applied: u64 },
    /// Assets of the receiver's replica of `shard` holding more than one version of a model.
    SupersededAssets { shard: ShardId },
    /// The committed commands of `shard`'s log in `(after, through]`, about `max_bytes` at most
    /// (a backup's tail: the writes applied while it read the shard).
    LogCommands { shard: ShardId, after: u64, through: u64, max_bytes: u32 },
    /// The cluster map the receiver follows, encoded by `rushes_cluster::membership` (reply
    /// `Raw`). A joining node asks for it until it is a member.
    ClusterMap,
    /// Propose an encoded map command on the metadata group if the receiver leads it; the
    /// reply (`Raw`) is the map once the command is applied, or `NotLeader`.
    MetaPropose {
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// A group's configuration as its leader sees it, and how far `added` has replicated the
    /// log (reply `Raw`: an encoded observation, or `NotLeader`).
    GroupObserve { group: ShardId, added: Option<NodeId> },
    /// A configuration change (encoded) for the group's leader to propose (reply `Raw`, empty).
    GroupChange {
        group: ShardId,
        #[serde(with = "serde_bytes")]
        change: Vec<u8>,
    },
    /// A linearizable read of one asset's data: the receiver's replica first obtains a read
    /// index from the shard's leader (confirmed by a quorum) and waits until it has applied and
    /// indexed through it (`?consistency=strong` on the asset GETs).
    StrongAssetRead(AssetRead),
    /// What the receiver's replica of `shard` offers for search as you type, and how it spells
    /// labels (reply `Completions`). `prefix` is the word being typed and `whole` the whole
    /// typed text (empty when it is one word), both folded as the dialogue index folds
    /// (lower case, accents off); the receiver folds its labels the same way to match them.
    /// At most `limit` dialogue words (most frequent first, only words a live document holds)
    /// and `limit` matching labels (in label order) come back; `labels` (normalized) are
    /// labels whose spellings are wanted whether they match or not (query understanding). A
    /// node of an earlier version cannot decode it: the asker then goes without that shard.
    Completions { shard: ShardId, prefix: String, whole: String, limit: u32, labels: Vec<String> },
}

/// Which raw annotations an export holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportFilter {
    pub asset_id: Option<String>,
    /// Assets whose record names this series (case-insensitive).
    pub series: Option<String>,
    /// Annotations overlapping `[from_ms, to_ms)`.
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// Each asset's record too, as a line `{"asset_record": {"asset_id", ...}}` before its
    /// annotations (a backup; not a valid ingest body then).
    pub records: bool,
}

/// Where an export page ended: the asset, and the last annotation id sent from it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExportCursor {
    pub asset_id: String,
    pub annotation_id: String,
}

/// One annotation of a batch, as a conflict check sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictProbe {
    pub asset_id: String,
    pub annotation_id: String,
    /// xxh3 of the raw bytes the client sent.
    pub raw_hash: u64,
}

impl PeerRequest {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerRequest::Propose { .. } => "propose",
            PeerRequest::Status => "status",
            PeerRequest::SearchHits { .. } => "search_hits",
            PeerRequest::SearchCandidates { .. } => "search_candidates",
            PeerRequest::SearchFinish { .. } => "search_finish",
            PeerRequest::Vocabulary => "vocabulary",
            PeerRequest::AssetRead(_) => "asset_read",
            PeerRequest::SnapshotChunk { .. } => "snapshot_chunk",
            PeerRequest::DialogueWord { .. } => "dialogue_word",
            PeerRequest::NodeStatus => "node_status",
            PeerRequest::CheckConflicts { .. } => "check_conflicts",
            PeerRequest::ExportPage { .. } => "export_page",
            PeerRequest::SupersededAssets { .. } => "superseded_assets",
            PeerRequest::LogCommands { .. } => "log_commands",
            PeerRequest::ClusterMap => "cluster_map",
            PeerRequest::MetaPropose { .. } => "meta_propose",
            PeerRequest::GroupObserve { .. } => "group_observe",
            PeerRequest::GroupChange { .. } => "group_change",
            PeerRequest::StrongAssetRead(_) => "strong_asset_read",
            PeerRequest::Completions { .. } => "completions",
        }
    }
}

/// Reads a node without the asset's shard forwards to a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AssetRead {
    View { asset_id: String },
    RawAnnotation { asset_id: String, annotation_id: String },
    Buckets { asset_id: String, from_ms: Option<u64>, to_ms: Option<u64> },
}

impl AssetRead {
    pub fn asset_id(&self) -> &str {
        match self {
            AssetRead::View { asset_id } | AssetRead::RawAnnotation { asset_id, .. } | AssetRead::Buckets { asset_id, .. } => asset_id,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerReply {
    /// The forwarded write is committed on a quorum and applied.
    Applied(ApplyOutcome),
    /// The receiver does not lead the shard; `leader` is who it thinks does.
    NotLeader {
        leader: Option<NodeId>,
    },
    /// The request failed; the error keeps its code across the hop.
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
    /// Reply to `NodeStatus`: the replicas, and every actor (node-level ones first).
    NodeStatus {
        replicas: Vec<ReplicaStatus>,
        actors: Vec<ActorStatus>,
    },
    /// Reply to `CheckConflicts`: (position among the probes, stored raw bytes) of each probe
    /// whose id is stored with bytes of another hash (the same content spelt otherwise, or a
    /// conflict: the asker compares them as JSON).
    StoredAnnotations {
        stored: Vec<StoredRaw>,
    },
    /// Reply to `ExportPage`: raw annotations (one JSON object each), and where to go on
    /// (`None`: the shard is done).
    ExportPage {
        lines: Vec<serde_bytes::ByteBuf>,
        next: Option<ExportCursor>,
    },
    /// Reply to `SupersededAssets`.
    Assets(Vec<String>),
    /// Reply to `LogCommands`: (index, encoded `ShardCommand`) of each committed entry with a
    /// command, in order, and the last index covered (the next request starts after it).
    LogCommands {
        commands: Vec<(u64, serde_bytes::ByteBuf)>,
        covered_through: u64,
    },
    /// Reply to `Completions`: dialogue words as (folded term, spelling as said, dialogue
    /// seconds holding it), most frequent first; labels as (normalized label, tracks, spellings
    /// with how often each was seen in the seconds read), matching ones first in label order,
    /// then the asked ones the replica holds.
    Completions {
        words: Vec<(String, String, u64)>,
        labels: Vec<(String, Vec<String>, Vec<(String, u64)>)>,
    },
}

/// A stored annotation's raw bytes, for a conflict check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRaw {
    /// Position among the probes.
    pub position: u32,
    #[serde(with = "serde_bytes")]
    pub raw: Vec<u8>,
}

impl PeerReply {
    /// A short name for error messages ("node 2 answered a write with `ranked`").
    pub fn kind(&self) -> &'static str {
        match self {
            PeerReply::Applied(_) => "applied",
            PeerReply::NotLeader { .. } => "not_leader",
            PeerReply::Error(_) => "error",
            PeerReply::Status(_) => "status",
            PeerReply::Summary(_) => "summary",
            PeerReply::Ranked(_) => "ranked",
            PeerReply::Json(_) => "json",
            PeerReply::Raw(_) => "raw",
            PeerReply::Vocabulary { .. } => "vocabulary",
            PeerReply::SnapshotChunk { .. } => "snapshot_chunk",
            PeerReply::DialogueWord { .. } => "dialogue_word",
            PeerReply::NodeStatus { .. } => "node_status",
            PeerReply::StoredAnnotations { .. } => "stored_annotations",
            PeerReply::ExportPage { .. } => "export_page",
            PeerReply::Assets(_) => "assets",
            PeerReply::LogCommands { .. } => "log_commands",
            PeerReply::Completions { .. } => "completions",
        }
    }
}

/// Result of applying one ingest command (also a forwarded write's reply between nodes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    Applied {
        created: usize,
        duplicates: usize,
    },
    /// Item `item` reuses an existing id with different content: nothing was stored.
    Conflict {
        item: usize,
        annotation_id: String,
    },
    /// A delete removed this many raw annotations (0: nothing was stored).
    Deleted {
        annotations: usize,
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

/// One actor of a node, as the actor map of `GET /v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorStatus {
    /// `raft`, `fusion`, `index` (per shard replica), `ingest_router`, `coordinator` (per node).
    pub actor: String,
    /// (No `skip_serializing_if` on wire types: bincode would then read fields out of place.)
    pub shard: Option<ShardId>,
    /// The thread (actix arbiter) it runs on.
    pub thread: String,
    /// `starting`, `idle`, `busy`, `restarting`, `failed` or `stopped`.
    pub state: String,
    pub mailbox_depth: u64,
    pub mailbox_capacity: u64,
    pub messages_handled: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
}

/// One piece of a raw store on its way to a replica installing a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawChunk {
    #[serde(with = "byte_pairs")]
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// No more chunks after this one.
    pub done: bool,
}

/// Key/value pairs with each side serialized as bytes: the encoding of a sequence of u8 pairs,
/// decoded with one copy per side instead of one call per byte (chunks are 4 MiB).
mod byte_pairs {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    pub fn serialize<S: Serializer>(pairs: &[(Vec<u8>, Vec<u8>)], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(pairs.iter().map(|(key, value)| (Bytes::new(key), Bytes::new(value))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Pairs, D::Error> {
        let pairs = Vec::<(ByteBuf, ByteBuf)>::deserialize(deserializer)?;
        Ok(pairs.into_iter().map(|(key, value)| (key.into_vec(), value.into_vec())).collect())
    }
}

/// A search plan as sent to another node's replica of a shard: JSON (the plan's tagged enums
/// need a self-describing format) plus what the JSON form leaves out: the query vectors and the
/// cursor. Stems are recomputed on arrival from each clause's text and languages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WirePlan {
    /// Bytes, not a sequence of u8: the same encoding, decoded with one copy.
    #[serde(with = "serde_bytes")]
    pub json: Vec<u8>,
    /// One per leaf (empty for leaves without a vector).
    pub vectors: Vec<Vec<f32>>,
    pub cursor: Option<(f64, String)>,
}

/// What the coordinator needs of one leaf on one shard after phase one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeafSummary {
    pub min: Option<f32>,
    pub max: Option<f32>,
    /// Best raw scores, descending, at most `rank_window` (RRF only).
    pub top: Vec<f32>,
    /// Vector leaves: best similarities, descending, at most k.
    pub similarities: Vec<f64>,
}

/// Statistics of each leaf over all shards, sent to every shard for phase two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalStats {
    pub leaves: Vec<LeafStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeafStats {
    pub min: f32,
    pub max: f32,
    pub top: Vec<f32>,
    /// Vector leaves: hits below this similarity are dropped (the global k-th, or min_similarity).
    pub min_similarity: Option<f64>,
}

/// What the coordinator needs of a shard's phase two: its ranked assets and counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankedAssets {
    /// (score, asset id), best first.
    pub ranked: Vec<(f64, String)>,
    pub total_assets: usize,
    pub remaining_assets: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// bincode writes an enum's variant position first (a u32 varint: one byte below 251).
    fn position_of<T: Serialize>(value: &T) -> u8 {
        codec::encode(PEER_FORMAT, value).expect("encodes")[1]
    }

    #[test]
    fn variant_positions_are_the_format() {
        let plan = WirePlan { json: vec![], vectors: vec![], cursor: None };
        let requests = [
            PeerRequest::Propose { shard: 0, command: vec![] },
            PeerRequest::Status,
            PeerRequest::SearchHits { query: 0, shard: 0, plan, strong: false },
            PeerRequest::SearchCandidates { query: 0, shard: 0, stats: GlobalStats::default() },
            PeerRequest::SearchFinish { query: 0, shard: 0, keep: vec![] },
            PeerRequest::Vocabulary,
            PeerRequest::AssetRead(AssetRead::View { asset_id: String::new() }),
            PeerRequest::SnapshotChunk { shard: 0, after: None, min_applied: 0 },
            PeerRequest::DialogueWord { word: String::new(), shard: 0 },
            PeerRequest::NodeStatus,
            PeerRequest::CheckConflicts { shard: 0, probes: vec![] },
            PeerRequest::ExportPage { shard: 0, filter: ExportFilter::default(), cursor: None, max_bytes: 0, min_applied: 0 },
            PeerRequest::SupersededAssets { shard: 0 },
            PeerRequest::LogCommands { shard: 0, after: 0, through: 0, max_bytes: 0 },
            PeerRequest::ClusterMap,
            PeerRequest::MetaPropose { command: vec![] },
            PeerRequest::GroupObserve { group: 0, added: None },
            PeerRequest::GroupChange { group: 0, change: vec![] },
            PeerRequest::StrongAssetRead(AssetRead::View { asset_id: String::new() }),
            PeerRequest::Completions { shard: 0, prefix: String::new(), whole: String::new(), limit: 0, labels: vec![] },
        ];
        for (position, request) in requests.iter().enumerate() {
            assert_eq!(position_of(request) as usize, position, "{} moved: append new variants, never reorder", request.kind());
        }
        let replies = [
            PeerReply::Applied(ApplyOutcome::Applied { created: 0, duplicates: 0 }),
            PeerReply::NotLeader { leader: None },
            PeerReply::Error(ApiError::internal("x")),
            PeerReply::Status(vec![]),
            PeerReply::Summary(vec![]),
            PeerReply::Ranked(RankedAssets::default()),
            PeerReply::Json(vec![]),
            PeerReply::Raw(vec![]),
            PeerReply::Vocabulary { labels: vec![], series: vec![] },
            PeerReply::SnapshotChunk { chunk: RawChunk { pairs: vec![], done: true }, applied: 0 },
            PeerReply::DialogueWord { known: false },
            PeerReply::NodeStatus { replicas: vec![], actors: vec![] },
            PeerReply::StoredAnnotations { stored: vec![] },
            PeerReply::ExportPage { lines: vec![], next: None },
            PeerReply::Assets(vec![]),
            PeerReply::LogCommands { commands: vec![], covered_through: 0 },
            PeerReply::Completions { words: vec![], labels: vec![] },
        ];
        for (position, reply) in replies.iter().enumerate() {
            assert_eq!(position_of(reply) as usize, position, "{} moved: append new variants, never reorder", reply.kind());
        }
    }

    #[test]
    fn raw_chunks_encode_as_plain_pairs_and_round_trip() {
        #[derive(Serialize)]
        struct Plain {
            pairs: Vec<(Vec<u8>, Vec<u8>)>,
            done: bool,
        }
        let pairs = vec![(b"e/a\0x".to_vec(), vec![1, 2, 3]), (vec![], vec![0; 300])];
        let chunk = RawChunk { pairs: pairs.clone(), done: true };
        let bytes = codec::encode(1, &chunk).expect("encodes");
        assert_eq!(bytes, codec::encode(1, &Plain { pairs, done: true }).expect("encodes"));
        assert_eq!(codec::decode::<RawChunk>(1, &bytes).expect("decodes"), chunk);
    }
}
