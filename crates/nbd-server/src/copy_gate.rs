//! How many threads serve a connection while its large reads are copies.
//!
//! A large read from a disk waits on the device, and many threads keep the
//! device's queue full. A large read from memory (page cache, tmpfs, RAM)
//! is only a copy: the CPU does all of it, so more threads than CPUs add
//! only switches and more buffers in flight, and on a virtual machine those
//! cost cache and TLB misses on every copy. Measured with 1 MiB reads at
//! queue depth 8 from a 1 GiB tmpfs file (fio, nbd engine, 2 CPUs),
//! alternating: 16 threads 2.0-2.3k IOPS, 2 threads 2.3-2.7k, 16 threads
//! behind this gate 2.6-2.8k, nbd-server 1.8-2.5k. Capping only the reads
//! executing at once, with 16 threads still taking requests, gained
//! nothing (2.0-2.2k).
//!
//! Whether the media is memory is told by whether recent large reads slept:
//! a read that waits for a device blocks its thread (a voluntary context
//! switch), a copy from memory never does, though it may be preempted.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};

/// Reads of at least this many bytes go through the gate.
pub const LARGE_READ: u64 = 256 << 10;

/// Share of recent large reads that slept, in 1/1000, under which the media
/// counts as memory.
const SLEPT_MEMORY: u32 = 125;

#[derive(Debug)]
pub struct CopyGate {
    /// Places held.
    running: Mutex<usize>,
    freed: Condvar,
    /// Threads that serve while the media is memory: one per CPU.
    limit: usize,
    /// Moving average of "this large read slept" (1000) or not (0).
    slept: AtomicU32,
}

/// A place at the gate, given back on drop.
#[derive(Debug)]
pub struct Permit<'a> {
    gate: &'a CopyGate,
}

impl CopyGate {
    /// A gate with `limit` places for while the media is memory. It starts
    /// by assuming a device, so nobody waits until reads show otherwise.
    pub fn new(limit: usize) -> Self {
        Self {
            running: Mutex::new(0),
            freed: Condvar::new(),
            limit: limit.max(1),
            slept: AtomicU32::new(1000),
        }
    }

    /// One per CPU this process may run on.
    pub fn per_cpu() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Whether recent large reads came from memory.
    pub fn memory_bound(&self) -> bool {
        self.slept.load(Ordering::Relaxed) < SLEPT_MEMORY
    }

    /// A place, if one is free.
    pub fn try_enter(&self) -> Option<Permit<'_>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        (*running < self.limit).then(|| {
            *running += 1;
            Permit { gate: self }
        })
    }

    /// Waits for a place while the media is memory; `None` once it is a
    /// device again (then nobody needs one).
    pub fn enter(&self) -> Option<Permit<'_>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= self.limit {
            if !self.memory_bound() {
                return None;
            }
            running = self.freed.wait(running).unwrap_or_else(|p| p.into_inner());
        }
        *running += 1;
        Some(Permit { gate: self })
    }

    /// Records whether one large read slept. When that turns the media into
    /// a device, every thread waiting at the gate goes back to work.
    pub fn record(&self, slept: bool) {
        let was = self.memory_bound();
        let avg = self.slept.load(Ordering::Relaxed);
        let x = if slept { 1000 } else { 0 };
        self.slept.store(avg - avg / 8 + x / 8, Ordering::Relaxed);
        if was && !self.memory_bound() {
            // Under the lock, so no waiter misses it between its check and
            // its wait.
            let _running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            self.freed.notify_all();
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut running = self.gate.running.lock().unwrap_or_else(|p| p.into_inner());
        *running -= 1;
        self.gate.freed.notify_one();
    }
}

/// Voluntary context switches of the calling thread so far: it rises when
/// the thread blocks (a device read, a lock held elsewhere), not when it is
/// preempted.
pub fn voluntary_switches() -> i64 {
    // SAFETY: getrusage writes into the rusage we own; zeroed is valid.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    ru.ru_nvcsw
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn starts_as_a_device_and_turns_memory_after_reads_that_never_slept() {
        let g = CopyGate::new(2);
        assert!(!g.memory_bound());
        let mut n = 0;
        while !g.memory_bound() {
            g.record(false);
            n += 1;
            assert!(n < 100, "never turned to memory");
        }
        assert!((10..=30).contains(&n), "{n} reads to turn");
        // One read that slept is enough to stop limiting.
        g.record(true);
        assert!(!g.memory_bound());
    }

    fn memory(limit: usize) -> CopyGate {
        let g = CopyGate::new(limit);
        for _ in 0..40 {
            g.record(false);
        }
        assert!(g.memory_bound());
        g
    }

    #[test]
    fn at_most_limit_places_are_held_at_once() {
        let g = Arc::new(memory(2));
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (g, now, most) = (g.clone(), now.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _p = g.enter().expect("the media stays memory");
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} held at once");
        assert_eq!(*g.running.lock().unwrap(), 0);
        let a = g.try_enter();
        let b = g.try_enter();
        assert!(a.is_some() && b.is_some());
        assert!(g.try_enter().is_none(), "a third place while two are held");
        drop(a);
        assert!(g.try_enter().is_some());
    }

    #[test]
    fn waiters_go_back_to_work_when_a_read_sleeps() {
        let g = Arc::new(memory(1));
        let held = g.try_enter().expect("a free place");
        let waiter = {
            let g = g.clone();
            std::thread::spawn(move || g.enter().is_none())
        };
        // The waiter is blocked at the gate until the media turns device.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished());
        g.record(true);
        assert!(
            waiter.join().unwrap(),
            "the waiter got a place instead of none"
        );
        drop(held);
    }

    #[test]
    fn a_blocking_sleep_counts_as_a_voluntary_switch() {
        let before = voluntary_switches();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(voluntary_switches() > before);
    }
}
