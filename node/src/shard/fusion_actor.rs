//! The fusion actor of one shard replica: applied log entries (fused, applied] become the
//! one-second buckets they touch, recomputed from the asset's stored annotations
//! ([`super::fusion`], a pure function of the raw store), then the fused watermark is saved
//! and the index actor is rung. It never runs on the ingest path: the Raft actor only rings it.
//!
//! It works one batch (`fusion.batch_entries_max` entries) per message, so its mailbox is
//! served between batches. Its state is derived, so on an error or a panic it is restarted by
//! its supervisor after a back-off and resumes from the persisted watermark.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message as ActixMessage, Supervised};
use rushes_cluster::log_store::SledLogStore;
use rushes_cluster::ShardId;

use super::fusion::{affected_by_command, refuse_asset, AffectedBuckets};
use super::index_actor::IndexActor;
use super::machine::read_commands;
use super::progress::Progress;
use super::{FaultHooks, ShardError};
use crate::actors::{panic_message, restart_backoff, ActorState, ActorStats, Mailbox};
use crate::metrics::Metrics;
use crate::storage::store::{ShardStore, Watermark};

/// Looks for work this often even without a wake (a wake lost to a full mailbox, or a
/// snapshot install that fusion waits for).
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// New entries were applied (or an index actor downstream caught up): look for work.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Wake;

/// Process the next batch (sent to itself between batches).
#[derive(ActixMessage)]
#[rtype(result = "()")]
struct NextBatch;

/// Stop at the end of the current batch.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub done: std::sync::mpsc::SyncSender<()>,
}

pub struct FusionActor {
    /// Below the free-space floor, fusion waits (it writes buckets to the store).
    pub disk: Arc<crate::storage::disk_guard::DiskGuard>,
    pub shard: ShardId,
    pub store: Arc<ShardStore>,
    pub log: SledLogStore,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<ActorStats>,
    pub faults: Arc<FaultHooks>,
    pub index: Mailbox<IndexActor>,
    pub bucket_ms: u64,
    pub batch_entries_max: u64,
    /// Failures since the last batch that succeeded (sets the restart back-off).
    pub consecutive_failures: u32,
    pub batch_scheduled: bool,
    pub stopping: bool,
}

/// What one step of work found.
enum Step {
    /// More entries wait.
    More,
    /// Caught up (or waiting for something else: an install).
    Idle,
}

impl Actor for FusionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.batch_scheduled = true;
        if self.consecutive_failures > 0 {
            ctx.notify_later(NextBatch, restart_backoff(self.consecutive_failures));
        } else {
            self.stats.set_state(ActorState::Idle);
            ctx.notify(NextBatch);
        }
        ctx.run_interval(POLL_INTERVAL, |actor, ctx| actor.schedule_batch(ctx));
    }
}

impl Supervised for FusionActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Nothing in memory to rebuild: every batch starts from the persisted watermark,
        // which `progress.fused` mirrors (it moves only after the watermark is written).
        self.batch_scheduled = false;
    }
}

impl Handler<Wake> for FusionActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        self.schedule_batch(ctx);
    }
}

/// How soon a stage waiting for disk space looks again.
pub const DISK_FULL_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

impl Handler<NextBatch> for FusionActor {
    type Result = ();

    fn handle(&mut self, _: NextBatch, ctx: &mut Context<Self>) {
        self.batch_scheduled = false;
        if self.stopping {
            return;
        }
        if !self.disk.has_room() {
            // Nothing is written below the floor; look again shortly.
            ctx.run_later(DISK_FULL_RETRY, |actor, ctx| actor.schedule_batch(ctx));
            return;
        }
        let handling = self.stats.busy();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.step()));
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

impl Handler<Shutdown> for FusionActor {
    type Result = ();

    fn handle(&mut self, shutdown: Shutdown, _: &mut Context<Self>) {
        let _handling = self.stats.handling();
        self.stopping = true;
        self.stats.set_state(ActorState::Stopped);
        let _ = shutdown.done.send(());
    }
}

impl FusionActor {
    fn schedule_batch(&mut self, ctx: &mut Context<Self>) {
        if !self.batch_scheduled && !self.stopping {
            self.batch_scheduled = true;
            ctx.notify(NextBatch);
        }
    }

    /// Counts the failure, logs its cause and stops; the supervisor starts the actor again
    /// after the back-off.
    fn restart(&mut self, ctx: &mut Context<Self>, cause: String) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let backoff = restart_backoff(self.consecutive_failures);
        tracing::error!(shard = self.shard, error = %cause, backoff_ms = backoff.as_millis() as u64, "fusion actor failed; restarting from its watermark");
        self.stats.record_restart(cause);
        ctx.stop();
    }

    fn step(&mut self) -> Result<Step, ShardError> {
        match self.fuse_next_batch() {
            Err(ShardError::MissingEntry(index)) => {
                let first = self.log.first_log_index();
                if self.progress.applied.load(Ordering::Acquire).saturating_add(1) < first {
                    // A leader's snapshot replaced the log, and the Raft actor has not
                    // installed its raw store yet: re-fusing now would only re-derive the
                    // store about to be replaced. The install wakes this actor.
                    return Ok(Step::Idle);
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
                self.refuse_everything()?;
                Ok(Step::More)
            }
            other => other,
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
        let _ = self.index.try_send(super::index_actor::Wake);
        Ok(())
    }

    fn fuse_next_batch(&mut self) -> Result<Step, ShardError> {
        let applied = self.progress.applied.load(Ordering::Acquire);
        let fused = self.progress.fused.load(Ordering::Acquire);
        if fused >= applied {
            return Ok(Step::Idle);
        }
        self.faults.maybe_panic(crate::actors::ActorKind::Fusion, self.shard);
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
        let _ = self.index.try_send(super::index_actor::Wake);
        Ok(if upto < applied { Step::More } else { Step::Idle })
    }
}
