//! `rushes-jepsen`: the fault-injection suite's command line.
//!
//! ```text
//! cargo run --release -p rushes-jepsen -- test --nodes 5 --workload set \
//!     --nemesis partition,kill,pause --time-limit 120 --seed 7
//! cargo run --release -p rushes-jepsen -- matrix          # every workload × nemesis (docs/jepsen.md)
//! cargo run --release -p rushes-jepsen -- image           # build the node image only
//! cargo run --release -p rushes-jepsen -- image --tag rushes:local  # the image deploy/ runs
//! cargo run --release -p rushes-jepsen -- clean           # remove whatever a killed run left
//! ```
//!
//! Exit status: 0 valid, 1 invalid (a checker found a violation), 2 unknown (too little was
//! observed to tell), 3 the run could not be carried out (Docker missing, bad arguments).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rushes_jepsen::history::Validity;
use rushes_jepsen::nemesis::FaultKind;
use rushes_jepsen::run::{run, RunOptions};
use rushes_jepsen::workloads::WorkloadKind;

#[derive(Parser)]
#[command(name = "rushes-jepsen", about = "Rushes' fault-injection suite: nodes in containers, real faults, checked histories")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run: a cluster in containers, the workload's clients, the nemesis's seeded schedule,
    /// then the checkers. Writes a results folder and exits 0 valid, 1 invalid, 2 unknown.
    Test(TestArgs),
    /// Every workload against every nemesis (5 nodes), one run each; writes a summary table.
    Matrix {
        #[command(flatten)]
        common: CommonArgs,
        /// Seconds of faults per run.
        #[arg(long, default_value_t = 120)]
        time_limit: u64,
        /// Workloads (comma-separated).
        #[arg(long, default_value = "set,register,versions")]
        workloads: String,
        /// Nemeses, one run each (comma-separated; `a+b` mixes kinds in one run).
        #[arg(
            long,
            default_value = "none,isolate-leader,random-halves,majorities-ring,bridge,one-way,lossy-network+slow-network+bandwidth-limit+stalled-connections+reset-connections,kill-minority,kill-all,pause,snapshot-fault,disk-full"
        )]
        nemeses: String,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// First seed; run k uses seed + k.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Builds the node image from the release binary (cached by the binary's hash) and prints
    /// its tag.
    Image {
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Build it under this stable name instead (e.g. `rushes:local`, which deploy/compose.yaml
        /// runs), without the suite's label, so `rushes-jepsen clean` never touches containers
        /// started from it; rebuilt only when the binary changed. Prints the name.
        #[arg(long, value_name = "NAME")]
        tag: Option<String>,
    },
    /// Removes every container and network runs left behind.
    Clean {
        /// Only those of runs whose process is gone (leaves runs in progress alone).
        #[arg(long)]
        abandoned: bool,
    },
    /// Replaces the matrix table in docs/jepsen.md with the last `matrix` run's.
    RefreshDocs {
        #[arg(long, default_value = "target/jepsen/matrix.md")]
        matrix: PathBuf,
        #[arg(long, default_value = "docs/jepsen.md")]
        doc: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct CommonArgs {
    /// The `rushes` binary (default: `rushes` next to this executable, i.e. the same target dir).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where results folders go.
    #[arg(long, default_value = "target/jepsen")]
    out: PathBuf,
    /// Concurrent clients (default: 2 per node).
    #[arg(long)]
    concurrency: Option<usize>,
}

#[derive(clap::Args)]
struct TestArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// set, register or versions.
    #[arg(long, default_value = "set")]
    workload: String,
    /// Fault kinds or groups, comma-separated: none, all, partition, network, kill, or names
    /// such as isolate-leader, majorities-ring, one-way, lossy-network, slow-network, pause,
    /// snapshot-fault, disk-full.
    #[arg(long, default_value = "partition,kill,pause")]
    nemesis: String,
    /// Seconds of load and faults.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Schedule and client seed (printed; the same seed replays the same schedule).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds the healed cluster may take to converge.
    #[arg(long, default_value_t = 180)]
    recovery_timeout: u64,
}

fn binary(bin: &Option<PathBuf>) -> PathBuf {
    bin.clone().unwrap_or_else(rushes_jepsen::rushes_binary)
}

fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 1_000_000).unwrap_or(1)
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Image { bin, tag: None } => match rushes_jepsen::docker::ensure_image(&binary(&bin)) {
            Ok(tag) => {
                println!("{tag}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                3
            }
        },
        Command::Image { bin, tag: Some(name) } => {
            let binary = binary(&bin);
            match rushes_jepsen::docker::ensure_named_image(&binary, &name) {
                Ok((hash, imported)) => {
                    let what = if imported { "built" } else { "unchanged" };
                    eprintln!("image {name} {what}: {} (sha256 {hash}...)", binary.display());
                    println!("{name}");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    3
                }
            }
        }
        Command::Clean { abandoned } => {
            match if abandoned { rushes_jepsen::docker::remove_abandoned() } else { rushes_jepsen::docker::remove_labelled(None) } {
                Ok(removed) => {
                    println!("removed {removed} containers and networks");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    3
                }
            }
        }
        Command::Test(args) => test(args),
        Command::RefreshDocs { matrix, doc } => match refresh_docs(&matrix, &doc) {
            Ok(()) => {
                println!("{} now holds the table of {}", doc.display(), matrix.display());
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                3
            }
        },
        Command::Matrix { common, time_limit, workloads, nemeses, nodes, seed } => {
            matrix(common, time_limit, &workloads, &nemeses, nodes, seed)
        }
    };
    std::process::exit(code);
}

fn test(args: TestArgs) -> i32 {
    let workload = match WorkloadKind::parse(&args.workload) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: --workload: {e}");
            return 3;
        }
    };
    let nemeses = match FaultKind::parse_list(&args.nemesis) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: --nemesis: {e}");
            return 3;
        }
    };
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let name = format!("{}-{}-{seed}", workload.name(), args.nemesis.replace(',', "+"));
    let command = format!(
        "cargo run --release -p rushes-jepsen -- test --nodes {} --workload {} --nemesis {} --time-limit {} --seed {seed}",
        args.nodes,
        workload.name(),
        args.nemesis,
        args.time_limit
    );
    let options = RunOptions {
        nodes: args.nodes,
        shards: args.shards,
        replication_factor: args.nodes.min(3),
        workload,
        nemeses,
        time_limit: Duration::from_secs(args.time_limit),
        seed,
        concurrency: args.common.concurrency.unwrap_or(2 * args.nodes),
        out: args.common.out.join(name),
        binary: binary(&args.common.bin),
        recovery_timeout: Duration::from_secs(args.recovery_timeout),
        command: command.clone(),
    };
    println!("jepsen: replay with: {command}");
    report(&options, run(&options))
}

fn report(options: &RunOptions, outcome: Result<rushes_jepsen::run::RunOutcome, rushes_jepsen::run::RunError>) -> i32 {
    match outcome {
        Ok(outcome) => {
            let word = match outcome.validity {
                Validity::Valid => "VALID",
                Validity::Invalid => "INVALID",
                Validity::Unknown => "UNKNOWN",
            };
            println!("jepsen: {word} · seed {} · results in {}", options.seed, outcome.out.join("index.html").display());
            if outcome.validity != Validity::Valid {
                println!("{}", serde_json::to_string_pretty(&outcome.verdict).unwrap_or_default());
            }
            outcome.validity.exit_code()
        }
        Err(e) => {
            eprintln!("jepsen: the run could not be carried out (seed {}): {e}", options.seed);
            3
        }
    }
}

/// The part of docs/jepsen.md between these markers is the matrix table.
const MATRIX_BEGIN: &str = "<!-- matrix:begin -->";
const MATRIX_END: &str = "<!-- matrix:end -->";

fn refresh_docs(matrix: &std::path::Path, doc: &std::path::Path) -> Result<(), String> {
    let table = std::fs::read_to_string(matrix).map_err(|e| format!("{}: {e} (run `rushes-jepsen matrix` first)", matrix.display()))?;
    let text = std::fs::read_to_string(doc).map_err(|e| format!("{}: {e}", doc.display()))?;
    let (Some(begin), Some(end)) = (text.find(MATRIX_BEGIN), text.find(MATRIX_END)) else {
        return Err(format!("{} has no {MATRIX_BEGIN} ... {MATRIX_END} block", doc.display()));
    };
    let updated = format!("{}{MATRIX_BEGIN}\n{}\n{}", &text[..begin], table.trim(), &text[end..]);
    std::fs::write(doc, updated).map_err(|e| format!("{}: {e}", doc.display()))
}

fn matrix(common: CommonArgs, time_limit: u64, workloads: &str, nemeses: &str, nodes: usize, first_seed: u64) -> i32 {
    let workloads: Vec<WorkloadKind> = match workloads.split(',').map(WorkloadKind::parse).collect() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: --workloads: {e}");
            return 3;
        }
    };
    let nemesis_names: Vec<&str> = nemeses.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    for name in &nemesis_names {
        if let Err(e) = FaultKind::parse_list(&name.replace('+', ",")) {
            eprintln!("error: --nemeses: {e}");
            return 3;
        }
    }
    let summary_path = common.out.join("matrix.md");
    let _ = std::fs::create_dir_all(&common.out);
    let mut rows = Vec::new();
    let mut worst = 0;
    let mut seed = first_seed;
    let image = rushes_jepsen::docker::image_tag(&binary(&common.bin)).unwrap_or_default();
    let header = format!(
        "Run {} with `rushes-jepsen matrix` on image `{image}`, {nodes} nodes, {time_limit} s of faults per cell; this machine: {} cores, {} GiB.",
        rushes_jepsen::run::utc_timestamp(std::time::SystemTime::now()),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        memory_gib()
    );
    for workload in &workloads {
        for nemesis in &nemesis_names {
            let name = format!("matrix-{}-{nemesis}-{seed}", workload.name());
            let options = RunOptions {
                nodes,
                shards: 4,
                replication_factor: 3,
                workload: *workload,
                nemeses: FaultKind::parse_list(&nemesis.replace('+', ",")).unwrap_or_default(),
                time_limit: Duration::from_secs(time_limit),
                seed,
                concurrency: common.concurrency.unwrap_or(2 * nodes),
                out: common.out.join(&name),
                binary: binary(&common.bin),
                recovery_timeout: Duration::from_secs(180),
                command: format!(
                    "cargo run --release -p rushes-jepsen -- test --nodes {nodes} --workload {} --nemesis {} --time-limit {time_limit} --seed {seed}",
                    workload.name(),
                    nemesis.replace('+', ",")
                ),
            };
            let started = std::time::Instant::now();
            let outcome = run(&options);
            let code = report(&options, outcome.as_ref().map(Clone::clone).map_err(|e| rushes_jepsen::run::RunError::Setup(e.to_string())));
            worst = worst.max(code);
            let row = matrix_row(workload.name(), nemesis, seed, time_limit, started.elapsed(), &outcome);
            println!("{row}");
            rows.push(row);
            let table = format!(
                "{header}\n\n| workload | nemesis | seed | faults for (s) | run (s) | ops | fault windows | verdict | lost | stale (strong) | other |\n|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|\n{}\n",
                rows.join("\n")
            );
            if let Ok(mut file) = std::fs::File::create(&summary_path) {
                let _ = file.write_all(table.as_bytes());
            }
            seed += 1;
        }
    }
    println!("jepsen: matrix summary in {}", summary_path.display());
    worst
}

/// Total memory from /proc/meminfo, in GiB (0 if unknown).
fn memory_gib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kib| (kib + (1 << 19)) >> 20)
        .unwrap_or(0)
}

fn matrix_row(
    workload: &str,
    nemesis: &str,
    seed: u64,
    time_limit: u64,
    took: Duration,
    outcome: &Result<rushes_jepsen::run::RunOutcome, rushes_jepsen::run::RunError>,
) -> String {
    match outcome {
        Ok(outcome) => {
            let v = &outcome.verdict;
            let checker = &v["checker"];
            let lost = checker["lost"].as_u64().map(|n| n.to_string()).unwrap_or_else(|| "–".into());
            let stale = checker["stale"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| checker["stale"].as_array().map(|a| a.len().to_string()).unwrap_or_else(|| "–".into()));
            let other = match workload {
                "register" => format!("linearizable keys: {}", checker["keys"]),
                "versions" => format!("final versions {}", checker["final_versions"]),
                _ => format!("acknowledged {}, recovered {}", checker["acknowledged"], checker["recovered"]),
            };
            format!(
                "| {workload} | {nemesis} | {seed} | {time_limit} | {:.0} | {} | {} | {:?} | {lost} | {stale} | {other} |",
                took.as_secs_f64(),
                v["operations"],
                v["faults"],
                outcome.validity
            )
        }
        Err(e) => format!(
            "| {workload} | {nemesis} | {seed} | {time_limit} | {:.0} | – | – | not run | – | – | {} |",
            took.as_secs_f64(),
            e.to_string().replace('|', "/").lines().next().unwrap_or("")
        ),
    }
}
