//! Driver tests through the library API with instrumented devices: replies
//! leave out of order as requests complete, bytes in flight per connection
//! stay under the configured bound, and shutdown drains and returns.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyboot_images::raw::RawFile;
use anyboot_images::{BlockDevice, Extent, Result as ImgResult};
use anyboot_nbd_server::{Config, ExportConfig, Server};

/// A RAM device whose read at offset 0 waits until a read at 1 MiB is done,
/// and which records the most bytes ever inside `read_at` at once.
#[derive(Debug)]
struct Instrumented {
    inner: RawFile,
    gate: (Mutex<bool>, Condvar),
    gated: bool,
    slow: Duration,
    inflight: AtomicU64,
    max_inflight: AtomicU64,
}

impl Instrumented {
    fn new(gated: bool, slow: Duration) -> Self {
        Self {
            inner: RawFile::memory(8 << 20).unwrap(),
            gate: (Mutex::new(false), Condvar::new()),
            gated,
            slow,
            inflight: AtomicU64::new(0),
            max_inflight: AtomicU64::new(0),
        }
    }
}

impl BlockDevice for Instrumented {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> ImgResult<()> {
        let now = self.inflight.fetch_add(buf.len() as u64, Ordering::SeqCst) + buf.len() as u64;
        self.max_inflight.fetch_max(now, Ordering::SeqCst);
        if self.gated && offset == 0 {
            let (m, c) = &self.gate;
            let open = m.lock().unwrap();
            // Bounded wait: if the gate never opens, the order check fails
            // instead of the test hanging.
            let _ = c.wait_timeout_while(open, Duration::from_secs(10), |o| !*o);
        }
        std::thread::sleep(self.slow);
        let r = self.inner.read_at(buf, offset);
        if self.gated && offset == 1 << 20 {
            *self.gate.0.lock().unwrap() = true;
            self.gate.1.notify_all();
        }
        self.inflight.fetch_sub(buf.len() as u64, Ordering::SeqCst);
        r
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> ImgResult<()> {
        self.inner.write_at(buf, offset, fua)
    }
    fn flush(&self) -> ImgResult<()> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64) -> ImgResult<()> {
        self.inner.trim(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> ImgResult<()> {
        self.inner.write_zeroes(offset, len, may_trim)
    }
    fn block_status(&self, offset: u64, len: u64) -> ImgResult<Vec<Extent>> {
        self.inner.block_status(offset, len)
    }
}

/// Connects, negotiates simple replies and enters transmission on "d".
fn client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut o = b"IHAVEOPT".to_vec();
    o.extend_from_slice(&7u32.to_be_bytes());
    o.extend_from_slice(&7u32.to_be_bytes());
    o.extend_from_slice(&1u32.to_be_bytes());
    o.extend_from_slice(b"d");
    o.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&o).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut d = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut d).unwrap();
        assert_eq!(ty & 0x8000_0000, 0, "GO refused");
        if ty == 1 {
            return s;
        }
    }
}

fn read_request(cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// Reads one simple read reply of `len` bytes; returns its cookie.
fn read_reply(s: &mut TcpStream, len: usize) -> u64 {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        &h[0..8],
        &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0],
        "simple ok reply"
    );
    let mut d = vec![0u8; len];
    s.read_exact(&mut d).unwrap();
    u64::from_be_bytes(h[8..16].try_into().unwrap())
}

async fn serve(
    dev: Arc<Instrumented>,
    max_inflight: u64,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut c = Config::new(vec!["127.0.0.1:0".parse().unwrap()]);
    c.max_inflight_bytes = max_inflight;
    c.exports.push(ExportConfig::device("d", dev));
    let server = Server::bind(c).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let h = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_leave_in_completion_order() {
    let dev = Arc::new(Instrumented::new(true, Duration::ZERO));
    let (addr, stop, h) = serve(dev, 64 << 20).await;
    let order = tokio::task::spawn_blocking(move || {
        let mut s = client(addr);
        let mut b = read_request(1, 0, 4096);
        b.extend(read_request(2, 1 << 20, 4096));
        s.write_all(&b).unwrap();
        [read_reply(&mut s, 4096), read_reply(&mut s, 4096)]
    })
    .await
    .unwrap();
    // Request 1 could only finish after request 2 had: 2 is answered first.
    assert_eq!(order, [2, 1]);
    stop.send(()).unwrap();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_in_flight_stay_under_the_bound() {
    let dev = Arc::new(Instrumented::new(false, Duration::from_millis(3)));
    let limit = 2 << 20;
    let (addr, stop, h) = serve(dev.clone(), limit).await;
    let n = tokio::task::spawn_blocking(move || {
        let mut s = client(addr);
        let mut b = Vec::new();
        for i in 0..32u64 {
            b.extend(read_request(i, (i % 8) << 20, 512 << 10));
        }
        s.write_all(&b).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..32 {
            seen.insert(read_reply(&mut s, 512 << 10));
        }
        seen.len()
    })
    .await
    .unwrap();
    assert_eq!(n, 32);
    let max = dev.max_inflight.load(Ordering::SeqCst);
    assert!(
        max <= limit,
        "{max} bytes were in flight with a bound of {limit}"
    );
    stop.send(()).unwrap();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_connected_client_returns() {
    let dev = Arc::new(Instrumented::new(false, Duration::ZERO));
    let (addr, stop, h) = serve(dev, 64 << 20).await;
    let mut s = tokio::task::spawn_blocking(move || client(addr))
        .await
        .unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h)
        .await
        .expect("run() returned within the grace period")
        .unwrap();
    // The server closed our connection on its way out.
    let n = tokio::task::spawn_blocking(move || s.read(&mut [0u8; 1]).unwrap_or(0))
        .await
        .unwrap();
    assert_eq!(n, 0);
}
