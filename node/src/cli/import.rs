//! `rushes import` helpers: the `--asset` check (the server's rule, before anything is read or
//! sent), the asset ids of an NDJSON batch, and the wait until what was imported is searchable.
//!
//! An ingest reply means committed and applied, not yet indexed (docs/api.md), so a search
//! typed right after an import could miss it. The import therefore ends with a strong read of
//! each imported asset (`GET /v1/assets/{id}?consistency=strong`): the replica answering it
//! first obtains a read index from the shard's leader and waits until it has applied and
//! indexed through it, so every acknowledged write of that shard is searchable on that replica.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rushes_client::{Client, ClientError};

/// Longest asset id the server accepts with its default `limits.max_asset_id_bytes`.
pub fn max_asset_id_bytes() -> usize {
    rushes_config::Config::default().limits.max_asset_id_bytes
}

/// `--asset` checked with the rule the server applies (`validate_asset_id` with the default
/// `limits.max_asset_id_bytes`); the error names the flag and the rule.
pub fn check_asset_flag(asset: &str) -> Result<(), String> {
    let max = max_asset_id_bytes();
    rushes_protocol::validate::validate_asset_id(asset, max).map_err(|problem| {
        format!(
            "--asset {asset:?} {problem}: an asset id is 1 to {max} bytes of A-Z a-z 0-9 - _ . : (the server's rule, \
             limits.max_asset_id_bytes = {max})"
        )
    })
}

/// Adds the `asset_id` of every NDJSON line of `chunk` to `assets`. Lines that are not JSON
/// objects with a string `asset_id` are skipped: the server judges them (and refuses the batch).
pub fn collect_asset_ids(chunk: &[u8], assets: &mut BTreeSet<String>) {
    #[derive(serde::Deserialize)]
    struct AssetOf {
        asset_id: String,
    }
    for line in chunk.split(|&byte| byte == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Ok(AssetOf { asset_id }) = serde_json::from_slice::<AssetOf>(line) {
            if !assets.contains(&asset_id) {
                assets.insert(asset_id);
            }
        }
    }
}

/// What [`wait_searchable`] confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct Searchable {
    pub assets: usize,
    /// Assets the strong read found neither record nor annotations for (deleted since).
    pub missing: Vec<String>,
    pub took: Duration,
}

/// Waits until every asset of `assets` is searchable: a strong read of each, retried on
/// retryable answers (no leader yet, 429, 503 `timeout`, a connection error) until `timeout`
/// has passed in all. `client_for(remaining)` gives a client whose requests end within
/// `remaining`, so the whole wait stays within `timeout`.
pub fn wait_searchable(
    assets: &BTreeSet<String>,
    timeout: Duration,
    mut client_for: impl FnMut(Duration) -> Result<Client, String>,
) -> Result<Searchable, String> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut missing = Vec::new();
    for (done, asset) in assets.iter().enumerate() {
        let path = format!("/v1/assets/{asset}?consistency=strong");
        let mut pause = Duration::from_millis(50);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let not_in_time = |last: &str| {
                format!(
                    "the import is stored, but not confirmed searchable within --wait-timeout {} s: {done} of {} assets confirmed, \
                     asset {asset:?} not yet ({last}); the node may be busy indexing or its shard without a leader. Search again \
                     later, raise --wait-timeout, or pass --no-wait",
                    timeout.as_secs_f64(),
                    assets.len()
                )
            };
            if remaining.is_zero() {
                return Err(not_in_time("no time left"));
            }
            match client_for(remaining)?.get(&path) {
                Ok(_) => break,
                Err(ClientError::Status { status: 404, .. }) => {
                    // The strong read waited through the read index before finding nothing.
                    missing.push(asset.clone());
                    break;
                }
                Err(error @ ClientError::Status { status: 401 | 403, .. }) => {
                    return Err(format!(
                        "the import is stored, but cannot be confirmed searchable: {error}. Confirming reads \
                         GET /v1/assets/{{id}}?consistency=strong, which needs the read scope: use a key with the read and write \
                         scopes, or pass --no-wait"
                    ));
                }
                Err(error) if error.is_retryable() => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(not_in_time(&error.to_string()));
                    }
                    std::thread::sleep(pause.min(remaining));
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(format!("the import is stored, but confirming it is searchable failed: {error}")),
            }
        }
    }
    Ok(Searchable { assets: assets.len(), missing, took: started.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_asset_flag_follows_the_server_rule() {
        assert_eq!(max_asset_id_bytes(), 128);
        assert_eq!(max_asset_id_bytes(), rushes_protocol::validate::IngestLimits::default().max_asset_id_bytes);
        for good in ["s01e01", "A-z_0.9:x", &"a".repeat(128)] {
            assert_eq!(check_asset_flag(good), Ok(()), "{good}");
        }
        for (bad, problem) in [
            ("", "must not be empty"),
            (&"a".repeat(129) as &str, "is 129 bytes; the limit is 128"),
            ("ep 1", "contains ' '"),
            ("ep/1", "contains '/'"),
            ("épisode", "contains 'é'"),
        ] {
            let message = check_asset_flag(bad).expect_err(bad);
            assert!(message.starts_with("--asset ") && message.contains(problem), "{message}");
            assert!(message.contains("1 to 128 bytes of A-Z a-z 0-9 - _ . :"), "{message}");
        }
    }

    #[test]
    fn asset_ids_of_a_batch() {
        let mut assets = BTreeSet::new();
        let chunk = b"{\"id\": \"a\", \"asset_id\": \"ep2\", \"track\": \"x\"}\n\n{\"asset_id\": \"ep1\"}\r\nnot json\n{\"asset_id\": 3}\n{\"asset_id\": \"ep2\"}";
        collect_asset_ids(chunk, &mut assets);
        assert_eq!(assets.into_iter().collect::<Vec<_>>(), vec!["ep1".to_string(), "ep2".to_string()]);
    }

    #[test]
    fn nothing_to_wait_for_is_confirmed_at_once() {
        let confirmed = wait_searchable(&BTreeSet::new(), Duration::from_secs(1), |_| Err("no client needed".into())).expect("empty");
        assert_eq!((confirmed.assets, confirmed.missing.len()), (0, 0));
    }

    #[test]
    fn an_unreachable_node_times_out_naming_the_flag() {
        // A port nobody listens on: bind one, then free it.
        let address = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
        let assets: BTreeSet<String> = ["ep1".to_string()].into();
        let started = Instant::now();
        let error = wait_searchable(&assets, Duration::from_millis(300), |remaining| {
            Ok(Client::with_timeout(&format!("http://{address}"), remaining))
        })
        .expect_err("nothing answers");
        assert!(error.contains("--wait-timeout 0.3 s") && error.contains("\"ep1\""), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
