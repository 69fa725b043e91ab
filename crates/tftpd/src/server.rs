//! The tokio driver: UDP listeners that accept RRQ/WRQ (RFC 1350 section 4) and
//! start one transfer per request, each on its own ephemeral socket (its
//! transfer ID) served by a thread of the blocking pool (a blocking `recvfrom`
//! per packet, so the kernel wakes exactly the transfer an ACK is for), or, in
//! single-port mode, as an async task fed by the listener by peer address; plus
//! the optional HTTP listeners. The protocol itself lives in [`crate::proto`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use anyboot_boot_tree::BootTree;
use anyboot_wire::tftp::{ErrorCode, Mode, Packet, Repr, Request, MAX_PACKET_LEN};
use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::busy_poll::{self, BusyPoll};
use crate::cache::FileCache;
use crate::config::Config;
use crate::paths::{self, Refusal, Resolved};
use crate::proto::{self, netascii, Direction, Event, ReadTransfer, Source, WriteTransfer};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("no TFTP listen address configured")]
    NoListener,
    #[error("root {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Largest netascii file served (the conversion is done in memory).
const NETASCII_MAX: u64 = 16 << 20;
/// Bytes all netascii conversions in progress may hold together (each holds
/// up to twice its file's size), so hostile netascii requests cannot exhaust
/// memory.
const NETASCII_BUDGET: usize = 64 << 20;

/// State shared by listeners and transfers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The canonical root.
    pub(crate) root: PathBuf,
    pub(crate) cache: FileCache,
    sessions: Arc<Semaphore>,
    /// Peers with a transfer in progress (a retransmitted RRQ starts nothing).
    active: Mutex<HashSet<(SocketAddr, SocketAddr)>>,
    dropped: AtomicU64,
    netascii_budget: Arc<Semaphore>,
    /// Set when the shutdown grace period is over: blocking transfer threads
    /// stop at their next tick.
    abort: Arc<AtomicBool>,
    /// The files generated from the inventory (taken from
    /// `config.boot_tree`, which is left empty), replaced whole by a
    /// [`ReloadHandle`].
    boot_tree: RwLock<Arc<BootTree>>,
    /// CPUs this process may run on (the busy-poll gate).
    cpus: usize,
}

/// What a blocking transfer thread consults besides its socket.
#[derive(Debug, Clone)]
struct ThreadEnv {
    abort: Arc<AtomicBool>,
    sessions: Arc<Semaphore>,
    max_sessions: usize,
    cpus: usize,
    busy_poll: std::time::Duration,
}

impl ThreadEnv {
    /// Transfers running now (sessions taken).
    fn running(&self) -> usize {
        self.max_sessions
            .saturating_sub(self.sessions.available_permits())
    }
}

/// A file served to a transfer or an HTTP response.
#[derive(Debug)]
pub(crate) enum Body {
    Memory(Bytes),
    File(FileSource),
}

/// A file too large for the cache, read block by block (positional reads of a
/// page-cached file are short; the TFTP pace is set by the peer's ACKs).
#[derive(Debug)]
pub(crate) struct FileSource {
    pub(crate) file: std::fs::File,
    pub(crate) len: u64,
}

impl Source for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }
}

impl Source for Body {
    fn len(&self) -> u64 {
        match self {
            Body::Memory(b) => Source::len(b),
            Body::File(f) => f.len,
        }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Body::Memory(b) => b.read_at(offset, buf),
            Body::File(f) => f.read_at(offset, buf),
        }
    }
}

impl Shared {
    fn thread_env(&self) -> ThreadEnv {
        ThreadEnv {
            abort: self.abort.clone(),
            sessions: self.sessions.clone(),
            max_sessions: self.config.max_sessions,
            cpus: self.cpus,
            busy_poll: self.config.busy_poll,
        }
    }

    /// The boot tree in force now.
    fn boot_tree(&self) -> Arc<BootTree> {
        // A panic while swapping an `Arc` cannot leave it half written.
        self.boot_tree
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Name -> servable body, with the same rules for TFTP and HTTP.
    pub(crate) async fn open(&self, name: &[u8]) -> Result<(String, Body), Refusal> {
        let rel = paths::sanitize(name, &self.config.remap)?;
        let resolved = {
            let (root, tree, rel) = (self.root.clone(), self.boot_tree(), rel.clone());
            tokio::task::spawn_blocking(move || paths::resolve(&root, &tree, &rel))
                .await
                .map_err(|_| Refusal::AccessViolation("internal error"))??
        };
        let body = match resolved {
            Resolved::Virtual(b) => Body::Memory(b),
            Resolved::Real(path, meta) => match self.cache.get(&path, &meta).await {
                Ok(Some(b)) => Body::Memory(b),
                Ok(None) => {
                    let file = std::fs::File::open(&path)
                        .map_err(|_| Refusal::AccessViolation("cannot open"))?;
                    Body::File(FileSource {
                        file,
                        len: meta.len(),
                    })
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "read failed");
                    return Err(Refusal::AccessViolation("cannot read"));
                }
            },
        };
        Ok((rel, body))
    }
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    udp: Vec<Arc<UdpSocket>>,
    http: Vec<TcpListener>,
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // `0.0.0.0:69` and `[::]:69` may both be configured.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    // Room for a window of large blocks from many clients.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

impl Server {
    /// Binds every listener of `config` (port 0 picks a free port).
    pub async fn bind(mut config: Config) -> Result<Self, Error> {
        if config.listen.is_empty() {
            return Err(Error::NoListener);
        }
        let root = std::fs::canonicalize(&config.root).map_err(|source| Error::Root {
            path: config.root.clone(),
            source,
        })?;
        let mut udp = Vec::new();
        for &a in &config.listen {
            let s = bind_udp(a).map_err(|source| Error::Bind {
                what: format!("udp {a}"),
                source,
            })?;
            udp.push(Arc::new(s));
        }
        let mut http = Vec::new();
        for &a in &config.http_listen {
            http.push(TcpListener::bind(a).await.map_err(|source| Error::Bind {
                what: format!("http {a}"),
                source,
            })?);
        }
        let shared = Arc::new(Shared {
            root,
            cache: FileCache::new(config.cache_bytes, config.cache_max_file),
            sessions: Arc::new(Semaphore::new(config.max_sessions)),
            active: Mutex::new(HashSet::new()),
            dropped: AtomicU64::new(0),
            netascii_budget: Arc::new(Semaphore::new(NETASCII_BUDGET)),
            abort: Arc::new(AtomicBool::new(false)),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            // Moved out of the config, so the tree a reload replaced cannot
            // be served from a stale copy.
            boot_tree: RwLock::new(std::mem::replace(
                &mut config.boot_tree,
                Arc::new(BootTree::empty()),
            )),
            config,
        });
        Ok(Self { shared, udp, http })
    }

    /// The bound UDP (TFTP) addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The first TFTP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs()[0]
    }

    /// The bound HTTP addresses.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// A handle that changes what the running server generates from the
    /// inventory (take it before [`run`](Server::run)).
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            shared: self.shared.clone(),
        }
    }

    /// How many times a file was read from disk into the shared cache.
    pub fn cache_loads(&self) -> u64 {
        self.shared.cache.loads()
    }

    /// Serves until `shutdown` resolves, then stops accepting and gives
    /// in-flight transfers the configured grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for s in self.udp {
            let addr = s.local_addr().ok();
            info!(
                ?addr,
                single_port = self.shared.config.single_port,
                "tftp listening"
            );
            tasks.spawn(listener(s, self.shared.clone(), stop_rx.clone()));
        }
        for l in self.http {
            info!(addr = ?l.local_addr().ok(), "http listening");
            tasks.spawn(crate::http::listener(
                l,
                self.shared.clone(),
                stop_rx.clone(),
            ));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        info!("stopped");
        Ok(())
    }
}

/// Replaces a running server's boot tree, e.g. after the site file changed
/// (the binary does it on SIGHUP). Only the generated files change: listeners,
/// root, options and limits stay as bound.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    shared: Arc<Shared>,
}

impl ReloadHandle {
    /// Serves `tree` from now on. A transfer already running keeps the file
    /// it opened.
    pub fn set_boot_tree(&self, tree: Arc<BootTree>) {
        *self
            .shared
            .boot_tree
            .write()
            .unwrap_or_else(PoisonError::into_inner) = tree;
    }

    /// How many generated files are served now.
    pub fn boot_tree_len(&self) -> usize {
        self.shared.boot_tree().len()
    }
}

/// One UDP listener: accepts requests, owns the transfers it started.
async fn listener(sock: Arc<UdpSocket>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let local = sock.local_addr().expect("bound");
    let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
    let mut transfers: JoinSet<()> = JoinSet::new();
    // Which peer each transfer task serves (so even a panicked task's peer is
    // released).
    let mut peers: HashMap<tokio::task::Id, SocketAddr> = HashMap::new();
    let mut routes: HashMap<SocketAddr, mpsc::Sender<(SocketAddr, Vec<u8>)>> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(done) = transfers.join_next_with_id(), if !transfers.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        warn!(error = %e, "transfer task failed");
                        e.id()
                    }
                };
                if let Some(peer) = peers.remove(&id) {
                    routes.remove(&peer);
                    shared.active.lock().unwrap().remove(&(local, peer));
                }
            }
            r = sock.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "recv");
                        continue;
                    }
                };
                let dgram = &buf[..n];
                if let Some(tx) = routes.get(&from) {
                    // Single-port mode: the peer's transfer is running here.
                    let _ = tx.try_send((from, dgram.to_vec()));
                    continue;
                }
                let parsed = Packet::new_checked(dgram).and_then(|p| Repr::parse(&p));
                match parsed {
                    Ok(Repr::Rrq(_)) | Ok(Repr::Wrq(_)) => {}
                    Ok(Repr::Error { .. }) => continue,
                    Ok(_) => {
                        if shared.config.single_port {
                            let e = proto::error_packet(ErrorCode::UnknownTid, "unknown transfer ID");
                            let _ = sock.send_to(&e, from).await;
                        }
                        continue;
                    }
                    Err(e) => {
                        debug!(%from, error = %e, "malformed request");
                        let e = proto::error_packet(ErrorCode::IllegalOperation, "malformed request");
                        let _ = sock.send_to(&e, from).await;
                        continue;
                    }
                }
                if !shared.active.lock().unwrap().insert((local, from)) {
                    debug!(%from, "retransmitted request ignored");
                    continue;
                }
                let Ok(permit) = shared.sessions.clone().try_acquire_owned() else {
                    shared.active.lock().unwrap().remove(&(local, from));
                    let n = shared.dropped.fetch_add(1, Ordering::Relaxed);
                    if n % 100 == 0 {
                        warn!(%from, dropped = n + 1, "session limit reached; request dropped (the client retries)");
                    }
                    continue;
                };
                let link = if shared.config.single_port {
                    let (tx, rx) = mpsc::channel(256);
                    routes.insert(from, tx);
                    Link::Shared { sock: sock.clone(), rx }
                } else {
                    let bind = SocketAddr::new(local.ip(), 0);
                    match bind_udp(bind) {
                        Ok(s) => Link::Own(s),
                        Err(e) => {
                            warn!(error = %e, "cannot open a transfer socket");
                            shared.active.lock().unwrap().remove(&(local, from));
                            continue;
                        }
                    }
                };
                let request = dgram.to_vec();
                let shared2 = shared.clone();
                let handle = transfers.spawn(async move {
                    let _permit = permit;
                    transfer(shared2, link, from, request).await;
                });
                peers.insert(handle.id(), from);
            }
        }
    }
    drop(routes);
    let grace = shared.config.shutdown_grace;
    let drain = async { while transfers.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        info!(
            aborted = transfers.len(),
            "grace period over; aborting transfers"
        );
        // Blocking transfer threads see this at their next tick.
        shared.abort.store(true, Ordering::Relaxed);
        transfers.abort_all();
        while transfers.join_next().await.is_some() {}
    }
}

/// A transfer's datagram path.
enum Link {
    /// Its own socket: its port is the transfer ID.
    Own(UdpSocket),
    /// Single-port mode: the listener forwards the peer's datagrams.
    Shared {
        sock: Arc<UdpSocket>,
        rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    },
}

impl Link {
    async fn send(&self, buf: &[u8], dst: SocketAddr) {
        let s = match self {
            Link::Own(s) => s,
            Link::Shared { sock, .. } => sock,
        };
        if let Err(e) = s.send_to(buf, dst).await {
            debug!(error = %e, "send");
        }
    }

    /// Waits for the next datagram into `buf`.
    async fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        match self {
            Link::Own(s) => loop {
                match s.recv_from(buf).await {
                    Ok(x) => return Some(x),
                    // ICMP port unreachable from a vanished peer, and the like.
                    Err(e) => debug!(error = %e, "recv"),
                }
            },
            Link::Shared { rx, .. } => {
                let (from, d) = rx.recv().await?;
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Some((n, from))
            }
        }
    }
}

fn refusal_packet(r: &Refusal) -> Vec<u8> {
    match r {
        Refusal::NotFound => proto::error_packet(ErrorCode::FileNotFound, "file not found"),
        Refusal::AccessViolation(why) => proto::error_packet(ErrorCode::AccessViolation, why),
    }
}

async fn transfer(shared: Arc<Shared>, link: Link, peer: SocketAddr, request: Vec<u8>) {
    let Ok(Repr::Rrq(req) | Repr::Wrq(req)) =
        Packet::new_checked(&request[..]).and_then(|p| Repr::parse(&p))
    else {
        return;
    };
    let write = request[1] == 2;
    let name = String::from_utf8_lossy(req.filename).into_owned();
    let span =
        info_span!("transfer", %peer, file = %name, op = if write { "write" } else { "read" });
    async {
        if write {
            serve_write(&shared, link, peer, &req).await
        } else {
            serve_read(&shared, link, peer, &req).await
        }
    }
    .instrument(span)
    .await
}

async fn serve_read(shared: &Shared, link: Link, peer: SocketAddr, req: &Request<'_>) {
    let netascii = match req.mode {
        Mode::Octet => false,
        Mode::Netascii => true,
        _ => {
            let e = proto::error_packet(ErrorCode::IllegalOperation, "unsupported mode");
            link.send(&e, peer).await;
            return;
        }
    };
    let (rel, body) = match shared.open(req.filename).await {
        Ok(x) => x,
        Err(r) => {
            info!(refusal = ?r, "refused");
            link.send(&refusal_packet(&r), peer).await;
            return;
        }
    };
    let mut _netascii_permit = None;
    let body = if netascii {
        if body.len() > NETASCII_MAX {
            let e = proto::error_packet(ErrorCode::NotDefined, "file too large for netascii");
            link.send(&e, peer).await;
            return;
        }
        let Ok(permit) = shared
            .netascii_budget
            .clone()
            .try_acquire_many_owned(2 * body.len() as u32)
        else {
            let e = proto::error_packet(ErrorCode::NotDefined, "server busy, try again");
            link.send(&e, peer).await;
            return;
        };
        _netascii_permit = Some(permit);
        let mut raw = vec![0u8; body.len() as usize];
        if body.read_at(0, &mut raw).is_err() {
            link.send(
                &proto::error_packet(ErrorCode::NotDefined, "read error"),
                peer,
            )
            .await;
            return;
        }
        Body::Memory(Bytes::from(netascii::encode(&raw)))
    } else {
        body
    };
    let policy = shared.config.policy(peer.ip(), &rel);
    let nego = proto::negotiate(&req.options, Direction::Read { size: body.len() }, &policy);
    debug!(
        blksize = nego.blksize,
        windowsize = nego.windowsize,
        size = body.len(),
        "start"
    );
    let started = Instant::now();
    let t = ReadTransfer::new(started, peer, body, nego);
    drive(link, Core::Read(t), started, None, shared.thread_env()).await;
}

async fn serve_write(shared: &Shared, link: Link, peer: SocketAddr, req: &Request<'_>) {
    let refuse = |code, msg: &'static str| proto::error_packet(code, msg);
    let Some(up) = &shared.config.upload else {
        link.send(
            &refuse(ErrorCode::AccessViolation, "write requests are disabled"),
            peer,
        )
        .await;
        return;
    };
    let netascii = match req.mode {
        Mode::Octet => false,
        Mode::Netascii => true,
        _ => {
            link.send(
                &refuse(ErrorCode::IllegalOperation, "unsupported mode"),
                peer,
            )
            .await;
            return;
        }
    };
    let rel = match paths::sanitize(req.filename, &shared.config.remap) {
        Ok(r) if !r.contains('/') => r,
        Ok(_) => {
            link.send(
                &refuse(
                    ErrorCode::AccessViolation,
                    "uploads go into the upload directory only",
                ),
                peer,
            )
            .await;
            return;
        }
        Err(r) => {
            link.send(&refusal_packet(&r), peer).await;
            return;
        }
    };
    let target = up.dir.join(&rel);
    if !up.overwrite && std::fs::symlink_metadata(&target).is_ok() {
        link.send(&refuse(ErrorCode::FileExists, "file already exists"), peer)
            .await;
        return;
    }
    if std::fs::symlink_metadata(&target).is_ok_and(|m| !m.is_file()) {
        link.send(
            &refuse(ErrorCode::AccessViolation, "not a regular file"),
            peer,
        )
        .await;
        return;
    }
    let policy = shared.config.policy(peer.ip(), &rel);
    let nego = proto::negotiate(&req.options, Direction::Write, &policy);
    if nego.announced_size.is_some_and(|s| s > up.max_size) {
        link.send(
            &refuse(ErrorCode::DiskFull, "upload exceeds the size limit"),
            peer,
        )
        .await;
        return;
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = up.dir.join(format!(
        ".{rel}.{}.{}.part",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
    {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, path = %tmp.display(), "cannot create upload file");
            link.send(
                &refuse(ErrorCode::AccessViolation, "cannot create file"),
                peer,
            )
            .await;
            return;
        }
    };
    let started = Instant::now();
    let t = WriteTransfer::new(started, peer, nego, netascii, up.max_size);
    let sink = Upload {
        file,
        tmp,
        target,
        overwrite: up.overwrite,
    };
    drive(
        link,
        Core::Write(t),
        started,
        Some(sink),
        shared.thread_env(),
    )
    .await;
}

struct Upload {
    file: std::fs::File,
    tmp: PathBuf,
    target: PathBuf,
    overwrite: bool,
}

impl Upload {
    fn commit(self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let r = if self.overwrite {
            std::fs::rename(&self.tmp, &self.target)
        } else {
            // link(2) fails if the name appeared meanwhile: never overwrite.
            std::fs::hard_link(&self.tmp, &self.target)
                .and_then(|()| std::fs::remove_file(&self.tmp))
        };
        if r.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        r
    }

    fn abort(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn target_name(p: &Path) -> String {
    p.display().to_string()
}

enum Core {
    Read(ReadTransfer<Body>),
    Write(WriteTransfer),
}

impl Core {
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<proto::Transmit> {
        match self {
            Core::Read(t) => t.poll_transmit(buf),
            Core::Write(t) => t.poll_transmit(buf),
        }
    }
    fn poll_event(&mut self) -> Option<Event> {
        match self {
            Core::Read(t) => t.poll_event(),
            Core::Write(t) => t.poll_event(),
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Core::Read(t) => t.poll_timeout(),
            Core::Write(t) => t.poll_timeout(),
        }
    }
    fn handle(&mut self, now: Instant, from: SocketAddr, d: &[u8]) {
        match self {
            Core::Read(t) => t.handle(now, from, d),
            Core::Write(t) => t.handle(now, from, d),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Core::Read(t) => t.handle_timeout(now),
            Core::Write(t) => t.handle_timeout(now),
        }
    }
    fn is_finished(&self) -> bool {
        match self {
            Core::Read(t) => t.is_finished(),
            Core::Write(t) => t.is_finished(),
        }
    }
}

/// Drains the core's events: upload bytes to the sink, completion, failure.
/// Returns `false` if the transfer must stop now (the upload file failed).
fn handle_events(
    core: &mut Core,
    sink: &mut Option<Upload>,
    started: Instant,
    ok: &mut bool,
) -> bool {
    while let Some(ev) = core.poll_event() {
        match ev {
            Event::Data(d) => {
                if let Some(s) = sink.as_mut() {
                    if let Err(e) = s.file.write_all(&d) {
                        warn!(error = %e, "upload write failed");
                        if let Some(s) = sink.take() {
                            s.abort();
                        }
                        return false;
                    }
                }
            }
            Event::Done { bytes } => {
                let secs = started.elapsed().as_secs_f64();
                info!(bytes, secs, "transfer complete");
                *ok = true;
                if let Some(s) = sink.take() {
                    let target = target_name(&s.target);
                    match s.commit() {
                        Ok(()) => info!(path = %target, "upload stored"),
                        Err(e) => warn!(path = %target, error = %e, "upload not stored"),
                    }
                }
            }
            Event::Failed(why) => {
                info!(reason = ?why, "transfer failed");
                if let Some(s) = sink.take() {
                    s.abort();
                }
            }
        }
    }
    true
}

/// Longest a blocking transfer thread waits before it looks at its timer and
/// at the shutdown flag again.
const BLOCKING_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs a transfer: on its own socket, in a blocking thread (one `sendto` and
/// one blocking `recvfrom` per packet, and the kernel wakes exactly this
/// transfer: lock-step clients are latency-bound; while few transfers run, a
/// [`BusyPoll`] first polls for the packet instead of sleeping); in
/// single-port mode, as an async task fed by the listener.
async fn drive(link: Link, core: Core, started: Instant, sink: Option<Upload>, env: ThreadEnv) {
    match link {
        Link::Own(sock) => {
            let span = tracing::Span::current();
            let sock = match sock.into_std() {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot convert the transfer socket");
                    return;
                }
            };
            let r = tokio::task::spawn_blocking(move || {
                let _g = span.enter();
                drive_blocking(sock, core, started, sink, &env)
            })
            .await;
            if let Err(e) = r {
                warn!(error = %e, "transfer thread failed");
            }
        }
        link => drive_async(link, core, started, sink).await,
    }
}

fn drive_blocking(
    sock: std::net::UdpSocket,
    mut core: Core,
    started: Instant,
    mut sink: Option<Upload>,
    env: &ThreadEnv,
) {
    let mut busy = BusyPoll::new(env.busy_poll);
    let mut out = vec![0u8; MAX_PACKET_LEN];
    let mut inb = vec![0u8; MAX_PACKET_LEN + 1];
    let mut ok = false;
    if sock.set_nonblocking(false).is_err() || sock.set_read_timeout(Some(BLOCKING_TICK)).is_err() {
        return;
    }
    loop {
        while let Some(tx) = core.poll_transmit(&mut out) {
            if let Err(e) = sock.send_to(&out[..tx.len], tx.dst) {
                debug!(error = %e, "send");
            }
        }
        if !handle_events(&mut core, &mut sink, started, &mut ok) {
            return;
        }
        if core.is_finished() {
            break;
        }
        if env.abort.load(Ordering::Relaxed) {
            info!("aborted by shutdown");
            break;
        }
        let spun = match busy.spin_for(env.running(), env.cpus) {
            Some(budget) => {
                let r = busy_poll::spin_recv(&sock, &mut inb, budget).transpose();
                busy.record(r.is_some());
                r
            }
            None => None,
        };
        match spun.unwrap_or_else(|| sock.recv_from(&mut inb)) {
            Ok((n, from)) => core.handle(Instant::now(), from, &inb[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // ICMP port unreachable from a vanished peer, and the like.
            Err(e) => debug!(error = %e, "recv"),
        }
        // A steady stream of packets must not starve the timer.
        let now = Instant::now();
        if core.poll_timeout().is_some_and(|d| d <= now) {
            core.handle_timeout(now);
        }
    }
    if !ok {
        if let Some(s) = sink.take() {
            s.abort();
        }
    }
}

/// The async per-transfer loop (single-port mode): send what the core wants,
/// wait for a datagram or its timer, repeat until it is finished.
async fn drive_async(mut link: Link, mut core: Core, started: Instant, mut sink: Option<Upload>) {
    let mut out = vec![0u8; MAX_PACKET_LEN];
    let mut inb = vec![0u8; MAX_PACKET_LEN + 1];
    let mut ok = false;
    // One timer per transfer, re-armed lazily: in lock-step the deadline moves
    // with every ACK, so it is only reset when it must fire earlier; firing
    // early is harmless (the core ignores it) and re-arms to the real deadline.
    let sleep = tokio::time::sleep(std::time::Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        while let Some(tx) = core.poll_transmit(&mut out) {
            link.send(&out[..tx.len], tx.dst).await;
        }
        if !handle_events(&mut core, &mut sink, started, &mut ok) {
            return;
        }
        if core.is_finished() {
            break;
        }
        match (core.poll_timeout(), armed) {
            (Some(want), Some(at)) if at <= want => {}
            (Some(want), _) => {
                sleep.as_mut().reset(want.into());
                armed = Some(want);
            }
            (None, _) => armed = None,
        }
        tokio::select! {
            r = link.recv(&mut inb) => match r {
                Some((n, from)) => core.handle(Instant::now(), from, &inb[..n]),
                None => break,
            },
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                core.handle_timeout(Instant::now());
            }
        }
    }
    if !ok {
        if let Some(s) = sink.take() {
            s.abort();
        }
    }
}
