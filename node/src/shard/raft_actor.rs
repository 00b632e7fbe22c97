//! The Raft actor of one shard replica: the ingest log. It owns the replica's raft-rs node
//! ([`RaftDriver`]) and is the only writer of its log; it takes proposals, peers' messages,
//! strong-read requests and ticks, runs Ready cycles (persist the log with one sled flush,
//! send, apply committed entries to the raw store, answer waiting clients), compacts the log,
//! and rings the fusion actor when entries are applied.
//!
//! **Group commit.** A handler only hands its proposal or message to raft-rs and schedules a
//! Ready cycle ([`RunReady`], through `notify`). actix drains the whole mailbox before it runs
//! what an actor scheduled for itself, so every proposal and message waiting in the mailbox
//! joins the same cycle and shares one log flush. A cycle also runs inline once
//! `group_commit_max_requests` proposals (or [`MESSAGES_PER_CYCLE_MAX`] messages) arrived
//! without one, so a flood cannot postpone it.
//!
//! **Failure.** A storage or consensus error stops this actor: the replica is marked failed
//! with the cause (writes get 503 naming it, `/health` reports it), every waiting client is
//! answered, and nothing is retried in place: applying past a failed write could diverge.
//! [`super::recovery`] then closes the replica and opens it again from its disk, as a restart
//! would, once that succeeds (a full disk: when space returns).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message as ActixMessage};
use parking_lot::Mutex;
use raft::eraftpb::{Message, MessageType};
use rushes_cluster::log_store::{LogStoreError, RaftLogStore, SledLogStore};
use rushes_cluster::{NodeId, RaftDriver, ShardId};

use super::fusion_actor::{FusionActor, Wake};
use super::machine::{ProposalReply, ProposalTag, ShardMachine, Waiter};
use super::progress::Progress;
use super::snapshot::{SnapshotData, SnapshotRef};
use super::{RaftOutbox, ShardError, SlotCounter};
use crate::actors::{ActorState, ActorStats, Mailbox};
use crate::metrics::Metrics;
use crate::storage::index::ShardIndex;
use crate::storage::store::{ShardStore, Watermark};

/// Peers' messages handled without a Ready cycle before one runs inline.
const MESSAGES_PER_CYCLE_MAX: usize = 4096;
/// A strong read whose answer never came (no leader) is forgotten after this; its caller has
/// a shorter deadline of its own.
const READ_INDEX_TTL: Duration = Duration::from_secs(60);

/// Propose an encoded `ShardCommand`; the reply comes once it is committed and applied here.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Propose {
    pub command: Vec<u8>,
    pub reply: ProposalReply,
}

/// A peer's Raft message for this replica.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Step(pub Message);

/// Ask for a read index; the reply is the quorum-confirmed commit index.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct ReadIndex {
    pub reply: tokio::sync::oneshot::Sender<u64>,
}

/// A configuration change or leader transfer the metadata leader asked for (leader only).
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct ChangeGroup {
    pub change: rushes_cluster::membership::GroupChange,
    pub reply: tokio::sync::oneshot::Sender<Result<(), ShardError>>,
}

/// The group's configuration as this replica sees it if it leads (else `None`).
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Observe {
    pub added: Option<NodeId>,
    pub reply: tokio::sync::oneshot::Sender<Option<rushes_cluster::membership::GroupObservation>>,
}

/// Stop: waiting clients are answered (their writes may still commit), then the actor stops.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub done: std::sync::mpsc::SyncSender<()>,
}

/// Run a Ready cycle now (sent to itself).
#[derive(ActixMessage)]
#[rtype(result = "()")]
struct RunReady;

/// Empty the staging area of a snapshot that is now installed and durable (sent to itself).
#[derive(ActixMessage)]
#[rtype(result = "()")]
struct ClearStaging;

/// When the log is compacted (`raft.*` in the config).
#[derive(Debug, Clone, Copy)]
pub struct Compaction {
    pub interval: Duration,
    /// Consumed entries kept in the log.
    pub retain_entries: u64,
    /// Entries beyond the retained ones before a replicated shard compacts.
    pub snapshot_entries: u64,
    /// The same two limits in bytes; whichever of count and bytes is reached first applies.
    pub retain_bytes: u64,
    pub snapshot_bytes: u64,
}

impl Compaction {
    /// The entry counts to retain and to compact beyond, given the mean size of an entry: an
    /// entry is one client batch's part for the shard, from a few hundred bytes to megabytes,
    /// so the byte limits bound the log's disk where the counts alone would not. At least one
    /// entry of each, so compaction always makes progress.
    pub fn entry_limits(&self, mean_entry_bytes: Option<u64>) -> (u64, u64) {
        match mean_entry_bytes.filter(|&bytes| bytes > 0) {
            Some(bytes) => {
                (self.retain_entries.min(self.retain_bytes / bytes).max(1), self.snapshot_entries.min(self.snapshot_bytes / bytes).max(1))
            }
            None => (self.retain_entries, self.snapshot_entries),
        }
    }
}

pub struct RaftActor {
    /// Below the free-space floor this actor neither steps, ticks nor persists: to its peers
    /// it is silent, and it acknowledges nothing it did not store.
    pub disk: Arc<crate::storage::disk_guard::DiskGuard>,
    /// Whether the current stretch below the floor was logged.
    pub disk_full_logged: bool,
    pub node_id: NodeId,
    pub boot_nonce: u64,
    pub shard: ShardId,
    pub driver: RaftDriver<SledLogStore>,
    pub store: Arc<ShardStore>,
    pub index: Arc<ShardIndex>,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<ActorStats>,
    pub fusion: Mailbox<FusionActor>,
    pub outbox: Option<Arc<dyn RaftOutbox>>,
    pub pending_proposals: Arc<SlotCounter>,
    pub pending_reads: Arc<SlotCounter>,
    pub tick_interval: Duration,
    pub group_commit_max_requests: usize,
    pub single_voter: bool,
    /// Held while the staging area changes, and from checking a snapshot message against it
    /// until the snapshot is installed: a new fetch never empties the staging area under an
    /// install.
    pub staging: Arc<Mutex<()>>,
    pub compaction: Compaction,
    pub waiters: HashMap<u64, Waiter>,
    pub reads: HashMap<u64, (tokio::sync::oneshot::Sender<u64>, Instant)>,
    pub next_request_id: u64,
    /// A [`RunReady`] is scheduled and not yet run.
    pub ready_scheduled: bool,
    /// Proposals and messages handed to raft-rs since the last Ready cycle.
    pub proposals_since_ready: usize,
    pub messages_since_ready: usize,
}

impl Actor for RaftActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.set_state(ActorState::Idle);
        if self.single_voter {
            if let Err(e) = self.driver.campaign() {
                return self.fail(ctx, ShardError::Raft(e));
            }
            self.schedule_ready(ctx);
        }
        ctx.run_interval(self.tick_interval, |actor, ctx| {
            let _handling = actor.stats.busy();
            if !actor.disk_has_room() {
                return;
            }
            actor.driver.tick();
            let now = Instant::now();
            actor.reads.retain(|_, (reply, at)| !reply.is_closed() && now.duration_since(*at) < READ_INDEX_TTL);
            actor.run_ready(ctx);
        });
        ctx.run_interval(self.compaction.interval, |actor, ctx| {
            let _handling = actor.stats.busy();
            if let Err(e) = actor.compact_log() {
                actor.fail(ctx, e);
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Whatever the reason, nobody may wait on a reply this replica can no longer give.
        let cause = self.progress.failure();
        for (_, waiter) in self.waiters.drain() {
            let error = match &cause {
                Some(cause) => ShardError::Failed { shard: self.shard, cause: cause.clone() },
                None => ShardError::Stopping { shard: self.shard },
            };
            let _ = waiter.reply.send(Err(error));
        }
        if self.stats.state() != ActorState::Failed {
            self.stats.set_state(ActorState::Stopped);
        }
    }
}

impl Handler<Propose> for RaftActor {
    type Result = ();

    fn handle(&mut self, proposal: Propose, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        self.pending_proposals.release();
        let id = self.next_request_id;
        self.next_request_id += 1;
        let tag = ProposalTag { node: self.node_id, boot_nonce: self.boot_nonce, counter: id };
        if !self.disk_has_room() {
            let _ = proposal.reply.send(Err(self.disk_full_error()));
            return;
        }
        match self.driver.propose(tag.encode(), proposal.command) {
            Ok(()) => {
                self.waiters.insert(id, Waiter { reply: proposal.reply, proposed_at: Instant::now(), term: self.driver.term() });
                self.proposals_since_ready += 1;
                if self.proposals_since_ready >= self.group_commit_max_requests {
                    self.run_ready(ctx);
                } else {
                    self.schedule_ready(ctx);
                }
            }
            Err(rushes_cluster::DriverError::NotLeader { leader, .. }) => {
                let _ = proposal.reply.send(Err(ShardError::NotLeader { shard: self.shard, leader }));
            }
            Err(e) => {
                let _ = proposal.reply.send(Err(ShardError::Raft(e)));
            }
        }
    }
}

impl Handler<Step> for RaftActor {
    type Result = ();

    fn handle(&mut self, Step(message): Step, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        if !self.disk_has_room() {
            // Dropped, as a cut-off network would: the sender sends again.
            return;
        }
        if message.get_msg_type() == MessageType::MsgSnapshot {
            // A snapshot is stepped only once its data is staged, and the staging area stays
            // locked until it is installed (in the Ready cycle below).
            let staging = self.staging.clone();
            let _staging_guard = staging.lock();
            match self.snapshot_is_staged(&message) {
                Ok(false) => return,
                Ok(true) => {}
                Err(e) => return self.fail(ctx, e),
            }
            if let Err(e) = self.driver.step(message) {
                return self.fail(ctx, ShardError::Raft(e));
            }
            self.run_ready(ctx);
            return;
        }
        if let Err(e) = self.driver.step(message) {
            return self.fail(ctx, ShardError::Raft(e));
        }
        self.messages_since_ready += 1;
        if self.messages_since_ready >= MESSAGES_PER_CYCLE_MAX {
            self.run_ready(ctx);
        } else {
            self.schedule_ready(ctx);
        }
    }
}

impl Handler<ReadIndex> for RaftActor {
    type Result = ();

    fn handle(&mut self, read: ReadIndex, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        self.pending_reads.release();
        let id = self.next_request_id;
        self.next_request_id += 1;
        self.driver.read_index(id.to_be_bytes().to_vec());
        self.reads.insert(id, (read.reply, Instant::now()));
        self.schedule_ready(ctx);
    }
}

impl Handler<ChangeGroup> for RaftActor {
    type Result = ();

    fn handle(&mut self, request: ChangeGroup, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        let result = self.driver.change_group(&request.change).map_err(|e| match e {
            rushes_cluster::DriverError::NotLeader { leader, .. } => ShardError::NotLeader { shard: self.shard, leader },
            other => ShardError::Raft(other),
        });
        if result.is_ok() {
            tracing::info!(shard = self.shard, change = ?request.change, "configuration change proposed");
        }
        let _ = request.reply.send(result);
        self.schedule_ready(ctx);
    }
}

impl Handler<Observe> for RaftActor {
    type Result = ();

    fn handle(&mut self, request: Observe, _: &mut Context<Self>) {
        let _handling = self.stats.handling();
        let _ = request.reply.send(self.driver.observation(request.added));
    }
}

impl Handler<RunReady> for RaftActor {
    type Result = ();

    fn handle(&mut self, _: RunReady, ctx: &mut Context<Self>) {
        let _handling = self.stats.busy();
        self.ready_scheduled = false;
        self.run_ready(ctx);
    }
}

impl Handler<ClearStaging> for RaftActor {
    type Result = ();

    fn handle(&mut self, _: ClearStaging, ctx: &mut Context<Self>) {
        let _handling = self.stats.busy();
        // Under the lock, so it cannot fall between a fetch's check and its marking of the
        // staging area complete; a fetch it interrupts fails and is sent again
        // (`StoreError::StagingReplaced`) instead of installing a partial copy.
        let staging = self.staging.clone();
        let _staging_guard = staging.lock();
        if let Err(e) = self.store.clear_staging() {
            self.fail(ctx, e.into());
        }
    }
}

impl Handler<Shutdown> for RaftActor {
    type Result = ();

    fn handle(&mut self, shutdown: Shutdown, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.reply.send(Err(ShardError::Stopping { shard: self.shard }));
        }
        ctx.stop();
        let _ = shutdown.done.send(());
    }
}

impl RaftActor {
    fn schedule_ready(&mut self, ctx: &mut Context<Self>) {
        if !self.ready_scheduled {
            self.ready_scheduled = true;
            ctx.notify(RunReady);
        }
    }

    /// Whether there is room to write; logs each stretch below the floor once.
    fn disk_has_room(&mut self) -> bool {
        let room = self.disk.has_room();
        if !room && !self.disk_full_logged {
            tracing::error!(shard = self.shard, error = %self.disk_full_error(), "disk below its free-space floor: this replica pauses");
        } else if room && self.disk_full_logged {
            tracing::warn!(shard = self.shard, "disk space is back above its floor: this replica resumes");
        }
        self.disk_full_logged = !room;
        room
    }

    fn disk_full_error(&self) -> ShardError {
        ShardError::disk_full(self.shard, &self.disk)
    }

    /// Stops the replica until it is reopened: see the module docs.
    fn fail(&mut self, ctx: &mut Context<Self>, error: ShardError) {
        let cause = error.to_string();
        tracing::error!(shard = self.shard, error = %cause, "raft actor stopped; the replica refuses writes until it is reopened from its disk");
        self.progress.record_failure(cause.clone());
        self.stats.record_failure(cause);
        ctx.stop();
    }

    fn run_ready(&mut self, ctx: &mut Context<Self>) {
        self.proposals_since_ready = 0;
        self.messages_since_ready = 0;
        if !self.disk_has_room() {
            // The Ready waits in raft-rs until there is room to persist it.
            return;
        }
        if let Err(e) = self.process_ready(ctx) {
            self.fail(ctx, e);
        }
        self.metrics.set_queue_depth(self.shard, "proposals", self.pending_proposals.used());
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

    fn process_ready(&mut self, ctx: &mut Context<Self>) -> Result<(), ShardError> {
        while self.driver.has_ready() {
            let started = Instant::now();
            // What the last cycle published, not the driver's role now: a step-down happens
            // in `step` or `tick`, before this cycle runs.
            let (was_leader, was_term) = (self.progress.is_leader.load(Ordering::Acquire), self.progress.term.load(Ordering::Acquire));
            let mut machine = ShardMachine {
                shard: self.shard,
                store: &self.store,
                progress: &self.progress,
                metrics: &self.metrics,
                waiters: &mut self.waiters,
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
            let outcome = result?;
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
            let term = self.driver.term();
            if (was_leader && !is_leader) || (term != was_term && !self.waiters.is_empty()) {
                // Entries proposed here in an earlier term (this replica stopped leading, maybe
                // to lead again) may still commit under another leader, or be dropped: either
                // way the client must not wait for a reply this replica cannot give.
                let leader = self.driver.leader_id();
                let stale: Vec<u64> =
                    self.waiters.iter().filter(|(_, waiter)| !is_leader || waiter.term != term).map(|(id, _)| *id).collect();
                for id in stale {
                    if let Some(waiter) = self.waiters.remove(&id) {
                        let _ = waiter.reply.send(Err(ShardError::LeadershipLost { shard: self.shard, leader }));
                    }
                }
            }
            for (context, index) in outcome.read_states {
                let id = <[u8; 8]>::try_from(context.as_slice()).map(u64::from_be_bytes).unwrap_or(0);
                if let Some((reply, _)) = self.reads.remove(&id) {
                    let _ = reply.send(index);
                }
            }
            if let Some(index) = outcome.restored_snapshot {
                tracing::info!(shard = self.shard, index, "raw store replaced by the leader's snapshot; re-deriving buckets and indexes");
            }
            if let Some(applied) = outcome.applied_index {
                self.store.set_watermark(Watermark::Applied, applied)?;
                self.progress.applied.store(applied, Ordering::Release);
                // A full mailbox already holds a wake.
                let _ = self.fusion.try_send(Wake);
            }
            if outcome.restored_snapshot.is_some() {
                self.progress.snapshots_installed.fetch_add(1, Ordering::AcqRel);
                // The staged copy is only needed until the applied index past it is durable;
                // it is emptied once this cycle (which holds the staging lock) is over.
                self.store.flush()?;
                ctx.notify(ClearStaging);
            }
            debug_assert!(outcome.messages.is_empty(), "messages were sent during the cycle");
        }
        Ok(())
    }

    fn report_deliveries(&mut self, deliveries: Vec<Delivery>) {
        for delivery in deliveries {
            match delivery {
                // A snapshot message only names the data; the follower fetches it in chunks
                // (`snapshot::receive`) and answers once installed. Reporting it finished as
                // soon as it is queued puts the follower back to probing, so a lost message or
                // an abandoned fetch is retried instead of leaving it waiting forever.
                Delivery::Snapshot(to, queued) => self.driver.report_snapshot(to, queued),
                Delivery::Unreachable(to) => self.driver.report_unreachable(to),
            }
        }
    }

    /// Drops log entries that every local stage has durably consumed. A replicated shard
    /// first stores a snapshot of its raw store there, for replicas that fall behind the log.
    fn compact_log(&mut self) -> Result<(), ShardError> {
        let fused = self.progress.fused.load(Ordering::Acquire);
        let durable = fused.min(self.index.durable_watermark()).min(self.driver.applied_index());
        if self.driver.take_snapshot_wanted() {
            // A follower (a learner that just joined, say) needs a snapshot the store cannot
            // give: one now, at what every local stage has consumed, whatever the followers have.
            self.driver.compact(durable, SnapshotRef { index: durable }.encode()?)?;
            tracing::info!(shard = self.shard, index = durable, "saved a snapshot a follower needed");
            return Ok(());
        }
        if compact_alone(self.driver.store(), &self.compaction, durable, true)? {
            return Ok(());
        }
        let (retain_entries, snapshot_entries) = self.compaction.entry_limits(self.driver.store().mean_entry_bytes());
        // Nor above what active followers have: a slow one catches up from the log.
        let durable = durable.min(self.driver.slowest_active_follower_match().unwrap_or(u64::MAX));
        let up_to = durable.saturating_sub(retain_entries);
        if up_to < self.driver.store().first_log_index() + snapshot_entries {
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

/// Compacts the log of a shard with no other replica (no snapshot: nobody fetches one) down to
/// the retained entries before `durable`, what every local stage has durably consumed; with
/// `hysteresis`, only once as many entries again have accumulated, so a busy shard compacts in
/// steps rather than on every call. Returns false, and does nothing, for a replicated shard.
pub fn compact_alone(log: &SledLogStore, compaction: &Compaction, durable: u64, hysteresis: bool) -> Result<bool, LogStoreError> {
    let conf_state = log.conf_state();
    let alone = conf_state.voters.len() == 1 && conf_state.learners.is_empty() && conf_state.voters_outgoing.is_empty();
    if !alone {
        return Ok(false);
    }
    let (retain_entries, _) = compaction.entry_limits(log.mean_entry_bytes());
    let keep_from = durable.saturating_sub(retain_entries) + 1;
    let step = if hysteresis { retain_entries } else { 0 };
    if keep_from > log.first_log_index() + step {
        log.compact(keep_from)?;
    }
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn compaction() -> Compaction {
        Compaction {
            interval: Duration::from_secs(10),
            retain_entries: 1_000,
            snapshot_entries: 20_000,
            retain_bytes: 64 << 20,
            snapshot_bytes: 512 << 20,
        }
    }

    #[test]
    fn large_entries_are_limited_by_bytes_and_small_ones_by_count() {
        let limits = compaction();
        // Batches of 240 KiB (a client posting 1,000 annotations): 1,000 entries would be 234
        // MiB of log; the byte limits keep 64 MiB and compact beyond 512 MiB.
        assert_eq!(limits.entry_limits(Some(240 << 10)), (273, 2_184));
        // Small entries: the counts apply.
        assert_eq!(limits.entry_limits(Some(500)), (1_000, 20_000));
        // Nothing appended since start: the counts apply.
        assert_eq!(limits.entry_limits(None), (1_000, 20_000));
        assert_eq!(limits.entry_limits(Some(0)), (1_000, 20_000));
        // Entries larger than the budgets: still one each, so compaction makes progress.
        assert_eq!(limits.entry_limits(Some(1 << 30)), (1, 1));
    }

    fn entry(index: u64, bytes: usize) -> raft::eraftpb::Entry {
        let mut entry = raft::eraftpb::Entry::default();
        entry.index = index;
        entry.term = 1;
        entry.data = vec![7; bytes].into();
        entry
    }

    #[test]
    fn a_lone_shard_compacts_to_its_budget_in_steps_or_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = SledLogStore::open(&db, &[1]).unwrap();
        log.append(&(1..=100).map(|i| entry(i, 1_000)).collect::<Vec<_>>()).unwrap();
        let limits = Compaction { retain_bytes: 10_000, ..compaction() };
        let (retain, _) = limits.entry_limits(log.mean_entry_bytes());
        assert_eq!(retain, 9, "entries of ~1 KB");
        assert!(compact_alone(&log, &limits, 100, true).unwrap());
        assert_eq!(log.first_log_index(), 92, "the 9 last consumed entries stay");
        log.append(&(101..=105).map(|i| entry(i, 1_000)).collect::<Vec<_>>()).unwrap();
        compact_alone(&log, &limits, 105, true).unwrap();
        assert_eq!(log.first_log_index(), 92, "in steps: fewer than 9 new entries wait");
        compact_alone(&log, &limits, 105, false).unwrap();
        assert_eq!(log.first_log_index(), 97, "at once (a clean stop)");
        compact_alone(&log, &limits, 50, false).unwrap();
        assert_eq!(log.first_log_index(), 97, "nothing past what was durably consumed");

        let mut replicated = raft::eraftpb::ConfState::default();
        replicated.set_voters(vec![1, 2, 3]);
        log.set_conf_state(&replicated).unwrap();
        assert!(!compact_alone(&log, &limits, 105, false).unwrap(), "a replicated shard compacts by snapshots");
        assert_eq!(log.first_log_index(), 97);
    }
}
