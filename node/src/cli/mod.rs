//! Command-line tools beyond `serve`: the demo, benchmarks and the local cluster.

pub mod backup;
pub mod bench;
pub mod cluster_bench;
pub mod demo;
pub mod local_cluster;
pub mod membership;
