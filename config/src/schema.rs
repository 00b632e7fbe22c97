//! The shape of the configuration: which keys exist in which table and what type of TOML value
//! each holds. The loader checks the merged table against it before deserializing, so unknown
//! keys, wrong types and bad enum values are reported with the full key path and the allowed
//! values rather than as a bare serde message. A unit test keeps it in step with the structs.

use crate::{FusionMethod, LogFormat, LogLevel, Metric, Quantization};

/// The TOML type a key holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A non-negative integer. Ranges are checked later by `Config::validate`.
    Integer,
    /// Any string (paths, names, `host:port`). Content is checked by `Config::validate`.
    Text,
    /// A string that must parse as `std::net::SocketAddr`.
    SocketAddress,
    /// `true` or `false`.
    Bool,
    /// An array of strings.
    TextArray,
    /// A string that must be one of these spellings (a lower-case enum).
    Choice(&'static [&'static str]),
    /// A table with these keys, all optional.
    Table(&'static [Field]),
    /// An array of tables whose entries have these keys.
    TableArray(&'static [Field]),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Only used inside arrays of tables: sections are all optional.
    pub required: bool,
}

impl Field {
    const fn optional(name: &'static str, kind: Kind) -> Field {
        Field { name, kind, required: false }
    }
    const fn required(name: &'static str, kind: Kind) -> Field {
        Field { name, kind, required: true }
    }
}

/// The names of `fields`, in declaration order (the order of the example file).
pub(crate) fn field_names(fields: &[Field]) -> Vec<&'static str> {
    fields.iter().map(|field| field.name).collect()
}

pub(crate) fn find_field(fields: &'static [Field], name: &str) -> Option<&'static Field> {
    fields.iter().find(|field| field.name == name)
}

/// Top level: one entry per section, in the order of `Config`.
pub(crate) const TOP_LEVEL: &[Field] = &[
    Field::optional("node", Kind::Table(NODE)),
    Field::optional("cluster", Kind::Table(CLUSTER)),
    Field::optional("fusion", Kind::Table(FUSION)),
    Field::optional("index", Kind::Table(INDEX)),
    Field::optional("vector_spaces", Kind::TableArray(VECTOR_SPACE)),
    Field::optional("embedder", Kind::Table(EMBEDDER)),
    Field::optional("search", Kind::Table(SEARCH)),
    Field::optional("limits", Kind::Table(LIMITS)),
    Field::optional("raft", Kind::Table(RAFT)),
    Field::optional("log", Kind::Table(LOG)),
    Field::optional("http", Kind::Table(HTTP)),
    Field::optional("auth", Kind::Table(AUTH)),
    Field::optional("retention", Kind::Table(RETENTION)),
];

const RETENTION: &[Field] = &[Field::optional("purge_superseded_interval_ms", Kind::Integer)];

const NODE: &[Field] =
    &[Field::optional("id", Kind::Integer), Field::optional("data_dir", Kind::Text), Field::optional("listen", Kind::SocketAddress)];

const CLUSTER: &[Field] = &[
    Field::optional("cluster_id", Kind::Text),
    Field::optional("shards", Kind::Integer),
    Field::optional("replication_factor", Kind::Integer),
    Field::optional("nodes", Kind::TableArray(CLUSTER_NODE)),
    Field::optional("join", Kind::Bool),
    Field::optional("tls_ca_file", Kind::Text),
    Field::optional("tls_cert_file", Kind::Text),
    Field::optional("tls_key_file", Kind::Text),
    Field::optional("insecure_peers", Kind::Bool),
    Field::optional("max_frame_bytes", Kind::Integer),
    Field::optional("max_inbound_connections", Kind::Integer),
    Field::optional("peer_idle_timeout_ms", Kind::Integer),
];

const CLUSTER_NODE: &[Field] =
    &[Field::required("id", Kind::Integer), Field::required("raft_addr", Kind::Text), Field::required("http_addr", Kind::Text)];

const FUSION: &[Field] = &[Field::optional("bucket_ms", Kind::Integer), Field::optional("batch_entries_max", Kind::Integer)];

const INDEX: &[Field] = &[Field::optional("commit_interval_ms", Kind::Integer), Field::optional("writer_heap_bytes", Kind::Integer)];

const VECTOR_SPACE: &[Field] = &[
    Field::required("name", Kind::Text),
    Field::optional("dimensions", Kind::Integer),
    Field::optional("metric", Kind::Choice(Metric::NAMES)),
    Field::optional("quantization", Kind::Choice(Quantization::NAMES)),
    Field::optional("connectivity", Kind::Integer),
    Field::optional("expansion_add", Kind::Integer),
    Field::optional("expansion_search", Kind::Integer),
];

const EMBEDDER: &[Field] = &[
    Field::optional("url", Kind::Text),
    Field::optional("model", Kind::Text),
    Field::optional("api_key_env", Kind::Text),
    Field::optional("tls_ca_file", Kind::Text),
    Field::optional("space", Kind::Text),
    Field::optional("timeout_ms", Kind::Integer),
    Field::optional("max_text_bytes", Kind::Integer),
    Field::optional("cache_entries", Kind::Integer),
];

const SEARCH: &[Field] = &[
    Field::optional("fusion", Kind::Choice(FusionMethod::NAMES)),
    Field::optional("rank_constant", Kind::Integer),
    Field::optional("rank_window", Kind::Integer),
    Field::optional("exact_vector_max_candidates", Kind::Integer),
    Field::optional("suggest_limit", Kind::Integer),
    Field::optional("label_cache_bytes_per_document", Kind::Integer),
];

const LIMITS: &[Field] = &[
    Field::optional("max_body_bytes", Kind::Integer),
    Field::optional("max_batch_items", Kind::Integer),
    Field::optional("max_id_bytes", Kind::Integer),
    Field::optional("max_asset_id_bytes", Kind::Integer),
    Field::optional("max_name_bytes", Kind::Integer),
    Field::optional("max_label_bytes", Kind::Integer),
    Field::optional("max_text_bytes", Kind::Integer),
    Field::optional("max_interval_ms", Kind::Integer),
    Field::optional("max_time_ms", Kind::Integer),
    Field::optional("ingest_queue_depth", Kind::Integer),
    Field::optional("unindexed_entries_max", Kind::Integer),
    Field::optional("unindexed_annotations_max", Kind::Integer),
    Field::optional("min_free_disk_bytes", Kind::Integer),
    Field::optional("request_timeout_ms", Kind::Integer),
    Field::optional("search_queue_depth", Kind::Integer),
    Field::optional("max_clauses", Kind::Integer),
    Field::optional("max_per_asset", Kind::Integer),
    Field::optional("max_limit", Kind::Integer),
    Field::optional("max_query_bytes", Kind::Integer),
    Field::optional("max_vector_k", Kind::Integer),
    Field::optional("max_annotation_bytes", Kind::Integer),
    Field::optional("body_read_timeout_ms", Kind::Integer),
    Field::optional("ingest_bytes_in_flight_max", Kind::Integer),
];

const RAFT: &[Field] = &[
    Field::optional("tick_interval_ms", Kind::Integer),
    Field::optional("election_ticks", Kind::Integer),
    Field::optional("heartbeat_ticks", Kind::Integer),
    Field::optional("max_size_per_msg_bytes", Kind::Integer),
    Field::optional("max_inflight_msgs", Kind::Integer),
    Field::optional("group_commit_max_requests", Kind::Integer),
    Field::optional("log_retain_entries", Kind::Integer),
    Field::optional("snapshot_log_entries", Kind::Integer),
    Field::optional("log_retain_bytes", Kind::Integer),
    Field::optional("snapshot_log_bytes", Kind::Integer),
    Field::optional("compaction_interval_ms", Kind::Integer),
    Field::optional("snapshot_chunk_bytes", Kind::Integer),
    Field::optional("snapshot_transfer_bytes_per_s", Kind::Integer),
];

const HTTP: &[Field] = &[
    Field::optional("tls_cert_file", Kind::Text),
    Field::optional("tls_key_file", Kind::Text),
    Field::optional("allow_unauthenticated", Kind::Bool),
    Field::optional("ready_max_lag_entries", Kind::Integer),
];

const AUTH: &[Field] = &[Field::optional("keys", Kind::TableArray(API_KEY))];

const API_KEY: &[Field] =
    &[Field::required("name", Kind::Text), Field::required("hash", Kind::Text), Field::required("scopes", Kind::TextArray)];

const LOG: &[Field] = &[Field::optional("level", Kind::Choice(LogLevel::NAMES)), Field::optional("format", Kind::Choice(LogFormat::NAMES))];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterNodeConfig, Config};

    /// Every key the structs serialize must be in the schema with a matching kind, and every
    /// schema key must be serialized: the two descriptions of the config cannot drift apart.
    fn assert_table_matches(fields: &'static [Field], table: &toml::Table, path: &str) {
        let mut serialized_keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut schema_keys = field_names(fields);
        serialized_keys.sort_unstable();
        schema_keys.sort_unstable();
        assert_eq!(serialized_keys, schema_keys, "keys of {path}");
        for field in fields {
            let value = &table[field.name];
            let key = format!("{path}.{}", field.name);
            match field.kind {
                Kind::Integer => assert!(value.is_integer(), "{key} should be an integer"),
                Kind::Bool => assert!(value.is_bool(), "{key} should be a boolean"),
                Kind::TextArray => assert!(value.as_array().is_some_and(|a| a.iter().all(|v| v.is_str())), "{key} should be strings"),
                Kind::Text | Kind::SocketAddress => {
                    assert!(value.is_str(), "{key} should be a string")
                }
                Kind::Choice(names) => {
                    assert!(names.contains(&value.as_str().unwrap_or_default()), "{key}")
                }
                Kind::Table(inner) => assert_table_matches(inner, value.as_table().expect("table"), &key),
                Kind::TableArray(inner) => {
                    let entries = value.as_array().expect("array");
                    assert!(!entries.is_empty(), "{key} needs an entry for this test");
                    for entry in entries {
                        assert_table_matches(inner, entry.as_table().expect("table entry"), &key);
                    }
                }
            }
        }
    }

    #[test]
    fn schema_matches_serialized_structs() {
        let mut config = Config::default();
        config.cluster.nodes.push(ClusterNodeConfig { id: 1, raft_addr: "a:1".into(), http_addr: "a:2".into() });
        config.auth.keys.push(crate::ApiKeyConfig {
            name: "ops".into(),
            hash: format!("sha256:{}", "0".repeat(64)),
            scopes: vec!["read".into()],
        });
        let table = toml::Table::try_from(&config).expect("serializes");
        assert_table_matches(TOP_LEVEL, &table, "config");
    }

    #[test]
    fn enum_names_match_serde_spellings() {
        fn spelling<T: serde::Serialize>(value: T) -> String {
            toml::Value::try_from(value).expect("serializes").as_str().expect("string").to_string()
        }
        for (index, metric) in Metric::ALL.iter().enumerate() {
            assert_eq!(spelling(metric), Metric::NAMES[index]);
            assert_eq!(metric.as_str(), Metric::NAMES[index]);
        }
        for (index, quantization) in Quantization::ALL.iter().enumerate() {
            assert_eq!(spelling(quantization), Quantization::NAMES[index]);
            assert_eq!(quantization.as_str(), Quantization::NAMES[index]);
        }
        for (index, method) in FusionMethod::ALL.iter().enumerate() {
            assert_eq!(spelling(method), FusionMethod::NAMES[index]);
            assert_eq!(method.as_str(), FusionMethod::NAMES[index]);
        }
        for (index, level) in LogLevel::ALL.iter().enumerate() {
            assert_eq!(spelling(level), LogLevel::NAMES[index]);
            assert_eq!(level.as_str(), LogLevel::NAMES[index]);
        }
        for (index, format) in LogFormat::ALL.iter().enumerate() {
            assert_eq!(spelling(format), LogFormat::NAMES[index]);
            assert_eq!(format.as_str(), LogFormat::NAMES[index]);
        }
        assert_eq!(Metric::ALL.len(), Metric::NAMES.len());
        assert_eq!(Quantization::ALL.len(), Quantization::NAMES.len());
        assert_eq!(FusionMethod::ALL.len(), FusionMethod::NAMES.len());
        assert_eq!(LogLevel::ALL.len(), LogLevel::NAMES.len());
        assert_eq!(LogFormat::ALL.len(), LogFormat::NAMES.len());
    }
}
