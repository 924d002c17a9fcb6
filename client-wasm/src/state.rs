//! The view state of a room page: what the UI renders. The driver
//! ([`crate::room`]) changes it only through [`Action`]s dispatched to this
//! `use_reducer` store; components read it and never touch the driver's
//! internals.

use std::rc::Rc;

use yew::Reducible;

/// Where a room joined by short code stands in the key exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CodeStatus {
    /// Not a code room (or nothing to show).
    #[default]
    Off,
    /// Joined; waiting for the other side.
    Waiting,
    /// Exchanging with the other side.
    Checking,
    /// Both sides hold the same key.
    Matched,
    /// The other side derived another key: a wrong code (or a guess).
    Mismatch,
    /// The exchange failed otherwise, for this reason.
    Failed(String),
}

/// The signaling connection as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServerStatus {
    /// Connecting for the first time.
    #[default]
    Connecting,
    /// Joined the room.
    Joined,
    /// Lost; retrying in `in_secs` seconds (attempt `attempt`).
    Reconnecting {
        /// Seconds until the next attempt.
        in_secs: u32,
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// Given up (a refusal that retrying cannot fix).
    Failed,
}

/// A remote peer's connection, as `data-state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Negotiating or reconnecting.
    Connecting,
    /// Connected without a relay.
    Direct,
    /// Connected through a TURN relay.
    Turn,
    /// Talking through the server relay (frames over the signaling
    /// WebSocket, sealed with the room key).
    ServerRelay,
    /// The connection failed.
    Failed,
}

impl LinkState {
    /// The `data-state` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Direct => "direct",
            Self::Turn => "turn",
            Self::ServerRelay => "server-relay",
            Self::Failed => "failed",
        }
    }
}

/// One remote peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    /// Server-assigned id.
    pub id: String,
    /// Display name (may be empty).
    pub name: String,
    /// Connection state.
    pub state: LinkState,
    /// Round-trip time of the selected candidate pair.
    pub rtt_ms: Option<u32>,
    /// The file channel is open (files can be sent).
    pub files_ready: bool,
}

/// Own message status, as `data-status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not yet on every recipient's channel.
    Sending,
    /// Sent to every recipient.
    Sent,
    /// Acknowledged by every recipient.
    Delivered,
}

impl Status {
    /// The `data-status` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageView {
    /// Hex message id.
    pub id: String,
    /// Sender peer id, or `None` for own messages.
    pub from: Option<String>,
    /// Sender name at the time.
    pub name: String,
    /// Wall-clock send time (epoch ms).
    pub sent_at_ms: u64,
    /// The text.
    pub text: String,
    /// Own messages only.
    pub status: Option<Status>,
}

/// Direction of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We send.
    Send,
    /// We receive.
    Receive,
}

/// Where a transfer stands, as `data-state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferState {
    /// Receiver: waiting for the user to accept or decline.
    Offered,
    /// Sender: hashing, or waiting for the receiver to accept.
    Waiting,
    /// Bytes are moving.
    Active,
    /// Verified by the receiver.
    Done,
    /// Failed (error, peer left, hash mismatch…).
    Failed,
    /// Cancelled by either side.
    Cancelled,
    /// Declined by the receiver.
    Declined,
}

impl TransferState {
    /// The `data-state` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Waiting => "waiting",
            Self::Active => "active",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Declined => "declined",
        }
    }

    /// Whether the transfer has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Done | Self::Failed | Self::Cancelled | Self::Declined
        )
    }
}

/// One transfer (one file to or from one peer).
#[derive(Debug, Clone, PartialEq)]
pub struct TransferView {
    /// Hex transfer id.
    pub id: String,
    /// The other peer.
    pub peer: String,
    /// The other peer's name.
    pub peer_name: String,
    /// Send or receive.
    pub direction: Direction,
    /// Offered file name (may contain `/` for folders).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes confirmed (sender) or stored (receiver).
    pub done: u64,
    /// Recent speed.
    pub bytes_per_sec: f64,
    /// Estimated time left.
    pub eta_ms: Option<u64>,
    /// Where it stands.
    pub state: TransferState,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// BLAKE3 hex, once verified (receiver).
    pub hash: Option<String>,
    /// Object URL to save the received file.
    pub url: Option<String>,
    /// A short note (e.g. "hashing…", "saving…").
    pub note: Option<String>,
    /// The offset this transfer resumed at after an interruption (a
    /// reload, the peer away), when it did not start over from zero.
    pub resumed_from: Option<u64>,
    /// Sender: chunk bytes handed to the transport in all, re-sends and
    /// earlier attempts included.
    pub sent: u64,
    /// Receiver: bytes from the start stored for good (a reload keeps
    /// them; 0 where the browser cannot resume).
    pub stored: u64,
}

/// An error shown in a `role="alert"` element until dismissed.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// Unique per page.
    pub id: u32,
    /// The message.
    pub text: String,
    /// About the server connection: cleared once (re)joined.
    pub server: bool,
}

/// Everything a room page shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoomState {
    /// Own peer id once welcomed.
    pub me: Option<String>,
    /// Signaling connection state.
    pub server: ServerStatus,
    /// Remote peers in join order.
    pub peers: Vec<PeerView>,
    /// Chat messages in arrival order.
    pub messages: Vec<MessageView>,
    /// Transfers, newest last.
    pub transfers: Vec<TransferView>,
    /// Peers typing right now (ids, in the order they started).
    pub typing: Vec<String>,
    /// The short-code exchange, in a room joined by code.
    pub code: CodeStatus,
    /// Errors on show.
    pub notices: Vec<Notice>,
    next_notice: u32,
}

/// A change to [`RoomState`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Welcomed with this peer id.
    Welcome(String),
    /// Signaling state changed.
    Server(ServerStatus),
    /// The short-code exchange moved on.
    Code(CodeStatus),
    /// A peer appeared (or its name changed).
    PeerUpsert {
        /// Id.
        id: String,
        /// Name.
        name: String,
    },
    /// Connection state / RTT of a peer.
    PeerLink {
        /// Id.
        id: String,
        /// State.
        state: LinkState,
        /// RTT when known.
        rtt_ms: Option<u32>,
    },
    /// File channel open or closed.
    PeerFiles {
        /// Id.
        id: String,
        /// Open.
        ready: bool,
    },
    /// The peer left.
    PeerGone(String),
    /// Forget every peer (rejoining after a reconnect).
    ClearPeers,
    /// A message to show (own or received). A received one ends its
    /// sender's typing indicator.
    Message(MessageView),
    /// Stored history loaded: shown before every message already shown,
    /// skipping those already there.
    History(Vec<MessageView>),
    /// A peer started (`typing: true`) or stopped typing.
    Typing {
        /// Peer id.
        id: String,
        /// Typing now.
        typing: bool,
    },
    /// Own message status changed.
    MessageStatus {
        /// Hex id.
        id: String,
        /// New status.
        status: Status,
    },
    /// Own message refused before sending.
    MessageDropped(String),
    /// Add or replace a transfer (matched by id and peer).
    Transfer(TransferView),
    /// Show an error.
    Error(String),
    /// Show an error about the server connection (cleared on rejoin).
    ServerError(String),
    /// Hide an error.
    Dismiss(u32),
}

/// The same message: same id from the same sender.
fn same_message(a: &MessageView, b: &MessageView) -> bool {
    a.id == b.id && a.from == b.from
}

enum Kind {
    Server,
    Other,
}

/// Most errors shown at once; older ones scroll away.
const MAX_NOTICES: usize = 5;

impl Reducible for RoomState {
    type Action = Action;

    fn reduce(self: Rc<Self>, action: Action) -> Rc<Self> {
        let mut s = Rc::unwrap_or_clone(self);
        let action_kind = match action {
            Action::ServerError(_) => Kind::Server,
            _ => Kind::Other,
        };
        match action {
            Action::Welcome(me) => {
                s.notices.retain(|n| !n.server);
                s.me = Some(me);
                s.server = ServerStatus::Joined;
            }
            Action::Server(status) => s.server = status,
            // A settled outcome stays: late events cannot make it look pending.
            Action::Code(status) => {
                if !matches!(s.code, CodeStatus::Mismatch | CodeStatus::Failed(_)) {
                    s.code = status;
                }
            }
            Action::PeerUpsert { id, name } => match s.peers.iter_mut().find(|p| p.id == id) {
                Some(p) => p.name = name,
                None => s.peers.push(PeerView {
                    id,
                    name,
                    state: LinkState::Connecting,
                    rtt_ms: None,
                    files_ready: false,
                }),
            },
            Action::PeerLink { id, state, rtt_ms } => {
                if let Some(p) = s.peers.iter_mut().find(|p| p.id == id) {
                    p.state = state;
                    p.rtt_ms = rtt_ms;
                }
            }
            Action::PeerFiles { id, ready } => {
                if let Some(p) = s.peers.iter_mut().find(|p| p.id == id) {
                    p.files_ready = ready;
                }
            }
            Action::PeerGone(id) => {
                s.typing.retain(|t| *t != id);
                s.peers.retain(|p| p.id != id);
            }
            Action::ClearPeers => {
                s.typing.clear();
                s.peers.clear();
            }
            Action::Message(m) => {
                if let Some(from) = &m.from {
                    s.typing.retain(|t| t != from);
                }
                if !s.messages.iter().any(|x| same_message(x, &m)) {
                    s.messages.push(m);
                }
            }
            Action::History(loaded) => {
                let mut older: Vec<MessageView> = Vec::with_capacity(loaded.len());
                for m in loaded {
                    let known = s.messages.iter().chain(&older).any(|x| same_message(x, &m));
                    if !known {
                        older.push(m);
                    }
                }
                s.messages.splice(0..0, older);
            }
            Action::Typing { id, typing } => {
                let known = s.typing.contains(&id);
                if typing && !known {
                    s.typing.push(id);
                } else if !typing && known {
                    s.typing.retain(|t| *t != id);
                }
            }
            Action::MessageStatus { id, status } => {
                if let Some(m) = s
                    .messages
                    .iter_mut()
                    .find(|m| m.from.is_none() && m.id == id)
                {
                    m.status = Some(status);
                }
            }
            Action::MessageDropped(id) => s.messages.retain(|m| !(m.from.is_none() && m.id == id)),
            Action::Transfer(t) => match s
                .transfers
                .iter_mut()
                .find(|x| x.id == t.id && x.peer == t.peer)
            {
                Some(x) => *x = t,
                None => s.transfers.push(t),
            },
            Action::Error(text) | Action::ServerError(text) => {
                let server = matches!(action_kind, Kind::Server);
                s.next_notice += 1;
                s.notices.push(Notice {
                    id: s.next_notice,
                    text,
                    server,
                });
                if s.notices.len() > MAX_NOTICES {
                    s.notices.remove(0);
                }
            }
            Action::Dismiss(id) => s.notices.retain(|n| n.id != id),
        }
        Rc::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reduce(state: RoomState, actions: Vec<Action>) -> RoomState {
        let mut s = Rc::new(state);
        for a in actions {
            s = s.reduce(a);
        }
        Rc::unwrap_or_clone(s)
    }

    #[test]
    fn a_failed_code_exchange_stays_failed() {
        let s = reduce(
            RoomState::default(),
            vec![
                Action::Code(CodeStatus::Waiting),
                Action::Code(CodeStatus::Checking),
            ],
        );
        assert_eq!(s.code, CodeStatus::Checking);
        let s = reduce(
            s,
            vec![
                Action::Code(CodeStatus::Mismatch),
                Action::Code(CodeStatus::Waiting),
            ],
        );
        assert_eq!(s.code, CodeStatus::Mismatch);
    }

    fn own(id: &str) -> MessageView {
        MessageView {
            id: id.into(),
            from: None,
            name: String::new(),
            sent_at_ms: 0,
            text: "t".into(),
            status: Some(Status::Sending),
        }
    }

    fn transfer(id: &str, peer: &str, state: TransferState) -> TransferView {
        TransferView {
            id: id.into(),
            peer: peer.into(),
            peer_name: String::new(),
            direction: Direction::Send,
            name: "f".into(),
            size: 10,
            done: 0,
            bytes_per_sec: 0.0,
            eta_ms: None,
            state,
            error: None,
            hash: None,
            url: None,
            note: None,
            resumed_from: None,
            sent: 0,
            stored: 0,
        }
    }

    #[test]
    fn a_message_is_shown_once_and_its_status_follows_the_session() {
        let s = reduce(
            RoomState::default(),
            vec![
                Action::Message(own("m1")),
                Action::Message(own("m1")),
                Action::MessageStatus {
                    id: "m1".into(),
                    status: Status::Delivered,
                },
            ],
        );
        assert_eq!(s.messages.len(), 1);
        assert_eq!(s.messages[0].status, Some(Status::Delivered));
    }

    fn theirs(id: &str, from: &str) -> MessageView {
        MessageView {
            from: Some(from.into()),
            status: None,
            ..own(id)
        }
    }

    fn ids(s: &RoomState) -> Vec<&str> {
        s.messages.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn loaded_history_goes_before_what_is_shown_and_only_once() {
        let s = reduce(
            RoomState::default(),
            vec![
                Action::Message(theirs("live", "p1")),
                Action::History(vec![
                    own("old1"),
                    theirs("old2", "p1"),
                    own("old1"),
                    theirs("live", "p1"),
                ]),
            ],
        );
        assert_eq!(ids(&s), ["old1", "old2", "live"]);
    }

    #[test]
    fn typing_shows_until_stopped_or_a_message_from_that_peer() {
        let typing = |id: &str, typing: bool| Action::Typing {
            id: id.into(),
            typing,
        };
        let s = reduce(
            RoomState::default(),
            vec![typing("a", true), typing("b", true), typing("a", true)],
        );
        assert_eq!(s.typing, ["a", "b"]);
        let s = reduce(
            s,
            vec![
                Action::Message(theirs("m1", "a")),
                Action::Message(own("m2")),
            ],
        );
        assert_eq!(s.typing, ["b"]);
        let s = reduce(s, vec![typing("a", true), typing("b", false)]);
        assert_eq!(s.typing, ["a"]);
        let s = reduce(s, vec![Action::PeerGone("a".into())]);
        assert!(s.typing.is_empty());
    }

    #[test]
    fn the_same_id_from_two_senders_is_two_messages() {
        let mut theirs = own("m1");
        theirs.from = Some("p1".into());
        theirs.status = None;
        let s = reduce(
            RoomState::default(),
            vec![Action::Message(own("m1")), Action::Message(theirs)],
        );
        assert_eq!(s.messages.len(), 2);
    }

    #[test]
    fn a_transfer_is_replaced_per_id_and_peer() {
        let s = reduce(
            RoomState::default(),
            vec![
                Action::Transfer(transfer("t1", "a", TransferState::Waiting)),
                Action::Transfer(transfer("t1", "b", TransferState::Waiting)),
                Action::Transfer(transfer("t1", "a", TransferState::Done)),
            ],
        );
        let states: Vec<_> = s
            .transfers
            .iter()
            .map(|t| (t.peer.as_str(), t.state))
            .collect();
        assert_eq!(
            states,
            [("a", TransferState::Done), ("b", TransferState::Waiting)]
        );
    }

    #[test]
    fn server_errors_clear_on_rejoin_and_others_stay() {
        let s = reduce(
            RoomState::default(),
            vec![
                Action::ServerError("lost".into()),
                Action::Error("transfer failed".into()),
                Action::Welcome("me".into()),
            ],
        );
        let texts: Vec<_> = s.notices.iter().map(|n| n.text.as_str()).collect();
        assert_eq!(texts, ["transfer failed"]);
        assert_eq!(s.server, ServerStatus::Joined);
    }

    #[test]
    fn notices_are_bounded_and_dismissable() {
        let actions = (0..MAX_NOTICES + 3)
            .map(|i| Action::Error(format!("e{i}")))
            .collect();
        let s = reduce(RoomState::default(), actions);
        assert_eq!(s.notices.len(), MAX_NOTICES);
        let first = s.notices[0].id;
        let s = reduce(s, vec![Action::Dismiss(first)]);
        assert_eq!(s.notices.len(), MAX_NOTICES - 1);
    }

    #[test]
    fn peers_keep_join_order_and_leave() {
        let up = |id: &str| Action::PeerUpsert {
            id: id.into(),
            name: String::new(),
        };
        let s = reduce(
            RoomState::default(),
            vec![
                up("a"),
                up("b"),
                Action::PeerLink {
                    id: "a".into(),
                    state: LinkState::Turn,
                    rtt_ms: Some(7),
                },
                Action::PeerGone("b".into()),
            ],
        );
        assert_eq!(s.peers.len(), 1);
        assert_eq!(
            (s.peers[0].state, s.peers[0].rtt_ms),
            (LinkState::Turn, Some(7))
        );
    }

    #[test]
    fn link_states_have_their_data_state_names() {
        let names: Vec<_> = [
            LinkState::Connecting,
            LinkState::Direct,
            LinkState::Turn,
            LinkState::ServerRelay,
            LinkState::Failed,
        ]
        .map(LinkState::as_str)
        .into();
        assert_eq!(
            names,
            ["connecting", "direct", "turn", "server-relay", "failed"]
        );
    }
}
