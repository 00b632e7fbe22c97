//! Waiting with deadlines ([`wait_until`], [`poll_until`] are the project's shared helpers from
//! `rushes-client`), and holding a fault in place for its duration.

use std::time::Duration;

pub use rushes_client::wait::{poll_until, wait_until};

/// Keeps a fault in place for `duration`. This is the length of a fault (how long a node stays
/// down, paused or cut off), never a condition a check depends on.
pub fn hold_fault(duration: Duration) {
    std::thread::sleep(duration);
}
