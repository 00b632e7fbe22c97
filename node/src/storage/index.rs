//! A shard's search indexes: one Tantivy index of bucket documents and one usearch index per
//! vector space.
//!
//! Tantivy: one document per non-empty bucket, keyed `asset\0second`. Labels are exact keywords
//! `track\x1flabel\x1fpercent` (and `*\x1flabel\x1fpercent` for any track), where `percent` is the
//! annotation's confidence in hundredths, plus one `~decile` term per label, so `min_confidence`
//! is a small term set and the score can follow confidence.
//! Dialogue text goes through a lower-casing, ASCII-folding analyzer (`dialogue`) and through the
//! stemmer of the annotation's language (`dialogue_<lang>`) at every second the line covers,
//! with frequencies for words. Phrases need positions: those are indexed once per line, at its
//! first second (`dialogue_line`, `dialogue_line_<lang>`, and `line_end_second`, the last second
//! of the longest line starting there, so a match spreads over the seconds the line covers), and
//! there again together with the line before it (`dialogue_bridge`, and the line before alone in
//! `dialogue_before`), so a phrase can run across two lines.
//!
//! usearch: one vector per annotation (not per second: a scene annotation covers tens of
//! seconds, so this is ~30x fewer vectors); a hit maps back to the seconds it covers.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rushes_protocol::codec;
use rushes_protocol::model::{normalize_label, Bucket};
use serde::{Deserialize, Serialize};
use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::columnar::Column;
use tantivy::query::Bm25StatisticsProvider;
use tantivy::query::Query;
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STRING};
use tantivy::tokenizer::{AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer};
use tantivy::{
    DocId, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher, SegmentReader, TantivyDocument, Term, TERMINATED,
};

use crate::storage::blocks::{block_buckets, block_of, owned_bucket, BucketBlockRef};
use crate::storage::flat_vectors::FlatVectors;
use crate::storage::store::{ShardStore, StoreError};

pub const TEXT_ANALYZER: &str = "rushes_text";
/// Version of the index layout (schema, terms, vector keys). Bump it when documents change:
/// nodes then rebuild their indexes from the bucket store at start.
pub const INDEX_FORMAT_VERSION: u32 = 5;
/// A line starting within this many buckets after the previous one ends continues it: a
/// phrase may run across the two.
pub const BRIDGE_WINDOW_BUCKETS: u64 = 10;

/// Languages with a stemmed dialogue field: (ISO 639-1 code, stemmer). Annotations in other
/// languages are still searchable through the unstemmed field.
pub const STEM_LANGUAGES: &[(&str, Language)] = &[
    ("en", Language::English),
    ("fr", Language::French),
    ("de", Language::German),
    ("es", Language::Spanish),
    ("it", Language::Italian),
    ("pt", Language::Portuguese),
    ("nl", Language::Dutch),
    ("da", Language::Danish),
    ("sv", Language::Swedish),
    ("no", Language::Norwegian),
    ("fi", Language::Finnish),
    ("ru", Language::Russian),
    ("ro", Language::Romanian),
    ("hu", Language::Hungarian),
    ("tr", Language::Turkish),
    ("el", Language::Greek),
    ("ar", Language::Arabic),
    ("ta", Language::Tamil),
];

/// Maps a language tag (`en`, `en-US`, `eng`, `English`, `fr_CA`, ...) to a stemmed language's
/// position in [`STEM_LANGUAGES`].
pub fn stem_language(tag: &str) -> Option<usize> {
    let primary = tag.trim().split(['-', '_']).next().unwrap_or("").to_ascii_lowercase();
    let code = match primary.as_str() {
        "eng" | "english" => "en",
        "fra" | "fre" | "french" | "francais" | "français" => "fr",
        "deu" | "ger" | "german" | "deutsch" => "de",
        "spa" | "spanish" | "espanol" | "español" => "es",
        "ita" | "italian" | "italiano" => "it",
        "por" | "portuguese" | "portugues" | "português" => "pt",
        "nld" | "dut" | "dutch" | "nederlands" => "nl",
        "dan" | "danish" => "da",
        "swe" | "swedish" => "sv",
        "nor" | "nob" | "nb" | "nn" | "norwegian" => "no",
        "fin" | "finnish" => "fi",
        "rus" | "russian" => "ru",
        "ron" | "rum" | "romanian" => "ro",
        "hun" | "hungarian" => "hu",
        "tur" | "turkish" => "tr",
        "ell" | "gre" | "greek" => "el",
        "ara" | "arabic" => "ar",
        "tam" | "tamil" => "ta",
        other => other,
    };
    STEM_LANGUAGES.iter().position(|(c, _)| *c == code)
}

fn stem_analyzer_name(code: &str) -> String {
    format!("rushes_stem_{code}")
}
const VECTOR_META_FORMAT: u8 = 1;
pub(crate) const VECTOR_KEY_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("usearch ({space}): {message}")]
    Vector { space: String, message: String },
    #[error("index i/o at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("codec: {0}")]
    Codec(#[from] codec::CodecError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VectorMetric {
    Cosine,
    L2,
    InnerProduct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VectorQuantization {
    F32,
    F16,
    I8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VectorSpaceSpec {
    pub name: String,
    pub dimensions: usize,
    pub metric: VectorMetric,
    pub quantization: VectorQuantization,
    pub connectivity: usize,
    pub expansion_add: usize,
    pub expansion_search: usize,
}

#[derive(Clone, Copy)]
pub struct Fields {
    pub key: Field,
    pub asset_ordinal: Field,
    pub second: Field,
    pub series: Field,
    pub season: Field,
    pub episode: Field,
    pub labels: Field,
    pub tracks: Field,
    pub dialogue: Field,
    /// Previous line + this line, at the first second of a line.
    pub dialogue_bridge: Field,
    /// The previous line alone, where `dialogue_bridge` is set: a bridge match counts only when
    /// the phrase does not already match the previous line by itself (it must cross the break).
    pub dialogue_before: Field,
    /// One stemmed field per entry of [`STEM_LANGUAGES`], same order.
    pub dialogue_stemmed: [Field; STEM_LANGUAGES.len()],
    /// The lines that start at this second, with positions (phrases): once per line, where
    /// `dialogue` repeats a line at every second it covers.
    pub dialogue_line: Field,
    /// Stemmed lines starting at this second, as `dialogue_stemmed`.
    pub dialogue_line_stemmed: [Field; STEM_LANGUAGES.len()],
    /// Where `dialogue_line` is set: the last second of the longest line starting here.
    pub line_end_second: Field,
}

fn build_schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let indexing = |tokenizer: &str, option: IndexRecordOption| {
        TextOptions::default().set_indexing_options(TextFieldIndexing::default().set_tokenizer(tokenizer).set_index_option(option))
    };
    // Words at every second need frequencies only; positions (phrases) are indexed once a line.
    let words = indexing(TEXT_ANALYZER, IndexRecordOption::WithFreqs);
    let phrases = indexing(TEXT_ANALYZER, IndexRecordOption::WithFreqsAndPositions);
    let fields = Fields {
        key: builder.add_text_field("key", STRING),
        asset_ordinal: builder.add_u64_field("asset_ordinal", INDEXED | FAST),
        second: builder.add_u64_field("second", INDEXED | FAST),
        series: builder.add_text_field("series", STRING | FAST),
        season: builder.add_u64_field("season", INDEXED | FAST),
        episode: builder.add_u64_field("episode", INDEXED | FAST),
        labels: builder.add_text_field("labels", STRING),
        tracks: builder.add_text_field("tracks", STRING),
        dialogue: builder.add_text_field("dialogue", words),
        dialogue_bridge: builder.add_text_field("dialogue_bridge", phrases.clone()),
        dialogue_before: builder.add_text_field("dialogue_before", phrases.clone()),
        dialogue_stemmed: std::array::from_fn(|i| {
            let (code, _) = STEM_LANGUAGES[i];
            builder.add_text_field(&format!("dialogue_{code}"), indexing(&stem_analyzer_name(code), IndexRecordOption::WithFreqs))
        }),
        dialogue_line: builder.add_text_field("dialogue_line", phrases),
        dialogue_line_stemmed: std::array::from_fn(|i| {
            let (code, _) = STEM_LANGUAGES[i];
            let options = indexing(&stem_analyzer_name(code), IndexRecordOption::WithFreqsAndPositions);
            builder.add_text_field(&format!("dialogue_line_{code}"), options)
        }),
        line_end_second: builder.add_u64_field(LINE_END_SECOND, FAST),
    };
    (builder.build(), fields)
}

/// The fast field of [`Fields::line_end_second`].
const LINE_END_SECOND: &str = "line_end_second";

pub fn text_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// Lower-cases, stems (before folding accents: stemmers expect them), then folds.
pub fn stem_analyzer(language: Language) -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(Stemmer::new(language))
        .filter(AsciiFoldingFilter)
        .build()
}

/// Splits text into the index's dialogue tokens.
pub fn tokenize(text: &str) -> Vec<String> {
    tokens_with(&mut text_analyzer(), text).into_iter().map(|(t, _)| t).collect()
}

/// Tokens with their byte ranges in `text`.
pub fn tokens_with(analyzer: &mut TextAnalyzer, text: &str) -> Vec<(String, [usize; 2])> {
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        let token = stream.token();
        out.push((token.text.clone(), [token.offset_from, token.offset_to]));
    }
    out
}

/// Stemmed tokens of `text` in the language at `position` of [`STEM_LANGUAGES`].
pub fn stem_tokens(position: usize, text: &str) -> Vec<String> {
    tokens_with(&mut stem_analyzer(STEM_LANGUAGES[position].1), text).into_iter().map(|(t, _)| t).collect()
}

pub fn label_term_text(track: Option<&str>, label: &str, percent: u64) -> String {
    format!("{}\u{1f}{}\u{1f}{percent}", track.unwrap_or("*"), normalize_label(label))
}

/// Term for "this label with a confidence in decile `decile`" (0 = [0, 0.1), ..., 9 = [0.9, 1]):
/// a `min_confidence` on a decile boundary is a handful of terms, and each decile scores
/// differently.
pub fn label_decile_term_text(track: Option<&str>, label: &str, decile: u64) -> String {
    format!("{}\u{1f}{}\u{1f}~{decile}", track.unwrap_or("*"), normalize_label(label))
}

pub fn bucket_key_text(asset_id: &str, second: u64) -> String {
    format!("{asset_id}\u{0}{second}")
}

/// Where a vector hit lands on the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorTarget {
    pub asset_id: String,
    pub annotation_id: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

pub fn vector_key(asset_id: &str, annotation_id: &str) -> u64 {
    // usearch reserves u64::MAX as "no key".
    xxhash_rust::xxh3::xxh3_64(&crate::storage::store::annotation_key(asset_id, annotation_id)) & (u64::MAX >> 1)
}

pub struct VectorIndex {
    pub spec: VectorSpaceSpec,
    index: RwLock<usearch::Index>,
    path: PathBuf,
    /// Log index through which this file on disk is complete.
    saved_watermark: Mutex<u64>,
    dirty: Mutex<bool>,
    /// Permits for concurrent searches (a bounded channel holding one token per slot).
    slot_acquire: crossbeam_channel::Receiver<()>,
    slot_release: crossbeam_channel::Sender<()>,
    /// The same vectors in one flat array, for scans of a large share of the space. Locked
    /// after `index`, and changed only under `index`'s write lock.
    flat: RwLock<FlatCopy>,
}

struct FlatCopy {
    vectors: FlatVectors,
    /// Whether it holds exactly the index's vectors: true for a new index and after
    /// [`VectorIndex::fill_flat`] found them all; a scan is used only then.
    complete: bool,
}

/// Concurrent searches per vector index; more wait for a permit (bounded by a deadline).
const VECTOR_SEARCH_SLOTS: usize = 8;
const VECTOR_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Returns the search permit when dropped.
struct SearchSlot<'a>(&'a crossbeam_channel::Sender<()>);

impl Drop for SearchSlot<'_> {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

#[derive(Serialize, Deserialize)]
struct VectorMeta {
    watermark: u64,
    size: u64,
}

impl VectorIndex {
    fn options(spec: &VectorSpaceSpec) -> usearch::IndexOptions {
        usearch::IndexOptions {
            dimensions: spec.dimensions,
            metric: match spec.metric {
                VectorMetric::Cosine => usearch::MetricKind::Cos,
                VectorMetric::L2 => usearch::MetricKind::L2sq,
                VectorMetric::InnerProduct => usearch::MetricKind::IP,
            },
            quantization: match spec.quantization {
                VectorQuantization::F32 => usearch::ScalarKind::F32,
                VectorQuantization::F16 => usearch::ScalarKind::F16,
                VectorQuantization::I8 => usearch::ScalarKind::I8,
            },
            connectivity: spec.connectivity,
            expansion_add: spec.expansion_add,
            expansion_search: spec.expansion_search,
            multi: false,
        }
    }

    fn vector_error(spec: &VectorSpaceSpec, e: impl std::fmt::Display) -> IndexError {
        IndexError::Vector { space: spec.name.clone(), message: e.to_string() }
    }

    pub fn open(dir: &Path, spec: VectorSpaceSpec) -> Result<VectorIndex, IndexError> {
        let path = dir.join(format!("{}.usearch", spec.name));
        let meta_path = dir.join(format!("{}.meta", spec.name));
        let index = usearch::Index::new(&Self::options(&spec)).map_err(|e| Self::vector_error(&spec, e))?;
        let mut watermark = 0;
        if path.exists() && meta_path.exists() {
            let meta_bytes = fs::read(&meta_path).map_err(|source| IndexError::Io { path: meta_path.clone(), source })?;
            let meta: VectorMeta = codec::decode(VECTOR_META_FORMAT, &meta_bytes)?;
            let path_text = path.to_string_lossy();
            index.load(&path_text).map_err(|e| Self::vector_error(&spec, e))?;
            watermark = meta.watermark;
        }
        // Also reserves the per-thread search contexts: usearch refuses more concurrent
        // searches than reserved, so `search` takes one of `VECTOR_SEARCH_SLOTS` permits.
        index.reserve_capacity_and_threads(index.capacity().max(1024), VECTOR_SEARCH_SLOTS).map_err(|e| Self::vector_error(&spec, e))?;
        let (slot_release, slot_acquire) = crossbeam_channel::bounded(VECTOR_SEARCH_SLOTS);
        for _ in 0..VECTOR_SEARCH_SLOTS {
            let _ = slot_release.try_send(());
        }
        let flat = FlatCopy { vectors: FlatVectors::new(spec.dimensions, spec.metric), complete: index.size() == 0 };
        Ok(VectorIndex {
            flat: RwLock::new(flat),
            spec,
            index: RwLock::new(index),
            path,
            saved_watermark: Mutex::new(watermark),
            dirty: Mutex::new(false),
            slot_acquire,
            slot_release,
        })
    }

    pub fn saved_watermark(&self) -> u64 {
        *self.saved_watermark.lock()
    }

    pub fn len(&self) -> usize {
        self.index.read().size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key: u64) -> bool {
        self.index.read().contains(key)
    }

    pub fn add(&self, key: u64, vector: &[f32]) -> Result<(), IndexError> {
        let index = self.index.write();
        if index.contains(key) {
            return Ok(());
        }
        if index.size() + 1 > index.capacity() {
            let grown = (index.capacity() * 2).max(1024);
            index.reserve_capacity_and_threads(grown, VECTOR_SEARCH_SLOTS).map_err(|e| Self::vector_error(&self.spec, e))?;
        }
        index.add(key, vector).map_err(|e| Self::vector_error(&self.spec, e))?;
        *self.dirty.lock() = true;
        let mut flat = self.flat.write();
        if flat.complete {
            match Self::stored_vector(&index, &self.spec, key) {
                Some(stored) => flat.vectors.insert(key, &stored),
                None => flat.complete = false,
            }
        }
        Ok(())
    }

    /// `key`'s vector as the index holds it (after its quantization).
    fn stored_vector(index: &usearch::Index, spec: &VectorSpaceSpec, key: u64) -> Option<Vec<f32>> {
        let mut stored = vec![0.0f32; spec.dimensions];
        match index.get(key, &mut stored) {
            Ok(found) if found >= 1 => Some(stored),
            _ => None,
        }
    }

    pub fn remove(&self, key: u64) -> Result<(), IndexError> {
        let index = self.index.write();
        if index.contains(key) {
            index.remove(key).map_err(|e| Self::vector_error(&self.spec, e))?;
            *self.dirty.lock() = true;
            self.flat.write().vectors.remove(key);
        }
        Ok(())
    }

    /// Fills the flat copy of an index loaded from disk with the vectors of `keys` (a superset
    /// of the index's keys: the store's key map), and uses it once it holds every vector.
    pub fn fill_flat(&self, keys: impl IntoIterator<Item = u64>) {
        let index = self.index.write();
        let mut flat = self.flat.write();
        if flat.complete {
            return;
        }
        for key in keys {
            if flat.vectors.contains(key) || !index.contains(key) {
                continue;
            }
            if let Some(stored) = Self::stored_vector(&index, &self.spec, key) {
                flat.vectors.insert(key, &stored);
            }
        }
        flat.complete = flat.vectors.len() == index.size();
        if !flat.complete {
            tracing::warn!(
                space = %self.spec.name,
                found = flat.vectors.len(),
                indexed = index.size(),
                "the store's key map lacks some indexed vectors: large vector searches use usearch's exact search"
            );
        }
    }

    /// The `k` nearest vectors at similarity `min_similarity` or more, exactly, from the flat
    /// copy (`None` while it is incomplete): what `search(query, k, true, None)` gives, without
    /// keeping a sorted buffer of k, and without the vectors below the floor.
    pub fn scan(&self, query: &[f32], k: usize, min_similarity: Option<f64>) -> Option<Vec<(u64, f32)>> {
        let flat = self.flat.read();
        if !flat.complete {
            return None;
        }
        // similarity = 1 - distance (cosine, inner product) or -distance (l2); at f32, as the
        // caller compares.
        let max_distance = match (min_similarity, self.spec.metric) {
            (None, _) => f32::INFINITY,
            (Some(floor), VectorMetric::Cosine | VectorMetric::InnerProduct) => 1.0 - floor as f32,
            (Some(floor), VectorMetric::L2) => -(floor as f32),
        };
        // Rounding of 1 - floor must not drop a vector exactly at the floor: the caller
        // applies the floor itself.
        let max_distance = max_distance + max_distance.abs() * f32::EPSILON * 4.0 + f32::EPSILON;
        Some(flat.vectors.nearest(query, k, max_distance))
    }

    /// Nearest keys with their distance (metric-specific; smaller is closer).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        exact: bool,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        self.slot_acquire
            .recv_timeout(VECTOR_SLOT_WAIT)
            .map_err(|_| Self::vector_error(&self.spec, "all search slots stayed busy; retry"))?;
        let _slot = SearchSlot(&self.slot_release);
        let index = self.index.read();
        let k = k.min(index.size());
        if k == 0 {
            return Ok(vec![]);
        }
        let matches = match (filter, exact) {
            (Some(predicate), _) => index.filtered_search(query, k, predicate),
            (None, true) => index.exact_search(query, k),
            (None, false) => index.search(query, k),
        }
        .map_err(|e| Self::vector_error(&self.spec, e))?;
        Ok(matches.keys.into_iter().zip(matches.distances).collect())
    }

    /// Similarity in "bigger is better" form: 1 - distance for cosine and inner product,
    /// -distance (squared L2) for l2.
    pub fn similarity(&self, distance: f32) -> f64 {
        match self.spec.metric {
            VectorMetric::Cosine | VectorMetric::InnerProduct => 1.0 - f64::from(distance),
            VectorMetric::L2 => -f64::from(distance),
        }
    }

    /// Saves to a temporary file, fsyncs and renames (usearch's save is not atomic), then
    /// records the watermark the file is complete through.
    pub fn save(&self, watermark: u64) -> Result<(), IndexError> {
        // Unchanged vectors need no new file, but the watermark on disk must still move: a
        // restart resumes from it, and the log below it may be compacted.
        let meta_path = self.path.with_extension("meta");
        if !*self.dirty.lock() && self.path.exists() {
            let size = self.index.read().size() as u64;
            write_atomically(&meta_path, &codec::encode(VECTOR_META_FORMAT, &VectorMeta { watermark, size })?)?;
            *self.saved_watermark.lock() = watermark;
            return Ok(());
        }
        let temp = self.path.with_extension("usearch.tmp");
        let index = self.index.read();
        index.save(&temp.to_string_lossy()).map_err(|e| Self::vector_error(&self.spec, e))?;
        let size = index.size() as u64;
        drop(index);
        fsync_file(&temp)?;
        fs::rename(&temp, &self.path).map_err(|source| IndexError::Io { path: self.path.clone(), source })?;
        write_atomically(&meta_path, &codec::encode(VECTOR_META_FORMAT, &VectorMeta { watermark, size })?)?;
        *self.dirty.lock() = false;
        *self.saved_watermark.lock() = watermark;
        Ok(())
    }
}

fn fsync_file(path: &Path) -> Result<(), IndexError> {
    let file = fs::File::open(path).map_err(|source| IndexError::Io { path: path.to_path_buf(), source })?;
    file.sync_all().map_err(|source| IndexError::Io { path: path.to_path_buf(), source })
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let temp = path.with_extension("tmp");
    let io = |source| IndexError::Io { path: path.to_path_buf(), source };
    let mut file = fs::File::create(&temp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temp, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// The shard's indexes. Writes come from the index stage thread only; reads from queries.
pub struct ShardIndex {
    pub index: Index,
    pub fields: Fields,
    pub reader: IndexReader,
    writer: Mutex<IndexWriter>,
    pub vectors: Vec<VectorIndex>,
    pub statistics: StatisticsCache,
    pub leaf_hits: LeafHitsCache,
    pub columns: ColumnsCache,
    /// Watermark of the last Tantivy commit (what queries see).
    committed_watermark: Mutex<u64>,
    format_path: PathBuf,
    /// The index was created empty (new shard, or an old format was discarded): it must be
    /// filled from the bucket store before the index stage resumes from the log.
    pub needs_full_reindex: bool,
}

impl ShardIndex {
    /// Sums what BM25 needs of every dialogue field over the current searcher, per segment
    /// (kept until the segment merges away or gains deletes), so that the first dialogue
    /// search after a restart or a large ingest does not sum some 1.8 million field norms a
    /// shard itself (a cold keystroke's moments at 2,000 hours).
    pub fn warm_text_statistics(&self) -> Result<(), IndexError> {
        let searcher = self.reader.searcher();
        let statistics = LiveStatistics { searcher: &searcher, cache: &self.statistics };
        let fields = &self.fields;
        let phrase_fields =
            [fields.dialogue_bridge, fields.dialogue_before, fields.dialogue_line].into_iter().chain(fields.dialogue_line_stemmed);
        for field in [fields.dialogue].into_iter().chain(fields.dialogue_stemmed).chain(phrase_fields) {
            statistics.total_num_tokens(field)?;
        }
        Ok(())
    }

    pub fn open(dir: &Path, spaces: &[VectorSpaceSpec], writer_heap_bytes: usize) -> Result<ShardIndex, IndexError> {
        let text_dir = dir.join("tantivy");
        let vector_dir = dir.join("vectors");
        let format_path = dir.join("FORMAT");
        let current = fs::read_to_string(&format_path).ok().is_some_and(|v| v.trim() == INDEX_FORMAT_VERSION.to_string());
        if !current {
            // Indexes are derived data: one of another format (or half-built) is discarded and
            // rebuilt from the bucket store by the caller (see `needs_full_reindex`).
            for d in [&text_dir, &vector_dir] {
                if d.exists() {
                    fs::remove_dir_all(d).map_err(|source| IndexError::Io { path: d.clone(), source })?;
                }
            }
        }
        for d in [&text_dir, &vector_dir] {
            fs::create_dir_all(d).map_err(|source| IndexError::Io { path: d.clone(), source })?;
        }
        let (schema, fields) = build_schema();
        let directory = tantivy::directory::MmapDirectory::open(&text_dir).map_err(|e| IndexError::Tantivy(e.into()))?;
        let index = Index::open_or_create(directory, schema)?;
        index.tokenizers().register(TEXT_ANALYZER, text_analyzer());
        for (code, language) in STEM_LANGUAGES {
            index.tokenizers().register(&stem_analyzer_name(code), stem_analyzer(*language));
        }
        let committed_watermark = index.load_metas()?.payload.as_deref().and_then(|p| p.parse::<u64>().ok()).unwrap_or(0);
        let writer = index.writer_with_num_threads(1, writer_heap_bytes.max(15_000_000))?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let vectors = spaces.iter().map(|spec| VectorIndex::open(&vector_dir, spec.clone())).collect::<Result<Vec<_>, _>>()?;
        Ok(ShardIndex {
            index,
            fields,
            reader,
            writer: Mutex::new(writer),
            vectors,
            statistics: StatisticsCache::default(),
            leaf_hits: LeafHitsCache::default(),
            columns: ColumnsCache::default(),
            committed_watermark: Mutex::new(committed_watermark),
            format_path,
            needs_full_reindex: !current,
        })
    }

    /// Drops every document added or deleted since the last commit, as after a failure in the
    /// middle of a batch: the index actor then writes them again from its durable watermark.
    pub fn discard_uncommitted(&self) -> Result<(), IndexError> {
        self.writer.lock().rollback()?;
        Ok(())
    }

    /// Records that the index on disk is complete in the current format (after a full reindex).
    pub fn mark_format_current(&self) -> Result<(), IndexError> {
        write_atomically(&self.format_path, INDEX_FORMAT_VERSION.to_string().as_bytes())
    }

    pub fn committed_watermark(&self) -> u64 {
        *self.committed_watermark.lock()
    }

    /// Where a restart must resume indexing from: the oldest of Tantivy's and the vector files'.
    pub fn durable_watermark(&self) -> u64 {
        self.vectors.iter().map(|v| v.saved_watermark()).fold(self.committed_watermark(), u64::min)
    }

    pub fn vector_space(&self, name: &str) -> Option<&VectorIndex> {
        self.vectors.iter().find(|v| v.spec.name == name)
    }

    /// Replaces the documents of `seconds` of one asset with its current buckets.
    pub fn reindex_seconds(&self, store: &ShardStore, asset_id: &str, seconds: &[u64]) -> Result<usize, IndexError> {
        let writer = self.writer.lock();
        let context = DocContext::load(store, asset_id)?;
        let mut cache = BucketCache::new(store, asset_id);
        let mut written = 0;
        for &second in seconds {
            writer.delete_term(Term::from_field_text(self.fields.key, &bucket_key_text(asset_id, second)));
            if let Some(bucket) = cache.get(second)? {
                let doc = self.document(&context, second, &bucket, &mut |s| cache.get(s).ok().flatten());
                writer.add_document(doc)?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Replaces every document of one asset.
    pub fn reindex_asset(&self, store: &ShardStore, asset_id: &str) -> Result<usize, IndexError> {
        let writer = self.writer.lock();
        let context = DocContext::load(store, asset_id)?;
        writer.delete_term(Term::from_field_u64(self.fields.asset_ordinal, context.ordinal));
        let mut written = 0;
        let all: HashMap<u64, Bucket> = store.bucket_range(asset_id, 0, u64::MAX)?.into_iter().collect();
        let mut seconds: Vec<&u64> = all.keys().collect();
        seconds.sort_unstable();
        for &second in seconds {
            let doc = self.document(&context, second, &all[&second], &mut |s| all.get(&s).cloned());
            writer.add_document(doc)?;
            written += 1;
        }
        Ok(written)
    }

    /// The document of one bucket. `bucket_at` reads the asset's other buckets: the lines
    /// starting here are found by looking back one second, their ends by looking ahead, and
    /// the line before one by looking back (bridges).
    fn document(
        &self,
        context: &DocContext,
        second: u64,
        bucket: &Bucket,
        bucket_at: &mut dyn FnMut(u64) -> Option<Bucket>,
    ) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.key, bucket_key_text(&context.asset_id, second));
        doc.add_u64(f.asset_ordinal, context.ordinal);
        doc.add_u64(f.second, second);
        if let Some(series) = &context.series {
            doc.add_text(f.series, series);
        }
        if let Some(season) = context.season {
            doc.add_u64(f.season, u64::from(season));
        }
        if let Some(episode) = context.episode {
            doc.add_u64(f.episode, u64::from(episode));
        }
        let mut seen_tracks = HashSet::new();
        let mut dialogue = String::new();
        let mut stemmed: Vec<String> = vec![String::new(); STEM_LANGUAGES.len()];
        let mut bridge: Vec<String> = Vec::new();
        let mut before: Vec<String> = Vec::new();
        let mut line_end: Option<u64> = None;
        // Read once, at the first line of the bucket (most buckets hold none).
        let mut previous_bucket: Option<Option<Bucket>> = None;
        for entry in &bucket.entries {
            if seen_tracks.insert(entry.track.as_str()) {
                doc.add_text(f.tracks, &entry.track);
            }
            if let Some(label) = &entry.label {
                let percent = (entry.confidence * 100.0).floor().clamp(0.0, 100.0) as u64;
                doc.add_text(f.labels, label_term_text(Some(&entry.track), label, percent));
                doc.add_text(f.labels, label_term_text(None, label, percent));
                let decile = (percent / 10).min(9);
                doc.add_text(f.labels, label_decile_term_text(Some(&entry.track), label, decile));
                doc.add_text(f.labels, label_decile_term_text(None, label, decile));
            }
            if let Some(text) = &entry.text {
                if !dialogue.is_empty() {
                    dialogue.push_str(" \n ");
                }
                dialogue.push_str(text);
                let stem_position = entry.language.as_deref().and_then(stem_language);
                if let Some(position) = stem_position {
                    let stemmed = &mut stemmed[position];
                    if !stemmed.is_empty() {
                        stemmed.push_str(" \n ");
                    }
                    stemmed.push_str(text);
                }
                let previous = previous_bucket.get_or_insert_with(|| second.checked_sub(1).and_then(|s| bucket_at(s)));
                let starts_here = previous.as_ref().is_none_or(|p| !p.entries.iter().any(|e| e.annotation_id == entry.annotation_id));
                if !starts_here {
                    continue;
                }
                // Each line its own value: tantivy leaves a gap between values, so an exact
                // phrase does not run from one line into another that starts at the same second.
                doc.add_text(f.dialogue_line, text);
                if let Some(position) = stem_position {
                    doc.add_text(f.dialogue_line_stemmed[position], text);
                }
                let end = last_second_of(second, &entry.annotation_id, bucket_at);
                line_end = Some(line_end.map_or(end, |e| e.max(end)));
                if second > 0 {
                    if let Some(line_before) = line_before(second, &entry.annotation_id, bucket_at) {
                        // Punctuation is dropped by the tokenizer: the two lines read as one.
                        bridge.push(format!("{line_before} {text}"));
                        before.push(line_before);
                    }
                }
            }
        }
        if !dialogue.is_empty() {
            doc.add_text(f.dialogue, dialogue);
        }
        for (position, text) in stemmed.into_iter().enumerate() {
            if !text.is_empty() {
                doc.add_text(f.dialogue_stemmed[position], text);
            }
        }
        if let Some(end) = line_end {
            doc.add_u64(f.line_end_second, end);
        }
        // Bridges are separate values; positions restart in a way that no phrase spans two.
        if !bridge.is_empty() {
            doc.add_text(f.dialogue_bridge, bridge.join(" \n \n \n \n "));
            doc.add_text(f.dialogue_before, before.join(" \n \n \n \n "));
        }
        doc
    }

    /// Commits Tantivy with the watermark as payload, saves dirty vector files when asked, and
    /// makes the commit visible to queries.
    pub fn commit(&self, watermark: u64, save_vectors: bool) -> Result<(), IndexError> {
        {
            let mut writer = self.writer.lock();
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&watermark.to_string());
            prepared.commit()?;
        }
        if save_vectors {
            for space in &self.vectors {
                space.save(watermark)?;
            }
        }
        self.reader.reload()?;
        self.columns.keep_only(&self.reader.searcher());
        *self.committed_watermark.lock() = watermark;
        Ok(())
    }

    /// Drops every document and vector (for `rebuild`).
    pub fn clear(&self) -> Result<(), IndexError> {
        let writer = self.writer.lock();
        writer.delete_all_documents()?;
        for space in &self.vectors {
            let index = space.index.write();
            index.reset().map_err(|e| VectorIndex::vector_error(&space.spec, e))?;
            index.reserve_capacity_and_threads(1024, VECTOR_SEARCH_SLOTS).map_err(|e| VectorIndex::vector_error(&space.spec, e))?;
            *space.dirty.lock() = true;
            let mut flat = space.flat.write();
            flat.vectors.clear();
            flat.complete = true;
        }
        Ok(())
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

/// The last second of the line `annotation_id` that covers `first` (lines cover consecutive
/// seconds).
fn last_second_of(first: u64, annotation_id: &str, bucket_at: &mut dyn FnMut(u64) -> Option<Bucket>) -> u64 {
    let mut last = first;
    while let Some(next) = last.checked_add(1) {
        if !bucket_at(next).is_some_and(|bucket| bucket.entries.iter().any(|e| e.annotation_id == annotation_id)) {
            break;
        }
        last = next;
    }
    last
}

/// The text of the line that ends closest before `second` (within [`BRIDGE_WINDOW_BUCKETS`]),
/// other than `annotation_id`.
fn line_before(second: u64, annotation_id: &str, previous: &mut dyn FnMut(u64) -> Option<Bucket>) -> Option<String> {
    let lowest = second.saturating_sub(BRIDGE_WINDOW_BUCKETS);
    let mut t = second;
    while t > lowest {
        t -= 1;
        if let Some(bucket) = previous(t) {
            // Entries are sorted by (track, id); of several lines take the last one listed.
            if let Some(text) = bucket.entries.iter().rev().filter(|e| e.annotation_id != annotation_id).find_map(|e| e.text.clone()) {
                return Some(text);
            }
        }
    }
    None
}

/// Buckets of one asset read once per reindex call (a document also looks at the buckets
/// around it, for its lines' ends and bridges).
struct BucketCache<'a> {
    store: &'a ShardStore,
    asset_id: &'a str,
    loaded: HashMap<u64, Option<Bucket>>,
}

impl<'a> BucketCache<'a> {
    fn new(store: &'a ShardStore, asset_id: &'a str) -> Self {
        BucketCache { store, asset_id, loaded: HashMap::new() }
    }

    /// A miss reads the second's whole block: its neighbours are usually wanted next.
    fn get(&mut self, second: u64) -> Result<Option<Bucket>, StoreError> {
        if let Some(found) = self.loaded.get(&second) {
            return Ok(found.clone());
        }
        let block = block_of(second);
        let (first, end) = block_buckets(block);
        let bytes = self.store.bucket_block_bytes(self.asset_id, second)?;
        let decoded = bytes.as_ref().map(|bytes| BucketBlockRef::decode(bytes)).transpose()?;
        for t in first..end {
            self.loaded.insert(t, decoded.as_ref().and_then(|d| d.bucket(t)).map(|b| owned_bucket(&b)));
        }
        Ok(self.loaded.get(&second).cloned().flatten())
    }
}

struct DocContext {
    asset_id: String,
    ordinal: u64,
    series: Option<String>,
    season: Option<u32>,
    episode: Option<u32>,
}

impl DocContext {
    fn load(store: &ShardStore, asset_id: &str) -> Result<DocContext, IndexError> {
        let ordinal =
            store.asset_ordinal(asset_id)?.ok_or_else(|| StoreError::Corrupt(format!("asset {asset_id} has buckets but no ordinal")))?;
        let record = store.asset_record(asset_id)?.unwrap_or_default();
        Ok(DocContext { asset_id: asset_id.to_string(), ordinal, series: record.series, season: record.season, episode: record.episode })
    }
}

/// Stores where a vector key points (sled tree `vector_keys`).
pub fn put_vector_target(store: &ShardStore, key: u64, target: &VectorTarget) -> Result<(), IndexError> {
    store.vector_keys.insert(key.to_be_bytes(), codec::encode(VECTOR_KEY_FORMAT, target)?).map_err(StoreError::from)?;
    Ok(())
}

pub fn vector_target(store: &ShardStore, key: u64) -> Result<Option<VectorTarget>, IndexError> {
    match store.vector_keys.get(key.to_be_bytes()).map_err(StoreError::from)? {
        Some(bytes) => Ok(Some(codec::decode(VECTOR_KEY_FORMAT, &bytes)?)),
        None => Ok(None),
    }
}

/// The fast fields queries read of one segment. Opening a column decodes its block index
/// (a tenth of a phrase query at 2,000 hours, done per query); a segment's columns never
/// change, so each is opened once and kept while the segment is searched.
pub struct SegmentColumns {
    pub asset: Column<u64>,
    pub second: Column<u64>,
    /// `None` in a segment without lines.
    pub line_end: Option<Column<u64>>,
}

impl SegmentColumns {
    /// (asset ordinal, first second, last second, score) of a matching line document.
    fn line(&self, doc: DocId, score: Score) -> Option<(u64, u64, u64, f32)> {
        let (asset, second) = (self.asset.first(doc)?, self.second.first(doc)?);
        // A line always has its end; a document without one is its own second only.
        let end = self.line_end.as_ref().and_then(|end| end.first(doc)).unwrap_or(second).max(second);
        Some((asset, second, end, score))
    }
}

/// Most segments whose columns are kept (a shard searches a few dozen).
const SEGMENT_COLUMNS_MAX: usize = 1024;

/// [`SegmentColumns`] by segment, pruned to the searched segments at every commit.
#[derive(Default)]
pub struct ColumnsCache {
    segments: Mutex<HashMap<tantivy::index::SegmentId, Arc<SegmentColumns>>>,
}

impl ColumnsCache {
    pub fn of(&self, segment: &SegmentReader) -> tantivy::Result<Arc<SegmentColumns>> {
        let id = segment.segment_id();
        if let Some(columns) = self.segments.lock().get(&id) {
            return Ok(columns.clone());
        }
        let fast = segment.fast_fields();
        let columns = Arc::new(SegmentColumns {
            asset: fast.u64("asset_ordinal")?,
            second: fast.u64("second")?,
            line_end: fast.column_opt::<u64>(LINE_END_SECOND)?,
        });
        let mut segments = self.segments.lock();
        if segments.len() >= SEGMENT_COLUMNS_MAX {
            segments.clear();
        }
        segments.insert(id, columns.clone());
        Ok(columns)
    }

    /// Drops the columns of segments `searcher` no longer holds (merged away).
    fn keep_only(&self, searcher: &Searcher) {
        let searched: HashSet<_> = searcher.segment_readers().iter().map(|segment| segment.segment_id()).collect();
        self.segments.lock().retain(|id, _| searched.contains(id));
    }
}

/// Collects every matching (asset ordinal, second, score).
pub struct SecondsCollector<'a> {
    pub columns: &'a ColumnsCache,
}

pub struct SecondsSegmentCollector {
    columns: Arc<SegmentColumns>,
    hits: Vec<(u64, u64, f32)>,
}

impl Collector for SecondsCollector<'_> {
    type Fruit = Vec<(u64, u64, f32)>;
    type Child = SecondsSegmentCollector;

    fn for_segment(&self, _segment_local_id: u32, segment: &SegmentReader) -> tantivy::Result<SecondsSegmentCollector> {
        Ok(SecondsSegmentCollector { columns: self.columns.of(segment)?, hits: Vec::new() })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<Vec<(u64, u64, f32)>>) -> tantivy::Result<Vec<(u64, u64, f32)>> {
        Ok(fruits.concat())
    }
}

impl SegmentCollector for SecondsSegmentCollector {
    type Fruit = Vec<(u64, u64, f32)>;

    fn collect(&mut self, doc: DocId, score: Score) {
        if let (Some(asset), Some(second)) = (self.columns.asset.first(doc), self.columns.second.first(doc)) {
            self.hits.push((asset, second, score));
        }
    }

    fn harvest(self) -> Vec<(u64, u64, f32)> {
        self.hits
    }
}

/// Runs a query on `searcher` (whose generation keys cached results) and returns every
/// matching (asset ordinal, second, score). BM25 uses [`LiveStatistics`], so scores depend
/// only on the live documents.
pub fn collect_seconds_in(index: &ShardIndex, searcher: &Searcher, query: &dyn Query) -> Result<Vec<(u64, u64, f32)>, IndexError> {
    let statistics = LiveStatistics { searcher, cache: &index.statistics };
    Ok(searcher.search_with_statistics_provider(query, &SecondsCollector { columns: &index.columns }, &statistics)?)
}

/// The `limit` best-scoring (asset ordinal, second, score) of a query over `searcher`, with
/// [`LiveStatistics`] as in [`collect_seconds_in`]: tantivy keeps a heap of the best and skips
/// what cannot enter it (block-max WAND for a disjunction of plain terms), and only the kept
/// documents' asset and second are read.
pub fn top_seconds_in(
    index: &ShardIndex,
    searcher: &Searcher,
    query: &dyn Query,
    limit: usize,
) -> Result<Vec<(u64, u64, f32)>, IndexError> {
    // No more hits than documents: the collector reserves room for `limit` up front, and the
    // limit may come from a peer's plan.
    let limit = limit.min(usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX));
    if limit == 0 {
        return Ok(Vec::new());
    }
    let statistics = LiveStatistics { searcher, cache: &index.statistics };
    let top = searcher.search_with_statistics_provider(query, &TopDocs::with_limit(limit).order_by_score(), &statistics)?;
    let mut hits = Vec::with_capacity(top.len());
    for (score, address) in top {
        let columns = index.columns.of(searcher.segment_reader(address.segment_ord))?;
        if let (Some(asset), Some(second)) = (columns.asset.first(address.doc_id), columns.second.first(address.doc_id)) {
            hits.push((asset, second, score));
        }
    }
    Ok(hits)
}

/// Every second of one segment holding one of `terms` (all in `field`), scored by the best
/// term it holds, as (hit key, score) sorted by key. What a disjunction of constant-score term
/// queries gives, without a scorer per term merged doc by doc: each posting list is walked
/// once into a score per document. A cold label at 2,000 hours spent most of its time in
/// that union.
pub fn best_term_hits(
    reader: &SegmentReader,
    field: Field,
    terms: &[(Term, f32)],
    key: impl Fn(u64, u64) -> u64,
) -> Result<Vec<(u64, f32)>, IndexError> {
    let inverted = reader.inverted_index(field)?;
    let mut best: Vec<f32> = Vec::new();
    for (term, score) in terms {
        let postings = inverted.read_postings(term, tantivy::schema::IndexRecordOption::Basic).map_err(tantivy::TantivyError::from)?;
        let Some(mut postings) = postings else { continue };
        if best.is_empty() {
            best = vec![0.0; reader.max_doc() as usize];
        }
        let mut doc = postings.doc();
        while doc != TERMINATED {
            if let Some(slot) = best.get_mut(doc as usize) {
                *slot = slot.max(*score);
            }
            doc = postings.advance();
        }
    }
    if best.is_empty() {
        return Ok(Vec::new());
    }
    let alive = reader.alive_bitset();
    let asset = reader.fast_fields().u64("asset_ordinal")?;
    let second = reader.fast_fields().u64("second")?;
    let mut hits: Vec<(u64, f32)> = Vec::new();
    for (doc, &score) in best.iter().enumerate() {
        let doc = doc as DocId;
        if !(score.is_finite() && score > 0.0) || alive.is_some_and(|alive| !alive.is_alive(doc)) {
            continue;
        }
        if let (Some(asset), Some(second)) = (asset.first(doc), second.first(doc)) {
            hits.push((key(asset, second), score));
        }
    }
    // Documents were added asset by asset in time order, so keys come in long ascending runs,
    // which the stable sort merges.
    hits.sort_by_key(|h| h.0);
    keep_best_of_each_key(&mut hits);
    Ok(hits)
}

/// Every live document of a segment that holds each of `words`, as (hit key, score) in
/// document order. A word is a list of alternatives (the word itself, its stems, words within
/// its edits) and scores its best one, as a disjunction-max; a document scores the sum of its
/// words' scores, cheapest word first (as tantivy's intersection adds them), as a boolean query
/// of `Must` clauses. `keep(asset, second)` filters documents as the query's filter clauses
/// would.
///
/// tantivy's disjunction under an intersection refills a 4,096-document window of every
/// alternative at every seek: a third of a fuzzy dialogue query at 2,000 hours. Here the
/// cheapest word's alternatives are walked whole, and every other word's alternatives only seek
/// the documents still in the running.
pub fn every_word_hits(
    reader: &SegmentReader,
    columns: &SegmentColumns,
    words: &[Vec<Box<dyn tantivy::query::Weight>>],
    keep: impl Fn(u64, u64) -> bool,
    key: impl Fn(u64, u64) -> u64,
) -> Result<Vec<(u64, f32)>, IndexError> {
    use tantivy::query::Scorer;
    let mut scorers: Vec<Vec<Box<dyn Scorer>>> = Vec::with_capacity(words.len());
    for alternatives in words {
        scorers.push(alternatives.iter().map(|weight| weight.scorer(reader, 1.0)).collect::<tantivy::Result<Vec<_>>>()?);
    }
    let cost = |alternatives: &Vec<Box<dyn Scorer>>| alternatives.iter().map(|s| u64::from(s.size_hint())).sum::<u64>();
    let mut order: Vec<usize> = (0..scorers.len()).collect();
    order.sort_by_key(|&w| cost(&scorers[w]));
    let Some(&first) = order.first() else { return Ok(Vec::new()) };
    // The cheapest word's documents with its best alternative's score.
    let expected = usize::try_from(cost(&scorers[first])).unwrap_or(usize::MAX).min(reader.max_doc() as usize);
    let mut found: Vec<(DocId, f32)> = Vec::with_capacity(expected);
    for scorer in &mut scorers[first] {
        let mut doc = scorer.doc();
        while doc != TERMINATED {
            found.push((doc, scorer.score()));
            doc = scorer.advance();
        }
    }
    if scorers[first].len() > 1 {
        // One ascending run per alternative: the stable sort merges runs (n log runs) where
        // the unstable one sorted from scratch (a tenth of a fuzzy query at 2,000 hours).
        found.sort_by_key(|hit| hit.0);
        keep_best_of_each_key(&mut found);
    }
    found.retain(|hit| hit.1 > 0.0);
    // Each further word adds its best alternative's score to the documents it holds, and drops
    // the others: 12 bytes a candidate, whatever the number of words.
    let mut best: Vec<f32> = Vec::new();
    for &word in &order[1..] {
        if found.is_empty() {
            break;
        }
        best.clear();
        best.resize(found.len(), 0.0);
        for scorer in &mut scorers[word] {
            for (slot, &(doc, _)) in best.iter_mut().zip(&found) {
                let mut at = scorer.doc();
                if at < doc {
                    at = scorer.seek(doc);
                }
                if at == TERMINATED {
                    break;
                }
                if at == doc {
                    *slot = slot.max(scorer.score());
                }
            }
        }
        let mut kept = 0;
        for i in 0..found.len() {
            if best[i] > 0.0 {
                found[kept] = (found[i].0, found[i].1 + best[i]);
                kept += 1;
            }
        }
        found.truncate(kept);
    }
    let alive = reader.alive_bitset();
    let (asset, second) = (&columns.asset, &columns.second);
    let mut hits = Vec::with_capacity(found.len());
    for (doc, score) in found {
        if alive.is_some_and(|alive| !alive.is_alive(doc)) {
            continue;
        }
        let (Some(asset), Some(second)) = (asset.first(doc), second.first(doc)) else { continue };
        if !keep(asset, second) {
            continue;
        }
        if score.is_finite() && score > 0.0 {
            hits.push((key(asset, second), score));
        }
    }
    Ok(hits)
}

/// Lines matching a query on the line fields (`dialogue_line`, `dialogue_line_<lang>`), as
/// (asset ordinal, first second, last second, score): every match, or with `limit` the best
/// `limit` lines (tantivy's heap, as [`top_seconds_in`]). BM25 uses [`LiveStatistics`].
pub fn collect_lines_in(
    index: &ShardIndex,
    searcher: &Searcher,
    query: &dyn Query,
    limit: Option<usize>,
) -> Result<Vec<(u64, u64, u64, f32)>, IndexError> {
    let statistics = LiveStatistics { searcher, cache: &index.statistics };
    let Some(limit) = limit else {
        return Ok(searcher.search_with_statistics_provider(query, &LinesCollector { columns: &index.columns }, &statistics)?);
    };
    let limit = limit.min(usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX));
    if limit == 0 {
        return Ok(Vec::new());
    }
    let top = searcher.search_with_statistics_provider(query, &TopDocs::with_limit(limit).order_by_score(), &statistics)?;
    let mut lines = Vec::with_capacity(top.len());
    for (score, address) in top {
        lines.extend(index.columns.of(searcher.segment_reader(address.segment_ord))?.line(address.doc_id, score));
    }
    Ok(lines)
}

/// Collects every matching line (see [`collect_lines_in`]).
struct LinesCollector<'a> {
    columns: &'a ColumnsCache,
}

struct LinesSegmentCollector {
    columns: Arc<SegmentColumns>,
    lines: Vec<(u64, u64, u64, f32)>,
}

impl Collector for LinesCollector<'_> {
    type Fruit = Vec<(u64, u64, u64, f32)>;
    type Child = LinesSegmentCollector;

    fn for_segment(&self, _segment_local_id: u32, segment: &SegmentReader) -> tantivy::Result<LinesSegmentCollector> {
        Ok(LinesSegmentCollector { columns: self.columns.of(segment)?, lines: Vec::new() })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<Vec<(u64, u64, u64, f32)>>) -> tantivy::Result<Vec<(u64, u64, u64, f32)>> {
        Ok(fruits.concat())
    }
}

impl SegmentCollector for LinesSegmentCollector {
    type Fruit = Vec<(u64, u64, u64, f32)>;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.lines.extend(self.columns.line(doc, score));
    }

    fn harvest(self) -> Vec<(u64, u64, u64, f32)> {
        self.lines
    }
}

/// Fewest bytes of cached leaf hits per shard, whatever its size.
pub const LEAF_HITS_CACHE_MIN_BYTES: usize = 64 << 20;

/// Where cached hits belong: one label leaf merged over a searcher generation's segments, or
/// one segment's own hits, which outlive commits until that segment is merged away or gains
/// deletes. Deletes in a segment only ever grow, so their count names the set.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum CachedHits {
    Merged { generation: u64, leaf: String },
    Segment { segment: tantivy::index::SegmentId, deleted_docs: u32, leaf: String },
}

impl CachedHits {
    fn leaf(&self) -> &str {
        match self {
            CachedHits::Merged { leaf, .. } | CachedHits::Segment { leaf, .. } => leaf,
        }
    }
}

/// Sorted hits of unfiltered label leaves. A cast member's label matches about a fifth of all
/// seconds and the same few names come back in most queries (names, name + place, name +
/// meaning, and every keystroke of suggest): collecting and sorting those seconds was most of
/// a label query's time. Two layers: the merged hits of the current searcher generation (a
/// commit starts a new one and drops them), and each segment's hits, kept across commits, so
/// after a commit only new segments are searched and the sorted runs merged. The budget grows
/// with the shard's documents (`search.label_cache_bytes_per_document`): a fixed one held every
/// label of a 500-hour season but thrashed at 2,000 hours.
pub struct LeafHitsCache {
    inner: Mutex<LeafHitsCacheInner>,
    bytes_per_document: std::sync::atomic::AtomicUsize,
}

/// `search.label_cache_bytes_per_document` by default: 256, room for about eight labels that
/// each match every second (16 bytes a hit) twice over, once per segment and once merged. A
/// cast member's label matches about a fifth of a shard's seconds, so it holds some forty.
fn default_label_cache_bytes_per_document() -> usize {
    rushes_config::SearchConfig::default().label_cache_bytes_per_document
}

impl Default for LeafHitsCache {
    fn default() -> Self {
        LeafHitsCache { inner: Mutex::default(), bytes_per_document: default_label_cache_bytes_per_document().into() }
    }
}

#[derive(Default)]
struct LeafHitsCacheInner {
    /// The newest searcher generation seen: merged hits of older ones are never served.
    generation: u64,
    /// key → (hits, last use on the `uses` clock).
    entries: HashMap<CachedHits, (Arc<Vec<(u64, f32)>>, u64)>,
    bytes: usize,
    uses: u64,
}

fn cached_bytes(key: &CachedHits, hits: &[(u64, f32)]) -> usize {
    std::mem::size_of_val(hits) + key.leaf().len() + std::mem::size_of::<CachedHits>()
}

impl LeafHitsCacheInner {
    fn get(&mut self, key: &CachedHits) -> Option<Arc<Vec<(u64, f32)>>> {
        self.uses += 1;
        let now = self.uses;
        let (hits, last_use) = self.entries.get_mut(key)?;
        *last_use = now;
        Some(hits.clone())
    }

    fn remove(&mut self, key: &CachedHits) {
        if let Some((old, _)) = self.entries.remove(key) {
            self.bytes -= cached_bytes(key, &old);
        }
    }

    fn insert(&mut self, key: CachedHits, hits: Arc<Vec<(u64, f32)>>, budget: usize) {
        let bytes = cached_bytes(&key, &hits);
        if bytes > budget / 4 {
            return;
        }
        self.remove(&key);
        if self.bytes + bytes > budget {
            // Least recently used first, until the new hits fit.
            let mut by_age: Vec<(u64, CachedHits)> = self.entries.iter().map(|(key, (_, last_use))| (*last_use, key.clone())).collect();
            by_age.sort_unstable();
            for (_, old_key) in by_age {
                if self.bytes + bytes <= budget {
                    break;
                }
                self.remove(&old_key);
            }
        }
        self.uses += 1;
        let now = self.uses;
        self.entries.insert(key, (hits, now));
        self.bytes += bytes;
    }

    /// A newer generation: merged hits of older ones are dropped, segments stay.
    fn observe(&mut self, generation: u64) -> bool {
        if generation < self.generation {
            return false;
        }
        if generation > self.generation {
            self.generation = generation;
            let stale: Vec<CachedHits> = self.entries.keys().filter(|k| matches!(k, CachedHits::Merged { .. })).cloned().collect();
            for key in stale {
                self.remove(&key);
            }
        }
        true
    }
}

impl LeafHitsCache {
    /// Sets `search.label_cache_bytes_per_document`.
    pub fn set_bytes_per_document(&self, bytes: usize) {
        self.bytes_per_document.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn budget(&self, documents: u64) -> usize {
        let per_document = self.bytes_per_document.load(std::sync::atomic::Ordering::Relaxed);
        LEAF_HITS_CACHE_MIN_BYTES.max(usize::try_from(documents).unwrap_or(usize::MAX).saturating_mul(per_document))
    }

    /// The merged hits of `leaf` for the searcher generation `generation`, if cached.
    pub fn get(&self, generation: u64, leaf: &str) -> Option<Arc<Vec<(u64, f32)>>> {
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return None;
        }
        inner.get(&CachedHits::Merged { generation, leaf: leaf.to_string() })
    }

    /// Caches the merged hits of `leaf` on a searcher of `documents` documents; a result from
    /// a searcher older than one already seen is dropped.
    pub fn insert(&self, generation: u64, leaf: String, hits: Arc<Vec<(u64, f32)>>, documents: u64) {
        let budget = self.budget(documents);
        let mut inner = self.inner.lock();
        if inner.observe(generation) {
            inner.insert(CachedHits::Merged { generation, leaf }, hits, budget);
        }
    }

    /// The merged hits of `leaf` on `searcher`: cached, or merged from each segment's hits,
    /// which come from the cache or from `collect(segment_ord, reader)` (hits sorted by key,
    /// one per key). Only for leaves whose scores are constants (labels score their
    /// confidence): a BM25 score depends on the whole corpus, so a segment's hits would not.
    pub fn hits_by_segment(
        &self,
        searcher: &Searcher,
        leaf: &str,
        mut collect: impl FnMut(u32, &SegmentReader) -> Result<Vec<(u64, f32)>, IndexError>,
    ) -> Result<Arc<Vec<(u64, f32)>>, IndexError> {
        let generation = searcher.generation().generation_id();
        if let Some(hits) = self.get(generation, leaf) {
            return Ok(hits);
        }
        let documents = searcher.num_docs();
        let budget = self.budget(documents);
        let mut runs: Vec<Arc<Vec<(u64, f32)>>> = Vec::with_capacity(searcher.segment_readers().len());
        for (ord, reader) in searcher.segment_readers().iter().enumerate() {
            let key = CachedHits::Segment { segment: reader.segment_id(), deleted_docs: reader.num_deleted_docs(), leaf: leaf.to_string() };
            let cached = self.inner.lock().get(&key);
            let run = match cached {
                Some(run) => run,
                None => {
                    let run = Arc::new(collect(ord as u32, reader)?);
                    self.inner.lock().insert(key, run.clone(), budget);
                    run
                }
            };
            if !run.is_empty() {
                runs.push(run);
            }
        }
        let merged = match runs.len() {
            0 => Arc::new(Vec::new()),
            1 => runs.pop().unwrap_or_default(),
            _ => Arc::new(merge_sorted_runs(&runs)),
        };
        self.insert(generation, leaf.to_string(), merged.clone(), documents);
        Ok(merged)
    }
}

/// One list sorted by key from runs each sorted by key, the best score of a key kept (a
/// second lives in one segment, but a deleted copy in another is already filtered out).
/// The stable sort finds the runs and merges them: O(n log runs), not a full sort.
fn merge_sorted_runs(runs: &[Arc<Vec<(u64, f32)>>]) -> Vec<(u64, f32)> {
    let mut all: Vec<(u64, f32)> = Vec::with_capacity(runs.iter().map(|r| r.len()).sum());
    for run in runs {
        all.extend_from_slice(run);
    }
    all.sort_by_key(|h| h.0);
    keep_best_of_each_key(&mut all);
    all
}

/// In hits sorted by key, keeps one hit per key with the best of its scores.
pub fn keep_best_of_each_key<K: PartialEq>(hits: &mut Vec<(K, f32)>) {
    hits.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = kept.1.max(later.1);
        }
        same
    });
}

/// BM25 statistics cached for one searcher generation, and each segment's live token count
/// across generations.
#[derive(Default)]
pub struct StatisticsCache {
    inner: Mutex<(u64, HashMap<Term, u64>, HashMap<Field, u64>)>,
    /// Live tokens of a field in one segment, keyed by the segment's id and its count of
    /// deleted documents (deletes only grow, so the count names the live set). A commit only
    /// adds segments: summing a 2,000-hour shard's 1.8 million documents again after each one
    /// cost about 55 ms of CPU a shard on the first text query of every generation.
    segment_tokens: Mutex<HashMap<(tantivy::index::SegmentId, u32, Field), u64>>,
}

/// Most terms whose live document frequency is cached per generation.
const STATISTICS_CACHE_TERMS_MAX: usize = 50_000;

/// BM25 statistics over live documents only. Tantivy's own count deleted documents until
/// segments merge, so the same data would score differently depending on its update history;
/// these make a rebuilt index (or another replica) score exactly the same.
pub struct LiveStatistics<'a> {
    pub searcher: &'a Searcher,
    pub cache: &'a StatisticsCache,
}

impl LiveStatistics<'_> {
    fn generation(&self) -> u64 {
        self.searcher.generation().generation_id()
    }

    fn cached<K: std::hash::Hash + Eq + Clone>(
        &self,
        key: &K,
        pick: impl Fn(&mut (u64, HashMap<Term, u64>, HashMap<Field, u64>)) -> &mut HashMap<K, u64>,
        compute: impl FnOnce() -> tantivy::Result<u64>,
    ) -> tantivy::Result<u64> {
        let generation = self.generation();
        {
            let mut inner = self.cache.inner.lock();
            if inner.0 != generation {
                *inner = (generation, HashMap::new(), HashMap::new());
            }
            if let Some(value) = pick(&mut inner).get(key) {
                return Ok(*value);
            }
        }
        let value = compute()?;
        let mut inner = self.cache.inner.lock();
        if inner.0 == generation {
            let map = pick(&mut inner);
            if map.len() < STATISTICS_CACHE_TERMS_MAX {
                map.insert(key.clone(), value);
            }
        }
        Ok(value)
    }
}

impl Bm25StatisticsProvider for LiveStatistics<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        self.cached(
            &field,
            |inner| &mut inner.2,
            || {
                let mut total = 0u64;
                let mut kept = HashSet::new();
                for segment in self.searcher.segment_readers() {
                    let key = (segment.segment_id(), segment.num_deleted_docs(), field);
                    kept.insert(key);
                    if let Some(tokens) = self.cache.segment_tokens.lock().get(&key) {
                        total += tokens;
                        continue;
                    }
                    // The sum of field norms (not the exact token total tantivy stores), the
                    // same on every replica whatever its segments.
                    let norms = segment.get_fieldnorms_reader(field)?;
                    let alive = segment.alive_bitset();
                    let mut tokens = 0u64;
                    for doc in 0..segment.max_doc() {
                        if alive.is_none_or(|a| a.is_alive(doc)) {
                            tokens += u64::from(norms.fieldnorm(doc));
                        }
                    }
                    self.cache.segment_tokens.lock().insert(key, tokens);
                    total += tokens;
                }
                // Merged-away segments and older delete counts of this field go.
                self.cache.segment_tokens.lock().retain(|key, _| key.2 != field || kept.contains(key));
                Ok(total)
            },
        )
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.searcher.num_docs())
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        self.cached(
            term,
            |inner| &mut inner.1,
            || {
                let mut total = 0u64;
                for segment in self.searcher.segment_readers() {
                    let inverted = segment.inverted_index(term.field())?;
                    let alive = segment.alive_bitset();
                    if alive.is_none() || segment.num_deleted_docs() == 0 {
                        // Every posting is live: the term dictionary's count is the walk's.
                        total += inverted.get_term_info(term)?.map_or(0, |info| u64::from(info.doc_freq));
                        continue;
                    }
                    let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::Basic)? else { continue };
                    let mut doc = postings.doc();
                    while doc != TERMINATED {
                        if alive.is_none_or(|a| a.is_alive(doc)) {
                            total += 1;
                        }
                        doc = postings.advance();
                    }
                }
                Ok(total)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_hits_cache_serves_one_generation_and_stays_bounded() {
        let cache = LeafHitsCache::default();
        let budget = LEAF_HITS_CACHE_MIN_BYTES;
        let hits = Arc::new(vec![(1u64, 0.5f32), (2, 0.25)]);
        cache.insert(7, "joey".into(), hits.clone(), 100);
        assert_eq!(cache.get(7, "joey"), Some(hits.clone()));
        assert_eq!(cache.get(8, "joey"), None, "another searcher generation never sees it");
        cache.insert(8, "ross".into(), hits.clone(), 100);
        assert_eq!(cache.get(7, "joey"), None, "a newer generation drops the older one's hits");
        cache.insert(7, "joey".into(), hits.clone(), 100);
        assert_eq!(cache.get(8, "joey"), None, "a late result from an older searcher is dropped");
        // A result larger than a quarter of the budget is not kept.
        let huge = Arc::new(vec![(0u64, 1.0f32); budget / 16 / 4 + 1]);
        cache.insert(8, "chandler".into(), huge, 100);
        assert_eq!(cache.get(8, "chandler"), None);
        // Filling past the budget evicts the least recently used, never growing past it.
        let quarter = Arc::new(vec![(0u64, 1.0f32); budget / 16 / 4 - 64]);
        for name in ["a", "b", "c", "d"] {
            cache.insert(8, name.into(), quarter.clone(), 100);
        }
        assert!(cache.get(8, "a").is_some(), "touch a: b is now the oldest");
        cache.insert(8, "e".into(), quarter.clone(), 100);
        assert!(cache.inner.lock().bytes <= budget);
        assert!(cache.get(8, "b").is_none(), "the least recently used went");
        for name in ["a", "c", "d", "e"] {
            assert!(cache.get(8, name).is_some(), "{name} stays");
        }
        // The budget grows with the shard's documents: the same four fit beside a fifth there.
        let documents = (2 * budget / default_label_cache_bytes_per_document()) as u64;
        cache.insert(9, "a".into(), quarter.clone(), documents);
        for name in ["b", "c", "d", "e", "f"] {
            cache.insert(9, name.into(), quarter.clone(), documents);
        }
        for name in ["a", "b", "c", "d", "e", "f"] {
            assert!(cache.get(9, name).is_some(), "{name} fits in a budget sized by documents");
        }
        assert!(cache.inner.lock().bytes <= 2 * budget);
    }

    #[test]
    fn merging_sorted_runs_keeps_one_best_score_per_key_in_order() {
        let runs = vec![Arc::new(vec![(1u64, 0.5f32), (4, 0.1), (9, 0.3)]), Arc::new(vec![(2, 0.2), (4, 0.7)]), Arc::new(vec![(0, 1.0)])];
        assert_eq!(merge_sorted_runs(&runs), vec![(0, 1.0), (1, 0.5), (2, 0.2), (4, 0.7), (9, 0.3)]);
    }

    /// A label's hits searched segment by segment: they equal the disjunction of constant-score
    /// term queries a whole search runs (best term per second); after a commit that adds a
    /// segment only that segment is searched; deletes are seen.
    #[test]
    fn label_hits_by_segment_survive_commits_and_equal_a_whole_search() {
        let dir = tempfile::tempdir().unwrap();
        let index = ShardIndex::open(dir.path(), &[], 15_000_000).unwrap();
        let fields = index.fields;
        let add = |asset: u64, second: u64, labels: &[(&str, u64)]| {
            let mut doc = TantivyDocument::new();
            doc.add_text(fields.key, bucket_key_text(&format!("a{asset}"), second));
            doc.add_u64(fields.asset_ordinal, asset);
            doc.add_u64(fields.second, second);
            for (label, percent) in labels {
                doc.add_text(fields.labels, label_term_text(None, label, *percent));
            }
            index.writer.lock().add_document(doc).unwrap();
        };
        let commit = || {
            index.writer.lock().commit().unwrap();
            index.reader.reload().unwrap();
        };
        let terms: Vec<(Term, f32)> = [(90, 0.9f32), (70, 0.7)]
            .iter()
            .map(|&(p, s)| (Term::from_field_text(fields.labels, &label_term_text(None, "joey", p)), s))
            .collect();
        let key = |asset: u64, second: u64| (asset << 32) | second;
        let collected = std::cell::Cell::new(0);
        let by_segment = |searcher: &Searcher| {
            index
                .leaf_hits
                .hits_by_segment(searcher, "joey", |_, reader| {
                    collected.set(collected.get() + 1);
                    best_term_hits(reader, fields.labels, &terms, key)
                })
                .unwrap()
        };
        let whole = |searcher: &Searcher| {
            let alternatives: Vec<Box<dyn Query>> = terms
                .iter()
                .map(|(term, score)| -> Box<dyn Query> {
                    let term_query = tantivy::query::TermQuery::new(term.clone(), tantivy::schema::IndexRecordOption::Basic);
                    Box::new(tantivy::query::ConstScoreQuery::new(Box::new(term_query), *score))
                })
                .collect();
            let query = tantivy::query::DisjunctionMaxQuery::new(alternatives);
            let mut hits: Vec<(u64, f32)> =
                collect_seconds_in(&index, searcher, &query).unwrap().into_iter().map(|(a, s, score)| (key(a, s), score)).collect();
            hits.sort_by_key(|h| h.0);
            hits
        };
        add(2, 5, &[("joey", 90)]);
        add(2, 1, &[("joey", 70), ("joey", 90)]);
        add(2, 3, &[("joey", 70)]);
        add(2, 4, &[("ross", 90)]);
        commit();
        let searcher = index.reader.searcher();
        assert_eq!(*by_segment(&searcher), whole(&searcher));
        assert_eq!(*by_segment(&searcher), vec![(key(2, 1), 0.9), (key(2, 3), 0.7), (key(2, 5), 0.9)]);
        assert_eq!(collected.get(), 1, "the same generation is served merged");

        add(1, 7, &[("joey", 90)]);
        commit();
        let searcher = index.reader.searcher();
        assert_eq!(searcher.segment_readers().len(), 2);
        assert_eq!(*by_segment(&searcher), whole(&searcher));
        assert_eq!(collected.get(), 2, "only the new segment is searched after a commit");
        assert_eq!(by_segment(&searcher).len(), 4);

        index.writer.lock().delete_term(Term::from_field_text(fields.key, &bucket_key_text("a2", 3)));
        commit();
        let searcher = index.reader.searcher();
        let hits = by_segment(&searcher);
        assert_eq!(*hits, whole(&searcher));
        assert!(!hits.iter().any(|h| h.0 == key(2, 3)), "a deleted second is gone: its segment was searched again");
        assert_eq!(hits.len(), 3);
    }

    /// BM25's statistics count live documents only, whatever the segments and deletes: after
    /// each commit they equal a count over the live documents, a segment's token total is
    /// reused across commits until it gains deletes or is merged away.
    #[test]
    fn live_statistics_equal_a_count_of_live_documents_across_commits_deletes_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        let index = ShardIndex::open(dir.path(), &[], 15_000_000).unwrap();
        let fields = index.fields;
        let lines = ["we were on a break", "a break from us", "the break room", "joey never shares food"];
        let mut live: Vec<(String, &str)> = Vec::new();
        let add = |n: usize, live: &mut Vec<(String, &str)>| {
            let key = bucket_key_text("a1", n as u64);
            let line = lines[n % lines.len()];
            let mut doc = TantivyDocument::new();
            doc.add_text(fields.key, &key);
            doc.add_u64(fields.asset_ordinal, 1);
            doc.add_u64(fields.second, n as u64);
            doc.add_text(fields.dialogue, line);
            index.writer.lock().add_document(doc).unwrap();
            live.push((key, line));
        };
        let commit = || {
            index.writer.lock().commit().unwrap();
            index.reader.reload().unwrap();
        };
        let check = |live: &[(String, &str)], round: &str| {
            let searcher = index.reader.searcher();
            let statistics = LiveStatistics { searcher: &searcher, cache: &index.statistics };
            // Each line's words are distinct and short, so a field norm is the word count.
            let tokens: u64 = live.iter().map(|(_, line)| line.split(' ').count() as u64).sum();
            assert_eq!(statistics.total_num_tokens(fields.dialogue).unwrap(), tokens, "{round}");
            assert_eq!(statistics.total_num_docs().unwrap(), live.len() as u64, "{round}");
            let with_break = live.iter().filter(|(_, line)| line.contains("break")).count() as u64;
            let term = Term::from_field_text(fields.dialogue, "break");
            assert_eq!(statistics.doc_freq(&term).unwrap(), with_break, "{round}");
            let segments = searcher.segment_readers().len();
            assert_eq!(index.statistics.segment_tokens.lock().len(), segments, "{round}: one token total per live segment");
        };
        for n in 0..8 {
            add(n, &mut live);
        }
        commit();
        check(&live, "one segment");
        for n in 8..12 {
            add(n, &mut live);
        }
        commit();
        check(&live, "two segments");
        for gone in [bucket_key_text("a1", 2), bucket_key_text("a1", 9)] {
            index.writer.lock().delete_term(Term::from_field_text(fields.key, &gone));
            live.retain(|(key, _)| *key != gone);
        }
        commit();
        check(&live, "deletes in both segments");
        let ids: Vec<_> = index.reader.searcher().segment_readers().iter().map(|r| r.segment_id()).collect();
        index.writer.lock().merge(&ids).wait().unwrap();
        commit();
        assert_eq!(index.reader.searcher().segment_readers().len(), 1);
        check(&live, "merged");
    }

    fn spec(dimensions: usize) -> VectorSpaceSpec {
        VectorSpaceSpec {
            name: "scene".into(),
            dimensions,
            metric: VectorMetric::Cosine,
            quantization: VectorQuantization::F32,
            connectivity: 16,
            expansion_add: 64,
            expansion_search: 32,
        }
    }

    #[test]
    fn saving_without_new_vectors_still_moves_the_watermark_on_disk() {
        // A restart resumes from the watermark on disk and the log below it may be compacted:
        // an unchanged (or never used) space must still record how far it is complete.
        let dir = tempfile::tempdir().unwrap();
        let index = VectorIndex::open(dir.path(), spec(4)).unwrap();
        index.save(7).unwrap();
        index.save(9).unwrap();
        drop(index);
        assert_eq!(VectorIndex::open(dir.path(), spec(4)).unwrap().saved_watermark(), 9);
    }

    #[test]
    fn more_concurrent_searches_than_cores_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let index = VectorIndex::open(dir.path(), spec(8)).unwrap();
        for key in 0..200u64 {
            let vector: Vec<f32> = (0..8).map(|i| ((key * 7 + i) % 13) as f32 + 1.0).collect();
            index.add(key, &vector).unwrap();
        }
        std::thread::scope(|scope| {
            for thread in 0..16u64 {
                let index = &index;
                scope.spawn(move || {
                    for round in 0..50u64 {
                        let query: Vec<f32> = (0..8).map(|i| ((thread + round + i) % 5) as f32 + 1.0).collect();
                        let hits = index.search(&query, 10, false, None).expect("search under concurrency");
                        assert_eq!(hits.len(), 10);
                    }
                });
            }
        });
    }

    /// The best seconds of a query are the best of all its seconds, with their scores, across
    /// segments and without deleted documents, for plain terms (block-max WAND) and others.
    /// A segment's columns are opened once and shared, read the segment's values, and are let
    /// go once a commit leaves the segment out of the searcher (merged or emptied away).
    #[test]
    fn segment_columns_are_opened_once_and_dropped_with_their_segment() {
        let dir = tempfile::tempdir().unwrap();
        let index = ShardIndex::open(dir.path(), &[], 15_000_000).unwrap();
        let fields = index.fields;
        for second in 0..3u64 {
            let mut doc = TantivyDocument::new();
            doc.add_text(fields.key, bucket_key_text("a7", second));
            doc.add_u64(fields.asset_ordinal, 7);
            doc.add_u64(fields.second, second);
            if second == 1 {
                doc.add_u64(fields.line_end_second, 9);
            }
            index.writer.lock().add_document(doc).unwrap();
        }
        index.commit(1, false).unwrap();
        let searcher = index.reader.searcher();
        let segment = &searcher.segment_readers()[0];
        let columns = index.columns.of(segment).unwrap();
        assert!(Arc::ptr_eq(&columns, &index.columns.of(segment).unwrap()), "opened once");
        let lines: Vec<_> = (0..3).filter_map(|doc| columns.line(doc, 1.0)).collect();
        assert_eq!(lines, vec![(7, 0, 0, 1.0), (7, 1, 9, 1.0), (7, 2, 2, 1.0)]);
        index.writer.lock().delete_term(Term::from_field_u64(fields.asset_ordinal, 7));
        index.commit(2, false).unwrap();
        assert!(index.reader.searcher().segment_readers().is_empty());
        assert!(index.columns.segments.lock().is_empty(), "a segment no longer searched lets its columns go");
    }

    #[test]
    fn top_seconds_are_the_best_of_all_seconds() {
        use tantivy::query::{BooleanQuery, DisjunctionMaxQuery, Occur, TermQuery};
        let dir = tempfile::tempdir().unwrap();
        let index = ShardIndex::open(dir.path(), &[], 15_000_000).unwrap();
        let fields = index.fields;
        let words = ["we", "were", "on", "a", "break", "beach", "never", "them"];
        for round in 0..4u64 {
            for i in 0..300u64 {
                // Lines of varied length and word counts, so BM25 scores spread.
                let line: Vec<&str> = (0..1 + (i * 7 + round) % 9).map(|j| words[((i * 13 + j * j + round) % 8) as usize]).collect();
                let (asset, second) = (round % 3, round * 1000 + i);
                let mut doc = TantivyDocument::new();
                doc.add_text(fields.key, bucket_key_text(&format!("a{asset}"), second));
                doc.add_u64(fields.asset_ordinal, asset);
                doc.add_u64(fields.second, second);
                doc.add_text(fields.dialogue, line.join(" "));
                index.writer.lock().add_document(doc).unwrap();
            }
            if round == 2 {
                for second in [2000, 2001, 2002, 2003] {
                    index.writer.lock().delete_term(Term::from_field_text(fields.key, &bucket_key_text("a2", second)));
                }
            }
            index.writer.lock().commit().unwrap();
        }
        index.reader.reload().unwrap();
        let searcher = index.reader.searcher();
        assert!(searcher.segment_readers().len() >= 2, "the test wants several segments");
        let term = |word: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(Term::from_field_text(fields.dialogue, word), IndexRecordOption::WithFreqs))
        };
        let queries: Vec<Box<dyn Query>> = vec![
            Box::new(BooleanQuery::new(vec![(Occur::Should, term("break")), (Occur::Should, term("beach")), (Occur::Should, term("we"))])),
            Box::new(DisjunctionMaxQuery::new(vec![term("never"), term("them")])),
            term("on"),
            // Plain terms, all required: tantivy's block-max intersection.
            Box::new(BooleanQuery::new(vec![(Occur::Must, term("we")), (Occur::Must, term("were"))])),
        ];
        for query in &queries {
            let mut all = collect_seconds_in(&index, &searcher, query.as_ref()).unwrap();
            assert!(all.len() > 100, "{} seconds", all.len());
            assert!(all.iter().all(|&(asset, second, _)| !(asset == 2 && (2000..2004).contains(&second))), "deleted seconds searched");
            all.sort_by(|a, b| b.2.total_cmp(&a.2));
            for limit in [0, 1, 10, 57, all.len(), all.len() + 5, usize::MAX] {
                let mut top = top_seconds_in(&index, &searcher, query.as_ref(), limit).unwrap();
                top.sort_by(|a, b| b.2.total_cmp(&a.2));
                assert_eq!(top.len(), limit.min(all.len()));
                // The same scores, up to the order the pruning scorer sums terms in; ties at the
                // cut may pick different seconds of equal score.
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(1.0);
                for (kept, best) in top.iter().zip(&all) {
                    assert!(close(kept.2, best.2), "limit {limit}: {kept:?} where the whole search's next best is {best:?}");
                }
                for hit in &top {
                    assert!(
                        all.iter().any(|h| (h.0, h.1) == (hit.0, hit.1) && close(h.2, hit.2)),
                        "{hit:?} is not a hit of the whole search"
                    );
                }
            }
        }
    }

    /// Seconds holding every word, each word's best alternative scored: the same seconds and
    /// scores as tantivy's boolean query of disjunction-max clauses, across segments, deletes,
    /// fuzzy alternatives and a filter, whichever word is rarest.
    #[test]
    fn every_word_hits_equal_a_boolean_query_of_disjunctions() {
        use tantivy::query::{BooleanQuery, BoostQuery, DisjunctionMaxQuery, EnableScoring, FuzzyTermQuery, Occur, TermQuery};
        let dir = tempfile::tempdir().unwrap();
        let index = ShardIndex::open(dir.path(), &[], 15_000_000).unwrap();
        let fields = index.fields;
        let lines = [
            "we were on a break",
            "we were never on a brake",
            "on a break we were",
            "a break",
            "we were on the beach",
            "breaks were had and we were on them",
            "we we we were on on a break break",
        ];
        for round in 0..3u64 {
            for (i, line) in lines.iter().enumerate() {
                let (asset, second) = (round % 2, round * 100 + i as u64);
                let mut doc = TantivyDocument::new();
                doc.add_text(fields.key, bucket_key_text(&format!("a{asset}"), second));
                doc.add_u64(fields.asset_ordinal, asset);
                doc.add_u64(fields.second, second);
                doc.add_text(fields.dialogue, line);
                index.writer.lock().add_document(doc).unwrap();
            }
            // A segment per round, and a delete in the second.
            if round == 1 {
                index.writer.lock().delete_term(Term::from_field_text(fields.key, &bucket_key_text("a1", 102)));
            }
            index.writer.lock().commit().unwrap();
        }
        index.reader.reload().unwrap();
        let searcher = index.reader.searcher();
        assert!(searcher.segment_readers().len() >= 2, "the test wants several segments");
        let alternatives = |word: &str, edits: u8| -> Vec<Box<dyn Query>> {
            let term = Term::from_field_text(fields.dialogue, word);
            let mut alternatives: Vec<Box<dyn Query>> = vec![Box::new(TermQuery::new(term.clone(), IndexRecordOption::WithFreqs))];
            if edits > 0 {
                alternatives.push(Box::new(BoostQuery::new(Box::new(FuzzyTermQuery::new(term, edits, true)), 0.25)));
            }
            alternatives
        };
        let key = |asset: u64, second: u64| (asset << 32) | second;
        for (words, keep_asset) in [
            (vec![("we", 0), ("break", 1)], None),
            (vec![("break", 1), ("were", 0), ("on", 0)], None),
            (vec![("brake", 1), ("a", 0)], Some(0u64)),
            (vec![("beach", 0), ("never", 0)], None),
        ] {
            let statistics = LiveStatistics { searcher: &searcher, cache: &index.statistics };
            let scoring = EnableScoring::enabled_from_statistics_provider(&statistics, &searcher);
            let weights: Vec<Vec<Box<dyn tantivy::query::Weight>>> =
                words.iter().map(|&(word, edits)| alternatives(word, edits).iter().map(|q| q.weight(scoring).unwrap()).collect()).collect();
            let mut mine: Vec<(u64, f32)> = Vec::new();
            for reader in searcher.segment_readers() {
                let columns = index.columns.of(reader).unwrap();
                mine.extend(every_word_hits(reader, &columns, &weights, |asset, _| keep_asset.is_none_or(|k| k == asset), key).unwrap());
            }
            mine.sort_by_key(|h| h.0);
            let clauses: Vec<(Occur, Box<dyn Query>)> = words
                .iter()
                .map(|&(word, edits)| -> (Occur, Box<dyn Query>) {
                    (Occur::Must, Box::new(DisjunctionMaxQuery::new(alternatives(word, edits))))
                })
                .collect();
            let mut whole: Vec<(u64, f32)> = collect_seconds_in(&index, &searcher, &BooleanQuery::new(clauses))
                .unwrap()
                .into_iter()
                .filter(|&(asset, _, _)| keep_asset.is_none_or(|k| k == asset))
                .map(|(a, s, score)| (key(a, s), score))
                .collect();
            whole.sort_by_key(|h| h.0);
            assert_eq!(mine.iter().map(|h| h.0).collect::<Vec<_>>(), whole.iter().map(|h| h.0).collect::<Vec<_>>(), "{words:?}");
            for (a, b) in mine.iter().zip(&whole) {
                assert!((a.1 - b.1).abs() <= 1e-5 * b.1.abs(), "{words:?}: {a:?} vs {b:?}");
            }
            assert!(!mine.is_empty() || words[0].0 == "beach", "{words:?} matches something");
            assert!(mine.iter().all(|h| h.0 != key(1, 102)), "a deleted document never matches");
        }
    }

    /// Keys and distances as usearch's exact search ranks them, to compare a scan with.
    fn keys_and_rounded(found: &[(u64, f32)]) -> Vec<(u64, i64)> {
        found.iter().map(|&(key, distance)| (key, (distance * 1e4).round() as i64)).collect()
    }

    #[test]
    fn a_scan_finds_what_the_exact_search_finds_before_and_after_a_reopen_and_never_from_an_incomplete_copy() {
        let dir = tempfile::tempdir().unwrap();
        // Distinct vectors, so no two keys tie.
        let vector_of = |key: u64| -> Vec<f32> {
            (0..8u64).map(|i| ((key * 8 + i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect()
        };
        let query: Vec<f32> = (0..8).map(|i| (i as f32) - 3.5).collect();
        let index = VectorIndex::open(dir.path(), spec(8)).unwrap();
        for key in 0..300u64 {
            index.add(key, &vector_of(key)).unwrap();
        }
        for key in (0..300u64).step_by(7) {
            index.remove(key).unwrap();
        }
        let exact = index.search(&query, 40, true, None).unwrap();
        let scanned = index.scan(&query, 40, None).expect("a new index's copy is complete");
        assert_eq!(keys_and_rounded(&scanned), keys_and_rounded(&exact));
        // A floor keeps exactly the vectors at or above it (similarity = 1 - distance).
        let floor = 1.0 - f64::from(exact[25].1);
        let floored = index.scan(&query, 40, Some(floor)).unwrap();
        assert!(floored.iter().all(|&(_, d)| index.similarity(d) as f32 >= floor as f32 - 1e-6), "{floored:?}");
        assert!(floored.len() >= 26 && floored.len() <= 40, "{} kept above the floor", floored.len());
        index.save(1).unwrap();
        drop(index);

        let reopened = VectorIndex::open(dir.path(), spec(8)).unwrap();
        assert_eq!(reopened.scan(&query, 40, None), None, "loaded from disk, the copy is empty until filled");
        // The store's key map may name keys the index never held (another space's, a removed one).
        reopened.fill_flat((0..300u64).filter(|key| key % 3 != 0));
        assert_eq!(reopened.scan(&query, 40, None), None, "a third of the keys is missing: still not used");
        reopened.fill_flat(0..1000u64);
        let scanned = reopened.scan(&query, 40, None).expect("filled");
        assert_eq!(keys_and_rounded(&scanned), keys_and_rounded(&exact));
        // Later changes reach the copy.
        reopened.add(1000, &query).unwrap();
        reopened.remove(1).unwrap();
        let scanned = reopened.scan(&query, 300, None).unwrap();
        assert_eq!(scanned.first().map(|h| h.0), Some(1000), "the query itself is nearest");
        assert!(scanned.iter().all(|h| h.0 != 1 && h.0 % 7 != 0), "removed keys are gone");
        assert_eq!(scanned.len(), reopened.len());
    }
}
