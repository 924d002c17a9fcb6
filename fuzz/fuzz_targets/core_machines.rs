//! Hostile peers against the core state machines: the input is read as a
//! script of frames (decoded from the fuzzer's bytes) and local events fed to
//! a ChatSession, a FileSender and a FileReceiver (peers leaving and coming
//! back, restarts from a snapshot included). Nothing may panic, the outputs
//! of every step stay bounded, and a session's own snapshot always restores.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor_core::{ChatSession, FileReceiver, FileSender, TransferConfig};
use parlor_protocol::{FileOffer, Frame, MessageId, PeerId, TransferId};

/// Outputs one step may produce; far above what any legitimate step yields.
const MAX_OUTPUTS_PER_STEP: usize = 10_000;

fuzz_target!(|data: &[u8]| {
    let offer = FileOffer {
        transfer: TransferId(7),
        name: "f".into(),
        size: 200_000,
        mime: String::new(),
        hash: [0; 32],
    };
    let config = TransferConfig { chunk_size: 1024, ..TransferConfig::default() };
    let mut chat = ChatSession::new();
    let peer = PeerId("p".into());
    chat.add_peer(peer.clone());
    chat.link_up(&peer, 0);
    let mut sender = FileSender::new(offer.clone(), config.clone(), 0);
    let mut receiver = FileReceiver::new(offer, config, 0);
    receiver.accept(0);

    let mut now = 0u64;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(tail.first().copied().unwrap_or(0));
        let body = tail.get(1..1 + len.min(tail.len().saturating_sub(1))).unwrap_or_default();
        rest = tail.get(1 + body.len()..).unwrap_or_default();
        now += u64::from(op);
        match op % 8 {
            0 => {
                if let Ok(frame) = Frame::decode(body) {
                    let _ = chat.handle_frame(&peer, frame, now);
                }
            }
            1 => {
                if let Ok(frame) = Frame::decode(body) {
                    sender.handle_frame(frame, now);
                }
            }
            2 => {
                if let Ok(frame) = Frame::decode(body) {
                    receiver.handle_frame(frame, now);
                }
            }
            3 => sender.buffered_amount(u64::from_le_bytes(pad(body))),
            4 => sender.chunk_read(u64::from_le_bytes(pad(body)), body.to_vec(), now),
            5 => {
                let _ = chat.send(MessageId([op; 16]), String::from_utf8_lossy(body).into_owned(), now, now);
            }
            6 => chat.handle_timeout(now),
            _ => match body.first().copied().unwrap_or(0) % 10 {
                0 => chat.link_down(&peer),
                1 => chat.link_up(&peer, now),
                2 => sender.cancel(),
                3 => receiver.cancel(),
                4 => chat.peer_left(&peer, now),
                5 => chat.add_peer(peer.clone()),
                6 => sender.peer_returned(),
                7 => sender.link_reset(),
                8 => receiver.link_reset(),
                _ => {
                    // A restart: the session's own snapshot always restores.
                    let snapshot = chat.snapshot(now, now);
                    chat = ChatSession::new()
                        .restore(snapshot, now, now)
                        .expect("a session's own snapshot restores");
                }
            },
        }
        assert!(std::iter::from_fn(|| chat.poll_output()).take(MAX_OUTPUTS_PER_STEP + 1).count() <= MAX_OUTPUTS_PER_STEP);
        assert!(std::iter::from_fn(|| sender.poll_output()).take(MAX_OUTPUTS_PER_STEP + 1).count() <= MAX_OUTPUTS_PER_STEP);
        assert!(std::iter::from_fn(|| receiver.poll_output()).take(MAX_OUTPUTS_PER_STEP + 1).count() <= MAX_OUTPUTS_PER_STEP);
    }
});

fn pad(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}
