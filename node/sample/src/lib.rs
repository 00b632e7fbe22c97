//! Deterministic sample-season generator.
//!
//! Builds a fictional sitcom season ("central-perk") the way AI models would describe raw
//! footage: first the *truth* (who is on screen when, which location each scene is in, which
//! objects are visible, every spoken line, every shot), then the *noisy model outputs* derived
//! from it (jittered face detections with a few false positives, scene labels with embedding
//! vectors, object detections, ASR lines, shot boundaries). Benchmarks and acceptance checks
//! ingest the annotations and score search results against the truth.
//!
//! Determinism: every episode draws from its own ChaCha8 generator seeded from
//! `(season seed, episode index)`, with one independent stream per aspect (layout, shots, faces,
//! objects, dialogue, scenes). Episode k is therefore identical however many hours were asked
//! for, and changing one aspect's generator does not reshuffle the others. Only IEEE-exact
//! float operations (+, -, *, /, sqrt) feed the output, so files are byte-identical across runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rushes_protocol::{Annotation, AssetRecord};
use serde::{Deserialize, Serialize};

/// Series name of every generated episode.
pub const SERIES_NAME: &str = "central-perk";
/// Episodes per season; asset ids run `s01e01` … `s01e24`, `s02e01` …
pub const EPISODES_PER_SEASON: u32 = 24;
/// NTSC film rate.
pub const EPISODE_FPS: f64 = 23.976;
/// Vector space of the scene embeddings (must be configured on the cluster with `vector_dimensions`).
pub const SCENE_VECTOR_SPACE: &str = "scene";
/// Recurring phrases planted in the dialogue with realistic rarity, normalized the way
/// [`EpisodeTruth::lines_containing`] compares them. Handy as benchmark queries.
pub const CATCHPHRASES: &[&str] =
    &["we were on a break", "how you doin", "pivot", "they don't know that we know", "smelly cat", "oh my god"];

/// Upper bound on a planned season (about 470,000 hours), so an absurd `hours` cannot exhaust memory.
pub const MAX_EPISODES: usize = 1_000_000;

const MS_PER_SECOND: u64 = 1_000;
const MS_PER_MINUTE: u64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: f64 = 3_600_000.0;

/// Share of episodes with a drama-length (~42 min) running time; the rest are ~22 min.
const LONG_EPISODE_PROBABILITY: f64 = 0.3;
const SHORT_EPISODE_MIN_MS: u64 = 21 * MS_PER_MINUTE;
const SHORT_EPISODE_MAX_MS: u64 = 23 * MS_PER_MINUTE + 30 * MS_PER_SECOND;
const LONG_EPISODE_MIN_MS: u64 = 40 * MS_PER_MINUTE;
const LONG_EPISODE_MAX_MS: u64 = 45 * MS_PER_MINUTE;

const SCENE_MIN_MS: u64 = 30 * MS_PER_SECOND;
const SCENE_MAX_MS: u64 = 4 * MS_PER_MINUTE;
/// Sitcom scenes are short; drama-length episodes use the full range.
const SHORT_EPISODE_SCENE_TYPICAL_MAX_MS: u64 = 150 * MS_PER_SECOND;
const SHOT_MIN_MS: u64 = 2 * MS_PER_SECOND;
const SHOT_MAX_MS: u64 = 8 * MS_PER_SECOND;

const MIN_CAST_PER_SCENE: usize = 2;
const MAX_CAST_PER_SCENE: usize = 5;
/// Nobody is on screen for less than this (unless the scene itself is shorter).
const MIN_PRESENCE_MS: u64 = 8 * MS_PER_SECOND;
/// A guest joins a scene once they are this far behind their screen-time target.
const GUEST_JOIN_DEFICIT_MAX_MS: f64 = 20_000.0;
/// When one main character hands a scene over to another, both are on screen this long, which
/// exceeds the longest line so a speaker is always available.
const RELAY_OVERLAP_MS: u64 = 15 * MS_PER_SECOND;

const FACE_JITTER_MS: u64 = 250;
/// Face tracks break at most shot cuts; a cut closer than this to either end of a presence does
/// not split it (so every detection stays well over the jitter).
const FACE_SEGMENT_MIN_MS: u64 = 1_500;
const FACE_SPLIT_AT_CUT_PROBABILITY: f64 = 0.85;
const FACE_FALSE_POSITIVE_PROBABILITY: f64 = 0.02;

const SCENE_JITTER_MS: u64 = 300;
const OBJECT_JITTER_MS: u64 = 250;
/// Fraction of a scene during which an object on the set is in frame.
const OBJECT_VISIBLE_FRACTION_MIN: f64 = 0.3;
const OBJECT_VISIBLE_FRACTION_MAX: f64 = 0.7;
/// True visibility 1.5–9.5 s, so jittered detections stay within 1–10 s.
const OBJECT_VISIBLE_MIN_MS: u64 = 1_500;
const OBJECT_VISIBLE_MAX_MS: u64 = 9_500;

const ASR_JITTER_MS: u64 = 150;
const SPEECH_WORDS_PER_SECOND_MIN: f64 = 2.2;
const SPEECH_WORDS_PER_SECOND_MAX: f64 = 2.8;
const LINE_MAX_WORDS: usize = 24;
/// Longest possible line: LINE_MAX_WORDS at the slowest rate plus the per-line pause, rounded up.
const LINE_MAX_MS: u64 = 12 * MS_PER_SECOND;
const INTERRUPTION_PROBABILITY: f64 = 0.03;

/// Decimal places kept in confidences and vector components (keeps the NDJSON compact).
const CONFIDENCE_DECIMALS: i32 = 3;
const VECTOR_DECIMALS: i32 = 6;

/// Independent random streams of one episode.
#[derive(Clone, Copy)]
enum Stream {
    Plan = 1,
    Layout = 2,
    Shots = 3,
    Faces = 4,
    Objects = 5,
    Dialogue = 6,
    Scenes = 7,
    ShotConfidence = 8,
}

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenConfig {
    /// Footage to generate; whole episodes are added until their total reaches this (at least
    /// one episode, at most MAX_EPISODES).
    pub hours: f64,
    pub seed: u64,
    /// Length of the scene embedding vectors; 0 leaves scene annotations without a vector.
    pub vector_dimensions: usize,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig { hours: 3.0, seed: 42, vector_dimensions: 512 }
    }
}

#[derive(Debug, Clone)]
pub struct Season {
    pub config: GenConfig,
    pub episodes: Vec<EpisodeSpec>,
    pub cast: Vec<CastMember>,
    pub locations: Vec<Location>,
    /// Sum of the episodes' durations.
    pub total_duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeSpec {
    pub asset_id: String,
    pub title: String,
    pub series: String,
    pub season: u32,
    pub episode: u32,
    pub duration_ms: u64,
    pub fps: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CastMember {
    pub name: String,
    /// Typical fraction of an episode's time on screen, in the episodes where they appear
    /// (main characters appear in every episode, guests in a subset).
    pub screen_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// The scene label, e.g. "kitchen".
    pub name: String,
    /// Words describing the place, for an offline text embedder (distinct between locations).
    pub description_words: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Episode {
    /// Model outputs, sorted by `start_ms`.
    pub annotations: Vec<Annotation>,
    pub truth: EpisodeTruth,
}

/// What really happens in an episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeTruth {
    pub asset_id: String,
    pub duration_ms: u64,
    /// One interval per (character, scene) presence, sorted by start.
    pub characters: Vec<TruthInterval>,
    /// Contiguous, covering `[0, duration_ms)`; label = location.
    pub scenes: Vec<TruthInterval>,
    /// When each object is really visible, sorted by start.
    pub objects: Vec<TruthInterval>,
    /// Every spoken line in time order.
    pub dialogue: Vec<TruthLine>,
    /// Contiguous `(start_ms, end_ms)` shots covering the episode.
    pub shots: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthInterval {
    pub label: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthLine {
    pub speaker: String,
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Id of the `asr` annotation that carries this line.
    pub annotation_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GenSummary {
    pub episodes: usize,
    pub annotations: u64,
    /// Hours of footage actually generated (whole episodes, so at least what was asked).
    pub hours: f64,
    /// Bytes written across the three files.
    pub bytes: u64,
}

impl EpisodeTruth {
    /// Indices of the `bucket_ms` buckets in which `label` is truly present on `track` for at
    /// least half the bucket. `track` is "character", "scene" or "object" (or "dialogue", where
    /// the label is the speaker); anything else gives an empty set. Overlapping or adjacent
    /// intervals of the same label add up, so a presence split at a scene cut still counts.
    pub fn seconds_where(&self, track: &str, label: &str, bucket_ms: u64) -> BTreeSet<u64> {
        if bucket_ms == 0 {
            return BTreeSet::new();
        }
        let mut spans: Vec<(u64, u64)> = match track {
            "character" => intervals_labelled(&self.characters, label),
            "scene" => intervals_labelled(&self.scenes, label),
            "object" => intervals_labelled(&self.objects, label),
            "dialogue" => self.dialogue.iter().filter(|line| line.speaker == label).map(|line| (line.start_ms, line.end_ms)).collect(),
            _ => return BTreeSet::new(),
        };
        let merged = merge_spans(&mut spans);
        let mut covered_ms_by_bucket: BTreeMap<u64, u64> = BTreeMap::new();
        for (start_ms, end_ms) in merged {
            let first_bucket = start_ms / bucket_ms;
            let last_bucket = (end_ms - 1) / bucket_ms;
            for bucket in first_bucket..=last_bucket {
                let bucket_start_ms = bucket * bucket_ms;
                let overlap_ms = end_ms.min(bucket_start_ms + bucket_ms) - start_ms.max(bucket_start_ms);
                *covered_ms_by_bucket.entry(bucket).or_insert(0) += overlap_ms;
            }
        }
        covered_ms_by_bucket.into_iter().filter(|&(_, covered_ms)| covered_ms * 2 >= bucket_ms).map(|(bucket, _)| bucket).collect()
    }

    /// Lines whose words contain `phrase`'s words in order and adjacent. Case and punctuation
    /// are ignored ("How you doin'?" contains "how you doin"); apostrophes are dropped, so
    /// "don't" matches "don't" and "dont".
    pub fn lines_containing(&self, phrase: &str) -> Vec<&TruthLine> {
        let phrase_words = normalized_words(phrase);
        if phrase_words.is_empty() {
            return Vec::new();
        }
        self.dialogue
            .iter()
            .filter(|line| {
                let line_words = normalized_words(&line.text);
                line_words.windows(phrase_words.len()).any(|window| window == phrase_words.as_slice())
            })
            .collect()
    }
}

fn intervals_labelled(intervals: &[TruthInterval], label: &str) -> Vec<(u64, u64)> {
    intervals.iter().filter(|i| i.label == label).map(|i| (i.start_ms, i.end_ms)).collect()
}

/// Sorts and merges overlapping or touching spans; drops empty ones.
fn merge_spans(spans: &mut [(u64, u64)]) -> Vec<(u64, u64)> {
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for &(start_ms, end_ms) in spans.iter().filter(|(s, e)| e > s) {
        match merged.last_mut() {
            Some(last) if start_ms <= last.1 => last.1 = last.1.max(end_ms),
            _ => merged.push((start_ms, end_ms)),
        }
    }
    merged
}

/// Lower-cased alphanumeric words; apostrophes vanish, every other non-alphanumeric separates.
/// Public because ground-truth checks must split text exactly as the truth was computed.
pub fn normalized_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c == '\'' || c == '\u{2019}' {
            continue;
        }
        if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        } else if !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

// ---------------------------------------------------------------------------------------------
// Fixed world: cast, locations, word banks
// ---------------------------------------------------------------------------------------------

struct CastSpec {
    name: &'static str,
    /// Typical share of an episode on screen (when appearing).
    base_share: f64,
    /// Probability of appearing in a given episode (1 for the main cast).
    appearance_probability: f64,
    /// Locations the character is ever seen in; empty means anywhere.
    locations: &'static [&'static str],
}

const CAST_SPECS: &[CastSpec] = &[
    CastSpec { name: "Joey", base_share: 0.36, appearance_probability: 1.0, locations: &[] },
    CastSpec { name: "Monica", base_share: 0.38, appearance_probability: 1.0, locations: &[] },
    CastSpec { name: "Rachel", base_share: 0.40, appearance_probability: 1.0, locations: &[] },
    CastSpec { name: "Ross", base_share: 0.39, appearance_probability: 1.0, locations: &[] },
    CastSpec { name: "Chandler", base_share: 0.37, appearance_probability: 1.0, locations: &[] },
    CastSpec { name: "Phoebe", base_share: 0.34, appearance_probability: 1.0, locations: &[] },
    CastSpec { name: "Gunther", base_share: 0.03, appearance_probability: 0.45, locations: &["coffee shop"] },
    CastSpec { name: "Janice", base_share: 0.06, appearance_probability: 0.18, locations: &[] },
    CastSpec { name: "Zeb", base_share: 0.05, appearance_probability: 0.2, locations: &[] },
    CastSpec { name: "Mike", base_share: 0.05, appearance_probability: 0.12, locations: &[] },
    CastSpec {
        name: "Richard",
        base_share: 0.06,
        appearance_probability: 0.1,
        locations: &["restaurant", "living room", "kitchen", "street"],
    },
    CastSpec { name: "Ursula", base_share: 0.03, appearance_probability: 0.08, locations: &["coffee shop", "street"] },
    CastSpec { name: "Heckles", base_share: 0.02, appearance_probability: 0.1, locations: &["hallway"] },
    CastSpec { name: "Estelle", base_share: 0.02, appearance_probability: 0.08, locations: &["office"] },
    CastSpec { name: "Emily", base_share: 0.05, appearance_probability: 0.08, locations: &[] },
];

/// Characters whose typical share is at least this are main cast (always appear, anchor scenes).
const MAIN_CAST_MIN_SHARE: f64 = 0.2;

struct LocationSpec {
    name: &'static str,
    /// Relative frequency of scenes at this location.
    weight: f64,
    description_words: &'static [&'static str],
    /// Objects visible there, most common first.
    objects: &'static [&'static str],
}

const LOCATION_SPECS: &[LocationSpec] = &[
    LocationSpec {
        name: "kitchen",
        weight: 0.15,
        description_words: &["cooking", "stove", "fridge", "counter", "sink", "oven", "breakfast", "dishes"],
        objects: &["coffee mug", "fridge", "frying pan", "kettle", "cereal box", "kitchen knife"],
    },
    LocationSpec {
        name: "coffee shop",
        weight: 0.22,
        description_words: &["cafe", "barista", "espresso", "cappuccino", "pastries", "armchairs", "chatting"],
        objects: &["sofa", "espresso machine", "coffee mug", "muffin", "cash register", "guitar"],
    },
    LocationSpec {
        name: "living room",
        weight: 0.2,
        description_words: &["television", "couch", "recliner", "rug", "bookshelf", "relaxing", "window"],
        objects: &["sofa", "television", "armchair", "foosball table", "lamp", "pizza box"],
    },
    LocationSpec {
        name: "hallway",
        weight: 0.09,
        description_words: &["corridor", "doors", "stairs", "landing", "doorway", "neighbors"],
        objects: &["door", "staircase", "keys", "shopping bag", "coat rack"],
    },
    LocationSpec {
        name: "street",
        weight: 0.08,
        description_words: &["sidewalk", "traffic", "crosswalk", "pedestrians", "storefronts", "city", "outdoors"],
        objects: &["taxi", "umbrella", "bicycle", "traffic light", "hot dog cart", "newspaper"],
    },
    LocationSpec {
        name: "office",
        weight: 0.08,
        description_words: &["desk", "computer", "meeting", "cubicle", "paperwork", "boss", "work"],
        objects: &["laptop", "desk phone", "filing cabinet", "stapler", "whiteboard", "coffee mug"],
    },
    LocationSpec {
        name: "restaurant",
        weight: 0.08,
        description_words: &["dinner", "waiter", "tables", "wine", "menu", "candles", "dining", "reservation"],
        objects: &["wine glass", "menu", "candle", "plate", "bread basket", "champagne bottle"],
    },
    LocationSpec {
        name: "bedroom",
        weight: 0.1,
        description_words: &["bed", "pillows", "sleeping", "closet", "nightstand", "blanket", "dresser", "morning"],
        objects: &["bed", "pillow", "alarm clock", "wardrobe", "lamp", "book"],
    },
];

/// Objects for a location not in [`LOCATION_SPECS`] (a caller-edited season).
const GENERIC_OBJECTS: &[&str] = &["chair", "table", "door", "lamp", "phone"];

const TITLE_NOUNS: &[&str] = &[
    "Duck",
    "Chick",
    "Rooftop Party",
    "Broken Oven",
    "Lost Keys",
    "Parking Ticket",
    "Ugly Lamp",
    "Blind Date",
    "Wedding Dress",
    "Cooking Class",
    "Secret Recipe",
    "Borrowed Car",
    "Spare Key",
    "Snowstorm",
    "Bad Haircut",
    "Birthday Cake",
    "Jazz Band",
    "Yard Sale",
    "Karaoke Night",
    "Foosball Table",
    "Leather Pants",
    "Bookcase",
    "Moving Van",
    "Cheesecake",
    "Lottery Ticket",
    "Marathon",
    "Dentist",
    "Soap Opera",
    "Massage Table",
    "Poker Game",
    "Blackout",
    "Lasagna",
    "Monkey",
    "Holiday Sweater",
    "Time Capsule",
    "Fire Drill",
];
const TITLE_ADJECTIVES: &[&str] = &[
    "Giant", "Secret", "Stolen", "Broken", "Last", "Second", "Big", "Empty", "Purple", "Lucky", "Terrible", "Missing", "Fake", "Tiny",
    "Haunted",
];
const TITLE_VERB_PHRASES: &[&str] = &[
    "Gets a New Job",
    "Moves Out",
    "Can't Cook",
    "Loses the Keys",
    "Learns to Dance",
    "Finds Out",
    "Goes to the Museum",
    "Hates the Lamp",
    "Buys a Boat",
    "Runs a Marathon",
    "Forgets the Anniversary",
    "Gets Stuck",
    "Throws a Party",
    "Meets the Parents",
    "Sings at the Coffee Shop",
    "Can't Stop Laughing",
    "Quits",
    "Has a Secret",
    "Adopts a Cat",
    "Takes a Cooking Class",
];
const TITLE_NAMES: &[&str] = &["Joey", "Monica", "Rachel", "Ross", "Chandler", "Phoebe", "Gunther", "Janice"];

const TOPICS: &[&str] = &[
    "the wedding",
    "the thanksgiving dinner",
    "the new apartment",
    "your birthday party",
    "the audition",
    "the museum exhibit",
    "the job interview",
    "the soap opera",
    "the road trip",
    "the rent",
    "the beach house",
    "the baby shower",
    "the lottery ticket",
    "the cooking class",
    "the blind date",
    "the big game",
    "the poker night",
    "the breakup",
    "the duck",
    "the holiday party",
    "your sister",
    "my parents",
    "the promotion",
    "the lease",
    "the cat",
    "the moving van",
    "the dinner reservation",
    "the marathon",
    "the dentist appointment",
    "the fire alarm",
    "the power outage",
    "the ski trip",
    "the karaoke contest",
    "the science fair",
    "the paternity test",
    "the dance lessons",
    "the neighbor downstairs",
    "the credit card bill",
    "the surprise party",
    "the hot tub",
    "the barbecue",
    "the camping trip",
    "the baseball tickets",
    "the art class",
    "the new roommate",
    "the plumber",
    "the landlord",
    "the parking space",
    "the family reunion",
    "the school reunion",
    "the haunted house",
    "the bachelor party",
    "the spelling bee",
    "the talent show",
    "the anniversary dinner",
    "the flea market",
    "the garage sale",
    "the concert",
    "the dry cleaning",
    "the tax return",
    "the yoga retreat",
    "the boat show",
    "the christmas tree",
    "the halloween costume",
    "the new year's resolution",
    "the fantasy league",
    "the bowling league",
    "the chess tournament",
    "the wine tasting",
    "the quiz night",
    "the insurance claim",
];
const FOODS: &[&str] = &[
    "pizza",
    "lasagna",
    "cheesecake",
    "sandwiches",
    "cookies",
    "muffins",
    "pancakes",
    "turkey",
    "meatball subs",
    "jam",
    "chinese food",
    "bagels",
    "cereal",
    "trifle",
    "fries",
    "ice cream",
    "candy",
    "soup",
    "omelettes",
    "brownies",
    "tacos",
    "sushi",
    "spaghetti",
    "meatloaf",
    "waffles",
    "popcorn",
    "cupcakes",
    "burritos",
    "salad",
    "guacamole",
    "nachos",
    "donuts",
    "hot dogs",
    "french toast",
    "mashed potatoes",
    "pie",
];
const TIMES: &[&str] = &[
    "tonight",
    "tomorrow",
    "on Saturday",
    "this weekend",
    "after work",
    "in an hour",
    "last night",
    "next week",
    "on Friday",
    "this morning",
    "before lunch",
    "right now",
];
const FEELINGS: &[&str] = &[
    "excited",
    "nervous",
    "upset",
    "happy",
    "confused",
    "jealous",
    "embarrassed",
    "worried",
    "thrilled",
    "annoyed",
    "weird",
    "romantic",
    "stressed",
    "proud",
    "guilty",
];
const ACTIVITIES: &[&str] = &[
    "cooking",
    "moving out",
    "planning the party",
    "looking for an apartment",
    "learning to play guitar",
    "studying for the exam",
    "painting the bedroom",
    "going to the gym",
    "babysitting",
    "ice skating",
    "dating again",
    "writing the speech",
    "building the bookcase",
    "rehearsing my lines",
    "baking",
    "cleaning the apartment",
    "doing laundry",
    "taking salsa lessons",
    "learning french",
    "jogging",
    "knitting a sweater",
    "fixing the sink",
    "assembling the furniture",
    "training for the race",
    "playing poker",
    "watching baseball",
    "reading that novel",
    "planting tomatoes",
    "decorating the tree",
    "shopping for shoes",
    "looking for a job",
    "rollerblading",
    "writing poetry",
    "doing karate",
];
/// Places people talk about going to ("at the {place}"): most scene locations plus a few more.
const PLACES: &[&str] = &[
    "kitchen",
    "coffee shop",
    "living room",
    "hallway",
    "office",
    "restaurant",
    "bedroom",
    "coffee shop",
    "museum",
    "airport",
    "gym",
    "hospital",
    "laundromat",
    "movies",
    "beach",
    "mall",
];

const INTERJECTIONS: &[&str] = &[
    "Yeah.",
    "Okay.",
    "What?",
    "Hey!",
    "No.",
    "Really?",
    "Oh.",
    "Right.",
    "Sure.",
    "Uh-huh.",
    "Wait, what?",
    "Seriously?",
    "Come on!",
    "I know!",
    "Hi.",
    "Hey, {other}!",
    "Thanks.",
    "Oh no.",
    "Fine.",
    "Whatever.",
    "Okay, okay.",
    "Yes!",
    "Nope.",
    "Wow.",
    "Totally.",
    "{other}!",
    "Shh!",
    "Ugh.",
    "Hmm.",
    "Good for you.",
];

const GENERAL_TEMPLATES: &[&str] = &[
    "Have you seen {other}?",
    "I can't believe {other} said that about {topic}.",
    "Okay, so I was at the {place} {time} and guess who I ran into?",
    "Does anyone know where the {object} went?",
    "Who left the {object} on the floor?",
    "I'm not talking about {topic} right now.",
    "You know what, I think we should talk about {topic}.",
    "{other}, can you please stop touching the {object}?",
    "Fine, but we're getting {food} {time}.",
    "I am so {feeling} about {topic}.",
    "Wait, you told {other} about {topic}?",
    "We're meeting {other} at the {place} {time}.",
    "Is it just me, or is {other} acting weird?",
    "I've been {activity} all day and I'm exhausted.",
    "Do you want some {food}?",
    "There's no more {food}. Who ate all the {food}?",
    "Don't look at me, ask {other}.",
    "I think I left my wallet at the {place}.",
    "Can we not do this at the {place}?",
    "So how was {topic}?",
    "It's not a big deal, it's just {topic}.",
    "I just think {topic} is a little overrated.",
    "Remember when {other} tried {activity}?",
    "You have to help me with {topic} {time}.",
    "Why is there a {object} in the {place}?",
    "Somebody moved my {object} again.",
    "{other} is going to freak out when they hear about {topic}.",
    "Let's just go to the {place} and forget about it.",
    "I was thinking maybe we could try {activity} {time}.",
    "Okay, nobody panic, but I broke the {object}.",
    "That is the ugliest {object} I have ever seen.",
    "I'm telling you, {other} has a thing for {main}.",
    "Are you still upset about {topic}?",
    "I'm sorry I missed {topic}, I was stuck at the {place}.",
    "Can you believe the rent on this place?",
    "My parents are coming {time} and the {place} is a mess.",
    "I need a favor. Can you cover for me {time}?",
    "I'm starving. Is there any {food} left?",
    "Oh, that's so {feeling}.",
    "No, no, no, that's not what I meant.",
    "Look, I just want things to go back to normal.",
    "Okay, here's the plan: we wait for {other} at the {place}.",
    "I can't find the remote anywhere.",
    "Who wants to go see a movie {time}?",
    "It's like {topic} all over again.",
    "Honestly, I'm fine. I'm totally fine.",
    "Tell me everything about {topic}.",
    "You guys, I have big news about {topic}.",
    "I'm just saying, {other} deserves better.",
    "Hey, put the {object} down, it's not yours.",
    "We should get a bigger {object}.",
    "I'll be at the {place} if anyone needs me.",
    "When did you get so good at {activity}?",
    "Did you seriously just eat my {food}?",
    "I'm never {activity} again.",
    "{other} and I are thinking about {activity}.",
    "That's the third time this week!",
    "I don't get it. What's so funny?",
    "Let me get this straight. You lost the {object}?",
    "Good news: I got the job! Bad news: it starts {time}.",
    "Why does everything happen to me?",
    "I'm going to need a lot more {food}.",
    "Okay, that was the worst date of my life.",
    "Can somebody please explain {topic} to me?",
    "I swear, it was like that when I got here.",
    "Is that a new {object}? It looks great.",
    "I bet you twenty bucks {other} forgets about {topic}.",
    "We have to be at the {place} by seven.",
    "You're not going to believe what {other} did {time}.",
    "I'll make {food} if somebody else does the dishes.",
    "What are you doing in the {location}?",
    "Why is everybody always in the {location}?",
    "Okay, I have to tell you something, and you have to promise not to tell {other}.",
    "My boss wants me to work late {time}, can you believe that?",
    "I think the {object} is broken. Again.",
    "Does anybody else smell something burning?",
    "If {other} calls, tell them I'm not here.",
    "I read somewhere that {activity} is good for your heart.",
    "We ran out of toilet paper. And milk. And basically everything.",
    "I'm thinking about getting a dog. A small one. Maybe a cat.",
    "The landlord says we can't have pets, so the chick has to be quiet.",
    "Whose turn is it to pay for the {food}?",
    "That's my chair. Everybody knows that's my chair.",
    "You should have seen the look on {other}'s face.",
    "I got us tickets to the hockey game {time}.",
    "Why would you wear that to {topic}?",
    "So the guy at the {place} says to me, lady, that's not a taxi.",
    "Remind me never to lend {other} my {object} again.",
    "It's freezing in here. Did someone open a window?",
    "I've been practicing my speech for {topic} all week.",
    "Are those my sunglasses? Those are totally my sunglasses.",
    "I had the weirdest dream about {other} and a giant {object}.",
    "Can you keep it down? Some of us have work in the morning.",
    "Let's order {food} and watch a movie.",
    "I'm not jealous. Why would I be jealous of {other}?",
    "Who puts ketchup on {food}?",
    "I'm going to the {place}, does anybody need anything?",
    "We need a plan, a real plan, with charts and everything.",
    "Apparently {other} has been secretly {activity}.",
    "I can't believe it's already {time}, the whole week just disappeared.",
];

const CATCHPHRASE_SPECS: &[CatchphraseSpec] = &[
    CatchphraseSpec {
        speakers: &["Janice"],
        speaker_probability: 0.35,
        other_probability: 0.004,
        speaker_variants: &["Oh. My. God!", "Oh. My. God. {other}!", "Oh... my... God!"],
        other_variants: &["Oh my God!", "Oh my God, {other}!", "Oh my God, you guys!"],
    },
    CatchphraseSpec {
        speakers: &["Ross"],
        speaker_probability: 0.005,
        other_probability: 0.0,
        speaker_variants: &["We were on a break!", "We were on a break, {other}!", "For the last time, we were on a break!"],
        other_variants: &[],
    },
    CatchphraseSpec {
        speakers: &["Joey"],
        speaker_probability: 0.012,
        other_probability: 0.0,
        speaker_variants: &["How you doin'?", "Hey. How you doin'?", "Well, hello there. How you doin'?"],
        other_variants: &[],
    },
    CatchphraseSpec {
        speakers: &["Ross"],
        speaker_probability: 0.003,
        other_probability: 0.0002,
        speaker_variants: &["Pivot! Pivot! Pivot!", "Okay, pivot. Pivot!", "Pivot, {other}, pivot!"],
        other_variants: &["Pivot!", "Okay, pivot!"],
    },
    CatchphraseSpec {
        speakers: &["Phoebe", "Chandler", "Monica", "Rachel"],
        speaker_probability: 0.0012,
        other_probability: 0.0,
        speaker_variants: &[
            "They don't know that we know.",
            "Okay, so they don't know that we know they know.",
            "But they don't know that we know!",
        ],
        other_variants: &[],
    },
    CatchphraseSpec {
        speakers: &["Phoebe"],
        speaker_probability: 0.008,
        other_probability: 0.0,
        speaker_variants: &[
            "Smelly cat, smelly cat, what are they feeding you?",
            "I'm working on a new verse for Smelly Cat.",
            "Smelly cat, smelly cat, it's not your fault.",
        ],
        other_variants: &[],
    },
];

struct CatchphraseSpec {
    speakers: &'static [&'static str],
    /// Chance per line spoken by one of `speakers`.
    speaker_probability: f64,
    /// Chance per line spoken by anyone else.
    other_probability: f64,
    speaker_variants: &'static [&'static str],
    other_variants: &'static [&'static str],
}

/// Lines only a given character says (chosen for a quarter of their sentences).
fn speaker_templates(speaker: &str) -> &'static [&'static str] {
    match speaker {
        "Ross" => &[
            "The museum is opening a new dinosaur exhibit {time}.",
            "It's a paleontology thing, you wouldn't understand.",
            "I'm fine! Totally fine! Why wouldn't I be fine?",
            "Carol wants me at the birthing class {time}.",
            "Technically, the fossil record says otherwise.",
        ],
        "Joey" => &[
            "I've got an audition {time} for a soap opera.",
            "Is that {food}? Can I have some?",
            "My agent says I'm perfect for the part.",
            "Joey doesn't share food!",
            "Okay, but what if the {object} was a sandwich?",
        ],
        "Phoebe" => &[
            "My grandmother says {topic} is bad luck.",
            "I have a massage client {time}.",
            "I'm writing a new song about {topic}.",
            "Oh, I wish I could, but I don't want to.",
            "That's so funny, in a sad way.",
        ],
        "Chandler" => &[
            "Could this {object} be any more ugly?",
            "I make jokes when I'm uncomfortable.",
            "I still don't know what I do at work, and I go there every day.",
            "Great, another {feeling} evening at the {place}.",
            "Sure, because that always ends well.",
        ],
        "Monica" => &[
            "Coasters! Use the coasters!",
            "I need to clean the {place} before anyone sees it.",
            "I'm trying a new recipe for {food} {time}.",
            "The restaurant is short-staffed again.",
            "Who put the {object} there? It goes in the cabinet.",
        ],
        "Rachel" => &[
            "Does this outfit look okay for {topic}?",
            "I have a meeting with my boss {time}.",
            "Who wants to go shopping {time}?",
            "I just got promoted!",
            "Ugh, I spilled coffee on my new skirt.",
        ],
        "Gunther" => &[
            "Here's your coffee.",
            "Can I get you anything else?",
            "Rachel, table four is waiting.",
            "We close in ten minutes.",
            "That couch is reserved.",
        ],
        "Janice" => &["Chandler Bing!", "That is so funny!", "Oh, you're such a sweetie.", "Guess who's back?"],
        "Zeb" => &["I'm just here for the {food}.", "Does anybody need help with {topic}?", "I fixed the {object}, by the way."],
        _ => &[],
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds and random helpers
// ---------------------------------------------------------------------------------------------

fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a: a stable string hash (std's hasher may change between Rust releases).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

fn episode_seed(season_seed: u64, episode_index: u64) -> u64 {
    splitmix64(splitmix64(season_seed) ^ splitmix64(episode_index.wrapping_mul(0xD1B5_4A32_D192_ED03)))
}

fn stream_rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream as u64);
    rng
}

fn uniform(rng: &mut ChaCha8Rng, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.gen::<f64>()
}

/// Uniform integer in `[low, high]` (both inclusive).
fn uniform_ms(rng: &mut ChaCha8Rng, low: u64, high: u64) -> u64 {
    if high <= low {
        low
    } else {
        rng.gen_range(low..=high)
    }
}

fn chance(rng: &mut ChaCha8Rng, probability: f64) -> bool {
    rng.gen::<f64>() < probability
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    debug_assert!(!items.is_empty());
    &items[rng.gen_range(0..items.len() as u64) as usize]
}

fn pick_str<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    let index = rng.gen_range(0..items.len() as u64) as usize;
    items[index]
}

fn pick_weighted(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut remaining = rng.gen::<f64>() * total;
    for (index, weight) in weights.iter().enumerate() {
        if remaining < *weight {
            return index;
        }
        remaining -= weight;
    }
    weights.len() - 1
}

/// Approximately standard normal (Irwin–Hall of six uniforms, scaled). Uses only additions so
/// vectors are bit-identical on every platform, unlike `ln`/`cos` based Box–Muller.
fn approx_gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let sum: f64 = (0..6).map(|_| rng.gen::<f64>()).sum();
    (sum - 3.0) * std::f64::consts::SQRT_2
}

fn round_to_decimals(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn random_confidence(rng: &mut ChaCha8Rng, low: f64, high: f64) -> f64 {
    round_to_decimals(uniform(rng, low, high), CONFIDENCE_DECIMALS)
}

/// `time_ms` moved by up to ±`max_jitter_ms`, kept within `[low_ms, high_ms]`.
fn jitter_ms(rng: &mut ChaCha8Rng, time_ms: u64, max_jitter_ms: u64, low_ms: u64, high_ms: u64) -> u64 {
    let max_jitter = max_jitter_ms as i64;
    let moved = time_ms as i64 + rng.gen_range(-max_jitter..=max_jitter);
    moved.clamp(low_ms as i64, high_ms as i64) as u64
}

/// Cuts `total_ms` into consecutive pieces of `[min_ms, min(typical_max_ms, max_ms)]`; the last
/// piece takes the remainder. Needs `total_ms >= min_ms` and `typical_max_ms >= 2 * min_ms`.
fn partition_ms(rng: &mut ChaCha8Rng, total_ms: u64, min_ms: u64, max_ms: u64, typical_max_ms: u64) -> Vec<u64> {
    debug_assert!(total_ms >= min_ms && max_ms.min(typical_max_ms) >= 2 * min_ms);
    let mut pieces = Vec::new();
    let mut remaining_ms = total_ms;
    let typical_max_ms = typical_max_ms.min(max_ms);
    while remaining_ms > typical_max_ms {
        // Leave at least min_ms behind so the final piece is long enough.
        let piece_ms = uniform_ms(rng, min_ms, typical_max_ms.min(remaining_ms - min_ms));
        pieces.push(piece_ms);
        remaining_ms -= piece_ms;
    }
    pieces.push(remaining_ms);
    pieces
}

// ---------------------------------------------------------------------------------------------
// Season planning
// ---------------------------------------------------------------------------------------------

pub fn plan_season(config: &GenConfig) -> Season {
    let target_ms = if config.hours.is_finite() && config.hours > 0.0 { config.hours * MS_PER_HOUR } else { 0.0 };
    let mut episodes = Vec::new();
    let mut total_duration_ms: u64 = 0;
    // Whole episodes until the requested footage is reached; episode k never depends on hours.
    loop {
        let spec = plan_episode(config.seed, episodes.len() as u64);
        total_duration_ms += spec.duration_ms;
        episodes.push(spec);
        if total_duration_ms as f64 >= target_ms || episodes.len() >= MAX_EPISODES {
            break;
        }
    }
    let cast = CAST_SPECS.iter().map(|spec| CastMember { name: spec.name.to_string(), screen_share: spec.base_share }).collect();
    let locations = LOCATION_SPECS
        .iter()
        .map(|spec| Location {
            name: spec.name.to_string(),
            description_words: spec.description_words.iter().map(|w| w.to_string()).collect(),
        })
        .collect();
    Season { config: config.clone(), episodes, cast, locations, total_duration_ms }
}

fn plan_episode(season_seed: u64, episode_index: u64) -> EpisodeSpec {
    let seed = episode_seed(season_seed, episode_index);
    let mut rng = stream_rng(seed, Stream::Plan);
    let duration_ms = if chance(&mut rng, LONG_EPISODE_PROBABILITY) {
        uniform_ms(&mut rng, LONG_EPISODE_MIN_MS, LONG_EPISODE_MAX_MS)
    } else {
        uniform_ms(&mut rng, SHORT_EPISODE_MIN_MS, SHORT_EPISODE_MAX_MS)
    };
    let title = episode_title(&mut rng);
    let season = (episode_index / u64::from(EPISODES_PER_SEASON)) as u32 + 1;
    let episode = (episode_index % u64::from(EPISODES_PER_SEASON)) as u32 + 1;
    EpisodeSpec {
        asset_id: format!("s{season:02}e{episode:02}"),
        title,
        series: SERIES_NAME.to_string(),
        season,
        episode,
        duration_ms,
        fps: EPISODE_FPS,
        seed,
    }
}

fn episode_title(rng: &mut ChaCha8Rng) -> String {
    match pick_weighted(rng, &[0.35, 0.2, 0.3, 0.15]) {
        0 => format!("The One with the {}", pick(rng, TITLE_NOUNS)),
        1 => {
            let adjective = pick(rng, TITLE_ADJECTIVES);
            format!("The One with the {adjective} {}", pick(rng, TITLE_NOUNS))
        }
        2 => {
            let name = pick(rng, TITLE_NAMES);
            format!("The One Where {name} {}", pick(rng, TITLE_VERB_PHRASES))
        }
        _ => {
            let name = pick(rng, TITLE_NAMES);
            format!("The One with {name}'s {}", pick(rng, TITLE_NOUNS))
        }
    }
}

pub fn asset_record(spec: &EpisodeSpec) -> AssetRecord {
    AssetRecord {
        title: Some(spec.title.clone()),
        series: Some(spec.series.clone()),
        season: Some(spec.season),
        episode: Some(spec.episode),
        duration_ms: Some(spec.duration_ms),
        fps: Some(spec.fps),
    }
}

/// The direction that scene embeddings of `location` cluster around: a deterministic random unit
/// vector per (seed, location name). Empty when `dims` is 0.
pub fn location_centroid(seed: u64, location: &str, dims: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed ^ fnv1a64(location.as_bytes())));
    let components: Vec<f64> = (0..dims).map(|_| approx_gaussian(&mut rng)).collect();
    let norm = components.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        // Practically impossible; fall back to an axis so the vector still has a direction.
        return (0..dims).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    }
    components.iter().map(|x| (x / norm) as f32).collect()
}

/// A unit vector whose cosine similarity to the unit vector `centroid` is exactly `cosine`
/// (before rounding to VECTOR_DECIMALS), in a random direction around it.
fn noisy_unit_vector(rng: &mut ChaCha8Rng, centroid: &[f64], cosine: f64) -> Vec<f64> {
    let mut noise: Vec<f64> = centroid.iter().map(|_| approx_gaussian(rng)).collect();
    let along = noise.iter().zip(centroid).map(|(n, c)| n * c).sum::<f64>();
    for (n, c) in noise.iter_mut().zip(centroid) {
        *n -= along * c;
    }
    let noise_norm = noise.iter().map(|x| x * x).sum::<f64>().sqrt();
    if noise_norm == 0.0 {
        return centroid.iter().map(|c| round_to_decimals(*c, VECTOR_DECIMALS)).collect();
    }
    let sine = (1.0 - cosine * cosine).max(0.0).sqrt();
    centroid.iter().zip(&noise).map(|(c, n)| round_to_decimals(cosine * c + sine * n / noise_norm, VECTOR_DECIMALS)).collect()
}

// ---------------------------------------------------------------------------------------------
// Episode generation
// ---------------------------------------------------------------------------------------------

/// The per-episode role of a cast member.
struct EpisodeCastTarget {
    /// Index into `Season::cast`.
    cast_index: usize,
    share: f64,
    is_main: bool,
    allowed_locations: &'static [&'static str],
}

struct Presence {
    cast_index: usize,
    start_ms: u64,
    end_ms: u64,
}

struct SceneLayout {
    /// Index into `Season::locations`.
    location_index: usize,
    start_ms: u64,
    end_ms: u64,
    presences: Vec<Presence>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ModelKind {
    Shots = 0,
    Places = 1,
    Faces = 2,
    Objects = 3,
    Asr = 4,
}

impl ModelKind {
    const COUNT: usize = 5;

    fn model(self) -> &'static str {
        match self {
            ModelKind::Shots => "shots",
            ModelKind::Places => "places",
            ModelKind::Faces => "faces",
            ModelKind::Objects => "objects",
            ModelKind::Asr => "asr",
        }
    }

    fn model_version(self) -> &'static str {
        match self {
            ModelKind::Shots => "1",
            ModelKind::Places => "1.0",
            ModelKind::Faces => "2.1",
            ModelKind::Objects => "5",
            ModelKind::Asr => "3",
        }
    }

    fn track(self) -> &'static str {
        match self {
            ModelKind::Shots => "shot",
            ModelKind::Places => "scene",
            ModelKind::Faces => "character",
            ModelKind::Objects => "object",
            ModelKind::Asr => "dialogue",
        }
    }
}

/// An annotation before it has its id (ids are numbered in time order once all are known).
struct DraftAnnotation {
    kind: ModelKind,
    start_ms: u64,
    end_ms: u64,
    confidence: f64,
    label: Option<String>,
    text: Option<String>,
    vector: Option<Vec<f64>>,
    /// Index of the truth line this dialogue annotation carries.
    truth_line_index: Option<usize>,
}

impl DraftAnnotation {
    fn labelled(kind: ModelKind, start_ms: u64, end_ms: u64, confidence: f64, label: &str) -> Self {
        debug_assert!(start_ms < end_ms);
        DraftAnnotation {
            kind,
            start_ms,
            end_ms,
            confidence,
            label: Some(label.to_string()),
            text: None,
            vector: None,
            truth_line_index: None,
        }
    }
}

fn location_spec(name: &str) -> Option<&'static LocationSpec> {
    LOCATION_SPECS.iter().find(|spec| spec.name == name)
}

fn cast_spec(name: &str) -> Option<&'static CastSpec> {
    CAST_SPECS.iter().find(|spec| spec.name == name)
}

/// Generates one episode's truth and model outputs. Depends only on the season's seed, cast,
/// locations and vector size, and on the episode's spec.
pub fn generate_episode(season: &Season, episode: &EpisodeSpec) -> Episode {
    let duration_ms = episode.duration_ms;
    let scenes = lay_out_scenes(season, episode);
    let shots = cut_shots(episode.seed, &scenes);
    let cast_names: Vec<&str> = season.cast.iter().map(|member| member.name.as_str()).collect();

    let mut drafts: Vec<DraftAnnotation> = Vec::new();
    let mut shot_confidence_rng = stream_rng(episode.seed, Stream::ShotConfidence);
    for &(start_ms, end_ms) in &shots {
        // Cut detection is nearly perfect on clean edits, so shots carry the true boundaries.
        let confidence = random_confidence(&mut shot_confidence_rng, 0.9, 0.99);
        drafts.push(DraftAnnotation::labelled(ModelKind::Shots, start_ms, end_ms, confidence, "shot"));
    }
    push_scene_drafts(season, episode, &scenes, &mut drafts);
    push_face_drafts(episode, &scenes, &shots, &cast_names, &mut drafts);
    let truth_objects = push_object_drafts(season, episode, &scenes, &mut drafts);
    let mut truth_lines = push_dialogue_drafts(season, episode, &scenes, &cast_names, &mut drafts);

    // Time order; ties broken by model then generation order, so the order is total and stable.
    drafts.sort_by_key(|a| (a.start_ms, a.end_ms, a.kind));
    let mut next_number_by_model = [0u32; ModelKind::COUNT];
    let mut annotations = Vec::with_capacity(drafts.len());
    for draft in drafts {
        let number = &mut next_number_by_model[draft.kind as usize];
        let id = format!("{}-{}-{:06}", draft.kind.model(), episode.asset_id, number);
        *number += 1;
        if let Some(line_index) = draft.truth_line_index {
            truth_lines[line_index].annotation_id = id.clone();
        }
        let (language, vector_space) = match (&draft.text, &draft.vector) {
            (Some(_), _) => (Some("en".to_string()), None),
            (None, Some(_)) => (None, Some(SCENE_VECTOR_SPACE.to_string())),
            (None, None) => (None, None),
        };
        annotations.push(Annotation {
            id,
            asset_id: episode.asset_id.clone(),
            model: draft.kind.model().to_string(),
            model_version: draft.kind.model_version().to_string(),
            track: draft.kind.track().to_string(),
            start_ms: draft.start_ms,
            end_ms: draft.end_ms,
            confidence: Some(draft.confidence),
            label: draft.label,
            text: draft.text,
            language,
            vector_space,
            vector: draft.vector,
        });
    }

    let mut characters: Vec<TruthInterval> = scenes
        .iter()
        .flat_map(|scene| &scene.presences)
        .map(|presence| TruthInterval {
            label: cast_names[presence.cast_index].to_string(),
            start_ms: presence.start_ms,
            end_ms: presence.end_ms,
        })
        .collect();
    characters.sort_by(|a, b| (a.start_ms, a.end_ms, &a.label).cmp(&(b.start_ms, b.end_ms, &b.label)));
    let truth_scenes = scenes
        .iter()
        .map(|scene| TruthInterval {
            label: season.locations[scene.location_index].name.clone(),
            start_ms: scene.start_ms,
            end_ms: scene.end_ms,
        })
        .collect();
    Episode {
        annotations,
        truth: EpisodeTruth {
            asset_id: episode.asset_id.clone(),
            duration_ms,
            characters,
            scenes: truth_scenes,
            objects: truth_objects,
            dialogue: truth_lines,
            shots,
        },
    }
}

/// Scenes (locations and timing) and who is in each of them.
fn lay_out_scenes(season: &Season, episode: &EpisodeSpec) -> Vec<SceneLayout> {
    let mut rng = stream_rng(episode.seed, Stream::Layout);
    let is_long_episode = episode.duration_ms >= LONG_EPISODE_MIN_MS;
    let typical_scene_max_ms = if is_long_episode { SCENE_MAX_MS } else { SHORT_EPISODE_SCENE_TYPICAL_MAX_MS };
    let scene_lengths_ms = if episode.duration_ms >= SCENE_MIN_MS {
        partition_ms(&mut rng, episode.duration_ms, SCENE_MIN_MS, SCENE_MAX_MS, typical_scene_max_ms)
    } else {
        vec![episode.duration_ms]
    };

    let targets = episode_cast_targets(season, &mut rng);
    let location_weights: Vec<f64> =
        season.locations.iter().map(|location| location_spec(&location.name).map_or(0.1, |spec| spec.weight)).collect();

    let mut on_screen_ms = vec![0u64; targets.len()];
    let mut scenes: Vec<SceneLayout> = Vec::with_capacity(scene_lengths_ms.len());
    let mut scene_start_ms = 0;
    for scene_ms in scene_lengths_ms {
        // Consecutive scenes at the same place would read as one scene: never repeat.
        let previous_location = scenes.last().map(|scene| scene.location_index);
        let weights: Vec<f64> = location_weights
            .iter()
            .enumerate()
            .map(|(index, weight)| if Some(index) == previous_location && location_weights.len() > 1 { 0.0 } else { *weight })
            .collect();
        let location_index = pick_weighted(&mut rng, &weights);
        let scene_end_ms = scene_start_ms + scene_ms;
        let presences = cast_scene(
            &mut rng,
            &season.locations[location_index].name,
            scene_start_ms,
            scene_end_ms,
            episode.duration_ms,
            &targets,
            &mut on_screen_ms,
        );
        scenes.push(SceneLayout { location_index, start_ms: scene_start_ms, end_ms: scene_end_ms, presences });
        scene_start_ms = scene_end_ms;
    }
    scenes
}

/// Who appears in this episode and for what share of it.
fn episode_cast_targets(season: &Season, rng: &mut ChaCha8Rng) -> Vec<EpisodeCastTarget> {
    let mut targets = Vec::new();
    for (cast_index, member) in season.cast.iter().enumerate() {
        let spec = cast_spec(&member.name);
        let is_main = member.screen_share >= MAIN_CAST_MIN_SHARE;
        let appearance_probability = spec.map_or(if is_main { 1.0 } else { 0.15 }, |s| s.appearance_probability);
        // Always draw, so one character's presence does not shift everyone else's randomness.
        let appears = chance(rng, appearance_probability);
        let variation = uniform(rng, -1.0, 1.0);
        if !appears {
            continue;
        }
        let share = if is_main {
            (member.screen_share + 0.07 * variation).clamp(0.3, 0.46)
        } else {
            (member.screen_share * (1.0 + 0.4 * variation)).clamp(0.02, 0.08)
        };
        targets.push(EpisodeCastTarget { cast_index, share, is_main, allowed_locations: spec.map_or(&[], |s| s.locations) });
    }
    targets
}

/// Picks the 2–5 characters of one scene and when each is on screen, steering everyone toward
/// their screen-time target: whoever is furthest behind is cast first. The first two main
/// characters together cover the whole scene (one hands over to the other, or one stays
/// throughout), so someone is always there to speak.
fn cast_scene(
    rng: &mut ChaCha8Rng,
    location_name: &str,
    scene_start_ms: u64,
    scene_end_ms: u64,
    episode_duration_ms: u64,
    targets: &[EpisodeCastTarget],
    on_screen_ms: &mut [u64],
) -> Vec<Presence> {
    let scene_ms = scene_end_ms - scene_start_ms;
    let scene_ms_f = scene_ms as f64;
    let mut ranked: Vec<(f64, usize, f64)> = Vec::with_capacity(targets.len());
    for (target_index, target) in targets.iter().enumerate() {
        let noise = uniform(rng, -0.15, 0.15) * scene_ms_f;
        let allowed = target.allowed_locations.is_empty() || target.allowed_locations.contains(&location_name);
        if !allowed {
            continue;
        }
        // Characters tied to a few places catch up on their whole share whenever they are there;
        // everyone else is paced through the episode.
        let due_by_ms = if target.allowed_locations.is_empty() { scene_end_ms } else { episode_duration_ms };
        let deficit_ms = target.share * due_by_ms as f64 - on_screen_ms[target_index] as f64;
        ranked.push((deficit_ms + noise, target_index, deficit_ms));
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

    // Who is in the scene: at least two main characters, then anyone far enough behind.
    let mut cast: Vec<(usize, f64)> = Vec::with_capacity(MAX_CAST_PER_SCENE);
    let mut mains_in_scene = 0;
    for (_, target_index, deficit_ms) in ranked {
        if cast.len() >= MAX_CAST_PER_SCENE {
            break;
        }
        let target = &targets[target_index];
        let mains_still_needed = MIN_CAST_PER_SCENE.saturating_sub(mains_in_scene);
        if !target.is_main && cast.len() + mains_still_needed >= MAX_CAST_PER_SCENE {
            continue;
        }
        let forced = target.is_main && mains_still_needed > 0;
        let join_threshold_ms = if target.is_main { 0.35 * scene_ms_f } else { (0.35 * scene_ms_f).min(GUEST_JOIN_DEFICIT_MAX_MS) };
        if !forced && deficit_ms <= join_threshold_ms {
            continue;
        }
        mains_in_scene += usize::from(target.is_main);
        cast.push((target_index, deficit_ms));
    }

    // The anchor (first main) stays as long as they are behind; if that is not the whole scene,
    // the relief (second main) covers the rest, overlapping long enough for any line.
    let mut mains = cast.iter().filter(|(target_index, _)| targets[*target_index].is_main);
    let anchor = mains.next().copied();
    let relief = mains.next().copied();
    let mut anchor_span = (scene_start_ms, scene_end_ms);
    let mut relief_span: Option<(u64, u64)> = None;
    if let (Some((_, anchor_deficit_ms)), Some(_)) = (anchor, relief) {
        let shortest_anchor_ms = (0.4 * scene_ms_f).max(RELAY_OVERLAP_MS as f64).min(scene_ms_f);
        let anchor_ms = (anchor_deficit_ms * uniform(rng, 0.8, 1.2)).clamp(shortest_anchor_ms, scene_ms_f) as u64;
        if anchor_ms + RELAY_OVERLAP_MS < scene_ms {
            let handover_ms = if chance(rng, 0.5) {
                anchor_span = (scene_start_ms, scene_start_ms + anchor_ms); // anchor leaves early
                relief_span = Some((scene_start_ms + anchor_ms - RELAY_OVERLAP_MS, scene_end_ms));
                scene_start_ms + anchor_ms
            } else {
                anchor_span = (scene_end_ms - anchor_ms, scene_end_ms); // anchor enters late
                relief_span = Some((scene_start_ms, scene_end_ms - anchor_ms + RELAY_OVERLAP_MS));
                scene_end_ms - anchor_ms
            };
            debug_assert!(handover_ms > scene_start_ms && handover_ms < scene_end_ms);
        }
    }

    let min_presence_ms = scene_ms.min(MIN_PRESENCE_MS);
    let mut presences: Vec<Presence> = Vec::with_capacity(cast.len());
    for (target_index, deficit_ms) in cast {
        let span = if Some(target_index) == anchor.map(|(index, _)| index) {
            anchor_span
        } else if let (Some(span), true) = (relief_span, Some(target_index) == relief.map(|(index, _)| index)) {
            span
        } else {
            // Stay about as long as it takes to catch up: a cameo for someone forced in while
            // ahead. Guests' short shares are not blurred further.
            let wanted_ms = if targets[target_index].is_main { deficit_ms * uniform(rng, 0.8, 1.2) } else { deficit_ms };
            let length_ms =
                if deficit_ms >= 0.9 * scene_ms_f { scene_ms } else { wanted_ms.clamp(min_presence_ms as f64, scene_ms_f) as u64 };
            let slack_ms = scene_ms - length_ms;
            let offset_ms = if slack_ms == 0 {
                0
            } else {
                match pick_weighted(rng, &[0.4, 0.4, 0.2]) {
                    0 => slack_ms, // enters late
                    1 => 0,        // leaves early
                    _ => uniform_ms(rng, 0, slack_ms),
                }
            };
            (scene_start_ms + offset_ms, scene_start_ms + offset_ms + length_ms)
        };
        presences.push(Presence { cast_index: targets[target_index].cast_index, start_ms: span.0, end_ms: span.1 });
        on_screen_ms[target_index] += span.1 - span.0;
    }
    presences
}

/// Contiguous shots of 2–8 s; every scene change is also a cut.
fn cut_shots(episode_seed: u64, scenes: &[SceneLayout]) -> Vec<(u64, u64)> {
    let mut rng = stream_rng(episode_seed, Stream::Shots);
    let mut shots = Vec::new();
    for scene in scenes {
        let scene_ms = scene.end_ms - scene.start_ms;
        let lengths_ms =
            if scene_ms >= SHOT_MIN_MS { partition_ms(&mut rng, scene_ms, SHOT_MIN_MS, SHOT_MAX_MS, SHOT_MAX_MS) } else { vec![scene_ms] };
        let mut start_ms = scene.start_ms;
        for length_ms in lengths_ms {
            shots.push((start_ms, start_ms + length_ms));
            start_ms += length_ms;
        }
    }
    shots
}

/// One `places` annotation per scene. Boundaries move together (a segmenter never leaves gaps),
/// so the scene annotations stay contiguous.
fn push_scene_drafts(season: &Season, episode: &EpisodeSpec, scenes: &[SceneLayout], drafts: &mut Vec<DraftAnnotation>) {
    let mut rng = stream_rng(episode.seed, Stream::Scenes);
    let dims = season.config.vector_dimensions;
    let centroids: Vec<Vec<f64>> = season
        .locations
        .iter()
        .map(|location| location_centroid(season.config.seed, &location.name, dims).into_iter().map(f64::from).collect())
        .collect();
    let mut boundaries_ms: Vec<u64> = Vec::with_capacity(scenes.len() + 1);
    boundaries_ms.push(0);
    for scene in &scenes[..scenes.len().saturating_sub(1)] {
        boundaries_ms.push(jitter_ms(&mut rng, scene.end_ms, SCENE_JITTER_MS, 0, episode.duration_ms));
    }
    boundaries_ms.push(episode.duration_ms);
    for (scene, bounds) in scenes.iter().zip(boundaries_ms.windows(2)) {
        let confidence = random_confidence(&mut rng, 0.7, 0.95);
        let cosine = uniform(&mut rng, 0.86, 0.94);
        let mut draft =
            DraftAnnotation::labelled(ModelKind::Places, bounds[0], bounds[1], confidence, &season.locations[scene.location_index].name);
        if dims > 0 {
            draft.vector = Some(noisy_unit_vector(&mut rng, &centroids[scene.location_index], cosine));
        }
        drafts.push(draft);
    }
}

/// Face detections covering every presence: split at most shot cuts (a tracker loses the face at
/// a cut), consecutive pieces overlapping by up to 2 × jitter, plus ~2 % short low-confidence
/// detections with a wrong name.
fn push_face_drafts(
    episode: &EpisodeSpec,
    scenes: &[SceneLayout],
    shots: &[(u64, u64)],
    cast_names: &[&str],
    drafts: &mut Vec<DraftAnnotation>,
) {
    let mut rng = stream_rng(episode.seed, Stream::Faces);
    let duration_ms = episode.duration_ms;
    let cut_times_ms: Vec<u64> = shots.iter().skip(1).map(|&(start_ms, _)| start_ms).collect();
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    for presence in scenes.iter().flat_map(|scene| &scene.presences) {
        pieces.clear();
        let mut piece_start_ms = presence.start_ms;
        let first_cut = cut_times_ms.partition_point(|&cut_ms| cut_ms < presence.start_ms + FACE_SEGMENT_MIN_MS);
        for &cut_ms in &cut_times_ms[first_cut..] {
            if cut_ms + FACE_SEGMENT_MIN_MS > presence.end_ms {
                break;
            }
            if cut_ms - piece_start_ms >= FACE_SEGMENT_MIN_MS && chance(&mut rng, FACE_SPLIT_AT_CUT_PROBABILITY) {
                pieces.push((piece_start_ms, cut_ms));
                piece_start_ms = cut_ms;
            }
        }
        pieces.push((piece_start_ms, presence.end_ms));

        let name = cast_names[presence.cast_index];
        for &(start_ms, end_ms) in &pieces {
            let detection_start_ms = if start_ms == presence.start_ms {
                jitter_ms(&mut rng, start_ms, FACE_JITTER_MS, 0, duration_ms)
            } else {
                start_ms - uniform_ms(&mut rng, 0, FACE_JITTER_MS)
            };
            let detection_end_ms = if end_ms == presence.end_ms {
                jitter_ms(&mut rng, end_ms, FACE_JITTER_MS, 0, duration_ms)
            } else {
                (end_ms + uniform_ms(&mut rng, 0, FACE_JITTER_MS)).min(duration_ms)
            };
            let confidence = random_confidence(&mut rng, 0.75, 0.99);
            drafts.push(DraftAnnotation::labelled(ModelKind::Faces, detection_start_ms, detection_end_ms, confidence, name));

            if chance(&mut rng, FACE_FALSE_POSITIVE_PROBABILITY) && cast_names.len() > 1 {
                let mut wrong_index = rng.gen_range(0..cast_names.len() as u64 - 1) as usize;
                if wrong_index >= presence.cast_index {
                    wrong_index += 1;
                }
                let false_start_ms = uniform_ms(&mut rng, detection_start_ms, detection_end_ms - 1);
                let false_end_ms = (false_start_ms + uniform_ms(&mut rng, 500, 2_000)).min(duration_ms);
                let false_confidence = random_confidence(&mut rng, 0.05, 0.35);
                if false_end_ms > false_start_ms {
                    drafts.push(DraftAnnotation::labelled(
                        ModelKind::Faces,
                        false_start_ms,
                        false_end_ms,
                        false_confidence,
                        cast_names[wrong_index],
                    ));
                }
            }
        }
    }
}

/// Objects really visible in each scene and their jittered detections, kept inside the scene.
/// Each object of the location's inventory (common ones more likely) is on the set for the whole
/// scene and comes in and out of frame: its glimpses never overlap one another. Returns the
/// truth, sorted by start.
fn push_object_drafts(
    season: &Season,
    episode: &EpisodeSpec,
    scenes: &[SceneLayout],
    drafts: &mut Vec<DraftAnnotation>,
) -> Vec<TruthInterval> {
    let mut rng = stream_rng(episode.seed, Stream::Objects);
    let mut truth = Vec::new();
    for scene in scenes {
        let objects = location_spec(&season.locations[scene.location_index].name).map_or(GENERIC_OBJECTS, |s| s.objects);
        for (rank, label) in objects.iter().enumerate() {
            let on_set = chance(&mut rng, (0.95 - 0.1 * rank as f64).max(0.3));
            let visible_fraction = uniform(&mut rng, OBJECT_VISIBLE_FRACTION_MIN, OBJECT_VISIBLE_FRACTION_MAX);
            if !on_set {
                continue;
            }
            let mut cursor_ms = scene.start_ms + uniform_ms(&mut rng, 0, 5_000);
            loop {
                // Mostly brief glimpses, sometimes a long hold.
                let shape = rng.gen::<f64>();
                let visible_ms =
                    (OBJECT_VISIBLE_MIN_MS as f64 + (OBJECT_VISIBLE_MAX_MS - OBJECT_VISIBLE_MIN_MS) as f64 * shape * shape) as u64;
                let end_ms = cursor_ms + visible_ms;
                if end_ms > scene.end_ms {
                    break;
                }
                truth.push(TruthInterval { label: label.to_string(), start_ms: cursor_ms, end_ms });
                let detection_start_ms = jitter_ms(&mut rng, cursor_ms, OBJECT_JITTER_MS, scene.start_ms, scene.end_ms);
                let detection_end_ms = jitter_ms(&mut rng, end_ms, OBJECT_JITTER_MS, scene.start_ms, scene.end_ms);
                let confidence = random_confidence(&mut rng, 0.5, 0.95);
                drafts.push(DraftAnnotation::labelled(ModelKind::Objects, detection_start_ms, detection_end_ms, confidence, label));
                let mean_gap_ms = visible_ms as f64 * (1.0 - visible_fraction) / visible_fraction;
                // The gap exceeds twice the jitter, so detections of one object never overlap.
                cursor_ms = end_ms + ((mean_gap_ms * uniform(&mut rng, 0.5, 1.5)) as u64).max(2 * OBJECT_JITTER_MS + 100);
            }
        }
    }
    truth.sort_by(|a, b| (a.start_ms, a.end_ms, &a.label).cmp(&(b.start_ms, b.end_ms, &b.label)));
    truth
}

/// Spoken lines, scene by scene: mostly one after another with short pauses, speakers taking
/// turns among whoever is on screen, 60–90 % of each scene's time covered by speech.
fn push_dialogue_drafts(
    season: &Season,
    episode: &EpisodeSpec,
    scenes: &[SceneLayout],
    cast_names: &[&str],
    drafts: &mut Vec<DraftAnnotation>,
) -> Vec<TruthLine> {
    let mut rng = stream_rng(episode.seed, Stream::Dialogue);
    let main_names: Vec<&str> =
        season.cast.iter().filter(|member| member.screen_share >= MAIN_CAST_MIN_SHARE).map(|member| member.name.as_str()).collect();
    let mut lines: Vec<TruthLine> = Vec::new();
    for scene in scenes {
        let location_name = season.locations[scene.location_index].name.as_str();
        let objects = location_spec(location_name).map_or(GENERIC_OBJECTS, |s| s.objects);
        let target_coverage = uniform(&mut rng, 0.66, 0.9);
        let mut cursor_ms = scene.start_ms + uniform_ms(&mut rng, 200, 2_000);
        let mut previous_speaker: Option<usize> = None;
        loop {
            // Candidates stay on screen for the longest possible line (or to the scene's end).
            let needed_until_ms = (cursor_ms + LINE_MAX_MS).min(scene.end_ms);
            let candidates: Vec<&Presence> =
                scene.presences.iter().filter(|p| p.start_ms <= cursor_ms && p.end_ms >= needed_until_ms).collect();
            if candidates.is_empty() {
                break;
            }
            // Turn-taking: the last speaker rarely goes again; guests say less than the main cast.
            let weights: Vec<f64> = candidates
                .iter()
                .map(|p| {
                    let turn_weight = if Some(p.cast_index) == previous_speaker && candidates.len() > 1 { 0.2 } else { 1.0 };
                    let role_weight = if main_names.contains(&cast_names[p.cast_index]) { 1.0 } else { 0.6 };
                    turn_weight * role_weight
                })
                .collect();
            let speaker_index = candidates[pick_weighted(&mut rng, &weights)].cast_index;
            let others_present: Vec<&str> = scene
                .presences
                .iter()
                .filter(|p| p.cast_index != speaker_index && p.start_ms <= cursor_ms && p.end_ms > cursor_ms)
                .map(|p| cast_names[p.cast_index])
                .collect();
            let context = LineContext {
                speaker: cast_names[speaker_index],
                others_present: &others_present,
                main_names: &main_names,
                location_name,
                objects,
            };
            let text = dialogue_text(&mut rng, &context);
            let word_count = text.split_whitespace().count() as f64;
            let words_per_second = uniform(&mut rng, SPEECH_WORDS_PER_SECOND_MIN, SPEECH_WORDS_PER_SECOND_MAX);
            let line_ms = ((word_count / words_per_second * 1_000.0) as u64 + 200).max(500);
            let line_end_ms = cursor_ms + line_ms;
            if line_end_ms + 100 > scene.end_ms {
                break;
            }
            let annotation_start_ms = jitter_ms(&mut rng, cursor_ms, ASR_JITTER_MS, scene.start_ms, cursor_ms + line_ms / 2);
            let annotation_end_ms = jitter_ms(&mut rng, line_end_ms, ASR_JITTER_MS, annotation_start_ms + 1, episode.duration_ms);
            let confidence = random_confidence(&mut rng, 0.8, 0.99);
            drafts.push(DraftAnnotation {
                kind: ModelKind::Asr,
                start_ms: annotation_start_ms,
                end_ms: annotation_end_ms,
                confidence,
                label: None,
                text: Some(text.clone()),
                vector: None,
                truth_line_index: Some(lines.len()),
            });
            lines.push(TruthLine {
                speaker: cast_names[speaker_index].to_string(),
                text,
                start_ms: cursor_ms,
                end_ms: line_end_ms,
                annotation_id: String::new(), // filled in once ids are numbered
            });
            previous_speaker = Some(speaker_index);

            // Pause long enough to land near the scene's speech coverage target.
            let mean_gap_ms = line_ms as f64 * (1.0 - target_coverage) / target_coverage;
            cursor_ms = if chance(&mut rng, INTERRUPTION_PROBABILITY) {
                // Someone cuts in before the line is quite over.
                line_end_ms - uniform_ms(&mut rng, 100, 300.min(line_ms / 2))
            } else {
                line_end_ms + ((mean_gap_ms * uniform(&mut rng, 0.5, 1.5)) as u64).max(100)
            };
        }
    }
    lines
}

struct LineContext<'a> {
    speaker: &'a str,
    others_present: &'a [&'a str],
    main_names: &'a [&'a str],
    location_name: &'a str,
    objects: &'a [&'static str],
}

/// One line of dialogue: sometimes a catchphrase, otherwise one to three sentences from the
/// templates, at most LINE_MAX_WORDS words.
fn dialogue_text(rng: &mut ChaCha8Rng, context: &LineContext) -> String {
    for spec in CATCHPHRASE_SPECS {
        let is_speaker = spec.speakers.contains(&context.speaker);
        let (probability, variants) =
            if is_speaker { (spec.speaker_probability, spec.speaker_variants) } else { (spec.other_probability, spec.other_variants) };
        // Draw even when the probability is 0 so the stream does not depend on who speaks.
        if chance(rng, probability) && !variants.is_empty() {
            let variant = pick_str(rng, variants);
            return fill_template(rng, variant, context);
        }
    }
    let own_templates = speaker_templates(context.speaker);
    let sentence_count = 1 + pick_weighted(rng, &[0.6, 0.3, 0.1]);
    let mut text = String::new();
    let mut word_count = 0;
    for _ in 0..sentence_count {
        let template = if chance(rng, 0.35) {
            pick_str(rng, INTERJECTIONS)
        } else if !own_templates.is_empty() && chance(rng, 0.25) {
            pick_str(rng, own_templates)
        } else {
            pick_str(rng, GENERAL_TEMPLATES)
        };
        let sentence = fill_template(rng, template, context);
        let sentence_words = sentence.split_whitespace().count();
        if word_count > 0 && word_count + sentence_words > LINE_MAX_WORDS {
            break;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&sentence);
        word_count += sentence_words;
    }
    text
}

/// Replaces `{slot}`s: other (someone else, preferably on screen), main, place, object, topic,
/// food, time, feeling, activity, location (the current scene's).
fn fill_template(rng: &mut ChaCha8Rng, template: &str, context: &LineContext) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let slot = &rest[open + 1..open + close];
        match slot {
            "other" => out.push_str(other_character(rng, context)),
            "main" => out.push_str(pick_str(rng, context.main_names)),
            "place" => out.push_str(pick_str(rng, PLACES)),
            "object" => {
                if chance(rng, 0.7) {
                    out.push_str(pick_str(rng, context.objects))
                } else {
                    let elsewhere = pick(rng, LOCATION_SPECS).objects;
                    out.push_str(pick_str(rng, elsewhere))
                }
            }
            "topic" => out.push_str(pick_str(rng, TOPICS)),
            "food" => out.push_str(pick_str(rng, FOODS)),
            "time" => out.push_str(pick_str(rng, TIMES)),
            "feeling" => out.push_str(pick_str(rng, FEELINGS)),
            "activity" => out.push_str(pick_str(rng, ACTIVITIES)),
            "location" => out.push_str(context.location_name),
            unknown => {
                debug_assert!(false, "unknown template slot {unknown:?}");
                out.push_str(unknown);
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn other_character<'a>(rng: &mut ChaCha8Rng, context: &LineContext<'a>) -> &'a str {
    if !context.others_present.is_empty() && chance(rng, 0.7) {
        return pick_str(rng, context.others_present);
    }
    let others: Vec<&'a str> = context.main_names.iter().copied().filter(|name| *name != context.speaker).collect();
    if others.is_empty() {
        return context.speaker;
    }
    pick_str(rng, &others)
}

// ---------------------------------------------------------------------------------------------
// Writing a season
// ---------------------------------------------------------------------------------------------

/// The wire form of an annotation: absent optional fields are omitted rather than written as
/// null, as a model would send them.
#[derive(Serialize)]
struct WireAnnotation<'a> {
    id: &'a str,
    asset_id: &'a str,
    model: &'a str,
    model_version: &'a str,
    track: &'a str,
    start_ms: u64,
    end_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector_space: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<&'a [f64]>,
}

impl<'a> From<&'a Annotation> for WireAnnotation<'a> {
    fn from(a: &'a Annotation) -> Self {
        WireAnnotation {
            id: &a.id,
            asset_id: &a.asset_id,
            model: &a.model,
            model_version: &a.model_version,
            track: &a.track,
            start_ms: a.start_ms,
            end_ms: a.end_ms,
            confidence: a.confidence,
            label: a.label.as_deref(),
            text: a.text.as_deref(),
            language: a.language.as_deref(),
            vector_space: a.vector_space.as_deref(),
            vector: a.vector.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct AssetLine<'a> {
    asset_id: &'a str,
    #[serde(flatten)]
    record: AssetRecord,
}

/// Serializes `annotation` as one NDJSON line (no trailing newline), omitting absent fields.
pub fn annotation_json(annotation: &Annotation) -> String {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_string(&WireAnnotation::from(annotation)).unwrap_or_default()
}

struct CountingWriter<W: Write> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn create_ndjson(path: &Path) -> io::Result<CountingWriter<BufWriter<File>>> {
    let file = File::create(path)?;
    Ok(CountingWriter { inner: BufWriter::with_capacity(1 << 20, file), bytes: 0 })
}

fn write_json_line<W: Write, T: Serialize + ?Sized>(writer: &mut W, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *writer, value)?;
    writer.write_all(b"\n")
}

/// Writes `assets.ndjson`, `annotations.ndjson` and `truth.ndjson` into `out_dir` (created if
/// missing), one episode at a time so memory stays flat however many hours are asked for.
pub fn write_season(config: &GenConfig, out_dir: &Path, progress: &mut dyn FnMut(usize, usize)) -> io::Result<GenSummary> {
    std::fs::create_dir_all(out_dir)?;
    let season = plan_season(config);
    let mut assets = create_ndjson(&out_dir.join("assets.ndjson"))?;
    let mut annotations = create_ndjson(&out_dir.join("annotations.ndjson"))?;
    let mut truth = create_ndjson(&out_dir.join("truth.ndjson"))?;
    let total_episodes = season.episodes.len();
    let mut annotation_count: u64 = 0;
    for (done, spec) in season.episodes.iter().enumerate() {
        let episode = generate_episode(&season, spec);
        write_json_line(&mut assets, &AssetLine { asset_id: &spec.asset_id, record: asset_record(spec) })?;
        for annotation in &episode.annotations {
            write_json_line(&mut annotations, &WireAnnotation::from(annotation))?;
        }
        write_json_line(&mut truth, &episode.truth)?;
        annotation_count += episode.annotations.len() as u64;
        progress(done + 1, total_episodes);
    }
    assets.flush()?;
    annotations.flush()?;
    truth.flush()?;
    Ok(GenSummary {
        episodes: total_episodes,
        annotations: annotation_count,
        hours: season.total_duration_ms as f64 / MS_PER_HOUR,
        bytes: assets.bytes + annotations.bytes + truth.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::time::Instant;

    const MAIN_NAMES: [&str; 6] = ["Joey", "Monica", "Rachel", "Ross", "Chandler", "Phoebe"];

    fn season_of(hours: f64) -> Season {
        plan_season(&GenConfig { hours, ..GenConfig::default() })
    }

    fn generate_all(season: &Season) -> Vec<Episode> {
        season.episodes.iter().map(|spec| generate_episode(season, spec)).collect()
    }

    fn scratch_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rushes-gen-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn cosine(a: &[f64], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm_a = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let norm_b = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (norm_a * norm_b)
    }

    fn overlaps(a_start: u64, a_end: u64, b_start: u64, b_end: u64) -> bool {
        a_start < b_end && b_start < a_end
    }

    fn shares_by_name(truth: &EpisodeTruth) -> HashMap<String, f64> {
        let mut on_screen_ms: HashMap<String, u64> = HashMap::new();
        for interval in &truth.characters {
            *on_screen_ms.entry(interval.label.clone()).or_insert(0) += interval.end_ms - interval.start_ms;
        }
        on_screen_ms.into_iter().map(|(name, ms)| (name, ms as f64 / truth.duration_ms as f64)).collect()
    }

    #[test]
    fn same_config_writes_identical_files() {
        let config = GenConfig { hours: 0.8, seed: 7, vector_dimensions: 64 };
        let first_dir = scratch_dir("first");
        let second_dir = scratch_dir("second");
        let mut calls = Vec::new();
        let first = write_season(&config, &first_dir, &mut |done, total| calls.push((done, total))).unwrap();
        let second = write_season(&config, &second_dir, &mut |_, _| {}).unwrap();
        assert_eq!(first, second);
        assert!(first.episodes >= 2, "{first:?}");
        assert_eq!(calls.last(), Some(&(first.episodes, first.episodes)));
        assert_eq!(calls.len(), first.episodes);
        let mut bytes = 0;
        for file in ["assets.ndjson", "annotations.ndjson", "truth.ndjson"] {
            let a = std::fs::read(first_dir.join(file)).unwrap();
            let b = std::fs::read(second_dir.join(file)).unwrap();
            assert!(a == b, "{file} differs between runs");
            bytes += a.len() as u64;
        }
        assert_eq!(first.bytes, bytes);

        let annotations = std::fs::read_to_string(first_dir.join("annotations.ndjson")).unwrap();
        assert_eq!(annotations.lines().count() as u64, first.annotations);
        let assets = std::fs::read_to_string(first_dir.join("assets.ndjson")).unwrap();
        assert_eq!(assets.lines().count(), first.episodes);
        let asset: serde_json::Value = serde_json::from_str(assets.lines().next().unwrap()).unwrap();
        assert_eq!(asset["asset_id"], "s01e01");
        assert_eq!(asset["series"], SERIES_NAME);
        // The rest of the line is a valid AssetRecord (which rejects unknown fields).
        let mut record = asset.as_object().unwrap().clone();
        record.remove("asset_id");
        let record: AssetRecord = serde_json::from_value(serde_json::Value::Object(record)).unwrap();
        assert_eq!(record.fps, Some(EPISODE_FPS));
        let truth = std::fs::read_to_string(first_dir.join("truth.ndjson")).unwrap();
        let truths: Vec<EpisodeTruth> = truth.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(truths.len(), first.episodes);
        assert_eq!(truths[1].asset_id, "s01e02");
        // Annotations are in episode order, each episode sorted by start.
        let mut previous: Option<(String, u64)> = None;
        for line in annotations.lines() {
            let a: Annotation = serde_json::from_str(line).unwrap();
            if let Some((asset_id, start_ms)) = &previous {
                if *asset_id == a.asset_id {
                    assert!(*start_ms <= a.start_ms);
                } else {
                    assert!(*asset_id < a.asset_id);
                }
            }
            previous = Some((a.asset_id.clone(), a.start_ms));
        }
        let _ = std::fs::remove_dir_all(&first_dir);
        let _ = std::fs::remove_dir_all(&second_dir);
    }

    #[test]
    fn generating_twice_gives_the_same_episode() {
        let season = season_of(1.0);
        let a = generate_episode(&season, &season.episodes[0]);
        let b = generate_episode(&season, &season.episodes[0]);
        assert_eq!(a.annotations, b.annotations);
        assert_eq!(a.truth, b.truth);
        let other_seed = plan_season(&GenConfig { seed: 43, ..season.config.clone() });
        let c = generate_episode(&other_seed, &other_seed.episodes[0]);
        assert_ne!(a.truth, c.truth);
    }

    #[test]
    fn episode_k_does_not_depend_on_hours() {
        let short = season_of(1.0);
        let long = season_of(10.0);
        assert!(short.episodes.len() >= 2 && long.episodes.len() > short.episodes.len());
        for (k, spec) in short.episodes.iter().enumerate() {
            assert_eq!(spec, &long.episodes[k]);
            let from_short = generate_episode(&short, spec);
            let from_long = generate_episode(&long, &long.episodes[k]);
            assert_eq!(from_short.annotations, from_long.annotations);
            assert_eq!(from_short.truth, from_long.truth);
        }
    }

    #[test]
    fn character_detections_follow_the_truth() {
        let season = season_of(12.0);
        let mut detections = 0usize;
        let mut false_positives = 0usize;
        for episode in generate_all(&season) {
            let mut truth_by_name: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
            for t in &episode.truth.characters {
                truth_by_name.entry(t.label.as_str()).or_default().push((t.start_ms, t.end_ms));
            }
            let mut confident_by_name: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
            for a in episode.annotations.iter().filter(|a| a.track == "character") {
                assert_eq!((a.model.as_str(), a.model_version.as_str()), ("faces", "2.1"));
                let confidence = a.confidence.unwrap();
                let name = a.label.as_deref().unwrap();
                detections += 1;
                if confidence < 0.5 {
                    false_positives += 1;
                    assert!((0.05..=0.35).contains(&confidence));
                    assert!((500..=2_000).contains(&(a.end_ms - a.start_ms)) || a.end_ms == episode.truth.duration_ms);
                    continue;
                }
                assert!((0.75..=0.99).contains(&confidence));
                let spans = truth_by_name.get(name).unwrap_or_else(|| panic!("{name} detected but never on screen"));
                assert!(spans.iter().any(|&(s, e)| overlaps(a.start_ms, a.end_ms, s, e)), "{a:?} matches no presence of {name}");
                assert!(
                    spans.iter().any(|&(s, e)| a.start_ms + FACE_JITTER_MS >= s && a.end_ms <= e + FACE_JITTER_MS),
                    "{a:?} strays more than the jitter from every presence"
                );
                confident_by_name.entry(name).or_default().push((a.start_ms, a.end_ms));
            }
            // No holes: the detections of a presence cover it, give or take the jitter at its ends.
            for (name, spans) in &truth_by_name {
                let mut detected = confident_by_name.get(name).cloned().unwrap_or_default();
                let merged = merge_spans(&mut detected);
                for &(s, e) in spans {
                    let (inner_start, inner_end) = (s + FACE_JITTER_MS, e - FACE_JITTER_MS);
                    assert!(
                        merged.iter().any(|&(ms, me)| ms <= inner_start && me >= inner_end),
                        "{name} [{s}, {e}) has a hole in {}",
                        episode.truth.asset_id
                    );
                }
            }
        }
        let false_positive_rate = false_positives as f64 / detections as f64;
        assert!((0.01..=0.03).contains(&false_positive_rate), "false positive rate {false_positive_rate}");
    }

    #[test]
    fn dialogue_truth_matches_annotations() {
        let season = season_of(6.0);
        for episode in generate_all(&season) {
            let by_id: HashMap<&str, &Annotation> = episode.annotations.iter().map(|a| (a.id.as_str(), a)).collect();
            let asr_count = episode.annotations.iter().filter(|a| a.model == "asr").count();
            assert_eq!(asr_count, episode.truth.dialogue.len());
            let mut speech_ms = 0;
            let mut words = 0usize;
            for line in &episode.truth.dialogue {
                let a = by_id.get(line.annotation_id.as_str()).unwrap_or_else(|| panic!("no annotation {}", line.annotation_id));
                assert!(line.annotation_id.starts_with(&format!("asr-{}-", episode.truth.asset_id)));
                assert_eq!(a.text.as_deref(), Some(line.text.as_str()));
                assert_eq!((a.track.as_str(), a.language.as_deref(), a.model_version.as_str()), ("dialogue", Some("en"), "3"));
                assert!((0.8..=0.99).contains(&a.confidence.unwrap()));
                assert!(a.start_ms.abs_diff(line.start_ms) <= ASR_JITTER_MS && a.end_ms.abs_diff(line.end_ms) <= ASR_JITTER_MS);
                assert!(
                    episode
                        .truth
                        .characters
                        .iter()
                        .any(|c| c.label == line.speaker && c.start_ms <= line.start_ms && c.end_ms >= line.end_ms),
                    "{} speaks while off screen: {line:?}",
                    line.speaker
                );
                speech_ms += line.end_ms - line.start_ms;
                words += line.text.split_whitespace().count();
            }
            let coverage = speech_ms as f64 / episode.truth.duration_ms as f64;
            assert!((0.6..=0.9).contains(&coverage), "speech covers {coverage} of {}", episode.truth.asset_id);
            let words_per_second = words as f64 / (speech_ms as f64 / 1000.0);
            assert!((2.0..=2.8).contains(&words_per_second), "{words_per_second} words/s");
            // Lines run one after another, with the odd interruption.
            let overlapping = episode.truth.dialogue.windows(2).filter(|w| w[1].start_ms < w[0].end_ms).count();
            assert!(overlapping as f64 <= 0.08 * episode.truth.dialogue.len() as f64);
            for scene in &episode.truth.scenes {
                let spoken_ms: u64 = episode
                    .truth
                    .dialogue
                    .iter()
                    .filter(|l| l.start_ms >= scene.start_ms && l.start_ms < scene.end_ms)
                    .map(|l| {
                        assert!(l.end_ms <= scene.end_ms, "a line runs past its scene");
                        l.end_ms - l.start_ms
                    })
                    .sum();
                let scene_coverage = spoken_ms as f64 / (scene.end_ms - scene.start_ms) as f64;
                assert!((0.4..=1.0).contains(&scene_coverage), "scene coverage {scene_coverage}");
            }
        }
    }

    #[test]
    fn planning_2000_hours_is_fast() {
        let started = Instant::now();
        let season = season_of(2000.0);
        let elapsed = started.elapsed();
        eprintln!("planned {} episodes for 2000 h in {:?}", season.episodes.len(), elapsed);
        assert!(elapsed.as_secs_f64() < 1.0, "planning took {elapsed:?}");
        assert!((3_500..=5_000).contains(&season.episodes.len()), "{} episodes", season.episodes.len());
        let hours = season.total_duration_ms as f64 / MS_PER_HOUR;
        assert!((2000.0..2001.0).contains(&hours), "{hours} hours");
        let ids: HashSet<&str> = season.episodes.iter().map(|e| e.asset_id.as_str()).collect();
        assert_eq!(ids.len(), season.episodes.len());
        let last = season.episodes.last().unwrap();
        assert_eq!(last.season, (season.episodes.len() as u32 - 1) / EPISODES_PER_SEASON + 1);
    }

    #[test]
    fn episodes_are_numbered_and_timed_like_a_series() {
        let season = season_of(40.0);
        assert_eq!(season_of(0.0).episodes.len(), 1);
        assert_eq!(season_of(f64::NAN).episodes.len(), 1);
        assert_eq!(season.episodes[0].asset_id, "s01e01");
        assert_eq!(season.episodes[23].asset_id, "s01e24");
        assert_eq!((season.episodes[24].asset_id.as_str(), season.episodes[24].season, season.episodes[24].episode), ("s02e01", 2, 1));
        let mut long = 0;
        for spec in &season.episodes {
            assert!((SHORT_EPISODE_MIN_MS..=LONG_EPISODE_MAX_MS).contains(&spec.duration_ms));
            assert!(spec.title.starts_with("The One "), "{}", spec.title);
            assert_eq!(spec.series, "central-perk");
            assert_eq!(spec.fps, 23.976);
            if spec.duration_ms >= LONG_EPISODE_MIN_MS {
                long += 1;
            }
        }
        assert!(long > 0 && long < season.episodes.len());
        let titles: HashSet<&str> = season.episodes.iter().map(|e| e.title.as_str()).collect();
        assert!(titles.len() * 10 >= season.episodes.len() * 8, "titles repeat too often");
        let record = asset_record(&season.episodes[3]);
        assert_eq!(record.episode, Some(4));
        assert_eq!(record.duration_ms, Some(season.episodes[3].duration_ms));
    }

    #[test]
    fn screen_time_shares_are_realistic() {
        let season = season_of(24.0);
        assert!(season.episodes.len() >= 40);
        let mut guest_episodes: HashMap<String, usize> = HashMap::new();
        for episode in generate_all(&season) {
            let shares = shares_by_name(&episode.truth);
            for name in MAIN_NAMES {
                let share = shares.get(name).copied().unwrap_or(0.0);
                assert!((0.25..=0.50).contains(&share), "{name} on screen {share} of {}", episode.truth.asset_id);
            }
            for (name, share) in &shares {
                if MAIN_NAMES.contains(&name.as_str()) {
                    continue;
                }
                *guest_episodes.entry(name.clone()).or_insert(0) += 1;
                assert!((0.01..=0.09).contains(share), "guest {name} on screen {share} of {}", episode.truth.asset_id);
            }
            for scene in &episode.truth.scenes {
                let in_scene: HashSet<&str> = episode
                    .truth
                    .characters
                    .iter()
                    .filter(|c| c.start_ms >= scene.start_ms && c.end_ms <= scene.end_ms)
                    .map(|c| c.label.as_str())
                    .collect();
                assert!(
                    (2..=5).contains(&in_scene.len()),
                    "{} characters in {scene:?} of {}: {:?}",
                    in_scene.len(),
                    episode.truth.asset_id,
                    episode
                        .truth
                        .characters
                        .iter()
                        .filter(|c| c.start_ms >= scene.start_ms && c.end_ms <= scene.end_ms)
                        .collect::<Vec<_>>()
                );
            }
        }
        for guest in ["Gunther", "Janice", "Zeb"] {
            let count = guest_episodes.get(guest).copied().unwrap_or(0);
            assert!(count > 0 && count < season.episodes.len(), "{guest} appears in {count} episodes");
        }
    }

    #[test]
    fn annotations_are_valid_model_outputs() {
        let season = season_of(3.0);
        let limits = rushes_protocol::validate::IngestLimits::default();
        assert_eq!(season.config.vector_dimensions, 512);
        let centroids: HashMap<&str, Vec<f64>> = season
            .locations
            .iter()
            .map(|l| (l.name.as_str(), location_centroid(season.config.seed, &l.name, 512).into_iter().map(f64::from).collect()))
            .collect();
        for (spec, episode) in season.episodes.iter().zip(generate_all(&season)) {
            let truth = &episode.truth;
            let mut ids = HashSet::new();
            let mut previous_start_ms = 0;
            for a in &episode.annotations {
                assert!(ids.insert(a.id.as_str()), "duplicate id {}", a.id);
                assert!(a.id.starts_with(&format!("{}-{}-", a.model, spec.asset_id)));
                assert_eq!(a.asset_id, spec.asset_id);
                assert!(a.start_ms < a.end_ms && a.end_ms <= spec.duration_ms, "{a:?}");
                assert!(a.start_ms >= previous_start_ms, "not sorted by start");
                previous_start_ms = a.start_ms;
                let confidence = a.confidence.unwrap();
                assert!(confidence.is_finite() && (0.0..=1.0).contains(&confidence));
                let parsed =
                    rushes_protocol::validate::parse_annotation(&annotation_json(a), &limits).unwrap_or_else(|e| panic!("{e:?} for {a:?}"));
                assert_eq!(&parsed, a);
                match a.track.as_str() {
                    "scene" => {
                        assert_eq!((a.model.as_str(), a.model_version.as_str()), ("places", "1.0"));
                        assert!((0.7..=0.95).contains(&confidence));
                        assert_eq!(a.vector_space.as_deref(), Some("scene"));
                        let vector = a.vector.as_ref().unwrap();
                        assert_eq!(vector.len(), 512);
                        assert!(vector.iter().all(|x| x.is_finite()));
                        let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
                        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
                        let similarity = cosine(vector, &centroids[a.label.as_deref().unwrap()]);
                        assert!((0.85..=0.95).contains(&similarity), "similarity {similarity}");
                    }
                    "object" => {
                        assert_eq!((a.model.as_str(), a.model_version.as_str()), ("objects", "5"));
                        assert!((0.5..=0.95).contains(&confidence));
                        assert!((1_000..=10_000).contains(&(a.end_ms - a.start_ms)), "{a:?}");
                        let scene = truth.scenes.iter().find(|s| s.start_ms <= a.start_ms && a.end_ms <= s.end_ms);
                        let scene = scene.unwrap_or_else(|| panic!("object detection {a:?} crosses a scene cut"));
                        let objects = location_spec(&scene.label).unwrap().objects;
                        assert!(objects.contains(&a.label.as_deref().unwrap()));
                    }
                    "shot" => {
                        assert_eq!((a.model.as_str(), a.label.as_deref()), ("shots", Some("shot")));
                    }
                    "character" | "dialogue" => {}
                    other => panic!("unexpected track {other}"),
                }
                assert!(a.vector.is_none() || a.track == "scene");
            }

            // Every presence lies inside one scene and lasts at least 8 s.
            for presence in &truth.characters {
                assert!(presence.start_ms < presence.end_ms);
                assert!(presence.end_ms - presence.start_ms >= MIN_PRESENCE_MS, "{presence:?}");
                assert!(
                    truth.scenes.iter().any(|s| s.start_ms <= presence.start_ms && presence.end_ms <= s.end_ms),
                    "{presence:?} crosses a scene cut"
                );
            }
            // Truth scenes and shots are contiguous and cover the episode; scenes 30 s–4 min, shots 2–8 s.
            assert_eq!(truth.scenes.first().unwrap().start_ms, 0);
            assert_eq!(truth.scenes.last().unwrap().end_ms, spec.duration_ms);
            for pair in truth.scenes.windows(2) {
                assert_eq!(pair[0].end_ms, pair[1].start_ms);
                assert_ne!(pair[0].label, pair[1].label);
            }
            for scene in &truth.scenes {
                assert!((SCENE_MIN_MS..=SCENE_MAX_MS).contains(&(scene.end_ms - scene.start_ms)));
            }
            assert_eq!(truth.shots.first().unwrap().0, 0);
            assert_eq!(truth.shots.last().unwrap().1, spec.duration_ms);
            for pair in truth.shots.windows(2) {
                assert_eq!(pair[0].1, pair[1].0);
            }
            for &(s, e) in &truth.shots {
                assert!((SHOT_MIN_MS..=SHOT_MAX_MS).contains(&(e - s)));
            }
            let shot_annotations: Vec<(u64, u64)> =
                episode.annotations.iter().filter(|a| a.track == "shot").map(|a| (a.start_ms, a.end_ms)).collect();
            assert_eq!(shot_annotations, truth.shots);
            // Scene annotations are contiguous, each boundary within the jitter of the true cut.
            let scene_annotations: Vec<&Annotation> = episode.annotations.iter().filter(|a| a.track == "scene").collect();
            assert_eq!(scene_annotations.len(), truth.scenes.len());
            for (a, t) in scene_annotations.iter().zip(&truth.scenes) {
                assert_eq!(a.label.as_ref(), Some(&t.label));
                assert!(a.start_ms.abs_diff(t.start_ms) <= SCENE_JITTER_MS && a.end_ms.abs_diff(t.end_ms) <= SCENE_JITTER_MS);
            }
            for pair in scene_annotations.windows(2) {
                assert_eq!(pair[0].end_ms, pair[1].start_ms);
            }
            // Objects: truth matches detections one to one, glimpses of one object never overlap.
            assert_eq!(truth.objects.len(), episode.annotations.iter().filter(|a| a.track == "object").count());
            let mut last_end_by_label: HashMap<&str, u64> = HashMap::new();
            for object in &truth.objects {
                if let Some(&last_end_ms) = last_end_by_label.get(object.label.as_str()) {
                    assert!(object.start_ms >= last_end_ms, "{} overlaps itself", object.label);
                }
                last_end_by_label.insert(object.label.as_str(), object.end_ms);
            }
        }
    }

    #[test]
    fn annotation_rate_is_realistic() {
        let season = season_of(12.0);
        let started = Instant::now();
        let episodes = generate_all(&season);
        let per_episode = started.elapsed() / season.episodes.len() as u32;
        let count: usize = episodes.iter().map(|e| e.annotations.len()).sum();
        let hours = season.total_duration_ms as f64 / MS_PER_HOUR;
        let per_hour = count as f64 / hours;
        eprintln!("{per_hour:.0} annotations per hour, {per_episode:?} per episode");
        assert!((4_000.0..=7_000.0).contains(&per_hour), "{per_hour} annotations per hour");
        let mut by_track: HashMap<&str, usize> = HashMap::new();
        for a in episodes.iter().flat_map(|e| &e.annotations) {
            *by_track.entry(a.track.as_str()).or_insert(0) += 1;
        }
        for track in ["character", "scene", "object", "dialogue", "shot"] {
            assert!(by_track.get(track).copied().unwrap_or(0) > 0, "no {track} annotations");
        }
    }

    #[test]
    fn zero_dimensions_leaves_scenes_without_vectors() {
        let season = plan_season(&GenConfig { hours: 0.1, seed: 1, vector_dimensions: 0 });
        let episode = generate_episode(&season, &season.episodes[0]);
        let scenes: Vec<&Annotation> = episode.annotations.iter().filter(|a| a.track == "scene").collect();
        assert!(!scenes.is_empty());
        assert!(scenes.iter().all(|a| a.vector.is_none() && a.vector_space.is_none() && a.label.is_some()));
    }

    fn handmade_truth() -> EpisodeTruth {
        let interval = |label: &str, start_ms, end_ms| TruthInterval { label: label.to_string(), start_ms, end_ms };
        let line = |speaker: &str, text: &str, start_ms| TruthLine {
            speaker: speaker.to_string(),
            text: text.to_string(),
            start_ms,
            end_ms: start_ms + 2_000,
            annotation_id: format!("asr-x-{start_ms}"),
        };
        EpisodeTruth {
            asset_id: "x".into(),
            duration_ms: 10_000,
            characters: vec![
                interval("Joey", 0, 2_400),     // buckets 0, 1 full; 2 covered 400 ms
                interval("Joey", 2_400, 2_600), // together with the above, bucket 2 covers 600 ms
                interval("Ross", 4_600, 5_400), // bucket 4 400 ms, bucket 5 400 ms: neither counts
                interval("Ross", 7_000, 7_500), // exactly half of bucket 7
            ],
            scenes: vec![interval("kitchen", 0, 6_000), interval("street", 6_000, 10_000)],
            objects: vec![interval("taxi", 6_500, 9_000)],
            dialogue: vec![
                line("Joey", "Hey. How you doin'?", 0),
                line("Ross", "We were on a break!", 3_000),
                line("Rachel", "They don't know that we know.", 6_000),
                line("Chandler", "How are you doing?", 8_000),
            ],
            shots: vec![(0, 5_000), (5_000, 10_000)],
        }
    }

    #[test]
    fn seconds_where_counts_buckets_at_least_half_covered() {
        let truth = handmade_truth();
        assert_eq!(truth.seconds_where("character", "Joey", 1_000), BTreeSet::from([0, 1, 2]));
        assert_eq!(truth.seconds_where("character", "Ross", 1_000), BTreeSet::from([7]));
        assert_eq!(truth.seconds_where("character", "Joey", 2_000), BTreeSet::from([0]));
        assert!(truth.seconds_where("character", "Ross", 2_000).is_empty());
        assert_eq!(truth.seconds_where("scene", "kitchen", 1_000), (0..6).collect());
        assert_eq!(truth.seconds_where("scene", "street", 1_000), (6..10).collect());
        assert_eq!(truth.seconds_where("object", "taxi", 1_000), BTreeSet::from([6, 7, 8]));
        assert_eq!(truth.seconds_where("dialogue", "Ross", 1_000), BTreeSet::from([3, 4]));
        assert!(truth.seconds_where("character", "Phoebe", 1_000).is_empty());
        assert!(truth.seconds_where("weather", "rain", 1_000).is_empty());
        assert!(truth.seconds_where("character", "Joey", 0).is_empty());
    }

    #[test]
    fn lines_containing_ignores_case_and_punctuation() {
        let truth = handmade_truth();
        let speakers = |phrase: &str| truth.lines_containing(phrase).iter().map(|l| l.speaker.clone()).collect::<Vec<_>>();
        assert_eq!(speakers("how you doin"), ["Joey"]);
        assert_eq!(speakers("HOW YOU DOIN'"), ["Joey"]);
        assert_eq!(speakers("we were on a break"), ["Ross"]);
        assert_eq!(speakers("they don't know that we know"), ["Rachel"]);
        assert_eq!(speakers("they dont know"), ["Rachel"]);
        assert_eq!(speakers("how"), ["Joey", "Chandler"]);
        assert!(speakers("on a break we were").is_empty());
        assert!(speakers("doin how").is_empty());
        assert!(speakers("  ?! ").is_empty());
    }

    #[test]
    fn catchphrases_are_rare_and_in_character() {
        let season = season_of(40.0);
        let mut total_lines = 0usize;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut sample_text = String::new();
        let mut vocabulary: HashSet<String> = HashSet::new();
        for episode in generate_all(&season) {
            total_lines += episode.truth.dialogue.len();
            for line in &episode.truth.dialogue {
                vocabulary.extend(normalized_words(&line.text));
            }
            for phrase in CATCHPHRASES {
                let lines = episode.truth.lines_containing(phrase);
                *counts.entry(phrase).or_insert(0) += lines.len();
                for line in lines {
                    let expected: &[&str] = match *phrase {
                        "we were on a break" => &["Ross"],
                        "how you doin" => &["Joey"],
                        "smelly cat" => &["Phoebe"],
                        "they don't know that we know" => &["Phoebe", "Chandler", "Monica", "Rachel"],
                        _ => &[],
                    };
                    assert!(expected.is_empty() || expected.contains(&line.speaker.as_str()), "{line:?}");
                    if sample_text.len() < 2_000 {
                        sample_text.push_str(&format!("{}: {}\n", line.speaker, line.text));
                    }
                }
            }
        }
        eprintln!("{total_lines} lines, {} distinct words, catchphrases {counts:?}", vocabulary.len());
        for phrase in CATCHPHRASES {
            let count = counts[phrase];
            assert!(count >= 2, "{phrase:?} said {count} times in {} episodes", season.episodes.len());
            assert!((count as f64) < 0.01 * total_lines as f64, "{phrase:?} is too common: {count} of {total_lines}");
        }
        assert!(vocabulary.len() >= 600, "only {} distinct words", vocabulary.len());
    }

    /// Diagnostics for humans: `cargo test --release -- --ignored --nocapture print_statistics`.
    #[test]
    #[ignore]
    fn print_statistics() {
        let season = season_of(24.0);
        let started = Instant::now();
        let mut per_track: BTreeMap<String, u64> = BTreeMap::new();
        for spec in &season.episodes {
            for a in generate_episode(&season, spec).annotations {
                *per_track.entry(a.track).or_insert(0) += 1;
            }
        }
        let per_episode = started.elapsed() / season.episodes.len() as u32;
        let hours = season.total_duration_ms as f64 / MS_PER_HOUR;
        let total: u64 = per_track.values().sum();
        eprintln!(
            "{} episodes, {hours:.2} h, {per_episode:?} per episode, {:.0} annotations per hour",
            season.episodes.len(),
            total as f64 / hours
        );
        for (track, count) in per_track {
            eprintln!("  {track}: {:.0} per hour", count as f64 / hours);
        }
        let dir = scratch_dir("statistics");
        let started = Instant::now();
        let summary = write_season(&season.config, &dir, &mut |_, _| {}).unwrap();
        eprintln!("write_season: {summary:?} in {:?}, {:.1} MB per hour", started.elapsed(), summary.bytes as f64 / summary.hours / 1e6);
        let _ = std::fs::remove_dir_all(&dir);
        let episode = generate_episode(&season, &season.episodes[0]);
        for line in episode.truth.dialogue.iter().take(25) {
            eprintln!("  [{:>7}-{:>7}] {:>8}: {}", line.start_ms, line.end_ms, line.speaker, line.text);
        }
    }

    /// Diagnostics for humans: screen-time shares over 200 hours.
    #[test]
    #[ignore]
    fn share_spread() {
        let season = season_of(200.0);
        let mut spread: BTreeMap<String, (f64, f64, f64, usize)> = BTreeMap::new();
        for episode in generate_all(&season) {
            for (name, share) in shares_by_name(&episode.truth) {
                let entry = spread.entry(name).or_insert((1.0, 0.0, 0.0, 0));
                entry.0 = entry.0.min(share);
                entry.1 = entry.1.max(share);
                entry.2 += share;
                entry.3 += 1;
            }
        }
        for (name, (low, high, sum, n)) in spread {
            eprintln!("{name:>10}: min {low:.3} max {high:.3} mean {:.3} in {n} episodes", sum / n as f64);
        }
    }

    #[test]
    fn cast_and_locations_are_complete() {
        let season = season_of(1.0);
        let names: Vec<&str> = season.cast.iter().map(|c| c.name.as_str()).collect();
        for name in MAIN_NAMES.iter().chain(&["Zeb", "Gunther", "Janice"]) {
            assert!(names.contains(name), "{name} missing from the cast");
        }
        for member in &season.cast {
            if MAIN_NAMES.contains(&member.name.as_str()) {
                assert!((0.25..=0.5).contains(&member.screen_share));
            } else {
                assert!((0.02..=0.08).contains(&member.screen_share));
            }
        }
        let mut seen_words = HashSet::new();
        for required in ["kitchen", "coffee shop", "living room", "hallway", "street", "office", "restaurant", "bedroom"] {
            assert!(season.locations.iter().any(|l| l.name == required), "{required} missing");
        }
        for location in &season.locations {
            assert!((5..=10).contains(&location.description_words.len()));
            for word in &location.description_words {
                assert!(seen_words.insert(word.clone()), "{word} describes two locations");
            }
        }
    }

    #[test]
    fn centroids_are_unit_deterministic_and_distinct() {
        let kitchen = location_centroid(42, "kitchen", 512);
        assert_eq!(kitchen, location_centroid(42, "kitchen", 512));
        assert_ne!(kitchen, location_centroid(43, "kitchen", 512));
        let as_f64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
        let kitchen = as_f64(kitchen);
        let norm = kitchen.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        for other in ["coffee shop", "living room", "hallway", "street", "office", "restaurant", "bedroom"] {
            let similarity = cosine(&kitchen, &as_f64(location_centroid(42, other, 512)));
            assert!(similarity.abs() < 0.3, "kitchen vs {other}: {similarity}");
        }
        assert!(location_centroid(42, "kitchen", 0).is_empty());
        assert_eq!(location_centroid(42, "kitchen", 1).len(), 1);
    }
}
