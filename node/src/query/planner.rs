//! The planner: a search request (free text or clauses) becomes a [`Plan`] with the cluster's
//! vocabularies at hand. It keeps what understanding needs of shards this node lacks (their
//! label vocabularies and series names, refreshed every few seconds, and whether a word is
//! spoken in their dialogue), and the embedder that turns semantic text into query vectors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rushes_cluster::ShardId;
use rushes_config::Config;
use rushes_protocol::peer::{PeerReply, PeerRequest};
use rushes_protocol::{ApiError, ErrorCode, SearchRequest};

use super::embedder::Embedder;
use super::plan::{Plan, PlanContext, SearchDefaults, SearchLimits, SpaceInfo};
use crate::node::{shard_options, ClusterView};
use crate::peer::hedge;
use crate::shard::Shard;

pub struct Planner {
    view: Arc<ClusterView>,
    pub limits: SearchLimits,
    pub defaults: SearchDefaults,
    pub embedder: Option<Box<dyn Embedder>>,
    series_cache: parking_lot::Mutex<(Option<Instant>, Vec<String>)>,
    /// Folded words some shard this node lacks holds in dialogue → when that was learned.
    remote_dialogue_words: parking_lot::Mutex<HashMap<String, Instant>>,
    /// Vocabulary and series names of shards held by other nodes: (refreshed at, labels, series).
    remote_vocabulary: parking_lot::Mutex<(Option<Instant>, BTreeMap<String, Vec<String>>, Vec<String>)>,
}

impl Planner {
    /// `demo_seed`: the generated season the demo embedder (`[embedder] url = "demo"`) knows.
    pub fn new(view: Arc<ClusterView>, demo_seed: u64) -> Result<Planner, String> {
        let config: &Config = &view.config;
        let limits = &config.limits;
        let search_limits = SearchLimits {
            max_clauses: limits.max_clauses,
            max_per_asset: limits.max_per_asset,
            max_limit: limits.max_limit,
            max_query_bytes: limits.max_query_bytes,
            max_vector_k: limits.max_vector_k,
            vector_spaces: shard_options(config)
                .vector_spaces
                .iter()
                .map(|s| SpaceInfo { name: s.name.clone(), dimensions: s.dimensions, metric: s.metric })
                .collect(),
        };
        let defaults = SearchDefaults {
            fusion: match config.search.fusion {
                rushes_config::FusionMethod::Weighted => rushes_protocol::FusionMethod::Weighted,
                rushes_config::FusionMethod::Rrf => rushes_protocol::FusionMethod::Rrf,
            },
            rank_constant: config.search.rank_constant,
            rank_window: config.search.rank_window,
            exact_vector_max_candidates: config.search.exact_vector_max_candidates,
        };
        let embedder = match config.vector_spaces.iter().find(|s| s.name == config.embedder.space) {
            Some(space) => {
                super::embedder::from_config(&config.embedder, space.dimensions, demo_seed).map_err(|e| format!("embedder: {e}"))?
            }
            None => None,
        };
        Ok(Planner {
            view,
            limits: search_limits,
            defaults,
            embedder,
            series_cache: parking_lot::Mutex::new((None, Vec::new())),
            remote_dialogue_words: parking_lot::Mutex::new(HashMap::new()),
            remote_vocabulary: parking_lot::Mutex::new((None, BTreeMap::new(), Vec::new())),
        })
    }

    /// Label vocabulary and series of this node's replicas, for a peer's query understanding.
    pub fn local_vocabulary_reply(&self) -> PeerReply {
        PeerReply::Vocabulary { labels: self.local_vocabulary().into_iter().collect(), series: self.local_series_names() }
    }

    /// Fetches the vocabulary of shards this node does not hold, at most every few seconds
    /// (planning reads it per query). A node holding every shard never asks.
    pub async fn refresh_remote_vocabulary(&self) {
        const REFRESH: Duration = Duration::from_secs(5);
        if self.view.missing_shards().is_empty() {
            return;
        }
        if self.remote_vocabulary.lock().0.is_some_and(|at| at.elapsed() < REFRESH) {
            return;
        }
        let Some(net) = &self.view.net else { return };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut series: Vec<String> = Vec::new();
        for shard in 0..self.view.shard_map().shard_count() {
            if self.view.local_shard(shard).is_some() {
                continue;
            }
            let replicas = self.view.shard_map().replicas(shard).to_vec();
            if let Ok((_, PeerReply::Vocabulary { labels: remote, series: remote_series })) =
                hedge::hedged_call(net, &replicas, PeerRequest::Vocabulary, deadline).await
            {
                for (label, tracks) in remote {
                    let entry = labels.entry(label).or_default();
                    for track in tracks {
                        if !entry.contains(&track) {
                            entry.push(track);
                        }
                    }
                }
                for name in remote_series {
                    if !series.contains(&name) {
                        series.push(name);
                    }
                }
            }
        }
        *self.remote_vocabulary.lock() = (Some(Instant::now()), labels, series);
    }

    /// Normalized label → tracks, over every shard (other nodes' from the last refresh).
    pub fn vocabulary(&self) -> BTreeMap<String, Vec<String>> {
        let mut merged = self.local_vocabulary();
        for (label, tracks) in &self.remote_vocabulary.lock().1 {
            let entry = merged.entry(label.clone()).or_default();
            for track in tracks {
                if !entry.contains(track) {
                    entry.push(track.clone());
                }
            }
        }
        merged
    }

    fn local_vocabulary(&self) -> BTreeMap<String, Vec<String>> {
        let mut merged: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for shard in &self.view.shards() {
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
        let mut names = self.local_series_names();
        for name in &self.remote_vocabulary.lock().2 {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names.sort();
        names
    }

    fn local_series_names(&self) -> Vec<String> {
        const REFRESH: Duration = Duration::from_secs(5);
        {
            let cached = self.series_cache.lock();
            if cached.0.is_some_and(|at| at.elapsed() < REFRESH) {
                return cached.1.clone();
            }
        }
        let mut names: Vec<String> = Vec::new();
        for shard in &self.view.shards() {
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

    /// Whether any shard's dialogue holds `word`: this node's replicas first (one term lookup
    /// per segment), then, on a node lacking shards, one replica of each missing shard.
    /// Blocking: call it off the async threads (planning runs on the blocking pool).
    pub fn is_dialogue_word(&self, word: &str) -> bool {
        let folded = crate::storage::index::tokenize(word);
        let [token] = folded.as_slice() else { return false };
        if self.view.shards().iter().any(|shard| shard_has_dialogue_word(shard, token)) {
            return true;
        }
        let missing = self.view.missing_shards();
        if missing.is_empty() {
            return false;
        }
        self.remote_dialogue_word(token, missing)
    }

    /// Asks a replica of each shard in `missing`, concurrently. Only "held" is cached (a word
    /// stays in dialogue once there): a new word must be seen as soon as it is indexed, and the
    /// question arises only for a word that was corrected to a label. A shard that cannot be
    /// asked in time counts as not holding the word: the query then reads as typed to the closest
    /// label, as it would before that shard had the word.
    fn remote_dialogue_word(&self, token: &str, missing: Vec<ShardId>) -> bool {
        const CACHE_FOR: Duration = Duration::from_secs(60);
        const CACHE_ENTRIES_MAX: usize = 4096;
        const ASK_FOR: Duration = Duration::from_millis(500);
        if self.remote_dialogue_words.lock().get(token).is_some_and(|at| at.elapsed() < CACHE_FOR) {
            return true;
        }
        let Some(net) = self.view.net.clone() else { return false };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (view, word) = (self.view.clone(), token.to_string());
        net.clone().runtime().spawn(async move {
            let deadline = tokio::time::Instant::now() + ASK_FOR;
            let mut asks = tokio::task::JoinSet::new();
            for shard in missing {
                let (view, net, word) = (view.clone(), net.clone(), word.clone());
                asks.spawn(async move {
                    let replicas = view.shard_map().replicas(shard).to_vec();
                    let request = PeerRequest::DialogueWord { word, shard };
                    match hedge::hedged_call(&net, &replicas, request, deadline).await {
                        Ok((_, PeerReply::DialogueWord { known })) => known,
                        Ok((node, other)) => {
                            tracing::warn!(shard, node, reply = ?other, "unexpected reply to a dialogue word lookup");
                            false
                        }
                        Err(error) => {
                            tracing::warn!(shard, error = %error.message, "dialogue word lookup failed");
                            false
                        }
                    }
                });
            }
            let mut known = false;
            while let Some(answer) = asks.join_next().await {
                if answer.unwrap_or(false) {
                    known = true;
                    break;
                }
            }
            let _ = tx.send(known);
        });
        let known = rx.recv_timeout(ASK_FOR + Duration::from_millis(100)).unwrap_or(false);
        if known {
            let mut cache = self.remote_dialogue_words.lock();
            if cache.len() >= CACHE_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(token.to_string(), Instant::now());
        }
        known
    }

    /// Compiles a request (blocking: the embedder may call out over HTTP).
    pub fn plan_blocking(&self, request: &SearchRequest) -> Result<Plan, ApiError> {
        let vocabulary = self.vocabulary();
        let series = self.series_names();
        let known_word = |word: &str| self.is_dialogue_word(word);
        let context = PlanContext {
            vocabulary: &vocabulary,
            series: &series,
            limits: &self.limits,
            defaults: self.defaults,
            embedder: self.embedder.as_deref(),
            known_word: &known_word,
        };
        super::plan::plan(request, &context)
    }

    pub async fn plan(self: &Arc<Self>, request: SearchRequest) -> Result<Plan, ApiError> {
        self.refresh_remote_vocabulary().await;
        let planner = self.clone();
        let deadline = self.view.request_timeout();
        let task = tokio::task::spawn_blocking(move || planner.plan_blocking(&request));
        tokio::time::timeout(deadline, task)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Timeout, "planning the search did not finish in time; retry").with_retry_after(1))?
            .map_err(|e| ApiError::internal(format!("planning failed: {e}")))?
    }
}

/// Whether `shard`'s dialogue holds `token` (one term lookup per segment; blocking).
pub fn shard_has_dialogue_word(shard: &Shard, token: &str) -> bool {
    let term = tantivy::Term::from_field_text(shard.index.fields.dialogue, token);
    shard.index.reader.searcher().doc_freq(&term).is_ok_and(|n| n > 0)
}
