//! Command-line tools beyond `serve`: the demo, benchmarks, the local cluster, and the pieces of
//! `import` and `search` worth testing alone (asset-id check, the wait until searchable,
//! timecodes, evidence as text).

pub mod backup;
pub mod bench;
pub mod cluster_bench;
pub mod demo;
pub mod import;
pub mod local_cluster;
pub mod membership;
pub mod search;
pub mod timecode;
