//! The peer's driver: one loop that owns every piece of state and reacts to
//! signaling messages, WebRTC events, stdin lines and timers by feeding the
//! sans-IO state machines of `parlor-core` and carrying out what they ask
//! (send a frame, show a message, read or write file bytes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use parlor_core::{
    ChatOutput, ChatSession, FileReceiver, FileSender, MessageStatus, Millis, ReceiverOutput,
    SenderOutput, SenderState, TransferConfig,
};
use parlor_protocol::sealed::sdp_fingerprint;
use parlor_protocol::{
    CancelReason, ClientMessage, FileOffer, Frame, IceCandidate, IceServer, MessageId, PeerId,
    PeerSignal, RelayCipher, RelayPayload, RoomKey, ServerMessage, SignalCipher, TransferId,
};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines, Stdin};
use tokio::sync::mpsc;
use webrtc::api::API;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;

use crate::files::{self, Outgoing, PartFile};
use crate::report::{Event, Reporter, hex};
use crate::rtc::{self, Channel, PeerEvent, PeerLink};
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
    /// The room.
    pub room: parlor_protocol::RoomId,
    /// Our display name.
    pub name: String,
    /// The room key.
    pub key: RoomKey,
}

/// Which paths this peer may use (`--force-relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPolicy {
    /// Direct, then TURN (ICE picks), then the server relay.
    Any,
    /// Only TURN relay candidates, then the server relay.
    TurnOnly,
    /// Only the server relay: no WebRTC at all.
    ServerOnly,
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

struct OutgoingTransfer {
    peer: PeerId,
    file: std::fs::File,
    info: Outgoing,
    sender: FileSender,
    /// The receiver left the room; when it is back, offer again.
    reoffer_on_return: bool,
}

struct IncomingTransfer {
    part: PartFile,
    receiver: FileReceiver,
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
    links: HashMap<PeerId, PeerLink>,
    connected: HashSet<PeerId>,
    chat: ChatSession,
    outgoing: HashMap<TransferId, OutgoingTransfer>,
    incoming: HashMap<(PeerId, TransferId), IncomingTransfer>,
    /// Transfers received (or failed) already: a late repeat of their offer
    /// must not start them again.
    finished_incoming: HashSet<(PeerId, TransferId)>,
    events_tx: mpsc::Sender<PeerEvent>,
    events_rx: mpsc::Receiver<PeerEvent>,
    start: Instant,
    config: TransferConfig,
    policy: PathPolicy,
    /// Our peer id (server-relay packets are bound to it).
    me: PeerId,
    /// Seals and opens server-relay packets with the room key.
    relay_cipher: RelayCipher,
    /// Seals and opens offers, answers and candidates with the room key.
    signal_cipher: SignalCipher,
    /// The DTLS fingerprint each peer's sealed SDP announced.
    remote_fingerprints: HashMap<PeerId, (String, Vec<u8>)>,
    /// Peers whose signaling was tampered with: never connected to.
    refused: HashSet<PeerId>,
    relay_buffer: Arc<RelayBuffer>,
    /// Peers reached through the server relay instead of WebRTC.
    relayed: HashSet<PeerId>,
    /// Relayed peers that answered with an authenticated packet: the relay
    /// link is up (the peer holds the room key and switched too).
    relay_up: HashSet<PeerId>,
    /// WebRTC links that must connect by then, or fall to the server relay.
    connect_deadlines: HashMap<PeerId, tokio::time::Instant>,
    /// WebRTC links carrying a transfer whose receiver confirmed nothing
    /// new for [`STALL_TIMEOUT`] fall to the server relay by then (after a
    /// long outage webrtc-rs's SCTP association can stay stuck in one
    /// direction while the other still works).
    progress_deadlines: HashMap<PeerId, tokio::time::Instant>,
    /// WebRTC links that were connected once (a failure then tries an ICE
    /// restart before the server relay).
    was_connected: HashSet<PeerId>,
    /// Links in an ICE restart: when they connect again, transfers resume.
    restarting: HashSet<PeerId>,
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
    /// `send`: the receiver left mid-way; give up unless it is back by then.
    return_deadline: Option<tokio::time::Instant>,
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
            links: HashMap::new(),
            connected: HashSet::new(),
            chat,
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            finished_incoming: HashSet::new(),
            events_tx,
            events_rx,
            start: Instant::now(),
            config,
            policy,
            me: joined.peer_id,
            relay_cipher: RelayCipher::new(&access.key, rand::random()),
            signal_cipher: SignalCipher::new(&access.key, rand::random()),
            remote_fingerprints: HashMap::new(),
            refused: HashSet::new(),
            relay_buffer,
            relayed: HashSet::new(),
            relay_up: HashSet::new(),
            connect_deadlines: HashMap::new(),
            progress_deadlines: HashMap::new(),
            was_connected: HashSet::new(),
            restarting: HashSet::new(),
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
            return_deadline: None,
        };
        room.persist();
        // Newcomers make the offers; peers already present wait for them.
        for peer in joined.peers {
            room.names.insert(peer.id.clone(), peer.name);
            room.chat.add_peer(peer.id.clone());
            if policy == PathPolicy::ServerOnly {
                room.fall_to_relay(&peer.id, "--force-relay server").await;
                continue;
            }
            let link = room.link_for(&peer.id, true).await?;
            let sdp = link.create_offer(false).await?;
            room.send_signal(&peer.id, PeerSignal::Offer { sdp }).await;
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
            let connect_timer = self
                .connect_deadlines
                .values()
                .chain(self.progress_deadlines.values())
                .min()
                .copied();
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
                () = sleep_until(connect_timer) => self.on_connect_timeout().await,
                Some(event) = self.events_rx.recv() => self.on_peer_event(event).await,
                line = next_line(&mut self.stdin) => self.on_stdin(line).await,
                () = sleep_until(chat_timer) => {
                    let now = self.now();
                    self.chat.handle_timeout(now);
                    self.flush_chat().await;
                }
                () = sleep_until(self.flush_deadline) => self.exit = Some(Ok(())),
                () = sleep_until(self.idle_deadline) => self.on_receive_idle(),
                () = sleep_until(self.return_deadline) => self.on_return_timeout(),
            }
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

    fn on_signaling_lost(&mut self) {
        if !self.signaling_up {
            return;
        }
        self.signaling_up = false;
        self.report.emit(Event::Error {
            message: "lost the connection to the Parlor server; reconnecting".into(),
        });
        // Relayed links went through the server: down until we are back.
        for peer in std::mem::take(&mut self.relay_up) {
            self.chat.link_down(&peer);
            self.connected.remove(&peer);
        }
        // Established data channels keep working without the server.
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
                match Signaling::join(&rejoin.ws_url, &rejoin.room, &rejoin.name, token.as_deref())
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
        if self.connected.is_empty() {
            self.exit = Some(Err(anyhow!(
                "lost the connection to the Parlor server and could not reconnect within {} s",
                OFFLINE_GIVE_UP.as_secs()
            )));
        } else {
            self.offline_deadline = Some(tokio::time::Instant::now() + OFFLINE_GIVE_UP);
        }
    }

    /// Back in the room (same peer id when the server honoured our resume
    /// token): links that are up stay up; peers we have no link to get an
    /// offer, relayed peers a fresh Switch.
    async fn on_rejoined(&mut self, rejoined: (Signaling, Joined)) {
        let (signaling, joined) = rejoined;
        self.reconnect = None;
        self.offline_deadline = None;
        self.signaling = signaling;
        self.signaling_up = true;
        self.relay_buffer = self.signaling.relay_buffer();
        self.relay_buffer
            .set_low_watermark(self.config.low_watermark);
        if joined.resume_token.is_some() && joined.resume_token != self.resume_token {
            self.resume_token = joined.resume_token.clone();
            self.persist();
        }
        self.me = joined.peer_id.clone();
        let peers: Vec<&str> = joined.peers.iter().map(|p| p.id.0.as_str()).collect();
        self.report.emit(Event::Joined {
            room: self.access.room.as_str(),
            peer_id: &joined.peer_id.0,
            peers,
        });
        for peer in joined.peers {
            self.names.insert(peer.id.clone(), peer.name);
            self.chat.add_peer(peer.id.clone());
            if self.relayed.contains(&peer.id) {
                let switch = self
                    .relay_cipher
                    .seal(&self.me, &peer.id, &RelayPayload::Switch);
                let _ = self.signaling.send_relay(switch).await;
                continue;
            }
            if self.links.contains_key(&peer.id) || self.refused.contains(&peer.id) {
                continue;
            }
            if self.policy == PathPolicy::ServerOnly {
                self.fall_to_relay(&peer.id, "--force-relay server").await;
                continue;
            }
            let offer = match self.link_for(&peer.id, true).await {
                Ok(link) => link.create_offer(false).await,
                Err(err) => Err(err),
            };
            match offer {
                Ok(sdp) => self.send_signal(&peer.id, PeerSignal::Offer { sdp }).await,
                Err(err) => self.report.emit(Event::Error {
                    message: format!("offer to {}: {err:#}", peer.id),
                }),
            }
        }
    }

    /// The link to `peer`, created on first use; `offerer` decides who
    /// creates the data channels (only used when creating).
    async fn link_for(&mut self, peer: &PeerId, offerer: bool) -> Result<&mut PeerLink> {
        if !self.links.contains_key(peer) {
            let link = PeerLink::new(
                &self.api,
                peer.clone(),
                &self.ice_servers,
                self.config.low_watermark as usize,
                offerer,
                self.policy == PathPolicy::TurnOnly,
                self.events_tx.clone(),
            )
            .await?;
            self.links.insert(peer.clone(), link);
            self.connect_deadlines
                .insert(peer.clone(), tokio::time::Instant::now() + CONNECT_TIMEOUT);
        }
        self.links
            .get_mut(peer)
            .ok_or_else(|| anyhow!("link vanished"))
    }

    async fn on_signal(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::PeerJoined { peer } => {
                self.report.emit(Event::PeerJoined {
                    peer_id: &peer.id.0,
                    name: &peer.name,
                });
                self.chat.add_peer(peer.id.clone());
                self.names.insert(peer.id, peer.name);
            }
            ServerMessage::PeerLeft { peer_id } => {
                self.on_peer_gone(&peer_id, "left the room").await
            }
            ServerMessage::Signal { from, sealed } => {
                if self.refused.contains(&from) {
                    return;
                }
                match self.signal_cipher.open(&self.me, &from, &sealed) {
                    Ok(PeerSignal::Offer { sdp }) => self.on_offer_sdp(from, sdp).await,
                    Ok(PeerSignal::Answer { sdp }) => self.on_answer_sdp(from, sdp).await,
                    Ok(PeerSignal::Candidate { candidate }) => {
                        self.on_remote_candidate(from, candidate).await;
                    }
                    Err(err) => self.refuse_peer(&from, &err.to_string()).await,
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

    /// A sealed offer: answer it (or, on the server relay, say so instead).
    async fn on_offer_sdp(&mut self, from: PeerId, sdp: String) {
        self.chat.add_peer(from.clone());
        if self.policy == PathPolicy::ServerOnly || self.relayed.contains(&from) {
            // We talk through the server relay; our Switch tells them.
            self.fall_to_relay(&from, "--force-relay server").await;
            return;
        }
        if let Some(fingerprint) = sdp_fingerprint(&sdp) {
            let previous = self
                .remote_fingerprints
                .insert(from.clone(), fingerprint.clone());
            if previous.is_some_and(|p| p != fingerprint) && self.links.contains_key(&from) {
                self.peer_restarted(&from).await;
            }
        }
        let answer = match self.link_for(&from, false).await {
            Ok(link) => link.accept_offer(sdp).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(sdp) => self.send_signal(&from, PeerSignal::Answer { sdp }).await,
            Err(err) => self.report.emit(Event::Error {
                message: format!("offer from {from}: {err:#}"),
            }),
        }
    }

    /// Transfers from `peer` cannot finish now (it left or restarted; the
    /// `.part` files stay, and a new offer of the same file resumes them).
    fn fail_incoming_from(&mut self, peer: &PeerId, why: &str) {
        let dead_in: Vec<_> = self
            .incoming
            .keys()
            .filter(|(p, _)| p == peer)
            .cloned()
            .collect();
        for key in dead_in {
            if let Some(t) = self.incoming.remove(&key) {
                self.fail_receive(format!(
                    "{} stopped: peer {why}; partial data kept in {}",
                    t.receiver.offer().name,
                    t.part.part_path.display()
                ));
            }
        }
    }

    /// An offer under a new DTLS certificate from a peer we have a link to:
    /// not an ICE restart but a new connection — the peer restarted (a page
    /// reload, a new process) under the same id, faster than the server
    /// noticed it leave. The old link goes; transfers to it are offered
    /// again once the new one is up (it kept at most a partial file).
    async fn peer_restarted(&mut self, peer: &PeerId) {
        tracing::info!(%peer, "peer restarted under the same id: new connection");
        if let Some(link) = self.links.remove(peer) {
            link.close().await;
        }
        self.connected.remove(peer);
        self.was_connected.remove(peer);
        self.restarting.remove(peer);
        self.connect_deadlines.remove(peer);
        self.progress_deadlines.remove(peer);
        self.chat.link_down(peer);
        for t in self.outgoing.values_mut().filter(|t| &t.peer == peer) {
            t.reoffer_on_return = true;
        }
        self.fail_incoming_from(peer, "restarted");
        self.check_receive_done();
    }

    async fn on_answer_sdp(&mut self, from: PeerId, sdp: String) {
        if let Some(fingerprint) = sdp_fingerprint(&sdp) {
            self.remote_fingerprints.insert(from.clone(), fingerprint);
        }
        if let Some(link) = self.links.get_mut(&from)
            && let Err(err) = link.accept_answer(sdp).await
        {
            self.report.emit(Event::Error {
                message: format!("answer from {from}: {err:#}"),
            });
        }
    }

    async fn on_remote_candidate(&mut self, from: PeerId, candidate: IceCandidate) {
        if let Some(link) = self.links.get_mut(&from) {
            link.add_candidate(candidate).await;
        }
    }

    /// Signaling from `peer` was tampered with (or the DTLS certificate is
    /// not the one its sealed SDP announced): warn, and never connect to it,
    /// neither directly nor through any relay.
    async fn refuse_peer(&mut self, peer: &PeerId, why: &str) {
        tracing::warn!(%peer, why, "refusing peer");
        self.report.emit(Event::Error {
            message: format!("security warning: {why}"),
        });
        self.refused.insert(peer.clone());
        self.connect_deadlines.remove(peer);
        if let Some(link) = self.links.remove(peer) {
            link.close().await;
        }
        self.relayed.remove(peer);
        self.relay_up.remove(peer);
        self.connected.remove(peer);
        self.chat.link_down(peer);
    }

    async fn on_peer_event(&mut self, event: PeerEvent) {
        // Once a peer is on the server relay, its old connection's events
        // are stale, except for data it still delivered.
        if self.relayed.contains(event.peer()) && !matches!(event, PeerEvent::Message { .. }) {
            return;
        }
        match event {
            PeerEvent::LocalCandidate { peer, candidate } => {
                if self.signaling_up {
                    self.send_signal(&peer, PeerSignal::Candidate { candidate })
                        .await;
                }
            }
            PeerEvent::Open {
                peer,
                channel: Channel::Chat,
            } => {
                let now = self.now();
                self.chat.link_up(&peer, now);
                self.flush_chat().await;
            }
            PeerEvent::Open {
                peer,
                channel: Channel::File,
            } => {
                if let Mode::Send { target, .. } = &mut self.mode
                    && target.is_none()
                {
                    *target = Some(peer.clone());
                }
                if self
                    .outgoing
                    .values()
                    .any(|t| t.peer == peer && t.reoffer_on_return)
                {
                    self.reset_transfers(&peer).await;
                }
            }
            PeerEvent::Closed { peer, channel } => {
                if channel == Channel::Chat {
                    self.chat.link_down(&peer);
                }
            }
            PeerEvent::Message {
                peer,
                channel,
                data,
            } => {
                // Data from the peer: the link is alive (no stall fallback).
                if self.connected.contains(&peer) {
                    self.connect_deadlines.remove(&peer);
                }
                self.on_frame(peer, channel, &data).await;
            }
            PeerEvent::BufferedLow { peer } => {
                let ids: Vec<TransferId> = self
                    .outgoing
                    .iter()
                    .filter(|(_, t)| t.peer == peer)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.drive_outgoing(id, |t, amount| t.sender.buffered_amount(amount))
                        .await;
                }
            }
            PeerEvent::State { peer, state } => match state {
                RTCPeerConnectionState::Connected => {
                    if let Err(why) = self.check_fingerprint(&peer).await {
                        self.refuse_peer(&peer, &why).await;
                        return;
                    }
                    self.connect_deadlines.remove(&peer);
                    self.was_connected.insert(peer.clone());
                    if self.restarting.remove(&peer) {
                        self.reset_transfers(&peer).await;
                    }
                    if self.connected.insert(peer.clone())
                        && let Some(link) = self.links.get(&peer)
                    {
                        let path = link.path().await;
                        self.report.emit(Event::Connected {
                            peer_id: &peer.0,
                            path,
                        });
                    }
                }
                RTCPeerConnectionState::Failed if self.links.contains_key(&peer) => {
                    self.report.emit(Event::Disconnected {
                        peer_id: &peer.0,
                        state: &state.to_string(),
                    });
                    self.connected.remove(&peer);
                    self.on_link_failed(&peer).await;
                }
                RTCPeerConnectionState::Closed if self.links.contains_key(&peer) => {
                    self.report.emit(Event::Disconnected {
                        peer_id: &peer.0,
                        state: &state.to_string(),
                    });
                    self.on_peer_gone(&peer, "connection lost").await;
                }
                _ => {}
            },
        }
    }

    /// Checks that the DTLS certificate `peer` presented is the one whose
    /// fingerprint its sealed SDP announced. (webrtc-rs checks this against
    /// the remote description too; checking here ties the connection to the
    /// sealed, authenticated SDP explicitly.)
    async fn check_fingerprint(&self, peer: &PeerId) -> Result<(), String> {
        let Some((algorithm, expected)) = self.remote_fingerprints.get(peer) else {
            return Err(format!(
                "{peer}'s sealed SDP announced no DTLS fingerprint: refusing the connection"
            ));
        };
        let Some(link) = self.links.get(peer) else {
            return Ok(());
        };
        match link.remote_certificate_fingerprint(algorithm).await {
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
        if self.relayed.contains(peer) {
            let payload = RelayPayload::Frame { channel, frame };
            let envelope = self.relay_cipher.seal(&self.me, peer, &payload);
            return self.signaling.send_relay(envelope).await;
        }
        match self.links.get(peer) {
            Some(link) => link.send(channel, frame).await,
            None => bail!("no connection to {peer}"),
        }
    }

    /// Bytes sent to `peer`'s file path but not yet gone: the relay's queue
    /// towards the server, or the data channel's buffered amount.
    async fn file_buffered(&self, peer: &PeerId) -> u64 {
        if self.relayed.contains(peer) {
            return self.relay_buffer.queued();
        }
        match self.links.get(peer) {
            Some(link) => link.buffered_amount(Channel::File).await,
            None => 0,
        }
    }

    /// Moves `peer` to the server relay (once): closes its WebRTC link and
    /// tells it with a Switch packet. The link counts as up once an
    /// authenticated packet comes back ([`Self::relay_confirmed`]).
    async fn fall_to_relay(&mut self, peer: &PeerId, why: &str) {
        if self.relayed.contains(peer) {
            return;
        }
        if !self.signaling_up {
            self.on_peer_gone(peer, "connection lost").await;
            return;
        }
        tracing::info!(%peer, why, "switching to the server relay");
        self.relayed.insert(peer.clone());
        self.connect_deadlines.remove(peer);
        self.progress_deadlines.remove(peer);
        if let Some(link) = self.links.remove(peer) {
            link.close().await;
        }
        self.chat.link_down(peer);
        let switch = self
            .relay_cipher
            .seal(&self.me, peer, &RelayPayload::Switch);
        if self.signaling.send_relay(switch).await.is_err() {
            self.on_signaling_lost();
        }
    }

    /// The first authenticated packet from a relayed peer: chat and files
    /// come up on the relay. Unacknowledged chat messages are re-sent; a
    /// transfer in flight resumes from what the receiver confirms.
    async fn relay_confirmed(&mut self, peer: &PeerId) {
        if !self.relay_up.insert(peer.clone()) {
            return;
        }
        // Confirm back, so the peer's side comes up too even when neither
        // has anything to send (after a reconnect, both were relayed).
        let switch = self
            .relay_cipher
            .seal(&self.me, peer, &RelayPayload::Switch);
        let _ = self.signaling.send_relay(switch).await;
        self.connected.insert(peer.clone());
        self.report.emit(Event::Connected {
            peer_id: &peer.0,
            path: "server-relay",
        });
        let now = self.now();
        self.chat.link_up(peer, now);
        self.flush_chat().await;
        if let Mode::Send { target, .. } = &mut self.mode
            && target.is_none()
        {
            *target = Some(peer.clone());
        }
        self.reset_transfers(peer).await;
    }

    /// The path to `peer` changed: what was in flight may be lost. Offers
    /// not yet answered go out again; receivers ask to resume from their
    /// verified offset (see `FileReceiver::link_reset`).
    async fn reset_transfers(&mut self, peer: &PeerId) {
        let incoming: Vec<TransferId> = self
            .incoming
            .keys()
            .filter(|(p, _)| p == peer)
            .map(|(_, id)| *id)
            .collect();
        for id in incoming {
            self.drive_incoming(peer, id, |t| t.receiver.link_reset())
                .await;
        }
        let outgoing: Vec<TransferId> = self
            .outgoing
            .iter()
            .filter(|(_, t)| &t.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        if !outgoing.is_empty() {
            self.return_deadline = None;
        }
        for id in outgoing {
            self.drive_outgoing(id, |t, amount| {
                if std::mem::take(&mut t.reoffer_on_return) {
                    t.sender.peer_returned();
                } else {
                    t.sender.link_reset();
                }
                t.sender.buffered_amount(amount);
            })
            .await;
        }
    }

    /// A relay packet from the server: open it; the first one from a peer
    /// moves it to the relay too.
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
        if self.refused.contains(&from) {
            return;
        }
        if !self.names.contains_key(&from) && !self.relayed.contains(&from) {
            tracing::debug!(%from, "relay packet from a peer not in the room");
            return;
        }
        self.chat.add_peer(from.clone());
        self.fall_to_relay(&from, "the peer switched to the server relay")
            .await;
        self.relay_confirmed(&from).await;
        if let RelayPayload::Frame { channel, frame } = payload {
            self.on_frame(from, channel, &frame).await;
        }
    }

    /// The relay's send queue drained: let transfers on it go on.
    async fn on_relay_drained(&mut self) {
        let ids: Vec<TransferId> = self
            .outgoing
            .iter()
            .filter(|(_, t)| self.relay_up.contains(&t.peer))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.drive_outgoing(id, |t, amount| t.sender.buffered_amount(amount))
                .await;
        }
    }

    /// Links past their connect deadline fall to the server relay.
    async fn on_connect_timeout(&mut self) {
        let now = tokio::time::Instant::now();
        let late: Vec<PeerId> = self
            .connect_deadlines
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in late {
            self.fall_to_relay(&peer, "WebRTC did not connect in time")
                .await;
        }
        let stalled: Vec<PeerId> = self
            .progress_deadlines
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in stalled {
            self.progress_deadlines.remove(&peer);
            self.fall_to_relay(&peer, "the transfer made no progress")
                .await;
        }
    }

    /// ICE failed: a link that worked before gets one ICE restart (made by
    /// the side that made the first offer; the other waits for it) with a
    /// fresh deadline; otherwise, or once that deadline passes, the server
    /// relay takes over.
    async fn on_link_failed(&mut self, peer: &PeerId) {
        if !self.signaling_up {
            self.on_peer_gone(peer, "connection lost").await;
            return;
        }
        if !self.was_connected.remove(peer) {
            self.fall_to_relay(peer, "ICE failed").await;
            return;
        }
        self.connect_deadlines
            .insert(peer.clone(), tokio::time::Instant::now() + CONNECT_TIMEOUT);
        self.restarting.insert(peer.clone());
        let offer = match self.links.get(peer) {
            Some(link) if link.is_offerer() => link.create_offer(true).await,
            _ => return,
        };
        match offer {
            Ok(sdp) => {
                tracing::info!(%peer, "ICE failed; restarting ICE");
                self.send_signal(peer, PeerSignal::Offer { sdp }).await;
            }
            Err(err) => {
                tracing::info!(%peer, %err, "ICE restart impossible");
                self.fall_to_relay(peer, "ICE restart failed").await;
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
        let Some(id) = frame.transfer_id() else {
            return;
        };
        let now = self.now();
        match frame {
            // A repeated offer (re-sent after a path change, or duplicated
            // on the way) of a transfer under way goes to its receiver,
            // which ignores it; one of a finished transfer is dropped.
            Frame::FileOffer(_) if self.incoming.contains_key(&(peer.clone(), id)) => {
                self.drive_incoming(&peer, id, |t| t.receiver.handle_frame(frame, now))
                    .await;
            }
            Frame::FileOffer(_) if self.finished_incoming.contains(&(peer.clone(), id)) => {}
            Frame::FileOffer(offer) => self.on_offer(peer, offer).await,
            Frame::Chunk { .. } | Frame::FileDone { .. }
                if self.incoming.contains_key(&(peer.clone(), id)) =>
            {
                self.drive_incoming(&peer, id, |t| t.receiver.handle_frame(frame, now))
                    .await;
            }
            Frame::FileCancel { .. } if self.incoming.contains_key(&(peer.clone(), id)) => {
                self.drive_incoming(&peer, id, |t| t.receiver.handle_frame(frame, now))
                    .await;
            }
            _ if self.outgoing.get(&id).is_some_and(|t| t.peer == peer) => {
                self.drive_outgoing(id, |t, _| t.sender.handle_frame(frame, now))
                    .await;
            }
            _ => tracing::debug!(%peer, transfer = %id, "frame for an unknown transfer ignored"),
        }
    }

    async fn on_offer(&mut self, peer: PeerId, offer: FileOffer) {
        let id = offer.transfer;
        self.report.emit(Event::FileOffered {
            peer_id: &peer.0,
            transfer: id.to_string(),
            name: &offer.name,
            size: offer.size,
            mime: &offer.mime,
        });
        let now = self.now();
        let mut receiver = FileReceiver::new(offer.clone(), self.config.clone(), now);
        let out_dir = match &mut self.mode {
            Mode::Receive {
                out_dir, senders, ..
            } if !self.incoming.contains_key(&(peer.clone(), id)) => {
                senders.insert(peer.clone());
                out_dir.clone()
            }
            _ => {
                receiver.decline("this peer is not receiving files".into());
                self.send_receiver_frames(&peer, &mut receiver).await;
                return;
            }
        };
        if let Some((part, offset, prefix)) = self.reopen_partial(&offer) {
            self.report.emit(Event::Resuming {
                transfer: id.to_string(),
                name: &offer.name,
                path: &part.part_path.to_string_lossy(),
                offset,
            });
            receiver.accept_from(offset, prefix, now);
            self.incoming
                .insert((peer.clone(), id), IncomingTransfer { part, receiver });
            self.drive_incoming(&peer, id, |_| {}).await;
            return;
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
                receiver.accept(now);
                self.incoming
                    .insert((peer.clone(), id), IncomingTransfer { part, receiver });
                self.drive_incoming(&peer, id, |_| {}).await;
            }
            Err(err) => {
                receiver.decline(format!("cannot store the file: {err}"));
                self.send_receiver_frames(&peer, &mut receiver).await;
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

    async fn send_receiver_frames(&mut self, peer: &PeerId, receiver: &mut FileReceiver) {
        while let Some(out) = receiver.poll_output() {
            if let ReceiverOutput::Send(frame) = out {
                let _ = self.transmit(peer, Channel::File, frame.encode()).await;
            }
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
        let sender = FileSender::new(offer, self.config.clone(), self.now());
        self.outgoing.insert(
            id,
            OutgoingTransfer {
                peer,
                file,
                info,
                sender,
                reoffer_on_return: false,
            },
        );
        self.drive_outgoing(id, |_, _| {}).await;
    }

    /// Applies `input` to an outgoing transfer and carries out its outputs.
    async fn drive_outgoing(
        &mut self,
        id: TransferId,
        input: impl FnOnce(&mut OutgoingTransfer, u64),
    ) {
        let Some(mut t) = self.outgoing.remove(&id) else {
            return;
        };
        let buffered = self.file_buffered(&t.peer).await;
        let confirmed_before = t.sender.confirmed();
        input(&mut t, buffered);
        let mut finished = None;
        // After a failed send the rest of this round's frames are dropped
        // rather than each waiting in turn: the path is broken, and the
        // receiver asks to resume once there is a path again.
        let mut stalled = false;
        while let Some(out) = t.sender.poll_output() {
            match out {
                SenderOutput::Send(_) if stalled => {}
                SenderOutput::Send(frame) => {
                    if let Err(err) = self.transmit(&t.peer, Channel::File, frame.encode()).await {
                        tracing::info!(err = %format!("{err:#}"), "file frame not sent");
                        stalled = true;
                        if !self.relayed.contains(&t.peer) {
                            self.connect_deadlines
                                .entry(t.peer.clone())
                                .or_insert_with(|| tokio::time::Instant::now() + STALL_TIMEOUT);
                        }
                        continue;
                    }
                    let amount = self.file_buffered(&t.peer).await;
                    t.sender.buffered_amount(amount);
                }
                SenderOutput::Read { offset, len } => {
                    let mut buf = vec![0; len];
                    match read_at(&t.file, &mut buf, offset) {
                        Ok(()) => {
                            let now = self.now();
                            t.sender.chunk_read(offset, buf, now);
                        }
                        Err(err) => t.sender.read_failed(err.to_string()),
                    }
                }
                SenderOutput::Progress(p) => self.report.progress(id, &t.info.name, "send", &p),
                SenderOutput::Finished(result) => finished = Some(result),
            }
        }
        let Some(result) = finished else {
            self.watch_progress(&t, confirmed_before);
            self.outgoing.insert(id, t);
            return;
        };
        self.progress_deadlines.remove(&t.peer);
        match result {
            Ok(()) => {
                self.report.emit(Event::FileSent {
                    transfer: id.to_string(),
                    name: &t.info.name,
                    size: t.info.size,
                    hash: hex(&t.info.hash),
                    bytes_sent: t.sender.bytes_sent(),
                });
                // The run loop starts the next file.
                if let Mode::Send { active, .. } = &mut self.mode {
                    *active = false;
                }
            }
            Err(err) => {
                self.report.emit(Event::TransferFailed {
                    transfer: id.to_string(),
                    name: &t.info.name,
                    reason: err.to_string(),
                });
                if matches!(self.mode, Mode::Send { .. }) {
                    self.exit = Some(Err(anyhow!("sending {} failed: {err}", t.info.name)));
                }
            }
        }
    }

    /// Keeps the progress watchdog of `t`'s link: armed while chunks are
    /// owed confirmation on a WebRTC link, pushed back by every confirmed
    /// byte, off otherwise.
    fn watch_progress(&mut self, t: &OutgoingTransfer, confirmed_before: u64) {
        let waiting = matches!(
            t.sender.state(),
            SenderState::Sending | SenderState::AwaitingVerification
        ) && !t.reoffer_on_return
            && !self.relayed.contains(&t.peer)
            && self.links.contains_key(&t.peer);
        if !waiting {
            self.progress_deadlines.remove(&t.peer);
            return;
        }
        let next = tokio::time::Instant::now() + STALL_TIMEOUT;
        if t.sender.confirmed() > confirmed_before {
            self.progress_deadlines.insert(t.peer.clone(), next);
        } else {
            self.progress_deadlines
                .entry(t.peer.clone())
                .or_insert(next);
        }
    }

    /// Applies `input` to an incoming transfer and carries out its outputs.
    async fn drive_incoming(
        &mut self,
        peer: &PeerId,
        id: TransferId,
        input: impl FnOnce(&mut IncomingTransfer),
    ) {
        let key = (peer.clone(), id);
        let Some(mut t) = self.incoming.remove(&key) else {
            return;
        };
        input(&mut t);
        let mut finished = false;
        while let Some(out) = t.receiver.poll_output() {
            match out {
                ReceiverOutput::Send(frame) => {
                    let _ = self.transmit(peer, Channel::File, frame.encode()).await;
                }
                ReceiverOutput::Write { offset, data } => {
                    if let Err(err) = write_at(&t.part.file, &data, offset) {
                        t.receiver.write_failed(err.to_string());
                    }
                }
                ReceiverOutput::Progress(p) => {
                    let name = t.receiver.offer().name.clone();
                    self.report.progress(id, &name, "receive", &p);
                }
                ReceiverOutput::Finished(Ok(hash)) => {
                    finished = true;
                    let offer = t.receiver.offer().clone();
                    match files::finalize(&t.part) {
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
                        }
                        Err(err) => {
                            // Not final on disk, so the sender must not hear "verified".
                            let cancel = Frame::FileCancel {
                                transfer: id,
                                reason: CancelReason::StorageFailed(
                                    err.to_string().chars().take(200).collect(),
                                ),
                            };
                            let _ = self.transmit(peer, Channel::File, cancel.encode()).await;
                            self.fail_receive(format!("cannot save {}: {err:#}", offer.name));
                            break;
                        }
                    }
                }
                ReceiverOutput::Finished(Err(err)) => {
                    finished = true;
                    let name = t.receiver.offer().name.clone();
                    self.report.emit(Event::TransferFailed {
                        transfer: id.to_string(),
                        name: &name,
                        reason: format!(
                            "{err}; partial data kept in {}",
                            t.part.part_path.display()
                        ),
                    });
                    if let Mode::Receive { failed, .. } = &mut self.mode {
                        *failed += 1;
                    }
                }
            }
        }
        if finished {
            self.drop_partial(&t.part.part_path);
            self.finished_incoming.insert(key);
        } else {
            self.incoming.insert(key, t);
        }
        self.check_receive_done();
    }

    async fn on_peer_gone(&mut self, peer: &PeerId, why: &str) {
        let name = self.name(peer);
        self.progress_deadlines.remove(peer);
        if let Some(link) = self.links.remove(peer) {
            link.close().await;
        }
        self.relayed.remove(peer);
        self.relay_up.remove(peer);
        self.connect_deadlines.remove(peer);
        self.was_connected.remove(peer);
        self.restarting.remove(peer);
        self.remote_fingerprints.remove(peer);
        if self.names.remove(peer).is_some() || self.connected.remove(peer) {
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

        self.fail_incoming_from(peer, why);
        // `send` waits for its receiver to come back and then offers again;
        // the receiver continues from what it has on disk.
        if let Mode::Send { target, .. } = &self.mode
            && target.as_ref() == Some(peer)
            && self.exit.is_none()
        {
            for t in self.outgoing.values_mut().filter(|t| &t.peer == peer) {
                t.reoffer_on_return = true;
            }
            if self.return_deadline.is_none() {
                self.return_deadline = Some(tokio::time::Instant::now() + RETURN_WINDOW);
                self.report.emit(Event::WaitingForPeer {
                    peer_id: &peer.0,
                    seconds: RETURN_WINDOW.as_secs(),
                });
            }
        }
        if let Mode::Receive { senders, .. } = &mut self.mode {
            senders.remove(peer);
        }
        self.check_receive_done();
    }

    /// The receiver did not come back in time.
    fn on_return_timeout(&mut self) {
        self.return_deadline = None;
        if self.exit.is_none() {
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
        if !self.incoming.is_empty() || self.exit.is_some() || *received + *failed == 0 {
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
            && self
                .links
                .keys()
                .chain(&self.relayed)
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
