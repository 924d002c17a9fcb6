//! The path to each peer of a room: a sans-IO state machine.
//!
//! A peer is reached over a WebRTC connection (a *link*: one
//! `RTCPeerConnection`, with its `parlor-chat` and `parlor-file` channels)
//! or over the server relay (sealed frames on the signaling WebSocket).
//! [`Paths`] decides, for every peer, which link is current and when to
//! change path:
//!
//! - a new link that is not connected [`PathSettings::connect_timeout`]
//!   after it was made, or whose ICE fails before it connected, falls to the
//!   server relay;
//! - a link that was connected and fails gets one ICE restart (made by the
//!   side that made the first offer) with a fresh deadline, then the relay;
//! - a link over which a transfer makes no progress for
//!   [`PathSettings::stall_timeout`] falls to the relay; on the relay, such a
//!   stall re-sends `Switch` and resets the transfers;
//! - an offer from a linked peer is an ICE restart when its DTLS
//!   fingerprint is the one we know, otherwise the peer restarted (a page
//!   reload, a new process) under the same id: a new link;
//! - on the relay, a `Switch` asks for a `Switch` reply; the link is up once
//!   an authenticated packet arrived; a `Switch` with another epoch is a
//!   restarted peer.
//!
//! Every link has a [`LinkId`]; events of a link that is no longer current
//! (a late `Closed` of a replaced connection) are dropped. Nothing here does
//! IO or reads a clock: the driver feeds [`PathInput`]s with the time and
//! carries out [`PathOutput`]s.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use parlor_protocol::sealed::sdp_fingerprint;
use parlor_protocol::{Channel, IceCandidate, PeerId, PeerSignal, RelayPayload};

use crate::Millis;

/// One WebRTC connection to one peer, numbered in the order they were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// A data channel of a link (the same two channels the relay carries).
pub type LinkChannel = Channel;

/// Which paths this peer may use (`--force-relay`, `?relay=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPolicy {
    /// Direct, then TURN (ICE picks), then the server relay.
    Any,
    /// Only TURN relay candidates (a setting of each link), then the server relay.
    TurnOnly,
    /// Only the server relay: no WebRTC at all.
    ServerOnly,
}

/// How a room's paths behave; where the page and the CLI differ, it is here.
#[derive(Debug, Clone)]
pub struct PathSettings {
    /// Which paths may be used.
    pub policy: PathPolicy,
    /// A link must connect this long after it was made (or restarted).
    pub connect_timeout: Millis,
    /// A transfer on a path that confirms nothing new this long is stalled.
    pub stall_timeout: Millis,
    /// How long a peer that left stays *away* (its transfers wait) before
    /// it counts as gone for good ([`PathOutput::AwayExpired`]).
    pub return_window: Millis,
    /// This instance's epoch (random per start), sent in every `Switch`.
    pub epoch: u64,
}

impl PathSettings {
    /// The defaults (8 s to connect, 10 s stall, 5 min away) for `policy`.
    pub fn new(policy: PathPolicy, epoch: u64) -> Self {
        Self {
            policy,
            connect_timeout: 8_000,
            stall_timeout: 10_000,
            return_window: 5 * 60_000,
            epoch,
        }
    }
}

/// Where frames to a peer go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Over this WebRTC link's data channels.
    WebRtc(LinkId),
    /// Sealed, over the server relay.
    ServerRelay,
}

/// Why a peer is no longer reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// The server said it left the room.
    Left,
    /// Its connection closed, or failed while the server was unreachable
    /// (no ICE restart or relay is possible without it).
    ConnectionLost,
}

impl GoneReason {
    /// A short English description, for logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left the room",
            Self::ConnectionLost => "connection lost",
        }
    }
}

/// What happened, fed to [`Paths::handle`].
#[derive(Debug, Clone)]
pub enum PathInput {
    /// The server welcomed us (first join or rejoin) as `me`, with `peers`
    /// present. A rejoin under another id starts over.
    Joined {
        /// Our peer id.
        me: PeerId,
        /// The peers present.
        peers: Vec<PeerId>,
    },
    /// A peer joined the room (it will make the offer).
    PeerJoined {
        /// The newcomer.
        peer: PeerId,
    },
    /// The server says a peer left.
    PeerLeft {
        /// Who left.
        peer: PeerId,
    },
    /// A sealed offer, answer or candidate from a peer, opened.
    Signal {
        /// The sender.
        from: PeerId,
        /// What it sent.
        signal: PeerSignal,
    },
    /// Never connect to this peer again (its sealed signaling did not open,
    /// or its DTLS certificate is not the one its sealed SDP announced).
    Refuse {
        /// The peer.
        peer: PeerId,
        /// Why, for the warning.
        why: String,
    },
    /// A link gathered a local ICE candidate.
    LocalCandidate {
        /// The link.
        link: LinkId,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// A link's connection state became connected.
    LinkConnected {
        /// The link.
        link: LinkId,
    },
    /// A link's connection failed (ICE), or an ICE restart offer could not be made.
    LinkFailed {
        /// The link.
        link: LinkId,
    },
    /// A link's connection closed.
    LinkClosed {
        /// The link.
        link: LinkId,
    },
    /// A data channel of a link opened.
    ChannelOpen {
        /// The link.
        link: LinkId,
        /// Which channel.
        channel: LinkChannel,
    },
    /// A data channel of a link closed.
    ChannelClosed {
        /// The link.
        link: LinkId,
        /// Which channel.
        channel: LinkChannel,
    },
    /// Where a send to `peer` stands: `waiting` while bytes sent to it await
    /// confirmation, `advanced` when the receiver confirmed something new.
    SendProgress {
        /// The receiving peer.
        peer: PeerId,
        /// Bytes are owed a confirmation.
        waiting: bool,
        /// New bytes were confirmed since the last report.
        advanced: bool,
    },
    /// A frame to `peer` could not be sent (the path may be dead).
    SendFailed {
        /// The peer.
        peer: PeerId,
    },
    /// The signaling connection to the server is lost.
    SignalingLost,
}

/// What the driver must do, drained with [`Paths::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum PathOutput {
    /// Make a WebRTC connection to `peer`, known as `link` from now on;
    /// `offerer` creates the data channels.
    OpenLink {
        /// The peer.
        peer: PeerId,
        /// Its identity.
        link: LinkId,
        /// Whether we make the offer (and the channels).
        offerer: bool,
    },
    /// Close this connection; its later events will be dropped.
    CloseLink {
        /// The link.
        link: LinkId,
    },
    /// Create an offer on `link` and send it, sealed, to its peer.
    CreateOffer {
        /// The link.
        link: LinkId,
        /// An ICE restart offer.
        ice_restart: bool,
    },
    /// Apply this offer to `link` and send the answer, sealed, to its peer.
    AcceptOffer {
        /// The link.
        link: LinkId,
        /// The offer's SDP.
        sdp: String,
    },
    /// Apply this answer to `link`.
    AcceptAnswer {
        /// The link.
        link: LinkId,
        /// The answer's SDP.
        sdp: String,
    },
    /// Add a remote ICE candidate to `link`.
    AddCandidate {
        /// The link.
        link: LinkId,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// Send this signal to `to`, sealed, through the server.
    Signal {
        /// The addressee.
        to: PeerId,
        /// The signal.
        signal: PeerSignal,
    },
    /// Send this payload to `to`, sealed, over the server relay.
    Relay {
        /// The addressee.
        to: PeerId,
        /// The payload.
        payload: RelayPayload,
    },
    /// `peer` is reachable on `route` (show it; for a link, the driver may
    /// describe its candidate pair).
    Connected {
        /// The peer.
        peer: PeerId,
        /// The path.
        route: Route,
    },
    /// A connected link to `peer` failed (an ICE restart or the relay follows).
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// Chat frames can flow to `peer`: `ChatSession::link_up`.
    ChatUp {
        /// The peer.
        peer: PeerId,
    },
    /// Chat frames cannot flow to `peer`: `ChatSession::link_down`.
    ChatDown {
        /// The peer.
        peer: PeerId,
    },
    /// File frames can flow to `peer`. With `path_changed`, what was in
    /// flight may be lost: reset the transfers with it (`link_reset`).
    FilesUp {
        /// The peer.
        peer: PeerId,
        /// The path changed under a running transfer.
        path_changed: bool,
    },
    /// `peer` restarted under the same id: its incoming transfers cannot
    /// finish, ours to it are offered again once files are up.
    PeerRestarted {
        /// The peer.
        peer: PeerId,
    },
    /// `peer` moved to the server relay (for logs).
    FellToRelay {
        /// The peer.
        peer: PeerId,
        /// Why.
        why: &'static str,
    },
    /// Never talk to `peer` again: warn; its transfers fail.
    Refused {
        /// The peer.
        peer: PeerId,
        /// Why.
        why: String,
    },
    /// `peer` is unreachable; it counts as away for the return window.
    Gone {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: GoneReason,
    },
    /// An away peer is back within the return window (`FileSender::peer_returned`).
    Returned {
        /// The peer.
        peer: PeerId,
    },
    /// An away peer did not come back within the return window.
    AwayExpired {
        /// The peer.
        peer: PeerId,
    },
    /// We rejoined under a new id: every link is closed, every peer
    /// forgotten; the driver starts its chat and transfers over.
    StartedOver,
}

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Made, not yet connected: falls to the relay at the deadline.
    Connecting { deadline: Millis },
    /// Was connected, failed, ICE restart under way: relay at the deadline.
    Restarting { deadline: Millis },
    /// Connected.
    Connected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No path (not yet, or gone).
    Idle,
    /// A WebRTC link.
    Link {
        id: LinkId,
        offerer: bool,
        phase: Phase,
        chat_open: bool,
    },
    /// The server relay; `confirmed` once an authenticated packet arrived.
    Relay { confirmed: bool },
}

/// What we know about one peer.
#[derive(Debug, Clone)]
struct PeerPath {
    /// Listed by the server as present.
    listed: bool,
    state: State,
    /// The DTLS fingerprint its last sealed SDP announced.
    fingerprint: Option<(String, Vec<u8>)>,
    /// Its signaling was tampered with: never connected to.
    refused: bool,
    /// The epoch of its last `Switch` (0: unknown).
    relay_epoch: u64,
    /// A transfer to it stalls at this time unless it progresses.
    stall_at: Option<Millis>,
    /// It left; away until then.
    away_until: Option<Millis>,
}

impl PeerPath {
    fn new() -> Self {
        Self {
            listed: false,
            state: State::Idle,
            fingerprint: None,
            refused: false,
            relay_epoch: 0,
            stall_at: None,
            away_until: None,
        }
    }
}

/// The paths to every peer of one room. See the [module docs](self).
#[derive(Debug)]
pub struct Paths {
    settings: PathSettings,
    me: Option<PeerId>,
    signaling_up: bool,
    peers: BTreeMap<PeerId, PeerPath>,
    next_link: u64,
    out: VecDeque<PathOutput>,
}

impl Paths {
    /// A room not joined yet.
    pub fn new(settings: PathSettings) -> Self {
        Self {
            settings,
            me: None,
            signaling_up: false,
            peers: BTreeMap::new(),
            next_link: 1,
            out: VecDeque::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &PathSettings {
        &self.settings
    }

    /// Our peer id, once joined.
    pub fn me(&self) -> Option<&PeerId> {
        self.me.as_ref()
    }

    /// Where frames to `peer` go now, if anywhere.
    pub fn route(&self, peer: &PeerId) -> Option<Route> {
        match self.peers.get(peer)?.state {
            State::Idle => None,
            State::Link { id, .. } => Some(Route::WebRtc(id)),
            State::Relay { .. } => Some(Route::ServerRelay),
        }
    }

    /// The peer whose current link is `link` (`None`: a closed link).
    pub fn peer_of(&self, link: LinkId) -> Option<&PeerId> {
        self.peers
            .iter()
            .find(|(_, p)| matches!(p.state, State::Link { id, .. } if id == link))
            .map(|(peer, _)| peer)
    }

    /// Whether `peer` is reachable now (a connected link or a confirmed relay).
    pub fn is_up(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| {
            matches!(
                p.state,
                State::Link {
                    phase: Phase::Connected,
                    ..
                } | State::Relay { confirmed: true }
            )
        })
    }

    /// Whether any peer is reachable now.
    pub fn any_up(&self) -> bool {
        self.peers.keys().any(|p| self.is_up(p))
    }

    /// Whether `peer` was refused.
    pub fn is_refused(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.refused)
    }

    /// The DTLS fingerprint (algorithm, bytes) `peer`'s sealed SDP announced:
    /// a driver that can read the remote certificate checks it against this.
    pub fn expected_fingerprint(&self, peer: &PeerId) -> Option<&(String, Vec<u8>)> {
        self.peers.get(peer)?.fingerprint.as_ref()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<PathOutput> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.peers
            .values()
            .flat_map(|p| {
                let deadline = match p.state {
                    State::Link {
                        phase: Phase::Connecting { deadline } | Phase::Restarting { deadline },
                        ..
                    } => Some(deadline),
                    _ => None,
                };
                [deadline, p.stall_at, p.away_until]
            })
            .flatten()
            .min()
    }

    /// Deadlines that passed by `now`: links that did not connect fall to
    /// the relay, stalled transfers move (or re-switch), away peers expire.
    pub fn handle_timeout(&mut self, now: Millis) {
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        for peer in peers {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            if p.away_until.is_some_and(|t| t <= now) {
                p.away_until = None;
                self.out
                    .push_back(PathOutput::AwayExpired { peer: peer.clone() });
            }
            let p = &self.peers[&peer];
            match p.state {
                State::Link {
                    phase: Phase::Connecting { deadline },
                    ..
                } if deadline <= now => {
                    self.fall_to_relay(&peer, "WebRTC did not connect in time", true, now);
                }
                State::Link {
                    phase: Phase::Restarting { deadline },
                    ..
                } if deadline <= now => {
                    self.fall_to_relay(&peer, "the ICE restart did not connect in time", true, now);
                }
                _ => {}
            }
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            if p.stall_at.is_none_or(|t| t > now) {
                continue;
            }
            p.stall_at = None;
            match p.state {
                State::Link { .. } => {
                    self.fall_to_relay(&peer, "the transfer made no progress", true, now);
                }
                State::Relay { confirmed: true } => {
                    // Nothing came back on the relay: the peer may have
                    // restarted without the server noticing. Ask again, and
                    // let the transfers resume from what was confirmed.
                    self.send_switch(&peer, false);
                    self.out.push_back(PathOutput::FilesUp {
                        peer,
                        path_changed: true,
                    });
                }
                _ => {}
            }
        }
    }

    /// Feeds one input at `now`.
    pub fn handle(&mut self, input: PathInput, now: Millis) {
        match input {
            PathInput::Joined { me, peers } => self.on_joined(me, peers, now),
            PathInput::PeerJoined { peer } => {
                self.seen(&peer);
                self.entry(&peer).listed = true;
            }
            PathInput::PeerLeft { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.listed = false;
                    self.gone(&peer, GoneReason::Left, now);
                }
            }
            PathInput::Signal { from, signal } => self.on_signal(from, signal, now),
            PathInput::Refuse { peer, why } => self.refuse(&peer, why),
            PathInput::LocalCandidate { link, candidate } => {
                if let Some(peer) = self.peer_of(link).cloned()
                    && self.signaling_up
                {
                    self.out.push_back(PathOutput::Signal {
                        to: peer,
                        signal: PeerSignal::Candidate { candidate },
                    });
                }
            }
            PathInput::LinkConnected { link } => self.on_link_connected(link),
            PathInput::LinkFailed { link } => self.on_link_failed(link, now),
            PathInput::LinkClosed { link } => {
                if let Some(peer) = self.peer_of(link).cloned() {
                    self.gone(&peer, GoneReason::ConnectionLost, now);
                }
            }
            PathInput::ChannelOpen { link, channel } => self.on_channel(link, channel, true),
            PathInput::ChannelClosed { link, channel } => self.on_channel(link, channel, false),
            PathInput::SendProgress {
                peer,
                waiting,
                advanced,
            } => {
                let stall = now + self.settings.stall_timeout;
                let up = self.is_up(&peer);
                if let Some(p) = self.peers.get_mut(&peer) {
                    if !waiting || !up {
                        p.stall_at = None;
                    } else if advanced {
                        p.stall_at = Some(stall);
                    } else {
                        p.stall_at.get_or_insert(stall);
                    }
                }
            }
            PathInput::SendFailed { peer } => {
                let stall = now + self.settings.stall_timeout;
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.state != State::Idle
                {
                    p.stall_at.get_or_insert(stall);
                }
            }
            PathInput::SignalingLost => {
                self.signaling_up = false;
                let relayed: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.state == State::Relay { confirmed: true })
                    .map(|(peer, _)| peer.clone())
                    .collect();
                // Relayed links went through the server: down until we are back.
                for peer in relayed {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.state = State::Relay { confirmed: false };
                        p.stall_at = None;
                    }
                    self.out.push_back(PathOutput::ChatDown { peer });
                }
            }
        }
    }

    /// An authenticated packet `from` arrived over the server relay: the
    /// peer talks to us there, so our side moves too, and the relay link is
    /// up. Returns whether a frame it carries should be handled.
    pub fn relay_packet(&mut self, from: &PeerId, payload: &RelayPayload, now: Millis) -> bool {
        // Authenticated with the room key: a member of the room, even if
        // its `peer_joined` has not reached us yet.
        if self.entry(from).refused {
            return false;
        }
        self.seen(from);
        if !matches!(self.peers[from].state, State::Relay { .. }) {
            self.fall_to_relay(from, "the peer switched to the server relay", false, now);
        }
        let Some(p) = self.peers.get_mut(from) else {
            return false;
        };
        let State::Relay { confirmed } = p.state else {
            // The server is unreachable (we cannot be on the relay).
            return false;
        };
        let (is_switch, asks_reply, restarted) = match *payload {
            RelayPayload::Switch { epoch, reply } => {
                let restarted = epoch != 0 && p.relay_epoch != 0 && epoch != p.relay_epoch;
                if epoch != 0 {
                    p.relay_epoch = epoch;
                }
                (true, !reply, restarted)
            }
            RelayPayload::Frame { .. } => (false, false, false),
        };
        let peer = from.clone();
        if !confirmed {
            p.state = State::Relay { confirmed: true };
            // Confirm, so the peer's side comes up too even when neither
            // has anything to send.
            let answered_already = is_switch && !asks_reply;
            if !answered_already {
                self.send_switch(&peer, true);
            }
            self.out.extend([
                PathOutput::Connected {
                    peer: peer.clone(),
                    route: Route::ServerRelay,
                },
                PathOutput::ChatUp { peer: peer.clone() },
                PathOutput::FilesUp {
                    peer,
                    path_changed: true,
                },
            ]);
            return !is_switch;
        }
        if asks_reply {
            self.send_switch(&peer, true);
        }
        if restarted {
            self.out.extend([
                PathOutput::PeerRestarted { peer: peer.clone() },
                PathOutput::ChatDown { peer: peer.clone() },
                PathOutput::ChatUp { peer: peer.clone() },
            ]);
        }
        if asks_reply || restarted {
            // It lost track of us (a restart, a server blip on its side):
            // what was in flight may be lost.
            self.out.push_back(PathOutput::FilesUp {
                peer,
                path_changed: true,
            });
        }
        !is_switch
    }

    fn entry(&mut self, peer: &PeerId) -> &mut PeerPath {
        self.peers.entry(peer.clone()).or_insert_with(PeerPath::new)
    }

    /// `peer` shows signs of life: if it was away, it is back.
    fn seen(&mut self, peer: &PeerId) {
        if self
            .peers
            .get_mut(peer)
            .is_some_and(|p| p.away_until.take().is_some())
        {
            self.out
                .push_back(PathOutput::Returned { peer: peer.clone() });
        }
    }

    fn on_joined(&mut self, me: PeerId, listed: Vec<PeerId>, now: Millis) {
        self.signaling_up = true;
        if self.me.as_ref().is_some_and(|old| *old != me) {
            // A new identity: nothing of the old one carries over.
            let links: Vec<LinkId> = self
                .peers
                .values()
                .filter_map(|p| match p.state {
                    State::Link { id, .. } => Some(id),
                    _ => None,
                })
                .collect();
            self.out
                .extend(links.into_iter().map(|link| PathOutput::CloseLink { link }));
            // The old peers count as away: they come back if they show up
            // again, else they expire (and with them what waited for them).
            let away_until = Some(now.saturating_add(self.settings.return_window));
            for p in self.peers.values_mut() {
                *p = PeerPath {
                    refused: p.refused,
                    away_until,
                    ..PeerPath::new()
                };
            }
            self.out.push_back(PathOutput::StartedOver);
        }
        self.me = Some(me);
        // Peers we knew as present that the server no longer lists left
        // while we were away; a working link to one stays (it will rejoin).
        let vanished: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(peer, p)| {
                p.listed && !listed.contains(peer) && !matches!(p.state, State::Link { .. })
            })
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in vanished {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.listed = false;
            }
            self.gone(&peer, GoneReason::Left, now);
        }
        for peer in listed {
            self.seen(&peer);
            let server_only = self.settings.policy == PathPolicy::ServerOnly;
            let p = self.entry(&peer);
            p.listed = true;
            if p.refused {
                continue;
            }
            match p.state {
                // They confirm back; until then the relay link is down.
                State::Relay { .. } => self.send_switch(&peer, false),
                // Data channels work without the server.
                State::Link { .. } => {}
                State::Idle if server_only => {
                    self.fall_to_relay(&peer, "only the server relay is allowed", true, now);
                }
                // Newcomers make the offers.
                State::Idle => {
                    self.open_link(&peer, true, now);
                }
            }
        }
    }

    fn on_signal(&mut self, from: PeerId, signal: PeerSignal, now: Millis) {
        if self.is_refused(&from) {
            return;
        }
        match signal {
            PeerSignal::Offer { sdp } => self.on_offer(from, sdp, now),
            PeerSignal::Answer { sdp } => {
                let Some(State::Link { id, offerer, .. }) = self.peers.get(&from).map(|p| p.state)
                else {
                    return;
                };
                if !offerer {
                    return;
                }
                let Some(fingerprint) = sdp_fingerprint(&sdp) else {
                    return self.refuse(&from, no_fingerprint(&from));
                };
                self.entry(&from).fingerprint = Some(fingerprint);
                self.out
                    .push_back(PathOutput::AcceptAnswer { link: id, sdp });
            }
            PeerSignal::Candidate { candidate } => {
                if let Some(State::Link { id, .. }) = self.peers.get(&from).map(|p| p.state) {
                    self.out.push_back(PathOutput::AddCandidate {
                        link: id,
                        candidate,
                    });
                }
            }
        }
    }

    fn on_offer(&mut self, from: PeerId, sdp: String, now: Millis) {
        self.entry(&from);
        self.seen(&from);
        let state = self.peers[&from].state;
        if let State::Relay { .. } = state {
            // An ICE-restart offer of the link we left (same certificate),
            // held up on the way: our Switch reached the peer already, and
            // asking again would make it reset its transfers twice. Another
            // certificate is a restarted peer: tell it we use the relay.
            let stale = sdp_fingerprint(&sdp)
                .is_some_and(|f| self.peers[&from].fingerprint.as_ref() == Some(&f));
            if !stale {
                self.send_switch(&from, false);
            }
            return;
        }
        if self.settings.policy == PathPolicy::ServerOnly {
            return self.fall_to_relay(&from, "only the server relay is allowed", true, now);
        }
        let Some(fingerprint) = sdp_fingerprint(&sdp) else {
            return self.refuse(&from, no_fingerprint(&from));
        };
        let deadline = now + self.settings.connect_timeout;
        let p = self.entry(&from);
        let same_certificate = p.fingerprint.as_ref() == Some(&fingerprint);
        p.fingerprint = Some(fingerprint);
        if let State::Link { id, .. } = state {
            if same_certificate {
                // An ICE restart of the link we have; one not connected now
                // gets a fresh deadline.
                if let State::Link { phase, .. } = &mut p.state
                    && *phase != Phase::Connected
                {
                    *phase = Phase::Restarting { deadline };
                }
                self.out
                    .push_back(PathOutput::AcceptOffer { link: id, sdp });
                return;
            }
            // Another certificate: the peer restarted under the same id,
            // faster than the server noticed it leave.
            self.drop_path(&from);
            self.out
                .push_back(PathOutput::PeerRestarted { peer: from.clone() });
        }
        let link = self.open_link(&from, false, now);
        self.out.push_back(PathOutput::AcceptOffer { link, sdp });
    }

    fn on_link_connected(&mut self, link: LinkId) {
        let Some(peer) = self.peer_of(link).cloned() else {
            return;
        };
        let p = self.entry(&peer);
        let State::Link { phase, .. } = &mut p.state else {
            return;
        };
        let restarted = match *phase {
            Phase::Connected => return,
            Phase::Connecting { .. } => false,
            Phase::Restarting { .. } => true,
        };
        *phase = Phase::Connected;
        self.out.push_back(PathOutput::Connected {
            peer: peer.clone(),
            route: Route::WebRtc(link),
        });
        if restarted {
            self.out.push_back(PathOutput::FilesUp {
                peer,
                path_changed: true,
            });
        }
    }

    fn on_link_failed(&mut self, link: LinkId, now: Millis) {
        let Some(peer) = self.peer_of(link).cloned() else {
            return;
        };
        if !self.signaling_up {
            return self.gone(&peer, GoneReason::ConnectionLost, now);
        }
        let deadline = now + self.settings.connect_timeout;
        let p = self.entry(&peer);
        let State::Link { offerer, phase, .. } = p.state else {
            return;
        };
        match phase {
            Phase::Connecting { .. } => self.fall_to_relay(&peer, "ICE failed", true, now),
            Phase::Restarting { .. } => {
                self.fall_to_relay(&peer, "ICE failed again after a restart", true, now);
            }
            Phase::Connected => {
                if let State::Link { phase, .. } = &mut p.state {
                    *phase = Phase::Restarting { deadline };
                }
                p.stall_at = None;
                self.out.push_back(PathOutput::Disconnected { peer });
                if offerer {
                    self.out.push_back(PathOutput::CreateOffer {
                        link,
                        ice_restart: true,
                    });
                }
            }
        }
    }

    fn on_channel(&mut self, link: LinkId, channel: LinkChannel, open: bool) {
        let Some(peer) = self.peer_of(link).cloned() else {
            return;
        };
        let p = self.entry(&peer);
        let State::Link { chat_open, .. } = &mut p.state else {
            return;
        };
        match (channel, open) {
            (Channel::Chat, true) if !*chat_open => {
                *chat_open = true;
                self.out.push_back(PathOutput::ChatUp { peer });
            }
            (Channel::Chat, false) if *chat_open => {
                *chat_open = false;
                self.out.push_back(PathOutput::ChatDown { peer });
            }
            (Channel::File, true) => self.out.push_back(PathOutput::FilesUp {
                peer,
                path_changed: false,
            }),
            _ => {}
        }
    }

    fn open_link(&mut self, peer: &PeerId, offerer: bool, now: Millis) -> LinkId {
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let deadline = now + self.settings.connect_timeout;
        self.entry(peer).state = State::Link {
            id: link,
            offerer,
            phase: Phase::Connecting { deadline },
            chat_open: false,
        };
        self.out.push_back(PathOutput::OpenLink {
            peer: peer.clone(),
            link,
            offerer,
        });
        if offerer {
            self.out.push_back(PathOutput::CreateOffer {
                link,
                ice_restart: false,
            });
        }
        link
    }

    /// Closes whatever path `peer` has (no `Gone`): the link goes, chat goes down.
    fn drop_path(&mut self, peer: &PeerId) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let chat_was_up = match std::mem::replace(&mut p.state, State::Idle) {
            State::Idle => false,
            State::Link { id, chat_open, .. } => {
                self.out.push_back(PathOutput::CloseLink { link: id });
                chat_open
            }
            State::Relay { confirmed } => confirmed,
        };
        p.stall_at = None;
        if chat_was_up {
            self.out
                .push_back(PathOutput::ChatDown { peer: peer.clone() });
        }
    }

    fn send_switch(&mut self, peer: &PeerId, reply: bool) {
        self.out.push_back(PathOutput::Relay {
            to: peer.clone(),
            payload: RelayPayload::Switch {
                epoch: self.settings.epoch,
                reply,
            },
        });
    }

    /// Moves `peer` to the server relay (once): its link closes; with
    /// `ask`, a Switch tells the peer (it replies).
    fn fall_to_relay(&mut self, peer: &PeerId, why: &'static str, ask: bool, now: Millis) {
        if matches!(self.entry(peer).state, State::Relay { .. }) {
            return;
        }
        if !self.signaling_up {
            // No server, no relay.
            return self.gone(peer, GoneReason::ConnectionLost, now);
        }
        self.drop_path(peer);
        self.entry(peer).state = State::Relay { confirmed: false };
        self.out.push_back(PathOutput::FellToRelay {
            peer: peer.clone(),
            why,
        });
        if ask {
            self.send_switch(peer, false);
        }
    }

    fn gone(&mut self, peer: &PeerId, reason: GoneReason, now: Millis) {
        self.drop_path(peer);
        let window = self.settings.return_window;
        let p = self.entry(peer);
        p.fingerprint = None;
        if p.away_until.is_none() {
            p.away_until = Some(now.saturating_add(window));
        }
        self.out.push_back(PathOutput::Gone {
            peer: peer.clone(),
            reason,
        });
    }

    fn refuse(&mut self, peer: &PeerId, why: String) {
        self.drop_path(peer);
        let p = self.entry(peer);
        p.refused = true;
        p.fingerprint = None;
        p.away_until = None;
        self.out.push_back(PathOutput::Refused {
            peer: peer.clone(),
            why,
        });
    }
}

fn no_fingerprint(peer: &PeerId) -> String {
    format!("{peer}'s sealed SDP announced no DTLS fingerprint: refusing the connection")
}

#[cfg(test)]
mod tests;
