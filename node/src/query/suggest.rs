//! Search-as-you-type: completes the word being typed from the label vocabulary (names,
//! places, objects) and from the dialogue term dictionary, most frequent first.

use std::collections::HashMap;

use rushes_protocol::ApiError;
use serde::Serialize;

use std::sync::Arc;

use crate::query::planner::Planner;
use crate::shard::Shard;

/// Terms read from one segment's dictionary per keystroke, at most.
const TERMS_SCANNED_MAX: usize = 5_000;

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// The completed word or name.
    pub text: String,
    /// `label` (with its tracks) or `word` (dialogue).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tracks: Vec<String>,
    /// The whole query with the completion in place, ready for `/v1/search`.
    pub query: String,
    /// Dialogue seconds that hold the word (words), or 0 for labels.
    pub frequency: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Suggestions {
    pub completions: Vec<Completion>,
}

/// What was typed, split into the finished words and the word being typed. Splitting happens on
/// the original text and each part is lower-cased on its own: lower-casing can change a text's
/// byte length (the Kelvin sign U+212A is 3 bytes, its lower case `k` is 1), so a byte offset
/// found in the lower-cased text must never slice the original.
#[derive(Debug, PartialEq)]
struct Typed<'q> {
    /// The finished words, lower-cased, ending with the whitespace that ended them.
    head: String,
    /// The word being typed, lower-cased (empty after a trailing space).
    prefix: String,
    /// The finished words as typed, to put a completion after.
    head_original: &'q str,
}

impl<'q> Typed<'q> {
    fn split(q: &'q str) -> Option<Typed<'q>> {
        let text = q.trim_start();
        if text.trim().is_empty() {
            return None;
        }
        let prefix_start = match text.char_indices().rev().find(|(_, c)| c.is_whitespace()) {
            Some((at, c)) => at + c.len_utf8(),
            None => 0,
        };
        let (head, prefix) = text.split_at(prefix_start);
        Some(Typed { head: head.to_lowercase(), prefix: prefix.to_lowercase(), head_original: &q[..q.len() - prefix.len()] })
    }
}

pub fn suggest(planner: &Planner, shards: &[Arc<Shard>], q: &str, limit: usize) -> Result<Suggestions, ApiError> {
    let Some(typed) = Typed::split(q) else {
        return Ok(Suggestions { completions: vec![] });
    };
    let Typed { head, prefix, head_original } = typed;
    let (head, prefix) = (head.as_str(), prefix.as_str());
    let lowered_whole = format!("{head}{prefix}");
    let mut completions = Vec::new();
    // Labels first: a name completes on the whole typed text too ("coffee s" → "coffee shop").
    for (label, tracks) in planner.vocabulary() {
        let whole = lowered_whole.trim_end();
        let (matches, query) = if !head.is_empty() && label.starts_with(whole) && label.contains(' ') {
            (true, label.clone())
        } else if !prefix.is_empty() && label.starts_with(prefix) {
            (true, format!("{head}{label}"))
        } else {
            (false, String::new())
        };
        if matches {
            completions.push(Completion { text: label, kind: "label", tracks, query, frequency: 0 });
        }
        if completions.len() >= limit {
            break;
        }
    }
    if !prefix.is_empty() && completions.len() < limit {
        let mut words: HashMap<String, u64> = HashMap::new();
        for shard in shards {
            let searcher = shard.index.reader.searcher();
            for segment in searcher.segment_readers() {
                let inverted = segment.inverted_index(shard.index.fields.dialogue).map_err(|e| ApiError::internal(e.to_string()))?;
                let mut upper = prefix.as_bytes().to_vec();
                upper.push(0xff);
                let mut stream = inverted
                    .terms()
                    .range()
                    .ge(prefix.as_bytes())
                    .lt(&upper)
                    .into_stream()
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let mut scanned = 0;
                while stream.advance() && scanned < TERMS_SCANNED_MAX {
                    scanned += 1;
                    let word = String::from_utf8_lossy(stream.key()).into_owned();
                    *words.entry(word).or_insert(0) += u64::from(stream.value().doc_freq);
                }
            }
        }
        let mut ranked: Vec<(String, u64)> = words.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let wanted = limit - completions.len();
        let mut taken = 0;
        for (word, frequency) in ranked {
            if taken == wanted {
                break;
            }
            // The term dictionary keeps a deleted document's words until its segment merges:
            // a word is offered only while a live document holds it.
            if !has_live_dialogue_word(shards, &word)? {
                continue;
            }
            taken += 1;
            completions.push(Completion { query: format!("{head_original}{word}"), text: word, kind: "word", tracks: vec![], frequency });
        }
    }
    Ok(Suggestions { completions })
}

/// Whether a live (not deleted) document of any of `shards` holds `word` in dialogue.
fn has_live_dialogue_word(shards: &[Arc<Shard>], word: &str) -> Result<bool, ApiError> {
    use tantivy::DocSet;
    for shard in shards {
        let field = shard.index.fields.dialogue;
        let term = tantivy::Term::from_field_text(field, word);
        let searcher = shard.index.reader.searcher();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field).map_err(|e| ApiError::internal(e.to_string()))?;
            let Some(mut postings) =
                inverted.read_postings(&term, tantivy::schema::IndexRecordOption::Basic).map_err(|e| ApiError::internal(e.to_string()))?
            else {
                continue;
            };
            let alive = segment.alive_bitset();
            let mut doc = postings.doc();
            while doc != tantivy::TERMINATED {
                if alive.is_none_or(|bits| bits.is_alive(doc)) {
                    return Ok(true);
                }
                doc = postings.advance();
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn typed_text_splits_into_finished_words_and_the_word_being_typed() {
        let typed = Typed::split("  Coffee Sh").expect("text");
        assert_eq!(typed, Typed { head: "coffee ".into(), prefix: "sh".into(), head_original: "  Coffee " });
        assert_eq!(Typed::split("Joey ").expect("text").prefix, "");
        assert_eq!(Typed::split("   "), None);
        // Lower-casing shortens the Kelvin sign from 3 bytes to 1: nothing may slice by the
        // lower-cased length.
        let typed = Typed::split("\u{212A}\u{212A}").expect("text");
        assert_eq!((typed.head.as_str(), typed.prefix.as_str(), typed.head_original), ("", "kk", ""));
        let typed = Typed::split("\u{212A} \u{212A}x").expect("text");
        assert_eq!((typed.head.as_str(), typed.prefix.as_str(), typed.head_original), ("k ", "kx", "\u{212A} "));
        // A multi-byte space ends a word too.
        let typed = Typed::split("café\u{3000}cr").expect("text");
        assert_eq!((typed.prefix.as_str(), typed.head_original), ("cr", "café\u{3000}"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any text, including characters whose lower case has another length (İ, K, ẞ, Σ),
        /// splits without panicking, and the original head plus the typed word is the text.
        #[test]
        fn any_typed_text_splits_without_panicking(q in "[a-zA-Z \u{212A}\u{0130}\u{1E9E}\u{03A3}\u{3000}\u{00C9}\\PC]{0,24}") {
            if let Some(typed) = Typed::split(&q) {
                prop_assert!(q.starts_with(typed.head_original));
                let rest = &q[typed.head_original.len()..];
                prop_assert_eq!(rest.to_lowercase(), typed.prefix.clone());
                prop_assert!(!typed.prefix.chars().any(char::is_whitespace));
            }
        }
    }
}
