//! Linearizability of the register workload: one register per key, checked key by key with the
//! Wing & Gong search and Lowe's memoization (as in Knossos' `wgl` and Porcupine).
//!
//! Model: the register starts empty (`None`, no record); a write sets `Some(value)`; a read returns
//! the current value and changes nothing.
//!
//! Operations: `ok` ops happened within `[start_ns, end_ns]`. `fail` ops did not happen and are
//! dropped. An `info` write may take effect at any time after `start_ns`, or never: it has no return
//! event, so the search may linearize it anywhere after its call or leave it out (a history is
//! linearizable once every `ok` op is linearized). An `info` read observed nothing and is dropped.
//! An `info` write whose value no `ok` read returned is dropped up front: linearizing it can never
//! help a read.
//!
//! Real-time order: an op that returned at `t` precedes an op invoked at `t` (at equal times return
//! events sort before call events).
//!
//! Search: the history is a doubly linked list of call and return events sorted by time. From the
//! head, the first call whose op the model accepts is linearized (its call and return are lifted out
//! of the list, the previous state pushed on an explicit stack) unless the pair (set of linearized
//! ops, register value) was seen before; reaching a return event means that op can no longer be
//! linearized, so the last choice is undone and the search moves to the next call after it. The
//! cache keys the linearized set by a 128-bit Zobrist fingerprint (two independent 64-bit hashes
//! updated incrementally), which keeps each cached state to a few dozen bytes however many ops a
//! key has; a false match needs a 128-bit collision (probability about n²/2¹²⁹ for n states).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::history::{Action, Op, Outcome, Validity};

/// Ops listed in a [`KeyFailure`].
pub const MAX_FAILURE_OPS: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearOptions {
    /// Distinct (linearized set, value) states the search of one key may explore before giving up
    /// on that key (its result is then unknown).
    pub max_states_per_key: usize,
}

impl Default for LinearOptions {
    fn default() -> Self {
        LinearOptions { max_states_per_key: 5_000_000 }
    }
}

/// A key whose history is not linearizable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFailure {
    pub key: String,
    /// `Op::index` of the key's ok and info ops nearest in time to the op that could not be
    /// linearized (that op included), at most [`MAX_FAILURE_OPS`], ascending.
    pub ops: Vec<u64>,
    /// For people: which op could not be linearized, after how much of the history, and what the
    /// register could hold then.
    pub explanation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearVerdict {
    /// Invalid if a key is not linearizable; else Unknown if a key exceeded the search bound or no
    /// op was ok; else Valid.
    pub valid: Validity,
    /// Keys checked.
    pub keys: usize,
    /// Ops considered: ok ops and info writes of the register workload.
    pub ops: usize,
    /// One per key that is not linearizable, in key order.
    pub failures: Vec<KeyFailure>,
    /// Keys whose search exceeded [`LinearOptions::max_states_per_key`].
    pub unknown_keys: Vec<String>,
    /// States explored over all keys.
    pub states_explored: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write(u64),
    Read(Option<u64>),
}

/// One op of a key's sub-history.
#[derive(Debug, Clone, Copy)]
struct KeyOp<'a> {
    op: &'a Op,
    kind: Kind,
    /// `None` for an info write: it may take effect at any time after its call.
    end: Option<u64>,
}

impl KeyOp<'_> {
    fn is_ok(&self) -> bool {
        self.end.is_some()
    }

    fn step(&self, state: Option<u64>) -> Option<Option<u64>> {
        match self.kind {
            Kind::Write(v) => Some(Some(v)),
            Kind::Read(seen) => (seen == state).then_some(state),
        }
    }
}

enum KeyResult {
    Linearizable,
    NotLinearizable(KeyFailure),
    Exceeded,
}

/// Checks every key's register history; see the module documentation.
pub fn check(ops: &[Op], options: &LinearOptions) -> LinearVerdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if let Action::Write { key, .. } | Action::RegisterRead { key, .. } = &op.action {
            by_key.entry(key.as_str()).or_default().push(op);
        }
    }

    let mut verdict = LinearVerdict {
        valid: Validity::Valid,
        keys: by_key.len(),
        ops: 0,
        failures: Vec::new(),
        unknown_keys: Vec::new(),
        states_explored: 0,
    };
    let mut any_ok = false;
    for (key, key_ops) in by_key {
        let mut considered = Vec::new();
        let mut failed_writes = Vec::new();
        for &op in &key_ops {
            let kind = match op.action {
                Action::Write { value, .. } => Kind::Write(value),
                Action::RegisterRead { value, .. } => Kind::Read(value),
                _ => unreachable!("grouped above"),
            };
            match (op.outcome, kind) {
                (Outcome::Ok, _) => considered.push(KeyOp { op, kind, end: Some(op.end_ns) }),
                (Outcome::Info, Kind::Write(_)) => considered.push(KeyOp { op, kind, end: None }),
                (Outcome::Fail, Kind::Write(_)) => failed_writes.push(op),
                (Outcome::Info | Outcome::Fail, Kind::Read(_)) => {}
            }
        }
        verdict.ops += considered.len();
        any_ok |= considered.iter().any(KeyOp::is_ok);
        let (result, states) = check_key(key, &considered, &failed_writes, options);
        verdict.states_explored += states;
        match result {
            KeyResult::Linearizable => {}
            KeyResult::NotLinearizable(failure) => verdict.failures.push(failure),
            KeyResult::Exceeded => verdict.unknown_keys.push(key.to_string()),
        }
    }
    verdict.valid = if !verdict.failures.is_empty() {
        Validity::Invalid
    } else if !verdict.unknown_keys.is_empty() || !any_ok {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    verdict
}

fn secs(ns: u64) -> String {
    format!("{:.6} s", ns as f64 / 1e9)
}

fn value(v: Option<u64>) -> String {
    v.map_or_else(|| "None".to_string(), |v| v.to_string())
}

/// "1", "1 or None", "one of 1, 2 or None".
fn values(states: &[Option<u64>]) -> String {
    let names: Vec<String> = states.iter().map(|&s| value(s)).collect();
    match names.len() {
        0 => "nothing".into(),
        1 => names[0].clone(),
        2 => format!("{} or {}", names[0], names[1]),
        n => format!("one of {} or {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

fn describe(key: &str, o: &KeyOp) -> String {
    let end = o.end.map_or_else(|| "never returned (info)".to_string(), secs);
    let what = match o.kind {
        Kind::Write(v) => format!("write of {v} to {key}"),
        Kind::Read(_) => format!("read of {key}"),
    };
    let returned = match o.kind {
        Kind::Read(v) => format!(" returned {}", value(v)),
        Kind::Write(_) => String::new(),
    };
    format!("{what} by process {} (op #{}){returned} at [{}, {}]", o.op.process, o.op.index, secs(o.op.start_ns), end)
}

/// The ops nearest in time to `target` (distance 0 when they overlap), target first.
fn nearby(considered: &[KeyOp], target: &KeyOp, extra: &[u64]) -> Vec<u64> {
    let (s, e) = (target.op.start_ns, target.end.unwrap_or(u64::MAX));
    let mut ranked: Vec<(u64, u64, u64)> = considered
        .iter()
        .filter(|o| o.op.index != target.op.index)
        .map(|o| {
            let (os, oe) = (o.op.start_ns, o.end.unwrap_or(u64::MAX));
            let distance = if oe < s { s - oe } else { os.saturating_sub(e) };
            (distance, os, o.op.index)
        })
        .collect();
    ranked.sort_unstable();
    let mut out: Vec<u64> = std::iter::once(target.op.index).chain(extra.iter().copied()).collect();
    out.extend(ranked.into_iter().map(|(_, _, i)| i));
    let mut seen = HashSet::new();
    out.retain(|i| seen.insert(*i));
    out.truncate(MAX_FAILURE_OPS);
    out.sort_unstable();
    out
}

/// A read that returned a value no considered write of the key could have written before the read
/// returned (no write of it at all, or only failed ones, or only ones invoked later).
fn impossible_read(key: &str, considered: &[KeyOp], failed_writes: &[&Op]) -> Option<KeyFailure> {
    let mut first_write: HashMap<u64, &KeyOp> = HashMap::new();
    for w in considered {
        if let Kind::Write(v) = w.kind {
            let first = first_write.entry(v).or_insert(w);
            if w.op.start_ns < first.op.start_ns {
                *first = w;
            }
        }
    }
    let read = considered
        .iter()
        .filter(|o| o.is_ok())
        .filter(|o| match o.kind {
            Kind::Read(Some(v)) => !matches!(first_write.get(&v), Some(w) if w.op.start_ns < o.op.end_ns),
            _ => false,
        })
        .min_by_key(|o| (o.op.end_ns, o.op.index))?;
    let Kind::Read(Some(v)) = read.kind else { unreachable!("filtered") };
    let mut explanation = format!("{}, but no write of {v} to {key} was invoked before that read returned", describe(key, read));
    let failed: Vec<u64> =
        failed_writes.iter().filter(|w| matches!(w.action, Action::Write { value, .. } if value == v)).map(|w| w.index).collect();
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|i| format!("#{i}")).collect();
        let _ = write!(explanation, "; the write(s) of {v} that failed ({}) must not take effect", list.join(", "));
    }
    if let Some(later) = first_write.get(&v) {
        let _ = write!(explanation, "; the first write of {v} (op #{}) was invoked only at {}", later.op.index, secs(later.op.start_ns));
    }
    Some(KeyFailure { key: key.to_string(), ops: nearby(considered, read, &failed), explanation })
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const NIL: u32 = u32::MAX;

/// Checks one key; also returns the states explored.
fn check_key(key: &str, considered: &[KeyOp], failed_writes: &[&Op], options: &LinearOptions) -> (KeyResult, u64) {
    if let Some(failure) = impossible_read(key, considered, failed_writes) {
        return (KeyResult::NotLinearizable(failure), 0);
    }
    // Info writes no read observed cannot help any read: drop them.
    let read_values: HashSet<Option<u64>> = considered
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Read(v) => Some(v),
            Kind::Write(_) => None,
        })
        .collect();
    let ops: Vec<KeyOp> =
        considered.iter().copied().filter(|o| o.is_ok() || matches!(o.kind, Kind::Write(v) if read_values.contains(&Some(v)))).collect();
    let mut ok_remaining = ops.iter().filter(|o| o.is_ok()).count();
    if ok_remaining == 0 {
        return (KeyResult::Linearizable, 0);
    }

    // Events sorted by time, returns before calls at equal times. Node 0 is the list head; event i
    // is node i + 1.
    let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(2 * ops.len());
    for (i, o) in ops.iter().enumerate() {
        events.push((o.op.start_ns, true, i as u32));
        if let Some(end) = o.end {
            events.push((end, false, i as u32));
        }
    }
    events.sort_unstable();
    let nodes = events.len() + 1;
    let mut next: Vec<u32> = (1..=nodes as u32).map(|n| if n as usize == nodes { NIL } else { n }).collect();
    let mut prev: Vec<u32> = (0..nodes as u32).map(|n| n.wrapping_sub(1)).collect();
    prev[0] = NIL;
    let mut op_of = vec![0u32; nodes];
    let mut is_call = vec![false; nodes];
    let mut partner = vec![NIL; nodes];
    let mut return_node = vec![NIL; ops.len()];
    for (i, &(_, call, op)) in events.iter().enumerate() {
        let node = i + 1;
        op_of[node] = op;
        is_call[node] = call;
        if !call {
            return_node[op as usize] = node as u32;
        }
    }
    for node in 1..nodes {
        if is_call[node] {
            partner[node] = return_node[op_of[node] as usize];
        }
    }
    let unlink = |next: &mut Vec<u32>, prev: &mut Vec<u32>, n: u32| {
        let (p, x) = (prev[n as usize], next[n as usize]);
        next[p as usize] = x;
        if x != NIL {
            prev[x as usize] = p;
        }
    };
    let relink = |next: &mut Vec<u32>, prev: &mut Vec<u32>, n: u32| {
        let (p, x) = (prev[n as usize], next[n as usize]);
        next[p as usize] = n;
        if x != NIL {
            prev[x as usize] = n;
        }
    };

    let zobrist: Vec<(u64, u64)> = (0..ops.len() as u64).map(|i| (splitmix(2 * i), splitmix(2 * i + 1))).collect();
    let mut fingerprint = (0u64, 0u64);
    let mut cache: HashSet<(u64, u64, Option<u64>)> = HashSet::new();
    let mut state: Option<u64> = None;
    // (call node linearized, state before it).
    let mut stack: Vec<(u32, Option<u64>)> = Vec::new();
    let mut states = 0u64;
    // The furthest return event the search was stuck at, and the values the register could hold.
    let mut stuck: Option<(u32, Vec<Option<u64>>)> = None;

    let mut node = next[0];
    loop {
        if ok_remaining == 0 {
            return (KeyResult::Linearizable, states);
        }
        if node != NIL && is_call[node as usize] {
            let o = &ops[op_of[node as usize] as usize];
            if let Some(new_state) = o.step(state) {
                let z = zobrist[op_of[node as usize] as usize];
                let candidate = (fingerprint.0 ^ z.0, fingerprint.1 ^ z.1);
                if cache.insert((candidate.0, candidate.1, new_state)) {
                    states += 1;
                    if states > options.max_states_per_key as u64 {
                        return (KeyResult::Exceeded, states);
                    }
                    stack.push((node, state));
                    state = new_state;
                    fingerprint = candidate;
                    ok_remaining -= usize::from(o.is_ok());
                    unlink(&mut next, &mut prev, node);
                    if partner[node as usize] != NIL {
                        unlink(&mut next, &mut prev, partner[node as usize]);
                    }
                    node = next[0];
                    continue;
                }
            }
            node = next[node as usize];
            continue;
        }

        // A return event (or, defensively, the end of the list): stuck. Note it, then backtrack.
        if node != NIL {
            match &mut stuck {
                Some((at, seen)) if *at == node => {
                    if !seen.contains(&state) && seen.len() < 8 {
                        seen.push(state);
                    }
                }
                Some((at, _)) if *at > node => {}
                _ => stuck = Some((node, vec![state])),
            }
        }
        let Some((call, before)) = stack.pop() else { break };
        let o = &ops[op_of[call as usize] as usize];
        if partner[call as usize] != NIL {
            relink(&mut next, &mut prev, partner[call as usize]);
        }
        relink(&mut next, &mut prev, call);
        let z = zobrist[op_of[call as usize] as usize];
        fingerprint = (fingerprint.0 ^ z.0, fingerprint.1 ^ z.1);
        ok_remaining += usize::from(o.is_ok());
        state = before;
        node = next[call as usize];
    }

    let (at, mut held) = stuck.expect("a search that fails gets stuck at a return event");
    held.sort_unstable();
    let blocked = &ops[op_of[at as usize] as usize];
    let before = events[..at as usize - 1].iter().filter(|e| !e.1).count();
    let concurrent: Vec<&KeyOp> = ops
        .iter()
        .filter(|o| {
            o.op.index != blocked.op.index && o.op.start_ns < blocked.op.end_ns && !matches!(o.end, Some(end) if end <= blocked.op.start_ns)
        })
        .collect();
    let mut explanation = format!("{}, but it cannot be linearized. ", describe(key, blocked));
    let _ = write!(
        explanation,
        "The longest linearizable prefix: every one of the {before} ops that returned before {} can be linearized, ",
        secs(blocked.op.end_ns)
    );
    match blocked.kind {
        Kind::Read(v) => {
            let _ = write!(
                explanation,
                "but with them (and any of the concurrent ops) the register could only hold {} when it read {}",
                values(&held),
                value(v)
            );
        }
        Kind::Write(_) => {
            let _ = write!(
                explanation,
                "but no order of them and the concurrent ops lets this write take effect in time (the register could then hold {})",
                values(&held)
            );
        }
    }
    if !concurrent.is_empty() {
        let list: Vec<String> = concurrent
            .iter()
            .take(6)
            .map(|o| match o.kind {
                Kind::Write(v) => format!("write {v} (#{})", o.op.index),
                Kind::Read(v) => format!("read {} (#{})", value(v), o.op.index),
            })
            .collect();
        let more = if concurrent.len() > 6 { format!(" and {} more", concurrent.len() - 6) } else { String::new() };
        let _ = write!(explanation, "; concurrent ops: {}{more}", list.join(", "));
    }
    let failure = KeyFailure { key: key.to_string(), ops: nearby(considered, blocked, &[]), explanation };
    (KeyResult::NotLinearizable(failure), states)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[derive(Default)]
    struct H {
        ops: Vec<Op>,
    }

    impl H {
        fn push(&mut self, process: u64, action: Action, outcome: Outcome, start_ms: u64, end_ms: u64) -> u64 {
            let index = self.ops.len() as u64;
            self.ops.push(Op { index, process, node: 0, action, outcome, start_ns: start_ms * MS, end_ns: end_ms * MS, error: None });
            index
        }
        fn w(&mut self, process: u64, key: &str, value: u64, outcome: Outcome, start_ms: u64, end_ms: u64) -> u64 {
            self.push(process, Action::Write { key: key.into(), value }, outcome, start_ms, end_ms)
        }
        fn r(&mut self, process: u64, key: &str, value: Option<u64>, outcome: Outcome, start_ms: u64, end_ms: u64) -> u64 {
            self.push(process, Action::RegisterRead { key: key.into(), value }, outcome, start_ms, end_ms)
        }
        fn check(&self) -> LinearVerdict {
            check(&self.ops, &LinearOptions::default())
        }
    }

    use Outcome::{Fail, Info, Ok};

    #[test]
    fn a_sequential_history_is_valid() {
        let mut h = H::default();
        h.r(0, "k", None, Ok, 0, 1);
        h.w(0, "k", 1, Ok, 2, 3);
        h.r(1, "k", Some(1), Ok, 4, 5);
        h.w(1, "k", 2, Ok, 6, 7);
        h.r(0, "k", Some(2), Ok, 8, 9);
        let v = h.check();
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!((v.keys, v.ops), (1, 5));
        assert!(v.failures.is_empty());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_invalid() {
        let mut h = H::default();
        h.w(0, "reg-3", 1, Ok, 0, 5);
        h.w(1, "reg-3", 2, Ok, 6, 8);
        let read = h.r(4, "reg-3", Some(1), Ok, 1200, 1250);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        let failure = &v.failures[0];
        assert_eq!(failure.key, "reg-3");
        assert_eq!(failure.ops, vec![0, 1, read]);
        let e = &failure.explanation;
        assert!(e.contains("read of reg-3 by process 4 (op #2) returned 1 at [1.200000 s, 1.250000 s]"), "{e}");
        assert!(e.contains("the 2 ops that returned before 1.250000 s"), "{e}");
        assert!(e.contains("could only hold 2 when it read 1"), "{e}");
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [None, Some(1)] {
            let mut h = H::default();
            h.w(0, "k", 1, Ok, 0, 10);
            h.r(1, "k", seen, Ok, 5, 15);
            assert_eq!(h.check().valid, Validity::Valid, "{seen:?}");
        }
        // Two concurrent reads may not disagree in an order that no single linearization explains.
        let mut h = H::default();
        h.w(0, "k", 1, Ok, 0, 100);
        h.r(1, "k", Some(1), Ok, 10, 20);
        h.r(2, "k", None, Ok, 30, 40);
        assert_eq!(h.check().valid, Validity::Invalid);
    }

    #[test]
    fn an_op_returning_when_another_is_invoked_precedes_it() {
        let mut h = H::default();
        h.w(0, "k", 1, Ok, 0, 10);
        h.r(1, "k", None, Ok, 10, 20);
        assert_eq!(h.check().valid, Validity::Invalid);

        let mut h = H::default();
        h.w(0, "k", 1, Ok, 0, 5);
        h.w(1, "k", 2, Ok, 5, 10);
        h.r(2, "k", Some(1), Ok, 10, 20);
        assert_eq!(h.check().valid, Validity::Invalid);

        // Overlapping by one nanosecond: the second write may come first.
        let mut h = H::default();
        h.w(0, "k", 1, Ok, 0, 5);
        h.push(1, Action::Write { key: "k".into(), value: 2 }, Ok, 0, 10);
        h.ops[1].start_ns = 5 * MS - 1;
        h.r(2, "k", Some(1), Ok, 10, 20);
        assert_eq!(h.check().valid, Validity::Valid);

        // A read returning when the write is invoked cannot see it.
        let mut h = H::default();
        h.r(2, "k", Some(1), Ok, 0, 10);
        h.w(0, "k", 1, Ok, 10, 20);
        assert_eq!(h.check().valid, Validity::Invalid);
    }

    #[test]
    fn an_info_write_may_take_effect_later() {
        let mut h = H::default();
        h.w(0, "k", 1, Ok, 0, 10);
        h.w(1, "k", 2, Info, 20, 30);
        h.r(2, "k", Some(1), Ok, 40, 50);
        h.r(2, "k", Some(2), Ok, 1000, 1010);
        h.r(3, "k", Some(2), Ok, 2000, 2010);
        assert_eq!(h.check().valid, Validity::Valid);
    }

    #[test]
    fn an_info_write_may_never_take_effect() {
        let mut h = H::default();
        h.w(0, "k", 1, Ok, 0, 10);
        h.w(1, "k", 2, Info, 20, 30);
        h.r(2, "k", Some(1), Ok, 40, 50);
        h.r(2, "k", Some(1), Ok, 1000, 1010);
        let v = h.check();
        assert_eq!(v.valid, Validity::Valid);
        assert_eq!(v.ops, 4);
    }

    #[test]
    fn an_info_write_once_seen_stays_until_overwritten() {
        let mut h = H::default();
        h.w(0, "k", 1, Ok, 0, 10);
        h.w(1, "k", 2, Info, 20, 30);
        h.r(2, "k", Some(2), Ok, 40, 50);
        h.r(3, "k", Some(1), Ok, 60, 70);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert!(v.failures[0].explanation.contains("returned 1"), "{}", v.failures[0].explanation);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_invalid() {
        let mut h = H::default();
        h.w(0, "reg-1", 9, Ok, 0, 10);
        let read = h.r(4, "reg-1", Some(7), Ok, 20, 30);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.failures[0].ops, vec![0, read]);
        let e = &v.failures[0].explanation;
        assert!(e.contains("read of reg-1 by process 4 (op #1) returned 7"), "{e}");
        assert!(e.contains("no write of 7 to reg-1"), "{e}");
    }

    #[test]
    fn a_read_of_a_failed_write_is_invalid() {
        let mut h = H::default();
        let failed = h.w(0, "k", 5, Fail, 0, 10);
        h.r(1, "k", Some(5), Ok, 5, 30);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert!(v.failures[0].ops.contains(&failed));
        assert!(v.failures[0].explanation.contains("failed (#0)"), "{}", v.failures[0].explanation);
        assert_eq!(v.ops, 1);
    }

    #[test]
    fn a_read_of_a_write_invoked_later_is_invalid() {
        let mut h = H::default();
        h.r(1, "k", Some(5), Ok, 0, 10);
        h.w(0, "k", 5, Info, 20, 30);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert!(v.failures[0].explanation.contains("invoked only at 0.020000 s"), "{}", v.failures[0].explanation);
    }

    #[test]
    fn failed_ops_and_info_reads_are_dropped() {
        let mut h = H::default();
        h.w(0, "k", 1, Ok, 0, 10);
        h.w(0, "k", 2, Fail, 10, 20);
        h.r(1, "k", Some(42), Info, 20, 30);
        h.r(1, "k", Some(43), Fail, 20, 30);
        h.r(1, "k", Some(1), Ok, 30, 40);
        let v = h.check();
        assert_eq!((v.valid, v.ops), (Validity::Valid, 2));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = H::default();
        h.w(0, "a", 1, Ok, 0, 10);
        h.w(1, "b", 1, Ok, 0, 10);
        h.r(0, "a", Some(1), Ok, 20, 30);
        h.r(1, "b", None, Ok, 20, 30);
        // On one register, "a"'s write would explain the read of "b".
        let v = h.check();
        assert_eq!((v.valid, v.keys, v.failures.len()), (Validity::Invalid, 2, 1));
        assert_eq!(v.failures[0].key, "b");
    }

    #[test]
    fn unknown_without_ok_ops_or_beyond_the_bound() {
        let v = H::default().check();
        assert_eq!((v.valid, v.keys), (Validity::Unknown, 0));

        let mut h = H::default();
        h.w(0, "k", 1, Info, 0, 10);
        h.r(1, "k", Some(1), Info, 0, 10);
        assert_eq!(h.check().valid, Validity::Unknown);

        let mut h = H::default();
        for p in 0..4 {
            h.w(p, "k", p, Ok, 0, 100);
        }
        h.r(5, "k", Some(3), Ok, 200, 300);
        assert_eq!(h.check().valid, Validity::Valid);
        let v = check(&h.ops, &LinearOptions { max_states_per_key: 3 });
        assert_eq!((v.valid, v.unknown_keys.clone()), (Validity::Unknown, vec!["k".to_string()]));
        assert!(v.states_explored > 3);
    }

    #[test]
    fn a_verdict_round_trips_through_json() {
        let mut h = H::default();
        h.w(0, "k", 1, Ok, 0, 10);
        h.r(1, "k", None, Ok, 20, 30);
        let v = h.check();
        let text = serde_json::to_string(&v).unwrap();
        assert!(text.contains(r#""valid":"invalid""#), "{text}");
        assert_eq!(serde_json::from_str::<LinearVerdict>(&text).unwrap(), v);
    }

    const QUARTER_NS: u64 = 250_000;

    /// A tiny deterministic generator (Knuth's MMIX LCG).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Simulates an atomic register per key: each op takes effect at a random instant inside its
    /// interval (info writes: at a random instant after their call, or never; failed writes never).
    /// Processes run one op at a time; `max_duration` against the gaps sets the concurrency.
    fn simulate(seed: u64, n: usize, keys: u64, processes: u64, max_duration: u64, info_and_fail: bool) -> Vec<Op> {
        let mut rng = Lcg(seed);
        let mut clock = vec![0u64; processes as usize];
        // (op, instant it takes effect)
        let mut ops: Vec<(Op, Option<u64>)> = Vec::new();
        let mut next_value = 1;
        for index in 0..n as u64 {
            let process = rng.below(processes);
            let start = clock[process as usize] + rng.below(3);
            let duration = 1 + rng.below(max_duration);
            let end = start + duration;
            clock[process as usize] = end;
            let key = format!("reg-{}", rng.below(keys));
            let roll = if info_and_fail { rng.below(100) } else { 99 };
            let (action, outcome, effect) = if rng.below(2) == 0 {
                next_value += 1;
                let action = Action::Write { key, value: next_value };
                match roll {
                    0..=4 => (action, Info, (rng.below(3) > 0).then(|| start * 4 + 1 + rng.below(12 * duration))),
                    5..=7 => (action, Fail, None),
                    _ => (action, Ok, Some(start * 4 + 1 + rng.below(4 * duration - 1))),
                }
            } else {
                let outcome = if roll < 4 { Info } else { Ok };
                (Action::RegisterRead { key, value: None }, outcome, Some(start * 4 + 1 + rng.below(4 * duration - 1)))
            };
            // Effects are in quarter units so that they fall strictly inside intervals; a unit is 1 ms.
            let (start_ns, end_ns) = (start * 4 * QUARTER_NS, end * 4 * QUARTER_NS);
            ops.push((Op { index, process, node: 0, action, outcome, start_ns, end_ns, error: None }, effect.map(|e| e * QUARTER_NS)));
        }
        let mut order: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].1.is_some()).collect();
        order.sort_by_key(|&i| (ops[i].1, i));
        let mut registers: BTreeMap<String, u64> = BTreeMap::new();
        for i in order {
            match &mut ops[i].0.action {
                Action::Write { key, value } => {
                    registers.insert(key.clone(), *value);
                }
                Action::RegisterRead { key, value } => *value = registers.get(key).copied(),
                _ => unreachable!(),
            }
        }
        ops.into_iter().map(|(op, _)| op).collect()
    }

    /// Makes one ok read return the value of an ok write that was certainly overwritten before the
    /// read began: an ok write of the key invoked after the old one returned and returning before the
    /// read. Returns the read's index.
    fn corrupt(ops: &mut [Op]) -> Option<u64> {
        let writes: Vec<(String, u64, u64, u64)> = ops
            .iter()
            .filter(|o| o.outcome == Ok)
            .filter_map(|o| match &o.action {
                Action::Write { key, value } => Some((key.clone(), *value, o.start_ns, o.end_ns)),
                _ => None,
            })
            .collect();
        for read in ops.iter_mut().filter(|o| o.outcome == Ok) {
            let Action::RegisterRead { key, value } = &mut read.action else { continue };
            for (old_key, old_value, _, old_end) in &writes {
                if old_key != key || Some(*old_value) == *value {
                    continue;
                }
                let overwritten = writes.iter().any(|(k, _, s, e)| k == key && *s > *old_end && *e < read.start_ns);
                if overwritten {
                    *value = Some(*old_value);
                    return Some(read.index);
                }
            }
        }
        None
    }

    #[test]
    fn simulated_atomic_registers_are_linearizable_and_a_corrupted_read_is_not() {
        for seed in 0..30 {
            let mut ops = simulate(seed, 200, 5, 4, 12, true);
            let v = check(&ops, &LinearOptions::default());
            assert_eq!(v.valid, Validity::Valid, "seed {seed}: {:?}", v.failures);
            assert_eq!(v.keys, 5);

            let read = corrupt(&mut ops).expect("a read to corrupt");
            let v = check(&ops, &LinearOptions::default());
            assert_eq!(v.valid, Validity::Invalid, "seed {seed}: corrupted read #{read} went unnoticed");
            assert_eq!(v.failures.len(), 1, "seed {seed}");
            let failure = &v.failures[0];
            assert!(failure.ops.len() <= MAX_FAILURE_OPS);
            assert!(failure.ops.contains(&read), "seed {seed}: {failure:?}");
            assert!(failure.explanation.starts_with("read of reg-"), "seed {seed}: {failure:?}");
            assert!(failure.explanation.contains(&format!("(op #{read}) returned")), "seed {seed}: {failure:?}");
        }
    }

    #[test]
    fn a_thousand_highly_concurrent_ops_on_one_key_stay_within_the_state_bound() {
        // Valid (not Unknown) means the search finished within LinearOptions' state bound:
        // the memoization keeps it far from exponential. No wall-clock limit (tests do not time).
        for seed in 0..3 {
            let mut ops = simulate(1000 + seed, 1_000, 1, 5, 40, true);
            let v = check(&ops, &LinearOptions::default());
            assert_eq!(v.valid, Validity::Valid, "seed {seed}: {:?}", v.failures);
            corrupt(&mut ops).expect("a read to corrupt");
            let v = check(&ops, &LinearOptions::default());
            assert_eq!(v.valid, Validity::Invalid, "seed {seed}");
        }
    }

    #[test]
    fn a_long_sequential_history_needs_no_recursion() {
        let mut h = H::default();
        for i in 0..50_000u64 {
            h.w(i % 3, "k", i, Ok, 4 * i, 4 * i + 1);
            h.r(i % 3, "k", Some(i), Ok, 4 * i + 2, 4 * i + 3);
        }
        let v = h.check();
        assert_eq!(v.valid, Validity::Valid);
        assert_eq!(v.states_explored, 100_000);
    }

    #[test]
    fn the_failure_lists_at_most_thirty_ops_around_the_stuck_op() {
        let mut h = H::default();
        for i in 0..100u64 {
            h.w(0, "k", i, Ok, 10 * i, 10 * i + 5);
        }
        let read = h.r(1, "k", Some(50), Ok, 2000, 2010);
        for i in 0..20u64 {
            h.r(1, "k", Some(50), Ok, 3000 + 10 * i, 3005 + 10 * i);
        }
        let v = h.check();
        let failure = &v.failures[0];
        assert_eq!(failure.ops.len(), MAX_FAILURE_OPS);
        assert!(failure.ops.contains(&read), "{failure:?}");
        assert!(failure.ops.contains(&99), "{failure:?}");
        assert!(failure.explanation.contains("op #100"), "{}", failure.explanation);
        assert!(failure.explanation.contains("could only hold 99"), "{}", failure.explanation);
    }
}
