//! The sans-IO TFTP core: option negotiation, read and write transfers as state
//! machines over datagrams and time (RFC 1350, 2347-2349, 7440). No sockets, no
//! clock: the driver passes `now` in and pulls datagrams and events out.

pub mod netascii;
pub mod options;
pub mod read;
pub mod write;

#[cfg(test)]
mod sim;

use std::net::SocketAddr;

use anyboot_wire::tftp::{ErrorCode, Packet, Repr};

pub use options::{negotiate, Direction, Negotiated, Policy};
pub use read::ReadTransfer;
pub use write::WriteTransfer;

/// Where a read transfer's bytes come from: memory (the shared cache, a
/// generated file, a netascii conversion) or a file read on demand.
pub trait Source {
    /// Total bytes.
    fn len(&self) -> u64;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; returns the bytes read (short only at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl Source for bytes::Bytes {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = (offset.min(Source::len(self))) as usize;
        let n = buf.len().min(<[u8]>::len(self) - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Why a transfer ended without completing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The peer stopped answering: every retransmission went unanswered.
    TimedOut,
    /// The peer sent an ERROR packet (code 8 after an OACK: options refused).
    PeerError { code: ErrorCode, message: String },
    /// The peer broke the protocol; we sent an ERROR.
    Protocol(&'static str),
    /// Reading or writing the file failed; we sent an ERROR.
    Io(String),
    /// The upload exceeded its size limit; we sent ERROR 3.
    TooLarge,
}

/// What a transfer reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// WRQ: the next in-order bytes of the upload (already netascii-decoded).
    Data(Vec<u8>),
    /// The transfer completed; `bytes` is the payload size moved.
    Done { bytes: u64 },
    /// The transfer ended early.
    Failed(Failure),
}

/// A datagram the driver must send: `len` bytes written into its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    pub dst: SocketAddr,
    pub len: usize,
}

/// An ERROR packet as bytes (control path).
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    Repr::Error {
        code,
        message: message.as_bytes(),
    }
    .to_vec()
}

/// Writes an ERROR packet into `buf`; returns its length.
fn emit_error(buf: &mut [u8], code: ErrorCode, message: &str) -> usize {
    let r = Repr::Error {
        code,
        message: message.as_bytes(),
    };
    let len = r.buffer_len().min(buf.len());
    if len == r.buffer_len() {
        r.emit(&mut Packet::new_unchecked(&mut buf[..len]));
    }
    len
}

/// Maps a 16-bit wire block number to the absolute block it names, given the
/// absolute block `base` it must be after (RFC 1350 numbers wrap at 65536; the
/// number after 65535 is 0, as tftp-hpa, curl, atftp and iPXE expect).
/// Returns the forward distance from `base` (0: `base` itself).
pub(crate) fn distance(base: u64, wire: u16) -> u64 {
    u64::from(wire.wrapping_sub(base as u16))
}

/// The wire number of absolute block `abs`.
pub(crate) fn wire_block(abs: u64) -> u16 {
    abs as u16
}
