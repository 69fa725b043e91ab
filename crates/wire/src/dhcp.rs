//! DHCPv4 helpers on top of dhcproto: a checked BOOTP header view, a raw option
//! walker and the PXE/UEFI/iPXE option views (RFC 2131 §2, RFC 2132, RFC 3004,
//! RFC 3046, RFC 4578, PXE 2.1 §2.4).
//!
//! dhcproto decodes and encodes whole messages, but it trusts `hlen` (a value
//! above 16 makes `Message::chaddr` slice out of bounds) and stops silently at a
//! bad option length. Untrusted datagrams therefore go through
//! [`Packet::new_checked`] first, which validates the fixed header, the magic
//! cookie and every option's length; only then are they handed to dhcproto.

use crate::error::{check_len, Error, Result};

/// The fixed BOOTP/DHCP header (RFC 2131 §2, figure 1):
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +---------------+---------------+---------------+---------------+
/// |     op (1)    |   htype (1)   |   hlen (1)    |   hops (1)    |
/// +---------------+---------------+---------------+---------------+
/// |                            xid (4)                            |
/// +-------------------------------+-------------------------------+
/// |           secs (2)            |           flags (2)           |
/// +-------------------------------+-------------------------------+
/// |                          ciaddr  (4)                          |
/// |                          yiaddr  (4)                          |
/// |                          siaddr  (4)                          |
/// |                          giaddr  (4)                          |
/// +---------------------------------------------------------------+
/// |                          chaddr  (16)                         |
/// |                          sname   (64)                         |
/// |                          file    (128)                        |
/// +---------------------------------------------------------------+
/// |                  magic cookie 99.130.83.99 (4)                |
/// |                          options (variable)                   |
/// +---------------------------------------------------------------+
/// ```
pub mod field {
    use core::ops::Range;
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: Range<usize> = 4..8;
    pub const SECS: Range<usize> = 8..10;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const SIADDR: Range<usize> = 20..24;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const SNAME: Range<usize> = 44..108;
    pub const FILE: Range<usize> = 108..236;
    pub const MAGIC: Range<usize> = 236..240;
    pub const OPTIONS: usize = MAGIC.end;
}

/// Length of the header up to and including the magic cookie.
pub const HEADER_LEN: usize = field::OPTIONS;
/// RFC 2131 §4.1 magic cookie.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The smallest datagram every DHCP participant must accept (RFC 2131 §2).
pub const MIN_MESSAGE_SIZE: usize = 576;

/// BOOTP `op` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Request,
    Reply,
    Unknown(u8),
}

impl From<u8> for Op {
    fn from(v: u8) -> Self {
        match v {
            1 => Op::Request,
            2 => Op::Reply,
            n => Op::Unknown(n),
        }
    }
}

/// Option codes this crate interprets itself.
pub mod code {
    pub const PAD: u8 = 0;
    pub const ROOT_PATH: u8 = 17;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const USER_CLASS: u8 = 77;
    pub const RELAY_AGENT_INFO: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const IPXE_ENCAP: u8 = 175;
    pub const END: u8 = 255;
}

/// A checked view of a DHCP datagram.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; getters may panic on short input.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates everything the getters rely on: the header is complete, `hlen`
    /// fits `chaddr`, the magic cookie is DHCP's and every option's length stays
    /// inside the datagram.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(b, HEADER_LEN)?;
        if b[field::HLEN] as usize > field::CHADDR.len() {
            return Err(Error::Malformed("hlen larger than chaddr"));
        }
        if b[field::MAGIC] != MAGIC_COOKIE {
            return Err(Error::Malformed("not a DHCP magic cookie"));
        }
        for opt in RawOptions::new(&b[field::OPTIONS..]) {
            opt?;
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u32_at(&self, r: core::ops::Range<usize>) -> [u8; 4] {
        let mut out = [0; 4];
        out.copy_from_slice(&self.buffer.as_ref()[r]);
        out
    }

    pub fn op(&self) -> Op {
        Op::from(self.buffer.as_ref()[field::OP])
    }
    pub fn htype(&self) -> u8 {
        self.buffer.as_ref()[field::HTYPE]
    }
    pub fn hlen(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }
    pub fn hops(&self) -> u8 {
        self.buffer.as_ref()[field::HOPS]
    }
    pub fn xid(&self) -> u32 {
        u32::from_be_bytes(self.u32_at(field::XID))
    }
    pub fn flags(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::FLAGS];
        u16::from_be_bytes([b[0], b[1]])
    }
    /// The broadcast bit (RFC 2131 §2, figure 2).
    pub fn broadcast(&self) -> bool {
        self.flags() & 0x8000 != 0
    }
    pub fn ciaddr(&self) -> [u8; 4] {
        self.u32_at(field::CIADDR)
    }
    pub fn giaddr(&self) -> [u8; 4] {
        self.u32_at(field::GIADDR)
    }
    /// The client hardware address, `hlen` bytes of `chaddr`.
    pub fn chaddr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::CHADDR][..self.hlen() as usize]
    }
    /// The options area (after the magic cookie).
    pub fn options(&self) -> RawOptions<'_> {
        RawOptions::new(&self.buffer.as_ref()[field::OPTIONS..])
    }
    /// The first instance of option `code`, if present.
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options()
            .filter_map(|o| o.ok())
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v)
    }
}

/// Walks the options area as `(code, value)` pairs, skipping pads and stopping
/// at `End`. An option whose length runs past the buffer is an error (and the
/// last item).
#[derive(Debug, Clone)]
pub struct RawOptions<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> RawOptions<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for RawOptions<'a> {
    type Item = Result<(u8, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let Some(&c) = self.buf.get(self.pos) else {
                // Options that end without `End` are tolerated (many stacks pad instead).
                self.done = true;
                return None;
            };
            match c {
                code::PAD => self.pos += 1,
                code::END => {
                    self.done = true;
                    return None;
                }
                _ => {
                    let Some(&len) = self.buf.get(self.pos + 1) else {
                        self.done = true;
                        return Some(Err(Error::Malformed("option length missing")));
                    };
                    let start = self.pos + 2;
                    let end = start + len as usize;
                    if end > self.buf.len() {
                        self.done = true;
                        return Some(Err(Error::Truncated {
                            need: end,
                            have: self.buf.len(),
                        }));
                    }
                    self.pos = end;
                    return Some(Ok((c, &self.buf[start..end])));
                }
            }
        }
        None
    }
}

/// Offset of the `End` option in an encoded message (options must be
/// well-formed), or `None` if the options run to the end without one.
pub fn end_offset(msg: &[u8]) -> Option<usize> {
    let mut pos = field::OPTIONS;
    while pos < msg.len() {
        match msg[pos] {
            code::PAD => pos += 1,
            code::END => return Some(pos),
            _ => pos += 2 + *msg.get(pos + 1)? as usize,
        }
    }
    None
}

/// Appends option `code` with `value` (split into several instances per
/// RFC 3396 when longer than 255 bytes) just before `End` of an encoded
/// message. Used to echo option 82 byte for byte (RFC 3046 §2.2), which a
/// decode/re-encode through typed sub-options would not guarantee.
pub fn append_option(msg: &mut Vec<u8>, code: u8, value: &[u8]) -> Result<()> {
    check_len(msg, HEADER_LEN)?;
    let end = end_offset(msg).unwrap_or(msg.len());
    msg.truncate(end);
    if value.is_empty() {
        msg.extend_from_slice(&[code, 0]);
    }
    for chunk in value.chunks(255) {
        msg.push(code);
        msg.push(chunk.len() as u8);
        msg.extend_from_slice(chunk);
    }
    msg.push(code::END);
    Ok(())
}

/// A copy of a checked message that keeps only the options in `keep` whose
/// length is allowed (`Some(n)`: exactly `n` bytes; `None`: any). dhcproto's
/// option decoders `debug_assert!` on some lengths and silently misparse
/// others, so untrusted messages reach it only in this reduced form; every
/// other option is read raw through [`Packet::option`].
pub fn sanitized<T: AsRef<[u8]>>(p: &Packet<T>, keep: &[(u8, Option<usize>)]) -> Vec<u8> {
    let b = p.buffer.as_ref();
    let mut out = Vec::with_capacity(b.len().min(1500));
    out.extend_from_slice(&b[..HEADER_LEN]);
    // Overloaded sname/file fields (option 52) are not used: clear the flag by
    // omission and keep the fields as plain strings.
    for (c, v) in p.options().filter_map(|o| o.ok()) {
        let ok = keep
            .iter()
            .any(|(k, len)| *k == c && len.is_none_or(|n| n == v.len()));
        if ok {
            out.push(c);
            out.push(v.len() as u8);
            out.extend_from_slice(v);
        }
    }
    out.push(code::END);
    out
}

/// Option 93, client system architecture (RFC 4578 §2.1, IANA "Processor
/// Architecture Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientArch {
    /// 0: x86 BIOS (legacy PXE).
    BiosX86,
    /// 6: x86 (32-bit) UEFI.
    EfiIa32,
    /// 7 or 9: x86-64 UEFI (7 is "EFI BC", used by most x86-64 firmware).
    EfiX64,
    /// 11: ARM64 UEFI.
    EfiArm64,
    /// 15: x86 UEFI HTTP boot.
    HttpIa32,
    /// 16: x86-64 UEFI HTTP boot.
    HttpX64,
    /// 19: ARM64 UEFI HTTP boot.
    HttpArm64,
    Unknown(u16),
}

impl ClientArch {
    /// Parses option 93's value: a list of 16-bit types; the first one counts.
    pub fn parse(value: &[u8]) -> Result<Self> {
        check_len(value, 2)?;
        if value.len() % 2 != 0 {
            return Err(Error::Malformed("option 93 length is odd"));
        }
        Ok(Self::from(u16::from_be_bytes([value[0], value[1]])))
    }

    /// Whether the firmware wants an `http://` URL as its boot file.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            ClientArch::HttpIa32 | ClientArch::HttpX64 | ClientArch::HttpArm64
        )
    }
}

impl From<u16> for ClientArch {
    fn from(v: u16) -> Self {
        match v {
            0 => ClientArch::BiosX86,
            6 => ClientArch::EfiIa32,
            7 | 9 => ClientArch::EfiX64,
            11 => ClientArch::EfiArm64,
            15 => ClientArch::HttpIa32,
            16 => ClientArch::HttpX64,
            19 => ClientArch::HttpArm64,
            n => ClientArch::Unknown(n),
        }
    }
}

/// What option 60 (vendor class identifier) says about a boot client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VendorClass {
    /// `PXEClient[:Arch:xxxxx:UNDI:yyyzzz]` (PXE 2.1 §2.4.1).
    PxeClient,
    /// `HTTPClient[:Arch:xxxxx:...]` (UEFI 2.5+ §24.7).
    HttpClient,
    Other,
}

impl VendorClass {
    pub fn parse(value: &[u8]) -> Self {
        if value.starts_with(b"PXEClient") {
            VendorClass::PxeClient
        } else if value.starts_with(b"HTTPClient") {
            VendorClass::HttpClient
        } else {
            VendorClass::Other
        }
    }
}

/// Whether option 77 (user class) names iPXE. iPXE sends the bare string
/// `iPXE`; RFC 3004 encodes a list of length-prefixed class names. Both count.
pub fn user_class_is_ipxe(value: &[u8]) -> bool {
    if value == b"iPXE" {
        return true;
    }
    let mut rest = value;
    while let Some((&len, tail)) = rest.split_first() {
        let len = len as usize;
        if len == 0 || len > tail.len() {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// The value of option 43 that PXE ROMs expect with `PXEClient` (PXE 2.1
/// §2.4.5): PXE_DISCOVERY_CONTROL (sub-option 6) = 8, "download the boot file
/// named in the offer without boot-server discovery or menus", then `End`.
pub const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];

/// Option 97, client machine identifier (RFC 4578 §2.3): type 0 then a 16-byte
/// UUID. Returns the UUID bytes.
pub fn parse_client_uuid(value: &[u8]) -> Result<[u8; 16]> {
    check_len(value, 17)?;
    if value[0] != 0 || value.len() != 17 {
        return Err(Error::Malformed("option 97 is not type 0 + 16-byte UUID"));
    }
    let mut out = [0; 16];
    out.copy_from_slice(&value[1..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4;
    use dhcproto::{Decodable, Encodable};
    use proptest::prelude::*;

    fn discover(extra: Vec<v4::DhcpOption>) -> Vec<u8> {
        let mut m = v4::Message::default();
        m.set_chaddr(&[0x52, 0x54, 0, 1, 2, 3]).set_xid(0x1234_5678);
        m.opts_mut()
            .insert(v4::DhcpOption::MessageType(v4::MessageType::Discover));
        for o in extra {
            m.opts_mut().insert(o);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn header_fields_of_a_dhcproto_discover() {
        let buf = discover(vec![v4::DhcpOption::ClientSystemArchitecture(
            v4::Architecture::BC,
        )]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.op(), Op::Request);
        assert_eq!(p.xid(), 0x1234_5678);
        assert_eq!(p.chaddr(), &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(p.option(code::MESSAGE_TYPE), Some(&[1u8][..]));
        let arch = ClientArch::parse(p.option(code::CLIENT_ARCH).unwrap()).unwrap();
        assert_eq!(arch, ClientArch::EfiX64);
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let mut buf = discover(vec![]);
        assert!(Packet::new_checked(&buf[..100]).is_err());
        buf[field::HLEN] = 17;
        assert_eq!(
            Packet::new_checked(&buf[..]).unwrap_err(),
            Error::Malformed("hlen larger than chaddr")
        );
        buf[field::HLEN] = 6;
        buf[field::MAGIC.start] = 0;
        assert!(Packet::new_checked(&buf[..]).is_err());
        buf[field::MAGIC.start] = 99;
        // An option whose length runs past the end.
        let end = end_offset(&buf).unwrap();
        buf.truncate(end);
        buf.extend_from_slice(&[60, 40, b'P']);
        assert!(matches!(
            Packet::new_checked(&buf[..]),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn option_82_is_appended_verbatim_before_end() {
        let mut buf = discover(vec![]);
        let agent = [1u8, 4, b'e', b't', b'h', b'0', 2, 2, 0xab, 0xcd, 9, 1, 0x77];
        append_option(&mut buf, code::RELAY_AGENT_INFO, &agent).unwrap();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.option(code::RELAY_AGENT_INFO), Some(&agent[..]));
        assert_eq!(*buf.last().unwrap(), code::END);
        // dhcproto still reads the message.
        let m = v4::Message::decode(&mut dhcproto::Decoder::new(&buf)).unwrap();
        assert_eq!(m.opts().msg_type(), Some(v4::MessageType::Discover));
    }

    #[test]
    fn pxe_option_views() {
        assert_eq!(ClientArch::parse(&[0, 0]).unwrap(), ClientArch::BiosX86);
        assert_eq!(ClientArch::parse(&[0, 9]).unwrap(), ClientArch::EfiX64);
        assert_eq!(ClientArch::parse(&[0, 11]).unwrap(), ClientArch::EfiArm64);
        assert!(ClientArch::parse(&[0, 16]).unwrap().is_http());
        assert!(ClientArch::parse(&[0]).is_err());
        assert!(ClientArch::parse(&[0, 0, 1]).is_err());
        assert_eq!(
            VendorClass::parse(b"PXEClient:Arch:00000:UNDI:002001"),
            VendorClass::PxeClient
        );
        assert_eq!(
            VendorClass::parse(b"HTTPClient:Arch:00016"),
            VendorClass::HttpClient
        );
        assert_eq!(VendorClass::parse(b"MSFT 5.0"), VendorClass::Other);
        assert!(user_class_is_ipxe(b"iPXE"));
        assert!(user_class_is_ipxe(b"\x03foo\x04iPXE"));
        assert!(!user_class_is_ipxe(b"\x09iPXE"));
        assert!(!user_class_is_ipxe(b"gPXE"));
        let mut uuid = vec![0u8];
        uuid.extend(1..=16u8);
        assert_eq!(parse_client_uuid(&uuid).unwrap()[15], 16);
        assert!(parse_client_uuid(&uuid[..10]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = (p.op(), p.xid(), p.chaddr(), p.broadcast(), p.ciaddr(), p.giaddr());
                for o in p.options() { let _ = o; }
                // After sanitizing, dhcproto must not panic either.
                let clean = sanitized(&p, &[(53, Some(1)), (50, Some(4)), (54, Some(4))]);
                let _ = v4::Message::decode(&mut dhcproto::Decoder::new(&clean));
            }
            let _ = end_offset(&bytes);
            let _ = ClientArch::parse(&bytes);
            let _ = user_class_is_ipxe(&bytes);
            let _ = parse_client_uuid(&bytes);
        }

        #[test]
        fn header_bytes_with_valid_cookie_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 240..600)
        ) {
            bytes[field::MAGIC].copy_from_slice(&MAGIC_COOKIE);
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                prop_assert!(p.chaddr().len() <= 16);
                let clean = sanitized(&p, &[(53, Some(1)), (50, Some(4)), (54, Some(4)), (60, None)]);
                let m = v4::Message::decode(&mut dhcproto::Decoder::new(&clean));
                if let Ok(m) = m { let _ = m.chaddr(); }
            }
        }

        #[test]
        fn append_then_read_round_trips(value in proptest::collection::vec(any::<u8>(), 0..255)) {
            let mut buf = discover(vec![]);
            append_option(&mut buf, 200, &value).unwrap();
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(p.option(200), Some(&value[..]));
        }
    }

    #[test]
    fn emitted_reply_encodes_with_dhcproto() {
        let mut m = v4::Message::default();
        m.set_opcode(v4::Opcode::BootReply);
        m.opts_mut()
            .insert(v4::DhcpOption::MessageType(v4::MessageType::Offer));
        let mut buf = Vec::new();
        m.encode(&mut dhcproto::Encoder::new(&mut buf)).unwrap();
        assert_eq!(Packet::new_checked(&buf[..]).unwrap().op(), Op::Reply);
    }
}
