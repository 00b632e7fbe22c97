//! Snapshots of a shard's raw store. A snapshot message names the state ([`SnapshotRef`]: an
//! index) instead of carrying it: the replica that receives one fetches the sender's live raw
//! store in chunks into its staging area ([`receive`]), and only then hands the message to its
//! Raft actor, which installs the staged copy. [`serve_chunk`] is the sending side.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use rushes_cluster::log_store::{RaftLogStore, SledLogStore};
use rushes_cluster::{NodeId, ShardId};
use rushes_protocol::codec;
use rushes_protocol::peer::{PeerReply, PeerRequest};
use rushes_protocol::ApiError;

use super::{Shard, ShardError};
use crate::peer::ClusterNet;
use crate::storage::store::{ShardStore, StoreError, LEGACY_RAW_SNAPSHOT_FORMAT};

/// Deadline of one snapshot chunk request (a chunk is at most `raft.snapshot_chunk_bytes`, 64 MiB).
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a Raft snapshot message's data is.
pub enum SnapshotData {
    /// Format 1, from earlier versions: the whole raw store in the message itself.
    Legacy,
    /// Formats 2 and 3: a [`SnapshotRef`]; the raw store is fetched separately.
    Ref(SnapshotRef),
}

impl SnapshotData {
    pub fn parse(data: &[u8]) -> Result<SnapshotData, codec::CodecError> {
        if data.first() == Some(&LEGACY_RAW_SNAPSHOT_FORMAT) {
            return Ok(SnapshotData::Legacy);
        }
        SnapshotRef::decode(data).map(SnapshotData::Ref)
    }
}

/// A Raft snapshot's data: which state it stands for, not the state itself. The raw store
/// is fetched from the sending replica in chunks into a staging area before the message
/// reaches raft-rs ([`Shard::with_staging`]), and installed from there.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRef {
    /// The snapshot holds every entry through this index.
    pub index: u64,
}

/// Format of [`SnapshotRef`] (format 1 was the whole raw store in the message). Format 3
/// has the same fields; it says the fetched raw store holds entry records, which versions that
/// read only format 2 would not see, so they refuse the snapshot instead of installing it.
const SNAPSHOT_REF_FORMAT: u8 = 3;
/// Written by versions whose raw store held legacy records; an install converts them.
const SNAPSHOT_REF_FORMAT_LEGACY_RECORDS: u8 = 2;

impl SnapshotRef {
    pub fn encode(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode(SNAPSHOT_REF_FORMAT, self)
    }

    pub fn decode(data: &[u8]) -> Result<SnapshotRef, codec::CodecError> {
        match data.first() {
            Some(&SNAPSHOT_REF_FORMAT_LEGACY_RECORDS) => codec::decode(SNAPSHOT_REF_FORMAT_LEGACY_RECORDS, data),
            _ => codec::decode(SNAPSHOT_REF_FORMAT, data),
        }
    }
}

/// Re-saves a stored format-2 snapshot reference as format 3. The store it stands for was
/// converted to entry records when it was opened, and raft-rs sends the stored snapshot as
/// it is: without this, a replica of an earlier version would read format 2 and install entry
/// records it cannot read, until the next compaction replaced the reference.
pub fn mark_stored_snapshot_current(log: &SledLogStore) -> Result<(), ShardError> {
    let Some(mut stored) = log.stored_snapshot()? else {
        return Ok(());
    };
    if stored.get_data().first() != Some(&SNAPSHOT_REF_FORMAT_LEGACY_RECORDS) {
        return Ok(());
    }
    let reference = SnapshotRef::decode(stored.get_data())?;
    stored.data = reference.encode()?.into();
    log.save_snapshot(&stored)?;
    log.sync()?;
    Ok(())
}

/// A snapshot message for a local replica: its data is fetched from the sender first (on the
/// caller's runtime), then the message goes to the Raft actor, which installs it. While a
/// fetch runs, further snapshot messages for the shard are dropped (the leader resends).
pub fn receive(net: Arc<ClusterNet>, from: NodeId, replica: Arc<Shard>, message: Message) {
    let runtime = net.runtime().clone();
    runtime.spawn(async move {
        let Some(_fetch) = replica.start_snapshot_fetch() else { return };
        let (shard, index) = (replica.id, message.get_snapshot().get_metadata().index);
        let started = Instant::now();
        let fetched = fetch(&net, from, &replica, &message).await;
        // Time of fetches that moved data or failed; a message whose snapshot is already
        // staged (it may have waited for the install to finish) fetched nothing.
        if !matches!(fetched, Ok(None)) {
            let fetch_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            replica.progress.snapshot_fetch_ms.fetch_add(fetch_ms, Ordering::AcqRel);
        }
        match fetched {
            Ok(Some(fetch)) => tracing::info!(
                shard,
                from,
                index,
                bytes = fetch.bytes,
                chunks = fetch.chunks,
                seconds = started.elapsed().as_secs_f64(),
                waiting_for_chunks_s = fetch.waiting_for_chunks.as_secs_f64(),
                staging_s = fetch.staging.as_secs_f64(),
                "snapshot fetched and staged"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(shard, from, index, error = %e, "snapshot fetch failed; the leader sends the snapshot again");
                return;
            }
        }
        if !replica.deliver_raft(message) {
            tracing::debug!(shard, "raft mailbox full; the staged snapshot waits for the leader's next message");
        }
    });
}

/// What one snapshot fetch took: its size, and its time waiting for the source's chunks and
/// writing them to the staging area (the two overlap: the next chunk is asked for before the
/// current one is written).
#[derive(Default)]
struct FetchStats {
    bytes: u64,
    chunks: u64,
    waiting_for_chunks: Duration,
    staging: Duration,
}

/// Stages the raw store `message` names, unless a staged copy already covers it; returns
/// what the fetch took.
async fn fetch(net: &Arc<ClusterNet>, from: NodeId, replica: &Arc<Shard>, message: &Message) -> Result<Option<FetchStats>, ApiError> {
    let snapshot = match SnapshotData::parse(message.get_snapshot().get_data()) {
        Ok(SnapshotData::Ref(snapshot)) => snapshot,
        Ok(SnapshotData::Legacy) => return Ok(None), // an earlier version's snapshot carries the store itself
        Err(e) => return Err(ApiError::internal(format!("unreadable snapshot from node {from}: {e}"))),
    };
    let staged = on_staging(replica, |store| store.staged_snapshot()).await?;
    if staged.is_some_and(|staged| staged >= snapshot.index) {
        return Ok(None);
    }
    let generation = on_staging(replica, |store| store.begin_staging()).await?;
    let chunk_request = |after: Option<Vec<u8>>| PeerRequest::SnapshotChunk { shard: replica.id, after, min_applied: snapshot.index };
    let timed_call = |request: PeerRequest| {
        let net = net.clone();
        async move {
            let asked = Instant::now();
            net.call(from, &request, SNAPSHOT_CHUNK_TIMEOUT).await.map(|reply| (reply, asked.elapsed()))
        }
    };
    let mut stats = FetchStats::default();
    let mut state_at = None;
    let fetch_started = Instant::now();
    let (mut reply, waited) = timed_call(chunk_request(None)).await?;
    stats.waiting_for_chunks += waited;
    loop {
        let (chunk, applied) = match reply {
            PeerReply::SnapshotChunk { chunk, applied } => (chunk, applied),
            PeerReply::Error(e) => return Err(e),
            other => return Err(ApiError::internal(format!("node {from} answered a snapshot chunk request with {}", other.kind()))),
        };
        // The copy holds every entry the source had applied when the first chunk was read.
        state_at.get_or_insert(applied);
        let chunk_bytes = chunk.pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>();
        stats.bytes += chunk_bytes;
        stats.chunks += 1;
        replica.progress.snapshot_chunks_fetched.fetch_add(1, Ordering::AcqRel);
        replica.progress.snapshot_bytes_fetched.fetch_add(chunk_bytes, Ordering::AcqRel);
        let done = chunk.done;
        let after = chunk.pairs.last().map(|(key, _)| key.clone());
        if !done && after.is_none() {
            return Err(ApiError::internal(format!("node {from} sent an empty snapshot chunk before the end")));
        }
        let stage = async {
            let started = Instant::now();
            on_staging(replica, move |store| store.stage_chunk(generation, &chunk.pairs)).await.map(|()| started.elapsed())
        };
        if done {
            stats.staging += stage.await?;
            break;
        }
        // raft.snapshot_transfer_bytes_per_s: wait until the bytes so far are due before asking
        // for more, so a moving replica leaves the source's disk and network to ingest and search.
        let rate = net.snapshot_transfer_bytes_per_s;
        if rate > 0 {
            let due = Duration::from_secs_f64(stats.bytes as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(fetch_started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
        // The source reads and sends the next chunk while this one is written here; the
        // first failure of either ends the fetch at once.
        let (took, (next, waited)) = tokio::try_join!(stage, timed_call(chunk_request(after)))?;
        stats.staging += took;
        stats.waiting_for_chunks += waited;
        reply = next;
    }
    let state_at = state_at.unwrap_or(snapshot.index);
    let staging = Instant::now();
    on_staging(replica, move |store| store.finish_staging(generation, state_at)).await?;
    stats.staging += staging.elapsed();
    Ok(Some(stats))
}

/// Runs `work` on a replica's snapshot staging area on the blocking pool (sled I/O).
async fn on_staging<T: Send + 'static>(
    replica: &Arc<Shard>,
    work: impl FnOnce(&ShardStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    if !replica.disk.has_room() {
        let free_bytes = replica.disk.free_bytes().unwrap_or(0);
        return Err(ApiError::unavailable(format!(
            "staging the snapshot: the disk of {} has {free_bytes} bytes free, below limits.min_free_disk_bytes ({}); the fetch resumes when space returns",
            replica.disk.path().display(),
            replica.disk.min_free_bytes()
        )));
    }
    let replica = replica.clone();
    tokio::task::spawn_blocking(move || replica.with_staging(work))
        .await
        .map_err(|e| ApiError::internal(format!("staging task failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("staging the snapshot: {e}")))
}

/// Serves a chunk of a local replica's raw store to a replica installing a snapshot.
pub async fn serve_chunk(replica: Arc<Shard>, after: Option<Vec<u8>>, min_applied: u64, chunk_bytes: usize) -> PeerReply {
    let shard: ShardId = replica.id;
    let applied = replica.progress.applied.load(Ordering::Acquire);
    if applied < min_applied {
        return PeerReply::Error(
            ApiError::unavailable(format!("replica of shard {shard} has applied {applied}, below the snapshot's {min_applied}"))
                .with_retry_after(1),
        );
    }
    let work = move || replica.store.raw_chunk(after.as_deref(), chunk_bytes);
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(chunk)) => PeerReply::SnapshotChunk { chunk, applied },
        Ok(Err(e)) => PeerReply::Error(ApiError::internal(format!("reading shard {shard} for a snapshot: {e}"))),
        Err(e) => PeerReply::Error(ApiError::internal(format!("snapshot chunk task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    #[test]
    fn a_stored_format_2_snapshot_reference_is_saved_again_as_format_3() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let log = SledLogStore::open(&db, &[1]).expect("log");
        mark_stored_snapshot_current(&log).expect("no snapshot: nothing to do");
        let entries: Vec<Entry> = (1..=5)
            .map(|index| {
                let mut entry = Entry::default();
                (entry.index, entry.term) = (index, 1);
                entry
            })
            .collect();
        log.append(&entries).expect("append");
        let mut snapshot = raft::eraftpb::Snapshot {
            data: codec::encode(SNAPSHOT_REF_FORMAT_LEGACY_RECORDS, &SnapshotRef { index: 3 }).expect("encodes").into(),
            ..Default::default()
        };
        (snapshot.mut_metadata().index, snapshot.mut_metadata().term) = (3, 1);
        log.save_snapshot(&snapshot).expect("save");
        mark_stored_snapshot_current(&log).expect("re-save");
        let stored = log.stored_snapshot().expect("read").expect("still there");
        assert_eq!(stored.get_data()[0], SNAPSHOT_REF_FORMAT);
        assert_eq!(SnapshotRef::decode(stored.get_data()).expect("decodes"), SnapshotRef { index: 3 });
        assert_eq!(stored.get_metadata(), snapshot.get_metadata());
        assert_eq!(log.first_log_index(), 4, "the log is where it was");
        assert_eq!(log.entry(5).expect("read").map(|e| e.index), Some(5));
    }

    #[test]
    fn snapshot_refs_of_both_record_layouts_parse_and_new_ones_are_marked() {
        let current = SnapshotRef { index: 77 }.encode().expect("encodes");
        assert_eq!(current[0], SNAPSHOT_REF_FORMAT, "a version that reads only format 2 refuses it");
        assert!(matches!(SnapshotData::parse(&current), Ok(SnapshotData::Ref(SnapshotRef { index: 77 }))));
        let earlier = codec::encode(SNAPSHOT_REF_FORMAT_LEGACY_RECORDS, &SnapshotRef { index: 5 }).expect("encodes");
        assert!(matches!(SnapshotData::parse(&earlier), Ok(SnapshotData::Ref(SnapshotRef { index: 5 }))));
        assert!(SnapshotData::parse(&[9, 1, 2]).is_err());
    }
}
