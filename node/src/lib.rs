//! The Rushes node: per shard a Raft, a fusion and an index actor; per node an ingest router and
//! a search coordinator; storage, the peer layer, the HTTP API and the command-line tools.
//! ARCHITECTURE.md maps every folder.

pub mod actors;
pub mod cli;
pub mod coordinator;
pub mod http;
pub mod ingest;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod query;
pub mod search;
pub mod shard;
pub mod status;
pub mod storage;

/// Sets up `tracing` from the config's log level and format (`RUSHES_LOG`, else `RUST_LOG`,
/// overrides it with a tracing filter such as `info,rushes_node::shard=debug`).
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUSHES_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},raft=warn,tantivy=warn,sled=warn,actix_server=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Peak resident memory of this process in bytes (VmHWM), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes used by every file under `path`.
pub fn dir_size_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
