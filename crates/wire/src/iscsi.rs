//! iSCSI PDUs (RFC 7143 section 11): basic header segment, AHS, data segment, login/text keys
//! (section 6 and 13) and the CRC32C digests of section 12.1.
//!
//! One view type, [`Bhs`], covers every PDU: the 48-byte basic header segment has
//! the same framing fields for all opcodes (byte 0, TotalAHSLength,
//! DataSegmentLength, LUN, ITT) and opcode-specific words at fixed offsets, which
//! the accessors name after the RFC. The core decides what a field means for the
//! opcode it received; this module only frames and names bytes.

use crate::error::{check_len, Error, Result};

/// Byte offsets of the basic header segment (RFC 7143 section 11.2.1).
///
/// ```text
///  0               1               2               3
/// +---------------+---------------+---------------+---------------+
/// |.|I| Opcode    |F|  Opcode-specific fields                     |
/// +---------------+---------------+---------------+---------------+
/// |TotalAHSLength | DataSegmentLength                             |
/// +---------------+---------------+---------------+---------------+
/// | LUN or Opcode-specific fields (8 bytes)                       |
/// +---------------+---------------+---------------+---------------+
/// | Initiator Task Tag                                            |
/// +---------------+---------------+---------------+---------------+
/// | Opcode-specific fields (28 bytes: words at 20..48)            |
/// +---------------+---------------+---------------+---------------+
/// ```
pub mod field {
    use core::ops::Range;
    pub const OPCODE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const SPECIFIC2: Range<usize> = 2..4;
    pub const TOTAL_AHS_LEN: usize = 4;
    pub const DATA_SEG_LEN: Range<usize> = 5..8;
    pub const LUN: Range<usize> = 8..16;
    pub const ITT: Range<usize> = 16..20;
    /// TTT (Data-Out, NOP, R2T, text, login CID/ISID-specific), or
    /// Expected Data Transfer Length (SCSI Command).
    pub const WORD20: Range<usize> = 20..24;
    /// CmdSN (initiator) or StatSN (target).
    pub const WORD24: Range<usize> = 24..28;
    /// ExpStatSN (initiator) or ExpCmdSN (target).
    pub const WORD28: Range<usize> = 28..32;
    /// MaxCmdSN (target).
    pub const WORD32: Range<usize> = 32..36;
    /// DataSN / R2TSN / ExpDataSN.
    pub const WORD36: Range<usize> = 36..40;
    /// Buffer Offset.
    pub const WORD40: Range<usize> = 40..44;
    /// Residual count / Desired Data Transfer Length.
    pub const WORD44: Range<usize> = 44..48;
    /// SCSI Command Descriptor Block (SCSI Command only).
    pub const CDB: Range<usize> = 32..48;
}

/// Length of the basic header segment.
pub const BHS_LEN: usize = field::WORD44.end;

/// TTT / ITT value meaning "none" (RFC 7143 section 11.18.4 and others).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// PDU opcodes (RFC 7143 section 11.1.1 and 11.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    SnackRequest,
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    ReadyToTransfer,
    AsyncMessage,
    Reject,
    Unknown(u8),
}

impl From<u8> for Opcode {
    fn from(v: u8) -> Self {
        match v & 0x3f {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::SnackRequest,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::ReadyToTransfer,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            n => Opcode::Unknown(n),
        }
    }
}

impl From<Opcode> for u8 {
    fn from(o: Opcode) -> u8 {
        match o {
            Opcode::NopOut => 0x00,
            Opcode::ScsiCommand => 0x01,
            Opcode::TaskMgmtRequest => 0x02,
            Opcode::LoginRequest => 0x03,
            Opcode::TextRequest => 0x04,
            Opcode::DataOut => 0x05,
            Opcode::LogoutRequest => 0x06,
            Opcode::SnackRequest => 0x10,
            Opcode::NopIn => 0x20,
            Opcode::ScsiResponse => 0x21,
            Opcode::TaskMgmtResponse => 0x22,
            Opcode::LoginResponse => 0x23,
            Opcode::TextResponse => 0x24,
            Opcode::DataIn => 0x25,
            Opcode::LogoutResponse => 0x26,
            Opcode::ReadyToTransfer => 0x31,
            Opcode::AsyncMessage => 0x32,
            Opcode::Reject => 0x3f,
            Opcode::Unknown(n) => n & 0x3f,
        }
    }
}

/// Flag bits of byte 1 shared by several PDUs.
pub mod flags {
    /// Final (F) bit.
    pub const FINAL: u8 = 0x80;
    /// SCSI Command: Read (R).
    pub const READ: u8 = 0x40;
    /// SCSI Command: Write (W).
    pub const WRITE: u8 = 0x20;
    /// SCSI Command: task attribute mask.
    pub const ATTR_MASK: u8 = 0x07;
    /// Login: Transit (T).
    pub const TRANSIT: u8 = 0x80;
    /// Login: Continue (C) / Text: Continue.
    pub const CONTINUE: u8 = 0x40;
    /// Data-In: Acknowledge (A).
    pub const ACK: u8 = 0x40;
    /// Data-In / SCSI Response: residual overflow (o / O).
    pub const BI_OVERFLOW: u8 = 0x10;
    pub const BI_UNDERFLOW: u8 = 0x08;
    pub const OVERFLOW: u8 = 0x04;
    pub const UNDERFLOW: u8 = 0x02;
    /// Data-In: Status (S) present.
    pub const STATUS: u8 = 0x01;
    /// Immediate delivery (I) bit, in byte 0.
    pub const IMMEDIATE: u8 = 0x40;
}

/// Rounds a data segment length up to the 4-byte padding boundary.
pub fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// A view over a PDU starting with its basic header segment.
#[derive(Debug, Clone)]
pub struct Bhs<T: AsRef<[u8]>> {
    buffer: T,
}

macro_rules! word {
    ($get:ident, $set:ident, $range:expr, $doc:literal) => {
        #[doc = $doc]
        pub fn $get(&self) -> u32 {
            let b = &self.buffer.as_ref()[$range];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        }
    };
}

macro_rules! set_word {
    ($set:ident, $range:expr) => {
        pub fn $set(&mut self, v: u32) {
            self.buffer.as_mut()[$range].copy_from_slice(&v.to_be_bytes());
        }
    };
}

impl<T: AsRef<[u8]>> Bhs<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks that the basic header segment is present.
    pub fn check_len(&self) -> Result<()> {
        check_len(self.buffer.as_ref(), BHS_LEN)
    }

    /// A view over untrusted bytes.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = Self::new_unchecked(buffer);
        b.check_len()?;
        Ok(b)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn opcode(&self) -> Opcode {
        Opcode::from(self.buffer.as_ref()[field::OPCODE])
    }

    /// The I (immediate delivery) bit.
    pub fn immediate(&self) -> bool {
        self.buffer.as_ref()[field::OPCODE] & flags::IMMEDIATE != 0
    }

    /// Byte 1: F and opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Bytes 2 and 3 (login: version max/min; response, status; TMF reason ...).
    pub fn specific2(&self) -> [u8; 2] {
        let b = &self.buffer.as_ref()[field::SPECIFIC2];
        [b[0], b[1]]
    }

    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub fn total_ahs_len(&self) -> usize {
        self.buffer.as_ref()[field::TOTAL_AHS_LEN] as usize * 4
    }

    pub fn data_segment_len(&self) -> usize {
        let b = &self.buffer.as_ref()[field::DATA_SEG_LEN];
        (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize
    }

    /// The eight LUN bytes (also ISID+TSIH in login PDUs).
    pub fn lun_bytes(&self) -> [u8; 8] {
        let mut o = [0; 8];
        o.copy_from_slice(&self.buffer.as_ref()[field::LUN]);
        o
    }

    /// The LUN as a single-level peripheral or flat address (SAM-5 4.7).
    pub fn lun(&self) -> u16 {
        let b = self.lun_bytes();
        u16::from_be_bytes([b[0] & 0x3f, b[1]])
    }

    word!(itt, set_itt, field::ITT, "Initiator Task Tag.");
    word!(
        word20,
        set_word20,
        field::WORD20,
        "TTT, or Expected Data Transfer Length (SCSI Command), or CID (login)."
    );
    word!(
        word24,
        set_word24,
        field::WORD24,
        "CmdSN (initiator PDUs) or StatSN (target PDUs)."
    );
    word!(
        word28,
        set_word28,
        field::WORD28,
        "ExpStatSN (initiator PDUs) or ExpCmdSN (target PDUs)."
    );
    word!(word32, set_word32, field::WORD32, "MaxCmdSN (target PDUs).");
    word!(
        word36,
        set_word36,
        field::WORD36,
        "DataSN, R2TSN or ExpDataSN."
    );
    word!(word40, set_word40, field::WORD40, "Buffer Offset.");
    word!(
        word44,
        set_word44,
        field::WORD44,
        "Residual Count or Desired Data Transfer Length."
    );

    /// Target Transfer Tag (Data-Out, NOP-Out, Text Request).
    pub fn ttt(&self) -> u32 {
        self.word20()
    }
    /// Expected Data Transfer Length (SCSI Command).
    pub fn expected_data_len(&self) -> u32 {
        self.word20()
    }
    /// CmdSN of an initiator PDU.
    pub fn cmd_sn(&self) -> u32 {
        self.word24()
    }
    /// ExpStatSN of an initiator PDU.
    pub fn exp_stat_sn(&self) -> u32 {
        self.word28()
    }

    /// The 16-byte CDB field of a SCSI Command PDU.
    pub fn cdb(&self) -> &[u8] {
        &self.buffer.as_ref()[field::CDB]
    }

    /// Bytes of the whole PDU after the BHS (AHS, digests, data, padding),
    /// given which digests are in force.
    pub fn rest_len(&self, header_digest: bool, data_digest: bool) -> usize {
        let dsl = self.data_segment_len();
        let mut n = self.total_ahs_len() + pad4(dsl);
        if header_digest {
            n += 4;
        }
        if data_digest && dsl > 0 {
            n += 4;
        }
        n
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bhs<T> {
    pub fn set_opcode(&mut self, op: Opcode, immediate: bool) {
        let mut b = u8::from(op);
        if immediate {
            b |= flags::IMMEDIATE;
        }
        self.buffer.as_mut()[field::OPCODE] = b;
    }
    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f;
    }
    pub fn set_specific2(&mut self, v: [u8; 2]) {
        self.buffer.as_mut()[field::SPECIFIC2].copy_from_slice(&v);
    }
    /// Sets TotalAHSLength from a byte count (must be a multiple of 4, < 1024).
    pub fn set_total_ahs_len(&mut self, bytes: usize) {
        self.buffer.as_mut()[field::TOTAL_AHS_LEN] = (bytes / 4) as u8;
    }
    /// Sets DataSegmentLength (24 bits; larger values are truncated by the caller's bound).
    pub fn set_data_segment_len(&mut self, n: usize) {
        let b = &mut self.buffer.as_mut()[field::DATA_SEG_LEN];
        b[0] = (n >> 16) as u8;
        b[1] = (n >> 8) as u8;
        b[2] = n as u8;
    }
    pub fn set_lun_bytes(&mut self, v: [u8; 8]) {
        self.buffer.as_mut()[field::LUN].copy_from_slice(&v);
    }
    /// Sets a single-level LUN (peripheral addressing below 256, flat above).
    pub fn set_lun(&mut self, lun: u16) {
        self.set_lun_bytes(encode_lun(lun));
    }
    set_word!(set_itt, field::ITT);
    set_word!(set_word20, field::WORD20);
    set_word!(set_word24, field::WORD24);
    set_word!(set_word28, field::WORD28);
    set_word!(set_word32, field::WORD32);
    set_word!(set_word36, field::WORD36);
    set_word!(set_word40, field::WORD40);
    set_word!(set_word44, field::WORD44);
}

/// The 8-byte encoding of a single-level LUN (SAM-5 4.7.3/4.7.7).
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let mut o = [0u8; 8];
    if lun < 256 {
        o[1] = lun as u8;
    } else {
        o[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        o[1] = lun as u8;
    }
    o
}

/// The CRC32C digest of RFC 7143 section 12.1, as its four bytes on the wire
/// (the CRC register's least significant byte first).
pub fn digest(data: &[u8]) -> [u8; 4] {
    crc32c::crc32c(data).to_le_bytes()
}

/// The CRC32C digest of a data segment and its padding.
pub fn data_digest(data: &[u8]) -> [u8; 4] {
    let pad = [0u8; 3];
    let c = crc32c::crc32c(data);
    let c = crc32c::crc32c_append(c, &pad[..pad4(data.len()) - data.len()]);
    c.to_le_bytes()
}

/// Longest key name (RFC 7143 section 6.1).
pub const MAX_KEY_LEN: usize = 63;

/// Parses a login/text data segment: `key=value` strings, each ended by NUL
/// (RFC 7143 section 6.1). A trailing fragment without NUL is an error; the
/// caller handles C-bit continuation by joining segments first.
pub fn parse_text(data: &[u8]) -> Result<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = data;
    // Padding after the last NUL is not part of the segment length, but some
    // initiators leave trailing NULs; skip empty records.
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::Malformed("text key without terminating NUL"))?;
        let rec = &rest[..end];
        rest = &rest[end + 1..];
        if rec.is_empty() {
            continue;
        }
        let rec = core::str::from_utf8(rec).map_err(|_| Error::Malformed("text key not UTF-8"))?;
        let (k, v) = rec
            .split_once('=')
            .ok_or(Error::Malformed("text record without `=`"))?;
        if k.is_empty() || k.len() > MAX_KEY_LEN {
            return Err(Error::Malformed("text key empty or too long"));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Appends `key=value\0` to `out`.
pub fn emit_text(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_fields_round_trip() {
        let mut buf = [0xa5u8; BHS_LEN];
        let mut b = Bhs::new_unchecked(&mut buf[..]);
        b.set_opcode(Opcode::ScsiCommand, true);
        b.set_flags(flags::FINAL | flags::READ | 1);
        b.set_specific2([0, 0]);
        b.set_total_ahs_len(0);
        b.set_data_segment_len(0x01_02_03);
        b.set_lun(5);
        b.set_itt(0xdead_beef);
        b.set_word20(4096);
        b.set_word24(7);
        b.set_word28(9);
        let b = Bhs::new_checked(&buf[..]).unwrap();
        assert_eq!(b.opcode(), Opcode::ScsiCommand);
        assert!(b.immediate());
        assert_eq!(b.flags(), 0xc1);
        assert_eq!(b.data_segment_len(), 0x01_02_03);
        assert_eq!(b.lun(), 5);
        assert_eq!(b.lun_bytes(), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b.itt(), 0xdead_beef);
        assert_eq!(b.expected_data_len(), 4096);
        assert_eq!(b.cmd_sn(), 7);
        assert_eq!(b.exp_stat_sn(), 9);
        // Untouched bytes keep the fill pattern.
        assert_eq!(&buf[32..48], &[0xa5; 16]);
        assert_eq!(b.rest_len(true, true), 4 + pad4(0x01_02_03) + 4);
    }

    #[test]
    fn flat_lun_addressing_above_255() {
        assert_eq!(encode_lun(300), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
        let mut buf = [0u8; BHS_LEN];
        Bhs::new_unchecked(&mut buf[..]).set_lun(300);
        assert_eq!(Bhs::new_unchecked(&buf[..]).lun(), 300);
    }

    #[test]
    fn crc32c_matches_rfc_3720_vectors() {
        // RFC 3720 appendix B.4: 32 bytes of zeroes -> aa 36 91 8a (as sent).
        assert_eq!(digest(&[0u8; 32]), [0xaa, 0x36, 0x91, 0x8a]);
        // 32 bytes of 0xff -> 43 ab a8 62.
        assert_eq!(digest(&[0xffu8; 32]), [0x43, 0xab, 0xa8, 0x62]);
        // Padding is covered by the data digest.
        assert_eq!(data_digest(&[1, 2, 3]), digest(&[1, 2, 3, 0]));
    }

    #[test]
    fn text_parse_and_emit() {
        let mut v = Vec::new();
        emit_text(&mut v, "InitiatorName", "iqn.2026-11.x:y");
        emit_text(&mut v, "AuthMethod", "CHAP,None");
        let kv = parse_text(&v).unwrap();
        assert_eq!(
            kv,
            vec![
                ("InitiatorName", "iqn.2026-11.x:y"),
                ("AuthMethod", "CHAP,None")
            ]
        );
        assert!(parse_text(b"a=b").is_err());
        assert!(parse_text(b"novalue\0").is_err());
        assert_eq!(parse_text(b"a=\0\0\0").unwrap(), vec![("a", "")]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(b) = Bhs::new_checked(&data[..]) {
                let _ = (b.opcode(), b.lun(), b.rest_len(true, true), b.cdb().len(), b.specific2());
            }
            let _ = parse_text(&data);
        }

        #[test]
        fn text_round_trips(pairs in proptest::collection::vec(("[A-Za-z][A-Za-z0-9_.]{0,20}", "[ -~&&[^=]]{0,40}"), 0..8)) {
            let mut v = Vec::new();
            for (k, val) in &pairs { emit_text(&mut v, k, val); }
            let got = parse_text(&v).unwrap();
            let want: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn opcode_round_trips(n in 0u8..64) {
            prop_assert_eq!(u8::from(Opcode::from(n)), n);
        }
    }
}
