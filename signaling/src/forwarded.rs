//! The client's address behind reverse proxies (`--trusted-proxy`): the
//! `Forwarded` (RFC 7239) and `X-Forwarded-For` headers, and the scheme from
//! `Forwarded: proto=` / `X-Forwarded-Proto`.
//!
//! Architecture invariant: these headers are read only when the connection's
//! peer is in a trusted range; from anyone else they are ignored. The client
//! is the rightmost hop that is not itself a trusted proxy (hops are walked
//! from the right, the entries a proxy appended, towards the left, which the
//! client wrote and may have forged). A hop that cannot be read during that
//! walk (garbage, `unknown`, an obfuscated `_name`) makes the whole header
//! count as absent: the socket address is used.
//!
//! Everything here is pure (headers in, address out) and unit-tested.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use warp::http::HeaderMap;

use crate::cidr::Cidr;

/// Which forwarding header a trusted proxy writes (`--proxy-header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProxyHeader {
    /// Whichever of the two is present; when both are, they must name the
    /// same client, else the socket address is used (a proxy that only
    /// appends to one passes a forged other one through unchanged).
    #[default]
    Auto,
    /// Only `Forwarded` (RFC 7239); `X-Forwarded-For` is ignored.
    Forwarded,
    /// Only `X-Forwarded-For`; `Forwarded` is ignored.
    XForwardedFor,
}

/// One hop of a forwarding header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// An address (any port dropped).
    Ip(IpAddr),
    /// `unknown` or an obfuscated identifier (`_hidden`): a hop whose
    /// address the proxy did not tell.
    Hidden,
}

/// What a request's forwarding headers say, once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The client's address: a forwarded one, or the socket address.
    pub ip: IpAddr,
    /// Whether `ip` came from a header.
    pub forwarded: bool,
    /// The scheme the client used (`http` or `https`, lowercase) when a
    /// trusted proxy said so.
    pub proto: Option<String>,
}

/// Reads one node of `X-Forwarded-For` or `Forwarded: for=`: `192.0.2.1`,
/// `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`,
/// `unknown`, `_obfuscated` (optionally with a `:port` of either kind).
/// `None` when it is none of these.
pub fn parse_node(node: &str) -> Option<Hop> {
    let node = node.trim();
    if let Some(rest) = node.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        return Ipv6Addr::from_str(addr).ok().map(|v6| Hop::Ip(v6.into()));
    }
    if let Ok(ip) = IpAddr::from_str(node) {
        return Some(Hop::Ip(ip));
    }
    let name = match node.rsplit_once(':') {
        Some((name, port)) if valid_port(port) => name,
        Some(_) => return None,
        None => node,
    };
    if let Ok(ip) = std::net::Ipv4Addr::from_str(name) {
        return Some(Hop::Ip(ip.into()));
    }
    if name.eq_ignore_ascii_case("unknown") || is_obfuscated(name) {
        return Some(Hop::Hidden);
    }
    None
}

/// A port: digits, or an obfuscated `_name` (RFC 7239 section 6.3).
fn valid_port(port: &str) -> bool {
    (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()))
        || is_obfuscated(port)
}

/// `_` followed by ALPHA / DIGIT / `.` / `_` / `-` (RFC 7239 section 6.3).
fn is_obfuscated(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The hops of `X-Forwarded-For` header values (several header lines count
/// as one comma-separated list, in order), each parsed or `None`.
pub fn x_forwarded_for<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Option<Hop>> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(parse_node)
        .collect()
}

/// One element of a `Forwarded` header: its `for=` node (parsed, or `None`
/// when missing or unreadable) and its `proto=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// `for=`.
    pub for_node: Option<Hop>,
    /// `proto=`, lowercase.
    pub proto: Option<String>,
}

/// The elements of `Forwarded` header values (RFC 7239: elements separated
/// by `,`, pairs by `;`, values tokens or quoted strings), or `None` when
/// the syntax is broken (an unterminated quote, a pair without `=`, a
/// repeated parameter).
pub fn forwarded<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Vec<Element>> {
    let mut elements = Vec::new();
    for value in values {
        for element in split_outside_quotes(value, ',')? {
            if element.trim().is_empty() {
                continue;
            }
            let mut for_node = None;
            let mut seen_for = false;
            let mut proto = None;
            for pair in split_outside_quotes(element, ';')? {
                let pair = pair.trim();
                if pair.is_empty() {
                    continue;
                }
                let (name, raw) = pair.split_once('=')?;
                let value = unquote(raw.trim())?;
                match name.trim().to_ascii_lowercase().as_str() {
                    "for" => {
                        if seen_for {
                            return None;
                        }
                        seen_for = true;
                        for_node = parse_node(&value);
                    }
                    "proto" => {
                        if proto.is_some() {
                            return None;
                        }
                        proto = Some(value.to_ascii_lowercase());
                    }
                    _ => {}
                }
            }
            elements.push(Element { for_node, proto });
        }
    }
    Some(elements)
}

/// Splits `s` at `sep` outside double quotes (backslash escapes inside);
/// `None` for an unterminated quote.
fn split_outside_quotes(s: &str, sep: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    if quoted || escaped {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

/// A token as is, or a quoted string without its quotes and escapes.
fn unquote(raw: &str) -> Option<String> {
    let Some(inner) = raw.strip_prefix('"') else {
        return (!raw.contains('"')).then(|| raw.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Walks `hops` from the right past trusted proxies: the first hop that is
/// not trusted is the client (its index), or, when every hop is trusted,
/// the leftmost. `None` when a hop met on the way cannot be read or hides
/// its address, or there are no hops.
pub fn client_hop(hops: &[Option<Hop>], trusted: &[Cidr]) -> Option<(usize, IpAddr)> {
    let mut last = None;
    for (i, hop) in hops.iter().enumerate().rev() {
        match hop {
            Some(Hop::Ip(ip)) => {
                let ip = canonical(*ip);
                if !is_trusted(ip, trusted) {
                    return Some((i, ip));
                }
                last = Some((i, ip));
            }
            Some(Hop::Hidden) | None => return None,
        }
    }
    last
}

/// Whether `ip` is in one of the `trusted` ranges (v4-mapped IPv6 addresses
/// count as their IPv4 address).
pub fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|range| range.contains(ip))
}

/// `::ffff:192.0.2.1` as `192.0.2.1` (a dual-stack listener reports IPv4
/// peers that way).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The client behind `peer` (the socket address): from the forwarding
/// headers when `peer` is a trusted proxy, else `peer` itself.
pub fn resolve(peer: IpAddr, trusted: &[Cidr], mode: ProxyHeader, headers: &HeaderMap) -> Resolved {
    let direct = Resolved {
        ip: peer,
        forwarded: false,
        proto: None,
    };
    if !is_trusted(peer, trusted) {
        return direct;
    }
    let values = |name: &str| -> Option<Vec<&str>> {
        let all = headers.get_all(name);
        if all.iter().next().is_none() {
            return Some(Vec::new());
        }
        // A header that is not visible ASCII is malformed as a whole.
        all.iter().map(|v| v.to_str().ok()).collect()
    };
    let xff_values = values("x-forwarded-for");
    let fwd_values = values("forwarded");
    let present = |v: &Option<Vec<&str>>| v.as_ref().is_none_or(|v| !v.is_empty());
    let use_xff = mode != ProxyHeader::Forwarded && present(&xff_values);
    let use_fwd = mode != ProxyHeader::XForwardedFor && present(&fwd_values);

    let from_xff = use_xff.then(|| {
        xff_values
            .and_then(|v| client_hop(&x_forwarded_for(v), trusted))
            .map(|(_, ip)| ip)
    });
    let from_fwd = use_fwd.then(|| {
        let elements = fwd_values.and_then(forwarded)?;
        let hops: Vec<Option<Hop>> = elements.iter().map(|e| e.for_node).collect();
        let (i, ip) = client_hop(&hops, trusted)?;
        Some((ip, elements.get(i).and_then(|e| e.proto.clone())))
    });
    let xfp = || {
        let value = headers.get("x-forwarded-proto")?.to_str().ok()?;
        let last = value.rsplit(',').next()?.trim().to_ascii_lowercase();
        (!last.is_empty()).then_some(last)
    };
    let (ip, proto) = match (from_xff, from_fwd) {
        (None, None) => {
            return Resolved {
                proto: xfp(),
                ..direct
            };
        }
        (Some(Some(ip)), None) => (ip, None),
        (None, Some(Some((ip, proto)))) => (ip, proto),
        (Some(Some(a)), Some(Some((b, proto)))) if a == b => (a, proto),
        _ => {
            return Resolved {
                proto: xfp(),
                ..direct
            };
        }
    };
    Resolved {
        ip,
        forwarded: true,
        proto: proto.or_else(xfp),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                warp::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    const PROXY: &str = "10.0.0.1";

    fn resolve_from(peer: &str, pairs: &[(&str, &str)]) -> Resolved {
        resolve(
            ip(peer),
            &cidrs(&["10.0.0.0/8", "fd00::/8"]),
            ProxyHeader::Auto,
            &headers(pairs),
        )
    }

    #[test]
    fn nodes_of_every_form_are_read() {
        let v4 = Some(Hop::Ip(ip("192.0.2.60")));
        let v6 = Some(Hop::Ip(ip("2001:db8:cafe::17")));
        assert_eq!(parse_node("192.0.2.60"), v4);
        assert_eq!(parse_node(" 192.0.2.60:4711 "), v4);
        assert_eq!(parse_node("192.0.2.60:_port"), v4);
        assert_eq!(parse_node("2001:db8:cafe::17"), v6);
        assert_eq!(parse_node("[2001:db8:cafe::17]"), v6);
        assert_eq!(parse_node("[2001:db8:cafe::17]:4711"), v6);
        assert_eq!(parse_node("unknown"), Some(Hop::Hidden));
        assert_eq!(parse_node("UNKNOWN"), Some(Hop::Hidden));
        assert_eq!(parse_node("_hidden"), Some(Hop::Hidden));
        assert_eq!(parse_node("_SEVKISEK:_port"), Some(Hop::Hidden));
        for bad in [
            "",
            "_",
            "example.com",
            "192.0.2.60:",
            "192.0.2.60:99999x",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[192.0.2.1]",
            "1.2.3.4.5",
            "_bad char",
        ] {
            assert_eq!(parse_node(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn forwarded_elements_quotes_and_parameters() {
        let elements = forwarded([
            r#"for=192.0.2.43;proto=HTTPS, for="[2001:db8:cafe::17]:4711""#,
            r#"For="_gazonk";by=10.0.0.1;host="a,b;c""#,
        ])
        .unwrap();
        assert_eq!(
            elements,
            vec![
                Element {
                    for_node: Some(Hop::Ip(ip("192.0.2.43"))),
                    proto: Some("https".into()),
                },
                Element {
                    for_node: Some(Hop::Ip(ip("2001:db8:cafe::17"))),
                    proto: None,
                },
                Element {
                    for_node: Some(Hop::Hidden),
                    proto: None,
                },
            ]
        );
        assert_eq!(forwarded([r#"for="192.0.2.1"#]), None, "unterminated quote");
        assert_eq!(forwarded(["for"]), None, "a pair without =");
        assert_eq!(forwarded(["for=1.2.3.4;for=5.6.7.8"]), None, "repeated for");
        assert_eq!(forwarded(["for=a\"b"]), None, "a quote inside a token");
        assert_eq!(
            forwarded(["proto=https"]).unwrap(),
            vec![Element {
                for_node: None,
                proto: Some("https".into())
            }]
        );
    }

    #[test]
    fn x_forwarded_for_from_a_trusted_proxy_names_the_client() {
        let r = resolve_from(PROXY, &[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!((r.ip, r.forwarded), (ip("203.0.113.7"), true));
        let r = resolve_from(PROXY, &[("x-forwarded-for", "[2001:db8::5]:1234")]);
        assert_eq!(r.ip, ip("2001:db8::5"));
        let r = resolve_from(PROXY, &[("x-forwarded-for", "2001:db8::5")]);
        assert_eq!(r.ip, ip("2001:db8::5"));
    }

    #[test]
    fn the_headers_of_an_untrusted_peer_are_ignored() {
        let r = resolve_from(
            "198.51.100.9",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("forwarded", "for=203.0.113.7;proto=https"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(
            r,
            Resolved {
                ip: ip("198.51.100.9"),
                forwarded: false,
                proto: None
            }
        );
    }

    #[test]
    fn spoofed_left_entries_are_not_believed() {
        // The client wrote "1.1.1.1, 10.9.9.9"; the proxy appended the
        // client's real address.
        let r = resolve_from(
            PROXY,
            &[("x-forwarded-for", "1.1.1.1, 10.9.9.9, 203.0.113.7")],
        );
        assert_eq!(r.ip, ip("203.0.113.7"));
        // Garbage on the left is never reached.
        let r = resolve_from(PROXY, &[("x-forwarded-for", "garbage, 203.0.113.7")]);
        assert_eq!(r.ip, ip("203.0.113.7"));
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let r = resolve_from(
            PROXY,
            &[(
                "x-forwarded-for",
                "1.1.1.1, 203.0.113.7, 10.1.1.1, 10.2.2.2",
            )],
        );
        assert_eq!(r.ip, ip("203.0.113.7"));
        // v6 proxies, and the v4-mapped peer of a dual-stack listener.
        let r = resolve_from(
            "::ffff:10.0.0.1",
            &[("forwarded", r#"for=203.0.113.7, for="[fd00::2]""#)],
        );
        assert_eq!(r.ip, ip("203.0.113.7"));
        // Every hop trusted: the leftmost.
        let r = resolve_from(PROXY, &[("x-forwarded-for", "10.3.3.3, 10.2.2.2")]);
        assert_eq!(r.ip, ip("10.3.3.3"));
    }

    #[test]
    fn several_header_lines_form_one_list() {
        let r = resolve_from(
            PROXY,
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "203.0.113.7, 10.1.1.1"),
            ],
        );
        assert_eq!(r.ip, ip("203.0.113.7"));
        let r = resolve_from(
            PROXY,
            &[
                ("forwarded", "for=1.1.1.1"),
                ("forwarded", "for=203.0.113.8;proto=https"),
            ],
        );
        assert_eq!(
            (r.ip, r.proto.as_deref()),
            (ip("203.0.113.8"), Some("https"))
        );
    }

    #[test]
    fn malformed_hidden_or_missing_hops_fall_back_to_the_socket() {
        let socket = ip(PROXY);
        for pairs in [
            vec![],
            vec![("x-forwarded-for", "")],
            vec![("x-forwarded-for", "203.0.113.7, nonsense")],
            vec![("x-forwarded-for", "203.0.113.7, unknown")],
            vec![("forwarded", "for=_hidden")],
            vec![("forwarded", "for=unknown")],
            vec![("forwarded", "proto=https")],
            vec![("forwarded", r#"for="[2001:db8::1"#)],
            vec![("forwarded", "for=203.0.113.7;for=203.0.113.8")],
        ] {
            let r = resolve_from(PROXY, &pairs);
            assert_eq!((r.ip, r.forwarded), (socket, false), "{pairs:?}");
        }
    }

    #[test]
    fn both_headers_must_agree() {
        let agree = resolve_from(
            PROXY,
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("forwarded", "for=203.0.113.7;proto=https"),
            ],
        );
        assert_eq!((agree.ip, agree.forwarded), (ip("203.0.113.7"), true));
        assert_eq!(agree.proto.as_deref(), Some("https"));
        // nginx appends to X-Forwarded-For and passes a forged Forwarded on.
        let forged = &[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=192.0.2.1"),
        ];
        assert_eq!(resolve_from(PROXY, forged).ip, ip(PROXY));
        // Told which header the proxy writes, the other one is ignored.
        let only_xff = resolve(
            ip(PROXY),
            &cidrs(&["10.0.0.0/8"]),
            ProxyHeader::XForwardedFor,
            &headers(forged),
        );
        assert_eq!(only_xff.ip, ip("203.0.113.7"));
        let only_fwd = resolve(
            ip(PROXY),
            &cidrs(&["10.0.0.0/8"]),
            ProxyHeader::Forwarded,
            &headers(forged),
        );
        assert_eq!(only_fwd.ip, ip("192.0.2.1"));
    }

    #[test]
    fn the_scheme_comes_from_a_trusted_proxy_only() {
        let r = resolve_from(PROXY, &[("x-forwarded-proto", "HTTPS")]);
        assert_eq!((r.ip, r.proto.as_deref()), (ip(PROXY), Some("https")));
        let r = resolve_from(
            PROXY,
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "http, https"),
            ],
        );
        assert_eq!(r.proto.as_deref(), Some("https"));
        // Forwarded's proto is the one of the client's element.
        let r = resolve_from(
            PROXY,
            &[(
                "forwarded",
                "for=203.0.113.7;proto=https, for=10.1.1.1;proto=http",
            )],
        );
        assert_eq!(r.proto.as_deref(), Some("https"));
    }
}
