//! Prometheus metrics of one node. Names carry their unit last.

use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    pub registry: Registry,
    pub ingest_annotations: IntCounter,
    pub ingest_requests: IntCounterVec,
    pub commit_seconds: Histogram,
    pub flush_seconds: Histogram,
    /// The parts of a ready cycle: "persist" (log write and sync), "apply" (raw store).
    pub ready_phase_seconds: HistogramVec,
    pub index_commit_seconds: Histogram,
    pub searchable_lag_seconds: Histogram,
    pub query_seconds: HistogramVec,
    /// One shard's search phase as the coordinator saw it (queueing and round trip included).
    pub search_phase_seconds: HistogramVec,
    /// A peer's search phase on this node, from the request's arrival to its reply.
    pub peer_search_phase_seconds: HistogramVec,
    pub buckets_written: IntCounter,
    /// Messages and requests refused from peers, by reason.
    pub peer_refused: IntCounterVec,
    /// Committed entries rejected at apply (on every replica alike), per shard.
    pub rejected_entries: IntCounterVec,
    pub index_docs_written: IntCounter,
    pub queue_depth: IntGaugeVec,
    pub stage_index: IntGaugeVec,
    pub stage_lag_entries: IntGaugeVec,
    /// Per actor (labels: actor, shard; shard is empty for node actors).
    pub actor_mailbox_depth: IntGaugeVec,
    pub actor_mailbox_capacity: IntGaugeVec,
    pub actor_messages: IntCounterVec,
    pub actor_handler_seconds: HistogramVec,
    pub actor_restarts: IntCounterVec,
    /// The cluster map this node follows: its epoch, and moves in flight and queued.
    pub cluster_map: IntGaugeVec,
    /// Raw store bytes fetched for snapshots (moving and far-behind replicas), per shard.
    pub snapshot_bytes_fetched: IntGaugeVec,
}

fn latency_buckets() -> Vec<f64> {
    vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
}

/// Finer at the low end: a phase takes tens of microseconds to a few milliseconds.
fn phase_buckets() -> Vec<f64> {
    vec![0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.25, 1.0, 5.0, 30.0]
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("rushes".into()), None).unwrap_or_default();
        // Registration fails only on duplicate names, which are fixed here.
        macro_rules! register {
            ($metric:expr) => {{
                let metric = $metric.expect("metric definition is valid");
                registry.register(Box::new(metric.clone())).expect("metric names are unique");
                metric
            }};
        }
        let histogram = |name: &str, help: &str| Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets()));
        Metrics {
            ingest_annotations: register!(IntCounter::new("ingest_annotations_total", "Annotations acknowledged (committed and durable)")),
            ingest_requests: register!(IntCounterVec::new(Opts::new("ingest_requests_total", "Ingest requests by outcome"), &["outcome"])),
            commit_seconds: register!(histogram("raft_commit_seconds", "Proposal to committed, durable and applied")),
            flush_seconds: register!(histogram("raft_ready_seconds", "One Raft ready cycle including the log flush")),
            ready_phase_seconds: register!(HistogramVec::new(
                HistogramOpts::new("raft_ready_phase_seconds", "Part of a Raft ready cycle: persist (log write and sync) or apply")
                    .buckets(latency_buckets()),
                &["phase"]
            )),
            index_commit_seconds: register!(histogram("index_commit_seconds", "Tantivy commit (and vector save) duration")),
            searchable_lag_seconds: register!(histogram("searchable_lag_seconds", "Applied (acknowledged) to searchable")),
            query_seconds: register!(HistogramVec::new(
                HistogramOpts::new("query_seconds", "Query latency by endpoint").buckets(latency_buckets()),
                &["endpoint"]
            )),
            search_phase_seconds: register!(HistogramVec::new(
                HistogramOpts::new("search_phase_seconds", "One shard's search phase seen by the coordinator, by phase and replica")
                    .buckets(phase_buckets()),
                &["phase", "replica"]
            )),
            peer_search_phase_seconds: register!(HistogramVec::new(
                HistogramOpts::new("peer_search_phase_seconds", "Another node's search phase served here, arrival to reply")
                    .buckets(phase_buckets()),
                &["phase"]
            )),
            buckets_written: register!(IntCounter::new(
                "fusion_buckets_written_total",
                "Non-empty buckets in the blocks fusion recomputed and wrote"
            )),
            peer_refused: register!(IntCounterVec::new(
                Opts::new("peer_refused_total", "Messages and requests refused from peers, by reason"),
                &["reason"]
            )),
            rejected_entries: register!(IntCounterVec::new(
                Opts::new("rejected_entries_total", "Committed entries rejected when applied (undecodable or out of bounds)"),
                &["shard"]
            )),
            index_docs_written: register!(IntCounter::new("index_docs_written_total", "Bucket documents written to Tantivy")),
            queue_depth: register!(IntGaugeVec::new(Opts::new("queue_depth", "Items waiting in a bounded queue"), &["shard", "queue"])),
            stage_index: register!(IntGaugeVec::new(
                Opts::new("stage_log_index", "Last log index each stage has processed"),
                &["shard", "stage"]
            )),
            stage_lag_entries: register!(IntGaugeVec::new(
                Opts::new("stage_lag_entries", "Log entries a stage is behind the commit index"),
                &["shard", "stage"]
            )),
            actor_mailbox_depth: register!(IntGaugeVec::new(
                Opts::new("actor_mailbox_depth", "Messages waiting in an actor's mailbox"),
                &["actor", "shard"]
            )),
            actor_mailbox_capacity: register!(IntGaugeVec::new(
                Opts::new("actor_mailbox_capacity", "Messages an actor's mailbox holds before senders are refused"),
                &["actor", "shard"]
            )),
            actor_messages: register!(IntCounterVec::new(
                Opts::new("actor_messages_total", "Messages an actor has handled"),
                &["actor", "shard"]
            )),
            actor_handler_seconds: register!(HistogramVec::new(
                HistogramOpts::new("actor_handler_seconds", "Time an actor spent in one message handler").buckets(phase_buckets()),
                &["actor", "shard"]
            )),
            actor_restarts: register!(IntCounterVec::new(
                Opts::new("actor_restarts_total", "Times a supervised actor failed and was started again"),
                &["actor", "shard"]
            )),
            cluster_map: register!(IntGaugeVec::new(
                Opts::new("cluster_map", "The followed cluster map: epoch, moves in flight, moves queued, members"),
                &["what"]
            )),
            snapshot_bytes_fetched: register!(IntGaugeVec::new(
                Opts::new("snapshot_bytes_fetched", "Raw store bytes this node's replica fetched for snapshots since the process started"),
                &["shard"]
            )),
            registry,
        }
    }

    pub fn set_queue_depth(&self, shard: u32, queue: &str, depth: usize) {
        self.queue_depth.with_label_values(&[&shard.to_string(), queue]).set(depth as i64);
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            return format!("# metrics encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
