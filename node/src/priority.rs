//! CPU priority of the background stages (fusion, indexing) of a shard replica.
//!
//! They run behind the write path: when the CPU is short, the raft threads and the HTTP
//! workers (acknowledgements, searches) go first, and the stages catch up from the durable
//! raw store afterwards. A nice value is not enough for that: it only orders threads queued
//! on the same CPU, so a raft thread woken onto a busy CPU waited while the other CPU ran
//! fusion (3 nodes on 2 cores: fusion and indexing took 30-36% of the CPU at nice 10 and at
//! nice 19 during ingest). A CPU that runs only `SCHED_IDLE` threads counts as idle to the
//! scheduler, which wakes the write path there at once.
//!
//! `SCHED_IDLE` alone could starve indexing for as long as writes or queries keep the CPU
//! busy. So each shard has a governor thread (normal priority) that samples the applied and
//! indexed indexes every [`GOVERN_INTERVAL`]: once the oldest applied index not yet indexed
//! has waited `index.background_yield_ms`, it lifts the stages to `SCHED_OTHER` at nice 10, and
//! lowers them again when that wait is under half of it. A backlog found at start (a restart,
//! a snapshot to re-derive) counts from then. Lifting a thread out of `SCHED_IDLE` needs
//! `CAP_SYS_NICE` (or an `RLIMIT_NICE` allowance): a process without it keeps the stages at
//! nice 10 throughout rather than risk starving them.
//!
//! Threads inherit their creator's policy. The stages' own helpers (Tantivy's workers) may
//! stay idle with them, but a shared pool that happens to grow from a stage thread (sled's
//! I/O threads, which also write the Raft log) must not: the governor returns any other
//! `SCHED_IDLE` thread of the process to `SCHED_OTHER`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Nice value of the stages when they compete for the CPU.
const COMPETING_NICE: i32 = 10;
/// How often a governor samples its shard and corrects thread priorities.
pub const GOVERN_INTERVAL: Duration = Duration::from_millis(200);
/// Samples of (applied index, first seen) kept per shard; the oldest is never dropped.
const SAMPLES_MAX: usize = 256;
/// Names (as the kernel truncates them, 15 bytes) of threads that may run `SCHED_IDLE`: the
/// stages and the Tantivy workers they start.
const IDLE_THREAD_PREFIXES: &[&str] = &["fusion-", "index-", "thrd-tantivy", "docstore"];

/// What the governor should do to its stages now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Lift,
    Lower,
}

/// The decision, apart from the system calls so it can be tested: `lifted` is the stages'
/// state, `unsearchable_age` the wait of the oldest applied index not yet indexed.
pub fn decide(lifted: bool, unsearchable_age: Option<Duration>, yield_max: Duration) -> Option<Change> {
    let age = unsearchable_age.unwrap_or_default();
    if !lifted && age > yield_max {
        Some(Change::Lift)
    } else if lifted && age < yield_max / 2 {
        Some(Change::Lower)
    } else {
        None
    }
}

/// When each applied index was first seen, to tell how long the oldest unindexed one waits.
#[derive(Debug, Default)]
pub struct Backlog {
    samples: VecDeque<(u64, Instant)>,
}

impl Backlog {
    /// Records the applied and indexed indexes seen `now`; returns the wait of the oldest
    /// applied index above `indexed` (None when everything applied is indexed).
    pub fn observe(&mut self, applied: u64, indexed: u64, now: Instant) -> Option<Duration> {
        while self.samples.front().is_some_and(|&(index, _)| index <= indexed) {
            self.samples.pop_front();
        }
        if applied > indexed && self.samples.back().is_none_or(|&(index, _)| applied > index) {
            if self.samples.len() >= SAMPLES_MAX {
                // Keep the oldest (it decides the age); merge the next one into it.
                self.samples.remove(1);
            }
            self.samples.push_back((applied, now));
        }
        self.samples.front().map(|&(_, since)| now.saturating_duration_since(since))
    }
}

/// The background stage threads of one shard replica and their current priority.
pub struct StagePriority {
    /// None: the stages stay at nice 10 (yielding disabled, or not allowed to lift them).
    yield_max: Option<Duration>,
    /// (thread id, name) of the stage threads.
    threads: Mutex<Vec<(i32, String)>>,
    lifted: AtomicBool,
}

impl StagePriority {
    /// `yield_max_ms` 0 disables `SCHED_IDLE`.
    pub fn new(yield_max_ms: u64) -> StagePriority {
        let yield_max = (yield_max_ms > 0 && idle_can_be_lifted()).then(|| Duration::from_millis(yield_max_ms));
        StagePriority { yield_max, threads: Mutex::new(Vec::new()), lifted: AtomicBool::new(false) }
    }

    /// Whether the stages start as `SCHED_IDLE` (and need a governor).
    pub fn yields(&self) -> bool {
        self.yield_max.is_some()
    }

    /// Called first thing by each stage thread: lowers its own priority and registers it.
    pub fn enter_stage(&self) {
        let thread = current_thread_id();
        let name = std::thread::current().name().unwrap_or_default().to_string();
        let mut threads = self.threads.lock();
        if self.yields() && !self.lifted.load(Ordering::Acquire) {
            set_idle(thread);
        } else {
            set_competing(thread);
        }
        threads.push((thread, name));
    }

    /// The governor's loop: samples `indexes()` = (applied, indexed) until `stop`, then lifts
    /// the stages so that they finish their last work at a normal priority.
    pub fn govern_until_stopped(&self, stop: &AtomicBool, mut indexes: impl FnMut() -> (u64, u64)) {
        let Some(yield_max) = self.yield_max else { return };
        let mut backlog = Backlog::default();
        let mut last_sweep = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let (applied, indexed) = indexes();
            let age = backlog.observe(applied, indexed, Instant::now());
            match decide(self.lifted.load(Ordering::Acquire), age, yield_max) {
                Some(Change::Lift) => {
                    self.set_lifted(true);
                    tracing::debug!(age_ms = age.unwrap_or_default().as_millis() as u64, "background stages lifted to nice 10");
                }
                Some(Change::Lower) => self.set_lifted(false),
                None => {}
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                lift_idle_threads_outside_stages();
                last_sweep = Instant::now();
            }
            std::thread::park_timeout(GOVERN_INTERVAL);
        }
        self.set_lifted(true);
    }

    fn set_lifted(&self, lifted: bool) {
        let mut threads = self.threads.lock();
        // A stage thread that ended (its id may be reused) is forgotten, never changed.
        threads.retain(|(thread, name)| thread_name(*thread).is_some_and(|current| current == *name));
        for &(thread, _) in threads.iter() {
            if lifted {
                set_competing(thread);
            } else {
                set_idle(thread);
            }
        }
        self.lifted.store(lifted, Ordering::Release);
    }

    /// Whether the stages now compete at nice 10 rather than yield.
    pub fn competing(&self) -> bool {
        !self.yields() || self.lifted.load(Ordering::Acquire)
    }
}

#[cfg(target_os = "linux")]
fn current_thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// A thread of this process by id, as the kernel names it (None: no such thread).
#[cfg(target_os = "linux")]
fn thread_name(thread: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{thread}/comm")).ok().map(|name| name.trim_end().to_string())
}

#[cfg(target_os = "linux")]
fn set_policy(thread: i32, policy: libc::c_int) -> bool {
    let parameters = libc::sched_param { sched_priority: 0 };
    // SAFETY: a syscall on a thread id; an id that is not ours fails or is filtered above.
    unsafe { libc::sched_setscheduler(thread, policy, &parameters) == 0 }
}

#[cfg(target_os = "linux")]
fn set_idle(thread: i32) {
    if !set_policy(thread, libc::SCHED_IDLE) {
        tracing::debug!(thread, error = %std::io::Error::last_os_error(), "could not make a background stage SCHED_IDLE");
        set_nice(thread, COMPETING_NICE);
    }
}

#[cfg(target_os = "linux")]
fn set_competing(thread: i32) {
    if !set_policy(thread, libc::SCHED_OTHER) {
        tracing::debug!(thread, error = %std::io::Error::last_os_error(), "could not lift a background stage out of SCHED_IDLE");
    }
    set_nice(thread, COMPETING_NICE);
}

#[cfg(target_os = "linux")]
fn set_nice(thread: i32, nice: i32) {
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, nice) } != 0 {
        tracing::debug!(thread, error = %std::io::Error::last_os_error(), "could not set a thread's nice value");
    }
}

/// Returns every `SCHED_IDLE` thread of the process that is not a stage or a stage's helper to
/// `SCHED_OTHER` (nice 0): pool threads that grew from a stage thread inherited its policy.
#[cfg(target_os = "linux")]
fn lift_idle_threads_outside_stages() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    for task in tasks.flatten() {
        let Some(thread) = task.file_name().to_str().and_then(|id| id.parse::<i32>().ok()) else { continue };
        // SAFETY: a query of a thread id just listed; a thread that ended meanwhile fails.
        if unsafe { libc::sched_getscheduler(thread) } != libc::SCHED_IDLE {
            continue;
        }
        let Some(name) = thread_name(thread) else { continue };
        if IDLE_THREAD_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        if set_policy(thread, libc::SCHED_OTHER) {
            set_nice(thread, 0);
            tracing::debug!(thread, name, "a thread that inherited SCHED_IDLE from a stage returned to SCHED_OTHER");
        }
    }
}

/// Whether this process may move a thread from `SCHED_IDLE` back to `SCHED_OTHER`; tried once
/// on a thread of its own.
#[cfg(target_os = "linux")]
fn idle_can_be_lifted() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| {
            let thread = current_thread_id();
            set_policy(thread, libc::SCHED_IDLE) && set_policy(thread, libc::SCHED_OTHER)
        })
        .join()
        .unwrap_or(false)
    })
}

#[cfg(not(target_os = "linux"))]
fn current_thread_id() -> i32 {
    0
}
#[cfg(not(target_os = "linux"))]
fn thread_name(_thread: i32) -> Option<String> {
    None
}
#[cfg(not(target_os = "linux"))]
fn set_idle(_thread: i32) {}
#[cfg(not(target_os = "linux"))]
fn set_competing(_thread: i32) {}
#[cfg(not(target_os = "linux"))]
fn lift_idle_threads_outside_stages() {}
#[cfg(not(target_os = "linux"))]
fn idle_can_be_lifted() -> bool {
    let _ = OnceLock::<bool>::new();
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const YIELD: Duration = Duration::from_secs(5);

    #[test]
    fn stages_are_lifted_past_the_yield_and_lowered_under_half_of_it() {
        assert_eq!(decide(false, None, YIELD), None);
        assert_eq!(decide(false, Some(Duration::from_secs(4)), YIELD), None);
        assert_eq!(decide(false, Some(Duration::from_secs(6)), YIELD), Some(Change::Lift));
        assert_eq!(decide(true, Some(Duration::from_secs(6)), YIELD), None);
        // Between half and the whole: no flapping either way.
        assert_eq!(decide(true, Some(Duration::from_secs(3)), YIELD), None);
        assert_eq!(decide(true, Some(Duration::from_secs(2)), YIELD), Some(Change::Lower));
        assert_eq!(decide(true, None, YIELD), Some(Change::Lower));
    }

    #[test]
    fn the_backlog_ages_from_the_oldest_unindexed_index_and_keeps_it_at_the_cap() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut backlog = Backlog::default();
        // A backlog found at start (restart, snapshot) ages from the first sample.
        assert_eq!(backlog.observe(10, 4, at(0)), Some(Duration::ZERO));
        assert_eq!(backlog.observe(12, 4, at(1000)), Some(Duration::from_secs(1)));
        // Indexing through 10 leaves 12, first seen at 1 s.
        assert_eq!(backlog.observe(12, 10, at(3000)), Some(Duration::from_secs(2)));
        assert_eq!(backlog.observe(12, 12, at(3500)), None);
        // Steady writes far beyond the cap: the oldest sample stays.
        for step in 0..(SAMPLES_MAX as u64 * 4) {
            backlog.observe(100 + step, 12, at(4000 + step));
        }
        assert_eq!(backlog.observe(5000, 12, at(9000)), Some(Duration::from_secs(5)));
        assert!(backlog.samples.len() <= SAMPLES_MAX);
    }

    #[cfg(target_os = "linux")]
    fn policy_of_current_thread() -> libc::c_int {
        // SAFETY: query of the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_stage_yields_until_its_data_waits_too_long_then_competes_and_competes_when_stopped() {
        let priority = Arc::new(StagePriority::new(300));
        let stop = Arc::new(AtomicBool::new(false));
        let (policy_tx, policy_rx) = std::sync::mpsc::channel();
        let (check_tx, check_rx) = std::sync::mpsc::channel::<()>();
        let stage = {
            let priority = priority.clone();
            std::thread::Builder::new()
                .name("fusion-test".into())
                .spawn(move || {
                    priority.enter_stage();
                    policy_tx.send(policy_of_current_thread()).unwrap();
                    while check_rx.recv().is_ok() {
                        policy_tx.send(policy_of_current_thread()).unwrap();
                    }
                })
                .unwrap()
        };
        let first = policy_rx.recv().unwrap();
        if !priority.yields() {
            // Without CAP_SYS_NICE the stage competes at nice 10 from the start.
            assert_eq!(first, libc::SCHED_OTHER);
            assert!(priority.competing());
        } else {
            assert_eq!(first, libc::SCHED_IDLE);
            // 10 entries applied, none indexed, until the governor lifts the stage.
            let indexed = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let governor = {
                let (priority, stop, indexed) = (priority.clone(), stop.clone(), indexed.clone());
                std::thread::spawn(move || priority.govern_until_stopped(&stop, || (10, indexed.load(Ordering::Acquire))))
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while !priority.competing() {
                assert!(Instant::now() < deadline, "the governor never lifted the stage");
                std::thread::park_timeout(Duration::from_millis(20));
            }
            check_tx.send(()).unwrap();
            assert_eq!(policy_rx.recv().unwrap(), libc::SCHED_OTHER);
            // Indexed: the stage yields again.
            indexed.store(10, Ordering::Release);
            while priority.competing() {
                assert!(Instant::now() < deadline, "the governor never lowered the stage");
                std::thread::park_timeout(Duration::from_millis(20));
            }
            check_tx.send(()).unwrap();
            assert_eq!(policy_rx.recv().unwrap(), libc::SCHED_IDLE);
            // Stopping lifts it for its last work.
            stop.store(true, Ordering::Release);
            governor.join().unwrap();
            check_tx.send(()).unwrap();
            assert_eq!(policy_rx.recv().unwrap(), libc::SCHED_OTHER);
        }
        drop(check_tx);
        stage.join().unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pool_thread_that_inherited_sched_idle_is_returned_to_sched_other() {
        if !idle_can_be_lifted() {
            return; // without CAP_SYS_NICE nothing is ever made SCHED_IDLE
        }
        let (policy_tx, policy_rx) = std::sync::mpsc::channel();
        let (check_tx, check_rx) = std::sync::mpsc::channel::<()>();
        let stage = std::thread::Builder::new()
            .name("fusion-pool".into())
            .spawn(move || {
                set_idle(current_thread_id());
                // A pool thread started from the idle stage thread inherits its policy.
                std::thread::Builder::new()
                    .name("sled-io-test".into())
                    .spawn(move || {
                        policy_tx.send(policy_of_current_thread()).unwrap();
                        while check_rx.recv().is_ok() {
                            policy_tx.send(policy_of_current_thread()).unwrap();
                        }
                    })
                    .unwrap()
                    .join()
                    .unwrap();
            })
            .unwrap();
        assert_eq!(policy_rx.recv().unwrap(), libc::SCHED_IDLE);
        lift_idle_threads_outside_stages();
        check_tx.send(()).unwrap();
        assert_eq!(policy_rx.recv().unwrap(), libc::SCHED_OTHER);
        drop(check_tx);
        stage.join().unwrap();
    }

    #[test]
    fn zero_disables_yielding() {
        assert!(StagePriority::new(0).competing());
        assert!(!StagePriority::new(0).yields());
    }
}
