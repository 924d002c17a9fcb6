//! The peer's driver: one loop that owns every piece of state and reacts to
//! signaling messages, WebRTC events, stdin lines and timers by feeding the
//! sans-IO state machines of `parlor-core` and carrying out what they ask
//! (send a frame, show a message, read or write file bytes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
pub use parlor_core::room::PathPolicy;
use parlor_core::room::{
    LinkId, PathInput, PathOutput, PathSettings, Paths, Route, TransferKey, TransferOutput,
    Transfers,
};
use parlor_core::{ChatOutput, ChatSession, MessageStatus, Millis, TransferConfig, TransferError};
use parlor_protocol::{
    ClientMessage, FileOffer, Frame, IceServer, MessageId, PeerId, PeerSignal, RelayCipher,
    RelayPayload, RoomKey, ServerMessage, SignalCipher, TransferId,
};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines, Stdin};
use tokio::sync::mpsc;
use webrtc::api::API;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;

use crate::files::{self, Outgoing, PartFile};
use crate::report::{Event, Reporter, hex};
use crate::rtc::{self, Channel, LinkSetup, PeerEvent, PeerLink};
use crate::signal::{Incoming, Joined, RelayBuffer, Signaling};
use crate::state::{Partial, RoomState, Saved};

/// WebRTC events buffered before the data-channel readers wait for the driver.
const EVENT_QUEUE: usize = 1024;
/// After stdin closes, how long `chat` waits for its last messages to be acked.
const CHAT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// `receive` ends this long after its last transfer finished when no new
/// offer came meanwhile. A CLI sender leaves when done (which ends `receive`
/// at once), but a browser stays in the room; and a sender offers its next
/// file within a round trip of the previous one being verified.
const RECEIVE_IDLE_EXIT: Duration = Duration::from_secs(3);
/// A WebRTC link that is not connected this long after it was created (or
/// after an ICE restart) falls back to the server relay.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);
/// A WebRTC link whose file channel stalls and from which nothing arrives
/// for this long falls back to the server relay, even while ICE says it is
/// connected (after a long outage webrtc-rs's SCTP association can stay
/// stuck on a path that works again).
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `send`/`receive`/`chat` keep trying to reach a lost server when
/// no peer is connected (with peers connected, they keep trying: data
/// channels work without the server).
const OFFLINE_GIVE_UP: Duration = Duration::from_secs(60);
/// Longest wait between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// How long `send` waits for a receiver that left mid-transfer to come back
/// (restarted, or back from a network change) before giving up.
const RETURN_WINDOW: Duration = Duration::from_secs(5 * 60);

/// What the driver starts from and keeps on disk (see [`crate::state`]).
#[derive(Debug)]
pub struct Persisted {
    /// The room's state file; `None` with `--ephemeral`.
    pub store: Option<RoomState>,
    /// The chat session, restored from `store` or fresh.
    pub chat: ChatSession,
}

/// The current Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The room as this peer reaches it: where to (re)join, under which name,
/// and the key (from the invite link) that seals what goes through the
/// server.
#[derive(Debug, Clone)]
pub struct RoomAccess {
    /// The signaling WebSocket URL.
    pub ws_url: String,
    /// TLS settings for a `wss://` URL.
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// The room.
    pub room: parlor_protocol::RoomId,
    /// Our display name.
    pub name: String,
    /// The room key.
    pub key: RoomKey,
}

/// What this run of the CLI is for.
#[derive(Debug)]
pub enum Mode {
    /// Send `queue` to the first peer whose file channel opens, one by one.
    Send {
        queue: VecDeque<Outgoing>,
        target: Option<PeerId>,
        active: bool,
    },
    /// Receive whatever is offered into `out_dir`.
    Receive {
        out_dir: PathBuf,
        received: usize,
        failed: usize,
        senders: HashSet<PeerId>,
    },
    /// Chat line by line on stdin/stdout.
    Chat,
}

/// The file behind one of our transfers (the decisions are [`Transfers`]').
struct OutgoingFile {
    file: std::fs::File,
    info: Outgoing,
    /// Chunk bytes handed to the transport, re-sends included.
    bytes_sent: u64,
}

/// The `.part` file behind an incoming transfer, and the offered name.
struct IncomingFile {
    part: PartFile,
    name: String,
}

/// The running peer.
pub struct Room {
    mode: Mode,
    report: Reporter,
    signaling: Signaling,
    signaling_up: bool,
    api: API,
    ice_servers: Vec<IceServer>,
    names: HashMap<PeerId, String>,
    /// The path to each peer: which link is current, when to fall back.
    paths: Paths,
    /// The WebRTC connections [`Self::paths`] asked for, by identity.
    links: HashMap<LinkId, PeerLink>,
    chat: ChatSession,
    /// Every transfer of the room: routing, resets, away peers, acks.
    transfers: Transfers,
    /// The files our transfers read.
    outgoing: HashMap<TransferId, OutgoingFile>,
    /// The `.part` files incoming transfers write.
    incoming: HashMap<(PeerId, TransferId), IncomingFile>,
    events_tx: mpsc::Sender<PeerEvent>,
    events_rx: mpsc::Receiver<PeerEvent>,
    start: Instant,
    config: TransferConfig,
    /// Our peer id (server-relay packets are bound to it).
    me: PeerId,
    /// Seals and opens server-relay packets with the room key.
    relay_cipher: RelayCipher,
    /// Seals and opens offers, answers and candidates with the room key.
    signal_cipher: SignalCipher,
    relay_buffer: Arc<RelayBuffer>,
    /// How to join again, and the token that keeps our peer id.
    access: RoomAccess,
    resume_token: Option<String>,
    /// Reconnecting to the server, when it is lost.
    reconnect: Option<tokio::task::JoinHandle<(Signaling, Joined)>>,
    /// Give up if still offline with nobody connected by then.
    offline_deadline: Option<tokio::time::Instant>,
    stdin: Option<Lines<BufReader<Stdin>>>,
    flush_deadline: Option<tokio::time::Instant>,
    idle_deadline: Option<tokio::time::Instant>,
    exit: Option<Result<()>>,
    /// Where the resume token, chat state and partial files are kept.
    store: Option<RoomState>,
    /// The chat generation last written to `store`.
    saved_generation: Option<u64>,
    /// Files being received, as recorded in `store`.
    partials: Vec<Partial>,
    /// `send`: the receiver left mid-way and is waited for (at most
    /// [`RETURN_WINDOW`], see [`PathOutput::AwayExpired`]).
    awaiting_return: bool,
}

impl Room {
    /// Sets up the driver after joining; offers a connection to every peer present.
    pub async fn start(
        mode: Mode,
        config: TransferConfig,
        policy: PathPolicy,
        access: RoomAccess,
        report: Reporter,
        persisted: Persisted,
        connection: (Signaling, Joined),
    ) -> Result<Self> {
        let (signaling, joined) = connection;
        let Persisted { store, chat } = persisted;
        let partials = store
            .as_ref()
            .map(|s| s.saved.partials.clone())
            .unwrap_or_default();
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let relay_buffer = signaling.relay_buffer();
        relay_buffer.set_low_watermark(config.low_watermark);
        let stdin = matches!(mode, Mode::Chat).then(|| BufReader::new(tokio::io::stdin()).lines());
        let mut room = Self {
            mode,
            report,
            signaling,
            signaling_up: true,
            api: rtc::build_api(),
            ice_servers: joined.ice_servers,
            names: HashMap::new(),
            paths: Paths::new(PathSettings {
                connect_timeout: millis(CONNECT_TIMEOUT),
                stall_timeout: millis(STALL_TIMEOUT),
                return_window: millis(RETURN_WINDOW),
                ..PathSettings::new(policy, rand::random())
            }),
            links: HashMap::new(),
            chat,
            transfers: Transfers::new(config.clone()),
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            events_tx,
            events_rx,
            start: Instant::now(),
            config,
            me: joined.peer_id.clone(),
            relay_cipher: RelayCipher::new(&access.key, rand::random()),
            signal_cipher: SignalCipher::new(&access.key, rand::random()),
            relay_buffer,
            access,
            resume_token: joined.resume_token.clone(),
            reconnect: None,
            offline_deadline: None,
            stdin,
            flush_deadline: None,
            idle_deadline: None,
            exit: None,
            store,
            saved_generation: None,
            partials,
            awaiting_return: false,
        };
        room.persist();
        room.feed(PathInput::Joined {
            me: joined.peer_id,
            peers: joined.peers.iter().map(|p| p.id.clone()).collect(),
        });
        room.drive().await;
        for peer in joined.peers {
            room.chat.add_peer(peer.id.clone());
            room.names.insert(peer.id, peer.name);
        }
        Ok(room)
    }

    /// Runs until the mode's work is done (or fails).
    pub async fn run(mut self) -> Result<()> {
        loop {
            if let Some(result) = self.exit.take() {
                for link in self.links.values() {
                    link.close().await;
                }
                return result;
            }
            if let Mode::Send {
                active: false,
                target: Some(_),
                ..
            } = self.mode
            {
                self.start_next_file().await;
                continue;
            }
            let chat_timer = self
                .chat
                .poll_timeout()
                .map(|t| tokio::time::Instant::from_std(self.start + Duration::from_millis(t)));
            let path_timer = self
                .paths
                .poll_timeout()
                .map(|t| tokio::time::Instant::from_std(self.start + Duration::from_millis(t)));
            let relay_buffer = Arc::clone(&self.relay_buffer);
            tokio::select! {
                msg = self.signaling.recv(), if self.signaling_up => match msg {
                    Some(Incoming::Message(msg)) => self.on_signal(msg).await,
                    Some(Incoming::Relay(packet)) => self.on_relay_packet(&packet).await,
                    None => self.on_signaling_lost(),
                },
                () = relay_buffer.drained() => self.on_relay_drained().await,
                rejoined = next_reconnect(&mut self.reconnect) => self.on_rejoined(rejoined).await,
                () = sleep_until(self.offline_deadline) => self.on_offline_too_long(),
                () = sleep_until(path_timer) => {
                    let now = self.now();
                    self.paths.handle_timeout(now);
                }
                Some(event) = self.events_rx.recv() => self.on_peer_event(event).await,
                line = next_line(&mut self.stdin) => self.on_stdin(line).await,
                () = sleep_until(chat_timer) => {
                    let now = self.now();
                    self.chat.handle_timeout(now);
                    self.flush_chat().await;
                }
                () = sleep_until(self.flush_deadline) => self.exit = Some(Ok(())),
                () = sleep_until(self.idle_deadline) => self.on_receive_idle(),
            }
            self.drive().await;
        }
    }

    fn now(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }

    fn name(&self, peer: &PeerId) -> String {
        self.names.get(peer).cloned().unwrap_or_default()
    }

    async fn signal(&mut self, msg: ClientMessage) {
        if self.signaling.send(msg).await.is_err() {
            self.on_signaling_lost();
        }
    }

    /// Sends an offer, answer or candidate to `to`, sealed with the room key.
    async fn send_signal(&mut self, to: &PeerId, signal: PeerSignal) {
        let sealed = self.signal_cipher.seal(&self.me, to, &signal);
        self.signal(ClientMessage::Signal {
            to: to.clone(),
            sealed,
        })
        .await;
    }

    /// Feeds one input to the path machine (its outputs are carried out by
    /// [`Self::drive`], after every event of the run loop).
    fn feed(&mut self, input: PathInput) {
        let now = self.now();
        self.paths.handle(input, now);
    }

    /// Carries out everything the path and transfer machines ask,
    /// including what the handling of their outputs fed back.
    async fn drive(&mut self) {
        loop {
            if let Some(out) = self.paths.poll_output() {
                self.on_path_output(out).await;
            } else if let Some(out) = self.transfers.poll_output() {
                self.on_transfer_output(out).await;
            } else {
                return;
            }
        }
    }

    async fn on_path_output(&mut self, out: PathOutput) {
        let buffered = match &out {
            PathOutput::FilesUp { peer, .. } => self.file_buffered(peer).await,
            _ => 0,
        };
        let now = self.now();
        self.transfers.on_path(&out, buffered, now);
        match out {
            PathOutput::OpenLink {
                peer,
                link,
                offerer,
            } => {
                let setup = LinkSetup {
                    api: &self.api,
                    ice_servers: &self.ice_servers,
                    low_watermark: self.config.low_watermark as usize,
                    relay_only: self.paths.settings().policy == PathPolicy::TurnOnly,
                    events: &self.events_tx,
                };
                let made = PeerLink::new(&setup, peer.clone(), link, offerer).await;
                match made {
                    Ok(made) => {
                        self.links.insert(link, made);
                    }
                    Err(err) => {
                        self.report.emit(Event::Error {
                            message: format!("connection to {peer}: {err:#}"),
                        });
                        self.feed(PathInput::LinkFailed { link });
                    }
                }
            }
            PathOutput::CloseLink { link } => {
                if let Some(link) = self.links.remove(&link) {
                    link.close().await;
                }
            }
            PathOutput::CreateOffer { link, ice_restart } => {
                let Some(pc) = self.links.get(&link) else {
                    return;
                };
                let peer = pc.peer().clone();
                match pc.create_offer(ice_restart).await {
                    Ok(sdp) => self.send_signal(&peer, PeerSignal::Offer { sdp }).await,
                    Err(err) => {
                        tracing::info!(%peer, err = %format!("{err:#}"), ice_restart, "no offer");
                        self.feed(PathInput::LinkFailed { link });
                    }
                }
            }
            PathOutput::AcceptOffer { link, sdp } => {
                let Some(pc) = self.links.get_mut(&link) else {
                    return;
                };
                let peer = pc.peer().clone();
                match pc.accept_offer(sdp).await {
                    Ok(sdp) => self.send_signal(&peer, PeerSignal::Answer { sdp }).await,
                    Err(err) => {
                        self.report.emit(Event::Error {
                            message: format!("offer from {peer}: {err:#}"),
                        });
                        self.feed(PathInput::LinkFailed { link });
                    }
                }
            }
            PathOutput::AcceptAnswer { link, sdp } => {
                if let Some(pc) = self.links.get_mut(&link)
                    && let Err(err) = pc.accept_answer(sdp).await
                {
                    let message = format!("answer from {}: {err:#}", pc.peer());
                    self.report.emit(Event::Error { message });
                    self.feed(PathInput::LinkFailed { link });
                }
            }
            PathOutput::AddCandidate { link, candidate } => {
                if let Some(pc) = self.links.get_mut(&link) {
                    pc.add_candidate(candidate).await;
                }
            }
            PathOutput::Signal { to, signal } => self.send_signal(&to, signal).await,
            PathOutput::Relay { to, payload } => {
                let envelope = self.relay_cipher.seal(&self.me, &to, &payload);
                if self.signaling.send_relay(envelope).await.is_err() {
                    self.on_signaling_lost();
                }
            }
            PathOutput::Connected { peer, route } => {
                let path = match route {
                    Route::ServerRelay => "server-relay",
                    Route::WebRtc(link) => match self.links.get(&link) {
                        Some(pc) => pc.path().await,
                        None => return,
                    },
                };
                self.report.emit(Event::Connected {
                    peer_id: &peer.0,
                    path,
                });
            }
            PathOutput::Disconnected { peer } => {
                tracing::info!(%peer, "connection failed; restarting ICE");
            }
            PathOutput::ChatUp { peer } => {
                let now = self.now();
                self.chat.link_up(&peer, now);
                self.flush_chat().await;
            }
            PathOutput::ChatDown { peer } => self.chat.link_down(&peer),
            PathOutput::FilesUp { peer, .. } => {
                if let Mode::Send { target, .. } = &mut self.mode {
                    if target.is_none() {
                        *target = Some(peer.clone());
                    }
                    if target.as_ref() == Some(&peer) {
                        self.awaiting_return = false;
                    }
                }
            }
            PathOutput::PeerRestarted { peer } => {
                tracing::info!(%peer, "peer restarted under the same id: new connection");
            }
            PathOutput::FellToRelay { peer, why } => {
                tracing::info!(%peer, why, "switching to the server relay");
            }
            PathOutput::Refused { peer, why } => self.on_refused(&peer, &why),
            PathOutput::Gone { peer, .. } => self.on_peer_gone(&peer).await,
            PathOutput::Returned { peer } => tracing::info!(%peer, "peer is back"),
            PathOutput::AwayExpired { peer } => self.on_return_timeout(&peer),
            PathOutput::StartedOver => self.start_over(),
        }
    }

    fn on_signaling_lost(&mut self) {
        if !self.signaling_up {
            return;
        }
        self.signaling_up = false;
        self.report.emit(Event::Error {
            message: "lost the connection to the Parlor server; reconnecting".into(),
        });
        // Relayed links go down; established data channels keep working.
        self.feed(PathInput::SignalingLost);
        self.offline_deadline = Some(tokio::time::Instant::now() + OFFLINE_GIVE_UP);
        self.start_reconnect();
    }

    /// Rejoins in the background with back-off, under our old peer id.
    fn start_reconnect(&mut self) {
        if self.reconnect.is_some() {
            return;
        }
        let rejoin = self.access.clone();
        let token = self.resume_token.clone();
        self.reconnect = Some(tokio::spawn(async move {
            let mut delay = Duration::from_millis(250);
            loop {
                tokio::time::sleep(delay).await;
                match Signaling::join(
                    &rejoin.ws_url,
                    &rejoin.tls,
                    &rejoin.room,
                    &rejoin.name,
                    token.as_deref(),
                )
                .await
                {
                    Ok(joined) => return joined,
                    Err(err) => {
                        tracing::info!(err = %format!("{err:#}"), "reconnecting to the server");
                        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                    }
                }
            }
        }));
    }

    /// Still offline and nobody connected: give up.
    fn on_offline_too_long(&mut self) {
        self.offline_deadline = None;
        if self.signaling_up {
            return;
        }
        if !self.paths.any_up() {
            self.exit = Some(Err(anyhow!(
                "lost the connection to the Parlor server and could not reconnect within {} s",
                OFFLINE_GIVE_UP.as_secs()
            )));
        } else {
            self.offline_deadline = Some(tokio::time::Instant::now() + OFFLINE_GIVE_UP);
        }
    }

    /// Back in the room: the path machine keeps links that are up, offers
    /// to peers without one and re-sends relayed peers a Switch; under a
    /// new peer id it starts over ([`Self::start_over`]) before the new
    /// resume token is saved with the (new) chat state.
    async fn on_rejoined(&mut self, rejoined: (Signaling, Joined)) {
        let (signaling, joined) = rejoined;
        self.reconnect = None;
        self.offline_deadline = None;
        self.signaling = signaling;
        self.signaling_up = true;
        self.relay_buffer = self.signaling.relay_buffer();
        self.relay_buffer
            .set_low_watermark(self.config.low_watermark);
        self.me = joined.peer_id.clone();
        let peers: Vec<&str> = joined.peers.iter().map(|p| p.id.0.as_str()).collect();
        self.report.emit(Event::Joined {
            room: self.access.room.as_str(),
            peer_id: &joined.peer_id.0,
            peers,
        });
        self.feed(PathInput::Joined {
            me: joined.peer_id.clone(),
            peers: joined.peers.iter().map(|p| p.id.clone()).collect(),
        });
        self.drive().await;
        for peer in joined.peers {
            self.chat.add_peer(peer.id.clone());
            self.names.insert(peer.id, peer.name);
        }
        if joined.resume_token.is_some() && joined.resume_token != self.resume_token {
            self.resume_token = joined.resume_token;
            self.persist();
        }
    }

    /// We rejoined under a new peer id (the old one expired): every peer we
    /// knew is gone for us and a new identity numbers its messages afresh;
    /// our transfers are offered again (receivers resume from their partial
    /// files).
    fn start_over(&mut self) {
        let old: Vec<PeerId> = self.names.keys().cloned().collect();
        for peer in old {
            let name = self.name(&peer);
            self.report.emit(Event::PeerLeft {
                peer_id: &peer.0,
                name: &name,
            });
        }
        self.names.clear();
        self.chat = ChatSession::new();
        self.saved_generation = None;
        if let Mode::Send { target, .. } = &mut self.mode {
            *target = None;
        }
        self.check_receive_done();
    }

    async fn on_signal(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::PeerJoined { peer } => {
                self.report.emit(Event::PeerJoined {
                    peer_id: &peer.id.0,
                    name: &peer.name,
                });
                self.chat.add_peer(peer.id.clone());
                self.feed(PathInput::PeerJoined {
                    peer: peer.id.clone(),
                });
                self.names.insert(peer.id, peer.name);
            }
            ServerMessage::PeerLeft { peer_id } => self.feed(PathInput::PeerLeft { peer: peer_id }),
            ServerMessage::Signal { from, sealed } => {
                if self.paths.is_refused(&from) {
                    return;
                }
                match self.signal_cipher.open(&self.me, &from, &sealed) {
                    Ok(signal) => {
                        self.chat.add_peer(from.clone());
                        self.feed(PathInput::Signal { from, signal });
                    }
                    Err(err) => self.feed(PathInput::Refuse {
                        peer: from,
                        why: err.to_string(),
                    }),
                }
            }
            ServerMessage::Offer { from, .. }
            | ServerMessage::Answer { from, .. }
            | ServerMessage::Candidate { from, .. } => {
                // The server (or an old client) sent SDP in the clear; the
                // room key cannot vouch for it.
                tracing::warn!(%from, "unsealed signaling refused");
                self.report.emit(Event::Error {
                    message: format!(
                        "refused unsealed signaling from {from}: this peer only accepts offers, \
                         answers and candidates sealed with the invite key"
                    ),
                });
            }
            ServerMessage::Error { code, message } => {
                self.report.emit(Event::Error {
                    message: format!("server: {message} ({})", code.as_str()),
                });
            }
            ServerMessage::Ping => self.signal(ClientMessage::Pong).await,
            _ => {}
        }
    }

    /// Signaling from `peer` was tampered with (or its DTLS certificate is
    /// not the one its sealed SDP announced): warn; it is never connected to
    /// again (the path machine closed its link), and transfers with it fail
    /// (see [`Transfers::on_path`]).
    fn on_refused(&mut self, peer: &PeerId, why: &str) {
        tracing::warn!(%peer, why, "refusing peer");
        self.report.emit(Event::Error {
            message: format!("security warning: {why}"),
        });
        if let Mode::Receive { senders, .. } = &mut self.mode {
            senders.remove(peer);
        }
        self.check_receive_done();
    }

    async fn on_peer_event(&mut self, event: PeerEvent) {
        let link = event.link();
        // Events of a link that is no longer current (closed, replaced) are
        // dropped: they must not touch the peer's new path.
        let Some(peer) = self.paths.peer_of(link).cloned() else {
            return;
        };
        match event {
            PeerEvent::LocalCandidate { candidate, .. } => {
                self.feed(PathInput::LocalCandidate { link, candidate });
            }
            PeerEvent::Open { channel, .. } => self.feed(PathInput::ChannelOpen { link, channel }),
            PeerEvent::Closed { channel, .. } => {
                self.feed(PathInput::ChannelClosed { link, channel });
            }
            PeerEvent::Message { channel, data, .. } => self.on_frame(peer, channel, &data).await,
            PeerEvent::BufferedLow { .. } => {
                let amount = self.file_buffered(&peer).await;
                let now = self.now();
                self.transfers.buffered(&peer, amount, now);
            }
            PeerEvent::State { state, .. } => match state {
                RTCPeerConnectionState::Connected => {
                    match self.check_fingerprint(link, &peer).await {
                        Ok(()) => self.feed(PathInput::LinkConnected { link }),
                        Err(why) => self.feed(PathInput::Refuse { peer, why }),
                    }
                }
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    self.report.emit(Event::Disconnected {
                        peer_id: &peer.0,
                        state: &state.to_string(),
                    });
                    self.feed(if state == RTCPeerConnectionState::Failed {
                        PathInput::LinkFailed { link }
                    } else {
                        PathInput::LinkClosed { link }
                    });
                }
                _ => {}
            },
        }
    }

    /// Checks that the DTLS certificate `peer` presented on `link` is the
    /// one whose fingerprint its sealed SDP announced. (webrtc-rs checks
    /// this against the remote description too; checking here ties the
    /// connection to the sealed, authenticated SDP explicitly.)
    async fn check_fingerprint(&self, link: LinkId, peer: &PeerId) -> Result<(), String> {
        let Some((algorithm, expected)) = self.paths.expected_fingerprint(peer) else {
            return Err(format!(
                "{peer}'s sealed SDP announced no DTLS fingerprint: refusing the connection"
            ));
        };
        let Some(pc) = self.links.get(&link) else {
            return Ok(());
        };
        match pc.remote_certificate_fingerprint(algorithm).await {
            Some(actual) if &actual == expected => Ok(()),
            Some(_) => Err(format!(
                "the DTLS certificate of {peer} is not the one its sealed SDP announced: \
                 someone is in the middle; refusing the connection"
            )),
            None => Err(format!(
                "cannot check {peer}'s DTLS certificate ({algorithm}): refusing the connection"
            )),
        }
    }

    /// Sends an encoded frame to `peer` on whichever path it is on.
    async fn transmit(&mut self, peer: &PeerId, channel: Channel, frame: Vec<u8>) -> Result<()> {
        match self.paths.route(peer) {
            Some(Route::ServerRelay) => {
                let payload = RelayPayload::Frame { channel, frame };
                let envelope = self.relay_cipher.seal(&self.me, peer, &payload);
                self.signaling.send_relay(envelope).await
            }
            Some(Route::WebRtc(link)) => match self.links.get(&link) {
                Some(pc) => pc.send(channel, frame).await,
                None => bail!("no connection to {peer}"),
            },
            None => bail!("no connection to {peer}"),
        }
    }

    /// Bytes sent to `peer`'s file path but not yet gone: the relay's queue
    /// towards the server, or the data channel's buffered amount.
    async fn file_buffered(&self, peer: &PeerId) -> u64 {
        match self.paths.route(peer) {
            Some(Route::ServerRelay) => self.relay_buffer.queued(),
            Some(Route::WebRtc(link)) => match self.links.get(&link) {
                Some(pc) => pc.buffered_amount(Channel::File).await,
                None => 0,
            },
            None => 0,
        }
    }

    /// A relay packet from the server: open it and tell the path machine
    /// (the first one from a peer moves it to the relay too); a frame it
    /// carries is handled once the path is up.
    async fn on_relay_packet(&mut self, packet: &[u8]) {
        let (from, payload) = match self.relay_cipher.open(&self.me, packet) {
            Ok(opened) => opened,
            Err(err) => {
                tracing::warn!(%err, "dropped a server-relay packet");
                self.report.emit(Event::Error {
                    message: format!("dropped a server-relay packet: {err}"),
                });
                return;
            }
        };
        if self.paths.is_refused(&from) {
            return;
        }
        self.chat.add_peer(from.clone());
        let now = self.now();
        let handle = self.paths.relay_packet(&from, &payload, now);
        self.drive().await;
        if handle && let RelayPayload::Frame { channel, frame } = payload {
            self.on_frame(from, channel, &frame).await;
        }
    }

    async fn on_relay_drained(&mut self) {
        let amount = self.relay_buffer.queued();
        let now = self.now();
        for peer in self.transfers.receiving_peers() {
            if self.paths.route(&peer) == Some(Route::ServerRelay) {
                self.transfers.buffered(&peer, amount, now);
            }
        }
    }

    async fn on_frame(&mut self, peer: PeerId, channel: Channel, data: &[u8]) {
        let frame = match Frame::decode(data) {
            Ok(frame) => frame,
            Err(err) => {
                // A bad frame is rejected with its reason; the link goes on.
                tracing::warn!(%peer, ?channel, %err, "rejected frame");
                self.report.emit(Event::Error {
                    message: format!("rejected frame from {peer}: {err}"),
                });
                return;
            }
        };
        if frame == Frame::Typing {
            return; // The CLI shows no typing indicator.
        }
        if frame.is_chat() {
            let now = self.now();
            if let Err(err) = self.chat.handle_frame(&peer, frame, now) {
                tracing::warn!(%peer, %err, "chat frame refused");
            }
            self.flush_chat().await;
            return;
        }
        let now = self.now();
        let id = frame.transfer_id();
        if !self.transfers.handle_frame(&peer, frame, now) {
            tracing::debug!(%peer, ?id, "file frame for no transfer of ours ignored");
        }
    }

    /// `peer` offers a file: `receive` accepts it (from a `.part` file an
    /// earlier run left, if any); other modes decline.
    fn on_offer(&mut self, peer: PeerId, offer: FileOffer) {
        let id = offer.transfer;
        self.report.emit(Event::FileOffered {
            peer_id: &peer.0,
            transfer: id.to_string(),
            name: &offer.name,
            size: offer.size,
            mime: &offer.mime,
        });
        let now = self.now();
        let Mode::Receive {
            out_dir, senders, ..
        } = &mut self.mode
        else {
            let why = "this peer is not receiving files".to_owned();
            return self.transfers.decline(&peer, id, why, now);
        };
        senders.insert(peer.clone());
        let out_dir = out_dir.clone();
        let key = (peer.clone(), id);
        if let Some((part, offset, prefix)) = self.reopen_partial(&offer) {
            self.report.emit(Event::Resuming {
                transfer: id.to_string(),
                name: &offer.name,
                path: &part.part_path.to_string_lossy(),
                offset,
            });
            self.incoming.insert(
                key,
                IncomingFile {
                    part,
                    name: offer.name,
                },
            );
            return self.transfers.accept_from(&peer, id, offset, prefix, now);
        }
        match files::create_part(&out_dir, &offer.name) {
            Ok(part) => {
                self.partials.push(Partial {
                    hash: hex(&offer.hash),
                    size: offer.size,
                    part_path: part.part_path.clone(),
                    wanted_path: part.wanted_path.clone(),
                });
                self.persist();
                self.incoming.insert(
                    key,
                    IncomingFile {
                        part,
                        name: offer.name,
                    },
                );
                self.transfers.accept(&peer, id, now);
            }
            Err(err) => {
                let why = format!("cannot store the file: {err}");
                self.transfers.decline(&peer, id, why, now);
                self.fail_receive(format!("cannot store {}: {err:#}", offer.name));
            }
        }
    }

    /// The `.part` file an earlier run left for this very file (same hash
    /// and size), reopened with what it holds, if any and not in use.
    fn reopen_partial(&mut self, offer: &FileOffer) -> Option<(PartFile, u64, blake3::Hasher)> {
        let hash = hex(&offer.hash);
        let index = self
            .partials
            .iter()
            .position(|p| p.hash == hash && p.size == offer.size)?;
        let partial = self.partials[index].clone();
        let in_use = self
            .incoming
            .values()
            .any(|t| t.part.part_path == partial.part_path);
        if in_use {
            return None;
        }
        match files::reopen_part(&partial.part_path, &partial.wanted_path, offer.size) {
            Ok(reopened) => Some(reopened),
            Err(err) => {
                tracing::info!(err = %format!("{err:#}"), "partial file not resumable");
                self.partials.remove(index);
                self.persist();
                None
            }
        }
    }

    /// Forgets the partial-file record of `part_path` (received or failed).
    fn drop_partial(&mut self, part_path: &std::path::Path) {
        let before = self.partials.len();
        self.partials.retain(|p| p.part_path != part_path);
        if self.partials.len() != before {
            self.persist();
        }
    }

    fn fail_receive(&mut self, why: String) {
        if let Mode::Receive { failed, .. } = &mut self.mode {
            *failed += 1;
        }
        self.report.emit(Event::Error { message: why });
    }

    async fn start_next_file(&mut self) {
        let Mode::Send {
            queue,
            target: Some(peer),
            active,
        } = &mut self.mode
        else {
            return;
        };
        if *active {
            return;
        }
        let Some(info) = queue.pop_front() else {
            self.exit = Some(Ok(()));
            return;
        };
        let peer = peer.clone();
        *active = true;
        let file = match std::fs::File::open(&info.path) {
            Ok(file) => file,
            Err(err) => {
                self.exit = Some(Err(anyhow!("cannot open {}: {err}", info.path.display())));
                return;
            }
        };
        let id = TransferId(rand::random());
        let offer = FileOffer {
            transfer: id,
            name: info.name.clone(),
            size: info.size,
            mime: info.mime.clone(),
            hash: info.hash,
        };
        self.outgoing.insert(
            id,
            OutgoingFile {
                file,
                info,
                bytes_sent: 0,
            },
        );
        let now = self.now();
        self.transfers.send(peer, offer, now);
        self.drive().await;
    }

    /// Carries out one thing the transfer machine asks.
    async fn on_transfer_output(&mut self, out: TransferOutput) {
        let now = self.now();
        match out {
            TransferOutput::Send { peer, frame } => {
                if let Frame::Chunk { transfer, data, .. } = &frame
                    && let Some(f) = self.outgoing.get_mut(transfer)
                {
                    f.bytes_sent += data.len() as u64;
                }
                match self.transmit(&peer, Channel::File, frame.encode()).await {
                    Ok(()) => {
                        let amount = self.file_buffered(&peer).await;
                        self.transfers.buffered(&peer, amount, now);
                    }
                    Err(err) => {
                        tracing::info!(err = %format!("{err:#}"), "file frame not sent");
                        self.transfers.send_failed(&peer);
                        self.feed(PathInput::SendFailed { peer });
                    }
                }
            }
            TransferOutput::Read { id, offset, len } => {
                let Some(f) = self.outgoing.get(&id) else {
                    return;
                };
                let mut buf = vec![0; len];
                match read_at(&f.file, &mut buf, offset) {
                    Ok(()) => self.transfers.chunk_read(id, offset, buf, now),
                    Err(err) => self.transfers.read_failed(id, err.to_string(), now),
                }
            }
            TransferOutput::Write {
                peer,
                id,
                offset,
                data,
            } => {
                let key = (peer, id);
                let result = match self.incoming.get(&key) {
                    Some(f) => write_at(&f.part.file, &data, offset),
                    None => Err(std::io::Error::other("the partial file is gone")),
                };
                if let Err(err) = result {
                    self.transfers
                        .write_failed(&key.0, id, err.to_string(), now);
                }
            }
            TransferOutput::Offered { peer, offer } => self.on_offer(peer, offer),
            TransferOutput::Progress { key, progress } => {
                let (name, direction) = match &key {
                    TransferKey::Outgoing(id) => match self.outgoing.get(id) {
                        Some(f) => (f.info.name.clone(), "send"),
                        None => return,
                    },
                    TransferKey::Incoming(peer, id) => match self.transfers.receiver(peer, *id) {
                        Some(r) => (r.offer().name.clone(), "receive"),
                        None => return,
                    },
                };
                self.report.progress(key.id(), &name, direction, &progress);
            }
            TransferOutput::Store { peer, id, hash } => self.on_verified(peer, id, hash),
            TransferOutput::Away { id } => {
                let Mode::Send {
                    target: Some(peer), ..
                } = &self.mode
                else {
                    return;
                };
                let peer = peer.clone();
                if self.exit.is_none() && !std::mem::replace(&mut self.awaiting_return, true) {
                    tracing::info!(transfer = %id, "waiting for the receiver to come back");
                    self.report.emit(Event::WaitingForPeer {
                        peer_id: &peer.0,
                        seconds: RETURN_WINDOW.as_secs(),
                    });
                }
            }
            TransferOutput::Resumed { id, from } => {
                tracing::info!(transfer = %id, from, "the receiver continues from what it had");
            }
            TransferOutput::Finished {
                key: TransferKey::Outgoing(id),
                result,
            } => self.on_sent(id, result),
            TransferOutput::Finished {
                key: TransferKey::Incoming(peer, id),
                result,
            } => self.on_received(peer, id, result),
            TransferOutput::SendProgress {
                peer,
                waiting,
                advanced,
            } => self.feed(PathInput::SendProgress {
                peer,
                waiting,
                advanced,
            }),
        }
    }

    /// Our transfer `id` ended: `send` goes on with the next file, or fails.
    fn on_sent(&mut self, id: TransferId, result: Result<(), TransferError>) {
        let Some(f) = self.outgoing.remove(&id) else {
            return;
        };
        match result {
            Ok(()) => {
                self.report.emit(Event::FileSent {
                    transfer: id.to_string(),
                    name: &f.info.name,
                    size: f.info.size,
                    hash: hex(&f.info.hash),
                    bytes_sent: f.bytes_sent,
                });
                // The run loop starts the next file.
                if let Mode::Send { active, .. } = &mut self.mode {
                    *active = false;
                }
            }
            Err(err) => {
                self.report.emit(Event::TransferFailed {
                    transfer: id.to_string(),
                    name: &f.info.name,
                    reason: err.to_string(),
                });
                if matches!(self.mode, Mode::Send { .. }) && self.exit.is_none() {
                    self.exit = Some(Err(anyhow!("sending {} failed: {err}", f.info.name)));
                }
            }
        }
    }

    /// Every byte of `(peer, id)` is in and verified: the `.part` file gets
    /// its final name, and only then may `FileVerified` leave.
    fn on_verified(&mut self, peer: PeerId, id: TransferId, hash: [u8; 32]) {
        let key = (peer, id);
        let Some(IncomingFile { part, .. }) = self.incoming.remove(&key) else {
            return;
        };
        let (peer, id) = key;
        let Some(offer) = self
            .transfers
            .receiver(&peer, id)
            .map(|r| r.offer().clone())
        else {
            return;
        };
        match files::finalize(&part) {
            Ok(path) => {
                self.report.emit(Event::FileReceived {
                    transfer: id.to_string(),
                    name: &offer.name,
                    path: &path.to_string_lossy(),
                    size: offer.size,
                    hash: hex(&hash),
                });
                if let Mode::Receive { received, .. } = &mut self.mode {
                    *received += 1;
                }
                self.transfers.stored(&peer, id);
            }
            Err(err) => {
                self.transfers.store_failed(&peer, id, err.to_string());
                self.fail_receive(format!("cannot save {}: {err:#}", offer.name));
            }
        }
        self.drop_partial(&part.part_path);
    }

    /// An incoming transfer ended (a verified one was handled by
    /// [`Self::on_verified`]). One whose peer is gone keeps its `.part`
    /// file: the same offer again resumes it.
    fn on_received(&mut self, peer: PeerId, id: TransferId, result: Result<(), TransferError>) {
        if let Err(err) = result
            && let Some(IncomingFile { part, name }) = self.incoming.remove(&(peer, id))
        {
            self.report.emit(Event::TransferFailed {
                transfer: id.to_string(),
                name: &name,
                reason: format!("{err}; partial data kept in {}", part.part_path.display()),
            });
            if let Mode::Receive { failed, .. } = &mut self.mode {
                *failed += 1;
            }
            if !matches!(err, TransferError::PeerGone(_)) {
                self.drop_partial(&part.part_path);
            }
        }
        self.check_receive_done();
    }

    /// `peer` is unreachable (it left, or its connection was lost): it
    /// counts as away; chat waits for it, `send` waits for it to come back
    /// within [`RETURN_WINDOW`] (its transfers are parked by [`Transfers`]
    /// and offered again when it is back).
    async fn on_peer_gone(&mut self, peer: &PeerId) {
        let name = self.name(peer);
        if self.names.remove(peer).is_some() {
            self.report.emit(Event::PeerLeft {
                peer_id: &peer.0,
                name: &name,
            });
        }
        // It may come back under the same id (a restart, a network change):
        // its chat link and outbox wait for it (see `ChatSession::peer_left`).
        let now = self.now();
        self.chat.peer_left(peer, now);
        self.flush_chat().await;
        if let Mode::Receive { senders, .. } = &mut self.mode {
            senders.remove(peer);
        }
        self.check_receive_done();
    }

    /// `peer` did not come back in time: `send` gives up if it waited for it
    /// (its transfers fail too, see [`Transfers::on_path`]).
    fn on_return_timeout(&mut self, peer: &PeerId) {
        let waited = matches!(&self.mode, Mode::Send { target: Some(t), .. } if t == peer);
        if waited && std::mem::take(&mut self.awaiting_return) && self.exit.is_none() {
            self.exit = Some(Err(anyhow!(
                "the receiver left before every file was sent and did not come back within {} s",
                RETURN_WINDOW.as_secs()
            )));
        }
    }

    /// `receive` ends when nothing is in flight and either every peer that
    /// sent us files is gone, or [`RECEIVE_IDLE_EXIT`] passed without a new
    /// offer: success if every file verified.
    fn check_receive_done(&mut self) {
        let Mode::Receive {
            received,
            failed,
            senders,
            ..
        } = &self.mode
        else {
            return;
        };
        self.idle_deadline = None;
        if self.transfers.has_incoming() || self.exit.is_some() || *received + *failed == 0 {
            return;
        }
        if senders.is_empty() {
            self.on_receive_idle();
        } else {
            self.idle_deadline = Some(tokio::time::Instant::now() + RECEIVE_IDLE_EXIT);
        }
    }

    fn on_receive_idle(&mut self) {
        self.idle_deadline = None;
        if let Mode::Receive {
            received, failed, ..
        } = &self.mode
            && self.incoming.is_empty()
        {
            self.exit = Some(if *failed > 0 {
                Err(anyhow!("{failed} file(s) failed, {received} received"))
            } else {
                Ok(())
            });
        }
    }

    async fn on_stdin(&mut self, line: Option<String>) {
        let Some(text) = line else {
            self.stdin = None;
            // Wait (bounded) until every peer acked what we wrote.
            self.flush_deadline = Some(tokio::time::Instant::now() + CHAT_FLUSH_TIMEOUT);
            self.check_chat_flushed();
            return;
        };
        let text = text.trim_end_matches('\r').to_owned();
        if text.is_empty() {
            return;
        }
        let id = MessageId(rand::random());
        let wall = unix_ms();
        let now = self.now();
        if let Err(err) = self.chat.send(id, text, wall, now) {
            self.report.emit(Event::Error {
                message: format!("message not sent: {err}"),
            });
        }
        self.flush_chat().await;
    }

    fn check_chat_flushed(&mut self) {
        if self.flush_deadline.is_some()
            && (self.chat.peers())
                .filter(|p| self.paths.route(p).is_some())
                .all(|p| self.chat.unacked(p).is_empty())
        {
            self.exit = Some(Ok(()));
        }
    }

    /// Writes the resume token, chat state and partial files to the state
    /// file (when there is one).
    fn persist(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        let generation = self.chat.generation();
        let saved = Saved {
            version: crate::state::STATE_VERSION,
            resume_token: self.resume_token.clone(),
            chat: Some(self.chat.snapshot(self.now(), unix_ms())),
            partials: self.partials.clone(),
        };
        match store.write(&saved) {
            Ok(()) => self.saved_generation = Some(generation),
            Err(err) => {
                self.report.emit(Event::Error {
                    message: format!("{err:#}; continuing without saving state"),
                });
                self.store = None;
            }
        }
    }

    /// Carries out what the chat session asks, after saving its state: a
    /// message is acked only once it is on disk, and an outbox entry is on
    /// disk before it goes out.
    async fn flush_chat(&mut self) {
        let outputs: Vec<ChatOutput> = std::iter::from_fn(|| self.chat.poll_output()).collect();
        if self.saved_generation != Some(self.chat.generation()) {
            self.persist();
        }
        for out in outputs {
            match out {
                ChatOutput::Send { to, frame } => {
                    if let Err(err) = self.transmit(&to, Channel::Chat, frame.encode()).await {
                        tracing::debug!(%to, %err, "chat send failed; will retry");
                    }
                }
                ChatOutput::Deliver { from, message } => {
                    let name = self.name(&from);
                    self.report.emit(Event::Message {
                        from: &from.0,
                        name: &name,
                        id: message.id.to_string(),
                        seq: message.seq,
                        sent_at_ms: message.sent_at_ms,
                        text: &message.text,
                    });
                }
                ChatOutput::Status { id, status } => {
                    let status = match status {
                        MessageStatus::Sending => "sending",
                        MessageStatus::Sent => "sent",
                        MessageStatus::Delivered => "delivered",
                    };
                    self.report.emit(Event::MessageStatus {
                        id: id.to_string(),
                        status,
                    });
                }
            }
        }
        self.check_chat_flushed();
    }
}

/// `duration` in the core's milliseconds.
fn millis(duration: Duration) -> Millis {
    duration.as_millis() as Millis
}

async fn next_line(stdin: &mut Option<Lines<BufReader<Stdin>>>) -> Option<String> {
    match stdin {
        Some(lines) => lines.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

async fn next_reconnect(
    task: &mut Option<tokio::task::JoinHandle<(Signaling, Joined)>>,
) -> (Signaling, Joined) {
    match task {
        Some(handle) => match handle.await {
            Ok(joined) => joined,
            // The task never panics or is aborted while we wait on it.
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(when: Option<tokio::time::Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

#[cfg(not(unix))]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

#[cfg(not(unix))]
fn write_at(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)
}
