//! One signaling WebSocket, from upgrade to close.
//!
//! The socket is split: a writer task drains the connection's bounded
//! [`PeerOutbox`] onto the socket, while the session task reads frames,
//! parses each once into a [`ClientMessage`] and dispatches on it. Anything
//! the client gets wrong is answered with an `error` message and the loop goes
//! on; only transport errors, the strike limit, timeouts, eviction and server
//! shutdown end a session.
//!
//! The session task also selects on:
//! - the server's shutdown signal (close with 1001 "server shutting down");
//! - its outbox's eviction notice (another delivery found the queue full);
//! - the hello deadline (until it has joined);
//! - the idle deadline, pushed back by every frame the client sends;
//! - the heartbeat, which queues a WebSocket ping.
//!
//! However it ends, the peer leaves its room (others get `peer_left`) and the
//! connection is uncounted — on a panic too, through drop guards.

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use parlor_protocol::relay;
use parlor_protocol::signaling::{
    MAX_NAME_BYTES, SignalingError, is_resume_token, peer_id_for_resume_token,
};
use parlor_protocol::{
    ClientMessage, ErrorCode, PeerId, PeerInfo, RoomId, SUPPORTED_VERSIONS, ServerMessage,
};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite_server::tungstenite::Message;
use tokio_tungstenite_server::tungstenite::protocol::CloseFrame;
use tracing::{Instrument, debug, info};

use crate::limit::{RelayBucket, TokenBucket, take_relay_bytes};
use crate::outbox::Next;
use crate::rooms::{
    DeliveryError, Newcomer, OUTBOX_CAPACITY, Outbound, OutboxReceiver, PeerOutbox,
    RelayDeliveryError, RoomBackend,
};
use crate::state::{App, ConnectionGuard, shutdown_requested};
use crate::upgrade::Socket;

/// WebSocket close codes the server uses (RFC 6455 §7.4.1).
pub mod close_code {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client speaks a protocol version the server does not.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client broke a rule: too many refused messages, no hello in time,
    /// silent for too long, or too slow to read its messages.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The room is full or the server holds too many rooms.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Largest WebSocket message the transport accepts. Far above
/// [`parlor_protocol::signaling::MAX_SIGNALING_MESSAGE_BYTES`] (64 KiB) on
/// purpose: a message between the two limits is answered with a `too_large`
/// error and the connection stays up; only past this one does the transport
/// give up on the connection. 1 MiB bounds what one read can cost.
pub const TRANSPORT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// How long the server waits for its close frame to go out, and then for
/// the client's answering close frame, before it drops the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Longest close reason RFC 6455 allows (125-byte control payload minus the
/// 2-byte code).
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// How many characters of a room id go into logs: enough to tell rooms apart,
/// too few to join one from a log line.
const ROOM_LOG_PREFIX: usize = 6;

/// Runs one upgraded WebSocket to its end. `conn` counts it as open until
/// the returned future ends (or unwinds).
///
/// The socket is split before the future is made, so the future does not
/// carry a copy of the whole socket for its lifetime (every idle
/// connection holds one such future).
pub fn serve(
    socket: Socket,
    app: Arc<App>,
    conn: ConnectionGuard,
) -> impl Future<Output = ()> + Send + 'static {
    let peer_id = app.peer_ids().next_id();
    app.metrics().connection_accepted();
    let span = tracing::info_span!("ws", peer = %peer_id);
    let (sink, stream) = socket.split();
    async move {
        run(sink, stream, app, peer_id).instrument(span).await;
        drop(conn);
    }
}

async fn run(
    sink: SplitSink<Socket, Message>,
    mut stream: SplitStream<Socket>,
    app: Arc<App>,
    peer_id: PeerId,
) {
    debug!("connected");
    let (outbox, rx) = PeerOutbox::channel(OUTBOX_CAPACITY);
    let mut writer = tokio::spawn(write_loop(sink, rx).in_current_span());
    let mut session = Session::new(app, peer_id, outbox);
    let end = session.read_loop(&mut stream).await;
    // Boxed, as is each frame's handling: an idle connection's task then
    // holds only the read loop's own state, not the largest of every step.
    Box::pin(session.finish(end, &mut stream, &mut writer)).await;
}

/// The room a session has joined. Leaves it when dropped without
/// [`Membership::leave`] (only on a panic), so a crashed session never
/// leaves a ghost peer behind.
#[derive(Debug)]
struct Membership {
    backend: Arc<dyn RoomBackend>,
    room: RoomId,
    peer: PeerId,
    conn: u64,
    /// The room's server-relay byte bucket.
    relay_bucket: RelayBucket,
    active: bool,
}

impl Membership {
    async fn leave(mut self) {
        self.backend.leave(&self.room, &self.peer, self.conn).await;
        self.active = false;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let (backend, room, peer, conn) = (
            Arc::clone(&self.backend),
            self.room.clone(),
            self.peer.clone(),
            self.conn,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                backend.leave(&room, &peer, conn).await;
            });
        }
    }
}

/// Why a session ends.
#[derive(Debug)]
enum End {
    /// The client closed, or the transport failed: nothing more to say.
    Gone(String),
    /// The server closes the connection with this code and reason.
    Close { code: u16, reason: String },
}

impl End {
    fn close(code: u16, reason: impl Into<String>) -> Self {
        Self::Close {
            code,
            reason: reason.into(),
        }
    }
}

type Step = ControlFlow<End>;

struct Session {
    app: Arc<App>,
    id: PeerId,
    outbox: PeerOutbox,
    membership: Option<Membership>,
    bucket: TokenBucket,
    strikes: u32,
}

impl Session {
    fn new(app: Arc<App>, id: PeerId, outbox: PeerOutbox) -> Self {
        let config = app.config();
        let bucket = TokenBucket::new(
            config.rate_per_sec,
            config.rate_burst,
            std::time::Instant::now(),
        );
        Self {
            app,
            id,
            outbox,
            membership: None,
            bucket,
            strikes: 0,
        }
    }

    async fn read_loop(&mut self, stream: &mut SplitStream<Socket>) -> End {
        let config = self.app.config().clone();
        let mut shutdown = self.app.shutdown_receiver();
        let outbox = self.outbox.clone();
        let hello_deadline = tokio::time::sleep(config.hello_timeout());
        let idle_deadline = tokio::time::sleep(config.idle_timeout());
        tokio::pin!(hello_deadline, idle_deadline);
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + config.heartbeat(), config.heartbeat());
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);

        loop {
            tokio::select! {
                biased;
                () = shutdown_requested(&mut shutdown) => {
                    return End::close(close_code::GOING_AWAY, "server shutting down");
                }
                () = outbox.evicted() => {
                    return End::close(
                        close_code::POLICY_VIOLATION,
                        format!("too slow: more than {OUTBOX_CAPACITY} messages waiting to be read"),
                    );
                }
                () = &mut hello_deadline, if self.membership.is_none() => {
                    return End::close(
                        close_code::POLICY_VIOLATION,
                        format!("no hello within {} s", config.hello_timeout_secs),
                    );
                }
                () = &mut idle_deadline => {
                    return End::close(
                        close_code::POLICY_VIOLATION,
                        format!("nothing received for {} s", config.idle_timeout_secs),
                    );
                }
                _ = heartbeat.tick() => {
                    if let ControlFlow::Break(end) = self.push(Outbound::Ping) {
                        return end;
                    }
                }
                frame = stream.next() => {
                    let frame = match frame {
                        None => return End::Gone("connection closed".into()),
                        Some(Err(err)) => return End::Gone(format!("transport error: {err}")),
                        Some(Ok(frame)) => frame,
                    };
                    idle_deadline.as_mut().reset(Instant::now() + config.idle_timeout());
                    if let ControlFlow::Break(end) = Box::pin(self.on_frame(frame)).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles one WebSocket frame. Pings and pongs only prove liveness
    /// (tungstenite answers pings itself).
    async fn on_frame(&mut self, frame: Message) -> Step {
        let text = match frame {
            Message::Close(frame) => {
                let reason = match frame {
                    Some(CloseFrame { code, reason }) => {
                        format!("client closed ({} {reason})", u16::from(code))
                    }
                    None => "client closed".to_owned(),
                };
                return ControlFlow::Break(End::Gone(reason));
            }
            // Relay packets are limited by the room's byte bucket, not the
            // message rate: a file crosses the relay as ~64 KiB packets.
            Message::Binary(packet) => return self.relay(packet).await,
            Message::Text(text) => text,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                return ControlFlow::Continue(());
            }
        };
        if !self.bucket.try_take(std::time::Instant::now()) {
            let config = self.app.config();
            let message = format!(
                "rate limit exceeded (at most {} messages per second, bursts of {}); message dropped, \
                 retry in {} ms",
                config.rate_per_sec,
                config.rate_burst,
                self.bucket.wait_time().as_millis().max(1),
            );
            return self.refuse(ErrorCode::RateLimited, message);
        }
        match ClientMessage::from_json(&text) {
            Ok(msg) => self.on_message(msg).await,
            Err(err) => {
                let message = describe_decode_error(&text, &err);
                self.refuse(err.code(), message)
            }
        }
    }

    async fn on_message(&mut self, msg: ClientMessage) -> Step {
        let kind = message_type(&msg);
        self.app.metrics().message(kind);
        let joined = self.membership.is_some();
        match msg {
            ClientMessage::Hello {
                version,
                room,
                name,
                resume,
            } if !joined => {
                debug!(kind, version, "received");
                self.hello(version, room, name, resume).await
            }
            ClientMessage::Hello { .. } => self.refuse(
                ErrorCode::AlreadyJoined,
                "already in a room; open a new connection to join another",
            ),
            _ if !joined => {
                debug!(kind, "received before hello");
                self.refuse(ErrorCode::NotJoined, format!("send hello before {kind}"))
            }
            ClientMessage::Offer { to, sdp } => {
                debug!(kind, %to, sdp_bytes = sdp.len(), "forwarding");
                self.forward(
                    to,
                    ServerMessage::Offer {
                        from: self.id.clone(),
                        sdp,
                    },
                )
                .await
            }
            ClientMessage::Answer { to, sdp } => {
                debug!(kind, %to, sdp_bytes = sdp.len(), "forwarding");
                self.forward(
                    to,
                    ServerMessage::Answer {
                        from: self.id.clone(),
                        sdp,
                    },
                )
                .await
            }
            ClientMessage::Candidate { to, candidate } => {
                debug!(kind, %to, "forwarding");
                self.forward(
                    to,
                    ServerMessage::Candidate {
                        from: self.id.clone(),
                        candidate,
                    },
                )
                .await
            }
            ClientMessage::Signal { to, sealed } => {
                debug!(kind, %to, sealed_bytes = sealed.len(), "forwarding");
                self.forward(
                    to,
                    ServerMessage::Signal {
                        from: self.id.clone(),
                        sealed,
                    },
                )
                .await
            }
            ClientMessage::Pake { to, body } => {
                // Bounded and checked, but never decoded: the server cannot
                // read anything from it (SPAKE2 messages look random).
                if !parlor_protocol::code::is_pake_body(&body) {
                    return self.refuse(
                        ErrorCode::InvalidField,
                        format!(
                            "pake body must be 1 to {} base64url characters",
                            parlor_protocol::code::MAX_PAKE_BODY_CHARS
                        ),
                    );
                }
                debug!(kind, %to, "forwarding");
                self.forward(
                    to,
                    ServerMessage::Pake {
                        from: self.id.clone(),
                        body,
                    },
                )
                .await
            }
            ClientMessage::Ping => self.push(Outbound::Message(Box::new(ServerMessage::Pong))),
            ClientMessage::Pong => ControlFlow::Continue(()),
            // A message type added to the protocol after this server was built.
            _ => self.refuse(
                ErrorCode::Malformed,
                format!("{kind} messages are not supported here"),
            ),
        }
    }

    async fn hello(
        &mut self,
        version: u32,
        room: RoomId,
        name: Option<String>,
        resume: Option<String>,
    ) -> Step {
        if !SUPPORTED_VERSIONS.contains(&version) {
            let mut supported = String::new();
            for (i, v) in SUPPORTED_VERSIONS.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(supported, "{sep}{v}");
            }
            self.send_error(
                ErrorCode::UnsupportedVersion,
                format!("server speaks versions {supported}; client asked for {version}"),
            )?;
            return ControlFlow::Break(End::close(
                close_code::PROTOCOL_ERROR,
                format!("unsupported protocol version {version}"),
            ));
        }
        let name = name.unwrap_or_default();
        if name.len() > MAX_NAME_BYTES {
            return self.refuse(
                ErrorCode::InvalidField,
                format!(
                    "display name is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
                    name.len()
                ),
            );
        }
        if name.chars().any(char::is_control) {
            return self.refuse(
                ErrorCode::InvalidField,
                "display name may not contain control characters",
            );
        }
        // The peer id derives from the resume token, so a peer gets its id
        // back on a new connection, also from a restarted server.
        let resume_token = match resume {
            Some(token) if is_resume_token(&token) => token,
            Some(_) => {
                return self.refuse(
                    ErrorCode::InvalidField,
                    "resume must be the resume_token of an earlier welcome \
                     (43 base64url characters)",
                );
            }
            None => new_resume_token(),
        };
        self.id = peer_id_for_resume_token(&resume_token);
        let conn = self.app.peer_ids().next_conn();
        let newcomer = Newcomer {
            info: PeerInfo {
                id: self.id.clone(),
                name,
            },
            outbox: self.outbox.clone(),
            version,
            ice_servers: self.app.ice_servers_for(&self.id),
            resume_token,
            conn,
        };
        let backend = Arc::clone(self.app.backend());
        match backend.join(&room, newcomer).await {
            Ok(present) => {
                info!(room = room_tag(&room), peers = present.len() + 1, "joined");
                let relay_bucket = self.app.relay_limits().bucket(&room);
                self.membership = Some(Membership {
                    backend,
                    relay_bucket,
                    room,
                    conn,
                    peer: self.id.clone(),
                    active: true,
                });
                ControlFlow::Continue(())
            }
            Err(err) => {
                info!(room = room_tag(&room), %err, "join refused");
                self.send_error(err.code(), err.to_string())?;
                ControlFlow::Break(End::close(close_code::TRY_AGAIN_LATER, err.to_string()))
            }
        }
    }

    /// Sends an offer, answer or candidate to a peer of the same room.
    async fn forward(&mut self, to: PeerId, msg: ServerMessage) -> Step {
        let Some(room) = self.membership.as_ref().map(|m| m.room.clone()) else {
            return self.refuse(ErrorCode::NotJoined, "send hello first");
        };
        // Not strikes: a peer may leave while others still send it candidates.
        if to == self.id {
            return self.send_error(ErrorCode::UnknownPeer, "cannot send to yourself");
        }
        match self.app.backend().send_to(&room, &to, msg).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => self.send_error(ErrorCode::UnknownPeer, err.to_string()),
        }
    }

    /// Forwards one server-relay packet (a binary envelope, see
    /// [`parlor_protocol::relay`]) to its addressee in the same room,
    /// rewritten to name the sender. The sealed body is passed on unread.
    /// Waiting for the room's byte bucket and for room in the addressee's
    /// queue stops this session reading its socket: that is the relay's
    /// backpressure on a fast sender.
    async fn relay(&mut self, packet: Bytes) -> Step {
        let Some(membership) = self.membership.as_ref() else {
            return self.refuse(ErrorCode::NotJoined, "send hello before relaying");
        };
        if self.app.config().no_server_relay {
            return self.refuse(
                ErrorCode::RelayUnavailable,
                "the server relay is turned off on this server",
            );
        }
        let (to, body) = match relay::decode_envelope(&packet) {
            Ok((to, body)) => (PeerId(to.to_owned()), body),
            Err(err) => {
                return self.refuse(ErrorCode::Malformed, format!("bad relay packet: {err}"));
            }
        };
        if to == self.id {
            return self.send_error(ErrorCode::UnknownPeer, "cannot relay to yourself");
        }
        let forwarded = Bytes::from(relay::encode_envelope(&self.id, body));
        let (room, bucket) = (
            membership.room.clone(),
            Arc::clone(&membership.relay_bucket),
        );
        // Tiny packets cost as much as 1 KiB, which bounds the packet rate too.
        take_relay_bytes(&bucket, forwarded.len().max(1024) as u64).await;
        let len = forwarded.len();
        match self.app.backend().relay_to(&room, &to, forwarded).await {
            Ok(()) => {
                self.app.metrics().relayed(len);
                ControlFlow::Continue(())
            }
            Err(err @ RelayDeliveryError::UnknownPeer(_)) => {
                self.send_error(ErrorCode::UnknownPeer, err.to_string())
            }
            Err(err) => self.send_error(ErrorCode::RelayUnavailable, err.to_string()),
        }
    }

    /// Queues an item on this connection's own outbox.
    fn push(&self, item: Outbound) -> Step {
        match self.outbox.push(item) {
            Ok(()) => ControlFlow::Continue(()),
            Err(DeliveryError::TooSlow) => ControlFlow::Break(End::close(
                close_code::POLICY_VIOLATION,
                format!("too slow: more than {OUTBOX_CAPACITY} messages waiting to be read"),
            )),
            Err(DeliveryError::Gone) => ControlFlow::Break(End::Gone("writer stopped".into())),
        }
    }

    /// Answers with an `error` message.
    fn send_error(&self, code: ErrorCode, message: impl Into<String>) -> Step {
        let message = message.into();
        debug!(code = code.as_str(), reason = %message, "refused");
        self.app.metrics().error(code);
        self.push(Outbound::Message(Box::new(ServerMessage::Error {
            code,
            message,
        })))
    }

    /// Answers with an `error` message and counts a strike; past
    /// `--max-strikes` the connection is closed.
    fn refuse(&mut self, code: ErrorCode, message: impl Into<String>) -> Step {
        self.send_error(code, message)?;
        self.strikes += 1;
        if self.strikes > self.app.config().max_strikes {
            return ControlFlow::Break(End::close(
                close_code::POLICY_VIOLATION,
                format!("too many refused messages ({})", self.strikes),
            ));
        }
        ControlFlow::Continue(())
    }

    /// Leaves the room, sends the close frame if the server is the one
    /// closing, and waits (boundedly) for the writer and the client.
    async fn finish(self, end: End, stream: &mut SplitStream<Socket>, writer: &mut JoinHandle<()>) {
        let Self {
            membership, outbox, ..
        } = self;
        let why = match &end {
            End::Gone(why) => why.clone(),
            End::Close { code, reason } => format!("closed by server ({code} {reason})"),
        };
        match membership {
            Some(membership) => {
                let room = room_tag(&membership.room).to_owned();
                membership.leave().await;
                info!(room, %why, "left");
            }
            None => debug!(%why, "disconnected before joining"),
        }
        // A JoinHandle must not be polled again once it has completed.
        let mut writer_done = false;
        if let End::Close { code, reason } = end {
            let reason = truncate_reason(reason);
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                if outbox
                    .push_wait(Outbound::Close { code, reason })
                    .await
                    .is_ok()
                {
                    let _ = (&mut *writer).await;
                    writer_done = true;
                }
            })
            .await;
        }
        // Without its last sender the writer flushes, closes and stops.
        drop(outbox);
        // Reading on lets tungstenite answer (or receive) the close frame.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = stream.next().await {}
            if !writer_done {
                let _ = (&mut *writer).await;
            }
        })
        .await;
        writer.abort();
    }
}

/// Drains the outbox onto the socket until a close item, the end of the
/// queue, or a write error. Control messages come out first, so a burst of
/// relayed file data does not delay an offer or the close frame.
async fn write_loop(mut sink: SplitSink<Socket, Message>, mut rx: OutboxReceiver) {
    while let Some(next) = rx.next().await {
        let result = match next {
            Next::Relay(packet) => sink.feed(Message::binary(packet)).await,
            Next::Control(Outbound::Message(msg)) => sink.feed(Message::text(msg.to_json())).await,
            Next::Control(Outbound::Ping) => sink.feed(Message::Ping(Bytes::new())).await,
            Next::Control(Outbound::Close { code, reason }) => {
                let close = Message::Close(Some(CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                }));
                if let Err(err) = sink.send(close).await {
                    debug!(%err, "sending close frame failed");
                }
                return;
            }
        };
        // Flush once the queue is empty, not per message: a burst of
        // candidates goes out in few writes.
        let result = match result {
            Ok(()) if rx.is_empty() => sink.flush().await,
            other => other,
        };
        if let Err(err) = result {
            debug!(%err, "write failed");
            return;
        }
    }
    let _ = sink.close().await;
}

/// 32 random bytes, base64url: a fresh resume token.
fn new_resume_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The message's `type`, as in JSON and in the metrics label.
fn message_type(msg: &ClientMessage) -> &'static str {
    match msg {
        ClientMessage::Hello { .. } => "hello",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Signal { .. } => "signal",
        ClientMessage::Pake { .. } => "pake",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Ping => "ping",
        ClientMessage::Pong => "pong",
        _ => "other",
    }
}

/// A human-friendly reason for a message that did not decode. A `hello` with
/// a bad room id is the likeliest case a person causes (a mangled invite
/// link), so it gets its own explanation instead of serde's.
fn describe_decode_error(text: &str, err: &SignalingError) -> String {
    if let SignalingError::Malformed(_) = err
        && let Ok(serde_json::Value::Object(fields)) =
            serde_json::from_str::<serde_json::Value>(text)
        && fields.get("type").and_then(serde_json::Value::as_str) == Some("hello")
        && let Some(serde_json::Value::String(room)) = fields.get("room")
        && let Err(room_err) = RoomId::parse(room)
    {
        return format!("invalid room id in hello: {room_err}");
    }
    err.to_string()
}

/// The start of a room id, for logs.
fn room_tag(room: &RoomId) -> &str {
    let id = room.as_str();
    id.get(..ROOM_LOG_PREFIX).unwrap_or(id)
}

/// Cuts a close reason to what fits in a close frame, at a char boundary.
fn truncate_reason(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON_BYTES {
        let mut end = MAX_CLOSE_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_room_in_hello_is_explained() {
        let text = r#"{"type":"hello","version":1,"room":"short"}"#;
        let err = ClientMessage::from_json(text).err();
        let Some(err) = err else {
            panic!("a short room id must not decode")
        };
        let message = describe_decode_error(text, &err);
        assert!(
            message.starts_with("invalid room id in hello: room id must be 16 to 64"),
            "{message}"
        );
        let text = r#"{"type":"nope"}"#;
        let Some(err) = ClientMessage::from_json(text).err() else {
            panic!("must not decode")
        };
        assert!(
            describe_decode_error(text, &err).starts_with("malformed message: unknown variant")
        );
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        assert_eq!(truncate_reason("é".repeat(100)).len(), 122);
        assert_eq!(truncate_reason("short".into()), "short");
    }
}
