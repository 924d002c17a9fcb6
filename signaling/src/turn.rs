//! The embedded TURN relay: webrtc-rs's `turn` server on UDP and on TCP,
//! with TURN REST credentials, no relaying into private networks, and caps.
//!
//! - Credentials ([`credential`], [`TurnAdvert`]): the TURN REST scheme that
//!   coturn checks with `use-auth-secret`. The username is `EXPIRY:PEERID`
//!   (EXPIRY in unix seconds), the password `base64(HMAC-SHA1(secret,
//!   username))`. The signaling server hands a fresh pair to every peer in its
//!   `welcome`; the relay ([`TurnServer`]) recomputes the password from the
//!   username, so it keeps no per-user state, and an external coturn with the
//!   same secret accepts the same credentials.
//! - The address rule ([`is_forbidden_peer`]): unless `--turn-allow-private`,
//!   the relay neither sends to nor accepts from loopback, private (RFC 1918,
//!   fc00::/7), link-local, unspecified, multicast or broadcast addresses, so
//!   a credential cannot be used to reach the server's own network. The rule
//!   is enforced twice: CreatePermission and ChannelBind requests for such
//!   a peer are answered `403 Forbidden` (and Send indications dropped) before
//!   the `turn` crate sees them ([`GuardedListener`]), and every relay socket
//!   the crate gets from our [`RelayAddressGenerator`] refuses them again
//!   ([`RelayConn`]), since the crate has no peer-address hook of its own.
//!   198.18.0.0/15 (benchmarking) is deliberately allowed: network-namespace
//!   tests use it as the public internet.
//! - Caps: [`MAX_ALLOCATIONS_PER_USER`] allocations per credential, and a
//!   token bucket of `--turn-max-bandwidth` bytes per second on each relay
//!   socket (excess packets are dropped, as a congested link would).
//! - Transports: one `turn::server::Server` reads a UDP socket; a second one
//!   reads [`TcpMux`], which frames STUN and ChannelData messages over every
//!   accepted TCP stream (RFC 5766 §11.5, ChannelData padded to 4 bytes) and
//!   looks to the crate like one packet socket keyed by the client's address.
//!
//! Why two `Server`s instead of one with two listeners: the crate does not
//! tell the relay generator who asked for an allocation. Each `Server`
//! handles its listener's messages one at a time (authentication, then the
//! relay socket), so the username its [`AuthHandler`] saw last is the one the
//! allocation belongs to. With two listeners in one `Server` the UDP and TCP
//! loops would interleave on one shared handler.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use parlor_protocol::IceServer;
use sha1::Sha1;
use stun::attributes::ATTR_XOR_PEER_ADDRESS;
use stun::error_code::{CODE_FORBIDDEN, ErrorCodeAttribute};
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, Getter as _, METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION, METHOD_SEND, Message, MessageType,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};
use turn::auth::{AuthHandler, generate_auth_key};
use turn::proto::peeraddr::PeerAddress;
use turn::relay::RelayAddressGenerator;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;

use crate::config::{Config, DEFAULT_TURN_PORT};
use crate::limit::TokenBucket;

/// The realm of TURN's long-term credentials. Clients learn it from the
/// server's first 401 answer; the password does not depend on it.
pub const REALM: &str = "parlor";

/// Bytes of the shared secret made up at start when `--turn-secret` is not
/// given: 256 bits, far beyond guessing.
pub const RANDOM_SECRET_BYTES: usize = 32;

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

/// TURN-over-TCP connections held at once. Each costs two tasks and two
/// bounded queues; 1024 is far above what a Parlor deployment relays over
/// TCP (clients on networks that block UDP) and bounds what idle sockets cost.
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

/// Why the relay refuses a username, or `Ok` if its expiry is after `now`.
/// Accepts `EXPIRY:ID` and a bare `EXPIRY`, like coturn.
pub fn check_username(username: &str, now_unix_secs: u64) -> Result<(), &'static str> {
    let expiry = username
        .split_once(':')
        .map_or(username, |(expiry, _)| expiry);
    let expiry: u64 = expiry
        .parse()
        .map_err(|_| "username is not of the form EXPIRY:ID")?;
    if expiry <= now_unix_secs {
        return Err("credential expired");
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

/// Whether the relay must refuse to exchange packets with `ip` (unless
/// `--turn-allow-private`): loopback, private (RFC 1918, fc00::/7),
/// link-local, unspecified (and the rest of 0.0.0.0/8), multicast and
/// broadcast, also when written as IPv4-mapped IPv6. Everything else is
/// allowed, notably 198.18.0.0/15, which the project's network-namespace
/// tests use as the "public internet".
pub fn is_forbidden_peer(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || first & 0xfe00 == 0xfc00 // unique local, fc00::/7
                    || first & 0xffc0 == 0xfe80 // link-local, fe80::/10
            }
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.octets()[0] == 0 // 0.0.0.0/8, "this network"
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
    /// Relay to and from private addresses too (loopback tests).
    pub allow_private: bool,
    /// Bytes per second through one allocation.
    pub max_bandwidth: u64,
    /// Allocations one username may hold at once.
    pub max_allocations_per_user: usize,
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
}

/// Starts the embedded relay as `config` says, or returns `None` when it is
/// off: `--no-turn`; a listen address of 0.0.0.0/:: without `--public-ip`
/// (there is no address to advertise; logged); or the default port 3478 is
/// taken (logged, so that several servers can run on one machine). A port
/// given with `--turn-port` that cannot be bound is an error.
pub async fn start_embedded(
    config: &Config,
    secret: &TurnSecret,
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
    let turn = TurnConfig {
        listen_ip,
        port: config.turn_port.unwrap_or(DEFAULT_TURN_PORT),
        public_ip,
        secret: secret.clone(),
        allow_private: config.turn_allow_private,
        max_bandwidth: config.turn_max_bandwidth,
        max_allocations_per_user: MAX_ALLOCATIONS_PER_USER,
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
    accept: JoinHandle<()>,
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
        let allocations = AllocationCounts::default();

        let udp_conn: Arc<dyn Conn + Send + Sync> = Arc::new(udp_socket);
        let udp = new_server(&config, udp_conn, &allocations).await?;

        let (incoming_tx, incoming_rx) = mpsc::channel(TCP_READ_QUEUE);
        let mux = Arc::new(TcpMux {
            local: tcp_addr,
            incoming: tokio::sync::Mutex::new(incoming_rx),
            writers: Mutex::default(),
        });
        let tcp_conn: Arc<dyn Conn + Send + Sync> = Arc::clone(&mux) as _;
        let tcp = new_server(&config, tcp_conn, &allocations).await?;
        let accept = tokio::spawn(accept_loop(tcp_listener, mux, incoming_tx));

        info!(
            udp = %udp_addr,
            tcp = %tcp_addr,
            public_ip = %config.public_ip,
            allow_private = config.allow_private,
            max_bandwidth = config.max_bandwidth,
            "TURN relay listening"
        );
        Ok(Self {
            udp,
            tcp,
            udp_addr,
            tcp_addr,
            public_ip: config.public_ip,
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
    /// `turn:PUBLIC:PORT?transport=udp` and `...?transport=tcp`.
    pub fn urls(&self) -> Vec<String> {
        let udp = SocketAddr::new(self.public_ip, self.udp_addr.port());
        let tcp = SocketAddr::new(self.public_ip, self.tcp_addr.port());
        vec![
            format!("stun:{udp}"),
            format!("turn:{udp}?transport=udp"),
            format!("turn:{tcp}?transport=tcp"),
        ]
    }

    /// Allocations `username` holds now (UDP and TCP together).
    pub fn allocations_of(&self, username: &str) -> usize {
        self.allocations.held(username)
    }

    /// Stops listening and closes every allocation.
    pub async fn close(self) {
        self.accept.abort();
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
        self.accept.abort();
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
) -> Result<Server, TurnError> {
    let current_user = CurrentUser::default();
    let relays = Relays {
        listen_ip: config.listen_ip,
        public_ip: config.public_ip,
        allow_private: config.allow_private,
        max_bandwidth: config.max_bandwidth,
        max_allocations_per_user: config.max_allocations_per_user,
        current_user: current_user.clone(),
        allocations: allocations.clone(),
    };
    let conn = Arc::new(GuardedListener {
        inner: listener,
        allow_private: config.allow_private,
    });
    let server = Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn,
            relay_addr_generator: Box::new(relays),
        }],
        realm: REALM.to_owned(),
        auth_handler: Arc::new(RestAuth {
            secret: config.secret.clone(),
            current_user,
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

/// The username the listener's server authenticated last: the owner of the
/// allocation being created (see the module comment).
#[derive(Debug, Clone, Default)]
struct CurrentUser(Arc<Mutex<Option<String>>>);

impl CurrentUser {
    fn set(&self, username: &str) {
        *lock(&self.0) = Some(username.to_owned());
    }

    fn get(&self) -> Option<String> {
        lock(&self.0).clone()
    }
}

/// Checks TURN REST usernames and gives the crate the long-term key.
struct RestAuth {
    secret: TurnSecret,
    current_user: CurrentUser,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        if let Err(why) = check_username(username, unix_secs(SystemTime::now())) {
            debug!(%src_addr, why, "TURN credential refused");
            return Err(turn::Error::Other(why.to_owned()));
        }
        self.current_user.set(username);
        // A wrong password makes the crate's MESSAGE-INTEGRITY check fail.
        let password = credential(self.secret.as_bytes(), username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// Allocations per username, across both listeners.
#[derive(Debug, Clone, Default)]
struct AllocationCounts(Arc<Mutex<HashMap<String, usize>>>);

impl AllocationCounts {
    /// Counts one more allocation of `username`, unless it holds `max`.
    fn acquire(&self, username: &str, max: usize) -> Option<AllocationSlot> {
        let mut counts = lock(&self.0);
        let held = counts.entry(username.to_owned()).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(AllocationSlot {
            counts: self.clone(),
            username: username.to_owned(),
        })
    }

    fn held(&self, username: &str) -> usize {
        lock(&self.0).get(username).copied().unwrap_or(0)
    }
}

/// One counted allocation; uncounted when dropped.
#[derive(Debug)]
struct AllocationSlot {
    counts: AllocationCounts,
    username: String,
}

impl Drop for AllocationSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts.0);
        if let Some(held) = counts.get_mut(&self.username) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.username);
            }
        }
    }
}

/// Hands the crate filtered, rate-limited, counted relay sockets.
struct Relays {
    listen_ip: IpAddr,
    public_ip: IpAddr,
    allow_private: bool,
    max_bandwidth: u64,
    max_allocations_per_user: usize,
    current_user: CurrentUser,
    allocations: AllocationCounts,
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
        let username = self
            .current_user
            .get()
            .ok_or_else(|| turn::Error::Other("allocation without a user".into()))?;
        let Some(slot) = self
            .allocations
            .acquire(&username, self.max_allocations_per_user)
        else {
            warn!(
                username,
                max = self.max_allocations_per_user,
                "TURN allocation refused: too many for one credential"
            );
            return Err(turn::Error::Other("too many allocations".into()));
        };
        let socket = UdpSocket::bind(SocketAddr::new(self.listen_ip, requested_port)).await?;
        let mut relay_addr = socket.local_addr()?;
        relay_addr.set_ip(self.public_ip);
        debug!(username, %relay_addr, "TURN allocation");
        let burst = self.max_bandwidth.saturating_mul(BANDWIDTH_BURST_SECS);
        let conn = RelayConn {
            socket,
            allow_private: self.allow_private,
            bucket: Mutex::new(TokenBucket::per_second(
                self.max_bandwidth,
                burst,
                Instant::now(),
            )),
            slot: Mutex::new(Some(slot)),
        };
        Ok((Arc::new(conn), relay_addr))
    }
}

fn not_supported() -> webrtc_util::Error {
    io::Error::new(io::ErrorKind::Unsupported, "not used by the TURN server").into()
}

/// A relay socket that refuses forbidden peers, drops packets over the
/// bandwidth cap, and holds its allocation's slot in the per-user count.
struct RelayConn {
    socket: UdpSocket,
    allow_private: bool,
    bucket: Mutex<TokenBucket>,
    slot: Mutex<Option<AllocationSlot>>,
}

impl RelayConn {
    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow_private || !is_forbidden_peer(ip)
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
        Ok(self.socket.send_to(buf, target).await?)
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

/// What [`GuardedListener`] does with a message from a client.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Hand it to the `turn` server.
    Pass,
    /// Drop it silently (an indication).
    Drop,
    /// Answer with these bytes instead (a 403 error response).
    Refuse(Vec<u8>),
}

/// Looks at a client message before the `turn` server does: a
/// CreatePermission or ChannelBind request naming a forbidden peer gets
/// `403 Forbidden`, a Send indication to one is dropped.
fn inspect(packet: &[u8], allow_private: bool) -> Verdict {
    if allow_private || !stun::message::is_message(packet) {
        return Verdict::Pass;
    }
    let mut msg = Message {
        raw: packet.to_vec(),
        ..Message::default()
    };
    if msg.decode().is_err() {
        return Verdict::Pass; // the server answers malformed messages itself
    }
    let method = msg.typ.method;
    let request = msg.typ.class == CLASS_REQUEST
        && (method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND);
    let indication = msg.typ.class == CLASS_INDICATION && method == METHOD_SEND;
    if !(request || indication) {
        return Verdict::Pass;
    }
    let forbidden = msg
        .attributes
        .0
        .iter()
        .filter(|attr| attr.typ == ATTR_XOR_PEER_ADDRESS)
        .filter_map(|attr| {
            let single = Message {
                transaction_id: msg.transaction_id,
                attributes: stun::attributes::Attributes(vec![attr.clone()]),
                ..Message::default()
            };
            let mut peer = PeerAddress::default();
            peer.get_from(&single).ok().map(|()| peer.ip)
        })
        .find(|ip| is_forbidden_peer(*ip));
    let Some(ip) = forbidden else {
        return Verdict::Pass;
    };
    if indication {
        return Verdict::Drop;
    }
    debug!(%ip, "TURN permission refused: private address");
    let mut response = Message::new();
    let built = response.build(&[
        Box::new(Message {
            transaction_id: msg.transaction_id,
            ..Message::default()
        }),
        Box::new(MessageType::new(method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code: CODE_FORBIDDEN,
            reason: b"peer address not allowed".to_vec(),
        }),
    ]);
    match built {
        Ok(()) => Verdict::Refuse(response.raw),
        Err(_) => Verdict::Drop,
    }
}

/// A listener socket that applies [`inspect`] to what clients send.
struct GuardedListener {
    inner: Arc<dyn Conn + Send + Sync>,
    allow_private: bool,
}

#[async_trait]
impl Conn for GuardedListener {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.inner.recv(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            match inspect(&buf[..n], self.allow_private) {
                Verdict::Pass => return Ok((n, from)),
                Verdict::Drop => {}
                Verdict::Refuse(response) => {
                    let _ = self.inner.send_to(&response, from).await;
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
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

/// Accepts TURN-over-TCP connections (at most [`MAX_TCP_CONNECTIONS`]) until
/// aborted; aborting drops the join set, which ends every connection.
async fn accept_loop(
    listener: TcpListener,
    mux: Arc<TcpMux>,
    incoming: mpsc::Sender<(Vec<u8>, SocketAddr)>,
) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
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
                let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                    debug!(%peer, "TURN TCP connection refused: too many");
                    continue;
                };
                connections.spawn(serve_tcp(stream, peer, Arc::clone(&mux), incoming.clone(), permit));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One TURN-over-TCP connection: frames in to the mux, queued frames out.
async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    mux: Arc<TcpMux>,
    incoming: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
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
        assert_eq!(check_username("1060:p1", 1_059), Ok(()));
        assert_eq!(check_username("1060:p1", 1_060), Err("credential expired"));
        assert!(check_username("p1:1060", 0).is_err());
        assert_eq!(check_username("1060", 0), Ok(()));
    }

    #[test]
    fn private_addresses_are_forbidden_but_the_benchmark_range_is_not() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_forbidden_peer(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "198.18.0.1",
            "198.19.255.254",
            "8.8.8.8",
            "172.32.0.1",
            "192.0.2.2",
            "2001:db8::1",
            "::ffff:198.18.0.1",
        ] {
            assert!(!is_forbidden_peer(ip.parse().unwrap()), "{ip}");
        }
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

    #[test]
    fn allocation_slots_are_counted_per_user_and_released() {
        let counts = AllocationCounts::default();
        let a = counts.acquire("u", 2).unwrap();
        let _b = counts.acquire("u", 2).unwrap();
        assert!(counts.acquire("u", 2).is_none());
        assert!(counts.acquire("v", 2).is_some());
        drop(a);
        assert_eq!(counts.held("u"), 1);
        assert!(counts.acquire("u", 2).is_some());
    }
}
