//! The free-space floor of a data directory (`limits.min_free_disk_bytes`).
//!
//! sled does not survive running out of space in the middle of a write: the fault suite's
//! disk-full nemesis filled a node's disk and one replica's store would not open again ("Read
//! corrupted"). So a shard never writes when its file system is below the floor: its Raft
//! actor stops stepping messages and ticking (to its peers it looks cut off; it acknowledges
//! nothing it did not store), proposals are refused with a 503 that names the disk, fusion and
//! indexing wait. When space returns, everything resumes by itself.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long one reading of the free space is trusted: a Ready cycle asks every time, and
/// statvfs costs a system call.
const READING_TTL: Duration = Duration::from_millis(20);

/// Free space on the file system of a directory, against a floor.
pub struct DiskGuard {
    path: PathBuf,
    min_free_bytes: u64,
    last: Mutex<Option<(Instant, u64)>>,
}

impl DiskGuard {
    /// `min_free_bytes == 0` turns the guard off.
    pub fn new(path: &Path, min_free_bytes: u64) -> DiskGuard {
        DiskGuard { path: path.to_path_buf(), min_free_bytes, last: Mutex::new(None) }
    }

    /// Bytes an unprivileged writer may still use (statvfs `f_bavail`), `None` if unknown.
    pub fn free_bytes(&self) -> Option<u64> {
        let mut last = self.last.lock();
        if let Some((at, free)) = *last {
            if at.elapsed() < READING_TTL {
                return Some(free);
            }
        }
        let free = statvfs_available(&self.path)?;
        *last = Some((Instant::now(), free));
        Some(free)
    }

    /// Whether a write may proceed. An unreadable file system counts as having room: the write
    /// itself then reports what is wrong.
    pub fn has_room(&self) -> bool {
        self.min_free_bytes == 0 || self.free_bytes().is_none_or(|free| free >= self.min_free_bytes)
    }

    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn statvfs_available(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if result != 0 {
        return None;
    }
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_free_space_refuses_and_zero_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let free = DiskGuard::new(dir.path(), 1).free_bytes().expect("statvfs of a temporary directory");
        assert!(free > 0);
        assert!(DiskGuard::new(dir.path(), 1).has_room());
        assert!(!DiskGuard::new(dir.path(), free.saturating_mul(4).max(1 << 50)).has_room());
        assert!(DiskGuard::new(dir.path(), 0).has_room());
        assert!(DiskGuard::new(Path::new("/no/such/dir"), 1 << 50).has_room(), "unknown counts as room");
    }
}
