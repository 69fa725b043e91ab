//! The driver: `io_threads` threads per interface in leader/followers style.
//! The leader receives batches of frames into its own buffers, runs them
//! through the sans-IO core (behind a mutex, held only for `handle`), and
//! performs the storage requests itself: read or write straight into those
//! buffers, build the replies in place, send them in one batch; before slow
//! I/O it hands receiving to a follower. The data path allocates nothing per
//! frame.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyboot_images::{Attachment, BlockDevice, DiskMode, MediaClock};
use anyboot_wire::aoe::Mac;
use tracing::{debug, info, info_span, warn};

use crate::config::{Config, TargetConfig};
use crate::proto::{
    Core, CoreConfig, Counters, Iface, IoFailure, IoOp, IoRequest, Output, TargetInfo,
};
use crate::rawsock::{Listen, RawSocket, SocketError, BATCH};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("target {shelf}.{slot} ({path}): {source}")]
    Disk {
        shelf: u16,
        slot: u8,
        path: String,
        source: anyboot_images::Error,
    },
    #[error("invalid configuration: {key}: {problem}")]
    Config { key: String, problem: String },
    #[error("I/O thread failed: {0}")]
    Thread(String),
}

/// The devices of one target: the shared image, or one attachment per client.
#[derive(Debug)]
struct Devices {
    cfg: TargetConfig,
    shared: Option<Arc<dyn BlockDevice>>,
    /// Per-client attachments and when each last did I/O.
    clients: Mutex<HashMap<Mac, (Attachment, Instant)>>,
    /// Clients whose attachment failed recently: not retried (nor logged)
    /// for [`ATTACH_RETRY`], so a broken image does not flood the log.
    failed: Mutex<HashMap<Mac, Instant>>,
    max_clients: usize,
}

/// How often refused and dropped requests are summarised in a warning.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How long a failed attachment is not retried.
const ATTACH_RETRY: Duration = Duration::from_secs(1);

impl Devices {
    fn device(&self, client: Mac) -> Result<Arc<dyn BlockDevice>, IoFailure> {
        if let Some(d) = &self.shared {
            return Ok(d.clone());
        }
        {
            let mut map = self.clients.lock().expect("client map poisoned");
            if let Some((a, used)) = map.get_mut(&client) {
                *used = Instant::now();
                return Ok(a.device().clone());
            }
            if map.len() >= self.max_clients {
                warn!(
                    shelf = self.cfg.shelf,
                    slot = self.cfg.slot,
                    "too many clients with overlays"
                );
                return Err(IoFailure::Media);
            }
        }
        {
            let failed = self.failed.lock().expect("failure map poisoned");
            if failed
                .get(&client)
                .is_some_and(|t| t.elapsed() < ATTACH_RETRY)
            {
                return Err(IoFailure::Media);
            }
        }
        // Opening (creating an overlay) may take a while: not under the lock,
        // so other clients' I/O goes on. If two requests of one new client
        // race, the first attachment stored wins and the other is dropped.
        let key = mac_key(&client);
        let a = Attachment::open(&self.cfg.disk, &key).map_err(|e| {
            warn!(shelf = self.cfg.shelf, slot = self.cfg.slot, client = %key, error = %e, "cannot attach client");
            let mut failed = self.failed.lock().expect("failure map poisoned");
            if failed.len() >= self.max_clients {
                failed.retain(|_, t| t.elapsed() < ATTACH_RETRY);
            }
            if failed.len() < self.max_clients {
                failed.insert(client, Instant::now());
            }
            IoFailure::Media
        })?;
        let mut map = self.clients.lock().expect("client map poisoned");
        let (a, _) = map.entry(client).or_insert_with(|| {
            info!(shelf = self.cfg.shelf, slot = self.cfg.slot, client = %key, "attached client");
            (a, Instant::now())
        });
        Ok(a.device().clone())
    }

    /// `client` identified the disk. AoE has no sessions, so this is how a
    /// reboot shows: iPXE and the Linux driver identify a disk when they attach
    /// it and never while they have it open. After at least `reattach_gap`
    /// without I/O, a throwaway client starts its new boot on a fresh overlay
    /// (its old one is discarded); within the gap (iPXE handing the disk to an
    /// OS driver) it keeps the one it has.
    fn identified(&self, client: Mac) {
        if self.cfg.disk.mode != DiskMode::Throwaway {
            return;
        }
        let mut map = self.clients.lock().expect("client map poisoned");
        if let Some((_, used)) = map.get(&client) {
            let idle = used.elapsed();
            if idle >= self.cfg.reattach_gap {
                map.remove(&client);
                info!(
                    shelf = self.cfg.shelf,
                    slot = self.cfg.slot,
                    client = %mac_key(&client),
                    idle_secs = idle.as_secs(),
                    "client re-attached after a pause: its next boot gets a fresh throwaway overlay"
                );
            }
        }
    }

    fn flush_all(&self) {
        let flush = |d: &Arc<dyn BlockDevice>| {
            if let Err(e) = d.flush() {
                warn!(shelf = self.cfg.shelf, slot = self.cfg.slot, error = %e, "flush at shutdown failed");
            }
        };
        if let Some(d) = &self.shared {
            flush(d);
        }
        for (a, _) in self.clients.lock().expect("client map poisoned").values() {
            flush(a.device());
        }
    }
}

/// The key a per-client overlay is stored under: the client's MAC.
fn mac_key(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn map_err(e: anyboot_images::Error) -> IoFailure {
    match e {
        anyboot_images::Error::OutOfRange { .. } => IoFailure::OutOfRange,
        anyboot_images::Error::ReadOnly => IoFailure::ReadOnly,
        _ => IoFailure::Media,
    }
}

/// State shared by the receive and I/O threads.
#[derive(Debug)]
struct Shared {
    core: Mutex<Core>,
    sockets: Vec<RawSocket>,
    devices: Vec<Devices>,
    buf_len: usize,
    stop: AtomicBool,
    /// Per interface: which of its threads receives now (leader/followers).
    leaders: Vec<Leader>,
}

/// Leader/followers hand-over for one interface's threads: only the leader
/// receives. It keeps doing fast storage I/O itself (one hot thread, no
/// wake-ups: the cheapest path for page-cache or tmpfs speed I/O), and hands
/// receiving to a follower before a batch whose I/O is expected to be slow
/// (recent storage accesses averaging above
/// [`anyboot_images::media_clock::FAST_MEDIA`] each), so slow disks get
/// several requests in flight.
#[derive(Debug)]
struct Leader {
    taken: Mutex<bool>,
    cv: Condvar,
    /// How long recent batches' storage I/O took.
    io: MediaClock,
}

impl Default for Leader {
    fn default() -> Self {
        Self {
            taken: Mutex::new(false),
            cv: Condvar::new(),
            io: MediaClock::fast(),
        }
    }
}

impl Leader {
    /// Waits to become the leader; `false` if the server stops meanwhile.
    fn acquire(&self, stop: &AtomicBool) -> bool {
        let mut taken = self.taken.lock().expect("leader lock poisoned");
        while *taken {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            taken = self
                .cv
                .wait_timeout(taken, Duration::from_millis(100))
                .expect("leader lock poisoned")
                .0;
        }
        *taken = true;
        true
    }

    fn release(&self) {
        *self.taken.lock().expect("leader lock poisoned") = false;
        self.cv.notify_one();
    }

    fn io_is_slow(&self) -> bool {
        !self.io.is_fast()
    }

    fn record_io(&self, took: Duration) {
        self.io.record(took);
    }

    /// Records a batch of `ios` storage accesses that took `took` in all.
    /// The clock averages single accesses: a batch of 32 page-cache writes
    /// of 8 KiB takes longer than 50 µs without any of them being slow, and
    /// counting it whole sent jumbo-frame batches to a second thread (two
    /// writers on one file, and a hand-off per batch).
    fn record_batch(&self, took: Duration, ios: usize) {
        if ios > 0 {
            self.record_io(took / ios as u32);
        }
    }
}

impl Shared {
    fn perform(&self, io: &IoRequest, frame: &mut [u8]) -> Result<(), IoFailure> {
        let dev = self.devices[io.target].device(io.client)?;
        match &io.op {
            IoOp::Read { offset, .. } => dev.read_at(&mut frame[io.data_range()], *offset),
            IoOp::Write { offset, data } => dev.write_at(&frame[data.clone()], *offset, false),
            IoOp::Flush => dev.flush(),
        }
        .map_err(|e| {
            debug!(error = %e, "storage error");
            map_err(e)
        })
    }
}

/// A bound AoE target, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    io_threads: usize,
}

impl Server {
    /// Opens the raw sockets and the disks.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        config
            .validate()
            .map_err(|(key, problem)| Error::Config { key, problem })?;
        let mut sockets = Vec::new();
        for name in &config.interfaces {
            let s = RawSocket::open(name, Listen::AllVlans)?;
            // Bounds how long a thread takes to notice shutdown.
            s.set_read_timeout(Duration::from_millis(100))
                .map_err(|source| SocketError::Io {
                    name: name.clone(),
                    source,
                })?;
            info!(interface = %s.name, mac = %mac_key(&s.mac), mtu = s.mtu, "listening for AoE");
            sockets.push(s);
        }
        let mut devices = Vec::new();
        let mut infos = Vec::new();
        for t in &config.targets {
            let disk_err = |source| Error::Disk {
                shelf: t.shelf,
                slot: t.slot,
                path: t.disk.image.display().to_string(),
                source,
            };
            let (shared, size) = if t.disk.mode == DiskMode::Shared {
                let a = Attachment::open(&t.disk, "shared").map_err(disk_err)?;
                let d = a.device().clone();
                let size = d.size();
                (Some(d), size)
            } else {
                // Overlays have the base image's size; they are opened per
                // client on first use, in the target's own overlay directory.
                std::fs::create_dir_all(&t.disk.overlay_dir)
                    .map_err(|e| disk_err(anyboot_images::Error::Io(e)))?;
                let size = std::fs::metadata(&t.disk.image)
                    .map_err(|e| disk_err(anyboot_images::Error::Io(e)))?
                    .len();
                (None, size)
            };
            let read_only = t.disk.read_only || shared.as_ref().is_some_and(|d| d.is_read_only());
            info!(shelf = t.shelf, slot = t.slot, image = %t.disk.image.display(), size, read_only, mode = ?t.disk.mode, "target");
            infos.push(TargetInfo {
                shelf: t.shelf,
                slot: t.slot,
                sectors: size / 512,
                read_only,
                config_string: t.config_string.clone().into_bytes(),
                allowed_macs: t.allowed_macs.clone(),
                serial: format!("anyboot-{}.{}", t.shelf, t.slot),
                model: "anyboot AoE target".into(),
                buffer_count: t.buffer_count,
            });
            devices.push(Devices {
                cfg: t.clone(),
                shared,
                clients: Mutex::new(HashMap::new()),
                failed: Mutex::new(HashMap::new()),
                max_clients: config.max_clients,
            });
        }
        let ifaces = sockets
            .iter()
            .map(|s| Iface {
                mac: s.mac,
                mtu: s.mtu,
            })
            .collect();
        let buf_len = sockets.iter().map(|s| s.mtu).max().unwrap_or(1500) + 64;
        let n_ifaces = sockets.len();
        let core = Core::new(CoreConfig { targets: infos }, ifaces);
        Ok(Self {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                sockets,
                devices,
                buf_len,
                stop: AtomicBool::new(false),
                leaders: (0..n_ifaces).map(|_| Leader::default()).collect(),
            }),
            io_threads: config.io_threads,
        })
    }

    /// The interfaces served: name, MAC and MTU.
    pub fn interfaces(&self) -> Vec<(String, Mac, usize)> {
        self.shared
            .sockets
            .iter()
            .map(|s| (s.name.clone(), s.mac, s.mtu))
            .collect()
    }

    /// Serves until `shutdown` resolves, then finishes in-flight I/O, flushes
    /// the disks and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let mut threads = Vec::new();
        for iface in 0..self.shared.sockets.len() {
            for n in 0..self.io_threads {
                let shared = self.shared.clone();
                threads.push(spawn(format!("aoe-{iface}-{n}"), move || {
                    serve_thread(&shared, iface)
                })?);
            }
        }
        // Peer misbehaviour is logged per frame at debug level only; here it
        // becomes at most one warning per interval.
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Counters::default();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {
                    let now = self.shared.core.lock().expect("core poisoned").counters();
                    if now != last {
                        warn!(
                            malformed = now.malformed - last.malformed,
                            masked = now.masked - last.masked,
                            reserved = now.reserved - last.reserved,
                            aoe_errors = now.aoe_errors - last.aoe_errors,
                            ata_errors = now.ata_errors - last.ata_errors,
                            busy_drops = now.busy_drops - last.busy_drops,
                            "refused or dropped requests in the last {}s",
                            REPORT_EVERY.as_secs()
                        );
                        last = now;
                    }
                }
            }
        }
        info!("stopping: finishing in-flight requests");
        self.shared.stop.store(true, Ordering::SeqCst);
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut failed = None;
            // Each thread finishes the request it holds and notices the flag
            // within its receive timeout.
            for h in threads {
                if let Err(e) = h.join() {
                    failed = Some(format!("{e:?}"));
                }
            }
            for d in &shared.devices {
                d.flush_all();
            }
            match failed {
                Some(e) => Err(Error::Thread(e)),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| Error::Thread(e.to_string()))?
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| Error::Thread(e.to_string()))
}

/// One of `io_threads` threads per interface, in leader/followers fashion
/// (see [`Leader`]). The leader blocks in a batched receive (up to [`BATCH`]
/// frames per system call), runs the frames through the sans-IO core under
/// one lock, performs the resulting storage requests itself, each in the
/// buffer its frame arrived in, and sends all replies with one batched send.
/// Before slow storage I/O it lets a follower take over receiving, so disk
/// latency never stalls the interface. Compared with a receive thread handing
/// jobs to an I/O pool, fast I/O costs no thread hand-off at all.
fn serve_thread(shared: &Shared, iface: usize) {
    let sock = &shared.sockets[iface];
    let leader = &shared.leaders[iface];
    let _span = info_span!("aoe", interface = %sock.name).entered();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; shared.buf_len]).collect();
    let mut ranges = vec![0..0; BATCH];
    let mut jobs: Vec<Option<IoRequest>> = (0..BATCH).map(|_| None).collect();
    let mut lens = [0usize; BATCH];
    let mut replies = Vec::new();
    let mut identified: Vec<(usize, Mac)> = Vec::new();
    let mut leading = false;
    loop {
        if !leading {
            if !leader.acquire(&shared.stop) {
                return;
            }
            leading = true;
        }
        if shared.stop.load(Ordering::Relaxed) {
            leader.release();
            return;
        }
        let n = match sock.recv_frames(&mut bufs, &mut ranges, true) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "receive failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        {
            let mut core = shared.core.lock().expect("core poisoned");
            for i in 0..n {
                if ranges[i].is_empty() {
                    continue;
                }
                core.handle(iface, &bufs[i][ranges[i].clone()]);
                while let Some(o) = core.poll_output() {
                    match o {
                        Output::Transmit(t) => replies.push(t),
                        Output::Io(io) => jobs[i] = Some(io),
                        Output::Identified { target, client } => identified.push((target, client)),
                    }
                }
            }
        }
        // Outside the core's lock: dropping an overlay deletes a file.
        for (t, client) in identified.drain(..) {
            shared.devices[t].identified(client);
        }
        let ios = jobs[..n].iter().filter(|j| j.is_some()).count();
        let has_io = ios > 0;
        if has_io && leader.io_is_slow() {
            leader.release();
            leading = false;
        }
        let started = Instant::now();
        for i in 0..n {
            lens[i] = 0;
            if let Some(io) = &jobs[i] {
                let frame = &mut bufs[i][ranges[i].start..];
                let result = shared.perform(io, frame);
                lens[i] = io.complete(result, frame);
            }
        }
        leader.record_batch(started.elapsed(), ios);
        // Every reply goes out on the interface its request came in on.
        let data = (0..n)
            .filter(|i| lens[*i] > 0)
            .map(|i| &bufs[i][ranges[i].start..ranges[i].start + lens[i]]);
        let ctl = replies.iter().map(|t| t.frame.as_slice());
        if let Err(e) = sock.send_frames(ctl.chain(data)) {
            warn!(error = %e, "send failed");
        }
        replies.clear();
        if has_io {
            let mut core = shared.core.lock().expect("core poisoned");
            for j in jobs[..n].iter_mut() {
                if let Some(io) = j.take() {
                    core.io_done(io.target);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hands_over_only_after_slow_io() {
        let l = Leader::default();
        assert!(!l.io_is_slow());
        for _ in 0..50 {
            l.record_io(Duration::from_micros(5));
        }
        assert!(!l.io_is_slow(), "page-cache speed keeps one hot leader");
        for _ in 0..50 {
            l.record_io(Duration::from_millis(2));
        }
        assert!(l.io_is_slow(), "disk latency makes the leader hand over");
        for _ in 0..80 {
            l.record_io(Duration::from_micros(5));
        }
        assert!(!l.io_is_slow(), "and fast I/O takes it back");
    }

    #[test]
    fn a_batch_counts_as_its_accesses_not_as_one() {
        let l = Leader::default();
        // 32 page-cache writes of 4 µs each: 128 µs for the batch.
        for _ in 0..50 {
            l.record_batch(Duration::from_micros(128), 32);
        }
        assert!(!l.io_is_slow(), "a full batch of fast accesses stays fast");
        // A batch without storage access records nothing.
        for _ in 0..10 {
            l.record_batch(Duration::from_secs(1), 0);
        }
        assert!(!l.io_is_slow());
        // 4 disk reads of 5 ms each.
        for _ in 0..10 {
            l.record_batch(Duration::from_millis(20), 4);
        }
        assert!(l.io_is_slow());
    }

    #[test]
    fn one_leader_at_a_time_and_stop_releases_waiters() {
        let l = Arc::new(Leader::default());
        let stop = Arc::new(AtomicBool::new(false));
        assert!(l.acquire(&stop));
        let (l2, s2) = (l.clone(), stop.clone());
        let waiter = std::thread::spawn(move || l2.acquire(&s2));
        // The waiter leads once we release.
        l.release();
        assert!(waiter.join().unwrap());
        // Now it leads; a third acquirer gives up once the server stops.
        let (l3, s3) = (l.clone(), stop.clone());
        let third = std::thread::spawn(move || l3.acquire(&s3));
        stop.store(true, Ordering::SeqCst);
        assert!(!third.join().unwrap());
    }
}
