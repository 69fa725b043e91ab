//! Block storage shared by the NBD, iSCSI and AoE targets.
//!
//! Every target serves a [`BlockDevice`]: positional, thread-safe I/O over a
//! fixed-size device. Backends: [`raw::RawFile`] (a sparse file, or a memfd for
//! RAM-backed devices) and [`overlay::Overlay`] (copy-on-write on a read-only
//! base, chains of any depth). [`lifecycle`] and [`versions`] implement
//! snapshots, rollback, flattening and versioned images for the
//! `anyboot-image` tool. The [`attach`] module turns an export description into a
//! device for one client (the shared image itself, or a per-client overlay).
//!
//! This crate knows no protocol: it never sees an NBD flag or a SCSI opcode.
//!
//! A block target attaches each client and serves the device (blocking
//! calls: run them on a blocking pool or a dedicated thread):
//!
//! ```no_run
//! use std::path::PathBuf;
//! use anyboot_images::{Attachment, BlockDevice, DiskMode, DiskSpec};
//!
//! let spec = DiskSpec {
//!     // A raw file, an overlay, or a versioned image directory.
//!     image: PathBuf::from("/srv/anyboot/images/debian"),
//!     read_only: false,
//!     mode: DiskMode::Throwaway,
//!     overlay_dir: PathBuf::from("/var/lib/anyboot/overlays"),
//! };
//! let attachment = Attachment::open(&spec, "52:54:00:12:34:56")?;
//! let dev = attachment.device();
//! let mut sector = [0u8; 512];
//! dev.read_at(&mut sector, 0)?;
//! dev.write_at(&sector, 4096, false)?;
//! dev.flush()?;
//! drop(attachment); // the throwaway overlay is deleted
//! # Ok::<(), anyboot_images::Error>(())
//! ```

pub mod attach;
pub mod chain;
pub mod device;
pub mod error;
pub mod format;
pub mod lifecycle;
pub mod lock;
pub mod media_clock;
pub mod overlay;
pub mod raw;
pub mod versions;

pub use attach::{Attachment, DiskMode, DiskSpec};
pub use device::{Allocation, BlockDevice, Extent};
pub use error::{Error, Result};
pub use media_clock::MediaClock;
