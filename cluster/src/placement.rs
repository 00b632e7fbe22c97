//! Where data lives: `shard = stable_hash(asset_id) mod S`, and rendezvous hashing of shard
//! replicas onto nodes. Pure functions: every node computes the same map from the same config.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The id types and the asset → shard function are part of the wire and storage formats
/// (every node and every client that routes must agree), so they live in `protocol`.
pub use rushes_protocol::peer::{shard_for_asset, stable_hash, NodeId, ShardId};

const RENDEZVOUS_SEED: u64 = 0x7275_7368_6573_0002;

/// The nodes holding replicas of `shard`, best first, by rendezvous (highest random weight)
/// hashing: adding or removing a node moves only the replicas that must move.
pub fn replicas_for_shard(shard: ShardId, nodes: &[NodeId], replication_factor: usize) -> Vec<NodeId> {
    let mut weighted: Vec<(u64, NodeId)> = nodes
        .iter()
        .map(|&node| {
            let mut key = [0u8; 12];
            key[..4].copy_from_slice(&shard.to_be_bytes());
            key[4..].copy_from_slice(&node.to_be_bytes());
            (xxh3_64_with_seed(&key, RENDEZVOUS_SEED), node)
        })
        .collect();
    weighted.sort_unstable_by(|a, b| b.cmp(a));
    weighted.dedup_by_key(|(_, node)| *node);
    weighted.into_iter().take(replication_factor).map(|(_, node)| node).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("the cluster has no nodes: list them under [[cluster.nodes]]")]
    NoNodes,
    #[error("shard count is 0: set cluster.shards to at least 1")]
    NoShards,
    #[error("replication factor {replication_factor} is outside 1..={nodes} (the number of nodes)")]
    ReplicationFactor { replication_factor: usize, nodes: usize },
    #[error("node id {0} is listed twice")]
    DuplicateNode(NodeId),
}

/// Which nodes hold which shard: the same on every node that has the same member list, shard
/// count and replication factor (whatever the order of the list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    shard_count: u32,
    /// Voters of each shard: rendezvous order (best first) at bootstrap, the cluster map's
    /// order after changes. Reads and writes are routed to these.
    replicas: Vec<Vec<NodeId>>,
    /// Every node holding or receiving a replica of each shard (voters, learners, the target
    /// of a move in flight): who may speak Raft for it and fetch its snapshots.
    holders: Vec<Vec<NodeId>>,
}

impl ShardMap {
    pub fn new(shard_count: u32, nodes: &[NodeId], replication_factor: usize) -> Result<Self, PlacementError> {
        if nodes.is_empty() {
            return Err(PlacementError::NoNodes);
        }
        if shard_count == 0 {
            return Err(PlacementError::NoShards);
        }
        let mut sorted = nodes.to_vec();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(PlacementError::DuplicateNode(pair[0]));
        }
        if replication_factor == 0 || replication_factor > sorted.len() {
            return Err(PlacementError::ReplicationFactor { replication_factor, nodes: sorted.len() });
        }
        let replicas: Vec<Vec<NodeId>> = (0..shard_count).map(|shard| replicas_for_shard(shard, &sorted, replication_factor)).collect();
        Ok(ShardMap { shard_count, holders: replicas.clone(), replicas })
    }

    /// The routing view of a replicated cluster map: each shard's voters, and its holders.
    pub fn from_cluster_map(map: &crate::membership::ClusterMap) -> ShardMap {
        ShardMap {
            shard_count: map.shard_count,
            replicas: map.shards.iter().map(|p| p.voters.clone()).collect(),
            holders: map.shards.iter().map(|p| p.holders().into_iter().collect()).collect(),
        }
    }

    /// Every node that holds or is receiving a replica of `shard`.
    pub fn holders(&self, shard: ShardId) -> &[NodeId] {
        self.holders.get(shard as usize).map_or(&[], Vec::as_slice)
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn shard_for_asset(&self, asset_id: &str) -> ShardId {
        shard_for_asset(asset_id, self.shard_count)
    }

    /// The nodes holding `shard`, best first (an empty slice for a shard outside the map).
    pub fn replicas(&self, shard: ShardId) -> &[NodeId] {
        self.replicas.get(shard as usize).map_or(&[], Vec::as_slice)
    }

    /// The shards `node` holds (or is receiving) a replica of, ascending.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        (0..self.shard_count).filter(|&shard| self.holders(shard).contains(&node)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_map_is_the_same_for_any_member_order_and_places_distinct_replicas() {
        let map = ShardMap::new(16, &[3, 1, 2, 5, 4], 3).unwrap();
        assert_eq!(map, ShardMap::new(16, &[1, 2, 3, 4, 5], 3).unwrap());
        for shard in 0..16 {
            let replicas = map.replicas(shard);
            assert_eq!(replicas.len(), 3);
            let mut distinct = replicas.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "shard {shard}: {replicas:?}");
        }
        // Every replica is counted once per node, and shards_on agrees with replicas.
        let total: usize = [1, 2, 3, 4, 5].iter().map(|&n| map.shards_on(n).len()).sum();
        assert_eq!(total, 16 * 3);
        for node in 1..=5 {
            for shard in map.shards_on(node) {
                assert!(map.replicas(shard).contains(&node));
            }
        }
        assert!(map.replicas(99).is_empty());
        assert_eq!(map.shard_for_asset("s01e01"), shard_for_asset("s01e01", 16));
    }

    #[test]
    fn shard_map_spreads_replicas_and_moves_few_when_a_node_joins() {
        let nodes: Vec<NodeId> = (1..=4).collect();
        let map = ShardMap::new(256, &nodes, 3).unwrap();
        for &node in &nodes {
            // 256 * 3 / 4 = 192 on average.
            let held = map.shards_on(node).len();
            assert!((150..=234).contains(&held), "node {node} holds {held} shards");
        }
        let grown = ShardMap::new(256, &[1, 2, 3, 4, 5], 3).unwrap();
        let moved: usize = (0..256)
            .map(|shard| {
                let before = map.replicas(shard);
                grown.replicas(shard).iter().filter(|n| !before.contains(n)).count()
            })
            .sum();
        // Ideal: the new node takes 3/5 of a replica per shard (about 154); nothing else moves.
        assert!(moved < 200, "{moved} replicas moved");
        assert!((0..256).all(|shard| grown.replicas(shard).iter().filter(|&&n| n != 5).all(|n| map.replicas(shard).contains(n))));
    }

    #[test]
    fn shard_map_refuses_impossible_configurations() {
        assert_eq!(ShardMap::new(4, &[], 1), Err(PlacementError::NoNodes));
        assert_eq!(ShardMap::new(0, &[1], 1), Err(PlacementError::NoShards));
        assert_eq!(ShardMap::new(4, &[1, 2], 3), Err(PlacementError::ReplicationFactor { replication_factor: 3, nodes: 2 }));
        assert_eq!(ShardMap::new(4, &[1, 2], 0), Err(PlacementError::ReplicationFactor { replication_factor: 0, nodes: 2 }));
        assert_eq!(ShardMap::new(4, &[1, 2, 1], 2), Err(PlacementError::DuplicateNode(1)));
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned values: if these change, every stored asset would move to another shard.
        assert_eq!(shard_for_asset("s01e01", 8), shard_for_asset("s01e01", 8));
        let pinned: Vec<u32> = ["s01e01", "s03e07", "asset-42"].iter().map(|a| shard_for_asset(a, 1024)).collect();
        let again: Vec<u32> = ["s01e01", "s03e07", "asset-42"].iter().map(|a| (stable_hash(a.as_bytes()) % 1024) as u32).collect();
        assert_eq!(pinned, again);
        assert_eq!(stable_hash(b"s01e01"), xxh3_64_with_seed(b"s01e01", 0x7275_7368_6573_0001), "the seed is part of the storage format");
    }

    #[test]
    fn shards_are_balanced() {
        let shards = 8u32;
        let mut counts = vec![0usize; shards as usize];
        for i in 0..80_000 {
            counts[shard_for_asset(&format!("asset-{i}"), shards) as usize] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "unbalanced: {count}");
        }
    }

    #[test]
    fn rendezvous_is_deterministic_and_minimal_on_change() {
        let nodes = [1, 2, 3, 4, 5];
        for shard in 0..64 {
            let replicas = replicas_for_shard(shard, &nodes, 3);
            assert_eq!(replicas.len(), 3);
            assert_eq!(replicas, replicas_for_shard(shard, &[5, 4, 3, 2, 1], 3));
            // Removing a node that holds no replica of this shard changes nothing.
            if let Some(absent) = nodes.iter().find(|n| !replicas.contains(n)) {
                let fewer: Vec<u64> = nodes.iter().copied().filter(|n| n != absent).collect();
                assert_eq!(replicas_for_shard(shard, &fewer, 3), replicas);
            }
        }
        assert_eq!(replicas_for_shard(0, &[7], 3), vec![7]);
    }
}
