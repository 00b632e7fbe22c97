//! The simulated network every Raft test of the project uses: replicas of one shard driven by
//! [`RaftDriver`] over any [`RaftLogStore`], messages delivered in order unless dropped (a
//! seeded random loss rate) or cut (isolated replicas), restarts that rebuild a replica from its
//! store, compaction, and time as ticks. Deterministic for a seed; no sockets, no clocks.
//!
//! Compiled for this crate's tests and, with the `sim` feature, for other crates' tests.

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{Entry, Message, MessageType};
use rand::{Rng, SeedableRng};

use crate::driver::{RaftDriver, RaftSettings, StateMachine};
use crate::log_store::{MemLogStore, RaftLogStore};
use crate::placement::NodeId;

/// The test state machine: the list of applied payloads. Its snapshot is that list, encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListMachine {
    pub log: Vec<Vec<u8>>,
    /// Times it was restored from a snapshot.
    pub restores: usize,
}

impl StateMachine for ListMachine {
    type Error = rushes_protocol::codec::CodecError;

    fn apply(&mut self, entry: &Entry) -> Result<(), Self::Error> {
        self.log.push(entry.data.to_vec());
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, Self::Error> {
        rushes_protocol::codec::encode(1, &self.log)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), Self::Error> {
        self.log = rushes_protocol::codec::decode(1, data)?;
        self.restores += 1;
        Ok(())
    }
}

/// Replicas of shard 0 on a simulated network.
pub struct SimCluster<S: RaftLogStore> {
    pub drivers: BTreeMap<NodeId, RaftDriver<S>>,
    pub stores: BTreeMap<NodeId, S>,
    pub machines: BTreeMap<NodeId, ListMachine>,
    in_flight: VecDeque<Message>,
    /// Replicas whose messages (both ways) are lost.
    pub isolated: Vec<NodeId>,
    pub rng: rand_chacha::ChaCha8Rng,
    /// Probability that any one message is lost.
    pub drop_rate: f64,
    /// Read index answers each replica received: (context, index).
    pub read_states: BTreeMap<NodeId, Vec<(Vec<u8>, u64)>>,
    pub settings: RaftSettings,
}

impl SimCluster<MemLogStore> {
    /// Replicas `ids` with in-memory logs.
    pub fn in_memory(ids: &[NodeId], seed: u64) -> Self {
        SimCluster::with_stores(ids.iter().map(|&id| (id, MemLogStore::new(ids))).collect(), seed)
    }
}

impl<S: RaftLogStore> SimCluster<S> {
    /// One replica per store (each store already knows the voters).
    pub fn with_stores(stores: BTreeMap<NodeId, S>, seed: u64) -> Self {
        let mut cluster = SimCluster {
            drivers: BTreeMap::new(),
            stores,
            machines: BTreeMap::new(),
            in_flight: VecDeque::new(),
            isolated: vec![],
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            drop_rate: 0.0,
            read_states: BTreeMap::new(),
            settings: RaftSettings::default(),
        };
        let ids: Vec<NodeId> = cluster.stores.keys().copied().collect();
        for id in ids {
            cluster.restart(id);
        }
        cluster
    }

    /// What replica `id` has applied.
    pub fn log(&self, id: NodeId) -> &[Vec<u8>] {
        &self.machines[&id].log
    }

    /// Times replica `id` restored its state machine from a snapshot (over all its restarts).
    pub fn restores(&self, id: NodeId) -> usize {
        self.machines.get(&id).map_or(0, |m| m.restores)
    }

    /// Rebuilds replica `id` from its store: the state machine starts empty (applied = 0) and is
    /// restored from the stored snapshot, if any, then replays the log.
    pub fn restart(&mut self, id: NodeId) {
        let store = self.stores[&id].clone();
        let restores = self.restores(id);
        let mut machine = ListMachine { log: vec![], restores };
        let driver = RaftDriver::open(id, 0, &self.settings, store, 0, &mut machine).expect("the replica reopens");
        self.machines.insert(id, machine);
        self.drivers.insert(id, driver);
    }

    /// Starts a new, empty replica `id` whose store knows the group's first voters (how the
    /// node opens a replica it is receiving: the log replays every change since, or a
    /// snapshot brings the current configuration).
    pub fn add_replica(&mut self, id: NodeId, initial_voters: &[NodeId])
    where
        S: From<MemLogStore>,
    {
        self.stores.insert(id, S::from(MemLogStore::new(initial_voters)));
        self.machines.remove(&id);
        self.restart(id);
    }

    /// Stops replica `id` and forgets it (a node that no longer holds the group).
    pub fn remove_replica(&mut self, id: NodeId) {
        self.drivers.remove(&id);
        self.stores.remove(&id);
        self.machines.remove(&id);
    }

    /// Compacts `id`'s log into a snapshot at its applied index.
    pub fn compact(&mut self, id: NodeId) {
        let machine = self.machines[&id].clone();
        self.drivers.get_mut(&id).expect("known replica").compact_state_machine(&machine).expect("compaction");
    }

    /// Runs every replica's ready cycle, then delivers (or loses) the messages it produced.
    pub fn step_all(&mut self) {
        for (&id, driver) in self.drivers.iter_mut() {
            let machine = self.machines.get_mut(&id).expect("every replica has a machine");
            let outcome = driver.run_ready_with(machine).expect("ready cycle");
            self.in_flight.extend(outcome.messages);
            self.read_states.entry(id).or_default().extend(outcome.read_states);
        }
        // A leader that could not serve a snapshot makes one, as the node's Raft actor does.
        let wanted: Vec<NodeId> = self.drivers.iter().filter(|(_, d)| d.take_snapshot_wanted()).map(|(&id, _)| id).collect();
        for id in wanted {
            self.compact(id);
        }
        let messages: Vec<Message> = self.in_flight.drain(..).collect();
        for message in messages {
            let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let (from, to) = (message.from, message.to);
            let lost = self.isolated.contains(&from) || self.isolated.contains(&to) || self.rng.gen_bool(self.drop_rate);
            if !lost {
                if let Some(driver) = self.drivers.get_mut(&to) {
                    driver.step(message).expect("step");
                }
            }
            // A real transport tells the leader whether a snapshot message went out (the
            // follower's answer may still be lost).
            if is_snapshot {
                if let Some(leader) = self.drivers.get_mut(&from) {
                    leader.report_snapshot(to, !lost);
                }
            }
        }
    }

    /// One tick of time on every replica, then a step.
    pub fn tick_all(&mut self) {
        for driver in self.drivers.values_mut() {
            driver.tick();
        }
        self.step_all();
    }

    /// (replica, term) of every replica that believes it leads.
    pub fn leaders(&self) -> Vec<(NodeId, u64)> {
        self.drivers.iter().filter(|(_, d)| d.is_leader()).map(|(&id, d)| (id, d.term())).collect()
    }

    /// Ticks until `condition` holds, at most `max_ticks` ticks, checking the safety invariants
    /// after each; returns whether it held.
    pub fn run_until(&mut self, max_ticks: usize, condition: impl Fn(&Self) -> bool) -> bool {
        for _ in 0..max_ticks {
            if condition(self) {
                return true;
            }
            self.tick_all();
            self.check_invariants();
        }
        condition(self)
    }

    /// At most one leader per term, and the applied logs are prefixes of each other.
    pub fn check_invariants(&self) {
        let mut by_term: BTreeMap<u64, NodeId> = BTreeMap::new();
        for (id, term) in self.leaders() {
            if let Some(other) = by_term.insert(term, id) {
                panic!("two leaders in term {term}: {other} and {id}");
            }
        }
        let logs: Vec<&Vec<Vec<u8>>> = self.machines.values().map(|m| &m.log).collect();
        for a in &logs {
            for b in &logs {
                let n = a.len().min(b.len());
                assert_eq!(a[..n], b[..n], "applied logs diverge");
            }
        }
    }

    /// Proposes `data` on the newest reachable leader; false when there is none or it refused.
    pub fn propose_to_leader(&mut self, data: Vec<u8>) -> bool {
        let leader = self.leaders().into_iter().filter(|(id, _)| !self.isolated.contains(id)).max_by_key(|(_, term)| *term);
        match leader {
            Some((id, _)) => self.drivers.get_mut(&id).is_some_and(|driver| driver.propose(vec![], data).is_ok()),
            None => false,
        }
    }

    /// Every replica applied exactly `len` entries, the same ones.
    pub fn all_applied(&self, len: usize) -> bool {
        let mut logs = self.machines.values().map(|m| &m.log);
        let Some(first) = logs.next() else { return true };
        first.len() == len && logs.all(|log| log == first)
    }
}
