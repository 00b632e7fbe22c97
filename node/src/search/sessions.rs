//! The replica side of a search coordinated by another node: its three phases on this node's
//! replica, with the hits and candidates kept between phases in a bounded session store
//! (dropped once older than the request timeout), so only summaries, rankings and the final
//! clips cross the network.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rushes_cluster::ShardId;
use rushes_protocol::peer::{PeerReply, PeerRequest};
use rushes_protocol::{ApiError, ErrorCode};

use super::{ShardCandidates, ShardHits};
use crate::metrics::Metrics;
use crate::node::ClusterView;
use crate::query::plan::Plan;

/// Other nodes' searches kept between their phases on this node.
const REMOTE_SEARCHES_MAX: usize = 64;

/// A peer's search on this node between its phases.
struct Session {
    plan: Arc<Plan>,
    hits: Option<ShardHits>,
    candidates: Option<Arc<ShardCandidates>>,
    at: Instant,
}

/// Sessions by (query id, shard).
pub struct RemoteSearches {
    sessions: Mutex<HashMap<(u64, ShardId), Session>>,
    /// A session older than this has lost its coordinator (or a hedge): dropped.
    expire_after: Duration,
}

impl RemoteSearches {
    pub fn new(expire_after: Duration) -> RemoteSearches {
        RemoteSearches { sessions: Mutex::new(HashMap::new()), expire_after }
    }

    /// Keeps a peer's search between its phases; bounded in count and age.
    fn store(&self, query: u64, shard: ShardId, session: Session) -> Result<(), ApiError> {
        let mut sessions = self.sessions.lock();
        // Sessions outlive their coordinator's deadline only when it gave up (or lost a hedge):
        // drop those on every insert, so memory follows the searches really in flight.
        sessions.retain(|_, s| s.at.elapsed() < self.expire_after);
        if sessions.len() >= REMOTE_SEARCHES_MAX {
            return Err(ApiError::overloaded("too many searches from other nodes in flight; retry shortly"));
        }
        sessions.insert((query, shard), session);
        Ok(())
    }

    fn take(&self, query: u64, shard: ShardId) -> Option<Session> {
        self.sessions.lock().remove(&(query, shard))
    }
}

/// A peer's search phase on this node's replica (blocking work on the blocking pool).
pub async fn handle_phase(view: &Arc<ClusterView>, sessions: &Arc<RemoteSearches>, metrics: &Metrics, request: PeerRequest) -> PeerReply {
    let phase = match &request {
        PeerRequest::SearchHits { .. } => "hits",
        PeerRequest::SearchCandidates { .. } => "candidates",
        // Nothing to finish: the coordinator only drops the session (and does not wait).
        PeerRequest::SearchFinish { keep, .. } if keep.is_empty() => "release",
        _ => "evidence",
    };
    let arrived = Instant::now();
    let reply = match phase_reply(view, sessions, request).await {
        Ok(reply) => reply,
        Err(e) => PeerReply::Error(e),
    };
    metrics.peer_search_phase_seconds.with_label_values(&[phase]).observe(arrived.elapsed().as_secs_f64());
    reply
}

async fn phase_reply(view: &Arc<ClusterView>, sessions: &Arc<RemoteSearches>, request: PeerRequest) -> Result<PeerReply, ApiError> {
    if let PeerRequest::SearchHits { shard, strong: true, .. } = &request {
        if let Some(replica) = view.local_shard(*shard) {
            if !replica.wait_read_index(view.request_timeout()).await? {
                return Err(ApiError::new(ErrorCode::Timeout, "read index not reached in time").with_retry_after(1));
            }
        }
    }
    let (view, sessions) = (view.clone(), sessions.clone());
    tokio::task::spawn_blocking(move || phase_blocking(&view, &sessions, request))
        .await
        .map_err(|e| ApiError::internal(format!("search phase failed: {e}")))?
}

fn phase_blocking(view: &ClusterView, sessions: &RemoteSearches, request: PeerRequest) -> Result<PeerReply, ApiError> {
    let internal = |e: super::SearchError| ApiError::internal(e.to_string());
    let missing = |shard: ShardId| ApiError::unavailable(format!("shard {shard} is not on node {}", view.node_id()));
    let expired = || ApiError::unavailable("the search expired on this replica; retry the search");
    match request {
        PeerRequest::SearchHits { query, shard, plan, .. } => {
            let replica = view.local_shard(shard).ok_or_else(|| missing(shard))?;
            let plan = Arc::new(
                Plan::from_wire(&plan).map_err(|e| ApiError::field("plan", format!("unreadable plan from the coordinator: {e}")))?,
            );
            let hits = super::shard_hits(&replica, &plan).map_err(internal)?;
            let summary = super::summarize(&hits, &plan);
            sessions.store(query, shard, Session { plan, hits: Some(hits), candidates: None, at: Instant::now() })?;
            Ok(PeerReply::Summary(summary))
        }
        PeerRequest::SearchCandidates { query, shard, stats } => {
            let replica = view.local_shard(shard).ok_or_else(|| missing(shard))?;
            let mut session = sessions.take(query, shard).ok_or_else(expired)?;
            let hits = session.hits.take().ok_or_else(expired)?;
            let candidates = super::shard_candidates(&replica, &session.plan, hits, &stats).map_err(internal)?;
            let ranked = candidates.ranked_assets();
            session.candidates = Some(Arc::new(candidates));
            sessions.store(query, shard, session)?;
            Ok(PeerReply::Ranked(ranked))
        }
        PeerRequest::SearchFinish { query, shard, keep } => {
            let replica = view.local_shard(shard).ok_or_else(|| missing(shard))?;
            let session = sessions.take(query, shard).ok_or_else(expired)?;
            let candidates = session.candidates.ok_or_else(expired)?;
            let assets = if keep.is_empty() {
                Vec::new()
            } else {
                super::finish_assets(&replica, &session.plan, &candidates, &keep.into_iter().collect()).map_err(internal)?
            };
            Ok(PeerReply::Json(serde_json::to_vec(&assets).map_err(|e| ApiError::internal(e.to_string()))?))
        }
        other => Err(ApiError::internal(format!("not a search phase: {}", other.kind()))),
    }
}
