//! The Parlor web page: a Yew/WASM peer on the browser's `RTCPeerConnection`.
//!
//! Module map. Everything but [`state`] and [`params`] is browser glue compiled for `wasm32`
//! alone; on the host the crate is just the view-state reducer and the URL
//! parameters, which are plain Rust and unit-tested there (`cargo test -p parlor-client-wasm`).
//!
//! - [`util`]: small browser helpers (clock, randomness, hex, JS errors).
//! - [`signaling`]: the `/ws` WebSocket to `parlor-server`.
//! - [`rtc`]: one `RTCPeerConnection` per remote peer with Parlor's two
//!   in-band data channels; the JS closures live next to the connection and
//!   are dropped with it.
//! - [`storage`]: localStorage (display name, language) and received
//!   files streamed into the origin-private file system.
//! - [`history`]: each room's chat history in IndexedDB, behind a small
//!   async API.
//! - [`files`]: reading picked files in slices (hashing, chunks).
//! - [`state`]: the view state the UI renders (a `use_reducer` store).
//! - [`params`]: what the page URL asks for (`?relay=turn|server`).
//! - [`room`]: the driver: owns the `ChatSession`, the transfers and the
//!   links, feeds `parlor-core` with events and carries out its outputs.
//! - [`ui`]: Yew function components; they render state and send intents.

#[cfg(target_arch = "wasm32")]
pub mod files;
#[cfg(target_arch = "wasm32")]
pub mod history;
#[cfg(target_arch = "wasm32")]
pub mod i18n;
pub mod params;
#[cfg(target_arch = "wasm32")]
pub mod room;
#[cfg(target_arch = "wasm32")]
pub mod rtc;
#[cfg(target_arch = "wasm32")]
pub mod signaling;
pub mod state;
#[cfg(target_arch = "wasm32")]
pub mod storage;
#[cfg(target_arch = "wasm32")]
pub mod ui;
#[cfg(target_arch = "wasm32")]
pub mod util;

/// Entry point called by the wasm-bindgen glue when the module loads.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    // Replace the static "Loading…" placeholder of index.html; without it
    // (or without a document) fall back to rendering into <body>.
    let root = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("app"));
    match root {
        Some(root) => {
            root.set_inner_html("");
            yew::Renderer::<ui::App>::with_root(root).render();
        }
        None => {
            yew::Renderer::<ui::App>::new().render();
        }
    }
}
