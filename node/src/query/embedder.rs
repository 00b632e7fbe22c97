//! Query text → vector of one vector space, so a search can match footage by meaning rather
//! than by label ("where they cook" finds kitchen scenes even though no label says "cook").
//!
//! Three embedders implement [`Embedder`]:
//!
//! - [`HttpEmbedder`] calls any endpoint speaking the OpenAI-compatible `POST /v1/embeddings`
//!   JSON format (OpenAI, Ollama, vLLM, text-embeddings-inference, LocalAI, ...).
//! - [`DemoEmbedder`] works offline for the generated demo season ([`rushes_sample`]): the
//!   generator makes every scene vector a noisy copy of its location's centroid, so text that
//!   evokes a location is embedded as that centroid.
//! - [`CachedEmbedder`] wraps either and remembers recent texts, because the same few queries
//!   are typed over and over and a remote call costs milliseconds to seconds.
//!
//! [`from_config`] builds the configured one. Embedding is blocking (network I/O for the HTTP
//! embedder); callers run it on a blocking thread, never on an actix worker.
//!
//! Everything that comes from outside (query text, the endpoint's answer, the token in the
//! environment) is bounded and checked: text length, number of texts, response size, vector
//! count, dimensions and finiteness. Errors say what to change.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rushes_config::EmbedderConfig;
use serde::{Deserialize, Serialize};

use rushes_sample::GenConfig;

/// Most texts in one [`Embedder::embed`] call. Searches embed one text; this only stops a
/// runaway caller from building an unbounded request.
pub const MAX_TEXTS_PER_CALL: usize = 1024;
/// Texts per HTTP request; larger calls are split. Small enough that one answer stays a few MB
/// even at 4096 dimensions, and within every server's batch limit we know of (OpenAI: 2048).
pub const HTTP_TEXTS_PER_REQUEST: usize = 64;
/// Largest response body read from an embedding endpoint: 64 texts of 4096 dimensions written
/// as JSON take about 5 MiB, so this leaves ample room while bounding memory.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read to quote the endpoint's message; the rest is not worth the memory.
const MAX_ERROR_BODY_BYTES: u64 = 4096;
/// Characters of the endpoint's error message quoted in our error.
const MAX_QUOTED_CHARS: usize = 300;
/// Text limit of a [`DemoEmbedder`] unless set otherwise; the default of `embedder.max_text_bytes`.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 2048;
/// Idle keep-alive connections kept to the endpoint, so concurrent searches do not each pay
/// for a new TCP (and TLS) handshake.
const IDLE_CONNECTIONS_PER_HOST: usize = 8;

/// Turns texts into vectors of one vector space.
pub trait Embedder: Send + Sync {
    /// Short name for logs and metrics (the model, or "demo").
    fn name(&self) -> &str;
    /// The vector space the vectors belong to (`embedder.space`).
    fn space(&self) -> &str;
    /// Length of every vector returned.
    fn dimensions(&self) -> usize;
    /// Blocking; callers run it on a blocking thread. One vector per text, in order, each of
    /// [`Embedder::dimensions`] finite values; unit length for cosine spaces is NOT required.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

impl<E: Embedder + ?Sized> Embedder for Box<E> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn space(&self) -> &str {
        (**self).space()
    }
    fn dimensions(&self) -> usize {
        (**self).dimensions()
    }
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        (**self).embed(texts)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    /// The endpoint could not be reached, timed out, or failed on its side (5xx, 429, 408).
    /// Worth retrying later.
    #[error("the embedder is unavailable: {0}")]
    Unavailable(String),
    /// The endpoint refused the request (4xx) or answered something that is not a valid
    /// embedding response. Retrying the same request will not help.
    #[error("the embedder rejected the request: {0}")]
    Rejected(String),
    /// The demo embedder knows none of the words in this text.
    #[error(
        "the demo embedder knows no word of {0:?}: it only understands words describing the demo season's places, such as \
         \"kitchen\", \"stove\", \"cafe\", \"espresso\", \"sofa\", \"tv\", \"bedroom\", \"office\", \"street\" or \"restaurant\""
    )]
    OutOfVocabulary(String),
    /// A text is longer than `embedder.max_text_bytes`.
    #[error("the text to embed is {bytes} bytes, more than the limit of {limit} bytes (embedder.max_text_bytes); shorten the query")]
    TooLong { bytes: usize, limit: usize },
    /// Input that no embedder accepts: an empty text, too many texts.
    #[error("cannot embed this input: {0}")]
    InvalidInput(String),
    /// The embedder cannot work as configured (unset token variable, no TLS for https, ...).
    #[error("the embedder is misconfigured: {0}")]
    Misconfigured(String),
}

impl EmbedError {
    /// Whether the query text is at fault (answer 400), rather than the embedder (503, 502) or
    /// the configuration (500).
    pub fn is_caller_error(&self) -> bool {
        matches!(self, EmbedError::OutOfVocabulary(_) | EmbedError::TooLong { .. } | EmbedError::InvalidInput(_))
    }
}

/// Checks shared by every embedder, done before any work so a bad input never reaches the network.
fn check_texts(texts: &[String], max_text_bytes: usize) -> Result<(), EmbedError> {
    if texts.len() > MAX_TEXTS_PER_CALL {
        return Err(EmbedError::InvalidInput(format!(
            "{} texts in one call, more than {MAX_TEXTS_PER_CALL}; embed them in smaller batches",
            texts.len()
        )));
    }
    for (position, text) in texts.iter().enumerate() {
        if text.len() > max_text_bytes {
            return Err(EmbedError::TooLong { bytes: text.len(), limit: max_text_bytes });
        }
        // Endpoints reject empty input (OpenAI answers 400), and an empty query has no meaning.
        if text.trim().is_empty() {
            return Err(EmbedError::InvalidInput(format!("text {position} is empty; give some words to search for")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP (OpenAI-compatible)

/// Calls an OpenAI-compatible embeddings endpoint: `POST {url}` with
/// `{"model": model, "input": [texts]}` and `Authorization: Bearer <key>` when a key is set;
/// expects `{"data": [{"embedding": [...], "index": i}, ...]}`.
pub struct HttpEmbedder {
    url: String,
    /// `url` without query string or user info, for error messages and logs: either may hold
    /// a credential.
    display_url: String,
    model: String,
    api_key: Option<String>,
    space: String,
    dimensions: usize,
    timeout: Duration,
    max_text_bytes: usize,
    max_response_bytes: usize,
    name: String,
    agent: ureq::Agent,
}

impl fmt::Debug for HttpEmbedder {
    /// The key is never printed.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("HttpEmbedder")
            .field("url", &self.display_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("space", &self.space)
            .field("dimensions", &self.dimensions)
            .field("timeout", &self.timeout)
            .field("max_text_bytes", &self.max_text_bytes)
            .finish()
    }
}

#[derive(Serialize)]
struct EmbeddingRequest<'a> {
    /// Left out when empty: single-model servers (text-embeddings-inference) need none.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    input: &'a [String],
}

/// Only the fields we use; `object`, `model`, `usage` and the like are ignored.
#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    /// Position of the input this answers. Optional because a few servers leave it out and
    /// answer in input order.
    #[serde(default)]
    index: Option<usize>,
}

fn agent_builder(timeout: Duration) -> ureq::AgentBuilder {
    ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        // The overall deadline also covers a server that sends its answer a byte at a time,
        // which a per-read timeout would not.
        .timeout(timeout)
        // A redirected POST would be replayed as a GET or, worse, carry the token to another
        // host; an embeddings endpoint has no reason to redirect, so report it instead.
        .redirects(0)
        .max_idle_connections_per_host(IDLE_CONNECTIONS_PER_HOST)
        .user_agent(concat!("rushes/", env!("CARGO_PKG_VERSION")))
}

impl HttpEmbedder {
    /// Trusts only the CA certificates in `ca_pem` for `https://` URLs (an embedder behind a
    /// private CA) instead of the public web roots.
    pub fn with_ca_pem(mut self, ca_pem: &[u8]) -> Result<Self, EmbedError> {
        let tls =
            rushes_client::tls_config_trusting(ca_pem).map_err(|e| EmbedError::Misconfigured(format!("embedder.tls_ca_file: {e}")))?;
        self.agent = agent_builder(self.timeout).tls_config(tls).build();
        Ok(self)
    }

    /// An embedder for `url` (the full endpoint, e.g. `http://127.0.0.1:8080/v1/embeddings`)
    /// producing vectors of `dimensions` for `space`. `timeout` bounds each request from
    /// connecting to reading the whole answer. No request is made until [`Embedder::embed`].
    pub fn new(
        url: impl Into<String>,
        model: impl Into<String>,
        api_key: Option<String>,
        space: impl Into<String>,
        dimensions: usize,
        timeout: Duration,
        max_text_bytes: usize,
    ) -> Self {
        let url = url.into();
        let model = model.into();
        let name = if model.is_empty() { "http".to_string() } else { model.clone() };
        let agent = agent_builder(timeout).build();
        HttpEmbedder {
            display_url: redacted_url(&url),
            url,
            model,
            api_key,
            space: space.into(),
            dimensions,
            timeout,
            max_text_bytes,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            name,
            agent,
        }
    }

    /// Caps the response body read (default [`DEFAULT_MAX_RESPONSE_BYTES`]).
    pub fn with_max_response_bytes(mut self, max_response_bytes: usize) -> Self {
        self.max_response_bytes = max_response_bytes;
        self
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = (!self.model.is_empty()).then_some(self.model.as_str());
        let body = serde_json::to_vec(&EmbeddingRequest { model, input: texts })
            .map_err(|error| EmbedError::InvalidInput(format!("cannot encode the request: {error}")))?;
        let mut request = self.agent.post(&self.url).set("Content-Type", "application/json").set("Accept", "application/json");
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match request.send_bytes(&body) {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => return Err(self.status_error(status, response)),
            Err(ureq::Error::Transport(transport)) => return Err(self.transport_error(&transport)),
        };
        // ureq only turns 4xx and 5xx into errors; 1xx/3xx arrive here (redirects are off).
        let status = response.status();
        if !(200..300).contains(&status) {
            let location = response.header("Location").map(|target| format!(" to {}", redacted_url(target))).unwrap_or_default();
            return Err(EmbedError::Rejected(format!(
                "{} answered {status} {}{location}; set embedder.url to the endpoint itself",
                self.display_url,
                printable(response.status_text())
            )));
        }
        let body = self.read_body(response)?;
        let parsed: EmbeddingResponse = serde_json::from_slice(&body).map_err(|error| {
            EmbedError::Rejected(format!(
                "{} answered something that is not an embeddings response ({error}); expected {{\"data\": [{{\"embedding\": [...], \
                 \"index\": 0}}, ...]}}",
                self.display_url
            ))
        })?;
        self.vectors_in_input_order(parsed, texts.len())
    }

    /// Reads at most `max_response_bytes` (plus one byte to tell "exactly the limit" from "more").
    fn read_body(&self, response: ureq::Response) -> Result<Vec<u8>, EmbedError> {
        let limit = self.max_response_bytes;
        let mut body = Vec::new();
        response.into_reader().take(limit as u64 + 1).read_to_end(&mut body).map_err(|error| {
            let reason = if is_timeout(&error) {
                format!("timed out after {} ms (embedder.timeout_ms) while reading the answer", self.timeout.as_millis())
            } else {
                format!("reading the answer failed: {error}")
            };
            EmbedError::Unavailable(format!("{}: {reason}", self.display_url))
        })?;
        if body.len() > limit {
            return Err(EmbedError::Rejected(format!(
                "{} answered more than {limit} bytes; embed fewer texts per call or use fewer dimensions",
                self.display_url
            )));
        }
        Ok(body)
    }

    /// Orders the vectors by `index` and checks count, indices, dimensions and values.
    fn vectors_in_input_order(&self, response: EmbeddingResponse, expected: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let reject = |detail: String| EmbedError::Rejected(format!("{} answered a bad embeddings response: {detail}", self.display_url));
        if response.data.len() != expected {
            return Err(reject(format!("{} embeddings for {expected} texts", response.data.len())));
        }
        let mut ordered: Vec<Option<Vec<f32>>> = vec![None; expected];
        for (position, item) in response.data.into_iter().enumerate() {
            let index = item.index.unwrap_or(position);
            let slot = ordered.get_mut(index).ok_or_else(|| reject(format!("index {index} is out of range for {expected} texts")))?;
            if slot.is_some() {
                return Err(reject(format!("index {index} appears twice")));
            }
            if item.embedding.len() != self.dimensions {
                return Err(reject(format!(
                    "embedding {index} has {} dimensions but vector space \"{}\" has {}; use a model that produces {}-dimensional \
                     vectors, or set embedder.space to a space of {} dimensions",
                    item.embedding.len(),
                    self.space,
                    self.dimensions,
                    self.dimensions,
                    item.embedding.len()
                )));
            }
            // JSON has no NaN, but a number beyond f32's range parses as infinity.
            if let Some(component) = item.embedding.iter().position(|value| !value.is_finite()) {
                return Err(reject(format!("embedding {index} has a value out of f32 range at position {component}")));
            }
            *slot = Some(item.embedding);
        }
        // With the count equal and no index repeated or out of range, every slot is filled.
        ordered
            .into_iter()
            .enumerate()
            .map(|(index, vector)| vector.ok_or_else(|| reject(format!("no embedding for index {index}"))))
            .collect()
    }

    fn status_error(&self, status: u16, response: ureq::Response) -> EmbedError {
        let status_text = printable(response.status_text());
        let mut body = Vec::new();
        // The body only serves to quote the endpoint's message; a failure to read it is not
        // worth reporting over the status itself.
        let _ = response.into_reader().take(MAX_ERROR_BODY_BYTES).read_to_end(&mut body);
        let message = error_message(&body);
        let quoted = if message.is_empty() { String::new() } else { format!(": {message}") };
        let answered = format!("{} answered {status} {status_text}{quoted}", self.display_url);
        match status {
            // Overloaded, rate limited or failing on its side: a later attempt may succeed.
            408 | 429 | 500..=599 => EmbedError::Unavailable(answered),
            401 | 403 => EmbedError::Rejected(format!(
                "{answered}; check the token in the environment variable named by embedder.api_key_env (currently {})",
                if self.api_key.is_some() { "set" } else { "no token is sent" }
            )),
            404 | 405 => EmbedError::Rejected(format!(
                "{answered}; embedder.url must be the full endpoint, e.g. \"http://127.0.0.1:8080/v1/embeddings\""
            )),
            _ => EmbedError::Rejected(answered),
        }
    }

    fn transport_error(&self, transport: &ureq::Transport) -> EmbedError {
        let mut detail = transport.message().map(printable).unwrap_or_else(|| transport.kind().to_string());
        let mut timed_out = false;
        let mut source = std::error::Error::source(transport);
        while let Some(cause) = source {
            if let Some(io_error) = cause.downcast_ref::<std::io::Error>() {
                timed_out |= is_timeout(io_error);
            }
            detail = format!("{detail}: {cause}");
            source = cause.source();
        }
        match transport.kind() {
            ureq::ErrorKind::InvalidUrl => {
                EmbedError::Misconfigured(format!("embedder.url {} is not a valid URL: {detail}", self.display_url))
            }
            // Without ureq's TLS feature every https request fails this way.
            ureq::ErrorKind::UnknownScheme => EmbedError::Misconfigured(format!(
                "cannot call {}: {detail}; this build has no TLS support, so use an http:// endpoint (for example a local \
                 proxy) or build with ureq's \"tls\" feature",
                self.display_url
            )),
            ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader | ureq::ErrorKind::TooManyRedirects => {
                EmbedError::Rejected(format!("{} answered malformed HTTP: {detail}", self.display_url))
            }
            _ if timed_out => EmbedError::Unavailable(format!(
                "{} did not answer within {} ms (embedder.timeout_ms): {detail}",
                self.display_url,
                self.timeout.as_millis()
            )),
            kind => EmbedError::Unavailable(format!("cannot reach {} ({kind}): {detail}", self.display_url)),
        }
    }
}

impl Embedder for HttpEmbedder {
    fn name(&self) -> &str {
        &self.name
    }
    fn space(&self) -> &str {
        &self.space
    }
    fn dimensions(&self) -> usize {
        self.dimensions
    }
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        check_texts(texts, self.max_text_bytes)?;
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(HTTP_TEXTS_PER_REQUEST) {
            vectors.extend(self.embed_batch(batch)?);
        }
        Ok(vectors)
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    // A socket read timeout surfaces as WouldBlock on Unix and TimedOut on Windows.
    matches!(error.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

/// `url` without user info (`user:password@`), query string or fragment.
fn redacted_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = match without_query.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), without_query),
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    printable(&format!("{scheme}{host}{path}"))
}

/// At most [`MAX_QUOTED_CHARS`] characters, control characters replaced, so text from outside
/// cannot forge log lines or flood an error message.
fn printable(text: &str) -> String {
    let mut cleaned: String =
        text.chars().take(MAX_QUOTED_CHARS).map(|character| if character.is_control() { ' ' } else { character }).collect();
    if text.chars().nth(MAX_QUOTED_CHARS).is_some() {
        cleaned.push('…');
    }
    cleaned.trim().to_string()
}

/// The endpoint's own explanation: OpenAI's `{"error": {"message": ...}}`, the `{"error": "..."}`
/// of Ollama and text-embeddings-inference, FastAPI's `{"detail": ...}`, or the raw text.
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return printable(&text);
    };
    let candidates =
        [value.pointer("/error/message"), value.get("error").filter(|error| error.is_string()), value.get("message"), value.get("detail")];
    let found = candidates.into_iter().flatten().next();
    match found {
        Some(serde_json::Value::String(message)) => printable(message),
        Some(other) => printable(&other.to_string()),
        None => printable(&text),
    }
}

// ---------------------------------------------------------------------------------------------
// Demo embedder (offline, for the generated season)

/// Words a location's name contributes only as part of the name, because on their own they
/// evoke several places ("room": bedroom, living room, dining room).
const AMBIGUOUS_NAME_WORDS: &[&str] = &["room"];

/// Hand-written words per location of the demo season, beyond its name and the generator's
/// description words, so that queries "by meaning, not by label" work. Words are matched after
/// [`stem`], and no stemmed word may evoke two locations (a test checks).
const LOCATION_SYNONYMS: &[(&str, &[&str])] = &[
    (
        "kitchen",
        &[
            "cook",
            "kettle",
            "pan",
            "frying",
            "toaster",
            "microwave",
            "refrigerator",
            "dish",
            "bake",
            "baking",
            "pantry",
            "cupboard",
            "kitchenette",
            "cereal",
        ],
    ),
    (
        "coffee shop",
        &["latte", "mocha", "americano", "macchiato", "muffin", "croissant", "coffeehouse", "café", "pastry", "central", "perk"],
    ),
    ("living room", &["sofa", "tv", "lounge", "foosball", "remote", "watching", "den", "fireplace"]),
    ("hallway", &["hall", "stairwell", "staircase", "steps", "elevator", "entrance", "entryway", "lobby", "passage", "neighbour"]),
    ("street", &["road", "outside", "taxi", "cab", "pavement", "avenue", "downtown", "urban", "alley", "bus", "bike"]),
    (
        "office",
        &["job", "workplace", "laptop", "colleague", "coworker", "conference", "printer", "stapler", "whiteboard", "business", "manager"],
    ),
    (
        "restaurant",
        &["dine", "eat", "eating", "bistro", "diner", "waitress", "champagne", "steak", "sommelier", "candlelit", "romantic", "eatery"],
    ),
    ("bedroom", &["asleep", "nap", "bedtime", "mattress", "duvet", "wardrobe", "alarm", "wake", "waking", "bedside", "sheets"]),
];

/// Lower-cased words of `text`; apostrophes vanish ("where's" → "wheres"), every other
/// non-alphanumeric character separates words. Same rule as the generator's dialogue words.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|character: char| !(character.is_alphanumeric() || character == '\'' || character == '\u{2019}'))
        .map(|word| word.chars().filter(|character| character.is_alphanumeric()).flat_map(char::to_lowercase).collect::<String>())
        .filter(|word| !word.is_empty())
}

/// Strips one trailing "ing", "ed" or "s" when at least three characters remain, and not the
/// "s" of "ss" ("boss", "glass"). Crude, but applied to the vocabulary and the query alike, so
/// "cooking", "cooked" and "cooks" all meet "cook".
fn stem(word: &str) -> &str {
    for suffix in ["ing", "ed", "s"] {
        if let Some(stripped) = word.strip_suffix(suffix) {
            let keeps_double_s = suffix == "s" && stripped.ends_with('s');
            if stripped.chars().count() >= 3 && !keeps_double_s {
                return stripped;
            }
        }
    }
    word
}

/// Embeds text as the normalized sum of the centroids of the demo season's locations its words
/// evoke: a location's name words, its description words (from the generator) and
/// [`LOCATION_SYNONYMS`]. Unknown words are ignored; text with no known word is refused.
#[derive(Debug)]
pub struct DemoEmbedder {
    space: String,
    dimensions: usize,
    max_text_bytes: usize,
    /// Location names, in the generator's order.
    locations: Vec<String>,
    /// Unit centroid per location, as [`rushes_sample::location_centroid`] makes them.
    centroids: Vec<Vec<f32>>,
    /// Stemmed word → the locations it evokes (one, for the built-in vocabulary).
    vocabulary: HashMap<String, Vec<usize>>,
}

impl DemoEmbedder {
    /// The embedder for the season generated with `seed` and scene vectors of `dimensions`.
    pub fn new(seed: u64, space: String, dimensions: usize) -> Self {
        // The season's locations come from the generator itself, so the two cannot drift apart.
        // Planning one episode (hours = 0) is cheap and only the fixed location list is used.
        let season = rushes_sample::plan_season(&GenConfig { hours: 0.0, seed, vector_dimensions: dimensions });
        let mut locations = Vec::with_capacity(season.locations.len());
        let mut centroids = Vec::with_capacity(season.locations.len());
        let mut vocabulary: HashMap<String, Vec<usize>> = HashMap::new();
        for (location_index, location) in season.locations.iter().enumerate() {
            let synonyms = LOCATION_SYNONYMS.iter().find(|(name, _)| *name == location.name).map_or(&[][..], |(_, words)| *words);
            let name_words = words(&location.name).filter(|word| !AMBIGUOUS_NAME_WORDS.contains(&word.as_str()));
            let mut phrases: Vec<&str> = location.description_words.iter().map(String::as_str).collect();
            phrases.extend(synonyms.iter().copied());
            for word in name_words.chain(phrases.into_iter().flat_map(words)) {
                let evoked = vocabulary.entry(stem(&word).to_string()).or_default();
                if !evoked.contains(&location_index) {
                    evoked.push(location_index);
                }
            }
            locations.push(location.name.clone());
            centroids.push(rushes_sample::location_centroid(seed, &location.name, dimensions));
        }
        DemoEmbedder { space, dimensions, max_text_bytes: DEFAULT_MAX_TEXT_BYTES, locations, centroids, vocabulary }
    }

    /// Refuses texts longer than `max_text_bytes` (default [`DEFAULT_MAX_TEXT_BYTES`]).
    pub fn with_max_text_bytes(mut self, max_text_bytes: usize) -> Self {
        self.max_text_bytes = max_text_bytes;
        self
    }

    /// The demo season's location names, in the generator's order.
    pub fn locations(&self) -> &[String] {
        &self.locations
    }

    /// The unit vector scene annotations of `location` cluster around, if it is a demo location.
    pub fn centroid(&self, location: &str) -> Option<&[f32]> {
        let index = self.locations.iter().position(|name| name == location)?;
        self.centroids.get(index).map(Vec::as_slice)
    }

    fn embed_one(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        // Sum in f64: many words of one location must not lose the others to rounding.
        let mut sum = vec![0f64; self.dimensions];
        let mut known_words = 0usize;
        for word in words(text) {
            let Some(evoked) = self.vocabulary.get(stem(&word)) else {
                continue;
            };
            known_words += 1;
            // A word evoking several places pulls towards each of them equally, as much in all
            // as a word evoking one.
            let share = 1.0 / evoked.len() as f64;
            for &location_index in evoked {
                if let Some(centroid) = self.centroids.get(location_index) {
                    for (total, component) in sum.iter_mut().zip(centroid) {
                        *total += share * f64::from(*component);
                    }
                }
            }
        }
        let norm = sum.iter().map(|value| value * value).sum::<f64>().sqrt();
        // Zero norm: no known word, or words whose centroids cancel exactly (never with random
        // centroids, but a direction is still needed).
        if known_words == 0 || norm == 0.0 || !norm.is_finite() {
            return Err(EmbedError::OutOfVocabulary(text.to_string()));
        }
        Ok(sum.iter().map(|value| (value / norm) as f32).collect())
    }
}

impl Embedder for DemoEmbedder {
    fn name(&self) -> &str {
        "demo"
    }
    fn space(&self) -> &str {
        &self.space
    }
    fn dimensions(&self) -> usize {
        self.dimensions
    }
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if self.dimensions == 0 {
            return Err(EmbedError::Misconfigured(format!("vector space \"{}\" has 0 dimensions", self.space)));
        }
        check_texts(texts, self.max_text_bytes)?;
        texts.iter().map(|text| self.embed_one(text)).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Cache

/// Counters of a [`CachedEmbedder`], for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

/// Wraps an embedder and remembers the vectors of the last `capacity` distinct texts (least
/// recently used evicted first). Errors are not cached: an unavailable endpoint may be back on
/// the next call. Concurrent misses of the same text may both call the inner embedder; that
/// costs a duplicate request, never a wrong answer.
pub struct CachedEmbedder<E> {
    inner: E,
    capacity: usize,
    state: Mutex<CacheState>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<E: fmt::Debug> fmt::Debug for CachedEmbedder<E> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("CachedEmbedder").field("inner", &self.inner).field("capacity", &self.capacity).finish()
    }
}

/// A bounded map plus a queue of (key, stamp) in use order. A hit pushes a fresh stamp instead
/// of moving the old one (O(1)); eviction skips queue entries whose stamp is stale, and the
/// queue is rebuilt when stale entries make it more than twice the map's size.
struct CacheState {
    capacity: usize,
    entries: HashMap<Arc<str>, CacheEntry>,
    recency: VecDeque<(Arc<str>, u64)>,
    clock: u64,
}

struct CacheEntry {
    vector: Arc<[f32]>,
    stamp: u64,
}

impl CacheState {
    fn get(&mut self, text: &str) -> Option<Arc<[f32]>> {
        self.clock += 1;
        let clock = self.clock;
        let (key, entry) = self.entries.get_key_value(text)?;
        let key = Arc::clone(key);
        let vector = Arc::clone(&entry.vector);
        if let Some(entry) = self.entries.get_mut(text) {
            entry.stamp = clock;
        }
        self.recency.push_back((key, clock));
        self.compact_if_stale();
        Some(vector)
    }

    fn insert(&mut self, text: &str, vector: Arc<[f32]>) {
        if self.capacity == 0 {
            return;
        }
        self.clock += 1;
        let clock = self.clock;
        let key: Arc<str> = match self.entries.get_key_value(text) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(text),
        };
        self.entries.insert(Arc::clone(&key), CacheEntry { vector, stamp: clock });
        self.recency.push_back((key, clock));
        while self.entries.len() > self.capacity {
            let Some((oldest, stamp)) = self.recency.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|entry| entry.stamp == stamp) {
                self.entries.remove(&oldest);
            }
        }
        self.compact_if_stale();
    }

    fn compact_if_stale(&mut self) {
        if self.recency.len() <= 2 * self.capacity.max(self.entries.len()) + 16 {
            return;
        }
        let mut live: Vec<(Arc<str>, u64)> = self.entries.iter().map(|(key, entry)| (Arc::clone(key), entry.stamp)).collect();
        live.sort_unstable_by_key(|(_, stamp)| *stamp);
        self.recency = live.into();
    }
}

impl<E: Embedder> CachedEmbedder<E> {
    /// Remembers up to `capacity` texts; 0 caches nothing (every call goes to `inner`).
    pub fn new(inner: E, capacity: usize) -> Self {
        let state = CacheState { capacity, entries: HashMap::new(), recency: VecDeque::new(), clock: 0 };
        CachedEmbedder { inner, capacity, state: Mutex::new(state), hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    pub fn inner(&self) -> &E {
        &self.inner
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.state.lock().entries.len(),
        }
    }
}

impl<E: Embedder> Embedder for CachedEmbedder<E> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn space(&self) -> &str {
        self.inner.space()
    }
    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if self.capacity == 0 {
            return self.inner.embed(texts);
        }
        let mut found: Vec<Option<Arc<[f32]>>> = Vec::with_capacity(texts.len());
        // Distinct missing texts, each embedded once however often it occurs in `texts`.
        let mut missing: Vec<String> = Vec::new();
        let mut missing_position: HashMap<&str, usize> = HashMap::new();
        {
            let mut state = self.state.lock();
            for text in texts {
                let cached = state.get(text);
                if cached.is_none() && !missing_position.contains_key(text.as_str()) {
                    missing_position.insert(text.as_str(), missing.len());
                    missing.push(text.clone());
                }
                found.push(cached);
            }
        }
        let hits = found.iter().filter(|vector| vector.is_some()).count();
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.misses.fetch_add((texts.len() - hits) as u64, Ordering::Relaxed);
        if !missing.is_empty() {
            // The lock is not held here: a remote call can take up to the timeout.
            let embedded = self.inner.embed(&missing)?;
            if embedded.len() != missing.len() {
                return Err(EmbedError::Rejected(format!(
                    "embedder {} returned {} vectors for {} texts",
                    self.inner.name(),
                    embedded.len(),
                    missing.len()
                )));
            }
            let embedded: Vec<Arc<[f32]>> = embedded.into_iter().map(Arc::from).collect();
            let mut state = self.state.lock();
            for (text, vector) in missing.iter().zip(&embedded) {
                state.insert(text, Arc::clone(vector));
            }
            drop(state);
            for (slot, text) in found.iter_mut().zip(texts) {
                if slot.is_none() {
                    *slot = missing_position.get(text.as_str()).and_then(|&position| embedded.get(position)).cloned();
                }
            }
        }
        found
            .into_iter()
            .map(|vector| {
                vector.map(|vector| vector.to_vec()).ok_or_else(|| EmbedError::Rejected("a text was left without a vector".into()))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Construction from the configuration

/// The seed of the generated season the demo embedder matches: the one `embedder.url` names
/// (`"demo:SEED"`), else `requested` (what `Node::open_with_demo_seed` was given: 42 for
/// `rushes serve`; `rushes demo --seed` and `rushes bench --seed` pass theirs and also write it
/// into the url). So `rushes serve --set embedder.url=demo:1` serves a `rushes gen --seed 1`
/// season, and plain `"demo"` behaves as it always did.
pub fn effective_demo_seed(config: &EmbedderConfig, requested: u64) -> u64 {
    config.demo_seed().unwrap_or(requested)
}

/// The embedder `[embedder]` describes, or `None` when `url` is empty. `dimensions` is that of
/// the vector space `config.space` (the caller looks it up; validation made sure it exists);
/// the demo embedder matches the season of [`effective_demo_seed`]`(config, demo_seed)`. Reads
/// the token from the environment variable named by `api_key_env`, so call it at startup: a
/// missing token is reported then, not on the first search.
pub fn from_config(config: &EmbedderConfig, dimensions: usize, demo_seed: u64) -> Result<Option<Box<dyn Embedder>>, EmbedError> {
    if !config.is_enabled() {
        return Ok(None);
    }
    if dimensions == 0 {
        return Err(EmbedError::Misconfigured(format!("vector space \"{}\" (embedder.space) has 0 dimensions", config.space)));
    }
    if config.is_demo() {
        let seed = effective_demo_seed(config, demo_seed);
        let demo = DemoEmbedder::new(seed, config.space.clone(), dimensions).with_max_text_bytes(config.max_text_bytes);
        return Ok(Some(with_cache(demo, config.cache_entries)));
    }
    if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
        return Err(EmbedError::Misconfigured(format!(
            "embedder.url = {:?} is neither \"\", \"{}\" nor an http:// or https:// URL",
            redacted_url(&config.url),
            EmbedderConfig::DEMO_URL
        )));
    }
    let api_key = api_key_from_environment(&config.api_key_env)?;
    let mut http = HttpEmbedder::new(
        config.url.clone(),
        config.model.clone(),
        api_key,
        config.space.clone(),
        dimensions,
        config.timeout(),
        config.max_text_bytes,
    );
    if !config.tls_ca_file.is_empty() {
        let ca_pem = std::fs::read(&config.tls_ca_file)
            .map_err(|e| EmbedError::Misconfigured(format!("embedder.tls_ca_file = {:?} cannot be read: {e}", config.tls_ca_file)))?;
        http = http.with_ca_pem(&ca_pem)?;
    }
    Ok(Some(with_cache(http, config.cache_entries)))
}

fn with_cache<E: Embedder + 'static>(embedder: E, cache_entries: usize) -> Box<dyn Embedder> {
    if cache_entries == 0 {
        Box::new(embedder)
    } else {
        Box::new(CachedEmbedder::new(embedder, cache_entries))
    }
}

/// The token in the variable named `variable`, or `None` when no variable is named.
fn api_key_from_environment(variable: &str) -> Result<Option<String>, EmbedError> {
    if variable.is_empty() {
        return Ok(None);
    }
    let unusable = |problem: &str| {
        EmbedError::Misconfigured(format!(
            "embedder.api_key_env names the environment variable {variable}, which {problem}; export the token in {variable}, or set \
             embedder.api_key_env = \"\" if the endpoint needs none"
        ))
    };
    let value = match std::env::var(variable) {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => return Err(unusable("is not set")),
        Err(std::env::VarError::NotUnicode(_)) => return Err(unusable("is not valid UTF-8")),
    };
    // A trailing newline from `$(cat token-file)` or an editor is not part of the token.
    let token = value.trim();
    if token.is_empty() {
        return Err(unusable("is empty"));
    }
    // Control characters would end the header early (header injection); ureq would refuse the
    // request anyway, but only on the first search.
    if !token.chars().all(|character| character.is_ascii_graphic() || character == ' ') {
        return Err(unusable("holds characters that cannot go in an HTTP header"));
    }
    Ok(Some(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    const SEED: u64 = 42;
    const DIMS: usize = 512;

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|text| text.to_string()).collect()
    }

    fn cosine(left: &[f32], right: &[f32]) -> f64 {
        let dot: f64 = left.iter().zip(right).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        let norm = |vector: &[f32]| vector.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
        dot / (norm(left) * norm(right))
    }

    fn demo() -> DemoEmbedder {
        DemoEmbedder::new(SEED, "scene".into(), DIMS)
    }

    /// The location whose centroid is most similar to `vector`, with that similarity.
    fn nearest_location(embedder: &DemoEmbedder, vector: &[f32]) -> (String, f64) {
        let mut best = (String::new(), f64::MIN);
        for location in embedder.locations() {
            let similarity = cosine(vector, embedder.centroid(location).expect("centroid"));
            if similarity > best.1 {
                best = (location.clone(), similarity);
            }
        }
        best
    }

    // --- demo embedder -----------------------------------------------------------------------

    #[test]
    fn every_demo_location_has_synonyms_and_they_find_it() {
        let embedder = demo();
        assert_eq!(embedder.locations().len(), LOCATION_SYNONYMS.len(), "a synonym list per generated location");
        for location in embedder.locations() {
            let (_, synonyms) = LOCATION_SYNONYMS.iter().find(|(name, _)| name == location).expect("synonyms for every location");
            assert!(synonyms.len() >= 5, "{location} needs at least 5 synonyms");
            for synonym in synonyms.iter() {
                let vector = embedder.embed(&texts(&[synonym])).expect("known word").remove(0);
                let (nearest, similarity) = nearest_location(&embedder, &vector);
                assert_eq!(&nearest, location, "{synonym:?}");
                assert!(similarity > 0.9, "{synonym:?} → {location}: {similarity}");
            }
            let all = synonyms.join(" ");
            let vector = embedder.embed(std::slice::from_ref(&all)).expect("known words").remove(0);
            let (nearest, similarity) = nearest_location(&embedder, &vector);
            assert_eq!(&nearest, location, "{all:?}");
            assert!(similarity > 0.9, "{all:?}: {similarity}");
        }
    }

    #[test]
    fn names_and_description_words_find_their_location() {
        let embedder = demo();
        let season = rushes_sample::plan_season(&GenConfig { hours: 0.0, seed: SEED, vector_dimensions: DIMS });
        for location in &season.locations {
            let mut phrases: Vec<String> = location.description_words.clone();
            phrases.push(location.name.clone());
            for phrase in phrases {
                let vector = embedder.embed(std::slice::from_ref(&phrase)).expect("known").remove(0);
                let (nearest, similarity) = nearest_location(&embedder, &vector);
                assert_eq!(nearest, location.name, "{phrase:?}");
                assert!(similarity > 0.9, "{phrase:?}: {similarity}");
            }
        }
    }

    #[test]
    fn no_word_evokes_two_locations() {
        let embedder = demo();
        for (word, evoked) in &embedder.vocabulary {
            let names: Vec<&String> = evoked.iter().map(|&index| &embedder.locations()[index]).collect();
            assert_eq!(evoked.len(), 1, "{word:?} evokes {names:?}");
        }
    }

    #[test]
    fn queries_by_meaning() {
        let embedder = demo();
        let cases = [
            ("where they cook", "kitchen"),
            ("stove", "kitchen"),
            ("Cooking!", "kitchen"),
            ("someone cooked breakfast", "kitchen"),
            ("cafe", "coffee shop"),
            ("a café", "coffee shop"),
            ("espresso", "coffee shop"),
            ("lattes", "coffee shop"),
            ("couch", "living room"),
            ("sofa", "living room"),
            ("watching TV", "living room"),
            ("on the stairs", "hallway"),
            ("in a taxi outside", "street"),
            ("at work with the boss", "office"),
            ("romantic dinner", "restaurant"),
            ("sleeping in bed", "bedroom"),
        ];
        for (query, expected) in cases {
            let vector = embedder.embed(&texts(&[query])).unwrap_or_else(|error| panic!("{query}: {error}")).remove(0);
            let (nearest, similarity) = nearest_location(&embedder, &vector);
            assert_eq!(nearest, expected, "{query:?}");
            assert!(similarity > 0.9, "{query:?}: {similarity}");
        }
    }

    #[test]
    fn cafe_is_not_kitchen_and_mixed_text_lies_between() {
        let embedder = demo();
        let vectors = embedder.embed(&texts(&["cafe", "kitchen", "cafe kitchen"])).expect("known");
        assert!(cosine(&vectors[0], &vectors[1]) < 0.2, "{}", cosine(&vectors[0], &vectors[1]));
        let mixed_to_cafe = cosine(&vectors[2], &vectors[0]);
        let mixed_to_kitchen = cosine(&vectors[2], &vectors[1]);
        assert!(mixed_to_cafe > 0.6 && mixed_to_kitchen > 0.6, "{mixed_to_cafe} {mixed_to_kitchen}");
    }

    #[test]
    fn demo_vectors_are_unit_length_deterministic_and_seeded() {
        let first = demo().embed(&texts(&["espresso and muffins"])).expect("known");
        let second = demo().embed(&texts(&["espresso and muffins"])).expect("known");
        assert_eq!(first, second);
        assert_eq!(first[0].len(), DIMS);
        let norm = first[0].iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        let other_seed = DemoEmbedder::new(SEED + 1, "scene".into(), DIMS).embed(&texts(&["espresso and muffins"])).expect("known");
        assert!(cosine(&first[0], &other_seed[0]) < 0.3, "the centroid depends on the seed, like the generated vectors");
        // The generator's centroid exactly, so generated scene vectors (noisy copies) are close.
        let centroid = rushes_sample::location_centroid(SEED, "coffee shop", DIMS);
        assert!(cosine(&first[0], &centroid) > 0.9999);
    }

    #[test]
    fn demo_refuses_unknown_empty_and_long_text() {
        let embedder = demo().with_max_text_bytes(64);
        match embedder.embed(&texts(&["quantum chromodynamics"])) {
            Err(EmbedError::OutOfVocabulary(text)) => assert_eq!(text, "quantum chromodynamics"),
            other => panic!("{other:?}"),
        }
        let message = EmbedError::OutOfVocabulary("quantum".into()).to_string();
        assert!(message.contains("\"quantum\"") && message.contains("\"kitchen\""), "{message}");
        assert!(matches!(embedder.embed(&texts(&["   "])), Err(EmbedError::InvalidInput(_))));
        let long = "kitchen ".repeat(10);
        assert_eq!(embedder.embed(&[long]).expect_err("too long"), EmbedError::TooLong { bytes: 80, limit: 64 });
        assert!(embedder.embed(&[]).expect("nothing to do").is_empty());
        let too_many = vec!["kitchen".to_string(); MAX_TEXTS_PER_CALL + 1];
        assert!(matches!(embedder.embed(&too_many), Err(EmbedError::InvalidInput(_))));
        assert!(EmbedError::TooLong { bytes: 1, limit: 0 }.is_caller_error());
        assert!(!EmbedError::Unavailable("x".into()).is_caller_error());
    }

    #[test]
    fn stemming_and_words() {
        assert_eq!(stem("cooking"), "cook");
        assert_eq!(stem("cooked"), "cook");
        assert_eq!(stem("cooks"), "cook");
        assert_eq!(stem("bed"), "bed");
        assert_eq!(stem("boss"), "boss");
        assert_eq!(stem("tv"), "tv");
        assert_eq!(
            words("Where's the TV? In the living-room.").collect::<Vec<_>>(),
            ["wheres", "the", "tv", "in", "the", "living", "room"]
        );
    }

    // --- cache -------------------------------------------------------------------------------

    /// Counts texts embedded; vector = [length of text, call number].
    struct Counting {
        calls: AtomicU64,
        texts: AtomicU64,
    }

    impl Embedder for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn space(&self) -> &str {
            "scene"
        }
        fn dimensions(&self) -> usize {
            2
        }
        fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
            let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            self.texts.fetch_add(texts.len() as u64, Ordering::Relaxed);
            if texts.iter().any(|text| text == "fail") {
                return Err(EmbedError::Unavailable("down".into()));
            }
            Ok(texts.iter().map(|text| vec![text.len() as f32, call as f32]).collect())
        }
    }

    fn counting() -> Counting {
        Counting { calls: AtomicU64::new(0), texts: AtomicU64::new(0) }
    }

    #[test]
    fn cache_answers_repeats_without_calling_inner() {
        let cached = CachedEmbedder::new(counting(), 3);
        let first = cached.embed(&texts(&["a", "bb", "a"])).expect("ok");
        assert_eq!(first, vec![vec![1.0, 1.0], vec![2.0, 1.0], vec![1.0, 1.0]]);
        assert_eq!(cached.inner().texts.load(Ordering::Relaxed), 2, "a duplicate within a call is embedded once");
        let second = cached.embed(&texts(&["bb", "a"])).expect("ok");
        assert_eq!(second, vec![vec![2.0, 1.0], vec![1.0, 1.0]], "served from the cache");
        assert_eq!(cached.inner().calls.load(Ordering::Relaxed), 1);
        // The repeated "a" of the first call counts as a miss: it was not cached when looked up.
        assert_eq!(cached.stats(), CacheStats { hits: 2, misses: 3, entries: 2 });
        assert_eq!(cached.name(), "counting");
        assert_eq!(cached.dimensions(), 2);
    }

    #[test]
    fn cache_evicts_least_recently_used_and_stays_bounded() {
        let cached = CachedEmbedder::new(counting(), 2);
        cached.embed(&texts(&["a"])).expect("ok");
        cached.embed(&texts(&["b"])).expect("ok");
        cached.embed(&texts(&["a"])).expect("ok"); // a is now more recent than b
        cached.embed(&texts(&["c"])).expect("ok"); // evicts b
        let calls_before = cached.inner().calls.load(Ordering::Relaxed);
        cached.embed(&texts(&["a", "c"])).expect("ok");
        assert_eq!(cached.inner().calls.load(Ordering::Relaxed), calls_before, "a and c are cached");
        cached.embed(&texts(&["b"])).expect("ok");
        assert_eq!(cached.inner().calls.load(Ordering::Relaxed), calls_before + 1, "b was evicted");
        // Many hits on one entry do not grow the bookkeeping without bound.
        for _ in 0..10_000 {
            cached.embed(&texts(&["b"])).expect("ok");
        }
        let state = cached.state.lock();
        assert_eq!(state.entries.len(), 2);
        assert!(state.recency.len() <= 2 * 2 + 17, "{}", state.recency.len());
    }

    #[test]
    fn cache_does_not_keep_errors_and_zero_capacity_passes_through() {
        let cached = CachedEmbedder::new(counting(), 4);
        assert!(matches!(cached.embed(&texts(&["ok", "fail"])), Err(EmbedError::Unavailable(_))));
        assert_eq!(cached.stats().entries, 0);
        let uncached = CachedEmbedder::new(counting(), 0);
        uncached.embed(&texts(&["a"])).expect("ok");
        uncached.embed(&texts(&["a"])).expect("ok");
        assert_eq!(uncached.inner().calls.load(Ordering::Relaxed), 2);
    }

    // --- HTTP embedder -----------------------------------------------------------------------

    /// What the test server received.
    #[derive(Debug)]
    struct Received {
        request_line: String,
        headers: Vec<(String, String)>,
        body: serde_json::Value,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
        }
    }

    enum Reply {
        /// Status line and body, sent at once.
        Answer(u16, String),
        /// Read the request, then answer nothing until the client hangs up.
        Silence,
    }

    fn read_request<S: Read>(stream: &mut S) -> Received {
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).expect("request line");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.parse().ok())
            .expect("content-length");
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        Received { request_line: request_line.trim_end().to_string(), headers, body: serde_json::from_slice(&body).expect("json body") }
    }

    /// A one-connection-per-reply HTTP server on 127.0.0.1; returns its URL and what it received.
    fn serve(replies: Vec<Reply>) -> (String, mpsc::Receiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1/embeddings", listener.local_addr().expect("address"));
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            for reply in replies {
                let Ok((mut stream, _)) = listener.accept() else { return };
                // Bounds the test if the client misbehaves; never reached when it behaves.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let received = read_request(&mut stream);
                let _ = sender.send(received);
                match reply {
                    Reply::Answer(status, body) => {
                        let response = format!(
                            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes());
                    }
                    Reply::Silence => {
                        // Returns when the client gives up and closes the connection.
                        let _ = stream.read(&mut [0u8; 1]);
                    }
                }
            }
        });
        (url, receiver)
    }

    fn embeddings_body(vectors: &[(usize, Vec<f32>)]) -> String {
        let data: Vec<serde_json::Value> =
            vectors.iter().map(|(index, vector)| serde_json::json!({"object": "embedding", "embedding": vector, "index": index})).collect();
        serde_json::json!({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 3, "total_tokens": 3}}).to_string()
    }

    fn http(url: &str, dimensions: usize, timeout: Duration) -> HttpEmbedder {
        HttpEmbedder::new(url, "test-model", Some("sk-secret".into()), "scene", dimensions, timeout, 100)
    }

    #[test]
    fn http_happy_path_orders_by_index_and_sends_model_and_key() {
        // Answered out of order: the index decides.
        let body = embeddings_body(&[(1, vec![0.0, 1.0, 0.5]), (0, vec![1.0, 0.0, -0.5])]);
        let (url, received) = serve(vec![Reply::Answer(200, body)]);
        let embedder = http(&url, 3, Duration::from_secs(5));
        let vectors = embedder.embed(&texts(&["first", "second"])).expect("embedded");
        assert_eq!(vectors, vec![vec![1.0, 0.0, -0.5], vec![0.0, 1.0, 0.5]]);
        let request = received.recv().expect("request");
        assert_eq!(request.request_line, "POST /v1/embeddings HTTP/1.1");
        assert_eq!(request.body, serde_json::json!({"model": "test-model", "input": ["first", "second"]}));
        assert_eq!(request.header("authorization"), Some("Bearer sk-secret"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(embedder.name(), "test-model");
        assert!(!format!("{embedder:?}").contains("sk-secret"), "the key is not printed");
    }

    #[test]
    fn http_omits_empty_model_and_missing_key_and_splits_large_calls() {
        let first: Vec<(usize, Vec<f32>)> = (0..HTTP_TEXTS_PER_REQUEST).map(|index| (index, vec![index as f32])).collect();
        let (url, received) =
            serve(vec![Reply::Answer(200, embeddings_body(&first)), Reply::Answer(200, embeddings_body(&[(0, vec![-1.0])]))]);
        let embedder = HttpEmbedder::new(url, "", None, "scene", 1, Duration::from_secs(5), 100);
        let inputs: Vec<String> = (0..=HTTP_TEXTS_PER_REQUEST).map(|index| format!("text {index}")).collect();
        let vectors = embedder.embed(&inputs).expect("embedded");
        assert_eq!(vectors.len(), HTTP_TEXTS_PER_REQUEST + 1);
        assert_eq!(vectors[HTTP_TEXTS_PER_REQUEST], vec![-1.0]);
        let request = received.recv().expect("first request");
        assert!(request.body.get("model").is_none(), "{}", request.body);
        assert_eq!(request.body["input"].as_array().map(Vec::len), Some(HTTP_TEXTS_PER_REQUEST));
        assert_eq!(request.header("authorization"), None);
        assert_eq!(received.recv().expect("second request").body["input"], serde_json::json!([format!("text {HTTP_TEXTS_PER_REQUEST}")]));
    }

    #[test]
    fn http_wrong_dimension_names_both_numbers() {
        let (url, _received) = serve(vec![Reply::Answer(200, embeddings_body(&[(0, vec![0.1, 0.2])]))]);
        let error = http(&url, 3, Duration::from_secs(5)).embed(&texts(&["kitchen"])).expect_err("2 != 3");
        let EmbedError::Rejected(message) = error else { panic!("{error:?}") };
        assert!(message.contains("embedding 0 has 2 dimensions but vector space \"scene\" has 3"), "{message}");
    }

    #[test]
    fn http_bad_responses_are_rejected() {
        let cases = [
            ("not json", "not an embeddings response"),
            (r#"{"data": []}"#, "0 embeddings for 1 texts"),
            (r#"{"data": [{"embedding": [1.0], "index": 3}]}"#, "index 3 is out of range"),
            // Rejected by the JSON parser or by the f32 range check, depending on serde_json features.
            (r#"{"data": [{"embedding": [1e39], "index": 0}]}"#, "out of range"),
            (r#"{"data": [{"embedding": ["x"], "index": 0}]}"#, "not an embeddings response"),
        ];
        let (url, _received) = serve(cases.iter().map(|(body, _)| Reply::Answer(200, body.to_string())).collect());
        let embedder = http(&url, 1, Duration::from_secs(5));
        for (body, expected) in cases {
            match embedder.embed(&texts(&["kitchen"])) {
                Err(EmbedError::Rejected(message)) => assert!(message.contains(expected), "{body}: {message}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let (url, _received) =
            serve(vec![Reply::Answer(200, r#"{"data": [{"embedding": [1.0], "index": 0}, {"embedding": [2.0], "index": 0}]}"#.into())]);
        let error = http(&url, 1, Duration::from_secs(5)).embed(&texts(&["a", "b"])).expect_err("duplicate index");
        assert!(error.to_string().contains("index 0 appears twice"), "{error}");
    }

    #[test]
    fn http_response_size_is_capped() {
        let (url, _received) = serve(vec![Reply::Answer(200, embeddings_body(&[(0, vec![0.25; 64])]))]);
        let embedder = http(&url, 64, Duration::from_secs(5)).with_max_response_bytes(100);
        let error = embedder.embed(&texts(&["kitchen"])).expect_err("too big");
        assert!(matches!(&error, EmbedError::Rejected(message) if message.contains("more than 100 bytes")), "{error:?}");
    }

    #[test]
    fn http_status_codes_map_to_unavailable_or_rejected() {
        let (url, _received) = serve(vec![
            Reply::Answer(500, r#"{"error": "model is loading"}"#.into()),
            Reply::Answer(400, r#"{"error": {"message": "input is too long", "type": "invalid_request_error"}}"#.into()),
            Reply::Answer(429, r#"{"error": {"message": "rate limited"}}"#.into()),
            Reply::Answer(401, "{\"detail\": \"bad\\ntoken\"}".into()),
            Reply::Answer(404, "no such route".into()),
        ]);
        let embedder = http(&url, 1, Duration::from_secs(5));
        let next = || embedder.embed(&texts(&["kitchen"])).expect_err("error status");
        match next() {
            EmbedError::Unavailable(message) => assert!(message.ends_with("answered 500 Whatever: model is loading"), "{message}"),
            other => panic!("{other:?}"),
        }
        match next() {
            EmbedError::Rejected(message) => assert!(message.ends_with("answered 400 Whatever: input is too long"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(next(), EmbedError::Unavailable(message) if message.contains("rate limited")));
        match next() {
            EmbedError::Rejected(message) => {
                assert!(message.contains("401 Whatever: bad token; check the token"), "control characters are cleaned: {message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(next(), EmbedError::Rejected(message) if message.contains("no such route; embedder.url must be the full endpoint"))
        );
    }

    #[test]
    fn http_slow_server_times_out() {
        let (url, received) = serve(vec![Reply::Silence]);
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let error = http(&url, 1, timeout).embed(&texts(&["kitchen"])).expect_err("timeout");
        let elapsed = started.elapsed();
        assert!(received.recv().is_ok(), "the request reached the server");
        match &error {
            EmbedError::Unavailable(message) => assert!(message.contains("did not answer within 200 ms"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(elapsed >= timeout && elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[test]
    fn http_unreachable_and_local_checks() {
        // A port nobody listens on: bind one, then free it.
        let address = TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("free port");
        let embedder = HttpEmbedder::new(
            format!("http://user:pw@{address}/v1/embeddings?key=secret"),
            "",
            None,
            "scene",
            1,
            Duration::from_secs(2),
            10,
        );
        let error = embedder.embed(&texts(&["kitchen"])).expect_err("refused");
        let EmbedError::Unavailable(message) = &error else { panic!("{error:?}") };
        assert!(message.starts_with(&format!("cannot reach http://{address}/v1/embeddings")), "{message}");
        assert!(!message.contains("secret") && !message.contains("pw"), "credentials in the URL are not shown: {message}");
        // Checked before any request: too long, empty.
        assert_eq!(embedder.embed(&texts(&["kitchen sink"])).expect_err("long"), EmbedError::TooLong { bytes: 12, limit: 10 });
        assert!(matches!(embedder.embed(&texts(&[""])), Err(EmbedError::InvalidInput(_))));
    }

    /// An HTTPS embedder whose certificate comes from a private CA: trusted with
    /// `embedder.tls_ca_file`, refused (naming the certificate problem) without it.
    #[test]
    fn https_with_a_private_ca() {
        use rushes_cluster::transport::ClusterCertificates;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = ClusterCertificates::generate("embedder-test", &[]).expect("CA");
        let (cert_pem, key_pem) =
            ClusterCertificates::issue_server(&ca.ca_cert_pem, &ca.ca_key_pem, &["127.0.0.1".to_string()]).expect("cert");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().expect("cert pem");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key pem");
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("https://{}/v1/embeddings", listener.local_addr().expect("address"));
        let body = embeddings_body(&[(0, vec![0.25, 0.5, 1.0])]);
        let (sender, received) = mpsc::channel();
        thread::spawn(move || {
            // Two connections: the one without the CA fails its handshake, the other is served.
            for _ in 0..2 {
                let Ok((stream, _)) = listener.accept() else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let connection = rustls::ServerConnection::new(server_config.clone()).expect("connection");
                let mut tls = rustls::StreamOwned::new(connection, stream);
                let mut first = [0u8; 1];
                if tls.read(&mut first).is_err() {
                    continue;
                }
                let mut rest = std::io::Cursor::new(first.to_vec()).chain(&mut tls);
                let request = read_request(&mut rest);
                let _ = sender.send(request);
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes());
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        let error = http(&url, 3, Duration::from_secs(5)).embed(&texts(&["kitchen"])).expect_err("an unknown CA");
        let EmbedError::Unavailable(message) = &error else { panic!("{error:?}") };
        assert!(message.to_lowercase().contains("certificate"), "the message names the certificate problem: {message}");
        let embedder = http(&url, 3, Duration::from_secs(5)).with_ca_pem(ca.ca_cert_pem.as_bytes()).expect("CA loads");
        assert_eq!(embedder.embed(&texts(&["kitchen"])).expect("embedded over HTTPS"), vec![vec![0.25, 0.5, 1.0]]);
        assert_eq!(received.recv().expect("request").header("authorization"), Some("Bearer sk-secret"));
        assert!(matches!(http(&url, 3, Duration::from_secs(1)).with_ca_pem(b"not a pem"), Err(EmbedError::Misconfigured(_))));
    }

    #[test]
    fn redaction_and_message_extraction() {
        assert_eq!(redacted_url("https://u:p@api.example.com:8443/v1/embeddings?key=k#x"), "https://api.example.com:8443/v1/embeddings");
        assert_eq!(redacted_url("http://host"), "http://host");
        assert_eq!(error_message(br#"{"error": {"message": "m1"}}"#), "m1");
        assert_eq!(error_message(br#"{"error": "m2"}"#), "m2");
        assert_eq!(error_message(br#"{"detail": [{"msg": "m3"}]}"#), r#"[{"msg":"m3"}]"#);
        assert_eq!(error_message(b"plain\r\ntext"), "plain  text");
        let long = "x".repeat(1000);
        assert_eq!(printable(&long).chars().count(), MAX_QUOTED_CHARS + 1);
    }

    // --- from_config -------------------------------------------------------------------------

    #[test]
    fn from_config_builds_what_the_url_says() {
        let mut config = EmbedderConfig::default();
        assert!(from_config(&config, DIMS, SEED).expect("ok").is_none(), "url = \"\" means no embedder");

        config.url = "demo".into();
        let embedder = from_config(&config, DIMS, SEED).expect("ok").expect("demo");
        assert_eq!((embedder.name(), embedder.space(), embedder.dimensions()), ("demo", "scene", DIMS));
        let vector = embedder.embed(&texts(&["stove"])).expect("known").remove(0);
        assert!(cosine(&vector, &rushes_sample::location_centroid(SEED, "kitchen", DIMS)) > 0.9999);
        let long = "a".repeat(config.max_text_bytes + 1);
        assert!(matches!(embedder.embed(&[long]), Err(EmbedError::TooLong { limit: 2048, .. })));
        assert!(matches!(from_config(&config, 0, SEED), Err(EmbedError::Misconfigured(_))));

        config.url = "http://127.0.0.1:9/v1/embeddings".into();
        config.model = "m".into();
        let embedder = from_config(&config, 8, SEED).expect("ok").expect("http");
        assert_eq!((embedder.name(), embedder.dimensions()), ("m", 8));

        config.url = "ftp://x".into();
        assert!(matches!(from_config(&config, 8, SEED), Err(EmbedError::Misconfigured(_))));
    }

    /// `embedder.url = "demo:1"` picks the season: the demo embedder of seed 1 embeds a place's
    /// name as the direction the generator gave that place's scene vectors for seed 1, and the
    /// default ("demo", seed 42) does not.
    #[test]
    fn demo_seed_in_the_config_matches_the_generated_season() {
        let season = rushes_sample::plan_season(&GenConfig { hours: 0.5, seed: 1, vector_dimensions: DIMS });
        let scenes: Vec<(String, Vec<f32>)> = season
            .episodes
            .iter()
            .flat_map(|spec| rushes_sample::generate_episode(&season, spec).annotations)
            .filter_map(|annotation| {
                let vector = annotation.vector?.iter().map(|&x| x as f32).collect();
                Some((annotation.label?, vector))
            })
            .collect();
        assert!(scenes.len() >= 10, "{} scene vectors", scenes.len());
        let mean_similarity = |config: &EmbedderConfig, requested: u64| {
            let embedder = from_config(config, DIMS, requested).expect("ok").expect("demo");
            let total: f64 = scenes
                .iter()
                .map(|(place, vector)| cosine(&embedder.embed(&texts(&[place])).expect("a place name is known").remove(0), vector))
                .sum();
            total / scenes.len() as f64
        };
        let mut config = EmbedderConfig { url: "demo".into(), ..EmbedderConfig::default() };
        let default_seed = mean_similarity(&config, EmbedderConfig::DEFAULT_DEMO_SEED);
        let plain_demo = config.clone();
        config.url = "demo:1".into();
        let seed_one = mean_similarity(&config, EmbedderConfig::DEFAULT_DEMO_SEED);
        assert!(seed_one > 0.85, "seed 1 embeds places where seed 1 put them: {seed_one}");
        assert!(default_seed < 0.2, "seed 42 does not: {default_seed}");
        // The url's seed wins over the one a caller passes; plain "demo" takes the caller's.
        assert_eq!(effective_demo_seed(&config, 42), 1);
        assert_eq!(effective_demo_seed(&plain_demo, 7), 7);
        assert_eq!(effective_demo_seed(&plain_demo, 42), 42);
    }

    #[test]
    fn from_config_reads_the_token_from_the_named_variable() {
        let mut config = EmbedderConfig { url: "http://127.0.0.1:9/v1/embeddings".into(), ..EmbedderConfig::default() };
        config.api_key_env = "RUSHES_TEST_EMBEDDER_TOKEN_UNSET_4242".into();
        let error = from_config(&config, 8, SEED).err().expect("unset variable");
        assert!(error.to_string().contains("RUSHES_TEST_EMBEDDER_TOKEN_UNSET_4242, which is not set"), "{error}");

        let variable = "RUSHES_TEST_EMBEDDER_TOKEN_SET_4242";
        std::env::set_var(variable, "sk-test\n");
        assert_eq!(api_key_from_environment(variable).expect("set"), Some("sk-test".to_string()));
        std::env::set_var(variable, "sk\r\nX-Injected: 1");
        assert!(matches!(api_key_from_environment(variable), Err(EmbedError::Misconfigured(_))));
        std::env::set_var(variable, "  ");
        assert!(matches!(api_key_from_environment(variable), Err(EmbedError::Misconfigured(_))));
        std::env::remove_var(variable);
        assert_eq!(api_key_from_environment("").expect("no variable"), None);
    }
}
