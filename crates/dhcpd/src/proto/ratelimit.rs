//! Per-hardware-address token buckets: one client may not flood the server
//! (issue 5, "floods from one MAC are dropped and counted").

use std::collections::HashMap;

/// Bound on remembered addresses; beyond it idle buckets are forgotten.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// Token buckets keyed by hardware address: `rate` packets per second with a
/// burst of `rate`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    buckets: HashMap<Vec<u8>, Bucket>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: u32) -> Self {
        Self {
            rate: f64::from(rate_per_sec.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now_ms`; false means drop the packet.
    pub fn allow(&mut self, key: &[u8], now_ms: u64) -> bool {
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(key) {
            // Forget buckets that have refilled completely: they carry no state.
            let full_after = (1000.0 * 1.0) as u64;
            self.buckets
                .retain(|_, b| now_ms.saturating_sub(b.last_ms) < full_after);
            if self.buckets.len() >= MAX_TRACKED {
                // Flooded by many distinct addresses: limiting per address cannot
                // help; let the pool limits decide.
                return true;
            }
        }
        let rate = self.rate;
        if !self.buckets.contains_key(key) {
            self.buckets.insert(
                key.to_vec(),
                Bucket {
                    tokens: rate,
                    last_ms: now_ms,
                },
            );
        }
        let b = self.buckets.get_mut(key).expect("inserted above");
        let elapsed = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut r = RateLimiter::new(5);
        let allowed = (0..20).filter(|_| r.allow(b"a", 1000)).count();
        assert_eq!(allowed, 5);
        assert!(r.allow(b"b", 1000), "other clients are not affected");
        assert!(!r.allow(b"a", 1100));
        assert!(r.allow(b"a", 1200), "one token back after 200 ms at 5/s");
        assert_eq!((0..20).filter(|_| r.allow(b"a", 10_000)).count(), 5);
    }
}
