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

use crate::client::Client;
use crate::demo::{ensure_sample, sample_dir, wait_caught_up, DemoError, LOAD_BATCH_LINES};
use crate::engine::Engine;
use crate::gen::{self, EpisodeTruth, GenConfig};

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
    pub queries: Vec<LatencyRow>,
    pub peak_rss_bytes: u64,
    pub disk_bytes: u64,
    pub disk_bytes_per_annotation: f64,
    pub machine: String,
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_ms.len() - 1) as f64).round() as usize;
    sorted_ms[rank.min(sorted_ms.len() - 1)]
}

fn machine_description() -> String {
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
    let mut config = options.config;
    config.node.data_dir = node_dir.clone();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let system = actix_web::rt::System::new();
    let report = system.block_on(async move {
        let engine = Engine::open(config)?;
        let server = crate::http::server(engine.clone(), listener)?;
        let handle = server.handle();
        let server_task = actix_web::rt::spawn(server);

        // Assets first (through HTTP, like a client).
        let client = Client::new(&base);
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
            let client = Client::new(&base);
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
        let searchable = wait_caught_up(&engine, Duration::from_secs(3600)).await?;

        // Queries of each kind, over HTTP.
        let truths = load_truths(&sample)?;
        let season = gen::plan_season(&gen_config);
        let queries = query_mix(&season, &truths, options.queries_per_kind, options.seed);
        let mut rows = Vec::new();
        for (kind, requests) in queries {
            let client = Client::new(&base);
            let row = tokio::task::spawn_blocking(move || -> Result<LatencyRow, String> {
                let mut latencies = Vec::with_capacity(requests.len());
                let mut assets = 0usize;
                for request in &requests {
                    let t = Instant::now();
                    let response = client.search(request).map_err(|e| e.to_string())?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    assets += response.assets.len();
                }
                latencies.sort_by(f64::total_cmp);
                Ok(LatencyRow {
                    kind: kind.to_string(),
                    queries: latencies.len(),
                    p50_ms: percentile(&latencies, 50.0),
                    p99_ms: percentile(&latencies, 99.0),
                    mean_ms: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
                    mean_assets: assets as f64 / latencies.len().max(1) as f64,
                })
            })
            .await??;
            rows.push(row);
        }
        let shards = engine.shards.len() as u32;
        handle.stop(true).await;
        let _ = server_task.await;
        let engine_for_shutdown = engine.clone();
        tokio::task::spawn_blocking(move || engine_for_shutdown.shutdown()).await?;
        let disk_bytes = crate::dir_size_bytes(&node_dir);
        Ok::<BenchReport, DemoError>(BenchReport {
            hours: gen_config.hours,
            annotations,
            shards,
            ingest_seconds: ingest_time.as_secs_f64(),
            ingest_annotations_per_s: annotations as f64 / ingest_time.as_secs_f64(),
            searchable_after_last_ack_s: searchable.as_secs_f64(),
            queries: rows,
            peak_rss_bytes: crate::peak_rss_bytes().unwrap_or(0),
            disk_bytes,
            disk_bytes_per_annotation: disk_bytes as f64 / annotations.max(1) as f64,
            machine: machine_description(),
        })
    })?;
    let _ = std::fs::remove_dir_all(options.work_dir.join(format!("bench-node-{}", std::process::id())));
    Ok(report)
}

pub fn load_truths(sample: &std::path::Path) -> Result<Vec<EpisodeTruth>, DemoError> {
    let mut truths = Vec::new();
    for line in BufReader::new(std::fs::File::open(sample.join("truth.ndjson"))?).lines() {
        truths.push(serde_json::from_str(&line?)?);
    }
    Ok(truths)
}

fn query_mix(season: &gen::Season, truths: &[EpisodeTruth], per_kind: usize, seed: u64) -> Vec<(&'static str, Vec<SearchRequest>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xbe7c);
    let names: Vec<String> = season.cast.iter().map(|c| c.name.clone()).collect();
    let places: Vec<String> = season.locations.iter().map(|l| l.name.clone()).collect();
    let lines: Vec<&str> = truths.iter().flat_map(|t| t.dialogue.iter().map(|l| l.text.as_str())).collect();
    let dims = season.config.vector_dimensions;
    let vector_for = |rng: &mut rand_chacha::ChaCha8Rng, place: &str| -> Vec<f64> {
        gen::location_centroid(season.config.seed, place, dims).into_iter().map(|x| f64::from(x) + rng.gen_range(-0.01..0.01)).collect()
    };
    let mut label = Vec::new();
    let mut label_and_scene = Vec::new();
    let mut phrase = Vec::new();
    let mut vector = Vec::new();
    let mut mixed = Vec::new();
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
            clauses: Some(vec![Clause::Phrase { text: words[start..start + take].join(" "), slop: None }]),
            ..Default::default()
        });
        vector.push(SearchRequest {
            clauses: Some(vec![Clause::Vector {
                space: "scene".into(),
                vector: vector_for(&mut rng, place),
                k: Some(100),
                min_similarity: None,
            }]),
            ..Default::default()
        });
        mixed.push(SearchRequest {
            clauses: Some(vec![
                Clause::Label { label: name.clone(), track: Some("character".into()), min_confidence: None },
                Clause::Vector { space: "scene".into(), vector: vector_for(&mut rng, place), k: Some(200), min_similarity: None },
            ]),
            mode: Some(SearchMode::Intersection),
            ..Default::default()
        });
    }
    vec![
        ("label", label),
        ("label + scene (q)", label_and_scene),
        ("dialogue phrase", phrase),
        ("vector", vector),
        ("mixed label + vector", mixed),
    ]
}

pub fn print_report(report: &BenchReport) {
    println!("## Rushes bench: {} hours, {} annotations, {} shards", report.hours, report.annotations, report.shards);
    println!("machine: {}\n", report.machine);
    println!("| metric | value |\n|---|---|");
    println!("| ingest (acknowledged, durable) | {:.0} annotations/s ({:.1} s) |", report.ingest_annotations_per_s, report.ingest_seconds);
    println!("| searchable after last ack | {:.1} s |", report.searchable_after_last_ack_s);
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
