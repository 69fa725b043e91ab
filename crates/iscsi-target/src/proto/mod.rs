//! The sans-IO iSCSI target core: PDU framing (RFC 7143 section 11.1 and 12.1 digests),
//! the login phase ([`login`]), the full feature phase ([`session`]) and the SCSI
//! device emulation ([`scsi`]). Nothing here touches a socket, a file or a clock.

pub mod chap;
pub mod login;
pub mod scsi;
pub mod session;

use anyboot_wire::iscsi::{self, Bhs, BHS_LEN};
use bytes::{Buf, Bytes, BytesMut};

/// One PDU: its basic header segment and its data segment (AHS dropped:
/// we accept no extended CDBs, see [`session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    /// Additional header segments, unparsed.
    pub ahs_len: usize,
    pub data: Bytes,
}

impl Pdu {
    pub fn new(bhs: [u8; BHS_LEN], data: Bytes) -> Self {
        Self {
            bhs,
            ahs_len: 0,
            data,
        }
    }

    pub fn bhs(&self) -> Bhs<&[u8]> {
        Bhs::new_unchecked(&self.bhs[..])
    }

    pub fn bhs_mut(&mut self) -> Bhs<&mut [u8]> {
        Bhs::new_unchecked(&mut self.bhs[..])
    }

    /// Serialises header (+digest), and returns (head, data, trailer) so the
    /// driver can write them vectored without copying the data.
    pub fn encode(&self, header_digest: bool, data_digest: bool) -> (Vec<u8>, Bytes, Vec<u8>) {
        let mut head = Vec::with_capacity(BHS_LEN + 4);
        head.extend_from_slice(&self.bhs);
        if header_digest {
            head.extend_from_slice(&iscsi::digest(&self.bhs));
        }
        let mut tail = Vec::with_capacity(7);
        let pad = iscsi::pad4(self.data.len()) - self.data.len();
        tail.extend(std::iter::repeat_n(0u8, pad));
        if data_digest && !self.data.is_empty() {
            tail.extend_from_slice(&iscsi::data_digest(&self.data));
        }
        (head, self.data.clone(), tail)
    }
}

/// Why a byte stream could not be framed into PDUs; the connection ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("data digest mismatch")]
    DataDigest,
    #[error("data segment of {len} bytes exceeds our MaxRecvDataSegmentLength {max}")]
    TooLong { len: usize, max: usize },
}

/// Splits a receive buffer into PDUs: check, parse, advance. `Ok(None)` means
/// "read more"; errors are fatal for the connection (ErrorRecoveryLevel 0).
#[derive(Debug, Clone, Copy)]
pub struct Framer {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment accepted.
    pub max_data: usize,
}

impl Framer {
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Pdu>, FrameError> {
        let Ok(b) = Bhs::new_checked(&buf[..]) else {
            return Ok(None);
        };
        let dsl = b.data_segment_len();
        if dsl > self.max_data {
            return Err(FrameError::TooLong {
                len: dsl,
                max: self.max_data,
            });
        }
        let ahs = b.total_ahs_len();
        let total = BHS_LEN + b.rest_len(self.header_digest, self.data_digest);
        if buf.len() < total {
            // Let the buffer grow once to the whole PDU.
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&buf[..BHS_LEN]);
        let mut at = BHS_LEN + ahs;
        if self.header_digest {
            if buf[at..at + 4] != iscsi::digest(&buf[..at]) {
                return Err(FrameError::HeaderDigest);
            }
            at += 4;
        }
        let data_at = at;
        let padded = iscsi::pad4(dsl);
        if self.data_digest && dsl > 0 {
            let d = &buf[data_at + padded..data_at + padded + 4];
            if d != iscsi::data_digest(&buf[data_at..data_at + dsl]) {
                return Err(FrameError::DataDigest);
            }
        }
        buf.advance(data_at);
        let data = buf.split_to(dsl).freeze();
        buf.advance(total - data_at - dsl);
        Ok(Some(Pdu {
            bhs,
            ahs_len: ahs,
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyboot_wire::iscsi::Opcode;
    use proptest::prelude::*;

    fn sample(len: usize) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        let mut b = Bhs::new_unchecked(&mut bhs[..]);
        b.set_opcode(Opcode::NopOut, true);
        b.set_data_segment_len(len);
        b.set_itt(9);
        Pdu::new(bhs, Bytes::from(vec![7u8; len]))
    }

    fn wire(p: &Pdu, hd: bool, dd: bool) -> Vec<u8> {
        let (h, d, t) = p.encode(hd, dd);
        [h, d.to_vec(), t].concat()
    }

    #[test]
    fn frames_split_at_every_byte() {
        for (hd, dd) in [(false, false), (true, true), (true, false)] {
            let f = Framer {
                header_digest: hd,
                data_digest: dd,
                max_data: 1024,
            };
            let a = sample(5);
            let b = sample(0);
            let bytes = [wire(&a, hd, dd), wire(&b, hd, dd)].concat();
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                let mut got = Vec::new();
                while let Some(p) = f.decode(&mut buf).unwrap() {
                    got.push(p);
                }
                buf.extend_from_slice(&bytes[cut..]);
                while let Some(p) = f.decode(&mut buf).unwrap() {
                    got.push(p);
                }
                assert_eq!(got, vec![a.clone(), b.clone()], "cut at {cut}");
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn digest_errors_and_oversize_are_fatal() {
        let f = Framer {
            header_digest: true,
            data_digest: true,
            max_data: 8,
        };
        let mut w = wire(&sample(4), true, true);
        w[53] ^= 1; // a data byte
        assert_eq!(
            f.decode(&mut BytesMut::from(&w[..])),
            Err(FrameError::DataDigest)
        );
        let mut w = wire(&sample(4), true, true);
        w[3] ^= 1;
        assert_eq!(
            f.decode(&mut BytesMut::from(&w[..])),
            Err(FrameError::HeaderDigest)
        );
        let w = wire(&sample(9), true, true);
        assert!(matches!(
            f.decode(&mut BytesMut::from(&w[..])),
            Err(FrameError::TooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400), hd: bool, dd: bool) {
            let f = Framer { header_digest: hd, data_digest: dd, max_data: 256 };
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = f.decode(&mut buf) {}
        }
    }
}
