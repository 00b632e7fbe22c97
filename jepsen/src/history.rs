//! A run's history: every operation a client performed, with when it was invoked and when it
//! completed (or that it never did), in the form the checkers read and `history.jsonl` holds.
//!
//! As in Jepsen, an operation ends in one of three ways: `ok` (it happened), `fail` (it
//! certainly did not happen: the server refused it before doing anything), or `info` (unknown:
//! a timeout, a reset connection, a 503 after the write may have been proposed). An `info` write
//! may take effect at any time after its invocation, or never; checkers must allow both.

use serde::{Deserialize, Serialize};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Fail,
    Info,
}

/// What an operation did, with its input and, for a completed read, what it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Action {
    /// Set workload: one batch adding `elements` (annotation keys `asset/id`, spread over
    /// several assets and shards).
    Add { elements: Vec<String> },
    /// Set workload: a read of every element of `asset`. `seen` holds the elements present
    /// (only meaningful when the outcome is `ok`). `strong` when the read was linearizable
    /// (`consistency: "strong"`); eventual reads may lag.
    Read { asset: String, strong: bool, seen: Vec<String> },
    /// Set workload: a point read that observes the presence or absence of the named `elements`
    /// only (`asset/annotation_id`), not of the rest of their assets. `via` is how it read them:
    /// `annotation` (`GET /v1/assets/{asset}/annotations/{id}`) or `search` (`POST /v1/search`
    /// for a word only that element's text holds). `seen` holds what the read returned (only
    /// meaningful when the outcome is `ok`): normally the named elements present, but anything
    /// else a read returned is kept too (a search hit on another asset, `asset/?` when the hit
    /// names no annotation) so the checker can report it. `strong` as for `Read`.
    Lookup { via: String, strong: bool, elements: Vec<String>, seen: Vec<String> },
    /// Register workload: `PUT /v1/assets/{key}` with a record that carries `value`.
    Write { key: String, value: u64 },
    /// Register workload: a strong read of `key`; `value` is what it saw (`None` = no record,
    /// the register's initial state). Meaningful only when the outcome is `ok`.
    RegisterRead { key: String, value: Option<u64> },
    /// Model-version workload: version `version` of model `model` for `asset` (all of its
    /// annotations in one batch).
    Version { asset: String, model: String, version: u64 },
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Sequence number in the history (order of completion as recorded).
    pub index: u64,
    /// The client that ran it; a client runs one operation at a time.
    pub process: u64,
    /// The node it was sent to.
    pub node: u64,
    #[serde(flatten)]
    pub action: Action,
    pub outcome: Outcome,
    /// Invocation and completion, in nanoseconds since the run started. For `info`, `end_ns` is
    /// when the client gave up waiting, not when the operation took effect.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Why it failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    pub fn latency_ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }
}

/// A fault the nemesis was applying from `start_ns` to `end_ns` (the heal), for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// Kind: `partition`, `kill`, `pause`, `loss`, ...
    pub kind: String,
    /// What it did, for people: "isolate node 2 (leader of shard 1)".
    pub description: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What a checker concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    /// Every property held.
    Valid,
    /// A property was violated (the verdict says which, with the operations).
    Invalid,
    /// Too little was observed to tell (e.g. nothing acknowledged, no read after the writes).
    Unknown,
}

impl Validity {
    /// Combines verdicts: invalid beats unknown beats valid.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            _ => Validity::Valid,
        }
    }

    /// Process exit status: 0 valid, 1 invalid, 2 unknown.
    pub fn exit_code(self) -> i32 {
        match self {
            Validity::Valid => 0,
            Validity::Invalid => 1,
            Validity::Unknown => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_is_one_flat_json_object() {
        let op = Op {
            index: 3,
            process: 1,
            node: 2,
            action: Action::Write { key: "reg-1".into(), value: 7 },
            outcome: Outcome::Info,
            start_ns: 10,
            end_ns: 20,
            error: Some("timeout".into()),
        };
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(
            text,
            r#"{"index":3,"process":1,"node":2,"f":"write","key":"reg-1","value":7,"outcome":"info","start_ns":10,"end_ns":20,"error":"timeout"}"#
        );
        assert_eq!(serde_json::from_str::<Op>(&text).unwrap(), op);
    }

    #[test]
    fn a_lookup_is_one_flat_json_object_too() {
        let op = Op {
            index: 9,
            process: 4,
            node: 1,
            action: Action::Lookup {
                via: "search".into(),
                strong: true,
                elements: vec!["set-03/e2-7".into()],
                seen: vec!["set-03/e2-7".into()],
            },
            outcome: Outcome::Ok,
            start_ns: 100,
            end_ns: 200,
            error: None,
        };
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(
            text,
            r#"{"index":9,"process":4,"node":1,"f":"lookup","via":"search","strong":true,"elements":["set-03/e2-7"],"seen":["set-03/e2-7"],"outcome":"ok","start_ns":100,"end_ns":200}"#
        );
        assert_eq!(serde_json::from_str::<Op>(&text).unwrap(), op);
    }

    #[test]
    fn invalid_beats_unknown_beats_valid() {
        assert_eq!(Validity::Valid.and(Validity::Unknown), Validity::Unknown);
        assert_eq!(Validity::Unknown.and(Validity::Invalid), Validity::Invalid);
        assert_eq!(Validity::Valid.and(Validity::Valid), Validity::Valid);
    }
}
