//! The planner: a search request (free text or clauses) becomes a [`Plan`] with the cluster's
//! vocabularies at hand. It keeps what understanding needs of shards this node lacks (their
//! label vocabularies and series names, refreshed every few seconds, and whether a word is
//! spoken in their dialogue), and the embedder that turns semantic text into query vectors.
//! Labels are matched in normalized form (lower case) but shown as the models spelled them
//! (the most frequent spelling, over this node's shards and, asked with
//! `PeerRequest::Completions`, the shards it lacks): the planner asks those shards for search
//! as you type too ([`Planner::ask_missing_shards`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rushes_cluster::ShardId;
use rushes_config::Config;
use rushes_protocol::model::normalize_label;
use rushes_protocol::peer::{PeerReply, PeerRequest};
use rushes_protocol::{ApiError, ErrorCode, SearchRequest};

use super::embedder::Embedder;
use super::plan::{Leaf, Plan, PlanContext, SearchDefaults, SearchLimits, SpaceInfo};
use crate::node::{shard_options, ClusterView};
use crate::peer::hedge;
use crate::search::vocabulary::{self, add_counts, best_spelling, SpellingCache, SpellingCounts};
use crate::shard::Shard;

/// How long understanding waits for other nodes' spellings of the labels it shows (cosmetic:
/// a label not spelled in time shows in lower case).
const SPELLINGS_ASK_FOR: Duration = Duration::from_millis(500);
/// Spellings learned from other nodes are asked again after this.
const REMOTE_SPELLINGS_CACHED_FOR: Duration = Duration::from_secs(30);
const REMOTE_SPELLINGS_ENTRIES_MAX: usize = 16_384;
/// A shard none of whose replicas could decode `PeerRequest::Completions` (nodes of an earlier
/// version, during a rolling upgrade) is not asked again for this long.
const REFUSED_ASK_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// What to ask the shards this node lacks (see `PeerRequest::Completions`).
#[derive(Debug, Clone, Default)]
pub struct CompletionsAsk {
    /// The word being typed, folded.
    pub prefix: String,
    /// The whole typed text, folded, when it has several words.
    pub whole: String,
    pub limit: u32,
    /// Normalized labels whose spellings are wanted.
    pub labels: Vec<String>,
}

/// A dialogue word as `PeerReply::Completions` carries it: (folded term, spelling, seconds).
pub type WireWord = (String, String, u64);
/// A label as `PeerReply::Completions` carries it: (normalized label, tracks, spellings).
pub type WireLabel = (String, Vec<String>, Vec<(String, u64)>);

/// What the shards this node lacks answered, merged.
#[derive(Debug, Default)]
pub struct RemoteCompletions {
    /// Folded term → (dialogue seconds over those shards, spellings weighted by seconds).
    pub words: HashMap<String, (u64, SpellingCounts)>,
    /// Normalized label → (tracks, spellings).
    pub labels: BTreeMap<String, (Vec<String>, SpellingCounts)>,
    /// Shards that could not answer, and why (the answer leaves out what only they hold).
    pub warnings: Vec<String>,
}

impl RemoteCompletions {
    /// Adds one shard's reply.
    pub fn add(&mut self, words: Vec<WireWord>, labels: Vec<WireLabel>) {
        for (term, spelling, frequency) in words {
            // Nothing from a peer is shown unchecked: a spelling must fold to its word.
            let spelling = if vocabulary::fold(&spelling) == term { spelling } else { term.clone() };
            let entry = self.words.entry(term).or_default();
            entry.0 += frequency;
            *entry.1.entry(spelling).or_insert(0) += frequency.max(1);
        }
        for (label, tracks, spellings) in labels {
            let entry = self.labels.entry(label.clone()).or_default();
            for track in tracks {
                if !entry.0.contains(&track) {
                    entry.0.push(track);
                }
            }
            add_counts(&mut entry.1, spellings.into_iter().filter(|(spelling, _)| normalize_label(spelling) == label));
        }
    }

    /// Records a shard that did not answer: a refusal to decode the request means its replicas
    /// run an earlier version (true is returned: do not ask it again for a while).
    pub fn failed(&mut self, shard: ShardId, error: &ApiError) -> bool {
        // `peer::transport_error`: a request the peer could not decode comes back as
        // "node N refused the request: unreadable request: ...".
        let refused = error.message.contains("unreadable request");
        self.warnings.push(if refused {
            format!("shard {shard}: its replicas run an earlier version that cannot complete dialogue words; words said only there are left out")
        } else {
            format!("shard {shard} did not answer ({}); words said only there are left out", error.message)
        });
        refused
    }
}

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
    /// How this node's shards spell labels and dialogue words (read from their buckets).
    pub spellings: Arc<SpellingCache>,
    /// Normalized label → (learned at, spellings on the shards other nodes hold).
    remote_spellings: parking_lot::Mutex<HashMap<String, (Instant, SpellingCounts)>>,
    /// Shards whose replicas could not decode `PeerRequest::Completions` → when that was seen.
    completions_refused: Arc<parking_lot::Mutex<HashMap<ShardId, Instant>>>,
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
            spellings: Arc::new(SpellingCache::default()),
            remote_spellings: parking_lot::Mutex::new(HashMap::new()),
            completions_refused: Arc::new(parking_lot::Mutex::new(HashMap::new())),
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

    /// Asks one replica of each shard this node lacks (hedged across its replicas, like a
    /// search) what it completes `ask` with, until `deadline`. A shard that fails, or whose
    /// replicas cannot decode the request (an earlier version: then it is left alone for
    /// [`REFUSED_ASK_AGAIN_AFTER`]), is named in the warnings; the others' answers are merged.
    pub async fn ask_missing_shards(
        view: Arc<ClusterView>,
        refused: Arc<parking_lot::Mutex<HashMap<ShardId, Instant>>>,
        ask: CompletionsAsk,
        deadline: tokio::time::Instant,
    ) -> RemoteCompletions {
        let mut merged = RemoteCompletions::default();
        let missing = view.missing_shards();
        if missing.is_empty() {
            return merged;
        }
        let Some(net) = view.net.clone() else {
            merged.warnings.push(format!("shards {missing:?} have no replica on this node and it has no peers"));
            return merged;
        };
        let mut asks = tokio::task::JoinSet::new();
        for shard in missing {
            if refused.lock().get(&shard).is_some_and(|at| at.elapsed() < REFUSED_ASK_AGAIN_AFTER) {
                merged.failed(shard, &ApiError::internal("unreadable request (an earlier version), seen recently"));
                continue;
            }
            let replicas = view.shard_map().replicas(shard).to_vec();
            let request = PeerRequest::Completions {
                shard,
                prefix: ask.prefix.clone(),
                whole: ask.whole.clone(),
                limit: ask.limit,
                labels: ask.labels.clone(),
            };
            let net = net.clone();
            asks.spawn(async move { (shard, hedge::hedged_call(&net, &replicas, request, deadline).await) });
        }
        while let Some(answer) = asks.join_next().await {
            let Ok((shard, answer)) = answer else { continue };
            match answer {
                Ok((_, PeerReply::Completions { words, labels })) => merged.add(words, labels),
                Ok((node, other)) => {
                    let error = ApiError::internal(format!("node {node} answered with `{}`", other.kind()));
                    merged.failed(shard, &error);
                }
                Err(error) => {
                    tracing::debug!(shard, error = %error.message, "completions from another node's replica failed");
                    if merged.failed(shard, &error) {
                        refused.lock().insert(shard, Instant::now());
                    }
                }
            }
        }
        merged
    }

    /// Starts [`Planner::ask_missing_shards`] from a blocking thread (suggest runs on the
    /// blocking pool): the asks run on the peer runtime while the caller reads its own shards,
    /// then [`PendingCompletions::wait`] waits for them until `timeout` has passed.
    pub fn start_asking_missing_shards(&self, ask: CompletionsAsk, timeout: Duration) -> PendingCompletions<'_> {
        if self.view.missing_shards().is_empty() {
            return PendingCompletions { planner: self, answer: None, timeout };
        }
        let Some(net) = self.view.net.clone() else {
            let answer = Err(RemoteCompletions {
                warnings: vec!["some shards have no replica on this node and it has no peers".into()],
                ..Default::default()
            });
            return PendingCompletions { planner: self, answer: Some(answer), timeout };
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (view, refused) = (self.view.clone(), self.completions_refused.clone());
        net.runtime().spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let _ = tx.send(Planner::ask_missing_shards(view, refused, ask, deadline).await);
        });
        PendingCompletions { planner: self, answer: Some(Ok(rx)), timeout }
    }

    /// The whole deadline of a request (`limits.request_timeout_ms`).
    pub fn request_timeout(&self) -> Duration {
        self.view.request_timeout()
    }

    fn remember_remote_spellings(&self, learned: impl IntoIterator<Item = (String, SpellingCounts)>) {
        let mut cache = self.remote_spellings.lock();
        for (label, counts) in learned {
            if cache.len() >= REMOTE_SPELLINGS_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(label, (Instant::now(), counts));
        }
    }

    /// Spellings of `label` on the shards other nodes hold, as last learned (None: not known or
    /// too old).
    pub fn remote_spellings_of(&self, label: &str) -> Option<SpellingCounts> {
        let cache = self.remote_spellings.lock();
        cache.get(label).filter(|(at, _)| at.elapsed() < REMOTE_SPELLINGS_CACHED_FOR).map(|(_, counts)| counts.clone())
    }

    /// How this node's shards spell each of `labels` (blocking: reads buckets).
    pub fn local_label_spellings(&self, labels: &BTreeSet<String>) -> HashMap<String, SpellingCounts> {
        let mut out: HashMap<String, SpellingCounts> = HashMap::new();
        for shard in self.view.shards() {
            for label in labels {
                match vocabulary::label_spellings(&shard, &self.spellings, label) {
                    Ok(counts) => add_counts(out.entry(label.clone()).or_default(), counts),
                    Err(error) => tracing::debug!(shard = shard.id, label, error = %error.message, "reading a label's spellings failed"),
                }
            }
        }
        out
    }

    /// Adds the spellings of `labels` on shards other nodes hold to `counts`: cached ones, and
    /// for labels of their vocabulary not cached, asked until `ask_for` has passed.
    async fn add_remote_label_spellings(&self, labels: &BTreeSet<String>, counts: &mut HashMap<String, SpellingCounts>, ask_for: Duration) {
        if self.view.missing_shards().is_empty() {
            return;
        }
        let mut unknown = Vec::new();
        for label in labels {
            match self.remote_spellings_of(label) {
                Some(remote) => add_counts(counts.entry(label.clone()).or_default(), remote),
                None if self.remote_vocabulary.lock().1.contains_key(label) => unknown.push(label.clone()),
                None => {}
            }
        }
        if unknown.is_empty() {
            return;
        }
        let ask = CompletionsAsk { labels: unknown.clone(), ..Default::default() };
        let deadline = tokio::time::Instant::now() + ask_for.min(self.view.request_timeout());
        let merged = Planner::ask_missing_shards(self.view.clone(), self.completions_refused.clone(), ask, deadline).await;
        // Labels no shard answered for are remembered as unknown too; unless a shard failed,
        // which leaves them to be asked again.
        let complete = merged.warnings.is_empty();
        let mut learned: Vec<(String, SpellingCounts)> = Vec::new();
        for label in unknown {
            match merged.labels.get(&label) {
                Some((_, remote)) => {
                    add_counts(counts.entry(label.clone()).or_default(), remote.clone());
                    learned.push((label, remote.clone()));
                }
                None if complete => learned.push((label, SpellingCounts::new())),
                None => {}
            }
        }
        self.remember_remote_spellings(learned);
    }

    /// How each of `labels` (normalized) is shown: its most frequent spelling over every shard,
    /// or the label itself when no spelling is known.
    pub async fn label_displays(self: &Arc<Self>, labels: BTreeSet<String>) -> HashMap<String, String> {
        if labels.is_empty() {
            return HashMap::new();
        }
        let planner = self.clone();
        let asked = labels.clone();
        let mut counts = tokio::task::spawn_blocking(move || planner.local_label_spellings(&asked)).await.unwrap_or_default();
        self.add_remote_label_spellings(&labels, &mut counts, SPELLINGS_ASK_FOR).await;
        displays(labels, &counts)
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

    /// Plans a request; the labels of its `understanding` are shown as the models spelled them
    /// (the plan's leaves keep the normalized form they match and travel in).
    pub async fn plan(self: &Arc<Self>, request: SearchRequest) -> Result<Plan, ApiError> {
        self.refresh_remote_vocabulary().await;
        let planner = self.clone();
        let deadline = self.view.request_timeout();
        let task = tokio::task::spawn_blocking(move || {
            let plan = planner.plan_blocking(&request)?;
            let labels = plan.understanding.as_ref().map(|u| u.labels()).unwrap_or_default();
            let counts = planner.local_label_spellings(&labels);
            Ok::<_, ApiError>((plan, labels, counts))
        });
        let (mut plan, labels, mut counts) = tokio::time::timeout(deadline, task)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Timeout, "planning the search did not finish in time; retry").with_retry_after(1))?
            .map_err(|e| ApiError::internal(format!("planning failed: {e}")))??;
        if let Some(understood) = plan.understanding.as_mut() {
            self.add_remote_label_spellings(&labels, &mut counts, SPELLINGS_ASK_FOR).await;
            understood.respell(&displays(labels, &counts));
        }
        Ok(plan)
    }

    /// A plan to show (`POST /v1/search/explain`): as [`Planner::plan`], with the label leaves
    /// spelled as the models wrote them too. Never run or sent to another node: leaves match
    /// in normalized form.
    pub async fn explain(self: &Arc<Self>, request: SearchRequest) -> Result<Plan, ApiError> {
        let mut plan = self.plan(request).await?;
        let labels: BTreeSet<String> = plan
            .leaves
            .iter()
            .filter_map(|leaf| match leaf {
                Leaf::Label { label, .. } => Some(label.clone()),
                _ => None,
            })
            .collect();
        let shown = self.label_displays(labels).await;
        for leaf in &mut plan.leaves {
            if let Leaf::Label { label, .. } = leaf {
                if let Some(spelled) = shown.get(label.as_str()) {
                    *label = spelled.clone();
                }
            }
        }
        Ok(plan)
    }
}

/// Completions asked of the shards this node lacks, on their way.
pub struct PendingCompletions<'p> {
    planner: &'p Planner,
    /// None: nothing to ask; an error: the answer already (nobody could be asked).
    answer: Option<Result<std::sync::mpsc::Receiver<RemoteCompletions>, RemoteCompletions>>,
    timeout: Duration,
}

impl PendingCompletions<'_> {
    /// The merged answers (waits at most the timeout given, plus a little for the hand-over).
    pub fn wait(self) -> RemoteCompletions {
        let merged = match self.answer {
            None => return RemoteCompletions::default(),
            Some(Err(merged)) => merged,
            Some(Ok(rx)) => rx.recv_timeout(self.timeout + Duration::from_millis(100)).unwrap_or_else(|_| RemoteCompletions {
                warnings: vec!["the shards held by other nodes did not answer in time; words said only there are left out".into()],
                ..Default::default()
            }),
        };
        self.planner.remember_remote_spellings(merged.labels.iter().map(|(label, (_, counts))| (label.clone(), counts.clone())));
        merged
    }
}

/// Each label's most frequent spelling in `counts`, or the label itself.
fn displays(labels: BTreeSet<String>, counts: &HashMap<String, SpellingCounts>) -> HashMap<String, String> {
    labels
        .into_iter()
        .map(|label| {
            let shown = counts.get(&label).and_then(best_spelling).unwrap_or_else(|| label.clone());
            (label, shown)
        })
        .collect()
}

/// Whether `shard`'s dialogue holds `token` (one term lookup per segment; blocking).
pub fn shard_has_dialogue_word(shard: &Shard, token: &str) -> bool {
    let term = tantivy::Term::from_field_text(shard.index.fields.dialogue, token);
    shard.index.reader.searcher().doc_freq(&term).is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> SpellingCounts {
        pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    #[test]
    fn shards_answers_merge_frequencies_tracks_and_spellings() {
        let mut merged = RemoteCompletions::default();
        merged.add(
            vec![("creme".into(), "crème".into(), 3), ("cremation".into(), "cremation".into(), 1)],
            vec![("zoë".into(), vec!["character".into()], vec![("Zoë".into(), 4), ("ZOË".into(), 1)])],
        );
        merged.add(
            vec![("creme".into(), "creme".into(), 2)],
            vec![("zoë".into(), vec!["character".into(), "voice".into()], vec![("ZOË".into(), 2)])],
        );
        let (frequency, spellings) = &merged.words["creme"];
        assert_eq!(*frequency, 5, "seconds add up over shards");
        assert_eq!(best_spelling(spellings), Some("crème".into()), "spellings weigh by seconds: {spellings:?}");
        let (tracks, spellings) = &merged.labels["zoë"];
        assert_eq!(tracks, &vec!["character".to_string(), "voice".to_string()]);
        assert_eq!(spellings, &counts(&[("ZOË", 3), ("Zoë", 4)]));
        assert!(merged.warnings.is_empty());
    }

    #[test]
    fn a_peer_cannot_show_a_spelling_of_another_word() {
        let mut merged = RemoteCompletions::default();
        merged.add(
            vec![("creme".into(), "<b>free money</b>".into(), 3)],
            vec![("joey".into(), vec!["character".into()], vec![("Ross".into(), 9), ("Joey".into(), 1)])],
        );
        assert_eq!(best_spelling(&merged.words["creme"].1), Some("creme".into()));
        assert_eq!(merged.labels["joey"].1, counts(&[("Joey", 1)]));
    }

    /// A node of an earlier version knows no `Completions` request: it cannot decode it, and
    /// the asker reads that refusal as "an earlier version" (left alone for a while), any other
    /// failure as a shard that did not answer. Either way the shard is named in the warnings.
    #[test]
    fn an_old_peers_refusal_is_told_apart_from_a_failure() {
        // What a peer that does not know a request's variant answers: bincode meets a variant
        // position past its enum's end (here 250, for whatever comes after its last variant).
        let body = [rushes_protocol::peer::PEER_FORMAT, 250, 0, 0];
        let refusal = match crate::peer::decode_request(&body) {
            Err(e) => e,
            Ok(request) => panic!("an unknown variant decoded as {request:?}"),
        };
        assert_eq!(refusal.code, rushes_cluster::transport::WireError::BAD_REQUEST);
        // `peer::transport_error` turns the peer's refusal into this error on the asker's side.
        let error = ApiError::internal(format!("node 2 refused the request: {}", refusal.message));
        let mut merged = RemoteCompletions::default();
        assert!(merged.failed(3, &error), "a refusal to decode is an earlier version");
        assert!(!merged.failed(1, &ApiError::unavailable("node 2: connection refused; retry")), "a node down is not");
        assert!(!merged.failed(0, &ApiError::new(ErrorCode::Timeout, "no replica answered in time")));
        assert_eq!(merged.warnings.len(), 3);
        assert!(merged.warnings[0].contains("shard 3") && merged.warnings[0].contains("earlier version"), "{:?}", merged.warnings);
        assert!(merged.warnings[1].contains("shard 1") && merged.warnings[1].contains("did not answer"), "{:?}", merged.warnings);
        // And this version decodes the request it sends.
        let request = PeerRequest::Completions { shard: 1, prefix: "cre".into(), whole: String::new(), limit: 16, labels: vec![] };
        let body = rushes_protocol::codec::encode(rushes_protocol::peer::PEER_FORMAT, &request).expect("encodes");
        assert!(matches!(crate::peer::decode_request(&body), Ok(PeerRequest::Completions { shard: 1, limit: 16, .. })));
    }

    #[test]
    fn labels_show_their_most_frequent_spelling_or_themselves() {
        let labels: BTreeSet<String> = ["joey", "kitchen", "zoë"].iter().map(|s| s.to_string()).collect();
        let mut known = HashMap::new();
        known.insert("joey".to_string(), counts(&[("Joey", 5), ("joey", 2)]));
        known.insert("zoë".to_string(), counts(&[("Zoë", 1)]));
        let shown = displays(labels, &known);
        assert_eq!(shown["joey"], "Joey");
        assert_eq!(shown["zoë"], "Zoë");
        assert_eq!(shown["kitchen"], "kitchen");
    }
}
