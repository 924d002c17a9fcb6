//! The room driver: the one place where a room's state changes. It owns the
//! signaling socket, one [`PeerLink`] per remote peer, the page's
//! [`ChatSession`] and every [`FileSender`] / [`FileReceiver`], and it behaves
//! on the wire exactly like the CLI's `room.rs`: the newcomer offers to the
//! peers in `welcome`, chat frames go on the chat channel and the rest on the
//! file channel, sending is paced by `bufferedamountlow`. Offers, answers
//! and candidates travel sealed with the room key
//! ([`parlor_protocol::sealed`]); unsealed ones are refused.
//!
//! Each peer is reached one of two ways: an `RTCPeerConnection` (direct or
//! through TURN), or the **server relay** ([`parlor_protocol::relay`]):
//! frames sealed with the room key, sent as binary messages on the signaling
//! socket. A link falls to the relay when its connection is not `connected`
//! within [`CONNECT_TIMEOUT_MS`] of being created, or when it fails (after
//! one ICE restart if it had been connected); with `?relay=server` every
//! link is on the relay from the start. Going to the relay closes the
//! connection and sends `Switch` once; any relay packet from a peer puts our
//! side of that link on the relay too.
//!
//! JS callbacks reach the driver through a `Weak` reference (so dropping the
//! page's handle frees everything) and never re-enter it: if the driver is
//! busy, the event is retried on the next microtask.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};

use gloo::timers::callback::{Interval, Timeout};
use parlor_core::{
    ChatOutput, ChatSession, ChatSnapshot, FileReceiver, FileSender, MessageStatus, Millis,
    Progress, ReceiverOutput, ReceiverState, SenderOutput, SenderState, TransferConfig,
    TransferError,
};
use parlor_protocol::{
    CancelReason, ClientMessage, ErrorCode, FileOffer, Frame, IceServer, MessageId,
    PROTOCOL_VERSION, PakeError, PakeMessage, PakeSession, PakeStep, PeerId, PeerSignal,
    RelayCipher, RelayPayload, RoomId, RoomKey, ServerMessage, ShortCode, SignalCipher, TransferId,
};
use wasm_bindgen::JsCast as _;
use wasm_bindgen::closure::Closure;
use web_sys::File;

use crate::history::{History, HistoryDb, RoomRecord};
use crate::params::RelayMode;
use crate::rtc::{self, Channel, PeerEvent, PeerLink};
use crate::signaling::{self, SignalEvent, Signaling};
use crate::state::{
    Action, CodeStatus, Direction, LinkState, MessageView, ServerStatus, Status, TransferState,
    TransferView,
};
use crate::storage::{self, IncomingFile, SinkEvent};
use crate::util::{crypto_random_bytes, hex, now_ms, random_bytes, wall_ms};
use parlor_core::chat::DEFAULT_RETENTION_MS;
use parlor_core::room::{
    GoneReason, LinkId, PathInput, PathOutput, PathPolicy, PathSettings, Paths, Route,
};

/// First reconnect delay; doubled per failed attempt up to [`MAX_RECONNECT_SECS`].
const FIRST_RECONNECT_SECS: u32 = 1;
/// Longest wait between reconnect attempts.
const MAX_RECONNECT_SECS: u32 = 30;
/// How often connection paths and RTTs are refreshed from `getStats()`.
const STATS_EVERY_MS: u32 = 2_000;
/// Least time between two `Typing` frames while the user types: often enough
/// that the other side's indicator ([`TYPING_SHOWN_MS`]) never lapses during
/// steady typing, rare enough to cost nothing.
const TYPING_EVERY_MS: Millis = 3_000;
/// How long a peer's typing indicator stays after its last `Typing` frame:
/// longer than [`TYPING_EVERY_MS`] plus a slow link's delay.
const TYPING_SHOWN_MS: u32 = 5_000;
/// How long a peer connection may take to become `connected` (after it is
/// created, or after an ICE restart) before the link falls to the server
/// relay.
pub const CONNECT_TIMEOUT_MS: u32 = 8_000;
/// How often the signaling socket's `bufferedAmount` is polled while a
/// transfer on the server relay waits for it to drain (a WebSocket has no
/// buffered-amount-low event).
const RELAY_DRAIN_POLL_MS: u32 = 20;
/// Least time between two notices about unreadable relay packets.
const RELAY_WARNING_EVERY_MS: Millis = 10_000;
/// How long an outgoing transfer to a peer that went away is kept, waiting
/// for it to come back under the same id and take the offer again.
pub const AWAY_TRANSFER_MS: u32 = 10 * 60 * 1000;
/// Chat state is saved at most this often while it changes (at once when
/// an ack waits for the save).
const SAVE_DEBOUNCE_MS: u32 = 200;
/// How long the page waits for its saved room state before joining as a
/// new peer anyway (IndexedDB can be slow or stuck).
const STATE_LOAD_TIMEOUT_MS: u32 = 3_000;
/// Close code of a connection the server replaced with a newer one of the
/// same peer (`parlor_signaling::rooms::REPLACED_CLOSE_CODE`).
const REPLACED_CLOSE_CODE: u16 = 4000;

/// An input to one outgoing transfer's sender, given the file channel's
/// buffered amount.
type SenderInput = Box<dyn FnOnce(&mut FileSender, u64)>;

struct Outgoing {
    peer: PeerId,
    file: File,
    /// `None` while the file is being hashed.
    sender: Option<FileSender>,
    send_error: Option<String>,
    view: TransferView,
    /// Chunk bytes sent by earlier senders of this transfer (before the
    /// peer went away and the offer was made again).
    sent_before: u64,
    /// Set while the peer is away: gives the transfer up after
    /// [`AWAY_TRANSFER_MS`].
    away: Option<Timeout>,
}

struct Incoming {
    receiver: FileReceiver,
    sink: Option<IncomingFile>,
    /// `Some` once verified: frames held until the file is closed and
    /// offered for saving (the `FileVerified` must not go out before).
    held: Option<Vec<Frame>>,
    view: TransferView,
}

/// A room joined by short code, until the room key is agreed: the page
/// joins the room without a key, runs SPAKE2 with the one other peer over
/// `pake` messages ([`parlor_protocol::code`]), and only then sets up
/// ciphers and connections, exactly as with the key of an invite link.
struct CodePhase {
    code: ShortCode,
    /// The exchange with the other peer, once there is one.
    session: Option<PakeSession>,
    /// Whether we make the offer afterwards: the peer was in our welcome
    /// (we are the newcomer), as in every room.
    we_offer: bool,
}

/// The driver; see the module docs.
pub struct Driver {
    weak: Weak<RefCell<Driver>>,
    room: RoomId,
    name: String,
    dispatch: Rc<dyn Fn(Action)>,
    signaling: Option<Signaling>,
    ever_joined: bool,
    fatal: bool,
    attempt: u32,
    reconnect_timer: Option<Timeout>,
    me: Option<PeerId>,
    ice_servers: Vec<IceServer>,
    names: HashMap<PeerId, String>,
    /// The path to each peer: which link is current, when to fall back
    /// (`parlor_core::room::path`; this driver carries out its outputs).
    paths: Paths,
    /// Fires at the path machine's next deadline.
    path_timer: Option<Timeout>,
    /// The deadline `path_timer` is set for.
    path_deadline: Option<Millis>,
    /// The peer connections the path machine asked for, by identity.
    links: HashMap<LinkId, PeerLink>,
    link_states: HashMap<PeerId, LinkState>,
    /// How this page must reach peers (`?relay=`).
    relay_mode: RelayMode,
    /// Seals and opens server-relay packets; `None` without a room key
    /// (or without `crypto.getRandomValues`): then the relay is unusable.
    cipher: Option<RelayCipher>,
    /// From the last `welcome`: rejoining with it keeps our peer id, so
    /// connections that survived a lost server stay up.
    resume_token: Option<String>,
    /// Polls the socket's `bufferedAmount` while a relayed transfer waits
    /// for it to drain.
    relay_drain: Option<Interval>,
    /// When the last notice about a bad relay packet was shown.
    relay_warned_at: Option<Millis>,
    /// Seals and opens offers, answers and candidates with the room key;
    /// `None` without a key (then no WebRTC connection can be set up).
    signal_cipher: Option<SignalCipher>,
    /// Peers already told off for unsealed signaling (one notice each).
    told_unsealed: HashSet<PeerId>,
    /// Joined by short code and the key not agreed yet.
    code: Option<CodePhase>,
    chat: ChatSession,
    chat_timer: Option<Timeout>,
    stats_timer: Option<Interval>,
    outgoing: HashMap<TransferId, Outgoing>,
    incoming: HashMap<(PeerId, TransferId), Incoming>,
    config: TransferConfig,
    history: History,
    /// When we last sent `Typing` frames (page clock); `None` after sending
    /// a message, so the next keystroke announces typing at once.
    typing_sent_at: Option<Millis>,
    /// Per peer shown as typing: the timer that hides the indicator.
    typing_timers: HashMap<PeerId, Timeout>,
    /// The user has been told that history cannot be saved.
    told_no_history: bool,
    /// This tab's slot for the room's saved state (see [`RoomRecord`]).
    slot: String,
    /// The peer id of the identity restored with the chat state, until
    /// the welcome confirms it.
    restored_id: Option<PeerId>,
    /// Joining started (after the saved state was read, or without it).
    started: bool,
    /// Joins without the saved state if reading it takes too long.
    start_timer: Option<Timeout>,
    /// Whether this browser can join at all (WebRTC or the relay).
    can_join: bool,
    /// The chat generation last saved (or given up on).
    saved_generation: Option<u64>,
    /// A save is under way.
    saving: bool,
    /// Something changed while saving: save again after.
    save_again: bool,
    save_timer: Option<Timeout>,
    /// Chat acks held until the state that delivered their messages is
    /// saved: `(generation needed, peer, encoded frame)`. Acking first
    /// would let the sender forget a message a reload had not kept.
    held_acks: Vec<(u64, PeerId, Vec<u8>)>,
    /// Saves the state when the page is hidden or unloaded.
    _unload: Option<UnloadHook>,
}

/// `pagehide` / `beforeunload` listeners on the window, removed on drop.
struct UnloadHook {
    closure: Closure<dyn FnMut(web_sys::Event)>,
}

impl UnloadHook {
    const EVENTS: [&str; 2] = ["pagehide", "beforeunload"];

    fn new(weak: Weak<RefCell<Driver>>) -> Option<Self> {
        let window = web_sys::window()?;
        let closure = Closure::<dyn FnMut(web_sys::Event)>::new(move |_: web_sys::Event| {
            with(&weak, Driver::save_now);
        });
        for ev in Self::EVENTS {
            let _ = window.add_event_listener_with_callback(ev, closure.as_ref().unchecked_ref());
        }
        Some(Self { closure })
    }
}

impl Drop for UnloadHook {
    fn drop(&mut self) {
        if let Some(window) = web_sys::window() {
            for ev in Self::EVENTS {
                let _ = window
                    .remove_event_listener_with_callback(ev, self.closure.as_ref().unchecked_ref());
            }
        }
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("room", &self.room)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// The page's handle on its room driver. Cheap to clone; equal when it is
/// the same driver.
#[derive(Clone)]
pub struct RoomHandle(Rc<RefCell<Driver>>);

impl PartialEq for RoomHandle {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for RoomHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomHandle").finish_non_exhaustive()
    }
}

/// Runs `f` on the driver behind `weak`, now if it is free, else on the next
/// microtask (a JS event never re-enters a driver method already running).
fn with(weak: &Weak<RefCell<Driver>>, f: impl FnOnce(&mut Driver) + 'static) {
    let Some(rc) = weak.upgrade() else { return };
    let Ok(mut d) = rc.try_borrow_mut() else {
        let weak = weak.clone();
        wasm_bindgen_futures::spawn_local(async move { with(&weak, f) });
        return;
    };
    f(&mut d);
}

impl RoomHandle {
    /// Starts the driver for `room`: connects to the server and joins.
    /// `key` (the invite link's `#KEY`) seals server-relay packets;
    /// without one, `code` (a short code whose nameplate was opened for
    /// `room`) derives it with the other peer first. `relay_mode` comes from
    /// the page's `?relay=`.
    pub fn start(
        room: RoomId,
        key: Option<RoomKey>,
        code: Option<ShortCode>,
        relay_mode: RelayMode,
        dispatch: impl Fn(Action) + 'static,
    ) -> Self {
        let history = History::new(room.as_str());
        // Nonce prefixes must be unpredictable: only the Crypto API will do.
        let cipher = key
            .as_ref()
            .and_then(|k| crypto_random_bytes().map(|p| RelayCipher::new(k, p)));
        let signal_cipher = key
            .as_ref()
            .and_then(|k| crypto_random_bytes().map(|p| SignalCipher::new(k, p)));
        let load = History::open(room.as_str().to_owned());
        let slot = storage::tab_slot(room.as_str());
        let rc = Rc::new_cyclic(|weak| {
            RefCell::new(Driver {
                weak: weak.clone(),
                paths: Paths::new(path_settings(relay_mode)),
                path_timer: None,
                path_deadline: None,
                room,
                name: storage::display_name(),
                dispatch: Rc::new(dispatch),
                signaling: None,
                ever_joined: false,
                fatal: false,
                attempt: 0,
                reconnect_timer: None,
                me: None,
                ice_servers: Vec::new(),
                names: HashMap::new(),
                links: HashMap::new(),
                link_states: HashMap::new(),
                relay_mode,
                cipher,
                resume_token: None,
                relay_drain: None,
                relay_warned_at: None,
                signal_cipher,
                told_unsealed: HashSet::new(),
                code: code.filter(|_| key.is_none()).map(|code| CodePhase {
                    code,
                    session: None,
                    we_offer: false,
                }),
                chat: ChatSession::new(),
                chat_timer: None,
                stats_timer: None,
                outgoing: HashMap::new(),
                incoming: HashMap::new(),
                config: TransferConfig::default(),
                history,
                typing_sent_at: None,
                typing_timers: HashMap::new(),
                told_no_history: false,
                slot: slot.clone(),
                restored_id: None,
                started: false,
                start_timer: None,
                can_join: false,
                saved_generation: None,
                saving: false,
                save_again: false,
                save_timer: None,
                held_acks: Vec::new(),
                _unload: UnloadHook::new(weak.clone()),
            })
        });
        {
            let mut d = rc.borrow_mut();
            let weak = d.weak.clone();
            // The saved identity and chat state come first: the hello
            // carries the resume token only if its chat state came back too.
            wasm_bindgen_futures::spawn_local(async move {
                let result = load.await;
                let record = match &result {
                    Ok((db, _)) => load_state(db, &slot).await,
                    Err(_) => None,
                };
                with(&weak, move |d| {
                    d.history_opened(result);
                    d.state_loaded(record);
                });
            });
            let keyed = d.cipher.is_some() || d.code.is_some();
            if !rtc::supported() && keyed {
                // No WebRTC here: the server relay still reaches everyone.
                crate::util::warn(
                    "no WebRTC in this browser: every peer goes through the server relay",
                );
                d.relay_mode = RelayMode::Server;
                d.paths = Paths::new(path_settings(RelayMode::Server));
            }
            if d.relay_mode == RelayMode::Server && !keyed {
                d.error(
                    "?relay=server needs the whole invite link, including its key (the part \
                     after #), to seal what goes through the server."
                        .into(),
                );
            }
            if rtc::supported() || d.relay_mode == RelayMode::Server {
                d.can_join = true;
                let weak = d.weak.clone();
                d.start_timer = Some(Timeout::new(STATE_LOAD_TIMEOUT_MS, move || {
                    with(&weak, |d| {
                        crate::util::warn(
                            "saved room state not read in time: joining as a new peer",
                        );
                        d.begin();
                    })
                }));
            } else {
                d.fatal = true;
                d.dispatch(Action::Server(ServerStatus::Failed));
                d.error(
                    "This browser does not support WebRTC, so it cannot connect to other peers."
                        .into(),
                );
            }
        }
        Self(rc)
    }

    fn run(&self, f: impl FnOnce(&mut Driver) + 'static) {
        with(&Rc::downgrade(&self.0), f);
    }

    /// Sends a chat message to everyone in the room.
    pub fn send_chat(&self, text: String) {
        self.run(move |d| d.send_chat(text));
    }

    /// The user is typing in the message box (tells the peers, throttled).
    pub fn typing(&self) {
        self.run(Driver::typing);
    }

    /// Offers `files` to peer `to`, or to every connected peer.
    pub fn send_files(&self, files: Vec<File>, to: Option<String>) {
        self.run(move |d| d.send_files(files, to.map(PeerId)));
    }

    /// Accepts an offered file.
    pub fn accept(&self, peer: String, transfer: String) {
        self.run(move |d| d.accept(PeerId(peer), transfer));
    }

    /// Declines an offered file.
    pub fn decline(&self, peer: String, transfer: String) {
        self.run(move |d| d.decline(PeerId(peer), transfer));
    }

    /// Cancels a transfer in either direction.
    pub fn cancel(&self, peer: String, transfer: String, direction: Direction) {
        self.run(move |d| d.cancel(PeerId(peer), transfer, direction));
    }

    /// Changes the display name (used when (re)joining).
    pub fn set_name(&self, name: String) {
        self.run(move |d| {
            storage::set_display_name(&name);
            d.name = name;
        });
    }

    /// Closes every connection (the page is going away).
    pub fn shutdown(&self) {
        self.run(Driver::shutdown);
    }
}

/// Reads this tab's saved room state after deleting every saved state
/// older than the chat retention window (nobody keeps a link that long).
async fn load_state(db: &HistoryDb, slot: &str) -> Option<RoomRecord> {
    let cutoff = wall_ms().saturating_sub(DEFAULT_RETENTION_MS);
    if let Err(e) = db.purge_states(cutoff).await {
        crate::util::warn(&format!("old room states not purged: {e}"));
    }
    match db.load_state(slot).await {
        Ok(record) => record,
        Err(e) => {
            crate::util::warn(&format!("saved room state unreadable: {e}"));
            None
        }
    }
}

/// The OPFS folder of a resumable received file: unambiguous per sender,
/// transfer and content.
fn partial_name(peer: &PeerId, offer: &FileOffer) -> String {
    format!("{peer}-{}-{}", offer.transfer, hex(&offer.hash))
}

/// How this page's paths behave: the policy from `?relay=`, and how long a
/// peer that left may be away (the page waits longer than the CLI).
fn path_settings(mode: RelayMode) -> PathSettings {
    let policy = match mode {
        RelayMode::Auto => PathPolicy::Any,
        RelayMode::Turn => PathPolicy::TurnOnly,
        RelayMode::Server => PathPolicy::ServerOnly,
    };
    PathSettings {
        connect_timeout: Millis::from(CONNECT_TIMEOUT_MS),
        return_window: Millis::from(AWAY_TRANSFER_MS),
        ..PathSettings::new(policy, crypto_random_bytes().map_or(0, u64::from_ne_bytes))
    }
}

fn parse_transfer(id: &str) -> Option<TransferId> {
    u64::from_str_radix(id, 16).ok().map(TransferId)
}

impl Driver {
    fn dispatch(&self, action: Action) {
        (self.dispatch)(action);
    }

    fn error(&self, text: String) {
        self.dispatch(Action::Error(text));
    }

    fn server_error(&self, text: String) {
        self.dispatch(Action::ServerError(text));
    }

    fn name_of(&self, peer: &PeerId) -> String {
        self.names.get(peer).cloned().unwrap_or_default()
    }

    fn shutdown(&mut self) {
        self.save_now();
        self.fatal = true;
        self.signaling = None;
        self.reconnect_timer = None;
        self.chat_timer = None;
        self.stats_timer = None;
        self.typing_timers.clear();
        self.links.clear();
        self.path_timer = None;
        self.relay_drain = None;
        for t in self.incoming.values() {
            if t.held.is_none()
                && let Some(s) = &t.sink
            {
                s.suspend();
            }
        }
        self.incoming.clear();
        self.outgoing.clear();
    }

    // ---- the tab's saved identity and chat state -----------------------

    /// The saved state of this tab's slot was read (or there is none): take
    /// it if it is whole, then join.
    fn state_loaded(&mut self, record: Option<RoomRecord>) {
        if self.started {
            return; // joined without it already; it will be overwritten
        }
        if let Some(r) = record.filter(|r| r.room == self.room.as_str()) {
            let restored = serde_json::from_str::<ChatSnapshot>(&r.snapshot)
                .map_err(|e| e.to_string())
                .and_then(|snap| {
                    ChatSession::new()
                        .restore(snap, now_ms(), wall_ms())
                        .map_err(|e| e.to_string())
                });
            match restored {
                // Identity and chat state travel together.
                Ok(chat) => {
                    self.chat = chat;
                    self.resume_token = Some(r.resume_token);
                    self.restored_id = Some(PeerId(r.peer_id));
                }
                Err(e) => crate::util::warn(&format!(
                    "saved chat state not restored ({e}): joining as a new peer"
                )),
            }
        }
        self.begin();
    }

    /// Joins the room (once).
    fn begin(&mut self) {
        if std::mem::replace(&mut self.started, true) || !self.can_join || self.fatal {
            return;
        }
        self.start_timer = None;
        storage::clean_stale_files();
        self.connect();
        let weak = self.weak.clone();
        self.stats_timer = Some(Interval::new(STATS_EVERY_MS, move || {
            with(&weak, Driver::refresh_paths)
        }));
    }

    /// Whether chat state is being saved (so acks wait for it).
    fn persisting(&self) -> bool {
        self.history.db().is_some() && self.resume_token.is_some() && self.me.is_some()
    }

    /// The chat state may have changed: save it soon (at once when acks wait).
    fn chat_changed(&mut self) {
        if self.saved_generation == Some(self.chat.generation()) && !self.save_again {
            return;
        }
        if self.saving {
            self.save_again = true;
            return;
        }
        if !self.held_acks.is_empty() {
            return self.save_state();
        }
        if self.save_timer.is_none() {
            let weak = self.weak.clone();
            self.save_timer = Some(Timeout::new(SAVE_DEBOUNCE_MS, move || {
                with(&weak, |d| {
                    d.save_timer = None;
                    d.save_state();
                })
            }));
        }
    }

    /// The record this tab would save now, if it has an identity.
    fn record(&self) -> Option<RoomRecord> {
        let (Some(token), Some(me)) = (&self.resume_token, &self.me) else {
            return None;
        };
        let snapshot = self.chat.snapshot(now_ms(), wall_ms());
        let snapshot = match serde_json::to_string(&snapshot) {
            Ok(json) => json,
            Err(e) => {
                crate::util::warn(&format!("chat state not saved: {e}"));
                return None;
            }
        };
        Some(RoomRecord {
            slot: self.slot.clone(),
            room: self.room.as_str().to_owned(),
            resume_token: token.clone(),
            peer_id: me.0.clone(),
            snapshot,
            saved_at: wall_ms(),
        })
    }

    /// Saves the identity and chat state under this tab's slot.
    fn save_state(&mut self) {
        self.save_timer = None;
        if self.saving {
            self.save_again = true;
            return;
        }
        self.save_again = false;
        let generation = self.chat.generation();
        let (Some(db), Some(record)) = (self.history.db(), self.record()) else {
            // Nothing can be saved: do not hold acks for it.
            self.saved_generation = Some(generation);
            return self.release_acks(u64::MAX);
        };
        self.saving = true;
        let done = db.put_state(&record);
        let weak = self.weak.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let result = done.await;
            with(&weak, move |d| d.state_saved(generation, result));
        });
    }

    fn state_saved(&mut self, generation: u64, result: Result<(), String>) {
        self.saving = false;
        // A failed save is not retried until the next change; acks do not
        // wait for storage that does not work.
        self.saved_generation = Some(generation);
        match result {
            Ok(()) => self.release_acks(generation),
            Err(e) => {
                crate::util::warn(&format!("chat state not saved: {e}"));
                self.release_acks(u64::MAX);
            }
        }
        self.chat_changed();
    }

    /// Sends the held acks whose state is saved.
    fn release_acks(&mut self, saved: u64) {
        let (ready, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_acks)
            .into_iter()
            .partition(|(generation, _, _)| *generation <= saved);
        self.held_acks = held;
        for (_, to, frame) in ready {
            if self.has_link(&to)
                && let Err(e) = self.link_send(&to, Channel::Chat, frame)
            {
                crate::util::warn(&format!("chat ack to {to} failed: {e}"));
            }
        }
    }

    /// The page is going away (or hidden): start saving now, whatever is
    /// under way (best effort: the transaction may or may not finish).
    fn save_now(&mut self) {
        if self.saved_generation == Some(self.chat.generation()) && !self.saving {
            return;
        }
        if let (Some(db), Some(record)) = (self.history.db(), self.record()) {
            let done = db.put_state(&record);
            wasm_bindgen_futures::spawn_local(async move {
                let _ = done.await;
            });
        }
    }

    /// Another tab took over this tab's identity (a duplicated tab copies
    /// the slot): give it up and carry on as a new peer, with a new slot
    /// and a fresh chat state, rather than take it back.
    fn start_over_as_new_peer(&mut self) {
        self.error(
            "This room is open in another tab under the same identity (a duplicated tab?). \
             That tab keeps it; this one carries on as a new peer."
                .into(),
        );
        self.slot = storage::new_tab_slot(self.room.as_str());
        self.resume_token = None;
        self.restored_id = None;
        self.save_timer = None;
        self.start_as_new_peer("is now talking to the other tab");
        self.saved_generation = None;
        self.attempt = 0;
        self.reconnect_timer = None;
        self.connect();
    }

    /// We carry on under a new peer id (this tab took over from another):
    /// every link closes and the path machine starts afresh; see
    /// [`Self::forget_everyone`].
    fn start_as_new_peer(&mut self, why: &str) {
        self.forget_everyone(why);
        self.links.clear();
        self.paths = Paths::new(self.paths.settings().clone());
        self.path_timer = None;
        self.path_deadline = None;
    }

    /// Every peer we knew is gone for us (`why` says so), and a new
    /// identity numbers its messages afresh.
    fn forget_everyone(&mut self, why: &str) {
        let old: Vec<PeerId> = self.names.keys().cloned().collect();
        for p in old {
            self.on_peer_gone(&p, why, false, true);
        }
        self.names.clear();
        self.dispatch(Action::ClearPeers);
        self.chat = ChatSession::new();
        self.held_acks.clear();
    }

    // ---- signaling -------------------------------------------------------

    fn connect(&mut self) {
        let Some(url) = signaling::websocket_url() else {
            return self.error("Cannot work out the server address from this page's URL.".into());
        };
        let weak = self.weak.clone();
        match Signaling::connect(&url, move |ev| with(&weak, move |d| d.on_signal_event(ev))) {
            Ok(s) => self.signaling = Some(s),
            Err(e) => {
                self.server_error(format!("Cannot reach the Parlor server: {e}"));
                self.schedule_reconnect();
            }
        }
    }

    fn signal(&mut self, msg: ClientMessage) {
        if let Some(s) = &self.signaling {
            s.send(&msg);
        }
    }

    fn schedule_reconnect(&mut self) {
        if self.fatal {
            return;
        }
        self.attempt += 1;
        let secs = FIRST_RECONNECT_SECS
            .saturating_mul(1 << (self.attempt - 1).min(5))
            .min(MAX_RECONNECT_SECS);
        self.dispatch(Action::Server(ServerStatus::Reconnecting {
            in_secs: secs,
            attempt: self.attempt,
        }));
        let weak = self.weak.clone();
        self.reconnect_timer = Some(Timeout::new(secs * 1000, move || {
            with(&weak, |d| {
                d.reconnect_timer = None;
                d.connect();
            })
        }));
    }

    fn on_signal_event(&mut self, ev: SignalEvent) {
        match ev {
            SignalEvent::Open => {
                let name = self.name.trim().to_owned();
                let hello = ClientMessage::Hello {
                    version: PROTOCOL_VERSION,
                    room: self.room.clone(),
                    name: (!name.is_empty()).then_some(name),
                    resume: self.resume_token.clone(),
                };
                self.signal(hello);
            }
            SignalEvent::Message(msg) => self.on_server(msg),
            SignalEvent::Relay(bytes) => self.on_relay_packet(&bytes),
            SignalEvent::Unreadable(why) => {
                crate::util::warn(&format!("unreadable server message: {why}"))
            }
            SignalEvent::Closed { code, reason } => {
                self.signaling = None;
                if self.fatal {
                    return;
                }
                if code == REPLACED_CLOSE_CODE {
                    self.relay_lost();
                    return self.start_over_as_new_peer();
                }
                self.relay_lost();
                if self.ever_joined && self.attempt == 0 {
                    self.server_error(format!(
                        "Lost the connection to the Parlor server{}. Open connections keep working; reconnecting…",
                        if reason.is_empty() { String::new() } else { format!(" ({reason})") }
                    ));
                } else if self.attempt == 0 {
                    self.server_error(if code == 1006 {
                        "Cannot reach the Parlor server. Retrying…".into()
                    } else {
                        format!(
                            "The Parlor server closed the connection ({code} {reason}). Retrying…"
                        )
                    });
                }
                self.schedule_reconnect();
            }
        }
    }

    fn on_server(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Welcome {
                peer_id,
                peers,
                ice_servers,
                resume_token,
                ..
            } => {
                if resume_token.is_some() {
                    self.resume_token = resume_token;
                }
                // A new token (or the first): save it with the chat state.
                self.saved_generation = None;
                let same_id = self.me.as_ref() == Some(&peer_id);
                if !same_id {
                    if self.me.is_none()
                        && let Some(old) = self.restored_id.take()
                        && old != peer_id
                    {
                        // The server did not give the saved identity back:
                        // its chat state is not ours to use.
                        crate::util::warn(&format!(
                            "rejoined as {peer_id}, not as the saved {old}: chat state dropped"
                        ));
                        self.chat = ChatSession::new();
                    }
                    self.ever_joined = true;
                    self.dispatch(Action::Welcome(peer_id.0.clone()));
                }
                self.attempt = 0;
                self.ice_servers = ice_servers;
                self.me = Some(peer_id.clone());
                if self.code.is_some() {
                    // No key yet: agree on one with the peer first.
                    if !same_id {
                        self.chat_changed();
                        self.dispatch(Action::Code(CodeStatus::Waiting));
                    }
                    for peer in peers {
                        self.add_peer(&peer.id, peer.name);
                        self.start_code_exchange(peer.id, true);
                    }
                    return;
                }
                // Back under the same id, connections that survived stay up
                // and relayed peers get a fresh Switch; under a new one (the
                // others saw us leave) everything starts over; newcomers
                // make the offers.
                self.feed(PathInput::Joined {
                    me: peer_id,
                    peers: peers.iter().map(|p| p.id.clone()).collect(),
                });
                if !same_id {
                    self.chat_changed();
                }
                for peer in peers {
                    self.add_peer(&peer.id, peer.name);
                }
            }
            ServerMessage::PeerJoined { peer } => {
                self.add_peer(&peer.id, peer.name);
                if self.code.is_some() {
                    return self.start_code_exchange(peer.id, false);
                }
                self.feed(PathInput::PeerJoined { peer: peer.id });
            }
            ServerMessage::PeerLeft { peer_id } => {
                let exchanging = (self.code.as_ref())
                    .and_then(|c| c.session.as_ref())
                    .is_some_and(|s| *s.peer() == peer_id);
                if exchanging {
                    self.code_failed(CodeStatus::Failed(
                        "the other side left before the code was checked".into(),
                    ));
                }
                if self.code.is_some() {
                    return self.on_peer_gone(&peer_id, "left the room", false, false);
                }
                self.feed(PathInput::PeerLeft { peer: peer_id });
            }
            ServerMessage::Pake { from, body } => self.on_pake(from, &body),
            ServerMessage::Signal { from, sealed } => self.on_sealed_signal(from, &sealed),
            ServerMessage::Offer { from, .. }
            | ServerMessage::Answer { from, .. }
            | ServerMessage::Candidate { from, .. } => {
                // SDP in the clear: the room key cannot vouch for it.
                crate::util::warn(&format!("unsealed signaling from {from} refused"));
                if self.told_unsealed.insert(from.clone()) {
                    self.error(format!(
                        "Refused a connection offer from {} that was not sealed with the \
                         invite key (an outdated app, or the server tampering).",
                        self.label(&from)
                    ));
                }
            }
            ServerMessage::Error { code, message } => {
                let text = match code {
                    ErrorCode::RoomFull => {
                        "This room is full; nobody else can join it right now.".to_owned()
                    }
                    ErrorCode::TooManyRooms => {
                        "The server is at capacity; try again later.".to_owned()
                    }
                    ErrorCode::UnsupportedVersion => {
                        "This page is out of date for the server; reload it.".to_owned()
                    }
                    // A dropped relay packet: chat re-sends and transfers
                    // resume by themselves; only the first one is worth a word.
                    ErrorCode::RelayUnavailable => {
                        crate::util::warn(&format!("server relay: {message}"));
                        if !self.relay_warning_due() {
                            return;
                        }
                        format!("The server could not relay a message: {message}")
                    }
                    _ => format!("Server error: {message} ({})", code.as_str()),
                };
                if matches!(
                    code,
                    ErrorCode::RoomFull | ErrorCode::UnsupportedVersion | ErrorCode::InvalidField
                ) && !self.ever_joined
                {
                    self.fatal = true;
                    self.dispatch(Action::Server(ServerStatus::Failed));
                }
                self.error(text);
            }
            ServerMessage::Ping => self.signal(ClientMessage::Pong),
            _ => {}
        }
    }

    // ---- short codes -----------------------------------------------------

    /// Starts the code exchange with `peer` unless one is running (a code
    /// room is for two: the first other peer is the one).
    fn start_code_exchange(&mut self, peer: PeerId, we_offer: bool) {
        let Some(me) = self.me.clone() else { return };
        let Some(phase) = self.code.as_mut() else {
            return;
        };
        if phase.session.is_some() {
            return;
        }
        let Some(seed) = crypto_random_bytes::<32>() else {
            return self.code_failed(CodeStatus::Failed(
                "this browser has no secure random numbers (crypto.getRandomValues)".into(),
            ));
        };
        let (session, start) = PakeSession::start(&phase.code, &self.room, me, peer.clone(), seed);
        phase.session = Some(session);
        phase.we_offer = we_offer;
        self.dispatch(Action::Code(CodeStatus::Checking));
        self.signal(ClientMessage::Pake {
            to: peer,
            body: start.encode(),
        });
    }

    /// A `pake` message: the next step of the exchange.
    fn on_pake(&mut self, from: PeerId, body: &str) {
        let Some(session) = (self.code.as_mut())
            .and_then(|c| c.session.as_mut())
            .filter(|s| *s.peer() == from)
        else {
            return crate::util::warn(&format!("code exchange message from {from} ignored"));
        };
        match PakeMessage::decode(body).and_then(|m| session.receive(m)) {
            Ok(PakeStep::Send(reply)) => self.signal(ClientMessage::Pake {
                to: from,
                body: reply.encode(),
            }),
            Ok(PakeStep::Done(key)) => self.code_matched(from, key),
            Err(PakeError::Mismatch) => self.code_failed(CodeStatus::Mismatch),
            Err(e) => self.code_failed(CodeStatus::Failed(e.to_string())),
        }
    }

    /// Both sides hold `key`: from here on the room is like any other.
    fn code_matched(&mut self, peer: PeerId, key: RoomKey) {
        let Some(phase) = self.code.take() else {
            return;
        };
        self.cipher = crypto_random_bytes().map(|p| RelayCipher::new(&key, p));
        self.signal_cipher = crypto_random_bytes().map(|p| SignalCipher::new(&key, p));
        self.dispatch(Action::Code(CodeStatus::Matched));
        // The address becomes this room's invite link: a reload rejoins it.
        if let Some(history) = web_sys::window().and_then(|w| w.history().ok()) {
            let url = format!("/r/{}#{key}", self.room);
            let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&url));
        }
        // Now the room starts as with an invite link: the newcomer offers.
        let Some(me) = self.me.clone() else { return };
        let listed = if phase.we_offer {
            vec![peer.clone()]
        } else {
            Vec::new()
        };
        self.feed(PathInput::Joined { me, peers: listed });
        if !phase.we_offer {
            self.feed(PathInput::PeerJoined { peer });
        }
    }

    /// The exchange failed: nothing connects; the page says why and leaves
    /// the room.
    fn code_failed(&mut self, status: CodeStatus) {
        crate::util::warn(&format!("code exchange failed: {status:?}"));
        self.code = None;
        self.fatal = true;
        self.signaling = None;
        self.reconnect_timer = None;
        self.dispatch(Action::Code(status));
        self.dispatch(Action::Server(ServerStatus::Failed));
    }

    /// Seals an offer, answer or candidate for `to` with the room key and
    /// sends it through the server.
    fn send_signal(&mut self, to: PeerId, signal: PeerSignal) {
        let (Some(me), Some(cipher)) = (&self.me, &mut self.signal_cipher) else {
            return crate::util::warn("cannot seal signaling without the room key");
        };
        let sealed = cipher.seal(me, &to, &signal);
        self.signal(ClientMessage::Signal { to, sealed });
    }

    /// A sealed offer, answer or candidate from `from`: the path machine
    /// decides what it means; one that does not open refuses the peer.
    fn on_sealed_signal(&mut self, from: PeerId, sealed: &str) {
        if self.paths.is_refused(&from) {
            return;
        }
        let (Some(me), Some(cipher)) = (&self.me, &self.signal_cipher) else {
            return crate::util::warn("sealed signaling ignored: no room key");
        };
        match cipher.open(me, &from, sealed) {
            Ok(signal) => {
                if !self.names.contains_key(&from) {
                    self.add_peer(&from, String::new());
                }
                self.feed(PathInput::Signal { from, signal });
            }
            Err(e) => self.feed(PathInput::Refuse {
                peer: from,
                why: e.to_string(),
            }),
        }
    }

    fn label(&self, peer: &PeerId) -> String {
        let name = self.name_of(peer);
        if name.is_empty() {
            format!("peer {peer}")
        } else {
            name
        }
    }

    fn add_peer(&mut self, peer: &PeerId, name: String) {
        self.chat.add_peer(peer.clone());
        let known = self.names.insert(peer.clone(), name.clone()).is_some();
        self.dispatch(Action::PeerUpsert {
            id: peer.0.clone(),
            name,
        });
        if !known {
            self.link_states.insert(peer.clone(), LinkState::Connecting);
            self.dispatch(Action::PeerLink {
                id: peer.0.clone(),
                state: LinkState::Connecting,
                rtt_ms: None,
            });
        }
    }

    // ---- paths: the core machine decides, this carries it out ------------

    /// Feeds one input to the path machine and carries out its outputs.
    fn feed(&mut self, input: PathInput) {
        self.paths.handle(input, now_ms());
        self.drive_paths();
    }

    /// Carries out what the path machine asks, then sets its timer.
    fn drive_paths(&mut self) {
        while let Some(out) = self.paths.poll_output() {
            self.on_path_output(out);
        }
        let next = self.paths.poll_timeout();
        if next == self.path_deadline {
            return;
        }
        self.path_deadline = next;
        self.path_timer = next.map(|at| {
            let weak = self.weak.clone();
            let delay = u32::try_from(at.saturating_sub(now_ms())).unwrap_or(u32::MAX);
            Timeout::new(delay, move || {
                with(&weak, |d| {
                    d.path_deadline = None;
                    d.paths.handle_timeout(now_ms());
                    d.drive_paths();
                })
            })
        });
    }

    fn on_path_output(&mut self, out: PathOutput) {
        match out {
            PathOutput::OpenLink {
                peer,
                link,
                offerer,
            } => self.open_link(&peer, link, offerer),
            // Dropping the link closes the connection and detaches its handlers.
            PathOutput::CloseLink { link } => drop(self.links.remove(&link)),
            PathOutput::CreateOffer { link, ice_restart } => self.create_offer(link, ice_restart),
            PathOutput::AcceptOffer { link, sdp } => self.accept_offer(link, sdp),
            PathOutput::AcceptAnswer { link, sdp } => self.accept_answer(link, sdp),
            PathOutput::AddCandidate { link, candidate } => {
                if let Some(l) = self.links.get_mut(&link) {
                    l.add_candidate(candidate);
                }
            }
            PathOutput::Signal { to, signal } => self.send_signal(to, signal),
            PathOutput::Relay { to, payload } => {
                if let Err(e) = self.relay_send(&to, &payload) {
                    crate::util::warn(&format!("server relay: nothing sent to {to}: {e}"));
                }
            }
            PathOutput::Connected {
                peer,
                route: Route::ServerRelay,
            } => self.set_link_state(&peer, LinkState::ServerRelay, None),
            PathOutput::Connected { peer, .. } => self.refresh_path(peer),
            PathOutput::Disconnected { peer } => {
                self.set_link_state(&peer, LinkState::Connecting, None);
            }
            PathOutput::ChatUp { peer } => {
                self.chat.link_up(&peer, now_ms());
                self.flush_chat();
            }
            PathOutput::ChatDown { peer } => self.chat.link_down(&peer),
            PathOutput::FilesUp { peer, path_changed } => self.files_up(&peer, path_changed),
            PathOutput::PeerRestarted { peer } => {
                self.fail_incoming_with(&peer, "the peer reconnected");
                self.park_outgoing(&peer);
            }
            PathOutput::FellToRelay { peer, why } => {
                crate::util::warn(&format!("switching to the server relay for {peer}: {why}"));
                if self.cipher.is_none() {
                    self.error(format!(
                        "Cannot reach {} through the server relay: this page's link has no key \
                         (the part after #).",
                        self.label(&peer)
                    ));
                }
                self.set_link_state(&peer, LinkState::Connecting, None);
            }
            PathOutput::Refused { peer, why } => {
                crate::util::warn(&format!("refusing {peer}: {why}"));
                self.error(format!("Security warning: {why}"));
                self.on_peer_gone(&peer, "was refused", true, true);
            }
            PathOutput::Gone {
                peer,
                reason: GoneReason::Left,
            } => self.on_peer_gone(&peer, "left the room", false, false),
            PathOutput::Gone { peer, .. } => {
                self.error(format!("The connection to {} failed.", self.label(&peer)));
                self.on_peer_gone(&peer, "could not be reached", true, false);
            }
            // Parked transfers wait with their own timers (see `park`).
            PathOutput::Returned { .. } | PathOutput::AwayExpired { .. } => {}
            PathOutput::StartedOver => {
                self.forget_everyone("was disconnected while we reconnected")
            }
        }
    }

    /// Creates the connection `link` to `peer`; the `offerer` creates the
    /// data channels, the answerer receives them in-band.
    fn open_link(&mut self, peer: &PeerId, link: LinkId, offerer: bool) {
        let weak = self.weak.clone();
        let sink: Rc<dyn Fn(PeerEvent)> =
            Rc::new(move |ev| with(&weak, move |d| d.on_peer_event(link, ev)));
        match PeerLink::new(
            &self.ice_servers,
            self.relay_mode == RelayMode::Turn,
            self.config.low_watermark,
            offerer,
            sink,
        ) {
            Ok(made) => {
                self.links.insert(link, made);
            }
            Err(e) => {
                self.error(format!(
                    "Could not start a connection to {}: {e}",
                    self.label(peer)
                ));
                self.feed(PathInput::LinkFailed { link });
            }
        }
    }

    fn create_offer(&mut self, link: LinkId, ice_restart: bool) {
        let Some(pc) = self.links.get(&link).map(PeerLink::pc) else {
            return;
        };
        let weak = self.weak.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let result = rtc::create_offer(pc, ice_restart).await;
            with(&weak, move |d| {
                // Closed meanwhile: nothing to send.
                let Some(peer) = d.paths.peer_of(link).cloned() else {
                    return;
                };
                match result {
                    Ok(sdp) => d.send_signal(peer, PeerSignal::Offer { sdp }),
                    Err(e) => {
                        crate::util::warn(&format!("offer to {peer} failed: {e}"));
                        d.feed(PathInput::LinkFailed { link });
                    }
                }
            });
        });
    }

    fn accept_offer(&mut self, link: LinkId, sdp: String) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        // Remote candidates wait for the new remote description.
        l.renegotiating();
        let pc = l.pc();
        let weak = self.weak.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let result = rtc::accept_offer(pc, sdp).await;
            with(&weak, move |d| {
                let Some(peer) = d.paths.peer_of(link).cloned() else {
                    return;
                };
                match result {
                    Ok(answer) => {
                        if let Some(l) = d.links.get_mut(&link) {
                            l.remote_description_ready();
                        }
                        d.send_signal(peer, PeerSignal::Answer { sdp: answer });
                    }
                    Err(e) => {
                        d.error(format!("Could not connect to {}: {e}", d.label(&peer)));
                        d.feed(PathInput::LinkFailed { link });
                    }
                }
            });
        });
    }

    fn accept_answer(&mut self, link: LinkId, sdp: String) {
        let Some(pc) = self.links.get(&link).map(PeerLink::pc) else {
            return;
        };
        let weak = self.weak.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let result = rtc::accept_answer(pc, sdp).await;
            with(&weak, move |d| {
                let Some(peer) = d.paths.peer_of(link).cloned() else {
                    return;
                };
                match result {
                    Ok(()) => {
                        if let Some(l) = d.links.get_mut(&link) {
                            l.remote_description_ready();
                        }
                    }
                    Err(e) => d.error(format!("Could not connect to {}: {e}", d.label(&peer))),
                }
            });
        });
    }

    /// File frames can flow to `peer`: offers made meanwhile go out, parked
    /// transfers offer again; after a path change (`path_changed`) what was
    /// in flight may be lost: receivers ask to resume from what they
    /// verified, unanswered offers go out again.
    fn files_up(&mut self, peer: &PeerId, path_changed: bool) {
        self.dispatch(Action::PeerFiles {
            id: peer.0.clone(),
            ready: true,
        });
        if path_changed {
            let keys: Vec<(PeerId, TransferId)> = (self.incoming.keys())
                .filter(|(p, _)| p == peer)
                .cloned()
                .collect();
            for key in keys {
                self.drive_incoming(&key, |t| t.receiver.link_reset());
            }
        }
        let ids: Vec<(TransferId, bool)> = (self.outgoing.iter())
            .filter(|(_, t)| &t.peer == peer && t.sender.is_some())
            .map(|(id, t)| (*id, t.away.is_some()))
            .collect();
        for (id, away) in ids {
            if away || path_changed {
                self.drive_outgoing(id, |s, amount| {
                    s.link_reset();
                    s.buffered_amount(amount);
                });
            } else {
                self.drive_outgoing(id, |s, amount| s.buffered_amount(amount));
            }
        }
    }

    // ---- peer connections -------------------------------------------------

    fn set_link_state(&mut self, peer: &PeerId, state: LinkState, rtt_ms: Option<u32>) {
        self.link_states.insert(peer.clone(), state);
        self.dispatch(Action::PeerLink {
            id: peer.0.clone(),
            state,
            rtt_ms,
        });
    }

    fn on_peer_event(&mut self, link: LinkId, ev: PeerEvent) {
        // Events of a link that is no longer current are dropped.
        let Some(peer) = self.paths.peer_of(link).cloned() else {
            return;
        };
        match ev {
            PeerEvent::LocalCandidate(candidate) => {
                self.feed(PathInput::LocalCandidate { link, candidate });
            }
            PeerEvent::Open(channel) => self.feed(PathInput::ChannelOpen { link, channel }),
            PeerEvent::Closed(channel) => {
                if channel == Channel::File {
                    self.dispatch(Action::PeerFiles {
                        id: peer.0.clone(),
                        ready: false,
                    });
                    self.fail_incoming_with(&peer, "the connection to the peer closed");
                    self.park_outgoing(&peer);
                }
                self.feed(PathInput::ChannelClosed { link, channel });
            }
            PeerEvent::Message(channel, data) => self.on_frame(peer, channel, &data),
            PeerEvent::BufferedLow => {
                let ids: Vec<TransferId> = self
                    .outgoing
                    .iter()
                    .filter(|(_, t)| t.peer == peer)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.drive_outgoing(id, |s, amount| s.buffered_amount(amount));
                }
            }
            // The browser checks the DTLS certificate against the sealed
            // SDP's fingerprint by itself.
            PeerEvent::State(state) => match state.as_str() {
                "connected" => {
                    self.feed(PathInput::LinkConnected { link });
                    // Back from `disconnected` without failing: show the path again.
                    self.refresh_path(peer);
                }
                "disconnected" => self.set_link_state(&peer, LinkState::Connecting, None),
                "failed" => self.feed(PathInput::LinkFailed { link }),
                "closed" => self.feed(PathInput::LinkClosed { link }),
                _ => {}
            },
        }
    }

    fn refresh_paths(&mut self) {
        let peers: Vec<PeerId> = (self.names.keys())
            .filter(|p| self.paths.is_up(p) && self.paths.route(p) != Some(Route::ServerRelay))
            .cloned()
            .collect();
        for p in peers {
            self.refresh_path(p);
        }
    }

    fn refresh_path(&mut self, peer: PeerId) {
        let Some(Route::WebRtc(link)) = self.paths.route(&peer) else {
            return;
        };
        let Some(pc) = self.links.get(&link).map(PeerLink::pc) else {
            return;
        };
        let weak = self.weak.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let info = rtc::path_info(pc).await;
            with(&weak, move |d| {
                if d.paths.route(&peer) != Some(Route::WebRtc(link)) || !d.paths.is_up(&peer) {
                    return;
                }
                let (state, rtt) = match info {
                    Some(i) => (
                        if i.relayed {
                            LinkState::Turn
                        } else {
                            LinkState::Direct
                        },
                        i.rtt_ms.map(|r| r.round() as u32),
                    ),
                    // Connected but no stats yet: call it direct.
                    None => (LinkState::Direct, None),
                };
                d.set_link_state(&peer, state, rtt);
            });
        });
    }

    /// `peer` is gone: its link closes. With `forget` its chat link and
    /// transfers end; without, it may only be away for a moment (a reload,
    /// a network switch): its chat link (outbox, sequence numbers) is kept
    /// for the retention window and outgoing transfers wait for it
    /// ([`AWAY_TRANSFER_MS`]). `keep_listed` keeps it in the peer list,
    /// marked failed.
    fn on_peer_gone(&mut self, peer: &PeerId, why: &str, keep_listed: bool, forget: bool) {
        if self.typing_timers.remove(peer).is_some() {
            self.dispatch(Action::Typing {
                id: peer.0.clone(),
                typing: false,
            });
        }
        if forget {
            self.chat.remove_peer(peer);
            self.flush_chat();
            self.fail_transfers_with(peer, &format!("the peer {why}"));
        } else {
            self.chat.peer_left(peer, now_ms());
            self.flush_chat();
            self.fail_incoming_with(peer, &format!("the peer {why}"));
            self.park_outgoing(peer);
        }
        if keep_listed {
            self.set_link_state(peer, LinkState::Failed, None);
        } else {
            self.names.remove(peer);
            self.link_states.remove(peer);
            self.dispatch(Action::PeerGone(peer.0.clone()));
        }
    }

    fn fail_transfers_with(&mut self, peer: &PeerId, why: &str) {
        self.fail_incoming_with(peer, why);
        let dead_out: Vec<_> = self
            .outgoing
            .iter()
            .filter(|(_, t)| &t.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in dead_out {
            if let Some(mut t) = self.outgoing.remove(&id) {
                t.view.state = TransferState::Failed;
                t.view.error = Some(why.to_owned());
                self.dispatch(Action::Transfer(t.view));
            }
        }
    }

    /// Incoming transfers from `peer` stop. What was stored stays (a
    /// resumable file keeps its committed segments): should the sender offer
    /// the same file again, it resumes from there.
    fn fail_incoming_with(&mut self, peer: &PeerId, why: &str) {
        let dead_in: Vec<_> = self
            .incoming
            .iter()
            .filter(|((p, _), t)| p == peer && t.held.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in dead_in {
            if let Some(mut t) = self.incoming.remove(&key) {
                if let Some(s) = &t.sink {
                    s.suspend();
                }
                t.view.state = TransferState::Failed;
                t.view.error = Some(why.to_owned());
                t.view.note = None;
                t.view.eta_ms = None;
                self.dispatch(Action::Transfer(t.view));
            }
        }
    }

    /// `peer` went away, perhaps only for a moment: each unfinished
    /// transfer to it starts over as a fresh offer of the same file (same
    /// transfer id, size and hash), sent once its file channel is open
    /// again; the receiver accepts from what it already stored. Given up
    /// after [`AWAY_TRANSFER_MS`].
    fn park_outgoing(&mut self, peer: &PeerId) {
        let ids: Vec<TransferId> = self
            .outgoing
            .iter()
            .filter(|(_, t)| &t.peer == peer && t.sender.is_some())
            .map(|(id, _)| *id)
            .collect();
        self.park(ids);
    }

    /// Parks the transfers `ids` (see [`Self::park_outgoing`]).
    fn park(&mut self, ids: Vec<TransferId>) {
        let now = now_ms();
        for id in ids {
            let weak = self.weak.clone();
            let config = self.config.clone();
            let Some(t) = self.outgoing.get_mut(&id) else {
                continue;
            };
            let Some(old) = t.sender.take() else {
                continue;
            };
            t.sent_before += old.bytes_sent();
            let mut fresh = FileSender::new(old.offer().clone(), config, now);
            // Its offer goes out when the peer is back ([`FileSender::link_reset`]).
            while fresh.poll_output().is_some() {}
            t.sender = Some(fresh);
            t.send_error = None;
            if t.away.is_none() {
                t.away = Some(Timeout::new(AWAY_TRANSFER_MS, move || {
                    with(&weak, move |d| d.away_expired(id))
                }));
            }
            t.view.state = TransferState::Waiting;
            t.view.note = Some("away".into());
            t.view.bytes_per_sec = 0.0;
            t.view.eta_ms = None;
            let view = t.view.clone();
            self.dispatch(Action::Transfer(view));
        }
    }

    /// A transfer waited [`AWAY_TRANSFER_MS`] for its peer: give it up,
    /// unless the peer is back (then it is a plain offer, waiting).
    fn away_expired(&mut self, id: TransferId) {
        let Some(t) = self.outgoing.get_mut(&id) else {
            return;
        };
        t.away = None;
        let peer = t.peer.clone();
        if self.link_open(&peer, Channel::File) {
            return;
        }
        if let Some(mut t) = self.outgoing.remove(&id) {
            t.view.state = TransferState::Failed;
            t.view.note = None;
            t.view.error = Some("the peer did not come back in time".into());
            self.dispatch(Action::Transfer(t.view));
        }
    }

    fn on_frame(&mut self, peer: PeerId, channel: Channel, data: &[u8]) {
        let frame = match Frame::decode(data) {
            Ok(frame) => frame,
            Err(err) => {
                // A bad frame is dropped with its reason; the link goes on.
                return crate::util::warn(&format!(
                    "rejected frame from {peer} on {channel:?}: {err}"
                ));
            }
        };
        // Typing is fire-and-forget: the chat session neither knows nor acks it.
        if matches!(frame, Frame::Typing) {
            return self.on_typing(peer);
        }
        if frame.is_chat() {
            if let Err(err) = self.chat.handle_frame(&peer, frame, now_ms()) {
                crate::util::warn(&format!("chat frame from {peer} refused: {err}"));
            }
            return self.flush_chat();
        }
        let Some(id) = frame.transfer_id() else {
            return;
        };
        let now = now_ms();
        let key = (peer.clone(), id);
        match frame {
            Frame::FileOffer(offer) if !self.incoming.contains_key(&key) => {
                self.on_file_offer(peer, offer)
            }
            Frame::FileOffer(_)
            | Frame::Chunk { .. }
            | Frame::FileDone { .. }
            | Frame::FileCancel { .. }
                if self.incoming.contains_key(&key) =>
            {
                self.drive_incoming(&key, |t| t.receiver.handle_frame(frame, now));
            }
            _ if self.outgoing.get(&id).is_some_and(|t| t.peer == peer) => {
                self.drive_outgoing(id, move |s, _| s.handle_frame(frame, now));
            }
            _ => crate::util::warn(&format!(
                "frame for unknown transfer {id} from {peer} ignored"
            )),
        }
    }

    // ---- links: a peer connection or the server relay ---------------------

    /// Every peer with a path: a peer connection or the server relay.
    fn reachable(&self) -> Vec<PeerId> {
        (self.names.keys())
            .filter(|p| self.paths.route(p).is_some())
            .cloned()
            .collect()
    }

    /// Whether `peer` has a path (open or still opening).
    fn has_link(&self, peer: &PeerId) -> bool {
        self.paths.route(peer).is_some()
    }

    /// Whether frames can go to `peer` on `channel` now.
    fn link_open(&self, peer: &PeerId, channel: Channel) -> bool {
        match self.paths.route(peer) {
            Some(Route::ServerRelay) => {
                self.paths.is_up(peer) && self.signaling.as_ref().is_some_and(Signaling::is_open)
            }
            Some(Route::WebRtc(link)) => self.links.get(&link).is_some_and(|l| l.is_open(channel)),
            None => false,
        }
    }

    /// The file channel's buffered amount; on the relay, the socket's.
    fn link_buffered(&self, peer: &PeerId) -> u64 {
        match self.paths.route(peer) {
            Some(Route::ServerRelay) => self.relay_buffered(),
            Some(Route::WebRtc(link)) => self
                .links
                .get(&link)
                .map_or(0, |l| l.buffered_amount(Channel::File)),
            None => 0,
        }
    }

    fn relay_buffered(&self) -> u64 {
        self.signaling
            .as_ref()
            .map_or(0, Signaling::buffered_amount)
    }

    /// Sends an encoded frame to `peer` on `channel`, whichever way the
    /// link goes.
    fn link_send(&mut self, peer: &PeerId, channel: Channel, frame: Vec<u8>) -> Result<(), String> {
        match self.paths.route(peer) {
            Some(Route::ServerRelay) => {
                self.relay_send(peer, &RelayPayload::Frame { channel, frame })
            }
            Some(Route::WebRtc(link)) => match self.links.get(&link) {
                Some(l) => l.send(channel, &frame),
                None => Err("the peer is gone".into()),
            },
            None => Err("the peer is gone".into()),
        }
    }

    /// Seals `payload` for `to` and sends it as one binary message.
    fn relay_send(&mut self, to: &PeerId, payload: &RelayPayload) -> Result<(), String> {
        let (Some(me), Some(cipher), Some(signaling)) =
            (&self.me, &mut self.cipher, &self.signaling)
        else {
            return Err("the server relay is not available".into());
        };
        signaling.send_binary(&cipher.seal(me, to, payload))
    }

    /// A binary message on the signaling socket: a relay packet from a peer.
    fn on_relay_packet(&mut self, bytes: &[u8]) {
        let (Some(me), Some(cipher)) = (&self.me, &self.cipher) else {
            return crate::util::warn("server relay: packet ignored (not joined, or no room key)");
        };
        let (from, payload) = match cipher.open(me, bytes) {
            Ok(opened) => opened,
            Err(e) => {
                crate::util::warn(&format!("server relay: packet refused: {e}"));
                if self.relay_warning_due() {
                    self.error(format!(
                        "A message through the server relay could not be opened ({e}). \
                         Is everyone using the same invite link?"
                    ));
                }
                return;
            }
        };
        if self.me.as_ref() == Some(&from) || self.paths.is_refused(&from) {
            return;
        }
        // Authenticated with the room key: a member of the room, even if
        // its `peer_joined` has not reached us yet.
        if !self.names.contains_key(&from) {
            self.add_peer(&from, String::new());
        }
        // Any packet means the peer talks to us through the relay now.
        let handle = self.paths.relay_packet(&from, &payload, now_ms());
        self.drive_paths();
        if handle && let RelayPayload::Frame { channel, frame } = payload {
            self.on_frame(from, channel, &frame);
        }
    }

    /// Whether to show a notice about the relay now (at most one per
    /// [`RELAY_WARNING_EVERY_MS`]).
    fn relay_warning_due(&mut self) -> bool {
        let now = now_ms();
        let due = self
            .relay_warned_at
            .is_none_or(|at| now.saturating_sub(at) >= RELAY_WARNING_EVERY_MS);
        if due {
            self.relay_warned_at = Some(now);
        }
        due
    }

    /// The signaling socket closed: relayed links are down until we rejoin
    /// (then they resume; under a new id everything starts over).
    fn relay_lost(&mut self) {
        self.relay_drain = None;
        let relayed: Vec<PeerId> = (self.names.keys())
            .filter(|p| self.paths.route(p) == Some(Route::ServerRelay))
            .cloned()
            .collect();
        self.feed(PathInput::SignalingLost);
        for peer in relayed {
            self.set_link_state(&peer, LinkState::Connecting, None);
            self.dispatch(Action::PeerFiles {
                id: peer.0.clone(),
                ready: false,
            });
        }
    }

    /// Relayed transfers that may be waiting for the socket to drain.
    fn relay_senders(&self) -> Vec<TransferId> {
        self.outgoing
            .iter()
            .filter(|(_, t)| {
                self.paths.route(&t.peer) == Some(Route::ServerRelay)
                    && t.sender
                        .as_ref()
                        .is_some_and(|s| s.state() == SenderState::Sending)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Starts polling the socket's buffered amount if a relayed transfer may
    /// be held back by it (it has no buffered-amount-low event).
    fn watch_relay_drain(&mut self) {
        if self.relay_drain.is_some()
            || self.relay_buffered() <= self.config.low_watermark
            || self.relay_senders().is_empty()
        {
            return;
        }
        let weak = self.weak.clone();
        self.relay_drain = Some(Interval::new(RELAY_DRAIN_POLL_MS, move || {
            with(&weak, Driver::relay_drain_tick)
        }));
    }

    /// The poll: once the socket is at or under the low watermark, tell the
    /// relayed senders (like `bufferedamountlow`) and stop polling.
    fn relay_drain_tick(&mut self) {
        let ids = self.relay_senders();
        if ids.is_empty() {
            self.relay_drain = None;
            return;
        }
        if self.relay_buffered() > self.config.low_watermark {
            return;
        }
        self.relay_drain = None;
        for id in ids {
            self.drive_outgoing(id, |s, amount| s.buffered_amount(amount));
        }
    }

    // ---- chat --------------------------------------------------------------

    /// The stored history is read (or IndexedDB is unavailable).
    fn history_opened(
        &mut self,
        result: Result<(crate::history::HistoryDb, Vec<crate::history::Entry>), String>,
    ) {
        match self.history.opened(result) {
            Ok(shown) => {
                if !shown.is_empty() {
                    self.dispatch(Action::History(shown));
                }
            }
            Err(why) => {
                crate::util::warn(&format!("chat history unavailable: {why}"));
                if !std::mem::replace(&mut self.told_no_history, true) {
                    self.error(
                        "This browser does not let the page store the chat history \
                         (IndexedDB is unavailable, e.g. in private mode): messages are \
                         kept only until this page closes."
                            .into(),
                    );
                }
            }
        }
    }

    /// The user typed: send `Typing` to every peer whose chat channel is
    /// open, at most once per [`TYPING_EVERY_MS`].
    fn typing(&mut self) {
        let now = now_ms();
        if self
            .typing_sent_at
            .is_some_and(|at| now.saturating_sub(at) < TYPING_EVERY_MS)
        {
            return;
        }
        let frame = Frame::Typing.encode();
        let mut sent = false;
        for peer in self.reachable() {
            if self.link_open(&peer, Channel::Chat) {
                sent |= self.link_send(&peer, Channel::Chat, frame.clone()).is_ok();
            }
        }
        // With nobody to tell, the next keystroke tries again.
        if sent {
            self.typing_sent_at = Some(now);
        }
    }

    /// `peer` is typing: show it until [`TYPING_SHOWN_MS`] after the last
    /// such frame, or until its next message is delivered.
    fn on_typing(&mut self, peer: PeerId) {
        if !self.names.contains_key(&peer) {
            return;
        }
        let weak = self.weak.clone();
        let id = peer.clone();
        let timer = Timeout::new(TYPING_SHOWN_MS, move || {
            with(&weak, move |d| {
                if d.typing_timers.remove(&id).is_some() {
                    d.dispatch(Action::Typing {
                        id: id.0.clone(),
                        typing: false,
                    });
                }
            })
        });
        // Replacing the old timer cancels it.
        self.typing_timers.insert(peer.clone(), timer);
        self.dispatch(Action::Typing {
            id: peer.0,
            typing: true,
        });
    }

    fn send_chat(&mut self, text: String) {
        let text = text.trim().to_owned();
        if text.is_empty() {
            return;
        }
        let id = MessageId(random_bytes());
        let view = MessageView {
            id: id.to_string(),
            from: None,
            name: self.name.clone(),
            sent_at_ms: wall_ms(),
            text: text.clone(),
            status: Some(Status::Sending),
        };
        self.dispatch(Action::Message(view.clone()));
        if let Err(e) = self.chat.send(id, text, view.sent_at_ms, now_ms()) {
            self.dispatch(Action::MessageDropped(view.id));
            return self.error(format!("Message not sent: {e}"));
        }
        self.typing_sent_at = None;
        self.history.record(view);
        self.flush_chat();
    }

    fn flush_chat(&mut self) {
        while let Some(out) = self.chat.poll_output() {
            match out {
                ChatOutput::Send { to, frame }
                    if matches!(frame, Frame::ChatAck { .. })
                        && self.persisting()
                        && self.saved_generation != Some(self.chat.generation()) =>
                {
                    // Acked once the state that shows it is saved.
                    self.held_acks
                        .push((self.chat.generation(), to, frame.encode()));
                }
                ChatOutput::Send { to, frame } => {
                    if self.has_link(&to)
                        && let Err(e) = self.link_send(&to, Channel::Chat, frame.encode())
                    {
                        // The session re-sends when the channel comes back.
                        crate::util::warn(&format!("chat send to {to} failed: {e}"));
                    }
                }
                ChatOutput::Deliver { from, message } => {
                    let from_id = from.clone();
                    let view = MessageView {
                        id: message.id.to_string(),
                        name: self.name_of(&from),
                        from: Some(from.0),
                        sent_at_ms: message.sent_at_ms,
                        text: message.text,
                        status: None,
                    };
                    // Showing the message also ends the sender's indicator.
                    self.typing_timers.remove(&from_id);
                    self.history.record(view.clone());
                    self.dispatch(Action::Message(view));
                }
                ChatOutput::Status { id, status } => {
                    let status = match status {
                        MessageStatus::Sending => Status::Sending,
                        MessageStatus::Sent => Status::Sent,
                        MessageStatus::Delivered => Status::Delivered,
                    };
                    let id = id.to_string();
                    self.history.set_status(&id, status);
                    self.dispatch(Action::MessageStatus { id, status });
                }
            }
        }
        self.arm_chat_timer();
        self.chat_changed();
    }

    fn arm_chat_timer(&mut self) {
        let Some(at) = self.chat.poll_timeout() else {
            self.chat_timer = None;
            return;
        };
        let delay = at.saturating_sub(now_ms()).min(u64::from(u32::MAX)) as u32;
        let weak = self.weak.clone();
        self.chat_timer = Some(Timeout::new(delay, move || {
            with(&weak, |d| {
                d.chat.handle_timeout(now_ms());
                d.flush_chat();
            })
        }));
    }

    // ---- sending files -----------------------------------------------------

    fn send_files(&mut self, files: Vec<File>, to: Option<PeerId>) {
        if files.is_empty() {
            return;
        }
        // Every peer with a live connection; offers to a peer whose file
        // channel is still opening go out when it opens.
        let targets: Vec<PeerId> = match to {
            Some(p) => vec![p],
            None => self.reachable(),
        };
        let targets: Vec<PeerId> = targets.into_iter().filter(|p| self.has_link(p)).collect();
        if targets.is_empty() {
            return self.error(
                "Nobody is connected to receive files yet. Share the invite link first.".into(),
            );
        }
        let mut jobs = Vec::new();
        for file in files {
            let mut ids = Vec::new();
            for peer in &targets {
                let id = TransferId(u64::from_le_bytes(random_bytes()));
                let view = TransferView {
                    id: id.to_string(),
                    peer: peer.0.clone(),
                    peer_name: self.name_of(peer),
                    direction: Direction::Send,
                    name: crate::files::offered_name(&file),
                    size: file.size() as u64,
                    done: 0,
                    bytes_per_sec: 0.0,
                    eta_ms: None,
                    state: TransferState::Waiting,
                    error: None,
                    hash: None,
                    url: None,
                    note: Some("hashing".into()),
                    resumed_from: None,
                    sent: 0,
                    stored: 0,
                };
                self.dispatch(Action::Transfer(view.clone()));
                self.outgoing.insert(
                    id,
                    Outgoing {
                        peer: peer.clone(),
                        file: file.clone(),
                        sender: None,
                        send_error: None,
                        sent_before: 0,
                        away: None,
                        view,
                    },
                );
                ids.push(id);
            }
            jobs.push((file, ids));
        }
        // Hash one file after another (CPU-bound), then offer each.
        let weak = self.weak.clone();
        wasm_bindgen_futures::spawn_local(async move {
            for (file, ids) in jobs {
                let result = crate::files::hash(&file).await;
                let weak2 = weak.clone();
                with(&weak2, move |d| d.hashed(&file, ids, result));
            }
        });
    }

    fn hashed(&mut self, file: &File, ids: Vec<TransferId>, result: Result<[u8; 32], String>) {
        for id in ids {
            let Some(t) = self.outgoing.get_mut(&id) else {
                continue;
            };
            match &result {
                Ok(hash) => {
                    let offer = FileOffer {
                        transfer: id,
                        name: t.view.name.clone(),
                        size: t.view.size,
                        mime: file
                            .type_()
                            .chars()
                            .take(parlor_protocol::frame::MAX_SHORT_TEXT_BYTES)
                            .collect(),
                        hash: *hash,
                    };
                    t.view.note = None;
                    t.sender = Some(FileSender::new(offer, self.config.clone(), now_ms()));
                    let (peer, view) = (t.peer.clone(), t.view.clone());
                    self.dispatch(Action::Transfer(view));
                    if self.link_open(&peer, Channel::File) {
                        self.drive_outgoing(id, |_, _| {});
                    }
                }
                Err(e) => {
                    if let Some(mut t) = self.outgoing.remove(&id) {
                        t.view.state = TransferState::Failed;
                        t.view.error = Some(format!("could not read the file: {e}"));
                        self.dispatch(Action::Transfer(t.view));
                    }
                }
            }
        }
    }

    /// Applies `input` to an outgoing transfer (with the file channel's
    /// current buffered amount) and carries out what the sender asks.
    fn drive_outgoing(
        &mut self,
        id: TransferId,
        input: impl FnOnce(&mut FileSender, u64) + 'static,
    ) {
        // Boxed so the read callback below (which calls back in here) does
        // not instantiate this function recursively.
        self.drive_outgoing_boxed(id, Box::new(input));
    }

    fn drive_outgoing_boxed(&mut self, id: TransferId, input: SenderInput) {
        let Some(mut t) = self.outgoing.remove(&id) else {
            return;
        };
        let Some(sender) = t.sender.as_mut() else {
            self.outgoing.insert(id, t);
            return;
        };
        let peer = t.peer.clone();
        let linked = self.has_link(&peer);
        let confirmed_before = sender.confirmed();
        input(sender, self.link_buffered(&peer));
        let mut changed = false;
        let mut finished = None;
        let mut broken = false;
        while let Some(out) = sender.poll_output() {
            match out {
                // Away (or the channel just broke): the offer goes out again
                // when the peer is back.
                SenderOutput::Send(_) if broken || (!linked && t.away.is_some()) => {}
                SenderOutput::Send(_) if !linked => {
                    t.send_error
                        .get_or_insert_with(|| "the peer is gone".into());
                    sender.cancel();
                }
                SenderOutput::Send(frame) => {
                    match self.link_send(&peer, Channel::File, frame.encode()) {
                        Ok(()) => sender.buffered_amount(self.link_buffered(&peer)),
                        Err(e) => {
                            // The channel is closing (the peer reloads or
                            // went away; its close event is on the way):
                            // wait for the peer rather than give up.
                            crate::util::warn(&format!(
                                "file frame to {peer} not sent ({e}): the transfer waits for the peer"
                            ));
                            broken = true;
                        }
                    }
                }
                SenderOutput::Read { offset, len } => {
                    let file = t.file.clone();
                    let weak = self.weak.clone();
                    wasm_bindgen_futures::spawn_local(async move {
                        let data = crate::files::read_slice(&file, offset, len).await;
                        with(&weak, move |d| {
                            d.drive_outgoing(id, move |s, _| match data {
                                Ok(data) => s.chunk_read(offset, data, now_ms()),
                                Err(e) => s.read_failed(e),
                            })
                        });
                    });
                }
                SenderOutput::Progress(p) => {
                    apply_progress(&mut t.view, &p);
                    changed = true;
                }
                SenderOutput::Finished(result) => finished = Some(result),
            }
        }
        if t.away.is_some() && sender.state() != SenderState::Offered {
            // The peer is back and accepted again, from what it had.
            t.away = None;
            t.view.note = None;
            let from = sender.confirmed();
            if from > 0 {
                t.view.resumed_from = Some(from);
            }
            changed = true;
        }
        let sent = t.sent_before + sender.bytes_sent();
        if sent != t.view.sent {
            t.view.sent = sent;
            changed = true;
        }
        // The path machine watches for a send that stalls (fed once `t` is
        // back in place: what it asks may drive this transfer again).
        let progress = PathInput::SendProgress {
            peer: peer.clone(),
            waiting: finished.is_none()
                && t.away.is_none()
                && matches!(
                    sender.state(),
                    SenderState::Sending | SenderState::AwaitingVerification
                ),
            advanced: sender.confirmed() > confirmed_before,
        };
        if broken && finished.is_none() {
            self.outgoing.insert(id, t);
            self.park(vec![id]);
            return self.feed(PathInput::SendFailed { peer });
        }
        match finished {
            None => {
                if changed {
                    self.dispatch(Action::Transfer(t.view.clone()));
                }
                self.outgoing.insert(id, t);
                if self.paths.route(&peer) == Some(Route::ServerRelay) {
                    self.watch_relay_drain();
                }
                self.feed(progress);
            }
            Some(result) => {
                match result {
                    Ok(()) => {
                        t.view.state = TransferState::Done;
                        t.view.done = t.view.size;
                        t.view.eta_ms = None;
                    }
                    Err(e) => {
                        let (state, why) = match (&t.send_error, e) {
                            (Some(why), _) => (TransferState::Failed, why.clone()),
                            (None, e) => end_state(&e),
                        };
                        t.view.state = state;
                        t.view.error = Some(why);
                    }
                }
                self.dispatch(Action::Transfer(t.view));
                self.feed(progress);
            }
        }
    }

    // ---- receiving files ---------------------------------------------------

    fn on_file_offer(&mut self, peer: PeerId, offer: FileOffer) {
        let id = offer.transfer;
        let view = TransferView {
            id: id.to_string(),
            peer: peer.0.clone(),
            peer_name: self.name_of(&peer),
            direction: Direction::Receive,
            name: offer.name.clone(),
            size: offer.size,
            done: 0,
            bytes_per_sec: 0.0,
            eta_ms: None,
            state: TransferState::Offered,
            error: None,
            hash: None,
            url: None,
            note: None,
            resumed_from: None,
            sent: 0,
            stored: 0,
        };
        let resume_name = partial_name(&peer, &offer);
        let size = offer.size;
        let receiver = FileReceiver::new(offer, self.config.clone(), now_ms());
        self.dispatch(Action::Transfer(view.clone()));
        let key = (peer, id);
        self.incoming.insert(
            key.clone(),
            Incoming {
                receiver,
                sink: None,
                held: None,
                view,
            },
        );
        // Accepted before (this page was reloaded, or the sender was
        // away)? Then the user already said yes: resume from what is stored.
        let weak = self.weak.clone();
        wasm_bindgen_futures::spawn_local(async move {
            if let Some((offset, hasher)) = storage::resumable_prefix(&resume_name, size).await {
                with(&weak, move |d| d.resume_incoming(key, offset, hasher));
            }
        });
    }

    /// A file sink that keeps what it stored across a reload.
    fn sink_for(&self, key: &(PeerId, TransferId), offer: &FileOffer) -> IncomingFile {
        let weak = self.weak.clone();
        let k = key.clone();
        IncomingFile::resumable(
            partial_name(&key.0, offer),
            offer.size,
            offer.mime.clone(),
            move |ev| {
                let k = k.clone();
                with(&weak, move |d| d.on_sink(k, ev));
            },
        )
    }

    /// A re-offered transfer this page had accepted: accept it again from
    /// the `offset` bytes already stored (hashed into `hasher`).
    fn resume_incoming(&mut self, key: (PeerId, TransferId), offset: u64, hasher: blake3::Hasher) {
        let sink = match self.incoming.get(&key) {
            Some(t) if t.sink.is_none() && t.receiver.state() == ReceiverState::Offered => {
                self.sink_for(&key, t.receiver.offer())
            }
            _ => return, // the user answered first
        };
        if let Some(t) = self.incoming.get_mut(&key) {
            t.sink = Some(sink);
            t.view.resumed_from = Some(offset);
            t.view.stored = offset;
        }
        self.drive_incoming(&key, move |t| {
            t.receiver.accept_from(offset, hasher, now_ms())
        });
    }

    fn accept(&mut self, peer: PeerId, transfer: String) {
        let Some(id) = parse_transfer(&transfer) else {
            return;
        };
        let key = (peer, id);
        let sink = match self.incoming.get(&key) {
            Some(t) if t.sink.is_none() => Some(self.sink_for(&key, t.receiver.offer())),
            Some(_) => None,
            None => return,
        };
        if let (Some(t), Some(sink)) = (self.incoming.get_mut(&key), sink) {
            t.sink = Some(sink);
        }
        self.drive_incoming(&key, |t| t.receiver.accept(now_ms()));
    }

    fn decline(&mut self, peer: PeerId, transfer: String) {
        let Some(id) = parse_transfer(&transfer) else {
            return;
        };
        self.drive_incoming(&(peer, id), |t| {
            t.receiver.decline("declined by the user".into())
        });
    }

    fn cancel(&mut self, peer: PeerId, transfer: String, direction: Direction) {
        let Some(id) = parse_transfer(&transfer) else {
            return;
        };
        match direction {
            Direction::Receive => self.drive_incoming(&(peer, id), |t| t.receiver.cancel()),
            Direction::Send => {
                if self.outgoing.get(&id).is_some_and(|t| t.sender.is_none()) {
                    if let Some(mut t) = self.outgoing.remove(&id) {
                        t.view.state = TransferState::Cancelled;
                        t.view.note = None;
                        self.dispatch(Action::Transfer(t.view));
                    }
                } else {
                    self.drive_outgoing(id, |s, _| s.cancel());
                }
            }
        }
    }

    /// Applies `input` to an incoming transfer and carries out what the
    /// receiver asks.
    fn drive_incoming(&mut self, key: &(PeerId, TransferId), input: impl FnOnce(&mut Incoming)) {
        let Some(mut t) = self.incoming.remove(key) else {
            return;
        };
        input(&mut t);
        let mut changed = false;
        let mut ended = false;
        while let Some(out) = t.receiver.poll_output() {
            match out {
                ReceiverOutput::Send(frame) => match &mut t.held {
                    Some(held) => held.push(frame),
                    None => {
                        if self.has_link(&key.0) {
                            let _ = self.link_send(&key.0, Channel::File, frame.encode());
                        }
                    }
                },
                ReceiverOutput::Write { offset, data } => {
                    if let Some(s) = &t.sink {
                        s.write(offset, data);
                    }
                }
                ReceiverOutput::Progress(p) => {
                    apply_progress(&mut t.view, &p);
                    changed = true;
                }
                ReceiverOutput::Finished(Ok(hash)) => {
                    // Close the file and offer it for saving before the
                    // FileVerified that follows goes out.
                    t.view.hash = Some(hex(&hash));
                    t.view.done = t.view.size;
                    t.view.note = Some("saving".into());
                    t.held = Some(Vec::new());
                    match &t.sink {
                        Some(s) => s.finish(),
                        None => t.receiver.write_failed("no storage".into()),
                    }
                    changed = true;
                }
                ReceiverOutput::Finished(Err(e)) => {
                    if let Some(s) = &t.sink {
                        s.abort();
                    }
                    let (state, why) = end_state(&e);
                    t.view.state = state;
                    t.view.error = Some(why);
                    t.view.eta_ms = None;
                    changed = true;
                    ended = true;
                }
            }
        }
        if changed {
            self.dispatch(Action::Transfer(t.view.clone()));
        }
        if !ended {
            self.incoming.insert(key.clone(), t);
        }
    }

    fn on_sink(&mut self, key: (PeerId, TransferId), ev: SinkEvent) {
        let Some(t) = self.incoming.get(&key) else {
            return;
        };
        let verified = t.held.is_some();
        match ev {
            SinkEvent::Saved { url } => {
                let Some(mut t) = self.incoming.remove(&key) else {
                    return;
                };
                t.view.state = TransferState::Done;
                t.view.url = Some(url);
                t.view.note = None;
                t.view.eta_ms = None;
                if self.has_link(&key.0) {
                    for frame in t.held.take().unwrap_or_default() {
                        let _ = self.link_send(&key.0, Channel::File, frame.encode());
                    }
                }
                self.dispatch(Action::Transfer(t.view));
            }
            SinkEvent::Committed(bytes) => {
                if let Some(t) = self.incoming.get_mut(&key) {
                    t.view.stored = bytes;
                    let view = t.view.clone();
                    self.dispatch(Action::Transfer(view));
                }
            }
            SinkEvent::Failed(why) if verified => {
                // Not stored, so the sender must not hear "verified".
                let Some(mut t) = self.incoming.remove(&key) else {
                    return;
                };
                let cancel = Frame::FileCancel {
                    transfer: key.1,
                    reason: CancelReason::StorageFailed(why.chars().take(200).collect()),
                };
                if self.has_link(&key.0) {
                    let _ = self.link_send(&key.0, Channel::File, cancel.encode());
                }
                t.view.state = TransferState::Failed;
                t.view.error = Some(format!("could not store the file: {why}"));
                t.view.note = None;
                self.dispatch(Action::Transfer(t.view));
            }
            SinkEvent::Failed(why) => {
                self.drive_incoming(&key, move |t| t.receiver.write_failed(why))
            }
        }
    }
}

fn apply_progress(view: &mut TransferView, p: &Progress) {
    view.done = p.done;
    view.bytes_per_sec = p.bytes_per_sec;
    view.eta_ms = p.eta_ms;
    if matches!(view.state, TransferState::Waiting | TransferState::Offered) {
        view.state = TransferState::Active;
    }
}

/// The view state and explanation of a transfer that ended with `e`.
fn end_state(e: &TransferError) -> (TransferState, String) {
    let state = match e {
        TransferError::Declined(_) => TransferState::Declined,
        TransferError::CancelledLocally(CancelReason::User)
        | TransferError::CancelledByPeer(CancelReason::User) => TransferState::Cancelled,
        _ => TransferState::Failed,
    };
    let why = match e {
        TransferError::Declined(_) => "declined by the receiver".to_owned(),
        TransferError::CancelledLocally(CancelReason::User) => "cancelled".to_owned(),
        TransferError::CancelledByPeer(CancelReason::User) => {
            "cancelled by the other side".to_owned()
        }
        e => e.to_string(),
    };
    (state, why)
}
