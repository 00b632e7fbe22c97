//! The `GET /v1/cluster` reply, as the suite reads it.
//!
//! Only the fields the checks depend on are declared; anything else the node adds is ignored.
//! `node_id`, `shards[].shard`, `replicas[].node` and `replicas[].local` are required: without
//! them a reply cannot be attributed to a replica, and a parse error says so plainly.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterStatus {
    #[serde(default)]
    pub cluster_id: String,
    /// The node that answered.
    pub node_id: u64,
    #[serde(default)]
    pub replication_factor: usize,
    #[serde(default)]
    pub nodes: Vec<MemberStatus>,
    pub shards: Vec<ShardStatus>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    #[serde(default)]
    pub http_addr: String,
    #[serde(default)]
    pub raft_addr: String,
    #[serde(default)]
    pub up: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShardStatus {
    pub shard: u32,
    /// The leader as this node knows it, if any.
    #[serde(default)]
    pub leader: Option<u64>,
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReplicaStatus {
    pub node: u64,
    /// True for the replica held by the node that answered; only those carry trustworthy
    /// indexes and a digest.
    pub local: bool,
    #[serde(default)]
    pub reachable: bool,
    #[serde(default)]
    pub leader: bool,
    #[serde(default)]
    pub term: Option<u64>,
    #[serde(default)]
    pub commit_index: Option<u64>,
    #[serde(default)]
    pub applied_index: Option<u64>,
    #[serde(default)]
    pub fused_index: Option<u64>,
    #[serde(default)]
    pub indexed_index: Option<u64>,
    #[serde(default)]
    pub raw_annotations: Option<u64>,
    /// Fused one-second buckets and index documents (local replicas only): equal once the
    /// replica has indexed everything it fused.
    #[serde(default)]
    pub buckets: Option<u64>,
    #[serde(default)]
    pub index_docs: Option<u64>,
    /// The replica stopped after a storage or consistency failure (see the node's log).
    #[serde(default)]
    pub failed: bool,
    /// First entry still in the replica's log (local replicas only).
    #[serde(default)]
    pub log_first_index: Option<u64>,
    /// Snapshots the replica installed since its process started (local replicas only).
    #[serde(default)]
    pub snapshots_installed: Option<u64>,
    /// Snapshot chunks the replica fetched since its process started (local replicas only),
    /// counted as each chunk arrives: it moves while a fetch is in progress.
    #[serde(default)]
    pub snapshot_chunks_fetched: Option<u64>,
    /// Raw store bytes those chunks carried.
    #[serde(default)]
    pub snapshot_bytes_fetched: Option<u64>,
    /// Milliseconds spent in snapshot fetches, added when a fetch ends (staged or failed): a
    /// fetch whose chunks moved this counter did not is still running.
    #[serde(default)]
    pub snapshot_fetch_ms: Option<u64>,
    /// Hash of the shard's raw store; only for local replicas and only with `?digest=true`.
    #[serde(default)]
    pub raw_digest: Option<String>,
}

impl ClusterStatus {
    pub fn parse(value: serde_json::Value) -> Result<ClusterStatus, String> {
        let text = value.to_string();
        serde_json::from_value(value).map_err(|e| format!("unexpected /v1/cluster reply ({e}): {text:.400}"))
    }

    pub fn shard(&self, shard: u32) -> Option<&ShardStatus> {
        self.shards.iter().find(|s| s.shard == shard)
    }

    /// This node's own replica of `shard`, if it holds one.
    pub fn local_replica(&self, shard: u32) -> Option<&ReplicaStatus> {
        self.shard(shard)?.replicas.iter().find(|r| r.local && r.node == self.node_id)
    }

    /// Every replica this node holds, with its shard.
    pub fn local_replicas(&self) -> impl Iterator<Item = (u32, &ReplicaStatus)> {
        self.shards
            .iter()
            .flat_map(move |s| s.replicas.iter().filter(move |r| r.local && r.node == self.node_id).map(move |r| (s.shard, r)))
    }
}

/// `GET /v1/cluster` (with `?digest=true` when asked) from the node at `base_url`, which must
/// answer as node `expected_id`.
pub fn fetch(http: &crate::http::Http, base_url: &str, expected_id: u64, digest: bool) -> Result<ClusterStatus, String> {
    let path = if digest { "/v1/cluster?digest=true" } else { "/v1/cluster" };
    let value = http.get_json(&format!("{base_url}{path}")).map_err(|e| e.to_string())?;
    let status = ClusterStatus::parse(value)?;
    if status.node_id != expected_id {
        return Err(format!("{base_url} answered as node {}, expected node {expected_id}", status.node_id));
    }
    Ok(status)
}

/// Whether the nodes' reports show a converged cluster: for each of `shards`, the replicas the
/// nodes report as their own all have the same `applied_index`, have indexed it, and there are
/// `replication_factor` of them. Returns each shard's applied index, or why not.
pub fn convergence(
    statuses: &[(u64, ClusterStatus)],
    shards: u32,
    replication_factor: usize,
) -> Result<std::collections::BTreeMap<u32, u64>, String> {
    let mut applied: std::collections::BTreeMap<u32, Vec<(u64, u64, u64)>> = std::collections::BTreeMap::new();
    for (node, status) in statuses {
        for (shard, replica) in status.local_replicas() {
            let applied_index = replica.applied_index.ok_or_else(|| format!("node {node} shard {shard}: no applied_index"))?;
            let indexed_index = replica.indexed_index.ok_or_else(|| format!("node {node} shard {shard}: no indexed_index"))?;
            applied.entry(shard).or_default().push((*node, applied_index, indexed_index));
        }
    }
    let mut result = std::collections::BTreeMap::new();
    for shard in 0..shards {
        let replicas = applied.get(&shard).map(Vec::as_slice).unwrap_or_default();
        if replicas.len() != replication_factor {
            return Err(format!("shard {shard}: {} local replicas reported ({replicas:?}), expected {replication_factor}", replicas.len()));
        }
        let first = replicas[0].1;
        if replicas.iter().any(|(_, a, i)| *a != first || i < a) {
            return Err(format!("shard {shard}: (node, applied, indexed) = {replicas:?}"));
        }
        result.insert(shard, first);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let value = serde_json::json!({
            "cluster_id": "jepsen", "node_id": 1, "replication_factor": 3,
            "nodes": [{"id": 1, "http_addr": "127.0.0.1:1", "raft_addr": "127.0.0.1:2", "up": true}],
            "shards": [{"shard": 0, "leader": 2,
                        "replicas": [{"node": 1, "local": true, "reachable": true, "leader": false, "term": 3,
                                      "commit_index": 10, "applied_index": 10, "fused_index": 10, "indexed_index": 10,
                                      "raw_annotations": 500, "raw_digest": "9f2c"},
                                     {"node": 2, "local": false, "reachable": false}]},
                       {"shard": 1, "leader": null, "replicas": []}]
        });
        let status = ClusterStatus::parse(value).unwrap();
        assert_eq!(status.node_id, 1);
        assert_eq!(status.shard(0).unwrap().leader, Some(2));
        assert_eq!(status.shard(1).unwrap().leader, None);
        let local = status.local_replica(0).unwrap();
        assert_eq!(local.applied_index, Some(10));
        assert_eq!(local.raw_digest.as_deref(), Some("9f2c"));
        assert_eq!(status.local_replicas().count(), 1);
        assert!(status.shard(0).unwrap().replicas[1].indexed_index.is_none());
    }

    #[test]
    fn names_what_is_missing() {
        let error = ClusterStatus::parse(serde_json::json!({"shards": []})).unwrap_err();
        assert!(error.contains("node_id"), "{error}");
    }
}
