//! Raw image backend: a plain (sparse) file, or an anonymous memfd for RAM-backed
//! devices. Trim punches holes, zeroing uses fallocate, allocation comes from
//! SEEK_DATA/SEEK_HOLE, flush is fdatasync.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::device::{check_range, Allocation, BlockDevice, Extent};
use crate::{Error, Result};

/// A raw disk image: byte `n` of the device is byte `n` of the file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    path: Option<PathBuf>,
    size: u64,
    read_only: bool,
}

impl RawFile {
    /// Opens an existing image; its size is the file's size.
    ///
    /// A writable open of a frozen image (no write permission bits: the base of
    /// an overlay or snapshot, see `chain::freeze`) is refused with
    /// [`Error::ReadOnly`], also for root, who would otherwise be let through.
    pub fn open(path: &Path, read_only: bool) -> Result<Self> {
        if !read_only && crate::chain::mode_is_frozen(path)? {
            return Err(Error::ReadOnly);
        }
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            path: Some(path.to_owned()),
            size,
            read_only,
        })
    }

    /// Creates a new sparse image of `size` bytes; fails if `path` exists.
    pub fn create(path: &Path, size: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(Self {
            file,
            path: Some(path.to_owned()),
            size,
            read_only: false,
        })
    }

    /// A RAM-backed device of `size` bytes (an anonymous memfd; sparse, so only
    /// written pages cost memory).
    pub fn memory(size: u64) -> Result<Self> {
        // SAFETY: the name is a valid NUL-terminated string; the returned fd is
        // checked and then owned by `File`.
        let fd = unsafe { libc::memfd_create(c"anyboot-mem".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        Ok(Self {
            file,
            path: None,
            size,
            read_only: false,
        })
    }

    /// The file's path, if it has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The underlying file, for backends layered on top of this one.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size)?;
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: plain syscall on a descriptor we own; arguments are in range
        // because the caller checked them against the device size.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on our own descriptor. Positional I/O elsewhere never uses
        // the file position, so moving it here races with nothing.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

impl BlockDevice for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, offset).map_err(Error::from_io)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(Error::from_io)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(Error::from_io)
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .map_err(Error::from_io)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> Result<()> {
        self.check_write(offset, len)?;
        let mode = if may_trim {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Ok(()) => Ok(()),
            // Filesystems without ZERO_RANGE (tmpfs, memfd): write real zeroes.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                write_zero_bytes(&self.file, offset, len)
            }
            Err(e) => Err(Error::from_io(e)),
        }
    }

    fn can_fast_zero(&self) -> bool {
        !self.read_only
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(offset, len, self.size)?;
        let end = offset + len;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = self.seek(pos, libc::SEEK_DATA)?.unwrap_or(end).min(end);
            if data > pos {
                out.push(Extent {
                    len: data - pos,
                    state: Allocation::Hole,
                });
                pos = data;
                continue;
            }
            let hole = self.seek(pos, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
            out.push(Extent {
                len: hole - pos,
                state: Allocation::Data,
            });
            pos = hole;
        }
        Ok(out)
    }
}

/// Writes `len` zero bytes at `offset` in bounded chunks.
pub(crate) fn write_zero_bytes(file: &File, mut offset: u64, len: u64) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeroes = vec![0u8; CHUNK.min(len as usize)];
    let end = offset + len;
    while offset < end {
        let n = ((end - offset) as usize).min(zeroes.len());
        file.write_all_at(&zeroes[..n], offset)
            .map_err(Error::from_io)?;
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_device_round_trips_and_reports_holes() {
        let dev = RawFile::memory(1 << 20).unwrap();
        let data = vec![0xa5u8; 4096];
        dev.write_at(&data, 65536, false).unwrap();
        let mut back = vec![0u8; 4096];
        dev.read_at(&mut back, 65536).unwrap();
        assert_eq!(back, data);
        let map = dev.block_status(0, 1 << 20).unwrap();
        assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), 1 << 20);
        assert!(map.iter().any(|e| e.state == Allocation::Data));
        assert_eq!(map[0].state, Allocation::Hole);
    }

    #[test]
    fn out_of_range_and_read_only_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        RawFile::create(&path, 4096).unwrap();
        let ro = RawFile::open(&path, true).unwrap();
        let mut buf = [0u8; 512];
        assert!(matches!(
            ro.read_at(&mut buf, 4000),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(ro.write_at(&buf, 0, false), Err(Error::ReadOnly)));
    }

    #[test]
    fn trim_reads_back_zero() {
        let dev = RawFile::memory(1 << 16).unwrap();
        dev.write_at(&[7u8; 8192], 0, false).unwrap();
        dev.trim(0, 4096).unwrap();
        dev.write_zeroes(4096, 4096, false).unwrap();
        let mut back = [1u8; 8192];
        dev.read_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0));
    }
}
