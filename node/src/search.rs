//! Search: plan on the coordinator, execute on each shard, merge.
//!
//! 1. `plan`: validate the request; turn `q` into clauses (quoted text → phrases, names found in
//!    the label vocabulary → exact label clauses, remaining words → one dialogue clause).
//! 2. `search_shard`: each clause becomes a set of (asset, second) hits with a score (Tantivy for
//!    labels, words and phrases; usearch for vectors, mapped from annotations to the seconds they
//!    cover); `intersection` keeps seconds every clause hit, `union` any; consecutive seconds
//!    become clips; the best `per_asset` clips per asset get their evidence from the buckets.
//! 3. `merge`: assets live on exactly one shard, so merging is a sort by score.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use rushes_protocol::codec;
use rushes_protocol::model::{normalize_label, BucketEntryRef, BucketRef, BUCKET_FORMAT};
use rushes_protocol::{
    ApiError, AssetHits, BoolOperator, Clause, Clip, ErrorCode, Filters, Match, SearchMode, SearchRequest, SearchResponse, ShardCounts,
};
use serde::Serialize;
use tantivy::query::{BooleanQuery, BoostQuery, ConstScoreQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery, TermSetQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::Term;

use crate::index::{
    collect_seconds, label_term_text, label_threshold_term_text, tokenize, vector_target, IndexError, DEFAULT_THRESHOLD_PERCENT,
};
use crate::shard::Shard;
use crate::store::StoreError;

pub const DEFAULT_PER_ASSET: usize = 5;
pub const DEFAULT_LIMIT: usize = 20;
/// Label matches below this confidence are noise from detectors unless asked for.
pub const DEFAULT_MIN_CONFIDENCE: f64 = 0.5;
pub const DEFAULT_VECTOR_K: usize = 100;
const MAX_SLOP: u32 = 50;
/// Longest silence a clip may span (10 minutes).
pub const MAX_GAP_MS: u64 = 600_000;
const MAX_MATCHES_PER_CLIP: usize = 50;

/// Words that carry no meaning in a free-text query.
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "in", "on", "at", "of", "with", "and", "or", "to", "is", "are", "was", "were", "be", "by", "for", "from", "into",
    "scene", "scenes", "shot", "shots", "every", "all", "when", "where", "while", "who", "someone", "says", "say", "said", "saying",
    "about", "show", "find", "me", "time", "times", "moment", "moments",
];

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlannedClause {
    Label {
        track: Option<String>,
        label: String,
        min_confidence: f64,
        source: ClauseSource,
    },
    Dialogue {
        tokens: Vec<String>,
        operator: BoolOperator,
        source: ClauseSource,
    },
    Phrase {
        tokens: Vec<String>,
        slop: u32,
        source: ClauseSource,
    },
    Vector {
        space: String,
        dimensions: usize,
        k: usize,
        min_similarity: Option<f64>,
        #[serde(skip)]
        vector: Vec<f32>,
        source: ClauseSource,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClauseSource {
    Clauses,
    Query,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub clauses: Vec<PlannedClause>,
    pub mode: SearchMode,
    pub per_asset: usize,
    pub limit: usize,
    pub filters: Filters,
    pub gap_ms: u64,
    pub min_score: Option<f64>,
    pub evidence: bool,
    /// Words of `q` that became nothing (stop words), for `explain`.
    pub ignored_words: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SearchLimits {
    pub max_clauses: usize,
    pub max_per_asset: usize,
    pub max_limit: usize,
    pub max_query_bytes: usize,
    pub max_vector_k: usize,
    pub vector_spaces: Vec<(String, usize)>,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(field, format!("{field} {}", message.into()))
}

/// Validates a request and compiles it into a plan. `vocabulary`: normalized label → tracks.
pub fn plan(request: &SearchRequest, vocabulary: &BTreeMap<String, Vec<String>>, limits: &SearchLimits) -> Result<Plan, ApiError> {
    let per_asset = request.per_asset.unwrap_or(DEFAULT_PER_ASSET);
    if per_asset == 0 || per_asset > limits.max_per_asset {
        return Err(invalid("per_asset", format!("is {per_asset}; allowed 1..={}", limits.max_per_asset)));
    }
    let limit = request.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > limits.max_limit {
        return Err(invalid("limit", format!("is {limit}; allowed 1..={}", limits.max_limit)));
    }
    let filters = request.filters.clone().unwrap_or_default();
    if let (Some(from), Some(to)) = (filters.from_ms, filters.to_ms) {
        if to <= from {
            return Err(invalid("filters.to_ms", format!("({to}) must be greater than filters.from_ms ({from})")));
        }
    }
    if request.gap_ms.is_some_and(|gap| gap > MAX_GAP_MS) {
        return Err(invalid("gap_ms", format!("is {}; allowed 0..={MAX_GAP_MS}", request.gap_ms.unwrap_or(0))));
    }
    if let Some(min_score) = request.min_score {
        if !min_score.is_finite() {
            return Err(invalid("min_score", "must be a finite number"));
        }
    }
    let mut clauses = Vec::new();
    let mut ignored_words = Vec::new();
    for (i, clause) in request.clauses.iter().flatten().enumerate() {
        clauses.push(plan_clause(clause, i, limits)?);
    }
    if let Some(q) = &request.q {
        if q.len() > limits.max_query_bytes {
            return Err(ApiError::new(ErrorCode::TooLarge, format!("q is {} bytes; the limit is {}", q.len(), limits.max_query_bytes))
                .with_field("q"));
        }
        let (from_q, ignored) = understand_query(q, vocabulary);
        clauses.extend(from_q);
        ignored_words = ignored;
    }
    if clauses.is_empty() {
        return Err(invalid(
            "q",
            "found nothing to search for: give `q` with a name, a place or words (quote a line for a phrase), or structured `clauses`",
        ));
    }
    if clauses.len() > limits.max_clauses {
        return Err(invalid(
            "clauses",
            format!("has {} clauses after understanding q; the limit is {}", clauses.len(), limits.max_clauses),
        ));
    }
    Ok(Plan {
        clauses,
        mode: request.mode.unwrap_or_default(),
        per_asset,
        limit,
        filters,
        gap_ms: request.gap_ms.unwrap_or(0),
        min_score: request.min_score,
        evidence: request.evidence.unwrap_or(true),
        ignored_words,
    })
}

fn plan_clause(clause: &Clause, i: usize, limits: &SearchLimits) -> Result<PlannedClause, ApiError> {
    let field = |name: &str| format!("clauses[{i}].{name}");
    match clause {
        Clause::Label { label, track, min_confidence } => {
            let normalized = normalize_label(label);
            if normalized.is_empty() || normalized.len() > 256 {
                return Err(invalid(&field("label"), "must be 1 to 256 bytes of text"));
            }
            let min_confidence = min_confidence.unwrap_or(DEFAULT_MIN_CONFIDENCE);
            if !(0.0..=1.0).contains(&min_confidence) {
                return Err(invalid(&field("min_confidence"), format!("is {min_confidence}; allowed 0..=1")));
            }
            Ok(PlannedClause::Label { track: track.clone(), label: normalized, min_confidence, source: ClauseSource::Clauses })
        }
        Clause::Dialogue { text, operator } => {
            let tokens = tokenize(text);
            if tokens.is_empty() || text.len() > limits.max_query_bytes {
                return Err(invalid(&field("text"), format!("must hold at least one word and at most {} bytes", limits.max_query_bytes)));
            }
            Ok(PlannedClause::Dialogue { tokens, operator: operator.unwrap_or(BoolOperator::And), source: ClauseSource::Clauses })
        }
        Clause::Phrase { text, slop } => {
            let tokens = tokenize(text);
            if tokens.is_empty() || text.len() > limits.max_query_bytes {
                return Err(invalid(&field("text"), format!("must hold at least one word and at most {} bytes", limits.max_query_bytes)));
            }
            let slop = slop.unwrap_or(0);
            if slop > MAX_SLOP {
                return Err(invalid(&field("slop"), format!("is {slop}; allowed 0..={MAX_SLOP}")));
            }
            Ok(PlannedClause::Phrase { tokens, slop, source: ClauseSource::Clauses })
        }
        Clause::Vector { space, vector, k, min_similarity } => {
            let Some((_, dimensions)) = limits.vector_spaces.iter().find(|(name, _)| name == space) else {
                let known: Vec<&str> = limits.vector_spaces.iter().map(|(n, _)| n.as_str()).collect();
                return Err(invalid(&field("space"), format!("{space:?} is not a configured vector space; configured: {known:?}")));
            };
            if vector.len() != *dimensions {
                return Err(invalid(&field("vector"), format!("has {} dimensions; space {space:?} has {dimensions}", vector.len())));
            }
            if vector.iter().any(|x| !x.is_finite() || !(*x as f32).is_finite()) {
                return Err(invalid(&field("vector"), "must hold finite 32-bit numbers"));
            }
            let k = k.unwrap_or(DEFAULT_VECTOR_K);
            if k == 0 || k > limits.max_vector_k {
                return Err(invalid(&field("k"), format!("is {k}; allowed 1..={}", limits.max_vector_k)));
            }
            if min_similarity.is_some_and(|s| !s.is_finite()) {
                return Err(invalid(&field("min_similarity"), "must be a finite number"));
            }
            Ok(PlannedClause::Vector {
                space: space.clone(),
                dimensions: *dimensions,
                k,
                min_similarity: *min_similarity,
                vector: vector.iter().map(|x| *x as f32).collect(),
                source: ClauseSource::Clauses,
            })
        }
    }
}

/// Free text → clauses: quoted spans are phrases; the longest word sequences (up to 4 words)
/// that are known labels become label clauses; other non-stop words form one dialogue clause
/// matching any of them.
pub fn understand_query(q: &str, vocabulary: &BTreeMap<String, Vec<String>>) -> (Vec<PlannedClause>, Vec<String>) {
    let mut clauses = Vec::new();
    let mut ignored = Vec::new();
    let mut free_text = String::new();
    for (i, part) in q.split('"').enumerate() {
        if i % 2 == 1 {
            let tokens = tokenize(part);
            if !tokens.is_empty() {
                clauses.push(PlannedClause::Phrase { tokens, slop: 0, source: ClauseSource::Query });
            }
        } else {
            free_text.push(' ');
            free_text.push_str(part);
        }
    }
    let words: Vec<String> = free_text
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().trim_matches('\'').to_string())
        .filter(|w| !w.is_empty())
        .collect();
    let mut leftover = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let mut matched = false;
        for n in (1..=4.min(words.len() - i)).rev() {
            let candidate = words[i..i + n].join(" ");
            let singular = candidate.strip_suffix('s').unwrap_or(&candidate).to_string();
            let found = vocabulary
                .get(&candidate)
                .map(|t| (candidate.clone(), t))
                .or_else(|| vocabulary.get(&singular).map(|t| (singular.clone(), t)));
            if let Some((label, tracks)) = found {
                if n == 1 && STOP_WORDS.contains(&label.as_str()) {
                    continue;
                }
                let track = (tracks.len() == 1).then(|| tracks[0].clone());
                clauses.push(PlannedClause::Label { track, label, min_confidence: DEFAULT_MIN_CONFIDENCE, source: ClauseSource::Query });
                i += n;
                matched = true;
                break;
            }
        }
        if !matched {
            if STOP_WORDS.contains(&words[i].as_str()) {
                ignored.push(words[i].clone());
            } else {
                leftover.extend(tokenize(&words[i]));
            }
            i += 1;
        }
    }
    if !leftover.is_empty() {
        clauses.push(PlannedClause::Dialogue { tokens: leftover, operator: BoolOperator::Or, source: ClauseSource::Query });
    }
    (clauses, ignored)
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("usearch: {0}")]
    Vector(String),
}

/// Per clause: asset ordinal → second → score. Vector clauses also keep the annotation ids
/// that hit, with their similarity, for the evidence.
struct ClauseHits {
    /// (hit key, score), sorted by key, one entry per key; see [`hit_key`].
    hits: Vec<(u64, f32)>,
    /// asset id → annotation id → similarity (annotation ids are unique within an asset).
    vector_hits: HashMap<String, HashMap<String, f64>>,
}

/// One key per (asset ordinal, bucket) that sorts by asset, then time: per-asset runs and
/// merge-joins of sorted vectors replace maps of maps (which were most of a query's time).
fn hit_key(asset: u64, second: u64) -> u64 {
    debug_assert!(asset < 1 << 32 && second < 1 << 32);
    (asset << 32) | (second & 0xffff_ffff)
}

fn hit_asset(key: u64) -> u64 {
    key >> 32
}

fn hit_second(key: u64) -> u64 {
    key & 0xffff_ffff
}

/// Sorts hits by key and keeps the best score of each key.
fn sorted_unique(mut hits: Vec<(u64, f32)>) -> Vec<(u64, f32)> {
    hits.sort_unstable_by_key(|h| h.0);
    hits.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = kept.1.max(later.1);
        }
        same
    });
    hits
}

/// Runs a plan on one shard and returns its best clips per asset.
/// One shard's answer: its best `limit` assets, and how many assets had any clip.
/// Phase one of a shard's search: its best `limit` assets with candidate clips scored from
/// the index alone, and the clause hits needed to attach evidence later.
pub struct ShardCandidates {
    /// (index score, asset id, candidate clips best first), best asset first.
    pub ranked: Vec<(f64, String, Vec<Clip>)>,
    /// Assets with any clip on this shard, before `limit`.
    pub total_assets: usize,
    per_clause: Vec<ClauseHits>,
}

pub fn shard_candidates(shard: &Shard, plan: &Plan) -> Result<ShardCandidates, SearchError> {
    let bucket_ms = shard.bucket_ms;
    let allowed = allowed_assets(shard, &plan.filters)?;
    if allowed.as_ref().is_some_and(|a| a.is_empty()) {
        return Ok(ShardCandidates { ranked: vec![], total_assets: 0, per_clause: vec![] });
    }
    let from_bucket = plan.filters.from_ms.map(|ms| ms / bucket_ms).unwrap_or(0);
    let to_bucket = plan.filters.to_ms.map(|ms| ms.div_ceil(bucket_ms)).unwrap_or(u64::MAX);
    let mut per_clause = Vec::with_capacity(plan.clauses.len());
    for clause in &plan.clauses {
        let hits = match clause {
            PlannedClause::Vector { space, k, min_similarity, vector, .. } => {
                vector_clause_hits(shard, space, vector, *k, *min_similarity, allowed.as_ref(), &plan.filters, from_bucket, to_bucket)?
            }
            _ => {
                let query = text_query(
                    shard,
                    clause,
                    allowed.as_ref(),
                    plan.filters.from_ms.is_some() || plan.filters.to_ms.is_some(),
                    from_bucket,
                    to_bucket,
                );
                let label_clause = matches!(clause, PlannedClause::Label { .. });
                let hits = collect_seconds(&shard.index, query.as_ref())?
                    .into_iter()
                    // Labels are exact matches (score 1, refined by confidence in the evidence);
                    // dialogue scores are already in (0, 1] (see `text_query`).
                    .map(|(asset, second, score)| (hit_key(asset, second), if label_clause { 1.0 } else { score.min(1.0) }))
                    .collect();
                ClauseHits { hits: sorted_unique(hits), vector_hits: HashMap::new() }
            }
        };
        per_clause.push(hits);
    }
    // Rank assets on index scores, then load evidence (bucket reads) only for the `limit`
    // best: the merge keeps at most `limit` assets in all, so no shard needs more.
    let mut ranked: Vec<(f64, String, Vec<Clip>)> = Vec::new();
    let combined = combine_hits(&per_clause, plan.mode);
    for run in combined.chunk_by(|a, b| hit_asset(a.0) == hit_asset(b.0)) {
        let Some(asset_id) = shard.store.asset_of_ordinal(hit_asset(run[0].0)) else {
            continue;
        };
        let seconds: Vec<(u64, f32)> = run.iter().map(|&(key, score)| (hit_second(key), score)).collect();
        let mut clips = build_clips(&seconds, plan.gap_ms / bucket_ms, bucket_ms);
        clips.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.start_ms.cmp(&b.start_ms)));
        // Twice as many as returned: confidence weighting and min_score can reorder the top.
        clips.truncate(plan.per_asset * 2);
        ranked.push((clips[0].score, asset_id, clips));
    }
    let total_assets = ranked.len();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    ranked.truncate(plan.limit);
    Ok(ShardCandidates { ranked, total_assets, per_clause })
}

/// Phase two, for the assets the coordinator kept: evidence (bucket reads), confidence
/// weighting, `min_score` and `per_asset`. Only the globally best `limit` assets pay for it.
pub fn finish_assets(
    shard: &Shard,
    plan: &Plan,
    candidates: &ShardCandidates,
    keep: &HashSet<String>,
) -> Result<Vec<AssetHits>, SearchError> {
    let per_clause = &candidates.per_clause;
    let mut assets = Vec::with_capacity(keep.len());
    for (_, asset_id, clips) in candidates.ranked.iter().filter(|(_, id, _)| keep.contains(id)) {
        let asset_id = asset_id.clone();
        let mut finished = Vec::with_capacity(clips.len());
        for clip in clips {
            let mut clip = clip.clone();
            // The clip's score is weighted by the mean confidence of its evidence.
            let evidence = clip_evidence(shard, &asset_id, &clip, plan, per_clause)?;
            if !evidence.is_empty() {
                let mean_confidence = evidence.iter().map(|m| m.confidence).sum::<f64>() / evidence.len() as f64;
                clip.score *= mean_confidence;
            }
            if plan.evidence {
                clip.matches = evidence;
            }
            if plan.min_score.is_some_and(|min| clip.score < min) {
                continue;
            }
            finished.push(clip);
        }
        finished.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.start_ms.cmp(&b.start_ms)));
        finished.truncate(plan.per_asset);
        if finished.is_empty() {
            continue;
        }
        let record = shard.store.asset_record(&asset_id)?.unwrap_or_default();
        assets.push(AssetHits {
            asset_id,
            title: record.title,
            series: record.series,
            season: record.season,
            episode: record.episode,
            score: finished[0].score,
            clips: finished,
        });
    }
    Ok(assets)
}

/// The coordinator's choice between phases: the `limit` best assets over all shards, by
/// index score (ties by asset id), as (shard position, asset ids to finish).
pub fn choose_assets(candidates: &[Option<std::sync::Arc<ShardCandidates>>], limit: usize) -> Vec<HashSet<String>> {
    let mut all: Vec<(f64, &str, usize)> = Vec::new();
    for (position, shard) in candidates.iter().enumerate() {
        for (score, asset_id, _) in shard.iter().flat_map(|c| c.ranked.iter()) {
            all.push((*score, asset_id.as_str(), position));
        }
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut keep: Vec<HashSet<String>> = vec![HashSet::new(); candidates.len()];
    for (_, asset_id, position) in all.into_iter().take(limit) {
        keep[position].insert(asset_id.to_string());
    }
    keep
}

fn allowed_assets(shard: &Shard, filters: &Filters) -> Result<Option<HashSet<u64>>, SearchError> {
    let by_metadata = filters.series.is_some() || filters.season.is_some() || filters.episode.is_some();
    if filters.asset_ids.is_none() && !by_metadata {
        return Ok(None);
    }
    let wanted_ids: Option<HashSet<&str>> = filters.asset_ids.as_ref().map(|ids| ids.iter().map(String::as_str).collect());
    let mut allowed = HashSet::new();
    for (ordinal, asset_id) in shard.store.all_assets() {
        if wanted_ids.as_ref().is_some_and(|ids| !ids.contains(asset_id.as_str())) {
            continue;
        }
        if by_metadata {
            let record = shard.store.asset_record(&asset_id)?.unwrap_or_default();
            if let Some(series) = &filters.series {
                if !record.series.as_ref().is_some_and(|s| series.contains(s)) {
                    continue;
                }
            }
            if filters.season.is_some() && record.season != filters.season {
                continue;
            }
            if filters.episode.is_some() && record.episode != filters.episode {
                continue;
            }
        }
        allowed.insert(ordinal);
    }
    Ok(Some(allowed))
}

fn text_query(
    shard: &Shard,
    clause: &PlannedClause,
    allowed: Option<&HashSet<u64>>,
    has_time_range: bool,
    from_bucket: u64,
    to_bucket: u64,
) -> Box<dyn Query> {
    let fields = shard.index.fields;
    let main: Box<dyn Query> = match clause {
        PlannedClause::Label { track, label, min_confidence, .. } => {
            let lowest_percent = (min_confidence * 100.0 - 1e-9).ceil().max(0.0) as u64;
            if lowest_percent == DEFAULT_THRESHOLD_PERCENT {
                let term = Term::from_field_text(fields.labels, &label_threshold_term_text(track.as_deref(), label));
                Box::new(ConstScoreQuery::new(Box::new(TermQuery::new(term, IndexRecordOption::Basic)), 1.0))
            } else {
                let terms =
                    (lowest_percent..=100).map(|p| Term::from_field_text(fields.labels, &label_term_text(track.as_deref(), label, p)));
                Box::new(TermSetQuery::new(terms))
            }
        }
        PlannedClause::Dialogue { tokens, operator, .. } => {
            // Each word adds a constant share, so a second scores the fraction of the words it
            // holds. Scores then depend on the bucket alone, not on index statistics that change
            // with segment history (BM25 counts deleted documents until a merge): a rebuild from
            // raw gives identical results.
            let occur = if *operator == BoolOperator::And { Occur::Must } else { Occur::Should };
            let share = 1.0 / tokens.len() as f32;
            let parts: Vec<(Occur, Box<dyn Query>)> = tokens
                .iter()
                .map(|t| {
                    let term = TermQuery::new(Term::from_field_text(fields.dialogue, t), IndexRecordOption::Basic);
                    (occur, Box::new(ConstScoreQuery::new(Box::new(term), share)) as Box<dyn Query>)
                })
                .collect();
            Box::new(BooleanQuery::new(parts))
        }
        PlannedClause::Phrase { tokens, slop, .. } => {
            let query: Box<dyn Query> = if tokens.len() == 1 {
                Box::new(TermQuery::new(Term::from_field_text(fields.dialogue, &tokens[0]), IndexRecordOption::Basic))
            } else {
                let mut phrase = PhraseQuery::new(tokens.iter().map(|t| Term::from_field_text(fields.dialogue, t)).collect());
                phrase.set_slop(*slop);
                Box::new(phrase)
            };
            Box::new(ConstScoreQuery::new(query, 1.0))
        }
        PlannedClause::Vector { .. } => unreachable!("vector clauses do not run on Tantivy"),
    };
    let mut filters: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    if let Some(allowed) = allowed {
        let terms = allowed.iter().map(|&o| Term::from_field_u64(fields.asset_ordinal, o));
        filters.push((Occur::Must, Box::new(BoostQuery::new(Box::new(TermSetQuery::new(terms)), 0.0))));
    }
    if has_time_range {
        let upper = if to_bucket == u64::MAX { Bound::Unbounded } else { Bound::Excluded(Term::from_field_u64(fields.second, to_bucket)) };
        let range = RangeQuery::new(Bound::Included(Term::from_field_u64(fields.second, from_bucket)), upper);
        filters.push((Occur::Must, Box::new(BoostQuery::new(Box::new(range), 0.0))));
    }
    if filters.is_empty() {
        return main;
    }
    filters.insert(0, (Occur::Must, main));
    Box::new(BooleanQuery::new(filters))
}

/// Most (asset, bucket) hits one vector clause may expand to (k annotations of up to 24 h).
const VECTOR_HITS_MAX: usize = 2_000_000;

/// The `k` nearest vectors of a space on this shard, restricted to the allowed assets and to
/// annotations overlapping the time filter (inside the ANN search, so k is not spent on hits
/// that would be dropped).
fn nearest_vectors(
    shard: &Shard,
    index: &crate::index::VectorIndex,
    vector: &[f32],
    k: usize,
    allowed: Option<&HashSet<u64>>,
    filters: &Filters,
) -> Result<Vec<(u64, f32)>, SearchError> {
    let store = &shard.store;
    let (from_ms, to_ms) = (filters.from_ms, filters.to_ms);
    let restricted = allowed.is_some() || from_ms.is_some() || to_ms.is_some();
    let predicate = |key: u64| -> bool {
        match vector_target(store, key) {
            Ok(Some(target)) => {
                let in_time = from_ms.is_none_or(|from| target.end_ms > from) && to_ms.is_none_or(|to| target.start_ms < to);
                in_time && allowed.is_none_or(|a| store.asset_ordinal(&target.asset_id).ok().flatten().is_some_and(|o| a.contains(&o)))
            }
            _ => false,
        }
    };
    Ok(if restricted { index.search(vector, k, false, Some(&predicate))? } else { index.search(vector, k, false, None)? })
}

#[allow(clippy::too_many_arguments)]
fn vector_clause_hits(
    shard: &Shard,
    space_name: &str,
    vector: &[f32],
    k: usize,
    min_similarity: Option<f64>,
    allowed: Option<&HashSet<u64>>,
    filters: &Filters,
    from_bucket: u64,
    to_bucket: u64,
) -> Result<ClauseHits, SearchError> {
    let mut second_hits: Vec<(u64, f32)> = Vec::new();
    let mut vector_hits: HashMap<String, HashMap<String, f64>> = HashMap::new();
    let Some(space) = shard.index.vector_space(space_name) else {
        return Ok(ClauseHits { hits: second_hits, vector_hits });
    };
    for (key, distance) in nearest_vectors(shard, space, vector, k, allowed, filters)? {
        let similarity = space.similarity(distance);
        if min_similarity.is_some_and(|min| similarity < min) {
            continue;
        }
        let Some(target) = vector_target(&shard.store, key)? else {
            continue;
        };
        let Some(ordinal) = shard.store.asset_ordinal(&target.asset_id)? else {
            continue;
        };
        let first = (target.start_ms / shard.bucket_ms).max(from_bucket);
        let last = ((target.end_ms - 1) / shard.bucket_ms).min(to_bucket.saturating_sub(1));
        if first > last || second_hits.len() + (last - first + 1) as usize > VECTOR_HITS_MAX {
            continue;
        }
        let score = similarity.max(0.0) as f32;
        second_hits.extend((first..=last).map(|second| (hit_key(ordinal, second), score)));
        vector_hits.entry(target.asset_id).or_default().insert(target.annotation_id, similarity);
    }
    Ok(ClauseHits { hits: sorted_unique(second_hits), vector_hits })
}

/// Similarities of this shard's `k` nearest annotations for a vector clause (the
/// coordinator's first phase, so `k` means the k nearest over the whole cluster).
pub fn shard_vector_similarities(shard: &Shard, plan: &Plan, clause_index: usize) -> Result<Vec<f64>, SearchError> {
    let Some(PlannedClause::Vector { space, k, vector, .. }) = plan.clauses.get(clause_index) else { return Ok(vec![]) };
    let Some(index) = shard.index.vector_space(space) else { return Ok(vec![]) };
    let allowed = allowed_assets(shard, &plan.filters)?;
    if allowed.as_ref().is_some_and(|a| a.is_empty()) {
        return Ok(vec![]);
    }
    let hits = nearest_vectors(shard, index, vector, *k, allowed.as_ref(), &plan.filters)?;
    Ok(hits.into_iter().map(|(_, distance)| index.similarity(distance)).collect())
}

/// Raises each vector clause's `min_similarity` to the k-th best similarity over all shards.
pub fn apply_global_k(plan: &mut Plan, similarities_per_clause: &BTreeMap<usize, Vec<f64>>) {
    for (&clause_index, similarities) in similarities_per_clause {
        let Some(PlannedClause::Vector { k, min_similarity, .. }) = plan.clauses.get_mut(clause_index) else { continue };
        let mut sorted = similarities.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted.len() >= *k {
            let kth = sorted[*k - 1];
            *min_similarity = Some(min_similarity.map_or(kth, |m| m.max(kth)));
        }
    }
}

/// (hit key, summed clause score) for the keys the mode keeps, sorted by key.
fn combine_hits(per_clause: &[ClauseHits], mode: SearchMode) -> Vec<(u64, f32)> {
    let mut lists: Vec<&[(u64, f32)]> = per_clause.iter().map(|c| c.hits.as_slice()).collect();
    match mode {
        SearchMode::Intersection => {
            lists.sort_by_key(|l| l.len());
            let Some((first, rest)) = lists.split_first() else { return vec![] };
            let mut out: Vec<(u64, f32)> = first.to_vec();
            for list in rest {
                // Two-pointer intersection of sorted keys, summing scores.
                let mut kept = Vec::with_capacity(out.len());
                let mut j = 0;
                for &(key, score) in &out {
                    while j < list.len() && list[j].0 < key {
                        j += 1;
                    }
                    if j < list.len() && list[j].0 == key {
                        kept.push((key, score + list[j].1));
                    }
                }
                out = kept;
            }
            out
        }
        SearchMode::Union => {
            let mut all: Vec<(u64, f32)> = lists.iter().flat_map(|l| l.iter().copied()).collect();
            all.sort_unstable_by_key(|h| h.0);
            let mut out: Vec<(u64, f32)> = Vec::with_capacity(all.len());
            for (key, score) in all {
                match out.last_mut() {
                    Some(last) if last.0 == key => last.1 += score,
                    _ => out.push((key, score)),
                }
            }
            out
        }
    }
}

/// Merges seconds whose gap is at most `gap_buckets` into clips. Score: mean second score,
/// slightly favouring longer clips.
/// `seconds` is sorted by second.
pub fn build_clips(seconds: &[(u64, f32)], gap_buckets: u64, bucket_ms: u64) -> Vec<Clip> {
    let mut clips = Vec::new();
    let mut current: Option<(u64, u64, f64, u64)> = None; // first, last, score sum, count
    let finish = |(first, last, sum, count): (u64, u64, f64, u64), clips: &mut Vec<Clip>| {
        let length = (last - first + 1) as f64;
        let mean = sum / count as f64;
        clips.push(Clip {
            start_ms: first * bucket_ms,
            end_ms: (last + 1) * bucket_ms,
            score: mean * (1.0 + 0.1 * length.ln()),
            matches: vec![],
        });
    };
    for &(second, score) in seconds {
        current = match current {
            Some((first, last, sum, count)) if second - last - 1 <= gap_buckets => Some((first, second, sum + f64::from(score), count + 1)),
            Some(done) => {
                finish(done, &mut clips);
                Some((second, second, f64::from(score), 1))
            }
            None => Some((second, second, f64::from(score), 1)),
        };
    }
    if let Some(done) = current {
        finish(done, &mut clips);
    }
    clips
}

/// `normalize_label(raw) == normalized`, without allocating.
fn normalized_equals(raw: &str, normalized: &str) -> bool {
    let mut expected = normalized.chars();
    for (i, word) in raw.split_whitespace().enumerate() {
        if i > 0 && expected.next() != Some(' ') {
            return false;
        }
        for c in word.chars().flat_map(char::to_lowercase) {
            if expected.next() != Some(c) {
                return false;
            }
        }
    }
    expected.next().is_none()
}

fn entry_matches(asset_id: &str, entry: &BucketEntryRef, clause: &PlannedClause, hits: &ClauseHits) -> Option<Option<f64>> {
    match clause {
        PlannedClause::Label { track, label, min_confidence, .. } => {
            let label_ok = entry.label.is_some_and(|l| normalized_equals(l, label));
            let track_ok = track.as_ref().is_none_or(|t| t == entry.track);
            (label_ok && track_ok && entry.confidence >= *min_confidence).then_some(None)
        }
        PlannedClause::Dialogue { tokens, operator, .. } => {
            let text = entry.text?;
            let words: HashSet<String> = tokenize(text).into_iter().collect();
            let ok = match operator {
                BoolOperator::And => tokens.iter().all(|t| words.contains(t)),
                BoolOperator::Or => tokens.iter().any(|t| words.contains(t)),
            };
            ok.then_some(None)
        }
        PlannedClause::Phrase { tokens, .. } => {
            let text = entry.text?;
            let words: HashSet<String> = tokenize(text).into_iter().collect();
            tokens.iter().all(|t| words.contains(t)).then_some(None)
        }
        PlannedClause::Vector { .. } => hits.vector_hits.get(asset_id).and_then(|ids| ids.get(entry.annotation_id)).map(|s| Some(*s)),
    }
}

/// Buckets read per clip for its evidence before falling back to every bucket.
const EVIDENCE_BUCKETS_SAMPLED: u64 = 16;

fn clip_evidence(shard: &Shard, asset_id: &str, clip: &Clip, plan: &Plan, per_clause: &[ClauseHits]) -> Result<Vec<Match>, SearchError> {
    let (first, end) = (clip.start_ms / shard.bucket_ms, clip.end_ms / shard.bucket_ms);
    // A long clip repeats the same annotations in most of its buckets, and evidence is capped:
    // read evenly spaced buckets (first and last included), then everything only if a clause
    // is still without evidence.
    let stride = ((end - first) / EVIDENCE_BUCKETS_SAMPLED).max(1);
    let mut sampled = Vec::new();
    let mut second = first;
    while second < end {
        if let Some(bytes) = shard.store.bucket_bytes(asset_id, second)? {
            sampled.push(bytes);
        }
        second += stride;
    }
    if stride > 1 && end > first {
        if let Some(bytes) = shard.store.bucket_bytes(asset_id, end - 1)? {
            sampled.push(bytes);
        }
    }
    let matches = evidence_from(asset_id, &sampled, plan, per_clause)?;
    let covered: HashSet<usize> = matches.iter().map(|m| m.clause).collect();
    let complete = matches.len() >= MAX_MATCHES_PER_CLIP || (0..plan.clauses.len()).all(|i| covered.contains(&i));
    if stride == 1 || complete || plan.mode == SearchMode::Union && !covered.is_empty() {
        return Ok(matches);
    }
    evidence_from(asset_id, &shard.store.bucket_range_bytes(asset_id, first, end)?, plan, per_clause)
}

/// Matches of encoded buckets against the plan's clauses; strings are borrowed from the
/// buckets and copied only for the annotations that match.
fn evidence_from(asset_id: &str, buckets: &[sled::IVec], plan: &Plan, per_clause: &[ClauseHits]) -> Result<Vec<Match>, SearchError> {
    let decoded: Vec<BucketRef> =
        buckets.iter().map(|bytes| codec::decode_borrowed(BUCKET_FORMAT, bytes)).collect::<Result<_, _>>().map_err(StoreError::from)?;
    // An annotation repeats in every bucket it covers: match it against the clauses once.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut matches = Vec::new();
    for bucket in &decoded {
        for entry in &bucket.entries {
            if !seen.insert(entry.annotation_id) {
                continue;
            }
            for (i, clause) in plan.clauses.iter().enumerate() {
                if matches.len() >= MAX_MATCHES_PER_CLIP {
                    return Ok(matches);
                }
                let Some(similarity) = entry_matches(asset_id, entry, clause, &per_clause[i]) else {
                    continue;
                };
                matches.push(Match {
                    track: entry.track.to_string(),
                    label: entry.label.map(str::to_string),
                    text: entry.text.map(str::to_string),
                    annotation_id: entry.annotation_id.to_string(),
                    confidence: entry.confidence,
                    clause: i,
                    similarity,
                });
            }
        }
    }
    Ok(matches)
}

/// Merges shard results. Each asset lives on one shard, so this is a ranking, not a join.
pub fn merge(mut assets: Vec<AssetHits>, total_assets: usize, limit: usize, shards: ShardCounts, took_ms: u64) -> SearchResponse {
    assets.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.asset_id.cmp(&b.asset_id)));
    assets.truncate(limit);
    SearchResponse { took_ms, shards, total_assets, assets }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocabulary() -> BTreeMap<String, Vec<String>> {
        let mut v = BTreeMap::new();
        v.insert("joey".to_string(), vec!["character".to_string()]);
        v.insert("kitchen".to_string(), vec!["scene".to_string()]);
        v.insert("coffee shop".to_string(), vec!["scene".to_string()]);
        v.insert("coffee mug".to_string(), vec!["object".to_string()]);
        v
    }

    #[test]
    fn query_understanding_finds_labels_phrases_and_words() {
        let (clauses, ignored) = understand_query("Joey in the kitchen", &vocabulary());
        assert_eq!(clauses.len(), 2);
        assert!(matches!(&clauses[0], PlannedClause::Label { label, track: Some(t), .. } if label == "joey" && t == "character"));
        assert!(matches!(&clauses[1], PlannedClause::Label { label, .. } if label == "kitchen"));
        assert_eq!(ignored, vec!["in", "the"]);
        let (clauses, _) = understand_query("Joey at the coffee shop says \"we were on a break\" pizza", &vocabulary());
        assert!(matches!(&clauses[0], PlannedClause::Phrase { tokens, .. } if tokens.join(" ") == "we were on a break"));
        assert!(matches!(&clauses[2], PlannedClause::Label { label, .. } if label == "coffee shop"));
        assert!(matches!(&clauses[3], PlannedClause::Dialogue { tokens, .. } if tokens == &vec!["pizza".to_string()]));
        let (clauses, _) = understand_query("kitchens", &vocabulary());
        assert!(matches!(&clauses[0], PlannedClause::Label { label, .. } if label == "kitchen"));
    }

    #[test]
    fn coordinator_keeps_the_global_best_assets_only() {
        let shard = |assets: &[(f64, &str)]| {
            Some(std::sync::Arc::new(ShardCandidates {
                ranked: assets.iter().map(|(score, id)| (*score, id.to_string(), vec![])).collect(),
                total_assets: assets.len(),
                per_clause: vec![],
            }))
        };
        let candidates = vec![shard(&[(0.9, "a1"), (0.5, "a2")]), None, shard(&[(0.9, "b1"), (0.8, "b2"), (0.1, "b3")])];
        let keep = choose_assets(&candidates, 3);
        let names = |i: usize| {
            let mut v: Vec<&str> = keep[i].iter().map(String::as_str).collect();
            v.sort();
            v
        };
        // Ties on score go to the smaller asset id: a1 before b1.
        assert_eq!((names(0), names(1), names(2)), (vec!["a1"], vec![], vec!["b1", "b2"]));
    }

    #[test]
    fn normalized_comparison_matches_normalize_label() {
        for (raw, normalized) in [("  Central   Perk ", "central perk"), ("JOEY", "joey"), ("Joey", "joe"), ("Jo ey", "joey"), ("", "")] {
            assert_eq!(normalized_equals(raw, normalized), normalize_label(raw) == normalized, "{raw:?} vs {normalized:?}");
        }
    }

    #[test]
    fn clips_merge_consecutive_seconds_with_gap_tolerance() {
        let seconds: Vec<(u64, f32)> = vec![(4, 1.0), (5, 1.0), (6, 1.0), (7, 1.0), (10, 1.0), (12, 1.0)];
        let clips = build_clips(&seconds, 0, 1000);
        assert_eq!(clips.iter().map(|c| (c.start_ms, c.end_ms)).collect::<Vec<_>>(), vec![(4000, 8000), (10000, 11000), (12000, 13000)]);
        let clips = build_clips(&seconds, 1, 1000);
        assert_eq!(clips.iter().map(|c| (c.start_ms, c.end_ms)).collect::<Vec<_>>(), vec![(4000, 8000), (10000, 13000)]);
        assert!(clips[0].score > clips[1].score * 0.99, "longer clip of equal density scores at least as high");
    }

    #[test]
    fn plan_rejects_bad_requests_with_field_names() {
        let limits = SearchLimits {
            max_clauses: 4,
            max_per_asset: 100,
            max_limit: 1000,
            max_query_bytes: 100,
            max_vector_k: 1000,
            vector_spaces: vec![("scene".into(), 3)],
        };
        let vocab = vocabulary();
        let request = |json: serde_json::Value| -> SearchRequest { serde_json::from_value(json).unwrap() };
        let cases = [
            (serde_json::json!({"q": "Joey", "per_asset": 0}), "per_asset"),
            (serde_json::json!({"q": "Joey", "limit": 5000}), "limit"),
            (serde_json::json!({"q": "the in"}), "q"),
            (serde_json::json!({"q": "x".repeat(200)}), "q"),
            (serde_json::json!({"clauses": [{"type": "vector", "space": "scene", "vector": [1, 2]}]}), "clauses[0].vector"),
            (serde_json::json!({"clauses": [{"type": "vector", "space": "faces", "vector": [1, 2, 3]}]}), "clauses[0].space"),
            (serde_json::json!({"clauses": [{"type": "label", "label": "Joey", "min_confidence": 2}]}), "clauses[0].min_confidence"),
            (serde_json::json!({"clauses": [{"type": "phrase", "text": "a b", "slop": 99}]}), "clauses[0].slop"),
            (serde_json::json!({"q": "Joey", "filters": {"from_ms": 10, "to_ms": 5}}), "filters.to_ms"),
        ];
        for (json, field) in cases {
            let err = plan(&request(json.clone()), &vocab, &limits).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{json}: {err:?}");
        }
        assert!(plan(&request(serde_json::json!({"q": "Joey kitchen"})), &vocab, &limits).is_ok());
    }
}
