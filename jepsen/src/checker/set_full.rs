//! Jepsen's "set-full" checker for the set workload: batches of elements are added, every asset is
//! read again and again, and each element that any add mentioned is classified by when it was
//! acknowledged and which reads saw it.
//!
//! An element is `asset/annotation_id`; its asset is the part before the first `/` (the whole string
//! if there is none). A read of asset A observes the presence or absence of A's elements only, and
//! only reads that completed (`ok`) observe anything.
//!
//! Times: a read "after" the ack of an element is one whose `start_ns` is at or after the `end_ns` of
//! the add that acknowledged it (the same real-time order as the linearizability checker uses: an op
//! that returned at `t` precedes one invoked at `t`).
//!
//! Classes of every element (exactly one of the first seven, plus the flags `stale` and
//! `stale_eventual` for acknowledged elements):
//!
//! - `ok`: acknowledged and not lost, with at least one ok read of its asset after the ack.
//! - `lost`: acknowledged, and some *authoritative* read (strong, or started at or after
//!   [`SetOptions::final_reads_after_ns`]) started after both the ack and the end of the last read
//!   that saw it, and no read after that saw it again. A violation.
//! - `never_read`: acknowledged, but no ok read of its asset started after the ack: nothing to tell.
//! - `recovered`: the add was `info` (indeterminate) and a read saw it.
//! - `indeterminate_absent`: the add was `info` and no read saw it (it did not happen: fine).
//! - `failed`: the add was `fail` and no read saw it (fine).
//! - `unexpected` (a violation): the add was `fail` yet a read saw it; also, counted with it, elements
//!   no add mentioned that a read returned ("phantom"), elements a read of another asset returned
//!   ("wrong_asset"), and elements a read returned that had ended before any add of them started
//!   ("seen_before_add").
//! - flag `stale`: acknowledged and missing from some strong read that started after the ack, even if
//!   a later read sees it again. A violation: a linearizable read must see every acknowledged write.
//! - flag `stale_eventual`: acknowledged, missing from some eventual read after the ack and seen by a
//!   later read. Informational: eventual reads may lag.
//!
//! An element in several adds (a retried batch) is acknowledged if any of them is `ok` (its ack is
//! the earliest `end_ns` of those); otherwise it is `info` if any is `info`; otherwise `fail`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::history::{Action, Op, Outcome, Validity};

/// Examples kept per violation class.
pub const MAX_EXAMPLES: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetOptions {
    /// Reads that start at or after this time are the final reads, taken after healing and
    /// convergence: they count as authoritative for `lost` even when eventual. `None`: only strong
    /// reads are authoritative.
    pub final_reads_after_ns: Option<u64>,
}

/// Quantiles of a distribution in milliseconds (nearest rank); all 0 when there was no sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// Nearest-rank quantiles of `values` (reordered in place).
    pub fn of(values: &mut [f64]) -> Quantiles {
        if values.is_empty() {
            return Quantiles::default();
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let rank = |q: f64| {
            let r = (q * values.len() as f64).ceil() as usize;
            values[r.clamp(1, values.len()) - 1]
        };
        Quantiles { p50: rank(0.50), p95: rank(0.95), p99: rank(0.99), max: values[values.len() - 1] }
    }
}

/// One element showing a violation, with the operations (their `Op::index`) that show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetExample {
    pub element: String,
    /// The add that acknowledged it (the earliest ack) or, when none did, the first add that
    /// mentioned it; `None` for an element no add mentioned.
    pub add_op: Option<u64>,
    /// The read showing the problem: for `lost`, the first authoritative read that missed it after
    /// its last observation; for `stale`, the first strong read after the ack that missed it; for
    /// `unexpected`, the first read that returned it.
    pub read_op: Option<u64>,
    /// For `lost`: the last read that saw it, if any did.
    pub last_seen_op: Option<u64>,
    /// Milliseconds from the ack (`end_ns` of the acknowledging add) to the start of `read_op`, when
    /// both exist.
    pub ms_after_ack: Option<f64>,
    /// What the example shows: `lost`, `stale`, `failed_add_seen`, `phantom`, `wrong_asset`,
    /// `seen_before_add`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetVerdict {
    /// Invalid if anything was lost, stale or unexpected; Unknown if nothing was acknowledged or no
    /// acknowledged element was read after its ack; else Valid.
    pub valid: Validity,
    /// Distinct elements that any add mentioned.
    pub attempted: usize,
    /// Elements that an `ok` add acknowledged: `ok + lost + never_read`.
    pub acknowledged: usize,
    pub ok: usize,
    pub lost: usize,
    /// Acknowledged elements missing from a strong read after the ack (they may also be ok or lost).
    pub stale: usize,
    /// Acknowledged elements missing from an eventual read after the ack and seen later (fine).
    pub stale_eventual: usize,
    pub recovered: usize,
    /// Distinct elements with any `unexpected` reason.
    pub unexpected: usize,
    pub never_read: usize,
    pub indeterminate_absent: usize,
    pub failed: usize,
    /// `ok` reads.
    pub reads: usize,
    /// `ok` strong reads.
    pub strong_reads: usize,
    pub lost_examples: Vec<SetExample>,
    pub stale_examples: Vec<SetExample>,
    pub unexpected_examples: Vec<SetExample>,
    /// For `ok` elements: from the ack to the start of the first read of the final run of reads that
    /// all saw it (reads of either kind). Elements whose last read missed it are left out.
    pub stable_latency_ms: Quantiles,
}

/// The part of an element before its first `/`.
pub fn asset_of(element: &str) -> &str {
    element.split_once('/').map_or(element, |(asset, _)| asset)
}

/// An ok read of one asset.
struct ReadRef {
    /// `Op::index`.
    op: u64,
    start: u64,
    end: u64,
    strong: bool,
    authoritative: bool,
}

/// A read and the elements it returned.
type ReadWithSeen<'a> = (ReadRef, &'a [String]);

struct Element<'a> {
    name: &'a str,
    asset: &'a str,
    /// Earliest `end_ns` of an ok add, with that add's `Op::index`.
    ack: Option<(u64, u64)>,
    any_info: bool,
    first_add_op: u64,
    min_add_start: u64,
    /// Positions, in its asset's sorted reads, of the reads that saw it (ascending, distinct).
    seen: Vec<u32>,
}

/// Distinct unexpected elements, and examples (the first few of each source, sorted and cut at the end).
#[derive(Default)]
struct Unexpected<'a> {
    elements: HashSet<&'a str>,
    examples: Vec<SetExample>,
}

impl<'a> Unexpected<'a> {
    fn note(&mut self, element: &'a str, example: SetExample) {
        let _ = self.elements.insert(element);
        if self.examples.len() < 4 * MAX_EXAMPLES {
            self.examples.push(example);
        }
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// First position `>= from` in `kind` (ascending read positions of one kind) that is not in `seen`.
/// Costs O(|seen| + log), since every step but the last matches an entry of `seen`.
fn first_miss(kind: &[u32], from: usize, seen: &[u32]) -> Option<u32> {
    let mut k = kind.partition_point(|&p| (p as usize) < from);
    let mut s = seen.partition_point(|&p| (p as usize) < from);
    while k < kind.len() {
        let p = kind[k];
        while s < seen.len() && seen[s] < p {
            s += 1;
        }
        if s < seen.len() && seen[s] == p {
            k += 1;
            s += 1;
        } else {
            return Some(p);
        }
    }
    None
}

/// Classifies every element of the set workload in `ops`; see the module documentation.
pub fn check(ops: &[Op], options: &SetOptions) -> SetVerdict {
    // Elements, in order of first mention.
    let mut element_ids: HashMap<&str, u32> = HashMap::new();
    let mut elements: Vec<Element> = Vec::new();
    for op in ops {
        let Action::Add { elements: batch } = &op.action else { continue };
        for name in batch {
            let id = *element_ids.entry(name.as_str()).or_insert_with(|| {
                elements.push(Element {
                    name,
                    asset: asset_of(name),
                    ack: None,
                    any_info: false,
                    first_add_op: op.index,
                    min_add_start: op.start_ns,
                    seen: Vec::new(),
                });
                (elements.len() - 1) as u32
            });
            let e = &mut elements[id as usize];
            e.min_add_start = e.min_add_start.min(op.start_ns);
            match op.outcome {
                Outcome::Ok => {
                    if !matches!(e.ack, Some((end, _)) if end <= op.end_ns) {
                        e.ack = Some((op.end_ns, op.index));
                    }
                }
                Outcome::Info => e.any_info = true,
                Outcome::Fail => {}
            }
        }
    }

    // Ok reads by asset (assets in order of first appearance), sorted by start.
    let mut asset_ids: HashMap<&str, usize> = HashMap::new();
    let mut assets: Vec<(&str, Vec<ReadWithSeen>)> = Vec::new();
    let (mut reads, mut strong_reads) = (0, 0);
    for op in ops {
        let Action::Read { asset, strong, seen } = &op.action else { continue };
        if op.outcome != Outcome::Ok {
            continue;
        }
        reads += 1;
        strong_reads += usize::from(*strong);
        let id = *asset_ids.entry(asset.as_str()).or_insert_with(|| {
            assets.push((asset.as_str(), Vec::new()));
            assets.len() - 1
        });
        let authoritative = *strong || options.final_reads_after_ns.is_some_and(|t| op.start_ns >= t);
        assets[id].1.push((ReadRef { op: op.index, start: op.start_ns, end: op.end_ns, strong: *strong, authoritative }, seen.as_slice()));
    }

    let mut unexpected = Unexpected::default();

    // Presence lists, phantoms and wrong-asset returns.
    struct AssetReads {
        reads: Vec<ReadRef>,
        strong: Vec<u32>,
        eventual: Vec<u32>,
        /// `next_authoritative[i]`: the first authoritative position `>= i` (`len` if none).
        next_authoritative: Vec<u32>,
    }
    let mut asset_reads: Vec<AssetReads> = Vec::with_capacity(assets.len());
    for (asset, mut list) in assets {
        list.sort_by_key(|(r, _)| (r.start, r.end, r.op));
        for (pos, (read, seen)) in list.iter().enumerate() {
            for name in seen.iter() {
                match element_ids.get(name.as_str()) {
                    Some(&id) => {
                        let e = &mut elements[id as usize];
                        if e.asset == asset {
                            if e.seen.last() != Some(&(pos as u32)) {
                                e.seen.push(pos as u32);
                            }
                        } else if !unexpected.elements.contains(e.name) {
                            let example = SetExample {
                                element: name.clone(),
                                add_op: Some(e.ack.map_or(e.first_add_op, |(_, op)| op)),
                                read_op: Some(read.op),
                                last_seen_op: None,
                                ms_after_ack: None,
                                reason: "wrong_asset".into(),
                            };
                            unexpected.note(e.name, example);
                        }
                    }
                    None => {
                        if !unexpected.elements.contains(name.as_str()) {
                            let example = SetExample {
                                element: name.clone(),
                                add_op: None,
                                read_op: Some(read.op),
                                last_seen_op: None,
                                ms_after_ack: None,
                                reason: "phantom".into(),
                            };
                            unexpected.note(name, example);
                        }
                    }
                }
            }
        }
        let reads: Vec<ReadRef> = list.into_iter().map(|(r, _)| r).collect();
        let strong = (0..reads.len() as u32).filter(|&p| reads[p as usize].strong).collect();
        let eventual = (0..reads.len() as u32).filter(|&p| !reads[p as usize].strong).collect();
        let mut next_authoritative = vec![reads.len() as u32; reads.len() + 1];
        for p in (0..reads.len()).rev() {
            next_authoritative[p] = if reads[p].authoritative { p as u32 } else { next_authoritative[p + 1] };
        }
        asset_reads.push(AssetReads { reads, strong, eventual, next_authoritative });
    }
    let no_reads = AssetReads { reads: Vec::new(), strong: Vec::new(), eventual: Vec::new(), next_authoritative: vec![0] };

    let mut verdict = SetVerdict {
        valid: Validity::Unknown,
        attempted: elements.len(),
        acknowledged: 0,
        ok: 0,
        lost: 0,
        stale: 0,
        stale_eventual: 0,
        recovered: 0,
        unexpected: 0,
        never_read: 0,
        indeterminate_absent: 0,
        failed: 0,
        reads,
        strong_reads,
        lost_examples: Vec::new(),
        stale_examples: Vec::new(),
        unexpected_examples: Vec::new(),
        stable_latency_ms: Quantiles::default(),
    };
    let mut stable = Vec::new();

    for e in &elements {
        let a = asset_ids.get(e.asset).map_or(&no_reads, |&id| &asset_reads[id]);
        let r = &a.reads;
        let seen = &e.seen;

        if !seen.is_empty() {
            let earliest = seen.iter().map(|&p| &r[p as usize]).min_by_key(|read| (read.end, read.op)).expect("not empty");
            if earliest.end < e.min_add_start {
                let example = SetExample {
                    element: e.name.to_string(),
                    add_op: Some(e.ack.map_or(e.first_add_op, |(_, op)| op)),
                    read_op: Some(earliest.op),
                    last_seen_op: None,
                    ms_after_ack: None,
                    reason: "seen_before_add".into(),
                };
                unexpected.note(e.name, example);
            }
        }

        let Some((ack, ack_op)) = e.ack else {
            match (seen.first(), e.any_info) {
                (Some(_), true) => verdict.recovered += 1,
                (None, true) => verdict.indeterminate_absent += 1,
                (None, false) => verdict.failed += 1,
                (Some(&p), false) => {
                    let example = SetExample {
                        element: e.name.to_string(),
                        add_op: Some(e.first_add_op),
                        read_op: Some(r[p as usize].op),
                        last_seen_op: None,
                        ms_after_ack: None,
                        reason: "failed_add_seen".into(),
                    };
                    unexpected.note(e.name, example);
                }
            }
            continue;
        };

        verdict.acknowledged += 1;
        let first = r.partition_point(|read| read.start < ack);
        if first == r.len() {
            verdict.never_read += 1;
            continue;
        }

        if let Some(miss) = first_miss(&a.strong, first, seen) {
            let read = &r[miss as usize];
            verdict.stale += 1;
            if verdict.stale_examples.len() < MAX_EXAMPLES {
                verdict.stale_examples.push(SetExample {
                    element: e.name.to_string(),
                    add_op: Some(ack_op),
                    read_op: Some(read.op),
                    last_seen_op: None,
                    ms_after_ack: Some(ms(read.start - ack)),
                    reason: "stale".into(),
                });
            }
        }
        if let Some(miss) = first_miss(&a.eventual, first, seen) {
            if seen.last().is_some_and(|&last| last > miss) {
                verdict.stale_eventual += 1;
            }
        }

        // Lost: an authoritative read after both the ack and the end of the last read that saw it
        // (every read after the last one that saw it missed it, by definition of "last").
        let (after, last_seen) = match seen.last() {
            Some(&last) => {
                let last_read = &r[last as usize];
                let threshold = ack.max(last_read.end);
                (r.partition_point(|read| read.start < threshold).max(last as usize + 1), Some(last_read))
            }
            None => (first, None),
        };
        let witness = a.next_authoritative[after.min(r.len())] as usize;
        if witness < r.len() {
            let read = &r[witness];
            verdict.lost += 1;
            if verdict.lost_examples.len() < MAX_EXAMPLES {
                verdict.lost_examples.push(SetExample {
                    element: e.name.to_string(),
                    add_op: Some(ack_op),
                    read_op: Some(read.op),
                    last_seen_op: last_seen.map(|l| l.op),
                    ms_after_ack: Some(ms(read.start - ack)),
                    reason: "lost".into(),
                });
            }
            continue;
        }

        verdict.ok += 1;
        // The final run of reads that all saw it, within the reads after the ack.
        let (mut k, mut j) = (r.len(), seen.len());
        while k > first && j > 0 && seen[j - 1] as usize == k - 1 {
            k -= 1;
            j -= 1;
        }
        if k < r.len() {
            stable.push(ms(r[k].start - ack));
        }
    }

    unexpected.examples.sort_by(|x, y| (x.read_op, &x.element).cmp(&(y.read_op, &y.element)));
    unexpected.examples.truncate(MAX_EXAMPLES);
    verdict.unexpected = unexpected.elements.len();
    verdict.unexpected_examples = unexpected.examples;
    verdict.stable_latency_ms = Quantiles::of(&mut stable);
    verdict.valid = if verdict.lost > 0 || verdict.stale > 0 || verdict.unexpected > 0 {
        Validity::Invalid
    } else if verdict.acknowledged == 0 || verdict.never_read == verdict.acknowledged {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Builds histories; `index` is the position in `ops`.
    #[derive(Default)]
    struct H {
        ops: Vec<Op>,
    }

    impl H {
        fn push(&mut self, action: Action, outcome: Outcome, start_ms: u64, end_ms: u64) -> u64 {
            let index = self.ops.len() as u64;
            self.ops.push(Op {
                index,
                process: index % 4,
                node: 0,
                action,
                outcome,
                start_ns: start_ms * MS,
                end_ns: end_ms * MS,
                error: None,
            });
            index
        }
        fn add(&mut self, elements: &[&str], outcome: Outcome, start_ms: u64, end_ms: u64) -> u64 {
            self.push(Action::Add { elements: elements.iter().map(|s| s.to_string()).collect() }, outcome, start_ms, end_ms)
        }
        fn read(&mut self, asset: &str, strong: bool, seen: &[&str], start_ms: u64, end_ms: u64) -> u64 {
            let action = Action::Read { asset: asset.into(), strong, seen: seen.iter().map(|s| s.to_string()).collect() };
            self.push(action, Outcome::Ok, start_ms, end_ms)
        }
        fn check(&self) -> SetVerdict {
            check(&self.ops, &SetOptions::default())
        }
    }

    #[test]
    fn asset_is_the_part_before_the_first_slash() {
        assert_eq!(asset_of("cam-1/ann-2/x"), "cam-1");
        assert_eq!(asset_of("cam-1"), "cam-1");
        assert_eq!(asset_of("/x"), "");
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(Quantiles::of(&mut values), Quantiles { p50: 50.0, p95: 95.0, p99: 99.0, max: 100.0 });
        assert_eq!(Quantiles::of(&mut [7.0]), Quantiles { p50: 7.0, p95: 7.0, p99: 7.0, max: 7.0 });
        assert_eq!(Quantiles::of(&mut []), Quantiles::default());
    }

    #[test]
    fn everything_acknowledged_and_read_is_valid() {
        let mut h = H::default();
        h.add(&["a/1", "a/2", "b/1"], Outcome::Ok, 0, 10);
        h.read("a", true, &["a/1", "a/2"], 20, 25);
        h.read("b", false, &["b/1"], 20, 25);
        let v = h.check();
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!((v.attempted, v.acknowledged, v.ok, v.lost, v.stale, v.unexpected, v.never_read), (3, 3, 3, 0, 0, 0, 0));
        assert_eq!((v.reads, v.strong_reads), (2, 1));
        assert_eq!(v.stable_latency_ms, Quantiles { p50: 10.0, p95: 10.0, p99: 10.0, max: 10.0 });
    }

    #[test]
    fn an_element_seen_then_missing_from_a_later_strong_read_is_lost() {
        let mut h = H::default();
        let add = h.add(&["a/1", "a/2"], Outcome::Ok, 0, 10);
        let saw = h.read("a", true, &["a/1", "a/2"], 20, 30);
        let missed = h.read("a", true, &["a/2"], 40, 45);
        h.read("a", false, &["a/2"], 50, 55);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!((v.ok, v.lost, v.stale), (1, 1, 1));
        let example = &v.lost_examples[0];
        assert_eq!(example.element, "a/1");
        assert_eq!((example.add_op, example.read_op, example.last_seen_op), (Some(add), Some(missed), Some(saw)));
        assert_eq!(example.ms_after_ack, Some(30.0));
        assert_eq!(v.stale_examples[0].read_op, Some(missed));
    }

    #[test]
    fn an_element_never_seen_after_its_ack_is_lost_and_stale() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        let read = h.read("a", true, &[], 12, 20);
        let v = h.check();
        assert_eq!((v.valid, v.lost, v.stale, v.ok), (Validity::Invalid, 1, 1, 0));
        assert_eq!(v.lost_examples[0].read_op, Some(read));
        assert_eq!(v.lost_examples[0].last_seen_op, None);
        assert_eq!(v.stale_examples[0].ms_after_ack, Some(2.0));
    }

    #[test]
    fn a_strong_read_missing_an_element_that_reappears_is_stale_but_not_lost() {
        let mut h = H::default();
        let add = h.add(&["a/1"], Outcome::Ok, 0, 10);
        let missed = h.read("a", true, &[], 15, 20);
        h.read("a", true, &["a/1"], 25, 30);
        let v = h.check();
        assert_eq!((v.valid, v.stale, v.lost, v.ok), (Validity::Invalid, 1, 0, 1));
        let example = &v.stale_examples[0];
        assert_eq!((example.add_op, example.read_op, example.ms_after_ack), (Some(add), Some(missed), Some(5.0)));
        // The stable run starts at the read after the miss.
        assert_eq!(v.stable_latency_ms.max, 15.0);
    }

    #[test]
    fn a_lagging_eventual_read_is_only_informational() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.read("a", false, &[], 15, 20);
        h.read("a", false, &["a/1"], 25, 30);
        let v = h.check();
        assert_eq!((v.valid, v.stale, v.stale_eventual, v.lost, v.ok), (Validity::Valid, 0, 1, 0, 1));
    }

    #[test]
    fn an_eventual_miss_at_the_end_is_lost_only_in_the_final_reads() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.read("a", false, &["a/1"], 15, 20);
        h.read("a", false, &[], 100, 110);
        let v = h.check();
        assert_eq!((v.valid, v.lost, v.ok, v.stale_eventual), (Validity::Valid, 0, 1, 0));
        // The last read missed it: no stable run.
        assert_eq!(v.stable_latency_ms, Quantiles::default());

        let v = check(&h.ops, &SetOptions { final_reads_after_ns: Some(100 * MS) });
        assert_eq!((v.valid, v.lost, v.ok), (Validity::Invalid, 1, 0));
        let v = check(&h.ops, &SetOptions { final_reads_after_ns: Some(101 * MS) });
        assert_eq!((v.valid, v.lost), (Validity::Valid, 0));
    }

    #[test]
    fn reads_concurrent_with_the_add_or_with_a_presence_prove_nothing() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        // Started before the ack: may be ordered before the add.
        h.read("a", true, &[], 5, 15);
        // Saw it, from 20 to 40; a strong read starting at 30 missing it is stale (it started after
        // the ack), but it began before the presence ended so it does not make it lost.
        h.read("a", true, &["a/1"], 20, 40);
        h.read("a", true, &[], 30, 35);
        let v = h.check();
        assert_eq!((v.lost, v.stale, v.ok), (0, 1, 1));

        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.read("a", true, &[], 5, 15);
        h.read("a", true, &["a/1"], 20, 40);
        let v = h.check();
        assert_eq!((v.valid, v.lost, v.stale, v.ok), (Validity::Valid, 0, 0, 1));
    }

    #[test]
    fn a_read_starting_exactly_at_the_ack_counts() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.read("a", true, &[], 10, 12);
        let v = h.check();
        assert_eq!((v.stale, v.lost), (1, 1));
    }

    #[test]
    fn reads_of_other_assets_do_not_observe_an_element() {
        let mut h = H::default();
        h.add(&["a/1", "b/1"], Outcome::Ok, 0, 10);
        h.read("b", true, &["b/1"], 20, 30);
        h.read("a", true, &["a/1"], 20, 30);
        h.read("b", true, &["b/1"], 40, 50);
        let v = h.check();
        assert_eq!((v.valid, v.ok, v.lost, v.stale), (Validity::Valid, 2, 0, 0));
    }

    #[test]
    fn only_ok_reads_observe() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.read("a", true, &["a/1"], 15, 20);
        h.push(Action::Read { asset: "a".into(), strong: true, seen: vec![] }, Outcome::Fail, 25, 30);
        h.push(Action::Read { asset: "a".into(), strong: true, seen: vec![] }, Outcome::Info, 25, 30);
        let v = h.check();
        assert_eq!((v.valid, v.reads, v.lost, v.stale), (Validity::Valid, 1, 0, 0));
    }

    #[test]
    fn indeterminate_adds_may_or_may_not_have_happened() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Info, 0, 10);
        h.add(&["a/2"], Outcome::Info, 0, 10);
        h.add(&["a/3"], Outcome::Ok, 0, 10);
        h.read("a", true, &["a/1", "a/3"], 20, 30);
        h.read("a", true, &["a/3"], 40, 50);
        let v = h.check();
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!((v.attempted, v.acknowledged, v.recovered, v.indeterminate_absent, v.ok), (3, 1, 1, 1, 1));
    }

    #[test]
    fn a_failed_add_that_a_read_returns_is_unexpected() {
        let mut h = H::default();
        let add = h.add(&["a/1", "a/2"], Outcome::Fail, 0, 10);
        h.add(&["a/3"], Outcome::Ok, 0, 10);
        let read = h.read("a", true, &["a/1", "a/3"], 20, 30);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!((v.unexpected, v.failed, v.ok), (1, 1, 1));
        let example = &v.unexpected_examples[0];
        assert_eq!((example.element.as_str(), example.add_op, example.read_op), ("a/1", Some(add), Some(read)));
        assert_eq!(example.reason, "failed_add_seen");
    }

    #[test]
    fn phantoms_and_elements_of_other_assets_are_unexpected() {
        let mut h = H::default();
        h.add(&["a/1", "b/1"], Outcome::Ok, 0, 10);
        let first = h.read("a", true, &["a/1", "a/ghost"], 20, 30);
        let second = h.read("a", true, &["a/1", "a/ghost", "b/1"], 40, 50);
        h.read("b", true, &["b/1"], 40, 50);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!((v.unexpected, v.ok, v.lost), (2, 2, 0));
        let reasons: Vec<(&str, &str, Option<u64>)> =
            v.unexpected_examples.iter().map(|x| (x.element.as_str(), x.reason.as_str(), x.read_op)).collect();
        assert_eq!(reasons, vec![("a/ghost", "phantom", Some(first)), ("b/1", "wrong_asset", Some(second))]);
    }

    #[test]
    fn an_element_read_before_any_add_of_it_started_is_unexpected() {
        let mut h = H::default();
        let read = h.read("a", false, &["a/1"], 0, 5);
        h.add(&["a/1"], Outcome::Ok, 10, 20);
        h.read("a", true, &["a/1"], 30, 40);
        let v = h.check();
        assert_eq!((v.valid, v.unexpected, v.ok), (Validity::Invalid, 1, 1));
        assert_eq!(v.unexpected_examples[0].reason, "seen_before_add");
        assert_eq!(v.unexpected_examples[0].read_op, Some(read));
    }

    #[test]
    fn unknown_when_nothing_acknowledged_or_nothing_read_after_acks() {
        assert_eq!(H::default().check().valid, Validity::Unknown);

        let mut h = H::default();
        h.add(&["a/1"], Outcome::Info, 0, 10);
        h.add(&["a/2"], Outcome::Fail, 0, 10);
        h.read("a", true, &[], 20, 30);
        let v = h.check();
        assert_eq!((v.valid, v.indeterminate_absent, v.failed), (Validity::Unknown, 1, 1));

        let mut h = H::default();
        h.read("a", true, &[], 0, 5);
        h.add(&["a/1"], Outcome::Ok, 10, 20);
        h.add(&["b/1"], Outcome::Ok, 10, 20);
        h.read("a", true, &[], 15, 30);
        let v = h.check();
        assert_eq!((v.valid, v.never_read, v.acknowledged), (Validity::Unknown, 2, 2));
    }

    #[test]
    fn a_retried_batch_is_acknowledged_by_its_earliest_ok_add() {
        let mut h = H::default();
        h.add(&["a/1", "a/2"], Outcome::Info, 0, 10);
        h.add(&["a/1", "a/2"], Outcome::Ok, 10, 50);
        let early = h.add(&["a/1"], Outcome::Ok, 12, 30);
        h.add(&["a/2"], Outcome::Fail, 12, 14);
        // Between the two acks of a/1 a strong read misses it: stale relative to the earliest ack.
        h.read("a", true, &["a/2"], 35, 40);
        h.read("a", true, &["a/1", "a/2"], 60, 70);
        let v = h.check();
        assert_eq!((v.attempted, v.acknowledged, v.ok, v.stale, v.lost, v.unexpected), (2, 2, 2, 1, 0, 0));
        assert_eq!(v.stale_examples[0].add_op, Some(early));
        assert_eq!(v.stale_examples[0].ms_after_ack, Some(5.0));
    }

    #[test]
    fn stable_latency_is_measured_to_the_start_of_the_final_run_of_presence() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.add(&["a/2"], Outcome::Ok, 0, 20);
        h.read("a", false, &["a/1"], 30, 35);
        h.read("a", false, &["a/2"], 40, 45);
        h.read("a", false, &["a/1", "a/2"], 50, 55);
        h.read("a", true, &["a/1", "a/2"], 60, 65);
        let v = h.check();
        assert_eq!((v.valid, v.ok, v.stale_eventual), (Validity::Valid, 2, 2));
        // a/1: stable from the read at 50 (40 ms); a/2: from the read at 40 (20 ms).
        assert_eq!((v.stable_latency_ms.p50, v.stable_latency_ms.max), (20.0, 40.0));
    }

    #[test]
    fn examples_are_capped() {
        let mut h = H::default();
        let names: Vec<String> = (0..50).map(|i| format!("a/{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        h.add(&refs, Outcome::Ok, 0, 10);
        h.read("a", true, &[], 20, 30);
        h.read("a", true, &["a/ghost-1", "a/ghost-2"], 20, 30);
        let v = h.check();
        assert_eq!((v.lost, v.stale, v.unexpected), (50, 50, 2));
        assert_eq!((v.lost_examples.len(), v.stale_examples.len(), v.unexpected_examples.len()), (MAX_EXAMPLES, MAX_EXAMPLES, 2));
        assert_eq!(v.lost_examples[0].element, "a/0");
    }

    #[test]
    fn the_verdict_round_trips_through_json() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.read("a", true, &[], 20, 30);
        let v = h.check();
        let text = serde_json::to_string(&v).unwrap();
        assert!(text.contains(r#""valid":"invalid""#), "{text}");
        assert_eq!(serde_json::from_str::<SetVerdict>(&text).unwrap(), v);
    }

    /// 200k elements over 2,000 assets in 20k batches, 50k reads (a quarter strong); one element in
    /// 10,000 is dropped from every read after the 30th of its asset.
    #[test]
    fn two_hundred_thousand_elements_and_fifty_thousand_reads_are_quick() {
        let (assets, per_asset, reads_per_asset) = (2_000u64, 100u64, 25u64);
        let mut ops = Vec::new();
        let name = |asset: u64, i: u64| format!("asset-{asset}/ann-{i}");
        for batch in 0..(assets * per_asset / 10) {
            let elements = (0..10).map(|k| batch * 10 + k).map(|n| name(n % assets, n / assets)).collect();
            let (start_ns, end_ns) = (batch * 1_000, batch * 1_000 + 500);
            let outcome = if batch % 97 == 0 { Outcome::Info } else { Outcome::Ok };
            ops.push(Op {
                index: ops.len() as u64,
                process: batch % 8,
                node: 0,
                action: Action::Add { elements },
                outcome,
                start_ns,
                end_ns,
                error: None,
            });
        }
        let after = ops.last().unwrap().end_ns;
        let mut expected_lost = 0;
        for r in 0..reads_per_asset {
            for asset in 0..assets {
                let seen = (0..per_asset).filter(|&i| r < 20 || (asset * per_asset + i) % 10_000 != 7).map(|i| name(asset, i)).collect();
                let start_ns = after + (r * assets + asset) * 1_000;
                let action = Action::Read { asset: format!("asset-{asset}"), strong: asset % 4 == 0, seen };
                ops.push(Op {
                    index: ops.len() as u64,
                    process: 9,
                    node: 0,
                    action,
                    outcome: Outcome::Ok,
                    start_ns,
                    end_ns: start_ns + 900,
                    error: None,
                });
            }
        }
        for n in 0..assets * per_asset {
            let (asset, i) = (n % assets, n / assets);
            if (asset * per_asset + i) % 10_000 == 7 && asset % 4 == 0 && (n / 10) % 97 != 0 {
                expected_lost += 1;
            }
        }
        let v = check(&ops, &SetOptions::default());
        assert_eq!((v.attempted, v.reads), (200_000, 50_000));
        assert_eq!(v.lost, expected_lost);
        assert!(expected_lost > 0);
        assert_eq!(v.valid, Validity::Invalid);
    }
}
