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

pub mod attach;
pub mod chain;
pub mod device;
pub mod error;
pub mod format;
pub mod lifecycle;
pub mod lock;
pub mod overlay;
pub mod raw;
pub mod versions;

pub use attach::{Attachment, DiskMode, DiskSpec};
pub use device::{Allocation, BlockDevice, Extent};
pub use error::{Error, Result};
