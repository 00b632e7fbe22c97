//! Calls to other nodes' replicas with a deadline on every call: one node ([`call`]), or the
//! first of a shard's replicas to answer ([`hedged_call`]).

use std::collections::VecDeque;
use std::time::Duration;

use rushes_cluster::NodeId;
use rushes_protocol::peer::{PeerReply, PeerRequest};
use rushes_protocol::{ApiError, ErrorCode};

use crate::peer::ClusterNet;

/// A call that has not answered after this is also sent to the next replica.
pub const HEDGE_AFTER: Duration = Duration::from_millis(150);
/// A replica that failed fast (not connected) is asked again after this pause, for at most
/// [`REPLICA_RETRY_WINDOW`]: long enough to ride out a reconnect, short enough that a shard
/// whose replicas are all down is reported failed quickly.
const REPLICA_RETRY_PAUSE: Duration = Duration::from_millis(250);
const REPLICA_RETRY_WINDOW: Duration = Duration::from_secs(3);

/// A call to one node, bounded by `deadline`; the node's error reply is an error.
pub async fn call(net: &ClusterNet, node: NodeId, request: &PeerRequest, deadline: tokio::time::Instant) -> Result<PeerReply, ApiError> {
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    match net.call(node, request, timeout).await? {
        PeerReply::Error(e) => Err(e),
        reply => Ok(reply),
    }
}

/// Sends `request` to the first of `replicas`, and to the next one too when no answer came
/// within [`HEDGE_AFTER`] or the previous one failed; the first success wins. A replica that
/// failed fast (not connected: maybe restarting) is asked again after a pause while time
/// remains, so a request outlives a replica's reconnect instead of failing its shard. This
/// node itself is never asked (callers use their local replica directly).
pub async fn hedged_call(
    net: &ClusterNet,
    replicas: &[NodeId],
    request: PeerRequest,
    deadline: tokio::time::Instant,
) -> Result<(NodeId, PeerReply), ApiError> {
    // Every other replica, in a per-request order that spreads load. A replica cut off by the
    // fault-injection switch is not skipped here: its calls fail, as they would across a real
    // partition, so the switch never changes which replicas routing chooses.
    let mut order: Vec<NodeId> = replicas.iter().copied().filter(|n| *n != net.node_id).collect();
    if order.is_empty() {
        return Err(ApiError::unavailable("no reachable replica"));
    }
    let rotate = rand::random::<usize>() % order.len();
    order.rotate_left(rotate);
    let started = tokio::time::Instant::now();
    // (when to start, replica, whether it may start early because nothing else is pending):
    // first asks may, retries wait out their pause.
    let mut waiting: VecDeque<(tokio::time::Instant, NodeId, bool)> =
        order.iter().enumerate().map(|(i, node)| (started + HEDGE_AFTER * i as u32, *node, true)).collect();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut last_error = ApiError::unavailable("no replica answered");
    loop {
        let now = tokio::time::Instant::now();
        // Start every call that is due; the first one at once.
        while waiting.front().is_some_and(|(at, _, early)| *at <= now || (*early && pending.is_empty())) {
            let Some((_, node, _)) = waiting.pop_front() else { break };
            let request = &request;
            pending.push(async move { (node, net.call(node, request, deadline.saturating_duration_since(now)).await) });
        }
        let next_start = waiting.front().map_or(deadline, |(at, _, _)| (*at).min(deadline));
        tokio::select! {
            answered = futures_util::StreamExt::next(&mut pending), if !pending.is_empty() => match answered {
                Some((node, Ok(PeerReply::Error(e)))) | Some((node, Err(e))) => {
                    tracing::debug!(node, error = %e.message, request = request.kind(), "replica failed a request");
                    let retry_at = tokio::time::Instant::now() + REPLICA_RETRY_PAUSE;
                    if e.code == ErrorCode::Unavailable && retry_at < deadline.min(started + REPLICA_RETRY_WINDOW) {
                        waiting.push_back((retry_at, node, false));
                    }
                    last_error = e;
                    if pending.is_empty() && waiting.is_empty() {
                        return Err(last_error);
                    }
                }
                Some((node, Ok(reply))) => return Ok((node, reply)),
                None => {}
            },
            _ = tokio::time::sleep_until(next_start), if !waiting.is_empty() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ApiError::new(ErrorCode::Timeout, format!("no replica answered in time (last error: {})", last_error.message)).with_retry_after(1));
            }
        }
    }
}
