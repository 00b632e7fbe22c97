//! Waiting with deadlines: every wait in the suite polls a condition with a short back-off and
//! gives up at a deadline. A bare sleep is never what makes a check pass.

use std::time::{Duration, Instant};

/// Polls `condition` until it holds, or panics once `timeout` has passed. The pause between
/// polls starts at 5 ms and doubles up to 200 ms.
pub fn wait_until(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    if !poll_until(timeout, condition) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Like [`wait_until`], but returns whether the condition held instead of panicking, so the
/// caller can attach its own diagnostics (node logs, cluster status) to the failure.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Keeps a fault in place for `duration`. This is the length of a fault (how long a node stays
/// down, paused or cut off), never a condition a check depends on.
pub fn hold_fault(duration: Duration) {
    std::thread::sleep(duration);
}
