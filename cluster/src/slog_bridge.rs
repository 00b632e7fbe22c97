//! raft-rs logs through slog; we log through tracing. This drain forwards one to the other.

use slog::{Drain, Level, OwnedKVList, Record};

struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, _values: &OwnedKVList) -> Result<(), slog::Never> {
        let message = record.msg().to_string();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{message}"),
            Level::Warning => tracing::warn!(target: "raft", "{message}"),
            Level::Info => tracing::info!(target: "raft", "{message}"),
            Level::Debug => tracing::debug!(target: "raft", "{message}"),
            Level::Trace => tracing::trace!(target: "raft", "{message}"),
        }
        Ok(())
    }
}

/// A slog logger for one shard's Raft group that writes into tracing.
pub fn raft_logger(shard: u32, node: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("shard" => shard, "node" => node))
}
