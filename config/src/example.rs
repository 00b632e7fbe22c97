//! The commented example configuration: every key, its default and what is allowed. Values are
//! taken from `Config::default()` and ranges from `validate::ranges`, so the example cannot go
//! stale; a test checks that it loads back to the defaults.

use std::fmt::Write as _;

use crate::load::ENVIRONMENT_PREFIX;
use crate::validate::ranges::*;
use crate::validate::{describe_range, human_bytes, IntegerRange};
use crate::{Config, EmbedderConfig, FusionMethod, LogFormat, LogLevel, Metric, Quantization};

struct ExampleWriter {
    text: String,
}

impl ExampleWriter {
    fn comment(&mut self, line: &str) {
        // `writeln!` into a String cannot fail.
        let _ = writeln!(self.text, "# {line}");
    }

    fn section(&mut self, header: &str, description: &str) {
        let _ = writeln!(self.text, "\n# {description}\n{header}");
    }

    /// Writes `name = value` preceded by its explanation and allowed values.
    fn key(&mut self, name: &str, value: impl Into<String>, explanation: &str, allowed: &str) {
        let _ = writeln!(self.text, "\n# {explanation}");
        if !allowed.is_empty() {
            let _ = writeln!(self.text, "# Allowed: {allowed}.");
        }
        let _ = writeln!(self.text, "{name} = {}", value.into());
    }

    /// An integer key with its range; byte sizes also get a human-readable comment.
    fn integer(&mut self, name: &str, value: impl TryInto<u64> + Copy + ToString, explanation: &str, range: IntegerRange) {
        let mut rendered = value.to_string();
        let widened: Option<u64> = value.try_into().ok();
        if name.ends_with("_bytes") {
            if let Some(human) = widened.and_then(human_bytes) {
                rendered = format!("{rendered}  # {human}");
            }
        }
        self.key(name, rendered, explanation, &describe_range(name, range));
    }
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn one_of(names: &[&str]) -> String {
    let quoted_names: Vec<String> = names.iter().map(|name| quoted(name)).collect();
    format!("one of {}", quoted_names.join(", "))
}

impl Config {
    /// A commented TOML file listing every key with its default value and allowed values; used
    /// for `docs/config.md` and `rushes serve --print-config`. Loading it yields
    /// `Config::default()`.
    pub fn example_toml() -> String {
        let defaults = Config::default();
        let mut example = ExampleWriter { text: String::new() };

        example.comment("Rushes node configuration. Every key is optional; the values shown are the defaults.");
        example.comment("Precedence, lowest first: defaults < this file < environment < command-line overrides.");
        example.comment(&format!(
            "Environment: {ENVIRONMENT_PREFIX}<SECTION>_<KEY>, e.g. {ENVIRONMENT_PREFIX}NODE_LISTEN=0.0.0.0:9000 sets node.listen,"
        ));
        example.comment(&format!(
            "{ENVIRONMENT_PREFIX}VECTOR_SPACES_0_DIMENSIONS=768 sets vector_spaces[0].dimensions. Unknown {ENVIRONMENT_PREFIX}* variables are"
        ));
        example.comment(&format!(
            "errors, except {ENVIRONMENT_PREFIX}LOG (tracing filter) and {ENVIRONMENT_PREFIX}CONFIG (path of this file)."
        ));
        example.comment("Overrides: dotted keys such as fusion.bucket_ms=500 or vector_spaces[0].metric=ip.");
        example.comment("Unknown keys are errors, so a misspelt key never silently leaves a default in force.");

        let node = &defaults.node;
        example.section("[node]", "This process.");
        example.integer("id", node.id, "Raft id of this node; must appear in cluster.nodes when that list is not empty.", NODE_ID);
        example.key(
            "data_dir",
            quoted(&node.data_dir.to_string_lossy()),
            "Directory for Raft logs, the raw store and the indexes (relative to the working directory).",
            "a non-empty UTF-8 path",
        );
        example.key(
            "listen",
            quoted(&node.listen.to_string()),
            "Address of the HTTP API.",
            "an IP address and port, e.g. \"0.0.0.0:7700\" or \"[::1]:7700\"",
        );

        let cluster = &defaults.cluster;
        example.section("[cluster]", "Sharding and cluster membership.");
        example.key(
            "cluster_id",
            quoted(&cluster.cluster_id),
            "Name of the cluster; peers with a different one are refused.",
            &format!("lower-case letters a-z, digits and '-', 1 to {CLUSTER_ID_MAX_BYTES} bytes"),
        );
        example.integer("shards", cluster.shards, "Number of shards (Raft groups). Fixed once data exists: the data dir records it, and a start with another value is refused (back up and restore to change it).", CLUSTER_SHARDS);
        example.integer(
            "replication_factor",
            cluster.replication_factor,
            "Replicas per shard; at most the number of nodes in cluster.nodes. A single node (empty cluster.nodes) holds every shard once.",
            CLUSTER_REPLICATION_FACTOR,
        );
        example.key(
            "nodes",
            "[]",
            "All members including this one; empty means a single-node cluster. Ids and addresses must be unique.\n\
             # Every entry needs id, raft_addr and http_addr (\"host:port\"; host names allowed), e.g.\n\
             # nodes = [\n\
             #   { id = 1, raft_addr = \"rushes-1.internal:7800\", http_addr = \"rushes-1.internal:7700\" },\n\
             #   { id = 2, raft_addr = \"rushes-2.internal:7800\", http_addr = \"rushes-2.internal:7700\" },\n\
             #   { id = 3, raft_addr = \"rushes-3.internal:7800\", http_addr = \"rushes-3.internal:7700\" },\n\
             # ]",
            "",
        );
        example.key(
            "tls_ca_file",
            quoted(&cluster.tls_ca_file),
            "PEM file of the cluster's certificate authority. With tls_cert_file and tls_key_file, peers speak mutual TLS:\n\
             # each presents a certificate from this CA naming its node (node-<id>), and may only speak as that node.\n\
             # `rushes cluster certs --nodes N --out DIR` makes a CA and one certificate per node.",
            "a path, or \"\" for none",
        );
        example.key("tls_cert_file", quoted(&cluster.tls_cert_file), "PEM file of this node's certificate.", "a path, or \"\" for none");
        example.key("tls_key_file", quoted(&cluster.tls_key_file), "PEM file of this node's private key.", "a path, or \"\" for none");
        example.key(
            "join",
            cluster.join.to_string(),
            "Join a running cluster instead of bootstrapping one: ask the nodes listed in `nodes` for the cluster map\n\
             # and wait until an operator runs `rushes cluster add-node`. Ignored once the node has joined.",
            "true or false",
        );
        example.key(
            "insecure_peers",
            cluster.insecure_peers.to_string(),
            "Run a multi-node cluster without peer certificates: anyone who reaches a raft port can speak for any node.\n\
             # Without certificates and without this, a node refuses to start in a multi-node cluster.",
            "true or false",
        );
        example.integer(
            "max_frame_bytes",
            cluster.max_frame_bytes,
            "Largest frame between nodes; must hold 2 x limits.max_body_bytes + 1 MiB (an entry carries a batch's raw and parsed forms).",
            CLUSTER_MAX_FRAME_BYTES,
        );
        example.integer(
            "max_inbound_connections",
            cluster.max_inbound_connections,
            "Peer connections accepted at once; more are closed at once.",
            CLUSTER_MAX_INBOUND_CONNECTIONS,
        );
        example.integer(
            "peer_idle_timeout_ms",
            cluster.peer_idle_timeout_ms,
            "An accepted peer connection silent this long is closed (the peer reconnects when it needs to).",
            CLUSTER_PEER_IDLE_TIMEOUT_MS,
        );

        let fusion = &defaults.fusion;
        example.section("[fusion]", "Fusing annotations into time buckets.");
        example.integer("bucket_ms", fusion.bucket_ms, "Width of one fusion bucket, in milliseconds.", FUSION_BUCKET_MS);
        example.integer("batch_entries_max", fusion.batch_entries_max, "Most log entries fused in one pass.", FUSION_BATCH_ENTRIES_MAX);

        let index = &defaults.index;
        example.section("[index]", "Full-text index (Tantivy).");
        example.integer(
            "commit_interval_ms",
            index.commit_interval_ms,
            "How often new documents are committed and become searchable.",
            INDEX_COMMIT_INTERVAL_MS,
        );
        example.integer("writer_heap_bytes", index.writer_heap_bytes, "Memory budget of the index writer.", INDEX_WRITER_HEAP_BYTES);

        example.text.push('\n');
        example.comment(&format!(
            "Vector spaces (usearch HNSW indexes), one [[vector_spaces]] entry each, at most {VECTOR_SPACES_MAX_COUNT}."
        ));
        example.comment("Listing any replaces the default list; \"vector_spaces = []\" disables vector search.");
        example.comment("Only name is required in an entry; the other keys default to the values shown.");
        for space in &defaults.vector_spaces {
            example.section("[[vector_spaces]]", "One vector space.");
            example.key(
                "name",
                quoted(&space.name),
                "Name annotations refer to in \"vector_space\"; unique.",
                &format!("lower-case letters a-z, digits, '_' and '-', 1 to {VECTOR_SPACE_NAME_MAX_BYTES} bytes"),
            );
            example.integer("dimensions", space.dimensions, "Length of every vector in this space.", VECTOR_DIMENSIONS);
            example.key("metric", quoted(space.metric.as_str()), "Distance metric.", &one_of(Metric::NAMES));
            example.key(
                "quantization",
                quoted(space.quantization.as_str()),
                "Scalar type vectors are stored as.",
                &one_of(Quantization::NAMES),
            );
            example.integer("connectivity", space.connectivity, "HNSW graph degree (M).", VECTOR_CONNECTIVITY);
            example.integer("expansion_add", space.expansion_add, "HNSW candidate list size when inserting.", VECTOR_EXPANSION_ADD);
            example.integer(
                "expansion_search",
                space.expansion_search,
                "HNSW candidate list size when searching.",
                VECTOR_EXPANSION_SEARCH,
            );
        }

        let embedder = &defaults.embedder;
        example.section(
            "[embedder]",
            "Turns query text into a vector of one vector space, so searches match footage by meaning, not only by label.",
        );
        example.key(
            "url",
            quoted(&embedder.url),
            &format!(
                "\"\" for no embedder; \"{demo}\" for the built-in offline embedder that knows the generated demo season's words;\n\
                 # its place vectors depend on the season's seed: \"{demo}\" is seed {seed}, \"{demo}:SEED\" the season of\n\
                 # `rushes gen --seed SEED` (`rushes demo --seed SEED` sets it);\n\
                 # otherwise the endpoint of an OpenAI-compatible embeddings API, sent POST {{\"model\": ..., \"input\": [texts]}}\n\
                 # and expected to answer {{\"data\": [{{\"embedding\": [...], \"index\": 0}}, ...]}}.",
                demo = EmbedderConfig::DEMO_URL,
                seed = EmbedderConfig::DEFAULT_DEMO_SEED
            ),
            &format!(
                "\"\", \"{demo}\", \"{demo}:SEED\" (SEED in 0..={}), or an http:// or https:// URL such as \
                 \"http://127.0.0.1:8080/v1/embeddings\", at most {EMBEDDER_URL_MAX_BYTES} bytes",
                i64::MAX,
                demo = EmbedderConfig::DEMO_URL
            ),
        );
        example.key(
            "model",
            quoted(&embedder.model),
            "Sent as \"model\" in each request; \"\" leaves it out.",
            &format!("at most {EMBEDDER_MODEL_MAX_BYTES} bytes"),
        );
        example.key(
            "api_key_env",
            quoted(&embedder.api_key_env),
            "Name of the environment variable holding the bearer token for the endpoint (never the token itself); \"\" sends none.",
            &format!(
                "\"\" or a variable name of letters, digits and '_' not starting with a digit or {ENVIRONMENT_PREFIX}, \
                 e.g. \"OPENAI_API_KEY\""
            ),
        );
        example.key(
            "tls_ca_file",
            quoted(&embedder.tls_ca_file),
            "PEM file of the CA that signed an https:// embedder's certificate (a private CA); \"\" trusts the public web roots.",
            "\"\" or a readable PEM file (checked at start)",
        );
        example.key(
            "space",
            quoted(&embedder.space),
            "Vector space query text is embedded into; the embedder must produce vectors of its dimensions.",
            "the name of a [[vector_spaces]] entry (checked when url is set)",
        );
        example.integer("timeout_ms", embedder.timeout_ms, "Time limit of one embedding request.", EMBEDDER_TIMEOUT_MS);
        example.integer(
            "max_text_bytes",
            embedder.max_text_bytes,
            "Longest text embedded; longer query text is refused, not truncated.",
            EMBEDDER_MAX_TEXT_BYTES,
        );
        example.integer(
            "cache_entries",
            embedder.cache_entries,
            "Embeddings remembered by text, least recently used evicted first; 0 disables the cache.",
            EMBEDDER_CACHE_ENTRIES,
        );

        let search = &defaults.search;
        example.section("[search]", "Scoring and combining query clauses.");
        example.key(
            "fusion",
            quoted(search.fusion.as_str()),
            "How keyword and vector scores of one second combine: \"weighted\" by score value, \"rrf\" by reciprocal rank\n\
             # (each clause adds 1 / (rank_constant + rank), so only the order within a clause counts).",
            &one_of(FusionMethod::NAMES),
        );
        example.integer(
            "rank_constant",
            search.rank_constant,
            "RRF's k; larger values flatten the difference between the first ranks.",
            SEARCH_RANK_CONSTANT,
        );
        example.integer(
            "rank_window",
            search.rank_window,
            "Ranks beyond this count as absent from a clause when fusing by rank (like Elasticsearch's rank_window_size).",
            SEARCH_RANK_WINDOW,
        );
        example.integer(
            "exact_vector_max_candidates",
            search.exact_vector_max_candidates,
            "A filtered vector search whose filter leaves at most this many vectors is answered exactly (brute force)\n\
             # instead of by the HNSW graph, which can miss neighbours a filter mostly rejects; 0 always uses the graph.",
            SEARCH_EXACT_VECTOR_MAX_CANDIDATES,
        );
        example.integer("suggest_limit", search.suggest_limit, "Most suggestions returned for a query prefix.", SEARCH_SUGGEST_LIMIT);
        example.integer(
            "label_cache_bytes_per_document",
            search.label_cache_bytes_per_document,
            "Memory each shard may keep for label hits (the seconds a label matches, reused by later queries), per\n\
             # document in the shard, and at least 64 MiB a shard. 256 holds some forty frequent labels (about\n\
             # 460 MiB a shard at 2,000 hours over 4 shards); 0 leaves only the 64 MiB.",
            SEARCH_LABEL_CACHE_BYTES_PER_DOCUMENT,
        );

        let limits = &defaults.limits;
        example.section("[limits]", "Bounds on requests and queues. Byte limits count UTF-8 bytes.");
        example.integer("max_body_bytes", limits.max_body_bytes, "Largest HTTP request body.", LIMITS_MAX_BODY_BYTES);
        example.integer("max_batch_items", limits.max_batch_items, "Most annotations in one ingest batch.", LIMITS_MAX_BATCH_ITEMS);
        example.integer("max_id_bytes", limits.max_id_bytes, "Longest annotation id.", LIMITS_MAX_ID_BYTES);
        example.integer("max_asset_id_bytes", limits.max_asset_id_bytes, "Longest asset id.", LIMITS_MAX_ASSET_ID_BYTES);
        example.integer(
            "max_name_bytes",
            limits.max_name_bytes,
            "Longest model, model version, track or vector space name.",
            LIMITS_MAX_NAME_BYTES,
        );
        example.integer("max_label_bytes", limits.max_label_bytes, "Longest label.", LIMITS_MAX_LABEL_BYTES);
        example.integer("max_text_bytes", limits.max_text_bytes, "Longest text.", LIMITS_MAX_TEXT_BYTES);
        example.integer(
            "max_interval_ms",
            limits.max_interval_ms,
            "Longest single annotation (end_ms - start_ms); at most max_time_ms.",
            LIMITS_MAX_INTERVAL_MS,
        );
        example.integer("max_time_ms", limits.max_time_ms, "Largest timestamp within an asset.", LIMITS_MAX_TIME_MS);
        example.integer(
            "ingest_queue_depth",
            limits.ingest_queue_depth,
            "Proposals waiting per shard before ingest answers \"busy\".",
            LIMITS_INGEST_QUEUE_DEPTH,
        );
        example.integer(
            "unindexed_entries_max",
            limits.unindexed_entries_max,
            "Log entries a shard may have applied but not yet indexed before ingest answers \"busy\" (indexing runs at a lower CPU priority than writes; this bounds how far behind it falls).",
            LIMITS_UNINDEXED_ENTRIES_MAX,
        );
        example.integer(
            "unindexed_annotations_max",
            limits.unindexed_annotations_max,
            "Annotations a shard may have applied but not yet indexed before ingest answers \"busy\" (the same bound counted in annotations, as an entry holds from one annotation to limits.max_batch_items; writes already queued are not counted).",
            LIMITS_UNINDEXED_ANNOTATIONS_MAX,
        );
        example.integer(
            "min_free_disk_bytes",
            limits.min_free_disk_bytes,
            "Free bytes the data directory's file system must keep: below it shards take no writes (503 naming the disk) and resume by themselves when space returns, so no store meets a full disk in the middle of a write. 0 turns the guard off.",
            LIMITS_MIN_FREE_DISK_BYTES,
        );
        example.integer("request_timeout_ms", limits.request_timeout_ms, "Time limit of one HTTP request.", LIMITS_REQUEST_TIMEOUT_MS);
        example.integer(
            "search_queue_depth",
            limits.search_queue_depth,
            "Searches waiting before search answers \"busy\".",
            LIMITS_SEARCH_QUEUE_DEPTH,
        );
        example.integer("max_clauses", limits.max_clauses, "Most clauses in one search query.", LIMITS_MAX_CLAUSES);
        example.integer("max_per_asset", limits.max_per_asset, "Most hits returned per asset.", LIMITS_MAX_PER_ASSET);
        example.integer("max_limit", limits.max_limit, "Largest \"limit\" a search may ask for.", LIMITS_MAX_LIMIT);
        example.integer("max_query_bytes", limits.max_query_bytes, "Longest query text.", LIMITS_MAX_QUERY_BYTES);
        example.integer("max_vector_k", limits.max_vector_k, "Most nearest neighbours fetched from a vector index.", LIMITS_MAX_VECTOR_K);
        example.integer(
            "max_annotation_bytes",
            limits.max_annotation_bytes,
            "Largest single annotation (its JSON) in a batch.",
            LIMITS_MAX_ANNOTATION_BYTES,
        );
        example.integer(
            "body_read_timeout_ms",
            limits.body_read_timeout_ms,
            "A request body must arrive within this long (a slowly dripped body is cut off).",
            LIMITS_BODY_READ_TIMEOUT_MS,
        );
        example.integer(
            "ingest_bytes_in_flight_max",
            limits.ingest_bytes_in_flight_max,
            "Ingest body bytes being read, parsed and stored at once on this node; past it ingest answers 429.",
            LIMITS_INGEST_BYTES_IN_FLIGHT_MAX,
        );

        let raft = &defaults.raft;
        example.section("[raft]", "Consensus timing and flow control.");
        example.integer("tick_interval_ms", raft.tick_interval_ms, "Length of one Raft tick.", RAFT_TICK_INTERVAL_MS);
        example.integer(
            "election_ticks",
            raft.election_ticks,
            "Ticks without a heartbeat before a follower calls an election.",
            RAFT_ELECTION_TICKS,
        );
        example.integer(
            "heartbeat_ticks",
            raft.heartbeat_ticks,
            "Ticks between leader heartbeats; must be less than election_ticks.",
            RAFT_HEARTBEAT_TICKS,
        );
        example.integer(
            "max_size_per_msg_bytes",
            raft.max_size_per_msg_bytes,
            "Largest batch of log entries in one append message.",
            RAFT_MAX_SIZE_PER_MSG_BYTES,
        );
        example.integer("max_inflight_msgs", raft.max_inflight_msgs, "Append messages in flight per follower.", RAFT_MAX_INFLIGHT_MSGS);
        example.integer(
            "group_commit_max_requests",
            raft.group_commit_max_requests,
            "Most proposals (each one client batch's part for the shard) appended and made durable together in one Raft cycle.",
            RAFT_GROUP_COMMIT_MAX_REQUESTS,
        );
        example.integer(
            "log_retain_entries",
            raft.log_retain_entries,
            "Consumed log entries kept after compaction (replicas this far behind catch up from the log).",
            RAFT_LOG_RETAIN_ENTRIES,
        );
        example.integer(
            "snapshot_log_entries",
            raft.snapshot_log_entries,
            "Entries beyond the retained ones that trigger compaction into a snapshot (fetched in chunks by far-behind replicas).",
            RAFT_SNAPSHOT_LOG_ENTRIES,
        );
        example.integer(
            "log_retain_bytes",
            raft.log_retain_bytes,
            "Also at most this many bytes of consumed entries are kept (counted by the mean size of the log's last entry at start and of those appended since).",
            RAFT_LOG_RETAIN_BYTES,
        );
        example.integer(
            "snapshot_log_bytes",
            raft.snapshot_log_bytes,
            "Bytes of entries beyond the retained ones that also trigger compaction.",
            RAFT_SNAPSHOT_LOG_BYTES,
        );
        example.integer(
            "compaction_interval_ms",
            raft.compaction_interval_ms,
            "How often a shard considers compacting its log.",
            RAFT_COMPACTION_INTERVAL_MS,
        );
        example.integer(
            "snapshot_chunk_bytes",
            raft.snapshot_chunk_bytes,
            "Raw store bytes per chunk this node serves to a replica fetching a snapshot.",
            RAFT_SNAPSHOT_CHUNK_BYTES,
        );
        example.integer(
            "snapshot_transfer_bytes_per_s",
            raft.snapshot_transfer_bytes_per_s,
            "Bytes per second a replica fetching a snapshot reads (a moving replica, a far-behind one), so ingest and\n\
             # search keep their latency during a rebalance; 0 is unlimited (otherwise at least 65536).",
            RAFT_SNAPSHOT_TRANSFER_BYTES_PER_S,
        );

        let http = &defaults.http;
        example.section("[http]", "How the HTTP API is served.");
        example.key(
            "tls_cert_file",
            quoted(&http.tls_cert_file),
            "PEM certificate chain served over HTTPS (with tls_key_file); \"\" serves plain HTTP.",
            "a path, or \"\" for none",
        );
        example.key("tls_key_file", quoted(&http.tls_key_file), "PEM private key of tls_cert_file.", "a path, or \"\" for none");
        example.key(
            "allow_unauthenticated",
            http.allow_unauthenticated.to_string(),
            "Serve a non-loopback node.listen without API keys (anyone who reaches it can read, write and administer).\n\
             # Without [[auth.keys]] and without this, node.listen must be a loopback address.",
            "true or false",
        );
        example.integer(
            "ready_max_lag_entries",
            http.ready_max_lag_entries,
            "GET /ready answers 200 only while every replica on this node knows its shard's leader and is at most\n\
             # this many log entries behind in applying (commit to applied) and in indexing (applied to indexed).",
            HTTP_READY_MAX_LAG_ENTRIES,
        );

        example.section("[auth]", "API keys, sent as Authorization: Bearer <key>. With none the API is open (loopback only, see [http]).");
        example.key(
            "keys",
            "[]",
            "Each key is kept as its SHA-256, never in clear, with the scopes it carries:\n\
             # read (search, suggest, explain, reads), write (ingest, asset records, subtitles), admin (cluster status\n\
             # digests, fault injection, and everything that can hurt a node). `rushes keys create --scopes read,write`\n\
             # prints a new key and its entry, e.g.\n\
             # keys = [{ name = \"editors\", hash = \"sha256:9f86d0...\", scopes = [\"read\"] }]\n\
             # In the environment: RUSHES_AUTH_KEYS='[{ name = \"ops\", hash = \"sha256:...\", scopes = [\"admin\"] }]'.",
            "",
        );

        let retention = &defaults.retention;
        example.section("[retention]", "What the cluster removes on its own.");
        example.key(
            "purge_superseded_interval_ms",
            retention.purge_superseded_interval_ms.to_string(),
            "How often each shard's leader removes the annotations of model versions a higher version replaced\n\
             # (POST /v1/admin/purge-superseded does it once); 0 keeps them, in the raw store only.",
            "0, or 60000..=31536000000",
        );

        let log = &defaults.log;
        example.section("[log]", &format!("Logging. {ENVIRONMENT_PREFIX}LOG, if set, is a tracing filter that overrides level."));
        example.key("level", quoted(log.level.as_str()), "Least severe level logged.", &one_of(LogLevel::NAMES));
        example.key("format", quoted(log.format.as_str()), "\"text\" for people, \"json\" for log collectors.", &one_of(LogFormat::NAMES));

        example.text
    }
}
