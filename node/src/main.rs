//! The `rushes` binary.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rushes_client::Client;
use rushes_config::Config;
use rushes_node::cli::bench;
use rushes_node::cli::demo::{self, DemoOptions};
use rushes_node::init_logging;
use rushes_node::node::{shard_options, Node};
use rushes_protocol::{SearchMode, SearchRequest};
use rushes_sample::GenConfig;

/// glibc's malloc spent about a quarter of all CPU time under ingest (many small, short-lived
/// allocations across the raft, fusion and index threads); mimalloc's thread-local free lists
/// cut that (docs/benchmarks.md).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages on its arenas; each time it purges a freed page
/// and reuses the range, the kernel zeroes a whole 2 MiB page on the next touch. Under 3-node
/// ingest that zeroing was a quarter of all CPU time (perf: `clear_page_erms` under
/// `do_huge_pmd_anonymous_page`); with 4 KiB pages acknowledged ingest rose 12.1k/s → 14.2k/s
/// (docs/benchmarks.md). Children (`cluster local`, benches) inherit the setting.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of ours.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        // Older kernels lack the flag: huge pages stay on, which is only slower.
        eprintln!("warning: could not disable transparent huge pages: {}", std::io::Error::last_os_error());
    }
}

#[derive(Parser)]
#[command(name = "rushes", version, about = "Search node for raw production footage annotations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// TOML config file (every key has a default; see docs/config.md).
    #[arg(long, env = "RUSHES_CONFIG")]
    config: Option<PathBuf>,
    /// Override any config key, e.g. --set fusion.bucket_ms=500 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// Where a command sends its requests, and with which credentials.
#[derive(clap::Args, Clone)]
struct ClientArgs {
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    server: String,
    /// API key, sent as Authorization: Bearer (needed when the node has [[auth.keys]]).
    #[arg(long, env = "RUSHES_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificate authority to trust for an https:// server (e.g. a private CA).
    #[arg(long, env = "RUSHES_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl ClientArgs {
    fn client(&self) -> Result<Client, CliError> {
        self.configure(Client::new(&self.server))
    }

    /// A client whose requests end within `timeout` (connect included).
    fn client_with_timeout(&self, timeout: std::time::Duration) -> Result<Client, CliError> {
        self.configure(Client::with_timeout(&self.server, timeout))
    }

    fn configure(&self, client: Client) -> Result<Client, CliError> {
        let client = client.with_token(self.token.clone());
        Ok(match &self.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
                client.with_ca_pem(&pem)?
            }
            None => client,
        })
    }
}

#[derive(clap::Args)]
struct WaitArgs {
    /// Return once the change is queued instead of waiting for the moves.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting (the moves go on) after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_s: u64,
}

impl WaitArgs {
    fn wait(&self) -> Option<std::time::Duration> {
        (!self.no_wait).then(|| std::time::Duration::from_secs(self.timeout_s))
    }

    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_s)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// HTTP listen address (node.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (node.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print the effective configuration and exit.
        #[arg(long)]
        print_config: bool,
        /// Print a commented example of every key with its default and exit.
        #[arg(long)]
        print_example_config: bool,
    },
    /// One node on an embedded data dir with a generated sample season, serving search.
    Demo {
        #[arg(long, default_value = "./rushes-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: String,
        /// Hours of sample footage to generate.
        #[arg(long, default_value_t = 3.0)]
        hours: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Write a deterministic sample season (assets, annotations, ground truth) as NDJSON.
    Gen {
        #[arg(long, default_value_t = 3.0)]
        hours: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value = "./rushes-sample")]
        out: PathBuf,
    },
    /// Send annotations (NDJSON, one per line) to a running node in batches, or a subtitle
    /// file (.srt / .vtt, with --asset and --language) as dialogue annotations; then wait until
    /// the imported assets are searchable (a strong read of each), unless --no-wait.
    Import {
        /// NDJSON file of annotations ("-" for standard input), or a .srt / .vtt file.
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value_t = 2000)]
        batch: usize,
        /// Subtitles: the asset the file belongs to.
        #[arg(long)]
        asset: Option<String>,
        /// Subtitles: the language of the file (`en`, `fr`, `pt-BR`, ...).
        #[arg(long)]
        language: Option<String>,
        /// Subtitles: the version of this file; a higher one replaces earlier imports in search.
        #[arg(long, default_value = "1")]
        model_version: String,
        /// Return once the last batch is acknowledged, without waiting until it is searchable.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting until searchable after this many seconds (the import stays stored).
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
        wait_timeout: f64,
        /// Also store asset records first (titles, series, season, episode, fps, duration): an
        /// NDJSON file of `{"asset_id", "title", ...}` lines, such as `rushes gen`'s assets.ndjson.
        #[arg(long, value_name = "FILE")]
        records: Option<PathBuf>,
    },
    /// Search a running node and print the clips: timecodes HH:MM:SS:FF at each asset's fps
    /// (read from its record), each label of the evidence once with its count.
    Search {
        /// Free-text query, e.g. 'Joey in the kitchen' or '"we were on a break"'.
        q: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, value_parser = ["intersection", "union"], default_value = "intersection")]
        mode: String,
        #[arg(long, default_value_t = 5)]
        per_asset: usize,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Print the raw JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Back up every shard (asset records and raw annotations, each shard at a recorded Raft
    /// index, with a manifest and SHA-256 checksums) into a new directory, while the cluster
    /// keeps serving. Needs an admin key.
    Backup {
        /// Directory to create (must be new or empty).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check a backup's checksums, then send it to a cluster (any node or shard count) as
    /// ordinary writes. Needs a write key.
    Restore {
        /// A directory written by `rushes backup`.
        dir: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Recreate buckets and indexes from the raw store (the node must be stopped).
    Rebuild {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Operate a cluster: its status, or a local cluster of child processes.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// API keys: `rushes keys create --name editors --scopes read` prints a new key and the
    /// [[auth.keys]] entry (its hash) to put in the nodes' config.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Measure ingest, time to searchable, query latency, memory and disk on a generated corpus.
    Bench {
        #[arg(long, default_value_t = 50.0)]
        hours: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value = "./rushes-bench")]
        work_dir: PathBuf,
        /// Concurrent ingest clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Also write the report as JSON here.
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Keep the node's data dir (WORK_DIR/bench-node-<hours>h-seed<seed>); a later run with
        /// the same hours and seed then measures queries on it without ingesting again.
        #[arg(long)]
        keep_data: bool,
        #[command(flatten)]
        load: bench::LoadArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// A new random key; only its hash goes into the config.
    Create {
        /// Who holds it (shown in logs): lower-case letters, digits, '-', '_', '.'.
        #[arg(long)]
        name: String,
        /// Comma-separated: read, write, admin.
        #[arg(long, default_value = "read")]
        scopes: String,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// A certificate authority for the cluster and a certificate per node (mutual TLS between
    /// nodes). Writes DIR/ca.pem, DIR/ca.key (keep it offline) and DIR/node-N.pem / .key. With
    /// an existing DIR/ca.key, issues only the certificates of nodes that lack one.
    Certs {
        /// Nodes 1..=N.
        #[arg(long)]
        nodes: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "rushes-local")]
        cluster_id: String,
        /// Also a server certificate for HTTPS (DIR/http.pem, DIR/http.key), valid for these
        /// comma-separated host names or IP addresses (as clients dial them).
        #[arg(long, value_delimiter = ',')]
        http_names: Vec<String>,
    },
    /// Nodes, shards, leaders, and each replica's commit/applied/fused/indexed index and lag.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Print the raw JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Add a node to a running cluster: start it first with `cluster.join = true` (its config
    /// lists itself and at least one member), then run this against any member. Waits until
    /// the node follows the cluster map; `--rebalance` then moves replicas onto it.
    AddNode {
        #[arg(long)]
        id: u64,
        /// Where peers reach the new node's Raft transport (host:port).
        #[arg(long)]
        raft_addr: String,
        /// Where clients reach the new node's HTTP API (host:port).
        #[arg(long)]
        http_addr: String,
        #[arg(long)]
        rebalance: bool,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drain a node (its replicas move to the least loaded others, one group at a time, each
    /// new replica caught up before the old one leaves), then remove it from the cluster.
    RemoveNode {
        id: u64,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move every replica of OLD (alive or dead) to NEW, then remove OLD. NEW is added first
    /// when --raft-addr and --http-addr are given (start it with cluster.join = true).
    ReplaceNode {
        old: u64,
        #[arg(long = "with")]
        with_node: u64,
        #[arg(long, requires = "http_addr")]
        raft_addr: Option<String>,
        #[arg(long, requires = "raft_addr")]
        http_addr: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move one replica of a shard from one node to another.
    MoveReplica {
        #[arg(long)]
        shard: u32,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give up the queued moves and the moves in flight that are not past their promotion (a
    /// move to a node that never started holds the queue until then).
    CancelMoves {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Spread replicas evenly over the members (the fewest moves; at most
    /// --max-concurrent-moves at once; snapshot transfer throttled by
    /// raft.snapshot_transfer_bytes_per_s).
    Rebalance {
        #[arg(long)]
        max_concurrent_moves: Option<usize>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write D/node-1.toml .. D/node-N.toml and run `rushes serve --config D/node-N.toml` for
    /// each (node N serves HTTP on 127.0.0.1:P+N-1, Raft on P+100+N-1) until Ctrl-C.
    Local {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value = "./rushes-cluster")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 7700)]
        base_port: u16,
        #[arg(long, default_value_t = 4)]
        shards: u32,
        /// Replicas per shard (default: every node holds every shard, up to 3).
        #[arg(long)]
        replication_factor: Option<usize>,
    },
    /// Start one more node for the local cluster in DATA_DIR (the next id; `rushes cluster
    /// local` keeps running the others), add it to the cluster, and run it until Ctrl-C.
    LocalAddNode {
        #[arg(long, default_value = "./rushes-cluster")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 7700)]
        base_port: u16,
        /// Then spread replicas evenly, onto it.
        #[arg(long)]
        rebalance: bool,
    },
    /// Three local nodes, replication factor 3: acknowledged ingest, query latency, failover
    /// after a leader is killed, catch-up of a replica that missed writes.
    Bench {
        #[arg(long, default_value_t = 20.0)]
        hours: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value = "./rushes-bench")]
        work_dir: PathBuf,
        /// Concurrent ingest clients (spread over the nodes).
        #[arg(long, default_value_t = 6)]
        clients: usize,
        #[arg(long, default_value_t = 50)]
        queries: usize,
        /// First HTTP port (node N: P+N-1; Raft: P+100+N-1).
        #[arg(long, default_value_t = 7750)]
        base_port: u16,
        /// Annotations written while a replica is down.
        #[arg(long, default_value_t = 100_000)]
        catch_up: usize,
        /// Node processes (3..=9; replication factor 3). Above 3, searches go through a node
        /// that lacks shards.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Nodes keep only this many log entries past what every active replica has (and
        /// compact every half second), so the restarted replica must catch up by snapshot.
        /// Default: the config's defaults, under which it catches up from the log.
        #[arg(long)]
        compact_every: Option<u64>,
        /// Keep the nodes' data directories and logs (printed at the end) instead of deleting them.
        #[arg(long)]
        keep_data: bool,
        /// Run the nodes without mutual TLS (cluster.insecure_peers), to measure what TLS costs.
        #[arg(long)]
        insecure_peers: bool,
        /// At the end, add a node and rebalance onto it under a steady search and ingest load
        /// (time, moves, snapshot bytes, and the load's latencies before and during).
        #[arg(long)]
        rebalance: bool,
        /// Also write the report as JSON here.
        #[arg(long)]
        json_out: Option<PathBuf>,
    },
}

type CliError = Box<dyn std::error::Error + Send + Sync>;

fn load_config(args: &ConfigArgs, extra: Vec<(String, String)>) -> Result<Config, CliError> {
    let mut overrides = Vec::new();
    for item in &args.overrides {
        let (key, value) = item.split_once('=').ok_or_else(|| format!("--set {item:?}: expected KEY=VALUE, e.g. fusion.bucket_ms=500"))?;
        overrides.push((key.trim().to_string(), value.trim().to_string()));
    }
    overrides.extend(extra);
    Ok(Config::load(args.config.as_deref(), std::env::vars(), &overrides)?)
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve { config, listen, data_dir, print_config, print_example_config } => {
            if print_example_config {
                print!("{}", Config::example_toml());
                return Ok(());
            }
            let mut extra = Vec::new();
            if let Some(listen) = listen {
                extra.push(("node.listen".to_string(), listen));
            }
            if let Some(dir) = data_dir {
                extra.push(("node.data_dir".to_string(), dir.display().to_string()));
            }
            let config = load_config(&config, extra)?;
            if print_config {
                print!("{}", config.to_toml_string());
                return Ok(());
            }
            init_logging(config.log.level.as_str(), config.log.format == rushes_config::LogFormat::Json);
            serve(config)
        }
        Command::Demo { data_dir, listen, hours, seed, config } => {
            let config = load_config(&config, vec![])?;
            init_logging(config.log.level.as_str(), false);
            demo::run_demo(DemoOptions { data_dir, listen, hours, seed, config })
        }
        Command::Gen { hours, seed, out } => {
            if !(hours.is_finite() && hours > 0.0 && hours <= 10_000.0) {
                return Err("--hours must be in (0, 10000]".into());
            }
            if seed > i64::MAX as u64 {
                return Err(format!("--seed must be at most {} (the node's embedder.url = \"demo:SEED\" holds it)", i64::MAX).into());
            }
            std::fs::create_dir_all(&out)?;
            let bar = demo::progress_bar(0, "generating", false);
            let summary = rushes_sample::write_season(&GenConfig { hours, seed, ..GenConfig::default() }, &out, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            println!(
                "wrote {} episodes ({:.1} h), {} annotations, {:.1} MiB to {}",
                summary.episodes,
                summary.hours,
                summary.annotations,
                summary.bytes as f64 / 1048576.0,
                out.display()
            );
            println!(
                "semantic queries need the demo embedder of this season on the node: rushes serve --set embedder.url={}",
                rushes_config::EmbedderConfig::demo_url(seed)
            );
            Ok(())
        }
        Command::Keys { command: KeysCommand::Create { name, scopes } } => {
            let scopes: Vec<String> = scopes.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            if let Some(bad) = scopes.iter().find(|s| !rushes_config::ApiKeyConfig::SCOPES.contains(&s.as_str())) {
                return Err(format!("--scopes: {bad:?} is not a scope; use read, write and/or admin").into());
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)) {
                return Err("--name: use lower-case letters, digits, '-', '_' and '.'".into());
            }
            let key = rushes_node::http::auth::new_key();
            println!("key (give it to its holder; it is not stored anywhere): {key}");
            println!("\n[[auth.keys]]\nname = {name:?}\nhash = {:?}\nscopes = {scopes:?}", rushes_node::http::auth::key_hash(&key));
            Ok(())
        }
        Command::Cluster { command: ClusterCommand::Certs { nodes, out, cluster_id, http_names } } => {
            if !(1..=1000).contains(&nodes) {
                return Err("--nodes must be 1..=1000".into());
            }
            let written = rushes_node::cli::local_cluster::write_certificates_with_http(&out, &cluster_id, nodes, &http_names)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            println!("set in node N's config: cluster.tls_ca_file = ca.pem, tls_cert_file = node-N.pem, tls_key_file = node-N.key");
            if !http_names.is_empty() {
                println!("for HTTPS: http.tls_cert_file = http.pem, http.tls_key_file = http.key; clients trust ca.pem (--ca-file)");
            }
            Ok(())
        }
        Command::Import { file, client, batch, asset, language, model_version, no_wait, wait_timeout, records } => {
            // Checked first: nothing is read or sent for an id the server would refuse.
            if let Some(asset) = &asset {
                rushes_node::cli::import::check_asset_flag(asset)?;
            }
            if let Some(records) = &records {
                // Every line is checked before the first is sent.
                let parsed = rushes_node::cli::import::read_records(records)?;
                let stored = rushes_node::cli::import::put_records(&client.client()?, &parsed)?;
                println!("records: {stored} asset records stored from {}", records.display());
            }
            if !(wait_timeout.is_finite() && wait_timeout > 0.0 && wait_timeout <= 86_400.0) {
                return Err(format!("--wait-timeout {wait_timeout}: give seconds in (0, 86400], e.g. --wait-timeout 120").into());
            }
            let wait = (!no_wait).then(|| std::time::Duration::from_secs_f64(wait_timeout));
            let extension = file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            let is_subtitle = matches!(extension.as_deref(), Some("srt" | "vtt"));
            let assets = match (asset, language) {
                (Some(asset), Some(language)) => import_subtitles(&file, &client, batch, &asset, &language, &model_version)?,
                (None, None) if !is_subtitle => import(&file, &client, batch, wait.is_some())?,
                _ => return Err("a subtitle import needs both --asset ID and --language LANG (e.g. --asset s01e01 --language en)".into()),
            };
            match wait {
                None => println!("--no-wait: not waiting until searchable"),
                Some(timeout) => {
                    let confirmed = rushes_node::cli::import::wait_searchable(&assets, timeout, |remaining| {
                        client.client_with_timeout(remaining).map_err(|e| e.to_string())
                    })?;
                    for asset in &confirmed.missing {
                        eprintln!("warning: asset {asset} has no record and no annotations any more (deleted since the import?)");
                    }
                    println!("searchable: {} assets confirmed in {:.1} s", confirmed.assets, confirmed.took.as_secs_f64());
                }
            }
            Ok(())
        }
        Command::Search { q, client, mode, per_asset, limit, json } => {
            let client = client.client()?;
            let mode = if mode == "union" { SearchMode::Union } else { SearchMode::Intersection };
            let request =
                SearchRequest { q: Some(q), mode: Some(mode), per_asset: Some(per_asset), limit: Some(limit), ..Default::default() };
            let response = client.search(&request)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&response)?);
                return Ok(());
            }
            for warning in &response.warnings {
                eprintln!("warning: {warning}");
            }
            // Each asset's record once, for its fps (asset ids are path-safe: A-Z a-z 0-9 - _ . :).
            let text = rushes_node::cli::search::format_response(&response, |asset_id| {
                rushes_node::cli::search::AssetTimes::from_record(client.get_json(&format!("/v1/assets/{asset_id}")))
            });
            print!("{text}");
            Ok(())
        }
        Command::Backup { out, client } => {
            let started = std::time::Instant::now();
            let manifest = rushes_node::cli::backup::backup(&client.client()?, &out, |line| eprintln!("{line}"))?;
            println!(
                "backed up {} annotations and {} asset records from {} shards to {} in {:.1} s",
                manifest.annotations,
                manifest.asset_records,
                manifest.shard_count,
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Restore { dir, client } => {
            let report = rushes_node::cli::backup::restore(&client.client()?, &dir, |line| eprintln!("{line}"))?;
            println!(
                "restored {} annotations and {} asset records in {:.1} s ({:.0} annotations/s)",
                report.annotations,
                report.asset_records,
                report.took.as_secs_f64(),
                report.annotations as f64 / report.took.as_secs_f64().max(1e-3)
            );
            Ok(())
        }
        Command::Rebuild { config, data_dir } => {
            let mut extra = Vec::new();
            if let Some(dir) = data_dir {
                extra.push(("node.data_dir".to_string(), dir.display().to_string()));
            }
            let config = load_config(&config, extra)?;
            init_logging(config.log.level.as_str(), false);
            let options = shard_options(&config);
            for shard in rushes_node::node::shard_map(&config)?.shards_on(config.node.id) {
                let started = std::time::Instant::now();
                let (assets, docs) = rushes_node::shard::rebuild_shard(&config.node.data_dir, shard, &options)?;
                println!("shard {shard}: rebuilt {assets} assets, {docs} bucket documents in {:.1}s", started.elapsed().as_secs_f64());
            }
            Ok(())
        }
        Command::Cluster { command: ClusterCommand::AddNode { id, raft_addr, http_addr, rebalance, wait, client } } => {
            Ok(rushes_node::cli::membership::add_node(&client.client()?, id, &raft_addr, &http_addr, rebalance, wait.wait())?)
        }
        Command::Cluster { command: ClusterCommand::RemoveNode { id, wait, client } } => {
            Ok(rushes_node::cli::membership::remove_node(&client.client()?, id, wait.timeout())?)
        }
        Command::Cluster { command: ClusterCommand::ReplaceNode { old, with_node, raft_addr, http_addr, wait, client } } => {
            let addrs = raft_addr.as_deref().zip(http_addr.as_deref());
            Ok(rushes_node::cli::membership::replace_node(&client.client()?, old, with_node, addrs, wait.timeout())?)
        }
        Command::Cluster { command: ClusterCommand::MoveReplica { shard, from, to, wait, client } } => {
            Ok(rushes_node::cli::membership::move_replica(&client.client()?, shard, from, to, wait.wait())?)
        }
        Command::Cluster { command: ClusterCommand::CancelMoves { client } } => {
            Ok(rushes_node::cli::membership::cancel_moves(&client.client()?)?)
        }
        Command::Cluster { command: ClusterCommand::Rebalance { max_concurrent_moves, wait, client } } => {
            Ok(rushes_node::cli::membership::rebalance(&client.client()?, max_concurrent_moves, wait.wait())?)
        }
        Command::Cluster { command: ClusterCommand::Status { client, json } } => {
            let status = client.client()?.get_json("/v1/cluster")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", rushes_node::cli::local_cluster::format_status(&status));
            }
            Ok(())
        }
        Command::Cluster { command: ClusterCommand::Local { nodes, data_dir, base_port, shards, replication_factor } } => {
            let data_dir = std::path::absolute(&data_dir)?;
            let options = rushes_node::cli::local_cluster::LocalClusterOptions {
                nodes,
                data_dir,
                base_port,
                shards,
                replication_factor: replication_factor.unwrap_or(nodes.min(3)),
                peer_tls: true,
            };
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            {
                let stop = stop.clone();
                ctrlc_on_thread(move || stop.store(true, std::sync::atomic::Ordering::SeqCst))?;
            }
            let binary = std::env::current_exe()?;
            rushes_node::cli::local_cluster::run(&options, &binary, || stop.load(std::sync::atomic::Ordering::SeqCst))?;
            Ok(())
        }
        Command::Cluster { command: ClusterCommand::LocalAddNode { data_dir, base_port, rebalance } } => {
            let data_dir = std::path::absolute(&data_dir)?;
            // The running cluster's shape, from its first node's config.
            let first = Config::load(Some(&data_dir.join("node-1.toml")), std::iter::empty::<(String, String)>(), &[]).map_err(|e| {
                format!("{}: {e} (is there a local cluster in {}?)", data_dir.join("node-1.toml").display(), data_dir.display())
            })?;
            let options = rushes_node::cli::local_cluster::LocalClusterOptions {
                nodes: first.cluster.nodes.len(),
                data_dir,
                base_port,
                shards: first.cluster.shards,
                replication_factor: first.cluster.replication_factor,
                peer_tls: !first.cluster.tls_cert_file.is_empty(),
            };
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            {
                let stop = stop.clone();
                ctrlc_on_thread(move || stop.store(true, std::sync::atomic::Ordering::SeqCst))?;
            }
            let binary = std::env::current_exe()?;
            rushes_node::cli::local_cluster::add_node(&options, &binary, rebalance, || stop.load(std::sync::atomic::Ordering::SeqCst))?;
            Ok(())
        }
        Command::Cluster {
            command:
                ClusterCommand::Bench {
                    hours,
                    seed,
                    work_dir,
                    clients,
                    queries,
                    base_port,
                    catch_up,
                    nodes,
                    compact_every,
                    keep_data,
                    insecure_peers,
                    rebalance,
                    json_out,
                },
        } => {
            if !(3..=9).contains(&nodes) {
                return Err("--nodes must be 3..=9 (replication factor 3)".into());
            }
            if seed > i64::MAX as u64 {
                return Err(format!("--seed must be at most {} (the nodes' embedder.url = \"demo:SEED\" holds it)", i64::MAX).into());
            }
            if compact_every.is_some_and(|entries| entries == 0 || entries > 1_000_000) {
                return Err("--compact-every must be 1..=1000000 log entries".into());
            }
            init_logging("warn", false);
            if !(hours.is_finite() && hours > 0.0 && hours <= 10_000.0) {
                return Err("--hours must be in (0, 10000]".into());
            }
            let report = rushes_node::cli::cluster_bench::run_cluster_bench(rushes_node::cli::cluster_bench::ClusterBenchOptions {
                hours,
                seed,
                work_dir,
                clients: clients.max(1),
                queries_per_kind: queries.max(1),
                base_port,
                catch_up_annotations: catch_up,
                nodes,
                compact_every_entries: compact_every,
                keep_data,
                insecure_peers,
                rebalance,
            })?;
            rushes_node::cli::cluster_bench::print_cluster_report(&report);
            if let Some(path) = json_out {
                std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
            }
            Ok(())
        }
        Command::Bench { hours, seed, work_dir, clients, queries, json_out, keep_data, load, config } => {
            let load = load.load_options()?;
            let config = load_config(&config, vec![])?;
            init_logging("warn", false);
            let report = bench::run_bench(bench::BenchOptions {
                hours,
                seed,
                work_dir,
                clients: clients.max(1),
                queries_per_kind: queries.max(1),
                config,
                load,
                keep_data,
            })?;
            bench::print_report(&report);
            if let Some(path) = json_out {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
    }
}

/// Runs `on_signal` once on Ctrl-C or SIGTERM (a small runtime on its own thread).
fn ctrlc_on_thread(on_signal: impl FnOnce() + Send + 'static) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        });
        on_signal();
    });
    Ok(())
}

fn serve(config: Config) -> Result<(), CliError> {
    let listener = TcpListener::bind(config.node.listen).map_err(|e| format!("cannot listen on {}: {e}", config.node.listen))?;
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let node = Node::open(config)?;
        tracing::info!(listen = %node.config.node.listen, shards = node.shards().len(), data_dir = %node.config.node.data_dir.display(), "serving");
        let server = rushes_node::http::server(node.clone(), listener)?;
        let handle = server.handle();
        let server_task = actix_web::rt::spawn(server);
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stopping");
        handle.stop(true).await;
        let _ = server_task.await;
        tokio::task::spawn_blocking(move || node.shutdown()).await?;
        Ok(())
    })
}

/// Parses a subtitle file locally (errors name the line before anything is sent), then sends
/// its cues as dialogue annotations in batches.
fn import_subtitles(
    file: &std::path::Path,
    client_args: &ClientArgs,
    batch: usize,
    asset: &str,
    language: &str,
    version: &str,
) -> Result<BTreeSet<String>, CliError> {
    rushes_node::cli::import::check_asset_flag(asset)?;
    rushes_node::ingest::captions::validate_language(language)?;
    rushes_node::ingest::captions::validate_version(version)?;
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let parse_bar = demo::byte_progress_bar(bytes.len() as u64, "reading subtitles", false);
    let parsed = rushes_node::ingest::subtitles::parse_subtitles(&bytes, &mut |done, _| parse_bar.set_position(done as u64))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    parse_bar.finish_and_clear();
    for warning in &parsed.warnings {
        eprintln!("warning: {warning}");
    }
    let lines = rushes_node::ingest::captions::cue_annotations(&parsed, asset, language, version);
    let bar = demo::progress_bar(lines.len() as u64, "importing cues", false);
    let client = client_args.client()?;
    let server = &client_args.server;
    let (mut sent, mut created) = (0usize, 0usize);
    for chunk in lines.chunks(batch.clamp(1, 10_000)) {
        let reply =
            client.post_ndjson_retrying(&chunk.concat(), 10).map_err(|e| format!("cues {}..{}: {e}", sent + 1, sent + chunk.len()))?;
        sent += chunk.len();
        created += reply.created;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    println!(
        "imported {sent} cues ({created} new) from {} ({}, {:?}) into asset {asset} on {server}",
        file.display(),
        rushes_node::ingest::captions::format_name(parsed.format),
        parsed.encoding
    );
    Ok(BTreeSet::from([asset.to_string()]))
}

/// Sends an NDJSON file in batches; returns the imported assets when `collect_assets`.
fn import(file: &std::path::Path, client_args: &ClientArgs, batch: usize, collect_assets: bool) -> Result<BTreeSet<String>, CliError> {
    let client = client_args.client()?;
    let server = &client_args.server;
    let reader: Box<dyn Read> = if file.as_os_str() == "-" { Box::new(std::io::stdin()) } else { Box::new(std::fs::File::open(file)?) };
    let total_bytes = if file.as_os_str() == "-" { 0 } else { std::fs::metadata(file)?.len() };
    let bar = demo::byte_progress_bar(total_bytes, "importing", false);
    let mut reader = BufReader::new(reader);
    let batch = batch.clamp(1, 10_000);
    let (mut sent, mut created) = (0u64, 0u64);
    let mut assets = BTreeSet::new();
    loop {
        let mut chunk = Vec::new();
        let mut lines = 0;
        while lines < batch && reader.read_until(b'\n', &mut chunk)? > 0 {
            lines += 1;
        }
        if lines == 0 {
            break;
        }
        let reply = client.post_ndjson_retrying(&chunk, 10).map_err(|e| format!("batch starting at line {}: {e}", sent + 1))?;
        if collect_assets {
            rushes_node::cli::import::collect_asset_ids(&chunk, &mut assets);
        }
        sent += lines as u64;
        created += reply.created as u64;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    println!("imported {sent} annotations ({created} new) into {server}");
    Ok(assets)
}
