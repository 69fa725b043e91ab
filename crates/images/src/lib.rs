//! Block storage shared by the NBD, iSCSI and AoE targets.
//!
//! Every target serves a [`BlockDevice`]: positional, thread-safe I/O over a
//! fixed-size device. Backends: [`raw::RawFile`] (a sparse file, or a memfd for
//! RAM-backed devices). The [`attach`] module turns an export description into a
//! device for one client (the shared image itself, or a per-client overlay).
//!
//! This crate knows no protocol: it never sees an NBD flag or a SCSI opcode.

pub mod attach;
pub mod device;
pub mod error;
pub mod raw;

pub use attach::{Attachment, DiskMode, DiskSpec};
pub use device::{Allocation, BlockDevice, Extent};
pub use error::{Error, Result};
