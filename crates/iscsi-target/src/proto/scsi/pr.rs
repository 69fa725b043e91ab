//! Reservations of one logical unit: SPC-2 RESERVE/RELEASE (SPC-2 section 7.21/7.24) and
//! persistent reservations (SPC-4 sections 5.7, 6.15 PERSISTENT RESERVE IN, 6.16 OUT).
//!
//! State is keyed by I_T nexus (initiator port name `iqn,i,0xISID` plus the one
//! target port we have). Nothing here is persisted across restarts
//! (APTPL is refused), which the capabilities report says.

use anyboot_wire::scsi::{asc, status, Sense, SenseKey};

/// The initiator port of an I_T nexus (SAM-5 4.6), e.g. `iqn.x:y,i,0x00023d000001`.
pub type Nexus = String;

/// Persistent reservation types (SPC-4 table 170).
pub mod pr_type {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: u8 = 6;
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: u8 = 7;
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: u8 = 8;
}

fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5 | 6 | 7 | 8)
}

fn all_registrants(t: u8) -> bool {
    matches!(t, 7 | 8)
}

/// How a command touches the medium, for the conflict rules (SPC-4 table 164).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Never conflicts (INQUIRY, REPORT LUNS, PR IN/OUT, REQUEST SENSE ...).
    None,
    /// Reads the medium or its state.
    Read,
    /// Changes the medium or its state.
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reservation {
    holder: Nexus,
    ptype: u8,
}

/// Registrations, the persistent reservation and the SPC-2 reservation of one LU.
#[derive(Debug, Default)]
pub struct Reservations {
    generation: u32,
    registrations: Vec<(Nexus, u64)>,
    persistent: Option<Reservation>,
    /// SPC-2 RESERVE(6/10) holder.
    legacy: Option<Nexus>,
    /// Unit attentions the last PERSISTENT RESERVE OUT owes other nexuses
    /// (SPC-4 5.7.11/5.7.10.4); the caller moves them to the LU state.
    pub owed_ua: Vec<(Nexus, (u8, u8))>,
}

/// The outcome of a reservation command: GOOD, RESERVATION CONFLICT or a sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrOutcome {
    Good,
    Conflict,
    Check(Sense),
}

impl Reservations {
    fn key_of(&self, n: &str) -> Option<u64> {
        self.registrations
            .iter()
            .find(|(x, _)| x == n)
            .map(|(_, k)| *k)
    }

    fn is_holder(&self, n: &str) -> bool {
        match &self.persistent {
            Some(r) if all_registrants(r.ptype) => self.key_of(n).is_some(),
            Some(r) => r.holder == n,
            None => false,
        }
    }

    /// Whether `nexus` may run a command with this access (SPC-4 5.7.1 and
    /// SPC-2 7.21.2). `Access::None` commands never conflict.
    pub fn check(&self, nexus: &str, access: Access, spc2_exempt: bool) -> bool {
        if let Some(h) = &self.legacy {
            if h != nexus && !spc2_exempt {
                return false;
            }
        }
        let Some(r) = &self.persistent else {
            return true;
        };
        if access == Access::None || self.is_holder(nexus) {
            return true;
        }
        let registered = self.key_of(nexus).is_some();
        match (r.ptype, access) {
            (pr_type::WRITE_EXCLUSIVE, Access::Read) => true,
            (pr_type::EXCLUSIVE_ACCESS, _) => false,
            (pr_type::WRITE_EXCLUSIVE, _) => false,
            (
                pr_type::WRITE_EXCLUSIVE_REGISTRANTS_ONLY
                | pr_type::WRITE_EXCLUSIVE_ALL_REGISTRANTS,
                Access::Read,
            ) => true,
            (_, _) => registered,
        }
    }

    /// SPC-2 RESERVE(6/10).
    pub fn reserve_legacy(&mut self, nexus: &str) -> PrOutcome {
        if self.persistent.is_some() {
            return PrOutcome::Conflict;
        }
        match &self.legacy {
            Some(h) if h != nexus => PrOutcome::Conflict,
            _ => {
                self.legacy = Some(nexus.to_owned());
                PrOutcome::Good
            }
        }
    }

    /// SPC-2 RELEASE(6/10): a no-op unless `nexus` holds the reservation.
    pub fn release_legacy(&mut self, nexus: &str) -> PrOutcome {
        if self.persistent.is_some() && !self.is_holder(nexus) && self.key_of(nexus).is_none() {
            return PrOutcome::Conflict;
        }
        if self.legacy.as_deref() == Some(nexus) {
            self.legacy = None;
        }
        PrOutcome::Good
    }

    /// The nexus is gone (logout, connection loss): its SPC-2 reservation ends;
    /// persistent registrations survive (SPC-4 5.7.2).
    pub fn nexus_lost(&mut self, nexus: &str) {
        if self.legacy.as_deref() == Some(nexus) {
            self.legacy = None;
        }
    }

    /// LUN RESET / target reset: SPC-2 reservations end (SPC-2 5.5.2).
    pub fn reset(&mut self) {
        self.legacy = None;
    }

    /// PERSISTENT RESERVE IN; returns the parameter data (untruncated).
    pub fn pr_in(&self, service_action: u8) -> Result<Vec<u8>, Sense> {
        let mut out = Vec::new();
        match service_action {
            // READ KEYS
            0 => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                out.extend_from_slice(&((self.registrations.len() * 8) as u32).to_be_bytes());
                for (_, k) in &self.registrations {
                    out.extend_from_slice(&k.to_be_bytes());
                }
            }
            // READ RESERVATION
            1 => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                match &self.persistent {
                    Some(r) => {
                        out.extend_from_slice(&16u32.to_be_bytes());
                        let key = if all_registrants(r.ptype) {
                            0
                        } else {
                            self.key_of(&r.holder).unwrap_or(0)
                        };
                        out.extend_from_slice(&key.to_be_bytes());
                        out.extend_from_slice(&[0, 0, 0, 0, 0, r.ptype & 0x0f, 0, 0]);
                    }
                    None => out.extend_from_slice(&0u32.to_be_bytes()),
                }
            }
            // REPORT CAPABILITIES: no SPEC_I_PT, ALL_TG_PT or APTPL; type mask valid.
            2 => {
                out.extend_from_slice(&[0, 8, 0x00, 0x80]);
                // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; then EX_AC_AR.
                out.extend_from_slice(&[0xea, 0x01, 0, 0]);
            }
            // READ FULL STATUS
            3 => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                let mut descs = Vec::new();
                for (n, k) in &self.registrations {
                    let tid = transport_id(n);
                    descs.extend_from_slice(&k.to_be_bytes());
                    descs.extend_from_slice(&[0, 0, 0, 0]);
                    let (holder, ty) = match &self.persistent {
                        Some(r) if self.is_holder(n) => (1u8, r.ptype),
                        _ => (0, 0),
                    };
                    descs.extend_from_slice(&[holder, ty & 0x0f, 0, 0, 0, 0, 0, 0, 0, 1]);
                    descs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    descs.extend_from_slice(&tid);
                }
                out.extend_from_slice(&(descs.len() as u32).to_be_bytes());
                out.extend_from_slice(&descs);
            }
            _ => return Err(Sense::invalid_cdb_at(1, Some(4))),
        }
        Ok(out)
    }

    /// PERSISTENT RESERVE OUT with its 24-byte basic parameter list.
    pub fn pr_out(&mut self, nexus: &str, sa: u8, ptype: u8, params: &[u8]) -> PrOutcome {
        if params.len() < 24 {
            return PrOutcome::Check(Sense::new(
                SenseKey::IllegalRequest,
                asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        }
        let key = u64::from_be_bytes(params[0..8].try_into().unwrap_or_default());
        let sa_key = u64::from_be_bytes(params[8..16].try_into().unwrap_or_default());
        let flags = params[20];
        // SPEC_I_PT and ALL_TG_PT are not supported (capabilities say so).
        if flags & 0x0c != 0 {
            return PrOutcome::Check(Sense::invalid_param());
        }
        // APTPL: we cannot persist through power loss.
        if flags & 0x01 != 0 && matches!(sa, 0 | 6) {
            return PrOutcome::Check(Sense::invalid_param());
        }
        let mine = self.key_of(nexus);
        match sa {
            // REGISTER / REGISTER AND IGNORE EXISTING KEY
            0 | 6 => {
                if sa == 0 {
                    match mine {
                        None if key != 0 => return PrOutcome::Conflict,
                        Some(k) if k != key => return PrOutcome::Conflict,
                        _ => {}
                    }
                }
                if sa_key == 0 {
                    if mine.is_some() {
                        self.unregister(nexus);
                    }
                } else if let Some(e) = self.registrations.iter_mut().find(|(n, _)| n == nexus) {
                    e.1 = sa_key;
                } else {
                    self.registrations.push((nexus.to_owned(), sa_key));
                }
                self.generation = self.generation.wrapping_add(1);
                PrOutcome::Good
            }
            // RESERVE
            1 => {
                if mine != Some(key) {
                    return PrOutcome::Conflict;
                }
                if !valid_type(ptype) {
                    return PrOutcome::Check(Sense::invalid_cdb_at(2, None));
                }
                if self.legacy.is_some() {
                    return PrOutcome::Conflict;
                }
                match &self.persistent {
                    Some(r) if self.is_holder(nexus) => {
                        if r.ptype == ptype {
                            PrOutcome::Good
                        } else {
                            PrOutcome::Conflict
                        }
                    }
                    Some(_) => PrOutcome::Conflict,
                    None => {
                        self.persistent = Some(Reservation {
                            holder: nexus.to_owned(),
                            ptype,
                        });
                        PrOutcome::Good
                    }
                }
            }
            // RELEASE
            2 => {
                if mine != Some(key) {
                    return PrOutcome::Conflict;
                }
                match &self.persistent {
                    Some(r) if self.is_holder(nexus) => {
                        if r.ptype != ptype {
                            return PrOutcome::Check(Sense::new(
                                SenseKey::IllegalRequest,
                                asc::INVALID_RELEASE_OF_PR,
                            ));
                        }
                        self.persistent = None;
                        PrOutcome::Good
                    }
                    _ => PrOutcome::Good,
                }
            }
            // CLEAR
            3 => {
                if mine != Some(key) {
                    return PrOutcome::Conflict;
                }
                for (n, _) in &self.registrations {
                    if n != nexus {
                        self.owed_ua.push((n.clone(), asc::RESERVATIONS_PREEMPTED));
                    }
                }
                self.registrations.clear();
                self.persistent = None;
                self.generation = self.generation.wrapping_add(1);
                PrOutcome::Good
            }
            // PREEMPT / PREEMPT AND ABORT (tasks of other nexuses are not aborted:
            // commands complete quickly and in order per connection).
            4 | 5 => {
                if mine != Some(key) {
                    return PrOutcome::Conflict;
                }
                let holder_key = self.persistent.as_ref().and_then(|r| {
                    if all_registrants(r.ptype) {
                        None
                    } else {
                        self.key_of(&r.holder)
                    }
                });
                let ar = self
                    .persistent
                    .as_ref()
                    .is_some_and(|r| all_registrants(r.ptype));
                if self.persistent.is_none() || (!ar && holder_key != Some(sa_key)) {
                    if sa_key == 0 {
                        return PrOutcome::Check(Sense::invalid_param());
                    }
                    let before = self.registrations.len();
                    self.drop_registrations(|n, k| k == sa_key && n != nexus);
                    if self.registrations.len() == before {
                        return PrOutcome::Conflict;
                    }
                } else {
                    if !valid_type(ptype) {
                        return PrOutcome::Check(Sense::invalid_cdb_at(2, None));
                    }
                    if ar && sa_key == 0 {
                        self.drop_registrations(|n, _| n != nexus);
                    } else {
                        self.drop_registrations(|n, k| k == sa_key && n != nexus);
                    }
                    self.persistent = Some(Reservation {
                        holder: nexus.to_owned(),
                        ptype,
                    });
                }
                self.generation = self.generation.wrapping_add(1);
                PrOutcome::Good
            }
            _ => PrOutcome::Check(Sense::invalid_cdb_at(1, Some(4))),
        }
    }

    /// Removes the registrations `gone` selects; their nexuses are owed
    /// REGISTRATIONS PREEMPTED.
    fn drop_registrations(&mut self, gone: impl Fn(&str, u64) -> bool) {
        let mut owed = Vec::new();
        self.registrations.retain(|(n, k)| {
            let g = gone(n, *k);
            if g {
                owed.push((n.clone(), asc::REGISTRATIONS_PREEMPTED));
            }
            !g
        });
        self.owed_ua.extend(owed);
    }

    fn unregister(&mut self, nexus: &str) {
        self.registrations.retain(|(n, _)| n != nexus);
        if let Some(r) = &self.persistent {
            if all_registrants(r.ptype) {
                if self.registrations.is_empty() {
                    self.persistent = None;
                }
            } else if r.holder == nexus {
                self.persistent = None;
            }
        }
    }
}

/// An iSCSI TransportID (SPC-4 7.6.4.6, format 01b: name + ",i,0x" + ISID), padded to 4.
fn transport_id(nexus: &str) -> Vec<u8> {
    let mut name = nexus.as_bytes().to_vec();
    name.push(0);
    while name.len() % 4 != 0 {
        name.push(0);
    }
    let mut t = vec![0x45, 0, 0, 0];
    t[2..4].copy_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

/// The SCSI status for an outcome (sense is returned separately by the caller).
pub fn outcome_status(o: &PrOutcome) -> u8 {
    match o {
        PrOutcome::Good => status::GOOD,
        PrOutcome::Conflict => status::RESERVATION_CONFLICT,
        PrOutcome::Check(_) => status::CHECK_CONDITION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(key: u64, sa_key: u64) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p
    }

    #[test]
    fn register_reserve_conflict_release() {
        let mut r = Reservations::default();
        let (a, b) = ("a,i,0x1", "b,i,0x2");
        assert_eq!(r.pr_out(a, 0, 0, &params(0, 0xaa)), PrOutcome::Good);
        assert_eq!(r.pr_out(b, 0, 0, &params(0, 0xbb)), PrOutcome::Good);
        // Wrong key for a registered nexus.
        assert_eq!(r.pr_out(a, 0, 0, &params(1, 0xac)), PrOutcome::Conflict);
        assert_eq!(r.pr_out(a, 1, 1, &params(0xaa, 0)), PrOutcome::Good);
        // Write exclusive: b may read, not write; a may do both.
        assert!(r.check(b, Access::Read, false));
        assert!(!r.check(b, Access::Write, false));
        assert!(r.check(a, Access::Write, false));
        assert_eq!(r.pr_out(b, 1, 1, &params(0xbb, 0)), PrOutcome::Conflict);
        // Release with the wrong type is an error, the right type works.
        assert!(matches!(
            r.pr_out(a, 2, 3, &params(0xaa, 0)),
            PrOutcome::Check(_)
        ));
        assert_eq!(r.pr_out(a, 2, 1, &params(0xaa, 0)), PrOutcome::Good);
        assert!(r.check(b, Access::Write, false));
        let keys = r.pr_in(0).unwrap();
        assert_eq!(&keys[4..8], &16u32.to_be_bytes());
    }

    #[test]
    fn registrants_only_and_preempt() {
        let mut r = Reservations::default();
        let (a, b, c) = ("a", "b", "c");
        r.pr_out(a, 0, 0, &params(0, 1));
        r.pr_out(b, 0, 0, &params(0, 2));
        assert_eq!(r.pr_out(a, 1, 6, &params(1, 0)), PrOutcome::Good);
        assert!(r.check(b, Access::Write, false));
        assert!(!r.check(c, Access::Read, false));
        // b preempts a: a's registration goes, b holds the reservation, a is
        // owed a REGISTRATIONS PREEMPTED unit attention.
        assert_eq!(r.pr_out(b, 4, 3, &params(2, 1)), PrOutcome::Good);
        assert_eq!(
            r.owed_ua,
            vec![(a.to_owned(), asc::REGISTRATIONS_PREEMPTED)]
        );
        assert!(!r.check(a, Access::Read, false));
        assert_eq!(r.pr_in(0).unwrap()[4..8], 8u32.to_be_bytes());
        let res = r.pr_in(1).unwrap();
        assert_eq!(&res[8..16], &2u64.to_be_bytes());
        assert_eq!(res[21], 3);
    }

    #[test]
    fn legacy_reservation_blocks_others_until_reset() {
        let mut r = Reservations::default();
        assert_eq!(r.reserve_legacy("a"), PrOutcome::Good);
        assert_eq!(r.reserve_legacy("b"), PrOutcome::Conflict);
        assert!(!r.check("b", Access::Read, false));
        assert!(r.check("b", Access::None, true));
        assert_eq!(r.release_legacy("b"), PrOutcome::Good);
        assert!(!r.check("b", Access::Read, false));
        r.reset();
        assert!(r.check("b", Access::Write, false));
    }
}
