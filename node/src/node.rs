//! The node's engine: its shards, ingest routing and the search coordinator. HTTP handlers and
//! the CLI call into this; it knows nothing about HTTP.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rushes_cluster::{NodeId, RaftSettings, ShardId, ShardMap};
use rushes_config::{Config, Metric, Quantization};
use rushes_protocol::codec;
use rushes_protocol::model::{same_raw_content, IngestItem, ShardCommand, StoredAnnotation, StoredAsset, SHARD_COMMAND_FORMAT};
use rushes_protocol::validate::{validate_asset_id, IngestLimits, ParsedItem, VectorSpaceSpec as SpaceLimit};
use rushes_protocol::{
    ApiError, AssetHits, AssetRecord, BucketAnnotationView, BucketView, BucketsReply, ErrorCode, IngestReply, SearchRequest,
    SearchResponse, ShardCounts,
};
use serde_json::json;

use crate::metrics::Metrics;
use crate::peer::{AssetRead, ClusterNet, PeerReply, PeerRequest, ReplicaStatus};
use crate::query::embedder::Embedder;
use crate::search::{self, Plan, SearchLimits, SpaceInfo};
use crate::shard::{RaftOutbox, Shard, ShardError, ShardOptions, SnapshotData, NOT_LEADER_PREFIX};
use crate::storage::index::{VectorMetric, VectorQuantization, VectorSpaceSpec};
use crate::storage::store::ApplyOutcome;

/// Most buckets one `/buckets` request returns (one hour at the default bucket size).
pub const MAX_BUCKETS_PER_REQUEST: u64 = 3600;

pub struct Engine {
    pub config: Config,
    /// This node's replicas, in shard order.
    pub shards: Vec<Arc<Shard>>,
    /// Position in `shards` of each shard id this node holds.
    local_positions: Vec<Option<usize>>,
    /// Every shard's replicas (identical on every node).
    pub shard_map: ShardMap,
    /// The peer transport; `None` on a single node.
    pub net: Option<Arc<ClusterNet>>,
    pub metrics: Arc<Metrics>,
    pub ingest_limits: IngestLimits,
    pub search_limits: SearchLimits,
    search_slots: Arc<tokio::sync::Semaphore>,
    pub search_defaults: search::SearchDefaults,
    pub embedder: Option<Box<dyn Embedder>>,
    series_cache: parking_lot::Mutex<(Option<Instant>, Vec<String>)>,
    /// Folded words some shard this node lacks holds in dialogue → when that was learned.
    remote_dialogue_words: parking_lot::Mutex<HashMap<String, Instant>>,
    /// Suggest's top moments per completed query, with the data version they were computed at.
    /// Every keystroke of "J", "Jo", "Joe" completes to the same query: search it once.
    suggest_moments: parking_lot::Mutex<HashMap<String, (u64, Vec<AssetHits>)>>,
    /// Vocabulary and series names of shards held by other nodes: (refreshed at, labels, series).
    remote_vocabulary: parking_lot::Mutex<(Option<Instant>, BTreeMap<String, Vec<String>>, Vec<String>)>,
    /// Peers' searches between their phases, by (query id, shard).
    remote_searches: parking_lot::Mutex<HashMap<(u64, ShardId), RemoteSearch>>,
    /// The data version whose label moments are all cached (see `warm_suggest_moments`).
    pub suggest_warmed_version: std::sync::atomic::AtomicU64,
    pub started: Instant,
}

/// Most completed queries whose moments are kept (the map is emptied when full).
const SUGGEST_MOMENTS_CACHE_ENTRIES: usize = 1024;
/// Nearest scenes the embedded words of a suggestion's moments search asks for. A full `q`
/// asks for `limits.max_vector_k` (every matching scene, for whole clips); five preview moments
/// need only the nearest, and 10,000 neighbours cost most of a keystroke's 30 ms at 500 hours.
const SUGGEST_SEMANTIC_K: usize = 200;
/// Labels whose suggest moments are computed ahead of keystrokes after the data changes.
pub const SUGGEST_WARM_LABELS_MAX: usize = 256;
const SUGGEST_WARM_CHECK: Duration = Duration::from_secs(1);
/// A remote search phase one that has not answered after this is also sent to another replica.
const HEDGE_AFTER: Duration = Duration::from_millis(150);
/// A replica that failed fast (not connected) is asked again after this pause, for at most
/// [`REPLICA_RETRY_WINDOW`]: long enough to ride out a reconnect, short enough that a shard
/// whose replicas are all down is reported failed quickly.
const REPLICA_RETRY_PAUSE: Duration = Duration::from_millis(250);
const REPLICA_RETRY_WINDOW: Duration = Duration::from_secs(3);
/// Peers' searches kept between their phases on this node.
const REMOTE_SEARCHES_MAX: usize = 64;
/// Deadline of one snapshot chunk request (a chunk is at most `raft.snapshot_chunk_bytes`, 64 MiB).
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one forwarded write before routing again.
const FORWARD_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of a status request to a peer (`GET /v1/cluster`).
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// The cluster's shard map from config: the listed members, or this node alone.
pub fn shard_map(config: &Config) -> Result<ShardMap, ShardError> {
    let nodes: Vec<NodeId> =
        if config.cluster.nodes.is_empty() { vec![config.node.id] } else { config.cluster.nodes.iter().map(|n| n.id).collect() };
    let replication_factor = if config.cluster.nodes.is_empty() { 1 } else { config.cluster.replication_factor };
    ShardMap::new(config.cluster.shards, &nodes, replication_factor).map_err(|e| ShardError::Config(e.to_string()))
}

pub fn shard_options(config: &Config) -> ShardOptions {
    let replicas = match shard_map(config) {
        Ok(map) => (0..map.shard_count()).map(|shard| (shard, map.replicas(shard).to_vec())).collect(),
        Err(_) => BTreeMap::new(),
    };
    ShardOptions {
        node_id: config.node.id,
        replicas,
        raft: RaftSettings {
            election_ticks: config.raft.election_ticks,
            heartbeat_ticks: config.raft.heartbeat_ticks,
            max_size_per_msg_bytes: config.raft.max_size_per_msg_bytes,
            max_inflight_msgs: config.raft.max_inflight_msgs,
        },
        tick_interval_ms: config.raft.tick_interval_ms,
        proposal_queue_depth: config.limits.ingest_queue_depth,
        unindexed_entries_max: config.limits.unindexed_entries_max,
        unindexed_annotations_max: config.limits.unindexed_annotations_max,
        group_commit_max_requests: config.raft.group_commit_max_requests,
        log_retain_entries: config.raft.log_retain_entries,
        snapshot_log_entries: config.raft.snapshot_log_entries,
        compaction_interval_ms: config.raft.compaction_interval_ms,
        bucket_ms: config.fusion.bucket_ms,
        fusion_batch_entries_max: config.fusion.batch_entries_max as u64,
        commit_interval_ms: config.index.commit_interval_ms,
        writer_heap_bytes: config.index.writer_heap_bytes,
        vector_spaces: config
            .vector_spaces
            .iter()
            .map(|s| VectorSpaceSpec {
                name: s.name.clone(),
                dimensions: s.dimensions,
                metric: match s.metric {
                    Metric::Cosine => VectorMetric::Cosine,
                    Metric::L2 => VectorMetric::L2,
                    Metric::Ip => VectorMetric::InnerProduct,
                },
                quantization: match s.quantization {
                    Quantization::F32 => VectorQuantization::F32,
                    Quantization::F16 => VectorQuantization::F16,
                    Quantization::I8 => VectorQuantization::I8,
                },
                connectivity: s.connectivity,
                expansion_add: s.expansion_add,
                expansion_search: s.expansion_search,
            })
            .collect(),
    }
}

impl Engine {
    pub fn open(config: Config) -> Result<Arc<Engine>, ShardError> {
        Engine::open_with_demo_seed(config, rushes_sample::GenConfig::default().seed)
    }

    /// `demo_seed`: the generated season the demo embedder (`[embedder] url = "demo"`) knows.
    pub fn open_with_demo_seed(config: Config, demo_seed: u64) -> Result<Arc<Engine>, ShardError> {
        let metrics = Arc::new(Metrics::new());
        let options = shard_options(&config);
        let shard_map = shard_map(&config)?;
        let (net, inbound) = if config.cluster.nodes.is_empty() {
            (None, None)
        } else {
            let (net, inbound) = ClusterNet::start(&config).map_err(|e| ShardError::Config(e.to_string()))?;
            (Some(net), Some(inbound))
        };
        let outbox: Option<Arc<dyn RaftOutbox>> = net.clone().map(|n| n as Arc<dyn RaftOutbox>);
        let mut shards = Vec::new();
        let mut local_positions = vec![None; config.cluster.shards as usize];
        for id in shard_map.shards_on(config.node.id) {
            local_positions[id as usize] = Some(shards.len());
            shards.push(Shard::open(&config.node.data_dir, id, &options, metrics.clone(), outbox.clone())?);
        }
        let limits = &config.limits;
        let ingest_limits = IngestLimits {
            max_batch_items: limits.max_batch_items,
            max_id_bytes: limits.max_id_bytes,
            max_asset_id_bytes: limits.max_asset_id_bytes,
            max_name_bytes: limits.max_name_bytes,
            max_label_bytes: limits.max_label_bytes,
            max_text_bytes: limits.max_text_bytes,
            max_interval_ms: limits.max_interval_ms,
            max_time_ms: limits.max_time_ms,
            vector_spaces: config.vector_spaces.iter().map(|s| SpaceLimit { name: s.name.clone(), dimensions: s.dimensions }).collect(),
        };
        let search_limits = SearchLimits {
            max_clauses: limits.max_clauses,
            max_per_asset: limits.max_per_asset,
            max_limit: limits.max_limit,
            max_query_bytes: limits.max_query_bytes,
            max_vector_k: limits.max_vector_k,
            vector_spaces: options
                .vector_spaces
                .iter()
                .map(|s| SpaceInfo { name: s.name.clone(), dimensions: s.dimensions, metric: s.metric })
                .collect(),
        };
        let search_slots = Arc::new(tokio::sync::Semaphore::new(limits.search_queue_depth));
        let search_defaults = search::SearchDefaults {
            fusion: match config.search.fusion {
                rushes_config::FusionMethod::Weighted => rushes_protocol::FusionMethod::Weighted,
                rushes_config::FusionMethod::Rrf => rushes_protocol::FusionMethod::Rrf,
            },
            rank_constant: config.search.rank_constant,
            rank_window: config.search.rank_window,
            exact_vector_max_candidates: config.search.exact_vector_max_candidates,
        };
        let embedder = match config.vector_spaces.iter().find(|s| s.name == config.embedder.space) {
            Some(space) => crate::query::embedder::from_config(&config.embedder, space.dimensions, demo_seed)
                .map_err(|e| ShardError::Config(format!("embedder: {e}")))?,
            None => None,
        };
        let engine = Arc::new(Engine {
            config,
            shards,
            local_positions,
            shard_map,
            net: net.clone(),
            metrics,
            ingest_limits,
            search_limits,
            search_slots,
            search_defaults,
            embedder,
            series_cache: parking_lot::Mutex::new((None, Vec::new())),
            remote_dialogue_words: parking_lot::Mutex::new(HashMap::new()),
            suggest_moments: parking_lot::Mutex::new(HashMap::new()),
            suggest_warmed_version: std::sync::atomic::AtomicU64::new(u64::MAX),
            remote_searches: parking_lot::Mutex::new(HashMap::new()),
            remote_vocabulary: parking_lot::Mutex::new((None, BTreeMap::new(), Vec::new())),
            started: Instant::now(),
        });
        if let (Some(net), Some(inbound)) = (net, inbound) {
            net.runtime().spawn(serve_peers(Arc::downgrade(&engine), inbound));
        }
        Ok(engine)
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node.id
    }

    /// This node's replica of `shard`, if it holds one.
    pub fn local_shard(&self, shard: ShardId) -> Option<&Arc<Shard>> {
        self.local_positions.get(shard as usize).copied().flatten().map(|position| &self.shards[position])
    }

    /// The local replica of the asset's shard, or a retryable error naming the nodes that hold it.
    pub fn shard_of(&self, asset_id: &str) -> Result<&Arc<Shard>, ApiError> {
        let shard = self.shard_map.shard_for_asset(asset_id);
        self.local_shard(shard).ok_or_else(|| {
            ApiError::unavailable(format!(
                "asset {asset_id:?} lives on shard {shard}, which this node does not hold; ask one of nodes {:?}",
                self.shard_map.replicas(shard)
            ))
        })
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.limits.request_timeout_ms)
    }

    /// Splits a batch into one encoded command per shard, after removing identical repeats
    /// and refusing ids that already exist with other content.
    fn prepare_ingest(&self, items: Vec<ParsedItem>) -> Result<PreparedIngest, ApiError> {
        // In-batch duplicates: identical ones collapse, different content under one id is a conflict.
        let mut first_seen: HashMap<(String, String), usize> = HashMap::with_capacity(items.len());
        let mut by_shard: BTreeMap<ShardId, (Vec<IngestItem>, Vec<usize>)> = BTreeMap::new();
        let mut batch_duplicates = 0;
        let mut kept: Vec<(usize, IngestItem)> = Vec::with_capacity(items.len());
        for (position, item) in items.into_iter().enumerate() {
            let key = (item.annotation.asset_id.clone(), item.annotation.id.clone());
            let (annotation, vector) = StoredAnnotation::from_validated(item.annotation);
            let ingest_item = IngestItem { raw_json: item.raw_json, annotation, vector };
            if let Some(&kept_index) = first_seen.get(&key) {
                let (earlier, previous) = &kept[kept_index];
                let earlier = *earlier;
                if !same_raw_content(&previous.raw_json, &ingest_item.raw_json) {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!("id {:?} appears twice in this batch with different content (items {earlier} and {position})", key.1),
                    )
                    .with_item(position)
                    .with_field("id"));
                }
                batch_duplicates += 1;
                continue;
            }
            first_seen.insert(key, kept.len());
            kept.push((position, ingest_item));
        }
        // Check stored ids before proposing, so a conflict normally stores nothing anywhere.
        // The shard re-checks when applying (authoritative, for concurrent writers).
        for (position, item) in kept {
            let shard_id = self.shard_map.shard_for_asset(&item.annotation.asset_id);
            // Only a local replica can be checked here; the leader's apply is authoritative.
            if let Some(shard) = self.local_shard(shard_id) {
                let existing_raw = shard
                    .store
                    .raw_annotation(&item.annotation.asset_id, &item.annotation.id)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                if existing_raw.is_some_and(|raw| !same_raw_content(&raw, &item.raw_json)) {
                    return Err(conflict(position, &item.annotation.id));
                }
            }
            let entry = by_shard.entry(shard_id).or_default();
            entry.0.push(item);
            entry.1.push(position);
        }
        let mut commands = Vec::with_capacity(by_shard.len());
        for (shard_index, (items, positions)) in by_shard {
            let bytes =
                codec::encode(SHARD_COMMAND_FORMAT, &ShardCommand::Ingest { items }).map_err(|e| ApiError::internal(e.to_string()))?;
            commands.push((shard_index, bytes, positions));
        }
        Ok(PreparedIngest { commands, batch_duplicates })
    }

    /// Stores a validated batch: replies once every annotation is committed and durable.
    pub async fn ingest(self: &Arc<Self>, items: Vec<ParsedItem>) -> Result<IngestReply, ApiError> {
        let started = Instant::now();
        let total = items.len();
        // Deduplication, conflict pre-checks (sled reads) and encoding are blocking work.
        let engine = self.clone();
        let prepared = tokio::task::spawn_blocking(move || engine.prepare_ingest(items))
            .await
            .map_err(|e| ApiError::internal(format!("ingest preparation failed: {e}")))??;
        let batch_duplicates = prepared.batch_duplicates;
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        // Every shard's part goes to its leader at once; the reply waits for all of them.
        let mut pending = Vec::with_capacity(prepared.commands.len());
        for (shard_id, command, positions) in prepared.commands {
            let engine = self.clone();
            pending.push((tokio::spawn(async move { engine.propose_routed(shard_id, command, deadline).await }), positions));
        }
        let mut created = 0;
        let mut duplicates = batch_duplicates;
        let mut first_error: Option<ApiError> = None;
        for (task, positions) in pending {
            let outcome = task.await.unwrap_or_else(|e| Err(ApiError::internal(format!("routing a write failed: {e}"))));
            match outcome {
                Ok(ApplyOutcome::Applied { created: c, duplicates: d }) => {
                    created += c;
                    duplicates += d;
                }
                Ok(ApplyOutcome::Conflict { item, annotation_id }) => {
                    first_error.get_or_insert(conflict(positions.get(item).copied().unwrap_or(item), &annotation_id));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            self.metrics.ingest_requests.with_label_values(&[error.code.as_str()]).inc();
            return Err(error);
        }
        self.metrics.ingest_requests.with_label_values(&["ok"]).inc();
        self.metrics.ingest_annotations.inc_by(total as u64);
        Ok(IngestReply { accepted: total, created, duplicates, took_ms: started.elapsed().as_millis() as u64 })
    }

    pub async fn upsert_asset(self: &Arc<Self>, asset_id: &str, record: AssetRecord) -> Result<(), ApiError> {
        validate_asset_id(asset_id, self.ingest_limits.max_asset_id_bytes)
            .map_err(|m| ApiError::field("asset_id", format!("asset_id {m}")))?;
        validate_asset_record(&record, self.config.limits.max_time_ms)?;
        let shard = self.shard_map.shard_for_asset(asset_id);
        let command = codec::encode(
            SHARD_COMMAND_FORMAT,
            &ShardCommand::UpsertAsset { asset_id: asset_id.to_string(), record: StoredAsset::from(record) },
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        self.propose_routed(shard, command, deadline).await.map(|_| ())
    }

    /// Proposes an encoded command on `shard` through its leader (local or forwarded) and
    /// waits until it is committed on a quorum and applied. Follows leader hints and waits out
    /// elections until `deadline` (the request timeout); then a retryable 503. Re-proposing
    /// after an unclear failure is safe: applying a command twice is a no-op.
    pub async fn propose_routed(
        self: &Arc<Self>,
        shard: ShardId,
        command: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Result<ApplyOutcome, ApiError> {
        let leader_deadline = deadline;
        let replicas = self.shard_map.replicas(shard).to_vec();
        let mut hint: Option<NodeId> = None;
        let mut next_replica = 0usize;
        let mut pause = Duration::from_millis(10);
        let mut last_error = None;
        loop {
            let local = self.local_shard(shard).cloned();
            let target = hint.or_else(|| local.as_ref().and_then(|s| s.leader()));
            let attempt = match (target, &local) {
                (Some(node), Some(replica)) if node == self.node_id() => self.propose_local(replica, command.clone(), deadline).await,
                (Some(node), _) if node != self.node_id() => self.forward_propose(node, shard, command.clone(), deadline).await,
                // A node without a replica asks the replicas in turn; they answer with hints.
                (None, None) if !replicas.is_empty() => {
                    let node = replicas[next_replica % replicas.len()];
                    next_replica += 1;
                    self.forward_propose(node, shard, command.clone(), deadline).await
                }
                _ => Ok(Routed::NotLeader(None)),
            };
            match attempt {
                Ok(Routed::Done(outcome)) => return Ok(outcome),
                Ok(Routed::NotLeader(new_hint)) => hint = new_hint.filter(|h| Some(*h) != target),
                Err(e) if e.code.is_retryable() && e.code != ErrorCode::Overloaded => {
                    hint = None;
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
            let now = tokio::time::Instant::now();
            if now + pause >= leader_deadline {
                let detail = last_error.map(|e| format!(" (last error: {})", e.message)).unwrap_or_default();
                return Err(ApiError::unavailable(format!(
                    "shard {shard} has no leader this node can reach{detail}; nothing was acknowledged, retry the same batch"
                ))
                .with_retry_after(1));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn propose_local(&self, replica: &Shard, command: Vec<u8>, deadline: tokio::time::Instant) -> Result<Routed, ApiError> {
        let receiver = replica.propose_encoded(command)?;
        match tokio::time::timeout_at(deadline, receiver).await {
            Err(_) => {
                Err(ApiError::new(ErrorCode::Timeout, "the write was not confirmed in time; retry the same batch (ids are idempotent)")
                    .with_retry_after(1))
            }
            Ok(Err(_)) => {
                Err(ApiError::unavailable("the shard stopped before confirming the write; retry the same batch").with_retry_after(1))
            }
            Ok(Ok(Err(e))) if is_not_leader(&e) => Ok(Routed::NotLeader(replica.leader())),
            Ok(Ok(result)) => result.map(Routed::Done),
        }
    }

    async fn forward_propose(
        &self,
        node: NodeId,
        shard: ShardId,
        command: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Result<Routed, ApiError> {
        let Some(net) = &self.net else { return Ok(Routed::NotLeader(None)) };
        // One attempt never uses the whole budget: a paused or cut-off leader is replaced by an
        // election meanwhile, and the retry (a no-op if the first one did commit) finds it.
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now()).min(FORWARD_ATTEMPT_TIMEOUT);
        match net.call(node, &PeerRequest::Propose { shard, command }, timeout).await? {
            PeerReply::Applied(outcome) => Ok(Routed::Done(outcome)),
            PeerReply::NotLeader { leader } => Ok(Routed::NotLeader(leader)),
            PeerReply::Error(e) => Err(e),
            other => Err(ApiError::internal(format!("node {node} answered a write with {other:?}"))),
        }
    }

    /// A peer's forwarded write: proposed here only if this node leads the shard.
    pub async fn handle_forwarded_propose(&self, shard: ShardId, command: Vec<u8>) -> PeerReply {
        let Some(replica) = self.local_shard(shard) else { return PeerReply::NotLeader { leader: None } };
        if !replica.is_leader() {
            return PeerReply::NotLeader { leader: replica.leader() };
        }
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        match self.propose_local(replica, command, deadline).await {
            Ok(Routed::Done(outcome)) => PeerReply::Applied(outcome),
            Ok(Routed::NotLeader(leader)) => PeerReply::NotLeader { leader },
            Err(e) => PeerReply::Error(e),
        }
    }

    /// This node's replicas, as peers and `/v1/cluster` report them.
    pub fn local_replicas(&self) -> Vec<ReplicaStatus> {
        self.shards
            .iter()
            .map(|s| {
                let p = &s.progress;
                ReplicaStatus {
                    shard: s.id,
                    node: self.node_id(),
                    leader: p.is_leader.load(Ordering::Acquire),
                    leader_id: s.leader(),
                    term: p.term.load(Ordering::Acquire),
                    commit_index: p.commit.load(Ordering::Acquire),
                    applied_index: p.applied.load(Ordering::Acquire),
                    fused_index: p.fused.load(Ordering::Acquire),
                    indexed_index: p.indexed.load(Ordering::Acquire),
                    raw_annotations: s.store.raw_count() as u64,
                    failed: p.failed.load(Ordering::Acquire),
                }
            })
            .collect()
    }

    pub fn asset_view(&self, asset_id: &str) -> Result<serde_json::Value, ApiError> {
        let store = &self.shard_of(asset_id)?.store;
        let internal = |e: crate::storage::store::StoreError| ApiError::internal(e.to_string());
        let record = store.asset_record(asset_id).map_err(internal)?;
        let counts = store.track_counts(asset_id).map_err(internal)?;
        if record.is_none() && counts.is_empty() {
            return Err(ApiError::new(ErrorCode::NotFound, format!("asset {asset_id:?} has no record and no annotations")));
        }
        let record = AssetRecord::from(record.unwrap_or_default());
        let mut body = serde_json::to_value(&record).map_err(|e| ApiError::internal(e.to_string()))?;
        body["asset_id"] = json!(asset_id);
        body["annotations"] = json!({ "total": counts.values().sum::<u64>(), "by_track": counts });
        Ok(body)
    }

    pub fn raw_annotation(&self, asset_id: &str, annotation_id: &str) -> Result<Vec<u8>, ApiError> {
        self.shard_of(asset_id)?
            .store
            .raw_annotation(asset_id, annotation_id)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no annotation {annotation_id:?} on asset {asset_id:?}")))
    }

    pub fn buckets(&self, asset_id: &str, from_ms: Option<u64>, to_ms: Option<u64>) -> Result<BucketsReply, ApiError> {
        let bucket_ms = self.config.fusion.bucket_ms;
        let from_ms = from_ms.unwrap_or(0);
        let to_ms = to_ms.unwrap_or(from_ms.saturating_add(MAX_BUCKETS_PER_REQUEST * bucket_ms));
        if to_ms <= from_ms {
            return Err(ApiError::field("to_ms", format!("to_ms ({to_ms}) must be greater than from_ms ({from_ms})")));
        }
        let (first, end) = (from_ms / bucket_ms, to_ms.div_ceil(bucket_ms));
        if end - first > MAX_BUCKETS_PER_REQUEST {
            return Err(ApiError::field(
                "to_ms",
                format!(
                    "the range covers {} buckets; ask for at most {MAX_BUCKETS_PER_REQUEST} per request (page with from_ms)",
                    end - first
                ),
            ));
        }
        let buckets = self.shard_of(asset_id)?.store.bucket_range(asset_id, first, end).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(BucketsReply {
            asset_id: asset_id.to_string(),
            bucket_ms,
            buckets: buckets
                .into_iter()
                .map(|(second, bucket)| BucketView {
                    second,
                    annotations: bucket
                        .entries
                        .into_iter()
                        .map(|e| BucketAnnotationView {
                            annotation_id: e.annotation_id,
                            track: e.track,
                            model: e.model,
                            label: e.label,
                            text: e.text,
                            language: e.language,
                            confidence: e.confidence,
                            coverage: e.coverage,
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// Reads one asset's data on this node's replica, or forwards the read to a node that
    /// holds the asset's shard. Replies JSON, or the raw stored annotation.
    pub async fn read_asset(self: &Arc<Self>, read: AssetRead) -> Result<PeerReply, ApiError> {
        let asset_id = match &read {
            AssetRead::View { asset_id } | AssetRead::RawAnnotation { asset_id, .. } | AssetRead::Buckets { asset_id, .. } => {
                asset_id.clone()
            }
        };
        let shard = self.shard_map.shard_for_asset(&asset_id);
        if self.local_shard(shard).is_some() {
            return match self.handle_asset_read(read).await {
                PeerReply::Error(e) => Err(e),
                reply => Ok(reply),
            };
        }
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        let replicas = self.shard_map.replicas(shard).to_vec();
        self.hedged_call(&replicas, PeerRequest::AssetRead(read), deadline).await.map(|(_, reply)| reply)
    }

    /// A read on this node's replica (blocking work on the blocking pool).
    pub async fn handle_asset_read(self: &Arc<Self>, read: AssetRead) -> PeerReply {
        let engine = self.clone();
        let work = move || -> Result<PeerReply, ApiError> {
            match read {
                AssetRead::View { asset_id } => json_reply(&engine.asset_view(&asset_id)?),
                AssetRead::RawAnnotation { asset_id, annotation_id } => {
                    Ok(PeerReply::Raw(engine.raw_annotation(&asset_id, &annotation_id)?))
                }
                AssetRead::Buckets { asset_id, from_ms, to_ms } => json_reply(&engine.buckets(&asset_id, from_ms, to_ms)?),
            }
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => PeerReply::Error(e),
            Err(e) => PeerReply::Error(ApiError::internal(format!("read failed: {e}"))),
        }
    }

    /// A snapshot message for a local replica: its data is fetched from the sender first (on
    /// the peer runtime), then the message goes to the raft thread, which installs it. While a
    /// fetch runs, further snapshot messages for the shard are dropped (the leader resends).
    fn receive_snapshot(self: &Arc<Self>, from: NodeId, shard: ShardId, message: raft::eraftpb::Message) {
        let engine = self.clone();
        tokio::spawn(async move {
            let Some(replica) = engine.local_shard(shard).cloned() else { return };
            let Some(_fetch) = replica.start_snapshot_fetch() else { return };
            let index = message.get_snapshot().get_metadata().index;
            let started = std::time::Instant::now();
            let fetched = engine.fetch_snapshot(from, &replica, &message).await;
            // Time of fetches that moved data or failed; a message whose snapshot is already
            // staged (it may have waited for the install to finish) fetched nothing.
            if !matches!(fetched, Ok(None)) {
                let fetch_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                replica.progress.snapshot_fetch_ms.fetch_add(fetch_ms, std::sync::atomic::Ordering::AcqRel);
            }
            match fetched {
                Ok(Some(fetch)) => tracing::info!(
                    shard,
                    from,
                    index,
                    bytes = fetch.bytes,
                    chunks = fetch.chunks,
                    seconds = started.elapsed().as_secs_f64(),
                    waiting_for_chunks_s = fetch.waiting_for_chunks.as_secs_f64(),
                    staging_s = fetch.staging.as_secs_f64(),
                    "snapshot fetched and staged"
                ),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(shard, from, index, error = %e, "snapshot fetch failed; the leader sends the snapshot again");
                    return;
                }
            }
            if !replica.deliver_raft(message) {
                tracing::debug!(shard, "raft inbox full; the staged snapshot waits for the leader's next message");
            }
        });
    }

    /// Stages the raw store `message` names, unless a staged copy already covers it; returns
    /// what the fetch took.
    async fn fetch_snapshot(
        &self,
        from: NodeId,
        replica: &Arc<Shard>,
        message: &raft::eraftpb::Message,
    ) -> Result<Option<SnapshotFetchStats>, ApiError> {
        let snapshot = match SnapshotData::parse(message.get_snapshot().get_data()) {
            Ok(SnapshotData::Ref(snapshot)) => snapshot,
            Ok(SnapshotData::Legacy) => return Ok(None), // an earlier version's snapshot carries the store itself
            Err(e) => return Err(ApiError::internal(format!("unreadable snapshot from node {from}: {e}"))),
        };
        let net = self.net.clone().ok_or_else(|| ApiError::internal("snapshot without a peer transport"))?;
        let staged = on_staging(replica, |store| store.staged_snapshot()).await?;
        if staged.is_some_and(|staged| staged >= snapshot.index) {
            return Ok(None);
        }
        let generation = on_staging(replica, |store| store.begin_staging()).await?;
        let chunk_request = |after: Option<Vec<u8>>| PeerRequest::SnapshotChunk { shard: replica.id, after, min_applied: snapshot.index };
        let timed_call = |request: PeerRequest| {
            let net = net.clone();
            async move {
                let asked = Instant::now();
                net.call(from, &request, SNAPSHOT_CHUNK_TIMEOUT).await.map(|reply| (reply, asked.elapsed()))
            }
        };
        let mut stats = SnapshotFetchStats::default();
        let mut state_at = None;
        let (mut reply, waited) = timed_call(chunk_request(None)).await?;
        stats.waiting_for_chunks += waited;
        loop {
            let (chunk, applied) = match reply {
                PeerReply::SnapshotChunk { chunk, applied } => (chunk, applied),
                PeerReply::Error(e) => return Err(e),
                _ => return Err(ApiError::internal(format!("node {from} answered a snapshot chunk request with another reply"))),
            };
            // The copy holds every entry the source had applied when the first chunk was read.
            state_at.get_or_insert(applied);
            let chunk_bytes = chunk.pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>();
            stats.bytes += chunk_bytes;
            stats.chunks += 1;
            replica.progress.snapshot_chunks_fetched.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            replica.progress.snapshot_bytes_fetched.fetch_add(chunk_bytes, std::sync::atomic::Ordering::AcqRel);
            let done = chunk.done;
            let after = chunk.pairs.last().map(|(key, _)| key.clone());
            if !done && after.is_none() {
                return Err(ApiError::internal(format!("node {from} sent an empty snapshot chunk before the end")));
            }
            let stage = async {
                let started = Instant::now();
                on_staging(replica, move |store| store.stage_chunk(generation, &chunk.pairs)).await.map(|()| started.elapsed())
            };
            if done {
                stats.staging += stage.await?;
                break;
            }
            // The source reads and sends the next chunk while this one is written here; the
            // first failure of either ends the fetch at once.
            let (took, (next, waited)) = tokio::try_join!(stage, timed_call(chunk_request(after)))?;
            stats.staging += took;
            stats.waiting_for_chunks += waited;
            reply = next;
        }
        let state_at = state_at.unwrap_or(snapshot.index);
        let staging = Instant::now();
        on_staging(replica, move |store| store.finish_staging(generation, state_at)).await?;
        stats.staging += staging.elapsed();
        Ok(Some(stats))
    }

    /// Serves a chunk of a local replica's raw store to a replica installing a snapshot.
    pub async fn handle_snapshot_chunk(self: &Arc<Self>, shard: ShardId, after: Option<Vec<u8>>, min_applied: u64) -> PeerReply {
        let Some(replica) = self.local_shard(shard).cloned() else {
            return PeerReply::Error(ApiError::unavailable(format!("this node holds no replica of shard {shard}")).with_retry_after(1));
        };
        let applied = replica.progress.applied.load(std::sync::atomic::Ordering::Acquire);
        if applied < min_applied {
            return PeerReply::Error(
                ApiError::unavailable(format!("replica of shard {shard} has applied {applied}, below the snapshot's {min_applied}"))
                    .with_retry_after(1),
            );
        }
        let chunk_bytes = usize::try_from(self.config.raft.snapshot_chunk_bytes).unwrap_or(usize::MAX);
        let work = move || replica.store.raw_chunk(after.as_deref(), chunk_bytes);
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(chunk)) => PeerReply::SnapshotChunk { chunk, applied },
            Ok(Err(e)) => PeerReply::Error(ApiError::internal(format!("reading shard {shard} for a snapshot: {e}"))),
            Err(e) => PeerReply::Error(ApiError::internal(format!("snapshot chunk task failed: {e}"))),
        }
    }

    /// Label vocabulary and series of this node's replicas, for a peer's query understanding.
    pub fn local_vocabulary_reply(&self) -> PeerReply {
        PeerReply::Vocabulary { labels: self.local_vocabulary().into_iter().collect(), series: self.local_series_names() }
    }

    /// Fetches the vocabulary of shards this node does not hold, at most every few seconds
    /// (planning reads it per query). A node holding every shard never asks.
    pub async fn refresh_remote_vocabulary(self: &Arc<Self>) {
        const REFRESH: Duration = Duration::from_secs(5);
        if self.shards.len() == self.shard_map.shard_count() as usize {
            return;
        }
        if self.remote_vocabulary.lock().0.is_some_and(|at| at.elapsed() < REFRESH) {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut series: Vec<String> = Vec::new();
        for shard in 0..self.shard_map.shard_count() {
            if self.local_shard(shard).is_some() {
                continue;
            }
            let replicas = self.shard_map.replicas(shard).to_vec();
            if let Ok((_, PeerReply::Vocabulary { labels: remote, series: remote_series })) =
                self.hedged_call(&replicas, PeerRequest::Vocabulary, deadline).await
            {
                for (label, tracks) in remote {
                    let entry = labels.entry(label).or_default();
                    for track in tracks {
                        if !entry.contains(&track) {
                            entry.push(track);
                        }
                    }
                }
                for name in remote_series {
                    if !series.contains(&name) {
                        series.push(name);
                    }
                }
            }
        }
        *self.remote_vocabulary.lock() = (Some(Instant::now()), labels, series);
    }

    /// Normalized label → tracks, over every shard (other nodes' from the last refresh).
    pub fn vocabulary(&self) -> BTreeMap<String, Vec<String>> {
        let mut merged = self.local_vocabulary();
        for (label, tracks) in &self.remote_vocabulary.lock().1 {
            let entry = merged.entry(label.clone()).or_default();
            for track in tracks {
                if !entry.contains(track) {
                    entry.push(track.clone());
                }
            }
        }
        merged
    }

    fn local_vocabulary(&self) -> BTreeMap<String, Vec<String>> {
        let mut merged: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for shard in &self.shards {
            for (label, tracks) in shard.store.vocabulary() {
                let entry = merged.entry(label).or_default();
                for track in tracks {
                    if !entry.contains(&track) {
                        entry.push(track);
                    }
                }
            }
        }
        merged
    }

    /// Series names of every asset, refreshed at most every few seconds (planning reads them
    /// per query to recognise "friends season 3").
    pub fn series_names(&self) -> Vec<String> {
        let mut names = self.local_series_names();
        for name in &self.remote_vocabulary.lock().2 {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names.sort();
        names
    }

    fn local_series_names(&self) -> Vec<String> {
        const REFRESH: Duration = Duration::from_secs(5);
        {
            let cached = self.series_cache.lock();
            if cached.0.is_some_and(|at| at.elapsed() < REFRESH) {
                return cached.1.clone();
            }
        }
        let mut names: Vec<String> = Vec::new();
        for shard in &self.shards {
            for (_, asset_id) in shard.store.all_assets() {
                if let Ok(Some(record)) = shard.store.asset_record(&asset_id) {
                    if let Some(series) = record.series {
                        if !names.contains(&series) {
                            names.push(series);
                        }
                    }
                }
            }
        }
        names.sort();
        *self.series_cache.lock() = (Some(Instant::now()), names.clone());
        names
    }

    /// Whether any shard's dialogue holds `word`: this node's replicas first (one term lookup
    /// per segment), then, on a node lacking shards, one replica of each missing shard.
    /// Blocking: call it off the async threads (planning runs on the blocking pool).
    pub fn is_dialogue_word(self: &Arc<Self>, word: &str) -> bool {
        let folded = crate::storage::index::tokenize(word);
        let [token] = folded.as_slice() else { return false };
        if self.shards.iter().any(|shard| shard_has_dialogue_word(shard, token)) {
            return true;
        }
        let missing: Vec<ShardId> = (0..self.shard_map.shard_count()).filter(|shard| self.local_shard(*shard).is_none()).collect();
        if missing.is_empty() {
            return false;
        }
        self.remote_dialogue_word(token, missing)
    }

    /// Asks a replica of each shard in `missing`, concurrently. Only "held" is cached (a word
    /// stays in dialogue once there): a new word must be seen as soon as it is indexed, and the
    /// question arises only for a word that was corrected to a label. A shard that cannot be
    /// asked in time counts as not holding the word: the query then reads as typed to the closest
    /// label, as it would before that shard had the word.
    fn remote_dialogue_word(self: &Arc<Self>, token: &str, missing: Vec<ShardId>) -> bool {
        const CACHE_FOR: Duration = Duration::from_secs(60);
        const CACHE_ENTRIES_MAX: usize = 4096;
        const ASK_FOR: Duration = Duration::from_millis(500);
        if self.remote_dialogue_words.lock().get(token).is_some_and(|at| at.elapsed() < CACHE_FOR) {
            return true;
        }
        let Some(net) = self.net.clone() else { return false };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (engine, word) = (self.clone(), token.to_string());
        net.runtime().spawn(async move {
            let deadline = tokio::time::Instant::now() + ASK_FOR;
            let mut asks = tokio::task::JoinSet::new();
            for shard in missing {
                let (engine, word) = (engine.clone(), word.clone());
                asks.spawn(async move {
                    let replicas = engine.shard_map.replicas(shard).to_vec();
                    let request = PeerRequest::DialogueWord { word, shard };
                    match engine.hedged_call(&replicas, request, deadline).await {
                        Ok((_, PeerReply::DialogueWord { known })) => known,
                        Ok((node, other)) => {
                            tracing::warn!(shard, node, reply = ?other, "unexpected reply to a dialogue word lookup");
                            false
                        }
                        Err(error) => {
                            tracing::warn!(shard, error = %error.message, "dialogue word lookup failed");
                            false
                        }
                    }
                });
            }
            let mut known = false;
            while let Some(answer) = asks.join_next().await {
                if answer.unwrap_or(false) {
                    known = true;
                    break;
                }
            }
            let _ = tx.send(known);
        });
        let known = rx.recv_timeout(ASK_FOR + Duration::from_millis(100)).unwrap_or(false);
        if known {
            let mut cache = self.remote_dialogue_words.lock();
            if cache.len() >= CACHE_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(token.to_string(), Instant::now());
        }
        known
    }

    /// Compiles a request (blocking: the embedder may call out over HTTP).
    pub fn plan_blocking(self: &Arc<Self>, request: &SearchRequest) -> Result<Plan, ApiError> {
        let vocabulary = self.vocabulary();
        let series = self.series_names();
        let known_word = |word: &str| self.is_dialogue_word(word);
        let context = search::PlanContext {
            vocabulary: &vocabulary,
            series: &series,
            limits: &self.search_limits,
            defaults: self.search_defaults,
            embedder: self.embedder.as_deref(),
            known_word: &known_word,
        };
        search::plan(request, &context)
    }

    pub async fn plan(self: &Arc<Self>, request: SearchRequest) -> Result<Plan, ApiError> {
        self.refresh_remote_vocabulary().await;
        let engine = self.clone();
        let deadline = self.request_timeout();
        let task = tokio::task::spawn_blocking(move || engine.plan_blocking(&request));
        tokio::time::timeout(deadline, task)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Timeout, "planning the search did not finish in time; retry").with_retry_after(1))?
            .map_err(|e| ApiError::internal(format!("planning failed: {e}")))?
    }

    pub async fn search(self: &Arc<Self>, request: SearchRequest) -> Result<SearchResponse, ApiError> {
        let started = Instant::now();
        let strong = request.consistency == Some(rushes_protocol::Consistency::Strong);
        let plan = self.plan(request).await?;
        self.run_plan(plan, strong, started).await
    }

    /// Runs a compiled plan over every shard: hits, global statistics, candidates, evidence.
    /// Each shard runs on this node's replica, or else on another node's (phase one hedged to
    /// a second replica after [`HEDGE_AFTER`]; phases two and three go where phase one ran).
    pub async fn run_plan(self: &Arc<Self>, plan: Plan, strong: bool, started: Instant) -> Result<SearchResponse, ApiError> {
        // The permit travels into every blocking task, so work that outlives a timed-out
        // request still counts against the limit until it really ends.
        let permit = Arc::new(
            self.search_slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| ApiError::overloaded("too many searches in flight; retry shortly"))?,
        );
        // One deadline for the whole request, whatever the number of shards and phases.
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        let shard_count = self.shard_map.shard_count() as usize;
        // An `asset_ids` filter names the only shards that can match (placement is by asset):
        // the others are skipped, not asked, with the same result.
        let needed: Option<HashSet<ShardId>> =
            plan.filters.asset_ids.as_ref().map(|ids| ids.iter().map(|id| self.shard_map.shard_for_asset(id)).collect());
        let is_needed = |shard_id: ShardId| needed.as_ref().is_none_or(|needed| needed.contains(&shard_id));
        if strong {
            for shard in self.shards.iter().filter(|shard| is_needed(shard.id)) {
                if !shard.wait_read_index(deadline.saturating_duration_since(tokio::time::Instant::now())).await? {
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        format!("shard {} could not confirm and index the latest writes in time; retry", shard.id),
                    )
                    .with_retry_after(1));
                }
            }
        }
        let query_id: u64 = rand::random();
        // Encoded for other nodes only when a needed shard has no replica here.
        let remote_plan = if (0..shard_count as ShardId).any(|shard_id| is_needed(shard_id) && self.local_shard(shard_id).is_none()) {
            Some(plan.to_wire().map_err(|e| ApiError::internal(format!("cannot send the plan to other nodes: {e}")))?)
        } else {
            None
        };
        let plan = Arc::new(plan);
        // Phase one on every shard: each leaf's hits, summarized for global statistics.
        let mut tasks = Vec::with_capacity(shard_count);
        for shard_id in (0..shard_count as ShardId).filter(|&shard_id| is_needed(shard_id)) {
            let task = match (self.local_shard(shard_id), &remote_plan) {
                (Some(shard), _) => {
                    let (shard, plan, task_permit, timer) =
                        (shard.clone(), plan.clone(), permit.clone(), self.phase_timer("hits", "local"));
                    tokio::task::spawn_blocking(move || {
                        let _permit = task_permit;
                        let hits = search::shard_hits(&shard, &plan)?;
                        let summary = search::summarize(&hits, &plan);
                        timer.observe_duration();
                        Ok::<_, search::SearchError>((ShardWork::Local(hits), summary))
                    })
                }
                (None, Some(wire)) => {
                    let request = PeerRequest::SearchHits { query: query_id, shard: shard_id, plan: wire.clone(), strong };
                    let (engine, replicas) = (self.clone(), self.shard_map.replicas(shard_id).to_vec());
                    let timer = self.phase_timer("hits", "remote");
                    tokio::spawn(async move {
                        let reply = engine.hedged_call(&replicas, request, deadline).await;
                        timer.observe_duration();
                        match reply {
                            Ok((node, PeerReply::Summary(summary))) => Ok((ShardWork::Remote(node), summary)),
                            Ok((node, other)) => Err(search::SearchError::Remote(format!("node {node} answered {other:?}"))),
                            Err(e) => Err(search::SearchError::Remote(e.message)),
                        }
                    })
                }
                (None, None) => continue,
            };
            tasks.push((shard_id, task));
        }
        let mut work: Vec<Option<ShardWork>> = (0..shard_count).map(|_| None).collect();
        let mut summaries = Vec::new();
        for (shard_id, task) in tasks {
            if let Some((shard_work, summary)) = self.await_shard(shard_id, "hits", deadline, task).await {
                work[shard_id as usize] = Some(shard_work);
                summaries.push(summary);
            }
        }
        let stats = Arc::new(search::global_stats(&plan, &summaries));
        // Phase two: fused scores, clips, the shard's best assets.
        let mut tasks = Vec::with_capacity(shard_count);
        for (shard_id, shard_work) in work.into_iter().enumerate() {
            let shard_id = shard_id as ShardId;
            let task = match shard_work {
                None => continue,
                Some(ShardWork::Local(hits)) => {
                    let Some(shard) = self.local_shard(shard_id).cloned() else { continue };
                    let (plan, stats, task_permit) = (plan.clone(), stats.clone(), permit.clone());
                    let timer = self.phase_timer("candidates", "local");
                    tokio::task::spawn_blocking(move || {
                        let _permit = task_permit;
                        let candidates = search::shard_candidates(&shard, &plan, hits, &stats)?;
                        timer.observe_duration();
                        Ok((candidates.ranked_assets(), Some(Arc::new(candidates)), None))
                    })
                }
                Some(ShardWork::Remote(node)) => {
                    let request = PeerRequest::SearchCandidates { query: query_id, shard: shard_id, stats: (*stats).clone() };
                    let (engine, timer) = (self.clone(), self.phase_timer("candidates", "remote"));
                    tokio::spawn(async move {
                        let reply = engine.remote_call(node, &request, deadline).await;
                        timer.observe_duration();
                        match reply {
                            Ok(PeerReply::Ranked(ranked)) => Ok((ranked, None, Some(node))),
                            Ok(other) => Err(search::SearchError::Remote(format!("node {node} answered {other:?}"))),
                            Err(e) => Err(search::SearchError::Remote(e.message)),
                        }
                    })
                }
            };
            tasks.push((shard_id, task));
        }
        let mut ranked: Vec<Option<search::RankedAssets>> = vec![None; shard_count];
        let mut local_candidates: Vec<Option<Arc<search::ShardCandidates>>> = vec![None; shard_count];
        let mut remote_nodes: Vec<Option<NodeId>> = vec![None; shard_count];
        let (mut total_assets, mut remaining_assets) = (0, 0);
        for (shard_id, task) in tasks {
            if let Some((shard_ranked, candidates, node)) = self.await_shard(shard_id, "candidates", deadline, task).await {
                total_assets += shard_ranked.total_assets;
                remaining_assets += shard_ranked.remaining_assets;
                ranked[shard_id as usize] = Some(shard_ranked);
                local_candidates[shard_id as usize] = candidates;
                remote_nodes[shard_id as usize] = node;
            }
        }
        // Phase three only for the assets that make the global top `limit`: evidence costs
        // bucket reads, and each shard would otherwise pay for `limit` assets of its own.
        let keep = search::choose_assets(&ranked, plan.limit);
        let mut finishing = Vec::new();
        for (position, keep) in keep.into_iter().enumerate() {
            let shard_id = position as ShardId;
            if ranked[position].is_none() {
                continue;
            }
            if let Some(node) = remote_nodes[position] {
                // The remote session is dropped by phase three; send it even with nothing to keep,
                // but then do not wait for it: the shard's part of the answer is already complete.
                // (The release outlives the search permit; the peer bounds its sessions anyway.)
                let release_only = keep.is_empty();
                let request = PeerRequest::SearchFinish { query: query_id, shard: shard_id, keep: keep.into_iter().collect() };
                if release_only {
                    let engine = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = engine.remote_call(node, &request, deadline).await {
                            tracing::debug!(node, shard = shard_id, error = %e.message, "releasing a remote search failed (it expires)");
                        }
                    });
                    continue;
                }
                let (engine, timer) = (self.clone(), self.phase_timer("evidence", "remote"));
                finishing.push((
                    shard_id,
                    tokio::spawn(async move {
                        let reply = engine.remote_call(node, &request, deadline).await;
                        timer.observe_duration();
                        match reply {
                            Ok(PeerReply::Json(bytes)) => serde_json::from_slice::<Vec<AssetHits>>(&bytes)
                                .map_err(|e| search::SearchError::Remote(format!("node {node} sent unreadable results: {e}"))),
                            Ok(other) => Err(search::SearchError::Remote(format!("node {node} answered {other:?}"))),
                            Err(e) => Err(search::SearchError::Remote(e.message)),
                        }
                    }),
                ));
                continue;
            }
            let (Some(shard_candidates), Some(shard)) = (local_candidates[position].clone(), self.local_shard(shard_id).cloned()) else {
                continue;
            };
            if keep.is_empty() {
                continue;
            }
            let (plan, task_permit, timer) = (plan.clone(), permit.clone(), self.phase_timer("evidence", "local"));
            let task = tokio::task::spawn_blocking(move || {
                let _permit = task_permit;
                let assets = search::finish_assets(&shard, &plan, &shard_candidates, &keep);
                timer.observe_duration();
                assets
            });
            finishing.push((shard_id, task));
        }
        let mut assets = Vec::new();
        let mut finished_ok = vec![true; shard_count];
        for (shard_id, task) in finishing {
            match self.await_shard(shard_id, "evidence", deadline, task).await {
                Some(mut shard_assets) => assets.append(&mut shard_assets),
                None => finished_ok[shard_id as usize] = false,
            }
        }
        // A shard counts as answered only if every phase it took part in succeeded.
        let skipped = (0..shard_count).filter(|&i| !is_needed(i as ShardId)).count();
        let answered = (0..shard_count).filter(|&i| ranked[i].is_some() && finished_ok[i]).count();
        let ok = answered + skipped;
        let counts = ShardCounts { total: shard_count, ok, failed: shard_count - ok, skipped };
        let took = started.elapsed();
        self.metrics.query_seconds.with_label_values(&["search"]).observe(took.as_secs_f64());
        Ok(search::merge(assets, (total_assets, remaining_assets), &plan, counts, took.as_millis() as u64))
    }

    /// A call to one node, bounded by `deadline`.
    async fn remote_call(&self, node: NodeId, request: &PeerRequest, deadline: tokio::time::Instant) -> Result<PeerReply, ApiError> {
        let Some(net) = &self.net else { return Err(ApiError::unavailable("this node has no peers")) };
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        match net.call(node, request, timeout).await? {
            PeerReply::Error(e) => Err(e),
            reply => Ok(reply),
        }
    }

    /// Sends `request` to the first replica, and to the next one too when no answer came
    /// within [`HEDGE_AFTER`] or the previous one failed; the first success wins. A replica that
    /// failed fast (not connected: maybe restarting) is asked again after a pause while time
    /// remains, so a search outlives a replica's reconnect instead of failing its shard.
    async fn hedged_call(
        self: &Arc<Self>,
        replicas: &[NodeId],
        request: PeerRequest,
        deadline: tokio::time::Instant,
    ) -> Result<(NodeId, PeerReply), ApiError> {
        let Some(net) = self.net.clone() else { return Err(ApiError::unavailable("this node has no peers")) };
        // Replicas this node is not cut off from, in a per-request order that spreads load.
        let mut order: Vec<NodeId> = replicas.iter().copied().filter(|n| *n != self.node_id() && !net.is_isolated_from(*n)).collect();
        if order.is_empty() {
            return Err(ApiError::unavailable("no reachable replica"));
        }
        let rotate = rand::random::<usize>() % order.len();
        order.rotate_left(rotate);
        let started = tokio::time::Instant::now();
        // (when to start, replica, whether it may start early because nothing else is pending):
        // first asks may, retries wait out their pause.
        let mut waiting: std::collections::VecDeque<(tokio::time::Instant, NodeId, bool)> =
            order.iter().enumerate().map(|(i, node)| (tokio::time::Instant::now() + HEDGE_AFTER * i as u32, *node, true)).collect();
        let mut pending = tokio::task::JoinSet::new();
        let mut last_error = ApiError::unavailable("no replica answered");
        loop {
            let now = tokio::time::Instant::now();
            // Start every call that is due; the first one at once.
            while waiting.front().is_some_and(|(at, _, early)| *at <= now || (*early && pending.is_empty())) {
                let Some((_, node, _)) = waiting.pop_front() else { break };
                let (net, request) = (net.clone(), request.clone());
                let timeout = deadline.saturating_duration_since(now);
                pending.spawn(async move { (node, net.call(node, &request, timeout).await) });
            }
            let next_start = waiting.front().map_or(deadline, |(at, _, _)| (*at).min(deadline));
            tokio::select! {
                joined = pending.join_next() => match joined {
                    Some(Ok((node, Ok(PeerReply::Error(e))))) | Some(Ok((node, Err(e)))) => {
                        tracing::debug!(node, error = %e.message, "replica failed a search phase");
                        let retry_at = tokio::time::Instant::now() + REPLICA_RETRY_PAUSE;
                        if e.code == ErrorCode::Unavailable && retry_at < deadline.min(started + REPLICA_RETRY_WINDOW) {
                            waiting.push_back((retry_at, node, false));
                        }
                        last_error = e;
                    }
                    Some(Ok((node, Ok(reply)))) => return Ok((node, reply)),
                    Some(Err(e)) => last_error = ApiError::internal(e.to_string()),
                    None => {
                        if waiting.is_empty() {
                            return Err(last_error);
                        }
                        tokio::time::sleep_until(next_start).await;
                    }
                },
                _ = tokio::time::sleep_until(next_start), if !waiting.is_empty() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(ApiError::new(ErrorCode::Timeout, format!("no replica answered in time (last error: {})", last_error.message)).with_retry_after(1)),
            }
        }
    }

    /// A peer's search phase on this node's replica (blocking work on the blocking pool).
    pub async fn handle_search_phase(self: &Arc<Self>, request: PeerRequest) -> PeerReply {
        let phase = match &request {
            PeerRequest::SearchHits { .. } => "hits",
            PeerRequest::SearchCandidates { .. } => "candidates",
            // Nothing to finish: the coordinator only drops the session (and does not wait).
            PeerRequest::SearchFinish { keep, .. } if keep.is_empty() => "release",
            _ => "evidence",
        };
        let arrived = Instant::now();
        let reply = self.search_phase_reply(request).await;
        self.metrics.peer_search_phase_seconds.with_label_values(&[phase]).observe(arrived.elapsed().as_secs_f64());
        reply
    }

    async fn search_phase_reply(self: &Arc<Self>, request: PeerRequest) -> PeerReply {
        let engine = self.clone();
        let strong_wait = match &request {
            PeerRequest::SearchHits { shard, strong: true, .. } => self.local_shard(*shard).cloned(),
            _ => None,
        };
        if let Some(shard) = strong_wait {
            match shard.wait_read_index(self.request_timeout()).await {
                Ok(true) => {}
                Ok(false) => {
                    return PeerReply::Error(ApiError::new(ErrorCode::Timeout, "read index not reached in time").with_retry_after(1))
                }
                Err(e) => return PeerReply::Error(e),
            }
        }
        match tokio::task::spawn_blocking(move || engine.search_phase_blocking(request)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => PeerReply::Error(e),
            Err(e) => PeerReply::Error(ApiError::internal(format!("search phase failed: {e}"))),
        }
    }

    fn search_phase_blocking(&self, request: PeerRequest) -> Result<PeerReply, ApiError> {
        let internal = |e: search::SearchError| ApiError::internal(e.to_string());
        let missing = |shard: ShardId| ApiError::unavailable(format!("shard {shard} is not on node {}", self.node_id()));
        let expired = || ApiError::unavailable("the search expired on this replica; retry the search");
        match request {
            PeerRequest::SearchHits { query, shard, plan, .. } => {
                let replica = self.local_shard(shard).ok_or_else(|| missing(shard))?;
                let plan =
                    Arc::new(Plan::from_wire(&plan).map_err(|e| ApiError::internal(format!("unreadable plan from the coordinator: {e}")))?);
                let hits = search::shard_hits(replica, &plan).map_err(internal)?;
                let summary = search::summarize(&hits, &plan);
                self.store_remote_search(query, shard, RemoteSearch { plan, hits: Some(hits), candidates: None, at: Instant::now() })?;
                Ok(PeerReply::Summary(summary))
            }
            PeerRequest::SearchCandidates { query, shard, stats } => {
                let replica = self.local_shard(shard).ok_or_else(|| missing(shard))?;
                let mut session = self.remote_searches.lock().remove(&(query, shard)).ok_or_else(expired)?;
                let hits = session.hits.take().ok_or_else(expired)?;
                let candidates = search::shard_candidates(replica, &session.plan, hits, &stats).map_err(internal)?;
                let ranked = candidates.ranked_assets();
                session.candidates = Some(Arc::new(candidates));
                self.store_remote_search(query, shard, session)?;
                Ok(PeerReply::Ranked(ranked))
            }
            PeerRequest::SearchFinish { query, shard, keep } => {
                let replica = self.local_shard(shard).ok_or_else(|| missing(shard))?;
                let session = self.remote_searches.lock().remove(&(query, shard)).ok_or_else(expired)?;
                let candidates = session.candidates.ok_or_else(expired)?;
                let assets = if keep.is_empty() {
                    Vec::new()
                } else {
                    search::finish_assets(replica, &session.plan, &candidates, &keep.into_iter().collect()).map_err(internal)?
                };
                Ok(PeerReply::Json(serde_json::to_vec(&assets).map_err(|e| ApiError::internal(e.to_string()))?))
            }
            other => Err(ApiError::internal(format!("not a search phase: {other:?}"))),
        }
    }

    /// Keeps a peer's search between its phases; bounded in count and age.
    fn store_remote_search(&self, query: u64, shard: ShardId, session: RemoteSearch) -> Result<(), ApiError> {
        let mut sessions = self.remote_searches.lock();
        // Sessions outlive their coordinator's deadline only when it gave up (or lost a hedge):
        // drop those on every insert, so memory follows the searches really in flight.
        let timeout = self.request_timeout();
        sessions.retain(|_, s| s.at.elapsed() < timeout);
        if sessions.len() >= REMOTE_SEARCHES_MAX {
            return Err(ApiError::overloaded("too many searches from other nodes in flight; retry shortly"));
        }
        sessions.insert((query, shard), session);
        Ok(())
    }

    /// Starts timing one shard's search phase for `search_phase_seconds`.
    fn phase_timer(&self, phase: &str, replica: &str) -> prometheus::HistogramTimer {
        self.metrics.search_phase_seconds.with_label_values(&[phase, replica]).start_timer()
    }

    /// One shard's task of a search phase; `None` (logged) when it failed or ran out of time.
    async fn await_shard<T>(
        &self,
        shard_id: ShardId,
        phase: &str,
        deadline: tokio::time::Instant,
        task: tokio::task::JoinHandle<Result<T, search::SearchError>>,
    ) -> Option<T> {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(value))) => return Some(value),
            Ok(Ok(Err(e))) => tracing::error!(shard = shard_id, phase, error = %e, "shard search failed"),
            Ok(Err(e)) => tracing::error!(shard = shard_id, phase, error = %e, "shard search panicked"),
            Err(_) => tracing::warn!(shard = shard_id, phase, "shard search timed out"),
        }
        None
    }

    /// Sets the per-stage watermark and lag gauges (cheap: atomics only).
    pub fn refresh_stage_gauges(&self) {
        for s in &self.shards {
            let p = &s.progress;
            let commit = p.commit.load(Ordering::Acquire);
            for (stage, value) in [
                ("commit", commit),
                ("applied", p.applied.load(Ordering::Acquire)),
                ("fused", p.fused.load(Ordering::Acquire)),
                ("indexed", p.indexed.load(Ordering::Acquire)),
            ] {
                self.metrics.stage_index.with_label_values(&[&s.id.to_string(), stage]).set(value as i64);
                self.metrics.stage_lag_entries.with_label_values(&[&s.id.to_string(), stage]).set(commit.saturating_sub(value) as i64);
            }
            self.metrics.set_queue_depth(s.id, "proposals", s.queue_depth());
        }
    }

    /// Nodes, shards, leaders and every replica's indexes: local replicas from this node,
    /// the others from their nodes (unreachable ones are marked). `digest` adds a hash of each
    /// local replica's raw store (reads the whole store). Blocking for the local part.
    pub async fn cluster_status(self: &Arc<Self>, digest: bool) -> Result<serde_json::Value, ApiError> {
        let engine = self.clone();
        let local = tokio::task::spawn_blocking(move || engine.local_status_json(digest))
            .await
            .map_err(|e| ApiError::internal(format!("status failed: {e}")))??;
        let mut remote: HashMap<NodeId, Option<Vec<ReplicaStatus>>> = HashMap::new();
        if let Some(net) = &self.net {
            let mut calls = Vec::new();
            for member in &self.config.cluster.nodes {
                if member.id == self.node_id() {
                    continue;
                }
                let (net, id) = (net.clone(), member.id);
                calls.push((id, tokio::spawn(async move { net.call(id, &PeerRequest::Status, PEER_STATUS_TIMEOUT).await })));
            }
            for (id, call) in calls {
                let replicas = match call.await {
                    Ok(Ok(PeerReply::Status(replicas))) => Some(replicas),
                    _ => None,
                };
                remote.insert(id, replicas);
            }
        }
        let nodes: Vec<serde_json::Value> = if self.config.cluster.nodes.is_empty() {
            vec![json!({ "id": self.node_id(), "http_addr": self.config.node.listen.to_string(), "raft_addr": null, "up": true })]
        } else {
            self.config
                .cluster
                .nodes
                .iter()
                .map(|m| {
                    let up = m.id == self.node_id() || remote.get(&m.id).is_some_and(Option::is_some);
                    json!({ "id": m.id, "http_addr": m.http_addr, "raft_addr": m.raft_addr, "up": up })
                })
                .collect()
        };
        let mut shards = Vec::new();
        for shard in 0..self.shard_map.shard_count() {
            let mut replicas = Vec::new();
            let mut leader: Option<NodeId> = None;
            for &node in self.shard_map.replicas(shard) {
                if node == self.node_id() {
                    if let Some(view) = local.get(&shard) {
                        if view["leader"].as_bool() == Some(true) {
                            leader = Some(node);
                        }
                        leader = leader.or(view["leader_id"].as_u64());
                        replicas.push(view.clone());
                    }
                    continue;
                }
                match remote.get(&node).and_then(|r| r.as_ref()).and_then(|r| r.iter().find(|s| s.shard == shard)) {
                    Some(status) => {
                        if status.leader {
                            leader = Some(node);
                        }
                        replicas.push(replica_json(status, false, true));
                    }
                    None => replicas.push(json!({ "node": node, "local": false, "reachable": false })),
                }
            }
            let mut view = json!({ "shard": shard, "leader": leader, "replicas": replicas });
            // Sizes of this node's replica at the shard level too (the single-node shape).
            if let Some(local) = local.get(&shard) {
                for key in ["raw_annotations", "buckets", "index_docs", "vectors", "disk_bytes"] {
                    view[key] = local[key].clone();
                }
            }
            shards.push(view);
        }
        Ok(json!({
            "cluster_id": self.config.cluster.cluster_id,
            "node_id": self.node_id(),
            "replication_factor": self.shard_map.replicas(0).len(),
            "nodes": nodes,
            "shards": shards,
            "isolated_from": self.net.as_ref().map(|n| n.isolated()).unwrap_or_default(),
            "uptime_s": self.started.elapsed().as_secs(),
        }))
    }

    fn local_status_json(&self, digest: bool) -> Result<HashMap<ShardId, serde_json::Value>, ApiError> {
        self.refresh_stage_gauges();
        let mut views = HashMap::new();
        for (status, shard) in self.local_replicas().into_iter().zip(&self.shards) {
            let mut view = replica_json(&status, true, true);
            view["leader_id"] = json!(status.leader_id);
            view["proposal_queue"] = json!(shard.queue_depth());
            view["buckets"] = json!(shard.store.bucket_count());
            view["index_docs"] = json!(shard.index.num_docs());
            view["vectors"] = shard.index.vectors.iter().map(|v| json!({"space": v.spec.name, "count": v.len()})).collect();
            view["disk_bytes"] = json!(shard.store.disk_bytes());
            view["log_first_index"] = json!(shard.log.first_log_index());
            view["snapshots_installed"] = json!(shard.progress.snapshots_installed.load(Ordering::Acquire));
            view["snapshot_chunks_fetched"] = json!(shard.progress.snapshot_chunks_fetched.load(Ordering::Acquire));
            view["snapshot_bytes_fetched"] = json!(shard.progress.snapshot_bytes_fetched.load(Ordering::Acquire));
            view["snapshot_fetch_ms"] = json!(shard.progress.snapshot_fetch_ms.load(Ordering::Acquire));
            if digest {
                view["raw_digest"] = json!(shard.store.raw_digest().map_err(|e| ApiError::internal(e.to_string()))?);
            }
            views.insert(shard.id, view);
        }
        Ok(views)
    }

    /// True when every shard has indexed everything it applied.
    /// Changes whenever anything is applied or indexed on any shard (both only grow).
    pub fn data_version(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.progress.applied.load(Ordering::Acquire).wrapping_add(s.progress.indexed.load(Ordering::Acquire)))
            .fold(0u64, u64::wrapping_add)
    }

    /// Keeps suggest's moments for every label completion ready: once the data has settled (no
    /// change for a second) after a change, searches each vocabulary label (at most
    /// [`SUGGEST_WARM_LABELS_MAX`]) into the cache, so a keystroke that completes to a name
    /// costs a cache lookup. Yields to real traffic: a warm search that finds no free search
    /// slot is skipped. Stops when the engine is dropped.
    pub async fn warm_suggest_moments(engine: std::sync::Weak<Engine>) {
        let mut warmed_version = None;
        let mut last_seen = None;
        loop {
            tokio::time::sleep(SUGGEST_WARM_CHECK).await;
            let Some(engine) = engine.upgrade() else { return };
            let version = engine.data_version();
            let settled = last_seen == Some(version);
            last_seen = Some(version);
            if !settled || warmed_version == Some(version) {
                continue;
            }
            let labels: Vec<String> = engine.vocabulary().into_keys().take(SUGGEST_WARM_LABELS_MAX).collect();
            for label in labels {
                if engine.data_version() != version {
                    break;
                }
                engine.suggest_moments(&label).await;
            }
            if engine.data_version() == version {
                warmed_version = Some(version);
                engine.suggest_warmed_version.store(version, Ordering::Release);
            }
        }
    }

    /// The top moments for a completed suggestion, from the cache while the data is unchanged.
    pub async fn suggest_moments(self: &Arc<Self>, query: &str) -> Vec<AssetHits> {
        let version = self.data_version();
        if let Some((cached_version, assets)) = self.suggest_moments.lock().get(query) {
            if *cached_version == version {
                return assets.clone();
            }
        }
        let started = Instant::now();
        let search = SearchRequest { q: Some(query.to_string()), per_asset: Some(1), limit: Some(5), ..Default::default() };
        let Ok(mut plan) = self.plan(search).await else { return vec![] };
        plan.cap_semantic_k(SUGGEST_SEMANTIC_K);
        let Ok(reply) = self.run_plan(plan, false, started).await else { return vec![] };
        let mut cache = self.suggest_moments.lock();
        if cache.len() >= SUGGEST_MOMENTS_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(query.to_string(), (version, reply.assets.clone()));
        reply.assets
    }

    pub fn is_caught_up(&self) -> bool {
        self.shards.iter().all(|s| s.progress.indexed.load(Ordering::Acquire) >= s.progress.applied.load(Ordering::Acquire))
    }

    pub fn total_raw_annotations(&self) -> usize {
        self.shards.iter().map(|s| s.store.raw_count()).sum()
    }

    pub fn shutdown(&self) {
        for shard in &self.shards {
            shard.shutdown();
        }
        for shard in &self.shards {
            if let Err(e) = shard.store.flush() {
                tracing::error!(shard = shard.id, error = %e, "final flush failed");
            }
        }
    }
}

fn replica_json(status: &ReplicaStatus, local: bool, reachable: bool) -> serde_json::Value {
    json!({
        "node": status.node,
        "local": local,
        "reachable": reachable,
        "leader": status.leader,
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "fused_index": status.fused_index,
        "indexed_index": status.indexed_index,
        "lag": {
            "apply": status.commit_index.saturating_sub(status.applied_index),
            "fusion": status.applied_index.saturating_sub(status.fused_index),
            "index": status.fused_index.saturating_sub(status.indexed_index),
        },
        "raw_annotations": status.raw_annotations,
        "failed": status.failed,
    })
}

/// Whether `shard`'s dialogue holds `token` (one term lookup per segment; blocking).
fn shard_has_dialogue_word(shard: &Shard, token: &str) -> bool {
    let term = tantivy::Term::from_field_text(shard.index.fields.dialogue, token);
    shard.index.reader.searcher().doc_freq(&term).is_ok_and(|n| n > 0)
}

/// Runs `work` on a replica's snapshot staging area on the blocking pool (sled I/O).
async fn on_staging<T: Send + 'static>(
    replica: &Arc<Shard>,
    work: impl FnOnce(&crate::storage::store::ShardStore) -> Result<T, crate::storage::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let replica = replica.clone();
    tokio::task::spawn_blocking(move || replica.with_staging(work))
        .await
        .map_err(|e| ApiError::internal(format!("staging task failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("staging the snapshot: {e}")))
}

fn json_reply<T: serde::Serialize>(value: &T) -> Result<PeerReply, ApiError> {
    serde_json::to_vec(value).map(PeerReply::Json).map_err(|e| ApiError::internal(e.to_string()))
}

/// What one snapshot fetch took: its size, and its time waiting for the source's chunks and
/// writing them to the staging area (the two overlap: the next chunk is asked for before the
/// current one is written).
#[derive(Default)]
struct SnapshotFetchStats {
    bytes: u64,
    chunks: u64,
    waiting_for_chunks: Duration,
    staging: Duration,
}

/// Where phase one of a search ran on a shard (phases two and three follow it).
enum ShardWork {
    Local(search::ShardHits),
    Remote(NodeId),
}

/// A peer's search on this node between its phases.
struct RemoteSearch {
    plan: Arc<Plan>,
    hits: Option<search::ShardHits>,
    candidates: Option<Arc<search::ShardCandidates>>,
    at: Instant,
}

/// Where a routed write ended.
enum Routed {
    Done(ApplyOutcome),
    /// The replica asked does not lead the shard; maybe it knows who does.
    NotLeader(Option<NodeId>),
}

fn is_not_leader(error: &ApiError) -> bool {
    error.code == ErrorCode::Unavailable && error.message.starts_with(NOT_LEADER_PREFIX)
}

/// Serves peers' Raft messages and requests until the transport stops. Holds the engine weakly
/// so it does not keep a stopped node alive.
async fn serve_peers(engine: std::sync::Weak<Engine>, mut inbound: tokio::sync::mpsc::Receiver<rushes_cluster::transport::Inbound>) {
    use rushes_cluster::transport::Inbound;
    while let Some(message) = inbound.recv().await {
        let Some(engine) = engine.upgrade() else { return };
        let Some(net) = engine.net.clone() else { return };
        match message {
            Inbound::Raft { from, shard, message } => {
                if net.is_isolated_from(from) {
                    continue;
                }
                match (engine.local_shard(shard), crate::peer::decode_raft(&message)) {
                    (Some(_), Some(message)) if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot => {
                        engine.receive_snapshot(from, shard, message);
                    }
                    (Some(replica), Some(message)) => {
                        // A full inbox drops the message; Raft retransmits.
                        let _ = replica.deliver_raft(message);
                    }
                    (None, _) => tracing::debug!(from, shard, "raft message for a shard this node does not hold"),
                    (_, None) => tracing::warn!(from, shard, "unreadable raft message dropped"),
                }
            }
            Inbound::Request { from, body, responder } => {
                if net.is_isolated_from(from) {
                    // Dropping the responder answers "no response": the caller fails fast.
                    drop(responder);
                    continue;
                }
                tokio::spawn(async move {
                    let reply = match crate::peer::decode_request(&body) {
                        Err(e) => Err(e),
                        Ok(PeerRequest::Propose { shard, command }) => {
                            crate::peer::encode_reply(&engine.handle_forwarded_propose(shard, command).await)
                        }
                        Ok(PeerRequest::Status) => crate::peer::encode_reply(&PeerReply::Status(engine.local_replicas())),
                        Ok(
                            request @ (PeerRequest::SearchHits { .. }
                            | PeerRequest::SearchCandidates { .. }
                            | PeerRequest::SearchFinish { .. }),
                        ) => crate::peer::encode_reply(&engine.handle_search_phase(request).await),
                        Ok(PeerRequest::Vocabulary) => crate::peer::encode_reply(&engine.local_vocabulary_reply()),
                        Ok(PeerRequest::DialogueWord { word, shard }) => match engine.local_shard(shard).cloned() {
                            Some(replica) => {
                                let known =
                                    tokio::task::spawn_blocking(move || shard_has_dialogue_word(&replica, &word)).await.unwrap_or(false);
                                crate::peer::encode_reply(&PeerReply::DialogueWord { known })
                            }
                            None => crate::peer::encode_reply(&PeerReply::Error(ApiError::unavailable(format!(
                                "shard {shard} is not on node {}",
                                engine.node_id()
                            )))),
                        },
                        Ok(PeerRequest::AssetRead(read)) => crate::peer::encode_reply(&engine.handle_asset_read(read).await),
                        Ok(PeerRequest::SnapshotChunk { shard, after, min_applied }) => {
                            crate::peer::encode_reply(&engine.handle_snapshot_chunk(shard, after, min_applied).await)
                        }
                    };
                    let _ = responder.respond(reply);
                });
            }
        }
    }
}

/// One encoded ingest command per shard, with the batch positions of its items.
struct PreparedIngest {
    commands: Vec<(ShardId, Vec<u8>, Vec<usize>)>,
    batch_duplicates: usize,
}

fn conflict(item: usize, annotation_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!("annotation id {annotation_id:?} already exists with different content; annotations are immutable, use a new id (or a new model_version to replace a model's output)"),
    )
    .with_item(item)
    .with_field("id")
}

fn validate_asset_record(record: &AssetRecord, max_time_ms: u64) -> Result<(), ApiError> {
    for (field, value, max) in [("title", &record.title, 512usize), ("series", &record.series, 128)] {
        if let Some(text) = value {
            if text.len() > max {
                return Err(
                    ApiError::new(ErrorCode::TooLarge, format!("{field} is {} bytes; the limit is {max}", text.len())).with_field(field)
                );
            }
            if text.chars().any(char::is_control) {
                return Err(ApiError::field(field, format!("{field} must not contain control characters")));
            }
        }
    }
    if let Some(fps) = record.fps {
        if !fps.is_finite() || fps <= 0.0 || fps > 1000.0 {
            return Err(ApiError::field("fps", format!("fps is {fps}; it must be a number in (0, 1000]")));
        }
    }
    if let Some(duration) = record.duration_ms {
        if duration == 0 || duration > max_time_ms {
            return Err(ApiError::field("duration_ms", format!("duration_ms is {duration}; allowed 1..={max_time_ms}")));
        }
    }
    Ok(())
}
