//! Busy-polling a transfer socket before sleeping on it, like Linux's
//! `SO_BUSY_POLL` (which only works for NIC queues, not for every device).
//!
//! Why: a lock-step transfer waits for one ACK per block. When the thread
//! sleeps for it, its CPU may go idle, and waking an idle CPU costs far more
//! than the work of a block: on the 2-CPU VM the benchmark runs on, a
//! 1468-byte block took ~95 µs with client and server on different CPUs and
//! ~21 µs on one. Polling the socket for a few tens of microseconds keeps the
//! CPU awake for an ACK that is about to arrive.
//!
//! The poll yields the CPU between attempts (`sched_yield`), so a client
//! woken on the same CPU runs at once instead of waiting for this thread to
//! sleep.
//!
//! When not: polling keeps a CPU busy that other transfers (or the clients on
//! the same host) could use, so a thread polls only while at most half the
//! CPUs have a transfer to serve, and a transfer whose ACKs keep arriving
//! after the poll (a slow or distant client) backs off: after each miss it
//! skips twice as many waits, up to [`MAX_SKIP`]. A lone fast transfer keeps
//! one CPU busy while it runs: that is the trade, as with `SO_BUSY_POLL`.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Most waits a transfer skips spinning after repeated misses.
pub(crate) const MAX_SKIP: u32 = 64;

/// One transfer's busy-poll policy: pure bookkeeping, no I/O.
#[derive(Debug, Clone)]
pub(crate) struct BusyPoll {
    budget: Duration,
    /// Waits left before spinning again.
    skip: u32,
    /// Waits to skip after the next miss.
    backoff: u32,
}

impl BusyPoll {
    /// `budget`: longest spin per wait (zero: never spin).
    pub(crate) fn new(budget: Duration) -> Self {
        Self {
            budget,
            skip: 0,
            backoff: 1,
        }
    }

    /// How long to spin before the next wait, if at all, with `running`
    /// transfers in the server and `cpus` CPUs.
    pub(crate) fn spin_for(&mut self, running: usize, cpus: usize) -> Option<Duration> {
        if self.budget.is_zero() || running.saturating_mul(2) > cpus {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        Some(self.budget)
    }

    /// What the spin found: a datagram (`true`) or nothing in time.
    pub(crate) fn record(&mut self, hit: bool) {
        if hit {
            self.backoff = 1;
        } else {
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_SKIP);
        }
    }
}

/// Polls `sock` without blocking until a datagram arrives or `budget` is
/// spent. `Ok(None)`: nothing came in time.
pub(crate) fn spin_recv(
    sock: &UdpSocket,
    buf: &mut [u8],
    budget: Duration,
) -> io::Result<Option<(usize, SocketAddr)>> {
    let sock = socket2::SockRef::from(sock);
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the kernel only
    // writes initialised bytes into the buffer, so it stays initialised.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    let until = Instant::now() + budget;
    loop {
        match sock.recv_from_with_flags(uninit, libc::MSG_DONTWAIT) {
            // A sender that is not an IP peer cannot be this transfer's:
            // keep polling.
            Ok((n, from)) => {
                if let Some(from) = from.as_socket() {
                    return Ok(Some((n, from)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        // Not a bare spin: a client woken on this CPU (by the packet just
        // sent) runs now instead of waiting for this thread to sleep.
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Duration = Duration::from_micros(50);

    #[test]
    fn spins_only_while_at_most_half_the_cpus_are_busy() {
        let mut p = BusyPoll::new(B);
        assert_eq!(p.spin_for(1, 2), Some(B));
        assert_eq!(p.spin_for(2, 2), None);
        assert_eq!(
            p.spin_for(1, 1),
            None,
            "one CPU: polling competes with the client"
        );
        assert_eq!(p.spin_for(4, 8), Some(B));
        assert_eq!(p.spin_for(5, 8), None);
    }

    #[test]
    fn zero_budget_never_spins() {
        let mut p = BusyPoll::new(Duration::ZERO);
        assert_eq!(p.spin_for(1, 64), None);
    }

    #[test]
    fn misses_back_off_exponentially_and_a_hit_resets() {
        let mut p = BusyPoll::new(B);
        let skipped = |p: &mut BusyPoll| {
            let mut n = 0;
            while p.spin_for(1, 4).is_none() {
                n += 1;
            }
            n
        };
        // Miss after miss: 1, 2, 4, ... waits skipped, capped at MAX_SKIP.
        let mut seen = Vec::new();
        for _ in 0..9 {
            p.record(false);
            seen.push(skipped(&mut p));
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        // A hit: the next miss skips one wait again.
        p.record(true);
        p.record(false);
        assert_eq!(skipped(&mut p), 1);
    }

    #[test]
    fn spin_recv_returns_a_waiting_datagram_and_gives_up_in_time() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 16];
        let t = Instant::now();
        assert!(spin_recv(&a, &mut buf, Duration::from_millis(2))
            .unwrap()
            .is_none());
        assert!(t.elapsed() >= Duration::from_millis(2));
        b.send_to(b"ack", a.local_addr().unwrap()).unwrap();
        let (n, from) = spin_recv(&a, &mut buf, Duration::from_secs(5))
            .unwrap()
            .expect("the datagram");
        assert_eq!((&buf[..n], from), (&b"ack"[..], b.local_addr().unwrap()));
    }
}
