//! A replica's progress through its stages: watermarks and counters that the actors write and
//! everyone else reads without locks (status, metrics, admission of writes, strong reads).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Stage watermarks, readable from anywhere without locks.
#[derive(Default)]
pub struct Progress {
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    pub fused: AtomicU64,
    pub indexed: AtomicU64,
    pub is_leader: AtomicBool,
    /// The leader this replica knows of (0: none).
    pub leader: AtomicU64,
    pub term: AtomicU64,
    /// Set once the Raft actor stopped on a failure (writes then get 503 naming the cause).
    pub failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Snapshots from other replicas installed since this process started.
    pub snapshots_installed: AtomicU64,
    /// Snapshot chunks and raw store bytes fetched from other replicas, and the time spent in
    /// fetches (finished or failed), since this process started.
    pub snapshot_chunks_fetched: AtomicU64,
    pub snapshot_bytes_fetched: AtomicU64,
    pub snapshot_fetch_ms: AtomicU64,
    /// (log index, when it was applied) for the ingest → searchable lag; bounded.
    apply_times: Mutex<VecDeque<(u64, Instant)>>,
    /// Ingest entries applied but not yet indexed, with their annotation counts.
    pub(super) unindexed: Mutex<UnindexedAnnotations>,
}

/// Annotations applied but not yet indexed: what `limits.unindexed_annotations_max` bounds
/// (an entry holds from one annotation to `limits.max_batch_items`, so a count of entries
/// alone is a weak bound). Entries applied before this process started are not
/// counted; `limits.unindexed_entries_max` bounds those. An indexed watermark that jumps (a
/// snapshot re-derived whole) drops every entry it covers.
#[derive(Default)]
pub(super) struct UnindexedAnnotations {
    /// (log index, annotations), in index order.
    pub(super) entries: VecDeque<(u64, u64)>,
    total: u64,
}

impl UnindexedAnnotations {
    fn drop_indexed(&mut self, indexed: u64) {
        while let Some(&(index, annotations)) = self.entries.front() {
            if index > indexed {
                break;
            }
            self.total -= annotations;
            self.entries.pop_front();
        }
    }
}

const APPLY_TIMES_MAX: usize = 4096;

impl Progress {
    pub(super) fn record_applied(&self, index: u64) {
        let mut times = self.apply_times.lock();
        if times.len() >= APPLY_TIMES_MAX {
            times.pop_front();
        }
        times.push_back((index, Instant::now()));
    }

    /// Counts an applied ingest entry's annotations until indexing passes it.
    pub(super) fn record_applied_annotations(&self, index: u64, annotations: u64) {
        let indexed = self.indexed.load(Ordering::Acquire);
        let mut unindexed = self.unindexed.lock();
        unindexed.drop_indexed(indexed);
        if index > indexed {
            unindexed.entries.push_back((index, annotations));
            unindexed.total += annotations;
        }
    }

    /// Records that the replica stopped for good, and why.
    pub(super) fn record_failure(&self, cause: String) {
        *self.failure.lock() = Some(cause);
        self.failed.store(true, Ordering::Release);
    }

    /// Why the replica stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failed.load(Ordering::Acquire).then(|| self.failure.lock().clone().unwrap_or_default())
    }

    /// Annotations applied (since this process started) and not yet indexed.
    pub fn unindexed_annotations(&self) -> u64 {
        let indexed = self.indexed.load(Ordering::Acquire);
        let mut unindexed = self.unindexed.lock();
        unindexed.drop_indexed(indexed);
        unindexed.total
    }

    /// Seconds from apply to searchable for entries now covered by `indexed`.
    pub(super) fn drain_searchable(&self, indexed: u64) -> Vec<f64> {
        let mut times = self.apply_times.lock();
        let mut lags = Vec::new();
        while let Some(&(index, at)) = times.front() {
            if index > indexed {
                break;
            }
            lags.push(at.elapsed().as_secs_f64());
            times.pop_front();
        }
        lags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unindexed_annotations_are_counted_until_indexing_passes_their_entry() {
        let progress = Progress::default();
        progress.indexed.store(4, Ordering::Release);
        progress.record_applied_annotations(4, 1_000); // already indexed: never counted
        progress.record_applied_annotations(5, 300);
        progress.record_applied_annotations(6, 20);
        progress.record_applied_annotations(8, 1);
        assert_eq!(progress.unindexed_annotations(), 321);
        progress.indexed.store(6, Ordering::Release);
        assert_eq!(progress.unindexed_annotations(), 1);
        // A snapshot re-derived whole moves the watermark past everything.
        progress.indexed.store(100, Ordering::Release);
        assert_eq!(progress.unindexed_annotations(), 0);
        assert!(progress.unindexed.lock().entries.is_empty(), "covered entries are dropped, not kept");
    }
}
