//! The Parlor web page: a Yew/WASM peer on the browser's `RTCPeerConnection`.
//!
//! Module map (everything is browser-only and compiled for `wasm32` alone; on
//! the host this crate is empty so `cargo clippy --workspace` stays happy):
//!
//! - [`util`]: small browser helpers (clock, randomness, hex, JS errors).
//! - [`signaling`]: the `/ws` WebSocket to `parlor-server`.
//! - [`rtc`]: one `RTCPeerConnection` per remote peer with Parlor's two
//!   pre-negotiated data channels; the JS closures live next to the
//!   connection and are dropped with it.
//! - [`storage`]: localStorage (display name, chat history) and received
//!   files streamed into the origin-private file system.
//! - [`files`]: reading picked files in slices (hashing, chunks).
//! - [`state`]: the view state the UI renders (a `use_reducer` store).
//! - [`room`]: the driver: owns the `ChatSession`, the transfers and the
//!   links, feeds `parlor-core` with events and carries out its outputs.
//! - [`ui`]: Yew function components; they render state and send intents.
#![cfg(target_arch = "wasm32")]

pub mod files;
pub mod i18n;
pub mod room;
pub mod rtc;
pub mod signaling;
pub mod state;
pub mod storage;
pub mod ui;
pub mod util;

use wasm_bindgen::prelude::*;

/// Entry point called by the wasm-bindgen glue when the module loads.
#[wasm_bindgen(start)]
pub fn start() {
    yew::Renderer::<ui::App>::new().render();
}
