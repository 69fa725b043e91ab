//! Transmission on plain (non-TLS) sockets with a small pool of OS threads
//! per connection: whichever thread is free takes the reader lock, reads one
//! request, performs it and writes its reply under the writer lock. Replies
//! thus leave out of order as requests complete, with no hand-off between
//! threads on the data path (one wake-up per request instead of three).
//! The same core (`proto::transmission`) decides every reply; the bound on
//! bytes in flight is a counting semaphore taken before a request's buffers
//! exist, while holding the reader lock, so a client over budget simply is
//! not read from.

use std::io::{BufReader, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream as StdUnix;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyboot_images::BlockDevice;
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::exec;
use crate::proto::transmission::{Action, Transmission};

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
    fn give(&self, n: u64) {
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += n;
        self.cv.notify_all();
    }
}

struct Reader {
    r: BufReader<std::io::Chain<std::io::Cursor<Bytes>, StdConn>>,
    done: bool,
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
    }));
    let writer = Arc::new(Mutex::new(writer));
    let budget = Arc::new(Budget {
        free: Mutex::new(max_inflight),
        cv: Condvar::new(),
        limit: max_inflight,
    });
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let span = tracing::Span::current();
    for i in 0..threads {
        let (core, reader, writer, budget, dev, alive, span) = (
            core.clone(),
            reader.clone(),
            writer.clone(),
            budget.clone(),
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
                worker(&core, &reader, &writer, &budget, &*dev);
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

fn worker(
    core: &Transmission,
    reader: &Mutex<Reader>,
    writer: &Mutex<StdConn>,
    budget: &Budget,
    dev: &dyn BlockDevice,
) {
    let mut hdr = vec![0u8; core.header_len()];
    loop {
        let (work, held) = {
            let mut rd = reader.lock().unwrap_or_else(|p| p.into_inner());
            if rd.done {
                return;
            }
            if rd.r.read_exact(&mut hdr).is_err() {
                rd.done = true;
                debug!("client closed the connection");
                return;
            }
            match core.on_header(&hdr) {
                Action::Execute(op) => {
                    let held = budget.take(op.cost());
                    (Work::Op(op), held)
                }
                Action::ReadPayload { req, len } => {
                    let held = budget.take(len as u64 + 64);
                    // read_to_end fills spare capacity: no memset first.
                    let mut data = Vec::with_capacity(len);
                    let got = (&mut rd.r).take(len as u64).read_to_end(&mut data);
                    if !matches!(got, Ok(n) if n == len) {
                        rd.done = true;
                        budget.give(held);
                        return;
                    }
                    (Work::Op(core.write_op(&req, Bytes::from(data))), held)
                }
                Action::SkipPayload { len, reply } => {
                    let mut take = (&mut rd.r).take(len);
                    match std::io::copy(&mut take, &mut std::io::sink()) {
                        Ok(n) if n == len => {}
                        _ => {
                            rd.done = true;
                            return;
                        }
                    }
                    (Work::Reply(reply.freeze()), 0)
                }
                Action::Reply(reply) => (Work::Reply(reply.freeze()), 0),
                Action::ReplyAndClose(reply) => {
                    warn!("malformed request; closing after the reply");
                    rd.done = true;
                    (Work::Reply(reply.freeze()), 0)
                }
                Action::Disconnect => {
                    debug!("client disconnected");
                    rd.done = true;
                    return;
                }
                Action::Close(why) => {
                    warn!(why, "protocol violation; closing");
                    rd.done = true;
                    // Unblock nothing else: other threads see `done`.
                    return;
                }
            }
        };
        let frames = match work {
            Work::Op(op) => exec::execute(dev, op, core.encoder()),
            Work::Reply(b) => vec![b],
        };
        let ok = {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            write_frames(&mut w, &frames).is_ok()
        };
        drop(frames);
        budget.give(held);
        if !ok {
            reader.lock().unwrap_or_else(|p| p.into_inner()).done = true;
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
