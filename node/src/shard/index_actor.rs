//! The index actor of one shard replica: log entries (indexed, fused] become Tantivy documents
//! (delete and re-add the buckets they touch) and usearch vectors; every
//! `index.commit_interval_ms` it commits Tantivy with the watermark as the commit payload
//! (vector files are saved less often), which makes them searchable.
//!
//! One batch per message, so its mailbox (wakes, shutdown) is served between batches. Its
//! state is derived: on an error or a panic (inside Tantivy or usearch's C++) its supervisor
//! restarts it after a back-off; it then drops what Tantivy had not committed and resumes from
//! the watermark that both Tantivy and the vector files hold (re-indexing is idempotent).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message as ActixMessage, Supervised};
use rushes_cluster::log_store::SledLogStore;
use rushes_cluster::ShardId;
use rushes_protocol::model::ShardCommand;

use super::fusion::{active_versions, affected_by_command, AffectedBuckets};
use super::machine::read_commands;
use super::progress::Progress;
use super::{FaultHooks, ShardError};
use crate::actors::{panic_message, restart_backoff, ActorKind, ActorState, ActorStats};
use crate::metrics::Metrics;
use crate::storage::index::{put_vector_target, vector_key, IndexError, ShardIndex, VectorTarget};
use crate::storage::store::{ShardStore, Watermark};

/// Vector files are large; they are saved less often than Tantivy commits. Replay from the log
/// covers the gap after a crash (the log is kept until both are durable).
const VECTOR_SAVE_INTERVAL: Duration = Duration::from_secs(30);
/// Looks for work this often even without a wake.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// While a backlog is being indexed, a commit waits until it is drained (each commit makes a
/// segment, and every segment costs every query a term-dictionary lookup), but never longer
/// than this many commit intervals.
const BACKLOG_COMMIT_INTERVALS: u32 = 5;

/// Fusion passed new entries: look for work.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Wake;

#[derive(ActixMessage)]
#[rtype(result = "()")]
struct NextBatch;

/// Index everything fused, commit it all (vectors too), then stop taking work.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub done: std::sync::mpsc::SyncSender<()>,
}

pub struct IndexActor {
    /// Below the free-space floor, indexing waits (Tantivy writes segments).
    pub disk: Arc<crate::storage::disk_guard::DiskGuard>,
    pub shard: ShardId,
    pub store: Arc<ShardStore>,
    pub log: SledLogStore,
    pub index: Arc<ShardIndex>,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<ActorStats>,
    pub faults: Arc<FaultHooks>,
    pub indexed_tx: tokio::sync::watch::Sender<u64>,
    pub bucket_ms: u64,
    pub batch_entries_max: u64,
    pub commit_interval: Duration,
    /// Entries written to the index (committed or not) through this log index.
    pub processed: u64,
    pub last_commit: Instant,
    pub last_vector_save: Instant,
    pub consecutive_failures: u32,
    pub batch_scheduled: bool,
    pub stopping: bool,
}

enum Step {
    More,
    Idle,
}

impl Actor for IndexActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Resume from what is durable in both Tantivy and the vector files.
        self.processed = self.index.durable_watermark().min(self.progress.fused.load(Ordering::Acquire));
        self.batch_scheduled = true;
        if self.consecutive_failures > 0 {
            ctx.notify_later(NextBatch, restart_backoff(self.consecutive_failures));
        } else {
            self.stats.set_state(ActorState::Idle);
            ctx.notify(NextBatch);
        }
        ctx.run_interval(POLL_INTERVAL, |actor, ctx| actor.schedule_batch(ctx));
        ctx.run_interval(self.commit_interval, |actor, ctx| {
            if actor.stopping || actor.stats.state() == ActorState::Restarting {
                return;
            }
            let _handling = actor.stats.busy();
            if let Err(error) = actor.commit_if_due(false) {
                actor.restart(ctx, error.to_string());
            }
        });
    }
}

impl Supervised for IndexActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Documents written since the last commit may be half-written by whatever failed:
        // drop them; `started` resumes from the durable watermark and writes them again.
        if let Err(e) = self.index.discard_uncommitted() {
            tracing::error!(shard = self.shard, error = %e, "discarding uncommitted index changes failed");
        }
        self.batch_scheduled = false;
    }
}

impl Handler<Wake> for IndexActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        self.schedule_batch(ctx);
    }
}

impl Handler<NextBatch> for IndexActor {
    type Result = ();

    fn handle(&mut self, _: NextBatch, ctx: &mut Context<Self>) {
        self.batch_scheduled = false;
        if self.stopping {
            return;
        }
        if !self.disk.has_room() {
            ctx.run_later(super::fusion_actor::DISK_FULL_RETRY, |actor, ctx| actor.schedule_batch(ctx));
            return;
        }
        let handling = self.stats.busy();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Step, ShardError> {
            let step = self.step()?;
            self.commit_if_due(false)?;
            Ok(step)
        }));
        drop(handling);
        match outcome {
            Ok(Ok(Step::More)) => {
                self.consecutive_failures = 0;
                self.schedule_batch(ctx);
            }
            Ok(Ok(Step::Idle)) => self.consecutive_failures = 0,
            Ok(Err(error)) => self.restart(ctx, error.to_string()),
            Err(panic) => self.restart(ctx, format!("panicked: {}", panic_message(panic.as_ref()))),
        }
    }
}

impl Handler<Shutdown> for IndexActor {
    type Result = ();

    fn handle(&mut self, shutdown: Shutdown, _: &mut Context<Self>) {
        let _handling = self.stats.handling();
        self.stopping = true;
        // What fusion has passed is indexed and committed (vectors too), so a restart resumes
        // without replaying it. A failure leaves it to the log replay after restart.
        let finished = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), ShardError> {
            while let Step::More = self.step()? {}
            self.commit_if_due(true)
        }));
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(shard = self.shard, error = %e, "final index commit failed; the log replays it at restart"),
            Err(panic) => tracing::error!(shard = self.shard, error = %panic_message(panic.as_ref()), "final index commit panicked"),
        }
        // Not `ctx.stop()`: the supervisor would start it again. Its thread is stopped next.
        self.stats.set_state(ActorState::Stopped);
        let _ = shutdown.done.send(());
    }
}

impl IndexActor {
    fn schedule_batch(&mut self, ctx: &mut Context<Self>) {
        if !self.batch_scheduled && !self.stopping {
            self.batch_scheduled = true;
            ctx.notify(NextBatch);
        }
    }

    fn restart(&mut self, ctx: &mut Context<Self>, cause: String) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let backoff = restart_backoff(self.consecutive_failures);
        tracing::error!(shard = self.shard, error = %cause, backoff_ms = backoff.as_millis() as u64, "index actor failed; restarting from its durable watermark");
        self.stats.record_restart(cause);
        ctx.stop();
    }

    fn step(&mut self) -> Result<Step, ShardError> {
        match self.index_next_batch() {
            Err(ShardError::MissingEntry(index)) => {
                // The log no longer holds what this actor needs: a leader's snapshot replaced
                // it (compaction itself waits for the durable watermarks), or the disk is
                // damaged. Heal from the bucket store instead of stalling, once fusion has
                // re-derived the buckets past the snapshot (it wakes this actor).
                let fused = self.progress.fused.load(Ordering::Acquire);
                let first = self.log.first_log_index();
                if fused.saturating_add(1) < first {
                    return Ok(Step::Idle);
                }
                if index < first {
                    tracing::info!(
                        shard = self.shard,
                        missing = index,
                        fused,
                        "log starts after a snapshot; reindexing the shard from its buckets"
                    );
                } else {
                    tracing::warn!(shard = self.shard, missing = index, fused, "log entry missing; reindexing the shard from its buckets");
                }
                reindex_everything(&self.store, &self.index, fused)?;
                self.processed = fused;
                self.progress.indexed.store(fused, Ordering::Release);
                self.indexed_tx.send_replace(fused);
                Ok(Step::More)
            }
            other => other,
        }
    }

    fn index_next_batch(&mut self) -> Result<Step, ShardError> {
        let fused = self.progress.fused.load(Ordering::Acquire);
        if self.processed >= fused {
            return Ok(Step::Idle);
        }
        self.faults.maybe_panic(ActorKind::Index, self.shard);
        let upto = fused.min(self.processed + self.batch_entries_max);
        let _installs_wait = self.store.derivation_guard();
        let commands = read_commands(&self.log, self.processed, upto)?;
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
            let items = match command {
                ShardCommand::Ingest { items } => items,
                ShardCommand::DeleteAsset { asset_id } | ShardCommand::DeleteAnnotation { asset_id, .. } => {
                    remove_deleted_vectors(&self.store, &self.index, asset_id)?;
                    continue;
                }
                ShardCommand::PurgeSuperseded { asset_ids } => {
                    for asset_id in asset_ids {
                        remove_deleted_vectors(&self.store, &self.index, asset_id)?;
                    }
                    continue;
                }
                ShardCommand::UpsertAsset { .. } => continue,
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
        self.processed = upto;
        Ok(if upto < fused { Step::More } else { Step::Idle })
    }

    /// Commits what was processed once the commit interval has passed and the backlog is
    /// drained (or [`BACKLOG_COMMIT_INTERVALS`] intervals passed, or when `force`d), saving the
    /// vector files too every [`VECTOR_SAVE_INTERVAL`].
    fn commit_if_due(&mut self, force: bool) -> Result<(), ShardError> {
        let since = self.last_commit.elapsed();
        let drained = self.processed >= self.progress.fused.load(Ordering::Acquire);
        let commit_due = force || (since >= self.commit_interval && (drained || since >= self.commit_interval * BACKLOG_COMMIT_INTERVALS));
        if !commit_due {
            return Ok(());
        }
        let vectors_due = force || self.last_vector_save.elapsed() >= VECTOR_SAVE_INTERVAL;
        let processed = self.processed;
        let needs_commit = processed > self.index.committed_watermark()
            || (vectors_due && self.index.vectors.iter().any(|v| v.saved_watermark() < processed));
        self.last_commit = Instant::now();
        if !needs_commit {
            return Ok(());
        }
        let started = Instant::now();
        // Vector targets live in sled: make them durable before the vector files that point at
        // them, or a crash could keep a vector whose target is gone.
        self.store.flush().map_err(IndexError::from)?;
        self.index.commit(processed, vectors_due)?;
        self.store.set_watermark(Watermark::Indexed, processed)?;
        self.metrics.index_commit_seconds.observe(started.elapsed().as_secs_f64());
        self.progress.indexed.store(processed, Ordering::Release);
        self.indexed_tx.send_replace(processed);
        for lag in self.progress.drain_searchable(processed) {
            self.metrics.searchable_lag_seconds.observe(lag);
        }
        if vectors_due {
            self.last_vector_save = Instant::now();
        }
        Ok(())
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

/// Removes from the vector indexes (and the key map) every vector of `asset_id` whose
/// annotation is no longer stored: what a delete left behind. Scans the key map, which holds
/// one entry per vector (a small share of annotations); deletes are rare.
pub fn remove_deleted_vectors(store: &ShardStore, index: &ShardIndex, asset_id: &str) -> Result<(), ShardError> {
    let mut orphans = Vec::new();
    for item in store.vector_keys.iter() {
        let (key, value) = item.map_err(crate::storage::store::StoreError::from)?;
        let target: VectorTarget = rushes_protocol::codec::decode(crate::storage::index::VECTOR_KEY_FORMAT, &value)?;
        if target.asset_id == asset_id && store.annotation(asset_id, &target.annotation_id)?.is_none() {
            orphans.push(key);
        }
    }
    for key in orphans {
        let Ok(bytes) = <[u8; 8]>::try_from(key.as_ref()) else { continue };
        let vector = u64::from_be_bytes(bytes);
        for space in index.vectors.iter() {
            space.remove(vector)?;
        }
        store.vector_keys.remove(key).map_err(crate::storage::store::StoreError::from)?;
    }
    Ok(())
}

/// Fills an empty index from the bucket store, complete through log index `fused`.
pub fn reindex_everything(store: &ShardStore, index: &ShardIndex, fused: u64) -> Result<usize, ShardError> {
    let mut docs = 0;
    for (_, asset_id) in store.all_assets() {
        // Per asset, so an install never waits for a whole shard.
        let _installs_wait = store.derivation_guard();
        sync_asset_vectors(store, index, &asset_id)?;
        docs += index.reindex_asset(store, &asset_id)?;
    }
    index.commit(fused, true)?;
    store.set_watermark(Watermark::Indexed, fused)?;
    Ok(docs)
}
