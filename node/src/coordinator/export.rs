//! `GET /v1/export`: raw annotations as NDJSON, byte for byte as received, shard after shard,
//! a page at a time (from this node's replica of a shard, or another node's), so an export of
//! a whole season holds one page in memory, not the season.

use std::sync::Arc;

use rushes_cluster::ShardId;
use rushes_protocol::peer::{ExportCursor, ExportFilter, PeerReply, PeerRequest};
use rushes_protocol::ApiError;

use crate::node::ClusterView;
use crate::peer::hedge;
use crate::storage::store::ShardStore;

/// Raw bytes one page holds, about (at least one annotation).
pub const EXPORT_PAGE_BYTES: u32 = 4 * 1024 * 1024;

/// One page of a shard's export from its store: the raw annotations matching `filter` after
/// `cursor`, until about `max_bytes`, and the cursor to continue from (`None` when the shard
/// is done). Assets in id order, annotations in id order within an asset.
pub fn export_page(
    store: &ShardStore,
    filter: &ExportFilter,
    cursor: Option<&ExportCursor>,
    max_bytes: usize,
) -> Result<(Vec<Vec<u8>>, Option<ExportCursor>), ApiError> {
    let internal = |e: crate::storage::store::StoreError| ApiError::internal(e.to_string());
    let assets: Vec<String> = match &filter.asset_id {
        Some(asset) => vec![asset.clone()],
        None => store.export_assets(),
    };
    let (from_ms, to_ms) = (filter.from_ms.unwrap_or(0), filter.to_ms.unwrap_or(u64::MAX));
    let in_window = move |a: &rushes_protocol::model::StoredAnnotation| a.end_ms > from_ms && a.start_ms < to_ms;
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0usize;
    for asset_id in assets {
        let mut after: Option<String> = None;
        if let Some(cursor) = cursor {
            match asset_id.cmp(&cursor.asset_id) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => after = Some(cursor.annotation_id.clone()),
                std::cmp::Ordering::Greater => {}
            }
        }
        if let Some(series) = &filter.series {
            let record = store.asset_record(&asset_id).map_err(internal)?;
            if !record.and_then(|r| r.series).is_some_and(|s| s.to_lowercase() == series.to_lowercase()) {
                continue;
            }
        }
        loop {
            let budget = max_bytes.saturating_sub(bytes).max(1);
            let (page, more) = store.raw_annotations_page(&asset_id, after.as_deref(), budget, &in_window).map_err(internal)?;
            let last = page.last().map(|(id, _)| id.clone());
            for (_, raw) in page {
                bytes += raw.len();
                lines.push(raw);
            }
            if let Some(last) = &last {
                after = Some(last.clone());
            }
            if bytes >= max_bytes {
                // More may follow in this asset or the next: continue after what was sent.
                return Ok((lines, after.map(|annotation_id| ExportCursor { asset_id: asset_id.clone(), annotation_id })));
            }
            if !more {
                break;
            }
        }
    }
    Ok((lines, None))
}

/// The next page of `shard`'s export, from this node's replica or another node's.
pub async fn shard_page(
    view: &Arc<ClusterView>,
    shard: ShardId,
    filter: &ExportFilter,
    cursor: Option<ExportCursor>,
) -> Result<(Vec<Vec<u8>>, Option<ExportCursor>), ApiError> {
    if let Some(replica) = view.local_shard(shard).cloned() {
        let filter = filter.clone();
        return tokio::task::spawn_blocking(move || export_page(&replica.store, &filter, cursor.as_ref(), EXPORT_PAGE_BYTES as usize))
            .await
            .map_err(|e| ApiError::internal(format!("export task failed: {e}")))?;
    }
    let Some(net) = &view.net else {
        return Err(ApiError::unavailable(format!("shard {shard} has no replica on this node and the node has no peers")));
    };
    let deadline = tokio::time::Instant::now() + view.request_timeout();
    let replicas = view.shard_map.replicas(shard).to_vec();
    let request = PeerRequest::ExportPage { shard, filter: filter.clone(), cursor, max_bytes: EXPORT_PAGE_BYTES };
    match hedge::hedged_call(net, &replicas, request, deadline).await?.1 {
        PeerReply::ExportPage { lines, next } => Ok((lines.into_iter().map(|line| line.into_vec()).collect(), next)),
        PeerReply::Error(e) => Err(e),
        other => Err(ApiError::internal(format!("unexpected reply to an export page: {}", other.kind()))),
    }
}

/// Where an export stream is.
struct ExportState {
    view: Arc<ClusterView>,
    filter: ExportFilter,
    shards: Vec<ShardId>,
    position: usize,
    cursor: Option<ExportCursor>,
    failed: bool,
}

/// The export as a stream of NDJSON chunks (one per page). A failure midway ends the stream
/// with a last line `{"error": ...}` (the status line was sent already), so a reader never
/// mistakes a cut export for a whole one.
pub fn export_stream(
    view: Arc<ClusterView>,
    filter: ExportFilter,
) -> impl futures_util::Stream<Item = Result<actix_web::web::Bytes, actix_web::Error>> {
    let shards: Vec<ShardId> = match &filter.asset_id {
        Some(asset) => vec![view.shard_map.shard_for_asset(asset)],
        None => (0..view.shard_map.shard_count()).collect(),
    };
    let state = ExportState { view, filter, shards, position: 0, cursor: None, failed: false };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.failed || state.position >= state.shards.len() {
                return None;
            }
            let shard = state.shards[state.position];
            match shard_page(&state.view, shard, &state.filter, state.cursor.take()).await {
                Ok((lines, next)) => {
                    match next {
                        Some(cursor) => state.cursor = Some(cursor),
                        None => state.position += 1,
                    }
                    if lines.is_empty() {
                        continue;
                    }
                    let mut chunk = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
                    for line in lines {
                        chunk.extend_from_slice(&line);
                        chunk.push(b'\n');
                    }
                    return Some((Ok(actix_web::web::Bytes::from(chunk)), state));
                }
                Err(error) => {
                    state.failed = true;
                    let line = serde_json::json!({ "error": error.to_body()["error"].clone(), "shard": shard });
                    return Some((Ok(actix_web::web::Bytes::from(format!("{line}\n"))), state));
                }
            }
        }
    })
}
