//! Chat delivery between one local peer and the other peers of a room.
//!
//! Every remote peer is a *link* with its own outgoing sequence (1, 2, 3…)
//! and its own expected incoming sequence. A sent message goes into each
//! link's outbox and stays there until that peer acks it; unacked messages
//! are re-sent on a timer and whenever the link comes back up. The receiving
//! side acks every message it gets (duplicates included, since the first ack
//! may have been lost), shows each message id once, and shows a link's
//! messages in sequence order, holding early arrivals until the gap fills.

use parlor_protocol::{ChatMessage, Frame, MessageId, PeerId};

use crate::Millis;

/// First re-send of an unacked message after this long. Data channels are
/// reliable, so a missing ack means the path broke; a few seconds avoids
/// re-sending on a slow but healthy link.
pub const RESEND_AFTER_MS: Millis = 3_000;
/// Re-send intervals double up to this cap.
pub const MAX_RESEND_INTERVAL_MS: Millis = 30_000;
/// Most unacked messages kept per link; beyond this `send` fails rather than
/// grow memory without bound.
pub const MAX_OUTBOX_PER_PEER: usize = 10_000;
/// Most out-of-order messages held per link while waiting for a gap to fill;
/// later ones are dropped unacked (the sender re-sends them).
pub const MAX_REORDER_PER_PEER: usize = 1_024;
/// How many recently delivered message ids are remembered for dedupe across
/// links (a peer that reconnects under a new id may re-send old messages).
pub const SEEN_IDS_CAPACITY: usize = 16_384;

/// Delivery status of an outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// Queued; not yet handed to every recipient's transport.
    Sending,
    /// Handed to the transport of every recipient; not yet acked by all.
    Sent,
    /// Acked by every recipient.
    Delivered,
}

/// What the chat session asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatOutput {
    /// Send `frame` to `to` on the chat channel.
    Send {
        /// The recipient.
        to: PeerId,
        /// A [`Frame::Chat`] or [`Frame::ChatAck`].
        frame: Frame,
    },
    /// Show a received message. Emitted exactly once per message id, in the
    /// sender's order.
    Deliver {
        /// Who sent it.
        from: PeerId,
        /// The message.
        message: ChatMessage,
    },
    /// An outgoing message changed status.
    Status {
        /// The message.
        id: MessageId,
        /// Its new status.
        status: MessageStatus,
    },
}

/// Why a chat call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The text is longer than the protocol allows.
    #[error("message is {len} bytes; the limit is {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A recipient's outbox is full ([`MAX_OUTBOX_PER_PEER`]).
    #[error("too many unacknowledged messages for peer {0}")]
    OutboxFull(PeerId),
    /// The frame is not a chat frame, or breaks the protocol.
    #[error("unexpected frame: {0}")]
    UnexpectedFrame(&'static str),
    /// The peer is not known to this session.
    #[error("unknown peer {0}")]
    UnknownPeer(PeerId),
}

/// Chat delivery state of one local peer.
#[derive(Debug, Default)]
pub struct ChatSession {
    // implemented in the body below
}

impl ChatSession {
    /// An empty session with no peers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A peer is in the room: messages sent from now on are addressed to it
    /// (queued until [`Self::link_up`]).
    pub fn add_peer(&mut self, peer: PeerId) {
        let _ = peer;
        unimplemented!()
    }

    /// The peer left the room for good: forget its link and outbox. Messages
    /// that only waited for it may become [`MessageStatus::Delivered`].
    pub fn remove_peer(&mut self, peer: &PeerId) {
        let _ = peer;
        unimplemented!()
    }

    /// The chat channel to `peer` is open: (re-)send its whole outbox.
    pub fn link_up(&mut self, peer: &PeerId, now: Millis) {
        let _ = (peer, now);
        unimplemented!()
    }

    /// The chat channel to `peer` closed: stop sending to it; keep its outbox.
    pub fn link_down(&mut self, peer: &PeerId) {
        let _ = peer;
        unimplemented!()
    }

    /// Sends `text` to every peer in the room. `id` is 16 random bytes from
    /// the driver; `wall_clock_ms` is the Unix time shown to recipients.
    pub fn send(
        &mut self,
        id: MessageId,
        text: String,
        wall_clock_ms: u64,
        now: Millis,
    ) -> Result<(), ChatError> {
        let _ = (id, text, wall_clock_ms, now);
        unimplemented!()
    }

    /// A chat frame arrived from `from`.
    pub fn handle_frame(&mut self, from: &PeerId, frame: Frame, now: Millis) -> Result<(), ChatError> {
        let _ = (from, frame, now);
        unimplemented!()
    }

    /// When the driver should call [`Self::handle_timeout`] next, if ever.
    pub fn poll_timeout(&self) -> Option<Millis> {
        unimplemented!()
    }

    /// Time has reached `now`: re-send what is overdue.
    pub fn handle_timeout(&mut self, now: Millis) {
        let _ = now;
        unimplemented!()
    }

    /// The next thing to do, if any. Drain until `None` after every call.
    pub fn poll_output(&mut self) -> Option<ChatOutput> {
        unimplemented!()
    }

    /// Messages not yet acked by `peer`, oldest first (for a persistent outbox).
    pub fn unacked(&self, peer: &PeerId) -> Vec<ChatMessage> {
        let _ = peer;
        unimplemented!()
    }
}
