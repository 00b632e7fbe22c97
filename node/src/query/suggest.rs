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

pub fn suggest(planner: &Planner, shards: &[Arc<Shard>], q: &str, limit: usize) -> Result<Suggestions, ApiError> {
    let lowered = q.to_lowercase();
    let trimmed = lowered.trim_start();
    if trimmed.trim().is_empty() {
        return Ok(Suggestions { completions: vec![] });
    }
    let (head, prefix) = match trimmed.rfind(char::is_whitespace) {
        Some(split) => (&trimmed[..=split], &trimmed[split + 1..]),
        None => ("", trimmed),
    };
    let head_original = &q[..q.len() - prefix.len().min(q.len())];
    let mut completions = Vec::new();
    // Labels first: a name completes on the whole typed text too ("coffee s" → "coffee shop").
    for (label, tracks) in planner.vocabulary() {
        let whole = trimmed.trim_end();
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
        for (word, frequency) in ranked.into_iter().take(limit - completions.len()) {
            completions.push(Completion { query: format!("{head_original}{word}"), text: word, kind: "word", tracks: vec![], frequency });
        }
    }
    Ok(Suggestions { completions })
}
