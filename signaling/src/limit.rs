//! Rate limiting: a token bucket per connection (signaling messages), per
//! TURN allocation (bytes) and per room on the server relay (bytes).
//!
//! The bucket holds up to `burst` tokens and refills at `rate` tokens per
//! second; each signaling message takes one (and each relayed byte of a TURN
//! allocation, see [`crate::turn`]). Time is an argument, so the
//! arithmetic is tested without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use parlor_protocol::RoomId;
use parlor_protocol::relay::MAX_RELAY_MESSAGE_BYTES;

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
        self.wait_time_n(1)
    }

    /// How long until `n` tokens are available (zero if they are), as of
    /// the last take.
    pub fn wait_time_n(&self, n: u64) -> Duration {
        let n = n as f64;
        if self.tokens >= n {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.tokens) / self.rate)
        }
    }
}

/// Why a new WebSocket from one IP address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IpRefusal {
    /// The address has `--max-connections-per-ip` WebSockets open.
    #[error("too many connections from your address (at most {0} at once)")]
    TooManyOpen(usize),
    /// The address opens connections faster than `--ip-connect-rate`.
    #[error("connecting too fast from your address; retry in {0} ms")]
    TooFast(u128),
}

#[derive(Debug)]
struct IpEntry {
    open: usize,
    bucket: TokenBucket,
}

/// Per-IP limits on WebSockets: how many may be open at once and how fast
/// new ones may be opened (a token bucket per address; per /64 for IPv6). Entries of
/// addresses with nothing open are swept once their bucket would be full
/// again, so memory stays bounded by the addresses seen recently.
#[derive(Debug)]
pub struct IpLimits {
    max_open: usize,
    rate_per_sec: u32,
    burst: u32,
    entries: Mutex<HashMap<IpAddr, IpEntry>>,
}

/// Counts one WebSocket of an address as open until dropped.
#[derive(Debug)]
pub struct IpGuard {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut entries = self.limits.lock();
        if let Some(entry) = entries.get_mut(&self.ip) {
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

/// Addresses tracked before a sweep of idle ones.
const IP_SWEEP_THRESHOLD: usize = 4096;

impl IpLimits {
    /// At most `max_open` WebSockets per address, opened at `rate_per_sec`
    /// with bursts of `burst`.
    pub fn new(max_open: usize, rate_per_sec: u32, burst: u32) -> Arc<Self> {
        Arc::new(Self {
            max_open: max_open.max(1),
            rate_per_sec,
            burst,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, IpEntry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new WebSocket from `ip`, or says why not. IPv6 addresses
    /// count per /64 ([`crate::cidr::address_key`]).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<IpGuard, IpRefusal> {
        let ip = crate::cidr::address_key(ip);
        let mut entries = self.lock();
        if entries.len() >= IP_SWEEP_THRESHOLD && !entries.contains_key(&ip) {
            let refill = Duration::from_secs_f64(
                f64::from(self.burst.max(1)) / f64::from(self.rate_per_sec.max(1)),
            );
            entries
                .retain(|_, e| e.open > 0 || now.saturating_duration_since(e.bucket.last) < refill);
        }
        let entry = entries.entry(ip).or_insert_with(|| IpEntry {
            open: 0,
            bucket: TokenBucket::new(self.rate_per_sec, self.burst, now),
        });
        if entry.open >= self.max_open {
            return Err(IpRefusal::TooManyOpen(self.max_open));
        }
        if !entry.bucket.try_take(now) {
            return Err(IpRefusal::TooFast(
                entry.bucket.wait_time().as_millis().max(1),
            ));
        }
        entry.open += 1;
        Ok(IpGuard {
            limits: Arc::clone(self),
            ip,
        })
    }

    /// Addresses tracked now (for tests).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// One byte bucket per room for the server relay, shared by the room's
/// sessions. The map holds weak references: a room's bucket lives as long
/// as one of its sessions holds it, and dead entries are swept on insert.
#[derive(Debug)]
pub struct RoomRelayLimits {
    bytes_per_sec: u64,
    buckets: Mutex<HashMap<RoomId, Weak<Mutex<TokenBucket>>>>,
}

/// A room's relay byte bucket, as held by each of its sessions.
pub type RelayBucket = Arc<Mutex<TokenBucket>>;

impl RoomRelayLimits {
    /// Buckets refilled at `bytes_per_sec`, holding a quarter second's worth
    /// (but at least one full relay packet).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket of `room`, created on first use.
    pub fn bucket(&self, room: &RoomId) -> RelayBucket {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = buckets.get(room).and_then(Weak::upgrade) {
            return bucket;
        }
        buckets.retain(|_, weak| weak.strong_count() > 0);
        let burst = (self.bytes_per_sec / 4).max(MAX_RELAY_MESSAGE_BYTES as u64);
        let bucket = Arc::new(Mutex::new(TokenBucket::per_second(
            self.bytes_per_sec,
            burst,
            tokio::time::Instant::now().into_std(),
        )));
        buckets.insert(room.clone(), Arc::downgrade(&bucket));
        bucket
    }

    /// Rooms with a live bucket (for tests).
    pub fn rooms(&self) -> usize {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// Waits until `bucket` has `bytes` tokens and takes them: the relay slows a
/// sender down to the room's rate instead of dropping its packets.
pub async fn take_relay_bytes(bucket: &RelayBucket, bytes: u64) {
    loop {
        let wait = {
            let mut b = bucket.lock().unwrap_or_else(PoisonError::into_inner);
            // tokio's clock, so that paused-time tests see time pass.
            if b.try_take_n(bytes, tokio::time::Instant::now().into_std()) {
                return;
            }
            b.wait_time_n(bytes)
        };
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
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
    fn rooms_share_one_relay_bucket_while_held() {
        let limits = RoomRelayLimits::new(1000);
        let room = RoomId::parse("AAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let a = limits.bucket(&room);
        let b = limits.bucket(&room);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(limits.rooms(), 1);
        drop((a, b));
        assert_eq!(limits.rooms(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn relay_senders_wait_for_bytes() {
        let limits = RoomRelayLimits::new(MAX_RELAY_MESSAGE_BYTES as u64);
        let room = RoomId::parse("AAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let bucket = limits.bucket(&room);
        let start = tokio::time::Instant::now();
        let packet = MAX_RELAY_MESSAGE_BYTES as u64;
        take_relay_bytes(&bucket, packet).await; // the burst
        take_relay_bytes(&bucket, packet).await; // one second's refill
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(900), "{waited:?}");
    }

    #[test]
    fn addresses_are_limited_in_open_connections_and_rate() {
        let t0 = Instant::now();
        let limits = IpLimits::new(2, 1, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = limits.admit(ip, t0).unwrap();
        let _b = limits.admit(ip, t0).unwrap();
        assert_eq!(limits.admit(ip, t0).unwrap_err(), IpRefusal::TooManyOpen(2));
        let _c = limits.admit(other, t0).unwrap();
        drop(a);
        let _d = limits.admit(ip, t0).unwrap(); // the third token of the burst
        drop(_d);
        assert!(matches!(limits.admit(ip, t0), Err(IpRefusal::TooFast(_))));
        assert!(limits.admit(ip, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn one_ipv6_64_shares_one_limit() {
        let t0 = Instant::now();
        let limits = IpLimits::new(2, 10, 10);
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = limits.admit(addr("2001:db8:5:6::1"), t0).unwrap();
        let _b = limits.admit(addr("2001:db8:5:6::2"), t0).unwrap();
        assert_eq!(
            limits.admit(addr("2001:db8:5:6:ffff::3"), t0).unwrap_err(),
            IpRefusal::TooManyOpen(2),
            "another address of the same /64"
        );
        assert!(limits.admit(addr("2001:db8:5:7::1"), t0).is_ok());
        assert_eq!(limits.tracked(), 2);
    }

    #[test]
    fn idle_addresses_are_swept() {
        let t0 = Instant::now();
        let limits = IpLimits::new(4, 10, 10);
        for i in 0..IP_SWEEP_THRESHOLD as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(limits.admit(ip, t0).unwrap());
        }
        assert_eq!(limits.tracked(), IP_SWEEP_THRESHOLD);
        let later = t0 + Duration::from_secs(5);
        let _g = limits.admit("192.0.2.9".parse().unwrap(), later).unwrap();
        assert_eq!(limits.tracked(), 1);
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(1, 1, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 - Duration::from_millis(500)));
    }
}
