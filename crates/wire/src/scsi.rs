//! SCSI command descriptor blocks and sense data (SPC-4 sections 4.2, 4.5, 6; SBC-3 section 5)
//! as carried by iSCSI: opcodes, status codes, sense keys and additional sense
//! codes, fixed and descriptor format sense builders, and the LBA/length views
//! of the block commands' CDBs.

use crate::error::{check_len, Error, Result};

/// Operation codes (SPC-4 annex D, SBC-3 table 13).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PREFETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const SANITIZE: u8 = 0x48;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const WRITE_ATOMIC_16: u8 = 0x9c;
    pub const WRITE_16: u8 = 0x8a;
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PREFETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;
}

/// Service actions of SERVICE ACTION IN(16) and MAINTENANCE IN.
pub mod sa {
    pub const READ_CAPACITY_16: u8 = 0x10;
    pub const GET_LBA_STATUS: u8 = 0x12;
    pub const REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
    /// SANITIZE service actions (SBC-4 5.30, table "SANITIZE service action codes").
    pub const SANITIZE_OVERWRITE: u8 = 0x01;
    pub const SANITIZE_BLOCK_ERASE: u8 = 0x02;
    pub const SANITIZE_CRYPTO_ERASE: u8 = 0x03;
    pub const SANITIZE_EXIT_FAILURE_MODE: u8 = 0x1f;
}

/// SCSI status codes (SAM-5 5.3).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys (SPC-4 table 45).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenseKey {
    NoSense,
    NotReady,
    MediumError,
    HardwareError,
    IllegalRequest,
    UnitAttention,
    DataProtect,
    AbortedCommand,
    Miscompare,
    Unknown(u8),
}

impl From<SenseKey> for u8 {
    fn from(k: SenseKey) -> u8 {
        match k {
            SenseKey::NoSense => 0x0,
            SenseKey::NotReady => 0x2,
            SenseKey::MediumError => 0x3,
            SenseKey::HardwareError => 0x4,
            SenseKey::IllegalRequest => 0x5,
            SenseKey::UnitAttention => 0x6,
            SenseKey::DataProtect => 0x7,
            SenseKey::AbortedCommand => 0xb,
            SenseKey::Miscompare => 0xe,
            SenseKey::Unknown(n) => n & 0xf,
        }
    }
}

impl From<u8> for SenseKey {
    fn from(v: u8) -> Self {
        match v & 0xf {
            0x0 => SenseKey::NoSense,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0xb => SenseKey::AbortedCommand,
            0xe => SenseKey::Miscompare,
            n => SenseKey::Unknown(n),
        }
    }
}

/// Additional sense code and qualifier pairs (SPC-4 table 47) used by the targets.
pub mod asc {
    pub const NO_ADDITIONAL: (u8, u8) = (0x00, 0x00);
    pub const WRITE_ERROR: (u8, u8) = (0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: (u8, u8) = (0x1d, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: (u8, u8) = (0x1a, 0x00);
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    pub const LU_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: (u8, u8) = (0x26, 0x00);
    pub const INVALID_RELEASE_OF_PR: (u8, u8) = (0x26, 0x04);
    pub const WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
    pub const SOFTWARE_WRITE_PROTECTED: (u8, u8) = (0x27, 0x02);
    pub const SANITIZE_IN_PROGRESS: (u8, u8) = (0x04, 0x1b);
    pub const SANITIZE_COMMAND_FAILED: (u8, u8) = (0x31, 0x03);
    pub const POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
    pub const BUS_DEVICE_RESET: (u8, u8) = (0x29, 0x03);
    pub const PARAMETERS_CHANGED: (u8, u8) = (0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x05);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
    pub const MEDIUM_REMOVAL_PREVENTED: (u8, u8) = (0x53, 0x02);
    pub const MEDIUM_NOT_PRESENT: (u8, u8) = (0x3a, 0x00);
    pub const INTERNAL_TARGET_FAILURE: (u8, u8) = (0x44, 0x00);
    pub const SPACE_ALLOCATION_FAILED: (u8, u8) = (0x27, 0x07);
    pub const INSUFFICIENT_RESOURCES: (u8, u8) = (0x55, 0x03);
    pub const OVERLAPPED_COMMANDS: (u8, u8) = (0x4e, 0x00);
    pub const DATA_PHASE_ERROR: (u8, u8) = (0x4b, 0x00);
}

/// Sense data to return with CHECK CONDITION (SPC-4 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (e.g. the offset of a miscompare), if valid.
    pub information: Option<u64>,
    /// Sense-key specific: field pointer into the CDB (byte, bit) for
    /// ILLEGAL REQUEST.
    pub field_pointer: Option<(u16, Option<u8>, bool)>,
}

impl Sense {
    pub const fn new(key: SenseKey, (asc, ascq): (u8, u8)) -> Self {
        Self {
            key,
            asc,
            ascq,
            information: None,
            field_pointer: None,
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB.
    pub const fn invalid_cdb() -> Self {
        Self::new(SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB)
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
    pub const fn invalid_param() -> Self {
        Self::new(
            SenseKey::IllegalRequest,
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
        )
    }

    /// ILLEGAL REQUEST, with a field pointer into the CDB (SPC-4 4.5.2.4.2).
    pub const fn invalid_cdb_at(byte: u16, bit: Option<u8>) -> Self {
        let mut s = Self::invalid_cdb();
        s.field_pointer = Some((byte, bit, true));
        s
    }

    /// Fixed format sense data (response code 70h, SPC-4 4.5.3), 18 bytes.
    pub fn fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = u8::from(self.key);
        if let Some(info) = self.information {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&(info as u32).to_be_bytes());
        }
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some((byte, bit, cd)) = self.field_pointer {
            b[15] = 0x80 | if cd { 0x40 } else { 0 } | bit.map(|x| 0x08 | (x & 7)).unwrap_or(0);
            b[16..18].copy_from_slice(&byte.to_be_bytes());
        }
        b
    }

    /// Descriptor format sense data (response code 72h, SPC-4 4.5.2), with an
    /// information descriptor and a sense-key specific descriptor when set.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut b = vec![0x72, u8::from(self.key), self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            b.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some((byte, bit, cd)) = self.field_pointer {
            let f = 0x80 | if cd { 0x40 } else { 0 } | bit.map(|x| 0x08 | (x & 7)).unwrap_or(0);
            let [hi, lo] = byte.to_be_bytes();
            b.extend_from_slice(&[0x02, 0x06, 0, 0, f, hi, lo, 0]);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    /// Parses fixed or descriptor format sense data (for tests and logs).
    pub fn parse(buf: &[u8]) -> Result<Self> {
        check_len(buf, 1)?;
        match buf[0] & 0x7f {
            0x70 | 0x71 => {
                check_len(buf, 14)?;
                let information = (buf[0] & 0x80 != 0)
                    .then(|| u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as u64);
                Ok(Self {
                    key: SenseKey::from(buf[2]),
                    asc: buf[12],
                    ascq: buf[13],
                    information,
                    field_pointer: None,
                })
            }
            0x72 | 0x73 => {
                check_len(buf, 4)?;
                Ok(Self::new(SenseKey::from(buf[1]), (buf[2], buf[3])))
            }
            _ => Err(Error::Malformed("unknown sense response code")),
        }
    }
}

/// A read/write style CDB's addressing: LBA, transfer length in blocks and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RwCdb {
    pub lba: u64,
    pub blocks: u32,
    /// Force unit access.
    pub fua: bool,
    pub dpo: bool,
    /// RDPROTECT / WRPROTECT / VRPROTECT (bits 7..5 of byte 1).
    pub protect: u8,
    /// BYTCHK (VERIFY) field, bits 2..1 of byte 1.
    pub bytchk: u8,
}

impl RwCdb {
    /// Decodes the 6-, 10-, 12- and 16-byte forms by the opcode's group code.
    pub fn parse(cdb: &[u8]) -> Result<Self> {
        check_len(cdb, 1)?;
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let flags = |b1: u8| (b1 >> 5, b1 & 0x08 != 0, b1 & 0x10 != 0, (b1 >> 1) & 3);
        match cdb[0] >> 5 {
            0 => {
                check_len(cdb, 6)?;
                let lba = u32::from_be_bytes([0, cdb[1] & 0x1f, cdb[2], cdb[3]]) as u64;
                // A transfer length of 0 means 256 blocks for READ(6)/WRITE(6).
                let blocks = if cdb[4] == 0 { 256 } else { cdb[4] as u32 };
                Ok(Self {
                    lba,
                    blocks,
                    fua: false,
                    dpo: false,
                    protect: 0,
                    bytchk: 0,
                })
            }
            1 | 2 => {
                check_len(cdb, 10)?;
                let (protect, fua, dpo, bytchk) = flags(cdb[1]);
                Ok(Self {
                    lba: be32(&cdb[2..6]) as u64,
                    blocks: u16::from_be_bytes([cdb[7], cdb[8]]) as u32,
                    fua,
                    dpo,
                    protect,
                    bytchk,
                })
            }
            5 => {
                check_len(cdb, 12)?;
                let (protect, fua, dpo, bytchk) = flags(cdb[1]);
                Ok(Self {
                    lba: be32(&cdb[2..6]) as u64,
                    blocks: be32(&cdb[6..10]),
                    fua,
                    dpo,
                    protect,
                    bytchk,
                })
            }
            4 => {
                check_len(cdb, 16)?;
                let (protect, fua, dpo, bytchk) = flags(cdb[1]);
                let mut l = [0u8; 8];
                l.copy_from_slice(&cdb[2..10]);
                Ok(Self {
                    lba: u64::from_be_bytes(l),
                    blocks: be32(&cdb[10..14]),
                    fua,
                    dpo,
                    protect,
                    bytchk,
                })
            }
            _ => Err(Error::Malformed("not a read/write CDB group")),
        }
    }
}

/// The CDB length implied by an opcode's group code (SPC-4 4.2.5.1), if fixed.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_sense_layout() {
        let mut s = Sense::new(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY);
        s.information = Some(0x1234);
        let b = s.fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(b[2], 0x0e);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x1d, 0));
        assert_eq!(Sense::parse(&b).unwrap(), s);
    }

    #[test]
    fn descriptor_sense_layout() {
        let s = Sense::invalid_cdb_at(2, Some(7));
        let d = s.descriptor();
        assert_eq!(&d[..4], &[0x72, 0x05, 0x24, 0x00]);
        assert_eq!(d[7] as usize, d.len() - 8);
        assert_eq!(&d[8..16], &[0x02, 0x06, 0, 0, 0xcf, 0, 2, 0]);
        assert_eq!(Sense::parse(&d).unwrap().key, SenseKey::IllegalRequest);
    }

    #[test]
    fn rw_cdb_forms() {
        let r6 = RwCdb::parse(&[0x08, 0x1f, 0xff, 0xff, 0, 0]).unwrap();
        assert_eq!((r6.lba, r6.blocks), (0x1f_ffff, 256));
        let r10 = RwCdb::parse(&[0x2a, 0x08, 0, 0, 1, 0, 0, 0, 8, 0]).unwrap();
        assert_eq!((r10.lba, r10.blocks, r10.fua), (256, 8, true));
        let r12 = RwCdb::parse(&[0xa8, 0x60, 0, 0, 0, 9, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!((r12.lba, r12.blocks, r12.protect), (9, 256, 3));
        let mut c16 = [0u8; 16];
        c16[0] = 0x8f;
        c16[1] = 0x02;
        c16[2..10].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        c16[13] = 4;
        let v16 = RwCdb::parse(&c16).unwrap();
        assert_eq!((v16.lba, v16.blocks, v16.bytchk), (0x1_0000_0000, 4, 1));
        assert!(RwCdb::parse(&[0x28, 0, 0]).is_err());
        assert!(RwCdb::parse(&[0xc0; 16]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = RwCdb::parse(&data);
            let _ = Sense::parse(&data);
        }

        #[test]
        fn fixed_sense_round_trips(key in 0u8..16, a in any::<u8>(), q in any::<u8>(), info in proptest::option::of(any::<u32>())) {
            let mut s = Sense::new(SenseKey::from(key), (a, q));
            s.information = info.map(u64::from);
            prop_assert_eq!(Sense::parse(&s.fixed()).unwrap(), s);
        }
    }
}
