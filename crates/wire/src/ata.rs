//! ATA taskfile values and the IDENTIFY DEVICE data block as carried by AoE
//! command 0 (ATA/ATAPI-8 ACS, section 7.16 "IDENTIFY DEVICE", table 22 for the
//! word layout; status and error register bits from section 6.1/6.2).
//!
//! IDENTIFY data is 256 little-endian 16-bit words. ATA strings (serial,
//! firmware, model) store two characters per word with the first character in
//! the high byte, so on the wire every pair of bytes is swapped.

use crate::error::{check_len, Error, Result};

/// Bytes in a sector (AoE always uses 512-byte sectors).
pub const SECTOR_SIZE: usize = 512;
/// Bytes in an IDENTIFY DEVICE block.
pub const IDENTIFY_LEN: usize = 512;
/// Largest LBA28 sector count IDENTIFY word 60-61 may report.
pub const LBA28_MAX_SECTORS: u64 = 0x0fff_ffff;

/// ATA command opcodes that AoE initiators send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// 0x20 READ SECTORS (LBA28), as the Linux aoe driver sends.
    ReadSectors,
    /// 0x24 READ SECTORS EXT (LBA48).
    ReadSectorsExt,
    /// 0xC8 READ DMA (LBA28), as iPXE sends.
    ReadDma,
    /// 0x25 READ DMA EXT (LBA48).
    ReadDmaExt,
    /// 0x30 WRITE SECTORS.
    WriteSectors,
    /// 0x34 WRITE SECTORS EXT.
    WriteSectorsExt,
    /// 0xCA WRITE DMA.
    WriteDma,
    /// 0x35 WRITE DMA EXT.
    WriteDmaExt,
    /// 0xEC IDENTIFY DEVICE.
    IdentifyDevice,
    /// 0xE7 FLUSH CACHE.
    FlushCache,
    /// 0xEA FLUSH CACHE EXT.
    FlushCacheExt,
    /// 0xE5 CHECK POWER MODE.
    CheckPowerMode,
    Unknown(u8),
}

impl From<u8> for Opcode {
    fn from(v: u8) -> Self {
        match v {
            0x20 => Self::ReadSectors,
            0x24 => Self::ReadSectorsExt,
            0xc8 => Self::ReadDma,
            0x25 => Self::ReadDmaExt,
            0x30 => Self::WriteSectors,
            0x34 => Self::WriteSectorsExt,
            0xca => Self::WriteDma,
            0x35 => Self::WriteDmaExt,
            0xec => Self::IdentifyDevice,
            0xe7 => Self::FlushCache,
            0xea => Self::FlushCacheExt,
            0xe5 => Self::CheckPowerMode,
            n => Self::Unknown(n),
        }
    }
}

impl From<Opcode> for u8 {
    fn from(o: Opcode) -> u8 {
        match o {
            Opcode::ReadSectors => 0x20,
            Opcode::ReadSectorsExt => 0x24,
            Opcode::ReadDma => 0xc8,
            Opcode::ReadDmaExt => 0x25,
            Opcode::WriteSectors => 0x30,
            Opcode::WriteSectorsExt => 0x34,
            Opcode::WriteDma => 0xca,
            Opcode::WriteDmaExt => 0x35,
            Opcode::IdentifyDevice => 0xec,
            Opcode::FlushCache => 0xe7,
            Opcode::FlushCacheExt => 0xea,
            Opcode::CheckPowerMode => 0xe5,
            Opcode::Unknown(n) => n,
        }
    }
}

impl Opcode {
    /// Whether the opcode is a 48-bit (EXT) command.
    pub fn is_ext(self) -> bool {
        matches!(
            self,
            Self::ReadSectorsExt
                | Self::ReadDmaExt
                | Self::WriteSectorsExt
                | Self::WriteDmaExt
                | Self::FlushCacheExt
        )
    }
}

/// Status register bits.
pub mod status {
    /// Busy.
    pub const BSY: u8 = 0x80;
    /// Device ready.
    pub const DRDY: u8 = 0x40;
    /// Device fault.
    pub const DF: u8 = 0x20;
    /// Data request.
    pub const DRQ: u8 = 0x08;
    /// Error: the error register says which.
    pub const ERR: u8 = 0x01;
}

/// Error register bits.
pub mod error_bits {
    /// Uncorrectable data error.
    pub const UNC: u8 = 0x40;
    /// ID not found: the address is outside the device.
    pub const IDNF: u8 = 0x10;
    /// Command aborted (unsupported command or parameter, write protect).
    pub const ABRT: u8 = 0x04;
}

/// CHECK POWER MODE sector count: active or idle.
pub const POWER_ACTIVE: u8 = 0xff;

/// Word indices of IDENTIFY DEVICE data that we write or read.
pub mod word {
    pub const GENERAL_CONFIG: usize = 0;
    pub const CYLINDERS: usize = 1;
    pub const HEADS: usize = 3;
    pub const SECTORS_PER_TRACK: usize = 6;
    pub const SERIAL: usize = 10; // 10 words
    pub const FIRMWARE: usize = 23; // 4 words
    pub const MODEL: usize = 27; // 20 words
    pub const MAX_MULTIPLE: usize = 47;
    pub const CAPABILITIES: usize = 49;
    pub const CAPABILITIES2: usize = 50;
    pub const FIELD_VALIDITY: usize = 53;
    pub const CUR_CYLINDERS: usize = 54;
    pub const CUR_HEADS: usize = 55;
    pub const CUR_SECTORS: usize = 56;
    pub const CUR_CAPACITY: usize = 57; // 2 words
    pub const MULTIPLE_SETTING: usize = 59;
    pub const LBA28_SECTORS: usize = 60; // 2 words
    pub const MULTIWORD_DMA: usize = 63;
    pub const PIO_MODES: usize = 64;
    pub const MAJOR_VERSION: usize = 80;
    pub const MINOR_VERSION: usize = 81;
    pub const SUPPORTED_82: usize = 82;
    pub const SUPPORTED_83: usize = 83;
    pub const SUPPORTED_84: usize = 84;
    pub const ENABLED_85: usize = 85;
    pub const ENABLED_86: usize = 86;
    pub const ENABLED_87: usize = 87;
    pub const UDMA_MODES: usize = 88;
    pub const LBA48_SECTORS: usize = 100; // 4 words
    pub const SECTOR_SIZE_INFO: usize = 106;
    pub const INTEGRITY: usize = 255;
}

/// Bits of words 82-87.
pub mod feature {
    /// Word 82/85 bit 5: volatile write cache supported / enabled.
    pub const WRITE_CACHE: u16 = 1 << 5;
    /// Word 83/86 bit 10: 48-bit address feature set.
    pub const LBA48: u16 = 1 << 10;
    /// Word 83/86 bit 12: FLUSH CACHE.
    pub const FLUSH_CACHE: u16 = 1 << 12;
    /// Word 83/86 bit 13: FLUSH CACHE EXT.
    pub const FLUSH_CACHE_EXT: u16 = 1 << 13;
    /// Words 83, 84, 87: bit 14 set and bit 15 clear mark the word valid.
    pub const VALID: u16 = 1 << 14;
}

/// Word 49 bit 9: LBA supported; bit 8: DMA supported.
pub const CAP_LBA: u16 = 1 << 9;
pub const CAP_DMA: u16 = 1 << 8;

/// What an IDENTIFY DEVICE block says about a disk (the parts targets and
/// initiators care about).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identify {
    /// Up to 20 printable ASCII characters.
    pub serial: String,
    /// Up to 8 printable ASCII characters.
    pub firmware: String,
    /// Up to 40 printable ASCII characters.
    pub model: String,
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// Whether the 48-bit address feature set is supported (else `sectors` is
    /// taken from the LBA28 words).
    pub lba48: bool,
    /// Whether a volatile write cache is enabled (FLUSH CACHE is meaningful).
    pub write_cache: bool,
    /// Most sectors per command the device advertises (word 47, low byte).
    pub max_multiple: u8,
}

impl Identify {
    /// Fills `buf` (512 bytes) with the IDENTIFY DEVICE block, including the
    /// integrity word (signature 0xA5 and checksum, ACS section 7.16.7.91).
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        check_len(buf, IDENTIFY_LEN)?;
        let buf = &mut buf[..IDENTIFY_LEN];
        buf.fill(0);
        let mut put = |w: usize, v: u16| buf[2 * w..2 * w + 2].copy_from_slice(&v.to_le_bytes());
        // Fixed, non-removable ATA device.
        put(word::GENERAL_CONFIG, 0x0040);
        // Legacy geometry: the maximum CHS (16383/16/63) for anything beyond
        // 8 GB, else the real cylinder count; LBA is what matters.
        let cyl = (self.sectors / (16 * 63)).min(16383) as u16;
        put(word::CYLINDERS, cyl);
        put(word::HEADS, 16);
        put(word::SECTORS_PER_TRACK, 63);
        put(word::MAX_MULTIPLE, 0x8000 | u16::from(self.max_multiple));
        put(word::CAPABILITIES, CAP_LBA | CAP_DMA);
        put(word::CAPABILITIES2, 0x4000);
        // Words 54-58 and 64-70, and 88 are valid.
        put(word::FIELD_VALIDITY, 0x0007);
        put(word::CUR_CYLINDERS, cyl);
        put(word::CUR_HEADS, 16);
        put(word::CUR_SECTORS, 63);
        let chs = u32::from(cyl) * 16 * 63;
        put(word::CUR_CAPACITY, chs as u16);
        put(word::CUR_CAPACITY + 1, (chs >> 16) as u16);
        put(
            word::MULTIPLE_SETTING,
            0x0100 | u16::from(self.max_multiple),
        );
        let lba28 = self.sectors.min(LBA28_MAX_SECTORS) as u32;
        put(word::LBA28_SECTORS, lba28 as u16);
        put(word::LBA28_SECTORS + 1, (lba28 >> 16) as u16);
        put(word::MULTIWORD_DMA, 0x0007);
        put(word::PIO_MODES, 0x0003);
        // ATA/ATAPI-4 .. ACS (ATA8): bits 4-8.
        put(word::MAJOR_VERSION, 0x01f0);
        let cache = if self.write_cache {
            feature::WRITE_CACHE
        } else {
            0
        };
        let lba48 = if self.lba48 { feature::LBA48 } else { 0 };
        let set83 = feature::FLUSH_CACHE | feature::FLUSH_CACHE_EXT | lba48;
        put(word::SUPPORTED_82, cache);
        put(word::SUPPORTED_83, feature::VALID | set83);
        put(word::SUPPORTED_84, feature::VALID);
        put(word::ENABLED_85, cache);
        put(word::ENABLED_86, set83);
        put(word::ENABLED_87, feature::VALID);
        put(word::UDMA_MODES, 0x003f);
        let s = self.sectors.to_le_bytes();
        for i in 0..4 {
            put(
                word::LBA48_SECTORS + i,
                u16::from_le_bytes([s[2 * i], s[2 * i + 1]]),
            );
        }
        // Valid, one logical sector per physical sector, 512-byte sectors.
        put(word::SECTOR_SIZE_INFO, 0x4000);
        put_string(buf, word::SERIAL, 10, &self.serial)?;
        put_string(buf, word::FIRMWARE, 4, &self.firmware)?;
        put_string(buf, word::MODEL, 20, &self.model)?;
        buf[510] = 0xa5;
        let sum = buf[..511].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        buf[511] = 0u8.wrapping_sub(sum);
        Ok(())
    }

    /// Reads an IDENTIFY DEVICE block (the first 512 bytes of `buf`).
    ///
    /// The integrity word is checked only when its signature (0xA5) is present,
    /// as ACS allows devices without one.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        check_len(buf, IDENTIFY_LEN)?;
        let buf = &buf[..IDENTIFY_LEN];
        if buf[510] == 0xa5 && buf.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
            return Err(Error::Malformed("IDENTIFY integrity checksum mismatch"));
        }
        let get = |w: usize| u16::from_le_bytes([buf[2 * w], buf[2 * w + 1]]);
        let w83 = get(word::SUPPORTED_83);
        let w86 = get(word::ENABLED_86);
        // Like the Linux aoe driver: 48-bit if word 83 or 86 says so.
        let lba48 = (w83 | w86) & feature::LBA48 != 0;
        let sectors = if lba48 {
            (0..4).fold(0u64, |a, i| {
                a | u64::from(get(word::LBA48_SECTORS + i)) << (16 * i)
            })
        } else {
            u64::from(get(word::LBA28_SECTORS)) | u64::from(get(word::LBA28_SECTORS + 1)) << 16
        };
        Ok(Self {
            serial: get_string(buf, word::SERIAL, 10),
            firmware: get_string(buf, word::FIRMWARE, 4),
            model: get_string(buf, word::MODEL, 20),
            sectors,
            lba48,
            write_cache: get(word::ENABLED_85) & feature::WRITE_CACHE != 0,
            max_multiple: get(word::MAX_MULTIPLE) as u8,
        })
    }
}

/// Writes `s` space-padded into `words` words from `w`, byte-swapped per word.
fn put_string(buf: &mut [u8], w: usize, words: usize, s: &str) -> Result<()> {
    let bytes = s.as_bytes();
    if bytes.len() > 2 * words || !bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(Error::Malformed(
            "ATA string too long or not printable ASCII",
        ));
    }
    for i in 0..2 * words {
        let c = bytes.get(i).copied().unwrap_or(b' ');
        // Character 2k goes to the high byte of word k (byte 2k+1).
        buf[2 * w + (i ^ 1)] = c;
    }
    Ok(())
}

/// Reads a byte-swapped ATA string and trims its padding.
fn get_string(buf: &[u8], w: usize, words: usize) -> String {
    let s: String = (0..2 * words)
        .map(|i| buf[2 * w + (i ^ 1)])
        .map(|b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    s.trim_end_matches([' ', '\0']).trim_start().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Identify {
        Identify {
            serial: "AB12".into(),
            firmware: "0.1.0".into(),
            model: "anyboot AoE disk".into(),
            sectors: 0x1_2345_6789,
            lba48: true,
            write_cache: true,
            max_multiple: 17,
        }
    }

    #[test]
    fn strings_are_byte_swapped_and_padded() {
        let mut buf = [0xa5u8; 512];
        sample().emit(&mut buf).unwrap();
        // Serial "AB12" -> words "AB" "12": bytes B A 2 1, then spaces.
        assert_eq!(&buf[20..26], b"BA21  ");
        assert_eq!(&buf[54..58], b"naby");
    }

    #[test]
    fn capacity_words_follow_ata8() {
        let mut buf = [0u8; 512];
        sample().emit(&mut buf).unwrap();
        let w = |i: usize| u16::from_le_bytes([buf[2 * i], buf[2 * i + 1]]);
        assert_eq!(w(60), 0xffff);
        assert_eq!(w(61), 0x0fff);
        assert_eq!(w(100), 0x6789);
        assert_eq!(w(101), 0x2345);
        assert_eq!(w(102), 0x0001);
        assert_eq!(w(103), 0);
        assert_eq!(w(83) & 0xc000, 0x4000);
        assert_ne!(w(83) & feature::LBA48, 0);
        assert_ne!(w(86) & feature::LBA48, 0);
        assert_ne!(w(49) & CAP_LBA, 0);
        assert_eq!(buf[510], 0xa5);
        assert_eq!(buf.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }

    #[test]
    fn corrupted_checksum_is_rejected() {
        let mut buf = [0u8; 512];
        sample().emit(&mut buf).unwrap();
        buf[200] ^= 1;
        assert!(Identify::parse(&buf).is_err());
    }

    #[test]
    fn small_disk_without_lba48_uses_lba28_words() {
        let mut id = sample();
        id.lba48 = false;
        id.sectors = 2048;
        let mut buf = [0u8; 512];
        id.emit(&mut buf).unwrap();
        assert_eq!(Identify::parse(&buf).unwrap(), id);
    }

    fn ata_string(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("([!-~]([ -~]{{0,{}}}[!-~])?)?", max - 2)).unwrap()
    }

    proptest! {
        #[test]
        fn identify_round_trips(serial in ata_string(20), firmware in ata_string(8),
                                model in ata_string(40), sectors in 0u64..(1 << 48),
                                cache in any::<bool>(), mm in any::<u8>()) {
            let id = Identify { serial, firmware, model, sectors, lba48: true,
                                write_cache: cache, max_multiple: mm };
            let mut buf = [0xa5u8; 512];
            id.emit(&mut buf).unwrap();
            prop_assert_eq!(Identify::parse(&buf).unwrap(), id);
        }

        #[test]
        fn arbitrary_identify_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Identify::parse(&buf);
        }
    }
}
