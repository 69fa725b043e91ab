//! The tokio driver: accepts TCP and Unix connections, runs the handshake
//! core (with STARTTLS via rustls), opens devices, then pipelines
//! transmission requests onto the blocking pool and writes replies as they
//! complete, out of order, with a per-connection bound on bytes in flight.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyboot_images::{Attachment, BlockDevice, DiskMode};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

use crate::config::{path_safe, Backing, Config, TlsFiles};
use crate::exec;
use crate::proto::handshake::{Handshake, Negotiated, Step};
use crate::proto::transmission::{Action, Transmission};
use crate::proto::{DeviceFacts, ExportInfo, TlsMode};
use crate::threaded::{self, Converted, IntoStd};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("export `{name}`: {source}")]
    Export {
        name: String,
        source: anyboot_images::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// An export as served.
#[derive(Debug)]
struct Export {
    info: ExportInfo,
    backing: Backing,
    /// The device every connection shares (shared mode), kept open.
    shared: Option<Arc<dyn BlockDevice>>,
    _attachment: Option<Attachment>,
}

struct Shared {
    exports: Vec<Export>,
    catalog: Arc<Vec<ExportInfo>>,
    tls: Option<TlsAcceptor>,
    config: Config,
    connections: Arc<Semaphore>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("exports", &self.exports)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    tcp: Vec<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    shared: Arc<Shared>,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix => write!(f, "unix"),
        }
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, Error> {
    use rustls::pki_types::CertificateDer;
    let open = |p: &PathBuf| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|e| Error::Tls(format!("{}: {e}", p.display())))
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut open(&files.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate in it",
            files.cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut open(&files.key)?)
        .map_err(|e| Error::Tls(format!("{}: {e}", files.key.display())))?
        .ok_or_else(|| Error::Tls(format!("{}: no private key in it", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

impl Server {
    /// Opens shared exports, loads TLS material and binds every listener.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        config.validate().map_err(Error::Config)?;
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let mut exports = Vec::new();
        for e in &config.exports {
            let tls_mode = e.tls.unwrap_or(if tls.is_some() {
                TlsMode::Optional
            } else {
                TlsMode::Off
            });
            let err = |source| Error::Export {
                name: e.name.clone(),
                source,
            };
            let (shared, attachment, read_only) = match &e.backing {
                Backing::Device(d) => (Some(d.clone()), None, d.is_read_only()),
                Backing::Disk(spec) if spec.mode == DiskMode::Shared => {
                    let spec2 = spec.clone();
                    let a = tokio::task::spawn_blocking(move || Attachment::open(&spec2, "shared"))
                        .await
                        .expect("open task")
                        .map_err(err)?;
                    let d = a.device().clone();
                    let ro = d.is_read_only() || spec.read_only;
                    (Some(d), Some(a), ro)
                }
                Backing::Disk(spec) => {
                    std::fs::create_dir_all(&spec.overlay_dir).map_err(|e| err(e.into()))?;
                    (None, None, false)
                }
            };
            let (size, block_size, can_fast_zero) = match (&shared, &e.backing) {
                (Some(d), _) => (d.size(), d.block_size(), d.can_fast_zero()),
                (None, Backing::Disk(spec)) => {
                    // The base's size as the images library sees it (raw,
                    // overlay or versioned image): open it read-only once.
                    let probe = anyboot_images::DiskSpec {
                        read_only: true,
                        mode: DiskMode::Shared,
                        ..spec.clone()
                    };
                    let d = tokio::task::spawn_blocking(move || {
                        Attachment::open(&probe, "probe").map(|a| {
                            let d = a.device();
                            (d.size(), d.block_size())
                        })
                    })
                    .await
                    .expect("probe task")
                    .map_err(err)?;
                    (d.0, d.1, false)
                }
                (None, Backing::Device(_)) => unreachable!("device exports are shared"),
            };
            exports.push(Export {
                info: ExportInfo {
                    name: e.name.clone(),
                    description: e.description.clone(),
                    size,
                    read_only,
                    tls: tls_mode,
                    shared_device: shared.is_some(),
                    block_size,
                    can_fast_zero,
                },
                backing: e.backing.clone(),
                shared,
                _attachment: attachment,
            });
        }
        let mut tcp = Vec::new();
        for a in &config.listen {
            let l = TcpListener::bind(a).await.map_err(|source| Error::Bind {
                what: a.to_string(),
                source,
            })?;
            tcp.push(l);
        }
        let unix = match &config.unix {
            Some(p) => {
                // A socket file left by a previous run would make bind fail;
                // anything else at that path is not ours to remove.
                if let Ok(m) = std::fs::symlink_metadata(p) {
                    if m.file_type().is_socket() {
                        let _ = std::fs::remove_file(p);
                    }
                }
                let l = UnixListener::bind(p).map_err(|source| Error::Bind {
                    what: p.display().to_string(),
                    source,
                })?;
                Some((l, p.clone()))
            }
            None => None,
        };
        let catalog = Arc::new(exports.iter().map(|e| e.info.clone()).collect());
        Ok(Server {
            tcp,
            unix,
            shared: Arc::new(Shared {
                exports,
                catalog,
                tls,
                connections: Arc::new(Semaphore::new(config.max_connections)),
                config,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// The bound TCP addresses (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The first bound TCP address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addrs().into_iter().next()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets
    /// connections finish their in-flight requests (bounded by the grace
    /// period), flushes every shared device and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        for l in self.tcp {
            if let Ok(a) = l.local_addr() {
                info!(addr = %a, "listening");
            }
            tokio::spawn(accept_tcp(
                l,
                self.shared.clone(),
                stop_rx.clone(),
                alive_tx.clone(),
            ));
        }
        let unix_path = self.unix.as_ref().map(|(_, p)| p.clone());
        if let Some((l, p)) = self.unix {
            info!(path = %p.display(), "listening");
            tokio::spawn(accept_unix(
                l,
                self.shared.clone(),
                stop_rx.clone(),
                alive_tx.clone(),
            ));
        }
        shutdown.await;
        info!("stopping: no new connections, draining");
        let _ = stop_tx.send(true);
        drop(alive_tx);
        // Every task holds a sender: recv() yields None once all are gone.
        let grace = self.shared.config.shutdown_grace * 2;
        if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
            warn!("connections still busy after the grace period; abandoning them");
        }
        for e in &self.shared.exports {
            if let Some(d) = e.shared.clone() {
                let name = e.info.name.clone();
                let r = tokio::task::spawn_blocking(move || d.flush()).await;
                if let Ok(Err(err)) = r {
                    warn!(export = %name, error = %err, "flush at shutdown failed");
                }
            }
        }
        if let Some(p) = unix_path {
            let _ = std::fs::remove_file(p);
        }
        info!("stopped");
        Ok(())
    }
}

async fn accept_tcp(
    l: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let (s, addr) = tokio::select! {
            _ = stop.changed() => return,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = s.set_nodelay(true);
        spawn_conn(s, Peer::Tcp(addr), &shared, &stop, &alive);
    }
}

async fn accept_unix(
    l: UnixListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let s = tokio::select! {
            _ = stop.changed() => return,
            r = l.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        spawn_conn(s, Peer::Unix, &shared, &stop, &alive);
    }
}

fn spawn_conn<S>(
    s: S,
    peer: Peer,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static + IntoStd,
{
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        warn!(%peer, "connection limit reached; closing");
        return;
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", id, %peer);
    let (shared, stop, alive) = (shared.clone(), stop.clone(), alive.clone());
    tokio::spawn(
        async move {
            let _alive = alive;
            let _permit = permit;
            debug!("connected");
            serve(s, peer, id, shared, stop).await;
            debug!("closed");
        }
        .instrument(span),
    );
}

/// A client's device for the length of its connection.
struct Attached {
    dev: Arc<dyn BlockDevice>,
    /// Keeps a per-connection overlay alive; dropped (and so discarded, for
    /// throwaway overlays) when the connection ends.
    _attachment: Option<Attachment>,
}

enum HsEnd {
    Closed,
    Tls,
    Done(Attached),
}

async fn serve<S>(
    mut s: S,
    peer: Peer,
    id: u64,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static + IntoStd,
{
    let mut hs = Handshake::new(shared.catalog.clone(), shared.tls.is_some());
    let mut buf = BytesMut::with_capacity(4096);
    let deadline = Instant::now() + shared.config.handshake_timeout;
    match handshake(
        &mut s, &mut hs, &mut buf, &shared, &peer, id, deadline, &mut stop,
    )
    .await
    {
        HsEnd::Closed => {}
        HsEnd::Done(att) => {
            let neg = hs.negotiated().expect("negotiated after Done");
            match s.into_std_conn() {
                Converted::Std(conn) => {
                    let c = &shared.config;
                    threaded::serve(
                        conn,
                        buf,
                        Transmission::new(neg),
                        att.dev.clone(),
                        c.io_threads,
                        c.max_inflight_bytes,
                        c.shutdown_grace,
                        stop,
                    )
                    .await;
                    // Dropping a throwaway overlay deletes it: blocking work.
                    let _ = tokio::task::spawn_blocking(move || drop(att)).await;
                }
                Converted::Keep(s) => transmission(s, buf, neg, att, &shared, stop).await,
                Converted::Lost(e) => warn!(error = %e, "socket lost entering transmission"),
            }
        }
        HsEnd::Tls => {
            let acceptor = shared.tls.clone().expect("STARTTLS only with TLS");
            let mut t = match tokio::time::timeout_at(deadline, acceptor.accept(s)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    warn!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    warn!("TLS handshake timed out");
                    return;
                }
            };
            debug!("TLS established");
            hs.tls_started();
            match handshake(
                &mut t, &mut hs, &mut buf, &shared, &peer, id, deadline, &mut stop,
            )
            .await
            {
                HsEnd::Done(att) => {
                    let neg = hs.negotiated().expect("negotiated after Done");
                    transmission(t, buf, neg, att, &shared, stop).await;
                }
                // The core refuses a second STARTTLS.
                HsEnd::Tls | HsEnd::Closed => {
                    let _ = t.shutdown().await;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn handshake<S>(
    s: &mut S,
    hs: &mut Handshake,
    buf: &mut BytesMut,
    shared: &Arc<Shared>,
    peer: &Peer,
    id: u64,
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
) -> HsEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut next: Option<Step> = None;
    let mut attached: Option<Attached> = None;
    loop {
        let step = match next.take() {
            Some(s) => s,
            None => hs.handle(buf),
        };
        if let Some(out) = hs.poll_transmit() {
            if s.write_all(&out).await.is_err() {
                return HsEnd::Closed;
            }
        }
        match step {
            Step::Continue => continue,
            Step::NeedMore => {
                if s.flush().await.is_err() {
                    return HsEnd::Closed;
                }
                if *stop.borrow() {
                    return HsEnd::Closed;
                }
                let r = tokio::select! {
                    _ = stop.changed() => return HsEnd::Closed,
                    r = tokio::time::timeout_at(deadline, s.read_buf(buf)) => r,
                };
                match r {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(Ok(_)) => return HsEnd::Closed,
                    Ok(Err(e)) => {
                        debug!(error = %e, "read failed during handshake");
                        return HsEnd::Closed;
                    }
                    Err(_) => {
                        warn!("handshake timed out");
                        return HsEnd::Closed;
                    }
                }
            }
            Step::StartTls => {
                let _ = s.flush().await;
                if !buf.is_empty() {
                    warn!("client sent data before the TLS handshake");
                    return HsEnd::Closed;
                }
                return HsEnd::Tls;
            }
            Step::Open { export } => {
                let r = open(shared, export, peer, id).await;
                let info = &shared.exports[export].info;
                let facts = match r {
                    Ok(a) => {
                        let f = DeviceFacts {
                            size: a.dev.size(),
                            read_only: a.dev.is_read_only() || info.read_only,
                            block_size: a.dev.block_size(),
                            can_fast_zero: a.dev.can_fast_zero(),
                            shared_device: info.shared_device,
                        };
                        attached = Some(a);
                        Ok(f)
                    }
                    Err(e) => {
                        warn!(export = %info.name, error = %e, "cannot attach");
                        Err(e.to_string())
                    }
                };
                next = Some(hs.opened(facts));
            }
            Step::Close(why) => {
                let _ = s.flush().await;
                debug!(why, "handshake ended");
                return HsEnd::Closed;
            }
            Step::Done => {
                if s.flush().await.is_err() {
                    return HsEnd::Closed;
                }
                return match attached.take() {
                    Some(a) => {
                        info!(export = %shared.exports[hs.negotiated().map_or(0, |n| n.export)].info.name, "transmission");
                        HsEnd::Done(a)
                    }
                    None => HsEnd::Closed,
                };
            }
        }
    }
}

/// Attaches the client to an export's device (blocking work on the pool).
async fn open(
    shared: &Arc<Shared>,
    export: usize,
    peer: &Peer,
    id: u64,
) -> Result<Attached, anyboot_images::Error> {
    let e = &shared.exports[export];
    if let Some(d) = &e.shared {
        return Ok(Attached {
            dev: d.clone(),
            _attachment: None,
        });
    }
    let Backing::Disk(spec) = &e.backing else {
        unreachable!("device exports are shared")
    };
    let key = match (spec.mode, peer) {
        // One overlay per host: its configured name, else its address.
        (DiskMode::Persistent, Peer::Tcp(a)) => shared
            .config
            .host_names
            .get(&a.ip().to_canonical())
            .cloned()
            .unwrap_or_else(|| a.ip().to_canonical().to_string()),
        (DiskMode::Persistent, Peer::Unix) => "local".to_owned(),
        // One overlay per connection.
        (_, p) => format!("conn{id}-{p}"),
    };
    let key = path_safe(&key);
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || Attachment::open(&spec, &key))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("attach task failed").into()))
        .map(|a| Attached {
            dev: a.device().clone(),
            _attachment: Some(a),
        })
}

type Frame = (Vec<Bytes>, OwnedSemaphorePermit);

async fn transmission<S>(
    s: S,
    leftover: BytesMut,
    neg: Negotiated,
    att: Attached,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let core = Transmission::new(neg);
    let enc = core.encoder();
    let (rd, wr) = tokio::io::split(s);
    // Whatever the handshake read past its last option is the first request.
    let rd = std::io::Cursor::new(leftover.freeze()).chain(rd);
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(async move {
        let mut wr = BufWriter::with_capacity(256 * 1024, wr);
        while let Some((frames, permit)) = rx.recv().await {
            for f in &frames {
                if let Err(e) = wr.write_all(f).await {
                    debug!(error = %e, "write failed");
                    return;
                }
            }
            // Memory for this reply is free again once it is written.
            drop(permit);
            if rx.is_empty() && wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    });
    // Every queued or running request holds permits for the bytes it
    // buffers, so a client cannot make us hold more than this per connection.
    let limit = shared
        .config
        .max_inflight_bytes
        .min(u64::from(u32::MAX >> 4)) as u32;
    let sem = Arc::new(Semaphore::new(limit as usize));
    let acquire = |cost: u64| {
        let n = cost.min(u64::from(limit)) as u32;
        sem.clone().acquire_many_owned(n)
    };
    let mut hdr = vec![0u8; core.header_len()];
    let why: &str = loop {
        if *stop.borrow() {
            break "server shutting down";
        }
        let r = tokio::select! {
            biased;
            _ = stop.changed() => break "server shutting down",
            r = rd.read_exact(&mut hdr) => r,
        };
        if r.is_err() {
            break "client closed the connection";
        }
        match core.on_header(&hdr) {
            Action::Execute(op) => {
                debug!(cookie = op.cookie, offset = op.offset, kind = ?std::mem::discriminant(&op.kind), "request");
                let Ok(permit) = acquire(op.cost()).await else {
                    break "semaphore closed";
                };
                let (dev, tx) = (att.dev.clone(), tx.clone());
                tokio::task::spawn_blocking(move || {
                    let frames = exec::execute(&*dev, op, enc);
                    let _ = tx.send((frames, permit));
                });
            }
            Action::ReadPayload { req, len } => {
                let Ok(permit) = acquire(len as u64 + 64).await else {
                    break "semaphore closed";
                };
                let mut data = BytesMut::zeroed(len);
                if rd.read_exact(&mut data).await.is_err() {
                    break "client closed the connection mid-request";
                }
                let op = core.write_op(&req, data.freeze());
                let (dev, tx) = (att.dev.clone(), tx.clone());
                tokio::task::spawn_blocking(move || {
                    let frames = exec::execute(&*dev, op, enc);
                    let _ = tx.send((frames, permit));
                });
            }
            Action::SkipPayload { len, reply } => {
                let mut take = (&mut rd).take(len);
                match tokio::io::copy(&mut take, &mut tokio::io::sink()).await {
                    Ok(n) if n == len => {}
                    _ => break "client closed the connection mid-request",
                }
                let Ok(permit) = acquire(reply.len() as u64).await else {
                    break "semaphore closed";
                };
                let _ = tx.send((vec![reply.freeze()], permit));
            }
            Action::Reply(reply) => {
                let Ok(permit) = acquire(reply.len() as u64).await else {
                    break "semaphore closed";
                };
                let _ = tx.send((vec![reply.freeze()], permit));
            }
            Action::ReplyAndClose(reply) => {
                warn!("malformed request; closing after the reply");
                if let Ok(permit) = acquire(reply.len() as u64).await {
                    let _ = tx.send((vec![reply.freeze()], permit));
                }
                break "malformed request";
            }
            Action::Disconnect => break "client disconnected",
            Action::Close(why) => {
                warn!(why, "protocol violation; closing");
                break why;
            }
        }
    };
    debug!(why, "transmission ending");
    // Wait until every request has been answered (all permits are back),
    // within the grace period, then make the writes durable.
    let grace = shared.config.shutdown_grace;
    if tokio::time::timeout(grace, sem.acquire_many(limit))
        .await
        .is_err()
    {
        warn!("in-flight requests did not finish within the grace period");
    }
    let dev = att.dev.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || dev.flush()).await {
        warn!(error = %e, "flush at disconnect failed");
    }
    drop(tx);
    let _ = tokio::time::timeout(grace, writer).await;
    // Dropping a throwaway overlay deletes it: blocking work.
    let _ = tokio::task::spawn_blocking(move || drop(att)).await;
}
