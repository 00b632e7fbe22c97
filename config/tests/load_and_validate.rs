//! Behaviour of `Config::load` and `Config::validate` as an operator sees it: precedence of the
//! sources and the exact wording of errors.

use std::io::Write as _;
use std::path::Path;

use rushes_config::{
    ClusterNodeConfig, Config, ConfigError, EmbedderConfig, FusionMethod, LogFormat, LogLevel, Metric, Origin, Quantization, SearchConfig,
    VectorSpaceConfig,
};

fn write_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp file");
    file.write_all(contents.as_bytes()).expect("write temp file");
    file
}

fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
}

fn load_file(contents: &str) -> Result<Config, ConfigError> {
    let file = write_file(contents);
    Config::load(Some(file.path()), Vec::new(), &[])
}

fn load_env(variables: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(None, strings(variables), &[])
}

fn load_overrides(overrides: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(None, Vec::new(), &strings(overrides))
}

fn error_text(result: Result<Config, ConfigError>) -> String {
    match result {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn defaults_validate_and_load_without_sources() {
    let defaults = Config::default();
    defaults.validate().expect("defaults are valid");
    assert_eq!(Config::load(None, Vec::new(), &[]).expect("loads"), defaults);
    assert_eq!(defaults.node.id, 1);
    assert_eq!(defaults.node.listen.to_string(), "127.0.0.1:7700");
    assert_eq!(defaults.cluster.cluster_id, "rushes-local");
    assert_eq!(defaults.index.writer_heap_bytes, 64 * 1024 * 1024);
    assert_eq!(defaults.vector_spaces, vec![VectorSpaceConfig::named("scene")]);
    assert_eq!(defaults.vector_spaces[0].metric, Metric::Cosine);
    assert_eq!(defaults.vector_spaces[0].quantization, Quantization::F32);
    assert_eq!(defaults.log.level, LogLevel::Info);
    assert_eq!(defaults.log.format, LogFormat::Text);
    assert_eq!(defaults.limits.max_time_ms, 604_800_000);
    assert_eq!(
        defaults.embedder,
        EmbedderConfig {
            url: String::new(),
            model: String::new(),
            api_key_env: String::new(),
            tls_ca_file: String::new(),
            space: "scene".into(),
            timeout_ms: 2000,
            max_text_bytes: 2048,
            cache_entries: 1024,
        }
    );
    assert!(!defaults.embedder.is_enabled());
    assert_eq!(defaults.embedder.timeout(), std::time::Duration::from_secs(2));
    assert_eq!(
        defaults.search,
        SearchConfig {
            fusion: FusionMethod::Weighted,
            rank_constant: 60,
            rank_window: 1000,
            exact_vector_max_candidates: 20_000,
            suggest_limit: 8,
            label_cache_bytes_per_document: 256,
        }
    );
}

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(load_file("").expect("loads"), Config::default());
}

#[test]
fn precedence_is_defaults_then_file_then_environment_then_overrides() {
    let file = write_file(
        r#"
        [node]
        listen = "0.0.0.0:7000"
        data_dir = "/from/file"
        [http]
        allow_unauthenticated = true
        [fusion]
        bucket_ms = 2000
        [index]
        commit_interval_ms = 2000
        "#,
    );
    let environment = strings(&[
        ("RUSHES_FUSION_BUCKET_MS", "3000"),
        ("RUSHES_INDEX_COMMIT_INTERVAL_MS", "3000"),
        ("PATH", "/usr/bin"),
        ("RUSHES_LOG", "debug,tantivy=warn"),
        ("RUSHES_CONFIG", "/etc/rushes.toml"),
    ]);
    let overrides = strings(&[("fusion.bucket_ms", "4000"), ("node.data_dir", "/tmp/x"), ("fusion.bucket_ms", "5000")]);
    let config = Config::load(Some(file.path()), environment, &overrides).expect("loads");

    assert_eq!(config.node.listen.to_string(), "0.0.0.0:7000", "file beats defaults");
    assert_eq!(config.index.commit_interval_ms, 3000, "environment beats file");
    assert_eq!(config.fusion.bucket_ms, 5000, "overrides beat environment; the last override wins");
    assert_eq!(config.node.data_dir, Path::new("/tmp/x"), "overrides beat file");
    assert_eq!(config.fusion.batch_entries_max, 256, "untouched keys keep their defaults");
}

#[test]
fn environment_sets_string_keys_verbatim() {
    let config = load_env(&[
        ("RUSHES_NODE_LISTEN", "0.0.0.0:9000"),
        ("RUSHES_HTTP_ALLOW_UNAUTHENTICATED", "true"),
        ("RUSHES_CLUSTER_CLUSTER_ID", "123"),
        ("RUSHES_NODE_DATA_DIR", "2024-01-01"),
        ("RUSHES_LOG_LEVEL", "debug"),
        ("RUSHES_LOG_FORMAT", "\"json\""),
    ])
    .expect("loads");
    assert_eq!(config.node.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.cluster.cluster_id, "123");
    assert_eq!(config.node.data_dir, Path::new("2024-01-01"));
    assert_eq!(config.log.level, LogLevel::Debug);
    assert_eq!(config.log.format, LogFormat::Json);
}

#[test]
fn arrays_of_tables_can_be_set_whole_or_per_entry() {
    let config = load_env(&[
        ("RUSHES_VECTOR_SPACES", r#"[{ name = "scene" }, { name = "clip", dimensions = 768, metric = "ip" }]"#),
        ("RUSHES_VECTOR_SPACES_1_QUANTIZATION", "f16"),
        (
            "RUSHES_CLUSTER_NODES",
            r#"[{ id = 1, raft_addr = "a:7800", http_addr = "a:7700" }, { id = 2, raft_addr = "b:7800", http_addr = "b:7700" }]"#,
        ),
        ("RUSHES_CLUSTER_NODES_1_RAFT_ADDR", "b.internal:7801"),
        ("RUSHES_CLUSTER_REPLICATION_FACTOR", "2"),
        ("RUSHES_CLUSTER_INSECURE_PEERS", "true"),
    ])
    .expect("loads");
    assert_eq!(config.vector_spaces.len(), 2);
    assert_eq!(config.vector_spaces[1].name, "clip");
    assert_eq!(config.vector_spaces[1].dimensions, 768);
    assert_eq!(config.vector_spaces[1].metric, Metric::Ip);
    assert_eq!(config.vector_spaces[1].quantization, Quantization::F16);
    assert_eq!(config.vector_spaces[1].connectivity, 16, "per-entry defaults apply");
    assert_eq!(config.cluster.nodes[1].raft_addr, "b.internal:7801");
    assert_eq!(config.cluster.replication_factor, 2);

    let appended = load_overrides(&[("vector_spaces[1].name", "clip"), ("vector_spaces[0].dimensions", "256")]).expect("loads");
    assert_eq!(
        appended.vector_spaces,
        vec![VectorSpaceConfig { dimensions: 256, ..VectorSpaceConfig::named("scene") }, VectorSpaceConfig::named("clip")]
    );

    let text = error_text(load_overrides(&[("vector_spaces", "[{ name = ")]));
    assert!(text.starts_with("cannot parse command-line override vector_spaces: expected a TOML array of inline tables"), "{text}");
    assert!(text.ends_with("incomplete value at byte 10 of \"[{ name = \""), "{text}");

    let text = error_text(load_overrides(&[("vector_spaces[3].name", "far")]));
    assert!(text.contains("vector_spaces[3] is past the end"), "{text}");
}

#[test]
fn file_vector_spaces_replace_the_default_list() {
    let config = load_file("[[vector_spaces]]\nname = \"clip\"\ndimensions = 768\n").expect("loads");
    assert_eq!(config.vector_spaces.len(), 1);
    assert_eq!(config.vector_spaces[0].name, "clip");
    let none = load_file("vector_spaces = []\n").expect("loads");
    assert!(none.vector_spaces.is_empty());
}

#[test]
fn every_range_violation_names_its_key_and_range() {
    // (key, a value below the range or None, a value above the range or None, allowed text)
    let cases: &[(&str, Option<&str>, Option<&str>, &str)] = &[
        ("node.id", Some("0"), None, "at least 1"),
        ("cluster.shards", Some("0"), Some("1025"), "1..=1024"),
        ("cluster.replication_factor", Some("0"), Some("8"), "1..=7"),
        ("fusion.bucket_ms", Some("50"), Some("60001"), "100..=60000"),
        ("fusion.batch_entries_max", Some("0"), Some("100001"), "1..=100000"),
        ("index.commit_interval_ms", Some("49"), Some("600001"), "50..=600000"),
        ("index.writer_heap_bytes", Some("1048576"), Some("4294967297"), "15728640..=4294967296 (15 MiB..=4 GiB)"),
        ("vector_spaces[0].dimensions", Some("0"), Some("4097"), "1..=4096"),
        ("vector_spaces[0].connectivity", Some("3"), Some("129"), "4..=128"),
        ("vector_spaces[0].expansion_add", Some("0"), Some("4097"), "1..=4096"),
        ("vector_spaces[0].expansion_search", Some("0"), Some("4097"), "1..=4096"),
        ("embedder.timeout_ms", Some("0"), Some("60001"), "1..=60000"),
        ("embedder.max_text_bytes", Some("0"), Some("1048577"), "1..=1048576"),
        ("embedder.cache_entries", None, Some("100001"), "0..=100000"),
        ("search.rank_constant", Some("0"), Some("10001"), "1..=10000"),
        ("search.rank_window", Some("0"), Some("100001"), "1..=100000"),
        ("search.exact_vector_max_candidates", None, Some("10000001"), "0..=10000000"),
        ("search.suggest_limit", Some("0"), Some("51"), "1..=50"),
        ("search.label_cache_bytes_per_document", None, Some("4097"), "0..=4096"),
        ("limits.max_body_bytes", Some("1023"), Some("1073741825"), "1024..=1073741824 (1 KiB..=1 GiB)"),
        ("limits.max_batch_items", Some("0"), Some("1000001"), "1..=1000000"),
        ("limits.max_id_bytes", Some("0"), Some("4097"), "1..=4096"),
        ("limits.max_asset_id_bytes", Some("0"), Some("4097"), "1..=4096"),
        ("limits.max_name_bytes", Some("0"), Some("1025"), "1..=1024"),
        ("limits.max_label_bytes", Some("0"), Some("65537"), "1..=65536"),
        ("limits.max_text_bytes", Some("0"), Some("1048577"), "1..=1048576"),
        ("limits.max_interval_ms", Some("0"), None, "1..=31536000000"),
        ("limits.max_time_ms", Some("999"), Some("31536000001"), "1000..=31536000000"),
        ("limits.ingest_queue_depth", Some("0"), Some("1000001"), "1..=1000000"),
        ("limits.unindexed_entries_max", Some("15"), Some("1000001"), "16..=1000000"),
        ("limits.unindexed_annotations_max", Some("999"), Some("1000000001"), "1000..=1000000000"),
        ("limits.request_timeout_ms", Some("99"), Some("600001"), "100..=600000"),
        ("limits.search_queue_depth", Some("0"), Some("1000001"), "1..=1000000"),
        ("limits.max_clauses", Some("0"), Some("1025"), "1..=1024"),
        ("limits.max_per_asset", Some("0"), Some("100001"), "1..=100000"),
        ("limits.max_limit", Some("0"), Some("100001"), "1..=100000"),
        ("limits.max_query_bytes", Some("0"), Some("1048577"), "1..=1048576"),
        ("limits.max_vector_k", Some("0"), Some("1000001"), "1..=1000000"),
        ("raft.tick_interval_ms", Some("9"), Some("10001"), "10..=10000"),
        ("raft.election_ticks", Some("1"), Some("1001"), "2..=1000"),
        ("raft.heartbeat_ticks", Some("0"), None, "1..=999"),
        ("raft.max_size_per_msg_bytes", Some("1023"), Some("268435457"), "1024..=268435456 (1 KiB..=256 MiB)"),
        ("raft.max_inflight_msgs", Some("0"), Some("65537"), "1..=65536"),
        ("raft.group_commit_max_requests", Some("0"), Some("100001"), "1..=100000"),
    ];
    for (key, too_low, too_high, allowed) in cases {
        for bad_value in [too_low, too_high].into_iter().flatten() {
            let text = error_text(load_overrides(&[(key, bad_value)]));
            let expected = format!("{key} = {bad_value} is out of range: allowed {allowed} (from command-line override {key})");
            assert_eq!(text, expected);
        }
    }
}

#[test]
fn range_error_message_matches_the_documented_form() {
    let mut config = Config::default();
    config.fusion.bucket_ms = 50;
    let error = config.validate().expect_err("out of range");
    assert_eq!(error.to_string(), "fusion.bucket_ms = 50 is out of range: allowed 100..=60000");
    assert_eq!(error.key(), Some("fusion.bucket_ms"));
}

#[test]
fn errors_say_which_source_set_the_value() {
    let file = write_file("[fusion]\nbucket_ms = 50\n");
    let text = error_text(Config::load(Some(file.path()), Vec::new(), &[]));
    assert_eq!(text, format!("fusion.bucket_ms = 50 is out of range: allowed 100..=60000 (from file {})", file.path().display()));

    let text = error_text(load_env(&[("RUSHES_FUSION_BUCKET_MS", "50")]));
    assert_eq!(text, "fusion.bucket_ms = 50 is out of range: allowed 100..=60000 (from environment variable RUSHES_FUSION_BUCKET_MS)");
}

#[test]
fn unknown_key_in_file_is_named_with_the_allowed_keys() {
    let text = error_text(load_file("[index]\ncomit_interval_ms = 500\n"));
    assert!(text.starts_with("unknown key \"index.comit_interval_ms\" (from file "), "{text}");
    assert!(text.ends_with(": allowed keys in [index] are commit_interval_ms, writer_heap_bytes"), "{text}");

    let text = error_text(load_file("[indx]\ncommit_interval_ms = 500\n"));
    assert!(text.starts_with("unknown key \"indx\""), "{text}");
    assert!(
        text.ends_with(
            "allowed keys in the top level are node, cluster, fusion, index, vector_spaces, embedder, search, limits, raft, log, http, auth, retention"
        ),
        "{text}"
    );

    let text = error_text(load_file("[[vector_spaces]]\nname = \"scene\"\ndimension = 3\n"));
    assert!(text.starts_with("unknown key \"vector_spaces[0].dimension\""), "{text}");
    assert!(text.contains("allowed keys in [[vector_spaces]] are name, dimensions, metric"), "{text}");
}

#[test]
fn unknown_environment_variable_is_named() {
    let error = load_env(&[("RUSHES_INDEX_COMIT_INTERVAL_MS", "500")]).expect_err("unknown");
    assert_eq!(
        error.to_string(),
        "unknown key \"index.comit_interval_ms\" (from environment variable RUSHES_INDEX_COMIT_INTERVAL_MS): \
         allowed keys in [index] are commit_interval_ms, writer_heap_bytes"
    );
    assert_eq!(error.origin(), Some(&Origin::EnvironmentVariable("RUSHES_INDEX_COMIT_INTERVAL_MS".to_string())));

    let text = error_text(load_env(&[("RUSHES_INDX_COMMIT_INTERVAL_MS", "500")]));
    assert!(text.contains("RUSHES_INDX_COMMIT_INTERVAL_MS"), "{text}");
    assert!(text.contains("allowed keys in the top level are node, cluster"), "{text}");

    let text = error_text(load_env(&[("RUSHES_VECTOR_SPACES_ZERO_NAME", "x")]));
    assert!(text.contains("RUSHES_VECTOR_SPACES_<index>_<key>"), "{text}");
}

#[test]
fn unknown_override_key_is_named() {
    let error = load_overrides(&[("index.comit_interval_ms", "500")]).expect_err("unknown");
    assert_eq!(
        error.to_string(),
        "unknown key \"index.comit_interval_ms\" (from command-line override index.comit_interval_ms): \
         allowed keys in [index] are commit_interval_ms, writer_heap_bytes"
    );
    let text = error_text(load_overrides(&[("vector_spaces[0].metrik", "ip")]));
    assert!(text.starts_with("unknown key \"vector_spaces[0].metrik\""), "{text}");
    let text = error_text(load_overrides(&[("node", "1")]));
    assert!(text.contains("allowed keys in [node] are id, data_dir, listen"), "{text}");
    let text = error_text(load_overrides(&[("fusion..bucket_ms", "1")]));
    assert!(text.contains("empty key segment"), "{text}");
}

#[test]
fn bad_enum_value_names_the_allowed_values() {
    let text = error_text(load_file("[[vector_spaces]]\nname = \"scene\"\nmetric = \"dot\"\n"));
    assert!(text.starts_with("vector_spaces[0].metric = \"dot\" is not allowed: use one of \"cosine\", \"l2\", \"ip\""), "{text}");

    let text = error_text(load_env(&[("RUSHES_LOG_LEVEL", "verbose")]));
    assert_eq!(
        text,
        "log.level = \"verbose\" is not allowed: use one of \"trace\", \"debug\", \"info\", \"warn\", \"error\" \
         (from environment variable RUSHES_LOG_LEVEL)"
    );
    let text = error_text(load_overrides(&[("vector_spaces[0].quantization", "f64")]));
    assert!(text.contains("use one of \"f32\", \"f16\", \"i8\""), "{text}");
    let text = error_text(load_overrides(&[("log.format", "yaml")]));
    assert!(text.contains("use one of \"text\", \"json\""), "{text}");
}

#[test]
fn wrong_types_name_the_key() {
    let text = error_text(load_env(&[("RUSHES_FUSION_BUCKET_MS", "1s")]));
    assert!(text.starts_with("fusion.bucket_ms = \"1s\" is not allowed: expected a non-negative integer"), "{text}");
    assert!(text.ends_with("(from environment variable RUSHES_FUSION_BUCKET_MS)"), "{text}");

    let text = error_text(load_file("[fusion]\nbucket_ms = -5\n"));
    assert!(text.starts_with("fusion.bucket_ms = -5 is not allowed"), "{text}");
    let text = error_text(load_file("[cluster]\ncluster_id = 7\n"));
    assert!(text.starts_with("cluster.cluster_id = 7 is not allowed: expected a string"), "{text}");
    let text = error_text(load_file("node = 3\n"));
    assert!(text.starts_with("node = 3 is not allowed: expected a table"), "{text}");
}

#[test]
fn invalid_listen_address_is_rejected() {
    for bad in ["localhost:7700", "127.0.0.1", "127.0.0.1:99999", ""] {
        let text = error_text(load_overrides(&[("node.listen", bad)]));
        assert!(text.starts_with(&format!("node.listen = \"{bad}\" is not allowed: expected an IP address and port")), "{text}");
    }
    assert_eq!(load_overrides(&[("node.listen", "[::1]:8000")]).expect("loads").node.listen.to_string(), "[::1]:8000");
}

#[test]
fn duplicate_vector_space_names_are_rejected() {
    let text = error_text(load_file(
        "[[vector_spaces]]\nname = \"scene\"\n[[vector_spaces]]\nname = \"clip\"\n[[vector_spaces]]\nname = \"scene\"\n",
    ));
    assert!(
        text.starts_with("vector_spaces[2].name = \"scene\" is not allowed: values must be unique within vector_spaces; vector_spaces[0].name already uses it"),
        "{text}"
    );
}

#[test]
fn vector_space_names_are_checked() {
    let text = error_text(load_overrides(&[("vector_spaces[0].name", "Scene")]));
    assert!(
        text.starts_with("vector_spaces[0].name = \"Scene\" is not allowed: use lower-case letters a-z, digits, '_' and '-'"),
        "{text}"
    );
    let text = error_text(load_file("[[vector_spaces]]\ndimensions = 3\n"));
    assert!(text.starts_with("missing key \"vector_spaces[0].name\""), "{text}");
}

#[test]
fn heartbeat_must_be_shorter_than_election() {
    let text = error_text(load_overrides(&[("raft.election_ticks", "5"), ("raft.heartbeat_ticks", "5")]));
    assert!(
        text.starts_with("raft.heartbeat_ticks = 5 is out of range: allowed 1..=4 (must be less than raft.election_ticks = 5)"),
        "{text}"
    );
    // Blamed on the key even when it kept its default and only election_ticks was changed.
    let text = error_text(load_overrides(&[("raft.election_ticks", "2"), ("raft.heartbeat_ticks", "2")]));
    assert!(text.starts_with("raft.heartbeat_ticks = 2 is out of range"), "{text}");
    load_overrides(&[("raft.election_ticks", "3"), ("raft.heartbeat_ticks", "2")]).expect("2 < 3 is fine");
}

#[test]
fn cluster_membership_rules() {
    let three_nodes = r#"
        [node]
        id = 2
        [cluster]
        replication_factor = 3
        insecure_peers = true
        [[cluster.nodes]]
        id = 1
        raft_addr = "rushes-1:7800"
        http_addr = "rushes-1:7700"
        [[cluster.nodes]]
        id = 2
        raft_addr = "rushes-2:7800"
        http_addr = "rushes-2:7700"
        [[cluster.nodes]]
        id = 3
        raft_addr = "[fd00::3]:7800"
        http_addr = "10.0.0.3:7700"
    "#;
    let config = load_file(three_nodes).expect("loads");
    assert_eq!(config.cluster.node_count(), 3);
    assert_eq!(config.cluster.nodes[2], ClusterNodeConfig { id: 3, raft_addr: "[fd00::3]:7800".into(), http_addr: "10.0.0.3:7700".into() });

    let file = write_file(three_nodes);
    let load_with = |overrides: &[(&str, &str)]| Config::load(Some(file.path()), Vec::new(), &strings(overrides));

    let text = error_text(load_with(&[("node.id", "4")]));
    assert!(text.starts_with("node.id = 4 is not allowed: cluster.nodes lists ids 1, 2, 3; node.id must be one of them"), "{text}");
    let text = error_text(load_with(&[("cluster.nodes[2].id", "1")]));
    assert!(text.starts_with("cluster.nodes[2].id = 1 is not allowed: values must be unique within cluster.nodes"), "{text}");
    let text = error_text(load_with(&[("cluster.nodes[1].raft_addr", "rushes-2")]));
    assert!(text.starts_with("cluster.nodes[1].raft_addr = \"rushes-2\" is not allowed: expected \"host:port\""), "{text}");
    let text = error_text(load_with(&[("cluster.nodes[3].id", "4")]));
    assert!(text.starts_with("missing key \"cluster.nodes[3].raft_addr\""), "{text}");
    assert!(text.ends_with("every entry of [[cluster.nodes]] must set id, raft_addr, http_addr"), "{text}");

    let text = error_text(load_with(&[("cluster.replication_factor", "4")]));
    assert!(
        text.starts_with(
            "cluster.replication_factor = 4 is out of range: allowed 1..=3 (cannot exceed the number of nodes in cluster.nodes: 3"
        ),
        "{text}"
    );
    // A single node ignores the factor (the default, 3, included).
    assert!(load_overrides(&[("cluster.replication_factor", "2")]).is_ok());
    let text = error_text(load_overrides(&[("cluster.cluster_id", "Rushes_Prod")]));
    assert!(text.starts_with("cluster.cluster_id = \"Rushes_Prod\" is not allowed: use lower-case letters a-z, digits and '-'"), "{text}");
}

#[test]
fn interval_cannot_exceed_timeline() {
    let text = error_text(load_overrides(&[("limits.max_time_ms", "60000"), ("limits.max_interval_ms", "60001")]));
    assert!(
        text.starts_with("limits.max_interval_ms = 60001 is out of range: allowed 1..=60000 (cannot exceed limits.max_time_ms = 60000)"),
        "{text}"
    );
}

#[test]
fn syntax_errors_carry_line_information() {
    let file = write_file("[node]\nid = 1\nlisten = \"127.0.0.1:7700\n");
    let error = Config::load(Some(file.path()), Vec::new(), &[]).expect_err("bad TOML");
    assert!(matches!(error, ConfigError::Parse { .. }));
    let text = error.to_string();
    assert!(text.contains("line 3"), "{text}");
    assert!(text.contains(&file.path().display().to_string()), "{text}");
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("absent.toml");
    let error = Config::load(Some(&path), Vec::new(), &[]).expect_err("missing");
    assert!(matches!(error, ConfigError::Io { .. }));
    assert!(error.to_string().contains("absent.toml"), "{error}");
}

#[test]
fn example_toml_parses_to_the_defaults() {
    let example = Config::example_toml();
    let parsed: Config = toml::from_str(&example).expect("example is valid TOML for Config");
    assert_eq!(parsed, Config::default());
    assert_eq!(load_file(&example).expect("example loads"), Config::default());
    // Every key is documented: each one appears as an assignment in the example.
    let serialized = Config::default().to_toml_string();
    for line in serialized.lines() {
        if let Some((key, _)) = line.split_once(" = ") {
            assert!(example.contains(&format!("\n{key} = ")), "example lacks {key}");
        }
    }
}

#[test]
fn to_toml_string_round_trips_through_load() {
    let mut config = Config::default();
    config.node.id = 2;
    config.node.data_dir = "/var/lib/rushes".into();
    config.node.listen = "[::]:7701".parse().expect("address");
    config.cluster.cluster_id = "prod-eu".into();
    config.cluster.replication_factor = 2;
    config.cluster.nodes = vec![
        ClusterNodeConfig { id: 1, raft_addr: "a:7800".into(), http_addr: "a:7700".into() },
        ClusterNodeConfig { id: 2, raft_addr: "b:7800".into(), http_addr: "b:7700".into() },
    ];
    config.cluster.tls_ca_file = "/etc/rushes/ca.pem".into();
    config.cluster.tls_cert_file = "/etc/rushes/node-2.pem".into();
    config.cluster.tls_key_file = "/etc/rushes/node-2.key".into();
    config.http.tls_cert_file = "/etc/rushes/https.pem".into();
    config.http.tls_key_file = "/etc/rushes/https.key".into();
    config.auth.keys.push(rushes_config::ApiKeyConfig {
        name: "ops".into(),
        hash: format!("sha256:{}", "0f".repeat(32)),
        scopes: vec!["admin".into()],
    });
    config.vector_spaces.push(VectorSpaceConfig {
        dimensions: 768,
        metric: Metric::L2,
        quantization: Quantization::I8,
        ..VectorSpaceConfig::named("clip_v2")
    });
    config.raft.heartbeat_ticks = 3;
    config.log.format = LogFormat::Json;
    config.embedder = EmbedderConfig {
        url: "https://embed.internal:8443/v1/embeddings".into(),
        model: "clip-vit-b-32".into(),
        api_key_env: "EMBEDDER_TOKEN".into(),
        tls_ca_file: String::new(),
        space: "clip_v2".into(),
        timeout_ms: 500,
        max_text_bytes: 512,
        cache_entries: 0,
    };
    config.search = SearchConfig {
        fusion: FusionMethod::Rrf,
        rank_constant: 20,
        rank_window: 50,
        exact_vector_max_candidates: 0,
        suggest_limit: 50,
        label_cache_bytes_per_document: 0,
    };
    config.validate().expect("valid");

    for original in [Config::default(), config] {
        let text = original.to_toml_string();
        assert_eq!(load_file(&text).expect("round trip loads"), original, "{text}");
    }
}

#[test]
fn embedder_and_search_keys_come_from_every_source() {
    let config = load_env(&[
        ("RUSHES_EMBEDDER_URL", "http://127.0.0.1:8080/v1/embeddings"),
        ("RUSHES_EMBEDDER_MODEL", "nomic-embed-text"),
        ("RUSHES_EMBEDDER_API_KEY_ENV", "EMBEDDER_TOKEN"),
        ("RUSHES_EMBEDDER_SPACE", "scene"),
        ("RUSHES_EMBEDDER_TIMEOUT_MS", "750"),
        ("RUSHES_EMBEDDER_MAX_TEXT_BYTES", "1024"),
        ("RUSHES_EMBEDDER_CACHE_ENTRIES", "0"),
        ("RUSHES_SEARCH_FUSION", "rrf"),
        ("RUSHES_SEARCH_RANK_CONSTANT", "10"),
        ("RUSHES_SEARCH_RANK_WINDOW", "200"),
        ("RUSHES_SEARCH_EXACT_VECTOR_MAX_CANDIDATES", "0"),
        ("RUSHES_SEARCH_SUGGEST_LIMIT", "12"),
        ("RUSHES_SEARCH_LABEL_CACHE_BYTES_PER_DOCUMENT", "64"),
    ])
    .expect("loads");
    assert_eq!(
        config.embedder,
        EmbedderConfig {
            url: "http://127.0.0.1:8080/v1/embeddings".into(),
            model: "nomic-embed-text".into(),
            api_key_env: "EMBEDDER_TOKEN".into(),
            tls_ca_file: String::new(),
            space: "scene".into(),
            timeout_ms: 750,
            max_text_bytes: 1024,
            cache_entries: 0,
        }
    );
    assert_eq!(
        config.search,
        SearchConfig {
            fusion: FusionMethod::Rrf,
            rank_constant: 10,
            rank_window: 200,
            exact_vector_max_candidates: 0,
            suggest_limit: 12,
            label_cache_bytes_per_document: 64,
        }
    );

    let demo = load_file("[embedder]\nurl = \"demo\"\n[search]\nfusion = \"weighted\"\nsuggest_limit = 3\n").expect("loads");
    assert!(demo.embedder.is_enabled() && demo.embedder.is_demo());
    assert_eq!(demo.search.suggest_limit, 3);
    let overridden = load_overrides(&[("embedder.url", "demo"), ("search.fusion", "rrf")]).expect("loads");
    assert!(overridden.embedder.is_demo());
    assert_eq!(overridden.search.fusion, FusionMethod::Rrf);
    assert_eq!(overridden.search.fusion.to_string(), "rrf");
}

#[test]
fn embedder_url_must_be_empty_demo_or_http() {
    for bad in ["ftp://models.internal/embed", "127.0.0.1:8080/v1/embeddings", "Demo", "http://", "http://host name/v1"] {
        let text = error_text(load_overrides(&[("embedder.url", bad)]));
        let expected = format!(
            "embedder.url = \"{bad}\" is not allowed: use \"\" (no embedder), \"demo\" (the built-in offline demo embedder) or the \
             http:// or https:// URL of an OpenAI-compatible embeddings endpoint"
        );
        assert!(text.starts_with(&expected), "{text}");
        assert!(text.ends_with("(from command-line override embedder.url)"), "{text}");
    }
    for good in ["", "demo", "https://api.openai.com/v1/embeddings", "http://[::1]:11434/v1/embeddings"] {
        load_overrides(&[("embedder.url", good)]).unwrap_or_else(|error| panic!("{good}: {error}"));
    }
    let text = error_text(load_env(&[("RUSHES_EMBEDDER_URL", "localhost:8080")]));
    assert!(text.ends_with("(from environment variable RUSHES_EMBEDDER_URL)"), "{text}");
}

#[test]
fn embedder_space_must_be_a_configured_vector_space_when_enabled() {
    let text = error_text(load_overrides(&[("embedder.url", "demo"), ("embedder.space", "clip")]));
    assert_eq!(
        text,
        "embedder.space = \"clip\" is not allowed: use the name of a configured vector space: \"scene\" \
         (from command-line override embedder.space)"
    );
    let text = error_text(load_file("vector_spaces = []\n[embedder]\nurl = \"demo\"\n"));
    assert!(
        text.starts_with(
            "embedder.space = \"scene\" is not allowed: no vector_spaces are configured; add one, or set embedder.url = \"\" to turn the \
             embedder off"
        ),
        "{text}"
    );
    // Blamed on the key that holds the bad value, and its origin is the defaults (none recorded).
    let error = load_overrides(&[("vector_spaces[0].name", "clip"), ("embedder.url", "demo")]).expect_err("scene is gone");
    assert_eq!(error.key(), Some("embedder.space"));
    // Without an embedder the space is not looked at, so dropping vector spaces needs no [embedder] edit.
    load_file("vector_spaces = []\n").expect("no embedder, no space needed");
    load_overrides(&[("embedder.space", "anything")]).expect("not checked while url is empty");
    let config = load_overrides(&[("vector_spaces[1].name", "clip"), ("embedder.url", "demo"), ("embedder.space", "clip")]).expect("loads");
    assert_eq!(config.vector_space(&config.embedder.space).map(|space| space.dimensions), Some(512));
}

#[test]
fn embedder_api_key_env_is_a_variable_name_not_a_token() {
    let text = error_text(load_overrides(&[("embedder.api_key_env", "sk-proj-abc123")]));
    assert!(
        text.starts_with(
            "embedder.api_key_env = \"sk-proj-abc123\" is not allowed: use \"\" (no token) or the name of an environment variable"
        ),
        "{text}"
    );
    assert!(text.contains("the token itself never goes in the configuration"), "{text}");
    let text = error_text(load_file("[embedder]\napi_key_env = \"RUSHES_EMBEDDER_TOKEN\"\n"));
    assert!(text.contains("use a name that does not start with RUSHES_"), "{text}");
    let config = load_overrides(&[("embedder.api_key_env", "OPENAI_API_KEY")]).expect("loads");
    assert_eq!(config.embedder.api_key_env, "OPENAI_API_KEY");
}

#[test]
fn embedder_model_is_bounded() {
    let long = "m".repeat(257);
    let text = error_text(load_overrides(&[("embedder.model", long.as_str())]));
    assert!(text.starts_with(&format!("embedder.model = \"{long}\" is not allowed: use a model name of at most 256 bytes")), "{text}");
    load_overrides(&[("embedder.model", "sentence-transformers/all-MiniLM-L6-v2")]).expect("loads");
}

#[test]
fn search_fusion_names_the_allowed_methods() {
    let text = error_text(load_env(&[("RUSHES_SEARCH_FUSION", "linear")]));
    assert_eq!(
        text,
        "search.fusion = \"linear\" is not allowed: use one of \"weighted\", \"rrf\" (from environment variable RUSHES_SEARCH_FUSION)"
    );
    let text = error_text(load_file("[search]\nrank_constant = \"60\"\n"));
    assert!(text.starts_with("search.rank_constant = \"60\" is not allowed: expected a non-negative integer"), "{text}");
    let text = error_text(load_file("[search]\nrank_kontant = 60\n"));
    assert!(
        text.ends_with("allowed keys in [search] are fusion, rank_constant, rank_window, exact_vector_max_candidates, suggest_limit, label_cache_bytes_per_document"),
        "{text}"
    );
    let text = error_text(load_env(&[("RUSHES_EMBEDDER_TIMEOUT", "5")]));
    assert!(
        text.ends_with(
            "allowed keys in [embedder] are url, model, api_key_env, tls_ca_file, space, timeout_ms, max_text_bytes, cache_entries"
        ),
        "{text}"
    );
}

fn members(nodes: u64) -> String {
    (1..=nodes)
        .map(|id| format!("{{ id = {id}, raft_addr = \"10.0.0.{id}:7800\", http_addr = \"10.0.0.{id}:7700\" }}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn limits_that_do_not_fit_inside_each_other_are_errors_naming_both_keys() {
    // A body the peer frames cannot carry would be accepted, then never replicated.
    let text = error_text(load_overrides(&[("limits.max_body_bytes", "200000000")]));
    assert!(text.contains("limits.max_body_bytes") && text.contains("cluster.max_frame_bytes"), "{text}");
    let text = error_text(load_overrides(&[("cluster.max_frame_bytes", "16777216"), ("limits.max_body_bytes", "8388608")]));
    assert!(text.contains("limits.max_body_bytes") && text.contains("7864320"), "the largest allowed body is named: {text}");
    load_overrides(&[("cluster.max_frame_bytes", "16777216"), ("limits.max_body_bytes", "7864320")]).expect("fits exactly");
    // The frame limit cannot exceed what the codec decodes.
    let text = error_text(load_overrides(&[("cluster.max_frame_bytes", "300000000")]));
    assert!(text.contains("cluster.max_frame_bytes"), "{text}");
    // A small body limit lowers the per-annotation one with it (no need to set both).
    load_overrides(&[("limits.max_body_bytes", "100000")]).expect("a small body limit alone is fine");
}

#[test]
fn a_multi_node_cluster_needs_peer_certificates_or_an_explicit_insecure_flag() {
    let cluster = format!("[node]\nid = 1\n[cluster]\nnodes = [{}]\n", members(3));
    let text = error_text(load_file(&cluster));
    assert!(text.contains("cluster.tls_cert_file") && text.contains("cluster.insecure_peers"), "{text}");
    let config = load_file(&format!("{cluster}insecure_peers = true\n")).expect("explicitly insecure");
    assert!(config.cluster.insecure_peers);
    let with_tls = format!("{cluster}tls_ca_file = \"ca.pem\"\ntls_cert_file = \"node-1.pem\"\ntls_key_file = \"node-1.key\"\n");
    assert_eq!(load_file(&with_tls).expect("with certificates").cluster.tls_key_file, "node-1.key");
    let text = error_text(load_file(&format!("{cluster}tls_ca_file = \"ca.pem\"\ntls_cert_file = \"node-1.pem\"\n")));
    assert!(text.contains("cluster.tls_key_file") && text.contains("go together"), "{text}");
    // A single node has no peers: no certificate needed.
    load_file("[node]\nid = 1\n").expect("single node");
}

#[test]
fn api_keys_are_hashes_with_known_scopes_and_an_open_api_stays_on_loopback() {
    let hash = format!("sha256:{}", "ab".repeat(32));
    let key = |name: &str, hash: &str, scopes: &str| format!("[[auth.keys]]\nname = \"{name}\"\nhash = \"{hash}\"\nscopes = {scopes}\n");
    let config = load_file(&key("editors", &hash, "[\"read\", \"write\"]")).expect("a valid key");
    assert_eq!(config.auth.keys[0].scopes, vec!["read".to_string(), "write".to_string()]);
    let text = error_text(load_file(&key("editors", "rk_the_key_itself", "[\"read\"]")));
    assert!(text.contains("auth.keys[0].hash") && text.contains("never the key itself"), "{text}");
    let text = error_text(load_file(&key("editors", &hash, "[\"root\"]")));
    assert!(text.contains("auth.keys[0].scopes") && text.contains("\"root\""), "{text}");
    let text = error_text(load_file(&key("editors", &hash, "\"read\"")));
    assert!(text.contains("auth.keys[0].scopes"), "{text}");
    let text = error_text(load_file(&format!("{}{}", key("a", &hash, "[\"read\"]"), key("b", &hash, "[\"admin\"]"))));
    assert!(text.contains("auth.keys[1].hash") && text.contains("unique"), "{text}");
    // Keys through the environment, as a TOML array.
    let env = format!("[{{ name = \"ops\", hash = \"{hash}\", scopes = [\"admin\"] }}]");
    assert_eq!(load_env(&[("RUSHES_AUTH_KEYS", &env)]).expect("keys from the environment").auth.keys[0].name, "ops");
    // No key: loopback only, unless explicitly opened.
    let text = error_text(load_overrides(&[("node.listen", "0.0.0.0:7700")]));
    assert!(text.contains("node.listen") && text.contains("http.allow_unauthenticated"), "{text}");
    load_overrides(&[("node.listen", "0.0.0.0:7700"), ("http.allow_unauthenticated", "true")]).expect("explicitly open");
    load_file(&format!("[node]\nlisten = \"0.0.0.0:7700\"\n{}", key("ops", &hash, "[\"admin\"]"))).expect("keys make any address fine");
    let text = error_text(load_overrides(&[("http.tls_cert_file", "cert.pem")]));
    assert!(text.contains("http.tls_key_file"), "{text}");
}

#[test]
fn retention_purges_never_or_at_most_once_a_minute() {
    assert_eq!(load_file("").expect("defaults").retention.purge_superseded_interval_ms, 0, "superseded versions are kept by default");
    let config = load_file("[retention]\npurge_superseded_interval_ms = 3600000\n").expect("hourly");
    assert_eq!(config.retention.purge_superseded_interval_ms, 3_600_000);
    let text = error_text(load_file("[retention]\npurge_superseded_interval_ms = 5000\n"));
    assert!(text.contains("retention.purge_superseded_interval_ms") && text.contains("60000"), "{text}");
}
