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

use std::collections::VecDeque;

use parlor_protocol::frame::{MAX_CHUNK_BYTES, MAX_SHORT_TEXT_BYTES};
use parlor_protocol::{CancelReason, FileOffer, Frame, TransferId};

use crate::Millis;

/// Default payload bytes per chunk: the largest the protocol allows
/// ([`MAX_CHUNK_BYTES`]), so the per-frame overhead (header, SCTP message,
/// one `Read`/`Write` per chunk) is paid as rarely as possible while every
/// frame stays under webrtc-rs's 65 535-byte receive buffer.
///
/// The `chunk_pipeline` benchmark (encode, decode, BLAKE3, all in memory)
/// runs at over 2 GiB/s for every size from 16 to 63 KiB, far above what a
/// data channel carries, so the transport's per-message cost decides; the
/// native loopback benchmark in BENCHMARKS.md compares the sizes end to end.
pub const DEFAULT_CHUNK_SIZE: usize = MAX_CHUNK_BYTES;

/// How far back the speed estimate looks: long enough to smooth out bursts of
/// confirmations, short enough to follow a real change of speed.
pub const SPEED_WINDOW_MS: Millis = 3_000;

/// Most confirmation samples kept for the speed estimate (bounds memory when
/// confirmations are very frequent).
const MAX_SPEED_SAMPLES: usize = 128;

/// Tunables of a transfer.
///
/// The sender's `max_unconfirmed` must exceed the receiver's `progress_every`
/// (plus a chunk), or the sender waits for a confirmation the receiver only
/// sends after more bytes than the sender will send. The defaults leave a
/// margin of 16.
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

impl Default for TransferConfig {
    /// [`DEFAULT_CHUNK_SIZE`] chunks; pause reading at 1 MiB buffered in the
    /// data channel and resume at 256 KiB (enough queued to keep SCTP busy
    /// while the next `bufferedamountlow` event travels, little enough to keep
    /// chat responsive); at most 16 MiB unconfirmed; a confirmation every MiB.
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            high_watermark: 1024 * 1024,
            low_watermark: 256 * 1024,
            max_unconfirmed: 16 * 1024 * 1024,
            progress_every: 1024 * 1024,
        }
    }
}

impl TransferConfig {
    /// The config with every field brought into a workable range: a chunk
    /// size in `1..=MAX_CHUNK_BYTES`, a window of at least one chunk, and a
    /// progress step of at least one byte.
    fn sanitized(mut self) -> Self {
        self.chunk_size = self.chunk_size.clamp(1, MAX_CHUNK_BYTES);
        self.max_unconfirmed = self.max_unconfirmed.max(self.chunk_size as u64);
        self.progress_every = self.progress_every.max(1);
        self
    }
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

impl Progress {
    /// `done / total` in `0.0..=1.0` (1.0 for an empty file).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            (self.done.min(self.total) as f64) / (self.total as f64)
        }
    }
}

/// Speed over a sliding window of `(now, bytes done)` samples.
#[derive(Debug, Clone, Default)]
struct SpeedMeter {
    samples: VecDeque<(Millis, u64)>,
}

impl SpeedMeter {
    /// Forgets every sample and starts from `done` at `now`.
    fn reset(&mut self, now: Millis, done: u64) {
        self.samples.clear();
        self.samples.push_back((now, done));
    }

    fn record(&mut self, now: Millis, done: u64) {
        // Time never goes backwards for a sane driver; if it does, treat the
        // sample as taken at the last known time rather than panic or divide
        // by a negative duration.
        let now = self.samples.back().map_or(now, |&(t, _)| now.max(t));
        self.samples.push_back((now, done));
        // Keep the newest sample that is at least a window old as the base,
        // so the estimate spans a full window whenever history allows.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| t.saturating_add(SPEED_WINDOW_MS) <= now)
        {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SPEED_SAMPLES {
            self.samples.pop_front();
        }
    }

    fn bytes_per_sec(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 && b1 >= b0 => {
                (b1 - b0) as f64 * 1000.0 / (t1 - t0) as f64
            }
            _ => 0.0,
        }
    }

    fn progress(&self, done: u64, total: u64) -> Progress {
        let bytes_per_sec = self.bytes_per_sec();
        let left = total.saturating_sub(done);
        let eta_ms = if left == 0 {
            Some(0)
        } else if bytes_per_sec > 0.0 {
            Some((left as f64 * 1000.0 / bytes_per_sec).ceil() as u64)
        } else {
            None
        };
        Progress {
            done,
            total,
            bytes_per_sec,
            eta_ms,
        }
    }
}

/// `text` cut to at most [`MAX_SHORT_TEXT_BYTES`] at a char boundary, so it
/// fits in a frame's reason field.
fn short_text(mut text: String) -> String {
    if text.len() > MAX_SHORT_TEXT_BYTES {
        let mut end = MAX_SHORT_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
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
    /// The peer is gone (it left, restarted or was refused). A receiver
    /// keeps what it stored: the same offer made again resumes from there.
    #[error("the peer {0}")]
    PeerGone(String),
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

/// Where a [`FileSender`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderState {
    /// The offer is out; waiting for `FileAccept` or `FileDecline`.
    Offered,
    /// Reading and sending chunks.
    Sending,
    /// Every chunk and `FileDone` are sent; waiting for `FileVerified`.
    AwaitingVerification,
    /// The transfer ended (see the `Finished` output for how).
    Finished,
}

/// The sending half of one transfer.
#[derive(Debug)]
pub struct FileSender {
    offer: FileOffer,
    config: TransferConfig,
    state: SenderState,
    /// First byte not yet asked for with a `Read`.
    next_offset: u64,
    /// Bytes the receiver confirmed storing (monotonic).
    confirmed: u64,
    /// The `Read` whose bytes are awaited: `(offset, len)`.
    outstanding: Option<(u64, usize)>,
    /// The outstanding read was overtaken by a `ResumeFrom`: its bytes are
    /// dropped when they come.
    stale_read: bool,
    /// The driver's last buffered-amount report.
    reported_buffered: u64,
    /// Chunk bytes handed to the transport since that report.
    sent_since_report: u64,
    /// The offset of the `FileAccept` that started sending.
    accepted_at: Option<u64>,
    /// Chunk bytes handed to the transport in all, re-sends included.
    bytes_sent: u64,
    /// Reading stopped at the high watermark until a report at or under the
    /// low watermark.
    paused: bool,
    speed: SpeedMeter,
    outputs: VecDeque<SenderOutput>,
}

impl FileSender {
    /// Starts a transfer by offering `offer`; the first output is
    /// `Send(Frame::FileOffer)`.
    pub fn new(offer: FileOffer, config: TransferConfig, now: Millis) -> Self {
        let mut speed = SpeedMeter::default();
        speed.reset(now, 0);
        let mut outputs = VecDeque::new();
        outputs.push_back(SenderOutput::Send(Frame::FileOffer(offer.clone())));
        Self {
            offer,
            config: config.sanitized(),
            state: SenderState::Offered,
            next_offset: 0,
            confirmed: 0,
            outstanding: None,
            stale_read: false,
            reported_buffered: 0,
            sent_since_report: 0,
            accepted_at: None,
            bytes_sent: 0,
            paused: false,
            speed,
            outputs,
        }
    }

    /// Chunk bytes handed to the transport so far, re-sends after a
    /// `ResumeFrom` included (compare with the size to see what resuming
    /// cost).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// The path to the receiver changed (ICE restart, the server relay, a
    /// reconnect): whatever was in flight may be lost. An offer not yet
    /// answered goes out again (a repeat is harmless); once sending, the
    /// receiver's [`FileReceiver::link_reset`] asks to resume; once every
    /// chunk is out, `FileDone` goes again (its `FileVerified` may have
    /// been lost, and a receiver that verified repeats it).
    pub fn link_reset(&mut self) {
        match self.state {
            SenderState::Offered => self
                .outputs
                .push_back(SenderOutput::Send(Frame::FileOffer(self.offer.clone()))),
            SenderState::AwaitingVerification => {
                self.outputs.push_back(SenderOutput::Send(Frame::FileDone {
                    transfer: self.offer.transfer,
                }))
            }
            SenderState::Sending | SenderState::Finished => {}
        }
    }

    /// The receiver left the room and came back (perhaps restarted, with
    /// nothing but a partial file on disk): offer again from the start of
    /// the handshake. Its `FileAccept` says where to continue — from what it
    /// already has, when it kept the partial file. Does nothing once the
    /// transfer has finished.
    pub fn peer_returned(&mut self) {
        if self.state == SenderState::Finished {
            return;
        }
        self.state = SenderState::Offered;
        self.accepted_at = None;
        // A read under way belongs to the old run; its bytes are dropped.
        self.outstanding = None;
        self.stale_read = false;
        self.paused = false;
        self.reported_buffered = 0;
        self.sent_since_report = 0;
        self.outputs
            .push_back(SenderOutput::Send(Frame::FileOffer(self.offer.clone())));
    }

    /// The transfer id.
    pub fn transfer_id(&self) -> TransferId {
        self.offer.transfer
    }

    /// The offer this transfer made.
    pub fn offer(&self) -> &FileOffer {
        &self.offer
    }

    /// The config in use (after clamping).
    pub fn config(&self) -> &TransferConfig {
        &self.config
    }

    /// Where the transfer stands.
    pub fn state(&self) -> SenderState {
        self.state
    }

    /// Bytes the receiver confirmed storing.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// The current progress (confirmed bytes, recent speed, ETA).
    pub fn progress(&self) -> Progress {
        self.speed.progress(self.confirmed, self.offer.size)
    }

    /// A file frame for this transfer arrived from the receiver.
    ///
    /// Frames for other transfers, chat frames and anything after the end
    /// are ignored. A frame that breaks the protocol (an offset beyond the
    /// file, a frame only a sender sends, a frame out of turn) ends the
    /// transfer: `Send(FileCancel{ProtocolViolation})` then
    /// `Finished(Err(Protocol))`.
    pub fn handle_frame(&mut self, frame: Frame, now: Millis) {
        if self.state == SenderState::Finished || frame.transfer_id() != Some(self.offer.transfer) {
            return;
        }
        if let Err(e) = frame.validate() {
            return self.violation(format!("{e}"));
        }
        let size = self.offer.size;
        match frame {
            Frame::FileAccept { offset, .. } => {
                if self.state != SenderState::Offered {
                    if self.accepted_at == Some(offset) {
                        return; // a repeat of the accept already handled
                    }
                    // The receiver answered a repeated offer with where it
                    // stands: continue from there.
                    return self.handle_frame(
                        Frame::ResumeFrom {
                            transfer: self.offer.transfer,
                            offset,
                        },
                        now,
                    );
                }
                if offset > size {
                    return self
                        .violation(format!("FileAccept at {offset}, beyond the size {size}"));
                }
                self.accepted_at = Some(offset);
                self.state = SenderState::Sending;
                self.next_offset = offset;
                self.confirmed = offset;
                self.speed.reset(now, offset);
                self.outputs
                    .push_back(SenderOutput::Progress(self.progress()));
                self.pump();
            }
            Frame::FileDecline { reason, .. } => {
                if self.state != SenderState::Offered {
                    return self.violation("FileDecline after FileAccept".into());
                }
                self.finish(Err(TransferError::Declined(reason)));
            }
            Frame::FileProgress { received, .. } => {
                if self.state == SenderState::Offered {
                    // Overtook its FileAccept (a reordering path): the
                    // accept is on its way and carries the offset.
                    return;
                }
                if received > size {
                    return self.violation(format!(
                        "FileProgress of {received}, beyond the size {size}"
                    ));
                }
                if received <= self.confirmed {
                    return; // stale or repeated
                }
                self.confirmed = received;
                self.speed.record(now, received);
                self.outputs
                    .push_back(SenderOutput::Progress(self.progress()));
                self.pump();
            }
            Frame::ResumeFrom { offset, .. } => {
                if self.state == SenderState::Offered {
                    // As above: wait for the FileAccept.
                    return;
                }
                if offset > size {
                    return self
                        .violation(format!("ResumeFrom at {offset}, beyond the size {size}"));
                }
                self.state = SenderState::Sending;
                match self.outstanding {
                    // The read under way is the one wanted: keep it.
                    Some((o, len)) if o == offset => {
                        self.stale_read = false;
                        self.next_offset = offset + len as u64;
                    }
                    // Its bytes are no longer wanted, but the driver is busy
                    // with it: wait for them (and drop them) before the next
                    // read, so that at most one read is ever outstanding.
                    Some(_) => {
                        self.stale_read = true;
                        self.next_offset = offset;
                    }
                    None => {
                        self.next_offset = offset;
                        self.pump();
                    }
                }
            }
            Frame::FileVerified { .. } => {
                if self.state != SenderState::AwaitingVerification {
                    return self.violation("FileVerified before FileDone".into());
                }
                self.confirmed = size;
                self.speed.record(now, size);
                self.outputs
                    .push_back(SenderOutput::Progress(self.progress()));
                self.finish(Ok(()));
            }
            Frame::FileCancel { reason, .. } => {
                self.finish(Err(TransferError::CancelledByPeer(reason)))
            }
            Frame::FileOffer(_) | Frame::Chunk { .. } | Frame::FileDone { .. } => {
                self.violation("the receiver sent a sender's frame".into());
            }
            _ => {}
        }
    }

    /// The transport currently buffers `amount` bytes (report after sending
    /// and on every buffered-amount-low event).
    pub fn buffered_amount(&mut self, amount: u64) {
        if self.state == SenderState::Finished {
            return;
        }
        self.reported_buffered = amount;
        self.sent_since_report = 0;
        if self.paused {
            self.paused = amount > self.config.low_watermark;
        } else {
            self.paused = amount >= self.config.high_watermark;
        }
        self.pump();
    }

    /// The bytes asked for by [`SenderOutput::Read`]. Bytes for anything but
    /// the outstanding read are ignored, and so are those of a read a
    /// `ResumeFrom` made useless (the next read is issued once they are in);
    /// a wrong length cancels the transfer as a failed read.
    pub fn chunk_read(&mut self, offset: u64, data: Vec<u8>, now: Millis) {
        let _ = now;
        if self.state != SenderState::Sending {
            return;
        }
        let Some((want_offset, want_len)) = self.outstanding else {
            return;
        };
        if want_offset != offset {
            return;
        }
        if self.stale_read {
            self.stale_read = false;
            self.outstanding = None;
            return self.pump();
        }
        if data.len() != want_len {
            return self.read_failed(format!(
                "read {} bytes at offset {offset}, expected {want_len}",
                data.len()
            ));
        }
        self.outstanding = None;
        self.sent_since_report = self.sent_since_report.saturating_add(want_len as u64);
        if self
            .reported_buffered
            .saturating_add(self.sent_since_report)
            >= self.config.high_watermark
        {
            self.paused = true;
        }
        self.bytes_sent = self.bytes_sent.saturating_add(data.len() as u64);
        self.outputs.push_back(SenderOutput::Send(Frame::Chunk {
            transfer: self.offer.transfer,
            offset,
            data,
        }));
        self.pump();
    }

    /// Reading the file failed: cancel and tell the receiver.
    pub fn read_failed(&mut self, why: String) {
        self.cancel_with(CancelReason::ReadFailed(short_text(why)));
    }

    /// The user cancelled.
    pub fn cancel(&mut self) {
        self.cancel_with(CancelReason::User);
    }

    /// Whether the transfer has ended (either way).
    pub fn is_finished(&self) -> bool {
        self.state == SenderState::Finished
    }

    /// The next thing to do, if any. Drain until `None` after every call.
    pub fn poll_output(&mut self) -> Option<SenderOutput> {
        self.outputs.pop_front()
    }

    /// Asks for the next chunk if flow control allows, or sends `FileDone`
    /// once everything has been sent.
    fn pump(&mut self) {
        if self.state != SenderState::Sending || self.outstanding.is_some() {
            return;
        }
        let size = self.offer.size;
        if self.next_offset >= size {
            self.state = SenderState::AwaitingVerification;
            self.outputs.push_back(SenderOutput::Send(Frame::FileDone {
                transfer: self.offer.transfer,
            }));
            return;
        }
        if self.paused {
            return;
        }
        let len = (size - self.next_offset).min(self.config.chunk_size as u64);
        let in_flight = (self.next_offset + len).saturating_sub(self.confirmed);
        if in_flight > self.config.max_unconfirmed {
            return;
        }
        let offset = self.next_offset;
        // `len` is at most `chunk_size`, a usize.
        let len = len as usize;
        self.outstanding = Some((offset, len));
        self.next_offset = offset + len as u64;
        self.outputs.push_back(SenderOutput::Read { offset, len });
    }

    fn cancel_with(&mut self, reason: CancelReason) {
        if self.state == SenderState::Finished {
            return;
        }
        self.outputs
            .push_back(SenderOutput::Send(Frame::FileCancel {
                transfer: self.offer.transfer,
                reason: reason.clone(),
            }));
        self.finish(Err(TransferError::CancelledLocally(reason)));
    }

    fn violation(&mut self, why: String) {
        let why = short_text(why);
        self.outputs
            .push_back(SenderOutput::Send(Frame::FileCancel {
                transfer: self.offer.transfer,
                reason: CancelReason::ProtocolViolation(why.clone()),
            }));
        self.finish(Err(TransferError::Protocol(why)));
    }

    fn finish(&mut self, result: Result<(), TransferError>) {
        self.state = SenderState::Finished;
        self.outstanding = None;
        self.outputs.push_back(SenderOutput::Finished(result));
    }
}

/// Where a [`FileReceiver`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverState {
    /// Offered; waiting for the user to accept or decline.
    Offered,
    /// Accepted; receiving chunks.
    Receiving,
    /// The transfer ended (see the `Finished` output for how).
    Finished,
}

/// The receiving half of one transfer.
#[derive(Debug)]
pub struct FileReceiver {
    offer: FileOffer,
    config: TransferConfig,
    state: ReceiverState,
    /// Contiguous bytes written from the start of the file; the offset the
    /// next chunk must cover.
    received: u64,
    /// Hash of the first `received` bytes.
    hasher: blake3::Hasher,
    /// A `ResumeFrom{received}` is out; chunks beyond `received` are dropped
    /// without asking again until one at `received` arrives.
    resume_requested: bool,
    /// The offset this receiver accepted from.
    accepted_at: u64,
    /// `FileDone` arrived while bytes were missing: verify on the last byte.
    done_seen: bool,
    /// `received` when the last `FileProgress` was sent.
    last_confirmed: u64,
    speed: SpeedMeter,
    outputs: VecDeque<ReceiverOutput>,
}

impl FileReceiver {
    /// A transfer was offered; nothing is sent until [`Self::accept`] or
    /// [`Self::decline`].
    pub fn new(offer: FileOffer, config: TransferConfig, now: Millis) -> Self {
        let mut speed = SpeedMeter::default();
        speed.reset(now, 0);
        Self {
            offer,
            config: config.sanitized(),
            state: ReceiverState::Offered,
            received: 0,
            hasher: blake3::Hasher::new(),
            resume_requested: false,
            accepted_at: 0,
            done_seen: false,
            last_confirmed: 0,
            speed,
            outputs: VecDeque::new(),
        }
    }

    /// The offer.
    pub fn offer(&self) -> &FileOffer {
        &self.offer
    }

    /// The transfer id.
    pub fn transfer_id(&self) -> TransferId {
        self.offer.transfer
    }

    /// Where the transfer stands.
    pub fn state(&self) -> ReceiverState {
        self.state
    }

    /// Contiguous bytes stored from the start of the file.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The current progress (stored bytes, recent speed, ETA).
    pub fn progress(&self) -> Progress {
        self.speed.progress(self.received, self.offer.size)
    }

    /// Accept from the first byte.
    pub fn accept(&mut self, now: Millis) {
        self.accept_from(0, blake3::Hasher::new(), now);
    }

    /// Accept from `offset`, the driver having verified and hashed the first
    /// `offset` bytes already on disk into `prefix` (resume).
    ///
    /// A partial file longer than the offered size cannot be a prefix of
    /// this file: drivers should check that first, truncate it and call
    /// [`Self::accept`] instead. If they don't, an `offset` beyond the size
    /// cancels the transfer with `CancelReason::StorageFailed` (it is not
    /// clamped, since `prefix` would then hash the wrong bytes). Does nothing
    /// unless the transfer is still only offered.
    pub fn accept_from(&mut self, offset: u64, prefix: blake3::Hasher, now: Millis) {
        if self.state != ReceiverState::Offered {
            return;
        }
        if offset > self.offer.size {
            return self.cancel_with(CancelReason::StorageFailed(format!(
                "partial file of {offset} bytes is larger than the offered {} bytes",
                self.offer.size
            )));
        }
        self.state = ReceiverState::Receiving;
        self.received = offset;
        self.accepted_at = offset;
        self.last_confirmed = offset;
        self.hasher = prefix;
        self.speed.reset(now, offset);
        self.outputs
            .push_back(ReceiverOutput::Send(Frame::FileAccept {
                transfer: self.offer.transfer,
                offset,
            }));
        self.outputs
            .push_back(ReceiverOutput::Progress(self.progress()));
    }

    /// Decline the offer. After accepting, this is the same as [`Self::cancel`].
    pub fn decline(&mut self, reason: String) {
        match self.state {
            ReceiverState::Offered => {
                let reason = short_text(reason);
                self.outputs
                    .push_back(ReceiverOutput::Send(Frame::FileDecline {
                        transfer: self.offer.transfer,
                        reason: reason.clone(),
                    }));
                self.finish(Err(TransferError::Declined(reason)));
            }
            ReceiverState::Receiving => self.cancel(),
            ReceiverState::Finished => {}
        }
    }

    /// A file frame for this transfer arrived from the sender.
    ///
    /// Frames for other transfers, chat frames and anything after the end
    /// are ignored. A frame that breaks the protocol (a chunk beyond the
    /// file or before accepting, a frame only a receiver sends) ends the
    /// transfer: `Send(FileCancel{ProtocolViolation})` then
    /// `Finished(Err(Protocol))`.
    pub fn handle_frame(&mut self, frame: Frame, now: Millis) {
        if self.state == ReceiverState::Finished || frame.transfer_id() != Some(self.offer.transfer)
        {
            return;
        }
        if let Err(e) = frame.validate() {
            return self.violation(format!("{e}"));
        }
        match frame {
            Frame::Chunk { offset, data, .. } => {
                if self.state == ReceiverState::Offered {
                    return self.violation("Chunk before FileAccept".into());
                }
                self.chunk(offset, data, now);
            }
            Frame::FileDone { .. } => {
                if self.state == ReceiverState::Offered {
                    return self.violation("FileDone before FileAccept".into());
                }
                if self.received == self.offer.size {
                    self.verify();
                } else {
                    // Chunks are missing (lost, or still coming after a
                    // ResumeFrom): finish when the last byte arrives.
                    self.done_seen = true;
                    self.request_resume();
                }
            }
            Frame::FileCancel { reason, .. } => {
                self.finish(Err(TransferError::CancelledByPeer(reason)))
            }
            // A repeat of the offer is harmless; a different one is not.
            Frame::FileOffer(offer) if offer != self.offer => {
                self.violation("a different offer for the same transfer".into());
            }
            // The sender may have lost track of us (we were away): say again
            // that we accept, from the last verified byte.
            Frame::FileOffer(_) if self.state == ReceiverState::Receiving => {
                self.outputs
                    .push_back(ReceiverOutput::Send(Frame::FileAccept {
                        transfer: self.offer.transfer,
                        offset: self.received,
                    }));
            }
            Frame::FileAccept { .. }
            | Frame::FileDecline { .. }
            | Frame::FileProgress { .. }
            | Frame::FileVerified { .. }
            | Frame::ResumeFrom { .. } => {
                self.violation("the sender sent a receiver's frame".into())
            }
            _ => {}
        }
    }

    /// The path to the sender changed (ICE restart, the server relay, a
    /// reconnect): whatever was in flight may be lost. Repeats the accept
    /// (the sender ignores a repeat, and needs it if the first was lost) and
    /// asks to continue from the last verified byte, so nothing stalls
    /// waiting for data that will never come.
    pub fn link_reset(&mut self) {
        if self.state != ReceiverState::Receiving {
            return;
        }
        self.outputs
            .push_back(ReceiverOutput::Send(Frame::FileAccept {
                transfer: self.offer.transfer,
                offset: self.accepted_at,
            }));
        self.resume_requested = false;
        self.request_resume();
    }

    /// Writing to disk failed: cancel and tell the sender.
    pub fn write_failed(&mut self, why: String) {
        self.cancel_with(CancelReason::StorageFailed(short_text(why)));
    }

    /// The user cancelled.
    pub fn cancel(&mut self) {
        self.cancel_with(CancelReason::User);
    }

    /// Whether the transfer has ended (either way).
    pub fn is_finished(&self) -> bool {
        self.state == ReceiverState::Finished
    }

    /// The next thing to do, if any. Drain until `None` after every call.
    pub fn poll_output(&mut self) -> Option<ReceiverOutput> {
        self.outputs.pop_front()
    }

    fn chunk(&mut self, offset: u64, mut data: Vec<u8>, now: Millis) {
        let size = self.offer.size;
        let len = data.len() as u64;
        let end = match offset.checked_add(len) {
            Some(end) if end <= size => end,
            _ => {
                return self.violation(format!(
                    "chunk of {len} bytes at {offset} beyond the size {size}"
                ));
            }
        };
        if end <= self.received {
            return; // a duplicate (or empty) chunk
        }
        if offset > self.received {
            return self.request_resume();
        }
        // offset <= received < end: keep the new suffix only. The skipped
        // prefix is shorter than the chunk, so it fits in a usize.
        let skip = (self.received - offset) as usize;
        if skip > 0 {
            data.drain(..skip);
        }
        self.resume_requested = false;
        self.hasher.update(&data);
        self.outputs.push_back(ReceiverOutput::Write {
            offset: self.received,
            data,
        });
        self.received = end;
        self.speed.record(now, end);
        if end - self.last_confirmed >= self.config.progress_every || end == size {
            self.last_confirmed = end;
            self.outputs
                .push_back(ReceiverOutput::Send(Frame::FileProgress {
                    transfer: self.offer.transfer,
                    received: end,
                }));
            self.outputs
                .push_back(ReceiverOutput::Progress(self.progress()));
        }
        if self.done_seen && end == size {
            self.verify();
        }
    }

    /// Asks the sender to continue from `received`, once per gap.
    fn request_resume(&mut self) {
        if self.resume_requested {
            return;
        }
        self.resume_requested = true;
        self.outputs
            .push_back(ReceiverOutput::Send(Frame::ResumeFrom {
                transfer: self.offer.transfer,
                offset: self.received,
            }));
    }

    /// Every byte is here: compare hashes and finish.
    fn verify(&mut self) {
        let hash = *self.hasher.finalize().as_bytes();
        if hash == self.offer.hash {
            self.finish(Ok(hash));
            self.outputs
                .push_back(ReceiverOutput::Send(Frame::FileVerified {
                    transfer: self.offer.transfer,
                }));
        } else {
            self.outputs
                .push_back(ReceiverOutput::Send(Frame::FileCancel {
                    transfer: self.offer.transfer,
                    reason: CancelReason::HashMismatch,
                }));
            self.finish(Err(TransferError::HashMismatch));
        }
    }

    fn cancel_with(&mut self, reason: CancelReason) {
        if self.state == ReceiverState::Finished {
            return;
        }
        self.outputs
            .push_back(ReceiverOutput::Send(Frame::FileCancel {
                transfer: self.offer.transfer,
                reason: reason.clone(),
            }));
        self.finish(Err(TransferError::CancelledLocally(reason)));
    }

    fn violation(&mut self, why: String) {
        let why = short_text(why);
        self.outputs
            .push_back(ReceiverOutput::Send(Frame::FileCancel {
                transfer: self.offer.transfer,
                reason: CancelReason::ProtocolViolation(why.clone()),
            }));
        self.finish(Err(TransferError::Protocol(why)));
    }

    fn finish(&mut self, result: Result<[u8; 32], TransferError>) {
        self.state = ReceiverState::Finished;
        self.outputs.push_back(ReceiverOutput::Finished(result));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ID: TransferId = TransferId(0x7e57);

    /// Deterministic, non-repeating test content.
    fn content(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn offer_for(data: &[u8]) -> FileOffer {
        FileOffer {
            transfer: ID,
            name: "dir/file.bin".into(),
            size: data.len() as u64,
            mime: "application/octet-stream".into(),
            hash: *blake3::hash(data).as_bytes(),
        }
    }

    fn small_config() -> TransferConfig {
        TransferConfig {
            chunk_size: 10_000,
            high_watermark: 1 << 40,
            low_watermark: 1 << 39,
            max_unconfirmed: 1 << 40,
            progress_every: 1 << 40,
        }
    }

    /// Which way a frame travels.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Dir {
        ToReceiver,
        ToSender,
    }

    /// What the fake network does with a frame.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        Deliver,
        Drop,
        Duplicate,
        /// Deliver it after the next frame in the same direction.
        Hold,
    }

    type FateFn = Box<dyn FnMut(Dir, &Frame) -> Fate>;

    /// A sender and a receiver wired together in memory, str0m style: every
    /// frame goes through encode/decode, a virtual clock advances as chunk
    /// bytes cross a link of `rate` bytes per second, and `fate` may drop,
    /// duplicate or reorder frames. The transport's buffered amount is the
    /// chunk bytes queued towards the receiver, reported to the sender after
    /// every step (unless `fake_buffered` overrides it).
    struct Pair {
        now: Millis,
        t0: Millis,
        rate: u64,
        crossed: u64,
        data: Vec<u8>,
        sender: FileSender,
        receiver: FileReceiver,
        to_receiver: VecDeque<Frame>,
        to_sender: VecDeque<Frame>,
        held: [Option<Frame>; 2],
        reads: VecDeque<(u64, usize)>,
        turn: usize,
        fate: FateFn,
        fake_buffered: Option<u64>,
        /// Frames queued in a blocked direction wait (a stalled path).
        blocked: [bool; 2],
        /// The receiver's `.part` file.
        file: Vec<u8>,
        reads_log: Vec<(u64, usize)>,
        sender_sent: Vec<Frame>,
        receiver_sent: Vec<Frame>,
        sender_progress: Vec<(Millis, Progress)>,
        receiver_progress: Vec<(Millis, Progress)>,
        sender_result: Option<Result<(), TransferError>>,
        receiver_result: Option<Result<[u8; 32], TransferError>>,
        /// Receiver outputs in order, `Write` data left out.
        receiver_log: Vec<ReceiverOutput>,
        max_in_flight: u64,
    }

    impl Pair {
        fn new(data: Vec<u8>, config: TransferConfig) -> Self {
            let offer = offer_for(&data);
            Self::with_offer(data, offer, config)
        }

        fn with_offer(data: Vec<u8>, offer: FileOffer, config: TransferConfig) -> Self {
            let mut sender = FileSender::new(offer.clone(), config.clone(), 0);
            let first = sender.poll_output();
            assert_eq!(
                first,
                Some(SenderOutput::Send(Frame::FileOffer(offer.clone())))
            );
            let receiver = FileReceiver::new(wire(Frame::FileOffer(offer)).into_offer(), config, 0);
            Self {
                now: 0,
                t0: 0,
                rate: 1_000_000,
                crossed: 0,
                data,
                sender,
                receiver,
                to_receiver: VecDeque::new(),
                to_sender: VecDeque::new(),
                held: [None, None],
                reads: VecDeque::new(),
                turn: 0,
                fate: Box::new(|_, _| Fate::Deliver),
                fake_buffered: None,
                blocked: [false, false],
                file: Vec::new(),
                reads_log: Vec::new(),
                sender_sent: Vec::new(),
                receiver_sent: Vec::new(),
                sender_progress: Vec::new(),
                receiver_progress: Vec::new(),
                sender_result: None,
                receiver_result: None,
                receiver_log: Vec::new(),
                max_in_flight: 0,
            }
        }

        fn with_fate(mut self, fate: impl FnMut(Dir, &Frame) -> Fate + 'static) -> Self {
            self.fate = Box::new(fate);
            self
        }

        fn route(&mut self, dir: Dir, frame: Frame) {
            let frame = wire(frame);
            let queue = match dir {
                Dir::ToReceiver => &mut self.to_receiver,
                Dir::ToSender => &mut self.to_sender,
            };
            match (self.fate)(dir, &frame) {
                Fate::Deliver => queue.push_back(frame),
                Fate::Drop => {}
                Fate::Duplicate => {
                    queue.push_back(frame.clone());
                    queue.push_back(frame);
                }
                Fate::Hold => {
                    if let Some(old) = self.held[dir as usize].replace(frame) {
                        queue.push_back(old);
                    }
                }
            }
        }

        fn drain(&mut self) {
            while let Some(out) = self.sender.poll_output() {
                match out {
                    SenderOutput::Send(frame) => {
                        if let Frame::Chunk { offset, data, .. } = &frame {
                            let end = offset + data.len() as u64;
                            let in_flight = end.saturating_sub(self.sender.confirmed());
                            self.max_in_flight = self.max_in_flight.max(in_flight);
                        }
                        self.sender_sent.push(frame.clone());
                        self.route(Dir::ToReceiver, frame);
                    }
                    SenderOutput::Read { offset, len } => {
                        self.reads_log.push((offset, len));
                        self.reads.push_back((offset, len));
                    }
                    SenderOutput::Progress(p) => self.sender_progress.push((self.now, p)),
                    SenderOutput::Finished(r) => {
                        assert!(self.sender_result.is_none(), "sender finished twice");
                        self.sender_result = Some(r);
                    }
                }
            }
            while let Some(out) = self.receiver.poll_output() {
                match out {
                    ReceiverOutput::Send(frame) => {
                        self.receiver_log.push(ReceiverOutput::Send(frame.clone()));
                        self.receiver_sent.push(frame.clone());
                        self.route(Dir::ToSender, frame);
                    }
                    ReceiverOutput::Write { offset, data } => {
                        let end = offset as usize + data.len();
                        if self.file.len() < end {
                            self.file.resize(end, 0);
                        }
                        self.file[offset as usize..end].copy_from_slice(&data);
                        self.receiver_log.push(ReceiverOutput::Write {
                            offset,
                            data: Vec::new(),
                        });
                    }
                    ReceiverOutput::Progress(p) => {
                        self.receiver_progress.push((self.now, p));
                        self.receiver_log.push(ReceiverOutput::Progress(p));
                    }
                    ReceiverOutput::Finished(r) => {
                        assert!(self.receiver_result.is_none(), "receiver finished twice");
                        self.receiver_log.push(ReceiverOutput::Finished(r.clone()));
                        self.receiver_result = Some(r);
                    }
                }
            }
        }

        fn buffered(&self) -> u64 {
            self.fake_buffered.unwrap_or_else(|| {
                self.to_receiver
                    .iter()
                    .chain(self.held[Dir::ToReceiver as usize].iter())
                    .map(|f| match f {
                        Frame::Chunk { data, .. } => data.len() as u64,
                        _ => 0,
                    })
                    .sum()
            })
        }

        fn deliver(&mut self, dir: Dir) -> bool {
            if self.blocked[dir as usize] {
                return false;
            }
            let queue = match dir {
                Dir::ToReceiver => &mut self.to_receiver,
                Dir::ToSender => &mut self.to_sender,
            };
            let frame = match queue.pop_front() {
                Some(f) => f,
                None => match self.held[dir as usize].take() {
                    Some(f) => f,
                    None => return false,
                },
            };
            // A held frame goes right after the one that overtook it.
            if let Some(held) = self.held[dir as usize].take() {
                queue.push_front(held);
            }
            match dir {
                Dir::ToReceiver => {
                    if let Frame::Chunk { data, .. } = &frame {
                        self.crossed += data.len() as u64;
                        self.now = self.t0 + self.crossed * 1000 / self.rate;
                    }
                    self.receiver.handle_frame(frame, self.now);
                }
                Dir::ToSender => self.sender.handle_frame(frame, self.now),
            }
            true
        }

        fn answer_read(&mut self) -> bool {
            let Some((offset, len)) = self.reads.pop_front() else {
                return false;
            };
            let start = offset as usize;
            let bytes = self.data[start..start + len].to_vec();
            self.sender.chunk_read(offset, bytes, self.now);
            true
        }

        /// One unit of work, taking turns between reading, the path to the
        /// receiver and the path back. `false` once nothing is left to do.
        fn step(&mut self) -> bool {
            self.drain();
            let buffered = self.buffered();
            self.sender.buffered_amount(buffered);
            self.drain();
            for i in 0..3 {
                let did = match (self.turn + i) % 3 {
                    0 => self.answer_read(),
                    1 => self.deliver(Dir::ToReceiver),
                    _ => self.deliver(Dir::ToSender),
                };
                if did {
                    self.turn = (self.turn + i + 1) % 3;
                    self.drain();
                    return true;
                }
            }
            false
        }

        fn run(&mut self) {
            self.run_until(|_| false);
        }

        /// Steps until `stop` holds or nothing is left to do.
        fn run_until(&mut self, mut stop: impl FnMut(&Self) -> bool) {
            for _ in 0..10_000_000 {
                if stop(self) || !self.step() {
                    return;
                }
            }
            panic!("the transfer does not settle");
        }

        fn accept(&mut self) {
            self.receiver.accept(self.now);
            self.drain();
        }
    }

    /// Sends `frame` through the real encoding, as the transport would.
    fn wire(frame: Frame) -> Frame {
        Frame::decode(&frame.encode()).unwrap()
    }

    trait IntoOffer {
        fn into_offer(self) -> FileOffer;
    }
    impl IntoOffer for Frame {
        fn into_offer(self) -> FileOffer {
            match self {
                Frame::FileOffer(o) => o,
                other => panic!("not an offer: {other:?}"),
            }
        }
    }

    fn sender_outputs(s: &mut FileSender) -> Vec<SenderOutput> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn receiver_outputs(r: &mut FileReceiver) -> Vec<ReceiverOutput> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn is_protocol_cancel(frame: &Frame) -> bool {
        matches!(
            frame,
            Frame::FileCancel {
                reason: CancelReason::ProtocolViolation(_),
                ..
            }
        )
    }

    fn assert_sender_violation(out: &[SenderOutput]) {
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            matches!(&out[0], SenderOutput::Send(f) if is_protocol_cancel(f)),
            "{out:?}"
        );
        assert!(
            matches!(
                out[1],
                SenderOutput::Finished(Err(TransferError::Protocol(_)))
            ),
            "{out:?}"
        );
    }

    fn assert_receiver_violation(out: &[ReceiverOutput]) {
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            matches!(&out[0], ReceiverOutput::Send(f) if is_protocol_cancel(f)),
            "{out:?}"
        );
        assert!(
            matches!(
                out[1],
                ReceiverOutput::Finished(Err(TransferError::Protocol(_)))
            ),
            "{out:?}"
        );
    }

    /// A sender whose offer of `size` bytes was accepted at 0; outputs drained.
    fn accepted_sender(size: usize, config: TransferConfig) -> FileSender {
        let data = content(size);
        let mut s = FileSender::new(offer_for(&data), config, 0);
        s.handle_frame(
            Frame::FileAccept {
                transfer: ID,
                offset: 0,
            },
            0,
        );
        sender_outputs(&mut s);
        s
    }

    /// A receiver for `size` bytes that accepted; outputs drained.
    fn accepted_receiver(size: usize, config: TransferConfig) -> FileReceiver {
        let data = content(size);
        let mut r = FileReceiver::new(offer_for(&data), config, 0);
        r.accept(0);
        receiver_outputs(&mut r);
        r
    }

    /// Answers reads (one at a time) until the sender stops asking;
    /// returns the chunk bytes sent.
    fn answer_reads(s: &mut FileSender) -> u64 {
        let mut sent = 0;
        let mut pending: VecDeque<SenderOutput> = sender_outputs(s).into();
        if let Some((offset, len)) = s.outstanding {
            // Its `Read` output was drained already.
            if !pending.contains(&SenderOutput::Read { offset, len }) {
                pending.push_front(SenderOutput::Read { offset, len });
            }
        }
        while let Some(out) = pending.pop_front() {
            if let SenderOutput::Read { offset, len } = out {
                s.chunk_read(offset, vec![0; len], 0);
                sent += len as u64;
                pending.extend(sender_outputs(s));
            }
        }
        sent
    }

    fn count(frames: &[Frame], pred: impl Fn(&Frame) -> bool) -> usize {
        frames.iter().filter(|f| pred(f)).count()
    }

    #[test]
    fn default_config_uses_the_largest_chunk_and_sane_watermarks() {
        let c = TransferConfig::default();
        assert_eq!(c.chunk_size, DEFAULT_CHUNK_SIZE);
        assert_eq!(DEFAULT_CHUNK_SIZE, MAX_CHUNK_BYTES);
        assert!(c.low_watermark < c.high_watermark);
        assert!(c.progress_every < c.max_unconfirmed);
        assert_eq!((c.high_watermark, c.low_watermark), (1 << 20, 256 << 10));
        assert_eq!((c.max_unconfirmed, c.progress_every), (16 << 20, 1 << 20));
    }

    #[test]
    fn chunk_size_is_clamped_into_the_protocol_range() {
        let big = TransferConfig {
            chunk_size: 1 << 30,
            ..TransferConfig::default()
        };
        let s = FileSender::new(offer_for(&[]), big, 0);
        assert_eq!(s.config().chunk_size, MAX_CHUNK_BYTES);
        let zero = TransferConfig {
            chunk_size: 0,
            max_unconfirmed: 0,
            ..TransferConfig::default()
        };
        let mut s = accepted_sender(5, zero);
        assert_eq!(s.config().chunk_size, 1);
        // Still makes progress one byte at a time.
        s.handle_frame(
            Frame::FileProgress {
                transfer: ID,
                received: 0,
            },
            0,
        );
        assert_eq!(answer_reads(&mut s), 1);
    }

    #[test]
    fn full_transfer_of_a_megabyte_and_an_odd_remainder_verifies() {
        let data = content(1_000_000 + 12_345);
        let mut pair = Pair::new(data.clone(), TransferConfig::default());
        pair.accept();
        pair.run();
        let hash = *blake3::hash(&data).as_bytes();
        assert_eq!(pair.receiver_result, Some(Ok(hash)));
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data, "written bytes differ from the source");
        assert!(pair.sender.is_finished() && pair.receiver.is_finished());
        // Every byte read exactly once, in order, in full chunks but the last.
        let expected_reads: Vec<(u64, usize)> = (0..data.len())
            .step_by(DEFAULT_CHUNK_SIZE)
            .map(|o| (o as u64, DEFAULT_CHUNK_SIZE.min(data.len() - o)))
            .collect();
        assert_eq!(pair.reads_log, expected_reads);
        // The driver finalises the file before FileVerified goes out.
        let n = pair.receiver_log.len();
        assert_eq!(pair.receiver_log[n - 2], ReceiverOutput::Finished(Ok(hash)));
        assert_eq!(
            pair.receiver_log[n - 1],
            ReceiverOutput::Send(Frame::FileVerified { transfer: ID })
        );
        // Progress ends at 100% on both sides.
        let last = pair.sender_progress.last().unwrap().1;
        assert_eq!(
            (last.done, last.total, last.eta_ms),
            (data.len() as u64, data.len() as u64, Some(0))
        );
        assert_eq!(
            pair.receiver_progress.last().unwrap().1.done,
            data.len() as u64
        );
        assert_eq!(
            count(&pair.sender_sent, |f| matches!(f, Frame::FileDone { .. })),
            1,
            "FileDone once: {:?}",
            pair.sender_sent
                .iter()
                .filter(|f| !matches!(f, Frame::Chunk { .. }))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            count(&pair.receiver_sent, |f| matches!(
                f,
                Frame::ResumeFrom { .. }
            )),
            0
        );
    }

    #[test]
    fn zero_byte_file_verifies_the_empty_hash() {
        let mut pair = Pair::new(Vec::new(), TransferConfig::default());
        pair.accept();
        pair.run();
        let empty = *blake3::hash(&[]).as_bytes();
        assert_eq!(pair.receiver_result, Some(Ok(empty)));
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.reads_log.is_empty());
        assert_eq!(pair.sender_sent, [Frame::FileDone { transfer: ID }]);
        assert_eq!(
            pair.receiver_sent,
            [
                Frame::FileAccept {
                    transfer: ID,
                    offset: 0
                },
                Frame::FileVerified { transfer: ID }
            ]
        );
    }

    #[test]
    fn wrong_offered_hash_is_a_mismatch_on_both_sides() {
        let data = content(100_000);
        let mut offer = offer_for(&data);
        offer.hash[0] ^= 1;
        let mut pair = Pair::with_offer(data, offer, small_config());
        pair.accept();
        pair.run();
        assert_eq!(pair.receiver_result, Some(Err(TransferError::HashMismatch)));
        assert_eq!(
            pair.sender_result,
            Some(Err(TransferError::CancelledByPeer(
                CancelReason::HashMismatch
            )))
        );
        assert_eq!(
            pair.receiver_sent.last(),
            Some(&Frame::FileCancel {
                transfer: ID,
                reason: CancelReason::HashMismatch
            })
        );
    }

    #[test]
    fn sender_cancels_mid_transfer() {
        let mut pair = Pair::new(content(500_000), small_config());
        pair.accept();
        pair.run_until(|p| p.receiver.received() >= 100_000);
        pair.sender.cancel();
        pair.drain();
        assert_eq!(
            pair.sender_result,
            Some(Err(TransferError::CancelledLocally(CancelReason::User)))
        );
        let sent_before = pair.sender_sent.len();
        pair.run();
        assert_eq!(
            pair.receiver_result,
            Some(Err(TransferError::CancelledByPeer(CancelReason::User)))
        );
        assert_eq!(
            pair.sender_sent[sent_before - 1],
            Frame::FileCancel {
                transfer: ID,
                reason: CancelReason::User
            }
        );
        assert_eq!(
            pair.sender_sent.len(),
            sent_before,
            "nothing sent after cancelling"
        );
        assert!(pair.receiver.received() < 500_000);
    }

    #[test]
    fn receiver_cancels_mid_transfer() {
        let mut pair = Pair::new(content(500_000), small_config());
        pair.accept();
        pair.run_until(|p| p.receiver.received() >= 100_000);
        pair.receiver.cancel();
        pair.drain();
        assert_eq!(
            pair.receiver_result,
            Some(Err(TransferError::CancelledLocally(CancelReason::User)))
        );
        let written = pair.file.len();
        pair.run();
        assert_eq!(
            pair.sender_result,
            Some(Err(TransferError::CancelledByPeer(CancelReason::User)))
        );
        assert_eq!(pair.file.len(), written, "nothing written after cancelling");
        assert!(pair.reads.is_empty());
        // No frame comes back from the side that was cancelled on.
        assert!(
            !pair
                .sender_sent
                .iter()
                .any(|f| matches!(f, Frame::FileCancel { .. }))
        );
    }

    #[test]
    fn receiver_declines() {
        let mut pair = Pair::new(content(10), small_config());
        pair.receiver.decline("not now".into());
        pair.run();
        assert_eq!(
            pair.receiver_result,
            Some(Err(TransferError::Declined("not now".into())))
        );
        assert_eq!(
            pair.sender_result,
            Some(Err(TransferError::Declined("not now".into())))
        );
        assert!(pair.reads_log.is_empty());
        assert!(pair.sender_sent.is_empty());
    }

    #[test]
    fn decline_after_accept_is_a_cancel() {
        let mut r = accepted_receiver(10, small_config());
        r.decline("changed my mind".into());
        let out = receiver_outputs(&mut r);
        assert_eq!(
            out,
            [
                ReceiverOutput::Send(Frame::FileCancel {
                    transfer: ID,
                    reason: CancelReason::User
                }),
                ReceiverOutput::Finished(Err(TransferError::CancelledLocally(CancelReason::User))),
            ]
        );
    }

    #[test]
    fn dropped_chunk_triggers_resume_from_and_the_file_still_completes() {
        let data = content(250_000);
        let mut dropped = false;
        let mut pair = Pair::new(data.clone(), small_config()).with_fate(move |_, f| match f {
            Frame::Chunk { offset: 30_000, .. } if !dropped => {
                dropped = true;
                Fate::Drop
            }
            _ => Fate::Deliver,
        });
        pair.accept();
        pair.run();
        assert_eq!(
            pair.receiver_result,
            Some(Ok(*blake3::hash(&data).as_bytes()))
        );
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data);
        let resumes: Vec<&Frame> = pair
            .receiver_sent
            .iter()
            .filter(|f| matches!(f, Frame::ResumeFrom { .. }))
            .collect();
        assert_eq!(
            resumes,
            [&Frame::ResumeFrom {
                transfer: ID,
                offset: 30_000
            }],
            "asked once per gap"
        );
        assert!(
            pair.reads_log.iter().filter(|r| r.0 == 30_000).count() >= 2,
            "re-read from the gap"
        );
    }

    #[test]
    fn dropped_last_chunk_is_asked_for_again_after_file_done() {
        let data = content(95_000);
        let mut dropped = false;
        let mut pair = Pair::new(data.clone(), small_config()).with_fate(move |_, f| match f {
            Frame::Chunk { offset: 90_000, .. } if !dropped => {
                dropped = true;
                Fate::Drop
            }
            _ => Fate::Deliver,
        });
        pair.accept();
        pair.run();
        assert_eq!(
            pair.receiver_result,
            Some(Ok(*blake3::hash(&data).as_bytes()))
        );
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data);
        assert!(pair.receiver_sent.contains(&Frame::ResumeFrom {
            transfer: ID,
            offset: 90_000
        }));
    }

    #[test]
    fn duplicated_frames_change_nothing() {
        let data = content(123_457);
        let mut pair = Pair::new(data.clone(), small_config()).with_fate(|_, _| Fate::Duplicate);
        pair.accept();
        pair.run();
        assert_eq!(
            pair.receiver_result,
            Some(Ok(*blake3::hash(&data).as_bytes()))
        );
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data);
        assert_eq!(
            count(&pair.receiver_sent, |f| matches!(
                f,
                Frame::ResumeFrom { .. }
            )),
            0
        );
    }

    #[test]
    fn reordered_chunks_are_recovered() {
        let data = content(200_000);
        let mut n = 0;
        let mut pair = Pair::new(data.clone(), small_config()).with_fate(move |dir, f| {
            if dir == Dir::ToReceiver && matches!(f, Frame::Chunk { .. }) {
                n += 1;
                if n % 7 == 3 {
                    return Fate::Hold;
                }
            }
            Fate::Deliver
        });
        pair.accept();
        pair.run();
        assert_eq!(
            pair.receiver_result,
            Some(Ok(*blake3::hash(&data).as_bytes()))
        );
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data);
    }

    #[test]
    fn overlapping_chunk_contributes_only_its_new_suffix() {
        let data = content(30);
        let mut r = FileReceiver::new(offer_for(&data), small_config(), 0);
        r.accept(0);
        receiver_outputs(&mut r);
        r.handle_frame(
            Frame::Chunk {
                transfer: ID,
                offset: 0,
                data: data[..10].to_vec(),
            },
            1,
        );
        r.handle_frame(
            Frame::Chunk {
                transfer: ID,
                offset: 5,
                data: data[5..20].to_vec(),
            },
            2,
        );
        r.handle_frame(
            Frame::Chunk {
                transfer: ID,
                offset: 0,
                data: data[..20].to_vec(),
            },
            3,
        );
        r.handle_frame(
            Frame::Chunk {
                transfer: ID,
                offset: 20,
                data: data[20..].to_vec(),
            },
            4,
        );
        r.handle_frame(Frame::FileDone { transfer: ID }, 5);
        let writes: Vec<(u64, Vec<u8>)> = receiver_outputs(&mut r)
            .into_iter()
            .filter_map(|o| match o {
                ReceiverOutput::Write { offset, data } => Some((offset, data)),
                _ => None,
            })
            .collect();
        assert_eq!(
            writes,
            [
                (0, data[..10].to_vec()),
                (10, data[10..20].to_vec()),
                (20, data[20..].to_vec())
            ]
        );
        assert!(r.is_finished());
    }

    #[test]
    fn resume_with_accept_from_a_prefix_hasher_completes_and_sends_only_the_rest() {
        let data = content(300_000);
        let prefix_len = 100_000;
        let mut pair = Pair::new(data.clone(), small_config());
        // The driver found 100 000 good bytes on disk and hashed them.
        pair.file = data[..prefix_len].to_vec();
        let mut prefix = blake3::Hasher::new();
        prefix.update(&data[..prefix_len]);
        pair.receiver.accept_from(prefix_len as u64, prefix, 0);
        pair.run();
        assert_eq!(
            pair.receiver_result,
            Some(Ok(*blake3::hash(&data).as_bytes()))
        );
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data);
        assert_eq!(pair.reads_log.first(), Some(&(prefix_len as u64, 10_000)));
        assert!(pair.reads_log.iter().all(|&(o, _)| o >= prefix_len as u64));
        let chunk_bytes: usize = pair
            .sender_sent
            .iter()
            .map(|f| match f {
                Frame::Chunk { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(chunk_bytes, data.len() - prefix_len);
        assert_eq!(
            pair.sender_progress.first().map(|p| p.1.done),
            Some(prefix_len as u64)
        );
    }

    #[test]
    fn accept_from_beyond_the_size_cancels_locally() {
        let mut r = FileReceiver::new(offer_for(&content(10)), small_config(), 0);
        r.accept_from(11, blake3::Hasher::new(), 0);
        let out = receiver_outputs(&mut r);
        assert!(matches!(
            &out[..],
            [
                ReceiverOutput::Send(Frame::FileCancel {
                    reason: CancelReason::StorageFailed(_),
                    ..
                }),
                ReceiverOutput::Finished(Err(TransferError::CancelledLocally(
                    CancelReason::StorageFailed(_)
                ))),
            ]
        ));
    }

    #[test]
    fn accept_from_the_full_size_goes_straight_to_verification() {
        let data = content(50_000);
        let mut pair = Pair::new(data.clone(), small_config());
        pair.file = data.clone();
        let mut prefix = blake3::Hasher::new();
        prefix.update(&data);
        pair.receiver.accept_from(data.len() as u64, prefix, 0);
        pair.run();
        assert!(pair.reads_log.is_empty());
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert_eq!(
            pair.receiver_result,
            Some(Ok(*blake3::hash(&data).as_bytes()))
        );
    }

    #[test]
    fn sender_stops_reading_at_the_high_watermark_and_resumes_at_the_low() {
        let config = TransferConfig {
            chunk_size: 10_000,
            high_watermark: 50_000,
            low_watermark: 20_000,
            max_unconfirmed: 1 << 40,
            progress_every: 1 << 20,
        };
        let mut s = accepted_sender(1_000_000, config);
        // No reports: the estimate grows by what was sent.
        assert_eq!(answer_reads(&mut s), 50_000);
        s.buffered_amount(45_000);
        assert_eq!(answer_reads(&mut s), 0, "still above the low watermark");
        s.buffered_amount(20_001);
        assert_eq!(answer_reads(&mut s), 0);
        s.buffered_amount(20_000);
        // 20 000 reported + 30 000 sent since reaches the high watermark again.
        assert_eq!(answer_reads(&mut s), 30_000);
        s.buffered_amount(0);
        assert_eq!(answer_reads(&mut s), 50_000);
        // A report at the high watermark pauses too: the read already
        // issued completes, no further one is issued.
        s.buffered_amount(10_000);
        s.buffered_amount(60_000);
        assert_eq!(answer_reads(&mut s), 10_000);
    }

    #[test]
    fn flow_control_holds_on_a_slow_transport_end_to_end() {
        let data = content(2_000_000);
        let config = TransferConfig::default();
        let mut pair = Pair::new(data.clone(), config.clone());
        pair.accept();
        let mut max_buffered = 0;
        pair.run_until(|p| {
            max_buffered = max_buffered.max(p.buffered());
            false
        });
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data);
        assert!(
            max_buffered < config.high_watermark + config.chunk_size as u64,
            "buffered {max_buffered} bytes"
        );
    }

    #[test]
    fn fake_buffered_amount_stalls_the_sender_until_it_drains() {
        let data = content(2_000_000);
        let mut pair = Pair::new(data.clone(), TransferConfig::default());
        pair.fake_buffered = Some(2 << 20); // the transport never drains
        pair.accept();
        pair.run();
        assert!(
            pair.reads_log.is_empty(),
            "no reads while the transport is full"
        );
        assert!(pair.sender_result.is_none());
        pair.fake_buffered = Some(0);
        pair.run();
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data);
    }

    #[test]
    fn unconfirmed_window_caps_bytes_in_flight() {
        let config = TransferConfig {
            chunk_size: 10_000,
            high_watermark: 1 << 40,
            low_watermark: 1 << 39,
            max_unconfirmed: 35_000,
            progress_every: 1 << 20,
        };
        let mut s = accepted_sender(1_000_000, config);
        assert_eq!(
            answer_reads(&mut s),
            30_000,
            "a 4th chunk would exceed the window"
        );
        s.handle_frame(
            Frame::FileProgress {
                transfer: ID,
                received: 10_000,
            },
            100,
        );
        assert_eq!(answer_reads(&mut s), 10_000);
        s.handle_frame(
            Frame::FileProgress {
                transfer: ID,
                received: 40_000,
            },
            200,
        );
        assert_eq!(answer_reads(&mut s), 30_000);
    }

    #[test]
    fn unconfirmed_window_holds_when_confirmations_stall() {
        let data = content(1_000_000);
        let config = TransferConfig {
            chunk_size: 16_384,
            high_watermark: 1 << 40,
            low_watermark: 1 << 39,
            max_unconfirmed: 200_000,
            progress_every: 50_000,
        };
        let mut pair = Pair::new(data.clone(), config);
        pair.accept();
        pair.run_until(|p| p.sender.state() == SenderState::Sending);
        // The path back is stalled: the receiver's confirmations queue up.
        pair.blocked[Dir::ToSender as usize] = true;
        pair.run();
        assert!(pair.sender_result.is_none());
        assert!(
            pair.max_in_flight <= 200_000,
            "{} bytes in flight",
            pair.max_in_flight
        );
        assert_eq!(
            pair.receiver.received(),
            12 * 16_384,
            "the window is filled, no more"
        );
        pair.blocked[Dir::ToSender as usize] = false;
        pair.run();
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data);
        assert!(
            pair.max_in_flight <= 200_000,
            "{} bytes in flight",
            pair.max_in_flight
        );
    }

    #[test]
    fn progress_reports_speed_and_eta_on_a_virtual_clock() {
        let data = content(4_000_000);
        let config = TransferConfig {
            progress_every: 250_000,
            ..TransferConfig::default()
        };
        let mut pair = Pair::new(data, config);
        pair.rate = 1_000_000; // 1 MB/s
        pair.accept();
        pair.run();
        assert_eq!(pair.sender_result, Some(Ok(())));
        // Once a couple of seconds have passed, speed is ~1 MB/s and the ETA
        // matches what is left.
        let measured: Vec<&(Millis, Progress)> = pair
            .sender_progress
            .iter()
            .filter(|(t, _)| *t >= 2_000)
            .collect();
        assert!(measured.len() >= 4, "{:?}", pair.sender_progress);
        for (t, p) in measured {
            assert!((p.bytes_per_sec - 1e6).abs() < 0.1e6, "at {t} ms: {p:?}");
            let expected_eta = (p.total - p.done) as f64 / 1e6 * 1000.0;
            let eta = p.eta_ms.unwrap() as f64;
            assert!(
                (eta - expected_eta).abs() <= expected_eta * 0.1 + 1.0,
                "at {t} ms: {p:?}"
            );
        }
        for (t, p) in pair.receiver_progress.iter().filter(|(t, _)| *t >= 1_000) {
            assert!(
                (p.bytes_per_sec - 1e6).abs() < 0.1e6,
                "receiver at {t} ms: {p:?}"
            );
        }
        // The total takes ~4 s of virtual time.
        assert!((3_900..=4_100).contains(&pair.now), "{}", pair.now);
    }

    #[test]
    fn speed_meter_follows_a_change_of_speed_and_knows_when_it_cannot_tell() {
        let mut m = SpeedMeter::default();
        m.reset(0, 0);
        assert_eq!(m.progress(0, 1000).eta_ms, None);
        assert_eq!(m.progress(0, 1000).bytes_per_sec, 0.0);
        for s in 1..=10u64 {
            m.record(s * 1000, s * 1_000_000); // 1 MB/s
        }
        assert!((m.bytes_per_sec() - 1e6).abs() < 1.0);
        for s in 11..=20u64 {
            m.record(s * 1000, 10_000_000 + (s - 10) * 2_000_000); // 2 MB/s
        }
        assert!(
            (m.bytes_per_sec() - 2e6).abs() < 1.0,
            "{}",
            m.bytes_per_sec()
        );
        let p = m.progress(30_000_000, 40_000_000);
        assert_eq!(p.eta_ms, Some(5_000));
        assert!(
            m.samples.len() <= 5,
            "old samples are dropped: {}",
            m.samples.len()
        );
        // A stall drags the speed down.
        m.record(30_000, 30_000_000);
        assert!(m.bytes_per_sec() < 1e6);
        // A clock going backwards is tolerated.
        m.record(1, 30_000_001);
        assert!(m.bytes_per_sec().is_finite());
        assert_eq!(
            Progress {
                done: 5,
                total: 10,
                bytes_per_sec: 0.0,
                eta_ms: None
            }
            .fraction(),
            0.5
        );
        assert_eq!(
            Progress {
                done: 0,
                total: 0,
                bytes_per_sec: 0.0,
                eta_ms: None
            }
            .fraction(),
            1.0
        );
    }

    #[test]
    fn many_confirmations_keep_the_speed_samples_bounded() {
        let mut m = SpeedMeter::default();
        m.reset(0, 0);
        for i in 0..10_000u64 {
            m.record(i / 100, i * 10);
        }
        assert!(m.samples.len() <= MAX_SPEED_SAMPLES);
    }

    #[test]
    fn read_failure_cancels_both_sides() {
        let mut pair = Pair::new(content(100_000), small_config());
        pair.accept();
        pair.run_until(|p| p.reads_log.len() >= 3);
        pair.sender.read_failed("disk unplugged".into());
        pair.run();
        let reason = CancelReason::ReadFailed("disk unplugged".into());
        assert_eq!(
            pair.sender_result,
            Some(Err(TransferError::CancelledLocally(reason.clone())))
        );
        assert_eq!(
            pair.receiver_result,
            Some(Err(TransferError::CancelledByPeer(reason)))
        );
    }

    #[test]
    fn short_read_cancels_as_a_read_failure() {
        let mut s = accepted_sender(100_000, small_config());
        s.chunk_read(0, vec![0; 9_999], 0);
        let out = sender_outputs(&mut s);
        assert!(matches!(
            &out[..],
            [
                SenderOutput::Send(Frame::FileCancel {
                    reason: CancelReason::ReadFailed(_),
                    ..
                }),
                SenderOutput::Finished(Err(TransferError::CancelledLocally(
                    CancelReason::ReadFailed(_)
                ))),
            ]
        ));
    }

    #[test]
    fn bytes_for_a_read_not_outstanding_are_ignored() {
        let mut s = accepted_sender(100_000, small_config());
        s.chunk_read(50_000, vec![0; 10_000], 0);
        assert!(sender_outputs(&mut s).is_empty());
        // A ResumeFrom makes the read under way (at 0) useless, but the
        // next read waits for its bytes: one read at a time.
        s.handle_frame(
            Frame::ResumeFrom {
                transfer: ID,
                offset: 20_000,
            },
            1,
        );
        assert!(sender_outputs(&mut s).is_empty());
        s.chunk_read(0, vec![0; 10_000], 1);
        assert_eq!(
            sender_outputs(&mut s),
            [SenderOutput::Read {
                offset: 20_000,
                len: 10_000
            }]
        );
        // A ResumeFrom at the offset being read keeps that read.
        s.handle_frame(
            Frame::ResumeFrom {
                transfer: ID,
                offset: 20_000,
            },
            1,
        );
        assert!(sender_outputs(&mut s).is_empty());
        s.chunk_read(20_000, vec![0; 10_000], 1);
        let out = sender_outputs(&mut s);
        assert!(matches!(
            &out[0],
            SenderOutput::Send(Frame::Chunk { offset: 20_000, .. })
        ));
        assert_eq!(
            out[1],
            SenderOutput::Read {
                offset: 30_000,
                len: 10_000
            }
        );
    }

    #[test]
    fn resume_after_file_done_sends_the_tail_again() {
        let mut s = accepted_sender(20_000, small_config());
        assert_eq!(answer_reads(&mut s), 20_000);
        assert_eq!(s.state(), SenderState::AwaitingVerification);
        s.handle_frame(
            Frame::ResumeFrom {
                transfer: ID,
                offset: 15_000,
            },
            1,
        );
        assert_eq!(s.state(), SenderState::Sending);
        assert_eq!(
            sender_outputs(&mut s),
            [SenderOutput::Read {
                offset: 15_000,
                len: 5_000
            }]
        );
        s.chunk_read(15_000, vec![0; 5_000], 1);
        let out = sender_outputs(&mut s);
        assert!(matches!(
            &out[..],
            [
                SenderOutput::Send(Frame::Chunk { .. }),
                SenderOutput::Send(Frame::FileDone { .. })
            ]
        ));
        s.handle_frame(Frame::FileVerified { transfer: ID }, 2);
        assert!(s.is_finished());
    }

    #[test]
    fn write_failure_reason_is_cut_at_a_char_boundary() {
        let mut r = accepted_receiver(10, small_config());
        r.write_failed("é".repeat(200)); // 400 bytes
        let out = receiver_outputs(&mut r);
        let ReceiverOutput::Send(Frame::FileCancel {
            reason: CancelReason::StorageFailed(why),
            ..
        }) = &out[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(why.len(), MAX_SHORT_TEXT_BYTES);
        assert_eq!(why.chars().count(), MAX_SHORT_TEXT_BYTES / 2);
        assert_eq!(
            out[1],
            ReceiverOutput::Finished(Err(TransferError::CancelledLocally(
                CancelReason::StorageFailed(why.clone())
            )))
        );
        // The frame is valid on the wire.
        assert!(
            Frame::decode(
                &Frame::FileCancel {
                    transfer: ID,
                    reason: CancelReason::StorageFailed(why.clone())
                }
                .encode()
            )
            .is_ok()
        );
        assert_eq!(short_text("abc".into()), "abc");
    }

    #[test]
    fn peer_cancel_ends_without_a_reply() {
        let mut s = accepted_sender(100, small_config());
        s.handle_frame(
            Frame::FileCancel {
                transfer: ID,
                reason: CancelReason::User,
            },
            0,
        );
        assert_eq!(
            sender_outputs(&mut s),
            [SenderOutput::Finished(Err(TransferError::CancelledByPeer(
                CancelReason::User
            )))]
        );
        let mut r = FileReceiver::new(offer_for(&content(100)), small_config(), 0);
        r.handle_frame(
            Frame::FileCancel {
                transfer: ID,
                reason: CancelReason::User,
            },
            0,
        );
        assert_eq!(
            receiver_outputs(&mut r),
            [ReceiverOutput::Finished(Err(
                TransferError::CancelledByPeer(CancelReason::User)
            ))]
        );
    }

    #[test]
    fn stale_and_repeated_progress_is_ignored() {
        let mut s = accepted_sender(100_000, small_config());
        s.handle_frame(
            Frame::FileProgress {
                transfer: ID,
                received: 50_000,
            },
            10,
        );
        assert_eq!(s.confirmed(), 50_000);
        sender_outputs(&mut s);
        s.handle_frame(
            Frame::FileProgress {
                transfer: ID,
                received: 40_000,
            },
            20,
        );
        s.handle_frame(
            Frame::FileProgress {
                transfer: ID,
                received: 50_000,
            },
            30,
        );
        assert!(sender_outputs(&mut s).is_empty());
        assert_eq!(s.confirmed(), 50_000);
    }

    #[test]
    fn chunk_beyond_the_size_is_a_protocol_violation() {
        let mut r = accepted_receiver(100, small_config());
        r.handle_frame(
            Frame::Chunk {
                transfer: ID,
                offset: 90,
                data: vec![0; 11],
            },
            0,
        );
        assert_receiver_violation(&receiver_outputs(&mut r));
        let mut r = accepted_receiver(100, small_config());
        r.handle_frame(
            Frame::Chunk {
                transfer: ID,
                offset: u64::MAX,
                data: vec![0; 2],
            },
            0,
        );
        assert_receiver_violation(&receiver_outputs(&mut r));
        let mut r = accepted_receiver(100_000, small_config());
        r.handle_frame(
            Frame::Chunk {
                transfer: ID,
                offset: 0,
                data: vec![0; MAX_CHUNK_BYTES + 1],
            },
            0,
        );
        assert_receiver_violation(&receiver_outputs(&mut r));
    }

    #[test]
    fn chunk_or_done_before_accept_is_a_protocol_violation() {
        let mut r = FileReceiver::new(offer_for(&content(100)), small_config(), 0);
        r.handle_frame(
            Frame::Chunk {
                transfer: ID,
                offset: 0,
                data: vec![0; 10],
            },
            0,
        );
        assert_receiver_violation(&receiver_outputs(&mut r));
        let mut r = FileReceiver::new(offer_for(&content(100)), small_config(), 0);
        r.handle_frame(Frame::FileDone { transfer: ID }, 0);
        assert_receiver_violation(&receiver_outputs(&mut r));
        // Accepting afterwards does nothing.
        r.accept(1);
        assert!(receiver_outputs(&mut r).is_empty());
    }

    #[test]
    fn receiver_frames_sent_to_a_receiver_are_protocol_violations() {
        for frame in [
            Frame::FileAccept {
                transfer: ID,
                offset: 0,
            },
            Frame::FileDecline {
                transfer: ID,
                reason: String::new(),
            },
            Frame::FileProgress {
                transfer: ID,
                received: 1,
            },
            Frame::FileVerified { transfer: ID },
            Frame::ResumeFrom {
                transfer: ID,
                offset: 0,
            },
        ] {
            let mut r = accepted_receiver(100, small_config());
            r.handle_frame(frame, 0);
            assert_receiver_violation(&receiver_outputs(&mut r));
        }
        // A repeated identical offer is answered with where we stand; a
        // different one is a violation.
        let mut r = accepted_receiver(100, small_config());
        r.handle_frame(Frame::FileOffer(offer_for(&content(100))), 0);
        assert_eq!(
            receiver_outputs(&mut r),
            [ReceiverOutput::Send(Frame::FileAccept {
                transfer: ID,
                offset: 0
            })]
        );
        r.handle_frame(Frame::FileOffer(offer_for(&content(99))), 0);
        assert_receiver_violation(&receiver_outputs(&mut r));
    }

    #[test]
    fn progress_beyond_the_size_is_a_protocol_violation() {
        let mut s = accepted_sender(100, small_config());
        s.handle_frame(
            Frame::FileProgress {
                transfer: ID,
                received: 101,
            },
            0,
        );
        assert_sender_violation(&sender_outputs(&mut s));
        assert!(s.is_finished());
    }

    #[test]
    fn verified_before_done_is_a_protocol_violation() {
        let mut s = accepted_sender(100_000, small_config());
        s.handle_frame(Frame::FileVerified { transfer: ID }, 0);
        assert_sender_violation(&sender_outputs(&mut s));
        let mut s = FileSender::new(offer_for(&content(10)), small_config(), 0);
        sender_outputs(&mut s);
        s.handle_frame(Frame::FileVerified { transfer: ID }, 0);
        assert_sender_violation(&sender_outputs(&mut s));
    }

    #[test]
    fn progress_or_resume_overtaking_the_accept_waits_for_it() {
        let mut s = FileSender::new(offer_for(&content(100)), small_config(), 0);
        sender_outputs(&mut s);
        s.handle_frame(
            Frame::FileProgress {
                transfer: ID,
                received: 1,
            },
            0,
        );
        s.handle_frame(
            Frame::ResumeFrom {
                transfer: ID,
                offset: 0,
            },
            0,
        );
        assert!(sender_outputs(&mut s).is_empty());
        assert_eq!(s.state(), SenderState::Offered);
        s.handle_frame(
            Frame::FileAccept {
                transfer: ID,
                offset: 0,
            },
            0,
        );
        assert_eq!(s.state(), SenderState::Sending);
    }

    #[test]
    fn out_of_turn_and_out_of_range_frames_to_the_sender_are_protocol_violations() {
        let fresh = || {
            let mut s = FileSender::new(offer_for(&content(100)), small_config(), 0);
            sender_outputs(&mut s);
            s
        };
        let cases: Vec<(FileSender, Frame)> = vec![
            (
                fresh(),
                Frame::FileAccept {
                    transfer: ID,
                    offset: 101,
                },
            ),
            (
                accepted_sender(100, small_config()),
                Frame::FileAccept {
                    transfer: ID,
                    offset: 105,
                },
            ),
            (
                accepted_sender(100, small_config()),
                Frame::FileDecline {
                    transfer: ID,
                    reason: "x".into(),
                },
            ),
            (
                accepted_sender(100, small_config()),
                Frame::ResumeFrom {
                    transfer: ID,
                    offset: 101,
                },
            ),
            (
                accepted_sender(100, small_config()),
                Frame::Chunk {
                    transfer: ID,
                    offset: 0,
                    data: vec![1],
                },
            ),
            (
                accepted_sender(100, small_config()),
                Frame::FileDone { transfer: ID },
            ),
            (
                accepted_sender(100, small_config()),
                Frame::FileOffer(offer_for(&content(100))),
            ),
            (
                accepted_sender(100, small_config()),
                Frame::FileCancel {
                    transfer: ID,
                    reason: CancelReason::ProtocolViolation("x".repeat(300)),
                },
            ),
        ];
        for (mut s, frame) in cases {
            let desc = format!("{frame:?}");
            s.handle_frame(frame, 0);
            let out = sender_outputs(&mut s);
            assert_sender_violation(&out);
            let _ = desc;
        }
    }

    #[test]
    fn a_repeated_identical_accept_is_harmless() {
        let mut s = accepted_sender(100_000, small_config());
        s.handle_frame(
            Frame::FileAccept {
                transfer: ID,
                offset: 0,
            },
            1,
        );
        assert!(sender_outputs(&mut s).is_empty());
        assert_eq!(s.state(), SenderState::Sending);
    }

    #[test]
    fn frames_for_another_transfer_and_chat_frames_are_ignored() {
        let other = TransferId(ID.0 + 1);
        let foreign = [
            Frame::FileAccept {
                transfer: other,
                offset: 0,
            },
            Frame::FileProgress {
                transfer: other,
                received: u64::MAX,
            },
            Frame::FileVerified { transfer: other },
            Frame::FileCancel {
                transfer: other,
                reason: CancelReason::User,
            },
            Frame::Chunk {
                transfer: other,
                offset: u64::MAX - 1,
                data: vec![0; 2],
            },
            Frame::FileDone { transfer: other },
            Frame::ChatAck {
                id: parlor_protocol::MessageId([0; 16]),
                seq: 1,
            },
        ];
        let mut s = accepted_sender(100, small_config());
        let mut r = accepted_receiver(100, small_config());
        for f in foreign {
            s.handle_frame(f.clone(), 0);
            r.handle_frame(f, 0);
        }
        assert!(sender_outputs(&mut s).is_empty());
        assert!(receiver_outputs(&mut r).is_empty());
        assert!(!s.is_finished() && !r.is_finished());
    }

    impl Pair {
        /// The path dies: every frame in flight either way is lost, and both
        /// ends are told the link was reset (as drivers do when they move to
        /// another path).
        fn lose_path(&mut self) {
            self.drop_in_flight();
            self.sender.link_reset();
            self.receiver.link_reset();
            self.drain();
        }

        /// Every frame in flight either way is lost.
        fn drop_in_flight(&mut self) {
            self.to_receiver.clear();
            self.to_sender.clear();
            self.held = [None, None];
        }

        /// Both ends finished well, the file is `data`, and less than 5% of
        /// it was sent twice.
        fn assert_done_resending_little(&self, data: &[u8]) {
            let hash = *blake3::hash(data).as_bytes();
            assert_eq!(self.receiver_result, Some(Ok(hash)));
            assert_eq!(self.sender_result, Some(Ok(())));
            assert!(self.file == data);
            let resent = self.sender.bytes_sent() - data.len() as u64;
            assert!(
                resent * 20 < data.len() as u64,
                "re-sent {resent} of {} bytes",
                data.len()
            );
        }
    }

    #[test]
    fn a_lost_path_mid_transfer_resumes_from_the_verified_offset() {
        let data = content(40 << 20);
        let mut pair = Pair::new(data.clone(), TransferConfig::default());
        pair.accept();
        pair.run_until(|p| p.receiver.received() >= 20 << 20);
        pair.lose_path();
        pair.run();
        // Only what was in flight (about the send window) went twice.
        pair.assert_done_resending_little(&data);
    }

    #[test]
    fn a_restarted_receiver_resumes_from_its_partial_file() {
        let data = content(40 << 20);
        let mut pair = Pair::new(data.clone(), TransferConfig::default());
        pair.accept();
        pair.run_until(|p| p.receiver.received() >= 20 << 20);
        // The receiver's process dies: in-flight frames and all its state
        // are gone; what it wrote is on disk. It comes back, the sender
        // offers again, and it accepts from what the disk holds.
        pair.drop_in_flight();
        pair.receiver = FileReceiver::new(
            pair.sender.offer().clone(),
            TransferConfig::default(),
            pair.now,
        );
        pair.sender.peer_returned();
        pair.drain();
        assert!(matches!(
            pair.to_receiver.pop_front(),
            Some(Frame::FileOffer(_))
        ));
        let on_disk = pair.file.len() as u64;
        let mut prefix = blake3::Hasher::new();
        prefix.update(&pair.file);
        pair.receiver.accept_from(on_disk, prefix, pair.now);
        pair.drain();
        pair.run();
        pair.assert_done_resending_little(&data);
    }

    #[test]
    fn a_receiver_that_kept_running_answers_the_repeated_offer() {
        let data = content(4 << 20);
        let mut pair = Pair::new(data.clone(), TransferConfig::default());
        pair.accept();
        pair.run_until(|p| p.receiver.received() >= 2 << 20);
        // The sender saw the receiver leave and come back; the receiver
        // itself only lost its connection for a moment.
        pair.drop_in_flight();
        pair.sender.peer_returned();
        pair.drain();
        pair.run();
        assert_eq!(pair.sender_result, Some(Ok(())));
        assert!(pair.file == data);
    }

    #[test]
    fn a_path_lost_before_anything_arrived_still_starts() {
        for lose_after_accept in [false, true] {
            let data = content(300_000);
            let mut pair = Pair::new(data.clone(), small_config());
            if lose_after_accept {
                pair.accept();
            }
            // The offer (or the accept) and everything after it is lost.
            pair.lose_path();
            if !lose_after_accept {
                pair.deliver(Dir::ToReceiver); // the repeated offer
                pair.accept();
            }
            pair.run();
            assert_eq!(pair.sender_result, Some(Ok(())), "{lose_after_accept}");
            assert!(pair.file == data);
        }
    }

    #[test]
    fn everything_after_the_end_is_ignored() {
        let mut s = accepted_sender(100, small_config());
        s.cancel();
        sender_outputs(&mut s);
        s.handle_frame(Frame::FileVerified { transfer: ID }, 0);
        s.handle_frame(
            Frame::FileProgress {
                transfer: ID,
                received: 1_000,
            },
            0,
        );
        s.buffered_amount(0);
        s.chunk_read(0, vec![0; 100], 0);
        s.cancel();
        s.read_failed("x".into());
        assert!(sender_outputs(&mut s).is_empty());
        let mut r = accepted_receiver(100, small_config());
        r.cancel();
        receiver_outputs(&mut r);
        r.handle_frame(
            Frame::Chunk {
                transfer: ID,
                offset: 0,
                data: vec![0; 100],
            },
            0,
        );
        r.handle_frame(Frame::FileDone { transfer: ID }, 0);
        r.cancel();
        r.write_failed("x".into());
        r.decline("x".into());
        r.accept(0);
        assert!(receiver_outputs(&mut r).is_empty());
    }

    #[test]
    fn random_frames_never_panic_and_keep_outputs_bounded() {
        fn check(so: Vec<SenderOutput>, ro: Vec<ReceiverOutput>) {
            assert!(
                so.len() <= 6 && ro.len() <= 6,
                "{} sender and {} receiver outputs",
                so.len(),
                ro.len()
            );
            let reads = so
                .iter()
                .filter(|o| matches!(o, SenderOutput::Read { .. }))
                .count();
            assert!(reads <= 1, "{reads} reads at once");
            let finished = so
                .iter()
                .filter(|o| matches!(o, SenderOutput::Finished(_)))
                .count();
            assert!(finished <= 1);
        }
        let mut x: u64 = 0xdead_beef_cafe_f00d;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let size = rand() % 200_000;
            let data = content(size as usize);
            let mut s = FileSender::new(offer_for(&data), small_config(), 0);
            let mut r = FileReceiver::new(offer_for(&data), small_config(), 0);
            if round % 2 == 0 {
                s.handle_frame(
                    Frame::FileAccept {
                        transfer: ID,
                        offset: rand() % (size + 1),
                    },
                    0,
                );
                r.accept(0);
            }
            for step in 0..50u64 {
                let n = rand();
                let (wild, r1, r2) = (rand(), rand(), rand());
                // Mostly in range, sometimes anything at all.
                let any = |m: u64| if n % 3 == 0 { wild } else { wild % (m + 1) };
                let frame = match n % 11 {
                    0 => Frame::FileAccept {
                        transfer: ID,
                        offset: any(size),
                    },
                    1 => Frame::FileProgress {
                        transfer: ID,
                        received: any(size),
                    },
                    2 => Frame::ResumeFrom {
                        transfer: ID,
                        offset: any(size),
                    },
                    3 => Frame::FileVerified { transfer: ID },
                    4 => Frame::FileDone { transfer: ID },
                    5 | 6 => {
                        let len = (r1 % 20_000) as usize;
                        Frame::Chunk {
                            transfer: ID,
                            offset: any(size),
                            data: vec![7; len],
                        }
                    }
                    7 => Frame::FileDecline {
                        transfer: ID,
                        reason: "no".into(),
                    },
                    8 => Frame::FileCancel {
                        transfer: ID,
                        reason: CancelReason::User,
                    },
                    9 => Frame::FileOffer(offer_for(&data)),
                    _ => Frame::FileProgress {
                        transfer: TransferId(r1),
                        received: r2,
                    },
                };
                s.handle_frame(frame.clone(), step);
                r.handle_frame(frame, step);
                s.buffered_amount(r1 % (2 << 20));
                check(sender_outputs(&mut s), receiver_outputs(&mut r));
                if let Some((o, l)) = s.outstanding {
                    s.chunk_read(o, vec![0; if r2 % 10 == 0 { l / 2 } else { l }], step);
                }
                check(sender_outputs(&mut s), Vec::new());
            }
        }
    }
}
