//! NBD wire format per the NBD protocol document (`doc/proto.md` of the
//! NetworkBlockDevice project, including its `EXTENDED_HEADERS` extension):
//! fixed-newstyle handshake, option requests and replies, compact and extended
//! requests, simple replies and structured/extended reply chunks.
//!
//! All integers are big-endian ("network byte order"). Nothing here does I/O;
//! which replies to send is decided by the server's protocol core.

use crate::error::{check_len, Error, Result};

/// Magic numbers ("Reserved Magic values" and the message sections).
pub mod magic {
    /// `NBDMAGIC`, first 8 bytes the server sends (`INIT_PASSWD`).
    pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    /// `IHAVEOPT`: newstyle greeting and the start of every option request.
    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    /// Oldstyle's `cliserv_magic` (never sent by us; for recognising it).
    pub const CLISERV: u64 = 0x0000_4202_8186_1253;
    /// Start of every option reply.
    pub const OPTION_REPLY: u64 = 0x0003_e889_0455_65a9;
    /// `NBD_REQUEST_MAGIC` (compact requests).
    pub const REQUEST: u32 = 0x2560_9513;
    /// `NBD_EXTENDED_REQUEST_MAGIC`.
    pub const EXTENDED_REQUEST: u32 = 0x21e4_1c71;
    /// `NBD_SIMPLE_REPLY_MAGIC`.
    pub const SIMPLE_REPLY: u32 = 0x6744_6698;
    /// `NBD_STRUCTURED_REPLY_MAGIC`.
    pub const STRUCTURED_REPLY: u32 = 0x668e_33ef;
    /// `NBD_EXTENDED_REPLY_MAGIC`.
    pub const EXTENDED_REPLY: u32 = 0x6e8a_278c;
}

/// Handshake flags (server, 16 bits).
pub mod handshake_flags {
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (32 bits).
pub mod client_flags {
    pub const C_FIXED_NEWSTYLE: u32 = 1 << 0;
    pub const C_NO_ZEROES: u32 = 1 << 1;
}

/// Transmission flags (16 bits).
pub mod transmission_flags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_RESIZE: u16 = 1 << 9;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
    pub const BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;
}

/// Command flags (16 bits).
pub mod cmd_flags {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured/extended reply flags (16 bits).
pub mod reply_flags {
    pub const DONE: u16 = 1 << 0;
}

/// `base:allocation` status flags.
pub mod state {
    pub const HOLE: u32 = 1 << 0;
    pub const ZERO: u32 = 1 << 1;
}

/// Error values ("Error values").
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// The longest string the document allows (export names, messages).
pub const MAX_STRING: usize = 4096;

/// Declares a code enum with an `Unknown(n)` fallback and lossless
/// conversions both ways.
macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident: $repr:ty { $($(#[$vm:meta])* $var:ident = $val:expr,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $var,)*
            /// A value this crate does not know.
            Unknown($repr),
        }
        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                match v {
                    $($val => Self::$var,)*
                    other => Self::Unknown(other),
                }
            }
        }
        impl From<$name> for $repr {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$var => $val,)*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

code_enum! {
    /// Option types (`NBD_OPT_*`).
    OptionCode: u32 {
        ExportName = 1,
        Abort = 2,
        List = 3,
        PeekExport = 4,
        StartTls = 5,
        Info = 6,
        Go = 7,
        StructuredReply = 8,
        ListMetaContext = 9,
        SetMetaContext = 10,
        ExtendedHeaders = 11,
    }
}

code_enum! {
    /// Option reply types (`NBD_REP_*`); errors have bit 31 set.
    ReplyType: u32 {
        Ack = 1,
        Server = 2,
        Info = 3,
        MetaContext = 4,
        ErrUnsup = 0x8000_0001,
        ErrPolicy = 0x8000_0002,
        ErrInvalid = 0x8000_0003,
        ErrPlatform = 0x8000_0004,
        ErrTlsReqd = 0x8000_0005,
        ErrUnknown = 0x8000_0006,
        ErrShutdown = 0x8000_0007,
        ErrBlockSizeReqd = 0x8000_0008,
        ErrTooBig = 0x8000_0009,
        ErrExtHeaderReqd = 0x8000_000a,
    }
}

impl ReplyType {
    /// Whether this is an error reply (bit 31).
    pub fn is_error(self) -> bool {
        u32::from(self) & 0x8000_0000 != 0
    }
}

code_enum! {
    /// Information types of `NBD_REP_INFO` (`NBD_INFO_*`).
    InfoType: u16 {
        Export = 0,
        Name = 1,
        Description = 2,
        BlockSize = 3,
    }
}

code_enum! {
    /// Request types (`NBD_CMD_*`).
    Command: u16 {
        Read = 0,
        Write = 1,
        Disc = 2,
        Flush = 3,
        Trim = 4,
        Cache = 5,
        WriteZeroes = 6,
        BlockStatus = 7,
        Resize = 8,
    }
}

code_enum! {
    /// Structured reply chunk types (`NBD_REPLY_TYPE_*`).
    ChunkType: u16 {
        None = 0,
        OffsetData = 1,
        OffsetHole = 2,
        BlockStatus = 5,
        BlockStatusExt = 6,
        Error = 0x8001,
        ErrorOffset = 0x8002,
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn utf8(b: &[u8]) -> Result<&str> {
    if b.len() > MAX_STRING {
        return Err(Error::Malformed("string longer than 4096 bytes"));
    }
    let s = core::str::from_utf8(b).map_err(|_| Error::Malformed("string is not UTF-8"))?;
    if s.contains('\0') {
        return Err(Error::Malformed("string contains NUL"));
    }
    Ok(s)
}

/// The server's newstyle greeting.
///
/// ```text
/// +----------------+----------------+--------+
/// | NBDMAGIC (64)  | IHAVEOPT (64)  | flags  |
/// |                |                | (16)   |
/// +----------------+----------------+--------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreetingRepr {
    pub handshake_flags: u16,
}

impl GreetingRepr {
    pub const LEN: usize = 18;

    pub fn parse(buf: &[u8]) -> Result<Self> {
        check_len(buf, Self::LEN)?;
        if be64(&buf[0..8]) != magic::NBDMAGIC {
            return Err(Error::Malformed("bad NBDMAGIC"));
        }
        if be64(&buf[8..16]) != magic::IHAVEOPT {
            return Err(Error::Malformed("not a newstyle greeting"));
        }
        Ok(Self {
            handshake_flags: be16(&buf[16..18]),
        })
    }

    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&magic::NBDMAGIC.to_be_bytes());
        buf[8..16].copy_from_slice(&magic::IHAVEOPT.to_be_bytes());
        buf[16..18].copy_from_slice(&self.handshake_flags.to_be_bytes());
    }
}

/// An option request header, seen through a buffer. The option data (`length`
/// bytes) follows it.
///
/// ```text
/// +----------------+----------+----------+------------------+
/// | IHAVEOPT (64)  | option   | length   | data (length)    |
/// |                | (32)     | (32)     |                  |
/// +----------------+----------+----------+------------------+
/// ```
#[derive(Debug, Clone)]
pub struct OptionPacket<T: AsRef<[u8]>> {
    buffer: T,
}

mod opt_field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const OPTION: Range<usize> = 8..12;
    pub const LENGTH: Range<usize> = 12..16;
}

impl<T: AsRef<[u8]>> OptionPacket<T> {
    pub const HEADER_LEN: usize = opt_field::LENGTH.end;

    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the header is complete and starts with `IHAVEOPT`.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        if be64(&p.buffer.as_ref()[opt_field::MAGIC]) != magic::IHAVEOPT {
            return Err(Error::Malformed("option request without IHAVEOPT"));
        }
        Ok(p)
    }

    pub fn check_len(&self) -> Result<()> {
        check_len(self.buffer.as_ref(), Self::HEADER_LEN)
    }

    pub fn option(&self) -> OptionCode {
        be32(&self.buffer.as_ref()[opt_field::OPTION]).into()
    }

    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[opt_field::LENGTH])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> OptionPacket<T> {
    pub fn set_magic(&mut self) {
        self.buffer.as_mut()[opt_field::MAGIC].copy_from_slice(&magic::IHAVEOPT.to_be_bytes());
    }
    pub fn set_option(&mut self, v: OptionCode) {
        self.buffer.as_mut()[opt_field::OPTION].copy_from_slice(&u32::from(v).to_be_bytes());
    }
    pub fn set_length(&mut self, v: u32) {
        self.buffer.as_mut()[opt_field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }
}

/// The header of an option request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionRepr {
    pub option: OptionCode,
    pub length: u32,
}

impl OptionRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &OptionPacket<T>) -> Result<Self> {
        Ok(Self {
            option: p.option(),
            length: p.length(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        OptionPacket::<&[u8]>::HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut OptionPacket<T>) {
        p.set_magic();
        p.set_option(self.option);
        p.set_length(self.length);
    }
}

/// An option reply header; `length` bytes of reply data follow.
///
/// ```text
/// +----------------+----------+------------+----------+-----------+
/// | magic (64)     | option   | reply type | length   | data      |
/// | 0x3e889045565a9| (32)     | (32)       | (32)     | (length)  |
/// +----------------+----------+------------+----------+-----------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyRepr {
    pub option: OptionCode,
    pub reply_type: ReplyType,
    pub length: u32,
}

impl OptionReplyRepr {
    pub const LEN: usize = 20;

    pub fn parse(buf: &[u8]) -> Result<Self> {
        check_len(buf, Self::LEN)?;
        if be64(&buf[0..8]) != magic::OPTION_REPLY {
            return Err(Error::Malformed("bad option reply magic"));
        }
        Ok(Self {
            option: be32(&buf[8..12]).into(),
            reply_type: be32(&buf[12..16]).into(),
            length: be32(&buf[16..20]),
        })
    }

    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&magic::OPTION_REPLY.to_be_bytes());
        buf[8..12].copy_from_slice(&u32::from(self.option).to_be_bytes());
        buf[12..16].copy_from_slice(&u32::from(self.reply_type).to_be_bytes());
        buf[16..20].copy_from_slice(&self.length.to_be_bytes());
    }
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags and (unless
/// `NO_ZEROES` was agreed) 124 bytes of zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReplyRepr {
    pub size: u64,
    pub flags: u16,
    pub zeroes: bool,
}

impl ExportNameReplyRepr {
    pub fn buffer_len(&self) -> usize {
        10 + if self.zeroes { 124 } else { 0 }
    }

    pub fn parse(buf: &[u8], zeroes: bool) -> Result<Self> {
        let need = if zeroes { 134 } else { 10 };
        check_len(buf, need)?;
        Ok(Self {
            size: be64(&buf[0..8]),
            flags: be16(&buf[8..10]),
            zeroes,
        })
    }

    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&self.size.to_be_bytes());
        buf[8..10].copy_from_slice(&self.flags.to_be_bytes());
        if self.zeroes {
            buf[10..134].fill(0);
        }
    }
}

/// The data of an `NBD_REP_INFO` reply.
///
/// ```text
/// +-----------+--------------------------------------------+
/// | type (16) | payload (length - 2)                       |
/// +-----------+--------------------------------------------+
/// EXPORT:     size (64), transmission flags (16)
/// NAME:       name (string)
/// DESCRIPTION description (string)
/// BLOCK_SIZE: minimum (32), preferred (32), maximum payload (32)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoRepr<'a> {
    Export { size: u64, flags: u16 },
    Name(&'a str),
    Description(&'a str),
    BlockSize { min: u32, preferred: u32, max: u32 },
}

impl<'a> InfoRepr<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        check_len(data, 2)?;
        let rest = &data[2..];
        match InfoType::from(be16(data)) {
            InfoType::Export => {
                if rest.len() != 10 {
                    return Err(Error::Malformed("NBD_INFO_EXPORT length is not 12"));
                }
                Ok(Self::Export {
                    size: be64(&rest[0..8]),
                    flags: be16(&rest[8..10]),
                })
            }
            InfoType::Name => Ok(Self::Name(utf8(rest)?)),
            InfoType::Description => Ok(Self::Description(utf8(rest)?)),
            InfoType::BlockSize => {
                if rest.len() != 12 {
                    return Err(Error::Malformed("NBD_INFO_BLOCK_SIZE length is not 14"));
                }
                Ok(Self::BlockSize {
                    min: be32(&rest[0..4]),
                    preferred: be32(&rest[4..8]),
                    max: be32(&rest[8..12]),
                })
            }
            InfoType::Unknown(_) => Err(Error::Malformed("unknown information type")),
        }
    }

    pub fn buffer_len(&self) -> usize {
        2 + match self {
            Self::Export { .. } => 10,
            Self::Name(s) | Self::Description(s) => s.len(),
            Self::BlockSize { .. } => 12,
        }
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let (ty, rest) = buf.split_at_mut(2);
        let t = match self {
            Self::Export { size, flags } => {
                rest[0..8].copy_from_slice(&size.to_be_bytes());
                rest[8..10].copy_from_slice(&flags.to_be_bytes());
                InfoType::Export
            }
            Self::Name(s) => {
                rest[..s.len()].copy_from_slice(s.as_bytes());
                InfoType::Name
            }
            Self::Description(s) => {
                rest[..s.len()].copy_from_slice(s.as_bytes());
                InfoType::Description
            }
            Self::BlockSize {
                min,
                preferred,
                max,
            } => {
                rest[0..4].copy_from_slice(&min.to_be_bytes());
                rest[4..8].copy_from_slice(&preferred.to_be_bytes());
                rest[8..12].copy_from_slice(&max.to_be_bytes());
                InfoType::BlockSize
            }
        };
        ty.copy_from_slice(&u16::from(t).to_be_bytes());
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
///
/// ```text
/// +-------------+--------------+------------+---------------------+
/// | name length | name         | count (16) | info types (16 x n) |
/// | (32)        |              |            |                     |
/// +-------------+--------------+------------+---------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequestRepr<'a> {
    pub name: &'a str,
    pub requests: Vec<InfoType>,
}

impl<'a> InfoRequestRepr<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        check_len(data, 4)?;
        let name_len = be32(data) as usize;
        if name_len > data.len() - 4 {
            return Err(Error::Malformed("export name runs past the option data"));
        }
        let name = utf8(&data[4..4 + name_len])?;
        let rest = &data[4 + name_len..];
        check_len(rest, 2)?;
        let n = be16(rest) as usize;
        let list = &rest[2..];
        if list.len() != n * 2 {
            return Err(Error::Malformed(
                "information request count does not match length",
            ));
        }
        let requests = list.chunks_exact(2).map(|c| be16(c).into()).collect();
        Ok(Self { name, requests })
    }

    pub fn buffer_len(&self) -> usize {
        4 + self.name.len() + 2 + 2 * self.requests.len()
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let n = self.name.len();
        buf[0..4].copy_from_slice(&(n as u32).to_be_bytes());
        buf[4..4 + n].copy_from_slice(self.name.as_bytes());
        buf[4 + n..6 + n].copy_from_slice(&(self.requests.len() as u16).to_be_bytes());
        for (i, r) in self.requests.iter().enumerate() {
            let at = 6 + n + 2 * i;
            buf[at..at + 2].copy_from_slice(&u16::from(*r).to_be_bytes());
        }
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
///
/// ```text
/// +-------------+------+-------------+---------------------------------+
/// | name length | name | count (32)  | n x (query length (32), query)  |
/// +-------------+------+-------------+---------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequestRepr<'a> {
    pub name: &'a str,
    pub queries: Vec<&'a str>,
}

impl<'a> MetaContextRequestRepr<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        check_len(data, 4)?;
        let name_len = be32(data) as usize;
        if name_len > data.len() - 4 {
            return Err(Error::Malformed("export name runs past the option data"));
        }
        let name = utf8(&data[4..4 + name_len])?;
        let mut rest = &data[4 + name_len..];
        check_len(rest, 4)?;
        let n = be32(rest) as usize;
        rest = &rest[4..];
        // Each query takes at least 4 bytes: a count beyond that is a lie and
        // must not size an allocation.
        if n > rest.len() / 4 {
            return Err(Error::Malformed("query count runs past the option data"));
        }
        let mut queries = Vec::with_capacity(n);
        for _ in 0..n {
            check_len(rest, 4)?;
            let len = be32(rest) as usize;
            if len > rest.len() - 4 {
                return Err(Error::Malformed("query runs past the option data"));
            }
            queries.push(utf8(&rest[4..4 + len])?);
            rest = &rest[4 + len..];
        }
        if !rest.is_empty() {
            return Err(Error::Malformed("trailing bytes after the queries"));
        }
        Ok(Self { name, queries })
    }

    pub fn buffer_len(&self) -> usize {
        8 + self.name.len() + self.queries.iter().map(|q| 4 + q.len()).sum::<usize>()
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let n = self.name.len();
        buf[0..4].copy_from_slice(&(n as u32).to_be_bytes());
        buf[4..4 + n].copy_from_slice(self.name.as_bytes());
        let mut at = 4 + n;
        buf[at..at + 4].copy_from_slice(&(self.queries.len() as u32).to_be_bytes());
        at += 4;
        for q in &self.queries {
            buf[at..at + 4].copy_from_slice(&(q.len() as u32).to_be_bytes());
            buf[at + 4..at + 4 + q.len()].copy_from_slice(q.as_bytes());
            at += 4 + q.len();
        }
    }
}

/// A transmission request header, compact or extended (told apart by magic).
///
/// ```text
/// compact (28 bytes):
/// +-----------+-------+------+-------------+-------------+------------+
/// | 0x25609513| flags | type | cookie (64) | offset (64) | length (32)|
/// +-----------+-------+------+-------------+-------------+------------+
/// extended (32 bytes):
/// +-----------+-------+------+-------------+-------------+------------+
/// | 0x21e41c71| flags | type | cookie (64) | offset (64) | length (64)|
/// +-----------+-------+------+-------------+-------------+------------+
/// ```
/// A write's data (compact) or a payload (extended, with `PAYLOAD_LEN`)
/// follows the header.
#[derive(Debug, Clone)]
pub struct RequestPacket<T: AsRef<[u8]>> {
    buffer: T,
}

mod req_field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const FLAGS: Range<usize> = 4..6;
    pub const TYPE: Range<usize> = 6..8;
    pub const COOKIE: Range<usize> = 8..16;
    pub const OFFSET: Range<usize> = 16..24;
    pub const LENGTH32: Range<usize> = 24..28;
    pub const LENGTH64: Range<usize> = 24..32;
}

impl<T: AsRef<[u8]>> RequestPacket<T> {
    /// Length of a compact request header.
    pub const COMPACT_LEN: usize = req_field::LENGTH32.end;
    /// Length of an extended request header.
    pub const EXTENDED_LEN: usize = req_field::LENGTH64.end;

    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the magic and that the whole header (of the form the magic
    /// names) is present.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(b, 4)?;
        match be32(&b[req_field::MAGIC]) {
            magic::REQUEST => check_len(b, Self::COMPACT_LEN),
            magic::EXTENDED_REQUEST => check_len(b, Self::EXTENDED_LEN),
            _ => Err(Error::Malformed("bad request magic")),
        }
    }

    pub fn is_extended(&self) -> bool {
        be32(&self.buffer.as_ref()[req_field::MAGIC]) == magic::EXTENDED_REQUEST
    }
    pub fn flags(&self) -> u16 {
        be16(&self.buffer.as_ref()[req_field::FLAGS])
    }
    pub fn command(&self) -> Command {
        be16(&self.buffer.as_ref()[req_field::TYPE]).into()
    }
    pub fn cookie(&self) -> u64 {
        be64(&self.buffer.as_ref()[req_field::COOKIE])
    }
    pub fn offset(&self) -> u64 {
        be64(&self.buffer.as_ref()[req_field::OFFSET])
    }
    pub fn length(&self) -> u64 {
        let b = self.buffer.as_ref();
        if self.is_extended() {
            be64(&b[req_field::LENGTH64])
        } else {
            u64::from(be32(&b[req_field::LENGTH32]))
        }
    }
}

/// A parsed request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRepr {
    pub extended: bool,
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    /// 32 bits in compact requests.
    pub length: u64,
}

impl RequestRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &RequestPacket<T>) -> Result<Self> {
        p.check_len()?;
        Ok(Self {
            extended: p.is_extended(),
            flags: p.flags(),
            command: p.command(),
            cookie: p.cookie(),
            offset: p.offset(),
            length: p.length(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        if self.extended {
            RequestPacket::<&[u8]>::EXTENDED_LEN
        } else {
            RequestPacket::<&[u8]>::COMPACT_LEN
        }
    }

    /// Emits the header. A compact request's length is truncated to 32 bits;
    /// callers building compact requests keep it below 2^32.
    pub fn emit(&self, buf: &mut [u8]) {
        let m = if self.extended {
            magic::EXTENDED_REQUEST
        } else {
            magic::REQUEST
        };
        buf[req_field::MAGIC].copy_from_slice(&m.to_be_bytes());
        buf[req_field::FLAGS].copy_from_slice(&self.flags.to_be_bytes());
        buf[req_field::TYPE].copy_from_slice(&u16::from(self.command).to_be_bytes());
        buf[req_field::COOKIE].copy_from_slice(&self.cookie.to_be_bytes());
        buf[req_field::OFFSET].copy_from_slice(&self.offset.to_be_bytes());
        if self.extended {
            buf[req_field::LENGTH64].copy_from_slice(&self.length.to_be_bytes());
        } else {
            buf[req_field::LENGTH32].copy_from_slice(&(self.length as u32).to_be_bytes());
        }
    }
}

/// A simple reply header; a successful read's data follows it.
///
/// ```text
/// +------------+------------+-------------+
/// | 0x67446698 | error (32) | cookie (64) |
/// +------------+------------+-------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReplyRepr {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReplyRepr {
    pub const LEN: usize = 16;

    pub fn parse(buf: &[u8]) -> Result<Self> {
        check_len(buf, Self::LEN)?;
        if be32(buf) != magic::SIMPLE_REPLY {
            return Err(Error::Malformed("bad simple reply magic"));
        }
        Ok(Self {
            error: be32(&buf[4..8]),
            cookie: be64(&buf[8..16]),
        })
    }

    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&magic::SIMPLE_REPLY.to_be_bytes());
        buf[4..8].copy_from_slice(&self.error.to_be_bytes());
        buf[8..16].copy_from_slice(&self.cookie.to_be_bytes());
    }
}

/// A structured (20 bytes) or extended (32 bytes) reply chunk header;
/// `length` bytes of payload follow.
///
/// ```text
/// structured:
/// +------------+-------+------+-------------+-------------+
/// | 0x668e33ef | flags | type | cookie (64) | length (32) |
/// +------------+-------+------+-------------+-------------+
/// extended:
/// +------------+-------+------+-------------+-------------+-------------+
/// | 0x6e8a278c | flags | type | cookie (64) | offset (64) | length (64) |
/// +------------+-------+------+-------------+-------------+-------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeaderRepr {
    pub extended: bool,
    pub flags: u16,
    pub chunk_type: ChunkType,
    pub cookie: u64,
    /// The request's offset (extended headers only; 0 otherwise).
    pub offset: u64,
    pub length: u64,
}

impl ChunkHeaderRepr {
    pub const STRUCTURED_LEN: usize = 20;
    pub const EXTENDED_LEN: usize = 32;

    pub fn header_len(extended: bool) -> usize {
        if extended {
            Self::EXTENDED_LEN
        } else {
            Self::STRUCTURED_LEN
        }
    }

    pub fn buffer_len(&self) -> usize {
        Self::header_len(self.extended)
    }

    pub fn parse(buf: &[u8]) -> Result<Self> {
        check_len(buf, 4)?;
        let extended = match be32(buf) {
            magic::STRUCTURED_REPLY => false,
            magic::EXTENDED_REPLY => true,
            _ => return Err(Error::Malformed("bad reply chunk magic")),
        };
        check_len(buf, Self::header_len(extended))?;
        let (offset, length) = if extended {
            (be64(&buf[16..24]), be64(&buf[24..32]))
        } else {
            (0, u64::from(be32(&buf[16..20])))
        };
        Ok(Self {
            extended,
            flags: be16(&buf[4..6]),
            chunk_type: be16(&buf[6..8]).into(),
            cookie: be64(&buf[8..16]),
            offset,
            length,
        })
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let m = if self.extended {
            magic::EXTENDED_REPLY
        } else {
            magic::STRUCTURED_REPLY
        };
        buf[0..4].copy_from_slice(&m.to_be_bytes());
        buf[4..6].copy_from_slice(&self.flags.to_be_bytes());
        buf[6..8].copy_from_slice(&u16::from(self.chunk_type).to_be_bytes());
        buf[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        if self.extended {
            buf[16..24].copy_from_slice(&self.offset.to_be_bytes());
            buf[24..32].copy_from_slice(&self.length.to_be_bytes());
        } else {
            buf[16..20].copy_from_slice(&(self.length as u32).to_be_bytes());
        }
    }
}

/// `NBD_REPLY_TYPE_OFFSET_HOLE` payload: offset (64), hole size (32, nonzero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetHoleRepr {
    pub offset: u64,
    pub len: u32,
}

impl OffsetHoleRepr {
    pub const LEN: usize = 12;

    pub fn parse(buf: &[u8]) -> Result<Self> {
        if buf.len() != Self::LEN {
            return Err(Error::Malformed("OFFSET_HOLE payload is not 12 bytes"));
        }
        let len = be32(&buf[8..12]);
        if len == 0 {
            return Err(Error::Malformed("OFFSET_HOLE of zero bytes"));
        }
        Ok(Self {
            offset: be64(buf),
            len,
        })
    }

    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&self.offset.to_be_bytes());
        buf[8..12].copy_from_slice(&self.len.to_be_bytes());
    }
}

/// `NBD_REPLY_TYPE_OFFSET_DATA` payload prefix: the offset (64) of the data
/// that follows. Returns the offset and the data.
pub fn parse_offset_data(buf: &[u8]) -> Result<(u64, &[u8])> {
    if buf.len() < 9 {
        return Err(Error::Malformed("OFFSET_DATA payload shorter than 9 bytes"));
    }
    Ok((be64(buf), &buf[8..]))
}

/// One `base:allocation`-style extent of a status chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub len: u64,
    pub status: u64,
}

/// `NBD_REPLY_TYPE_BLOCK_STATUS` (compact: context id, then n x (length 32,
/// status 32)) or `NBD_REPLY_TYPE_BLOCK_STATUS_EXT` (context id, count (32),
/// then n x (length 64, status 64)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStatusRepr {
    pub extended: bool,
    pub context_id: u32,
    pub descriptors: Vec<Descriptor>,
}

impl BlockStatusRepr {
    pub fn buffer_len(&self) -> usize {
        if self.extended {
            8 + 16 * self.descriptors.len()
        } else {
            4 + 8 * self.descriptors.len()
        }
    }

    pub fn parse(buf: &[u8], extended: bool) -> Result<Self> {
        let (head, size) = if extended { (8, 16) } else { (4, 8) };
        check_len(buf, head)?;
        let body = &buf[head..];
        if body.is_empty() || body.len() % size != 0 {
            return Err(Error::Malformed(
                "status chunk is not a whole number of descriptors",
            ));
        }
        if extended && be32(&buf[4..8]) as usize != body.len() / size {
            return Err(Error::Malformed("descriptor count does not match length"));
        }
        let descriptors = body
            .chunks_exact(size)
            .map(|c| {
                if extended {
                    Descriptor {
                        len: be64(&c[0..8]),
                        status: be64(&c[8..16]),
                    }
                } else {
                    Descriptor {
                        len: u64::from(be32(&c[0..4])),
                        status: u64::from(be32(&c[4..8])),
                    }
                }
            })
            .collect::<Vec<_>>();
        if descriptors.iter().any(|d| d.len == 0) {
            return Err(Error::Malformed("descriptor of zero length"));
        }
        Ok(Self {
            extended,
            context_id: be32(buf),
            descriptors,
        })
    }

    /// Emits; compact descriptors' fields are truncated to 32 bits (callers
    /// clamp lengths below 2^32 first).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&self.context_id.to_be_bytes());
        let mut at = 4;
        if self.extended {
            buf[4..8].copy_from_slice(&(self.descriptors.len() as u32).to_be_bytes());
            at = 8;
        }
        for d in &self.descriptors {
            if self.extended {
                buf[at..at + 8].copy_from_slice(&d.len.to_be_bytes());
                buf[at + 8..at + 16].copy_from_slice(&d.status.to_be_bytes());
                at += 16;
            } else {
                buf[at..at + 4].copy_from_slice(&(d.len as u32).to_be_bytes());
                buf[at + 4..at + 8].copy_from_slice(&(d.status as u32).to_be_bytes());
                at += 8;
            }
        }
    }
}

/// `NBD_REPLY_TYPE_ERROR` / `NBD_REPLY_TYPE_ERROR_OFFSET` payload: error (32),
/// message length (16), message, and for ERROR_OFFSET the offset (64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorChunkRepr<'a> {
    pub error: u32,
    pub message: &'a str,
    pub offset: Option<u64>,
}

impl<'a> ErrorChunkRepr<'a> {
    pub fn chunk_type(&self) -> ChunkType {
        if self.offset.is_some() {
            ChunkType::ErrorOffset
        } else {
            ChunkType::Error
        }
    }

    pub fn buffer_len(&self) -> usize {
        6 + self.message.len() + if self.offset.is_some() { 8 } else { 0 }
    }

    pub fn parse(buf: &'a [u8], with_offset: bool) -> Result<Self> {
        check_len(buf, 6)?;
        let error = be32(buf);
        if error == 0 {
            return Err(Error::Malformed("error chunk with error 0"));
        }
        let mlen = be16(&buf[4..6]) as usize;
        let tail = if with_offset { 8 } else { 0 };
        if buf.len() != 6 + mlen + tail {
            return Err(Error::Malformed(
                "error chunk message length does not match",
            ));
        }
        let message = utf8(&buf[6..6 + mlen])?;
        let offset = with_offset.then(|| be64(&buf[6 + mlen..]));
        Ok(Self {
            error,
            message,
            offset,
        })
    }

    /// Emits; the message must be at most 4096 bytes (callers truncate).
    pub fn emit(&self, buf: &mut [u8]) {
        let m = self.message.len();
        buf[0..4].copy_from_slice(&self.error.to_be_bytes());
        buf[4..6].copy_from_slice(&(m as u16).to_be_bytes());
        buf[6..6 + m].copy_from_slice(self.message.as_bytes());
        if let Some(o) = self.offset {
            buf[6 + m..14 + m].copy_from_slice(&o.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn greeting_bytes_match_the_document() {
        let mut buf = [0xa5u8; 18];
        GreetingRepr {
            handshake_flags: handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES,
        }
        .emit(&mut buf);
        assert_eq!(&buf[0..8], b"NBDMAGIC");
        assert_eq!(&buf[8..16], b"IHAVEOPT");
        assert_eq!(&buf[16..18], &[0, 3]);
        assert_eq!(GreetingRepr::parse(&buf).unwrap().handshake_flags, 3);
    }

    #[test]
    fn compact_read_request_decodes() {
        // A READ of 4096 bytes at 1 MiB, cookie 7, as a client sends it.
        let mut b = vec![0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0];
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&(1u64 << 20).to_be_bytes());
        b.extend_from_slice(&4096u32.to_be_bytes());
        let p = RequestPacket::new_checked(&b[..]).unwrap();
        let r = RequestRepr::parse(&p).unwrap();
        assert_eq!(r.command, Command::Read);
        assert_eq!((r.cookie, r.offset, r.length), (7, 1 << 20, 4096));
        assert!(!r.extended);
        // One byte short of a header is truncation, not a malformed packet.
        assert!(matches!(
            RequestPacket::new_checked(&b[..27]),
            Err(Error::Truncated { need: 28, .. })
        ));
    }

    #[test]
    fn extended_request_and_reply_use_64_bit_lengths() {
        let r = RequestRepr {
            extended: true,
            flags: cmd_flags::FUA,
            command: Command::WriteZeroes,
            cookie: u64::MAX,
            offset: 1 << 40,
            length: 5 << 32,
        };
        let mut buf = [0xa5u8; 32];
        r.emit(&mut buf);
        assert_eq!(&buf[0..4], &[0x21, 0xe4, 0x1c, 0x71]);
        let back = RequestRepr::parse(&RequestPacket::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(back, r);

        let c = ChunkHeaderRepr {
            extended: true,
            flags: reply_flags::DONE,
            chunk_type: ChunkType::None,
            cookie: 9,
            offset: 1 << 40,
            length: 0,
        };
        let mut buf = [0xa5u8; 32];
        c.emit(&mut buf);
        assert_eq!(&buf[0..4], &[0x6e, 0x8a, 0x27, 0x8c]);
        assert_eq!(ChunkHeaderRepr::parse(&buf).unwrap(), c);
    }

    #[test]
    fn option_reply_error_codes_have_bit_31() {
        assert!(ReplyType::ErrUnsup.is_error());
        assert_eq!(u32::from(ReplyType::ErrExtHeaderReqd), 0x8000_000a);
        assert!(!ReplyType::Ack.is_error());
        assert_eq!(
            ReplyType::from(0x8000_0042),
            ReplyType::Unknown(0x8000_0042)
        );
        let mut buf = [0xa5u8; 20];
        OptionReplyRepr {
            option: OptionCode::Go,
            reply_type: ReplyType::ErrUnknown,
            length: 0,
        }
        .emit(&mut buf);
        assert_eq!(
            buf,
            [0, 3, 0xe8, 0x89, 4, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0x80, 0, 0, 6, 0, 0, 0, 0]
        );
    }

    #[test]
    fn meta_context_query_count_cannot_size_an_allocation() {
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(MetaContextRequestRepr::parse(&b).is_err());
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9:/._-]{0,40}"
    }

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200), ext in any::<bool>()) {
            let _ = GreetingRepr::parse(&b);
            if let Ok(p) = OptionPacket::new_checked(&b[..]) { let _ = OptionRepr::parse(&p); }
            let _ = OptionReplyRepr::parse(&b);
            let _ = ExportNameReplyRepr::parse(&b, ext);
            let _ = InfoRepr::parse(&b);
            let _ = InfoRequestRepr::parse(&b);
            let _ = MetaContextRequestRepr::parse(&b);
            if let Ok(p) = RequestPacket::new_checked(&b[..]) { let _ = RequestRepr::parse(&p); }
            let _ = SimpleReplyRepr::parse(&b);
            let _ = ChunkHeaderRepr::parse(&b);
            let _ = OffsetHoleRepr::parse(&b);
            let _ = parse_offset_data(&b);
            let _ = BlockStatusRepr::parse(&b, ext);
            let _ = ErrorChunkRepr::parse(&b, ext);
        }

        #[test]
        fn request_round_trips(ext in any::<bool>(), flags in any::<u16>(), cmd in any::<u16>(),
                               cookie in any::<u64>(), offset in any::<u64>(), len in any::<u64>()) {
            let r = RequestRepr { extended: ext, flags, command: cmd.into(), cookie, offset,
                                  length: if ext { len } else { len & 0xffff_ffff } };
            let mut buf = vec![0xa5u8; r.buffer_len()];
            r.emit(&mut buf);
            let back = RequestRepr::parse(&RequestPacket::new_checked(&buf[..]).unwrap()).unwrap();
            prop_assert_eq!(back, r);
        }

        #[test]
        fn option_round_trips(code in any::<u32>(), len in any::<u32>()) {
            let r = OptionRepr { option: code.into(), length: len };
            let mut buf = vec![0xa5u8; r.buffer_len()];
            r.emit(&mut OptionPacket::new_unchecked(&mut buf[..]));
            prop_assert_eq!(OptionRepr::parse(&OptionPacket::new_checked(&buf[..]).unwrap()).unwrap(), r);
            let rep = OptionReplyRepr { option: code.into(), reply_type: len.into(), length: len };
            let mut buf = [0xa5u8; 20];
            rep.emit(&mut buf);
            prop_assert_eq!(OptionReplyRepr::parse(&buf).unwrap(), rep);
        }

        #[test]
        fn info_round_trips(n in name(), size in any::<u64>(), flags in any::<u16>(), which in 0u8..4,
                            reqs in proptest::collection::vec(any::<u16>(), 0..8)) {
            let info = match which {
                0 => InfoRepr::Export { size, flags },
                1 => InfoRepr::Name(&n),
                2 => InfoRepr::Description(&n),
                _ => InfoRepr::BlockSize { min: 1, preferred: 4096, max: size as u32 },
            };
            let mut buf = vec![0xa5u8; info.buffer_len()];
            info.emit(&mut buf);
            prop_assert_eq!(InfoRepr::parse(&buf).unwrap(), info);
            let req = InfoRequestRepr { name: &n, requests: reqs.into_iter().map(InfoType::from).collect() };
            let mut buf = vec![0xa5u8; req.buffer_len()];
            req.emit(&mut buf);
            prop_assert_eq!(InfoRequestRepr::parse(&buf).unwrap(), req);
        }

        #[test]
        fn meta_context_round_trips(n in name(), qs in proptest::collection::vec(name(), 0..5)) {
            let r = MetaContextRequestRepr { name: &n, queries: qs.iter().map(String::as_str).collect() };
            let mut buf = vec![0xa5u8; r.buffer_len()];
            r.emit(&mut buf);
            prop_assert_eq!(MetaContextRequestRepr::parse(&buf).unwrap(), r);
        }

        #[test]
        fn chunks_round_trip(ext in any::<bool>(), flags in any::<u16>(), ty in any::<u16>(), cookie in any::<u64>(),
                             offset in any::<u64>(), len in any::<u32>(), err in 1u32.., msg in name(),
                             descs in proptest::collection::vec((1u32.., any::<u32>()), 1..6)) {
            let h = ChunkHeaderRepr { extended: ext, flags, chunk_type: ty.into(), cookie,
                                      offset: if ext { offset } else { 0 }, length: u64::from(len) };
            let mut buf = vec![0xa5u8; h.buffer_len()];
            h.emit(&mut buf);
            prop_assert_eq!(ChunkHeaderRepr::parse(&buf).unwrap(), h);

            let hole = OffsetHoleRepr { offset, len: len.max(1) };
            let mut buf = [0xa5u8; 12];
            hole.emit(&mut buf);
            prop_assert_eq!(OffsetHoleRepr::parse(&buf).unwrap(), hole);

            let bs = BlockStatusRepr { extended: ext, context_id: len, descriptors: descs.iter()
                .map(|&(l, s)| Descriptor { len: u64::from(l), status: u64::from(s) }).collect() };
            let mut buf = vec![0xa5u8; bs.buffer_len()];
            bs.emit(&mut buf);
            prop_assert_eq!(BlockStatusRepr::parse(&buf, ext).unwrap(), bs);

            let e = ErrorChunkRepr { error: err, message: &msg, offset: ext.then_some(offset) };
            let mut buf = vec![0xa5u8; e.buffer_len()];
            e.emit(&mut buf);
            prop_assert_eq!(ErrorChunkRepr::parse(&buf, ext).unwrap(), e);

            let s = SimpleReplyRepr { error: err, cookie };
            let mut buf = [0xa5u8; 16];
            s.emit(&mut buf);
            prop_assert_eq!(SimpleReplyRepr::parse(&buf).unwrap(), s);
        }
    }
}
