//! `rushes cluster add-node | remove-node | replace-node | move-replica | rebalance`: admin
//! requests to any node (forwarded to the metadata leader), then progress until every move is
//! done: a bar per moving replica (the new replica's applied index against the group's commit),
//! and a line when each move finishes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rushes_client::Client;
use serde_json::{json, Value};

use crate::meta::orchestrator::MAP_NOT_YET_HERE;

/// How often progress is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum MembershipCliError {
    #[error("{0}")]
    Client(#[from] rushes_client::ClientError),
    #[error("moves still in flight after {waited_s} s: {moves}; they continue in the background (rushes cluster status)")]
    Timeout { waited_s: u64, moves: String },
    #[error("{0}")]
    Refused(String),
}

/// One moving replica as `/v1/cluster` shows it.
struct MoveView {
    id: u64,
    label: String,
    phase: String,
    /// The new replica's applied index and the group's commit index (when observable).
    progress: Option<(u64, u64)>,
}

fn moves_of(status: &Value) -> (Vec<MoveView>, usize) {
    let mut moves = Vec::new();
    for m in status["membership"]["moves"].as_array().into_iter().flatten() {
        let id = m["move_id"].as_u64().unwrap_or(0);
        let add = m["add"].as_u64().unwrap_or(0);
        let label = format!(
            "{}: node {} -> node {add}",
            m["group"].as_str().unwrap_or("?"),
            m["remove"].as_u64().map_or("-".to_string(), |r| r.to_string())
        );
        let progress = m["shard"].as_u64().and_then(|shard| {
            let shard = status["shards"].as_array()?.iter().find(|s| s["shard"].as_u64() == Some(shard))?;
            let replicas = shard["replicas"].as_array()?;
            let commit = replicas.iter().filter_map(|r| r["commit_index"].as_u64()).max()?;
            let applied = replicas.iter().find(|r| r["node"].as_u64() == Some(add)).and_then(|r| r["applied_index"].as_u64()).unwrap_or(0);
            Some((applied, commit))
        });
        moves.push(MoveView { id, label, phase: m["phase"].as_str().unwrap_or("?").to_string(), progress });
    }
    let queued = status["membership"]["queued_moves"].as_array().map_or(0, Vec::len);
    (moves, queued)
}

/// What an admin request queued: the cluster map epoch its reply named (the map holding the
/// queued moves) and how many moves it queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub epoch: Option<u64>,
    pub moves: u64,
}

impl Queued {
    pub fn of_reply(reply: &Value) -> Queued {
        Queued { epoch: reply["epoch"].as_u64(), moves: reply["queued_moves"].as_u64().unwrap_or(0) }
    }
}

/// Whether the node's `/v1/cluster` shows a map at least as new as `epoch`. A request sent
/// to a node that is not the metadata leader is forwarded and answered with the leader's new
/// map, which that node may not have applied yet: until it has, it shows no move at all.
fn map_reached(status: &Value, epoch: Option<u64>) -> bool {
    match epoch {
        None => true,
        Some(wanted) => status["membership"]["epoch"].as_u64().is_some_and(|seen| seen >= wanted),
    }
}

/// Waits until the node follows the map `queued` names, then until no move is queued or in
/// flight, drawing a bar per moving replica (on a terminal) and printing a line as each
/// finishes (and one for moves that finished between two polls).
pub fn wait_for_moves(client: &Client, queued: Queued, timeout: Duration) -> Result<(), MembershipCliError> {
    let started = Instant::now();
    let mut reported = 0u64;
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix:<36} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut shown: BTreeMap<u64, (ProgressBar, String, Instant)> = BTreeMap::new();
    loop {
        let status = client.get_json("/v1/cluster")?;
        if !map_reached(&status, queued.epoch) {
            if started.elapsed() > timeout {
                let seen = &status["membership"]["epoch"];
                return Err(MembershipCliError::Timeout {
                    waited_s: started.elapsed().as_secs(),
                    moves: format!("this node still follows cluster map epoch {seen}, not yet {:?}", queued.epoch),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
            continue;
        }
        let (moves, waiting) = moves_of(&status);
        for m in &moves {
            let (bar, ..) = shown.entry(m.id).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(1).with_style(style.clone()).with_prefix(m.label.clone()));
                (bar, m.label.clone(), Instant::now())
            });
            if let Some((applied, commit)) = m.progress {
                bar.set_length(commit.max(1));
                bar.set_position(applied.min(commit));
            }
            bar.set_message(m.phase.clone());
        }
        let finished: Vec<u64> = shown.keys().copied().filter(|id| !moves.iter().any(|m| m.id == *id)).collect();
        for id in finished {
            if let Some((bar, label, since)) = shown.remove(&id) {
                bar.finish_and_clear();
                println!("{label}: done in {:.1} s", since.elapsed().as_secs_f64());
                reported += 1;
            }
        }
        if moves.is_empty() && waiting == 0 {
            let unseen = queued.moves.saturating_sub(reported);
            if unseen > 0 {
                println!("{unseen} more moves (finished between two polls): done in {:.1} s", started.elapsed().as_secs_f64());
            }
            return Ok(());
        }
        if started.elapsed() > timeout {
            let moves = moves.iter().map(|m| format!("{} ({})", m.label, m.phase)).collect::<Vec<_>>().join(", ");
            return Err(MembershipCliError::Timeout { waited_s: started.elapsed().as_secs(), moves: format!("{moves}; {waiting} queued") });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn post(client: &Client, path: &str, body: &Value) -> Result<Value, MembershipCliError> {
    let started = Instant::now();
    let reply = loop {
        match client.send("POST", path, "application/json", body.to_string().as_bytes()) {
            Ok(reply) => break reply,
            // Sent just after the cluster started, before the first map reached that node:
            // nothing was changed, so sending it again is safe.
            Err(e) if e.to_string().contains(MAP_NOT_YET_HERE) && started.elapsed() < MAP_WAIT => std::thread::sleep(POLL_INTERVAL),
            Err(e) => return Err(e.into()),
        }
    };
    serde_json::from_str(&reply).map_err(|e| MembershipCliError::Refused(format!("unreadable reply from {path}: {e}")))
}

/// How long a membership command waits for the first cluster map to reach the node it talks to.
const MAP_WAIT: Duration = Duration::from_secs(30);

fn is_member(client: &Client, id: u64) -> Result<bool, MembershipCliError> {
    let map = client.get_json("/v1/admin/cluster/map")?;
    Ok(map["members"].as_object().is_some_and(|members| members.contains_key(&id.to_string())))
}

/// Waits until node `id` answers in the cluster status as up and a member.
fn wait_for_member_up(client: &Client, id: u64, timeout: Duration) -> Result<(), MembershipCliError> {
    let started = Instant::now();
    loop {
        let status = client.get_json("/v1/cluster")?;
        let up = status["nodes"].as_array().into_iter().flatten().any(|n| n["id"].as_u64() == Some(id) && n["up"].as_bool() == Some(true));
        let (moves, queued) = moves_of(&status);
        if up && moves.is_empty() && queued == 0 {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(MembershipCliError::Timeout {
                waited_s: started.elapsed().as_secs(),
                moves: format!("node {id} is not up yet (is `rushes serve` running there with cluster.join = true?)"),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// `rushes cluster add-node`: the member, then its metadata replica (and any rebalance asked).
pub fn add_node(
    client: &Client,
    id: u64,
    raft_addr: &str,
    http_addr: &str,
    rebalance: bool,
    wait: Option<Duration>,
) -> Result<(), MembershipCliError> {
    let reply = post(client, "/v1/admin/cluster/nodes", &json!({ "id": id, "raft_addr": raft_addr, "http_addr": http_addr }))?;
    println!("node {id} is a member (cluster map epoch {})", reply["epoch"]);
    let Some(timeout) = wait else { return Ok(()) };
    wait_for_member_up(client, id, timeout)?;
    println!("node {id} is up and follows the cluster map");
    if rebalance {
        return self::rebalance(client, None, wait);
    }
    Ok(())
}

/// `rushes cluster remove-node`: drain, wait, forget.
pub fn remove_node(client: &Client, id: u64, timeout: Duration) -> Result<(), MembershipCliError> {
    let reply = post(client, &format!("/v1/admin/cluster/nodes/{id}/drain"), &json!({}))?;
    println!("node {id} is draining: {} replicas to move", reply["queued_moves"]);
    wait_for_moves(client, Queued::of_reply(&reply), timeout)?;
    forget(client, id, timeout)
}

/// Removes a member once it holds nothing (its metadata replica leaves after its shards).
fn forget(client: &Client, id: u64, timeout: Duration) -> Result<(), MembershipCliError> {
    let started = Instant::now();
    loop {
        match client.send("DELETE", &format!("/v1/admin/cluster/nodes/{id}"), "application/json", b"") {
            Ok(_) => {
                println!("node {id} is no longer a member; stop its process and reclaim its disk");
                return Ok(());
            }
            Err(e) if started.elapsed() < timeout && (e.is_retryable() || e.to_string().contains("still holds")) => {
                std::thread::sleep(POLL_INTERVAL);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `rushes cluster replace-node OLD --with NEW`: NEW (added first if addresses are given)
/// receives every replica of OLD, which may be dead; then OLD is forgotten.
pub fn replace_node(client: &Client, old: u64, new: u64, addrs: Option<(&str, &str)>, timeout: Duration) -> Result<(), MembershipCliError> {
    if !is_member(client, new)? {
        let (raft_addr, http_addr) = addrs.ok_or_else(|| {
            MembershipCliError::Refused(format!("node {new} is not a member: give --raft-addr and --http-addr to add it"))
        })?;
        add_node(client, new, raft_addr, http_addr, false, Some(timeout))?;
    }
    let reply = post(client, &format!("/v1/admin/cluster/nodes/{old}/replace"), &json!({ "with": new }))?;
    println!("node {old} is being replaced by node {new}: {} replicas to move", reply["queued_moves"]);
    wait_for_moves(client, Queued::of_reply(&reply), timeout)?;
    forget(client, old, timeout)
}

pub fn move_replica(client: &Client, shard: u32, from: u64, to: u64, wait: Option<Duration>) -> Result<(), MembershipCliError> {
    let reply = post(client, "/v1/admin/cluster/moves", &json!({ "shard": shard, "from": from, "to": to }))?;
    println!("shard {shard}: moving its replica from node {from} to node {to}");
    match wait {
        Some(timeout) => wait_for_moves(client, Queued::of_reply(&reply), timeout),
        None => Ok(()),
    }
}

pub fn rebalance(client: &Client, max_concurrent_moves: Option<usize>, wait: Option<Duration>) -> Result<(), MembershipCliError> {
    let body = match max_concurrent_moves {
        Some(n) => json!({ "max_concurrent_moves": n }),
        None => json!({}),
    };
    let reply = post(client, "/v1/admin/cluster/rebalance", &body)?;
    println!("rebalance: {} moves queued", reply["queued_moves"]);
    match wait {
        Some(timeout) => wait_for_moves(client, Queued::of_reply(&reply), timeout),
        None => Ok(()),
    }
}

/// `rushes cluster cancel-moves`: gives up queued moves and moves not past their promotion
/// (a move to a node that never started, say); learners they added are removed.
pub fn cancel_moves(client: &Client) -> Result<(), MembershipCliError> {
    let reply = post(client, "/v1/admin/cluster/moves/cancel", &json!({}))?;
    println!("moves cancelled; {} past their promotion finish on their own", reply["moves_in_flight"]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that has not applied the map a forwarded request was answered with shows no
    /// move: waiting must not end there.
    #[test]
    fn moves_are_waited_for_only_on_a_map_holding_them() {
        let status = |epoch: Value| json!({ "membership": { "epoch": epoch, "moves": [], "queued_moves": [] } });
        let reply = json!({ "epoch": 12, "queued_moves": 1 });
        let queued = Queued::of_reply(&reply);
        assert_eq!(queued, Queued { epoch: Some(12), moves: 1 });
        assert!(!map_reached(&status(json!(11)), queued.epoch), "a stale map shows no move yet");
        assert!(!map_reached(&status(Value::Null), queued.epoch), "a node without a map has not reached it");
        assert!(map_reached(&status(json!(12)), queued.epoch));
        assert!(map_reached(&status(json!(13)), queued.epoch));
        // A reply without an epoch (an older node) waits as before.
        assert!(map_reached(&status(json!(1)), Queued::of_reply(&json!({})).epoch));
    }
}
