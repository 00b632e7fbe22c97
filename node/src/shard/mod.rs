//! One shard replica at run time: three stages on their own OS threads (they do blocking disk
//! work, so they stay off the async executor), connected by watermarks and doorbells.
//!
//! ```text
//! proposals (bounded) ─► raft thread: propose, persist log + group-commit flush, apply to raw
//!                          │ applied index (doorbell)
//!                          ▼
//!                        fusion thread: log entries (fused, applied] ─► affected buckets ─► sled
//!                          │ fused index (doorbell)
//!                          ▼
//!                        index thread: entries (indexed, fused] ─► Tantivy docs + usearch
//!                          │ commit every commit_interval_ms with the watermark as payload
//!                          ▼ indexed index (watch channel: queries and lag metrics)
//! ```
//! Each stage persists its watermark after its writes, and derives its work from the Raft log,
//! so a crash at any point resumes with no loss and no duplicates (re-applying is idempotent).

pub mod fusion;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use raft::eraftpb::{Entry, Message, MessageType};
use rushes_cluster::log_store::{RaftLogStore, SledLogStore};
use rushes_cluster::{NodeId, RaftDriver, RaftSettings, ShardId, StateMachine};
use rushes_protocol::codec;
use rushes_protocol::model::{ShardCommand, SHARD_COMMAND_FORMAT};
use rushes_protocol::ApiError;

use crate::metrics::Metrics;
use crate::shard::fusion::{active_versions, affected_by_command, refuse_asset, AffectedBuckets};
use crate::storage::index::{put_vector_target, vector_key, IndexError, ShardIndex, VectorSpaceSpec, VectorTarget};
use crate::storage::store::{ApplyOutcome, ShardStore, StoreError, Watermark, LEGACY_RAW_SNAPSHOT_FORMAT};

/// Vector files are large; they are saved less often than Tantivy commits. Replay from the log
/// covers the gap after a crash (the log is kept until both are durable).
const VECTOR_SAVE_INTERVAL: Duration = Duration::from_secs(30);
/// Inbound Raft messages waiting for the raft thread; a full inbox drops (Raft retransmits).
const RAFT_INBOX_DEPTH: usize = 4096;
/// Strong reads waiting for a read index; more are refused as overload.
const READ_INDEX_WAITERS_MAX: usize = 4096;

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
    pub compaction_interval_ms: u64,
    pub bucket_ms: u64,
    pub fusion_batch_entries_max: u64,
    pub commit_interval_ms: u64,
    pub writer_heap_bytes: usize,
    pub vector_spaces: Vec<VectorSpaceSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
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
    #[error("log entry {0} is missing (compacted before every stage consumed it)")]
    MissingEntry(u64),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
}

pub type ProposalReply = tokio::sync::oneshot::Sender<Result<ApplyOutcome, ApiError>>;

struct Proposal {
    command: Vec<u8>,
    reply: ProposalReply,
}

/// Stage watermarks, readable from anywhere without locks.
#[derive(Default)]
pub struct Progress {
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    pub fused: AtomicU64,
    pub indexed: AtomicU64,
    pub is_leader: AtomicBool,
    /// The leader this replica knows of (0: none).
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub failed: AtomicBool,
    /// Snapshots from other replicas installed since this process started.
    pub snapshots_installed: AtomicU64,
    /// Snapshot chunks and raw store bytes fetched from other replicas, and the time spent in
    /// fetches (finished or failed), since this process started.
    pub snapshot_chunks_fetched: AtomicU64,
    pub snapshot_bytes_fetched: AtomicU64,
    pub snapshot_fetch_ms: AtomicU64,
    /// (log index, when it was applied) for the ingest → searchable lag; bounded.
    apply_times: Mutex<VecDeque<(u64, Instant)>>,
    /// Ingest entries applied but not yet indexed, with their annotation counts.
    unindexed: Mutex<UnindexedAnnotations>,
}

/// Annotations applied but not yet indexed: what `limits.unindexed_annotations_max` bounds
/// (an entry holds from one annotation to `limits.max_batch_items`, so a count of entries
/// alone is a weak bound). Entries applied before this process started are not
/// counted; `limits.unindexed_entries_max` bounds those. An indexed watermark that jumps (a
/// snapshot re-derived whole) drops every entry it covers.
#[derive(Default)]
struct UnindexedAnnotations {
    /// (log index, annotations), in index order.
    entries: VecDeque<(u64, u64)>,
    total: u64,
}

impl UnindexedAnnotations {
    fn drop_indexed(&mut self, indexed: u64) {
        while let Some(&(index, annotations)) = self.entries.front() {
            if index > indexed {
                break;
            }
            self.total -= annotations;
            self.entries.pop_front();
        }
    }
}

const APPLY_TIMES_MAX: usize = 4096;

impl Progress {
    fn record_applied(&self, index: u64) {
        let mut times = self.apply_times.lock();
        if times.len() >= APPLY_TIMES_MAX {
            times.pop_front();
        }
        times.push_back((index, Instant::now()));
    }

    /// Counts an applied ingest entry's annotations until indexing passes it.
    fn record_applied_annotations(&self, index: u64, annotations: u64) {
        let indexed = self.indexed.load(Ordering::Acquire);
        let mut unindexed = self.unindexed.lock();
        unindexed.drop_indexed(indexed);
        if index > indexed {
            unindexed.entries.push_back((index, annotations));
            unindexed.total += annotations;
        }
    }

    /// Annotations applied (since this process started) and not yet indexed.
    pub fn unindexed_annotations(&self) -> u64 {
        let indexed = self.indexed.load(Ordering::Acquire);
        let mut unindexed = self.unindexed.lock();
        unindexed.drop_indexed(indexed);
        unindexed.total
    }

    /// Seconds from apply to searchable for entries now covered by `indexed`.
    fn drain_searchable(&self, indexed: u64) -> Vec<f64> {
        let mut times = self.apply_times.lock();
        let mut lags = Vec::new();
        while let Some(&(index, at)) = times.front() {
            if index > indexed {
                break;
            }
            lags.push(at.elapsed().as_secs_f64());
            times.pop_front();
        }
        lags
    }
}

pub struct Shard {
    pub id: ShardId,
    pub voters: Vec<NodeId>,
    pub store: Arc<ShardStore>,
    pub index: Arc<ShardIndex>,
    pub log: SledLogStore,
    pub progress: Arc<Progress>,
    pub bucket_ms: u64,
    proposals: Sender<Proposal>,
    raft_inbox: Sender<Message>,
    read_requests: Sender<ReadRequest>,
    unindexed_entries_max: u64,
    unindexed_annotations_max: u64,
    indexed_watch: tokio::sync::watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Held while the staging area changes, and by the raft thread from checking a snapshot
    /// message against it until the snapshot is installed: a new fetch never empties the
    /// staging area under an install.
    staging: Arc<Mutex<()>>,
    /// A snapshot fetch is running (one at a time; messages meanwhile are dropped).
    fetching_snapshot: AtomicBool,
}

/// Clears [`Shard::fetching_snapshot`] when a fetch ends, however it ends.
pub struct SnapshotFetch<'a>(&'a AtomicBool);

impl Drop for SnapshotFetch<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A strong read waiting for the leader-confirmed commit index.
struct ReadRequest {
    reply: tokio::sync::oneshot::Sender<u64>,
}

pub fn shard_dir(data_dir: &Path, shard: ShardId) -> PathBuf {
    data_dir.join("shards").join(format!("{shard:04}"))
}

impl Shard {
    pub fn open(
        data_dir: &Path,
        id: ShardId,
        options: &ShardOptions,
        metrics: Arc<Metrics>,
        outbox: Option<Arc<dyn RaftOutbox>>,
    ) -> Result<Arc<Shard>, ShardError> {
        let voters = options.replicas.get(&id).cloned().unwrap_or_else(|| vec![options.node_id]);
        if !voters.contains(&options.node_id) {
            return Err(ShardError::Config(format!("node {} is not a replica of shard {id} (replicas: {voters:?})", options.node_id)));
        }
        if voters.len() > 1 && outbox.is_none() {
            return Err(ShardError::Config(format!("shard {id} has {} replicas but the node has no peer transport", voters.len())));
        }
        let dir = shard_dir(data_dir, id);
        std::fs::create_dir_all(&dir)?;
        let store = Arc::new(ShardStore::open(&dir.join("store"))?);
        let log = SledLogStore::open(&store.db, &voters)?;
        mark_stored_snapshot_current(&log)?;
        let index = Arc::new(ShardIndex::open(&dir.join("index"), &options.vector_spaces, options.writer_heap_bytes)?);
        let progress = Arc::new(Progress::default());
        let applied = store.watermark(Watermark::Applied)?;
        let fused = store.watermark(Watermark::Fused)?.min(applied);
        if index.needs_full_reindex {
            let started = Instant::now();
            let docs = reindex_everything(&store, &index, fused)?;
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
        let indexed = index.committed_watermark().min(fused);
        progress.applied.store(applied, Ordering::Release);
        progress.fused.store(fused, Ordering::Release);
        progress.indexed.store(indexed, Ordering::Release);
        progress.commit.store(log.hard_state().commit, Ordering::Release);

        let (proposal_tx, proposal_rx) = bounded(options.proposal_queue_depth);
        let (inbox_tx, inbox_rx) = bounded(RAFT_INBOX_DEPTH);
        let (read_tx, read_rx) = bounded(READ_INDEX_WAITERS_MAX);
        let (fusion_bell_tx, fusion_bell_rx) = bounded::<()>(1);
        let (index_bell_tx, index_bell_rx) = bounded::<()>(1);
        let (indexed_tx, indexed_rx) = tokio::sync::watch::channel(indexed);
        let stop = Arc::new(AtomicBool::new(false));
        let boot_nonce: u64 = rand::random();
        let driver = {
            let mut no_waiters = HashMap::new();
            let mut machine = ShardMachine {
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
        let staging = Arc::new(Mutex::new(()));

        let shard = Arc::new(Shard {
            id,
            voters: voters.clone(),
            store: store.clone(),
            index: index.clone(),
            log: log.clone(),
            progress: progress.clone(),
            bucket_ms: options.bucket_ms,
            proposals: proposal_tx,
            raft_inbox: inbox_tx,
            read_requests: read_tx,
            unindexed_entries_max: options.unindexed_entries_max,
            unindexed_annotations_max: options.unindexed_annotations_max,
            indexed_watch: indexed_rx,
            stop: stop.clone(),
            threads: Mutex::new(Vec::new()),
            staging: staging.clone(),
            fetching_snapshot: AtomicBool::new(false),
        });

        let raft_stage = RaftStage {
            node_id: options.node_id,
            boot_nonce,
            shard: id,
            driver,
            store: store.clone(),
            progress: progress.clone(),
            metrics: metrics.clone(),
            proposals: proposal_rx,
            inbox: inbox_rx,
            read_requests: read_rx,
            outbox,
            fusion_bell: fusion_bell_tx,
            stop: stop.clone(),
            tick_interval: Duration::from_millis(options.tick_interval_ms),
            group_commit_max_requests: options.group_commit_max_requests,
            single_voter: voters.len() == 1,
            index: index.clone(),
            staging,
            staging_clear_pending: false,
            compaction: Compaction {
                interval: Duration::from_millis(options.compaction_interval_ms),
                retain_entries: options.log_retain_entries,
                snapshot_entries: options.snapshot_log_entries,
            },
        };
        let fusion_stage = FusionStage {
            shard: id,
            store: store.clone(),
            log: log.clone(),
            progress: progress.clone(),
            metrics: metrics.clone(),
            bell: fusion_bell_rx,
            index_bell: index_bell_tx,
            stop: stop.clone(),
            bucket_ms: options.bucket_ms,
            batch_entries_max: options.fusion_batch_entries_max,
        };
        let index_stage = IndexStage {
            shard: id,
            store,
            log,
            index,
            progress,
            metrics,
            bell: index_bell_rx,
            indexed_tx,
            stop,
            bucket_ms: options.bucket_ms,
            batch_entries_max: options.fusion_batch_entries_max,
            commit_interval: Duration::from_millis(options.commit_interval_ms),
        };
        let mut threads = shard.threads.lock();
        threads.push(spawn_stage(format!("raft-{id}"), move || raft_stage.run()));
        threads.push(spawn_stage(format!("fusion-{id}"), move || {
            yield_cpu_to_writes();
            fusion_stage.run()
        }));
        threads.push(spawn_stage(format!("index-{id}"), move || {
            yield_cpu_to_writes();
            index_stage.run()
        }));
        drop(threads);
        Ok(shard)
    }

    /// Queues a command for the Raft group. Never blocks: a full queue is `Overloaded`.
    pub fn propose(&self, command: &ShardCommand) -> Result<tokio::sync::oneshot::Receiver<Result<ApplyOutcome, ApiError>>, ApiError> {
        let bytes = codec::encode(SHARD_COMMAND_FORMAT, command).map_err(|e| ApiError::internal(e.to_string()))?;
        self.propose_encoded(bytes)
    }

    /// Like [`Shard::propose`] for a command already encoded (off the async threads).
    pub fn propose_encoded(&self, bytes: Vec<u8>) -> Result<tokio::sync::oneshot::Receiver<Result<ApplyOutcome, ApiError>>, ApiError> {
        if self.progress.failed.load(Ordering::Acquire) {
            return Err(ApiError::unavailable(format!("shard {} stopped after a storage failure; see the node log", self.id)));
        }
        // Indexing yields the CPU to writes (see `yield_cpu_to_writes`): refuse new writes while
        // it is far behind, so the searchable lag stays bounded under sustained overload.
        let unindexed = self.progress.applied.load(Ordering::Acquire).saturating_sub(self.progress.indexed.load(Ordering::Acquire));
        if unindexed > self.unindexed_entries_max {
            return Err(ApiError::overloaded(format!(
                "shard {} has {unindexed} log entries applied but not yet indexed (limits.unindexed_entries_max = {}); retry after the advertised delay",
                self.id, self.unindexed_entries_max
            )));
        }
        let unindexed_annotations = self.progress.unindexed_annotations();
        if unindexed_annotations > self.unindexed_annotations_max {
            return Err(ApiError::overloaded(format!(
                "shard {} has {unindexed_annotations} annotations applied but not yet indexed (limits.unindexed_annotations_max = {}); retry after the advertised delay",
                self.id, self.unindexed_annotations_max
            )));
        }
        let (reply, receiver) = tokio::sync::oneshot::channel();
        match self.proposals.try_send(Proposal { command: bytes, reply }) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => {
                Err(ApiError::overloaded(format!("shard {} has too many writes waiting; retry after the advertised delay", self.id)))
            }
            Err(TrySendError::Disconnected(_)) => Err(ApiError::unavailable(format!("shard {} is stopping", self.id))),
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.proposals.len()
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

    /// Hands a peer's Raft message to the raft thread. Never blocks: a full inbox drops it
    /// (Raft retransmits).
    pub fn deliver_raft(&self, message: Message) -> bool {
        self.raft_inbox.try_send(message).is_ok()
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

    /// Strong read: asks the group for a read index (confirmed by a quorum at the leader) and
    /// waits until this replica has indexed through it. False when that did not happen within
    /// `timeout` (no leader, lost quorum, or slow indexing).
    pub async fn wait_read_index(&self, timeout: Duration) -> Result<bool, ApiError> {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        match self.read_requests.try_send(ReadRequest { reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ApiError::overloaded(format!("shard {} has too many strong reads waiting", self.id))),
            Err(TrySendError::Disconnected(_)) => return Err(ApiError::unavailable(format!("shard {} is stopping", self.id))),
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

    /// Stops the stages after they finish what is in hand (the index stage commits first).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let threads: Vec<JoinHandle<()>> = self.threads.lock().drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Nice value of the fusion and index threads (and of the Tantivy workers the index thread
/// starts at each commit).
#[cfg(target_os = "linux")]
const BACKGROUND_STAGE_NICE: libc::c_int = 10;

/// Fusion and indexing run behind the write path: when the CPU is short, the raft thread and
/// the HTTP workers (acknowledgements, searches) go first and the stages catch up from the
/// durable raw store afterwards. Linux nice values are per thread (elsewhere they would apply
/// to the whole process, so other systems keep the default priority).
#[cfg(target_os = "linux")]
fn yield_cpu_to_writes() {
    // SAFETY: plain syscalls on the calling thread's own id.
    let result = unsafe {
        let thread_id = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread_id, BACKGROUND_STAGE_NICE)
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a background stage's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_cpu_to_writes() {}

fn spawn_stage(name: String, body: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new().name(name.clone()).spawn(body).unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

/// Proposal context: (node id, boot nonce, counter). A committed entry answers a waiter only
/// if this very process proposed it: entries replayed from an earlier run, or proposed by
/// another node, carry another node id or nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProposalTag {
    node: NodeId,
    boot_nonce: u64,
    counter: u64,
}

impl ProposalTag {
    fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.boot_nonce.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<ProposalTag> {
        let word = |i: usize| bytes.get(i * 8..i * 8 + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
        (bytes.len() == 24).then_some(())?;
        Some(ProposalTag { node: word(0)?, boot_nonce: word(1)?, counter: word(2)? })
    }
}

struct RaftStage {
    node_id: NodeId,
    boot_nonce: u64,
    shard: ShardId,
    driver: RaftDriver<SledLogStore>,
    store: Arc<ShardStore>,
    index: Arc<ShardIndex>,
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
    proposals: Receiver<Proposal>,
    inbox: Receiver<Message>,
    read_requests: Receiver<ReadRequest>,
    outbox: Option<Arc<dyn RaftOutbox>>,
    fusion_bell: Sender<()>,
    stop: Arc<AtomicBool>,
    tick_interval: Duration,
    group_commit_max_requests: usize,
    single_voter: bool,
    staging: Arc<Mutex<()>>,
    /// An installed snapshot's staged copy is to be emptied (see `run_loop`).
    staging_clear_pending: bool,
    compaction: Compaction,
}

/// When the raft thread compacts its log (`raft.*` in the config).
#[derive(Debug, Clone, Copy)]
struct Compaction {
    interval: Duration,
    /// Consumed entries kept in the log.
    retain_entries: u64,
    /// Entries beyond the retained ones before a replicated shard compacts.
    snapshot_entries: u64,
}

struct Waiter {
    reply: ProposalReply,
    proposed_at: Instant,
}

impl RaftStage {
    fn run(mut self) {
        if let Err(e) = self.run_loop() {
            tracing::error!(shard = self.shard, error = %e, "raft stage stopped");
            self.progress.failed.store(true, Ordering::Release);
        }
    }

    fn run_loop(&mut self) -> Result<(), ShardError> {
        if self.single_voter {
            self.driver.campaign()?;
        }
        let mut waiters: HashMap<u64, Waiter> = HashMap::new();
        let mut reads: HashMap<u64, (ReadRequest, Instant)> = HashMap::new();
        let mut next_proposal_id: u64 = 1;
        let mut last_tick = Instant::now();
        let mut last_compaction = Instant::now();
        let mut batch: Vec<Proposal> = Vec::with_capacity(self.group_commit_max_requests);
        let mut messages: Vec<Message> = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            let wait = self.tick_interval.saturating_sub(last_tick.elapsed()).max(Duration::from_millis(1));
            crossbeam_channel::select! {
                recv(self.proposals) -> proposal => if let Ok(proposal) = proposal { batch.push(proposal) },
                recv(self.inbox) -> message => if let Ok(message) = message { messages.push(message) },
                recv(self.read_requests) -> read => if let Ok(read) = read { self.request_read(&mut reads, read, &mut next_proposal_id) },
                default(wait) => {}
            }
            // Drain what else is waiting: everything queued now shares one log flush.
            while let Ok(message) = self.inbox.try_recv() {
                messages.push(message);
                if messages.len() >= RAFT_INBOX_DEPTH {
                    break;
                }
            }
            if self.staging_clear_pending {
                // Under the lock, so it cannot fall between a fetch's check and its marking of
                // the staging area complete; a fetch it interrupts fails and is sent again
                // (`StoreError::StagingReplaced`) instead of installing a partial copy.
                let _staging_guard = self.staging.lock();
                self.store.clear_staging()?;
                self.staging_clear_pending = false;
            }
            // A snapshot is stepped only once its data is staged, and the staging area stays
            // locked until it is installed (in `process_ready` below).
            let staging = self.staging.clone();
            let _staging_guard = messages.iter().any(|m| m.get_msg_type() == MessageType::MsgSnapshot).then(|| staging.lock());
            for message in messages.drain(..) {
                if message.get_msg_type() == MessageType::MsgSnapshot && !self.snapshot_is_staged(&message)? {
                    continue;
                }
                self.driver.step(message)?;
            }
            while let Ok(read) = self.read_requests.try_recv() {
                self.request_read(&mut reads, read, &mut next_proposal_id);
            }
            while batch.len() < self.group_commit_max_requests {
                match self.proposals.try_recv() {
                    Ok(proposal) => batch.push(proposal),
                    Err(_) => break,
                }
            }
            for proposal in batch.drain(..) {
                let id = next_proposal_id;
                next_proposal_id += 1;
                let tag = ProposalTag { node: self.node_id, boot_nonce: self.boot_nonce, counter: id };
                match self.driver.propose(tag.encode(), proposal.command) {
                    Ok(()) => {
                        waiters.insert(id, Waiter { reply: proposal.reply, proposed_at: Instant::now() });
                    }
                    Err(e) => {
                        let _ = proposal.reply.send(Err(not_leader(self.shard, &e.to_string())));
                    }
                }
            }
            if last_tick.elapsed() >= self.tick_interval {
                self.driver.tick();
                last_tick = Instant::now();
                // Reads whose answer never came (no leader) are dropped: their callers have
                // deadlines of their own.
                reads.retain(|_, (read, at)| !read.reply.is_closed() && at.elapsed() < Duration::from_secs(60));
            }
            self.process_ready(&mut waiters, &mut reads)?;
            if last_compaction.elapsed() >= self.compaction.interval {
                self.compact_log()?;
                last_compaction = Instant::now();
            }
            self.metrics.set_queue_depth(self.shard, "proposals", self.proposals.len());
        }
        for (_, waiter) in waiters.drain() {
            let _ = waiter.reply.send(Err(ApiError::unavailable("the node is shutting down; retry (ids are idempotent)")));
        }
        Ok(())
    }

    /// Whether a snapshot message's data is here to install (else it is dropped: the leader
    /// sends it again, and the peer layer fetches the data first).
    fn snapshot_is_staged(&self, message: &Message) -> Result<bool, ShardError> {
        match SnapshotData::parse(message.get_snapshot().get_data()) {
            Ok(SnapshotData::Legacy) => Ok(true),
            Ok(SnapshotData::Ref(snapshot)) => Ok(self.store.staged_snapshot()?.is_some_and(|staged| staged >= snapshot.index)),
            Err(e) => {
                tracing::warn!(shard = self.shard, from = message.from, error = %e, "unreadable snapshot message dropped");
                Ok(false)
            }
        }
    }

    fn request_read(&mut self, reads: &mut HashMap<u64, (ReadRequest, Instant)>, read: ReadRequest, next_id: &mut u64) {
        let id = *next_id;
        *next_id += 1;
        self.driver.read_index(id.to_be_bytes().to_vec());
        reads.insert(id, (read, Instant::now()));
    }

    fn report_deliveries(&mut self, deliveries: Vec<Delivery>) {
        for delivery in deliveries {
            match delivery {
                // A snapshot message only names the data; the follower fetches it in chunks
                // (`Engine::fetch_snapshot`) and answers once installed. Reporting it finished
                // as soon as it is queued puts the follower back to probing, so a lost message
                // or an abandoned fetch is retried instead of leaving it waiting forever.
                Delivery::Snapshot(to, queued) => self.driver.report_snapshot(to, queued),
                Delivery::Unreachable(to) => self.driver.report_unreachable(to),
            }
        }
    }

    fn process_ready(
        &mut self,
        waiters: &mut HashMap<u64, Waiter>,
        reads: &mut HashMap<u64, (ReadRequest, Instant)>,
    ) -> Result<(), ShardError> {
        while self.driver.has_ready() {
            let started = Instant::now();
            let was_leader = self.driver.is_leader();
            let mut machine = ShardMachine {
                store: &self.store,
                progress: &self.progress,
                metrics: &self.metrics,
                waiters,
                node_id: self.node_id,
                boot_nonce: self.boot_nonce,
            };
            // Messages leave while the cycle runs (see `run_ready_sending`); the replicas they
            // could not be queued for are reported to raft-rs once it is free again.
            let (outbox, shard) = (&self.outbox, self.shard);
            let mut deliveries: Vec<Delivery> = Vec::new();
            let mut send = |messages: Vec<Message>| {
                if let Some(outbox) = outbox {
                    deliveries.extend(deliver(outbox.as_ref(), shard, messages));
                }
            };
            let result = self.driver.run_ready_sending(&mut machine, &mut send);
            self.report_deliveries(deliveries);
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    for (_, waiter) in waiters.drain() {
                        let _ = waiter.reply.send(Err(ApiError::internal(format!("shard {} failed to persist: {e}", self.shard))));
                    }
                    return Err(e.into());
                }
            };
            self.metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
            self.metrics.ready_phase_seconds.with_label_values(&["persist"]).observe(outcome.persist_time.as_secs_f64());
            if !outcome.apply_time.is_zero() {
                self.metrics.ready_phase_seconds.with_label_values(&["apply"]).observe(outcome.apply_time.as_secs_f64());
            }
            let is_leader = self.driver.is_leader();
            self.progress.is_leader.store(is_leader, Ordering::Release);
            self.progress.leader.store(self.driver.leader_id().unwrap_or(0), Ordering::Release);
            self.progress.term.store(self.driver.term(), Ordering::Release);
            self.progress.commit.store(self.driver.commit_index(), Ordering::Release);
            if was_leader && !is_leader {
                // Entries proposed here may still commit under the next leader, or be dropped:
                // either way the client must not wait for a reply this replica cannot give.
                for (_, waiter) in waiters.drain() {
                    let _ = waiter.reply.send(Err(not_leader(self.shard, "leadership moved before the write committed")));
                }
            }
            for (context, index) in outcome.read_states {
                let id = <[u8; 8]>::try_from(context.as_slice()).map(u64::from_be_bytes).unwrap_or(0);
                if let Some((read, _)) = reads.remove(&id) {
                    let _ = read.reply.send(index);
                }
            }
            if let Some(index) = outcome.restored_snapshot {
                tracing::info!(shard = self.shard, index, "raw store replaced by the leader's snapshot; re-deriving buckets and indexes");
            }
            if let Some(applied) = outcome.applied_index {
                self.store.set_watermark(Watermark::Applied, applied)?;
                self.progress.applied.store(applied, Ordering::Release);
                let _ = self.fusion_bell.try_send(());
            }
            if outcome.restored_snapshot.is_some() {
                self.progress.snapshots_installed.fetch_add(1, Ordering::AcqRel);
                // The staged copy is only needed until the applied index past it is durable;
                // it is emptied at the top of the next loop, under the staging lock.
                self.store.flush()?;
                self.staging_clear_pending = true;
            }
            debug_assert!(outcome.messages.is_empty(), "messages were sent during the cycle");
        }
        Ok(())
    }

    /// Drops log entries that every local stage has durably consumed. A replicated shard
    /// first stores a snapshot of its raw store there, for replicas that fall behind the log.
    fn compact_log(&mut self) -> Result<(), ShardError> {
        let fused = self.progress.fused.load(Ordering::Acquire);
        let durable = fused.min(self.index.durable_watermark()).min(self.driver.applied_index());
        if self.single_voter {
            let keep_from = durable.saturating_sub(self.compaction.retain_entries) + 1;
            if keep_from > self.driver.store().first_log_index() + self.compaction.retain_entries {
                self.driver.store().compact(keep_from)?;
            }
            return Ok(());
        }
        // Nor above what active followers have: a slow one catches up from the log.
        let durable = durable.min(self.driver.slowest_active_follower_match().unwrap_or(u64::MAX));
        let up_to = durable.saturating_sub(self.compaction.retain_entries);
        if up_to < self.driver.store().first_log_index() + self.compaction.snapshot_entries {
            return Ok(());
        }
        // The snapshot names the raw store rather than copying it: a replica that needs it
        // fetches the live store in chunks, which then holds everything through `up_to` and
        // more. That is safe: the replica replays (up_to, ...] on top, and applying an entry
        // twice is a no-op (ids are idempotent, asset records are overwritten in log order,
        // ordinals and vocabulary are only added). Compaction itself costs no copy.
        self.driver.compact(up_to, SnapshotRef { index: up_to }.encode()?)?;
        tracing::info!(shard = self.shard, index = up_to, "log compacted into a snapshot");
        Ok(())
    }
}

/// What became of a message raft-rs must hear about.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    /// Could not be queued for this peer.
    Unreachable(NodeId),
    /// A snapshot message to this peer, queued or not.
    Snapshot(NodeId, bool),
}

/// Queues messages for their peers; returns the deliveries raft-rs must be told about.
fn deliver(outbox: &dyn RaftOutbox, shard: ShardId, messages: Vec<Message>) -> Vec<Delivery> {
    let mut reports = Vec::new();
    for message in messages {
        let (to, is_snapshot) = (message.to, message.get_msg_type() == MessageType::MsgSnapshot);
        let queued = outbox.send(to, shard, message);
        if is_snapshot {
            reports.push(Delivery::Snapshot(to, queued));
        } else if !queued {
            reports.push(Delivery::Unreachable(to));
        }
    }
    reports
}

fn not_leader(shard: ShardId, detail: &str) -> ApiError {
    ApiError::unavailable(format!("{NOT_LEADER_PREFIX} of shard {shard}: {detail}; retry (ids are idempotent)")).with_retry_after(1)
}

/// Marks replies of a replica that cannot take the write (the router then looks for the leader).
pub const NOT_LEADER_PREFIX: &str = "not the leader";

/// The shard's replicated state machine: applying commands to the raw store, snapshots of it.
struct ShardMachine<'a> {
    store: &'a ShardStore,
    progress: &'a Progress,
    metrics: &'a Metrics,
    waiters: &'a mut HashMap<u64, Waiter>,
    node_id: NodeId,
    boot_nonce: u64,
}

impl StateMachine for ShardMachine<'_> {
    fn apply(&mut self, entry: &Entry) -> Result<(), String> {
        let command: ShardCommand = codec::decode(SHARD_COMMAND_FORMAT, &entry.data).map_err(|e| e.to_string())?;
        let result = match &command {
            ShardCommand::Ingest { items } => self.store.apply_ingest(items).map_err(|e| e.to_string())?,
            ShardCommand::UpsertAsset { asset_id, record } => {
                self.store.apply_asset(asset_id, record).map_err(|e| e.to_string())?;
                ApplyOutcome::Applied { created: 1, duplicates: 0 }
            }
        };
        self.progress.record_applied(entry.index);
        if let ShardCommand::Ingest { items } = &command {
            self.progress.record_applied_annotations(entry.index, items.len() as u64);
        }
        if let Some(tag) = ProposalTag::decode(&entry.context).filter(|t| t.node == self.node_id && t.boot_nonce == self.boot_nonce) {
            if let Some(waiter) = self.waiters.remove(&tag.counter) {
                self.metrics.commit_seconds.observe(waiter.proposed_at.elapsed().as_secs_f64());
                let _ = waiter.reply.send(Ok(result));
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        let index = self.progress.applied.load(Ordering::Acquire);
        SnapshotRef { index }.encode().map_err(|e| e.to_string())
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let result = match SnapshotData::parse(data).map_err(|e| e.to_string())? {
            SnapshotData::Legacy => self.store.import_legacy_snapshot(data),
            SnapshotData::Ref(snapshot) => self.store.install_staged(snapshot.index),
        };
        result.map_err(|e| e.to_string())
    }
}

/// What a Raft snapshot message's data is.
pub enum SnapshotData {
    /// Format 1, from earlier versions: the whole raw store in the message itself.
    Legacy,
    /// Formats 2 and 3: a [`SnapshotRef`]; the raw store is fetched separately.
    Ref(SnapshotRef),
}

impl SnapshotData {
    pub fn parse(data: &[u8]) -> Result<SnapshotData, codec::CodecError> {
        if data.first() == Some(&LEGACY_RAW_SNAPSHOT_FORMAT) {
            return Ok(SnapshotData::Legacy);
        }
        SnapshotRef::decode(data).map(SnapshotData::Ref)
    }
}

/// A Raft snapshot's data: which state it stands for, not the state itself. The raw store
/// is fetched from the sending replica in chunks into a staging area before the message
/// reaches raft-rs ([`Shard::with_staging`]), and installed from there.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRef {
    /// The snapshot holds every entry through this index.
    pub index: u64,
}

/// Format of [`SnapshotRef`] (format 1 was the whole raw store in the message). Format 3
/// has the same fields; it says the fetched raw store holds entry records, which versions that
/// read only format 2 would not see, so they refuse the snapshot instead of installing it.
const SNAPSHOT_REF_FORMAT: u8 = 3;
/// Written by versions whose raw store held legacy records; an install converts them.
const SNAPSHOT_REF_FORMAT_LEGACY_RECORDS: u8 = 2;

impl SnapshotRef {
    fn encode(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode(SNAPSHOT_REF_FORMAT, self)
    }

    pub fn decode(data: &[u8]) -> Result<SnapshotRef, codec::CodecError> {
        match data.first() {
            Some(&SNAPSHOT_REF_FORMAT_LEGACY_RECORDS) => codec::decode(SNAPSHOT_REF_FORMAT_LEGACY_RECORDS, data),
            _ => codec::decode(SNAPSHOT_REF_FORMAT, data),
        }
    }
}

/// Re-saves a stored format-2 snapshot reference as format 3. The store it stands for was
/// converted to entry records when it was opened, and raft-rs sends the stored snapshot as
/// it is: without this, a replica of an earlier version would read format 2 and install entry
/// records it cannot read, until the next compaction replaced the reference.
fn mark_stored_snapshot_current(log: &SledLogStore) -> Result<(), ShardError> {
    let Some(mut stored) = log.stored_snapshot()? else {
        return Ok(());
    };
    if stored.get_data().first() != Some(&SNAPSHOT_REF_FORMAT_LEGACY_RECORDS) {
        return Ok(());
    }
    let reference = SnapshotRef::decode(stored.get_data())?;
    stored.data = reference.encode()?.into();
    log.save_snapshot(&stored)?;
    log.sync()?;
    Ok(())
}

/// Decodes committed commands in `(from, to]`, skipping empty (leader no-op) entries.
fn read_commands(log: &SledLogStore, from_exclusive: u64, to_inclusive: u64) -> Result<Vec<ShardCommand>, ShardError> {
    let mut commands = Vec::new();
    for index in (from_exclusive + 1)..=to_inclusive {
        let entry = log.entry(index)?.ok_or(ShardError::MissingEntry(index))?;
        if entry.data.is_empty() || entry.get_entry_type() != raft::eraftpb::EntryType::EntryNormal {
            continue;
        }
        commands.push(codec::decode(SHARD_COMMAND_FORMAT, &entry.data)?);
    }
    Ok(commands)
}

struct FusionStage {
    shard: ShardId,
    store: Arc<ShardStore>,
    log: SledLogStore,
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
    bell: Receiver<()>,
    index_bell: Sender<()>,
    stop: Arc<AtomicBool>,
    bucket_ms: u64,
    batch_entries_max: u64,
}

impl FusionStage {
    fn run(self) {
        while !self.stop.load(Ordering::Acquire) {
            let _ = self.bell.recv_timeout(Duration::from_millis(200));
            let result = match self.catch_up() {
                Err(ShardError::MissingEntry(index)) => {
                    let first = self.log.first_log_index();
                    if self.progress.applied.load(Ordering::Acquire).saturating_add(1) < first {
                        // A leader's snapshot replaced the log, and the raft thread has not
                        // installed its raw store yet: re-fusing now would only re-derive the
                        // store about to be replaced. The install rings the bell.
                        continue;
                    }
                    // Heal from the raw store, of which fusion is a pure function.
                    if index < first {
                        tracing::info!(
                            shard = self.shard,
                            missing = index,
                            "log starts after a snapshot; re-fusing the shard from its raw store"
                        );
                    } else {
                        tracing::warn!(shard = self.shard, missing = index, "log entry missing; re-fusing the shard from its raw store");
                    }
                    self.refuse_everything()
                }
                other => other,
            };
            if let Err(e) = result {
                tracing::error!(shard = self.shard, error = %e, "fusion failed; retrying");
                std::thread::park_timeout(Duration::from_secs(1));
            }
        }
    }

    fn refuse_everything(&self) -> Result<(), ShardError> {
        let applied = self.progress.applied.load(Ordering::Acquire);
        for (_, asset_id) in self.store.all_assets() {
            // Per asset, so an install never waits for a whole shard. An install in between
            // leaves `fused` below its snapshot, and the next pass re-fuses the new store.
            let _installs_wait = self.store.derivation_guard();
            refuse_asset(&self.store, &asset_id, &AffectedBuckets::All, self.bucket_ms)?;
        }
        self.store.set_watermark(Watermark::Fused, applied)?;
        self.progress.fused.store(applied, Ordering::Release);
        let _ = self.index_bell.try_send(());
        Ok(())
    }

    fn catch_up(&self) -> Result<(), ShardError> {
        loop {
            let applied = self.progress.applied.load(Ordering::Acquire);
            let fused = self.progress.fused.load(Ordering::Acquire);
            if fused >= applied || self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let upto = applied.min(fused + self.batch_entries_max);
            let _installs_wait = self.store.derivation_guard();
            let mut affected: BTreeMap<String, AffectedBuckets> = BTreeMap::new();
            for command in read_commands(&self.log, fused, upto)? {
                affected_by_command(&command, self.bucket_ms, &self.store, &mut affected, false)?;
            }
            let mut buckets_written = 0;
            for (asset_id, buckets) in &affected {
                buckets_written += refuse_asset(&self.store, asset_id, buckets, self.bucket_ms)?;
            }
            self.store.set_watermark(Watermark::Fused, upto)?;
            self.progress.fused.store(upto, Ordering::Release);
            self.metrics.buckets_written.inc_by(buckets_written as u64);
            let _ = self.index_bell.try_send(());
        }
    }
}

struct IndexStage {
    shard: ShardId,
    store: Arc<ShardStore>,
    log: SledLogStore,
    index: Arc<ShardIndex>,
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
    bell: Receiver<()>,
    indexed_tx: tokio::sync::watch::Sender<u64>,
    stop: Arc<AtomicBool>,
    bucket_ms: u64,
    batch_entries_max: u64,
    commit_interval: Duration,
}

impl IndexStage {
    fn run(self) {
        // Resume from what is durable in both Tantivy and the vector files.
        let mut processed = self.index.durable_watermark().min(self.progress.fused.load(Ordering::Acquire));
        let mut last_commit = Instant::now();
        let mut last_vector_save = Instant::now();
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let wait = self.commit_interval.saturating_sub(last_commit.elapsed()).max(Duration::from_millis(5));
            if !stopping {
                let _ = self.bell.recv_timeout(wait);
            }
            match self.catch_up(processed, stopping) {
                Ok(done) => processed = done,
                Err(ShardError::MissingEntry(index)) => {
                    // The log no longer holds what this stage needs: a leader's snapshot
                    // replaced it (compaction itself waits for the durable watermarks), or the
                    // disk is damaged. Heal from the bucket store instead of stalling, once
                    // fusion has re-derived the buckets past the snapshot (it rings the bell).
                    let fused = self.progress.fused.load(Ordering::Acquire);
                    let first = self.log.first_log_index();
                    if fused.saturating_add(1) < first {
                        if stopping {
                            return; // nothing of the new store is indexed yet; a restart redoes it
                        }
                        // Fusion rings the bell when it passes the snapshot.
                        let _ = self.bell.recv_timeout(Duration::from_millis(200));
                        continue;
                    }
                    if index < first {
                        tracing::info!(
                            shard = self.shard,
                            missing = index,
                            fused,
                            "log starts after a snapshot; reindexing the shard from its buckets"
                        );
                    } else {
                        tracing::warn!(
                            shard = self.shard,
                            missing = index,
                            fused,
                            "log entry missing; reindexing the shard from its buckets"
                        );
                    }
                    match reindex_everything(&self.store, &self.index, fused) {
                        Ok(_) => {
                            processed = fused;
                            self.progress.indexed.store(fused, Ordering::Release);
                            self.indexed_tx.send_replace(fused);
                        }
                        Err(e) => {
                            tracing::error!(shard = self.shard, error = %e, "reindexing failed; retrying");
                            std::thread::park_timeout(Duration::from_secs(1));
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(shard = self.shard, error = %e, "indexing failed; retrying");
                    std::thread::park_timeout(Duration::from_secs(1));
                    continue;
                }
            }
            let commit_due = stopping || last_commit.elapsed() >= self.commit_interval;
            let vectors_due = stopping || last_vector_save.elapsed() >= VECTOR_SAVE_INTERVAL;
            let needs_commit = processed > self.index.committed_watermark()
                || (vectors_due && self.index.vectors.iter().any(|v| v.saved_watermark() < processed));
            if commit_due && needs_commit {
                let started = Instant::now();
                // Vector targets live in sled: make them durable before the vector files that
                // point at them, or a crash could keep a vector whose target is gone.
                let committed = self
                    .store
                    .flush()
                    .map_err(IndexError::from)
                    .and_then(|()| self.index.commit(processed, vectors_due))
                    .and_then(|()| Ok(self.store.set_watermark(Watermark::Indexed, processed)?));
                match committed {
                    Ok(()) => {
                        self.metrics.index_commit_seconds.observe(started.elapsed().as_secs_f64());
                        self.progress.indexed.store(processed, Ordering::Release);
                        self.indexed_tx.send_replace(processed);
                        for lag in self.progress.drain_searchable(processed) {
                            self.metrics.searchable_lag_seconds.observe(lag);
                        }
                        if vectors_due {
                            last_vector_save = Instant::now();
                        }
                    }
                    Err(e) => {
                        tracing::error!(shard = self.shard, error = %e, "index commit failed; retrying")
                    }
                }
                last_commit = Instant::now();
            } else if commit_due {
                last_commit = Instant::now();
            }
            if stopping {
                return;
            }
        }
    }

    fn catch_up(&self, mut processed: u64, stopping: bool) -> Result<u64, ShardError> {
        loop {
            let fused = self.progress.fused.load(Ordering::Acquire);
            if processed >= fused || (self.stop.load(Ordering::Acquire) && !stopping) {
                return Ok(processed);
            }
            let upto = fused.min(processed + self.batch_entries_max);
            let _installs_wait = self.store.derivation_guard();
            let commands = read_commands(&self.log, processed, upto)?;
            let mut affected: BTreeMap<String, AffectedBuckets> = BTreeMap::new();
            for command in &commands {
                affected_by_command(command, self.bucket_ms, &self.store, &mut affected, true)?;
            }
            let mut docs = 0;
            for (asset_id, buckets) in &affected {
                docs += match buckets {
                    AffectedBuckets::All => {
                        sync_asset_vectors(&self.store, &self.index, asset_id)?;
                        self.index.reindex_asset(&self.store, asset_id)?
                    }
                    AffectedBuckets::Some(seconds) => {
                        let seconds: Vec<u64> = seconds.iter().copied().collect();
                        self.index.reindex_seconds(&self.store, asset_id, &seconds)?
                    }
                };
            }
            for command in &commands {
                let ShardCommand::Ingest { items } = command else {
                    continue;
                };
                for item in items {
                    let (Some(vector), Some(space_name)) = (&item.vector, &item.annotation.vector_space) else {
                        continue;
                    };
                    if matches!(affected.get(&item.annotation.asset_id), Some(AffectedBuckets::All)) {
                        continue; // handled whole by sync_asset_vectors
                    }
                    // A command rejected as a conflict stored nothing: index only what is stored.
                    let stored = self.store.annotation(&item.annotation.asset_id, &item.annotation.id)?;
                    if stored.as_ref() != Some(&item.annotation) {
                        continue;
                    }
                    if let Some(space) = self.index.vector_space(space_name) {
                        let key = vector_key(&item.annotation.asset_id, &item.annotation.id);
                        put_vector_target(&self.store, key, &target_of(&item.annotation))?;
                        space.add(key, vector)?;
                    }
                }
            }
            self.metrics.index_docs_written.inc_by(docs as u64);
            processed = upto;
        }
    }
}

fn target_of(a: &rushes_protocol::model::StoredAnnotation) -> VectorTarget {
    VectorTarget { asset_id: a.asset_id.clone(), annotation_id: a.id.clone(), start_ms: a.start_ms, end_ms: a.end_ms }
}

/// Makes the vector indexes hold exactly the active-version vectors of one asset.
pub fn sync_asset_vectors(store: &ShardStore, index: &ShardIndex, asset_id: &str) -> Result<(), ShardError> {
    let annotations = store.asset_annotations(asset_id)?;
    let active = active_versions(&annotations);
    for a in &annotations {
        let Some(space_name) = &a.vector_space else {
            continue;
        };
        let Some(space) = index.vector_space(space_name) else {
            continue;
        };
        let key = vector_key(&a.asset_id, &a.id);
        if active.get(a.model.as_str()) == Some(&a.model_version.as_str()) {
            if !space.contains(key) {
                if let Some(vector) = store.vector(&a.asset_id, &a.id)? {
                    put_vector_target(store, key, &target_of(a))?;
                    space.add(key, &vector)?;
                }
            }
        } else {
            space.remove(key)?;
        }
    }
    Ok(())
}

/// Fills an empty index from the bucket store, complete through log index `fused`.
fn reindex_everything(store: &ShardStore, index: &ShardIndex, fused: u64) -> Result<usize, ShardError> {
    let mut docs = 0;
    for (_, asset_id) in store.all_assets() {
        // Per asset, so an install never waits for a whole shard (see `refuse_everything`).
        let _installs_wait = store.derivation_guard();
        sync_asset_vectors(store, index, &asset_id)?;
        docs += index.reindex_asset(store, &asset_id)?;
    }
    index.commit(fused, true)?;
    store.set_watermark(Watermark::Indexed, fused)?;
    Ok(docs)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_tags_round_trip_and_reject_other_shapes() {
        let tag = ProposalTag { node: 3, boot_nonce: 0xfeed, counter: 42 };
        assert_eq!(ProposalTag::decode(&tag.encode()), Some(tag));
        assert_eq!(ProposalTag::decode(&42u64.to_be_bytes()), None, "an 8-byte context from an older format is not ours");
        assert_eq!(ProposalTag::decode(&[]), None);
    }

    #[test]
    fn a_stored_format_2_snapshot_reference_is_saved_again_as_format_3() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let log = SledLogStore::open(&db, &[1]).expect("log");
        mark_stored_snapshot_current(&log).expect("no snapshot: nothing to do");
        let entries: Vec<Entry> = (1..=5)
            .map(|index| {
                let mut entry = Entry::default();
                (entry.index, entry.term) = (index, 1);
                entry
            })
            .collect();
        log.append(&entries).expect("append");
        let mut snapshot = raft::eraftpb::Snapshot {
            data: codec::encode(SNAPSHOT_REF_FORMAT_LEGACY_RECORDS, &SnapshotRef { index: 3 }).unwrap().into(),
            ..Default::default()
        };
        (snapshot.mut_metadata().index, snapshot.mut_metadata().term) = (3, 1);
        log.save_snapshot(&snapshot).expect("save");
        mark_stored_snapshot_current(&log).expect("re-save");
        let stored = log.stored_snapshot().expect("read").expect("still there");
        assert_eq!(stored.get_data()[0], SNAPSHOT_REF_FORMAT);
        assert_eq!(SnapshotRef::decode(stored.get_data()).unwrap(), SnapshotRef { index: 3 });
        assert_eq!(stored.get_metadata(), snapshot.get_metadata());
        assert_eq!(log.first_log_index(), 4, "the log is where it was");
        assert_eq!(log.entry(5).expect("read").map(|e| e.index), Some(5));
    }

    #[test]
    fn snapshot_refs_of_both_record_layouts_parse_and_new_ones_are_marked() {
        let current = SnapshotRef { index: 77 }.encode().unwrap();
        assert_eq!(current[0], SNAPSHOT_REF_FORMAT, "a version that reads only format 2 refuses it");
        assert!(matches!(SnapshotData::parse(&current), Ok(SnapshotData::Ref(SnapshotRef { index: 77 }))));
        let earlier = codec::encode(SNAPSHOT_REF_FORMAT_LEGACY_RECORDS, &SnapshotRef { index: 5 }).unwrap();
        assert!(matches!(SnapshotData::parse(&earlier), Ok(SnapshotData::Ref(SnapshotRef { index: 5 }))));
        assert!(SnapshotData::parse(&[9, 1, 2]).is_err());
    }

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn unindexed_annotations_are_counted_until_indexing_passes_their_entry() {
        let progress = Progress::default();
        progress.indexed.store(4, Ordering::Release);
        progress.record_applied_annotations(4, 1_000); // already indexed: never counted
        progress.record_applied_annotations(5, 300);
        progress.record_applied_annotations(6, 20);
        progress.record_applied_annotations(8, 1);
        assert_eq!(progress.unindexed_annotations(), 321);
        progress.indexed.store(6, Ordering::Release);
        assert_eq!(progress.unindexed_annotations(), 1);
        // A snapshot re-derived whole moves the watermark past everything.
        progress.indexed.store(100, Ordering::Release);
        assert_eq!(progress.unindexed_annotations(), 0);
        assert!(progress.unindexed.lock().entries.is_empty(), "covered entries are dropped, not kept");
    }

    /// Opens a one-voter shard with `configure`d options and makes indexing look behind with
    /// `fall_behind(shard, indexed)`: a write must be refused as overloaded, retryable, naming
    /// `limit`, with nothing queued. After `catch_up(shard, indexed)` the same write commits.
    /// Returns the refusal.
    fn refused_until_indexing_catches_up(
        limit: &str,
        configure: impl FnOnce(&mut ShardOptions),
        fall_behind: impl FnOnce(&Shard, u64),
        catch_up: impl FnOnce(&Shard, u64),
    ) -> ApiError {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = crate::node::shard_options(&rushes_config::Config::default());
        configure(&mut options);
        let shard = Shard::open(dir.path(), 0, &options, Arc::new(Metrics::new()), None).expect("open shard");
        wait_until("the single voter leads", || shard.is_leader());
        let command = ShardCommand::UpsertAsset { asset_id: "ep1".into(), record: rushes_protocol::model::StoredAsset::default() };
        let indexed = shard.progress.indexed.load(Ordering::Acquire);
        fall_behind(&shard, indexed);
        let refused = shard.propose(&command).expect_err("refused while indexing is behind");
        assert_eq!(refused.code, rushes_protocol::ErrorCode::Overloaded);
        assert!(refused.retry_after_s.is_some(), "{refused:?}");
        assert!(refused.message.contains(limit), "{}", refused.message);
        assert_eq!(shard.queue_depth(), 0);
        catch_up(&shard, indexed);
        let reply = shard.propose(&command).expect("accepted once indexing caught up");
        let outcome = reply.blocking_recv().expect("the raft thread answers");
        assert!(outcome.is_ok(), "{outcome:?}");
        wait_until("the asset is stored", || shard.store.asset_record("ep1").ok().flatten().is_some());
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
        let options = crate::node::shard_options(&rushes_config::Config::default());
        let shard = Shard::open(dir.path(), 0, &options, Arc::new(Metrics::new()), None).expect("open shard");
        let running = shard.start_snapshot_fetch().expect("the first fetch starts");
        for _ in 0..3 {
            assert!(shard.start_snapshot_fetch().is_none(), "a second fetch started while one runs");
        }
        drop(running);
        assert!(shard.start_snapshot_fetch().is_some(), "a fetch starts once the previous one ended");
        shard.shutdown();
    }
}
