//! The block-device interface that all three targets serve.

use crate::{Error, Result};

/// How a range of a device is backed, for NBD `base:allocation`, SCSI GET LBA
/// STATUS and sparse reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Allocated, holds data (which may happen to be zero).
    Data,
    /// Allocated (or recorded) and reads as zeroes.
    Zero,
    /// Not allocated; reads as zeroes.
    Hole,
}

/// A run of bytes with one [`Allocation`] state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub state: Allocation,
}

/// A fixed-size, thread-safe block device with positional I/O.
///
/// Every method may be called from many threads at once. Offsets and lengths are
/// in bytes; implementations reject any request not wholly inside the device with
/// [`Error::OutOfRange`] before touching storage (see [`check_range`]). Calls block:
/// async drivers run them on a blocking pool or a dedicated thread.
pub trait BlockDevice: Send + Sync + std::fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Preferred logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32 {
        512
    }
    /// Whether writes, trims and zeroing are refused.
    fn is_read_only(&self) -> bool;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes `buf` at `offset`; with `fua`, durable before returning.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Discards a range: afterwards it reads as zeroes (never as older data).
    fn trim(&self, offset: u64, len: u64) -> Result<()>;
    /// Zeroes a range. With `may_trim` the range may be deallocated;
    /// without, it stays allocated.
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> Result<()>;
    /// Whether [`BlockDevice::write_zeroes`] is cheap (no data written), for NBD
    /// FAST_ZERO.
    fn can_fast_zero(&self) -> bool {
        false
    }
    /// Allocation states covering `[offset, offset + len)`, in order. The extents
    /// may stop early (then the caller asks again from where they end) but
    /// never extend past `offset + len`.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;
}

/// Rejects a request not wholly inside a device of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_range_rejects_overflow_and_past_end() {
        assert!(check_range(0, 512, 512).is_ok());
        assert!(check_range(512, 0, 512).is_ok());
        assert!(matches!(
            check_range(1, 512, 512),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            check_range(u64::MAX, 2, 512),
            Err(Error::OutOfRange { .. })
        ));
    }
}
