//! The sans-IO DHCPv4 server core (RFC 2131 §4.3, RFC 2132, RFC 3046, RFC 4578,
//! RFC 6842, PXE 2.1 proxyDHCP): datagrams and time in, replies and lease
//! writes out. No sockets, no clock, no files.
//!
//! Durability: an ACK is *held* until the lease it grants has been written. The
//! driver pulls the pending lease records as one [`IoBatch`] with
//! [`Core::poll_io`], makes them durable (one fsync for the whole batch: group
//! commit), then calls [`Core::complete`], which releases every ACK of that
//! batch to [`Core::poll_transmit`]. While a batch is in flight new records
//! accumulate for the next one.

pub mod boot;
pub mod leases;
pub mod ratelimit;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyboot_wire::dhcp as wire;
use dhcproto::v4::{self, DhcpOption, MessageType};
use dhcproto::{Decodable, Encodable};
use tracing::debug;

use crate::config::{Config, Subnet};
use boot::{BootReply, BootRequest};
use leases::{Lease, LeaseState, LeaseTable};
use ratelimit::RateLimiter;

/// An interface the server answers on, as discovered by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Where a datagram came from: the interface (index into the core's
/// interfaces), the local port it arrived on (67 or 4011) and its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingress {
    pub iface: usize,
    pub local_port: u16,
    pub src: SocketAddrV4,
}

/// A datagram to send: out of interface `iface`, from local port `from_port`.
/// `dst` 255.255.255.255 means a link-level broadcast on that interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub iface: usize,
    pub from_port: u16,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
    /// Unicast to a client that has no address yet: the driver must first
    /// tell the kernel that `dst`'s IP is at this Ethernet address (the client
    /// cannot answer ARP), or, if it cannot, send to `fallback` instead.
    pub link_hint: Option<[u8; 6]>,
    /// Where to send if the hint cannot be installed (the link broadcast).
    pub fallback: Option<SocketAddrV4>,
}

/// Lease records to make durable before the replies of batch `id` may leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoBatch {
    pub id: u64,
    pub leases: Vec<Lease>,
}

/// Counters of what the core did with its input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub malformed: u64,
    pub not_request: u64,
    pub bootp_ignored: u64,
    pub rate_limited: u64,
    pub per_mac_limit: u64,
    pub no_subnet: u64,
    pub not_for_us: u64,
    pub pool_exhausted: u64,
    pub overloaded: u64,
    pub ignored: u64,
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    pub declines: u64,
    pub releases: u64,
    pub informs: u64,
    pub proxy_replies: u64,
}

impl Stats {
    /// Datagrams dropped as hostile or unserviceable.
    pub fn dropped(&self) -> u64 {
        self.malformed
            + self.not_request
            + self.bootp_ignored
            + self.rate_limited
            + self.per_mac_limit
            + self.no_subnet
            + self.overloaded
    }
}

/// Options handed to dhcproto (code, exact length): message type, requested
/// address, server identifier.
const SANITIZED: &[(u8, Option<usize>)] = &[
    (wire::code::MESSAGE_TYPE, Some(1)),
    (wire::code::REQUESTED_IP, Some(4)),
    (wire::code::SERVER_ID, Some(4)),
];

/// How often expired offers and declines are swept from memory.
const SWEEP_INTERVAL_MS: u64 = 60_000;

/// The outcome of checking a REQUEST for an address (RFC 2131 §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ack,
    Nak,
    Silent,
}

/// A configuration change that only a restart can apply (it decides the
/// sockets or the lease log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` changed; that takes a restart (sockets and the lease log are set up at start)")]
pub struct NeedsRestart(pub &'static str);

/// The server state machine.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    ifaces: Vec<Iface>,
    leases: LeaseTable,
    limiter: RateLimiter,
    stats: Stats,
    ready: VecDeque<Transmit>,
    held: VecDeque<(u64, Transmit)>,
    writes: Vec<Lease>,
    next_io: u64,
    in_flight: Option<u64>,
    next_sweep_ms: u64,
}

/// A parsed request with what every handler needs.
struct Req<'a> {
    msg: v4::Message,
    raw: wire::Packet<&'a [u8]>,
    ingress: Ingress,
    /// Client key: option 61, else htype + chaddr.
    client: Vec<u8>,
    hw: Vec<u8>,
    client_id: Option<Vec<u8>>,
    server_id: Ipv4Addr,
    boot: BootRequest,
}

impl Core {
    /// A core for `cfg` answering on `ifaces`, starting from the leases
    /// recovered from the lease log.
    pub fn new(
        cfg: Config,
        ifaces: Vec<Iface>,
        recovered: impl IntoIterator<Item = Lease>,
        now_ms: u64,
    ) -> Self {
        let mut leases = LeaseTable::default();
        for l in recovered {
            leases.put(l);
        }
        Self {
            limiter: RateLimiter::new(cfg.rate_per_mac),
            cfg,
            ifaces,
            leases,
            stats: Stats::default(),
            ready: VecDeque::new(),
            held: VecDeque::new(),
            writes: Vec::new(),
            next_io: 1,
            in_flight: None,
            next_sweep_ms: now_ms + SWEEP_INTERVAL_MS,
        }
    }

    /// Serves `cfg` from now on (a reload): hosts, reservations, pools,
    /// options, boot settings and timers. Leases, replies waiting for their
    /// lease to be written and the write in flight are kept; a lease the new
    /// configuration would not give (a pool that shrank, an address now
    /// reserved for another host) is treated as after a restart with that
    /// configuration. What decides the sockets and the lease log cannot change
    /// here.
    pub fn reconfigure(&mut self, cfg: Config) -> Result<(), NeedsRestart> {
        let old = &self.cfg;
        let fixed = [
            ("interfaces", old.interfaces != cfg.interfaces),
            ("lease_db", old.lease_db != cfg.lease_db),
            ("proxy", old.proxy != cfg.proxy),
            ("server_port", old.server_port != cfg.server_port),
            ("client_port", old.client_port != cfg.client_port),
            ("pxe_port", old.pxe_port != cfg.pxe_port),
        ];
        if let Some((name, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Err(NeedsRestart(name));
        }
        if cfg.rate_per_mac != old.rate_per_mac {
            self.limiter = RateLimiter::new(cfg.rate_per_mac);
        }
        self.cfg = cfg;
        Ok(())
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn ifaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ready.pop_front()
    }

    /// The next batch of lease records to make durable (one at a time).
    #[must_use]
    pub fn poll_io(&mut self) -> Option<IoBatch> {
        if self.in_flight.is_some() || self.writes.is_empty() {
            return None;
        }
        let id = self.next_io;
        self.next_io += 1;
        self.in_flight = Some(id);
        Some(IoBatch {
            id,
            leases: std::mem::take(&mut self.writes),
        })
    }

    /// Whether lease records wait for a batch.
    pub fn poll_io_pending(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Reports the outcome of batch `id`. On success its held replies become
    /// ready; on failure they are dropped (clients retransmit and are answered
    /// once the store works again).
    pub fn complete(&mut self, id: u64, ok: bool) {
        if self.in_flight == Some(id) {
            self.in_flight = None;
        }
        while self.held.front().is_some_and(|(b, _)| *b == id) {
            let (_, t) = self.held.pop_front().expect("checked front");
            if ok {
                self.ready.push_back(t);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    #[must_use]
    pub fn poll_timeout(&self) -> u64 {
        self.next_sweep_ms
    }

    /// Housekeeping: forget expired offers and declines.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if now_ms >= self.next_sweep_ms {
            let n = self.leases.sweep(now_ms);
            if n > 0 {
                debug!(swept = n, "expired offers and declines forgotten");
            }
            self.next_sweep_ms = now_ms + SWEEP_INTERVAL_MS;
        }
    }

    /// Handles one datagram received at `now_ms` (Unix milliseconds).
    pub fn handle(&mut self, now_ms: u64, ingress: Ingress, bytes: &[u8]) {
        self.stats.received += 1;
        let Ok(raw) = wire::Packet::new_checked(bytes) else {
            self.stats.malformed += 1;
            debug!(src = %ingress.src, len = bytes.len(), "malformed datagram dropped");
            return;
        };
        if raw.op() != wire::Op::Request {
            self.stats.not_request += 1;
            return;
        }
        // dhcproto sees only the options the core reads through it, with their
        // lengths checked; everything else is read raw from `raw`.
        let clean = wire::sanitized(&raw, SANITIZED);
        let Ok(msg) = v4::Message::decode(&mut dhcproto::Decoder::new(&clean)) else {
            self.stats.malformed += 1;
            return;
        };
        let hw = raw.chaddr().to_vec();
        let client_id = raw.option(wire::code::CLIENT_ID).map(<[u8]>::to_vec);
        let client = match &client_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ if !hw.is_empty() => {
                let mut k = vec![raw.htype()];
                k.extend_from_slice(&hw);
                k
            }
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        let limit_key = if hw.is_empty() { &client } else { &hw };
        if !self.limiter.allow(limit_key, now_ms) {
            self.stats.rate_limited += 1;
            return;
        }
        let Some(mtype) = msg.opts().msg_type() else {
            // Plain BOOTP is not served.
            self.stats.bootp_ignored += 1;
            return;
        };
        let Some(iface) = self.ifaces.get(ingress.iface) else {
            self.stats.ignored += 1;
            return;
        };
        let server_id = self.cfg.server_id.unwrap_or(iface.addr);
        let req = Req {
            boot: BootRequest::from_packet(&raw),
            msg,
            raw,
            ingress,
            client,
            hw,
            client_id,
            server_id,
        };
        let span = tracing::debug_span!("dhcp", xid = req.raw.xid(), mac = %boot::mac_dashed(&req.hw), ?mtype);
        let _g = span.enter();
        if ingress.local_port == self.cfg.pxe_port {
            self.pxe_port_request(&req, mtype);
            return;
        }
        if self.cfg.proxy {
            self.proxy_request(&req, mtype);
            return;
        }
        let giaddr = Ipv4Addr::from(req.raw.giaddr());
        let selector = if giaddr.is_unspecified() {
            iface.addr
        } else {
            giaddr
        };
        let Some(si) = self.cfg.subnets.iter().position(|s| s.contains(selector)) else {
            self.stats.no_subnet += 1;
            debug!(%selector, "no subnet for this link");
            return;
        };
        match mtype {
            MessageType::Discover => self.discover(now_ms, &req, si),
            MessageType::Request => self.request(now_ms, &req, si),
            MessageType::Decline => self.decline(now_ms, &req),
            MessageType::Release => self.release(now_ms, &req),
            MessageType::Inform => self.inform(&req, si),
            _ => self.stats.ignored += 1,
        }
    }

    // ---- address policy -------------------------------------------------

    /// The reserved address of this client (by MAC from the inventory, or by
    /// client identifier) if it lies in `subnet`.
    fn reservation(&self, req: &Req<'_>, subnet: &Subnet) -> Option<Ipv4Addr> {
        let by_mac = self.cfg.host_by_mac(&req.hw).and_then(|h| h.address);
        let by_id = req.client_id.as_ref().and_then(|id| {
            self.cfg
                .client_id_reservations
                .iter()
                .find(|(c, _)| c == id)
                .map(|(_, a)| *a)
        });
        by_id.or(by_mac).filter(|a| subnet.contains(*a))
    }

    /// Whether `a` is reserved for anybody (then only its owner may have it).
    fn is_reserved(&self, a: Ipv4Addr) -> bool {
        self.cfg.hosts.iter().any(|h| h.address == Some(a))
            || self.cfg.client_id_reservations.iter().any(|(_, r)| *r == a)
    }

    /// Addresses never handed out: the subnet's network and broadcast
    /// addresses, the router and our own interface addresses.
    fn is_infrastructure(&self, subnet: &Subnet, a: Ipv4Addr) -> bool {
        a == subnet.network
            || a == subnet.broadcast()
            || Some(a) == subnet.router
            || self.ifaces.iter().any(|i| i.addr == a)
            || Some(a) == self.cfg.server_id
    }

    /// Whether `a` may be leased to this client in `subnet`.
    fn eligible(&self, req: &Req<'_>, subnet: &Subnet, a: Ipv4Addr, now_ms: u64) -> bool {
        let mine = self.reservation(req, subnet);
        let allowed = if Some(a) == mine {
            true
        } else {
            subnet.in_pool(a) && !self.is_reserved(a) && mine.is_none()
        };
        allowed
            && !self.is_infrastructure(subnet, a)
            && self.leases.available_to(a, &req.client, now_ms)
    }

    fn over_mac_limit(&self, req: &Req<'_>, keep: Option<Ipv4Addr>, now_ms: u64) -> bool {
        self.leases.active_for_hw(&req.hw, now_ms, keep) as u64
            >= u64::from(self.cfg.max_leases_per_mac)
    }

    fn choose(&mut self, req: &Req<'_>, si: usize, now_ms: u64) -> Option<Ipv4Addr> {
        let subnet = &self.cfg.subnets[si];
        if let Some(r) = self.reservation(req, subnet) {
            return self.eligible(req, subnet, r, now_ms).then_some(r);
        }
        if let Some(prev) = self.leases.of_client(&req.client, subnet).map(|l| l.addr) {
            if self.eligible(req, subnet, prev, now_ms) {
                return Some(prev);
            }
        }
        if let Some(DhcpOption::RequestedIpAddress(a)) =
            req.msg.opts().get(v4::OptionCode::RequestedIpAddress)
        {
            if self.eligible(req, subnet, *a, now_ms) {
                return Some(*a);
            }
        }
        // Split the borrows: `pick_free` needs the table mutably, the
        // exclusions come from the config.
        let subnet = subnet.clone();
        let excluded: std::collections::HashSet<Ipv4Addr> = self
            .cfg
            .hosts
            .iter()
            .filter_map(|h| h.address)
            .chain(self.cfg.client_id_reservations.iter().map(|(_, a)| *a))
            .chain(self.ifaces.iter().map(|i| i.addr))
            .chain(subnet.router)
            .chain(self.cfg.server_id)
            .chain([subnet.network, subnet.broadcast()])
            .filter(|a| subnet.in_pool(*a))
            .collect();
        self.leases
            .pick_free(&subnet, now_ms, |a| !excluded.contains(&a))
    }

    fn lease_time(&self, si: usize) -> u32 {
        self.cfg.subnets[si].lease_time
    }

    // ---- message handlers (RFC 2131 §4.3) -------------------------------

    fn discover(&mut self, now_ms: u64, req: &Req<'_>, si: usize) {
        let prev = self
            .leases
            .of_client(&req.client, &self.cfg.subnets[si])
            .map(|l| l.addr);
        if self.over_mac_limit(req, prev, now_ms) {
            self.stats.per_mac_limit += 1;
            debug!("hardware address holds too many leases; no offer");
            return;
        }
        let Some(addr) = self.choose(req, si, now_ms) else {
            self.stats.pool_exhausted += 1;
            debug!("no address available; no offer");
            return;
        };
        let bound = self
            .leases
            .get(addr)
            .is_some_and(|l| l.state == LeaseState::Bound && l.active(now_ms));
        if !bound {
            self.leases.put(Lease {
                addr,
                client: req.client.clone(),
                hw: req.hw.clone(),
                state: LeaseState::Offered,
                expires_ms: now_ms + u64::from(self.cfg.offer_hold) * 1000,
            });
        }
        let lt = self.lease_time(si);
        let out = self.reply(req, MessageType::Offer, addr, Some(si), Some(lt));
        debug!(%addr, "offer");
        self.stats.offers += 1;
        self.ready.push_back(out);
    }

    fn request(&mut self, now_ms: u64, req: &Req<'_>, si: usize) {
        let opts = req.msg.opts();
        let sid = match opts.get(v4::OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
            _ => None,
        };
        let requested = match opts.get(v4::OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
            _ => None,
        };
        let ciaddr = req.msg.ciaddr();
        let (addr, init_reboot) = match (sid, requested) {
            (Some(s), _) if s != req.server_id => {
                // SELECTING another server: our offer is void.
                self.stats.not_for_us += 1;
                if let Some(l) = self.leases.of_client(&req.client, &self.cfg.subnets[si]) {
                    if l.state == LeaseState::Offered {
                        let a = l.addr;
                        self.leases.remove(a);
                    }
                }
                return;
            }
            (Some(_), Some(r)) => (r, true),
            (Some(_), None) if !ciaddr.is_unspecified() => (ciaddr, false),
            (Some(_), None) => {
                self.stats.malformed += 1;
                return;
            }
            (None, Some(r)) if ciaddr.is_unspecified() => (r, true),
            (None, _) if !ciaddr.is_unspecified() => (ciaddr, false),
            (None, _) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match self.verdict(req, si, addr, init_reboot, now_ms) {
            Verdict::Ack => self.bind(now_ms, req, si, addr),
            Verdict::Nak => {
                let out = self.reply(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED, None, None);
                debug!(%addr, "nak");
                self.stats.naks += 1;
                self.ready.push_back(out);
            }
            Verdict::Silent => self.stats.ignored += 1,
        }
    }

    fn verdict(
        &self,
        req: &Req<'_>,
        si: usize,
        addr: Ipv4Addr,
        init: bool,
        now_ms: u64,
    ) -> Verdict {
        let subnet = &self.cfg.subnets[si];
        if !subnet.contains(addr) {
            // Wrong network for this link (INIT-REBOOT, SELECTING) must be NAKed;
            // a renewing client elsewhere is none of our business.
            return if init && self.cfg.authoritative {
                Verdict::Nak
            } else {
                Verdict::Silent
            };
        }
        if !self.eligible(req, subnet, addr, now_ms) {
            let known =
                self.leases.get(addr).is_some() || subnet.in_pool(addr) || self.is_reserved(addr);
            return if self.cfg.authoritative || known {
                Verdict::Nak
            } else {
                Verdict::Silent
            };
        }
        if self.over_mac_limit(req, Some(addr), now_ms) {
            return Verdict::Silent;
        }
        Verdict::Ack
    }

    fn bind(&mut self, now_ms: u64, req: &Req<'_>, si: usize, addr: Ipv4Addr) {
        if self.held.len() >= self.cfg.max_pending {
            self.stats.overloaded += 1;
            return;
        }
        let lt = self.lease_time(si);
        let lease = Lease {
            addr,
            client: req.client.clone(),
            hw: req.hw.clone(),
            state: LeaseState::Bound,
            expires_ms: now_ms + u64::from(lt) * 1000,
        };
        for mut old in self
            .leases
            .superseded(&req.client, &self.cfg.subnets[si], addr)
        {
            old.state = LeaseState::Released;
            old.expires_ms = now_ms;
            self.leases.put(old.clone());
            self.writes.push(old);
        }
        self.leases.put(lease.clone());
        self.writes.push(lease);
        let out = self.reply(req, MessageType::Ack, addr, Some(si), Some(lt));
        debug!(%addr, "ack (held until durable)");
        self.stats.acks += 1;
        self.held.push_back((self.next_io, out));
    }

    fn server_id_matches(&self, req: &Req<'_>) -> bool {
        matches!(
            req.msg.opts().get(v4::OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(a)) if *a == req.server_id
        )
    }

    fn decline(&mut self, now_ms: u64, req: &Req<'_>) {
        let addr = match req.msg.opts().get(v4::OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(a)) => *a,
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        if !self.server_id_matches(req) {
            self.stats.not_for_us += 1;
            return;
        }
        if self.leases.get(addr).is_none_or(|l| l.client != req.client) {
            self.stats.ignored += 1;
            return;
        }
        // The client identity is dropped (the address is nobody's), the
        // hardware address kept so the decline counts against its bound.
        let l = Lease {
            addr,
            client: Vec::new(),
            hw: req.hw.clone(),
            state: LeaseState::Declined,
            expires_ms: now_ms + u64::from(self.cfg.decline_hold) * 1000,
        };
        tracing::warn!(%addr, mac = %boot::mac_dashed(&req.hw), "DECLINE: address in use by an unknown host; withheld");
        self.leases.put(l.clone());
        self.writes.push(l);
        self.stats.declines += 1;
    }

    fn release(&mut self, now_ms: u64, req: &Req<'_>) {
        let addr = req.msg.ciaddr();
        if !self.server_id_matches(req) {
            self.stats.not_for_us += 1;
            return;
        }
        let Some(l) = self.leases.get(addr) else {
            self.stats.ignored += 1;
            return;
        };
        if l.client != req.client || l.state != LeaseState::Bound {
            self.stats.ignored += 1;
            return;
        }
        let mut l = l.clone();
        l.state = LeaseState::Released;
        l.expires_ms = now_ms;
        debug!(%addr, "released");
        self.leases.put(l.clone());
        self.writes.push(l);
        self.stats.releases += 1;
    }

    fn inform(&mut self, req: &Req<'_>, si: usize) {
        let out = self.reply(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED, Some(si), None);
        self.stats.informs += 1;
        self.ready.push_back(out);
    }

    /// proxyDHCP on port 67 (PXE 2.1 §2.2.4): answer only PXE/HTTP boot
    /// clients' DISCOVERs, with boot information and no address.
    fn proxy_request(&mut self, req: &Req<'_>, mtype: MessageType) {
        if mtype != MessageType::Discover || !is_pxe_vendor(&req.boot) {
            self.stats.ignored += 1;
            return;
        }
        let Some(out) = self.proxy_reply(req, MessageType::Offer) else {
            self.stats.ignored += 1;
            return;
        };
        self.stats.proxy_replies += 1;
        self.ready.push_back(out);
    }

    /// Requests to the PXE boot-server port 4011 (PXE 2.1 §2.2.5): an ACK with
    /// the boot file, unicast to where the request came from.
    fn pxe_port_request(&mut self, req: &Req<'_>, mtype: MessageType) {
        if !matches!(mtype, MessageType::Request | MessageType::Inform) || !is_pxe_vendor(&req.boot)
        {
            self.stats.ignored += 1;
            return;
        }
        let Some(mut out) = self.proxy_reply(req, MessageType::Ack) else {
            self.stats.ignored += 1;
            return;
        };
        out.dst = req.ingress.src;
        out.from_port = self.cfg.pxe_port;
        self.stats.proxy_replies += 1;
        self.ready.push_back(out);
    }

    fn proxy_reply(&self, req: &Req<'_>, kind: MessageType) -> Option<Transmit> {
        let iface = &self.ifaces[req.ingress.iface];
        let subnet = self.cfg.subnets.iter().find(|s| s.contains(iface.addr));
        let host = self.cfg.host_by_mac(&req.hw);
        let mut b = boot::decide(&self.cfg, subnet, host, &req.hw, req.server_id, &req.boot)?;
        // A proxy offer is recognised by option 60 `PXEClient` (PXE 2.1 §2.2.4).
        if b.vendor_class.is_none() {
            b.vendor_class = Some("PXEClient");
        }
        if b.vendor_class == Some("PXEClient") && b.vendor_options.is_none() {
            b.vendor_options = Some(wire::PXE_VENDOR_OPTIONS.to_vec());
        }
        let mut m = self.base_reply(req, kind, Ipv4Addr::UNSPECIFIED);
        apply_boot(&mut m, &b);
        Some(self.finish(req, m, kind))
    }

    // ---- reply construction ---------------------------------------------

    fn base_reply(&self, req: &Req<'_>, kind: MessageType, yiaddr: Ipv4Addr) -> v4::Message {
        let mut m = v4::Message::default();
        m.set_opcode(v4::Opcode::BootReply)
            .set_htype(req.msg.htype())
            .set_xid(req.msg.xid())
            .set_flags(req.msg.flags())
            .set_giaddr(req.msg.giaddr())
            .set_chaddr(&req.hw)
            .set_yiaddr(yiaddr);
        if matches!(kind, MessageType::Ack) {
            m.set_ciaddr(req.msg.ciaddr());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(req.server_id));
        if let Some(id) = &req.client_id {
            // RFC 6842: echo the client identifier.
            o.insert(DhcpOption::ClientIdentifier(id.clone()));
        }
        m
    }

    fn reply(
        &self,
        req: &Req<'_>,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        si: Option<usize>,
        lease: Option<u32>,
    ) -> Transmit {
        let mut m = self.base_reply(req, kind, yiaddr);
        if kind == MessageType::Nak {
            m.opts_mut().insert(DhcpOption::Message(
                "address not available to this client".into(),
            ));
            return self.finish(req, m, kind);
        }
        let subnet = si.map(|i| &self.cfg.subnets[i]);
        if let Some(s) = subnet {
            let o = m.opts_mut();
            o.insert(DhcpOption::SubnetMask(s.mask()));
            o.insert(DhcpOption::BroadcastAddr(s.broadcast()));
            if let Some(r) = s.router {
                o.insert(DhcpOption::Router(vec![r]));
            }
            if !s.dns.is_empty() {
                o.insert(DhcpOption::DomainNameServer(s.dns.clone()));
            }
            if let Some(d) = &s.domain {
                o.insert(DhcpOption::DomainName(d.clone()));
            }
        }
        let host = self.cfg.host_by_mac(&req.hw);
        if let Some(h) = host {
            m.opts_mut().insert(DhcpOption::Hostname(h.name.clone()));
        }
        if let Some(lt) = lease {
            let o = m.opts_mut();
            o.insert(DhcpOption::AddressLeaseTime(lt));
            o.insert(DhcpOption::Renewal(self.cfg.t1(lt)));
            o.insert(DhcpOption::Rebinding(self.cfg.t2(lt)));
        }
        if let Some(b) = boot::decide(&self.cfg, subnet, host, &req.hw, req.server_id, &req.boot) {
            apply_boot(&mut m, &b);
        }
        self.finish(req, m, kind)
    }

    /// Encodes, echoes option 82 verbatim (RFC 3046 §2.2) and addresses the
    /// reply (RFC 2131 §4.1).
    fn finish(&self, req: &Req<'_>, mut m: v4::Message, kind: MessageType) -> Transmit {
        let giaddr = req.msg.giaddr();
        if kind == MessageType::Nak && !giaddr.is_unspecified() {
            // The relay must broadcast a NAK (RFC 2131 §4.1).
            m.set_flags(m.flags().set_broadcast());
        }
        let mut payload = m.to_vec().expect("encoding into a Vec cannot fail");
        if let Some(agent) = req.raw.option(wire::code::RELAY_AGENT_INFO) {
            wire::append_option(&mut payload, wire::code::RELAY_AGENT_INFO, agent)
                .expect("an encoded message has a header");
        }
        if payload.len() < 300 {
            // Some BOOTP-era ROMs drop replies shorter than a BOOTP message.
            payload.resize(300, 0);
        }
        let ciaddr = req.msg.ciaddr();
        let yiaddr = m.yiaddr();
        let mut link_hint = None;
        let (dst, port) = if !giaddr.is_unspecified() {
            (giaddr, self.cfg.server_port)
        } else if kind == MessageType::Nak {
            (Ipv4Addr::BROADCAST, self.cfg.client_port)
        } else if !ciaddr.is_unspecified() {
            (ciaddr, self.cfg.client_port)
        } else if kind == MessageType::Ack
            && req.msg.opts().msg_type() == Some(MessageType::Inform)
            && !req.ingress.src.ip().is_unspecified()
        {
            (*req.ingress.src.ip(), self.cfg.client_port)
        } else if !req.msg.flags().broadcast()
            && !yiaddr.is_unspecified()
            && req.raw.htype() == 1
            && req.hw.len() == 6
        {
            // RFC 2131 §4.1: unicast to chaddr/yiaddr. The client cannot
            // answer ARP yet, so the driver installs the mapping first.
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&req.hw);
            link_hint = Some(mac);
            (yiaddr, self.cfg.client_port)
        } else {
            // Broadcast bit set, or nothing to unicast to.
            (Ipv4Addr::BROADCAST, self.cfg.client_port)
        };
        Transmit {
            iface: req.ingress.iface,
            from_port: self.cfg.server_port,
            dst: SocketAddrV4::new(dst, port),
            payload,
            fallback: link_hint
                .map(|_| SocketAddrV4::new(Ipv4Addr::BROADCAST, self.cfg.client_port)),
            link_hint,
        }
    }
}

fn is_pxe_vendor(b: &BootRequest) -> bool {
    matches!(
        b.vendor,
        Some(
            anyboot_wire::dhcp::VendorClass::PxeClient
                | anyboot_wire::dhcp::VendorClass::HttpClient
        )
    )
}

fn apply_boot(m: &mut v4::Message, b: &BootReply) {
    if let Some(ns) = b.next_server {
        m.set_siaddr(ns);
    }
    if let Some(f) = &b.file {
        if f.len() < 128 {
            m.set_fname_str(f);
        }
        m.opts_mut()
            .insert(DhcpOption::BootfileName(f.as_bytes().to_vec()));
    }
    let o = m.opts_mut();
    if let Some(s) = &b.server_name {
        o.insert(DhcpOption::TFTPServerName(s.as_bytes().to_vec()));
    }
    if let Some(v) = b.vendor_class {
        o.insert(DhcpOption::ClassIdentifier(v.as_bytes().to_vec()));
    }
    if let Some(v) = &b.vendor_options {
        o.insert(DhcpOption::VendorExtensions(v.clone()));
    }
    if let Some(r) = &b.root_path {
        o.insert(DhcpOption::RootPath(r.clone()));
    }
    if let Some(u) = &b.uuid {
        o.insert(DhcpOption::ClientMachineIdentifier(u.clone()));
    }
}

/// Encodes `m` (used by tests and the benchmark to build client messages).
pub fn encode(m: &v4::Message) -> Vec<u8> {
    let mut buf = Vec::new();
    m.encode(&mut dhcproto::Encoder::new(&mut buf))
        .expect("encoding into a Vec cannot fail");
    buf
}

#[cfg(test)]
mod tests;
