//! Advisory whole-file locks (flock(2)) that keep two servers or tools from
//! writing one image at once, and keep a base from being deleted or opened for
//! writing while an overlay reads it.
//!
//! flock locks belong to the open file description, so they also conflict
//! between two opens inside one process (unlike POSIX record locks), and they
//! vanish when the descriptor is closed, including on `kill -9`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{Error, Result};

/// Which lock an open image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Readers (bases in a chain, read-only opens): many at once.
    Shared,
    /// The single writer of an overlay or raw image.
    Exclusive,
}

/// Takes `kind` on `file`; [`Error::Locked`] if another open file description
/// still holds a conflicting lock after a short, bounded wait (about 250 ms).
///
/// Why wait at all: a process that spawns children (a test harness, an
/// embedding program, the CLI running `qemu-img`) briefly shares every open
/// descriptor with each child between `fork`/`clone` and `exec`, and with it
/// every flock held through that descriptor, even after the parent has closed
/// its own copy. A lock that is free again a few milliseconds later is such an
/// echo, not a second writer. A real holder (another server) keeps its lock,
/// and the caller still gets `Locked`.
pub fn lock(file: &File, kind: LockKind, path: &Path) -> Result<()> {
    const BACKOFF_MS: [u64; 6] = [5, 10, 20, 40, 80, 100];
    let op = match kind {
        LockKind::Shared => libc::LOCK_SH,
        LockKind::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    let mut waits = BACKOFF_MS.iter();
    loop {
        // SAFETY: flock on a descriptor owned by `file`, alive for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => match waits.next() {
                Some(ms) => std::thread::sleep(std::time::Duration::from_millis(*ms)),
                None => return Err(Error::Locked(path.to_owned())),
            },
            Some(libc::EINTR) => {}
            _ => return Err(Error::Io(e)),
        }
    }
}

/// Who holds flock locks on `path`, read from `/proc/locks` so that asking
/// never takes a lock itself (a probing lock could make a server's open fail
/// at that instant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Users {
    /// Shared locks: read-only opens, overlays using this image as base.
    pub readers: usize,
    /// Exclusive locks: the writer.
    pub writers: usize,
}

impl Users {
    pub fn any(&self) -> bool {
        self.readers + self.writers > 0
    }
}

/// Counts the flock holders of `path` (see [`Users`]).
pub fn users(path: &Path) -> Result<Users> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let dev = meta.dev();
    // glibc's encoding of dev_t; /proc/locks prints MAJOR:MINOR:INODE with
    // major and minor in hex.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let text = std::fs::read_to_string("/proc/locks")?;
    let mut u = Users::default();
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1124 fe:00:5349812 0 EOF"; blocked
        // waiters are shown as "1: -> FLOCK ..." and do not hold the lock.
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" || f[5] != want {
            continue;
        }
        match f[3] {
            "WRITE" => u.writers += 1,
            _ => u.readers += 1,
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_counts_readers_and_writers_without_locking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(users(&p).unwrap(), Users::default());
        let w = File::open(&p).unwrap();
        lock(&w, LockKind::Exclusive, &p).unwrap();
        assert_eq!(
            users(&p).unwrap(),
            Users {
                readers: 0,
                writers: 1
            }
        );
        let again = File::open(&p).unwrap();
        assert!(matches!(
            lock(&again, LockKind::Shared, &p),
            Err(Error::Locked(_))
        ));
        drop(w);
        let r1 = File::open(&p).unwrap();
        let r2 = File::open(&p).unwrap();
        lock(&r1, LockKind::Shared, &p).unwrap();
        lock(&r2, LockKind::Shared, &p).unwrap();
        assert_eq!(
            users(&p).unwrap(),
            Users {
                readers: 2,
                writers: 0
            }
        );
        assert!(users(&p).unwrap().any());
    }
}
