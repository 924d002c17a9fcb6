//! The signaling connection: a WebSocket to `parlor-server`, JSON messages in
//! and out. A writer task owns the sink so sending never blocks the driver.

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use parlor_protocol::{ClientMessage, PROTOCOL_VERSION, PeerInfo, RoomId, ServerMessage};
use tokio::sync::mpsc;
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
}

/// A joined signaling connection.
#[derive(Debug)]
pub struct Signaling {
    outgoing: mpsc::Sender<ClientMessage>,
    incoming: mpsc::Receiver<ServerMessage>,
}

impl Signaling {
    /// Connects to `ws_url`, says hello and waits for the welcome.
    pub async fn join(ws_url: &str, room: &RoomId, name: &str) -> Result<(Self, Joined)> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .with_context(|| format!("cannot reach the Parlor server at {ws_url}"))?;
        let (mut sink, mut stream) = ws.split();
        let hello = ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            room: room.clone(),
            name: (!name.is_empty()).then(|| name.to_owned()),
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
                        ..
                    } => {
                        break Joined {
                            peer_id,
                            peers,
                            ice_servers,
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

        let (out_tx, mut out_rx) = mpsc::channel::<ClientMessage>(OUTGOING_QUEUE);
        let (in_tx, in_rx) = mpsc::channel::<ServerMessage>(OUTGOING_QUEUE);
        tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if sink.send(Message::text(msg.to_json())).await.is_err() {
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
                            if in_tx.send(msg).await.is_err() {
                                break;
                            }
                        }
                        Err(err) => tracing::warn!(%err, "unreadable message from server"),
                    },
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
            },
            joined,
        ))
    }

    /// Queues a message for the server. Fails only when the connection is gone.
    pub async fn send(&self, msg: ClientMessage) -> Result<()> {
        self.outgoing
            .send(msg)
            .await
            .map_err(|_| anyhow::anyhow!("signaling connection closed"))
    }

    /// The next message from the server; `None` once the connection is gone.
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        self.incoming.recv().await
    }
}
