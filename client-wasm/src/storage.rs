//! Where things are kept in the browser: small settings (display name,
//! language) in localStorage, and received files streamed into the
//! origin-private file system (OPFS), so a multi-gigabyte file never sits in
//! memory. Where OPFS is missing, received bytes are collected as Blob parts
//! instead (bounded by the browser's memory). Chat history lives in
//! IndexedDB: see [`crate::history`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use wasm_bindgen::JsCast as _;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Blob, BlobPropertyBag, FileSystemDirectoryHandle, FileSystemFileHandle,
    FileSystemGetDirectoryOptions, FileSystemGetFileOptions, FileSystemWritableFileStream, Url,
    WriteCommandType, WriteParams,
};

use crate::util::{get, js_error};

const NAME_KEY: &str = "parlor.name";
const LANG_KEY: &str = "parlor.lang";
/// OPFS folder for received files.
const INCOMING_DIR: &str = "parlor-incoming";

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// Reads a localStorage item.
pub fn load(key: &str) -> Option<String> {
    local_storage()?.get_item(key).ok().flatten()
}

/// Writes a localStorage item (ignored when storage is unavailable or full).
pub fn save(key: &str, value: &str) {
    if let Some(s) = local_storage() {
        let _ = s.set_item(key, value);
    }
}

/// sessionStorage key of this tab's slot for a room.
fn slot_key(room: &str) -> String {
    format!("parlor.slot.{room}")
}

/// This tab's slot id for `room`: the key of its saved room state
/// ([`crate::history::RoomRecord`]). Kept in `sessionStorage`, so it
/// survives a reload of this tab but is not shared with other tabs (a
/// duplicated tab copies it: see the room driver for what happens then).
/// Without sessionStorage every page load gets a new slot.
pub fn tab_slot(room: &str) -> String {
    let storage = web_sys::window().and_then(|w| w.session_storage().ok().flatten());
    if let Some(s) = &storage
        && let Ok(Some(slot)) = s.get_item(&slot_key(room))
        && !slot.is_empty()
    {
        return slot;
    }
    new_tab_slot(room)
}

/// A new slot for this tab (the old one belongs to someone else now).
pub fn new_tab_slot(room: &str) -> String {
    let slot = crate::util::hex(&crate::util::random_bytes::<12>());
    if let Some(s) = web_sys::window().and_then(|w| w.session_storage().ok().flatten()) {
        let _ = s.set_item(&slot_key(room), &slot);
    }
    slot
}

/// The remembered display name.
pub fn display_name() -> String {
    load(NAME_KEY).unwrap_or_default()
}

/// Remembers the display name.
pub fn set_display_name(name: &str) {
    save(NAME_KEY, name);
}

/// The remembered UI language, if the user picked one.
pub fn language() -> Option<String> {
    load(LANG_KEY)
}

/// Remembers the UI language.
pub fn set_language(lang: &str) {
    save(LANG_KEY, lang);
}

/// What happened to an [`IncomingFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    /// Storing failed; the transfer must be cancelled.
    Failed(String),
    /// The file is complete and closed; `url` is an object URL to save it.
    /// A resumable file: this many bytes from the start are on disk for
    /// good (they survive a reload of the page).
    Committed(u64),
    Saved {
        /// `blob:` URL of the stored file.
        url: String,
    },
}

enum Op {
    Write(u64, Vec<u8>),
    Finish,
    Abort,
    Suspend,
}

enum Target {
    Opfs {
        dir: FileSystemDirectoryHandle,
        handle: FileSystemFileHandle,
        writable: FileSystemWritableFileStream,
    },
    /// A resumable transfer: a folder of segment files (see
    /// [`IncomingFile::resumable`]).
    Segments {
        parent: FileSystemDirectoryHandle,
        dir: FileSystemDirectoryHandle,
        seg_size: u64,
        size: u64,
        /// The segment being written and its open stream.
        current: RefCell<Option<(u64, FileSystemWritableFileStream)>>,
        /// Bytes from the start in segments closed in order (committed).
        committed: std::cell::Cell<u64>,
    },
    Memory {
        parts: js_sys::Array,
    },
}

/// How [`IncomingFile`] stores.
#[derive(Clone, Copy)]
enum Layout {
    /// One OPFS file.
    Single,
    /// A folder of segment files for a file of this size.
    Segments { size: u64 },
}

struct Inner {
    file_name: String,
    layout: Layout,
    mime: String,
    queue: VecDeque<Op>,
    running: bool,
    failed: bool,
    target: Option<Rc<Target>>,
    on_event: Rc<dyn Fn(SinkEvent)>,
}

/// A received file being written, one queued operation at a time.
#[derive(Clone)]
pub struct IncomingFile {
    inner: Rc<RefCell<Inner>>,
}

impl std::fmt::Debug for IncomingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingFile").finish_non_exhaustive()
    }
}

impl IncomingFile {
    /// A sink writing OPFS file `file_name` (unique per transfer); `on_event`
    /// hears about failure or completion.
    pub fn new(file_name: String, mime: String, on_event: impl Fn(SinkEvent) + 'static) -> Self {
        Self {
            inner: Rc::new(RefCell::new(Inner {
                file_name,
                layout: Layout::Single,
                mime,
                queue: VecDeque::new(),
                running: false,
                failed: false,
                target: None,
                on_event: Rc::new(on_event),
            })),
        }
    }

    /// A sink that survives a reload of the page: the file is stored as a
    /// folder `dir_name` of segment files of [`segment_size`] bytes, each
    /// closed (so committed to disk) as soon as it is full. Writes to an
    /// open OPFS stream reach the file only when it closes, so a page that
    /// goes away mid-transfer keeps every full segment and loses at most the
    /// one being written. [`resumable_prefix`] finds and hashes what is
    /// there; the finished file is one Blob over the segments (no copy). The
    /// folder's existence records that the user accepted the transfer.
    pub fn resumable(
        dir_name: String,
        size: u64,
        mime: String,
        on_event: impl Fn(SinkEvent) + 'static,
    ) -> Self {
        let file = Self::new(dir_name, mime, on_event);
        file.inner.borrow_mut().layout = Layout::Segments { size };
        file
    }

    /// Queues `data` to be written at `offset`.
    pub fn write(&self, offset: u64, data: Vec<u8>) {
        self.push(Op::Write(offset, data));
    }

    /// Queues closing the file; [`SinkEvent::Saved`] follows.
    pub fn finish(&self) {
        self.push(Op::Finish);
    }

    /// Drops everything written so far.
    pub fn abort(&self) {
        self.push(Op::Abort);
    }

    /// The transfer stopped but may resume later (the peer went away):
    /// commits what was written (a resumable sink) and writes no more.
    /// A single-file sink drops it, as [`Self::abort`] does.
    pub fn suspend(&self) {
        self.push(Op::Suspend);
    }

    fn push(&self, op: Op) {
        let start = {
            let mut inner = self.inner.borrow_mut();
            inner.queue.push_back(op);
            !std::mem::replace(&mut inner.running, true)
        };
        if start {
            let inner = self.inner.clone();
            wasm_bindgen_futures::spawn_local(run(inner));
        }
    }
}

/// Most bytes one OPFS write carries when queued chunks are merged.
const COALESCE_BYTES: usize = 2 * 1024 * 1024;

/// Merges the writes queued right behind `op` that continue where it ends
/// into it (up to [`COALESCE_BYTES`]): while one write is in flight the
/// chunks that arrive meanwhile go to disk in one call, not one each (a
/// write is a round trip through the browser's storage process).
fn coalesce_writes(op: &mut Op, queue: &mut VecDeque<Op>) {
    let Op::Write(offset, data) = op else {
        return;
    };
    while let Some(Op::Write(next, more)) = queue.front()
        && *next == *offset + data.len() as u64
        && data.len() + more.len() <= COALESCE_BYTES
    {
        data.extend_from_slice(more);
        queue.pop_front();
    }
}

async fn run(inner: Rc<RefCell<Inner>>) {
    loop {
        let (op, target, failed, name, mime, layout) = {
            let mut i = inner.borrow_mut();
            let Some(mut op) = i.queue.pop_front() else {
                i.running = false;
                return;
            };
            coalesce_writes(&mut op, &mut i.queue);
            (
                op,
                i.target.clone(),
                i.failed,
                i.file_name.clone(),
                i.mime.clone(),
                i.layout,
            )
        };
        if failed && !matches!(op, Op::Abort) {
            continue;
        }
        let target = match (target, &op) {
            (Some(t), _) => t,
            (None, Op::Abort | Op::Suspend) => continue,
            (None, _) => {
                let t = Rc::new(open(&name, layout).await);
                inner.borrow_mut().target = Some(t.clone());
                t
            }
        };
        let result = match op {
            Op::Write(offset, data) => {
                let before = committed_bytes(&target);
                let result = write(&target, offset, &data).await.map(|()| None);
                let after = committed_bytes(&target);
                if after > before {
                    let on_event = inner.borrow().on_event.clone();
                    on_event(SinkEvent::Committed(after));
                }
                result
            }
            Op::Finish => finish(&target, &mime).await.map(Some),
            Op::Abort => {
                abort(&target, &name).await;
                inner.borrow_mut().failed = true;
                Ok(None)
            }
            Op::Suspend => {
                match &*target {
                    Target::Segments { .. } => close_segment(&target).await,
                    _ => abort(&target, &name).await,
                }
                inner.borrow_mut().failed = true;
                Ok(None)
            }
        };
        let on_event = inner.borrow().on_event.clone();
        match result {
            Ok(Some(url)) => on_event(SinkEvent::Saved { url }),
            Ok(None) => {}
            Err(why) => {
                {
                    let mut i = inner.borrow_mut();
                    i.failed = true;
                    i.queue.retain(|op| matches!(op, Op::Abort));
                }
                on_event(SinkEvent::Failed(why));
            }
        }
    }
}

/// Received files older than this are removed from OPFS when a room page
/// opens: their Save links died with the page that received them.
const STALE_AFTER_MS: f64 = 24.0 * 3600.0 * 1000.0;
/// A partial resumable file nobody wrote to for this long is removed when a
/// room page opens: its sender gave up waiting (it keeps a transfer to a
/// departed peer as long: `AWAY_TRANSFER_MS` in the room driver).
pub const PARTIAL_STALE_AFTER_MS: f64 = 10.0 * 60.0 * 1000.0;

/// Removes stale received files from OPFS (best effort, in the background),
/// so the origin's storage does not grow with every file ever received.
pub fn clean_stale_files() {
    wasm_bindgen_futures::spawn_local(async {
        if let Err(e) = clean_stale().await {
            crate::util::warn(&format!("OPFS cleanup skipped: {e}"));
        }
    });
}

async fn clean_stale() -> Result<(), String> {
    let navigator = web_sys::window().ok_or("no window")?.navigator();
    if get(&navigator, "storage").is_undefined()
        || get(&navigator.storage(), "getDirectory").is_undefined()
    {
        return Ok(());
    }
    let root: FileSystemDirectoryHandle = JsFuture::from(navigator.storage().get_directory())
        .await
        .map_err(|e| js_error(&e))?
        .unchecked_into();
    let Ok(dir) = JsFuture::from(root.get_directory_handle(INCOMING_DIR)).await else {
        return Ok(()); // nothing received yet
    };
    let dir: FileSystemDirectoryHandle = dir.unchecked_into();
    let entries = dir.values();
    let mut stale = Vec::new();
    let now = js_sys::Date::now();
    loop {
        let next = entries.next().map_err(|e| js_error(&e))?;
        let item = JsFuture::from(next).await.map_err(|e| js_error(&e))?;
        if get(&item, "done").as_bool() == Some(true) {
            break;
        }
        let handle = get(&item, "value");
        if get(&handle, "kind").as_string().as_deref() == Some("directory") {
            let sub: FileSystemDirectoryHandle = handle.unchecked_into();
            if segments_stale(&sub, now).await {
                stale.push(sub.name());
            }
            continue;
        }
        if get(&handle, "kind").as_string().as_deref() != Some("file") {
            continue;
        }
        let handle: FileSystemFileHandle = handle.unchecked_into();
        let Ok(file) = JsFuture::from(handle.get_file()).await else {
            continue; // being written by another tab
        };
        let file: web_sys::File = file.unchecked_into();
        if now - file.last_modified() > STALE_AFTER_MS {
            stale.push(handle.name());
        }
    }
    let opts = web_sys::FileSystemRemoveOptions::new();
    opts.set_recursive(true);
    for name in stale {
        let _ = JsFuture::from(dir.remove_entry_with_options(&name, &opts)).await;
    }
    Ok(())
}

/// Whether a resumable file's folder can go: a finished one after
/// [`STALE_AFTER_MS`], a partial one nobody wrote to for
/// [`PARTIAL_STALE_AFTER_MS`].
async fn segments_stale(dir: &FileSystemDirectoryHandle, now: f64) -> bool {
    let entries = dir.values();
    let mut newest = 0.0_f64;
    let mut done = false;
    loop {
        let Ok(next) = entries.next() else { break };
        let Ok(item) = JsFuture::from(next).await else {
            break;
        };
        if get(&item, "done").as_bool() == Some(true) {
            break;
        }
        let handle = get(&item, "value");
        if get(&handle, "kind").as_string().as_deref() != Some("file") {
            continue;
        }
        let handle: FileSystemFileHandle = handle.unchecked_into();
        done |= handle.name() == DONE_MARKER;
        let Ok(file) = JsFuture::from(handle.get_file()).await else {
            return false; // being written
        };
        let file: web_sys::File = file.unchecked_into();
        newest = newest.max(file.last_modified());
    }
    let age = now - newest;
    if done {
        age > STALE_AFTER_MS
    } else {
        age > PARTIAL_STALE_AFTER_MS
    }
}

async fn open(name: &str, layout: Layout) -> Target {
    let opened = match layout {
        Layout::Single => open_opfs(name).await,
        Layout::Segments { size } => open_segments(name, size).await,
    };
    match opened {
        Ok(t) => t,
        Err(why) => {
            crate::util::warn(&format!(
                "OPFS unavailable ({why}); keeping the received file in memory"
            ));
            Target::Memory {
                parts: js_sys::Array::new(),
            }
        }
    }
}

async fn open_opfs(name: &str) -> Result<Target, String> {
    let dir = incoming_dir(true).await?;
    let opts = FileSystemGetFileOptions::new();
    opts.set_create(true);
    let handle: FileSystemFileHandle =
        JsFuture::from(dir.get_file_handle_with_options(name, &opts))
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into();
    if get(&handle, "createWritable").is_undefined() {
        return Err("createWritable is missing".into());
    }
    let writable: FileSystemWritableFileStream = JsFuture::from(handle.create_writable())
        .await
        .map_err(|e| js_error(&e))?
        .unchecked_into();
    Ok(Target::Opfs {
        dir,
        handle,
        writable,
    })
}

/// The OPFS folder for received files, if this browser has OPFS.
async fn incoming_dir(create: bool) -> Result<FileSystemDirectoryHandle, String> {
    let navigator = web_sys::window().ok_or("no window")?.navigator();
    if get(&navigator, "storage").is_undefined() {
        return Err("navigator.storage is missing".into());
    }
    let storage = navigator.storage();
    if get(&storage, "getDirectory").is_undefined() {
        return Err("navigator.storage.getDirectory is missing".into());
    }
    let root: FileSystemDirectoryHandle = JsFuture::from(storage.get_directory())
        .await
        .map_err(|e| js_error(&e))?
        .unchecked_into();
    let opts = FileSystemGetDirectoryOptions::new();
    opts.set_create(create);
    Ok(
        JsFuture::from(root.get_directory_handle_with_options(INCOMING_DIR, &opts))
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into(),
    )
}

/// Segment size of a resumable file of `size` bytes: 4 MiB, or more for
/// files over 1 GiB so that no file has more than 256 segments.
pub fn segment_size(size: u64) -> u64 {
    (4 * 1024 * 1024_u64).max(size.div_ceil(256))
}

/// The file name of segment `index`.
fn committed_bytes(target: &Target) -> u64 {
    match target {
        Target::Segments { committed, .. } => committed.get(),
        _ => 0,
    }
}

fn segment_name(index: u64) -> String {
    format!("{index:06}")
}

/// Marks a segment folder whose file was verified and saved.
const DONE_MARKER: &str = "done";

async fn open_segments(name: &str, size: u64) -> Result<Target, String> {
    let parent = incoming_dir(true).await?;
    let opts = FileSystemGetDirectoryOptions::new();
    opts.set_create(true);
    let dir: FileSystemDirectoryHandle =
        JsFuture::from(parent.get_directory_handle_with_options(name, &opts))
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into();
    let probe: FileSystemFileHandle = {
        let opts = FileSystemGetFileOptions::new();
        opts.set_create(true);
        JsFuture::from(dir.get_file_handle_with_options(&segment_name(0), &opts))
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into()
    };
    if get(&probe, "createWritable").is_undefined() {
        return Err("createWritable is missing".into());
    }
    Ok(Target::Segments {
        parent,
        dir,
        seg_size: segment_size(size),
        size,
        current: RefCell::new(None),
        committed: std::cell::Cell::new(0),
    })
}

/// Closes (commits) the segment being written, if any.
async fn close_segment(target: &Target) {
    let Target::Segments { current, .. } = target else {
        return;
    };
    let open = current.borrow_mut().take();
    if let Some((index, writable)) = open
        && let Err(e) = JsFuture::from(writable.close()).await
    {
        crate::util::warn(&format!("segment {index} not committed: {}", js_error(&e)));
    }
}

/// Opens segment `index` for writing at `pos` (keeping what it holds when
/// `pos` is not its start).
async fn open_segment(
    dir: &FileSystemDirectoryHandle,
    index: u64,
    pos: u64,
) -> Result<FileSystemWritableFileStream, String> {
    let opts = FileSystemGetFileOptions::new();
    opts.set_create(true);
    let handle: FileSystemFileHandle =
        JsFuture::from(dir.get_file_handle_with_options(&segment_name(index), &opts))
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into();
    let wopts = web_sys::FileSystemCreateWritableOptions::new();
    wopts.set_keep_existing_data(pos > 0);
    Ok(JsFuture::from(handle.create_writable_with_options(&wopts))
        .await
        .map_err(|e| js_error(&e))?
        .unchecked_into())
}

async fn write_segments(target: &Target, mut offset: u64, mut data: &[u8]) -> Result<(), String> {
    let Target::Segments {
        dir,
        seg_size,
        current,
        ..
    } = target
    else {
        return Ok(());
    };
    while !data.is_empty() {
        let index = offset / seg_size;
        let pos = offset - index * seg_size;
        let take = ((seg_size - pos).min(data.len() as u64)) as usize;
        let open_index = current.borrow().as_ref().map(|(i, _)| *i);
        if open_index != Some(index) {
            close_segment(target).await;
            let writable = open_segment(dir, index, pos).await?;
            *current.borrow_mut() = Some((index, writable));
        }
        let writable = current
            .borrow()
            .as_ref()
            .map(|(_, w)| w.clone())
            .ok_or("no open segment")?;
        let params = WriteParams::new(WriteCommandType::Write);
        params.set_position(Some(pos as f64));
        params.set_data(&js_sys::Uint8Array::from(&data[..take]));
        let promise = writable
            .write_with_write_params(&params)
            .map_err(|e| js_error(&e))?;
        JsFuture::from(promise).await.map_err(|e| js_error(&e))?;
        if pos + take as u64 == *seg_size {
            // Full: commit it now, so a reload keeps it.
            close_segment(target).await;
            // Writes come in file order from a committed prefix, so every
            // segment before this one is on disk too.
            if let Target::Segments { committed, .. } = target {
                committed.set(committed.get().max((index + 1) * seg_size));
            }
        }
        offset += take as u64;
        data = &data[take..];
    }
    Ok(())
}

/// The segments of a finished resumable file as one Blob (no copy).
async fn segments_blob(target: &Target, mime: &str) -> Result<Blob, String> {
    let Target::Segments {
        dir,
        seg_size,
        size,
        ..
    } = target
    else {
        return Err("not a segmented file".into());
    };
    close_segment(target).await;
    let parts = js_sys::Array::new();
    let count = size.div_ceil(*seg_size);
    for index in 0..count {
        let handle: FileSystemFileHandle =
            JsFuture::from(dir.get_file_handle(&segment_name(index)))
                .await
                .map_err(|e| js_error(&e))?
                .unchecked_into();
        let file: web_sys::File = JsFuture::from(handle.get_file())
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into();
        parts.push(&file);
    }
    let opts = BlobPropertyBag::new();
    opts.set_type(mime);
    let blob = Blob::new_with_blob_sequence_and_options(&parts, &opts).map_err(|e| js_error(&e))?;
    if blob.size() as u64 != *size {
        return Err(format!(
            "stored {} bytes, expected {size}",
            blob.size() as u64
        ));
    }
    // Verified and complete: no longer a partial file for the cleanup.
    let opts = FileSystemGetFileOptions::new();
    opts.set_create(true);
    let _ = JsFuture::from(dir.get_file_handle_with_options(DONE_MARKER, &opts)).await;
    Ok(blob)
}

/// What a resumable transfer stored before the page went away: the length
/// of the prefix that is on disk (whole segments from the start, the last
/// one possibly short) and its BLAKE3 hasher, read piece by piece. `None`
/// when nothing was kept for `dir_name` (never accepted, cleaned up, or no
/// OPFS here). A prefix longer than `size` cannot belong to this file:
/// then the answer is an empty prefix (start over, still accepted).
pub async fn resumable_prefix(dir_name: &str, size: u64) -> Option<(u64, blake3::Hasher)> {
    let parent = incoming_dir(false).await.ok()?;
    let dir: FileSystemDirectoryHandle = JsFuture::from(parent.get_directory_handle(dir_name))
        .await
        .ok()?
        .unchecked_into();
    let seg_size = segment_size(size);
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    for index in 0.. {
        let Ok(handle) = JsFuture::from(dir.get_file_handle(&segment_name(index))).await else {
            break;
        };
        let handle: FileSystemFileHandle = handle.unchecked_into();
        let Ok(file) = JsFuture::from(handle.get_file()).await else {
            break;
        };
        let file: web_sys::File = file.unchecked_into();
        let len = file.size() as u64;
        if len > seg_size || offset + len > size {
            return Some((0, blake3::Hasher::new()));
        }
        let mut at = 0;
        while at < len {
            let piece = (len - at).min(crate::files::HASH_PIECE_BYTES) as usize;
            match crate::files::read_slice(&file, at, piece).await {
                Ok(bytes) if bytes.len() == piece => {
                    hasher.update(&bytes);
                }
                _ => return Some((0, blake3::Hasher::new())),
            }
            at += piece as u64;
        }
        offset += len;
        if len < seg_size {
            break;
        }
    }
    Some((offset, hasher))
}

async fn write(target: &Target, offset: u64, data: &[u8]) -> Result<(), String> {
    match target {
        Target::Segments { .. } => write_segments(target, offset, data).await?,
        Target::Opfs { writable, .. } => {
            let params = WriteParams::new(WriteCommandType::Write);
            params.set_position(Some(offset as f64));
            params.set_data(&js_sys::Uint8Array::from(data));
            let promise = writable
                .write_with_write_params(&params)
                .map_err(|e| js_error(&e))?;
            JsFuture::from(promise).await.map_err(|e| js_error(&e))?;
        }
        // The core hands out writes in file order, so appending is writing
        // at `offset`.
        Target::Memory { parts } => {
            parts.push(&js_sys::Uint8Array::from(data));
        }
    }
    Ok(())
}

async fn finish(target: &Target, mime: &str) -> Result<String, String> {
    let blob: Blob = match target {
        Target::Opfs {
            handle, writable, ..
        } => {
            JsFuture::from(writable.close())
                .await
                .map_err(|e| js_error(&e))?;
            JsFuture::from(handle.get_file())
                .await
                .map_err(|e| js_error(&e))?
                .unchecked_into()
        }
        Target::Segments { .. } => segments_blob(target, mime).await?,
        Target::Memory { parts } => {
            let opts = BlobPropertyBag::new();
            opts.set_type(mime);
            Blob::new_with_u8_array_sequence_and_options(parts, &opts).map_err(|e| js_error(&e))?
        }
    };
    Url::create_object_url_with_blob(&blob).map_err(|e| js_error(&e))
}

async fn abort(target: &Target, name: &str) {
    match target {
        Target::Opfs { dir, writable, .. } => {
            if let Ok(f) = get(writable, "abort").dyn_into::<js_sys::Function>()
                && let Ok(p) = f.call0(writable)
            {
                let _ = JsFuture::from(js_sys::Promise::resolve(&p)).await;
            }
            let _ = JsFuture::from(dir.remove_entry(name)).await;
        }
        Target::Segments {
            parent, current, ..
        } => {
            let open = current.borrow_mut().take();
            if let Some((_, writable)) = open
                && let Ok(f) = get(&writable, "abort").dyn_into::<js_sys::Function>()
                && let Ok(p) = f.call0(&writable)
            {
                let _ = JsFuture::from(js_sys::Promise::resolve(&p)).await;
            }
            let opts = web_sys::FileSystemRemoveOptions::new();
            opts.set_recursive(true);
            let _ = JsFuture::from(parent.remove_entry_with_options(name, &opts)).await;
        }
        Target::Memory { parts } => parts.set_length(0),
    }
}
