//! Client authentication: API keys sent as `Authorization: Bearer <key>`, each with scopes.
//! Keys are configured as SHA-256 hashes (`[[auth.keys]]`), so the config holds nothing that
//! would let its reader call the API. With no key configured the API is open, and the config
//! only allows that on a loopback address (`http.allow_unauthenticated` overrides it).

use rushes_config::Config;
use rushes_protocol::{ApiError, ErrorCode};
use sha2::{Digest, Sha256};

/// What a request needs its key to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Searches, suggestions, explanations, reads of assets, annotations and buckets, status.
    Read,
    /// Ingest, asset records, subtitles.
    Write,
    /// Raw-store digests, fault injection, and anything else that can hurt a node.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

struct Key {
    name: String,
    sha256: [u8; 32],
    scopes: Vec<Scope>,
}

/// The configured keys.
pub struct ApiKeys {
    keys: Vec<Key>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No key is configured: everyone is allowed everything (loopback only by default).
    Open,
    /// The name of the key the request carried.
    Key(String),
}

/// The SHA-256 of a key as `[[auth.keys]]` holds it: `sha256:` and 64 lower-case hex digits.
pub fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// A new random key: `rk_` and 64 hex digits (256 bits).
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("rk_{hex}")
}

fn decode_hash(hash: &str) -> Option<[u8; 32]> {
    let digits = hash.strip_prefix("sha256:")?;
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Equal without an early exit, so the time taken does not say how much matched.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

impl ApiKeys {
    /// The keys of `[[auth.keys]]` (already validated by the config).
    pub fn from_config(config: &Config) -> ApiKeys {
        let keys = config
            .auth
            .keys
            .iter()
            .filter_map(|key| {
                Some(Key {
                    name: key.name.clone(),
                    sha256: decode_hash(&key.hash)?,
                    scopes: key.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                })
            })
            .collect();
        ApiKeys { keys }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the `Authorization` header of a request that needs `scope`: 401 without a valid
    /// key, 403 with a key that lacks the scope.
    pub fn check(&self, authorization: Option<&str>, scope: Scope, what: &str) -> Result<Caller, ApiError> {
        if self.keys.is_empty() {
            return Ok(Caller::Open);
        }
        let unauthenticated = |message: &str| ApiError::new(ErrorCode::Unauthenticated, message.to_string());
        let Some(header) = authorization else {
            return Err(unauthenticated(
                "this node requires an API key: send Authorization: Bearer <key> (rushes ... --token, or RUSHES_TOKEN)",
            ));
        };
        let Some(token) = header.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(unauthenticated("the Authorization header must be \"Bearer <key>\""));
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every key is compared, so the time does not say which one (if any) matched.
        let found = self.keys.iter().fold(None, |found, key| if same_digest(&key.sha256, &digest) { Some(key) } else { found });
        let Some(key) = found else {
            return Err(unauthenticated("the API key is not valid for this node"));
        };
        if !key.scopes.contains(&scope) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("the key {:?} lacks the {} scope that {what} needs; use a key with it", key.name, scope.as_str()),
            ));
        }
        Ok(Caller::Key(key.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        let mut config = Config::default();
        config.auth.keys = vec![
            rushes_config::ApiKeyConfig { name: "reader".into(), hash: key_hash("r-key"), scopes: vec!["read".into()] },
            rushes_config::ApiKeyConfig {
                name: "ops".into(),
                hash: key_hash("o-key"),
                scopes: vec!["read".into(), "write".into(), "admin".into()],
            },
        ];
        ApiKeys::from_config(&config)
    }

    #[test]
    fn keys_are_checked_by_hash_and_scope() {
        let keys = keys();
        assert_eq!(keys.check(Some("Bearer r-key"), Scope::Read, "GET x"), Ok(Caller::Key("reader".into())));
        let code = |result: Result<Caller, ApiError>| result.map_err(|e| e.code);
        assert_eq!(code(keys.check(Some("Bearer r-key"), Scope::Write, "POST x")), Err(ErrorCode::Forbidden));
        assert_eq!(code(keys.check(Some("Bearer o-key"), Scope::Admin, "POST x")), Ok(Caller::Key("ops".into())));
        assert_eq!(code(keys.check(None, Scope::Read, "GET x")), Err(ErrorCode::Unauthenticated));
        assert_eq!(code(keys.check(Some("Bearer nope"), Scope::Read, "GET x")), Err(ErrorCode::Unauthenticated));
        assert_eq!(code(keys.check(Some("Basic r-key"), Scope::Read, "GET x")), Err(ErrorCode::Unauthenticated));
        assert_eq!(code(keys.check(Some("Bearer "), Scope::Read, "GET x")), Err(ErrorCode::Unauthenticated));
        assert_eq!(ApiKeys::from_config(&Config::default()).check(None, Scope::Admin, "x"), Ok(Caller::Open));
    }

    #[test]
    fn new_keys_hash_to_config_entries() {
        let key = new_key();
        assert!(key.starts_with("rk_") && key.len() == 67);
        let hash = key_hash(&key);
        assert_eq!(decode_hash(&hash).map(|d| d.len()), Some(32));
        assert_ne!(new_key(), key);
        assert_eq!(key_hash("abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
