//! The signaling connection: a WebSocket to `parlor-server`, JSON messages in
//! and out, plus binary server-relay packets (see [`parlor_protocol::relay`]).
//! A writer task owns the sink so sending never blocks the driver; it counts
//! the relay bytes not yet written, which is the relay's "buffered amount"
//! for file flow control.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use parlor_protocol::{ClientMessage, PROTOCOL_VERSION, PeerInfo, RoomId, ServerMessage};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

/// Messages buffered towards the server before `send` waits.
const OUTGOING_QUEUE: usize = 256;

/// What the server said when we joined.
#[derive(Debug)]
pub struct Joined {
    /// Our peer id.
    pub peer_id: parlor_protocol::PeerId,
    /// Peers already present.
    pub peers: Vec<PeerInfo>,
    /// ICE servers to use.
    pub ice_servers: Vec<parlor_protocol::IceServer>,
    /// Gets our peer id back on a later connection (also to a restarted
    /// server).
    pub resume_token: Option<String>,
}

/// Something from the server.
#[derive(Debug)]
pub enum Incoming {
    /// A signaling message.
    Message(ServerMessage),
    /// A server-relay envelope (still sealed).
    Relay(Vec<u8>),
}

enum Outgoing {
    Message(ClientMessage),
    Relay(Vec<u8>),
}

/// Relay bytes queued towards the server, and a signal for when they drain.
#[derive(Debug)]
pub struct RelayBuffer {
    queued: AtomicU64,
    low_watermark: AtomicU64,
    drained: Notify,
}

impl RelayBuffer {
    /// Relay bytes handed to [`Signaling::send_relay`] but not yet written
    /// to the socket.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Sets the level at or below which [`Self::drained`] fires.
    pub fn set_low_watermark(&self, bytes: u64) {
        self.low_watermark.store(bytes, Ordering::Relaxed);
    }

    /// Resolves once the queue has drained to the low watermark (after being
    /// above it).
    pub async fn drained(&self) {
        self.drained.notified().await;
    }

    fn written(&self, bytes: u64) {
        let before = self.queued.fetch_sub(bytes, Ordering::Relaxed);
        let low = self.low_watermark.load(Ordering::Relaxed);
        if before > low && before - bytes <= low {
            self.drained.notify_one();
        }
    }
}

/// A joined signaling connection.
#[derive(Debug)]
pub struct Signaling {
    outgoing: mpsc::Sender<Outgoing>,
    incoming: mpsc::Receiver<Incoming>,
    /// Read early (by the short-code phase) and handed back: delivered by
    /// [`Self::recv`] before anything newer.
    pending: VecDeque<Incoming>,
    relay: Arc<RelayBuffer>,
    /// Writes [`Self::outgoing`] to the socket; ends (closing it) when
    /// every sender is gone.
    writer: tokio::task::JoinHandle<()>,
}

/// How long [`Signaling::close`] waits for queued messages to leave.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Message(msg) => f.debug_tuple("Message").field(msg).finish(),
            Self::Relay(bytes) => write!(f, "Relay({} bytes)", bytes.len()),
        }
    }
}

impl Signaling {
    /// Connects to `ws_url` (`ws://`, or `wss://` with `tls`), says hello
    /// (with `resume`, the token of an earlier welcome, to keep our peer id)
    /// and waits for the welcome.
    pub async fn join(
        ws_url: &str,
        tls: &Arc<rustls::ClientConfig>,
        room: &RoomId,
        name: &str,
        resume: Option<&str>,
    ) -> Result<(Self, Joined)> {
        let connector = tokio_tungstenite::Connector::Rustls(Arc::clone(tls));
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(ws_url, None, false, Some(connector))
                .await
                .map_err(|err| {
                    let host = url::Url::parse(ws_url)
                        .ok()
                        .and_then(|u| {
                            Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
                        })
                        .unwrap_or_else(|| ws_url.to_owned());
                    match crate::tls::explain(&err, &host) {
                        Some(why) => {
                            anyhow::anyhow!("cannot reach the Parlor server at {ws_url}: {why}")
                        }
                        None => anyhow::Error::new(err)
                            .context(format!("cannot reach the Parlor server at {ws_url}")),
                    }
                })?;
        let (mut sink, mut stream) = ws.split();
        let hello = ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            room: room.clone(),
            name: (!name.is_empty()).then(|| name.to_owned()),
            resume: resume.map(str::to_owned),
        };
        sink.send(Message::text(hello.to_json()))
            .await
            .context("sending hello")?;

        let joined = loop {
            let Some(msg) = stream.next().await else {
                bail!("server closed the connection before welcoming us")
            };
            match msg.context("reading from server")? {
                Message::Text(text) => match ServerMessage::from_json(&text)? {
                    ServerMessage::Welcome {
                        peer_id,
                        peers,
                        ice_servers,
                        resume_token,
                        ..
                    } => {
                        break Joined {
                            peer_id,
                            peers,
                            ice_servers,
                            resume_token,
                        };
                    }
                    ServerMessage::Error { code, message } => {
                        bail!("server refused to join: {message} ({})", code.as_str())
                    }
                    other => tracing::debug!(?other, "ignored before welcome"),
                },
                Message::Close(frame) => bail!(
                    "server closed the connection: {}",
                    frame.map(|f| f.reason.to_string()).unwrap_or_default()
                ),
                _ => {}
            }
        };

        let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(OUTGOING_QUEUE);
        let (in_tx, in_rx) = mpsc::channel::<Incoming>(OUTGOING_QUEUE);
        let relay = Arc::new(RelayBuffer {
            queued: AtomicU64::new(0),
            low_watermark: AtomicU64::new(0),
            drained: Notify::new(),
        });
        let buffer = Arc::clone(&relay);
        let writer = tokio::spawn(async move {
            while let Some(out) = out_rx.recv().await {
                let sent = match out {
                    Outgoing::Message(msg) => sink.send(Message::text(msg.to_json())).await,
                    Outgoing::Relay(bytes) => {
                        let len = bytes.len() as u64;
                        let sent = sink.send(Message::binary(bytes)).await;
                        buffer.written(len);
                        sent
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Text(text)) => match ServerMessage::from_json(&text) {
                        Ok(msg) => {
                            if in_tx.send(Incoming::Message(msg)).await.is_err() {
                                break;
                            }
                        }
                        Err(err) => tracing::warn!(%err, "unreadable message from server"),
                    },
                    // Awaiting here stops reading the socket while the driver
                    // is busy: TCP pushes back on the relaying server.
                    Ok(Message::Binary(bytes)) => {
                        if in_tx.send(Incoming::Relay(bytes.to_vec())).await.is_err() {
                            break;
                        }
                    }
                    Ok(Message::Close(frame)) => {
                        tracing::info!(reason = ?frame.map(|f| f.reason.to_string()), "server closed signaling");
                        break;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::info!(%err, "signaling connection lost");
                        break;
                    }
                }
            }
        });
        Ok((
            Self {
                outgoing: out_tx,
                incoming: in_rx,
                pending: VecDeque::new(),
                relay,
                writer,
            },
            joined,
        ))
    }

    /// Sends what is queued, then closes the connection (waiting at most
    /// [`CLOSE_TIMEOUT`]): a peer that gives up still gets its last
    /// messages out (e.g. its code confirmation, which tells the other side
    /// "mismatch" rather than "left").
    pub async fn close(self) {
        let Self {
            outgoing, writer, ..
        } = self;
        drop(outgoing);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
    }

    /// Queues a message for the server. Fails only when the connection is gone.
    pub async fn send(&self, msg: ClientMessage) -> Result<()> {
        self.outgoing
            .send(Outgoing::Message(msg))
            .await
            .map_err(|_| anyhow::anyhow!("signaling connection closed"))
    }

    /// Queues a server-relay envelope. Fails only when the connection is gone.
    pub async fn send_relay(&self, envelope: Vec<u8>) -> Result<()> {
        let len = envelope.len() as u64;
        self.relay.queued.fetch_add(len, Ordering::Relaxed);
        if self.outgoing.send(Outgoing::Relay(envelope)).await.is_err() {
            self.relay.queued.fetch_sub(len, Ordering::Relaxed);
            anyhow::bail!("signaling connection closed");
        }
        Ok(())
    }

    /// The relay's send buffer.
    pub fn relay_buffer(&self) -> Arc<RelayBuffer> {
        Arc::clone(&self.relay)
    }

    /// The next message or relay packet from the server; `None` once the
    /// connection is gone.
    pub async fn recv(&mut self) -> Option<Incoming> {
        if let Some(early) = self.pending.pop_front() {
            return Some(early);
        }
        self.incoming.recv().await
    }

    /// Hands back messages read by [`Self::recv`] (in the order read), to be
    /// received again before anything newer.
    pub fn unread(&mut self, messages: Vec<Incoming>) {
        for msg in messages.into_iter().rev() {
            self.pending.push_front(msg);
        }
    }
}
