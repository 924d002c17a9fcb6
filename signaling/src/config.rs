//! Server configuration: command-line flags, each also readable from a
//! `PARLOR_*` environment variable, with every limit's default a named
//! constant that says why it has that value.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use parlor_protocol::IceServer;

use crate::cidr::{Cidr, PeerRule};
use crate::forwarded::ProxyHeader;
use crate::origin::WebOrigin;
use crate::turn::TurnSecret;

/// Where the server listens unless told otherwise: loopback only, so a
/// development server is not reachable from the network by accident.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));

/// Where a binary compiled before the web app was built looks for it:
/// Trunk writes it to `dist/` at the workspace root.
pub const DEFAULT_WEB_DIR: &str = "dist";

/// Peers per room. Every peer keeps a WebRTC connection to every other one
/// (a full mesh), so a room of n peers costs each browser n-1 connections
/// and a newcomer n-1 offers; past about 16 that gets slow to set up and
/// heavy on a phone, and Parlor is meant for small groups.
pub const DEFAULT_MAX_PEERS_PER_ROOM: usize = 16;

/// Rooms held at once. A room costs a few hundred bytes plus its peers, so
/// 10 000 rooms are cheap; the cap only stops a client from creating rooms
/// without bound.
pub const DEFAULT_MAX_ROOMS: usize = 10_000;

/// Open WebSocket connections. Each costs a task, a 64-message outbox and
/// socket buffers (tens of KiB); 10 000 keeps a small VM well inside its
/// memory and file-descriptor limits. Beyond it the upgrade gets `503`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Sustained signaling messages per second per connection. After the initial
/// exchange a peer sends a few messages a minute (keep-alives, a renegotiation
/// now and then); 20/s is far above that and still cheap for the server.
pub const DEFAULT_RATE_PER_SEC: u32 = 20;

/// Burst size of the per-connection token bucket. A newcomer offering to 15
/// peers sends 15 offers and roughly 150 trickled ICE candidates at once;
/// 200 lets that through without a single refusal.
pub const DEFAULT_RATE_BURST: u32 = 200;

/// Refused messages (malformed, oversized, rate-limited, out of order) a
/// connection may send before the server closes it. A correct client sends
/// none; a few allow for version skew, while a client that keeps sending
/// garbage is cut off soon.
pub const DEFAULT_MAX_STRIKES: u32 = 10;

/// Seconds between the server's WebSocket pings. Many proxies and NATs drop
/// connections idle for 30-60 s; a ping every 15 s keeps them open and lets
/// the server notice dead clients.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 15;

/// Seconds without any frame from a client (a browser answers every ping
/// with a pong) before the server drops it: three missed heartbeats.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 45;

/// Seconds a new connection has to send its `hello`. A client sends it right
/// after connecting; the timeout frees connections that never join.
pub const DEFAULT_HELLO_TIMEOUT_SECS: u64 = 10;

/// Default log filter (tracing `EnvFilter` syntax): joins and leaves, not
/// every message. The `turn` crate is silenced: it logs every refused client
/// request (bad credentials, stray packets) at error level, which a client
/// could use to flood the log; the relay logs what matters itself.
pub const DEFAULT_LOG: &str = "info,turn=off";

/// Port of the embedded TURN relay (UDP and TCP) unless `--turn-port` says
/// otherwise: the registered STUN/TURN port, which clients and firewalls
/// expect. If it is taken, the server runs without the relay and says so.
pub const DEFAULT_TURN_PORT: u16 = 3478;

/// Seconds a TURN credential stays valid: 12 hours, longer than any session
/// (a credential only has to be valid when an allocation is made or
/// refreshed), short enough that a leaked one soon stops working.
pub const DEFAULT_TURN_TTL_SECS: u64 = 12 * 60 * 60;

/// Bytes per second one TURN allocation may relay (10 MiB/s, 84 Mbit/s).
/// Every relayed byte crosses the server's link twice; this lets a relayed
/// file transfer run at about the speed of a direct one between browsers
/// (15-20 MB/s measured on loopback, less over real networks), while one
/// pair of peers cannot fill a small server's uplink.
pub const DEFAULT_TURN_MAX_BANDWIDTH: u64 = 10 * 1024 * 1024;

/// TURN allocations all credentials used from one client address may hold
/// at once: two peers' worth of a full room (each peer gathers one relay
/// candidate per other peer, plus ICE restarts), so a household or office
/// behind one NAT still relays, while one anonymous visitor minting
/// credentials with repeated `hello`s cannot take the relay's descriptors.
pub const DEFAULT_TURN_MAX_ALLOCATIONS_PER_IP: usize = 64;

/// WebSockets one address may hold open: generous, because a whole office
/// or campus can share one address behind NAT.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;

/// New WebSockets per second per address (bursts of three times as many):
/// a person opens one per tab; reconnect back-off is far slower.
pub const DEFAULT_IP_CONNECT_RATE: u32 = 10;

/// Default `--relay-max-bandwidth`: 10 MiB/s per room, the same as one TURN
/// allocation, so falling back to the server relay keeps transfers at a
/// usable speed without letting one room take the server's whole uplink.
pub const DEFAULT_RELAY_MAX_BANDWIDTH: u64 = 10 * 1024 * 1024;

/// Default `--code-ttl-secs`: a short code is read out or typed within
/// minutes; ten leave time for a slow start without keeping nameplates long.
pub const DEFAULT_CODE_TTL_SECS: u64 = 10 * 60;

/// Default `--max-codes`: nameplates waiting to be opened at once. One costs
/// a few dozen bytes; the cap stops a client from exhausting the small
/// numbers (and memory). Beyond it `POST /api/code` answers 503.
pub const DEFAULT_MAX_CODES: usize = 10_000;

/// `parlor-server`: introduces Parlor peers to each other (forwards WebRTC
/// offers, answers and ICE candidates over a WebSocket) and serves the web app.
/// It never sees chat messages or files: those go peer to peer.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "parlor-server", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "PARLOR_LISTEN", default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Serve the web app from this directory instead of the copy compiled
    /// into the binary (which is used when this is not given; a binary built
    /// before the app falls back to `dist/`). When it has no `index.html`,
    /// `/` shows how to build it.
    #[arg(long, env = "PARLOR_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Peers allowed in one room.
    #[arg(long, env = "PARLOR_MAX_PEERS_PER_ROOM", default_value_t = DEFAULT_MAX_PEERS_PER_ROOM,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_peers_per_room: usize,

    /// Rooms the server holds at once.
    #[arg(long, env = "PARLOR_MAX_ROOMS", default_value_t = DEFAULT_MAX_ROOMS,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_rooms: usize,

    /// WebSocket connections open at once; more are refused with 503.
    #[arg(long, env = "PARLOR_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// WebSockets one IP address may have open at once.
    #[arg(long, env = "PARLOR_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_ip: usize,

    /// New WebSockets per second one IP address may open (sustained; bursts
    /// of three times as many).
    #[arg(long, env = "PARLOR_IP_CONNECT_RATE", default_value_t = DEFAULT_IP_CONNECT_RATE,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ip_connect_rate: u32,

    /// A web origin (e.g. `https://chat.example.org`) allowed to open the
    /// signaling WebSocket besides the server's own (repeatable; in the
    /// environment, comma-separated). Browsers always send `Origin`, so
    /// another site cannot use this server from its pages; clients without
    /// an `Origin` (the CLI) are not affected.
    #[arg(
        long = "allowed-origin",
        value_name = "ORIGIN",
        env = "PARLOR_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// The URL browsers use to reach the server (e.g.
    /// `https://chat.example.com`; any path is ignored): the WebSocket's
    /// `Origin` check compares scheme, host and port with it rather than
    /// with the request's `Host` header. Set it behind a reverse proxy.
    #[arg(long, value_name = "URL", env = "PARLOR_PUBLIC_URL")]
    pub public_url: Option<WebOrigin>,

    /// A reverse proxy's address range (e.g. `127.0.0.1/32`, `10.0.0.0/8`)
    /// whose `Forwarded` / `X-Forwarded-For` (client address) and
    /// `X-Forwarded-Proto` headers are believed (repeatable; in the
    /// environment, comma-separated). From any other peer those headers are
    /// ignored.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "PARLOR_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,

    /// Which header trusted proxies write the client address to: `auto`
    /// (either; if both are present they must agree), `forwarded` or
    /// `x-forwarded-for` (the other header is then ignored).
    #[arg(long, value_name = "HEADER", env = "PARLOR_PROXY_HEADER",
          value_enum, default_value_t = ProxyHeader::Auto)]
    pub proxy_header: ProxyHeader,

    /// Signaling messages per second a connection may send (sustained).
    #[arg(long, env = "PARLOR_RATE_PER_SEC", default_value_t = DEFAULT_RATE_PER_SEC,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_per_sec: u32,

    /// Signaling messages a connection may send in one burst.
    #[arg(long, env = "PARLOR_RATE_BURST", default_value_t = DEFAULT_RATE_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,

    /// Refused messages allowed before the server closes the connection
    /// (close code 1008).
    #[arg(long, env = "PARLOR_MAX_STRIKES", default_value_t = DEFAULT_MAX_STRIKES)]
    pub max_strikes: u32,

    /// Seconds between WebSocket pings sent to each client.
    #[arg(long, env = "PARLOR_HEARTBEAT_SECS", default_value_t = DEFAULT_HEARTBEAT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_secs: u64,

    /// Seconds of silence from a client before it is dropped.
    #[arg(long, env = "PARLOR_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// Seconds a new connection has to send `hello`.
    #[arg(long, env = "PARLOR_HELLO_TIMEOUT_SECS", default_value_t = DEFAULT_HELLO_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub hello_timeout_secs: u64,

    /// A STUN or TURN URL handed to clients (repeatable; in the environment,
    /// comma-separated). Default: none, which is enough on one network.
    #[arg(
        long = "ice-server",
        value_name = "URL",
        env = "PARLOR_ICE_SERVERS",
        value_delimiter = ','
    )]
    pub ice_servers: Vec<String>,

    /// Turn the embedded TURN relay off (e.g. when `--turn-url` points at
    /// coturn instead).
    #[arg(long, env = "PARLOR_NO_TURN")]
    pub no_turn: bool,

    /// Port of the embedded TURN relay, UDP and TCP [default: 3478; if taken,
    /// the server runs without the relay]. `0` picks a free port (and
    /// advertises it).
    #[arg(long, value_name = "PORT", env = "PARLOR_TURN_PORT")]
    pub turn_port: Option<u16>,

    /// Also serve TURN over TLS (`turns:`) on this TCP port (443 where the
    /// host allows: networks that pass only TLS then still get a relay);
    /// `0` picks a free one. Needs `--turn-tls-host` and a certificate
    /// (`--turn-tls-cert`/`--turn-tls-key`, else `--tls-cert`/`--tls-key`).
    #[arg(long, value_name = "PORT", env = "PARLOR_TURN_TLS_PORT")]
    pub turn_tls_port: Option<u16>,

    /// The host name advertised in the `turns:` URL; the certificate must
    /// be for it (browsers check).
    #[arg(long, value_name = "NAME", env = "PARLOR_TURN_TLS_HOST")]
    pub turn_tls_host: Option<String>,

    /// PEM certificate chain for TURN/TLS [default: `--tls-cert`]; read
    /// again on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        env = "PARLOR_TURN_TLS_CERT",
        requires = "turn_tls_key"
    )]
    pub turn_tls_cert: Option<PathBuf>,

    /// PEM private key of `--turn-tls-cert`.
    #[arg(
        long,
        value_name = "FILE",
        env = "PARLOR_TURN_TLS_KEY",
        requires = "turn_tls_cert"
    )]
    pub turn_tls_key: Option<PathBuf>,

    /// Address the TURN relay listens and relays on [default: the IP of
    /// `--listen`].
    #[arg(long, value_name = "IP", env = "PARLOR_TURN_LISTEN_IP")]
    pub turn_listen_ip: Option<IpAddr>,

    /// The server's address as clients see it: the relayed address and the
    /// host in the advertised `turn:` URLs [default: the TURN listen IP;
    /// needed when that is 0.0.0.0 or ::].
    #[arg(long, value_name = "IP", env = "PARLOR_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,

    /// Shared secret for TURN REST credentials (coturn's
    /// `static-auth-secret`) [default: 32 random bytes per process]. Needed
    /// with `--turn-url`.
    #[arg(
        long,
        value_name = "SECRET",
        env = "PARLOR_TURN_SECRET",
        hide_env_values = true
    )]
    pub turn_secret: Option<TurnSecret>,

    /// An external TURN server URL (e.g. coturn with `use-auth-secret`)
    /// handed to clients with credentials made with `--turn-secret`
    /// (repeatable; in the environment, comma-separated).
    #[arg(
        long = "turn-url",
        value_name = "URL",
        env = "PARLOR_TURN_URLS",
        value_delimiter = ','
    )]
    pub turn_urls: Vec<String>,

    /// Seconds a TURN credential handed out in `welcome` stays valid.
    #[arg(long, env = "PARLOR_TURN_TTL_SECS", default_value_t = DEFAULT_TURN_TTL_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub turn_ttl_secs: u64,

    /// Let the TURN relay reach every address, loopback and private ones
    /// included: switches the peer deny list off (loopback tests need it;
    /// never on a server reachable from the internet).
    #[arg(long, env = "PARLOR_TURN_ALLOW_PRIVATE")]
    pub turn_allow_private: bool,

    /// A peer address range the TURN relay may reach although the default
    /// deny list (coturn's: private, loopback, CGNAT, link-local, reserved,
    /// documentation, benchmarking, multicast, NAT64, ...) contains it, e.g.
    /// `198.18.0.0/15` for a test network (repeatable; in the environment,
    /// comma-separated). Wins over `--turn-deny`.
    #[arg(
        long = "turn-allow",
        value_name = "CIDR",
        env = "PARLOR_TURN_ALLOW",
        value_delimiter = ','
    )]
    pub turn_allow: Vec<Cidr>,

    /// A peer address range the TURN relay refuses in addition to the
    /// default deny list (repeatable; in the environment, comma-separated).
    #[arg(
        long = "turn-deny",
        value_name = "CIDR",
        env = "PARLOR_TURN_DENY",
        value_delimiter = ','
    )]
    pub turn_deny: Vec<Cidr>,

    /// TURN allocations one client address (an IPv6 client's /64) may hold
    /// at once, over all credentials; more get 486 (Allocation Quota
    /// Reached).
    #[arg(long, env = "PARLOR_TURN_MAX_ALLOCATIONS_PER_IP",
          default_value_t = DEFAULT_TURN_MAX_ALLOCATIONS_PER_IP,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub turn_max_allocations_per_ip: usize,

    /// TURN allocations the whole relay may hold at once; more get 486
    /// [default: from the file-descriptor limit: TURN gets a third of the
    /// descriptors, three quarters of those for allocations].
    #[arg(long, value_name = "N", env = "PARLOR_TURN_MAX_ALLOCATIONS",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub turn_max_allocations: Option<usize>,

    /// Bytes per second one TURN allocation may relay; more is dropped.
    #[arg(long, value_name = "BYTES_PER_SEC", env = "PARLOR_TURN_MAX_BANDWIDTH",
          default_value_t = DEFAULT_TURN_MAX_BANDWIDTH,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub turn_max_bandwidth: u64,

    /// Turn the WebSocket server relay off: peers that cannot connect
    /// directly or through TURN then cannot talk at all.
    #[arg(long, env = "PARLOR_NO_SERVER_RELAY")]
    pub no_server_relay: bool,

    /// Leave Nagle's algorithm on for HTTP/WebSocket connections (only for
    /// `cargo xtask bench`'s side-by-side comparison): a second small
    /// message then waits for the peer's delayed ACK of the first.
    #[arg(long, hide = true)]
    pub no_tcp_nodelay: bool,

    /// Bytes per second the server relay carries for one room (all its
    /// peers together); senders are slowed down, not dropped.
    #[arg(long, value_name = "BYTES_PER_SEC", env = "PARLOR_RELAY_MAX_BANDWIDTH",
          default_value_t = DEFAULT_RELAY_MAX_BANDWIDTH,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub relay_max_bandwidth: u64,

    /// Seconds a short code's nameplate (`POST /api/code`) waits to be
    /// opened before it expires.
    #[arg(long, env = "PARLOR_CODE_TTL_SECS", default_value_t = DEFAULT_CODE_TTL_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub code_ttl_secs: u64,

    /// Short-code nameplates waiting at once; more get 503.
    #[arg(long, env = "PARLOR_MAX_CODES", default_value_t = DEFAULT_MAX_CODES,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_codes: usize,

    /// PEM certificate chain to serve https and wss with, leaf first (needs
    /// `--tls-key`; both are read again on SIGHUP). Without it the server
    /// speaks plain HTTP (for local use or behind a TLS proxy).
    #[arg(
        long,
        value_name = "FILE",
        env = "PARLOR_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        value_name = "FILE",
        env = "PARLOR_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Log filter, e.g. `info` or `parlor_signaling=debug` (logs go to stderr).
    #[arg(long, env = "PARLOR_LOG", default_value = DEFAULT_LOG)]
    pub log: String,
}

impl Default for Config {
    /// The documented defaults, without reading the command line or the
    /// environment (tests start from this and change what they need).
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            web_dir: None,
            max_peers_per_room: DEFAULT_MAX_PEERS_PER_ROOM,
            max_rooms: DEFAULT_MAX_ROOMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            ip_connect_rate: DEFAULT_IP_CONNECT_RATE,
            allowed_origins: Vec::new(),
            public_url: None,
            trusted_proxies: Vec::new(),
            proxy_header: ProxyHeader::Auto,
            rate_per_sec: DEFAULT_RATE_PER_SEC,
            rate_burst: DEFAULT_RATE_BURST,
            max_strikes: DEFAULT_MAX_STRIKES,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            hello_timeout_secs: DEFAULT_HELLO_TIMEOUT_SECS,
            ice_servers: Vec::new(),
            no_turn: false,
            turn_port: None,
            turn_tls_port: None,
            turn_tls_host: None,
            turn_tls_cert: None,
            turn_tls_key: None,
            turn_listen_ip: None,
            public_ip: None,
            turn_secret: None,
            turn_urls: Vec::new(),
            turn_ttl_secs: DEFAULT_TURN_TTL_SECS,
            turn_allow_private: false,
            turn_allow: Vec::new(),
            turn_deny: Vec::new(),
            turn_max_allocations_per_ip: DEFAULT_TURN_MAX_ALLOCATIONS_PER_IP,
            turn_max_allocations: None,
            turn_max_bandwidth: DEFAULT_TURN_MAX_BANDWIDTH,
            no_server_relay: false,
            no_tcp_nodelay: false,
            relay_max_bandwidth: DEFAULT_RELAY_MAX_BANDWIDTH,
            code_ttl_secs: DEFAULT_CODE_TTL_SECS,
            max_codes: DEFAULT_MAX_CODES,
            tls_cert: None,
            tls_key: None,
            log: DEFAULT_LOG.to_owned(),
        }
    }
}

/// A configuration the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A limit that must be at least 1 is 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// Pings would not come often enough to keep a live client from being
    /// dropped as idle.
    #[error("heartbeat ({heartbeat} s) must be shorter than the idle timeout ({idle} s)")]
    HeartbeatTooSlow {
        /// `--heartbeat-secs`.
        heartbeat: u64,
        /// `--idle-timeout-secs`.
        idle: u64,
    },
    /// An `--ice-server` that is not a `stun:`, `stuns:`, `turn:` or `turns:` URL.
    #[error("ICE server {0:?} must start with stun:, stuns:, turn: or turns:")]
    IceServer(String),
    /// A `--turn-url` that is not a `turn:` or `turns:` URL.
    #[error("TURN URL {0:?} must start with turn: or turns:")]
    TurnUrl(String),
    /// `--turn-url` without `--turn-secret`: the credentials would be made
    /// with a random secret the external server cannot know.
    #[error("--turn-url needs --turn-secret (the external TURN server's shared secret)")]
    TurnUrlWithoutSecret,
    /// `--public-ip` 0.0.0.0 or `::`: not an address clients can reach.
    #[error("--public-ip must be a concrete address, not {0}")]
    UnspecifiedPublicIp(IpAddr),
    /// Only one of `--tls-cert` and `--tls-key`.
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    TlsHalf,
}

impl Config {
    /// Checks what clap's per-flag parsers cannot (and what a [`Config`]
    /// built in code may get wrong).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero: [(&'static str, u64); 12] = [
            ("--max-peers-per-room", self.max_peers_per_room as u64),
            ("--max-rooms", self.max_rooms as u64),
            ("--max-connections", self.max_connections as u64),
            ("--rate-per-sec", u64::from(self.rate_per_sec)),
            ("--rate-burst", u64::from(self.rate_burst)),
            ("--heartbeat-secs", self.heartbeat_secs),
            ("--idle-timeout-secs", self.idle_timeout_secs),
            ("--hello-timeout-secs", self.hello_timeout_secs),
            ("--turn-ttl-secs", self.turn_ttl_secs),
            ("--turn-max-bandwidth", self.turn_max_bandwidth),
            (
                "--turn-max-allocations-per-ip",
                self.turn_max_allocations_per_ip as u64,
            ),
            (
                "--turn-max-allocations",
                self.turn_max_allocations.map_or(1, |n| n as u64),
            ),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero(name));
        }
        if self.heartbeat_secs >= self.idle_timeout_secs {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_secs,
                idle: self.idle_timeout_secs,
            });
        }
        if let Some(bad) = self.ice_servers.iter().find(|url| {
            !["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
        }) {
            return Err(ConfigError::IceServer(bad.clone()));
        }
        if let Some(bad) = self
            .turn_urls
            .iter()
            .find(|url| !(url.starts_with("turn:") || url.starts_with("turns:")))
        {
            return Err(ConfigError::TurnUrl(bad.clone()));
        }
        if !self.turn_urls.is_empty() && self.turn_secret.is_none() {
            return Err(ConfigError::TurnUrlWithoutSecret);
        }
        if let Some(ip) = self.public_ip.filter(IpAddr::is_unspecified) {
            return Err(ConfigError::UnspecifiedPublicIp(ip));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::TlsHalf);
        }
        Ok(())
    }

    /// The TLS certificate and key files, when both are given.
    pub fn tls_files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    /// Where the web app is served from: `--web-dir`, else the binary.
    pub fn web_source(&self) -> crate::web::WebSource {
        crate::web::WebSource::choose(
            self.web_dir.as_deref(),
            std::path::Path::new(DEFAULT_WEB_DIR),
        )
    }

    /// `https` with `--tls-cert`, `http` without: the scheme clients use.
    pub fn scheme(&self) -> &'static str {
        if self.tls_files().is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The ICE servers as sent in `welcome`: one entry per URL.
    pub fn ice_server_list(&self) -> Vec<IceServer> {
        self.ice_servers
            .iter()
            .map(|url| IceServer {
                urls: vec![url.clone()],
                username: None,
                credential: None,
            })
            .collect()
    }

    /// The TURN relay's peer rule: everything allowed with
    /// `--turn-allow-private`, else the default deny list with `--turn-allow`
    /// and `--turn-deny`.
    pub fn turn_peer_rule(&self) -> PeerRule {
        if self.turn_allow_private {
            PeerRule::allow_all()
        } else {
            PeerRule::new(&self.turn_allow, &self.turn_deny)
        }
    }

    /// `--turn-ttl-secs` as a duration.
    pub fn turn_ttl(&self) -> Duration {
        Duration::from_secs(self.turn_ttl_secs)
    }

    /// `--heartbeat-secs` as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    /// `--idle-timeout-secs` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// `--hello-timeout-secs` as a duration.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.hello_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parsed_defaults_match_default() {
        // Ignores PARLOR_* variables only if none is set, which is the case
        // in CI; the point is that the clap defaults and `Default` agree.
        if std::env::vars().any(|(k, _)| k.starts_with("PARLOR_")) {
            return;
        }
        assert_eq!(Config::parse_from(["parlor-server"]), Config::default());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn flags_are_parsed() {
        let config = Config::parse_from([
            "parlor-server",
            "--listen",
            "127.0.0.1:0",
            "--ice-server",
            "stun:stun.example:3478",
            "--ice-server",
            "turn:turn.example:3478",
            "--max-peers-per-room",
            "4",
        ]);
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.max_peers_per_room, 4);
        assert_eq!(config.ice_server_list().len(), 2);
        assert_eq!(
            config.ice_server_list()[1].urls,
            vec!["turn:turn.example:3478".to_owned()]
        );
    }

    #[test]
    fn proxy_flags_are_parsed() {
        let config = Config::parse_from([
            "parlor-server",
            "--trusted-proxy",
            "127.0.0.1",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--public-url",
            "https://chat.example.com/",
            "--proxy-header",
            "x-forwarded-for",
        ]);
        assert_eq!(
            config.trusted_proxies,
            [
                "127.0.0.1/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap()
            ]
        );
        assert_eq!(
            config.public_url.unwrap().to_string(),
            "https://chat.example.com"
        );
        assert_eq!(config.proxy_header, ProxyHeader::XForwardedFor);
        assert!(Config::try_parse_from(["parlor-server", "--public-url", "chat.example"]).is_err());
        assert!(Config::try_parse_from(["parlor-server", "--trusted-proxy", "nope"]).is_err());
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(Config::try_parse_from(["parlor-server", "--max-rooms", "0"]).is_err());
        let config = Config {
            rate_burst: 0,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::Zero("--rate-burst")));
        let config = Config {
            heartbeat_secs: 45,
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::HeartbeatTooSlow { .. })
        ));
        let config = Config {
            ice_servers: vec!["http://x".into()],
            ..Config::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::IceServer(_))));
    }

    #[test]
    fn turn_flags_are_parsed_and_checked() {
        let config = Config::parse_from([
            "parlor-server",
            "--turn-port",
            "0",
            "--public-ip",
            "198.18.0.1",
            "--turn-secret",
            "s3cret",
            "--turn-url",
            "turn:coturn.example:3478?transport=udp",
            "--turn-allow-private",
            "--turn-allow",
            "198.18.0.0/15",
            "--turn-deny",
            "8.8.8.0/24",
            "--turn-max-allocations-per-ip",
            "5",
            "--turn-max-allocations",
            "50",
        ]);
        assert_eq!(config.turn_allow, ["198.18.0.0/15".parse().unwrap()]);
        assert_eq!(config.turn_deny, ["8.8.8.0/24".parse().unwrap()]);
        assert_eq!(config.turn_max_allocations_per_ip, 5);
        assert_eq!(config.turn_max_allocations, Some(50));
        assert!(config.turn_peer_rule().allows_all());
        let ruled = Config {
            turn_allow_private: false,
            ..config.clone()
        }
        .turn_peer_rule();
        assert!(!ruled.forbids("198.18.0.11".parse().unwrap()));
        assert!(ruled.forbids("8.8.8.8".parse().unwrap()));
        assert!(ruled.forbids("100.100.100.200".parse().unwrap()));
        assert!(Config::try_parse_from(["parlor-server", "--turn-allow", "10.0.0.0/40"]).is_err());
        assert!(
            Config::try_parse_from(["parlor-server", "--turn-max-allocations-per-ip", "0"])
                .is_err()
        );
        assert_eq!(config.turn_port, Some(0));
        assert_eq!(config.public_ip, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(config.turn_secret, Some("s3cret".parse().unwrap()));
        assert!(config.turn_allow_private);
        assert!(config.validate().is_ok());
        assert!(!format!("{config:?}").contains("s3cret"), "secret in Debug");

        let no_secret = Config {
            turn_secret: None,
            ..config.clone()
        };
        assert_eq!(no_secret.validate(), Err(ConfigError::TurnUrlWithoutSecret));
        let bad_url = Config {
            turn_urls: vec!["stun:x".into()],
            ..config.clone()
        };
        assert!(matches!(bad_url.validate(), Err(ConfigError::TurnUrl(_))));
        let unspecified = Config {
            public_ip: Some("0.0.0.0".parse().unwrap()),
            ..config
        };
        assert!(matches!(
            unspecified.validate(),
            Err(ConfigError::UnspecifiedPublicIp(_))
        ));
        assert!(Config::try_parse_from(["parlor-server", "--turn-ttl-secs", "0"]).is_err());
    }
}
