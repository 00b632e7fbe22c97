//! Membership at run time, on every node: join the cluster (a node started with
//! `cluster.join`), follow the cluster map (peers, trust, routing, replicas opened and closed),
//! and, on the metadata leader, drive the moves the map holds, one step at a time.
//!
//! Every step is decided by the pure functions of `rushes_cluster::membership` from the map and
//! from what the group's leader reports, so a step interrupted by a crash or a leader change is
//! decided again from the real configuration and taken again.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rushes_cluster::membership::{
    group_name, meta_departure_step, next_step, ClusterMap, GroupChange, GroupObservation, MapCommand, Member, MoveStep, MAP_FORMAT,
    META_GROUP,
};
use rushes_cluster::{NodeId, ShardId};
use rushes_config::Config;
use rushes_protocol::peer::{PeerReply, PeerRequest};
use rushes_protocol::{codec, ApiError, ErrorCode};
use serde::Serialize;

use super::{MetaGroup, ProposeError};
use crate::node::Node;
use crate::shard::{shard_dir, RaftOutbox, Shard, ShardOptions};

/// How often the metadata leader looks at the moves in flight.
const ORCHESTRATE_INTERVAL: Duration = Duration::from_millis(250);
/// How often every node re-checks the map it follows (it also reacts to each change at once).
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// How often a joining node asks the listed nodes for the map.
const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Every this many rounds (5 s) the metadata leader looks for learners no move accounts for.
const STRAY_LEARNER_ROUNDS: u64 = 20;
/// Deadline of one peer call made while driving a move.
const STEP_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Suffix of a replica directory being removed (renamed first, so a crash mid-removal never
/// leaves a partial store where a new replica would open).
const REMOVED_SUFFIX: &str = ".removed";

/// A move as the metadata leader last observed it (for `rushes cluster status` and progress).
#[derive(Debug, Clone, Serialize)]
pub struct MoveProgress {
    pub group: String,
    pub shard: Option<ShardId>,
    pub move_id: u64,
    pub add: NodeId,
    pub remove: Option<NodeId>,
    pub phase: &'static str,
    /// How far the new replica has replicated the group's log, and the group's commit.
    pub added_matched: Option<u64>,
    pub commit_index: u64,
    pub started_ms_ago: u64,
}

/// What this node knows about membership beyond the map.
pub struct MembershipState {
    pub options: ShardOptions,
    /// Started with `cluster.join` and not yet a member with a metadata replica.
    pub joining: AtomicBool,
    /// Why joining has not worked yet (shown by `/health` and `/v1/cluster`).
    pub join_problem: Mutex<Option<String>>,
    /// Moves in flight as this node (the metadata leader) last observed them.
    pub moves: Mutex<BTreeMap<u64, (MoveProgress, Instant)>>,
    /// Replicas being opened or closed: one reconciliation at a time.
    reconciling: tokio::sync::Mutex<()>,
    /// The epoch of the map this node last matched completely (every replica it gives opened,
    /// every other closed): the periodic check skips a map it already followed.
    followed_epoch: std::sync::atomic::AtomicU64,
}

impl MembershipState {
    pub fn new(options: ShardOptions, joining: bool) -> MembershipState {
        MembershipState {
            options,
            joining: AtomicBool::new(joining),
            join_problem: Mutex::new(None),
            moves: Mutex::new(BTreeMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
            followed_epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Moves in flight, as last observed (only on the metadata leader).
    pub fn moves_in_flight(&self) -> Vec<MoveProgress> {
        self.moves.lock().values().map(|(progress, _)| progress.clone()).collect()
    }
}

/// Whether `data_dir` holds a metadata log (the node is, or was, a member).
pub fn has_meta_log(data_dir: &Path) -> bool {
    data_dir.join("meta").join("conf").exists()
}

/// The map a new cluster starts with, from `cluster.nodes`: the same on every bootstrap node.
pub fn bootstrap_map(config: &Config) -> Result<ClusterMap, String> {
    let members: Vec<Member> = config
        .cluster
        .nodes
        .iter()
        .map(|n| Member { id: n.id, raft_addr: n.raft_addr.clone(), http_addr: n.http_addr.clone(), draining: false })
        .collect();
    if members.is_empty() {
        return Err("cluster.nodes is empty".to_string());
    }
    Ok(ClusterMap::bootstrap(&config.cluster.cluster_id, config.cluster.shards, config.cluster.replication_factor, members))
}

/// The stored shard count against the configured one.
pub fn check_shard_count(map: &ClusterMap, config: &Config) -> Result<(), String> {
    if map.shard_count != config.cluster.shards {
        return Err(format!(
            "the cluster map records {} shards but cluster.shards is {}: assets would map to other shards; set cluster.shards = {}",
            map.shard_count, config.cluster.shards, map.shard_count
        ));
    }
    if map.cluster_id != config.cluster.cluster_id {
        return Err(format!(
            "the cluster map belongs to cluster {:?} but cluster.cluster_id is {:?}",
            map.cluster_id, config.cluster.cluster_id
        ));
    }
    Ok(())
}

/// The shard replicas `node` holds or receives per the map: (shard, the configuration its
/// replica starts from, whether it joins as a new member). A joining replica starts with the
/// group's first voters minus itself, so it never campaigns before the leader's log or
/// snapshot tells it the real configuration.
pub fn replicas_to_open(map: &ClusterMap, node: NodeId) -> Vec<(ShardId, Vec<NodeId>, bool)> {
    map.groups_on(node)
        .into_iter()
        .filter(|&g| g != META_GROUP)
        .filter_map(|shard| {
            let placement = map.placement(shard)?;
            let founding = placement.initial_voters.contains(&node) && placement.voters.contains(&node);
            let initial: Vec<NodeId> = if founding {
                placement.initial_voters.clone()
            } else {
                placement.initial_voters.iter().copied().filter(|&v| v != node).collect()
            };
            Some((shard, initial, !founding))
        })
        .collect()
}

/// Deletes replica directories a crash left half removed.
pub fn remove_leftover_replicas(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("shards")) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(REMOVED_SUFFIX) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not delete a removed replica's directory");
            }
        }
    }
}

/// Joins (if needed), then follows the map and drives moves until the node stops.
pub async fn run(node: Weak<Node>) {
    loop {
        let Some(strong) = node.upgrade() else { return };
        if strong.meta().is_some() {
            break;
        }
        join_once(&strong).await;
        drop(strong);
        tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
    }
    let follow = tokio::spawn(follow_map(node.clone()));
    let mut ticker = tokio::time::interval(ORCHESTRATE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    loop {
        ticker.tick().await;
        round += 1;
        let Some(node) = node.upgrade() else { break };
        let Some(meta) = node.meta() else { continue };
        if !meta.is_leader() {
            node.membership.moves.lock().clear();
            continue;
        }
        if let Err(e) = orchestrate_once(&node, &meta).await {
            tracing::debug!(error = %e.message, "membership step deferred");
        }
        if round % STRAY_LEARNER_ROUNDS == 0 {
            if let Err(e) = remove_stray_learners(&node, &meta).await {
                tracing::debug!(error = %e.message, "removing a stray learner deferred");
            }
        }
    }
    follow.abort();
}

/// One attempt to join: ask the listed nodes for the map; once it names this node a member,
/// open the metadata replica (empty; the leader adds it) and follow the map.
async fn join_once(node: &Arc<Node>) {
    let Some(net) = node.net().cloned() else { return };
    let mut problem = "no listed node answered with the cluster map yet".to_string();
    for peer in node.config.cluster.nodes.iter().map(|n| n.id).filter(|&id| id != node.node_id()) {
        let map = match net.call(peer, &PeerRequest::ClusterMap, STEP_CALL_TIMEOUT).await {
            Ok(PeerReply::Raw(bytes)) => match codec::decode_received::<Option<ClusterMap>>(MAP_FORMAT, &bytes) {
                Ok(Some(map)) => map,
                Ok(None) => continue,
                Err(e) => {
                    problem = format!("node {peer} sent an unreadable map: {e}");
                    continue;
                }
            },
            Ok(other) => {
                problem = format!("node {peer} answered {}", other.kind());
                continue;
            }
            Err(e) => {
                problem = format!("node {peer}: {}", e.message);
                continue;
            }
        };
        if let Err(e) = check_shard_count(&map, &node.config) {
            problem = e;
            break;
        }
        if !map.members.contains_key(&node.node_id()) {
            problem = format!(
                "not a member yet: run `rushes cluster add-node --id {} --raft-addr ADDR --http-addr ADDR` against the cluster",
                node.node_id()
            );
            break;
        }
        let outbox = net.clone() as Arc<dyn RaftOutbox>;
        let initial: Vec<NodeId> = map.meta.initial_voters.iter().copied().filter(|&v| v != node.node_id()).collect();
        let options = node.membership.options.clone();
        let data_dir = node.config.node.data_dir.clone();
        let metrics = node.metrics.clone();
        let tick = Duration::from_millis(node.config.raft.tick_interval_ms);
        let opened = tokio::task::spawn_blocking(move || {
            MetaGroup::open(&data_dir, options.node_id, &initial, None, &options.raft, tick, outbox, &metrics)
        })
        .await;
        match opened {
            Ok(Ok(group)) => {
                *node.meta.write() = Some(Arc::new(group));
                node.membership.joining.store(false, Ordering::Release);
                *node.membership.join_problem.lock() = None;
                tracing::info!(node = node.node_id(), epoch = map.epoch, "joined the cluster; following its map");
                follow(node, Arc::new(map)).await;
                return;
            }
            Ok(Err(e)) => problem = format!("cannot open the metadata replica: {e}"),
            Err(e) => problem = format!("cannot open the metadata replica: {e}"),
        }
        break;
    }
    tracing::info!(node = node.node_id(), %problem, "waiting to join the cluster");
    *node.membership.join_problem.lock() = Some(problem);
}

/// Follows the local metadata replica's map: at each change and every [`FOLLOW_INTERVAL`].
async fn follow_map(node: Weak<Node>) {
    let mut watch = match node.upgrade().and_then(|n| n.meta()) {
        Some(meta) => meta.map.clone(),
        None => return,
    };
    loop {
        let map = watch.borrow_and_update().clone();
        if let (Some(map), Some(node)) = (map, node.upgrade()) {
            follow(&node, map).await;
        }
        if node.strong_count() == 0 {
            return;
        }
        let _ = tokio::time::timeout(FOLLOW_INTERVAL, watch.changed()).await;
    }
}

/// Makes this node match `map`: peers and their trust, routing, and local replicas.
pub async fn follow(node: &Arc<Node>, map: Arc<ClusterMap>) {
    let _one_at_a_time = node.membership.reconciling.lock().await;
    if node.view.cluster_map().is_some_and(|current| current.epoch > map.epoch) {
        return;
    }
    if node.membership.followed_epoch.load(Ordering::Acquire) == map.epoch {
        return;
    }
    let mut complete = true;
    if let Err(e) = check_shard_count(&map, &node.config) {
        tracing::error!(error = %e, "refusing to follow the cluster map");
        return;
    }
    if let Some(net) = node.net() {
        let me = node.node_id();
        // Name resolution may block: off the async threads.
        let members: Vec<Member> = map.members.values().filter(|m| m.id != me).cloned().collect();
        let resolved = tokio::task::spawn_blocking(move || {
            members.into_iter().map(|m| (m.raft_addr.to_socket_addrs().map(|mut a| a.next()), m)).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (addr, member) in resolved {
            match addr {
                Ok(Some(addr)) => {
                    // Idempotent: a known peer at the same address keeps its connection.
                    if let Err(e) = net.transport.add_peer(member.id, addr) {
                        tracing::warn!(peer = member.id, error = %e, "cannot add a member's peer connection");
                    }
                }
                _ => tracing::warn!(peer = member.id, addr = %member.raft_addr, "a member's raft address does not resolve"),
            }
        }
        if let Some(allowed) = net.transport.config().allowed_peers.as_ref() {
            allowed.set(map.members.keys().copied());
        }
    }
    node.view.set_cluster_map(map.clone());
    // Replicas: open what the map gives this node, close what it took away.
    let wanted = replicas_to_open(&map, node.node_id());
    for (shard, initial_voters, joining) in &wanted {
        if node.view.local_shard(*shard).is_some() {
            continue;
        }
        let (shard, initial_voters, joining) = (*shard, initial_voters.clone(), *joining);
        let options = node.membership.options.clone();
        let data_dir = node.config.node.data_dir.clone();
        let metrics = node.metrics.clone();
        let outbox = node.net().cloned().map(|n| n as Arc<dyn RaftOutbox>);
        let opened =
            tokio::task::spawn_blocking(move || Shard::open_replica(&data_dir, shard, &initial_voters, joining, &options, metrics, outbox))
                .await;
        match opened {
            Ok(Ok(replica)) => {
                tracing::info!(shard, joining, "opened a replica the cluster map gives this node");
                node.view.insert_replica(replica);
            }
            Ok(Err(e)) => {
                complete = false;
                tracing::error!(shard, error = %e, "cannot open a replica the cluster map gives this node; retrying");
            }
            Err(e) => {
                complete = false;
                tracing::error!(shard, error = %e, "cannot open a replica the cluster map gives this node; retrying");
            }
        }
    }
    for replica in node.view.shards() {
        if wanted.iter().any(|(shard, ..)| *shard == replica.id) {
            continue;
        }
        let Some(replica) = node.view.remove_replica(replica.id) else { continue };
        let dir = shard_dir(&node.config.node.data_dir, replica.id);
        let shard = replica.id;
        let closed = tokio::task::spawn_blocking(move || {
            replica.shutdown();
            drop(replica);
            let removed = dir.with_file_name(format!(
                "{}{REMOVED_SUFFIX}",
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            ));
            std::fs::rename(&dir, &removed).and_then(|()| std::fs::remove_dir_all(&removed))
        })
        .await;
        match closed {
            Ok(Ok(())) => tracing::info!(shard, "closed and deleted a replica the cluster map moved away"),
            Ok(Err(e)) => tracing::warn!(shard, error = %e, "closed a replica the map moved away; its directory is left behind"),
            Err(e) => tracing::warn!(shard, error = %e, "closing a replica the map moved away failed"),
        }
    }
    if complete {
        node.membership.followed_epoch.store(map.epoch, Ordering::Release);
    }
}

/// One round of the metadata leader: start queued moves, take the next step of each move in
/// flight, and let draining members leave the metadata group.
async fn orchestrate_once(node: &Arc<Node>, meta: &Arc<MetaGroup>) -> Result<(), ApiError> {
    let Some(map) = meta.current() else { return Ok(()) };
    let timeout = STEP_CALL_TIMEOUT;
    let startable = map.moves_in_flight() < map.max_concurrent_moves
        && map.queued.iter().any(|q| map.placement(q.group).is_some_and(|p| p.moving.is_none()));
    if startable {
        meta.propose(MapCommand::StartQueued, timeout).await?;
    }
    let map = meta.current().unwrap_or(map);
    let mut seen = Vec::new();
    for group in map.groups() {
        let Some(m) = map.placement(group).and_then(|p| p.moving.clone()) else { continue };
        seen.push(m.id);
        let Some(observed) = observe(node, meta, &map, group, Some(m.add)).await else { continue };
        {
            let mut moves = node.membership.moves.lock();
            let started = moves.get(&m.id).map_or_else(Instant::now, |(_, at)| *at);
            let progress = MoveProgress {
                group: group_name(group),
                shard: (group != META_GROUP).then_some(group),
                move_id: m.id,
                add: m.add,
                remove: m.remove,
                phase: m.phase.as_str(),
                added_matched: observed.added_matched,
                commit_index: observed.commit_index,
                started_ms_ago: started.elapsed().as_millis() as u64,
            };
            moves.insert(m.id, (progress, started));
        }
        let step = next_step(group, &m, &observed);
        take_step(node, meta, group, &observed, step).await?;
    }
    node.membership.moves.lock().retain(|id, _| seen.contains(id));
    for departing in map.meta_departures() {
        let Some(observed) = meta.observe(None).await else { continue };
        let step = meta_departure_step(departing, &observed);
        take_step(node, meta, META_GROUP, &observed, step).await?;
    }
    Ok(())
}

/// Removes learners a cancelled move left in a group's configuration (the map no longer names
/// them, so nothing else would).
async fn remove_stray_learners(node: &Arc<Node>, meta: &Arc<MetaGroup>) -> Result<(), ApiError> {
    let Some(map) = meta.current() else { return Ok(()) };
    for group in map.groups() {
        let Some(placement) = map.placement(group) else { continue };
        if placement.moving.is_some() {
            continue;
        }
        let Some(observed) = observe(node, meta, &map, group, None).await else { continue };
        for learner in rushes_cluster::membership::stray_learners(placement, &observed) {
            // Only while this node still leads the metadata group and no move started since
            // the map was read (a move's new learner is not a stray).
            let current = meta.current();
            let still_idle =
                current.as_ref().and_then(|m| m.placement(group)).is_some_and(|p| p.moving.is_none() && !p.holders().contains(&learner));
            if !meta.is_leader() || !still_idle {
                return Ok(());
            }
            tracing::info!(group = %group_name(group), learner, "removing a learner no move accounts for");
            change_group(node, meta, group, observed.leader, GroupChange::RemoveNode { node: learner }).await?;
        }
    }
    Ok(())
}

async fn take_step(
    node: &Arc<Node>,
    meta: &Arc<MetaGroup>,
    group: ShardId,
    observed: &GroupObservation,
    step: MoveStep,
) -> Result<(), ApiError> {
    let change = match step {
        MoveStep::Wait => return Ok(()),
        MoveStep::Map(command) => {
            tracing::info!(group = %group_name(group), ?command, "membership: recording progress");
            meta.propose(command, STEP_CALL_TIMEOUT).await?;
            return Ok(());
        }
        MoveStep::AddLearner { node } => GroupChange::AddLearner { node },
        MoveStep::Promote { add, remove } => GroupChange::Promote { add, remove },
        MoveStep::TransferLeader { to } => GroupChange::TransferLeader { to },
        MoveStep::RemoveNode { node } => GroupChange::RemoveNode { node },
    };
    tracing::info!(group = %group_name(group), ?change, leader = observed.leader, "membership: asking the group's leader");
    change_group(node, meta, group, observed.leader, change).await
}

/// What the group's leader reports: the local replica if it leads, else each holder in turn.
async fn observe(
    node: &Arc<Node>,
    meta: &Arc<MetaGroup>,
    map: &ClusterMap,
    group: ShardId,
    added: Option<NodeId>,
) -> Option<GroupObservation> {
    if group == META_GROUP {
        return meta.observe(added).await;
    }
    if let Some(replica) = node.view.local_shard(group) {
        if let Some(observed) = replica.observe(added).await {
            return Some(observed);
        }
    }
    let net = node.net()?;
    let placement = map.placement(group)?;
    for peer in placement.voters.iter().copied().filter(|&p| p != node.node_id()) {
        if let Ok(PeerReply::Raw(bytes)) = net.call(peer, &PeerRequest::GroupObserve { group, added }, STEP_CALL_TIMEOUT).await {
            if let Ok(observed) = codec::decode_received::<GroupObservation>(MAP_FORMAT, &bytes) {
                return Some(observed);
            }
        }
    }
    None
}

async fn change_group(
    node: &Arc<Node>,
    meta: &Arc<MetaGroup>,
    group: ShardId,
    leader: NodeId,
    change: GroupChange,
) -> Result<(), ApiError> {
    if group == META_GROUP {
        return meta.change(change).await.map_err(ApiError::from);
    }
    if leader == node.node_id() {
        let replica = node.view.local_shard(group).ok_or_else(|| ApiError::unavailable(format!("shard {group} is not on this node")))?;
        return replica.change_group(change).await.map_err(ApiError::from);
    }
    let net = node.net().ok_or_else(|| ApiError::unavailable("no peer transport"))?;
    let change = codec::encode(MAP_FORMAT, &change).map_err(|e| ApiError::internal(e.to_string()))?;
    match net.call(leader, &PeerRequest::GroupChange { group, change }, STEP_CALL_TIMEOUT).await? {
        PeerReply::Raw(_) => Ok(()),
        PeerReply::Error(e) => Err(e),
        PeerReply::NotLeader { leader } => Err(ApiError::unavailable(format!("node {leader:?} leads shard {group} now"))),
        other => Err(ApiError::internal(format!("unexpected reply: {}", other.kind()))),
    }
}

/// Proposes a map command through the metadata leader (this node's replica, or forwarded).
pub async fn propose_map(node: &Arc<Node>, command: MapCommand, timeout: Duration) -> Result<Arc<ClusterMap>, ApiError> {
    let meta = node.meta().ok_or_else(not_clustered)?;
    let deadline = Instant::now() + timeout;
    loop {
        let leader = if meta.is_leader() { Some(node.node_id()) } else { meta.leader() };
        let attempt = match leader {
            Some(leader) if leader == node.node_id() => meta.propose(command.clone(), timeout).await.map_err(ApiError::from),
            Some(leader) => forward_proposal(node, leader, &command, timeout).await,
            None => Err(ApiError::unavailable("the metadata group has no leader yet").with_retry_after(1)),
        };
        match attempt {
            Err(e) if e.code.is_retryable() && Instant::now() + Duration::from_millis(200) < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

async fn forward_proposal(node: &Arc<Node>, leader: NodeId, command: &MapCommand, timeout: Duration) -> Result<Arc<ClusterMap>, ApiError> {
    let net = node.net().ok_or_else(not_clustered)?;
    let command = codec::encode(MAP_FORMAT, command).map_err(|e| ApiError::internal(e.to_string()))?;
    match net.call(leader, &PeerRequest::MetaPropose { command }, timeout).await? {
        PeerReply::Raw(bytes) => codec::decode_received::<ClusterMap>(MAP_FORMAT, &bytes)
            .map(Arc::new)
            .map_err(|e| ApiError::internal(format!("node {leader} sent an unreadable map: {e}"))),
        PeerReply::NotLeader { .. } => Err(ApiError::unavailable("the metadata leader changed; retry").with_retry_after(1)),
        PeerReply::Error(e) => Err(e),
        other => Err(ApiError::internal(format!("unexpected reply: {}", other.kind()))),
    }
}

/// A peer's request that concerns membership.
pub async fn answer_peer(node: &Arc<Node>, from: NodeId, request: PeerRequest) -> PeerReply {
    match request {
        PeerRequest::ClusterMap => {
            let map = node.meta().and_then(|m| m.current()).map(|m| (*m).clone());
            match codec::encode(MAP_FORMAT, &map) {
                Ok(bytes) => PeerReply::Raw(bytes),
                Err(e) => PeerReply::Error(ApiError::internal(e.to_string())),
            }
        }
        PeerRequest::MetaPropose { command } => {
            let Some(meta) = node.meta() else { return PeerReply::Error(not_clustered()) };
            let command = match codec::decode_received::<MapCommand>(MAP_FORMAT, &command) {
                Ok(command) => command,
                Err(e) => return PeerReply::Error(ApiError::field("command", format!("unreadable map command: {e}"))),
            };
            tracing::info!(from, ?command, "map command forwarded by a peer");
            match meta.propose(command, STEP_CALL_TIMEOUT).await {
                Ok(map) => match codec::encode(MAP_FORMAT, &*map) {
                    Ok(bytes) => PeerReply::Raw(bytes),
                    Err(e) => PeerReply::Error(ApiError::internal(e.to_string())),
                },
                Err(ProposeError::NotLeader { leader }) => PeerReply::NotLeader { leader },
                Err(e) => PeerReply::Error(e.into()),
            }
        }
        PeerRequest::GroupObserve { group, added } => {
            let observed = if group == META_GROUP {
                match node.meta() {
                    Some(meta) => meta.observe(added).await,
                    None => None,
                }
            } else {
                match node.view.local_shard(group) {
                    Some(replica) => replica.observe(added).await,
                    None => None,
                }
            };
            match observed {
                Some(observed) => match codec::encode(MAP_FORMAT, &observed) {
                    Ok(bytes) => PeerReply::Raw(bytes),
                    Err(e) => PeerReply::Error(ApiError::internal(e.to_string())),
                },
                None => PeerReply::NotLeader { leader: None },
            }
        }
        PeerRequest::GroupChange { group, change } => {
            let change = match codec::decode_received::<GroupChange>(MAP_FORMAT, &change) {
                Ok(change) => change,
                Err(e) => return PeerReply::Error(ApiError::field("change", format!("unreadable group change: {e}"))),
            };
            let result = if group == META_GROUP {
                match node.meta() {
                    Some(meta) => meta.change(change).await.map_err(ApiError::from),
                    None => Err(not_clustered()),
                }
            } else {
                match node.view.local_shard(group) {
                    Some(replica) => replica.change_group(change).await.map_err(ApiError::from),
                    None => Err(ApiError::unavailable(format!("shard {group} is not on node {}", node.node_id()))),
                }
            };
            match result {
                Ok(()) => PeerReply::Raw(vec![]),
                Err(e) => PeerReply::Error(e),
            }
        }
        other => PeerReply::Error(ApiError::internal(format!("{} is not a membership request", other.kind()))),
    }
}

fn not_clustered() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidField,
        "this node is not part of a cluster (no cluster.nodes, or still joining): membership commands need a running cluster",
    )
}

/// Longest address a member may have (host:port).
const ADDRESS_BYTES_MAX: usize = 255;

/// Deadline of an operator's membership command (it waits for the map command to commit).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The current map from the metadata leader's point of view (this node's copy if it leads,
/// else its own, which may be a moment behind).
pub fn current_map(node: &Node) -> Result<Arc<ClusterMap>, ApiError> {
    let meta = node.meta().ok_or_else(not_clustered)?;
    // Right after a cluster starts, the metadata group may not have applied the first map
    // here yet: the node is a member, and a retry shortly will find the map.
    meta.current().ok_or_else(|| ApiError::unavailable(format!("{MAP_NOT_YET_HERE} {}; retry shortly", node.node_id())))
}

/// Start of the 503 a membership command gets before the first cluster map reached the node
/// it was sent to (`rushes cluster` retries on it: nothing was changed).
pub const MAP_NOT_YET_HERE: &str = "the cluster map has not reached node";

/// `rushes cluster add-node`: a new member (it then follows the metadata group first).
pub async fn add_node(node: &Arc<Node>, member: Member) -> Result<Arc<ClusterMap>, ApiError> {
    for (field, addr) in [("raft_addr", &member.raft_addr), ("http_addr", &member.http_addr)] {
        if addr.trim().is_empty() || addr.len() > ADDRESS_BYTES_MAX {
            return Err(ApiError::field(field, format!("give the node's address as host:port, at most {ADDRESS_BYTES_MAX} bytes")));
        }
    }
    // Name resolution may block: off the async threads.
    let addr = member.raft_addr.clone();
    let resolves = tokio::task::spawn_blocking(move || addr.to_socket_addrs().is_ok_and(|mut a| a.next().is_some())).await.unwrap_or(false);
    if !resolves {
        return Err(ApiError::field("raft_addr", format!("{:?} does not resolve to an address; give host:port", member.raft_addr)));
    }
    propose_map(node, MapCommand::AddMember(member), ADMIN_TIMEOUT).await
}

/// `rushes cluster remove-node` (first half): stop placing replicas on `id` and queue moves
/// that take every replica it holds to the least loaded other members.
pub async fn drain_node(node: &Arc<Node>, id: NodeId) -> Result<(Arc<ClusterMap>, usize), ApiError> {
    let map = current_map(node)?;
    if !map.members.contains_key(&id) {
        return Err(ApiError::new(ErrorCode::NotFound, format!("node {id} is not a member of the cluster")));
    }
    let others = map.members.values().filter(|m| m.id != id && !m.draining).count();
    if others < map.replication_factor {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "draining node {id} would leave {others} active members for {} replicas per shard: add a node first (rushes cluster add-node), or use replace-node",
                map.replication_factor
            ),
        ));
    }
    propose_map(node, MapCommand::SetDraining { id, draining: true }, ADMIN_TIMEOUT).await?;
    queue_moves(node, |map| map.plan_drain(id)).await
}

/// `rushes cluster replace-node OLD --with NEW`: every replica of `old` moves to `new` (a
/// member already, empty); `old` is drained, and may be dead: each move needs only a quorum of
/// the group's other voters.
pub async fn replace_node(node: &Arc<Node>, old: NodeId, new: NodeId) -> Result<(Arc<ClusterMap>, usize), ApiError> {
    let map = current_map(node)?;
    for (field, id) in [("old", old), ("with", new)] {
        if !map.members.contains_key(&id) {
            return Err(ApiError::field(field, format!("node {id} is not a member: add it first (rushes cluster add-node)")));
        }
    }
    if old == new {
        return Err(ApiError::field("with", "a node cannot replace itself"));
    }
    propose_map(node, MapCommand::SetDraining { id: old, draining: true }, ADMIN_TIMEOUT).await?;
    queue_moves(node, |map| {
        map.shards
            .iter()
            .enumerate()
            .filter(|(_, p)| p.holders().contains(&old) && !p.holders().contains(&new))
            .map(|(shard, _)| rushes_cluster::membership::QueuedMove { group: shard as ShardId, add: new, remove: Some(old) })
            .collect()
    })
    .await
}

/// `rushes cluster move-replica --shard S --from A --to B`.
pub async fn move_replica(node: &Arc<Node>, shard: ShardId, from: NodeId, to: NodeId) -> Result<(Arc<ClusterMap>, usize), ApiError> {
    let map = current_map(node)?;
    if shard >= map.shard_count {
        return Err(ApiError::field("shard", format!("shard {shard} does not exist: the cluster has shards 0..{}", map.shard_count)));
    }
    queue_moves(node, |_| vec![rushes_cluster::membership::QueuedMove { group: shard, add: to, remove: Some(from) }]).await
}

/// `rushes cluster rebalance`: the fewest moves that spread replicas evenly.
pub async fn rebalance(node: &Arc<Node>, max_concurrent_moves: Option<usize>) -> Result<(Arc<ClusterMap>, usize), ApiError> {
    if let Some(n) = max_concurrent_moves {
        propose_map(node, MapCommand::SetMaxConcurrentMoves(n), ADMIN_TIMEOUT).await.map_err(|e| {
            if e.code == ErrorCode::Conflict {
                ApiError::field("max_concurrent_moves", e.message)
            } else {
                e
            }
        })?;
    }
    queue_moves(node, ClusterMap::plan_rebalance).await
}

/// `rushes cluster cancel-moves`: drops the queue and gives up moves not past their promotion.
pub async fn cancel_moves(node: &Arc<Node>) -> Result<Arc<ClusterMap>, ApiError> {
    propose_map(node, MapCommand::CancelMoves, ADMIN_TIMEOUT).await
}

/// `rushes cluster remove-node` (second half): forget a member that holds nothing.
pub async fn remove_member(node: &Arc<Node>, id: NodeId) -> Result<Arc<ClusterMap>, ApiError> {
    propose_map(node, MapCommand::RemoveMember { id }, ADMIN_TIMEOUT).await
}

/// Queues the moves `plan` computes on the current map; a move the map refuses is an error
/// naming it (the ones before it stay queued: each is valid on its own).
async fn queue_moves(
    node: &Arc<Node>,
    plan: impl FnOnce(&ClusterMap) -> Vec<rushes_cluster::membership::QueuedMove>,
) -> Result<(Arc<ClusterMap>, usize), ApiError> {
    let mut map = current_map(node)?;
    let moves = plan(&map);
    let count = moves.len();
    for queued in moves {
        let what = format!("moving {} from node {:?} to node {}", group_name(queued.group), queued.remove, queued.add);
        map = propose_map(node, MapCommand::QueueMove(queued), ADMIN_TIMEOUT)
            .await
            .map_err(|e| ApiError::new(e.code, format!("{what}: {}", e.message)))?;
    }
    Ok((map, count))
}
