//! The node: where its parts are put together. [`Node::open`] opens this node's shard replicas
//! (each three actors), starts the peer transport, the ingest router and the search
//! coordinator (each an actor on a thread of its own), and the peer request dispatcher.
//! [`ClusterView`] is what they all share: this node's replicas and where the others are.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use parking_lot::{Mutex, RwLock};
use rushes_cluster::membership::ClusterMap;
use rushes_cluster::{NodeId, RaftSettings, ShardId, ShardMap};
use rushes_config::{Config, Metric, Quantization};
use rushes_protocol::peer::{ApplyOutcome, AssetRead, PeerReply};
use rushes_protocol::validate::{IngestLimits, ParsedItem, VectorSpaceSpec as SpaceLimit};
use rushes_protocol::{ApiError, AssetHits, AssetRecord, IngestReply, SearchRequest, SearchResponse};

use crate::actors::{actix_capacity, dedicated_arbiter, ActorKind, ActorStats, ActorView, Mailbox, MailboxError, ThreadPriority};
use crate::coordinator::{self, Coordinator};
use crate::ingest::router::{self, IngestRouter};
use crate::metrics::Metrics;
use crate::peer::ClusterNet;
use crate::query::plan::Plan;
use crate::query::planner::Planner;
use crate::search::sessions::RemoteSearches;
use crate::shard::{RaftOutbox, Shard, ShardError, ShardOptions};
use crate::storage::index::{VectorMetric, VectorQuantization, VectorSpaceSpec};

/// Batches the ingest router takes at once beyond those in flight; more are refused (429).
const ROUTER_MAILBOX_CAPACITY: usize = 256;
/// Searches waiting for the coordinator to admit them (admission is immediate: it only takes
/// a search slot and starts the work).
const COORDINATOR_MAILBOX_CAPACITY: usize = 1024;

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
        log_retain_bytes: config.raft.log_retain_bytes,
        snapshot_log_bytes: config.raft.snapshot_log_bytes,
        compaction_interval_ms: config.raft.compaction_interval_ms,
        bucket_ms: config.fusion.bucket_ms,
        fusion_batch_entries_max: config.fusion.batch_entries_max as u64,
        commit_interval_ms: config.index.commit_interval_ms,
        writer_heap_bytes: config.index.writer_heap_bytes,
        label_cache_bytes_per_document: config.search.label_cache_bytes_per_document,
        min_free_disk_bytes: config.limits.min_free_disk_bytes,
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

/// The validation limits of an ingest batch, from config.
pub fn ingest_limits(config: &Config) -> IngestLimits {
    let limits = &config.limits;
    IngestLimits {
        max_batch_items: limits.max_batch_items,
        max_id_bytes: limits.max_id_bytes,
        max_asset_id_bytes: limits.max_asset_id_bytes,
        max_name_bytes: limits.max_name_bytes,
        max_label_bytes: limits.max_label_bytes,
        max_text_bytes: limits.max_text_bytes,
        max_interval_ms: limits.max_interval_ms,
        max_time_ms: limits.max_time_ms,
        // A body caps what one annotation in it can be.
        max_annotation_bytes: limits.max_annotation_bytes.min(limits.max_body_bytes),
        vector_spaces: config.vector_spaces.iter().map(|s| SpaceLimit { name: s.name.clone(), dimensions: s.dimensions }).collect(),
    }
}

/// This node's replicas and where the other shards live: what the ingest router, the
/// coordinator, the planner and the peer dispatcher share. The replicas and the shard map
/// change when the cluster map does (`meta::orchestrator::follow_map`); readers take a
/// snapshot (`shards()`, `shard_map()`) and never hold a lock across an await.
pub struct ClusterView {
    pub config: Config,
    /// This node's replicas by shard id.
    replicas: RwLock<BTreeMap<ShardId, Arc<Shard>>>,
    /// Every shard's voters and holders: from config until the cluster map is known.
    shard_map: RwLock<Arc<ShardMap>>,
    /// The replicated cluster map this node follows (`None` on a single node, or before the
    /// metadata group has one).
    cluster_map: RwLock<Option<Arc<ClusterMap>>>,
    /// The peer transport; `None` on a single node.
    pub net: Option<Arc<ClusterNet>>,
    pub metrics: Arc<Metrics>,
}

impl ClusterView {
    pub fn node_id(&self) -> NodeId {
        self.config.node.id
    }

    /// This node's replicas, in shard order (a snapshot).
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.replicas.read().values().cloned().collect()
    }

    /// This node's replica of `shard`, if it holds one.
    pub fn local_shard(&self, shard: ShardId) -> Option<Arc<Shard>> {
        self.replicas.read().get(&shard).cloned()
    }

    /// Where every shard lives now (a snapshot).
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.shard_map.read().clone()
    }

    pub fn cluster_map(&self) -> Option<Arc<ClusterMap>> {
        self.cluster_map.read().clone()
    }

    /// Follows a new cluster map: routing goes to its voters from now on.
    pub fn set_cluster_map(&self, map: Arc<ClusterMap>) {
        *self.shard_map.write() = Arc::new(ShardMap::from_cluster_map(&map));
        *self.cluster_map.write() = Some(map);
    }

    pub fn insert_replica(&self, shard: Arc<Shard>) {
        self.replicas.write().insert(shard.id, shard);
    }

    pub fn remove_replica(&self, shard: ShardId) -> Option<Arc<Shard>> {
        self.replicas.write().remove(&shard)
    }

    /// The local replica of the asset's shard, or a retryable error naming the nodes that hold it.
    pub fn shard_of(&self, asset_id: &str) -> Result<Arc<Shard>, ApiError> {
        let map = self.shard_map();
        let shard = map.shard_for_asset(asset_id);
        self.local_shard(shard).ok_or_else(|| {
            ApiError::unavailable(format!(
                "asset {asset_id:?} lives on shard {shard}, which this node does not hold; ask one of nodes {:?}",
                map.replicas(shard)
            ))
        })
    }

    /// Shards none of whose replicas is on this node.
    pub fn missing_shards(&self) -> Vec<ShardId> {
        let replicas = self.replicas.read();
        (0..self.shard_map().shard_count()).filter(|shard| !replicas.contains_key(shard)).collect()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.limits.request_timeout_ms)
    }

    /// Changes whenever anything is applied or indexed on any local shard (both only grow,
    /// and a replica opened or closed changes the sum too).
    pub fn data_version(&self) -> u64 {
        self.replicas
            .read()
            .values()
            .map(|s| s.progress.applied.load(Ordering::Acquire).wrapping_add(s.progress.indexed.load(Ordering::Acquire)))
            .fold(0u64, u64::wrapping_add)
    }
}

pub struct Node {
    pub config: Config,
    /// The API keys requests are checked against.
    pub api_keys: crate::http::auth::ApiKeys,
    /// Ingest body bytes read, parsed or being stored now (`limits.ingest_bytes_in_flight_max`).
    pub ingest_bytes: BytesInFlight,
    pub view: Arc<ClusterView>,
    pub metrics: Arc<Metrics>,
    pub ingest_limits: IngestLimits,
    pub planner: Arc<Planner>,
    /// Other nodes' searches between their phases on this node's replicas.
    pub remote_searches: Arc<RemoteSearches>,
    router: Mailbox<IngestRouter>,
    coordinator: Mailbox<Coordinator>,
    /// The data version whose label moments are all in suggest's cache (benchmarks wait for it).
    pub suggest_warmed_version: Arc<AtomicU64>,
    /// The router's and the coordinator's threads.
    arbiters: Mutex<Vec<actix::Arbiter>>,
    pub started: Instant,
    /// This node's replica of the metadata group (`None` on a single node, and on a joining
    /// node until it is a member).
    pub meta: RwLock<Option<Arc<crate::meta::MetaGroup>>>,
    /// Joining, moves in flight as last observed, replica open/close bookkeeping.
    pub membership: crate::meta::orchestrator::MembershipState,
}

impl Node {
    pub fn open(config: Config) -> Result<Arc<Node>, ShardError> {
        Node::open_with_demo_seed(config, rushes_sample::GenConfig::default().seed)
    }

    /// `demo_seed`: the generated season the demo embedder (`[embedder] url = "demo"`) knows.
    pub fn open_with_demo_seed(config: Config, demo_seed: u64) -> Result<Arc<Node>, ShardError> {
        crate::actors::ensure_system();
        let metrics = Arc::new(Metrics::new());
        let options = shard_options(&config);
        let shard_map = shard_map(&config)?;
        let identity = crate::storage::identity::DataDirIdentity {
            format: crate::storage::identity::IDENTITY_FORMAT,
            cluster_id: config.cluster.cluster_id.clone(),
            node_id: config.node.id,
            shard_count: config.cluster.shards,
        };
        crate::storage::identity::check_or_record(&config.node.data_dir, &identity).map_err(|e| ShardError::Config(e.to_string()))?;
        let (net, inbound) = if config.cluster.nodes.is_empty() {
            (None, None)
        } else {
            let (net, inbound) = ClusterNet::start(&config).map_err(|e| ShardError::Config(e.to_string()))?;
            (Some(net), Some(inbound))
        };
        let outbox: Option<Arc<dyn RaftOutbox>> = net.clone().map(|n| n as Arc<dyn RaftOutbox>);
        crate::meta::orchestrator::remove_leftover_replicas(&config.node.data_dir);
        // The metadata group: opened from its log if this node has one; created with the
        // bootstrap map (from config) on a bootstrap node; left to the join on a joining node.
        let clustered = net.is_some();
        let joining = clustered && config.cluster.join && !crate::meta::orchestrator::has_meta_log(&config.node.data_dir);
        let meta = match (&outbox, joining) {
            (Some(outbox), false) => {
                let bootstrap = crate::meta::orchestrator::bootstrap_map(&config).map_err(ShardError::Config)?;
                let initial_voters = bootstrap.meta.voters.clone();
                let group = crate::meta::MetaGroup::open(
                    &config.node.data_dir,
                    config.node.id,
                    &initial_voters,
                    // A node that joined never bootstraps (its log holds the cluster's map).
                    (!config.cluster.join).then_some(bootstrap),
                    &options.raft,
                    Duration::from_millis(config.raft.tick_interval_ms),
                    outbox.clone(),
                    &metrics,
                )
                .map_err(|e| ShardError::Config(e.to_string()))?;
                Some(Arc::new(group))
            }
            _ => None,
        };
        let local_map = meta.as_ref().and_then(|m| m.current());
        if let Some(map) = &local_map {
            crate::meta::orchestrator::check_shard_count(map, &config).map_err(ShardError::Config)?;
        }
        let view = Arc::new(ClusterView {
            config: config.clone(),
            replicas: RwLock::new(BTreeMap::new()),
            shard_map: RwLock::new(Arc::new(shard_map.clone())),
            cluster_map: RwLock::new(None),
            net: net.clone(),
            metrics: metrics.clone(),
        });
        match &local_map {
            // The replicas the map this node has applied gives it (a restart after moves).
            Some(map) => {
                view.set_cluster_map(map.clone());
                for (id, initial_voters, joining) in crate::meta::orchestrator::replicas_to_open(map, config.node.id) {
                    let replica = Shard::open_replica(
                        &config.node.data_dir,
                        id,
                        &initial_voters,
                        joining,
                        &options,
                        metrics.clone(),
                        outbox.clone(),
                    )?;
                    view.insert_replica(replica);
                }
            }
            // A joining node opens replicas once the cluster map gives it some.
            None if joining => {}
            None => {
                for id in shard_map.shards_on(config.node.id) {
                    view.insert_replica(Shard::open(&config.node.data_dir, id, &options, metrics.clone(), outbox.clone())?);
                }
            }
        }
        let planner = Arc::new(Planner::new(view.clone(), demo_seed).map_err(ShardError::Config)?);
        let remote_searches = Arc::new(RemoteSearches::new(view.request_timeout()));
        let suggest_warmed_version = Arc::new(AtomicU64::new(u64::MAX));

        let router_arbiter = dedicated_arbiter("ingest-router".into(), ThreadPriority::Normal)?;
        let router_stats = ActorStats::new(&metrics, ActorKind::IngestRouter, None, "ingest-router", ROUTER_MAILBOX_CAPACITY);
        let router_actor = IngestRouter::new(view.clone(), router_stats.clone());
        let router = Mailbox::new(
            IngestRouter::start_in_arbiter(&router_arbiter.handle(), move |ctx| {
                ctx.set_mailbox_capacity(actix_capacity(ROUTER_MAILBOX_CAPACITY));
                router_actor
            }),
            router_stats,
        );
        let coordinator_arbiter = dedicated_arbiter("coordinator".into(), ThreadPriority::Normal)?;
        let coordinator_stats = ActorStats::new(&metrics, ActorKind::Coordinator, None, "coordinator", COORDINATOR_MAILBOX_CAPACITY);
        let coordinator_actor = Coordinator::new(view.clone(), planner.clone(), coordinator_stats.clone(), suggest_warmed_version.clone());
        let coordinator = Mailbox::new(
            Coordinator::start_in_arbiter(&coordinator_arbiter.handle(), move |ctx| {
                ctx.set_mailbox_capacity(actix_capacity(COORDINATOR_MAILBOX_CAPACITY));
                coordinator_actor
            }),
            coordinator_stats,
        );
        let node = Arc::new(Node {
            api_keys: crate::http::auth::ApiKeys::from_config(&config),
            ingest_bytes: BytesInFlight::new(config.limits.ingest_bytes_in_flight_max),
            ingest_limits: ingest_limits(&config),
            config,
            view,
            metrics,
            planner,
            remote_searches,
            router,
            coordinator,
            suggest_warmed_version,
            arbiters: Mutex::new(vec![router_arbiter, coordinator_arbiter]),
            started: Instant::now(),
            meta: RwLock::new(meta),
            membership: crate::meta::orchestrator::MembershipState::new(options, joining),
        });
        if let (Some(net), Some(inbound)) = (net, inbound) {
            net.runtime().spawn(crate::peer::serve::serve_peers(Arc::downgrade(&node), inbound));
            net.runtime().spawn(crate::meta::orchestrator::run(Arc::downgrade(&node)));
            net.runtime().spawn(crate::shard::recovery::run(Arc::downgrade(&node)));
        } else if let Some(router_arbiter) = node.arbiters.lock().first() {
            // A node without peers reopens its failed replicas too; the router's thread has
            // the time (the task sleeps between checks and reopens on the blocking pool).
            router_arbiter.spawn(crate::shard::recovery::run(Arc::downgrade(&node)));
        }
        Ok(node)
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node.id
    }

    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.view.shards()
    }

    pub fn meta(&self) -> Option<Arc<crate::meta::MetaGroup>> {
        self.meta.read().clone()
    }

    pub fn net(&self) -> Option<&Arc<ClusterNet>> {
        self.view.net.as_ref()
    }

    /// Stores a validated batch: replies once every annotation is committed and durable.
    pub async fn ingest(&self, items: Vec<ParsedItem>) -> Result<IngestReply, ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.router.try_send(router::Ingest { items, reply }).map_err(busy)?;
        answer.await.map_err(|_| stopped("ingest router"))?
    }

    /// Stores an asset record (through its shard's leader).
    pub async fn upsert_asset(&self, asset_id: &str, record: AssetRecord) -> Result<(), ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.router.try_send(router::UpsertAsset { asset_id: asset_id.to_string(), record, reply }).map_err(busy)?;
        answer.await.map_err(|_| stopped("ingest router"))?
    }

    /// Proposes a delete or purge on `shard` through its leader; replies once it is applied.
    pub async fn propose_change(&self, shard: ShardId, command: rushes_protocol::model::ShardCommand) -> Result<ApplyOutcome, ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.router.try_send(router::ProposeChange { shard, command, reply }).map_err(busy)?;
        answer.await.map_err(|_| stopped("ingest router"))?
    }

    /// Deletes an asset on every replica of its shard (idempotent).
    pub async fn delete_asset(&self, asset_id: &str) -> Result<ApplyOutcome, ApiError> {
        let shard = self.view.shard_map().shard_for_asset(asset_id);
        self.propose_change(shard, rushes_protocol::model::ShardCommand::DeleteAsset { asset_id: asset_id.to_string() }).await
    }

    /// Deletes one annotation on every replica of its shard (idempotent).
    pub async fn delete_annotation(&self, asset_id: &str, annotation_id: &str) -> Result<ApplyOutcome, ApiError> {
        let shard = self.view.shard_map().shard_for_asset(asset_id);
        let command = rushes_protocol::model::ShardCommand::DeleteAnnotation {
            asset_id: asset_id.to_string(),
            annotation_id: annotation_id.to_string(),
        };
        self.propose_change(shard, command).await
    }

    /// Purges superseded model versions on every shard: each shard's list of assets with more
    /// than one version of a model comes from a replica, and one purge command per shard
    /// (in chunks of `limits.max_batch_items` assets) goes through its leader. Returns the
    /// assets purged and the annotations removed.
    pub async fn purge_superseded(&self) -> Result<(usize, usize), ApiError> {
        let (mut assets_purged, mut deleted) = (0, 0);
        for shard in 0..self.view.shard_map().shard_count() {
            let assets = match self.view.local_shard(shard) {
                Some(replica) => tokio::task::spawn_blocking(move || replica.store.assets_with_superseded_versions())
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .map_err(|e| ApiError::internal(e.to_string()))?,
                None => {
                    let net = self.net().ok_or_else(|| ApiError::unavailable(format!("shard {shard} has no replica here")))?;
                    let deadline = tokio::time::Instant::now() + self.view.request_timeout();
                    let replicas = self.view.shard_map().replicas(shard).to_vec();
                    match crate::peer::hedge::hedged_call(
                        net,
                        &replicas,
                        rushes_protocol::peer::PeerRequest::SupersededAssets { shard },
                        deadline,
                    )
                    .await?
                    .1
                    {
                        PeerReply::Assets(assets) => assets,
                        PeerReply::Error(e) => return Err(e),
                        other => return Err(ApiError::internal(format!("unexpected reply: {}", other.kind()))),
                    }
                }
            };
            for chunk in assets.chunks(self.config.limits.max_batch_items.max(1)) {
                let command = rushes_protocol::model::ShardCommand::PurgeSuperseded { asset_ids: chunk.to_vec() };
                if let ApplyOutcome::Deleted { annotations } = self.propose_change(shard, command).await? {
                    deleted += annotations;
                }
                assets_purged += chunk.len();
            }
        }
        Ok((assets_purged, deleted))
    }

    pub async fn search(&self, request: SearchRequest) -> Result<SearchResponse, ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.coordinator.try_send(coordinator::Search { request, reply }).map_err(busy)?;
        answer.await.map_err(|_| stopped("coordinator"))?
    }

    /// The plan `request` becomes, without running it.
    pub async fn explain(&self, request: SearchRequest) -> Result<Plan, ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.coordinator.try_send(coordinator::Explain { request, reply }).map_err(busy)?;
        answer.await.map_err(|_| stopped("coordinator"))?
    }

    /// The top moments of a completed suggestion (cached while the data is unchanged).
    pub async fn suggest_moments(&self, query: &str) -> Vec<AssetHits> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.coordinator.try_send(coordinator::SuggestMoments { query: query.to_string(), reply }).is_err() {
            return vec![];
        }
        answer.await.unwrap_or_default()
    }

    /// One asset's data from this node's replica, or forwarded to one that holds it.
    pub async fn read_asset(&self, read: AssetRead, strong: bool) -> Result<PeerReply, ApiError> {
        coordinator::reads::read_asset(&self.view, read, strong).await
    }

    /// The node-level actors (ingest router, coordinator), then every local replica's.
    pub fn actors(&self) -> Vec<ActorView> {
        let mut actors = vec![self.router.stats().view(), self.coordinator.stats().view()];
        if let Some(meta) = self.meta() {
            actors.push(meta.actor());
        }
        for shard in self.shards() {
            actors.extend(shard.actors());
        }
        actors
    }

    /// Sets the per-stage watermark and lag gauges and the actors' mailbox gauges (cheap:
    /// atomics only).
    pub fn refresh_gauges(&self) {
        for s in self.shards() {
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
            s.refresh_actor_gauges();
        }
        self.router.stats().refresh_gauges();
        self.coordinator.stats().refresh_gauges();
        for s in self.shards() {
            let fetched = s.progress.snapshot_bytes_fetched.load(Ordering::Acquire);
            self.metrics.snapshot_bytes_fetched.with_label_values(&[&s.id.to_string()]).set(fetched as i64);
        }
        if let Some(meta) = self.meta() {
            meta.refresh_gauges();
        }
        if let Some(map) = self.view.cluster_map() {
            for (what, value) in [
                ("epoch", map.epoch as i64),
                ("moves_in_flight", map.moves_in_flight() as i64),
                ("moves_queued", map.queued.len() as i64),
                ("members", map.members.len() as i64),
            ] {
                self.metrics.cluster_map.with_label_values(&[what]).set(value);
            }
        }
    }

    /// True when every shard has indexed everything it applied.
    pub fn is_caught_up(&self) -> bool {
        self.shards().iter().all(|s| s.progress.indexed.load(Ordering::Acquire) >= s.progress.applied.load(Ordering::Acquire))
    }

    pub fn data_version(&self) -> u64 {
        self.view.data_version()
    }

    pub fn total_raw_annotations(&self) -> usize {
        self.shards().iter().map(|s| s.store.raw_count()).sum()
    }

    /// Stops the node's actors (router and coordinator first, then every replica's), and
    /// flushes the stores. Blocking.
    pub fn shutdown(&self) {
        for arbiter in self.arbiters.lock().drain(..) {
            arbiter.stop();
            let _ = arbiter.join();
        }
        if let Some(meta) = self.meta() {
            meta.shutdown();
        }
        for shard in self.shards() {
            shard.shutdown();
        }
        for shard in self.shards() {
            if let Err(e) = shard.store.flush() {
                tracing::error!(shard = shard.id, error = %e, "final flush failed");
            }
        }
    }
}

/// A global bound on bytes held by requests in flight (ingest bodies from arrival until stored).
pub struct BytesInFlight {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
}

/// Returns its bytes when dropped.
pub struct BytesReservation<'a> {
    pool: &'a BytesInFlight,
    bytes: usize,
}

impl Drop for BytesReservation<'_> {
    fn drop(&mut self) {
        self.pool.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl BytesInFlight {
    pub fn new(max: usize) -> BytesInFlight {
        BytesInFlight { used: std::sync::atomic::AtomicUsize::new(0), max }
    }

    /// Takes `bytes`, or answers 429 with Retry-After when that would pass the bound. A single
    /// request larger than the whole bound is still let through when nothing else is held, so
    /// no legal request waits forever.
    pub fn reserve(&self, bytes: usize) -> Result<BytesReservation<'_>, ApiError> {
        let taken = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used == 0 || used.saturating_add(bytes) <= self.max).then(|| used.saturating_add(bytes))
        });
        match taken {
            Ok(_) => Ok(BytesReservation { pool: self, bytes }),
            Err(used) => Err(ApiError::overloaded(format!(
                "{used} bytes of ingest are in flight on this node (limits.ingest_bytes_in_flight_max = {}); retry after the advertised delay",
                self.max
            ))),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// A full node-level mailbox is overload; a closed one means the node is stopping.
fn busy(error: MailboxError) -> ApiError {
    match error {
        MailboxError::Full { .. } => ApiError::overloaded(format!("{error}; retry shortly")),
        MailboxError::Closed { .. } => ApiError::unavailable(format!("{error}: the node is stopping; retry on another node")),
    }
}

fn stopped(actor: &str) -> ApiError {
    ApiError::unavailable(format!("the {actor} stopped before answering: the node is stopping; retry (ids are idempotent)"))
}
