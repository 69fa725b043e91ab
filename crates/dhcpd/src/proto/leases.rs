//! The in-memory lease table: who holds which address until when, address
//! selection per RFC 2131 §4.3.1 (reservation, the client's previous address,
//! the requested address, a never-used address, the longest-expired address),
//! and the per-hardware-address bound.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use crate::config::Subnet;

/// What an address is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Offered, not yet requested; held until `expires`.
    Offered,
    /// Acknowledged lease, valid until `expires`.
    Bound,
    /// Released by its client (kept to give the client the same address again).
    Released,
    /// Declined (in use by someone we do not know); unusable until `expires`.
    Declined,
}

/// One lease as stored: the unit of the lease log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    /// Client identifier (option 61) or `htype` + `chaddr`.
    pub client: Vec<u8>,
    /// Hardware address (`chaddr`), for the per-MAC bound.
    pub hw: Vec<u8>,
    pub state: LeaseState,
    /// Unix milliseconds.
    pub expires_ms: u64,
}

impl Lease {
    /// Whether the address is taken at `now` (by its client, or declined).
    pub fn active(&self, now_ms: u64) -> bool {
        match self.state {
            LeaseState::Offered | LeaseState::Bound | LeaseState::Declined => {
                self.expires_ms > now_ms
            }
            LeaseState::Released => false,
        }
    }
}

/// All leases known to the server, indexed by address, client and hardware
/// address.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_addr: HashMap<Ipv4Addr, Lease>,
    by_client: HashMap<Vec<u8>, Vec<Ipv4Addr>>,
    by_hw: HashMap<Vec<u8>, Vec<Ipv4Addr>>,
    /// Next never-used candidate per subnet (index into the pool).
    cursors: HashMap<Ipv4Addr, u32>,
    /// Subnets (by network) whose pool has no never-used address left; an
    /// address only becomes never-used again through `remove`.
    no_fresh: HashSet<Ipv4Addr>,
    /// Every lease by (expiry, address): the least recently used inactive
    /// address is the first one at or before "now".
    by_expiry: BTreeSet<(u64, Ipv4Addr)>,
}

fn remove_from(map: &mut HashMap<Vec<u8>, Vec<Ipv4Addr>>, key: &[u8], addr: Ipv4Addr) {
    if let Some(v) = map.get_mut(key) {
        v.retain(|a| *a != addr);
        if v.is_empty() {
            map.remove(key);
        }
    }
}

impl LeaseTable {
    pub fn get(&self, addr: Ipv4Addr) -> Option<&Lease> {
        self.by_addr.get(&addr)
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_addr.values()
    }

    /// Inserts or replaces the lease of `lease.addr`.
    pub fn put(&mut self, lease: Lease) {
        if let Some(old) = self.by_addr.remove(&lease.addr) {
            remove_from(&mut self.by_client, &old.client, old.addr);
            remove_from(&mut self.by_hw, &old.hw, old.addr);
            self.by_expiry.remove(&(old.expires_ms, old.addr));
        }
        self.by_expiry.insert((lease.expires_ms, lease.addr));
        if !lease.client.is_empty() {
            self.by_client
                .entry(lease.client.clone())
                .or_default()
                .push(lease.addr);
        }
        if !lease.hw.is_empty() {
            self.by_hw
                .entry(lease.hw.clone())
                .or_default()
                .push(lease.addr);
        }
        self.by_addr.insert(lease.addr, lease);
    }

    /// Forgets `addr` entirely.
    pub fn remove(&mut self, addr: Ipv4Addr) -> Option<Lease> {
        let old = self.by_addr.remove(&addr)?;
        remove_from(&mut self.by_client, &old.client, addr);
        remove_from(&mut self.by_hw, &old.hw, addr);
        self.by_expiry.remove(&(old.expires_ms, addr));
        self.no_fresh.clear();
        Some(old)
    }

    /// The address `client` holds or held in `subnet`, if any: the one it holds
    /// now (bound, or offered) before ones it released or let expire, and among
    /// those the most recent.
    pub fn of_client(&self, client: &[u8], subnet: &Subnet) -> Option<&Lease> {
        self.by_client
            .get(client)?
            .iter()
            .filter(|a| subnet.contains(**a))
            .filter_map(|a| self.by_addr.get(a))
            .filter(|l| l.state != LeaseState::Declined)
            .max_by_key(|l| {
                (
                    matches!(l.state, LeaseState::Bound | LeaseState::Offered),
                    l.expires_ms,
                )
            })
    }

    /// Addresses `hw` takes out of the pool (offered, bound, or declined by it
    /// and still withheld), other than `except`. Counting declines stops a
    /// client from emptying the pool by DISCOVER/REQUEST/DECLINE cycles.
    pub fn active_for_hw(&self, hw: &[u8], now_ms: u64, except: Option<Ipv4Addr>) -> usize {
        self.by_hw.get(hw).map_or(0, |v| {
            v.iter()
                .filter(|a| Some(**a) != except)
                .filter_map(|a| self.by_addr.get(a))
                .filter(|l| l.active(now_ms))
                .count()
        })
    }

    /// Other addresses `client` holds in `subnet` besides `keep`, which a new
    /// binding supersedes (a client has one address per subnet).
    pub fn superseded(&self, client: &[u8], subnet: &Subnet, keep: Ipv4Addr) -> Vec<Lease> {
        self.by_client.get(client).map_or_else(Vec::new, |v| {
            v.iter()
                .filter(|a| **a != keep && subnet.contains(**a))
                .filter_map(|a| self.by_addr.get(a))
                .filter(|l| matches!(l.state, LeaseState::Offered | LeaseState::Bound))
                .cloned()
                .collect()
        })
    }

    /// Whether `client` may take `addr` at `now`.
    pub fn available_to(&self, addr: Ipv4Addr, client: &[u8], now_ms: u64) -> bool {
        match self.by_addr.get(&addr) {
            None => true,
            Some(l) if l.state == LeaseState::Declined => !l.active(now_ms),
            Some(l) => l.client == client || !l.active(now_ms),
        }
    }

    /// Picks a free pool address for a new client: first never-used addresses
    /// (from a rotating cursor), then the one whose lease ended longest ago.
    /// `usable` excludes reserved and server addresses. Once every pool address
    /// has been used, no pool scan happens again until one is forgotten.
    pub fn pick_free(
        &mut self,
        subnet: &Subnet,
        now_ms: u64,
        usable: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        if !self.no_fresh.contains(&subnet.network) {
            let start = u32::from(subnet.pool_start);
            let size = u32::from(subnet.pool_end) - start + 1;
            let cursor = self.cursors.entry(subnet.network).or_insert(0);
            for i in 0..size {
                let off = (*cursor + i) % size;
                let a = Ipv4Addr::from(start + off);
                if !self.by_addr.contains_key(&a) && usable(a) {
                    *cursor = (off + 1) % size;
                    return Some(a);
                }
            }
            self.no_fresh.insert(subnet.network);
        }
        // Expired (or released, expiry = release time) leases, oldest first.
        self.by_expiry
            .range(..=(now_ms, Ipv4Addr::BROADCAST))
            .map(|(_, a)| *a)
            .find(|a| {
                subnet.in_pool(*a)
                    && usable(*a)
                    && self.by_addr.get(a).is_some_and(|l| !l.active(now_ms))
            })
    }

    /// Drops offers and declines that ran out (bound leases stay, expired, so
    /// their clients get the same address back).
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let stale: Vec<Ipv4Addr> = self
            .by_addr
            .values()
            .filter(|l| {
                matches!(l.state, LeaseState::Offered | LeaseState::Declined) && !l.active(now_ms)
            })
            .map(|l| l.addr)
            .collect();
        for a in &stale {
            self.remove(*a);
        }
        stale.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(d: u8, state: LeaseState, exp: u64) -> Lease {
        Lease {
            addr: Ipv4Addr::new(10, 0, 0, d),
            client: vec![1, d],
            hw: vec![2, d],
            state,
            expires_ms: exp,
        }
    }

    #[test]
    fn pick_free_prefers_never_used_then_least_recently_used() {
        let subnet = Subnet::new(
            Ipv4Addr::new(10, 0, 0, 0),
            24,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 4),
        );
        let mut t = LeaseTable::default();
        for d in 1..=4 {
            let a = t.pick_free(&subnet, 0, |_| true).unwrap();
            assert_eq!(a, Ipv4Addr::new(10, 0, 0, d));
            t.put(lease(d, LeaseState::Bound, 1000));
        }
        assert_eq!(t.pick_free(&subnet, 500, |_| true), None, "all bound");
        t.put(lease(3, LeaseState::Released, 600));
        t.put(lease(1, LeaseState::Released, 700));
        assert_eq!(
            t.pick_free(&subnet, 800, |_| true),
            Some(Ipv4Addr::new(10, 0, 0, 3)),
            "the address released first"
        );
        assert_eq!(
            t.pick_free(&subnet, 800, |a| a != Ipv4Addr::new(10, 0, 0, 3)),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        // After expiry every bound lease is a candidate, oldest first.
        assert_eq!(
            t.pick_free(&subnet, 2000, |a| a.octets()[3] % 2 == 0),
            Some(Ipv4Addr::new(10, 0, 0, 2))
        );
        // A forgotten address is never-used again and comes first.
        t.put(lease(4, LeaseState::Offered, 900));
        assert_eq!(t.sweep(1000), 1);
        assert_eq!(
            t.pick_free(&subnet, 1000, |_| true),
            Some(Ipv4Addr::new(10, 0, 0, 4))
        );
    }
}
