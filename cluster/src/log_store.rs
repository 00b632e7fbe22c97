//! Raft log storage. [`RaftLogStore`] is what the driver writes through; [`SledLogStore`] keeps
//! entries, hard state and conf state in sled (durable only after [`RaftLogStore::sync`]), and
//! [`MemLogStore`] keeps them in memory for simulated-network tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("raft log storage i/o: {0}")]
    Io(#[from] sled::Error),
    #[error("raft log storage holds a corrupt record at {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// Writes to a Raft log. Reads go through [`raft::Storage`].
/// Implementations are cheap handles (`Arc` inside): the driver writes through a clone while
/// raft-rs holds the original for reads.
pub trait RaftLogStore: Storage + Clone {
    /// Appends entries, replacing any conflicting suffix.
    fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError>;
    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError>;
    fn set_commit(&self, commit: u64) -> Result<(), LogStoreError>;
    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), LogStoreError>;
    /// Replaces the log with a snapshot's position (the state machine part is the caller's).
    fn apply_snapshot_metadata(&self, metadata: &SnapshotMetadata) -> Result<(), LogStoreError>;
    /// Drops entries before `index` (they must be applied everywhere that needs them).
    fn compact(&self, index: u64) -> Result<(), LogStoreError>;
    /// The durability barrier: everything written before returns is on disk.
    fn sync(&self) -> Result<(), LogStoreError>;
    fn hard_state(&self) -> HardState;
}

fn store_error(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(std::io::Error::other(e.to_string()))))
}

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";

/// Raft log in two sled trees of the shard's database: `raft_log` (big-endian index → entry)
/// and `raft_meta` (hard state, conf state, position of the last compaction).
#[derive(Clone)]
pub struct SledLogStore {
    inner: Arc<SledInner>,
}

struct SledInner {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// Index of the first entry still in the log (compaction index + 1).
    first_index: AtomicU64,
    last_index: AtomicU64,
    /// (index, term) of the entry just before `first_index`.
    snapshot_meta: Mutex<SnapshotMetadata>,
    hard_state: Mutex<HardState>,
    conf_state: Mutex<ConfState>,
}

impl SledLogStore {
    /// Opens the log in `db`. A brand-new log is bootstrapped with `initial_voters`.
    pub fn open(db: &sled::Db, initial_voters: &[u64]) -> Result<Self, LogStoreError> {
        let log = db.open_tree("raft_log")?;
        let meta = db.open_tree("raft_meta")?;
        let hard_state = match meta.get(KEY_HARD_STATE)? {
            Some(bytes) => HardState::parse_from_bytes(&bytes).map_err(|e| corrupt("hard_state", e))?,
            None => HardState::default(),
        };
        let conf_state = match meta.get(KEY_CONF_STATE)? {
            Some(bytes) => ConfState::parse_from_bytes(&bytes).map_err(|e| corrupt("conf_state", e))?,
            None => {
                let mut conf_state = ConfState::default();
                conf_state.set_voters(initial_voters.to_vec());
                meta.insert(KEY_CONF_STATE, conf_state.write_to_bytes().map_err(|e| corrupt("conf_state", e))?)?;
                conf_state
            }
        };
        let snapshot_meta = match meta.get(KEY_SNAPSHOT_META)? {
            Some(bytes) => SnapshotMetadata::parse_from_bytes(&bytes).map_err(|e| corrupt("snapshot_meta", e))?,
            None => SnapshotMetadata::default(),
        };
        let first_index = match log.first()? {
            Some((key, _)) => decode_index(&key)?,
            None => snapshot_meta.index + 1,
        };
        let last_index = match log.last()? {
            Some((key, _)) => decode_index(&key)?,
            None => snapshot_meta.index,
        };
        Ok(SledLogStore {
            inner: Arc::new(SledInner {
                db: db.clone(),
                log,
                meta,
                first_index: AtomicU64::new(first_index),
                last_index: AtomicU64::new(last_index),
                snapshot_meta: Mutex::new(snapshot_meta),
                hard_state: Mutex::new(hard_state),
                conf_state: Mutex::new(conf_state),
            }),
        })
    }

    pub fn conf_state(&self) -> ConfState {
        self.inner.conf_state.lock().clone()
    }

    /// Reads one entry's data (for replaying committed entries into derived stages).
    pub fn entry(&self, index: u64) -> Result<Option<Entry>, LogStoreError> {
        match self.inner.log.get(index.to_be_bytes())? {
            Some(bytes) => Ok(Some(Entry::parse_from_bytes(&bytes).map_err(|e| corrupt(&format!("entry {index}"), e))?)),
            None => Ok(None),
        }
    }

    pub fn first_log_index(&self) -> u64 {
        self.inner.first_index.load(Ordering::Acquire)
    }

    pub fn last_log_index(&self) -> u64 {
        self.inner.last_index.load(Ordering::Acquire)
    }
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> LogStoreError {
    LogStoreError::Corrupt { key: key.to_string(), message: e.to_string() }
}

fn decode_index(key: &[u8]) -> Result<u64, LogStoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| corrupt("raft_log key", format!("{} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Storage for SledLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.inner.hard_state.lock().clone(), self.inner.conf_state.lock().clone()))
    }

    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, _context: GetEntriesContext) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        if low < self.first_log_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_log_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut total_bytes = 0u64;
        for item in self.inner.log.range(low.to_be_bytes()..high.to_be_bytes()) {
            let (_, bytes) = item.map_err(store_error)?;
            total_bytes += bytes.len() as u64;
            // Always return at least one entry, as raft requires.
            if !entries.is_empty() && max_size.is_some_and(|max| total_bytes > max) {
                break;
            }
            entries.push(Entry::parse_from_bytes(&bytes).map_err(store_error)?);
        }
        if entries.first().is_some_and(|e| e.index != low) || (entries.is_empty() && low < high) {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        {
            let snapshot_meta = self.inner.snapshot_meta.lock();
            if idx == snapshot_meta.index {
                return Ok(snapshot_meta.term);
            }
        }
        if idx < self.first_log_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_log_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.inner.log.get(idx.to_be_bytes()).map_err(store_error)? {
            Some(bytes) => Ok(Entry::parse_from_bytes(&bytes).map_err(store_error)?.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_log_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_log_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Snapshots that carry the shard's raw store are built by the shard, not the log: with
        // one voter per shard no follower ever asks. Until a replica can be sent one, raft
        // retries later instead of receiving an empty state machine.
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}

impl RaftLogStore for SledLogStore {
    fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let new_last = entries[entries.len() - 1].index;
        let old_last = self.last_log_index();
        let mut batch = sled::Batch::default();
        for index in (new_last + 1)..=old_last {
            batch.remove(&index.to_be_bytes());
        }
        for entry in entries {
            batch.insert(&entry.index.to_be_bytes(), entry.write_to_bytes().map_err(|e| corrupt("entry", e))?);
        }
        self.inner.log.apply_batch(batch)?;
        if first.index < self.first_log_index() {
            self.inner.first_index.store(first.index, Ordering::Release);
        }
        self.inner.last_index.store(new_last, Ordering::Release);
        Ok(())
    }

    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError> {
        self.inner.meta.insert(KEY_HARD_STATE, hard_state.write_to_bytes().map_err(|e| corrupt("hard_state", e))?)?;
        *self.inner.hard_state.lock() = hard_state.clone();
        Ok(())
    }

    fn set_commit(&self, commit: u64) -> Result<(), LogStoreError> {
        let mut hard_state = self.hard_state();
        if hard_state.commit >= commit {
            return Ok(());
        }
        hard_state.commit = commit;
        self.set_hard_state(&hard_state)
    }

    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), LogStoreError> {
        self.inner.meta.insert(KEY_CONF_STATE, conf_state.write_to_bytes().map_err(|e| corrupt("conf_state", e))?)?;
        *self.inner.conf_state.lock() = conf_state.clone();
        Ok(())
    }

    fn apply_snapshot_metadata(&self, metadata: &SnapshotMetadata) -> Result<(), LogStoreError> {
        let mut batch = sled::Batch::default();
        for item in self.inner.log.iter().keys() {
            batch.remove(item?);
        }
        self.inner.log.apply_batch(batch)?;
        self.inner.meta.insert(KEY_SNAPSHOT_META, metadata.write_to_bytes().map_err(|e| corrupt("snapshot_meta", e))?)?;
        self.set_conf_state(metadata.get_conf_state())?;
        *self.inner.snapshot_meta.lock() = metadata.clone();
        self.inner.first_index.store(metadata.index + 1, Ordering::Release);
        self.inner.last_index.store(metadata.index, Ordering::Release);
        let mut hard_state = self.hard_state();
        hard_state.commit = hard_state.commit.max(metadata.index);
        hard_state.term = hard_state.term.max(metadata.term);
        self.set_hard_state(&hard_state)
    }

    fn compact(&self, index: u64) -> Result<(), LogStoreError> {
        let first = self.first_log_index();
        if index <= first {
            return Ok(());
        }
        let compact_to = index.min(self.last_log_index() + 1);
        let term_before = self.term(compact_to - 1)?;
        let mut metadata = self.inner.snapshot_meta.lock().clone();
        metadata.index = compact_to - 1;
        metadata.term = term_before;
        metadata.set_conf_state(self.conf_state());
        // Record the new start first: after a crash between the two writes, the extra
        // entries are merely kept longer.
        self.inner.meta.insert(KEY_SNAPSHOT_META, metadata.write_to_bytes().map_err(|e| corrupt("snapshot_meta", e))?)?;
        *self.inner.snapshot_meta.lock() = metadata;
        self.inner.first_index.store(compact_to, Ordering::Release);
        let mut batch = sled::Batch::default();
        for index in first..compact_to {
            batch.remove(&index.to_be_bytes());
        }
        self.inner.log.apply_batch(batch)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), LogStoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.inner.hard_state.lock().clone()
    }
}

/// In-memory log for tests of the driver on a simulated network.
#[derive(Clone, Default)]
pub struct MemLogStore {
    pub storage: raft::storage::MemStorage,
}

impl MemLogStore {
    pub fn new(voters: &[u64]) -> Self {
        let storage = raft::storage::MemStorage::new();
        storage.initialize_with_conf_state(ConfState::from((voters.to_vec(), vec![])));
        MemLogStore { storage }
    }
}

impl Storage for MemLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.storage.initial_state()
    }
    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, context: GetEntriesContext) -> raft::Result<Vec<Entry>> {
        self.storage.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.storage.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.storage.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.storage.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.storage.snapshot(request_index, to)
    }
}

impl RaftLogStore for MemLogStore {
    fn append(&self, entries: &[Entry]) -> Result<(), LogStoreError> {
        Ok(self.storage.wl().append(entries)?)
    }
    fn set_hard_state(&self, hard_state: &HardState) -> Result<(), LogStoreError> {
        self.storage.wl().set_hardstate(hard_state.clone());
        Ok(())
    }
    fn set_commit(&self, commit: u64) -> Result<(), LogStoreError> {
        let mut core = self.storage.wl();
        if core.hard_state().commit < commit {
            core.mut_hard_state().commit = commit;
        }
        Ok(())
    }
    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), LogStoreError> {
        self.storage.wl().set_conf_state(conf_state.clone());
        Ok(())
    }
    fn apply_snapshot_metadata(&self, metadata: &SnapshotMetadata) -> Result<(), LogStoreError> {
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata.clone());
        Ok(self.storage.wl().apply_snapshot(snapshot)?)
    }
    fn compact(&self, index: u64) -> Result<(), LogStoreError> {
        Ok(self.storage.wl().compact(index)?)
    }
    fn sync(&self) -> Result<(), LogStoreError> {
        Ok(())
    }
    fn hard_state(&self) -> HardState {
        self.storage.rl().hard_state().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8; 10].into();
        e
    }

    #[test]
    fn sled_log_append_truncate_compact_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = SledLogStore::open(&db, &[1]).unwrap();
        assert_eq!((store.first_log_index(), store.last_log_index()), (1, 0));
        store.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
        // A conflicting suffix from a new term replaces 6..=10 with 6..=7.
        store.append(&[entry(6, 2), entry(7, 2)]).unwrap();
        assert_eq!(store.last_log_index(), 7);
        assert_eq!(store.term(7).unwrap(), 2);
        assert!(store.term(8).is_err());
        let got = store.entries(2, 8, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6, 7]);
        let limited = store.entries(2, 8, Some(1), GetEntriesContext::empty(false)).unwrap();
        assert_eq!(limited.len(), 1, "max_size still returns one entry");
        store.compact(4).unwrap();
        assert_eq!(store.first_log_index(), 4);
        assert_eq!(store.term(3).unwrap(), 1, "term of first_index - 1 stays readable");
        assert!(matches!(store.entries(2, 5, None, GetEntriesContext::empty(false)), Err(raft::Error::Store(StorageError::Compacted))));
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 1;
        hs.commit = 7;
        store.set_hard_state(&hs).unwrap();
        store.sync().unwrap();
        drop(store);
        let reopened = SledLogStore::open(&db, &[1]).unwrap();
        assert_eq!((reopened.first_log_index(), reopened.last_log_index()), (4, 7));
        assert_eq!(reopened.hard_state(), hs);
        assert_eq!(reopened.term(3).unwrap(), 1);
        assert_eq!(reopened.conf_state().voters, vec![1]);
    }
}
