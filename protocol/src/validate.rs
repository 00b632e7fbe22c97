//! Parsing and validation of ingest batches. Every rejection names the item and the field and
//! says how to fix it; a batch with any bad item is rejected whole.

use serde_json::{Map, Value};

use crate::api::Annotation;
use crate::error::{ApiError, ErrorCode};

/// Limits on ingest input. Built from the node's config.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub max_batch_items: usize,
    pub max_id_bytes: usize,
    pub max_asset_id_bytes: usize,
    pub max_name_bytes: usize,
    pub max_label_bytes: usize,
    pub max_text_bytes: usize,
    pub max_interval_ms: u64,
    pub max_time_ms: u64,
    /// Largest single annotation's JSON.
    pub max_annotation_bytes: usize,
    pub vector_spaces: Vec<VectorSpaceSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VectorSpaceSpec {
    pub name: String,
    pub dimensions: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_batch_items: 10_000,
            max_id_bytes: 256,
            max_asset_id_bytes: 128,
            max_name_bytes: 64,
            max_label_bytes: 256,
            max_text_bytes: 8 * 1024,
            max_interval_ms: 24 * 3600 * 1000,
            max_time_ms: 7 * 24 * 3600 * 1000,
            max_annotation_bytes: 1024 * 1024,
            vector_spaces: vec![VectorSpaceSpec { name: "scene".into(), dimensions: 512 }],
        }
    }
}

/// The fields an annotation may carry. Any other top-level field is kept in the raw store as
/// the model sent it, unless it looks like a misspelling of one of these (then it is rejected,
/// because a silently ignored `"confidance"` would change results).
pub const ANNOTATION_FIELDS: &[&str] = &[
    "id",
    "asset_id",
    "model",
    "model_version",
    "track",
    "start_ms",
    "end_ms",
    "confidence",
    "label",
    "text",
    "language",
    "vector_space",
    "vector",
];

/// One parsed item of a batch: its exact bytes and its validated form.
#[derive(Debug, Clone)]
pub struct ParsedItem {
    pub raw_json: Vec<u8>,
    pub annotation: Annotation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    JsonArray,
    Ndjson,
}

/// Asset ids go into URL paths and keys: a conservative alphabet.
pub fn validate_asset_id(asset_id: &str, max_bytes: usize) -> Result<(), String> {
    if asset_id.is_empty() {
        return Err("must not be empty".into());
    }
    if asset_id.len() > max_bytes {
        return Err(format!("is {} bytes; the limit is {max_bytes}", asset_id.len()));
    }
    if let Some(bad) = asset_id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))) {
        return Err(format!("contains {bad:?}; use letters, digits, '-', '_', '.' or ':'"));
    }
    Ok(())
}

pub fn parse_batch(body: &[u8], format: BodyFormat, limits: &IngestLimits) -> Result<Vec<ParsedItem>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid UTF-8 (first bad byte at offset {}); send UTF-8 JSON", e.valid_up_to()),
        )
    })?;
    let raw_items: Vec<&str> = match format {
        BodyFormat::JsonArray => split_json_array(text, limits)?,
        BodyFormat::Ndjson => {
            let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            if lines.len() > limits.max_batch_items {
                return Err(batch_too_large(lines.len(), limits));
            }
            lines
        }
    };
    if raw_items.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidField, "the batch is empty; send at least one annotation"));
    }
    let mut parsed = Vec::with_capacity(raw_items.len());
    for (index, raw) in raw_items.iter().enumerate() {
        if raw.len() > limits.max_annotation_bytes {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "the annotation is {} bytes; the limit is {} (limits.max_annotation_bytes)",
                    raw.len(),
                    limits.max_annotation_bytes
                ),
            )
            .with_item(index)
            .with_field("body"));
        }
        let annotation = parse_annotation(raw, limits).map_err(|e| e.with_item(index))?;
        parsed.push(ParsedItem { raw_json: raw.as_bytes().to_vec(), annotation });
    }
    Ok(parsed)
}

fn batch_too_large(count: usize, limits: &IngestLimits) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("the batch has {count} annotations; the limit is {}: split it into smaller batches", limits.max_batch_items),
    )
}

fn split_json_array<'a>(text: &'a str, limits: &IngestLimits) -> Result<Vec<&'a str>, ApiError> {
    let items: Vec<&'a serde_json::value::RawValue> = serde_json::from_str(text).map_err(|e| {
        let hint = if e.is_data() {
            "the body must be a JSON array of annotation objects (or send NDJSON with Content-Type application/x-ndjson)"
        } else {
            "fix the JSON syntax"
        };
        ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON at line {} column {}: {e}; {hint}", e.line(), e.column()))
    })?;
    if items.len() > limits.max_batch_items {
        return Err(batch_too_large(items.len(), limits));
    }
    Ok(items.into_iter().map(|raw| raw.get()).collect())
}

fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(field, format!("{field} {}", message.into()))
}

fn required_string(obj: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(field_error(field, "is required")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(field_error(field, format!("must be a string, got {}", type_name(other)))),
    }
}

fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(field_error(field, format!("must be a string, got {}", type_name(other)))),
    }
}

fn required_millis(obj: &Map<String, Value>, field: &str) -> Result<u64, ApiError> {
    let value = obj.get(field).ok_or_else(|| field_error(field, "is required (integer milliseconds)"))?;
    value.as_u64().ok_or_else(|| {
        let what = match value {
            Value::Number(n) if n.as_f64().is_some_and(|x| x.fract() == 0.0 && x > 0.0) => "a number too large".to_string(),
            Value::Number(n) if n.is_f64() => "a fraction".to_string(),
            Value::Number(_) => "negative".to_string(),
            other => type_name(other).to_string(),
        };
        field_error(field, format!("must be a non-negative integer number of milliseconds, got {what}"))
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The slow path, for anything the fast path refused: names the field of every type error and
/// keeps extra fields unless they look like a misspelled known field.
fn extract_annotation(raw: &str) -> Result<Annotation, ApiError> {
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON at line {} column {}: {e}", e.line(), e.column())))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::new(ErrorCode::InvalidField, format!("each annotation must be a JSON object, got {}", type_name(&value))));
    };
    for key in obj.keys() {
        if ANNOTATION_FIELDS.contains(&key.as_str()) {
            continue;
        }
        // Lengths that differ by more than 2 cannot be within 2 edits: skip the (quadratic)
        // distance for them, so long unknown keys cost nothing.
        let near = |known: &&&str| key.len().abs_diff(known.len()) <= 2 && key.len() > 3 && edit_distance(key, known) <= 2;
        if let Some(known) = ANNOTATION_FIELDS.iter().find(near) {
            return Err(field_error(key, format!("is not a known field; did you mean {known:?}?")));
        }
    }
    let confidence = match obj.get("confidence") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_f64().ok_or_else(|| field_error("confidence", "must be a finite number"))?),
        Some(other) => return Err(field_error("confidence", format!("must be a number between 0 and 1, got {}", type_name(other)))),
    };
    let vector = match obj.get("vector") {
        None | Some(Value::Null) => None,
        Some(Value::Array(values)) => Some(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64().ok_or_else(|| field_error("vector", format!("element {i} must be a number, got {}", type_name(v))))
                })
                .collect::<Result<Vec<f64>, ApiError>>()?,
        ),
        Some(other) => return Err(field_error("vector", format!("must be an array of numbers, got {}", type_name(other)))),
    };
    Ok(Annotation {
        id: required_string(&obj, "id")?,
        asset_id: required_string(&obj, "asset_id")?,
        model: required_string(&obj, "model")?,
        model_version: required_string(&obj, "model_version")?,
        track: required_string(&obj, "track")?,
        start_ms: required_millis(&obj, "start_ms")?,
        end_ms: required_millis(&obj, "end_ms")?,
        confidence,
        label: optional_string(&obj, "label")?,
        text: optional_string(&obj, "text")?,
        language: optional_string(&obj, "language")?,
        vector_space: optional_string(&obj, "vector_space")?,
        vector,
    })
}

fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(field_error(field, "must not be empty"));
    }
    if value.len() > max_bytes {
        return Err(
            ApiError::new(ErrorCode::TooLarge, format!("{field} is {} bytes; the limit is {max_bytes}", value.len())).with_field(field)
        );
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(field_error(field, "must not contain control characters"));
    }
    Ok(())
}

/// Value rules shared by both parsing paths.
fn validate_annotation(a: &Annotation, limits: &IngestLimits) -> Result<(), ApiError> {
    check_text("id", &a.id, limits.max_id_bytes)?;
    check_text("asset_id", &a.asset_id, limits.max_asset_id_bytes)?;
    validate_asset_id(&a.asset_id, limits.max_asset_id_bytes).map_err(|m| field_error("asset_id", m))?;
    check_text("model", &a.model, limits.max_name_bytes)?;
    check_text("model_version", &a.model_version, limits.max_name_bytes)?;
    check_text("track", &a.track, limits.max_name_bytes)?;
    if let Some(bad) = a.track.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))) {
        return Err(field_error("track", format!("contains {bad:?}; use lower-case letters, digits, '_' or '-' (e.g. \"character\")")));
    }
    for (field, ms) in [("start_ms", a.start_ms), ("end_ms", a.end_ms)] {
        if ms > limits.max_time_ms {
            return Err(field_error(field, format!("is {ms}; the limit is {} ms", limits.max_time_ms)));
        }
    }
    if a.end_ms <= a.start_ms {
        return Err(field_error(
            "end_ms",
            format!("({}) must be greater than start_ms ({}); intervals are half-open [start_ms, end_ms)", a.end_ms, a.start_ms),
        ));
    }
    if a.end_ms - a.start_ms > limits.max_interval_ms {
        return Err(field_error(
            "end_ms",
            format!("spans {} ms; the limit is {} ms per annotation", a.end_ms - a.start_ms, limits.max_interval_ms),
        ));
    }
    if let Some(c) = a.confidence {
        if !c.is_finite() || !(0.0..=1.0).contains(&c) {
            return Err(field_error("confidence", format!("is {c}; it must be between 0 and 1")));
        }
    }
    if let Some(label) = &a.label {
        check_text("label", label, limits.max_label_bytes)?;
    }
    if let Some(text) = &a.text {
        check_text("text", text, limits.max_text_bytes)?;
    }
    if let Some(lang) = &a.language {
        check_text("language", lang, 16)?;
        if !lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(field_error("language", "must be a language tag such as \"en\" or \"pt-BR\""));
        }
    }
    if let Some(space) = &a.vector_space {
        check_text("vector_space", space, limits.max_name_bytes)?;
    }
    match (&a.vector, &a.vector_space) {
        (Some(_), None) => return Err(field_error("vector_space", "is required when vector is given")),
        (None, Some(_)) => return Err(field_error("vector", "is required when vector_space is given")),
        (Some(v), Some(space)) => {
            let Some(spec) = limits.vector_spaces.iter().find(|s| &s.name == space) else {
                let known: Vec<&str> = limits.vector_spaces.iter().map(|s| s.name.as_str()).collect();
                return Err(field_error("vector_space", format!("{space:?} is not a configured vector space; configured: {known:?}")));
            };
            if v.len() != spec.dimensions {
                return Err(field_error("vector", format!("has {} dimensions; space {space:?} has {}", v.len(), spec.dimensions)));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite() || !(*x as f32).is_finite()) {
                return Err(field_error("vector", format!("element {i} must be a finite 32-bit float")));
            }
            if v.iter().all(|x| *x == 0.0) {
                return Err(field_error("vector", "is all zeros; it has no direction to compare"));
            }
        }
        (None, None) => {}
    }
    if a.label.is_none() && a.text.is_none() && a.vector.is_none() {
        return Err(ApiError::field("label", "an annotation needs a payload: label, text, or vector with vector_space"));
    }
    Ok(())
}

/// A command a peer asks this node to propose, checked with the same validation as HTTP: every
/// item's raw bytes must parse and validate under `limits` and give exactly the parsed form it
/// travels with; an asset record must be one `PUT /v1/assets` would accept.
pub fn validate_command(command: &crate::model::ShardCommand, limits: &IngestLimits) -> Result<(), ApiError> {
    use crate::model::{ShardCommand, StoredAnnotation};
    match command {
        ShardCommand::Ingest { items } => {
            if items.is_empty() {
                return Err(ApiError::field("items", "an ingest command with no items"));
            }
            if items.len() > limits.max_batch_items {
                return Err(batch_too_large(items.len(), limits));
            }
            for (position, item) in items.iter().enumerate() {
                let raw = std::str::from_utf8(&item.raw_json)
                    .map_err(|_| ApiError::new(ErrorCode::InvalidJson, "raw_json is not UTF-8").with_item(position))?;
                let annotation = parse_annotation(raw, limits).map_err(|e| e.with_item(position))?;
                let (parsed, vector) = StoredAnnotation::from_validated(annotation);
                if parsed != item.annotation || vector != item.vector {
                    return Err(ApiError::field("raw_json", "the parsed annotation does not match its raw bytes").with_item(position));
                }
            }
            Ok(())
        }
        ShardCommand::UpsertAsset { asset_id, record } => {
            validate_asset_id(asset_id, limits.max_asset_id_bytes).map_err(|m| ApiError::field("asset_id", format!("asset_id {m}")))?;
            validate_asset_record(&crate::api::AssetRecord::from(record.clone()), limits.max_time_ms)
        }
        ShardCommand::DeleteAsset { asset_id } => {
            validate_asset_id(asset_id, limits.max_asset_id_bytes).map_err(|m| ApiError::field("asset_id", format!("asset_id {m}")))
        }
        ShardCommand::DeleteAnnotation { asset_id, annotation_id } => {
            validate_asset_id(asset_id, limits.max_asset_id_bytes).map_err(|m| ApiError::field("asset_id", format!("asset_id {m}")))?;
            validate_annotation_id(annotation_id, limits.max_id_bytes)
        }
        ShardCommand::PurgeSuperseded { asset_ids } => {
            if asset_ids.is_empty() || asset_ids.len() > limits.max_batch_items {
                return Err(ApiError::field("asset_ids", format!("a purge names 1..={} assets", limits.max_batch_items)));
            }
            for asset_id in asset_ids {
                validate_asset_id(asset_id, limits.max_asset_id_bytes)
                    .map_err(|m| ApiError::field("asset_ids", format!("asset_id {asset_id:?} {m}")))?;
            }
            Ok(())
        }
    }
}

/// An annotation id as a path segment or a delete names it: 1 to `max_bytes` bytes, no
/// control characters.
pub fn validate_annotation_id(annotation_id: &str, max_bytes: usize) -> Result<(), ApiError> {
    if annotation_id.is_empty() || annotation_id.len() > max_bytes {
        return Err(ApiError::field("annotation_id", format!("annotation_id must be 1..={max_bytes} bytes, is {}", annotation_id.len())));
    }
    if annotation_id.chars().any(char::is_control) {
        return Err(ApiError::field("annotation_id", "annotation_id must not contain control characters"));
    }
    Ok(())
}

/// An asset record as `PUT /v1/assets/{id}` accepts it.
pub fn validate_asset_record(record: &crate::api::AssetRecord, max_time_ms: u64) -> Result<(), ApiError> {
    for (field, value, max) in [("title", &record.title, 512usize), ("series", &record.series, 128)] {
        if let Some(text) = value {
            if text.len() > max {
                return Err(
                    ApiError::new(ErrorCode::TooLarge, format!("{field} is {} bytes; the limit is {max}", text.len())).with_field(field)
                );
            }
            if text.chars().any(char::is_control) {
                return Err(ApiError::field(field, format!("{field} must not contain control characters")));
            }
        }
    }
    if let Some(fps) = record.fps {
        if !fps.is_finite() || fps <= 0.0 || fps > 1000.0 {
            return Err(ApiError::field("fps", format!("fps is {fps}; it must be a number in (0, 1000]")));
        }
    }
    if let Some(duration) = record.duration_ms {
        if duration == 0 || duration > max_time_ms {
            return Err(ApiError::field("duration_ms", format!("duration_ms is {duration}; allowed 1..={max_time_ms}")));
        }
    }
    Ok(())
}

/// Parses and validates one annotation object.
pub fn parse_annotation(raw: &str, limits: &IngestLimits) -> Result<Annotation, ApiError> {
    // Fast path: the common, well-formed annotation parses straight into the typed struct
    // (no intermediate `Value`, which costs most of the CPU for 512-number vectors). Anything
    // it refuses (extra fields, wrong types) takes the slow path, which names the field.
    let annotation = match serde_json::from_str::<Annotation>(raw) {
        Ok(annotation) => annotation,
        Err(_) => extract_annotation(raw)?,
    };
    validate_annotation(&annotation, limits)?;
    Ok(annotation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Value {
        serde_json::json!({"id": "a1", "asset_id": "s01e01", "model": "faces", "model_version": "1",
            "track": "character", "start_ms": 1000, "end_ms": 2500, "label": "Joey", "confidence": 0.9})
    }

    fn check(value: Value) -> Result<Annotation, ApiError> {
        parse_annotation(&value.to_string(), &IngestLimits::default())
    }

    #[test]
    fn accepts_a_good_annotation() {
        let a = check(good()).unwrap();
        assert_eq!(a.label.as_deref(), Some("Joey"));
    }

    #[test]
    fn names_the_field_of_each_error() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("end_ms", Value::from(500), "end_ms"),
            ("start_ms", Value::from(1.5), "start_ms"),
            ("start_ms", Value::from(-3), "start_ms"),
            ("confidence", Value::from(1.5), "confidence"),
            ("confidence", Value::from("high"), "confidence"),
            ("track", Value::from("Char acter"), "track"),
            ("asset_id", Value::from("a/b"), "asset_id"),
            ("id", Value::from(""), "id"),
            ("id", Value::from(7), "id"),
            ("confidance", Value::from(0.5), "confidance"),
        ];
        for (field, value, expected) in cases {
            let mut v = good();
            v[field] = value;
            let err = check(v).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(expected), "{err:?}");
        }
    }

    #[test]
    fn vector_rules() {
        let mut v = good();
        v["vector_space"] = "scene".into();
        v["vector"] = serde_json::json!([0.1, 0.2]);
        assert_eq!(check(v.clone()).unwrap_err().field.as_deref(), Some("vector"));
        v["vector"] = serde_json::json!(vec![0.01; 512]);
        assert!(check(v.clone()).is_ok());
        v["vector_space"] = "faces".into();
        assert_eq!(check(v).unwrap_err().field.as_deref(), Some("vector_space"));
    }

    #[test]
    fn unknown_non_typo_fields_are_kept() {
        let mut v = good();
        v["bbox"] = serde_json::json!([1, 2, 3, 4]);
        assert!(check(v).is_ok());
    }

    #[test]
    fn batch_is_rejected_whole_with_item_index() {
        let mut bad = good();
        bad["end_ms"] = 0.into();
        let body = serde_json::json!([good(), bad]).to_string();
        let err = parse_batch(body.as_bytes(), BodyFormat::JsonArray, &IngestLimits::default()).unwrap_err();
        assert_eq!(err.item, Some(1));
        let ndjson = format!("{}\n{}\n", good(), good());
        assert_eq!(parse_batch(ndjson.as_bytes(), BodyFormat::Ndjson, &IngestLimits::default()).unwrap().len(), 2);
    }

    #[test]
    fn raw_bytes_are_kept_exactly() {
        let item = r#"{"id":"x",  "asset_id":"a","model":"m","model_version":"1","track":"object","start_ms":0,"end_ms":10,"label":"cup","extra_field":{"k":[1,2]}}"#;
        let body = format!("[{item}]");
        let parsed = parse_batch(body.as_bytes(), BodyFormat::JsonArray, &IngestLimits::default()).unwrap();
        assert_eq!(parsed[0].raw_json, item.as_bytes());
    }
}
