//! `rushes backup` and `rushes restore`: a cluster's raw data to a directory and back, over
//! the admin HTTP API, while the cluster keeps serving.
//!
//! A backup reads each shard in three steps. (1) It notes the shard's commit index `I`. (2) It
//! streams the shard's export (asset records and raw annotations) from replicas that have
//! applied at least `I`. The store keeps applying meanwhile, so the export is fuzzy: every
//! record reflects some state in `[I, J]`. (3) It notes the commit index `J` again and reads the
//! committed commands in `(I, J]` from the log, and replays them over the export: a key that
//! any of them touches takes the value they leave, every other key was stable in the window.
//! The file then holds the shard at index `J`, which the manifest records with a checksum.
//! (The one case replay cannot reproduce: a write the shard refused at apply inside the
//! window, two clients racing different content for one id past the ingest pre-check; it is
//! restored as if accepted.)
//!
//! A restore sends the files to any cluster (another node or shard count) as ordinary writes:
//! `PUT /v1/assets/{id}` per record and `POST /v1/annotations` in batches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rushes_client::{Client, ClientError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The manifest's format.
pub const BACKUP_FORMAT: u32 = 1;
const MANIFEST_FILE: &str = "manifest.json";
/// Attempts per shard when its log was compacted under the backup or a replica failed.
const SHARD_ATTEMPTS: u32 = 3;
/// A restore's batches: well inside the default limits (10,000 items, 64 MiB).
const RESTORE_BATCH_ITEMS: usize = 2_000;
const RESTORE_BATCH_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub cluster_id: String,
    pub shard_count: u32,
    pub created_unix_ms: u64,
    pub shards: Vec<ShardBackup>,
    pub annotations: u64,
    pub asset_records: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardBackup {
    pub shard: u32,
    /// The file holds the shard exactly as it was after applying this log index.
    pub index: u64,
    /// Where the export started (the commands in `(started_at_index, index]` were replayed on it).
    pub started_at_index: u64,
    pub file: String,
    pub annotations: u64,
    pub asset_records: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Backs up every shard the server's cluster has into `out` (created; must be empty).
pub fn backup(client: &Client, out: &Path, mut progress: impl FnMut(&str)) -> Result<Manifest, BackupError> {
    if out.exists() && fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(BackupError::Invalid(format!("{} is not empty: back up into a new directory", out.display())));
    }
    fs::create_dir_all(out).map_err(io(out))?;
    let status = client.get_json("/v1/cluster")?;
    let cluster_id = status["cluster_id"].as_str().unwrap_or("").to_string();
    let shard_count = status["shards"].as_array().map_or(0, |s| s.len()) as u32;
    if shard_count == 0 {
        return Err(BackupError::Invalid("the server reported no shards".into()));
    }
    let mut shards = Vec::new();
    for shard in 0..shard_count {
        let mut attempt = 0;
        let entry = loop {
            attempt += 1;
            match backup_shard(client, out, shard) {
                Ok(entry) => break entry,
                Err(e) if attempt < SHARD_ATTEMPTS => {
                    progress(&format!("shard {shard}: {e}; starting the shard again"));
                    std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
                }
                Err(e) => return Err(e),
            }
        };
        progress(&format!(
            "shard {shard}: {} annotations, {} asset records at index {} ({} log entries replayed)",
            entry.annotations,
            entry.asset_records,
            entry.index,
            entry.index - entry.started_at_index
        ));
        shards.push(entry);
    }
    let manifest = Manifest {
        format: BACKUP_FORMAT,
        cluster_id,
        shard_count,
        created_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        annotations: shards.iter().map(|s| s.annotations).sum(),
        asset_records: shards.iter().map(|s| s.asset_records).sum(),
        shards,
    };
    let path = out.join(MANIFEST_FILE);
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Invalid(e.to_string()))?;
    write_synced(&path, &text)?;
    Ok(manifest)
}

/// The shard's commit index, the highest any replica reports.
fn commit_index(client: &Client, shard: u32) -> Result<u64, BackupError> {
    let status = client.get_json("/v1/cluster")?;
    let replicas = status["shards"][shard as usize]["replicas"].as_array().cloned().unwrap_or_default();
    replicas
        .iter()
        .filter_map(|r| r["commit_index"].as_u64())
        .max()
        .ok_or_else(|| BackupError::Invalid(format!("no replica of shard {shard} reported its commit index")))
}

fn backup_shard(client: &Client, out: &Path, shard: u32) -> Result<ShardBackup, BackupError> {
    let started_at_index = commit_index(client, shard)?;
    // (2) The fuzzy export, to a staging file.
    let staged = out.join(format!("shard-{shard:04}.export"));
    {
        let mut reader =
            BufReader::new(client.get_stream(&format!("/v1/export?shard={shard}&records=true&min_applied={started_at_index}"))?);
        let mut writer = BufWriter::new(File::create(&staged).map_err(io(&staged))?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io(&staged))? == 0 {
                break;
            }
            if line.starts_with(b"{\"error\"") {
                return Err(BackupError::Invalid(format!("the export of shard {shard} failed: {}", String::from_utf8_lossy(&line).trim())));
            }
            writer.write_all(&line).map_err(io(&staged))?;
        }
        writer.flush().map_err(io(&staged))?;
    }
    // (3) The commands applied while it was read.
    let index = commit_index(client, shard)?.max(started_at_index);
    let mut tail = Tail::default();
    let mut after = started_at_index;
    while after < index {
        let reply = client.get_json(&format!("/v1/admin/shards/{shard}/log?after={after}&through={index}"))?;
        let covered = reply["covered_through"].as_u64().unwrap_or(0);
        if covered <= after || covered > index {
            return Err(BackupError::Invalid(format!("shard {shard}: the log read after {after} covered through {covered}")));
        }
        for command in reply["commands"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            tail.replay(&command["command"])?;
        }
        after = covered;
    }
    let file = format!("shard-{shard:04}.ndjson");
    let path = out.join(&file);
    let (annotations, asset_records) = tail.write_merged(&staged, &path)?;
    fs::remove_file(&staged).map_err(io(&staged))?;
    let (bytes, sha256) = file_digest(&path)?;
    Ok(ShardBackup { shard, index, started_at_index, file, annotations, asset_records, bytes, sha256 })
}

/// What the commands after the export's start did, key by key.
#[derive(Default)]
struct Tail {
    /// Annotations the commands wrote (`Some`) or removed (`None`), by (asset, id).
    annotations: HashMap<(String, String), Option<Vec<u8>>>,
    /// Asset records the commands wrote or removed.
    records: HashMap<String, Option<Vec<u8>>>,
    /// Assets deleted whole: the export's lines for them are void.
    cleared: HashSet<String>,
    /// Assets whose superseded model versions were purged.
    purged: HashSet<String>,
}

impl Tail {
    fn replay(&mut self, command: &Value) -> Result<(), BackupError> {
        if let Some(lines) = command["ingest"].as_array() {
            for line in lines {
                let line = line.as_str().unwrap_or("");
                let key = annotation_key(line.as_bytes())
                    .ok_or_else(|| BackupError::Invalid(format!("a logged annotation has no asset_id or id: {line:.200}")))?;
                self.annotations.insert(key, Some(line.as_bytes().to_vec()));
            }
        } else if let Some(record) = command.get("upsert_asset") {
            let asset_id = record["asset_id"].as_str().unwrap_or("").to_string();
            self.records.insert(asset_id, Some(serde_json::json!({ "asset_record": record }).to_string().into_bytes()));
        } else if let Some(asset_id) = command["delete_asset"].as_str() {
            self.annotations.retain(|(asset, _), _| asset != asset_id);
            self.cleared.insert(asset_id.to_string());
            self.records.insert(asset_id.to_string(), None);
        } else if let Some(target) = command.get("delete_annotation") {
            let key = (target["asset_id"].as_str().unwrap_or("").to_string(), target["annotation_id"].as_str().unwrap_or("").to_string());
            self.annotations.insert(key, None);
        } else if let Some(assets) = command["purge_superseded"].as_array() {
            self.purged.extend(assets.iter().filter_map(|a| a.as_str().map(str::to_string)));
        } else {
            return Err(BackupError::Invalid(format!("a logged command this build does not know: {command:.200}")));
        }
        Ok(())
    }

    /// The export with the commands applied, to `path`; (annotations, asset records) written.
    fn write_merged(&self, export: &Path, path: &Path) -> Result<(u64, u64), BackupError> {
        let mut writer = BufWriter::new(File::create(path).map_err(io(path))?);
        let (mut annotations, mut records) = (0u64, 0u64);
        // Annotations of purged assets are held back until the highest versions are known.
        let mut purged_lines: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut emit =
            |line: &[u8], writer: &mut BufWriter<File>, purged_lines: &mut BTreeMap<String, Vec<Vec<u8>>>| -> Result<(), BackupError> {
                if record_asset(line).is_some() {
                    records += 1;
                } else if let Some((asset, _)) = annotation_key(line) {
                    if self.purged.contains(&asset) {
                        purged_lines.entry(asset).or_default().push(line.to_vec());
                        return Ok(());
                    }
                    annotations += 1;
                }
                writer.write_all(line).and_then(|_| writer.write_all(b"\n")).map_err(io(path))
            };
        let mut reader = BufReader::new(File::open(export).map_err(io(export))?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io(export))? == 0 {
                break;
            }
            let trimmed = line.strip_suffix(b"\n").unwrap_or(&line);
            if trimmed.is_empty() {
                continue;
            }
            let keep = if let Some(asset) = record_asset(trimmed) {
                !self.cleared.contains(&asset) && !self.records.contains_key(&asset)
            } else {
                let key = annotation_key(trimmed).ok_or_else(|| {
                    BackupError::Invalid(format!(
                        "an exported line is neither a record nor an annotation: {:.200}",
                        String::from_utf8_lossy(trimmed)
                    ))
                })?;
                !self.cleared.contains(&key.0) && !self.annotations.contains_key(&key)
            };
            if keep {
                emit(trimmed, &mut writer, &mut purged_lines)?;
            }
        }
        for line in self.records.values().flatten().chain(self.annotations.values().flatten()) {
            emit(line, &mut writer, &mut purged_lines)?;
        }
        for lines in purged_lines.values() {
            for line in latest_versions(lines) {
                writer.write_all(line).and_then(|_| writer.write_all(b"\n")).map_err(io(path))?;
                annotations += 1;
            }
        }
        let file = writer.into_inner().map_err(|e| BackupError::Io { path: path.to_path_buf(), source: e.into_error() })?;
        file.sync_all().map_err(io(path))?;
        Ok((annotations, records))
    }
}

/// The annotations of one asset that a purge keeps: per model, its highest version only.
fn latest_versions(lines: &[Vec<u8>]) -> Vec<&Vec<u8>> {
    let parsed: Vec<(String, String)> = lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_slice(line).unwrap_or_default();
            (value["model"].as_str().unwrap_or("").to_string(), value["model_version"].as_str().unwrap_or("").to_string())
        })
        .collect();
    let mut highest: HashMap<&str, &str> = HashMap::new();
    for (model, version) in &parsed {
        let entry = highest.entry(model).or_insert(version);
        if rushes_protocol::model::compare_model_versions(version, entry) == std::cmp::Ordering::Greater {
            *entry = version;
        }
    }
    lines
        .iter()
        .zip(&parsed)
        .filter(|(_, (model, version))| highest.get(model.as_str()) == Some(&version.as_str()))
        .map(|(l, _)| l)
        .collect()
}

/// `{"asset_record": {"asset_id": A, ...}}` → A.
fn record_asset(line: &[u8]) -> Option<String> {
    if !line.starts_with(b"{\"asset_record\"") {
        return None;
    }
    let value: Value = serde_json::from_slice(line).ok()?;
    value["asset_record"]["asset_id"].as_str().map(str::to_string)
}

/// (asset_id, id) of a raw annotation line.
fn annotation_key(line: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Key {
        asset_id: String,
        id: String,
    }
    let key: Key = serde_json::from_slice(line).ok()?;
    Some((key.asset_id, key.id))
}

fn file_digest(path: &Path) -> Result<(u64, String), BackupError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let read = file.read(&mut buffer).map_err(io(path))?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
        hasher.update(&buffer[..read]);
    }
    Ok((bytes, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Reads and checks a backup: the manifest's format, and every file's size and checksum.
pub fn verify(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let manifest: Manifest = serde_json::from_slice(&fs::read(&path).map_err(io(&path))?)
        .map_err(|e| BackupError::Invalid(format!("{}: {e}", path.display())))?;
    if manifest.format > BACKUP_FORMAT {
        return Err(BackupError::Invalid(format!(
            "{}: backup format {} is newer than this build reads ({BACKUP_FORMAT}); restore with a newer rushes",
            path.display(),
            manifest.format
        )));
    }
    for shard in &manifest.shards {
        if shard.file.contains('/') || shard.file.contains("..") {
            return Err(BackupError::Invalid(format!("{}: file name {:?} leaves the backup directory", path.display(), shard.file)));
        }
        let (bytes, sha256) = file_digest(&dir.join(&shard.file))?;
        if bytes != shard.bytes || sha256 != shard.sha256 {
            return Err(BackupError::Invalid(format!(
                "{}: {bytes} bytes with SHA-256 {sha256}, but the manifest says {} bytes with {}: the backup is damaged",
                shard.file, shard.bytes, shard.sha256
            )));
        }
    }
    Ok(manifest)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub annotations: u64,
    pub asset_records: u64,
    pub took: Duration,
}

/// Sends a verified backup to the server's cluster (any node or shard count).
pub fn restore(client: &Client, dir: &Path, mut progress: impl FnMut(&str)) -> Result<RestoreReport, BackupError> {
    let started = Instant::now();
    let manifest = verify(dir)?;
    let (mut annotations, mut asset_records) = (0u64, 0u64);
    for shard in &manifest.shards {
        let path = dir.join(&shard.file);
        let reader = BufReader::new(File::open(&path).map_err(io(&path))?);
        let mut batch: Vec<u8> = Vec::new();
        let mut batch_items = 0usize;
        let mut flush = |batch: &mut Vec<u8>, batch_items: &mut usize| -> Result<(), BackupError> {
            if *batch_items > 0 {
                client.post_ndjson_retrying(batch, 12)?;
                annotations += *batch_items as u64;
                batch.clear();
                *batch_items = 0;
            }
            Ok(())
        };
        for line in reader.split(b'\n') {
            let line = line.map_err(io(&path))?;
            if line.is_empty() {
                continue;
            }
            if let Some(asset_id) = record_asset(&line) {
                let mut value: Value = serde_json::from_slice(&line).unwrap_or_default();
                let mut record = value["asset_record"].take();
                if let Some(fields) = record.as_object_mut() {
                    fields.remove("asset_id");
                }
                let body = record.to_string();
                send_retrying(|| client.send("PUT", &format!("/v1/assets/{asset_id}"), "application/json", body.as_bytes()))?;
                asset_records += 1;
                continue;
            }
            if batch_items == RESTORE_BATCH_ITEMS || batch.len() + line.len() + 1 > RESTORE_BATCH_BYTES {
                flush(&mut batch, &mut batch_items)?;
            }
            batch.extend_from_slice(&line);
            batch.push(b'\n');
            batch_items += 1;
        }
        flush(&mut batch, &mut batch_items)?;
        progress(&format!("shard {} of the backup: sent", shard.shard));
    }
    if annotations != manifest.annotations || asset_records != manifest.asset_records {
        return Err(BackupError::Invalid(format!(
            "sent {annotations} annotations and {asset_records} records, but the manifest lists {} and {}",
            manifest.annotations, manifest.asset_records
        )));
    }
    Ok(RestoreReport { annotations, asset_records, took: started.elapsed() })
}

fn send_retrying(mut call: impl FnMut() -> Result<String, ClientError>) -> Result<String, ClientError> {
    let mut attempt = 0u32;
    loop {
        match call() {
            Err(e) if e.is_retryable() && attempt < 11 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50u64 << attempt.min(6)));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(asset: &str, id: &str, model: &str, version: &str) -> String {
        format!(
            r#"{{"id":"{id}","asset_id":"{asset}","model":"{model}","model_version":"{version}","track":"character","start_ms":0,"end_ms":10,"label":"X"}}"#
        )
    }

    fn merged(export: &[String], commands: &[Value]) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let staged = dir.path().join("export");
        fs::write(&staged, export.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
        let mut tail = Tail::default();
        for command in commands {
            tail.replay(command).expect("replay");
        }
        let out = dir.path().join("out");
        tail.write_merged(&staged, &out).expect("merge");
        let mut lines: Vec<String> = fs::read_to_string(&out).expect("read").lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    #[test]
    fn the_tail_replayed_over_a_fuzzy_export_gives_the_state_at_its_end() {
        let a1 = line("a", "1", "faces", "1");
        let a2 = line("a", "2", "faces", "1");
        let b1 = line("b", "1", "faces", "1");
        let b1_v2 = line("b", "1", "faces", "2");
        let record_a = r#"{"asset_record":{"asset_id":"a","title":"Pilot"}}"#.to_string();
        // The export saw a2 (written in the window) but not b1 (written and deleted in it).
        let export = vec![record_a.clone(), a1.clone(), a2.clone()];
        let commands = vec![
            serde_json::json!({"ingest": [a2.clone(), b1.clone()]}),
            serde_json::json!({"delete_annotation": {"asset_id": "b", "annotation_id": "1"}}),
            serde_json::json!({"upsert_asset": {"asset_id": "b", "title": "Second"}}),
            serde_json::json!({"delete_asset": "a"}),
            serde_json::json!({"ingest": [a1.clone()]}),
        ];
        let mut expected = vec![a1.clone(), r#"{"asset_record":{"asset_id":"b","title":"Second"}}"#.to_string()];
        expected.sort();
        assert_eq!(merged(&export, &commands), expected);

        // A purge in the window keeps each model's highest version only.
        let export = vec![b1.clone(), b1_v2.clone(), a1.clone()];
        let b0 = line("b", "0", "places", "7");
        let commands = vec![serde_json::json!({"ingest": [b0.clone()]}), serde_json::json!({"purge_superseded": ["b"]})];
        let mut expected = vec![b1_v2, b0, a1];
        expected.sort();
        assert_eq!(merged(&export, &commands), expected);
    }

    #[test]
    fn a_damaged_or_newer_backup_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("shard-0000.ndjson"), b"{}\n").expect("write");
        let (bytes, sha256) = file_digest(&dir.path().join("shard-0000.ndjson")).expect("digest");
        let shard = ShardBackup {
            shard: 0,
            index: 5,
            started_at_index: 5,
            file: "shard-0000.ndjson".into(),
            annotations: 1,
            asset_records: 0,
            bytes,
            sha256,
        };
        let manifest = Manifest {
            format: BACKUP_FORMAT,
            cluster_id: "c".into(),
            shard_count: 1,
            created_unix_ms: 0,
            shards: vec![shard],
            annotations: 1,
            asset_records: 0,
        };
        fs::write(dir.path().join(MANIFEST_FILE), serde_json::to_vec(&manifest).expect("json")).expect("write");
        verify(dir.path()).expect("intact");
        fs::write(dir.path().join("shard-0000.ndjson"), b"{}\n{}\n").expect("damage");
        assert!(verify(dir.path()).expect_err("damaged").to_string().contains("damaged"));
        let newer = Manifest { format: BACKUP_FORMAT + 1, ..manifest };
        fs::write(dir.path().join(MANIFEST_FILE), serde_json::to_vec(&newer).expect("json")).expect("write");
        assert!(verify(dir.path()).expect_err("newer").to_string().contains("newer"));
    }
}
