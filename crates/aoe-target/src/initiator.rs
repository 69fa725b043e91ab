//! A userspace AoE initiator (AoE r11) for tests and benchmarks. It shares
//! nothing with the target's core: it builds and checks frames with
//! `anyboot_wire::aoe`/`ata` only, and is proven against vblade, the reference
//! target, before it is trusted against ours.
//!
//! Data transfers are pipelined: up to `window` frames are in flight, each in a
//! preallocated slot with its own tag (slot index in the low byte, a sequence
//! number above it), retransmitted on timeout. Nothing is allocated per frame.

use std::io;
use std::time::{Duration, Instant};

use anyboot_wire::aoe::{
    self, aflags, AtaPacket, AtaRepr, Command, ConfigCommand, ConfigPacket, ConfigRepr, ErrorCode,
    EthRepr, Mac, ATA_HEADER_LEN, ETHERTYPE_AOE, ETH_MIN_FRAME, HEADER_LEN, MAC_BROADCAST,
};
use anyboot_wire::ata::{status, Identify, SECTOR_SIZE};

use crate::rawsock::{Listen, RawSocket, SocketError, BATCH};

/// Errors of the initiator.
#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("no answer from {shelf}.{slot} after {tries} tries")]
    Timeout { shelf: u16, slot: u8, tries: u32 },
    #[error("AoE error {0:?}")]
    Aoe(ErrorCode),
    #[error("ATA error: status {status:#04x}, error {error:#04x} at LBA {lba}")]
    Ata { status: u8, error: u8, lba: u64 },
    #[error("bad response: {0}")]
    Protocol(&'static str),
}

/// A target found by Query Config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub mac: Mac,
    pub shelf: u16,
    pub slot: u8,
    pub buffer_count: u16,
    pub firmware: u16,
    /// Most sectors per ATA command the target accepts.
    pub sector_count: u8,
    pub config: Vec<u8>,
}

/// A target the initiator transfers data with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub mac: Mac,
    pub shelf: u16,
    pub slot: u8,
    /// Capacity in sectors (from IDENTIFY).
    pub sectors: u64,
    pub lba48: bool,
    /// Sectors per frame (the smaller of the target's and our MTU's limit).
    pub max_sectors: u8,
    /// Frames kept in flight.
    pub window: usize,
}

/// One response: its AoE header, source and argument bytes.
#[derive(Debug, Clone)]
pub struct Response {
    pub src: Mac,
    pub header: aoe::Repr,
    pub arg: Vec<u8>,
}

/// One frame of a pipelined transfer.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub lba: u64,
    pub sectors: u8,
    pub write: bool,
    /// Where the op's data lives in the transfer buffer.
    pub buf_off: usize,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    op: Option<usize>,
    tag: u32,
    sent: Instant,
    tries: u32,
}

/// The initiator on one interface.
#[derive(Debug)]
pub struct Initiator {
    sock: RawSocket,
    seq: u32,
    /// Retransmit after this long without an answer.
    pub timeout: Duration,
    /// Give up after this many transmissions of one frame.
    pub max_tries: u32,
    /// 802.1Q tag put inline on every frame (and required on answers).
    vlan: Option<u16>,
    /// Frames sent again after their timeout, since opening.
    pub retransmits: u64,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl Initiator {
    /// Opens a raw socket on interface `ifname` (needs CAP_NET_RAW).
    pub fn open(ifname: &str) -> Result<Self, InitiatorError> {
        Self::open_with(ifname, None)
    }

    /// Opens a socket on `ifname` that tags every frame with VLAN `vlan`
    /// itself (no VLAN interface needed) and accepts only answers tagged
    /// with the same VLAN ID.
    pub fn open_vlan(ifname: &str, vlan: u16) -> Result<Self, InitiatorError> {
        Self::open_with(ifname, Some(vlan))
    }

    fn open_with(ifname: &str, vlan: Option<u16>) -> Result<Self, InitiatorError> {
        let listen = if vlan.is_some() {
            Listen::AllVlans
        } else {
            Listen::AoeOnly
        };
        let sock = RawSocket::open(ifname, listen)?;
        // Blocking receives wake up this often to check retransmissions.
        sock.set_read_timeout(Duration::from_millis(20))
            .map_err(InitiatorError::Io)?;
        let n = sock.mtu + 64;
        Ok(Self {
            sock,
            vlan,
            seq: 1,
            timeout: Duration::from_millis(250),
            max_tries: 20,
            retransmits: 0,
            tx: vec![0; n],
            rx: vec![0; n],
        })
    }

    /// Our MAC address.
    pub fn mac(&self) -> Mac {
        self.sock.mac
    }

    /// Our interface's MTU.
    pub fn mtu(&self) -> usize {
        self.sock.mtu
    }

    fn next_tag(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq << 8
    }

    /// Sends a request with a fresh tag; returns the tag.
    pub fn send(
        &mut self,
        dst: Mac,
        shelf: u16,
        slot: u8,
        command: Command,
        arg: &[u8],
    ) -> Result<u32, InitiatorError> {
        let tag = self.next_tag();
        self.send_tagged(dst, shelf, slot, command, tag, 1, arg)?;
        Ok(tag)
    }

    /// Sends a request with a given tag and AoE version (for error tests).
    #[allow(clippy::too_many_arguments)]
    pub fn send_tagged(
        &mut self,
        dst: Mac,
        shelf: u16,
        slot: u8,
        command: Command,
        tag: u32,
        version: u8,
        arg: &[u8],
    ) -> Result<(), InitiatorError> {
        let vlan = self.vlan;
        let n = build(
            &mut self.tx,
            vlan,
            self.sock.mac,
            dst,
            shelf,
            slot,
            command,
            tag,
            version,
            |b| {
                b[..arg.len()].copy_from_slice(arg);
                arg.len()
            },
        );
        self.sock.send(&self.tx[..n])?;
        Ok(())
    }

    /// Receives one AoE response (any tag) within `wait`.
    pub fn recv(&mut self, wait: Duration) -> Result<Option<Response>, InitiatorError> {
        let deadline = Instant::now() + wait;
        loop {
            match self.sock.recv_frame(&mut self.rx) {
                Ok(range) if !range.is_empty() => {
                    if let Some(r) = parse_response(&self.rx[range], self.vlan) {
                        return Ok(Some(r));
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    self.sock.wait_readable(deadline - now)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends one request and collects every response with its tag within `wait`.
    pub fn exchange(
        &mut self,
        dst: Mac,
        shelf: u16,
        slot: u8,
        command: Command,
        arg: &[u8],
        wait: Duration,
    ) -> Result<Vec<Response>, InitiatorError> {
        let tag = self.send(dst, shelf, slot, command, arg)?;
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            match self.recv(left)? {
                Some(r) if r.header.tag == tag => out.push(r),
                Some(_) => {}
                None => return Ok(out),
            }
        }
    }

    /// Sends one request and returns the first response with its tag, if any
    /// arrives within `wait` (no retransmission: for error-path tests).
    pub fn exchange_one(
        &mut self,
        dst: Mac,
        shelf: u16,
        slot: u8,
        command: Command,
        arg: &[u8],
        wait: Duration,
    ) -> Result<Option<Response>, InitiatorError> {
        let tag = self.send(dst, shelf, slot, command, arg)?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.recv(left)? {
                Some(r) if r.header.tag == tag => return Ok(Some(r)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// Query Config to `dst` (broadcast for discovery) with sub-command `ccmd`.
    pub fn query_config(
        &mut self,
        dst: Mac,
        shelf: u16,
        slot: u8,
        ccmd: ConfigCommand,
        config: &[u8],
        wait: Duration,
    ) -> Result<Vec<(Response, Found)>, InitiatorError> {
        let r = ConfigRepr {
            buffer_count: 0,
            firmware: 0,
            sector_count: 0,
            aoe_version: aoe::VERSION,
            ccmd,
            config,
        };
        let mut arg = vec![0u8; r.buffer_len()];
        r.emit(&mut arg)
            .map_err(|_| InitiatorError::Protocol("config string too long"))?;
        let rs = self.exchange(dst, shelf, slot, Command::QueryConfig, &arg, wait)?;
        Ok(rs
            .into_iter()
            .filter_map(|r| {
                let p = ConfigPacket::new_checked(&r.arg[..]).ok()?;
                let c = ConfigRepr::parse(&p).ok()?;
                let f = Found {
                    mac: r.src,
                    shelf: r.header.shelf,
                    slot: r.header.slot,
                    buffer_count: c.buffer_count,
                    firmware: c.firmware,
                    sector_count: c.sector_count,
                    config: c.config.to_vec(),
                };
                Some((r, f))
            })
            .collect())
    }

    /// Finds targets at `shelf.slot` (wildcards allowed) by broadcasting Query
    /// Config, waiting `wait` for answers.
    pub fn discover(
        &mut self,
        shelf: u16,
        slot: u8,
        wait: Duration,
    ) -> Result<Vec<Found>, InitiatorError> {
        let mut v: Vec<Found> = self
            .query_config(MAC_BROADCAST, shelf, slot, ConfigCommand::Read, &[], wait)?
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        v.sort_by_key(|f| (f.shelf, f.slot));
        v.dedup_by_key(|f| (f.shelf, f.slot, f.mac));
        Ok(v)
    }

    /// One ATA command without data transfer beyond one frame, retransmitted
    /// on timeout; returns the response's ATA header and data.
    pub fn ata(
        &mut self,
        dst: Mac,
        shelf: u16,
        slot: u8,
        a: AtaRepr,
        data: &[u8],
    ) -> Result<(AtaRepr, Vec<u8>), InitiatorError> {
        let mut arg = vec![0u8; ATA_HEADER_LEN + data.len()];
        a.emit(&mut AtaPacket::new_unchecked(&mut arg[..]))
            .map_err(|_| InitiatorError::Protocol("ATA header"))?;
        arg[ATA_HEADER_LEN..].copy_from_slice(data);
        for _ in 0..self.max_tries {
            if let Some(r) =
                self.exchange_one(dst, shelf, slot, Command::Ata, &arg, self.timeout)?
            {
                if let Some(e) = r.header.error {
                    return Err(InitiatorError::Aoe(e));
                }
                let p = AtaPacket::new_checked(&r.arg[..])
                    .map_err(|_| InitiatorError::Protocol("short ATA response"))?;
                let h = AtaRepr::parse(&p).map_err(|_| InitiatorError::Protocol("ATA header"))?;
                return Ok((h, p.data().to_vec()));
            }
        }
        Err(InitiatorError::Timeout {
            shelf,
            slot,
            tries: self.max_tries,
        })
    }

    /// IDENTIFY DEVICE.
    pub fn identify(&mut self, dst: Mac, shelf: u16, slot: u8) -> Result<Identify, InitiatorError> {
        let a = AtaRepr {
            aflags: 0,
            err_feature: 0,
            sector_count: 1,
            cmd_status: 0xec,
            lba: [0; 6],
        };
        let (h, data) = self.ata(dst, shelf, slot, a, &[])?;
        if h.cmd_status & (status::ERR | status::DF | status::BSY | status::DRQ) != 0 {
            return Err(InitiatorError::Ata {
                status: h.cmd_status,
                error: h.err_feature,
                lba: 0,
            });
        }
        Identify::parse(&data).map_err(|_| InitiatorError::Protocol("IDENTIFY block"))
    }

    /// Discovers `shelf.slot`, identifies it and returns a [`Device`] with a
    /// window of at most `max_window` frames.
    pub fn attach(
        &mut self,
        shelf: u16,
        slot: u8,
        max_window: usize,
    ) -> Result<Device, InitiatorError> {
        let mut found = None;
        for _ in 0..self.max_tries {
            found = self.discover(shelf, slot, self.timeout)?.into_iter().next();
            if found.is_some() {
                break;
            }
        }
        let f = found.ok_or(InitiatorError::Timeout {
            shelf,
            slot,
            tries: self.max_tries,
        })?;
        let id = self.identify(f.mac, f.shelf, f.slot)?;
        let ours = aoe::max_sectors_for_mtu(self.sock.mtu);
        let max_sectors = if f.sector_count == 0 {
            ours
        } else {
            ours.min(f.sector_count)
        };
        Ok(Device {
            mac: f.mac,
            shelf: f.shelf,
            slot: f.slot,
            sectors: id.sectors,
            lba48: id.lba48,
            max_sectors: max_sectors.max(1),
            window: usize::from(f.buffer_count.max(1))
                .min(max_window)
                .clamp(1, 255),
        })
    }

    /// Splits `[lba, lba + len/512)` into frame-sized ops at `buf_off`.
    pub fn split(
        dev: &Device,
        lba: u64,
        len: usize,
        write: bool,
        buf_off: usize,
        out: &mut Vec<Op>,
    ) {
        let mut s = 0usize;
        let total = len / SECTOR_SIZE;
        while s < total {
            let n = (total - s).min(usize::from(dev.max_sectors));
            out.push(Op {
                lba: lba + s as u64,
                sectors: n as u8,
                write,
                buf_off: buf_off + s * SECTOR_SIZE,
            });
            s += n;
        }
    }

    /// Reads `buf.len()` bytes (a multiple of 512) from sector `lba`.
    pub fn read(&mut self, dev: &Device, lba: u64, buf: &mut [u8]) -> Result<(), InitiatorError> {
        let mut ops = Vec::new();
        Self::split(dev, lba, buf.len(), false, 0, &mut ops);
        self.run(dev, &ops, buf)
    }

    /// Writes `buf` (a multiple of 512 bytes) at sector `lba`.
    pub fn write(&mut self, dev: &Device, lba: u64, buf: &[u8]) -> Result<(), InitiatorError> {
        let mut ops = Vec::new();
        Self::split(dev, lba, buf.len(), true, 0, &mut ops);
        // `run` only reads from the buffer for writes.
        let mut tmp = buf.to_vec();
        self.run(dev, &ops, &mut tmp)
    }

    /// Frames the kernel dropped on this initiator's socket since the last
    /// call (its receive buffer was full).
    pub fn take_socket_drops(&self) -> io::Result<u32> {
        self.sock.take_drops()
    }

    /// Runs `ops` with up to `dev.window` frames in flight; reads land in and
    /// writes come from `data` at each op's `buf_off`.
    pub fn run(&mut self, dev: &Device, ops: &[Op], data: &mut [u8]) -> Result<(), InitiatorError> {
        let window = dev.window.clamp(1, 255);
        let now = Instant::now();
        let mut slots = vec![
            Slot {
                op: None,
                tag: 0,
                sent: now,
                tries: 0,
            };
            window
        ];
        let mut frames: Vec<Vec<u8>> = (0..window).map(|_| vec![0u8; self.sock.mtu + 64]).collect();
        let mut rxb: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; self.sock.mtu + 64]).collect();
        let mut ranges = vec![0..0; BATCH];
        let mut fresh = Vec::with_capacity(window);
        let mut next = 0usize;
        let mut done = 0usize;
        let mut last_check = now;
        let ext = dev.lba48;
        while done < ops.len() {
            // Fill free slots, then send all new frames with batched sends.
            fresh.clear();
            let now = Instant::now();
            for (i, s) in slots.iter_mut().enumerate() {
                if s.op.is_some() || next >= ops.len() {
                    continue;
                }
                self.seq = self.seq.wrapping_add(1);
                let tag = (self.seq << 8) | i as u32;
                build_ata(
                    &mut frames[i],
                    self.vlan,
                    self.sock.mac,
                    dev,
                    tag,
                    &ops[next],
                    ext,
                    data,
                );
                *s = Slot {
                    op: Some(next),
                    tag,
                    sent: now,
                    tries: 1,
                };
                fresh.push(i);
                next += 1;
            }
            if !fresh.is_empty() {
                self.sock
                    .send_frames(fresh.iter().map(|&i| &frames[i][..frame_len(&frames[i])]))?;
            }
            // The window is full (or nothing is left to send): wait for
            // answers, taking every queued one with one system call.
            match self.sock.recv_frames(&mut rxb, &mut ranges, true) {
                Ok(n) => {
                    for i in 0..n {
                        let f = &rxb[i][ranges[i].clone()];
                        if absorb(f, dev, self.vlan, &mut slots, ops, data)? {
                            done += 1;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
            // Retransmit what timed out (checked every few milliseconds, also
            // while other answers keep arriving).
            let now = Instant::now();
            if now - last_check < Duration::from_millis(10) {
                continue;
            }
            last_check = now;
            for (i, s) in slots.iter_mut().enumerate() {
                if s.op.is_none() || now - s.sent < self.timeout {
                    continue;
                }
                if s.tries >= self.max_tries {
                    return Err(InitiatorError::Timeout {
                        shelf: dev.shelf,
                        slot: dev.slot,
                        tries: s.tries,
                    });
                }
                let n = frame_len(&frames[i]);
                self.sock.send(&frames[i][..n])?;
                s.sent = now;
                s.tries += 1;
                self.retransmits += 1;
            }
        }
        Ok(())
    }
}

/// Takes one received frame: if it answers an outstanding slot, checks it,
/// copies read data into `data`, frees the slot and returns `true`.
fn absorb(
    f: &[u8],
    dev: &Device,
    vlan: Option<u16>,
    slots: &mut [Slot],
    ops: &[Op],
    data: &mut [u8],
) -> Result<bool, InitiatorError> {
    if f.is_empty() {
        return Ok(false);
    }
    let Some((tag, hdr_err, ata_at)) = check_ata_response(f, dev, vlan) else {
        return Ok(false);
    };
    let Some(s) = slots.get_mut((tag & 0xff) as usize) else {
        return Ok(false);
    };
    let Some(op) = s.op.filter(|_| s.tag == tag).map(|i| ops[i]) else {
        return Ok(false); // a late answer to a retransmitted frame
    };
    if let Some(e) = hdr_err {
        return Err(InitiatorError::Aoe(e));
    }
    let p = AtaPacket::new_unchecked(&f[ata_at..]);
    let st = p.cmd_status();
    if st & (status::ERR | status::DF | status::BSY | status::DRQ) != 0 {
        return Err(InitiatorError::Ata {
            status: st,
            error: p.err_feature(),
            lba: op.lba,
        });
    }
    if !op.write {
        let len = usize::from(op.sectors) * SECTOR_SIZE;
        let d = p.data();
        if d.len() < len {
            return Err(InitiatorError::Protocol("read response lacks data"));
        }
        data[op.buf_off..op.buf_off + len].copy_from_slice(&d[..len]);
    }
    s.op = None;
    Ok(true)
}

/// Writes a request frame into `buf`; `fill` writes the argument and returns
/// its length. Returns the (padded) frame length.
#[allow(clippy::too_many_arguments)]
fn build(
    buf: &mut [u8],
    vlan: Option<u16>,
    src: Mac,
    dst: Mac,
    shelf: u16,
    slot: u8,
    command: Command,
    tag: u32,
    version: u8,
    fill: impl FnOnce(&mut [u8]) -> usize,
) -> usize {
    let eth = EthRepr {
        dst,
        src,
        vlan_tci: vlan,
        ethertype: ETHERTYPE_AOE,
    };
    eth.emit(buf).expect("frame buffer holds a header");
    let at = eth.buffer_len();
    let h = aoe::Repr {
        version,
        response: false,
        error: None,
        shelf,
        slot,
        command,
        tag,
    };
    h.emit(&mut aoe::Packet::new_unchecked(&mut buf[at..]))
        .expect("frame buffer holds a header");
    let n = at + HEADER_LEN + fill(&mut buf[at + HEADER_LEN..]);
    if n < ETH_MIN_FRAME {
        buf[n..ETH_MIN_FRAME].fill(0);
        ETH_MIN_FRAME
    } else {
        n
    }
}

/// Frame length stored for retransmission: we keep it in the last 4 bytes of
/// the slot's buffer, which a frame never reaches (buffers are MTU + 64).
fn frame_len(buf: &[u8]) -> usize {
    let n = buf.len();
    u32::from_le_bytes([buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]]) as usize
}

#[allow(clippy::too_many_arguments)]
fn build_ata(
    buf: &mut [u8],
    vlan: Option<u16>,
    src: Mac,
    dev: &Device,
    tag: u32,
    op: &Op,
    ext: bool,
    data: &[u8],
) -> usize {
    let len = usize::from(op.sectors) * SECTOR_SIZE;
    let n = build(
        buf,
        vlan,
        src,
        dev.mac,
        dev.shelf,
        dev.slot,
        Command::Ata,
        tag,
        aoe::VERSION,
        |b| {
            let mut a = AtaRepr {
                aflags: if ext { aflags::EXTENDED } else { 0 }
                    | if op.write { aflags::WRITE } else { 0 },
                err_feature: 0,
                sector_count: op.sectors,
                cmd_status: match (op.write, ext) {
                    (false, false) => 0x20,
                    (false, true) => 0x24,
                    (true, false) => 0x30,
                    (true, true) => 0x34,
                },
                lba: [0; 6],
            };
            a.set_lba(op.lba, ext);
            a.emit(&mut AtaPacket::new_unchecked(&mut *b))
                .expect("room for the ATA header");
            if op.write {
                b[ATA_HEADER_LEN..ATA_HEADER_LEN + len]
                    .copy_from_slice(&data[op.buf_off..op.buf_off + len]);
                ATA_HEADER_LEN + len
            } else {
                ATA_HEADER_LEN
            }
        },
    );
    let l = buf.len();
    buf[l - 4..].copy_from_slice(&(n as u32).to_le_bytes());
    n
}

/// Checks that `f` is an ATA response from `dev`; returns its tag, AoE error
/// and the offset of the ATA header.
fn same_vlan(a: Option<u16>, b: Option<u16>) -> bool {
    a.map(|t| t & 0x0fff) == b.map(|t| t & 0x0fff)
}

fn check_ata_response(
    f: &[u8],
    dev: &Device,
    vlan: Option<u16>,
) -> Option<(u32, Option<ErrorCode>, usize)> {
    let (eth, at) = EthRepr::parse(f).ok()?;
    if eth.ethertype != ETHERTYPE_AOE || eth.src != dev.mac || !same_vlan(eth.vlan_tci, vlan) {
        return None;
    }
    let p = aoe::Packet::new_checked(&f[at..]).ok()?;
    let h = aoe::Repr::parse(&p).ok()?;
    if !h.response || h.command != Command::Ata || h.shelf != dev.shelf || h.slot != dev.slot {
        return None;
    }
    if h.error.is_none() {
        AtaPacket::new_checked(p.arg()).ok()?;
    }
    Some((h.tag, h.error, at + HEADER_LEN))
}

fn parse_response(f: &[u8], vlan: Option<u16>) -> Option<Response> {
    let (eth, at) = EthRepr::parse(f).ok()?;
    if eth.ethertype != ETHERTYPE_AOE || !same_vlan(eth.vlan_tci, vlan) {
        return None;
    }
    let p = aoe::Packet::new_checked(&f[at..]).ok()?;
    let header = aoe::Repr::parse(&p).ok()?;
    if !header.response {
        return None;
    }
    Some(Response {
        src: eth.src,
        header,
        arg: p.arg().to_vec(),
    })
}
