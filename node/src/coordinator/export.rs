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
        let record = if filter.series.is_some() || (filter.records && after.is_none()) {
            store.asset_record(&asset_id).map_err(internal)?
        } else {
            None
        };
        if let Some(series) = &filter.series {
            if !record.as_ref().and_then(|r| r.series.as_ref()).is_some_and(|s| s.to_lowercase() == series.to_lowercase()) {
                continue;
            }
        }
        if filter.records && after.is_none() {
            if let Some(record) = &record {
                let line = asset_record_line(&asset_id, record);
                bytes += line.len();
                lines.push(line);
                // Resuming inside this asset (an empty id sorts before every annotation id)
                // does not send the record again.
                after = Some(String::new());
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

/// A backup's line for an asset record: `{"asset_record": {"asset_id", "title", ...}}`, with
/// only the fields the record has (the body `PUT /v1/assets/{id}` takes, plus the id).
pub fn asset_record_line(asset_id: &str, record: &rushes_protocol::model::StoredAsset) -> Vec<u8> {
    let mut fields = serde_json::Map::new();
    fields.insert("asset_id".into(), asset_id.into());
    if let Ok(serde_json::Value::Object(values)) = serde_json::to_value(record) {
        fields.extend(values.into_iter().filter(|(_, v)| !v.is_null()));
    }
    serde_json::json!({ "asset_record": fields }).to_string().into_bytes()
}

/// The next page of `shard`'s export, from this node's replica or another node's.
pub async fn shard_page(
    view: &Arc<ClusterView>,
    shard: ShardId,
    filter: &ExportFilter,
    cursor: Option<ExportCursor>,
    min_applied: u64,
) -> Result<(Vec<Vec<u8>>, Option<ExportCursor>), ApiError> {
    let local = match view.local_shard(shard) {
        // A local replica a little behind the index asked for catches up in milliseconds;
        // waiting for it beats asking another node (and a single node has no other).
        Some(replica) => wait_for_applied(replica, min_applied, view.request_timeout().min(std::time::Duration::from_secs(1))).await,
        None => None,
    };
    if let Some(replica) = local {
        let filter = filter.clone();
        return tokio::task::spawn_blocking(move || export_page(&replica.store, &filter, cursor.as_ref(), EXPORT_PAGE_BYTES as usize))
            .await
            .map_err(|e| ApiError::internal(format!("export task failed: {e}")))?;
    }
    let Some(net) = &view.net else {
        return Err(ApiError::unavailable(format!("shard {shard} has no replica on this node and the node has no peers")));
    };
    let deadline = tokio::time::Instant::now() + view.request_timeout();
    let replicas = view.shard_map().replicas(shard).to_vec();
    let request = PeerRequest::ExportPage { shard, filter: filter.clone(), cursor, max_bytes: EXPORT_PAGE_BYTES, min_applied };
    match hedge::hedged_call(net, &replicas, request, deadline).await?.1 {
        PeerReply::ExportPage { lines, next } => Ok((lines.into_iter().map(|line| line.into_vec()).collect(), next)),
        PeerReply::Error(e) => Err(e),
        other => Err(ApiError::internal(format!("unexpected reply to an export page: {}", other.kind()))),
    }
}

/// `replica` once it has applied `index`, or `None` if it has not within `timeout`.
async fn wait_for_applied(replica: Arc<crate::shard::Shard>, index: u64, timeout: std::time::Duration) -> Option<Arc<crate::shard::Shard>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if replica.progress.applied.load(std::sync::atomic::Ordering::Acquire) >= index {
            return Some(replica);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
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
    min_applied: u64,
}

/// The export as a stream of NDJSON chunks (one per page). A failure midway ends the stream
/// with a last line `{"error": ...}` (the status line was sent already), so a reader never
/// mistakes a cut export for a whole one.
///
/// `only_shard` limits it to one shard, and `min_applied` makes every page come from a replica
/// that has applied at least that index (a backup).
pub fn export_stream(
    view: Arc<ClusterView>,
    filter: ExportFilter,
    only_shard: Option<ShardId>,
    min_applied: u64,
) -> impl futures_util::Stream<Item = Result<actix_web::web::Bytes, actix_web::Error>> {
    let shards: Vec<ShardId> = match (&filter.asset_id, only_shard) {
        (_, Some(shard)) => vec![shard],
        (Some(asset), None) => vec![view.shard_map().shard_for_asset(asset)],
        (None, None) => (0..view.shard_map().shard_count()).collect(),
    };
    let state = ExportState { view, filter, shards, position: 0, cursor: None, failed: false, min_applied };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.failed || state.position >= state.shards.len() {
                return None;
            }
            let shard = state.shards[state.position];
            match shard_page(&state.view, shard, &state.filter, state.cursor.take(), state.min_applied).await {
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

/// The committed commands of a replica's log in `(after, through]` (capped at its commit
/// index), until about `max_bytes`, and the last index covered. Entries compacted away are an
/// error: the caller must start again from a newer index.
pub fn log_commands(
    replica: &crate::shard::Shard,
    after: u64,
    through: u64,
    max_bytes: usize,
) -> Result<(Vec<(u64, Vec<u8>)>, u64), ApiError> {
    use raft::Storage as _;
    use rushes_cluster::log_store::RaftLogStore as _;
    let commit = replica.log.hard_state().commit;
    let through = through.min(commit);
    if through <= after {
        return Err(ApiError::unavailable(format!("shard {}'s replica has committed {commit}, not past {after} yet", replica.id)));
    }
    let first = replica.log.first_log_index();
    if after + 1 < first {
        return Err(ApiError::new(
            rushes_protocol::ErrorCode::Conflict,
            format!("shard {}'s log starts at {first}: entries after {after} were compacted; start again from a newer index", replica.id),
        ));
    }
    let entries = replica
        .log
        .entries(after + 1, through + 1, Some(max_bytes as u64), raft::GetEntriesContext::empty(false))
        .map_err(|e| ApiError::internal(format!("reading shard {}'s log: {e}", replica.id)))?;
    let covered_through = entries.last().map_or(after, |e| e.index);
    let commands = entries
        .into_iter()
        .filter(|e| e.get_entry_type() == raft::eraftpb::EntryType::EntryNormal && !e.data.is_empty())
        .map(|e| (e.index, e.data.to_vec()))
        .collect();
    Ok((commands, covered_through))
}

/// A committed command as a backup stores it: JSON a restore replays over HTTP.
pub fn command_json(index: u64, command: &rushes_protocol::model::ShardCommand) -> serde_json::Value {
    use rushes_protocol::model::ShardCommand;
    let body = match command {
        ShardCommand::Ingest { items } => {
            serde_json::json!({ "ingest": items.iter().map(|i| String::from_utf8_lossy(&i.raw_json).into_owned()).collect::<Vec<_>>() })
        }
        ShardCommand::UpsertAsset { asset_id, record } => {
            let line: serde_json::Value = serde_json::from_slice(&asset_record_line(asset_id, record)).unwrap_or_default();
            serde_json::json!({ "upsert_asset": line["asset_record"] })
        }
        ShardCommand::DeleteAsset { asset_id } => serde_json::json!({ "delete_asset": asset_id }),
        ShardCommand::DeleteAnnotation { asset_id, annotation_id } => {
            serde_json::json!({ "delete_annotation": { "asset_id": asset_id, "annotation_id": annotation_id } })
        }
        ShardCommand::PurgeSuperseded { asset_ids } => serde_json::json!({ "purge_superseded": asset_ids }),
    };
    serde_json::json!({ "index": index, "command": body })
}

/// The next part of `shard`'s log tail, from this node's replica if it has committed through
/// `through`, else from another replica.
pub async fn shard_log(view: &Arc<ClusterView>, shard: ShardId, after: u64, through: u64) -> Result<(Vec<(u64, Vec<u8>)>, u64), ApiError> {
    use rushes_cluster::log_store::RaftLogStore as _;
    if let Some(replica) = view.local_shard(shard).filter(|r| r.log.hard_state().commit >= through) {
        return tokio::task::spawn_blocking(move || log_commands(&replica, after, through, EXPORT_PAGE_BYTES as usize))
            .await
            .map_err(|e| ApiError::internal(format!("log read failed: {e}")))?;
    }
    let Some(net) = &view.net else {
        return Err(ApiError::unavailable(format!("shard {shard}'s replica has not committed through {through}")));
    };
    let deadline = tokio::time::Instant::now() + view.request_timeout();
    let replicas = view.shard_map().replicas(shard).to_vec();
    let request = PeerRequest::LogCommands { shard, after, through, max_bytes: EXPORT_PAGE_BYTES };
    match hedge::hedged_call(net, &replicas, request, deadline).await?.1 {
        PeerReply::LogCommands { commands, covered_through } if covered_through > after && covered_through <= through => {
            Ok((commands.into_iter().map(|(index, bytes)| (index, bytes.into_vec())).collect(), covered_through))
        }
        PeerReply::LogCommands { covered_through, .. } => {
            Err(ApiError::internal(format!("a replica answered log entries through {covered_through} for ({after}, {through}]")))
        }
        PeerReply::Error(e) => Err(e),
        other => Err(ApiError::internal(format!("unexpected reply to a log read: {}", other.kind()))),
    }
}
