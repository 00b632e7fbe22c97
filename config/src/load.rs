//! Assembling a [`Config`] from defaults, a file, the environment and overrides.
//!
//! Everything is merged as TOML first and deserialized once at the end, so a bad value reads the
//! same whichever source it came from. Along the way we remember which source set which key
//! (`Provenance`) so errors found later, on the merged table or the typed config, can still say
//! "from environment variable RUSHES_FUSION_BUCKET_MS".

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use toml::{Table, Value};

use crate::error::{ConfigError, Origin};
use crate::schema::{field_names, find_field, Field, Kind, TOP_LEVEL};
use crate::Config;

/// Only environment variables starting with this prefix are read.
pub const ENVIRONMENT_PREFIX: &str = "RUSHES_";

/// `RUSHES_` variables that are not configuration keys and are therefore skipped rather than
/// rejected: `RUSHES_LOG` is a tracing filter directive (e.g. `rushes_node=debug,tantivy=warn`)
/// read by the binary, and `RUSHES_CONFIG` is the path of the configuration file itself.
/// `RUSHES_FAULT_INJECTION` switches on the fault-injection endpoint for test suites (read by
/// the HTTP layer, not a config key).
pub const IGNORED_ENVIRONMENT_VARIABLES: &[&str] =
    &["RUSHES_LOG", "RUSHES_CONFIG", "RUSHES_FAULT_INJECTION", "RUSHES_TOKEN", "RUSHES_CA_FILE"];

impl Config {
    /// Loads the configuration: defaults < `file` < `environment` < `overrides`, then checks
    /// every key and value and runs [`Config::validate`].
    ///
    /// `environment` is usually `std::env::vars()` (or see
    /// [`Config::load_with_process_environment`], which does not panic on non-UTF-8 variables);
    /// only variables starting with [`ENVIRONMENT_PREFIX`] are considered, in name order.
    /// `overrides` are `("section.key", "value")` pairs applied in order, so the last one wins.
    pub fn load(
        file: Option<&Path>,
        environment: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut provenance = Provenance::default();
        // Starting from the serialized defaults means array entries (`vector_spaces[0]`) exist
        // for overrides to edit, and the merged table is complete when it is checked.
        let mut merged = defaults_table()?;

        if let Some(path) = file {
            let file_table = read_file_table(path)?;
            provenance.record_table_leaves("", &file_table, &Origin::File(path.to_path_buf()));
            merge_tables(&mut merged, file_table);
        }

        let mut variables: Vec<(String, String)> = environment
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENVIRONMENT_PREFIX) && !IGNORED_ENVIRONMENT_VARIABLES.contains(&name.as_str()))
            .collect();
        // Name order makes the result independent of the platform's ordering and applies a
        // whole array (RUSHES_VECTOR_SPACES) before edits of its entries (RUSHES_VECTOR_SPACES_0_...).
        variables.sort();
        for (name, raw_value) in &variables {
            let origin = Origin::EnvironmentVariable(name.clone());
            let path = environment_variable_path(name, &origin)?;
            apply_string_value(&mut merged, &mut provenance, &path, raw_value, origin)?;
        }

        for (key, raw_value) in overrides {
            let origin = Origin::Override(key.clone());
            let path = parse_override_key(key, &origin)?;
            apply_string_value(&mut merged, &mut provenance, &path, raw_value, origin)?;
        }

        let origin_of = |key: &str| provenance.origin_of(key);
        check_table(TOP_LEVEL, &merged, &KeyPath::root(), "the top level").map_err(|error| error.with_origin_from(origin_of))?;
        // The schema check above catches everything serde would reject, so this error is a
        // safety net; toml's message still names the offending field.
        let config = Config::deserialize(merged)
            .map_err(|error| ConfigError::Parse { origin: Origin::Combined, message: error.to_string().trim_end().to_string() })?;
        config.validate().map_err(|error| error.with_origin_from(origin_of))?;
        Ok(config)
    }

    /// [`Config::load`] with the environment of this process. Unlike `std::env::vars()`, a
    /// variable that is not valid UTF-8 does not panic: it is ignored unless it starts with
    /// `RUSHES_`, in which case it is an error naming it.
    pub fn load_with_process_environment(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut variables = Vec::new();
        for (name, value) in std::env::vars_os() {
            let readable_name = name.to_string_lossy().into_owned();
            if !readable_name.starts_with(ENVIRONMENT_PREFIX) || IGNORED_ENVIRONMENT_VARIABLES.contains(&readable_name.as_str()) {
                continue;
            }
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => variables.push((name, value)),
                _ => {
                    return Err(ConfigError::Parse {
                        origin: Origin::EnvironmentVariable(readable_name),
                        message: "the name or value is not valid UTF-8".to_string(),
                    })
                }
            }
        }
        Config::load(file, variables, overrides)
    }

    /// The configuration as TOML, every key included; [`Config::load`] reads it back to an equal
    /// `Config`. A validated config always serializes; otherwise (a number above `i64::MAX`,
    /// which TOML cannot represent, or a non-UTF-8 path) the result is a TOML comment saying
    /// why, so callers printing it do not need an error path.
    pub fn to_toml_string(&self) -> String {
        match toml::to_string_pretty(self) {
            Ok(text) => text,
            Err(error) => format!("# this configuration cannot be written as TOML: {error}\n"),
        }
    }
}

fn defaults_table() -> Result<Table, ConfigError> {
    Table::try_from(Config::default()).map_err(|error| ConfigError::Parse { origin: Origin::Defaults, message: error.to_string() })
}

fn read_file_table(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    // toml's Display includes "TOML parse error at line L, column C" and the offending line.
    toml::from_str::<Table>(&text)
        .map_err(|error| ConfigError::Parse { origin: Origin::File(path.to_path_buf()), message: error.to_string().trim_end().to_string() })
}

/// Overlays `overlay` on `base`: tables merge key by key, anything else (including arrays of
/// tables such as `[[vector_spaces]]`) replaces the base value whole, so a file that lists its
/// vector spaces gets exactly those and not the default one as well.
fn merge_tables(base: &mut Table, overlay: Table) {
    for (key, overlay_value) in overlay {
        match (base.get_mut(&key), overlay_value) {
            (Some(Value::Table(base_table)), Value::Table(overlay_table)) => merge_tables(base_table, overlay_table),
            (_, overlay_value) => {
                base.insert(key, overlay_value);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key paths

/// One step of a key path: a table key or an index into an array of tables.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A key such as `vector_spaces[0].metric`, as used in error messages and override keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyPath {
    segments: Vec<Segment>,
}

impl KeyPath {
    fn root() -> KeyPath {
        KeyPath::default()
    }

    fn child(&self, key: &str) -> KeyPath {
        let mut path = self.clone();
        path.segments.push(Segment::Key(key.to_string()));
        path
    }

    fn index(&self, index: usize) -> KeyPath {
        let mut path = self.clone();
        path.segments.push(Segment::Index(index));
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => formatter.write_str(key)?,
                Segment::Key(key) => write!(formatter, ".{key}")?,
                Segment::Index(index) => write!(formatter, "[{index}]")?,
            }
        }
        Ok(())
    }
}

fn parse_error(origin: &Origin, message: impl Into<String>) -> ConfigError {
    ConfigError::Parse { origin: origin.clone(), message: message.into() }
}

/// Parses a dotted override key: `fusion.bucket_ms`, `vector_spaces[1].name`, `cluster.nodes`.
fn parse_override_key(key: &str, origin: &Origin) -> Result<KeyPath, ConfigError> {
    let syntax_help = "expected a dotted key such as fusion.bucket_ms or vector_spaces[0].dimensions";
    let mut path = KeyPath::root();
    for part in key.trim().split('.') {
        let (name, index_text) = match part.split_once('[') {
            Some((name, bracketed)) => match bracketed.strip_suffix(']') {
                Some(index_text) => (name, Some(index_text)),
                None => return Err(parse_error(origin, format!("unbalanced '[' in {key:?}: {syntax_help}"))),
            },
            None => (part, None),
        };
        if name.is_empty() {
            return Err(parse_error(origin, format!("empty key segment in {key:?}: {syntax_help}")));
        }
        path = path.child(name);
        if let Some(index_text) = index_text {
            let index = index_text
                .parse::<usize>()
                .map_err(|_| parse_error(origin, format!("array index {index_text:?} in {key:?} is not a number: {syntax_help}")))?;
            path = path.index(index);
        }
    }
    Ok(path)
}

/// Maps `RUSHES_<SECTION>_<KEY>` to a key path. Underscores separate the section from the key
/// but also occur inside names (`vector_spaces`, `commit_interval_ms`), so the split is found
/// by matching known names, longest first, rather than by splitting on `_`.
fn environment_variable_path(name: &str, origin: &Origin) -> Result<KeyPath, ConfigError> {
    let rest = name.strip_prefix(ENVIRONMENT_PREFIX).unwrap_or(name).to_ascii_lowercase();
    let unknown_at_top = || ConfigError::UnknownKey {
        key: rest.clone(),
        scope: "the top level".to_string(),
        allowed: field_names(TOP_LEVEL),
        origin: Some(origin.clone()),
    };
    let (section, after_section) = match_field_prefix(TOP_LEVEL, &rest).ok_or_else(unknown_at_top)?;
    let section_path = KeyPath::root().child(section.name);
    match section.kind {
        Kind::Table(fields) => {
            let unknown_in_section = || ConfigError::UnknownKey {
                key: if after_section.is_empty() { section.name.to_string() } else { format!("{}.{after_section}", section.name) },
                scope: format!("[{}]", section.name),
                allowed: field_names(fields),
                origin: Some(origin.clone()),
            };
            let (field, after_field) = match_field_prefix(fields, after_section).ok_or_else(unknown_in_section)?;
            let field_path = section_path.child(field.name);
            match field.kind {
                Kind::TableArray(entry_fields) if !after_field.is_empty() => {
                    array_entry_path(name, field_path, entry_fields, after_field, origin)
                }
                _ if after_field.is_empty() => Ok(field_path),
                _ => Err(unknown_in_section()),
            }
        }
        Kind::TableArray(entry_fields) if !after_section.is_empty() => {
            array_entry_path(name, section_path, entry_fields, after_section, origin)
        }
        _ => Ok(section_path),
    }
}

/// Finds the field whose name is `text` or, for arrays of tables, a prefix of `text` followed by
/// `_`. Returns the field and what follows the name (without the separating `_`).
fn match_field_prefix<'text>(fields: &'static [Field], text: &'text str) -> Option<(&'static Field, &'text str)> {
    fields
        .iter()
        .filter_map(|field| {
            if text == field.name {
                return Some((field, ""));
            }
            // Only tables and arrays of tables have anything below them.
            let has_children = matches!(field.kind, Kind::Table(_) | Kind::TableArray(_));
            let after = text.strip_prefix(field.name)?.strip_prefix('_')?;
            has_children.then_some((field, after))
        })
        .max_by_key(|(field, _)| field.name.len())
}

/// `<index>_<key>` after an array name, e.g. `0_dimensions` after `RUSHES_VECTOR_SPACES_`.
fn array_entry_path(
    variable_name: &str,
    array_path: KeyPath,
    entry_fields: &'static [Field],
    text: &str,
    origin: &Origin,
) -> Result<KeyPath, ConfigError> {
    // `text` is the tail of the variable name after `<ARRAY>_`; `get` keeps this panic-free.
    let array_variable_length = variable_name.len().saturating_sub(text.len() + 1);
    let array_variable = variable_name.get(..array_variable_length).unwrap_or(variable_name);
    let example_key = entry_fields.first().map_or("NAME".to_string(), |field| field.name.to_ascii_uppercase());
    let index_and_key = text.split_once('_').and_then(|(index_text, key)| Some((index_text.parse::<usize>().ok()?, key)));
    let Some((index, key)) = index_and_key else {
        return Err(parse_error(
            origin,
            format!(
                "expected {array_variable}_<index>_<key> (e.g. {array_variable}_0_{example_key}), or {array_variable} for the whole array"
            ),
        ));
    };
    let entry_path = array_path.index(index);
    match find_field(entry_fields, key) {
        Some(field) => Ok(entry_path.child(field.name)),
        None => Err(ConfigError::UnknownKey {
            key: entry_path.child(key).to_string(),
            scope: format!("[[{array_path}]]"),
            allowed: field_names(entry_fields),
            origin: Some(origin.clone()),
        }),
    }
}

/// Finds what kind of value `path` holds, or says why it names nothing settable.
fn resolve_kind(path: &KeyPath, origin: &Origin) -> Result<Kind, ConfigError> {
    let mut fields: &'static [Field] = TOP_LEVEL;
    let mut scope = "the top level".to_string();
    let mut walked = KeyPath::root();
    let mut segments = path.segments.iter().peekable();
    while let Some(segment) = segments.next() {
        let Segment::Key(name) = segment else {
            return Err(parse_error(
                origin,
                format!("{walked} is not an array of tables; only vector_spaces and cluster.nodes take an [index]"),
            ));
        };
        let Some(field) = find_field(fields, name) else {
            return Err(ConfigError::UnknownKey {
                key: walked.child(name).to_string(),
                scope,
                allowed: field_names(fields),
                origin: Some(origin.clone()),
            });
        };
        walked = walked.child(name);
        match (field.kind, segments.peek()) {
            (Kind::Table(inner), Some(_)) => {
                fields = inner;
                scope = format!("[{walked}]");
            }
            (Kind::Table(inner), None) => {
                // A whole section cannot be set from one string; ask for a key inside it.
                return Err(ConfigError::UnknownKey {
                    key: walked.to_string(),
                    scope: format!("[{walked}]"),
                    allowed: field_names(inner),
                    origin: Some(origin.clone()),
                });
            }
            (Kind::TableArray(inner), Some(Segment::Index(index))) => {
                let index = *index;
                segments.next();
                if segments.peek().is_none() {
                    let example_key = inner.first().map_or("name", |field| field.name);
                    return Err(parse_error(
                        origin,
                        format!("{walked}[{index}] is a whole entry; set one key, e.g. {walked}[{index}].{example_key}"),
                    ));
                }
                scope = format!("[[{walked}]]");
                walked = walked.index(index);
                fields = inner;
            }
            (Kind::TableArray(inner), Some(Segment::Key(key))) => {
                return Err(parse_error(origin, format!("{walked} is an array of tables; address one entry, e.g. {walked}[0].{key}, or set {walked} whole (allowed keys: {})", field_names(inner).join(", "))));
            }
            (kind, None) => return Ok(kind),
            (_, Some(_)) => {
                return Err(parse_error(origin, format!("{walked} holds a value, not a table; nothing can be nested under it")))
            }
        }
    }
    Err(parse_error(origin, "empty key"))
}

// ---------------------------------------------------------------------------------------------
// Applying one environment variable or override

fn apply_string_value(
    merged: &mut Table,
    provenance: &mut Provenance,
    path: &KeyPath,
    raw_value: &str,
    origin: Origin,
) -> Result<(), ConfigError> {
    let kind = resolve_kind(path, &origin)?;
    let value = typed_value(raw_value, kind, &origin)?;
    insert_value(merged, path, value, &origin).map_err(|error| error.with_origin_from(|key| provenance.origin_of(key)))?;
    provenance.record(path.to_string(), origin);
    Ok(())
}

/// Turns a string from the environment or the command line into a TOML value for a key of
/// `kind` (see the crate documentation for why string keys are not parsed as TOML).
fn typed_value(raw_value: &str, kind: Kind, origin: &Origin) -> Result<Value, ConfigError> {
    match kind {
        Kind::Integer => Ok(parse_toml_value(raw_value).unwrap_or_else(|_| Value::String(raw_value.to_string()))),
        Kind::Text | Kind::SocketAddress | Kind::Choice(_) => match parse_toml_value(raw_value) {
            Ok(Value::String(unquoted)) => Ok(Value::String(unquoted)),
            _ => Ok(Value::String(raw_value.to_string())),
        },
        Kind::Bool => Ok(parse_toml_value(raw_value).unwrap_or_else(|_| Value::String(raw_value.to_string()))),
        Kind::TextArray => parse_toml_value(raw_value)
            .map_err(|message| parse_error(origin, format!("expected a TOML array of strings such as [\"read\", \"write\"]: {message}"))),
        Kind::Table(_) | Kind::TableArray(_) => parse_toml_value(raw_value).map_err(|message| {
            parse_error(origin, format!("expected a TOML array of inline tables such as [{{ key = \"value\" }}, {{ ... }}]: {message}"))
        }),
    }
}

/// Parses `raw_value` as the right-hand side of a TOML assignment. Only a single value is
/// accepted: `1\nother = 2` must not smuggle in a second key.
fn parse_toml_value(raw_value: &str) -> Result<Value, String> {
    const ASSIGNMENT: &str = "value = ";
    let document = format!("{ASSIGNMENT}{raw_value}");
    let mut table = toml::from_str::<Table>(&document).map_err(|error| {
        // toml's own message describes the synthetic document; restate it relative to the value.
        let message = error.message().trim().replace('\n', "; ");
        let message = if message.is_empty() { "incomplete value".to_string() } else { message };
        match error.span() {
            Some(span) => format!("{message} at byte {} of {raw_value:?}", span.start.saturating_sub(ASSIGNMENT.len())),
            None => format!("{message} in {raw_value:?}"),
        }
    })?;
    match (table.len(), table.remove("value")) {
        (1, Some(value)) => Ok(value),
        _ => Err("expected a single value".to_string()),
    }
}

fn insert_value(merged: &mut Table, path: &KeyPath, value: Value, origin: &Origin) -> Result<(), ConfigError> {
    insert_into_table(merged, &mut KeyPath::root(), &path.segments, value, origin)
}

fn insert_into_table(
    table: &mut Table,
    walked: &mut KeyPath,
    segments: &[Segment],
    value: Value,
    origin: &Origin,
) -> Result<(), ConfigError> {
    let Some((Segment::Key(name), rest)) = segments.split_first() else {
        return Err(parse_error(origin, format!("expected a key after {walked}")));
    };
    walked.segments.push(Segment::Key(name.clone()));
    match rest.first() {
        None => {
            table.insert(name.clone(), value);
            Ok(())
        }
        Some(next) => {
            let empty_container = match next {
                Segment::Key(_) => Value::Table(Table::new()),
                Segment::Index(_) => Value::Array(Vec::new()),
            };
            let child = table.entry(name.clone()).or_insert(empty_container);
            insert_into_value(child, walked, rest, value, origin)
        }
    }
}

fn insert_into_value(
    current: &mut Value,
    walked: &mut KeyPath,
    segments: &[Segment],
    value: Value,
    origin: &Origin,
) -> Result<(), ConfigError> {
    match (segments.first(), current) {
        (Some(Segment::Key(_)), Value::Table(table)) => insert_into_table(table, walked, segments, value, origin),
        (Some(Segment::Index(index)), Value::Array(entries)) => {
            let index = *index;
            if index > entries.len() {
                return Err(parse_error(
                    origin,
                    format!(
                        "{walked}[{index}] is past the end: {walked} has {} entries; use an index up to {} (that one appends an entry)",
                        entries.len(),
                        entries.len()
                    ),
                ));
            }
            if index == entries.len() {
                entries.push(Value::Table(Table::new()));
            }
            walked.segments.push(Segment::Index(index));
            insert_into_value(&mut entries[index], walked, &segments[1..], value, origin)
        }
        (Some(Segment::Key(_)), other) => Err(ConfigError::invalid_value(walked.to_string(), render(other), "expected a table")),
        (Some(Segment::Index(_)), other) => {
            Err(ConfigError::invalid_value(walked.to_string(), render(other), "expected an array of tables"))
        }
        (None, _) => Err(parse_error(origin, format!("expected a key after {walked}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Provenance

/// Which source last set each key. Keys are recorded at the depth they were set (`node.listen`,
/// `vector_spaces` from a file, `vector_spaces[0].metric` from an override) and looked up by the
/// longest recorded prefix of the key an error is about.
#[derive(Debug, Default)]
struct Provenance {
    origins: BTreeMap<String, Origin>,
}

impl Provenance {
    fn record(&mut self, key: String, origin: Origin) {
        // Setting a key replaces everything below it, so forget where the old parts came from.
        self.origins.retain(|recorded, _| !is_same_or_below(recorded, &key));
        self.origins.insert(key, origin);
    }

    /// Records every leaf of a file's table; arrays count as leaves because they are replaced
    /// whole when merged.
    fn record_table_leaves(&mut self, prefix: &str, table: &Table, origin: &Origin) {
        for (key, value) in table {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                Value::Table(inner) => self.record_table_leaves(&path, inner, origin),
                _ => self.record(path, origin.clone()),
            }
        }
    }

    fn origin_of(&self, key: &str) -> Option<Origin> {
        let mut candidate = key;
        loop {
            if let Some(origin) = self.origins.get(candidate) {
                return Some(origin.clone());
            }
            let parent_end = candidate.rfind(['.', '['])?;
            candidate = &candidate[..parent_end];
        }
    }
}

fn is_same_or_below(candidate: &str, ancestor: &str) -> bool {
    match candidate.strip_prefix(ancestor) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('['),
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Checking the merged table against the schema

/// A value as it would be written in TOML, for error messages (strings quoted).
fn render(value: &Value) -> String {
    value.to_string()
}

fn quoted_list(names: &[&str]) -> String {
    names.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ")
}

fn check_table(fields: &'static [Field], table: &Table, path: &KeyPath, scope: &str) -> Result<(), ConfigError> {
    // Unknown keys first: a misspelt key is the likeliest explanation for anything else.
    for key in table.keys() {
        if find_field(fields, key).is_none() {
            return Err(ConfigError::UnknownKey {
                key: path.child(key).to_string(),
                scope: scope.to_string(),
                allowed: field_names(fields),
                origin: None,
            });
        }
    }
    for field in fields {
        match table.get(field.name) {
            Some(value) => check_value(field, value, &path.child(field.name))?,
            None if field.required => {
                return Err(ConfigError::MissingKey {
                    key: path.child(field.name).to_string(),
                    scope: scope.to_string(),
                    required: fields.iter().filter(|field| field.required).map(|field| field.name).collect(),
                    origin: None,
                });
            }
            None => {}
        }
    }
    Ok(())
}

fn check_value(field: &Field, value: &Value, path: &KeyPath) -> Result<(), ConfigError> {
    let reject = |allowed: String| Err(ConfigError::invalid_value(path.to_string(), render(value), allowed));
    match (field.kind, value) {
        (Kind::Integer, Value::Integer(number)) if *number >= 0 => Ok(()),
        (Kind::Integer, _) => reject("expected a non-negative integer such as 1000 (no quotes, no unit suffix)".to_string()),
        (Kind::Bool, Value::Boolean(_)) => Ok(()),
        (Kind::Bool, _) => reject("expected true or false (no quotes)".to_string()),
        (Kind::TextArray, Value::Array(items)) if items.iter().all(Value::is_str) => Ok(()),
        (Kind::TextArray, _) => reject("expected an array of strings such as [\"read\", \"write\"]".to_string()),
        (Kind::Text, Value::String(_)) => Ok(()),
        (Kind::Text, _) => reject("expected a string in double quotes".to_string()),
        (Kind::SocketAddress, Value::String(text)) if text.parse::<SocketAddr>().is_ok() => Ok(()),
        (Kind::SocketAddress, _) => reject(
            "expected an IP address and port such as \"127.0.0.1:7700\", \"0.0.0.0:7700\" or \"[::1]:7700\" (host names are not accepted)"
                .to_string(),
        ),
        (Kind::Choice(names), Value::String(text)) if names.contains(&text.as_str()) => Ok(()),
        (Kind::Choice(names), _) => reject(format!("use one of {}", quoted_list(names))),
        (Kind::Table(inner), Value::Table(table)) => check_table(inner, table, path, &format!("[{path}]")),
        (Kind::Table(_), _) => reject(format!("expected a table ([{path}])")),
        (Kind::TableArray(inner), Value::Array(entries)) => {
            let scope = format!("[[{path}]]");
            for (index, entry) in entries.iter().enumerate() {
                let entry_path = path.index(index);
                match entry {
                    Value::Table(table) => check_table(inner, table, &entry_path, &scope)?,
                    other => {
                        return Err(ConfigError::invalid_value(
                            entry_path.to_string(),
                            render(other),
                            format!("expected a table ({scope} entry)"),
                        ))
                    }
                }
            }
            Ok(())
        }
        (Kind::TableArray(_), _) => reject(format!("expected an array of tables ([[{path}]] entries, or [{{ ... }}, ...])")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_path(name: &str) -> Result<String, ConfigError> {
        environment_variable_path(name, &Origin::EnvironmentVariable(name.to_string())).map(|path| path.to_string())
    }

    #[test]
    fn environment_names_map_to_keys() {
        assert_eq!(env_path("RUSHES_NODE_LISTEN").unwrap(), "node.listen");
        assert_eq!(env_path("RUSHES_INDEX_COMMIT_INTERVAL_MS").unwrap(), "index.commit_interval_ms");
        assert_eq!(env_path("RUSHES_VECTOR_SPACES").unwrap(), "vector_spaces");
        assert_eq!(env_path("RUSHES_VECTOR_SPACES_1_EXPANSION_SEARCH").unwrap(), "vector_spaces[1].expansion_search");
        assert_eq!(env_path("RUSHES_CLUSTER_NODES").unwrap(), "cluster.nodes");
        assert_eq!(env_path("RUSHES_CLUSTER_NODES_0_RAFT_ADDR").unwrap(), "cluster.nodes[0].raft_addr");
        assert_eq!(env_path("RUSHES_LOG_LEVEL").unwrap(), "log.level");
        assert_eq!(env_path("RUSHES_EMBEDDER_URL").unwrap(), "embedder.url");
        assert_eq!(env_path("RUSHES_EMBEDDER_API_KEY_ENV").unwrap(), "embedder.api_key_env");
        assert_eq!(env_path("RUSHES_SEARCH_RANK_CONSTANT").unwrap(), "search.rank_constant");
        assert_eq!(env_path("RUSHES_SEARCH_EXACT_VECTOR_MAX_CANDIDATES").unwrap(), "search.exact_vector_max_candidates");
        assert!(env_path("RUSHES_NODE_LISTEN_X").is_err());
        assert!(env_path("RUSHES_VECTOR_SPACES_X_NAME").is_err());
    }

    #[test]
    fn override_keys_parse() {
        let origin = Origin::Override("test".into());
        assert_eq!(parse_override_key("vector_spaces[2].name", &origin).unwrap().to_string(), "vector_spaces[2].name");
        assert_eq!(parse_override_key("fusion.bucket_ms", &origin).unwrap().to_string(), "fusion.bucket_ms");
        assert!(parse_override_key("fusion..bucket_ms", &origin).is_err());
        assert!(parse_override_key("vector_spaces[x].name", &origin).is_err());
        assert!(parse_override_key("vector_spaces[0.name", &origin).is_err());
    }

    #[test]
    fn provenance_uses_longest_recorded_prefix() {
        let mut provenance = Provenance::default();
        let file = Origin::File("c.toml".into());
        let variable = Origin::EnvironmentVariable("RUSHES_VECTOR_SPACES_0_METRIC".into());
        provenance.record("vector_spaces".into(), file.clone());
        provenance.record("vector_spaces[0].metric".into(), variable.clone());
        assert_eq!(provenance.origin_of("vector_spaces[0].metric"), Some(variable));
        assert_eq!(provenance.origin_of("vector_spaces[0].name"), Some(file.clone()));
        assert_eq!(provenance.origin_of("node.id"), None);
        // Replacing the whole array forgets the entry-level record.
        provenance.record("vector_spaces".into(), file.clone());
        assert_eq!(provenance.origin_of("vector_spaces[0].metric"), Some(file));
    }

    #[test]
    fn string_values_are_typed_by_kind() {
        let origin = Origin::Override("test".into());
        assert_eq!(typed_value("500", Kind::Integer, &origin).unwrap(), Value::Integer(500));
        assert_eq!(typed_value("1_000", Kind::Integer, &origin).unwrap(), Value::Integer(1000));
        assert_eq!(typed_value("abc", Kind::Integer, &origin).unwrap(), Value::String("abc".into()));
        assert_eq!(typed_value("123", Kind::Text, &origin).unwrap(), Value::String("123".into()));
        assert_eq!(typed_value("2024-01-01", Kind::Text, &origin).unwrap(), Value::String("2024-01-01".into()));
        assert_eq!(typed_value("\"quoted\"", Kind::Text, &origin).unwrap(), Value::String("quoted".into()));
        assert_eq!(typed_value("1\nother = 2", Kind::Integer, &origin).unwrap(), Value::String("1\nother = 2".into()));
        assert!(typed_value("[{ name = ", Kind::TableArray(&[]), &origin).is_err());
    }
}
