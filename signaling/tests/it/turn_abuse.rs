//! The embedded TURN relay against a hostile client speaking hand-built STUN
//! (over UDP and TCP): every address of the deny list refused with 403 and
//! nothing reaching a probe; 401 for bad, expired and too-long credentials;
//! 486 past the quotas per credential, per address and for the server; and
//! a flood from one address against the real `parlor-server` under a
//! 256-descriptor limit that leaves `/healthz` and signaling working.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parlor_protocol::{ClientMessage, IceServer, ServerMessage};
use parlor_signaling::TurnServer;
use parlor_signaling::cidr::{Cidr, DEFAULT_DENIED_PEERS};
use parlor_signaling::metrics::{Metrics, TurnMetrics, TurnRefusal};
use parlor_signaling::rooms::RoomCounts;
use parlor_signaling::turn::{PeerRule, TurnConfig, TurnTls, credential, rest_username};
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter as _,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND,
    Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

use crate::support::{TestServer, http_get, listening_addr, new_room, within};
use crate::turn::receives_nothing;

const SECRET: &str = "abuse secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A username expiring in an hour, and its password under `secret`.
fn credential_for(id: &str, secret: &str) -> (String, String) {
    let username = rest_username(now() + 3600, id);
    let password = credential(secret.as_bytes(), &username);
    (username, password)
}

/// A relay on 127.0.0.1 with `config` changes applied to the defaults.
async fn relay(change: impl FnOnce(&mut TurnConfig)) -> TurnServer {
    let mut config = TurnConfig::new("127.0.0.1".parse().unwrap(), SECRET.parse().unwrap());
    change(&mut config);
    TurnServer::start(config).await.unwrap()
}

/// A byte stream a [`StunClient`] can speak over (TCP or TLS).
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// The transport of a [`StunClient`].
enum Io {
    Udp(UdpSocket),
    Stream(Box<dyn Stream>),
}

/// A minimal TURN client: hand-built requests with long-term credentials,
/// one at a time, each answer awaited (bounded).
struct StunClient {
    io: Io,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

/// What a request got: the response's class and, for an error, its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Success,
    Error(u16),
}

impl StunClient {
    async fn udp(server: SocketAddr, local_ip: &str, username: &str, password: &str) -> Self {
        let socket = UdpSocket::bind((local_ip, 0)).await.unwrap();
        Self::new(Io::Udp(socket), server, username, password)
    }

    async fn tcp(server: SocketAddr, username: &str, password: &str) -> Self {
        let stream = within("TCP connect", TcpStream::connect(server))
            .await
            .unwrap();
        Self::new(Io::Stream(Box::new(stream)), server, username, password)
    }

    /// Over TLS to `server`, trusting only `root` for `host`.
    async fn tls(
        server: SocketAddr,
        host: &str,
        root: rustls::pki_types::CertificateDer<'static>,
        username: &str,
        password: &str,
    ) -> Result<Self, std::io::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = within("TCP connect", TcpStream::connect(server))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let stream = within("TLS handshake", connector.connect(name, tcp)).await?;
        Ok(Self::new(
            Io::Stream(Box::new(stream)),
            server,
            username,
            password,
        ))
    }

    fn new(io: Io, server: SocketAddr, username: &str, password: &str) -> Self {
        Self {
            io,
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            nonce: String::new(),
        }
    }

    /// Sends `msg` and returns the response with its transaction id, or
    /// `None` when none comes within two seconds (or the TCP stream ends).
    async fn exchange(&mut self, msg: &Message) -> Option<Message> {
        self.send(&msg.raw).await;
        let wait = async {
            loop {
                let raw = self.read().await?;
                let mut reply = Message {
                    raw,
                    ..Message::default()
                };
                if reply.decode().is_ok() && reply.transaction_id == msg.transaction_id {
                    return Some(reply);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(2), wait)
            .await
            .ok()
            .flatten()
    }

    async fn send(&mut self, raw: &[u8]) {
        match &mut self.io {
            Io::Udp(socket) => {
                socket.send_to(raw, self.server).await.unwrap();
            }
            Io::Stream(stream) => {
                // A refused connection may be closed already; the answer
                // (none) tells.
                let _ = stream.write_all(raw).await;
            }
        }
    }

    /// One STUN message from the server.
    async fn read(&mut self) -> Option<Vec<u8>> {
        match &mut self.io {
            Io::Udp(socket) => {
                let mut buf = vec![0u8; 1500];
                let (n, _) = socket.recv_from(&mut buf).await.ok()?;
                buf.truncate(n);
                Some(buf)
            }
            Io::Stream(stream) => {
                let mut head = [0u8; 20];
                stream.read_exact(&mut head).await.ok()?;
                let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
                let mut raw = head.to_vec();
                raw.resize(20 + len, 0);
                stream.read_exact(&mut raw[20..]).await.ok()?;
                Some(raw)
            }
        }
    }

    /// A request of `method` with `attrs`, signed with the credential once
    /// the server's realm and nonce are known.
    fn request(
        &self,
        method: Method,
        class: stun::message::MessageClass,
        attrs: Vec<Box<dyn Setter>>,
    ) -> Message {
        let mut all: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(method, class)),
        ];
        all.extend(attrs);
        if class == CLASS_REQUEST && !self.nonce.is_empty() {
            all.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            all.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
            all.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            all.push(Box::new(MessageIntegrity::new_long_term_integrity(
                self.username.clone(),
                self.realm.clone(),
                self.password.clone(),
            )));
        }
        let mut msg = Message::new();
        msg.build(&all).unwrap();
        msg
    }

    /// Sends an authenticated request (learning realm and nonce from the
    /// server's first 401 when needed); `None` when nothing answered.
    async fn call(
        &mut self,
        method: Method,
        attrs: impl Fn() -> Vec<Box<dyn Setter>>,
    ) -> Option<(Answer, Message)> {
        if self.nonce.is_empty() {
            let challenge = self
                .exchange(&self.request(method, CLASS_REQUEST, attrs()))
                .await?;
            assert_eq!(
                answer(&challenge),
                Answer::Error(401),
                "the first answer challenges"
            );
            self.realm = TextAttribute::get_from_as(&challenge, ATTR_REALM)
                .unwrap()
                .text;
            self.nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)
                .unwrap()
                .text;
        }
        let reply = self
            .exchange(&self.request(method, CLASS_REQUEST, attrs()))
            .await?;
        Some((answer(&reply), reply))
    }

    /// Allocate: the relayed address, or the error code (0: no answer).
    async fn allocate(&mut self) -> Result<SocketAddr, u16> {
        let Some((answer, reply)) = self
            .call(METHOD_ALLOCATE, || {
                vec![Box::new(RequestedTransport {
                    protocol: turn::proto::PROTO_UDP,
                })]
            })
            .await
        else {
            return Err(0);
        };
        match answer {
            Answer::Success => {
                let mut relayed = RelayedAddress::default();
                relayed.get_from(&reply).unwrap();
                Ok(SocketAddr::new(relayed.ip, relayed.port))
            }
            Answer::Error(code) => Err(code),
        }
    }

    /// Refresh with lifetime 0: deletes the allocation.
    async fn deallocate(&mut self) -> Answer {
        self.call(METHOD_REFRESH, || vec![Box::new(Lifetime(Duration::ZERO))])
            .await
            .unwrap()
            .0
    }

    async fn create_permission(&mut self, peer: SocketAddr) -> Answer {
        self.call(METHOD_CREATE_PERMISSION, || vec![peer_address(peer)])
            .await
            .unwrap()
            .0
    }

    async fn channel_bind(&mut self, peer: SocketAddr, channel: u16) -> Answer {
        self.call(METHOD_CHANNEL_BIND, || {
            vec![Box::new(ChannelNumber(channel)), peer_address(peer)]
        })
        .await
        .unwrap()
        .0
    }

    /// A Send indication (no answer expected).
    async fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let msg = self.request(
            METHOD_SEND,
            CLASS_INDICATION,
            vec![peer_address(peer), Box::new(Data(data.to_vec()))],
        );
        self.send(&msg.raw).await;
    }
}

fn peer_address(peer: SocketAddr) -> Box<dyn Setter> {
    Box::new(PeerAddress {
        ip: peer.ip(),
        port: peer.port(),
    })
}

fn answer(msg: &Message) -> Answer {
    if msg.typ.class == CLASS_SUCCESS_RESPONSE {
        return Answer::Success;
    }
    assert_eq!(msg.typ.class, CLASS_ERROR_RESPONSE, "{msg}");
    let mut code = ErrorCodeAttribute::default();
    code.get_from(msg).unwrap();
    Answer::Error(code.code.0)
}

/// The first and the last address of `range` (one for a single address).
fn ends_of(range: Cidr) -> Vec<IpAddr> {
    let (first, last) = match range.network() {
        IpAddr::V4(net) => {
            let host_bits = u32::MAX.checked_shr(u32::from(range.prefix())).unwrap_or(0);
            (
                IpAddr::from(std::net::Ipv4Addr::from_bits(
                    net.to_bits() | host_bits.min(1),
                )),
                IpAddr::from(std::net::Ipv4Addr::from_bits(net.to_bits() | host_bits)),
            )
        }
        IpAddr::V6(net) => {
            let host_bits = u128::MAX
                .checked_shr(u32::from(range.prefix()))
                .unwrap_or(0);
            (
                IpAddr::from(std::net::Ipv6Addr::from_bits(
                    net.to_bits() | host_bits.min(1),
                )),
                IpAddr::from(std::net::Ipv6Addr::from_bits(net.to_bits() | host_bits)),
            )
        }
    };
    let mut ends = vec![range.network(), first, last];
    ends.dedup();
    ends
}

/// Every range of the default deny list at its ends, and the addresses the
/// issue names.
fn denied_addresses() -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = DEFAULT_DENIED_PEERS
        .iter()
        .flat_map(|range| ends_of(range.parse().unwrap()))
        .collect();
    for named in [
        "100.100.100.200",
        "169.254.169.254",
        "198.18.0.1",
        "240.1.2.3",
        "255.255.255.255",
        "::ffff:127.0.0.1",
        "::ffff:100.100.100.200",
        "64:ff9b::7f00:1",
        "fd00:ec2::254",
    ] {
        all.push(named.parse().unwrap());
    }
    all
}

#[tokio::test]
async fn every_denied_address_gets_403_over_udp_and_tcp_and_nothing_reaches_the_probe() {
    let metrics = TurnMetrics::default();
    let relay = relay(|c| c.metrics = metrics.clone()).await;
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = probe.local_addr().unwrap().port();
    let denied = denied_addresses();
    assert!(denied.len() > 60, "{}", denied.len());
    let (username, password) = credential_for("eve", SECRET);
    let mut refused = 0;
    for tcp in [false, true] {
        let mut client = if tcp {
            StunClient::tcp(relay.tcp_addr(), &username, &password).await
        } else {
            StunClient::udp(relay.udp_addr(), "127.0.0.1", &username, &password).await
        };
        within("allocate", client.allocate()).await.unwrap();
        for (i, ip) in denied.iter().enumerate() {
            let peer = SocketAddr::new(*ip, port);
            let transport = if tcp { "TCP" } else { "UDP" };
            assert_eq!(
                client.create_permission(peer).await,
                Answer::Error(403),
                "CreatePermission {peer} over {transport}"
            );
            let channel = 0x4000 + u16::try_from(i).unwrap();
            assert_eq!(
                client.channel_bind(peer, channel).await,
                Answer::Error(403),
                "ChannelBind {peer} over {transport}"
            );
            client.send_indication(peer, b"knock knock").await;
            refused += 3;
        }
    }
    assert!(
        receives_nothing(&probe).await,
        "a denied send reached the probe"
    );
    assert_eq!(metrics.refusals(TurnRefusal::PeerAddress), refused);

    // The probe does hear what an allowed relay sends it: the check above
    // can see a leak. And the relayed bytes are counted both ways.
    let open_metrics = TurnMetrics::default();
    let open = self::relay(|c| {
        c.peers = PeerRule::new(&["127.0.0.0/8".parse().unwrap()], &[]);
        c.metrics = open_metrics.clone();
    })
    .await;
    let mut client = StunClient::udp(open.udp_addr(), "127.0.0.1", &username, &password).await;
    let relayed = within("allocate", client.allocate()).await.unwrap();
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(client.create_permission(target).await, Answer::Success);
    client.send_indication(target, b"allowed").await;
    let mut buf = [0u8; 64];
    let (n, from) = within("the allowed packet", probe.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"allowed"[..], relayed));
    probe.send_to(b"back!", relayed).await.unwrap();
    let indication = within("the Data indication", client.read()).await.unwrap();
    let mut msg = Message {
        raw: indication,
        ..Message::default()
    };
    msg.decode().unwrap();
    let mut data = Data::default();
    data.get_from(&msg).unwrap();
    assert_eq!(data.0, b"back!");
    let text = Metrics::with_turn(open_metrics.clone()).render(0, RoomCounts::default());
    for line in [
        "parlor_turn_allocations 1",
        "parlor_turn_relayed_bytes_total{direction=\"to_peer\"} 7",
        "parlor_turn_relayed_bytes_total{direction=\"from_peer\"} 5",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn bad_expired_and_too_long_credentials_get_401_with_a_realm_and_nonce() {
    let metrics = TurnMetrics::default();
    let relay = relay(|c| {
        c.credential_lifetime = Duration::from_secs(3600);
        c.metrics = metrics.clone();
    })
    .await;
    let good = credential_for("ada", SECRET);
    let signed = |username: String| {
        let password = credential(SECRET.as_bytes(), &username);
        (username, password)
    };
    let cases = [
        (
            "wrong password",
            (good.0.clone(), "not-the-password".to_owned()),
            TurnRefusal::BadPassword,
        ),
        (
            "other secret",
            credential_for("ada", "another secret"),
            TurnRefusal::BadPassword,
        ),
        (
            "expired",
            signed(rest_username(now() - 1, "ada")),
            TurnRefusal::ExpiredCredential,
        ),
        (
            "too far ahead",
            signed(rest_username(now() + 3600 + 3600, "ada")),
            TurnRefusal::ExpiryTooFar,
        ),
        (
            "centuries ahead",
            signed(rest_username(now() + 300 * 365 * 86_400, "ada")),
            TurnRefusal::ExpiryTooFar,
        ),
        (
            "malformed",
            signed("ada:123".to_owned()),
            TurnRefusal::MalformedUsername,
        ),
    ];
    for tcp in [false, true] {
        for (what, (username, password), why) in &cases {
            let before = metrics.refusals(*why);
            let mut client = if tcp {
                StunClient::tcp(relay.tcp_addr(), username, password).await
            } else {
                StunClient::udp(relay.udp_addr(), "127.0.0.1", username, password).await
            };
            let Some((got, reply)) = client
                .call(METHOD_ALLOCATE, || {
                    vec![Box::new(RequestedTransport {
                        protocol: turn::proto::PROTO_UDP,
                    })]
                })
                .await
            else {
                panic!("{what}: no answer");
            };
            assert_eq!(got, Answer::Error(401), "{what} (tcp: {tcp})");
            assert_eq!(
                TextAttribute::get_from_as(&reply, ATTR_REALM).unwrap().text,
                "parlor",
                "{what}"
            );
            assert!(
                TextAttribute::get_from_as(&reply, ATTR_NONCE).is_ok(),
                "{what}"
            );
            assert_eq!(metrics.refusals(*why), before + 1, "{what}");
        }
    }
    assert_eq!(relay.allocations(), 0);
    let mut client = StunClient::udp(relay.udp_addr(), "127.0.0.1", &good.0, &good.1).await;
    within("allocate", client.allocate()).await.unwrap();
    // Later requests on the allocation are checked too.
    client.password = "not-the-password".into();
    let peer = SocketAddr::from(([8, 8, 8, 8], 9));
    assert_eq!(client.create_permission(peer).await, Answer::Error(401));
    client.password = good.1.clone();
    assert_eq!(client.create_permission(peer).await, Answer::Success);
}

#[tokio::test]
async fn allocations_past_the_quotas_get_486_per_credential_address_and_server() {
    let metrics = TurnMetrics::default();
    let relay = relay(|c| {
        c.max_allocations_per_user = 3;
        c.max_allocations_per_ip = 5;
        c.max_allocations = 7;
        c.metrics = metrics.clone();
    })
    .await;
    let server = relay.udp_addr();
    let alloc = |ip: &'static str, cred: (String, String)| async move {
        let mut client = StunClient::udp(server, ip, &cred.0, &cred.1).await;
        let result = within("allocate", client.allocate()).await;
        (client, result)
    };
    let a = credential_for("a", SECRET);
    let b = credential_for("b", SECRET);
    let c = credential_for("c", SECRET);
    // Successful clients keep their sockets (a reused port would meet its
    // old allocation: 437).
    let mut held = Vec::new();
    for _ in 0..3 {
        let (client, result) = alloc("127.0.0.1", a.clone()).await;
        result.unwrap();
        held.push(client);
    }
    assert_eq!(
        alloc("127.0.0.1", a.clone()).await.1,
        Err(486),
        "4th for one credential"
    );
    for _ in 0..2 {
        let (client, result) = alloc("127.0.0.1", b.clone()).await;
        result.unwrap();
        held.push(client);
    }
    assert_eq!(
        alloc("127.0.0.1", b.clone()).await.1,
        Err(486),
        "6th from one address"
    );
    for _ in 0..2 {
        let (client, result) = alloc("127.0.0.2", c.clone()).await;
        result.unwrap();
        held.push(client);
    }
    assert_eq!(
        alloc("127.0.0.2", c.clone()).await.1,
        Err(486),
        "8th on the server"
    );
    // Over TCP the same.
    let mut tcp = StunClient::tcp(relay.tcp_addr(), &c.0, &c.1).await;
    assert_eq!(within("allocate over TCP", tcp.allocate()).await, Err(486));
    assert_eq!(relay.allocations(), 7);
    assert_eq!(relay.allocations_from("127.0.0.1".parse().unwrap()), 5);
    assert_eq!(relay.allocations_of(&a.0), 3);
    assert_eq!(metrics.allocations(), 7);
    assert_eq!(metrics.refusals(TurnRefusal::QuotaCredential), 1);
    assert_eq!(metrics.refusals(TurnRefusal::QuotaAddress), 1);
    assert_eq!(metrics.refusals(TurnRefusal::QuotaServer), 2);

    // Deleting an allocation gives its slot back.
    let mut first = held.remove(0);
    assert_eq!(first.deallocate().await, Answer::Success);
    let mut freed = false;
    for _ in 0..50 {
        if relay.allocations() == 6 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the slot was not released: {}", relay.allocations());
    assert_eq!(metrics.allocations(), 6);
    alloc("127.0.0.1", a.clone()).await.1.unwrap();
    drop(held);
}

#[tokio::test]
async fn turn_over_tls_authenticates_allocates_and_is_advertised_as_turns() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issued = rcgen::generate_simple_self_signed(vec!["turn.parlor.test".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.key_pair.serialize_pem()).unwrap();
    let certs = Arc::new(parlor_signaling::tls::CertStore::open(&cert, &key).unwrap());
    let relay = relay(|c| {
        c.tls = Some(TurnTls {
            port: 0,
            host: "turn.parlor.test".to_owned(),
            certs,
        });
    })
    .await;
    let tls = relay.tls_addr().expect("a TLS listener");
    assert!(
        relay.urls().contains(&format!(
            "turns:turn.parlor.test:{}?transport=tcp",
            tls.port()
        )),
        "{:?}",
        relay.urls()
    );
    let root = issued.cert.der().clone();

    // A wrong password is refused over TLS as over UDP: 401.
    let (username, password) = credential_for("tls", SECRET);
    let mut wrong = StunClient::tls(tls, "turn.parlor.test", root.clone(), &username, "nope")
        .await
        .unwrap();
    assert_eq!(within("allocate", wrong.allocate()).await, Err(401));
    // The right one allocates.
    let mut client = StunClient::tls(tls, "turn.parlor.test", root.clone(), &username, &password)
        .await
        .unwrap();
    within("allocate over TLS", client.allocate())
        .await
        .unwrap();
    assert_eq!(relay.allocations_of(&username), 1);
    // The certificate is for its name only: another name fails the handshake.
    assert!(
        StunClient::tls(tls, "other.parlor.test", root, &username, &password)
            .await
            .is_err()
    );
    // Plain TURN-over-TCP bytes on the TLS port get nothing.
    let mut plain = StunClient::tcp(tls, &username, &password).await;
    assert!(within("plain on TLS", plain.allocate()).await.is_err());
}

/// A TCP connection to `server` from `local_ip`.
async fn tcp_from(local_ip: &str, server: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local_ip.parse().unwrap(), 0))
        .unwrap();
    within("TCP connect", socket.connect(server)).await.unwrap()
}

/// Whether the server closed `stream` (EOF or reset) within a second.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn one_address_holds_at_most_its_allocation_cap_of_tcp_connections() {
    let metrics = TurnMetrics::default();
    let relay = relay(|c| {
        c.max_allocations_per_ip = 3;
        c.metrics = metrics.clone();
    })
    .await;
    let server = relay.tcp_addr();
    // Connections that never send a byte: each holds a descriptor.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tcp_from("127.0.0.1", server).await);
    }
    let mut fourth = tcp_from("127.0.0.1", server).await;
    assert!(
        closed_by_server(&mut fourth).await,
        "a 4th from one address stays open"
    );
    assert_eq!(metrics.refusals(TurnRefusal::TcpConnectionsAddress), 1);
    for stream in &mut held {
        assert!(
            !closed_by_server(stream).await,
            "a connection within the cap was closed"
        );
    }
    // Another address is not affected.
    let mut other = tcp_from("127.0.0.2", server).await;
    assert!(
        !closed_by_server(&mut other).await,
        "another address was refused"
    );

    // A closed connection gives its slot back, and a full allocation works
    // over a connection within the cap.
    drop(held.remove(0));
    let cred = credential_for("tcp", SECRET);
    let mut slot_back = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut stream = tcp_from("127.0.0.1", server).await;
        if !closed_by_server(&mut stream).await {
            slot_back = Some(stream);
            break;
        }
    }
    drop(slot_back.expect("the closed connection's slot never came back"));
    let mut client = StunClient::tcp(server, &cred.0, &cred.1).await;
    within("allocate over TCP", client.allocate())
        .await
        .unwrap();
    drop(held);
}

#[tokio::test]
async fn unauthenticated_floods_share_one_nonce_so_the_crate_mints_no_more() {
    let relay = relay(|_| {}).await;
    let (username, password) = credential_for("ada", SECRET);
    let mut nonces = std::collections::HashSet::new();
    for i in 0..200 {
        let tcp = i % 4 == 3;
        let mut client = if tcp {
            StunClient::tcp(relay.tcp_addr(), &username, &password).await
        } else {
            StunClient::udp(relay.udp_addr(), "127.0.0.1", &username, &password).await
        };
        let request = client.request(METHOD_ALLOCATE, CLASS_REQUEST, vec![]);
        let reply = within("the challenge", client.exchange(&request))
            .await
            .unwrap();
        assert_eq!(answer(&reply), Answer::Error(401));
        assert_eq!(
            TextAttribute::get_from_as(&reply, ATTR_REALM).unwrap().text,
            "parlor"
        );
        let nonce = TextAttribute::get_from_as(&reply, ATTR_NONCE).unwrap().text;
        nonces.insert((tcp, nonce));
    }
    // One nonce per listener (the UDP and the TCP server each keep theirs).
    assert_eq!(nonces.len(), 2, "{nonces:?}");
    let udp_nonce = nonces
        .iter()
        .find(|(tcp, _)| !tcp)
        .map(|(_, n)| n.clone())
        .unwrap();

    // A made-up nonce with a good credential: 438 with the current nonce,
    // with which the allocation then succeeds.
    let mut client = StunClient::udp(relay.udp_addr(), "127.0.0.1", &username, &password).await;
    client.realm = "parlor".into();
    client.nonce = "made-up".into();
    let (got, reply) = client
        .call(METHOD_ALLOCATE, || {
            vec![Box::new(RequestedTransport {
                protocol: turn::proto::PROTO_UDP,
            })]
        })
        .await
        .unwrap();
    assert_eq!(got, Answer::Error(438));
    client.nonce = TextAttribute::get_from_as(&reply, ATTR_NONCE).unwrap().text;
    assert_eq!(client.nonce, udp_nonce);
    within("allocate", client.allocate()).await.unwrap();
}

/// A `parlor-server` process, started through `prlimit` when `nofile` is
/// given, its address, and the lines of its stderr so far.
struct ServerProcess {
    child: tokio::process::Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    async fn start(args: &[&str], nofile: Option<u32>) -> Self {
        let server = env!("CARGO_BIN_EXE_parlor-server");
        let mut command = match nofile {
            Some(n) => {
                let mut command = tokio::process::Command::new("prlimit");
                command
                    .arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(server);
                command
            }
            None => tokio::process::Command::new(server),
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--web-dir", "/nonexistent"])
            .args(args)
            .env("PARLOR_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let addr = listening_addr(&mut stdout).await;
        Self {
            child,
            addr,
            stderr,
        }
    }

    /// Waits (bounded) for a stderr line containing `needle`; returns every
    /// line up to and including it.
    async fn stderr_until(&self, needle: &str) -> Vec<String> {
        for _ in 0..200 {
            {
                let lines = self.stderr.lock().unwrap();
                if let Some(at) = lines.iter().position(|l| l.contains(needle)) {
                    return lines[..=at].to_vec();
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no {needle:?} in {:?}", self.stderr.lock().unwrap());
    }

    /// Open file descriptors of the server process.
    fn open_fds(&self) -> usize {
        let pid = self.child.id().unwrap();
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
    }
}

/// The TURN credential and UDP address in a `welcome`'s ICE servers.
fn turn_of(ice_servers: &[IceServer]) -> (SocketAddr, SocketAddr, String, String) {
    let turn = ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .expect("a TURN entry");
    let addr_of = |suffix: &str| -> SocketAddr {
        let url = turn
            .urls
            .iter()
            .find(|u| u.starts_with("turn:") && u.ends_with(suffix))
            .unwrap();
        url["turn:".len()..url.len() - suffix.len()]
            .parse()
            .unwrap()
    };
    (
        addr_of("?transport=udp"),
        addr_of("?transport=tcp"),
        turn.username.clone().unwrap(),
        turn.credential.clone().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_address_under_256_descriptors_leaves_the_server_answering() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no prlimit (util-linux)");
        return;
    }
    let process = ServerProcess::start(
        &["--turn-port", "0", "--turn-max-allocations-per-ip", "40"],
        Some(256),
    )
    .await;
    // 256 descriptors: a third (85) for TURN, 63 of them allocations.
    let budget = process.stderr_until("TURN descriptor budget").await;
    let budget = budget.last().unwrap();
    assert!(budget.contains("fd_limit=256"), "{budget}");
    assert!(budget.contains("max_allocations=63"), "{budget}");
    let server = TestServer::external(process.addr);

    // The attacker: six hellos, six credentials, 32 allocations tried with
    // each, four credentials from 127.0.0.1 and two from 127.0.0.2.
    let mut attackers = Vec::new();
    let mut credentials = Vec::new();
    for i in 0..6 {
        let mut client = server.client().await;
        let (_, _, ice) = client.hello(&new_room(), &format!("eve{i}")).await;
        credentials.push(turn_of(&ice));
        attackers.push(client);
    }
    let (udp, tcp, _, _) = credentials[0].clone();
    let mut outcomes = std::collections::HashMap::<(&str, Result<(), u16>), usize>::new();
    // Every client keeps its socket: a closed one's port could be handed to
    // the next, whose Allocate would then meet the old allocation of that
    // same 5-tuple (437 Allocation Mismatch).
    let mut held = Vec::new();
    for (i, (_, _, username, password)) in credentials.iter().enumerate() {
        let from = if i < 4 { "127.0.0.1" } else { "127.0.0.2" };
        for _ in 0..32 {
            let mut client = StunClient::udp(udp, from, username, password).await;
            let result = within("allocate", client.allocate()).await.map(|_| ());
            *outcomes.entry((from, result)).or_default() += 1;
            held.push(client);
        }
    }
    let count = |from, result| outcomes.get(&(from, result)).copied().unwrap_or(0);
    assert_eq!(count("127.0.0.1", Ok(())), 40, "{outcomes:?}");
    assert_eq!(count("127.0.0.1", Err(486)), 128 - 40, "{outcomes:?}");
    assert_eq!(count("127.0.0.2", Ok(())), 63 - 40, "{outcomes:?}");
    assert_eq!(count("127.0.0.2", Err(486)), 64 - 23, "{outcomes:?}");

    // TCP connections are capped too (22 of the budget): extra ones are
    // closed unanswered.
    let (_, _, username, password) = credentials[0].clone();
    let mut tcp_clients = Vec::new();
    let mut answered = 0;
    for _ in 0..40 {
        let mut client = StunClient::tcp(tcp, &username, &password).await;
        let challenge = client.request(
            METHOD_ALLOCATE,
            CLASS_REQUEST,
            vec![Box::new(RequestedTransport {
                protocol: turn::proto::PROTO_UDP,
            })],
        );
        if client.exchange(&challenge).await.is_some() {
            answered += 1;
        }
        tcp_clients.push(client);
    }
    assert_eq!(answered, 22, "TCP connections answered");

    let fds = process.open_fds();
    eprintln!("server holds {fds} descriptors of 256 after the flood");
    assert!(fds < 256 * 2 / 3, "{fds} descriptors open");

    // The server still answers: health, metrics, a new room's signaling.
    let (status, _, body) = http_get(process.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let room = new_room();
    let (mut ada, ada_id, _) = server.join(&room, "ada").await;
    let (mut bob, _, _) = server.join(&room, "bob").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));
    bob.send(&ClientMessage::Offer {
        to: ada_id,
        sdp: "v=0".into(),
    })
    .await;
    assert!(matches!(ada.recv().await, ServerMessage::Offer { .. }));
    let (_, _, metrics) = http_get(process.addr, "/metrics").await;
    for line in [
        "parlor_turn_allocations 63",
        "parlor_turn_refusals_total{reason=\"quota_address\"} 88",
        "parlor_turn_refusals_total{reason=\"quota_server\"} 41",
        "parlor_turn_refusals_total{reason=\"tcp_connections\"} 18",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    drop(attackers);
}

#[tokio::test]
async fn the_server_warns_when_turn_advertises_an_address_remote_clients_cannot_reach() {
    let local = ServerProcess::start(&["--turn-port", "0"], None).await;
    let lines = local.stderr_until("TURN relay listening").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("loopback") && l.contains("--public-ip")),
        "{lines:#?}"
    );
    let public = ServerProcess::start(
        &[
            "--turn-port",
            "0",
            "--turn-listen-ip",
            "0.0.0.0",
            "--public-ip",
            "8.8.8.8",
        ],
        None,
    )
    .await;
    let lines = public.stderr_until("TURN relay listening").await;
    assert!(!lines.iter().any(|l| l.contains("WARN")), "{lines:#?}");
}
