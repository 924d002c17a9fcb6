//! Web origins (scheme, host, port) and the check of a browser's `Origin`
//! against the server's own origin: `--public-url` when given, else what
//! the request shows (the `Host` header, and `https` when the connection is
//! TLS or a trusted proxy says so). Default ports are normalized (`https`
//! 443, `http` 80), so `https://chat.example.com` and
//! `https://chat.example.com:443` are the same origin, and a proxy's
//! `Host: chat.example.com` (port dropped) matches it.

use std::fmt;
use std::str::FromStr;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

impl Scheme {
    /// The port used when an origin names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A web origin: scheme, lowercase host (an IPv6 address in brackets) and
/// port (the scheme's default when not written).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebOrigin {
    scheme: Scheme,
    host: String,
    port: u16,
}

/// Why an origin or URL did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Not `http://` or `https://`.
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    /// The host is empty or has characters a host name cannot have.
    #[error("{0:?} has no valid host")]
    Host(String),
    /// The port is not a number from 1 to 65535.
    #[error("{0:?} has an invalid port")]
    Port(String),
    /// A browser origin has no path, query or user info.
    #[error("{0:?} is not an origin (scheme://host[:port] only)")]
    NotAnOrigin(String),
}

impl WebOrigin {
    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host, lowercase (IPv6 addresses in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, explicit or default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The origin of a page served as `scheme` under a `Host` header value
    /// (`host`, `host:port`, `[v6]:port`).
    pub fn from_host(scheme: Scheme, host: &str) -> Result<Self, OriginError> {
        let (host, port) = split_authority(host)?;
        Ok(Self {
            scheme,
            host,
            port: port.unwrap_or(scheme.default_port()),
        })
    }

    /// A browser's `Origin` header value: `scheme://host[:port]`, nothing
    /// more (a trailing `/` is tolerated).
    pub fn parse_origin(origin: &str) -> Result<Self, OriginError> {
        let (scheme, rest) = split_scheme(origin)?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(OriginError::NotAnOrigin(origin.to_owned()));
        }
        Self::from_host(scheme, authority)
    }
}

fn split_scheme(s: &str) -> Result<(Scheme, &str), OriginError> {
    let s = s.trim();
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| OriginError::Scheme(s.to_owned()))?;
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else {
        return Err(OriginError::Scheme(s.to_owned()));
    };
    Ok((scheme, rest))
}

/// `host[:port]` or `[v6][:port]` into a lowercase host and the port.
fn split_authority(authority: &str) -> Result<(String, Option<u16>), OriginError> {
    let bad_host = || OriginError::Host(authority.to_owned());
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad_host)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad_host())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad_host)?),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !ok {
            return Err(bad_host());
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| OriginError::Port(authority.to_owned()))
        })
        .transpose()?;
    Ok((host, port))
}

impl FromStr for WebOrigin {
    type Err = OriginError;

    /// A URL such as `https://chat.example.com` or
    /// `https://chat.example.com:8443/parlor/`: its origin (any path is
    /// dropped; user info, query and fragment are refused).
    fn from_str(url: &str) -> Result<Self, OriginError> {
        let (scheme, rest) = split_scheme(url)?;
        let authority = rest.split('/').next().unwrap_or_default();
        if rest.contains(['?', '#']) || authority.contains('@') {
            return Err(OriginError::NotAnOrigin(url.to_owned()));
        }
        Self::from_host(scheme, authority)
    }
}

impl fmt::Display for WebOrigin {
    /// `scheme://host`, with `:port` unless it is the scheme's default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Whether a WebSocket (or code API request) with this `Origin` may
/// proceed: no `Origin` (not a browser), the server's own origin
/// `expected` (scheme, host and port equal), or one of `allowed`
/// (`--allowed-origin`). An origin that does not parse (`null`) passes only
/// if `allowed` lists it literally.
pub fn origin_allowed(
    origin: Option<&str>,
    expected: Option<&WebOrigin>,
    allowed: &[String],
) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let parsed = WebOrigin::parse_origin(origin).ok();
    let listed = allowed
        .iter()
        .any(|a| match (WebOrigin::parse_origin(a).ok(), &parsed) {
            (Some(a), Some(o)) => a == *o,
            _ => a
                .trim_end_matches('/')
                .eq_ignore_ascii_case(origin.trim_end_matches('/')),
        });
    listed || matches!((parsed, expected), (Some(o), Some(e)) if o == *e)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn url(s: &str) -> WebOrigin {
        s.parse().unwrap()
    }

    #[test]
    fn urls_and_origins_are_normalized() {
        let site = url("https://Chat.Example.com");
        assert_eq!(site.to_string(), "https://chat.example.com");
        assert_eq!(site.port(), 443);
        assert_eq!(url("https://chat.example.com:443/parlor/"), site);
        assert_eq!(
            url("http://127.0.0.1:8080").to_string(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(url("http://[::1]:8080").host(), "[::1]");
        assert_eq!(url("http://[::1]").port(), 80);
        assert_eq!(
            WebOrigin::parse_origin("https://chat.example.com/").unwrap(),
            site
        );
        assert_eq!(
            WebOrigin::from_host(Scheme::Https, "chat.example.com").unwrap(),
            site
        );
        for bad in [
            "chat.example.com",
            "ftp://chat.example.com",
            "https://",
            "https://a b",
            "https://x:0",
            "https://x:65536",
            "https://x:port",
            "https://user@x",
            "https://x/?q",
            "https://[::1",
        ] {
            assert!(bad.parse::<WebOrigin>().is_err(), "{bad}");
        }
        assert!(WebOrigin::parse_origin("https://x/path").is_err());
        assert!(WebOrigin::parse_origin("null").is_err());
    }

    #[test]
    fn an_http_page_does_not_pass_for_an_https_site() {
        let site = url("https://chat.example.com");
        assert!(origin_allowed(
            Some("https://chat.example.com"),
            Some(&site),
            &[]
        ));
        assert!(origin_allowed(
            Some("https://chat.example.com:443"),
            Some(&site),
            &[]
        ));
        assert!(!origin_allowed(
            Some("http://chat.example.com"),
            Some(&site),
            &[]
        ));
        assert!(!origin_allowed(
            Some("https://chat.example.com:8443"),
            Some(&site),
            &[]
        ));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some(&site),
            &[]
        ));
        assert!(!origin_allowed(Some("null"), Some(&site), &[]));
        assert!(origin_allowed(None, Some(&site), &[]), "not a browser");
        assert!(!origin_allowed(Some("https://chat.example.com"), None, &[]));
    }

    #[test]
    fn allowed_origins_are_extra_and_normalized() {
        let site = url("http://127.0.0.1:8080");
        let allowed = ["https://Other.Example:443/".to_owned(), "null".to_owned()];
        assert!(origin_allowed(
            Some("https://other.example"),
            Some(&site),
            &allowed
        ));
        assert!(!origin_allowed(
            Some("http://other.example"),
            Some(&site),
            &allowed
        ));
        assert!(origin_allowed(Some("null"), Some(&site), &allowed));
        assert!(origin_allowed(
            Some("http://127.0.0.1:8080"),
            Some(&site),
            &allowed
        ));
    }

    #[test]
    fn a_host_header_without_port_gets_the_default_one() {
        let from_host = WebOrigin::from_host(Scheme::Http, "example.test").unwrap();
        assert!(origin_allowed(
            Some("http://example.test:80"),
            Some(&from_host),
            &[]
        ));
        assert!(!origin_allowed(
            Some("http://example.test:8080"),
            Some(&from_host),
            &[]
        ));
        assert!(WebOrigin::from_host(Scheme::Http, "").is_err());
        assert!(WebOrigin::from_host(Scheme::Http, "a/b").is_err());
    }
}
