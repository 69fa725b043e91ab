//! ATA over Ethernet (AoE revision 11, Hopkins & Coile 2009): the Ethernet
//! framing (with an optional IEEE 802.1Q tag), the AoE header (section 2) and the
//! arguments of its four commands: Issue ATA Command (3.1), Query Config
//! Information (3.2), MAC Mask List (3.3) and Reserve/Release (3.4).
//!
//! Every view is checked with `new_checked` before a getter runs; after that no
//! getter panics. Variable-length lists (mask directives, reserve MACs) are read
//! and written entry by entry through the view, so nothing here allocates.

use crate::error::{check_len, Error, Result};

/// The registered EtherType of AoE.
pub const ETHERTYPE_AOE: u16 = 0x88a2;
/// The EtherType of an IEEE 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// The only AoE protocol version (the `Ver` nibble).
pub const VERSION: u8 = 1;
/// Shelf (major) address that every target answers to.
pub const BROADCAST_SHELF: u16 = 0xffff;
/// Slot (minor) address that every target answers to.
pub const BROADCAST_SLOT: u8 = 0xff;
/// Smallest Ethernet frame without its FCS; shorter frames are padded.
pub const ETH_MIN_FRAME: usize = 60;
/// Longest config string of Query Config (section 3.2).
pub const MAX_CONFIG_STRING: usize = 1024;

/// A 48-bit Ethernet address.
pub type Mac = [u8; 6];
/// The Ethernet broadcast address.
pub const MAC_BROADCAST: Mac = [0xff; 6];

// ---------------------------------------------------------------------------
// Ethernet II header with an optional 802.1Q tag
// ---------------------------------------------------------------------------

/// The Ethernet header in front of an AoE message.
///
/// ```text
///  0                   1                   2                   3
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                  Ethernet Destination Addr                    |
/// +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                               |  Ethernet Source Addr         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | [TPID 0x8100 | PCP|D| VID   ] |  Ethernet Type (0x88A2)       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthRepr {
    pub dst: Mac,
    pub src: Mac,
    /// The 802.1Q tag control information (PCP, DEI, VLAN ID), if tagged.
    pub vlan_tci: Option<u16>,
    pub ethertype: u16,
}

impl EthRepr {
    /// Parses the header; returns it and the offset where its payload starts.
    pub fn parse(buf: &[u8]) -> Result<(Self, usize)> {
        check_len(buf, 14)?;
        let dst = mac_at(buf, 0);
        let src = mac_at(buf, 6);
        let t = u16::from_be_bytes([buf[12], buf[13]]);
        if t == ETHERTYPE_VLAN {
            check_len(buf, 18)?;
            let tci = u16::from_be_bytes([buf[14], buf[15]]);
            let ethertype = u16::from_be_bytes([buf[16], buf[17]]);
            if ethertype == ETHERTYPE_VLAN {
                return Err(Error::Malformed("stacked 802.1Q tags are not supported"));
            }
            Ok((
                Self {
                    dst,
                    src,
                    vlan_tci: Some(tci),
                    ethertype,
                },
                18,
            ))
        } else {
            Ok((
                Self {
                    dst,
                    src,
                    vlan_tci: None,
                    ethertype: t,
                },
                14,
            ))
        }
    }

    /// Bytes the header takes (14, or 18 with a VLAN tag).
    pub fn buffer_len(&self) -> usize {
        if self.vlan_tci.is_some() {
            18
        } else {
            14
        }
    }

    /// Writes the header at the start of `buf` (which must hold `buffer_len()`).
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        check_len(buf, self.buffer_len())?;
        buf[0..6].copy_from_slice(&self.dst);
        buf[6..12].copy_from_slice(&self.src);
        match self.vlan_tci {
            Some(tci) => {
                buf[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
                buf[14..16].copy_from_slice(&tci.to_be_bytes());
                buf[16..18].copy_from_slice(&self.ethertype.to_be_bytes());
            }
            None => buf[12..14].copy_from_slice(&self.ethertype.to_be_bytes()),
        }
        Ok(())
    }
}

fn mac_at(buf: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&buf[at..at + 6]);
    m
}

// ---------------------------------------------------------------------------
// AoE header (section 2)
// ---------------------------------------------------------------------------

/// The AoE command code (section 2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// 0: Issue ATA Command.
    Ata,
    /// 1: Query Config Information.
    QueryConfig,
    /// 2: MAC Mask List.
    MacMask,
    /// 3: Reserve / Release.
    Reserve,
    Unknown(u8),
}

impl From<u8> for Command {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Ata,
            1 => Self::QueryConfig,
            2 => Self::MacMask,
            3 => Self::Reserve,
            n => Self::Unknown(n),
        }
    }
}

impl From<Command> for u8 {
    fn from(c: Command) -> u8 {
        match c {
            Command::Ata => 0,
            Command::QueryConfig => 1,
            Command::MacMask => 2,
            Command::Reserve => 3,
            Command::Unknown(n) => n,
        }
    }
}

/// The AoE error code, meaningful when the Error flag is set (section 2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: Unrecognized command code.
    UnrecognizedCommand,
    /// 2: Bad argument parameter.
    BadArgument,
    /// 3: Device unavailable.
    DeviceUnavailable,
    /// 4: Config string present.
    ConfigStringPresent,
    /// 5: Unsupported version.
    UnsupportedVersion,
    /// 6: Target is reserved.
    TargetReserved,
    Unknown(u8),
}

impl From<u8> for ErrorCode {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::UnrecognizedCommand,
            2 => Self::BadArgument,
            3 => Self::DeviceUnavailable,
            4 => Self::ConfigStringPresent,
            5 => Self::UnsupportedVersion,
            6 => Self::TargetReserved,
            n => Self::Unknown(n),
        }
    }
}

impl From<ErrorCode> for u8 {
    fn from(c: ErrorCode) -> u8 {
        match c {
            ErrorCode::UnrecognizedCommand => 1,
            ErrorCode::BadArgument => 2,
            ErrorCode::DeviceUnavailable => 3,
            ErrorCode::ConfigStringPresent => 4,
            ErrorCode::UnsupportedVersion => 5,
            ErrorCode::TargetReserved => 6,
            ErrorCode::Unknown(n) => n,
        }
    }
}

mod field {
    use core::ops::Range;
    pub const VER_FLAGS: usize = 0;
    pub const ERROR: usize = 1;
    pub const MAJOR: Range<usize> = 2..4;
    pub const MINOR: usize = 4;
    pub const COMMAND: usize = 5;
    pub const TAG: Range<usize> = 6..10;
    pub const ARG: usize = TAG.end;
}

/// Length of the AoE header (after the Ethernet header).
pub const HEADER_LEN: usize = field::ARG;

/// Response flag (`R`) in the low nibble of the version byte.
const FLAG_RESPONSE: u8 = 0x08;
/// Error flag (`E`).
const FLAG_ERROR: u8 = 0x04;

/// A view of an AoE message (header and argument), starting right after the
/// Ethernet header.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Ver  | Flags |     Error     |             Major             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     Minor     |    Command    |              Tag ...          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |          ... Tag              |              Arg ...          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// Flags: 0 0 0 0 R E 0 0 (R: response, E: error)
/// ```
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<()> {
        check_len(self.buffer.as_ref(), HEADER_LEN)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_FLAGS] >> 4
    }
    pub fn is_response(&self) -> bool {
        self.buffer.as_ref()[field::VER_FLAGS] & FLAG_RESPONSE != 0
    }
    pub fn is_error(&self) -> bool {
        self.buffer.as_ref()[field::VER_FLAGS] & FLAG_ERROR != 0
    }
    pub fn error(&self) -> ErrorCode {
        self.buffer.as_ref()[field::ERROR].into()
    }
    pub fn shelf(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::MAJOR.start], b[field::MAJOR.start + 1]])
    }
    pub fn slot(&self) -> u8 {
        self.buffer.as_ref()[field::MINOR]
    }
    pub fn command(&self) -> Command {
        self.buffer.as_ref()[field::COMMAND].into()
    }
    pub fn tag(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::TAG];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    /// The command's argument (everything after the header, padding included).
    pub fn arg(&self) -> &[u8] {
        &self.buffer.as_ref()[field::ARG..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_ver_flags(&mut self, version: u8, response: bool, error: bool) {
        let mut v = version << 4;
        if response {
            v |= FLAG_RESPONSE;
        }
        if error {
            v |= FLAG_ERROR;
        }
        self.buffer.as_mut()[field::VER_FLAGS] = v;
    }
    pub fn set_error(&mut self, e: ErrorCode) {
        self.buffer.as_mut()[field::ERROR] = e.into();
    }
    pub fn set_shelf(&mut self, v: u16) {
        self.buffer.as_mut()[field::MAJOR].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_slot(&mut self, v: u8) {
        self.buffer.as_mut()[field::MINOR] = v;
    }
    pub fn set_command(&mut self, c: Command) {
        self.buffer.as_mut()[field::COMMAND] = c.into();
    }
    pub fn set_tag(&mut self, v: u32) {
        self.buffer.as_mut()[field::TAG].copy_from_slice(&v.to_be_bytes());
    }
    pub fn arg_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::ARG..]
    }
}

/// The AoE header as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub version: u8,
    pub response: bool,
    /// `Some(code)` when the Error flag is set.
    pub error: Option<ErrorCode>,
    pub shelf: u16,
    pub slot: u8,
    pub command: Command,
    pub tag: u32,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Self> {
        p.check_len()?;
        Ok(Self {
            version: p.version(),
            response: p.is_response(),
            error: p.is_error().then(|| p.error()),
            shelf: p.shelf(),
            slot: p.slot(),
            command: p.command(),
            tag: p.tag(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) -> Result<()> {
        p.check_len()?;
        if self.version > 0x0f {
            return Err(Error::Malformed("AoE version is a 4-bit field"));
        }
        p.set_ver_flags(self.version, self.response, self.error.is_some());
        p.buffer.as_mut()[field::ERROR] = self.error.map_or(0, u8::from);
        p.set_shelf(self.shelf);
        p.set_slot(self.slot);
        p.set_command(self.command);
        p.set_tag(self.tag);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Issue ATA Command (section 3.1)
// ---------------------------------------------------------------------------

mod ata_field {
    use core::ops::Range;
    pub const AFLAGS: usize = 0;
    pub const ERR_FEATURE: usize = 1;
    pub const SECTOR_COUNT: usize = 2;
    pub const CMD_STATUS: usize = 3;
    pub const LBA: Range<usize> = 4..10;
    pub const RESERVED: Range<usize> = 10..12;
    pub const DATA: usize = RESERVED.end;
}

/// Length of the ATA argument header before the data.
pub const ATA_HEADER_LEN: usize = ata_field::DATA;

/// `AFlags` bits of the ATA argument.
pub mod aflags {
    /// `E`: LBA48 extended command.
    pub const EXTENDED: u8 = 0x40;
    /// `D`: the device/head register's DEV bit (obsolete; echoed).
    pub const DEVICE: u8 = 0x10;
    /// `A`: asynchronous write (the initiator wants no durability wait).
    pub const ASYNC: u8 = 0x02;
    /// `W`: the command carries data to write.
    pub const WRITE: u8 = 0x01;
}

/// A view of the Issue ATA Command argument.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  AFlags       | Err/Feature   | Sector Count  |  Cmd/Status   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     lba0      |     lba1      |     lba2      |     lba3      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     lba4      |     lba5      |           Reserved            |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                             Data ...                          |
/// AFlags: 0 E 0 D 0 0 A W
/// ```
#[derive(Debug, Clone)]
pub struct AtaPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> AtaPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    pub fn check_len(&self) -> Result<()> {
        check_len(self.buffer.as_ref(), ATA_HEADER_LEN)
    }
    pub fn aflags(&self) -> u8 {
        self.buffer.as_ref()[ata_field::AFLAGS]
    }
    pub fn err_feature(&self) -> u8 {
        self.buffer.as_ref()[ata_field::ERR_FEATURE]
    }
    pub fn sector_count(&self) -> u8 {
        self.buffer.as_ref()[ata_field::SECTOR_COUNT]
    }
    pub fn cmd_status(&self) -> u8 {
        self.buffer.as_ref()[ata_field::CMD_STATUS]
    }
    pub fn lba_bytes(&self) -> [u8; 6] {
        let mut l = [0u8; 6];
        l.copy_from_slice(&self.buffer.as_ref()[ata_field::LBA]);
        l
    }
    /// The data following the header (may include Ethernet padding).
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[ata_field::DATA..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> AtaPacket<T> {
    pub fn set_aflags(&mut self, v: u8) {
        self.buffer.as_mut()[ata_field::AFLAGS] = v;
    }
    pub fn set_err_feature(&mut self, v: u8) {
        self.buffer.as_mut()[ata_field::ERR_FEATURE] = v;
    }
    pub fn set_sector_count(&mut self, v: u8) {
        self.buffer.as_mut()[ata_field::SECTOR_COUNT] = v;
    }
    pub fn set_cmd_status(&mut self, v: u8) {
        self.buffer.as_mut()[ata_field::CMD_STATUS] = v;
    }
    pub fn set_lba_bytes(&mut self, l: [u8; 6]) {
        self.buffer.as_mut()[ata_field::LBA].copy_from_slice(&l);
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[ata_field::DATA..]
    }
}

/// The ATA argument header as plain data (the data stays in the buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtaRepr {
    pub aflags: u8,
    /// Error register in responses, Feature register in requests.
    pub err_feature: u8,
    pub sector_count: u8,
    /// Status register in responses, Command register in requests.
    pub cmd_status: u8,
    /// `lba0` (least significant) to `lba5`. For LBA28 commands `lba3` also
    /// carries the device register's upper bits.
    pub lba: [u8; 6],
}

impl AtaRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &AtaPacket<T>) -> Result<Self> {
        p.check_len()?;
        Ok(Self {
            aflags: p.aflags(),
            err_feature: p.err_feature(),
            sector_count: p.sector_count(),
            cmd_status: p.cmd_status(),
            lba: p.lba_bytes(),
        })
    }
    pub fn buffer_len(&self) -> usize {
        ATA_HEADER_LEN
    }
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut AtaPacket<T>) -> Result<()> {
        p.check_len()?;
        p.set_aflags(self.aflags);
        p.set_err_feature(self.err_feature);
        p.set_sector_count(self.sector_count);
        p.set_cmd_status(self.cmd_status);
        p.set_lba_bytes(self.lba);
        p.buffer.as_mut()[ata_field::RESERVED].fill(0);
        Ok(())
    }
    pub fn is_extended(&self) -> bool {
        self.aflags & aflags::EXTENDED != 0
    }
    pub fn is_write(&self) -> bool {
        self.aflags & aflags::WRITE != 0
    }
    /// The addressed sector: 48 bits with the `E` flag, else 28 bits (the low
    /// nibble of `lba3`; its upper bits are device-register flags).
    pub fn lba(&self) -> u64 {
        let l = self.lba;
        if self.is_extended() {
            u64::from_le_bytes([l[0], l[1], l[2], l[3], l[4], l[5], 0, 0])
        } else {
            u64::from_le_bytes([l[0], l[1], l[2], l[3] & 0x0f, 0, 0, 0, 0])
        }
    }
    /// Sets the `lba` bytes for `lba` (LBA28 commands also get the LBA-mode
    /// bit 0x40 in `lba3`, as the device register expects).
    pub fn set_lba(&mut self, lba: u64, extended: bool) {
        let b = lba.to_le_bytes();
        if extended {
            self.lba = [b[0], b[1], b[2], b[3], b[4], b[5]];
        } else {
            self.lba = [b[0], b[1], b[2], 0xe0 | (b[3] & 0x0f), 0, 0];
        }
    }
    /// Sectors requested; for extended commands 0 means 65536 in ATA but AoE
    /// carries only 8 bits, so 0 means 256 for LBA28 and is taken literally as 0
    /// for LBA48 (no data) — both initiators we know never send 0.
    pub fn sectors(&self) -> u32 {
        if self.sector_count == 0 && !self.is_extended() {
            256
        } else {
            u32::from(self.sector_count)
        }
    }
}

// ---------------------------------------------------------------------------
// Query Config Information (section 3.2)
// ---------------------------------------------------------------------------

/// The `CCmd` of Query Config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigCommand {
    /// 0: read the config string.
    Read,
    /// 1: respond only if the string matches exactly.
    TestExact,
    /// 2: respond only if the argument is a prefix of the string.
    TestPrefix,
    /// 3: set the string if it is empty, else error "config string present".
    SetIfEmpty,
    /// 4: set the string unconditionally.
    ForceSet,
    Unknown(u8),
}

impl From<u8> for ConfigCommand {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Read,
            1 => Self::TestExact,
            2 => Self::TestPrefix,
            3 => Self::SetIfEmpty,
            4 => Self::ForceSet,
            n => Self::Unknown(n),
        }
    }
}

impl From<ConfigCommand> for u8 {
    fn from(c: ConfigCommand) -> u8 {
        match c {
            ConfigCommand::Read => 0,
            ConfigCommand::TestExact => 1,
            ConfigCommand::TestPrefix => 2,
            ConfigCommand::SetIfEmpty => 3,
            ConfigCommand::ForceSet => 4,
            ConfigCommand::Unknown(n) => n & 0x0f,
        }
    }
}

mod cfg_field {
    use core::ops::Range;
    pub const BUFFER_COUNT: Range<usize> = 0..2;
    pub const FIRMWARE: Range<usize> = 2..4;
    pub const SECTOR_COUNT: usize = 4;
    pub const VER_CCMD: usize = 5;
    pub const STRING_LEN: Range<usize> = 6..8;
    pub const STRING: usize = STRING_LEN.end;
}

/// Length of the Query Config argument before the config string.
pub const CONFIG_HEADER_LEN: usize = cfg_field::STRING;

/// A view of the Query Config argument.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |         Buffer Count          |       Firmware Version        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Sector Count  |AoE Ver| CCmd  |     Config String Length      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                     Config String ... (<= 1024)               |
/// ```
#[derive(Debug, Clone)]
pub struct ConfigPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ConfigPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    /// Checks the fixed part and that the config string fits the buffer and the
    /// 1024-byte limit.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(b, CONFIG_HEADER_LEN)?;
        let n = usize::from(self.string_len());
        if n > MAX_CONFIG_STRING {
            return Err(Error::Malformed("config string longer than 1024 bytes"));
        }
        check_len(b, CONFIG_HEADER_LEN + n)
    }
    pub fn buffer_count(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn firmware(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
    pub fn sector_count(&self) -> u8 {
        self.buffer.as_ref()[cfg_field::SECTOR_COUNT]
    }
    pub fn aoe_version(&self) -> u8 {
        self.buffer.as_ref()[cfg_field::VER_CCMD] >> 4
    }
    pub fn ccmd(&self) -> ConfigCommand {
        (self.buffer.as_ref()[cfg_field::VER_CCMD] & 0x0f).into()
    }
    pub fn string_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }
    pub fn config_string(&self) -> &[u8] {
        let n = usize::from(self.string_len());
        &self.buffer.as_ref()[cfg_field::STRING..cfg_field::STRING + n]
    }
}

/// The Query Config argument as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigRepr<'a> {
    /// Messages the target can queue (responses; 0 in requests).
    pub buffer_count: u16,
    pub firmware: u16,
    /// Most sectors one ATA command may carry (responses).
    pub sector_count: u8,
    pub aoe_version: u8,
    pub ccmd: ConfigCommand,
    pub config: &'a [u8],
}

impl<'a> ConfigRepr<'a> {
    pub fn parse(p: &ConfigPacket<&'a [u8]>) -> Result<Self> {
        p.check_len()?;
        let b: &'a [u8] = p.buffer;
        let n = usize::from(u16::from_be_bytes([b[6], b[7]]));
        Ok(Self {
            buffer_count: p.buffer_count(),
            firmware: p.firmware(),
            sector_count: p.sector_count(),
            aoe_version: p.aoe_version(),
            ccmd: p.ccmd(),
            config: &b[cfg_field::STRING..cfg_field::STRING + n],
        })
    }
    pub fn buffer_len(&self) -> usize {
        CONFIG_HEADER_LEN + self.config.len()
    }
    /// Writes the argument into the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        check_len(buf, self.buffer_len())?;
        if self.config.len() > MAX_CONFIG_STRING {
            return Err(Error::Malformed("config string longer than 1024 bytes"));
        }
        if self.aoe_version > 0x0f || matches!(self.ccmd, ConfigCommand::Unknown(n) if n > 0x0f) {
            return Err(Error::Malformed("AoE version and CCmd are 4-bit fields"));
        }
        buf[cfg_field::BUFFER_COUNT].copy_from_slice(&self.buffer_count.to_be_bytes());
        buf[cfg_field::FIRMWARE].copy_from_slice(&self.firmware.to_be_bytes());
        buf[cfg_field::SECTOR_COUNT] = self.sector_count;
        buf[cfg_field::VER_CCMD] = (self.aoe_version << 4) | u8::from(self.ccmd);
        buf[cfg_field::STRING_LEN].copy_from_slice(&(self.config.len() as u16).to_be_bytes());
        buf[cfg_field::STRING..cfg_field::STRING + self.config.len()].copy_from_slice(self.config);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// MAC Mask List (section 3.3)
// ---------------------------------------------------------------------------

/// `MCmd` of the MAC Mask List command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskCommand {
    /// 0: read the list.
    Read,
    /// 1: apply the directives, then return the list.
    Edit,
    Unknown(u8),
}

impl From<u8> for MaskCommand {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Read,
            1 => Self::Edit,
            n => Self::Unknown(n),
        }
    }
}

impl From<MaskCommand> for u8 {
    fn from(c: MaskCommand) -> u8 {
        match c {
            MaskCommand::Read => 0,
            MaskCommand::Edit => 1,
            MaskCommand::Unknown(n) => n,
        }
    }
}

/// `MError` of the MAC Mask List response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskError {
    /// 0: no error.
    None,
    /// 1: unspecified error.
    Unspecified,
    /// 2: bad DCmd directive.
    BadDirective,
    /// 3: mask list full.
    ListFull,
    Unknown(u8),
}

impl From<u8> for MaskError {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Unspecified,
            2 => Self::BadDirective,
            3 => Self::ListFull,
            n => Self::Unknown(n),
        }
    }
}

impl From<MaskError> for u8 {
    fn from(c: MaskError) -> u8 {
        match c {
            MaskError::None => 0,
            MaskError::Unspecified => 1,
            MaskError::BadDirective => 2,
            MaskError::ListFull => 3,
            MaskError::Unknown(n) => n,
        }
    }
}

/// `DCmd` of one mask directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectiveCommand {
    /// 0: no directive (also used for list entries in responses).
    None,
    /// 1: add the MAC to the list.
    Add,
    /// 2: delete the MAC from the list.
    Delete,
    Unknown(u8),
}

impl From<u8> for DirectiveCommand {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Add,
            2 => Self::Delete,
            n => Self::Unknown(n),
        }
    }
}

impl From<DirectiveCommand> for u8 {
    fn from(c: DirectiveCommand) -> u8 {
        match c {
            DirectiveCommand::None => 0,
            DirectiveCommand::Add => 1,
            DirectiveCommand::Delete => 2,
            DirectiveCommand::Unknown(n) => n,
        }
    }
}

/// One MAC Mask directive (8 bytes: reserved, DCmd, Ethernet address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directive {
    pub dcmd: DirectiveCommand,
    pub mac: Mac,
}

/// Length of the MAC Mask List argument before its directives.
pub const MASK_HEADER_LEN: usize = 4;
/// Length of one directive.
pub const DIRECTIVE_LEN: usize = 8;

/// A view of the MAC Mask List argument.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   Reserved    |     MCmd      |    MError     |   Dir Count   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   Reserved    |     DCmd      |  Ethernet Address (6) ...     |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                ... Dir Count directives                       |
/// ```
#[derive(Debug, Clone)]
pub struct MaskPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> MaskPacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    /// Checks the header and that all `Dir Count` directives are present.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(b, MASK_HEADER_LEN)?;
        check_len(b, MASK_HEADER_LEN + DIRECTIVE_LEN * usize::from(b[3]))
    }
    pub fn mcmd(&self) -> MaskCommand {
        self.buffer.as_ref()[1].into()
    }
    pub fn merror(&self) -> MaskError {
        self.buffer.as_ref()[2].into()
    }
    pub fn dir_count(&self) -> u8 {
        self.buffer.as_ref()[3]
    }
    /// Directive `i`, if `i < dir_count()`.
    pub fn directive(&self, i: usize) -> Option<Directive> {
        if i >= usize::from(self.dir_count()) {
            return None;
        }
        let at = MASK_HEADER_LEN + DIRECTIVE_LEN * i;
        let b = self.buffer.as_ref().get(at..at + DIRECTIVE_LEN)?;
        Some(Directive {
            dcmd: b[1].into(),
            mac: mac_at(b, 2),
        })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> MaskPacket<T> {
    /// Writes directive `i` (the buffer must hold it).
    pub fn set_directive(&mut self, i: usize, d: Directive) -> Result<()> {
        let at = MASK_HEADER_LEN + DIRECTIVE_LEN * i;
        let b = self.buffer.as_mut();
        check_len(b, at + DIRECTIVE_LEN)?;
        b[at] = 0;
        b[at + 1] = d.dcmd.into();
        b[at + 2..at + 8].copy_from_slice(&d.mac);
        Ok(())
    }
}

/// The MAC Mask List header as plain data (directives through the view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskRepr {
    pub mcmd: MaskCommand,
    pub merror: MaskError,
    pub dir_count: u8,
}

impl MaskRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &MaskPacket<T>) -> Result<Self> {
        p.check_len()?;
        Ok(Self {
            mcmd: p.mcmd(),
            merror: p.merror(),
            dir_count: p.dir_count(),
        })
    }
    /// Header plus room for `dir_count` directives.
    pub fn buffer_len(&self) -> usize {
        MASK_HEADER_LEN + DIRECTIVE_LEN * usize::from(self.dir_count)
    }
    /// Writes the header into the start of `buf` (directives follow with
    /// [`MaskPacket::set_directive`]).
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        check_len(buf, self.buffer_len())?;
        buf[0] = 0;
        buf[1] = self.mcmd.into();
        buf[2] = self.merror.into();
        buf[3] = self.dir_count;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Reserve / Release (section 3.4)
// ---------------------------------------------------------------------------

/// `RCmd` of the Reserve/Release command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveCommand {
    /// 0: read the reserve list.
    Read,
    /// 1: set the list (only if empty or the sender is on it).
    Set,
    /// 2: force set the list.
    ForceSet,
    Unknown(u8),
}

impl From<u8> for ReserveCommand {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Read,
            1 => Self::Set,
            2 => Self::ForceSet,
            n => Self::Unknown(n),
        }
    }
}

impl From<ReserveCommand> for u8 {
    fn from(c: ReserveCommand) -> u8 {
        match c {
            ReserveCommand::Read => 0,
            ReserveCommand::Set => 1,
            ReserveCommand::ForceSet => 2,
            ReserveCommand::Unknown(n) => n,
        }
    }
}

/// Length of the Reserve/Release argument before its MACs.
pub const RESERVE_HEADER_LEN: usize = 2;

/// A view of the Reserve/Release argument.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     RCmd      |    NMacs      |  Ethernet Address (6) ...     |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                  ... NMacs addresses                          |
/// ```
#[derive(Debug, Clone)]
pub struct ReservePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ReservePacket<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(b, RESERVE_HEADER_LEN)?;
        check_len(b, RESERVE_HEADER_LEN + 6 * usize::from(b[1]))
    }
    pub fn rcmd(&self) -> ReserveCommand {
        self.buffer.as_ref()[0].into()
    }
    pub fn nmacs(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    /// Address `i`, if `i < nmacs()`.
    pub fn mac(&self, i: usize) -> Option<Mac> {
        if i >= usize::from(self.nmacs()) {
            return None;
        }
        let at = RESERVE_HEADER_LEN + 6 * i;
        let b = self.buffer.as_ref().get(at..at + 6)?;
        Some(mac_at(b, 0))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ReservePacket<T> {
    pub fn set_mac(&mut self, i: usize, mac: Mac) -> Result<()> {
        let at = RESERVE_HEADER_LEN + 6 * i;
        let b = self.buffer.as_mut();
        check_len(b, at + 6)?;
        b[at..at + 6].copy_from_slice(&mac);
        Ok(())
    }
}

/// The Reserve/Release header as plain data (addresses through the view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveRepr {
    pub rcmd: ReserveCommand,
    pub nmacs: u8,
}

impl ReserveRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &ReservePacket<T>) -> Result<Self> {
        p.check_len()?;
        Ok(Self {
            rcmd: p.rcmd(),
            nmacs: p.nmacs(),
        })
    }
    pub fn buffer_len(&self) -> usize {
        RESERVE_HEADER_LEN + 6 * usize::from(self.nmacs)
    }
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        check_len(buf, self.buffer_len())?;
        buf[0] = self.rcmd.into();
        buf[1] = self.nmacs;
        Ok(())
    }
}

/// Most sectors of 512 bytes an ATA command can carry in a frame whose
/// Ethernet payload may be `mtu` bytes (1500 carries 2, 9000 carries 17).
pub fn max_sectors_for_mtu(mtu: usize) -> u8 {
    let room = mtu.saturating_sub(HEADER_LEN + ATA_HEADER_LEN) / 512;
    room.min(255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A Query Config request as `aoecfg` / the Linux driver broadcast it.
    const QUERY_BROADCAST: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst: broadcast
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // src
        0x88, 0xa2, // EtherType
        0x10, 0x00, // ver 1, no flags, error 0
        0xff, 0xff, 0xff, 0x01, // shelf 0xffff, slot 0xff, command 1
        0xde, 0xad, 0xbe, 0xef, // tag
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // config arg, empty
    ];

    #[test]
    fn decodes_a_broadcast_query_config() {
        let (eth, off) = EthRepr::parse(&QUERY_BROADCAST).unwrap();
        assert_eq!(eth.dst, MAC_BROADCAST);
        assert_eq!(eth.ethertype, ETHERTYPE_AOE);
        assert_eq!(off, 14);
        let p = Packet::new_checked(&QUERY_BROADCAST[off..]).unwrap();
        let h = Repr::parse(&p).unwrap();
        assert_eq!(
            h,
            Repr {
                version: 1,
                response: false,
                error: None,
                shelf: BROADCAST_SHELF,
                slot: BROADCAST_SLOT,
                command: Command::QueryConfig,
                tag: 0xdead_beef,
            }
        );
        let c = ConfigPacket::new_checked(p.arg()).unwrap();
        let r = ConfigRepr::parse(&c).unwrap();
        assert_eq!(r.ccmd, ConfigCommand::Read);
        assert!(r.config.is_empty());
    }

    #[test]
    fn emits_an_error_response_into_a_prefilled_buffer() {
        let mut buf = [0xa5u8; HEADER_LEN];
        let h = Repr {
            version: 1,
            response: true,
            error: Some(ErrorCode::TargetReserved),
            shelf: 7,
            slot: 3,
            command: Command::Ata,
            tag: 42,
        };
        h.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(buf, [0x1c, 6, 0, 7, 3, 0, 0, 0, 0, 42]);
    }

    #[test]
    fn vlan_tag_round_trips() {
        let e = EthRepr {
            dst: [1, 2, 3, 4, 5, 6],
            src: [7, 8, 9, 10, 11, 12],
            vlan_tci: Some(0x2005),
            ethertype: ETHERTYPE_AOE,
        };
        let mut buf = [0xa5u8; 18];
        e.emit(&mut buf).unwrap();
        assert_eq!(&buf[12..18], &[0x81, 0x00, 0x20, 0x05, 0x88, 0xa2]);
        assert_eq!(EthRepr::parse(&buf).unwrap(), (e, 18));
    }

    #[test]
    fn lba28_ignores_device_register_bits() {
        let mut a = AtaRepr {
            aflags: 0,
            err_feature: 0,
            sector_count: 2,
            cmd_status: 0x20,
            lba: [0; 6],
        };
        a.set_lba(0x0abc_def1, false);
        assert_eq!(a.lba, [0xf1, 0xde, 0xbc, 0xea, 0, 0]);
        assert_eq!(a.lba(), 0x0abc_def1);
        a.aflags = aflags::EXTENDED;
        a.set_lba(0x0000_1234_5678_9abc, true);
        assert_eq!(a.lba(), 0x1234_5678_9abc);
    }

    #[test]
    fn mtu_bounds_sectors_per_frame() {
        assert_eq!(max_sectors_for_mtu(1500), 2);
        assert_eq!(max_sectors_for_mtu(9000), 17);
        assert_eq!(max_sectors_for_mtu(100), 0);
    }

    #[test]
    fn mask_and_reserve_lists_are_bounded_by_their_counts() {
        // Dir Count says 2 but only one directive is present.
        let b = [0, 1, 0, 2, 0, 1, 1, 2, 3, 4, 5, 6];
        assert!(MaskPacket::new_checked(&b[..]).is_err());
        let b = [1, 1, 1, 2, 3, 4, 5, 6];
        let p = ReservePacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.mac(0), Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(p.mac(1), None);
    }

    fn arb_header() -> impl Strategy<Value = Repr> {
        (
            0u8..16,
            any::<bool>(),
            proptest::option::of(any::<u8>().prop_filter("nonzero", |v| *v != 0)),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
        )
            .prop_map(|(version, response, error, shelf, slot, cmd, tag)| Repr {
                version,
                response,
                error: error.map(ErrorCode::from),
                shelf,
                slot,
                command: cmd.into(),
                tag,
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..1600)) {
            if let Ok((_, off)) = EthRepr::parse(&buf) {
                if let Ok(p) = Packet::new_checked(&buf[off..]) {
                    let _ = Repr::parse(&p);
                    let arg = p.arg();
                    if let Ok(a) = AtaPacket::new_checked(arg) {
                        let r = AtaRepr::parse(&a).unwrap();
                        let _ = (r.lba(), r.sectors(), a.data().len());
                    }
                    if let Ok(c) = ConfigPacket::new_checked(arg) {
                        let _ = ConfigRepr::parse(&c);
                    }
                    if let Ok(m) = MaskPacket::new_checked(arg) {
                        let r = MaskRepr::parse(&m).unwrap();
                        for i in 0..=usize::from(r.dir_count) { let _ = m.directive(i); }
                    }
                    if let Ok(m) = ReservePacket::new_checked(arg) {
                        let r = ReserveRepr::parse(&m).unwrap();
                        for i in 0..=usize::from(r.nmacs) { let _ = m.mac(i); }
                    }
                }
            }
        }

        #[test]
        fn header_round_trips(h in arb_header()) {
            let mut buf = [0xa5u8; HEADER_LEN];
            h.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap(), h);
        }

        #[test]
        fn ata_round_trips(aflags in any::<u8>(), f in any::<u8>(), n in any::<u8>(),
                           c in any::<u8>(), lba in any::<[u8; 6]>()) {
            let r = AtaRepr { aflags, err_feature: f, sector_count: n, cmd_status: c, lba };
            let mut buf = [0xa5u8; ATA_HEADER_LEN];
            r.emit(&mut AtaPacket::new_unchecked(&mut buf[..])).unwrap();
            prop_assert_eq!(AtaRepr::parse(&AtaPacket::new_checked(&buf[..]).unwrap()).unwrap(), r);
        }

        #[test]
        fn config_round_trips(bc in any::<u16>(), fw in any::<u16>(), sc in any::<u8>(),
                              ver in 0u8..16, ccmd in 0u8..16,
                              s in proptest::collection::vec(any::<u8>(), 0..=1024)) {
            let r = ConfigRepr { buffer_count: bc, firmware: fw, sector_count: sc,
                                 aoe_version: ver, ccmd: ccmd.into(), config: &s };
            let mut buf = vec![0xa5u8; r.buffer_len()];
            r.emit(&mut buf).unwrap();
            let p = ConfigPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(ConfigRepr::parse(&p).unwrap(), r);
        }

        #[test]
        fn mask_round_trips(mcmd in any::<u8>(), merr in any::<u8>(),
                            dirs in proptest::collection::vec((any::<u8>(), any::<[u8; 6]>()), 0..20)) {
            let r = MaskRepr { mcmd: mcmd.into(), merror: merr.into(), dir_count: dirs.len() as u8 };
            let mut buf = vec![0xa5u8; r.buffer_len()];
            r.emit(&mut buf).unwrap();
            let mut p = MaskPacket::new_unchecked(&mut buf[..]);
            for (i, (d, mac)) in dirs.iter().enumerate() {
                p.set_directive(i, Directive { dcmd: (*d).into(), mac: *mac }).unwrap();
            }
            let p = MaskPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(MaskRepr::parse(&p).unwrap(), r);
            for (i, (d, mac)) in dirs.iter().enumerate() {
                prop_assert_eq!(p.directive(i), Some(Directive { dcmd: (*d).into(), mac: *mac }));
            }
        }

        #[test]
        fn reserve_round_trips(rcmd in any::<u8>(), macs in proptest::collection::vec(any::<[u8; 6]>(), 0..20)) {
            let r = ReserveRepr { rcmd: rcmd.into(), nmacs: macs.len() as u8 };
            let mut buf = vec![0xa5u8; r.buffer_len()];
            r.emit(&mut buf).unwrap();
            let mut p = ReservePacket::new_unchecked(&mut buf[..]);
            for (i, m) in macs.iter().enumerate() { p.set_mac(i, *m).unwrap(); }
            let p = ReservePacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(ReserveRepr::parse(&p).unwrap(), r);
            for (i, m) in macs.iter().enumerate() { prop_assert_eq!(p.mac(i), Some(*m)); }
        }

        #[test]
        fn eth_round_trips(dst in any::<[u8; 6]>(), src in any::<[u8; 6]>(),
                           tci in proptest::option::of(any::<u16>()),
                           et in any::<u16>().prop_filter("not a VLAN TPID", |t| *t != ETHERTYPE_VLAN)) {
            let e = EthRepr { dst, src, vlan_tci: tci, ethertype: et };
            let mut buf = [0xa5u8; 18];
            e.emit(&mut buf).unwrap();
            prop_assert_eq!(EthRepr::parse(&buf[..e.buffer_len()]).unwrap(), (e, e.buffer_len()));
        }
    }
}
