//! Query understanding: turns what an editor types ("Joey in the kitchen", "Rachel then Ross within
//! 10 seconds", `s03e07 "we were on a break"`) into a structured parse the search engine can plan:
//! label, phrase and word nodes combined by sequence, co-occurrence and conjunction, plus the
//! filters (series, season, episode, time window) that the text named.
//!
//! The module is pure (no I/O, no engine types) so that it can be tested on its own and reused by
//! the HTTP layer for "did you mean" and by the planner; [`understand`] documents the rules, which
//! are the contract.

use std::collections::{BTreeMap, BTreeSet};

use crate::search::vocabulary::fold;

/// What a query is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Vocabulary<'a> {
    /// Normalized label (lowercase, single spaces) → the tracks it appears on ("character", "scene", ...).
    pub labels: &'a BTreeMap<String, Vec<String>>,
    /// Known series names, spelled as stored: the series filter reports the stored spelling.
    pub series: &'a [String],
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum QueryNode {
    /// A known label; `typed` is what the user wrote (lowercased, as matched), `edits` the edit distance used (0 = exact).
    /// `label` is normalized as [`understand`] returns it; the planner then spells it as the
    /// models wrote it ([`Understood::respell`]) for display.
    Label { label: String, tracks: Vec<String>, typed: String, edits: u32 },
    /// Quoted text: a dialogue phrase.
    Phrase { text: String },
    /// Free words that are not labels, stop words or filters: dialogue words and semantic text.
    Words { text: String },
    /// "A then B within N seconds" / "A followed by B" / "A before B" / "A and then B" / "after A, B" (B after A).
    Sequence { first: Box<QueryNode>, then: Box<QueryNode>, within_ms: u64 },
    /// "A while B" / "A during B" / "A whilst B": both at the same time.
    While { a: Box<QueryNode>, b: Box<QueryNode> },
    /// Several nodes that must all hold ("Joey in the kitchen" = All[Label joey, Label kitchen]).
    All { nodes: Vec<QueryNode> },
}

#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ExtractedFilters {
    pub series: Option<String>,
    pub season: Option<u32>,
    pub episode: Option<u32>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
}

/// Serialized as docs/search.md names the kinds (`label`, `co_occurrence`, ...).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    Label,
    Dialogue,
    Phrase,
    Semantic,
    Sequence,
    CoOccurrence,
    Mixed,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Understood {
    pub kind: QueryKind,
    pub root: Option<QueryNode>,
    pub filters: ExtractedFilters,
    /// Words that took no part in the parse, lowercased, in query order, each once.
    pub ignored_words: Vec<String>,
    /// typed → label, for "did you mean".
    pub corrections: Vec<(String, String)>,
}

impl Understood {
    /// Every label the understanding names (tree and corrections), as it names them.
    pub fn labels(&self) -> BTreeSet<String> {
        fn walk(node: &QueryNode, out: &mut BTreeSet<String>) {
            match node {
                QueryNode::Label { label, .. } => {
                    out.insert(label.clone());
                }
                QueryNode::Phrase { .. } | QueryNode::Words { .. } => {}
                QueryNode::Sequence { first: a, then: b, .. } | QueryNode::While { a, b } => {
                    walk(a, out);
                    walk(b, out);
                }
                QueryNode::All { nodes } => nodes.iter().for_each(|n| walk(n, out)),
            }
        }
        let mut out = BTreeSet::new();
        if let Some(root) = &self.root {
            walk(root, &mut out);
        }
        out.extend(self.corrections.iter().map(|(_, label)| label.clone()));
        out
    }

    /// Replaces each label (tree and corrections) by how it is shown, where `shown` has it: the
    /// models' spelling ("Joey") of the normalized label ("joey"). `typed` stays as matched.
    pub fn respell(&mut self, shown: &std::collections::HashMap<String, String>) {
        fn walk(node: &mut QueryNode, shown: &std::collections::HashMap<String, String>) {
            match node {
                QueryNode::Label { label, .. } => {
                    if let Some(spelled) = shown.get(label.as_str()) {
                        *label = spelled.clone();
                    }
                }
                QueryNode::Phrase { .. } | QueryNode::Words { .. } => {}
                QueryNode::Sequence { first: a, then: b, .. } | QueryNode::While { a, b } => {
                    walk(a, shown);
                    walk(b, shown);
                }
                QueryNode::All { nodes } => nodes.iter_mut().for_each(|n| walk(n, shown)),
            }
        }
        if let Some(root) = self.root.as_mut() {
            walk(root, shown);
        }
        for (_, label) in &mut self.corrections {
            if let Some(spelled) = shown.get(label.as_str()) {
                *label = spelled.clone();
            }
        }
    }
}

/// How far apart the two sides of a sequence may be when the query names no `within`.
pub const DEFAULT_SEQUENCE_WITHIN_MS: u64 = 30_000;

/// Words of the query considered at most: bounds the work per query (fuzzy matching scans the
/// vocabulary per word) whatever is pasted into the search box.
const MAX_WORDS: usize = 64;
/// Longest label, in words, that is looked up.
const MAX_LABEL_WORDS: usize = 4;
/// Longest series name, in words, that is looked up; longer names never match.
const MAX_SERIES_WORDS: usize = 8;
/// Words that filter patterns look at from one position ("between 2 minutes and 4 minutes" is 6).
const FILTER_RUN: usize = MAX_SERIES_WORDS + 1;
/// Shorter words are never fuzzy-matched: too many short words are one edit from a name.
const MIN_FUZZY_CHARS: usize = 4;
/// Times beyond this (about 31 years) are not times: the words stay words.
const MAX_TIME_MS: f64 = 1e12;

/// Words that carry no meaning for search on their own. Kept free of words likely to be names
/// (will, may, mark, ...) because a stop word never matches a single-word label.
// Packed by hand: rustfmt lays lists with long strings out one per line.
#[rustfmt::skip]
const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "anyone", "appear", "appearing", "appears", "are", "as", "at", "be",
    "been", "before", "being", "between", "both", "but", "by", "can", "clip", "clips", "could", "did", "do", "does", "doing", "during",
    "each", "ep", "episode", "episodes", "every", "everyone", "find", "followed", "footage", "for", "from", "get", "gets", "give", "had",
    "has", "have", "having", "he", "he's", "her", "here", "hers", "him", "his", "how", "i", "i'm", "in", "into", "is", "it", "it's", "its",
    "just", "let", "let's", "look", "looking", "me", "moment", "moments", "my", "of", "on", "onto", "or", "other", "our", "please", "said",
    "say", "saying", "says", "scene", "scenes", "search", "season", "seasons", "see", "seen", "series", "she", "she's", "shot", "shots",
    "show", "showing", "shows", "some", "somebody", "someone", "something", "that", "that's", "the", "their", "them", "then", "there",
    "there's", "these", "they", "this", "those", "time", "times", "to", "together", "too", "us", "want", "was", "we", "were", "what",
    "when", "where", "which", "while", "whilst", "who", "whom", "whose", "with", "within", "you", "your",
];

/// Understands a free-text query. Never panics; the rules below are the contract.
///
/// 1. **Phrases.** Quoted spans (`"..."`, `“...”`; any of the three quote characters opens or
///    closes) become [`QueryNode::Phrase`] nodes in query order, with whitespace trimmed and
///    collapsed. An unbalanced quote makes the rest of the query a phrase. A quoted span with no
///    word in it is dropped. Nothing inside quotes is a filter, connective or label.
/// 2. **Filters** are consumed (they appear neither as nodes nor as ignored words):
///    - `season 3`, `s3`, `s03`, `season3`, `series 2`, `season three` → season;
///      `episode 7`, `ep 7`, `e07`, `ep7` → episode; `s03e07`, `S3E7`, `3x07` → both.
///    - A known series name (case-insensitive, possibly several words) → series, unless those
///      words are exactly a label ("Joey" the character beats "Joey" the series). `series X`
///      names series X when X is a known series (so `series 24` is the series "24" when it is
///      known, else season 24); all-digit series names match only after `series`.
///    - Time windows: `in the first 10 minutes` (also `first ...`, `during/within the first ...`,
///      `in the first minute`) → to_ms; `before 5 minutes` → to_ms; `after 5 minutes`,
///      `after 90 seconds`, `after the first 2 minutes` → from_ms; `between 2 and 4 minutes`,
///      `from 90 seconds to 3 minutes` → from_ms and to_ms (swapped if reversed). Amounts are
///      digits, decimals (`1.5`), number words (`ten`, `twenty-five`), `a`/`an`, glued forms
///      (`10s`, `5min`) or clock readings (`1:30`); units are ms, s/sec/secs/second/seconds,
///      m/min/mins/minute/minutes, h/hr/hrs/hour/hours.
///    - The first value of each filter wins; a later, different one is ignored (its words are
///      listed in `ignored_words`).
/// 3. **Connectives** (outside quotes, case-insensitive): `then`, `and then`, `followed by`,
///    `before` (A first), `after` ("B after A" and "after A, B": A first) make a
///    [`QueryNode::Sequence`]; `while`, `whilst`, `during` make a [`QueryNode::While`]. The
///    leading forms "after A, B", "before A, B" (B first) and "while A, B" need the comma.
///    `within N unit` anywhere after a sequence connective sets that connective's window (the
///    nearest one before it; the first one if it comes before all of them), else
///    [`DEFAULT_SEQUENCE_WITHIN_MS`]; a `within` with no sequence to apply to is ignored.
///    Chains are left-associative ("A then B then C" = Sequence(Sequence(A, B), C)) and `while`
///    binds tighter than the sequence connectives. A connective with nothing meaningful on one
///    side ("then" alone, "Rachel then") is an ordinary stop word. Connective words inside a
///    multi-word label ("after party") are part of the label.
/// 4. **Labels**, longest first over up to 4 consecutive words (not across commas, quotes or
///    removed filters): exact on the normalized vocabulary, also after removing a trailing
///    possessive `'s`, plural `s` or `es`, or with hyphens read as spaces ("coffee-shop"), and with
///    accents folded on either side ("zoe" finds "zoë", "zoë" finds "zoe"). A span
///    made only of stop words is never a label. Otherwise fuzzy: one word against one-word labels,
///    or two words against two-word labels (word by word), within [`auto_fuzziness`] edits of
///    what was typed; words shorter than 4 characters, stop words and numbers are never
///    fuzzy-matched (they must be exact within a two-word span). The smallest distance wins, then
///    the alphabetically first label. Fuzzy matches are listed in `corrections`: like Elasticsearch's
///    AUTO, this can turn an ordinary word into a name ("boss" → ross), and the UI can offer it back.
/// 5. **Stop words** (articles, pronouns, "scene", "shot", "show me", "find", "says", "where",
///    "when", "who", ...) go to `ignored_words`; the other leftover words of one side of a
///    connective join, in order and as typed, into one [`QueryNode::Words`] node placed where
///    its first word was.
/// 6. **Shape.** Each side of a connective, and the whole query, with several nodes becomes
///    [`QueryNode::All`] in query order; a single node stays itself; nothing left gives `None`.
///    `kind`: Label if only labels, Phrase if only phrases, Dialogue if only words, Sequence or
///    CoOccurrence for such a root, otherwise (mixed nodes, or no root) Mixed. Semantic is
///    never reported here: whether words are dialogue or semantic is the engine's choice.
/// 7. **Limits.** At most 64 words (phrase words included) are considered; the rest are listed
///    in `ignored_words`. Words are runs of letters, digits, apostrophes and hyphens (and `.`
///    or `:` between digits, for "1.5" and "1:30"), trimmed of apostrophes and hyphens at the
///    ends; matching is on lowercase with typographic apostrophes read as `'`. Phrase and Words
///    keep the user's text; `typed`, `corrections` and `ignored_words` are in matching form.
pub fn understand(q: &str, vocabulary: &Vocabulary) -> Understood {
    let (mut toks, mut ignored) = lex(q);
    let mut filters = ExtractedFilters::default();
    extract_filters(&mut toks, vocabulary, &mut filters, &mut ignored);
    let windows = extract_windows(&mut toks);
    let labels = Labels::new(vocabulary.labels);
    let toks = mark_connectives(toks, &labels);
    let mut parser = Parser { labels: &labels, ignored, corrections: Vec::new(), windows };
    let root = parser.parse(toks, Level::Sequence);
    Understood {
        kind: kind_of(root.as_ref()),
        root,
        filters,
        ignored_words: in_query_order(parser.ignored),
        corrections: parser.corrections,
    }
}

/// Elasticsearch AUTO fuzziness: 0 edits for 1–2 chars, 1 for 3–5, 2 for longer (chars, not bytes).
pub fn auto_fuzziness(word: &str) -> u32 {
    match word.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    }
}

/// Optimal-string-alignment Damerau–Levenshtein distance with an early exit above `max`; returns None when above max.
///
/// Counts chars, not bytes. Adjacent transpositions cost 1 ("jeoy" → "joey"), but a transposed pair
/// is not edited again (the OSA restriction), as in Lucene's fuzzy queries. Words shorter than 32
/// chars are compared without allocating: the search calls this per dialogue token when it
/// highlights fuzzy matches.
pub fn edit_distance_within(a: &str, b: &str, max: u32) -> Option<u32> {
    // The length difference alone is a lower bound: checked before allocating anything.
    if a.chars().count().abs_diff(b.chars().count()) > usize::try_from(max).unwrap_or(usize::MAX) {
        return None;
    }
    const STACK_CHARS: usize = 32;
    let (mut a_chars, mut b_chars) = (['\0'; STACK_CHARS], ['\0'; STACK_CHARS]);
    let mut a_len = 0;
    for (slot, c) in a_chars.iter_mut().zip(a.chars()) {
        *slot = c;
        a_len += 1;
    }
    let mut b_len = 0;
    for (slot, c) in b_chars.iter_mut().zip(b.chars()) {
        *slot = c;
        b_len += 1;
    }
    if a_len < STACK_CHARS && b_len < STACK_CHARS {
        // Both fit (a full buffer may mean a longer word): rows on the stack too.
        let mut rows = [0usize; 3 * STACK_CHARS];
        return osa_within(&a_chars[..a_len], &b_chars[..b_len], max, &mut rows);
    }
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![0usize; 3 * (b.len() + 1)];
    osa_within(&a, &b, max, &mut rows)
}

/// [`edit_distance_within`] on chars, with its three rows in `rows` (at least `3 * (b.len() + 1)`
/// long) so that a caller comparing one word with a whole vocabulary allocates once.
fn osa_within(a: &[char], b: &[char], max: u32, rows: &mut [usize]) -> Option<u32> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let width = b.len() + 1;
    if a.len().abs_diff(b.len()) > max || rows.len() < 3 * width {
        return None;
    }
    // Offsets of the rows for i - 2, i - 1 and i, rotated after each row.
    let (mut two_up, mut up, mut current) = (0, width, 2 * width);
    for (j, cell) in rows[up..up + width].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        rows[current] = i;
        let mut row_min = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[up + j] + 1).min(rows[current + j - 1] + 1).min(rows[up + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[two_up + j - 2] + 1);
            }
            rows[current + j] = d;
            row_min = row_min.min(d);
        }
        // No later cell can be below this row's minimum (a transposition from two rows up costs at
        // least as much as the cell left of it in this row), so the distance is already above max.
        if row_min > max {
            return None;
        }
        (two_up, up, current) = (up, current, two_up);
    }
    let distance = rows[up + b.len()];
    if distance <= max {
        u32::try_from(distance).ok()
    } else {
        None
    }
}

/// Buffers reused across the comparisons of one fuzzy lookup: allocating per label pair was most
/// of the time of a query over a large vocabulary.
#[derive(Default)]
struct Scratch {
    label: Vec<char>,
    rows: Vec<usize>,
}

impl Scratch {
    /// `typed` is given as chars, converted once per lookup rather than once per label.
    fn distance(&mut self, typed: &[char], label: &str, max: u32) -> Option<u32> {
        // A char is 1 to 4 bytes: labels far shorter or longer in bytes are skipped before being
        // decoded, which keeps a pasted very long word cheap.
        let slack = usize::try_from(max).unwrap_or(usize::MAX);
        if label.len().saturating_add(slack) < typed.len() || label.len() / 4 > typed.len().saturating_add(slack) {
            return None;
        }
        self.label.clear();
        self.label.extend(label.chars());
        self.rows.resize(3 * (self.label.len() + 1), 0);
        osa_within(typed, &self.label, max, &mut self.rows)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone)]
struct Word {
    /// As typed, apostrophes and hyphens trimmed from the ends.
    text: String,
    /// Lowercase, typographic apostrophes as `'`: what matching compares.
    lower: String,
    /// Order in the query: nodes and ignored words are put back in the user's order by it.
    pos: usize,
    /// A connective demoted because one of its sides was empty: always a stop word, never part
    /// of a label.
    demoted: bool,
}

impl Word {
    fn new(text: String, pos: usize) -> Word {
        Word { lower: normalize(&text), text, pos, demoted: false }
    }
}

#[derive(Debug, Clone)]
enum Tok {
    Word(Word),
    Phrase {
        text: String,
        pos: usize,
    },
    /// `,` or `;`: splits "after A, B" and stops label spans.
    Comma,
    /// Where a filter or a `within` window was taken out: label spans must not join across it.
    Gap,
    Conn(Conn),
}

#[derive(Debug, Clone)]
struct Conn {
    kind: ConnKind,
    words: Vec<Word>,
    pos: usize,
    within_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnKind {
    /// then, and then, followed by.
    Then,
    Before,
    After,
    /// while, whilst, during.
    While,
}

/// The two precedence levels: a query is a sequence of parts, each part a co-occurrence of sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Sequence,
    While,
}

fn in_level(kind: ConnKind, level: Level) -> bool {
    (kind == ConnKind::While) == (level == Level::While)
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '\u{201C}' | '\u{201D}')
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2018}' | '\u{2019}')
}

fn normalize(text: &str) -> String {
    text.to_lowercase().chars().map(|c| if is_apostrophe(c) { '\'' } else { c }).collect()
}

fn is_stop_word(lower: &str) -> bool {
    STOP_WORDS.contains(&lower)
}

fn is_stop(word: &Word) -> bool {
    word.demoted || is_stop_word(&word.lower)
}

/// (quoted, text) spans in order; the text after an unbalanced quote is quoted.
fn quote_spans(q: &str) -> Vec<(bool, &str)> {
    let mut spans = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in q.char_indices() {
        if is_quote(c) {
            spans.push((quoted, &q[start..i]));
            quoted = !quoted;
            start = i + c.len_utf8();
        }
    }
    spans.push((quoted, &q[start..]));
    spans
}

enum Plain {
    Word(String),
    Comma,
}

/// Splits unquoted text into words and commas.
fn plain_tokens(text: &str) -> Vec<Plain> {
    fn flush(word: &mut String, out: &mut Vec<Plain>) {
        let trimmed = word.trim_matches(|c: char| is_apostrophe(c) || c == '-');
        if !trimmed.is_empty() {
            out.push(Plain::Word(trimmed.to_string()));
        }
        word.clear();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        // "1.5" and "1:30" stay one word so that amounts and clock readings parse.
        let numeric_joint =
            matches!(c, '.' | ':') && i > 0 && chars[i - 1].is_ascii_digit() && chars.get(i + 1).is_some_and(|next| next.is_ascii_digit());
        if c.is_alphanumeric() || is_apostrophe(c) || c == '-' || numeric_joint {
            word.push(c);
            continue;
        }
        flush(&mut word, &mut out);
        if matches!(c, ',' | ';') {
            out.push(Plain::Comma);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Tokens of the query, and the words beyond the word budget (as ignored words).
fn lex(q: &str) -> (Vec<Tok>, Vec<(usize, String)>) {
    let mut toks = Vec::new();
    let mut ignored = Vec::new();
    let mut budget = MAX_WORDS;
    let mut pos = 0;
    for (quoted, part) in quote_spans(q) {
        if quoted {
            let words: Vec<&str> = part.split_whitespace().collect();
            let kept = words.len().min(budget);
            budget -= kept;
            // A span of punctuation only has nothing to match in dialogue.
            if words[..kept].iter().any(|w| w.chars().any(char::is_alphanumeric)) {
                toks.push(Tok::Phrase { text: words[..kept].join(" "), pos });
            }
            pos += 1;
            for word in &words[kept..] {
                ignored.push((pos, normalize(word)));
                pos += 1;
            }
            continue;
        }
        for token in plain_tokens(part) {
            match token {
                // Repeated commas, and commas past the word budget, separate nothing more.
                Plain::Comma if budget > 0 && !matches!(toks.last(), Some(Tok::Comma)) => toks.push(Tok::Comma),
                Plain::Comma => {}
                Plain::Word(text) if budget > 0 => {
                    budget -= 1;
                    toks.push(Tok::Word(Word::new(text, pos)));
                    pos += 1;
                }
                Plain::Word(text) => {
                    ignored.push((pos, normalize(&text)));
                    pos += 1;
                }
            }
        }
    }
    (toks, ignored)
}

/// The usable words from `start` on, up to `max`, stopping at anything that is not one.
fn word_run(toks: &[Tok], start: usize, max: usize) -> Vec<&Word> {
    toks.iter()
        .skip(start)
        .take(max)
        .map_while(|t| match t {
            Tok::Word(w) if !w.demoted => Some(w),
            _ => None,
        })
        .collect()
}

fn lowers<'w>(words: &[&'w Word]) -> Vec<&'w str> {
    words.iter().map(|w| w.lower.as_str()).collect()
}

fn has_content(toks: &[Tok]) -> bool {
    toks.iter().any(|t| match t {
        Tok::Phrase { .. } => true,
        Tok::Word(w) => !is_stop(w),
        _ => false,
    })
}

// ---------------------------------------------------------------------------------------------
// Filters

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Series(String),
    Season(u32),
    Episode(u32),
    SeasonEpisode(u32, u32),
    From(u64),
    To(u64),
    Between(u64, u64),
}

fn extract_filters(toks: &mut [Tok], vocabulary: &Vocabulary, filters: &mut ExtractedFilters, ignored: &mut Vec<(usize, String)>) {
    let series: Vec<(&String, Vec<String>)> = vocabulary
        .series
        .iter()
        .map(|name| {
            let words = plain_tokens(name)
                .into_iter()
                .filter_map(|t| match t {
                    Plain::Word(w) => Some(normalize(&w)),
                    Plain::Comma => None,
                })
                .collect::<Vec<_>>();
            (name, words)
        })
        .filter(|(_, words)| !words.is_empty() && words.len() <= MAX_SERIES_WORDS)
        .collect();
    let mut i = 0;
    while i < toks.len() {
        let found = {
            let run = word_run(toks, i, FILTER_RUN);
            if run.is_empty() {
                None
            } else {
                let found = match_filter(&lowers(&run), &series, vocabulary.labels);
                found.map(|(n, filter)| (n, filter, run[..n].iter().map(|w| (w.pos, w.lower.clone())).collect::<Vec<_>>()))
            }
        };
        let Some((n, filter, words)) = found else {
            i += 1;
            continue;
        };
        if !apply_filter(filters, filter) {
            ignored.extend(words);
        }
        for tok in &mut toks[i..i + n] {
            *tok = Tok::Gap;
        }
        i += n;
    }
}

/// Sets the filter unless a different value is already set (the first one wins); false if not set.
fn apply_filter(filters: &mut ExtractedFilters, filter: Filter) -> bool {
    fn free<T: PartialEq>(slot: &Option<T>, value: &T) -> bool {
        slot.is_none() || slot.as_ref() == Some(value)
    }
    let f = filters;
    match filter {
        Filter::Series(name) if free(&f.series, &name) => f.series = Some(name),
        Filter::Season(s) if free(&f.season, &s) => f.season = Some(s),
        Filter::Episode(e) if free(&f.episode, &e) => f.episode = Some(e),
        Filter::SeasonEpisode(s, e) if free(&f.season, &s) && free(&f.episode, &e) => {
            f.season = Some(s);
            f.episode = Some(e);
        }
        Filter::From(ms) if free(&f.from_ms, &ms) => f.from_ms = Some(ms),
        Filter::To(ms) if free(&f.to_ms, &ms) => f.to_ms = Some(ms),
        Filter::Between(from, to) if free(&f.from_ms, &from) && free(&f.to_ms, &to) => {
            f.from_ms = Some(from);
            f.to_ms = Some(to);
        }
        _ => return false,
    }
    true
}

/// The filter that starts at `run[0]`, with the number of words it takes.
fn match_filter(run: &[&str], series: &[(&String, Vec<String>)], labels: &BTreeMap<String, Vec<String>>) -> Option<(usize, Filter)> {
    if run[0] == "series" {
        if let Some((n, name)) = match_series(&run[1..], series, true) {
            return Some((n + 1, Filter::Series(name.clone())));
        }
    }
    if let Some((n, name)) = match_series(run, series, false) {
        if !labels.contains_key(&run[..n].join(" ")) {
            return Some((n, Filter::Series(name.clone())));
        }
    }
    season_episode(run).or_else(|| time_window(run))
}

/// The longest known series name at the start of `run`. All-digit names ("24") only when asked:
/// a bare number is far more often a number.
fn match_series<'s>(run: &[&str], series: &[(&'s String, Vec<String>)], numeric: bool) -> Option<(usize, &'s String)> {
    series
        .iter()
        .filter(|(_, words)| words.len() <= run.len() && words.iter().zip(run).all(|(a, b)| a == b))
        .filter(|(_, words)| numeric || !words.iter().all(|w| w.chars().all(|c| c.is_ascii_digit())))
        .max_by_key(|(_, words)| words.len())
        .map(|(name, words)| (words.len(), *name))
}

fn season_episode(run: &[&str]) -> Option<(usize, Filter)> {
    match run[0] {
        // "series 2" is the British "season 2"; a series named so was tried first.
        "season" | "series" => count(run.get(1)?).map(|n| (2, Filter::Season(n))),
        "episode" | "ep" => count(run.get(1)?).map(|n| (2, Filter::Episode(n))),
        word => glued_season_episode(word).map(|f| (1, f)),
    }
}

/// s3, s03, season3, s03e07, s3ep7, e07, ep7, episode7, 3x07.
fn glued_season_episode(word: &str) -> Option<Filter> {
    if let Some(rest) = word.strip_prefix("season").or_else(|| word.strip_prefix('s')) {
        let (season, tail) = leading_digits(rest)?;
        if tail.is_empty() {
            return Some(Filter::Season(season));
        }
        let episode = tail.strip_prefix("episode").or_else(|| tail.strip_prefix("ep")).or_else(|| tail.strip_prefix('e'))?;
        return digits(episode).map(|e| Filter::SeasonEpisode(season, e));
    }
    if let Some(rest) = word.strip_prefix("episode").or_else(|| word.strip_prefix("ep")).or_else(|| word.strip_prefix('e')) {
        return digits(rest).map(Filter::Episode);
    }
    let (season, tail) = leading_digits(word)?;
    digits(tail.strip_prefix('x')?).map(|e| Filter::SeasonEpisode(season, e))
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn leading_digits(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((digits(&s[..end])?, &s[end..]))
}

// Packed by hand: rustfmt lays lists with long strings out one per line.
#[rustfmt::skip]
const NUMBER_WORDS: [&str; 20] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen",
    "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
];
const TENS_WORDS: [&str; 8] = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

/// "seven", "twenty", "twenty-five".
fn number_word(word: &str) -> Option<u32> {
    let position = |list: &[&str], w: &str| list.iter().position(|x| *x == w).and_then(|i| u32::try_from(i).ok());
    if let Some(n) = position(&NUMBER_WORDS, word) {
        return Some(n);
    }
    if let Some(t) = position(&TENS_WORDS, word) {
        return Some(20 + 10 * t);
    }
    let (tens, unit) = word.split_once('-')?;
    let unit = position(&NUMBER_WORDS, unit).filter(|u| (1..=9).contains(u))?;
    Some(20 + 10 * position(&TENS_WORDS, tens)? + unit)
}

/// A whole count: season and episode numbers.
fn count(word: &str) -> Option<u32> {
    digits(word).or_else(|| number_word(word))
}

/// A count or a decimal amount.
fn number(word: &str) -> Option<f64> {
    // Guarding the characters keeps "inf", "nan" and "1e9" words.
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return word.parse().ok();
    }
    number_word(word).map(f64::from)
}

fn unit_ms(word: &str) -> Option<u64> {
    match word {
        "ms" | "msec" | "millisecond" | "milliseconds" => Some(1),
        "s" | "sec" | "secs" | "second" | "seconds" => Some(1_000),
        "m" | "min" | "mins" | "minute" | "minutes" => Some(60_000),
        "h" | "hr" | "hrs" | "hour" | "hours" => Some(3_600_000),
        _ => None,
    }
}

/// "1:30" → 90 s, "1:02:03" → 3723 s.
fn clock_seconds(word: &str) -> Option<u64> {
    let parts: Vec<&str> = word.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let mut seconds: u64 = 0;
    for (i, part) in parts.iter().enumerate() {
        let value = u64::from(digits(part).filter(|_| part.len() <= 6)?);
        if i > 0 && value >= 60 {
            return None;
        }
        seconds = seconds * 60 + value;
    }
    Some(seconds)
}

struct Amount {
    value: f64,
    unit_ms: Option<u64>,
}

/// A number with its unit if one follows: "10 seconds", "10s", "1.5 min", "ten", "a minute",
/// "1:30"; a unit alone ("minute") counts as one when `unit_alone` ("in the first minute").
fn amount(words: &[&str], unit_alone: bool) -> Option<(Amount, usize)> {
    let first = *words.first()?;
    let next_unit = words.get(1).and_then(|w| unit_ms(w));
    if let Some(seconds) = clock_seconds(first) {
        // Precision loss is impossible: at most 6 digits per part.
        return Some((Amount { value: seconds as f64, unit_ms: Some(1_000) }, if next_unit.is_some() { 2 } else { 1 }));
    }
    let split = first.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(first.len());
    if split > 0 && split < first.len() {
        let unit = unit_ms(&first[split..])?;
        return Some((Amount { value: number(&first[..split])?, unit_ms: Some(unit) }, 1));
    }
    let value = match first {
        "a" | "an" if next_unit.is_some() => Some(1.0),
        _ => number(first),
    };
    if let Some(value) = value {
        return Some((Amount { value, unit_ms: next_unit }, if next_unit.is_some() { 2 } else { 1 }));
    }
    if unit_alone {
        return unit_ms(first).map(|unit| (Amount { value: 1.0, unit_ms: Some(unit) }, 1));
    }
    None
}

fn to_ms(value: f64, unit_ms: u64) -> Option<u64> {
    let ms = (value * unit_ms as f64).round();
    // In range by the check, so the cast neither saturates nor truncates.
    (ms.is_finite() && (0.0..=MAX_TIME_MS).contains(&ms)).then_some(ms as u64)
}

/// An amount that has a unit, in milliseconds, with the number of words it takes.
fn duration(words: &[&str], unit_alone: bool) -> Option<(u64, usize)> {
    let (amount, n) = amount(words, unit_alone)?;
    Some((to_ms(amount.value, amount.unit_ms?)?, n))
}

fn time_window(run: &[&str]) -> Option<(usize, Filter)> {
    // [in|during|within] [the] first N unit
    let mut k = usize::from(matches!(run[0], "in" | "during" | "within"));
    if run.get(k) == Some(&"the") {
        k += 1;
    }
    if run.get(k) == Some(&"first") {
        if let Some((ms, n)) = duration(&run[k + 1..], true) {
            return Some((k + 1 + n, Filter::To(ms)));
        }
    }
    match run[0] {
        "after" => {
            let skip = if run.get(1..3) == Some(&["the", "first"][..]) { 3 } else { 1 };
            let (ms, n) = duration(&run[skip..], skip == 3)?;
            Some((skip + n, Filter::From(ms)))
        }
        "before" => {
            let (ms, n) = duration(&run[1..], false)?;
            Some((1 + n, Filter::To(ms)))
        }
        "between" | "from" => {
            let separator = if run[0] == "between" { "and" } else { "to" };
            let (start, n1) = amount(&run[1..], false)?;
            if run.get(1 + n1) != Some(&separator) {
                return None;
            }
            let (end, n2) = amount(&run[2 + n1..], false)?;
            // "between 2 and 4 minutes": the first amount borrows the second's unit.
            let unit = end.unit_ms?;
            let a = to_ms(start.value, start.unit_ms.unwrap_or(unit))?;
            let b = to_ms(end.value, unit)?;
            Some((2 + n1 + n2, Filter::Between(a.min(b), a.max(b))))
        }
        _ => None,
    }
}

/// A `within N unit` window, taken out of the tokens until the sequence connectives are known.
struct Window {
    pos: usize,
    ms: u64,
    words: Vec<(usize, String)>,
}

fn extract_windows(toks: &mut [Tok]) -> Vec<Window> {
    let mut windows = Vec::new();
    for i in 0..toks.len() {
        let found = match &toks[i] {
            Tok::Word(w) if w.lower == "within" => {
                let run = word_run(toks, i + 1, 3);
                duration(&lowers(&run), false).map(|(ms, n)| {
                    let mut words = vec![(w.pos, w.lower.clone())];
                    words.extend(run[..n].iter().map(|x| (x.pos, x.lower.clone())));
                    (n, Window { pos: w.pos, ms, words })
                })
            }
            _ => None,
        };
        if let Some((n, window)) = found {
            for tok in &mut toks[i..=i + n] {
                *tok = Tok::Gap;
            }
            windows.push(window);
        }
    }
    windows
}

// ---------------------------------------------------------------------------------------------
// Connectives

/// Marks connective words, except inside an exact multi-word label ("after party").
fn mark_connectives(toks: Vec<Tok>, labels: &Labels) -> Vec<Tok> {
    let protected = protected_words(&toks, labels);
    let mut out = Vec::with_capacity(toks.len());
    let mut iter = toks.into_iter().enumerate().peekable();
    while let Some((i, tok)) = iter.next() {
        let Tok::Word(word) = tok else {
            out.push(tok);
            continue;
        };
        if protected[i] {
            out.push(Tok::Word(word));
            continue;
        }
        let pair = match iter.peek() {
            Some((j, Tok::Word(next))) if !protected[*j] => {
                matches!((word.lower.as_str(), next.lower.as_str()), ("and", "then") | ("followed", "by"))
            }
            _ => false,
        };
        if pair {
            if let Some((_, Tok::Word(second))) = iter.next() {
                out.push(Tok::Conn(Conn { kind: ConnKind::Then, pos: word.pos, words: vec![word, second], within_ms: None }));
            }
            continue;
        }
        let kind = match word.lower.as_str() {
            "then" => ConnKind::Then,
            "before" => ConnKind::Before,
            "after" => ConnKind::After,
            "while" | "whilst" | "during" => ConnKind::While,
            _ => {
                out.push(Tok::Word(word));
                continue;
            }
        };
        out.push(Tok::Conn(Conn { kind, pos: word.pos, words: vec![word], within_ms: None }));
    }
    out
}

fn protected_words(toks: &[Tok], labels: &Labels) -> Vec<bool> {
    let mut protected = vec![false; toks.len()];
    let mut i = 0;
    while i < toks.len() {
        let run = word_run(toks, i, MAX_LABEL_WORDS);
        let n = (2..=run.len()).rev().find(|&n| exact_label(&run[..n], labels).is_some()).unwrap_or(1);
        if n > 1 {
            protected[i..i + n].fill(true);
        }
        i += n;
    }
    protected
}

/// Demotes connectives of `level` that have nothing meaningful on one side, until all are valid.
/// The first one may have an empty left side when it leads ("after A, B") and its right side
/// splits at a comma.
fn validate(mut toks: Vec<Tok>, level: Level) -> Vec<Tok> {
    loop {
        let conns: Vec<usize> =
            toks.iter().enumerate().filter(|(_, t)| matches!(t, Tok::Conn(c) if in_level(c.kind, level))).map(|(i, _)| i).collect();
        let mut invalid = None;
        for (k, &at) in conns.iter().enumerate() {
            let start = if k == 0 { 0 } else { conns[k - 1] + 1 };
            let end = conns.get(k + 1).copied().unwrap_or(toks.len());
            let right = &toks[at + 1..end];
            let leads = k == 0 && matches!(&toks[at], Tok::Conn(c) if c.kind != ConnKind::Then) && comma_split(right).is_some();
            if !(has_content(&toks[start..at]) || leads) || !has_content(right) {
                invalid = Some(at);
                break;
            }
        }
        let Some(at) = invalid else {
            return toks;
        };
        if let Tok::Conn(conn) = toks.remove(at) {
            let words = conn.words.into_iter().map(|mut w| {
                w.demoted = true;
                Tok::Word(w)
            });
            toks.splice(at..at, words);
        }
    }
}

/// The first comma with something meaningful on both sides: the first one between the first and
/// the last meaningful token (one pass each way, as this runs for every leading connective).
fn comma_split(toks: &[Tok]) -> Option<usize> {
    let first = toks.iter().position(|t| has_content(std::slice::from_ref(t)))?;
    let last = toks.iter().rposition(|t| has_content(std::slice::from_ref(t)))?;
    toks[first..last].iter().position(|t| matches!(t, Tok::Comma)).map(|i| first + i)
}

fn split_at_comma(mut toks: Vec<Tok>) -> (Vec<Tok>, Vec<Tok>) {
    match comma_split(&toks) {
        Some(i) => {
            let after = toks.split_off(i + 1);
            toks.truncate(i);
            (toks, after)
        }
        None => (toks, Vec::new()),
    }
}

/// Segments between the connectives of `level` (one more than the connectives).
fn split(toks: Vec<Tok>, level: Level) -> (Vec<Vec<Tok>>, Vec<Conn>) {
    let mut segments = Vec::new();
    let mut conns = Vec::new();
    let mut current = Vec::new();
    for tok in toks {
        match tok {
            Tok::Conn(conn) if in_level(conn.kind, level) => {
                segments.push(std::mem::take(&mut current));
                conns.push(conn);
            }
            other => current.push(other),
        }
    }
    segments.push(current);
    (segments, conns)
}

fn sequence(first: Option<QueryNode>, then: Option<QueryNode>, within_ms: u64) -> Option<QueryNode> {
    match (first, then) {
        (Some(first), Some(then)) => Some(QueryNode::Sequence { first: Box::new(first), then: Box::new(then), within_ms }),
        (first, then) => first.or(then),
    }
}

fn together(a: Option<QueryNode>, b: Option<QueryNode>) -> Option<QueryNode> {
    match (a, b) {
        (Some(a), Some(b)) => Some(QueryNode::While { a: Box::new(a), b: Box::new(b) }),
        (a, b) => a.or(b),
    }
}

/// "acc CONN next".
fn infix(conn: &Conn, acc: Option<QueryNode>, next: Option<QueryNode>) -> Option<QueryNode> {
    let within = conn.within_ms.unwrap_or(DEFAULT_SEQUENCE_WITHIN_MS);
    match conn.kind {
        ConnKind::Then | ConnKind::Before => sequence(acc, next, within),
        ConnKind::After => sequence(next, acc, within),
        ConnKind::While => together(acc, next),
    }
}

/// "CONN a, b".
fn leading(conn: &Conn, a: Option<QueryNode>, b: Option<QueryNode>) -> Option<QueryNode> {
    let within = conn.within_ms.unwrap_or(DEFAULT_SEQUENCE_WITHIN_MS);
    match conn.kind {
        ConnKind::Then | ConnKind::After => sequence(a, b, within),
        ConnKind::Before => sequence(b, a, within),
        ConnKind::While => together(a, b),
    }
}

// ---------------------------------------------------------------------------------------------
// Labels and nodes

struct LabelMatch<'v> {
    label: &'v String,
    tracks: &'v Vec<String>,
    words: usize,
    edits: u32,
}

/// The label vocabulary with an accent-folded index, so "zoe" finds the label "zoë" and "creme
/// brulee" finds "crème brûlée" exactly, as the dialogue index and suggest fold them.
struct Labels<'v> {
    exact: &'v BTreeMap<String, Vec<String>>,
    /// Folded form → label, for the labels whose folded form differs (those not plain ASCII).
    folded: BTreeMap<String, &'v String>,
}

impl<'v> Labels<'v> {
    fn new(exact: &'v BTreeMap<String, Vec<String>>) -> Labels<'v> {
        let folded = exact.keys().filter(|label| !label.is_ascii()).map(|label| (fold(label), label)).collect();
        Labels { exact, folded }
    }

    /// The label spelled `candidate`, or, failing that, the one it folds to (either side may
    /// carry the accents).
    fn get(&self, candidate: &str) -> Option<(&'v String, &'v Vec<String>)> {
        if let Some(found) = self.exact.get_key_value(candidate) {
            return Some(found);
        }
        let folded = fold(candidate);
        if let Some(found) = self.exact.get_key_value(&folded) {
            return Some(found);
        }
        let label = *self.folded.get(&folded)?;
        self.exact.get_key_value(label)
    }
}

/// The exact label for these words, also without a possessive, a plural ending, or hyphens,
/// and with accents folded on both sides.
fn exact_label<'v>(words: &[&Word], labels: &Labels<'v>) -> Option<(&'v String, &'v Vec<String>)> {
    if words.iter().all(|w| is_stop_word(&w.lower)) {
        return None;
    }
    let joined = lowers(words).join(" ");
    let spaced = joined.replace('-', " ");
    for base in [joined.as_str(), spaced.as_str()] {
        // Stripped forms must keep two chars: "us" is not the plural of a label "u".
        let stripped = [base.strip_suffix("'s"), base.strip_suffix('s'), base.strip_suffix("es")];
        let candidates = std::iter::once(base).chain(stripped.into_iter().flatten().filter(|s| s.chars().count() >= 2));
        for candidate in candidates {
            if let Some(found) = labels.get(candidate) {
                return Some(found);
            }
        }
    }
    None
}

/// Whether a typed word may be fuzzy-matched at all.
fn fuzzy_candidate(lower: &str) -> bool {
    lower.chars().count() >= MIN_FUZZY_CHARS && !is_stop_word(lower) && lower.chars().any(char::is_alphabetic)
}

/// Better = fewer edits, then alphabetically first.
fn better(candidate: (u32, &String), best: Option<(u32, &String)>) -> bool {
    match best {
        Some(best) => candidate < best,
        None => true,
    }
}

fn fuzzy_single<'v>(word: &Word, labels: &'v BTreeMap<String, Vec<String>>) -> Option<LabelMatch<'v>> {
    if is_stop_word(&word.lower) {
        return None;
    }
    let mut best: Option<(u32, &String, &Vec<String>)> = None;
    let mut scratch = Scratch::default();
    for typed in std::iter::once(word.lower.as_str()).chain(word.lower.strip_suffix("'s")) {
        if !fuzzy_candidate(typed) {
            continue;
        }
        let max = auto_fuzziness(typed);
        let chars: Vec<char> = typed.chars().collect();
        for (label, tracks) in labels {
            // A typo rarely hits the first letter, and requiring it keeps ordinary words from
            // becoming names ("boss" is not "ross").
            if label.contains(' ') || label.chars().next() != chars.first().copied() {
                continue;
            }
            if let Some(d) = scratch.distance(&chars, label, max) {
                if better((d, label), best.map(|(d, l, _)| (d, l))) {
                    best = Some((d, label, tracks));
                }
            }
        }
    }
    best.map(|(edits, label, tracks)| LabelMatch { label, tracks, words: 1, edits })
}

/// A typed word prepared for comparison with label words: exact only when it may not be fuzzy.
struct TypedWord<'w> {
    lower: &'w str,
    /// Chars and allowed edits; None when the word must match exactly.
    fuzzy: Option<(Vec<char>, u32)>,
}

impl<'w> TypedWord<'w> {
    fn new(lower: &'w str) -> TypedWord<'w> {
        let fuzzy = fuzzy_candidate(lower).then(|| (lower.chars().collect(), auto_fuzziness(lower)));
        TypedWord { lower, fuzzy }
    }

    fn distance(&self, label_word: &str, scratch: &mut Scratch) -> Option<u32> {
        if self.lower == label_word {
            return Some(0);
        }
        let (chars, max) = self.fuzzy.as_ref()?;
        scratch.distance(chars, label_word, *max)
    }
}

fn fuzzy_pair<'v>(a: &Word, b: &Word, labels: &'v BTreeMap<String, Vec<String>>) -> Option<LabelMatch<'v>> {
    if is_stop_word(&a.lower) || is_stop_word(&b.lower) {
        return None;
    }
    let (typed_a, typed_b) = (TypedWord::new(&a.lower), TypedWord::new(&b.lower));
    // The span as typed has one space between the words.
    let span_max = auto_fuzziness(&[a.lower.as_str(), b.lower.as_str()].join(" "));
    let mut best: Option<(u32, &String, &Vec<String>)> = None;
    let mut scratch = Scratch::default();
    for (label, tracks) in labels {
        let Some((first, second)) = label.split_once(' ') else {
            continue;
        };
        if second.contains(' ') {
            continue;
        }
        if first.chars().next() != a.lower.chars().next() {
            continue;
        }
        let Some(d1) = typed_a.distance(first, &mut scratch) else {
            continue;
        };
        let Some(d2) = typed_b.distance(second, &mut scratch) else {
            continue;
        };
        let d = d1 + d2;
        if d > 0 && d <= span_max && better((d, label), best.map(|(d, l, _)| (d, l))) {
            best = Some((d, label, tracks));
        }
    }
    best.map(|(edits, label, tracks)| LabelMatch { label, tracks, words: 2, edits })
}

/// The label that starts at `run[0]`: exact longest first, else fuzzy (two words, then one).
fn match_label<'v>(run: &[&Word], labels: &Labels<'v>) -> Option<LabelMatch<'v>> {
    for n in (1..=run.len().min(MAX_LABEL_WORDS)).rev() {
        if let Some((label, tracks)) = exact_label(&run[..n], labels) {
            return Some(LabelMatch { label, tracks, words: n, edits: 0 });
        }
    }
    if let [a, b, ..] = run {
        if let Some(found) = fuzzy_pair(a, b, labels.exact) {
            return Some(found);
        }
    }
    fuzzy_single(run.first()?, labels.exact)
}

struct Parser<'l, 'v> {
    labels: &'l Labels<'v>,
    ignored: Vec<(usize, String)>,
    corrections: Vec<(String, String)>,
    windows: Vec<Window>,
}

impl Parser<'_, '_> {
    fn parse(&mut self, toks: Vec<Tok>, level: Level) -> Option<QueryNode> {
        let mut toks = validate(toks, level);
        if level == Level::Sequence {
            self.assign_windows(&mut toks);
        }
        let (segments, conns) = split(toks, level);
        let mut segments = segments.into_iter();
        let mut conns = conns.into_iter();
        let mut acc = match segments.next() {
            Some(first) => self.parse_part(first, level),
            None => None,
        };
        if acc.is_none() {
            // Nothing before the first connective: validation kept it only as a leading
            // connective whose right side splits at a comma ("after A, B").
            if let (Some(conn), Some(segment)) = (conns.next(), segments.next()) {
                let (a, b) = split_at_comma(segment);
                let a = self.parse_part(a, level);
                let b = self.parse_part(b, level);
                acc = leading(&conn, a, b);
            }
        }
        for (conn, segment) in conns.zip(segments) {
            let next = self.parse_part(segment, level);
            acc = infix(&conn, acc, next);
        }
        acc
    }

    fn parse_part(&mut self, toks: Vec<Tok>, level: Level) -> Option<QueryNode> {
        match level {
            Level::Sequence => self.parse(toks, Level::While),
            Level::While => self.build(toks),
        }
    }

    /// Gives each `within` window to the nearest sequence connective before it (the first one if
    /// none is before it); windows with no connective, or a second one for the same, are ignored.
    fn assign_windows(&mut self, toks: &mut [Tok]) {
        let conns: Vec<usize> = toks
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t, Tok::Conn(c) if in_level(c.kind, Level::Sequence)))
            .map(|(i, _)| i)
            .collect();
        for window in std::mem::take(&mut self.windows) {
            let before = conns.iter().rev().find(|&&i| matches!(&toks[i], Tok::Conn(c) if c.pos < window.pos));
            let target = before.or(conns.first()).copied();
            let conn = target.and_then(|i| match &mut toks[i] {
                Tok::Conn(conn) if conn.within_ms.is_none() => Some(conn),
                _ => None,
            });
            match conn {
                Some(conn) => conn.within_ms = Some(window.ms),
                None => self.ignored.extend(window.words),
            }
        }
    }

    /// One side of a connective → its node: labels, phrases, and one Words node of the rest.
    fn build(&mut self, toks: Vec<Tok>) -> Option<QueryNode> {
        let mut nodes: Vec<(usize, QueryNode)> = Vec::new();
        let mut free: Vec<(usize, &str)> = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            match &toks[i] {
                Tok::Phrase { text, pos } => nodes.push((*pos, QueryNode::Phrase { text: text.clone() })),
                Tok::Comma | Tok::Gap => {}
                // Validation leaves none here; should one stay, its words are ignored rather than lost.
                Tok::Conn(conn) => self.ignored.extend(conn.words.iter().map(|w| (w.pos, w.lower.clone()))),
                Tok::Word(word) => {
                    let run = word_run(&toks, i, MAX_LABEL_WORDS);
                    if let Some(found) = match_label(&run, self.labels) {
                        let typed = lowers(&run[..found.words]).join(" ");
                        let correction = (typed.clone(), found.label.clone());
                        if found.edits > 0 && !self.corrections.contains(&correction) {
                            self.corrections.push(correction);
                        }
                        let node = QueryNode::Label { label: found.label.clone(), tracks: found.tracks.clone(), typed, edits: found.edits };
                        nodes.push((word.pos, node));
                        i += found.words;
                        continue;
                    }
                    if is_stop(word) {
                        self.ignored.push((word.pos, word.lower.clone()));
                    } else {
                        free.push((word.pos, word.text.as_str()));
                    }
                }
            }
            i += 1;
        }
        if let Some(&(pos, _)) = free.first() {
            let text = free.iter().map(|(_, text)| *text).collect::<Vec<_>>().join(" ");
            nodes.push((pos, QueryNode::Words { text }));
        }
        nodes.sort_by_key(|(pos, _)| *pos);
        let mut nodes: Vec<QueryNode> = nodes.into_iter().map(|(_, node)| node).collect();
        match nodes.len() {
            0 => None,
            1 => nodes.pop(),
            _ => Some(QueryNode::All { nodes }),
        }
    }
}

fn kind_of(root: Option<&QueryNode>) -> QueryKind {
    let all = |nodes: &[QueryNode], f: fn(&QueryNode) -> bool| nodes.iter().all(f);
    match root {
        Some(QueryNode::Label { .. }) => QueryKind::Label,
        Some(QueryNode::Phrase { .. }) => QueryKind::Phrase,
        Some(QueryNode::Words { .. }) => QueryKind::Dialogue,
        Some(QueryNode::Sequence { .. }) => QueryKind::Sequence,
        Some(QueryNode::While { .. }) => QueryKind::CoOccurrence,
        Some(QueryNode::All { nodes }) if all(nodes, |n| matches!(n, QueryNode::Label { .. })) => QueryKind::Label,
        Some(QueryNode::All { nodes }) if all(nodes, |n| matches!(n, QueryNode::Phrase { .. })) => QueryKind::Phrase,
        Some(QueryNode::All { nodes }) if all(nodes, |n| matches!(n, QueryNode::Words { .. })) => QueryKind::Dialogue,
        Some(QueryNode::All { .. }) | None => QueryKind::Mixed,
    }
}

/// Ignored words in query order, each once.
fn in_query_order(mut words: Vec<(usize, String)>) -> Vec<String> {
    words.sort_by_key(|(pos, _)| *pos);
    let mut seen = BTreeSet::new();
    words.into_iter().map(|(_, word)| word).filter(|word| seen.insert(word.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, Vec<String>> {
        let mut v = BTreeMap::new();
        let mut add = |names: &[&str], track: &str| {
            for name in names {
                v.insert(name.to_string(), vec![track.to_string()]);
            }
        };
        add(&["joey", "monica", "rachel", "ross", "chandler", "phoebe", "zeb", "gunther", "janice"], "character");
        add(&["kitchen", "coffee shop", "living room", "central perk"], "scene");
        add(&["coffee mug", "pizza", "glass", "after party", "witch", "bart", "cart"], "object");
        v
    }

    fn series() -> Vec<String> {
        ["Friends", "The Office", "24", "Joey"].iter().map(|s| s.to_string()).collect()
    }

    fn run(q: &str) -> Understood {
        let (labels, series) = (labels(), series());
        understand(q, &Vocabulary { labels: &labels, series: &series })
    }

    /// `typed` as the user wrote it: the parse reports it lowercased.
    fn fuzzy(name: &str, typed: &str, edits: u32) -> QueryNode {
        QueryNode::Label { label: name.into(), tracks: labels()[name].clone(), typed: normalize(typed), edits }
    }

    fn label(name: &str, typed: &str) -> QueryNode {
        fuzzy(name, typed, 0)
    }

    #[test]
    fn labels_are_listed_and_respelled_for_display_only() {
        let mut u = run("Jooey then Rachel while kitchn");
        assert_eq!(u.labels(), ["joey", "kitchen", "rachel"].iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        let shown: std::collections::HashMap<String, String> =
            [("joey", "Joey"), ("rachel", "Rachel")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        u.respell(&shown);
        let expected = QueryNode::Sequence {
            first: Box::new(QueryNode::Label { label: "Joey".into(), tracks: labels()["joey"].clone(), typed: "jooey".into(), edits: 1 }),
            then: Box::new(QueryNode::While {
                a: Box::new(QueryNode::Label {
                    label: "Rachel".into(),
                    tracks: labels()["rachel"].clone(),
                    typed: "rachel".into(),
                    edits: 0,
                }),
                b: Box::new(fuzzy("kitchen", "kitchn", 1)),
            }),
            within_ms: DEFAULT_SEQUENCE_WITHIN_MS,
        };
        assert_eq!(u.root, Some(expected));
        // "did you mean" shows the spelling; what was typed stays as matched.
        assert_eq!(u.corrections, vec![("jooey".to_string(), "Joey".to_string()), ("kitchn".to_string(), "kitchen".to_string())]);
    }

    fn words(text: &str) -> QueryNode {
        QueryNode::Words { text: text.into() }
    }

    fn phrase(text: &str) -> QueryNode {
        QueryNode::Phrase { text: text.into() }
    }

    fn all(nodes: Vec<QueryNode>) -> QueryNode {
        QueryNode::All { nodes }
    }

    fn seq(first: QueryNode, then: QueryNode, within_ms: u64) -> QueryNode {
        QueryNode::Sequence { first: Box::new(first), then: Box::new(then), within_ms }
    }

    fn both(a: QueryNode, b: QueryNode) -> QueryNode {
        QueryNode::While { a: Box::new(a), b: Box::new(b) }
    }

    fn root(q: &str) -> QueryNode {
        run(q).root.unwrap_or_else(|| panic!("no root for {q:?}"))
    }

    const DEFAULT: u64 = DEFAULT_SEQUENCE_WITHIN_MS;

    #[test]
    fn joey_in_the_kitchen_is_two_labels() {
        let u = run("Joey in the kitchen");
        assert_eq!(u.root, Some(all(vec![label("joey", "Joey"), label("kitchen", "kitchen")])));
        assert_eq!(u.kind, QueryKind::Label);
        assert_eq!(u.ignored_words, vec!["in", "the"]);
        assert!(u.corrections.is_empty());
        assert_eq!(u.filters, ExtractedFilters::default());
    }

    #[test]
    fn accents_are_folded_on_either_side_as_the_dialogue_index_folds_them() {
        let mut labels = BTreeMap::new();
        for (name, track) in [("zoë", "character"), ("crème brûlée", "object"), ("cafe", "scene"), ("joey", "character")] {
            labels.insert(name.to_string(), vec![track.to_string()]);
        }
        let understood = |q: &str| understand(q, &Vocabulary { labels: &labels, series: &[] }).root;
        let exact = |name: &str, typed: &str| {
            Some(QueryNode::Label { label: name.into(), tracks: labels[name].clone(), typed: typed.into(), edits: 0 })
        };
        assert_eq!(understood("zoe"), exact("zoë", "zoe"));
        assert_eq!(understood("Zoë"), exact("zoë", "zoë"));
        assert_eq!(understood("ZOE's"), exact("zoë", "zoe's"));
        assert_eq!(understood("creme brulee"), exact("crème brûlée", "creme brulee"));
        assert_eq!(understood("café"), exact("cafe", "café"));
        // Folding is not fuzziness: a different word stays a word.
        assert_eq!(understood("zoo"), Some(QueryNode::Words { text: "zoo".into() }));
    }

    #[test]
    fn typos_are_corrected_within_auto_fuzziness() {
        let u = run("Jooey in the kitchn");
        assert_eq!(u.root, Some(all(vec![fuzzy("joey", "Jooey", 1), fuzzy("kitchen", "kitchn", 1)])));
        assert_eq!(u.corrections, vec![("jooey".to_string(), "joey".to_string()), ("kitchn".to_string(), "kitchen".to_string())]);
        assert!(
            matches!(&u.root, Some(QueryNode::All { nodes }) if matches!(&nodes[0], QueryNode::Label { typed, .. } if typed == "jooey"))
        );
        assert_eq!(root("Rachael"), fuzzy("rachel", "Rachael", 1));
        // Transposition is one edit.
        assert_eq!(root("Chnadler"), fuzzy("chandler", "Chnadler", 1));
    }

    #[test]
    fn two_word_labels_are_fuzzy_matched_word_by_word() {
        let u = run("cofee shop");
        assert_eq!(u.root, Some(fuzzy("coffee shop", "cofee shop", 1)));
        assert_eq!(u.corrections, vec![("cofee shop".to_string(), "coffee shop".to_string())]);
        // A three-letter word must be exact even inside a two-word span.
        assert_eq!(root("coffee shp"), words("coffee shp"));
    }

    #[test]
    fn short_words_stop_words_and_numbers_are_never_fuzzy() {
        // "zab" is one edit from "zeb" but has three letters; "with" is one edit from "witch".
        assert_eq!(root("zab"), words("zab"));
        assert_eq!(root("ros"), words("ros"));
        let u = run("with");
        assert_eq!(u.root, None);
        assert_eq!(u.ignored_words, vec!["with"]);
        assert_eq!(root("1234"), words("1234"));
        // Six letters and more allow two edits.
        assert_eq!(root("Gnther"), fuzzy("gunther", "Gnther", 1));
        assert_eq!(root("phobeee"), fuzzy("phoebe", "phobeee", 2));
        assert_eq!(root("phbeeee"), words("phbeeee"));
    }

    #[test]
    fn fuzzy_ties_go_to_the_alphabetically_first_label() {
        // Only labels sharing the typed first letter compete: "dart" (one edit from "bart" and
        // "cart") matches neither; "cbrt" is one edit from "cart".
        assert_eq!(root("dart"), words("dart"), "no label starts with d");
        assert_eq!(root("cbrt"), fuzzy("cart", "cbrt", 1));
    }

    #[test]
    fn plurals_possessives_and_hyphens_match_exactly() {
        assert_eq!(root("kitchens"), label("kitchen", "kitchens"));
        assert_eq!(root("glasses"), label("glass", "glasses"));
        assert_eq!(root("coffee-shop"), label("coffee shop", "coffee-shop"));
        assert_eq!(root("coffee shops"), label("coffee shop", "coffee shops"));
        assert_eq!(root("Joey’s"), label("joey", "Joey’s"));
        assert_eq!(root("Jooey's"), fuzzy("joey", "Jooey's", 1));
    }

    #[test]
    fn joeys_pizza_is_a_character_and_an_object() {
        let u = run("Joey's pizza");
        assert_eq!(u.root, Some(all(vec![label("joey", "Joey's"), label("pizza", "pizza")])));
        assert_eq!(u.kind, QueryKind::Label);
    }

    #[test]
    fn longest_label_wins() {
        let u = run("coffee mug at the Central Perk coffee shop");
        assert_eq!(
            u.root,
            Some(all(vec![label("coffee mug", "coffee mug"), label("central perk", "Central Perk"), label("coffee shop", "coffee shop")]))
        );
        // Commas stop label spans.
        assert_eq!(root("coffee, shop"), words("coffee shop"));
    }

    #[test]
    fn sequence_with_window() {
        let u = run("Rachel then Ross within 10 seconds");
        assert_eq!(u.root, Some(seq(label("rachel", "Rachel"), label("ross", "Ross"), 10_000)));
        assert_eq!(u.kind, QueryKind::Sequence);
        assert!(u.ignored_words.is_empty());
        assert_eq!(root("Rachel then Ross"), seq(label("rachel", "Rachel"), label("ross", "Ross"), DEFAULT));
        assert_eq!(root("Rachel then Ross within 2 min"), seq(label("rachel", "Rachel"), label("ross", "Ross"), 120_000));
        assert_eq!(root("Rachel then Ross within a minute"), seq(label("rachel", "Rachel"), label("ross", "Ross"), 60_000));
        assert_eq!(root("Rachel then Ross within ten seconds"), seq(label("rachel", "Rachel"), label("ross", "Ross"), 10_000));
        assert_eq!(root("Rachel then Ross within 1.5 minutes"), seq(label("rachel", "Rachel"), label("ross", "Ross"), 90_000));
        assert_eq!(root("Rachel then Ross within 5s"), seq(label("rachel", "Rachel"), label("ross", "Ross"), 5_000));
        // A window written before the connective still belongs to it.
        assert_eq!(root("within 10 seconds, Rachel then Ross"), seq(label("rachel", "Rachel"), label("ross", "Ross"), 10_000));
    }

    #[test]
    fn every_sequence_connective() {
        let (r, m) = (label("rachel", "Rachel"), label("monica", "Monica"));
        assert_eq!(root("Rachel and then Monica"), seq(r.clone(), m.clone(), DEFAULT));
        assert_eq!(root("Rachel followed by Monica"), seq(r.clone(), m.clone(), DEFAULT));
        assert_eq!(root("Rachel before Monica"), seq(r.clone(), m.clone(), DEFAULT));
        assert_eq!(root("Monica after Rachel"), seq(r.clone(), m.clone(), DEFAULT));
        assert_eq!(root("RACHEL THEN MONICA"), seq(label("rachel", "RACHEL"), label("monica", "MONICA"), DEFAULT));
    }

    #[test]
    fn leading_after_before_and_while_need_a_comma() {
        let u = run("after Gunther, Rachel");
        assert_eq!(u.root, Some(seq(label("gunther", "Gunther"), label("rachel", "Rachel"), DEFAULT)));
        assert!(u.ignored_words.is_empty());
        assert_eq!(root("before Gunther, Rachel"), seq(label("rachel", "Rachel"), label("gunther", "Gunther"), DEFAULT));
        assert_eq!(root("after Gunther, Rachel within 5 seconds"), seq(label("gunther", "Gunther"), label("rachel", "Rachel"), 5_000));
        assert_eq!(root("while Joey eats, Rachel"), both(all(vec![label("joey", "Joey"), words("eats")]), label("rachel", "Rachel")));
        // Without the comma there is no second side: "after" is a stop word.
        let u = run("after Gunther Rachel");
        assert_eq!(u.root, Some(all(vec![label("gunther", "Gunther"), label("rachel", "Rachel")])));
        assert_eq!(u.ignored_words, vec!["after"]);
    }

    #[test]
    fn while_whilst_during_are_co_occurrence() {
        let u = run("Joey while Chandler");
        assert_eq!(u.root, Some(both(label("joey", "Joey"), label("chandler", "Chandler"))));
        assert_eq!(u.kind, QueryKind::CoOccurrence);
        assert_eq!(root("Joey whilst Chandler"), both(label("joey", "Joey"), label("chandler", "Chandler")));
        assert_eq!(root("pizza during Janice"), both(label("pizza", "pizza"), label("janice", "Janice")));
    }

    #[test]
    fn chains_are_left_associative_with_their_own_windows() {
        let (r, s, j) = (label("rachel", "Rachel"), label("ross", "Ross"), label("joey", "Joey"));
        assert_eq!(root("Rachel then Ross then Joey"), seq(seq(r.clone(), s.clone(), DEFAULT), j.clone(), DEFAULT));
        assert_eq!(
            root("Rachel then Ross within 5 s then Joey within 2 minutes"),
            seq(seq(r.clone(), s.clone(), 5_000), j.clone(), 120_000)
        );
        assert_eq!(root("Joey while Rachel while Ross"), both(both(j.clone(), r.clone()), s.clone()));
    }

    #[test]
    fn while_binds_tighter_than_then() {
        let u = run("Joey talks while Rachel is in the kitchen then Ross");
        let joey_talks = all(vec![label("joey", "Joey"), words("talks")]);
        let rachel_kitchen = all(vec![label("rachel", "Rachel"), label("kitchen", "kitchen")]);
        assert_eq!(u.root, Some(seq(both(joey_talks, rachel_kitchen), label("ross", "Ross"), DEFAULT)));
        assert_eq!(u.ignored_words, vec!["is", "in", "the"]);
        assert_eq!(
            root("Ross then Joey while Rachel"),
            seq(label("ross", "Ross"), both(label("joey", "Joey"), label("rachel", "Rachel")), DEFAULT)
        );
    }

    #[test]
    fn connective_with_an_empty_side_is_a_stop_word() {
        let u = run("then");
        assert_eq!(u.root, None);
        assert_eq!(u.kind, QueryKind::Mixed);
        assert_eq!(u.ignored_words, vec!["then"]);
        let u = run("Rachel then");
        assert_eq!(u.root, Some(label("rachel", "Rachel")));
        assert_eq!(u.ignored_words, vec!["then"]);
        assert_eq!(root("then Ross"), label("ross", "Ross"));
        assert_eq!(root("Rachel then then Ross"), seq(label("rachel", "Rachel"), label("ross", "Ross"), DEFAULT));
        assert_eq!(root("Rachel then the Ross"), seq(label("rachel", "Rachel"), label("ross", "Ross"), DEFAULT));
        // "the" alone is no side.
        let u = run("Rachel then the");
        assert_eq!(u.root, Some(label("rachel", "Rachel")));
        assert_eq!(u.ignored_words, vec!["then", "the"]);
        let u = run("Joey after a while");
        assert_eq!(u.root, Some(label("joey", "Joey")));
        assert_eq!(u.ignored_words, vec!["after", "a", "while"]);
    }

    #[test]
    fn connective_words_inside_a_label_stay_in_the_label() {
        assert_eq!(root("Joey at the after party"), all(vec![label("joey", "Joey"), label("after party", "after party")]));
    }

    #[test]
    fn within_without_a_sequence_is_ignored() {
        let u = run("Joey within 10 seconds");
        assert_eq!(u.root, Some(label("joey", "Joey")));
        assert_eq!(u.ignored_words, vec!["within", "10", "seconds"]);
    }

    #[test]
    fn season_and_episode_filters() {
        let u = run("Monica in the kitchen in season 2 episode 3");
        assert_eq!(u.root, Some(all(vec![label("monica", "Monica"), label("kitchen", "kitchen")])));
        assert_eq!(u.filters, ExtractedFilters { season: Some(2), episode: Some(3), ..Default::default() });
        assert_eq!(u.ignored_words, vec!["in", "the"]);
        let u = run("s03e07 Phoebe");
        assert_eq!(u.root, Some(label("phoebe", "Phoebe")));
        assert_eq!((u.filters.season, u.filters.episode), (Some(3), Some(7)));
        for (q, season, episode) in [
            ("S3E7", Some(3), Some(7)),
            ("s3", Some(3), None),
            ("s03", Some(3), None),
            ("e07", None, Some(7)),
            ("ep 7", None, Some(7)),
            ("ep7", None, Some(7)),
            ("3x07", Some(3), Some(7)),
            ("season three, episode twenty-one", Some(3), Some(21)),
            ("series 2", Some(2), None),
        ] {
            let u = run(q);
            assert_eq!((u.filters.season, u.filters.episode), (season, episode), "{q}");
            assert_eq!(u.root, None, "{q}");
            assert!(u.ignored_words.is_empty(), "{q}: {:?}", u.ignored_words);
        }
    }

    #[test]
    fn first_filter_value_wins() {
        let u = run("season 2 season 3 Ross");
        assert_eq!(u.filters.season, Some(2));
        assert_eq!(u.ignored_words, vec!["season", "3"]);
        assert_eq!(u.root, Some(label("ross", "Ross")));
        // An overflowing number is not a season.
        assert_eq!(run("season 99999999999").filters.season, None);
    }

    #[test]
    fn series_filter() {
        let u = run("Friends season 3 Ross");
        assert_eq!(u.filters.series.as_deref(), Some("Friends"));
        assert_eq!(u.filters.season, Some(3));
        assert_eq!(u.root, Some(label("ross", "Ross")));
        let u = run("Michael in the office");
        assert_eq!(u.filters.series.as_deref(), Some("The Office"));
        assert_eq!(u.root, Some(words("Michael")));
        // "series 24" names the series "24"; a bare 24 is a number.
        assert_eq!(run("series 24").filters, ExtractedFilters { series: Some("24".into()), ..Default::default() });
        assert_eq!(run("24").filters.series, None);
        // "Joey" is a character label, so not the series.
        let u = run("Joey in the kitchen");
        assert_eq!(u.filters.series, None);
    }

    #[test]
    fn time_window_filters() {
        let u = run("Joey in the first 10 minutes");
        assert_eq!(u.root, Some(label("joey", "Joey")));
        assert_eq!(u.filters, ExtractedFilters { to_ms: Some(600_000), ..Default::default() });
        assert!(u.ignored_words.is_empty());
        let cases: [(&str, Option<u64>, Option<u64>); 9] = [
            ("Ross after 5 minutes", Some(300_000), None),
            ("Ross after 90 seconds", Some(90_000), None),
            ("Ross after the first 2 minutes", Some(120_000), None),
            ("Ross after 1:30", Some(90_000), None),
            ("Ross between 2 and 4 minutes", Some(120_000), Some(240_000)),
            ("Ross between 90 seconds and 3 minutes", Some(90_000), Some(180_000)),
            ("Ross from 4 to 2 minutes", Some(120_000), Some(240_000)),
            ("Ross during the first minute", None, Some(60_000)),
            ("Ross before 5 minutes", None, Some(300_000)),
        ];
        for (q, from, to) in cases {
            let u = run(q);
            assert_eq!((u.filters.from_ms, u.filters.to_ms), (from, to), "{q}");
            assert_eq!(u.root, Some(label("ross", "Ross")), "{q}");
        }
        // "after" with no amount stays a connective.
        assert_eq!(root("Ross after 2 pizzas"), seq(all(vec![words("2"), label("pizza", "pizzas")]), label("ross", "Ross"), DEFAULT));
    }

    #[test]
    fn quoted_phrases() {
        let u = run("\"we were on a break\" Ross");
        assert_eq!(u.root, Some(all(vec![phrase("we were on a break"), label("ross", "Ross")])));
        assert_eq!(u.kind, QueryKind::Mixed);
        assert!(u.ignored_words.is_empty());
        let u = run("“How you doin’?”   “PIVOT”");
        assert_eq!(u.root, Some(all(vec![phrase("How you doin’?"), phrase("PIVOT")])));
        assert_eq!(u.kind, QueryKind::Phrase);
        // Connectives, filters and labels inside quotes are dialogue.
        assert_eq!(root("\"Joey then season 2\""), phrase("Joey then season 2"));
        // Unbalanced: the rest is the phrase, whitespace collapsed.
        assert_eq!(root("Ross \"  could I   BE"), all(vec![label("ross", "Ross"), phrase("could I BE")]));
        assert_eq!(run("\"\"").root, None);
        assert_eq!(run("\"").root, None);
        assert_eq!(run("\" ?! \"").root, None);
    }

    #[test]
    fn leftover_words_join_into_one_words_node_as_typed() {
        let u = run("Joey eating a SANDWICH loudly");
        assert_eq!(u.root, Some(all(vec![label("joey", "Joey"), words("eating SANDWICH loudly")])));
        assert_eq!(u.kind, QueryKind::Mixed);
        assert_eq!(u.ignored_words, vec!["a"]);
        let u = run("how you doin");
        assert_eq!(u.root, Some(words("doin")));
        assert_eq!(u.kind, QueryKind::Dialogue);
        // Words sit where their first word was.
        assert_eq!(root("big Joey hug"), all(vec![words("big hug"), label("joey", "Joey")]));
    }

    #[test]
    fn nothing_left_means_no_root() {
        for q in ["", "   ", "the in", "?!,;", "show me every scene where"] {
            let u = run(q);
            assert_eq!(u.root, None, "{q}");
            assert_eq!(u.kind, QueryKind::Mixed, "{q}");
        }
        assert_eq!(run("the in").ignored_words, vec!["the", "in"]);
    }

    #[test]
    fn long_queries_consider_64_words() {
        let q: Vec<String> = (0..200).map(|i| if i % 10 == 0 { "Joey".to_string() } else { format!("word{i}") }).collect();
        let u = run(&q.join(" "));
        let Some(QueryNode::All { nodes }) = &u.root else { panic!("{:?}", u.root) };
        // 64 words: seven Joeys (0, 10, ..., 60) and 57 other words.
        assert_eq!(nodes.iter().filter(|n| matches!(n, QueryNode::Label { .. })).count(), 7);
        let Some(QueryNode::Words { text }) = nodes.iter().find(|n| matches!(n, QueryNode::Words { .. })) else { panic!() };
        assert_eq!(text.split(' ').count(), 57);
        // The 136 words beyond the limit, "joey" once.
        assert_eq!(u.ignored_words.len(), 136 - 13 + 1);
        assert_eq!(u.ignored_words[0], "word64");
        // A phrase counts its words.
        let long_phrase = format!("\"{}\"", vec!["la"; 100].join(" "));
        let u = run(&long_phrase);
        assert_eq!(u.root, Some(phrase(&vec!["la"; 64].join(" "))));
        assert_eq!(u.ignored_words, vec!["la"]);
    }

    /// Fragments that exercise every rule, mixed with random code points.
    // Packed by hand: rustfmt lays lists with long strings out one per line.
    #[rustfmt::skip]
    const PIECES: &[&str] = &[
        "Joey", "then", "after", "while", "within", "10", "seconds", "season", "s03e07", "between", "and", "first", ",", "\"", "“", "”",
        "'", "’", "-", ":", ".", " ", "  ", "é", "\u{301}", "İ", "ß", "漢字", "א", "😀", "\u{200D}", "\0", "1:", "1.", "kitchn", "ﬁ", "Ⅻ", "٣",
        "series", "24", "after party", "in the first",
    ];

    #[test]
    fn random_unicode_never_panics() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (labels, series) = (labels(), series());
        let vocabulary = Vocabulary { labels: &labels, series: &series };
        for _ in 0..3_000 {
            let len = (next() % 40) as usize;
            let mut q = String::new();
            for _ in 0..len {
                if next() % 4 == 0 {
                    q.push(char::from_u32((next() % 0x11_0000) as u32).unwrap_or('?'));
                } else {
                    q.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                }
            }
            let u = understand(&q, &vocabulary);
            serde_json::to_string(&u).unwrap_or_else(|e| panic!("{q:?}: {e}"));
            check_texts(u.root.as_ref(), &q);
        }
    }

    fn check_texts(node: Option<&QueryNode>, q: &str) {
        match node {
            None => {}
            Some(QueryNode::Phrase { text }) | Some(QueryNode::Words { text }) => {
                assert!(!text.is_empty() && text.split_whitespace().collect::<Vec<_>>().join(" ") == *text, "{q:?} → {text:?}");
            }
            Some(QueryNode::Label { label, .. }) => assert!(labels().contains_key(label), "{q:?}"),
            Some(QueryNode::Sequence { first, then, .. }) => {
                check_texts(Some(first), q);
                check_texts(Some(then), q);
            }
            Some(QueryNode::While { a, b }) => {
                check_texts(Some(a), q);
                check_texts(Some(b), q);
            }
            Some(QueryNode::All { nodes }) => {
                assert!(nodes.len() >= 2, "{q:?}");
                nodes.iter().for_each(|n| check_texts(Some(n), q));
            }
        }
    }

    #[test]
    fn serializes_with_a_type_tag() {
        let json = serde_json::to_value(run("Rachel then Jooey")).unwrap_or_default();
        assert_eq!(json["kind"], "sequence");
        assert_eq!(json["root"]["type"], "sequence");
        assert_eq!(json["root"]["first"]["type"], "label");
        assert_eq!(json["root"]["then"]["edits"], 1);
        assert_eq!(json["root"]["within_ms"], 30_000);
        assert_eq!(json["corrections"][0][0], "jooey");
        assert_eq!(json["filters"]["season"], serde_json::Value::Null);
    }

    #[test]
    fn edit_distance() {
        assert_eq!(edit_distance_within("kitten", "sitting", 3), Some(3));
        assert_eq!(edit_distance_within("kitten", "sitting", 2), None);
        assert_eq!(edit_distance_within("joey", "jeoy", 1), Some(1));
        // OSA: "ca" → "abc" is 3 (no edit of a transposed pair), where unrestricted Damerau gives 2.
        assert_eq!(edit_distance_within("ca", "abc", 3), Some(3));
        assert_eq!(edit_distance_within("", "", 0), Some(0));
        assert_eq!(edit_distance_within("", "abc", 3), Some(3));
        assert_eq!(edit_distance_within("abc", "", 2), None);
        assert_eq!(edit_distance_within("rachel", "rachel", 0), Some(0));
        // Chars, not bytes.
        assert_eq!(edit_distance_within("café", "cafe", 1), Some(1));
        assert_eq!(edit_distance_within("漢字", "字漢", 1), Some(1));
        assert_eq!(edit_distance_within("abcdef", "uvwxyz", u32::MAX), Some(6));
        // Early exit: a long shared suffix cannot bring the distance back under max.
        assert_eq!(edit_distance_within("xxxxaaaaaaaa", "yyyyaaaaaaaa", 2), None);
    }

    /// Textbook OSA over the full matrix, to check the early exit and the row buffers against.
    fn reference_osa(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
                }
            }
        }
        d[a.len()][b.len()]
    }

    #[test]
    fn edit_distance_agrees_with_the_full_matrix() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // A small alphabet makes transpositions and near misses common; lengths cross the 32-char stack buffers.
        let alphabet = ['a', 'b', 'c', 'é'];
        let word = |next: &mut dyn FnMut() -> u64| {
            let len = (next() % 40) as usize;
            (0..len).map(|_| alphabet[(next() % 4) as usize]).collect::<String>()
        };
        for _ in 0..3_000 {
            let (a, b) = (word(&mut next), word(&mut next));
            let max = (next() % 5) as u32;
            let expected = reference_osa(&a, &b);
            let want = (expected <= max as usize).then_some(expected as u32);
            assert_eq!(edit_distance_within(&a, &b, max), want, "{a:?} {b:?} max {max}");
            assert_eq!(edit_distance_within(&a, &b, u32::MAX), Some(expected as u32), "{a:?} {b:?}");
        }
    }

    #[test]
    fn auto_fuzziness_counts_chars() {
        assert_eq!(auto_fuzziness(""), 0);
        assert_eq!(auto_fuzziness("ab"), 0);
        assert_eq!(auto_fuzziness("abc"), 1);
        assert_eq!(auto_fuzziness("abcde"), 1);
        assert_eq!(auto_fuzziness("abcdef"), 2);
        assert_eq!(auto_fuzziness("éé"), 0);
        assert_eq!(auto_fuzziness("ééé"), 1);
    }

    #[test]
    fn stop_words_are_lowercase_and_unique() {
        let mut seen = BTreeSet::new();
        for word in STOP_WORDS {
            assert_eq!(*word, normalize(word));
            assert!(seen.insert(*word), "{word} twice");
        }
    }
}
