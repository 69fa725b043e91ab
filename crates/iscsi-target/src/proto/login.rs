//! The login phase (RFC 7143 sections 6 and 13, 11.12/11.13): security negotiation with
//! AuthMethod None or CHAP (mutual, MD5 or SHA-256), operational parameter
//! negotiation with the section 13 defaults, ranges and result functions, and
//! the move to full feature phase. Sans-IO: login PDUs in, login responses out.

use std::sync::Arc;

use anyboot_wire::iscsi::{self, flags, Bhs, Opcode, BHS_LEN};
use rand::RngCore;

use super::chap::{self, Algorithm};
use super::Pdu;

/// CHAP credentials of a target (or of discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: String,
    /// (user, secret) the target answers with in mutual CHAP.
    pub mutual: Option<(String, String)>,
}

/// What the login phase needs to know about one target.
#[derive(Debug, Clone)]
pub struct TargetAuth {
    pub iqn: String,
    pub alias: Option<String>,
    /// Initiator names allowed; empty: all.
    pub allow: Vec<String>,
    pub chap: Option<ChapCredentials>,
}

impl TargetAuth {
    /// Whether `initiator` may log in to (and discover) this target.
    pub fn admits(&self, initiator: &str) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|a| a.eq_ignore_ascii_case(initiator))
    }
}

/// Our side of the operational parameters (what we offer and accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// MaxRecvDataSegmentLength we declare (what we accept per PDU).
    pub max_recv_data_segment: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub max_outstanding_r2t: u32,
    /// Whether we accept unsolicited data (InitialR2T=No, ImmediateData=Yes).
    pub allow_unsolicited: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_recv_data_segment: 256 * 1024,
            max_burst: 1024 * 1024,
            first_burst: 256 * 1024,
            max_outstanding_r2t: 8,
            allow_unsolicited: true,
        }
    }
}

/// Negotiated session and connection parameters (RFC 7143 section 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment we may send (the initiator's declaration).
    pub max_send_data_segment: u32,
    /// Largest data segment we accept (our declaration).
    pub max_recv_data_segment: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
}

impl Default for Params {
    /// The section 13 defaults.
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            max_send_data_segment: 8192,
            max_recv_data_segment: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

/// Whether a session is for discovery or for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    Discovery,
    /// Index into the target list.
    Normal(usize),
}

/// A finished login.
#[derive(Debug, Clone)]
pub struct Established {
    pub kind: SessionKind,
    pub initiator: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub params: Params,
    /// ExpCmdSN at the start of full feature phase.
    pub exp_cmd_sn: u32,
    /// Next StatSN to use.
    pub stat_sn: u32,
}

/// What to do after a login request.
#[derive(Debug)]
#[must_use]
pub enum Step {
    /// Send this response and wait for the next request.
    Continue(Pdu),
    /// Send this response; full feature phase starts.
    Done(Pdu, Box<Established>),
    /// Send this (error) response, then close the connection.
    Fail(Pdu),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// Nothing chosen yet.
    Start,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    AwaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    AwaitResponse {
        alg: Algorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
}

/// Login status class/detail pairs (RFC 7143 section 11.13.5).
pub mod status {
    pub const SUCCESS: [u8; 2] = [0, 0];
    pub const INITIATOR_ERROR: [u8; 2] = [2, 0];
    pub const AUTH_FAILED: [u8; 2] = [2, 1];
    pub const FORBIDDEN: [u8; 2] = [2, 2];
    pub const NOT_FOUND: [u8; 2] = [2, 3];
    pub const UNSUPPORTED_VERSION: [u8; 2] = [2, 5];
    pub const MISSING_PARAMETER: [u8; 2] = [2, 7];
    pub const SESSION_TYPE_UNSUPPORTED: [u8; 2] = [2, 9];
    pub const NO_SESSION: [u8; 2] = [2, 0x0a];
    pub const INVALID_DURING_LOGIN: [u8; 2] = [2, 0x0b];
    pub const OUT_OF_RESOURCES: [u8; 2] = [3, 2];
}

/// Longest login text we collect across C-bit continuations.
const MAX_LOGIN_TEXT: usize = 64 * 1024;

/// The login state machine of one connection.
#[derive(Debug)]
pub struct Login {
    targets: Arc<Vec<TargetAuth>>,
    discovery_chap: Option<ChapCredentials>,
    limits: Limits,
    queue_depth: u32,
    tsih: u16,
    // Learnt from the first request.
    first: bool,
    initiator: Option<String>,
    kind: Option<SessionKind>,
    isid: [u8; 6],
    itt: u32,
    stat_sn: u32,
    exp_cmd_sn: u32,
    stage: u8,
    auth: Auth,
    params: Params,
    declared_mrdsl: bool,
    partial: Vec<u8>,
}

impl Login {
    /// `tsih` is the session handle given if the login succeeds; `stat_sn` the
    /// first StatSN (any value; tests pass a fixed one).
    pub fn new(
        targets: Arc<Vec<TargetAuth>>,
        discovery_chap: Option<ChapCredentials>,
        limits: Limits,
        queue_depth: u32,
        tsih: u16,
        stat_sn: u32,
    ) -> Self {
        let params = Params {
            max_recv_data_segment: 8192,
            ..Params::default()
        };
        Self {
            targets,
            discovery_chap,
            limits,
            queue_depth: queue_depth.max(1),
            tsih,
            first: true,
            initiator: None,
            kind: None,
            isid: [0; 6],
            itt: 0,
            stat_sn,
            exp_cmd_sn: 0,
            stage: 0,
            auth: Auth::Start,
            params,
            declared_mrdsl: false,
            partial: Vec::new(),
        }
    }

    fn credentials(&self) -> Option<&ChapCredentials> {
        match &self.kind {
            Some(SessionKind::Normal(i)) => self.targets.get(*i).and_then(|t| t.chap.as_ref()),
            Some(SessionKind::Discovery) => self.discovery_chap.as_ref(),
            None => None,
        }
    }

    fn response(&mut self, flags_byte: u8, status: [u8; 2], data: Vec<u8>) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        let mut b = Bhs::new_unchecked(&mut bhs[..]);
        b.set_opcode(Opcode::LoginResponse, false);
        b.set_flags(flags_byte);
        // Version-max and version-active: 0 (RFC 7143 section 11.13.1).
        b.set_specific2([0, 0]);
        b.set_data_segment_len(data.len());
        let mut lun = [0u8; 8];
        lun[..6].copy_from_slice(&self.isid);
        if flags_byte & 0x03 == 3 && flags_byte & flags::TRANSIT != 0 {
            lun[6..8].copy_from_slice(&self.tsih.to_be_bytes());
        }
        b.set_lun_bytes(lun);
        b.set_itt(self.itt);
        b.set_word24(self.stat_sn);
        b.set_word28(self.exp_cmd_sn);
        b.set_word32(self.exp_cmd_sn.wrapping_add(self.queue_depth - 1));
        b.set_word36(u32::from_be_bytes([status[0], status[1], 0, 0]));
        self.stat_sn = self.stat_sn.wrapping_add(1);
        Pdu::new(bhs, data.into())
    }

    fn fail(&mut self, status: [u8; 2]) -> Step {
        let csg = self.stage << 2;
        Step::Fail(self.response(csg, status, Vec::new()))
    }

    /// Handles one Login Request PDU.
    pub fn handle(&mut self, req: &Pdu, rng: &mut dyn RngCore) -> Step {
        let b = req.bhs();
        if b.opcode() != Opcode::LoginRequest {
            return self.fail(status::INVALID_DURING_LOGIN);
        }
        let f = b.flags();
        let [vmax, vmin] = b.specific2();
        let lun = b.lun_bytes();
        self.itt = b.itt();
        if self.first {
            self.isid.copy_from_slice(&lun[..6]);
            self.exp_cmd_sn = b.cmd_sn();
            if vmin > 0 || vmax < vmin {
                return self.fail(status::UNSUPPORTED_VERSION);
            }
            if u16::from_be_bytes([lun[6], lun[7]]) != 0 {
                // Adding a connection to an existing session (MaxConnections=1)
                // or reinstating one: we keep no sessions to add to.
                return self.fail(status::NO_SESSION);
            }
        }
        let csg = (f >> 2) & 3;
        let nsg = f & 3;
        let transit = f & flags::TRANSIT != 0;
        if csg != self.stage && !(self.stage == 0 && csg == 1 && self.first) {
            return self.fail(status::INITIATOR_ERROR);
        }
        if csg == 3 || csg == 2 {
            return self.fail(status::INITIATOR_ERROR);
        }
        self.stage = csg;

        // C bit: collect the text and acknowledge with an empty response.
        if self.partial.len() + req.data.len() > MAX_LOGIN_TEXT {
            return self.fail(status::OUT_OF_RESOURCES);
        }
        self.partial.extend_from_slice(&req.data);
        if f & flags::CONTINUE != 0 {
            let r = self.response(csg << 2, status::SUCCESS, Vec::new());
            return Step::Continue(r);
        }
        let text = std::mem::take(&mut self.partial);
        let keys = match iscsi::parse_text(&text) {
            Ok(k) => k,
            Err(_) => return self.fail(status::INITIATOR_ERROR),
        };
        let mut out = Vec::new();

        if self.first {
            self.first = false;
            let get = |k: &str| keys.iter().find(|(x, _)| *x == k).map(|(_, v)| *v);
            let Some(initiator) = get("InitiatorName").filter(|s| !s.is_empty()) else {
                return self.fail(status::MISSING_PARAMETER);
            };
            self.initiator = Some(initiator.to_owned());
            match get("SessionType").unwrap_or("Normal") {
                "Discovery" => self.kind = Some(SessionKind::Discovery),
                "Normal" => {
                    let Some(name) = get("TargetName") else {
                        return self.fail(status::MISSING_PARAMETER);
                    };
                    let Some(i) = self
                        .targets
                        .iter()
                        .position(|t| t.iqn.eq_ignore_ascii_case(name))
                    else {
                        return self.fail(status::NOT_FOUND);
                    };
                    if !self.targets[i].admits(initiator) {
                        return self.fail(status::FORBIDDEN);
                    }
                    self.kind = Some(SessionKind::Normal(i));
                    iscsi::emit_text(&mut out, "TargetPortalGroupTag", "1");
                    if let Some(a) = self.targets[i].alias.clone() {
                        iscsi::emit_text(&mut out, "TargetAlias", &a);
                    }
                }
                _ => return self.fail(status::SESSION_TYPE_UNSUPPORTED),
            }
            if csg == 1 && self.credentials().is_some() {
                // Skipping security negotiation while CHAP is required.
                return self.fail(status::AUTH_FAILED);
            }
            if csg == 1 {
                self.auth = Auth::Done;
            }
        }

        for (k, v) in &keys {
            match *k {
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" => {}
                "AuthMethod" | "CHAP_A" | "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => {
                    if csg != 0 {
                        return self.fail(status::INITIATOR_ERROR);
                    }
                }
                _ => {
                    if let Some(reply) = self.negotiate(k, v) {
                        iscsi::emit_text(&mut out, k, &reply);
                    }
                }
            }
        }

        if csg == 0 {
            if let Err(st) = self.security(&keys, &mut out, rng) {
                return self.fail(st);
            }
        } else if !self.declared_mrdsl {
            self.declared_mrdsl = true;
            self.params.max_recv_data_segment = self.limits.max_recv_data_segment;
            iscsi::emit_text(
                &mut out,
                "MaxRecvDataSegmentLength",
                &self.limits.max_recv_data_segment.to_string(),
            );
        }

        // Transit when asked and allowed; the target may decline by clearing T.
        let can_transit = transit && (csg == 1 || self.auth == Auth::Done);
        if transit && nsg <= csg {
            return self.fail(status::INITIATOR_ERROR);
        }
        let flags_byte = (csg << 2) | if can_transit { flags::TRANSIT | nsg } else { 0 };
        let done = can_transit && nsg == 3;
        let resp = self.response(flags_byte, status::SUCCESS, out);
        if can_transit {
            self.stage = nsg;
        }
        if done {
            // Discovery sessions: the negotiated data-path keys do not matter.
            let est = Established {
                kind: self.kind.clone().unwrap_or(SessionKind::Discovery),
                initiator: self.initiator.clone().unwrap_or_default(),
                isid: self.isid,
                tsih: self.tsih,
                params: self.params,
                exp_cmd_sn: self.exp_cmd_sn,
                stat_sn: self.stat_sn,
            };
            return Step::Done(resp, Box::new(est));
        }
        Step::Continue(resp)
    }

    fn security(
        &mut self,
        keys: &[(&str, &str)],
        out: &mut Vec<u8>,
        rng: &mut dyn RngCore,
    ) -> Result<(), [u8; 2]> {
        let get = |k: &str| keys.iter().find(|(x, _)| *x == k).map(|(_, v)| *v);
        let creds = self.credentials().cloned();
        if self.auth == Auth::Start {
            let Some(methods) = get("AuthMethod") else {
                // No AuthMethod offered: only acceptable without CHAP.
                if creds.is_some() {
                    return Err(status::AUTH_FAILED);
                }
                self.auth = Auth::Done;
                return Ok(());
            };
            let offered: Vec<&str> = methods.split(',').map(str::trim).collect();
            if creds.is_some() {
                if !offered.contains(&"CHAP") {
                    return Err(status::AUTH_FAILED);
                }
                iscsi::emit_text(out, "AuthMethod", "CHAP");
                self.auth = Auth::AwaitAlgorithm;
            } else if offered.contains(&"None") {
                iscsi::emit_text(out, "AuthMethod", "None");
                self.auth = Auth::Done;
                return Ok(());
            } else {
                return Err(status::AUTH_FAILED);
            }
        }
        let Some(creds) = creds else {
            return Ok(());
        };
        if self.auth == Auth::AwaitAlgorithm {
            let Some(a) = get("CHAP_A") else {
                return Ok(());
            };
            let Some(alg) = chap::choose(a) else {
                iscsi::emit_text(out, "CHAP_A", "Reject");
                return Err(status::AUTH_FAILED);
            };
            let mut id = [0u8; 1];
            rng.fill_bytes(&mut id);
            let mut challenge = vec![0u8; alg.challenge_len()];
            rng.fill_bytes(&mut challenge);
            iscsi::emit_text(out, "CHAP_A", &alg.number().to_string());
            iscsi::emit_text(out, "CHAP_I", &id[0].to_string());
            iscsi::emit_text(out, "CHAP_C", &chap::encode_hex(&challenge));
            self.auth = Auth::AwaitResponse {
                alg,
                id: id[0],
                challenge,
            };
            return Ok(());
        }
        if let Auth::AwaitResponse { alg, id, challenge } = self.auth.clone() {
            let (Some(name), Some(resp)) = (get("CHAP_N"), get("CHAP_R")) else {
                return Err(status::AUTH_FAILED);
            };
            let resp = chap::decode_binary(resp).ok_or(status::AUTH_FAILED)?;
            let want = alg.response(id, creds.secret.as_bytes(), &challenge);
            if name != creds.user || !chap::equal(&resp, &want) {
                return Err(status::AUTH_FAILED);
            }
            match (get("CHAP_I"), get("CHAP_C")) {
                (Some(i), Some(c)) => {
                    let Some((muser, msecret)) = &creds.mutual else {
                        return Err(status::AUTH_FAILED);
                    };
                    let i = chap::decode_id(i).ok_or(status::AUTH_FAILED)?;
                    let c = chap::decode_binary(c).ok_or(status::AUTH_FAILED)?;
                    // A reflected challenge would let the initiator make us
                    // compute its answer (RFC 7143 section 12.1.3).
                    if c == challenge || c.is_empty() {
                        return Err(status::AUTH_FAILED);
                    }
                    let r = alg.response(i, msecret.as_bytes(), &c);
                    iscsi::emit_text(out, "CHAP_N", muser);
                    iscsi::emit_text(out, "CHAP_R", &chap::encode_hex(&r));
                }
                (None, None) => {}
                _ => return Err(status::AUTH_FAILED),
            }
            self.auth = Auth::Done;
        }
        Ok(())
    }

    /// Negotiates one operational key; returns the value to answer with.
    fn negotiate(&mut self, key: &str, value: &str) -> Option<String> {
        let yes_no = |v: &str| match v {
            "Yes" => Some(true),
            "No" => Some(false),
            _ => None,
        };
        let num = |v: &str, lo: u32, hi: u32| -> Option<u32> {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n >= lo as u64 && *n <= hi as u64)
                .map(|n| n as u32)
        };
        let bool_str = |b: bool| if b { "Yes" } else { "No" }.to_owned();
        let p = &mut self.params;
        let l = &self.limits;
        Some(match key {
            "HeaderDigest" | "DataDigest" => {
                let pick = value
                    .split(',')
                    .map(str::trim)
                    .find(|d| *d == "None" || *d == "CRC32C");
                match pick {
                    Some(d) => {
                        let on = d == "CRC32C";
                        if key == "HeaderDigest" {
                            p.header_digest = on;
                        } else {
                            p.data_digest = on;
                        }
                        d.to_owned()
                    }
                    None => "Reject".to_owned(),
                }
            }
            "MaxConnections" => match num(value, 1, 65535) {
                Some(_) => "1".to_owned(),
                None => "Reject".to_owned(),
            },
            "InitialR2T" => match yes_no(value) {
                // Result function OR: Yes wins.
                Some(v) => {
                    p.initial_r2t = v || !l.allow_unsolicited;
                    bool_str(p.initial_r2t)
                }
                None => "Reject".to_owned(),
            },
            "ImmediateData" => match yes_no(value) {
                // Result function AND.
                Some(v) => {
                    p.immediate_data = v && l.allow_unsolicited;
                    bool_str(p.immediate_data)
                }
                None => "Reject".to_owned(),
            },
            "MaxRecvDataSegmentLength" => {
                // Declarative: the limit for what we send; no answer needed,
                // our own declaration follows separately.
                match num(value, 512, 16_777_215) {
                    Some(n) => {
                        p.max_send_data_segment = n;
                        return None;
                    }
                    None => "Reject".to_owned(),
                }
            }
            "MaxBurstLength" => match num(value, 512, 16_777_215) {
                Some(n) => {
                    p.max_burst = n.min(l.max_burst);
                    p.first_burst = p.first_burst.min(p.max_burst);
                    p.max_burst.to_string()
                }
                None => "Reject".to_owned(),
            },
            "FirstBurstLength" => match num(value, 512, 16_777_215) {
                Some(n) => {
                    p.first_burst = n.min(l.first_burst).min(p.max_burst);
                    p.first_burst.to_string()
                }
                None => "Reject".to_owned(),
            },
            "MaxOutstandingR2T" => match num(value, 1, 65535) {
                Some(n) => {
                    p.max_outstanding_r2t = n.min(l.max_outstanding_r2t);
                    p.max_outstanding_r2t.to_string()
                }
                None => "Reject".to_owned(),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match yes_no(value) {
                // Result function OR, and we only implement in-order: Yes.
                Some(_) => "Yes".to_owned(),
                None => "Reject".to_owned(),
            },
            "ErrorRecoveryLevel" => match num(value, 0, 2) {
                Some(_) => "0".to_owned(),
                None => "Reject".to_owned(),
            },
            "DefaultTime2Wait" => match num(value, 0, 3600) {
                // Result function Max.
                Some(n) => {
                    p.default_time2wait = n.max(2);
                    p.default_time2wait.to_string()
                }
                None => "Reject".to_owned(),
            },
            "DefaultTime2Retain" => match num(value, 0, 3600) {
                // Result function Min; we keep nothing after a connection drops.
                Some(_) => {
                    p.default_time2retain = 0;
                    "0".to_owned()
                }
                None => "Reject".to_owned(),
            },
            // RFC 3720 markers and other keys we do not do.
            "IFMarker" | "OFMarker" => "No".to_owned(),
            "OFMarkInt" | "IFMarkInt" => "Irrelevant".to_owned(),
            "TaskReporting" => "RFC3720".to_owned(),
            // RFC 7144: result function Min; we implement level 1 (RFC 7143).
            "iSCSIProtocolLevel" => match num(value, 0, 31) {
                Some(n) => n.min(1).to_string(),
                None => "Reject".to_owned(),
            },
            _ if key.starts_with("X-") || key.starts_with("X#") => "NotUnderstood".to_owned(),
            _ => "NotUnderstood".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
