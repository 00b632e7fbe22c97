//! Fusion: the one-second (bucket_ms) view of an asset, as a pure function of its stored
//! annotations.
//!
//! Model-version replacement: for each (asset, model), only annotations of the highest
//! `model_version` (see `compare_model_versions`) are fused; older versions stay in the raw
//! store untouched. Because "highest" does not depend on arrival order, fusion is a pure
//! function of the raw store and every replica and every rebuild derives identical buckets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rushes_protocol::model::{compare_model_versions, ShardCommand, StoredAnnotation};

use crate::storage::blocks::{block_of, BlockEntry, BucketBlock};
use crate::storage::store::{ShardStore, StoreError};

/// Which buckets of an asset need recomputing.
#[derive(Debug, Clone, PartialEq)]
pub enum AffectedBuckets {
    All,
    Some(BTreeSet<u64>),
}

impl AffectedBuckets {
    pub fn merge(&mut self, other: AffectedBuckets) {
        match (self, other) {
            (AffectedBuckets::All, _) => {}
            (this @ AffectedBuckets::Some(_), AffectedBuckets::All) => *this = AffectedBuckets::All,
            (AffectedBuckets::Some(mine), AffectedBuckets::Some(theirs)) => mine.extend(theirs),
        }
    }
}

/// Buckets `[first, last]` that the half-open interval `[start_ms, end_ms)` touches.
pub fn bucket_span(start_ms: u64, end_ms: u64, bucket_ms: u64) -> (u64, u64) {
    debug_assert!(end_ms > start_ms && bucket_ms > 0);
    (start_ms / bucket_ms, (end_ms - 1) / bucket_ms)
}

pub use crate::storage::blocks::coverage;

/// The version of each model that fusion uses on this asset.
pub fn active_versions(annotations: &[StoredAnnotation]) -> HashMap<&str, &str> {
    let mut active: HashMap<&str, &str> = HashMap::new();
    for a in annotations {
        let entry = active.entry(a.model.as_str()).or_insert(a.model_version.as_str());
        if compare_model_versions(&a.model_version, entry).is_gt() {
            *entry = a.model_version.as_str();
        }
    }
    active
}

/// The buckets that a committed command can change, per asset. Fusion and indexing both derive
/// their work from the log with this function, so a restart of either stage resumes exactly.
pub fn affected_by_command(
    command: &ShardCommand,
    bucket_ms: u64,
    store: &ShardStore,
    out: &mut BTreeMap<String, AffectedBuckets>,
    for_index: bool,
) -> Result<(), StoreError> {
    match command {
        ShardCommand::Ingest { items } => {
            // Items of one command share few (asset, model) pairs: look each up once.
            let mut several_versions: HashMap<(&str, &str), bool> = HashMap::new();
            for item in items {
                let a = &item.annotation;
                let several = match several_versions.get(&(a.asset_id.as_str(), a.model.as_str())) {
                    Some(&known) => known,
                    None => {
                        let known = store.has_several_versions(&a.asset_id, &a.model)?;
                        several_versions.insert((a.asset_id.as_str(), a.model.as_str()), known);
                        known
                    }
                };
                let affected = if several {
                    // A version change can remove the previous version's buckets anywhere.
                    AffectedBuckets::All
                } else {
                    let (first, last) = bucket_span(a.start_ms, a.end_ms, bucket_ms);
                    let mut seconds: std::collections::BTreeSet<u64> = (first..=last).collect();
                    if for_index && a.text.is_some() {
                        // The next line's first second indexes this line with it (a bridge):
                        // the first bucket after this line that holds dialogue.
                        for second in last.saturating_add(1)..=last.saturating_add(crate::storage::index::BRIDGE_WINDOW_BUCKETS) {
                            if store.bucket_holds(&a.asset_id, second, |e| e.text.is_some())? {
                                seconds.insert(second);
                                break;
                            }
                        }
                    }
                    AffectedBuckets::Some(seconds)
                };
                match out.get_mut(&a.asset_id) {
                    Some(existing) => existing.merge(affected),
                    None => {
                        out.insert(a.asset_id.clone(), affected);
                    }
                }
            }
        }
        // Asset metadata is not part of buckets, but it is part of index documents.
        ShardCommand::UpsertAsset { asset_id, .. } if for_index => {
            out.insert(asset_id.clone(), AffectedBuckets::All);
        }
        ShardCommand::UpsertAsset { .. } => {}
        // The removed annotations are gone from the store by now: re-fuse the whole asset,
        // which also deletes buckets left with nothing.
        ShardCommand::DeleteAsset { asset_id } | ShardCommand::DeleteAnnotation { asset_id, .. } => {
            out.insert(asset_id.clone(), AffectedBuckets::All);
        }
        ShardCommand::PurgeSuperseded { asset_ids } => {
            for asset_id in asset_ids {
                out.insert(asset_id.clone(), AffectedBuckets::All);
            }
        }
    }
    Ok(())
}

/// The blocks (see [`crate::storage::blocks`]) holding the affected buckets, computed whole from
/// all annotations of one asset. A bucket holds every annotation of the asset's active model
/// versions that covers part of it, with the share it covers, sorted by (track, annotation
/// id). With `All`, every block an active annotation touches; an empty block means "delete".
pub fn fuse_blocks(annotations: &[StoredAnnotation], affected: &AffectedBuckets, bucket_ms: u64) -> BTreeMap<u64, BucketBlock> {
    let active = active_versions(annotations);
    let mut entries: BTreeMap<u64, Vec<BlockEntry>> = match affected {
        AffectedBuckets::All => BTreeMap::new(),
        AffectedBuckets::Some(set) => set.iter().map(|&b| (block_of(b), Vec::new())).collect(),
    };
    for a in annotations {
        if active.get(a.model.as_str()) != Some(&a.model_version.as_str()) {
            continue;
        }
        let (first, last) = bucket_span(a.start_ms, a.end_ms, bucket_ms);
        let (first_block, last_block) = (block_of(first), block_of(last));
        match affected {
            AffectedBuckets::All => {
                for block in first_block..=last_block {
                    entries.entry(block).or_default().push(BlockEntry::of(a));
                }
            }
            AffectedBuckets::Some(_) => {
                for (_, held) in entries.range_mut(first_block..=last_block) {
                    held.push(BlockEntry::of(a));
                }
            }
        }
    }
    entries.into_iter().map(|(block, held)| (block, BucketBlock::new(block, bucket_ms, held))).collect()
}

/// Recomputes and writes the blocks holding the affected buckets of one asset. With `All`,
/// blocks that no longer hold anything are deleted too. Returns the buckets the written blocks
/// hold.
pub fn refuse_asset(store: &ShardStore, asset_id: &str, affected: &AffectedBuckets, bucket_ms: u64) -> Result<usize, StoreError> {
    let annotations = store.asset_annotations(asset_id)?;
    let mut blocks = fuse_blocks(&annotations, affected, bucket_ms);
    if matches!(affected, AffectedBuckets::All) {
        for block in store.bucket_blocks_of(asset_id)? {
            blocks.entry(block).or_default();
        }
    }
    store.write_bucket_blocks(asset_id, &blocks)?;
    Ok(blocks.values().map(|b| b.buckets_held as usize).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rushes_protocol::model::{Bucket, BucketEntry};

    fn annotation(id: &str, model: &str, version: &str, start_ms: u64, end_ms: u64, label: &str, confidence: f64) -> StoredAnnotation {
        StoredAnnotation {
            id: id.into(),
            asset_id: "e1".into(),
            model: model.into(),
            model_version: version.into(),
            track: "character".into(),
            start_ms,
            end_ms,
            confidence,
            label: Some(label.into()),
            text: None,
            language: None,
            vector_space: None,
        }
    }

    /// The buckets the blocks hold, read back as the store reads them.
    fn fuse_asset(annotations: &[StoredAnnotation], affected: &AffectedBuckets, bucket_ms: u64) -> BTreeMap<u64, Bucket> {
        let mut out = BTreeMap::new();
        for (number, block) in fuse_blocks(annotations, affected, bucket_ms) {
            let bytes = block.encode().unwrap();
            let decoded = crate::storage::blocks::BucketBlockRef::decode(&bytes).unwrap();
            for (second, bucket) in decoded.buckets(number, 0, u64::MAX) {
                out.insert(second, crate::storage::blocks::owned_bucket(&bucket));
            }
        }
        out
    }

    #[test]
    fn bucket_math() {
        assert_eq!(bucket_span(0, 1000, 1000), (0, 0));
        assert_eq!(bucket_span(0, 1001, 1000), (0, 1));
        assert_eq!(bucket_span(999, 1000, 1000), (0, 0));
        assert_eq!(bucket_span(1000, 1001, 1000), (1, 1));
        assert_eq!(bucket_span(2500, 4500, 1000), (2, 4));
        assert_eq!(coverage(2500, 4500, 2, 1000), 0.5);
        assert_eq!(coverage(2500, 4500, 3, 1000), 1.0);
        assert_eq!(coverage(2500, 4500, 4, 1000), 0.5);
        assert_eq!(coverage(2500, 4500, 5, 1000), 0.0);
        assert_eq!(bucket_span(0, 1, 250), (0, 0));
        assert_eq!(coverage(100, 350, 1, 250), 0.4);
    }

    #[test]
    fn overlapping_annotations_share_buckets_with_their_coverage() {
        let annotations =
            vec![annotation("a", "faces", "1", 500, 2500, "Joey", 0.9), annotation("b", "faces", "1", 2000, 3000, "Monica", 0.8)];
        let buckets = fuse_asset(&annotations, &AffectedBuckets::All, 1000);
        assert_eq!(buckets.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(buckets[&0].entries.len(), 1);
        assert_eq!(buckets[&0].entries[0].coverage, 0.5);
        assert_eq!(buckets[&2].entries.iter().map(|e| e.annotation_id.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(buckets[&2].entries[0].coverage, 0.5);
        assert_eq!(buckets[&2].entries[1].coverage, 1.0);
    }

    #[test]
    fn a_new_model_version_replaces_only_its_own_model() {
        let annotations = vec![
            annotation("v1", "faces", "1.9", 0, 5000, "Joey", 0.9),
            annotation("v2", "faces", "1.10", 3000, 4000, "Joey", 0.9),
            annotation("other", "places", "1", 0, 2000, "kitchen", 0.8),
        ];
        let buckets = fuse_asset(&annotations, &AffectedBuckets::All, 1000);
        let ids: Vec<(u64, Vec<&str>)> =
            buckets.iter().map(|(s, b)| (*s, b.entries.iter().map(|e| e.annotation_id.as_str()).collect())).collect();
        assert_eq!(ids, vec![(0, vec!["other"]), (1, vec!["other"]), (3, vec!["v2"])]);
        // Arrival order does not matter: the same set gives the same buckets.
        let mut reversed = annotations.clone();
        reversed.reverse();
        assert_eq!(fuse_asset(&reversed, &AffectedBuckets::All, 1000), buckets);
    }

    #[test]
    fn partial_recompute_returns_empty_for_cleared_blocks() {
        let annotations = vec![annotation("a", "faces", "1", 0, 1000, "Joey", 0.9)];
        let affected = AffectedBuckets::Some([0, 5, 40].into_iter().collect());
        let blocks = fuse_blocks(&annotations, &affected, 1000);
        assert_eq!(blocks.keys().copied().collect::<Vec<_>>(), [0, 2], "buckets 0 and 5 share block 0");
        assert!(blocks[&2].entries.is_empty());
        assert_eq!((blocks[&0].entries.len(), blocks[&0].buckets_held), (1, 1));
    }

    fn arbitrary_annotation() -> impl Strategy<Value = StoredAnnotation> {
        (0u64..20_000, 1u64..6_000, 0usize..3, 0usize..3, 0usize..4).prop_map(|(start, length, model, version, label)| {
            let models = ["faces", "places", "objects"];
            let versions = ["1", "2", "1.5"];
            let labels = ["Joey", "Monica", "kitchen", "cup"];
            annotation(
                &format!("{}-{}-{start}-{length}", models[model], versions[version]),
                models[model],
                versions[version],
                start,
                start + length,
                labels[label],
                0.5,
            )
        })
    }

    proptest! {
        /// Incremental fusion (batches applied one after another, each recomputing only the
        /// buckets it affects) equals a naive recomputation of everything from raw.
        #[test]
        fn incremental_fusion_equals_naive_recomputation(
            batches in prop::collection::vec(prop::collection::vec(arbitrary_annotation(), 1..8), 1..6),
            bucket_ms in prop::sample::select(vec![250u64, 1000, 2000]),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = ShardStore::open(dir.path()).unwrap();
            for batch in &batches {
                let items: Vec<_> = batch.iter().map(|a| rushes_protocol::model::IngestItem {
                    raw_json: serde_json::to_vec(a).unwrap(), annotation: a.clone(), vector: None }).collect();
                store.apply_ingest(&items).unwrap();
                let mut affected = BTreeMap::new();
                affected_by_command(&ShardCommand::Ingest { items }, bucket_ms, &store, &mut affected, false).unwrap();
                for (asset, buckets) in &affected {
                    refuse_asset(&store, asset, buckets, bucket_ms).unwrap();
                }
            }
            let all = store.asset_annotations("e1").unwrap();
            let naive: BTreeMap<u64, Bucket> = naive_fusion(&all, bucket_ms);
            let stored: BTreeMap<u64, Bucket> = store.bucket_range("e1", 0, u64::MAX).unwrap().into_iter().collect();
            prop_assert_eq!(stored, naive);
        }
    }

    /// Straight from the definition: for every second, every active annotation overlapping it.
    fn naive_fusion(annotations: &[StoredAnnotation], bucket_ms: u64) -> BTreeMap<u64, Bucket> {
        let mut best: HashMap<&str, &str> = HashMap::new();
        for a in annotations {
            let keep = best.get(a.model.as_str()).map_or(true, |v| compare_model_versions(&a.model_version, v).is_gt());
            if keep {
                best.insert(&a.model, &a.model_version);
            }
        }
        let max_ms = annotations.iter().map(|a| a.end_ms).max().unwrap_or(0);
        let mut out = BTreeMap::new();
        let mut bucket = 0;
        while bucket * bucket_ms < max_ms {
            let (lo, hi) = (bucket * bucket_ms, (bucket + 1) * bucket_ms);
            let mut entries: Vec<BucketEntry> = annotations
                .iter()
                .filter(|a| best[a.model.as_str()] == a.model_version && a.start_ms < hi && a.end_ms > lo)
                .map(|a| BucketEntry {
                    annotation_id: a.id.clone(),
                    track: a.track.clone(),
                    model: a.model.clone(),
                    label: a.label.clone(),
                    text: None,
                    language: None,
                    vector_space: None,
                    confidence: a.confidence,
                    coverage: (a.end_ms.min(hi) - a.start_ms.max(lo)) as f64 / bucket_ms as f64,
                })
                .collect();
            entries.sort_by(|x, y| (&x.track, &x.annotation_id).cmp(&(&y.track, &y.annotation_id)));
            if !entries.is_empty() {
                out.insert(bucket, Bucket { entries });
            }
            bucket += 1;
        }
        out
    }
}
