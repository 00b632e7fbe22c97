//! The coordinator's handle on one shard for one search: [`ShardSearch`]. A shard held here is
//! searched on this node's replica ([`LocalShardSearch`], the phases on the blocking pool);
//! another is searched on another node's ([`RemoteShardSearch`]: phase one hedged across the
//! shard's replicas, phases two and three on the replica that ran phase one, which keeps the
//! hits and candidates between phases). The coordinator writes each phase once, against the
//! trait, and its tests run it against fakes.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rushes_cluster::{NodeId, ShardId};
use rushes_protocol::peer::{GlobalStats, LeafSummary, PeerReply, PeerRequest, RankedAssets, WirePlan};
use rushes_protocol::{ApiError, AssetHits, ErrorCode};

use crate::peer::hedge;
use crate::peer::ClusterNet;
use crate::query::plan::Plan;
use crate::search::{self, ShardCandidates, ShardHits};
use crate::shard::Shard;

/// A phase's answer, later.
pub type PhaseFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// One shard's part of one search, phase by phase. A phase is called only after the previous
/// one succeeded on this shard.
pub trait ShardSearch: Send {
    fn shard(&self) -> ShardId;
    /// `local` or `remote`: the label of the phase timings.
    fn replica(&self) -> &'static str;
    /// Phase one: every leaf's hits (kept by the shard), summarized for global statistics.
    fn hits(&mut self) -> PhaseFuture<'_, Vec<LeafSummary>>;
    /// Phase two: fused scores with the global statistics, clips; the shard's best assets.
    fn candidates(&mut self, stats: Arc<GlobalStats>) -> PhaseFuture<'_, RankedAssets>;
    /// Phase three: clips and evidence of `keep`. With nothing to keep the shard only drops
    /// what it kept for this search, and the answer is empty at once.
    fn finish(&mut self, keep: HashSet<String>) -> PhaseFuture<'_, Vec<AssetHits>>;
}

/// Holds one of the node's search slots for as long as any part of the search runs, blocking
/// work that outlives a timed-out request included.
pub type SearchPermit = Arc<tokio::sync::OwnedSemaphorePermit>;

/// A shard searched on this node's replica.
pub struct LocalShardSearch {
    pub replica: Arc<Shard>,
    pub plan: Arc<Plan>,
    pub permit: SearchPermit,
    /// Strong read: wait until this replica has indexed the leader's commit first.
    pub strong: bool,
    pub deadline: tokio::time::Instant,
    hits: Option<ShardHits>,
    candidates: Option<Arc<ShardCandidates>>,
}

impl LocalShardSearch {
    pub fn new(replica: Arc<Shard>, plan: Arc<Plan>, permit: SearchPermit, strong: bool, deadline: tokio::time::Instant) -> Self {
        LocalShardSearch { replica, plan, permit, strong, deadline, hits: None, candidates: None }
    }
}

/// Runs `work` on the blocking pool; the permit travels with it.
async fn blocking<T: Send + 'static>(
    permit: &SearchPermit,
    work: impl FnOnce() -> Result<T, search::SearchError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = permit.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| ApiError::internal(format!("a search phase panicked: {e}")))?
    .map_err(|e| ApiError::internal(e.to_string()))
}

impl ShardSearch for LocalShardSearch {
    fn shard(&self) -> ShardId {
        self.replica.id
    }

    fn replica(&self) -> &'static str {
        "local"
    }

    fn hits(&mut self) -> PhaseFuture<'_, Vec<LeafSummary>> {
        Box::pin(async move {
            if self.strong {
                let remaining = self.deadline.saturating_duration_since(tokio::time::Instant::now());
                if !self.replica.wait_read_index(remaining).await? {
                    return Err(read_index_timeout(self.replica.id));
                }
            }
            let (replica, plan) = (self.replica.clone(), self.plan.clone());
            let (hits, summary) = blocking(&self.permit, move || {
                let hits = search::shard_hits(&replica, &plan)?;
                let summary = search::summarize(&hits, &plan);
                Ok((hits, summary))
            })
            .await?;
            self.hits = Some(hits);
            Ok(summary)
        })
    }

    fn candidates(&mut self, stats: Arc<GlobalStats>) -> PhaseFuture<'_, RankedAssets> {
        Box::pin(async move {
            let hits = self.hits.take().ok_or_else(|| ApiError::internal("phase two before phase one"))?;
            let (replica, plan) = (self.replica.clone(), self.plan.clone());
            let candidates = blocking(&self.permit, move || search::shard_candidates(&replica, &plan, hits, &stats)).await?;
            let ranked = candidates.ranked_assets();
            self.candidates = Some(Arc::new(candidates));
            Ok(ranked)
        })
    }

    fn finish(&mut self, keep: HashSet<String>) -> PhaseFuture<'_, Vec<AssetHits>> {
        Box::pin(async move {
            let candidates = self.candidates.take().ok_or_else(|| ApiError::internal("phase three before phase two"))?;
            if keep.is_empty() {
                return Ok(Vec::new());
            }
            let (replica, plan) = (self.replica.clone(), self.plan.clone());
            blocking(&self.permit, move || search::finish_assets(&replica, &plan, &candidates, &keep)).await
        })
    }
}

/// A shard searched on another node's replica.
pub struct RemoteShardSearch {
    pub shard: ShardId,
    pub replicas: Vec<NodeId>,
    pub net: Arc<ClusterNet>,
    /// Names this search's kept state on the replica.
    pub query: u64,
    pub plan: Arc<WirePlan>,
    pub strong: bool,
    pub deadline: tokio::time::Instant,
    /// The replica that ran phase one (and keeps its state).
    node: Option<NodeId>,
}

impl RemoteShardSearch {
    pub fn new(
        shard: ShardId,
        replicas: Vec<NodeId>,
        net: Arc<ClusterNet>,
        query: u64,
        plan: Arc<WirePlan>,
        strong: bool,
        deadline: tokio::time::Instant,
    ) -> Self {
        RemoteShardSearch { shard, replicas, net, query, plan, strong, deadline, node: None }
    }

    fn node(&self) -> Result<NodeId, ApiError> {
        self.node.ok_or_else(|| ApiError::internal("a later phase before phase one"))
    }
}

fn unexpected(node: NodeId, reply: &PeerReply) -> ApiError {
    ApiError::internal(format!("node {node} answered a search phase with {}", reply.kind()))
}

impl ShardSearch for RemoteShardSearch {
    fn shard(&self) -> ShardId {
        self.shard
    }

    fn replica(&self) -> &'static str {
        "remote"
    }

    fn hits(&mut self) -> PhaseFuture<'_, Vec<LeafSummary>> {
        Box::pin(async move {
            let request = PeerRequest::SearchHits { query: self.query, shard: self.shard, plan: (*self.plan).clone(), strong: self.strong };
            match hedge::hedged_call(&self.net, &self.replicas, request, self.deadline).await? {
                (node, PeerReply::Summary(summary)) => {
                    self.node = Some(node);
                    Ok(summary)
                }
                (node, other) => Err(unexpected(node, &other)),
            }
        })
    }

    fn candidates(&mut self, stats: Arc<GlobalStats>) -> PhaseFuture<'_, RankedAssets> {
        Box::pin(async move {
            let node = self.node()?;
            let request = PeerRequest::SearchCandidates { query: self.query, shard: self.shard, stats: (*stats).clone() };
            match hedge::call(&self.net, node, &request, self.deadline).await? {
                PeerReply::Ranked(ranked) => Ok(ranked),
                other => Err(unexpected(node, &other)),
            }
        })
    }

    fn finish(&mut self, keep: HashSet<String>) -> PhaseFuture<'_, Vec<AssetHits>> {
        Box::pin(async move {
            let node = self.node()?;
            let request = PeerRequest::SearchFinish { query: self.query, shard: self.shard, keep: keep.iter().cloned().collect() };
            if keep.is_empty() {
                // Only releases the replica's state: the shard's part of the answer is already
                // complete, so nobody waits for it (the replica also expires it on its own).
                let (net, deadline, shard) = (self.net.clone(), self.deadline, self.shard);
                tokio::spawn(async move {
                    if let Err(e) = hedge::call(&net, node, &request, deadline).await {
                        tracing::debug!(node, shard, error = %e.message, "releasing a remote search failed (it expires)");
                    }
                });
                return Ok(Vec::new());
            }
            match hedge::call(&self.net, node, &request, self.deadline).await? {
                PeerReply::Json(bytes) => serde_json::from_slice::<Vec<AssetHits>>(&bytes)
                    .map_err(|e| ApiError::internal(format!("node {node} sent unreadable results: {e}"))),
                other => Err(unexpected(node, &other)),
            }
        })
    }
}

/// A strong read whose replica could not confirm and index the latest writes in time.
pub fn read_index_timeout(shard: ShardId) -> ApiError {
    ApiError::new(ErrorCode::Timeout, format!("shard {shard} could not confirm and index the latest writes in time; retry"))
        .with_retry_after(1)
}

/// How long a phase may still take.
pub fn remaining(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}
