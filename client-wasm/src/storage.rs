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
    Saved {
        /// `blob:` URL of the stored file.
        url: String,
    },
}

enum Op {
    Write(u64, Vec<u8>),
    Finish,
    Abort,
}

enum Target {
    Opfs {
        dir: FileSystemDirectoryHandle,
        handle: FileSystemFileHandle,
        writable: FileSystemWritableFileStream,
    },
    Memory {
        parts: js_sys::Array,
    },
}

struct Inner {
    file_name: String,
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
                mime,
                queue: VecDeque::new(),
                running: false,
                failed: false,
                target: None,
                on_event: Rc::new(on_event),
            })),
        }
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

async fn run(inner: Rc<RefCell<Inner>>) {
    loop {
        let (op, target, failed, name, mime) = {
            let mut i = inner.borrow_mut();
            let Some(op) = i.queue.pop_front() else {
                i.running = false;
                return;
            };
            (
                op,
                i.target.clone(),
                i.failed,
                i.file_name.clone(),
                i.mime.clone(),
            )
        };
        if failed && !matches!(op, Op::Abort) {
            continue;
        }
        let target = match (target, &op) {
            (Some(t), _) => t,
            (None, Op::Abort) => continue,
            (None, _) => {
                let t = Rc::new(open(&name).await);
                inner.borrow_mut().target = Some(t.clone());
                t
            }
        };
        let result = match op {
            Op::Write(offset, data) => write(&target, offset, &data).await.map(|()| None),
            Op::Finish => finish(&target, &mime).await.map(Some),
            Op::Abort => {
                abort(&target, &name).await;
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
    for name in stale {
        let _ = JsFuture::from(dir.remove_entry(&name)).await;
    }
    Ok(())
}

async fn open(name: &str) -> Target {
    match open_opfs(name).await {
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
    opts.set_create(true);
    let dir: FileSystemDirectoryHandle =
        JsFuture::from(root.get_directory_handle_with_options(INCOMING_DIR, &opts))
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into();
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

async fn write(target: &Target, offset: u64, data: &[u8]) -> Result<(), String> {
    match target {
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
        Target::Memory { parts } => parts.set_length(0),
    }
}
