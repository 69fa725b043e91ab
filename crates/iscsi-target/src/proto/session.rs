//! Full feature phase of one single-connection session (RFC 7143 sections 3.2, 4.2, 11):
//! SCSI Command with immediate and unsolicited data, R2T-driven Data-Out,
//! Data-In with phase-collapsed status, SCSI Response with sense, NOP-Out/NOP-In
//! both ways, Text (SendTargets), Logout, Task Management, Reject, and the
//! CmdSN/ExpCmdSN/MaxCmdSN window and StatSN.
//!
//! Sans-IO: [`Session::handle`] takes a received PDU, [`Session::complete`] a
//! finished SCSI command, [`Session::handle_timeout`] the time; the driver pulls
//! PDUs to send ([`Session::poll_transmit`]), commands to execute
//! ([`Session::poll_exec`]) and events ([`Session::poll_event`]).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use anyboot_wire::iscsi::{self, flags, Bhs, Opcode, BHS_LEN, RESERVED_TAG};
use anyboot_wire::scsi::{asc, status, Sense, SenseKey};
use bytes::Bytes;
use tracing::{debug, warn};

use super::login::{Params, SessionKind};
use super::scsi::{self, Response};
use super::Pdu;

/// Largest write (Expected Data Transfer Length) one command may carry.
pub const MAX_WRITE_BYTES: u32 = scsi::MAX_TRANSFER_BYTES as u32 + 64 * 1024;
/// Longest Text (SendTargets) answer, across continuation PDUs.
pub const MAX_TEXT_ANSWER: usize = 1 << 20;
/// Data-Out bytes a session may hold in buffers before R2Ts wait.
pub const WRITE_BUDGET: usize = 32 << 20;
/// Data-In bytes a session's executing commands may produce before further
/// reads wait for completions.
pub const READ_BUDGET: usize = 64 << 20;

/// A command for the driver to execute.
#[derive(Debug)]
pub struct ExecRequest {
    /// Opaque id to pass back to [`Session::complete`].
    pub id: u64,
    pub lun: u16,
    pub cdb: [u8; 16],
    pub data: Vec<u8>,
}

/// Things the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// LOGICAL UNIT RESET: reset the LU's shared state (SPC-2 reservations).
    LunReset(u16),
    /// TARGET WARM/COLD RESET: reset every LU of the target.
    TargetReset,
    /// Send what is queued, then close the connection (logout, cold reset,
    /// dead peer, protocol violation).
    Close,
}

/// Fixed facts about the session the driver knows at login.
#[derive(Debug, Clone)]
pub struct Setup {
    pub kind: SessionKind,
    pub params: Params,
    pub exp_cmd_sn: u32,
    pub stat_sn: u32,
    pub queue_depth: u32,
    /// LUN -> logical block size, for write residual checks.
    pub luns: Vec<(u16, u32)>,
    /// Write-protected LUNs: block writes are refused with DATA PROTECT
    /// before any Data-Out size check.
    pub read_only_luns: Vec<u16>,
    /// `TargetName`/`TargetAddress` pairs this initiator may see (SendTargets).
    pub visible: Vec<(String, String)>,
    /// This session's target, for `SendTargets=` without a value.
    pub own_target: Option<String>,
    /// Keepalive: NOP-In after this much silence; `None`: never.
    pub nop_interval: Option<Duration>,
}

#[derive(Debug)]
struct R2t {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum TaskState {
    /// Waiting for Data-Out.
    Collecting,
    Executing,
}

#[derive(Debug)]
struct Task {
    id: u64,
    lun: u16,
    cdb: [u8; 16],
    edtl: u32,
    read: bool,
    state: TaskState,
    data: Vec<u8>,
    /// Bytes of Data-Out received.
    received: u32,
    /// Whether the unsolicited burst is over (F bit seen or none expected).
    unsolicited_done: bool,
    unsolicited_data_sn: u32,
    r2ts: Vec<R2t>,
    next_r2t_offset: u32,
    r2t_sn: u32,
    /// Data-In budget this command holds while it executes.
    read_cost: usize,
    /// Whether Data-Out is expected (W bit and a non-zero EDTL).
    write: bool,
    /// Residual flag and count when the CDB and the Expected Data Transfer
    /// Length disagree about the Data-Out size.
    residual: Option<(u8, u32)>,
    /// Answer with this sense instead of executing, once the Data-Out is in
    /// (write protection, or a Data-Out size WRITE SAME / COMPARE AND WRITE
    /// cannot work with).
    refuse: Option<Sense>,
}

/// The full-feature-phase state machine of one connection.
#[derive(Debug)]
pub struct Session {
    s: Setup,
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    tasks: HashMap<u32, Task>,
    ttts: HashMap<u32, u32>,
    next_ttt: u32,
    next_id: u64,
    buffered: usize,
    /// Data-In bytes of commands handed out for execution.
    reading: usize,
    /// Commands waiting for read budget, in arrival order.
    deferred: VecDeque<ExecRequest>,
    out: VecDeque<Pdu>,
    exec: VecDeque<ExecRequest>,
    events: VecDeque<Event>,
    last_rx: Option<Instant>,
    ping: Option<(u32, Instant)>,
    /// The initiator answered at least one of our pings.
    answers_pings: bool,
    /// The rest of a Text answer longer than one PDU, and its TTT.
    text_pending: Option<(u32, Bytes)>,
    closing: bool,
}

fn sn_lt(a: u32, b: u32) -> bool {
    // Serial number arithmetic (RFC 1982), 32 bits.
    a != b && b.wrapping_sub(a) < 1 << 31
}

impl Session {
    pub fn new(setup: Setup) -> Self {
        let exp = setup.exp_cmd_sn;
        let depth = setup.queue_depth.max(1);
        Self {
            stat_sn: setup.stat_sn,
            exp_cmd_sn: exp,
            max_cmd_sn: exp.wrapping_add(depth - 1),
            s: setup,
            tasks: HashMap::new(),
            ttts: HashMap::new(),
            next_ttt: 1,
            next_id: 1,
            buffered: 0,
            reading: 0,
            deferred: VecDeque::new(),
            out: VecDeque::new(),
            exec: VecDeque::new(),
            events: VecDeque::new(),
            last_rx: None,
            ping: None,
            answers_pings: false,
            text_pending: None,
            closing: false,
        }
    }

    pub fn params(&self) -> &Params {
        &self.s.params
    }

    /// PDUs to send, in order.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        self.out.pop_front()
    }

    /// Commands to run.
    #[must_use]
    pub fn poll_exec(&mut self) -> Option<ExecRequest> {
        self.exec.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] wants to be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let iv = self.s.nop_interval?;
        match self.ping {
            Some((_, sent)) => Some(sent + iv),
            None => self.last_rx.map(|t| t + iv),
        }
    }

    /// Number of commands received and not yet answered.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Keepalive: pings after silence, gives up on a peer that answered pings
    /// before and stopped. Initiators that never answer (iPXE ignores NOP-In
    /// pings) are left to TCP keepalive instead of being cut off when idle.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(iv) = self.s.nop_interval else {
            return;
        };
        if self.last_rx.is_none() {
            self.last_rx = Some(now);
        }
        match self.ping {
            Some((_, sent)) if now >= sent + iv && self.answers_pings => {
                warn!("initiator did not answer a NOP-In ping; closing");
                self.close();
            }
            Some((_, sent)) if now >= sent + iv => {
                // Never answered one: stop asking until it talks again.
                self.ping = None;
                self.last_rx = Some(now + Duration::from_secs(3600));
            }
            Some(_) => {}
            None => {
                if self.last_rx.is_some_and(|t| now >= t + iv) {
                    let ttt = self.alloc_ttt();
                    let mut p = self.header(Opcode::NopIn, flags::FINAL, RESERVED_TAG);
                    let mut b = p.bhs_mut();
                    b.set_lun(0);
                    b.set_word20(ttt);
                    b.set_word24(self.stat_sn);
                    self.push_sn(p, false);
                    self.ping = Some((ttt, now));
                }
            }
        }
    }

    fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.events.push_back(Event::Close);
        }
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    fn window_max(&mut self) -> u32 {
        // Commands that hold task slots shrink the window; MaxCmdSN never
        // goes backwards (initiators ignore a smaller value).
        let depth = self.s.queue_depth.max(1) as usize;
        let free = depth.saturating_sub(self.tasks.len()) as u32;
        let m = self.exp_cmd_sn.wrapping_add(free).wrapping_sub(1);
        if sn_lt(self.max_cmd_sn, m) {
            self.max_cmd_sn = m;
        }
        self.max_cmd_sn
    }

    fn header(&self, op: Opcode, flags_byte: u8, itt: u32) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        let mut b = Bhs::new_unchecked(&mut bhs[..]);
        b.set_opcode(op, false);
        b.set_flags(flags_byte);
        b.set_itt(itt);
        Pdu::new(bhs, Bytes::new())
    }

    /// Fills StatSN (advancing it when `advance`), ExpCmdSN and MaxCmdSN, then queues.
    fn push_sn(&mut self, mut p: Pdu, advance: bool) {
        let max = self.window_max();
        let len = p.data.len();
        let mut b = p.bhs_mut();
        if advance {
            b.set_word24(self.stat_sn);
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        b.set_word28(self.exp_cmd_sn);
        b.set_word32(max);
        b.set_data_segment_len(len);
        self.out.push_back(p);
    }

    fn reject(&mut self, reason: u8, bhs: &[u8; BHS_LEN]) {
        let mut p = self.header(Opcode::Reject, flags::FINAL, RESERVED_TAG);
        p.bhs_mut().set_specific2([reason, 0]);
        p.data = Bytes::copy_from_slice(bhs);
        self.push_sn(p, true);
    }

    /// Checks CmdSN of a non-immediate command and advances ExpCmdSN. Returns
    /// false when the command must be dropped (outside the window).
    fn accept_cmd_sn(&mut self, immediate: bool, cmd_sn: u32) -> bool {
        if immediate {
            return true;
        }
        let max = self.max_cmd_sn;
        if sn_lt(cmd_sn, self.exp_cmd_sn) || sn_lt(max, cmd_sn) {
            warn!(
                cmd_sn,
                exp = self.exp_cmd_sn,
                max,
                "CmdSN outside the window; dropped"
            );
            return false;
        }
        self.exp_cmd_sn = cmd_sn.wrapping_add(1);
        true
    }

    /// Handles one PDU received in full feature phase.
    pub fn handle(&mut self, now: Instant, pdu: Pdu) {
        self.last_rx = Some(now);
        if self.closing {
            return;
        }
        let b = pdu.bhs();
        let op = b.opcode();
        let discovery = self.s.kind == SessionKind::Discovery;
        match op {
            Opcode::NopOut => self.nop_out(&pdu),
            Opcode::ScsiCommand if !discovery => self.scsi_command(pdu),
            Opcode::DataOut if !discovery => self.data_out(pdu),
            Opcode::TaskMgmtRequest if !discovery => self.task_mgmt(&pdu),
            Opcode::TextRequest => self.text(&pdu),
            Opcode::LogoutRequest => self.logout(&pdu),
            Opcode::ScsiCommand | Opcode::DataOut | Opcode::TaskMgmtRequest => {
                warn!(?op, "not allowed in a discovery session");
                self.reject(0x04, &pdu.bhs);
            }
            Opcode::SnackRequest => {
                // ErrorRecoveryLevel 0: no SNACK.
                self.reject(0x05, &pdu.bhs);
            }
            Opcode::LoginRequest => {
                self.reject(0x04, &pdu.bhs);
            }
            _ => {
                warn!(?op, "unexpected opcode from initiator");
                self.reject(0x05, &pdu.bhs);
            }
        }
    }

    fn nop_out(&mut self, pdu: &Pdu) {
        let b = pdu.bhs();
        let itt = b.itt();
        if !self.accept_cmd_sn(b.immediate(), b.cmd_sn()) {
            return;
        }
        if itt == RESERVED_TAG {
            // An answer to our ping, or a bare CmdSN/ExpStatSN update.
            if let Some((ttt, _)) = self.ping {
                if b.ttt() == ttt {
                    self.ping = None;
                    self.answers_pings = true;
                }
            }
            return;
        }
        let mut p = self.header(Opcode::NopIn, flags::FINAL, itt);
        p.bhs_mut().set_lun_bytes(b.lun_bytes());
        p.bhs_mut().set_word20(RESERVED_TAG);
        let max = self.s.params.max_send_data_segment as usize;
        p.data = pdu.data.slice(..pdu.data.len().min(max));
        self.push_sn(p, true);
    }

    fn block_size(&self, lun: u16) -> Option<u32> {
        self.s
            .luns
            .iter()
            .find(|(l, _)| *l == lun)
            .map(|(_, bs)| *bs)
    }

    fn respond_now(&mut self, itt: u32, lun: u16, r: Response, edtl: u32, read: bool) {
        self.send_response(itt, lun, r, edtl, read, None);
    }

    fn scsi_command(&mut self, pdu: Pdu) {
        let b = pdu.bhs();
        let itt = b.itt();
        let f = b.flags();
        let read = f & flags::READ != 0;
        let write = f & flags::WRITE != 0;
        let edtl = b.expected_data_len();
        let lun = b.lun();
        let immediate = b.immediate();
        let final_bit = f & flags::FINAL != 0;
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(b.cdb());
        if !self.accept_cmd_sn(immediate, b.cmd_sn()) {
            return;
        }
        if self.tasks.contains_key(&itt) {
            warn!(itt, "initiator task tag already in use");
            self.reject(0x09, &pdu.bhs);
            return;
        }
        if pdu.ahs_len > 0 {
            // Extended CDBs (AHS type 1) are not supported.
            let r = Response::check(Sense::invalid_cdb(), false);
            self.respond_now(itt, lun, r, edtl, read);
            return;
        }
        if self.tasks.len() >= 2 * self.s.queue_depth.max(1) as usize {
            self.respond_now(
                itt,
                lun,
                Response::status(status::TASK_SET_FULL),
                edtl,
                read,
            );
            return;
        }
        let p = self.s.params;
        let imm = pdu.data.len() as u32;
        if imm > 0 && (!write || !p.immediate_data || imm > edtl || imm > p.first_burst) {
            warn!(itt, imm, "immediate data not allowed here");
            self.reject(0x09, &pdu.bhs);
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut task = Task {
            id,
            lun,
            cdb,
            edtl,
            read,
            state: TaskState::Collecting,
            data: Vec::new(),
            received: imm,
            unsolicited_done: final_bit || p.initial_r2t,
            unsolicited_data_sn: 0,
            r2ts: Vec::new(),
            next_r2t_offset: 0,
            r2t_sn: 0,
            read_cost: 0,
            write: write && edtl > 0,
            residual: None,
            refuse: None,
        };
        if write && edtl > 0 {
            if edtl > MAX_WRITE_BYTES {
                // Swallow what the initiator sends unsolicited, answer at once.
                let r = Response::check(Sense::invalid_cdb(), false);
                self.respond_now(itt, lun, r, edtl, read);
                return;
            }
            let unsolicited = if p.initial_r2t {
                imm
            } else {
                edtl.min(p.first_burst)
            };
            task.next_r2t_offset = unsolicited.max(imm);
            task.data = Vec::with_capacity(task.next_r2t_offset as usize);
            task.data.extend_from_slice(&pdu.data);
            task.data.resize(task.next_r2t_offset as usize, 0);
            self.buffered += task.data.len();
            if !task.unsolicited_done && task.received >= unsolicited {
                // Everything unsolicited already came as immediate data.
                task.unsolicited_done = true;
            }
        }
        if let Some(bs) = self.block_size(lun) {
            if let Some((need, strict)) = scsi::data_out_len(&cdb, bs) {
                let sent = if write { edtl as u64 } else { 0 };
                let bad_size = Some(Sense::invalid_cdb());
                if need > sent {
                    task.residual = Some((flags::OVERFLOW, (need - sent) as u32));
                    // A plain write covers only the blocks the initiator sends
                    // (RFC 7143 section 11.4.5.2: the residual says what was not).
                    if strict || !scsi::truncate_transfer(&mut task.cdb, sent / bs as u64) {
                        task.refuse = bad_size;
                    }
                } else if need < sent {
                    task.residual = Some((flags::UNDERFLOW, (sent - need) as u32));
                    if strict {
                        task.refuse = bad_size;
                    }
                }
                if self.s.read_only_luns.contains(&lun) {
                    task.refuse = Some(Sense::new(SenseKey::DataProtect, asc::WRITE_PROTECTED));
                }
            }
        }
        self.tasks.insert(itt, task);
        self.progress(itt);
    }

    /// Moves a task on: more R2Ts, or execution once all data is in.
    fn progress(&mut self, itt: u32) {
        let p = self.s.params;
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if task.state != TaskState::Collecting {
            return;
        }
        if task.write && task.received < task.edtl {
            if !task.unsolicited_done {
                return;
            }
            // Issue R2Ts up to MaxOutstandingR2T, within the write budget.
            let mut new = Vec::new();
            while (task.r2ts.len() as u32) < p.max_outstanding_r2t
                && task.next_r2t_offset < task.edtl
            {
                let len = (task.edtl - task.next_r2t_offset).min(p.max_burst);
                if self.buffered + len as usize > WRITE_BUDGET && self.buffered > 0 {
                    break;
                }
                let ttt = self.next_ttt;
                self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
                if self.next_ttt == RESERVED_TAG {
                    self.next_ttt = 1;
                }
                task.r2ts.push(R2t {
                    ttt,
                    offset: task.next_r2t_offset,
                    len,
                    received: 0,
                    next_data_sn: 0,
                });
                task.data.resize((task.next_r2t_offset + len) as usize, 0);
                self.buffered += len as usize;
                new.push((ttt, task.next_r2t_offset, len, task.r2t_sn, task.lun));
                task.next_r2t_offset += len;
                task.r2t_sn += 1;
            }
            for (ttt, offset, len, sn, lun) in new {
                self.ttts.insert(ttt, itt);
                let mut r = self.header(Opcode::ReadyToTransfer, flags::FINAL, itt);
                let mut b = r.bhs_mut();
                b.set_lun(lun);
                b.set_word20(ttt);
                b.set_word24(self.stat_sn);
                b.set_word36(sn);
                b.set_word40(offset);
                b.set_word44(len);
                self.push_sn(r, false);
            }
            return;
        }
        // All data is in: execute (or refuse a write that falls short).
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if let Some(sense) = task.refuse {
            // Refused before touching the medium.
            let r = Response::check(sense, false);
            let (lun, edtl, read, res) = (task.lun, task.edtl, task.read, task.residual);
            let t = self.tasks.remove(&itt);
            self.release(t);
            self.send_response(itt, lun, r, edtl, read, res);
            return;
        }
        task.state = TaskState::Executing;
        let data = std::mem::take(&mut task.data);
        if task.read {
            task.read_cost = (task.edtl as usize).min(scsi::MAX_TRANSFER_BYTES as usize);
        }
        let cost = task.read_cost;
        let req = ExecRequest {
            id: task.id,
            lun: task.lun,
            cdb: task.cdb,
            data,
        };
        if cost > 0 && (self.reading + cost > READ_BUDGET || !self.deferred.is_empty()) {
            self.deferred.push_back(req);
        } else {
            self.reading += cost;
            self.exec.push_back(req);
        }
    }

    /// Hands deferred commands out as the read budget allows (FIFO).
    fn run_deferred(&mut self) {
        while let Some(req) = self.deferred.front() {
            let cost = self
                .tasks
                .values()
                .find(|t| t.id == req.id)
                .map(|t| t.read_cost);
            match cost {
                // Aborted while waiting.
                None => {
                    self.deferred.pop_front();
                }
                Some(c) if self.reading == 0 || self.reading + c <= READ_BUDGET => {
                    self.reading += c;
                    if let Some(r) = self.deferred.pop_front() {
                        self.exec.push_back(r);
                    }
                }
                Some(_) => break,
            }
        }
    }

    fn release(&mut self, t: Option<Task>) {
        if let Some(t) = t {
            for r in &t.r2ts {
                self.ttts.remove(&r.ttt);
            }
            let held = (t.next_r2t_offset as usize).max(t.data.len());
            self.buffered = self.buffered.saturating_sub(held);
            if t.state == TaskState::Executing && !self.deferred.iter().any(|d| d.id == t.id) {
                self.reading = self.reading.saturating_sub(t.read_cost);
            }
        }
    }

    fn data_out(&mut self, pdu: Pdu) {
        let b = pdu.bhs();
        let itt = b.itt();
        let ttt = b.ttt();
        let offset = b.word40();
        let data_sn = b.word36();
        let final_bit = b.flags() & flags::FINAL != 0;
        let len = pdu.data.len() as u32;
        let Some(task) = self.tasks.get_mut(&itt) else {
            // Data for an aborted or answered task: dropped (RFC 7143 4.2.3.5).
            debug!(itt, "Data-Out for an unknown task; dropped");
            return;
        };
        if task.state != TaskState::Collecting {
            debug!(itt, "Data-Out after all data arrived; dropped");
            return;
        }
        let end = offset.checked_add(len);
        // Any sequence error ends the task (ErrorRecoveryLevel 0 has no
        // SNACK): Reject the PDU, answer the command with ABORTED COMMAND,
        // drop its later Data-Out. The connection itself stays up.
        let problem: Option<&'static str> = if ttt == RESERVED_TAG {
            let limit = self.s.params.first_burst.min(task.edtl);
            if task.unsolicited_done || self.s.params.initial_r2t || end.is_none_or(|e| e > limit) {
                Some("unsolicited Data-Out not allowed here")
            } else if data_sn != task.unsolicited_data_sn {
                Some("unexpected DataSN")
            } else if (offset + len) as usize > task.data.len() || offset != task.received {
                Some("unsolicited Data-Out out of order")
            } else {
                task.unsolicited_data_sn += 1;
                let (o, e) = (offset as usize, (offset + len) as usize);
                task.data[o..e].copy_from_slice(&pdu.data);
                task.received += len;
                if final_bit {
                    task.unsolicited_done = true;
                }
                None
            }
        } else {
            match task.r2ts.iter().position(|r| r.ttt == ttt) {
                None => Some("Data-Out with an unknown target transfer tag"),
                Some(i) => {
                    let r = &mut task.r2ts[i];
                    let ok = end.is_some_and(|e| offset >= r.offset && e <= r.offset + r.len);
                    if !ok || offset != r.offset + r.received {
                        Some("Data-Out outside its R2T")
                    } else if data_sn != r.next_data_sn {
                        Some("unexpected DataSN")
                    } else {
                        r.next_data_sn += 1;
                        r.received += len;
                        let (o, e) = (offset as usize, (offset + len) as usize);
                        task.data[o..e].copy_from_slice(&pdu.data);
                        task.received += len;
                        if r.received >= r.len || final_bit {
                            let done = task.r2ts.remove(i);
                            self.ttts.remove(&done.ttt);
                        }
                        None
                    }
                }
            }
        };
        if let Some(why) = problem {
            warn!(itt, ttt, offset, len, data_sn, why);
            self.reject(0x09, &pdu.bhs);
            if let Some(t) = self.tasks.remove(&itt) {
                let (lun, edtl, read) = (t.lun, t.edtl, t.read);
                let sense = Sense::new(SenseKey::AbortedCommand, asc::DATA_PHASE_ERROR);
                let r = Response::check(sense, false);
                self.release(Some(t));
                self.send_response(itt, lun, r, edtl, read, None);
            }
            return;
        }
        self.progress(itt);
    }

    /// A command finished executing.
    pub fn complete(&mut self, id: u64, resp: Response) {
        let Some((&itt, _)) = self.tasks.iter().find(|(_, t)| t.id == id) else {
            // Aborted meanwhile: the TMF response already went out.
            return;
        };
        let Some(t) = self.tasks.remove(&itt) else {
            return;
        };
        let (lun, edtl, read, res) = (t.lun, t.edtl, t.read, t.residual);
        self.release(Some(t));
        self.send_response(itt, lun, resp, edtl, read, res);
        self.run_deferred();
        // Freed budget may let other tasks' R2Ts go out.
        let waiting: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Collecting && t.r2ts.is_empty())
            .map(|(i, _)| *i)
            .collect();
        for itt in waiting {
            self.progress(itt);
        }
    }

    /// Data-In (with phase-collapsed status when GOOD) or a SCSI Response.
    fn send_response(
        &mut self,
        itt: u32,
        lun: u16,
        r: Response,
        edtl: u32,
        read: bool,
        write_residual: Option<(u8, u32)>,
    ) {
        let allowed = if read { edtl as usize } else { 0 };
        let mut data = Bytes::from(r.data);
        let (mut res_flags, mut residual) = (0u8, 0u32);
        if let Some((f, n)) = write_residual {
            res_flags = f;
            residual = n;
        } else if data.len() > allowed {
            res_flags = flags::OVERFLOW;
            residual = (data.len() - allowed) as u32;
            data.truncate(allowed);
        } else if read && data.len() < allowed {
            res_flags = flags::UNDERFLOW;
            residual = (allowed - data.len()) as u32;
        }
        let max_seg = self.s.params.max_send_data_segment.max(512) as usize;
        let burst = self.s.params.max_burst.max(512) as usize;
        let mut data_sn = 0u32;
        let collapse = r.status == status::GOOD && r.sense.is_empty() && !data.is_empty();
        let mut off = 0usize;
        while off < data.len() {
            let seq_end = (off / burst + 1) * burst;
            let n = (data.len() - off).min(max_seg).min(seq_end - off);
            let last = off + n == data.len();
            let end_of_seq = last || off + n == seq_end;
            let mut fl = if end_of_seq { flags::FINAL } else { 0 };
            if last && collapse {
                fl |= flags::STATUS | res_flags;
            }
            let mut p = self.header(Opcode::DataIn, fl, itt);
            p.data = data.slice(off..off + n);
            {
                let mut b = p.bhs_mut();
                b.set_lun(lun);
                b.set_word20(RESERVED_TAG);
                b.set_word36(data_sn);
                b.set_word40(off as u32);
            }
            if last && collapse {
                p.bhs_mut().set_specific2([0, r.status]);
                p.bhs_mut().set_word44(residual);
                self.push_sn(p, true);
            } else {
                self.push_sn(p, false);
            }
            data_sn += 1;
            off += n;
        }
        if collapse {
            return;
        }
        let mut p = self.header(Opcode::ScsiResponse, flags::FINAL | res_flags, itt);
        p.bhs_mut().set_specific2([0, r.status]);
        p.bhs_mut().set_word36(data_sn);
        p.bhs_mut().set_word44(residual);
        if !r.sense.is_empty() {
            let mut d = Vec::with_capacity(2 + r.sense.len());
            d.extend_from_slice(&(r.sense.len() as u16).to_be_bytes());
            d.extend_from_slice(&r.sense);
            p.data = d.into();
        }
        self.push_sn(p, true);
    }

    fn abort_where(&mut self, pred: impl Fn(&Task) -> bool) -> usize {
        let itts: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| pred(t))
            .map(|(i, _)| *i)
            .collect();
        for itt in &itts {
            let t = self.tasks.remove(itt);
            self.release(t);
        }
        self.run_deferred();
        itts.len()
    }

    fn task_mgmt(&mut self, pdu: &Pdu) {
        let b = pdu.bhs();
        let itt = b.itt();
        if !self.accept_cmd_sn(b.immediate(), b.cmd_sn()) {
            return;
        }
        let function = b.flags() & 0x7f;
        let lun = b.lun();
        let rtt = b.word20();
        let ref_cmd_sn = b.word32();
        let lun_known = self.block_size(lun).is_some();
        let response: u8 = match function {
            // ABORT TASK
            1 => {
                if self.tasks.get(&rtt).is_some_and(|t| t.lun == lun) {
                    let t = self.tasks.remove(&rtt);
                    self.release(t);
                    0
                } else if sn_lt(ref_cmd_sn, self.exp_cmd_sn) {
                    // Already answered: "task does not exist".
                    1
                } else {
                    0
                }
            }
            // ABORT TASK SET, CLEAR TASK SET
            2 | 4 => {
                if !lun_known {
                    2
                } else {
                    self.abort_where(|t| t.lun == lun);
                    0
                }
            }
            // LOGICAL UNIT RESET
            5 => {
                if !lun_known {
                    2
                } else {
                    self.abort_where(|t| t.lun == lun);
                    self.events.push_back(Event::LunReset(lun));
                    0
                }
            }
            // TARGET WARM RESET, TARGET COLD RESET
            6 | 7 => {
                self.abort_where(|_| true);
                self.events.push_back(Event::TargetReset);
                0
            }
            // CLEAR ACA: no ACA (NACA is never accepted).
            3 => 5,
            // TASK REASSIGN needs ErrorRecoveryLevel 2.
            8 => 4,
            _ => 255,
        };
        debug!(function, lun, rtt, response, "task management");
        let mut p = self.header(Opcode::TaskMgmtResponse, flags::FINAL, itt);
        p.bhs_mut().set_specific2([response, 0]);
        self.push_sn(p, true);
        if function == 7 {
            self.close();
        }
    }

    fn text(&mut self, pdu: &Pdu) {
        let b = pdu.bhs();
        let itt = b.itt();
        if !self.accept_cmd_sn(b.immediate(), b.cmd_sn()) {
            return;
        }
        // The initiator asks for the next part of a long answer (RFC 7143
        // section 11.10.4: empty Text Request carrying our TTT).
        if b.ttt() != RESERVED_TAG {
            match self.text_pending.take() {
                Some((ttt, rest)) if ttt == b.ttt() => self.send_text(itt, rest),
                _ => self.reject(0x09, &pdu.bhs),
            }
            return;
        }
        // A new request abandons an unfinished answer.
        self.text_pending = None;
        let mut out = Vec::new();
        match iscsi::parse_text(&pdu.data) {
            Ok(keys) => {
                for (k, v) in keys {
                    if k == "SendTargets" {
                        let discovery = self.s.kind == SessionKind::Discovery;
                        for (name, addr) in &self.s.visible {
                            let want = match v {
                                "All" => discovery,
                                "" => self.s.own_target.as_deref() == Some(name.as_str()),
                                n => n.eq_ignore_ascii_case(name),
                            };
                            if want {
                                iscsi::emit_text(&mut out, "TargetName", name);
                                iscsi::emit_text(&mut out, "TargetAddress", addr);
                            }
                        }
                    } else {
                        iscsi::emit_text(&mut out, k, "NotUnderstood");
                    }
                }
            }
            Err(_) => {
                self.reject(0x09, &pdu.bhs);
                return;
            }
        }
        if out.len() > MAX_TEXT_ANSWER {
            warn!(
                len = out.len(),
                "text answer cut to {MAX_TEXT_ANSWER} bytes"
            );
            let cut = out[..MAX_TEXT_ANSWER]
                .iter()
                .rposition(|&c| c == 0)
                .map_or(0, |i| i + 1);
            out.truncate(cut);
        }
        self.send_text(itt, out.into());
    }

    /// Sends one Text Response; what does not fit in the initiator's
    /// MaxRecvDataSegmentLength waits (C bit set, a TTT to ask for the rest).
    fn send_text(&mut self, itt: u32, data: Bytes) {
        let max = self.s.params.max_send_data_segment.max(512) as usize;
        let mut p = self.header(Opcode::TextResponse, flags::FINAL, itt);
        if data.len() > max {
            let ttt = self.alloc_ttt();
            p.bhs_mut().set_flags(flags::CONTINUE);
            p.bhs_mut().set_word20(ttt);
            p.data = data.slice(..max);
            self.text_pending = Some((ttt, data.slice(max..)));
        } else {
            p.bhs_mut().set_word20(RESERVED_TAG);
            p.data = data;
        }
        self.push_sn(p, true);
    }

    fn logout(&mut self, pdu: &Pdu) {
        let b = pdu.bhs();
        let itt = b.itt();
        if !self.accept_cmd_sn(b.immediate(), b.cmd_sn()) {
            return;
        }
        let reason = b.flags() & 0x7f;
        // 0: close session, 1: close connection (same here: one connection);
        // 2: remove for recovery needs ErrorRecoveryLevel 2.
        let response = if reason == 2 { 2 } else { 0 };
        self.abort_where(|_| true);
        let mut p = self.header(Opcode::LogoutResponse, flags::FINAL, itt);
        p.bhs_mut().set_specific2([response, 0]);
        self.push_sn(p, true);
        self.close();
    }
}

#[cfg(test)]
mod tests;
