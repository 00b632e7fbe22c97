//! Rushes' fault-injection suite ("jepsen"): real `rushes serve` processes on loopback, real
//! clients, real faults, then checks that nothing acknowledged was lost and the replicas agree.
//!
//! # Running it
//!
//! The tests start the `rushes` binary, which a test build does not produce; build it first, in
//! the same profile:
//!
//! ```text
//! cargo build --release -p rushes-node
//! cargo test --release -p rushes-jepsen
//! ```
//!
//! `RUSHES_BIN=/path/to/rushes` runs another binary. Every fault test prints its seed; set
//! `JEPSEN_SEED=<seed>` to replay the same choices (which node, when, for how long) and the same
//! sample data. `JEPSEN_DIR=<dir>` keeps each test's cluster directory (configs, data, node logs)
//! under `<dir>` instead of a temporary directory that is removed. The tests of one binary run one
//! at a time (they hold a lock), so the default parallel test runner is fine.
//!
//! # What a fault test does
//!
//! 1. [`LocalCluster::start`] writes `node-N.toml` per node (static members, HTTP and Raft ports
//!    picked free on 127.0.0.1), spawns `rushes serve --config node-N.toml` with
//!    `RUSHES_FAULT_INJECTION=1` and stderr in `node-N.log`, and waits for `GET /health`.
//! 2. A [`Sample`] from the node's generator (`rushes_sample`) is cut into NDJSON batches and
//!    written by a [`Workload`]: concurrent writers, each starting on its own node, moving to the
//!    next node on 429/502/503/504 or a transport error (the same batch again: ids are
//!    idempotent), paced so the faults land while writes are in flight. A 200 reply adds the
//!    batch's annotations to the acknowledged set; any other error is a failure.
//! 3. While writing, one fault: SIGKILL of a shard leader and a restart on the same data
//!    ([`LocalCluster::restart`]), SIGSTOP longer than an election timeout and SIGCONT
//!    ([`LocalCluster::pause`] / [`LocalCluster::resume`]), or a partition of one node from the
//!    others through `POST /v1/debug/partition` on every node ([`LocalCluster::partition`] /
//!    [`LocalCluster::heal`]). Writes must keep being acknowledged while a majority is up.
//! 4. After healing and the writers finishing, [`LocalCluster::wait_converged`]: every node
//!    reports, for each of its own replicas (`GET /v1/cluster`, `local: true`), the same
//!    `applied_index` as the other replicas and `indexed_index >= applied_index`.
//! 5. [`check_cluster`]: on every node, every acknowledged annotation is returned by
//!    `GET /v1/assets/{asset}/annotations/{id}` with the content sent; the fused buckets hold it in
//!    every second it covers, exactly once, hold nothing outside what an annotation covers, and are
//!    identical on every node; label searches filtered on the asset return it with exactly the
//!    seconds whose buckets hold the label; and the raw-store digests
//!    (`GET /v1/cluster?digest=true`) of all replicas of each shard are equal.
//!
//! Every wait has a deadline ([`wait_until`], [`poll_until`]); a failure message carries the last
//! reason, each node's state and the tail of its log.

pub mod check;
pub mod checker;
pub mod cluster;
pub mod docker;
pub mod history;
pub mod http;
pub mod nemesis;
pub mod node;
pub mod proxy;
pub mod report;
pub mod run;
pub mod status;
pub mod versions_check;
pub mod wait;
pub mod workload;
pub mod workloads;

pub use check::{check_cluster, CheckOptions, CheckReport};
pub use cluster::{ClusterOptions, LocalCluster, FAULT_INJECTION_ENV};
pub use http::{Http, HttpError};
pub use node::{rushes_binary, LocalNode, RUSHES_BIN_ENV};
pub use status::{ClusterStatus, ReplicaStatus, ShardStatus};
pub use wait::{hold_fault, poll_until, wait_until};
pub use workload::{AnnotationMeta, Batch, Progress, Sample, Workload, WorkloadOptions};
