//! One shard replica's Raft state machine, driven without I/O of its own.
//!
//! The caller feeds it ticks, proposals and peer messages; [`RaftDriver::run_ready`] performs
//! one Ready cycle in the order raft-rs requires, writing through the [`RaftLogStore`] (the only
//! place that may touch a disk), handing committed entries to the caller's apply function and
//! returning the messages to send. The same code runs over sled in the node and over memory on
//! a simulated network in tests.

use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};

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
    /// The apply function failed: the replica must stop applying (it would diverge).
    #[error("applying entry {index} failed: {message}")]
    Apply { index: u64, message: String },
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
}

pub struct RaftDriver<S: RaftLogStore> {
    shard: ShardId,
    node: RawNode<S>,
    applied_index: u64,
}

impl<S: RaftLogStore> RaftDriver<S> {
    /// `applied_index` is how far the caller's state machine had durably applied; it is clamped
    /// to the persisted commit index (re-applying is idempotent, skipping is not).
    pub fn new(node_id: NodeId, shard: ShardId, settings: &RaftSettings, store: S, applied_index: u64) -> Result<Self, DriverError> {
        let commit = store.hard_state().commit;
        let applied_index = applied_index.min(commit);
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

    pub fn step(&mut self, message: Message) -> Result<(), DriverError> {
        match self.node.step(message) {
            // Messages from peers that are not (or no longer) in the group are dropped.
            Ok(()) | Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// One Ready cycle. `apply` receives every committed normal entry with data, in log order,
    /// after it is durable; it must be deterministic (every replica applies the same entries).
    pub fn run_ready(&mut self, apply: &mut dyn FnMut(&Entry) -> Result<(), String>) -> Result<ReadyOutcome, DriverError> {
        let mut outcome = ReadyOutcome::default();
        if !self.node.has_ready() {
            return Ok(outcome);
        }
        let mut ready = self.node.ready();
        if let Some(soft_state) = ready.ss() {
            outcome.role_changed = Some(soft_state.raft_state);
        }
        // Leader messages may go out before the local append (raft thesis 10.2.1).
        outcome.messages.extend(ready.take_messages());
        let store = self.node.store().clone();
        if !ready.snapshot().is_empty() {
            store.apply_snapshot_metadata(ready.snapshot().get_metadata())?;
        }
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
        outcome.messages.extend(ready.take_persisted_messages());
        self.apply_entries(&committed, apply, &mut outcome)?;

        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            store.set_commit(commit)?;
        }
        outcome.messages.extend(light.take_messages());
        let committed = light.take_committed_entries();
        if let Some(last) = committed.last() {
            store.set_commit(last.index)?;
        }
        self.apply_entries(&committed, apply, &mut outcome)?;
        self.node.advance_apply();
        Ok(outcome)
    }

    fn apply_entries(
        &mut self,
        entries: &[Entry],
        apply: &mut dyn FnMut(&Entry) -> Result<(), String>,
        outcome: &mut ReadyOutcome,
    ) -> Result<(), DriverError> {
        for entry in entries {
            debug_assert!(entry.index == self.applied_index + 1 || entry.index <= self.applied_index, "entries apply in order");
            if entry.index <= self.applied_index {
                continue;
            }
            // Empty entries are the leader's no-op of a new term; conf changes come with
            // membership changes (not used while groups are fixed at bootstrap).
            if entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
                apply(entry).map_err(|message| DriverError::Apply { index: entry.index, message })?;
            }
            self.applied_index = entry.index;
            outcome.applied_index = Some(entry.index);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::MemLogStore;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, VecDeque};

    /// A deterministic simulated network of replicas of one shard.
    struct SimCluster {
        drivers: BTreeMap<NodeId, RaftDriver<MemLogStore>>,
        stores: BTreeMap<NodeId, MemLogStore>,
        applied: BTreeMap<NodeId, Vec<Vec<u8>>>,
        in_flight: VecDeque<Message>,
        isolated: Vec<NodeId>,
        rng: rand_chacha::ChaCha8Rng,
        drop_rate: f64,
    }

    impl SimCluster {
        fn new(ids: &[NodeId], seed: u64) -> Self {
            let mut cluster = SimCluster {
                drivers: BTreeMap::new(),
                stores: BTreeMap::new(),
                applied: BTreeMap::new(),
                in_flight: VecDeque::new(),
                isolated: vec![],
                rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
                drop_rate: 0.0,
            };
            for &id in ids {
                let store = MemLogStore::new(ids);
                cluster.stores.insert(id, store.clone());
                cluster.restart(id);
            }
            cluster
        }

        fn restart(&mut self, id: NodeId) {
            let store = self.stores[&id].clone();
            // State machine is the applied list, rebuilt from the log on restart (applied = 0).
            self.applied.insert(id, vec![]);
            let driver = RaftDriver::new(id, 0, &RaftSettings::default(), store, 0).unwrap();
            self.drivers.insert(id, driver);
        }

        fn step_all(&mut self) {
            for (&id, driver) in self.drivers.iter_mut() {
                let applied = self.applied.get_mut(&id).unwrap();
                let outcome = driver
                    .run_ready(&mut |entry| {
                        applied.push(entry.data.to_vec());
                        Ok(())
                    })
                    .unwrap();
                self.in_flight.extend(outcome.messages);
            }
            let messages: Vec<Message> = self.in_flight.drain(..).collect();
            for message in messages {
                if self.isolated.contains(&message.from) || self.isolated.contains(&message.to) {
                    continue;
                }
                if self.rng.gen_bool(self.drop_rate) {
                    continue;
                }
                if let Some(driver) = self.drivers.get_mut(&message.to) {
                    driver.step(message).unwrap();
                }
            }
        }

        fn tick_all(&mut self) {
            for driver in self.drivers.values_mut() {
                driver.tick();
            }
            self.step_all();
        }

        fn leaders(&self) -> Vec<(NodeId, u64)> {
            self.drivers.iter().filter(|(_, d)| d.is_leader()).map(|(&id, d)| (id, d.term())).collect()
        }

        /// Runs until `condition` holds, at most `max_ticks` ticks (deterministic time).
        fn run_until(&mut self, max_ticks: usize, condition: impl Fn(&SimCluster) -> bool) -> bool {
            for _ in 0..max_ticks {
                if condition(self) {
                    return true;
                }
                self.tick_all();
                self.check_invariants();
            }
            condition(self)
        }

        fn check_invariants(&self) {
            // At most one leader per term.
            let mut by_term: BTreeMap<u64, NodeId> = BTreeMap::new();
            for (id, term) in self.leaders() {
                if let Some(other) = by_term.insert(term, id) {
                    panic!("two leaders in term {term}: {other} and {id}");
                }
            }
            // Applied logs are prefixes of each other.
            let logs: Vec<&Vec<Vec<u8>>> = self.applied.values().collect();
            for a in &logs {
                for b in &logs {
                    let n = a.len().min(b.len());
                    assert_eq!(a[..n], b[..n], "applied logs diverge");
                }
            }
        }

        fn propose_to_leader(&mut self, data: Vec<u8>) -> bool {
            let leader = self.leaders().into_iter().filter(|(id, _)| !self.isolated.contains(id)).max_by_key(|(_, term)| *term);
            match leader {
                Some((id, _)) => self.drivers.get_mut(&id).unwrap().propose(vec![], data).is_ok(),
                None => false,
            }
        }
    }

    #[test]
    fn single_voter_becomes_leader_and_applies_in_order() {
        let store = MemLogStore::new(&[1]);
        let mut driver = RaftDriver::new(1, 7, &RaftSettings::default(), store, 0).unwrap();
        assert!(matches!(driver.propose(vec![], b"x".to_vec()), Err(DriverError::NotLeader { shard: 7, .. })));
        driver.campaign().unwrap();
        let mut applied = vec![];
        driver
            .run_ready(&mut |e| {
                applied.push(e.data.to_vec());
                Ok(())
            })
            .unwrap();
        assert!(driver.is_leader());
        for i in 0..5u8 {
            driver.propose(vec![i], vec![i]).unwrap();
        }
        while driver.has_ready() {
            driver
                .run_ready(&mut |e| {
                    assert_eq!(e.context.to_vec(), e.data.to_vec());
                    applied.push(e.data.to_vec());
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(applied, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(driver.applied_index(), driver.commit_index());
        assert_eq!(driver.store().hard_state().commit, driver.commit_index(), "commit persisted");
    }

    #[test]
    fn three_replicas_elect_one_leader_and_replicate() {
        let mut cluster = SimCluster::new(&[1, 2, 3], 1);
        assert!(cluster.run_until(200, |c| c.leaders().len() == 1), "no leader elected");
        for i in 0..20u8 {
            assert!(cluster.propose_to_leader(vec![i]));
            cluster.step_all();
        }
        assert!(cluster.run_until(50, |c| c.applied.values().all(|a| a.len() == 20)));
    }

    #[test]
    fn leader_isolation_elects_new_leader_and_committed_entries_survive() {
        for seed in 0..5 {
            let mut cluster = SimCluster::new(&[1, 2, 3], seed);
            assert!(cluster.run_until(200, |c| c.leaders().len() == 1));
            for i in 0..10u8 {
                cluster.propose_to_leader(vec![i]);
                cluster.step_all();
            }
            assert!(cluster.run_until(50, |c| c.applied.values().all(|a| a.len() == 10)));
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
            assert!(cluster.run_until(300, |c| c.applied.values().all(|a| a.len() == 20)), "did not heal (seed {seed})");
            let expected: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i]).collect();
            for applied in cluster.applied.values() {
                assert_eq!(applied, &expected);
            }
        }
    }

    #[test]
    fn message_loss_and_restarts_keep_logs_consistent() {
        let mut cluster = SimCluster::new(&[1, 2, 3], 9);
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
            let lens: Vec<usize> = c.applied.values().map(|a| a.len()).collect();
            lens.iter().all(|l| *l == lens[0]) && c.leaders().len() == 1
        }));
        cluster.check_invariants();
    }
}
