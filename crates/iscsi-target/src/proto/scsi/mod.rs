//! SCSI block device emulation (SPC-4, SBC-3, SANITIZE from SBC-4 5.30): executes one CDB with its Data-Out buffer
//! against a [`BlockDevice`] and returns status, sense and Data-In.
//!
//! This is a plain function of (CDB, data, device, LU state): the driver calls it
//! on a blocking thread and the iSCSI core only moves its results. Every CDB
//! field we do not implement is checked and answered with CHECK CONDITION,
//! ILLEGAL REQUEST and the ASC the standards name, never ignored.

pub mod pr;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use anyboot_images::{Allocation, BlockDevice};
use anyboot_wire::scsi::{asc, op, sa, status, RwCdb, Sense, SenseKey};

use pr::{Access, PrOutcome, Reservations};

/// Vendor identification in INQUIRY (8 bytes, SPC-4 6.6.2).
pub const VENDOR: &[u8; 8] = b"ANYBOOT ";
/// Product identification (16 bytes).
pub const PRODUCT: &[u8; 16] = b"VIRTUAL-DISK    ";
/// Product revision level (4 bytes).
pub const REVISION: &[u8; 4] = b"0001";

/// Largest transfer of one command, in bytes (VPD B0h MAXIMUM TRANSFER LENGTH).
pub const MAX_TRANSFER_BYTES: u64 = 8 << 20;
/// Largest COMPARE AND WRITE, in blocks.
pub const MAX_CAW_BLOCKS: u8 = 128;
/// Most UNMAP block descriptors in one command.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Most blocks one UNMAP or WRITE SAME may cover.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
/// Largest WRITE ATOMIC, in blocks.
pub const MAX_ATOMIC_BLOCKS: u32 = 256;
/// Most blocks one WRITE SAME may cover.
pub const MAX_WRITE_SAME_BLOCKS: u32 = 0xffff;

/// Mutable per-LU state shared by every session of the LU.
#[derive(Debug)]
pub struct LuState {
    pub reservations: Reservations,
    /// Caching mode page WCE (write-back cache enabled).
    pub wce: bool,
    /// Control mode page D_SENSE: descriptor format sense.
    pub d_sense: bool,
    /// Nexuses that sent PREVENT ALLOW MEDIUM REMOVAL with PREVENT set.
    pub prevent: HashSet<pr::Nexus>,
    /// Logged-in nexuses with their session count (a re-login of a nexus
    /// overlaps the end of its old session), for unit attentions.
    pub nexuses: HashMap<pr::Nexus, u32>,
    /// Pending unit attention (ASC, ASCQ) per nexus (SAM-5 5.14).
    pub unit_attention: HashMap<pr::Nexus, (u8, u8)>,
    /// A removable medium was ejected (START STOP UNIT with LOEJ).
    pub ejected: bool,
    /// Control mode page SWP: software write protect, set by MODE SELECT.
    pub swp: bool,
    /// Where the LU stands with SANITIZE (SBC-4 4.11).
    pub sanitize: SanitizeState,
}

/// Sanitize state of a logical unit (SBC-4 4.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SanitizeState {
    #[default]
    Idle,
    /// A sanitize operation is running: commands that touch user data get
    /// NOT READY, SANITIZE IN PROGRESS.
    Running,
    /// The last sanitize failed part way: commands that touch user data get
    /// MEDIUM ERROR, SANITIZE COMMAND FAILED until a sanitize succeeds, or
    /// until EXIT FAILURE MODE when the failed one had AUSE set.
    Failed { ause: bool },
}

impl LuState {
    /// A reset of the LU (LOGICAL UNIT RESET, target reset): SPC-2
    /// reservations and PREVENT state end, and every nexus, the resetting one
    /// included, gets a unit attention (as Linux LIO does; multipath
    /// initiators rely on seeing it on every path).
    pub fn reset(&mut self, what: (u8, u8)) {
        self.reservations.reset();
        self.prevent.clear();
        for n in self.nexuses.keys() {
            tracing::debug!(nexus = %n, ?what, "unit attention raised");
            self.unit_attention.insert(n.clone(), what);
        }
    }

    /// A session of nexus `n` starts: a new I_T nexus, so unit attentions
    /// left for an earlier session of the same name and ISID do not apply.
    pub fn nexus_joined(&mut self, n: &str) {
        *self.nexuses.entry(n.to_owned()).or_insert(0) += 1;
        self.unit_attention.remove(n);
        tracing::debug!(nexus = n, "nexus joined");
    }

    /// The nexus logged out or lost its connection.
    pub fn nexus_lost(&mut self, n: &str) {
        self.reservations.nexus_lost(n);
        self.prevent.remove(n);
        if let Some(c) = self.nexuses.get_mut(n) {
            *c -= 1;
            if *c == 0 {
                self.nexuses.remove(n);
                self.unit_attention.remove(n);
            }
        }
    }
}

impl Default for LuState {
    fn default() -> Self {
        Self {
            reservations: Reservations::default(),
            wce: true,
            d_sense: false,
            prevent: HashSet::new(),
            nexuses: HashMap::new(),
            unit_attention: HashMap::new(),
            ejected: false,
            swp: false,
            sanitize: SanitizeState::Idle,
        }
    }
}

/// What every session of a logical unit shares.
#[derive(Debug, Default)]
pub struct LuShared {
    /// Stable number for the NAA designator and serial (from target IQN + LUN).
    pub id: u64,
    /// Removable medium: RMB set, START STOP UNIT ejects and loads.
    pub removable: bool,
    pub state: Mutex<LuState>,
    /// Media access: plain reads and writes share it; COMPARE AND WRITE,
    /// ORWRITE and WRITE ATOMIC take it alone, so no command sees them half done.
    pub io: RwLock<()>,
}

/// A logical unit as one session sees it.
#[derive(Debug, Clone)]
pub struct Lu {
    pub lun: u16,
    pub device: Arc<dyn BlockDevice>,
    pub shared: Arc<LuShared>,
}

/// Who asks, and about which target (for INQUIRY page 83h and REPORT LUNS).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub nexus: &'a str,
    pub target_iqn: &'a str,
    /// Every LUN of the target, for REPORT LUNS.
    pub luns: &'a [u16],
}

/// Status, sense (already formatted) and Data-In of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
}

impl Response {
    pub fn good(data: Vec<u8>) -> Self {
        Self {
            status: status::GOOD,
            sense: Vec::new(),
            data,
        }
    }

    pub fn status(status: u8) -> Self {
        Self {
            status,
            sense: Vec::new(),
            data: Vec::new(),
        }
    }

    pub fn check(sense: Sense, descriptor: bool) -> Self {
        Self {
            status: status::CHECK_CONDITION,
            sense: if descriptor {
                sense.descriptor()
            } else {
                sense.fixed().to_vec()
            },
            data: Vec::new(),
        }
    }
}

/// A condition reported ahead of the command: REQUEST SENSE returns it as
/// its data (fixed or descriptor format as asked), any other command gets
/// CHECK CONDITION with it.
fn pending_sense(sense: Sense, cdb: &[u8; 16], d_sense: bool) -> Response {
    if cdb[0] == op::REQUEST_SENSE {
        let d = if cdb[1] & 1 != 0 {
            sense.descriptor()
        } else {
            sense.fixed().to_vec()
        };
        return Response::good(truncated(d, cdb[4] as usize));
    }
    Response::check(sense, d_sense)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

fn truncated(mut data: Vec<u8>, alloc: usize) -> Vec<u8> {
    data.truncate(alloc);
    data
}

/// Bytes of Data-Out a block-writing CDB implies, and whether any other
/// amount is an error (true) or just a residual (false), for the transport's
/// residual handling. None: not such a command, or undecodable.
pub fn data_out_len(cdb: &[u8; 16], block_size: u32) -> Option<(u64, bool)> {
    let bs = block_size as u64;
    match cdb[0] {
        op::WRITE_6
        | op::WRITE_10
        | op::WRITE_12
        | op::WRITE_16
        | op::WRITE_VERIFY_10
        | op::WRITE_VERIFY_12
        | op::WRITE_VERIFY_16 => RwCdb::parse(cdb)
            .ok()
            .map(|r| (r.blocks as u64 * bs, false)),
        op::COMPARE_AND_WRITE => Some((2 * cdb[13] as u64 * bs, true)),
        op::ORWRITE_16 => RwCdb::parse(cdb).ok().map(|r| (r.blocks as u64 * bs, true)),
        op::WRITE_ATOMIC_16 => Some((u16::from_be_bytes([cdb[12], cdb[13]]) as u64 * bs, true)),
        op::WRITE_SAME_10 => Some((bs, true)),
        // NDOB: no Data-Out at all.
        op::WRITE_SAME_16 => Some((if cdb[1] & 1 != 0 { 0 } else { bs }, true)),
        _ => None,
    }
}

/// Rewrites the TRANSFER LENGTH of a WRITE/WRITE AND VERIFY CDB to `blocks`
/// (no more than it had). False when the form cannot express it (WRITE(6)
/// reads 0 as 256).
pub fn truncate_transfer(cdb: &mut [u8; 16], blocks: u64) -> bool {
    match cdb[0] {
        op::WRITE_6 if blocks > 0 && blocks < 256 => {
            cdb[4] = blocks as u8;
            true
        }
        op::WRITE_10 | op::WRITE_VERIFY_10 => {
            cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
            true
        }
        op::WRITE_12 | op::WRITE_VERIFY_12 => {
            cdb[6..10].copy_from_slice(&(blocks as u32).to_be_bytes());
            true
        }
        op::WRITE_16 | op::WRITE_VERIFY_16 => {
            cdb[10..14].copy_from_slice(&(blocks as u32).to_be_bytes());
            true
        }
        _ => false,
    }
}

/// How a command accesses the medium, for reservation conflicts.
fn access_of(cdb: &[u8; 16]) -> (Access, bool) {
    // The bool says whether an SPC-2 reservation held by another nexus lets it through.
    match cdb[0] {
        op::INQUIRY
        | op::REPORT_LUNS
        | op::REQUEST_SENSE
        | op::RELEASE_6
        | op::RELEASE_10
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::MAINTENANCE_IN => (Access::None, true),
        op::TEST_UNIT_READY
        | op::READ_CAPACITY_10
        | op::MODE_SENSE_6
        | op::MODE_SENSE_10
        | op::RESERVE_6
        | op::RESERVE_10
        | op::START_STOP_UNIT
        | op::PREVENT_ALLOW => (Access::None, false),
        op::SERVICE_ACTION_IN_16 if cdb[1] & 0x1f == sa::READ_CAPACITY_16 => (Access::None, false),
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::PREFETCH_10
        | op::PREFETCH_16
        | op::SERVICE_ACTION_IN_16
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12 => (Access::Read, false),
        _ => (Access::Write, false),
    }
}

/// Executes one command. `lu` is `None` for a LUN the target does not have.
pub fn execute(lu: Option<&Lu>, ctx: &Context<'_>, cdb: &[u8; 16], data_out: &[u8]) -> Response {
    let Some(lu) = lu else {
        return no_lun(ctx, cdb);
    };
    let d_sense = lu.shared.state.lock().map(|s| s.d_sense).unwrap_or(false);
    // A pending unit attention is reported once, by the next command other
    // than INQUIRY and REPORT LUNS (SAM-5 5.14, SPC-4 5.12).
    if cdb[0] != op::INQUIRY && cdb[0] != op::REPORT_LUNS {
        let ua = lu
            .shared
            .state
            .lock()
            .ok()
            .and_then(|mut s| s.unit_attention.remove(ctx.nexus));
        if let Some(code) = ua {
            tracing::debug!(nexus = ctx.nexus, ?code, "unit attention reported");
            return pending_sense(Sense::new(SenseKey::UnitAttention, code), cdb, d_sense);
        }
    }
    // Reservation conflicts come before anything else (SPC-4 5.7.1).
    if cdb[0] != op::PERSISTENT_RESERVE_OUT && cdb[0] != op::PERSISTENT_RESERVE_IN {
        let (access, spc2_exempt) = access_of(cdb);
        let ok = lu
            .shared
            .state
            .lock()
            .map(|s| s.reservations.check(ctx.nexus, access, spc2_exempt))
            .unwrap_or(true);
        if !ok {
            return Response::status(status::RESERVATION_CONFLICT);
        }
    }
    // An ejected medium: commands that need it report MEDIUM NOT PRESENT.
    let ejected = lu.shared.state.lock().map(|s| s.ejected).unwrap_or(false);
    if ejected && needs_medium(cdb) {
        let s = Sense::new(SenseKey::NotReady, asc::MEDIUM_NOT_PRESENT);
        return Response::check(s, d_sense);
    }
    // A running or failed sanitize leaves only the commands of SBC-4 4.11.2
    // (allowed during sanitize) through; REQUEST SENSE reports the state.
    let sanitize = lu
        .shared
        .state
        .lock()
        .map(|s| s.sanitize)
        .unwrap_or_default();
    if let Some(s) = sanitize_sense(sanitize, cdb) {
        return pending_sense(s, cdb, d_sense);
    }
    let exec = Exec {
        lu,
        ctx,
        cdb,
        data_out,
    };
    match exec.run() {
        Ok(r) => r,
        Err(sense) => Response::check(sense, d_sense),
    }
}

/// The sense a command gets while the LU is in sanitize state `st`, if it is
/// refused. INQUIRY, REPORT LUNS and REPORT SUPPORTED OPERATION CODES run;
/// REQUEST SENSE returns the sense as data; after a failure SANITIZE may
/// run again (to retry, or EXIT FAILURE MODE).
fn sanitize_sense(st: SanitizeState, cdb: &[u8; 16]) -> Option<Sense> {
    let allowed = matches!(cdb[0], op::INQUIRY | op::REPORT_LUNS | op::MAINTENANCE_IN);
    match st {
        SanitizeState::Idle => None,
        _ if allowed => None,
        SanitizeState::Running => Some(Sense::new(SenseKey::NotReady, asc::SANITIZE_IN_PROGRESS)),
        SanitizeState::Failed { .. } if cdb[0] == op::SANITIZE => None,
        SanitizeState::Failed { .. } => Some(Sense::new(
            SenseKey::MediumError,
            asc::SANITIZE_COMMAND_FAILED,
        )),
    }
}

/// Commands that touch the medium (SBC-3 4.x "medium not present").
fn needs_medium(cdb: &[u8; 16]) -> bool {
    !matches!(
        cdb[0],
        op::INQUIRY
            | op::REPORT_LUNS
            | op::REQUEST_SENSE
            | op::START_STOP_UNIT
            | op::PREVENT_ALLOW
            | op::MODE_SENSE_6
            | op::MODE_SENSE_10
            | op::MODE_SELECT_6
            | op::MODE_SELECT_10
            | op::PERSISTENT_RESERVE_IN
            | op::PERSISTENT_RESERVE_OUT
            | op::RESERVE_6
            | op::RESERVE_10
            | op::RELEASE_6
            | op::RELEASE_10
            | op::MAINTENANCE_IN
    )
}

fn no_lun(ctx: &Context<'_>, cdb: &[u8; 16]) -> Response {
    match cdb[0] {
        op::INQUIRY if cdb[1] & 1 == 0 => {
            // Peripheral qualifier 3: no LU at this LUN (SPC-4 6.6.2).
            let mut d = standard_inquiry(false);
            d[0] = 0x7f;
            let alloc = be16(&cdb[3..5]) as usize;
            Response::good(truncated(d, alloc))
        }
        op::REPORT_LUNS => match report_luns(ctx, cdb) {
            Ok(d) => Response::good(d),
            Err(s) => Response::check(s, false),
        },
        op::REQUEST_SENSE => {
            let s = Sense::new(SenseKey::IllegalRequest, asc::LU_NOT_SUPPORTED);
            let alloc = cdb[4] as usize;
            Response::good(truncated(s.fixed().to_vec(), alloc))
        }
        _ => Response::check(
            Sense::new(SenseKey::IllegalRequest, asc::LU_NOT_SUPPORTED),
            false,
        ),
    }
}

fn report_luns(ctx: &Context<'_>, cdb: &[u8; 16]) -> Result<Vec<u8>, Sense> {
    let select = cdb[2];
    let alloc = be32(&cdb[6..10]) as usize;
    if alloc < 16 {
        return Err(Sense::invalid_cdb_at(6, None));
    }
    let luns: &[u16] = match select {
        0 | 2 => ctx.luns,
        // Well known LUNs only / administrative LUs: we have none.
        1 | 0x10 | 0x11 | 0x12 => &[],
        _ => return Err(Sense::invalid_cdb_at(2, None)),
    };
    let mut d = Vec::with_capacity(8 + luns.len() * 8);
    d.extend_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    let mut sorted = luns.to_vec();
    sorted.sort_unstable();
    for l in sorted {
        d.extend_from_slice(&anyboot_wire::iscsi::encode_lun(l));
    }
    Ok(truncated(d, alloc))
}

fn standard_inquiry(read_only: bool) -> Vec<u8> {
    let _ = read_only;
    let mut d = vec![0u8; 66];
    d[0] = 0x00; // direct access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(PRODUCT);
    d[32..36].copy_from_slice(REVISION);
    // Version descriptors (SPC-4 table 148 family): SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

struct Exec<'a> {
    lu: &'a Lu,
    ctx: &'a Context<'a>,
    cdb: &'a [u8; 16],
    data_out: &'a [u8],
}

type R = Result<Response, Sense>;

fn io_sense(e: anyboot_images::Error, write: bool) -> Sense {
    use anyboot_images::Error as E;
    match e {
        E::OutOfRange { .. } => Sense::new(SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE),
        E::ReadOnly => Sense::new(SenseKey::DataProtect, asc::WRITE_PROTECTED),
        E::NoSpace => Sense::new(SenseKey::DataProtect, asc::SPACE_ALLOCATION_FAILED),
        E::Unsupported(_) => Sense::invalid_cdb(),
        _ if write => Sense::new(SenseKey::MediumError, asc::WRITE_ERROR),
        _ => Sense::new(SenseKey::MediumError, asc::UNRECOVERED_READ_ERROR),
    }
}

impl Exec<'_> {
    fn dev(&self) -> &dyn BlockDevice {
        &*self.lu.device
    }
    fn bs(&self) -> u64 {
        self.dev().block_size() as u64
    }
    fn blocks(&self) -> u64 {
        self.dev().size() / self.bs()
    }
    fn state(&self) -> std::sync::MutexGuard<'_, LuState> {
        match self.lu.shared.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Shared media access (plain reads and writes).
    fn shared_io(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        match self.lu.shared.io.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Exclusive media access (read-modify-write commands).
    fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        match self.lu.shared.io.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks() => Ok(()),
            _ => Err(Sense::new(SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE)),
        }
    }

    /// Refuses writes to a read-only device, or while the control mode
    /// page's SWP bit is set (SPC-4 7.5.8).
    fn check_writable(&self) -> Result<(), Sense> {
        if self.dev().is_read_only() {
            Err(Sense::new(SenseKey::DataProtect, asc::WRITE_PROTECTED))
        } else if self.state().swp {
            Err(Sense::new(
                SenseKey::DataProtect,
                asc::SOFTWARE_WRITE_PROTECTED,
            ))
        } else {
            Ok(())
        }
    }

    fn run(&self) -> R {
        let c = self.cdb;
        match c[0] {
            op::TEST_UNIT_READY => Ok(Response::good(Vec::new())),
            op::REQUEST_SENSE => {
                // Autosense returns every error with its command, so there is
                // never pending sense: NO SENSE in the requested format.
                let s = Sense::new(SenseKey::NoSense, asc::NO_ADDITIONAL);
                let d = if c[1] & 1 != 0 {
                    s.descriptor()
                } else {
                    s.fixed().to_vec()
                };
                Ok(Response::good(truncated(d, c[4] as usize)))
            }
            op::INQUIRY => self.inquiry(),
            op::REPORT_LUNS => report_luns(self.ctx, c).map(Response::good),
            op::READ_CAPACITY_10 => {
                if c[8] & 1 == 0 && be32(&c[2..6]) != 0 {
                    return Err(Sense::invalid_cdb_at(2, None));
                }
                let last = self.blocks().saturating_sub(1).min(0xffff_ffff) as u32;
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&(self.bs() as u32).to_be_bytes());
                Ok(Response::good(d))
            }
            op::SERVICE_ACTION_IN_16 => match c[1] & 0x1f {
                sa::READ_CAPACITY_16 => self.read_capacity_16(),
                sa::GET_LBA_STATUS => self.get_lba_status(),
                _ => Err(Sense::invalid_cdb_at(1, Some(4))),
            },
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => self.read(),
            op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_VERIFY_10
            | op::WRITE_VERIFY_12
            | op::WRITE_VERIFY_16 => self.write(),
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => self.verify(),
            op::ORWRITE_16 => self.orwrite(),
            op::WRITE_ATOMIC_16 => self.write_atomic(),
            op::PREFETCH_10 | op::PREFETCH_16 => {
                let (lba, blocks) = if c[0] == op::PREFETCH_10 {
                    (be32(&c[2..6]) as u64, be16(&c[7..9]) as u64)
                } else {
                    (be64(&c[2..10]), be32(&c[10..14]) as u64)
                };
                self.check_range(lba, blocks)?;
                // Nothing to prefetch into: the page cache does it. CONDITION MET
                // would promise residency we cannot check, so GOOD.
                Ok(Response::good(Vec::new()))
            }
            op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
                let (lba, blocks) = if c[0] == op::SYNCHRONIZE_CACHE_10 {
                    (be32(&c[2..6]) as u64, be16(&c[7..9]) as u64)
                } else {
                    (be64(&c[2..10]), be32(&c[10..14]) as u64)
                };
                self.check_range(lba, blocks)?;
                self.dev().flush().map_err(|e| io_sense(e, true))?;
                Ok(Response::good(Vec::new()))
            }
            op::WRITE_SAME_10 | op::WRITE_SAME_16 => self.write_same(),
            op::UNMAP => self.unmap(),
            op::SANITIZE => self.sanitize(),
            op::COMPARE_AND_WRITE => self.compare_and_write(),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => self.mode_sense(),
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => self.mode_select(),
            op::START_STOP_UNIT => {
                let loej = c[4] & 0x02 != 0;
                let start = c[4] & 0x01 != 0;
                let power_condition = c[4] >> 4;
                // Power conditions other than START_VALID (0) change nothing
                // for a virtual disk, and LOEJ only matters for removable media.
                if loej && power_condition == 0 {
                    let mut st = self.state();
                    // Neither eject nor load while someone prevents removal.
                    if !st.prevent.is_empty() {
                        return Err(Sense::new(
                            SenseKey::IllegalRequest,
                            asc::MEDIUM_REMOVAL_PREVENTED,
                        ));
                    }
                    if self.lu.shared.removable {
                        st.ejected = !start;
                    }
                }
                Ok(Response::good(Vec::new()))
            }
            op::PREVENT_ALLOW => {
                let mut st = self.state();
                match c[4] & 3 {
                    0 => {
                        st.prevent.remove(self.ctx.nexus);
                    }
                    1 => {
                        st.prevent.insert(self.ctx.nexus.to_owned());
                    }
                    _ => return Err(Sense::invalid_cdb_at(4, Some(1))),
                }
                Ok(Response::good(Vec::new()))
            }
            op::MAINTENANCE_IN if c[1] & 0x1f == sa::REPORT_SUPPORTED_OPCODES => {
                self.report_opcodes()
            }
            op::PERSISTENT_RESERVE_IN => {
                let alloc = be16(&c[7..9]) as usize;
                let d = self.state().reservations.pr_in(c[1] & 0x1f)?;
                Ok(Response::good(truncated(d, alloc)))
            }
            op::PERSISTENT_RESERVE_OUT => {
                let len = be32(&c[5..9]) as usize;
                let params = &self.data_out[..len.min(self.data_out.len())];
                if len != 24 {
                    return Err(Sense::new(
                        SenseKey::IllegalRequest,
                        asc::PARAMETER_LIST_LENGTH_ERROR,
                    ));
                }
                let scope = c[2] >> 4;
                if scope != 0 && matches!(c[1] & 0x1f, 1 | 2 | 4 | 5) {
                    return Err(Sense::invalid_cdb_at(2, Some(7)));
                }
                let mut st = self.state();
                let o = st
                    .reservations
                    .pr_out(self.ctx.nexus, c[1] & 0x1f, c[2] & 0x0f, params);
                // Registrants that lost their registration or reservation
                // learn it through a unit attention (SPC-4 5.7.10, 5.7.11).
                let owed = std::mem::take(&mut st.reservations.owed_ua);
                for (n, code) in owed {
                    st.unit_attention.insert(n, code);
                }
                drop(st);
                pr_response(o)
            }
            op::RESERVE_6 | op::RESERVE_10 => {
                // Third-party and extent reservations are obsolete.
                if c[1] & 0x13 != 0 {
                    return Err(Sense::invalid_cdb_at(1, None));
                }
                let o = self.state().reservations.reserve_legacy(self.ctx.nexus);
                pr_response(o)
            }
            op::RELEASE_6 | op::RELEASE_10 => {
                if c[1] & 0x13 != 0 {
                    return Err(Sense::invalid_cdb_at(1, None));
                }
                let o = self.state().reservations.release_legacy(self.ctx.nexus);
                pr_response(o)
            }
            op::READ_DEFECT_DATA_10 => {
                // No defects; the list format asked for is echoed.
                let alloc = be16(&c[7..9]) as usize;
                let d = vec![0, c[2] & 0x1f, 0, 0];
                Ok(Response::good(truncated(d, alloc)))
            }
            op::READ_DEFECT_DATA_12 => {
                let alloc = be32(&c[6..10]) as usize;
                let d = vec![0, c[1] & 0x1f, 0, 0, 0, 0, 0, 0];
                Ok(Response::good(truncated(d, alloc)))
            }
            _ => Err(Sense::new(SenseKey::IllegalRequest, asc::INVALID_OPCODE)),
        }
    }

    fn inquiry(&self) -> R {
        let c = self.cdb;
        let alloc = be16(&c[3..5]) as usize;
        if c[1] & 1 == 0 {
            if c[2] != 0 {
                return Err(Sense::invalid_cdb_at(2, None));
            }
            let mut d = standard_inquiry(self.dev().is_read_only());
            if self.lu.shared.removable {
                d[1] |= 0x80;
            }
            return Ok(Response::good(truncated(d, alloc)));
        }
        let page = c[2];
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2],
            0x80 => self.serial().into_bytes(),
            0x83 => self.designators(),
            0xb0 => {
                let mut b = vec![0u8; 0x3c];
                // WSNZ stays 0: a WRITE SAME of zero blocks runs to the end
                // of the medium (if that is within MAXIMUM WRITE SAME LENGTH).
                b[1] = MAX_CAW_BLOCKS;
                let bs = self.bs();
                // OPTIMAL TRANSFER LENGTH GRANULARITY: 4 KiB.
                b[2..4].copy_from_slice(&((4096 / bs).max(1) as u16).to_be_bytes());
                b[4..8].copy_from_slice(&((MAX_TRANSFER_BYTES / bs) as u32).to_be_bytes());
                b[8..12].copy_from_slice(&((1 << 20) / bs as u32).to_be_bytes());
                b[12..16].copy_from_slice(&((MAX_TRANSFER_BYTES / bs) as u32).to_be_bytes());
                b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                // OPTIMAL UNMAP GRANULARITY: 4 KiB (hole punching granularity).
                b[24..28].copy_from_slice(&((4096 / bs).max(1) as u32).to_be_bytes());
                b[32..40].copy_from_slice(&(MAX_WRITE_SAME_BLOCKS as u64).to_be_bytes());
                // MAXIMUM ATOMIC TRANSFER LENGTH; alignment and granularity 0.
                b[40..44].copy_from_slice(&MAX_ATOMIC_BLOCKS.to_be_bytes());
                b
            }
            0xb1 => {
                let mut b = vec![0u8; 0x3c];
                // MEDIUM ROTATION RATE 1: non-rotating medium.
                b[0..2].copy_from_slice(&1u16.to_be_bytes());
                // WABEREQ 01b: after SANITIZE BLOCK ERASE reads complete with
                // GOOD (the blocks read as zeroes). WACEREQ stays 00b: there
                // is no CRYPTO ERASE (no media encryption to forget a key of).
                b[3] = 0x40;
                b
            }
            0xb2 => {
                // Threshold exponent 0; LBPU (UNMAP), LBPWS, LBPWS10; LBPRZ
                // (unmapped blocks read as zeroes); provisioning type 2 (thin).
                vec![0, 0xe0 | 0x04, 0x02, 0]
            }
            _ => return Err(Sense::invalid_cdb_at(2, None)),
        };
        let mut d = vec![0x00, page];
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&body);
        Ok(Response::good(truncated(d, alloc)))
    }

    fn serial(&self) -> String {
        format!("{:016x}", self.lu.shared.id)
    }

    /// Device identification VPD page 83h (SPC-4 7.8.6).
    fn designators(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push = |code_set: u8, piv_assoc_type: u8, v: &[u8]| {
            out.extend_from_slice(&[code_set, piv_assoc_type, 0, v.len() as u8]);
            out.extend_from_slice(v);
        };
        // NAA IEEE Registered Extended (6h) with a locally made "OUI".
        let id = self.lu.shared.id;
        let mut naa = [0u8; 16];
        naa[0] = 0x60 | 0x0a; // NAA 6, OUI starts 0xa... (locally administered)
        naa[1..4].copy_from_slice(&[0xb0, 0x07, 0x00]);
        naa[4..12].copy_from_slice(&id.to_be_bytes());
        naa[12..16].copy_from_slice(&(self.lu.lun as u32).to_be_bytes());
        push(0x01, 0x03, &naa);
        // T10 vendor ID: vendor + serial.
        let mut t10 = VENDOR.to_vec();
        t10.extend_from_slice(self.serial().as_bytes());
        push(0x02, 0x01, &t10);
        // SCSI name string of the target port (association 1, PIV, iSCSI 5).
        let mut name = format!("{},t,0x0001", self.ctx.target_iqn).into_bytes();
        name.push(0);
        while name.len() % 4 != 0 {
            name.push(0);
        }
        push(0x53, 0x98, &name);
        // Relative target port 1.
        push(0x51, 0x94, &[0, 0, 0, 1]);
        // SCSI name string of the target device (association 2).
        let mut dev = self.ctx.target_iqn.as_bytes().to_vec();
        dev.push(0);
        while dev.len() % 4 != 0 {
            dev.push(0);
        }
        push(0x53, 0xa8, &dev);
        out
    }

    fn read_capacity_16(&self) -> R {
        let alloc = be32(&self.cdb[10..14]) as usize;
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&(self.bs() as u32).to_be_bytes());
        // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT stays 0: the image has
        // no physical blocks, and holes are tracked per logical block.
        // LBPME (thin provisioning, UNMAP works), LBPRZ (unmapped reads zero).
        d[14] = 0x80 | 0x40;
        Ok(Response::good(truncated(d, alloc)))
    }

    fn get_lba_status(&self) -> R {
        let c = self.cdb;
        let lba = be64(&c[2..10]);
        let alloc = be32(&c[10..14]) as usize;
        if lba >= self.blocks() {
            return Err(Sense::new(SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE));
        }
        let bs = self.bs();
        // Report up to 64 MiB or 128 descriptors, whichever comes first.
        let len = ((self.blocks() - lba) * bs).min(64 << 20);
        let extents = self
            .dev()
            .block_status(lba * bs, len)
            .map_err(|e| io_sense(e, false))?;
        let mut descs: Vec<(u64, u64, u8)> = Vec::new();
        let mut at = lba;
        for e in extents {
            let n = e.len / bs;
            if n == 0 {
                continue;
            }
            let st = match e.state {
                Allocation::Hole => 1,
                Allocation::Data | Allocation::Zero => 0,
            };
            match descs.last_mut() {
                Some(last) if last.2 == st => last.1 += n,
                _ => descs.push((at, n, st)),
            }
            at += n;
            if descs.len() >= 128 {
                break;
            }
        }
        if descs.is_empty() {
            descs.push((lba, 1, 0));
        }
        let mut d = Vec::with_capacity(8 + 16 * descs.len());
        d.extend_from_slice(&((4 + 16 * descs.len()) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for (l, n, st) in descs {
            d.extend_from_slice(&l.to_be_bytes());
            d.extend_from_slice(&(n.min(u32::MAX as u64) as u32).to_be_bytes());
            d.extend_from_slice(&[st, 0, 0, 0]);
        }
        Ok(Response::good(truncated(d, alloc)))
    }

    fn rw(&self) -> Result<RwCdb, Sense> {
        RwCdb::parse(self.cdb).map_err(|_| Sense::invalid_cdb())
    }

    fn read(&self) -> R {
        let r = self.rw()?;
        if r.protect != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(7)));
        }
        self.check_range(r.lba, r.blocks as u64)?;
        let len = r.blocks as u64 * self.bs();
        if len > MAX_TRANSFER_BYTES {
            return Err(Sense::invalid_cdb());
        }
        let mut buf = vec![0u8; len as usize];
        let _io = self.shared_io();
        self.dev()
            .read_at(&mut buf, r.lba * self.bs())
            .map_err(|e| io_sense(e, false))?;
        Ok(Response::good(buf))
    }

    fn write(&self) -> R {
        let r = self.rw()?;
        if r.protect != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(7)));
        }
        self.check_range(r.lba, r.blocks as u64)?;
        self.check_writable()?;
        let len = r.blocks as u64 * self.bs();
        if len > MAX_TRANSFER_BYTES {
            return Err(Sense::invalid_cdb());
        }
        // The transport refuses commands whose Data-Out falls short.
        let data = self
            .data_out
            .get(..len as usize)
            .ok_or(Sense::new(SenseKey::IllegalRequest, (0x0e, 0x03)))?;
        // FUA, or a disabled write cache, makes the write durable before GOOD.
        let fua = r.fua || !self.state().wce;
        let _io = self.shared_io();
        self.dev()
            .write_at(data, r.lba * self.bs(), fua)
            .map_err(|e| io_sense(e, true))?;
        Ok(Response::good(Vec::new()))
    }

    /// ORWRITE(16) (SBC-3 5.9): medium := medium OR data, atomically.
    fn orwrite(&self) -> R {
        let r = self.rw()?;
        if r.protect != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(7)));
        }
        self.check_range(r.lba, r.blocks as u64)?;
        if r.blocks == 0 {
            return Ok(Response::good(Vec::new()));
        }
        self.check_writable()?;
        let len = r.blocks as usize * self.bs() as usize;
        if len as u64 > MAX_TRANSFER_BYTES {
            return Err(Sense::invalid_cdb());
        }
        let data = self
            .data_out
            .get(..len)
            .ok_or(Sense::new(SenseKey::IllegalRequest, (0x0e, 0x03)))?;
        let _excl = self.exclusive();
        let mut buf = vec![0u8; len];
        self.dev()
            .read_at(&mut buf, r.lba * self.bs())
            .map_err(|e| io_sense(e, false))?;
        buf.iter_mut().zip(data).for_each(|(m, d)| *m |= d);
        let fua = r.fua || !self.state().wce;
        self.dev()
            .write_at(&buf, r.lba * self.bs(), fua)
            .map_err(|e| io_sense(e, true))?;
        Ok(Response::good(Vec::new()))
    }

    /// WRITE ATOMIC(16) (SBC-4 5.48): a write no other command sees half done.
    fn write_atomic(&self) -> R {
        let c = self.cdb;
        if c[1] >> 5 != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(7)));
        }
        let lba = be64(&c[2..10]);
        let boundary = be16(&c[10..12]);
        let blocks = be16(&c[12..14]) as u64;
        if boundary != 0 {
            // MAXIMUM ATOMIC BOUNDARY SIZE is 0.
            return Err(Sense::invalid_cdb_at(10, None));
        }
        self.check_range(lba, blocks)?;
        if blocks > MAX_ATOMIC_BLOCKS as u64 {
            return Err(Sense::invalid_cdb_at(12, None));
        }
        self.check_writable()?;
        if blocks == 0 {
            return Ok(Response::good(Vec::new()));
        }
        let len = (blocks * self.bs()) as usize;
        let data = self
            .data_out
            .get(..len)
            .ok_or(Sense::new(SenseKey::IllegalRequest, (0x0e, 0x03)))?;
        let fua = c[1] & 0x08 != 0 || !self.state().wce;
        let _excl = self.exclusive();
        self.dev()
            .write_at(data, lba * self.bs(), fua)
            .map_err(|e| io_sense(e, true))?;
        Ok(Response::good(Vec::new()))
    }

    fn verify(&self) -> R {
        let r = self.rw()?;
        if r.protect != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(7)));
        }
        self.check_range(r.lba, r.blocks as u64)?;
        let bs = self.bs() as usize;
        let len = r.blocks as usize * bs;
        if len as u64 > MAX_TRANSFER_BYTES {
            return Err(Sense::invalid_cdb());
        }
        let expect: Vec<u8> = match r.bytchk {
            0 => return Ok(Response::good(Vec::new())),
            1 => self
                .data_out
                .get(..len)
                .ok_or(Sense::new(SenseKey::IllegalRequest, (0x0e, 0x03)))?
                .to_vec(),
            3 => {
                let one = self
                    .data_out
                    .get(..bs)
                    .ok_or(Sense::new(SenseKey::IllegalRequest, (0x0e, 0x03)))?;
                one.repeat(r.blocks as usize)
            }
            _ => return Err(Sense::invalid_cdb_at(1, Some(2))),
        };
        let mut buf = vec![0u8; len];
        let _io = self.shared_io();
        self.dev()
            .read_at(&mut buf, r.lba * self.bs())
            .map_err(|e| io_sense(e, false))?;
        if let Some(i) = buf.iter().zip(&expect).position(|(a, b)| a != b) {
            let mut s = Sense::new(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY);
            s.information = Some(i as u64);
            return Err(s);
        }
        Ok(Response::good(Vec::new()))
    }

    fn compare_and_write(&self) -> R {
        let c = self.cdb;
        if c[1] >> 5 != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(7)));
        }
        let lba = be64(&c[2..10]);
        let n = c[13];
        if n > MAX_CAW_BLOCKS {
            return Err(Sense::invalid_cdb_at(13, None));
        }
        self.check_range(lba, n as u64)?;
        if n == 0 {
            // Nothing to compare; Data-Out for zero blocks contradicts the CDB.
            if !self.data_out.is_empty() {
                return Err(Sense::invalid_cdb_at(13, None));
            }
            return Ok(Response::good(Vec::new()));
        }
        self.check_writable()?;
        let len = n as usize * self.bs() as usize;
        let data = self
            .data_out
            .get(..2 * len)
            .ok_or(Sense::new(SenseKey::IllegalRequest, (0x0e, 0x03)))?;
        let (verify, write) = data.split_at(len);
        let _excl = self.exclusive();
        let mut buf = vec![0u8; len];
        self.dev()
            .read_at(&mut buf, lba * self.bs())
            .map_err(|e| io_sense(e, false))?;
        if let Some(i) = buf.iter().zip(verify).position(|(a, b)| a != b) {
            let mut s = Sense::new(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY);
            s.information = Some(i as u64);
            return Err(s);
        }
        let fua = c[1] & 0x08 != 0 || !self.state().wce;
        self.dev()
            .write_at(&write[..len.min(write.len())], lba * self.bs(), fua)
            .map_err(|e| io_sense(e, true))?;
        Ok(Response::good(Vec::new()))
    }

    fn write_same(&self) -> R {
        let c = self.cdb;
        let ten = c[0] == op::WRITE_SAME_10;
        let (lba, blocks) = if ten {
            (be32(&c[2..6]) as u64, be16(&c[7..9]) as u64)
        } else {
            (be64(&c[2..10]), be32(&c[10..14]) as u64)
        };
        let wrprotect = c[1] >> 5;
        let anchor = c[1] & 0x10 != 0;
        let unmap = c[1] & 0x08 != 0;
        let ndob = !ten && c[1] & 0x01 != 0;
        if wrprotect != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(7)));
        }
        if anchor {
            // ANC_SUP is 0 in VPD B2h.
            return Err(Sense::invalid_cdb_at(1, Some(4)));
        }
        // LBDATA / PBDATA (obsolete) are not supported.
        if c[1] & 0x06 != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(2)));
        }
        self.check_range(lba, blocks)?;
        // Zero blocks: to the end of the medium (WSNZ is 0 in VPD B0h).
        let blocks = if blocks == 0 {
            self.blocks().saturating_sub(lba)
        } else {
            blocks
        };
        if blocks > MAX_WRITE_SAME_BLOCKS as u64 {
            return Err(Sense::invalid_cdb_at(if ten { 7 } else { 10 }, None));
        }
        self.check_writable()?;
        let bs = self.bs() as usize;
        let block: Vec<u8> = if ndob {
            vec![0u8; bs]
        } else {
            self.data_out
                .get(..bs)
                .ok_or(Sense::new(SenseKey::IllegalRequest, (0x0e, 0x03)))?
                .to_vec()
        };
        let off = lba * bs as u64;
        let len = blocks * bs as u64;
        let dev = self.dev();
        let _io = self.shared_io();
        // UNMAP set: the blocks are deallocated whatever the data says; with
        // LBPRZ they then read as zeroes (SBC-3 5.42, 4.7.3.4).
        if unmap || block.iter().all(|&b| b == 0) {
            dev.write_zeroes(off, len, unmap)
                .map_err(|e| io_sense(e, true))?;
        } else {
            // Repeat the block in 1 MiB chunks.
            let per = ((1 << 20) / bs).max(1) as u64;
            let chunk = block.repeat(per as usize);
            let mut done = 0u64;
            while done < blocks {
                let n = (blocks - done).min(per);
                dev.write_at(&chunk[..(n as usize) * bs], off + done * bs as u64, false)
                    .map_err(|e| io_sense(e, true))?;
                done += n;
            }
        }
        if !self.state().wce {
            dev.flush().map_err(|e| io_sense(e, true))?;
        }
        Ok(Response::good(Vec::new()))
    }

    fn unmap(&self) -> R {
        let c = self.cdb;
        if c[1] & 0x01 != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(0)));
        }
        let plen = be16(&c[7..9]) as usize;
        if plen == 0 {
            return Ok(Response::good(Vec::new()));
        }
        if plen < 8 || self.data_out.len() < plen {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        }
        self.check_writable()?;
        let p = &self.data_out[..plen];
        let dlen = (be16(&p[2..4]) as usize).min(plen - 8);
        let n = dlen / 16;
        if n as u32 > MAX_UNMAP_DESCRIPTORS {
            return Err(Sense::invalid_param());
        }
        let mut ranges = Vec::with_capacity(n);
        for i in 0..n {
            let d = &p[8 + 16 * i..24 + 16 * i];
            let (lba, blocks) = (be64(&d[0..8]), be32(&d[8..12]) as u64);
            self.check_range(lba, blocks)?;
            if blocks > MAX_UNMAP_BLOCKS as u64 {
                return Err(Sense::invalid_param());
            }
            ranges.push((lba, blocks));
        }
        let bs = self.bs();
        let _io = self.shared_io();
        for (lba, blocks) in ranges {
            if blocks > 0 {
                self.dev()
                    .trim(lba * bs, blocks * bs)
                    .map_err(|e| io_sense(e, true))?;
            }
        }
        Ok(Response::good(Vec::new()))
    }

    /// SANITIZE (SBC-4 5.30): OVERWRITE, BLOCK ERASE and EXIT FAILURE MODE.
    ///
    /// The operation runs to its end before the command completes, whatever
    /// IMMED says: status comes after the medium is sanitized, not as soon as
    /// the CDB and parameters are checked. Other commands arriving meanwhile
    /// (other sessions, or this one's queue) get NOT READY, SANITIZE IN
    /// PROGRESS; the issuing client never sees that window.
    fn sanitize(&self) -> R {
        let c = self.cdb;
        let ause = c[1] & 0x20 != 0;
        let action = c[1] & 0x1f;
        if c[1] & 0x40 != 0 {
            return Err(Sense::invalid_cdb_at(1, Some(6)));
        }
        if let Some(i) = (2..7).find(|&i| c[i] != 0) {
            return Err(Sense::invalid_cdb_at(i as u16, None));
        }
        let plen = be16(&c[7..9]) as usize;
        let bs = self.bs() as usize;
        // PARAMETER LIST LENGTH requirements of each service action.
        let plen_ok = match action {
            sa::SANITIZE_OVERWRITE => plen > 4 && plen <= bs + 4,
            sa::SANITIZE_BLOCK_ERASE | sa::SANITIZE_EXIT_FAILURE_MODE => plen == 0,
            // CRYPTO ERASE included: not supported.
            _ => return Err(Sense::invalid_cdb_at(1, Some(4))),
        };
        if !plen_ok {
            return Err(Sense::invalid_cdb_at(7, None));
        }
        if action == sa::SANITIZE_EXIT_FAILURE_MODE {
            let mut st = self.state();
            return match st.sanitize {
                // Nothing failed: nothing to exit.
                SanitizeState::Idle | SanitizeState::Running => Ok(Response::good(Vec::new())),
                SanitizeState::Failed { ause: true } => {
                    st.sanitize = SanitizeState::Idle;
                    Ok(Response::good(Vec::new()))
                }
                // A failed sanitize without AUSE must be redone, not exited.
                SanitizeState::Failed { ause: false } => Err(Sense::invalid_cdb_at(1, Some(4))),
            };
        }
        let overwrite = if action == sa::SANITIZE_OVERWRITE {
            let p = self.data_out.get(..plen).ok_or(Sense::new(
                SenseKey::IllegalRequest,
                asc::PARAMETER_LIST_LENGTH_ERROR,
            ))?;
            Some(parse_overwrite(p, bs)?)
        } else {
            None
        };
        self.check_writable()?;
        {
            let mut st = self.state();
            if st.sanitize == SanitizeState::Running {
                return Err(Sense::new(SenseKey::NotReady, asc::SANITIZE_IN_PROGRESS));
            }
            st.sanitize = SanitizeState::Running;
        }
        // Leaves Failed behind unless the operation completes (also on panic).
        let mut run = SanitizeRun {
            state: &self.lu.shared.state,
            ause,
            ok: false,
        };
        // Commands already past the sanitize check finish first; new ones
        // are refused until the state changes.
        let _excl = self.exclusive();
        let dev = self.dev();
        let size = self.blocks() * bs as u64;
        let res = match &overwrite {
            Some(o) => self.overwrite_all(o, size),
            // LBPRZ: unmapped blocks read as zeroes, so trimming erases and
            // leaves every LBA deallocated.
            None => dev.write_zeroes(0, size, true),
        }
        // Sanitized includes the caches.
        .and_then(|()| dev.flush());
        match res {
            Ok(()) => {
                run.ok = true;
                Ok(Response::good(Vec::new()))
            }
            Err(e) => {
                tracing::warn!(lun = self.lu.lun, error = %e, "sanitize failed");
                Err(Sense::new(
                    SenseKey::MediumError,
                    asc::SANITIZE_COMMAND_FAILED,
                ))
            }
        }
    }

    /// Writes the overwrite passes over the whole medium, 1 MiB at a time.
    fn overwrite_all(&self, o: &Overwrite, size: u64) -> anyboot_images::Result<()> {
        let bs = self.bs() as usize;
        // The pattern repeats to fill each block, starting afresh at every
        // block boundary.
        let block: Vec<u8> = o.pattern.iter().copied().cycle().take(bs).collect();
        let per = ((1 << 20) / bs).max(1);
        let plain = block.repeat(per);
        let inverted: Vec<u8> = if o.invert {
            plain.iter().map(|b| !b).collect()
        } else {
            Vec::new()
        };
        for pass in 0..o.count {
            // With INVERT the passes alternate, and the first is chosen so
            // the last writes the pattern itself (SBC-4 5.30.2.2).
            let chunk = if o.invert && (o.count - pass) % 2 == 0 {
                &inverted
            } else {
                &plain
            };
            let mut off = 0u64;
            while off < size {
                let n = (size - off).min(chunk.len() as u64) as usize;
                self.dev().write_at(&chunk[..n], off, false)?;
                off += n as u64;
            }
        }
        Ok(())
    }

    /// One mode page in the form asked for by the page control field.
    fn mode_page(&self, page: u8, pc: u8) -> Option<Vec<u8>> {
        let st = self.state();
        match page {
            0x08 => {
                let mut p = vec![0u8; 20];
                p[0] = 0x08;
                p[1] = 0x12;
                p[2] = match pc {
                    0 => {
                        if st.wce {
                            0x04
                        } else {
                            0
                        }
                    }
                    1 => 0x04,
                    _ => 0x04,
                };
                Some(p)
            }
            0x0a => {
                let mut p = vec![0u8; 12];
                p[0] = 0x0a;
                p[1] = 0x0a;
                p[2] = match pc {
                    0 if st.d_sense => 0x04,
                    1 => 0x04,
                    _ => 0,
                };
                // SWP (byte 4 bit 3) is changeable; current value from the state.
                p[4] = match pc {
                    0 if st.swp => 0x08,
                    1 => 0x08,
                    _ => 0,
                };
                if pc != 1 {
                    // Unrestricted reordering; TAS: aborted tasks report TASK ABORTED.
                    p[3] = 0x10;
                    p[5] = 0x40;
                    p[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
                }
                Some(p)
            }
            0x1c => {
                let mut p = vec![0u8; 12];
                p[0] = 0x1c;
                p[1] = 0x0a;
                if pc != 1 {
                    // DEXCPT: no informational exceptions are ever reported.
                    p[2] = 0x08;
                }
                Some(p)
            }
            _ => None,
        }
    }

    fn mode_sense(&self) -> R {
        let c = self.cdb;
        let six = c[0] == op::MODE_SENSE_6;
        let dbd = c[1] & 0x08 != 0;
        let llbaa = !six && c[1] & 0x10 != 0;
        let pc = c[2] >> 6;
        let page = c[2] & 0x3f;
        let subpage = c[3];
        let alloc = if six {
            c[4] as usize
        } else {
            be16(&c[7..9]) as usize
        };
        if pc == 3 {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                asc::SAVING_PARAMETERS_NOT_SUPPORTED,
            ));
        }
        let mut pages = Vec::new();
        match (page, subpage) {
            (0x3f, 0x00 | 0xff) => {
                for p in [0x08, 0x0a, 0x1c] {
                    pages.extend(self.mode_page(p, pc).unwrap_or_default());
                }
            }
            (p, 0) => match self.mode_page(p, pc) {
                Some(v) => pages.extend(v),
                None => return Err(Sense::invalid_cdb_at(2, Some(5))),
            },
            _ => return Err(Sense::invalid_cdb_at(3, None)),
        }
        let mut bd = Vec::new();
        if !dbd {
            let blocks = self.blocks();
            if llbaa {
                bd.extend_from_slice(&blocks.to_be_bytes());
                bd.extend_from_slice(&[0; 4]);
                bd.extend_from_slice(&(self.bs() as u32).to_be_bytes());
            } else {
                bd.extend_from_slice(&(blocks.min(0xffff_ffff) as u32).to_be_bytes());
                bd.push(0);
                bd.extend_from_slice(&(self.bs() as u32).to_be_bytes()[1..]);
            }
        }
        // WP when read-only or software write protected; DPOFUA: DPO and
        // FUA are supported.
        let wp = self.dev().is_read_only() || self.state().swp;
        let dsp = if wp { 0x80 } else { 0 } | 0x10;
        let mut d = Vec::new();
        if six {
            let len = 3 + bd.len() + pages.len();
            d.extend_from_slice(&[len.min(255) as u8, 0, dsp, bd.len() as u8]);
        } else {
            let len = 6 + bd.len() + pages.len();
            d.extend_from_slice(&(len as u16).to_be_bytes());
            d.extend_from_slice(&[0, dsp, if llbaa && !dbd { 1 } else { 0 }, 0]);
            d.extend_from_slice(&(bd.len() as u16).to_be_bytes());
        }
        d.extend_from_slice(&bd);
        d.extend_from_slice(&pages);
        Ok(Response::good(truncated(d, alloc)))
    }

    fn mode_select(&self) -> R {
        let c = self.cdb;
        let six = c[0] == op::MODE_SELECT_6;
        if c[1] & 0x01 != 0 {
            // SP: parameters cannot be saved.
            return Err(Sense::invalid_cdb_at(1, Some(0)));
        }
        let plen = if six {
            c[4] as usize
        } else {
            be16(&c[7..9]) as usize
        };
        if plen == 0 {
            return Ok(Response::good(Vec::new()));
        }
        let p = self.data_out.get(..plen).ok_or(Sense::new(
            SenseKey::IllegalRequest,
            asc::PARAMETER_LIST_LENGTH_ERROR,
        ))?;
        let (hdr, bdl) = if six {
            if p.len() < 4 {
                return Err(Sense::new(
                    SenseKey::IllegalRequest,
                    asc::PARAMETER_LIST_LENGTH_ERROR,
                ));
            }
            (4, p[3] as usize)
        } else {
            if p.len() < 8 {
                return Err(Sense::new(
                    SenseKey::IllegalRequest,
                    asc::PARAMETER_LIST_LENGTH_ERROR,
                ));
            }
            (8, be16(&p[6..8]) as usize)
        };
        let mut at = hdr + bdl;
        if at > p.len() {
            return Err(Sense::invalid_param());
        }
        // Validate every page against the changeable mask before applying any.
        let mut updates = Vec::new();
        while at + 2 <= p.len() {
            let code = p[at] & 0x3f;
            if p[at] & 0x40 != 0 {
                return Err(Sense::invalid_param());
            }
            let len = p[at + 1] as usize + 2;
            let Some(page) = p.get(at..at + len) else {
                return Err(Sense::invalid_param());
            };
            let (Some(cur), Some(mask)) = (self.mode_page(code, 0), self.mode_page(code, 1)) else {
                return Err(Sense::invalid_param());
            };
            if cur.len() != len {
                return Err(Sense::invalid_param());
            }
            for i in 2..len {
                if (page[i] ^ cur[i]) & !mask[i] != 0 {
                    return Err(Sense::invalid_param());
                }
            }
            updates.push((code, page[2], page.get(4).copied().unwrap_or(0)));
            at += len;
        }
        let mut st = self.state();
        for (code, b2, b4) in updates {
            match code {
                0x08 => st.wce = b2 & 0x04 != 0,
                0x0a => {
                    st.d_sense = b2 & 0x04 != 0;
                    st.swp = b4 & 0x08 != 0;
                }
                _ => {}
            }
        }
        Ok(Response::good(Vec::new()))
    }

    fn report_opcodes(&self) -> R {
        let c = self.cdb;
        let rctd = c[2] & 0x80 != 0;
        let options = c[2] & 0x07;
        let req_op = c[3];
        let req_sa = be16(&c[4..6]);
        let alloc = be32(&c[6..10]) as usize;
        let timeouts = |d: &mut Vec<u8>| {
            if rctd {
                d.extend_from_slice(&[0, 0x0a, 0, 0]);
                d.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 30]);
            }
        };
        let mut d = Vec::new();
        match options {
            0 => {
                let mut list = Vec::new();
                for (opc, sa, len) in SUPPORTED {
                    list.extend_from_slice(&[*opc, 0]);
                    list.extend_from_slice(&sa.unwrap_or(0).to_be_bytes());
                    list.push(0);
                    list.push(if rctd { 0x02 } else { 0 } | if sa.is_some() { 1 } else { 0 });
                    list.extend_from_slice(&(*len as u16).to_be_bytes());
                    timeouts(&mut list);
                }
                d.extend_from_slice(&(list.len() as u32).to_be_bytes());
                d.extend_from_slice(&list);
            }
            1..=3 => {
                let has_sa = SUPPORTED
                    .iter()
                    .any(|(o, s, _)| *o == req_op && s.is_some());
                if (options == 1 && has_sa) || (options == 2 && !has_sa && known_op(req_op)) {
                    return Err(Sense::invalid_cdb_at(2, Some(2)));
                }
                let found = SUPPORTED.iter().find(|(o, s, _)| {
                    *o == req_op && (options == 1 || !has_sa || *s == Some(req_sa))
                });
                match found {
                    Some((opc, sa, len)) => {
                        d.extend_from_slice(&[0, if rctd { 0x83 } else { 0x03 }]);
                        d.extend_from_slice(&(*len as u16).to_be_bytes());
                        d.extend_from_slice(&cdb_usage(*opc, *sa, *len));
                        timeouts(&mut d);
                    }
                    None => {
                        d.extend_from_slice(&[0, 0x01, 0, 0]);
                    }
                }
            }
            _ => return Err(Sense::invalid_cdb_at(2, Some(2))),
        }
        Ok(Response::good(truncated(d, alloc)))
    }
}

/// CDB USAGE DATA of one command (SPC-4 6.35.3): the opcode, then a mask of
/// the bits the device server looks at.
fn cdb_usage(opc: u8, sa: Option<u16>, len: usize) -> Vec<u8> {
    match opc {
        // IMMED, AUSE and the service action in byte 1; bytes 2-6 reserved;
        // PARAMETER LIST LENGTH; CONTROL.
        op::SANITIZE => {
            let mut u = vec![opc, 0x80 | 0x20 | sa.unwrap_or(0) as u8, 0, 0, 0, 0, 0];
            u.extend_from_slice(&[0xff, 0xff, 0x07]);
            u
        }
        _ => {
            let mut usage = vec![0xffu8; len];
            usage[0] = opc;
            if let Some(last) = usage.last_mut() {
                *last = 0x07;
            }
            usage
        }
    }
}

fn known_op(o: u8) -> bool {
    SUPPORTED.iter().any(|(x, _, _)| *x == o)
}

/// Every command [`execute`] implements: (opcode, service action, CDB length).
const SUPPORTED: &[(u8, Option<u16>, usize)] = &[
    (op::TEST_UNIT_READY, None, 6),
    (op::REQUEST_SENSE, None, 6),
    (op::READ_6, None, 6),
    (op::WRITE_6, None, 6),
    (op::INQUIRY, None, 6),
    (op::MODE_SELECT_6, None, 6),
    (op::RESERVE_6, None, 6),
    (op::RELEASE_6, None, 6),
    (op::MODE_SENSE_6, None, 6),
    (op::START_STOP_UNIT, None, 6),
    (op::PREVENT_ALLOW, None, 6),
    (op::READ_CAPACITY_10, None, 10),
    (op::READ_10, None, 10),
    (op::WRITE_10, None, 10),
    (op::WRITE_VERIFY_10, None, 10),
    (op::VERIFY_10, None, 10),
    (op::PREFETCH_10, None, 10),
    (op::SYNCHRONIZE_CACHE_10, None, 10),
    (op::READ_DEFECT_DATA_10, None, 10),
    (op::WRITE_SAME_10, None, 10),
    (op::UNMAP, None, 10),
    // No CRYPTO ERASE: nothing is encrypted (WACEREQ stays 0 in VPD B1h).
    (op::SANITIZE, Some(sa::SANITIZE_OVERWRITE as u16), 10),
    (op::SANITIZE, Some(sa::SANITIZE_BLOCK_ERASE as u16), 10),
    (
        op::SANITIZE,
        Some(sa::SANITIZE_EXIT_FAILURE_MODE as u16),
        10,
    ),
    (op::MODE_SELECT_10, None, 10),
    (op::RESERVE_10, None, 10),
    (op::RELEASE_10, None, 10),
    (op::MODE_SENSE_10, None, 10),
    (op::PERSISTENT_RESERVE_IN, Some(0), 10),
    (op::PERSISTENT_RESERVE_IN, Some(1), 10),
    (op::PERSISTENT_RESERVE_IN, Some(2), 10),
    (op::PERSISTENT_RESERVE_IN, Some(3), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(0), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(1), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(2), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(3), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(4), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(5), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(6), 10),
    (op::READ_16, None, 16),
    (op::COMPARE_AND_WRITE, None, 16),
    (op::ORWRITE_16, None, 16),
    (op::WRITE_ATOMIC_16, None, 16),
    (op::WRITE_16, None, 16),
    (op::WRITE_VERIFY_16, None, 16),
    (op::VERIFY_16, None, 16),
    (op::PREFETCH_16, None, 16),
    (op::SYNCHRONIZE_CACHE_16, None, 16),
    (op::WRITE_SAME_16, None, 16),
    (
        op::SERVICE_ACTION_IN_16,
        Some(sa::READ_CAPACITY_16 as u16),
        16,
    ),
    (
        op::SERVICE_ACTION_IN_16,
        Some(sa::GET_LBA_STATUS as u16),
        16,
    ),
    (op::REPORT_LUNS, None, 12),
    (
        op::MAINTENANCE_IN,
        Some(sa::REPORT_SUPPORTED_OPCODES as u16),
        12,
    ),
    (op::READ_12, None, 12),
    (op::WRITE_12, None, 12),
    (op::WRITE_VERIFY_12, None, 12),
    (op::VERIFY_12, None, 12),
    (op::READ_DEFECT_DATA_12, None, 12),
];

/// A checked SANITIZE OVERWRITE parameter list (SBC-4 5.30.2.2).
struct Overwrite {
    invert: bool,
    count: u8,
    pattern: Vec<u8>,
}

/// Parses the OVERWRITE parameter list `p` (exactly PARAMETER LIST LENGTH
/// bytes) for a medium of `bs`-byte blocks.
fn parse_overwrite(p: &[u8], bs: usize) -> Result<Overwrite, Sense> {
    let invert = p[0] & 0x80 != 0;
    let test = (p[0] >> 5) & 0x03;
    let count = p[0] & 0x1f;
    let len = be16(&p[2..4]) as usize;
    // TEST values other than 00b are vendor specific: we define none.
    if test != 0 || count == 0 || p[1] != 0 {
        return Err(Sense::invalid_param());
    }
    // The pattern is 1..=block length bytes and fills the rest of the list.
    if len == 0 || len > bs || len != p.len() - 4 {
        return Err(Sense::invalid_param());
    }
    Ok(Overwrite {
        invert,
        count,
        pattern: p[4..].to_vec(),
    })
}

/// Ends a sanitize operation in the LU state: Idle when it completed, Failed
/// otherwise (an I/O error, or a panic unwinding through it).
struct SanitizeRun<'a> {
    state: &'a Mutex<LuState>,
    ause: bool,
    ok: bool,
}

impl Drop for SanitizeRun<'_> {
    fn drop(&mut self) {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        st.sanitize = if self.ok {
            SanitizeState::Idle
        } else {
            SanitizeState::Failed { ause: self.ause }
        };
    }
}

fn pr_response(o: PrOutcome) -> R {
    match o {
        PrOutcome::Good => Ok(Response::good(Vec::new())),
        PrOutcome::Conflict => Ok(Response::status(status::RESERVATION_CONFLICT)),
        PrOutcome::Check(s) => Err(s),
    }
}

#[cfg(test)]
mod tests;
