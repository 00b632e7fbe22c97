//! HTTP API types (see ../shared/API.md). Input types are strict: a typo must not silently
//! change meaning. Annotations may still carry extra fields: `validate::parse_annotation`
//! keeps them in the raw store and builds this type without them.

use serde::{Deserialize, Serialize};

/// One model output as received on `POST /v1/annotations` (its known fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "faces-s01e01-000123", "asset_id": "s01e01", "model": "faces", "model_version": "2", "track": "character", "start_ms": 12000, "end_ms": 15500, "label": "Joey", "confidence": 0.94}))]
pub struct Annotation {
    pub id: String,
    pub asset_id: String,
    pub model: String,
    pub model_version: String,
    pub track: String,
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(default)]
    pub confidence: Option<f64>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub vector_space: Option<String>,
    #[serde(default)]
    pub vector: Option<Vec<f64>>,
}

/// `PUT /v1/assets/{asset_id}` body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"title": "The One with the Pilot", "series": "central-perk", "season": 1, "episode": 1, "duration_ms": 1320000, "fps": 23.976}))]
pub struct AssetRecord {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub series: Option<String>,
    #[serde(default)]
    pub season: Option<u32>,
    #[serde(default)]
    pub episode: Option<u32>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub fps: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"accepted": 2000, "created": 1990, "duplicates": 10, "took_ms": 41}))]
pub struct IngestReply {
    /// Annotations in the batch (after removing exact duplicates inside the batch).
    pub accepted: usize,
    /// Of those, how many were new; the rest were idempotent re-sends.
    pub created: usize,
    pub duplicates: usize,
    pub took_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    #[default]
    Intersection,
    Union,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Serve what the replica has indexed.
    #[default]
    Eventual,
    /// Wait until the replica has indexed everything committed when the query arrived.
    Strong,
}

/// A structured search clause. Leaves match seconds (`label`, `dialogue`, `phrase`, `vector`);
/// `while`, `any` and `sequence` combine other clauses (nested at most [`MAX_CLAUSE_DEPTH`] deep).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Clause {
    /// An exact label on a track (`track` omitted: any track).
    Label {
        label: String,
        #[serde(default)]
        track: Option<String>,
        #[serde(default)]
        min_confidence: Option<f64>,
        /// Weight of this clause in the fused score (default 1).
        #[serde(default)]
        weight: Option<f64>,
    },
    /// Dialogue words; all words must occur in the same second (`operator: "and"`, default)
    /// or any of them (`"or"`). Scored with BM25; words also match their stems (in the
    /// annotation's language) and, with `fuzziness`, words within that edit distance.
    Dialogue {
        text: String,
        #[serde(default)]
        operator: Option<BoolOperator>,
        /// `"auto"` (default: 0 edits up to 2 letters, 1 up to 5, else 2), `0`, `1` or `2`.
        #[serde(default)]
        fuzziness: Option<Fuzziness>,
        /// Stem with this language only (`en`, `fr`, `de`, `es`, `it`, `pt`, `nl`, ...);
        /// default: every supported language.
        #[serde(default)]
        language: Option<String>,
        #[serde(default)]
        weight: Option<f64>,
    },
    /// A dialogue phrase: the words in this order, with up to `slop` words between them. A
    /// phrase may run across two consecutive lines.
    Phrase {
        text: String,
        #[serde(default)]
        slop: Option<u32>,
        #[serde(default)]
        language: Option<String>,
        #[serde(default)]
        weight: Option<f64>,
    },
    /// Vector similarity in a configured vector space, with a query `vector`, or with `text`
    /// that the configured embedder turns into one.
    Vector {
        space: String,
        #[serde(default)]
        vector: Option<Vec<f64>>,
        #[serde(default)]
        text: Option<String>,
        /// Nearest annotations to consider, over the whole cluster (default 100).
        #[serde(default)]
        k: Option<usize>,
        /// Drop hits less similar than this (cosine / ip similarity, or -l2 distance).
        #[serde(default)]
        min_similarity: Option<f64>,
        /// Exact (brute-force) search instead of the approximate index (default false).
        #[serde(default)]
        exact: Option<bool>,
        /// Candidate list size of the approximate search (default: the space's `expansion_search`).
        #[serde(default)]
        ef: Option<usize>,
        /// Metric for exact search (default: the space's). Approximate search always uses the
        /// space's index metric.
        #[serde(default)]
        metric: Option<VectorMetricName>,
        #[serde(default)]
        weight: Option<f64>,
    },
    /// Seconds where all of `clauses` hold at once ("A while B").
    While {
        // A reference to this schema, not its expansion: clauses nest.
        #[schema(no_recursion)]
        clauses: Vec<Clause>,
    },
    /// Seconds where any of `clauses` holds.
    Any {
        #[schema(no_recursion)]
        clauses: Vec<Clause>,
    },
    /// "`first` then `then` within `within_ms`": `then` starts after `first` starts, at most
    /// `within_ms` (default 30000) after `first` ends; the clip spans both.
    Sequence {
        #[schema(no_recursion)]
        first: Box<Clause>,
        #[schema(no_recursion)]
        then: Box<Clause>,
        #[serde(default)]
        within_ms: Option<u64>,
    },
}

/// Deepest nesting of `while`/`any`/`sequence` clauses.
pub const MAX_CLAUSE_DEPTH: usize = 4;

/// Edit distance for fuzzy word matching: `"auto"` or a number of edits (0 to 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Fuzziness {
    Edits(u32),
    Named(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VectorMetricName {
    Cosine,
    L2,
    Ip,
}

/// How per-clause scores become one score per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FusionMethod {
    /// Each clause's scores min-max normalized over all hits (into [0.1, 1]), times its weight, summed.
    Weighted,
    /// Reciprocal rank fusion: weight / (rank_constant + rank) per clause, summed.
    Rrf,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FusionOptions {
    #[serde(default)]
    pub method: Option<FusionMethod>,
    #[serde(default)]
    pub rank_constant: Option<u32>,
    #[serde(default)]
    pub rank_window: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    #[default]
    Asset,
    Season,
    Series,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BoolOperator {
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"series": ["central-perk"], "season": 1, "from_ms": 0, "to_ms": 600000}))]
pub struct Filters {
    #[serde(default)]
    pub asset_ids: Option<Vec<String>>,
    #[serde(default)]
    pub series: Option<Vec<String>>,
    #[serde(default)]
    pub season: Option<u32>,
    #[serde(default)]
    pub episode: Option<u32>,
    #[serde(default)]
    pub from_ms: Option<u64>,
    #[serde(default)]
    pub to_ms: Option<u64>,
}

/// `POST /v1/search` body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub clauses: Option<Vec<Clause>>,
    #[serde(default)]
    pub mode: Option<SearchMode>,
    #[serde(default)]
    pub per_asset: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub filters: Option<Filters>,
    #[serde(default)]
    pub consistency: Option<Consistency>,
    /// Seconds of silence tolerated inside one clip (default 0: only adjacent buckets merge).
    #[serde(default)]
    pub gap_ms: Option<u64>,
    /// Drop clips scoring below this.
    #[serde(default)]
    pub min_score: Option<f64>,
    /// Include the per-clause evidence in every clip (default true).
    #[serde(default)]
    pub evidence: Option<bool>,
    /// How clause scores fuse (default: the server's `search.fusion`).
    #[serde(default)]
    pub fusion: Option<FusionOptions>,
    /// Stemming language for words of `q` (default: every supported language).
    #[serde(default)]
    pub language: Option<String>,
    /// Extend clips to the shot boundaries around them, where shot annotations exist (default
    /// false: clips then hold exactly the matching seconds).
    #[serde(default)]
    pub snap_to_shots: Option<bool>,
    /// Added before and after every clip (after snapping).
    #[serde(default)]
    pub padding_ms: Option<u64>,
    #[serde(default)]
    pub min_length_ms: Option<u64>,
    #[serde(default)]
    pub max_length_ms: Option<u64>,
    /// `asset` (default), `season` or `series`: also return `groups` of assets.
    #[serde(default)]
    pub group_by: Option<GroupBy>,
    /// `next_cursor` of the previous page: continue after its last asset.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardCounts {
    pub total: usize,
    /// Shards that answered, including those skipped.
    pub ok: usize,
    pub failed: usize,
    /// Shards not asked because they hold none of the `asset_ids` filter's assets.
    #[serde(default)]
    pub skipped: usize,
}

/// The evidence for one clip: an annotation that satisfied a clause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Match {
    pub track: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    pub annotation_id: String,
    pub confidence: f64,
    /// Which clause of the plan this annotation satisfied.
    pub clause: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub similarity: Option<f64>,
    /// Byte ranges `[start, end)` of `text` that matched the clause's words.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub highlights: Vec<[usize; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Clip {
    pub start_ms: u64,
    pub end_ms: u64,
    pub score: f64,
    pub matches: Vec<Match>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssetHits {
    pub asset_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub series: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub season: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub episode: Option<u32>,
    pub score: f64,
    pub clips: Vec<Clip>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"took_ms": 12, "shards": {"total": 4, "ok": 4, "failed": 0, "skipped": 0}, "total_assets": 1,
    "assets": [{"asset_id": "s01e03", "title": "The One with the Cooking Class", "series": "central-perk", "season": 1, "episode": 3, "score": 2.58,
        "clips": [{"start_ms": 1302000, "end_ms": 1359000, "score": 2.58, "matches": [
            {"track": "character", "label": "Joey", "annotation_id": "faces-s01e03-000871", "confidence": 0.99, "clause": 0},
            {"track": "scene", "label": "kitchen", "annotation_id": "places-s01e03-000044", "confidence": 0.87, "clause": 1}]}]}],
    "understanding": {"kind": "label", "corrections": [["jooey", "Joey"]]}}))]
pub struct SearchResponse {
    pub took_ms: u64,
    pub shards: ShardCounts,
    /// Assets with at least one clip, before `limit` was applied.
    pub total_assets: usize,
    pub assets: Vec<AssetHits>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_cursor: Option<String>,
    /// With `group_by` season or series: the page's assets grouped, best group first.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub groups: Option<Vec<AssetGroup>>,
    /// With `q`: what the query became (as `plan.understanding` of `/v1/search/explain`), so a
    /// client shows "did you mean" and the parsed parts without a second request.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub understanding: Option<serde_json::Value>,
    /// What did not go as asked but did not fail the search (the embedder failed, so the
    /// words searched the dialogue only; ...), in words for people.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssetGroup {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub series: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub season: Option<u32>,
    pub score: f64,
    pub asset_ids: Vec<String>,
}

/// One annotation inside a fused bucket, as shown by `GET /v1/assets/{id}/buckets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BucketAnnotationView {
    pub annotation_id: String,
    pub track: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub language: Option<String>,
    pub confidence: f64,
    pub coverage: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BucketView {
    pub second: u64,
    pub annotations: Vec<BucketAnnotationView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"asset_id": "s01e01", "bucket_ms": 1000, "buckets": [
    {"second": 0, "annotations": [{"annotation_id": "c1", "track": "character", "model": "faces", "label": "Joey", "confidence": 0.9, "coverage": 1.0}]},
    {"second": 1, "annotations": [{"annotation_id": "c1", "track": "character", "model": "faces", "label": "Joey", "confidence": 0.9, "coverage": 1.0},
        {"annotation_id": "d1", "track": "dialogue", "model": "asr", "text": "we were on a break", "language": "en", "confidence": 1.0, "coverage": 1.0}]}
]}))]
pub struct BucketsReply {
    pub asset_id: String,
    pub bucket_ms: u64,
    pub buckets: Vec<BucketView>,
}
