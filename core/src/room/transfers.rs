//! Every file transfer of a room: a sans-IO state machine around the
//! per-transfer [`FileSender`]s and [`FileReceiver`]s.
//!
//! [`Transfers`] decides, once for the page and the CLI:
//!
//! - where a file frame goes: to the receiver of `(peer, transfer id)`, to
//!   our sender of that id (only if it sends to that peer), or nowhere;
//! - what a repeated frame of a transfer that already ended gets: a repeat
//!   of the offer of a file we verified is answered `FileAccept{size}` +
//!   `FileVerified` (the sender lost our first answer), a repeated
//!   `FileDone` another `FileVerified`, a repeated offer of one we declined
//!   or cancelled the same answer again; it never starts a second time;
//! - when `FileVerified` may leave: only after the driver made the file
//!   final ([`TransferOutput::Store`] → [`Transfers::stored`]); a file that
//!   could not be stored is cancelled instead, so the sender never hears
//!   "verified" for a file that is not there;
//! - what a path change does ([`Transfers::on_path`], fed every
//!   [`PathOutput`]): files up on a new path reset the transfers with that
//!   peer (`link_reset`); a peer gone or restarted fails its incoming
//!   transfers (what was stored stays, so the same offer resumes) and parks
//!   ours to it (`away`) until it is back (`peer_returned`, a fresh offer
//!   the receiver accepts from what it has) or the return window ends
//!   ([`PathOutput::AwayExpired`]); a refused peer fails everything;
//! - how often progress is shown ([`PROGRESS_INTERVAL_MS`]);
//! - what the path machine hears about sends ([`TransferOutput::SendProgress`]),
//!   so a path on which transfers stall is replaced.
//!
//! The driver reads and writes the files, carries frames, and asks the user;
//! nothing here does IO or reads a clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use parlor_protocol::{CancelReason, FileOffer, Frame, PeerId, TransferId};

use super::path::PathOutput;
use crate::Millis;
use crate::transfer::{
    FileReceiver, FileSender, Progress, ReceiverOutput, ReceiverState, SenderOutput, SenderState,
    TransferConfig, TransferError,
};

/// Progress of one transfer is reported at most this often (and always
/// when it reaches the end): a page that re-renders per chunk spends its
/// main thread on the DOM instead of the transfer.
pub const PROGRESS_INTERVAL_MS: Millis = 200;

/// How many ended incoming transfers are remembered, to answer late
/// repeats of their frames.
pub const ENDED_MEMORY: usize = 512;

/// Which transfer: ours to a peer (by id), or a peer's to us.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransferKey {
    /// We send; the id is ours, unique among our transfers.
    Outgoing(TransferId),
    /// `peer` sends us its transfer `id`.
    Incoming(PeerId, TransferId),
}

impl TransferKey {
    /// The transfer id.
    pub fn id(&self) -> TransferId {
        match self {
            Self::Outgoing(id) | Self::Incoming(_, id) => *id,
        }
    }
}

/// What the driver must do, drained with [`Transfers::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum TransferOutput {
    /// Send `frame` to `peer` on its file path. If that fails, call
    /// [`Transfers::send_failed`].
    Send {
        /// The addressee.
        peer: PeerId,
        /// The frame.
        frame: Frame,
    },
    /// Read `len` bytes at `offset` of our file `id`; then
    /// [`Transfers::chunk_read`] or [`Transfers::read_failed`].
    Read {
        /// Our transfer.
        id: TransferId,
        /// Where.
        offset: u64,
        /// How many bytes.
        len: usize,
    },
    /// Write `data` at `offset` of the partial file of `(peer, id)`; on an
    /// error, [`Transfers::write_failed`].
    Write {
        /// The sender.
        peer: PeerId,
        /// Its transfer.
        id: TransferId,
        /// Where.
        offset: u64,
        /// What.
        data: Vec<u8>,
    },
    /// `peer` offers a file: accept (perhaps from what a partial file holds),
    /// decline, or ask the user.
    Offered {
        /// The sender.
        peer: PeerId,
        /// The offer.
        offer: FileOffer,
    },
    /// How far a transfer is (at most every [`PROGRESS_INTERVAL_MS`]).
    Progress {
        /// The transfer.
        key: TransferKey,
        /// Where it stands.
        progress: Progress,
    },
    /// Every byte of `(peer, id)` arrived and the hash matches: make the
    /// file final, then [`Transfers::stored`] (or
    /// [`Transfers::store_failed`]). Only then does `FileVerified` leave.
    Store {
        /// The sender.
        peer: PeerId,
        /// Its transfer.
        id: TransferId,
        /// The verified BLAKE3 hash.
        hash: [u8; 32],
    },
    /// Our transfer `id` waits for its peer to come back (it left, or
    /// restarted); it is offered again when it is back.
    Away {
        /// Our transfer.
        id: TransferId,
    },
    /// Our transfer `id` goes on again: the receiver accepted from `from`.
    Resumed {
        /// Our transfer.
        id: TransferId,
        /// Where the receiver continues (what it had kept).
        from: u64,
    },
    /// A transfer ended: for incoming ones, `Ok` once stored.
    Finished {
        /// The transfer.
        key: TransferKey,
        /// How.
        result: Result<(), TransferError>,
    },
    /// Feed the path machine `PathInput::SendProgress` with these (a send
    /// that stops advancing makes it replace the path).
    SendProgress {
        /// The receiving peer.
        peer: PeerId,
        /// Bytes are owed a confirmation.
        waiting: bool,
        /// New bytes were confirmed since the last report.
        advanced: bool,
    },
}

#[derive(Debug)]
struct Outgoing {
    peer: PeerId,
    sender: FileSender,
    /// The peer is away: frames are not sent; offered again when it is back.
    away: bool,
    last_progress: Option<Millis>,
}

#[derive(Debug)]
enum Stage {
    /// Offered or receiving: the receiver decides.
    Open,
    /// Verified: the driver makes the file final; frames wait until then.
    Storing { held: Vec<Frame> },
}

#[derive(Debug)]
struct Incoming {
    receiver: FileReceiver,
    stage: Stage,
    last_progress: Option<Millis>,
}

/// How an incoming transfer ended, to answer late repeats of its frames.
#[derive(Debug, Clone)]
enum Ended {
    /// Stored and verified: the file's size.
    Verified(u64),
    /// Declined or cancelled here: the frame that said so.
    Refused(Frame),
    /// Cancelled by the sender, or broken: repeats are dropped.
    Dropped,
}

/// Every transfer of a room; see the module docs.
#[derive(Debug)]
pub struct Transfers {
    config: TransferConfig,
    outgoing: BTreeMap<TransferId, Outgoing>,
    incoming: BTreeMap<(PeerId, TransferId), Incoming>,
    ended: BTreeMap<(PeerId, TransferId), Ended>,
    ended_order: VecDeque<(PeerId, TransferId)>,
    /// Peers whose file path is up.
    up: BTreeSet<PeerId>,
    out: VecDeque<TransferOutput>,
}

impl Transfers {
    /// No transfers yet; new ones use `config`.
    pub fn new(config: TransferConfig) -> Self {
        Self {
            config,
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            ended: BTreeMap::new(),
            ended_order: VecDeque::new(),
            up: BTreeSet::new(),
            out: VecDeque::new(),
        }
    }

    /// The config new transfers use.
    pub fn config(&self) -> &TransferConfig {
        &self.config
    }

    /// The next thing to do, if any. Drain until `None` after every call.
    pub fn poll_output(&mut self) -> Option<TransferOutput> {
        self.out.pop_front()
    }

    /// Offers `offer` (its id unique among ours) to `peer`. The offer goes
    /// out now if the peer's file path is up, else once it is.
    pub fn send(&mut self, peer: PeerId, offer: FileOffer, now: Millis) {
        let id = offer.transfer;
        let sender = FileSender::new(offer, self.config.clone(), now);
        self.outgoing.insert(
            id,
            Outgoing {
                peer,
                sender,
                away: false,
                last_progress: None,
            },
        );
        self.drive_outgoing(id, now, |_| {});
    }

    /// The bytes asked for by [`TransferOutput::Read`].
    pub fn chunk_read(&mut self, id: TransferId, offset: u64, data: Vec<u8>, now: Millis) {
        self.drive_outgoing(id, now, |s| s.chunk_read(offset, data, now));
    }

    /// Reading our file `id` failed: it is cancelled.
    pub fn read_failed(&mut self, id: TransferId, why: String, now: Millis) {
        self.drive_outgoing(id, now, |s| s.read_failed(why));
    }

    /// The user cancelled our transfer `id`.
    pub fn cancel_outgoing(&mut self, id: TransferId, now: Millis) {
        self.drive_outgoing(id, now, FileSender::cancel);
    }

    /// `peer`'s file path buffers `amount` bytes (after the driver sent
    /// frames, on a buffered-amount-low event, when the relay drained).
    pub fn buffered(&mut self, peer: &PeerId, amount: u64, now: Millis) {
        for id in self.outgoing_ids(peer) {
            self.drive_outgoing(id, now, |s| s.buffered_amount(amount));
        }
    }

    /// A frame to `peer` could not be sent: the rest of what is queued for
    /// it is dropped (the path is broken; receivers ask to resume when a
    /// path is back). Feed `PathInput::SendFailed` to the path machine too.
    pub fn send_failed(&mut self, peer: &PeerId) {
        self.out
            .retain(|o| !matches!(o, TransferOutput::Send { peer: p, .. } if p == peer));
    }

    /// Accepts `(peer, id)` from the first byte.
    pub fn accept(&mut self, peer: &PeerId, id: TransferId, now: Millis) {
        self.drive_incoming(peer, id, now, |r| r.accept(now));
    }

    /// Accepts `(peer, id)` from `offset`, the first `offset` bytes being
    /// stored already and hashed into `prefix` (resume).
    pub fn accept_from(
        &mut self,
        peer: &PeerId,
        id: TransferId,
        offset: u64,
        prefix: blake3::Hasher,
        now: Millis,
    ) {
        self.drive_incoming(peer, id, now, |r| r.accept_from(offset, prefix, now));
    }

    /// Declines `(peer, id)` (or cancels it, once accepted).
    pub fn decline(&mut self, peer: &PeerId, id: TransferId, reason: String, now: Millis) {
        self.drive_incoming(peer, id, now, |r| r.decline(reason));
    }

    /// The user cancelled `(peer, id)`.
    pub fn cancel_incoming(&mut self, peer: &PeerId, id: TransferId, now: Millis) {
        self.drive_incoming(peer, id, now, FileReceiver::cancel);
    }

    /// Writing `(peer, id)` failed: it is cancelled.
    pub fn write_failed(&mut self, peer: &PeerId, id: TransferId, why: String, now: Millis) {
        self.drive_incoming(peer, id, now, |r| r.write_failed(why));
    }

    /// The file of `(peer, id)` is final: its `FileVerified` leaves now.
    pub fn stored(&mut self, peer: &PeerId, id: TransferId) {
        let key = (peer.clone(), id);
        let Some(t) = self.incoming.remove(&key) else {
            return;
        };
        let Stage::Storing { held } = t.stage else {
            self.incoming.insert(key, t);
            return;
        };
        for frame in held {
            self.send_frame(peer, frame);
        }
        self.remember(key, Ended::Verified(t.receiver.offer().size));
        self.out.push_back(TransferOutput::Finished {
            key: TransferKey::Incoming(peer.clone(), id),
            result: Ok(()),
        });
    }

    /// The verified file of `(peer, id)` could not be made final: the
    /// sender hears it was not stored (never "verified").
    pub fn store_failed(&mut self, peer: &PeerId, id: TransferId, why: String) {
        let key = (peer.clone(), id);
        match self.incoming.get(&key) {
            Some(Incoming {
                stage: Stage::Storing { .. },
                ..
            }) => {}
            _ => return,
        }
        self.incoming.remove(&key);
        let reason = CancelReason::StorageFailed(why.chars().take(200).collect());
        let cancel = Frame::FileCancel {
            transfer: id,
            reason: reason.clone(),
        };
        self.send_frame(peer, cancel.clone());
        self.remember(key, Ended::Refused(cancel));
        self.out.push_back(TransferOutput::Finished {
            key: TransferKey::Incoming(peer.clone(), id),
            result: Err(TransferError::CancelledLocally(reason)),
        });
    }

    /// A file frame (not chat) from `peer`: routed to the transfer it
    /// belongs to; see the module docs for repeats of ended ones. Returns
    /// whether some transfer took it.
    pub fn handle_frame(&mut self, peer: &PeerId, frame: Frame, now: Millis) -> bool {
        let Some(id) = frame.transfer_id() else {
            return false;
        };
        let key = (peer.clone(), id);
        let to_receiver = matches!(
            frame,
            Frame::FileOffer(_) | Frame::Chunk { .. } | Frame::FileDone { .. }
        ) || (matches!(frame, Frame::FileCancel { .. })
            && self.incoming.contains_key(&key));
        if !to_receiver {
            if self.outgoing.get(&id).is_none_or(|t| &t.peer != peer) {
                return false;
            }
            self.drive_outgoing(id, now, |s| s.handle_frame(frame, now));
            return true;
        }
        if let Some(t) = self.incoming.get(&key) {
            if matches!(t.stage, Stage::Storing { .. }) {
                return true; // the file is being made final; our answer follows
            }
            self.drive_incoming(peer, id, now, |r| r.handle_frame(frame, now));
            return true;
        }
        if let Some(ended) = self.ended.get(&key).cloned() {
            self.answer_ended(peer, id, &frame, ended);
            return true;
        }
        let Frame::FileOffer(offer) = frame else {
            return false; // a chunk of a transfer we do not know
        };
        if let Err(e) = Frame::FileOffer(offer.clone()).validate() {
            // Broken offers are refused with a reason, never shown.
            let decline = Frame::FileDecline {
                transfer: id,
                reason: format!("invalid offer: {e}").chars().take(200).collect(),
            };
            self.send_frame(peer, decline);
            return true;
        }
        let receiver = FileReceiver::new(offer.clone(), self.config.clone(), now);
        self.incoming.insert(
            key,
            Incoming {
                receiver,
                stage: Stage::Open,
                last_progress: None,
            },
        );
        self.out.push_back(TransferOutput::Offered {
            peer: peer.clone(),
            offer,
        });
        true
    }

    /// What a path change means for the transfers; feed every
    /// [`PathOutput`] here. `buffered` is the bytes the peer's (new) file
    /// path buffers, for [`PathOutput::FilesUp`].
    pub fn on_path(&mut self, output: &PathOutput, buffered: u64, now: Millis) {
        match output {
            PathOutput::FilesUp { peer, path_changed } => {
                self.files_up(peer, *path_changed, buffered, now)
            }
            PathOutput::PeerRestarted { peer } => self.peer_away(peer, "restarted", now),
            PathOutput::Gone { peer, reason } => self.peer_away(peer, reason.as_str(), now),
            PathOutput::Refused { peer, .. } => self.forget_peer(peer, "was refused"),
            PathOutput::AwayExpired { peer } => {
                for id in self.outgoing_ids(peer) {
                    if self.outgoing.get(&id).is_some_and(|t| t.away) {
                        self.end_outgoing(id, "did not come back in time");
                    }
                }
            }
            PathOutput::StartedOver => {
                let peers: BTreeSet<PeerId> = (self.outgoing.values().map(|t| t.peer.clone()))
                    .chain(self.incoming.keys().map(|(p, _)| p.clone()))
                    .collect();
                for peer in peers {
                    self.peer_away(&peer, "is unknown to our new identity", now);
                }
                self.up.clear();
            }
            _ => {}
        }
    }

    /// Whether any incoming transfer is under way (offered, receiving or
    /// being stored).
    pub fn has_incoming(&self) -> bool {
        !self.incoming.is_empty()
    }

    /// Our transfers under way (sending, or waiting for their peer).
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Our transfer `id`'s sender, while it is under way.
    pub fn sender(&self, id: TransferId) -> Option<&FileSender> {
        self.outgoing.get(&id).map(|t| &t.sender)
    }

    /// The receiver of `(peer, id)`, while it is under way.
    pub fn receiver(&self, peer: &PeerId, id: TransferId) -> Option<&FileReceiver> {
        self.incoming.get(&(peer.clone(), id)).map(|t| &t.receiver)
    }

    /// Whether our transfer `id` waits for its peer to come back.
    pub fn is_away(&self, id: TransferId) -> bool {
        self.outgoing.get(&id).is_some_and(|t| t.away)
    }

    /// The peers we send to.
    pub fn receiving_peers(&self) -> BTreeSet<PeerId> {
        self.outgoing.values().map(|t| t.peer.clone()).collect()
    }

    fn outgoing_ids(&self, peer: &PeerId) -> Vec<TransferId> {
        (self.outgoing.iter())
            .filter(|(_, t)| &t.peer == peer)
            .map(|(id, _)| *id)
            .collect()
    }

    fn incoming_ids(&self, peer: &PeerId) -> Vec<TransferId> {
        (self.incoming.iter())
            .filter(|((p, _), t)| p == peer && matches!(t.stage, Stage::Open))
            .map(|((_, id), _)| *id)
            .collect()
    }

    fn files_up(&mut self, peer: &PeerId, path_changed: bool, buffered: u64, now: Millis) {
        let fresh = self.up.insert(peer.clone());
        for id in self.incoming_ids(peer) {
            if path_changed || fresh {
                self.drive_incoming(peer, id, now, FileReceiver::link_reset);
            }
        }
        for id in self.outgoing_ids(peer) {
            let Some(t) = self.outgoing.get_mut(&id) else {
                continue;
            };
            let away = std::mem::take(&mut t.away);
            self.drive_outgoing(id, now, |s| {
                if away {
                    s.peer_returned();
                } else if path_changed || fresh {
                    s.link_reset();
                }
                s.buffered_amount(buffered);
            });
        }
    }

    /// `peer` left or restarted: its transfers to us stop (stored data
    /// stays), ours to it wait for it.
    fn peer_away(&mut self, peer: &PeerId, why: &str, now: Millis) {
        self.up.remove(peer);
        self.send_failed(peer);
        self.fail_incoming(peer, why);
        for id in self.outgoing_ids(peer) {
            if let Some(t) = self.outgoing.get_mut(&id)
                && !std::mem::replace(&mut t.away, true)
            {
                self.out.push_back(TransferOutput::Away { id });
            }
            self.report_send(id, now, None);
        }
    }

    fn forget_peer(&mut self, peer: &PeerId, why: &str) {
        self.up.remove(peer);
        self.send_failed(peer);
        self.fail_incoming(peer, why);
        for id in self.outgoing_ids(peer) {
            self.end_outgoing(id, why);
        }
    }

    fn fail_incoming(&mut self, peer: &PeerId, why: &str) {
        for id in self.incoming_ids(peer) {
            self.incoming.remove(&(peer.clone(), id));
            self.out.push_back(TransferOutput::Finished {
                key: TransferKey::Incoming(peer.clone(), id),
                result: Err(TransferError::PeerGone(why.to_owned())),
            });
        }
    }

    fn end_outgoing(&mut self, id: TransferId, why: &str) {
        let Some(t) = self.outgoing.remove(&id) else {
            return;
        };
        self.out.push_back(TransferOutput::SendProgress {
            peer: t.peer,
            waiting: false,
            advanced: false,
        });
        self.out.push_back(TransferOutput::Finished {
            key: TransferKey::Outgoing(id),
            result: Err(TransferError::PeerGone(why.to_owned())),
        });
    }

    fn answer_ended(&mut self, peer: &PeerId, id: TransferId, frame: &Frame, ended: Ended) {
        match (frame, ended) {
            (Frame::FileOffer(offer), Ended::Verified(size)) if offer.size == size => {
                self.send_frame(
                    peer,
                    Frame::FileAccept {
                        transfer: id,
                        offset: size,
                    },
                );
                self.send_frame(peer, Frame::FileVerified { transfer: id });
            }
            (Frame::FileDone { .. }, Ended::Verified(_)) => {
                self.send_frame(peer, Frame::FileVerified { transfer: id });
            }
            (Frame::FileOffer(_), Ended::Refused(answer)) => self.send_frame(peer, answer),
            _ => {}
        }
    }

    fn remember(&mut self, key: (PeerId, TransferId), ended: Ended) {
        if self.ended.insert(key.clone(), ended).is_none() {
            self.ended_order.push_back(key);
        }
        while self.ended_order.len() > ENDED_MEMORY {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }

    fn send_frame(&mut self, peer: &PeerId, frame: Frame) {
        self.out.push_back(TransferOutput::Send {
            peer: peer.clone(),
            frame,
        });
    }

    fn report_send(&mut self, id: TransferId, now: Millis, confirmed_before: Option<u64>) {
        let Some(t) = self.outgoing.get(&id) else {
            return;
        };
        let _ = now;
        let waiting = !t.away
            && self.up.contains(&t.peer)
            && matches!(
                t.sender.state(),
                SenderState::Sending | SenderState::AwaitingVerification
            );
        let advanced = confirmed_before.is_some_and(|before| t.sender.confirmed() > before);
        self.out.push_back(TransferOutput::SendProgress {
            peer: t.peer.clone(),
            waiting,
            advanced,
        });
    }

    /// Applies `input` to our transfer `id` and turns what its sender asks
    /// into outputs.
    fn drive_outgoing(&mut self, id: TransferId, now: Millis, input: impl FnOnce(&mut FileSender)) {
        let Some(t) = self.outgoing.get_mut(&id) else {
            return;
        };
        let confirmed_before = t.sender.confirmed();
        let was_offered = t.sender.state() == SenderState::Offered;
        input(&mut t.sender);
        let sendable = !t.away && self.up.contains(&t.peer);
        let peer = t.peer.clone();
        let mut finished = None;
        while let Some(output) = t.sender.poll_output() {
            match output {
                // Not up (yet, or away): the offer is made again when it is.
                SenderOutput::Send(_) if !sendable => {}
                SenderOutput::Send(frame) => self.out.push_back(TransferOutput::Send {
                    peer: peer.clone(),
                    frame,
                }),
                SenderOutput::Read { offset, len } => {
                    self.out.push_back(TransferOutput::Read { id, offset, len })
                }
                SenderOutput::Progress(progress) => {
                    if throttle(&mut t.last_progress, &progress, now) {
                        self.out.push_back(TransferOutput::Progress {
                            key: TransferKey::Outgoing(id),
                            progress,
                        });
                    }
                }
                SenderOutput::Finished(result) => finished = Some(result),
            }
        }
        if was_offered && t.sender.state() != SenderState::Offered && t.sender.confirmed() > 0 {
            let from = t.sender.confirmed();
            self.out.push_back(TransferOutput::Resumed { id, from });
        }
        match finished {
            None => self.report_send(id, now, Some(confirmed_before)),
            Some(result) => {
                self.outgoing.remove(&id);
                self.out.push_back(TransferOutput::SendProgress {
                    peer,
                    waiting: false,
                    advanced: false,
                });
                self.out.push_back(TransferOutput::Finished {
                    key: TransferKey::Outgoing(id),
                    result,
                });
            }
        }
    }

    /// Applies `input` to the receiver of `(peer, id)` and turns what it
    /// asks into outputs.
    fn drive_incoming(
        &mut self,
        peer: &PeerId,
        id: TransferId,
        now: Millis,
        input: impl FnOnce(&mut FileReceiver),
    ) {
        let key = (peer.clone(), id);
        let Some(t) = self.incoming.get_mut(&key) else {
            return;
        };
        if matches!(t.stage, Stage::Storing { .. }) {
            return;
        }
        input(&mut t.receiver);
        let mut ended = None;
        let mut last_sent = None;
        while let Some(output) = t.receiver.poll_output() {
            match output {
                ReceiverOutput::Send(frame) => match &mut t.stage {
                    Stage::Storing { held } => held.push(frame),
                    Stage::Open => {
                        last_sent = Some(frame.clone());
                        self.out.push_back(TransferOutput::Send {
                            peer: peer.clone(),
                            frame,
                        });
                    }
                },
                ReceiverOutput::Write { offset, data } => {
                    self.out.push_back(TransferOutput::Write {
                        peer: peer.clone(),
                        id,
                        offset,
                        data,
                    })
                }
                ReceiverOutput::Progress(progress) => {
                    if throttle(&mut t.last_progress, &progress, now) {
                        self.out.push_back(TransferOutput::Progress {
                            key: TransferKey::Incoming(peer.clone(), id),
                            progress,
                        });
                    }
                }
                ReceiverOutput::Finished(Ok(hash)) => {
                    t.stage = Stage::Storing { held: Vec::new() };
                    self.out.push_back(TransferOutput::Store {
                        peer: peer.clone(),
                        id,
                        hash,
                    });
                }
                ReceiverOutput::Finished(Err(e)) => ended = Some(e),
            }
        }
        if let Some(e) = ended {
            let answer = match (last_sent, &e) {
                (Some(f @ (Frame::FileDecline { .. } | Frame::FileCancel { .. })), _) => {
                    Ended::Refused(f)
                }
                _ => Ended::Dropped,
            };
            debug_assert!(
                t.receiver.state() == ReceiverState::Finished,
                "a receiver that reported its end is finished"
            );
            self.incoming.remove(&key);
            self.remember(key, answer);
            self.out.push_back(TransferOutput::Finished {
                key: TransferKey::Incoming(peer.clone(), id),
                result: Err(e),
            });
        }
    }
}

/// Whether `progress` is worth showing now: the first, one at the end, or
/// [`PROGRESS_INTERVAL_MS`] after the last shown.
fn throttle(last: &mut Option<Millis>, progress: &Progress, now: Millis) -> bool {
    let due = match *last {
        None => true,
        Some(at) => now.saturating_sub(at) >= PROGRESS_INTERVAL_MS,
    };
    if due || progress.done >= progress.total {
        *last = Some(now);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests;
