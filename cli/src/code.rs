//! Short codes (`parlor send --code`, `parlor receive 7-apple-river`): the
//! nameplate API of the server and the SPAKE2 phase that runs between
//! joining the room and starting it, turning the code's words into the room
//! key (see [`parlor_protocol::code`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use http_body_util::BodyExt as _;
use parlor_protocol::{
    ClientMessage, PakeMessage, PakeSession, PakeStep, PeerId, RoomId, RoomKey, ServerMessage,
    ShortCode,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::signal::{Incoming, Joined, Signaling};

/// How long the sender waits for somebody to type its code: the server's
/// default nameplate lifetime, after which the code cannot be opened anyway.
pub const PEER_WAIT: Duration = Duration::from_secs(10 * 60);
/// How long the exchange may take once the other side is there (two
/// messages each way through the server).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on an HTTP answer of the code API.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest HTTP answer read from the code API.
const MAX_HTTP_RESPONSE: usize = 16 * 1024;

/// `POST /api/code` on `server`: a nameplate and its fresh room.
pub async fn create(server: &str, tls: &Arc<rustls::ClientConfig>) -> Result<(u32, RoomId)> {
    let body = post(server, tls, "/api/code")
        .await
        .context("cannot create a code")?;
    let nameplate = body["nameplate"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| anyhow!("the server's answer has no nameplate: {body}"))?;
    let room = room_of(&body)?;
    Ok((nameplate, room))
}

/// `POST /api/code/N/open` on `server`: the code's room (once).
pub async fn open(
    server: &str,
    tls: &Arc<rustls::ClientConfig>,
    code: &ShortCode,
) -> Result<RoomId> {
    let body = post(server, tls, &format!("/api/code/{}/open", code.nameplate))
        .await
        .with_context(|| format!("cannot use the code {code}"))?;
    room_of(&body)
}

fn room_of(body: &serde_json::Value) -> Result<RoomId> {
    let room = body["room"]
        .as_str()
        .ok_or_else(|| anyhow!("the server's answer has no room: {body}"))?;
    RoomId::parse(room).context("the server's answer has an invalid room id")
}

/// An HTTP/1.1 POST without a body to `server` (`http://HOST[:PORT]`, or
/// `https://` with `tls`), through hyper; returns the JSON body of a 200
/// answer, or the server's `{"error": ...}` as the error.
async fn post(
    server: &str,
    tls: &Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<serde_json::Value> {
    let url = url::Url::parse(server).with_context(|| format!("invalid --server {server}"))?;
    let secure = match url.scheme() {
        "http" => false,
        "https" => true,
        _ => bail!("--server must be an http:// or https:// URL (got {server})"),
    };
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("--server {server} has no host"))?
        .to_owned();
    let port = url
        .port_or_known_default()
        .unwrap_or(if secure { 443 } else { 80 });
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let exchange = async {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let stream = TcpStream::connect((bare, port))
            .await
            .with_context(|| format!("cannot reach the Parlor server at {server}"))?;
        if !secure {
            return request(stream, path, &authority).await;
        }
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .with_context(|| format!("--server {server}: not a host name for TLS"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, stream)
            .await
            .map_err(
                |err| match crate::tls::explain(&err, &format!("{bare}:{port}")) {
                    Some(why) => anyhow!("cannot reach the Parlor server at {server}: {why}"),
                    None => anyhow::Error::new(err)
                        .context(format!("cannot reach the Parlor server at {server}")),
                },
            )?;
        request(stream, path, &authority).await
    };
    let (status, body) = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("the Parlor server at {server} did not answer"))??;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != hyper::StatusCode::OK {
        let why = json["error"].as_str().unwrap_or("no reason given");
        bail!("the server said {}: {why}", status.as_u16());
    }
    Ok(json)
}

/// `POST path` on an open connection `io` to `authority`: status and body
/// (at most [`MAX_HTTP_RESPONSE`] bytes).
async fn request<T>(io: T, path: &str, authority: &str) -> Result<(hyper::StatusCode, bytes::Bytes)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_HTTP_RESPONSE)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the answer: {e}"))?
        .to_bytes();
    connection.abort();
    Ok((status, body))
}

/// The SPAKE2 phase: finds the other peer (present at join, or the first to
/// join), exchanges `pake` messages with it, and returns the room key once
/// both sides proved they hold it. Messages not part of the exchange are
/// handed back to `signaling` in order, for the room to see.
pub async fn exchange(
    signaling: &mut Signaling,
    joined: &Joined,
    code: &ShortCode,
    room: &RoomId,
) -> Result<RoomKey> {
    let mut held = Vec::new();
    let result = exchange_inner(signaling, joined, code, room, &mut held).await;
    signaling.unread(held);
    result
}

async fn exchange_inner(
    signaling: &mut Signaling,
    joined: &Joined,
    code: &ShortCode,
    room: &RoomId,
    held: &mut Vec<Incoming>,
) -> Result<RoomKey> {
    let me = joined.peer_id.clone();
    let mut session: Option<PakeSession> = None;
    let start = |peer: PeerId| {
        let (session, msg) = PakeSession::start(code, room, me.clone(), peer, rand::random());
        (session, msg)
    };
    if let Some(peer) = joined.peers.first() {
        let (s, msg) = start(peer.id.clone());
        send(signaling, &peer.id, &msg).await?;
        session = Some(s);
    }
    let mut deadline = tokio::time::Instant::now()
        + if session.is_some() {
            EXCHANGE_TIMEOUT
        } else {
            PEER_WAIT
        };
    loop {
        let next = tokio::time::timeout_at(deadline, signaling.recv()).await;
        let incoming = match next {
            Ok(Some(incoming)) => incoming,
            Ok(None) => bail!("lost the connection to the server while checking the code"),
            Err(_) if session.is_none() => bail!(
                "nobody used the code within {} minutes; make a new one",
                PEER_WAIT.as_secs() / 60
            ),
            Err(_) => bail!("the other side did not finish checking the code; try a new one"),
        };
        let msg = match incoming {
            Incoming::Message(msg) => msg,
            relay @ Incoming::Relay(_) => {
                held.push(relay);
                continue;
            }
        };
        match msg {
            ServerMessage::Pake { from, body } => {
                let Some(s) = session.as_mut().filter(|s| *s.peer() == from) else {
                    tracing::warn!(%from, "code exchange message from another peer ignored");
                    continue;
                };
                let msg = PakeMessage::decode(&body)?;
                match s.receive(msg)? {
                    PakeStep::Send(reply) => send(signaling, &from, &reply).await?,
                    PakeStep::Done(key) => return Ok(key),
                }
            }
            ServerMessage::PeerJoined { peer } => {
                if session.is_none() {
                    let (s, msg) = start(peer.id.clone());
                    send(signaling, &peer.id, &msg).await?;
                    session = Some(s);
                    deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
                }
                held.push(Incoming::Message(ServerMessage::PeerJoined { peer }));
            }
            ServerMessage::PeerLeft { peer_id }
                if session.as_ref().is_some_and(|s| *s.peer() == peer_id) =>
            {
                bail!("the other side left before the code was checked")
            }
            ServerMessage::Ping => signaling.send(ClientMessage::Pong).await?,
            ServerMessage::Error { code, message } => {
                bail!("server: {message} ({})", code.as_str())
            }
            other => held.push(Incoming::Message(other)),
        }
    }
}

async fn send(signaling: &Signaling, to: &PeerId, msg: &PakeMessage) -> Result<()> {
    signaling
        .send(ClientMessage::Pake {
            to: to.clone(),
            body: msg.encode(),
        })
        .await
}
