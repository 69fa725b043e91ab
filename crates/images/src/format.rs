//! On-disk format of an anyboot copy-on-write overlay (`.ovl`), version 1.
//!
//! One file holds everything, in three areas:
//!
//! ```text
//!  0          4096                      data_offset                 data_offset + clusters * cluster_size
//!  +----------+--------------------------+---------------------------+
//!  |  header  | cluster map (1 byte per  |  data area: cluster i at  |
//!  |  4 KiB   | cluster, padded to 4 KiB)|  data_offset + i * cs     |
//!  +----------+--------------------------+---------------------------+
//! ```
//!
//! The data area is *direct-mapped* and sparse: virtual cluster `i` always lives
//! at `data_offset + i * cluster_size`, and clusters never written are holes in
//! the file. No free-space management, no indirection to corrupt, no reference
//! counts; the cost is a file whose apparent size is the virtual size (the space
//! used is only the allocated clusters, on any Linux filesystem with holes).
//!
//! Map entries (one byte, so any torn map write still leaves every entry either
//! its old or its new value, both of which are consistent, see `overlay.rs`):
//! `0` unallocated (read through to the base), `1` data (in the data area),
//! `2` zero (reads as zeroes; the base is hidden).
//!
//! Header fields (little endian):
//!
//! ```text
//!  0..8    magic "anybtOVL"
//!  8..12   format version (1)
//! 12..16   cluster_bits (cluster size = 1 << cluster_bits, 9..=24)
//! 16..24   virtual size in bytes
//! 24..32   map_offset (4096)
//! 32..40   data_offset (multiple of the cluster size)
//! 40..44   flags (bit 0: frozen, i.e. a read-only snapshot other images may use as base)
//! 44..48   base_len: length of the base path, 0 for "no base" (reads as zeroes)
//! 48..52   crc32c of the 4096-byte header with this field set to zero
//! 52..64   reserved, zero
//! 64..     base path bytes (relative to the overlay's directory, or absolute)
//! ```

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// First bytes of every overlay file.
pub const MAGIC: [u8; 8] = *b"anybtOVL";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Size of the header block.
pub const HEADER_LEN: usize = 4096;
/// Map writes and dirty tracking are done in pages of this many entries.
pub const MAP_PAGE: usize = 4096;
/// Default cluster size: 64 KiB. Small enough that a 4 KiB guest write into an
/// unallocated cluster copies up only 64 KiB from the base (a ~16x write
/// amplification on first touch only), large enough that the map of a 100 GiB
/// disk is 1.6 MiB and a sequential 1 MiB request spans 16 clusters, so the
/// per-cluster bookkeeping stays far below the cost of moving the data. qcow2
/// picked the same default for the same trade-off.
pub const DEFAULT_CLUSTER_BITS: u32 = 16;
/// Most clusters an overlay may have: the map is held in memory (one byte per
/// cluster), so this bounds it at 1 GiB, e.g. a 64 TiB disk of 64 KiB clusters.
/// A damaged or hostile header cannot make us allocate more.
pub const MAX_CLUSTERS: u64 = 1 << 30;
/// Longest base path a header can hold.
pub const MAX_BASE_PATH: usize = HEADER_LEN - field::BASE_PATH;

/// Byte offsets of the header fields.
pub mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const CLUSTER_BITS: Range<usize> = 12..16;
    pub const SIZE: Range<usize> = 16..24;
    pub const MAP_OFFSET: Range<usize> = 24..32;
    pub const DATA_OFFSET: Range<usize> = 32..40;
    pub const FLAGS: Range<usize> = 40..44;
    pub const BASE_LEN: Range<usize> = 44..48;
    pub const CRC: Range<usize> = 48..52;
    pub const BASE_PATH: usize = 64;
}

/// Header flag: the overlay is a frozen snapshot; it is never opened writable.
pub const FLAG_FROZEN: u32 = 1;

/// State of one cluster, as stored in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClusterState {
    /// Not in this overlay: read through to the base.
    Unallocated = 0,
    /// In the data area.
    Data = 1,
    /// Reads as zeroes (trimmed or zeroed); the base is hidden.
    Zero = 2,
}

impl ClusterState {
    /// Decodes a map byte; `None` for a value this version never writes.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Unallocated),
            1 => Some(Self::Data),
            2 => Some(Self::Zero),
            _ => None,
        }
    }
}

/// The decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub cluster_bits: u32,
    pub size: u64,
    pub map_offset: u64,
    pub data_offset: u64,
    pub flags: u32,
    /// The base image as written in the file (maybe relative), or none.
    pub base: Option<PathBuf>,
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    NotOverlay,
    Malformed(&'static str),
}

impl Header {
    /// A header for a fresh overlay of `size` bytes; computes the layout.
    pub fn new(size: u64, cluster_bits: u32, base: Option<PathBuf>) -> Self {
        let cs = 1u64 << cluster_bits;
        let clusters = size.div_ceil(cs);
        let map_offset = HEADER_LEN as u64;
        let map_len = clusters.div_ceil(MAP_PAGE as u64) * MAP_PAGE as u64;
        let data_offset = (map_offset + map_len).div_ceil(cs) * cs;
        Self {
            cluster_bits,
            size,
            map_offset,
            data_offset,
            flags: 0,
            base,
        }
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn clusters(&self) -> u64 {
        self.size.div_ceil(self.cluster_size())
    }

    /// Length of the map area on disk (whole pages).
    pub fn map_len(&self) -> u64 {
        self.clusters().div_ceil(MAP_PAGE as u64) * MAP_PAGE as u64
    }

    /// Apparent file length: the end of the data area.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.clusters() * self.cluster_size()
    }

    pub fn frozen(&self) -> bool {
        self.flags & FLAG_FROZEN != 0
    }

    /// Encodes into a header block.
    pub fn emit(&self) -> Result<[u8; HEADER_LEN], HeaderError> {
        let mut b = [0u8; HEADER_LEN];
        let base = self
            .base
            .as_ref()
            .map(|p| p.as_os_str().as_bytes())
            .unwrap_or(&[]);
        if base.len() > MAX_BASE_PATH {
            return Err(HeaderError::Malformed("base path too long"));
        }
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        b[field::CLUSTER_BITS].copy_from_slice(&self.cluster_bits.to_le_bytes());
        b[field::SIZE].copy_from_slice(&self.size.to_le_bytes());
        b[field::MAP_OFFSET].copy_from_slice(&self.map_offset.to_le_bytes());
        b[field::DATA_OFFSET].copy_from_slice(&self.data_offset.to_le_bytes());
        b[field::FLAGS].copy_from_slice(&self.flags.to_le_bytes());
        b[field::BASE_LEN].copy_from_slice(&(base.len() as u32).to_le_bytes());
        b[field::BASE_PATH..field::BASE_PATH + base.len()].copy_from_slice(base);
        let crc = crc32c::crc32c(&b);
        b[field::CRC].copy_from_slice(&crc.to_le_bytes());
        Ok(b)
    }

    /// Decodes and validates a header block (any bytes: never panics).
    pub fn parse(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < HEADER_LEN || b[field::MAGIC] != MAGIC {
            return Err(HeaderError::NotOverlay);
        }
        let b = &b[..HEADER_LEN];
        let u32_at = |r: core::ops::Range<usize>| u32::from_le_bytes(b[r].try_into().unwrap());
        let u64_at = |r: core::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().unwrap());
        let mut copy = [0u8; HEADER_LEN];
        copy.copy_from_slice(b);
        copy[field::CRC].fill(0);
        if crc32c::crc32c(&copy) != u32_at(field::CRC) {
            return Err(HeaderError::Malformed("header checksum mismatch"));
        }
        if u32_at(field::VERSION) != VERSION {
            return Err(HeaderError::Malformed("unsupported format version"));
        }
        let cluster_bits = u32_at(field::CLUSTER_BITS);
        if !(9..=24).contains(&cluster_bits) {
            return Err(HeaderError::Malformed("cluster size out of range"));
        }
        let base_len = u32_at(field::BASE_LEN) as usize;
        if base_len > MAX_BASE_PATH {
            return Err(HeaderError::Malformed("base path too long"));
        }
        let base = (base_len > 0).then(|| {
            PathBuf::from(OsStr::from_bytes(
                &b[field::BASE_PATH..field::BASE_PATH + base_len],
            ))
        });
        let h = Header {
            cluster_bits,
            size: u64_at(field::SIZE),
            map_offset: u64_at(field::MAP_OFFSET),
            data_offset: u64_at(field::DATA_OFFSET),
            flags: u32_at(field::FLAGS),
            base,
        };
        // The layout must be exactly the one `new` computes: no overlapping
        // areas, no offsets an attacker-made file could point anywhere.
        let expect = Header::new(h.size, h.cluster_bits, None);
        if h.clusters() > MAX_CLUSTERS
            || h.map_offset != expect.map_offset
            || h.data_offset != expect.data_offset
        {
            return Err(HeaderError::Malformed("inconsistent layout"));
        }
        if h.flags & !FLAG_FROZEN != 0 {
            return Err(HeaderError::Malformed("unknown flags"));
        }
        Ok(h)
    }

    /// The base path resolved against the directory of the overlay at `path`.
    pub fn resolved_base(&self, path: &Path) -> Option<PathBuf> {
        let base = self.base.as_ref()?;
        if base.is_absolute() {
            Some(base.clone())
        } else {
            Some(path.parent().unwrap_or(Path::new(".")).join(base))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_page_and_cluster_aligned() {
        let h = Header::new(10 << 30, DEFAULT_CLUSTER_BITS, None);
        assert_eq!(h.clusters(), 163840);
        assert_eq!(h.map_offset, 4096);
        assert_eq!(h.map_len(), 163840);
        assert_eq!(h.data_offset % h.cluster_size(), 0);
        assert!(h.data_offset >= h.map_offset + h.map_len());
    }

    #[test]
    fn round_trip_and_corruption_detected() {
        let h = Header::new(12345, 12, Some(PathBuf::from("base.raw")));
        let mut b = h.emit().unwrap();
        assert_eq!(Header::parse(&b).unwrap(), h);
        b[20] ^= 1;
        assert_eq!(
            Header::parse(&b),
            Err(HeaderError::Malformed("header checksum mismatch"))
        );
        assert_eq!(Header::parse(&[0u8; 10]), Err(HeaderError::NotOverlay));
        let huge = Header::new(1 << 60, 9, None);
        assert_eq!(
            Header::parse(&huge.emit().unwrap()),
            Err(HeaderError::Malformed("inconsistent layout"))
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000), magic in any::<bool>()) {
            let mut bytes = bytes;
            if magic && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&MAGIC);
            }
            let _ = Header::parse(&bytes);
        }

        #[test]
        fn emit_parse_round_trip(size in 0u64..(1 << 39), bits in 9u32..=24, frozen in any::<bool>(),
                                 base in proptest::option::of("[a-z0-9./]{1,100}")) {
            let mut h = Header::new(size, bits, base.map(PathBuf::from));
            if frozen { h.flags |= FLAG_FROZEN; }
            prop_assert_eq!(Header::parse(&h.emit().unwrap()).unwrap(), h);
        }
    }
}
