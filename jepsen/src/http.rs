//! The harness's own small HTTP layer, with short timeouts.
//!
//! `rushes_client::Client` waits up to 120 s for a reply, which is right for the CLI but
//! not for a suite that SIGSTOPs nodes: a request to a paused node is accepted by the kernel and
//! then hangs. Everything the harness sends on its own (status polls, ingest, checks) goes through
//! [`Http`], whose timeouts are a few seconds.

use std::time::Duration;

/// The API key of the cluster under test, sent with every request of the suite (the nodes
/// run with API keys on). Set by `LocalCluster::start`.
static SUITE_API_KEY: std::sync::RwLock<Option<String>> = std::sync::RwLock::new(None);

/// Makes every [`Http`] created from now on send `key` (`Authorization: Bearer`).
pub fn set_api_key(key: Option<String>) {
    if let Ok(mut current) = SUITE_API_KEY.write() {
        *current = key;
    }
}

/// The API key requests carry now.
pub fn api_key() -> Option<String> {
    SUITE_API_KEY.read().ok().and_then(|key| key.clone())
}

/// A blocking HTTP agent with a connect timeout and an overall per-request timeout.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    authorization: Option<String>,
}

/// Why a request did not return 2xx.
#[derive(Debug, Clone)]
pub enum HttpError {
    /// The server answered with a non-2xx status.
    Status { url: String, status: u16, body: String },
    /// No answer: refused connection, reset, timeout.
    Transport { url: String, message: String },
}

impl HttpError {
    /// Retryable means "the outcome is unknown or the node cannot serve right now; send the same
    /// request later, possibly to another node": 429, 502, 503, 504 and every transport error.
    /// Re-sending is safe because annotation ids are idempotent.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            HttpError::Transport { .. } => true,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            HttpError::Transport { .. } => None,
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Status { url, status, body } => {
                let body: String = body.chars().take(500).collect();
                write!(f, "{status} from {url}: {body}")
            }
            HttpError::Transport { url, message } => write!(f, "cannot reach {url}: {message}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl Http {
    /// `timeout` bounds a whole request (connect, send, read the reply).
    pub fn new(timeout: Duration) -> Http {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2).min(timeout))
            .timeout(timeout)
            .max_idle_connections_per_host(16)
            .build();
        Http { agent, authorization: api_key().map(|key| format!("Bearer {key}")) }
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match &self.authorization {
            Some(value) => request.set("Authorization", value),
            None => request,
        }
    }

    fn finish(url: &str, result: Result<ureq::Response, ureq::Error>) -> Result<String, HttpError> {
        match result {
            Ok(response) => response.into_string().map_err(|e| HttpError::Transport { url: url.to_string(), message: e.to_string() }),
            Err(ureq::Error::Status(status, response)) => {
                let body = response.into_string().unwrap_or_default();
                Err(HttpError::Status { url: url.to_string(), status, body })
            }
            Err(e) => Err(HttpError::Transport { url: url.to_string(), message: e.to_string() }),
        }
    }

    pub fn get(&self, url: &str) -> Result<String, HttpError> {
        Self::finish(url, self.request("GET", url).call())
    }

    pub fn get_json(&self, url: &str) -> Result<serde_json::Value, HttpError> {
        let text = self.get(url)?;
        serde_json::from_str(&text)
            .map_err(|e| HttpError::Transport { url: url.to_string(), message: format!("reply is not JSON ({e}): {text:.200}") })
    }

    pub fn send(&self, method: &str, url: &str, content_type: &str, body: &[u8]) -> Result<String, HttpError> {
        Self::finish(url, self.request(method, url).set("Content-Type", content_type).send_bytes(body))
    }

    pub fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<serde_json::Value, HttpError> {
        let text = self.send("POST", url, "application/json", body.to_string().as_bytes())?;
        serde_json::from_str(&text)
            .map_err(|e| HttpError::Transport { url: url.to_string(), message: format!("reply is not JSON ({e}): {text:.200}") })
    }
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(segment: &str) -> String {
    rushes_client::percent_encode(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_characters_only() {
        assert_eq!(encode_segment("faces-s01e02-000123"), "faces-s01e02-000123");
        assert_eq!(encode_segment("a/b c%"), "a%2Fb%20c%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn retryable_statuses() {
        let status = |status| HttpError::Status { url: String::new(), status, body: String::new() };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(status(504).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(409).is_retryable());
        assert!(!status(500).is_retryable());
        assert!(HttpError::Transport { url: String::new(), message: String::new() }.is_retryable());
    }
}
