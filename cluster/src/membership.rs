//! The cluster map: who the members are, and which nodes hold which replica of each group (the
//! shards, and the metadata group that replicates this map). Pure: a [`MapCommand`] applied
//! to a [`ClusterMap`] gives the next map or an error that changes nothing; every replica of
//! the metadata group applies the same commands in the same order and holds the same map.
//!
//! A replica moves in steps that never leave a group without a quorum of caught-up voters:
//! the new node joins as a learner (it replicates, it does not vote), catches up by snapshot and
//! log, and only then one joint configuration change makes it a voter and removes the replica
//! it replaces. Each step is recorded here ([`MovePhase`]) and driven by the metadata leader
//! ([`next_step`]), which reads the group's real configuration before acting, so a step
//! interrupted by a crash is simply taken again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::placement::{replicas_for_shard, NodeId, ShardId};

/// The group id of the metadata group on the wire (shards are `0..shard_count`).
pub const META_GROUP: ShardId = u32::MAX;

/// Format byte of an encoded [`ClusterMap`] and of [`MapCommand`]s.
pub const MAP_FORMAT: u8 = 1;

/// Most members the metadata group has as voters; later members follow it as learners.
pub const META_VOTERS_MAX: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Where peers reach its Raft transport, and clients its HTTP API.
    pub raft_addr: String,
    pub http_addr: String,
    /// Being emptied: no new replica goes to it, and a drain moves its replicas away.
    pub draining: bool,
}

/// Where one group's replicas are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The voters the group was created with: the configuration a new replica starts from
    /// before it replays the log (which holds every change since).
    pub initial_voters: Vec<NodeId>,
    pub moving: Option<Move>,
}

impl Placement {
    fn new(voters: Vec<NodeId>) -> Placement {
        Placement { initial_voters: voters.clone(), voters, learners: vec![], moving: None }
    }

    /// Every node that holds (or is receiving) a replica of the group.
    pub fn holders(&self) -> BTreeSet<NodeId> {
        let mut holders: BTreeSet<NodeId> = self.voters.iter().chain(&self.learners).copied().collect();
        if let Some(m) = &self.moving {
            holders.insert(m.add);
            if let Some(remove) = m.remove {
                holders.insert(remove);
            }
        }
        holders
    }
}

/// A replica being added to a group, and the one it replaces (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub id: u64,
    pub add: NodeId,
    pub remove: Option<NodeId>,
    pub phase: MovePhase,
    /// Only add as a learner (a metadata follower beyond [`META_VOTERS_MAX`]).
    pub learner_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovePhase {
    /// The new node opens an empty replica; the group's leader adds it as a learner.
    AddLearner,
    /// The learner replicates; it is promoted once it has caught up.
    CatchUp,
    /// One joint change makes it a voter and removes the replaced replica.
    Promote,
}

impl MovePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MovePhase::AddLearner => "add_learner",
            MovePhase::CatchUp => "catch_up",
            MovePhase::Promote => "promote",
        }
    }
}

/// A move waiting for a free slot (a rebalance or a drain queues several).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMove {
    pub group: ShardId,
    pub add: NodeId,
    pub remove: Option<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub cluster_id: String,
    pub shard_count: u32,
    pub replication_factor: usize,
    /// Bumped by every command that changes the map.
    pub epoch: u64,
    pub members: BTreeMap<NodeId, Member>,
    pub shards: Vec<Placement>,
    pub meta: Placement,
    pub queued: Vec<QueuedMove>,
    /// Moves in flight at once (across groups).
    pub max_concurrent_moves: usize,
    pub next_move_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapCommand {
    AddMember(Member),
    SetDraining {
        id: NodeId,
        draining: bool,
    },
    /// Only a member that holds no replica of any group.
    RemoveMember {
        id: NodeId,
    },
    /// Queues a move (started when a slot is free, by [`MapCommand::StartQueued`]).
    QueueMove(QueuedMove),
    /// Starts the first queued move whose group has none in flight.
    StartQueued,
    SetMovePhase {
        group: ShardId,
        move_id: u64,
        phase: MovePhase,
    },
    /// The group's configuration now has `add` as a voter (or learner) and not `remove`.
    FinishMove {
        group: ShardId,
        move_id: u64,
    },
    /// Gives up a move before its promotion (the new node never caught up).
    AbortMove {
        group: ShardId,
        move_id: u64,
    },
    SetMaxConcurrentMoves(usize),
    /// A draining member's metadata replica is out of the group's configuration: drop it
    /// from the map (see [`meta_departure_step`]).
    LeaveMeta {
        id: NodeId,
    },
    /// Drops every queued move, and gives up every move in flight that is not past its
    /// promotion (a move to a node that never started would otherwise hold the queue).
    CancelMoves,
}

/// What the metadata group's log holds: the map a new cluster starts with (proposed once by
/// its first leader; later ones are ignored), then commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaEntry {
    Bootstrap(ClusterMap),
    Command(MapCommand),
}

/// A change a group's leader is asked to make to the group's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupChange {
    AddLearner {
        node: NodeId,
    },
    /// One joint change: `add` becomes a voter, `remove` (if any) leaves.
    Promote {
        add: NodeId,
        remove: Option<NodeId>,
    },
    TransferLeader {
        to: NodeId,
    },
    RemoveNode {
        node: NodeId,
    },
}

impl GroupChange {
    /// The raft-rs configuration change, or `None` for a leader transfer.
    pub fn conf_change(&self) -> Option<raft::eraftpb::ConfChangeV2> {
        use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
        let single = |change_type: ConfChangeType, node_id: NodeId| {
            let mut c = ConfChangeSingle::default();
            c.set_change_type(change_type);
            c.node_id = node_id;
            c
        };
        let changes = match *self {
            GroupChange::AddLearner { node } => vec![single(ConfChangeType::AddLearnerNode, node)],
            GroupChange::Promote { add, remove } => {
                let mut changes = vec![single(ConfChangeType::AddNode, add)];
                changes.extend(remove.map(|r| single(ConfChangeType::RemoveNode, r)));
                changes
            }
            GroupChange::RemoveNode { node } => vec![single(ConfChangeType::RemoveNode, node)],
            GroupChange::TransferLeader { .. } => return None,
        };
        let mut change = ConfChangeV2::default();
        // Several changes go through a joint configuration that raft-rs leaves by itself.
        change.set_transition(ConfChangeTransition::Auto);
        change.set_changes(changes.into());
        Some(change)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a member of the cluster")]
    NotAMember(NodeId),
    #[error("address {0} is already used by node {1}")]
    AddressInUse(String, NodeId),
    #[error("node {id} still holds replicas of groups {groups:?}: drain it first (rushes cluster remove-node drains, then removes)")]
    StillHolds { id: NodeId, groups: Vec<String> },
    #[error("group {0} does not exist")]
    NoSuchGroup(String),
    #[error("{0}")]
    InvalidMove(String),
    #[error("no move {move_id} in flight on group {group}")]
    NoSuchMove { group: String, move_id: u64 },
    #[error("the move on group {group} is past its promotion and cannot be aborted")]
    PastPromotion { group: String },
    #[error("node ids are 1..=2^53: {0} is not")]
    InvalidNodeId(NodeId),
    #[error("max_concurrent_moves must be 1..=64")]
    InvalidConcurrency,
}

/// A group's name for messages: `shard 3`, `the metadata group`.
pub fn group_name(group: ShardId) -> String {
    if group == META_GROUP {
        "the metadata group".to_string()
    } else {
        format!("shard {group}")
    }
}

impl ClusterMap {
    /// The map a new cluster starts with: rendezvous placement of every shard over the members
    /// (the same on every node given the same members), the first [`META_VOTERS_MAX`] members
    /// (by id) as the metadata group's voters, the others as its learners.
    pub fn bootstrap(cluster_id: &str, shard_count: u32, replication_factor: usize, members: Vec<Member>) -> ClusterMap {
        let ids: Vec<NodeId> = members.iter().map(|m| m.id).collect::<BTreeSet<_>>().into_iter().collect();
        let shards = (0..shard_count).map(|shard| Placement::new(replicas_for_shard(shard, &ids, replication_factor))).collect();
        let mut meta = Placement::new(ids.iter().take(META_VOTERS_MAX).copied().collect());
        meta.learners = ids.iter().skip(META_VOTERS_MAX).copied().collect();
        ClusterMap {
            cluster_id: cluster_id.to_string(),
            shard_count,
            replication_factor,
            epoch: 1,
            members: members.into_iter().map(|m| (m.id, m)).collect(),
            shards,
            meta,
            queued: vec![],
            max_concurrent_moves: 1,
            next_move_id: 1,
        }
    }

    pub fn placement(&self, group: ShardId) -> Option<&Placement> {
        if group == META_GROUP {
            Some(&self.meta)
        } else {
            self.shards.get(group as usize)
        }
    }

    fn placement_mut(&mut self, group: ShardId) -> Result<&mut Placement, MapError> {
        if group == META_GROUP {
            Ok(&mut self.meta)
        } else {
            self.shards.get_mut(group as usize).ok_or_else(|| MapError::NoSuchGroup(group_name(group)))
        }
    }

    /// Every group id: the shards, then the metadata group.
    pub fn groups(&self) -> impl Iterator<Item = ShardId> + '_ {
        (0..self.shard_count).chain(std::iter::once(META_GROUP))
    }

    /// The groups `node` holds or is receiving a replica of.
    pub fn groups_on(&self, node: NodeId) -> Vec<ShardId> {
        self.groups().filter(|&g| self.placement(g).is_some_and(|p| p.holders().contains(&node))).collect()
    }

    pub fn moves_in_flight(&self) -> usize {
        self.groups().filter(|&g| self.placement(g).is_some_and(|p| p.moving.is_some())).count()
    }

    /// Applies a command: the new map, or an error and no change.
    pub fn apply(&mut self, command: &MapCommand) -> Result<(), MapError> {
        let mut next = self.clone();
        next.apply_in_place(command)?;
        next.epoch += 1;
        *self = next;
        Ok(())
    }

    fn apply_in_place(&mut self, command: &MapCommand) -> Result<(), MapError> {
        match command {
            MapCommand::AddMember(member) => {
                if member.id == 0 || member.id > (1 << 53) {
                    return Err(MapError::InvalidNodeId(member.id));
                }
                if self.members.contains_key(&member.id) {
                    return Err(MapError::AlreadyMember(member.id));
                }
                for other in self.members.values() {
                    if other.raft_addr == member.raft_addr || other.http_addr == member.http_addr {
                        return Err(MapError::AddressInUse(member.raft_addr.clone(), other.id));
                    }
                }
                self.members.insert(member.id, Member { draining: false, ..member.clone() });
                // Every member follows the metadata group (a voter while there are few, see
                // StartQueued), before anything else moves to it.
                self.queued.insert(0, QueuedMove { group: META_GROUP, add: member.id, remove: None });
                Ok(())
            }
            MapCommand::SetDraining { id, draining } => {
                let member = self.members.get_mut(id).ok_or(MapError::NotAMember(*id))?;
                member.draining = *draining;
                Ok(())
            }
            MapCommand::RemoveMember { id } => {
                if !self.members.contains_key(id) {
                    return Err(MapError::NotAMember(*id));
                }
                let groups: Vec<String> = self.groups_on(*id).into_iter().map(group_name).collect();
                if !groups.is_empty() {
                    return Err(MapError::StillHolds { id: *id, groups });
                }
                self.members.remove(id);
                self.queued.retain(|q| q.add != *id && q.remove != Some(*id));
                Ok(())
            }
            MapCommand::QueueMove(queued) => {
                self.check_move(queued)?;
                if !self.queued.contains(queued) {
                    self.queued.push(queued.clone());
                }
                Ok(())
            }
            MapCommand::StartQueued => {
                if self.moves_in_flight() >= self.max_concurrent_moves {
                    return Ok(());
                }
                let Some(position) = self.queued.iter().position(|q| self.placement(q.group).is_some_and(|p| p.moving.is_none())) else {
                    return Ok(());
                };
                let queued = self.queued.remove(position);
                if self.check_move(&queued).is_err() {
                    // Overtaken by another change (the node left, the replica moved already).
                    return Ok(());
                }
                let id = self.next_move_id;
                self.next_move_id += 1;
                let learner_only = queued.group == META_GROUP && queued.remove.is_none() && self.meta.voters.len() >= META_VOTERS_MAX;
                self.placement_mut(queued.group)?.moving =
                    Some(Move { id, add: queued.add, remove: queued.remove, phase: MovePhase::AddLearner, learner_only });
                Ok(())
            }
            MapCommand::SetMovePhase { group, move_id, phase } => {
                let placement = self.placement_mut(*group)?;
                match &mut placement.moving {
                    Some(m) if m.id == *move_id => {
                        m.phase = *phase;
                        Ok(())
                    }
                    _ => Err(MapError::NoSuchMove { group: group_name(*group), move_id: *move_id }),
                }
            }
            MapCommand::FinishMove { group, move_id } => {
                let placement = self.placement_mut(*group)?;
                let m = match &placement.moving {
                    Some(m) if m.id == *move_id => m.clone(),
                    _ => return Err(MapError::NoSuchMove { group: group_name(*group), move_id: *move_id }),
                };
                placement.moving = None;
                if let Some(remove) = m.remove {
                    placement.voters.retain(|v| *v != remove);
                    placement.learners.retain(|v| *v != remove);
                }
                if m.learner_only {
                    if !placement.learners.contains(&m.add) {
                        placement.learners.push(m.add);
                    }
                } else {
                    placement.learners.retain(|v| *v != m.add);
                    if !placement.voters.contains(&m.add) {
                        placement.voters.push(m.add);
                    }
                }
                Ok(())
            }
            MapCommand::AbortMove { group, move_id } => {
                let placement = self.placement_mut(*group)?;
                match &placement.moving {
                    Some(m) if m.id == *move_id && m.phase != MovePhase::Promote => {
                        placement.moving = None;
                        Ok(())
                    }
                    Some(m) if m.id == *move_id => Err(MapError::PastPromotion { group: group_name(*group) }),
                    _ => Err(MapError::NoSuchMove { group: group_name(*group), move_id: *move_id }),
                }
            }
            MapCommand::SetMaxConcurrentMoves(n) => {
                if !(1..=64).contains(n) {
                    return Err(MapError::InvalidConcurrency);
                }
                self.max_concurrent_moves = *n;
                Ok(())
            }
            MapCommand::CancelMoves => {
                self.queued.clear();
                for group in self.groups().collect::<Vec<_>>() {
                    let placement = self.placement_mut(group)?;
                    if placement.moving.as_ref().is_some_and(|m| m.phase != MovePhase::Promote) {
                        placement.moving = None;
                    }
                }
                Ok(())
            }
            MapCommand::LeaveMeta { id } => {
                let holds = self.meta.voters.contains(id) || self.meta.learners.contains(id);
                if !holds {
                    return Err(MapError::InvalidMove(format!("node {id} holds no replica of the metadata group")));
                }
                if self.meta.voters == [*id] {
                    return Err(MapError::InvalidMove(format!("node {id} is the metadata group's last voter")));
                }
                self.meta.voters.retain(|v| v != id);
                self.meta.learners.retain(|v| v != id);
                Ok(())
            }
        }
    }

    /// Draining members whose only replica left is the metadata group's: they leave it next.
    pub fn meta_departures(&self) -> Vec<NodeId> {
        self.members
            .values()
            .filter(|m| m.draining && self.meta.moving.is_none())
            .filter(|m| self.groups_on(m.id) == [META_GROUP])
            .filter(|m| !self.queued.iter().any(|q| q.add == m.id))
            .map(|m| m.id)
            .collect()
    }

    /// Whether `queued` makes sense on the current map: both nodes members, `add` not already
    /// holding the group, `remove` holding it, and the group not left without voters.
    fn check_move(&self, queued: &QueuedMove) -> Result<(), MapError> {
        let placement = self.placement(queued.group).ok_or_else(|| MapError::NoSuchGroup(group_name(queued.group)))?;
        let member = self.members.get(&queued.add).ok_or(MapError::NotAMember(queued.add))?;
        if member.draining {
            return Err(MapError::InvalidMove(format!("node {} is being drained: no replica goes to it", queued.add)));
        }
        if placement.voters.contains(&queued.add) || placement.learners.contains(&queued.add) {
            return Err(MapError::InvalidMove(format!("node {} already holds {}", queued.add, group_name(queued.group))));
        }
        if let Some(remove) = queued.remove {
            if !placement.voters.contains(&remove) && !placement.learners.contains(&remove) {
                return Err(MapError::InvalidMove(format!("node {remove} holds no replica of {}", group_name(queued.group))));
            }
            if remove == queued.add {
                return Err(MapError::InvalidMove("a replica cannot move to the node it is on".to_string()));
            }
        }
        Ok(())
    }

    /// Moves that spread the shards' replicas evenly over the members that are not draining,
    /// moving as few as possible: from the most loaded node to the least loaded one that does
    /// not hold the shard, until loads differ by at most one. Draining members give up all.
    pub fn plan_rebalance(&self) -> Vec<QueuedMove> {
        let active: Vec<NodeId> = self.members.values().filter(|m| !m.draining).map(|m| m.id).collect();
        if active.is_empty() {
            return vec![];
        }
        // Current and already-planned placement of the shards (queued moves count as done).
        let mut holders = holders_snapshot(&self.shards, &self.queued);
        let mut plan = Vec::new();
        // Draining members give up every replica first.
        for shard in 0..holders.len() {
            let draining: Vec<NodeId> = holders[shard].iter().copied().filter(|n| !active.contains(n)).collect();
            for from in draining {
                let Some(to) = least_loaded(&active, &holders[shard], &loads(&holders)) else { continue };
                holders[shard].remove(&from);
                holders[shard].insert(to);
                plan.push(QueuedMove { group: shard as ShardId, add: to, remove: Some(from) });
            }
        }
        loop {
            let current = loads(&holders);
            let load = |node: NodeId| current.get(&node).copied().unwrap_or(0);
            let Some(most) = active.iter().copied().max_by_key(|&n| (load(n), std::cmp::Reverse(n))) else { break };
            let Some(least) = active.iter().copied().min_by_key(|&n| (load(n), n)) else { break };
            if load(most) <= load(least) + 1 {
                break;
            }
            let Some(shard) = (0..holders.len()).find(|&s| holders[s].contains(&most) && !holders[s].contains(&least)) else { break };
            holders[shard].remove(&most);
            holders[shard].insert(least);
            plan.push(QueuedMove { group: shard as ShardId, add: least, remove: Some(most) });
        }
        plan
    }

    /// Moves that take every replica (and the metadata replica) off `node`, each to the least
    /// loaded active member that does not hold that group.
    pub fn plan_drain(&self, node: NodeId) -> Vec<QueuedMove> {
        let active: Vec<NodeId> = self.members.values().filter(|m| !m.draining && m.id != node).map(|m| m.id).collect();
        let mut holders = holders_snapshot(&self.shards, &self.queued);
        let mut plan = Vec::new();
        for shard in 0..holders.len() {
            if !holders[shard].contains(&node) {
                continue;
            }
            if let Some(to) = least_loaded(&active, &holders[shard], &loads(&holders)) {
                holders[shard].remove(&node);
                holders[shard].insert(to);
                plan.push(QueuedMove { group: shard as ShardId, add: to, remove: Some(node) });
            }
        }
        plan
    }
}

/// Replicas per node over `holders`.
fn loads(holders: &[BTreeSet<NodeId>]) -> BTreeMap<NodeId, usize> {
    let mut loads = BTreeMap::new();
    for h in holders {
        for n in h {
            *loads.entry(*n).or_insert(0) += 1;
        }
    }
    loads
}

/// The shards' voters once the moves in flight and the queued moves are done.
fn holders_snapshot(shards: &[Placement], queued: &[QueuedMove]) -> Vec<BTreeSet<NodeId>> {
    let mut holders: Vec<BTreeSet<NodeId>> = shards
        .iter()
        .map(|p| {
            let mut h: BTreeSet<NodeId> = p.voters.iter().copied().collect();
            if let Some(m) = &p.moving {
                h.insert(m.add);
                if let Some(r) = m.remove {
                    h.remove(&r);
                }
            }
            h
        })
        .collect();
    for q in queued {
        if let Some(h) = holders.get_mut(q.group as usize) {
            h.insert(q.add);
            if let Some(r) = q.remove {
                h.remove(&r);
            }
        }
    }
    holders
}

fn least_loaded(candidates: &[NodeId], holders: &BTreeSet<NodeId>, loads: &BTreeMap<NodeId, usize>) -> Option<NodeId> {
    candidates.iter().copied().filter(|n| !holders.contains(n)).min_by_key(|n| (loads.get(n).copied().unwrap_or(0), *n))
}

/// A group's Raft configuration and its leader's view of a replica being added, as the
/// group's leader reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupObservation {
    pub leader: NodeId,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The configuration is joint (a change is half applied; raft-rs leaves it by itself).
    pub joint: bool,
    pub commit_index: u64,
    /// How far the replica being added has replicated the log (`None`: not in the group).
    pub added_matched: Option<u64>,
    /// Voters the leader heard from recently that are within [`CAUGHT_UP_ENTRIES`] of the
    /// commit (the leader included): where leadership may be handed over.
    pub caught_up_voters: Vec<NodeId>,
}

impl GroupObservation {
    /// A caught-up, reachable voter other than the leader and `except`, to hand leadership to.
    fn transfer_target(&self, except: NodeId) -> Option<NodeId> {
        self.caught_up_voters.iter().copied().find(|&v| v != self.leader && v != except && self.voters.contains(&v))
    }
}

/// What the metadata leader does next for a group's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveStep {
    /// Wait and observe again.
    Wait,
    /// Ask the group's leader to add `node` as a learner.
    AddLearner { node: NodeId },
    /// Ask the group's leader to make `add` a voter and remove `remove`, in one joint change.
    Promote { add: NodeId, remove: Option<NodeId> },
    /// Ask the group's leader (which is being removed) to hand leadership to `to` first.
    TransferLeader { to: NodeId },
    /// Ask the group's leader to remove `node` (a departing metadata replica).
    RemoveNode { node: NodeId },
    /// Record progress in the map.
    Map(MapCommand),
}

/// What the group's configuration holds beyond the map: learners no move accounts for (a move
/// given up after its learner was added). The metadata leader removes them.
pub fn stray_learners(placement: &Placement, observed: &GroupObservation) -> Vec<NodeId> {
    if placement.moving.is_some() || observed.joint {
        return vec![];
    }
    observed.learners.iter().copied().filter(|l| !placement.learners.contains(l) && !placement.voters.contains(l)).collect()
}

/// The next step of a draining member's departure from the metadata group, given what the
/// group's leader reports: hand leadership over if it leads, leave the configuration, then
/// leave the map. Never removes the last voter.
pub fn meta_departure_step(node: NodeId, observed: &GroupObservation) -> MoveStep {
    if observed.joint {
        return MoveStep::Wait;
    }
    let in_conf = observed.voters.contains(&node) || observed.learners.contains(&node);
    if !in_conf {
        return MoveStep::Map(MapCommand::LeaveMeta { id: node });
    }
    if observed.voters == [node] {
        return MoveStep::Wait;
    }
    if observed.leader == node {
        return match observed.transfer_target(node) {
            Some(to) => MoveStep::TransferLeader { to },
            None => MoveStep::Wait,
        };
    }
    MoveStep::RemoveNode { node }
}

/// A learner within this many entries of the leader's commit has caught up.
pub const CAUGHT_UP_ENTRIES: u64 = 64;

/// The next step of `group`'s move given what its leader reports. Pure, and taken again from
/// scratch after any crash: each step checks the real configuration first.
pub fn next_step(group: ShardId, m: &Move, observed: &GroupObservation) -> MoveStep {
    let is_voter = observed.voters.contains(&m.add);
    let is_learner = observed.learners.contains(&m.add);
    let removed = m.remove.is_none_or(|r| !observed.voters.contains(&r) && !observed.learners.contains(&r));
    if observed.joint {
        return MoveStep::Wait;
    }
    // Done: the configuration already says what the move wanted.
    let target_reached = if m.learner_only { is_learner } else { is_voter };
    if target_reached && removed {
        return MoveStep::Map(MapCommand::FinishMove { group, move_id: m.id });
    }
    match m.phase {
        MovePhase::AddLearner => {
            if is_learner || is_voter {
                MoveStep::Map(MapCommand::SetMovePhase { group, move_id: m.id, phase: MovePhase::CatchUp })
            } else {
                MoveStep::AddLearner { node: m.add }
            }
        }
        MovePhase::CatchUp => {
            if !(is_learner || is_voter) {
                return MoveStep::AddLearner { node: m.add };
            }
            let caught_up = observed.added_matched.is_some_and(|matched| matched + CAUGHT_UP_ENTRIES >= observed.commit_index);
            if !caught_up {
                return MoveStep::Wait;
            }
            if m.learner_only {
                return MoveStep::Map(MapCommand::FinishMove { group, move_id: m.id });
            }
            MoveStep::Map(MapCommand::SetMovePhase { group, move_id: m.id, phase: MovePhase::Promote })
        }
        MovePhase::Promote => {
            if m.remove == Some(observed.leader) {
                // A leader cannot remove itself cleanly: hand over to another voter first, one
                // that is reachable and caught up (a dead one would never take over).
                return match observed.transfer_target(m.add) {
                    Some(to) => MoveStep::TransferLeader { to },
                    None => MoveStep::Wait,
                };
            }
            MoveStep::Promote { add: m.add, remove: m.remove }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId) -> Member {
        Member { id, raft_addr: format!("10.0.0.{id}:7800"), http_addr: format!("10.0.0.{id}:7700"), draining: false }
    }

    fn three() -> ClusterMap {
        ClusterMap::bootstrap("c", 8, 3, (1..=3).map(member).collect())
    }

    #[test]
    fn bootstrap_places_every_shard_on_distinct_members_and_the_metadata_group_on_all() {
        let map = three();
        assert_eq!(map.shards.len(), 8);
        for p in &map.shards {
            let mut v = p.voters.clone();
            v.sort();
            assert_eq!(v, vec![1, 2, 3]);
            assert_eq!(p.initial_voters, p.voters);
        }
        assert_eq!(map.meta.voters, vec![1, 2, 3]);
        let big = ClusterMap::bootstrap("c", 4, 3, (1..=7).map(member).collect());
        assert_eq!((big.meta.voters.len(), big.meta.learners.len()), (5, 2));
        assert_eq!(big, ClusterMap::bootstrap("c", 4, 3, (1..=7).rev().map(member).collect()), "member order does not matter");
    }

    #[test]
    fn commands_that_do_not_make_sense_change_nothing() {
        let mut map = three();
        let before = map.clone();
        assert_eq!(map.apply(&MapCommand::AddMember(member(2))), Err(MapError::AlreadyMember(2)));
        let mut clash = member(9);
        clash.raft_addr = member(1).raft_addr;
        assert!(matches!(map.apply(&MapCommand::AddMember(clash)), Err(MapError::AddressInUse(..))));
        assert!(matches!(map.apply(&MapCommand::RemoveMember { id: 1 }), Err(MapError::StillHolds { id: 1, .. })));
        assert!(matches!(
            map.apply(&MapCommand::QueueMove(QueuedMove { group: 0, add: 9, remove: Some(1) })),
            Err(MapError::NotAMember(9))
        ));
        assert!(matches!(
            map.apply(&MapCommand::QueueMove(QueuedMove { group: 0, add: 2, remove: Some(1) })),
            Err(MapError::InvalidMove(_))
        ));
        assert!(matches!(map.apply(&MapCommand::FinishMove { group: 0, move_id: 1 }), Err(MapError::NoSuchMove { .. })));
        assert!(matches!(map.apply(&MapCommand::SetMaxConcurrentMoves(0)), Err(MapError::InvalidConcurrency)));
        assert_eq!(map, before);
    }

    /// A whole move as the metadata leader drives it, with the group's configuration as a
    /// simulated leader would report it after each step.
    #[test]
    fn a_move_goes_learner_then_joint_promotion_and_survives_repeated_steps() {
        let mut map = three();
        map.apply(&MapCommand::AddMember(member(4))).unwrap();
        // The new member follows the metadata group first (queued at the front).
        assert_eq!(map.queued[0], QueuedMove { group: META_GROUP, add: 4, remove: None });
        map.queued.clear();
        map.apply(&MapCommand::QueueMove(QueuedMove { group: 5, add: 4, remove: Some(2) })).unwrap();
        map.apply(&MapCommand::StartQueued).unwrap();
        let m = map.shards[5].moving.clone().expect("started");
        assert_eq!((m.add, m.remove, m.phase), (4, Some(2), MovePhase::AddLearner));
        assert!(map.groups_on(4).contains(&5), "the new node opens its replica as soon as the move starts");

        let mut observed = GroupObservation {
            leader: 1,
            voters: map.shards[5].voters.clone(),
            learners: vec![],
            joint: false,
            commit_index: 1000,
            added_matched: None,
            caught_up_voters: vec![1, 2, 3],
        };
        let mut steps = Vec::new();
        for _ in 0..20 {
            let m = match &map.shards[5].moving {
                Some(m) => m.clone(),
                None => break,
            };
            let step = next_step(5, &m, &observed);
            steps.push(step.clone());
            match step {
                MoveStep::Wait => observed.added_matched = Some(observed.commit_index),
                MoveStep::AddLearner { node } => {
                    observed.learners.push(node);
                    observed.added_matched = Some(10);
                }
                MoveStep::Promote { add, remove } => {
                    observed.learners.retain(|n| *n != add);
                    observed.voters.push(add);
                    observed.voters.retain(|n| Some(*n) != remove);
                }
                MoveStep::TransferLeader { to } => observed.leader = to,
                MoveStep::RemoveNode { .. } => unreachable!("only a metadata departure removes a node alone"),
                MoveStep::Map(command) => map.apply(&command).unwrap(),
            }
        }
        assert!(map.shards[5].moving.is_none(), "finished: {steps:?}");
        let mut voters = map.shards[5].voters.clone();
        voters.sort();
        assert_eq!(voters, vec![1, 3, 4]);
        // In order: learner, catch up, promote, finish.
        assert!(matches!(steps[0], MoveStep::AddLearner { node: 4 }));
        assert!(steps.iter().any(|s| matches!(s, MoveStep::Wait)), "waited for the learner to catch up");
        let promote = steps.iter().position(|s| matches!(s, MoveStep::Promote { .. })).expect("promoted");
        let caught_up = steps
            .iter()
            .position(|s| *s == MoveStep::Map(MapCommand::SetMovePhase { group: 5, move_id: m.id, phase: MovePhase::Promote }))
            .expect("caught up");
        assert!(caught_up < promote, "promotion only after catching up");
    }

    #[test]
    fn a_step_interrupted_by_a_crash_is_recognised_from_the_configuration() {
        let m = Move { id: 7, add: 4, remove: Some(2), phase: MovePhase::Promote, learner_only: false };
        // The joint change was applied but the map not updated before the crash: finish.
        let done = GroupObservation {
            leader: 1,
            voters: vec![1, 3, 4],
            learners: vec![],
            joint: false,
            commit_index: 50,
            added_matched: Some(50),
            caught_up_voters: vec![1, 2, 3],
        };
        assert_eq!(next_step(0, &m, &done), MoveStep::Map(MapCommand::FinishMove { group: 0, move_id: 7 }));
        // Mid-change: wait for raft-rs to leave the joint configuration.
        let joint = GroupObservation { joint: true, ..done.clone() };
        assert_eq!(next_step(0, &m, &joint), MoveStep::Wait);
        // A new metadata leader that finds the learner gone (its node restarted empty) adds it again.
        let lost = GroupObservation { voters: vec![1, 2, 3], ..done.clone() };
        let m = Move { phase: MovePhase::CatchUp, ..m };
        assert_eq!(next_step(0, &m, &lost), MoveStep::AddLearner { node: 4 });
        // Removing the leader: transfer leadership first.
        let m = Move { phase: MovePhase::Promote, remove: Some(1), ..m };
        let leader_leaves = GroupObservation { voters: vec![1, 2, 3], learners: vec![4], ..done };
        assert_eq!(next_step(0, &m, &leader_leaves), MoveStep::TransferLeader { to: 2 });
        // ... to a voter that is reachable and caught up: node 2 is dead here.
        let two_dead = GroupObservation { caught_up_voters: vec![1, 3], ..leader_leaves.clone() };
        assert_eq!(next_step(0, &m, &two_dead), MoveStep::TransferLeader { to: 3 });
        // No voter can take over: wait rather than hand leadership to a dead node.
        let alone = GroupObservation { caught_up_voters: vec![1], ..leader_leaves };
        assert_eq!(next_step(0, &m, &alone), MoveStep::Wait);
    }

    #[test]
    fn rebalance_spreads_evenly_with_few_moves_and_drain_empties_a_node() {
        let mut map = ClusterMap::bootstrap("c", 12, 2, (1..=3).map(member).collect());
        map.apply(&MapCommand::AddMember(member(4))).unwrap();
        map.queued.clear();
        let plan = map.plan_rebalance();
        // 24 replicas over 4 nodes: 6 each at the end. Rendezvous placement is uneven, so the
        // fewest moves is every replica a node holds above 6; node 4 receives exactly 6.
        let before = loads(&holders_snapshot(&map.shards, &[]));
        let fewest: usize = before.values().map(|&l| l.saturating_sub(6)).sum();
        assert_eq!(plan.len(), fewest, "{before:?} {plan:?}");
        assert_eq!(plan.iter().filter(|q| q.add == 4).count(), 6);
        let after = loads(&holders_snapshot(&map.shards, &plan));
        assert!((1..=4).all(|n| after.get(&n) == Some(&6)), "{after:?}");
        for q in &plan {
            map.apply(&MapCommand::QueueMove(q.clone())).unwrap();
        }
        assert!(map.plan_rebalance().is_empty(), "queued moves count as done");

        let map = ClusterMap::bootstrap("c", 12, 2, (1..=4).map(member).collect());
        let drain = map.plan_drain(2);
        let holds = map.shards.iter().filter(|p| p.voters.contains(&2)).count();
        assert_eq!(drain.len(), holds);
        assert!(drain.iter().all(|q| q.remove == Some(2) && q.add != 2 && !map.shards[q.group as usize].voters.contains(&q.add)));
    }

    #[test]
    fn a_draining_member_leaves_the_metadata_group_after_its_shards_and_never_as_the_last_voter() {
        let mut map = ClusterMap::bootstrap("c", 2, 2, (1..=3).map(member).collect());
        map.apply(&MapCommand::SetDraining { id: 3, draining: true }).unwrap();
        let holds_shards = map.shards.iter().any(|p| p.voters.contains(&3));
        assert_eq!(map.meta_departures().is_empty(), holds_shards, "shards first");
        for p in &mut map.shards {
            p.voters.retain(|v| *v != 3);
        }
        assert_eq!(map.meta_departures(), vec![3]);
        let observed = GroupObservation {
            leader: 3,
            voters: vec![1, 2, 3],
            learners: vec![],
            joint: false,
            commit_index: 9,
            added_matched: None,
            caught_up_voters: vec![1, 2, 3],
        };
        assert_eq!(meta_departure_step(3, &observed), MoveStep::TransferLeader { to: 1 });
        let observed = GroupObservation { leader: 1, ..observed };
        assert_eq!(meta_departure_step(3, &observed), MoveStep::RemoveNode { node: 3 });
        let observed = GroupObservation { voters: vec![1, 2], ..observed };
        assert_eq!(meta_departure_step(3, &observed), MoveStep::Map(MapCommand::LeaveMeta { id: 3 }));
        map.apply(&MapCommand::LeaveMeta { id: 3 }).unwrap();
        assert_eq!(map.meta.voters, vec![1, 2]);
        map.apply(&MapCommand::RemoveMember { id: 3 }).unwrap();
        // The last voter never leaves.
        let mut alone = ClusterMap::bootstrap("c", 1, 1, vec![member(1)]);
        assert!(alone.apply(&MapCommand::LeaveMeta { id: 1 }).is_err());
        let last = GroupObservation {
            leader: 1,
            voters: vec![1],
            learners: vec![],
            joint: false,
            commit_index: 1,
            added_matched: None,
            caught_up_voters: vec![1, 2, 3],
        };
        assert_eq!(meta_departure_step(1, &last), MoveStep::Wait);
    }

    #[test]
    fn group_changes_become_the_raft_conf_changes_they_name() {
        use raft::eraftpb::ConfChangeType;
        let kinds = |change: GroupChange| -> Vec<(ConfChangeType, u64)> {
            change.conf_change().map(|c| c.changes.iter().map(|s| (s.get_change_type(), s.node_id)).collect()).unwrap_or_default()
        };
        assert_eq!(kinds(GroupChange::AddLearner { node: 4 }), vec![(ConfChangeType::AddLearnerNode, 4)]);
        assert_eq!(
            kinds(GroupChange::Promote { add: 4, remove: Some(2) }),
            vec![(ConfChangeType::AddNode, 4), (ConfChangeType::RemoveNode, 2)],
            "one joint change"
        );
        assert_eq!(kinds(GroupChange::RemoveNode { node: 3 }), vec![(ConfChangeType::RemoveNode, 3)]);
        assert!(GroupChange::TransferLeader { to: 2 }.conf_change().is_none());
    }

    #[test]
    fn cancelling_moves_frees_the_queue_and_leaves_promotions_alone_and_stray_learners_are_found() {
        let mut map = three();
        map.apply(&MapCommand::AddMember(member(4))).unwrap();
        map.apply(&MapCommand::StartQueued).unwrap();
        assert!(map.meta.moving.is_some(), "the metadata move for node 4 started");
        map.apply(&MapCommand::QueueMove(QueuedMove { group: 2, add: 4, remove: Some(1) })).unwrap();
        map.shards[3].moving = Some(Move { id: 99, add: 4, remove: Some(2), phase: MovePhase::Promote, learner_only: false });
        map.apply(&MapCommand::CancelMoves).unwrap();
        assert!(map.queued.is_empty() && map.meta.moving.is_none());
        assert!(map.shards[3].moving.is_some(), "a move past its promotion is finished, not cancelled");
        map.shards[3].moving = None;
        map.apply(&MapCommand::RemoveMember { id: 4 }).unwrap();
        let observed = GroupObservation {
            leader: 1,
            voters: vec![1, 2, 3],
            learners: vec![4],
            joint: false,
            commit_index: 5,
            added_matched: None,
            caught_up_voters: vec![1, 2, 3],
        };
        assert_eq!(stray_learners(&map.shards[0], &observed), vec![4]);
        assert!(stray_learners(&map.shards[0], &GroupObservation { learners: vec![], ..observed }).is_empty());
    }

    #[test]
    fn a_member_leaves_only_once_it_holds_nothing() {
        let mut map = three();
        map.apply(&MapCommand::AddMember(member(4))).unwrap();
        map.queued.clear();
        map.apply(&MapCommand::RemoveMember { id: 4 }).unwrap();
        assert!(!map.members.contains_key(&4));
    }
}
