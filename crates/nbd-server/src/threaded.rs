//! Transmission on plain (non-TLS) sockets with a small pool of OS threads
//! per connection: whichever thread is free takes the reader lock, reads a
//! request, performs it and writes its reply under the writer lock. Replies
//! thus leave out of order as requests complete, with no hand-off between
//! threads on the data path.
//!
//! While the media answers fast (page cache, RAM: a moving average of small
//! reads and writes under 50 µs), the thread holding the reader lock also
//! takes every further small READ/WRITE already in its receive buffer (up to
//! 32 requests or 1 MiB), performs them and writes all replies with one
//! vectored write: a client with 32 requests in flight then costs a few
//! system calls and thread switches per batch rather than per request. While
//! the media is slow, each thread takes one request at a time, so the pool
//! keeps many requests in flight against the disk; a new connection starts
//! that way until its first requests show the media to be fast.
//!
//! The same core (`proto::transmission`) decides every reply; the bound on
//! bytes in flight is a counting semaphore taken before a request's buffers
//! exist, while holding the reader lock, so a client over budget simply is
//! not read from (a batch only grows while permits are free without waiting).

use std::io::{BufReader, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream as StdUnix;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyboot_images::{BlockDevice, MediaClock};
use anyboot_wire::nbd::{Command, RequestPacket};
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::copy_gate::{voluntary_switches, CopyGate, LARGE_READ};
use crate::exec;
use crate::proto::transmission::{Action, Op, OpKind, Transmission};

/// Most requests one thread takes from its read buffer in one batch.
const MAX_BATCH: usize = 32;
/// Most bytes (payloads and replies) one batch holds.
const MAX_BATCH_BYTES: u64 = 1 << 20;
/// Largest READ or WRITE that joins a batch.
const MAX_BATCHED_REQUEST: u64 = 128 << 10;

/// A plain socket, taken out of tokio for blocking I/O.
#[derive(Debug)]
pub enum StdConn {
    Tcp(std::net::TcpStream),
    Unix(StdUnix),
}

impl StdConn {
    fn try_clone(&self) -> std::io::Result<StdConn> {
        Ok(match self {
            StdConn::Tcp(s) => StdConn::Tcp(s.try_clone()?),
            StdConn::Unix(s) => StdConn::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            StdConn::Tcp(s) => s.shutdown(how),
            StdConn::Unix(s) => s.shutdown(how),
        };
    }
}

impl StdConn {
    /// Appends exactly `want` bytes from the socket to `v`, received straight
    /// into its spare capacity. `Read::read_to_end` through `BufReader<Chain>`
    /// zeroes the spare capacity first (stable Rust has no `read_buf` for our
    /// types): a tenth of the server's CPU on 1 MiB writes.
    fn recv_exact_into(&mut self, v: &mut Vec<u8>, want: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = match self {
            StdConn::Tcp(s) => s.as_raw_fd(),
            StdConn::Unix(s) => s.as_raw_fd(),
        };
        v.reserve(want);
        let end = v.len() + want;
        while v.len() < end {
            let left = end - v.len();
            let spare = &mut v.spare_capacity_mut()[..left];
            // SAFETY: recv writes at most `spare.len()` bytes into memory `v`
            // owns and nobody else touches during the call.
            let n = unsafe {
                libc::recv(
                    fd,
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    libc::MSG_WAITALL,
                )
            };
            match n {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n if n < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                // SAFETY: the kernel initialised the first `n` spare bytes.
                n => unsafe { v.set_len(v.len() + n as usize) },
            }
        }
        Ok(())
    }
}

impl Read for StdConn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            StdConn::Tcp(s) => s.read(buf),
            StdConn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for StdConn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            StdConn::Tcp(s) => s.write(buf),
            StdConn::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            StdConn::Tcp(s) => s.write_vectored(bufs),
            StdConn::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What became of a stream asked to leave tokio.
#[derive(Debug)]
pub enum Converted<S> {
    /// A plain socket, now blocking.
    Std(StdConn),
    /// A stream that stays async (TLS).
    Keep(S),
    /// The socket could not be converted (closed underneath us).
    Lost(std::io::Error),
}

/// Streams that can leave tokio for the threaded path (TLS streams cannot).
pub trait IntoStd: Sized {
    fn into_std_conn(self) -> Converted<Self>;
}

impl IntoStd for tokio::net::TcpStream {
    fn into_std_conn(self) -> Converted<Self> {
        match self
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
        {
            Ok(s) => Converted::Std(StdConn::Tcp(s)),
            Err(e) => Converted::Lost(e),
        }
    }
}

impl IntoStd for tokio::net::UnixStream {
    fn into_std_conn(self) -> Converted<Self> {
        match self
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
        {
            Ok(s) => Converted::Std(StdConn::Unix(s)),
            Err(e) => Converted::Lost(e),
        }
    }
}

impl<S> IntoStd for tokio_rustls::server::TlsStream<S> {
    fn into_std_conn(self) -> Converted<Self> {
        Converted::Keep(self)
    }
}

/// A counting semaphore over bytes.
#[derive(Debug)]
struct Budget {
    free: Mutex<u64>,
    cv: Condvar,
    limit: u64,
}

impl Budget {
    fn take(&self, n: u64) -> u64 {
        let n = n.min(self.limit);
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *f < n {
            f = self.cv.wait(f).unwrap_or_else(|p| p.into_inner());
        }
        *f -= n;
        n
    }
    /// Takes `n` only if it is free now.
    fn try_take(&self, n: u64) -> Option<u64> {
        let n = n.min(self.limit);
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        (*f >= n).then(|| {
            *f -= n;
            n
        })
    }
    fn give(&self, n: u64) {
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += n;
        self.cv.notify_all();
    }
}

/// Whether an operation's duration tells how fast the media is: plain
/// reads and writes (a FUA write includes a flush).
fn timed(op: &Op) -> bool {
    matches!(
        op.kind,
        OpKind::Read { .. } | OpKind::Write { fua: false, .. }
    )
}

/// The bytes a request at the start of `buffered` will hold, if it may join
/// a batch: a small compact-header READ, or WRITE whose payload is buffered
/// too, so taking it never blocks on the socket.
fn batchable(buffered: &[u8], hdr_len: usize) -> Option<u64> {
    let p = RequestPacket::new_checked(buffered.get(..hdr_len)?).ok()?;
    if p.is_extended() {
        return None;
    }
    let len = p.length();
    if len > MAX_BATCHED_REQUEST {
        return None;
    }
    match p.command() {
        Command::Read => Some(len + 64),
        Command::Write => (buffered.len() as u64 >= hdr_len as u64 + len).then_some(len + 64),
        _ => None,
    }
}

struct Reader {
    r: BufReader<std::io::Chain<std::io::Cursor<Bytes>, StdConn>>,
    done: bool,
    /// The last request carried a large payload: read the next header on
    /// its own rather than filling the buffer, which would pull the start of
    /// another large payload into it and cost a copy out of it (4 % of the
    /// server's CPU on 1 MiB writes).
    header_alone: bool,
}

enum Work {
    Op(crate::proto::transmission::Op),
    Reply(Bytes),
}

/// Serves transmission on `conn` with `threads` threads until the client
/// disconnects or `stop` fires; then drains, flushes `dev` and closes.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    conn: StdConn,
    leftover: BytesMut,
    core: Transmission,
    dev: Arc<dyn BlockDevice>,
    threads: usize,
    max_inflight: u64,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(control) = conn.try_clone() else {
        return;
    };
    let Ok(writer) = conn.try_clone() else {
        return;
    };
    let core = Arc::new(core);
    let reader = Arc::new(Mutex::new(Reader {
        r: BufReader::with_capacity(
            256 * 1024,
            std::io::Cursor::new(leftover.freeze()).chain(conn),
        ),
        done: false,
        header_alone: false,
    }));
    let writer = Arc::new(Mutex::new(writer));
    let budget = Arc::new(Budget {
        free: Mutex::new(max_inflight),
        cv: Condvar::new(),
        limit: max_inflight,
    });
    // A batch runs its requests one after another, so one slow request
    // delays the others in it: a connection starts as "slow" (one request
    // per thread) until its first requests show the media to be fast.
    let clock = Arc::new(MediaClock::slow());
    let copies = Arc::new(CopyGate::per_cpu());
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let span = tracing::Span::current();
    for i in 0..threads {
        let (core, reader, writer, budget, clock, copies, dev, alive, span) = (
            core.clone(),
            reader.clone(),
            writer.clone(),
            budget.clone(),
            clock.clone(),
            copies.clone(),
            dev.clone(),
            alive_tx.clone(),
            span.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-io-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let _alive = alive;
                let _g = span.enter();
                let shared = Shared {
                    core: &core,
                    reader: &reader,
                    writer: &writer,
                    budget: &budget,
                    clock: &clock,
                    copies: &copies,
                };
                worker(&shared, &*dev);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start an I/O thread");
            if i == 0 {
                control.shutdown(Shutdown::Both);
                return;
            }
            break;
        }
    }
    drop(alive_tx);
    let stopped = tokio::select! {
        _ = alive_rx.recv() => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    if stopped {
        // Blocked reads return end-of-file; requests in flight finish.
        control.shutdown(Shutdown::Read);
        if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
            warn!("in-flight requests did not finish within the grace period");
            control.shutdown(Shutdown::Both);
        }
    }
    let d = dev.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || d.flush()).await {
        warn!(error = %e, "flush at disconnect failed");
    }
    control.shutdown(Shutdown::Both);
}

/// Reads a `len`-byte payload into `data`: what the reader has buffered
/// (the handshake's leftover, then the buffer), the rest straight from the
/// socket without zeroing `data` first.
fn read_payload(rd: &mut Reader, data: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    use std::io::BufRead;
    while data.len() < len {
        let buffered = rd.r.buffer();
        if !buffered.is_empty() {
            let n = buffered.len().min(len - data.len());
            data.extend_from_slice(&buffered[..n]);
            rd.r.consume(n);
            continue;
        }
        let (leftover, conn) = rd.r.get_mut().get_mut();
        if (leftover.position() as usize) < leftover.get_ref().len() {
            // Handshake leftovers: small, through the buffer.
            let b = rd.r.fill_buf()?;
            if b.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            continue;
        }
        return conn.recv_exact_into(data, len - data.len());
    }
    Ok(())
}

/// What reading one request gave.
enum Taken {
    /// Work to do, holding this many budget bytes.
    Work(Work, u64),
    /// The read side ended (`done` is set); nothing is held.
    End,
}

/// Reads one request under the reader lock. `prepaid`: budget bytes already
/// taken for it (a batched request), else they are taken here, waiting.
fn take_request(
    core: &Transmission,
    rd: &mut Reader,
    hdr: &mut [u8],
    budget: &Budget,
    prepaid: Option<u64>,
) -> Taken {
    let end = |rd: &mut Reader| {
        rd.done = true;
        if let Some(held) = prepaid {
            budget.give(held);
        }
        Taken::End
    };
    let header = if rd.header_alone && rd.r.buffer().is_empty() {
        // Past the buffer, which is empty: the stream stays in order.
        rd.r.get_mut().read_exact(hdr)
    } else {
        rd.r.read_exact(hdr)
    };
    rd.header_alone = false;
    if header.is_err() {
        debug!("client closed the connection");
        return end(rd);
    }
    let unpaid = prepaid.unwrap_or(0);
    match core.on_header(hdr) {
        Action::Execute(op) => {
            let held = prepaid.unwrap_or_else(|| budget.take(op.cost()));
            Taken::Work(Work::Op(op), held)
        }
        Action::ReadPayload { req, len } => {
            let held = prepaid.unwrap_or_else(|| budget.take(len as u64 + 64));
            rd.header_alone = len as u64 > MAX_BATCHED_REQUEST;
            let mut data = Vec::with_capacity(len);
            if read_payload(rd, &mut data, len).is_err() {
                rd.done = true;
                budget.give(held);
                return Taken::End;
            }
            Taken::Work(Work::Op(core.write_op(&req, Bytes::from(data))), held)
        }
        Action::SkipPayload { len, reply } => {
            let mut take = (&mut rd.r).take(len);
            match std::io::copy(&mut take, &mut std::io::sink()) {
                Ok(n) if n == len => Taken::Work(Work::Reply(reply.freeze()), unpaid),
                _ => end(rd),
            }
        }
        Action::Reply(reply) => Taken::Work(Work::Reply(reply.freeze()), unpaid),
        Action::ReplyAndClose(reply) => {
            warn!("malformed request; closing after the reply");
            rd.done = true;
            Taken::Work(Work::Reply(reply.freeze()), unpaid)
        }
        Action::Disconnect => {
            debug!("client disconnected");
            end(rd)
        }
        Action::Close(why) => {
            warn!(why, "protocol violation; closing");
            // Unblock nothing else: other threads see `done`.
            end(rd)
        }
    }
}

/// What a connection's I/O threads share.
struct Shared<'a> {
    core: &'a Transmission,
    reader: &'a Mutex<Reader>,
    writer: &'a Mutex<StdConn>,
    budget: &'a Budget,
    clock: &'a MediaClock,
    copies: &'a CopyGate,
}

fn worker(sh: &Shared<'_>, dev: &dyn BlockDevice) {
    let Shared {
        core,
        reader,
        writer,
        budget,
        clock,
        copies,
    } = *sh;
    let mut hdr = vec![0u8; core.header_len()];
    let mut batch: Vec<Work> = Vec::with_capacity(MAX_BATCH);
    let mut frames: Vec<Bytes> = Vec::new();
    // While the media is fast this thread keeps the reader lock from one
    // batch to the next: the other threads sleep on the lock instead of
    // being woken for every batch. When the media turns slow the lock is let
    // go before executing, so others read and execute meanwhile.
    let mut kept = None;
    // While large reads are copies from memory, only as many threads as
    // CPUs serve the connection, each keeping its place from one request to
    // the next; the others sleep at the gate (see `copy_gate`).
    let mut place = None;
    loop {
        if copies.memory_bound() {
            if place.is_none() {
                place = copies.try_enter();
            }
            if place.is_none() {
                // Never wait at the gate holding the reader: the threads
                // with a place need it to go on.
                kept = None;
                place = copies.enter();
            }
        } else {
            place = None;
        }
        let mut held = 0;
        let mut rd = match kept.take() {
            Some(rd) => rd,
            None => reader.lock().unwrap_or_else(|p| p.into_inner()),
        };
        if rd.done {
            return;
        }
        match take_request(core, &mut rd, &mut hdr, budget, None) {
            Taken::Work(w, h) => {
                batch.push(w);
                held += h;
            }
            Taken::End => return,
        }
        let fast = clock.is_fast();
        if fast {
            while !rd.done && batch.len() < MAX_BATCH && held < MAX_BATCH_BYTES {
                let Some(need) = batchable(rd.r.buffer(), hdr.len()) else {
                    break;
                };
                // Never wait for budget while holding a batch's permits.
                let Some(paid) = budget.try_take(need) else {
                    break;
                };
                match take_request(core, &mut rd, &mut hdr, budget, Some(paid)) {
                    Taken::Work(w, h) => {
                        batch.push(w);
                        held += h;
                    }
                    Taken::End => break,
                }
            }
        }
        if fast && !rd.done {
            kept = Some(rd);
        } else {
            drop(rd);
        }
        for work in batch.drain(..) {
            match work {
                Work::Op(op) => {
                    let timed = timed(&op);
                    let large = matches!(op.kind, OpKind::Read { len, .. } if len >= LARGE_READ);
                    let switches = large.then(voluntary_switches);
                    let started = Instant::now();
                    frames.extend(exec::execute(dev, op, core.encoder()));
                    if timed {
                        clock.record(started.elapsed());
                    }
                    if let Some(before) = switches {
                        copies.record(voluntary_switches() > before);
                    }
                }
                Work::Reply(b) => frames.push(b),
            }
        }
        let ok = {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            write_frames(&mut w, &frames).is_ok()
        };
        frames.clear();
        budget.give(held);
        if !ok {
            match kept.as_mut() {
                Some(rd) => rd.done = true,
                None => reader.lock().unwrap_or_else(|p| p.into_inner()).done = true,
            }
            return;
        }
    }
}

/// Writes every frame, vectored.
fn write_frames(w: &mut StdConn, frames: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}
