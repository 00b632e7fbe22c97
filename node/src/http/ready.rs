//! `GET /ready`: whether this node should take traffic now. `/health` says the process is
//! alive (liveness); this says every replica it holds can serve fresh results (readiness): a
//! load balancer or an orchestrator waits for it after a start, a restore or a move.

use std::sync::atomic::Ordering;

use crate::shard::Shard;

/// What readiness looks at in one local replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReadiness {
    pub shard: u32,
    /// The leader this replica knows of (0: none).
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub indexed: u64,
    pub failure: Option<String>,
    pub disk_below_floor: bool,
}

impl ReplicaReadiness {
    pub fn of(replica: &Shard) -> ReplicaReadiness {
        let progress = &replica.progress;
        ReplicaReadiness {
            shard: replica.id,
            leader: progress.leader.load(Ordering::Acquire),
            commit: progress.commit.load(Ordering::Acquire),
            applied: progress.applied.load(Ordering::Acquire),
            indexed: progress.indexed.load(Ordering::Acquire),
            failure: progress.failure(),
            disk_below_floor: !replica.disk.has_room(),
        }
    }
}

/// Why a replica is not ready to serve, in words an operator acts on; empty when it is.
pub fn not_ready_reasons(replica: &ReplicaReadiness, max_lag_entries: u64) -> Vec<String> {
    let shard = replica.shard;
    let mut reasons = Vec::new();
    if let Some(cause) = &replica.failure {
        reasons.push(format!("shard {shard}: the replica stopped after a failure ({cause}); it is reopened from its disk automatically"));
    }
    if replica.disk_below_floor {
        reasons
            .push(format!("shard {shard}: the disk is below limits.min_free_disk_bytes; the replica applies nothing until space returns"));
    }
    if replica.leader == 0 {
        reasons.push(format!("shard {shard}: no known leader (an election, or this node is cut off from the group)"));
    }
    let apply_lag = replica.commit.saturating_sub(replica.applied);
    if apply_lag > max_lag_entries {
        reasons.push(format!(
            "shard {shard}: {apply_lag} committed log entries not applied yet (commit {}, applied {}; http.ready_max_lag_entries = {max_lag_entries})",
            replica.commit, replica.applied
        ));
    }
    let index_lag = replica.applied.saturating_sub(replica.indexed);
    if index_lag > max_lag_entries {
        reasons.push(format!(
            "shard {shard}: {index_lag} applied log entries not indexed yet (applied {}, indexed {}; http.ready_max_lag_entries = {max_lag_entries})",
            replica.applied, replica.indexed
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caught_up() -> ReplicaReadiness {
        ReplicaReadiness { shard: 3, leader: 2, commit: 5_000, applied: 5_000, indexed: 5_000, failure: None, disk_below_floor: false }
    }

    #[test]
    fn a_caught_up_replica_with_a_leader_is_ready() {
        assert!(not_ready_reasons(&caught_up(), 1_000).is_empty());
        let within = ReplicaReadiness { applied: 4_000, indexed: 3_000, ..caught_up() };
        assert!(not_ready_reasons(&within, 1_000).is_empty(), "lags equal to the bound are ready");
    }

    #[test]
    fn each_cause_is_named_with_its_shard() {
        let cases = [
            (ReplicaReadiness { leader: 0, ..caught_up() }, "no known leader"),
            (ReplicaReadiness { applied: 3_999, indexed: 3_999, ..caught_up() }, "1001 committed log entries not applied"),
            (ReplicaReadiness { indexed: 3_000, ..caught_up() }, "2000 applied log entries not indexed"),
            (ReplicaReadiness { failure: Some("i/o: disk".into()), ..caught_up() }, "stopped after a failure (i/o: disk)"),
            (ReplicaReadiness { disk_below_floor: true, ..caught_up() }, "limits.min_free_disk_bytes"),
        ];
        for (replica, expected) in cases {
            let reasons = not_ready_reasons(&replica, 1_000);
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            assert!(reasons[0].starts_with("shard 3: ") && reasons[0].contains(expected), "{reasons:?} lacks {expected:?}");
        }
    }
}
