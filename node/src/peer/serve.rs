//! Serves what other nodes send this one: Raft messages go to the local replica's Raft actor
//! (a snapshot message first has its data fetched), requests to their handlers, each answered
//! on the connection it came on.

use std::sync::{Arc, Weak};

use raft::eraftpb::MessageType;
use rushes_cluster::transport::Inbound;
use rushes_protocol::peer::{PeerReply, PeerRequest};
use rushes_protocol::ApiError;

use super::{decode_raft, decode_request, encode_reply};
use crate::coordinator::reads;
use crate::ingest::router;
use crate::node::Node;
use crate::query::planner::shard_has_dialogue_word;
use crate::search::sessions;
use crate::shard::snapshot;

/// Serves peers' Raft messages and requests until the transport stops. Holds the node weakly
/// so it does not keep a stopped node alive.
pub async fn serve_peers(node: Weak<Node>, mut inbound: tokio::sync::mpsc::Receiver<Inbound>) {
    while let Some(message) = inbound.recv().await {
        let Some(node) = node.upgrade() else { return };
        let Some(net) = node.net().cloned() else { return };
        match message {
            Inbound::Raft { from, shard, message } => {
                if net.is_isolated_from(from) {
                    continue;
                }
                match (node.view.local_shard(shard), decode_raft(&message)) {
                    (Some(replica), Some(message)) if message.get_msg_type() == MessageType::MsgSnapshot => {
                        snapshot::receive(net.clone(), from, replica.clone(), message);
                    }
                    (Some(replica), Some(message)) => {
                        // A full mailbox drops the message; Raft retransmits.
                        let _ = replica.deliver_raft(message);
                    }
                    (None, _) => tracing::debug!(from, shard, "raft message for a shard this node does not hold"),
                    (_, None) => tracing::warn!(from, shard, "unreadable raft message dropped"),
                }
            }
            Inbound::Request { from, body, responder } => {
                if net.is_isolated_from(from) {
                    // Dropping the responder answers "no response": the caller fails fast.
                    drop(responder);
                    continue;
                }
                tokio::spawn(async move {
                    let reply = match decode_request(&body) {
                        Err(e) => Err(e),
                        Ok(request) => encode_reply(&answer(&node, request).await),
                    };
                    let _ = responder.respond(reply);
                });
            }
        }
    }
}

/// One peer request's answer.
async fn answer(node: &Arc<Node>, request: PeerRequest) -> PeerReply {
    let view = &node.view;
    match request {
        PeerRequest::Propose { shard, command } => router::handle_forwarded_propose(view, shard, command).await,
        PeerRequest::Status => PeerReply::Status(crate::status::local_replicas(view)),
        request @ (PeerRequest::SearchHits { .. } | PeerRequest::SearchCandidates { .. } | PeerRequest::SearchFinish { .. }) => {
            sessions::handle_phase(view, &node.remote_searches, &node.metrics, request).await
        }
        PeerRequest::NodeStatus => PeerReply::NodeStatus { replicas: crate::status::local_replicas(view), actors: node.actors() },
        PeerRequest::Vocabulary => node.planner.local_vocabulary_reply(),
        PeerRequest::DialogueWord { word, shard } => match view.local_shard(shard).cloned() {
            Some(replica) => {
                let known = tokio::task::spawn_blocking(move || shard_has_dialogue_word(&replica, &word)).await.unwrap_or(false);
                PeerReply::DialogueWord { known }
            }
            None => PeerReply::Error(ApiError::unavailable(format!("shard {shard} is not on node {}", node.node_id()))),
        },
        PeerRequest::AssetRead(read) => reads::handle_asset_read(view, read).await,
        PeerRequest::SnapshotChunk { shard, after, min_applied } => match view.local_shard(shard).cloned() {
            Some(replica) => {
                let chunk_bytes = usize::try_from(node.config.raft.snapshot_chunk_bytes).unwrap_or(usize::MAX);
                snapshot::serve_chunk(replica, after, min_applied, chunk_bytes).await
            }
            None => PeerReply::Error(ApiError::unavailable(format!("this node holds no replica of shard {shard}"))),
        },
    }
}
