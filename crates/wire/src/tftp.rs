//! TFTP packets (RFC 1350 section 5 and appendix) with the option extension
//! (RFC 2347: options in RRQ/WRQ, the OACK packet, error code 8), the options of
//! RFC 2348 (blksize), RFC 2349 (timeout, tsize) and RFC 7440 (windowsize).
//!
//! The parser only checks framing (opcode, NUL-terminated strings, lengths). What
//! a packet *means* (is this option acceptable? is this mode supported?) is
//! decided by the protocol core, so unknown modes, error codes and opcodes are
//! kept as data.

use crate::error::{check_len, Error, Result};

/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// The block size of RFC 1350 (no option negotiated).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Header bytes in front of a DATA payload (opcode + block number).
pub const DATA_HEADER_LEN: usize = field::BLOCK.end;
/// The largest datagram a TFTP peer can legitimately send.
pub const MAX_PACKET_LEN: usize = DATA_HEADER_LEN + MAX_BLKSIZE as usize;

/// Byte ranges of the fixed fields.
pub mod field {
    use core::ops::Range;
    /// Every packet starts with a 16-bit opcode.
    pub const OPCODE: Range<usize> = 0..2;
    /// DATA and ACK: the block number; ERROR: the error code.
    pub const BLOCK: Range<usize> = 2..4;
    /// ERROR: the error code (same place as BLOCK).
    pub const ERROR_CODE: Range<usize> = 2..4;
    /// RRQ, WRQ, OACK: NUL-terminated strings start here.
    pub const STRINGS: usize = OPCODE.end;
    /// DATA: the payload starts here.
    pub const PAYLOAD: usize = BLOCK.end;
    /// ERROR: the NUL-terminated message starts here.
    pub const ERR_MSG: usize = ERROR_CODE.end;
}

/// Opcodes of RFC 1350 section 5 and RFC 2347.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Rrq,
    Wrq,
    Data,
    Ack,
    Error,
    Oack,
    Unknown(u16),
}

impl From<u16> for Opcode {
    fn from(v: u16) -> Self {
        match v {
            1 => Self::Rrq,
            2 => Self::Wrq,
            3 => Self::Data,
            4 => Self::Ack,
            5 => Self::Error,
            6 => Self::Oack,
            n => Self::Unknown(n),
        }
    }
}

impl From<Opcode> for u16 {
    fn from(v: Opcode) -> u16 {
        match v {
            Opcode::Rrq => 1,
            Opcode::Wrq => 2,
            Opcode::Data => 3,
            Opcode::Ack => 4,
            Opcode::Error => 5,
            Opcode::Oack => 6,
            Opcode::Unknown(n) => n,
        }
    }
}

/// Error codes of RFC 1350 appendix and RFC 2347 (8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTid,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation refused (RFC 2347).
    OptionRefused,
    Unknown(u16),
}

impl From<u16> for ErrorCode {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::NotDefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            n => Self::Unknown(n),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(v: ErrorCode) -> u16 {
        match v {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Unknown(n) => n,
        }
    }
}

/// Transfer mode of a request (RFC 1350 section 5; compared case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    Netascii,
    Octet,
    /// Obsolete; kept so the core can refuse it by name.
    Mail,
    Unknown(&'a str),
}

impl<'a> Mode<'a> {
    fn parse(s: &'a str) -> Self {
        if s.eq_ignore_ascii_case("netascii") {
            Self::Netascii
        } else if s.eq_ignore_ascii_case("octet") {
            Self::Octet
        } else if s.eq_ignore_ascii_case("mail") {
            Self::Mail
        } else {
            Self::Unknown(s)
        }
    }

    /// The mode's name as sent on the wire.
    pub fn as_str(&self) -> &'a str {
        match self {
            Self::Netascii => "netascii",
            Self::Octet => "octet",
            Self::Mail => "mail",
            Self::Unknown(s) => s,
        }
    }
}

/// A view over a TFTP datagram.
///
/// ```text
///  RRQ/WRQ   | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ...
///  DATA      | 03    | block #  | data (0..blksize bytes)
///  ACK       | 04    | block #  |
///  ERROR     | 05    | ErrorCode | ErrMsg | 0 |
///  OACK      | 06    | opt1 | 0 | value1 | 0 | ...
///   2 bytes opcode, 2 bytes block/error code, strings NUL-terminated
/// ```
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the fixed fields are present, so that no getter can panic
    /// afterwards. Every valid packet has at least four bytes (a request or an
    /// OACK holds at least two NUL-terminated strings).
    pub fn check_len(&self) -> Result<()> {
        check_len(self.buffer.as_ref(), field::BLOCK.end)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn opcode(&self) -> Opcode {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::OPCODE.start], b[field::OPCODE.start + 1]]).into()
    }

    /// DATA/ACK block number.
    pub fn block(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::BLOCK.start], b[field::BLOCK.start + 1]])
    }

    /// ERROR code.
    pub fn error_code(&self) -> ErrorCode {
        self.block().into()
    }

    /// DATA payload.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// The NUL-terminated strings of RRQ/WRQ/OACK (everything after the opcode).
    pub fn strings(&self) -> &[u8] {
        &self.buffer.as_ref()[field::STRINGS..]
    }

    /// The ERROR message bytes (everything after the code).
    pub fn error_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[field::ERR_MSG..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_opcode(&mut self, op: Opcode) {
        self.buffer.as_mut()[field::OPCODE].copy_from_slice(&u16::from(op).to_be_bytes());
    }

    pub fn set_block(&mut self, block: u16) {
        self.buffer.as_mut()[field::BLOCK].copy_from_slice(&block.to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }

    fn strings_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::STRINGS..]
    }

    fn error_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::ERR_MSG..]
    }
}

/// One `name=value` option of RFC 2347 as it appears on the wire (names are
/// case-insensitive; interpreting them is the core's job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TftpOption<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The requested name, as sent (bytes: clients send whatever their
    /// firmware has; the core decides what is acceptable).
    pub filename: &'a [u8],
    pub mode: Mode<'a>,
    pub options: Vec<TftpOption<'a>>,
}

/// A parsed TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repr<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: ErrorCode, message: &'a [u8] },
    Oack { options: Vec<TftpOption<'a>> },
}

/// Upper bound on options in one packet; more is hostile (RFC 2347 limits the
/// whole request to 512 bytes anyway, but some clients send larger ones).
pub const MAX_OPTIONS: usize = 32;

/// Splits `b` at NUL bytes; the last string must be terminated too.
fn split_strings(mut b: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some(nul) = b.iter().position(|&c| c == 0) else {
            return Err(Error::Malformed("string is not NUL-terminated"));
        };
        out.push(&b[..nul]);
        b = &b[nul + 1..];
        if out.len() > 2 + 2 * MAX_OPTIONS {
            return Err(Error::Malformed("too many options"));
        }
    }
    Ok(out)
}

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str> {
    core::str::from_utf8(b).map_err(|_| Error::Malformed(what))
}

fn parse_options<'a>(strs: &[&'a [u8]]) -> Result<Vec<TftpOption<'a>>> {
    if strs.len() % 2 != 0 {
        return Err(Error::Malformed("option without a value"));
    }
    strs.chunks_exact(2)
        .map(|kv| {
            let name = utf8(kv[0], "option name is not text")?;
            if name.is_empty() {
                return Err(Error::Malformed("empty option name"));
            }
            Ok(TftpOption {
                name,
                value: utf8(kv[1], "option value is not text")?,
            })
        })
        .collect()
}

fn strings_len(options: &[TftpOption<'_>]) -> usize {
    options
        .iter()
        .map(|o| o.name.len() + 1 + o.value.len() + 1)
        .sum()
}

fn put_str(buf: &mut [u8], at: usize, s: &[u8]) -> usize {
    buf[at..at + s.len()].copy_from_slice(s);
    buf[at + s.len()] = 0;
    at + s.len() + 1
}

fn put_options(buf: &mut [u8], mut at: usize, options: &[TftpOption<'_>]) -> usize {
    for o in options {
        at = put_str(buf, at, o.name.as_bytes());
        at = put_str(buf, at, o.value.as_bytes());
    }
    at
}

impl<'a> Repr<'a> {
    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Self> {
        packet.check_len()?;
        let buf: &'a [u8] = packet.buffer.as_ref();
        let op = packet.opcode();
        match op {
            Opcode::Rrq | Opcode::Wrq => {
                let strs = split_strings(&buf[field::STRINGS..])?;
                if strs.len() < 2 {
                    return Err(Error::Malformed("request lacks filename or mode"));
                }
                if strs[0].is_empty() {
                    return Err(Error::Malformed("empty filename"));
                }
                let req = Request {
                    filename: strs[0],
                    mode: Mode::parse(utf8(strs[1], "mode is not text")?),
                    options: parse_options(&strs[2..])?,
                };
                Ok(if op == Opcode::Rrq {
                    Self::Rrq(req)
                } else {
                    Self::Wrq(req)
                })
            }
            Opcode::Data => Ok(Self::Data {
                block: packet.block(),
                data: &buf[field::PAYLOAD..],
            }),
            Opcode::Ack => Ok(Self::Ack {
                block: packet.block(),
            }),
            Opcode::Error => {
                let rest = &buf[field::ERR_MSG..];
                // Be lenient about a missing terminator: the message is only logged.
                let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
                Ok(Self::Error {
                    code: packet.error_code(),
                    message: &rest[..end],
                })
            }
            Opcode::Oack => Ok(Self::Oack {
                options: parse_options(&split_strings(&buf[field::STRINGS..])?)?,
            }),
            Opcode::Unknown(_) => Err(Error::Malformed("unknown opcode")),
        }
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Self::Rrq(_) => Opcode::Rrq,
            Self::Wrq(_) => Opcode::Wrq,
            Self::Data { .. } => Opcode::Data,
            Self::Ack { .. } => Opcode::Ack,
            Self::Error { .. } => Opcode::Error,
            Self::Oack { .. } => Opcode::Oack,
        }
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        field::OPCODE.end
            + match self {
                Self::Rrq(r) | Self::Wrq(r) => {
                    r.filename.len() + 1 + r.mode.as_str().len() + 1 + strings_len(&r.options)
                }
                Self::Data { data, .. } => 2 + data.len(),
                Self::Ack { .. } => 2,
                Self::Error { message, .. } => 2 + message.len() + 1,
                Self::Oack { options } => strings_len(options),
            }
    }

    /// Writes the packet into `packet`, whose buffer must hold at least
    /// [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_opcode(self.opcode());
        match self {
            Self::Rrq(r) | Self::Wrq(r) => {
                let b = packet.strings_mut();
                let at = put_str(b, 0, r.filename);
                let at = put_str(b, at, r.mode.as_str().as_bytes());
                put_options(b, at, &r.options);
            }
            Self::Data { block, data } => {
                packet.set_block(*block);
                packet.payload_mut()[..data.len()].copy_from_slice(data);
            }
            Self::Ack { block } => packet.set_block(*block),
            Self::Error { code, message } => {
                packet.set_block((*code).into());
                put_str(packet.error_bytes_mut(), 0, message);
            }
            Self::Oack { options } => {
                put_options(packet.strings_mut(), 0, options);
            }
        }
    }

    /// Emits into a fresh `Vec` (control packets only; DATA on the hot path is
    /// built in place by the core).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut v[..]));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_an_rrq_with_options() {
        let raw = b"\x00\x01pxelinux.0\x00OCTET\x00blksize\x001468\x00tsize\x000\x00";
        let p = Packet::new_checked(&raw[..]).unwrap();
        let r = Repr::parse(&p).unwrap();
        assert_eq!(
            r,
            Repr::Rrq(Request {
                filename: b"pxelinux.0",
                mode: Mode::Octet,
                options: vec![
                    TftpOption {
                        name: "blksize",
                        value: "1468"
                    },
                    TftpOption {
                        name: "tsize",
                        value: "0"
                    },
                ],
            })
        );
    }

    #[test]
    fn rejects_unterminated_and_odd_options() {
        let bad: &[&[u8]] = &[
            b"\x00\x01file\x00octet",
            b"\x00\x01file\x00octet\x00blksize\x00",
            b"\x00\x01\x00octet\x00",
            b"\x00\x01file\x00",
            b"\x00",
            b"\x00\x03\x00",
            b"\x00\x09\x00\x00",
        ];
        for b in bad {
            let r = Packet::new_checked(*b).and_then(|p| Repr::parse(&p));
            assert!(r.is_err(), "{b:?} parsed as {r:?}");
        }
    }

    #[test]
    fn emits_data_into_a_prefilled_buffer() {
        let mut buf = [0xa5u8; 10];
        let r = Repr::Data {
            block: 0x1234,
            data: b"abc",
        };
        assert_eq!(r.buffer_len(), 7);
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf, b"\x00\x03\x12\x34abc\xa5\xa5\xa5");
    }

    #[test]
    fn error_and_oack_layout() {
        let e = Repr::Error {
            code: ErrorCode::UnknownTid,
            message: b"unknown transfer ID",
        }
        .to_vec();
        assert_eq!(&e[..4], b"\x00\x05\x00\x05");
        assert_eq!(e.last(), Some(&0));
        let o = Repr::Oack {
            options: vec![TftpOption {
                name: "blksize",
                value: "8",
            }],
        }
        .to_vec();
        assert_eq!(o, b"\x00\x06blksize\x008\x00");
        // An error message without its NUL is still accepted (only logged).
        let p = Packet::new_checked(&b"\x00\x05\x00\x08no"[..]).unwrap();
        assert_eq!(
            Repr::parse(&p).unwrap(),
            Repr::Error {
                code: ErrorCode::OptionRefused,
                message: b"no"
            }
        );
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._/-]{1,20}"
    }

    fn opts() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec((text(), "[a-z0-9]{0,8}"), 0..5)
    }

    fn repr_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (
                any::<bool>(),
                text(),
                prop_oneof![Just("octet"), Just("netascii"), Just("mail"), Just("x")],
                opts()
            )
                .prop_map(|(w, f, m, o)| {
                    let options: Vec<TftpOption> = o
                        .iter()
                        .map(|(n, v)| TftpOption { name: n, value: v })
                        .collect();
                    let req = Request {
                        filename: f.as_bytes(),
                        mode: Mode::parse(m),
                        options,
                    };
                    if w { Repr::Wrq(req) } else { Repr::Rrq(req) }.to_vec()
                }),
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..600))
                .prop_map(|(b, d)| { Repr::Data { block: b, data: &d }.to_vec() }),
            any::<u16>().prop_map(|b| Repr::Ack { block: b }.to_vec()),
            (any::<u16>(), "[ -~]{0,30}").prop_map(|(c, m)| {
                Repr::Error {
                    code: c.into(),
                    message: m.as_bytes(),
                }
                .to_vec()
            }),
            opts()
                .prop_filter("an OACK acknowledges at least one option", |o| !o
                    .is_empty())
                .prop_map(|o| {
                    let options: Vec<TftpOption> = o
                        .iter()
                        .map(|(n, v)| TftpOption { name: n, value: v })
                        .collect();
                    Repr::Oack { options }.to_vec()
                }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(p) = Packet::new_checked(&b[..]) {
                let _ = p.opcode();
                let _ = p.block();
                let _ = p.payload();
                let _ = Repr::parse(&p);
            }
        }

        #[test]
        fn parse_emit_round_trip(wire in repr_strategy()) {
            let p = Packet::new_checked(&wire[..]).unwrap();
            let r = Repr::parse(&p).unwrap();
            prop_assert_eq!(r.buffer_len(), wire.len());
            let again = r.to_vec();
            prop_assert_eq!(&again, &wire);
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&again[..]).unwrap()).unwrap(), r);
        }
    }
}
