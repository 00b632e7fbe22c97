//! The workload: sample annotations from the generator, cut into NDJSON batches, written by
//! concurrent clients that fail over between nodes, with a ledger of what was acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::{encode_segment, Http, HttpError};

/// What the checks need to know about one input annotation.
#[derive(Debug, Clone)]
pub struct AnnotationMeta {
    pub id: String,
    pub asset_id: String,
    pub track: String,
    pub label: Option<String>,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The input line, parsed (the node stores the raw bytes; equal as JSON values).
    pub raw: serde_json::Value,
}

impl AnnotationMeta {
    /// Bucket numbers (seconds with the default 1000 ms buckets) the annotation covers.
    pub fn buckets(&self, bucket_ms: u64) -> RangeInclusive<u64> {
        (self.start_ms / bucket_ms)..=(self.end_ms.saturating_sub(1).max(self.start_ms) / bucket_ms)
    }
}

/// A generated season: its asset records and annotations.
pub struct Sample {
    pub dir: PathBuf,
    /// `(asset_id, record without asset_id)` per asset, in file order.
    pub assets: Vec<(String, serde_json::Value)>,
    pub lines: Vec<String>,
    pub annotations: Vec<AnnotationMeta>,
    by_id: BTreeMap<(String, String), usize>,
}

impl Sample {
    /// Generates `hours` of footage with `seed` into `dir` (see `rushes_sample`).
    pub fn generate(dir: &Path, hours: f64, seed: u64) -> Sample {
        let out = dir.join(format!("sample-{hours}-{seed}"));
        let config = rushes_sample::GenConfig { hours, seed, ..Default::default() };
        rushes_sample::write_season(&config, &out, &mut |_, _| {}).expect("generate the sample season");
        Sample::read(&out)
    }

    /// Reads `assets.ndjson` and `annotations.ndjson` from a generated season directory.
    pub fn read(dir: &Path) -> Sample {
        let assets = std::fs::read_to_string(dir.join("assets.ndjson"))
            .expect("assets.ndjson")
            .lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).expect("asset line is JSON");
                let id = value["asset_id"].as_str().expect("asset_id").to_string();
                value.as_object_mut().expect("asset line is an object").remove("asset_id");
                (id, value)
            })
            .collect();
        let lines: Vec<String> =
            std::fs::read_to_string(dir.join("annotations.ndjson")).expect("annotations.ndjson").lines().map(str::to_string).collect();
        let annotations: Vec<AnnotationMeta> = lines
            .iter()
            .map(|line| {
                let raw: serde_json::Value = serde_json::from_str(line).expect("annotation line is JSON");
                let text = |key: &str| raw[key].as_str().unwrap_or_else(|| panic!("annotation without {key}: {line}")).to_string();
                let number = |key: &str| raw[key].as_u64().unwrap_or_else(|| panic!("annotation without {key}: {line}"));
                AnnotationMeta {
                    id: text("id"),
                    asset_id: text("asset_id"),
                    track: text("track"),
                    label: raw["label"].as_str().map(str::to_string),
                    start_ms: number("start_ms"),
                    end_ms: number("end_ms"),
                    raw,
                }
            })
            .collect();
        let by_id = annotations.iter().enumerate().map(|(i, a)| ((a.asset_id.clone(), a.id.clone()), i)).collect();
        Sample { dir: dir.to_path_buf(), assets, lines, annotations, by_id }
    }

    /// The annotation `id` of `asset`, by its index in [`Sample::annotations`].
    pub fn index_of(&self, asset: &str, id: &str) -> Option<usize> {
        self.by_id.get(&(asset.to_string(), id.to_string())).copied()
    }

    /// Consecutive batches of `lines_per_batch` lines.
    pub fn batches(&self, lines_per_batch: usize) -> Vec<Batch> {
        let indexes: Vec<usize> = (0..self.lines.len()).collect();
        indexes
            .chunks(lines_per_batch.max(1))
            .map(|chunk| Batch {
                body: chunk.iter().map(|i| self.lines[*i].as_str()).collect::<Vec<_>>().join("\n").into_bytes(),
                annotations: chunk.to_vec(),
            })
            .collect()
    }

    /// `PUT /v1/assets/{id}` for every asset, retrying on retryable errors against the next URL
    /// until `timeout`.
    pub fn put_assets(&self, urls: &[String], timeout: Duration) {
        let http = Http::new(Duration::from_secs(15));
        for (n, (asset_id, record)) in self.assets.iter().enumerate() {
            let path = format!("/v1/assets/{}", encode_segment(asset_id));
            let body = record.to_string();
            let deadline = Instant::now() + timeout;
            let mut target = n;
            loop {
                let url = format!("{}{path}", urls[target % urls.len()]);
                match http.send("PUT", &url, "application/json", body.as_bytes()) {
                    Ok(_) => break,
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        target += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("PUT asset {asset_id}: {e}"),
                }
            }
        }
    }
}

/// One NDJSON request body and the annotations it holds (indexes into the sample).
#[derive(Debug, Clone)]
pub struct Batch {
    pub body: Vec<u8>,
    pub annotations: Vec<usize>,
}

/// Settings of the writers.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Concurrent client threads; writer `i` sends batches `i, i + writers, ...`, each first to
    /// its home node `i % nodes`, then round-robin to the next nodes while the batch is refused
    /// with a retryable error.
    pub writers: usize,
    /// Spread the batches over at least this long (batch `k` is not sent before
    /// `k / batches * pace`), so faults land while writes are in flight.
    pub pace: Duration,
    /// A batch not acknowledged within this is a liveness failure.
    pub batch_deadline: Duration,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            writers: 3,
            pace: Duration::from_secs(20),
            batch_deadline: Duration::from_secs(90),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// Shared state of a running workload.
#[derive(Default)]
pub struct Progress {
    /// Batches acknowledged with 200.
    pub acknowledged_batches: AtomicUsize,
    pub total_batches: AtomicUsize,
    /// Requests that failed with a retryable error (and were re-sent, maybe elsewhere).
    pub retries: AtomicUsize,
    /// Writers that finished (successfully or not).
    pub finished_writers: AtomicUsize,
    acknowledged: Mutex<BTreeSet<usize>>,
    failures: Mutex<Vec<String>>,
    /// Per node URL: acknowledged batches.
    served: Mutex<BTreeMap<String, usize>>,
}

impl Progress {
    pub fn acknowledged_batches(&self) -> usize {
        self.acknowledged_batches.load(Ordering::SeqCst)
    }

    pub fn total_batches(&self) -> usize {
        self.total_batches.load(Ordering::SeqCst)
    }

    /// Fraction of batches acknowledged.
    pub fn fraction(&self) -> f64 {
        self.acknowledged_batches() as f64 / self.total_batches().max(1) as f64
    }

    pub fn all_writers_finished(&self, writers: usize) -> bool {
        self.finished_writers.load(Ordering::SeqCst) >= writers
    }

    /// Indexes (into the sample) of every acknowledged annotation.
    pub fn acknowledged(&self) -> BTreeSet<usize> {
        self.acknowledged.lock().unwrap().clone()
    }

    /// Acknowledged annotation ids per asset.
    pub fn acknowledged_ids(&self, sample: &Sample) -> BTreeMap<String, BTreeSet<String>> {
        let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for i in self.acknowledged() {
            let a = &sample.annotations[i];
            ids.entry(a.asset_id.clone()).or_default().insert(a.id.clone());
        }
        ids
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Acknowledged batches per node URL.
    pub fn served(&self) -> BTreeMap<String, usize> {
        self.served.lock().unwrap().clone()
    }

    fn fail(&self, message: String) {
        self.failures.lock().unwrap().push(message);
    }
}

/// Concurrent writers. Dropping it stops them (they may be blocked in a request for up to the
/// request timeout).
pub struct Workload {
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    pub options: WorkloadOptions,
}

impl Workload {
    /// Starts `options.writers` threads writing `batches` to the nodes at `urls`.
    pub fn start(urls: Vec<String>, batches: Arc<Vec<Batch>>, options: WorkloadOptions) -> Workload {
        assert!(!urls.is_empty() && options.writers >= 1);
        let progress = Arc::new(Progress::default());
        progress.total_batches.store(batches.len(), Ordering::SeqCst);
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let handles = (0..options.writers)
            .map(|writer| {
                let (urls, batches, progress, stop, options) =
                    (urls.clone(), batches.clone(), progress.clone(), stop.clone(), options.clone());
                std::thread::Builder::new()
                    .name(format!("jepsen-writer-{writer}"))
                    .spawn(move || {
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            write(writer, &urls, &batches, &progress, &stop, &options, started);
                        }));
                        if let Err(panic) = result {
                            let message = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            progress.fail(format!("writer {writer} panicked: {message}"));
                        }
                        progress.finished_writers.fetch_add(1, Ordering::SeqCst);
                    })
                    .expect("spawn a writer thread")
            })
            .collect();
        Workload { progress, stop, handles, options }
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.progress.all_writers_finished(self.options.writers)
    }

    /// Waits for every writer to finish and returns the progress (failures included; the
    /// caller decides).
    pub fn join(mut self) -> Arc<Progress> {
        for handle in self.handles.drain(..) {
            handle.join().expect("writer thread");
        }
        self.progress.clone()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn write(
    writer: usize,
    urls: &[String],
    batches: &[Batch],
    progress: &Progress,
    stop: &AtomicBool,
    options: &WorkloadOptions,
    started: Instant,
) {
    let http = Http::new(options.request_timeout);
    let home = writer % urls.len();
    for k in (writer..batches.len()).step_by(options.writers) {
        let not_before = started + options.pace.mul_f64(k as f64 / batches.len() as f64);
        while Instant::now() < not_before {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep((not_before - Instant::now()).min(Duration::from_millis(50)));
        }
        let batch = &batches[k];
        let mut target = home;
        let first_sent = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut last_error: Option<HttpError> = None;
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if first_sent.elapsed() > options.batch_deadline {
                progress.fail(format!(
                    "writer {writer}: batch {k} not acknowledged within {:?}; last error: {}",
                    options.batch_deadline,
                    last_error.map(|e| e.to_string()).unwrap_or_default()
                ));
                return;
            }
            let url = format!("{}/v1/annotations", urls[target]);
            match http.send("POST", &url, "application/x-ndjson", &batch.body) {
                Ok(text) => {
                    let accepted = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["accepted"].as_u64());
                    if accepted != Some(batch.annotations.len() as u64) {
                        progress.fail(format!(
                            "writer {writer}: batch {k} of {} lines acknowledged by {url} with {text:.300}",
                            batch.annotations.len()
                        ));
                        return;
                    }
                    progress.acknowledged.lock().unwrap().extend(batch.annotations.iter().copied());
                    *progress.served.lock().unwrap().entry(urls[target].clone()).or_default() += 1;
                    progress.acknowledged_batches.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(e) if e.is_retryable() => {
                    progress.retries.fetch_add(1, Ordering::SeqCst);
                    last_error = Some(e);
                    // Round-robin to the next node, and back off a little.
                    target = (target + 1) % urls.len();
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    progress.fail(format!("writer {writer}: batch {k} refused: {e}"));
                    return;
                }
            }
        }
    }
}
