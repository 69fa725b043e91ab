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

/// Takes `kind` on `file` without waiting; [`Error::Locked`] if another open
/// file description holds a conflicting lock.
pub fn lock(file: &File, kind: LockKind, path: &Path) -> Result<()> {
    let op = match kind {
        LockKind::Shared => libc::LOCK_SH,
        LockKind::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor owned by `file`, alive for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(Error::Locked(path.to_owned()))
    } else {
        Err(Error::Io(e))
    }
}

/// Whether anybody (in this or another process) holds any lock on `path`.
pub fn in_use(path: &Path) -> Result<bool> {
    let f = File::open(path)?;
    match lock(&f, LockKind::Exclusive, path) {
        Ok(()) => Ok(false),
        Err(Error::Locked(_)) => Ok(true),
        Err(e) => Err(e),
    }
}
