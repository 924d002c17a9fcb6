//! The room driver: the one place where a room's state changes. It owns the
//! signaling socket, one [`PeerLink`] per remote peer, the page's
//! [`ChatSession`], and the same core machines as the CLI's `room.rs`
//! ([`Paths`] for the path to each peer, [`Transfers`] for every file
//! transfer), whose outputs it carries out; what is the page's own is the IO
//! (reading `File` blobs, storing into OPFS, resuming from it, hashing) and
//! the view. It behaves on the wire exactly like the CLI: the newcomer
//! offers to the peers in `welcome`, chat frames go on the chat channel and
//! the rest on the file channel, sending is paced by `bufferedamountlow`.
//! Offers, answers and candidates travel sealed with the room key
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
    ChatOutput, ChatSession, ChatSnapshot, MessageStatus, Millis, Progress, ReceiverState,
    TransferConfig, TransferError,
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
    GoneReason, LinkId, PathInput, PathOutput, PathPolicy, PathSettings, Paths, Route, TransferKey,
    TransferOutput, Transfers,
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

/// How much of a file one read of its `Blob` takes: the transfer machine
/// asks for one chunk at a time, and each read of a `Blob` is a round trip
/// through the event loop, so chunks are served from blocks this large.
const READ_BLOCK_BYTES: u64 = 2 * 1024 * 1024;

/// The file behind one of our transfers, and its view (what to do is
/// [`Transfers`]' decision).
struct OutgoingFile {
    peer: PeerId,
    file: File,
    /// Being hashed: the transfer machine does not know it yet.
    hashing: bool,
    view: TransferView,
    /// Chunk bytes handed to the transport, re-sends included.
    bytes_sent: u64,
    /// The block of the file read last: its offset and bytes.
    block: Option<(u64, Vec<u8>)>,
}

/// Where an incoming transfer is stored, and its view.
struct IncomingFileView {
    /// Once accepted.
    sink: Option<IncomingFile>,
    /// Verified: the sink is closing the file (its `FileVerified` waits
    /// for [`Transfers::stored`]).
    storing: bool,
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
    /// Polls the socket's `bufferedAmount` while a relayed transfer may
    /// wait for it to drain.
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
    /// Every file transfer of the room: the decisions
    /// (`parlor_core::room::transfers`; this driver carries out its outputs).
    transfers: Transfers,
    /// The files our transfers read.
    outgoing: HashMap<TransferId, OutgoingFile>,
    /// Where incoming transfers are stored.
    incoming: HashMap<(PeerId, TransferId), IncomingFileView>,
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
                transfers: Transfers::new(TransferConfig::default()),
                outgoing: HashMap::new(),
                incoming: HashMap::new(),
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

/// Asks the server (`GET /api/origin-check`) whether this page's origin
/// may open the signaling WebSocket; a message naming the origin it
/// expects when not (`None` when allowed or unknown).
async fn origin_problem() -> Option<String> {
    let origin = web_sys::window()?.location().origin().ok()?;
    let url = format!(
        "/api/origin-check?origin={}",
        js_sys::encode_uri_component(&origin)
    );
    let response = gloo::net::http::Request::get(&url).send().await.ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    if body["allowed"].as_bool() != Some(false) {
        return None;
    }
    let expected = body["expected"].as_str().unwrap_or("unknown");
    Some(format!(
        "The Parlor server refuses pages from {origin}: it expects {expected}. \
         Open the page at that address, or ask its operator to set --public-url."
    ))
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
            if !t.storing
                && let Some(s) = &t.sink
            {
                s.suspend();
            }
        }
        self.incoming.clear();
        self.outgoing.clear();
        self.transfers = Transfers::new(self.transfers.config().clone());
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
        self.start_as_new_peer();
        self.saved_generation = None;
        self.attempt = 0;
        self.reconnect_timer = None;
        self.connect();
    }

    /// We carry on under a new peer id (another tab took over ours):
    /// every link closes and the path machine starts afresh, and the
    /// transfers hear what the path machine says when it starts over
    /// itself; see [`Self::forget_everyone`].
    fn start_as_new_peer(&mut self) {
        self.forget_everyone();
        self.links.clear();
        self.paths = Paths::new(self.paths.settings().clone());
        self.path_timer = None;
        self.path_deadline = None;
        self.transfers
            .on_path(&PathOutput::StartedOver, 0, now_ms());
        self.drive();
    }

    /// Every peer we knew is gone for us, and a new identity numbers its
    /// messages afresh.
    fn forget_everyone(&mut self) {
        let old: Vec<PeerId> = self.names.keys().cloned().collect();
        for p in old {
            self.on_peer_gone(&p, false, true);
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
                    if code == 1006 {
                        // A refused upgrade looks like any failure to the
                        // page; the server says whether it was the origin.
                        let dispatch = Rc::clone(&self.dispatch);
                        wasm_bindgen_futures::spawn_local(async move {
                            if let Some(text) = origin_problem().await {
                                dispatch(Action::ServerError(text));
                            }
                        });
                    }
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
                }
                // Every welcome, the same id again included (a resume after a
                // server restart), clears the reconnecting status and the
                // server's alerts.
                self.dispatch(Action::Welcome(peer_id.0.clone()));
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
                    return self.on_peer_gone(&peer_id, false, false);
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
        self.drive();
    }

    /// Carries out what the path and transfer machines ask (including what
    /// the handling of their outputs fed back), then sets the path timer.
    fn drive(&mut self) {
        loop {
            if let Some(out) = self.paths.poll_output() {
                self.on_path_output(out);
            } else if let Some(out) = self.transfers.poll_output() {
                self.on_transfer_output(out);
            } else {
                break;
            }
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
                    d.drive();
                })
            })
        });
    }

    fn on_path_output(&mut self, out: PathOutput) {
        let buffered = match &out {
            PathOutput::FilesUp { peer, .. } => self.link_buffered(peer),
            _ => 0,
        };
        self.transfers.on_path(&out, buffered, now_ms());
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
            PathOutput::FilesUp { peer, .. } => self.dispatch(Action::PeerFiles {
                id: peer.0.clone(),
                ready: true,
            }),
            // Its transfers: see `Transfers::on_path`.
            PathOutput::PeerRestarted { .. } => {}
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
                self.on_peer_gone(&peer, true, true);
            }
            PathOutput::Gone {
                peer,
                reason: GoneReason::Left,
            } => self.on_peer_gone(&peer, false, false),
            PathOutput::Gone { peer, .. } => {
                self.error(format!("The connection to {} failed.", self.label(&peer)));
                self.on_peer_gone(&peer, true, false);
            }
            PathOutput::Returned { .. } | PathOutput::AwayExpired { .. } => {}
            PathOutput::StartedOver => self.forget_everyone(),
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
            self.transfers.config().low_watermark,
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
                }
                self.feed(PathInput::ChannelClosed { link, channel });
            }
            PeerEvent::Message(channel, data) => self.on_frame(peer, channel, &data),
            PeerEvent::BufferedLow => {
                let amount = self.link_buffered(&peer);
                self.transfers.buffered(&peer, amount, now_ms());
                self.drive();
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

    /// `peer` is gone: its link closes. With `forget` its chat link ends;
    /// without, it may only be away for a moment (a reload, a network
    /// switch): its chat link (outbox, sequence numbers) is kept for the
    /// retention window (its transfers: see `Transfers::on_path`).
    /// `keep_listed` keeps it in the peer list, marked failed.
    fn on_peer_gone(&mut self, peer: &PeerId, keep_listed: bool, forget: bool) {
        if self.typing_timers.remove(peer).is_some() {
            self.dispatch(Action::Typing {
                id: peer.0.clone(),
                typing: false,
            });
        }
        if forget {
            self.chat.remove_peer(peer);
        } else {
            self.chat.peer_left(peer, now_ms());
        }
        self.flush_chat();
        if keep_listed {
            self.set_link_state(peer, LinkState::Failed, None);
        } else {
            self.names.remove(peer);
            self.link_states.remove(peer);
            self.dispatch(Action::PeerGone(peer.0.clone()));
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
        let id = frame.transfer_id();
        if !self.transfers.handle_frame(&peer, frame, now_ms()) {
            crate::util::warn(&format!(
                "file frame ({id:?}) from {peer} for no transfer of ours ignored"
            ));
        }
        self.drive();
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
        self.drive();
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

    /// The peers we send files to through the server relay.
    fn relayed_receivers(&self) -> Vec<PeerId> {
        (self.transfers.receiving_peers().into_iter())
            .filter(|p| self.paths.route(p) == Some(Route::ServerRelay))
            .collect()
    }

    /// Starts polling the socket's buffered amount if a relayed transfer may
    /// be held back by it (it has no buffered-amount-low event).
    fn watch_relay_drain(&mut self) {
        if self.relay_drain.is_some()
            || self.relay_buffered() <= self.transfers.config().low_watermark
            || self.relayed_receivers().is_empty()
        {
            return;
        }
        let weak = self.weak.clone();
        self.relay_drain = Some(Interval::new(RELAY_DRAIN_POLL_MS, move || {
            with(&weak, Driver::relay_drain_tick)
        }));
    }

    /// The poll: once the socket is at or under the low watermark, tell the
    /// transfers (like `bufferedamountlow`) and stop polling.
    fn relay_drain_tick(&mut self) {
        let peers = self.relayed_receivers();
        if peers.is_empty() {
            self.relay_drain = None;
            return;
        }
        let amount = self.relay_buffered();
        if amount > self.transfers.config().low_watermark {
            return;
        }
        self.relay_drain = None;
        for peer in peers {
            self.transfers.buffered(&peer, amount, now_ms());
        }
        self.drive();
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
                    OutgoingFile {
                        peer: peer.clone(),
                        file: file.clone(),
                        hashing: true,
                        view,
                        bytes_sent: 0,
                        block: None,
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
                continue; // cancelled meanwhile
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
                    t.hashing = false;
                    t.view.note = None;
                    let (peer, view) = (t.peer.clone(), t.view.clone());
                    self.dispatch(Action::Transfer(view));
                    self.transfers.send(peer, offer, now_ms());
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
        self.drive();
    }

    /// Carries out one thing the transfer machine asks.
    fn on_transfer_output(&mut self, out: TransferOutput) {
        let now = now_ms();
        match out {
            TransferOutput::Send { peer, frame } => {
                if let Frame::Chunk { transfer, data, .. } = &frame
                    && let Some(f) = self.outgoing.get_mut(transfer)
                {
                    f.bytes_sent += data.len() as u64;
                }
                match self.link_send(&peer, Channel::File, frame.encode()) {
                    Ok(()) => {
                        let amount = self.link_buffered(&peer);
                        self.transfers.buffered(&peer, amount, now);
                        if self.paths.route(&peer) == Some(Route::ServerRelay) {
                            self.watch_relay_drain();
                        }
                    }
                    Err(e) => {
                        // The path is closing (the peer reloads or went
                        // away); the path machine decides what comes next.
                        crate::util::warn(&format!("file frame to {peer} not sent: {e}"));
                        self.transfers.send_failed(&peer);
                        self.paths.handle(PathInput::SendFailed { peer }, now);
                    }
                }
            }
            TransferOutput::Read { id, offset, len } => self.read(id, offset, len),
            TransferOutput::Write {
                peer,
                id,
                offset,
                data,
            } => match self.incoming.get(&(peer.clone(), id)) {
                Some(IncomingFileView { sink: Some(s), .. }) => s.write(offset, data),
                _ => self
                    .transfers
                    .write_failed(&peer, id, "no storage".into(), now),
            },
            TransferOutput::Offered { peer, offer } => self.on_file_offer(peer, offer),
            TransferOutput::Progress { key, progress } => {
                let view = match &key {
                    TransferKey::Outgoing(id) => self.outgoing.get_mut(id).map(|f| {
                        f.view.sent = f.bytes_sent;
                        &mut f.view
                    }),
                    TransferKey::Incoming(peer, id) => (self.incoming)
                        .get_mut(&(peer.clone(), *id))
                        .map(|f| &mut f.view),
                };
                if let Some(view) = view {
                    apply_progress(view, &progress);
                    let view = view.clone();
                    self.dispatch(Action::Transfer(view));
                }
            }
            TransferOutput::Store { peer, id, hash } => {
                let key = (peer, id);
                let Some(t) = self.incoming.get_mut(&key) else {
                    return;
                };
                // Closed and offered for saving before its FileVerified goes out.
                t.view.hash = Some(hex(&hash));
                t.view.done = t.view.size;
                t.view.note = Some("saving".into());
                t.storing = true;
                let view = t.view.clone();
                match &t.sink {
                    Some(s) => s.finish(),
                    None => self.transfers.store_failed(&key.0, id, "no storage".into()),
                }
                self.dispatch(Action::Transfer(view));
            }
            TransferOutput::Away { id } => {
                if let Some(t) = self.outgoing.get_mut(&id) {
                    t.view.state = TransferState::Waiting;
                    t.view.note = Some("away".into());
                    t.view.bytes_per_sec = 0.0;
                    t.view.eta_ms = None;
                    let view = t.view.clone();
                    self.dispatch(Action::Transfer(view));
                }
            }
            TransferOutput::Resumed { id, from } => {
                if let Some(t) = self.outgoing.get_mut(&id) {
                    t.view.resumed_from = Some(from);
                    t.view.note = None;
                    let view = t.view.clone();
                    self.dispatch(Action::Transfer(view));
                }
            }
            TransferOutput::Finished {
                key: TransferKey::Outgoing(id),
                result,
            } => {
                let Some(mut t) = self.outgoing.remove(&id) else {
                    return;
                };
                t.view.sent = t.bytes_sent;
                t.view.note = None;
                t.view.eta_ms = None;
                match result {
                    Ok(()) => {
                        t.view.state = TransferState::Done;
                        t.view.done = t.view.size;
                    }
                    Err(e) => {
                        let (state, why) = end_state(&e);
                        t.view.state = state;
                        t.view.error = Some(why);
                    }
                }
                self.dispatch(Action::Transfer(t.view));
            }
            TransferOutput::Finished {
                key: TransferKey::Incoming(peer, id),
                result,
            } => {
                let Some(mut t) = self.incoming.remove(&(peer, id)) else {
                    return;
                };
                let Err(e) = result else {
                    return; // shown as done once saved (`SinkEvent::Saved`)
                };
                if let Some(s) = &t.sink {
                    if matches!(e, TransferError::PeerGone(_)) {
                        // What was stored stays: the same offer resumes it.
                        s.suspend();
                    } else {
                        s.abort();
                    }
                }
                let (state, why) = end_state(&e);
                t.view.state = state;
                t.view.error = Some(why);
                t.view.note = None;
                t.view.eta_ms = None;
                self.dispatch(Action::Transfer(t.view));
            }
            TransferOutput::SendProgress {
                peer,
                waiting,
                advanced,
            } => self.paths.handle(
                PathInput::SendProgress {
                    peer,
                    waiting,
                    advanced,
                },
                now,
            ),
        }
    }

    /// Reads `len` bytes at `offset` of our file `id` for the transfer
    /// machine: from the block read last if it holds them, else a new block.
    fn read(&mut self, id: TransferId, offset: u64, len: usize) {
        let Some(f) = self.outgoing.get(&id) else {
            return;
        };
        if let Some((start, block)) = &f.block
            && let Some(at) = offset.checked_sub(*start)
            && at + len as u64 <= block.len() as u64
        {
            let at = at as usize;
            let data = block[at..at + len].to_vec();
            return self.transfers.chunk_read(id, offset, data, now_ms());
        }
        let file = f.file.clone();
        let rest = (file.size() as u64).saturating_sub(offset);
        let block_len = READ_BLOCK_BYTES.max(len as u64).min(rest) as usize;
        let weak = self.weak.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let data = crate::files::read_slice(&file, offset, block_len).await;
            with(&weak, move |d| d.block_read(id, offset, len, data));
        });
    }

    /// A block of our file `id` was read at `offset`, for a chunk of `len`.
    fn block_read(
        &mut self,
        id: TransferId,
        offset: u64,
        len: usize,
        data: Result<Vec<u8>, String>,
    ) {
        let now = now_ms();
        match data {
            Ok(block) if block.len() >= len => {
                let chunk = block[..len].to_vec();
                if let Some(f) = self.outgoing.get_mut(&id) {
                    f.block = Some((offset, block));
                }
                self.transfers.chunk_read(id, offset, chunk, now);
            }
            Ok(_) => self
                .transfers
                .read_failed(id, "the file got shorter".into(), now),
            Err(e) => self.transfers.read_failed(id, e, now),
        }
        self.drive();
    }

    // ---- receiving files ---------------------------------------------------

    /// `peer` offers a file: shown for the user to answer, unless this page
    /// had accepted it before (then it resumes from what is stored).
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
        self.dispatch(Action::Transfer(view.clone()));
        let key = (peer, id);
        self.incoming.insert(
            key.clone(),
            IncomingFileView {
                sink: None,
                storing: false,
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

    /// The file sink of `key`, made on accepting: it keeps what it stored
    /// across a reload.
    fn open_sink(&mut self, key: &(PeerId, TransferId)) -> bool {
        let Some(offer) = self
            .transfers
            .receiver(&key.0, key.1)
            .filter(|r| r.state() == ReceiverState::Offered)
            .map(|r| r.offer().clone())
        else {
            return false; // answered already, or gone
        };
        let Some(t) = self.incoming.get_mut(key) else {
            return false;
        };
        if t.sink.is_some() {
            return false;
        }
        let weak = self.weak.clone();
        let k = key.clone();
        t.sink = Some(IncomingFile::resumable(
            partial_name(&key.0, &offer),
            offer.size,
            offer.mime,
            move |ev| {
                let k = k.clone();
                with(&weak, move |d| d.on_sink(k, ev));
            },
        ));
        true
    }

    /// A re-offered transfer this page had accepted: accept it again from
    /// the `offset` bytes already stored (hashed into `hasher`).
    fn resume_incoming(&mut self, key: (PeerId, TransferId), offset: u64, hasher: blake3::Hasher) {
        if !self.open_sink(&key) {
            return; // the user answered first
        }
        if let Some(t) = self.incoming.get_mut(&key) {
            t.view.resumed_from = Some(offset);
            t.view.stored = offset;
        }
        self.transfers
            .accept_from(&key.0, key.1, offset, hasher, now_ms());
        self.drive();
    }

    fn accept(&mut self, peer: PeerId, transfer: String) {
        let Some(id) = parse_transfer(&transfer) else {
            return;
        };
        let key = (peer, id);
        if self.open_sink(&key) {
            self.transfers.accept(&key.0, id, now_ms());
            self.drive();
        }
    }

    fn decline(&mut self, peer: PeerId, transfer: String) {
        let Some(id) = parse_transfer(&transfer) else {
            return;
        };
        self.transfers
            .decline(&peer, id, "declined by the user".into(), now_ms());
        self.drive();
    }

    fn cancel(&mut self, peer: PeerId, transfer: String, direction: Direction) {
        let Some(id) = parse_transfer(&transfer) else {
            return;
        };
        match direction {
            Direction::Receive => self.transfers.cancel_incoming(&peer, id, now_ms()),
            // Still hashing: the transfer machine does not know it yet.
            Direction::Send if self.outgoing.get(&id).is_some_and(|t| t.hashing) => {
                if let Some(mut t) = self.outgoing.remove(&id) {
                    t.view.state = TransferState::Cancelled;
                    t.view.note = None;
                    self.dispatch(Action::Transfer(t.view));
                }
            }
            Direction::Send => self.transfers.cancel_outgoing(id, now_ms()),
        }
        self.drive();
    }

    fn on_sink(&mut self, key: (PeerId, TransferId), ev: SinkEvent) {
        let Some(t) = self.incoming.get_mut(&key) else {
            return;
        };
        let (peer, id) = &key;
        match ev {
            SinkEvent::Saved { url } => {
                t.view.state = TransferState::Done;
                t.view.url = Some(url);
                t.view.note = None;
                t.view.eta_ms = None;
                let view = t.view.clone();
                self.dispatch(Action::Transfer(view));
                self.transfers.stored(peer, *id);
            }
            SinkEvent::Committed(bytes) => {
                t.view.stored = bytes;
                let view = t.view.clone();
                self.dispatch(Action::Transfer(view));
            }
            // Not stored, so the sender must not hear "verified".
            SinkEvent::Failed(why) if t.storing => {
                self.transfers
                    .store_failed(peer, *id, format!("could not store the file: {why}"))
            }
            SinkEvent::Failed(why) => self.transfers.write_failed(peer, *id, why, now_ms()),
        }
        self.drive();
    }
}

fn apply_progress(view: &mut TransferView, p: &Progress) {
    view.done = p.done;
    view.bytes_per_sec = p.bytes_per_sec;
    view.eta_ms = p.eta_ms;
    if matches!(view.state, TransferState::Waiting | TransferState::Offered) {
        view.state = TransferState::Active;
        // Back from waiting for the peer.
        if view.note.as_deref() == Some("away") {
            view.note = None;
        }
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
