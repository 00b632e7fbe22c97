//! Reads of one asset's data (record and counts, a raw annotation, fused buckets) from this
//! node's replica of its shard, or forwarded to a node that holds one.

use std::sync::Arc;

use rushes_protocol::peer::{AssetRead, PeerReply, PeerRequest};
use rushes_protocol::{ApiError, AssetRecord, BucketAnnotationView, BucketView, BucketsReply, ErrorCode};
use serde_json::json;

use crate::node::ClusterView;
use crate::peer::hedge;

/// Most buckets one `/buckets` request returns (one hour at the default bucket size).
pub const MAX_BUCKETS_PER_REQUEST: u64 = 3600;

pub fn asset_view(view: &ClusterView, asset_id: &str) -> Result<serde_json::Value, ApiError> {
    let store = &view.shard_of(asset_id)?.store;
    let internal = |e: crate::storage::store::StoreError| ApiError::internal(e.to_string());
    let record = store.asset_record(asset_id).map_err(internal)?;
    let counts = store.track_counts(asset_id).map_err(internal)?;
    if record.is_none() && counts.is_empty() {
        return Err(ApiError::new(ErrorCode::NotFound, format!("asset {asset_id:?} has no record and no annotations")));
    }
    let record = AssetRecord::from(record.unwrap_or_default());
    let mut body = serde_json::to_value(&record).map_err(|e| ApiError::internal(e.to_string()))?;
    body["asset_id"] = json!(asset_id);
    body["annotations"] = json!({ "total": counts.values().sum::<u64>(), "by_track": counts });
    Ok(body)
}

pub fn raw_annotation(view: &ClusterView, asset_id: &str, annotation_id: &str) -> Result<Vec<u8>, ApiError> {
    view.shard_of(asset_id)?
        .store
        .raw_annotation(asset_id, annotation_id)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no annotation {annotation_id:?} on asset {asset_id:?}")))
}

pub fn buckets(view: &ClusterView, asset_id: &str, from_ms: Option<u64>, to_ms: Option<u64>) -> Result<BucketsReply, ApiError> {
    let bucket_ms = view.config.fusion.bucket_ms;
    let from_ms = from_ms.unwrap_or(0);
    let to_ms = to_ms.unwrap_or(from_ms.saturating_add(MAX_BUCKETS_PER_REQUEST * bucket_ms));
    if to_ms <= from_ms {
        return Err(ApiError::field("to_ms", format!("to_ms ({to_ms}) must be greater than from_ms ({from_ms})")));
    }
    let (first, end) = (from_ms / bucket_ms, to_ms.div_ceil(bucket_ms));
    if end - first > MAX_BUCKETS_PER_REQUEST {
        return Err(ApiError::field(
            "to_ms",
            format!("the range covers {} buckets; ask for at most {MAX_BUCKETS_PER_REQUEST} per request (page with from_ms)", end - first),
        ));
    }
    let buckets = view.shard_of(asset_id)?.store.bucket_range(asset_id, first, end).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(BucketsReply {
        asset_id: asset_id.to_string(),
        bucket_ms,
        buckets: buckets
            .into_iter()
            .map(|(second, bucket)| BucketView {
                second,
                annotations: bucket
                    .entries
                    .into_iter()
                    .map(|e| BucketAnnotationView {
                        annotation_id: e.annotation_id,
                        track: e.track,
                        model: e.model,
                        label: e.label,
                        text: e.text,
                        language: e.language,
                        confidence: e.confidence,
                        coverage: e.coverage,
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// Reads one asset's data on this node's replica, or forwards the read to a node that
/// holds the asset's shard. Replies JSON, or the raw stored annotation. A `strong` read first
/// waits, on the replica that answers, for a read index confirmed by the shard's quorum
/// (linearizable: it sees every write acknowledged before it began).
pub async fn read_asset(view: &Arc<ClusterView>, read: AssetRead, strong: bool) -> Result<PeerReply, ApiError> {
    let shard = view.shard_map().shard_for_asset(read.asset_id());
    if view.local_shard(shard).is_some() {
        let reply = if strong { handle_strong_asset_read(view, read).await } else { handle_asset_read(view, read).await };
        return match reply {
            PeerReply::Error(e) => Err(e),
            reply => Ok(reply),
        };
    }
    let Some(net) = &view.net else {
        return Err(ApiError::unavailable(format!("shard {shard} has no replica on this node and the node has no peers")));
    };
    let deadline = tokio::time::Instant::now() + view.request_timeout();
    let replicas = view.shard_map().replicas(shard).to_vec();
    let request = if strong { PeerRequest::StrongAssetRead(read) } else { PeerRequest::AssetRead(read) };
    hedge::hedged_call(net, &replicas, request, deadline).await.map(|(_, reply)| reply)
}

/// A linearizable read on this node's replica: waits for a quorum-confirmed read index and
/// for the replica to have applied and indexed through it, then reads.
pub async fn handle_strong_asset_read(view: &Arc<ClusterView>, read: AssetRead) -> PeerReply {
    let shard = view.shard_map().shard_for_asset(read.asset_id());
    let Some(replica) = view.local_shard(shard) else {
        return PeerReply::Error(ApiError::unavailable(format!("shard {shard} has no replica on this node")));
    };
    match replica.wait_read_index(view.request_timeout()).await {
        Ok(true) => handle_asset_read(view, read).await,
        Ok(false) => PeerReply::Error(crate::coordinator::client::read_index_timeout(shard)),
        Err(e) => PeerReply::Error(e.into()),
    }
}

/// A read on this node's replica (blocking work on the blocking pool).
pub async fn handle_asset_read(view: &Arc<ClusterView>, read: AssetRead) -> PeerReply {
    let view = view.clone();
    let work = move || -> Result<PeerReply, ApiError> {
        match read {
            AssetRead::View { asset_id } => json_reply(&asset_view(&view, &asset_id)?),
            AssetRead::RawAnnotation { asset_id, annotation_id } => Ok(PeerReply::Raw(raw_annotation(&view, &asset_id, &annotation_id)?)),
            AssetRead::Buckets { asset_id, from_ms, to_ms } => json_reply(&buckets(&view, &asset_id, from_ms, to_ms)?),
        }
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => PeerReply::Error(e),
        Err(e) => PeerReply::Error(ApiError::internal(format!("read failed: {e}"))),
    }
}

fn json_reply<T: serde::Serialize>(value: &T) -> Result<PeerReply, ApiError> {
    serde_json::to_vec(value).map(PeerReply::Json).map_err(|e| ApiError::internal(e.to_string()))
}
