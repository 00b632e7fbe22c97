//! HTTP API types (see ../shared/API.md). Input types are strict: a typo must not silently
//! change meaning. Annotations may still carry extra fields: `validate::parse_annotation`
//! keeps them in the raw store and builds this type without them.

use serde::{Deserialize, Serialize};

/// One model output as received on `POST /v1/annotations` (its known fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestReply {
    /// Annotations in the batch (after removing exact duplicates inside the batch).
    pub accepted: usize,
    /// Of those, how many were new; the rest were idempotent re-sends.
    pub created: usize,
    pub duplicates: usize,
    pub took_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    #[default]
    Intersection,
    Union,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Serve what the replica has indexed.
    #[default]
    Eventual,
    /// Wait until the replica has indexed everything committed when the query arrived.
    Strong,
}

/// A structured search clause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Clause {
    /// An exact label on a track (`track` omitted: any track).
    Label {
        label: String,
        #[serde(default)]
        track: Option<String>,
        #[serde(default)]
        min_confidence: Option<f64>,
    },
    /// Dialogue words; all words must occur in the same second (`operator: "and"`, default)
    /// or any of them (`"or"`).
    Dialogue {
        text: String,
        #[serde(default)]
        operator: Option<BoolOperator>,
    },
    /// A dialogue phrase: the words in this order, with up to `slop` words between them.
    Phrase {
        text: String,
        #[serde(default)]
        slop: Option<u32>,
    },
    /// Vector similarity in a configured vector space with a client-supplied query vector.
    Vector {
        space: String,
        vector: Vec<f64>,
        /// Nearest annotations to consider (default 100).
        #[serde(default)]
        k: Option<usize>,
        /// Drop hits less similar than this (cosine / ip similarity, or -l2 distance).
        #[serde(default)]
        min_similarity: Option<f64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoolOperator {
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardCounts {
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
}

/// The evidence for one clip: an annotation that satisfied a clause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clip {
    pub start_ms: u64,
    pub end_ms: u64,
    pub score: f64,
    pub matches: Vec<Match>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub took_ms: u64,
    pub shards: ShardCounts,
    /// Assets with at least one clip, before `limit` was applied.
    pub total_assets: usize,
    pub assets: Vec<AssetHits>,
}

/// One annotation inside a fused bucket, as shown by `GET /v1/assets/{id}/buckets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketView {
    pub second: u64,
    pub annotations: Vec<BucketAnnotationView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketsReply {
    pub asset_id: String,
    pub bucket_ms: u64,
    pub buckets: Vec<BucketView>,
}
