//! Idle signaling peers in bulk, and what they cost the server holding
//! them: the idle-memory benchmark (`src/bin/idle_peers.rs`) and its smoke
//! test.
//!
//! Each peer is a real WebSocket client on its own loopback source address
//! (`127.1.x.y`, [`PEERS_PER_ADDRESS`] per address, so per-address limits
//! hold as they would for strangers), joined to a room of two and then left
//! alone: its task only reads (which answers the server's heartbeat pings)
//! until the socket closes or the crowd is dropped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _, stream};
use parlor_protocol::{ClientMessage, PROTOCOL_VERSION, RoomId, ServerMessage};
use tokio::net::TcpSocket;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Peers that share one source address (below the server's default
/// per-address limits: 64 open, bursts of 30 new).
pub const PEERS_PER_ADDRESS: usize = 20;

/// Connections being set up at once.
const CONCURRENT_JOINS: usize = 64;

const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Idle peers, each kept alive by its own reading task; dropping the crowd
/// closes every socket.
#[derive(Debug)]
pub struct Crowd {
    readers: JoinSet<()>,
}

impl Crowd {
    /// How many peers are still connected.
    pub fn len(&self) -> usize {
        self.readers.len()
    }

    /// Whether no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }

    /// Closes every socket and waits until all reader tasks have ended.
    pub async fn leave(mut self) {
        self.readers.abort_all();
        while self.readers.join_next().await.is_some() {}
    }
}

/// The source address of peer `index`: 127.1.0.1, 127.1.0.2, … with
/// [`PEERS_PER_ADDRESS`] peers each.
pub fn source_address(index: usize) -> IpAddr {
    let n = index / PEERS_PER_ADDRESS;
    let octet = |v: usize| u8::try_from(v % 256).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + octet(n / (256 * 254)),
        octet(n / 254),
        octet(n % 254) + 1,
    ))
}

/// Which signaling server a crowd joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `parlor-server`: `hello` into a room of two, wait for `welcome`; the
    /// server's heartbeat pings are answered by reading.
    Parlor,
    /// PeerJS's `peer` server: connect with an id and token, wait for
    /// `OPEN`; a `HEARTBEAT` every [`PEERJS_HEARTBEAT`] as its client does.
    PeerJs,
}

/// How often an idle PeerJS client sends `HEARTBEAT` (its client's default).
pub const PEERJS_HEARTBEAT: Duration = Duration::from_secs(5);

/// Joins `count` idle peers to the server at `server` (`127.0.0.1:PORT`);
/// returns once every one is admitted.
pub async fn crowd(flavour: Flavour, server: SocketAddr, count: usize) -> Result<Crowd> {
    let rooms: Vec<RoomId> = (0..count.div_ceil(2))
        .map(|_| RoomId::from_random(rand::random()))
        .collect();
    let mut readers = JoinSet::new();
    let mut joins = stream::iter(0..count)
        .map(|i| {
            let room = &rooms[i / 2];
            async move {
                let (url, hello) = match flavour {
                    Flavour::Parlor => {
                        let hello = ClientMessage::Hello {
                            version: PROTOCOL_VERSION,
                            room: room.clone(),
                            name: Some(format!("idle-{i}")),
                            resume: None,
                        };
                        (
                            format!("ws://{server}/ws"),
                            Some(serde_json::to_string(&hello)?),
                        )
                    }
                    Flavour::PeerJs => (
                        format!("ws://{server}/peerjs?key=peerjs&id=idle{i}&token=t{i}"),
                        None,
                    ),
                };
                tokio::time::timeout(JOIN_TIMEOUT, join(server, source_address(i), &url, hello))
                    .await
                    .with_context(|| format!("peer {i}: not admitted within {JOIN_TIMEOUT:?}"))?
                    .with_context(|| format!("peer {i}"))
            }
        })
        .buffer_unordered(CONCURRENT_JOINS);
    while let Some(ws) = joins.next().await {
        readers.spawn(idle(flavour, ws?));
    }
    Ok(Crowd { readers })
}

/// Reads until the socket closes; a PeerJS client also sends heartbeats.
async fn idle(flavour: Flavour, mut ws: Ws) {
    let mut heartbeat = tokio::time::interval(PEERJS_HEARTBEAT);
    loop {
        tokio::select! {
            msg = ws.next() => if !matches!(msg, Some(Ok(_))) { return },
            _ = heartbeat.tick(), if flavour == Flavour::PeerJs => {
                if ws.send(Message::text(r#"{"type":"HEARTBEAT"}"#)).await.is_err() {
                    return;
                }
            }
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Small client buffers: the benchmark process holds as many sockets as the
/// server does.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn join(server: SocketAddr, source: IpAddr, url: &str, hello: Option<String>) -> Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(server).await?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, tcp, Some(client_config())).await?;
    let parlor = hello.is_some();
    if let Some(hello) = hello {
        ws.send(Message::text(hello)).await?;
    }
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let admitted = if parlor {
            matches!(
                serde_json::from_str(&text),
                Ok(ServerMessage::Welcome { .. })
            )
        } else {
            text.contains(r#""type":"OPEN""#)
        };
        if admitted {
            return Ok(ws);
        }
    }
    bail!("closed before it was admitted")
}

/// Resident memory of process `pid`, in bytes (`VmRSS` in
/// `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("VmRSS is not a number")?;
    Ok(kib * 1024)
}
