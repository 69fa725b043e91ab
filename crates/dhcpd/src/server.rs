//! The tokio driver: one UDP socket per interface and port bound with
//! SO_BINDTODEVICE (so every datagram's ingress interface is known), a lease
//! writer thread doing group commit, and one loop feeding the sans-IO core.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::proto::{Core, Iface, Ingress, IoBatch, NeedsRestart, Stats};
use crate::store::LeaseLog;
use crate::Error;

/// Datagrams received but not yet handled (beyond this they are dropped).
const RX_QUEUE: usize = 8192;
/// Datagrams handled per loop turn before their replies are sent: small
/// enough that replies leave in short bursts (a relay's socket buffer holds a
/// few hundred), large enough to amortise the loop. Lease records still
/// accumulate across turns while an fsync runs (group commit).
const RX_BATCH: usize = 64;
/// Largest datagram read (DHCP messages are at most a few hundred bytes; a
/// jumbo one is truncated and then fails its checks).
const MAX_DATAGRAM: usize = 1500;
/// How long shutdown waits for the lease batch in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The first IPv4 address and prefix length of interface `name` (getifaddrs).
pub fn interface_ipv4(name: &str) -> io::Result<(Ipv4Addr, u8)> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let n = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if n.to_bytes() != name.as_bytes() || i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so the sockaddr is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let prefix = if ifa.ifa_netmask.is_null() {
            32
        } else {
            // SAFETY: the netmask of an AF_INET address is a sockaddr_in.
            let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(m.sin_addr.s_addr).count_ones() as u8
        };
        found = Some((addr, prefix));
        break;
    }
    // SAFETY: `ifap` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("interface `{name}` has no IPv4 address"),
        )
    })
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: `v` outlives the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A UDP socket on 0.0.0.0:`port` that only sees and sends on `iface`
/// (SO_BINDTODEVICE), may broadcast, and shares the port with the sockets of
/// other interfaces (SO_REUSEADDR).
pub fn bind_device_socket(iface: &str, port: u16) -> io::Result<std::net::UdpSocket> {
    // SAFETY: plain socket(2); the fd is owned immediately below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, 1)?;
    // Deep queues absorb bursts while a lease batch is being synced.
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
    let name = iface.as_bytes();
    // SAFETY: the name buffer outlives the call and its length is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr() as *const libc::c_void,
            name.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in of the size passed.
    let r = unsafe {
        libc::bind(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::UdpSocket::from(owned))
}

/// `ATF_COM` from <linux/if_arp.h>: a completed (resolved) neighbour entry.
const ATF_COM: i32 = 0x02;

/// Tells the kernel that `ip` is at Ethernet address `mac` on `iface`
/// (SIOCSARP), so a unicast to a client that cannot answer ARP yet leaves.
/// Needs CAP_NET_ADMIN.
pub fn set_arp_entry(fd: i32, iface: &str, ip: Ipv4Addr, mac: [u8; 6]) -> io::Result<()> {
    // SAFETY: arpreq is plain old data; all-zero is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in fits in sockaddr (both 16 bytes); byte copy.
    unsafe {
        std::ptr::copy_nonoverlapping(
            &sin as *const libc::sockaddr_in as *const u8,
            &mut req.arp_pa as *mut libc::sockaddr as *mut u8,
            std::mem::size_of::<libc::sockaddr_in>(),
        )
    };
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac) {
        *d = s as libc::c_char;
    }
    req.arp_flags = ATF_COM;
    let name = iface.as_bytes();
    if name.len() >= req.arp_dev.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (d, s) in req.arp_dev.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a valid arpreq that outlives the call.
    let r = unsafe { libc::ioctl(fd, libc::SIOCSARP as _, &req as *const libc::arpreq) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

struct Rx {
    iface: usize,
    port: u16,
    src: SocketAddrV4,
    data: Vec<u8>,
}

/// A new configuration for the running core, and where its verdict goes.
type Reload = (Config, oneshot::Sender<Result<(), NeedsRestart>>);

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    core: Core,
    sockets: HashMap<(usize, u16), Arc<UdpSocket>>,
    log: Option<LeaseLog>,
    reload_tx: mpsc::Sender<Reload>,
    reload_rx: mpsc::Receiver<Reload>,
}

/// Why a reload did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    NeedsRestart(#[from] NeedsRestart),
    #[error("the server is not running")]
    Stopped,
}

/// Hands a running server a new configuration (the binary does it on
/// SIGHUP); see [`Core::reconfigure`] for what changes and what is kept.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Reload>,
}

impl ReloadHandle {
    /// Applies `config` between two packets; returns once the server has.
    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((config, tx))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        rx.await.map_err(|_| ReloadError::Stopped)??;
        Ok(())
    }
}

impl Server {
    /// Discovers the interfaces' addresses, opens the lease log (recovering
    /// its leases) and binds one socket per interface and port.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        if config.interfaces.is_empty() {
            return Err(Error::Config("no interfaces to serve on".into()));
        }
        let mut ifaces = Vec::new();
        for name in &config.interfaces {
            let (addr, prefix) = interface_ipv4(name).map_err(|source| Error::Interface {
                name: name.clone(),
                source,
            })?;
            if !config.proxy && !config.subnets.iter().any(|s| s.contains(addr)) {
                warn!(interface = %name, %addr, "no subnet is configured for this interface; only relayed requests are served on it");
            }
            ifaces.push(Iface {
                name: name.clone(),
                addr,
                prefix,
            });
        }
        let now = now_ms();
        let (log, recovered) = match &config.lease_db {
            Some(path) => {
                let (log, leases) = LeaseLog::open(path, now).map_err(|source| Error::LeaseDb {
                    path: path.clone(),
                    source,
                })?;
                info!(path = %path.display(), leases = leases.len(), "lease log opened");
                (Some(log), leases)
            }
            None => {
                warn!("no lease database: leases are kept in memory only");
                (None, Vec::new())
            }
        };
        let mut ports = vec![config.server_port];
        if config.proxy {
            ports.push(config.pxe_port);
        }
        let mut sockets = HashMap::new();
        for (i, ifc) in ifaces.iter().enumerate() {
            for &port in &ports {
                let s = bind_device_socket(&ifc.name, port)
                    .and_then(|s| UdpSocket::from_std(s))
                    .map_err(|source| Error::Bind {
                        what: format!("{}:{port}", ifc.name),
                        source,
                    })?;
                info!(interface = %ifc.name, addr = %ifc.addr, port, "listening");
                sockets.insert((i, port), Arc::new(s));
            }
        }
        let core = Core::new(config, ifaces, recovered, now);
        let (reload_tx, reload_rx) = mpsc::channel(1);
        Ok(Server {
            core,
            sockets,
            log,
            reload_tx,
            reload_rx,
        })
    }

    /// A handle that reconfigures the running server (take it before
    /// [`run`](Server::run)).
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            tx: self.reload_tx.clone(),
        }
    }

    /// The bound sockets' local addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .values()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Runs until `shutdown` resolves; then finishes the lease batch in flight
    /// (bounded by a grace period), sends its replies and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Server {
            mut core,
            sockets,
            log,
            reload_tx,
            mut reload_rx,
        } = self;
        // Only handles keep the channel open: with none, `recv` ends.
        drop(reload_tx);
        let (rx_tx, mut rx) = mpsc::channel::<Rx>(RX_QUEUE);
        let queue_full = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut readers = Vec::new();
        for (&(iface, port), sock) in &sockets {
            let sock = sock.clone();
            let tx = rx_tx.clone();
            let queue_full = queue_full.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let (n, src) = match sock.recv_from(&mut buf).await {
                        Ok(x) => x,
                        Err(e) => {
                            // Do not spin on a persistent error (interface gone).
                            debug!(error = %e, "recv failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let SocketAddr::V4(src) = src else { continue };
                    let rx = Rx {
                        iface,
                        port,
                        src,
                        data: buf[..n].to_vec(),
                    };
                    // A full queue means we are overloaded: drop (and count),
                    // as the kernel would.
                    match tx.try_send(rx) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            queue_full.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }));
        }
        drop(rx_tx);

        // The lease writer: a thread, since fsync blocks.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, bool)>();
        let (batch_tx, batch_rx) = std::sync::mpsc::channel::<IoBatch>();
        let writer = log.map(|mut log| {
            std::thread::Builder::new()
                .name("dhcpd-leases".into())
                .spawn(move || {
                    // Group-commit statistics, logged every 5 s while busy.
                    let (mut leases, mut max_batch, mut max_sync) = (0u64, 0usize, Duration::ZERO);
                    let mut report_at = std::time::Instant::now() + Duration::from_secs(5);
                    while let Ok(b) = batch_rx.recv() {
                        let t = std::time::Instant::now();
                        let ok = match log.append(&b.leases) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::error!(error = %e, "writing leases failed; their ACKs are dropped");
                                false
                            }
                        };
                        max_sync = max_sync.max(t.elapsed());
                        max_batch = max_batch.max(b.leases.len());
                        leases += b.leases.len() as u64;
                        if done_tx.send((b.id, ok)).is_err() {
                            break;
                        }
                        if std::time::Instant::now() >= report_at {
                            info!(leases, fsyncs = log.fsyncs(), max_batch, max_sync_ms = max_sync.as_millis() as u64, "lease writer");
                            report_at = std::time::Instant::now() + Duration::from_secs(5);
                        }
                    }
                    info!(leases, fsyncs = log.fsyncs(), max_batch, max_sync_ms = max_sync.as_millis() as u64, "lease writer finished");
                })
                .expect("spawning the lease writer thread")
        });
        let durable = writer.is_some();

        let mut send_errors = 0u64;
        let mut in_flight = false;
        let mut shutdown = std::pin::pin!(shutdown);
        // Every 10 s: warn if datagrams were dropped since the last check
        // (peer misbehaviour, rate-limited to one line); every minute: counters.
        let mut stats_at = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut ticks = 0u32;
        let mut dropped_before = 0u64;
        loop {
            let timeout = core.poll_timeout().saturating_sub(now_ms());
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some((id, ok)) = done_rx.recv() => {
                    core.complete(id, ok);
                    in_flight = false;
                }
                Some((cfg, verdict)) = reload_rx.recv() => {
                    let _ = verdict.send(core.reconfigure(cfg));
                }
                Some(first) = rx.recv() => {
                    let now = now_ms();
                    let mut next = Some(first);
                    let mut n = 0;
                    // Handle everything queued before issuing the lease batch:
                    // that is what makes the group commit.
                    while let Some(p) = next.take() {
                        core.handle(now, Ingress { iface: p.iface, local_port: p.port, src: p.src }, &p.data);
                        n += 1;
                        if n < RX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(timeout)) => core.handle_timeout(now_ms()),
                _ = tokio::time::sleep_until(stats_at) => {
                    let st = core.stats();
                    if st.dropped() > dropped_before {
                        warn!(
                            dropped = st.dropped() - dropped_before,
                            malformed = st.malformed,
                            rate_limited = st.rate_limited,
                            per_mac_limit = st.per_mac_limit,
                            "datagrams dropped in the last 10 s (totals since start follow)"
                        );
                        dropped_before = st.dropped();
                    }
                    ticks += 1;
                    if ticks % 6 == 0 {
                        log_stats(st);
                    }
                    stats_at = tokio::time::Instant::now() + Duration::from_secs(10);
                }
            }
            if !in_flight {
                if let Some(b) = core.poll_io() {
                    if durable {
                        in_flight = batch_tx.send(b).is_ok();
                    } else {
                        core.complete(b.id, true);
                    }
                }
            }
            send_all(&mut core, &sockets, &mut send_errors).await;
        }

        for r in &readers {
            r.abort();
        }
        // Make every record written so far durable (the batch in flight and
        // those queued behind it) and send their replies, bounded by the grace
        // period.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while durable && (in_flight || core.poll_io_pending()) {
            if !in_flight {
                match core.poll_io() {
                    Some(b) => in_flight = batch_tx.send(b).is_ok(),
                    None => break,
                }
                if !in_flight {
                    break;
                }
            }
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some((id, ok))) => {
                    core.complete(id, ok);
                    in_flight = false;
                }
                _ => {
                    warn!("lease writer did not finish within the grace period");
                    break;
                }
            }
            send_all(&mut core, &sockets, &mut send_errors).await;
        }
        drop(batch_tx);
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        log_stats(core.stats());
        info!(
            send_errors,
            queue_full = queue_full.load(std::sync::atomic::Ordering::Relaxed),
            "stopped"
        );
        Ok(())
    }
}

/// Sends every ready reply. A full socket buffer is waited for rather than
/// dropping the reply: the backlog then builds up in the receive queue, which
/// is bounded.
async fn send_all(
    core: &mut Core,
    sockets: &HashMap<(usize, u16), Arc<UdpSocket>>,
    errors: &mut u64,
) {
    while let Some(t) = core.poll_transmit() {
        let Some(s) = sockets.get(&(t.iface, t.from_port)) else {
            debug!(iface = t.iface, port = t.from_port, "no socket for reply");
            continue;
        };
        let mut dst = SocketAddr::V4(t.dst);
        if let (Some(mac), Some(fallback)) = (t.link_hint, t.fallback) {
            let iface = &core.ifaces()[t.iface].name;
            if let Err(e) = set_arp_entry(s.as_raw_fd(), iface, *t.dst.ip(), mac) {
                // Without the entry the unicast would wait for an ARP reply
                // that never comes: broadcast instead (RFC 2131 §4.1 allows it).
                debug!(error = %e, "cannot install ARP entry; broadcasting");
                dst = SocketAddr::V4(fallback);
            }
        }
        let r = match s.try_send_to(&t.payload, dst) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(Duration::from_secs(1), s.send_to(&t.payload, dst))
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            }
            r => r,
        };
        if let Err(e) = r {
            *errors += 1;
            debug!(dst = %t.dst, error = %e, "send failed");
        }
    }
}

fn log_stats(s: &Stats) {
    info!(
        received = s.received,
        offers = s.offers,
        acks = s.acks,
        naks = s.naks,
        dropped = s.dropped(),
        malformed = s.malformed,
        rate_limited = s.rate_limited,
        per_mac_limit = s.per_mac_limit,
        pool_exhausted = s.pool_exhausted,
        overloaded = s.overloaded,
        ignored = s.ignored,
        "statistics"
    );
}
