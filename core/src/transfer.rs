//! File transfer between two peers: one [`FileSender`] and one
//! [`FileReceiver`] per transfer.
//!
//! ```text
//! sender                               receiver
//!   FileOffer{name,size,mime,hash} -->
//!                                  <-- FileAccept{offset} | FileDecline
//!   Chunk{offset,data} ...         -->   (written to a .part file, hashed)
//!                                  <-- FileProgress{received} every N bytes
//!   FileDone                       -->   hash checked
//!                                  <-- FileVerified | FileCancel{HashMismatch}
//! ```
//! Either side may send `FileCancel` at any time; the receiver may send
//! `ResumeFrom{offset}` to restart from a byte it has verified.
//!
//! Flow control: the sender only asks its driver to read the next chunk while
//! the transport's buffered amount is under the high watermark, and after
//! crossing it waits until the driver reports it fell to the low watermark
//! (the data channel's `bufferedamountlow` event). It also caps the bytes sent
//! but not yet confirmed by the receiver, so memory stays bounded on any path.

use parlor_protocol::{CancelReason, FileOffer, Frame, TransferId};

use crate::Millis;

/// Tunables of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferConfig {
    /// Payload bytes per chunk (at most `parlor_protocol::frame::MAX_CHUNK_BYTES`).
    pub chunk_size: usize,
    /// Stop reading new chunks when the transport buffers this many bytes.
    pub high_watermark: u64,
    /// Resume reading when the transport's buffer drains to this many bytes.
    pub low_watermark: u64,
    /// Most bytes sent but not yet confirmed by the receiver.
    pub max_unconfirmed: u64,
    /// The receiver confirms progress every this many bytes (and at the end).
    pub progress_every: u64,
}

/// Progress of a transfer, counted in bytes the receiver confirmed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Bytes confirmed (sender) or stored (receiver).
    pub done: u64,
    /// The file size.
    pub total: u64,
    /// Recent speed in bytes per second (0 until measurable).
    pub bytes_per_sec: f64,
    /// Estimated milliseconds left, once a speed is known.
    pub eta_ms: Option<u64>,
}

/// How a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The receiver declined the offer.
    #[error("declined: {0}")]
    Declined(String),
    /// This side cancelled.
    #[error("cancelled here: {0}")]
    CancelledLocally(CancelReason),
    /// The other side cancelled.
    #[error("cancelled by peer: {0}")]
    CancelledByPeer(CancelReason),
    /// The received content's hash differs from the offered hash.
    #[error("content hash mismatch: the file is corrupt")]
    HashMismatch,
    /// The other side broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What a [`FileSender`] asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum SenderOutput {
    /// Send this frame on the file channel.
    Send(Frame),
    /// Read `len` bytes at `offset` of the file and pass them to
    /// [`FileSender::chunk_read`]. At most one read is outstanding.
    Read {
        /// Where to read.
        offset: u64,
        /// How many bytes.
        len: usize,
    },
    /// Progress changed (on receiver confirmations).
    Progress(Progress),
    /// The transfer ended: `Ok` once the receiver verified the hash.
    Finished(Result<(), TransferError>),
}

/// What a [`FileReceiver`] asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ReceiverOutput {
    /// Send this frame on the file channel.
    Send(Frame),
    /// Write `data` at `offset` of the partial (`.part`) file.
    Write {
        /// Where.
        offset: u64,
        /// What.
        data: Vec<u8>,
    },
    /// Progress changed.
    Progress(Progress),
    /// The transfer ended. `Ok(hash)`: every byte arrived and the hash
    /// matches; the driver makes the file final *before* the
    /// `FileVerified` frame that follows is sent. `Err`: the partial file
    /// must not look complete.
    Finished(Result<[u8; 32], TransferError>),
}

/// The sending half of one transfer.
#[derive(Debug)]
pub struct FileSender {}

impl FileSender {
    /// Starts a transfer by offering `offer`; the first output is
    /// `Send(Frame::FileOffer)`.
    pub fn new(offer: FileOffer, config: TransferConfig, now: Millis) -> Self {
        let _ = (offer, config, now);
        unimplemented!()
    }

    /// The transfer id.
    pub fn transfer_id(&self) -> TransferId {
        unimplemented!()
    }

    /// A file frame for this transfer arrived from the receiver.
    pub fn handle_frame(&mut self, frame: Frame, now: Millis) {
        let _ = (frame, now);
        unimplemented!()
    }

    /// The transport currently buffers `amount` bytes (report after sending
    /// and on every buffered-amount-low event).
    pub fn buffered_amount(&mut self, amount: u64) {
        let _ = amount;
        unimplemented!()
    }

    /// The bytes asked for by [`SenderOutput::Read`].
    pub fn chunk_read(&mut self, offset: u64, data: Vec<u8>, now: Millis) {
        let _ = (offset, data, now);
        unimplemented!()
    }

    /// Reading the file failed: cancel and tell the receiver.
    pub fn read_failed(&mut self, why: String) {
        let _ = why;
        unimplemented!()
    }

    /// The user cancelled.
    pub fn cancel(&mut self) {
        unimplemented!()
    }

    /// Whether the transfer has ended (either way).
    pub fn is_finished(&self) -> bool {
        unimplemented!()
    }

    /// The next thing to do, if any. Drain until `None` after every call.
    pub fn poll_output(&mut self) -> Option<SenderOutput> {
        unimplemented!()
    }
}

/// The receiving half of one transfer.
#[derive(Debug)]
pub struct FileReceiver {}

impl FileReceiver {
    /// A transfer was offered; nothing is sent until [`Self::accept`] or
    /// [`Self::decline`].
    pub fn new(offer: FileOffer, config: TransferConfig, now: Millis) -> Self {
        let _ = (offer, config, now);
        unimplemented!()
    }

    /// The offer.
    pub fn offer(&self) -> &FileOffer {
        unimplemented!()
    }

    /// Accept from the first byte.
    pub fn accept(&mut self, now: Millis) {
        let _ = now;
        unimplemented!()
    }

    /// Accept from `offset`, the driver having verified and hashed the first
    /// `offset` bytes already on disk into `prefix` (resume).
    pub fn accept_from(&mut self, offset: u64, prefix: blake3::Hasher, now: Millis) {
        let _ = (offset, prefix, now);
        unimplemented!()
    }

    /// Decline the offer.
    pub fn decline(&mut self, reason: String) {
        let _ = reason;
        unimplemented!()
    }

    /// A file frame for this transfer arrived from the sender.
    pub fn handle_frame(&mut self, frame: Frame, now: Millis) {
        let _ = (frame, now);
        unimplemented!()
    }

    /// Writing to disk failed: cancel and tell the sender.
    pub fn write_failed(&mut self, why: String) {
        let _ = why;
        unimplemented!()
    }

    /// The user cancelled.
    pub fn cancel(&mut self) {
        unimplemented!()
    }

    /// Whether the transfer has ended (either way).
    pub fn is_finished(&self) -> bool {
        unimplemented!()
    }

    /// The next thing to do, if any. Drain until `None` after every call.
    pub fn poll_output(&mut self) -> Option<ReceiverOutput> {
        unimplemented!()
    }
}
