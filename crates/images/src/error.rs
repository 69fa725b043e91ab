//! Errors of block devices and image operations.

use std::path::PathBuf;

/// What went wrong with a block device or image operation.
///
/// Targets map these to their protocol's codes (NBD errno, SCSI sense, ATA status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request does not lie inside the device; nothing was accessed.
    #[error("request at offset {offset} with length {len} is outside the device of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A write, trim or zeroing on a read-only device.
    #[error("device is read-only")]
    ReadOnly,
    /// The backend cannot do this (e.g. a fast zero it would have to emulate).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// The backing store is full.
    #[error("no space left on the backing store")]
    NoSpace,
    /// An image file is damaged or not of the expected format.
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
    /// Another process holds the image open for writing.
    #[error("{0}: image is in use by another process")]
    Locked(PathBuf),
    /// The operating system reported an error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Maps an I/O error, turning ENOSPC into [`Error::NoSpace`].
    pub fn from_io(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            Error::NoSpace
        } else {
            Error::Io(e)
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = core::result::Result<T, Error>;
