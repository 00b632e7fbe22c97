//! Errors of loading and validating a configuration. Every variant that concerns a value names
//! its key (dotted, with array indices: `vector_spaces[1].metric`) and says what is allowed, so
//! the message alone is enough to fix the problem.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value came from; shown in errors so an operator knows what to edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built-in defaults ([`crate::Config::default`]).
    Defaults,
    /// The TOML file at this path.
    File(PathBuf),
    /// The environment variable with this name.
    EnvironmentVariable(String),
    /// The command-line override with this (dotted) key.
    Override(String),
    /// All sources merged; used only when a problem cannot be traced to one source.
    Combined,
}

impl fmt::Display for Origin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Defaults => write!(formatter, "the built-in defaults"),
            Origin::File(path) => write!(formatter, "file {}", path.display()),
            Origin::EnvironmentVariable(name) => write!(formatter, "environment variable {name}"),
            Origin::Override(key) => write!(formatter, "command-line override {key}"),
            Origin::Combined => write!(formatter, "the combined configuration"),
        }
    }
}

/// Renders " (from <origin>)" when the origin is known, so messages read the same with or
/// without one.
fn from_origin(origin: &Option<Origin>) -> String {
    match origin {
        Some(origin) => format!(" (from {origin})"),
        None => String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Text that is not valid TOML (the message from toml carries line and column), or a
    /// malformed override key or array index.
    #[error("cannot parse {origin}: {message}")]
    Parse { origin: Origin, message: String },

    /// A key that does not exist. `scope` is the table it was looked up in (`[index]`,
    /// `[[vector_spaces]]`, `the top level`) and `allowed` lists the keys that exist there.
    #[error("unknown key \"{key}\"{}: allowed keys in {scope} are {}", from_origin(.origin), .allowed.join(", "))]
    UnknownKey { key: String, scope: String, allowed: Vec<&'static str>, origin: Option<Origin> },

    /// An entry of an array of tables lacks a key that has no default.
    #[error("missing key \"{key}\"{}: every entry of {scope} must set {}", from_origin(.origin), .required.join(", "))]
    MissingKey { key: String, scope: String, required: Vec<&'static str>, origin: Option<Origin> },

    /// A number outside its allowed range. `allowed` is e.g. `100..=60000`.
    #[error("{key} = {value} is out of range: allowed {allowed}{}", from_origin(.origin))]
    OutOfRange { key: String, value: String, allowed: String, origin: Option<Origin> },

    /// A value of the wrong type or not among the allowed ones. `allowed` says what is accepted,
    /// e.g. `use one of "cosine", "l2", "ip"`. `value` is rendered as TOML (strings quoted).
    #[error("{key} = {value} is not allowed: {allowed}{}", from_origin(.origin))]
    InvalidValue { key: String, value: String, allowed: String, origin: Option<Origin> },
}

impl ConfigError {
    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::MissingKey { key, .. }
            | ConfigError::OutOfRange { key, .. }
            | ConfigError::InvalidValue { key, .. } => Some(key),
            ConfigError::Io { .. } | ConfigError::Parse { .. } => None,
        }
    }

    /// Where the offending value came from, when known.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::UnknownKey { origin, .. }
            | ConfigError::MissingKey { origin, .. }
            | ConfigError::OutOfRange { origin, .. }
            | ConfigError::InvalidValue { origin, .. } => origin.as_ref(),
            ConfigError::Parse { origin, .. } => Some(origin),
            ConfigError::Io { .. } => None,
        }
    }

    /// Fills in the origin of a keyed error that does not have one yet, using `lookup` on its
    /// key. Validation works on the typed [`crate::Config`] and cannot know where a value came
    /// from; the loader can, and attaches it here.
    pub(crate) fn with_origin_from(mut self, lookup: impl Fn(&str) -> Option<Origin>) -> Self {
        match &mut self {
            ConfigError::UnknownKey { key, origin, .. }
            | ConfigError::MissingKey { key, origin, .. }
            | ConfigError::OutOfRange { key, origin, .. }
            | ConfigError::InvalidValue { key, origin, .. } => {
                if origin.is_none() {
                    *origin = lookup(key);
                }
            }
            ConfigError::Io { .. } | ConfigError::Parse { .. } => {}
        }
        self
    }

    pub(crate) fn invalid_value(key: impl Into<String>, value: impl Into<String>, allowed: impl Into<String>) -> Self {
        ConfigError::InvalidValue { key: key.into(), value: value.into(), allowed: allowed.into(), origin: None }
    }

    pub(crate) fn out_of_range(key: impl Into<String>, value: impl Into<String>, allowed: impl Into<String>) -> Self {
        ConfigError::OutOfRange { key: key.into(), value: value.into(), allowed: allowed.into(), origin: None }
    }
}
