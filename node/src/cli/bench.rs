//! `rushes bench`: ingest a generated corpus over HTTP on loopback, measure acknowledged
//! throughput, time until searchable, query latency per query type, peak memory and disk; then,
//! with `--query-clients N`, the same query kinds again from N concurrent clients (and suggest
//! at typing speed) while `--ingest-clients M` keep posting new annotations (the loaded phase).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rushes_config::Config;
use rushes_protocol::{Clause, SearchMode, SearchRequest};
use serde::Serialize;

use crate::cli::demo::{ensure_sample, sample_dir, wait_caught_up, DemoError, LOAD_BATCH_LINES};
use crate::node::Node;
use rushes_client::{Client, ClientError};
use rushes_sample::{EpisodeTruth, GenConfig};

pub struct BenchOptions {
    pub hours: f64,
    pub seed: u64,
    pub work_dir: PathBuf,
    pub clients: usize,
    pub queries_per_kind: usize,
    pub config: Config,
    /// The loaded phase after the idle measurements (`None`: idle numbers only).
    pub load: Option<LoadOptions>,
    /// Keep the node's data dir (named after hours and seed) and, when a later run finds it
    /// complete, measure queries on it without ingesting again.
    pub keep_data: bool,
}

#[derive(Debug, Serialize)]
pub struct LatencyRow {
    pub kind: String,
    pub queries: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub mean_assets: f64,
    /// The slowest requests of the kind sent once more right after the measurement
    /// (first ms, repeat ms): a fast repeat points at a cold cache or a stall, a slow one at
    /// the query's own cost.
    pub slowest_repeated_ms: Vec<(f64, f64)>,
    /// When the kind ran, as CLOCK_MONOTONIC seconds (what `perf record -k mono` stamps), so a
    /// profile of the whole run can be cut per kind (`perf report --time START,END`).
    pub monotonic_window_s: (f64, f64),
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub hours: f64,
    pub annotations: u64,
    pub shards: u32,
    pub ingest_seconds: f64,
    pub ingest_annotations_per_s: f64,
    pub searchable_after_last_ack_s: f64,
    /// The data dir was kept by an earlier run (`--keep-data`): the ingest figures are that run's.
    pub reused_data: bool,
    /// Wait after that until the node used under 10% of a core for 3 s (merges, suggest warming done).
    pub settled_before_queries_s: f64,
    pub queries: Vec<LatencyRow>,
    /// Mean recall@10 of the approximate vector search against exact search, over all shards.
    pub ann_recall_at_10: f64,
    pub ann_recall_queries: usize,
    pub peak_rss_bytes: u64,
    pub disk_bytes: u64,
    pub disk_bytes_per_annotation: f64,
    pub machine: String,
    /// Queries from concurrent clients while ingest continues (`--query-clients`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadReport>,
}

pub(crate) fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_ms.len() - 1) as f64).round() as usize;
    sorted_ms[rank.min(sorted_ms.len() - 1)]
}

pub(crate) fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| text.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cores} cores ({cpu}), {memory_gib:.0} GiB")
}

pub fn run_bench(options: BenchOptions) -> Result<BenchReport, DemoError> {
    let gen_config = GenConfig { hours: options.hours, seed: options.seed, ..GenConfig::default() };
    let sample = sample_dir(&options.work_dir, &gen_config);
    ensure_sample(&sample, &gen_config, false)?;
    let node_dir = if options.keep_data {
        options.work_dir.join(format!("bench-node-{}h-seed{}", gen_config.hours, gen_config.seed))
    } else {
        options.work_dir.join(format!("bench-node-{}", std::process::id()))
    };
    // A kept data dir is reused only if the run that made it finished its ingest (the record);
    // anything else is a half-made one and starts again.
    let ingest_record_path = node_dir.join(INGEST_RECORD_FILE);
    let earlier_ingest: Option<IngestRecord> = if options.keep_data {
        std::fs::read(&ingest_record_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok())
    } else {
        None
    };
    if earlier_ingest.is_none() {
        let _ = std::fs::remove_dir_all(&node_dir);
    }
    if options.load.is_some() {
        // The loaded phase adds annotations under new ids: the dir will no longer hold just the sample.
        let _ = std::fs::remove_file(&ingest_record_path);
    }
    let keep_data = options.keep_data;
    let reused_data = earlier_ingest.is_some();
    let kept_dir = node_dir.clone();
    // Hybrid queries embed their semantic words with the season's offline embedder.
    let mut config = crate::cli::demo::with_demo_embedder(options.config, options.seed)?;
    config.node.data_dir = node_dir.clone();
    // Measured as it is deployed: every request carries an API key checked by the node.
    let token = crate::http::auth::new_key();
    if config.auth.keys.is_empty() {
        config.auth.keys.push(rushes_config::ApiKeyConfig {
            name: "bench".into(),
            hash: crate::http::auth::key_hash(&token),
            scopes: vec!["read".into(), "write".into(), "admin".into()],
        });
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let system = actix_web::rt::System::new();
    let report = system.block_on(async move {
        let node = Node::open_with_demo_seed(config, options.seed)?;
        let server = crate::http::server(node.clone(), listener)?;
        let handle = server.handle();
        let server_task = actix_web::rt::spawn(server);

        let (annotations, ingest_time, searchable) = match earlier_ingest {
            Some(record) => {
                wait_caught_up(&node, Duration::from_secs(3600)).await?;
                (
                    record.annotations,
                    Duration::from_secs_f64(record.ingest_seconds),
                    Duration::from_secs_f64(record.searchable_after_last_ack_s),
                )
            }
            None => {
                // Assets first (through HTTP, like a client).
                let client = Client::new(&base).with_token(Some(token.clone()));
                for line in BufReader::new(std::fs::File::open(sample.join("assets.ndjson"))?).lines() {
                    let (asset_id, body) = prefixed_asset_line(&line?, "")?;
                    let client = client.clone();
                    tokio::task::spawn_blocking(move || client.send("PUT", &format!("/v1/assets/{asset_id}"), "application/json", &body))
                        .await??;
                }

                // Ingest: client threads posting NDJSON batches over loopback.
                let (batch_tx, batch_rx) = crossbeam_channel::bounded::<Vec<u8>>(options.clients * 2);
                let acknowledged = Arc::new(AtomicU64::new(0));
                let started = Instant::now();
                let mut workers = Vec::new();
                for _ in 0..options.clients {
                    let rx = batch_rx.clone();
                    let client = Client::new(&base).with_token(Some(token.clone()));
                    let acknowledged = acknowledged.clone();
                    workers.push(std::thread::spawn(move || -> Result<(), String> {
                        for body in rx {
                            let reply = client.post_ndjson_retrying(&body, 20).map_err(|e| e.to_string())?;
                            acknowledged.fetch_add(reply.accepted as u64, Ordering::Relaxed);
                        }
                        Ok(())
                    }));
                }
                // Only the workers hold the receiver: if they all fail, the reader's send fails
                // instead of blocking forever on a full channel.
                drop(batch_rx);
                let annotations_path = sample.join("annotations.ndjson");
                let reader_thread = std::thread::spawn(move || -> Result<u64, String> {
                    let mut reader = BufReader::new(std::fs::File::open(annotations_path).map_err(|e| e.to_string())?);
                    let mut lines_total = 0;
                    loop {
                        let mut chunk = Vec::with_capacity(LOAD_BATCH_LINES * 300);
                        let mut lines = 0;
                        while lines < LOAD_BATCH_LINES {
                            if reader.read_until(b'\n', &mut chunk).map_err(|e| e.to_string())? == 0 {
                                break;
                            }
                            lines += 1;
                        }
                        if lines == 0 {
                            return Ok(lines_total);
                        }
                        lines_total += lines as u64;
                        batch_tx.send(chunk).map_err(|e| e.to_string())?;
                    }
                });
                let read = tokio::task::spawn_blocking(move || reader_thread.join()).await?.map_err(|_| "reader panicked")?;
                // A worker's error says why ingest stopped; the reader's ("sending on a
                // disconnected channel") only that it did.
                for worker in workers {
                    tokio::task::spawn_blocking(move || worker.join()).await?.map_err(|_| "ingest worker panicked")??;
                }
                let lines_total = read?;
                let ingest_time = started.elapsed();
                let annotations = acknowledged.load(Ordering::Relaxed);
                if annotations != lines_total {
                    return Err(format!("acknowledged {annotations} of {lines_total} annotations").into());
                }
                let searchable = wait_caught_up(&node, Duration::from_secs(3600)).await?;
                (annotations, ingest_time, searchable)
            }
        };
        // Suggest is measured on a settled corpus: label moments are computed ahead once the
        // data stops changing (Node::warm_suggest_moments); wait for that, bounded.
        let warm_deadline = Instant::now() + Duration::from_secs(300);
        while node.suggest_warmed_version.load(Ordering::Acquire) != node.data_version() && Instant::now() < warm_deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Queries run on a settled node: merges and flushes triggered by the ingest finish first,
        // so latencies measure searching, not the tail of ingest (bounded wait).
        let settled = tokio::task::spawn_blocking(|| wait_until_settled(&[std::process::id()]))
            .await
            .map_err(|e| format!("waiting for the node to settle failed: {e}"))?;

        // Queries of each kind, over HTTP.
        let truths = load_truths(&sample)?;
        let season = rushes_sample::plan_season(&gen_config);
        let queries = query_mix(&season, &truths, options.queries_per_kind, options.seed);
        let mut rows = Vec::new();
        // Search-as-you-type: every prefix of names and words, one request per keystroke.
        let prefixes = suggest_prefixes(&season, &truths, options.queries_per_kind, options.seed);
        let client = Client::new(&base).with_token(Some(token.clone()));
        rows.push(
            tokio::task::spawn_blocking(move || -> Result<LatencyRow, String> {
                let started_s = monotonic_s();
                let mut latencies = Vec::with_capacity(prefixes.len());
                let mut moments = 0usize;
                let suggest = |prefix: &String| client.get_json(&format!("/v1/suggest?q={}", url_encode(prefix)));
                for prefix in &prefixes {
                    let t = Instant::now();
                    let reply = suggest(prefix).map_err(|e| e.to_string())?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    moments += reply["moments"].as_array().map_or(0, Vec::len);
                }
                let window = (started_s, monotonic_s());
                let slowest = repeat_slowest(&latencies, |i| suggest(&prefixes[i]).map(|_| ())).map_err(|e| e.to_string())?;
                Ok(latency_row(SUGGEST_KIND, latencies, moments).with_diagnostics(slowest, window))
            })
            .await??,
        );
        let (recall, recall_queries) = {
            let node = node.clone();
            let vectors: Vec<Vec<f32>> = (0..options.queries_per_kind.max(20))
                .map(|i| {
                    let place = &season.locations[i % season.locations.len()].name;
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed ^ i as u64);
                    rushes_sample::location_centroid(season.config.seed, place, season.config.vector_dimensions)
                        .into_iter()
                        .map(|x| x + rng.gen_range(-0.05..0.05))
                        .collect()
                })
                .collect();
            tokio::task::spawn_blocking(move || ann_recall_at_10(&node, "scene", &vectors)).await??
        };
        for (kind, requests) in queries {
            let client = Client::new(&base).with_token(Some(token.clone()));
            let row = tokio::task::spawn_blocking(move || -> Result<LatencyRow, String> {
                let started_s = monotonic_s();
                let mut latencies = Vec::with_capacity(requests.len());
                let mut assets = 0usize;
                for request in &requests {
                    let t = Instant::now();
                    let response = client.search(request).map_err(|e| e.to_string())?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    assets += response.assets.len();
                }
                let window = (started_s, monotonic_s());
                let slowest = repeat_slowest(&latencies, |i| client.search(&requests[i]).map(|_| ())).map_err(|e| e.to_string())?;
                Ok(latency_row(kind, latencies, assets).with_diagnostics(slowest, window))
            })
            .await??;
            rows.push(row);
        }

        // The loaded phase: the same kinds from concurrent clients while new annotations arrive.
        let idle_peak_rss_bytes = crate::peak_rss_bytes().unwrap_or(0);
        let mut load_report = None;
        if let Some(load) = options.load {
            // Asset records for the new assets first, so filters by series or season see them.
            let client = Client::new(&base).with_token(Some(token.clone()));
            let assets_path = sample.join("assets.ndjson");
            tokio::task::spawn_blocking(move || put_asset_records(&client, &assets_path, LOAD_ID_PREFIX)).await??;
            let phase = LoadPhase {
                base: base.clone(),
                token: token.clone(),
                annotations_path: sample.join("annotations.ndjson"),
                assets_path: sample.join("assets.ndjson"),
                options: load,
                queries: query_mix(&season, &truths, options.queries_per_kind, options.seed),
                prefixes: suggest_prefixes(&season, &truths, options.queries_per_kind, options.seed),
            };
            let mut report = tokio::task::spawn_blocking(move || run_load_phase(&phase)).await??;
            // Indexed before the report, like the idle ingest (bounded; not part of the phase).
            report.searchable_after_s = wait_caught_up(&node, Duration::from_secs(600)).await?.as_secs_f64();
            report.peak_rss_bytes = crate::peak_rss_bytes().unwrap_or(0);
            load_report = Some(report);
        }
        let shards = node.shards().len() as u32;
        handle.stop(true).await;
        let _ = server_task.await;
        let node_for_shutdown = node.clone();
        tokio::task::spawn_blocking(move || node_for_shutdown.shutdown()).await?;
        let disk_bytes = crate::dir_size_bytes(&node_dir);
        Ok::<BenchReport, DemoError>(BenchReport {
            hours: gen_config.hours,
            annotations,
            shards,
            ingest_seconds: ingest_time.as_secs_f64(),
            ingest_annotations_per_s: annotations as f64 / ingest_time.as_secs_f64(),
            searchable_after_last_ack_s: searchable.as_secs_f64(),
            reused_data,
            settled_before_queries_s: settled.as_secs_f64(),
            queries: rows,
            ann_recall_at_10: recall,
            ann_recall_queries: recall_queries,
            // With a loaded phase, the peak of the idle measurements (the phase reports its own).
            peak_rss_bytes: if load_report.is_some() { idle_peak_rss_bytes } else { crate::peak_rss_bytes().unwrap_or(0) },
            disk_bytes,
            // The disk holds the loaded phase's annotations too.
            disk_bytes_per_annotation: disk_bytes as f64
                / (annotations + load_report.as_ref().map_or(0, |l| l.ingest_annotations)).max(1) as f64,
            machine: machine_description(),
            load: load_report,
        })
    })?;
    if keep_data {
        if report.load.is_none() {
            let record = IngestRecord {
                annotations: report.annotations,
                ingest_seconds: report.ingest_seconds,
                searchable_after_last_ack_s: report.searchable_after_last_ack_s,
            };
            std::fs::write(&ingest_record_path, serde_json::to_vec(&record).map_err(|e| e.to_string())?)?;
        }
        eprintln!("data kept in {}", kept_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&kept_dir);
    }
    Ok(report)
}

/// Written into a kept data dir once its ingest is complete (`--keep-data`).
const INGEST_RECORD_FILE: &str = "bench-ingest.json";

#[derive(Debug, Serialize, serde::Deserialize)]
struct IngestRecord {
    annotations: u64,
    ingest_seconds: f64,
    searchable_after_last_ack_s: f64,
}

/// Requests of a kind repeated after its measurement: its slowest few.
const SLOWEST_REPEATED: usize = 3;

/// Sends the slowest [`SLOWEST_REPEATED`] requests again (by index), returning (first, repeat) ms.
fn repeat_slowest<E>(latencies: &[f64], mut send: impl FnMut(usize) -> Result<(), E>) -> Result<Vec<(f64, f64)>, E> {
    let mut order: Vec<usize> = (0..latencies.len()).collect();
    order.sort_by(|&a, &b| latencies[b].total_cmp(&latencies[a]));
    let mut repeated = Vec::new();
    for i in order.into_iter().take(SLOWEST_REPEATED) {
        let t = Instant::now();
        send(i)?;
        repeated.push((latencies[i], t.elapsed().as_secs_f64() * 1000.0));
    }
    Ok(repeated)
}

/// CLOCK_MONOTONIC in seconds, the clock `perf record -k mono` stamps samples with.
fn monotonic_s() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

impl LatencyRow {
    fn with_diagnostics(mut self, slowest_repeated_ms: Vec<(f64, f64)>, monotonic_window_s: (f64, f64)) -> LatencyRow {
        self.slowest_repeated_ms = slowest_repeated_ms;
        self.monotonic_window_s = monotonic_window_s;
        self
    }
}

pub(crate) fn latency_row(kind: &str, mut latencies: Vec<f64>, assets: usize) -> LatencyRow {
    latencies.sort_by(f64::total_cmp);
    LatencyRow {
        kind: kind.to_string(),
        queries: latencies.len(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        mean_ms: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
        mean_assets: assets as f64 / latencies.len().max(1) as f64,
        slowest_repeated_ms: Vec::new(),
        monotonic_window_s: (0.0, 0.0),
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Recall@10 of the approximate index against exact search: the 10 nearest over all shards
/// each way (usearch exact search uses the same metric and quantization as the index).
pub fn ann_recall_at_10(node: &Node, space: &str, queries: &[Vec<f32>]) -> Result<(f64, usize), String> {
    let mut total = 0.0;
    for query in queries {
        let mut approximate: Vec<(f32, u64)> = Vec::new();
        let mut exact: Vec<(f32, u64)> = Vec::new();
        for shard in node.shards() {
            let Some(index) = shard.index.vector_space(space) else { continue };
            approximate.extend(index.search(query, 10, false, None).map_err(|e| e.to_string())?.into_iter().map(|(k, d)| (d, k)));
            exact.extend(index.search(query, 10, true, None).map_err(|e| e.to_string())?.into_iter().map(|(k, d)| (d, k)));
        }
        approximate.sort_by(|a, b| a.0.total_cmp(&b.0));
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        let truth: std::collections::HashSet<u64> = exact.iter().take(10).map(|h| h.1).collect();
        if truth.is_empty() {
            continue;
        }
        let found = approximate.iter().take(10).filter(|h| truth.contains(&h.1)).count();
        total += found as f64 / truth.len() as f64;
    }
    Ok((total / queries.len().max(1) as f64, queries.len()))
}

/// Prefix of the annotation and asset ids the loaded phase's first pass over the sample posts:
/// new assets, never in conflict with the sample's ids (pass k > 1 uses [`load_prefix`]).
const LOAD_ID_PREFIX: &str = "load-";

/// Ids prefix of pass `pass` (from 1) of the loaded phase over the sample: every pass posts new
/// assets, so ingest continues for the whole phase whatever the sample's size.
fn load_prefix(pass: u64) -> String {
    if pass <= 1 {
        LOAD_ID_PREFIX.to_string()
    } else {
        format!("load{pass}-")
    }
}
/// Most clients of one kind in the loaded phase (each is a thread).
pub const MAX_LOAD_CLIENTS: usize = 256;
/// Longest loaded phase.
pub const MAX_LOAD_SECONDS: u64 = 3600;
/// Time between keystrokes of a typing client (an editor typing a name).
const KEYSTROKE_INTERVAL: Duration = Duration::from_millis(120);
/// Search clients per typing client (at least one typing client).
const SEARCH_CLIENTS_PER_TYPIST: usize = 4;
/// Attempts per ingest batch on back-pressure, as in the idle ingest.
const LOAD_POST_ATTEMPTS: u32 = 20;
const SUGGEST_KIND: &str = "suggest (per keystroke)";

/// `rushes bench` flags of the loaded phase.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoadArgs {
    /// After the idle measurements, a loaded phase: this many search clients, each sending the
    /// query kinds in turn (one request at a time), plus one client typing suggest prefixes
    /// (a keystroke every 120 ms) per 4 of them, while ingest continues. 0: no loaded phase.
    #[arg(long, default_value_t = 0)]
    pub query_clients: usize,
    /// Clients posting new annotations during the loaded phase (the sample again, under new
    /// asset and annotation ids) [default: 2].
    #[arg(long)]
    pub ingest_clients: Option<usize>,
    /// Longest loaded phase, in seconds; it ends sooner once the ingest clients have posted the
    /// whole sample [default: 60].
    #[arg(long)]
    pub load_seconds: Option<u64>,
}

/// The loaded phase, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub query_clients: usize,
    pub ingest_clients: usize,
    pub seconds: u64,
}

impl LoadArgs {
    /// `None` without `--query-clients`; an error naming the flag when one is out of range.
    pub fn load_options(&self) -> Result<Option<LoadOptions>, String> {
        if self.query_clients == 0 {
            if self.ingest_clients.is_some() {
                return Err("--ingest-clients applies to the loaded phase: give --query-clients too (1..=256)".into());
            }
            if self.load_seconds.is_some() {
                return Err("--load-seconds applies to the loaded phase: give --query-clients too (1..=256)".into());
            }
            return Ok(None);
        }
        if self.query_clients > MAX_LOAD_CLIENTS {
            return Err(format!("--query-clients must be 0..={MAX_LOAD_CLIENTS}, not {}", self.query_clients));
        }
        let ingest_clients = self.ingest_clients.unwrap_or(2);
        if ingest_clients > MAX_LOAD_CLIENTS {
            return Err(format!("--ingest-clients must be 0..={MAX_LOAD_CLIENTS}, not {ingest_clients}"));
        }
        let seconds = self.load_seconds.unwrap_or(60);
        if seconds == 0 || seconds > MAX_LOAD_SECONDS {
            return Err(format!("--load-seconds must be 1..={MAX_LOAD_SECONDS}, not {seconds}"));
        }
        Ok(Some(LoadOptions { query_clients: self.query_clients, ingest_clients, seconds }))
    }
}

/// One query kind in the loaded phase.
#[derive(Debug, Serialize)]
pub struct LoadedRow {
    pub kind: String,
    /// Requests sent during the phase, failed ones included.
    pub requests: usize,
    /// Successful replies per second of the phase.
    pub qps: f64,
    /// Latencies of successful replies only.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Replies with a status other than 2xx.
    pub errors: usize,
    /// Requests without a usable reply (connection failed, timed out, unreadable).
    pub failures: usize,
}

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub query_clients: usize,
    /// Clients sending one suggest request per keystroke, [`KEYSTROKE_INTERVAL`] apart.
    pub typing_clients: usize,
    pub ingest_clients: usize,
    /// The phase: until the ingest clients stopped, at most `--load-seconds`.
    pub seconds: f64,
    pub max_seconds: u64,
    /// Annotations acknowledged (durable) during the phase, under new ids.
    pub ingest_annotations: u64,
    /// From the start of the phase until the last ingest reply.
    pub ingest_seconds: f64,
    pub ingest_annotations_per_s: f64,
    /// Batches that still failed after the retries of `post_ndjson_retrying`.
    pub ingest_failed_batches: u64,
    /// "--load-seconds" or "no ingest clients".
    pub ingest_stopped_by: String,
    /// Passes over the sample the ingest clients began (each under new ids).
    pub ingest_passes: u64,
    /// Until every shard had indexed what the phase acknowledged (not part of the phase).
    pub searchable_after_s: f64,
    /// Successful searches per second over all kinds but suggest.
    pub search_qps: f64,
    pub queries: Vec<LoadedRow>,
    pub first_error: Option<String>,
    /// Peak RSS at the end of the phase (the process's high-water mark).
    pub peak_rss_bytes: u64,
}

struct LoadPhase {
    base: String,
    token: String,
    annotations_path: PathBuf,
    assets_path: PathBuf,
    options: LoadOptions,
    queries: Vec<(&'static str, Vec<SearchRequest>)>,
    prefixes: Vec<String>,
}

/// Latencies of the successful replies of one kind, and its failed requests.
#[derive(Debug, Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    errors: usize,
    failures: usize,
}

impl Tally {
    fn record(&mut self, sent: Instant, result: Result<(), ClientError>, first_error: &Mutex<Option<String>>) {
        match result {
            Ok(()) => self.latencies_ms.push(sent.elapsed().as_secs_f64() * 1000.0),
            Err(error) => {
                if matches!(error, ClientError::Status { .. }) {
                    self.errors += 1;
                } else {
                    self.failures += 1;
                }
                note_error(first_error, error.to_string());
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_ms.extend(other.latencies_ms);
        self.errors += other.errors;
        self.failures += other.failures;
    }
}

fn note_error(first_error: &Mutex<Option<String>>, message: String) {
    if let Ok(mut first) = first_error.lock() {
        first.get_or_insert(message);
    }
}

/// Sets the flag when dropped: the clients stop however the phase ends (a panic included).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Blocking (run it on a blocking thread): search clients, typing clients and ingest clients on
/// threads of their own, all joined before it returns, on every path.
fn run_load_phase(phase: &LoadPhase) -> Result<LoadReport, String> {
    let options = phase.options;
    let typists = typing_clients(options.query_clients);
    let kinds = phase.queries.len();
    let stop = AtomicBool::new(false);
    let acknowledged = AtomicU64::new(0);
    let failed_batches = AtomicU64::new(0);
    let skipped_batches = AtomicU64::new(0);
    let first_error = Mutex::new(None);
    let new_client = || Client::new(&phase.base).with_token(Some(phase.token.clone()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let stop_ref = &stop;
    let running = move || !stop_ref.load(Ordering::Acquire) && Instant::now() < deadline;
    std::thread::scope(|scope| -> Result<LoadReport, String> {
        // However this body ends, the clients stop, so the scope's join ends.
        let _stop_on_drop = StopOnDrop(&stop);
        let searchers: Vec<_> = (0..options.query_clients)
            .map(|me| {
                let client = new_client();
                let (queries, first_error) = (&phase.queries, &first_error);
                scope.spawn(move || {
                    let mut tallies: Vec<Tally> = (0..kinds).map(|_| Tally::default()).collect();
                    // query_mix makes as many requests of every kind.
                    let per_kind = queries.iter().map(|(_, requests)| requests.len()).min().unwrap_or(0);
                    let mut turn = 0;
                    while running() && per_kind > 0 {
                        let (kind, index) = load_pick(me, turn, options.query_clients, kinds, per_kind);
                        let request = &queries[kind].1[index];
                        let sent = Instant::now();
                        let result = client.search(request).map(drop);
                        tallies[kind].record(sent, result, first_error);
                        turn += 1;
                    }
                    tallies
                })
            })
            .collect();
        let typing: Vec<_> = (0..typists)
            .map(|me| {
                let client = new_client();
                let (prefixes, first_error) = (&phase.prefixes, &first_error);
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    if prefixes.is_empty() {
                        return tally;
                    }
                    let mut at = typing_start(prefixes, me, typists);
                    let mut next_keystroke = Instant::now();
                    loop {
                        // Editors type: the pause is not measured, only the request. A reply
                        // slower than a keystroke delays the next one (one request at a time).
                        std::thread::sleep(next_keystroke.saturating_duration_since(Instant::now()));
                        if !running() {
                            break;
                        }
                        let sent = Instant::now();
                        let result = client.get_json(&format!("/v1/suggest?q={}", url_encode(&prefixes[at]))).map(drop);
                        tally.record(sent, result, first_error);
                        next_keystroke = sent + KEYSTROKE_INTERVAL;
                        at = (at + 1) % prefixes.len();
                    }
                    tally
                })
            })
            .collect();

        let mut phase_error: Option<String> = None;
        let mut passes = 0;
        if options.ingest_clients > 0 {
            let (batch_tx, batch_rx) = crossbeam_channel::bounded::<Vec<u8>>(options.ingest_clients * 2);
            let (path, assets_path, records_client) = (&phase.annotations_path, &phase.assets_path, new_client());
            let reader = scope.spawn(move || -> Result<u64, String> {
                // Pass 1's asset records were stored before the phase; later passes store theirs
                // as a client would, before their annotations.
                let mut pass = 1;
                loop {
                    if pass > 1 {
                        put_asset_records(&records_client, assets_path, &load_prefix(pass))?;
                    }
                    if !read_prefixed_batches(path, &load_prefix(pass), deadline, &batch_tx)? {
                        return Ok(pass);
                    }
                    pass += 1;
                }
            });
            let posters: Vec<_> = (0..options.ingest_clients)
                .map(|_| {
                    let (batches, client) = (batch_rx.clone(), new_client());
                    let (acknowledged, failed_batches, skipped_batches, first_error) =
                        (&acknowledged, &failed_batches, &skipped_batches, &first_error);
                    scope.spawn(move || {
                        for body in batches {
                            // Batches still queued at the deadline are dropped, not sent.
                            if Instant::now() >= deadline {
                                skipped_batches.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            match client.post_ndjson_retrying(&body, LOAD_POST_ATTEMPTS) {
                                Ok(reply) => {
                                    acknowledged.fetch_add(reply.accepted as u64, Ordering::Relaxed);
                                }
                                Err(error) => {
                                    failed_batches.fetch_add(1, Ordering::Relaxed);
                                    note_error(first_error, format!("ingest: {error}"));
                                }
                            }
                        }
                    })
                })
                .collect();
            // Only the posters hold the receiving end: if they all end, the reader's send fails.
            drop(batch_rx);
            match reader.join() {
                Ok(Ok(began)) => passes = began,
                Ok(Err(error)) => phase_error = Some(format!("loaded phase: reading the annotations: {error}")),
                Err(_) => phase_error = Some("loaded phase: the annotation reader panicked".into()),
            }
            for poster in posters {
                if poster.join().is_err() {
                    phase_error.get_or_insert_with(|| "loaded phase: an ingest client panicked".into());
                }
            }
        } else {
            // No ingest: concurrent queries alone, for --load-seconds.
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        }
        let ingest_elapsed = started.elapsed();
        stop.store(true, Ordering::Release);
        let seconds = ingest_elapsed.min(Duration::from_secs(options.seconds)).as_secs_f64();

        let mut tallies: Vec<Tally> = (0..kinds).map(|_| Tally::default()).collect();
        for searcher in searchers {
            match searcher.join() {
                Ok(mine) => tallies.iter_mut().zip(mine).for_each(|(all, mine)| all.merge(mine)),
                Err(_) => {
                    phase_error.get_or_insert_with(|| "loaded phase: a search client panicked".into());
                }
            }
        }
        let mut suggest = Tally::default();
        for typist in typing {
            match typist.join() {
                Ok(mine) => suggest.merge(mine),
                Err(_) => {
                    phase_error.get_or_insert_with(|| "loaded phase: a typing client panicked".into());
                }
            }
        }
        if let Some(error) = phase_error {
            return Err(error);
        }

        let mut rows = vec![loaded_row(SUGGEST_KIND, suggest, seconds)];
        rows.extend(phase.queries.iter().zip(tallies).map(|((kind, _), tally)| loaded_row(kind, tally, seconds)));
        let ingest_annotations = acknowledged.load(Ordering::Relaxed);
        let ingest_seconds = if options.ingest_clients > 0 { ingest_elapsed.as_secs_f64() } else { 0.0 };
        Ok(LoadReport {
            query_clients: options.query_clients,
            typing_clients: typists,
            ingest_clients: options.ingest_clients,
            seconds,
            max_seconds: options.seconds,
            ingest_annotations,
            ingest_seconds,
            ingest_annotations_per_s: if ingest_seconds > 0.0 { ingest_annotations as f64 / ingest_seconds } else { 0.0 },
            ingest_failed_batches: failed_batches.load(Ordering::Relaxed),
            ingest_stopped_by: if options.ingest_clients == 0 { "no ingest clients" } else { "--load-seconds" }.to_string(),
            ingest_passes: passes,
            searchable_after_s: 0.0,
            search_qps: rows.iter().filter(|r| r.kind != SUGGEST_KIND).map(|r| r.qps).sum(),
            queries: rows,
            first_error: first_error.lock().ok().and_then(|mut e| e.take()),
            peak_rss_bytes: 0,
        })
    })
}

/// Typing clients for `search_clients`: one per [`SEARCH_CLIENTS_PER_TYPIST`], at least one.
fn typing_clients(search_clients: usize) -> usize {
    if search_clients == 0 {
        0
    } else {
        search_clients.div_ceil(SEARCH_CLIENTS_PER_TYPIST)
    }
}

/// Where typing client `me` of `typists` starts in the keystroke prefixes: its share of them,
/// moved on to the first keystroke of a word.
fn typing_start(prefixes: &[String], me: usize, typists: usize) -> usize {
    let from = me * prefixes.len() / typists.max(1);
    (from..prefixes.len()).find(|&i| prefixes[i].chars().count() == 1).unwrap_or(0)
}

/// The query search client `me` of `clients` sends on its `turn`: the kinds in turn from an
/// offset of its own, and within a kind, the requests in turn, spread over the clients.
fn load_pick(me: usize, turn: usize, clients: usize, kinds: usize, per_kind: usize) -> (usize, usize) {
    let kind = (me + turn) % kinds.max(1);
    let request = ((turn / kinds.max(1)) * clients + me) % per_kind.max(1);
    (kind, request)
}

fn loaded_row(kind: &str, mut tally: Tally, seconds: f64) -> LoadedRow {
    tally.latencies_ms.sort_by(f64::total_cmp);
    let ok = tally.latencies_ms.len();
    LoadedRow {
        kind: kind.to_string(),
        requests: ok + tally.errors + tally.failures,
        qps: if seconds > 0.0 { ok as f64 / seconds } else { 0.0 },
        p50_ms: percentile(&tally.latencies_ms, 50.0),
        p99_ms: percentile(&tally.latencies_ms, 99.0),
        mean_ms: tally.latencies_ms.iter().sum::<f64>() / ok.max(1) as f64,
        errors: tally.errors,
        failures: tally.failures,
    }
}

/// Sends the sample's annotations in batches of [`LOAD_BATCH_LINES`], each line under new ids,
/// until the file ends (`Ok(true)`), the deadline passes or the posters are gone (`Ok(false)`).
fn read_prefixed_batches(
    path: &Path,
    prefix: &str,
    deadline: Instant,
    batches: &crossbeam_channel::Sender<Vec<u8>>,
) -> Result<bool, String> {
    let mut reader = BufReader::new(std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
    let mut line = String::new();
    loop {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        let mut batch = Vec::with_capacity(LOAD_BATCH_LINES * 300);
        let mut lines = 0;
        let mut end_of_file = false;
        while lines < LOAD_BATCH_LINES {
            line.clear();
            if reader.read_line(&mut line).map_err(|e| format!("{}: {e}", path.display()))? == 0 {
                end_of_file = true;
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            batch.extend_from_slice(prefixed_annotation_line(&line, prefix)?.as_bytes());
            batch.push(b'\n');
            lines += 1;
        }
        if lines > 0 && batches.send(batch).is_err() {
            return Ok(false);
        }
        if end_of_file {
            return Ok(true);
        }
    }
}

/// An NDJSON annotation line with `prefix` before its `id` and `asset_id`: a new annotation of
/// a new asset. The other fields keep their exact text (the keys come out sorted).
fn prefixed_annotation_line(line: &str, prefix: &str) -> Result<String, String> {
    let mut fields: BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(line.trim()).map_err(|e| format!("annotation line: {e}"))?;
    for key in ["id", "asset_id"] {
        let value = fields.get(key).ok_or_else(|| format!("annotation line without {key}"))?;
        let text: String = serde_json::from_str(value.get()).map_err(|_| format!("annotation line whose {key} is not a string"))?;
        let prefixed = serde_json::value::to_raw_value(&format!("{prefix}{text}")).map_err(|e| e.to_string())?;
        fields.insert(key.to_string(), prefixed);
    }
    serde_json::to_string(&fields).map_err(|e| e.to_string())
}

/// An assets.ndjson line as `PUT /v1/assets/{asset_id}` takes it: `prefix` + its asset id, and
/// the record without the id.
fn prefixed_asset_line(line: &str, prefix: &str) -> Result<(String, Vec<u8>), String> {
    let mut value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("asset line: {e}"))?;
    let asset_id = match value.as_object_mut().and_then(|o| o.remove("asset_id")) {
        Some(serde_json::Value::String(id)) => format!("{prefix}{id}"),
        _ => return Err("asset line without asset_id".into()),
    };
    Ok((asset_id, serde_json::to_vec(&value).map_err(|e| e.to_string())?))
}

/// PUTs every asset record of an assets.ndjson file under `prefix` + its id (blocking).
fn put_asset_records(client: &Client, path: &Path, prefix: &str) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let (asset_id, body) = prefixed_asset_line(&line, prefix)?;
        client.send("PUT", &format!("/v1/assets/{asset_id}"), "application/json", &body).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Keystroke prefixes of cast names and dialogue words ("J", "Jo", "Joe", ..., "we were o").
fn suggest_prefixes(season: &rushes_sample::Season, truths: &[EpisodeTruth], count: usize, seed: u64) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5u64);
    let lines: Vec<&str> = truths.iter().flat_map(|t| t.dialogue.iter().map(|l| l.text.as_str())).collect();
    let mut out = Vec::new();
    while out.len() < count {
        let source = if rng.gen_bool(0.5) || lines.is_empty() {
            season.cast[rng.gen_range(0..season.cast.len())].name.clone()
        } else {
            lines[rng.gen_range(0..lines.len())].split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        };
        let chars: Vec<char> = source.chars().collect();
        for end in 1..=chars.len() {
            out.push(chars[..end].iter().collect());
        }
    }
    out.truncate(count.max(1) * 4);
    out
}

pub fn load_truths(sample: &std::path::Path) -> Result<Vec<EpisodeTruth>, DemoError> {
    let mut truths = Vec::new();
    for line in BufReader::new(std::fs::File::open(sample.join("truth.ndjson"))?).lines() {
        truths.push(serde_json::from_str(&line?)?);
    }
    Ok(truths)
}

pub(crate) fn query_mix(
    season: &rushes_sample::Season,
    truths: &[EpisodeTruth],
    per_kind: usize,
    seed: u64,
) -> Vec<(&'static str, Vec<SearchRequest>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xbe7c);
    let names: Vec<String> = season.cast.iter().map(|c| c.name.clone()).collect();
    let places: Vec<String> = season.locations.iter().map(|l| l.name.clone()).collect();
    let lines: Vec<&str> = truths.iter().flat_map(|t| t.dialogue.iter().map(|l| l.text.as_str())).collect();
    let dims = season.config.vector_dimensions;
    let vector_for = |rng: &mut rand_chacha::ChaCha8Rng, place: &str| -> Vec<f64> {
        rushes_sample::location_centroid(season.config.seed, place, dims)
            .into_iter()
            .map(|x| f64::from(x) + rng.gen_range(-0.01..0.01))
            .collect()
    };
    let mut label = Vec::new();
    let mut label_and_scene = Vec::new();
    let mut phrase = Vec::new();
    let mut vector = Vec::new();
    let mut mixed = Vec::new();
    let mut hybrid = Vec::new();
    let mut hybrid_rrf = Vec::new();
    let mut fuzzy = Vec::new();
    let mut phrase_slop = Vec::new();
    let mut filtered_vector = Vec::new();
    let meanings = ["somewhere they cook", "cafe", "sofa", "street outside", "bedroom", "office desk"];
    let asset_ids: Vec<&str> = truths.iter().map(|t| t.asset_id.as_str()).collect();
    for _ in 0..per_kind {
        let name = &names[rng.gen_range(0..names.len())];
        let place = &places[rng.gen_range(0..places.len())];
        label.push(SearchRequest { q: Some(name.clone()), ..Default::default() });
        label_and_scene.push(SearchRequest { q: Some(format!("{name} in the {place}")), ..Default::default() });
        let line = lines.get(rng.gen_range(0..lines.len().max(1))).copied().unwrap_or("we were on a break");
        let words: Vec<&str> = line.split_whitespace().collect();
        let take = words.len().min(4);
        let start = rng.gen_range(0..=words.len() - take);
        phrase.push(SearchRequest {
            clauses: Some(vec![Clause::Phrase { text: words[start..start + take].join(" "), slop: None, language: None, weight: None }]),
            ..Default::default()
        });
        vector.push(SearchRequest { clauses: Some(vec![vector_clause(vector_for(&mut rng, place), 100)]), ..Default::default() });
        mixed.push(SearchRequest {
            clauses: Some(vec![
                Clause::Label { label: name.clone(), track: Some("character".into()), min_confidence: None, weight: None },
                vector_clause(vector_for(&mut rng, place), 200),
            ]),
            mode: Some(SearchMode::Intersection),
            ..Default::default()
        });
        let meaning = meanings[rng.gen_range(0..meanings.len())];
        hybrid.push(SearchRequest { q: Some(format!("{name} {meaning}")), ..Default::default() });
        let some_words = words.iter().take(3).copied().collect::<Vec<_>>().join(" ");
        hybrid_rrf.push(SearchRequest {
            clauses: Some(vec![Clause::Any {
                clauses: vec![
                    Clause::Dialogue { text: some_words.clone(), operator: None, fuzziness: None, language: None, weight: None },
                    vector_clause(vector_for(&mut rng, place), 200),
                ],
            }]),
            fusion: Some(rushes_protocol::FusionOptions { method: Some(rushes_protocol::FusionMethod::Rrf), ..Default::default() }),
            ..Default::default()
        });
        // One typo per word of three words of a real line.
        let typo: Vec<String> = words
            .iter()
            .take(3)
            .map(|w| {
                let mut chars: Vec<char> = w.chars().collect();
                if chars.len() > 3 {
                    let i = rng.gen_range(1..chars.len());
                    chars.remove(i);
                }
                chars.into_iter().collect()
            })
            .collect();
        fuzzy.push(SearchRequest {
            clauses: Some(vec![Clause::Dialogue { text: typo.join(" "), operator: None, fuzziness: None, language: None, weight: None }]),
            ..Default::default()
        });
        // Every other word of a line, with slop 2.
        let skipping: Vec<&str> = words.iter().step_by(2).take(3).copied().collect();
        phrase_slop.push(SearchRequest {
            clauses: Some(vec![Clause::Phrase { text: skipping.join(" "), slop: Some(2), language: None, weight: None }]),
            ..Default::default()
        });
        let asset = asset_ids[rng.gen_range(0..asset_ids.len().max(1)).min(asset_ids.len().saturating_sub(1))];
        filtered_vector.push(SearchRequest {
            clauses: Some(vec![vector_clause(vector_for(&mut rng, place), 20)]),
            filters: Some(rushes_protocol::Filters { asset_ids: Some(vec![asset.to_string()]), ..Default::default() }),
            ..Default::default()
        });
    }
    vec![
        ("label", label),
        ("hybrid (q: name + meaning, weighted)", hybrid),
        ("hybrid (dialogue | vector, rrf)", hybrid_rrf),
        ("fuzzy dialogue", fuzzy),
        ("phrase with slop 2", phrase_slop),
        ("filtered vector (one asset)", filtered_vector),
        ("label + scene (q)", label_and_scene),
        ("dialogue phrase", phrase),
        ("vector", vector),
        ("mixed label + vector", mixed),
    ]
}

/// Blocks until the processes have used under [`SETTLED_CPU_SHARE`] of a core for
/// [`SETTLE_QUIET_WINDOWS`] windows in a row (at most [`SETTLE_MAX`]); returns the wait.
pub(crate) fn wait_until_settled(pids: &[u32]) -> Duration {
    let started = Instant::now();
    let mut quiet_windows = 0;
    while quiet_windows < SETTLE_QUIET_WINDOWS && started.elapsed() < SETTLE_MAX {
        let before = cpu_seconds(pids);
        std::thread::sleep(SETTLE_WINDOW);
        quiet_windows = if is_settled(before, cpu_seconds(pids), SETTLE_WINDOW) { quiet_windows + 1 } else { 0 };
    }
    started.elapsed()
}

/// CPU seconds (user + system) the processes have used so far, from `/proc/<pid>/stat`;
/// `None` when one cannot be read (not Linux, or the process is gone).
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        return None;
    }
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start at field 3 (state):
        // utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        ticks += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(ticks as f64 / ticks_per_second as f64)
}

/// Quiet: the servers used under this share of one core over a settle window.
const SETTLED_CPU_SHARE: f64 = 0.1;
const SETTLE_WINDOW: Duration = Duration::from_millis(500);
/// Consecutive quiet windows that make the servers settled: 3 s, longer than the 2 s after
/// which a node starts warming suggest moments for the settled data (which must finish too).
const SETTLE_QUIET_WINDOWS: u32 = 6;
/// Longest wait for background work (Tantivy merges, sled flushes) to finish before queries.
const SETTLE_MAX: Duration = Duration::from_secs(120);

/// Whether the processes used less than [`SETTLED_CPU_SHARE`] of a core between two readings.
fn is_settled(before: Option<f64>, after: Option<f64>, window: Duration) -> bool {
    match (before, after) {
        (Some(before), Some(after)) => (after - before) / window.as_secs_f64() < SETTLED_CPU_SHARE,
        // Without /proc there is nothing to wait for.
        _ => true,
    }
}

pub fn print_report(report: &BenchReport) {
    println!("## Rushes bench: {} hours, {} annotations, {} shards", report.hours, report.annotations, report.shards);
    println!("machine: {}\n", report.machine);
    println!("| metric | value |\n|---|---|");
    let reused = if report.reused_data { ", by the run that made the kept data dir" } else { "" };
    println!(
        "| ingest (acknowledged, durable) | {:.0} annotations/s ({:.1} s{reused}) |",
        report.ingest_annotations_per_s, report.ingest_seconds
    );
    println!("| searchable after last ack | {:.1} s |", report.searchable_after_last_ack_s);
    println!("| settled (CPU < 10% of a core for 3 s) before queries | {:.1} s later |", report.settled_before_queries_s);
    println!("| ANN recall@10 vs exact | {:.3} ({} queries) |", report.ann_recall_at_10, report.ann_recall_queries);
    println!("| peak RSS | {:.0} MiB |", report.peak_rss_bytes as f64 / 1048576.0);
    println!("| disk | {:.0} MiB ({:.0} bytes/annotation) |", report.disk_bytes as f64 / 1048576.0, report.disk_bytes_per_annotation);
    println!("\n| query | n | p50 ms | p99 ms | mean ms | assets/query | slowest 3, then sent again, ms |\n|---|---|---|---|---|---|---|");
    for row in &report.queries {
        let slowest: Vec<String> = row.slowest_repeated_ms.iter().map(|(first, again)| format!("{first:.0} → {again:.0}")).collect();
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            row.kind,
            row.queries,
            row.p50_ms,
            row.p99_ms,
            row.mean_ms,
            row.mean_assets,
            slowest.join(", ")
        );
    }
    eprintln!("CLOCK_MONOTONIC window per kind (for perf report --time):");
    for row in &report.queries {
        eprintln!("  {:.3},{:.3}  {}", row.monotonic_window_s.0, row.monotonic_window_s.1, row.kind);
    }
    if let Some(load) = &report.load {
        print_load_report(report, load);
    }
}

/// The loaded phase, each kind next to its idle latencies.
fn print_load_report(report: &BenchReport, load: &LoadReport) {
    println!(
        "\n### Under load: {} search clients, {} typing (a keystroke every {} ms), {} ingest clients, {:.1} s (at most {} s)",
        load.query_clients,
        load.typing_clients,
        KEYSTROKE_INTERVAL.as_millis(),
        load.ingest_clients,
        load.seconds,
        load.max_seconds
    );
    println!("\n| metric | value |\n|---|---|");
    if load.ingest_clients == 0 {
        println!("| ingest under load | none (--ingest-clients 0) |");
    } else {
        println!(
            "| ingest under load (acknowledged, durable) | {:.0} annotations/s ({} in {:.1} s, {} pass(es) over the sample under new \
             ids, until {}; {} batches failed) |",
            load.ingest_annotations_per_s,
            load.ingest_annotations,
            load.ingest_seconds,
            load.ingest_passes,
            load.ingest_stopped_by,
            load.ingest_failed_batches
        );
        println!("| searchable after the phase | {:.1} s |", load.searchable_after_s);
    }
    println!("| searches under load (all kinds but suggest) | {:.1} QPS |", load.search_qps);
    println!("| peak RSS at the end of the phase | {:.0} MiB |", load.peak_rss_bytes as f64 / 1048576.0);
    if load.ingest_annotations > 0 {
        println!("| disk above includes the phase's annotations | {} more |", load.ingest_annotations);
    }
    println!("\n| query | idle p50 / p99 ms | loaded n | loaded QPS | loaded p50 / p99 ms | errors |\n|---|---|---|---|---|---|");
    for row in &load.queries {
        let idle = report
            .queries
            .iter()
            .find(|idle| idle.kind == row.kind)
            .map_or_else(|| "-".to_string(), |idle| format!("{:.1} / {:.1}", idle.p50_ms, idle.p99_ms));
        let errors = if row.failures == 0 { row.errors.to_string() } else { format!("{} (+{} without reply)", row.errors, row.failures) };
        println!("| {} | {} | {} | {:.1} | {:.1} / {:.1} | {} |", row.kind, idle, row.requests, row.qps, row.p50_ms, row.p99_ms, errors);
    }
    if let Some(error) = &load.first_error {
        println!("\nfirst error under load: {error}");
    }
}

/// A scene vector clause with the server's defaults for everything else.
pub fn vector_clause(vector: Vec<f64>, k: usize) -> Clause {
    Clause::Vector {
        space: "scene".into(),
        vector: Some(vector),
        text: None,
        k: Some(k),
        min_similarity: None,
        exact: None,
        ef: None,
        metric: None,
        weight: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_annotation_line_gets_new_ids_and_keeps_every_other_field_exactly() {
        let line = r#"{"id":"s01e01-000007","asset_id":"s01e01","model":"faces","model_version":"1","track":"character","start_ms":0,"end_ms":1200,"confidence":0.9,"label":"Joey \"J\"","vector_space":"scene","vector":[0.1,-2.5e-7,1.0]}"#;
        let rewritten = prefixed_annotation_line(&format!("{line}\n"), "load-").unwrap();
        let value: serde_json::Value = serde_json::from_str(&rewritten).unwrap();
        let original: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["id"], "load-s01e01-000007");
        assert_eq!(value["asset_id"], "load-s01e01");
        for (key, field) in original.as_object().unwrap() {
            if key != "id" && key != "asset_id" {
                assert_eq!(&value[key], field, "{key}");
            }
        }
        // The vector's text is carried over as written (no float round trip).
        assert!(rewritten.contains(r#""vector":[0.1,-2.5e-7,1.0]"#), "{rewritten}");
        assert!(!rewritten.contains('\n'));
        // What the node parses: a valid annotation under the new ids.
        let annotation: rushes_protocol::Annotation = serde_json::from_str(&rewritten).unwrap();
        assert_eq!(annotation.asset_id, "load-s01e01");
    }

    #[test]
    fn annotation_lines_without_string_ids_are_refused() {
        assert!(prefixed_annotation_line(r#"{"asset_id":"a"}"#, "load-").unwrap_err().contains("without id"));
        assert!(prefixed_annotation_line(r#"{"id":"x","asset_id":7}"#, "load-").unwrap_err().contains("asset_id is not a string"));
        assert!(prefixed_annotation_line("not json", "load-").is_err());
    }

    #[test]
    fn an_asset_line_becomes_a_prefixed_id_and_the_record_without_it() {
        let (id, body) = prefixed_asset_line(r#"{"asset_id":"s01e02","title":"Two","series":"central-perk","season":1}"#, "load-").unwrap();
        assert_eq!(id, "load-s01e02");
        let record: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(record, serde_json::json!({"title": "Two", "series": "central-perk", "season": 1}));
        // The idle ingest uses no prefix.
        assert_eq!(prefixed_asset_line(r#"{"asset_id":"s01e02"}"#, "").unwrap().0, "s01e02");
        assert!(prefixed_asset_line(r#"{"title":"Two"}"#, "load-").is_err());
    }

    #[test]
    fn load_flags_are_validated_with_the_flag_named() {
        let args = |query_clients, ingest_clients, load_seconds| LoadArgs { query_clients, ingest_clients, load_seconds };
        assert_eq!(args(0, None, None).load_options(), Ok(None));
        assert_eq!(args(4, None, None).load_options(), Ok(Some(LoadOptions { query_clients: 4, ingest_clients: 2, seconds: 60 })));
        assert_eq!(args(4, Some(0), Some(20)).load_options(), Ok(Some(LoadOptions { query_clients: 4, ingest_clients: 0, seconds: 20 })));
        assert!(args(257, None, None).load_options().unwrap_err().contains("--query-clients"));
        assert!(args(4, Some(1000), None).load_options().unwrap_err().contains("--ingest-clients"));
        assert!(args(4, None, Some(0)).load_options().unwrap_err().contains("--load-seconds"));
        assert!(args(4, None, Some(3601)).load_options().unwrap_err().contains("--load-seconds"));
        assert!(args(0, Some(2), None).load_options().unwrap_err().contains("--ingest-clients"));
        assert!(args(0, None, Some(20)).load_options().unwrap_err().contains("--load-seconds"));
    }

    #[test]
    fn one_typing_client_per_four_search_clients_at_least_one() {
        assert_eq!(typing_clients(0), 0);
        assert_eq!(typing_clients(1), 1);
        assert_eq!(typing_clients(4), 1);
        assert_eq!(typing_clients(5), 2);
        assert_eq!(typing_clients(256), 64);
    }

    #[test]
    fn typing_clients_start_on_a_first_keystroke_of_their_share() {
        let prefixes: Vec<String> = ["J", "Jo", "Joe", "M", "Mo", "R", "Ro", "Ros"].iter().map(|p| p.to_string()).collect();
        assert_eq!(typing_start(&prefixes, 0, 2), 0);
        assert_eq!(typing_start(&prefixes, 1, 2), 5);
        assert_eq!(typing_start(&prefixes, 2, 3), 5);
        // Past the last word's start: from the beginning.
        let tail: Vec<String> = ["J", "Jo", "Joe"].iter().map(|p| p.to_string()).collect();
        assert_eq!(typing_start(&tail, 1, 2), 0);
        assert_eq!(typing_start(&[], 0, 1), 0);
    }

    #[test]
    fn search_clients_take_the_kinds_in_turn_from_their_own_offset_and_different_requests() {
        let (clients, kinds, per_kind) = (3, 10, 200);
        for me in 0..clients {
            let first_cycle: Vec<usize> = (0..kinds).map(|turn| load_pick(me, turn, clients, kinds, per_kind).0).collect();
            let mut sorted = first_cycle.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..kinds).collect::<Vec<_>>(), "every kind once per cycle");
            assert_eq!(first_cycle[0], me, "a start offset of its own");
        }
        // Within a kind, no two clients send the same request until the requests run out.
        let mut seen = std::collections::HashSet::new();
        for me in 0..clients {
            for turn in 0..kinds * 20 {
                let (kind, request) = load_pick(me, turn, clients, kinds, per_kind);
                if kind == 0 {
                    assert!(seen.insert(request), "client {me} turn {turn} repeats request {request}");
                }
            }
        }
        assert!(load_pick(2, 1_000_000, clients, kinds, per_kind).1 < per_kind);
    }

    #[test]
    fn loaded_rows_keep_failed_requests_out_of_the_latencies() {
        let tally = Tally { latencies_ms: vec![30.0, 10.0, 20.0], errors: 2, failures: 1 };
        let row = loaded_row("label", tally, 2.0);
        assert_eq!(row.requests, 6);
        assert_eq!(row.qps, 1.5);
        assert_eq!(row.p50_ms, 20.0);
        assert_eq!(row.p99_ms, 30.0);
        assert_eq!((row.errors, row.failures), (2, 1));
        assert_eq!(loaded_row("label", Tally::default(), 0.0).qps, 0.0);
    }

    #[test]
    fn a_tally_counts_non_2xx_replies_apart_from_requests_without_reply() {
        let first_error = Mutex::new(None);
        let mut tally = Tally::default();
        tally.record(Instant::now(), Ok(()), &first_error);
        let status = ClientError::Status { url: "u".into(), status: 503, body: "busy".into(), retry_after_s: None };
        tally.record(Instant::now(), Err(status), &first_error);
        tally.record(Instant::now(), Err(ClientError::Transport { url: "u".into(), message: "refused".into() }), &first_error);
        assert_eq!((tally.latencies_ms.len(), tally.errors, tally.failures), (1, 1, 1));
        assert!(first_error.lock().unwrap().as_deref().unwrap().starts_with("503"));
    }
}
