//! How fast the sans-IO transfer machinery moves bytes, without any IO.
//!
//! `chunk_pipeline`: a 64 MiB file goes FileSender → `Frame::encode` →
//! `Frame::decode` → FileReceiver (BLAKE3 included) and back for the
//! receiver's frames, all in memory, for several chunk sizes. This is the CPU
//! cost per byte that a driver adds to the transport's; it helps choose
//! [`parlor_core::DEFAULT_CHUNK_SIZE`].
//!
//! `chat_round_trip`: one chat message sent, encoded, decoded, delivered,
//! acked and the ack handled, per iteration.
//!
//! Run with `cargo bench -p parlor-core --bench chunk_pipeline`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use parlor_core::{
    ChatOutput, ChatSession, FileReceiver, FileSender, ReceiverOutput, SenderOutput, TransferConfig,
};
use parlor_protocol::frame::MAX_CHUNK_BYTES;
use parlor_protocol::{FileOffer, Frame, MessageId, PeerId, TransferId};

const FILE_SIZE: usize = 64 * 1024 * 1024;
const CHUNK_SIZES: [usize; 4] = [16 * 1024, 32 * 1024, 48 * 1024, MAX_CHUNK_BYTES];

fn content(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x0123_4567_89ab_cdef;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn decode(bytes: &[u8]) -> Frame {
    Frame::decode(bytes).expect("frames we encoded decode")
}

/// Moves the whole file through a sender and a receiver; returns the bytes
/// written.
fn transfer(data: &[u8], offer: &FileOffer, chunk_size: usize) -> u64 {
    let config = TransferConfig {
        chunk_size,
        ..TransferConfig::default()
    };
    let mut sender = FileSender::new(offer.clone(), config.clone(), 0);
    let mut receiver = FileReceiver::new(offer.clone(), config, 0);
    receiver.accept(0);
    let mut to_receiver: VecDeque<Vec<u8>> = VecDeque::new();
    let mut to_sender: VecDeque<Vec<u8>> = VecDeque::new();
    let mut written = 0u64;
    let mut now = 0;
    loop {
        while let Some(out) = receiver.poll_output() {
            match out {
                ReceiverOutput::Send(frame) => to_sender.push_back(frame.encode()),
                ReceiverOutput::Write { data, .. } => written += black_box(data).len() as u64,
                ReceiverOutput::Progress(_) => {}
                ReceiverOutput::Finished(result) => {
                    assert!(result.is_ok(), "{result:?}");
                }
            }
        }
        while let Some(bytes) = to_sender.pop_front() {
            sender.handle_frame(decode(&bytes), now);
        }
        while let Some(out) = sender.poll_output() {
            match out {
                SenderOutput::Send(frame) => to_receiver.push_back(frame.encode()),
                SenderOutput::Read { offset, len } => {
                    let start = offset as usize;
                    sender.chunk_read(offset, data[start..start + len].to_vec(), now);
                }
                SenderOutput::Progress(_) => {}
                SenderOutput::Finished(result) => {
                    assert!(result.is_ok(), "{result:?}");
                    return written;
                }
            }
        }
        if to_receiver.is_empty() {
            panic!("the transfer stalled");
        }
        while let Some(bytes) = to_receiver.pop_front() {
            receiver.handle_frame(decode(&bytes), now);
        }
        // The transport drained everything it was given.
        sender.buffered_amount(0);
        now += 1;
    }
}

fn chunk_pipeline(c: &mut Criterion) {
    let data = content(FILE_SIZE);
    let offer = FileOffer {
        transfer: TransferId(1),
        name: "bench.bin".into(),
        size: FILE_SIZE as u64,
        mime: String::new(),
        hash: *blake3::hash(&data).as_bytes(),
    };
    let mut group = c.benchmark_group("chunk_pipeline");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(FILE_SIZE as u64));
    for chunk_size in CHUNK_SIZES {
        group.bench_with_input(
            BenchmarkId::from_parameter(chunk_size),
            &chunk_size,
            |b, &size| {
                b.iter(|| assert_eq!(transfer(&data, &offer, size), FILE_SIZE as u64));
            },
        );
    }
    group.finish();
}

fn chat_round_trip(c: &mut Criterion) {
    let (a, b) = (PeerId("alice".into()), PeerId("bob".into()));
    let mut alice = ChatSession::new();
    let mut bob = ChatSession::new();
    alice.add_peer(b.clone());
    alice.link_up(&b, 0);
    bob.add_peer(a.clone());
    bob.link_up(&a, 0);
    let mut n: u64 = 0;
    let mut group = c.benchmark_group("chat_round_trip");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    group.bench_function("send_deliver_ack", |bench| {
        bench.iter(|| {
            n += 1;
            let mut id = [0; 16];
            id[..8].copy_from_slice(&n.to_le_bytes());
            let text = String::from("hello there, how is the transfer going?");
            alice
                .send(MessageId(id), text, 1_700_000_000_000, n)
                .expect("outbox has room");
            let mut delivered = 0;
            while let Some(out) = alice.poll_output() {
                if let ChatOutput::Send { frame, .. } = out {
                    bob.handle_frame(&a, decode(&frame.encode()), n)
                        .expect("a chat frame");
                }
            }
            while let Some(out) = bob.poll_output() {
                match out {
                    ChatOutput::Send { frame, .. } => {
                        alice
                            .handle_frame(&b, decode(&frame.encode()), n)
                            .expect("an ack");
                    }
                    ChatOutput::Deliver { message, .. } => {
                        delivered += black_box(message).text.len()
                    }
                    ChatOutput::Status { .. } => {}
                }
            }
            while alice.poll_output().is_some() {}
            delivered
        });
    });
    group.finish();
}

criterion_group!(benches, chunk_pipeline, chat_round_trip);
criterion_main!(benches);
