//! Fused buckets as stored: one sled value per block of [`BLOCK_BUCKETS`] consecutive buckets
//! of an asset, holding each annotation that covers any of them once, with its interval.
//!
//! Why blocks: an annotation covers 6.5 one-second buckets on average, and a bucket per key
//! held a copy of every entry covering it, so fused buckets were the largest part of a shard's
//! store (466 live bytes per annotation at 2,000 h, docs/benchmarks.md "Buckets by block"). A
//! block holds each annotation about 1.4 times instead, and the per-bucket view (entries and
//! their coverage) is computed from the intervals exactly as fusion computes it, so readers see
//! the same [`Bucket`]s as before.

use rushes_protocol::codec::{self, CodecError};
use rushes_protocol::model::{Bucket, BucketEntry, BucketEntryRef, BucketRef, StoredAnnotation};
use serde::{Deserialize, Serialize};

/// Buckets per block. Larger blocks store an annotation fewer times (`(16 + 5.5) / 16` copies
/// for a 6.5-bucket annotation) but make a one-bucket read decode more entries.
pub const BLOCK_BUCKETS: u64 = 16;

/// Format of a block's value (`[format][bincode]`).
pub const BUCKET_BLOCK_FORMAT: u8 = 1;

/// The block holding `bucket`.
pub fn block_of(bucket: u64) -> u64 {
    bucket / BLOCK_BUCKETS
}

/// The buckets `[first, end)` of block `block`.
pub fn block_buckets(block: u64) -> (u64, u64) {
    let first = block.saturating_mul(BLOCK_BUCKETS);
    (first, first.saturating_add(BLOCK_BUCKETS))
}

/// Fraction of bucket `bucket` covered by `[start_ms, end_ms)`, in [0, 1].
pub fn coverage(start_ms: u64, end_ms: u64, bucket: u64, bucket_ms: u64) -> f64 {
    let bucket_start = bucket.saturating_mul(bucket_ms);
    let bucket_end = bucket_start.saturating_add(bucket_ms);
    let overlap = end_ms.min(bucket_end).saturating_sub(start_ms.max(bucket_start));
    overlap as f64 / bucket_ms as f64
}

/// One fused annotation in a block: what a bucket entry holds, with the interval its coverage
/// of each bucket comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockEntry {
    pub annotation_id: String,
    pub track: String,
    pub model: String,
    pub label: Option<String>,
    pub text: Option<String>,
    pub language: Option<String>,
    pub vector_space: Option<String>,
    pub confidence: f64,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl BlockEntry {
    pub fn of(a: &StoredAnnotation) -> BlockEntry {
        BlockEntry {
            annotation_id: a.id.clone(),
            track: a.track.clone(),
            model: a.model.clone(),
            label: a.label.clone(),
            text: a.text.clone(),
            language: a.language.clone(),
            vector_space: a.vector_space.clone(),
            confidence: a.confidence,
            start_ms: a.start_ms,
            end_ms: a.end_ms,
        }
    }
}

/// A block as written: entries sorted by (track, annotation_id), as a bucket's are.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BucketBlock {
    /// The bucket width the entries were fused at; coverage is computed with it.
    pub bucket_ms: u64,
    /// How many of the block's buckets hold an entry (the shard's bucket count sums them).
    pub buckets_held: u32,
    pub entries: Vec<BlockEntry>,
}

impl BucketBlock {
    /// The block `block` of entries (any order; those not covering it are left out).
    pub fn new(block: u64, bucket_ms: u64, mut entries: Vec<BlockEntry>) -> BucketBlock {
        let (first, end) = block_buckets(block);
        entries.retain(|e| (first..end).any(|b| coverage(e.start_ms, e.end_ms, b, bucket_ms) > 0.0));
        entries.sort_by(|x, y| (&x.track, &x.annotation_id).cmp(&(&y.track, &y.annotation_id)));
        let buckets_held =
            (first..end).filter(|&b| entries.iter().any(|e| coverage(e.start_ms, e.end_ms, b, bucket_ms) > 0.0)).count() as u32;
        BucketBlock { bucket_ms, buckets_held, entries }
    }

    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(BUCKET_BLOCK_FORMAT, self)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BlockEntryRef<'a> {
    #[serde(borrow)]
    pub annotation_id: &'a str,
    #[serde(borrow)]
    pub track: &'a str,
    #[serde(borrow)]
    pub model: &'a str,
    #[serde(borrow)]
    pub label: Option<&'a str>,
    #[serde(borrow)]
    pub text: Option<&'a str>,
    #[serde(borrow)]
    pub language: Option<&'a str>,
    #[serde(borrow)]
    pub vector_space: Option<&'a str>,
    pub confidence: f64,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// A block decoded without copying its strings (the query path reads many).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BucketBlockRef<'a> {
    pub bucket_ms: u64,
    pub buckets_held: u32,
    #[serde(borrow)]
    pub entries: Vec<BlockEntryRef<'a>>,
}

impl<'a> BucketBlockRef<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<BucketBlockRef<'a>, CodecError> {
        let block: BucketBlockRef = codec::decode_borrowed(BUCKET_BLOCK_FORMAT, bytes)?;
        if block.bucket_ms == 0 {
            return Err(CodecError::Decode("bucket block with bucket_ms 0".into()));
        }
        Ok(block)
    }

    /// Bucket `bucket` as fusion defines it, or None when nothing in the block covers it.
    pub fn bucket(&self, bucket: u64) -> Option<BucketRef<'a>> {
        let entries: Vec<BucketEntryRef<'a>> = self
            .entries
            .iter()
            .filter_map(|e| {
                let share = coverage(e.start_ms, e.end_ms, bucket, self.bucket_ms);
                (share > 0.0).then(|| BucketEntryRef {
                    annotation_id: e.annotation_id,
                    track: e.track,
                    model: e.model,
                    label: e.label,
                    text: e.text,
                    language: e.language,
                    vector_space: e.vector_space,
                    confidence: e.confidence,
                    coverage: share,
                })
            })
            .collect();
        (!entries.is_empty()).then_some(BucketRef { entries })
    }

    /// The buckets of block `block` within `[from_bucket, to_bucket)` that hold entries, in order.
    pub fn buckets(&self, block: u64, from_bucket: u64, to_bucket: u64) -> Vec<(u64, BucketRef<'a>)> {
        let (first, end) = block_buckets(block);
        (first.max(from_bucket)..end.min(to_bucket)).filter_map(|b| self.bucket(b).map(|bucket| (b, bucket))).collect()
    }
}

/// A borrowed bucket as an owned one.
pub fn owned_bucket(bucket: &BucketRef) -> Bucket {
    Bucket {
        entries: bucket
            .entries
            .iter()
            .map(|e| BucketEntry {
                annotation_id: e.annotation_id.to_string(),
                track: e.track.to_string(),
                model: e.model.to_string(),
                label: e.label.map(str::to_string),
                text: e.text.map(str::to_string),
                language: e.language.map(str::to_string),
                vector_space: e.vector_space.map(str::to_string),
                confidence: e.confidence,
                coverage: e.coverage,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, track: &str, start_ms: u64, end_ms: u64) -> BlockEntry {
        BlockEntry {
            annotation_id: id.into(),
            track: track.into(),
            model: "m".into(),
            label: Some(format!("label {id}")),
            text: None,
            language: None,
            vector_space: None,
            confidence: 0.75,
            start_ms,
            end_ms,
        }
    }

    #[test]
    fn a_block_keeps_only_what_covers_it_sorted_and_counts_its_buckets() {
        // Block 1 is buckets 16..32 at 1,000 ms: 16,000..32,000 ms.
        let block = BucketBlock::new(
            1,
            1000,
            vec![
                entry("z", "character", 15_500, 17_000), // buckets 15 and 16
                entry("a", "object", 31_000, 40_000),    // buckets 31..40
                entry("b", "character", 10_000, 16_000), // ends where the block starts
                entry("c", "character", 20_000, 20_001), // one millisecond of bucket 20
            ],
        );
        let ids: Vec<&str> = block.entries.iter().map(|e| e.annotation_id.as_str()).collect();
        assert_eq!(ids, ["c", "z", "a"]);
        assert_eq!(block.buckets_held, 3, "buckets 16, 20 and 31");
        let bytes = block.encode().unwrap();
        let decoded = BucketBlockRef::decode(&bytes).unwrap();
        let held: Vec<u64> = decoded.buckets(1, 0, u64::MAX).into_iter().map(|(b, _)| b).collect();
        assert_eq!(held, [16, 20, 31]);
        let sixteen = decoded.bucket(16).unwrap();
        assert_eq!(sixteen.entries.len(), 1);
        assert_eq!((sixteen.entries[0].annotation_id, sixteen.entries[0].coverage), ("z", 1.0));
        assert_eq!(decoded.bucket(20).unwrap().entries[0].coverage, 0.001);
        assert!(decoded.bucket(17).is_none());
        assert_eq!(decoded.buckets(1, 17, 31).len(), 1, "only bucket 20 within [17, 31)");
        let owned = owned_bucket(&sixteen);
        assert_eq!(owned.entries[0].label.as_deref(), Some("label z"));
    }

    #[test]
    fn a_corrupt_or_truncated_block_is_an_error_not_a_panic() {
        let bytes = BucketBlock::new(0, 1000, vec![entry("a", "shot", 0, 5000)]).encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(BucketBlockRef::decode(&bytes[..cut]).is_err());
        }
        let zero_width = codec::encode(BUCKET_BLOCK_FORMAT, &BucketBlock { bucket_ms: 0, buckets_held: 0, entries: vec![] }).unwrap();
        assert!(BucketBlockRef::decode(&zero_width).is_err());
    }
}
