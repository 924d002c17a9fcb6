//! Integration tests of `parlor-server`: real servers on 127.0.0.1:0, run
//! in-process through `parlor_signaling::run`, with real WebSocket clients
//! (one test also starts the `parlor-server` binary), and the embedded TURN
//! relay driven by the `turn` crate's client.
#![allow(clippy::unwrap_used)]

mod codes;
mod hostile;
mod http;
mod lifecycle;
mod limits;
mod proxy;
mod relay;
mod signaling;
mod support;
mod turn;
mod turn_abuse;
