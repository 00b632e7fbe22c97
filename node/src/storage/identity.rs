//! What a data dir belongs to: its cluster, its node id and the shard count its data was
//! partitioned with. Assets are placed by `hash(asset_id) % shards`, so opening stored data
//! with another shard count would silently look for assets on the wrong shards; the count is
//! recorded the first time a data dir is used and every later start is checked against it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The identity file's format.
pub const IDENTITY_FORMAT: u32 = 1;
const IDENTITY_FILE: &str = "identity.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDirIdentity {
    pub format: u32,
    pub cluster_id: String,
    pub node_id: u64,
    pub shard_count: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "the data dir {dir} holds data partitioned into {stored} shards, but cluster.shards is {configured}: \
         assets would be looked for on the wrong shards. Set cluster.shards = {stored} (the shard count is \
         fixed once data exists), or start with an empty data dir"
    )]
    ShardCount { dir: PathBuf, stored: u32, configured: u32 },
    #[error(
        "the data dir {dir} belongs to cluster {stored:?}, but cluster.cluster_id is {configured:?}: set \
         cluster.cluster_id = {stored:?}, or start with an empty data dir"
    )]
    Cluster { dir: PathBuf, stored: String, configured: String },
    #[error(
        "the data dir {dir} belongs to node {stored}, but node.id is {configured}: set node.id = {stored}, or start with an empty data dir"
    )]
    Node { dir: PathBuf, stored: u64, configured: u64 },
    #[error("the data dir {dir} holds shard {shard}, which cluster.shards = {configured} cannot have: set cluster.shards to the count this data was made with")]
    LegacyShard { dir: PathBuf, shard: u32, configured: u32 },
    #[error("{path}: identity format {format} is newer than this build reads ({IDENTITY_FORMAT}); run a newer rushes")]
    NewerFormat { path: PathBuf, format: u32 },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Checks `expected` against the identity recorded in `data_dir`, or records it when there is
/// none. A data dir from before identities were recorded is accepted when none of its shard
/// folders is out of range, and recorded.
pub fn check_or_record(data_dir: &Path, expected: &DataDirIdentity) -> Result<(), IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    let io = |source| IdentityError::Io { path: path.clone(), source };
    match fs::read(&path) {
        Ok(bytes) => {
            let stored: DataDirIdentity =
                serde_json::from_slice(&bytes).map_err(|e| IdentityError::Unreadable { path: path.clone(), reason: e.to_string() })?;
            if stored.format > IDENTITY_FORMAT {
                return Err(IdentityError::NewerFormat { path, format: stored.format });
            }
            let dir = data_dir.to_path_buf();
            if stored.shard_count != expected.shard_count {
                return Err(IdentityError::ShardCount { dir, stored: stored.shard_count, configured: expected.shard_count });
            }
            if stored.cluster_id != expected.cluster_id {
                return Err(IdentityError::Cluster { dir, stored: stored.cluster_id, configured: expected.cluster_id.clone() });
            }
            if stored.node_id != expected.node_id {
                return Err(IdentityError::Node { dir, stored: stored.node_id, configured: expected.node_id });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(shard) = legacy_shard_out_of_range(data_dir, expected.shard_count).map_err(io)? {
                return Err(IdentityError::LegacyShard { dir: data_dir.to_path_buf(), shard, configured: expected.shard_count });
            }
            fs::create_dir_all(data_dir).map_err(io)?;
            write_atomically(&path, expected).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// A shard folder (`shards/NNNN`) whose number the configured count cannot have.
fn legacy_shard_out_of_range(data_dir: &Path, shard_count: u32) -> std::io::Result<Option<u32>> {
    let shards = data_dir.join("shards");
    let entries = match fs::read_dir(&shards) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(shard) = name.to_str().and_then(|n| n.parse::<u32>().ok()) {
            if shard >= shard_count {
                return Ok(Some(shard));
            }
        }
    }
    Ok(None)
}

fn write_atomically(path: &Path, identity: &DataDirIdentity) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(identity).map_err(std::io::Error::other)?;
    let staged = path.with_extension("json.staged");
    let mut file = fs::File::create(&staged)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&staged, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(shard_count: u32) -> DataDirIdentity {
        DataDirIdentity { format: IDENTITY_FORMAT, cluster_id: "c".into(), node_id: 1, shard_count }
    }

    #[test]
    fn the_first_start_records_and_a_changed_shard_count_is_refused_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_or_record(dir.path(), &identity(4)).expect("first start");
        check_or_record(dir.path(), &identity(4)).expect("same config");
        let error = check_or_record(dir.path(), &identity(8)).expect_err("changed count");
        let text = error.to_string();
        assert!(text.contains("into 4 shards") && text.contains("cluster.shards is 8"), "{text}");
        let other_cluster = DataDirIdentity { cluster_id: "d".into(), ..identity(4) };
        assert!(check_or_record(dir.path(), &other_cluster).expect_err("other cluster").to_string().contains("cluster.cluster_id"));
        let other_node = DataDirIdentity { node_id: 2, ..identity(4) };
        assert!(check_or_record(dir.path(), &other_node).expect_err("other node").to_string().contains("node.id = 1"));
    }

    #[test]
    fn a_legacy_data_dir_is_accepted_unless_a_shard_is_out_of_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("shards").join("0005")).expect("legacy shard");
        let error = check_or_record(dir.path(), &identity(4)).expect_err("shard 5 of 4");
        assert!(error.to_string().contains("shard 5"), "{error}");
        assert!(!dir.path().join(IDENTITY_FILE).exists(), "a refused start records nothing");
        check_or_record(dir.path(), &identity(8)).expect("shard 5 of 8");
        assert!(check_or_record(dir.path(), &identity(4)).is_err(), "now recorded");
    }

    #[test]
    fn a_newer_or_damaged_identity_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(IDENTITY_FILE), br#"{"format": 9, "cluster_id": "c", "node_id": 1, "shard_count": 4}"#).expect("write");
        assert!(check_or_record(dir.path(), &identity(4)).expect_err("newer").to_string().contains("newer"));
        fs::write(dir.path().join(IDENTITY_FILE), b"{").expect("write");
        assert!(check_or_record(dir.path(), &identity(4)).is_err());
    }
}
