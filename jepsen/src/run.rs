//! One test run on containers: start the cluster, run the workload's clients while the nemesis
//! follows its seeded schedule, heal, wait for the cluster to converge, read everything back
//! from every node, check, and write the results folder.
//!
//! The results folder holds `history.jsonl` (every operation), `faults.json` (the fault
//! windows), `schedule.json`, `verdict.json`, `latency.svg`, `throughput.svg`, `index.html`,
//! the nodes' configs and their logs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checker::{linearizable, set_full};
use crate::cluster::ClusterOptions;
use crate::docker::{DockerCluster, DockerError, DockerOptions};
use crate::history::{Action, FaultWindow, Op, Outcome, Validity};
use crate::http::{encode_segment, Http};
use crate::nemesis::{schedule, FaultKind, Nemesis};
use crate::wait::poll_until;
use crate::workloads::{read_buckets, read_register, run_client, Recorder, Shared, WorkloadKind, SET_MODEL, VERSION_MODEL};

/// Raft settings that make logs compact after 70 entries, so a replica cut off for a few
/// seconds can only catch up by snapshot (the snapshot fault needs that). Snapshot chunks of
/// 16 KiB fetched at 1 MiB/s: a fetch of the megabytes the fault writes into a shard takes
/// seconds, so the fault can strike in the middle of it.
pub const COMPACTING_RAFT_TOML: &str = "[raft]\nlog_retain_entries = 20\nsnapshot_log_entries = 50\ncompaction_interval_ms = 200\n\
                                        snapshot_chunk_bytes = 16384\nsnapshot_transfer_bytes_per_s = 1048576\n";

/// Top-level config of runs with the snapshot fault: no vector space. A shard compacts its log
/// only up to what its vector files hold, and they are saved every 30 s (`VECTOR_SAVE_INTERVAL`
/// in node/src/shard/index_actor.rs) even when they hold no vector, so with the default space
/// a log compacted at most every 30 s whatever `[raft]` says: the cut-off follower usually
/// healed before the log moved past it. The workloads write no vectors.
pub const SNAPSHOT_ROOT_TOML: &str = "vector_spaces = []";

/// The nodes' log filter in runs with the snapshot fault: snapshot fetches, installs and
/// compactions at info.
pub const SNAPSHOT_RUST_LOG: &str = "warn,rushes_node::shard::snapshot=info,rushes_node::shard::raft_actor=info";

/// How long the clients keep running after the first write acknowledged since the last heal.
pub const RECOVERY_LOAD: Duration = Duration::from_secs(10);

/// What a run does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub nodes: usize,
    pub shards: u32,
    pub replication_factor: usize,
    pub workload: WorkloadKind,
    pub nemeses: Vec<FaultKind>,
    /// How long the clients and the nemesis run.
    pub time_limit: Duration,
    pub seed: u64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// The results folder.
    pub out: PathBuf,
    /// The `rushes` binary the image is built from.
    pub binary: PathBuf,
    /// How long the healed cluster may take to converge.
    pub recovery_timeout: Duration,
    /// The command line that replays this run (for the report).
    pub command: String,
}

/// What a run concluded.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub validity: Validity,
    pub out: PathBuf,
    pub verdict: serde_json::Value,
}

/// Why a run could not be carried out (distinct from a run that found a violation).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("results folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io { path: path.to_path_buf(), source }
}

/// A final check's result, for the verdict.
#[derive(Debug, Clone, Default, Serialize)]
struct FinalChecks {
    converged: bool,
    convergence_error: Option<String>,
    converged_after_ms: u64,
    digests_equal: bool,
    digest_mismatches: Vec<String>,
    index_docs_equal_buckets: bool,
    index_mismatches: Vec<String>,
    raw_total: u64,
    raw_expected: Option<u64>,
    raw_total_matches: Option<bool>,
    searches_identical: bool,
    search_differences: Vec<String>,
    writes_ok_after_heal: u64,
    /// Faults during which no operation was invoked: such a fault tested nothing.
    faults_without_load: Vec<String>,
    /// Faults whose point did not come about (a snapshot fault whose follower fetched no
    /// snapshot, or was struck too late; `faults.json` says why): they tested nothing either.
    faults_that_did_not_happen: Vec<String>,
    /// Filler assets of the snapshot fault still present when the final checks began (their
    /// annotations would count in `raw_total`).
    filler_assets_left: usize,
}

/// Runs the test; writes the results folder even when the verdict is invalid.
pub fn run(options: &RunOptions) -> Result<RunOutcome, RunError> {
    let out = options.out.clone();
    // A replay of the same seed starts from nothing: an earlier run's data directories would
    // hand the new cluster elements the new history never added (the set checker reports them).
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(io_error(&out))?;
    }
    std::fs::create_dir_all(&out).map_err(io_error(&out))?;
    for kind in &options.nemeses {
        if kind.needs_five_nodes() && options.nodes < 5 {
            return Err(RunError::Setup(format!("nemesis {} needs --nodes 5 (it has {})", kind.name(), options.nodes)));
        }
    }
    // Anything an earlier run left behind (a killed suite cannot clean up after itself).
    crate::docker::remove_abandoned()?;
    let mut cluster_options = ClusterOptions::new(options.nodes, options.shards, options.replication_factor);
    cluster_options.commit_interval_ms = 200;
    cluster_options.start_timeout = Duration::from_secs(90);
    if options.nemeses.contains(&FaultKind::SnapshotFault) {
        cluster_options.extra_toml = COMPACTING_RAFT_TOML.to_string();
        cluster_options.root_toml = SNAPSHOT_ROOT_TOML.to_string();
        // The nodes' logs then say when each snapshot was fetched, staged and installed.
        cluster_options.rust_log = SNAPSHOT_RUST_LOG.to_string();
    }
    let run_id = format!("{}-{}", std::process::id(), options.seed % 100_000);
    let docker_options = DockerOptions {
        cluster: cluster_options,
        run_id,
        subnet_octet: (options.seed % 200) as u8 + 20,
        small_disk_nodes: if options.nemeses.contains(&FaultKind::DiskFull) { vec![1] } else { vec![] },
        small_disk_mib: 512,
    };
    let cluster_dir = out.join("cluster");
    println!(
        "jepsen: seed {} · {} nodes · workload {} · nemesis {:?}",
        options.seed,
        options.nodes,
        options.workload.name(),
        names(&options.nemeses)
    );
    let mut cluster = DockerCluster::start(&cluster_dir, &options.binary, docker_options)?;
    let result = drive(&cluster, options);
    cluster.teardown();
    result
}

fn names(kinds: &[FaultKind]) -> Vec<&'static str> {
    kinds.iter().map(|k| k.name()).collect()
}

fn drive(cluster: &DockerCluster, options: &RunOptions) -> Result<RunOutcome, RunError> {
    let out = &options.out;
    let leaders_ready = poll_until(Duration::from_secs(60), || (0..options.shards).all(|s| cluster.leader_of(s).is_some()));
    if !leaders_ready {
        return Err(RunError::Setup(format!("not every shard elected a leader within 60 s\n{}", cluster.diagnostics())));
    }
    let planned = schedule(options.seed, &options.nemeses, options.time_limit);
    write_json(&out.join("schedule.json"), &planned)?;
    let started = Instant::now();
    let recorder = Recorder::new(started);
    let shared = Arc::new(Shared::new(options.workload, cluster.base_urls(), recorder.clone(), options.seed));
    let clients: Vec<_> = (0..options.concurrency)
        .map(|client| {
            let shared = shared.clone();
            let concurrency = options.concurrency;
            std::thread::spawn(move || run_client(&shared, client, concurrency))
        })
        .collect();

    let workload_shards: BTreeSet<u32> =
        options.workload.assets().iter().map(|asset| rushes_protocol::peer::shard_for_asset(asset, options.shards.max(1))).collect();
    let nemesis = Nemesis::new(cluster).with_workload_shards(workload_shards.into_iter().collect());
    let mut windows: Vec<FaultWindow> = Vec::new();
    let mut not_happened: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for fault in &planned {
        std::thread::sleep(Duration::from_millis(fault.quiet_ms));
        let start_ns = recorder.now_ns();
        let applied = nemesis.start(fault, options.shards);
        match applied {
            Ok(active) => {
                println!("jepsen: {:>6.1} s  {}: {}", start_ns as f64 / 1e9, fault.kind.name(), active.description);
                // A snapshot fault runs its own course inside `start`.
                if fault.kind != FaultKind::SnapshotFault {
                    std::thread::sleep(Duration::from_millis(fault.hold_ms));
                }
                let healed = nemesis.heal();
                let end_ns = recorder.now_ns();
                let mut description = active.description;
                if let Ok(Some(observed)) = &healed {
                    description = format!("{description} ({observed})");
                }
                if !active.happened {
                    not_happened.push(format!("{} at {:.1} s", fault.kind.name(), start_ns as f64 / 1e9));
                }
                windows.push(FaultWindow { kind: fault.kind.name().to_string(), description, start_ns, end_ns });
                if let Err(e) = healed {
                    notes.push(format!("healing {} failed: {e}", fault.kind.name()));
                    nemesis.heal_all();
                }
            }
            Err(e) => {
                notes.push(format!("{} could not be applied: {e}", fault.kind.name()));
                nemesis.heal_all();
            }
        }
    }
    let remaining = options.time_limit.saturating_sub(started.elapsed());
    std::thread::sleep(remaining);
    nemesis.heal_all();
    let healed_ns = recorder.now_ns();
    println!("jepsen: {:>6.1} s  healed; waiting for the cluster to converge", healed_ns as f64 / 1e9);

    // The clients keep going for a while after the heal: writes must be acknowledged again
    // once everything is healed. Then the load stops and the cluster must converge.
    let mut checks = FinalChecks::default();
    let write_acknowledged_since_heal = || {
        recorder.ops().iter().any(|op| {
            op.outcome == Outcome::Ok
                && op.start_ns > healed_ns
                && matches!(op.action, Action::Add { .. } | Action::Write { .. } | Action::Version { .. })
        })
    };
    // Nodes restarted by the last heal need a few seconds to start and elect leaders; the
    // clients keep going until a write is acknowledged (or the recovery deadline), then a while.
    poll_until(options.recovery_timeout.min(Duration::from_secs(90)), write_acknowledged_since_heal);
    std::thread::sleep(RECOVERY_LOAD);
    shared.stop.store(true, Ordering::Release);
    for client in clients {
        let _ = client.join();
    }
    // The snapshot fault deletes its filler in its window; anything a failed deletion left
    // (or a filler write that took effect late) goes now, before anything is counted.
    checks.filler_assets_left = nemesis.remove_filler(Duration::from_secs(60));
    if checks.filler_assets_left > 0 {
        notes.push(format!(
            "{} filler assets of the snapshot fault could not be deleted: their annotations count in raw_total",
            checks.filler_assets_left
        ));
    }
    checks.writes_ok_after_heal = recorder
        .ops()
        .iter()
        .filter(|op| op.outcome == Outcome::Ok && op.start_ns > healed_ns)
        .filter(|op| matches!(op.action, Action::Add { .. } | Action::Write { .. } | Action::Version { .. }))
        .count() as u64;
    let mut convergence = Err(String::new());
    checks.converged = poll_until(options.recovery_timeout, || {
        convergence = cluster.convergence();
        convergence.is_ok()
    });
    checks.converged_after_ms = (recorder.now_ns().saturating_sub(healed_ns)) / 1_000_000;
    if !checks.converged {
        checks.convergence_error = convergence.err();
        notes.push(format!("the cluster did not converge after healing:\n{}", cluster.diagnostics()));
    }

    let final_reads_after_ns = recorder.now_ns();
    final_reads(cluster, options.workload, &recorder);
    final_checks(cluster, options.workload, &mut checks);
    checks.faults_that_did_not_happen = not_happened;
    for window in &windows {
        let invoked = recorder.ops().iter().filter(|op| op.start_ns >= window.start_ns && op.start_ns < window.end_ns).count();
        if invoked == 0 {
            checks.faults_without_load.push(format!("{} at {:.1} s", window.kind, window.start_ns as f64 / 1e9));
        }
    }

    let ops = recorder.ops();
    let fault_effects = fault_effects(&ops, &windows);
    let (workload_validity, workload_verdict) = check_workload(options.workload, &ops, final_reads_after_ns);
    let expected_raw = expected_raw_total(options.workload, &workload_verdict);
    checks.raw_expected = expected_raw;
    checks.raw_total_matches = expected_raw.map(|expected| match options.workload {
        // Superseded versions stay in the raw store: every acknowledged one is there, and at
        // most every unknown one besides.
        WorkloadKind::Versions => checks.raw_total >= expected,
        _ => checks.raw_total == expected,
    });
    let mut validity = workload_validity;
    let final_ok = checks.converged
        && checks.digests_equal
        && checks.index_docs_equal_buckets
        && checks.searches_identical
        && checks.raw_total_matches != Some(false)
        && checks.writes_ok_after_heal > 0;
    if !final_ok {
        validity = Validity::Invalid;
    }
    if (!checks.faults_without_load.is_empty() || !checks.faults_that_did_not_happen.is_empty()) && validity == Validity::Valid {
        validity = Validity::Unknown;
    }
    let verdict = serde_json::json!({
        "valid": validity,
        "seed": options.seed,
        "workload": options.workload.name(),
        "nemeses": names(&options.nemeses),
        "nodes": options.nodes,
        "time_limit_s": options.time_limit.as_secs(),
        "operations": ops.len(),
        "faults": windows.len(),
        "checker": workload_verdict,
        "final": checks,
        "fault_effects": fault_effects,
        "notes": notes,
    });
    write_results(out, options, &ops, &windows, &verdict, validity, &notes, started)?;
    Ok(RunOutcome { validity, out: out.clone(), verdict })
}

/// What each fault did to the clients: operations invoked during it by outcome, per node, and
/// the distinct errors seen (so a report shows, say, that a full disk refused writes with a
/// named error rather than crashing).
fn fault_effects(ops: &[Op], windows: &[FaultWindow]) -> Vec<serde_json::Value> {
    windows
        .iter()
        .map(|window| {
            let during: Vec<&Op> = ops.iter().filter(|op| op.start_ns >= window.start_ns && op.start_ns < window.end_ns).collect();
            let mut by_node: BTreeMap<u64, BTreeMap<&str, u64>> = BTreeMap::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            for op in &during {
                let outcome = match op.outcome {
                    Outcome::Ok => "ok",
                    Outcome::Fail => "fail",
                    Outcome::Info => "info",
                };
                *by_node.entry(op.node).or_default().entry(outcome).or_default() += 1;
                if let Some(error) = &op.error {
                    // The error without the node's address, so equal errors from different nodes merge.
                    let text: String = error.split_once(": ").map_or(error.as_str(), |(_, rest)| rest).chars().take(160).collect();
                    *errors.entry(text).or_default() += 1;
                }
            }
            let mut errors: Vec<(String, u64)> = errors.into_iter().collect();
            errors.sort_by(|a, b| b.1.cmp(&a.1));
            errors.truncate(8);
            serde_json::json!({
                "kind": window.kind,
                "start_s": window.start_ns as f64 / 1e9,
                "operations": during.len(),
                "by_node": by_node,
                "errors": errors,
            })
        })
        .collect()
}

/// Reads everything back from every node, recorded as operations of extra processes.
fn final_reads(cluster: &DockerCluster, workload: WorkloadKind, recorder: &Recorder) {
    let http = Http::new(Duration::from_secs(15));
    for node in cluster.nodes() {
        let process = 10_000 + node.id;
        for asset in workload.assets() {
            let start_ns = recorder.now_ns();
            let (action, result) = match workload {
                WorkloadKind::Set | WorkloadKind::Versions => {
                    let model = if workload == WorkloadKind::Set { SET_MODEL } else { VERSION_MODEL };
                    match read_buckets(&http, &node.base_url(), &asset, model, true) {
                        Ok(seen) => (Action::Read { asset, strong: true, seen }, Ok(())),
                        Err(e) => (Action::Read { asset, strong: true, seen: vec![] }, Err(e)),
                    }
                }
                WorkloadKind::Register => match read_register(&http, &node.base_url(), &asset) {
                    Ok(value) => (Action::RegisterRead { key: asset, value }, Ok(())),
                    Err(e) => (Action::RegisterRead { key: asset, value: None }, Err(e)),
                },
            };
            let (outcome, error) = match result {
                Ok(()) => (Outcome::Ok, None),
                Err(e) => (Outcome::Fail, Some(e.to_string())),
            };
            recorder.record(Op { index: 0, process, node: node.id, action, outcome, start_ns, end_ns: recorder.now_ns(), error });
        }
    }
}

/// Digests, `index_docs == buckets`, raw totals, and the same searches through every node.
fn final_checks(cluster: &DockerCluster, workload: WorkloadKind, checks: &mut FinalChecks) {
    let mut digests: BTreeMap<u32, BTreeMap<u64, String>> = BTreeMap::new();
    let mut raw: BTreeMap<u32, u64> = BTreeMap::new();
    checks.index_docs_equal_buckets = true;
    for (id, status) in cluster.statuses(true) {
        let Ok(status) = status else {
            checks.digest_mismatches.push(format!("node {id} did not answer /v1/cluster?digest=true"));
            continue;
        };
        for (shard, replica) in status.local_replicas() {
            digests.entry(shard).or_default().insert(id, replica.raw_digest.clone().unwrap_or_default());
            raw.insert(shard, replica.raw_annotations.unwrap_or(0));
            if replica.buckets != replica.index_docs || replica.buckets.is_none() {
                checks.index_docs_equal_buckets = false;
                checks
                    .index_mismatches
                    .push(format!("node {id} shard {shard}: buckets {:?}, index_docs {:?}", replica.buckets, replica.index_docs));
            }
        }
    }
    for (shard, by_node) in &digests {
        let distinct: BTreeSet<&String> = by_node.values().collect();
        if distinct.len() != 1 || distinct.contains(&String::new()) {
            checks.digest_mismatches.push(format!("shard {shard}: {by_node:?}"));
        }
    }
    checks.digests_equal = checks.digest_mismatches.is_empty() && !digests.is_empty();
    checks.raw_total = raw.values().sum();

    // The same strong searches through every node must give the same clips.
    let http = Http::new(Duration::from_secs(15));
    let queries: Vec<serde_json::Value> = match workload {
        WorkloadKind::Set => (0..4)
            .map(|k| serde_json::json!({ "clauses": [{ "type": "label", "label": format!("thing-{k}") }], "limit": 100, "per_asset": 100, "consistency": "strong", "evidence": false }))
            .collect(),
        WorkloadKind::Versions => (1..=3)
            .map(|v| serde_json::json!({ "clauses": [{ "type": "label", "label": format!("Version {v}") }], "limit": 100, "consistency": "strong", "evidence": false }))
            .collect(),
        WorkloadKind::Register => vec![],
    };
    checks.searches_identical = true;
    for query in queries {
        let mut answers: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for node in cluster.nodes() {
            let answer = match http.post_json(&node.url("/v1/search"), &query) {
                Ok(mut reply) => {
                    if let Some(object) = reply.as_object_mut() {
                        object.remove("took_ms");
                    }
                    reply["assets"].to_string()
                }
                Err(e) => format!("error: {e}"),
            };
            answers.entry(answer).or_default().push(node.id);
        }
        if answers.len() != 1 || answers.keys().any(|a| a.starts_with("error")) {
            checks.searches_identical = false;
            let shown: Vec<String> = answers.iter().map(|(answer, nodes)| format!("nodes {nodes:?}: {answer:.300}")).collect();
            checks.search_differences.push(format!("{query}: {}", shown.join(" | ")));
        }
    }
    if workload == WorkloadKind::Versions {
        // Only the final version is searchable on each asset.
        for node in cluster.nodes() {
            for asset in workload.assets() {
                let url =
                    format!("{}/v1/assets/{}/buckets?from_ms=0&to_ms=10000&consistency=strong", node.base_url(), encode_segment(&asset));
                if let Ok(reply) = http.get_json(&url) {
                    let labels: BTreeSet<String> = reply["buckets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|b| b["annotations"].as_array().cloned().unwrap_or_default())
                        .filter(|a| a["model"].as_str() == Some(VERSION_MODEL))
                        .filter_map(|a| a["label"].as_str().map(str::to_string))
                        .collect();
                    if labels.len() > 1 {
                        checks.searches_identical = false;
                        checks.search_differences.push(format!("node {} asset {asset}: buckets show labels {labels:?}", node.id));
                    }
                }
            }
        }
    }
}

fn check_workload(workload: WorkloadKind, ops: &[Op], final_reads_after_ns: u64) -> (Validity, serde_json::Value) {
    match workload {
        WorkloadKind::Set => {
            let verdict = set_full::check(ops, &set_full::SetOptions { final_reads_after_ns: Some(final_reads_after_ns) });
            (verdict.valid, serde_json::to_value(&verdict).unwrap_or_default())
        }
        WorkloadKind::Register => {
            let verdict = linearizable::check(ops, &linearizable::LinearOptions::default());
            (verdict.valid, serde_json::to_value(&verdict).unwrap_or_default())
        }
        WorkloadKind::Versions => {
            let verdict = crate::versions_check::check(ops, final_reads_after_ns);
            (verdict.valid.unwrap_or(Validity::Unknown), serde_json::to_value(&verdict).unwrap_or_default())
        }
    }
}

/// The raw annotation total the cluster must hold: the set's acknowledged and recovered
/// elements; 4 per acknowledged model version; none for the register.
fn expected_raw_total(workload: WorkloadKind, verdict: &serde_json::Value) -> Option<u64> {
    match workload {
        WorkloadKind::Set => Some(verdict["ok"].as_u64()? + verdict["lost"].as_u64()? + verdict["recovered"].as_u64()?),
        WorkloadKind::Versions => Some(verdict["versions_acknowledged"].as_u64()? * crate::workloads::VERSION_ANNOTATIONS),
        WorkloadKind::Register => Some(0),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    std::fs::write(path, text).map_err(io_error(path))
}

#[allow(clippy::too_many_arguments)]
fn write_results(
    out: &Path,
    options: &RunOptions,
    ops: &[Op],
    windows: &[FaultWindow],
    verdict: &serde_json::Value,
    validity: Validity,
    notes: &[String],
    started: Instant,
) -> Result<(), RunError> {
    let history = out.join("history.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&history).map_err(io_error(&history))?);
    for op in ops {
        let line = serde_json::to_string(op).unwrap_or_default();
        writeln!(file, "{line}").map_err(io_error(&history))?;
    }
    file.flush().map_err(io_error(&history))?;
    write_json(&out.join("faults.json"), &windows)?;
    write_json(&out.join("verdict.json"), verdict)?;
    let title =
        format!("{} · {} nodes · {} · seed {}", options.workload.name(), options.nodes, names(&options.nemeses).join(","), options.seed);
    let latency = crate::report::latency_svg(ops, windows, &title);
    std::fs::write(out.join("latency.svg"), latency).map_err(io_error(out))?;
    let throughput = crate::report::throughput_svg(ops, windows, &title);
    std::fs::write(out.join("throughput.svg"), throughput).map_err(io_error(out))?;
    let stats = crate::report::op_stats(ops);
    let nemeses: Vec<String> = names(&options.nemeses).iter().map(|n| n.to_string()).collect();
    let started_at = utc_timestamp(std::time::SystemTime::now());
    let summary = crate::report::Summary {
        title: &title,
        validity,
        seed: options.seed,
        command: &options.command,
        started_at: &started_at,
        duration_s: started.elapsed().as_secs_f64(),
        nodes: options.nodes,
        workload: options.workload.name(),
        nemeses: &nemeses,
        faults: windows,
        verdict,
        op_stats: &stats,
        latency_svg_file: "latency.svg",
        throughput_svg_file: "throughput.svg",
        notes,
    };
    std::fs::write(out.join("index.html"), crate::report::html_summary(&summary)).map_err(io_error(out))?;
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS UTC` (civil date from days since the epoch, Howard Hinnant's algorithm).
pub fn utc_timestamp(time: std::time::SystemTime) -> String {
    let seconds = time.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", of_day / 3_600, of_day % 3_600 / 60, of_day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_fault_config_compacts_fast_and_has_no_vector_space() {
        use crate::cluster::{node_config_toml, Credentials};
        let dir = tempfile::tempdir().unwrap();
        let mut options = ClusterOptions::new(3, 4, 3);
        options.extra_toml = COMPACTING_RAFT_TOML.to_string();
        options.root_toml = SNAPSHOT_ROOT_TOML.to_string();
        let members: Vec<(u64, String, String)> =
            (1..=3).map(|id| (id, format!("127.0.0.1:{}", 1000 + id), format!("127.0.0.1:{}", 2000 + id))).collect();
        let path = dir.path().join("node-1.toml");
        std::fs::write(&path, node_config_toml(&options, &Credentials::default(), 1, &dir.path().join("node-1"), &members)).unwrap();
        let config = rushes_config::Config::load(Some(&path), vec![], &[]).expect("the node accepts the config");
        assert!(config.vector_spaces.is_empty(), "{:?}", config.vector_spaces);
        assert_eq!((config.raft.log_retain_entries, config.raft.snapshot_log_entries), (20, 50));
        assert_eq!(config.raft.snapshot_chunk_bytes, 16_384);
        assert_eq!(config.raft.snapshot_transfer_bytes_per_s, 1 << 20);
        assert_eq!(config.cluster.shards, 4);
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let at = |s: u64| utc_timestamp(std::time::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_796_547_071), "2026-12-06 08:51:11 UTC");
    }
}
