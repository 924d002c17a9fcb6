//! What a persistent outbox costs: a driver writes the chat state after each
//! change, so a snapshot plus its JSON encoding is paid per chat message.
//! Measured against the number of unacknowledged messages a departed peer
//! has waiting (the outbox is bounded at `MAX_OUTBOX_PER_PEER`).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use parlor_core::ChatSession;
use parlor_protocol::{MessageId, PeerId};

/// A session whose one peer is away with `unacked` messages waiting.
fn session_with_outbox(unacked: usize) -> ChatSession {
    let mut chat = ChatSession::new();
    let away = PeerId("away".into());
    chat.add_peer(away.clone());
    chat.peer_left(&away, 0);
    for n in 0..unacked {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&(n as u64).to_le_bytes());
        let text = format!("message {n}: a line of ordinary chat, about eighty bytes long….");
        chat.send(MessageId(id), text, 0, 0)
            .expect("outbox has room");
    }
    while chat.poll_output().is_some() {}
    chat
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("chat_snapshot_json");
    for unacked in [0, 100, 1_000, 10_000] {
        let chat = session_with_outbox(unacked);
        group.bench_with_input(BenchmarkId::from_parameter(unacked), &chat, |b, chat| {
            b.iter(|| serde_json::to_vec(&chat.snapshot(1, 1)).expect("encodes"));
        });
    }
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
