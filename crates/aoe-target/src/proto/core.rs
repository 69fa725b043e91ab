//! The target state machine: header checks and addressing (AoE r11 section 2),
//! ATA commands (3.1), Query Config (3.2), MAC Mask List (3.3) and
//! Reserve/Release (3.4).

use std::collections::VecDeque;
use std::ops::Range;

use anyboot_wire::aoe::{
    self, max_sectors_for_mtu, AtaPacket, AtaRepr, Command, ConfigCommand, ConfigPacket,
    ConfigRepr, Directive, DirectiveCommand, ErrorCode, EthRepr, Mac, MaskCommand, MaskError,
    MaskPacket, MaskRepr, ReserveCommand, ReservePacket, ReserveRepr, ATA_HEADER_LEN,
    BROADCAST_SHELF, BROADCAST_SLOT, ETHERTYPE_AOE, ETH_MIN_FRAME, HEADER_LEN,
};
use anyboot_wire::ata::{self, error_bits, status, Identify, Opcode, SECTOR_SIZE};
use tracing::debug;

/// Firmware version reported by Query Config.
pub const FIRMWARE_VERSION: u16 = 0x0100;
/// Most entries of a MAC mask list (keeps the reply inside a 1500-byte frame).
pub const MAX_MASKS: usize = 64;
/// Most entries of a reserve list.
pub const MAX_RESERVE: usize = 64;

/// One shelf.slot device as the core sees it.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    pub shelf: u16,
    pub slot: u8,
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    pub read_only: bool,
    /// Initial config string (Query Config); at most 1024 bytes.
    pub config_string: Vec<u8>,
    /// Initial MAC mask list: when not empty, only these hosts get answers.
    pub allowed_macs: Vec<Mac>,
    /// IDENTIFY serial number (ASCII, at most 20 characters).
    pub serial: String,
    /// IDENTIFY model (ASCII, at most 40 characters).
    pub model: String,
    /// Buffer Count reported by Query Config: storage requests this target
    /// keeps in flight; ATA data commands beyond it are dropped (the
    /// initiator retransmits), as AoE r11 section 3.2 describes.
    pub buffer_count: u16,
}

/// Core settings.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub targets: Vec<TargetInfo>,
}

/// A network interface the core answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iface {
    pub mac: Mac,
    /// Largest Ethernet payload (the interface MTU).
    pub mtu: usize,
}

/// A frame to send on interface `iface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub iface: usize,
    pub frame: Vec<u8>,
}

/// What the core asks its driver to do.
#[derive(Debug)]
#[must_use]
pub enum Output {
    Transmit(Transmit),
    Io(IoRequest),
    /// `client` identified target `target` (ATA IDENTIFY DEVICE): iPXE and the
    /// Linux driver do so when they attach the disk, never while they have it
    /// open, so the driver may take it as the start of a new boot.
    Identified {
        target: usize,
        client: Mac,
    },
}

/// Storage work for one ATA command, bounds-checked against the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOp {
    /// Read `len` bytes at `offset` into the reply buffer at
    /// [`IoRequest::data_range`].
    Read { offset: u64, len: usize },
    /// Write the request frame's bytes `data` at `offset`.
    Write { offset: u64, data: Range<usize> },
    /// Make completed writes durable.
    Flush,
}

/// Why storage work failed, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFailure {
    OutOfRange,
    ReadOnly,
    /// Any other device error.
    Media,
}

/// A storage request. The driver performs `op` on target `target` for client
/// `client` (its key for per-client overlays), then builds the reply in place
/// with [`IoRequest::complete`] and sends it on `iface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoRequest {
    pub iface: usize,
    pub target: usize,
    pub client: Mac,
    pub op: IoOp,
    eth: EthRepr,
    aoe: aoe::Repr,
    ata: AtaRepr,
}

impl IoRequest {
    /// Bytes of Ethernet, AoE and ATA headers in the reply (and request).
    pub fn header_len(&self) -> usize {
        self.eth.buffer_len() + HEADER_LEN + ATA_HEADER_LEN
    }

    /// Where read data goes in the reply buffer (empty for writes and flushes).
    pub fn data_range(&self) -> Range<usize> {
        let h = self.header_len();
        match self.op {
            IoOp::Read { len, .. } => h..h + len,
            _ => h..h,
        }
    }

    /// Bytes a reply buffer must hold.
    pub fn reply_len(&self) -> usize {
        self.data_range().end.max(ETH_MIN_FRAME)
    }

    /// Writes the reply headers into `buf` (which, for reads, already holds the
    /// data at [`IoRequest::data_range`]), pads it to the Ethernet minimum and
    /// returns the frame's length. `buf` must hold [`IoRequest::reply_len`].
    pub fn complete(&self, result: Result<(), IoFailure>, buf: &mut [u8]) -> usize {
        let mut ata = self.ata;
        let mut len = self.header_len();
        match result {
            Ok(()) => {
                ata.cmd_status = status::DRDY;
                ata.err_feature = 0;
                len = self.data_range().end;
            }
            Err(f) => {
                ata.cmd_status = status::DRDY | status::ERR;
                ata.err_feature = match f {
                    IoFailure::OutOfRange => error_bits::IDNF,
                    IoFailure::ReadOnly => error_bits::ABRT,
                    IoFailure::Media if matches!(self.op, IoOp::Read { .. }) => error_bits::UNC,
                    IoFailure::Media => error_bits::ABRT,
                };
            }
        }
        write_headers(buf, &self.eth, &self.aoe);
        let at = self.eth.buffer_len() + HEADER_LEN;
        ata.emit(&mut AtaPacket::new_unchecked(&mut buf[at..]))
            .expect("buffer holds the ATA header");
        pad(buf, len)
    }
}

/// Zero-fills `buf[len..60]` and returns the padded length.
fn pad(buf: &mut [u8], len: usize) -> usize {
    if len < ETH_MIN_FRAME {
        buf[len..ETH_MIN_FRAME].fill(0);
        ETH_MIN_FRAME
    } else {
        len
    }
}

fn write_headers(buf: &mut [u8], eth: &EthRepr, h: &aoe::Repr) {
    eth.emit(buf).expect("buffer holds the Ethernet header");
    let at = eth.buffer_len();
    h.emit(&mut aoe::Packet::new_unchecked(&mut buf[at..]))
        .expect("buffer holds the AoE header");
}

/// What the core refused or dropped, for the driver's rate-limited warnings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames too short or from group addresses.
    pub malformed: u64,
    /// Frames ignored because of a target's MAC mask list.
    pub masked: u64,
    /// Commands refused with "target is reserved".
    pub reserved: u64,
    /// Other AoE error replies (unknown command, bad argument, version...).
    pub aoe_errors: u64,
    /// ATA commands answered with an error status (range, abort).
    pub ata_errors: u64,
    /// Storage requests dropped because the target's buffers were busy.
    pub busy_drops: u64,
}

#[derive(Debug)]
struct Target {
    info: TargetInfo,
    config: Vec<u8>,
    masks: Vec<Mac>,
    reserve: Vec<Mac>,
    inflight: u16,
}

/// The AoE target core.
#[derive(Debug)]
pub struct Core {
    targets: Vec<Target>,
    ifaces: Vec<Iface>,
    out: VecDeque<Output>,
    counters: Counters,
}

/// A parsed request, as the handlers need it.
struct Req<'a> {
    iface: usize,
    eth: EthRepr,
    hdr: aoe::Repr,
    /// Offset of the AoE argument within the frame.
    arg_at: usize,
    frame: &'a [u8],
}

impl Req<'_> {
    fn arg(&self) -> &[u8] {
        &self.frame[self.arg_at..]
    }
}

impl Core {
    pub fn new(config: CoreConfig, ifaces: Vec<Iface>) -> Self {
        let targets = config
            .targets
            .into_iter()
            .map(|info| Target {
                config: info.config_string.clone(),
                masks: info.allowed_macs.clone(),
                reserve: Vec::new(),
                inflight: 0,
                info,
            })
            .collect();
        Self {
            targets,
            ifaces,
            out: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The driver finished an [`IoRequest`] of target `t`: its buffer is free.
    pub fn io_done(&mut self, t: usize) {
        if let Some(x) = self.targets.get_mut(t) {
            x.inflight = x.inflight.saturating_sub(1);
        }
    }

    /// Storage requests of target `t` not yet reported done.
    pub fn inflight(&self, t: usize) -> u16 {
        self.targets[t].inflight
    }

    fn push_io(&mut self, io: IoRequest) {
        let t = &mut self.targets[io.target];
        if t.inflight >= t.info.buffer_count {
            debug!(
                tag = io.aoe.tag,
                "all buffers busy: dropping (the initiator retransmits)"
            );
            return;
        }
        t.inflight += 1;
        self.out.push_back(Output::Io(io));
    }

    /// Totals of refused and dropped requests since the start.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Current MAC mask list of target `t` (for logs and tests).
    pub fn masks(&self, t: usize) -> &[Mac] {
        &self.targets[t].masks
    }

    /// Current reserve list of target `t`.
    pub fn reserve_list(&self, t: usize) -> &[Mac] {
        &self.targets[t].reserve
    }

    /// Current config string of target `t`.
    pub fn config_string(&self, t: usize) -> &[u8] {
        &self.targets[t].config
    }

    /// Handles one frame received on interface `iface` (with its 802.1Q tag
    /// inline if it had one). Outputs queue up for [`Core::poll_output`].
    pub fn handle(&mut self, iface: usize, frame: &[u8]) {
        let Some(ifc) = self.ifaces.get(iface).copied() else {
            return;
        };
        let Ok((eth, at)) = EthRepr::parse(frame) else {
            return;
        };
        if eth.ethertype != ETHERTYPE_AOE {
            return;
        }
        if eth.src[0] & 1 != 0 {
            debug!(src = ?eth.src, "dropping AoE frame from a group address");
            self.counters.malformed += 1;
            return;
        }
        if eth.dst != ifc.mac && eth.dst != aoe::MAC_BROADCAST {
            return;
        }
        let Ok(p) = aoe::Packet::new_checked(&frame[at..]) else {
            debug!(len = frame.len(), "dropping truncated AoE frame");
            self.counters.malformed += 1;
            return;
        };
        let hdr = aoe::Repr::parse(&p).expect("checked");
        if hdr.response {
            // Another target's answer, or our own echo: not for us.
            return;
        }
        let req = Req {
            iface,
            eth,
            hdr,
            arg_at: at + HEADER_LEN,
            frame,
        };
        let wildcard = hdr.shelf == BROADCAST_SHELF || hdr.slot == BROADCAST_SLOT;
        for t in 0..self.targets.len() {
            let info = &self.targets[t].info;
            let shelf_ok = hdr.shelf == BROADCAST_SHELF || hdr.shelf == info.shelf;
            let slot_ok = hdr.slot == BROADCAST_SLOT || hdr.slot == info.slot;
            if !(shelf_ok && slot_ok) {
                continue;
            }
            let target = &self.targets[t];
            if !target.masks.is_empty() && !target.masks.contains(&eth.src) {
                debug!(src = ?eth.src, shelf = info.shelf, slot = info.slot, "MAC mask: ignored");
                self.counters.masked += 1;
                continue;
            }
            if hdr.version != aoe::VERSION {
                self.error(&req, t, ErrorCode::UnsupportedVersion);
                continue;
            }
            match hdr.command {
                Command::Ata => {
                    if wildcard {
                        // Disk I/O must name one device; the Linux driver and
                        // iPXE never send ATA commands to a wildcard address.
                        debug!("ATA command to a wildcard shelf/slot: ignored");
                        continue;
                    }
                    self.ata(&req, t, &ifc);
                }
                Command::QueryConfig => self.query_config(&req, t, &ifc),
                Command::MacMask => self.mac_mask(&req, t),
                Command::Reserve => self.reserve(&req, t),
                Command::Unknown(c) => {
                    debug!(command = c, "unrecognized AoE command");
                    self.error(&req, t, ErrorCode::UnrecognizedCommand);
                }
            }
        }
    }

    /// Queues a reply to `req` from target `t`, with `arg_len` bytes of argument
    /// written by `fill`.
    fn reply(
        &mut self,
        req: &Req,
        t: usize,
        error: Option<ErrorCode>,
        arg_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        let info = &self.targets[t].info;
        let ifc = self.ifaces[req.iface];
        let eth = EthRepr {
            dst: req.eth.src,
            src: ifc.mac,
            vlan_tci: req.eth.vlan_tci,
            ethertype: ETHERTYPE_AOE,
        };
        let hdr = aoe::Repr {
            version: aoe::VERSION,
            response: true,
            error,
            shelf: info.shelf,
            slot: info.slot,
            command: req.hdr.command,
            tag: req.hdr.tag,
        };
        let arg_at = eth.buffer_len() + HEADER_LEN;
        let len = arg_at + arg_len;
        let mut frame = vec![0u8; len.max(ETH_MIN_FRAME)];
        write_headers(&mut frame, &eth, &hdr);
        fill(&mut frame[arg_at..len]);
        self.out.push_back(Output::Transmit(Transmit {
            iface: req.iface,
            frame,
        }));
    }

    /// An error reply that echoes the request's argument (as vblade does), so
    /// the initiator can match it to what it sent.
    fn error(&mut self, req: &Req, t: usize, code: ErrorCode) {
        debug!(?code, tag = req.hdr.tag, "AoE error reply");
        if code == ErrorCode::TargetReserved {
            self.counters.reserved += 1;
        } else {
            self.counters.aoe_errors += 1;
        }
        let ifc = self.ifaces[req.iface];
        let room = ifc.mtu.saturating_sub(HEADER_LEN);
        let arg = req.arg();
        let n = arg.len().min(room);
        self.reply(req, t, Some(code), n, |b| b.copy_from_slice(&arg[..n]));
    }

    // -- ATA (section 3.1) --------------------------------------------------

    fn ata(&mut self, req: &Req, t: usize, ifc: &Iface) {
        let Ok(p) = AtaPacket::new_checked(req.arg()) else {
            self.error(req, t, ErrorCode::BadArgument);
            return;
        };
        let a = AtaRepr::parse(&p).expect("checked");
        let target = &self.targets[t];
        if !target.reserve.is_empty() && !target.reserve.contains(&req.eth.src) {
            debug!(src = ?req.eth.src, "target reserved by another host");
            self.error(req, t, ErrorCode::TargetReserved);
            return;
        }
        let (shelf, slot, size, read_only) = (
            target.info.shelf,
            target.info.slot,
            target.info.sectors,
            target.info.read_only,
        );
        let max = u32::from(max_sectors_for_mtu(ifc.mtu));
        let op = Opcode::from(a.cmd_status);
        let io = |op| IoRequest {
            iface: req.iface,
            target: t,
            client: req.eth.src,
            op,
            eth: EthRepr {
                dst: req.eth.src,
                src: ifc.mac,
                vlan_tci: req.eth.vlan_tci,
                ethertype: ETHERTYPE_AOE,
            },
            aoe: aoe::Repr {
                version: aoe::VERSION,
                response: true,
                error: None,
                shelf,
                slot,
                command: Command::Ata,
                tag: req.hdr.tag,
            },
            ata: a,
        };
        match op {
            Opcode::ReadSectors
            | Opcode::ReadSectorsExt
            | Opcode::ReadDma
            | Opcode::ReadDmaExt
            | Opcode::WriteSectors
            | Opcode::WriteSectorsExt
            | Opcode::WriteDma
            | Opcode::WriteDmaExt => {
                let write = matches!(
                    op,
                    Opcode::WriteSectors
                        | Opcode::WriteSectorsExt
                        | Opcode::WriteDma
                        | Opcode::WriteDmaExt
                );
                let n = a.sectors();
                if n == 0 || n > max {
                    // More than one frame can carry (or nothing at all).
                    debug!(sectors = n, max, "sector count out of bounds");
                    self.ata_status(req, t, a, status::DRDY | status::ERR, error_bits::ABRT, &[]);
                    return;
                }
                let lba = a.lba();
                let in_range = lba.checked_add(u64::from(n)).is_some_and(|end| end <= size);
                if !in_range {
                    debug!(lba, sectors = n, size, "LBA out of range");
                    self.ata_status(req, t, a, status::DRDY | status::ERR, error_bits::IDNF, &[]);
                    return;
                }
                let offset = lba * SECTOR_SIZE as u64;
                let len = n as usize * SECTOR_SIZE;
                if write {
                    if read_only {
                        self.ata_status(
                            req,
                            t,
                            a,
                            status::DRDY | status::ERR,
                            error_bits::ABRT,
                            &[],
                        );
                        return;
                    }
                    let data_at = req.arg_at + ATA_HEADER_LEN;
                    if p.data().len() < len {
                        debug!(have = p.data().len(), need = len, "write frame lacks data");
                        self.error(req, t, ErrorCode::BadArgument);
                        return;
                    }
                    self.push_io(io(IoOp::Write {
                        offset,
                        data: data_at..data_at + len,
                    }));
                } else {
                    self.push_io(io(IoOp::Read { offset, len }));
                }
            }
            Opcode::IdentifyDevice => {
                let info = &self.targets[t].info;
                let id = Identify {
                    serial: info.serial.clone(),
                    firmware: format!("{FIRMWARE_VERSION:04x}"),
                    model: info.model.clone(),
                    sectors: size,
                    lba48: true,
                    write_cache: !read_only,
                    max_multiple: max.min(255) as u8,
                };
                let mut block = [0u8; ata::IDENTIFY_LEN];
                if id.emit(&mut block).is_err() {
                    self.ata_status(req, t, a, status::DRDY | status::ERR, error_bits::ABRT, &[]);
                    return;
                }
                self.ata_status(req, t, a, status::DRDY, 0, &block);
                self.out.push_back(Output::Identified {
                    target: t,
                    client: req.eth.src,
                });
            }
            Opcode::FlushCache | Opcode::FlushCacheExt => {
                self.push_io(io(IoOp::Flush));
            }
            Opcode::CheckPowerMode => {
                let mut r = a;
                r.sector_count = ata::POWER_ACTIVE;
                self.ata_status(req, t, r, status::DRDY, 0, &[]);
            }
            Opcode::Unknown(c) => {
                debug!(opcode = c, "unsupported ATA command");
                self.ata_status(req, t, a, status::DRDY | status::ERR, error_bits::ABRT, &[]);
            }
        }
    }

    /// Queues an ATA reply with `status`/`error` registers and `data`.
    fn ata_status(&mut self, req: &Req, t: usize, mut a: AtaRepr, st: u8, err: u8, data: &[u8]) {
        a.cmd_status = st;
        a.err_feature = err;
        if st & status::ERR != 0 {
            self.counters.ata_errors += 1;
        }
        self.reply(req, t, None, ATA_HEADER_LEN + data.len(), |b| {
            a.emit(&mut AtaPacket::new_unchecked(&mut *b))
                .expect("room for the ATA header");
            b[ATA_HEADER_LEN..].copy_from_slice(data);
        });
    }

    // -- Query Config (section 3.2) -----------------------------------------

    fn query_config(&mut self, req: &Req, t: usize, ifc: &Iface) {
        let Ok(p) = ConfigPacket::new_checked(req.arg()) else {
            self.error(req, t, ErrorCode::BadArgument);
            return;
        };
        let c = ConfigRepr::parse(&p).expect("checked");
        let target = &mut self.targets[t];
        let mut error = None;
        match c.ccmd {
            ConfigCommand::Read => {}
            ConfigCommand::TestExact => {
                if c.config != target.config.as_slice() {
                    return;
                }
            }
            ConfigCommand::TestPrefix => {
                if !target.config.starts_with(c.config) {
                    return;
                }
            }
            ConfigCommand::SetIfEmpty => {
                if target.config.is_empty() {
                    target.config = c.config.to_vec();
                } else {
                    error = Some(ErrorCode::ConfigStringPresent);
                }
            }
            ConfigCommand::ForceSet => target.config = c.config.to_vec(),
            ConfigCommand::Unknown(n) => {
                debug!(ccmd = n, "unknown Query Config sub-command");
                self.error(req, t, ErrorCode::BadArgument);
                return;
            }
        }
        let config = target.config.clone();
        let r = ConfigRepr {
            buffer_count: self.targets[t].info.buffer_count,
            firmware: FIRMWARE_VERSION,
            sector_count: max_sectors_for_mtu(ifc.mtu),
            aoe_version: aoe::VERSION,
            ccmd: c.ccmd,
            config: &config,
        };
        self.reply(req, t, error, r.buffer_len(), |b| {
            r.emit(b).expect("sized by buffer_len")
        });
    }

    // -- MAC Mask List (section 3.3) ----------------------------------------

    fn mac_mask(&mut self, req: &Req, t: usize) {
        let Ok(p) = MaskPacket::new_checked(req.arg()) else {
            self.error(req, t, ErrorCode::BadArgument);
            return;
        };
        let m = MaskRepr::parse(&p).expect("checked");
        let mut merror = MaskError::None;
        match m.mcmd {
            MaskCommand::Read => {}
            MaskCommand::Edit => {
                let target = &mut self.targets[t];
                if !target.reserve.is_empty() && !target.reserve.contains(&req.eth.src) {
                    self.error(req, t, ErrorCode::TargetReserved);
                    return;
                }
                // Directives apply in order; the first bad one stops the edit.
                for i in 0..usize::from(m.dir_count) {
                    let d = p.directive(i).expect("checked count");
                    match d.dcmd {
                        DirectiveCommand::None => {}
                        DirectiveCommand::Add => {
                            if !target.masks.contains(&d.mac) {
                                if target.masks.len() >= MAX_MASKS {
                                    merror = MaskError::ListFull;
                                    break;
                                }
                                target.masks.push(d.mac);
                            }
                        }
                        DirectiveCommand::Delete => target.masks.retain(|x| *x != d.mac),
                        DirectiveCommand::Unknown(_) => {
                            merror = MaskError::BadDirective;
                            break;
                        }
                    }
                }
            }
            MaskCommand::Unknown(n) => {
                debug!(mcmd = n, "unknown MAC Mask sub-command");
                self.error(req, t, ErrorCode::BadArgument);
                return;
            }
        }
        let list = self.targets[t].masks.clone();
        let r = MaskRepr {
            mcmd: m.mcmd,
            merror,
            dir_count: list.len() as u8,
        };
        self.reply(req, t, None, r.buffer_len(), |b| {
            r.emit(b).expect("sized by buffer_len");
            let mut v = MaskPacket::new_unchecked(b);
            for (i, mac) in list.iter().enumerate() {
                v.set_directive(
                    i,
                    Directive {
                        dcmd: DirectiveCommand::Add,
                        mac: *mac,
                    },
                )
                .expect("sized by buffer_len");
            }
        });
    }

    // -- Reserve/Release (section 3.4) --------------------------------------

    fn reserve(&mut self, req: &Req, t: usize) {
        let Ok(p) = ReservePacket::new_checked(req.arg()) else {
            self.error(req, t, ErrorCode::BadArgument);
            return;
        };
        let r = ReserveRepr::parse(&p).expect("checked");
        let mut error = None;
        let target = &mut self.targets[t];
        let new_list = || (0..usize::from(r.nmacs)).filter_map(|i| p.mac(i)).collect();
        match r.rcmd {
            ReserveCommand::Read => {}
            ReserveCommand::Set | ReserveCommand::ForceSet
                if usize::from(r.nmacs) > MAX_RESERVE =>
            {
                self.error(req, t, ErrorCode::BadArgument);
                return;
            }
            ReserveCommand::Set => {
                if !target.reserve.is_empty() && !target.reserve.contains(&req.eth.src) {
                    error = Some(ErrorCode::TargetReserved);
                    self.counters.reserved += 1;
                } else {
                    target.reserve = new_list();
                }
            }
            ReserveCommand::ForceSet => target.reserve = new_list(),
            ReserveCommand::Unknown(n) => {
                debug!(rcmd = n, "unknown Reserve/Release sub-command");
                self.error(req, t, ErrorCode::BadArgument);
                return;
            }
        }
        let list = self.targets[t].reserve.clone();
        let out = ReserveRepr {
            rcmd: r.rcmd,
            nmacs: list.len() as u8,
        };
        self.reply(req, t, error, out.buffer_len(), |b| {
            out.emit(b).expect("sized by buffer_len");
            let mut v = ReservePacket::new_unchecked(b);
            for (i, mac) in list.iter().enumerate() {
                v.set_mac(i, *mac).expect("sized by buffer_len");
            }
        });
    }
}
