//! Serves what other nodes send this one. Nothing from a peer is trusted beyond what its
//! connection proved (its node id, bound to its certificate when TLS is on):
//!
//! - a Raft message must come from the node that sent it (`from`), be addressed to this node,
//!   and be for a shard both nodes are replicas of;
//! - a forwarded write is decoded and validated exactly as an HTTP batch would be, and every
//!   item must belong to the shard it is proposed on, before anything is proposed;
//! - a snapshot chunk is served only to a replica of that shard;
//! - every request names a shard of the map; at most [`PEER_REQUESTS_IN_FLIGHT_MAX`] requests
//!   run at once (more are answered with a retryable overload at once).
//!
//! A refused message changes nothing; it is counted (`rushes_peer_refused_total{reason}`) and
//! logged.

use std::sync::{Arc, Weak};

use raft::eraftpb::MessageType;
use rushes_cluster::membership::META_GROUP;
use rushes_cluster::transport::{Inbound, WireError};
use rushes_cluster::{NodeId, ShardId};
use rushes_protocol::model::ShardCommand;
use rushes_protocol::peer::{PeerReply, PeerRequest, StoredRaw};
use rushes_protocol::validate::validate_command;
use rushes_protocol::{ApiError, ErrorCode};

use super::{decode_raft, decode_request, encode_reply};
use crate::coordinator::{export, reads};
use crate::ingest::router;
use crate::node::Node;
use crate::query::planner::shard_has_dialogue_word;
use crate::search::{sessions, vocabulary};
use crate::shard::snapshot;

/// Peer requests handled at once on this node; more are refused as overload (retryable).
pub const PEER_REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// Most labels one `Completions` request may ask spellings of (suggest's warm-up asks 256).
const COMPLETIONS_LABELS_MAX: usize = 1024;
/// Most words and matching labels one `Completions` request is answered with.
const COMPLETIONS_LIMIT_MAX: usize = 100;

/// Serves peers' Raft messages and requests until the transport stops. Holds the node weakly
/// so it does not keep a stopped node alive.
pub async fn serve_peers(node: Weak<Node>, mut inbound: tokio::sync::mpsc::Receiver<Inbound>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(PEER_REQUESTS_IN_FLIGHT_MAX));
    while let Some(message) = inbound.recv().await {
        let Some(node) = node.upgrade() else { return };
        let Some(net) = node.net().cloned() else { return };
        match message {
            Inbound::Raft { from, shard, message } => {
                if net.is_isolated_from(from) {
                    continue;
                }
                let Some(message) = decode_raft(&message) else {
                    refuse(&node, "undecodable_raft", from, format!("unreadable raft message for shard {shard}"));
                    continue;
                };
                if let Err(reason) = check_raft_message(&node, from, shard, &message) {
                    refuse(&node, "raft_sender", from, reason);
                    continue;
                }
                if shard == META_GROUP {
                    if let Some(meta) = node.meta() {
                        let _ = meta.deliver_raft(message);
                    }
                    continue;
                }
                let Some(replica) = node.view.local_shard(shard) else { continue };
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    snapshot::receive(net.clone(), from, replica, message);
                } else {
                    // A full mailbox drops the message; Raft retransmits.
                    let _ = replica.deliver_raft(message);
                }
            }
            Inbound::Request { from, body, responder } => {
                if net.is_isolated_from(from) {
                    // Dropping the responder answers "no response": the caller fails fast.
                    drop(responder);
                    continue;
                }
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    node.metrics.peer_refused.with_label_values(&["overloaded"]).inc();
                    let _ = responder.respond(Err(WireError::new(WireError::OVERLOADED, "too many peer requests in flight; retry")));
                    continue;
                };
                tokio::spawn(async move {
                    let _permit = permit;
                    let reply = match decode_request(&body) {
                        Err(e) => {
                            refuse(&node, "undecodable_request", from, e.message.clone());
                            Err(e)
                        }
                        Ok(request) => encode_reply(&answer(&node, from, request).await),
                    };
                    let _ = responder.respond(reply);
                });
            }
        }
    }
}

/// Counts and logs a refused peer message.
fn refuse(node: &Node, reason: &'static str, from: NodeId, detail: String) {
    node.metrics.peer_refused.with_label_values(&[reason]).inc();
    tracing::warn!(from, reason, %detail, "refused a message from a peer");
}

/// A Raft message is accepted only from the node it claims to come from, for this node, on a
/// shard both are replicas of.
fn check_raft_message(node: &Node, from: NodeId, shard: ShardId, message: &raft::eraftpb::Message) -> Result<(), String> {
    let replicas = replicas_of(node, shard)?;
    if !sender_consistent(from, message, &replicas) {
        return Err(format!("node {from} sent a raft message claiming to be from node {}", message.from));
    }
    if message.to != node.node_id() {
        return Err(format!("raft message from node {from} is addressed to node {}, not this one", message.to));
    }
    if !replicas.contains(&from) {
        return Err(format!("node {from} is not a replica of shard {shard} (replicas {replicas:?})"));
    }
    if shard != META_GROUP && !replicas.contains(&node.node_id()) {
        return Err(format!("this node is not a replica of shard {shard}"));
    }
    Ok(())
}

/// Whether a Raft message's `from` agrees with the authenticated sender. The one exception is
/// raft-rs's own: a follower asked to transfer leadership forwards `MsgTransferLeader` to the
/// leader with `from` set to the transferee, which must be another replica of the group (the
/// fault suite found moves whose transfer request reached a follower being refused here).
fn sender_consistent(from: NodeId, message: &raft::eraftpb::Message, replicas: &[NodeId]) -> bool {
    message.from == from || (message.get_msg_type() == raft::eraftpb::MessageType::MsgTransferLeader && replicas.contains(&message.from))
}

/// Every node that holds (or is receiving) a replica of `group`: who may speak Raft for it.
fn replicas_of(node: &Node, group: ShardId) -> Result<Vec<NodeId>, String> {
    if group == META_GROUP {
        // Any member may be (or become) a metadata replica, and a node that just joined may
        // hear from the group before its own copy of the map says it is in it.
        return Ok(match node.view.cluster_map() {
            Some(map) => map.members.keys().copied().chain(map.meta.holders()).collect(),
            // Before the map exists: the bootstrap members from config.
            None => node.config.cluster.nodes.iter().map(|n| n.id).collect(),
        });
    }
    let map = node.view.shard_map();
    if group >= map.shard_count() {
        return Err(format!("shard {group} does not exist (the cluster has {})", map.shard_count()));
    }
    Ok(map.holders(group).to_vec())
}

/// A forwarded write, checked as an HTTP batch would be before it is proposed.
fn check_forwarded_write(node: &Node, shard: ShardId, command: &[u8]) -> Result<(), ApiError> {
    replicas_of(node, shard).map_err(|m| ApiError::field("shard", m))?;
    let decoded = ShardCommand::decode(command)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("the forwarded command does not decode: {e}")))?;
    validate_command(&decoded, &node.ingest_limits)?;
    let map = node.view.shard_map();
    let misplaced = decoded.assets().iter().position(|asset_id| map.shard_for_asset(asset_id) != shard);
    if let Some(item) = misplaced {
        return Err(ApiError::field("asset_id", format!("the asset does not belong to shard {shard}")).with_item(item));
    }
    Ok(())
}

/// One peer request's answer.
async fn answer(node: &Arc<Node>, from: NodeId, request: PeerRequest) -> PeerReply {
    let view = &node.view;
    let forbidden = |detail: String| {
        refuse(node, "request_scope", from, detail.clone());
        PeerReply::Error(ApiError::new(ErrorCode::Forbidden, detail))
    };
    let request_shard = match &request {
        PeerRequest::Propose { shard, .. }
        | PeerRequest::SearchHits { shard, .. }
        | PeerRequest::SearchCandidates { shard, .. }
        | PeerRequest::SearchFinish { shard, .. }
        | PeerRequest::SnapshotChunk { shard, .. }
        | PeerRequest::DialogueWord { shard, .. }
        | PeerRequest::Completions { shard, .. }
        | PeerRequest::CheckConflicts { shard, .. }
        | PeerRequest::ExportPage { shard, .. }
        | PeerRequest::SupersededAssets { shard }
        | PeerRequest::LogCommands { shard, .. }
        | PeerRequest::GroupObserve { group: shard, .. }
        | PeerRequest::GroupChange { group: shard, .. } => Some(*shard),
        _ => None,
    };
    if let Some(shard) = request_shard {
        if let Err(detail) = replicas_of(node, shard) {
            return forbidden(detail);
        }
    }
    if let PeerRequest::GroupChange { group, .. } = &request {
        // Only the metadata leader drives configuration changes.
        let meta_leader = node.meta().and_then(|m| if m.is_leader() { Some(node.node_id()) } else { m.leader() });
        if meta_leader != Some(from) {
            return forbidden(format!(
                "node {from} asked for a configuration change of {} but does not lead the metadata group",
                rushes_cluster::membership::group_name(*group)
            ));
        }
    }
    match request {
        request @ (PeerRequest::ClusterMap
        | PeerRequest::MetaPropose { .. }
        | PeerRequest::GroupObserve { .. }
        | PeerRequest::GroupChange { .. }) => crate::meta::orchestrator::answer_peer(node, from, request).await,
        PeerRequest::Propose { shard, command } => {
            if let Err(e) = check_forwarded_write(node, shard, &command) {
                refuse(node, "invalid_write", from, e.message.clone());
                return PeerReply::Error(e);
            }
            router::handle_forwarded_propose(view, shard, command).await
        }
        PeerRequest::Status => PeerReply::Status(crate::status::local_replicas(view)),
        PeerRequest::NodeStatus => PeerReply::NodeStatus { replicas: crate::status::local_replicas(view), actors: node.actors() },
        request @ (PeerRequest::SearchHits { .. } | PeerRequest::SearchCandidates { .. } | PeerRequest::SearchFinish { .. }) => {
            sessions::handle_phase(view, &node.remote_searches, &node.metrics, request).await
        }
        PeerRequest::Vocabulary => node.planner.local_vocabulary_reply(),
        PeerRequest::DialogueWord { word, shard } => match view.local_shard(shard) {
            Some(replica) => {
                let known = tokio::task::spawn_blocking(move || shard_has_dialogue_word(&replica, &word)).await.unwrap_or(false);
                PeerReply::DialogueWord { known }
            }
            None => PeerReply::Error(ApiError::unavailable(format!("shard {shard} is not on node {}", node.node_id()))),
        },
        PeerRequest::Completions { shard, prefix, whole, limit, labels } => {
            let max_bytes = node.config.limits.max_query_bytes;
            if prefix.len() > max_bytes || whole.len() > max_bytes {
                return PeerReply::Error(ApiError::field("prefix", format!("typed text longer than {max_bytes} bytes")));
            }
            if labels.len() > COMPLETIONS_LABELS_MAX || labels.iter().any(|l| l.len() > 256) {
                return PeerReply::Error(ApiError::field(
                    "labels",
                    format!("at most {COMPLETIONS_LABELS_MAX} labels of at most 256 bytes"),
                ));
            }
            let Some(replica) = view.local_shard(shard) else {
                return PeerReply::Error(ApiError::unavailable(format!("shard {shard} is not on node {}", node.node_id())));
            };
            let limit = (limit as usize).min(COMPLETIONS_LIMIT_MAX);
            let cache = node.planner.spellings.clone();
            let work = move || vocabulary::shard_completions(&replica, &cache, &prefix, &whole, limit, &labels);
            match tokio::task::spawn_blocking(work).await {
                Ok(Ok((words, labels))) => PeerReply::Completions {
                    words: words.into_iter().map(|w| (w.term, w.spelling, w.frequency)).collect(),
                    labels: labels.into_iter().map(|l| (l.label, l.tracks, l.spellings.into_iter().collect())).collect(),
                },
                Ok(Err(e)) => PeerReply::Error(e),
                Err(e) => PeerReply::Error(ApiError::internal(format!("completions failed: {e}"))),
            }
        }
        PeerRequest::AssetRead(read) => reads::handle_asset_read(view, read).await,
        PeerRequest::StrongAssetRead(read) => reads::handle_strong_asset_read(view, read).await,
        PeerRequest::CheckConflicts { shard, probes } => {
            if probes.len() > node.ingest_limits.max_batch_items {
                return PeerReply::Error(ApiError::field(
                    "probes",
                    format!("{} probes; at most {}", probes.len(), node.ingest_limits.max_batch_items),
                ));
            }
            let Some(replica) = view.local_shard(shard) else {
                return PeerReply::Error(ApiError::unavailable(format!("shard {shard} is not on node {}", node.node_id())));
            };
            let work = move || -> Result<Vec<StoredRaw>, ApiError> {
                let mut stored = Vec::new();
                for (position, probe) in probes.iter().enumerate() {
                    let raw = replica
                        .store
                        .raw_annotation(&probe.asset_id, &probe.annotation_id)
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    if let Some(raw) = raw.filter(|raw| xxhash_rust::xxh3::xxh3_64(raw) != probe.raw_hash) {
                        stored.push(StoredRaw { position: position as u32, raw });
                    }
                }
                Ok(stored)
            };
            match tokio::task::spawn_blocking(work).await {
                Ok(Ok(stored)) => PeerReply::StoredAnnotations { stored },
                Ok(Err(e)) => PeerReply::Error(e),
                Err(e) => PeerReply::Error(ApiError::internal(format!("conflict check failed: {e}"))),
            }
        }
        PeerRequest::ExportPage { shard, filter, cursor, max_bytes, min_applied } => {
            let Some(replica) = view.local_shard(shard) else {
                return PeerReply::Error(ApiError::unavailable(format!("shard {shard} is not on node {}", node.node_id())));
            };
            let applied = replica.progress.applied.load(std::sync::atomic::Ordering::Acquire);
            if applied < min_applied {
                return PeerReply::Error(ApiError::unavailable(format!(
                    "node {}'s replica of shard {shard} has applied {applied}, behind the {min_applied} asked for",
                    node.node_id()
                )));
            }
            let max_bytes = max_bytes.clamp(1, export::EXPORT_PAGE_BYTES) as usize;
            let work = move || export::export_page(&replica.store, &filter, cursor.as_ref(), max_bytes);
            match tokio::task::spawn_blocking(work).await {
                Ok(Ok((lines, next))) => PeerReply::ExportPage { lines: lines.into_iter().map(serde_bytes::ByteBuf::from).collect(), next },
                Ok(Err(e)) => PeerReply::Error(e),
                Err(e) => PeerReply::Error(ApiError::internal(format!("export page failed: {e}"))),
            }
        }
        PeerRequest::SupersededAssets { shard } => {
            let Some(replica) = view.local_shard(shard) else {
                return PeerReply::Error(ApiError::unavailable(format!("shard {shard} is not on node {}", node.node_id())));
            };
            match tokio::task::spawn_blocking(move || replica.store.assets_with_superseded_versions()).await {
                Ok(Ok(assets)) => PeerReply::Assets(assets),
                Ok(Err(e)) => PeerReply::Error(ApiError::internal(e.to_string())),
                Err(e) => PeerReply::Error(ApiError::internal(format!("listing superseded versions failed: {e}"))),
            }
        }
        PeerRequest::LogCommands { shard, after, through, max_bytes } => match view.local_shard(shard) {
            Some(replica) => {
                let max_bytes = max_bytes.clamp(1, export::EXPORT_PAGE_BYTES) as usize;
                match tokio::task::spawn_blocking(move || export::log_commands(&replica, after, through, max_bytes)).await {
                    Ok(Ok((commands, covered_through))) => PeerReply::LogCommands {
                        commands: commands.into_iter().map(|(index, bytes)| (index, serde_bytes::ByteBuf::from(bytes))).collect(),
                        covered_through,
                    },
                    Ok(Err(e)) => PeerReply::Error(e),
                    Err(e) => PeerReply::Error(ApiError::internal(format!("reading the log failed: {e}"))),
                }
            }
            None => PeerReply::Error(ApiError::unavailable(format!("shard {shard} is not on node {}", node.node_id()))),
        },
        PeerRequest::SnapshotChunk { shard, after, min_applied } => {
            // A raw store goes only to another replica of its shard.
            if !view.shard_map().holders(shard).contains(&from) {
                return forbidden(format!("node {from} asked for shard {shard}'s raw store but is not one of its replicas"));
            }
            match view.local_shard(shard) {
                Some(replica) => {
                    let chunk_bytes = usize::try_from(node.config.raft.snapshot_chunk_bytes).unwrap_or(usize::MAX);
                    snapshot::serve_chunk(replica, after, min_applied, chunk_bytes).await
                }
                None => PeerReply::Error(ApiError::unavailable(format!("this node holds no replica of shard {shard}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Message, MessageType};

    fn message(kind: MessageType, from: NodeId) -> Message {
        let mut message = Message::default();
        message.set_msg_type(kind);
        message.from = from;
        message
    }

    #[test]
    fn a_sender_speaks_only_for_itself_except_a_forwarded_leader_transfer() {
        let replicas = [1, 2, 3];
        assert!(sender_consistent(2, &message(MessageType::MsgAppend, 2), &replicas));
        assert!(!sender_consistent(2, &message(MessageType::MsgAppend, 3), &replicas), "a forged sender");
        assert!(!sender_consistent(2, &message(MessageType::MsgRequestVote, 3), &replicas), "a forged vote");
        // raft-rs: a follower forwards the transfer with `from` = the transferee.
        assert!(sender_consistent(2, &message(MessageType::MsgTransferLeader, 3), &replicas));
        assert!(!sender_consistent(2, &message(MessageType::MsgTransferLeader, 9), &replicas), "the transferee must be a replica");
    }
}
