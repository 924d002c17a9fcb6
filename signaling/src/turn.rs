//! The embedded TURN relay: webrtc-rs's `turn` server on UDP and on TCP,
//! with TURN REST credentials, no relaying into private networks, and caps
//! that one visitor cannot exhaust.
//!
//! - Credentials ([`credential`], [`TurnAdvert`]): the TURN REST scheme that
//!   coturn checks with `use-auth-secret`. The username is `EXPIRY:PEERID`
//!   (EXPIRY in unix seconds), the password `base64(HMAC-SHA1(secret,
//!   username))`. The signaling server hands a fresh pair to every peer in its
//!   `welcome`; the relay ([`TurnServer`]) recomputes the password from the
//!   username, so it keeps no per-user state, and an external coturn with the
//!   same secret accepts the same credentials. A credential is refused (401)
//!   once expired and when it expires further ahead than the relay's
//!   credential lifetime ([`check_username`]).
//! - The peer rule ([`PeerRule`]): by default the relay neither sends to nor
//!   accepts from the ranges coturn's example configuration denies
//!   (loopback, RFC 1918, carrier-grade NAT, link-local, documentation,
//!   benchmarking, reserved, multicast, NAT64, ...). It is enforced twice:
//!   CreatePermission and ChannelBind requests for such a peer are answered
//!   `403 Forbidden` (and Send indications dropped) before the `turn` crate
//!   sees them (`guard`), and every relay socket the crate gets from our
//!   [`RelayAddressGenerator`] refuses them again ([`RelayConn`]), since the
//!   crate has no peer-address hook of its own.
//! - Caps: allocations per credential ([`MAX_ALLOCATIONS_PER_USER`]), per
//!   client address over all credentials, and for the whole relay, sized
//!   from the file-descriptor limit ([`FdBudget`]); past any of them an
//!   Allocate gets `486 Allocation Quota Reached`. TURN-over-TCP connections
//!   are capped by the same budget, and each relay socket by a token bucket
//!   of `--turn-max-bandwidth` bytes per second (excess packets are dropped,
//!   as a congested link would).
//! - Error codes: the crate answers bad credentials with 400 and quota
//!   refusals with 508; the guard in front of it answers 401 and 486, as
//!   RFC 8656 and coturn do (see `guard`).
//! - Transports: one `turn::server::Server` reads a UDP socket; a second one
//!   reads [`TcpMux`], which frames STUN and ChannelData messages over every
//!   accepted TCP stream (RFC 5766 §11.5, ChannelData padded to 4 bytes) and
//!   looks to the crate like one packet socket keyed by the client's address.
//!   With `--turn-tls-port`, TLS connections (rustls, the handshake bounded)
//!   feed the same [`TcpMux`]; TCP and TLS share one connection budget and
//!   one per-address connection cap (the per-address allocation cap).
//!
//! Why two `Server`s instead of one with two listeners: the crate does not
//! tell the relay generator who asked for an allocation. Each `Server`
//! handles its listener's messages one at a time (guard, authentication,
//! then the relay socket), so the quota slot its guard took for the message
//! read last is the one the allocation gets. With two listeners in one
//! `Server` the UDP and TCP loops would interleave on one shared slot.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use parlor_protocol::IceServer;
use sha1::Sha1;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::RelayAddressGenerator;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;

pub use crate::cidr::PeerRule;
use crate::config::{
    Config, DEFAULT_TURN_MAX_ALLOCATIONS_PER_IP, DEFAULT_TURN_MAX_BANDWIDTH, DEFAULT_TURN_PORT,
    DEFAULT_TURN_TTL_SECS,
};
use crate::limit::TokenBucket;
use crate::metrics::{TurnMetrics, TurnRefusal};
use crate::tls::CertStore;

mod guard;
mod quota;

pub use guard::NONCE_ROTATION;
use guard::{Guard, GuardedListener, Nonces, PendingSlot};
pub use quota::{ASSUMED_FD_LIMIT, FdBudget, descriptor_limit};
use quota::{AllocationCounts, AllocationSlot, Quotas};

/// The realm of TURN's long-term credentials. Clients learn it from the
/// server's first 401 answer; the password does not depend on it.
pub const REALM: &str = "parlor";

/// Bytes of the shared secret made up at start when `--turn-secret` is not
/// given: 256 bits, far beyond guessing.
pub const RANDOM_SECRET_BYTES: usize = 32;

/// How much further ahead than the credential lifetime a credential's expiry
/// may be: clock skew between the servers sharing a `--turn-secret`.
pub const CREDENTIAL_EXPIRY_SLACK: Duration = Duration::from_secs(60);

/// Allocations one credential (one peer's `welcome`) may hold at once. A peer
/// opens one WebRTC connection per other peer in its room and each gathers
/// its own relay candidate with the same credential: 15 in a full room of
/// [`crate::config::DEFAULT_MAX_PEERS_PER_ROOM`], plus new ones after an ICE
/// restart while the old ones expire. 32 covers that, while a leaked
/// credential still opens at most 32 relay sockets.
pub const MAX_ALLOCATIONS_PER_USER: usize = 32;

/// Seconds of traffic at the bandwidth cap an allocation may send in one
/// burst. SCTP sends in bursts; a policer with a small bucket would drop
/// packets of a flow whose average is well under the cap.
pub const BANDWIDTH_BURST_SECS: u64 = 1;

/// TURN-over-TCP connections held at once at most, whatever the
/// descriptor budget ([`FdBudget`]). Each costs a descriptor, two tasks and
/// two bounded queues; 1024 is far above what a Parlor deployment relays
/// over TCP (clients on networks that block UDP) and bounds what idle
/// sockets cost.
pub const MAX_TCP_CONNECTIONS: usize = 1024;

/// Time a new TCP connection has to send its first message: a client sends
/// its Allocate request right after connecting.
pub const TCP_FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Silence after which a TCP connection is dropped: longer than the crate's
/// default allocation lifetime (10 minutes), within which a client refreshes,
/// and connected ICE pairs send consent checks every few seconds.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(11 * 60);

/// Messages queued for one TCP client before more are dropped (a UDP relay
/// drops too when the client cannot keep up).
const TCP_WRITE_QUEUE: usize = 256;

/// Messages from all TCP clients waiting for the server's read loop; a full
/// queue pauses the TCP readers, so memory stays bounded.
const TCP_READ_QUEUE: usize = 256;

/// Attempts at getting one free port for both UDP and TCP when the port is 0.
const SAME_PORT_ATTEMPTS: usize = 8;

/// A TURN REST shared secret. Shown as `TurnSecret(..)` in debug output, so
/// it never lands in a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret(Arc<[u8]>);

impl TurnSecret {
    /// [`RANDOM_SECRET_BYTES`] random bytes.
    pub fn random() -> Self {
        Self(Arc::from(
            rand::random::<[u8; RANDOM_SECRET_BYTES]>().as_slice(),
        ))
    }

    /// The HMAC key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for TurnSecret {
    type Err = String;

    /// The UTF-8 bytes of `s`, as coturn's `static-auth-secret` uses them.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the TURN secret must not be empty".into());
        }
        Ok(Self(Arc::from(s.as_bytes())))
    }
}

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TurnSecret(..)")
    }
}

/// The TURN REST password for `username`: `base64(HMAC-SHA1(secret,
/// username))`, what coturn computes with `use-auth-secret`.
pub fn credential(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// The TURN REST username `EXPIRY:ID`.
pub fn rest_username(expiry_unix_secs: u64, id: &str) -> String {
    format!("{expiry_unix_secs}:{id}")
}

/// Why the relay refuses a credential's username (answered with 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not `EXPIRY:ID` or `EXPIRY`.
    #[error("username is not of the form EXPIRY:ID")]
    Malformed,
    /// The expiry has passed.
    #[error("credential expired")]
    Expired,
    /// The expiry is further ahead than the relay ever issues.
    #[error("credential expires further ahead than the credential lifetime")]
    TooFarAhead,
}

impl CredentialError {
    /// The `reason` label this refusal is counted under.
    pub fn refusal(self) -> TurnRefusal {
        match self {
            Self::Malformed => TurnRefusal::MalformedUsername,
            Self::Expired => TurnRefusal::ExpiredCredential,
            Self::TooFarAhead => TurnRefusal::ExpiryTooFar,
        }
    }
}

/// Checks a TURN REST username at `now_unix_secs`: its expiry must be in the
/// future, and at most `lifetime` (the `--turn-ttl-secs` the server issues
/// with) plus [`CREDENTIAL_EXPIRY_SLACK`] ahead. Accepts `EXPIRY:ID` and a
/// bare `EXPIRY`, like coturn.
pub fn check_username(
    username: &str,
    now_unix_secs: u64,
    lifetime: Duration,
) -> Result<(), CredentialError> {
    let expiry = username
        .split_once(':')
        .map_or(username, |(expiry, _)| expiry);
    let expiry: u64 = expiry.parse().map_err(|_| CredentialError::Malformed)?;
    if expiry <= now_unix_secs {
        return Err(CredentialError::Expired);
    }
    let latest = now_unix_secs
        .saturating_add(lifetime.as_secs())
        .saturating_add(CREDENTIAL_EXPIRY_SLACK.as_secs());
    if expiry > latest {
        return Err(CredentialError::TooFarAhead);
    }
    Ok(())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The TURN servers handed to peers in `welcome` and how to make their
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnAdvert {
    urls: Vec<String>,
    secret: TurnSecret,
    ttl: Duration,
}

impl TurnAdvert {
    /// Advertises `urls` with credentials from `secret` valid for `ttl`.
    pub fn new(urls: Vec<String>, secret: TurnSecret, ttl: Duration) -> Self {
        Self { urls, secret, ttl }
    }

    /// The external servers of `--turn-url`, if any (needs `--turn-secret`,
    /// which [`Config::validate`] checks).
    pub fn external(config: &Config) -> Option<Self> {
        if config.turn_urls.is_empty() {
            return None;
        }
        let secret = config.turn_secret.clone()?;
        Some(Self::new(
            config.turn_urls.clone(),
            secret,
            config.turn_ttl(),
        ))
    }

    /// The embedded relay's URLs (if it runs) followed by `--turn-url`s, all
    /// with credentials from `secret`; `None` when there are none.
    pub fn for_config(
        config: &Config,
        secret: TurnSecret,
        relay: Option<&TurnServer>,
    ) -> Option<Self> {
        let mut urls = relay.map(TurnServer::urls).unwrap_or_default();
        urls.extend(config.turn_urls.iter().cloned());
        (!urls.is_empty()).then(|| Self::new(urls, secret, config.turn_ttl()))
    }

    /// The URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The entry for `peer`'s `welcome`: every URL, username
    /// `EXPIRY:PEER` with EXPIRY = `now` + TTL, and its password.
    pub fn ice_server(&self, peer: &str, now: SystemTime) -> IceServer {
        let expiry = unix_secs(now).saturating_add(self.ttl.as_secs());
        let username = rest_username(expiry, peer);
        IceServer {
            urls: self.urls.clone(),
            credential: Some(credential(self.secret.as_bytes(), &username)),
            username: Some(username),
        }
    }
}

/// What one embedded relay needs.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// Address the UDP and TCP listeners and the relay sockets bind to.
    pub listen_ip: IpAddr,
    /// Port of both listeners; 0 picks a free one.
    pub port: u16,
    /// The relayed address given to clients and the host in the URLs.
    pub public_ip: IpAddr,
    /// The TURN REST secret.
    pub secret: TurnSecret,
    /// The longest a credential is issued for: expiries further ahead are
    /// refused.
    pub credential_lifetime: Duration,
    /// Which peers the relay exchanges packets with.
    pub peers: PeerRule,
    /// Bytes per second through one allocation.
    pub max_bandwidth: u64,
    /// Allocations one username may hold at once.
    pub max_allocations_per_user: usize,
    /// Allocations one client address may hold at once, over all usernames.
    pub max_allocations_per_ip: usize,
    /// Allocations the relay holds at most.
    pub max_allocations: usize,
    /// TURN-over-TCP connections the relay holds at most.
    pub max_tcp_connections: usize,
    /// Where the relay counts allocations, relayed bytes and refusals.
    pub metrics: TurnMetrics,
    /// TURN over TLS (`turns:`) as well, for networks that pass only TLS.
    pub tls: Option<TurnTls>,
}

/// TURN over TLS: a third listener whose connections, once the TLS
/// handshake is done, are served like TURN-over-TCP ones (same limits, same
/// allocations).
#[derive(Debug, Clone)]
pub struct TurnTls {
    /// Port on the listen address; 0 picks a free one.
    pub port: u16,
    /// The host name in the advertised `turns:` URL; the certificate must
    /// name it (browsers check it).
    pub host: String,
    /// The certificate (reloaded on SIGHUP, see [`crate::tls::CertStore`]).
    pub certs: Arc<CertStore>,
}

impl TurnConfig {
    /// A relay on `ip` (listening, relaying and advertised), on a free port,
    /// with `secret`, the default peer rule and the defaults of
    /// `parlor-server`: credential lifetime, bandwidth, per-credential and
    /// per-address caps, and the global caps of this process's [`FdBudget`].
    pub fn new(ip: IpAddr, secret: TurnSecret) -> Self {
        let budget = FdBudget::of_this_process();
        Self {
            listen_ip: ip,
            port: 0,
            public_ip: ip,
            secret,
            credential_lifetime: Duration::from_secs(DEFAULT_TURN_TTL_SECS),
            peers: PeerRule::default(),
            max_bandwidth: DEFAULT_TURN_MAX_BANDWIDTH,
            max_allocations_per_user: MAX_ALLOCATIONS_PER_USER,
            max_allocations_per_ip: DEFAULT_TURN_MAX_ALLOCATIONS_PER_IP,
            max_allocations: budget.allocations,
            max_tcp_connections: budget.tcp_connections,
            metrics: TurnMetrics::default(),
            tls: None,
        }
    }

    fn quotas(&self) -> Quotas {
        Quotas {
            per_user: self.max_allocations_per_user,
            per_ip: self.max_allocations_per_ip,
            total: self.max_allocations,
        }
    }
}

/// What is wrong with the address the relay advertises, for the warning at
/// start, or `None` when remote clients can reach it.
pub fn advertised_address_problem(listen_ip: IpAddr, public_ip: IpAddr) -> Option<String> {
    if public_ip.is_loopback() {
        return Some(format!(
            "the TURN relay advertises the loopback address {public_ip}, which no remote \
             client can reach: pass --public-ip with the address clients reach this server \
             at, and --turn-listen-ip 0.0.0.0 (or that interface's address) so the relay \
             listens there"
        ));
    }
    if listen_ip.is_loopback() {
        return Some(format!(
            "the TURN relay listens on the loopback address {listen_ip} but advertises \
             {public_ip}: remote clients' packets cannot reach it; pass --turn-listen-ip \
             0.0.0.0 (or the address of the interface that {public_ip} arrives on)"
        ));
    }
    if PeerRule::default().forbids(public_ip) {
        return Some(format!(
            "the TURN relay advertises {public_ip}, a private or special-purpose address \
             that clients outside its network cannot reach: pass --public-ip with the \
             server's public address (behind 1:1 NAT, the NAT's)"
        ));
    }
    None
}

/// Why the relay did not start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// A listener could not bind.
    #[error("cannot listen for TURN on {proto} {addr}: {source}")]
    Bind {
        /// `UDP` or `TCP`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Other socket errors.
    #[error("TURN listener: {0}")]
    Io(#[from] io::Error),
    /// The `turn` crate refused its configuration.
    #[error("TURN server: {0}")]
    Turn(#[from] turn::Error),
    /// `--turn-tls-port` without a certificate.
    #[error(
        "--turn-tls-port needs a certificate: --turn-tls-cert/--turn-tls-key or --tls-cert/--tls-key"
    )]
    TlsWithoutCertificate,
    /// `--turn-tls-port` without the host name to advertise.
    #[error(
        "--turn-tls-port needs --turn-tls-host, the name its certificate is for (browsers check it)"
    )]
    TlsWithoutHost,
    /// The TURN/TLS certificate did not load.
    #[error("TURN/TLS certificate: {0}")]
    Certificate(#[from] crate::tls::TlsError),
}

/// The `turns:` listener `config` asks for: `--turn-tls-port` with the
/// certificate of `--turn-tls-cert` (default: `--tls-cert`), reloaded on
/// SIGHUP.
fn turn_tls(config: &Config) -> Result<Option<TurnTls>, TurnError> {
    let Some(port) = config.turn_tls_port else {
        return Ok(None);
    };
    let (cert, key) = match (&config.turn_tls_cert, &config.turn_tls_key) {
        (Some(cert), Some(key)) => (cert.as_path(), key.as_path()),
        _ => config.tls_files().ok_or(TurnError::TlsWithoutCertificate)?,
    };
    let host = config
        .turn_tls_host
        .clone()
        .ok_or(TurnError::TlsWithoutHost)?;
    let certs = Arc::new(CertStore::open(cert, key)?);
    tokio::spawn(crate::tls::reload_on_sighup(Arc::clone(&certs)));
    Ok(Some(TurnTls { port, host, certs }))
}

/// Starts the embedded relay as `config` says, counting into `metrics`, or
/// returns `None` when it is off: `--no-turn`; a listen address of
/// 0.0.0.0/:: without `--public-ip` (there is no address to advertise;
/// logged); or the default port 3478 is taken (logged, so that several
/// servers can run on one machine). A port given with `--turn-port` that
/// cannot be bound is an error. Logs the descriptor budget, and warns when
/// the advertised address is useless to remote clients.
pub async fn start_embedded(
    config: &Config,
    secret: &TurnSecret,
    metrics: TurnMetrics,
) -> Result<Option<TurnServer>, TurnError> {
    if config.no_turn {
        return Ok(None);
    }
    let listen_ip = config.turn_listen_ip.unwrap_or(config.listen.ip());
    let public_ip = config.public_ip.unwrap_or(listen_ip);
    if public_ip.is_unspecified() {
        warn!(
            %listen_ip,
            "TURN relay off: listening on all interfaces, so pass --public-ip with the address \
             clients reach this server at (or --no-turn)"
        );
        return Ok(None);
    }
    if let Some(problem) = advertised_address_problem(listen_ip, public_ip) {
        warn!(%listen_ip, %public_ip, "{problem}");
    }
    let budget = FdBudget::of_this_process();
    let max_allocations = config.turn_max_allocations.unwrap_or(budget.allocations);
    info!(
        fd_limit = budget.limit,
        max_allocations,
        max_allocations_per_ip = config.turn_max_allocations_per_ip,
        max_tcp_connections = budget.tcp_connections,
        "TURN descriptor budget: a third of the file-descriptor limit"
    );
    if max_allocations > budget.allocations {
        warn!(
            max_allocations,
            fd_limit = budget.limit,
            "--turn-max-allocations is above what the file-descriptor limit leaves for TURN; \
             raise the limit (ulimit -n, LimitNOFILE=) or lower it"
        );
    }
    let turn = TurnConfig {
        listen_ip,
        port: config.turn_port.unwrap_or(DEFAULT_TURN_PORT),
        public_ip,
        secret: secret.clone(),
        credential_lifetime: config.turn_ttl(),
        peers: config.turn_peer_rule(),
        max_bandwidth: config.turn_max_bandwidth,
        max_allocations_per_user: MAX_ALLOCATIONS_PER_USER,
        max_allocations_per_ip: config.turn_max_allocations_per_ip,
        max_allocations,
        max_tcp_connections: budget.tcp_connections,
        metrics,
        tls: turn_tls(config)?,
    };
    match TurnServer::start(turn).await {
        Ok(server) => Ok(Some(server)),
        Err(err @ TurnError::Bind { .. }) if config.turn_port.is_none() => {
            warn!(%err, "TURN relay off: the default port is taken; pass --turn-port (0 picks a free one) or --no-turn");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// A running relay. Dropping it stops the listeners too; [`Self::close`]
/// also waits for the `turn` servers to wind down.
pub struct TurnServer {
    udp: Server,
    tcp: Server,
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
    public_ip: IpAddr,
    /// The `turns:` host name and the TLS listener's address.
    tls: Option<(String, SocketAddr)>,
    /// The accept loops (TCP, TLS).
    accept: JoinSet<()>,
    allocations: AllocationCounts,
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("udp_addr", &self.udp_addr)
            .field("tcp_addr", &self.tcp_addr)
            .field("public_ip", &self.public_ip)
            .finish_non_exhaustive()
    }
}

impl TurnServer {
    /// Binds the UDP and TCP listeners and starts relaying.
    pub async fn start(config: TurnConfig) -> Result<Self, TurnError> {
        let (udp_socket, tcp_listener) = bind(config.listen_ip, config.port).await?;
        let udp_addr = udp_socket.local_addr()?;
        let tcp_addr = tcp_listener.local_addr()?;
        let allocations = AllocationCounts::new(config.metrics.clone());
        let peers = Arc::new(config.peers.clone());

        let udp_conn: Arc<dyn Conn + Send + Sync> = Arc::new(udp_socket);
        let udp = new_server(&config, udp_conn, &allocations, &peers).await?;

        let (incoming_tx, incoming_rx) = mpsc::channel(TCP_READ_QUEUE);
        let mux = Arc::new(TcpMux {
            local: tcp_addr,
            incoming: tokio::sync::Mutex::new(incoming_rx),
            writers: Mutex::default(),
        });
        let tcp_conn: Arc<dyn Conn + Send + Sync> = Arc::clone(&mux) as _;
        let tcp = new_server(&config, tcp_conn, &allocations, &peers).await?;
        let limits = Arc::new(TcpLimits::new(
            config.max_tcp_connections,
            config.max_allocations_per_ip,
        ));
        let mut accept = JoinSet::new();
        let mut tls = None;
        if let Some(turn_tls) = &config.tls {
            let addr = SocketAddr::new(config.listen_ip, turn_tls.port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| TurnError::Bind {
                    proto: "TLS",
                    addr,
                    source,
                })?;
            let tls_addr = listener.local_addr()?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
                rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::clone(&turn_tls.certs) as _),
            ));
            accept.spawn(accept_loop(
                listener,
                Some(acceptor),
                Arc::clone(&mux),
                incoming_tx.clone(),
                Arc::clone(&limits),
                config.metrics.clone(),
            ));
            info!(tls = %tls_addr, host = %turn_tls.host, "TURN over TLS listening");
            tls = Some((turn_tls.host.clone(), tls_addr));
        }
        accept.spawn(accept_loop(
            tcp_listener,
            None,
            mux,
            incoming_tx,
            limits,
            config.metrics.clone(),
        ));

        info!(
            udp = %udp_addr,
            tcp = %tcp_addr,
            public_ip = %config.public_ip,
            allow_all_peers = config.peers.allows_all(),
            max_bandwidth = config.max_bandwidth,
            "TURN relay listening"
        );
        Ok(Self {
            udp,
            tcp,
            udp_addr,
            tcp_addr,
            public_ip: config.public_ip,
            tls,
            accept,
            allocations,
        })
    }

    /// The UDP listener's address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The TCP listener's address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// `stun:PUBLIC:PORT` (the relay answers STUN binding requests, which
    /// gives peers behind a NAT their server-reflexive candidates), then
    /// `turn:PUBLIC:PORT?transport=udp` and `...?transport=tcp`, and with
    /// TLS `turns:HOST:PORT?transport=tcp`.
    pub fn urls(&self) -> Vec<String> {
        let udp = SocketAddr::new(self.public_ip, self.udp_addr.port());
        let tcp = SocketAddr::new(self.public_ip, self.tcp_addr.port());
        let mut urls = vec![
            format!("stun:{udp}"),
            format!("turn:{udp}?transport=udp"),
            format!("turn:{tcp}?transport=tcp"),
        ];
        if let Some((host, addr)) = &self.tls {
            urls.push(format!("turns:{host}:{}?transport=tcp", addr.port()));
        }
        urls
    }

    /// The TURN/TLS listener's address, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|(_, addr)| *addr)
    }

    /// Allocations `username` holds now (UDP and TCP together).
    pub fn allocations_of(&self, username: &str) -> usize {
        self.allocations.of_user(username)
    }

    /// Allocations made from client address `ip` now, over all usernames.
    pub fn allocations_from(&self, ip: IpAddr) -> usize {
        self.allocations.of_ip(ip)
    }

    /// All allocations now.
    pub fn allocations(&self) -> usize {
        self.allocations.total()
    }

    /// Stops listening and closes every allocation.
    pub async fn close(mut self) {
        self.accept.abort_all();
        // Bounded: the crate's close waits for its read loops to notice.
        let closing = async {
            let _ = self.udp.close().await;
            let _ = self.tcp.close().await;
        };
        if tokio::time::timeout(Duration::from_secs(2), closing)
            .await
            .is_err()
        {
            debug!("TURN server close timed out");
        }
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        self.accept.abort_all();
    }
}

/// UDP and TCP listeners on `ip:port`; for port 0, one free port for both
/// when possible (one port to open in a firewall), else two.
async fn bind(ip: IpAddr, port: u16) -> Result<(UdpSocket, TcpListener), TurnError> {
    let udp = |port| async move {
        let addr = SocketAddr::new(ip, port);
        UdpSocket::bind(addr)
            .await
            .map_err(|source| TurnError::Bind {
                proto: "UDP",
                addr,
                source,
            })
    };
    let tcp = |port| async move {
        let addr = SocketAddr::new(ip, port);
        TcpListener::bind(addr)
            .await
            .map_err(|source| TurnError::Bind {
                proto: "TCP",
                addr,
                source,
            })
    };
    if port != 0 {
        return Ok((udp(port).await?, tcp(port).await?));
    }
    for _ in 0..SAME_PORT_ATTEMPTS {
        let socket = udp(0).await?;
        if let Ok(listener) = tcp(socket.local_addr()?.port()).await {
            return Ok((socket, listener));
        }
    }
    Ok((udp(0).await?, tcp(0).await?))
}

async fn new_server(
    config: &TurnConfig,
    listener: Arc<dyn Conn + Send + Sync>,
    allocations: &AllocationCounts,
    peers: &Arc<PeerRule>,
) -> Result<Server, TurnError> {
    let pending = PendingSlot::default();
    let relays = Relays {
        listen_ip: config.listen_ip,
        public_ip: config.public_ip,
        peers: Arc::clone(peers),
        max_bandwidth: config.max_bandwidth,
        pending: pending.clone(),
        metrics: config.metrics.clone(),
    };
    let conn = Arc::new(GuardedListener {
        inner: listener,
        guard: Guard {
            secret: config.secret.clone(),
            credential_lifetime: config.credential_lifetime,
            peers: Arc::clone(peers),
            quotas: config.quotas(),
            counts: allocations.clone(),
            pending,
            nonces: Nonces::default(),
            metrics: config.metrics.clone(),
        },
    });
    let server = Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn,
            relay_addr_generator: Box::new(relays),
        }],
        realm: REALM.to_owned(),
        auth_handler: Arc::new(RestAuth {
            secret: config.secret.clone(),
            credential_lifetime: config.credential_lifetime,
        }),
        // Zero means the crate's default (10 minutes).
        channel_bind_timeout: Duration::ZERO,
        alloc_close_notify: None,
    })
    .await?;
    Ok(server)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Checks TURN REST usernames and gives the crate the long-term key. The
/// guard has refused bad credentials with 401 already; this is the check
/// of last resort (the crate answers its refusals with 400).
struct RestAuth {
    secret: TurnSecret,
    credential_lifetime: Duration,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let now = unix_secs(SystemTime::now());
        if let Err(err) = check_username(username, now, self.credential_lifetime) {
            debug!(%src_addr, %err, "TURN credential refused");
            return Err(turn::Error::Other(err.to_string()));
        }
        // A wrong password makes the crate's MESSAGE-INTEGRITY check fail.
        let password = credential(self.secret.as_bytes(), username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// Hands the crate filtered, rate-limited, counted relay sockets.
struct Relays {
    listen_ip: IpAddr,
    public_ip: IpAddr,
    peers: Arc<PeerRule>,
    max_bandwidth: u64,
    /// The quota slot the guard took for the Allocate being handled.
    pending: PendingSlot,
    metrics: TurnMetrics,
}

#[async_trait]
impl RelayAddressGenerator for Relays {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.public_ip.is_ipv4() {
            return Err(turn::Error::Other(
                "requested address family is not relayed".into(),
            ));
        }
        // Every Allocate that reaches this point passed the guard, which
        // took a slot for it (or answered 486).
        let slot = self
            .pending
            .take()
            .ok_or_else(|| turn::Error::Other("allocation without a quota slot".into()))?;
        let socket = UdpSocket::bind(SocketAddr::new(self.listen_ip, requested_port)).await?;
        let mut relay_addr = socket.local_addr()?;
        relay_addr.set_ip(self.public_ip);
        debug!(%relay_addr, "TURN allocation");
        let burst = self.max_bandwidth.saturating_mul(BANDWIDTH_BURST_SECS);
        let conn = RelayConn {
            socket,
            peers: Arc::clone(&self.peers),
            bucket: Mutex::new(TokenBucket::per_second(
                self.max_bandwidth,
                burst,
                Instant::now(),
            )),
            slot: Mutex::new(Some(slot)),
            metrics: self.metrics.clone(),
        };
        Ok((Arc::new(conn), relay_addr))
    }
}

fn not_supported() -> webrtc_util::Error {
    io::Error::new(io::ErrorKind::Unsupported, "not used by the TURN server").into()
}

/// A relay socket that refuses forbidden peers, drops packets over the
/// bandwidth cap, counts what it relays, and holds its allocation's quota
/// slot.
struct RelayConn {
    socket: UdpSocket,
    peers: Arc<PeerRule>,
    bucket: Mutex<TokenBucket>,
    slot: Mutex<Option<AllocationSlot>>,
    metrics: TurnMetrics,
}

impl RelayConn {
    fn allowed(&self, ip: IpAddr) -> bool {
        !self.peers.forbids(ip)
    }

    fn within_bandwidth(&self, bytes: usize) -> bool {
        lock(&self.bucket).try_take_n(bytes as u64, Instant::now())
    }
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(not_supported())
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(not_supported())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if self.allowed(from.ip()) && self.within_bandwidth(n) {
                self.metrics.relayed_from_peer(n);
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(not_supported())
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.allowed(target.ip()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("relaying to {} is not allowed", target.ip()),
            )
            .into());
        }
        if !self.within_bandwidth(buf.len()) {
            // Dropped, as on a congested link; the sender's congestion
            // control slows down.
            return Ok(buf.len());
        }
        let sent = self.socket.send_to(buf, target).await?;
        self.metrics.relayed_to_peer(sent);
        Ok(sent)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        lock(&self.slot).take();
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

/// Length of the message starting with `head` and the bytes it takes on a
/// TURN-over-TCP stream, or `None` if it is neither STUN nor ChannelData.
/// STUN: a 20-byte header plus the length field (a multiple of 4).
/// ChannelData: 4 bytes plus the length field, padded to a multiple of 4 on
/// a stream (RFC 5766 §11.5).
pub fn frame_len(head: [u8; 4]) -> Option<(usize, usize)> {
    let body = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] >> 6 {
        0b00 => Some((20 + body, 20 + body)),
        0b01 => Some((4 + body, (4 + body).next_multiple_of(4))),
        _ => None,
    }
}

/// Reads one message (without ChannelData padding); `None` at a clean end
/// of the stream.
async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 4];
    match reader.read_exact(&mut head).await {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let (len, on_wire) = frame_len(head).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "neither STUN nor ChannelData")
    })?;
    let mut frame = vec![0u8; on_wire];
    frame[..4].copy_from_slice(&head);
    reader.read_exact(&mut frame[4..]).await?;
    frame.truncate(len);
    Ok(Some(frame))
}

/// All TURN-over-TCP connections as one packet socket for the `turn` crate:
/// `recv_from` yields the next message from any connection with that
/// connection's address, `send_to` queues a message on the connection with
/// that address.
struct TcpMux {
    local: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    writers: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
}

#[async_trait]
impl Conn for TcpMux {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(not_supported())
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(not_supported())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut incoming = self.incoming.lock().await;
        loop {
            let (frame, from) = incoming.recv().await.ok_or_else(|| {
                webrtc_util::Error::from(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "TURN TCP listener closed",
                ))
            })?;
            // The crate reads into an MTU-sized buffer; a bigger message
            // cannot be a relayed packet or a TURN request it would accept.
            if let Some(dst) = buf.get_mut(..frame.len()) {
                dst.copy_from_slice(&frame);
                return Ok((frame.len(), from));
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(not_supported())
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let writer = lock(&self.writers).get(&target).cloned();
        let Some(writer) = writer else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no TCP connection").into());
        };
        match writer.try_send(buf.to_vec()) {
            // A full queue drops the message, as a UDP socket would.
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(buf.len()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(io::Error::new(io::ErrorKind::NotConnected, "TCP connection closed").into())
            }
        }
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Nothing: the crate closes the listener of an allocation when that
    /// allocation ends, which must not end the other connections. The
    /// listener stops with [`TurnServer`].
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

/// How many TURN-over-TCP and TURN/TLS connections the relay holds (the
/// two listeners share these).
#[derive(Debug)]
struct TcpLimits {
    /// In all.
    total: Arc<Semaphore>,
    /// From one client address. A TCP connection carries at most one
    /// allocation, so this is the per-address allocation cap: one address
    /// cannot hold the descriptors of the server-wide budget open with
    /// connections that never allocate.
    max_per_ip: usize,
    per_ip: Arc<TcpPerIp>,
}

impl TcpLimits {
    fn new(total: usize, max_per_ip: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            max_per_ip,
            per_ip: Arc::default(),
        }
    }
}

/// Open TURN-over-TCP connections per client address.
#[derive(Debug, Default)]
struct TcpPerIp(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection of [`TcpPerIp`]; uncounted when dropped.
struct TcpSlot {
    counts: Arc<TcpPerIp>,
    ip: IpAddr,
}

impl TcpPerIp {
    /// A slot for `ip`, or `None` when it already holds `max` connections.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<TcpSlot> {
        let ip = crate::cidr::address_key(ip);
        let mut counts = lock(&self.0);
        let count = counts.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(TcpSlot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts.0);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Accepts TURN-over-TCP connections (TURN/TLS with `tls`, the handshake
/// bounded by [`TCP_FIRST_MESSAGE_TIMEOUT`]) within `limits` until aborted;
/// aborting drops the join set, which ends every connection.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mux: Arc<TcpMux>,
    incoming: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    limits: Arc<TcpLimits>,
    metrics: TurnMetrics,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // E.g. out of file descriptors: back off a little.
                        debug!(%err, "TURN TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(slot) = limits.per_ip.take(peer.ip(), limits.max_per_ip) else {
                    debug!(%peer, "TURN TCP connection refused: too many from this address");
                    metrics.refused(TurnRefusal::TcpConnectionsAddress);
                    continue;
                };
                let Ok(permit) = Arc::clone(&limits.total).try_acquire_owned() else {
                    debug!(%peer, "TURN TCP connection refused: too many");
                    metrics.refused(TurnRefusal::TcpConnections);
                    continue;
                };
                // Relayed data is latency-sensitive; never wait for an ACK.
                if let Err(err) = stream.set_nodelay(true) {
                    debug!(%peer, %err, "TCP_NODELAY not set");
                }
                let (mux, incoming, counted) = (Arc::clone(&mux), incoming.clone(), (permit, slot));
                match tls.clone() {
                    None => connections.spawn(serve_tcp(stream, peer, mux, incoming, counted)),
                    Some(acceptor) => connections.spawn(async move {
                        match tokio::time::timeout(TCP_FIRST_MESSAGE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => serve_tcp(stream, peer, mux, incoming, counted).await,
                            Ok(Err(err)) => debug!(%peer, %err, "TURN/TLS handshake failed"),
                            Err(_) => debug!(%peer, "TURN/TLS handshake timed out"),
                        }
                    }),
                };
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One TURN-over-TCP (or TLS) connection: frames in to the mux, queued
/// frames out.
async fn serve_tcp<S>(
    stream: S,
    peer: SocketAddr,
    mux: Arc<TcpMux>,
    incoming: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    _counted: (OwnedSemaphorePermit, TcpSlot),
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_WRITE_QUEUE);
    lock(&mux.writers).insert(peer, tx);

    let read = async {
        let mut timeout = TCP_FIRST_MESSAGE_TIMEOUT;
        loop {
            let frame = match tokio::time::timeout(timeout, read_frame(&mut reader)).await {
                Err(_) => return "idle".to_owned(),
                Ok(Err(err)) => return err.to_string(),
                Ok(Ok(None)) => return "closed".to_owned(),
                Ok(Ok(Some(frame))) => frame,
            };
            timeout = TCP_IDLE_TIMEOUT;
            if incoming.send((frame, peer)).await.is_err() {
                return "server stopped".to_owned();
            }
        }
    };
    let write = async {
        while let Some(frame) = rx.recv().await {
            let padding = if frame.first().is_some_and(|b| b >> 6 == 0b01) {
                frame.len().next_multiple_of(4) - frame.len()
            } else {
                0
            };
            writer.write_all(&frame).await?;
            writer.write_all(&[0u8; 3][..padding]).await?;
        }
        Ok::<(), io::Error>(())
    };
    let why = tokio::select! {
        why = read => why,
        written = write => written.err().map_or_else(|| "queue closed".to_owned(), |err| err.to_string()),
    };
    debug!(%peer, why, "TURN TCP connection ended");
    lock(&mux.writers).remove(&peer);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Computed independently with
    /// `printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac 'north wind' -binary | base64`.
    #[test]
    fn credential_matches_coturn_rest_vector() {
        assert_eq!(
            credential(b"north wind", "1700000000:alice"),
            "iNikfYHt0MRRt7VOvEs3RgXDzQo="
        );
    }

    #[test]
    fn credential_agrees_with_the_turn_crates_rest_handler() {
        // The crate's own REST handler (HMAC from `ring`) takes bare-expiry
        // usernames; its long-term key must equal ours.
        let username = (unix_secs(SystemTime::now()) + 3600).to_string();
        let theirs = turn::auth::LongTermAuthHandler::new("s3cret".into())
            .auth_handle(&username, REALM, "127.0.0.1:9".parse().unwrap())
            .unwrap();
        let ours = generate_auth_key(&username, REALM, &credential(b"s3cret", &username));
        assert_eq!(theirs, ours);
    }

    #[test]
    fn advert_gives_each_peer_its_own_expiring_username() {
        let advert = TurnAdvert::new(
            vec!["turn:203.0.113.7:3478?transport=udp".into()],
            "k".parse().unwrap(),
            Duration::from_secs(60),
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let server = advert.ice_server("p1", now);
        assert_eq!(server.username.as_deref(), Some("1060:p1"));
        assert_eq!(server.credential, Some(credential(b"k", "1060:p1")));
    }

    #[test]
    fn usernames_must_expire_in_the_future_but_not_too_far() {
        let ttl = Duration::from_secs(60);
        assert_eq!(check_username("1060:p1", 1_059, ttl), Ok(()));
        assert_eq!(check_username("1060", 1_000, ttl), Ok(()));
        assert_eq!(
            check_username("1060:p1", 1_060, ttl),
            Err(CredentialError::Expired)
        );
        assert_eq!(
            check_username("p1:1060", 0, ttl),
            Err(CredentialError::Malformed)
        );
        assert_eq!(
            check_username("99999999999999999999999:p1", 0, ttl),
            Err(CredentialError::Malformed)
        );
        // Expiry = now + TTL + slack is the latest accepted.
        let slack = CREDENTIAL_EXPIRY_SLACK.as_secs();
        assert_eq!(
            check_username(&format!("{}:p1", 1_000 + 60 + slack), 1_000, ttl),
            Ok(())
        );
        assert_eq!(
            check_username(&format!("{}:p1", 1_001 + 60 + slack), 1_000, ttl),
            Err(CredentialError::TooFarAhead)
        );
        // Centuries ahead.
        assert_eq!(
            check_username("99999999999:p1", 1_000, ttl),
            Err(CredentialError::TooFarAhead)
        );
    }

    #[test]
    fn an_advertised_address_remote_clients_cannot_use_is_named() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let loopback = advertised_address_problem(ip("127.0.0.1"), ip("127.0.0.1")).unwrap();
        assert!(loopback.contains("--public-ip"), "{loopback}");
        let private = advertised_address_problem(ip("10.0.0.5"), ip("10.0.0.5")).unwrap();
        assert!(private.contains("--public-ip"), "{private}");
        let listen = advertised_address_problem(ip("127.0.0.1"), ip("8.8.8.8")).unwrap();
        assert!(listen.contains("--turn-listen-ip"), "{listen}");
        assert_eq!(
            advertised_address_problem(ip("0.0.0.0"), ip("8.8.8.8")),
            None
        );
        assert_eq!(
            advertised_address_problem(ip("8.8.8.8"), ip("8.8.8.8")),
            None
        );
    }

    #[test]
    fn stream_framing_of_stun_and_channel_data() {
        // STUN: header 20 + length 8.
        assert_eq!(frame_len([0x00, 0x03, 0x00, 0x08]), Some((28, 28)));
        // ChannelData 0x4000 with 5 bytes: padded to 12 on the stream.
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x05]), Some((9, 12)));
        assert_eq!(frame_len([0x80, 0, 0, 0]), None);
    }

    #[tokio::test]
    async fn padded_channel_data_is_read_without_padding() {
        let bytes = [
            0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0, // ChannelData + pad
            0x40, 0x01, 0x00, 0x04, 9, 9, 9, 9, // no padding needed
        ];
        let mut reader = &bytes[..];
        let first = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(first, [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5]);
        let second = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(second, [0x40, 0x01, 0x00, 0x04, 9, 9, 9, 9]);
        assert!(read_frame(&mut reader).await.unwrap().is_none());
    }
}
