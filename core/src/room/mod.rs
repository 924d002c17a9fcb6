//! What a peer does in a room, around chat delivery and file transfer.
//!
//! - [`path`]: the path to each peer — which WebRTC connection (a *link*,
//!   with an identity) is current, the fallback ladder (direct/TURN → one
//!   ICE restart → the server relay), the `Switch` handshake with epochs,
//!   deadlines, refused peers, restarted peers, peers away and back.
//! - [`transfers`]: every file transfer of the room — routing frames by
//!   (peer, transfer id), answers to repeats of ended transfers, when
//!   `FileVerified` may leave, what a path change, an away, restarted or
//!   refused peer does to transfers, progress throttling.
//!
//! The drivers (the page, the CLI) turn IO into inputs and outputs into IO;
//! every decision about a peer's path and its transfers is made here once.

pub mod path;
pub mod transfers;

pub use path::{
    GoneReason, LinkChannel, LinkId, PathInput, PathOutput, PathPolicy, PathSettings, Paths, Route,
};
pub use transfers::{PROGRESS_INTERVAL_MS, TransferKey, TransferOutput, Transfers};
