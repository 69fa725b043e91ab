//! anyboot's wire formats: views over byte buffers with `parse`/`emit`, one module
//! per protocol. Nothing here does I/O, reads a clock or allocates on the data path.
//!
//! Conventions (see `STYLE.md`, "Wire types"): a packet is a view
//! `Packet<T: AsRef<[u8]>>` with `new_unchecked`, `check_len` and `new_checked`;
//! field offsets live in a `mod field` of `Range<usize>` constants; a plain `Repr`
//! struct carries `parse`, `buffer_len` and `emit`. Code enums keep an
//! `Unknown(n)` variant so that policy stays with the protocol cores.

pub mod aoe;
pub mod ata;
pub mod dhcp;
pub mod error;
pub mod iscsi;
pub mod nbd;
pub mod scsi;
pub mod tftp;

pub use error::{Error, Result};
