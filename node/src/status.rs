//! `GET /v1/cluster`: nodes, shards, leaders, every replica's watermarks and lag, and the actor
//! map (each node's ingest router and coordinator, each replica's Raft, fusion and index
//! actors with their state, mailbox depth and capacity, restarts and last error). This node's
//! part is read locally, the others' from their nodes (unreachable ones are marked).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rushes_cluster::{NodeId, ShardId};
use rushes_protocol::peer::{ActorStatus, PeerReply, PeerRequest, ReplicaStatus};
use rushes_protocol::ApiError;
use serde_json::json;

use crate::node::{ClusterView, Node};

/// Timeout of a status request to a peer.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// This node's replicas, as peers and `/v1/cluster` report them.
pub fn local_replicas(view: &ClusterView) -> Vec<ReplicaStatus> {
    view.shards()
        .iter()
        .map(|s| {
            let p = &s.progress;
            ReplicaStatus {
                shard: s.id,
                node: view.node_id(),
                leader: p.is_leader.load(Ordering::Acquire),
                leader_id: s.leader(),
                term: p.term.load(Ordering::Acquire),
                commit_index: p.commit.load(Ordering::Acquire),
                applied_index: p.applied.load(Ordering::Acquire),
                fused_index: p.fused.load(Ordering::Acquire),
                indexed_index: p.indexed.load(Ordering::Acquire),
                raw_annotations: s.store.raw_count() as u64,
                failed: p.failed.load(Ordering::Acquire),
            }
        })
        .collect()
}

/// A peer's replicas and actors (actors are `None` from a node that predates the actor map).
type PeerStatus = Option<(Vec<ReplicaStatus>, Option<Vec<ActorStatus>>)>;

async fn peer_status(node: &Node, peer: NodeId) -> PeerStatus {
    let net = node.net()?;
    match net.call(peer, &PeerRequest::NodeStatus, PEER_STATUS_TIMEOUT).await {
        Ok(PeerReply::NodeStatus { replicas, actors }) => Some((replicas, Some(actors))),
        // An earlier version refuses the request it does not know.
        _ => match net.call(peer, &PeerRequest::Status, PEER_STATUS_TIMEOUT).await {
            Ok(PeerReply::Status(replicas)) => Some((replicas, None)),
            _ => None,
        },
    }
}

/// The whole status. `digest` adds a hash of each local replica's raw store (reads the whole
/// store, on the blocking pool).
pub async fn cluster_status(node: &Arc<Node>, digest: bool) -> Result<serde_json::Value, ApiError> {
    let local_node = node.clone();
    let local = tokio::task::spawn_blocking(move || local_status_json(&local_node, digest))
        .await
        .map_err(|e| ApiError::internal(format!("status failed: {e}")))??;
    let node_id = node.node_id();
    let cluster_map = node.view.cluster_map();
    // Members as the cluster map has them (config only until there is a map).
    let listed: Vec<(NodeId, String, String, bool)> = match &cluster_map {
        Some(map) => map.members.values().map(|m| (m.id, m.http_addr.clone(), m.raft_addr.clone(), m.draining)).collect(),
        None => node.config.cluster.nodes.iter().map(|m| (m.id, m.http_addr.clone(), m.raft_addr.clone(), false)).collect(),
    };
    let members: Vec<NodeId> = listed.iter().map(|m| m.0).filter(|id| *id != node_id).collect();
    let answers = futures_util::future::join_all(members.iter().map(|&peer| peer_status(node, peer))).await;
    let remote: HashMap<NodeId, PeerStatus> = members.into_iter().zip(answers).collect();
    let actors_of = |replica_actors: &[ActorStatus], shard: Option<ShardId>| -> Vec<ActorStatus> {
        replica_actors.iter().filter(|a| a.shard == shard).cloned().collect()
    };
    let own_actors = node.actors();
    let nodes: Vec<serde_json::Value> = if node.config.cluster.nodes.is_empty() {
        vec![json!({
            "id": node_id, "http_addr": node.config.node.listen.to_string(), "raft_addr": null, "up": true,
            "actors": actors_of(&own_actors, None),
        })]
    } else {
        listed
            .iter()
            .map(|(id, http_addr, raft_addr, draining)| {
                let peer = remote.get(id).and_then(Option::as_ref);
                let up = *id == node_id || peer.is_some();
                let actors = match (*id == node_id, peer) {
                    (true, _) => json!(actors_of(&own_actors, None)),
                    (false, Some((_, Some(actors)))) => json!(actors_of(actors, None)),
                    _ => serde_json::Value::Null,
                };
                json!({ "id": id, "http_addr": http_addr, "raft_addr": raft_addr, "up": up, "draining": draining, "actors": actors })
            })
            .collect()
    };
    let mut shards = Vec::new();
    let shard_map = node.view.shard_map();
    for shard in 0..shard_map.shard_count() {
        let mut replicas = Vec::new();
        let mut leader: Option<NodeId> = None;
        for &replica_node in shard_map.holders(shard) {
            if replica_node == node_id {
                if let Some(view) = local.get(&shard) {
                    if view["leader"].as_bool() == Some(true) {
                        leader = Some(replica_node);
                    }
                    leader = leader.or(view["leader_id"].as_u64());
                    replicas.push(view.clone());
                }
                continue;
            }
            let peer = remote.get(&replica_node).and_then(Option::as_ref);
            match peer.and_then(|(statuses, actors)| statuses.iter().find(|s| s.shard == shard).map(|s| (s, actors))) {
                Some((status, actors)) => {
                    if status.leader {
                        leader = Some(replica_node);
                    }
                    let mut view = replica_json(status, false, true);
                    if let Some(actors) = actors {
                        view["actors"] = json!(actors_of(actors, Some(shard)));
                    }
                    replicas.push(view);
                }
                None => replicas.push(json!({ "node": replica_node, "local": false, "reachable": false })),
            }
        }
        for replica in &mut replicas {
            let on = replica["node"].as_u64().unwrap_or(0);
            replica["role"] = json!(if shard_map.replicas(shard).contains(&on) { "voter" } else { "learner" });
        }
        let mut view = json!({ "shard": shard, "leader": leader, "replicas": replicas });
        if let Some(m) = cluster_map.as_ref().and_then(|map| map.placement(shard)).and_then(|p| p.moving.as_ref()) {
            view["moving"] = json!({ "move_id": m.id, "add": m.add, "remove": m.remove, "phase": m.phase.as_str() });
        }
        // Sizes of this node's replica at the shard level too (the single-node shape).
        if let Some(local) = local.get(&shard) {
            for key in ["raw_annotations", "buckets", "index_docs", "vectors", "disk_bytes"] {
                view[key] = local[key].clone();
            }
        }
        shards.push(view);
    }
    Ok(json!({
        "cluster_id": node.config.cluster.cluster_id,
        "node_id": node_id,
        "replication_factor": shard_map.replicas(0).len(),
        "membership": membership_json(node),
        "nodes": nodes,
        "shards": shards,
        "isolated_from": node.net().map(|n| n.isolated()).unwrap_or_default(),
        "uptime_s": node.started.elapsed().as_secs(),
        "security": security_json(node),
    }))
}

/// The cluster map's state as this node follows it: epoch, metadata leader, moves in flight
/// and queued, and (on a joining node) why it is not a member yet.
fn membership_json(node: &Node) -> serde_json::Value {
    let meta = node.meta();
    let map = node.view.cluster_map();
    json!({
        "epoch": map.as_ref().map(|m| m.epoch),
        "meta_leader": meta.as_ref().and_then(|m| if m.is_leader() { Some(node.node_id()) } else { m.leader() }),
        "meta_voters": map.as_ref().map(|m| m.meta.voters.clone()),
        "meta_learners": map.as_ref().map(|m| m.meta.learners.clone()),
        // The metadata group's Raft configuration as this node's replica applied it (the map
        // above is what it should become).
        "meta_configuration": meta.as_ref().map(|m| {
            let (voters, learners) = m.progress.configuration.lock().clone();
            json!({ "voters": voters, "learners": learners })
        }),
        "moves": map.as_ref().map(|m| {
            m.groups()
                .filter_map(|g| m.placement(g).and_then(|p| p.moving.as_ref()).map(|mv| json!({
                    "group": rushes_cluster::membership::group_name(g),
                    "shard": (g != rushes_cluster::membership::META_GROUP).then_some(g),
                    "move_id": mv.id, "add": mv.add, "remove": mv.remove, "phase": mv.phase.as_str(),
                })))
                .collect::<Vec<_>>()
        }).unwrap_or_default(),
        "queued_moves": map.as_ref().map(|m| m.queued.iter().map(|q| json!({
            "group": rushes_cluster::membership::group_name(q.group), "add": q.add, "remove": q.remove,
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "max_concurrent_moves": map.as_ref().map(|m| m.max_concurrent_moves),
        "observed_moves": node.membership.moves_in_flight(),
        "joining": node.membership.joining.load(Ordering::Acquire),
        "join_problem": node.membership.join_problem.lock().clone(),
    })
}

/// How this node's peers and clients prove who they are; anything open says so in `warnings`,
/// for an operator who reads this rather than the start-up log.
fn security_json(node: &Node) -> serde_json::Value {
    let peers = node.net().map(|net| net.security);
    let https = !node.config.http.tls_cert_file.is_empty();
    let mut warnings = Vec::new();
    if peers == Some(crate::peer::PeerSecurity::Insecure) {
        warnings
            .push("PEERS ARE NOT AUTHENTICATED (cluster.insecure_peers = true): anyone who reaches the Raft port can speak for any node");
    }
    if node.api_keys.is_open() {
        warnings.push("NO API KEYS: anyone who reaches the HTTP address can read, write and administer");
    }
    json!({
        "peers": peers,
        "api_keys": !node.api_keys.is_open(),
        "https": https,
        "warnings": warnings,
    })
}

fn local_status_json(node: &Node, digest: bool) -> Result<HashMap<ShardId, serde_json::Value>, ApiError> {
    node.refresh_gauges();
    let mut views = HashMap::new();
    for (status, shard) in local_replicas(&node.view).into_iter().zip(node.shards()) {
        let mut view = replica_json(&status, true, true);
        view["leader_id"] = json!(status.leader_id);
        view["failure"] = json!(shard.progress.failure());
        view["proposal_queue"] = json!(shard.queue_depth());
        view["buckets"] = json!(shard.store.bucket_count());
        view["index_docs"] = json!(shard.index.num_docs());
        view["vectors"] = shard.index.vectors.iter().map(|v| json!({"space": v.spec.name, "count": v.len()})).collect();
        view["disk_bytes"] = json!(shard.store.disk_bytes());
        // Below the floor the replica writes nothing until space returns (limits.min_free_disk_bytes).
        view["disk_free_bytes"] = json!(shard.disk.free_bytes());
        view["disk_below_floor"] = json!(!shard.disk.has_room());
        view["log_first_index"] = json!(shard.log.first_log_index());
        view["snapshots_installed"] = json!(shard.progress.snapshots_installed.load(Ordering::Acquire));
        view["snapshot_chunks_fetched"] = json!(shard.progress.snapshot_chunks_fetched.load(Ordering::Acquire));
        view["snapshot_bytes_fetched"] = json!(shard.progress.snapshot_bytes_fetched.load(Ordering::Acquire));
        view["snapshot_fetch_ms"] = json!(shard.progress.snapshot_fetch_ms.load(Ordering::Acquire));
        view["actors"] = json!(shard.actors());
        if digest {
            view["raw_digest"] = json!(shard.store.raw_digest().map_err(|e| ApiError::internal(e.to_string()))?);
        }
        views.insert(shard.id, view);
    }
    Ok(views)
}

fn replica_json(status: &ReplicaStatus, local: bool, reachable: bool) -> serde_json::Value {
    json!({
        "node": status.node,
        "local": local,
        "reachable": reachable,
        "leader": status.leader,
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "fused_index": status.fused_index,
        "indexed_index": status.indexed_index,
        "lag": {
            "apply": status.commit_index.saturating_sub(status.applied_index),
            "fusion": status.applied_index.saturating_sub(status.fused_index),
            "index": status.fused_index.saturating_sub(status.indexed_index),
        },
        "raw_annotations": status.raw_annotations,
        "failed": status.failed,
    })
}
