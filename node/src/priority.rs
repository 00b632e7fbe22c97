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
//! busy, so the raft thread watches the oldest acknowledged entry that is not yet searchable:
//! past `index.background_yield_ms` it lifts its stages to `SCHED_OTHER` at nice 10, and
//! under half of that it lowers them again. Lifting a thread out of `SCHED_IDLE` needs
//! `CAP_SYS_NICE` (or an `RLIMIT_NICE` allowance); a process that lacks it keeps the stages
//! at nice 10 throughout rather than risk starving them.

use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;

/// Nice value of the stages when they compete for the CPU.
const COMPETING_NICE: i32 = 10;

/// What the raft thread should do to its stages now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Lift,
    Lower,
}

/// The decision, apart from the system calls so it can be tested: `lifted` is the stages'
/// state, `unsearchable_age` the age of the oldest applied entry not yet searchable.
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

/// The background stage threads of one shard replica and their current priority.
pub struct StagePriority {
    /// None: the stages stay at nice 10 (yielding disabled, or not allowed to lift them).
    yield_max: Option<Duration>,
    threads: Mutex<Vec<i32>>,
    lifted: Mutex<bool>,
}

impl StagePriority {
    /// `yield_max_ms` 0 disables `SCHED_IDLE`.
    pub fn new(yield_max_ms: u64) -> StagePriority {
        let yield_max = (yield_max_ms > 0 && idle_can_be_lifted()).then(|| Duration::from_millis(yield_max_ms));
        StagePriority { yield_max, threads: Mutex::new(Vec::new()), lifted: Mutex::new(false) }
    }

    /// Called first thing by each stage thread: lowers its own priority and registers it.
    /// Threads it starts later (Tantivy's workers) inherit its policy at that time.
    pub fn enter_stage(&self) {
        let thread = current_thread_id();
        let lifted = self.lifted.lock();
        match self.yield_max {
            Some(_) if !*lifted => set_idle(thread),
            _ => set_competing(thread),
        }
        self.threads.lock().push(thread);
    }

    /// Called periodically by the raft thread with the age of the oldest applied entry that
    /// is not yet searchable.
    pub fn govern(&self, unsearchable_age: Option<Duration>) {
        let Some(yield_max) = self.yield_max else { return };
        let mut lifted = self.lifted.lock();
        match decide(*lifted, unsearchable_age, yield_max) {
            Some(Change::Lift) => {
                for &thread in self.threads.lock().iter() {
                    set_competing(thread);
                }
                *lifted = true;
                tracing::debug!(age_ms = unsearchable_age.unwrap_or_default().as_millis() as u64, "background stages lifted to nice 10");
            }
            Some(Change::Lower) => {
                for &thread in self.threads.lock().iter() {
                    set_idle(thread);
                }
                *lifted = false;
            }
            None => {}
        }
    }

    /// Whether the stages are now competing at nice 10 rather than yielding.
    pub fn competing(&self) -> bool {
        self.yield_max.is_none() || *self.lifted.lock()
    }
}

#[cfg(target_os = "linux")]
fn current_thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

#[cfg(target_os = "linux")]
fn set_policy(thread: i32, policy: libc::c_int) -> bool {
    let parameters = libc::sched_param { sched_priority: 0 };
    // SAFETY: a syscall on a thread id of this process; a stale id only fails.
    unsafe { libc::sched_setscheduler(thread, policy, &parameters) == 0 }
}

#[cfg(target_os = "linux")]
fn set_idle(thread: i32) {
    if !set_policy(thread, libc::SCHED_IDLE) {
        tracing::debug!(thread, error = %std::io::Error::last_os_error(), "could not make a background stage SCHED_IDLE");
        set_nice(thread);
    }
}

#[cfg(target_os = "linux")]
fn set_competing(thread: i32) {
    if !set_policy(thread, libc::SCHED_OTHER) {
        tracing::debug!(thread, error = %std::io::Error::last_os_error(), "could not lift a background stage out of SCHED_IDLE");
    }
    set_nice(thread);
}

#[cfg(target_os = "linux")]
fn set_nice(thread: i32) {
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, COMPETING_NICE) } != 0 {
        tracing::debug!(thread, error = %std::io::Error::last_os_error(), "could not lower a background stage's priority");
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
fn set_idle(_thread: i32) {}
#[cfg(not(target_os = "linux"))]
fn set_competing(_thread: i32) {}
#[cfg(not(target_os = "linux"))]
fn idle_can_be_lifted() -> bool {
    let _ = OnceLock::<bool>::new();
    false
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[cfg(target_os = "linux")]
    fn policy_of_current_thread() -> libc::c_int {
        // SAFETY: query of the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_stage_yields_until_its_data_waits_too_long_then_competes() {
        let priority = std::sync::Arc::new(StagePriority::new(5000));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (check_tx, check_rx) = std::sync::mpsc::channel::<()>();
        let (policy_tx, policy_rx) = std::sync::mpsc::channel();
        let stage = {
            let priority = priority.clone();
            std::thread::spawn(move || {
                priority.enter_stage();
                entered_tx.send(policy_of_current_thread()).unwrap();
                while check_rx.recv().is_ok() {
                    policy_tx.send(policy_of_current_thread()).unwrap();
                }
            })
        };
        let first = entered_rx.recv().unwrap();
        if !idle_can_be_lifted() {
            // Without CAP_SYS_NICE the stage competes at nice 10 from the start.
            assert_eq!(first, libc::SCHED_OTHER);
            assert!(priority.competing());
        } else {
            assert_eq!(first, libc::SCHED_IDLE);
            priority.govern(Some(Duration::from_secs(6)));
            assert!(priority.competing());
            check_tx.send(()).unwrap();
            assert_eq!(policy_rx.recv().unwrap(), libc::SCHED_OTHER);
            priority.govern(Some(Duration::from_millis(100)));
            assert!(!priority.competing());
            check_tx.send(()).unwrap();
            assert_eq!(policy_rx.recv().unwrap(), libc::SCHED_IDLE);
        }
        drop(check_tx);
        stage.join().unwrap();
    }

    #[test]
    fn zero_disables_yielding() {
        assert!(StagePriority::new(0).competing());
    }
}
