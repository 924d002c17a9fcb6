//! Each room's chat history in IndexedDB, so a reload shows the conversation
//! again (once each, in order).
//!
//! Two layers:
//! - [`HistoryDb`]: the store itself behind a small async API (`open`,
//!   `load`, `put`). IndexedDB requests are turned into futures by
//!   [`wait`]: the success/error handlers resolve a `js_sys::Promise`, and
//!   the JS closures live only as long as that wait.
//! - [`History`]: what the room driver holds. It numbers the messages of one
//!   room in the order they were shown, writes each as it is shown and again
//!   when an own message's status changes, queues writes while the database
//!   is still opening, and, when IndexedDB is unavailable (private mode,
//!   blocked storage), keeps nothing: the page's messages then live only in
//!   its view state, in memory, until it closes.
//!
//! Layout: database [`DB_NAME`], object store [`STORE`], one record per shown
//! message with key path `[room, seq, uid]` (`uid` is `FROM-ID`, `me-ID` for
//! own messages), so one key range reads or trims a room in display order.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Promise};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Event, IdbCursor, IdbCursorDirection, IdbDatabase, IdbKeyRange, IdbObjectStore,
    IdbObjectStoreParameters, IdbOpenDbRequest, IdbRequest, IdbTransaction, IdbTransactionMode,
};

use crate::state::{MessageView, Status};
use crate::util::{get, js_error, set};

/// Most messages kept per room; the oldest go first. Enough to scroll back
/// through a long conversation, small enough that opening a room reads a few
/// hundred KB at most.
pub const MAX_HISTORY: usize = 500;
/// The page's IndexedDB database.
pub const DB_NAME: &str = "parlor";
/// Schema version of [`DB_NAME`]; bump it (and migrate in the upgrade
/// handler) when the layout changes. Version 2 added [`STATE_STORE`].
const DB_VERSION: u32 = 2;
/// The object store of chat messages.
pub const STORE: &str = "messages";
/// The object store of per-tab room state (identity and chat outbox): one
/// [`RoomRecord`] per tab slot, key path `slot`.
pub const STATE_STORE: &str = "rooms";

/// What a tab keeps about a room across a reload: the identity (resume
/// token, and the peer id it gave) and the chat state that belongs to it.
/// They are stored together, so one never comes back without the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// The tab's slot id (kept in its `sessionStorage`).
    pub slot: String,
    /// The room.
    pub room: String,
    /// The server's resume token for this identity.
    pub resume_token: String,
    /// The peer id the server gave with that token.
    pub peer_id: String,
    /// `parlor_core::ChatSnapshot` as JSON.
    pub snapshot: String,
    /// Wall-clock ms when saved.
    pub saved_at: u64,
}

fn state_to_record(r: &RoomRecord) -> Object {
    let record = Object::new();
    set(&record, "slot", &JsValue::from_str(&r.slot));
    set(&record, "room", &JsValue::from_str(&r.room));
    set(&record, "resume_token", &JsValue::from_str(&r.resume_token));
    set(&record, "peer_id", &JsValue::from_str(&r.peer_id));
    set(&record, "snapshot", &JsValue::from_str(&r.snapshot));
    set(&record, "saved_at", &JsValue::from_f64(r.saved_at as f64));
    record
}

fn state_from_record(v: &JsValue) -> Option<RoomRecord> {
    let text = |key: &str| get(v, key).as_string();
    Some(RoomRecord {
        slot: text("slot")?,
        room: text("room")?,
        resume_token: text("resume_token")?,
        peer_id: text("peer_id")?,
        snapshot: text("snapshot")?,
        saved_at: get(v, "saved_at").as_f64()? as u64,
    })
}

/// One stored message: its place in the room's history and what was shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Position in the room's history (ascending = display order).
    pub seq: u64,
    /// The message as shown.
    pub message: MessageView,
}

/// The unique part of a message's key: the same id from two senders is two
/// messages.
fn uid(m: &MessageView) -> String {
    format!("{}-{}", m.from.as_deref().unwrap_or("me"), m.id)
}

/// Waits for `target`'s next success (or error) event, for an `IDBRequest`
/// or an `IDBTransaction` (`complete`); `arm` installs the two handlers,
/// `disarm` removes them again once one fired, so no JS handler outlives its
/// Rust closure.
async fn settle(
    arm: impl FnOnce(&Function, &Function),
    disarm: impl FnOnce(),
) -> Result<(), JsValue> {
    let mut arm = Some(arm);
    let mut handlers: Vec<Closure<dyn FnMut(Event)>> = Vec::new();
    let promise = Promise::new(&mut |resolve: Function, reject: Function| {
        let ok = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            let _ = resolve.call0(&JsValue::UNDEFINED);
        });
        let err = Closure::<dyn FnMut(Event)>::new(move |e: Event| {
            let _ = reject.call1(&JsValue::UNDEFINED, &e);
        });
        if let Some(arm) = arm.take() {
            arm(ok.as_ref().unchecked_ref(), err.as_ref().unchecked_ref());
        }
        handlers.push(ok);
        handlers.push(err);
    });
    let result = JsFuture::from(promise).await.map(|_| ());
    disarm();
    drop(handlers);
    result
}

/// The result of `req` once it succeeds.
///
/// The continuation runs in a microtask right after the success event, while
/// the request's transaction is still active, so the caller may place more
/// requests on it.
async fn wait(req: &IdbRequest) -> Result<JsValue, String> {
    let outcome = settle(
        |ok, err| {
            req.set_onsuccess(Some(ok));
            req.set_onerror(Some(err));
        },
        || {
            req.set_onsuccess(None);
            req.set_onerror(None);
        },
    )
    .await;
    match outcome {
        Ok(()) => req.result().map_err(|e| js_error(&e)),
        Err(_) => Err(request_error(req)),
    }
}

fn request_error(req: &IdbRequest) -> String {
    match req.error() {
        Ok(Some(e)) => format!("{}: {}", e.name(), e.message()),
        _ => "IndexedDB request failed".into(),
    }
}

/// Resolves once `tx` has committed; an error or abort is an `Err`.
fn committed(tx: &IdbTransaction) -> impl Future<Output = Result<(), String>> + use<> {
    let tx = tx.clone();
    async move {
        let outcome = settle(
            |ok, err| {
                tx.set_oncomplete(Some(ok));
                tx.set_onerror(Some(err));
                tx.set_onabort(Some(err));
            },
            || {
                tx.set_oncomplete(None);
                tx.set_onerror(None);
                tx.set_onabort(None);
            },
        )
        .await;
        outcome.map_err(|_| match tx.error() {
            Some(e) => format!("{}: {}", e.name(), e.message()),
            None => "IndexedDB transaction aborted".into(),
        })
    }
}

/// All keys of `room`: `[room]` sorts before every `[room, seq, uid]`, and
/// `[room, []]` after them (arrays sort after numbers).
fn room_range(room: &str) -> Result<IdbKeyRange, String> {
    let lower = Array::of1(&JsValue::from_str(room));
    let upper = Array::of2(&JsValue::from_str(room), &Array::new());
    IdbKeyRange::bound(&lower, &upper).map_err(|e| js_error(&e))
}

fn status_code(s: Status) -> u32 {
    match s {
        Status::Sending => 0,
        Status::Sent => 1,
        Status::Delivered => 2,
    }
}

fn status_from(code: f64) -> Status {
    match code as u32 {
        0 => Status::Sending,
        1 => Status::Sent,
        _ => Status::Delivered,
    }
}

fn to_record(room: &str, entry: &Entry) -> Object {
    let m = &entry.message;
    let record = Object::new();
    let str_or_null = |s: Option<&str>| s.map_or(JsValue::NULL, JsValue::from_str);
    set(&record, "room", &JsValue::from_str(room));
    set(&record, "seq", &JsValue::from_f64(entry.seq as f64));
    set(&record, "uid", &JsValue::from_str(&uid(m)));
    set(&record, "id", &JsValue::from_str(&m.id));
    set(&record, "from", &str_or_null(m.from.as_deref()));
    set(&record, "name", &JsValue::from_str(&m.name));
    set(&record, "at", &JsValue::from_f64(m.sent_at_ms as f64));
    set(&record, "text", &JsValue::from_str(&m.text));
    let status = m
        .status
        .map_or(JsValue::NULL, |s| JsValue::from(status_code(s)));
    set(&record, "status", &status);
    record
}

/// A stored record back into an [`Entry`]; `None` for anything malformed
/// (another version's layout, a hand-edited record).
fn from_record(v: &JsValue) -> Option<Entry> {
    let text = |key: &str| get(v, key).as_string();
    Some(Entry {
        seq: get(v, "seq").as_f64()? as u64,
        message: MessageView {
            id: text("id")?,
            from: text("from"),
            name: text("name").unwrap_or_default(),
            sent_at_ms: get(v, "at").as_f64().unwrap_or(0.0) as u64,
            text: text("text")?,
            status: get(v, "status").as_f64().map(status_from),
        },
    })
}

/// The chat-history database: an open IndexedDB connection.
pub struct HistoryDb {
    db: IdbDatabase,
    /// Closes this connection when another page upgrades or deletes the
    /// database, so a newer version of the app is never blocked by this one.
    _on_version_change: Closure<dyn FnMut(Event)>,
}

impl std::fmt::Debug for HistoryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryDb")
            .field("name", &self.db.name())
            .finish_non_exhaustive()
    }
}

impl Drop for HistoryDb {
    fn drop(&mut self) {
        // Pending transactions still finish; later version changes or
        // deletions are not blocked by this page.
        self.db.set_onversionchange(None);
        self.db.close();
    }
}

impl HistoryDb {
    /// Opens (creating on first use) database `name`. Fails where IndexedDB
    /// is missing or refused, e.g. in some private modes.
    pub async fn open(name: &str) -> Result<Self, String> {
        let factory = web_sys::window()
            .ok_or("no window")?
            .indexed_db()
            .map_err(|e| js_error(&e))?
            .ok_or("IndexedDB is not available")?;
        let req: IdbOpenDbRequest = factory
            .open_with_u32(name, DB_VERSION)
            .map_err(|e| js_error(&e))?;
        let upgrade = {
            let req = req.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                if let Err(e) = create_schema(&req) {
                    crate::util::warn(&format!("chat history schema: {e}"));
                }
            })
        };
        req.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
        let result = wait(&req).await;
        req.set_onupgradeneeded(None);
        drop(upgrade);
        let db: IdbDatabase = result?.dyn_into().map_err(|_| "not a database")?;
        for store in [STORE, STATE_STORE] {
            if !db.object_store_names().contains(store) {
                db.close();
                return Err(format!("database {name} has no {store} store"));
            }
        }
        let on_version_change = {
            let db = db.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| db.close())
        };
        db.set_onversionchange(Some(on_version_change.as_ref().unchecked_ref()));
        Ok(Self {
            db,
            _on_version_change: on_version_change,
        })
    }

    fn transaction(&self, mode: IdbTransactionMode) -> Result<IdbTransaction, String> {
        self.db
            .transaction_with_str_and_mode(STORE, mode)
            .map_err(|e| js_error(&e))
    }

    /// The room state saved under `slot`, if any (and readable).
    pub async fn load_state(&self, slot: &str) -> Result<Option<RoomRecord>, String> {
        let tx = self
            .db
            .transaction_with_str_and_mode(STATE_STORE, IdbTransactionMode::Readonly)
            .map_err(|e| js_error(&e))?;
        let store = tx.object_store(STATE_STORE).map_err(|e| js_error(&e))?;
        let req = store
            .get(&JsValue::from_str(slot))
            .map_err(|e| js_error(&e))?;
        let v = wait(&req).await?;
        Ok(state_from_record(&v))
    }

    /// Deletes every room state saved before `cutoff` (wall-clock ms), and
    /// unreadable ones: nobody can come back to them any more.
    pub async fn purge_states(&self, cutoff: u64) -> Result<(), String> {
        let tx = self
            .db
            .transaction_with_str_and_mode(STATE_STORE, IdbTransactionMode::Readwrite)
            .map_err(|e| js_error(&e))?;
        let done = committed(&tx);
        let store = tx.object_store(STATE_STORE).map_err(|e| js_error(&e))?;
        let req = store.get_all().map_err(|e| js_error(&e))?;
        let all: Array = wait(&req).await?.dyn_into().map_err(|_| "not an array")?;
        for v in all.iter() {
            let stale = state_from_record(&v).is_none_or(|r| r.saved_at < cutoff);
            let slot = get(&v, "slot");
            if stale && slot.is_string() {
                store.delete(&slot).map_err(|e| js_error(&e))?;
            }
        }
        done.await
    }

    /// Saves `record` (replacing the slot's previous one); resolves once
    /// committed. The transaction starts before this returns (so a save
    /// asked for in `pagehide` is under way even if the page goes).
    pub fn put_state(
        &self,
        record: &RoomRecord,
    ) -> impl Future<Output = Result<(), String>> + use<> {
        let started = self
            .db
            .transaction_with_str_and_mode(STATE_STORE, IdbTransactionMode::Readwrite)
            .map_err(|e| js_error(&e))
            .and_then(|tx| {
                let store = tx.object_store(STATE_STORE).map_err(|e| js_error(&e))?;
                store
                    .put(&state_to_record(record))
                    .map_err(|e| js_error(&e))?;
                Ok(tx)
            });
        async move { committed(&started?).await }
    }

    /// The stored history of `room`, oldest first.
    pub async fn load(&self, room: &str) -> Result<Vec<Entry>, String> {
        let tx = self.transaction(IdbTransactionMode::Readonly)?;
        let store = tx.object_store(STORE).map_err(|e| js_error(&e))?;
        let req = store
            .get_all_with_key(room_range(room)?.as_ref())
            .map_err(|e| js_error(&e))?;
        let all: Array = wait(&req).await?.dyn_into().map_err(|_| "not an array")?;
        Ok(all.iter().filter_map(|v| from_record(&v)).collect())
    }

    /// Stores `entry` in `room` (replacing the record with the same seq and
    /// uid), then deletes the room's oldest records beyond
    /// [`MAX_HISTORY`]; resolves once committed.
    ///
    /// The transaction is created before this returns, so writes land in the
    /// order they were asked for; the work runs whether or not (and however
    /// late) the returned future is awaited.
    pub fn put(
        &self,
        room: &str,
        entry: &Entry,
    ) -> impl Future<Output = Result<(), String>> + use<> {
        let started = self
            .transaction(IdbTransactionMode::Readwrite)
            .and_then(|tx| {
                let store = tx.object_store(STORE).map_err(|e| js_error(&e))?;
                let req = store
                    .put(&to_record(room, entry))
                    .map_err(|e| js_error(&e))?;
                Ok((tx, store, req))
            });
        let room = room.to_owned();
        // Spawned now (it runs in a microtask, before any IndexedDB event),
        // so the trim is placed while the transaction is still active.
        let work = wasm_bindgen_futures::future_to_promise(async move {
            let (tx, store, req) = started.map_err(|e| JsValue::from_str(&e))?;
            let done = committed(&tx);
            let steps = async {
                wait(&req).await?;
                trim(&store, &room, MAX_HISTORY).await
            };
            if let Err(e) = steps.await {
                let _ = tx.abort();
                return Err(JsValue::from_str(&e));
            }
            done.await.map_err(|e| JsValue::from_str(&e))?;
            Ok(JsValue::UNDEFINED)
        });
        async move {
            JsFuture::from(work)
                .await
                .map(|_| ())
                .map_err(|e| js_error(&e))
        }
    }
}

/// Creates the object store during an upgrade (first open).
fn create_schema(req: &IdbOpenDbRequest) -> Result<(), String> {
    let db: IdbDatabase = req
        .result()
        .map_err(|e| js_error(&e))?
        .dyn_into()
        .map_err(|_| "not a database")?;
    if !db.object_store_names().contains(STATE_STORE) {
        let params = IdbObjectStoreParameters::new();
        params.set_key_path(&JsValue::from_str("slot"));
        db.create_object_store_with_optional_parameters(STATE_STORE, &params)
            .map_err(|e| js_error(&e))?;
    }
    if db.object_store_names().contains(STORE) {
        return Ok(());
    }
    let params = IdbObjectStoreParameters::new();
    let key_path = Array::of3(
        &JsValue::from_str("room"),
        &JsValue::from_str("seq"),
        &JsValue::from_str("uid"),
    );
    params.set_key_path(&key_path);
    db.create_object_store_with_optional_parameters(STORE, &params)
        .map_err(|e| js_error(&e))?;
    Ok(())
}

/// Deletes the oldest records of `room` beyond the newest `keep`, inside the
/// caller's transaction: walk keys newest first, skip `keep`, and delete
/// everything from the start of the room up to the key reached.
async fn trim(store: &IdbObjectStore, room: &str, keep: usize) -> Result<(), String> {
    let range = room_range(room)?;
    let req = store
        .open_key_cursor_with_range_and_direction(&range, IdbCursorDirection::Prev)
        .map_err(|e| js_error(&e))?;
    let Ok(cursor) = wait(&req).await?.dyn_into::<IdbCursor>() else {
        return Ok(()); // the room is empty
    };
    let skip = u32::try_from(keep).unwrap_or(u32::MAX);
    cursor.advance(skip).map_err(|e| js_error(&e))?;
    let Ok(cursor) = wait(&req).await?.dyn_into::<IdbCursor>() else {
        return Ok(()); // no more than `keep` records
    };
    let oldest_kept_out = cursor.key().map_err(|e| js_error(&e))?;
    let doomed = IdbKeyRange::bound(&Array::of1(&JsValue::from_str(room)), &oldest_kept_out)
        .map_err(|e| js_error(&e))?;
    let req = store.delete(&doomed).map_err(|e| js_error(&e))?;
    wait(&req).await.map(|_| ())
}

/// Where [`History`] writes.
#[derive(Debug)]
enum Store {
    /// The database is opening; writes wait here, in order.
    Opening(Vec<MessageView>),
    /// Open.
    Idb(Rc<HistoryDb>),
    /// IndexedDB is unavailable: nothing outlives the page.
    Unavailable,
}

/// One room's history as the room driver sees it: record what is shown,
/// follow own statuses. Writes go out in the background, in order.
#[derive(Debug)]
pub struct History {
    room: String,
    store: Store,
    next_seq: u64,
    /// Own messages by recency (for status rewrites), at most
    /// [`MAX_HISTORY`].
    own: VecDeque<Entry>,
    /// Uids of every message stored or loaded by this page.
    stored: HashSet<String>,
}

impl History {
    /// A history for `room` whose database is still opening; writes queue
    /// until [`History::opened`].
    pub fn new(room: &str) -> Self {
        Self {
            room: room.to_owned(),
            store: Store::Opening(Vec::new()),
            next_seq: 0,
            own: VecDeque::new(),
            stored: HashSet::new(),
        }
    }

    /// Opens the database [`DB_NAME`] and reads `room`'s history, for
    /// [`History::opened`].
    pub async fn open(room: String) -> Result<(HistoryDb, Vec<Entry>), String> {
        let db = HistoryDb::open(DB_NAME).await?;
        let entries = db.load(&room).await?;
        Ok((db, entries))
    }

    /// The database opened (or could not be): returns the stored messages to
    /// show before anything shown since, then writes what was queued. On
    /// `Err` nothing is stored from now on and the caller tells the user.
    pub fn opened(
        &mut self,
        result: Result<(HistoryDb, Vec<Entry>), String>,
    ) -> Result<Vec<MessageView>, String> {
        let queued = match std::mem::replace(&mut self.store, Store::Unavailable) {
            Store::Opening(queued) => queued,
            other => {
                self.store = other;
                return Ok(Vec::new());
            }
        };
        let (db, entries) = result?;
        self.store = Store::Idb(Rc::new(db));
        self.next_seq = entries.last().map_or(0, |e| e.seq + 1);
        let mut shown = Vec::with_capacity(entries.len());
        for e in entries {
            if !self.stored.insert(uid(&e.message)) {
                continue;
            }
            if e.message.from.is_none() {
                self.remember_own(e.clone());
            }
            shown.push(e.message);
        }
        for m in queued {
            self.record(m);
        }
        Ok(shown)
    }

    fn remember_own(&mut self, e: Entry) {
        self.own.push_back(e);
        if self.own.len() > MAX_HISTORY {
            self.own.pop_front();
        }
    }

    /// Stores a message just shown, after everything stored before.
    pub fn record(&mut self, m: MessageView) {
        match &mut self.store {
            Store::Opening(queued) => {
                // Bounded like the store, should opening take long.
                if queued.len() == MAX_HISTORY {
                    queued.remove(0);
                }
                queued.push(m);
            }
            Store::Unavailable => {}
            Store::Idb(_) => {
                // Shown once, stored once (as the view state dedupes).
                if !self.stored.insert(uid(&m)) {
                    return;
                }
                let entry = Entry {
                    seq: self.next_seq,
                    message: m,
                };
                self.next_seq += 1;
                self.write(&entry);
                if entry.message.from.is_none() {
                    self.remember_own(entry);
                }
            }
        }
    }

    /// Updates an own message's stored status.
    pub fn set_status(&mut self, id: &str, status: Status) {
        match &mut self.store {
            Store::Opening(queued) => {
                if let Some(m) = queued.iter_mut().find(|m| m.from.is_none() && m.id == id) {
                    m.status = Some(status);
                }
            }
            Store::Unavailable => {}
            Store::Idb(_) => {
                let Some(e) = self.own.iter_mut().rev().find(|e| e.message.id == id) else {
                    return;
                };
                if e.message.status == Some(status) {
                    return;
                }
                e.message.status = Some(status);
                let e = e.clone();
                self.write(&e);
            }
        }
    }

    /// The open database, once (and if) it opened.
    pub fn db(&self) -> Option<Rc<HistoryDb>> {
        match &self.store {
            Store::Idb(db) => Some(db.clone()),
            _ => None,
        }
    }

    fn write(&self, entry: &Entry) {
        let Store::Idb(db) = &self.store else { return };
        let done = db.put(&self.room, entry);
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = done.await {
                crate::util::warn(&format!("chat history not saved: {e}"));
            }
        });
    }
}
