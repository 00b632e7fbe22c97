//! Relevance suite: ingest a generated season over HTTP, run more than 40 queries of every
//! type an editor types (names, names in places, places by meaning, objects, quoted and
//! misremembered lines, typos, as-you-type prefixes, sequences, co-occurrence, filters, phrase
//! slop, fuzzy dialogue), and score the returned seconds against the generator's ground truth,
//! never against our own output. The table goes to stdout and to `target/tmp/relevance.md`;
//! `REFRESH_DOCS=1 cargo test --release -p rushes-node --test relevance` also copies it into
//! `docs/relevance.md`.
//!
//! Scoring, per query, over one-second buckets and per asset:
//! - returned seconds: the union of the returned clips' spans;
//! - truth "core": the seconds the truth covers for at least half the bucket (what
//!   `EpisodeTruth::seconds_where` counts); truth "touched": every second the truth overlaps
//!   at all. Detections are jittered by up to a few hundred ms (faces 250, scenes 300, objects
//!   250, ASR 150), so a correct detection may touch one bucket more or one less at each edge;
//! - precision = returned seconds that the truth touches / returned seconds (lenient at edges);
//! - recall = core truth seconds that were returned / core truth seconds (strict at edges);
//! - IoU = mean over returned clips of the best IoU between the clip's seconds and a truth
//!   interval (a maximal run of core truth seconds in that asset);
//! - top = whether the best-scoring clip of the reply overlaps the touched truth.
//!
//! Every request asks for `per_asset` = `limits.max_per_asset` (100) and `limit` =
//! `limits.max_limit` (1000), so recall is never limited by paging; the suite checks that no
//! asset of a recall-floored query hit the per-asset cap.
//!
//! Floors: label queries in intersection mode (single character, character + place, object,
//! misspelled name, completed prefix, co-occurrence, filtered label) need precision >= 0.95
//! each; exact dialogue (quoted lines) and fuzzy dialogue (typos in a dialogue clause) need
//! recall >= 0.9 each. Every other floor (and the other metric of those kinds) was set from
//! the first honest run (see [`floor`]); none was ever lowered to make a failing run pass.
//!
//! `RELEVANCE_DEBUG=<part of a query>` prints the plan, the clips, their evidence and the truth
//! runs of the matching queries.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{load_sample, sample, TestNode};
use rushes_protocol::{SearchRequest, SearchResponse};
use rushes_sample::{normalized_words, EpisodeTruth, TruthInterval};
use serde_json::json;

const BUCKET_MS: u64 = 1000;
/// The demo embedder (`embedder.url = "demo"`) knows the season `Engine::open` builds it for:
/// the generator's default seed, 42.
const SEED: u64 = 42;
/// Four episodes, 2.2 hours: s01e01 … s01e04.
const HOURS: f64 = 2.0;
/// `limits.max_per_asset` and `limits.max_limit` defaults: everything is visible.
const PER_ASSET: usize = 100;
const LIMIT: usize = 1000;

/// Seconds per asset.
type Seconds = BTreeMap<String, BTreeSet<u64>>;

#[derive(Debug, Clone, Default)]
struct Truth {
    /// Seconds the truth covers at least half of (recall and IoU are measured against these).
    core: Seconds,
    /// Seconds the truth overlaps at all (precision is measured against these).
    touched: Seconds,
}

impl Truth {
    fn core_count(&self) -> usize {
        self.core.values().map(BTreeSet::len).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Character,
    CharacterPlace,
    PlaceByMeaning,
    Object,
    QuotedLine,
    MisrememberedLine,
    MisspelledName,
    Prefix,
    Sequence,
    CoOccurrence,
    Filter,
    PhraseSlop,
    FuzzyDialogue,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Character => "character",
            Kind::CharacterPlace => "character + place",
            Kind::PlaceByMeaning => "place by meaning",
            Kind::Object => "object",
            Kind::QuotedLine => "quoted line",
            Kind::MisrememberedLine => "misremembered line",
            Kind::MisspelledName => "misspelled name",
            Kind::Prefix => "as-you-type prefix",
            Kind::Sequence => "sequence",
            Kind::CoOccurrence => "co-occurrence",
            Kind::Filter => "filter",
            Kind::PhraseSlop => "phrase with slop",
            Kind::FuzzyDialogue => "fuzzy dialogue",
        }
    }
}

/// What each query of a kind must reach.
struct Floor {
    precision: f64,
    recall: f64,
    /// Where the numbers come from.
    why: &'static str,
}

/// Floors per query. The floors are fixed: precision >= 0.95 for label queries in
/// intersection mode, recall >= 0.9 for exact and fuzzy dialogue. Every other number was set
/// from the first honest run (seed 42, 2 hours), below what it measured, and is never lowered
/// to make a failing run pass. Every query must also rank a true moment first (`top clip`: all
/// 70 did in the first run). Measured minimums per kind in that run:
///
/// | kind | min precision | min recall |
/// |---|---|---|
/// | character | 0.997 | 1.000 |
/// | character + place | 0.994 | 1.000 |
/// | object | 0.971 | 1.000 |
/// | misspelled name | 0.998 | 1.000 |
/// | as-you-type prefix | 0.976 | 1.000 |
/// | co-occurrence | 0.993 | 1.000 |
/// | filter | 0.994 | 1.000 |
/// | quoted line | 0.824 (0.980 once bridges had to cross the line break) | 1.000 |
/// | fuzzy dialogue | 0.984 | 1.000 |
/// | phrase with slop | 0.842 (0.980 likewise) | 1.000 |
/// | place by meaning | 0.806 | 1.000 |
/// | misremembered line | 0.297 | 1.000 |
/// | sequence | 0.972 | 1.000 |
fn floor(kind: Kind) -> Floor {
    match kind {
        Kind::Character | Kind::CharacterPlace | Kind::Object | Kind::MisspelledName | Kind::Prefix | Kind::CoOccurrence | Kind::Filter => {
            Floor { precision: 0.95, recall: 0.95, why: "precision: issue floor for label queries; recall: first run 1.000" }
        }
        // Raised after bridge matches had to cross the line break (0.824 before, 0.980 after).
        Kind::QuotedLine => Floor {
            precision: 0.95,
            recall: 0.9,
            why: "recall: issue floor for exact dialogue; precision: run with crossing bridges 0.980",
        },
        Kind::FuzzyDialogue => {
            Floor { precision: 0.9, recall: 0.9, why: "recall: issue floor for fuzzy dialogue; precision: first run 0.984" }
        }
        Kind::PhraseSlop => Floor {
            precision: 0.95,
            recall: 0.9,
            why: "recall: issue floor for exact dialogue; precision: run with crossing bridges 0.980",
        },
        // The words of `q` also search dialogue ("I read somewhere ...", "cook" ~ "look").
        Kind::PlaceByMeaning => Floor { precision: 0.75, recall: 0.95, why: "first run: precision 0.806, recall 1.000" },
        // Unquoted words need only half of them in a second (minimum should match): other
        // lines sharing content words come back too, ranked below the original line.
        Kind::MisrememberedLine => Floor { precision: 0.25, recall: 0.9, why: "first run: precision 0.297, recall 1.000" },
        Kind::Sequence => Floor { precision: 0.9, recall: 0.95, why: "first run: precision 0.972, recall 1.000" },
    }
}

enum Request {
    Search(SearchRequest),
    /// Type `prefix` into `GET /v1/suggest`, expect `expected` as the first completion, and
    /// search the completed query it returns.
    Prefix {
        prefix: &'static str,
        expected: &'static str,
    },
}

struct Case {
    kind: Kind,
    /// The query as shown in the table.
    shown: String,
    request: Request,
    truth: Truth,
}

// ---------------------------------------------------------------------------------------------
// Ground truth

/// Core (at least half the bucket, overlapping spans adding up) and touched seconds of spans.
fn seconds_of_spans(spans: &[(u64, u64)]) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut spans: Vec<(u64, u64)> = spans.iter().copied().filter(|(s, e)| e > s).collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let (mut core, mut touched) = (BTreeSet::new(), BTreeSet::new());
    for (start, end) in merged {
        for bucket in (start / BUCKET_MS)..=((end - 1) / BUCKET_MS) {
            let lo = bucket * BUCKET_MS;
            let covered = end.min(lo + BUCKET_MS) - start.max(lo);
            touched.insert(bucket);
            if covered * 2 >= BUCKET_MS {
                core.insert(bucket);
            }
        }
    }
    (core, touched)
}

struct World {
    truths: Vec<EpisodeTruth>,
}

impl World {
    fn intervals<'a>(truth: &'a EpisodeTruth, track: &str) -> &'a [TruthInterval] {
        match track {
            "character" => &truth.characters,
            "scene" => &truth.scenes,
            "object" => &truth.objects,
            other => panic!("no truth track {other}"),
        }
    }

    /// A label on a track: core = `seconds_where`, touched = every second an interval touches.
    fn label(&self, track: &str, label: &str) -> Truth {
        let mut out = Truth::default();
        for t in &self.truths {
            let spans: Vec<(u64, u64)> =
                Self::intervals(t, track).iter().filter(|i| i.label == label).map(|i| (i.start_ms, i.end_ms)).collect();
            let (_, touched) = seconds_of_spans(&spans);
            out.core.insert(t.asset_id.clone(), t.seconds_where(track, label, BUCKET_MS));
            out.touched.insert(t.asset_id.clone(), touched);
        }
        out
    }

    fn character(&self, name: &str) -> Truth {
        self.label("character", name)
    }

    fn scene(&self, place: &str) -> Truth {
        self.label("scene", place)
    }

    fn object(&self, object: &str) -> Truth {
        self.label("object", object)
    }

    /// The seconds of the spoken lines `keep` selects (by their normalized words).
    fn lines_where(&self, keep: impl Fn(&[String]) -> bool) -> Truth {
        let mut out = Truth::default();
        for t in &self.truths {
            let spans: Vec<(u64, u64)> =
                t.dialogue.iter().filter(|line| keep(&normalized_words(&line.text))).map(|l| (l.start_ms, l.end_ms)).collect();
            let (core, touched) = seconds_of_spans(&spans);
            out.core.insert(t.asset_id.clone(), core);
            out.touched.insert(t.asset_id.clone(), touched);
        }
        out
    }

    /// Lines that say `phrase` (words adjacent and in order; `EpisodeTruth::lines_containing`).
    fn lines_saying(&self, phrase: &str) -> Truth {
        let mut out = Truth::default();
        for t in &self.truths {
            let spans: Vec<(u64, u64)> = t.lines_containing(phrase).iter().map(|l| (l.start_ms, l.end_ms)).collect();
            let (core, touched) = seconds_of_spans(&spans);
            out.core.insert(t.asset_id.clone(), core);
            out.touched.insert(t.asset_id.clone(), touched);
        }
        out
    }

    /// Lines holding every one of `words` (normalized), anywhere.
    fn lines_with_all(&self, words: &[&str]) -> Truth {
        let wanted: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
        self.lines_where(|line| wanted.iter().all(|w| line.contains(w)))
    }
}

fn combine(a: &Seconds, b: &Seconds, op: impl Fn(&BTreeSet<u64>, &BTreeSet<u64>) -> BTreeSet<u64>) -> Seconds {
    let empty = BTreeSet::new();
    let assets: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    assets.into_iter().map(|k| (k.clone(), op(a.get(k).unwrap_or(&empty), b.get(k).unwrap_or(&empty)))).collect()
}

/// Both at once.
fn both(a: &Truth, b: &Truth) -> Truth {
    let and = |x: &BTreeSet<u64>, y: &BTreeSet<u64>| x.intersection(y).copied().collect();
    Truth { core: combine(&a.core, &b.core, and), touched: combine(&a.touched, &b.touched, and) }
}

/// Only the seconds `keep(asset, second)` allows (filters).
fn restrict(truth: &Truth, keep: impl Fn(&str, u64) -> bool) -> Truth {
    let only = |seconds: &Seconds| -> Seconds {
        seconds.iter().map(|(asset, s)| (asset.clone(), s.iter().copied().filter(|&x| keep(asset, x)).collect())).collect()
    };
    Truth { core: only(&truth.core), touched: only(&truth.touched) }
}

/// Maximal runs of consecutive seconds, as (first, last).
fn runs(seconds: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seconds {
        match out.last_mut() {
            Some(run) if run.1 + 1 == s => run.1 = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// "A then B within N ms", the semantics of `curate::sequence_seconds` (gap 0): for each run of
/// A, the soonest run of B starting strictly after A's first second and at most `within_ms`
/// after A's end (B may overlap A); the span A.first ..= B.last.
fn sequence_seconds(a: &BTreeSet<u64>, b: &BTreeSet<u64>, within_ms: u64) -> BTreeSet<u64> {
    let (a_runs, b_runs) = (runs(a), runs(b));
    let mut out = BTreeSet::new();
    let mut next_b = 0;
    for &(a_first, a_last) in &a_runs {
        while b_runs.get(next_b).is_some_and(|&(b_first, _)| b_first <= a_first) {
            next_b += 1;
        }
        let Some(&(b_first, b_last)) = b_runs.get(next_b) else { break };
        let distance_ms = (b_first * BUCKET_MS).saturating_sub((a_last + 1) * BUCKET_MS);
        if distance_ms > within_ms {
            continue;
        }
        out.extend(a_first..=b_last);
    }
    out
}

/// Sequence truth: core from the core presences; touched from the touched presences, plus the
/// core spans (the lenient edge reading of the same moments).
fn sequence(a: &Truth, b: &Truth, within_ms: u64) -> Truth {
    let seq = |x: &BTreeSet<u64>, y: &BTreeSet<u64>| sequence_seconds(x, y, within_ms);
    let core = combine(&a.core, &b.core, seq);
    let touched = combine(&combine(&a.touched, &b.touched, seq), &core, |x, y| x.union(y).copied().collect());
    Truth { core, touched }
}

// ---------------------------------------------------------------------------------------------
// Queries

fn q(text: &str) -> SearchRequest {
    SearchRequest { q: Some(text.to_string()), ..Default::default() }
}

fn structured(body: serde_json::Value) -> SearchRequest {
    serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("request {body}: {e}"))
}

/// Drops null members, so a structured request reads as it would be written.
fn without_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            object.retain(|_, v| !v.is_null());
            object.values_mut().for_each(without_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_nulls),
        _ => {}
    }
}

fn shown(request: &SearchRequest) -> String {
    let mut value = serde_json::to_value(request).expect("request json");
    without_nulls(&mut value);
    let object = value.as_object().expect("object");
    if object.len() == 1 {
        if let Some(text) = object.get("q").and_then(|v| v.as_str()) {
            return text.to_string();
        }
    }
    value.to_string()
}

fn cases(world: &World) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |kind: Kind, request: SearchRequest, truth: Truth| {
        cases.push(Case { kind, shown: shown(&request), request: Request::Search(request), truth });
    };

    // Single characters: the six leads and two guests of this season.
    for name in ["Joey", "Monica", "Rachel", "Ross", "Chandler", "Phoebe", "Richard", "Janice"] {
        add(Kind::Character, q(name), world.character(name));
    }

    // A character in a place: only the seconds where both hold.
    for (name, place, text) in [
        ("Monica", "kitchen", "Monica in the kitchen"),
        ("Joey", "coffee shop", "Joey in the coffee shop"),
        ("Rachel", "living room", "Rachel in the living room"),
        ("Chandler", "restaurant", "Chandler at the restaurant"),
        ("Ross", "hallway", "Ross in the hallway"),
        ("Phoebe", "street", "Phoebe on the street"),
    ] {
        add(Kind::CharacterPlace, q(text), both(&world.character(name), &world.scene(place)));
    }

    // Places by meaning: no word is the label; the demo embedder maps the words to a place.
    for (text, place) in [
        ("somewhere they cook", "kitchen"),
        ("somewhere with a stove", "kitchen"),
        ("cafe", "coffee shop"),
        ("cappuccino and pastries", "coffee shop"),
        ("asleep under the duvet", "bedroom"),
        ("cubicles and paperwork", "office"),
        ("crosswalk and sidewalk", "street"),
    ] {
        add(Kind::PlaceByMeaning, q(text), world.scene(place));
    }

    // Objects.
    for object in ["guitar", "laptop", "umbrella", "pizza box", "espresso machine"] {
        add(Kind::Object, q(object), world.object(object));
    }

    // Quoted lines: catchphrases, template lines, and lines picked from the truth itself.
    for phrase in
        ["how you doin", "smelly cat", "oh my god", "the fossil record", "spilled coffee on my new skirt", "that always ends well"]
    {
        add(Kind::QuotedLine, q(&format!("\"{phrase}\"")), world.lines_saying(phrase));
    }
    for (episode, truth) in world.truths.iter().enumerate().take(2) {
        // The first long line of the episode, words 2 to 6.
        let line = truth.dialogue.iter().find(|l| l.text.split_whitespace().count() >= 9).expect("a line of 9 words");
        let words: Vec<&str> = line
            .text
            .split_whitespace()
            .skip(1)
            .take(5)
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\''))
            .filter(|w| !w.is_empty())
            .collect();
        let phrase = words.join(" ");
        assert!(!phrase.is_empty(), "episode {episode}: {:?}", line.text);
        add(Kind::QuotedLine, q(&format!("\"{phrase}\"")), world.lines_saying(&phrase));
    }

    // Misremembered lines: unquoted, one word changed, dropped or added; the truth is the
    // original line wherever it is said.
    for (typed, original) in [
        ("it's a paleontology thing you wouldn't get", "it's a paleontology thing, you wouldn't understand"),
        ("technically the fossil record says something else", "technically the fossil record says otherwise"),
        ("does anybody else smell something burnt", "does anybody else smell something burning"),
        ("I make jokes when I feel uncomfortable", "I make jokes when I'm uncomfortable"),
        ("we need a real plan with charts", "we need a plan, a real plan, with charts and everything"),
        ("the landlord says we can't have any pets", "the landlord says we can't have pets"),
    ] {
        add(Kind::MisrememberedLine, q(typed), world.lines_saying(original));
    }

    // Misspelled names.
    for (typed, name) in [
        ("Jooey", "Joey"),
        ("Rachael", "Rachel"),
        ("Monika", "Monica"),
        ("Pheobe", "Phoebe"),
        ("Chandlr", "Chandler"),
        ("Richad", "Richard"),
    ] {
        add(Kind::MisspelledName, q(typed), world.character(name));
    }

    // Sequences.
    add(Kind::Sequence, q("Rachel then Ross within 10 seconds"), sequence(&world.character("Rachel"), &world.character("Ross"), 10_000));
    add(
        Kind::Sequence,
        q("Joey followed by Monica within 5 seconds"),
        sequence(&world.character("Joey"), &world.character("Monica"), 5_000),
    );
    add(
        Kind::Sequence,
        structured(json!({"clauses": [{"type": "sequence", "first": {"type": "label", "label": "Chandler", "track": "character"},
            "then": {"type": "label", "label": "Phoebe", "track": "character"}, "within_ms": 20000}]})),
        sequence(&world.character("Chandler"), &world.character("Phoebe"), 20_000),
    );
    add(
        Kind::Sequence,
        structured(json!({"clauses": [{"type": "sequence",
            "first": {"type": "while", "clauses": [{"type": "label", "label": "Joey"}, {"type": "label", "label": "kitchen"}]},
            "then": {"type": "label", "label": "Rachel"}, "within_ms": 10000}]})),
        sequence(&both(&world.character("Joey"), &world.scene("kitchen")), &world.character("Rachel"), 10_000),
    );

    // Co-occurrence.
    add(Kind::CoOccurrence, q("Joey while Chandler"), both(&world.character("Joey"), &world.character("Chandler")));
    add(Kind::CoOccurrence, q("Monica during Rachel"), both(&world.character("Monica"), &world.character("Rachel")));
    add(
        Kind::CoOccurrence,
        structured(
            json!({"clauses": [{"type": "while", "clauses": [{"type": "label", "label": "Ross"}, {"type": "label", "label": "living room"}]}]}),
        ),
        both(&world.character("Ross"), &world.scene("living room")),
    );

    // Filters, in words and structured.
    add(Kind::Filter, q("Joey in season 1 episode 2"), restrict(&world.character("Joey"), |asset, _| asset == "s01e02"));
    add(
        Kind::Filter,
        structured(json!({"q": "Monica", "filters": {"from_ms": 60000, "to_ms": 300000}})),
        restrict(&world.character("Monica"), |_, second| (60..300).contains(&second)),
    );
    add(
        Kind::Filter,
        structured(json!({"q": "Ross", "filters": {"asset_ids": ["s01e03"]}})),
        restrict(&world.character("Ross"), |asset, _| asset == "s01e03"),
    );
    add(Kind::Filter, q("Phoebe in the first 5 minutes"), restrict(&world.character("Phoebe"), |_, second| second < 300));
    add(
        Kind::Filter,
        q("Chandler in the kitchen s01e02"),
        restrict(&both(&world.character("Chandler"), &world.scene("kitchen")), |asset, _| asset == "s01e02"),
    );

    // Phrases with slop.
    for (text, slop, original) in [
        ("fossil says otherwise", 1, "fossil record says otherwise"),
        ("make jokes uncomfortable", 3, "make jokes when i'm uncomfortable"),
        ("perfect for part", 1, "perfect for the part"),
    ] {
        add(
            Kind::PhraseSlop,
            structured(json!({"clauses": [{"type": "phrase", "text": text, "slop": slop}]})),
            world.lines_saying(original),
        );
    }

    // Fuzzy dialogue words (typos) in a dialogue clause, fuzziness "auto".
    for (text, words) in [
        ("paleontolgy", vec!["paleontology"]),
        ("sunglases", vec!["sunglasses"]),
        ("landlrd pets", vec!["landlord", "pets"]),
        ("birthng clas", vec!["birthing", "class"]),
    ] {
        add(Kind::FuzzyDialogue, structured(json!({"clauses": [{"type": "dialogue", "text": text}]})), world.lines_with_all(&words));
    }

    // As-you-type: the first completion, searched.
    for (prefix, expected, track) in [
        ("Pho", "Phoebe", "character"),
        ("Chan", "Chandler", "character"),
        ("kitch", "kitchen", "scene"),
        ("coffee s", "coffee shop", "scene"),
        ("umbr", "umbrella", "object"),
    ] {
        let label = match expected {
            "phoebe" => "Phoebe",
            "chandler" => "Chandler",
            other => other,
        };
        cases.push(Case {
            kind: Kind::Prefix,
            shown: format!("suggest \"{prefix}\""),
            request: Request::Prefix { prefix, expected },
            truth: world.label(track, label),
        });
    }
    cases
}

// ---------------------------------------------------------------------------------------------
// Measuring

struct Measured {
    precision: f64,
    recall: f64,
    /// None when nothing was returned.
    iou: Option<f64>,
    top_hit: Option<bool>,
    returned: usize,
    truth: usize,
    /// Some asset returned `per_asset` clips: more may exist.
    capped: bool,
}

fn clip_seconds(start_ms: u64, end_ms: u64) -> std::ops::Range<u64> {
    (start_ms / BUCKET_MS)..end_ms.div_ceil(BUCKET_MS)
}

fn measure(response: &SearchResponse, truth: &Truth) -> Measured {
    let empty = BTreeSet::new();
    let mut returned: Seconds = BTreeMap::new();
    for asset in &response.assets {
        let seconds = returned.entry(asset.asset_id.clone()).or_default();
        for clip in &asset.clips {
            seconds.extend(clip_seconds(clip.start_ms, clip.end_ms));
        }
    }
    let (mut hit, mut total) = (0usize, 0usize);
    for (asset, seconds) in &returned {
        hit += seconds.intersection(truth.touched.get(asset).unwrap_or(&empty)).count();
        total += seconds.len();
    }
    let (mut found, mut wanted) = (0usize, 0usize);
    for (asset, seconds) in &truth.core {
        found += seconds.intersection(returned.get(asset).unwrap_or(&empty)).count();
        wanted += seconds.len();
    }
    let mut ious = Vec::new();
    let mut best: Option<(f64, bool)> = None;
    for asset in &response.assets {
        let truth_runs = runs(truth.core.get(&asset.asset_id).unwrap_or(&empty));
        let touched = truth.touched.get(&asset.asset_id).unwrap_or(&empty);
        for clip in &asset.clips {
            let span = clip_seconds(clip.start_ms, clip.end_ms);
            let iou = truth_runs
                .iter()
                .map(|&(first, last)| {
                    let inter = span.end.min(last + 1).saturating_sub(span.start.max(first));
                    let union = (span.end - span.start) + (last + 1 - first) - inter;
                    inter as f64 / union as f64
                })
                .fold(0.0, f64::max);
            ious.push(iou);
            let overlaps = span.clone().any(|s| touched.contains(&s));
            if best.is_none_or(|(score, _)| clip.score > score) {
                best = Some((clip.score, overlaps));
            }
        }
    }
    Measured {
        precision: if total == 0 { 0.0 } else { hit as f64 / total as f64 },
        recall: if wanted == 0 { 0.0 } else { found as f64 / wanted as f64 },
        iou: (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64),
        top_hit: best.map(|(_, hit)| hit),
        returned: total,
        truth: wanted,
        capped: response.assets.iter().any(|a| a.clips.len() >= PER_ASSET),
    }
}

fn encode_query_value(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn explain(node: &TestNode, request: &SearchRequest) -> String {
    let body = serde_json::to_vec(request).expect("json");
    node.client().send("POST", "/v1/search/explain", "application/json", &body).unwrap_or_else(|e| format!("explain failed: {e}"))
}

fn table(rows: &[(&Case, String, Measured)]) -> String {
    let mut out = String::new();
    out.push_str("| # | kind | query | precision | recall | IoU | top clip | returned s | truth s |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for (i, (case, query, m)) in rows.iter().enumerate() {
        let iou = m.iou.map_or("–".to_string(), |v| format!("{v:.3}"));
        let top = match m.top_hit {
            Some(true) => "yes",
            Some(false) => "no",
            None => "–",
        };
        let capped = if m.capped { " (capped)" } else { "" };
        let _ = writeln!(
            out,
            "| {} | {} | `{}` | {:.3} | {:.3} | {} | {} | {}{} | {} |",
            i + 1,
            case.kind.name(),
            query.replace('|', "\\|").replace('`', "'"),
            m.precision,
            m.recall,
            iou,
            top,
            m.returned,
            capped,
            m.truth
        );
    }
    out
}

fn summary(rows: &[(&Case, String, Measured)]) -> String {
    let mut by_kind: BTreeMap<Kind, Vec<&Measured>> = BTreeMap::new();
    for (case, _, m) in rows {
        by_kind.entry(case.kind).or_default().push(m);
    }
    let mut out = String::new();
    out.push_str("| kind | queries | mean precision | min precision | mean recall | min recall | mean IoU | floor |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for (kind, ms) in &by_kind {
        let n = ms.len() as f64;
        let mean = |f: &dyn Fn(&Measured) -> f64| ms.iter().map(|m| f(m)).sum::<f64>() / n;
        let min = |f: &dyn Fn(&Measured) -> f64| ms.iter().map(|m| f(m)).fold(f64::INFINITY, f64::min);
        let fl = floor(*kind);
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            kind.name(),
            ms.len(),
            mean(&|m| m.precision),
            min(&|m| m.precision),
            mean(&|m| m.recall),
            min(&|m| m.recall),
            mean(&|m| m.iou.unwrap_or(0.0)),
            format!("precision ≥ {}, recall ≥ {} ({})", fl.precision, fl.recall, fl.why)
        );
    }
    out
}

/// The plan, the clips with their evidence, and the truth runs of one query.
fn debug_dump(node: &TestNode, case: &Case, request: &SearchRequest, response: &SearchResponse) {
    let empty = BTreeSet::new();
    println!("DEBUG {} plan {}", case.shown, explain(node, request));
    for asset in &response.assets {
        let spans: Vec<(u64, u64)> = asset.clips.iter().map(|c| (c.start_ms / BUCKET_MS, c.end_ms.div_ceil(BUCKET_MS))).collect();
        println!("DEBUG {} clips (seconds) {spans:?}", asset.asset_id);
        println!("DEBUG {} truth runs {:?}", asset.asset_id, runs(case.truth.core.get(&asset.asset_id).unwrap_or(&empty)));
        for clip in &asset.clips {
            for m in &clip.matches {
                println!("DEBUG   {}..{} ms {} {:?} {:?}", clip.start_ms, clip.end_ms, m.annotation_id, m.label, m.text);
            }
        }
    }
}

#[test]
fn relevance_against_ground_truth() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = sample(dir.path(), HOURS, SEED);
    let truths: Vec<EpisodeTruth> = std::fs::read_to_string(sample.join("truth.ndjson"))
        .expect("truth file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("truth line"))
        .collect();
    let world = World { truths };
    let cases = cases(&world);
    assert!(cases.len() >= 40, "{} queries", cases.len());
    for case in &cases {
        assert!(case.truth.core_count() > 0, "the sample has no truth for {:?} ({}): pick another query", case.shown, case.kind.name());
    }

    let node = TestNode::start(&dir.path().join("node"), &["--set", "embedder.url=demo"]);
    load_sample(&node, &sample, 2000);
    node.wait_searchable(Duration::from_secs(120));
    let loaded = started.elapsed();

    let mut rows: Vec<(&Case, String, Measured)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for case in &cases {
        let mut request = match &case.request {
            Request::Search(request) => request.clone(),
            Request::Prefix { prefix, expected } => {
                let reply = node.client().get_json(&format!("/v1/suggest?q={}", encode_query_value(prefix))).expect("suggest");
                let first = &reply["completions"][0];
                let text = first["text"].as_str().unwrap_or_default();
                if text != *expected {
                    failures.push(format!("suggest {prefix:?}: first completion {text:?}, expected {expected:?} ({reply})"));
                }
                q(first["query"].as_str().unwrap_or(expected))
            }
        };
        request.per_asset = Some(PER_ASSET);
        request.limit = Some(LIMIT);
        let response = node.client().search(&request).unwrap_or_else(|e| panic!("search {:?} failed: {e}", case.shown));
        assert_eq!(response.shards.failed, 0, "{}", case.shown);
        let m = measure(&response, &case.truth);
        if std::env::var("RELEVANCE_DEBUG").is_ok_and(|d| case.shown.contains(&d)) {
            debug_dump(&node, case, &request, &response);
        }
        let fl = floor(case.kind);
        let mut problems = Vec::new();
        if m.precision < fl.precision {
            problems.push(format!("precision {:.3} < {}", m.precision, fl.precision));
        }
        if m.recall < fl.recall {
            problems.push(format!("recall {:.3} < {}", m.recall, fl.recall));
        }
        if m.capped {
            problems.push(format!("an asset hit per_asset = {PER_ASSET}: recall may be limited by paging"));
        }
        if m.top_hit != Some(true) {
            problems.push("the best-scoring clip is not a true moment".to_string());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} {:?} (sent {}): {}; returned {} s, truth {} s; plan: {}",
                case.kind.name(),
                case.shown,
                shown(&request),
                problems.join(", "),
                m.returned,
                m.truth,
                explain(&node, &request)
            ));
        }
        let query = match &case.request {
            Request::Prefix { .. } => format!("{} → {}", case.shown, request.q.as_deref().unwrap_or("")),
            Request::Search(_) => case.shown.clone(),
        };
        rows.push((case, query, m));
    }
    let searched = started.elapsed() - loaded;

    let episodes = world.truths.len();
    let hours: f64 = world.truths.iter().map(|t| t.duration_ms as f64).sum::<f64>() / 3_600_000.0;
    let mut doc = String::new();
    let _ = writeln!(doc, "# Relevance");
    let _ = writeln!(doc);
    let _ = writeln!(
        doc,
        "Produced by `REFRESH_DOCS=1 cargo test --release -p rushes-node --test relevance` (node/tests/relevance.rs; \
         without `REFRESH_DOCS` the report goes to `target/tmp/relevance.md` only): a generated season (seed {SEED}, {HOURS} hours asked, {episodes} episodes = {hours:.1} h) is \
         ingested into a real node over HTTP with the offline demo embedder (`--set embedder.url=demo`), and every query's \
         returned seconds are scored against the generator's ground truth."
    );
    let _ = writeln!(doc);
    let _ = writeln!(
        doc,
        "- **precision**: returned seconds (union of the clips, 1 s buckets, per asset) that the truth touches at all \
         (detections are jittered by up to 150–300 ms, so edges are read leniently);\n\
         - **recall**: truth seconds (covered at least half) that were returned;\n\
         - **IoU**: mean over returned clips of the best IoU with a truth interval (a maximal run of truth seconds);\n\
         - **top clip**: whether the best-scoring clip overlaps the truth;\n\
         - every request asks for `per_asset` 100 and `limit` 1000 (the configured maximums), so paging never limits recall \
         (\"capped\" marks a reply where some asset reached 100 clips)."
    );
    let _ = writeln!(doc);
    let _ = writeln!(doc, "## By kind");
    let _ = writeln!(doc);
    doc.push_str(&summary(&rows));
    let _ = writeln!(doc);
    let _ = writeln!(doc, "## Where precision goes");
    let _ = writeln!(doc);
    let _ = writeln!(
        doc,
        "- **Edges.** A detection jittered a few hundred ms past the truth touches one more bucket; precision reads \
         edges leniently, but clip IoU does not, which is most of the gap below 1 for short objects and lines.\n\
         - **Intersections at cuts.** Character + place and co-occurrence clips include 1–2 s slivers where a character \
         leaves one scene in the same second the next place starts: both labels are in that bucket. They count as \
         touched for precision and pull the mean IoU down.\n\
         - **Quoted lines.** A line's first second also indexes the line before it (`dialogue_bridge`), so a phrase \
         can run across two subtitle lines; it counts there only when it does not match the line before alone \
         (`dialogue_before`), so it adds no seconds for phrases inside one line. What remains is edge jitter.\n\
         - **Phrase slop** counts index tokens: the tokenizer splits contractions (\"I'm\" is two tokens), so \
         \"make jokes uncomfortable\" needs slop 3 to reach \"make jokes when I'm uncomfortable\".\n\
         - **Place by meaning.** The words of `q` search dialogue as well as the scene vectors (a hybrid `any`): \
         \"somewhere\" is said in \"I read somewhere that ...\" and fuzzy \"cook\" matches \"look\".\n\
         - **Misremembered lines.** Unquoted words need only half of them in one second (minimum should match), so \
         other lines sharing content words come back too; the original line ranks first (top clip) and is always \
         found (recall)."
    );
    let _ = writeln!(doc);
    let _ = writeln!(doc, "## Every query");
    let _ = writeln!(doc);
    doc.push_str(&table(&rows));
    println!("{doc}");
    println!("loaded in {loaded:?}, {} queries in {searched:?}", rows.len());
    // Tests never write the source tree: the report goes under target/, and docs/relevance.md
    // is refreshed from it only when asked (`REFRESH_DOCS=1`, see the module docs).
    let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join("relevance.md");
    std::fs::write(&report, &doc).unwrap_or_else(|e| panic!("write {}: {e}", report.display()));
    println!("report written to {}", report.display());
    if std::env::var("REFRESH_DOCS").is_ok_and(|v| v == "1") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/relevance.md");
        std::fs::write(&path, &doc).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("docs refreshed: {}", path.display());
    }

    assert!(failures.is_empty(), "{} queries below their floor:\n{}", failures.len(), failures.join("\n\n"));
}
