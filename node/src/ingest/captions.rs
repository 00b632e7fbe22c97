//! Subtitle cues → dialogue annotations, shared by `POST /v1/assets/{id}/subtitles` and
//! `rushes import FILE.srt --asset ID --language LANG`.
//!
//! Each language is its own model (`subtitles-<lang>`), so French and English subtitles of one
//! asset coexist, and a corrected file imported with a higher `model_version` replaces the
//! previous version in search (the highest version of a model wins). Ids are
//! `subtitles-<lang>-v<version>-<cue number>`: importing the same file again is a no-op; a
//! different file under the same version is refused as a conflict (409).

use serde::Serialize;

use crate::ingest::subtitles::{ParsedSubtitles, SubtitleFormat};

pub const DEFAULT_SUBTITLE_VERSION: &str = "1";
const MAX_LANGUAGE_BYTES: usize = 35;
const MAX_VERSION_BYTES: usize = 32;

/// Checks a language tag (BCP 47-like: letters, digits, `-`, `_`).
pub fn validate_language(language: &str) -> Result<(), String> {
    if language.is_empty() || language.len() > MAX_LANGUAGE_BYTES {
        return Err(format!("language must be 1 to {MAX_LANGUAGE_BYTES} bytes, e.g. `en` or `pt-BR`"));
    }
    if !language.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("language {language:?} may only hold letters, digits, `-` and `_`, e.g. `en` or `pt-BR`"));
    }
    Ok(())
}

pub fn validate_version(version: &str) -> Result<(), String> {
    if version.is_empty()
        || version.len() > MAX_VERSION_BYTES
        || !version.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(format!("model_version must be 1 to {MAX_VERSION_BYTES} letters, digits, `.` or `-`, e.g. `2`"));
    }
    Ok(())
}

/// One NDJSON line per cue.
pub fn cue_annotations(parsed: &ParsedSubtitles, asset_id: &str, language: &str, version: &str) -> Vec<Vec<u8>> {
    let language_key = language.to_ascii_lowercase();
    parsed
        .cues
        .iter()
        .map(|cue| {
            let value = serde_json::json!({
                "id": format!("subtitles-{language_key}-v{version}-{:06}", cue.index + 1),
                "asset_id": asset_id,
                "model": format!("subtitles-{language_key}"),
                "model_version": version,
                "track": "dialogue",
                "start_ms": cue.start_ms,
                "end_ms": cue.end_ms,
                "text": cue.text,
                "language": language,
                "confidence": 1.0,
            });
            let mut line = serde_json::to_vec(&value).unwrap_or_default();
            line.push(b'\n');
            line
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"asset_id": "s01e01", "language": "en", "model": "subtitles-en", "model_version": "1", "format": "srt",
    "encoding": "Utf8", "imported": 412, "created": 412, "duplicates": 0, "took_ms": 23}))]
pub struct SubtitleImportReply {
    pub asset_id: String,
    pub language: String,
    pub model: String,
    pub model_version: String,
    pub format: &'static str,
    pub encoding: String,
    /// Cues imported (annotations accepted).
    pub imported: usize,
    pub created: usize,
    pub duplicates: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub took_ms: u64,
}

pub fn format_name(format: SubtitleFormat) -> &'static str {
    match format {
        SubtitleFormat::Srt => "srt",
        SubtitleFormat::WebVtt => "vtt",
    }
}
