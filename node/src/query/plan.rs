//! Query planning: a search request (structured `clauses` and free text `q`) becomes a tree of
//! leaves over the index, fusion settings and curation options. Pure apart from the embedder
//! (which may call an HTTP endpoint), so planning runs on a blocking thread.
//!
//! `q` goes through three visible steps (see `POST /v1/search/explain`): [`understand`] detects
//! the query type and extracts filters, labels (fuzzy on typos), quoted phrases, sequences
//! ("A then B within 10 s") and co-occurrences ("A while B"); the remaining words become a
//! dialogue clause and, when an embedder is configured, also a vector clause in its space
//! (a hybrid `any` of the two, fused per second).

use std::collections::BTreeMap;

use rushes_protocol::model::normalize_label;
pub use rushes_protocol::peer::WirePlan;
use rushes_protocol::{
    ApiError, BoolOperator, Clause, ErrorCode, Filters, FusionMethod, Fuzziness, GroupBy, SearchMode, SearchRequest, VectorMetricName,
    MAX_CLAUSE_DEPTH,
};
use serde::{Deserialize, Serialize};

use crate::query::embedder::{EmbedError, Embedder};
use crate::query::understand::{auto_fuzziness, understand, QueryNode, Understood, Vocabulary};
use crate::storage::index::{stem_language, stem_tokens, tokenize, VectorMetric, STEM_LANGUAGES};

pub const DEFAULT_PER_ASSET: usize = 5;
pub const DEFAULT_LIMIT: usize = 20;
/// Label matches below this confidence are noise from detectors unless asked for.
pub const DEFAULT_MIN_CONFIDENCE: f64 = 0.5;
pub const DEFAULT_VECTOR_K: usize = 100;
pub const DEFAULT_SEQUENCE_WITHIN_MS: u64 = 30_000;
/// Vector clauses made from `q` text keep annotations at least this similar (cosine), up to
/// `limits.max_vector_k` of them: "every kitchen scene", not "the 100 nearest".
pub const SEMANTIC_MIN_SIMILARITY: f64 = 0.5;
pub const MAX_SLOP: u32 = 50;
/// Longest silence a clip may span, and the longest padding or length bound (10 minutes).
pub const MAX_GAP_MS: u64 = 600_000;
pub const MAX_SEQUENCE_WITHIN_MS: u64 = 3_600_000;
pub const MAX_WEIGHT: f64 = 1000.0;
pub const MAX_EF: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClauseSource {
    Clauses,
    Query,
}

/// Where a vector clause's query vector came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum VectorOrigin {
    Client,
    Embedder { text: String, embedder: String },
}

/// A clause that runs against the index and yields scored seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Leaf {
    Label {
        track: Option<String>,
        label: String,
        min_confidence: f64,
        weight: f64,
        source: ClauseSource,
        /// What the user typed, when it was corrected to this label.
        #[serde(skip_serializing_if = "Option::is_none")]
        typed: Option<String>,
    },
    Words {
        text: String,
        /// Folded words, and the edits each may differ by.
        words: Vec<String>,
        fuzziness: Vec<u32>,
        operator: BoolOperator,
        /// With `or`: how many of the words a second must hold.
        minimum_should_match: usize,
        /// Stemming languages (ISO 639-1).
        languages: Vec<String>,
        #[serde(skip)]
        stems: Vec<(usize, Vec<String>)>,
        weight: f64,
        source: ClauseSource,
    },
    Phrase {
        text: String,
        words: Vec<String>,
        slop: u32,
        languages: Vec<String>,
        #[serde(skip)]
        stems: Vec<(usize, Vec<String>)>,
        weight: f64,
        source: ClauseSource,
    },
    Vector {
        space: String,
        dimensions: usize,
        k: usize,
        min_similarity: Option<f64>,
        exact: bool,
        ef: Option<usize>,
        metric: VectorMetric,
        #[serde(skip)]
        vector: Vec<f32>,
        origin: VectorOrigin,
        weight: f64,
        source: ClauseSource,
    },
}

impl Leaf {
    pub fn weight(&self) -> f64 {
        match self {
            Leaf::Label { weight, .. } | Leaf::Words { weight, .. } | Leaf::Phrase { weight, .. } | Leaf::Vector { weight, .. } => *weight,
        }
    }
}

/// How leaves combine: seconds where all hold (`while`), any holds (`any`), or one follows
/// another (`sequence`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlanNode {
    Leaf { leaf: usize },
    While { nodes: Vec<PlanNode> },
    Any { nodes: Vec<PlanNode> },
    Sequence { first: Box<PlanNode>, then: Box<PlanNode>, within_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FusionSettings {
    pub method: FusionMethod,
    pub rank_constant: u32,
    pub rank_window: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurationSettings {
    pub gap_ms: u64,
    pub snap_to_shots: bool,
    pub padding_ms: u64,
    pub min_length_ms: Option<u64>,
    pub max_length_ms: Option<u64>,
}

/// A position in the ranked asset list: pages continue strictly after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub score: f64,
    pub asset_id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let mut out = format!("1{:016x}", self.score.to_bits());
        for byte in self.asset_id.as_bytes() {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let rest = text.strip_prefix('1')?;
        if rest.len() < 16 || rest.len() % 2 != 0 || !rest.is_ascii() {
            return None;
        }
        let score = f64::from_bits(u64::from_str_radix(&rest[..16], 16).ok()?);
        let bytes: Option<Vec<u8>> = (16..rest.len()).step_by(2).map(|i| u8::from_str_radix(&rest[i..i + 2], 16).ok()).collect();
        let asset_id = String::from_utf8(bytes?).ok()?;
        score.is_finite().then_some(Cursor { score, asset_id })
    }

    /// Whether an asset ranked (score desc, id asc) comes after this cursor.
    pub fn is_before(&self, score: f64, asset_id: &str) -> bool {
        score < self.score || (score == self.score && asset_id > self.asset_id.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub leaves: Vec<Leaf>,
    pub root: PlanNode,
    pub mode: SearchMode,
    pub per_asset: usize,
    pub limit: usize,
    pub filters: Filters,
    pub min_score: Option<f64>,
    pub evidence: bool,
    pub fusion: FusionSettings,
    pub curation: CurationSettings,
    pub group_by: GroupBy,
    #[serde(skip)]
    pub cursor: Option<Cursor>,
    /// Filtered vector searches that leave at most this many vectors run exactly.
    pub exact_vector_max_candidates: usize,
    /// Words and phrase leaves keep only their best this many seconds a shard (suggest's
    /// moments: five preview assets need the best seconds, not every second of a common word).
    /// A node of an earlier version ignores it and keeps them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_hits_max: Option<usize>,
    /// What `q` became, step by step.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub understanding: Option<Understood>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn to_wire(&self) -> Result<WirePlan, String> {
        let json = serde_json::to_vec(self).map_err(|e| format!("plan to JSON: {e}"))?;
        let vectors = self
            .leaves
            .iter()
            .map(|leaf| match leaf {
                Leaf::Vector { vector, .. } => vector.clone(),
                _ => Vec::new(),
            })
            .collect();
        let cursor = self.cursor.as_ref().map(|c| (c.score, c.asset_id.clone()));
        Ok(WirePlan { json, vectors, cursor })
    }

    pub fn from_wire(wire: &WirePlan) -> Result<Plan, String> {
        let mut plan: Plan = serde_json::from_slice(&wire.json).map_err(|e| format!("plan from JSON: {e}"))?;
        if wire.vectors.len() != plan.leaves.len() {
            return Err(format!("{} vectors for {} leaves", wire.vectors.len(), plan.leaves.len()));
        }
        let positions = |codes: &[String]| -> Result<Vec<usize>, String> {
            codes.iter().map(|code| stem_language(code).ok_or_else(|| format!("unknown stemming language {code:?}"))).collect()
        };
        for (leaf, wire_vector) in plan.leaves.iter_mut().zip(&wire.vectors) {
            match leaf {
                Leaf::Words { text, words, languages, stems, .. } | Leaf::Phrase { text, words, languages, stems, .. } => {
                    *stems = stems_of(&positions(languages)?, text, words.len());
                }
                Leaf::Vector { vector, dimensions, .. } => {
                    if wire_vector.len() != *dimensions {
                        return Err(format!("a vector of {} dimensions for a {dimensions}-dimension clause", wire_vector.len()));
                    }
                    *vector = wire_vector.clone();
                }
                Leaf::Label { .. } => {}
            }
        }
        plan.cursor = wire.cursor.clone().map(|(score, asset_id)| Cursor { score, asset_id });
        Ok(plan)
    }
}

#[derive(Debug, Clone)]
pub struct SpaceInfo {
    pub name: String,
    pub dimensions: usize,
    pub metric: VectorMetric,
}

#[derive(Debug, Clone)]
pub struct SearchLimits {
    pub max_clauses: usize,
    pub max_per_asset: usize,
    pub max_limit: usize,
    pub max_query_bytes: usize,
    pub max_vector_k: usize,
    pub vector_spaces: Vec<SpaceInfo>,
}

#[derive(Debug, Clone, Copy)]
pub struct SearchDefaults {
    pub fusion: FusionMethod,
    pub rank_constant: u32,
    pub rank_window: usize,
    pub exact_vector_max_candidates: usize,
}

impl Default for SearchDefaults {
    fn default() -> Self {
        SearchDefaults { fusion: FusionMethod::Weighted, rank_constant: 60, rank_window: 1000, exact_vector_max_candidates: 20_000 }
    }
}

pub struct PlanContext<'a> {
    pub vocabulary: &'a BTreeMap<String, Vec<String>>,
    pub series: &'a [String],
    pub limits: &'a SearchLimits,
    pub defaults: SearchDefaults,
    pub embedder: Option<&'a dyn Embedder>,
    /// Whether a word occurs in indexed dialogue: a typo-corrected label that is also a spoken
    /// word ("bread" vs "break") stays a word.
    pub known_word: &'a dyn Fn(&str) -> bool,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(field, format!("{field} {}", message.into()))
}

fn check_weight(field: &str, weight: Option<f64>) -> Result<f64, ApiError> {
    let weight = weight.unwrap_or(1.0);
    if !weight.is_finite() || weight <= 0.0 || weight > MAX_WEIGHT {
        return Err(invalid(field, format!("is {weight}; allowed (0, {MAX_WEIGHT}]")));
    }
    Ok(weight)
}

fn check_ms(field: &str, value: Option<u64>) -> Result<(), ApiError> {
    match value {
        Some(v) if v > MAX_GAP_MS => Err(invalid(field, format!("is {v}; allowed 0..={MAX_GAP_MS}"))),
        _ => Ok(()),
    }
}

/// Languages to stem with: one (validated) or all.
fn languages_for(field: &str, language: Option<&str>) -> Result<Vec<usize>, ApiError> {
    match language {
        None => Ok((0..STEM_LANGUAGES.len()).collect()),
        Some(tag) => match stem_language(tag) {
            Some(position) => Ok(vec![position]),
            None => {
                let known: Vec<&str> = STEM_LANGUAGES.iter().map(|(c, _)| *c).collect();
                Err(invalid(field, format!("{tag:?} has no stemmer; use one of {known:?} or leave it out")))
            }
        },
    }
}

fn stems_of(languages: &[usize], text: &str, word_count: usize) -> Vec<(usize, Vec<String>)> {
    languages
        .iter()
        .map(|&position| (position, stem_tokens(position, text)))
        // A stemmer that dropped or split a token would misalign positions: skip it.
        .filter(|(_, stems)| stems.len() == word_count)
        .collect()
}

fn fuzziness_for(field: &str, setting: Option<&Fuzziness>, words: &[String]) -> Result<Vec<u32>, ApiError> {
    match setting {
        None => Ok(words.iter().map(|w| auto_fuzziness(w)).collect()),
        Some(Fuzziness::Named(name)) if name.eq_ignore_ascii_case("auto") => Ok(words.iter().map(|w| auto_fuzziness(w)).collect()),
        Some(Fuzziness::Edits(n)) if *n <= 2 => Ok(vec![*n; words.len()]),
        Some(other) => Err(invalid(field, format!("is {other:?}; use \"auto\", 0, 1 or 2"))),
    }
}

struct Builder<'a, 'b> {
    context: &'a PlanContext<'b>,
    leaves: Vec<Leaf>,
    warnings: Vec<String>,
    language: Option<String>,
}

impl Builder<'_, '_> {
    fn push(&mut self, leaf: Leaf) -> PlanNode {
        self.leaves.push(leaf);
        PlanNode::Leaf { leaf: self.leaves.len() - 1 }
    }

    fn words_leaf(&mut self, field: &str, text: &str, spec: WordsSpec) -> Result<Option<Leaf>, ApiError> {
        let limits = self.context.limits;
        if text.len() > limits.max_query_bytes {
            return Err(invalid(field, format!("is {} bytes; the limit is {}", text.len(), limits.max_query_bytes)));
        }
        let words = tokenize(text);
        if words.is_empty() {
            return Ok(None);
        }
        let languages = languages_for(field, spec.language.or(self.language.as_deref()))?;
        let stems = stems_of(&languages, text, words.len());
        let codes = languages.iter().map(|&p| STEM_LANGUAGES[p].0.to_string()).collect();
        Ok(Some(match spec.kind {
            WordsKind::Words { operator, fuzziness } => Leaf::Words {
                text: text.to_string(),
                fuzziness: fuzziness_for(&format!("{field}.fuzziness"), fuzziness, &words)?,
                // Free words of `q` need half of them (rounded up) in one second: "somewhere
                // they cook" must not match every line with "they", while a misremembered line
                // with one word wrong still matches.
                minimum_should_match: if spec.source == ClauseSource::Query { words.len().div_ceil(2) } else { 1 },
                words,
                operator,
                languages: codes,
                stems,
                weight: spec.weight,
                source: spec.source,
            },
            WordsKind::Phrase { slop } => {
                Leaf::Phrase { text: text.to_string(), words, slop, languages: codes, stems, weight: spec.weight, source: spec.source }
            }
        }))
    }

    fn clause(&mut self, clause: &Clause, field: &str, depth: usize) -> Result<PlanNode, ApiError> {
        if depth > MAX_CLAUSE_DEPTH {
            return Err(invalid(field, format!("nests deeper than {MAX_CLAUSE_DEPTH} levels; flatten it")));
        }
        let at = |name: &str| format!("{field}.{name}");
        match clause {
            Clause::Label { label, track, min_confidence, weight } => {
                let normalized = normalize_label(label);
                if normalized.is_empty() || normalized.len() > 256 {
                    return Err(invalid(&at("label"), "must be 1 to 256 bytes of text"));
                }
                let min_confidence = min_confidence.unwrap_or(DEFAULT_MIN_CONFIDENCE);
                if !(0.0..=1.0).contains(&min_confidence) {
                    return Err(invalid(&at("min_confidence"), format!("is {min_confidence}; allowed 0..=1")));
                }
                let weight = check_weight(&at("weight"), *weight)?;
                Ok(self.push(Leaf::Label {
                    track: track.clone(),
                    label: normalized,
                    min_confidence,
                    weight,
                    source: ClauseSource::Clauses,
                    typed: None,
                }))
            }
            Clause::Dialogue { text, operator, fuzziness, language, weight } => {
                let spec = WordsSpec {
                    kind: WordsKind::Words { operator: operator.unwrap_or(BoolOperator::And), fuzziness: fuzziness.as_ref() },
                    language: language.as_deref(),
                    weight: check_weight(&at("weight"), *weight)?,
                    source: ClauseSource::Clauses,
                };
                match self.words_leaf(&at("text"), text, spec)? {
                    Some(leaf) => Ok(self.push(leaf)),
                    None => Err(invalid(&at("text"), "must hold at least one word")),
                }
            }
            Clause::Phrase { text, slop, language, weight } => {
                let slop = slop.unwrap_or(0);
                if slop > MAX_SLOP {
                    return Err(invalid(&at("slop"), format!("is {slop}; allowed 0..={MAX_SLOP}")));
                }
                let spec = WordsSpec {
                    kind: WordsKind::Phrase { slop },
                    language: language.as_deref(),
                    weight: check_weight(&at("weight"), *weight)?,
                    source: ClauseSource::Clauses,
                };
                match self.words_leaf(&at("text"), text, spec)? {
                    Some(leaf) => Ok(self.push(leaf)),
                    None => Err(invalid(&at("text"), "must hold at least one word")),
                }
            }
            Clause::Vector { space, vector, text, k, min_similarity, exact, ef, metric, weight } => {
                let info = self.space(&at("space"), space)?;
                let k = k.unwrap_or(DEFAULT_VECTOR_K);
                if k == 0 || k > self.context.limits.max_vector_k {
                    return Err(invalid(&at("k"), format!("is {k}; allowed 1..={}", self.context.limits.max_vector_k)));
                }
                if min_similarity.is_some_and(|s| !s.is_finite()) {
                    return Err(invalid(&at("min_similarity"), "must be a finite number"));
                }
                if ef.is_some_and(|ef| ef == 0 || ef > MAX_EF) {
                    return Err(invalid(&at("ef"), format!("is {}; allowed 1..={MAX_EF}", ef.unwrap_or(0))));
                }
                let exact = exact.unwrap_or(false);
                let metric = match metric {
                    None => info.metric,
                    Some(name) => {
                        let wanted = match name {
                            VectorMetricName::Cosine => VectorMetric::Cosine,
                            VectorMetricName::L2 => VectorMetric::L2,
                            VectorMetricName::Ip => VectorMetric::InnerProduct,
                        };
                        if wanted != info.metric && !exact {
                            return Err(invalid(
                                &at("metric"),
                                format!(
                                    "{name:?} differs from space {space:?}'s index metric {:?}: set \"exact\": true to search exactly with it",
                                    info.metric
                                ),
                            ));
                        }
                        wanted
                    }
                };
                let (vector, origin) = match (vector, text) {
                    (Some(_), Some(_)) => return Err(invalid(field, "has both vector and text; give one")),
                    (None, None) => return Err(invalid(&at("vector"), "is missing: give a query vector, or text for the embedder")),
                    (Some(vector), None) => {
                        if vector.len() != info.dimensions {
                            return Err(invalid(
                                &at("vector"),
                                format!("has {} dimensions; space {space:?} has {}", vector.len(), info.dimensions),
                            ));
                        }
                        if vector.iter().any(|x| !x.is_finite() || !(*x as f32).is_finite()) {
                            return Err(invalid(&at("vector"), "must hold finite 32-bit numbers"));
                        }
                        (vector.iter().map(|x| *x as f32).collect(), VectorOrigin::Client)
                    }
                    (None, Some(text)) => self.embed(&at("text"), space, text)?,
                };
                let leaf = Leaf::Vector {
                    space: space.clone(),
                    dimensions: info.dimensions,
                    k,
                    min_similarity: *min_similarity,
                    exact,
                    ef: *ef,
                    metric,
                    vector,
                    origin,
                    weight: check_weight(&at("weight"), *weight)?,
                    source: ClauseSource::Clauses,
                };
                Ok(self.push(leaf))
            }
            Clause::While { clauses } | Clause::Any { clauses } => {
                if clauses.is_empty() || clauses.len() > self.context.limits.max_clauses {
                    return Err(invalid(&at("clauses"), format!("must hold 1 to {} clauses", self.context.limits.max_clauses)));
                }
                let nodes = clauses
                    .iter()
                    .enumerate()
                    .map(|(i, c)| self.clause(c, &format!("{field}.clauses[{i}]"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if matches!(clause, Clause::While { .. }) { PlanNode::While { nodes } } else { PlanNode::Any { nodes } })
            }
            Clause::Sequence { first, then, within_ms } => {
                let within_ms = within_ms.unwrap_or(DEFAULT_SEQUENCE_WITHIN_MS);
                if within_ms > MAX_SEQUENCE_WITHIN_MS {
                    return Err(invalid(&at("within_ms"), format!("is {within_ms}; allowed 0..={MAX_SEQUENCE_WITHIN_MS}")));
                }
                let first = self.clause(first, &at("first"), depth + 1)?;
                let then = self.clause(then, &at("then"), depth + 1)?;
                Ok(PlanNode::Sequence { first: Box::new(first), then: Box::new(then), within_ms })
            }
        }
    }

    fn space(&self, field: &str, space: &str) -> Result<SpaceInfo, ApiError> {
        self.context.limits.vector_spaces.iter().find(|s| s.name == space).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.context.limits.vector_spaces.iter().map(|s| s.name.as_str()).collect();
            invalid(field, format!("{space:?} is not a configured vector space; configured: {known:?}"))
        })
    }

    fn embed(&self, field: &str, space: &str, text: &str) -> Result<(Vec<f32>, VectorOrigin), ApiError> {
        let Some(embedder) = self.context.embedder else {
            return Err(invalid(field, "needs an embedder, and none is configured ([embedder] url): send a vector instead"));
        };
        if embedder.space() != space {
            return Err(invalid(field, format!("can only be embedded into space {:?} (the embedder's); send a vector", embedder.space())));
        }
        match embedder.embed(&[text.to_string()]) {
            Ok(mut vectors) if vectors.len() == 1 => {
                let vector = vectors.remove(0);
                Ok((vector, VectorOrigin::Embedder { text: text.to_string(), embedder: embedder.name().to_string() }))
            }
            Ok(_) => Err(ApiError::new(ErrorCode::Unavailable, "the embedder returned no vector").with_retry_after(1)),
            Err(EmbedError::Unavailable(message)) => {
                Err(ApiError::new(ErrorCode::Unavailable, format!("the embedder is unavailable: {message}")).with_retry_after(1))
            }
            Err(other) => Err(invalid(field, format!("could not be embedded: {other}"))),
        }
    }

    /// A `q` node → plan node. `Words` become dialogue words, plus a vector clause from the
    /// embedder when one is configured (fused: either may match).
    fn query_node(&mut self, node: &QueryNode) -> Result<Option<PlanNode>, ApiError> {
        Ok(match node {
            QueryNode::Label { typed, edits, .. } if *edits > 0 && (self.context.known_word)(typed) => {
                self.query_node(&QueryNode::Words { text: typed.clone() })?
            }
            QueryNode::Label { label, tracks, typed, edits } => Some(self.push(Leaf::Label {
                track: (tracks.len() == 1).then(|| tracks[0].clone()),
                label: label.clone(),
                min_confidence: DEFAULT_MIN_CONFIDENCE,
                weight: 1.0,
                source: ClauseSource::Query,
                typed: (*edits > 0).then(|| typed.clone()),
            })),
            QueryNode::Phrase { text } => {
                let spec = WordsSpec { kind: WordsKind::Phrase { slop: 0 }, language: None, weight: 1.0, source: ClauseSource::Query };
                self.words_leaf("q", text, spec)?.map(|leaf| self.push(leaf))
            }
            QueryNode::Words { text } => {
                let spec = WordsSpec {
                    kind: WordsKind::Words { operator: BoolOperator::Or, fuzziness: None },
                    language: None,
                    weight: 1.0,
                    source: ClauseSource::Query,
                };
                let Some(words) = self.words_leaf("q", text, spec)? else { return Ok(None) };
                let words = self.push(words);
                match self.semantic(text)? {
                    Some(vector) => Some(PlanNode::Any { nodes: vec![words, vector] }),
                    None => Some(words),
                }
            }
            QueryNode::Sequence { first, then, within_ms } => match (self.query_node(first)?, self.query_node(then)?) {
                (Some(first), Some(then)) => Some(PlanNode::Sequence {
                    first: Box::new(first),
                    then: Box::new(then),
                    within_ms: (*within_ms).min(MAX_SEQUENCE_WITHIN_MS),
                }),
                (one, other) => one.or(other),
            },
            QueryNode::While { a, b } => {
                let nodes: Vec<PlanNode> = [self.query_node(a)?, self.query_node(b)?].into_iter().flatten().collect();
                single_or(nodes, |nodes| PlanNode::While { nodes })
            }
            QueryNode::All { nodes } => {
                let mut planned = Vec::new();
                for node in nodes {
                    planned.extend(self.query_node(node)?);
                }
                single_or(planned, |nodes| PlanNode::While { nodes })
            }
        })
    }

    /// A vector clause for free text, when an embedder is configured and knows the words.
    fn semantic(&mut self, text: &str) -> Result<Option<PlanNode>, ApiError> {
        let Some(embedder) = self.context.embedder else { return Ok(None) };
        let Ok(info) = self.space("q", embedder.space()) else { return Ok(None) };
        match embedder.embed(&[text.to_string()]) {
            Ok(vectors) if vectors.len() == 1 && vectors[0].len() == info.dimensions => {
                let leaf = Leaf::Vector {
                    space: info.name.clone(),
                    dimensions: info.dimensions,
                    k: self.context.limits.max_vector_k,
                    min_similarity: Some(SEMANTIC_MIN_SIMILARITY),
                    exact: false,
                    ef: None,
                    metric: info.metric,
                    vector: vectors.into_iter().next().unwrap_or_default(),
                    origin: VectorOrigin::Embedder { text: text.to_string(), embedder: embedder.name().to_string() },
                    weight: 1.0,
                    source: ClauseSource::Query,
                };
                Ok(Some(self.push(leaf)))
            }
            Ok(_) => {
                self.warnings.push(format!("the embedder returned no usable vector for {text:?}; searched the words only"));
                Ok(None)
            }
            Err(EmbedError::OutOfVocabulary(_)) => Ok(None),
            Err(e) => {
                // The words still search dialogue: degrade, and say so, rather than fail.
                self.warnings.push(format!("the embedder failed ({e}); searched the words only"));
                Ok(None)
            }
        }
    }
}

fn single_or(mut nodes: Vec<PlanNode>, many: impl FnOnce(Vec<PlanNode>) -> PlanNode) -> Option<PlanNode> {
    match nodes.len() {
        0 => None,
        1 => nodes.pop(),
        _ => Some(many(nodes)),
    }
}

enum WordsKind<'a> {
    Words { operator: BoolOperator, fuzziness: Option<&'a Fuzziness> },
    Phrase { slop: u32 },
}

struct WordsSpec<'a> {
    kind: WordsKind<'a>,
    language: Option<&'a str>,
    weight: f64,
    source: ClauseSource,
}

/// Validates a request and compiles it into a plan.
/// Leaf clauses (labels, dialogue, phrases, vectors) in `clauses` and everything nested in them.
fn count_leaf_clauses<'a>(clauses: impl Iterator<Item = &'a Clause>) -> usize {
    clauses
        .map(|clause| match clause {
            Clause::While { clauses } | Clause::Any { clauses } => count_leaf_clauses(clauses.iter()),
            Clause::Sequence { first, then, .. } => count_leaf_clauses([first.as_ref(), then.as_ref()].into_iter()),
            _ => 1,
        })
        .fold(0usize, usize::saturating_add)
}

pub fn plan(request: &SearchRequest, context: &PlanContext) -> Result<Plan, ApiError> {
    let limits = context.limits;
    let per_asset = request.per_asset.unwrap_or(DEFAULT_PER_ASSET);
    if per_asset == 0 || per_asset > limits.max_per_asset {
        return Err(invalid("per_asset", format!("is {per_asset}; allowed 1..={}", limits.max_per_asset)));
    }
    let limit = request.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > limits.max_limit {
        return Err(invalid("limit", format!("is {limit}; allowed 1..={}", limits.max_limit)));
    }
    let mut filters = request.filters.clone().unwrap_or_default();
    if let (Some(from), Some(to)) = (filters.from_ms, filters.to_ms) {
        if to <= from {
            return Err(invalid("filters.to_ms", format!("({to}) must be greater than filters.from_ms ({from})")));
        }
    }
    check_ms("gap_ms", request.gap_ms)?;
    check_ms("padding_ms", request.padding_ms)?;
    check_ms("min_length_ms", request.min_length_ms)?;
    check_ms("max_length_ms", request.max_length_ms)?;
    if request.max_length_ms == Some(0) {
        return Err(invalid("max_length_ms", "must be at least 1 (or left out)"));
    }
    if let (Some(min), Some(max)) = (request.min_length_ms, request.max_length_ms) {
        if min > max {
            return Err(invalid("min_length_ms", format!("({min}) must not exceed max_length_ms ({max})")));
        }
    }
    if let Some(min_score) = request.min_score {
        if !min_score.is_finite() {
            return Err(invalid("min_score", "must be a finite number"));
        }
    }
    let options = request.fusion.clone().unwrap_or_default();
    let fusion = FusionSettings {
        method: options.method.unwrap_or(context.defaults.fusion),
        rank_constant: options.rank_constant.unwrap_or(context.defaults.rank_constant),
        rank_window: options.rank_window.unwrap_or(context.defaults.rank_window),
    };
    if fusion.rank_constant == 0 || fusion.rank_constant > 10_000 {
        return Err(invalid("fusion.rank_constant", format!("is {}; allowed 1..=10000", fusion.rank_constant)));
    }
    if fusion.rank_window == 0 || fusion.rank_window > 100_000 {
        return Err(invalid("fusion.rank_window", format!("is {}; allowed 1..=100000", fusion.rank_window)));
    }
    let cursor =
        match &request.cursor {
            None => None,
            Some(text) => Some(Cursor::decode(text).ok_or_else(|| {
                invalid("cursor", "is not a cursor this server issued: pass `next_cursor` from the previous page unchanged")
            })?),
        };
    if let Some(language) = &request.language {
        languages_for("language", Some(language))?;
    }
    // Counted before anything is built: building a clause may call the embedder, so a request
    // with thousands of clauses must be refused before the first one.
    let clause_count = count_leaf_clauses(request.clauses.iter().flatten());
    if clause_count > limits.max_clauses {
        return Err(invalid("clauses", format!("holds {clause_count} clauses (nested ones counted); the limit is {}", limits.max_clauses)));
    }
    let mode = request.mode.unwrap_or_default();
    let mut builder = Builder { context, leaves: Vec::new(), warnings: Vec::new(), language: request.language.clone() };
    let mut top = Vec::new();
    for (i, clause) in request.clauses.iter().flatten().enumerate() {
        top.push(builder.clause(clause, &format!("clauses[{i}]"), 1)?);
    }
    let mut understanding = None;
    if let Some(q) = &request.q {
        if q.len() > limits.max_query_bytes {
            return Err(ApiError::new(ErrorCode::TooLarge, format!("q is {} bytes; the limit is {}", q.len(), limits.max_query_bytes))
                .with_field("q"));
        }
        let understood = understand(q, &Vocabulary { labels: context.vocabulary, series: context.series });
        // Filters written in `q` apply unless the request sets the same filter itself.
        let extracted = &understood.filters;
        if filters.series.is_none() {
            filters.series = extracted.series.clone().map(|s| vec![s]);
        }
        filters.season = filters.season.or(extracted.season);
        filters.episode = filters.episode.or(extracted.episode);
        if filters.from_ms.is_none() && filters.to_ms.is_none() {
            filters.from_ms = extracted.from_ms;
            filters.to_ms = extracted.to_ms;
        }
        if let Some(root) = &understood.root {
            match (mode, root) {
                // In union mode the criteria of `q` are alternatives too.
                (SearchMode::Union, QueryNode::All { nodes }) => {
                    for node in nodes {
                        top.extend(builder.query_node(node)?);
                    }
                }
                _ => top.extend(builder.query_node(root)?),
            }
        }
        understanding = Some(understood);
    }
    if builder.leaves.len() > limits.max_clauses {
        return Err(invalid(
            "clauses",
            format!("has {} clauses after understanding q; the limit is {}", builder.leaves.len(), limits.max_clauses),
        ));
    }
    let root = match mode {
        SearchMode::Intersection => single_or(top, |nodes| PlanNode::While { nodes }),
        SearchMode::Union => single_or(top, |nodes| PlanNode::Any { nodes }),
    };
    let Some(root) = root else {
        return Err(invalid(
            "q",
            "found nothing to search for: give `q` with a name, a place or words (quote a line for a phrase), or structured `clauses`",
        ));
    };
    Ok(Plan {
        leaves: builder.leaves,
        root,
        mode,
        per_asset,
        limit,
        filters,
        min_score: request.min_score,
        evidence: request.evidence.unwrap_or(true),
        fusion,
        curation: CurationSettings {
            gap_ms: request.gap_ms.unwrap_or(0),
            snap_to_shots: request.snap_to_shots.unwrap_or(false),
            padding_ms: request.padding_ms.unwrap_or(0),
            min_length_ms: request.min_length_ms,
            max_length_ms: request.max_length_ms,
        },
        group_by: request.group_by.unwrap_or_default(),
        cursor,
        exact_vector_max_candidates: context.defaults.exact_vector_max_candidates,
        text_hits_max: None,
        understanding,
        warnings: builder.warnings,
    })
}

impl Plan {
    /// Lowers `k` of the vector leaves that `q`'s free words produced through the embedder;
    /// vector clauses the client sent keep theirs.
    pub fn cap_semantic_k(&mut self, k_max: usize) {
        for leaf in &mut self.leaves {
            if let Leaf::Vector { k, origin: VectorOrigin::Embedder { .. }, .. } = leaf {
                *k = (*k).min(k_max);
            }
        }
    }

    /// Narrows the free words of `q` for a preview of the best moments: a second must hold
    /// every word (rather than half of them), a word the dictionary holds (`known`) matches
    /// only itself (no stems, no neighbours within edits), and an unknown one keeps its edits.
    /// Such a leaf is a conjunction of plain terms, which the index answers best-first while
    /// skipping blocks that cannot reach the best seconds (block-max WAND); half the words,
    /// each the best of itself, its stems and its neighbours, score every second holding any
    /// of them. Returns the narrowed leaves.
    pub fn require_every_word(&mut self, known: impl Fn(&str) -> bool) -> Vec<usize> {
        let mut narrowed = Vec::new();
        for (index, leaf) in self.leaves.iter_mut().enumerate() {
            if let Leaf::Words { words, fuzziness, operator, minimum_should_match, languages, stems, source: ClauseSource::Query, .. } =
                leaf
            {
                *operator = BoolOperator::And;
                *minimum_should_match = words.len();
                for (word, edits) in words.iter().zip(fuzziness.iter_mut()) {
                    if known(word) {
                        *edits = 0;
                    }
                }
                // Without languages, a peer derives no stems either (stems do not travel).
                languages.clear();
                stems.clear();
                narrowed.push(index);
            }
        }
        narrowed
    }
}

/// The plan of a JSON request under generous limits, no vocabulary and no embedder (tests of
/// other modules).
#[cfg(test)]
pub(crate) fn plan_of_json(json: serde_json::Value) -> Plan {
    let limits = SearchLimits {
        max_clauses: 16,
        max_per_asset: 50,
        max_limit: 100,
        max_query_bytes: 4096,
        max_vector_k: 1000,
        vector_spaces: vec![],
    };
    let request: SearchRequest = serde_json::from_value(json).expect("request");
    let (vocabulary, series) = (BTreeMap::new(), Vec::new());
    let context = PlanContext {
        vocabulary: &vocabulary,
        series: &series,
        limits: &limits,
        defaults: SearchDefaults::default(),
        embedder: None,
        known_word: &|_| false,
    };
    plan(&request, &context).expect("plan")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_requires_every_free_word_and_keeps_edits_only_for_unknown_ones() {
        let mut plan = plan_json(serde_json::json!({
            "q": "purple monkeys dancing",
            "clauses": [{"type": "dialogue", "text": "we were on a break"}]
        }))
        .unwrap();
        let free = plan.leaves.iter().position(|l| matches!(l, Leaf::Words { source: ClauseSource::Query, .. })).unwrap();
        let sent = plan.leaves.iter().position(|l| matches!(l, Leaf::Words { source: ClauseSource::Clauses, .. })).unwrap();
        let sent_before = plan.leaves[sent].clone();
        let Leaf::Words { fuzziness, operator, minimum_should_match, stems, .. } = &plan.leaves[free] else { unreachable!() };
        assert_eq!((fuzziness.as_slice(), *operator, *minimum_should_match), ([2, 2, 2].as_slice(), BoolOperator::Or, 2));
        assert!(!stems.is_empty(), "the free words have stems to drop");

        let narrowed = plan.require_every_word(|word| word == "purple" || word == "monkeys");
        assert_eq!(narrowed, vec![free]);
        let Leaf::Words { fuzziness, operator, minimum_should_match, stems, languages, .. } = &plan.leaves[free] else { unreachable!() };
        assert_eq!((fuzziness.as_slice(), *operator, *minimum_should_match), ([0, 0, 2].as_slice(), BoolOperator::And, 3));
        assert!(stems.is_empty() && languages.is_empty(), "stems, which a peer derives from the languages, are dropped");
        assert_eq!(plan.leaves[sent], sent_before, "a dialogue clause the client sent is left as sent");
        // Across the wire, the narrowed leaf stays narrowed.
        let back = Plan::from_wire(&plan.to_wire().unwrap()).unwrap();
        assert_eq!(back.leaves[free], plan.leaves[free]);
    }

    #[test]
    fn capping_semantic_k_leaves_client_vectors_alone() {
        let mut plan =
            plan_json(serde_json::json!({"clauses": [{"type": "vector", "space": "scene", "vector": [1.0, 0.0, 0.0], "k": 500}]})).unwrap();
        let mut embedded = plan.leaves[0].clone();
        if let Leaf::Vector { origin, k, .. } = &mut embedded {
            *origin = VectorOrigin::Embedder { text: "somewhere they cook".into(), embedder: "demo".into() };
            *k = 1000;
        }
        plan.leaves.push(embedded);
        plan.cap_semantic_k(200);
        let ks: Vec<usize> = plan.leaves.iter().filter_map(|l| if let Leaf::Vector { k, .. } = l { Some(*k) } else { None }).collect();
        assert_eq!(ks, vec![500, 200]);
    }

    fn vocabulary() -> BTreeMap<String, Vec<String>> {
        let mut v = BTreeMap::new();
        v.insert("joey".to_string(), vec!["character".to_string()]);
        v.insert("rachel".to_string(), vec!["character".to_string()]);
        v.insert("kitchen".to_string(), vec!["scene".to_string()]);
        v.insert("coffee shop".to_string(), vec!["scene".to_string()]);
        v.insert("brad".to_string(), vec!["character".to_string()]);
        v
    }

    fn limits() -> SearchLimits {
        SearchLimits {
            max_clauses: 4,
            max_per_asset: 100,
            max_limit: 1000,
            max_query_bytes: 100,
            max_vector_k: 1000,
            vector_spaces: vec![SpaceInfo { name: "scene".into(), dimensions: 3, metric: VectorMetric::Cosine }],
        }
    }

    fn plan_json(json: serde_json::Value) -> Result<Plan, ApiError> {
        let request: SearchRequest = serde_json::from_value(json).unwrap();
        let vocabulary = vocabulary();
        let limits = limits();
        let series = vec!["friends".to_string()];
        let known_word = |word: &str| word == "bread";
        let context = PlanContext {
            vocabulary: &vocabulary,
            series: &series,
            limits: &limits,
            defaults: SearchDefaults::default(),
            embedder: None,
            known_word: &known_word,
        };
        plan(&request, &context)
    }

    #[test]
    fn q_becomes_labels_phrases_words_and_filters() {
        let plan = plan_json(serde_json::json!({"q": "Jooey in the kitchen season 3"})).unwrap();
        assert!(matches!(&plan.leaves[0], Leaf::Label { label, typed: Some(t), .. } if label == "joey" && t == "jooey"));
        assert!(matches!(&plan.leaves[1], Leaf::Label { label, .. } if label == "kitchen"));
        assert_eq!(plan.filters.season, Some(3));
        assert!(matches!(plan.root, PlanNode::While { ref nodes } if nodes.len() == 2));
        let plan = plan_json(serde_json::json!({"q": "\"we were on a break\" Rachel"})).unwrap();
        assert!(plan.leaves.iter().any(|l| matches!(l, Leaf::Phrase { words, .. } if words.join(" ") == "we were on a break")));
        // "brad" is one edit from "bread"; a known spoken word is not corrected into a label.
        let plan = plan_json(serde_json::json!({"q": "Racheal bread"})).unwrap();
        assert!(matches!(&plan.leaves[0], Leaf::Label { label, .. } if label == "rachel"));
        assert!(matches!(&plan.leaves[1], Leaf::Words { words, .. } if words == &vec!["bread".to_string()]));
        let plan = plan_json(serde_json::json!({"q": "Rachel then Joey within 10 seconds"})).unwrap();
        assert!(matches!(plan.root, PlanNode::Sequence { within_ms: 10_000, .. }), "{:?}", plan.root);
    }

    #[test]
    fn structured_clauses_nest_and_validate() {
        let plan = plan_json(serde_json::json!({"clauses": [{"type": "sequence", "first": {"type": "label", "label": "Joey"},
            "then": {"type": "while", "clauses": [{"type": "label", "label": "Rachel"}, {"type": "dialogue", "text": "pizza"}]}, "within_ms": 5000}]}))
        .unwrap();
        assert_eq!(plan.leaves.len(), 3);
        assert!(matches!(plan.root, PlanNode::Sequence { within_ms: 5000, .. }));
    }

    #[test]
    fn cursors_round_trip_and_order() {
        let cursor = Cursor { score: 0.75, asset_id: "s01e02".into() };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor.clone()));
        assert!(cursor.is_before(0.5, "a"));
        assert!(cursor.is_before(0.75, "s01e03"));
        assert!(!cursor.is_before(0.75, "s01e02"));
        assert!(!cursor.is_before(0.9, "z"));
        for bad in ["", "1", "1zz", "2000000000000000000", "1000000000000000000f"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn plan_rejects_bad_requests_with_field_names() {
        let cases = [
            (serde_json::json!({"q": "Joey", "per_asset": 0}), "per_asset"),
            (serde_json::json!({"q": "Joey", "limit": 5000}), "limit"),
            (serde_json::json!({"q": "the in"}), "q"),
            (serde_json::json!({"q": "x".repeat(200)}), "q"),
            (serde_json::json!({"clauses": [{"type": "vector", "space": "scene", "vector": [1, 2]}]}), "clauses[0].vector"),
            (serde_json::json!({"clauses": [{"type": "vector", "space": "faces", "vector": [1, 2, 3]}]}), "clauses[0].space"),
            (serde_json::json!({"clauses": [{"type": "vector", "space": "scene", "text": "kitchen"}]}), "clauses[0].text"),
            (
                serde_json::json!({"clauses": [{"type": "vector", "space": "scene", "vector": [1, 2, 3], "metric": "l2"}]}),
                "clauses[0].metric",
            ),
            (serde_json::json!({"clauses": [{"type": "vector", "space": "scene", "vector": [1, 2, 3], "ef": 0}]}), "clauses[0].ef"),
            (serde_json::json!({"clauses": [{"type": "label", "label": "Joey", "min_confidence": 2}]}), "clauses[0].min_confidence"),
            (serde_json::json!({"clauses": [{"type": "label", "label": "Joey", "weight": -1}]}), "clauses[0].weight"),
            (serde_json::json!({"clauses": [{"type": "phrase", "text": "a b", "slop": 99}]}), "clauses[0].slop"),
            (serde_json::json!({"clauses": [{"type": "dialogue", "text": "a b", "fuzziness": 3}]}), "clauses[0].text.fuzziness"),
            (serde_json::json!({"clauses": [{"type": "dialogue", "text": "a b", "language": "xx"}]}), "clauses[0].text"),
            (serde_json::json!({"clauses": [{"type": "any", "clauses": []}]}), "clauses[0].clauses"),
            (
                serde_json::json!({"clauses": [{"type": "sequence", "first": {"type": "label", "label": "a"}, "then": {"type": "label", "label": "b"}, "within_ms": 99999999}]}),
                "clauses[0].within_ms",
            ),
            (serde_json::json!({"q": "Joey", "filters": {"from_ms": 10, "to_ms": 5}}), "filters.to_ms"),
            (serde_json::json!({"q": "Joey", "min_length_ms": 5000, "max_length_ms": 1000}), "min_length_ms"),
            (serde_json::json!({"q": "Joey", "padding_ms": 999999999}), "padding_ms"),
            (serde_json::json!({"q": "Joey", "cursor": "nonsense"}), "cursor"),
            (serde_json::json!({"q": "Joey", "fusion": {"rank_constant": 0}}), "fusion.rank_constant"),
            (serde_json::json!({"q": "Joey", "language": "klingon"}), "language"),
        ];
        for (json, field) in cases {
            let err = plan_json(json.clone()).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{json}: {err:?}");
        }
        let deep = (0..6)
            .fold(serde_json::json!({"type": "label", "label": "Joey"}), |inner, _| serde_json::json!({"type": "any", "clauses": [inner]}));
        assert!(plan_json(serde_json::json!({"clauses": [deep]})).is_err());
        assert!(plan_json(serde_json::json!({"q": "Joey kitchen"})).is_ok());
    }
}
