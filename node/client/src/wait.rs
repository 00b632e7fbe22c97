//! Waiting with deadlines: a wait polls a condition with a short back-off and gives up at a
//! deadline. A bare sleep is never what makes a check pass.

use std::time::{Duration, Instant};

/// First pause between polls; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Polls `condition` until it holds, or panics once `timeout` has passed.
pub fn wait_until(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    if !poll_until(timeout, condition) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Like [`wait_until`], but returns whether the condition held instead of panicking, so the
/// caller can attach its own diagnostics (node logs, cluster status) to the failure.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// [`wait_until`] for code running on tokio: the pauses do not block the runtime.
#[cfg(feature = "async")]
pub async fn wait_until_async(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if condition() {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_holds_returns_at_once_and_one_that_never_does_times_out() {
        let mut polls = 0;
        assert!(poll_until(Duration::from_secs(10), || {
            polls += 1;
            true
        }));
        assert_eq!(polls, 1);
        polls = 0;
        assert!(!poll_until(Duration::from_millis(50), || {
            polls += 1;
            false
        }));
        assert!(polls >= 2, "polled again before giving up");
    }
}
