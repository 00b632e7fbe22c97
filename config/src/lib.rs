//! Configuration of a Rushes node.
//!
//! A [`Config`] is assembled from four sources, lowest precedence first:
//!
//! 1. built-in defaults ([`Config::default`]; every key has one, so an empty file is valid);
//! 2. a TOML file (see [`Config::example_toml`] for every key, its default and its allowed values);
//! 3. environment variables starting with `RUSHES_` ([`ENVIRONMENT_PREFIX`]);
//! 4. overrides from the command line, as `("section.key", "value")` pairs.
//!
//! All sources are merged into one TOML table which is checked against the schema of known keys,
//! deserialized once and then validated ([`Config::validate`]). Every error names the key (with
//! its array index, e.g. `vector_spaces[1].metric`), the offending value, the allowed values or
//! range, and where the value came from. Unknown keys are errors everywhere, because a silently
//! ignored typo (`comit_interval_ms`) would leave the default in force without anyone noticing.
//!
//! # Environment variables
//!
//! `RUSHES_<SECTION>_<KEY>` sets `section.key`: the first segment after `RUSHES_` is the section
//! (lower-cased), the rest is the key, e.g. `RUSHES_NODE_LISTEN=0.0.0.0:9000` sets `node.listen`
//! and `RUSHES_INDEX_COMMIT_INTERVAL_MS=500` sets `index.commit_interval_ms`. Arrays of tables
//! are set whole with a TOML inline array (`RUSHES_VECTOR_SPACES='[{ name = "clip", dimensions
//! = 768 }]'`, `RUSHES_CLUSTER_NODES='[{ id = 1, raft_addr = "a:7800", http_addr = "a:7700" }]'`)
//! or one entry's key at a time (`RUSHES_VECTOR_SPACES_0_DIMENSIONS=768`,
//! `RUSHES_CLUSTER_NODES_1_RAFT_ADDR=b:7800`); an index equal to the current length appends an
//! entry. A `RUSHES_` variable that maps to no known key is an error naming the variable, except
//! the ones in [`IGNORED_ENVIRONMENT_VARIABLES`] (`RUSHES_LOG`, a tracing filter directive, and
//! `RUSHES_CONFIG`, the path of the config file), which belong to the binary.
//!
//! # Command-line overrides
//!
//! Dotted keys: `fusion.bucket_ms`, `node.data_dir`, `vector_spaces[0].dimensions`,
//! `cluster.nodes[2].http_addr`, or a whole array (`vector_spaces`, `cluster.nodes`) as a TOML
//! inline array. Later overrides win over earlier ones.
//!
//! # How string values are typed
//!
//! Values from the environment and overrides arrive as strings. For keys that hold numbers or
//! arrays the string is parsed as a TOML value (`500`, `64_000`, `[{ ... }]`), falling back to the
//! raw string so a typo is reported as a type error on that key. For keys that hold strings
//! (paths, addresses, names, enum values) the raw string is used as is — so a cluster id `123`
//! or a directory named `2024-01-01` stays a string instead of becoming a TOML integer or date —
//! unless it is itself a quoted TOML string (`"info"`), which is unquoted.

mod error;
mod example;
mod load;
mod schema;
mod validate;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, Origin};
pub use load::{ENVIRONMENT_PREFIX, IGNORED_ENVIRONMENT_VARIABLES};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The whole configuration of one node. Field names match the TOML sections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub fusion: FusionConfig,
    pub index: IndexConfig,
    /// Named embedding spaces, each with its own usearch index. May be empty (text search only).
    pub vector_spaces: Vec<VectorSpaceConfig>,
    pub embedder: EmbedderConfig,
    pub search: SearchConfig,
    pub limits: LimitsConfig,
    pub raft: RaftConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub retention: RetentionConfig,
}

/// `[retention]`: what the cluster removes on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often each shard's leader purges the annotations of superseded model versions (a
    /// replicated command, so every replica removes the same); 0 keeps them forever (they are
    /// in the raw store only, never searched).
    pub purge_superseded_interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { purge_superseded_interval_ms: 0 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: NodeConfig::default(),
            cluster: ClusterConfig::default(),
            fusion: FusionConfig::default(),
            index: IndexConfig::default(),
            vector_spaces: vec![VectorSpaceConfig::default()],
            embedder: EmbedderConfig::default(),
            search: SearchConfig::default(),
            limits: LimitsConfig::default(),
            raft: RaftConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Config {
    /// The vector space called `name`, if configured.
    pub fn vector_space(&self, name: &str) -> Option<&VectorSpaceConfig> {
        self.vector_spaces.iter().find(|space| space.name == name)
    }
}

/// `[node]`: identity and local resources of this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id of this process, at least 1 (raft-rs reserves 0 for "no node").
    pub id: u64,
    /// Directory holding the Raft logs, the raw store and the indexes. Relative paths are
    /// resolved against the working directory of the process, not the config file.
    pub data_dir: PathBuf,
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: 1, data_dir: PathBuf::from("./rushes-data"), listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7700) }
    }
}

/// `[cluster]`: sharding and the static list of cluster members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Name of the cluster; nodes refuse to talk to a peer with a different one.
    pub cluster_id: String,
    /// Number of shards (Raft groups) assets are hashed onto. Fixed for the life of the data: the
    /// data dir records it (`node/src/storage/identity.rs`) and a different value is refused.
    pub shards: u32,
    /// Replicas per shard; cannot exceed the number of nodes in `nodes`. A single node (empty
    /// `nodes`) holds one replica of every shard whatever this says.
    pub replication_factor: usize,
    /// All members, including this node. Empty means a single-node cluster made of `node`.
    /// Seeds the first bootstrap only: from then on the members and the placement of every
    /// replica live in the replicated cluster map (`rushes cluster add-node` and friends).
    pub nodes: Vec<ClusterNodeConfig>,
    /// This node joins a running cluster instead of bootstrapping one: it asks the nodes in
    /// `nodes` (this one and at least one member) for the cluster map and waits until an
    /// operator adds it (`rushes cluster add-node`). Ignored once the node has joined.
    pub join: bool,
    /// PEM file of the cluster's certificate authority. With `tls_cert_file` and
    /// `tls_key_file`, peers speak mutual TLS: each presents a certificate from this CA that
    /// names its node id (`node-<id>`), and a connection may only speak as that node.
    pub tls_ca_file: String,
    /// PEM file of this node's certificate (`rushes cluster certs` makes them).
    pub tls_cert_file: String,
    /// PEM file of this node's private key.
    pub tls_key_file: String,
    /// Lets a multi-node cluster run without peer certificates: anyone who reaches a raft
    /// port can then speak for any node. Logged at every start and shown in `/v1/cluster`.
    pub insecure_peers: bool,
    /// Largest frame between nodes (a Raft entry or forwarded write holds a whole batch, about
    /// twice its JSON size): must hold `2 × limits.max_body_bytes + 1 MiB`.
    pub max_frame_bytes: usize,
    /// Peer connections accepted at once; more are closed at once.
    pub max_inbound_connections: usize,
    /// An accepted peer connection that sends nothing for this long is closed (the peer
    /// reconnects when it has something to say).
    pub peer_idle_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_id: "rushes-local".to_string(),
            shards: 4,
            replication_factor: 3,
            nodes: Vec::new(),
            join: false,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            insecure_peers: false,
            max_frame_bytes: 256 * MIB,
            max_inbound_connections: 256,
            peer_idle_timeout_ms: 120_000,
        }
    }
}

impl ClusterConfig {
    /// Number of nodes in the cluster: the length of `nodes`, or 1 when the list is empty
    /// (single-node mode).
    pub fn node_count(&self) -> usize {
        self.nodes.len().max(1)
    }
}

/// One entry of `[[cluster.nodes]]`. Every key is required: a member without an address is
/// unreachable, and there is no sensible default for either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNodeConfig {
    pub id: u64,
    /// `host:port` peers use for Raft traffic. Host names are allowed (resolved at connect time).
    pub raft_addr: String,
    /// `host:port` of the node's HTTP API, used to forward requests.
    pub http_addr: String,
}

/// `[fusion]`: how annotations are fused into time buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// Width of one fusion bucket.
    pub bucket_ms: u64,
    /// Most log entries fused in one pass.
    pub batch_entries_max: usize,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig { bucket_ms: 1000, batch_entries_max: 256 }
    }
}

impl FusionConfig {
    pub fn bucket(&self) -> Duration {
        Duration::from_millis(self.bucket_ms)
    }
}

/// `[index]`: Tantivy full-text index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// How often indexed documents are committed (and become searchable).
    pub commit_interval_ms: u64,
    /// Memory budget of the Tantivy index writer (Tantivy needs at least 15 MiB).
    pub writer_heap_bytes: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { commit_interval_ms: 1000, writer_heap_bytes: 64 * MIB }
    }
}

impl IndexConfig {
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }
}

/// One `[[vector_spaces]]` entry: a usearch HNSW index for one embedding model. `name` is
/// required; every other key has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorSpaceConfig {
    /// Name annotations use in `vector_space`; lower-case letters, digits, `_` and `-`.
    pub name: String,
    #[serde(default = "VectorSpaceConfig::default_dimensions")]
    pub dimensions: usize,
    #[serde(default)]
    pub metric: Metric,
    #[serde(default)]
    pub quantization: Quantization,
    /// HNSW graph degree (M).
    #[serde(default = "VectorSpaceConfig::default_connectivity")]
    pub connectivity: usize,
    /// HNSW candidate list size while inserting (efConstruction).
    #[serde(default = "VectorSpaceConfig::default_expansion_add")]
    pub expansion_add: usize,
    /// HNSW candidate list size while searching (ef).
    #[serde(default = "VectorSpaceConfig::default_expansion_search")]
    pub expansion_search: usize,
}

impl VectorSpaceConfig {
    fn default_dimensions() -> usize {
        512
    }
    fn default_connectivity() -> usize {
        16
    }
    fn default_expansion_add() -> usize {
        128
    }
    fn default_expansion_search() -> usize {
        64
    }

    /// A space called `name` with every other key at its default.
    pub fn named(name: impl Into<String>) -> Self {
        VectorSpaceConfig {
            name: name.into(),
            dimensions: Self::default_dimensions(),
            metric: Metric::default(),
            quantization: Quantization::default(),
            connectivity: Self::default_connectivity(),
            expansion_add: Self::default_expansion_add(),
            expansion_search: Self::default_expansion_search(),
        }
    }
}

impl Default for VectorSpaceConfig {
    /// The default space: `scene`, 512 dimensions, cosine, f32.
    fn default() -> Self {
        VectorSpaceConfig::named("scene")
    }
}

/// Distance metric of a vector space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    #[default]
    Cosine,
    L2,
    /// Inner product.
    Ip,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Cosine, Metric::L2, Metric::Ip];
    /// The spellings accepted in TOML, in the order of [`Metric::ALL`].
    pub const NAMES: &'static [&'static str] = &["cosine", "l2", "ip"];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Ip => "ip",
        }
    }
}

/// Scalar type vectors are stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    #[default]
    F32,
    F16,
    I8,
}

impl Quantization {
    pub const ALL: [Quantization; 3] = [Quantization::F32, Quantization::F16, Quantization::I8];
    pub const NAMES: &'static [&'static str] = &["f32", "f16", "i8"];

    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::F32 => "f32",
            Quantization::F16 => "f16",
            Quantization::I8 => "i8",
        }
    }
}

/// `[embedder]`: turns query text into a vector of one vector space, so a search can match
/// footage by meaning rather than by label. Off by default (`url = ""`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderConfig {
    /// `""` (no embedder), [`EmbedderConfig::DEMO_URL`] (the built-in offline embedder for the
    /// generated demo season of seed 42), `"demo:SEED"` (the same for the season generated with
    /// another seed: [`EmbedderConfig::demo_url`]), or the `http://` / `https://` URL of an
    /// endpoint speaking the OpenAI-compatible `POST /v1/embeddings` JSON format.
    pub url: String,
    /// Sent as `model` in the request body; omitted when empty.
    pub model: String,
    /// Name of the environment variable holding the bearer token sent as `Authorization`; empty
    /// sends none. The token itself never goes in the configuration, which is printed and logged.
    pub api_key_env: String,
    /// PEM file of the CA that signed an `https://` embedder's certificate, trusted instead of
    /// the public web roots; empty trusts the public roots.
    pub tls_ca_file: String,
    /// The vector space query text is embedded into; must be a configured `vector_spaces` entry
    /// when `url` is set, and the embedder must produce vectors of that space's `dimensions`.
    pub space: String,
    /// Time limit of one embedding request (connect and response).
    pub timeout_ms: u64,
    /// Longest text embedded, in UTF-8 bytes; longer query text is refused rather than truncated.
    pub max_text_bytes: usize,
    /// Embeddings remembered by text (least recently used evicted first); 0 disables the cache.
    pub cache_entries: usize,
}

impl EmbedderConfig {
    /// The `url` that selects the built-in offline demo embedder.
    pub const DEMO_URL: &'static str = "demo";
    /// The seed of the season [`EmbedderConfig::DEMO_URL`] alone stands for: the default of
    /// `rushes gen --seed` and `rushes demo --seed`.
    pub const DEFAULT_DEMO_SEED: u64 = 42;

    /// Whether an embedder is configured at all.
    pub fn is_enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Whether `url` selects the built-in demo embedder (`"demo"` or `"demo:SEED"`).
    pub fn is_demo(&self) -> bool {
        demo_url_seed(&self.url).is_some()
    }

    /// With the demo embedder: the seed of the generated season it matches, when `url` names
    /// one (`"demo:SEED"`); `None` for plain `"demo"` and for other embedders.
    pub fn demo_seed(&self) -> Option<u64> {
        demo_url_seed(&self.url).flatten()
    }

    /// The `url` of the demo embedder for the season generated with `seed`: `"demo"` for the
    /// default seed, `"demo:SEED"` otherwise.
    pub fn demo_url(seed: u64) -> String {
        if seed == Self::DEFAULT_DEMO_SEED {
            Self::DEMO_URL.to_string()
        } else {
            format!("{}:{seed}", Self::DEMO_URL)
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `Some(None)` for `"demo"`, `Some(Some(seed))` for `"demo:SEED"` (decimal digits, at most
/// what a TOML integer holds, like every seed the CLI takes), `None` for anything else.
pub(crate) fn demo_url_seed(url: &str) -> Option<Option<u64>> {
    if url == EmbedderConfig::DEMO_URL {
        return Some(None);
    }
    let digits = url.strip_prefix(EmbedderConfig::DEMO_URL)?.strip_prefix(':')?;
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok().filter(|&seed| seed <= i64::MAX as u64).map(Some)
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        EmbedderConfig {
            url: String::new(),
            model: String::new(),
            api_key_env: String::new(),
            tls_ca_file: String::new(),
            space: "scene".to_string(),
            timeout_ms: 2000,
            max_text_bytes: 2 * KIB,
            cache_entries: 1024,
        }
    }
}

/// `[search]`: how query clauses are scored and combined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// How keyword and vector scores of one second are combined.
    pub fusion: FusionMethod,
    /// RRF's k: a hit at rank r contributes 1 / (k + r). Larger values flatten the difference
    /// between the first ranks.
    pub rank_constant: u32,
    /// Ranks beyond this count as absent from a clause's list (Elasticsearch's
    /// `rank_window_size`), which bounds the work of reciprocal rank fusion.
    pub rank_window: usize,
    /// A filtered vector search whose filter leaves at most this many vectors is answered by
    /// exact (brute-force) search instead of the HNSW graph, which can miss neighbours when a
    /// filter rejects most of them. 0 always uses the graph.
    pub exact_vector_max_candidates: usize,
    /// Most suggestions returned for a query prefix.
    pub suggest_limit: usize,
    /// Memory for each shard's cache of label hits, per document in the shard (at least
    /// 64 MiB a shard): grows with the data so a season's frequent labels stay cached.
    pub label_cache_bytes_per_document: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            fusion: FusionMethod::default(),
            rank_constant: 60,
            rank_window: 1000,
            exact_vector_max_candidates: 20_000,
            suggest_limit: 8,
            label_cache_bytes_per_document: 256,
        }
    }
}

/// How keyword and vector scores of one second combine into its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    /// Scores are combined by value (each clause scores in 0..=1).
    #[default]
    Weighted,
    /// Reciprocal rank fusion: each clause contributes 1 / (rank_constant + rank), so only the
    /// order within a clause matters, not the scale of its scores.
    Rrf,
}

impl FusionMethod {
    pub const ALL: [FusionMethod; 2] = [FusionMethod::Weighted, FusionMethod::Rrf];
    pub const NAMES: &'static [&'static str] = &["weighted", "rrf"];

    pub fn as_str(self) -> &'static str {
        match self {
            FusionMethod::Weighted => "weighted",
            FusionMethod::Rrf => "rrf",
        }
    }
}

/// `[limits]`: bounds on requests and queues. Byte limits are on UTF-8 encoded sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest HTTP request body accepted.
    pub max_body_bytes: usize,
    /// Most annotations in one ingest batch.
    pub max_batch_items: usize,
    pub max_id_bytes: usize,
    pub max_asset_id_bytes: usize,
    /// Model, model version, track and vector space names.
    pub max_name_bytes: usize,
    pub max_label_bytes: usize,
    pub max_text_bytes: usize,
    /// Longest single annotation interval (`end_ms - start_ms`).
    pub max_interval_ms: u64,
    /// Largest timestamp within an asset.
    pub max_time_ms: u64,
    /// Proposals waiting per shard before ingest answers "busy".
    pub ingest_queue_depth: usize,
    /// Log entries a shard may have applied but not yet indexed before ingest answers "busy":
    /// indexing yields the CPU to writes, and this keeps it from falling behind without bound.
    pub unindexed_entries_max: u64,
    /// Annotations a shard may have applied but not yet indexed before ingest answers "busy".
    pub unindexed_annotations_max: u64,
    /// Free bytes the data directory's file system must keep: below it a shard takes no
    /// writes (its Raft actor stops stepping, fusion and indexing wait) until space returns,
    /// so no store ever meets a full disk in the middle of a write. 0 turns the guard off.
    pub min_free_disk_bytes: u64,
    pub request_timeout_ms: u64,
    /// Searches waiting before search answers "busy".
    pub search_queue_depth: usize,
    /// Most clauses in one search query.
    pub max_clauses: usize,
    /// Most hits returned per asset.
    pub max_per_asset: usize,
    /// Largest `limit` a search may ask for.
    pub max_limit: usize,
    pub max_query_bytes: usize,
    /// Largest number of nearest neighbours fetched from a vector index.
    pub max_vector_k: usize,
    /// Largest single annotation (its JSON bytes) in a batch.
    pub max_annotation_bytes: usize,
    /// A request body must arrive within this long.
    pub body_read_timeout_ms: u64,
    /// Ingest body bytes being read, parsed and stored at once on this node; past it, ingest
    /// answers 429 with Retry-After.
    pub ingest_bytes_in_flight_max: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 64 * MIB,
            max_batch_items: 10_000,
            max_id_bytes: 256,
            max_asset_id_bytes: 128,
            max_name_bytes: 64,
            max_label_bytes: 256,
            max_text_bytes: 8 * KIB,
            max_interval_ms: 86_400_000,
            max_time_ms: 604_800_000,
            ingest_queue_depth: 1024,
            unindexed_entries_max: 1024,
            unindexed_annotations_max: 250_000,
            min_free_disk_bytes: 256 * 1024 * 1024,
            request_timeout_ms: 10_000,
            search_queue_depth: 256,
            max_clauses: 16,
            max_per_asset: 100,
            max_limit: 1000,
            max_query_bytes: 4096,
            max_vector_k: 10_000,
            max_annotation_bytes: MIB,
            body_read_timeout_ms: 30_000,
            ingest_bytes_in_flight_max: 256 * MIB,
        }
    }
}

impl LimitsConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// `[http]`: how the HTTP API is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// PEM certificate chain and private key: HTTPS when both are set.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Serve a non-loopback address without API keys (anyone who reaches it can read, write
    /// and administer). Without keys and without this, only loopback addresses may be served.
    pub allow_unauthenticated: bool,
    /// `GET /ready` answers 200 only while every local replica is at most this many log
    /// entries behind in applying (commit to applied) and in indexing (applied to indexed).
    pub ready_max_lag_entries: u64,
}

/// Default of `http.ready_max_lag_entries`: a few group commits' worth.
pub const READY_MAX_LAG_ENTRIES: u64 = 1_000;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            allow_unauthenticated: false,
            ready_max_lag_entries: READY_MAX_LAG_ENTRIES,
        }
    }
}

/// `[auth]`: API keys. With none, the API is open (loopback only, see `http`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub keys: Vec<ApiKeyConfig>,
}

/// One entry of `[[auth.keys]]`: a key is stored as its hash, never in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds it (shown in logs, never the key).
    pub name: String,
    /// `sha256:` and the 64 hex digits of the key's SHA-256 (`rushes keys create` prints it).
    pub hash: String,
    /// Any of `read`, `write`, `admin`.
    pub scopes: Vec<String>,
}

impl ApiKeyConfig {
    /// The scopes a key may carry.
    pub const SCOPES: &'static [&'static str] = &["read", "write", "admin"];
}

/// `[raft]`: consensus timing and flow control (see raft-rs `Config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Duration of one Raft tick; election and heartbeat timeouts are counted in ticks.
    pub tick_interval_ms: u64,
    pub election_ticks: usize,
    /// Must be less than `election_ticks`, or followers start elections against a live leader.
    pub heartbeat_ticks: usize,
    pub max_size_per_msg_bytes: u64,
    pub max_inflight_msgs: usize,
    /// Most proposals appended and made durable together in one Raft ready cycle (group
    /// commit); each proposal is one log entry.
    pub group_commit_max_requests: usize,
    /// Log entries every stage has consumed that stay in the log after compaction: a replica
    /// at most this far behind catches up from the log rather than by snapshot.
    pub log_retain_entries: u64,
    /// A replicated shard compacts its log (into a snapshot that names the raw store; far
    /// behind replicas fetch it in chunks) once this many entries beyond the retained ones
    /// have accumulated.
    pub snapshot_log_entries: u64,
    /// Also at most this many bytes of consumed entries stay in the log: an entry is one client
    /// batch's part for the shard, so a count alone lets a shard of large batches keep
    /// gigabytes of log that the raw store already holds.
    pub log_retain_bytes: u64,
    /// Also compact once this many bytes of entries beyond the retained ones have accumulated.
    pub snapshot_log_bytes: u64,
    /// How often each shard considers compacting its log.
    pub compaction_interval_ms: u64,
    /// Raw store bytes per chunk this node serves to a replica fetching a snapshot (the
    /// serving node's setting applies). Smaller chunks mean more round trips.
    pub snapshot_chunk_bytes: u64,
    /// Bytes per second a replica fetching a snapshot (a new replica of a move, a far-behind
    /// one) reads from its peer, so ingest and search keep their latency while replicas move;
    /// 0 is unlimited.
    pub snapshot_transfer_bytes_per_s: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_interval_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_size_per_msg_bytes: MIB as u64,
            max_inflight_msgs: 256,
            group_commit_max_requests: 256,
            log_retain_entries: 1_000,
            snapshot_log_entries: 20_000,
            log_retain_bytes: 64 * MIB as u64,
            snapshot_log_bytes: 512 * MIB as u64,
            compaction_interval_ms: 10_000,
            snapshot_chunk_bytes: 4 * MIB as u64,
            snapshot_transfer_bytes_per_s: 64 * MIB as u64,
        }
    }
}

impl RaftConfig {
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_interval_ms)
    }
}

/// `[log]`: logging. `RUSHES_LOG`, if set, is a tracing filter that takes precedence over
/// `level` (it is read by the binary, not by this crate).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub const ALL: [LogLevel; 5] = [LogLevel::Trace, LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error];
    pub const NAMES: &'static [&'static str] = &["trace", "debug", "info", "warn", "error"];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub const ALL: [LogFormat; 2] = [LogFormat::Text, LogFormat::Json];
    pub const NAMES: &'static [&'static str] = &["text", "json"];

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

macro_rules! display_as_str {
    ($($enum_type:ty),*) => {$(
        impl fmt::Display for $enum_type {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Metric, Quantization, FusionMethod, LogLevel, LogFormat);
