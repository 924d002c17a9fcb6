//! Address ranges (`10.0.0.0/8`, `fc00::/7`) and the TURN relay's peer rule:
//! which addresses it refuses to exchange packets with.
//!
//! The default deny list ([`DEFAULT_DENIED_PEERS`]) is the one coturn's
//! example configuration recommends (`denied-peer-ip` lines plus
//! `no-multicast-peers`), with a few more IPv6 special-purpose ranges:
//! nothing a browser on the internet can be reached at, and everything a
//! relay could use to reach the server's own network or a cloud metadata
//! service (169.254.169.254, 100.100.100.200).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a range did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("{0:?} is not an IP address")]
    Address(String),
    /// The prefix length is not a number or too long for the family.
    #[error("prefix length {0:?} is not 0-32 (IPv4) or 0-128 (IPv6)")]
    Prefix(String),
}

impl Cidr {
    /// The range of `network/prefix`; host bits of `network` are cleared, and
    /// a prefix longer than the family's address is cut to the address.
    pub fn new(network: IpAddr, prefix: u8) -> Self {
        let prefix = prefix.min(max_prefix(network));
        let network = match network {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask32(prefix))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask128(prefix))),
        };
        Self { network, prefix }
    }

    /// The single address `ip` (`/32` or `/128`).
    pub fn host(ip: IpAddr) -> Self {
        Self::new(ip, max_prefix(ip))
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the range (never across families: `::ffff:10.0.0.1`
    /// is not in `10.0.0.0/8`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                ip.to_bits() & mask32(self.prefix) == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                ip.to_bits() & mask128(self.prefix) == net.to_bits()
            }
            _ => false,
        }
    }
}

/// The key a client address is counted under by per-address limits: the
/// IPv4 address (also when written v4-mapped), or the /64 of an IPv6
/// address, since one IPv6 subscriber is routinely given a whole /64 and
/// can pick any of its 2^64 addresses.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(_) => Cidr::new(ip, 64).network(),
        v4 => v4,
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDRESS/PREFIX`, or a bare address for that one address.
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(addr.to_owned()))?;
        let Some(prefix) = prefix else {
            return Ok(Self::host(network));
        };
        let prefix: u8 = prefix
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= max_prefix(network))
            .ok_or_else(|| CidrError::Prefix(prefix.to_owned()))?;
        Ok(Self::new(network, prefix))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The ranges the relay refuses by default, as in coturn's example
/// configuration (`denied-peer-ip`, `no-multicast-peers`) plus IPv6
/// documentation, site-local, IPv4-compatible and local NAT64 ranges.
pub const DEFAULT_DENIED_PEERS: &[&str] = &[
    "0.0.0.0/8",         // "this network", 0.0.0.0
    "10.0.0.0/8",        // RFC 1918
    "100.64.0.0/10",     // carrier-grade NAT (RFC 6598); 100.100.100.200 metadata
    "127.0.0.0/8",       // loopback
    "169.254.0.0/16",    // link-local; 169.254.169.254 metadata
    "172.16.0.0/12",     // RFC 1918
    "192.0.0.0/24",      // IETF protocol assignments
    "192.0.2.0/24",      // TEST-NET-1
    "192.88.99.0/24",    // 6to4 relay anycast
    "192.168.0.0/16",    // RFC 1918
    "198.18.0.0/15",     // benchmarking
    "198.51.100.0/24",   // TEST-NET-2
    "203.0.113.0/24",    // TEST-NET-3
    "224.0.0.0/4",       // multicast
    "240.0.0.0/4",       // reserved, and 255.255.255.255 broadcast
    "::/96",             // ::, ::1 and IPv4-compatible addresses
    "::ffff:0.0.0.0/96", // IPv4-mapped
    "64:ff9b::/96",      // NAT64
    "64:ff9b:1::/48",    // local-use NAT64
    "100::/64",          // discard-only
    "2001::/23",         // IETF protocol assignments, Teredo
    "2001:db8::/32",     // documentation
    "2002::/16",         // 6to4
    "fc00::/7",          // unique local
    "fe80::/10",         // link-local
    "fec0::/10",         // site-local (deprecated)
    "ff00::/8",          // multicast
];

/// Which peers the relay exchanges packets with: everything except the
/// default deny list and `--turn-deny` ranges, unless an `--turn-allow`
/// range contains the address (allow wins, as coturn's `allowed-peer-ip`).
/// `--turn-allow-private` ([`PeerRule::allow_all`]) switches the rule off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRule {
    allow_all: bool,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl Default for PeerRule {
    /// The default deny list, no exceptions.
    fn default() -> Self {
        Self::new(&[], &[])
    }
}

impl PeerRule {
    /// The default deny list plus `deny`, except `allow`.
    pub fn new(allow: &[Cidr], deny: &[Cidr]) -> Self {
        let defaults = DEFAULT_DENIED_PEERS
            .iter()
            .filter_map(|range| range.parse::<Cidr>().ok());
        Self {
            allow_all: false,
            allow: allow.to_vec(),
            deny: defaults.chain(deny.iter().copied()).collect(),
        }
    }

    /// No rule at all: every peer allowed (loopback tests).
    pub fn allow_all() -> Self {
        Self {
            allow_all: true,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    /// Whether every peer is allowed.
    pub fn allows_all(&self) -> bool {
        self.allow_all
    }

    /// Whether the relay must refuse to exchange packets with `ip`.
    pub fn forbids(&self, ip: IpAddr) -> bool {
        !self.allow_all
            && !self.allow.iter().any(|range| range.contains(ip))
            && self.deny.iter().any(|range| range.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_default_range_parses_and_is_normalised() {
        for range in DEFAULT_DENIED_PEERS {
            let cidr: Cidr = range.parse().unwrap();
            assert_eq!(cidr.to_string(), *range, "{range} is not in normal form");
        }
    }

    #[test]
    fn ipv6_subscribers_are_their_64_and_ipv4_stays_itself() {
        assert_eq!(address_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn ranges_parse_contain_and_refuse_nonsense() {
        let net: Cidr = "100.64.0.0/10".parse().unwrap();
        assert!(net.contains(ip("100.100.100.200")));
        assert!(net.contains(ip("100.127.255.255")));
        assert!(!net.contains(ip("100.128.0.0")));
        assert!(!net.contains(ip("::ffff:100.100.100.200")));
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("8.8.8.8".parse::<Cidr>().unwrap().to_string(), "8.8.8.8/32");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2a00::1")));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        assert!(matches!(
            "fc00::/x".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
    }

    #[test]
    fn the_default_rule_allows_public_addresses_only() {
        let rule = PeerRule::default();
        for denied in [
            "0.0.0.0",
            "10.1.2.3",
            "100.100.100.200",
            "127.0.0.1",
            "169.254.169.254",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.2",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:c0a8:101::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(rule.forbids(ip(denied)), "{denied} should be denied");
        }
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2a00:1450::1",
        ] {
            assert!(!rule.forbids(ip(allowed)), "{allowed} should be allowed");
        }
    }

    #[test]
    fn allow_beats_deny_and_allow_all_turns_the_rule_off() {
        let rule = PeerRule::new(
            &["198.18.0.0/15".parse().unwrap()],
            &["8.8.8.0/24".parse().unwrap()],
        );
        assert!(!rule.forbids(ip("198.18.0.11")));
        assert!(rule.forbids(ip("8.8.8.8")));
        assert!(rule.forbids(ip("10.0.0.1")));
        assert!(!PeerRule::allow_all().forbids(ip("127.0.0.1")));
    }
}
