//! Browser glue in a real browser: `cargo test -p parlor-client-wasm
//! --target wasm32-unknown-unknown` runs these in headless Chromium through
//! `wasm-bindgen-test-runner` (see `.cargo/config.toml` and
//! `client-wasm/webdriver.json`). Each test uses fresh random room and file
//! names, so runs never see each other's data.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Promise, Uint8Array};
use parlor_client_wasm::files;
use parlor_client_wasm::history::{Entry, History, HistoryDb, MAX_HISTORY};
use parlor_client_wasm::state::{MessageView, Status};
use parlor_client_wasm::storage::{self, IncomingFile, SinkEvent};
use parlor_client_wasm::util::{hex, random_bytes};
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// Database used by these tests (the page's own is `parlor`).
const TEST_DB: &str = "parlor-tests";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", hex(&random_bytes::<8>()))
}

fn message(id: &str, from: Option<&str>, text: &str) -> MessageView {
    MessageView {
        id: id.into(),
        from: from.map(Into::into),
        name: from.map_or(String::new(), |f| format!("name of {f}")),
        sent_at_ms: 1_700_000_000_000,
        text: text.into(),
        status: from.is_none().then_some(Status::Sending),
    }
}

fn entry(seq: u64, message: MessageView) -> Entry {
    Entry { seq, message }
}

fn texts(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.message.text.as_str()).collect()
}

async fn open_db() -> HistoryDb {
    HistoryDb::open(TEST_DB).await.expect("IndexedDB opens")
}

// ---- chat history in IndexedDB -------------------------------------------

#[wasm_bindgen_test]
async fn history_round_trips_every_field_of_a_room() {
    let db = open_db().await;
    let room = unique("room");
    let mut delivered = message("a1", None, "own, delivered");
    delivered.status = Some(Status::Delivered);
    let stored = vec![
        entry(0, message("a0", Some("peer1"), "hello")),
        entry(1, delivered),
        entry(2, message("a2", None, "own, sending")),
        entry(
            3,
            message("a3", Some("peer2"), "多语言 ✓ emoji 🎉\nsecond line"),
        ),
    ];
    for e in &stored {
        db.put(&room, e).await.expect("stored");
    }
    assert_eq!(db.load(&room).await.expect("loaded"), stored);
}

#[wasm_bindgen_test]
async fn history_comes_back_in_sequence_order_whatever_the_write_order() {
    let db = open_db().await;
    let room = unique("room");
    // Started together and finished in any order; the key decides the order.
    let pending = [
        db.put(&room, &entry(2, message("m2", None, "third"))),
        db.put(&room, &entry(0, message("m0", Some("p"), "first"))),
        db.put(&room, &entry(10, message("m10", None, "last"))),
        db.put(&room, &entry(1, message("m1", Some("q"), "second"))),
    ];
    for p in pending {
        p.await.expect("stored");
    }
    let loaded = db.load(&room).await.expect("loaded");
    assert_eq!(texts(&loaded), ["first", "second", "third", "last"]);
}

#[wasm_bindgen_test]
async fn rewriting_a_status_replaces_the_record() {
    let db = open_db().await;
    let room = unique("room");
    let mut m = entry(0, message("own", None, "hi"));
    db.put(&room, &m).await.expect("stored");
    m.message.status = Some(Status::Delivered);
    db.put(&room, &m).await.expect("stored");
    let loaded = db.load(&room).await.expect("loaded");
    assert_eq!(loaded, [m]);
}

#[wasm_bindgen_test]
async fn rooms_do_not_see_each_other() {
    let db = open_db().await;
    let room = unique("room");
    // A room id that is a prefix of another must not match it either.
    let longer = format!("{room}x");
    db.put(&room, &entry(0, message("m", None, "in room")))
        .await
        .expect("stored");
    db.put(&longer, &entry(0, message("m", None, "in the other room")))
        .await
        .expect("stored");
    let empty = unique("room");
    assert_eq!(texts(&db.load(&room).await.expect("loaded")), ["in room"]);
    assert_eq!(
        texts(&db.load(&longer).await.expect("loaded")),
        ["in the other room"]
    );
    assert!(db.load(&empty).await.expect("loaded").is_empty());
}

#[wasm_bindgen_test]
async fn a_room_keeps_only_its_newest_messages() {
    let db = open_db().await;
    let room = unique("room");
    let neighbour = unique("room");
    db.put(&neighbour, &entry(0, message("n", None, "neighbour")))
        .await
        .expect("stored");
    let total = MAX_HISTORY + 7;
    let pending: Vec<_> = (0..total)
        .map(|i| {
            let m = message(&format!("m{i}"), Some("p"), &format!("text {i}"));
            db.put(&room, &entry(i as u64, m))
        })
        .collect();
    for p in pending {
        p.await.expect("stored");
    }
    let loaded = db.load(&room).await.expect("loaded");
    assert_eq!(loaded.len(), MAX_HISTORY);
    assert_eq!(loaded[0].seq, 7, "the oldest went first");
    assert_eq!(loaded[MAX_HISTORY - 1].seq, total as u64 - 1);
    assert!(loaded.windows(2).all(|w| w[0].seq < w[1].seq));
    // Trimming one room leaves the others alone.
    assert_eq!(
        texts(&db.load(&neighbour).await.expect("loaded")),
        ["neighbour"]
    );
}

#[wasm_bindgen_test]
async fn the_driver_history_shows_stored_messages_then_appends_after_them() {
    let room = unique("room");
    let db = open_db().await;
    for (i, text) in ["one", "two"].into_iter().enumerate() {
        let m = message(&format!("old{i}"), Some("p"), text);
        db.put(&room, &entry(i as u64, m)).await.expect("stored");
    }

    // Written while the database is still opening: queued, then stored
    // after what was there, with its latest status.
    let mut history = History::new(&room);
    history.record(message("new", None, "three"));
    history.set_status("new", Status::Sent);
    let stored = db.load(&room).await.expect("loaded");
    let shown = history
        .opened(Ok((open_db().await, stored)))
        .expect("opened");
    let shown: Vec<&str> = shown.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(shown, ["one", "two"]);
    history.record(message("x", Some("q"), "four"));
    history.set_status("new", Status::Delivered);
    // Already stored: not stored twice.
    history.record(message("old1", Some("p"), "two"));
    history.record(message("x", Some("q"), "four"));

    // A transaction started later sees every write above.
    let loaded = db.load(&room).await.expect("loaded");
    assert_eq!(texts(&loaded), ["one", "two", "three", "four"]);
    assert_eq!(loaded[2].message.status, Some(Status::Delivered));
}

#[wasm_bindgen_test]
async fn without_indexeddb_the_driver_history_stores_nothing_and_says_why() {
    let mut history = History::new(&unique("room"));
    history.record(message("m", None, "kept in memory only"));
    let why = history
        .opened(Err("IndexedDB is not available".into()))
        .expect_err("reported");
    assert!(why.contains("IndexedDB"), "{why}");
    // Later writes are ignored, not queued forever.
    history.record(message("m2", None, "also"));
    assert_eq!(history.opened(Err("again".into())), Ok(Vec::new()));
}

// ---- hashing picked files --------------------------------------------------

fn blob_of(bytes: &[u8]) -> web_sys::Blob {
    let parts = js_sys::Array::of1(&Uint8Array::from(bytes));
    web_sys::Blob::new_with_u8_array_sequence(&parts).expect("blob")
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[wasm_bindgen_test]
async fn hashing_a_blob_in_pieces_equals_hashing_its_bytes() {
    let piece = files::HASH_PIECE_BYTES as usize;
    for len in [0, 1, 1000, piece, 2 * piece + 12_345] {
        let bytes = pattern(len);
        let got = files::hash(&blob_of(&bytes)).await.expect("hashed");
        assert_eq!(got, *blake3::hash(&bytes).as_bytes(), "size {len}");
    }
}

#[wasm_bindgen_test]
async fn a_slice_read_returns_exactly_those_bytes() {
    let bytes = pattern(100_000);
    let blob = blob_of(&bytes);
    let got = files::read_slice(&blob, 12_345, 5_000).await.expect("read");
    assert_eq!(got, bytes[12_345..17_345]);
}

// ---- received files in OPFS --------------------------------------------------

/// An [`IncomingFile`] event sink plus a promise for its first event.
fn event_sink() -> (
    impl Fn(SinkEvent) + 'static,
    Promise,
    Rc<RefCell<Vec<SinkEvent>>>,
) {
    let events = Rc::new(RefCell::new(Vec::new()));
    let resolve: Rc<RefCell<Option<Function>>> = Rc::default();
    let promise = Promise::new(&mut |res, _| *resolve.borrow_mut() = Some(res));
    let sink = {
        let events = events.clone();
        move |ev: SinkEvent| {
            events.borrow_mut().push(ev);
            if let Some(r) = resolve.borrow_mut().take() {
                let _ = r.call0(&JsValue::UNDEFINED);
            }
        }
    };
    (sink, promise, events)
}

async fn opfs_file(name: &str) -> web_sys::File {
    let storage = web_sys::window().expect("window").navigator().storage();
    let root: web_sys::FileSystemDirectoryHandle = JsFuture::from(storage.get_directory())
        .await
        .expect("OPFS root")
        .unchecked_into();
    let dir: web_sys::FileSystemDirectoryHandle =
        JsFuture::from(root.get_directory_handle("parlor-incoming"))
            .await
            .expect("incoming folder")
            .unchecked_into();
    let handle: web_sys::FileSystemFileHandle = JsFuture::from(dir.get_file_handle(name))
        .await
        .expect("file in OPFS")
        .unchecked_into();
    JsFuture::from(handle.get_file())
        .await
        .expect("file")
        .unchecked_into()
}

#[wasm_bindgen_test]
async fn chunks_written_at_their_offsets_read_back_as_the_file() {
    let name = unique("incoming");
    let bytes = pattern(300_000);
    let (sink, saved, events) = event_sink();
    let file = IncomingFile::new(name.clone(), "application/octet-stream".into(), sink);
    // Out of order on purpose: each write lands at its own offset.
    for (start, end) in [(200_000, 300_000), (0, 65_000), (65_000, 200_000)] {
        file.write(start as u64, bytes[start..end].to_vec());
    }
    file.finish();
    JsFuture::from(saved).await.expect("finished");
    match events.borrow().as_slice() {
        [SinkEvent::Saved { url }] => assert!(url.starts_with("blob:"), "{url}"),
        other => panic!("expected one Saved event, got {other:?}"),
    }
    let stored = opfs_file(&name).await;
    assert_eq!(stored.size() as usize, bytes.len());
    let got = files::read_slice(&stored, 0, bytes.len())
        .await
        .expect("read");
    assert!(got == bytes, "the stored file differs");
}

/// Polls `resumable_prefix` until it reports at least `want` bytes.
async fn prefix_at_least(name: &str, size: u64, want: u64) -> (u64, blake3::Hasher) {
    for _ in 0..200 {
        if let Some((offset, hasher)) = storage::resumable_prefix(name, size).await
            && offset >= want
        {
            return (offset, hasher);
        }
        gloo_sleep(25).await;
    }
    panic!("the prefix of {name} never reached {want} bytes");
}

async fn gloo_sleep(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        let _ = web_sys::window()
            .expect("window")
            .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(promise).await;
}

#[wasm_bindgen_test]
async fn a_resumable_file_keeps_its_full_segments_and_resumes_from_them() {
    let name = unique("resumable");
    let seg = storage::segment_size(0);
    let size = 2 * seg + 1_000;
    let bytes = pattern(size as usize);
    assert!(storage::resumable_prefix(&name, size).await.is_none());
    // One and a half segments, and then the page "goes away": nothing ever
    // closes the second segment.
    let (sink, _, _) = event_sink();
    let first =
        IncomingFile::resumable(name.clone(), size, "application/octet-stream".into(), sink);
    let stop = (seg + seg / 2) as usize;
    for start in (0..stop).step_by(65_000) {
        let end = (start + 65_000).min(stop);
        first.write(start as u64, bytes[start..end].to_vec());
    }
    let (offset, hasher) = prefix_at_least(&name, size, seg).await;
    assert_eq!(offset, seg, "only the full segment is kept");
    assert_eq!(
        hasher.finalize(),
        blake3::hash(&bytes[..seg as usize]),
        "the prefix hash"
    );
    drop(first);

    // A new sink carries on from there and finishes the file.
    let (sink, saved, events) = event_sink();
    let second =
        IncomingFile::resumable(name.clone(), size, "application/octet-stream".into(), sink);
    for start in (seg as usize..size as usize).step_by(65_000) {
        let end = (start + 65_000).min(size as usize);
        second.write(start as u64, bytes[start..end].to_vec());
    }
    second.finish();
    JsFuture::from(saved).await.expect("an event");
    // Committed events come as segments fill, then Saved.
    let mut url = None;
    for _ in 0..400 {
        let found = events.borrow().iter().find_map(|ev| match ev {
            SinkEvent::Saved { url } => Some(url.clone()),
            _ => None,
        });
        if found.is_some() {
            url = found;
            break;
        }
        gloo_sleep(25).await;
    }
    let url = url.expect("the file was saved");
    let seen = events.borrow().clone();
    assert!(
        seen.iter()
            .all(|ev| matches!(ev, SinkEvent::Committed(_) | SinkEvent::Saved { .. })),
        "{seen:?}"
    );
    let response: web_sys::Response =
        JsFuture::from(web_sys::window().expect("window").fetch_with_str(&url))
            .await
            .expect("fetch the saved file")
            .unchecked_into();
    let buf = JsFuture::from(response.array_buffer().expect("body"))
        .await
        .expect("body bytes");
    let got = Uint8Array::new(&buf).to_vec();
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "the saved file differs");
    let (whole, hasher) = prefix_at_least(&name, size, size).await;
    assert_eq!(whole, size);
    assert_eq!(hasher.finalize(), blake3::hash(&bytes));
}
