//! One shard replica's Raft state machine, driven without I/O of its own.
//!
//! The caller feeds it ticks, proposals and peer messages; [`RaftDriver::run_ready`] performs
//! one Ready cycle in the order raft-rs requires, writing through the [`RaftLogStore`] (the only
//! place that may touch a disk), handing committed entries to the caller's apply function and
//! returning the messages to send. The same code runs over sled in the node and over memory on
//! a simulated network in tests.
//!
//! # Snapshots and log compaction
//!
//! The caller's state machine implements [`StateMachine`]; it drives the replica with
//! [`RaftDriver::run_ready_with`] (or [`RaftDriver::run_ready_sending`]) and [`RaftDriver::open`]:
//!
//! * [`RaftDriver::compact`] (or [`RaftDriver::compact_state_machine`]) stores a snapshot at an
//!   applied index (opaque state machine bytes + the conf state) in the log store and drops the
//!   log up to it. A follower that needs dropped entries is then sent that snapshot.
//! * When a snapshot arrives in a Ready, [`RaftDriver::run_ready_with`] persists it (data, conf
//!   state, hard state, log start) and syncs, then calls [`StateMachine::restore`], sets the
//!   applied index to the snapshot's, and only then handles entries and committed entries.
//! * On restart, [`RaftDriver::open`] restores the state machine from the stored snapshot when
//!   it is behind the log's start, and replays the remaining log through `apply`.
//!
//! A leader whose snapshot message could not be delivered reports it with
//! [`RaftDriver::report_snapshot`] (else it waits for the follower's answer before retrying).

use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};

use crate::log_store::{LogStoreError, RaftLogStore};
use crate::placement::{NodeId, ShardId};
use crate::slog_bridge::raft_logger;

#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub max_size_per_msg_bytes: u64,
    pub max_inflight_msgs: usize,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings { election_ticks: 10, heartbeat_ticks: 2, max_size_per_msg_bytes: 1 << 20, max_inflight_msgs: 256 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// This replica is not the leader (or there is none): the proposal was not accepted.
    #[error("not the leader of shard {shard} (leader: {leader:?})")]
    NotLeader { shard: ShardId, leader: Option<NodeId> },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Store(#[from] LogStoreError),
    /// The state machine could not apply a committed entry: the replica must stop applying
    /// (it would diverge from the others).
    #[error("applying entry {index} failed: {source}")]
    Apply { index: u64, source: StateMachineError },
    /// Restoring the state machine from the snapshot at `index` failed. The snapshot is already
    /// stored: reopening with [`RaftDriver::open`] retries the restore.
    #[error("restoring the state machine from the snapshot at {index} failed: {source}")]
    Restore { index: u64, source: StateMachineError },
    /// The state machine could not serialize itself for a snapshot.
    #[error("taking a snapshot of the state machine at {index} failed: {source}")]
    Snapshot { index: u64, source: StateMachineError },
    /// The state machine is behind the start of the log and there is no stored snapshot to
    /// restore it from (or the apply-only constructor was used).
    #[error("shard {shard}: the state machine has applied through {applied} but the log starts after {log_start}")]
    BehindLogStart { shard: ShardId, applied: u64, log_start: u64 },
    /// The leader knows this replica persisted the log through `commit`, but it holds only
    /// `last_index` entries: its storage was wiped or replaced by an older copy. Voting or
    /// acknowledging with such a log could lose committed writes (and raft-rs panics on it).
    #[error(
        "node {leader}, leading shard {shard}, knows this replica persisted the log through {commit} but it holds only \
         {last_index} entries: the data dir was lost or restored from an older copy. A node cannot rejoin under the same id \
         without its data; restore the data dir, or replace the node (rushes cluster replace-node) under a new id"
    )]
    LostAcknowledgedEntries { shard: ShardId, leader: NodeId, commit: u64, last_index: u64 },
    /// Another configuration change is still being applied: propose this one later.
    #[error("group {shard} is still applying a configuration change; retry once it is done")]
    ConfChangePending { shard: ShardId },
    /// Compaction must stay within what this replica has applied.
    #[error("cannot compact shard {shard} through {index}: applied only through {applied}")]
    CompactBeyondApplied { shard: ShardId, index: u64, applied: u64 },
}

/// A state machine's own error, kept whole (type and `source()` chain) inside [`DriverError`].
pub type StateMachineError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The replicated state machine.
///
/// `apply` receives every committed normal entry with data, in log order, after it is durable; it
/// must be deterministic, and an error from it stops the replica (it would diverge), so an entry
/// that is merely invalid must be applied as a deterministic rejection instead. `snapshot`
/// serializes the whole state as of the last applied entry (opaque bytes: the node puts a
/// reference to the shard's raw store there); `restore` replaces the whole state with such
/// bytes. After `restore(data)` the state must equal the one `snapshot` produced, on every
/// replica.
pub trait StateMachine {
    type Error: std::error::Error + Send + Sync + 'static;
    fn apply(&mut self, entry: &Entry) -> Result<(), Self::Error>;
    fn snapshot(&self) -> Result<Vec<u8>, Self::Error>;
    fn restore(&mut self, data: &[u8]) -> Result<(), Self::Error>;
}

/// What one Ready cycle produced for the caller.
#[derive(Debug, Default)]
pub struct ReadyOutcome {
    /// Messages to deliver to peers, in order.
    pub messages: Vec<Message>,
    /// Index of the last entry applied in this cycle, if any.
    pub applied_index: Option<u64>,
    /// The role changed in this cycle.
    pub role_changed: Option<StateRole>,
    /// The state machine was restored from a snapshot at this index in this cycle.
    pub restored_snapshot: Option<u64>,
    /// Answers to [`RaftDriver::read_index`] requests: (request context, the leader's commit
    /// index confirmed by a quorum when the request was served). A read that waits until the
    /// local state machine has applied through that index is linearizable.
    pub read_states: Vec<(Vec<u8>, u64)>,
    /// The group's configuration changed in this cycle (a conf-change entry was applied, or a
    /// snapshot installed): the new voters and learners.
    pub conf_changed: Option<raft::eraftpb::ConfState>,
    /// Wall time spent writing and syncing the log (entries, hard state, commit), and applying
    /// committed entries to the state machine, in this cycle. Measured only, never acted on.
    pub persist_time: Duration,
    pub apply_time: Duration,
}

pub struct RaftDriver<S: RaftLogStore> {
    shard: ShardId,
    node: RawNode<S>,
    applied_index: u64,
}

impl<S: RaftLogStore> RaftDriver<S> {
    /// `applied_index` is how far the caller's state machine had durably applied; it is clamped
    /// to the persisted commit index (re-applying is idempotent, skipping is not). It must not
    /// be behind the start of the log (compacted entries cannot be replayed): that is
    /// [`DriverError::BehindLogStart`]; use [`RaftDriver::open`] to restore from a snapshot.
    pub fn new(node_id: NodeId, shard: ShardId, settings: &RaftSettings, store: S, applied_index: u64) -> Result<Self, DriverError> {
        let commit = store.hard_state().commit;
        let applied_index = applied_index.min(commit);
        let log_start = store.first_index()?.saturating_sub(1);
        if applied_index < log_start {
            return Err(DriverError::BehindLogStart { shard, applied: applied_index, log_start });
        }
        let config = raft::Config {
            id: node_id,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            applied: applied_index,
            max_size_per_msg: settings.max_size_per_msg_bytes,
            max_inflight_msgs: settings.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        config.validate()?;
        let node = RawNode::new(&config, store, &raft_logger(shard, node_id))?;
        Ok(RaftDriver { shard, node, applied_index })
    }

    /// Like [`RaftDriver::new`], for a caller with a [`StateMachine`]: if the state machine (at
    /// `applied_index`) is behind the start of the log, it is first restored from the stored
    /// snapshot, and the driver starts applied at the snapshot's index. The rest of the log is
    /// then replayed through [`RaftDriver::run_ready_with`] as usual.
    pub fn open<M: StateMachine>(
        node_id: NodeId,
        shard: ShardId,
        settings: &RaftSettings,
        store: S,
        applied_index: u64,
        state_machine: &mut M,
    ) -> Result<Self, DriverError> {
        let mut applied_index = applied_index.min(store.hard_state().commit);
        let log_start = store.first_index()?.saturating_sub(1);
        if applied_index < log_start {
            let snapshot = store.stored_snapshot()?.filter(|s| s.get_metadata().index >= log_start).ok_or(DriverError::BehindLogStart {
                shard,
                applied: applied_index,
                log_start,
            })?;
            let index = snapshot.get_metadata().index;
            state_machine.restore(snapshot.get_data()).map_err(|e| DriverError::Restore { index, source: e.into() })?;
            tracing::info!(shard, node = node_id, index, "restored the state machine from the stored snapshot");
            applied_index = index;
        }
        Self::new(node_id, shard, settings, store, applied_index)
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn tick(&mut self) -> bool {
        self.node.tick()
    }

    /// Starts an election now (a single-voter group becomes leader at once).
    pub fn campaign(&mut self) -> Result<(), DriverError> {
        Ok(self.node.campaign()?)
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        let leader = self.node.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(leader)
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// On a leader: the lowest log index that the followers it heard from recently (within
    /// an election timeout, with `check_quorum`) have persisted. Compacting above it would send
    /// a follower that is merely slow a whole snapshot. `None` on a follower or with no such
    /// follower (one cut off for longer does not hold the log back).
    pub fn slowest_active_follower_match(&self) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        let own_id = self.node.raft.id;
        self.node
            .raft
            .prs()
            .iter()
            .filter(|(id, progress)| **id != own_id && progress.recent_active)
            .map(|(_, progress)| progress.matched)
            .min()
    }

    pub fn store(&self) -> &S {
        self.node.store()
    }

    /// Proposes `data`; `context` comes back with the committed entry (we put the proposal id
    /// there to find the waiting client).
    pub fn propose(&mut self, context: Vec<u8>, data: Vec<u8>) -> Result<(), DriverError> {
        if !self.is_leader() {
            return Err(DriverError::NotLeader { shard: self.shard, leader: self.leader_id() });
        }
        match self.node.propose(context, data) {
            Ok(()) => Ok(()),
            Err(raft::Error::ProposalDropped) => Err(DriverError::NotLeader { shard: self.shard, leader: self.leader_id() }),
            Err(e) => Err(e.into()),
        }
    }

    /// Proposes a configuration change (learners, voters; several at once go through a joint
    /// configuration that raft-rs leaves by itself). Only the leader accepts it, and only when
    /// no other change is pending.
    pub fn propose_conf_change(&mut self, context: Vec<u8>, change: raft::eraftpb::ConfChangeV2) -> Result<(), DriverError> {
        if !self.is_leader() {
            return Err(DriverError::NotLeader { shard: self.shard, leader: self.leader_id() });
        }
        match self.node.propose_conf_change(context, change) {
            Ok(()) => Ok(()),
            Err(raft::Error::ProposalDropped) => Err(DriverError::ConfChangePending { shard: self.shard }),
            Err(e) => Err(e.into()),
        }
    }

    /// Hands leadership to `to` (a caught-up voter): the leader stops taking proposals and
    /// sends `to` a TimeoutNow once its log matches.
    pub fn transfer_leader(&mut self, to: NodeId) {
        self.node.transfer_leader(to);
    }

    /// The configuration in force: voters (incoming and, while joint, outgoing) and learners.
    pub fn conf_state(&self) -> raft::eraftpb::ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }

    /// Whether a follower needed a snapshot the store could not give (see
    /// [`RaftLogStore::take_snapshot_wanted`]); the owner should compact at its applied index.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.node.store().take_snapshot_wanted()
    }

    /// Whether the configuration is joint (a multi-step change is half applied).
    pub fn is_joint(&self) -> bool {
        !self.conf_state().voters_outgoing.is_empty()
    }

    /// On a leader: how far `node` has persisted the log (`None` on a follower or for a node
    /// outside the group).
    pub fn matched(&self, node: NodeId) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        self.node.raft.prs().get(node).map(|progress| progress.matched)
    }

    /// On a leader: the group's configuration and how far `added` has replicated, for the
    /// metadata leader driving a move (`None` on a follower).
    pub fn observation(&self, added: Option<NodeId>) -> Option<crate::membership::GroupObservation> {
        if !self.is_leader() {
            return None;
        }
        let conf = self.conf_state();
        Some(crate::membership::GroupObservation {
            leader: self.node.raft.id,
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            joint: !conf.voters_outgoing.is_empty(),
            commit_index: self.commit_index(),
            added_matched: added.and_then(|node| self.matched(node)),
            caught_up_voters: self.caught_up_voters(),
        })
    }

    /// On a leader: the voters it heard from recently whose logs are within
    /// `membership::CAUGHT_UP_ENTRIES` of the commit (itself included).
    fn caught_up_voters(&self) -> Vec<NodeId> {
        let commit = self.commit_index();
        let me = self.node.raft.id;
        let voters = self.conf_state().voters;
        let progress = self.node.raft.prs();
        voters
            .into_iter()
            .filter(|&id| {
                id == me || progress.get(id).is_some_and(|p| p.recent_active && p.matched + crate::membership::CAUGHT_UP_ENTRIES >= commit)
            })
            .collect()
    }

    /// Makes a change the metadata leader asked for: a configuration change or a leader
    /// transfer. Only on the leader; a change to a node the group already has is a no-op
    /// there (raft-rs refuses nothing it can apply, and the next observation shows the result).
    pub fn change_group(&mut self, change: &crate::membership::GroupChange) -> Result<(), DriverError> {
        if !self.is_leader() {
            return Err(DriverError::NotLeader { shard: self.shard, leader: self.leader_id() });
        }
        match (change, change.conf_change()) {
            (crate::membership::GroupChange::TransferLeader { to }, _) => {
                self.transfer_leader(*to);
                Ok(())
            }
            (_, Some(conf_change)) => self.propose_conf_change(vec![], conf_change),
            (_, None) => Ok(()),
        }
    }

    /// Asks for a read index (raft's ReadIndex: the leader confirms it still leads with a
    /// heartbeat round, then answers with its commit index). On a follower the request goes to
    /// the leader. The answer arrives in a later [`ReadyOutcome::read_states`] with `context`;
    /// with no leader the request is dropped, so callers wait with a deadline.
    pub fn read_index(&mut self, context: Vec<u8>) {
        self.node.read_index(context);
    }

    pub fn step(&mut self, message: Message) -> Result<(), DriverError> {
        // A current leader's heartbeat carries at most the commit this replica acknowledged as
        // persisted; beyond its log, the log was lost.
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.term >= self.term() && message.commit > self.last_index() {
            return Err(DriverError::LostAcknowledgedEntries {
                shard: self.shard,
                leader: message.from,
                commit: message.commit,
                last_index: self.last_index(),
            });
        }
        match self.node.step(message) {
            // Messages from peers that are not (or no longer) in the group are dropped.
            Ok(()) | Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Index of the first entry still in the log (everything before it is in a snapshot).
    pub fn first_index(&self) -> u64 {
        self.node.raft.raft_log.first_index()
    }

    /// The leader reports whether a snapshot message to `to` was delivered. On failure the
    /// leader goes back to probing the follower and sends a snapshot again when needed.
    pub fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
        self.node.report_snapshot(to, status);
    }

    /// The transport could not reach `to`: the leader stops pipelining to it until it answers.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.node.report_unreachable(to);
    }

    /// Stores a snapshot at `up_to_index` (which this replica has applied) with the state
    /// machine's serialized state *as of that index* and the current conf state, then drops the
    /// log through it (atomically with storing the snapshot) and syncs. Compacting at or before
    /// the current log start is a no-op.
    pub fn compact(&mut self, up_to_index: u64, snapshot_data: Vec<u8>) -> Result<(), DriverError> {
        if up_to_index > self.applied_index {
            return Err(DriverError::CompactBeyondApplied { shard: self.shard, index: up_to_index, applied: self.applied_index });
        }
        let store = self.node.store().clone();
        if up_to_index < store.first_index()?.saturating_sub(1) {
            return Ok(());
        }
        if store.stored_snapshot()?.is_some_and(|s| s.get_metadata().index >= up_to_index) {
            return Ok(());
        }
        // The stored configuration is the one in force from the entry that produced it on: a
        // snapshot before that entry must wait (the next compaction round is past it).
        if store.conf_state_index() > up_to_index {
            return Ok(());
        }
        let mut snapshot = Snapshot { data: snapshot_data.into(), ..Default::default() };
        let metadata = snapshot.mut_metadata();
        metadata.index = up_to_index;
        metadata.term = store.term(up_to_index)?;
        metadata.set_conf_state(store.initial_state()?.conf_state);
        store.save_snapshot(&snapshot)?;
        store.sync()?;
        tracing::debug!(shard = self.shard, index = up_to_index, "compacted the raft log into a snapshot");
        Ok(())
    }

    /// [`RaftDriver::compact`] at the applied index with `state_machine.snapshot()` (which must
    /// reflect exactly the entries this driver has applied).
    pub fn compact_state_machine<M: StateMachine>(&mut self, state_machine: &M) -> Result<(), DriverError> {
        let index = self.applied_index;
        let data = state_machine.snapshot().map_err(|e| DriverError::Snapshot { index, source: e.into() })?;
        self.compact(index, data)
    }

    /// One Ready cycle with a [`StateMachine`], in raft-rs's order: send the leader's messages;
    /// install a snapshot if there is one (persist and sync it, then restore the state machine);
    /// persist new entries and the hard state (commit included) and sync; send the messages
    /// that had to wait for persistence; apply committed entries; `advance` and handle the
    /// `LightReady` the same way; `advance_apply`.
    pub fn run_ready_with<M: StateMachine>(&mut self, state_machine: &mut M) -> Result<ReadyOutcome, DriverError> {
        let mut sent = Vec::new();
        let mut outcome = self.run_ready_sending(state_machine, &mut |messages| sent.extend(messages))?;
        outcome.messages = sent;
        Ok(outcome)
    }

    /// [`RaftDriver::run_ready_with`] that hands messages to `send` as soon as raft-rs allows
    /// them out, instead of returning them: the leader's appends leave before its own fsync and
    /// a follower's acknowledgements before it applies, so a write costs the slower of the two
    /// fsyncs rather than their sum plus the apply. `outcome.messages` stays empty.
    pub fn run_ready_sending<M: StateMachine>(
        &mut self,
        state_machine: &mut M,
        send: &mut dyn FnMut(Vec<Message>),
    ) -> Result<ReadyOutcome, DriverError> {
        let mut outcome = ReadyOutcome::default();
        if !self.node.has_ready() {
            return Ok(outcome);
        }
        let mut ready = self.node.ready();
        if let Some(soft_state) = ready.ss() {
            outcome.role_changed = Some(soft_state.raft_state);
        }
        // Leader messages may go out before the local append (raft thesis 10.2.1).
        send_nonempty(send, ready.take_messages());
        outcome.read_states.extend(ready.take_read_states().into_iter().map(|state| (state.request_ctx, state.index)));
        let store = self.node.store().clone();
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot();
            let index = snapshot.get_metadata().index;
            // Durable before the state machine changes: a crash in between restores from the
            // stored snapshot on reopen ([`RaftDriver::open`]).
            store.apply_snapshot(snapshot)?;
            store.sync()?;
            state_machine.restore(snapshot.get_data()).map_err(|e| DriverError::Restore { index, source: e.into() })?;
            tracing::info!(shard = self.shard, index, "restored the state machine from a leader's snapshot");
            self.applied_index = index;
            outcome.applied_index = Some(index);
            outcome.restored_snapshot = Some(index);
            outcome.conf_changed = Some(snapshot.get_metadata().get_conf_state().clone());
        }
        let persist_started = Instant::now();
        store.append(ready.entries())?;
        if let Some(hard_state) = ready.hs() {
            store.set_hard_state(hard_state)?;
        }
        // Commit index persisted before anything is applied, so a restart never finds the
        // state machine ahead of the log's commit.
        let committed = ready.take_committed_entries();
        if let Some(last) = committed.last() {
            store.set_commit(last.index)?;
        }
        store.sync()?;
        outcome.persist_time = persist_started.elapsed();
        send_nonempty(send, ready.take_persisted_messages());
        self.apply_entries(&committed, state_machine, &mut outcome)?;

        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            store.set_commit(commit)?;
        }
        send_nonempty(send, light.take_messages());
        let committed = light.take_committed_entries();
        if let Some(last) = committed.last() {
            store.set_commit(last.index)?;
        }
        self.apply_entries(&committed, state_machine, &mut outcome)?;
        self.node.advance_apply();
        Ok(outcome)
    }

    fn apply_entries<M: StateMachine>(
        &mut self,
        entries: &[Entry],
        state_machine: &mut M,
        outcome: &mut ReadyOutcome,
    ) -> Result<(), DriverError> {
        if entries.is_empty() {
            return Ok(()); // nothing to time: `apply_time` stays zero in a cycle without entries
        }
        let started = Instant::now();
        for entry in entries {
            debug_assert!(entry.index == self.applied_index + 1 || entry.index <= self.applied_index, "entries apply in order");
            if entry.index <= self.applied_index {
                continue;
            }
            // Empty entries are the leader's no-op of a new term.
            match entry.get_entry_type() {
                EntryType::EntryNormal if !entry.data.is_empty() => {
                    state_machine.apply(entry).map_err(|e| DriverError::Apply { index: entry.index, source: e.into() })?;
                }
                EntryType::EntryNormal => {}
                kind @ (EntryType::EntryConfChange | EntryType::EntryConfChangeV2) => {
                    if let Some(conf_state) = self.apply_conf_change(entry, kind == EntryType::EntryConfChangeV2)? {
                        outcome.conf_changed = Some(conf_state);
                    }
                }
            }
            self.applied_index = entry.index;
            outcome.applied_index = Some(entry.index);
        }
        outcome.apply_time += started.elapsed();
        Ok(())
    }
}

impl<S: RaftLogStore> RaftDriver<S> {
    /// Applies a committed configuration change and stores the configuration it gives, with
    /// its index. Every replica applies the same entry alike: one that does not parse, or that
    /// raft-rs refuses (it would leave no voter), changes nothing anywhere and is logged.
    fn apply_conf_change(&mut self, entry: &Entry, v2: bool) -> Result<Option<raft::eraftpb::ConfState>, DriverError> {
        use protobuf::Message as _;
        if crate::raft_wire::check_conf_change(&entry.data, v2).is_err() {
            tracing::warn!(shard = self.shard, index = entry.index, "ignored a malformed configuration change");
            return Ok(None);
        }
        let applied = if v2 {
            match raft::eraftpb::ConfChangeV2::parse_from_bytes(&entry.data) {
                Ok(change) => self.node.apply_conf_change(&change),
                Err(e) => Err(raft::Error::CodecError(e)),
            }
        } else {
            match raft::eraftpb::ConfChange::parse_from_bytes(&entry.data) {
                Ok(change) => self.node.apply_conf_change(&change),
                Err(e) => Err(raft::Error::CodecError(e)),
            }
        };
        match applied {
            Ok(conf_state) => {
                self.node.store().set_conf_state_at(&conf_state, entry.index)?;
                tracing::info!(
                    shard = self.shard,
                    index = entry.index,
                    voters = ?conf_state.voters,
                    learners = ?conf_state.learners,
                    joint = !conf_state.voters_outgoing.is_empty(),
                    "configuration changed"
                );
                Ok(Some(conf_state))
            }
            Err(e) => {
                tracing::warn!(shard = self.shard, index = entry.index, error = %e, "ignored a configuration change raft refused");
                Ok(None)
            }
        }
    }
}

fn send_nonempty(send: &mut dyn FnMut(Vec<Message>), messages: Vec<Message>) {
    if !messages.is_empty() {
        send(messages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::MemLogStore;
    use crate::sim::{ListMachine, SimCluster};
    use raft::Storage;
    use rand::Rng;

    /// A replica whose storage was wiped gets its leader's heartbeat (commit beyond its empty
    /// log): an error that says so, not raft-rs's panic; a stale term's heartbeat is ignored.
    #[test]
    fn a_heartbeat_beyond_a_wiped_log_is_refused_not_a_panic() {
        let mut driver = RaftDriver::new(3, 7, &RaftSettings::default(), MemLogStore::new(&[1, 2, 3]), 0).unwrap();
        let heartbeat = |term: u64, commit: u64| {
            let mut message = Message { from: 1, to: 3, term, commit, ..Default::default() };
            message.set_msg_type(MessageType::MsgHeartbeat);
            message
        };
        driver.step(heartbeat(2, 0)).unwrap();
        assert_eq!(driver.term(), 2);
        driver.step(heartbeat(1, 13)).unwrap();
        match driver.step(heartbeat(2, 13)) {
            Err(DriverError::LostAcknowledgedEntries { shard: 7, leader: 1, commit: 13, last_index: 0 }) => {}
            other => panic!("expected LostAcknowledgedEntries, got {other:?}"),
        }
    }

    fn conf_change(changes: &[(raft::eraftpb::ConfChangeType, NodeId)]) -> raft::eraftpb::ConfChangeV2 {
        let mut change = raft::eraftpb::ConfChangeV2::default();
        for &(kind, node) in changes {
            let mut single = raft::eraftpb::ConfChangeSingle::default();
            single.set_change_type(kind);
            single.node_id = node;
            change.mut_changes().push(single);
        }
        change
    }

    /// The leader of the newest term, once there is one.
    fn leader(cluster: &mut SimCluster<MemLogStore>) -> NodeId {
        assert!(cluster.run_until(300, |c| !c.leaders().is_empty()), "no leader was elected");
        cluster.leaders().into_iter().max_by_key(|(_, term)| *term).expect("a leader").0
    }

    fn voters(cluster: &SimCluster<MemLogStore>, id: NodeId) -> Vec<NodeId> {
        let mut voters = cluster.drivers[&id].conf_state().voters;
        voters.sort();
        voters
    }

    /// The move protocol on a simulated network: a new replica starts from the group's first
    /// voters, joins as a learner (by log replay, or by snapshot when the log was compacted),
    /// catches up while writes continue, then one joint change makes it a voter and removes
    /// another (the leader itself in some seeds, after a leadership transfer). Every replica
    /// ends with the same configuration and the same applied entries, and keeps both across a
    /// restart; at no point are there two leaders in a term.
    #[test]
    fn a_learner_catches_up_and_replaces_a_voter_through_a_joint_change() {
        use raft::eraftpb::ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};
        for seed in 0..6u64 {
            let mut cluster = SimCluster::in_memory(&[1, 2, 3], seed);
            cluster.drop_rate = 0.02;
            assert!(cluster.run_until(300, |c| c.leaders().len() == 1));
            let mut written = 0u8;
            for _ in 0..30 {
                if cluster.propose_to_leader(vec![written]) {
                    written += 1;
                }
                cluster.step_all();
            }
            assert!(cluster.run_until(200, |c| c.machines.values().all(|m| m.log.len() == written as usize)));
            if seed % 2 == 0 {
                for id in [1, 2, 3] {
                    cluster.compact(id);
                }
            }
            cluster.add_replica(4, &[1, 2, 3]);
            let first = leader(&mut cluster);
            cluster.drivers.get_mut(&first).unwrap().propose_conf_change(vec![], conf_change(&[(AddLearnerNode, 4)])).unwrap();
            assert!(cluster.run_until(400, |c| c.drivers[&4].conf_state().learners == vec![4]), "seed {seed}: 4 never became a learner");
            assert!(!cluster.drivers[&4].is_leader() && voters(&cluster, 4) == vec![1, 2, 3]);
            for _ in 0..10 {
                if cluster.propose_to_leader(vec![written]) {
                    written += 1;
                }
                cluster.tick_all();
            }
            assert!(
                cluster.run_until(400, |c| c.log(4).len() == written as usize),
                "seed {seed}: the learner caught up to {} of {written}",
                cluster.log(4).len()
            );
            // Replace the current leader in half the seeds: it hands leadership over first.
            let current = leader(&mut cluster);
            let removed = if seed % 3 == 0 { current } else { [1, 2, 3].into_iter().find(|&n| n != current).unwrap() };
            if removed == current {
                let to = [1, 2, 3].into_iter().find(|&n| n != current).unwrap();
                cluster.drivers.get_mut(&current).unwrap().transfer_leader(to);
                assert!(
                    cluster.run_until(300, |c| c
                        .leaders()
                        .iter()
                        .any(|&(id, term)| id == to && term >= c.leaders().iter().map(|l| l.1).max().unwrap_or(0))),
                    "seed {seed}: leadership was not transferred"
                );
            }
            let promoter = leader(&mut cluster);
            cluster
                .drivers
                .get_mut(&promoter)
                .unwrap()
                .propose_conf_change(vec![], conf_change(&[(AddNode, 4), (RemoveNode, removed)]))
                .unwrap();
            let mut expected: Vec<NodeId> = [1, 2, 3, 4].into_iter().filter(|&n| n != removed).collect();
            expected.sort();
            let survivors = expected.clone();
            assert!(
                cluster.run_until(600, |c| survivors.iter().all(|&n| !c.drivers[&n].is_joint() && voters(c, n) == survivors)),
                "seed {seed}: the joint change did not complete"
            );
            cluster.remove_replica(removed);
            for _ in 0..10 {
                if cluster.propose_to_leader(vec![written]) {
                    written += 1;
                }
                cluster.tick_all();
            }
            assert!(cluster.run_until(400, |c| c.all_applied(written as usize)), "seed {seed}: the new group did not converge");
            // The configuration is durable: a restarted replica keeps it.
            cluster.restart(4);
            assert_eq!(voters(&cluster, 4), expected);
            assert!(cluster.run_until(300, |c| c.leaders().len() == 1 && c.all_applied(written as usize)));
        }
    }

    /// The metadata leader's loop, on the simulated network: the map's move is driven only by
    /// `membership::next_step` over what the group's leader reports (`observation`) and the
    /// changes it asks for (`change_group`), with writes going on, lost messages, and the
    /// group's leader restarted in the middle of the move. The move finishes, the new replica
    /// holds every acknowledged write, and the group never has two leaders in a term.
    #[test]
    fn next_step_drives_a_move_to_completion_through_leader_restarts() {
        use crate::membership::{next_step, ClusterMap, GroupChange, MapCommand, Member, MoveStep, QueuedMove};
        for seed in 0..4u64 {
            let members =
                (1..=4).map(|id| Member { id, raft_addr: format!("n{id}:1"), http_addr: format!("n{id}:2"), draining: false }).collect();
            let mut map = ClusterMap::bootstrap("sim", 1, 3, members);
            map.queued.clear();
            map.shards[0].voters = vec![1, 2, 3];
            map.shards[0].initial_voters = vec![1, 2, 3];
            let remove = 1 + seed % 3;
            map.apply(&MapCommand::QueueMove(QueuedMove { group: 0, add: 4, remove: Some(remove) })).unwrap();
            map.apply(&MapCommand::StartQueued).unwrap();

            let mut cluster = SimCluster::in_memory(&[1, 2, 3], seed);
            cluster.drop_rate = 0.02;
            let mut written = 0u32;
            cluster.add_replica(4, &[1, 2, 3]);
            let mut restarted = false;
            for round in 0..3000 {
                let Some(m) = map.shards[0].moving.clone() else { break };
                if round % 3 == 0 && cluster.propose_to_leader(written.to_be_bytes().to_vec()) {
                    written += 1;
                }
                cluster.tick_all();
                if !restarted && m.phase == crate::membership::MovePhase::CatchUp {
                    let id = leader(&mut cluster);
                    cluster.restart(id);
                    restarted = true;
                    continue;
                }
                let Some(id) = cluster.leaders().into_iter().max_by_key(|(_, term)| *term).map(|l| l.0) else { continue };
                let Some(observed) = cluster.drivers[&id].observation(Some(m.add)) else { continue };
                match next_step(0, &m, &observed) {
                    MoveStep::Wait => {}
                    MoveStep::Map(command) => map.apply(&command).unwrap(),
                    MoveStep::AddLearner { node } => {
                        let _ = cluster.drivers.get_mut(&id).unwrap().change_group(&GroupChange::AddLearner { node });
                    }
                    MoveStep::Promote { add, remove } => {
                        let _ = cluster.drivers.get_mut(&id).unwrap().change_group(&GroupChange::Promote { add, remove });
                    }
                    MoveStep::TransferLeader { to } => {
                        let _ = cluster.drivers.get_mut(&id).unwrap().change_group(&GroupChange::TransferLeader { to });
                    }
                    MoveStep::RemoveNode { .. } => unreachable!("not a metadata departure"),
                }
                cluster.check_invariants();
            }
            assert!(map.shards[0].moving.is_none(), "seed {seed}: the move did not finish");
            assert!(restarted, "seed {seed}: the leader was never restarted during the catch-up");
            let mut expected: Vec<NodeId> = [1, 2, 3, 4].into_iter().filter(|&n| n != remove).collect();
            expected.sort();
            let mut in_map = map.shards[0].voters.clone();
            in_map.sort();
            assert_eq!(in_map, expected, "seed {seed}");
            // A write is acknowledged once a replica applied it (committed). A proposal the old
            // leader accepted just before its restart may never commit, so `written` is only an
            // upper bound; what must survive is every acknowledged write. The applied logs are
            // prefixes of each other (`check_invariants`), so the longest one is that set.
            let acknowledged = cluster.machines.values().map(|m| m.log.clone()).max_by_key(|log| log.len()).unwrap_or_default();
            assert!(!acknowledged.is_empty(), "seed {seed}: no write was acknowledged during the move");
            cluster.remove_replica(remove);
            assert!(
                cluster.run_until(600, |c| {
                    expected.iter().all(|&n| voters(c, n) == expected)
                        && c.machines.values().all(|m| m.log.len() >= acknowledged.len() && m.log[..acknowledged.len()] == acknowledged[..])
                        && c.all_applied(c.machines[&expected[0]].log.len())
                }),
                "seed {seed}: the new group did not converge on every acknowledged write ({} of {written} proposed)",
                acknowledged.len()
            );
        }
    }

    #[test]
    fn a_snapshot_never_carries_a_configuration_from_after_its_index() {
        use raft::eraftpb::ConfChangeType::AddLearnerNode;
        let mut cluster = SimCluster::in_memory(&[1, 2, 3], 9);
        assert!(cluster.run_until(300, |c| c.leaders().len() == 1));
        for i in 0..5u8 {
            cluster.propose_to_leader(vec![i]);
            cluster.step_all();
        }
        assert!(cluster.run_until(100, |c| c.all_applied(5)));
        let id = leader(&mut cluster);
        let before = cluster.drivers[&id].applied_index();
        cluster.drivers.get_mut(&id).unwrap().propose_conf_change(vec![], conf_change(&[(AddLearnerNode, 4)])).unwrap();
        assert!(cluster.run_until(100, |c| c.drivers[&id].conf_state().learners == vec![4]));
        // Compacting at an index before the change is skipped, at or after it is done.
        let store = cluster.stores[&id].clone();
        cluster.drivers.get_mut(&id).unwrap().compact(before, vec![]).unwrap();
        assert!(store.stored_snapshot().unwrap().is_none(), "a snapshot before the change would carry the new learner");
        cluster.compact(id);
        let snapshot = store.stored_snapshot().unwrap().expect("compacted after the change");
        assert_eq!(snapshot.get_metadata().get_conf_state().learners, vec![4]);
    }

    #[test]
    fn single_voter_becomes_leader_and_applies_in_order() {
        let store = MemLogStore::new(&[1]);
        let mut driver = RaftDriver::new(1, 7, &RaftSettings::default(), store, 0).unwrap();
        assert!(matches!(driver.propose(vec![], b"x".to_vec()), Err(DriverError::NotLeader { shard: 7, .. })));
        driver.campaign().unwrap();
        let mut machine = ListMachine::default();
        driver.run_ready_with(&mut machine).unwrap();
        assert!(driver.is_leader());
        for i in 0..5u8 {
            driver.propose(vec![i], vec![i]).unwrap();
        }
        while driver.has_ready() {
            driver.run_ready_with(&mut machine).unwrap();
        }
        assert_eq!(machine.log, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(driver.applied_index(), driver.commit_index());
        assert_eq!(driver.store().hard_state().commit, driver.commit_index(), "commit persisted");
    }

    #[test]
    fn read_index_answers_with_the_quorum_commit_and_never_from_an_isolated_leader() {
        let mut cluster = SimCluster::in_memory(&[1, 2, 3], 7);
        assert!(cluster.run_until(200, |c| c.leaders().len() == 1));
        for i in 0..5u8 {
            assert!(cluster.propose_to_leader(vec![i]));
            cluster.step_all();
        }
        assert!(cluster.run_until(50, |c| c.all_applied(5)));
        let leader = cluster.leaders()[0].0;
        let follower = *cluster.drivers.keys().find(|id| **id != leader).unwrap();
        let commit = cluster.drivers[&leader].commit_index();
        // On a follower the request travels to the leader and back.
        cluster.drivers.get_mut(&follower).unwrap().read_index(b"r1".to_vec());
        assert!(cluster.run_until(20, |c| c.read_states.get(&follower).is_some_and(|r| !r.is_empty())), "follower read not answered");
        assert_eq!(cluster.read_states[&follower], vec![(b"r1".to_vec(), commit)]);
        // A leader cut off from its quorum cannot confirm it still leads: no answer, ever.
        cluster.isolated = vec![leader];
        cluster.drivers.get_mut(&leader).unwrap().read_index(b"r2".to_vec());
        cluster.run_until(100, |_| false);
        assert!(cluster.read_states.get(&leader).is_none_or(|r| r.is_empty()), "isolated leader answered a read index");
        // The majority elected a new leader, whose answers cover everything committed before.
        let new_leader = cluster.leaders().into_iter().find(|(id, _)| *id != leader).expect("new leader").0;
        assert!(cluster.propose_to_leader(b"after".to_vec()));
        cluster.drivers.get_mut(&new_leader).unwrap().read_index(b"r3".to_vec());
        assert!(cluster.run_until(20, |c| c.read_states.get(&new_leader).is_some_and(|r| !r.is_empty())));
        let (_, index) = &cluster.read_states[&new_leader][0];
        assert!(*index >= commit, "read index {index} is behind the commit {commit} acknowledged before the request");
    }

    #[test]
    fn three_replicas_elect_one_leader_and_replicate() {
        let mut cluster = SimCluster::in_memory(&[1, 2, 3], 1);
        assert!(cluster.run_until(200, |c| c.leaders().len() == 1), "no leader elected");
        for i in 0..20u8 {
            assert!(cluster.propose_to_leader(vec![i]));
            cluster.step_all();
        }
        assert!(cluster.run_until(50, |c| c.all_applied(20)));
    }

    #[test]
    fn leader_isolation_elects_new_leader_and_committed_entries_survive() {
        for seed in 0..5 {
            let mut cluster = SimCluster::in_memory(&[1, 2, 3], seed);
            assert!(cluster.run_until(200, |c| c.leaders().len() == 1));
            for i in 0..10u8 {
                cluster.propose_to_leader(vec![i]);
                cluster.step_all();
            }
            assert!(cluster.run_until(50, |c| c.all_applied(10)));
            let old_leader = cluster.leaders()[0].0;
            cluster.isolated.push(old_leader);
            // With check_quorum the isolated leader steps down; the majority elects another.
            assert!(cluster
                .run_until(300, |c| c.leaders().iter().any(|(id, _)| *id != old_leader) && c.drivers[&old_leader].is_leader() == false));
            // Proposals to the isolated node fail fast instead of hanging.
            assert!(cluster.drivers.get_mut(&old_leader).unwrap().propose(vec![], vec![99]).is_err());
            for i in 10..20u8 {
                assert!(cluster.propose_to_leader(vec![i]));
                cluster.step_all();
            }
            cluster.isolated.clear();
            assert!(cluster.run_until(300, |c| c.all_applied(20)), "did not heal (seed {seed})");
            let expected: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i]).collect();
            assert!(cluster.machines.values().all(|m| m.log == expected));
        }
    }

    #[test]
    fn message_loss_and_restarts_keep_logs_consistent() {
        let mut cluster = SimCluster::in_memory(&[1, 2, 3], 9);
        cluster.drop_rate = 0.2;
        let mut proposed = 0u8;
        for round in 0..30u64 {
            cluster.run_until(20, |_| false);
            if cluster.propose_to_leader(vec![proposed]) {
                proposed += 1;
            }
            if round % 10 == 5 {
                cluster.restart((round % 3) + 1);
            }
        }
        cluster.drop_rate = 0.0;
        assert!(cluster.run_until(500, |c| {
            let lens: Vec<usize> = c.machines.values().map(|m| m.log.len()).collect();
            lens.iter().all(|l| *l == lens[0]) && c.leaders().len() == 1
        }));
        cluster.check_invariants();
    }

    fn payload(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    #[test]
    fn isolated_replica_catches_up_by_snapshot_after_compaction() {
        for seed in 0..8u64 {
            let mut cluster = SimCluster::in_memory(&[1, 2, 3], seed);
            assert!(cluster.run_until(200, |c| c.leaders().len() == 1), "no leader (seed {seed})");
            let leader = cluster.leaders()[0].0;
            let lagging = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
            let other = [1, 2, 3].into_iter().find(|id| *id != leader && *id != lagging).unwrap();
            cluster.isolated.push(lagging);
            for i in 0..200u32 {
                assert!(cluster.propose_to_leader(payload(i)), "proposal {i} refused (seed {seed})");
                cluster.step_all();
            }
            assert!(cluster.run_until(100, |c| c.log(leader).len() == 200 && c.log(other).len() == 200));
            assert!(cluster.log(lagging).len() < 200);
            for id in [leader, other] {
                cluster.compact(id);
                let driver = &cluster.drivers[&id];
                assert_eq!(driver.first_index(), driver.applied_index() + 1, "log compacted through the applied index");
                assert!(matches!(
                    driver.store().entries(1, 2, None, raft::GetEntriesContext::empty(false)),
                    Err(raft::Error::Store(raft::StorageError::Compacted))
                ));
            }
            // Odd seeds heal on a lossy network: lost snapshots are reported and re-sent.
            cluster.drop_rate = if seed % 2 == 1 { 0.2 } else { 0.0 };
            cluster.isolated.clear();
            assert!(cluster.run_until(1000, |c| c.log(lagging).len() == 200), "lagging replica did not catch up (seed {seed})");
            assert!(cluster.restores(lagging) >= 1, "caught up by snapshot, not by log (seed {seed})");
            let lagging_driver = &cluster.drivers[&lagging];
            assert!(lagging_driver.first_index() > 1, "the follower's log starts after the snapshot");
            assert!(lagging_driver.store().stored_snapshot().unwrap().is_some());
            assert_eq!(cluster.restores(leader), 0);
            // Later entries replicate through the log as usual.
            let mut next = 200u32;
            for _ in 0..200 {
                if next == 230 {
                    break;
                }
                if cluster.propose_to_leader(payload(next)) {
                    next += 1;
                }
                cluster.tick_all();
            }
            assert_eq!(next, 230, "proposals kept failing (seed {seed})");
            cluster.drop_rate = 0.0;
            let ok = cluster.run_until(500, |c| c.all_applied(230));
            assert!(
                ok,
                "replicas differ (seed {seed}): {:?} leaders {:?}",
                cluster.machines.iter().map(|(id, m)| (*id, m.log.len(), m.log.last().cloned())).collect::<Vec<_>>(),
                cluster.leaders()
            );
            let expected: Vec<Vec<u8>> = (0..230).map(payload).collect();
            assert_eq!(cluster.log(lagging), expected);
            cluster.check_invariants();
        }
    }

    #[test]
    fn restart_after_compaction_restores_snapshot_and_replays_log() {
        let mut cluster = SimCluster::in_memory(&[1, 2, 3], 3);
        assert!(cluster.run_until(200, |c| c.leaders().len() == 1));
        for i in 0..50u32 {
            assert!(cluster.propose_to_leader(payload(i)));
            cluster.step_all();
        }
        assert!(cluster.run_until(100, |c| c.all_applied(50)));
        for id in [1, 2, 3] {
            cluster.compact(id);
        }
        for i in 50..80u32 {
            assert!(cluster.propose_to_leader(payload(i)));
            cluster.step_all();
        }
        assert!(cluster.run_until(100, |c| c.all_applied(80)));
        let before = cluster.machines.iter().map(|(id, m)| (*id, m.log.clone())).collect::<Vec<_>>();
        for id in [1, 2, 3] {
            let restores = cluster.restores(id);
            cluster.restart(id);
            assert_eq!(cluster.restores(id), restores + 1, "replica {id} restored from its stored snapshot");
            assert!(cluster.log(id).len() >= 50, "the snapshot holds the first 50 entries");
            assert!(cluster.run_until(200, |c| c.all_applied(80)), "replica {id} did not replay the log after its snapshot");
        }
        assert_eq!(cluster.machines.iter().map(|(id, m)| (*id, m.log.clone())).collect::<Vec<_>>(), before);
        // A full restart of every replica at once.
        for id in [1, 2, 3] {
            cluster.restart(id);
        }
        assert!(cluster.run_until(300, |c| c.leaders().len() == 1 && c.all_applied(80)));
        assert!(cluster.propose_to_leader(payload(80)));
        assert!(cluster.run_until(100, |c| c.all_applied(81)));
        cluster.check_invariants();
    }

    #[test]
    fn a_snapshot_message_is_installed_and_the_log_starts_after_it() {
        let store = MemLogStore::new(&[1, 2, 3]);
        let mut driver = RaftDriver::new(1, 4, &RaftSettings::default(), store.clone(), 0).unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.data = rushes_protocol::codec::encode(1, &vec![b"z".to_vec()]).unwrap().into();
        snapshot.mut_metadata().index = 10;
        snapshot.mut_metadata().term = 1;
        snapshot.mut_metadata().set_conf_state(raft::eraftpb::ConfState::from((vec![1, 2, 3], vec![])));
        let mut message = Message::default();
        message.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        message.from = 2;
        message.to = 1;
        message.term = 1;
        message.set_snapshot(snapshot);
        driver.step(message).unwrap();
        let mut machine = ListMachine::default();
        let outcome = driver.run_ready_with(&mut machine).unwrap();
        assert_eq!(outcome.restored_snapshot, Some(10));
        assert_eq!((machine.log, machine.restores), (vec![b"z".to_vec()], 1));
        assert_eq!(driver.applied_index(), 10);
        assert_eq!(store.first_index().unwrap(), 11);
        assert_eq!(store.term(10).unwrap(), 1);
        assert_eq!(store.hard_state().commit, 10);
        // A state machine behind the log start cannot skip the compacted entries.
        assert!(matches!(
            RaftDriver::new(1, 4, &RaftSettings::default(), store.clone(), 0),
            Err(DriverError::BehindLogStart { applied: 0, log_start: 10, .. })
        ));
    }

    #[test]
    fn message_loss_restarts_isolation_and_compaction_keep_state_machines_consistent() {
        for seed in 0..10u64 {
            let mut cluster = SimCluster::in_memory(&[1, 2, 3], 100 + seed);
            cluster.drop_rate = 0.15;
            let mut proposed = 0u32;
            for round in 0..80u64 {
                cluster.run_until(15, |_| false);
                if cluster.propose_to_leader(payload(proposed)) {
                    proposed += 1;
                }
                let victim = cluster.rng.gen_range(1..=3u64);
                match round % 13 {
                    3 | 9 => cluster.compact(victim),
                    5 => cluster.restart(victim),
                    7 if cluster.isolated.is_empty() => cluster.isolated.push(victim),
                    11 => cluster.isolated.clear(),
                    _ => {}
                }
            }
            cluster.isolated.clear();
            cluster.drop_rate = 0.0;
            let ok = cluster.run_until(1000, |c| {
                let lens: Vec<usize> = c.machines.values().map(|m| m.log.len()).collect();
                c.leaders().len() == 1 && lens.iter().all(|l| *l == lens[0])
            });
            assert!(ok, "did not converge (seed {seed})");
            cluster.check_invariants();
            assert!(cluster.machines.values().map(|m| m.restores).sum::<usize>() > 0 || seed > 0, "seed 0 exercises snapshots");
            let len = cluster.log(1).len();
            assert!(len > 0 && len <= proposed as usize);
        }
    }
}
