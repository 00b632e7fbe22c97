//! `rushes cluster bench`: three local node processes, replication factor 3. Measures
//! acknowledged ingest throughput, query latency through one node, the time a killed leader's
//! shards take to accept writes again, and a restarted replica's catch-up time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::bench::{latency_row, machine_description, query_mix, wait_until_settled, LatencyRow};
use crate::cli::demo::{ensure_sample, sample_dir, DemoError};
use crate::cli::local_cluster::{node_addrs, write_configs, LocalClusterOptions};
use rushes_client::Client;
use rushes_sample::GenConfig;

pub struct ClusterBenchOptions {
    pub hours: f64,
    pub seed: u64,
    pub work_dir: PathBuf,
    pub clients: usize,
    pub queries_per_kind: usize,
    pub base_port: u16,
    /// Annotations written while a replica is down, for the catch-up measurement.
    pub catch_up_annotations: usize,
    /// Node processes (replication factor 3): with more than 3, queries go through a node that
    /// lacks some shards, so they measure scatter-gather to other nodes.
    pub nodes: usize,
    /// `raft.log_retain_entries` and `raft.snapshot_log_entries` for every node (compacting
    /// every 500 ms), so the restarted replica catches up by snapshot; None keeps the defaults.
    pub compact_every_entries: Option<u64>,
    /// Leave the nodes' data directories and logs in place.
    pub keep_data: bool,
    /// Peers without TLS (`cluster.insecure_peers`), to measure what mutual TLS costs.
    pub insecure_peers: bool,
    /// At the end, add a node and rebalance onto it under a steady query and ingest load.
    pub rebalance: bool,
}

/// Adding a node and rebalancing onto it, with a steady load (one search client, one ingest
/// client) measured before the change and while it runs.
#[derive(Debug, Serialize)]
pub struct RebalanceReport {
    pub moves: u64,
    /// From the rebalance request to the last move finished.
    pub rebalance_seconds: f64,
    /// From starting the new process to a member that follows the map (metadata caught up).
    pub add_node_seconds: f64,
    pub snapshot_bytes_fetched: u64,
    pub snapshot_transfer_bytes_per_s: u64,
    pub before: LoadWindow,
    pub during: LoadWindow,
}

/// The steady load's latencies over one window.
#[derive(Debug, Clone, Serialize)]
pub struct LoadWindow {
    pub seconds: f64,
    pub queries: usize,
    pub query_p50_ms: f64,
    pub query_p99_ms: f64,
    pub ingest_batches: usize,
    pub ingest_p50_ms: f64,
    pub ingest_p99_ms: f64,
    pub ingest_annotations_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ClusterBenchReport {
    pub nodes: usize,
    pub replication_factor: usize,
    pub shards: u32,
    pub annotations: u64,
    pub ingest_seconds: f64,
    pub ingest_annotations_per_s: f64,
    pub ingest_timing: IngestTiming,
    pub replicated_and_indexed_after_last_ack_s: f64,
    /// Wait after that until the nodes together used under 10% of a core for 3 s (merges, warming done).
    pub settled_before_queries_s: f64,
    /// The node the searches were sent to, and how many shards it holds itself.
    pub query_node: usize,
    pub query_node_local_shards: usize,
    pub queries: Vec<LatencyRow>,
    /// Mean time of one shard's search phase over all those queries: as the query node saw it
    /// (local replica, or a round trip to another node's), and as the other nodes served it.
    pub query_phases: Vec<PhaseRow>,
    /// SIGKILL of the node leading shard 0 → first acknowledged write to shard 0 via another node.
    pub failover_seconds: f64,
    pub catch_up_annotations: usize,
    /// Restart of a replica that missed `catch_up_annotations` → applied and indexed everything.
    pub catch_up_seconds: f64,
    /// Snapshots that replica installed while catching up (0: it caught up from the log).
    pub catch_up_snapshots: u64,
    /// Raw store bytes and chunks that replica fetched for those snapshots, and the time it
    /// spent fetching them.
    pub catch_up_snapshot_bytes: u64,
    pub catch_up_snapshot_chunks: u64,
    pub catch_up_snapshot_fetch_s: f64,
    /// Raw annotations in the restarted replica's stores once caught up (what a snapshot copies).
    pub catch_up_replica_annotations: u64,
    pub catch_up_replica_disk_bytes: u64,
    pub compact_every_entries: Option<u64>,
    pub rebalance: Option<RebalanceReport>,
    pub machine: String,
}

/// Where an acknowledged batch's time went during the ingest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestTiming {
    /// Client's view: one NDJSON batch (BATCH_LINES annotations) sent → acknowledged, with
    /// any retries after a busy answer.
    pub batch_p50_ms: f64,
    pub batch_p99_ms: f64,
    /// Every node's shard leaders: a proposal (one shard's part of a batch) → committed on a
    /// quorum, durable and applied (`rushes_raft_commit_seconds`).
    pub proposal_commits: u64,
    pub proposal_commit_mean_ms: f64,
    /// Every replica: one Raft ready cycle (persist and flush the log, apply, send), the work
    /// each step of the replication waits for (`rushes_raft_ready_seconds`).
    pub ready_cycles: u64,
    pub ready_cycle_mean_ms: f64,
    /// Of which: writing and syncing the log, and applying committed entries (cycles that
    /// applied something).
    pub ready_persist_mean_ms: f64,
    pub ready_applies: u64,
    pub ready_apply_mean_ms: f64,
}

impl IngestTiming {
    /// From the nodes' metrics before and after the ingest (the difference: elections, asset
    /// writes and idle heartbeats before it do not count).
    fn of(sorted_batch_latencies_ms: &[f64], metrics_before: &[String], metrics_after: &[String]) -> IngestTiming {
        let mean_of = |metric: &str, label: Option<&str>| {
            let labels: &[&str] = if label.is_some() { &["phase"] } else { &[] };
            let total = |texts: &[String]| {
                texts
                    .iter()
                    .flat_map(|text| histogram_totals(text, metric, labels))
                    .filter(|(key, _)| label.is_none_or(|label| key.first().is_some_and(|k| k == label)))
                    .fold((0.0, 0u64), |(sum, count), (_, (s, c))| (sum + s, count + c))
            };
            let ((sum_after, count_after), (sum_before, count_before)) = (total(metrics_after), total(metrics_before));
            let (sum, count) = (sum_after - sum_before, count_after.saturating_sub(count_before));
            (count, if count == 0 { 0.0 } else { sum * 1000.0 / count as f64 })
        };
        let mean = |metric: &str| mean_of(metric, None);
        let (proposal_commits, proposal_commit_mean_ms) = mean("rushes_raft_commit_seconds");
        let (ready_cycles, ready_cycle_mean_ms) = mean("rushes_raft_ready_seconds");
        let (_, ready_persist_mean_ms) = mean_of("rushes_raft_ready_phase_seconds", Some("persist"));
        let (ready_applies, ready_apply_mean_ms) = mean_of("rushes_raft_ready_phase_seconds", Some("apply"));
        IngestTiming {
            batch_p50_ms: crate::cli::bench::percentile(sorted_batch_latencies_ms, 50.0),
            batch_p99_ms: crate::cli::bench::percentile(sorted_batch_latencies_ms, 99.0),
            proposal_commits,
            proposal_commit_mean_ms,
            ready_cycles,
            ready_cycle_mean_ms,
            ready_persist_mean_ms,
            ready_applies,
            ready_apply_mean_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseRow {
    pub phase: String,
    /// "local" or "remote" (seen by the query node), or "served for peers" (on the other nodes).
    pub replica: String,
    pub count: u64,
    pub mean_ms: f64,
}

/// Sums and counts of a histogram in Prometheus text, by its label values, e.g. for
/// `rushes_search_phase_seconds` with labels ["phase", "replica"].
fn histogram_totals(text: &str, metric: &str, labels: &[&str]) -> BTreeMap<Vec<String>, (f64, u64)> {
    let mut totals: BTreeMap<Vec<String>, (f64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let (is_sum, rest) = if let Some(rest) = line.strip_prefix(&format!("{metric}_sum")) {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix(&format!("{metric}_count")) {
            (false, rest)
        } else {
            continue;
        };
        // `{labels} value`, or ` value` for a histogram without labels.
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.split_once("} ") {
                Some(split) => split,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let pairs: BTreeMap<&str, &str> =
            label_text.split(',').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k, v.trim_matches('"'))).collect();
        let key: Vec<String> = labels.iter().map(|l| pairs.get(l).copied().unwrap_or_default().to_string()).collect();
        let entry = totals.entry(key).or_default();
        if is_sum {
            entry.0 += value;
        } else {
            entry.1 += value as u64;
        }
    }
    totals
}

/// The phase rows of one query node's metrics and the other nodes' metrics.
fn phase_rows(query_node_metrics: &str, other_nodes_metrics: &[String]) -> Vec<PhaseRow> {
    let row = |phase: &str, replica: &str, (sum, count): (f64, u64)| PhaseRow {
        phase: phase.to_string(),
        replica: replica.to_string(),
        count,
        mean_ms: if count == 0 { 0.0 } else { sum * 1000.0 / count as f64 },
    };
    let mut rows: Vec<PhaseRow> = histogram_totals(query_node_metrics, "rushes_search_phase_seconds", &["phase", "replica"])
        .into_iter()
        .map(|(key, totals)| row(&key[0], &key[1], totals))
        .collect();
    let mut served: BTreeMap<Vec<String>, (f64, u64)> = BTreeMap::new();
    for text in other_nodes_metrics {
        for (key, (sum, count)) in histogram_totals(text, "rushes_peer_search_phase_seconds", &["phase"]) {
            let entry = served.entry(key).or_default();
            entry.0 += sum;
            entry.1 += count;
        }
    }
    rows.extend(served.into_iter().map(|(key, totals)| row(&key[0], "served for peers", totals)));
    // Query order: hits, candidates, evidence, then releases (remote shards with nothing to finish).
    let order = |phase: &str| ["hits", "candidates", "evidence", "release"].iter().position(|p| *p == phase).unwrap_or(4);
    rows.sort_by(|a, b| order(&a.phase).cmp(&order(&b.phase)).then_with(|| a.replica.cmp(&b.replica)));
    rows
}

const REPLICATION_FACTOR: usize = 3;
const SHARDS: u32 = 4;
const BATCH_LINES: usize = 2000;

struct NodeProcess {
    config: PathBuf,
    log: PathBuf,
    base_url: String,
    child: Option<Child>,
}

impl NodeProcess {
    fn spawn(&mut self, binary: &Path) -> Result<(), DemoError> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls until `condition` holds; an error after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<Duration, DemoError> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if condition() {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("timed out after {timeout:?} waiting for {what}").into())
}

/// Every shard's replicas all applied and indexed the same commit index (seen from `client`).
fn converged(client: &Client) -> bool {
    let Ok(status) = client.get_json("/v1/cluster") else { return false };
    status["shards"].as_array().is_some_and(|shards| {
        shards.iter().all(|shard| {
            let replicas = shard["replicas"].as_array().cloned().unwrap_or_default();
            let commits: Vec<u64> = replicas.iter().filter_map(|r| r["commit_index"].as_u64()).collect();
            replicas.len() == REPLICATION_FACTOR
                && commits.len() == REPLICATION_FACTOR
                && replicas.iter().all(|r| {
                    r["applied_index"].as_u64() == commits.iter().max().copied()
                        && r["indexed_index"].as_u64() >= r["applied_index"].as_u64()
                })
        })
    })
}

/// Posts NDJSON batches from several client threads, each bound to one node (round robin);
/// returns (acknowledged annotations, seconds, each request's milliseconds to its reply).
fn ingest(batches: Vec<Vec<u8>>, urls: &[String], clients: usize, token: &Option<String>) -> Result<(u64, f64, Vec<f64>), DemoError> {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(clients * 2);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..clients {
        let (rx, acknowledged) = (rx.clone(), acknowledged.clone());
        let client = Client::new(&urls[worker % urls.len()]).with_token(token.clone());
        workers.push(std::thread::spawn(move || -> Result<Vec<f64>, String> {
            let mut latencies_ms = Vec::new();
            for body in rx {
                let sent = Instant::now();
                let reply = client.post_ndjson_retrying(&body, 50).map_err(|e| e.to_string())?;
                latencies_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                acknowledged.fetch_add(reply.accepted as u64, Ordering::Relaxed);
            }
            Ok(latencies_ms)
        }));
    }
    for batch in batches {
        tx.send(batch)?;
    }
    drop(tx);
    let mut latencies_ms = Vec::new();
    for worker in workers {
        latencies_ms.extend(worker.join().map_err(|_| "ingest worker panicked")??);
    }
    latencies_ms.sort_by(f64::total_cmp);
    Ok((acknowledged.load(Ordering::Relaxed), started.elapsed().as_secs_f64(), latencies_ms))
}

/// Shard → the largest `field` over the replicas a `/v1/cluster` reply shows.
fn per_shard_max(status: &serde_json::Value, field: &str) -> BTreeMap<u64, u64> {
    let mut max = BTreeMap::new();
    for shard in status["shards"].as_array().into_iter().flatten() {
        let Some(id) = shard["shard"].as_u64() else { continue };
        for value in shard["replicas"].as_array().into_iter().flatten().filter_map(|replica| replica[field].as_u64()) {
            let entry = max.entry(id).or_insert(0);
            *entry = value.max(*entry);
        }
    }
    max
}

/// Shard → `field` of the replying node's own replica, from a `/v1/cluster` reply.
fn per_shard_local(status: &serde_json::Value, field: &str) -> BTreeMap<u64, u64> {
    let mut values = BTreeMap::new();
    for shard in status["shards"].as_array().into_iter().flatten() {
        let local = shard["replicas"].as_array().into_iter().flatten().find(|replica| replica["local"].as_bool() == Some(true));
        if let (Some(id), Some(value)) = (shard["shard"].as_u64(), local.and_then(|replica| replica[field].as_u64())) {
            values.insert(id, value);
        }
    }
    values
}

/// The sum of `field` over the replying node's own replicas.
fn local_sum(status: &serde_json::Value, field: &str) -> u64 {
    per_shard_local(status, field).values().sum()
}

fn batches_of(lines: &[String]) -> Vec<Vec<u8>> {
    lines.chunks(BATCH_LINES).map(|chunk| chunk.join("\n").into_bytes()).collect()
}

pub fn run_cluster_bench(options: ClusterBenchOptions) -> Result<ClusterBenchReport, DemoError> {
    let gen_config = GenConfig { hours: options.hours, seed: options.seed, ..GenConfig::default() };
    let sample = sample_dir(&options.work_dir, &gen_config);
    ensure_sample(&sample, &gen_config, false)?;
    let dir = std::path::absolute(options.work_dir.join(format!("cluster-bench-{}", std::process::id())))?;
    let _ = std::fs::remove_dir_all(&dir);
    let layout = LocalClusterOptions {
        nodes: options.nodes,
        data_dir: dir.clone(),
        base_port: options.base_port,
        shards: SHARDS,
        replication_factor: REPLICATION_FACTOR,
        peer_tls: !options.insecure_peers,
    };
    let (configs, secrets) = write_configs(&layout)?;
    let token = Some(secrets.admin_key.clone());
    for config in &configs {
        // Hybrid queries embed their semantic words with the season's offline embedder.
        let mut text = std::fs::read_to_string(config)?;
        text.push_str(&format!("\n[embedder]\nurl = {:?}\n", rushes_config::EmbedderConfig::demo_url(options.seed)));
        if let Some(entries) = options.compact_every_entries {
            text.push_str(&format!(
                "\n[raft]\nlog_retain_entries = {entries}\nsnapshot_log_entries = {entries}\ncompaction_interval_ms = 500\n"
            ));
        }
        std::fs::write(config, text)?;
    }
    let binary = std::env::current_exe()?;
    let mut nodes: Vec<NodeProcess> = configs
        .iter()
        .enumerate()
        .map(|(position, config)| NodeProcess {
            config: config.clone(),
            log: dir.join(format!("node-{}.log", position + 1)),
            base_url: format!("http://{}", node_addrs(options.base_port, position + 1).0),
            child: None,
        })
        .collect();
    for node in &mut nodes {
        node.spawn(&binary)?;
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.base_url.clone()).collect();
    let clients: Vec<Client> = urls.iter().map(|u| Client::new(u).with_token(token.clone())).collect();
    wait_for("every node to answer /health", Duration::from_secs(60), || clients.iter().all(|c| c.get("/health").is_ok()))?;
    wait_for("every shard to elect a leader", Duration::from_secs(30), || {
        clients[0].get_json("/v1/cluster").is_ok_and(|s| s["shards"].as_array().is_some_and(|a| a.iter().all(|x| x["leader"].is_u64())))
    })?;

    for line in BufReader::new(std::fs::File::open(sample.join("assets.ndjson"))?).lines() {
        let mut value: serde_json::Value = serde_json::from_str(&line?)?;
        let asset_id = value["asset_id"].as_str().ok_or("asset line without asset_id")?.to_string();
        if let Some(object) = value.as_object_mut() {
            object.remove("asset_id");
        }
        clients[0].send("PUT", &format!("/v1/assets/{asset_id}"), "application/json", &serde_json::to_vec(&value)?)?;
    }
    let lines: Vec<String> = std::fs::read_to_string(sample.join("annotations.ndjson"))?.lines().map(str::to_string).collect();
    println!("ingesting {} annotations through {} nodes with {} clients", lines.len(), options.nodes, options.clients);
    let metrics = || clients.iter().map(|c| c.get("/metrics")).collect::<Result<Vec<_>, _>>();
    let metrics_before = metrics()?;
    let (annotations, ingest_seconds, batch_latencies_ms) = ingest(batches_of(&lines), &urls, options.clients, &token)?;
    let ingest_timing = IngestTiming::of(&batch_latencies_ms, &metrics_before, &metrics()?);
    if annotations != lines.len() as u64 {
        return Err(format!("acknowledged {annotations} of {} annotations", lines.len()).into());
    }
    let replicated = wait_for("every replica to apply and index everything", Duration::from_secs(1800), || converged(&clients[0]))?;
    // As in `rushes bench`: queries run once the nodes' merges and flushes have finished.
    let pids: Vec<u32> = nodes.iter().filter_map(|node| node.child.as_ref().map(Child::id)).collect();
    let settled = wait_until_settled(&pids);

    // Queries through the node holding the fewest shards (node 2 when every node holds all).
    let status = clients[0].get_json("/v1/cluster")?;
    let local_shards = |node: usize| {
        status["shards"].as_array().map_or(0, |shards| {
            shards
                .iter()
                .filter(|s| s["replicas"].as_array().is_some_and(|r| r.iter().any(|r| r["node"].as_u64() == Some(node as u64))))
                .count()
        })
    };
    let query_node = (1..=options.nodes).min_by_key(|&n| (local_shards(n), n != 2)).unwrap_or(2);
    let query_node_local_shards = local_shards(query_node);
    println!("querying through node {query_node}, which holds {query_node_local_shards} of {SHARDS} shards");
    let truths = crate::cli::bench::load_truths(&sample)?;
    let season = rushes_sample::plan_season(&gen_config);
    let mut queries = Vec::new();
    for (kind, requests) in query_mix(&season, &truths, options.queries_per_kind, options.seed) {
        let mut latencies = Vec::with_capacity(requests.len());
        let mut assets = 0usize;
        for request in &requests {
            let started = Instant::now();
            let response = clients[query_node - 1].search(request)?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            if response.shards.failed > 0 {
                return Err(format!("a {kind} query had {} failed shards", response.shards.failed).into());
            }
            assets += response.assets.len();
        }
        queries.push(latency_row(kind, latencies, assets));
    }
    let query_node_metrics = clients[query_node - 1].get("/metrics")?;
    let other_nodes_metrics =
        (1..=options.nodes).filter(|&n| n != query_node).map(|n| clients[n - 1].get("/metrics")).collect::<Result<Vec<_>, _>>()?;
    let query_phases = phase_rows(&query_node_metrics, &other_nodes_metrics);

    // Failover: kill shard 0's leader, then write to shard 0 through another node until acked.
    let status = clients[0].get_json("/v1/cluster")?;
    let leader = status["shards"][0]["leader"].as_u64().ok_or("shard 0 has no leader")? as usize;
    let survivor = if leader == 1 { 1 } else { 0 };
    let probe_asset = (0..10_000)
        .map(|i| format!("failover-probe-{i}"))
        .find(|a| rushes_cluster::shard_for_asset(a, SHARDS) == 0)
        .ok_or("no probe asset")?;
    let probe = |i: usize| {
        format!(
            r#"{{"id":"probe-{i}","asset_id":"{probe_asset}","model":"bench","model_version":"1","track":"object","start_ms":0,"end_ms":1000,"label":"probe","confidence":0.9}}"#
        )
        .into_bytes()
    };
    clients[survivor].post_ndjson(&probe(0))?;
    // The highest index any replica of each shard had before the kill: the killed replica's
    // log ends at or below it (plus what was in flight), for the snapshot wait below.
    let commit_before_kill = per_shard_max(&clients[survivor].get_json("/v1/cluster")?, "commit_index");
    let killed_at = Instant::now();
    nodes[leader - 1].kill();
    let mut attempt = 1;
    loop {
        match clients[survivor].post_ndjson(&probe(attempt)) {
            Ok(_) => break,
            Err(e) if e.is_retryable() && killed_at.elapsed() < Duration::from_secs(60) => attempt += 1,
            Err(e) => return Err(format!("writes to shard 0 did not resume after the leader was killed: {e}").into()),
        }
    }
    let failover_seconds = killed_at.elapsed().as_secs_f64();

    // Catch-up: with that node down, write `catch_up_annotations` more, then restart it.
    let catch_up_lines: Vec<String> = lines
        .iter()
        .cycle()
        .take(options.catch_up_annotations)
        .enumerate()
        .map(|(i, line)| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            value["asset_id"] = serde_json::json!(format!("catchup-{}-{}", i / lines.len(), value["asset_id"].as_str().unwrap_or("")));
            value.to_string()
        })
        .collect();
    let live_urls: Vec<String> = urls.iter().enumerate().filter(|(i, _)| *i != leader - 1).map(|(_, u)| u.clone()).collect();
    let (written, _, _) = ingest(batches_of(&catch_up_lines), &live_urls, options.clients, &token)?;
    if options.compact_every_entries.is_some() {
        // Logs are compacted only below what indexing has made durable (vector files are saved
        // every 30 s): wait until every shard's live replicas dropped the entries the killed
        // replica lacks, so it must catch up by snapshot. Shards that got too few writes while
        // it was down may never get there; the report counts the snapshots actually installed.
        let compacted = |client: &Client| {
            let Ok(status) = client.get_json("/v1/cluster") else { return false };
            let first = per_shard_max(&status, "log_first_index");
            commit_before_kill.iter().all(|(shard, commit)| first.get(shard).is_some_and(|first| *first > commit + 2))
        };
        if let Err(e) = wait_for("live replicas to compact past the killed one", Duration::from_secs(90), || compacted(&clients[survivor]))
        {
            println!("{e}; restarting it anyway");
        }
    }
    let restarted_at = Instant::now();
    nodes[leader - 1].spawn(&binary)?;
    wait_for("the restarted replica to catch up", Duration::from_secs(1800), || converged(&clients[survivor]))?;
    let catch_up_seconds = restarted_at.elapsed().as_secs_f64();
    // Caught up means the same raw store, not only the same indexes: compare each shard's
    // annotation count on the restarted replica with a survivor's.
    let restarted = clients[leader - 1].get_json("/v1/cluster")?;
    let restarted_counts = per_shard_local(&restarted, "raw_annotations");
    let survivor_counts = per_shard_local(&clients[survivor].get_json("/v1/cluster")?, "raw_annotations");
    for (shard, count) in &restarted_counts {
        if let Some(expected) = survivor_counts.get(shard).filter(|expected| *expected != count) {
            return Err(
                format!("shard {shard}: the restarted replica holds {count} annotations, node {} holds {expected}", survivor + 1).into()
            );
        }
    }
    let catch_up_snapshots = local_sum(&restarted, "snapshots_installed");
    let catch_up_snapshot_bytes = local_sum(&restarted, "snapshot_bytes_fetched");
    let catch_up_snapshot_chunks = local_sum(&restarted, "snapshot_chunks_fetched");
    let catch_up_snapshot_fetch_s = local_sum(&restarted, "snapshot_fetch_ms") as f64 / 1000.0;
    let catch_up_replica_annotations = restarted_counts.values().sum();
    let catch_up_replica_disk_bytes = local_sum(&restarted, "disk_bytes");

    let rebalance = if options.rebalance {
        let requests: Vec<rushes_protocol::SearchRequest> =
            query_mix(&season, &truths, 20, options.seed).into_iter().flat_map(|(_, requests)| requests).collect();
        Some(measure_rebalance(&layout, &binary, &mut nodes, &token, requests, &lines, options.seed)?)
    } else {
        None
    };

    drop(nodes);
    if options.keep_data {
        println!("nodes' data and logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ClusterBenchReport {
        nodes: options.nodes,
        replication_factor: REPLICATION_FACTOR,
        query_node,
        query_node_local_shards,
        shards: SHARDS,
        annotations,
        ingest_seconds,
        ingest_annotations_per_s: annotations as f64 / ingest_seconds,
        ingest_timing,
        replicated_and_indexed_after_last_ack_s: replicated.as_secs_f64(),
        settled_before_queries_s: settled.as_secs_f64(),
        queries,
        query_phases,
        failover_seconds,
        catch_up_annotations: written as usize,
        catch_up_seconds,
        catch_up_snapshots,
        catch_up_snapshot_bytes,
        catch_up_snapshot_chunks,
        catch_up_snapshot_fetch_s,
        catch_up_replica_annotations,
        catch_up_replica_disk_bytes,
        compact_every_entries: options.compact_every_entries,
        rebalance,
        machine: machine_description(),
    })
}

/// Annotations per batch of the steady load's writer (a typical client's batch, not the bulk
/// load's).
const STEADY_BATCH_LINES: usize = 200;

/// Searches (round robin over `requests`, through node 1) and ingest batches (through node 2)
/// one at a time each, recording each latency with its finish time, until stopped.
struct SteadyLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    samples: Arc<parking_lot::Mutex<(Vec<(Instant, f64)>, Vec<(Instant, f64, usize)>)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SteadyLoad {
    fn start(urls: &[String], token: &Option<String>, requests: Vec<rushes_protocol::SearchRequest>, lines: &[String]) -> SteadyLoad {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let samples: Arc<parking_lot::Mutex<(Vec<(Instant, f64)>, Vec<(Instant, f64, usize)>)>> = Arc::default();
        let searcher = {
            let (stop, samples, client) = (stop.clone(), samples.clone(), Client::new(&urls[0]).with_token(token.clone()));
            std::thread::spawn(move || {
                for request in requests.iter().cycle() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let sent = Instant::now();
                    if client.search(request).is_ok() {
                        samples.lock().0.push((Instant::now(), sent.elapsed().as_secs_f64() * 1000.0));
                    }
                }
            })
        };
        // Batches of STEADY_BATCH_LINES from the season, each sent under new asset ids (round
        // `r` of the season), so every batch stores new annotations however long the load runs.
        let chunks: Vec<Vec<String>> = lines.chunks(STEADY_BATCH_LINES).map(<[String]>::to_vec).collect();
        let writer = {
            let (stop, samples, client) = (stop.clone(), samples.clone(), Client::new(&urls[1 % urls.len()]).with_token(token.clone()));
            std::thread::spawn(move || {
                for (i, chunk) in chunks.iter().cycle().enumerate() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let body: Vec<String> = chunk
                        .iter()
                        .map(|line| {
                            let mut value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                            value["asset_id"] = serde_json::json!(format!("steady-{i}-{}", value["asset_id"].as_str().unwrap_or("")));
                            value.to_string()
                        })
                        .collect();
                    let (body, count) = (body.join("\n").into_bytes(), &chunk.len());
                    let sent = Instant::now();
                    if client.post_ndjson_retrying(&body, 50).is_ok() {
                        samples.lock().1.push((Instant::now(), sent.elapsed().as_secs_f64() * 1000.0, *count));
                    }
                }
            })
        };
        SteadyLoad { stop, samples, threads: vec![searcher, writer] }
    }

    /// The samples that finished in `[from, to)`.
    fn window(&self, from: Instant, to: Instant) -> LoadWindow {
        let samples = self.samples.lock();
        let mut queries: Vec<f64> = samples.0.iter().filter(|(at, _)| *at >= from && *at < to).map(|(_, ms)| *ms).collect();
        let batches: Vec<(f64, usize)> = samples.1.iter().filter(|(at, ..)| *at >= from && *at < to).map(|(_, ms, n)| (*ms, *n)).collect();
        let mut batch_ms: Vec<f64> = batches.iter().map(|(ms, _)| *ms).collect();
        queries.sort_by(f64::total_cmp);
        batch_ms.sort_by(f64::total_cmp);
        let seconds = to.duration_since(from).as_secs_f64();
        LoadWindow {
            seconds,
            queries: queries.len(),
            query_p50_ms: crate::cli::bench::percentile(&queries, 50.0),
            query_p99_ms: crate::cli::bench::percentile(&queries, 99.0),
            ingest_batches: batch_ms.len(),
            ingest_p50_ms: crate::cli::bench::percentile(&batch_ms, 50.0),
            ingest_p99_ms: crate::cli::bench::percentile(&batch_ms, 99.0),
            ingest_annotations_per_s: batches.iter().map(|(_, n)| *n).sum::<usize>() as f64 / seconds.max(0.001),
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Starts node N+1 joining the cluster, adds it, then rebalances onto it while [`SteadyLoad`]
/// runs; the load's window before the rebalance (at least 20 s, the node's addition included)
/// is compared with the window of the rebalance.
fn measure_rebalance(
    layout: &LocalClusterOptions,
    binary: &Path,
    nodes: &mut Vec<NodeProcess>,
    token: &Option<String>,
    requests: Vec<rushes_protocol::SearchRequest>,
    lines: &[String],
    seed: u64,
) -> Result<RebalanceReport, DemoError> {
    let n = layout.nodes + 1;
    let config = crate::cli::local_cluster::write_joining_config(layout, n)?;
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(&format!("\n[embedder]\nurl = {:?}\n", rushes_config::EmbedderConfig::demo_url(seed)));
    std::fs::write(&config, text)?;
    let urls: Vec<String> = nodes.iter().map(|node| node.base_url.clone()).collect();
    let load = SteadyLoad::start(&urls, token, requests, lines);
    let baseline_started = Instant::now();
    let (http, raft) = node_addrs(layout.base_port, n);
    let mut node =
        NodeProcess { config, log: layout.data_dir.join(format!("node-{n}.log")), base_url: format!("http://{http}"), child: None };
    let first = Client::new(&urls[0]).with_token(token.clone());
    let added_at = Instant::now();
    node.spawn(binary)?;
    let new_client = Client::new(&node.base_url).with_token(token.clone());
    wait_for("the new node to answer /health", Duration::from_secs(60), || new_client.get("/health").is_ok())?;
    crate::cli::membership::add_node(&first, n as u64, &raft, &http, false, Some(Duration::from_secs(600))).map_err(|e| e.to_string())?;
    let add_node_seconds = added_at.elapsed().as_secs_f64();
    nodes.push(node);
    // A baseline window at least 20 s long, under the same load, before anything moves.
    let baseline_ends = baseline_started + Duration::from_secs(20);
    if let Some(rest) = baseline_ends.checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
    let started = Instant::now();
    let reply = first.send("POST", "/v1/admin/cluster/rebalance", "application/json", b"{}")?;
    let queued = crate::cli::membership::Queued::of_reply(&serde_json::from_str::<serde_json::Value>(&reply)?);
    println!("rebalance: {} moves onto node {n}", queued.moves);
    crate::cli::membership::wait_for_moves(&first, queued, Duration::from_secs(3600)).map_err(|e| e.to_string())?;
    let finished = Instant::now();
    let during = load.window(started, finished);
    let before = load.window(baseline_started, started);
    load.stop();
    let status = new_client.get_json("/v1/cluster")?;
    Ok(RebalanceReport {
        moves: queued.moves,
        rebalance_seconds: finished.duration_since(started).as_secs_f64(),
        add_node_seconds,
        snapshot_bytes_fetched: local_sum(&status, "snapshot_bytes_fetched"),
        snapshot_transfer_bytes_per_s: rushes_config::Config::default().raft.snapshot_transfer_bytes_per_s,
        before,
        during,
    })
}

pub fn print_cluster_report(report: &ClusterBenchReport) {
    println!(
        "## Rushes cluster bench: {} nodes, replication factor {}, {} shards, {} annotations",
        report.nodes, report.replication_factor, report.shards, report.annotations
    );
    println!("machine: {}", report.machine);
    println!(
        "ingest (acknowledged on a quorum): {:.0} annotations/s ({:.1} s); every replica indexed {:.1} s after the last ack",
        report.ingest_annotations_per_s, report.ingest_seconds, report.replicated_and_indexed_after_last_ack_s
    );
    let timing = &report.ingest_timing;
    println!(
        "ingest timing: batch of {BATCH_LINES} acknowledged in p50 {:.0} ms / p99 {:.0} ms; {} proposals committed and applied in {:.1} ms (mean); {} ready cycles of {:.2} ms (mean: {:.2} ms persisting the log; {} applying, {:.2} ms each)",
        timing.batch_p50_ms,
        timing.batch_p99_ms,
        timing.proposal_commits,
        timing.proposal_commit_mean_ms,
        timing.ready_cycles,
        timing.ready_cycle_mean_ms,
        timing.ready_persist_mean_ms,
        timing.ready_applies,
        timing.ready_apply_mean_ms
    );
    println!("nodes settled (CPU < 10% of a core for 3 s) {:.1} s later; then the queries", report.settled_before_queries_s);
    println!(
        "| query kind (through node {}, holding {} of {} shards) | queries | p50 ms | p99 ms | mean ms |",
        report.query_node, report.query_node_local_shards, report.shards
    );
    println!("|---|---:|---:|---:|---:|");
    for row in &report.queries {
        println!("| {} | {} | {:.1} | {:.1} | {:.1} |", row.kind, row.queries, row.p50_ms, row.p99_ms, row.mean_ms);
    }
    println!("| search phase (per shard, mean over all queries) | replica | shard phases | mean ms |");
    println!("|---|---|---:|---:|");
    for row in &report.query_phases {
        println!("| {} | {} | {} | {:.2} |", row.phase, row.replica, row.count, row.mean_ms);
    }
    println!("failover (leader SIGKILL → write acknowledged): {:.2} s", report.failover_seconds);
    let compaction = match report.compact_every_entries {
        Some(entries) => format!("; logs compacted every {entries} entries"),
        None => String::new(),
    };
    println!(
        "catch-up of a restarted replica {} annotations behind: {:.1} s ({} snapshots installed; it then held {} annotations in {:.0} MiB{compaction})",
        report.catch_up_annotations,
        report.catch_up_seconds,
        report.catch_up_snapshots,
        report.catch_up_replica_annotations,
        report.catch_up_replica_disk_bytes as f64 / (1024.0 * 1024.0)
    );
    if report.catch_up_snapshot_chunks > 0 {
        let mib = report.catch_up_snapshot_bytes as f64 / (1024.0 * 1024.0);
        println!(
            "snapshot transfer: {mib:.0} MiB of raw store in {} chunks, {:.1} s fetching ({:.0} MiB/s)",
            report.catch_up_snapshot_chunks,
            report.catch_up_snapshot_fetch_s,
            mib / report.catch_up_snapshot_fetch_s.max(0.001)
        );
    }
    if let Some(r) = &report.rebalance {
        println!(
            "add a node: member and following the map in {:.1} s; rebalance: {} moves in {:.1} s ({:.0} MiB of snapshots, throttled to {:.0} MiB/s)",
            r.add_node_seconds,
            r.moves,
            r.rebalance_seconds,
            r.snapshot_bytes_fetched as f64 / (1024.0 * 1024.0),
            r.snapshot_transfer_bytes_per_s as f64 / (1024.0 * 1024.0)
        );
        println!("| steady load (1 search client, 1 ingest client) | window s | searches | search p50 / p99 ms | batches | ingest p50 / p99 ms | annotations/s |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, w) in [("before the rebalance", &r.before), ("during the rebalance", &r.during)] {
            println!(
                "| {name} | {:.1} | {} | {:.1} / {:.1} | {} | {:.0} / {:.0} | {:.0} |",
                w.seconds,
                w.queries,
                w.query_p50_ms,
                w.query_p99_ms,
                w.ingest_batches,
                w.ingest_p50_ms,
                w.ingest_p99_ms,
                w.ingest_annotations_per_s
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_rows_average_the_query_node_and_sum_the_other_nodes() {
        let query_node = "\
# TYPE rushes_search_phase_seconds histogram
rushes_search_phase_seconds_bucket{phase=\"hits\",replica=\"remote\",le=\"0.001\"} 1
rushes_search_phase_seconds_sum{phase=\"hits\",replica=\"remote\"} 0.006
rushes_search_phase_seconds_count{phase=\"hits\",replica=\"remote\"} 3
rushes_search_phase_seconds_sum{phase=\"evidence\",replica=\"local\"} 0.001
rushes_search_phase_seconds_count{phase=\"evidence\",replica=\"local\"} 2
rushes_search_phase_seconds_sum{phase=\"candidates\",replica=\"local\"} 0
rushes_search_phase_seconds_count{phase=\"candidates\",replica=\"local\"} 0
";
        let others = vec![
            "rushes_peer_search_phase_seconds_sum{phase=\"hits\"} 0.002\nrushes_peer_search_phase_seconds_count{phase=\"hits\"} 1\n"
                .to_string(),
            "rushes_peer_search_phase_seconds_sum{phase=\"hits\"} 0.004\nrushes_peer_search_phase_seconds_count{phase=\"hits\"} 1\n"
                .to_string(),
        ];
        let rows = phase_rows(query_node, &others);
        let summary: Vec<(&str, &str, u64, String)> =
            rows.iter().map(|r| (r.phase.as_str(), r.replica.as_str(), r.count, format!("{:.2}", r.mean_ms))).collect();
        assert_eq!(
            summary,
            vec![
                ("hits", "remote", 3, "2.00".to_string()),
                ("hits", "served for peers", 2, "3.00".to_string()),
                ("candidates", "local", 0, "0.00".to_string()),
                ("evidence", "local", 2, "0.50".to_string()),
            ]
        );
    }

    #[test]
    fn ingest_timing_sums_unlabeled_histograms_over_the_nodes_during_the_ingest() {
        let node = |sum: f64, count: u64| {
            format!(
                "rushes_raft_commit_seconds_bucket{{le=\"0.1\"}} {count}\nrushes_raft_commit_seconds_sum {sum}\nrushes_raft_commit_seconds_count {count}\n\
                 rushes_raft_ready_seconds_sum 0.5\nrushes_raft_ready_seconds_count 100\n\
                 rushes_raft_ready_phase_seconds_sum{{phase=\"persist\"}} 0.2\nrushes_raft_ready_phase_seconds_count{{phase=\"persist\"}} 100\n\
                 rushes_raft_ready_phase_seconds_sum{{phase=\"apply\"}} 0.3\nrushes_raft_ready_phase_seconds_count{{phase=\"apply\"}} 10\n"
            )
        };
        let batches_ms: Vec<f64> = (1..=100).map(f64::from).collect();
        // Before the ingest: 5 commits on one node, no ready cycles anywhere.
        let before = ["rushes_raft_commit_seconds_sum 0.5\nrushes_raft_commit_seconds_count 5\n".to_string(), String::new()];
        let timing = IngestTiming::of(&batches_ms, &before, &[node(1.5, 15), node(3.0, 30)]);
        assert_eq!((timing.proposal_commits, format!("{:.1}", timing.proposal_commit_mean_ms)), (40, "100.0".to_string()));
        assert_eq!((timing.ready_cycles, format!("{:.2}", timing.ready_cycle_mean_ms)), (200, "5.00".to_string()));
        assert_eq!((timing.batch_p50_ms, timing.batch_p99_ms), (51.0, 99.0));
        assert_eq!(format!("{:.2}", timing.ready_persist_mean_ms), "2.00");
        assert_eq!((timing.ready_applies, format!("{:.2}", timing.ready_apply_mean_ms)), (20, "30.00".to_string()));
    }
}
