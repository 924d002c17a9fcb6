//! Chat delivery between one local peer and the other peers of a room.
//!
//! Every remote peer is a *link* with its own outgoing sequence (1, 2, 3…)
//! and its own expected incoming sequence. A sent message goes into each
//! link's outbox and stays there until that peer acks it; unacked messages
//! are re-sent on a timer and whenever the link comes back up. The receiving
//! side acks every message it gets (duplicates included, since the first ack
//! may have been lost), shows each message id once, and shows a link's
//! messages in sequence order, holding early arrivals until the gap fills.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use parlor_protocol::frame::MAX_CHAT_TEXT_BYTES;
use parlor_protocol::{ChatMessage, Frame, MessageId, PeerId};
use serde::{Deserialize, Serialize};

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
/// How long a peer that left the room keeps its link (outbox, sequence
/// numbers) by default: a peer that comes back under the same id within
/// this window gets what was sent to it meanwhile.
pub const DEFAULT_RETENTION_MS: Millis = 60 * 60 * 1000;
/// How many of the most recently seen message ids a [`ChatSnapshot`] keeps
/// (per-link sequence numbers do the dedupe; these catch re-sends under a
/// new peer id).
pub const SNAPSHOT_SEEN_IDS: usize = 1_024;
/// Format version of [`ChatSnapshot`].
pub const SNAPSHOT_VERSION: u32 = 1;

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

/// Most links a [`ChatSnapshot`] may hold.
pub const MAX_SNAPSHOT_LINKS: usize = 4_096;

/// A chat session's lasting state, for a persistent outbox: saved by the
/// driver (a file, IndexedDB) whenever [`ChatSession::generation`] moves,
/// and given back to [`ChatSession::restore`] after a restart or reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSnapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// One entry per known peer, present or departed.
    pub links: Vec<LinkSnapshot>,
    /// Recently delivered message ids, oldest first.
    pub seen: Vec<MessageId>,
}

/// One link of a [`ChatSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSnapshot {
    /// The remote peer.
    pub peer: PeerId,
    /// Sequence number of the next message to send it.
    pub next_seq: u64,
    /// Sequence number of the next message to show from it.
    pub next_expected: u64,
    /// Messages sent to it and not yet acked, oldest first.
    pub outbox: Vec<ChatMessage>,
    /// Its messages that arrived (and were acked) ahead of a gap.
    pub reorder: Vec<ChatMessage>,
    /// For a departed peer, the Unix time (ms) its link is forgotten.
    pub forget_at_unix_ms: Option<u64>,
}

/// Why [`ChatSession::restore`] refused a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Written by another version of the format.
    #[error("chat state has format version {0}; this build reads version {SNAPSHOT_VERSION}")]
    Version(u32),
    /// Breaks the bounds of a live session.
    #[error("chat state is damaged: {0}")]
    Invalid(&'static str),
}

fn check_message(message: &ChatMessage) -> Result<(), SnapshotError> {
    match Frame::Chat(message.clone()).validate() {
        Ok(()) => Ok(()),
        Err(parlor_protocol::FrameError::Invalid(why)) => Err(SnapshotError::Invalid(why)),
        Err(_) => Err(SnapshotError::Invalid("invalid message")),
    }
}

/// Chat delivery state of one local peer.
///
/// Links are kept in a [`BTreeMap`] so that outputs come out in a stable
/// (peer id) order, which keeps tests and logs deterministic.
#[derive(Debug)]
pub struct ChatSession {
    /// One link per remote peer.
    links: BTreeMap<PeerId, Link>,
    /// Outgoing messages not yet delivered to every recipient.
    tracked: HashMap<MessageId, Tracked>,
    /// Recently delivered message ids, for dedupe across links.
    seen: SeenIds,
    /// What the driver should do next.
    outputs: VecDeque<ChatOutput>,
    /// How long a departed peer's link is kept ([`DEFAULT_RETENTION_MS`]).
    retention_ms: Millis,
    /// Bumped by every change a [`ChatSnapshot`] would show.
    generation: u64,
}

impl Default for ChatSession {
    fn default() -> Self {
        Self {
            links: BTreeMap::new(),
            tracked: HashMap::new(),
            seen: SeenIds::default(),
            outputs: VecDeque::new(),
            retention_ms: DEFAULT_RETENTION_MS,
            generation: 0,
        }
    }
}

/// The state kept for one remote peer.
#[derive(Debug)]
struct Link {
    /// Whether the chat channel to the peer is open.
    up: bool,
    /// Set while the peer is away: when to forget the link.
    forget_at: Option<Millis>,
    /// Sequence number of the next message sent to the peer.
    next_seq: u64,
    /// Messages sent to the peer and not yet acked, by sequence number.
    outbox: BTreeMap<u64, Outgoing>,
    /// Sequence number of the next message to show from the peer.
    next_expected: u64,
    /// Messages from the peer that arrived before `next_expected`'s.
    reorder: BTreeMap<u64, ChatMessage>,
}

impl Link {
    fn new() -> Self {
        Self {
            up: false,
            forget_at: None,
            next_seq: 1,
            outbox: BTreeMap::new(),
            next_expected: 1,
            reorder: BTreeMap::new(),
        }
    }
}

/// An unacked message on one link.
#[derive(Debug)]
struct Outgoing {
    message: ChatMessage,
    /// When to send it again if still unacked (only while the link is up).
    resend_at: Millis,
    /// The wait before `resend_at` was set; doubles on every re-send.
    interval: Millis,
}

/// Bookkeeping of one outgoing message until every recipient acked it.
#[derive(Debug)]
struct Tracked {
    /// The last status reported to the driver.
    status: MessageStatus,
    /// Recipients whose transport has not been handed the message yet.
    unsent: BTreeSet<PeerId>,
    /// Recipients that have not acked it yet.
    unacked: BTreeSet<PeerId>,
    /// Whether at least one recipient acked it.
    any_acked: bool,
}

impl Tracked {
    /// The status the message deserves now. A message whose recipients all
    /// left before acking was never delivered to anyone, so it stays `Sent`.
    fn target(&self) -> MessageStatus {
        if self.unacked.is_empty() && self.any_acked {
            MessageStatus::Delivered
        } else if self.unsent.is_empty() {
            MessageStatus::Sent
        } else {
            MessageStatus::Sending
        }
    }
}

/// A bounded set of recently delivered message ids with FIFO eviction.
#[derive(Debug, Default)]
struct SeenIds {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl SeenIds {
    fn contains(&self, id: &MessageId) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: MessageId) {
        if !self.set.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > SEEN_IDS_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

fn status_rank(status: MessageStatus) -> u8 {
    match status {
        MessageStatus::Sending => 0,
        MessageStatus::Sent => 1,
        MessageStatus::Delivered => 2,
    }
}

impl ChatSession {
    /// An empty session with no peers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps a departed peer's link for `retention_ms` instead of
    /// [`DEFAULT_RETENTION_MS`].
    pub fn with_retention(mut self, retention_ms: Millis) -> Self {
        self.retention_ms = retention_ms;
        self
    }

    /// A peer is in the room: messages sent from now on are addressed to it
    /// (queued until [`Self::link_up`]). Adding a known peer changes nothing,
    /// except that a peer back within the retention window is no longer
    /// scheduled to be forgotten.
    pub fn add_peer(&mut self, peer: PeerId) {
        let link = self.links.entry(peer).or_insert_with(Link::new);
        link.forget_at = None;
        self.generation += 1;
    }

    /// The peer left the room, perhaps only for a moment (a closed lid, a
    /// network switch, a reload): stop sending to it, but keep its link —
    /// outbox and sequence numbers — until `now` + the retention window, so
    /// that if it comes back under the same id ([`Self::add_peer`] or
    /// [`Self::link_up`]) it gets what was sent meanwhile, once and in order.
    /// Messages sent while it is away are queued for it too.
    pub fn peer_left(&mut self, peer: &PeerId, now: Millis) {
        if let Some(link) = self.links.get_mut(peer) {
            link.up = false;
            link.forget_at = Some(now.saturating_add(self.retention_ms));
            self.generation += 1;
        }
    }

    /// Forget `peer` now: its link and outbox. Messages that only waited for
    /// it may become [`MessageStatus::Delivered`]. (A peer that left without
    /// saying so is forgotten by [`Self::handle_timeout`] once its retention
    /// window ends.)
    pub fn remove_peer(&mut self, peer: &PeerId) {
        let Some(link) = self.links.remove(peer) else {
            return;
        };
        self.generation += 1;
        for out in link.outbox.values() {
            let id = out.message.id;
            if let Some(t) = self.tracked.get_mut(&id) {
                t.unsent.remove(peer);
                t.unacked.remove(peer);
            }
            self.update_status(id);
        }
    }

    /// The chat channel to `peer` is open: (re-)send its whole outbox, oldest
    /// first. An unknown peer is added first (the driver may see the channel
    /// open before the server announces the peer).
    pub fn link_up(&mut self, peer: &PeerId, now: Millis) {
        let link = self.links.entry(peer.clone()).or_insert_with(Link::new);
        link.up = true;
        link.forget_at = None;
        self.generation += 1;
        let mut ids = Vec::with_capacity(link.outbox.len());
        for out in link.outbox.values_mut() {
            // A fresh channel: restart the back-off.
            out.interval = RESEND_AFTER_MS;
            out.resend_at = now.saturating_add(RESEND_AFTER_MS);
            self.outputs.push_back(ChatOutput::Send {
                to: peer.clone(),
                frame: Frame::Chat(out.message.clone()),
            });
            ids.push(out.message.id);
        }
        for id in ids {
            if let Some(t) = self.tracked.get_mut(&id) {
                t.unsent.remove(peer);
            }
            self.update_status(id);
        }
    }

    /// The chat channel to `peer` closed: stop sending to it; keep its outbox.
    pub fn link_down(&mut self, peer: &PeerId) {
        if let Some(link) = self.links.get_mut(peer) {
            link.up = false;
        }
    }

    /// Sends `text` to every peer in the room. `id` is 16 random bytes from
    /// the driver; `wall_clock_ms` is the Unix time shown to recipients.
    ///
    /// Emits `Status(Sending)`, a `Send` per recipient whose link is up, and
    /// `Status(Sent)` if every recipient's link was up (or there is nobody to
    /// send to). Fails, changing nothing, if the text is too long or any
    /// recipient's outbox is full.
    pub fn send(
        &mut self,
        id: MessageId,
        text: String,
        wall_clock_ms: u64,
        now: Millis,
    ) -> Result<(), ChatError> {
        if text.len() > MAX_CHAT_TEXT_BYTES {
            return Err(ChatError::TooLong {
                len: text.len(),
                max: MAX_CHAT_TEXT_BYTES,
            });
        }
        if let Some((peer, _)) = self
            .links
            .iter()
            .find(|(_, l)| l.outbox.len() >= MAX_OUTBOX_PER_PEER)
        {
            return Err(ChatError::OutboxFull(peer.clone()));
        }
        self.outputs.push_back(ChatOutput::Status {
            id,
            status: MessageStatus::Sending,
        });
        let mut tracked = Tracked {
            status: MessageStatus::Sending,
            unsent: BTreeSet::new(),
            unacked: BTreeSet::new(),
            any_acked: false,
        };
        for (peer, link) in &mut self.links {
            let message = ChatMessage {
                id,
                seq: link.next_seq,
                sent_at_ms: wall_clock_ms,
                text: text.clone(),
            };
            link.next_seq += 1;
            if link.up {
                self.outputs.push_back(ChatOutput::Send {
                    to: peer.clone(),
                    frame: Frame::Chat(message.clone()),
                });
            } else {
                tracked.unsent.insert(peer.clone());
            }
            tracked.unacked.insert(peer.clone());
            let out = Outgoing {
                message,
                resend_at: now.saturating_add(RESEND_AFTER_MS),
                interval: RESEND_AFTER_MS,
            };
            link.outbox.insert(out.message.seq, out);
        }
        // Replaces any earlier message the driver sent under the same id.
        self.tracked.insert(id, tracked);
        self.generation += 1;
        self.update_status(id);
        Ok(())
    }

    /// A chat frame arrived from `from`.
    ///
    /// A [`Frame::Chat`] from a peer this session does not know yet adds the
    /// peer (as [`Self::add_peer`] would): the driver may open the channel
    /// before the server's presence event arrives. A [`Frame::ChatAck`] from
    /// an unknown peer, or for a message not in its outbox, is ignored.
    /// Errors: a frame that is not a chat frame, or one that breaks the
    /// frame's bounds, is [`ChatError::UnexpectedFrame`].
    pub fn handle_frame(
        &mut self,
        from: &PeerId,
        frame: Frame,
        now: Millis,
    ) -> Result<(), ChatError> {
        let _ = now;
        if let Err(parlor_protocol::FrameError::Invalid(why)) = frame.validate() {
            return Err(ChatError::UnexpectedFrame(why));
        }
        match frame {
            Frame::Chat(message) => {
                self.receive(from, message);
                Ok(())
            }
            Frame::ChatAck { id, seq } => {
                self.ack(from, id, seq);
                Ok(())
            }
            _ => Err(ChatError::UnexpectedFrame("not a chat frame")),
        }
    }

    /// When the driver should call [`Self::handle_timeout`] next, if ever.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let resend = self
            .links
            .values()
            .filter(|l| l.up)
            .flat_map(|l| l.outbox.values().map(|o| o.resend_at));
        let forget = self.links.values().filter_map(|l| l.forget_at);
        resend.chain(forget).min()
    }

    /// Time has reached `now`: re-send what is overdue, each message waiting
    /// twice as long as before until the next re-send (capped at
    /// [`MAX_RESEND_INTERVAL_MS`]), and forget peers whose retention window
    /// ended.
    pub fn handle_timeout(&mut self, now: Millis) {
        let expired: Vec<PeerId> = self
            .links
            .iter()
            .filter(|(_, l)| l.forget_at.is_some_and(|t| t <= now))
            .map(|(p, _)| p.clone())
            .collect();
        for peer in &expired {
            self.remove_peer(peer);
        }
        for (peer, link) in self.links.iter_mut().filter(|(_, l)| l.up) {
            for out in link.outbox.values_mut().filter(|o| o.resend_at <= now) {
                out.interval = out.interval.saturating_mul(2).min(MAX_RESEND_INTERVAL_MS);
                out.resend_at = now.saturating_add(out.interval);
                self.outputs.push_back(ChatOutput::Send {
                    to: peer.clone(),
                    frame: Frame::Chat(out.message.clone()),
                });
            }
        }
    }

    /// The next thing to do, if any. Drain until `None` after every call.
    pub fn poll_output(&mut self) -> Option<ChatOutput> {
        self.outputs.pop_front()
    }

    /// Messages not yet acked by `peer`, oldest first (for a persistent outbox).
    pub fn unacked(&self, peer: &PeerId) -> Vec<ChatMessage> {
        self.links
            .get(peer)
            .map(|l| l.outbox.values().map(|o| o.message.clone()).collect())
            .unwrap_or_default()
    }

    /// The current status of an outgoing message, while it is still tracked
    /// (`None` once delivered to everyone, or if unknown).
    pub fn status(&self, id: &MessageId) -> Option<MessageStatus> {
        self.tracked.get(id).map(|t| t.status)
    }

    /// The peers this session knows.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.links.keys()
    }

    /// A counter that moves whenever something a [`ChatSnapshot`] holds
    /// changes; a driver saves a snapshot when it differs from the last one
    /// it saved.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What a restarted peer needs to carry on where it stopped (for at most
    /// [`MAX_SNAPSHOT_LINKS`] links, so that it always restores): per link the
    /// sequence numbers, the unacked outbox and the held early arrivals, the
    /// retention deadline of departed peers (as Unix time), and the most
    /// recently seen message ids. `wall_clock_ms` is the Unix time at `now`.
    pub fn snapshot(&self, now: Millis, wall_clock_ms: u64) -> ChatSnapshot {
        let links = self
            .links
            .iter()
            .take(MAX_SNAPSHOT_LINKS)
            .map(|(peer, link)| LinkSnapshot {
                peer: peer.clone(),
                next_seq: link.next_seq,
                next_expected: link.next_expected,
                outbox: link.outbox.values().map(|o| o.message.clone()).collect(),
                reorder: link.reorder.values().cloned().collect(),
                forget_at_unix_ms: link
                    .forget_at
                    .map(|t| wall_clock_ms.saturating_add(t.saturating_sub(now))),
            })
            .collect();
        let skip = self.seen.order.len().saturating_sub(SNAPSHOT_SEEN_IDS);
        ChatSnapshot {
            version: SNAPSHOT_VERSION,
            links,
            seen: self.seen.order.iter().skip(skip).copied().collect(),
        }
    }

    /// This (fresh) session carrying on from `snapshot`, taken by
    /// [`Self::snapshot`] before a restart. Every link starts down and
    /// departed: a peer that was present gets a full retention window from
    /// `now` to show up again, a departed one keeps its old deadline.
    /// Unacked messages are re-sent when their peer's link comes up.
    ///
    /// Errors: a snapshot of another format version, or one that breaks the
    /// bounds a live session keeps (a damaged or foreign file).
    pub fn restore(
        mut self,
        snapshot: ChatSnapshot,
        now: Millis,
        wall_clock_ms: u64,
    ) -> Result<Self, SnapshotError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(snapshot.version));
        }
        if snapshot.links.len() > MAX_SNAPSHOT_LINKS {
            return Err(SnapshotError::Invalid("too many links"));
        }
        for l in snapshot.links {
            if l.outbox.len() > MAX_OUTBOX_PER_PEER || l.reorder.len() > MAX_REORDER_PER_PEER {
                return Err(SnapshotError::Invalid("outbox or reorder buffer too long"));
            }
            let mut link = Link::new();
            link.next_seq = l.next_seq.max(1);
            link.next_expected = l.next_expected.max(1);
            link.forget_at = Some(match l.forget_at_unix_ms {
                Some(t) => now.saturating_add(t.saturating_sub(wall_clock_ms)),
                None => now.saturating_add(self.retention_ms),
            });
            for message in l.outbox {
                check_message(&message)?;
                if message.seq >= link.next_seq {
                    return Err(SnapshotError::Invalid("outbox message not yet numbered"));
                }
                let t = self.tracked.entry(message.id).or_insert_with(|| Tracked {
                    status: MessageStatus::Sending,
                    unsent: BTreeSet::new(),
                    unacked: BTreeSet::new(),
                    any_acked: false,
                });
                t.unsent.insert(l.peer.clone());
                t.unacked.insert(l.peer.clone());
                let out = Outgoing {
                    message,
                    resend_at: now.saturating_add(RESEND_AFTER_MS),
                    interval: RESEND_AFTER_MS,
                };
                link.outbox.insert(out.message.seq, out);
            }
            for message in l.reorder {
                check_message(&message)?;
                if message.seq <= link.next_expected {
                    return Err(SnapshotError::Invalid("held message already due"));
                }
                link.reorder.insert(message.seq, message);
            }
            self.links.insert(l.peer, link);
        }
        for id in snapshot.seen.into_iter().take(SNAPSHOT_SEEN_IDS) {
            self.seen.insert(id);
        }
        Ok(self)
    }

    /// Handles an incoming message: ack, dedupe, deliver in order.
    fn receive(&mut self, from: &PeerId, message: ChatMessage) {
        let link = self.links.entry(from.clone()).or_insert_with(Link::new);
        let ack = ChatOutput::Send {
            to: from.clone(),
            frame: Frame::ChatAck {
                id: message.id,
                seq: message.seq,
            },
        };
        if message.seq == 1 && link.next_expected > 1 && !self.seen.contains(&message.id) {
            // A new first message: the sender forgot this link (its retention
            // window ended, or it lost its state) and numbers from 1 again.
            link.next_expected = 1;
            link.reorder.clear();
        }
        if message.seq < link.next_expected {
            // Already shown (or skipped as a duplicate): the first ack was lost.
            self.outputs.push_back(ack);
            return;
        }
        if message.seq > link.next_expected {
            if !link.reorder.contains_key(&message.seq) {
                if link.reorder.len() >= MAX_REORDER_PER_PEER {
                    // No ack: the sender re-sends it once the gap has filled.
                    return;
                }
                link.reorder.insert(message.seq, message);
                self.generation += 1;
            }
            self.outputs.push_back(ack);
            return;
        }
        self.outputs.push_back(ack);
        self.generation += 1;
        let mut next = Some(message);
        while let Some(message) = next {
            link.next_expected = link.next_expected.saturating_add(1);
            if !self.seen.contains(&message.id) {
                self.seen.insert(message.id);
                self.outputs.push_back(ChatOutput::Deliver {
                    from: from.clone(),
                    message,
                });
            }
            next = link.reorder.remove(&link.next_expected);
        }
    }

    /// Handles an ack from `from`.
    fn ack(&mut self, from: &PeerId, id: MessageId, seq: u64) {
        let Some(link) = self.links.get_mut(from) else {
            return;
        };
        match link.outbox.get(&seq) {
            Some(out) if out.message.id == id => {
                link.outbox.remove(&seq);
                self.generation += 1;
            }
            _ => return,
        }
        if let Some(t) = self.tracked.get_mut(&id) {
            t.unsent.remove(from);
            if t.unacked.remove(from) {
                t.any_acked = true;
            }
        }
        self.update_status(id);
    }

    /// Emits the status `id` has reached, if it moved forward, and forgets
    /// messages nobody owes an ack for.
    fn update_status(&mut self, id: MessageId) {
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        let target = t.target();
        if status_rank(target) > status_rank(t.status) {
            t.status = target;
            self.outputs
                .push_back(ChatOutput::Status { id, status: target });
        }
        if t.unacked.is_empty() {
            self.tracked.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pid(name: &str) -> PeerId {
        PeerId(name.into())
    }

    fn mid(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    fn drain(s: &mut ChatSession) -> Vec<ChatOutput> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    /// Frames in `outputs` addressed to `to`.
    fn frames_to(outputs: &[ChatOutput], to: &PeerId) -> Vec<Frame> {
        outputs
            .iter()
            .filter_map(|o| match o {
                ChatOutput::Send { to: t, frame } if t == to => Some(frame.clone()),
                _ => None,
            })
            .collect()
    }

    fn texts(outputs: &[ChatOutput]) -> Vec<String> {
        outputs
            .iter()
            .filter_map(|o| match o {
                ChatOutput::Deliver { message, .. } => Some(message.text.clone()),
                _ => None,
            })
            .collect()
    }

    fn statuses(outputs: &[ChatOutput], of: MessageId) -> Vec<MessageStatus> {
        outputs
            .iter()
            .filter_map(|o| match o {
                ChatOutput::Status { id, status } if *id == of => Some(*status),
                _ => None,
            })
            .collect()
    }

    fn acks(frames: &[Frame]) -> usize {
        frames
            .iter()
            .filter(|f| matches!(f, Frame::ChatAck { .. }))
            .count()
    }

    /// A session with `peers` added and their links up.
    fn session_with(peers: &[&str]) -> ChatSession {
        let mut s = ChatSession::new();
        for p in peers {
            s.add_peer(pid(p));
            s.link_up(&pid(p), 0);
        }
        drain(&mut s);
        s
    }

    /// Hands every frame to `to` as coming from `from`; returns its outputs.
    fn feed(
        to: &mut ChatSession,
        from: &PeerId,
        frames: Vec<Frame>,
        now: Millis,
    ) -> Vec<ChatOutput> {
        for f in frames {
            to.handle_frame(from, f, now).unwrap();
        }
        drain(to)
    }

    #[test]
    fn lost_ack_is_retried_and_receiver_reacks_without_showing_twice() {
        let (a, b) = (pid("a"), pid("b"));
        let mut alice = session_with(&["b"]);
        let mut bob = session_with(&["a"]);
        alice
            .send(mid(1), "hi".into(), 1_700_000_000_000, 0)
            .unwrap();
        let first = frames_to(&drain(&mut alice), &b);
        assert_eq!(first.len(), 1);
        let out = feed(&mut bob, &a, first.clone(), 10);
        assert_eq!(texts(&out), ["hi"]);
        assert_eq!(acks(&frames_to(&out, &a)), 1);
        // The ack is lost. Nothing happens until the resend timer.
        assert_eq!(alice.poll_timeout(), Some(RESEND_AFTER_MS));
        alice.handle_timeout(RESEND_AFTER_MS - 1);
        assert!(drain(&mut alice).is_empty());
        alice.handle_timeout(RESEND_AFTER_MS);
        let again = frames_to(&drain(&mut alice), &b);
        assert_eq!(again, first);
        let out = feed(&mut bob, &a, again, RESEND_AFTER_MS);
        assert!(texts(&out).is_empty(), "shown twice: {out:?}");
        let ack = frames_to(&out, &a);
        assert_eq!(ack, [Frame::ChatAck { id: mid(1), seq: 1 }]);
        let out = feed(&mut alice, &b, ack, RESEND_AFTER_MS + 5);
        assert_eq!(statuses(&out, mid(1)), [MessageStatus::Delivered]);
        assert_eq!(alice.poll_timeout(), None);
        assert!(alice.unacked(&b).is_empty());
    }

    #[test]
    fn resend_backoff_doubles_up_to_the_cap() {
        let b = pid("b");
        let mut alice = session_with(&["b"]);
        alice.send(mid(1), "hi".into(), 0, 0).unwrap();
        drain(&mut alice);
        let mut fired = Vec::new();
        while let Some(t) = alice.poll_timeout() {
            if fired.len() == 7 {
                break;
            }
            alice.handle_timeout(t);
            assert_eq!(frames_to(&drain(&mut alice), &b).len(), 1);
            fired.push(t);
        }
        let gaps: Vec<Millis> = fired.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(fired[0], 3_000);
        assert_eq!(gaps, [6_000, 12_000, 24_000, 30_000, 30_000, 30_000]);
    }

    #[test]
    fn duplicated_and_reordered_chat_frames_are_delivered_once_and_in_order() {
        let (a, b) = (pid("a"), pid("b"));
        let mut alice = session_with(&["b"]);
        let mut bob = session_with(&["a"]);
        for n in 1..=5u8 {
            alice.send(mid(n), format!("m{n}"), 0, 0).unwrap();
        }
        let frames = frames_to(&drain(&mut alice), &b);
        assert_eq!(frames.len(), 5);
        let order = [2, 0, 0, 4, 1, 3, 2, 4, 0];
        let mut shown = Vec::new();
        let mut ack_count = 0;
        for i in order {
            let out = feed(&mut bob, &a, vec![frames[i].clone()], 1);
            shown.extend(texts(&out));
            ack_count += acks(&frames_to(&out, &a));
        }
        assert_eq!(shown, ["m1", "m2", "m3", "m4", "m5"]);
        assert_eq!(ack_count, order.len(), "every copy is acked");
    }

    #[test]
    fn statuses_go_sending_sent_delivered() {
        let b = pid("b");
        let mut alice = session_with(&["b"]);
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        let out = drain(&mut alice);
        assert_eq!(
            statuses(&out, mid(1)),
            [MessageStatus::Sending, MessageStatus::Sent]
        );
        // Sending is reported before the frame goes out, Sent after.
        assert!(matches!(
            out.first(),
            Some(ChatOutput::Status {
                status: MessageStatus::Sending,
                ..
            })
        ));
        assert!(matches!(
            out.last(),
            Some(ChatOutput::Status {
                status: MessageStatus::Sent,
                ..
            })
        ));
        assert_eq!(alice.status(&mid(1)), Some(MessageStatus::Sent));
        let out = feed(
            &mut alice,
            &b,
            vec![Frame::ChatAck { id: mid(1), seq: 1 }],
            1,
        );
        assert_eq!(statuses(&out, mid(1)), [MessageStatus::Delivered]);
        // A duplicate ack changes nothing.
        let out = feed(
            &mut alice,
            &b,
            vec![Frame::ChatAck { id: mid(1), seq: 1 }],
            2,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn with_two_recipients_delivered_only_after_both_ack() {
        let (b, c) = (pid("b"), pid("c"));
        let mut alice = session_with(&["b", "c"]);
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        let out = drain(&mut alice);
        assert_eq!(frames_to(&out, &b).len(), 1);
        assert_eq!(frames_to(&out, &c).len(), 1);
        assert_eq!(
            statuses(&out, mid(1)),
            [MessageStatus::Sending, MessageStatus::Sent]
        );
        let out = feed(
            &mut alice,
            &b,
            vec![Frame::ChatAck { id: mid(1), seq: 1 }],
            1,
        );
        assert!(statuses(&out, mid(1)).is_empty());
        let out = feed(
            &mut alice,
            &c,
            vec![Frame::ChatAck { id: mid(1), seq: 1 }],
            2,
        );
        assert_eq!(statuses(&out, mid(1)), [MessageStatus::Delivered]);
    }

    #[test]
    fn message_waits_in_sending_until_every_link_is_up() {
        let (b, c) = (pid("b"), pid("c"));
        let mut alice = session_with(&["b"]);
        alice.add_peer(c.clone());
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        let out = drain(&mut alice);
        assert_eq!(statuses(&out, mid(1)), [MessageStatus::Sending]);
        assert!(frames_to(&out, &c).is_empty());
        // An ack from b before c got the message: still not Sent.
        let out = feed(
            &mut alice,
            &b,
            vec![Frame::ChatAck { id: mid(1), seq: 1 }],
            1,
        );
        assert!(statuses(&out, mid(1)).is_empty());
        alice.link_up(&c, 5);
        let out = drain(&mut alice);
        assert_eq!(frames_to(&out, &c).len(), 1);
        assert_eq!(statuses(&out, mid(1)), [MessageStatus::Sent]);
        let out = feed(
            &mut alice,
            &c,
            vec![Frame::ChatAck { id: mid(1), seq: 1 }],
            6,
        );
        assert_eq!(statuses(&out, mid(1)), [MessageStatus::Delivered]);
    }

    #[test]
    fn message_with_nobody_in_the_room_is_sent_never_delivered() {
        let mut alice = ChatSession::new();
        alice.send(mid(1), "alone".into(), 0, 0).unwrap();
        let out = drain(&mut alice);
        assert_eq!(
            statuses(&out, mid(1)),
            [MessageStatus::Sending, MessageStatus::Sent]
        );
        assert_eq!(alice.poll_timeout(), None);
        assert_eq!(alice.status(&mid(1)), None, "nothing left to track");
    }

    #[test]
    fn removing_the_last_unacked_recipient_makes_the_message_delivered() {
        let (b, c) = (pid("b"), pid("c"));
        let mut alice = session_with(&["b", "c"]);
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        drain(&mut alice);
        feed(
            &mut alice,
            &b,
            vec![Frame::ChatAck { id: mid(1), seq: 1 }],
            1,
        );
        alice.remove_peer(&c);
        assert_eq!(
            statuses(&drain(&mut alice), mid(1)),
            [MessageStatus::Delivered]
        );
        assert!(alice.unacked(&c).is_empty());
        assert_eq!(alice.poll_timeout(), None);
    }

    #[test]
    fn removing_every_recipient_before_any_ack_never_claims_delivery() {
        let c = pid("c");
        let mut alice = ChatSession::new();
        alice.add_peer(c.clone()); // link never comes up
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        assert_eq!(
            statuses(&drain(&mut alice), mid(1)),
            [MessageStatus::Sending]
        );
        alice.remove_peer(&c);
        // Nobody is left to hand it to: it settles on Sent, like a message
        // sent to an empty room.
        assert_eq!(statuses(&drain(&mut alice), mid(1)), [MessageStatus::Sent]);
        assert_eq!(alice.status(&mid(1)), None);
    }

    #[test]
    fn removing_a_peer_that_never_got_the_message_lets_it_become_sent() {
        let (b, c) = (pid("b"), pid("c"));
        let mut alice = session_with(&["b"]);
        alice.add_peer(c.clone());
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        assert_eq!(
            statuses(&drain(&mut alice), mid(1)),
            [MessageStatus::Sending]
        );
        alice.remove_peer(&c);
        assert_eq!(statuses(&drain(&mut alice), mid(1)), [MessageStatus::Sent]);
        let out = feed(
            &mut alice,
            &b,
            vec![Frame::ChatAck { id: mid(1), seq: 1 }],
            1,
        );
        assert_eq!(statuses(&out, mid(1)), [MessageStatus::Delivered]);
    }

    #[test]
    fn outbox_is_resent_on_link_up_after_link_down() {
        let b = pid("b");
        let mut alice = session_with(&["b"]);
        for n in 1..=3u8 {
            alice.send(mid(n), format!("m{n}"), 0, 0).unwrap();
        }
        drain(&mut alice);
        alice.link_down(&b);
        assert_eq!(
            alice.poll_timeout(),
            None,
            "no resend timer while the link is down"
        );
        alice.handle_timeout(100_000);
        assert!(drain(&mut alice).is_empty());
        for n in 4..=5u8 {
            alice.send(mid(n), format!("m{n}"), 0, 200).unwrap();
        }
        let out = drain(&mut alice);
        assert!(frames_to(&out, &b).is_empty());
        assert_eq!(statuses(&out, mid(4)), [MessageStatus::Sending]);
        alice.link_up(&b, 1_000);
        let out = drain(&mut alice);
        let seqs: Vec<u64> = frames_to(&out, &b)
            .iter()
            .map(|f| match f {
                Frame::Chat(m) => m.seq,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(statuses(&out, mid(4)), [MessageStatus::Sent]);
        assert_eq!(statuses(&out, mid(5)), [MessageStatus::Sent]);
        assert!(
            statuses(&out, mid(1)).is_empty(),
            "already Sent; never repeated"
        );
        assert_eq!(alice.poll_timeout(), Some(1_000 + RESEND_AFTER_MS));
        let texts: Vec<String> = alice.unacked(&b).into_iter().map(|m| m.text).collect();
        assert_eq!(texts, ["m1", "m2", "m3", "m4", "m5"]);
    }

    #[test]
    fn full_outbox_refuses_to_send_and_changes_nothing() {
        let (b, c) = (pid("b"), pid("c"));
        let mut alice = ChatSession::new();
        alice.add_peer(b.clone());
        for n in 0..MAX_OUTBOX_PER_PEER {
            let mut id = [0; 16];
            id[..8].copy_from_slice(&(n as u64).to_le_bytes());
            alice.send(MessageId(id), "x".into(), 0, 0).unwrap();
        }
        alice.add_peer(c.clone());
        alice.link_up(&c, 0);
        drain(&mut alice);
        assert_eq!(
            alice.send(mid(0xff), "one too many".into(), 0, 0),
            Err(ChatError::OutboxFull(b.clone()))
        );
        assert!(drain(&mut alice).is_empty());
        assert!(alice.unacked(&c).is_empty(), "c's outbox was not touched");
        assert_eq!(alice.unacked(&b).len(), MAX_OUTBOX_PER_PEER);
        // Once b acks one, there is room again, and b's next seq has no gap.
        let oldest = alice.unacked(&b)[0].id;
        feed(
            &mut alice,
            &b,
            vec![Frame::ChatAck { id: oldest, seq: 1 }],
            1,
        );
        alice.send(mid(0xff), "now it fits".into(), 0, 2).unwrap();
        assert_eq!(
            alice.unacked(&b).last().map(|m| m.seq),
            Some(MAX_OUTBOX_PER_PEER as u64 + 1)
        );
        assert_eq!(alice.unacked(&c).first().map(|m| m.seq), Some(1));
    }

    #[test]
    fn too_long_text_is_refused() {
        let mut alice = session_with(&["b"]);
        let err = alice.send(mid(1), "x".repeat(MAX_CHAT_TEXT_BYTES + 1), 0, 0);
        assert_eq!(
            err,
            Err(ChatError::TooLong {
                len: MAX_CHAT_TEXT_BYTES + 1,
                max: MAX_CHAT_TEXT_BYTES
            })
        );
        assert!(drain(&mut alice).is_empty());
        assert!(
            alice
                .send(mid(1), "x".repeat(MAX_CHAT_TEXT_BYTES), 0, 0)
                .is_ok()
        );
    }

    #[test]
    fn non_chat_and_invalid_frames_are_unexpected() {
        let a = pid("a");
        let mut bob = session_with(&["a"]);
        let file_frame = Frame::FileDone {
            transfer: parlor_protocol::TransferId(1),
        };
        assert!(matches!(
            bob.handle_frame(&a, file_frame, 0),
            Err(ChatError::UnexpectedFrame(_))
        ));
        let zero_seq = Frame::Chat(ChatMessage {
            id: mid(1),
            seq: 0,
            sent_at_ms: 0,
            text: String::new(),
        });
        assert!(matches!(
            bob.handle_frame(&a, zero_seq, 0),
            Err(ChatError::UnexpectedFrame(_))
        ));
        let huge = Frame::Chat(ChatMessage {
            id: mid(1),
            seq: 1,
            sent_at_ms: 0,
            text: "x".repeat(MAX_CHAT_TEXT_BYTES + 1),
        });
        assert!(matches!(
            bob.handle_frame(&a, huge, 0),
            Err(ChatError::UnexpectedFrame(_))
        ));
        assert!(drain(&mut bob).is_empty());
    }

    #[test]
    fn chat_from_an_unknown_peer_adds_it() {
        let z = pid("z");
        let mut bob = ChatSession::new();
        let msg = ChatMessage {
            id: mid(1),
            seq: 1,
            sent_at_ms: 0,
            text: "early".into(),
        };
        let out = feed(&mut bob, &z, vec![Frame::Chat(msg)], 0);
        assert_eq!(texts(&out), ["early"]);
        assert_eq!(frames_to(&out, &z), [Frame::ChatAck { id: mid(1), seq: 1 }]);
        assert_eq!(bob.peers().collect::<Vec<_>>(), [&z]);
        // Later messages are addressed to it (queued until its link is up).
        bob.send(mid(2), "reply".into(), 0, 1).unwrap();
        assert_eq!(bob.unacked(&z).len(), 1);
    }

    #[test]
    fn unknown_and_mismatched_acks_are_ignored() {
        let (b, z) = (pid("b"), pid("z"));
        let mut alice = session_with(&["b"]);
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        drain(&mut alice);
        let out = feed(
            &mut alice,
            &b,
            vec![
                Frame::ChatAck { id: mid(9), seq: 1 }, // right seq, wrong id
                Frame::ChatAck { id: mid(1), seq: 7 }, // right id, wrong seq
                Frame::ChatAck {
                    id: mid(1),
                    seq: u64::MAX,
                },
            ],
            1,
        );
        assert!(out.is_empty());
        let out = feed(
            &mut alice,
            &z,
            vec![Frame::ChatAck { id: mid(1), seq: 1 }],
            1,
        );
        assert!(out.is_empty());
        assert_eq!(alice.unacked(&b).len(), 1);
        assert!(alice.peers().all(|p| p != &z), "an ack does not add a peer");
    }

    #[test]
    fn full_reorder_buffer_drops_early_messages_unacked() {
        let a = pid("a");
        let mut bob = session_with(&["a"]);
        let msg = |seq: u64| {
            let mut id = [1; 16];
            id[..8].copy_from_slice(&seq.to_le_bytes());
            Frame::Chat(ChatMessage {
                id: MessageId(id),
                seq,
                sent_at_ms: 0,
                text: format!("m{seq}"),
            })
        };
        // seq 1 is missing; 2..=MAX+1 fill the buffer.
        let early: Vec<Frame> = (2..=MAX_REORDER_PER_PEER as u64 + 1).map(msg).collect();
        let out = feed(&mut bob, &a, early, 0);
        assert_eq!(acks(&frames_to(&out, &a)), MAX_REORDER_PER_PEER);
        assert!(texts(&out).is_empty());
        let overflow = msg(MAX_REORDER_PER_PEER as u64 + 2);
        let out = feed(&mut bob, &a, vec![overflow.clone()], 1);
        assert!(
            out.is_empty(),
            "dropped without an ack so the sender retries: {out:?}"
        );
        // The gap fills: everything buffered comes out in order.
        let out = feed(&mut bob, &a, vec![msg(1)], 2);
        let shown = texts(&out);
        assert_eq!(shown.len(), MAX_REORDER_PER_PEER + 1);
        assert_eq!(shown.first().map(String::as_str), Some("m1"));
        assert_eq!(
            shown.last().cloned(),
            Some(format!("m{}", MAX_REORDER_PER_PEER + 1))
        );
        // The retried overflow message is now next in line.
        let out = feed(&mut bob, &a, vec![overflow], 3);
        assert_eq!(texts(&out), [format!("m{}", MAX_REORDER_PER_PEER + 2)]);
    }

    #[test]
    fn an_id_seen_on_another_link_is_shown_once_and_the_link_moves_on() {
        let (a, a2) = (pid("a"), pid("a-reconnected"));
        let mut bob = session_with(&["a", "a-reconnected"]);
        let m = |id: u8, seq: u64, text: &str| {
            Frame::Chat(ChatMessage {
                id: mid(id),
                seq,
                sent_at_ms: 0,
                text: text.into(),
            })
        };
        let out = feed(&mut bob, &a, vec![m(1, 1, "one"), m(2, 2, "two")], 0);
        assert_eq!(texts(&out), ["one", "two"]);
        // The same author under a new peer id re-sends from its outbox.
        let out = feed(
            &mut bob,
            &a2,
            vec![m(2, 2, "two"), m(1, 1, "one"), m(3, 3, "three")],
            1,
        );
        assert_eq!(texts(&out), ["three"]);
        assert_eq!(acks(&frames_to(&out, &a2)), 3);
    }

    #[test]
    fn seen_ids_forget_the_oldest_beyond_capacity() {
        let mut seen = SeenIds::default();
        let id = |n: usize| {
            let mut b = [0; 16];
            b[..8].copy_from_slice(&(n as u64).to_le_bytes());
            MessageId(b)
        };
        for n in 0..=SEEN_IDS_CAPACITY {
            seen.insert(id(n));
        }
        seen.insert(id(5)); // already there: no effect on order
        assert!(!seen.contains(&id(0)));
        assert!(seen.contains(&id(1)));
        assert!(seen.contains(&id(SEEN_IDS_CAPACITY)));
        assert_eq!(seen.set.len(), SEEN_IDS_CAPACITY);
        assert_eq!(seen.order.len(), SEEN_IDS_CAPACITY);
    }

    #[test]
    fn link_up_for_an_unknown_peer_adds_it_and_link_down_for_one_is_harmless() {
        let mut alice = ChatSession::new();
        alice.link_down(&pid("ghost"));
        alice.remove_peer(&pid("ghost"));
        assert!(alice.unacked(&pid("ghost")).is_empty());
        alice.link_up(&pid("early"), 0);
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        let out = drain(&mut alice);
        assert_eq!(frames_to(&out, &pid("early")).len(), 1);
    }

    /// A chat frame with `text`, as `from`'s session would number it.
    fn chat(id: u8, seq: u64, text: &str) -> Frame {
        Frame::Chat(ChatMessage {
            id: mid(id),
            seq,
            sent_at_ms: 0,
            text: text.into(),
        })
    }

    #[test]
    fn a_peer_back_within_the_retention_window_gets_what_was_sent_meanwhile() {
        let (a, b) = (pid("a"), pid("b"));
        let mut alice = session_with(&["b"]).with_retention(60_000);
        let mut bob = session_with(&["a"]);
        alice.send(mid(1), "before".into(), 0, 0).unwrap();
        let sent = frames_to(&drain(&mut alice), &b);
        // Bob drops out before his ack arrives; Alice writes on.
        let _lost_acks = feed(&mut bob, &a, sent, 1);
        alice.peer_left(&b, 10);
        alice.send(mid(2), "while away".into(), 0, 20).unwrap();
        let out = drain(&mut alice);
        assert!(
            frames_to(&out, &b).is_empty(),
            "nothing goes to a departed peer"
        );
        assert_eq!(statuses(&out, mid(2)), [MessageStatus::Sending]);
        alice.handle_timeout(59_000);
        assert_eq!(alice.unacked(&b).len(), 2, "kept within the window");
        // Bob is back under the same id.
        alice.add_peer(b.clone());
        alice.link_up(&b, 59_500);
        let resent = frames_to(&drain(&mut alice), &b);
        assert_eq!(resent.len(), 2);
        let out = feed(&mut bob, &a, resent, 59_600);
        assert_eq!(texts(&out), ["while away"], "the first was shown already");
        let out = feed(&mut alice, &b, frames_to(&out, &a), 59_700);
        assert_eq!(statuses(&out, mid(2)), [MessageStatus::Delivered]);
        assert!(alice.unacked(&b).is_empty());
    }

    #[test]
    fn a_peer_gone_past_the_retention_window_is_forgotten() {
        let b = pid("b");
        let mut alice = session_with(&["b", "c"]).with_retention(1_000);
        alice.send(mid(1), "hi".into(), 0, 0).unwrap();
        drain(&mut alice);
        alice.peer_left(&b, 100);
        assert_eq!(alice.poll_timeout(), Some(1_100));
        alice.handle_timeout(1_100);
        assert!(alice.unacked(&b).is_empty());
        assert!(!alice.peers().any(|p| *p == b));
        // Back after the window: a fresh link numbered from 1 again.
        alice.add_peer(b.clone());
        alice.link_up(&b, 2_000);
        alice.send(mid(2), "again".into(), 0, 2_000).unwrap();
        let frames = frames_to(&drain(&mut alice), &b);
        assert!(matches!(&frames[..], [Frame::Chat(m)] if m.seq == 1));
    }

    #[test]
    fn a_sender_that_numbers_from_one_again_is_heard() {
        let a = pid("a");
        let mut bob = session_with(&["a"]);
        let out = feed(&mut bob, &a, vec![chat(1, 1, "one"), chat(2, 2, "two")], 0);
        assert_eq!(texts(&out), ["one", "two"]);
        // A duplicate of the old first message is still only re-acked …
        let out = feed(&mut bob, &a, vec![chat(1, 1, "one")], 1);
        assert!(texts(&out).is_empty());
        assert_eq!(acks(&frames_to(&out, &a)), 1);
        // … but a new first message starts the sequence over.
        let out = feed(
            &mut bob,
            &a,
            vec![chat(3, 1, "fresh"), chat(4, 2, "start")],
            2,
        );
        assert_eq!(texts(&out), ["fresh", "start"]);
    }

    #[test]
    fn a_restored_session_carries_on_without_losing_or_repeating() {
        let (a, b) = (pid("a"), pid("b"));
        let mut alice = session_with(&["b"]);
        let mut bob = session_with(&["a"]);
        for (n, text) in [(1, "one"), (2, "two"), (3, "three")] {
            alice.send(mid(n), text.into(), 0, 0).unwrap();
        }
        let mut frames = frames_to(&drain(&mut alice), &b);
        // Bob gets "one" and "three" (held for the gap); all acks are lost.
        let two = frames.remove(1);
        let out = feed(&mut bob, &a, frames, 1);
        assert_eq!(texts(&out), ["one"]);
        // Both restart from their snapshots (through JSON, as a file would).
        let json = |s: &ChatSession| serde_json::to_string(&s.snapshot(5, 1_000_000)).unwrap();
        let (alice_saved, bob_saved) = (json(&alice), json(&bob));
        let restore = |saved: &str| {
            ChatSession::new()
                .restore(serde_json::from_str(saved).unwrap(), 0, 1_000_010)
                .unwrap()
        };
        let (mut alice, mut bob) = (restore(&alice_saved), restore(&bob_saved));
        assert_eq!(alice.status(&mid(2)), Some(MessageStatus::Sending));
        alice.send(mid(4), "four".into(), 0, 1).unwrap();
        alice.link_up(&b, 2);
        bob.link_up(&a, 2);
        let resent = frames_to(&drain(&mut alice), &b);
        assert_eq!(resent.len(), 4, "the whole outbox goes out again");
        let out = feed(&mut bob, &a, resent, 3);
        assert_eq!(texts(&out), ["two", "three", "four"]);
        let out = feed(&mut alice, &b, frames_to(&out, &a), 4);
        assert_eq!(statuses(&out, mid(4)), [MessageStatus::Delivered]);
        assert!(alice.unacked(&b).is_empty());
        // The frame lost on the way does no harm when it turns up late.
        let out = feed(&mut bob, &a, vec![two], 5);
        assert!(texts(&out).is_empty());
    }

    #[test]
    fn restore_keeps_a_departed_peers_deadline_and_gives_present_ones_a_window() {
        let (b, c) = (pid("b"), pid("c"));
        let mut alice = session_with(&["b", "c"]).with_retention(10_000);
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        drain(&mut alice);
        alice.peer_left(&b, 1_000); // forgotten at 11_000, i.e. Unix 1_010_000
        let snap = alice.snapshot(2_000, 1_001_000);
        let restored = ChatSession::new()
            .with_retention(10_000)
            .restore(snap, 0, 1_005_000)
            .unwrap();
        // b: 5 s of its window left; c was present: a full window.
        assert_eq!(restored.poll_timeout(), Some(5_000));
        let mut restored = restored;
        restored.handle_timeout(5_000);
        assert!(restored.unacked(&b).is_empty());
        assert_eq!(restored.unacked(&c).len(), 1);
    }

    #[test]
    fn damaged_snapshots_are_refused() {
        let mut alice = session_with(&["b"]);
        alice.send(mid(1), "x".into(), 0, 0).unwrap();
        let good = alice.snapshot(0, 0);
        let mut wrong_version = good.clone();
        wrong_version.version = 99;
        assert_eq!(
            ChatSession::new().restore(wrong_version, 0, 0).unwrap_err(),
            SnapshotError::Version(99)
        );
        let mut unnumbered = good.clone();
        unnumbered.links[0].next_seq = 1;
        assert!(matches!(
            ChatSession::new().restore(unnumbered, 0, 0),
            Err(SnapshotError::Invalid(_))
        ));
        let mut too_long = good.clone();
        too_long.links[0].outbox[0].text = "x".repeat(MAX_CHAT_TEXT_BYTES + 1);
        assert!(ChatSession::new().restore(too_long, 0, 0).is_err());
        assert!(ChatSession::new().restore(good, 0, 0).is_ok());
    }

    #[test]
    fn generation_moves_with_what_a_snapshot_holds() {
        let a = pid("a");
        let mut bob = session_with(&["a"]);
        let g = bob.generation();
        bob.handle_timeout(1);
        assert_eq!(
            bob.generation(),
            g,
            "a timer with nothing due changes nothing"
        );
        feed(&mut bob, &a, vec![chat(1, 1, "one")], 2);
        assert!(bob.generation() > g);
    }

    /// A tiny deterministic PRNG (xorshift64*), so the test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    #[test]
    fn lossy_duplicating_reordering_network_still_delivers_everything_once_in_order() {
        let (a, b) = (pid("a"), pid("b"));
        let mut alice = session_with(&["b"]);
        let mut bob = session_with(&["a"]);
        let mut rng = Rng(0x1234_5678);
        let mut now: Millis = 0;
        let mut wire: Vec<(bool, Frame)> = Vec::new(); // (to_bob, frame)
        let mut shown = Vec::new();
        let mut delivered = 0;
        let total = 200u8;
        let mut next = 1u8;
        for _round in 0..20_000 {
            if next <= total && rng.chance(30) {
                alice.send(mid(next), format!("m{next}"), 0, now).unwrap();
                next += 1;
            }
            for o in drain(&mut alice) {
                match o {
                    ChatOutput::Send { to, frame } if to == b => wire.push((true, frame)),
                    ChatOutput::Status {
                        status: MessageStatus::Delivered,
                        ..
                    } => delivered += 1,
                    _ => {}
                }
            }
            for o in drain(&mut bob) {
                match o {
                    ChatOutput::Send { to, frame } if to == a => wire.push((false, frame)),
                    ChatOutput::Deliver { message, .. } => shown.push(message.text),
                    _ => {}
                }
            }
            if !wire.is_empty() {
                // Pick a frame, mostly the oldest: reorders some.
                let i = if rng.chance(20) {
                    (rng.next() as usize) % wire.len()
                } else {
                    0
                };
                let (to_bob, frame) = wire.remove(i);
                if rng.chance(15) {
                    // lost
                } else {
                    let copies = if rng.chance(10) { 2 } else { 1 };
                    for _ in 0..copies {
                        if to_bob {
                            bob.handle_frame(&a, frame.clone(), now).unwrap();
                        } else {
                            alice.handle_frame(&b, frame.clone(), now).unwrap();
                        }
                    }
                }
            }
            now += 100;
            if alice.poll_timeout().is_some_and(|t| t <= now) {
                alice.handle_timeout(now);
            }
            if next > total && delivered == total as usize && wire.is_empty() {
                break;
            }
        }
        let expected: Vec<String> = (1..=total).map(|n| format!("m{n}")).collect();
        assert_eq!(shown, expected);
        assert_eq!(delivered, total as usize);
        assert!(alice.unacked(&b).is_empty());
    }
}
