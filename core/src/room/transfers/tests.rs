//! Two [`Transfers`] machines, a sender's and a receiver's, wired together
//! on a virtual clock: frames cross the wire encoded (as on a data
//! channel) unless the wire is cut; reads come from a file in memory and
//! writes go to a partial file in memory.

use parlor_protocol::{CancelReason, FileOffer, Frame, PeerId, TransferId};

use super::*;
use crate::room::path::GoneReason;

const CHUNK: usize = 1000;

fn config() -> TransferConfig {
    TransferConfig {
        chunk_size: CHUNK,
        high_watermark: 8 * CHUNK as u64,
        low_watermark: 2 * CHUNK as u64,
        max_unconfirmed: 16 * CHUNK as u64,
        progress_every: 4 * CHUNK as u64,
    }
}

fn peer(name: &str) -> PeerId {
    PeerId(name.into())
}

fn file(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn offer_of(id: u64, data: &[u8]) -> FileOffer {
    FileOffer {
        transfer: TransferId(id),
        name: "f.bin".into(),
        size: data.len() as u64,
        mime: "application/octet-stream".into(),
        hash: *blake3::hash(data).as_bytes(),
    }
}

/// What the receiver's driver does with an offer.
#[derive(Clone, Copy, PartialEq)]
enum OnOffer {
    Accept,
    /// Accept from what the partial file holds (a driver that resumes).
    Resume,
    Ask,
}

struct Side {
    me: PeerId,
    t: Transfers,
    /// The file we send.
    file: Vec<u8>,
    /// The partial file we receive into.
    part: Vec<u8>,
    on_offer: OnOffer,
    /// Store requests not yet answered (the driver answers `stored`
    /// itself unless `hold_store`).
    hold_store: bool,
    stores: Vec<(PeerId, TransferId)>,
    finished: Vec<(TransferKey, Result<(), TransferError>)>,
    offered: Vec<FileOffer>,
    sent: Vec<Frame>,
    away: Vec<TransferId>,
    resumed: Vec<(TransferId, u64)>,
    progress: usize,
}

impl Side {
    fn new(me: &str, file: Vec<u8>) -> Self {
        Self {
            me: peer(me),
            t: Transfers::new(config()),
            file,
            part: Vec::new(),
            on_offer: OnOffer::Accept,
            hold_store: false,
            stores: Vec::new(),
            finished: Vec::new(),
            offered: Vec::new(),
            sent: Vec::new(),
            away: Vec::new(),
            resumed: Vec::new(),
            progress: 0,
        }
    }

    /// Drains outputs; frames for the other side are returned.
    fn drain(&mut self, now: Millis) -> Vec<Frame> {
        let mut wire = Vec::new();
        for _ in 0..100_000 {
            let Some(out) = self.t.poll_output() else {
                return wire;
            };
            match out {
                TransferOutput::Send { frame, .. } => {
                    self.sent.push(frame.clone());
                    wire.push(frame);
                }
                TransferOutput::Read { id, offset, len } => {
                    let start = offset as usize;
                    let data = self.file[start..start + len].to_vec();
                    self.t.chunk_read(id, offset, data, now);
                }
                TransferOutput::Write { offset, data, .. } => {
                    let start = offset as usize;
                    assert_eq!(start, self.part.len(), "writes are in order");
                    self.part.extend_from_slice(&data);
                }
                TransferOutput::Offered { peer, offer } => {
                    self.offered.push(offer.clone());
                    match self.on_offer {
                        OnOffer::Accept => self.t.accept(&peer, offer.transfer, now),
                        OnOffer::Resume => {
                            let have = self.part.len().min(offer.size as usize);
                            let mut prefix = blake3::Hasher::new();
                            prefix.update(&self.part[..have]);
                            self.t
                                .accept_from(&peer, offer.transfer, have as u64, prefix, now);
                        }
                        OnOffer::Ask => {}
                    }
                }
                TransferOutput::Progress { .. } => self.progress += 1,
                TransferOutput::Store { peer, id, hash } => {
                    assert_eq!(&hash, blake3::hash(&self.part).as_bytes());
                    assert!(
                        !self
                            .sent
                            .iter()
                            .any(|f| matches!(f, Frame::FileVerified { .. })),
                        "FileVerified must wait for the file to be stored"
                    );
                    if self.hold_store {
                        self.stores.push((peer, id));
                    } else {
                        self.t.stored(&peer, id);
                    }
                }
                TransferOutput::Away { id } => self.away.push(id),
                TransferOutput::Resumed { id, from } => self.resumed.push((id, from)),
                TransferOutput::Finished { key, result } => self.finished.push((key, result)),
                TransferOutput::SendProgress { .. } => {}
            }
        }
        panic!("outputs never ran dry");
    }
}

/// The sender `a` (peer "a") and the receiver `b` (peer "b").
struct Pair {
    a: Side,
    b: Side,
    now: Millis,
    /// Frames on the wire are lost while cut.
    cut: bool,
}

impl Pair {
    fn new(len: usize) -> Self {
        Self {
            a: Side::new("a", file(len)),
            b: Side::new("b", Vec::new()),
            now: 1_000,
            cut: false,
        }
    }

    /// Both sides' file paths are up (a new link: `path_changed` as given).
    fn up(&mut self, path_changed: bool) {
        let (a, b) = (self.a.me.clone(), self.b.me.clone());
        let now = self.now;
        self.a.t.on_path(
            &PathOutput::FilesUp {
                peer: b,
                path_changed,
            },
            0,
            now,
        );
        self.b.t.on_path(
            &PathOutput::FilesUp {
                peer: a,
                path_changed,
            },
            0,
            now,
        );
    }

    fn send(&mut self, id: u64) {
        let offer = offer_of(id, &self.a.file);
        let to = self.b.me.clone();
        self.a.t.send(to, offer, self.now);
    }

    /// Runs until quiet, at most `rounds` exchanges; each round moves the
    /// clock 10 ms and reports an empty transport buffer to the sender.
    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.now += 10;
            let now = self.now;
            let to_b = self.a.drain(now);
            let to_a = self.b.drain(now);
            let quiet = to_b.is_empty() && to_a.is_empty();
            if !self.cut {
                let (a, b) = (self.a.me.clone(), self.b.me.clone());
                for frame in to_b {
                    let frame = Frame::decode(&frame.encode()).expect("frames survive the wire");
                    self.b.t.handle_frame(&a, frame, now);
                }
                for frame in to_a {
                    let frame = Frame::decode(&frame.encode()).expect("frames survive the wire");
                    self.a.t.handle_frame(&b, frame, now);
                }
            }
            let b = self.b.me.clone();
            self.a.t.buffered(&b, 0, now);
            if quiet && self.a.t.poll_output().is_none() && self.b.t.poll_output().is_none() {
                return;
            }
        }
    }

    fn a_finished_ok(&self, id: u64) -> bool {
        self.a
            .finished
            .iter()
            .any(|(k, r)| *k == TransferKey::Outgoing(TransferId(id)) && r.is_ok())
    }

    fn b_finished_ok(&self, id: u64) -> bool {
        let key = TransferKey::Incoming(self.a.me.clone(), TransferId(id));
        self.b.finished.iter().any(|(k, r)| *k == key && r.is_ok())
    }
}

#[test]
fn a_file_arrives_verified_and_both_sides_finish_once() {
    let mut p = Pair::new(10 * CHUNK + 123);
    p.up(false);
    p.send(1);
    p.run(1_000);
    assert_eq!(p.b.part, p.a.file);
    assert!(p.a_finished_ok(1));
    assert!(p.b_finished_ok(1));
    assert_eq!(p.a.finished.len(), 1);
    assert_eq!(p.b.finished.len(), 1);
    assert_eq!(p.a.t.outgoing_len(), 0);
    assert!(!p.b.t.has_incoming());
}

#[test]
fn an_offer_made_before_the_path_is_up_goes_out_when_it_is() {
    let mut p = Pair::new(3 * CHUNK);
    p.send(1);
    p.run(10);
    assert!(
        p.b.offered.is_empty(),
        "nothing is sent before files are up"
    );
    p.up(false);
    p.run(1_000);
    assert_eq!(p.b.offered.len(), 1);
    assert!(p.a_finished_ok(1));
}

#[test]
fn file_verified_waits_until_the_file_is_stored() {
    let mut p = Pair::new(5 * CHUNK);
    p.b.hold_store = true;
    p.up(false);
    p.send(1);
    p.run(1_000);
    assert_eq!(p.b.stores.len(), 1);
    assert!(!p.a_finished_ok(1), "the sender has not heard verified yet");
    assert!(p.b.t.has_incoming(), "a transfer being stored is under way");
    let (from, id) = p.b.stores.pop().unwrap();
    p.b.t.stored(&from, id);
    p.run(100);
    assert!(p.a_finished_ok(1));
    assert!(p.b_finished_ok(1));
}

#[test]
fn a_file_that_cannot_be_stored_is_cancelled_never_verified() {
    let mut p = Pair::new(5 * CHUNK);
    p.b.hold_store = true;
    p.up(false);
    p.send(1);
    p.run(1_000);
    let (from, id) = p.b.stores.pop().unwrap();
    p.b.t.store_failed(&from, id, "disk full".into());
    p.run(100);
    assert!(
        !p.b.sent
            .iter()
            .any(|f| matches!(f, Frame::FileVerified { .. }))
    );
    let (_, result) = p.a.finished.last().unwrap();
    assert!(
        matches!(result, Err(TransferError::CancelledByPeer(CancelReason::StorageFailed(w))) if w == "disk full"),
        "{result:?}"
    );
    // A late repeat of the offer gets the same answer, not a second run.
    let offer = offer_of(1, &p.a.file);
    p.b.t
        .handle_frame(&p.a.me.clone(), Frame::FileOffer(offer), p.now);
    let again = p.b.drain(p.now);
    assert!(
        matches!(again.as_slice(), [Frame::FileCancel { .. }]),
        "{again:?}"
    );
    assert_eq!(p.b.offered.len(), 1);
}

#[test]
fn a_repeated_offer_of_a_verified_file_is_answered_verified_again() {
    // The sender's peer went away just as the receiver verified: the
    // verification was lost, and when the receiver is back the sender
    // offers the file again. It must finish, without a second transfer.
    let mut p = Pair::new(6 * CHUNK);
    p.up(false);
    p.send(1);
    // Run until the receiver stored it, then cut before FileVerified crosses.
    for _ in 0..1_000 {
        p.run(1);
        if p.b_finished_ok(1) {
            break;
        }
        let done_out = p.a.sent.iter().any(|f| matches!(f, Frame::FileDone { .. }));
        if done_out {
            p.cut = true;
        }
    }
    p.run(10);
    assert!(p.b_finished_ok(1));
    assert!(!p.a_finished_ok(1));
    // The receiver goes away and comes back.
    let b = p.b.me.clone();
    p.a.t.on_path(
        &PathOutput::Gone {
            peer: b,
            reason: GoneReason::Left,
        },
        0,
        p.now,
    );
    p.a.drain(p.now);
    assert_eq!(p.a.away, vec![TransferId(1)]);
    p.cut = false;
    p.up(true);
    p.run(100);
    assert!(p.a_finished_ok(1));
    assert_eq!(p.b.offered.len(), 1, "never offered to the user twice");
    assert_eq!(
        p.b.finished.len(),
        1,
        "the receiver finished once: {:?}",
        p.b.finished
    );
}

#[test]
fn a_lost_verification_after_a_path_change_is_repeated() {
    let mut p = Pair::new(6 * CHUNK);
    p.up(false);
    p.send(1);
    for _ in 0..1_000 {
        if p.a.sent.iter().any(|f| matches!(f, Frame::FileDone { .. })) {
            // Everything is out: lose the receiver's answers from here on.
            break;
        }
        p.run(1);
    }
    // Deliver FileDone (and the last chunks) to b, but lose what b answers.
    let now = p.now + 10;
    let to_b = p.a.drain(now);
    for frame in to_b {
        p.b.t.handle_frame(&peer("a"), frame, now);
    }
    p.b.drain(now);
    assert!(p.b_finished_ok(1));
    assert!(!p.a_finished_ok(1));
    // A new path: the sender sends FileDone again, the receiver repeats
    // FileVerified.
    p.up(true);
    p.run(100);
    assert!(p.a_finished_ok(1));
}

#[test]
fn a_receiver_that_leaves_mid_way_resumes_from_what_it_stored() {
    let mut p = Pair::new(20 * CHUNK);
    p.b.on_offer = OnOffer::Resume;
    p.up(false);
    p.send(1);
    for _ in 0..1_000 {
        p.run(1);
        if p.b.part.len() >= 8 * CHUNK {
            break;
        }
    }
    let stored = p.b.part.len();
    assert!((8 * CHUNK..20 * CHUNK).contains(&stored));
    // b's page reloads: a fresh machine (the partial file stays).
    let (a, b) = (p.a.me.clone(), p.b.me.clone());
    p.a.t
        .on_path(&PathOutput::PeerRestarted { peer: b }, 0, p.now);
    p.a.drain(p.now);
    assert_eq!(p.a.away, vec![TransferId(1)]);
    p.b.t = Transfers::new(config());
    p.b.part.truncate(stored);
    p.up(true);
    p.run(1_000);
    assert_eq!(p.b.part, p.a.file);
    assert!(p.a_finished_ok(1));
    assert!(p.b_finished_ok(1));
    assert_eq!(p.a.resumed, vec![(TransferId(1), stored as u64)]);
    let _ = a;
}

#[test]
fn incoming_transfers_of_a_peer_that_left_fail_with_the_reason() {
    let mut p = Pair::new(20 * CHUNK);
    p.up(false);
    p.send(1);
    p.run(3);
    let a = p.a.me.clone();
    p.b.t.on_path(
        &PathOutput::Gone {
            peer: a,
            reason: GoneReason::Left,
        },
        0,
        p.now,
    );
    p.b.drain(p.now);
    let (key, result) = p.b.finished.last().unwrap();
    assert_eq!(*key, TransferKey::Incoming(peer("a"), TransferId(1)));
    assert_eq!(
        *result,
        Err(TransferError::PeerGone("left the room".into()))
    );
    assert!(!p.b.t.has_incoming());
}

#[test]
fn a_peer_that_does_not_come_back_fails_our_transfers_to_it() {
    let mut p = Pair::new(20 * CHUNK);
    p.up(false);
    p.send(1);
    p.run(3);
    let b = p.b.me.clone();
    p.a.t.on_path(
        &PathOutput::Gone {
            peer: b.clone(),
            reason: GoneReason::ConnectionLost,
        },
        0,
        p.now,
    );
    p.a.drain(p.now);
    assert!(p.a.t.is_away(TransferId(1)));
    p.a.t
        .on_path(&PathOutput::AwayExpired { peer: b }, 0, p.now);
    p.a.drain(p.now);
    let (_, result) = p.a.finished.last().unwrap();
    assert_eq!(
        *result,
        Err(TransferError::PeerGone("did not come back in time".into()))
    );
    assert_eq!(p.a.t.outgoing_len(), 0);
}

#[test]
fn a_refused_peer_loses_every_transfer_with_it() {
    let mut p = Pair::new(20 * CHUNK);
    p.up(false);
    p.send(1);
    p.run(3);
    let (a, b) = (p.a.me.clone(), p.b.me.clone());
    let refused = |peer| PathOutput::Refused {
        peer,
        why: "tampered".into(),
    };
    p.a.t.on_path(&refused(b), 0, p.now);
    p.b.t.on_path(&refused(a), 0, p.now);
    p.a.drain(p.now);
    p.b.drain(p.now);
    assert!(matches!(
        p.a.finished.last(),
        Some((_, Err(TransferError::PeerGone(_))))
    ));
    assert!(matches!(
        p.b.finished.last(),
        Some((_, Err(TransferError::PeerGone(_))))
    ));
    assert_eq!(p.a.t.outgoing_len(), 0);
    assert!(!p.b.t.has_incoming());
}

#[test]
fn frames_are_routed_by_peer_and_transfer() {
    let mut p = Pair::new(5 * CHUNK);
    p.b.on_offer = OnOffer::Ask;
    p.up(false);
    p.send(1);
    p.run(10);
    assert_eq!(p.b.offered.len(), 1);
    // A third peer answers our transfer: not its business.
    let stranger = peer("c");
    let took = p.a.t.handle_frame(
        &stranger,
        Frame::FileAccept {
            transfer: TransferId(1),
            offset: 0,
        },
        p.now,
    );
    assert!(!took);
    assert_eq!(
        p.a.t.sender(TransferId(1)).unwrap().state(),
        SenderState::Offered
    );
    // A chunk of a transfer nobody offered is dropped.
    let took = p.b.t.handle_frame(
        &stranger,
        Frame::Chunk {
            transfer: TransferId(1),
            offset: 0,
            data: vec![1; 10],
        },
        p.now,
    );
    assert!(!took);
    // The same id from two peers is two transfers.
    let other = offer_of(1, &file(10));
    p.b.t
        .handle_frame(&stranger, Frame::FileOffer(other), p.now);
    p.b.drain(p.now);
    assert_eq!(p.b.offered.len(), 2);
    assert!(p.b.t.receiver(&stranger, TransferId(1)).is_some());
    assert!(p.b.t.receiver(&peer("a"), TransferId(1)).is_some());
}

#[test]
fn a_repeated_offer_while_receiving_is_not_shown_again() {
    let mut p = Pair::new(20 * CHUNK);
    p.up(false);
    p.send(1);
    p.run(3);
    let offer = offer_of(1, &p.a.file);
    p.b.t
        .handle_frame(&peer("a"), Frame::FileOffer(offer), p.now);
    p.run(1_000);
    assert_eq!(p.b.offered.len(), 1);
    assert!(p.a_finished_ok(1));
}

#[test]
fn progress_is_shown_a_few_times_per_second_not_per_chunk() {
    let mut p = Pair::new(200 * CHUNK);
    p.up(false);
    p.send(1);
    p.run(10_000);
    assert!(p.a_finished_ok(1));
    // 200 chunks, confirmations every 4: 50 receiver progress steps and 50
    // sender ones, over a run of (each round 10 ms) well under a second.
    let rounds_ms = p.now - 1_000;
    // Per side: the first, one per interval, and the ends (the last
    // confirmation and the verification both reach the total).
    let bound = 2 * (rounds_ms / PROGRESS_INTERVAL_MS + 3) as usize;
    assert!(
        p.a.progress + p.b.progress <= bound,
        "{} + {} progress updates in {rounds_ms} ms",
        p.a.progress,
        p.b.progress
    );
    assert!(p.b.progress >= 1 && p.a.progress >= 1);
}

#[test]
fn started_over_parks_ours_and_fails_theirs() {
    let mut p = Pair::new(20 * CHUNK);
    p.up(false);
    p.send(1);
    p.run(3);
    p.a.t.on_path(&PathOutput::StartedOver, 0, p.now);
    p.a.drain(p.now);
    assert!(p.a.t.is_away(TransferId(1)));
    p.b.t.on_path(&PathOutput::StartedOver, 0, p.now);
    p.b.drain(p.now);
    assert!(!p.b.t.has_incoming());
}

#[test]
fn the_ended_memory_is_bounded() {
    let mut b = Side::new("b", Vec::new());
    b.on_offer = OnOffer::Ask;
    let a = peer("a");
    for id in 0..(ENDED_MEMORY as u64 + 50) {
        let offer = offer_of(id, b"x");
        b.t.handle_frame(&a, Frame::FileOffer(offer), 0);
        b.t.decline(&a, TransferId(id), "no".into(), 0);
        b.drain(0);
    }
    assert_eq!(b.t.ended.len(), ENDED_MEMORY);
    assert_eq!(b.t.ended_order.len(), ENDED_MEMORY);
}
