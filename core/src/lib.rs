//! Sans-IO state machines shared by every Parlor peer (browser and CLI).
//!
//! - [`chat`]: chat delivery — ids, per-link sequence numbers, acks, dedupe,
//!   in-order delivery, outbox and retries, message statuses.
//! - [`transfer`]: file transfer — offer/accept, chunking, flow control on the
//!   transport's buffered amount, receiver-confirmed progress, resume, and the
//!   final BLAKE3 check.
//! - [`room`]: what a peer does in a room around them — the path to each
//!   peer (links with identities, the fallback ladder, the relay `Switch`
//!   handshake, restarted, refused and away peers).
//!
//! Architecture invariant: nothing here does IO, spawns tasks or reads a clock.
//! Drivers feed events in (a frame arrived, the channel drained, a timer fired
//! at `now`, the user pressed send) and drain outputs (send this frame, show
//! this message, read/write these bytes, wake me at `t`). Time is a plain
//! [`Millis`] value supplied by the driver, so every case is a fast,
//! deterministic unit test.
#![warn(missing_docs)]

pub mod chat;
pub mod room;
pub mod transfer;

pub use chat::{ChatError, ChatOutput, ChatSession, ChatSnapshot, MessageStatus, SnapshotError};
pub use transfer::{
    DEFAULT_CHUNK_SIZE, FileReceiver, FileSender, Progress, ReceiverOutput, ReceiverState,
    SenderOutput, SenderState, TransferConfig, TransferError,
};

/// A point in time on the driver's monotonic clock, in milliseconds. Only
/// differences matter; the origin is the driver's choice.
pub type Millis = u64;
