//! Stored and replicated forms: the Raft command, the compact annotation that fusion reads, and
//! the fused bucket. Each is encoded with [`crate::codec`] under its own format version.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

use crate::api::{Annotation, AssetRecord};

pub const SHARD_COMMAND_FORMAT: u8 = 1;
/// The format of the commands added after the first release (deletes): the same encoding, a
/// higher format byte, so a node of an earlier version stops at such an entry and says
/// "upgrade this node" instead of rejecting what the other replicas apply. Ingest and asset
/// records stay format 1, so an earlier version keeps reading them during a rolling upgrade.
pub const SHARD_COMMAND_FORMAT_DELETES: u8 = 2;
pub const STORED_ANNOTATION_FORMAT: u8 = 1;
pub const BUCKET_FORMAT: u8 = 1;
pub const ASSET_FORMAT: u8 = 1;

/// One annotation of an ingest command: the exact bytes the client sent plus the validated,
/// parsed form (so replicas do not re-parse and every replica applies the same values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestItem {
    /// As bytes, not a sequence of u8: the same bincode encoding, decoded with one copy instead
    /// of one call per byte (a visible share of the raft threads' CPU under ingest).
    #[serde(with = "serde_bytes")]
    pub raw_json: Vec<u8>,
    pub annotation: StoredAnnotation,
    pub vector: Option<Vec<f32>>,
}

/// The payload of one Raft log entry of a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Store these annotations, all or none (a conflicting id rejects the whole command).
    Ingest { items: Vec<IngestItem> },
    /// Create or replace an asset record.
    UpsertAsset { asset_id: String, record: StoredAsset },
    // Variants are only appended (their position is their encoding).
    /// Erase an asset: its record and every raw annotation of every model version, with their
    /// vectors; buckets and index documents follow. A no-op when nothing is stored.
    DeleteAsset { asset_id: String },
    /// Remove one annotation; its seconds are fused again without it. A no-op when absent.
    DeleteAnnotation { asset_id: String, annotation_id: String },
    /// Remove the annotations of superseded model versions of these assets: every (asset,
    /// model) keeps only its highest `model_version`.
    PurgeSuperseded { asset_ids: Vec<String> },
}

impl ShardCommand {
    /// The format byte this command is encoded under.
    pub fn format(&self) -> u8 {
        match self {
            ShardCommand::Ingest { .. } | ShardCommand::UpsertAsset { .. } => SHARD_COMMAND_FORMAT,
            _ => SHARD_COMMAND_FORMAT_DELETES,
        }
    }

    /// Encodes the command under its format byte.
    pub fn encode(&self) -> Result<Vec<u8>, crate::codec::CodecError> {
        crate::codec::encode(self.format(), self)
    }

    /// Decodes a command of any format this build knows, sized by the bytes received (see
    /// [`crate::codec::decode_received`]).
    pub fn decode(bytes: &[u8]) -> Result<ShardCommand, crate::codec::CodecError> {
        match bytes.first() {
            Some(&SHARD_COMMAND_FORMAT_DELETES) => crate::codec::decode_received(SHARD_COMMAND_FORMAT_DELETES, bytes),
            _ => crate::codec::decode_received(SHARD_COMMAND_FORMAT, bytes),
        }
    }

    /// The newest format this build reads.
    pub const NEWEST_FORMAT: u8 = SHARD_COMMAND_FORMAT_DELETES;

    /// The asset a command is about (for routing to its shard), or `None` for a shard-wide one.
    pub fn assets(&self) -> Vec<&str> {
        match self {
            ShardCommand::Ingest { items } => items.iter().map(|item| item.annotation.asset_id.as_str()).collect(),
            ShardCommand::UpsertAsset { asset_id, .. }
            | ShardCommand::DeleteAsset { asset_id }
            | ShardCommand::DeleteAnnotation { asset_id, .. } => vec![asset_id.as_str()],
            ShardCommand::PurgeSuperseded { asset_ids } => asset_ids.iter().map(String::as_str).collect(),
        }
    }

    /// Whether a second copy of this command, committed after other writes, leaves the shard as
    /// one copy would. The write router proposes again after a failure that may have let the
    /// first copy commit (a leader change with the entry in flight) only when it does.
    /// - Ingest: annotations are immutable by id, a repeat stores nothing (only an erasure of
    ///   the same id committed between the copies, a delete racing its own write, is undone).
    /// - PurgeSuperseded: it removes what a higher model version replaced, at any time.
    /// - UpsertAsset is last-writer-wins: a late repeat would undo the writes between.
    /// - The deletes: a late repeat would erase what was written again in between.
    pub fn safe_to_repeat(&self) -> bool {
        match self {
            ShardCommand::Ingest { .. } | ShardCommand::PurgeSuperseded { .. } => true,
            ShardCommand::UpsertAsset { .. } | ShardCommand::DeleteAsset { .. } | ShardCommand::DeleteAnnotation { .. } => false,
        }
    }
}

/// Hard bounds every replica checks when it applies a command, whatever its configuration:
/// a committed entry that breaks them is rejected on every replica alike (nothing stored),
/// never applied in part and never a reason to stop the shard. The configured limits are
/// checked before anything is proposed, and are well inside these.
pub mod hard_limits {
    /// Annotations in one command (a batch is at most `limits.max_batch_items`).
    pub const COMMAND_ITEMS_MAX: usize = 1_000_000;
    /// Bytes of an id, an asset id, a model name or version, a track name.
    pub const NAME_BYTES_MAX: usize = 4096;
    /// Dimensions of a vector.
    pub const VECTOR_DIMENSIONS_MAX: usize = 65_536;
}

impl ShardCommand {
    /// Checks the bounds of [`hard_limits`] and the shape every stored value must have;
    /// the reason names the item and the field.
    pub fn check_invariants(&self) -> Result<(), String> {
        use hard_limits::*;
        let name = |what: &str, value: &str| -> Result<(), String> {
            if value.is_empty() || value.len() > NAME_BYTES_MAX {
                return Err(format!("{what} must be 1..={NAME_BYTES_MAX} bytes, is {}", value.len()));
            }
            Ok(())
        };
        match self {
            ShardCommand::Ingest { items } => {
                if items.is_empty() || items.len() > COMMAND_ITEMS_MAX {
                    return Err(format!("an ingest command holds 1..={COMMAND_ITEMS_MAX} items, not {}", items.len()));
                }
                for (position, item) in items.iter().enumerate() {
                    let a = &item.annotation;
                    let checked = (|| {
                        if item.raw_json.is_empty() {
                            return Err("raw_json is empty".to_string());
                        }
                        name("id", &a.id)?;
                        name("asset_id", &a.asset_id)?;
                        crate::validate::validate_asset_id(&a.asset_id, NAME_BYTES_MAX).map_err(|m| format!("asset_id {m}"))?;
                        name("model", &a.model)?;
                        name("model_version", &a.model_version)?;
                        name("track", &a.track)?;
                        if a.start_ms >= a.end_ms {
                            return Err(format!("start_ms {} is not before end_ms {}", a.start_ms, a.end_ms));
                        }
                        if !(a.confidence.is_finite() && (0.0..=1.0).contains(&a.confidence)) {
                            return Err(format!("confidence {} is not in [0, 1]", a.confidence));
                        }
                        match (&item.vector, &a.vector_space) {
                            (Some(vector), Some(space)) => {
                                name("vector_space", space)?;
                                if vector.is_empty() || vector.len() > VECTOR_DIMENSIONS_MAX || vector.iter().any(|x| !x.is_finite()) {
                                    return Err(format!("vector of {} dimensions is empty, too long or not finite", vector.len()));
                                }
                            }
                            (None, None) => {}
                            _ => return Err("vector and vector_space go together".to_string()),
                        }
                        if a.label.is_none() && a.text.is_none() && item.vector.is_none() {
                            return Err("no payload: label, text or vector".to_string());
                        }
                        Ok(())
                    })();
                    checked.map_err(|reason| format!("item {position}: {reason}"))?;
                }
                Ok(())
            }
            ShardCommand::UpsertAsset { asset_id, record } => {
                crate::validate::validate_asset_id(asset_id, NAME_BYTES_MAX).map_err(|m| format!("asset_id {m}"))?;
                if record.fps.is_some_and(|fps| !(fps.is_finite() && fps > 0.0)) {
                    return Err("fps must be a positive number".to_string());
                }
                Ok(())
            }
            ShardCommand::DeleteAsset { asset_id } => {
                crate::validate::validate_asset_id(asset_id, NAME_BYTES_MAX).map_err(|m| format!("asset_id {m}"))
            }
            ShardCommand::DeleteAnnotation { asset_id, annotation_id } => {
                crate::validate::validate_asset_id(asset_id, NAME_BYTES_MAX).map_err(|m| format!("asset_id {m}"))?;
                name("annotation_id", annotation_id)
            }
            ShardCommand::PurgeSuperseded { asset_ids } => {
                if asset_ids.is_empty() || asset_ids.len() > COMMAND_ITEMS_MAX {
                    return Err(format!("a purge names 1..={COMMAND_ITEMS_MAX} assets, not {}", asset_ids.len()));
                }
                for asset_id in asset_ids {
                    crate::validate::validate_asset_id(asset_id, NAME_BYTES_MAX).map_err(|m| format!("asset_id {m}"))?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StoredAsset {
    pub title: Option<String>,
    pub series: Option<String>,
    pub season: Option<u32>,
    pub episode: Option<u32>,
    pub duration_ms: Option<u64>,
    pub fps: Option<f64>,
}

impl From<AssetRecord> for StoredAsset {
    fn from(r: AssetRecord) -> Self {
        StoredAsset { title: r.title, series: r.series, season: r.season, episode: r.episode, duration_ms: r.duration_ms, fps: r.fps }
    }
}

impl From<StoredAsset> for AssetRecord {
    fn from(r: StoredAsset) -> Self {
        AssetRecord { title: r.title, series: r.series, season: r.season, episode: r.episode, duration_ms: r.duration_ms, fps: r.fps }
    }
}

/// The parsed annotation without its vector: what fusion scans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAnnotation {
    pub id: String,
    pub asset_id: String,
    pub model: String,
    pub model_version: String,
    pub track: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub confidence: f64,
    pub label: Option<String>,
    pub text: Option<String>,
    pub language: Option<String>,
    pub vector_space: Option<String>,
}

impl StoredAnnotation {
    /// Splits a validated API annotation into its stored form and its vector.
    pub fn from_validated(a: Annotation) -> (StoredAnnotation, Option<Vec<f32>>) {
        let vector = a.vector.map(|v| v.into_iter().map(|x| x as f32).collect());
        let stored = StoredAnnotation {
            id: a.id,
            asset_id: a.asset_id,
            model: a.model,
            model_version: a.model_version,
            track: a.track,
            start_ms: a.start_ms,
            end_ms: a.end_ms,
            confidence: a.confidence.unwrap_or(1.0),
            label: a.label,
            text: a.text,
            language: a.language,
            vector_space: a.vector_space,
        };
        (stored, vector)
    }
}

/// One annotation's share of one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketEntry {
    pub annotation_id: String,
    pub track: String,
    pub model: String,
    pub label: Option<String>,
    pub text: Option<String>,
    pub language: Option<String>,
    pub vector_space: Option<String>,
    pub confidence: f64,
    /// Fraction of the bucket the annotation covers, in (0, 1].
    pub coverage: f64,
}

/// The fused view of one bucket of one asset. Entries are sorted by (track, annotation_id) so
/// that fusion is deterministic and replicas hold identical bytes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Bucket {
    pub entries: Vec<BucketEntry>,
}

/// Whether two raw annotations carry the same content: equal as JSON values, so key order,
/// spacing and number spelling do not matter, but every field (extra ones too) does.
pub fn same_raw_content(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    match (serde_json::from_slice::<serde_json::Value>(a), serde_json::from_slice::<serde_json::Value>(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A bucket entry decoded without copying its strings (the query path reads many buckets).
/// Field order and types match [`BucketEntry`], so both decode the same bytes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BucketEntryRef<'a> {
    #[serde(borrow)]
    pub annotation_id: &'a str,
    #[serde(borrow)]
    pub track: &'a str,
    #[serde(borrow)]
    pub model: &'a str,
    #[serde(borrow)]
    pub label: Option<&'a str>,
    #[serde(borrow)]
    pub text: Option<&'a str>,
    #[serde(borrow)]
    pub language: Option<&'a str>,
    #[serde(borrow)]
    pub vector_space: Option<&'a str>,
    pub confidence: f64,
    pub coverage: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BucketRef<'a> {
    #[serde(borrow)]
    pub entries: Vec<BucketEntryRef<'a>>,
}

/// Lower-cases, trims and collapses white space: the form labels are matched in.
pub fn normalize_label(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for word in label.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Orders model versions: dot/dash-separated parts, numeric parts compared as numbers, other
/// parts as text ("2.10" > "2.9" > "2"). The highest version of a model on an asset is the one
/// fusion uses; this makes replacement independent of arrival order.
pub fn compare_model_versions(a: &str, b: &str) -> Ordering {
    let mut pa = a.split(['.', '-', '_']);
    let mut pb = b.split(['.', '-', '_']);
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(nx), Ok(ny)) => nx.cmp(&ny),
                    (Ok(_), Err(_)) => Ordering::Greater,
                    (Err(_), Ok(_)) => Ordering::Less,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert_eq!(compare_model_versions("2.10", "2.9"), Ordering::Greater);
        assert_eq!(compare_model_versions("2", "2.0"), Ordering::Less);
        assert_eq!(compare_model_versions("1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare_model_versions("3", "10"), Ordering::Less);
        assert_eq!(compare_model_versions("1.0-beta", "1.0-rc"), Ordering::Less);
    }

    #[test]
    fn borrowed_bucket_decodes_the_same_bytes() {
        let bucket = Bucket {
            entries: vec![BucketEntry {
                annotation_id: "a1".into(),
                track: "dialogue".into(),
                model: "asr".into(),
                label: None,
                text: Some("we were on a break".into()),
                language: Some("en".into()),
                vector_space: None,
                confidence: 0.9,
                coverage: 0.5,
            }],
        };
        let bytes = crate::codec::encode(BUCKET_FORMAT, &bucket).unwrap();
        let borrowed: BucketRef = crate::codec::decode_borrowed(BUCKET_FORMAT, &bytes).unwrap();
        let e = &borrowed.entries[0];
        assert_eq!((e.annotation_id, e.text, e.label, e.coverage), ("a1", Some("we were on a break"), None, 0.5));
    }

    #[test]
    fn ingest_commands_keep_their_encoding_with_raw_bytes_as_bytes() {
        // The form of format 1 before `raw_json` was marked as bytes: logs written then must
        // still decode, so the encoding must not have changed.
        #[derive(Serialize)]
        struct PlainItem {
            raw_json: Vec<u8>,
            annotation: StoredAnnotation,
            vector: Option<Vec<f32>>,
        }
        #[derive(Serialize)]
        enum PlainCommand {
            Ingest { items: Vec<PlainItem> },
        }
        let annotation = StoredAnnotation {
            id: "a1".into(),
            asset_id: "s01e01".into(),
            model: "asr".into(),
            model_version: "1.0".into(),
            track: "dialogue".into(),
            start_ms: 1000,
            end_ms: 2500,
            confidence: 0.9,
            label: None,
            text: Some("we were on a break".into()),
            language: Some("en".into()),
            vector_space: None,
        };
        let raw_json = br#"{"id":"a1","text":"we were on a break"}"#.to_vec();
        let vector = Some(vec![0.5f32, -1.0]);
        let command = ShardCommand::Ingest {
            items: vec![IngestItem { raw_json: raw_json.clone(), annotation: annotation.clone(), vector: vector.clone() }],
        };
        let plain = PlainCommand::Ingest { items: vec![PlainItem { raw_json, annotation, vector }] };
        let bytes = crate::codec::encode(SHARD_COMMAND_FORMAT, &command).unwrap();
        assert_eq!(bytes, crate::codec::encode(SHARD_COMMAND_FORMAT, &plain).unwrap());
        assert_eq!(crate::codec::decode::<ShardCommand>(SHARD_COMMAND_FORMAT, &bytes).unwrap(), command);
    }

    #[test]
    fn labels_normalize() {
        assert_eq!(normalize_label("  Central   Perk "), "central perk");
        assert_eq!(normalize_label("JOEY"), "joey");
    }
}
