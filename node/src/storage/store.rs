//! A shard's durable state in one sled database: the Raft log (in `rushes_cluster`), the raw
//! store (annotations exactly as received), the parsed annotations fusion reads, asset records,
//! fused buckets, and the watermarks of each stage.
//!
//! Keys are `asset_id 0x00 rest`: asset ids never contain 0x00 (validated alphabet), so a prefix
//! scan of `asset_id 0x00` is exactly one asset. Integers in keys are big-endian.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use parking_lot::RwLock;
use rushes_protocol::codec;
use rushes_protocol::model::{
    normalize_label, same_raw_content, Bucket, BucketEntryRef, IngestItem, StoredAnnotation, StoredAsset, ASSET_FORMAT,
    STORED_ANNOTATION_FORMAT,
};
pub use rushes_protocol::peer::{ApplyOutcome, RawChunk};
use sled::Transactional;

use super::blocks::{block_of, owned_bucket, BucketBlock, BucketBlockRef};

const VECTOR_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage i/o: {0}")]
    Io(#[from] sled::Error),
    #[error("stored value is unreadable: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// The staging area was emptied (an install finished, or another fetch began) while a
    /// fetch was filling it: that fetch's chunks are incomplete and must not be installed.
    #[error("the snapshot staging area was emptied during the fetch")]
    StagingReplaced,
}

/// Watermark names in the `state` tree.
#[derive(Debug, Clone, Copy)]
pub enum Watermark {
    Applied,
    Fused,
    Indexed,
}

impl Watermark {
    fn key(self) -> &'static [u8] {
        match self {
            Watermark::Applied => b"applied_index",
            Watermark::Fused => b"fused_index",
            Watermark::Indexed => b"indexed_index",
        }
    }
}

pub fn asset_prefix(asset_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(asset_id.len() + 1);
    key.extend_from_slice(asset_id.as_bytes());
    key.push(0);
    key
}

pub fn annotation_key(asset_id: &str, annotation_id: &str) -> Vec<u8> {
    let mut key = asset_prefix(asset_id);
    key.extend_from_slice(annotation_id.as_bytes());
    key
}

pub fn bucket_key(asset_id: &str, bucket: u64) -> Vec<u8> {
    let mut key = asset_prefix(asset_id);
    key.extend_from_slice(&bucket.to_be_bytes());
    key
}

fn split_bucket_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let split = key.len().checked_sub(9).filter(|&i| key[i] == 0).ok_or_else(|| StoreError::Corrupt("bucket key".into()))?;
    let asset = std::str::from_utf8(&key[..split]).map_err(|_| StoreError::Corrupt("bucket key asset".into()))?;
    let mut second = [0u8; 8];
    second.copy_from_slice(&key[split + 1..]);
    Ok((asset.to_string(), u64::from_be_bytes(second)))
}

fn model_key(asset_id: &str, model: &str, version: &str) -> Vec<u8> {
    let mut key = asset_prefix(asset_id);
    key.extend_from_slice(model.as_bytes());
    key.push(0);
    key.extend_from_slice(version.as_bytes());
    key
}

/// Vocabulary key: `track 0x1f normalized label`.
fn vocab_key(track: &str, label: &str) -> Vec<u8> {
    format!("{track}\u{1f}{}", normalize_label(label)).into_bytes()
}

/// Kinds of record in the `records` tree; the first key byte.
#[derive(Debug, Clone, Copy)]
enum RecordKind {
    /// One annotation: parsed form and exact raw bytes in one value ([`EntryRecord`]).
    Entry = b'e' as isize,
    ModelVersion = b'm' as isize,
    /// An annotation's vector, if it has one (few do: scene embeddings), in a key of its own so
    /// that vector scans read only vectors and annotation scans never read them.
    Vector = b'v' as isize,
    /// How many stored annotations carry a label on a track: `track 0x1f normalized label`
    /// → u64 BE, kept in the same batch as the entries it counts, so a delete knows exactly
    /// which labels left the shard (the label vocabulary of query understanding and suggest).
    LabelCount = b'l' as isize,
    /// Written by versions before the entry record: the raw bytes and the parsed annotation
    /// apart. Read only by [`ShardStore::migrate_legacy_records`].
    LegacyRaw = b'r' as isize,
    LegacyAnnotation = b'a' as isize,
}

/// Format of an entry record's value.
const ENTRY_FORMAT: u8 = 1;

/// An annotation as stored: `[ENTRY_FORMAT][u32 BE length][parsed annotation][u32 BE
/// length][raw bytes]`. One B-tree key per annotation instead of two: sled's inserts (node
/// rewrites under its write lock) were most of the Raft apply threads' CPU. Each part is a
/// slice, so readers decode only the part they need.
struct EntryRecord<'a> {
    /// `STORED_ANNOTATION_FORMAT`-encoded [`StoredAnnotation`].
    annotation: &'a [u8],
    raw: &'a [u8],
}

impl<'a> EntryRecord<'a> {
    fn encode(annotation: &StoredAnnotation, raw: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(Self::join(&codec::encode(STORED_ANNOTATION_FORMAT, annotation)?, raw))
    }

    fn join(annotation: &[u8], raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + annotation.len() + raw.len());
        out.push(ENTRY_FORMAT);
        for part in [annotation, raw] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    fn parse(bytes: &'a [u8]) -> Result<EntryRecord<'a>, StoreError> {
        fn part<'b>(rest: &mut &'b [u8]) -> Result<&'b [u8], StoreError> {
            let (length, tail) = rest.split_first_chunk::<4>().ok_or_else(|| StoreError::Corrupt("entry record truncated".into()))?;
            let length = u32::from_be_bytes(*length) as usize;
            if tail.len() < length {
                return Err(StoreError::Corrupt(format!("entry record part of {length} bytes, {} left", tail.len())));
            }
            let (part, tail) = tail.split_at(length);
            *rest = tail;
            Ok(part)
        }
        let (&format, mut rest) = bytes.split_first().ok_or_else(|| StoreError::Corrupt("empty entry record".into()))?;
        if format != ENTRY_FORMAT {
            return Err(StoreError::Corrupt(format!("entry record format {format}, this version reads {ENTRY_FORMAT}")));
        }
        let annotation = part(&mut rest)?;
        let raw = part(&mut rest)?;
        if !rest.is_empty() {
            return Err(StoreError::Corrupt(format!("entry record has {} bytes after its parts", rest.len())));
        }
        Ok(EntryRecord { annotation, raw })
    }

    fn annotation(&self) -> Result<StoredAnnotation, StoreError> {
        Ok(codec::decode(STORED_ANNOTATION_FORMAT, self.annotation)?)
    }
}

/// Legacy records converted per batch by [`ShardStore::migrate_legacy_records`].
const MIGRATION_BATCH_ANNOTATIONS: usize = 2_000;

/// How long opening a store waits for this process's earlier handle on it to let go of sled's
/// file lock (its background writes finish after the handle is dropped).
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The shard's bucket count in the `bucket_blocks` tree; no asset key starts with 0x00.
const BUCKET_COUNT_KEY: &[u8] = b"\x00bucket_count";
/// The tree of buckets one per key, written by versions before blocks.
const LEGACY_BUCKETS_TREE: &str = "buckets";

/// Number of raw annotations, kept in the same batch as the annotations themselves.
const RAW_COUNT_KEY: &[u8] = b"#raw_count";
/// Present once the label counts (`l` records) describe every entry: stores of earlier
/// versions, and snapshots from them, get their counts computed once.
const LABEL_COUNTS_KEY: &[u8] = b"#label_counts_v1";

/// What a delete command removes from one asset.
#[derive(Debug, Clone, Copy)]
pub enum Deletion<'a> {
    /// Everything: the record, every annotation of every model version, their vectors.
    Asset,
    /// One annotation and its vector.
    Annotation(&'a str),
    /// The annotations of superseded model versions.
    Superseded,
}

fn record_key(kind: RecordKind, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(kind as u8);
    out.extend_from_slice(key);
    out
}

pub struct ShardStore {
    pub db: sled::Db,
    /// Raw annotations, parsed annotations, vectors and model versions, under the key kinds
    /// below, in ONE tree: an ingest command is one `apply_batch`, which sled applies
    /// atomically, so a crash never leaves half an annotation behind.
    records: sled::Tree,
    assets: sled::Tree,
    asset_ordinals: sled::Tree,
    ordinal_assets: sled::Tree,
    /// Fused buckets by block (`asset 0x00 block` → [`BucketBlock`]), and the shard's bucket
    /// count under [`BUCKET_COUNT_KEY`].
    bucket_blocks: sled::Tree,
    /// Buckets one per key, as versions before blocks stored them; empty once migrated.
    legacy_buckets: sled::Tree,
    state: sled::Tree,
    vocab: sled::Tree,
    pub vector_keys: sled::Tree,
    /// A leader's raw store as fetched for a snapshot, keys prefixed by the raw tree's
    /// position (see [`ShardStore::raw_chunk`]), until the snapshot is installed.
    snapshot_staging: sled::Tree,
    /// Bumped whenever the staging area is emptied. A fetch stages chunks and marks them
    /// complete only while the generation is the one its `begin_staging` returned, so chunks
    /// from before an emptying are never installed as a whole copy.
    staging_generation: std::sync::atomic::AtomicU64,
    /// Installing a snapshot empties and refills the raw trees; the derivation stages hold
    /// this shared for each batch, or each asset of a full rebuild (see
    /// [`ShardStore::derivation_guard`]), the install holds it exclusively, so no stage derives
    /// buckets or documents from a half-installed store.
    install_lock: RwLock<()>,
    /// A fused write of an asset's buckets (one `apply_batch`) is atomic for a crash but not
    /// for a concurrent range scan, which sled does not isolate: a read of an asset's buckets
    /// could show the seconds before a replacement and the seconds after it (versions 2 and 3
    /// of a model at once, found by the fault suite). Range reads hold this shared, bucket
    /// writes exclusively.
    buckets_lock: RwLock<()>,
    /// In memory: ordinal → asset id, and the label vocabulary (normalized label → tracks).
    ordinal_cache: RwLock<HashMap<u64, String>>,
    vocab_cache: RwLock<BTreeMap<String, Vec<String>>>,
}

impl ShardStore {
    pub fn open(path: &Path) -> Result<ShardStore, StoreError> {
        let config = sled::Config::new().path(path).cache_capacity(256 * 1024 * 1024).mode(sled::Mode::HighThroughput);
        let db = rushes_cluster::log_store::open_sled_when_released(&config, REOPEN_WAIT)?;
        Self::from_db(db)
    }

    pub fn from_db(db: sled::Db) -> Result<ShardStore, StoreError> {
        let store = ShardStore {
            records: db.open_tree("records")?,
            assets: db.open_tree("assets")?,
            asset_ordinals: db.open_tree("asset_ordinals")?,
            ordinal_assets: db.open_tree("ordinal_assets")?,
            bucket_blocks: db.open_tree("bucket_blocks")?,
            legacy_buckets: db.open_tree(LEGACY_BUCKETS_TREE)?,
            state: db.open_tree("state")?,
            vocab: db.open_tree("vocab")?,
            vector_keys: db.open_tree("vector_keys")?,
            snapshot_staging: db.open_tree("snapshot_staging")?,
            staging_generation: std::sync::atomic::AtomicU64::new(0),
            install_lock: RwLock::new(()),
            buckets_lock: RwLock::new(()),
            ordinal_cache: RwLock::new(HashMap::new()),
            vocab_cache: RwLock::new(BTreeMap::new()),
            db,
        };
        store.migrate_legacy_records()?;
        store.recount_buckets_if_missing()?;
        if store.records.get(LABEL_COUNTS_KEY)?.is_none() {
            store.rebuild_label_counts()?;
        }
        store.reload_caches()?;
        Ok(store)
    }

    /// Counts the labels of every entry record again (stores and snapshots of earlier
    /// versions, and a snapshot copied live, whose counts may predate records it holds).
    /// Replicas holding the same entries get the same counts.
    fn rebuild_label_counts(&self) -> Result<(), StoreError> {
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for item in self.records.scan_prefix([RecordKind::Entry as u8]) {
            let (_, value) = item?;
            let annotation = EntryRecord::parse(&value)?.annotation()?;
            if let Some(label) = &annotation.label {
                *counts.entry(record_key(RecordKind::LabelCount, &vocab_key(&annotation.track, label))).or_insert(0) += 1;
            }
        }
        let mut batch = sled::Batch::default();
        for key in self.records.scan_prefix([RecordKind::LabelCount as u8]).keys() {
            let key = key?;
            if !counts.contains_key(key.as_ref()) {
                batch.remove(key);
            }
        }
        for (key, count) in counts {
            batch.insert(key, &count.to_be_bytes());
        }
        batch.insert(LABEL_COUNTS_KEY, &[1u8]);
        self.records.apply_batch(batch)?;
        // The set-only vocabulary of earlier versions is replaced by the counts.
        self.vocab.clear()?;
        Ok(())
    }

    /// Reads the ordinal and vocabulary caches from their trees.
    fn reload_caches(&self) -> Result<(), StoreError> {
        let mut ordinals = HashMap::new();
        for item in self.ordinal_assets.iter() {
            let (key, value) = item?;
            ordinals.insert(be_u64(&key)?, String::from_utf8_lossy(&value).into_owned());
        }
        *self.ordinal_cache.write() = ordinals;
        let mut vocab: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in self.records.scan_prefix([RecordKind::LabelCount as u8]) {
            let (key, count) = item?;
            if be_u64(&count)? == 0 {
                continue;
            }
            let text = String::from_utf8_lossy(&key[1..]);
            if let Some((track, label)) = text.split_once('\u{1f}') {
                vocab.entry(label.to_string()).or_default().push(track.to_string());
            }
        }
        *self.vocab_cache.write() = vocab;
        Ok(())
    }

    pub fn watermark(&self, which: Watermark) -> Result<u64, StoreError> {
        match self.state.get(which.key())? {
            Some(bytes) => be_u64(&bytes),
            None => Ok(0),
        }
    }

    pub fn set_watermark(&self, which: Watermark, index: u64) -> Result<(), StoreError> {
        self.state.insert(which.key(), &index.to_be_bytes())?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Applies an ingest command, all or nothing. Deterministic: every replica gets the same
    /// outcome from the same store and command.
    pub fn apply_ingest(&self, items: &[IngestItem]) -> Result<ApplyOutcome, StoreError> {
        let mut fresh = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let key = annotation_key(&item.annotation.asset_id, &item.annotation.id);
            match self.records.get(record_key(RecordKind::Entry, &key))? {
                None => fresh.push((key, item)),
                Some(existing) => {
                    if !same_raw_content(EntryRecord::parse(&existing)?.raw, &item.raw_json) {
                        return Ok(ApplyOutcome::Conflict { item: index, annotation_id: item.annotation.id.clone() });
                    }
                }
            }
        }
        let mut batch = sled::Batch::default();
        // Assets in order of first appearance, not a HashSet's: ordinals are assigned in this
        // order and must be the same on every replica.
        let mut new_assets: Vec<&str> = Vec::new();
        let mut seen_assets: HashSet<&str> = HashSet::new();
        let mut label_increments: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut seen_in_batch: HashSet<&[u8]> = HashSet::new();
        let mut seen_versions: HashSet<Vec<u8>> = HashSet::new();
        let mut created = 0u64;
        for (key, item) in &fresh {
            if !seen_in_batch.insert(key.as_slice()) {
                continue;
            }
            created += 1;
            let a = &item.annotation;
            batch.insert(record_key(RecordKind::Entry, key), EntryRecord::encode(a, &item.raw_json)?);
            if let Some(vector) = &item.vector {
                batch.insert(record_key(RecordKind::Vector, key), encode_vector(vector));
            }
            // A batch holds few distinct (asset, model, version): write each once.
            let version_key = record_key(RecordKind::ModelVersion, &model_key(&a.asset_id, &a.model, &a.model_version));
            if seen_versions.insert(version_key.clone()) {
                batch.insert(version_key, &[]);
            }
            if let Some(label) = &a.label {
                *label_increments.entry(vocab_key(&a.track, label)).or_insert(0) += 1;
            }
        }
        let mut new_labels = Vec::new();
        if created > 0 {
            let count = self.raw_count() as u64 + created;
            batch.insert(RAW_COUNT_KEY, &count.to_be_bytes());
            // Counted in the same batch as the entries: a replayed entry finds its items
            // stored and counts nothing twice.
            for (label, increment) in label_increments {
                let key = record_key(RecordKind::LabelCount, &label);
                let before = self.label_count(&key)?;
                if before == 0 {
                    new_labels.push(label);
                }
                batch.insert(key, &(before + increment).to_be_bytes());
            }
            self.records.apply_batch(batch)?;
        }
        // Ordinals and vocabulary come from every item, not only new ones: after a crash between
        // the batch and these writes, the replayed entry finds its items already stored.
        for item in items {
            if seen_assets.insert(item.annotation.asset_id.as_str()) {
                new_assets.push(item.annotation.asset_id.as_str());
            }
        }
        for asset in new_assets {
            self.ensure_ordinal(asset)?;
        }
        self.update_vocab_cache(&new_labels, &[]);
        Ok(ApplyOutcome::Applied { created: created as usize, duplicates: items.len() - created as usize })
    }

    fn label_count(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.records.get(key)? {
            Some(bytes) => be_u64(&bytes),
            None => Ok(0),
        }
    }

    /// Adds labels that gained their first annotation and drops those that lost their last
    /// (`track 0x1f normalized label` keys).
    fn update_vocab_cache(&self, added: &[Vec<u8>], removed: &[Vec<u8>]) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let mut vocab = self.vocab_cache.write();
        for key in added {
            let text = String::from_utf8_lossy(key);
            if let Some((track, label)) = text.split_once('\u{1f}') {
                let tracks = vocab.entry(label.to_string()).or_default();
                if !tracks.iter().any(|t| t == track) {
                    tracks.push(track.to_string());
                }
            }
        }
        for key in removed {
            let text = String::from_utf8_lossy(key);
            if let Some((track, label)) = text.split_once('\u{1f}') {
                if let Some(tracks) = vocab.get_mut(label) {
                    tracks.retain(|t| t != track);
                    if tracks.is_empty() {
                        vocab.remove(label);
                    }
                }
            }
        }
    }

    /// Applies a delete command to one asset. Deterministic and idempotent: every replica
    /// removes the same records, and replaying the entry finds nothing left to remove. The
    /// entries, their vectors, model-version markers, label counts and the annotation counter
    /// change in one batch.
    pub fn apply_delete(&self, asset_id: &str, what: Deletion<'_>) -> Result<ApplyOutcome, StoreError> {
        let entry_prefix = record_key(RecordKind::Entry, &asset_prefix(asset_id));
        let mut doomed: Vec<(Vec<u8>, StoredAnnotation)> = Vec::new();
        let mut kept: Vec<StoredAnnotation> = Vec::new();
        match what {
            Deletion::Annotation(annotation_id) => {
                let key = annotation_key(asset_id, annotation_id);
                if let Some(bytes) = self.records.get(record_key(RecordKind::Entry, &key))? {
                    doomed.push((key, EntryRecord::parse(&bytes)?.annotation()?));
                }
                if !doomed.is_empty() {
                    kept = self.asset_annotations(asset_id)?.into_iter().filter(|a| a.id != annotation_id).collect();
                }
            }
            Deletion::Asset | Deletion::Superseded => {
                let mut all = Vec::new();
                for item in self.records.scan_prefix(&entry_prefix) {
                    let (key, value) = item?;
                    all.push((key[1..].to_vec(), EntryRecord::parse(&value)?.annotation()?));
                }
                let active: HashMap<String, String> = if matches!(what, Deletion::Superseded) {
                    let annotations: Vec<StoredAnnotation> = all.iter().map(|(_, a)| a.clone()).collect();
                    crate::shard::fusion::active_versions(&annotations)
                        .into_iter()
                        .map(|(model, version)| (model.to_string(), version.to_string()))
                        .collect()
                } else {
                    HashMap::new()
                };
                for (key, annotation) in all {
                    let superseded = active.get(&annotation.model).is_some_and(|version| *version != annotation.model_version);
                    if matches!(what, Deletion::Asset) || superseded {
                        doomed.push((key, annotation));
                    } else {
                        kept.push(annotation);
                    }
                }
            }
        }
        let mut batch = sled::Batch::default();
        let mut label_decrements: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for (key, annotation) in &doomed {
            batch.remove(record_key(RecordKind::Entry, key));
            batch.remove(record_key(RecordKind::Vector, key));
            if let Some(label) = &annotation.label {
                *label_decrements.entry(vocab_key(&annotation.track, label)).or_insert(0) += 1;
            }
        }
        // A model-version marker stays while an annotation of that version does.
        let versions_left: HashSet<(&str, &str)> = kept.iter().map(|a| (a.model.as_str(), a.model_version.as_str())).collect();
        let version_prefix = record_key(RecordKind::ModelVersion, &asset_prefix(asset_id));
        for key in self.records.scan_prefix(&version_prefix).keys() {
            let key = key?;
            let rest = &key[version_prefix.len()..];
            let gone = match rest.iter().position(|&b| b == 0) {
                Some(split) => {
                    let (model, version) = (String::from_utf8_lossy(&rest[..split]), String::from_utf8_lossy(&rest[split + 1..]));
                    !versions_left.contains(&(model.as_ref(), version.as_ref()))
                }
                None => true,
            };
            if gone && (matches!(what, Deletion::Asset) || !doomed.is_empty()) {
                batch.remove(key);
            }
        }
        let mut emptied_labels = Vec::new();
        if !doomed.is_empty() {
            let count = (self.raw_count() as u64).saturating_sub(doomed.len() as u64);
            batch.insert(RAW_COUNT_KEY, &count.to_be_bytes());
            for (label, decrement) in label_decrements {
                let key = record_key(RecordKind::LabelCount, &label);
                let left = self.label_count(&key)?.saturating_sub(decrement);
                if left == 0 {
                    batch.remove(key);
                    emptied_labels.push(label);
                } else {
                    batch.insert(key, &left.to_be_bytes());
                }
            }
        }
        self.records.apply_batch(batch)?;
        if matches!(what, Deletion::Asset) {
            // After the records: a crash between the two is finished by the replay.
            self.assets.remove(asset_id.as_bytes())?;
        }
        self.update_vocab_cache(&[], &emptied_labels);
        Ok(ApplyOutcome::Deleted { annotations: doomed.len() })
    }

    /// Assets with more than one version of some model (what a purge of superseded versions
    /// would change), in order.
    pub fn assets_with_superseded_versions(&self) -> Result<Vec<String>, StoreError> {
        let mut assets: Vec<String> = Vec::new();
        let mut previous: Option<(Vec<u8>, Vec<u8>)> = None;
        for key in self.records.scan_prefix([RecordKind::ModelVersion as u8]).keys() {
            let key = key?;
            let rest = &key[1..];
            let Some(asset_end) = rest.iter().position(|&b| b == 0) else { continue };
            let (asset, model_and_version) = (&rest[..asset_end], &rest[asset_end + 1..]);
            let Some(model_end) = model_and_version.iter().position(|&b| b == 0) else { continue };
            let pair = (asset.to_vec(), model_and_version[..model_end].to_vec());
            // Markers sort by asset, then model: the same pair twice in a row is two versions.
            if previous.as_ref() == Some(&pair) {
                let asset = String::from_utf8_lossy(asset).into_owned();
                if assets.last() != Some(&asset) {
                    assets.push(asset);
                }
            }
            previous = Some(pair);
        }
        Ok(assets)
    }

    /// Every asset this shard has known (by annotation or record), sorted by id; an asset
    /// deleted since may have nothing left.
    pub fn export_assets(&self) -> Vec<String> {
        let mut assets: Vec<String> = self.ordinal_cache.read().values().cloned().collect();
        assets.sort();
        assets
    }

    /// Raw bytes of an asset's annotations in id order, from after `after_id`, at most
    /// `max_bytes` (at least one annotation), with the annotation ids; `filter` decides on
    /// each parsed annotation.
    pub fn raw_annotations_page(
        &self,
        asset_id: &str,
        after_id: Option<&str>,
        max_bytes: usize,
        filter: &dyn Fn(&StoredAnnotation) -> bool,
    ) -> Result<(Vec<(String, Vec<u8>)>, bool), StoreError> {
        let prefix = record_key(RecordKind::Entry, &asset_prefix(asset_id));
        let start = match after_id {
            Some(id) => {
                let mut key = record_key(RecordKind::Entry, &annotation_key(asset_id, id));
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.records.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                return Ok((out, false));
            }
            if bytes >= max_bytes && !out.is_empty() {
                return Ok((out, true));
            }
            let record = EntryRecord::parse(&value)?;
            let annotation = record.annotation()?;
            if filter(&annotation) {
                bytes += record.raw.len();
                out.push((annotation.id.clone(), record.raw.to_vec()));
            }
        }
        Ok((out, false))
    }

    /// Normalized label → tracks it occurs on, for query understanding.
    pub fn vocabulary(&self) -> BTreeMap<String, Vec<String>> {
        self.vocab_cache.read().clone()
    }

    pub fn apply_asset(&self, asset_id: &str, record: &StoredAsset) -> Result<(), StoreError> {
        self.assets.insert(asset_id.as_bytes(), codec::encode(ASSET_FORMAT, record)?)?;
        self.ensure_ordinal(asset_id)?;
        Ok(())
    }

    /// Dense per-shard asset numbers for the index's fast fields. Assigned in log order, so
    /// every replica assigns the same ones.
    fn ensure_ordinal(&self, asset_id: &str) -> Result<u64, StoreError> {
        if let Some(ord) = self.asset_ordinals.get(asset_id.as_bytes())? {
            return be_u64(&ord);
        }
        let ordinal = self.ordinal_cache.read().len() as u64 + 1;
        // Both directions in one transaction: a crash between them would leave an ordinal
        // that a replay assigns a second time.
        (&self.ordinal_assets, &self.asset_ordinals)
            .transaction(|(by_ordinal, by_asset)| {
                by_ordinal.insert(&ordinal.to_be_bytes(), asset_id.as_bytes())?;
                by_asset.insert(asset_id.as_bytes(), &ordinal.to_be_bytes())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Io(e),
                sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt("ordinal transaction aborted".into()),
            })?;
        self.ordinal_cache.write().insert(ordinal, asset_id.to_string());
        Ok(ordinal)
    }

    pub fn asset_ordinal(&self, asset_id: &str) -> Result<Option<u64>, StoreError> {
        match self.asset_ordinals.get(asset_id.as_bytes())? {
            Some(bytes) => Ok(Some(be_u64(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn asset_of_ordinal(&self, ordinal: u64) -> Option<String> {
        self.ordinal_cache.read().get(&ordinal).cloned()
    }

    pub fn asset_record(&self, asset_id: &str) -> Result<Option<StoredAsset>, StoreError> {
        match self.assets.get(asset_id.as_bytes())? {
            Some(bytes) => Ok(Some(codec::decode(ASSET_FORMAT, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Every asset this shard knows (from annotations or records), with its ordinal.
    pub fn all_assets(&self) -> Vec<(u64, String)> {
        let mut all: Vec<(u64, String)> = self.ordinal_cache.read().iter().map(|(o, a)| (*o, a.clone())).collect();
        all.sort();
        all
    }

    /// Annotations of one asset, in id order (parsed form, without vectors).
    pub fn asset_annotations(&self, asset_id: &str) -> Result<Vec<StoredAnnotation>, StoreError> {
        let mut out = Vec::new();
        for item in self.records.scan_prefix(record_key(RecordKind::Entry, &asset_prefix(asset_id))) {
            let (_, value) = item?;
            out.push(EntryRecord::parse(&value)?.annotation()?);
        }
        Ok(out)
    }

    fn entry(&self, asset_id: &str, annotation_id: &str) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.records.get(record_key(RecordKind::Entry, &annotation_key(asset_id, annotation_id)))?)
    }

    pub fn annotation(&self, asset_id: &str, annotation_id: &str) -> Result<Option<StoredAnnotation>, StoreError> {
        self.entry(asset_id, annotation_id)?.map(|bytes| EntryRecord::parse(&bytes)?.annotation()).transpose()
    }

    /// The exact bytes the model sent.
    pub fn raw_annotation(&self, asset_id: &str, annotation_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.entry(asset_id, annotation_id)?.map(|bytes| Ok(EntryRecord::parse(&bytes)?.raw.to_vec())).transpose()
    }

    pub fn vector(&self, asset_id: &str, annotation_id: &str) -> Result<Option<Vec<f32>>, StoreError> {
        self.records
            .get(record_key(RecordKind::Vector, &annotation_key(asset_id, annotation_id)))?
            .map(|bytes| decode_vector(&bytes))
            .transpose()
    }

    /// Every stored vector of an asset with its annotation (for exact vector search).
    pub fn asset_vectors(&self, asset_id: &str) -> Result<Vec<(StoredAnnotation, Vec<f32>)>, StoreError> {
        let prefix = record_key(RecordKind::Vector, &asset_prefix(asset_id));
        let mut out = Vec::new();
        for item in self.records.scan_prefix(&prefix) {
            let (key, value) = item?;
            let annotation_id = String::from_utf8_lossy(&key[prefix.len()..]);
            // Written in the same batch as its entry; only a snapshot copy that the log's tail
            // has not yet been replayed on can hold a vector without its entry.
            if let Some(annotation) = self.annotation(asset_id, &annotation_id)? {
                out.push((annotation, decode_vector(&value)?));
            }
        }
        Ok(out)
    }

    /// Raw annotations of an asset counted per track.
    pub fn track_counts(&self, asset_id: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut counts = BTreeMap::new();
        for annotation in self.asset_annotations(asset_id)? {
            *counts.entry(annotation.track).or_insert(0) += 1;
        }
        Ok(counts)
    }

    pub fn raw_count(&self) -> usize {
        match self.records.get(RAW_COUNT_KEY) {
            Ok(Some(bytes)) => be_u64(&bytes).unwrap_or(0) as usize,
            _ => 0,
        }
    }

    /// Whether more than one version of `model` exists on `asset_id` (replacement in play).
    pub fn has_several_versions(&self, asset_id: &str, model: &str) -> Result<bool, StoreError> {
        let mut prefix = asset_prefix(asset_id);
        prefix.extend_from_slice(model.as_bytes());
        prefix.push(0);
        Ok(self.records.scan_prefix(record_key(RecordKind::ModelVersion, &prefix)).take(2).count() > 1)
    }

    /// Bucket `second` of an asset, as fusion defines it.
    pub fn bucket(&self, asset_id: &str, second: u64) -> Result<Option<Bucket>, StoreError> {
        let Some(bytes) = self.bucket_block_bytes(asset_id, second)? else { return Ok(None) };
        Ok(BucketBlockRef::decode(&bytes)?.bucket(second).map(|b| owned_bucket(&b)))
    }

    /// Whether bucket `second` of an asset holds an entry for which `test` is true.
    pub fn bucket_holds(&self, asset_id: &str, second: u64, test: impl Fn(&BucketEntryRef) -> bool) -> Result<bool, StoreError> {
        let Some(bytes) = self.bucket_block_bytes(asset_id, second)? else { return Ok(false) };
        Ok(BucketBlockRef::decode(&bytes)?.bucket(second).is_some_and(|b| b.entries.iter().any(test)))
    }

    /// The encoded block holding bucket `second`, for zero-copy decoding with
    /// [`BucketBlockRef`] on the query path.
    pub fn bucket_block_bytes(&self, asset_id: &str, second: u64) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.bucket_blocks.get(bucket_key(asset_id, block_of(second)))?)
    }

    /// Encoded blocks of an asset holding any bucket in `[from_bucket, to_bucket)`, with their
    /// block numbers.
    pub fn bucket_block_range_bytes(&self, asset_id: &str, from_bucket: u64, to_bucket: u64) -> Result<Vec<(u64, sled::IVec)>, StoreError> {
        if from_bucket >= to_bucket {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        let last_block = block_of(to_bucket - 1);
        let _consistent = self.buckets_lock.read();
        let range = bucket_key(asset_id, block_of(from_bucket))..=bucket_key(asset_id, last_block);
        for item in self.bucket_blocks.range(range) {
            let (key, value) = item?;
            out.push((split_bucket_key(&key)?.1, value));
        }
        Ok(out)
    }

    /// Buckets of an asset in `[from_bucket, to_bucket)`.
    pub fn bucket_range(&self, asset_id: &str, from_bucket: u64, to_bucket: u64) -> Result<Vec<(u64, Bucket)>, StoreError> {
        let mut out = Vec::new();
        for (block, bytes) in self.bucket_block_range_bytes(asset_id, from_bucket, to_bucket)? {
            let decoded = BucketBlockRef::decode(&bytes)?;
            out.extend(decoded.buckets(block, from_bucket, to_bucket).iter().map(|(second, b)| (*second, owned_bucket(b))));
        }
        Ok(out)
    }

    /// Writes fused blocks of one asset; an empty block is removed. The shard's bucket count
    /// changes in the same batch.
    pub fn write_bucket_blocks(&self, asset_id: &str, blocks: &BTreeMap<u64, BucketBlock>) -> Result<(), StoreError> {
        // Encoded before the lock, which range reads wait for.
        let mut encoded = Vec::with_capacity(blocks.len());
        for (number, block) in blocks {
            let value = if block.entries.is_empty() { None } else { Some(block.encode()?) };
            encoded.push((bucket_key(asset_id, *number), block.buckets_held, value));
        }
        let mut batch = sled::Batch::default();
        let _exclusive = self.buckets_lock.write();
        let mut count = self.stored_bucket_count()? as i64;
        for (key, buckets_held, value) in encoded {
            if let Some(old) = self.bucket_blocks.get(&key)? {
                // An unreadable block is replaced, not kept: fusion must not stop on it.
                count -= BucketBlockRef::decode(&old).map_or(0, |b| i64::from(b.buckets_held));
            }
            match value {
                None => batch.remove(key),
                Some(value) => {
                    count += i64::from(buckets_held);
                    batch.insert(key, value);
                }
            }
        }
        batch.insert(BUCKET_COUNT_KEY, &(count.max(0) as u64).to_be_bytes());
        self.bucket_blocks.apply_batch(batch)?;
        Ok(())
    }

    fn stored_bucket_count(&self) -> Result<u64, StoreError> {
        match self.bucket_blocks.get(BUCKET_COUNT_KEY)? {
            Some(bytes) => be_u64(&bytes),
            None => Ok(0),
        }
    }

    /// Counts the buckets the blocks hold again, when the count is missing but blocks exist: a
    /// crash while `clear_derived` emptied the tree (sled removes keys in order, the count,
    /// which sorts first, first).
    fn recount_buckets_if_missing(&self) -> Result<(), StoreError> {
        if self.bucket_blocks.get(BUCKET_COUNT_KEY)?.is_some() || self.bucket_blocks.is_empty() {
            return Ok(());
        }
        let _exclusive = self.buckets_lock.write();
        let mut count = 0u64;
        for value in self.bucket_blocks.iter().values() {
            count += BucketBlockRef::decode(&value?).map_or(0, |b| u64::from(b.buckets_held));
        }
        self.bucket_blocks.insert(BUCKET_COUNT_KEY, &count.to_be_bytes())?;
        Ok(())
    }

    /// Numbers of the blocks an asset currently has.
    pub fn bucket_blocks_of(&self, asset_id: &str) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for key in self.bucket_blocks.scan_prefix(asset_prefix(asset_id)).keys() {
            out.push(split_bucket_key(&key?)?.1);
        }
        Ok(out)
    }

    /// Buckets holding at least one entry, over the shard (0 if the count cannot be read).
    pub fn bucket_count(&self) -> usize {
        self.stored_bucket_count().unwrap_or(0) as usize
    }

    /// Assets whose buckets are still stored one per key, as versions before blocks wrote them
    /// (the tree `buckets`); [`ShardStore::drop_legacy_buckets`] ends that once they are fused
    /// again into blocks.
    pub fn assets_with_legacy_buckets(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = Vec::new();
        for key in self.legacy_buckets.iter().keys() {
            let (asset, _) = split_bucket_key(&key?)?;
            if out.last() != Some(&asset) {
                out.push(asset);
            }
        }
        Ok(out)
    }

    /// Stores the buckets one per key as versions before blocks did, and no block: a store of
    /// such a version, for the migration's tests.
    #[cfg(test)]
    pub(crate) fn store_buckets_as_legacy(&self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.bucket_blocks.iter() {
            let (key, value) = item?;
            if key.as_ref() == BUCKET_COUNT_KEY {
                continue;
            }
            let (asset, block) = split_bucket_key(&key)?;
            for (second, bucket) in BucketBlockRef::decode(&value)?.buckets(block, 0, u64::MAX) {
                let encoded = codec::encode(rushes_protocol::model::BUCKET_FORMAT, &owned_bucket(&bucket))?;
                batch.insert(bucket_key(&asset, second), encoded);
            }
        }
        self.legacy_buckets.apply_batch(batch)?;
        self.bucket_blocks.clear()?;
        Ok(())
    }

    pub fn drop_legacy_buckets(&self) -> Result<(), StoreError> {
        self.legacy_buckets.clear()?;
        Ok(())
    }

    /// Drops all derived state (buckets, vector key map, watermarks of derived stages).
    pub fn clear_derived(&self) -> Result<(), StoreError> {
        {
            let _exclusive = self.buckets_lock.write();
            self.bucket_blocks.clear()?;
            self.legacy_buckets.clear()?;
        }
        self.vector_keys.clear()?;
        self.set_watermark(Watermark::Fused, 0)?;
        self.set_watermark(Watermark::Indexed, 0)?;
        Ok(())
    }

    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The replicated part of the store, as (tree name, tree) pairs: everything that applying
    /// the log produces. Buckets, the vector key map and watermarks are derived locally.
    fn raw_trees(&self) -> [(&'static str, &sled::Tree); 5] {
        [
            ("records", &self.records),
            ("assets", &self.assets),
            ("asset_ordinals", &self.asset_ordinals),
            ("ordinal_assets", &self.ordinal_assets),
            ("vocab", &self.vocab),
        ]
    }

    /// Up to about `max_bytes` of the raw store in key order, after `after` (a key of a
    /// previous chunk; `None` starts at the beginning). Keys are the raw tree's position in
    /// [`ShardStore::raw_trees`] followed by the tree's key.
    ///
    /// Chunks are read from the live store while the log keeps applying, so a sequence of
    /// them is not a point-in-time copy: it holds every entry applied before the first chunk
    /// and some applied later. [`ShardStore::install_staged`] makes such a copy safe to
    /// replay on: every key is read atomically with respect to an apply batch (sled's
    /// batches exclude readers) and later keys are read later, so an annotation's entry record
    /// (`e`) present means its vector record (`v`, later in key order) is too; the counter
    /// and the asset → ordinal map, which can be read before a write the rest reflects, are
    /// recomputed from the records and from ordinal → asset.
    pub fn raw_chunk(&self, after: Option<&[u8]>, max_bytes: usize) -> Result<RawChunk, StoreError> {
        let trees = self.raw_trees();
        let (first_tree, after_key) = match after {
            None => (0, None),
            Some(cursor) => {
                let (&position, key) = cursor.split_first().ok_or_else(|| StoreError::Corrupt("empty snapshot cursor".into()))?;
                if position as usize >= trees.len() {
                    return Err(StoreError::Corrupt(format!("snapshot cursor names raw tree {position} of {}", trees.len())));
                }
                (position as usize, Some(key.to_vec()))
            }
        };
        let mut pairs = Vec::new();
        let mut bytes = 0usize;
        for (position, (_, tree)) in trees.iter().enumerate().skip(first_tree) {
            let iter = match (&after_key, position == first_tree) {
                (Some(key), true) => tree.range::<&[u8], _>((std::ops::Bound::Excluded(key.as_slice()), std::ops::Bound::Unbounded)),
                _ => tree.iter(),
            };
            for item in iter {
                let (key, value) = item?;
                let mut staged_key = Vec::with_capacity(key.len() + 1);
                staged_key.push(position as u8);
                staged_key.extend_from_slice(&key);
                bytes += staged_key.len() + value.len();
                pairs.push((staged_key, value.to_vec()));
                if bytes >= max_bytes {
                    return Ok(RawChunk { pairs, done: false });
                }
            }
        }
        Ok(RawChunk { pairs, done: true })
    }

    /// Empties the staging area before a new snapshot is fetched into it; returns the
    /// generation to pass to [`ShardStore::stage_chunk`] and [`ShardStore::finish_staging`].
    /// Callers serialize staging calls (`Shard::with_staging`).
    pub fn begin_staging(&self) -> Result<u64, StoreError> {
        let generation = self.staging_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        self.state.remove(STAGED_SNAPSHOT_KEY)?;
        self.snapshot_staging.clear()?;
        Ok(generation)
    }

    fn check_staging_generation(&self, generation: u64) -> Result<(), StoreError> {
        if self.staging_generation.load(std::sync::atomic::Ordering::Acquire) == generation {
            Ok(())
        } else {
            Err(StoreError::StagingReplaced)
        }
    }

    /// Adds a chunk from [`ShardStore::raw_chunk`] to the staging area begun as `generation`.
    pub fn stage_chunk(&self, generation: u64, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        self.check_staging_generation(generation)?;
        let trees = self.raw_trees().len();
        let mut batch = sled::Batch::default();
        for (key, value) in pairs {
            if key.first().is_none_or(|&position| position as usize >= trees) {
                return Err(StoreError::Corrupt("snapshot chunk key names no raw tree".into()));
            }
            batch.insert(key.as_slice(), value.as_slice());
        }
        self.snapshot_staging.apply_batch(batch)?;
        Ok(())
    }

    /// Marks the staging area complete: it holds every entry through `state_at` (the source's
    /// applied index when the first chunk was read). Durable before it returns.
    pub fn finish_staging(&self, generation: u64, state_at: u64) -> Result<(), StoreError> {
        self.check_staging_generation(generation)?;
        self.state.insert(STAGED_SNAPSHOT_KEY, &state_at.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Held by a derivation stage (fusion, indexing) for one batch or one asset of a full
    /// rebuild: a snapshot install waits for it, and it waits for an install. Take it once per
    /// thread, never nested (a waiting install blocks new readers).
    pub fn derivation_guard(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.install_lock.read()
    }

    /// The index a complete staged snapshot holds every entry through, if there is one.
    pub fn staged_snapshot(&self) -> Result<Option<u64>, StoreError> {
        self.state.get(STAGED_SNAPSHOT_KEY)?.map(|bytes| be_u64(&bytes)).transpose()
    }

    /// Replaces the raw store with the staged snapshot, which must hold every entry through
    /// `index`, and reloads the caches. Derived state is left for the stages to rebuild. Safe
    /// to repeat after a crash: the staging area stays until [`ShardStore::clear_staging`].
    pub fn install_staged(&self, index: u64) -> Result<(), StoreError> {
        let _exclusive = self.install_lock.write();
        match self.staged_snapshot()? {
            Some(state_at) if state_at >= index => {}
            staged => {
                return Err(StoreError::Corrupt(format!(
                    "the snapshot at {index} is not staged (staged: {staged:?}); the leader sends it again"
                )))
            }
        }
        let trees = self.raw_trees();
        for (_, tree) in &trees {
            tree.clear()?;
        }
        let mut batch = sled::Batch::default();
        let mut batch_bytes = 0usize;
        let mut batch_tree = 0usize;
        for item in self.snapshot_staging.iter() {
            let (key, value) = item?;
            let (&position, tree_key) = key.split_first().ok_or_else(|| StoreError::Corrupt("empty staged key".into()))?;
            let position = position as usize;
            if position >= trees.len() {
                return Err(StoreError::Corrupt(format!("staged key names raw tree {position}")));
            }
            if position != batch_tree || batch_bytes >= INSTALL_BATCH_BYTES {
                trees[batch_tree].1.apply_batch(std::mem::take(&mut batch))?;
                batch_bytes = 0;
                batch_tree = position;
            }
            batch_bytes += key.len() + value.len();
            batch.insert(tree_key, value);
        }
        trees[batch_tree].1.apply_batch(batch)?;
        // asset → ordinal may have been read before an assignment that ordinal → asset holds.
        self.asset_ordinals.clear()?;
        let mut by_asset = sled::Batch::default();
        for item in self.ordinal_assets.iter() {
            let (ordinal, asset) = item?;
            by_asset.insert(asset, ordinal);
        }
        self.asset_ordinals.apply_batch(by_asset)?;
        // The counter may have been read before annotations that the records hold.
        // A snapshot from a version before entry records holds legacy records.
        self.migrate_legacy_records()?;
        let annotations = self.records.scan_prefix([RecordKind::Entry as u8]).keys().count() as u64;
        // Written as applying the log writes it: a shard that never held an annotation has no
        // counter, and the digest (which covers the records) must equal that replica's.
        if annotations > 0 || self.records.contains_key(RAW_COUNT_KEY)? {
            self.records.insert(RAW_COUNT_KEY, &annotations.to_be_bytes())?;
        }
        // So may the label counts.
        self.rebuild_label_counts()?;
        self.reload_caches()?;
        self.db.flush()?;
        Ok(())
    }

    /// Rewrites the records of versions before entry records (raw and parsed apart) as entry
    /// records; vector records already have their current key and encoding. Each batch converts whole annotations atomically, so a crash midway
    /// leaves every annotation in one form or the other and the next open finishes the job;
    /// replicas that held the same legacy records hold the same entry records afterwards.
    /// Returns the number of annotations converted.
    pub fn migrate_legacy_records(&self) -> Result<usize, StoreError> {
        let legacy_annotation = [RecordKind::LegacyAnnotation as u8];
        let (mut converted, mut incomplete) = (0, 0);
        // Parsed records without a raw one are left in place and passed over: only a crash in
        // the middle of installing an earlier version's snapshot leaves them, and the install
        // is repeated when the shard opens (it empties the trees first).
        let mut after: Option<sled::IVec> = None;
        loop {
            let range = match &after {
                Some(key) => self.records.range::<&[u8], _>((std::ops::Bound::Excluded(key.as_ref()), std::ops::Bound::Unbounded)),
                None => self.records.range::<&[u8], _>(legacy_annotation.as_slice()..),
            };
            let mut batch = sled::Batch::default();
            let mut visited = 0;
            for item in range.take(MIGRATION_BATCH_ANNOTATIONS) {
                let (full_key, annotation) = item?;
                if !full_key.starts_with(&legacy_annotation) {
                    break;
                }
                visited += 1;
                let key = &full_key[1..];
                match self.records.get(record_key(RecordKind::LegacyRaw, key))? {
                    Some(raw) => {
                        batch.insert(record_key(RecordKind::Entry, key), EntryRecord::join(&annotation, &raw));
                        for legacy in [RecordKind::LegacyAnnotation, RecordKind::LegacyRaw] {
                            batch.remove(record_key(legacy, key));
                        }
                        converted += 1;
                    }
                    None => incomplete += 1,
                }
                after = Some(full_key);
            }
            if visited == 0 {
                break;
            }
            self.records.apply_batch(batch)?;
        }
        if incomplete > 0 {
            tracing::warn!(incomplete, "legacy annotations without their raw record left for the interrupted snapshot install to redo");
        }
        // Raw records without a parsed one: a legacy snapshot copied from a live store can
        // read them without the parsed record written in the same batch (it sorts first). The
        // log's tail that the install replays writes those annotations again. (Vector records
        // keep their key and bytes; one read without its annotation is rewritten identically.)
        let mut orphans = 0;
        let mut batch = sled::Batch::default();
        for key in self.records.scan_prefix([RecordKind::LegacyRaw as u8]).keys() {
            batch.remove(key?);
            orphans += 1;
        }
        if orphans > 0 {
            self.records.apply_batch(batch)?;
        }
        if converted > 0 || orphans > 0 {
            self.db.flush()?;
            tracing::info!(annotations = converted, orphans, "raw store converted to entry records");
        }
        Ok(converted)
    }

    /// Drops the staging area once the installed snapshot's applied index is durable.
    pub fn clear_staging(&self) -> Result<(), StoreError> {
        if self.state.contains_key(STAGED_SNAPSHOT_KEY)? || !self.snapshot_staging.is_empty() {
            self.begin_staging()?;
        }
        Ok(())
    }

    /// Replaces the raw store with a format-1 snapshot (the whole store in the Raft message,
    /// as stored by earlier versions), so a data dir whose last snapshot is one still opens.
    pub fn import_legacy_snapshot(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let _exclusive = self.install_lock.write();
        let snapshot: LegacyRawSnapshot = codec::decode(LEGACY_RAW_SNAPSHOT_FORMAT, bytes)?;
        let trees = self.raw_trees();
        for (name, pairs) in &snapshot.trees {
            let (_, tree) = trees
                .iter()
                .find(|(known, _)| known == name)
                .ok_or_else(|| StoreError::Corrupt(format!("snapshot holds an unknown tree {name:?}")))?;
            tree.clear()?;
            let mut batch = sled::Batch::default();
            for (key, value) in pairs {
                batch.insert(key.as_slice(), value.as_slice());
            }
            tree.apply_batch(batch)?;
        }
        self.migrate_legacy_records()?;
        self.reload_caches()?;
        self.db.flush()?;
        Ok(())
    }

    /// A hash over the raw store: equal on replicas that applied the same log (checked by the
    /// fault-injection suite). Reads every raw record: for operators and tests, not hot paths.
    pub fn raw_digest(&self) -> Result<String, StoreError> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (name, tree) in self.raw_trees() {
            hasher.update(name.as_bytes());
            for item in tree.iter() {
                let (key, value) = item?;
                hasher.update(&(key.len() as u64).to_be_bytes());
                hasher.update(&key);
                hasher.update(&(value.len() as u64).to_be_bytes());
                hasher.update(&value);
            }
        }
        Ok(format!("{:032x}", hasher.digest128()))
    }
}

/// Format of a snapshot's data written before snapshots were fetched in chunks: every raw
/// tree's pairs, by tree name, in the Raft message itself. Read, never written.
pub const LEGACY_RAW_SNAPSHOT_FORMAT: u8 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct LegacyRawSnapshot {
    trees: Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>,
}

/// `state` key: the index a complete staged snapshot holds every entry through.
const STAGED_SNAPSHOT_KEY: &[u8] = b"staged_snapshot";
/// Records copied per batch when a staged snapshot is installed (bounds the batch's memory).
const INSTALL_BATCH_BYTES: usize = 8 * 1024 * 1024;

fn be_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt(format!("expected 8 bytes, found {}", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

fn encode_vector(vector: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + vector.len() * 4);
    out.push(VECTOR_FORMAT);
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn decode_vector(bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    let (&version, body) = bytes.split_first().ok_or_else(|| StoreError::Corrupt("empty vector".into()))?;
    if version != VECTOR_FORMAT || body.len() % 4 != 0 {
        return Err(StoreError::Corrupt(format!("vector format {version}, {} bytes", body.len())));
    }
    Ok(body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::blocks::{block_buckets, BlockEntry, BLOCK_BUCKETS};

    pub(crate) fn item(id: &str, asset: &str, start_ms: u64, end_ms: u64, label: &str) -> IngestItem {
        let annotation = StoredAnnotation {
            id: id.into(),
            asset_id: asset.into(),
            model: "faces".into(),
            model_version: "1".into(),
            track: "character".into(),
            start_ms,
            end_ms,
            confidence: 0.9,
            label: Some(label.into()),
            text: None,
            language: None,
            vector_space: None,
        };
        // The raw bytes carry the content, as they do from a real client.
        IngestItem { raw_json: serde_json::to_vec(&annotation).unwrap(), annotation, vector: None }
    }

    #[test]
    fn ingest_is_idempotent_and_conflicts_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let batch = vec![item("a", "e1", 0, 1000, "Joey"), item("b", "e1", 500, 2000, "Monica")];
        assert_eq!(store.apply_ingest(&batch).unwrap(), ApplyOutcome::Applied { created: 2, duplicates: 0 });
        assert_eq!(store.apply_ingest(&batch).unwrap(), ApplyOutcome::Applied { created: 0, duplicates: 2 });
        let conflicting = vec![item("c", "e1", 0, 10, "Ross"), item("a", "e1", 0, 1000, "Rachel")];
        assert_eq!(store.apply_ingest(&conflicting).unwrap(), ApplyOutcome::Conflict { item: 1, annotation_id: "a".into() });
        assert!(store.annotation("e1", "c").unwrap().is_none(), "nothing of a conflicting batch is stored");
        assert_eq!(store.raw_annotation("e1", "a").unwrap().unwrap(), batch[0].raw_json);
        assert_eq!(store.track_counts("e1").unwrap().get("character"), Some(&2));
        assert_eq!(store.vocabulary().get("joey"), Some(&vec!["character".to_string()]));
        assert_eq!(store.asset_ordinal("e1").unwrap(), Some(1));
    }

    /// Copies `source` into `replica`'s staging area in chunks of about `chunk_bytes`, calling
    /// `between(cursor)` before each chunk after the first (to write to the source mid-copy).
    /// Returns the number of chunks and the staging generation.
    fn stage_from(source: &ShardStore, replica: &ShardStore, chunk_bytes: usize, mut between: impl FnMut(&[u8])) -> (usize, u64) {
        let generation = replica.begin_staging().unwrap();
        let mut cursor: Option<Vec<u8>> = None;
        let mut chunks = 0;
        loop {
            if let Some(cursor) = &cursor {
                between(cursor);
            }
            let chunk = source.raw_chunk(cursor.as_deref(), chunk_bytes).unwrap();
            chunks += 1;
            replica.stage_chunk(generation, &chunk.pairs).unwrap();
            if chunk.done {
                return (chunks, generation);
            }
            cursor = chunk.pairs.last().map(|(key, _)| key.clone());
        }
    }

    #[test]
    fn a_staged_snapshot_installs_as_the_source_and_replaying_its_tail_changes_nothing() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, replica) = (ShardStore::open(dir_a.path()).unwrap(), ShardStore::open(dir_b.path()).unwrap());
        let first = vec![item("a", "e1", 0, 1000, "Joey"), item("b", "e2", 500, 2000, "Monica")];
        let tail = vec![item("c", "e3", 0, 10, "Ross")];
        source.apply_ingest(&first).unwrap();
        source.apply_asset("e2", &StoredAsset { title: Some("Two".into()), ..Default::default() }).unwrap();
        source.apply_ingest(&tail).unwrap();
        // The replica had applied a prefix and derived state of its own; the snapshot replaces
        // the raw part.
        replica.apply_ingest(&first).unwrap();
        replica.write_bucket_blocks("e1", &BTreeMap::new()).unwrap();
        assert_ne!(replica.raw_digest().unwrap(), source.raw_digest().unwrap());
        let (chunks, generation) = stage_from(&source, &replica, 64, |_| {});
        assert!(chunks > 3, "small chunks: {chunks}");
        assert!(matches!(replica.install_staged(10), Err(StoreError::Corrupt(_))), "not staged yet");
        replica.finish_staging(generation, 9).unwrap();
        assert_eq!(replica.staged_snapshot().unwrap(), Some(9));
        assert!(matches!(replica.install_staged(10), Err(StoreError::Corrupt(_))), "staged state is older than the snapshot");
        replica.install_staged(9).unwrap();
        assert_eq!(replica.raw_digest().unwrap(), source.raw_digest().unwrap());
        assert_eq!(replica.all_assets(), source.all_assets());
        assert_eq!(replica.vocabulary(), source.vocabulary());
        assert_eq!(replica.raw_count(), 3);
        assert_eq!(replica.asset_record("e2").unwrap().and_then(|r| r.title), Some("Two".to_string()));
        // A snapshot taken past its index: replaying the entries in between is a no-op.
        assert_eq!(replica.apply_ingest(&tail).unwrap(), ApplyOutcome::Applied { created: 0, duplicates: 1 });
        assert_eq!(replica.raw_digest().unwrap(), source.raw_digest().unwrap());
        // Installing again (a crash before the applied index was durable) gives the same store.
        replica.install_staged(9).unwrap();
        assert_eq!(replica.raw_digest().unwrap(), source.raw_digest().unwrap());
        replica.clear_staging().unwrap();
        assert_eq!(replica.staged_snapshot().unwrap(), None);
        // A data dir whose last snapshot was stored whole by an earlier version still opens.
        let legacy_dir = tempfile::tempdir().unwrap();
        let legacy = ShardStore::open(legacy_dir.path()).unwrap();
        let trees = source
            .raw_trees()
            .iter()
            .map(|(name, tree)| {
                (name.to_string(), tree.iter().map(|p| p.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<Result<Vec<_>, _>>().unwrap())
            })
            .collect();
        legacy.import_legacy_snapshot(&codec::encode(LEGACY_RAW_SNAPSHOT_FORMAT, &LegacyRawSnapshot { trees }).unwrap()).unwrap();
        assert_eq!(legacy.raw_digest().unwrap(), source.raw_digest().unwrap());
        assert_eq!(legacy.all_assets(), source.all_assets());
        assert!(matches!(legacy.import_legacy_snapshot(b"not a snapshot"), Err(StoreError::Codec(_))));
        assert!(matches!(replica.raw_chunk(Some(&[9, b'x']), 64), Err(StoreError::Corrupt(_))));
        let generation = replica.begin_staging().unwrap();
        assert!(matches!(replica.stage_chunk(generation, &[(vec![9], vec![])]), Err(StoreError::Corrupt(_))));
    }

    /// Rewrites `store`'s entry records in the layout of versions before them (raw and parsed
    /// records apart), as such a version would have written them.
    fn to_legacy_records(store: &ShardStore) {
        let mut batch = sled::Batch::default();
        for pair in store.records.scan_prefix([RecordKind::Entry as u8]) {
            let (key, value) = pair.unwrap();
            let entry = EntryRecord::parse(&value).unwrap();
            batch.insert(record_key(RecordKind::LegacyAnnotation, &key[1..]), entry.annotation);
            batch.insert(record_key(RecordKind::LegacyRaw, &key[1..]), entry.raw);
            batch.remove(key);
        }
        store.records.apply_batch(batch).unwrap();
    }

    fn with_vector(mut item: IngestItem, vector: Vec<f32>) -> IngestItem {
        item.annotation.vector_space = Some("scenes".into());
        item.vector = Some(vector);
        item
    }

    #[test]
    fn entry_records_keep_every_part_and_refuse_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let scene = with_vector(item("s", "e1", 0, 4000, "kitchen"), vec![0.25, -1.0, 3.5]);
        store.apply_ingest(&[scene.clone(), item("a", "e1", 0, 1000, "Joey")]).unwrap();
        assert_eq!(store.annotation("e1", "s").unwrap().as_ref(), Some(&scene.annotation));
        assert_eq!(store.raw_annotation("e1", "s").unwrap(), Some(scene.raw_json.clone()));
        assert_eq!(store.vector("e1", "s").unwrap(), Some(vec![0.25, -1.0, 3.5]));
        assert_eq!(store.vector("e1", "a").unwrap(), None);
        assert_eq!(store.asset_vectors("e1").unwrap(), vec![(scene.annotation.clone(), vec![0.25, -1.0, 3.5])]);
        assert_eq!(store.asset_annotations("e1").unwrap().len(), 2);
        let encoded = EntryRecord::encode(&scene.annotation, &scene.raw_json).unwrap();
        for cut in [0, 1, 4, 6, 5 + 4 + 3, encoded.len() - 1] {
            assert!(matches!(EntryRecord::parse(&encoded[..cut]), Err(StoreError::Corrupt(_))), "cut at {cut}");
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(matches!(EntryRecord::parse(&longer), Err(StoreError::Corrupt(_))), "trailing bytes");
        let mut other_format = encoded.clone();
        other_format[0] = ENTRY_FORMAT + 1;
        assert!(matches!(EntryRecord::parse(&other_format), Err(StoreError::Corrupt(_))));
    }

    /// A data dir written before entry records opens as the same store: every annotation is
    /// converted, nothing else changes, and a replica converted this way equals one that
    /// applied the same log as entry records.
    #[test]
    fn legacy_records_are_converted_on_open_and_in_a_legacy_snapshot() {
        let (current_dir, legacy_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let current = ShardStore::open(current_dir.path()).unwrap();
        let mut batch: Vec<IngestItem> = (0..(MIGRATION_BATCH_ANNOTATIONS + 5))
            .map(|i| item(&format!("a{i:05}"), &format!("e{}", i % 3), i as u64 * 10, i as u64 * 10 + 500, ["Joey", "Ross"][i % 2]))
            .collect();
        batch[7] = with_vector(batch[7].clone(), vec![1.0, 2.0]);
        current.apply_ingest(&batch).unwrap();
        {
            let legacy = ShardStore::open(legacy_dir.path()).unwrap();
            legacy.apply_ingest(&batch).unwrap();
            to_legacy_records(&legacy);
            // A raw record whose parsed record a live snapshot copy missed.
            legacy.records.insert(record_key(RecordKind::LegacyRaw, &annotation_key("e9", "late")), b"{}".as_slice()).unwrap();
            assert_ne!(legacy.raw_digest().unwrap(), current.raw_digest().unwrap());
            legacy.flush().unwrap();
        }
        let reopened = ShardStore::open(legacy_dir.path()).unwrap();
        assert_eq!(reopened.raw_digest().unwrap(), current.raw_digest().unwrap());
        assert_eq!(reopened.raw_count(), batch.len());
        assert_eq!(reopened.vector("e1", "a00007").unwrap(), Some(vec![1.0, 2.0]));
        assert_eq!(reopened.raw_annotation("e2", "a00002").unwrap(), Some(batch[2].raw_json.clone()));
        assert_eq!(reopened.migrate_legacy_records().unwrap(), 0, "nothing is left to convert");
        // The same store as a snapshot of an earlier version, copied while it applied: staged
        // chunks of legacy records, with a raw record whose parsed one was missed.
        to_legacy_records(&reopened);
        reopened.records.insert(record_key(RecordKind::LegacyRaw, &annotation_key("e9", "late")), b"{}".as_slice()).unwrap();
        let replica_dir = tempfile::tempdir().unwrap();
        let replica = ShardStore::open(replica_dir.path()).unwrap();
        let (_, generation) = stage_from(&reopened, &replica, 4096, |_| {});
        replica.finish_staging(generation, 1).unwrap();
        replica.install_staged(1).unwrap();
        assert_eq!(replica.raw_digest().unwrap(), current.raw_digest().unwrap());
        assert_eq!(replica.raw_count(), batch.len());
        assert_eq!(replica.apply_ingest(&batch).unwrap(), ApplyOutcome::Applied { created: 0, duplicates: batch.len() });
    }

    /// A crash in the middle of installing an earlier version's snapshot leaves parsed records
    /// whose raw record was not copied yet: the store still opens (the install is repeated
    /// then), converting every complete annotation and leaving the others in place.
    #[test]
    fn legacy_annotations_without_their_raw_record_do_not_stop_the_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let batch: Vec<IngestItem> = (0..5).map(|i| item(&format!("a{i}"), "e1", i * 10, i * 10 + 5, "Joey")).collect();
        {
            let store = ShardStore::open(dir.path()).unwrap();
            store.apply_ingest(&batch).unwrap();
            to_legacy_records(&store);
            for missing in ["a1", "a3"] {
                store.records.remove(record_key(RecordKind::LegacyRaw, &annotation_key("e1", missing))).unwrap();
            }
            store.flush().unwrap();
        }
        let reopened = ShardStore::open(dir.path()).unwrap();
        let converted: Vec<String> = reopened.asset_annotations("e1").unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(converted, ["a0", "a2", "a4"]);
        let left = reopened.records.scan_prefix([RecordKind::LegacyAnnotation as u8]).count();
        assert_eq!(left, 2, "incomplete annotations stay for the repeated install");
        assert_eq!(reopened.migrate_legacy_records().unwrap(), 0, "and are passed over again, without looping");
    }

    /// The staging area emptied in the middle of a fetch (the install of an earlier snapshot
    /// finishing, as once seen under the cluster bench): the fetch's later chunks are refused
    /// and it can never mark the remains complete, so they are never installed.
    #[test]
    fn a_fetch_whose_staging_area_was_emptied_midway_cannot_finish() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, replica) = (ShardStore::open(dir_a.path()).unwrap(), ShardStore::open(dir_b.path()).unwrap());
        source.apply_ingest(&[item("a", "e1", 0, 1000, "Joey"), item("b", "e2", 500, 2000, "Monica")]).unwrap();
        let generation = replica.begin_staging().unwrap();
        let first = source.raw_chunk(None, 64).unwrap();
        assert!(!first.done);
        replica.stage_chunk(generation, &first.pairs).unwrap();
        replica.clear_staging().unwrap();
        let second = source.raw_chunk(first.pairs.last().map(|(key, _)| key.as_slice()), 1 << 20).unwrap();
        assert!(matches!(replica.stage_chunk(generation, &second.pairs), Err(StoreError::StagingReplaced)));
        assert!(matches!(replica.finish_staging(generation, 5), Err(StoreError::StagingReplaced)));
        assert_eq!(replica.staged_snapshot().unwrap(), None);
        assert!(matches!(replica.install_staged(5), Err(StoreError::Corrupt(_))), "nothing is staged to install");
        // A new fetch starts over and completes.
        let (_, generation) = stage_from(&source, &replica, 64, |_| {});
        replica.finish_staging(generation, 5).unwrap();
        replica.install_staged(5).unwrap();
        assert_eq!(replica.raw_digest().unwrap(), source.raw_digest().unwrap());
    }

    /// An install empties and refills the raw trees; a derivation stage in the middle of a batch
    /// must not see that, so the install waits for the batch, and the next batch waits for the
    /// install.
    #[test]
    fn an_install_waits_for_a_derivation_batch_in_progress() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, replica) = (ShardStore::open(dir_a.path()).unwrap(), ShardStore::open(dir_b.path()).unwrap());
        source.apply_ingest(&[item("a", "e1", 0, 1000, "Joey"), item("b", "e2", 500, 2000, "Monica")]).unwrap();
        let (_, generation) = stage_from(&source, &replica, 64, |_| {});
        replica.finish_staging(generation, 5).unwrap();
        let replica = std::sync::Arc::new(replica);
        let batch = replica.derivation_guard();
        let (installed_tx, installed_rx) = std::sync::mpsc::channel();
        let installer = {
            let replica = replica.clone();
            std::thread::spawn(move || {
                let result = replica.install_staged(5);
                let _ = installed_tx.send(result.is_ok());
            })
        };
        // While the batch holds the guard the install cannot have happened.
        assert!(installed_rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "the install ran during a batch");
        assert_eq!(replica.raw_count(), 0, "the raw store is untouched while the batch runs");
        drop(batch);
        assert_eq!(installed_rx.recv_timeout(std::time::Duration::from_secs(30)), Ok(true), "the install ran after the batch");
        installer.join().unwrap();
        let _next_batch = replica.derivation_guard();
        assert_eq!(replica.raw_digest().unwrap(), source.raw_digest().unwrap());
    }

    /// Chunks read while the source keeps applying: the writes land in every position of the
    /// copy (between the records and the asset trees, between the two ordinal maps), and after
    /// the install, replaying those writes gives exactly the source.
    #[test]
    fn a_snapshot_copied_while_the_source_applies_converges_after_replay() {
        let base = vec![item("a", "e1", 0, 1000, "Joey"), item("b", "e2", 500, 2000, "Monica"), item("c", "e5", 0, 10, "Ross")];
        // Sorts before the base assets: its ordinal map keys land behind a cursor in them.
        let late = vec![item("d", "a0", 0, 10, "Phoebe"), item("e", "e1", 10, 20, "Chandler")];
        let upsert = StoredAsset { title: Some("Late title".into()), ..Default::default() };
        // Tree 4 (`vocab`) stays empty since label counts moved into the records tree: only an
        // earlier version's snapshot fills it, and its install rebuilds the counts.
        for write_at_tree in 0..4u8 {
            let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (source, replica) = (ShardStore::open(dir_a.path()).unwrap(), ShardStore::open(dir_b.path()).unwrap());
            source.apply_ingest(&base).unwrap();
            let mut written = false;
            let staged = stage_from(&source, &replica, 1, |cursor| {
                if !written && cursor[0] >= write_at_tree && cursor.len() > 1 {
                    source.apply_ingest(&late).unwrap();
                    source.apply_asset("e2", &upsert).unwrap();
                    written = true;
                }
            });
            assert!(written, "the writes landed mid-copy (tree {write_at_tree})");
            replica.finish_staging(staged.1, 1).unwrap();
            replica.install_staged(1).unwrap();
            replica.apply_ingest(&late).unwrap();
            replica.apply_asset("e2", &upsert).unwrap();
            assert_eq!(replica.raw_digest().unwrap(), source.raw_digest().unwrap(), "writes at tree {write_at_tree}");
            assert_eq!(replica.raw_count(), source.raw_count());
            assert_eq!(replica.all_assets(), source.all_assets());
            assert_eq!(replica.asset_ordinal("a0").unwrap(), source.asset_ordinal("a0").unwrap());
        }
    }

    /// A read of an asset's buckets never mixes two fused writes: every bucket it returns is
    /// from the same write (a model version replacing another rewrote all of them at once).
    #[test]
    fn a_bucket_range_read_sees_one_fused_write_whole() {
        use std::collections::BTreeSet;
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let version = |v: u64| -> BTreeMap<u64, BucketBlock> {
            (0..400u64 / BLOCK_BUCKETS)
                .map(|block| {
                    let (first, end) = block_buckets(block);
                    let entries =
                        (first..end).map(|second| block_entry(&format!("m{v}-{second}"), &format!("Version {v}"), second)).collect();
                    (block, BucketBlock::new(block, 1000, entries))
                })
                .collect()
        };
        store.write_bucket_blocks("ver-0", &version(0)).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for v in 1..=300 {
                    store.write_bucket_blocks("ver-0", &version(v)).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                let buckets = store.bucket_range("ver-0", 0, u64::MAX).unwrap();
                assert_eq!(buckets.len(), 400);
                let labels: BTreeSet<Option<String>> = buckets.into_iter().map(|(_, b)| b.entries[0].label.clone()).collect();
                assert_eq!(labels.len(), 1, "read {reads} mixed fused writes: {labels:?}");
                reads += 1;
            }
        });
        assert_eq!(store.bucket_count(), 400, "rewrites leave the count as it was");
    }

    /// An entry covering exactly bucket `second` at 1,000 ms.
    fn block_entry(id: &str, label: &str, second: u64) -> BlockEntry {
        BlockEntry {
            annotation_id: id.into(),
            track: "object".into(),
            model: "m".into(),
            label: Some(label.into()),
            text: None,
            language: None,
            vector_space: None,
            confidence: 1.0,
            start_ms: second * 1000,
            end_ms: second * 1000 + 1000,
        }
    }

    /// A shard that holds asset records but never an annotation: a replica installing its
    /// snapshot must digest as the source does (it used to gain a zero `#raw_count`).
    #[test]
    fn a_snapshot_of_a_shard_without_annotations_digests_as_its_source() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, replica) = (ShardStore::open(dir_a.path()).unwrap(), ShardStore::open(dir_b.path()).unwrap());
        source.apply_asset("reg-1", &StoredAsset { title: Some("value 7".into()), ..Default::default() }).unwrap();
        let staged = stage_from(&source, &replica, 1, |_| {});
        replica.finish_staging(staged.1, 1).unwrap();
        replica.install_staged(1).unwrap();
        assert_eq!(replica.raw_digest().unwrap(), source.raw_digest().unwrap());
        assert_eq!(replica.raw_count(), 0);
    }

    #[test]
    fn replicas_assign_the_same_ordinals_to_the_new_assets_of_a_batch() {
        let batch: Vec<IngestItem> = (0..12).map(|n| item(&format!("x{n}"), &format!("asset-{}", (n * 7) % 12), 0, 10, "Joey")).collect();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (one, two) = (ShardStore::open(dir_a.path()).unwrap(), ShardStore::open(dir_b.path()).unwrap());
        one.apply_ingest(&batch).unwrap();
        two.apply_ingest(&batch).unwrap();
        assert_eq!(one.all_assets(), two.all_assets());
        assert_eq!(one.asset_ordinal("asset-0").unwrap(), Some(1), "first appearance first");
        assert_eq!(one.raw_digest().unwrap(), two.raw_digest().unwrap());
    }

    #[test]
    fn a_bucket_count_lost_mid_clear_is_counted_again_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ShardStore::open(dir.path()).unwrap();
            let entries = (0..40).map(|second| block_entry(&format!("x{second}"), "cup", second)).collect::<Vec<_>>();
            let blocks = (0..3).map(|n| (n, BucketBlock::new(n, 1000, entries.clone()))).collect();
            store.write_bucket_blocks("a", &blocks).unwrap();
            assert_eq!(store.bucket_count(), 40);
            // `clear` removes keys in order: a crash after the count, before the blocks.
            store.bucket_blocks.remove(BUCKET_COUNT_KEY).unwrap();
            assert_eq!(store.bucket_count(), 0);
            store.flush().unwrap();
        }
        let store = ShardStore::open(dir.path()).unwrap();
        assert_eq!(store.bucket_count(), 40);
        store.clear_derived().unwrap();
        drop(store);
        assert_eq!(ShardStore::open(dir.path()).unwrap().bucket_count(), 0, "an empty tree needs no count");
    }

    #[test]
    fn bucket_keys_round_trip_and_ranges_stay_within_asset() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        let seconds = [0u64, 1, 255, 256, 70_000];
        let mut blocks: BTreeMap<u64, Vec<BlockEntry>> = BTreeMap::new();
        for second in seconds {
            blocks.entry(block_of(second)).or_default().push(block_entry(&format!("x{second}"), "cup", second));
        }
        let blocks: BTreeMap<u64, BucketBlock> = blocks.into_iter().map(|(n, e)| (n, BucketBlock::new(n, 1000, e))).collect();
        store.write_bucket_blocks("a", &blocks).unwrap();
        store.write_bucket_blocks("ab", &blocks).unwrap();
        assert_eq!(store.bucket_blocks_of("a").unwrap(), vec![0, 15, 16, 4375]);
        let held: Vec<u64> = store.bucket_range("a", 0, u64::MAX).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(held, seconds);
        assert_eq!(store.bucket_range("a", 1, 257).unwrap().len(), 3);
        assert_eq!(store.bucket("a", 256).unwrap().unwrap().entries[0].annotation_id, "x256");
        assert_eq!(store.bucket("a", 257).unwrap(), None);
        assert_eq!(store.bucket_count(), 10);
        // Block 0 loses bucket 1, block 4375 is emptied: the count follows.
        let fewer = BTreeMap::from([(0, BucketBlock::new(0, 1000, vec![block_entry("x0", "cup", 0)])), (4375, BucketBlock::default())]);
        store.write_bucket_blocks("a", &fewer).unwrap();
        assert_eq!(store.bucket_blocks_of("a").unwrap(), vec![0, 15, 16]);
        assert_eq!(store.bucket_count(), 8);
        assert_eq!(store.bucket_range("ab", 0, u64::MAX).unwrap().len(), 5, "the other asset is untouched");
        store.clear_derived().unwrap();
        assert_eq!((store.bucket_count(), store.bucket_range("ab", 0, u64::MAX).unwrap().len()), (0, 0));
        assert_eq!(split_bucket_key(&bucket_key("s01e01", 42)).unwrap(), ("s01e01".to_string(), 42));
    }
}
