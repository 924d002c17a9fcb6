//! The embedded TURN relay, driven by the `turn` crate's own client: it
//! refuses bad and expired credentials and relaying to loopback, relays when
//! allowed (over UDP and TCP), caps allocations per credential, and the
//! credentials in `welcome` work against it.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parlor_signaling::turn::{
    MAX_ALLOCATIONS_PER_USER, PeerRule, TurnConfig, credential, frame_len, rest_username,
};
use parlor_signaling::{Config, TurnServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use crate::support::{TestServer, new_room, test_config, within};

const SECRET: &str = "integration secret";

/// A relay on 127.0.0.1 with the default peer rule, or none at all.
async fn relay(allow_private: bool, max_allocations_per_user: usize) -> TurnServer {
    let defaults = TurnConfig::new("127.0.0.1".parse().unwrap(), SECRET.parse().unwrap());
    TurnServer::start(TurnConfig {
        peers: if allow_private {
            PeerRule::allow_all()
        } else {
            PeerRule::default()
        },
        max_allocations_per_user,
        ..defaults
    })
    .await
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A valid credential for `id`.
fn good_credential(id: &str) -> (String, String) {
    let username = rest_username(now() + 3600, id);
    let password = credential(SECRET.as_bytes(), &username);
    (username, password)
}

async fn client_on(
    conn: Arc<dyn Conn + Send + Sync>,
    server: SocketAddr,
    username: &str,
    password: &str,
) -> Client {
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

async fn udp_client(server: SocketAddr, username: &str, password: &str) -> Client {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client_on(Arc::new(socket), server, username, password).await
}

/// Whether `socket` receives anything within half a second.
pub async fn receives_nothing(socket: &UdpSocket) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
        .await
        .is_err()
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let relay = relay(false, MAX_ALLOCATIONS_PER_USER).await;
    let (username, _) = good_credential("p1");
    let client = udp_client(relay.udp_addr(), &username, "not-the-password").await;
    let result = within("allocate", client.allocate()).await;
    assert!(result.is_err(), "allocated with a wrong password");
    assert_eq!(relay.allocations_of(&username), 0);
    client.close().await.unwrap();
}

#[tokio::test]
async fn an_expired_username_is_refused() {
    let relay = relay(false, MAX_ALLOCATIONS_PER_USER).await;
    // Correctly signed, but its expiry has passed.
    let username = rest_username(now() - 1, "p1");
    let password = credential(SECRET.as_bytes(), &username);
    let client = udp_client(relay.udp_addr(), &username, &password).await;
    let result = within("allocate", client.allocate()).await;
    assert!(result.is_err(), "allocated with an expired username");
    client.close().await.unwrap();
}

#[tokio::test]
async fn relaying_to_loopback_is_refused_by_default() {
    let relay = relay(false, MAX_ALLOCATIONS_PER_USER).await;
    let (username, password) = good_credential("p1");
    let client = udp_client(relay.udp_addr(), &username, &password).await;
    let relay_conn = within("allocate", client.allocate()).await.unwrap();
    assert_eq!(relay.allocations_of(&username), 1);

    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The CreatePermission for 127.0.0.1 gets 403, so the send fails...
    let sent = within(
        "send",
        relay_conn.send_to(b"knock knock", target.local_addr().unwrap()),
    )
    .await;
    let err = sent.expect_err("the relay accepted a loopback peer");
    assert!(err.to_string().contains("403"), "{err}");
    // ...and nothing reaches the loopback socket.
    assert!(receives_nothing(&target).await);
    client.close().await.unwrap();
}

#[tokio::test]
async fn relaying_to_loopback_works_when_allowed() {
    let relay = relay(true, MAX_ALLOCATIONS_PER_USER).await;
    let (username, password) = good_credential("p1");
    let client = udp_client(relay.udp_addr(), &username, &password).await;
    let relay_conn = within("allocate", client.allocate()).await.unwrap();
    let relayed = relay_conn.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    echo_through(&relay_conn, relayed).await;
    client.close().await.unwrap();
}

/// Sends through `relay_conn` to a fresh loopback socket and back.
async fn echo_through(relay_conn: &impl Conn, relayed: SocketAddr) {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    within(
        "send",
        relay_conn.send_to(b"ping", peer.local_addr().unwrap()),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = within("the relayed packet", peer.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(from, relayed, "the packet comes from the relayed address");
    peer.send_to(b"pong", relayed).await.unwrap();
    let (n, from) = within("the answer", relay_conn.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(from, peer.local_addr().unwrap());
}

#[tokio::test]
async fn allocations_per_credential_are_capped() {
    let relay = relay(false, 2).await;
    let (username, password) = good_credential("p1");
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let client = udp_client(relay.udp_addr(), &username, &password).await;
        conns.push(within("allocate", client.allocate()).await.unwrap());
        clients.push(client);
    }
    let third = udp_client(relay.udp_addr(), &username, &password).await;
    assert!(
        within("allocate", third.allocate()).await.is_err(),
        "a third allocation for one credential"
    );
    assert_eq!(relay.allocations_of(&username), 2);
    // Another credential is not affected.
    let (other, other_password) = good_credential("p2");
    let fourth = udp_client(relay.udp_addr(), &other, &other_password).await;
    within("allocate", fourth.allocate()).await.unwrap();
}

/// The client side of TURN over TCP for the `turn` crate's client: STUN and
/// ChannelData messages framed on one stream to the server.
struct TcpClientConn {
    server: SocketAddr,
    local: SocketAddr,
    reader: Mutex<OwnedReadHalf>,
    writer: Mutex<OwnedWriteHalf>,
}

impl TcpClientConn {
    async fn connect(server: SocketAddr) -> Self {
        let stream = TcpStream::connect(server).await.unwrap();
        let local = stream.local_addr().unwrap();
        let (reader, writer) = stream.into_split();
        Self {
            server,
            local,
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
        }
    }
}

fn unused() -> webrtc_util::Error {
    std::io::Error::other("unused").into()
}

#[async_trait]
impl Conn for TcpClientConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(unused())
    }
    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(unused())
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut reader = self.reader.lock().await;
        let mut head = [0u8; 4];
        reader.read_exact(&mut head).await?;
        let (len, on_wire) = frame_len(head).ok_or_else(unused)?;
        let mut frame = vec![0u8; on_wire];
        frame[..4].copy_from_slice(&head);
        reader.read_exact(&mut frame[4..]).await?;
        buf[..len].copy_from_slice(&frame[..len]);
        Ok((len, self.server))
    }
    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(unused())
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let mut writer = self.writer.lock().await;
        writer.write_all(buf).await?;
        let padding = buf.len().next_multiple_of(4) - buf.len();
        writer.write_all(&[0u8; 3][..padding]).await?;
        Ok(buf.len())
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

#[tokio::test]
async fn turn_over_tcp_allocates_and_relays() {
    let relay = relay(true, MAX_ALLOCATIONS_PER_USER).await;
    let (username, password) = good_credential("p1");
    let conn = TcpClientConn::connect(relay.tcp_addr()).await;
    let client = client_on(Arc::new(conn), relay.tcp_addr(), &username, &password).await;
    let relay_conn = within("allocate over TCP", client.allocate())
        .await
        .unwrap();
    let relayed = relay_conn.local_addr().unwrap();
    echo_through(&relay_conn, relayed).await;
    // Over TCP, too, a loopback peer is refused without the allow flag.
    let strict = self::relay(false, MAX_ALLOCATIONS_PER_USER).await;
    let conn = TcpClientConn::connect(strict.tcp_addr()).await;
    let client = client_on(Arc::new(conn), strict.tcp_addr(), &username, &password).await;
    let relay_conn = within("allocate over TCP", client.allocate())
        .await
        .unwrap();
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sent = within(
        "send",
        relay_conn.send_to(b"knock", target.local_addr().unwrap()),
    )
    .await;
    assert!(sent.is_err());
    assert!(receives_nothing(&target).await);
}

#[tokio::test]
async fn welcome_hands_out_credentials_the_relay_accepts() {
    let config = Config {
        no_turn: false,
        turn_port: Some(0),
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let mut ada = server.client().await;
    let (ada_id, _, ice_servers) = ada.hello(&new_room(), "ada").await;
    assert_eq!(ice_servers.len(), 1, "{ice_servers:?}");
    let turn = &ice_servers[0];
    assert_eq!(turn.urls.len(), 3, "{:?}", turn.urls);
    // STUN on the relay's UDP port first, for server-reflexive candidates.
    assert!(
        turn.urls[0].starts_with("stun:127.0.0.1:"),
        "{:?}",
        turn.urls
    );
    assert!(
        turn.urls[1].starts_with("turn:127.0.0.1:"),
        "{:?}",
        turn.urls
    );
    assert!(turn.urls[1].ends_with("?transport=udp"), "{:?}", turn.urls);
    assert!(turn.urls[2].ends_with("?transport=tcp"), "{:?}", turn.urls);
    let username = turn.username.clone().unwrap();
    let (expiry, id) = username.split_once(':').unwrap();
    assert_eq!(id, ada_id.0);
    let ttl = expiry.parse::<u64>().unwrap() - now();
    assert!((12 * 3600 - 60..=12 * 3600).contains(&ttl), "ttl {ttl}");

    assert_eq!(
        turn.urls[0].trim_start_matches("stun:"),
        turn.urls[1][5..].trim_end_matches("?transport=udp")
    );
    let port: u16 = turn.urls[1]
        .trim_start_matches("turn:127.0.0.1:")
        .trim_end_matches("?transport=udp")
        .parse()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = udp_client(addr, &username, turn.credential.as_ref().unwrap()).await;
    within("allocate with welcome's credential", client.allocate())
        .await
        .unwrap();
    client.close().await.unwrap();
}
