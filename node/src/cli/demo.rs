//! `rushes demo`: one node on an embedded data dir, a generated sample season ingested through
//! the real ingest path, example queries printed, serving until Ctrl-C.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rushes_config::Config;
use rushes_protocol::validate::{parse_batch, BodyFormat};
use rushes_protocol::AssetRecord;

use crate::node::Node;
use rushes_sample::GenConfig;

pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// Lines of NDJSON per ingest request when loading a sample.
pub const LOAD_BATCH_LINES: usize = 2_000;
/// Batches in flight at once while loading (they group-commit together).
const LOAD_IN_FLIGHT: usize = 8;
/// Attempts per batch on back-pressure (backoff up to 1 s: about a minute in all).
const LOAD_ATTEMPTS_MAX: u32 = 64;

pub fn sample_dir(data_dir: &Path, config: &GenConfig) -> PathBuf {
    data_dir.join(format!("sample-{}h-seed{}", config.hours, config.seed))
}

/// Generates the sample season once; later runs reuse it.
pub fn ensure_sample(dir: &Path, config: &GenConfig, quiet: bool) -> Result<(), DemoError> {
    if dir.join("complete").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let bar = progress_bar(0, "generating sample season", quiet);
    let summary = rushes_sample::write_season(config, dir, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    std::fs::write(dir.join("complete"), format!("{} episodes, {} annotations\n", summary.episodes, summary.annotations))?;
    if !quiet {
        eprintln!(
            "generated {} episodes ({:.1} hours), {} annotations in {}",
            summary.episodes,
            summary.hours,
            summary.annotations,
            dir.display()
        );
    }
    Ok(())
}

pub fn progress_bar(length: u64, message: &'static str, quiet: bool) -> ProgressBar {
    styled_bar(length, message, quiet, "{msg:28} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
}

/// A bar counting bytes of a file: its length comes from metadata, with no pass to count lines.
pub fn byte_progress_bar(length: u64, message: &'static str, quiet: bool) -> ProgressBar {
    styled_bar(length, message, quiet, "{msg:28} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
}

fn styled_bar(length: u64, message: &'static str, quiet: bool, template: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
    bar.set_message(message);
    bar
}

/// Loads a generated sample into the node through the normal parse + ingest path.
pub async fn load_sample(node: &Arc<Node>, dir: &Path, quiet: bool) -> Result<u64, DemoError> {
    for line in BufReader::new(std::fs::File::open(dir.join("assets.ndjson"))?).lines() {
        let mut value: serde_json::Value = serde_json::from_str(&line?)?;
        let asset_id = value["asset_id"].as_str().ok_or("assets.ndjson line without asset_id")?.to_string();
        if let Some(object) = value.as_object_mut() {
            object.remove("asset_id");
        }
        let record: AssetRecord = serde_json::from_value(value)?;
        node.upsert_asset(&asset_id, record).await.map_err(|e| e.message)?;
    }
    let annotations_path = dir.join("annotations.ndjson");
    let bar = byte_progress_bar(std::fs::metadata(&annotations_path)?.len(), "ingesting annotations", quiet);
    let mut reader = BufReader::new(std::fs::File::open(&annotations_path)?);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut loaded = 0u64;
    loop {
        let mut chunk = Vec::with_capacity(LOAD_BATCH_LINES * 200);
        let mut lines = 0;
        while lines < LOAD_BATCH_LINES {
            let before = chunk.len();
            if reader.read_until(b'\n', &mut chunk)? == 0 {
                break;
            }
            if chunk.len() > before {
                lines += 1;
            }
        }
        if lines == 0 {
            break;
        }
        while in_flight.len() >= LOAD_IN_FLIGHT {
            if let Some(done) = in_flight.join_next().await {
                let (count, bytes) = done??;
                loaded += count;
                bar.inc(bytes);
            }
        }
        let node = node.clone();
        let limits = node.ingest_limits.clone();
        let bytes = chunk.len() as u64;
        in_flight.spawn(async move {
            let items =
                tokio::task::spawn_blocking(move || parse_batch(&chunk, BodyFormat::Ndjson, &limits)).await?.map_err(|e| e.message)?;
            let count = items.len() as u64;
            // Retry on back-pressure, as any client would, with backoff and a bounded count.
            let mut pause = Duration::from_millis(20);
            for _ in 0..LOAD_ATTEMPTS_MAX {
                match node.ingest(items.clone()).await {
                    Ok(_) => return Ok::<(u64, u64), DemoError>((count, bytes)),
                    Err(e) if e.code.is_retryable() => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e.message.into()),
                }
            }
            Err(format!("a batch was still refused after {LOAD_ATTEMPTS_MAX} attempts; the node is overloaded").into())
        });
    }
    while let Some(done) = in_flight.join_next().await {
        let (count, bytes) = done??;
        loaded += count;
        bar.inc(bytes);
    }
    bar.finish_and_clear();
    Ok(loaded)
}

/// Waits until every shard has indexed all it applied; returns how long that took.
pub async fn wait_caught_up(node: &Node, timeout: Duration) -> Result<Duration, DemoError> {
    let started = Instant::now();
    let mut watches: Vec<_> = node.shards().iter().map(|s| (s.progress.clone(), s.indexed_watch())).collect();
    for (progress, watch) in &mut watches {
        let target = progress.applied.load(std::sync::atomic::Ordering::Acquire);
        let remaining = timeout.saturating_sub(started.elapsed());
        tokio::time::timeout(remaining, watch.wait_for(|&indexed| indexed >= target))
            .await
            .map_err(|_| format!("not searchable after {timeout:?}"))?
            .map_err(|_| "a shard stopped while indexing")?;
    }
    Ok(started.elapsed())
}

pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub listen: String,
    pub hours: f64,
    pub seed: u64,
    pub config: Config,
}

/// `config` for a node serving the season generated with `seed`: unless another embedder is
/// configured, the demo embedder of that season (`embedder.url = "demo:SEED"`, or `"demo"` for
/// seed 42), whose place vectors are where the generator put that season's scene vectors. An
/// `embedder.url` naming another seed is a contradiction, and refused.
pub fn with_demo_embedder(mut config: Config, seed: u64) -> Result<Config, DemoError> {
    if seed > i64::MAX as u64 {
        return Err(format!("--seed {seed} is too large: use 0..={} (embedder.url = \"demo:SEED\" holds it)", i64::MAX).into());
    }
    if let Some(named) = config.embedder.demo_seed().filter(|&named| named != seed) {
        return Err(format!(
            "embedder.url = {:?} is the demo embedder of seed {named}, but --seed {seed} generates the season of seed {seed}; \
             drop that embedder.url (--seed sets it) or use --seed {named}",
            config.embedder.url
        )
        .into());
    }
    if config.embedder.url.is_empty() || config.embedder.is_demo() {
        // The demo season's own offline embedder: "somewhere they cook" finds kitchen scenes.
        config.embedder.url = rushes_config::EmbedderConfig::demo_url(seed);
    }
    Ok(config)
}

pub fn run_demo(options: DemoOptions) -> Result<(), DemoError> {
    let gen_config = GenConfig { hours: options.hours, seed: options.seed, ..GenConfig::default() };
    let mut config = with_demo_embedder(options.config, options.seed)?;
    let sample = sample_dir(&options.data_dir, &gen_config);
    ensure_sample(&sample, &gen_config, false)?;
    config.node.data_dir = options.data_dir.join("node");
    let listener = TcpListener::bind(&options.listen).map_err(|e| format!("cannot listen on {}: {e} (use --listen)", options.listen))?;
    let address = listener.local_addr()?;
    config.node.listen = address;
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let node = Node::open_with_demo_seed(config, options.seed)?;
        let server = crate::http::server(node.clone(), listener)?;
        let handle = server.handle();
        let server_task = actix_web::rt::spawn(server);
        let marker =
            options.data_dir.join("node").join(format!("loaded-{}", sample.file_name().and_then(|n| n.to_str()).unwrap_or("sample")));
        if !marker.exists() {
            let started = Instant::now();
            let loaded = load_sample(&node, &sample, false).await?;
            let ingest_time = started.elapsed();
            let searchable = wait_caught_up(&node, Duration::from_secs(600)).await?;
            eprintln!(
                "ingested {loaded} annotations in {:.1}s ({:.0}/s); searchable {:.1}s after the last acknowledgement",
                ingest_time.as_secs_f64(),
                loaded as f64 / ingest_time.as_secs_f64().max(1e-9),
                searchable.as_secs_f64()
            );
            std::fs::write(&marker, format!("{loaded}\n"))?;
        } else {
            wait_caught_up(&node, Duration::from_secs(600)).await?;
            eprintln!("sample already loaded ({} annotations stored)", node.total_raw_annotations());
        }
        print_examples(&format!("http://{address}"));
        tokio::signal::ctrl_c().await?;
        eprintln!("stopping");
        handle.stop(true).await;
        let _ = server_task.await;
        let node_for_shutdown = node.clone();
        tokio::task::spawn_blocking(move || node_for_shutdown.shutdown()).await?;
        Ok(())
    })
}

fn print_examples(base: &str) {
    println!("\nRushes is serving on {base}. Try:\n");
    let examples = [
        (
            "Joey in the kitchen",
            format!(r#"curl -s {base}/v1/search -H 'content-type: application/json' -d '{{"q": "Joey in the kitchen"}}'"#),
        ),
        (
            "a line of dialogue",
            format!(r#"curl -s {base}/v1/search -H 'content-type: application/json' -d '{{"q": "\"we were on a break\""}}'"#),
        ),
        (
            "structured: Monica and a frying pan, anywhere",
            format!(
                r#"curl -s {base}/v1/search -H 'content-type: application/json' -d '{{"clauses": [{{"type": "label", "track": "character", "label": "Monica"}}, {{"type": "label", "track": "object", "label": "frying pan"}}], "mode": "union", "per_asset": 3}}'"#
            ),
        ),
        (
            "what a query becomes",
            format!(r#"curl -s {base}/v1/search/explain -H 'content-type: application/json' -d '{{"q": "Rachel at the coffee shop"}}'"#),
        ),
        ("as you type", format!("curl -s '{base}/v1/suggest?q=Zeb'")),
        ("the fused timeline", format!("curl -s '{base}/v1/assets/s01e01/buckets?from_ms=0&to_ms=10000'")),
        ("an asset", format!("curl -s {base}/v1/assets/s01e01")),
        ("shards and watermarks", format!("curl -s {base}/v1/cluster")),
    ];
    for (what, command) in examples {
        println!("# {what}\n{command}\n");
    }
    println!("Press Ctrl-C to stop.");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> Config {
        let mut config = Config::default();
        config.embedder.url = url.into();
        config
    }

    #[test]
    fn the_demo_embedder_follows_the_seed_of_the_season() {
        let url = |config: Config, seed: u64| with_demo_embedder(config, seed).expect("consistent").embedder.url;
        assert_eq!(url(Config::default(), 1), "demo:1");
        assert_eq!(url(Config::default(), 42), "demo");
        assert_eq!(url(with_url("demo"), 7), "demo:7", "plain \"demo\" is made to match --seed");
        assert_eq!(url(with_url("demo:7"), 7), "demo:7");
        let http = "http://127.0.0.1:9/v1/embeddings";
        assert_eq!(url(with_url(http), 3), http, "another embedder is kept");
        let error = with_demo_embedder(with_url("demo:5"), 1).expect_err("5 is not 1").to_string();
        assert!(error.contains("embedder.url = \"demo:5\"") && error.contains("--seed 1"), "{error}");
        assert!(with_demo_embedder(Config::default(), u64::MAX).is_err());
    }
}
