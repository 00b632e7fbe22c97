//! A shard's storage: the sled store (Raft log, raw annotations, buckets, watermarks) and the
//! search indexes derived from it (Tantivy documents, usearch vectors).

pub mod blocks;
pub mod disk_guard;
pub mod flat_vectors;
pub mod identity;
pub mod index;
pub mod store;
