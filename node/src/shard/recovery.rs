//! Reopening a replica whose Raft actor stopped on a failure (a full disk, an I/O error).
//!
//! A stopped replica cannot resume in place: sled keeps a failed write's error for good, a
//! Tantivy writer whose worker failed is dead, and raft-rs may hold state its storage never
//! took. What a restart of the node would do is safe, so this does it for the one replica,
//! without stopping the node: close the replica, then open it again from what is durable on
//! its disk, which replays the log and catches up from the group like any restarted replica.
//! Until the disk has room again the open fails and is retried, with a growing pause, while
//! the rest of the node keeps serving and writes to this replica get 503 naming the cause.
//!
//! The fault suite's disk-full nemesis found the need: a replica that filled its disk stayed
//! stopped after space returned, until someone restarted the node.

use std::sync::Arc;
use std::time::Duration;

use super::RaftOutbox;

use super::Shard;
use crate::node::Node;

/// How often failed replicas are looked for.
pub const RECOVERY_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The longest pause between two attempts to reopen one replica.
pub const RECOVERY_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A reopened replica that fails again within this long keeps its back-off: a replica that
/// opens but fails at once (its disk fills again) is not closed and reopened every 2 s.
pub const RECOVERY_STABLE_AFTER: Duration = Duration::from_secs(60);

/// A replica closed after a failure, waiting to be opened again.
struct Closed {
    voters: Vec<rushes_cluster::NodeId>,
    cause: String,
    failures: u32,
    not_before: tokio::time::Instant,
}

/// Reopens failed replicas until the node stops.
pub async fn run(node: std::sync::Weak<Node>) {
    let mut closed: std::collections::BTreeMap<u32, Closed> = std::collections::BTreeMap::new();
    // Replicas reopened lately: when, and the back-off count they carry if they fail again.
    let mut reopened: std::collections::BTreeMap<u32, Reopened> = std::collections::BTreeMap::new();
    let mut ticker = tokio::time::interval(RECOVERY_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(node) = node.upgrade() else { return };
        let now = tokio::time::Instant::now();
        reopened.retain(|_, r| now.duration_since(r.at) < RECOVERY_STABLE_AFTER);
        for replica in node.shards() {
            let Some(cause) = replica.progress.failure() else { continue };
            let shard = replica.id;
            let (failures, not_before) = first_attempt(reopened.remove(&shard), now);
            tracing::warn!(shard, %cause, retry_in_ms = not_before.duration_since(now).as_millis() as u64, "closing a replica that stopped on a failure, to open it again from its disk");
            closed.insert(shard, Closed { voters: replica.voters.clone(), cause, failures, not_before });
            close(&node, replica).await;
        }
        let now = tokio::time::Instant::now();
        let due: Vec<u32> = closed.iter().filter(|(_, c)| c.not_before <= now).map(|(shard, _)| *shard).collect();
        for shard in due {
            let Some(entry) = closed.get_mut(&shard) else { continue };
            // Opened meanwhile (the node following a new map), or no longer this node's.
            let wanted = node.view.shard_map().replicas(shard).contains(&node.node_id());
            if node.view.local_shard(shard).is_some() || !wanted {
                closed.remove(&shard);
                continue;
            }
            match open(&node, shard, entry.voters.clone()).await {
                Ok(()) => {
                    tracing::warn!(shard, cause = %entry.cause, "reopened a replica that had stopped on a failure; it catches up from its group");
                    reopened.insert(shard, Reopened { at: now, failures: entry.failures.saturating_add(1) });
                    closed.remove(&shard);
                }
                Err(error) => {
                    entry.failures = entry.failures.saturating_add(1);
                    let pause = backoff(entry.failures);
                    entry.not_before = now + pause;
                    tracing::error!(shard, cause = %entry.cause, %error, retry_in_ms = pause.as_millis() as u64, "cannot reopen a failed replica yet");
                }
            }
        }
    }
}

/// A replica reopened at `at`, and the failures it counts if it fails again soon.
#[derive(Debug, Clone, Copy)]
struct Reopened {
    at: tokio::time::Instant,
    failures: u32,
}

/// The failure count and first reopen time of a replica found failed at `now`: at once after
/// a first failure, after the back-off it had reached if it was reopened lately.
fn first_attempt(lately: Option<Reopened>, now: tokio::time::Instant) -> (u32, tokio::time::Instant) {
    match lately.filter(|r| now.duration_since(r.at) < RECOVERY_STABLE_AFTER) {
        Some(r) => (r.failures, now + backoff(r.failures)),
        None => (0, now),
    }
}

/// 1 s, 2 s, 4 s ... up to [`RECOVERY_BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(RECOVERY_BACKOFF_MAX)
}

/// Takes `replica` out of the view (its shard's requests go to the other replicas meanwhile),
/// stops its actors, and waits until its files are released (sled's lock goes with the last
/// reference; requests still holding one finish within their deadline).
async fn close(node: &Arc<Node>, replica: Arc<Shard>) {
    if node.view.local_shard(replica.id).is_some_and(|current| Arc::ptr_eq(&current, &replica)) {
        node.view.remove_replica(replica.id);
    }
    let _ = tokio::task::spawn_blocking(move || {
        replica.shutdown();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while Arc::strong_count(&replica) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await;
}

/// Opens the replica of `shard` from its disk and puts it in the view.
async fn open(node: &Arc<Node>, shard: u32, voters: Vec<rushes_cluster::NodeId>) -> Result<(), String> {
    let joining = !voters.contains(&node.node_id());
    let options = node.membership.options.clone();
    let data_dir = node.config.node.data_dir.clone();
    let metrics = node.metrics.clone();
    let outbox = node.net().cloned().map(|n| n as Arc<dyn RaftOutbox>);
    let opened = tokio::task::spawn_blocking(move || Shard::open_replica(&data_dir, shard, &voters, joining, &options, metrics, outbox))
        .await
        .map_err(|e| format!("the open task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    node.view.insert_replica(opened);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_up_to_the_maximum() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(6), Duration::from_secs(30));
        assert_eq!(backoff(60), Duration::from_secs(30));
    }

    #[test]
    fn a_replica_that_fails_again_soon_after_reopening_keeps_its_back_off() {
        let now = tokio::time::Instant::now();
        assert_eq!(first_attempt(None, now), (0, now), "a first failure is reopened at once");
        let lately = Reopened { at: now - Duration::from_secs(5), failures: 3 };
        assert_eq!(first_attempt(Some(lately), now), (3, now + Duration::from_secs(4)));
        let long_ago = Reopened { at: now - RECOVERY_STABLE_AFTER, failures: 3 };
        assert_eq!(first_attempt(Some(long_ago), now), (0, now), "a replica that ran a while starts over");
    }
}
