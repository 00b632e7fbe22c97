//! Raft log storage. [`RaftLogStore`] is what the driver writes through; [`SledLogStore`] keeps
//! entries, hard state and conf state in sled (durable only after [`RaftLogStore::sync`]), and
//! [`MemLogStore`] keeps them in memory for simulated-network tests.
//!
//! Snapshots: a store holds at most one snapshot *with data* (the caller's state machine
//! serialized at the snapshot index). [`RaftLogStore::save_snapshot`] stores one and drops the log
//! through its index in one atomic step (the leader's compaction);
//! [`RaftLogStore::apply_snapshot`] replaces the whole log with one received from the leader.
//! [`Storage::snapshot`] serves the stored snapshot only while it still covers the compacted part
//! of the log (index >= `first_index - 1`); otherwise raft is told the snapshot is temporarily
//! unavailable and retries later. [`RaftLogStore::compact`] alone only drops entries (no data).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// A snapshot to save must lie inside the log: `first_index - 1 <= index <= last_index`.
    #[error("snapshot at index {index} is outside the log (first index {first_index}, last index {last_index})")]
    SnapshotOutOfRange { index: u64, first_index: u64, last_index: u64 },
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
    /// Stores the configuration a conf-change entry at `index` produced. A snapshot at an
    /// earlier index must not carry it: compaction waits until it passes `index`.
    fn set_conf_state_at(&self, conf_state: &ConfState, index: u64) -> Result<(), LogStoreError>;
    /// Index of the entry (or snapshot) that produced the stored configuration; 0 for the
    /// configuration the group was created with.
    fn conf_state_index(&self) -> u64;
    /// Replaces the log with a snapshot's position (the state machine part is the caller's).
    fn apply_snapshot_metadata(&self, metadata: &SnapshotMetadata) -> Result<(), LogStoreError>;
    /// Drops entries before `index` (they must be applied everywhere that needs them). Stores no
    /// snapshot data: a follower that needs the dropped entries can only catch up from a snapshot
    /// saved with [`RaftLogStore::save_snapshot`] at or after `index - 1`.
    fn compact(&self, index: u64) -> Result<(), LogStoreError>;
    /// Stores `snapshot` (metadata with conf state, and the state machine's data at its index)
    /// and drops every log entry up to and including its index, atomically. The index must be in
    /// `first_index - 1 ..= last_index`; entries after it stay.
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), LogStoreError>;
    /// A follower installs a snapshot from the leader: the whole log is replaced by the snapshot's
    /// position, its data and conf state are stored, and the hard state's commit and term move up
    /// to it, atomically.
    fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), LogStoreError>;
    /// The stored snapshot with data, if any (for restoring the state machine on restart).
    fn stored_snapshot(&self) -> Result<Option<Snapshot>, LogStoreError>;
    /// The durability barrier: everything written before returns is on disk.
    fn sync(&self) -> Result<(), LogStoreError>;
    fn hard_state(&self) -> HardState;
    /// Whether a follower asked for a snapshot this store could not give (none stored, one
    /// older than the log's start, or one whose configuration does not have that follower
    /// yet, which raft-rs would refuse to install); clears the flag. The owner then saves a
    /// fresh snapshot at its applied index.
    fn take_snapshot_wanted(&self) -> bool;
}

fn store_error(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(std::io::Error::other(e.to_string()))))
}

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_CONF_STATE_INDEX: &[u8] = b"conf_state_index";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
/// The last snapshot with data (a serialized `eraftpb::Snapshot`).
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// Raft log in two sled trees of the shard's database: `raft_log` (big-endian index → entry)
/// and `raft_meta` (hard state, conf state, position of the last compaction, last snapshot with
/// data). Compaction and snapshot installation change both trees in one sled transaction.
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
    snapshot_wanted: AtomicBool,
    /// Entries appended since open and their encoded bytes (the log's last entry at open
    /// counts as one), for [`SledLogStore::mean_entry_bytes`].
    appended_entries: AtomicU64,
    appended_bytes: AtomicU64,
}

/// Opens the sled database `config` names, waiting up to `wait` for this process to release
/// it. sled takes an exclusive file lock, and a `Db` dropped a moment ago may still hold it
/// until its background write threads finish; a reopen in the same process (a shard store
/// opened again, a test restarting a store) waits for that instead of failing on the lock.
pub fn open_sled_when_released(config: &sled::Config, wait: std::time::Duration) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match config.open() {
            Err(sled::Error::Io(error)) if error.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
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
        // Entries at or before the compaction point are never served, even if a store written
        // by an older version left some behind.
        let first_index = match log.first()? {
            Some((key, _)) => decode_index(&key)?.max(snapshot_meta.index + 1),
            None => snapshot_meta.index + 1,
        };
        let last = log.last()?;
        let last_index = match &last {
            Some((key, _)) => decode_index(key)?.max(snapshot_meta.index),
            None => snapshot_meta.index,
        };
        // The last entry stands for the log written before this open, so byte limits apply
        // from the start, without reading the whole log back.
        let (appended_entries, appended_bytes) = match &last {
            Some((_, value)) => (1, value.len() as u64),
            None => (0, 0),
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
                snapshot_wanted: AtomicBool::new(false),
                appended_entries: AtomicU64::new(appended_entries),
                appended_bytes: AtomicU64::new(appended_bytes),
            }),
        })
    }

    pub fn conf_state(&self) -> ConfState {
        self.inner.conf_state.lock().clone()
    }

    /// Mean encoded size of the log's last entry at open and of the entries appended since,
    /// if there are any: how compaction turns a byte budget into a number of entries without
    /// reading the log back.
    pub fn mean_entry_bytes(&self) -> Option<u64> {
        let entries = self.inner.appended_entries.load(Ordering::Relaxed);
        (entries > 0).then(|| self.inner.appended_bytes.load(Ordering::Relaxed).div_ceil(entries))
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

    /// Keys of the log entries with index `<= up_to` (all of them with `u64::MAX`).
    fn keys_through(&self, up_to: u64) -> Result<Vec<sled::IVec>, LogStoreError> {
        Ok(self.inner.log.range(..=up_to.to_be_bytes()).keys().collect::<Result<Vec<_>, _>>()?)
    }

    /// Removes `log_keys` and writes `meta_writes` in one transaction over both trees.
    fn commit_meta_and_truncate(&self, log_keys: &[sled::IVec], meta_writes: &[(&[u8], Vec<u8>)]) -> Result<(), LogStoreError> {
        use sled::Transactional;
        (&self.inner.log, &self.inner.meta)
            .transaction(|(log, meta)| {
                for key in log_keys {
                    log.remove(key.clone())?;
                }
                for (key, value) in meta_writes {
                    meta.insert(*key, value.clone())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<std::convert::Infallible>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Abort(never) => match never {},
                sled::transaction::TransactionError::Storage(e) => LogStoreError::Io(e),
            })
    }

    /// Replaces the whole log with the position in `snapshot`, storing its data if `with_data`.
    fn install_snapshot(&self, snapshot: &Snapshot, with_data: bool) -> Result<(), LogStoreError> {
        let metadata = snapshot.get_metadata();
        let mut hard_state = self.hard_state();
        hard_state.commit = hard_state.commit.max(metadata.index);
        hard_state.term = hard_state.term.max(metadata.term);
        let mut writes: Vec<(&[u8], Vec<u8>)> = vec![
            (KEY_SNAPSHOT_META, metadata.write_to_bytes().map_err(|e| corrupt("snapshot_meta", e))?),
            (KEY_CONF_STATE, metadata.get_conf_state().write_to_bytes().map_err(|e| corrupt("conf_state", e))?),
            (KEY_CONF_STATE_INDEX, metadata.index.to_be_bytes().to_vec()),
            (KEY_HARD_STATE, hard_state.write_to_bytes().map_err(|e| corrupt("hard_state", e))?),
        ];
        if with_data {
            writes.push((KEY_SNAPSHOT, snapshot.write_to_bytes().map_err(|e| corrupt("snapshot", e))?));
        }
        let keys = self.keys_through(u64::MAX)?;
        self.commit_meta_and_truncate(&keys, &writes)?;
        *self.inner.snapshot_meta.lock() = metadata.clone();
        *self.inner.conf_state.lock() = metadata.get_conf_state().clone();
        *self.inner.hard_state.lock() = hard_state;
        self.inner.first_index.store(metadata.index + 1, Ordering::Release);
        self.inner.last_index.store(metadata.index, Ordering::Release);
        Ok(())
    }

    /// Drops the log through `metadata.index` (which must be inside the log), recording the new
    /// compaction point and, if given, the snapshot with data.
    fn truncate_through(&self, metadata: &SnapshotMetadata, snapshot: Option<&Snapshot>) -> Result<(), LogStoreError> {
        let mut writes: Vec<(&[u8], Vec<u8>)> =
            vec![(KEY_SNAPSHOT_META, metadata.write_to_bytes().map_err(|e| corrupt("snapshot_meta", e))?)];
        if let Some(snapshot) = snapshot {
            writes.push((KEY_SNAPSHOT, snapshot.write_to_bytes().map_err(|e| corrupt("snapshot", e))?));
        }
        let keys = self.keys_through(metadata.index)?;
        self.commit_meta_and_truncate(&keys, &writes)?;
        *self.inner.snapshot_meta.lock() = metadata.clone();
        let first = self.first_log_index().max(metadata.index + 1);
        self.inner.first_index.store(first, Ordering::Release);
        Ok(())
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

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Only a snapshot saved with data by the caller is ever sent (never an empty state
        // machine). Without one that covers the compacted log, raft retries later.
        let stored = self.stored_snapshot().map_err(store_error)?;
        serve_snapshot(stored, request_index, self.first_log_index(), to, &self.inner.snapshot_wanted)
    }
}

/// The stored snapshot if it is usable for follower `to`: at least `request_index`, covering
/// everything compacted away (`index >= first_index - 1`), and with `to` in its configuration
/// (raft-rs refuses to install a snapshot that does not name the replica, so a learner added
/// after the last compaction needs a newer one). Otherwise raft retries later and `wanted` is
/// raised so the owner makes one.
fn serve_snapshot(stored: Option<Snapshot>, request_index: u64, first_index: u64, to: u64, wanted: &AtomicBool) -> raft::Result<Snapshot> {
    match stored {
        Some(snapshot)
            if snapshot.get_metadata().index >= request_index
                && snapshot.get_metadata().index + 1 >= first_index
                && conf_state_names(snapshot.get_metadata().get_conf_state(), to) =>
        {
            Ok(snapshot)
        }
        _ => {
            wanted.store(true, Ordering::Release);
            Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
        }
    }
}

fn conf_state_names(conf_state: &ConfState, node: u64) -> bool {
    conf_state
        .voters
        .iter()
        .chain(&conf_state.learners)
        .chain(&conf_state.voters_outgoing)
        .chain(&conf_state.learners_next)
        .any(|&id| id == node)
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
        let mut bytes = 0;
        for entry in entries {
            let encoded = entry.write_to_bytes().map_err(|e| corrupt("entry", e))?;
            bytes += encoded.len() as u64;
            batch.insert(&entry.index.to_be_bytes(), encoded);
        }
        self.inner.log.apply_batch(batch)?;
        self.inner.appended_entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.inner.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
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

    fn set_conf_state_at(&self, conf_state: &ConfState, index: u64) -> Result<(), LogStoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(KEY_CONF_STATE, conf_state.write_to_bytes().map_err(|e| corrupt("conf_state", e))?);
        batch.insert(KEY_CONF_STATE_INDEX, &index.to_be_bytes());
        self.inner.meta.apply_batch(batch)?;
        *self.inner.conf_state.lock() = conf_state.clone();
        Ok(())
    }

    fn conf_state_index(&self) -> u64 {
        match self.inner.meta.get(KEY_CONF_STATE_INDEX) {
            Ok(Some(bytes)) => <[u8; 8]>::try_from(bytes.as_ref()).map(u64::from_be_bytes).unwrap_or(0),
            _ => 0,
        }
    }

    fn apply_snapshot_metadata(&self, metadata: &SnapshotMetadata) -> Result<(), LogStoreError> {
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata.clone());
        self.install_snapshot(&snapshot, false)
    }

    fn compact(&self, index: u64) -> Result<(), LogStoreError> {
        let first = self.first_log_index();
        if index <= first {
            return Ok(());
        }
        let compact_to = index.min(self.last_log_index() + 1);
        // The stored configuration came from a later entry: a snapshot here would carry it too
        // early. Compact once the log is past that entry.
        if self.conf_state_index() > compact_to - 1 {
            return Ok(());
        }
        let term_before = self.term(compact_to - 1)?;
        let mut metadata = self.inner.snapshot_meta.lock().clone();
        metadata.index = compact_to - 1;
        metadata.term = term_before;
        metadata.set_conf_state(self.conf_state());
        self.truncate_through(&metadata, None)
    }

    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), LogStoreError> {
        let index = snapshot.get_metadata().index;
        let (first_index, last_index) = (self.first_log_index(), self.last_log_index());
        if index + 1 < first_index || index > last_index {
            return Err(LogStoreError::SnapshotOutOfRange { index, first_index, last_index });
        }
        self.truncate_through(snapshot.get_metadata(), Some(snapshot))
    }

    fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), LogStoreError> {
        self.install_snapshot(snapshot, true)
    }

    fn stored_snapshot(&self) -> Result<Option<Snapshot>, LogStoreError> {
        match self.inner.meta.get(KEY_SNAPSHOT)? {
            Some(bytes) => Ok(Some(Snapshot::parse_from_bytes(&bytes).map_err(|e| corrupt("snapshot", e))?)),
            None => Ok(None),
        }
    }

    fn sync(&self) -> Result<(), LogStoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.inner.hard_state.lock().clone()
    }
    fn take_snapshot_wanted(&self) -> bool {
        self.inner.snapshot_wanted.swap(false, Ordering::AcqRel)
    }
}

/// In-memory log for tests of the driver on a simulated network. Entries and hard state live in
/// raft-rs's `MemStorage`; the snapshot with data is kept beside it.
#[derive(Clone, Default)]
pub struct MemLogStore {
    pub storage: raft::storage::MemStorage,
    /// The last snapshot with data. Its lock is taken before the storage's, and held across
    /// every change of the log's start, so readers see both move together.
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    conf_state_index: Arc<AtomicU64>,
    snapshot_wanted: Arc<AtomicBool>,
}

impl MemLogStore {
    pub fn new(voters: &[u64]) -> Self {
        let storage = raft::storage::MemStorage::new();
        storage.initialize_with_conf_state(ConfState::from((voters.to_vec(), vec![])));
        MemLogStore { storage, snapshot: Arc::default(), conf_state_index: Arc::default(), snapshot_wanted: Arc::default() }
    }

    /// Moves the log's start to just after `metadata.index` (inside the log), keeping later
    /// entries and the hard state. `MemStorage::compact` alone forgets the term of the last
    /// dropped entry, which raft must still read, so the position is installed as a snapshot.
    fn truncate_through(&self, metadata: &SnapshotMetadata) -> Result<(), LogStoreError> {
        if metadata.index < self.storage.first_index()? {
            // Already compacted exactly there (the term of `first_index - 1` is known).
            return Ok(());
        }
        let last = self.storage.last_index()?;
        let remaining = if metadata.index < last {
            self.storage.entries(metadata.index + 1, last + 1, None, GetEntriesContext::empty(false))?
        } else {
            vec![]
        };
        let mut core = self.storage.wl();
        let hard_state = core.hard_state().clone();
        let mut position = Snapshot::default();
        position.set_metadata(metadata.clone());
        core.apply_snapshot(position)?;
        core.set_hardstate(hard_state);
        core.append(&remaining)?;
        Ok(())
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
        let stored = self.snapshot.lock();
        serve_snapshot(stored.clone(), request_index, self.storage.first_index()?, to, &self.snapshot_wanted)
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
    fn set_conf_state_at(&self, conf_state: &ConfState, index: u64) -> Result<(), LogStoreError> {
        self.storage.wl().set_conf_state(conf_state.clone());
        self.conf_state_index.store(index, Ordering::Release);
        Ok(())
    }
    fn conf_state_index(&self) -> u64 {
        self.conf_state_index.load(Ordering::Acquire)
    }
    fn apply_snapshot_metadata(&self, metadata: &SnapshotMetadata) -> Result<(), LogStoreError> {
        let _guard = self.snapshot.lock();
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata.clone());
        let mut core = self.storage.wl();
        let commit = core.hard_state().commit.max(metadata.index);
        core.apply_snapshot(snapshot)?;
        core.mut_hard_state().commit = commit;
        Ok(())
    }
    fn compact(&self, index: u64) -> Result<(), LogStoreError> {
        let _guard = self.snapshot.lock();
        let first = self.storage.first_index()?;
        if index <= first {
            return Ok(());
        }
        let compact_to = index.min(self.storage.last_index()? + 1);
        if self.conf_state_index() > compact_to - 1 {
            return Ok(());
        }
        let mut metadata = SnapshotMetadata { index: compact_to - 1, term: self.storage.term(compact_to - 1)?, ..Default::default() };
        metadata.set_conf_state(self.storage.initial_state()?.conf_state);
        self.truncate_through(&metadata)
    }
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), LogStoreError> {
        let mut stored = self.snapshot.lock();
        let index = snapshot.get_metadata().index;
        let (first_index, last_index) = (self.storage.first_index()?, self.storage.last_index()?);
        if index + 1 < first_index || index > last_index {
            return Err(LogStoreError::SnapshotOutOfRange { index, first_index, last_index });
        }
        self.truncate_through(snapshot.get_metadata())?;
        *stored = Some(snapshot.clone());
        Ok(())
    }
    fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), LogStoreError> {
        let mut stored = self.snapshot.lock();
        let metadata = snapshot.get_metadata();
        let mut position = Snapshot::default();
        position.set_metadata(metadata.clone());
        let mut core = self.storage.wl();
        let commit = core.hard_state().commit.max(metadata.index);
        core.apply_snapshot(position)?;
        core.mut_hard_state().commit = commit;
        self.conf_state_index.store(metadata.index, Ordering::Release);
        *stored = Some(snapshot.clone());
        Ok(())
    }
    fn stored_snapshot(&self) -> Result<Option<Snapshot>, LogStoreError> {
        Ok(self.snapshot.lock().clone())
    }
    fn sync(&self) -> Result<(), LogStoreError> {
        Ok(())
    }
    fn hard_state(&self) -> HardState {
        self.storage.rl().hard_state().clone()
    }
    fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::AcqRel)
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

    #[test]
    fn mean_entry_bytes_counts_the_last_entry_at_open_and_what_was_appended_since() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = SledLogStore::open(&db, &[1]).unwrap();
        assert_eq!(store.mean_entry_bytes(), None, "nothing appended yet");
        let mut small = entry(1, 1);
        small.data = vec![0; 100].into();
        let mut large = entry(2, 1);
        large.data = vec![0; 10_000].into();
        let expected = (small.write_to_bytes().unwrap().len() + large.write_to_bytes().unwrap().len()).div_ceil(2) as u64;
        store.append(&[small, large]).unwrap();
        assert_eq!(store.mean_entry_bytes(), Some(expected));
        assert!((5_050..5_100).contains(&expected), "the encoding adds only a few bytes per entry: {expected}");
        let large_bytes = store.entry(2).unwrap().unwrap().write_to_bytes().unwrap().len() as u64;
        drop(store);
        let reopened = SledLogStore::open(&db, &[1]).unwrap();
        assert_eq!(reopened.mean_entry_bytes(), Some(large_bytes), "the last entry stands for the log before the open");
        let mut small = entry(3, 1);
        small.data = vec![0; 100].into();
        let small_bytes = small.write_to_bytes().unwrap().len() as u64;
        reopened.append(&[small]).unwrap();
        assert_eq!(reopened.mean_entry_bytes(), Some((large_bytes + small_bytes).div_ceil(2)));
    }

    fn snapshot_at(index: u64, term: u64, voters: &[u64], data: &[u8]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.data = data.to_vec().into();
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = term;
        snapshot.mut_metadata().set_conf_state(ConfState::from((voters.to_vec(), vec![])));
        snapshot
    }

    fn is_compacted<T: std::fmt::Debug>(result: raft::Result<T>) -> bool {
        matches!(result, Err(raft::Error::Store(StorageError::Compacted)))
    }

    fn is_unavailable_snapshot(result: raft::Result<Snapshot>) -> bool {
        matches!(result, Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)))
    }

    #[test]
    fn sled_snapshot_compaction_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = SledLogStore::open(&db, &[1, 2, 3]).unwrap();
        store.append(&(1..=5).map(|i| entry(i, 1)).chain((6..=10).map(|i| entry(i, 2))).collect::<Vec<_>>()).unwrap();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.commit = 10;
        store.set_hard_state(&hs).unwrap();
        // No snapshot with data yet: raft is asked to retry, never handed an empty state.
        assert!(is_unavailable_snapshot(store.snapshot(0, 2)));
        assert!(store.stored_snapshot().unwrap().is_none());
        // Outside the log.
        assert!(matches!(
            store.save_snapshot(&snapshot_at(11, 2, &[1, 2, 3], b"x")),
            Err(LogStoreError::SnapshotOutOfRange { index: 11, first_index: 1, last_index: 10 })
        ));
        store.save_snapshot(&snapshot_at(7, 2, &[1, 2, 3], b"state@7")).unwrap();
        store.sync().unwrap();
        let check = |store: &SledLogStore| {
            assert_eq!(store.first_index().unwrap(), 8);
            assert_eq!(store.last_index().unwrap(), 10);
            assert_eq!(store.term(7).unwrap(), 2, "term of the snapshot index answers from its metadata");
            assert_eq!(store.term(8).unwrap(), 2);
            assert!(is_compacted(store.term(6)));
            assert!(is_compacted(store.entries(5, 9, None, GetEntriesContext::empty(false))));
            assert!(is_compacted(store.entries(7, 9, None, GetEntriesContext::empty(false))));
            let entries = store.entries(8, 11, None, GetEntriesContext::empty(false)).unwrap();
            assert_eq!(entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![8, 9, 10]);
            let snapshot = store.snapshot(0, 2).unwrap();
            assert_eq!((snapshot.get_metadata().index, snapshot.get_metadata().term), (7, 2));
            assert_eq!(snapshot.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
            assert_eq!(&snapshot.data[..], b"state@7");
            assert!(is_unavailable_snapshot(store.snapshot(8, 2)), "a snapshot below request_index is not served");
            assert_eq!(store.hard_state().commit, 10);
            assert!(store.entry(7).unwrap().is_none(), "compacted entries are gone from sled");
        };
        check(&store);
        drop(store);
        let reopened = SledLogStore::open(&db, &[1, 2, 3]).unwrap();
        check(&reopened);
        // Appends continue after the snapshot; a plain compaction past the snapshot makes it
        // useless for followers (it no longer covers the compacted log).
        reopened.append(&[entry(11, 3)]).unwrap();
        reopened.compact(10).unwrap();
        assert_eq!(reopened.first_index().unwrap(), 10);
        assert_eq!(reopened.term(9).unwrap(), 2);
        assert!(is_unavailable_snapshot(reopened.snapshot(0, 2)));
        // A newer snapshot covers it again.
        reopened.save_snapshot(&snapshot_at(10, 2, &[1, 2, 3], b"state@10")).unwrap();
        assert_eq!(&reopened.snapshot(0, 2).unwrap().data[..], b"state@10");
        assert_eq!((reopened.first_index().unwrap(), reopened.last_index().unwrap()), (11, 11));
        reopened.sync().unwrap();
        drop(reopened);
        drop(db);
        let db = open_sled_when_released(&sled::Config::new().path(dir.path()), std::time::Duration::from_secs(10)).unwrap();
        let reopened = SledLogStore::open(&db, &[1, 2, 3]).unwrap();
        assert_eq!((reopened.first_index().unwrap(), reopened.last_index().unwrap()), (11, 11));
        assert_eq!(reopened.term(10).unwrap(), 2);
        assert_eq!(reopened.term(11).unwrap(), 3);
        assert_eq!(&reopened.stored_snapshot().unwrap().unwrap().data[..], b"state@10");
    }

    #[test]
    fn sled_follower_installs_snapshot_durably() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = SledLogStore::open(&db, &[1, 2, 3]).unwrap();
        store.append(&(1..=4).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
        let mut hs = HardState::default();
        hs.term = 1;
        hs.vote = 2;
        hs.commit = 3;
        store.set_hard_state(&hs).unwrap();
        store.apply_snapshot(&snapshot_at(50, 4, &[1, 2, 3], b"leader state")).unwrap();
        store.sync().unwrap();
        drop(store);
        let store = SledLogStore::open(&db, &[9]).unwrap();
        assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (51, 50));
        assert_eq!(store.term(50).unwrap(), 4);
        assert!(is_compacted(store.term(4)));
        assert!(is_compacted(store.entries(4, 5, None, GetEntriesContext::empty(false))));
        let state = store.initial_state().unwrap();
        assert_eq!((state.hard_state.term, state.hard_state.vote, state.hard_state.commit), (4, 2, 50));
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(&store.stored_snapshot().unwrap().unwrap().data[..], b"leader state");
        // The log continues after the snapshot.
        store.append(&[entry(51, 4), entry(52, 4)]).unwrap();
        assert_eq!(store.entries(51, 53, None, GetEntriesContext::empty(false)).unwrap().len(), 2);
    }

    #[test]
    fn mem_store_compaction_keeps_the_term_before_the_log() {
        let store = MemLogStore::new(&[1]);
        store.append(&(1..=6).map(|i| entry(i, 1 + i / 4)).collect::<Vec<_>>()).unwrap();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.commit = 6;
        store.set_hard_state(&hs).unwrap();
        store.compact(3).unwrap();
        assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (3, 6));
        assert_eq!(store.term(2).unwrap(), 1);
        assert!(is_compacted(store.term(1)));
        assert!(is_unavailable_snapshot(store.snapshot(0, 2)));
        assert!(store.take_snapshot_wanted(), "an unavailable snapshot asks the owner for one");
        assert!(!store.take_snapshot_wanted(), "once");
        store.save_snapshot(&snapshot_at(5, 2, &[1, 2], b"five")).unwrap();
        assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (6, 6));
        assert_eq!(store.term(5).unwrap(), 2);
        assert_eq!(store.hard_state(), hs, "compaction keeps the hard state");
        assert_eq!(&store.snapshot(0, 2).unwrap().data[..], b"five");
        assert!(!store.take_snapshot_wanted());
        // Replica 3 joined after this snapshot: raft-rs would refuse it, so a newer one is asked for.
        assert!(is_unavailable_snapshot(store.snapshot(0, 3)));
        assert!(store.take_snapshot_wanted());
        assert!(is_compacted(store.entries(5, 7, None, GetEntriesContext::empty(false))));
    }
}
