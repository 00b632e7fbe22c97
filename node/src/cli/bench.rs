//! `rushes bench`: ingest a generated corpus over HTTP on loopback, measure acknowledged
//! throughput, time until searchable, query latency per query type, peak memory and disk.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rushes_config::Config;
use rushes_protocol::{Clause, SearchMode, SearchRequest};
use serde::Serialize;

use crate::cli::demo::{ensure_sample, sample_dir, wait_caught_up, DemoError, LOAD_BATCH_LINES};
use crate::node::Node;
use rushes_client::Client;
use rushes_sample::{EpisodeTruth, GenConfig};

pub struct BenchOptions {
    pub hours: f64,
    pub seed: u64,
    pub work_dir: PathBuf,
    pub clients: usize,
    pub queries_per_kind: usize,
    pub config: Config,
}

#[derive(Debug, Serialize)]
pub struct LatencyRow {
    pub kind: String,
    pub queries: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub mean_assets: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub hours: f64,
    pub annotations: u64,
    pub shards: u32,
    pub ingest_seconds: f64,
    pub ingest_annotations_per_s: f64,
    pub searchable_after_last_ack_s: f64,
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
    let node_dir = options.work_dir.join(format!("bench-node-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&node_dir);
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

        // Assets first (through HTTP, like a client).
        let client = Client::new(&base).with_token(Some(token.clone()));
        for line in BufReader::new(std::fs::File::open(sample.join("assets.ndjson"))?).lines() {
            let mut value: serde_json::Value = serde_json::from_str(&line?)?;
            let asset_id = value["asset_id"].as_str().ok_or("asset line without asset_id")?.to_string();
            if let Some(o) = value.as_object_mut() {
                o.remove("asset_id");
            }
            let body = serde_json::to_vec(&value)?;
            let client = client.clone();
            tokio::task::spawn_blocking(move || client.send("PUT", &format!("/v1/assets/{asset_id}"), "application/json", &body)).await??;
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
        let lines_total = tokio::task::spawn_blocking(move || reader_thread.join()).await?.map_err(|_| "reader panicked")??;
        for worker in workers {
            tokio::task::spawn_blocking(move || worker.join()).await?.map_err(|_| "ingest worker panicked")??;
        }
        let ingest_time = started.elapsed();
        let annotations = acknowledged.load(Ordering::Relaxed);
        if annotations != lines_total {
            return Err(format!("acknowledged {annotations} of {lines_total} annotations").into());
        }
        let searchable = wait_caught_up(&node, Duration::from_secs(3600)).await?;
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
                let mut latencies = Vec::with_capacity(prefixes.len());
                let mut moments = 0usize;
                for prefix in &prefixes {
                    let t = Instant::now();
                    let reply = client.get_json(&format!("/v1/suggest?q={}", url_encode(prefix))).map_err(|e| e.to_string())?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    moments += reply["moments"].as_array().map_or(0, Vec::len);
                }
                Ok(latency_row("suggest (per keystroke)", latencies, moments))
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
                let mut latencies = Vec::with_capacity(requests.len());
                let mut assets = 0usize;
                for request in &requests {
                    let t = Instant::now();
                    let response = client.search(request).map_err(|e| e.to_string())?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    assets += response.assets.len();
                }
                Ok(latency_row(kind, latencies, assets))
            })
            .await??;
            rows.push(row);
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
            settled_before_queries_s: settled.as_secs_f64(),
            queries: rows,
            ann_recall_at_10: recall,
            ann_recall_queries: recall_queries,
            peak_rss_bytes: crate::peak_rss_bytes().unwrap_or(0),
            disk_bytes,
            disk_bytes_per_annotation: disk_bytes as f64 / annotations.max(1) as f64,
            machine: machine_description(),
        })
    })?;
    let _ = std::fs::remove_dir_all(options.work_dir.join(format!("bench-node-{}", std::process::id())));
    Ok(report)
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
    println!("| ingest (acknowledged, durable) | {:.0} annotations/s ({:.1} s) |", report.ingest_annotations_per_s, report.ingest_seconds);
    println!("| searchable after last ack | {:.1} s |", report.searchable_after_last_ack_s);
    println!("| settled (CPU < 10% of a core for 3 s) before queries | {:.1} s later |", report.settled_before_queries_s);
    println!("| ANN recall@10 vs exact | {:.3} ({} queries) |", report.ann_recall_at_10, report.ann_recall_queries);
    println!("| peak RSS | {:.0} MiB |", report.peak_rss_bytes as f64 / 1048576.0);
    println!("| disk | {:.0} MiB ({:.0} bytes/annotation) |", report.disk_bytes as f64 / 1048576.0, report.disk_bytes_per_annotation);
    println!("\n| query | n | p50 ms | p99 ms | mean ms | assets/query |\n|---|---|---|---|---|---|");
    for row in &report.queries {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            row.kind, row.queries, row.p50_ms, row.p99_ms, row.mean_ms, row.mean_assets
        );
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
