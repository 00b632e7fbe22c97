//! Ingest: the per-node router that splits a batch by shard and sends each part to its leader,
//! and the subtitle importer that turns .srt/.vtt cues into dialogue annotations.

pub mod captions;
pub mod router;
pub mod subtitles;
