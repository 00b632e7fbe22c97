//! The node's engine: its shards, ingest routing and the search coordinator. HTTP handlers and
//! the CLI call into this; it knows nothing about HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rushes_cluster::{shard_for_asset, RaftSettings};
use rushes_config::{Config, Metric, Quantization};
use rushes_protocol::codec;
use rushes_protocol::model::{same_raw_content, IngestItem, ShardCommand, StoredAnnotation, StoredAsset, SHARD_COMMAND_FORMAT};
use rushes_protocol::validate::{validate_asset_id, IngestLimits, ParsedItem, VectorSpaceSpec as SpaceLimit};
use rushes_protocol::{
    ApiError, AssetHits, AssetRecord, BucketAnnotationView, BucketView, BucketsReply, ErrorCode, IngestReply, SearchRequest,
    SearchResponse, ShardCounts,
};
use serde_json::json;

use crate::embedder::Embedder;
use crate::index::{VectorMetric, VectorQuantization, VectorSpaceSpec};
use crate::metrics::Metrics;
use crate::search::{self, Plan, SearchLimits, SpaceInfo};
use crate::shard::{Shard, ShardError, ShardOptions};
use crate::store::ApplyOutcome;

/// Most buckets one `/buckets` request returns (one hour at the default bucket size).
pub const MAX_BUCKETS_PER_REQUEST: u64 = 3600;

pub struct Engine {
    pub config: Config,
    pub shards: Vec<Arc<Shard>>,
    pub metrics: Arc<Metrics>,
    pub ingest_limits: IngestLimits,
    pub search_limits: SearchLimits,
    search_slots: Arc<tokio::sync::Semaphore>,
    pub search_defaults: search::SearchDefaults,
    pub embedder: Option<Box<dyn Embedder>>,
    series_cache: parking_lot::Mutex<(Option<Instant>, Vec<String>)>,
    /// Suggest's top moments per completed query, with the data version they were computed at.
    /// Every keystroke of "J", "Jo", "Joe" completes to the same query: search it once.
    suggest_moments: parking_lot::Mutex<HashMap<String, (u64, Vec<AssetHits>)>>,
    pub started: Instant,
}

/// Most completed queries whose moments are kept (the map is emptied when full).
const SUGGEST_MOMENTS_CACHE_ENTRIES: usize = 1024;

pub fn shard_options(config: &Config) -> ShardOptions {
    ShardOptions {
        node_id: config.node.id,
        voters: vec![config.node.id],
        raft: RaftSettings {
            election_ticks: config.raft.election_ticks,
            heartbeat_ticks: config.raft.heartbeat_ticks,
            max_size_per_msg_bytes: config.raft.max_size_per_msg_bytes,
            max_inflight_msgs: config.raft.max_inflight_msgs,
        },
        tick_interval_ms: config.raft.tick_interval_ms,
        proposal_queue_depth: config.limits.ingest_queue_depth,
        group_commit_max_requests: config.raft.group_commit_max_requests,
        bucket_ms: config.fusion.bucket_ms,
        fusion_batch_entries_max: config.fusion.batch_entries_max as u64,
        commit_interval_ms: config.index.commit_interval_ms,
        writer_heap_bytes: config.index.writer_heap_bytes,
        vector_spaces: config
            .vector_spaces
            .iter()
            .map(|s| VectorSpaceSpec {
                name: s.name.clone(),
                dimensions: s.dimensions,
                metric: match s.metric {
                    Metric::Cosine => VectorMetric::Cosine,
                    Metric::L2 => VectorMetric::L2,
                    Metric::Ip => VectorMetric::InnerProduct,
                },
                quantization: match s.quantization {
                    Quantization::F32 => VectorQuantization::F32,
                    Quantization::F16 => VectorQuantization::F16,
                    Quantization::I8 => VectorQuantization::I8,
                },
                connectivity: s.connectivity,
                expansion_add: s.expansion_add,
                expansion_search: s.expansion_search,
            })
            .collect(),
    }
}

impl Engine {
    pub fn open(config: Config) -> Result<Arc<Engine>, ShardError> {
        Engine::open_with_demo_seed(config, crate::gen::GenConfig::default().seed)
    }

    /// `demo_seed`: the generated season the demo embedder (`[embedder] url = "demo"`) knows.
    pub fn open_with_demo_seed(config: Config, demo_seed: u64) -> Result<Arc<Engine>, ShardError> {
        let metrics = Arc::new(Metrics::new());
        let options = shard_options(&config);
        let mut shards = Vec::with_capacity(config.cluster.shards as usize);
        for id in 0..config.cluster.shards {
            shards.push(Shard::open(&config.node.data_dir, id, &options, metrics.clone())?);
        }
        let limits = &config.limits;
        let ingest_limits = IngestLimits {
            max_batch_items: limits.max_batch_items,
            max_id_bytes: limits.max_id_bytes,
            max_asset_id_bytes: limits.max_asset_id_bytes,
            max_name_bytes: limits.max_name_bytes,
            max_label_bytes: limits.max_label_bytes,
            max_text_bytes: limits.max_text_bytes,
            max_interval_ms: limits.max_interval_ms,
            max_time_ms: limits.max_time_ms,
            vector_spaces: config.vector_spaces.iter().map(|s| SpaceLimit { name: s.name.clone(), dimensions: s.dimensions }).collect(),
        };
        let search_limits = SearchLimits {
            max_clauses: limits.max_clauses,
            max_per_asset: limits.max_per_asset,
            max_limit: limits.max_limit,
            max_query_bytes: limits.max_query_bytes,
            max_vector_k: limits.max_vector_k,
            vector_spaces: options
                .vector_spaces
                .iter()
                .map(|s| SpaceInfo { name: s.name.clone(), dimensions: s.dimensions, metric: s.metric })
                .collect(),
        };
        let search_slots = Arc::new(tokio::sync::Semaphore::new(limits.search_queue_depth));
        let search_defaults = search::SearchDefaults {
            fusion: match config.search.fusion {
                rushes_config::FusionMethod::Weighted => rushes_protocol::FusionMethod::Weighted,
                rushes_config::FusionMethod::Rrf => rushes_protocol::FusionMethod::Rrf,
            },
            rank_constant: config.search.rank_constant,
            rank_window: config.search.rank_window,
            exact_vector_max_candidates: config.search.exact_vector_max_candidates,
        };
        let embedder = match config.vector_spaces.iter().find(|s| s.name == config.embedder.space) {
            Some(space) => crate::embedder::from_config(&config.embedder, space.dimensions, demo_seed)
                .map_err(|e| ShardError::Config(format!("embedder: {e}")))?,
            None => None,
        };
        Ok(Arc::new(Engine {
            config,
            shards,
            metrics,
            ingest_limits,
            search_limits,
            search_slots,
            search_defaults,
            embedder,
            series_cache: parking_lot::Mutex::new((None, Vec::new())),
            suggest_moments: parking_lot::Mutex::new(HashMap::new()),
            started: Instant::now(),
        }))
    }

    pub fn shard_of(&self, asset_id: &str) -> &Arc<Shard> {
        &self.shards[shard_for_asset(asset_id, self.shards.len() as u32) as usize]
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.limits.request_timeout_ms)
    }

    /// Splits a batch into one encoded command per shard, after removing identical repeats
    /// and refusing ids that already exist with other content.
    fn prepare_ingest(&self, items: Vec<ParsedItem>) -> Result<PreparedIngest, ApiError> {
        // In-batch duplicates: identical ones collapse, different content under one id is a conflict.
        let mut first_seen: HashMap<(String, String), usize> = HashMap::with_capacity(items.len());
        let mut by_shard: BTreeMap<usize, (Vec<IngestItem>, Vec<usize>)> = BTreeMap::new();
        let mut batch_duplicates = 0;
        let mut kept: Vec<(usize, IngestItem)> = Vec::with_capacity(items.len());
        for (position, item) in items.into_iter().enumerate() {
            let key = (item.annotation.asset_id.clone(), item.annotation.id.clone());
            let (annotation, vector) = StoredAnnotation::from_validated(item.annotation);
            let ingest_item = IngestItem { raw_json: item.raw_json, annotation, vector };
            if let Some(&kept_index) = first_seen.get(&key) {
                let (earlier, previous) = &kept[kept_index];
                let earlier = *earlier;
                if !same_raw_content(&previous.raw_json, &ingest_item.raw_json) {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!("id {:?} appears twice in this batch with different content (items {earlier} and {position})", key.1),
                    )
                    .with_item(position)
                    .with_field("id"));
                }
                batch_duplicates += 1;
                continue;
            }
            first_seen.insert(key, kept.len());
            kept.push((position, ingest_item));
        }
        // Check stored ids before proposing, so a conflict normally stores nothing anywhere.
        // The shard re-checks when applying (authoritative, for concurrent writers).
        for (position, item) in kept {
            let shard_index = shard_for_asset(&item.annotation.asset_id, self.shards.len() as u32) as usize;
            let existing_raw = self.shards[shard_index]
                .store
                .raw_annotation(&item.annotation.asset_id, &item.annotation.id)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if existing_raw.is_some_and(|raw| !same_raw_content(&raw, &item.raw_json)) {
                return Err(conflict(position, &item.annotation.id));
            }
            let entry = by_shard.entry(shard_index).or_default();
            entry.0.push(item);
            entry.1.push(position);
        }
        let mut commands = Vec::with_capacity(by_shard.len());
        for (shard_index, (items, positions)) in by_shard {
            let bytes =
                codec::encode(SHARD_COMMAND_FORMAT, &ShardCommand::Ingest { items }).map_err(|e| ApiError::internal(e.to_string()))?;
            commands.push((shard_index, bytes, positions));
        }
        Ok(PreparedIngest { commands, batch_duplicates })
    }

    /// Stores a validated batch: replies once every annotation is committed and durable.
    pub async fn ingest(self: &Arc<Self>, items: Vec<ParsedItem>) -> Result<IngestReply, ApiError> {
        let started = Instant::now();
        let total = items.len();
        // Deduplication, conflict pre-checks (sled reads) and encoding are blocking work.
        let engine = self.clone();
        let prepared = tokio::task::spawn_blocking(move || engine.prepare_ingest(items))
            .await
            .map_err(|e| ApiError::internal(format!("ingest preparation failed: {e}")))??;
        let batch_duplicates = prepared.batch_duplicates;
        let mut pending = Vec::with_capacity(prepared.commands.len());
        for (shard_index, command, positions) in prepared.commands {
            let receiver = self.shards[shard_index].propose_encoded(command)?;
            pending.push((receiver, positions));
        }
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        let mut created = 0;
        let mut duplicates = batch_duplicates;
        let mut first_error: Option<ApiError> = None;
        for (receiver, positions) in pending {
            let outcome = match tokio::time::timeout_at(deadline, receiver).await {
                Err(_) => {
                    Err(ApiError::new(ErrorCode::Timeout, "the write was not confirmed in time; retry the same batch (ids are idempotent)")
                        .with_retry_after(1))
                }
                Ok(Err(_)) => Err(ApiError::unavailable("the shard stopped before confirming the write; retry the same batch")),
                Ok(Ok(result)) => result,
            };
            match outcome {
                Ok(ApplyOutcome::Applied { created: c, duplicates: d }) => {
                    created += c;
                    duplicates += d;
                }
                Ok(ApplyOutcome::Conflict { item, annotation_id }) => {
                    first_error.get_or_insert(conflict(positions.get(item).copied().unwrap_or(item), &annotation_id));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            self.metrics.ingest_requests.with_label_values(&[error.code.as_str()]).inc();
            return Err(error);
        }
        self.metrics.ingest_requests.with_label_values(&["ok"]).inc();
        self.metrics.ingest_annotations.inc_by(total as u64);
        Ok(IngestReply { accepted: total, created, duplicates, took_ms: started.elapsed().as_millis() as u64 })
    }

    pub async fn upsert_asset(&self, asset_id: &str, record: AssetRecord) -> Result<(), ApiError> {
        validate_asset_id(asset_id, self.ingest_limits.max_asset_id_bytes)
            .map_err(|m| ApiError::field("asset_id", format!("asset_id {m}")))?;
        validate_asset_record(&record, self.config.limits.max_time_ms)?;
        let shard = self.shard_of(asset_id);
        let receiver = shard.propose(&ShardCommand::UpsertAsset { asset_id: asset_id.to_string(), record: StoredAsset::from(record) })?;
        match tokio::time::timeout(self.request_timeout(), receiver).await {
            Err(_) => Err(ApiError::new(ErrorCode::Timeout, "the write was not confirmed in time; retry").with_retry_after(1)),
            Ok(Err(_)) => Err(ApiError::unavailable("the shard stopped before confirming the write; retry")),
            Ok(Ok(result)) => result.map(|_| ()),
        }
    }

    pub fn asset_view(&self, asset_id: &str) -> Result<serde_json::Value, ApiError> {
        let store = &self.shard_of(asset_id).store;
        let internal = |e: crate::store::StoreError| ApiError::internal(e.to_string());
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

    pub fn raw_annotation(&self, asset_id: &str, annotation_id: &str) -> Result<Vec<u8>, ApiError> {
        self.shard_of(asset_id)
            .store
            .raw_annotation(asset_id, annotation_id)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no annotation {annotation_id:?} on asset {asset_id:?}")))
    }

    pub fn buckets(&self, asset_id: &str, from_ms: Option<u64>, to_ms: Option<u64>) -> Result<BucketsReply, ApiError> {
        let bucket_ms = self.config.fusion.bucket_ms;
        let from_ms = from_ms.unwrap_or(0);
        let to_ms = to_ms.unwrap_or(from_ms.saturating_add(MAX_BUCKETS_PER_REQUEST * bucket_ms));
        if to_ms <= from_ms {
            return Err(ApiError::field("to_ms", format!("to_ms ({to_ms}) must be greater than from_ms ({from_ms})")));
        }
        let (first, end) = (from_ms / bucket_ms, to_ms.div_ceil(bucket_ms));
        if end - first > MAX_BUCKETS_PER_REQUEST {
            return Err(ApiError::field(
                "to_ms",
                format!(
                    "the range covers {} buckets; ask for at most {MAX_BUCKETS_PER_REQUEST} per request (page with from_ms)",
                    end - first
                ),
            ));
        }
        let buckets = self.shard_of(asset_id).store.bucket_range(asset_id, first, end).map_err(|e| ApiError::internal(e.to_string()))?;
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

    /// Normalized label → tracks, over every shard.
    pub fn vocabulary(&self) -> BTreeMap<String, Vec<String>> {
        let mut merged: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for shard in &self.shards {
            for (label, tracks) in shard.store.vocabulary() {
                let entry = merged.entry(label).or_default();
                for track in tracks {
                    if !entry.contains(&track) {
                        entry.push(track);
                    }
                }
            }
        }
        merged
    }

    /// Series names of every asset, refreshed at most every few seconds (planning reads them
    /// per query to recognise "friends season 3").
    pub fn series_names(&self) -> Vec<String> {
        const REFRESH: Duration = Duration::from_secs(5);
        {
            let cached = self.series_cache.lock();
            if cached.0.is_some_and(|at| at.elapsed() < REFRESH) {
                return cached.1.clone();
            }
        }
        let mut names: Vec<String> = Vec::new();
        for shard in &self.shards {
            for (_, asset_id) in shard.store.all_assets() {
                if let Ok(Some(record)) = shard.store.asset_record(&asset_id) {
                    if let Some(series) = record.series {
                        if !names.contains(&series) {
                            names.push(series);
                        }
                    }
                }
            }
        }
        names.sort();
        *self.series_cache.lock() = (Some(Instant::now()), names.clone());
        names
    }

    /// Whether any shard's dialogue holds `word` (one term lookup per segment).
    pub fn is_dialogue_word(&self, word: &str) -> bool {
        let folded = crate::index::tokenize(word);
        let [token] = folded.as_slice() else { return false };
        self.shards.iter().any(|shard| {
            let searcher = shard.index.reader.searcher();
            let term = tantivy::Term::from_field_text(shard.index.fields.dialogue, token);
            searcher.doc_freq(&term).is_ok_and(|n| n > 0)
        })
    }

    /// Compiles a request (blocking: the embedder may call out over HTTP).
    pub fn plan_blocking(&self, request: &SearchRequest) -> Result<Plan, ApiError> {
        let vocabulary = self.vocabulary();
        let series = self.series_names();
        let known_word = |word: &str| self.is_dialogue_word(word);
        let context = search::PlanContext {
            vocabulary: &vocabulary,
            series: &series,
            limits: &self.search_limits,
            defaults: self.search_defaults,
            embedder: self.embedder.as_deref(),
            known_word: &known_word,
        };
        search::plan(request, &context)
    }

    pub async fn plan(self: &Arc<Self>, request: SearchRequest) -> Result<Plan, ApiError> {
        let engine = self.clone();
        let deadline = self.request_timeout();
        let task = tokio::task::spawn_blocking(move || engine.plan_blocking(&request));
        tokio::time::timeout(deadline, task)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Timeout, "planning the search did not finish in time; retry").with_retry_after(1))?
            .map_err(|e| ApiError::internal(format!("planning failed: {e}")))?
    }

    pub async fn search(self: &Arc<Self>, request: SearchRequest) -> Result<SearchResponse, ApiError> {
        let started = Instant::now();
        let strong = request.consistency == Some(rushes_protocol::Consistency::Strong);
        let plan = self.plan(request).await?;
        self.run_plan(plan, strong, started).await
    }

    /// Runs a compiled plan over every shard: hits, global statistics, candidates, evidence.
    pub async fn run_plan(self: &Arc<Self>, plan: Plan, strong: bool, started: Instant) -> Result<SearchResponse, ApiError> {
        // The permit travels into every blocking task, so work that outlives a timed-out
        // request still counts against the limit until it really ends.
        let permit = Arc::new(
            self.search_slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| ApiError::overloaded("too many searches in flight; retry shortly"))?,
        );
        // One deadline for the whole request, whatever the number of shards and phases.
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        if strong {
            for shard in &self.shards {
                if !shard.wait_searchable(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        format!("shard {} did not index the latest writes in time; retry", shard.id),
                    )
                    .with_retry_after(1));
                }
            }
        }
        let plan = Arc::new(plan);
        let mut failed = vec![false; self.shards.len()];
        // Phase one on every shard: each leaf's hits, summarized for global statistics.
        let mut tasks = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (shard, plan, task_permit) = (shard.clone(), plan.clone(), permit.clone());
            tasks.push(tokio::task::spawn_blocking(move || {
                let _permit = task_permit;
                let hits = search::shard_hits(&shard, &plan)?;
                let summary = search::summarize(&hits, &plan);
                Ok::<_, search::SearchError>((hits, summary))
            }));
        }
        let mut shard_hits: Vec<Option<search::ShardHits>> = Vec::with_capacity(self.shards.len());
        let mut summaries = Vec::new();
        for (position, task) in tasks.into_iter().enumerate() {
            match self.await_shard(position, "hits", deadline, task).await {
                Some((hits, summary)) => {
                    shard_hits.push(Some(hits));
                    summaries.push(summary);
                }
                None => {
                    failed[position] = true;
                    shard_hits.push(None);
                }
            }
        }
        let stats = Arc::new(search::global_stats(&plan, &summaries));
        // Phase two: fused scores, clips, the shard's best assets.
        let mut tasks = Vec::with_capacity(self.shards.len());
        for (position, hits) in shard_hits.into_iter().enumerate() {
            let Some(hits) = hits else { continue };
            let (shard, plan, stats, task_permit) = (self.shards[position].clone(), plan.clone(), stats.clone(), permit.clone());
            tasks.push((
                position,
                tokio::task::spawn_blocking(move || {
                    let _permit = task_permit;
                    search::shard_candidates(&shard, &plan, hits, &stats)
                }),
            ));
        }
        let mut candidates: Vec<Option<Arc<search::ShardCandidates>>> = vec![None; self.shards.len()];
        let (mut total_assets, mut remaining_assets) = (0, 0);
        for (position, task) in tasks {
            match self.await_shard(position, "candidates", deadline, task).await {
                Some(shard_candidates) => {
                    total_assets += shard_candidates.total_assets;
                    remaining_assets += shard_candidates.remaining_assets;
                    candidates[position] = Some(Arc::new(shard_candidates));
                }
                None => failed[position] = true,
            }
        }
        // Phase three only for the assets that make the global top `limit`: evidence costs
        // bucket reads, and each shard would otherwise pay for `limit` assets of its own.
        let keep = search::choose_assets(&candidates, plan.limit);
        let mut finishing = Vec::new();
        for (position, keep) in keep.into_iter().enumerate() {
            let Some(shard_candidates) = candidates[position].clone() else { continue };
            if keep.is_empty() {
                continue;
            }
            let (shard, plan, task_permit) = (self.shards[position].clone(), plan.clone(), permit.clone());
            let task = tokio::task::spawn_blocking(move || {
                let _permit = task_permit;
                search::finish_assets(&shard, &plan, &shard_candidates, &keep)
            });
            finishing.push((position, task));
        }
        let mut assets = Vec::new();
        for (position, task) in finishing {
            match self.await_shard(position, "evidence", deadline, task).await {
                Some(mut shard_assets) => assets.append(&mut shard_assets),
                None => failed[position] = true,
            }
        }
        let failed_count = failed.iter().filter(|f| **f).count();
        let counts = ShardCounts { total: self.shards.len(), ok: self.shards.len() - failed_count, failed: failed_count };
        let took = started.elapsed();
        self.metrics.query_seconds.with_label_values(&["search"]).observe(took.as_secs_f64());
        Ok(search::merge(assets, (total_assets, remaining_assets), &plan, counts, took.as_millis() as u64))
    }

    /// One shard's task of a search phase; `None` (logged) when it failed or ran out of time.
    async fn await_shard<T>(
        &self,
        position: usize,
        phase: &str,
        deadline: tokio::time::Instant,
        task: tokio::task::JoinHandle<Result<T, search::SearchError>>,
    ) -> Option<T> {
        let shard_id = self.shards[position].id;
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(value))) => return Some(value),
            Ok(Ok(Err(e))) => tracing::error!(shard = shard_id, phase, error = %e, "shard search failed"),
            Ok(Err(e)) => tracing::error!(shard = shard_id, phase, error = %e, "shard search panicked"),
            Err(_) => tracing::warn!(shard = shard_id, phase, "shard search timed out"),
        }
        None
    }

    /// Sets the per-stage watermark and lag gauges (cheap: atomics only).
    pub fn refresh_stage_gauges(&self) {
        for s in &self.shards {
            let p = &s.progress;
            let commit = p.commit.load(Ordering::Acquire);
            for (stage, value) in [
                ("commit", commit),
                ("applied", p.applied.load(Ordering::Acquire)),
                ("fused", p.fused.load(Ordering::Acquire)),
                ("indexed", p.indexed.load(Ordering::Acquire)),
            ] {
                self.metrics.stage_index.with_label_values(&[&s.id.to_string(), stage]).set(value as i64);
                self.metrics.stage_lag_entries.with_label_values(&[&s.id.to_string(), stage]).set(commit.saturating_sub(value) as i64);
            }
            self.metrics.set_queue_depth(s.id, "proposals", s.queue_depth());
        }
    }

    pub fn cluster_status(&self) -> serde_json::Value {
        self.refresh_stage_gauges();
        let shards: Vec<serde_json::Value> = self
            .shards
            .iter()
            .map(|s| {
                let p = &s.progress;
                let commit = p.commit.load(Ordering::Acquire);
                let applied = p.applied.load(Ordering::Acquire);
                let fused = p.fused.load(Ordering::Acquire);
                let indexed = p.indexed.load(Ordering::Acquire);
                json!({
                    "shard": s.id,
                    "replicas": [{
                        "node": self.config.node.id,
                        "leader": p.is_leader.load(Ordering::Acquire),
                        "term": p.term.load(Ordering::Acquire),
                        "commit_index": commit,
                        "applied_index": applied,
                        "fused_index": fused,
                        "indexed_index": indexed,
                        "lag": { "fusion": applied.saturating_sub(fused), "index": fused.saturating_sub(indexed) },
                        "failed": p.failed.load(Ordering::Acquire),
                        "proposal_queue": s.queue_depth(),
                    }],
                    "raw_annotations": s.store.raw_count(),
                    "buckets": s.store.bucket_count(),
                    "index_docs": s.index.num_docs(),
                    "vectors": s.index.vectors.iter().map(|v| json!({"space": v.spec.name, "count": v.len()})).collect::<Vec<_>>(),
                    "disk_bytes": s.store.disk_bytes(),
                })
            })
            .collect();
        json!({
            "cluster_id": self.config.cluster.cluster_id,
            "nodes": [{ "id": self.config.node.id, "http_addr": self.config.node.listen.to_string(), "up": true }],
            "replication_factor": 1,
            "shards": shards,
            "uptime_s": self.started.elapsed().as_secs(),
        })
    }

    /// True when every shard has indexed everything it applied.
    /// Changes whenever anything is applied or indexed on any shard (both only grow).
    pub fn data_version(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.progress.applied.load(Ordering::Acquire).wrapping_add(s.progress.indexed.load(Ordering::Acquire)))
            .fold(0u64, u64::wrapping_add)
    }

    /// The top moments for a completed suggestion, from the cache while the data is unchanged.
    pub async fn suggest_moments(self: &Arc<Self>, query: &str) -> Vec<AssetHits> {
        let version = self.data_version();
        if let Some((cached_version, assets)) = self.suggest_moments.lock().get(query) {
            if *cached_version == version {
                return assets.clone();
            }
        }
        let search = SearchRequest { q: Some(query.to_string()), per_asset: Some(1), limit: Some(5), ..Default::default() };
        let Ok(reply) = self.search(search).await else { return vec![] };
        let mut cache = self.suggest_moments.lock();
        if cache.len() >= SUGGEST_MOMENTS_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(query.to_string(), (version, reply.assets.clone()));
        reply.assets
    }

    pub fn is_caught_up(&self) -> bool {
        self.shards.iter().all(|s| s.progress.indexed.load(Ordering::Acquire) >= s.progress.applied.load(Ordering::Acquire))
    }

    pub fn total_raw_annotations(&self) -> usize {
        self.shards.iter().map(|s| s.store.raw_count()).sum()
    }

    pub fn shutdown(&self) {
        for shard in &self.shards {
            shard.shutdown();
        }
        for shard in &self.shards {
            if let Err(e) = shard.store.flush() {
                tracing::error!(shard = shard.id, error = %e, "final flush failed");
            }
        }
    }
}

/// One encoded ingest command per shard, with the batch positions of its items.
struct PreparedIngest {
    commands: Vec<(usize, Vec<u8>, Vec<usize>)>,
    batch_duplicates: usize,
}

fn conflict(item: usize, annotation_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!("annotation id {annotation_id:?} already exists with different content; annotations are immutable, use a new id (or a new model_version to replace a model's output)"),
    )
    .with_item(item)
    .with_field("id")
}

fn validate_asset_record(record: &AssetRecord, max_time_ms: u64) -> Result<(), ApiError> {
    for (field, value, max) in [("title", &record.title, 512usize), ("series", &record.series, 128)] {
        if let Some(text) = value {
            if text.len() > max {
                return Err(
                    ApiError::new(ErrorCode::TooLarge, format!("{field} is {} bytes; the limit is {max}", text.len())).with_field(field)
                );
            }
            if text.chars().any(char::is_control) {
                return Err(ApiError::field(field, format!("{field} must not contain control characters")));
            }
        }
    }
    if let Some(fps) = record.fps {
        if !fps.is_finite() || fps <= 0.0 || fps > 1000.0 {
            return Err(ApiError::field("fps", format!("fps is {fps}; it must be a number in (0, 1000]")));
        }
    }
    if let Some(duration) = record.duration_ms {
        if duration == 0 || duration > max_time_ms {
            return Err(ApiError::field("duration_ms", format!("duration_ms is {duration}; allowed 1..={max_time_ms}")));
        }
    }
    Ok(())
}
