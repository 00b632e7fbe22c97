//! A small blocking HTTP client for the CLI commands (`import`, `search`, `bench`) and tests,
//! and [`wait`]: the one way the project's tests wait for a condition (with a deadline).

pub mod wait;

use std::time::Duration;

use rushes_protocol::{IngestReply, SearchRequest, SearchResponse};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} from {url}: {body}")]
    Status { url: String, status: u16, body: String, retry_after_s: Option<u64> },
    #[error("cannot reach {url}: {message}")]
    Transport { url: String, message: String },
    #[error("unreadable reply from {url}: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => *status == 429 || *status == 503,
            ClientError::Transport { .. } => true,
            ClientError::Decode { .. } => false,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer <token>` with every request.
    token: Option<String>,
    timeout: Duration,
}

/// A TLS client configuration that trusts the CA certificates in `ca_pem` (and nothing else):
/// for servers whose certificates come from a private CA. The error says what is wrong with
/// the PEM.
pub fn tls_config_trusting(ca_pem: &[u8]) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        let certificate = certificate.map_err(|e| format!("the CA file is not PEM: {e}"))?;
        roots.add(certificate).map_err(|e| format!("the CA certificate is not usable: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".to_string());
    }
    // *ring*, as everywhere in the project (see `rushes_cluster::transport::tls::provider`).
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

fn agent(timeout: Duration, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> ureq::Agent {
    let builder =
        ureq::AgentBuilder::new().timeout(timeout).timeout_connect(timeout.min(Duration::from_secs(5))).max_idle_connections_per_host(64);
    match tls {
        Some(config) => builder.tls_config(config).build(),
        None => builder.build(),
    }
}

impl Client {
    /// A client whose requests may take up to 120 s (a large batch on a busy node).
    pub fn new(base: &str) -> Client {
        Client::with_timeout(base, Duration::from_secs(120))
    }

    /// A client whose requests fail after `timeout` (connect included): for harnesses that
    /// pause nodes, where a request to a stopped process would otherwise hang.
    pub fn with_timeout(base: &str, timeout: Duration) -> Client {
        Client { base: base.trim_end_matches('/').to_string(), agent: agent(timeout, None), token: None, timeout }
    }

    /// Sends `token` (an API key) with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// Trusts the certificate authority in `ca_pem` (PEM) for `https://` servers, instead of
    /// the public roots.
    pub fn with_ca_pem(mut self, ca_pem: &[u8]) -> Result<Client, ClientError> {
        let config = tls_config_trusting(ca_pem).map_err(|message| ClientError::Transport { url: self.base.clone(), message })?;
        self.agent = agent(self.timeout, Some(config));
        Ok(self)
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn handle(url: &str, result: Result<ureq::Response, ureq::Error>) -> Result<String, ClientError> {
        match result {
            Ok(response) => response.into_string().map_err(|e| ClientError::Decode { url: url.into(), message: e.to_string() }),
            Err(ureq::Error::Status(status, response)) => {
                let retry_after_s = response.header("Retry-After").and_then(|v| v.parse().ok());
                let body = response.into_string().unwrap_or_default();
                Err(ClientError::Status { url: url.into(), status, body, retry_after_s })
            }
            Err(e) => Err(ClientError::Transport { url: url.into(), message: e.to_string() }),
        }
    }

    pub fn get(&self, path: &str) -> Result<String, ClientError> {
        let url = self.url(path);
        Self::handle(&url, self.request("GET", &url).call())
    }

    /// A GET whose body is read as it arrives (an export can be larger than memory).
    pub fn get_stream(&self, path: &str) -> Result<Box<dyn std::io::Read + Send + Sync>, ClientError> {
        let url = self.url(path);
        match self.request("GET", &url).call() {
            Ok(response) => Ok(response.into_reader()),
            Err(e) => Self::handle(&url, Err(e)).map(|_| Box::new(std::io::empty()) as Box<dyn std::io::Read + Send + Sync>),
        }
    }

    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let url = self.url(path);
        let text = self.get(path)?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode { url, message: e.to_string() })
    }

    pub fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Result<String, ClientError> {
        let url = self.url(path);
        Self::handle(&url, self.request(method, &url).set("Content-Type", content_type).send_bytes(body))
    }

    pub fn post_ndjson(&self, body: &[u8]) -> Result<IngestReply, ClientError> {
        let url = self.url("/v1/annotations");
        let text = self.send("POST", "/v1/annotations", "application/x-ndjson", body)?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode { url, message: e.to_string() })
    }

    /// Posts with retries on 429/503 and transport errors (safe: ids are idempotent), waiting
    /// between attempts at least what the server's Retry-After asks (at most 30 s).
    pub fn post_ndjson_retrying(&self, body: &[u8], attempts: u32) -> Result<IngestReply, ClientError> {
        let mut attempt = 0;
        loop {
            match self.post_ndjson(body) {
                Err(e) if e.is_retryable() && attempt + 1 < attempts => {
                    attempt += 1;
                    let backoff_ms = 50u64 << attempt.min(6);
                    let asked_ms = match &e {
                        ClientError::Status { retry_after_s: Some(seconds), .. } => seconds.saturating_mul(1_000).min(30_000),
                        _ => 0,
                    };
                    std::thread::sleep(Duration::from_millis(backoff_ms.max(asked_ms)));
                }
                other => return other,
            }
        }
    }

    pub fn search(&self, request: &SearchRequest) -> Result<SearchResponse, ClientError> {
        let url = self.url("/v1/search");
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode { url: url.clone(), message: e.to_string() })?;
        let text = self.send("POST", "/v1/search", "application/json", &body)?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode { url, message: e.to_string() })
    }
}

/// Percent-encodes a URL path segment or query value (everything but RFC 3986 unreserved
/// characters, byte by byte of its UTF-8).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::time::Instant;

    /// Answers each request on loopback with the next of `replies` (status, extra headers,
    /// body), and records when each request arrived.
    fn serve(replies: Vec<(u16, &'static str, &'static str)>) -> (String, std::thread::JoinHandle<Vec<Instant>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let server = std::thread::spawn(move || {
            let mut arrivals = Vec::new();
            let mut replies = replies.into_iter();
            'connections: for stream in listener.incoming() {
                let mut stream = stream.expect("accept");
                let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                loop {
                    let mut content_length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).expect("read request") == 0 {
                            continue 'connections;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                content_length = value.trim().parse().expect("content length");
                            }
                        }
                    }
                    let mut body = vec![0; content_length];
                    reader.read_exact(&mut body).expect("read body");
                    arrivals.push(Instant::now());
                    let Some((status, headers, body)) = replies.next() else { break 'connections };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
                        body.len()
                    );
                    stream.write_all(response.as_bytes()).expect("write response");
                    if replies.len() == 0 {
                        break 'connections;
                    }
                }
            }
            arrivals
        });
        (base, server)
    }

    #[test]
    fn retries_wait_at_least_what_retry_after_asks() {
        let (base, server) = serve(vec![
            (503, "Retry-After: 1\r\n", r#"{"error":{"code":"unavailable","message":"busy"}}"#),
            (200, "", r#"{"accepted":1,"created":1,"duplicates":0,"took_ms":1}"#),
        ]);
        let reply = Client::new(&base).post_ndjson_retrying(b"{}\n", 3).expect("accepted on the second attempt");
        assert_eq!(reply.accepted, 1);
        let arrivals = server.join().expect("server");
        assert_eq!(arrivals.len(), 2);
        // The client's own backoff before a second attempt is 100 ms.
        assert!(arrivals[1] - arrivals[0] >= Duration::from_secs(1), "waited {:?}", arrivals[1] - arrivals[0]);
    }
}
