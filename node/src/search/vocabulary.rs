//! A shard's vocabularies as search as you type and query understanding show them.
//!
//! The index matches without case or accents: label terms are normalized (`normalize_label`:
//! lower case) and dialogue terms folded (`crème` is the term `creme`). Completion matches the
//! same way ([`fold`] on both sides), and how a label or a word was written is read back from the
//! buckets of a few seconds that hold it, spread over the index: the most frequent spelling
//! among them is the one shown ([`best_spelling`]). Spellings are cached per shard until its
//! index changes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rushes_cluster::ShardId;
use rushes_protocol::model::{normalize_label, BucketRef};
use rushes_protocol::ApiError;
use tantivy::postings::SegmentPostings;
use tantivy::schema::IndexRecordOption;
use tantivy::tokenizer::{AsciiFoldingFilter, LowerCaser, RawTokenizer, TextAnalyzer};
use tantivy::{DocSet, Searcher, Term, TERMINATED};

use crate::shard::Shard;
use crate::storage::blocks::BucketBlockRef;
use crate::storage::index::{label_decile_term_text, text_analyzer, tokens_with};

/// Terms read from one segment's dictionary per keystroke, at most.
pub const TERMS_SCANNED_MAX: usize = 5_000;
/// Seconds whose buckets are read, per shard, to learn how a label is spelled.
const LABEL_SAMPLES: usize = 16;
/// Seconds whose buckets are read, per shard, to learn how a dialogue word is spelled.
const WORD_SAMPLES: usize = 8;
/// A cached spelling is read again after this even if the index did not change.
const SPELLINGS_CACHED_FOR: Duration = Duration::from_secs(300);
/// Cached spellings kept at most (the cache is emptied when full).
const SPELLINGS_CACHE_ENTRIES_MAX: usize = 16_384;

/// Spellings with how often each was seen.
pub type SpellingCounts = BTreeMap<String, u64>;

thread_local! {
    static FOLDER: RefCell<TextAnalyzer> =
        RefCell::new(TextAnalyzer::builder(RawTokenizer::default()).filter(LowerCaser).filter(AsciiFoldingFilter).build());
}

/// `text` lower-cased and without accents, as the dialogue index folds its words ("Crème" →
/// "creme", "Zoë" → "zoe"), but kept whole: spaces and punctuation stay.
pub fn fold(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    FOLDER.with(|folder| {
        let mut folder = folder.borrow_mut();
        let mut stream = folder.token_stream(text);
        let mut out = String::with_capacity(text.len());
        while stream.advance() {
            out.push_str(&stream.token().text);
        }
        out
    })
}

/// A label as written, white space collapsed (all `normalize_label` changes besides case).
pub fn label_spelling(raw: &str) -> String {
    raw.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The most frequent spelling; on a tie the one sorting first (capitals before lower case:
/// "Joey" over "joey").
pub fn best_spelling(counts: &SpellingCounts) -> Option<String> {
    counts.iter().filter(|(_, n)| **n > 0).max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(s, _)| s.clone())
}

/// Adds `more` to `counts`.
pub fn add_counts(counts: &mut SpellingCounts, more: impl IntoIterator<Item = (String, u64)>) {
    for (spelling, n) in more {
        *counts.entry(spelling).or_insert(0) += n;
    }
}

/// How a label completes what is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelMatch {
    /// The label continues the whole typed text ("coffee s" → "coffee shop").
    Whole,
    /// The label continues the word being typed.
    Word,
}

/// Whether a label (normalized: lower case) completes typed text: `whole` is the whole typed text and
/// `prefix` the word being typed, both folded ([`fold`]); `whole` is empty unless several words
/// were typed. A name of several words completes the whole text, any name the word being typed.
pub fn label_completes(label: &str, whole: &str, prefix: &str) -> Option<LabelMatch> {
    if whole.is_empty() && prefix.is_empty() {
        return None;
    }
    // Normalized labels are lower case already: only others need folding (most are ASCII).
    let folded: std::borrow::Cow<str> = if label.is_ascii() { label.into() } else { fold(label).into() };
    if !whole.is_empty() && label.contains(' ') && folded.starts_with(whole) {
        Some(LabelMatch::Whole)
    } else if !prefix.is_empty() && folded.starts_with(prefix) {
        Some(LabelMatch::Word)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TermKind {
    Label,
    Word,
}

struct CachedSpellings {
    generation: u64,
    at: Instant,
    counts: SpellingCounts,
}

/// Spellings read from buckets, per shard, valid while the shard's index generation is the one
/// they were read at (any commit starts a new one).
#[derive(Default)]
pub struct SpellingCache {
    entries: Mutex<HashMap<(ShardId, TermKind, String), CachedSpellings>>,
}

impl SpellingCache {
    fn get(&self, shard: ShardId, kind: TermKind, text: &str, generation: u64) -> Option<SpellingCounts> {
        let entries = self.entries.lock();
        let cached = entries.get(&(shard, kind, text.to_string()))?;
        (cached.generation == generation && cached.at.elapsed() < SPELLINGS_CACHED_FOR).then(|| cached.counts.clone())
    }

    fn put(&self, shard: ShardId, kind: TermKind, text: &str, generation: u64, counts: SpellingCounts) {
        let mut entries = self.entries.lock();
        if entries.len() >= SPELLINGS_CACHE_ENTRIES_MAX {
            entries.clear();
        }
        entries.insert((shard, kind, text.to_string()), CachedSpellings { generation, at: Instant::now(), counts });
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

/// Up to `max` live documents holding any of `terms` (all of one field), as (asset ordinal,
/// second): every k-th posting of each segment, so the sample spreads over the whole index
/// rather than its oldest documents. Empty when only deleted documents hold them.
fn sample_seconds(searcher: &Searcher, terms: &[Term], max: usize) -> Result<Vec<(u64, u64)>, ApiError> {
    let mut out = Vec::new();
    let Some(field) = terms.first().map(Term::field) else { return Ok(out) };
    let segments = searcher.segment_readers();
    let per_segment = max.div_ceil(segments.len().max(1)).max(1);
    let mut seen: HashSet<(usize, u32)> = HashSet::new();
    for (segment_ord, segment) in segments.iter().enumerate() {
        if out.len() >= max {
            break;
        }
        let inverted = segment.inverted_index(field).map_err(internal)?;
        let mut lists: Vec<SegmentPostings> = Vec::with_capacity(terms.len());
        for term in terms {
            if let Some(postings) = inverted.read_postings(term, IndexRecordOption::Basic).map_err(internal)? {
                lists.push(postings);
            }
        }
        let total: usize = lists.iter().map(|p| p.doc_freq() as usize).sum();
        if total == 0 {
            continue;
        }
        let every = (total / per_segment).max(1);
        let fast = segment.fast_fields();
        let assets = fast.u64("asset_ordinal").map_err(internal)?;
        let seconds = fast.u64("second").map_err(internal)?;
        let alive = segment.alive_bitset();
        let (mut position, mut taken) = (0usize, 0usize);
        'lists: for mut postings in lists {
            let mut doc = postings.doc();
            while doc != TERMINATED {
                if taken >= per_segment || out.len() >= max {
                    break 'lists;
                }
                if position % every == 0 && alive.is_none_or(|bits| bits.is_alive(doc)) && seen.insert((segment_ord, doc)) {
                    if let (Some(asset), Some(second)) = (assets.first(doc), seconds.first(doc)) {
                        out.push((asset, second));
                        taken += 1;
                    }
                }
                position += 1;
                doc = postings.advance();
            }
        }
        if taken == 0 && out.is_empty() {
            // Every sampled posting was deleted: look for any live one before giving up.
            for term in terms {
                let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::Basic).map_err(internal)? else { continue };
                let mut doc = postings.doc();
                while doc != TERMINATED {
                    if alive.is_none_or(|bits| bits.is_alive(doc)) {
                        if let (Some(asset), Some(second)) = (assets.first(doc), seconds.first(doc)) {
                            out.push((asset, second));
                            break;
                        }
                    }
                    doc = postings.advance();
                }
                if !out.is_empty() {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Reads the bucket of each sampled second and counts what `count` finds in it.
fn count_in_buckets(shard: &Shard, seconds: &[(u64, u64)], mut count: impl FnMut(&BucketRef, &mut SpellingCounts)) -> SpellingCounts {
    let mut counts = SpellingCounts::new();
    for &(ordinal, second) in seconds {
        let Some(asset) = shard.store.asset_of_ordinal(ordinal) else { continue };
        // A bucket rewritten or gone since it was indexed only leaves a gap in the sample.
        let Ok(Some(bytes)) = shard.store.bucket_block_bytes(&asset, second) else { continue };
        let Some(bucket) = BucketBlockRef::decode(&bytes).ok().and_then(|block| block.bucket(second)) else { continue };
        count(&bucket, &mut counts);
    }
    counts
}

/// How the models spelled `label` (normalized) on this shard, from a sample of the seconds
/// holding it; empty when the shard does not hold it.
pub fn label_spellings(shard: &Shard, cache: &SpellingCache, label: &str) -> Result<SpellingCounts, ApiError> {
    let searcher = shard.index.reader.searcher();
    let generation = searcher.generation().generation_id();
    if let Some(counts) = cache.get(shard.id, TermKind::Label, label, generation) {
        return Ok(counts);
    }
    let field = shard.index.fields.labels;
    let terms: Vec<Term> = (0..=9).rev().map(|decile| Term::from_field_text(field, &label_decile_term_text(None, label, decile))).collect();
    let seconds = sample_seconds(&searcher, &terms, LABEL_SAMPLES)?;
    let counts = count_in_buckets(shard, &seconds, |bucket, counts| {
        for entry in &bucket.entries {
            if let Some(raw) = entry.label.filter(|raw| normalize_label(raw) == label) {
                *counts.entry(label_spelling(raw)).or_insert(0) += 1;
            }
        }
    });
    cache.put(shard.id, TermKind::Label, label, generation, counts.clone());
    Ok(counts)
}

/// A dialogue word of one shard that completes what is typed.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardWord {
    /// The index term: lower case, folded.
    pub term: String,
    /// How it is said, in lower case ("crème").
    pub spelling: String,
    /// Dialogue seconds that hold it.
    pub frequency: u64,
}

/// Dialogue words of `shard` starting with `prefix` (folded), most frequent first, at most
/// `limit`. The term dictionary keeps a deleted document's words until its segment merges: a
/// word is offered only while a live document holds it.
pub fn dialogue_words(shard: &Shard, cache: &SpellingCache, prefix: &str, limit: usize) -> Result<Vec<ShardWord>, ApiError> {
    if prefix.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let field = shard.index.fields.dialogue;
    let searcher = shard.index.reader.searcher();
    let generation = searcher.generation().generation_id();
    let mut words: HashMap<String, u64> = HashMap::new();
    for segment in searcher.segment_readers() {
        let inverted = segment.inverted_index(field).map_err(internal)?;
        let mut upper = prefix.as_bytes().to_vec();
        upper.push(0xff);
        let mut stream = inverted.terms().range().ge(prefix.as_bytes()).lt(&upper).into_stream().map_err(internal)?;
        let mut scanned = 0;
        while stream.advance() && scanned < TERMS_SCANNED_MAX {
            scanned += 1;
            let word = String::from_utf8_lossy(stream.key()).into_owned();
            *words.entry(word).or_insert(0) += u64::from(stream.value().doc_freq);
        }
    }
    let mut ranked: Vec<(String, u64)> = words.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut out = Vec::new();
    let mut analyzer = None;
    for (term, frequency) in ranked {
        if out.len() == limit {
            break;
        }
        // Cached for this searcher generation (its segments and deletes) only once a sample found
        // a live document holding the word: it still does. Sampling again to check cost a fifth of
        // a keystroke at 2,000 hours (opening every segment's asset and second columns decodes
        // their block index), for each word a completion offers.
        let counts = match cache.get(shard.id, TermKind::Word, &term, generation) {
            Some(counts) => counts,
            None => {
                let seconds = sample_seconds(&searcher, &[Term::from_field_text(field, &term)], WORD_SAMPLES)?;
                if seconds.is_empty() {
                    continue;
                }
                let analyzer = analyzer.get_or_insert_with(text_analyzer);
                let counts = count_in_buckets(shard, &seconds, |bucket, counts| {
                    for text in bucket.entries.iter().filter_map(|e| e.text) {
                        for (token, [from, to]) in tokens_with(analyzer, text) {
                            if token == term {
                                if let Some(said) = text.get(from..to) {
                                    *counts.entry(said.to_lowercase()).or_insert(0) += 1;
                                }
                            }
                        }
                    }
                });
                cache.put(shard.id, TermKind::Word, &term, generation, counts.clone());
                counts
            }
        };
        let spelling = best_spelling(&counts).unwrap_or_else(|| term.clone());
        out.push(ShardWord { term, spelling, frequency });
    }
    Ok(out)
}

/// A label of one shard, with how it is spelled there.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardLabel {
    /// Normalized.
    pub label: String,
    pub tracks: Vec<String>,
    pub spellings: SpellingCounts,
}

/// What one shard offers for typed text (see `PeerRequest::Completions`): dialogue words, the
/// labels that complete the text (the first `limit` in label order), and the asked `labels`
/// the shard holds, each with its spellings.
pub fn shard_completions(
    shard: &Shard,
    cache: &SpellingCache,
    prefix: &str,
    whole: &str,
    limit: usize,
    labels: &[String],
) -> Result<(Vec<ShardWord>, Vec<ShardLabel>), ApiError> {
    let words = dialogue_words(shard, cache, prefix, limit)?;
    let vocabulary = shard.store.vocabulary();
    let mut chosen: Vec<(&String, &Vec<String>)> = Vec::new();
    if limit > 0 {
        for (label, tracks) in &vocabulary {
            if label_completes(label, whole, prefix).is_some() {
                chosen.push((label, tracks));
                if chosen.len() >= limit {
                    break;
                }
            }
        }
    }
    for label in labels {
        if let Some((label, tracks)) = vocabulary.get_key_value(label) {
            if !chosen.iter().any(|(l, _)| *l == label) {
                chosen.push((label, tracks));
            }
        }
    }
    let mut out = Vec::with_capacity(chosen.len());
    for (label, tracks) in chosen {
        out.push(ShardLabel { label: label.clone(), tracks: tracks.clone(), spellings: label_spellings(shard, cache, label)? });
    }
    Ok((words, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_drops_case_and_accents_and_keeps_the_text_whole() {
        assert_eq!(fold("Crè"), "cre");
        assert_eq!(fold("Zoë"), "zoe");
        assert_eq!(fold("Coffee Sh"), "coffee sh");
        assert_eq!(fold("crème brûlée"), "creme brulee");
        // The index's own analyzer agrees word by word.
        assert_eq!(crate::storage::index::tokenize("Crème Brûlée"), vec!["creme", "brulee"]);
        assert_eq!(fold("\u{212A}"), "k");
    }

    #[test]
    fn labels_complete_the_word_or_the_whole_text_without_case_or_accents() {
        assert_eq!(label_completes("zoë", "", "zoe"), Some(LabelMatch::Word));
        assert_eq!(label_completes("zoë", "", "zo"), Some(LabelMatch::Word));
        assert_eq!(label_completes("joey", "", "jo"), Some(LabelMatch::Word));
        assert_eq!(label_completes("coffee shop", "coffee s", "s"), Some(LabelMatch::Whole));
        assert_eq!(label_completes("shop", "coffee s", "s"), Some(LabelMatch::Word));
        assert_eq!(label_completes("café crème", "cafe cr", "cr"), Some(LabelMatch::Whole));
        assert_eq!(label_completes("joey", "", ""), None);
        assert_eq!(label_completes("ross", "", "jo"), None);
    }

    #[test]
    fn the_most_frequent_spelling_wins_and_capitals_break_ties() {
        let counts = |pairs: &[(&str, u64)]| pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect::<SpellingCounts>();
        assert_eq!(best_spelling(&counts(&[("Joey", 3), ("joey", 1)])), Some("Joey".into()));
        assert_eq!(best_spelling(&counts(&[("Joey", 1), ("JOEY", 5)])), Some("JOEY".into()));
        assert_eq!(best_spelling(&counts(&[("joey", 2), ("Joey", 2)])), Some("Joey".into()));
        assert_eq!(best_spelling(&counts(&[("joey", 0)])), None);
        assert_eq!(best_spelling(&SpellingCounts::new()), None);
        assert_eq!(label_spelling("  Coffee   Shop "), "Coffee Shop");
    }
}
