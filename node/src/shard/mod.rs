//! One shard replica on this node, as three actors, each on a thread of its own:
//!
//! ```text
//! Propose / Step / ReadIndex ─► Raft actor (normal priority): propose, persist the log with one
//!   (bounded mailbox; full = 429) │ group-commit flush, send, apply committed entries to the raw
//!                                 │ store, answer waiting clients; tick, compact
//!                                 │ Wake (applied index moved)
//!                                 ▼
//!                              fusion actor (nice 10): entries (fused, applied] ─► affected
//!                                 │ buckets ─► sled; fused watermark   [supervised, restarts]
//!                                 │ Wake
//!                                 ▼
//!                              index actor (nice 10): entries (indexed, fused] ─► Tantivy docs +
//!                                   usearch; commit every commit_interval_ms with the watermark
//!                                   as payload ─► indexed watermark (watch: strong reads, lag)
//!                                                                      [supervised, restarts]
//! ```
//! Each stage persists its watermark after its writes and derives its work from the Raft log,
//! so a crash or a restart at any point resumes with no loss and no duplicates (re-applying is
//! idempotent). [`Shard`] is the handle the rest of the node uses: it admits writes (bounds on
//! queued proposals and on indexing lag), delivers peers' messages, serves strong reads, and
//! reports the actors' state.

pub mod fusion;
mod fusion_actor;
mod index_actor;
mod machine;
mod progress;
mod raft_actor;
pub mod recovery;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Supervisor};
use parking_lot::Mutex;
use raft::eraftpb::Message;
use rushes_cluster::log_store::{RaftLogStore, SledLogStore};
use rushes_cluster::{NodeId, RaftDriver, RaftSettings, ShardId};
use rushes_protocol::codec;
use rushes_protocol::model::ShardCommand;
use rushes_protocol::ApiError;

use self::fusion::{refuse_asset, AffectedBuckets};
use self::fusion_actor::FusionActor;
pub use self::index_actor::sync_asset_vectors;
use self::index_actor::IndexActor;
use self::machine::ShardMachine;
pub use self::progress::Progress;
use self::raft_actor::{Compaction, RaftActor};
use crate::actors::{actix_capacity, dedicated_arbiter, ensure_system, ActorKind, ActorStats, ActorView, Mailbox, ThreadPriority};
use crate::metrics::Metrics;
use crate::storage::disk_guard::DiskGuard;
use crate::storage::index::{IndexError, ShardIndex, VectorSpaceSpec};
use crate::storage::store::{ApplyOutcome, ShardStore, StoreError, Watermark};

/// Peers' Raft messages the Raft actor's mailbox holds beside proposals and reads; past it a
/// message is dropped (Raft retransmits).
const RAFT_PEER_MESSAGES_MAX: usize = 4096;
/// Strong reads waiting to reach the Raft actor; more are refused as overload.
const READ_INDEX_WAITERS_MAX: usize = 1024;
/// Wakes and shutdown: a fusion or index actor needs at most one wake waiting.
const STAGE_MAILBOX_CAPACITY: usize = 16;
/// How long shutdown waits for each actor to finish what it holds.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

/// Where a shard replica's outgoing Raft messages go. Implemented over the peer transport in
/// the node; never blocks (a full queue drops the message, Raft retransmits).
pub trait RaftOutbox: Send + Sync {
    /// Queues `message` for node `to`; false when it could not be queued.
    fn send(&self, to: NodeId, shard: ShardId, message: Message) -> bool;
}

#[derive(Debug, Clone)]
pub struct ShardOptions {
    pub node_id: NodeId,
    /// Replicas of each shard (the same on every node; this node must be among them for the
    /// shards it opens). Empty means every shard is a one-voter group of `node_id`.
    pub replicas: BTreeMap<ShardId, Vec<NodeId>>,
    pub raft: RaftSettings,
    pub tick_interval_ms: u64,
    pub proposal_queue_depth: usize,
    /// Applied but not yet indexed log entries above which proposals are refused (busy).
    pub unindexed_entries_max: u64,
    /// Applied but not yet indexed annotations above which proposals are refused (busy).
    pub unindexed_annotations_max: u64,
    pub group_commit_max_requests: usize,
    pub log_retain_entries: u64,
    pub snapshot_log_entries: u64,
    pub log_retain_bytes: u64,
    pub snapshot_log_bytes: u64,
    pub compaction_interval_ms: u64,
    pub bucket_ms: u64,
    pub fusion_batch_entries_max: u64,
    pub commit_interval_ms: u64,
    pub writer_heap_bytes: usize,
    /// `search.label_cache_bytes_per_document`.
    pub label_cache_bytes_per_document: usize,
    pub vector_spaces: Vec<VectorSpaceSpec>,
    /// `limits.min_free_disk_bytes`: below it the replica takes no writes ([`DiskGuard`]).
    pub min_free_disk_bytes: u64,
}

/// What can go wrong with a shard replica. Mapped to the API's error codes in one place
/// ([`From<ShardError> for ApiError`]), at the HTTP and peer boundaries.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// This replica cannot take the write; `leader` is who it believes leads.
    #[error("this replica does not lead shard {shard} (leader: {leader:?})")]
    NotLeader { shard: ShardId, leader: Option<NodeId> },
    /// This replica proposed the write, then stopped leading before it committed: the next
    /// leader may commit it or drop it, and nobody here can tell which yet.
    #[error("this replica stopped leading shard {shard} after the write was proposed (leader now: {leader:?}); it may still be applied")]
    LeadershipLost { shard: ShardId, leader: Option<NodeId> },
    /// A bound was reached (queued proposals, strong reads, indexing lag): retry later.
    #[error("shard {shard} is busy: {reason}")]
    Busy { shard: ShardId, reason: String },
    /// The Raft actor stopped on a failure; the replica refuses writes until it is reopened
    /// ([`recovery`]).
    #[error("shard {shard} stopped after a failure: {cause}")]
    Failed { shard: ShardId, cause: String },
    #[error("shard {shard} is stopping")]
    Stopping { shard: ShardId },
    /// The data directory's file system is below `limits.min_free_disk_bytes`.
    #[error("the disk of {path} has {free_bytes} bytes free, below limits.min_free_disk_bytes ({min_free_bytes}): shard {shard} takes no writes on this node until space returns")]
    DiskFull { shard: ShardId, path: String, free_bytes: u64, min_free_bytes: u64 },
    /// The command was committed, then refused on every replica when applied (nothing stored).
    #[error("shard {shard} refused entry {index} when applying it: {reason}")]
    Rejected { shard: ShardId, index: u64, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Log(#[from] rushes_cluster::log_store::LogStoreError),
    #[error(transparent)]
    Raft(#[from] rushes_cluster::DriverError),
    #[error("codec: {0}")]
    Codec(#[from] codec::CodecError),
    #[error(transparent)]
    Machine(#[from] machine::MachineError),
    #[error("log entry {0} is missing (compacted before every stage consumed it)")]
    MissingEntry(u64),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
}

impl ShardError {
    /// Why a replica on `disk` takes no writes: its file system is below
    /// `limits.min_free_disk_bytes`.
    pub fn disk_full(shard: ShardId, disk: &DiskGuard) -> ShardError {
        ShardError::DiskFull {
            shard,
            path: disk.path().display().to_string(),
            free_bytes: disk.free_bytes().unwrap_or(0),
            min_free_bytes: disk.min_free_bytes(),
        }
    }
}

impl From<ShardError> for ApiError {
    fn from(error: ShardError) -> ApiError {
        match &error {
            ShardError::NotLeader { shard, leader } => ApiError::unavailable(format!(
                "this node's replica does not lead shard {shard}{}; retry (ids are idempotent)",
                leader.map(|l| format!(" (node {l} does)")).unwrap_or_default()
            )),
            ShardError::LeadershipLost { shard, .. } => ApiError::new(
                rushes_protocol::ErrorCode::Timeout,
                format!("the leader of shard {shard} changed while the write was in flight: it may or may not be applied; read it back before writing it again"),
            )
            .with_retry_after(1),
            ShardError::Busy { reason, .. } => ApiError::overloaded(format!("{reason}; retry after the advertised delay")),
            ShardError::Failed { shard, cause } => ApiError::unavailable(format!(
                "shard {shard} stopped on this node after a failure ({cause}); it refuses writes until it is reopened from its disk (retried automatically): see /health"
            ))
            .with_retry_after(5),
            ShardError::Rejected { reason, .. } => ApiError::field(
                "body",
                format!("the write was refused when applied, and nothing was stored: {reason}; fix the batch and send it again"),
            ),
            ShardError::DiskFull { .. } => {
                ApiError::unavailable(format!("{error}; free space on that disk, or retry (ids are idempotent)")).with_retry_after(5)
            }
            ShardError::Stopping { shard } => {
                ApiError::unavailable(format!("shard {shard} is stopping; retry the same request (ids are idempotent)"))
            }
            _ => ApiError::internal(error.to_string()),
        }
    }
}

/// A counted bound on messages of one kind waiting in a mailbox that holds several kinds
/// (proposals and strong reads beside peers' messages in the Raft actor's).
pub struct SlotCounter {
    used: AtomicUsize,
    capacity: usize,
}

impl SlotCounter {
    fn new(capacity: usize) -> SlotCounter {
        SlotCounter { used: AtomicUsize::new(0), capacity }
    }

    fn try_acquire(&self) -> bool {
        let acquired = self.used.fetch_add(1, Ordering::AcqRel) < self.capacity;
        if !acquired {
            self.release();
        }
        acquired
    }

    fn release(&self) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(1)));
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Test-only faults, off unless the node runs with fault injection on (`RUSHES_FAULT_INJECTION`):
/// the next batches of a fusion or index actor panic, to exercise supervision.
#[derive(Default)]
pub struct FaultHooks {
    fusion_panics: AtomicU32,
    index_panics: AtomicU32,
}

impl FaultHooks {
    fn counter(&self, actor: ActorKind) -> Option<&AtomicU32> {
        match actor {
            ActorKind::Fusion => Some(&self.fusion_panics),
            ActorKind::Index => Some(&self.index_panics),
            _ => None,
        }
    }

    /// Panics if a panic is pending for `actor` (each injected panic fires once).
    fn maybe_panic(&self, actor: ActorKind, shard: ShardId) {
        let Some(counter) = self.counter(actor) else { return };
        if counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok() {
            panic!("injected fault: the {} actor of shard {shard} panics", actor.as_str());
        }
    }
}

/// This node's replica of one shard: its storage, its progress, and the mailboxes of its
/// Raft, fusion and index actors.
pub struct Shard {
    pub id: ShardId,
    pub voters: Vec<NodeId>,
    pub store: Arc<ShardStore>,
    pub index: Arc<ShardIndex>,
    /// Rankings derived from the index's cached label hits (see `LeafRankings`).
    pub leaf_rankings: crate::search::LeafRankings,
    pub log: SledLogStore,
    pub progress: Arc<Progress>,
    /// The free-space floor of this replica's directory.
    pub disk: Arc<DiskGuard>,
    pub bucket_ms: u64,
    raft: Mailbox<RaftActor>,
    fusion: Mailbox<FusionActor>,
    indexer: Mailbox<IndexActor>,
    pending_proposals: Arc<SlotCounter>,
    pending_reads: Arc<SlotCounter>,
    unindexed_entries_max: u64,
    unindexed_annotations_max: u64,
    indexed_watch: tokio::sync::watch::Receiver<u64>,
    /// The actors' threads, stopped at shutdown.
    arbiters: Mutex<Vec<actix::Arbiter>>,
    /// Held while the staging area changes, and by the Raft actor from checking a snapshot
    /// message against it until the snapshot is installed: a new fetch never empties the
    /// staging area under an install.
    staging: Arc<Mutex<()>>,
    /// A snapshot fetch is running (one at a time; messages meanwhile are dropped).
    fetching_snapshot: AtomicBool,
    faults: Arc<FaultHooks>,
    compaction: Compaction,
}

/// Clears [`Shard::fetching_snapshot`] when a fetch ends, however it ends.
pub struct SnapshotFetch<'a>(&'a AtomicBool);

impl Drop for SnapshotFetch<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub fn shard_dir(data_dir: &Path, shard: ShardId) -> PathBuf {
    data_dir.join("shards").join(format!("{shard:04}"))
}

impl Shard {
    /// Opens the replica's storage, catches its indexes up to a new format if needed, and
    /// starts its three actors, each on a thread of its own.
    pub fn open(
        data_dir: &Path,
        id: ShardId,
        options: &ShardOptions,
        metrics: Arc<Metrics>,
        outbox: Option<Arc<dyn RaftOutbox>>,
    ) -> Result<Arc<Shard>, ShardError> {
        let voters = options.replicas.get(&id).cloned().unwrap_or_else(|| vec![options.node_id]);
        Shard::open_replica(data_dir, id, &voters, false, options, metrics, outbox)
    }

    /// [`Shard::open`] with the group's initial voters given. A `joining` replica (the target
    /// of a move) is not among them: it starts with the group's first configuration and an
    /// empty log, and learns every later one from the leader's log or snapshot.
    pub fn open_replica(
        data_dir: &Path,
        id: ShardId,
        initial_voters: &[NodeId],
        joining: bool,
        options: &ShardOptions,
        metrics: Arc<Metrics>,
        outbox: Option<Arc<dyn RaftOutbox>>,
    ) -> Result<Arc<Shard>, ShardError> {
        ensure_system();
        let voters = initial_voters.to_vec();
        if !joining && !voters.contains(&options.node_id) {
            return Err(ShardError::Config(format!("node {} is not a replica of shard {id} (replicas: {voters:?})", options.node_id)));
        }
        if (voters.len() > 1 || joining) && outbox.is_none() {
            return Err(ShardError::Config(format!("shard {id} has {} replicas but the node has no peer transport", voters.len())));
        }
        let dir = shard_dir(data_dir, id);
        std::fs::create_dir_all(&dir)?;
        let disk = Arc::new(DiskGuard::new(&dir, options.min_free_disk_bytes));
        let store = Arc::new(ShardStore::open(&dir.join("store"))?);
        migrate_legacy_buckets(&store, &disk, id, options.bucket_ms)?;
        let log = SledLogStore::open(&store.db, &voters)?;
        snapshot::mark_stored_snapshot_current(&log)?;
        let index = Arc::new(ShardIndex::open(&dir.join("index"), &options.vector_spaces, options.writer_heap_bytes)?);
        index.leaf_hits.set_bytes_per_document(options.label_cache_bytes_per_document);
        let progress = Arc::new(Progress::default());
        let applied = store.watermark(Watermark::Applied)?;
        let fused = store.watermark(Watermark::Fused)?.min(applied);
        if index.needs_full_reindex {
            let started = Instant::now();
            let docs = index_actor::reindex_everything(&store, &index, fused)?;
            index.mark_format_current()?;
            if docs > 0 {
                tracing::info!(
                    shard = id,
                    docs,
                    seconds = started.elapsed().as_secs_f64(),
                    "rebuilt the index from buckets (new index format)"
                );
            }
        }
        // Vectors loaded from disk get their flat copy from the keys the store maps (a superset
        // of the indexed ones: the key map is written before the vectors file is saved).
        for space in &index.vectors {
            let keys = store.vector_keys.iter().keys().filter_map(Result::ok);
            space.fill_flat(keys.filter_map(|key| <[u8; 8]>::try_from(key.as_ref()).ok().map(u64::from_be_bytes)));
        }
        let indexed = index.committed_watermark().min(fused);
        progress.applied.store(applied, Ordering::Release);
        progress.fused.store(fused, Ordering::Release);
        progress.indexed.store(indexed, Ordering::Release);
        progress.commit.store(log.hard_state().commit, Ordering::Release);

        let boot_nonce: u64 = rand::random();
        let driver = {
            let mut no_waiters = HashMap::new();
            let mut machine = ShardMachine {
                shard: id,
                store: &store,
                progress: &progress,
                metrics: &metrics,
                waiters: &mut no_waiters,
                node_id: options.node_id,
                boot_nonce,
            };
            RaftDriver::open(options.node_id, id, &options.raft, log.clone(), applied, &mut machine)?
        };
        if driver.applied_index() > applied {
            // Restored from the stored snapshot: the stages re-derive from the raw store.
            store.set_watermark(Watermark::Applied, driver.applied_index())?;
            store.flush()?;
            progress.applied.store(driver.applied_index(), Ordering::Release);
        }
        if store.staged_snapshot()?.is_some_and(|staged| staged <= driver.applied_index()) {
            store.clear_staging()?;
        }

        let (indexed_tx, indexed_rx) = tokio::sync::watch::channel(indexed);
        let faults = Arc::new(FaultHooks::default());
        let staging = Arc::new(Mutex::new(()));
        let pending_proposals = Arc::new(SlotCounter::new(options.proposal_queue_depth));
        let pending_reads = Arc::new(SlotCounter::new(READ_INDEX_WAITERS_MAX));
        let thread_name = |kind: ActorKind| format!("{}-{id}", kind.as_str());
        let raft_arbiter = dedicated_arbiter(thread_name(ActorKind::Raft), ThreadPriority::Normal)?;
        let fusion_arbiter = dedicated_arbiter(thread_name(ActorKind::Fusion), ThreadPriority::Background)?;
        let index_arbiter = dedicated_arbiter(thread_name(ActorKind::Index), ThreadPriority::Background)?;

        // Started downstream first: each actor holds the mailbox of the stage after it.
        let index_stats = ActorStats::new(&metrics, ActorKind::Index, Some(id), thread_name(ActorKind::Index), STAGE_MAILBOX_CAPACITY);
        let index_actor = IndexActor {
            shard: id,
            disk: disk.clone(),
            store: store.clone(),
            log: log.clone(),
            index: index.clone(),
            progress: progress.clone(),
            metrics: metrics.clone(),
            stats: index_stats.clone(),
            faults: faults.clone(),
            indexed_tx,
            bucket_ms: options.bucket_ms,
            batch_entries_max: options.fusion_batch_entries_max,
            commit_interval: Duration::from_millis(options.commit_interval_ms),
            processed: indexed,
            last_commit: Instant::now(),
            last_vector_save: Instant::now(),
            consecutive_failures: 0,
            batch_scheduled: false,
            stopping: false,
        };
        let indexer = Mailbox::new(
            Supervisor::start_in_arbiter(&index_arbiter.handle(), move |ctx| {
                ctx.set_mailbox_capacity(actix_capacity(STAGE_MAILBOX_CAPACITY));
                index_actor
            }),
            index_stats,
        );
        let fusion_stats = ActorStats::new(&metrics, ActorKind::Fusion, Some(id), thread_name(ActorKind::Fusion), STAGE_MAILBOX_CAPACITY);
        let fusion_actor = FusionActor {
            shard: id,
            disk: disk.clone(),
            store: store.clone(),
            log: log.clone(),
            progress: progress.clone(),
            metrics: metrics.clone(),
            stats: fusion_stats.clone(),
            faults: faults.clone(),
            index: indexer.clone(),
            bucket_ms: options.bucket_ms,
            batch_entries_max: options.fusion_batch_entries_max,
            consecutive_failures: 0,
            batch_scheduled: false,
            stopping: false,
        };
        let fusion = Mailbox::new(
            Supervisor::start_in_arbiter(&fusion_arbiter.handle(), move |ctx| {
                ctx.set_mailbox_capacity(actix_capacity(STAGE_MAILBOX_CAPACITY));
                fusion_actor
            }),
            fusion_stats,
        );
        let compaction = Compaction {
            interval: Duration::from_millis(options.compaction_interval_ms),
            retain_entries: options.log_retain_entries,
            snapshot_entries: options.snapshot_log_entries,
            retain_bytes: options.log_retain_bytes,
            snapshot_bytes: options.snapshot_log_bytes,
        };
        let raft_capacity = options.proposal_queue_depth + RAFT_PEER_MESSAGES_MAX + READ_INDEX_WAITERS_MAX;
        let raft_stats = ActorStats::new(&metrics, ActorKind::Raft, Some(id), thread_name(ActorKind::Raft), raft_capacity);
        let raft_actor = RaftActor {
            disk: disk.clone(),
            disk_full_logged: false,
            node_id: options.node_id,
            boot_nonce,
            shard: id,
            driver,
            store: store.clone(),
            index: index.clone(),
            progress: progress.clone(),
            metrics: metrics.clone(),
            stats: raft_stats.clone(),
            fusion: fusion.clone(),
            outbox,
            pending_proposals: pending_proposals.clone(),
            pending_reads: pending_reads.clone(),
            tick_interval: Duration::from_millis(options.tick_interval_ms),
            group_commit_max_requests: options.group_commit_max_requests.max(1),
            single_voter: voters == [options.node_id],
            staging: staging.clone(),
            compaction,
            waiters: HashMap::new(),
            reads: HashMap::new(),
            next_request_id: 1,
            ready_scheduled: false,
            proposals_since_ready: 0,
            messages_since_ready: 0,
        };
        let raft = Mailbox::new(
            RaftActor::start_in_arbiter(&raft_arbiter.handle(), move |ctx| {
                ctx.set_mailbox_capacity(actix_capacity(raft_capacity));
                raft_actor
            }),
            raft_stats,
        );
        Ok(Arc::new(Shard {
            compaction,
            leaf_rankings: crate::search::LeafRankings::default(),
            id,
            voters,
            store,
            index,
            log,
            progress,
            disk,
            bucket_ms: options.bucket_ms,
            raft,
            fusion,
            indexer,
            pending_proposals,
            pending_reads,
            unindexed_entries_max: options.unindexed_entries_max,
            unindexed_annotations_max: options.unindexed_annotations_max,
            indexed_watch: indexed_rx,
            arbiters: Mutex::new(vec![raft_arbiter, fusion_arbiter, index_arbiter]),
            staging,
            fetching_snapshot: AtomicBool::new(false),
            faults,
        }))
    }

    /// Encodes and proposes a command (see [`Shard::propose_encoded`]).
    pub fn propose(&self, command: &ShardCommand) -> Result<ProposalReceiver, ShardError> {
        self.propose_encoded(command.encode()?)
    }

    /// Queues an encoded command for the Raft actor; the receiver gets the outcome once it is
    /// committed and applied. Never waits: a full queue, a failed or a stopping replica, and an
    /// index too far behind are errors at once.
    pub fn propose_encoded(&self, bytes: Vec<u8>) -> Result<ProposalReceiver, ShardError> {
        if let Some(cause) = self.progress.failure() {
            return Err(ShardError::Failed { shard: self.id, cause });
        }
        // Indexing yields the CPU to writes (a lower thread priority): refuse new writes while
        // it is far behind, so the searchable lag stays bounded under sustained overload.
        let unindexed = self.progress.applied.load(Ordering::Acquire).saturating_sub(self.progress.indexed.load(Ordering::Acquire));
        if unindexed > self.unindexed_entries_max {
            return Err(self.busy(format!(
                "{unindexed} log entries applied but not yet indexed (limits.unindexed_entries_max = {})",
                self.unindexed_entries_max
            )));
        }
        let unindexed_annotations = self.progress.unindexed_annotations();
        if unindexed_annotations > self.unindexed_annotations_max {
            return Err(self.busy(format!(
                "{unindexed_annotations} annotations applied but not yet indexed (limits.unindexed_annotations_max = {})",
                self.unindexed_annotations_max
            )));
        }
        if !self.pending_proposals.try_acquire() {
            return Err(self.busy(format!("{} writes already wait for the Raft actor", self.pending_proposals.capacity)));
        }
        let (reply, receiver) = tokio::sync::oneshot::channel();
        match self.raft.try_send(raft_actor::Propose { command: bytes, reply }) {
            Ok(()) => Ok(receiver),
            Err(error) => {
                self.pending_proposals.release();
                Err(self.mailbox_error(error))
            }
        }
    }

    fn busy(&self, reason: String) -> ShardError {
        ShardError::Busy { shard: self.id, reason: format!("shard {} has {reason}", self.id) }
    }

    fn mailbox_error(&self, error: crate::actors::MailboxError) -> ShardError {
        match error {
            crate::actors::MailboxError::Full { .. } => self.busy(format!("a full Raft mailbox ({error})")),
            crate::actors::MailboxError::Closed { .. } => match self.progress.failure() {
                Some(cause) => ShardError::Failed { shard: self.id, cause },
                None => ShardError::Stopping { shard: self.id },
            },
        }
    }

    /// Writes waiting for the Raft actor.
    pub fn queue_depth(&self) -> usize {
        self.pending_proposals.used()
    }

    /// Claims the one snapshot fetch this replica runs at a time; `None` while one runs.
    pub fn start_snapshot_fetch(&self) -> Option<SnapshotFetch<'_>> {
        // `then`, not `then_some`: an eagerly built guard would be dropped on refusal, clearing
        // the flag under the running fetch (two fetches then emptied each other's staging area,
        // and one installed a partial copy).
        (!self.fetching_snapshot.swap(true, Ordering::AcqRel)).then(|| SnapshotFetch(&self.fetching_snapshot))
    }

    /// Runs `work` on the store's snapshot staging area while no install can start (blocking:
    /// sled, and waits for an install in progress).
    pub fn with_staging<T>(&self, work: impl FnOnce(&ShardStore) -> T) -> T {
        let _guard = self.staging.lock();
        work(&self.store)
    }

    /// Hands a peer's Raft message to the Raft actor. Never waits: a full mailbox drops it
    /// (Raft retransmits).
    pub fn deliver_raft(&self, message: Message) -> bool {
        self.raft.try_send(raft_actor::Step(message)).is_ok()
    }

    /// The leader known to this replica, if any.
    pub fn leader(&self) -> Option<NodeId> {
        match self.progress.leader.load(Ordering::Acquire) {
            0 => None,
            leader => Some(leader),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.progress.is_leader.load(Ordering::Acquire)
    }

    /// Proposes a configuration change or leader transfer on this replica (its leader).
    pub async fn change_group(&self, change: rushes_cluster::membership::GroupChange) -> Result<(), ShardError> {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        self.raft.try_send(raft_actor::ChangeGroup { change, reply }).map_err(|e| self.mailbox_error(e))?;
        receiver.await.map_err(|_| ShardError::Stopping { shard: self.id })?
    }

    /// The group's configuration if this replica leads it.
    pub async fn observe(&self, added: Option<NodeId>) -> Option<rushes_cluster::membership::GroupObservation> {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        self.raft.try_send(raft_actor::Observe { added, reply }).ok()?;
        receiver.await.ok().flatten()
    }

    /// Strong read: asks the group for a read index (confirmed by a quorum at the leader) and
    /// waits until this replica has indexed through it. False when that did not happen within
    /// `timeout` (no leader, lost quorum, or slow indexing).
    pub async fn wait_read_index(&self, timeout: Duration) -> Result<bool, ShardError> {
        if !self.pending_reads.try_acquire() {
            return Err(self.busy(format!("{READ_INDEX_WAITERS_MAX} strong reads waiting")));
        }
        let (reply, receiver) = tokio::sync::oneshot::channel();
        if let Err(error) = self.raft.try_send(raft_actor::ReadIndex { reply }) {
            self.pending_reads.release();
            return Err(self.mailbox_error(error));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(Ok(read_index)) = tokio::time::timeout_at(deadline, receiver).await else { return Ok(false) };
        let mut watch = self.indexed_watch.clone();
        Ok(tokio::time::timeout_at(deadline, watch.wait_for(|&indexed| indexed >= read_index)).await.is_ok_and(|r| r.is_ok()))
    }

    /// Waits until everything committed before the call is searchable, or the deadline passes.
    pub async fn wait_searchable(&self, timeout: Duration) -> bool {
        let target = self.progress.commit.load(Ordering::Acquire).max(self.progress.applied.load(Ordering::Acquire));
        let mut watch = self.indexed_watch.clone();
        tokio::time::timeout(timeout, watch.wait_for(|&indexed| indexed >= target)).await.is_ok_and(|r| r.is_ok())
    }

    pub fn indexed_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.indexed_watch.clone()
    }

    /// The replica's actors, for the actor map of `/v1/cluster`.
    pub fn actors(&self) -> Vec<ActorView> {
        [self.raft.stats(), self.fusion.stats(), self.indexer.stats()].into_iter().map(|stats| stats.view()).collect()
    }

    /// Copies each actor's mailbox depth into its gauge (before `/metrics` renders).
    pub fn refresh_actor_gauges(&self) {
        for stats in [self.raft.stats(), self.fusion.stats(), self.indexer.stats()] {
            stats.refresh_gauges();
        }
    }

    /// Makes the next `panics` batches of the fusion or index actor panic (fault injection).
    pub fn inject_panics(&self, actor: ActorKind, panics: u32) -> Result<(), String> {
        let counter = self
            .faults
            .counter(actor)
            .ok_or_else(|| format!("the {} actor has no injectable fault; use fusion or index", actor.as_str()))?;
        counter.fetch_add(panics, Ordering::AcqRel);
        // Wake it, so a panic fires as soon as there is work.
        let _ = match actor {
            ActorKind::Fusion => self.fusion.try_send(fusion_actor::Wake),
            _ => self.indexer.try_send(index_actor::Wake),
        };
        Ok(())
    }

    /// Stops the actors in pipeline order after they finish what is in hand (the index actor
    /// indexes what fusion passed and commits), then their threads. Blocking.
    pub fn shutdown(&self) {
        let wait = |what: &str, done: std::sync::mpsc::Receiver<()>| {
            if done.recv_timeout(SHUTDOWN_WAIT).is_err() {
                tracing::debug!(shard = self.id, actor = what, "actor was already stopped or did not confirm its shutdown");
            }
        };
        let (done, confirmed) = std::sync::mpsc::sync_channel(1);
        self.raft.send_control(raft_actor::Shutdown { done });
        wait("raft", confirmed);
        let (done, confirmed) = std::sync::mpsc::sync_channel(1);
        self.fusion.send_control(fusion_actor::Shutdown { done });
        wait("fusion", confirmed);
        let (done, confirmed) = std::sync::mpsc::sync_channel(1);
        self.indexer.send_control(index_actor::Shutdown { done });
        wait("index", confirmed);
        for arbiter in self.arbiters.lock().drain(..) {
            arbiter.stop();
            let _ = arbiter.join();
        }
        // The actors' threads are gone, so nothing appends meanwhile, and the index actor's
        // last commit made what it consumed durable: a shard with no other replica drops the
        // log entries before the retained ones now, so a stopped data dir holds no more log
        // than the budget, however long ago the periodic compaction ran. (A replicated shard
        // compacts by snapshots, which need its running group.)
        let durable = self
            .progress
            .fused
            .load(Ordering::Acquire)
            .min(self.index.durable_watermark())
            .min(self.progress.applied.load(Ordering::Acquire));
        if let Err(e) = raft_actor::compact_alone(&self.log, &self.compaction, durable, false) {
            tracing::warn!(shard = self.id, error = %e, "could not compact the log at shutdown");
        }
    }
}

/// Where a proposal's outcome arrives.
pub type ProposalReceiver = tokio::sync::oneshot::Receiver<Result<ApplyOutcome, ShardError>>;

/// Buckets stored one per key by versions before blocks are fused again into blocks, before the
/// actors start. Fusion is a pure function of the stored annotations, so the blocks hold what
/// the old buckets held (and what fusion would add for entries applied but not yet fused,
/// which it then recomputes identically); the index's documents stay true. An interrupted
/// migration runs again whole at the next start.
fn migrate_legacy_buckets(store: &ShardStore, disk: &DiskGuard, id: ShardId, bucket_ms: u64) -> Result<(), ShardError> {
    let assets = store.assets_with_legacy_buckets()?;
    if assets.is_empty() {
        return Ok(());
    }
    // The blocks are written while the old buckets still take their space.
    if !disk.has_room() {
        return Err(ShardError::DiskFull {
            shard: id,
            path: disk.path().display().to_string(),
            free_bytes: disk.free_bytes().unwrap_or(0),
            min_free_bytes: disk.min_free_bytes(),
        });
    }
    let started = Instant::now();
    tracing::info!(shard = id, assets = assets.len(), "storing buckets by block (new storage format): fusing every asset again");
    for asset_id in &assets {
        refuse_asset(store, asset_id, &AffectedBuckets::All, bucket_ms)?;
    }
    store.flush()?;
    store.drop_legacy_buckets()?;
    store.flush()?;
    tracing::info!(shard = id, assets = assets.len(), seconds = started.elapsed().as_secs_f64(), "buckets stored by block");
    Ok(())
}

/// Recreates buckets and indexes of a closed shard from its raw store (`rushes rebuild`).
pub fn rebuild_shard(data_dir: &Path, id: ShardId, options: &ShardOptions) -> Result<(usize, usize), ShardError> {
    let dir = shard_dir(data_dir, id);
    let store = ShardStore::open(&dir.join("store"))?;
    let index = ShardIndex::open(&dir.join("index"), &options.vector_spaces, options.writer_heap_bytes)?;
    let applied = store.watermark(Watermark::Applied)?;
    store.clear_derived()?;
    index.clear()?;
    let mut assets = 0;
    let mut docs = 0;
    for (_, asset_id) in store.all_assets() {
        refuse_asset(&store, &asset_id, &AffectedBuckets::All, options.bucket_ms)?;
        sync_asset_vectors(&store, &index, &asset_id)?;
        docs += index.reindex_asset(&store, &asset_id)?;
        assets += 1;
    }
    index.commit(applied, true)?;
    index.mark_format_current()?;
    store.set_watermark(Watermark::Fused, applied)?;
    store.set_watermark(Watermark::Indexed, applied)?;
    store.flush()?;
    Ok((assets, docs))
}

/// The ingest command of NDJSON annotation lines, validated as the HTTP ingest does (tests of
/// other modules).
#[cfg(test)]
pub(crate) fn ingest_command_of(ndjson: &str) -> ShardCommand {
    use rushes_protocol::model::{IngestItem, StoredAnnotation};
    use rushes_protocol::validate::{parse_batch, BodyFormat};
    let limits = crate::node::ingest_limits(&rushes_config::Config::default());
    let items = parse_batch(ndjson.as_bytes(), BodyFormat::Ndjson, &limits)
        .expect("valid batch")
        .into_iter()
        .map(|item| {
            let (annotation, vector) = StoredAnnotation::from_validated(item.annotation);
            IngestItem { raw_json: item.raw_json, annotation, vector }
        })
        .collect();
    ShardCommand::Ingest { items }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rushes_client::wait::wait_until;
    use rushes_protocol::ErrorCode;

    const WAIT: Duration = Duration::from_secs(30);

    fn open_shard(dir: &Path, configure: impl FnOnce(&mut ShardOptions)) -> Arc<Shard> {
        let mut options = crate::node::shard_options(&rushes_config::Config::default());
        configure(&mut options);
        let shard = Shard::open(dir, 0, &options, Arc::new(Metrics::new()), None).expect("open shard");
        wait_until("the single voter leads", WAIT, || shard.is_leader());
        shard
    }

    /// An ingest command of `count` character annotations of two seconds each on `asset`.
    fn ingest_command(asset: &str, first: usize, count: usize) -> ShardCommand {
        let lines: String = (first..first + count)
            .map(|i| {
                format!(
                    "{{\"id\":\"a{i}\",\"asset_id\":\"{asset}\",\"model\":\"faces\",\"model_version\":\"1\",\"track\":\"character\",\
                     \"start_ms\":{},\"end_ms\":{},\"label\":\"Joey\",\"confidence\":0.9}}\n",
                    i * 2000,
                    i * 2000 + 2000
                )
            })
            .collect();
        ingest_command_of(&lines)
    }

    fn commit(shard: &Shard, command: &ShardCommand) -> ApplyOutcome {
        let receiver = shard.propose(command).expect("proposal accepted");
        receiver.blocking_recv().expect("the Raft actor answers").expect("applied")
    }

    fn actor(shard: &Shard, kind: ActorKind) -> ActorView {
        shard.actors().into_iter().find(|a| a.actor == kind.as_str()).expect("the replica has this actor")
    }

    /// Opens a one-voter shard with `configure`d options and makes indexing look behind with
    /// `fall_behind(shard, indexed)`: a write must be refused as overloaded, retryable, naming
    /// `limit`, with nothing queued. After `catch_up(shard, indexed)` the same write commits.
    /// Returns the refusal as the API shows it.
    fn refused_until_indexing_catches_up(
        limit: &str,
        configure: impl FnOnce(&mut ShardOptions),
        fall_behind: impl FnOnce(&Shard, u64),
        catch_up: impl FnOnce(&Shard, u64),
    ) -> ApiError {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = open_shard(dir.path(), configure);
        let command = ShardCommand::UpsertAsset { asset_id: "ep1".into(), record: rushes_protocol::model::StoredAsset::default() };
        let indexed = shard.progress.indexed.load(Ordering::Acquire);
        fall_behind(&shard, indexed);
        let refused = ApiError::from(shard.propose(&command).expect_err("refused while indexing is behind"));
        assert_eq!(refused.code, ErrorCode::Overloaded);
        assert!(refused.retry_after_s.is_some(), "{refused:?}");
        assert!(refused.message.contains(limit), "{}", refused.message);
        assert_eq!(shard.queue_depth(), 0);
        catch_up(&shard, indexed);
        commit(&shard, &command);
        wait_until("the asset is stored", WAIT, || shard.store.asset_record("ep1").ok().flatten().is_some());
        shard.shutdown();
        refused
    }

    #[test]
    fn writes_are_refused_while_too_many_annotations_wait_for_indexing() {
        let refused = refused_until_indexing_catches_up(
            "limits.unindexed_annotations_max",
            |options| options.unindexed_annotations_max = 1_000,
            // One entry far ahead of indexing holds more annotations than the limit.
            |shard, indexed| shard.progress.record_applied_annotations(indexed + 1_000, 1_001),
            |shard, indexed| {
                shard.progress.indexed.fetch_max(indexed + 1_000, Ordering::AcqRel);
            },
        );
        assert!(refused.message.contains("1001 annotations"), "{}", refused.message);
    }

    #[test]
    fn writes_are_refused_with_retry_after_while_indexing_is_far_behind() {
        refused_until_indexing_catches_up(
            "limits.unindexed_entries_max",
            |options| options.unindexed_entries_max = 16,
            |shard, indexed| shard.progress.applied.store(indexed + 1_000_000, Ordering::Release),
            |shard, indexed| shard.progress.applied.store(indexed, Ordering::Release),
        );
    }

    /// One snapshot fetch at a time: a refused second attempt must leave the first one's claim
    /// in place (an eagerly built guard once cleared it, and two fetches overwrote each
    /// other's staging area).
    #[test]
    fn a_refused_snapshot_fetch_leaves_the_running_one_exclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = open_shard(dir.path(), |_| {});
        let running = shard.start_snapshot_fetch().expect("the first fetch starts");
        for _ in 0..3 {
            assert!(shard.start_snapshot_fetch().is_none(), "a second fetch started while one runs");
        }
        drop(running);
        assert!(shard.start_snapshot_fetch().is_some(), "a fetch starts once the previous one ended");
        shard.shutdown();
    }

    /// Supervision: an index actor that panics in the middle of a batch is restarted (counted,
    /// with the cause), drops what it had not committed, and indexes every acknowledged
    /// annotation from its durable watermark; writes keep being acknowledged meanwhile.
    #[test]
    fn a_panicking_index_actor_restarts_and_catches_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = open_shard(dir.path(), |options| options.commit_interval_ms = 50);
        commit(&shard, &ingest_command("ep1", 0, 10));
        wait_until("the first batch is indexed", WAIT, || shard.index.num_docs() == 20);
        let indexed_before = shard.progress.indexed.load(Ordering::Acquire);
        shard.inject_panics(ActorKind::Index, 2).expect("index faults are injectable");
        for batch in 1..=3 {
            assert!(matches!(commit(&shard, &ingest_command("ep1", batch * 10, 10)), ApplyOutcome::Applied { created: 10, .. }));
        }
        wait_until("every acknowledged annotation is indexed", WAIT, || {
            shard.progress.indexed.load(Ordering::Acquire) >= shard.progress.applied.load(Ordering::Acquire) && shard.index.num_docs() == 80
        });
        assert!(shard.progress.indexed.load(Ordering::Acquire) > indexed_before);
        assert_eq!(shard.store.bucket_count() as u64, shard.index.num_docs(), "one document per bucket, none twice");
        let index = actor(&shard, ActorKind::Index);
        assert_eq!(index.restarts, 2, "{index:?}");
        assert!(index.last_error.as_deref().is_some_and(|e| e.contains("injected fault")), "{index:?}");
        assert_eq!(actor(&shard, ActorKind::Raft).restarts, 0);
        assert!(shard.progress.failure().is_none(), "a derived stage's failure does not fail the shard");
        shard.shutdown();
    }

    /// A store written by a version that kept one bucket per key opens with its buckets stored
    /// by block: the same buckets, the same count, the old tree emptied, the index untouched,
    /// and fusion going on from there.
    #[test]
    fn buckets_stored_one_per_key_are_migrated_to_blocks_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = open_shard(dir.path(), |options| options.commit_interval_ms = 50);
        commit(&shard, &ingest_command("ep1", 0, 40));
        commit(&shard, &ingest_command("ep2", 5, 3));
        wait_until("fused and indexed", WAIT, || shard.index.num_docs() == 86);
        let before: Vec<_> = ["ep1", "ep2"].iter().map(|a| shard.store.bucket_range(a, 0, u64::MAX).expect("buckets")).collect();
        let segments = |shard: &Shard| -> Vec<_> {
            shard.index.reader.searcher().segment_readers().iter().map(|segment| segment.segment_id()).collect()
        };
        let segments_before = segments(&shard);
        shard.shutdown();
        drop(shard);
        {
            let store = ShardStore::open(&shard_dir(dir.path(), 0).join("store")).expect("store");
            store.store_buckets_as_legacy().expect("legacy buckets");
            assert_eq!(store.assets_with_legacy_buckets().expect("legacy"), ["ep1", "ep2"]);
            assert_eq!(store.bucket("ep1", 3).expect("read"), None, "no block is left");
            store.flush().expect("flush");
        }
        let shard = open_shard(dir.path(), |options| options.commit_interval_ms = 50);
        let after: Vec<_> = ["ep1", "ep2"].iter().map(|a| shard.store.bucket_range(a, 0, u64::MAX).expect("buckets")).collect();
        assert_eq!(after, before);
        assert_eq!(shard.store.bucket_count(), 86);
        assert!(shard.store.assets_with_legacy_buckets().expect("legacy").is_empty());
        assert_eq!(segments(&shard), segments_before, "the index is not rebuilt");
        commit(&shard, &ingest_command("ep1", 40, 10));
        wait_until("the next batch is fused and indexed", WAIT, || shard.index.num_docs() == 106 && shard.store.bucket_count() == 106);
        shard.shutdown();
    }

    #[test]
    fn a_panicking_fusion_actor_restarts_and_every_bucket_is_fused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = open_shard(dir.path(), |options| options.commit_interval_ms = 50);
        shard.inject_panics(ActorKind::Fusion, 1).expect("fusion faults are injectable");
        commit(&shard, &ingest_command("ep2", 0, 25));
        wait_until("fused and indexed", WAIT, || shard.index.num_docs() == 50);
        assert_eq!(shard.store.bucket_count(), 50);
        assert_eq!(actor(&shard, ActorKind::Fusion).restarts, 1);
        assert!(shard.inject_panics(ActorKind::Raft, 1).is_err(), "the Raft actor is not restarted, so it takes no injected panic");
        shard.shutdown();
    }

    /// No committed entry can stop a shard: bytes that do not decode, and a command that breaks
    /// the hard limits, are rejected on apply (the writer is told, nothing is stored), the shard
    /// goes on, and replaying them after a restart rejects them again instead of failing.
    #[test]
    fn an_entry_that_does_not_decode_or_validate_is_rejected_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = open_shard(dir.path(), |_| {});
        let rejected = |bytes: Vec<u8>| match shard.propose_encoded(bytes).expect("queued").blocking_recv() {
            Ok(Err(ShardError::Rejected { reason, .. })) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        };
        let garbage = rejected(vec![rushes_protocol::model::SHARD_COMMAND_FORMAT, 0xff, 0xff, 0xff, 0x7f, 1]);
        assert!(garbage.contains("does not decode"), "{garbage}");
        let empty =
            rejected(codec::encode(rushes_protocol::model::SHARD_COMMAND_FORMAT, &ShardCommand::Ingest { items: vec![] }).expect("encode"));
        assert!(empty.contains("1..="), "{empty}");
        assert!(
            ApiError::from(ShardError::Rejected { shard: 0, index: 1, reason: empty }).code == rushes_protocol::ErrorCode::InvalidField
        );
        commit(&shard, &ingest_command("ep4", 0, 3));
        wait_until("the valid write is indexed", WAIT, || shard.index.num_docs() == 6);
        assert!(shard.progress.failure().is_none());
        assert_eq!(shard.store.raw_count(), 3, "the rejected entries stored nothing");
        let applied = shard.progress.applied.load(Ordering::Acquire);
        shard.shutdown();
        drop(shard);
        let reopened = open_shard(dir.path(), |_| {});
        wait_until("the log is replayed", WAIT, || reopened.progress.applied.load(Ordering::Acquire) >= applied);
        assert!(reopened.progress.failure().is_none(), "replaying a rejected entry must not stop the shard");
        commit(&reopened, &ingest_command("ep4", 3, 1));
        assert_eq!(reopened.store.raw_count(), 4);
        reopened.shutdown();
    }

    #[test]
    fn the_actor_map_shows_each_actor_with_its_mailbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = open_shard(dir.path(), |options| options.proposal_queue_depth = 7);
        commit(&shard, &ingest_command("ep3", 0, 1));
        let actors = shard.actors();
        let kinds: Vec<&str> = actors.iter().map(|a| a.actor.as_str()).collect();
        assert_eq!(kinds, ["raft", "fusion", "index"]);
        let raft = &actors[0];
        assert_eq!(raft.mailbox_capacity as usize, 7 + RAFT_PEER_MESSAGES_MAX + READ_INDEX_WAITERS_MAX);
        assert!(raft.messages_handled >= 1, "{raft:?}");
        assert_eq!(raft.thread, "raft-0");
        assert!(actors.iter().all(|a| a.shard == Some(0) && a.restarts == 0 && a.last_error.is_none()));
        shard.shutdown();
        assert!(shard.actors().iter().all(|a| a.state == "stopped"), "{:?}", shard.actors());
        // A stopped replica refuses writes with a retryable error, never a hang.
        let refused = ApiError::from(shard.propose(&ingest_command("ep3", 1, 1)).expect_err("refused"));
        assert_eq!(refused.code, ErrorCode::Unavailable, "{refused:?}");
    }
}
