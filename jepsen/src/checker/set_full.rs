//! Jepsen's "set-full" checker for the set workload: batches of elements are added, assets and
//! single elements are read again and again, and each element that any add mentioned is classified
//! by when it was acknowledged and which reads saw it.
//!
//! An element is `asset/annotation_id`; its asset is the part before the first `/` (the whole string
//! if there is none). Two kinds of read observe elements, and only reads that completed (`ok`)
//! observe anything:
//!
//! - a full-asset read ([`Action::Read`], the asset's fused buckets) of asset A observes the presence
//!   or absence of every element of A, and of A's elements only;
//! - a lookup ([`Action::Lookup`]: an annotation `GET`, or a search for a word only one element's
//!   text holds) observes the presence or absence of exactly the elements it names, and of no other
//!   element, not even of the same asset.
//!
//! The reads of an element are the ok full-asset reads of its asset and the ok lookups naming it,
//! ordered by (`start_ns`, `end_ns`, `Op::index`); everything below applies to that list, whatever
//! the kind of each read. "Read" below means either kind.
//!
//! Times: a read "after" the ack of an element is one whose `start_ns` is at or after the `end_ns` of
//! the add that acknowledged it (the same real-time order as the linearizability checker uses: an op
//! that returned at `t` precedes one invoked at `t`).
//!
//! Classes of every element (exactly one of the first seven, plus the flags `stale` and
//! `stale_eventual` for acknowledged elements):
//!
//! - `ok`: acknowledged and not lost, with at least one ok read of it after the ack.
//! - `lost`: acknowledged, and some *authoritative* read (strong, or started at or after
//!   [`SetOptions::final_reads_after_ns`]) started after both the ack and the end of the last read
//!   that saw it, and no read after that saw it again. A violation.
//! - `never_read`: acknowledged, but no ok read of it started after the ack: nothing to tell.
//! - `recovered`: the add was `info` (indeterminate) and a read saw it.
//! - `indeterminate_absent`: the add was `info` and no read saw it (it did not happen: fine).
//! - `failed`: the add was `fail` and no read saw it (fine).
//! - `unexpected` (a violation): the add was `fail` yet a read saw it; also, counted with it, elements
//!   no add mentioned that a read returned ("phantom"), elements a full-asset read of another asset
//!   or a lookup naming only elements of other assets returned ("wrong_asset"), elements a lookup
//!   returned without naming them while naming another element of their asset ("wrong_element"),
//!   and elements a read returned that had ended before any add of them started ("seen_before_add").
//! - flag `stale`: acknowledged and missing from some strong read that started after the ack, even if
//!   a later read sees it again. A violation: a linearizable read must see every acknowledged write.
//! - flag `stale_eventual`: acknowledged, missing from some eventual read after the ack and seen by a
//!   later read. Informational: eventual reads may lag.
//!
//! An element in several adds (a retried batch) is acknowledged if any of them is `ok` (its ack is
//! the earliest `end_ns` of those); otherwise it is `info` if any is `info`; otherwise `fail`.
//!
//! Cost: full-asset reads are indexed once per asset and each element is classified from the
//! positions of the reads that saw it. Only an element that lookups named gets a list of its own
//! (its asset's reads merged with its lookups), so that costs the asset's reads once per such
//! element.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// The read (full-asset read or lookup) showing the problem: for `lost`, the first
    /// authoritative read that missed it after its last observation; for `stale`, the first strong
    /// read after the ack that missed it; for `unexpected`, the first read that returned it.
    pub read_op: Option<u64>,
    /// For `lost`: the last read that saw it, if any did.
    pub last_seen_op: Option<u64>,
    /// Milliseconds from the ack (`end_ns` of the acknowledging add) to the start of `read_op`, when
    /// both exist.
    pub ms_after_ack: Option<f64>,
    /// What the example shows: `lost`, `stale`, `failed_add_seen`, `phantom`, `wrong_asset`,
    /// `wrong_element`, `seen_before_add`.
    pub reason: String,
}

/// `ok` lookups of one kind (`via`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupCounts {
    pub ok: usize,
    /// Of those, how many were strong.
    pub strong: usize,
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
    /// `ok` full-asset reads (`Read`).
    pub reads: usize,
    /// `ok` strong full-asset reads.
    pub strong_reads: usize,
    /// `ok` lookups (`Lookup`: annotation GETs and searches).
    #[serde(default)]
    pub lookups: usize,
    /// `ok` strong lookups.
    #[serde(default)]
    pub strong_lookups: usize,
    /// `ok` lookups by `via` (`annotation`, `search`).
    #[serde(default)]
    pub lookups_by_via: BTreeMap<String, LookupCounts>,
    /// Acknowledged elements that at least one `ok` lookup named.
    #[serde(default)]
    pub looked_up: usize,
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

/// An ok read: a full-asset read or a lookup.
#[derive(Debug, Clone, Copy)]
struct ReadRef {
    /// `Op::index`.
    op: u64,
    start: u64,
    end: u64,
    strong: bool,
    authoritative: bool,
}

impl ReadRef {
    fn new(op: &Op, strong: bool, options: &SetOptions) -> ReadRef {
        let authoritative = strong || options.final_reads_after_ns.is_some_and(|t| op.start_ns >= t);
        ReadRef { op: op.index, start: op.start_ns, end: op.end_ns, strong, authoritative }
    }

    /// The order of the reads of an element.
    fn order(&self) -> (u64, u64, u64) {
        (self.start, self.end, self.op)
    }
}

/// A read and the elements it returned.
type ReadWithSeen<'a> = (ReadRef, &'a [String]);

/// The reads observing some elements (those of an asset, or one element's), sorted by
/// [`ReadRef::order`], with their positions by kind.
struct ReadSeq {
    reads: Vec<ReadRef>,
    strong: Vec<u32>,
    eventual: Vec<u32>,
    /// `next_authoritative[i]`: the first authoritative position `>= i` (`len` if none).
    next_authoritative: Vec<u32>,
}

impl ReadSeq {
    /// `reads` must be sorted by [`ReadRef::order`].
    fn new(reads: Vec<ReadRef>) -> ReadSeq {
        let strong = (0..reads.len() as u32).filter(|&p| reads[p as usize].strong).collect();
        let eventual = (0..reads.len() as u32).filter(|&p| !reads[p as usize].strong).collect();
        let mut next_authoritative = vec![reads.len() as u32; reads.len() + 1];
        for p in (0..reads.len()).rev() {
            next_authoritative[p] = if reads[p].authoritative { p as u32 } else { next_authoritative[p + 1] };
        }
        ReadSeq { reads, strong, eventual, next_authoritative }
    }

    /// An element's own list: `asset`'s reads (of which those at `asset_seen` saw it) merged with its
    /// `lookups` (each with whether it saw it); returns the list and the positions that saw it.
    fn with_lookups(asset: &ReadSeq, asset_seen: &[u32], lookups: &[(ReadRef, bool)]) -> (ReadSeq, Vec<u32>) {
        let mut mine = lookups.to_vec();
        mine.sort_by_key(|(read, _)| read.order());
        let mut reads = Vec::with_capacity(asset.reads.len() + mine.len());
        let mut seen = Vec::with_capacity(asset_seen.len() + mine.len());
        let (mut i, mut j, mut s) = (0, 0, 0);
        while i < asset.reads.len() || j < mine.len() {
            let position = reads.len() as u32;
            if j < mine.len() && (i == asset.reads.len() || mine[j].0.order() < asset.reads[i].order()) {
                reads.push(mine[j].0);
                if mine[j].1 {
                    seen.push(position);
                }
                j += 1;
            } else {
                reads.push(asset.reads[i]);
                if s < asset_seen.len() && asset_seen[s] as usize == i {
                    seen.push(position);
                    s += 1;
                }
                i += 1;
            }
        }
        (ReadSeq::new(reads), seen)
    }
}

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
    /// The ok lookups naming it, each with whether it saw it.
    lookups: Vec<(ReadRef, bool)>,
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

    /// Notes `element`, returned by read `read_op` where it does not belong, unless already noted.
    fn note_misplaced(&mut self, element: &'a str, add_op: Option<u64>, read_op: u64, reason: &str) {
        if !self.elements.contains(element) {
            let example = SetExample {
                element: element.to_string(),
                add_op,
                read_op: Some(read_op),
                last_seen_op: None,
                ms_after_ack: None,
                reason: reason.into(),
            };
            self.note(element, example);
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
                    lookups: Vec::new(),
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
    let add_op_of = |e: &Element| e.ack.map_or(e.first_add_op, |(_, op)| op);

    // Ok reads by asset (assets in order of first appearance), sorted below.
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
        assets[id].1.push((ReadRef::new(op, *strong, options), seen.as_slice()));
    }

    let mut unexpected = Unexpected::default();

    // Ok lookups: each named element gets the lookup in its own list; whatever a lookup returned
    // without naming it is unexpected.
    let mut lookups_by_via: BTreeMap<String, LookupCounts> = BTreeMap::new();
    for op in ops {
        let Action::Lookup { via, strong, elements: named, seen } = &op.action else { continue };
        if op.outcome != Outcome::Ok {
            continue;
        }
        let counts = lookups_by_via.entry(via.clone()).or_default();
        counts.ok += 1;
        counts.strong += usize::from(*strong);
        let read = ReadRef::new(op, *strong, options);
        let named: HashSet<&str> = named.iter().map(String::as_str).collect();
        let returned: HashSet<&str> = seen.iter().map(String::as_str).collect();
        for &name in &named {
            if let Some(&id) = element_ids.get(name) {
                elements[id as usize].lookups.push((read, returned.contains(name)));
            }
        }
        for name in seen {
            let name = name.as_str();
            match element_ids.get(name) {
                // A sighting, in the element's own list.
                Some(_) if named.contains(name) => {}
                Some(&id) => {
                    let e = &elements[id as usize];
                    let same_asset = named.iter().any(|n| asset_of(n) == e.asset);
                    let reason = if same_asset { "wrong_element" } else { "wrong_asset" };
                    unexpected.note_misplaced(e.name, Some(add_op_of(e)), read.op, reason);
                }
                None => unexpected.note_misplaced(name, None, read.op, "phantom"),
            }
        }
    }
    let (lookups, strong_lookups) = lookups_by_via.values().fold((0, 0), |(n, s), c| (n + c.ok, s + c.strong));

    // Presence lists, phantoms and wrong-asset returns of the full-asset reads.
    let mut asset_reads: Vec<ReadSeq> = Vec::with_capacity(assets.len());
    for (asset, mut list) in assets {
        list.sort_by_key(|(r, _)| r.order());
        for (pos, (read, seen)) in list.iter().enumerate() {
            for name in seen.iter() {
                match element_ids.get(name.as_str()) {
                    Some(&id) => {
                        let e = &mut elements[id as usize];
                        if e.asset == asset {
                            if e.seen.last() != Some(&(pos as u32)) {
                                e.seen.push(pos as u32);
                            }
                        } else {
                            let (name, add_op) = (e.name, add_op_of(e));
                            unexpected.note_misplaced(name, Some(add_op), read.op, "wrong_asset");
                        }
                    }
                    None => unexpected.note_misplaced(name, None, read.op, "phantom"),
                }
            }
        }
        asset_reads.push(ReadSeq::new(list.into_iter().map(|(r, _)| r).collect()));
    }
    let no_reads = ReadSeq::new(Vec::new());

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
        lookups,
        strong_lookups,
        lookups_by_via,
        looked_up: 0,
        lost_examples: Vec::new(),
        stale_examples: Vec::new(),
        unexpected_examples: Vec::new(),
        stable_latency_ms: Quantiles::default(),
    };
    let mut stable = Vec::new();

    for e in &elements {
        let of_asset = asset_ids.get(e.asset).map_or(&no_reads, |&id| &asset_reads[id]);
        let own;
        let (a, seen): (&ReadSeq, &[u32]) = if e.lookups.is_empty() {
            (of_asset, &e.seen)
        } else {
            own = ReadSeq::with_lookups(of_asset, &e.seen, &e.lookups);
            (&own.0, &own.1)
        };
        let r = &a.reads;

        if !seen.is_empty() {
            let earliest = seen.iter().map(|&p| &r[p as usize]).min_by_key(|read| (read.end, read.op)).expect("not empty");
            if earliest.end < e.min_add_start {
                let example = SetExample {
                    element: e.name.to_string(),
                    add_op: Some(add_op_of(e)),
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
        verdict.looked_up += usize::from(!e.lookups.is_empty());
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
        fn lookup(&mut self, via: &str, strong: bool, elements: &[&str], seen: &[&str], start_ms: u64, end_ms: u64) -> u64 {
            let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
            let action = Action::Lookup { via: via.into(), strong, elements: strings(elements), seen: strings(seen) };
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
    fn an_element_missing_from_a_strong_lookup_after_its_ack_is_stale() {
        let mut h = H::default();
        let add = h.add(&["a/1"], Outcome::Ok, 0, 10);
        let missed = h.lookup("annotation", true, &["a/1"], &[], 15, 20);
        h.read("a", true, &["a/1"], 25, 30);
        let v = h.check();
        assert_eq!((v.valid, v.stale, v.lost, v.ok, v.stale_eventual), (Validity::Invalid, 1, 0, 1, 0));
        let example = &v.stale_examples[0];
        assert_eq!((example.add_op, example.read_op, example.ms_after_ack), (Some(add), Some(missed), Some(5.0)));
        assert_eq!((v.lookups, v.strong_lookups, v.looked_up), (1, 1, 1));
        assert_eq!(v.lookups_by_via["annotation"], LookupCounts { ok: 1, strong: 1 });

        // A search does the same.
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.lookup("search", true, &["a/1"], &[], 15, 20);
        h.lookup("search", true, &["a/1"], &["a/1"], 25, 30);
        let v = h.check();
        assert_eq!((v.valid, v.stale, v.lost, v.ok), (Validity::Invalid, 1, 0, 1));
        assert_eq!((v.reads, v.lookups), (0, 2));
    }

    #[test]
    fn an_element_missing_from_an_authoritative_lookup_after_its_last_sighting_is_lost() {
        let mut h = H::default();
        let add = h.add(&["a/1", "a/2"], Outcome::Ok, 0, 10);
        let saw = h.lookup("annotation", false, &["a/1"], &["a/1"], 15, 20);
        let missed = h.lookup("search", true, &["a/1"], &[], 30, 35);
        h.read("a", false, &["a/2"], 40, 45);
        let v = h.check();
        assert_eq!((v.valid, v.lost, v.stale, v.ok), (Validity::Invalid, 1, 1, 1));
        let example = &v.lost_examples[0];
        assert_eq!(example.element, "a/1");
        assert_eq!((example.add_op, example.read_op, example.last_seen_op), (Some(add), Some(missed), Some(saw)));

        // An eventual lookup is authoritative only among the final reads.
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.lookup("annotation", false, &["a/1"], &["a/1"], 15, 20);
        let missed = h.lookup("annotation", false, &["a/1"], &[], 100, 105);
        let v = h.check();
        assert_eq!((v.valid, v.lost, v.ok), (Validity::Valid, 0, 1));
        let v = check(&h.ops, &SetOptions { final_reads_after_ns: Some(100 * MS) });
        assert_eq!((v.valid, v.lost), (Validity::Invalid, 1));
        assert_eq!(v.lost_examples[0].read_op, Some(missed));
    }

    #[test]
    fn a_lookup_seeing_a_failed_add_is_unexpected() {
        let mut h = H::default();
        let add = h.add(&["a/1"], Outcome::Fail, 0, 10);
        h.add(&["a/2"], Outcome::Ok, 0, 10);
        h.read("a", true, &["a/2"], 20, 25);
        let lookup = h.lookup("search", false, &["a/1"], &["a/1"], 30, 35);
        let v = h.check();
        assert_eq!((v.valid, v.unexpected, v.failed, v.ok), (Validity::Invalid, 1, 0, 1));
        let example = &v.unexpected_examples[0];
        assert_eq!((example.element.as_str(), example.add_op, example.read_op), ("a/1", Some(add), Some(lookup)));
        assert_eq!(example.reason, "failed_add_seen");

        // An indeterminate add a lookup sees is recovered; one it misses is absent.
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Info, 0, 10);
        h.add(&["a/2"], Outcome::Info, 0, 10);
        h.lookup("annotation", true, &["a/1"], &["a/1"], 20, 25);
        h.lookup("annotation", true, &["a/2"], &[], 20, 25);
        let v = h.check();
        assert_eq!((v.recovered, v.indeterminate_absent, v.unexpected), (1, 1, 0));
    }

    #[test]
    fn an_eventual_lookup_miss_is_only_informational() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.lookup("annotation", false, &["a/1"], &[], 15, 20);
        h.lookup("search", false, &["a/1"], &["a/1"], 25, 30);
        let v = h.check();
        assert_eq!((v.valid, v.stale, v.stale_eventual, v.lost, v.ok), (Validity::Valid, 0, 1, 0, 1));
        assert_eq!(v.stable_latency_ms.max, 15.0);
        assert_eq!((v.lookups, v.strong_lookups), (2, 0));
        assert_eq!(v.lookups_by_via.len(), 2);
    }

    #[test]
    fn a_lookup_observes_only_the_elements_it_names() {
        let mut h = H::default();
        h.add(&["a/1", "a/2"], Outcome::Ok, 0, 10);
        // Names a/1 only: says nothing about a/2, which no read observes.
        h.lookup("annotation", true, &["a/1"], &["a/1"], 20, 25);
        let v = h.check();
        assert_eq!((v.valid, v.ok, v.never_read, v.stale, v.lost), (Validity::Valid, 1, 1, 0, 0));
        assert_eq!(v.looked_up, 1);

        // A full-asset read that misses a/1 is not masked by a lookup of a/2 seeing a/2.
        let mut h = H::default();
        h.add(&["a/1", "a/2"], Outcome::Ok, 0, 10);
        h.lookup("annotation", true, &["a/2"], &["a/2"], 20, 25);
        let missed = h.read("a", true, &["a/2"], 30, 35);
        let v = h.check();
        assert_eq!((v.ok, v.lost, v.stale), (1, 1, 1));
        assert_eq!((v.lost_examples[0].element.as_str(), v.lost_examples[0].read_op), ("a/1", Some(missed)));
    }

    #[test]
    fn a_lookup_returning_what_it_did_not_name_is_unexpected() {
        let mut h = H::default();
        h.add(&["a/1", "a/2", "b/1"], Outcome::Ok, 0, 10);
        h.read("a", true, &["a/1", "a/2"], 20, 25);
        h.read("b", true, &["b/1"], 20, 25);
        let first = h.lookup("search", true, &["a/1"], &["a/1", "a/2"], 30, 35);
        let second = h.lookup("search", true, &["a/1"], &["a/1", "b/1", "c/?"], 40, 45);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!((v.ok, v.lost, v.stale, v.unexpected), (3, 0, 0, 3));
        let reasons: Vec<(&str, &str, Option<u64>)> =
            v.unexpected_examples.iter().map(|x| (x.element.as_str(), x.reason.as_str(), x.read_op)).collect();
        assert_eq!(
            reasons,
            vec![("a/2", "wrong_element", Some(first)), ("b/1", "wrong_asset", Some(second)), ("c/?", "phantom", Some(second))]
        );

        // Naming an element nobody added and finding it is a phantom too; not finding it is nothing.
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.lookup("annotation", true, &["a/1", "a/9"], &["a/1", "a/9"], 20, 25);
        h.lookup("annotation", true, &["a/8"], &[], 20, 25);
        let v = h.check();
        assert_eq!((v.unexpected, v.ok, v.attempted), (1, 1, 1));
        assert_eq!(v.unexpected_examples[0].reason, "phantom");
    }

    #[test]
    fn reads_and_lookups_are_ordered_together() {
        // Seen by a strong read, missed by a strong lookup after it ended (lost so far), seen
        // again by a later eventual read: stale, not lost; stable from that read.
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.read("a", true, &["a/1"], 20, 30);
        let missed = h.lookup("annotation", true, &["a/1"], &[], 40, 45);
        h.read("a", false, &["a/1"], 50, 55);
        h.lookup("search", false, &["a/1"], &["a/1"], 60, 65);
        let v = h.check();
        assert_eq!((v.valid, v.stale, v.lost, v.ok), (Validity::Invalid, 1, 0, 1));
        assert_eq!(v.stale_examples[0].read_op, Some(missed));
        assert_eq!(v.stable_latency_ms.max, 40.0);

        // The same with the lookup last: lost, the lookup as witness, the read as last sighting.
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.lookup("search", false, &["a/1"], &["a/1"], 20, 30);
        let saw = h.read("a", false, &["a/1"], 35, 40);
        let missed = h.lookup("annotation", true, &["a/1"], &[], 50, 55);
        let v = h.check();
        assert_eq!((v.lost, v.stale), (1, 1));
        assert_eq!((v.lost_examples[0].read_op, v.lost_examples[0].last_seen_op), (Some(missed), Some(saw)));

        // A strong lookup that began before the read that saw it ended proves nothing lost; a
        // read and a lookup with the same start are ordered by end.
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.read("a", true, &["a/1"], 20, 40);
        h.lookup("annotation", true, &["a/1"], &[], 30, 35);
        let v = h.check();
        assert_eq!((v.lost, v.stale, v.ok), (0, 1, 1));

        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.lookup("annotation", false, &["a/1"], &[], 20, 30);
        h.read("a", false, &["a/1"], 20, 25);
        let v = h.check();
        // The read (ends at 25) comes first: its sighting is followed by the lookup's miss, which
        // nothing saw it after: not stale_eventual, and no stable run.
        assert_eq!((v.valid, v.ok, v.stale_eventual), (Validity::Valid, 1, 0));
        assert_eq!(v.stable_latency_ms, Quantiles::default());
    }

    #[test]
    fn a_lookup_before_the_add_is_unexpected_and_a_failed_one_observes_nothing() {
        let mut h = H::default();
        let early = h.lookup("search", false, &["a/1"], &["a/1"], 0, 5);
        h.add(&["a/1"], Outcome::Ok, 10, 20);
        h.push(
            Action::Lookup { via: "annotation".into(), strong: true, elements: vec!["a/1".into()], seen: vec![] },
            Outcome::Fail,
            30,
            35,
        );
        h.lookup("annotation", true, &["a/1"], &["a/1"], 40, 45);
        let v = h.check();
        assert_eq!((v.valid, v.unexpected, v.ok, v.lookups), (Validity::Invalid, 1, 1, 2));
        assert_eq!((v.unexpected_examples[0].reason.as_str(), v.unexpected_examples[0].read_op), ("seen_before_add", Some(early)));
    }

    #[test]
    fn a_verdict_without_lookup_fields_still_parses() {
        let mut h = H::default();
        h.add(&["a/1"], Outcome::Ok, 0, 10);
        h.read("a", true, &["a/1"], 20, 30);
        let mut value = serde_json::to_value(h.check()).unwrap();
        for field in ["lookups", "strong_lookups", "lookups_by_via", "looked_up"] {
            value.as_object_mut().unwrap().remove(field);
        }
        let v: SetVerdict = serde_json::from_value(value).unwrap();
        assert_eq!((v.ok, v.lookups, v.lookups_by_via.len()), (1, 0, 0));
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

    /// 200k elements over 2,000 assets in 20k batches, 20k lookups, 50k reads (a quarter strong); one
    /// element in 10,000 is dropped from every read after the 20th of its asset.
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
        // 20k lookups (every tenth element, half strong) that see their element, before the reads.
        let lookups_at = ops.last().unwrap().end_ns;
        for k in 0..(assets * per_asset / 10) {
            let n = k * 10;
            let element = name(n % assets, n / assets);
            let start_ns = lookups_at + k * 10;
            let action = Action::Lookup { via: "search".into(), strong: k % 2 == 0, elements: vec![element.clone()], seen: vec![element] };
            ops.push(Op {
                index: ops.len() as u64,
                process: 10,
                node: 0,
                action,
                outcome: Outcome::Ok,
                start_ns,
                end_ns: start_ns + 5,
                error: None,
            });
        }
        let after = lookups_at + 1_000_000_000;
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
        // Lookups of acknowledged elements (a batch in 97 is indeterminate).
        assert_eq!((0..20_000u64).filter(|k| k % 97 != 0).count(), 19_793);
        assert_eq!((v.attempted, v.reads, v.lookups, v.strong_lookups, v.looked_up), (200_000, 50_000, 20_000, 10_000, 19_793));
        assert_eq!(v.lost, expected_lost);
        assert!(expected_lost > 0);
        assert_eq!(v.valid, Validity::Invalid);
    }
}
