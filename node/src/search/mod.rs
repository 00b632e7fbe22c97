//! Search execution: leaves on each shard, statistics gathered by the coordinator, fusion per
//! second, curation into clips, evidence for the global top assets.
//!
//! 1. `shard_hits` (every shard): each leaf of the plan becomes (asset, second) hits with a raw
//!    score: label confidence, BM25 for dialogue words and phrases (over live documents only, so
//!    a rebuilt index or another replica scores the same), similarity for vectors (approximate,
//!    or exact over the filtered set when the filter leaves too few).
//! 2. `global_stats` (coordinator): per leaf the min and max raw score and the top
//!    `rank_window` scores over all shards, and the k-th best similarity of vector leaves, so
//!    normalization, ranks and k are global, not per shard.
//! 3. `shard_candidates` (every shard): raw scores become fused scores (min-max × weight, or
//!    RRF), the plan's tree combines them per second (`while` = all at once, `any`, `sequence`),
//!    consecutive seconds become clips, assets rank by their best clip.
//! 4. `finish_assets` (only shards holding the global top `limit`): clips snap to shots, get
//!    padding and length bounds, overlaps are suppressed, evidence with highlights is attached.

pub mod sessions;
pub mod vocabulary;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use rushes_protocol::model::{BucketEntryRef, BucketRef};
pub use rushes_protocol::peer::{GlobalStats, LeafStats, LeafSummary, RankedAssets};
use rushes_protocol::{AssetGroup, AssetHits, BoolOperator, Clip, Filters, FusionMethod, GroupBy, Match, SearchResponse, ShardCounts};
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, DisjunctionMaxQuery, EnableScoring, FuzzyTermQuery, Occur, PhraseQuery, Query, RangeQuery,
    TermQuery, TermSetQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::Term;

use crate::query::curate::{self, CurationOptions, RawClip, ScoredSecond};
pub use crate::query::plan::*;
use crate::query::understand::edit_distance_within;
use crate::shard::Shard;
use crate::storage::blocks::{block_of, BucketBlockRef};
use crate::storage::index::{
    best_term_hits, collect_lines_in, collect_seconds_in, every_word_hits, keep_best_of_each_key, label_decile_term_text, label_term_text,
    stem_language, stem_tokens, text_analyzer, tokens_with, top_seconds_in, vector_key, vector_target, Fields, IndexError, LiveStatistics,
    VectorMetric,
};
use crate::storage::store::StoreError;

const MAX_MATCHES_PER_CLIP: usize = 50;
/// A stem or fuzzy match counts less than the word itself.
const STEM_BOOST: f32 = 0.8;
const FUZZY_BOOST: f32 = 0.5;
/// A phrase found across two lines counts a little less than within one.
const BRIDGE_BOOST: f32 = 0.9;
/// Min-max normalization maps into [FLOOR, 1]: the weakest hit is still a hit.
const NORMALIZED_FLOOR: f32 = 0.1;
/// Most (asset, bucket) hits one vector leaf may expand to (k annotations of up to 24 h).
const VECTOR_HITS_MAX: usize = 2_000_000;

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

/// One key per (asset ordinal, bucket) that sorts by asset, then time: per-asset runs and
/// merge-joins of sorted vectors replace maps of maps.
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

/// Sorts hits by key and keeps the best score of each key. Hits come per segment in document
/// order, and documents were added asset by asset in time order: the stable sort merges those
/// ascending runs instead of sorting from scratch.
fn sorted_unique(mut hits: Vec<(u64, f32)>) -> Vec<(u64, f32)> {
    hits.sort_by_key(|h| h.0);
    keep_best_of_each_key(&mut hits);
    hits
}

/// One leaf's hits on one shard.
#[derive(Default)]
pub struct LeafHits {
    /// (hit key, raw score), sorted by key, one entry per key.
    /// Shared with `LeafHitsCache` for cached label leaves (copied only if narrowed).
    hits: Arc<Vec<(u64, f32)>>,
    /// Vector leaves: asset id → annotation id → similarity.
    vector_hits: HashMap<String, HashMap<String, f64>>,
    /// A cached label leaf: its key in `LeafHitsCache`, under which the shard keeps what it
    /// derives from these hits ([`LeafRankings`]).
    cached_as: Option<String>,
    /// (min, max) of the raw scores, when already known.
    score_range: Option<(f32, f32)>,
}

/// Most label leaves a shard keeps rankings for, and rankings per leaf (one per normalization
/// and curation seen: a name searched alone and as suggest's moments share one).
const RANKED_LEAVES_MAX: usize = 256;
const RANKINGS_PER_LEAF_MAX: usize = 4;

/// Every asset a plan of one leaf matched on a shard, by its best clip, best first (ties by
/// asset id): (score, asset id, the asset's range in the leaf's hits).
type AssetRanking = Vec<(f64, String, std::ops::Range<usize>)>;

/// What decides a ranking of cached hits besides the hits: the weighted fusion's normalization
/// (compared as bits, so only the very same normalization matches) and the curation options.
#[derive(Clone, Copy, PartialEq)]
struct RankingKey {
    min_bits: u32,
    max_bits: u32,
    weight_bits: u32,
    options: CurationOptions,
}

/// What a shard derived from the merged hits of its cached label leaves, kept while the cache
/// serves those same hits (the same allocation: a new searcher generation merges new ones):
/// their score range, and their assets ranked by best clip under each normalization seen.
/// At 2,000 hours a cast member's label matches some 360,000 seconds a shard over about a
/// thousand assets; the pass over them and an asset id lookup per asset were most of a label
/// query, and the same names come back all day (the suggest warm-up searches each label as
/// soon as the data settles).
#[derive(Default)]
pub struct LeafRankings {
    leaves: parking_lot::Mutex<HashMap<String, DerivedFromHits>>,
}

struct DerivedFromHits {
    /// Weak: a `Weak` keeps its allocation, so no later list can share the address.
    hits: std::sync::Weak<Vec<(u64, f32)>>,
    score_range: Option<(f32, f32)>,
    rankings: Vec<(RankingKey, Arc<AssetRanking>)>,
}

impl LeafRankings {
    /// Runs `f` on what is derived from `hits` under `leaf` (emptied if it was derived from
    /// other hits).
    fn with<R>(&self, leaf: &str, hits: &Arc<Vec<(u64, f32)>>, f: impl FnOnce(&mut DerivedFromHits) -> R) -> R {
        let mut leaves = self.leaves.lock();
        if leaves.len() >= RANKED_LEAVES_MAX && !leaves.contains_key(leaf) {
            leaves.retain(|_, derived| derived.hits.strong_count() > 0);
            if leaves.len() >= RANKED_LEAVES_MAX {
                leaves.clear();
            }
        }
        let fresh = || DerivedFromHits { hits: Arc::downgrade(hits), score_range: None, rankings: Vec::new() };
        let derived = leaves.entry(leaf.to_string()).or_insert_with(fresh);
        if !std::ptr::eq(derived.hits.as_ptr(), Arc::as_ptr(hits)) {
            *derived = fresh();
        }
        f(derived)
    }

    /// (min, max) of the hits' scores (`None` when there are none).
    fn score_range(&self, leaf: &str, hits: &Arc<Vec<(u64, f32)>>) -> Option<(f32, f32)> {
        if let Some(range) = self.with(leaf, hits, |derived| derived.score_range) {
            return Some(range);
        }
        let range = score_range(hits)?;
        self.with(leaf, hits, |derived| derived.score_range = Some(range));
        Some(range)
    }

    fn ranking(&self, leaf: &str, hits: &Arc<Vec<(u64, f32)>>, key: &RankingKey) -> Option<Arc<AssetRanking>> {
        self.with(leaf, hits, |derived| derived.rankings.iter().find(|(k, _)| k == key).map(|(_, ranking)| ranking.clone()))
    }

    fn keep_ranking(&self, leaf: &str, hits: &Arc<Vec<(u64, f32)>>, key: RankingKey, ranking: Arc<AssetRanking>) {
        self.with(leaf, hits, |derived| {
            if derived.rankings.len() >= RANKINGS_PER_LEAF_MAX {
                derived.rankings.remove(0);
            }
            derived.rankings.retain(|(k, _)| *k != key);
            derived.rankings.push((key, ranking));
        })
    }
}

/// (min, max) of the scores in one branch-free pass (`None` for no hits).
fn score_range(hits: &[(u64, f32)]) -> Option<(f32, f32)> {
    if hits.is_empty() {
        return None;
    }
    Some(hits.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(min, max), &(_, score)| (min.min(score), max.max(score))))
}

/// Phase one of a shard: every leaf's hits.
pub struct ShardHits {
    leaves: Vec<LeafHits>,
}

pub fn shard_hits(shard: &Shard, plan: &Plan) -> Result<ShardHits, SearchError> {
    let bucket_ms = shard.bucket_ms;
    let allowed = allowed_assets(shard, &plan.filters)?;
    if allowed.as_ref().is_some_and(|a| a.is_empty()) {
        return Ok(ShardHits { leaves: plan.leaves.iter().map(|_| LeafHits::default()).collect() });
    }
    let from_bucket = plan.filters.from_ms.map(|ms| ms / bucket_ms).unwrap_or(0);
    let to_bucket = plan.filters.to_ms.map(|ms| ms.div_ceil(bucket_ms)).unwrap_or(u64::MAX);
    let has_time_range = plan.filters.from_ms.is_some() || plan.filters.to_ms.is_some();
    let mut leaves = Vec::with_capacity(plan.leaves.len());
    for leaf in &plan.leaves {
        let hits = match leaf {
            Leaf::Vector { .. } => vector_leaf_hits(shard, leaf, plan, allowed.as_ref(), from_bucket, to_bucket)?,
            _ => {
                let searcher = shard.index.reader.searcher();
                // Unfiltered labels repeat across queries (see `LeafHitsCache`): keyed by
                // what decides their hits, whatever the clause's weight or origin.
                let cache_key = match leaf {
                    Leaf::Label { track, label, min_confidence, .. } if allowed.is_none() && !has_time_range => {
                        Some(format!("{track:?}\u{0}{label}\u{0}{min_confidence}"))
                    }
                    _ => None,
                };
                match (cache_key, leaf) {
                    // Segment by segment, so hits of unchanged segments outlive commits.
                    (Some(key), Leaf::Label { track, label, min_confidence, .. }) => {
                        let fields = shard.index.fields;
                        let terms = label_terms(&fields, track.as_deref(), label, *min_confidence);
                        let hits = shard
                            .index
                            .leaf_hits
                            .hits_by_segment(&searcher, &key, |_, reader| best_term_hits(reader, fields.labels, &terms, hit_key))?;
                        let score_range = shard.leaf_rankings.score_range(&key, &hits);
                        LeafHits { hits, vector_hits: HashMap::new(), cached_as: Some(key), score_range }
                    }
                    // A bounded search (a preview) takes the best seconds instead, below.
                    (None, Leaf::Words { operator: BoolOperator::And, .. }) if plan.text_hits_max.is_none() => {
                        let hits = all_words_hits(shard, &searcher, leaf, allowed.as_ref(), has_time_range, from_bucket, to_bucket)?;
                        LeafHits { hits: Arc::new(hits), ..Default::default() }
                    }
                    (None, Leaf::Phrase { .. }) => {
                        let range = has_time_range.then_some((from_bucket, to_bucket));
                        let hits = phrase_hits(shard, &searcher, leaf, allowed.as_ref(), range, plan.text_hits_max)?;
                        LeafHits { hits: Arc::new(hits), ..Default::default() }
                    }
                    _ => {
                        let query = text_query(shard, leaf, allowed.as_ref(), has_time_range, from_bucket, to_bucket);
                        let seconds = match (plan.text_hits_max, leaf) {
                            (Some(limit), Leaf::Words { .. }) => top_seconds_in(&shard.index, &searcher, query.as_ref(), limit)?,
                            _ => collect_seconds_in(&shard.index, &searcher, query.as_ref())?,
                        };
                        let hits = seconds
                            .into_iter()
                            .filter(|(_, _, score)| score.is_finite() && *score > 0.0)
                            .map(|(asset, second, score)| (hit_key(asset, second), score))
                            .collect();
                        LeafHits { hits: Arc::new(sorted_unique(hits)), ..Default::default() }
                    }
                }
            }
        };
        leaves.push(hits);
    }
    Ok(ShardHits { leaves })
}

pub fn summarize(hits: &ShardHits, plan: &Plan) -> Vec<LeafSummary> {
    hits.leaves
        .iter()
        .zip(&plan.leaves)
        .map(|(leaf_hits, leaf)| {
            let mut summary = LeafSummary::default();
            // A cast member's list is some 360,000 seconds a shard: its range is kept with it.
            if let Some((min, max)) = leaf_hits.score_range.or_else(|| score_range(&leaf_hits.hits)) {
                summary.min = Some(min);
                summary.max = Some(max);
            }
            if plan.fusion.method == FusionMethod::Rrf {
                summary.top = top_descending(leaf_hits.hits.iter().map(|h| h.1).collect(), plan.fusion.rank_window);
            }
            if let Leaf::Vector { k, .. } = leaf {
                let all: Vec<f64> = leaf_hits.vector_hits.values().flat_map(|m| m.values().copied()).collect();
                let mut all = all;
                all.sort_by(|a, b| b.total_cmp(a));
                all.truncate(*k);
                summary.similarities = all;
            }
            summary
        })
        .collect()
}

fn top_descending(mut scores: Vec<f32>, window: usize) -> Vec<f32> {
    if scores.len() > window {
        scores.select_nth_unstable_by(window - 1, |a, b| b.total_cmp(a));
        scores.truncate(window);
    }
    scores.sort_by(|a, b| b.total_cmp(a));
    scores
}

/// Merges the shards' summaries (a failed shard's is simply missing).
pub fn global_stats(plan: &Plan, summaries: &[Vec<LeafSummary>]) -> GlobalStats {
    let leaves = plan
        .leaves
        .iter()
        .enumerate()
        .map(|(i, leaf)| {
            let parts: Vec<&LeafSummary> = summaries.iter().filter_map(|s| s.get(i)).collect();
            let mut min_similarity = None;
            if let Leaf::Vector { k, min_similarity: wanted, .. } = leaf {
                let mut all: Vec<f64> = parts.iter().flat_map(|p| p.similarities.iter().copied()).collect();
                all.sort_by(|a, b| b.total_cmp(a));
                // k means the k nearest over the whole cluster.
                let kth = (all.len() >= *k).then(|| all[*k - 1]);
                min_similarity = match (kth, wanted) {
                    (Some(kth), Some(wanted)) => Some(kth.max(*wanted)),
                    (kth, wanted) => kth.or(*wanted),
                };
            }
            let mut min = parts.iter().filter_map(|p| p.min).fold(f32::INFINITY, f32::min);
            let max = parts.iter().filter_map(|p| p.max).fold(f32::NEG_INFINITY, f32::max);
            if let Some(floor) = min_similarity {
                min = min.max(floor as f32);
            }
            let top = top_descending(parts.iter().flat_map(|p| p.top.iter().copied()).collect(), plan.fusion.rank_window);
            LeafStats { min, max, top, min_similarity }
        })
        .collect();
    GlobalStats { leaves }
}

/// Phase two of a shard: its best `limit` assets (after the cursor) with candidate clips.
pub struct ShardCandidates {
    /// (score, asset id, candidate clips best first), best asset first.
    pub ranked: Vec<(f64, String, Vec<RawClip>)>,
    /// Assets with any clip on this shard (whatever the cursor).
    pub total_assets: usize,
    /// Assets after the cursor, before `limit`.
    pub remaining_assets: usize,
    /// Matched seconds of the ranked assets (for max_length windows).
    seconds: HashMap<String, Vec<ScoredSecond>>,
    /// The hits that survived the global statistics, per leaf (for evidence).
    leaf_hits: Vec<LeafHits>,
    min_similarity: Vec<Option<f64>>,
}

pub fn shard_candidates(shard: &Shard, plan: &Plan, hits: ShardHits, stats: &GlobalStats) -> Result<ShardCandidates, SearchError> {
    let bucket_ms = shard.bucket_ms;
    let mut leaf_hits = hits.leaves;
    let leaf_stats: Vec<LeafStats> = (0..plan.leaves.len()).map(|i| stats.leaves.get(i).cloned().unwrap_or_default()).collect();
    for (raw, stat) in leaf_hits.iter_mut().zip(&leaf_stats) {
        if let Some(floor) = stat.min_similarity {
            Arc::make_mut(&mut raw.hits).retain(|h| reaches_similarity(f64::from(h.1), floor));
            for annotations in raw.vector_hits.values_mut() {
                annotations.retain(|_, s| reaches_similarity(*s, floor));
            }
        }
    }
    let options = curation_options(plan, bucket_ms, None);
    // A plan of one leaf (a name, a phrase) ranks that leaf's hits as they are, each score
    // fused as it is read: at 2,000 hours a cast member's list is some 360,000 seconds a
    // shard, and a fused copy of it cost a write and a read of all of them. Any other plan
    // fuses every leaf's list and combines them along its tree.
    let single_leaf = match &plan.root {
        PlanNode::Leaf { leaf } if *leaf < leaf_hits.len() => Some(*leaf),
        _ => None,
    };
    let combined: Vec<(u64, f32)>;
    let (source, fuse): (&[(u64, f32)], Option<(&LeafStats, f32)>) = match single_leaf {
        Some(i) => (leaf_hits[i].hits.as_slice(), Some((&leaf_stats[i], plan.leaves[i].weight() as f32))),
        None => {
            let lists: Vec<&[(u64, f32)]> = leaf_hits.iter().zip(&plan.leaves).map(|(raw, _)| raw.hits.as_slice()).collect();
            let fuse = |leaf: usize, score: f32| match (leaf_stats.get(leaf), plan.leaves.get(leaf)) {
                (Some(stat), Some(planned)) => fused_score(plan, stat, planned.weight() as f32, score),
                _ => score,
            };
            combined = evaluate(&plan.root, &lists, &fuse, &options);
            (combined.as_slice(), None)
        }
    };
    let score_of = |raw: f32| match fuse {
        Some((stat, weight)) => fused_score(plan, stat, weight, raw),
        None => raw,
    };
    let to_seconds = |run: &[(u64, f32)]| -> Vec<ScoredSecond> {
        run.iter().map(|&(key, score)| ScoredSecond { second: hit_second(key), score: score_of(score) }).collect()
    };
    // Every matched asset is ranked by its best clip in one pass over its seconds; clips are
    // built only for the `limit` kept (at 2,000 hours a common label matches some 360,000
    // seconds of a shard, over hundreds of assets). A cached label's ranking is kept with its
    // hits, per normalization and curation (`LeafRankings`).
    let rank_all = || -> AssetRanking {
        let mut ranking = Vec::new();
        let mut run_start = 0;
        for run in source.chunk_by(|a, b| hit_asset(a.0) == hit_asset(b.0)) {
            let range = run_start..run_start + run.len();
            run_start = range.end;
            let Some(asset_id) = shard.store.asset_of_ordinal(hit_asset(run[0].0)) else { continue };
            let seconds = run.iter().map(|&(key, score)| ScoredSecond { second: hit_second(key), score: score_of(score) });
            let best = match curate::best_clip_score(seconds, &options) {
                Ok(best) => best,
                Err(curate::NotAscending) => curate::build_clips(&to_seconds(run), &options).iter().map(|c| c.score).reduce(f64::max),
            };
            if let Some(score) = best {
                ranking.push((score, asset_id, range));
            }
        }
        ranking.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        ranking
    };
    let kept_ranking = match (single_leaf, fuse) {
        (Some(i), Some((stat, weight))) if plan.fusion.method == FusionMethod::Weighted => leaf_hits[i].cached_as.as_deref().map(|leaf| {
            let key = RankingKey { min_bits: stat.min.to_bits(), max_bits: stat.max.to_bits(), weight_bits: weight.to_bits(), options };
            (leaf, &leaf_hits[i].hits, key)
        }),
        _ => None,
    };
    let ranking: Arc<AssetRanking> = match kept_ranking {
        Some((leaf, hits, key)) => match shard.leaf_rankings.ranking(leaf, hits, &key) {
            Some(ranking) => ranking,
            None => {
                let ranking = Arc::new(rank_all());
                shard.leaf_rankings.keep_ranking(leaf, hits, key, ranking.clone());
                ranking
            }
        },
        None => Arc::new(rank_all()),
    };
    // The best clip decides whether any clip reaches `min_score`.
    let reaching = ranking.iter().filter(|(score, _, _)| plan.min_score.is_none_or(|min| *score >= min));
    let total_assets = reaching.clone().count();
    let after_cursor = reaching.filter(|(score, asset_id, _)| plan.cursor.as_ref().is_none_or(|c| c.is_before(*score, asset_id)));
    let remaining_assets = after_cursor.clone().count();
    let mut ranked: Vec<(f64, String, Vec<RawClip>)> = Vec::with_capacity(plan.limit.min(remaining_assets));
    let mut seconds_of: HashMap<String, Vec<ScoredSecond>> = HashMap::with_capacity(plan.limit.min(remaining_assets));
    for (score, asset_id, range) in after_cursor.take(plan.limit) {
        let (score, asset_id) = (*score, asset_id.clone());
        let seconds = to_seconds(&source[range.clone()]);
        let mut clips = curate::build_clips(&seconds, &options);
        if let Some(min) = plan.min_score {
            clips.retain(|c| c.score >= min);
        }
        clips.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.start_ms.cmp(&b.start_ms)));
        // Snapping can merge neighbours into one clip: keep spares for overlap suppression.
        clips.truncate(plan.per_asset * 3);
        seconds_of.insert(asset_id.clone(), seconds);
        ranked.push((score, asset_id, clips));
    }
    let min_similarity = stats.leaves.iter().map(|s| s.min_similarity).collect();
    Ok(ShardCandidates { ranked, total_assets, remaining_assets, seconds: seconds_of, leaf_hits, min_similarity })
}

/// A leaf's raw score as the fusion method weighs it: min-max normalized into
/// [`NORMALIZED_FLOOR`, 1] times the weight, or the weight over the rank constant plus its
/// global rank (0 past the rank window).
fn fused_score(plan: &Plan, stat: &LeafStats, weight: f32, score: f32) -> f32 {
    match plan.fusion.method {
        FusionMethod::Weighted => {
            let normalized = if stat.max > stat.min {
                NORMALIZED_FLOOR + (1.0 - NORMALIZED_FLOOR) * ((score - stat.min) / (stat.max - stat.min)).clamp(0.0, 1.0)
            } else {
                1.0
            };
            normalized * weight
        }
        FusionMethod::Rrf => {
            let rank = stat.top.partition_point(|&t| t > score) + 1;
            if rank > plan.fusion.rank_window {
                0.0
            } else {
                weight / (plan.fusion.rank_constant as f32 + rank as f32)
            }
        }
    }
}

fn curation_options(plan: &Plan, bucket_ms: u64, asset_duration_ms: Option<u64>) -> CurationOptions {
    CurationOptions {
        bucket_ms,
        gap_ms: plan.curation.gap_ms,
        padding_ms: plan.curation.padding_ms,
        min_length_ms: plan.curation.min_length_ms,
        max_length_ms: plan.curation.max_length_ms,
        snap_to_shots: plan.curation.snap_to_shots,
        asset_duration_ms,
    }
}

/// Combines the leaves' hits along the plan tree, each leaf's scores fused (`fuse(leaf, raw)`)
/// as they are read. A leaf's list is copied only where a combination needs a list of its
/// own; an intersection reads its leaves in place and fuses only the seconds every part
/// holds: at 2,000 hours "Joey in the kitchen" intersects two lists of some 360,000 seconds a
/// shard, and fused copies of both cost twice what the intersection does.
fn evaluate(node: &PlanNode, leaves: &[&[(u64, f32)]], fuse: &dyn Fn(usize, f32) -> f32, options: &CurationOptions) -> Vec<(u64, f32)> {
    let fused = |leaf: usize| leaves.get(leaf).into_iter().flat_map(|list| list.iter()).map(move |&(key, score)| (key, fuse(leaf, score)));
    match node {
        PlanNode::Leaf { leaf } => fused(*leaf).collect(),
        PlanNode::While { nodes } => {
            let mut parts: Vec<Part> = nodes
                .iter()
                .map(|n| match n {
                    PlanNode::Leaf { leaf } => Part::InPlace(*leaf, leaves.get(*leaf).copied().unwrap_or(&[])),
                    other => Part::Combined(evaluate(other, leaves, fuse, options)),
                })
                .collect();
            // Smallest first (stable: equal sizes keep the plan's order, so sums add up in
            // the same order whatever the parts are).
            parts.sort_by_key(Part::len);
            let mut parts = parts.into_iter();
            let mut out = match parts.next() {
                None => return vec![],
                Some(Part::Combined(list)) => list,
                Some(Part::InPlace(leaf, _)) => fused(leaf).collect(),
            };
            for part in parts {
                let (list, leaf) = match &part {
                    Part::InPlace(leaf, list) => (*list, Some(*leaf)),
                    Part::Combined(list) => (list.as_slice(), None),
                };
                // Two-pointer intersection of sorted keys, summing scores.
                let mut kept = Vec::with_capacity(out.len());
                let mut j = 0;
                for &(key, score) in &out {
                    while j < list.len() && list[j].0 < key {
                        j += 1;
                    }
                    if j < list.len() && list[j].0 == key {
                        let other = match leaf {
                            Some(leaf) => fuse(leaf, list[j].1),
                            None => list[j].1,
                        };
                        kept.push((key, score + other));
                    }
                }
                out = kept;
            }
            out
        }
        PlanNode::Any { nodes } => {
            let mut all: Vec<(u64, f32)> = Vec::new();
            for n in nodes {
                match n {
                    PlanNode::Leaf { leaf } => all.extend(fused(*leaf)),
                    other => all.extend(evaluate(other, leaves, fuse, options)),
                }
            }
            // Each part is sorted by key: the stable sort merges those runs, O(n log parts).
            all.sort_by_key(|h| h.0);
            let mut out: Vec<(u64, f32)> = Vec::with_capacity(all.len());
            for (key, score) in all {
                match out.last_mut() {
                    Some(last) if last.0 == key => last.1 += score,
                    _ => out.push((key, score)),
                }
            }
            out
        }
        PlanNode::Sequence { first, then, within_ms } => {
            let a = evaluate(first, leaves, fuse, options);
            let b = evaluate(then, leaves, fuse, options);
            let mut out = Vec::new();
            let mut b_runs = b.chunk_by(|x, y| hit_asset(x.0) == hit_asset(y.0)).peekable();
            for a_run in a.chunk_by(|x, y| hit_asset(x.0) == hit_asset(y.0)) {
                let asset = hit_asset(a_run[0].0);
                while b_runs.peek().is_some_and(|r| hit_asset(r[0].0) < asset) {
                    b_runs.next();
                }
                let Some(b_run) = b_runs.peek().filter(|r| hit_asset(r[0].0) == asset) else { continue };
                let to_seconds = |run: &[(u64, f32)]| -> Vec<ScoredSecond> {
                    run.iter().map(|&(key, score)| ScoredSecond { second: hit_second(key), score }).collect()
                };
                let seconds = curate::sequence_seconds(&to_seconds(a_run), &to_seconds(b_run), *within_ms, options);
                out.extend(seconds.into_iter().map(|s| (hit_key(asset, s.second), s.score)));
            }
            out
        }
    }
}

/// One part of an intersection: a leaf's list, read in place and fused as read, or what a
/// combination below it gave (fused already).
enum Part<'a> {
    InPlace(usize, &'a [(u64, f32)]),
    Combined(Vec<(u64, f32)>),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::InPlace(_, list) => list.len(),
            Part::Combined(list) => list.len(),
        }
    }
}

/// Phase three, for the assets the coordinator kept: clip shaping (shots, padding, length),
/// overlap suppression, `per_asset`, evidence.
pub fn finish_assets(
    shard: &Shard,
    plan: &Plan,
    candidates: &ShardCandidates,
    keep: &HashSet<String>,
) -> Result<Vec<AssetHits>, SearchError> {
    let mut assets = Vec::with_capacity(keep.len());
    for (score, asset_id, clips) in candidates.ranked.iter().filter(|(_, id, _)| keep.contains(id)) {
        let record = shard.store.asset_record(asset_id)?.unwrap_or_default();
        let options = curation_options(plan, shard.bucket_ms, record.duration_ms);
        let seconds = candidates.seconds.get(asset_id).map(Vec::as_slice).unwrap_or(&[]);
        let mut shaped = Vec::with_capacity(clips.len());
        for clip in clips {
            let mut clip = clip.clone();
            let matched_score = clip.score;
            if plan.curation.snap_to_shots {
                let shots = shots_around(shard, asset_id, &clip)?;
                curate::snap_to_shots(&mut clip, &shots);
            }
            curate::shape(&mut clip, seconds, &options);
            // The score is the matched seconds' (stable across pages), whatever the shape.
            clip.score = matched_score;
            shaped.push(clip);
        }
        let mut kept = curate::suppress_overlaps(shaped);
        kept.truncate(plan.per_asset);
        let mut finished = Vec::with_capacity(kept.len());
        for clip in kept {
            let matches = if plan.evidence { clip_evidence(shard, asset_id, &clip, plan, candidates)? } else { vec![] };
            finished.push(Clip { start_ms: clip.start_ms, end_ms: clip.end_ms, score: clip.score, matches });
        }
        if finished.is_empty() {
            continue;
        }
        assets.push(AssetHits {
            asset_id: asset_id.clone(),
            title: record.title,
            series: record.series,
            season: record.season,
            episode: record.episode,
            score: *score,
            clips: finished,
        });
    }
    Ok(assets)
}

/// Shot annotations covering the first and last matched second of a clip.
fn shots_around(shard: &Shard, asset_id: &str, clip: &RawClip) -> Result<Vec<(u64, u64)>, SearchError> {
    let mut shots = Vec::new();
    for second in [clip.first_second, clip.last_second] {
        let Some(bytes) = shard.store.bucket_block_bytes(asset_id, second)? else { continue };
        let Some(bucket) = BucketBlockRef::decode(&bytes).map_err(StoreError::from)?.bucket(second) else { continue };
        for entry in bucket.entries.iter().filter(|e| e.track == "shot") {
            if let Some(shot) = shard.store.annotation(asset_id, entry.annotation_id)? {
                shots.push((shot.start_ms, shot.end_ms));
            }
        }
    }
    shots.sort_unstable();
    shots.dedup();
    Ok(shots)
}

/// The coordinator's choice between phases: the `limit` best assets over all shards (ties by
/// asset id), as the asset ids to finish per shard position.
impl ShardCandidates {
    pub fn ranked_assets(&self) -> RankedAssets {
        RankedAssets {
            ranked: self.ranked.iter().map(|(score, asset_id, _)| (*score, asset_id.clone())).collect(),
            total_assets: self.total_assets,
            remaining_assets: self.remaining_assets,
        }
    }
}

/// The global top `limit` assets over every shard's ranking: which assets each shard finishes.
pub fn choose_assets(shards: &[Option<RankedAssets>], limit: usize) -> Vec<HashSet<String>> {
    let mut all: Vec<(f64, &str, usize)> = Vec::new();
    for (position, shard) in shards.iter().enumerate() {
        for (score, asset_id) in shard.iter().flat_map(|c| c.ranked.iter()) {
            all.push((*score, asset_id.as_str(), position));
        }
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut keep: Vec<HashSet<String>> = vec![HashSet::new(); shards.len()];
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
                let lowered: Option<String> = record.series.as_ref().map(|s| s.to_lowercase());
                if !lowered.is_some_and(|s| series.iter().any(|wanted| wanted.to_lowercase() == s)) {
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

/// One word of a dialogue clause: the word, its stems, and words within `edits`.
fn word_query(shard: &Shard, word: &str, stems: &[(usize, &str)], edits: u32) -> Box<dyn Query> {
    let mut alternatives = word_alternatives(shard, word, stems, edits);
    // The word alone scores as the best of one (exactly: the max plus nothing), and a plain
    // term lets tantivy skip blocks when only the best seconds are wanted.
    match alternatives.len() {
        1 => alternatives.remove(0),
        _ => Box::new(DisjunctionMaxQuery::new(alternatives)),
    }
}

/// What [`word_query`] takes the best of.
fn word_alternatives(shard: &Shard, word: &str, stems: &[(usize, &str)], edits: u32) -> Vec<Box<dyn Query>> {
    let fields = shard.index.fields;
    let mut alternatives: Vec<Box<dyn Query>> =
        vec![Box::new(TermQuery::new(Term::from_field_text(fields.dialogue, word), IndexRecordOption::WithFreqs))];
    for &(position, stem) in stems {
        let term = TermQuery::new(Term::from_field_text(fields.dialogue_stemmed[position], stem), IndexRecordOption::WithFreqs);
        alternatives.push(Box::new(BoostQuery::new(Box::new(term), STEM_BOOST)));
    }
    if edits > 0 {
        let fuzzy = FuzzyTermQuery::new(Term::from_field_text(fields.dialogue, word), edits.min(2) as u8, true);
        alternatives.push(Box::new(BoostQuery::new(Box::new(fuzzy), FUZZY_BOOST)));
    }
    alternatives
}

/// The seconds of an `and` words leaf, scored as its [`text_query`] scores them (see
/// [`every_word_hits`]), sorted by key.
fn all_words_hits(
    shard: &Shard,
    searcher: &tantivy::Searcher,
    leaf: &Leaf,
    allowed: Option<&HashSet<u64>>,
    has_time_range: bool,
    from_bucket: u64,
    to_bucket: u64,
) -> Result<Vec<(u64, f32)>, SearchError> {
    let Leaf::Words { words, fuzziness, stems, .. } = leaf else { return Ok(Vec::new()) };
    let statistics = LiveStatistics { searcher, cache: &shard.index.statistics };
    let scoring = EnableScoring::enabled_from_statistics_provider(&statistics, searcher);
    let mut weights = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let word_stems: Vec<(usize, &str)> = stems.iter().map(|(p, s)| (*p, s[i].as_str())).collect();
        let alternatives = word_alternatives(shard, word, &word_stems, fuzziness.get(i).copied().unwrap_or(0));
        weights.push(alternatives.iter().map(|query| query.weight(scoring)).collect::<tantivy::Result<Vec<_>>>()?);
    }
    let keep = |asset: u64, second: u64| {
        allowed.is_none_or(|a| a.contains(&asset)) && (!has_time_range || (from_bucket..to_bucket).contains(&second))
    };
    let mut hits = Vec::new();
    for reader in searcher.segment_readers() {
        let columns = shard.index.columns.of(reader)?;
        hits.extend(every_word_hits(reader, &columns, &weights, keep, hit_key)?);
    }
    Ok(sorted_unique(hits))
}

fn phrase_query(field: tantivy::schema::Field, words: &[String], slop: u32) -> Box<dyn Query> {
    if words.len() == 1 {
        return Box::new(TermQuery::new(Term::from_field_text(field, &words[0]), IndexRecordOption::WithFreqs));
    }
    let mut phrase = PhraseQuery::new(words.iter().map(|t| Term::from_field_text(field, t)).collect());
    phrase.set_slop(slop);
    Box::new(phrase)
}

/// The terms of a label leaf and the score each gives a second (its confidence): exact
/// percents up to the next decile, then one term per decile; a second scores its best term.
fn label_terms(fields: &Fields, track: Option<&str>, label: &str, min_confidence: f64) -> Vec<(Term, f32)> {
    let lowest_percent = (min_confidence * 100.0 - 1e-9).ceil().clamp(0.0, 100.0) as u64;
    let first_decile = lowest_percent.div_ceil(10);
    let mut terms = Vec::new();
    for percent in lowest_percent..(first_decile * 10).min(101) {
        let term = Term::from_field_text(fields.labels, &label_term_text(track, label, percent));
        terms.push((term, (percent as f32 / 100.0).max(0.01)));
    }
    for decile in first_decile..=9 {
        let term = Term::from_field_text(fields.labels, &label_decile_term_text(track, label, decile));
        terms.push((term, (decile as f32 * 10.0 + 5.0) / 100.0));
    }
    if lowest_percent == 100 {
        // 100 % lives in decile 9 together with 90..99: only the exact term.
        terms.truncate(1);
    }
    terms
}

/// A label or words leaf as one tantivy query (phrases: [`phrase_hits`]). `shard_hits` sends
/// `and` words leaves to [`all_words_hits`] instead, which scores them as the `Must` form built
/// here would.
fn text_query(
    shard: &Shard,
    leaf: &Leaf,
    allowed: Option<&HashSet<u64>>,
    has_time_range: bool,
    from_bucket: u64,
    to_bucket: u64,
) -> Box<dyn Query> {
    let fields = shard.index.fields;
    let main: Box<dyn Query> = match leaf {
        Leaf::Label { track, label, min_confidence, .. } => {
            let alternatives: Vec<Box<dyn Query>> = label_terms(&fields, track.as_deref(), label, *min_confidence)
                .into_iter()
                .map(|(term, score)| -> Box<dyn Query> {
                    Box::new(ConstScoreQuery::new(Box::new(TermQuery::new(term, IndexRecordOption::Basic)), score))
                })
                .collect();
            Box::new(DisjunctionMaxQuery::new(alternatives))
        }
        Leaf::Words { words, fuzziness, operator, stems, minimum_should_match, .. } => {
            let occur = if *operator == BoolOperator::And { Occur::Must } else { Occur::Should };
            let parts: Vec<(Occur, Box<dyn Query>)> = words
                .iter()
                .enumerate()
                .map(|(i, word)| {
                    let word_stems: Vec<(usize, &str)> = stems.iter().map(|(p, s)| (*p, s[i].as_str())).collect();
                    (occur, word_query(shard, word, &word_stems, fuzziness.get(i).copied().unwrap_or(0)))
                })
                .collect();
            if occur == Occur::Should && *minimum_should_match > 1 {
                Box::new(BooleanQuery::with_minimum_required_clauses(parts, *minimum_should_match))
            } else if parts.len() == 1 {
                // One word scores as itself (a sum of one), and a bare term query is pruned
                // block by block when only the best seconds are wanted.
                parts.into_iter().map(|(_, query)| query).next().unwrap_or_else(|| Box::new(tantivy::query::EmptyQuery))
            } else {
                Box::new(BooleanQuery::new(parts))
            }
        }
        Leaf::Phrase { .. } | Leaf::Vector { .. } => Box::new(tantivy::query::EmptyQuery),
    };
    let range = has_time_range.then_some((from_bucket, to_bucket));
    filtered(&fields, main, allowed, range)
}

/// `query` on the allowed assets' documents only, and on seconds in `[from, to)` (buckets).
fn filtered(fields: &Fields, query: Box<dyn Query>, allowed: Option<&HashSet<u64>>, range: Option<(u64, u64)>) -> Box<dyn Query> {
    let mut filters: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    if let Some(allowed) = allowed {
        let terms = allowed.iter().map(|&o| Term::from_field_u64(fields.asset_ordinal, o));
        filters.push((Occur::Must, Box::new(BoostQuery::new(Box::new(TermSetQuery::new(terms)), 0.0))));
    }
    if let Some((from_bucket, to_bucket)) = range {
        let upper = if to_bucket == u64::MAX { Bound::Unbounded } else { Bound::Excluded(Term::from_field_u64(fields.second, to_bucket)) };
        let range = RangeQuery::new(Bound::Included(Term::from_field_u64(fields.second, from_bucket)), upper);
        filters.push((Occur::Must, Box::new(BoostQuery::new(Box::new(range), 0.0))));
    }
    if filters.is_empty() {
        return query;
    }
    filters.insert(0, (Occur::Must, query));
    Box::new(BooleanQuery::new(filters))
}

/// A phrase leaf's (hit key, score), sorted by key: each line that says it (exactly, or
/// stemmed for less) scores once and gives that score to every second it covers, and a phrase
/// running across a line break scores the first second of the later line (for a little less).
/// Lines are matched where they start, so a time range filters their seconds, not the match.
/// With `limit`, the `limit` best seconds of the best lines and crossings.
///
/// Positions are read once per line: indexed at every second a line covers (some five), they
/// were read at each, and a phrase's p99 at 2,000 hours fell by about 40% without that.
fn phrase_hits(
    shard: &Shard,
    searcher: &tantivy::Searcher,
    leaf: &Leaf,
    allowed: Option<&HashSet<u64>>,
    range: Option<(u64, u64)>,
    limit: Option<usize>,
) -> Result<Vec<(u64, f32)>, SearchError> {
    let Leaf::Phrase { words, slop, stems, .. } = leaf else { return Ok(Vec::new()) };
    let fields = shard.index.fields;
    let mut alternatives: Vec<Box<dyn Query>> = vec![phrase_query(fields.dialogue_line, words, *slop)];
    for (position, stemmed) in stems {
        alternatives.push(Box::new(BoostQuery::new(phrase_query(fields.dialogue_line_stemmed[*position], stemmed, *slop), STEM_BOOST)));
    }
    let lines = filtered(&fields, Box::new(DisjunctionMaxQuery::new(alternatives)), allowed, None);
    let mut hits = Vec::new();
    for (asset, first, last, score) in collect_lines_in(&shard.index, searcher, lines.as_ref(), limit)? {
        let (from, to) = range.map_or((first, last), |(from, to)| (first.max(from), last.min(to.saturating_sub(1))));
        hits.extend((from..=to).map(|second| (hit_key(asset, second), score)));
    }
    if words.len() > 1 {
        // Only phrases that cross the line break: a phrase inside the previous line already
        // matches that line's own seconds.
        let crossing = BooleanQuery::new(vec![
            (Occur::Must, phrase_query(fields.dialogue_bridge, words, *slop)),
            (Occur::MustNot, phrase_query(fields.dialogue_before, words, *slop)),
        ]);
        let crossing = filtered(&fields, Box::new(BoostQuery::new(Box::new(crossing), BRIDGE_BOOST)), allowed, range);
        let seconds = match limit {
            Some(limit) => top_seconds_in(&shard.index, searcher, crossing.as_ref(), limit)?,
            None => collect_seconds_in(&shard.index, searcher, crossing.as_ref())?,
        };
        hits.extend(seconds.into_iter().map(|(asset, second, score)| (hit_key(asset, second), score)));
    }
    hits.retain(|(_, score)| score.is_finite() && *score > 0.0);
    let mut hits = sorted_unique(hits);
    if let Some(limit) = limit.filter(|&limit| hits.len() > limit) {
        hits.select_nth_unstable_by(limit - 1, |a, b| b.1.total_cmp(&a.1));
        hits.truncate(limit);
        hits.sort_unstable_by_key(|hit| hit.0);
    }
    Ok(hits)
}

/// Similarity in "bigger is better" form, as usearch's distance would give: cosine and inner
/// product similarity, or minus the squared L2 distance.
pub fn exact_similarity(metric: VectorMetric, a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    match metric {
        VectorMetric::InnerProduct => dot,
        VectorMetric::Cosine => {
            let norm_a: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let norm_b: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            if norm_a == 0.0 || norm_b == 0.0 {
                0.0
            } else {
                dot / (norm_a * norm_b)
            }
        }
        VectorMetric::L2 => -a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>(),
    }
}

/// At most this many allowed assets: a vector leaf scans their vectors exactly first.
const FEW_ASSETS: usize = 16;

/// (asset id, annotation id, similarity, start_ms, end_ms) of one vector hit.
type VectorHit = (String, String, f64, u64, u64);

/// Brute force over the vectors of the allowed assets (all assets when unrestricted), in any
/// metric. `None` when more than `max_candidates` vectors would be scanned.
fn exact_vector_search(
    shard: &Shard,
    space: &str,
    query: &[f32],
    metric: VectorMetric,
    k: usize,
    allowed: Option<&HashSet<u64>>,
    filters: &Filters,
    max_candidates: Option<usize>,
) -> Result<Option<Vec<VectorHit>>, SearchError> {
    let mut scanned = 0usize;
    let mut hits: Vec<VectorHit> = Vec::new();
    for (ordinal, asset_id) in shard.store.all_assets() {
        if allowed.is_some_and(|a| !a.contains(&ordinal)) {
            continue;
        }
        for (annotation, vector) in shard.store.asset_vectors(&asset_id)? {
            scanned += 1;
            if max_candidates.is_some_and(|max| scanned > max) {
                return Ok(None);
            }
            if annotation.vector_space.as_deref() != Some(space) || vector.len() != query.len() {
                continue;
            }
            let in_time =
                filters.from_ms.is_none_or(|from| annotation.end_ms > from) && filters.to_ms.is_none_or(|to| annotation.start_ms < to);
            if !in_time {
                continue;
            }
            let similarity = exact_similarity(metric, query, &vector);
            hits.push((asset_id.clone(), annotation.id, similarity, annotation.start_ms, annotation.end_ms));
        }
    }
    hits.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
    hits.truncate(k);
    Ok(Some(hits))
}

/// The `k` nearest vectors of a leaf on this shard: approximate (filters inside the ANN
/// search), or exact when asked, when the metric differs from the index's, or when a
/// restrictive filter left the ANN search with fewer than k.
fn nearest_vectors(shard: &Shard, leaf: &Leaf, plan: &Plan, allowed: Option<&HashSet<u64>>) -> Result<Vec<VectorHit>, SearchError> {
    let Leaf::Vector { space, k, exact, ef, metric, vector, min_similarity, .. } = leaf else { return Ok(vec![]) };
    let Some(index) = shard.index.vector_space(space) else { return Ok(vec![]) };
    let filters = &plan.filters;
    if *exact || *metric != index.spec.metric {
        return Ok(exact_vector_search(shard, space, vector, *metric, *k, allowed, filters, None)?.unwrap_or_default());
    }
    // A filter to a few assets: their vectors scanned exactly cost what those assets hold,
    // where HNSW with a predicate visits (and looks up) a large part of the shard's graph.
    if allowed.is_some_and(|a| a.len() <= FEW_ASSETS) {
        if let Some(hits) =
            exact_vector_search(shard, space, vector, *metric, *k, allowed, filters, Some(plan.exact_vector_max_candidates))?
        {
            return Ok(hits);
        }
    }
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
    // HNSW explores max(ef, count) candidates: asking for more results widens the search.
    let count = ef.map_or(*k, |ef| ef.max(*k));
    let mut found = match (restricted, min_similarity, ef) {
        (true, _, _) => index.search(vector, count, false, Some(&predicate))?,
        // Asked for a sizeable part of the index, HNSW measures more distances than the index
        // holds vectors: a scan is cheaper, and exact.
        (false, _, _) if count.saturating_mul(SCAN_WHEN_COUNT_TIMES) >= index.len() => match index.scan(vector, count, *min_similarity) {
            Some(found) => found,
            None => index.search(vector, count, true, None)?,
        },
        (false, Some(floor), None) => floored_search(*k, *floor, |d| index.similarity(d), |n| index.search(vector, n, false, None))?,
        (false, _, _) => index.search(vector, count, false, None)?,
    };
    found.truncate(*k);
    if restricted && found.len() < *k.min(&index.len()) {
        if let Some(hits) =
            exact_vector_search(shard, space, vector, *metric, *k, allowed, filters, Some(plan.exact_vector_max_candidates))?
        {
            return Ok(hits);
        }
    }
    let mut hits = Vec::with_capacity(found.len());
    for (key, distance) in found {
        let similarity = index.similarity(distance);
        // Below the clause's floor the hit would be dropped anyway: skip its store lookup
        // (most of a large k is usually below it).
        if min_similarity.is_some_and(|min| similarity < min) {
            continue;
        }
        let Some(target) = vector_target(store, key)? else { continue };
        hits.push((target.asset_id, target.annotation_id, similarity, target.start_ms, target.end_ms));
    }
    Ok(hits)
}

/// An unrestricted vector search whose count times this reaches the index's size scans it
/// instead of searching HNSW: HNSW measures about connectivity (16) x 2 distances per candidate
/// it keeps, so beyond n / 32 candidates it measures more than a scan of all n. At 2,000 hours
/// a free-text leaf (up to 10,000 of some 32,000 scenes per shard) spent a fifth of the query in
/// HNSW; the semantic leaf's scan costs a fraction of that.
const SCAN_WHEN_COUNT_TIMES: usize = 32;

/// First count of a floored, unrestricted ANN search. Free-text leaves ask for up to
/// `max_vector_k` (10,000) hits above a floor most vectors miss, and HNSW's cost grows with
/// the count: start where a typical query's above-floor hits fit, widen only if they may not.
const FLOORED_FIRST_COUNT: usize = 256;
/// Each wider floored search asks for this many times the previous count.
const FLOORED_GROWTH: usize = 4;

/// `search(count)` (nearest first, as distances) with counts growing up to `k` while a full
/// answer's least similar hit still reaches `floor`; returns the last answer. That is what one
/// search with the final count gives, so as approximate as the ANN search itself: a narrower
/// search ending below the floor may miss an above-floor vector a wider one would find.
fn floored_search<E>(
    k: usize,
    floor: f64,
    similarity: impl Fn(f32) -> f64,
    mut search: impl FnMut(usize) -> Result<Vec<(u64, f32)>, E>,
) -> Result<Vec<(u64, f32)>, E> {
    let mut count = k.min(FLOORED_FIRST_COUNT);
    loop {
        let found = search(count)?;
        // Fewer than asked: the index holds no more.
        let wider =
            count < k && found.len() >= count && found.last().is_some_and(|&(_, distance)| reaches_similarity(similarity(distance), floor));
        if !wider {
            return Ok(found);
        }
        count = count.saturating_mul(FLOORED_GROWTH).min(k);
    }
}

fn vector_leaf_hits(
    shard: &Shard,
    leaf: &Leaf,
    plan: &Plan,
    allowed: Option<&HashSet<u64>>,
    from_bucket: u64,
    to_bucket: u64,
) -> Result<LeafHits, SearchError> {
    let Leaf::Vector { min_similarity, .. } = leaf else { return Ok(LeafHits::default()) };
    // (ordinal, first, last, score): a few thousand, where their seconds are ~a million.
    let mut intervals: Vec<(u64, u64, u64, f32)> = Vec::new();
    let mut expanded = 0usize;
    let mut vector_hits: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for (asset_id, annotation_id, similarity, start_ms, end_ms) in nearest_vectors(shard, leaf, plan, allowed)? {
        if min_similarity.is_some_and(|min| similarity < min) {
            continue;
        }
        let Some(ordinal) = shard.store.asset_ordinal(&asset_id)? else { continue };
        let first = (start_ms / shard.bucket_ms).max(from_bucket);
        let last = (end_ms.saturating_sub(1) / shard.bucket_ms).min(to_bucket.saturating_sub(1));
        if first > last || expanded + (last - first + 1) as usize > VECTOR_HITS_MAX {
            continue;
        }
        // Raw scores must be positive hits; shift l2 (negative) similarities by nothing here:
        // normalization and ranks only compare them.
        let score = similarity as f32;
        expanded += (last - first + 1) as usize;
        intervals.push((ordinal, first, last, score));
        vector_hits.entry(asset_id).or_default().insert(annotation_id, similarity);
    }
    Ok(LeafHits { hits: Arc::new(expand_intervals(intervals)), vector_hits, ..Default::default() })
}

/// `sorted_unique` of every (hit key of each second in first..=last, score), without sorting
/// the seconds: intervals sort by start, each run of overlapping ones fills one buffer.
fn expand_intervals(mut intervals: Vec<(u64, u64, u64, f32)>) -> Vec<(u64, f32)> {
    intervals.sort_unstable_by_key(|&(ordinal, first, _, _)| (ordinal, first));
    let mut out: Vec<(u64, f32)> = Vec::new();
    let mut run: Vec<f32> = Vec::new();
    let mut i = 0;
    while i < intervals.len() {
        let (ordinal, start, mut end, _) = intervals[i];
        let mut j = i + 1;
        while j < intervals.len() && intervals[j].0 == ordinal && intervals[j].1 <= end {
            end = end.max(intervals[j].2);
            j += 1;
        }
        // Every second of start..=end is covered; NaN only seeds the max as sorted_unique's
        // fold would (f32::max ignores NaN).
        run.clear();
        run.resize((end - start + 1) as usize, f32::NAN);
        for &(_, first, last, score) in &intervals[i..j] {
            for slot in &mut run[(first - start) as usize..=(last - start) as usize] {
                *slot = slot.max(score);
            }
        }
        out.extend(run.iter().enumerate().map(|(offset, &score)| (hit_key(ordinal, start + offset as u64), score)));
        i = j;
    }
    out
}

/// Second scores are stored as f32, annotation similarities as f64: compare both at f32
/// precision so the k-th nearest itself is never dropped by rounding.
fn reaches_similarity(similarity: f64, floor: f64) -> bool {
    similarity as f32 >= floor as f32
}

/// Folded tokens of `text` that match a dialogue leaf, as byte ranges; empty when none.
fn highlight(text: &str, language: Option<&str>, leaf: &Leaf) -> Vec<[usize; 2]> {
    let (words, fuzziness, stems): (&[String], Option<&[u32]>, &[(usize, Vec<String>)]) = match leaf {
        Leaf::Words { words, fuzziness, stems, .. } => (words, Some(fuzziness), stems),
        Leaf::Phrase { words, stems, .. } => (words, None, stems),
        _ => return vec![],
    };
    let position = language.and_then(stem_language);
    let query_stems: Option<&Vec<String>> = position.and_then(|p| stems.iter().find(|(q, _)| *q == p).map(|(_, s)| s));
    let text_stems: Option<Vec<String>> = position.map(|p| stem_tokens(p, text));
    let mut out = Vec::new();
    for (i, (token, range)) in tokens_with(&mut text_analyzer(), text).into_iter().enumerate() {
        let matched = words.iter().enumerate().any(|(w, word)| {
            if token == *word {
                return true;
            }
            let stem_match = match (query_stems, &text_stems) {
                (Some(q), Some(t)) => t.get(i).is_some_and(|s| q.get(w) == Some(s)),
                _ => false,
            };
            let edits = fuzziness.and_then(|f| f.get(w)).copied().unwrap_or(0);
            stem_match || (edits > 0 && edit_distance_within(&token, word, edits).is_some())
        });
        if matched {
            out.push(range);
        }
    }
    out
}

/// Whether a bucket entry satisfies a leaf: Some(similarity for vectors) when it does.
fn entry_matches(
    asset_id: &str,
    entry: &BucketEntryRef,
    leaf: &Leaf,
    hits: &LeafHits,
    min_similarity: Option<f64>,
) -> Option<(Option<f64>, Vec<[usize; 2]>)> {
    match leaf {
        Leaf::Label { track, label, min_confidence, .. } => {
            let label_ok = entry.label.is_some_and(|l| normalized_equals(l, label));
            let track_ok = track.as_ref().is_none_or(|t| t == entry.track);
            (label_ok && track_ok && entry.confidence >= *min_confidence).then_some((None, vec![]))
        }
        Leaf::Words { .. } | Leaf::Phrase { .. } => {
            let highlights = highlight(entry.text?, entry.language, leaf);
            (!highlights.is_empty()).then_some((None, highlights))
        }
        Leaf::Vector { .. } => {
            let similarity = *hits.vector_hits.get(asset_id)?.get(entry.annotation_id)?;
            (min_similarity.is_none_or(|m| reaches_similarity(similarity, m))).then_some((Some(similarity), vec![]))
        }
    }
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

/// Buckets read per clip for its evidence before falling back to every bucket.
const EVIDENCE_BUCKETS_SAMPLED: u64 = 16;

fn clip_evidence(
    shard: &Shard,
    asset_id: &str,
    clip: &RawClip,
    plan: &Plan,
    candidates: &ShardCandidates,
) -> Result<Vec<Match>, SearchError> {
    // Evidence comes from the matched seconds, not from padding or snapped shot edges.
    let (first, end) = (clip.first_second, clip.last_second + 1);
    // A long clip repeats the same annotations in most of its buckets, and evidence is capped:
    // read evenly spaced buckets (first and last included), then everything only if a leaf
    // is still without evidence.
    let stride = ((end - first) / EVIDENCE_BUCKETS_SAMPLED).max(1);
    let mut seconds: Vec<u64> = (first..end).step_by(stride as usize).collect();
    if stride > 1 {
        seconds.push(end - 1);
    }
    // Sampled seconds share blocks: read each block once.
    let mut blocks: BTreeMap<u64, sled::IVec> = BTreeMap::new();
    for &second in &seconds {
        if let std::collections::btree_map::Entry::Vacant(slot) = blocks.entry(block_of(second)) {
            if let Some(bytes) = shard.store.bucket_block_bytes(asset_id, second)? {
                slot.insert(bytes);
            }
        }
    }
    let decoded = decode_blocks(blocks.iter().map(|(number, bytes)| (*number, bytes)))?;
    let sampled: Vec<BucketRef> =
        seconds.iter().filter_map(|&second| decoded.get(&block_of(second)).and_then(|block| block.bucket(second))).collect();
    let matches = evidence_from(asset_id, &sampled, plan, candidates)?;
    let covered: HashSet<usize> = matches.iter().map(|m| m.clause).collect();
    let complete = matches.len() >= MAX_MATCHES_PER_CLIP || (0..plan.leaves.len()).all(|i| covered.contains(&i));
    if stride == 1 || complete || !matches!(plan.root, PlanNode::While { .. }) && !covered.is_empty() {
        return Ok(matches);
    }
    let all = shard.store.bucket_block_range_bytes(asset_id, first, end)?;
    let decoded = decode_blocks(all.iter().map(|(number, bytes)| (*number, bytes)))?;
    let every: Vec<BucketRef> = decoded.iter().flat_map(|(number, block)| block.buckets(*number, first, end)).map(|(_, b)| b).collect();
    evidence_from(asset_id, &every, plan, candidates)
}

/// Blocks decoded without copying their strings, by block number.
fn decode_blocks<'a>(blocks: impl Iterator<Item = (u64, &'a sled::IVec)>) -> Result<BTreeMap<u64, BucketBlockRef<'a>>, SearchError> {
    blocks.map(|(number, bytes)| Ok((number, BucketBlockRef::decode(bytes).map_err(StoreError::from)?))).collect()
}

/// Matches of buckets against the plan's leaves; strings are borrowed from the stored blocks
/// and copied only for the annotations that match.
fn evidence_from(asset_id: &str, decoded: &[BucketRef], plan: &Plan, candidates: &ShardCandidates) -> Result<Vec<Match>, SearchError> {
    // An annotation repeats in every bucket it covers: match it against the leaves once.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut matches = Vec::new();
    let empty = LeafHits::default();
    for bucket in decoded {
        for entry in &bucket.entries {
            if !seen.insert(entry.annotation_id) {
                continue;
            }
            for (i, leaf) in plan.leaves.iter().enumerate() {
                if matches.len() >= MAX_MATCHES_PER_CLIP {
                    return Ok(matches);
                }
                let hits = candidates.leaf_hits.get(i).unwrap_or(&empty);
                let min_similarity = candidates.min_similarity.get(i).copied().flatten();
                let Some((similarity, highlights)) = entry_matches(asset_id, entry, leaf, hits, min_similarity) else { continue };
                matches.push(Match {
                    track: entry.track.to_string(),
                    label: entry.label.map(str::to_string),
                    text: entry.text.map(str::to_string),
                    annotation_id: entry.annotation_id.to_string(),
                    confidence: entry.confidence,
                    clause: i,
                    similarity,
                    highlights,
                });
            }
        }
    }
    Ok(matches)
}

/// Merges shard results into one page: assets rank by score, then asset id; `next_cursor`
/// when more assets follow; groups when asked.
pub fn merge(mut assets: Vec<AssetHits>, totals: (usize, usize), plan: &Plan, shards: ShardCounts, took_ms: u64) -> SearchResponse {
    let (total_assets, remaining_assets) = totals;
    assets.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.asset_id.cmp(&b.asset_id)));
    assets.truncate(plan.limit);
    let next_cursor = (remaining_assets > plan.limit)
        .then(|| assets.last().map(|last| Cursor { score: last.score, asset_id: last.asset_id.clone() }.encode()))
        .flatten();
    let groups = match plan.group_by {
        GroupBy::Asset => None,
        by => {
            let mut groups: BTreeMap<(Option<String>, Option<u32>), AssetGroup> = BTreeMap::new();
            for asset in &assets {
                let key = (asset.series.clone(), if by == GroupBy::Season { asset.season } else { None });
                let group = groups.entry(key.clone()).or_insert_with(|| AssetGroup {
                    series: key.0,
                    season: key.1,
                    score: asset.score,
                    asset_ids: vec![],
                });
                group.score = group.score.max(asset.score);
                group.asset_ids.push(asset.asset_id.clone());
            }
            let mut groups: Vec<AssetGroup> = groups.into_values().collect();
            groups.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| (&a.series, a.season).cmp(&(&b.series, b.season))));
            Some(groups)
        }
    };
    let understanding = plan.understanding.as_ref().and_then(|understood| serde_json::to_value(understood).ok());
    SearchResponse { took_ms, shards, total_assets, assets, next_cursor, groups, understanding, warnings: plan.warnings.clone() }
}

/// Vector key of an annotation (re-exported for tests of the exact path).
pub fn annotation_vector_key(asset_id: &str, annotation_id: &str) -> u64 {
    vector_key(asset_id, annotation_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_keeps_the_global_best_assets_only() {
        let shard = |assets: &[(f64, &str)]| {
            let candidates = ShardCandidates {
                ranked: assets.iter().map(|(score, id)| (*score, id.to_string(), vec![])).collect(),
                total_assets: assets.len(),
                remaining_assets: assets.len(),
                seconds: HashMap::new(),
                leaf_hits: vec![],
                min_similarity: vec![],
            };
            Some(candidates.ranked_assets())
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
    fn leaf_rankings_serve_only_the_hits_they_were_derived_from() {
        let rankings = LeafRankings::default();
        let hits = Arc::new(vec![(hit_key(1, 0), 0.6f32), (hit_key(1, 1), 0.9), (hit_key(2, 5), 0.7)]);
        let key = RankingKey {
            min_bits: 0.6f32.to_bits(),
            max_bits: 0.9f32.to_bits(),
            weight_bits: 1f32.to_bits(),
            options: CurationOptions::default(),
        };
        let ranking = Arc::new(vec![(0.9, "a".to_string(), 0..2), (0.7, "b".to_string(), 2..3)]);
        assert_eq!(rankings.score_range("joey", &hits), Some((0.6, 0.9)));
        assert!(rankings.ranking("joey", &hits, &key).is_none());
        rankings.keep_ranking("joey", &hits, key, ranking.clone());
        assert!(rankings.ranking("joey", &hits, &key).is_some_and(|r| Arc::ptr_eq(&r, &ranking)));
        // Another normalization, another leaf, or equal hits in another list: not served.
        let other_key = RankingKey { max_bits: 1f32.to_bits(), ..key };
        assert!(rankings.ranking("joey", &hits, &other_key).is_none());
        assert!(rankings.ranking("rachel", &hits, &key).is_none());
        let equal_copy = Arc::new(hits.as_ref().clone());
        assert!(rankings.ranking("joey", &equal_copy, &key).is_none());
        // Asking with the new list dropped what was derived from the old one.
        assert!(rankings.ranking("joey", &hits, &key).is_none());
        rankings.keep_ranking("joey", &hits, key, ranking.clone());
        // Bounded: rankings per leaf, and leaves.
        for i in 0..10u32 {
            rankings.keep_ranking("joey", &hits, RankingKey { weight_bits: i, ..key }, ranking.clone());
        }
        assert_eq!(rankings.leaves.lock()["joey"].rankings.len(), RANKINGS_PER_LEAF_MAX);
        let lists: Vec<Arc<Vec<(u64, f32)>>> = (0..RANKED_LEAVES_MAX + 10).map(|_| hits.clone()).collect();
        for (i, list) in lists.iter().enumerate() {
            rankings.keep_ranking(&format!("leaf {i}"), list, key, ranking.clone());
        }
        assert!(rankings.leaves.lock().len() <= RANKED_LEAVES_MAX);
        assert_eq!(rankings.score_range("empty", &Arc::new(Vec::new())), None);
    }

    #[test]
    fn normalized_comparison_matches_normalize_label() {
        use rushes_protocol::model::normalize_label;
        for (raw, normalized) in [("  Central   Perk ", "central perk"), ("JOEY", "joey"), ("Joey", "joe"), ("Jo ey", "joey"), ("", "")] {
            assert_eq!(normalized_equals(raw, normalized), normalize_label(raw) == normalized, "{raw:?} vs {normalized:?}");
        }
    }

    #[test]
    fn exact_similarity_follows_each_metric() {
        let (a, b) = ([1.0f32, 0.0], [0.0f32, 2.0]);
        assert_eq!(exact_similarity(VectorMetric::Cosine, &a, &b), 0.0);
        assert_eq!(exact_similarity(VectorMetric::Cosine, &a, &[3.0, 0.0]), 1.0);
        assert_eq!(exact_similarity(VectorMetric::InnerProduct, &[1.0, 2.0], &[3.0, 4.0]), 11.0);
        assert_eq!(exact_similarity(VectorMetric::L2, &a, &b), -5.0);
    }

    #[test]
    fn rrf_ranks_come_from_the_global_top_list() {
        let top = top_descending(vec![0.1, 0.9, 0.5, 0.5, 0.7], 3);
        assert_eq!(top, vec![0.9, 0.7, 0.5]);
        // Rank = 1 + scores strictly better.
        assert_eq!(top.partition_point(|&t| t > 0.9) + 1, 1);
        assert_eq!(top.partition_point(|&t| t > 0.5) + 1, 3);
        assert_eq!(top.partition_point(|&t| t > 0.1) + 1, 4);
    }

    #[test]
    fn fusing_as_read_equals_fusing_first() {
        use rand::{Rng, SeedableRng};
        let options = CurationOptions { bucket_ms: 1000, ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let leaf = |leaf: usize| PlanNode::Leaf { leaf };
        let trees = [
            PlanNode::While { nodes: vec![leaf(0), leaf(1)] },
            PlanNode::While { nodes: vec![leaf(2), leaf(0), leaf(1)] },
            PlanNode::While { nodes: vec![PlanNode::Any { nodes: vec![leaf(0), leaf(2)] }, leaf(1), leaf(0)] },
            PlanNode::Any { nodes: vec![leaf(0), PlanNode::While { nodes: vec![leaf(1), leaf(2)] }, leaf(1)] },
            PlanNode::Sequence {
                first: Box::new(PlanNode::While { nodes: vec![leaf(0), leaf(1)] }),
                then: Box::new(leaf(2)),
                within_ms: 5000,
            },
            // A leaf the hits do not have.
            PlanNode::While { nodes: vec![leaf(0), leaf(3)] },
        ];
        for round in 0..50 {
            let lists: Vec<Vec<(u64, f32)>> = (0..3)
                .map(|_| {
                    let mut keys: Vec<u64> =
                        (0..rng.gen_range(0..300)).map(|_| hit_key(rng.gen_range(0..4), rng.gen_range(0..120))).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    keys.into_iter().map(|k| (k, rng.gen_range(0.01f32..9.0))).collect()
                })
                .collect();
            let weights = [0.3f32, 1.7, 0.9];
            let fuse = |leaf: usize, score: f32| (score - 0.01) / 8.99 * weights[leaf] + 0.1;
            let fused_first: Vec<Vec<(u64, f32)>> =
                lists.iter().enumerate().map(|(i, list)| list.iter().map(|&(k, s)| (k, fuse(i, s))).collect()).collect();
            let raw: Vec<&[(u64, f32)]> = lists.iter().map(Vec::as_slice).collect();
            let fused: Vec<&[(u64, f32)]> = fused_first.iter().map(Vec::as_slice).collect();
            for tree in &trees {
                let as_read = evaluate(tree, &raw, &fuse, &options);
                let first = evaluate(tree, &fused, &|_, score| score, &options);
                let bits = |list: &[(u64, f32)]| list.iter().map(|&(k, s)| (k, s.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&as_read), bits(&first), "round {round}: {tree:?}");
            }
        }
    }

    #[test]
    fn sequences_and_co_occurrence_combine_per_asset() {
        let options = CurationOptions { bucket_ms: 1000, ..Default::default() };
        let a = vec![(hit_key(1, 10), 1.0), (hit_key(1, 11), 1.0), (hit_key(2, 5), 1.0)];
        let b = vec![(hit_key(1, 15), 1.0), (hit_key(2, 1), 1.0)];
        let c = vec![(hit_key(1, 11), 1.0), (hit_key(2, 9), 1.0)];
        let leaves: Vec<&[(u64, f32)]> = vec![&a, &b, &c];
        let unfused = |_: usize, score: f32| score;
        let both =
            evaluate(&PlanNode::While { nodes: vec![PlanNode::Leaf { leaf: 0 }, PlanNode::Leaf { leaf: 2 }] }, &leaves, &unfused, &options);
        assert_eq!(both, vec![(hit_key(1, 11), 2.0)]);
        let sequence =
            PlanNode::Sequence { first: Box::new(PlanNode::Leaf { leaf: 0 }), then: Box::new(PlanNode::Leaf { leaf: 1 }), within_ms: 5000 };
        let seconds: Vec<(u64, u64)> =
            evaluate(&sequence, &leaves, &unfused, &options).iter().map(|&(k, _)| (hit_asset(k), hit_second(k))).collect();
        // Asset 1: A at 10-11, B at 15 (4 s later) → 10..=15. Asset 2: B before A → nothing.
        assert_eq!(seconds, (10..=15).map(|s| (1, s)).collect::<Vec<_>>());
    }

    #[test]
    fn highlights_cover_exact_stemmed_and_fuzzy_words() {
        let leaf = |text: &str| {
            let words = crate::storage::index::tokenize(text);
            let stems = vec![(0usize, stem_tokens(0, text))];
            Leaf::Words {
                text: text.into(),
                fuzziness: words.iter().map(|w| crate::query::understand::auto_fuzziness(w)).collect(),
                words,
                operator: BoolOperator::Or,
                minimum_should_match: 1,
                languages: vec!["en".to_string()],
                stems,
                weight: 1.0,
                source: ClauseSource::Query,
            }
        };
        let text = "We were running to the cafe, Rachel!";
        let ranges = highlight(text, Some("en"), &leaf("run rachael"));
        let words: Vec<&str> = ranges.iter().map(|[a, b]| &text[*a..*b]).collect();
        assert_eq!(words, vec!["running", "Rachel"]);
        assert!(crate::storage::index::STEM_LANGUAGES.len() >= 7);
    }

    #[test]
    fn interval_expansion_equals_sorting_every_second() {
        use rand::{Rng, SeedableRng};
        let bits = |hits: Vec<(u64, f32)>| hits.into_iter().map(|(key, score)| (key, score.to_bits())).collect::<Vec<_>>();
        let per_second = |intervals: &[(u64, u64, u64, f32)]| {
            let seconds = intervals.iter().flat_map(|&(o, first, last, s)| (first..=last).map(move |sec| (hit_key(o, sec), s)));
            sorted_unique(seconds.collect())
        };
        // Nested (a higher one inside a lower one and the reverse), adjacent, equal scores.
        let fixed =
            vec![(2, 10, 20, 0.5), (2, 12, 14, 0.9), (2, 21, 22, 0.5), (2, 15, 30, 0.2), (1, 5, 5, 0.3), (1, 0, 9, 0.3), (7, 1, 1, 0.1)];
        let expected: Vec<(u64, f32)> = (0..=9)
            .map(|s| (hit_key(1, s), 0.3))
            .chain((10..=11).map(|s| (hit_key(2, s), 0.5)))
            .chain((12..=14).map(|s| (hit_key(2, s), 0.9)))
            .chain((15..=22).map(|s| (hit_key(2, s), 0.5)))
            .chain((23..=30).map(|s| (hit_key(2, s), 0.2)))
            .chain([(hit_key(7, 1), 0.1)])
            .collect();
        assert_eq!(bits(expand_intervals(fixed.clone())), bits(expected.clone()));
        assert_eq!(bits(per_second(&fixed)), bits(expected));
        assert!(expand_intervals(vec![]).is_empty());

        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x1e5);
        for round in 0..500 {
            let mut intervals: Vec<(u64, u64, u64, f32)> = Vec::new();
            for _ in 0..rng.gen_range(0..40) {
                let ordinal = rng.gen_range(0..5u64);
                let first = rng.gen_range(0..200u64);
                let last = first + rng.gen_range(0..40u64);
                // Few distinct scores (negative ones as l2 gives): many ties.
                let score = rng.gen_range(-2..6) as f32 / 4.0;
                intervals.push((ordinal, first, last, score));
                if rng.gen_bool(0.3) {
                    let inner = rng.gen_range(first..=last);
                    intervals.push((ordinal, inner, rng.gen_range(inner..=last), rng.gen_range(-2..6) as f32 / 4.0));
                }
                if rng.gen_bool(0.3) {
                    intervals.push((ordinal, last + 1, last + 1 + rng.gen_range(0..10u64), score));
                }
            }
            assert_eq!(bits(expand_intervals(intervals.clone())), bits(per_second(&intervals)), "round {round}: {intervals:?}");
        }
    }

    #[test]
    fn floored_search_widens_only_while_the_floor_is_reached() {
        // Nearest first, similarity = 1 - distance, from 1.0 down by 1/5000 a rank.
        let run = |k: usize, floor: f64, size: usize| {
            let mut counts = vec![];
            let found = floored_search(
                k,
                floor,
                |d| 1.0 - f64::from(d),
                |n| {
                    counts.push(n);
                    Ok::<_, ()>((0..n.min(size)).map(|i| (i as u64, i as f32 / 5000.0)).collect())
                },
            );
            (found.map(|f| f.len()), counts)
        };
        // 501 above 0.9: the first 256 all reach it, 1,024 end below.
        assert_eq!(run(10_000, 0.9, 5000), (Ok(1024), vec![256, 1024]));
        // All above the floor: widen up to k, never past it.
        assert_eq!(run(10_000, 0.0, 5000), (Ok(5000), vec![256, 1024, 4096, 10_000]));
        assert_eq!(run(2000, 0.0, 5000), (Ok(2000), vec![256, 1024, 2000]));
        // Fewer than asked: the index holds no more.
        assert_eq!(run(10_000, 0.0, 300), (Ok(300), vec![256, 1024]));
        // k below the first count: one search, as without a floor.
        assert_eq!(run(100, 0.0, 5000), (Ok(100), vec![100]));
        assert_eq!(run(10_000, 0.99, 5000), (Ok(256), vec![256]));
        let failed = floored_search(10, 0.5, |d| f64::from(d), |_| Err::<Vec<(u64, f32)>, _>("down"));
        assert_eq!(failed, Err("down"));
    }

    #[test]
    fn floored_search_on_an_index_finds_what_one_search_of_k_finds() {
        use crate::storage::index::{VectorIndex, VectorQuantization, VectorSpaceSpec};
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = VectorSpaceSpec {
            name: "scene".into(),
            dimensions: 8,
            metric: VectorMetric::Cosine,
            quantization: VectorQuantization::F32,
            connectivity: 16,
            expansion_add: 64,
            expansion_search: 32,
        };
        let index = VectorIndex::open(dir.path(), spec).expect("open");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut random_vector = || -> Vec<f32> { (0..8).map(|_| rng.gen_range(-1.0f32..1.0)).collect() };
        for key in 0..3000u64 {
            index.add(key, &random_vector()).expect("add");
        }
        let k = 2000;
        for round in 0..5 {
            let query = random_vector();
            let single = index.search(&query, k, false, None).expect("search");
            let above =
                |hits: &[(u64, f32)], floor: f64| hits.iter().copied().filter(|&(_, d)| index.similarity(d) >= floor).collect::<Vec<_>>();
            // Above-floor hits fewer than the first count, past it, and past 4x it.
            for (rank, searches) in [(50, vec![256]), (600, vec![256, 1024]), (1500, vec![256, 1024, 2000])] {
                let floor = index.similarity(single[rank].1);
                let mut counts = vec![];
                let deepened = floored_search(
                    k,
                    floor,
                    |d| index.similarity(d),
                    |n| {
                        counts.push(n);
                        index.search(&query, n, false, None)
                    },
                )
                .expect("floored search");
                assert_eq!(above(&deepened, floor), above(&single, floor), "round {round}, floor at rank {rank}");
                assert_eq!(counts, searches, "round {round}, floor at rank {rank}");
            }
        }
    }

    /// A phrase is matched once per line, where the line starts, and spreads over every second
    /// the line covers, whatever other lines overlap them; a stemmed form finds the same lines
    /// for less; a time range cuts the seconds, not the line; a phrase across a line break
    /// matches the later line's first second; a bounded search keeps the best seconds; and
    /// seconds re-indexed by a later batch leave the line's seconds as they were.
    #[test]
    fn a_phrase_matches_every_second_of_the_lines_that_say_it() {
        use crate::query::plan::plan_of_json;
        use crate::shard::ingest_command_of;
        use rushes_client::wait::wait_until;
        use std::time::Duration;

        let config = rushes_config::Config::default();
        let ingest = |shard: &Shard, lines: &[String]| {
            let receiver = shard.propose(&ingest_command_of(&lines.join("\n"))).expect("proposal accepted");
            receiver.blocking_recv().expect("the Raft actor answers").expect("applied");
        };
        let line = |id: &str, start_ms: u64, end_ms: u64, text: &str| {
            serde_json::json!({"id": id, "asset_id": "ep1", "model": "asr", "model_version": "1", "track": "dialogue",
                "start_ms": start_ms, "end_ms": end_ms, "text": text, "language": "en", "confidence": 0.9})
            .to_string()
        };
        let face = |id: &str, start_ms: u64, end_ms: u64| {
            serde_json::json!({"id": id, "asset_id": "ep1", "model": "faces", "model_version": "1", "track": "character",
                "start_ms": start_ms, "end_ms": end_ms, "label": "Joey", "confidence": 0.9})
            .to_string()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = crate::node::shard_options(&config);
        options.commit_interval_ms = 50;
        let shard = Shard::open(dir.path(), 0, &options, Arc::new(crate::metrics::Metrics::new()), None).expect("open shard");
        wait_until("the single voter leads", Duration::from_secs(30), || shard.is_leader());
        ingest(
            &shard,
            &[
                // Seconds 2..=6, overlapped at 5 and 6 by a line that does not say it.
                line("d1", 2_000, 6_400, "We were on a break!"),
                line("d2", 5_500, 8_000, "A break from work."),
                line("d3", 20_000, 21_000, "On a break."),
                line("d4", 30_000, 32_000, "Break on a beach."),
                // Across a line break: "... on a" / "break".
                line("d5", 40_000, 41_000, "Was that on a"),
                line("d6", 41_000, 42_000, "break?"),
            ],
        );
        // Seconds 2-7, 20, 30-31, 40, 41.
        wait_until("fused and indexed", Duration::from_secs(30), || shard.index.num_docs() == 11);
        let phrase = |text: &str| plan_of_json(serde_json::json!({"clauses": [{"type": "phrase", "text": text}]}));
        let hits = |plan: &Plan| -> Vec<(u64, f32)> {
            let found = shard_hits(&shard, plan).expect("hits");
            found.leaves[0].hits.iter().map(|&(key, score)| (hit_second(key), score)).collect()
        };
        let seconds = |hits: &[(u64, f32)]| hits.iter().map(|h| h.0).collect::<Vec<_>>();

        let exact = hits(&phrase("on a break"));
        assert_eq!(seconds(&exact), vec![2, 3, 4, 5, 6, 20, 41]);
        let score_at = |hits: &[(u64, f32)], second: u64| hits.iter().find(|h| h.0 == second).map(|h| h.1).expect("a hit there");
        for second in 3..=6 {
            assert_eq!(score_at(&exact, second), score_at(&exact, 2), "every second of a line scores as the line");
        }

        // Bridges are not stemmed.
        let stemmed = hits(&phrase("on a breaks"));
        assert_eq!(seconds(&stemmed), vec![2, 3, 4, 5, 6, 20]);
        assert!(score_at(&stemmed, 20) < score_at(&exact, 20), "a stemmed match counts less");

        let mut in_range = phrase("on a break");
        in_range.filters.from_ms = Some(3_500);
        in_range.filters.to_ms = Some(6_000);
        assert_eq!(seconds(&hits(&in_range)), vec![3, 4, 5], "a line starting before the range still has its seconds in it");

        let mut bounded = phrase("on a break");
        bounded.text_hits_max = Some(2);
        assert_eq!(hits(&bounded).len(), 2);
        assert!(hits(&phrase("a beach break")).is_empty(), "words said out of order are no phrase");

        // Seconds in the middle and at the start of the line are written again.
        ingest(&shard, &[face("f1", 3_000, 4_000), face("f2", 2_000, 2_500)]);
        let faces = plan_of_json(serde_json::json!({"clauses": [{"type": "label", "label": "Joey"}]}));
        wait_until("the faces are indexed", Duration::from_secs(30), || seconds(&hits(&faces)) == [2, 3]);
        assert_eq!(hits(&phrase("on a break")), exact);
        shard.shutdown();
    }
}
