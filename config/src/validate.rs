//! Semantic checks on a typed [`Config`]: numeric ranges, name syntax, uniqueness and the rules
//! that tie keys together (heartbeat shorter than election timeout, replication within the node
//! count). Types and key names were already checked by the loader; this works on any `Config`,
//! including one built in code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;

use crate::error::ConfigError;
use crate::load::ENVIRONMENT_PREFIX;
use crate::{Config, EmbedderConfig, KIB, MIB};

/// An inclusive range of allowed values for one numeric key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IntegerRange {
    pub min: u64,
    pub max: u64,
}

/// The largest integer TOML can hold. Used as the upper bound of otherwise unbounded keys so a
/// validated config can always be written back out.
const TOML_INTEGER_MAX: u64 = i64::MAX as u64;
const GIB: u64 = 1024 * MIB as u64;

impl IntegerRange {
    const fn new(min: u64, max: u64) -> IntegerRange {
        IntegerRange { min, max }
    }
    const fn at_least(min: u64) -> IntegerRange {
        IntegerRange { min, max: TOML_INTEGER_MAX }
    }
    const fn bytes(min: usize, max: u64) -> IntegerRange {
        IntegerRange { min: min as u64, max }
    }
    fn contains(&self, value: u64) -> bool {
        self.min <= value && value <= self.max
    }
}

impl fmt::Display for IntegerRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.max == TOML_INTEGER_MAX {
            write!(formatter, "at least {}", self.min)
        } else {
            write!(formatter, "{}..={}", self.min, self.max)
        }
    }
}

/// Allowed ranges, one per numeric key. The example file quotes them, so they are the single
/// source of truth for both the documentation and the checks.
pub(crate) mod ranges {
    use super::*;

    pub const NODE_ID: IntegerRange = IntegerRange::at_least(1);

    pub const CLUSTER_SHARDS: IntegerRange = IntegerRange::new(1, 1024);
    pub const CLUSTER_REPLICATION_FACTOR: IntegerRange = IntegerRange::new(1, 7);
    pub const CLUSTER_NODE_ID: IntegerRange = IntegerRange::at_least(1);
    pub const CLUSTER_ID_MAX_BYTES: usize = 64;
    /// Up to what the codec decodes (`rushes_protocol::codec::DECODE_LIMIT_BYTES`, 256 MiB).
    pub const CLUSTER_MAX_FRAME_BYTES: IntegerRange = IntegerRange::bytes(MIB, 256 * MIB as u64);
    pub const CLUSTER_MAX_INBOUND_CONNECTIONS: IntegerRange = IntegerRange::new(2, 65_536);
    pub const CLUSTER_PEER_IDLE_TIMEOUT_MS: IntegerRange = IntegerRange::new(1_000, 86_400_000);
    pub const AUTH_KEY_NAME_MAX_BYTES: usize = 64;
    pub const AUTH_KEYS_MAX_COUNT: usize = 1024;

    pub const FUSION_BUCKET_MS: IntegerRange = IntegerRange::new(100, 60_000);
    pub const FUSION_BATCH_ENTRIES_MAX: IntegerRange = IntegerRange::new(1, 100_000);

    pub const INDEX_COMMIT_INTERVAL_MS: IntegerRange = IntegerRange::new(50, 600_000);
    /// Tantivy refuses a writer heap below 15 MB per thread.
    pub const INDEX_WRITER_HEAP_BYTES: IntegerRange = IntegerRange::bytes(15 * MIB, 4 * GIB);

    pub const VECTOR_SPACES_MAX_COUNT: usize = 64;
    pub const VECTOR_SPACE_NAME_MAX_BYTES: usize = 64;
    pub const VECTOR_DIMENSIONS: IntegerRange = IntegerRange::new(1, 4096);
    pub const VECTOR_CONNECTIVITY: IntegerRange = IntegerRange::new(4, 128);
    pub const VECTOR_EXPANSION_ADD: IntegerRange = IntegerRange::new(1, 4096);
    pub const VECTOR_EXPANSION_SEARCH: IntegerRange = IntegerRange::new(1, 4096);

    pub const EMBEDDER_URL_MAX_BYTES: usize = 2048;
    pub const EMBEDDER_MODEL_MAX_BYTES: usize = 256;
    pub const EMBEDDER_API_KEY_ENV_MAX_BYTES: usize = 256;
    pub const EMBEDDER_TIMEOUT_MS: IntegerRange = IntegerRange::new(1, 60_000);
    pub const EMBEDDER_MAX_TEXT_BYTES: IntegerRange = IntegerRange::bytes(1, MIB as u64);
    /// An entry holds a query text and its vector (4 KiB with the default text limit and 512
    /// dimensions), so the maximum stays in the hundreds of MiB for typical queries.
    pub const EMBEDDER_CACHE_ENTRIES: IntegerRange = IntegerRange::new(0, 100_000);

    pub const SEARCH_RANK_CONSTANT: IntegerRange = IntegerRange::new(1, 10_000);
    pub const SEARCH_RANK_WINDOW: IntegerRange = IntegerRange::new(1, 100_000);
    pub const SEARCH_EXACT_VECTOR_MAX_CANDIDATES: IntegerRange = IntegerRange::new(0, 10_000_000);
    pub const SEARCH_SUGGEST_LIMIT: IntegerRange = IntegerRange::new(1, 50);
    pub const SEARCH_LABEL_CACHE_BYTES_PER_DOCUMENT: IntegerRange = IntegerRange::new(0, 4096);

    pub const LIMITS_MAX_BODY_BYTES: IntegerRange = IntegerRange::bytes(KIB, GIB);
    pub const LIMITS_MAX_BATCH_ITEMS: IntegerRange = IntegerRange::new(1, 1_000_000);
    pub const LIMITS_MAX_ANNOTATION_BYTES: IntegerRange = IntegerRange::bytes(KIB, 64 * MIB as u64);
    pub const LIMITS_BODY_READ_TIMEOUT_MS: IntegerRange = IntegerRange::new(100, 3_600_000);
    pub const LIMITS_INGEST_BYTES_IN_FLIGHT_MAX: IntegerRange = IntegerRange::bytes(MIB, 64 * GIB);
    pub const LIMITS_MAX_ID_BYTES: IntegerRange = IntegerRange::new(1, 4096);
    pub const LIMITS_MAX_ASSET_ID_BYTES: IntegerRange = IntegerRange::new(1, 4096);
    pub const LIMITS_MAX_NAME_BYTES: IntegerRange = IntegerRange::new(1, 1024);
    pub const LIMITS_MAX_LABEL_BYTES: IntegerRange = IntegerRange::new(1, 65_536);
    pub const LIMITS_MAX_TEXT_BYTES: IntegerRange = IntegerRange::bytes(1, MIB as u64);
    /// One year; also capped by `limits.max_time_ms`.
    pub const LIMITS_MAX_INTERVAL_MS: IntegerRange = IntegerRange::new(1, 31_536_000_000);
    /// One second to one year.
    pub const LIMITS_MAX_TIME_MS: IntegerRange = IntegerRange::new(1000, 31_536_000_000);
    pub const LIMITS_INGEST_QUEUE_DEPTH: IntegerRange = IntegerRange::new(1, 1_000_000);
    pub const LIMITS_UNINDEXED_ENTRIES_MAX: IntegerRange = IntegerRange::new(16, 1_000_000);
    pub const LIMITS_UNINDEXED_ANNOTATIONS_MAX: IntegerRange = IntegerRange::new(1_000, 1_000_000_000);
    pub const LIMITS_MIN_FREE_DISK_BYTES: IntegerRange = IntegerRange::new(0, 1 << 40);
    pub const HTTP_READY_MAX_LAG_ENTRIES: IntegerRange = IntegerRange::new(0, 1 << 40);
    pub const LIMITS_REQUEST_TIMEOUT_MS: IntegerRange = IntegerRange::new(100, 600_000);
    pub const LIMITS_SEARCH_QUEUE_DEPTH: IntegerRange = IntegerRange::new(1, 1_000_000);
    pub const LIMITS_MAX_CLAUSES: IntegerRange = IntegerRange::new(1, 1024);
    pub const LIMITS_MAX_PER_ASSET: IntegerRange = IntegerRange::new(1, 100_000);
    pub const LIMITS_MAX_LIMIT: IntegerRange = IntegerRange::new(1, 100_000);
    pub const LIMITS_MAX_QUERY_BYTES: IntegerRange = IntegerRange::bytes(1, MIB as u64);
    pub const LIMITS_MAX_VECTOR_K: IntegerRange = IntegerRange::new(1, 1_000_000);

    pub const RAFT_TICK_INTERVAL_MS: IntegerRange = IntegerRange::new(10, 10_000);
    pub const RAFT_ELECTION_TICKS: IntegerRange = IntegerRange::new(2, 1000);
    /// Also strictly below `raft.election_ticks`.
    pub const RAFT_HEARTBEAT_TICKS: IntegerRange = IntegerRange::new(1, 999);
    pub const RAFT_MAX_SIZE_PER_MSG_BYTES: IntegerRange = IntegerRange::bytes(KIB, 256 * MIB as u64);
    pub const RAFT_MAX_INFLIGHT_MSGS: IntegerRange = IntegerRange::new(1, 65_536);
    pub const RAFT_GROUP_COMMIT_MAX_REQUESTS: IntegerRange = IntegerRange::new(1, 100_000);
    pub const RAFT_LOG_RETAIN_ENTRIES: IntegerRange = IntegerRange::new(1, 10_000_000);
    pub const RAFT_SNAPSHOT_LOG_ENTRIES: IntegerRange = IntegerRange::new(1, 10_000_000);
    pub const RAFT_LOG_RETAIN_BYTES: IntegerRange = IntegerRange::bytes(KIB, 1 << 40);
    pub const RAFT_SNAPSHOT_LOG_BYTES: IntegerRange = IntegerRange::bytes(KIB, 1 << 40);
    pub const RAFT_COMPACTION_INTERVAL_MS: IntegerRange = IntegerRange::new(10, 3_600_000);
    /// 0 (never), or at least a minute (each purge scans the model-version markers).
    pub const RETENTION_PURGE_SUPERSEDED_INTERVAL_MS: IntegerRange = IntegerRange::new(0, 365 * 24 * 3_600_000);
    /// A chunk travels in one peer frame (at most 256 MiB with its encoding).
    pub const RAFT_SNAPSHOT_CHUNK_BYTES: IntegerRange = IntegerRange::bytes(KIB, 64 * MIB as u64);
    /// 0 (unlimited), or at least 64 KiB/s (a snapshot must finish some day).
    pub const RAFT_SNAPSHOT_TRANSFER_BYTES_PER_S: IntegerRange = IntegerRange::new(0, 100 * 1024 * MIB as u64);
}

use ranges::*;

/// Renders a byte count as "64 MiB" when it is a whole number of KiB/MiB/GiB.
pub(crate) fn human_bytes(bytes: u64) -> Option<String> {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        // The units are powers of two, so a whole multiple has the low bits clear.
        .find(|(unit, _)| bytes >= *unit && bytes & (unit - 1) == 0)
        .map(|(unit, name)| format!("{} {name}", bytes / unit))
}

/// The allowed text for a range, with binary units spelled out for `_bytes` keys.
pub(crate) fn describe_range(key: &str, range: IntegerRange) -> String {
    match (key.ends_with("_bytes"), human_bytes(range.min), human_bytes(range.max)) {
        (true, Some(min), Some(max)) if range.max != TOML_INTEGER_MAX => {
            format!("{range} ({min}..={max})")
        }
        _ => range.to_string(),
    }
}

fn check_range<Number>(key: &str, value: Number, range: IntegerRange) -> Result<(), ConfigError>
where
    Number: TryInto<u64> + Copy + fmt::Display,
{
    // A usize that does not fit in u64 cannot exist on supported platforms; treat it as too big.
    let widened: u64 = value.try_into().unwrap_or(u64::MAX);
    if range.contains(widened) {
        Ok(())
    } else {
        Err(ConfigError::out_of_range(key, value.to_string(), describe_range(key, range)))
    }
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// Names that end up in URLs, file names and metric labels: non-empty ASCII, a restricted
/// character set, bounded length.
fn check_name(key: &str, name: &str, extra_allowed: &[char], max_bytes: usize, description: &str) -> Result<(), ConfigError> {
    let well_formed = !name.is_empty()
        && name.len() <= max_bytes
        && name.chars().all(|character| character.is_ascii_lowercase() || character.is_ascii_digit() || extra_allowed.contains(&character));
    if well_formed {
        Ok(())
    } else {
        Err(ConfigError::invalid_value(key, quoted(name), format!("use {description}, 1 to {max_bytes} bytes")))
    }
}

/// Accepts `host:port` where host is a DNS name, an IPv4 address or a bracketed IPv6 address,
/// and port is 1..=65535. Host names are allowed because peers are often addressed by DNS.
fn is_host_and_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let port_is_valid = matches!(port.parse::<u16>(), Ok(port) if port != 0);
    let host_is_valid = match host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label.chars().all(|character| character.is_ascii_alphanumeric() || character == '-')
                })
        }
    };
    port_is_valid && host_is_valid
}

/// `""`, the demo marker (`"demo"`, `"demo:SEED"`), or an http(s) URL with something after the
/// scheme. Whitespace and control characters are refused because they cannot be part of a URL
/// and usually mean a pasting mistake; everything else (host, port, path) is left to the HTTP
/// client to judge.
fn is_embedder_url(url: &str) -> bool {
    if url.is_empty() || crate::demo_url_seed(url).is_some() {
        return true;
    }
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest) => {
            url.len() <= EMBEDDER_URL_MAX_BYTES
                && !rest.is_empty()
                && !rest.starts_with('/')
                && !url.chars().any(|character| character.is_whitespace() || character.is_control())
        }
        None => false,
    }
}

/// `""` or a portable environment variable name. A `RUSHES_` name is refused: the loader treats
/// every `RUSHES_` variable as a configuration key and would reject the one holding the token.
fn check_api_key_env(name: &str) -> Result<(), ConfigError> {
    let key = "embedder.api_key_env";
    if name.is_empty() {
        return Ok(());
    }
    let well_formed = name.len() <= EMBEDDER_API_KEY_ENV_MAX_BYTES
        && !name.starts_with(|character: char| character.is_ascii_digit())
        && name.chars().all(|character| character.is_ascii_alphanumeric() || character == '_');
    if !well_formed {
        return Err(ConfigError::invalid_value(
            key,
            quoted(name),
            format!(
                "use \"\" (no token) or the name of an environment variable holding the token, such as \"OPENAI_API_KEY\": \
                 letters, digits and '_', not starting with a digit, 1 to {EMBEDDER_API_KEY_ENV_MAX_BYTES} bytes (the token itself \
                 never goes in the configuration)"
            ),
        ));
    }
    if name.to_ascii_uppercase().starts_with(ENVIRONMENT_PREFIX) {
        return Err(ConfigError::invalid_value(
            key,
            quoted(name),
            format!(
                "use a name that does not start with {ENVIRONMENT_PREFIX}, such as \"EMBEDDER_API_KEY\": {ENVIRONMENT_PREFIX}* variables \
                 are read as configuration keys"
            ),
        ));
    }
    Ok(())
}

/// Reports the second occurrence of a value that must be unique within a list.
fn check_unique<'item>(
    values: impl Iterator<Item = (String, &'item str)>,
    list_key: &str,
    render_value: impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let mut first_seen_at: BTreeMap<&str, String> = BTreeMap::new();
    for (key, value) in values {
        if let Some(first_key) = first_seen_at.get(value) {
            return Err(ConfigError::invalid_value(
                key,
                render_value(value),
                format!("values must be unique within {list_key}; {first_key} already uses it"),
            ));
        }
        first_seen_at.insert(value, key);
    }
    Ok(())
}

impl Config {
    /// Checks every range and cross-key rule; the first violation is returned. [`Config::load`]
    /// calls this; call it yourself on a `Config` built or modified in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_node()?;
        self.validate_cluster()?;
        self.validate_fusion_and_index()?;
        self.validate_vector_spaces()?;
        self.validate_embedder()?;
        self.validate_search()?;
        self.validate_limits()?;
        self.validate_raft()?;
        self.validate_retention()?;
        self.validate_security()?;
        Ok(())
    }

    /// Peer certificates, HTTPS, API keys, and the limits that must fit inside each other.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        check_range("cluster.max_frame_bytes", cluster.max_frame_bytes, CLUSTER_MAX_FRAME_BYTES)?;
        check_range("cluster.max_inbound_connections", cluster.max_inbound_connections, CLUSTER_MAX_INBOUND_CONNECTIONS)?;
        check_range("cluster.peer_idle_timeout_ms", cluster.peer_idle_timeout_ms, CLUSTER_PEER_IDLE_TIMEOUT_MS)?;
        // A batch travels between nodes as a Raft entry or a forwarded write holding its raw and
        // parsed forms (about twice its JSON): a body the frames cannot carry would be accepted,
        // then never replicated.
        let needed = self.limits.max_body_bytes.saturating_mul(2).saturating_add(MIB);
        if needed > cluster.max_frame_bytes {
            return Err(ConfigError::invalid_value(
                "limits.max_body_bytes",
                self.limits.max_body_bytes.to_string(),
                format!(
                    "at most ({} - 1 MiB) / 2 = {} with cluster.max_frame_bytes = {}: lower limits.max_body_bytes or raise cluster.max_frame_bytes",
                    cluster.max_frame_bytes,
                    cluster.max_frame_bytes.saturating_sub(MIB) / 2,
                    cluster.max_frame_bytes
                ),
            ));
        }
        let peer_files = [
            ("cluster.tls_ca_file", &cluster.tls_ca_file),
            ("cluster.tls_cert_file", &cluster.tls_cert_file),
            ("cluster.tls_key_file", &cluster.tls_key_file),
        ];
        let peer_files_set = peer_files.iter().filter(|(_, path)| !path.is_empty()).count();
        if peer_files_set != 0 && peer_files_set != peer_files.len() {
            let (missing, _) = peer_files.iter().find(|(_, path)| path.is_empty()).copied().unwrap_or(peer_files[0]);
            return Err(ConfigError::invalid_value(
                missing,
                "\"\"".to_string(),
                "cluster.tls_ca_file, cluster.tls_cert_file and cluster.tls_key_file go together: set all three (rushes cluster certs makes them) or none",
            ));
        }
        if cluster.join && cluster.nodes.len() < 2 {
            return Err(ConfigError::invalid_value(
                "cluster.join",
                "true".to_string(),
                "a joining node needs cluster.nodes to list itself and at least one running member to ask for the cluster map",
            ));
        }
        if cluster.nodes.len() > 1 && peer_files_set == 0 && !cluster.insecure_peers {
            return Err(ConfigError::invalid_value(
                "cluster.tls_cert_file",
                "\"\"".to_string(),
                "a multi-node cluster needs peer certificates (cluster.tls_ca_file, tls_cert_file, tls_key_file; `rushes cluster certs` makes them), \
                 or cluster.insecure_peers = true to run without (anyone who reaches a raft port can then speak for any node)",
            ));
        }
        let http = &self.http;
        if http.tls_cert_file.is_empty() != http.tls_key_file.is_empty() {
            let missing = if http.tls_cert_file.is_empty() { "http.tls_cert_file" } else { "http.tls_key_file" };
            return Err(ConfigError::invalid_value(missing, "\"\"".to_string(), "http.tls_cert_file and http.tls_key_file go together"));
        }
        if self.auth.keys.len() > AUTH_KEYS_MAX_COUNT {
            return Err(ConfigError::invalid_value(
                "auth.keys",
                self.auth.keys.len().to_string(),
                format!("at most {AUTH_KEYS_MAX_COUNT} keys"),
            ));
        }
        for (position, key) in self.auth.keys.iter().enumerate() {
            let prefix = format!("auth.keys[{position}]");
            check_name(
                &format!("{prefix}.name"),
                &key.name,
                &['-', '_', '.'],
                AUTH_KEY_NAME_MAX_BYTES,
                "lower-case letters a-z, digits, '-', '_' and '.'",
            )?;
            let digits = key.hash.strip_prefix("sha256:").unwrap_or("");
            if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
                return Err(ConfigError::invalid_value(
                    format!("{prefix}.hash"),
                    quoted(&key.hash),
                    "\"sha256:\" and 64 lower-case hex digits, the SHA-256 of the key (`rushes keys create` prints it); never the key itself",
                ));
            }
            if key.scopes.is_empty() {
                return Err(ConfigError::invalid_value(
                    format!("{prefix}.scopes"),
                    "[]".to_string(),
                    "one or more of \"read\", \"write\", \"admin\"",
                ));
            }
            if let Some(bad) = key.scopes.iter().find(|scope| !crate::ApiKeyConfig::SCOPES.contains(&scope.as_str())) {
                return Err(ConfigError::invalid_value(
                    format!("{prefix}.scopes"),
                    quoted(bad),
                    "one or more of \"read\", \"write\", \"admin\"",
                ));
            }
        }
        let key_names: Vec<(String, &str)> =
            self.auth.keys.iter().enumerate().map(|(position, key)| (format!("auth.keys[{position}].name"), key.name.as_str())).collect();
        check_unique(key_names.iter().map(|(path, name)| (path.clone(), *name)), "auth.keys", quoted)?;
        let hashes: Vec<(String, &str)> =
            self.auth.keys.iter().enumerate().map(|(position, key)| (format!("auth.keys[{position}].hash"), key.hash.as_str())).collect();
        check_unique(hashes.iter().map(|(path, hash)| (path.clone(), *hash)), "auth.keys", quoted)?;
        check_range("http.ready_max_lag_entries", http.ready_max_lag_entries, HTTP_READY_MAX_LAG_ENTRIES)?;
        if self.auth.keys.is_empty() && !http.allow_unauthenticated && !self.node.listen.ip().is_loopback() {
            return Err(ConfigError::invalid_value(
                "node.listen",
                quoted(&self.node.listen.to_string()),
                "a loopback address (127.0.0.1, [::1]) while no API keys are configured: add [[auth.keys]] (`rushes keys create`), \
                 or set http.allow_unauthenticated = true to serve everyone who reaches this address",
            ));
        }
        Ok(())
    }

    fn validate_node(&self) -> Result<(), ConfigError> {
        let node = &self.node;
        check_range("node.id", node.id, NODE_ID)?;
        // An empty path would silently mean the working directory; a non-UTF-8 one could not be
        // written back by to_toml_string.
        match node.data_dir.to_str() {
            Some(text) if !text.is_empty() => {}
            Some(_) => {
                return Err(ConfigError::invalid_value("node.data_dir", "\"\"", "expected a directory path such as \"./rushes-data\""))
            }
            None => {
                return Err(ConfigError::invalid_value("node.data_dir", format!("{:?}", node.data_dir), "the path must be valid UTF-8"))
            }
        }
        // node.listen is a SocketAddr: parsing it already validated it.
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        check_name("cluster.cluster_id", &cluster.cluster_id, &['-'], CLUSTER_ID_MAX_BYTES, "lower-case letters a-z, digits and '-'")?;
        check_range("cluster.shards", cluster.shards, CLUSTER_SHARDS)?;
        check_range("cluster.replication_factor", cluster.replication_factor, CLUSTER_REPLICATION_FACTOR)?;

        let address_help = "expected \"host:port\" such as \"10.0.0.2:7800\", \"rushes-2.internal:7800\" or \"[::1]:7800\"";
        for (position, member) in cluster.nodes.iter().enumerate() {
            let member_key = format!("cluster.nodes[{position}]");
            check_range(&format!("{member_key}.id"), member.id, CLUSTER_NODE_ID)?;
            if !is_host_and_port(&member.raft_addr) {
                return Err(ConfigError::invalid_value(format!("{member_key}.raft_addr"), quoted(&member.raft_addr), address_help));
            }
            if !is_host_and_port(&member.http_addr) {
                return Err(ConfigError::invalid_value(format!("{member_key}.http_addr"), quoted(&member.http_addr), address_help));
            }
        }
        let member_ids: Vec<String> = cluster.nodes.iter().map(|member| member.id.to_string()).collect();
        check_unique(
            member_ids.iter().enumerate().map(|(position, id)| (format!("cluster.nodes[{position}].id"), id.as_str())),
            "cluster.nodes",
            |id| id.to_string(),
        )?;
        check_unique(
            cluster
                .nodes
                .iter()
                .enumerate()
                .map(|(position, member)| (format!("cluster.nodes[{position}].raft_addr"), member.raft_addr.as_str())),
            "cluster.nodes",
            quoted,
        )?;
        check_unique(
            cluster
                .nodes
                .iter()
                .enumerate()
                .map(|(position, member)| (format!("cluster.nodes[{position}].http_addr"), member.http_addr.as_str())),
            "cluster.nodes",
            quoted,
        )?;

        if !cluster.nodes.is_empty() && !cluster.nodes.iter().any(|member| member.id == self.node.id) {
            return Err(ConfigError::invalid_value(
                "node.id",
                self.node.id.to_string(),
                format!("cluster.nodes lists ids {}; node.id must be one of them", member_ids.join(", ")),
            ));
        }

        // A single node (no members listed) holds every shard once, whatever the factor says.
        let node_count = cluster.nodes.len();
        if node_count > 0 && cluster.replication_factor > node_count {
            let allowed_max = (node_count as u64).min(CLUSTER_REPLICATION_FACTOR.max);
            return Err(ConfigError::out_of_range(
                "cluster.replication_factor",
                cluster.replication_factor.to_string(),
                format!(
                    "{}..={allowed_max} (cannot exceed the number of nodes in cluster.nodes: {node_count}; set cluster.replication_factor)",
                    CLUSTER_REPLICATION_FACTOR.min
                ),
            ));
        }
        Ok(())
    }

    fn validate_fusion_and_index(&self) -> Result<(), ConfigError> {
        check_range("fusion.bucket_ms", self.fusion.bucket_ms, FUSION_BUCKET_MS)?;
        check_range("fusion.batch_entries_max", self.fusion.batch_entries_max, FUSION_BATCH_ENTRIES_MAX)?;
        check_range("index.commit_interval_ms", self.index.commit_interval_ms, INDEX_COMMIT_INTERVAL_MS)?;
        check_range("index.writer_heap_bytes", self.index.writer_heap_bytes, INDEX_WRITER_HEAP_BYTES)?;
        Ok(())
    }

    fn validate_vector_spaces(&self) -> Result<(), ConfigError> {
        if self.vector_spaces.len() > VECTOR_SPACES_MAX_COUNT {
            return Err(ConfigError::out_of_range(
                "vector_spaces",
                format!("{} entries", self.vector_spaces.len()),
                format!("at most {VECTOR_SPACES_MAX_COUNT} entries"),
            ));
        }
        for (position, space) in self.vector_spaces.iter().enumerate() {
            let space_key = format!("vector_spaces[{position}]");
            check_name(
                &format!("{space_key}.name"),
                &space.name,
                &['_', '-'],
                VECTOR_SPACE_NAME_MAX_BYTES,
                "lower-case letters a-z, digits, '_' and '-'",
            )?;
            check_range(&format!("{space_key}.dimensions"), space.dimensions, VECTOR_DIMENSIONS)?;
            check_range(&format!("{space_key}.connectivity"), space.connectivity, VECTOR_CONNECTIVITY)?;
            check_range(&format!("{space_key}.expansion_add"), space.expansion_add, VECTOR_EXPANSION_ADD)?;
            check_range(&format!("{space_key}.expansion_search"), space.expansion_search, VECTOR_EXPANSION_SEARCH)?;
        }
        check_unique(
            self.vector_spaces.iter().enumerate().map(|(position, space)| (format!("vector_spaces[{position}].name"), space.name.as_str())),
            "vector_spaces",
            quoted,
        )
    }

    fn validate_embedder(&self) -> Result<(), ConfigError> {
        let embedder = &self.embedder;
        if !is_embedder_url(&embedder.url) {
            return Err(ConfigError::invalid_value(
                "embedder.url",
                quoted(&embedder.url),
                format!(
                    "use \"\" (no embedder), \"{demo}\" (the built-in offline demo embedder) or the http:// or https:// URL of an \
                     OpenAI-compatible embeddings endpoint such as \"http://127.0.0.1:8080/v1/embeddings\", at most \
                     {EMBEDDER_URL_MAX_BYTES} bytes without spaces; \"{demo}:SEED\" is the demo embedder of the season \
                     `rushes gen --seed SEED` wrote (SEED in 0..={})",
                    i64::MAX,
                    demo = EmbedderConfig::DEMO_URL
                ),
            ));
        }
        if embedder.model.len() > EMBEDDER_MODEL_MAX_BYTES || embedder.model.chars().any(char::is_control) {
            return Err(ConfigError::invalid_value(
                "embedder.model",
                quoted(&embedder.model),
                format!("use a model name of at most {EMBEDDER_MODEL_MAX_BYTES} bytes without control characters, or \"\" to send none"),
            ));
        }
        check_api_key_env(&embedder.api_key_env)?;
        // The space only matters when there is an embedder: with url = "" nothing is embedded,
        // and a config that drops its vector spaces need not also touch [embedder].
        if embedder.is_enabled() && self.vector_space(&embedder.space).is_none() {
            let allowed = if self.vector_spaces.is_empty() {
                "no vector_spaces are configured; add one, or set embedder.url = \"\" to turn the embedder off".to_string()
            } else {
                let names: Vec<String> = self.vector_spaces.iter().map(|space| quoted(&space.name)).collect();
                format!("use the name of a configured vector space: {}", names.join(", "))
            };
            return Err(ConfigError::invalid_value("embedder.space", quoted(&embedder.space), allowed));
        }
        check_range("embedder.timeout_ms", embedder.timeout_ms, EMBEDDER_TIMEOUT_MS)?;
        check_range("embedder.max_text_bytes", embedder.max_text_bytes, EMBEDDER_MAX_TEXT_BYTES)?;
        check_range("embedder.cache_entries", embedder.cache_entries, EMBEDDER_CACHE_ENTRIES)?;
        Ok(())
    }

    fn validate_search(&self) -> Result<(), ConfigError> {
        let search = &self.search;
        // search.fusion is an enum: parsing it already validated it.
        check_range("search.rank_constant", search.rank_constant, SEARCH_RANK_CONSTANT)?;
        check_range("search.rank_window", search.rank_window, SEARCH_RANK_WINDOW)?;
        check_range("search.exact_vector_max_candidates", search.exact_vector_max_candidates, SEARCH_EXACT_VECTOR_MAX_CANDIDATES)?;
        check_range("search.suggest_limit", search.suggest_limit, SEARCH_SUGGEST_LIMIT)?;
        check_range("search.label_cache_bytes_per_document", search.label_cache_bytes_per_document, SEARCH_LABEL_CACHE_BYTES_PER_DOCUMENT)?;
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        check_range("limits.max_body_bytes", limits.max_body_bytes, LIMITS_MAX_BODY_BYTES)?;
        check_range("limits.max_batch_items", limits.max_batch_items, LIMITS_MAX_BATCH_ITEMS)?;
        check_range("limits.max_id_bytes", limits.max_id_bytes, LIMITS_MAX_ID_BYTES)?;
        check_range("limits.max_asset_id_bytes", limits.max_asset_id_bytes, LIMITS_MAX_ASSET_ID_BYTES)?;
        check_range("limits.max_name_bytes", limits.max_name_bytes, LIMITS_MAX_NAME_BYTES)?;
        check_range("limits.max_label_bytes", limits.max_label_bytes, LIMITS_MAX_LABEL_BYTES)?;
        check_range("limits.max_text_bytes", limits.max_text_bytes, LIMITS_MAX_TEXT_BYTES)?;
        check_range("limits.max_time_ms", limits.max_time_ms, LIMITS_MAX_TIME_MS)?;
        check_range("limits.max_interval_ms", limits.max_interval_ms, LIMITS_MAX_INTERVAL_MS)?;
        // An annotation interval can never be longer than the timeline it lives on.
        if limits.max_interval_ms > limits.max_time_ms {
            return Err(ConfigError::out_of_range(
                "limits.max_interval_ms",
                limits.max_interval_ms.to_string(),
                format!(
                    "{}..={} (cannot exceed limits.max_time_ms = {})",
                    LIMITS_MAX_INTERVAL_MS.min, limits.max_time_ms, limits.max_time_ms
                ),
            ));
        }
        check_range("limits.ingest_queue_depth", limits.ingest_queue_depth, LIMITS_INGEST_QUEUE_DEPTH)?;
        check_range("limits.unindexed_entries_max", limits.unindexed_entries_max, LIMITS_UNINDEXED_ENTRIES_MAX)?;
        check_range("limits.unindexed_annotations_max", limits.unindexed_annotations_max, LIMITS_UNINDEXED_ANNOTATIONS_MAX)?;
        check_range("limits.min_free_disk_bytes", limits.min_free_disk_bytes, LIMITS_MIN_FREE_DISK_BYTES)?;
        check_range("limits.request_timeout_ms", limits.request_timeout_ms, LIMITS_REQUEST_TIMEOUT_MS)?;
        check_range("limits.search_queue_depth", limits.search_queue_depth, LIMITS_SEARCH_QUEUE_DEPTH)?;
        check_range("limits.max_clauses", limits.max_clauses, LIMITS_MAX_CLAUSES)?;
        check_range("limits.max_per_asset", limits.max_per_asset, LIMITS_MAX_PER_ASSET)?;
        check_range("limits.max_limit", limits.max_limit, LIMITS_MAX_LIMIT)?;
        check_range("limits.max_query_bytes", limits.max_query_bytes, LIMITS_MAX_QUERY_BYTES)?;
        check_range("limits.max_vector_k", limits.max_vector_k, LIMITS_MAX_VECTOR_K)?;
        Ok(())
    }

    fn validate_retention(&self) -> Result<(), ConfigError> {
        let interval = self.retention.purge_superseded_interval_ms;
        check_range("retention.purge_superseded_interval_ms", interval, RETENTION_PURGE_SUPERSEDED_INTERVAL_MS)?;
        if interval != 0 && interval < 60_000 {
            return Err(ConfigError::out_of_range(
                "retention.purge_superseded_interval_ms",
                interval.to_string(),
                "0 (keep superseded versions) or 60000..=31536000000".to_string(),
            ));
        }
        Ok(())
    }

    fn validate_raft(&self) -> Result<(), ConfigError> {
        let raft = &self.raft;
        check_range("raft.tick_interval_ms", raft.tick_interval_ms, RAFT_TICK_INTERVAL_MS)?;
        check_range("raft.election_ticks", raft.election_ticks, RAFT_ELECTION_TICKS)?;
        check_range("raft.heartbeat_ticks", raft.heartbeat_ticks, RAFT_HEARTBEAT_TICKS)?;
        // raft-rs requires heartbeat < election: otherwise followers time out between heartbeats
        // and keep electing new leaders.
        if raft.heartbeat_ticks >= raft.election_ticks {
            return Err(ConfigError::out_of_range(
                "raft.heartbeat_ticks",
                raft.heartbeat_ticks.to_string(),
                format!(
                    "{}..={} (must be less than raft.election_ticks = {})",
                    RAFT_HEARTBEAT_TICKS.min,
                    raft.election_ticks.saturating_sub(1),
                    raft.election_ticks
                ),
            ));
        }
        check_range("raft.max_size_per_msg_bytes", raft.max_size_per_msg_bytes, RAFT_MAX_SIZE_PER_MSG_BYTES)?;
        check_range("raft.max_inflight_msgs", raft.max_inflight_msgs, RAFT_MAX_INFLIGHT_MSGS)?;
        check_range("raft.group_commit_max_requests", raft.group_commit_max_requests, RAFT_GROUP_COMMIT_MAX_REQUESTS)?;
        check_range("raft.log_retain_entries", raft.log_retain_entries, RAFT_LOG_RETAIN_ENTRIES)?;
        check_range("raft.snapshot_log_entries", raft.snapshot_log_entries, RAFT_SNAPSHOT_LOG_ENTRIES)?;
        check_range("raft.log_retain_bytes", raft.log_retain_bytes, RAFT_LOG_RETAIN_BYTES)?;
        check_range("raft.snapshot_log_bytes", raft.snapshot_log_bytes, RAFT_SNAPSHOT_LOG_BYTES)?;
        check_range("raft.compaction_interval_ms", raft.compaction_interval_ms, RAFT_COMPACTION_INTERVAL_MS)?;
        check_range("raft.snapshot_chunk_bytes", raft.snapshot_chunk_bytes, RAFT_SNAPSHOT_CHUNK_BYTES)?;
        check_range("raft.snapshot_transfer_bytes_per_s", raft.snapshot_transfer_bytes_per_s, RAFT_SNAPSHOT_TRANSFER_BYTES_PER_S)?;
        if raft.snapshot_transfer_bytes_per_s != 0 && raft.snapshot_transfer_bytes_per_s < 64 * KIB as u64 {
            return Err(ConfigError::invalid_value(
                "raft.snapshot_transfer_bytes_per_s",
                raft.snapshot_transfer_bytes_per_s.to_string(),
                "0 (unlimited) or at least 65536 (64 KiB/s)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_forms() {
        for good in ["10.0.0.2:7800", "rushes-2.internal:7800", "[::1]:7800", "localhost:1"] {
            assert!(is_host_and_port(good), "{good}");
        }
        for bad in ["", "10.0.0.2", ":7800", "host:0", "host:70000", "::1:7800", "[::1:7800", "bad host:1", "-a:1", "a..b:1"] {
            assert!(!is_host_and_port(bad), "{bad}");
        }
    }

    #[test]
    fn ranges_describe_byte_units() {
        assert_eq!(describe_range("index.writer_heap_bytes", INDEX_WRITER_HEAP_BYTES), "15728640..=4294967296 (15 MiB..=4 GiB)");
        assert_eq!(describe_range("fusion.bucket_ms", FUSION_BUCKET_MS), "100..=60000");
        assert_eq!(describe_range("node.id", NODE_ID), "at least 1");
    }

    #[test]
    fn embedder_url_forms() {
        for good in [
            "",
            "demo",
            "demo:1",
            "demo:0",
            "demo:9223372036854775807",
            "http://127.0.0.1:8080/v1/embeddings",
            "https://api.example.com/v1/embeddings",
            "http://e:1",
        ] {
            assert!(is_embedder_url(good), "{good}");
        }
        let too_long = format!("http://{}", "a".repeat(EMBEDDER_URL_MAX_BYTES));
        for bad in [
            "Demo",
            "ftp://x",
            "http://",
            "https:///path",
            "127.0.0.1:8080",
            "http://a b",
            "http://a\n",
            " demo",
            "demo:",
            "demo:x",
            "demo:+1",
            "demo: 1",
            "demo:-1",
            "demo:9223372036854775808",
            "demo:1:2",
            "demo1",
            too_long.as_str(),
        ] {
            assert!(!is_embedder_url(bad), "{bad}");
        }
        let seed = |url: &str| EmbedderConfig { url: url.into(), ..EmbedderConfig::default() }.demo_seed();
        assert_eq!((seed("demo"), seed("demo:1"), seed("demo:007"), seed("http://e:1")), (None, Some(1), Some(7), None));
        assert_eq!(EmbedderConfig::demo_url(42), "demo");
        assert_eq!(EmbedderConfig::demo_url(1), "demo:1");
        assert!(EmbedderConfig { url: "demo:1".into(), ..EmbedderConfig::default() }.is_demo());
    }

    #[test]
    fn api_key_env_names() {
        for good in ["", "OPENAI_API_KEY", "_KEY", "key2"] {
            assert!(check_api_key_env(good).is_ok(), "{good}");
        }
        for bad in ["2KEY", "MY-KEY", "MY KEY", "sk-abc123", "RUSHES_EMBEDDER_KEY", "rushes_key"] {
            assert!(check_api_key_env(bad).is_err(), "{bad}");
        }
    }
}
