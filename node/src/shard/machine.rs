//! The shard's replicated state machine: committed commands applied to the raw store, and the
//! snapshot of that store (a reference, fetched by the replica that needs it).

use std::collections::HashMap;
use std::time::Instant;

use raft::eraftpb::Entry;
use rushes_cluster::log_store::SledLogStore;
use rushes_cluster::{NodeId, StateMachine};
use rushes_protocol::codec;
use rushes_protocol::model::ShardCommand;

use super::progress::Progress;
use super::snapshot::{SnapshotData, SnapshotRef};
use super::ShardError;
use crate::metrics::Metrics;
use crate::storage::store::{ApplyOutcome, Deletion, ShardStore, StoreError};

/// Where a proposal's outcome goes once its entry is applied (or fails).
pub type ProposalReply = tokio::sync::oneshot::Sender<Result<ApplyOutcome, ShardError>>;

/// A client waiting for its proposal to be applied.
pub struct Waiter {
    pub reply: ProposalReply,
    pub proposed_at: Instant,
    /// The term the entry was proposed in: after a term change the entry may be lost.
    pub term: u64,
}

/// Why the state machine could not apply, snapshot or restore. Only storage failures and
/// commands from a newer build stop a replica; a command that does not decode or breaks the
/// hard limits is a deterministic rejection instead ([`Committed::Rejected`]).
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("undecodable snapshot reference: {0}")]
    Codec(#[from] codec::CodecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("entry {index} holds a command of format {found}, newer than this build reads ({supported}): upgrade this node")]
    NewerFormat { index: u64, found: u8, supported: u8 },
}

/// A committed entry as every replica reads it.
pub enum Committed {
    Command(ShardCommand),
    /// Nothing is stored, on any replica: the bytes do not decode as a command of a format
    /// this build knows, or the command breaks the hard limits (`model::hard_limits`).
    Rejected(String),
}

/// Reads a committed entry's command. The outcome depends only on the entry's bytes, so every
/// replica reads the same: a rejection is the same rejection everywhere.
pub fn read_committed(index: u64, data: &[u8]) -> Result<Committed, MachineError> {
    match data.first() {
        Some(&found) if found > ShardCommand::NEWEST_FORMAT => {
            return Err(MachineError::NewerFormat { index, found, supported: ShardCommand::NEWEST_FORMAT })
        }
        _ => {}
    }
    // Sized by the bytes that are there, not by lengths the entry announces.
    let command = match ShardCommand::decode(data) {
        Ok(command) => command,
        Err(e) => return Ok(Committed::Rejected(format!("the command does not decode: {e}"))),
    };
    match command.check_invariants() {
        Ok(()) => Ok(Committed::Command(command)),
        Err(reason) => Ok(Committed::Rejected(reason)),
    }
}

/// Proposal context: (node id, boot nonce, counter). A committed entry answers a waiter only
/// if this very process proposed it: entries replayed from an earlier run, or proposed by
/// another node, carry another node id or nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProposalTag {
    pub node: NodeId,
    pub boot_nonce: u64,
    pub counter: u64,
}

impl ProposalTag {
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.boot_nonce.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<ProposalTag> {
        let word = |i: usize| bytes.get(i * 8..i * 8 + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
        (bytes.len() == 24).then_some(())?;
        Some(ProposalTag { node: word(0)?, boot_nonce: word(1)?, counter: word(2)? })
    }
}

/// Applies committed commands to the raw store and answers this process's waiters.
pub struct ShardMachine<'a> {
    pub shard: rushes_cluster::ShardId,
    pub store: &'a ShardStore,
    pub progress: &'a Progress,
    pub metrics: &'a Metrics,
    pub waiters: &'a mut HashMap<u64, Waiter>,
    pub node_id: NodeId,
    pub boot_nonce: u64,
}

impl StateMachine for ShardMachine<'_> {
    type Error = MachineError;

    fn apply(&mut self, entry: &Entry) -> Result<(), MachineError> {
        let command = match read_committed(entry.index, &entry.data)? {
            Committed::Command(command) => command,
            Committed::Rejected(reason) => {
                self.metrics.rejected_entries.with_label_values(&[&self.shard.to_string()]).inc();
                tracing::warn!(shard = self.shard, index = entry.index, %reason, "committed entry rejected on every replica; nothing stored");
                self.progress.record_applied(entry.index);
                if let Some(waiter) = self.take_waiter(entry) {
                    let _ = waiter.reply.send(Err(ShardError::Rejected { shard: self.shard, index: entry.index, reason }));
                }
                return Ok(());
            }
        };
        let result = match &command {
            ShardCommand::Ingest { items } => self.store.apply_ingest(items)?,
            ShardCommand::UpsertAsset { asset_id, record } => {
                self.store.apply_asset(asset_id, record)?;
                ApplyOutcome::Applied { created: 1, duplicates: 0 }
            }
            ShardCommand::DeleteAsset { asset_id } => self.store.apply_delete(asset_id, Deletion::Asset)?,
            ShardCommand::DeleteAnnotation { asset_id, annotation_id } => {
                self.store.apply_delete(asset_id, Deletion::Annotation(annotation_id))?
            }
            ShardCommand::PurgeSuperseded { asset_ids } => {
                let mut removed = 0;
                for asset_id in asset_ids {
                    if let ApplyOutcome::Deleted { annotations } = self.store.apply_delete(asset_id, Deletion::Superseded)? {
                        removed += annotations;
                    }
                }
                ApplyOutcome::Deleted { annotations: removed }
            }
        };
        self.progress.record_applied(entry.index);
        if let ShardCommand::Ingest { items } = &command {
            self.progress.record_applied_annotations(entry.index, items.len() as u64);
        }
        if let Some(waiter) = self.take_waiter(entry) {
            self.metrics.commit_seconds.observe(waiter.proposed_at.elapsed().as_secs_f64());
            let _ = waiter.reply.send(Ok(result));
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, MachineError> {
        let index = self.progress.applied.load(std::sync::atomic::Ordering::Acquire);
        Ok(SnapshotRef { index }.encode()?)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), MachineError> {
        match SnapshotData::parse(data)? {
            SnapshotData::Legacy => self.store.import_legacy_snapshot(data)?,
            SnapshotData::Ref(snapshot) => self.store.install_staged(snapshot.index)?,
        }
        Ok(())
    }
}

impl ShardMachine<'_> {
    /// The client waiting for `entry`, if this very process proposed it.
    fn take_waiter(&mut self, entry: &Entry) -> Option<Waiter> {
        let tag = ProposalTag::decode(&entry.context).filter(|t| t.node == self.node_id && t.boot_nonce == self.boot_nonce)?;
        self.waiters.remove(&tag.counter)
    }
}

/// The committed commands in `(from, to]` that were applied, skipping empty (leader no-op)
/// entries and rejected ones (they stored nothing, so nothing derives from them).
pub fn read_commands(log: &SledLogStore, from_exclusive: u64, to_inclusive: u64) -> Result<Vec<ShardCommand>, ShardError> {
    let mut commands = Vec::new();
    for index in (from_exclusive + 1)..=to_inclusive {
        let entry = log.entry(index)?.ok_or(ShardError::MissingEntry(index))?;
        if entry.data.is_empty() || entry.get_entry_type() != raft::eraftpb::EntryType::EntryNormal {
            continue;
        }
        match read_committed(index, &entry.data)? {
            Committed::Command(command) => commands.push(command),
            Committed::Rejected(_) => {}
        }
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_tags_round_trip_and_reject_other_shapes() {
        let tag = ProposalTag { node: 3, boot_nonce: 0xfeed, counter: 42 };
        assert_eq!(ProposalTag::decode(&tag.encode()), Some(tag));
        assert_eq!(ProposalTag::decode(&42u64.to_be_bytes()), None, "an 8-byte context from an older format is not ours");
        assert_eq!(ProposalTag::decode(&[]), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..Default::default() })]

        /// Whatever a committed entry holds, every replica reads the same outcome from its bytes
        /// alone, and only a newer format (an upgrade in progress) stops the shard.
        #[test]
        fn any_committed_bytes_are_a_command_or_a_rejection(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            match read_committed(9, &data) {
                Ok(Committed::Command(command)) => proptest::prop_assert_eq!(command.check_invariants(), Ok(())),
                Ok(Committed::Rejected(reason)) => proptest::prop_assert!(!reason.is_empty()),
                Err(MachineError::NewerFormat { found, .. }) => proptest::prop_assert!(found > ShardCommand::NEWEST_FORMAT),
                Err(other) => proptest::prop_assert!(false, "a committed entry may not fail otherwise: {other}"),
            }
            proptest::prop_assert_eq!(ProposalTag::decode(&data).is_some(), data.len() == 24);
        }
    }
}
