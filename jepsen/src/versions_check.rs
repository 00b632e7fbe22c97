//! The model-version workload's checker: version N of a model replaces every lower version on
//! its asset, atomically, and never goes back.
//!
//! From the history alone:
//! - **mixed**: an ok read that shows annotations of two versions at once, or only part of one
//!   version (a replacement is one batch, applied as one Raft command);
//! - **stale**: a strong read showing a version lower than one acknowledged before the read
//!   began (or nothing at all then);
//! - **phantom**: a read showing a version whose write failed definitely, or was never sent.
//!
//! The final reads (every node, after healing) must all show the same version, at least the
//! highest acknowledged one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Action, Op, Outcome, Validity};
use crate::workloads::{version_of, VERSION_ANNOTATIONS};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VersionsVerdict {
    pub valid: Option<Validity>,
    pub versions_acknowledged: u64,
    pub versions_unknown: u64,
    pub versions_failed: u64,
    pub reads: u64,
    pub strong_reads: u64,
    /// Final version per asset (from the final reads of every node).
    pub final_versions: BTreeMap<String, Option<u64>>,
    pub mixed: Vec<String>,
    pub stale: Vec<String>,
    pub phantom: Vec<String>,
    pub final_disagreement: Vec<String>,
}

/// Checks `ops`; reads starting at or after `final_reads_after_ns` are the final reads.
pub fn check(ops: &[Op], final_reads_after_ns: u64) -> VersionsVerdict {
    let mut verdict = VersionsVerdict::default();
    // asset → version → (outcome, ack end)
    let mut writes: BTreeMap<&str, BTreeMap<u64, (Outcome, u64)>> = BTreeMap::new();
    for op in ops {
        if let Action::Version { asset, version, .. } = &op.action {
            writes.entry(asset).or_default().insert(*version, (op.outcome, op.end_ns));
            match op.outcome {
                Outcome::Ok => verdict.versions_acknowledged += 1,
                Outcome::Info => verdict.versions_unknown += 1,
                Outcome::Fail => verdict.versions_failed += 1,
            }
        }
    }
    let mut finals: BTreeMap<String, BTreeSet<Option<u64>>> = BTreeMap::new();
    for op in ops {
        let Action::Read { asset, strong, seen } = &op.action else { continue };
        if op.outcome != Outcome::Ok {
            continue;
        }
        verdict.reads += 1;
        verdict.strong_reads += u64::from(*strong);
        let mut by_version: BTreeMap<u64, usize> = BTreeMap::new();
        for element in seen {
            match version_of(element) {
                Some(version) => *by_version.entry(version).or_default() += 1,
                None => verdict.phantom.push(format!("read {} of {asset} saw {element}, which no version wrote", op.index)),
            }
        }
        if by_version.len() > 1 || by_version.values().any(|count| *count as u64 != VERSION_ANNOTATIONS) {
            verdict.mixed.push(format!("read {} of {asset} (node {}) saw versions {by_version:?}", op.index, op.node));
        }
        let seen_version = by_version.keys().next_back().copied();
        let asset_writes = writes.get(asset.as_str());
        if let Some(version) = seen_version {
            match asset_writes.and_then(|w| w.get(&version)) {
                None => verdict.phantom.push(format!("read {} of {asset} saw version {version}, never written", op.index)),
                Some((Outcome::Fail, _)) => {
                    verdict.phantom.push(format!("read {} of {asset} saw version {version}, whose write was refused", op.index))
                }
                _ => {}
            }
        }
        if *strong {
            let newest_acked = asset_writes
                .into_iter()
                .flatten()
                .filter(|(_, (outcome, end))| *outcome == Outcome::Ok && *end < op.start_ns)
                .map(|(version, _)| *version)
                .max();
            if let Some(acked) = newest_acked {
                if seen_version.is_none_or(|seen| seen < acked) {
                    verdict.stale.push(format!(
                        "strong read {} of {asset} (node {}) saw {seen_version:?} after version {acked} was acknowledged",
                        op.index, op.node
                    ));
                }
            }
        }
        if op.start_ns >= final_reads_after_ns {
            finals.entry(asset.clone()).or_default().insert(seen_version);
        }
    }
    for (asset, versions) in &finals {
        let newest_acked = writes.get(asset.as_str()).into_iter().flatten().filter(|(_, (o, _))| *o == Outcome::Ok).map(|(v, _)| *v).max();
        if versions.len() != 1 {
            verdict.final_disagreement.push(format!("{asset}: the nodes' final reads show different versions {versions:?}"));
        }
        let shown = versions.iter().next_back().copied().flatten();
        if let Some(acked) = newest_acked {
            if shown.is_none_or(|v| v < acked) {
                verdict.final_disagreement.push(format!("{asset}: final version {shown:?} is below the acknowledged version {acked}"));
            }
        }
        verdict.final_versions.insert(asset.clone(), shown);
    }
    for list in [&mut verdict.mixed, &mut verdict.stale, &mut verdict.phantom] {
        list.truncate(20);
    }
    let invalid =
        !verdict.mixed.is_empty() || !verdict.stale.is_empty() || !verdict.phantom.is_empty() || !verdict.final_disagreement.is_empty();
    verdict.valid = Some(if invalid {
        Validity::Invalid
    } else if verdict.versions_acknowledged == 0 || finals.is_empty() {
        Validity::Unknown
    } else {
        Validity::Valid
    });
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(index: u64, version: u64, outcome: Outcome, start: u64, end: u64) -> Op {
        Op {
            index,
            process: 0,
            node: 1,
            action: Action::Version { asset: "ver-0".into(), model: "m".into(), version },
            outcome,
            start_ns: start,
            end_ns: end,
            error: None,
        }
    }

    fn read(index: u64, version: Option<u64>, strong: bool, start: u64, end: u64) -> Op {
        let seen = version.map(|v| (0..VERSION_ANNOTATIONS).map(|j| format!("ver-0/m{v}-{j}")).collect()).unwrap_or_default();
        Op {
            index,
            process: 1,
            node: 1,
            action: Action::Read { asset: "ver-0".into(), strong, seen },
            outcome: Outcome::Ok,
            start_ns: start,
            end_ns: end,
            error: None,
        }
    }

    #[test]
    fn replacing_versions_in_order_is_valid() {
        let ops = [
            write(0, 1, Outcome::Ok, 0, 10),
            read(1, Some(1), true, 11, 12),
            write(2, 2, Outcome::Ok, 13, 20),
            read(3, Some(2), true, 21, 22),
            read(4, Some(2), false, 100, 101),
        ];
        let verdict = check(&ops, 100);
        assert_eq!(verdict.valid, Some(Validity::Valid), "{verdict:?}");
        assert_eq!(verdict.final_versions["ver-0"], Some(2));
    }

    #[test]
    fn a_strong_read_of_an_older_version_is_stale() {
        let ops = [write(0, 1, Outcome::Ok, 0, 10), write(1, 2, Outcome::Ok, 11, 20), read(2, Some(1), true, 21, 22)];
        let verdict = check(&ops, 1_000);
        assert_eq!(verdict.valid, Some(Validity::Invalid));
        assert_eq!(verdict.stale.len(), 1, "{verdict:?}");
        // The same read, eventual, is allowed to lag.
        let ops = [write(0, 1, Outcome::Ok, 0, 10), write(1, 2, Outcome::Ok, 11, 20), read(2, Some(1), false, 21, 22)];
        assert!(check(&ops, 1_000).stale.is_empty());
    }

    #[test]
    fn two_versions_at_once_are_mixed_and_a_refused_version_is_a_phantom() {
        let mut mixed = read(1, Some(1), false, 11, 12);
        if let Action::Read { seen, .. } = &mut mixed.action {
            seen.push("ver-0/m2-0".into());
        }
        let ops = [write(0, 1, Outcome::Ok, 0, 10), write(2, 2, Outcome::Info, 0, 10), mixed];
        assert_eq!(check(&ops, 1_000).mixed.len(), 1);
        let ops = [write(0, 1, Outcome::Ok, 0, 10), write(1, 2, Outcome::Fail, 11, 12), read(2, Some(2), false, 21, 22)];
        assert_eq!(check(&ops, 1_000).phantom.len(), 1);
    }

    #[test]
    fn final_reads_must_agree_and_hold_the_newest_acknowledged_version() {
        let ops = [
            write(0, 1, Outcome::Ok, 0, 10),
            write(1, 2, Outcome::Info, 11, 20),
            read(2, Some(2), false, 100, 101),
            read(3, Some(1), false, 100, 101),
        ];
        let verdict = check(&ops, 100);
        assert_eq!(verdict.valid, Some(Validity::Invalid));
        assert_eq!(verdict.final_disagreement.len(), 1, "{verdict:?}");
        // An unknown write that took effect everywhere is fine.
        let ops = [
            write(0, 1, Outcome::Ok, 0, 10),
            write(1, 2, Outcome::Info, 11, 20),
            read(2, Some(2), false, 100, 101),
            read(3, Some(2), false, 100, 101),
        ];
        assert_eq!(check(&ops, 100).valid, Some(Validity::Valid));
    }
}
