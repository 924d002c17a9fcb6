//! Allocation quotas: per credential, per client address and for the whole
//! relay, the last sized from the process's file-descriptor limit.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::cidr::address_key;
use std::sync::{Arc, Mutex};

use crate::metrics::{TurnMetrics, TurnRefusal};

use super::{MAX_TCP_CONNECTIONS, lock};

/// Descriptors assumed when the limit cannot be read (not Linux): the
/// common soft limit.
pub const ASSUMED_FD_LIMIT: u64 = 1024;

/// The most descriptors the budget counts with: beyond this an "unlimited"
/// limit changes nothing (the relay runs out of UDP ports first).
const FD_LIMIT_CEILING: u64 = 1 << 20;

/// The file-descriptor limit and what the TURN relay may use of it: a third
/// of the descriptors, three quarters of that for allocations (one UDP relay
/// socket each) and a quarter for TURN-over-TCP connections; two thirds stay
/// for the HTTP listener, WebSockets, the TURN listeners and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` the budget was made from.
    pub limit: u64,
    /// Allocations the relay may hold at once.
    pub allocations: usize,
    /// TURN-over-TCP connections the relay may hold at once (at most
    /// [`MAX_TCP_CONNECTIONS`]).
    pub tcp_connections: usize,
}

impl FdBudget {
    /// The budget for a process allowed `limit` descriptors.
    pub fn from_limit(limit: u64) -> Self {
        let turn = usize::try_from(limit.min(FD_LIMIT_CEILING) / 3).unwrap_or(usize::MAX);
        let allocations = (turn / 4 * 3).max(1);
        let tcp_connections = turn
            .saturating_sub(allocations)
            .clamp(1, MAX_TCP_CONNECTIONS);
        Self {
            limit,
            allocations,
            tcp_connections,
        }
    }

    /// The budget of this process, from its limit now ([`descriptor_limit`],
    /// or [`ASSUMED_FD_LIMIT`]).
    pub fn of_this_process() -> Self {
        Self::from_limit(descriptor_limit().unwrap_or(ASSUMED_FD_LIMIT))
    }
}

/// The soft limit on open file descriptors (`RLIMIT_NOFILE`) of this
/// process, from `/proc/self/limits`; `None` where that file does not exist.
/// "unlimited" reads as `u64::MAX`.
pub fn descriptor_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_descriptor_limit(&limits)
}

/// The soft value of the "Max open files" line of a `/proc/PID/limits`.
fn parse_descriptor_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// The three allocation quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Quotas {
    /// Per credential (username).
    pub per_user: usize,
    /// Per client address ([`address_key`]), over all credentials.
    pub per_ip: usize,
    /// For the whole relay (UDP and TCP together).
    pub total: usize,
}

#[derive(Debug, Default)]
struct Counts {
    users: HashMap<String, usize>,
    ips: HashMap<IpAddr, usize>,
    total: usize,
}

/// Live allocations by username, by client address and in all, across both
/// listeners; the allocations gauge of [`TurnMetrics`] follows the total.
#[derive(Debug, Clone, Default)]
pub(super) struct AllocationCounts {
    counts: Arc<Mutex<Counts>>,
    metrics: TurnMetrics,
}

impl AllocationCounts {
    pub fn new(metrics: TurnMetrics) -> Self {
        Self {
            counts: Arc::default(),
            metrics,
        }
    }

    /// Counts one more allocation of `username` from `ip`, unless that
    /// would pass one of `quotas` (which one is the error; the server's
    /// is checked first, then the address's, then the credential's).
    pub fn acquire(
        &self,
        username: &str,
        ip: IpAddr,
        quotas: Quotas,
    ) -> Result<AllocationSlot, TurnRefusal> {
        let ip = address_key(ip);
        let mut counts = lock(&self.counts);
        if counts.total >= quotas.total {
            return Err(TurnRefusal::QuotaServer);
        }
        if counts.ips.get(&ip).copied().unwrap_or(0) >= quotas.per_ip {
            return Err(TurnRefusal::QuotaAddress);
        }
        if counts.users.get(username).copied().unwrap_or(0) >= quotas.per_user {
            return Err(TurnRefusal::QuotaCredential);
        }
        counts.total += 1;
        *counts.ips.entry(ip).or_insert(0) += 1;
        *counts.users.entry(username.to_owned()).or_insert(0) += 1;
        self.metrics.allocation_opened();
        Ok(AllocationSlot {
            counts: self.clone(),
            username: username.to_owned(),
            ip,
        })
    }

    /// Allocations `username` holds.
    pub fn of_user(&self, username: &str) -> usize {
        lock(&self.counts).users.get(username).copied().unwrap_or(0)
    }

    /// Allocations made from `ip` (its [`address_key`]).
    pub fn of_ip(&self, ip: IpAddr) -> usize {
        let ip = address_key(ip);
        lock(&self.counts).ips.get(&ip).copied().unwrap_or(0)
    }

    /// All allocations.
    pub fn total(&self) -> usize {
        lock(&self.counts).total
    }
}

/// One counted allocation; uncounted when dropped.
#[derive(Debug)]
pub(super) struct AllocationSlot {
    counts: AllocationCounts,
    username: String,
    ip: IpAddr,
}

impl Drop for AllocationSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts.counts);
        counts.total = counts.total.saturating_sub(1);
        decrement(&mut counts.ips, &self.ip);
        decrement(&mut counts.users, self.username.as_str());
        drop(counts);
        self.counts.metrics.allocation_closed();
    }
}

/// Takes one off `map[key]`, removing the entry at zero.
fn decrement<K, Q>(map: &mut HashMap<K, usize>, key: &Q)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(held) = map.get_mut(key) {
        *held = held.saturating_sub(1);
        if *held == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn slots_are_counted_per_user_address_and_in_all_and_released() {
        let metrics = TurnMetrics::default();
        let counts = AllocationCounts::new(metrics.clone());
        let quotas = Quotas {
            per_user: 2,
            per_ip: 3,
            total: 4,
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counts.acquire("u", a, quotas).unwrap();
        let _second = counts.acquire("u", a, quotas).unwrap();
        assert_eq!(
            counts.acquire("u", a, quotas).unwrap_err(),
            TurnRefusal::QuotaCredential
        );
        let _third = counts.acquire("v", a, quotas).unwrap();
        // The address is full, whatever the credential.
        assert_eq!(
            counts.acquire("w", a, quotas).unwrap_err(),
            TurnRefusal::QuotaAddress
        );
        // A v4-mapped form is the same address.
        assert_eq!(
            counts
                .acquire("w", "::ffff:192.0.2.1".parse().unwrap(), quotas)
                .unwrap_err(),
            TurnRefusal::QuotaAddress
        );
        let _fourth = counts.acquire("w", b, quotas).unwrap();
        assert_eq!(
            counts
                .acquire("x", "192.0.2.3".parse().unwrap(), quotas)
                .unwrap_err(),
            TurnRefusal::QuotaServer
        );
        assert_eq!(metrics.allocations(), 4);
        drop(first);
        assert_eq!(
            (counts.of_user("u"), counts.of_ip(a), counts.total()),
            (1, 2, 3)
        );
        assert_eq!(metrics.allocations(), 3);
        assert!(counts.acquire("u", a, quotas).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let key = |s: &str| address_key(s.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), "2001:db8:1:2::");
        assert_eq!(key("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(key("192.0.2.1"), "192.0.2.1");
        let counts = AllocationCounts::default();
        let quotas = Quotas {
            per_user: 9,
            per_ip: 1,
            total: 9,
        };
        let _held = counts
            .acquire("u", "2001:db8::1".parse().unwrap(), quotas)
            .unwrap();
        assert_eq!(
            counts
                .acquire("v", "2001:db8::2".parse().unwrap(), quotas)
                .unwrap_err(),
            TurnRefusal::QuotaAddress
        );
        assert!(
            counts
                .acquire("v", "2001:db8:0:1::2".parse().unwrap(), quotas)
                .is_ok()
        );
    }

    #[test]
    fn the_budget_leaves_two_thirds_of_the_descriptors() {
        let budget = FdBudget::from_limit(1024);
        assert_eq!((budget.allocations, budget.tcp_connections), (255, 86));
        assert!((budget.allocations + budget.tcp_connections) as u64 <= 1024 / 3 + 1);
        let small = FdBudget::from_limit(256);
        assert_eq!((small.allocations, small.tcp_connections), (63, 22));
        let tiny = FdBudget::from_limit(3);
        assert_eq!((tiny.allocations, tiny.tcp_connections), (1, 1));
        let huge = FdBudget::from_limit(u64::MAX);
        assert_eq!(huge.tcp_connections, MAX_TCP_CONNECTIONS);
        assert!(huge.allocations > 100_000);
    }

    #[test]
    fn the_soft_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            256                  4096                 files     \n";
        assert_eq!(parse_descriptor_limit(limits), Some(256));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_descriptor_limit(unlimited), Some(u64::MAX));
        assert_eq!(parse_descriptor_limit("nothing here"), None);
        if cfg!(target_os = "linux") {
            assert!(descriptor_limit().is_some_and(|n| n > 0));
        }
    }
}
