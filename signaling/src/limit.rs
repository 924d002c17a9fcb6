//! Per-connection rate limiting: a token bucket.
//!
//! The bucket holds up to `burst` tokens and refills at `rate` tokens per
//! second; each signaling message takes one (and each relayed byte of a TURN
//! allocation, see [`crate::turn`]). Time is an argument, so the
//! arithmetic is tested without a clock.

use std::time::{Duration, Instant};

/// A token bucket. Not shared: each connection owns one, so no locking.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens the bucket holds.
    burst: f64,
    /// Tokens available at `last`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: a new connection may burst right away.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate_per_sec.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// A full bucket of `burst` tokens refilled at `rate_per_sec`, for
    /// counts too large for `u32` (bytes per second of a TURN relay).
    pub fn per_second(rate_per_sec: u64, burst: u64, now: Instant) -> Self {
        // u64 -> f64 rounds above 2^53, far beyond any rate or burst used.
        let burst = burst.max(1) as f64;
        Self {
            rate: rate_per_sec.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one; `false` means the message must be
    /// refused.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_n(1, now)
    }

    /// Takes `n` tokens if there are that many (e.g. one per byte of a
    /// packet); `false` means nothing was taken and the packet must be
    /// dropped.
    pub fn try_take_n(&mut self, n: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// How long until the next token is available (zero if one is).
    pub fn wait_time(&self) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, t0);
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0), "burst of 3 is spent");
        assert!(bucket.wait_time() > Duration::ZERO);
        // 10 tokens/s: one more after 100 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert!(bucket.try_take(t1));
        assert!(!bucket.try_take(t1));
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100, 2, t0);
        let later = t0 + Duration::from_secs(60);
        assert!(bucket.try_take(later));
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn bytes_are_taken_in_packets() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::per_second(1000, 1500, t0);
        assert!(bucket.try_take_n(1000, t0));
        assert!(!bucket.try_take_n(1000, t0), "only 500 left");
        assert!(bucket.try_take_n(500, t0));
        // 1000 bytes/s: a 500-byte packet fits again after half a second.
        assert!(bucket.try_take_n(500, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(1, 1, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 - Duration::from_millis(500)));
    }
}
