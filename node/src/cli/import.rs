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

/// Reads an NDJSON file of asset records (`{"asset_id": ..., "title": ..., ...}` per line, as
/// `rushes gen` writes assets.ndjson), checking every line (its asset id by the server's rule,
/// its fields strictly) before anything is sent. Errors name the file, the line and the fix.
pub fn read_records(path: &std::path::Path) -> Result<Vec<(String, rushes_protocol::AssetRecord)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--records {}: {e}", path.display()))?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("--records {} line {}", path.display(), index + 1);
        let mut value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{at}: not JSON ({e})"))?;
        let asset_id = value
            .as_object_mut()
            .and_then(|object| object.remove("asset_id"))
            .and_then(|id| id.as_str().map(str::to_string))
            .ok_or_else(|| format!("{at}: needs \"asset_id\" (a string) beside the record's fields"))?;
        rushes_protocol::validate::validate_asset_id(&asset_id, max_asset_id_bytes())
            .map_err(|m| format!("{at}: asset_id {asset_id:?} {m}"))?;
        let record: rushes_protocol::AssetRecord =
            serde_json::from_value(value).map_err(|e| format!("{at}: {e} (fields: title, series, season, episode, duration_ms, fps)"))?;
        records.push((asset_id, record));
    }
    Ok(records)
}

/// Stores each record with `PUT /v1/assets/{id}`, retrying an overloaded or leaderless node a
/// few times (the same record written again leaves it as it is). Returns how many were stored.
pub fn put_records(client: &Client, records: &[(String, rushes_protocol::AssetRecord)]) -> Result<usize, String> {
    for (asset_id, record) in records {
        let body = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let path = format!("/v1/assets/{asset_id}");
        let mut pause = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            match client.send("PUT", &path, "application/json", &body) {
                Ok(_) => break,
                Err(error) if error.is_retryable() && attempts < 10 => {
                    attempts += 1;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(error) => return Err(format!("storing the record of {asset_id}: {error}")),
            }
        }
    }
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_whole_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("assets.ndjson");
        std::fs::write(
            &good,
            "{\"asset_id\": \"s01e01\", \"title\": \"Pilot\", \"fps\": 23.976}\n\n{\"asset_id\": \"s01e02\", \"season\": 1}\n",
        )
        .expect("write");
        let records = read_records(&good).expect("two good lines");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, "s01e01");
        assert_eq!(records[0].1.title.as_deref(), Some("Pilot"));
        assert_eq!(records[1].1.season, Some(1));
        for (line, expected) in [
            ("{\"title\": \"no id\"}", "needs \"asset_id\""),
            ("{\"asset_id\": \"bad id!\", \"title\": \"x\"}", "asset_id \"bad id!\""),
            ("{\"asset_id\": \"ok\", \"titel\": \"typo\"}", "titel"),
            ("not json", "not JSON"),
        ] {
            let bad = dir.path().join("bad.ndjson");
            std::fs::write(&bad, format!("{{\"asset_id\": \"fine\"}}\n{line}\n")).expect("write");
            let error = read_records(&bad).expect_err(line);
            assert!(error.contains("line 2") && error.contains(expected), "{error}");
        }
    }

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
