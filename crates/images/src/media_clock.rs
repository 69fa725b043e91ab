//! How fast a device answers right now, for targets that choose between
//! doing media access on the thread that received a request and handing it
//! to other threads.
//!
//! Page-cache or RAM-backed images answer a small read or write in
//! microseconds, less than a thread hand-off or wake-up costs; a cold disk or
//! a stalled network base takes milliseconds, and then requests must run
//! side by side. The NBD, iSCSI and AoE drivers all decide by this clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Average duration of small media accesses above which the media is slow.
pub const FAST_MEDIA: Duration = Duration::from_micros(50);
/// One access counts at most this much, so a single stall does not keep
/// the clock on "slow" for long.
const CAP: Duration = Duration::from_millis(2);

/// A moving average (weight 1/8) of media access times, shareable between
/// threads. Concurrent updates may lose one another: an approximate average
/// is all the decision needs.
#[derive(Debug)]
pub struct MediaClock {
    avg_ns: AtomicU64,
}

impl MediaClock {
    /// A clock that counts the media as fast until accesses show otherwise.
    pub fn fast() -> Self {
        Self {
            avg_ns: AtomicU64::new(0),
        }
    }

    /// A clock that counts the media as slow until about a dozen fast
    /// accesses have been recorded: for callers whose fast path would delay
    /// other requests behind one slow access.
    pub fn slow() -> Self {
        Self {
            avg_ns: AtomicU64::new(4 * FAST_MEDIA.as_nanos() as u64),
        }
    }

    /// Whether recent accesses averaged under [`FAST_MEDIA`].
    pub fn is_fast(&self) -> bool {
        self.avg_ns.load(Ordering::Relaxed) < FAST_MEDIA.as_nanos() as u64
    }

    /// Records how long one access (or one batch of them) took.
    pub fn record(&self, took: Duration) {
        let ns = took.min(CAP).as_nanos() as u64;
        let avg = self.avg_ns.load(Ordering::Relaxed);
        self.avg_ns.store(avg - avg / 8 + ns / 8, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_until(c: &MediaClock, fast: bool, took: Duration) -> usize {
        let mut n = 0;
        while c.is_fast() != fast {
            c.record(took);
            n += 1;
            assert!(n < 1000, "clock never turned");
        }
        n
    }

    #[test]
    fn turns_slow_within_a_few_slow_accesses_and_back_within_a_dozen_fast_ones() {
        let c = MediaClock::slow();
        assert!(!c.is_fast());
        let n = count_until(&c, true, Duration::from_micros(3));
        assert!((5..=20).contains(&n), "{n} fast accesses to turn fast");
        let n = count_until(&c, false, Duration::from_millis(8));
        assert!(n <= 3, "{n} slow accesses to turn slow");
        // The stall counted as at most CAP: fast accesses bring it back soon.
        let n = count_until(&c, true, Duration::from_micros(3));
        assert!((5..=20).contains(&n), "{n} fast accesses to come back");
    }

    #[test]
    fn a_fast_clock_starts_fast_and_stays_fast_at_page_cache_speed() {
        let c = MediaClock::fast();
        for _ in 0..100 {
            c.record(Duration::from_micros(5));
        }
        assert!(c.is_fast());
    }
}
