//! The HTTP API (../shared/API.md). Handlers parse and validate off the async threads when the
//! work is heavy, call the node, and map every error to the documented JSON body.

pub mod auth;
mod openapi;
mod page;
pub mod ready;

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use rushes_protocol::validate::{parse_batch, BodyFormat};
use rushes_protocol::{ApiError, AssetRecord, ErrorCode, SearchRequest};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use rushes_protocol::peer::{AssetRead, PeerReply};

use self::auth::Scope;
use crate::ingest::captions;
use crate::node::Node;

/// An [`ApiError`] as an HTTP response.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.message)
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.0.retry_after_s {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(self.0.to_body())
    }
}

type HttpResult = Result<HttpResponse, HttpError>;

fn node_of(request: &HttpRequest) -> Result<Arc<Node>, HttpError> {
    request
        .app_data::<web::Data<Arc<Node>>>()
        .map(|data| data.get_ref().clone())
        .ok_or_else(|| HttpError(ApiError::internal("node missing from app data")))
}

/// The node, once the request's API key is found to allow `scope` (401 without a valid key,
/// 403 without the scope; open when no key is configured).
fn authorized(request: &HttpRequest, scope: Scope) -> Result<Arc<Node>, HttpError> {
    let node = node_of(request)?;
    let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let what = format!("{} {}", request.method(), request.match_pattern().unwrap_or_else(|| request.path().to_string()));
    node.api_keys.check(header, scope, &what)?;
    Ok(node)
}

/// The body's announced length, if any.
fn content_length(request: &HttpRequest) -> Option<usize> {
    request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
}

/// Reads the whole body, refusing more than `limit` bytes with a JSON 413, and a body that
/// has not arrived within `limits.body_read_timeout_ms` (a slowly dripped body holds a
/// connection and its buffer) with a retryable `timeout`.
async fn read_body(request: &HttpRequest, payload: web::Payload, limit: usize) -> Result<web::Bytes, HttpError> {
    let too_large = |size: String| {
        HttpError(ApiError::new(ErrorCode::TooLarge, format!("the body is {size} bytes; the limit is {limit}: split the batch")))
    };
    if let Some(length) = content_length(request) {
        if length > limit {
            return Err(too_large(length.to_string()));
        }
    }
    let timeout_ms = node_of(request)?.config.limits.body_read_timeout_ms;
    let read = tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), payload.to_bytes_limited(limit));
    match read.await {
        Err(_) => Err(HttpError(
            ApiError::new(ErrorCode::Timeout, format!("the body did not arrive within {timeout_ms} ms (limits.body_read_timeout_ms)"))
                .with_retry_after(1),
        )),
        Ok(Ok(Ok(bytes))) => Ok(bytes),
        Ok(Ok(Err(e))) => Err(HttpError(ApiError::new(ErrorCode::InvalidJson, format!("the body could not be read: {e}")))),
        Ok(Err(_)) => Err(too_large(format!("more than {limit}"))),
    }
}

/// Parses a JSON body into `T`, naming the offending field path on type errors.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        HttpError(ApiError::new(ErrorCode::InvalidJson, format!("the body is not valid UTF-8 (offset {})", e.valid_up_to())))
    })?;
    // Structs also deserialize from arrays (positional fields), which would bypass the
    // unknown-field checks: bodies must be objects.
    if text.trim_start().starts_with('[') {
        return Err(HttpError(ApiError::field("body", "the body must be a JSON object, not an array")));
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            HttpError(ApiError::new(
                ErrorCode::InvalidJson,
                format!("invalid JSON at line {} column {}: {inner}", inner.line(), inner.column()),
            ))
        } else {
            let field = if path == "." { "body".to_string() } else { path };
            HttpError(ApiError::field(field.clone(), format!("{field}: {inner}")))
        }
    })?;
    deserializer.end().map_err(|e| HttpError(ApiError::new(ErrorCode::InvalidJson, format!("trailing data after the JSON value: {e}"))))?;
    Ok(value)
}

fn body_format(request: &HttpRequest) -> Result<BodyFormat, HttpError> {
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" | "" => Ok(BodyFormat::JsonArray),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/jsonlines" => Ok(BodyFormat::Ndjson),
        other => Err(HttpError(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Type {other:?} is not accepted: send application/json (an array) or application/x-ndjson (one annotation a line)"
            ),
        ))),
    }
}

async fn post_annotations(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Write)?;
    let format = body_format(&request)?;
    // Counted from before the body is read until the batch is stored: a bound on the memory
    // all ingests in flight hold (announced length, or the body limit when none is announced).
    let limit = node.config.limits.max_body_bytes;
    let _in_flight = node.ingest_bytes.reserve(content_length(&request).unwrap_or(limit).min(limit))?;
    let body = read_body(&request, payload, limit).await?;
    let limits = node.ingest_limits.clone();
    // Parsing a large batch is CPU work: keep it off the async threads.
    let items = web::block(move || parse_batch(&body, format, &limits))
        .await
        .map_err(|e| HttpError(ApiError::internal(format!("parser task failed: {e}"))))??;
    let reply = node.ingest(items).await?;
    Ok(HttpResponse::Ok().json(reply))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SubtitleParams {
    /// The file's language (`en`, `fr`, `pt-BR`, ...): its model is `subtitles-<language>`.
    #[param(example = "fr")]
    language: String,
    /// A higher version replaces earlier imports of this language in search (default "1").
    #[param(example = "2")]
    model_version: Option<String>,
}

/// `POST /v1/assets/{asset_id}/subtitles?language=fr`: the raw `.srt`/`.vtt` file as the body.
async fn post_subtitles(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let started = std::time::Instant::now();
    let node = authorized(&request, Scope::Write)?;
    let asset_id = asset_id_from(&request, &node)?;
    let params: SubtitleParams = query_params(&request)?;
    captions::validate_language(&params.language).map_err(|m| HttpError(ApiError::field("language", m)))?;
    let version = params.model_version.unwrap_or_else(|| captions::DEFAULT_SUBTITLE_VERSION.to_string());
    captions::validate_version(&version).map_err(|m| HttpError(ApiError::field("model_version", m)))?;
    let limit = crate::ingest::subtitles::MAX_SUBTITLE_BYTES;
    let _in_flight = node.ingest_bytes.reserve(content_length(&request).unwrap_or(limit).min(limit))?;
    let body = read_body(&request, payload, limit).await?;
    let limits = node.ingest_limits.clone();
    let (language, asset) = (params.language.clone(), asset_id.clone());
    // Decoding, parsing and validating a large file is CPU work: keep it off the async threads.
    let (parsed, batches) = web::block(move || -> Result<_, ApiError> {
        let parsed = crate::ingest::subtitles::parse_subtitles(&body, &mut |_, _| {})
            .map_err(|e| ApiError::field("body", format!("subtitle file: {e}")))?;
        let lines = captions::cue_annotations(&parsed, &asset, &language, &version);
        let mut batches = Vec::new();
        for chunk in lines.chunks(limits.max_batch_items.max(1)) {
            batches.push(parse_batch(&chunk.concat(), BodyFormat::Ndjson, &limits)?);
        }
        Ok((parsed, (batches, version)))
    })
    .await
    .map_err(|e| HttpError(ApiError::internal(format!("subtitle parser task failed: {e}"))))??;
    let (batches, version) = batches;
    let (mut imported, mut created, mut duplicates) = (0, 0, 0);
    // Files with more cues than one batch allows go in several batches; each is atomic and a
    // retry of the whole file is a no-op for the batches already stored.
    for items in batches {
        let reply = node.ingest(items).await?;
        imported += reply.accepted;
        created += reply.created;
        duplicates += reply.duplicates;
    }
    Ok(HttpResponse::Ok().json(captions::SubtitleImportReply {
        asset_id,
        model: format!("subtitles-{}", params.language.to_ascii_lowercase()),
        language: params.language,
        model_version: version,
        format: captions::format_name(parsed.format),
        encoding: format!("{:?}", parsed.encoding),
        imported,
        created,
        duplicates,
        warnings: parsed.warnings,
        took_ms: started.elapsed().as_millis() as u64,
    }))
}

fn asset_id_from(request: &HttpRequest, node: &Node) -> Result<String, HttpError> {
    let asset_id = request.match_info().get("asset_id").unwrap_or("").to_string();
    rushes_protocol::validate::validate_asset_id(&asset_id, node.ingest_limits.max_asset_id_bytes)
        .map_err(|m| HttpError(ApiError::field("asset_id", format!("asset_id {m}"))))?;
    Ok(asset_id)
}

async fn put_asset(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Write)?;
    let asset_id = asset_id_from(&request, &node)?;
    let body = read_body(&request, payload, 64 * 1024).await?;
    let record: AssetRecord = parse_json(&body)?;
    node.upsert_asset(&asset_id, record.clone()).await?;
    let mut reply = serde_json::to_value(&record).map_err(|e| HttpError(ApiError::internal(e.to_string())))?;
    reply["asset_id"] = serde_json::json!(asset_id);
    Ok(HttpResponse::Ok().json(reply))
}

async fn get_asset(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Read)?;
    let asset_id = asset_id_from(&request, &node)?;
    let strong = read_consistency(&request)?;
    // Decodes every annotation of the asset: blocking work (or a replica's, on another node).
    read_reply(node.read_asset(AssetRead::View { asset_id }, strong).await?)
}

async fn get_raw_annotation(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Read)?;
    let asset_id = asset_id_from(&request, &node)?;
    let annotation_id = request.match_info().get("annotation_id").unwrap_or("").to_string();
    let strong = read_consistency(&request)?;
    read_reply(node.read_asset(AssetRead::RawAnnotation { asset_id, annotation_id }, strong).await?)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadQuery {
    consistency: Option<rushes_protocol::Consistency>,
}

/// `?consistency=strong` on an asset GET: a linearizable read. Other query parameters are
/// ignored, as they always were on these routes.
fn read_consistency(request: &HttpRequest) -> Result<bool, HttpError> {
    let query: ReadQuery = serde_urlencoded::from_str(request.query_string()).map_err(|e| {
        HttpError(ApiError::field("consistency", format!("{e}; use consistency=strong or consistency=eventual (the default)")))
    })?;
    Ok(query.consistency == Some(rushes_protocol::Consistency::Strong))
}

/// `DELETE /v1/assets/{asset_id}`: the record, every annotation of every model version, their
/// vectors, buckets and index documents, on every replica. Idempotent.
async fn delete_asset(request: HttpRequest) -> HttpResult {
    let started = std::time::Instant::now();
    let node = authorized(&request, Scope::Write)?;
    let asset_id = asset_id_from(&request, &node)?;
    let outcome = node.delete_asset(&asset_id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "asset_id": asset_id,
        "deleted_annotations": deleted_count(&outcome),
        "took_ms": started.elapsed().as_millis() as u64,
    })))
}

/// `DELETE /v1/assets/{asset_id}/annotations/{annotation_id}`: one annotation; its seconds are
/// fused again without it. Idempotent.
async fn delete_annotation(request: HttpRequest) -> HttpResult {
    let started = std::time::Instant::now();
    let node = authorized(&request, Scope::Write)?;
    let asset_id = asset_id_from(&request, &node)?;
    let annotation_id = request.match_info().get("annotation_id").unwrap_or("").to_string();
    rushes_protocol::validate::validate_annotation_id(&annotation_id, node.ingest_limits.max_id_bytes)?;
    let outcome = node.delete_annotation(&asset_id, &annotation_id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "asset_id": asset_id,
        "annotation_id": annotation_id,
        "deleted_annotations": deleted_count(&outcome),
        "took_ms": started.elapsed().as_millis() as u64,
    })))
}

fn deleted_count(outcome: &rushes_protocol::peer::ApplyOutcome) -> usize {
    match outcome {
        rushes_protocol::peer::ApplyOutcome::Deleted { annotations } => *annotations,
        _ => 0,
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    asset_id: Option<String>,
    series: Option<String>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    /// One shard only (a backup reads shard by shard).
    shard: Option<u32>,
    /// Asset records too (a backup).
    records: Option<bool>,
    /// Every page from a replica that applied at least this index (a backup).
    min_applied: Option<u64>,
}

/// `GET /v1/export`: raw annotations as NDJSON, byte for byte as received, streamed a page at a
/// time; filters `asset_id`, `series`, and `from_ms`/`to_ms` (annotations overlapping the
/// window). The output is a valid `POST /v1/annotations` body.
async fn get_export(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let params: ExportQuery = query_params(&request)?;
    if let Some(asset_id) = &params.asset_id {
        rushes_protocol::validate::validate_asset_id(asset_id, node.ingest_limits.max_asset_id_bytes)
            .map_err(|m| HttpError(ApiError::field("asset_id", format!("asset_id {m}"))))?;
    }
    if let (Some(from), Some(to)) = (params.from_ms, params.to_ms) {
        if to <= from {
            return Err(HttpError(ApiError::field("to_ms", format!("to_ms ({to}) must be greater than from_ms ({from})"))));
        }
    }
    if params.series.as_ref().is_some_and(|s| s.len() > 128) {
        return Err(HttpError(ApiError::field("series", "series is at most 128 bytes")));
    }
    let shard_count = node.view.shard_map().shard_count();
    if let Some(shard) = params.shard.filter(|&s| s >= shard_count) {
        return Err(HttpError(ApiError::field("shard", format!("shard {shard} does not exist: the cluster has shards 0..{shard_count}"))));
    }
    let filter = rushes_protocol::peer::ExportFilter {
        asset_id: params.asset_id,
        series: params.series,
        from_ms: params.from_ms,
        to_ms: params.to_ms,
        records: params.records.unwrap_or(false),
    };
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").streaming(crate::coordinator::export::export_stream(
        node.view.clone(),
        filter,
        params.shard,
        params.min_applied.unwrap_or(0),
    )))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    after: u64,
    through: u64,
}

/// `GET /v1/admin/shards/{shard}/log?after=I&through=J`: the shard's committed commands in
/// `(I, J]` as JSON (a page; continue after `covered_through`), for a backup's tail.
async fn get_shard_log(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let params: LogQuery = query_params(&request)?;
    let shard_count = node.view.shard_map().shard_count();
    let shard: u32 = request
        .match_info()
        .get("shard")
        .and_then(|s| s.parse().ok())
        .filter(|&s| s < shard_count)
        .ok_or_else(|| HttpError(ApiError::field("shard", format!("shard must be a number in 0..{shard_count}"))))?;
    if params.through <= params.after {
        return Err(HttpError(ApiError::field(
            "through",
            format!("through ({}) must be greater than after ({})", params.through, params.after),
        )));
    }
    let (commands, covered_through) = crate::coordinator::export::shard_log(&node.view, shard, params.after, params.through).await?;
    let mut decoded = Vec::with_capacity(commands.len());
    for (index, bytes) in commands {
        match rushes_protocol::model::ShardCommand::decode(&bytes) {
            Ok(command) => decoded.push(crate::coordinator::export::command_json(index, &command)),
            // Refused on every replica when applied: it changed nothing, so a replay skips it.
            Err(e) => tracing::debug!(shard, index, error = %e, "a backup skips a log entry that never applied"),
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "shard": shard, "commands": decoded, "covered_through": covered_through })))
}

/// `POST /v1/admin/purge-superseded`: removes, on every shard, the annotations of model
/// versions that a higher version replaced (they are kept otherwise, in the raw store only).
async fn post_purge_superseded(request: HttpRequest) -> HttpResult {
    let started = std::time::Instant::now();
    let node = authorized(&request, Scope::Admin)?;
    let (assets, deleted) = node.purge_superseded().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "assets": assets,
        "deleted_annotations": deleted,
        "took_ms": started.elapsed().as_millis() as u64,
    })))
}

/// `GET /v1/admin/cluster/map`: the replicated cluster map this node follows.
async fn get_cluster_map(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let map = crate::meta::orchestrator::current_map(&node)?;
    Ok(HttpResponse::Ok().json(&*map))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": 4, "raft_addr": "10.0.0.4:7400", "http_addr": "10.0.0.4:7300"}))]
struct AddNodeRequest {
    id: u64,
    raft_addr: String,
    http_addr: String,
}

/// `POST /v1/admin/cluster/nodes {"id", "raft_addr", "http_addr"}`: a new member.
async fn post_cluster_node(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let body: AddNodeRequest = small_json(&request, payload).await?;
    let member = rushes_cluster::membership::Member { id: body.id, raft_addr: body.raft_addr, http_addr: body.http_addr, draining: false };
    let map = crate::meta::orchestrator::add_node(&node, member).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "epoch": map.epoch, "members": map.members.keys().collect::<Vec<_>>() })))
}

fn node_id_segment(request: &HttpRequest) -> Result<u64, HttpError> {
    let raw = request.match_info().get("id").unwrap_or_default();
    raw.parse::<u64>().map_err(|_| HttpError(ApiError::field("id", format!("{raw:?} is not a node id (a positive integer)"))))
}

/// `POST /v1/admin/cluster/nodes/{id}/drain`: no new replica goes to the node, and moves take
/// every replica it holds elsewhere.
async fn post_drain_node(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let id = node_id_segment(&request)?;
    let (map, queued) = crate::meta::orchestrator::drain_node(&node, id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "epoch": map.epoch, "queued_moves": queued })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"with": 5}))]
struct ReplaceRequest {
    with: u64,
}

/// `POST /v1/admin/cluster/nodes/{id}/replace {"with": NEW}`.
async fn post_replace_node(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let old = node_id_segment(&request)?;
    let body: ReplaceRequest = small_json(&request, payload).await?;
    let (map, queued) = crate::meta::orchestrator::replace_node(&node, old, body.with).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "epoch": map.epoch, "queued_moves": queued })))
}

/// `DELETE /v1/admin/cluster/nodes/{id}`: forgets a member that holds no replica.
async fn delete_cluster_node(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let id = node_id_segment(&request)?;
    let map = crate::meta::orchestrator::remove_member(&node, id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "epoch": map.epoch, "removed": id })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"shard": 2, "from": 3, "to": 4}))]
struct MoveRequest {
    shard: u32,
    from: u64,
    to: u64,
}

/// `POST /v1/admin/cluster/moves {"shard", "from", "to"}`.
async fn post_cluster_move(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let body: MoveRequest = small_json(&request, payload).await?;
    let (map, queued) = crate::meta::orchestrator::move_replica(&node, body.shard, body.from, body.to).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "epoch": map.epoch, "queued_moves": queued })))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max_concurrent_moves": 1}))]
struct RebalanceRequest {
    max_concurrent_moves: Option<usize>,
}

/// `POST /v1/admin/cluster/rebalance {"max_concurrent_moves"?}`.
async fn post_rebalance(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let body: RebalanceRequest = small_json(&request, payload).await?;
    let (map, queued) = crate::meta::orchestrator::rebalance(&node, body.max_concurrent_moves).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "epoch": map.epoch, "queued_moves": queued })))
}

/// `POST /v1/admin/cluster/moves/cancel`: drops queued moves and gives up the moves in flight
/// that are not past their promotion.
async fn post_cancel_moves(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    let map = crate::meta::orchestrator::cancel_moves(&node).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "epoch": map.epoch, "moves_in_flight": map.moves_in_flight() })))
}

/// Largest body of an admin request.
const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;

/// An admin request's small JSON body (an empty body is the type's default, if any).
async fn small_json<T: DeserializeOwned>(request: &HttpRequest, payload: web::Payload) -> Result<T, HttpError> {
    let bytes = read_body(request, payload, ADMIN_BODY_BYTES_MAX).await?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|e| HttpError(ApiError::new(rushes_protocol::ErrorCode::InvalidJson, format!("body: {e}"))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    /// Start of the window (default 0).
    #[param(example = 60000)]
    from_ms: Option<u64>,
    /// End of the window (default: one hour of buckets after from_ms).
    #[param(example = 90000)]
    to_ms: Option<u64>,
    consistency: Option<rushes_protocol::Consistency>,
}

fn query_params<T: DeserializeOwned>(request: &HttpRequest) -> Result<T, HttpError> {
    serde_urlencoded::from_str(request.query_string())
        .map_err(|e| HttpError(ApiError::field("query", format!("query string: {e}; allowed parameters are documented in API.md"))))
}

async fn get_buckets(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Read)?;
    let asset_id = asset_id_from(&request, &node)?;
    let range: RangeQuery = query_params(&request)?;
    let strong = range.consistency == Some(rushes_protocol::Consistency::Strong);
    read_reply(node.read_asset(AssetRead::Buckets { asset_id, from_ms: range.from_ms, to_ms: range.to_ms }, strong).await?)
}

/// A read's JSON (or the stored annotation's raw bytes, which are JSON too).
fn read_reply(reply: PeerReply) -> HttpResult {
    match reply {
        PeerReply::Json(bytes) | PeerReply::Raw(bytes) => Ok(HttpResponse::Ok().content_type("application/json").body(bytes)),
        PeerReply::Error(e) => Err(HttpError(e)),
        other => Err(HttpError(ApiError::internal(format!("unexpected reply to a read: {other:?}")))),
    }
}

async fn post_search(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Read)?;
    let body = read_body(&request, payload, 1024 * 1024).await?;
    let search: SearchRequest = parse_json(&body)?;
    Ok(HttpResponse::Ok().json(node.search(search).await?))
}

async fn post_explain(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Read)?;
    let body = read_body(&request, payload, 1024 * 1024).await?;
    let search: SearchRequest = parse_json(&body)?;
    let plan = node.explain(search).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "plan": plan, "shards": node.shards().len() })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SuggestQuery {
    /// What was typed so far; the last word is completed.
    #[param(example = "Jo")]
    q: String,
    /// Completions at most (1..=50, default 8).
    #[param(example = 8)]
    limit: Option<usize>,
}

async fn get_suggest(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Read)?;
    let params: SuggestQuery = query_params(&request)?;
    let limit = params.limit.unwrap_or(8).clamp(1, 50);
    if params.q.len() > node.config.limits.max_query_bytes {
        return Err(HttpError(ApiError::new(ErrorCode::TooLarge, "q is too long").with_field("q")));
    }
    let node_for_task = node.clone();
    let q = params.q.clone();
    let suggestions = web::block(move || crate::query::suggest::suggest(&node_for_task.planner, &node_for_task.shards(), &q, limit))
        .await
        .map_err(|e| HttpError(ApiError::internal(format!("suggest task failed: {e}"))))??;
    let moments = match suggestions.completions.first() {
        Some(best) => node.suggest_moments(&best.query).await,
        None => vec![],
    };
    let mut reply = serde_json::json!({ "q": params.q, "completions": suggestions.completions, "moments": moments });
    if !suggestions.warnings.is_empty() {
        // A shard no replica answered for: its words are missing from the completions.
        reply["warnings"] = serde_json::json!(suggestions.warnings);
    }
    Ok(HttpResponse::Ok().json(reply))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ClusterParams {
    /// Adds a hash of each local replica's raw store (reads the whole store).
    #[serde(default)]
    digest: bool,
}

async fn get_cluster(request: HttpRequest) -> HttpResult {
    let params: ClusterParams = query_params(&request)?;
    // Hashing every replica's whole raw store is work only an administrator may trigger.
    let node = authorized(&request, if params.digest { Scope::Admin } else { Scope::Read })?;
    Ok(HttpResponse::Ok().json(crate::status::cluster_status(&node, params.digest).await?))
}

/// Fault injection is off unless the node was started with this variable set to 1.
pub const FAULT_INJECTION_ENV: &str = "RUSHES_FAULT_INJECTION";

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"isolate_from": [2, 3]}))]
struct PartitionRequest {
    isolate_from: Vec<u64>,
}

/// `POST /v1/debug/partition {"isolate_from": [2, 3]}`: this node drops Raft messages and
/// requests to and from those nodes (`[]` heals). For fault-injection suites without root.
/// Refuses a fault-injection request unless the node was started with it on.
fn fault_injection_enabled(endpoint: &str) -> Result<(), HttpError> {
    if std::env::var(FAULT_INJECTION_ENV).as_deref() != Ok("1") {
        return Err(HttpError(ApiError::new(
            rushes_protocol::ErrorCode::NotFound,
            format!("fault injection is disabled; start the node with {FAULT_INJECTION_ENV}=1 to use {endpoint}"),
        )));
    }
    Ok(())
}

async fn post_partition(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    fault_injection_enabled("/v1/debug/partition")?;
    let Some(net) = node.net().cloned() else {
        return Err(HttpError(ApiError::field(
            "isolate_from",
            "this node runs alone (no [[cluster.nodes]]): there is nothing to partition",
        )));
    };
    let body = read_body(&request, payload, 64 * 1024).await?;
    let partition: PartitionRequest = parse_json(&body)?;
    if partition.isolate_from.len() > 1024 {
        return Err(HttpError(ApiError::field("isolate_from", "list at most 1024 node ids")));
    }
    net.isolate_from(&partition.isolate_from);
    tracing::warn!(isolated_from = ?net.isolated(), "fault injection: partition changed");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "isolated_from": net.isolated() })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"shard": 0, "actor": "fusion", "panics": 1}))]
struct ActorFaultRequest {
    shard: u32,
    /// `fusion` or `index`.
    actor: String,
    /// How many of its next batches panic.
    #[serde(default = "one")]
    panics: u32,
}

fn one() -> u32 {
    1
}

/// `POST /v1/debug/actor-fault {"shard": 0, "actor": "index", "panics": 1}`: the next batches
/// of a local replica's fusion or index actor panic, to exercise supervision.
async fn post_actor_fault(request: HttpRequest, payload: web::Payload) -> HttpResult {
    let node = authorized(&request, Scope::Admin)?;
    fault_injection_enabled("/v1/debug/actor-fault")?;
    let body = read_body(&request, payload, 4 * 1024).await?;
    let fault: ActorFaultRequest = parse_json(&body)?;
    let actor = match fault.actor.as_str() {
        "fusion" => crate::actors::ActorKind::Fusion,
        "index" => crate::actors::ActorKind::Index,
        other => {
            return Err(HttpError(ApiError::field(
                "actor",
                format!("actor {other:?}: use \"fusion\" or \"index\" (the supervised actors)"),
            )))
        }
    };
    if fault.panics == 0 || fault.panics > 100 {
        return Err(HttpError(ApiError::field("panics", "panics must be 1..=100")));
    }
    let shard = node.view.local_shard(fault.shard).ok_or_else(|| {
        HttpError(ApiError::field("shard", format!("shard {} has no replica on this node; send this to a node that holds it", fault.shard)))
    })?;
    shard.inject_panics(actor, fault.panics).map_err(|m| HttpError(ApiError::field("actor", m)))?;
    tracing::warn!(shard = fault.shard, actor = fault.actor, panics = fault.panics, "fault injection: actor panics armed");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "shard": fault.shard, "actor": fault.actor, "panics": fault.panics })))
}

async fn health(request: HttpRequest) -> HttpResult {
    let node = node_of(&request)?;
    let failed: Vec<serde_json::Value> = node
        .shards()
        .iter()
        .filter_map(|s| s.progress.failure().map(|cause| serde_json::json!({ "shard": s.id, "cause": cause })))
        .collect();
    // Replicas paused for disk space are alive and resume by themselves: reported, not failed.
    let disk_below_floor: Vec<u32> = node.shards().iter().filter(|s| !s.disk.has_room()).map(|s| s.id).collect();
    if failed.is_empty() {
        let mut reply = serde_json::json!({ "status": "ok", "shards": node.shards().len(), "caught_up": node.is_caught_up() });
        if !disk_below_floor.is_empty() {
            reply["disk_below_floor"] = serde_json::json!(disk_below_floor);
        }
        Ok(HttpResponse::Ok().json(reply))
    } else {
        Ok(HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")))
            .json(serde_json::json!({ "status": "degraded", "failed_shards": failed })))
    }
}

/// `GET /ready`: 200 when every local replica knows its leader and has applied and indexed
/// within `http.ready_max_lag_entries`; else 503 with the reasons. No API key needed, as for
/// `/health`: it says nothing about the data.
async fn ready(request: HttpRequest) -> HttpResult {
    let node = node_of(&request)?;
    let max_lag_entries = node.config.http.ready_max_lag_entries;
    let shards = node.shards();
    let reasons: Vec<String> =
        shards.iter().flat_map(|replica| ready::not_ready_reasons(&ready::ReplicaReadiness::of(replica), max_lag_entries)).collect();
    if reasons.is_empty() {
        Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready", "shards": shards.len() })))
    } else {
        Ok(HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")))
            .json(serde_json::json!({ "status": "not_ready", "shards": shards.len(), "reasons": reasons })))
    }
}

/// `GET /openapi.json`: the API as OpenAPI 3.1 ([`openapi`]). Open, as the page is: it
/// describes the API, not the data.
async fn openapi_json() -> HttpResult {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = match DOCUMENT.get() {
        Some(body) => body.clone(),
        None => {
            let body = openapi::document()
                .map(|document| document.to_string())
                .map_err(|e| HttpError(ApiError::internal(format!("OpenAPI document: {e}"))))?;
            DOCUMENT.get_or_init(|| body).clone()
        }
    };
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

async fn metrics(request: HttpRequest) -> HttpResult {
    let node = authorized(&request, Scope::Read)?;
    node.refresh_gauges();
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(node.metrics.render()))
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    HttpError(ApiError::new(ErrorCode::NotFound, format!("no endpoint {} {}; see API.md", request.method(), request.path())))
        .error_response()
}

async fn method_not_allowed(request: HttpRequest) -> HttpResponse {
    HttpError(ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}; see API.md for the methods of each endpoint", request.method(), request.path()),
    ))
    .error_response()
}

pub fn configure(config: &mut web::ServiceConfig) {
    // Each path is one resource, so a known path with the wrong method answers 405, not 404.
    let resource = |path: &str| web::resource(path.to_string()).default_service(web::to(method_not_allowed));
    config
        .service(resource("/").route(web::get().to(page::index)))
        .service(resource("/ui/app.js").route(web::get().to(page::script)))
        .service(resource("/ui/app.css").route(web::get().to(page::style)))
        .service(resource("/openapi.json").route(web::get().to(openapi_json)))
        .service(resource("/health").route(web::get().to(health)))
        .service(resource("/ready").route(web::get().to(ready)))
        .service(resource("/metrics").route(web::get().to(metrics)))
        .service(resource("/v1/annotations").route(web::post().to(post_annotations)))
        .service(
            resource("/v1/assets/{asset_id}")
                .route(web::put().to(put_asset))
                .route(web::get().to(get_asset))
                .route(web::delete().to(delete_asset)),
        )
        .service(resource("/v1/assets/{asset_id}/buckets").route(web::get().to(get_buckets)))
        .service(resource("/v1/assets/{asset_id}/subtitles").route(web::post().to(post_subtitles)))
        .service(
            resource("/v1/assets/{asset_id}/annotations/{annotation_id}")
                .route(web::get().to(get_raw_annotation))
                .route(web::delete().to(delete_annotation)),
        )
        .service(resource("/v1/export").route(web::get().to(get_export)))
        .service(resource("/v1/admin/shards/{shard}/log").route(web::get().to(get_shard_log)))
        .service(resource("/v1/admin/purge-superseded").route(web::post().to(post_purge_superseded)))
        .service(resource("/v1/admin/cluster/map").route(web::get().to(get_cluster_map)))
        .service(resource("/v1/admin/cluster/nodes").route(web::post().to(post_cluster_node)))
        .service(resource("/v1/admin/cluster/nodes/{id}").route(web::delete().to(delete_cluster_node)))
        .service(resource("/v1/admin/cluster/nodes/{id}/drain").route(web::post().to(post_drain_node)))
        .service(resource("/v1/admin/cluster/nodes/{id}/replace").route(web::post().to(post_replace_node)))
        .service(resource("/v1/admin/cluster/moves").route(web::post().to(post_cluster_move)))
        .service(resource("/v1/admin/cluster/moves/cancel").route(web::post().to(post_cancel_moves)))
        .service(resource("/v1/admin/cluster/rebalance").route(web::post().to(post_rebalance)))
        .service(resource("/v1/search").route(web::post().to(post_search)))
        .service(resource("/v1/search/explain").route(web::post().to(post_explain)))
        .service(resource("/v1/suggest").route(web::get().to(get_suggest)))
        .service(resource("/v1/cluster").route(web::get().to(get_cluster)))
        .service(resource("/v1/debug/partition").route(web::post().to(post_partition)))
        .service(resource("/v1/debug/actor-fault").route(web::post().to(post_actor_fault)));
}

/// Builds the HTTP server (not yet running).
pub fn server(node: Arc<Node>, listener: std::net::TcpListener) -> std::io::Result<actix_web::dev::Server> {
    let listen = listener.local_addr()?;
    let tls = https_config(&node.config.http)?;
    match (node.api_keys.is_open(), listen.ip().is_loopback()) {
        (true, true) => tracing::warn!(%listen, "no API keys configured: every caller on this machine can read, write and administer"),
        (true, false) => {
            tracing::warn!(%listen, "NO API KEYS and http.allow_unauthenticated = true: anyone who reaches this address can read, write and administer")
        }
        (false, _) => tracing::info!(%listen, "API keys required (Authorization: Bearer)"),
    }
    let data = web::Data::new(node);
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(configure).default_service(web::to(not_found)))
        .workers(2)
        .max_connections(4096)
        .client_request_timeout(std::time::Duration::from_secs(30))
        .shutdown_timeout(5)
        .disable_signals();
    Ok(match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?.run(),
        None => server.listen(listener)?.run(),
    })
}

/// HTTPS from `http.tls_cert_file` and `http.tls_key_file`, if set.
fn https_config(http: &rushes_config::HttpConfig) -> std::io::Result<Option<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if http.tls_cert_file.is_empty() {
        return Ok(None);
    }
    let invalid = |key: &str, detail: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{key}: {detail}"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&http.tls_cert_file)
        .and_then(|certs| certs.collect())
        .map_err(|e| invalid("http.tls_cert_file", format!("{}: {e}", http.tls_cert_file)))?;
    let key = PrivateKeyDer::from_pem_file(&http.tls_key_file)
        .map_err(|e| invalid("http.tls_key_file", format!("{}: {e}", http.tls_key_file)))?;
    let config = rustls::ServerConfig::builder_with_provider(rushes_cluster::transport::tls::provider())
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| invalid("http.tls_cert_file", e.to_string()))?;
    Ok(Some(config))
}
