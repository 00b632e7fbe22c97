//! Rushes cluster: placement of assets on shards and shard replicas on nodes, and the per-shard
//! Raft driver. Consensus and placement do no I/O: storage goes through [`log_store::RaftLogStore`]
//! and messages are returned to the caller, so tests run them on a simulated network.

pub mod driver;
pub mod log_store;
pub mod membership;
pub mod placement;
pub mod raft_wire;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod slog_bridge;
pub mod transport;

pub use driver::{DriverError, RaftDriver, RaftSettings, StateMachine, StateMachineError};
pub use placement::{replicas_for_shard, shard_for_asset, stable_hash, NodeId, PlacementError, ShardId, ShardMap};
