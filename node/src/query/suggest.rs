//! Search-as-you-type: completes the word being typed from the label vocabulary (names,
//! places, objects) and from the dialogue term dictionary, most frequent first, over every
//! shard: this node's replicas, and one replica of each shard it lacks (asked with
//! `PeerRequest::Completions` within the request deadline, like a search; a shard that cannot
//! answer leaves its words out and is named in `warnings`). Matching ignores case and accents
//! ("cre" and "crè" complete to "crème", "zoe" to "Zoë"); completions are shown as spelled:
//! labels as the models wrote them (the most frequent spelling), words as said, in lower case.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rushes_protocol::ApiError;
use serde::Serialize;

use crate::query::planner::{CompletionsAsk, Planner};
use crate::search::vocabulary::{self, add_counts, best_spelling, fold, label_completes, LabelMatch, SpellingCounts};
use crate::shard::Shard;

/// Words each shard proposes, at least (more when more completions are asked): shards rank
/// their own words, and a word second on every shard may lead overall.
const WORDS_PER_SHARD_MIN: usize = 16;

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// The completed word or name, as spelled.
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
    /// Shards that could not be asked: their words (and labels only they hold) are missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
    /// The word being typed, as typed.
    prefix_original: &'q str,
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
        Some(Typed {
            head: head.to_lowercase(),
            prefix: prefix.to_lowercase(),
            head_original: &q[..q.len() - prefix.len()],
            prefix_original: prefix,
        })
    }

    /// (The whole text, folded, with single spaces: empty when only one word is typed; the
    /// word being typed, folded.)
    fn folded(&self) -> (String, String) {
        let prefix = fold(self.prefix_original);
        if self.head.trim().is_empty() {
            return (String::new(), prefix);
        }
        let whole = format!("{}{}", self.head_original, self.prefix_original);
        (fold(&whole.split_whitespace().collect::<Vec<_>>().join(" ")), prefix)
    }
}

/// A label that completes the typed text, before it is spelled.
struct LabelCandidate {
    tracks: Vec<String>,
    matched: LabelMatch,
    spellings: SpellingCounts,
}

fn add_tracks(to: &mut Vec<String>, tracks: impl IntoIterator<Item = String>) {
    for track in tracks {
        if !to.contains(&track) {
            to.push(track);
        }
    }
}

/// Completions of `q` over every shard (`shards`: this node's replicas). Blocking: reads
/// indexes and buckets, and waits for other nodes within the request deadline.
pub fn suggest(planner: &Planner, shards: &[Arc<Shard>], q: &str, limit: usize) -> Result<Suggestions, ApiError> {
    let Some(typed) = Typed::split(q) else {
        return Ok(Suggestions { completions: vec![], warnings: vec![] });
    };
    let (whole, prefix) = typed.folded();
    let head_original = typed.head_original;
    let words_per_shard = limit.max(WORDS_PER_SHARD_MIN);
    // The shards this node lacks are asked first: their answers travel while this node reads.
    let ask = CompletionsAsk { prefix: prefix.clone(), whole: whole.clone(), limit: words_per_shard as u32, labels: vec![] };
    let pending = planner.start_asking_missing_shards(ask, planner.request_timeout());
    let (mut labels, mut words) = local_candidates(planner, shards, &whole, &prefix, limit, words_per_shard)?;
    let remote = pending.wait();
    for (label, (tracks, spellings)) in remote.labels {
        let Some(matched) = label_completes(&label, &whole, &prefix) else { continue };
        let entry = labels.entry(label).or_insert_with(|| LabelCandidate { tracks: vec![], matched, spellings: SpellingCounts::new() });
        add_tracks(&mut entry.tracks, tracks);
        add_counts(&mut entry.spellings, spellings);
    }
    for (term, (frequency, spellings)) in remote.words {
        let entry = words.entry(term).or_default();
        entry.0 += frequency;
        add_counts(&mut entry.1, spellings);
    }

    let mut completions = Vec::new();
    // Labels first (in label order, as before), spelled as the models wrote them.
    for (label, candidate) in labels.into_iter().take(limit) {
        let mut spellings = candidate.spellings;
        if let Some(remote) = planner.remote_spellings_of(&label) {
            if spellings.is_empty() {
                add_counts(&mut spellings, remote);
            }
        }
        let text = best_spelling(&spellings).unwrap_or_else(|| label.clone());
        let query = match candidate.matched {
            LabelMatch::Whole => text.clone(),
            LabelMatch::Word => format!("{head_original}{text}"),
        };
        completions.push(Completion { text, kind: "label", tracks: candidate.tracks, query, frequency: 0 });
    }
    if !prefix.is_empty() && completions.len() < limit {
        let mut ranked: Vec<(String, u64, SpellingCounts)> = words.into_iter().map(|(term, (n, spellings))| (term, n, spellings)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let wanted = limit - completions.len();
        for (term, frequency, spellings) in ranked.into_iter().take(wanted) {
            let text = best_spelling(&spellings).unwrap_or(term);
            completions.push(Completion { query: format!("{head_original}{text}"), text, kind: "word", tracks: vec![], frequency });
        }
    }
    Ok(Suggestions { completions, warnings: remote.warnings })
}

type LocalCandidates = (BTreeMap<String, LabelCandidate>, HashMap<String, (u64, SpellingCounts)>);

/// This node's part: the labels that complete the text (the first `limit` in label order of the
/// vocabulary it knows, its own and other nodes' as last refreshed), with their spellings here,
/// and its shards' dialogue words.
fn local_candidates(
    planner: &Planner,
    shards: &[Arc<Shard>],
    whole: &str,
    prefix: &str,
    limit: usize,
    words_per_shard: usize,
) -> Result<LocalCandidates, ApiError> {
    let mut labels: BTreeMap<String, LabelCandidate> = BTreeMap::new();
    for (label, tracks) in planner.vocabulary() {
        if labels.len() >= limit {
            break;
        }
        if let Some(matched) = label_completes(&label, whole, prefix) {
            labels.insert(label, LabelCandidate { tracks, matched, spellings: SpellingCounts::new() });
        }
    }
    for shard in shards {
        for (label, candidate) in labels.iter_mut() {
            add_counts(&mut candidate.spellings, vocabulary::label_spellings(shard, &planner.spellings, label)?);
        }
    }
    let mut words: HashMap<String, (u64, SpellingCounts)> = HashMap::new();
    if !prefix.is_empty() && labels.len() < limit {
        for shard in shards {
            for word in vocabulary::dialogue_words(shard, &planner.spellings, prefix, words_per_shard)? {
                let entry = words.entry(word.term).or_default();
                entry.0 += word.frequency;
                *entry.1.entry(word.spelling).or_insert(0) += word.frequency.max(1);
            }
        }
    }
    Ok((labels, words))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn typed_text_splits_into_finished_words_and_the_word_being_typed() {
        let typed = Typed::split("  Coffee Sh").expect("text");
        assert_eq!(typed, Typed { head: "coffee ".into(), prefix: "sh".into(), head_original: "  Coffee ", prefix_original: "Sh" });
        assert_eq!(typed.folded(), ("coffee sh".to_string(), "sh".to_string()));
        let typed = Typed::split("Café  Crè").expect("text");
        assert_eq!(typed.folded(), ("cafe cre".to_string(), "cre".to_string()));
        assert_eq!(Typed::split("Zoë").expect("text").folded(), (String::new(), "zoe".to_string()));
        assert_eq!(Typed::split("Joey ").expect("text").folded(), ("joey".to_string(), String::new()));
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
