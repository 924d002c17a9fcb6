//! A peer process dies and starts again (same data directory): nothing is
//! lost. Its chat outbox and identity come back from disk, messages sent to
//! it meanwhile wait in the senders' outboxes, and a half-received file
//! continues from what is already on disk.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_tests::{Peer, Server};

const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// `parlor --data-dir DIR ARGS...`
fn spawn_in(label: &str, dir: &std::path::Path, args: &[&str]) -> Peer {
    let mut all = vec!["--data-dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    Peer::spawn(label, &all).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_survives_both_peers_restarting() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = spawn_in(
        "alice",
        alice_dir.path(),
        &["chat", "--server", &server.base],
    );
    let link = alice.invite().await.unwrap();
    let alice_id = alice.peer_id().await.unwrap();
    let mut bob = spawn_in("bob", bob_dir.path(), &["chat", &link]);
    let bob_id = bob.peer_id().await.unwrap();
    alice.wait_connected(1).await.unwrap();
    bob.wait_connected(1).await.unwrap();
    alice.say("hello bob").await.unwrap();
    bob.say("hello alice").await.unwrap();
    bob.wait_text("hello bob").await.unwrap();
    alice.wait_text("hello alice").await.unwrap();

    // Bob's process dies. Alice writes on; her messages wait for him.
    bob.kill().await;
    alice
        .wait_for("bob to leave", |v| v["event"] == "peer_left")
        .await
        .unwrap();
    for n in 1..=3 {
        alice.say(&format!("while bob was away {n}")).await.unwrap();
    }
    // Then Alice's process dies too, her messages still unacknowledged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.kill().await;

    // Both start again from their data directories, with the same link.
    let mut alice = spawn_in("alice", alice_dir.path(), &["chat", &link]);
    assert_eq!(
        alice.peer_id().await.unwrap(),
        alice_id,
        "alice keeps her id"
    );
    let mut bob = spawn_in("bob", bob_dir.path(), &["chat", &link]);
    assert_eq!(bob.peer_id().await.unwrap(), bob_id, "bob keeps his id");
    for n in 1..=3 {
        bob.wait_text(&format!("while bob was away {n}"))
            .await
            .unwrap();
    }
    // Fresh messages both ways after the restart.
    alice.say("after").await.unwrap();
    bob.say("after too").await.unwrap();
    bob.wait_text("after").await.unwrap();
    alice.wait_text("after too").await.unwrap();

    // Give stray re-sends a moment to show up, then check nothing twice.
    tokio::time::sleep(Duration::from_secs(4)).await;
    alice.close_stdin();
    bob.close_stdin();
    alice.wait_exit(EXIT_TIMEOUT).await.unwrap();
    bob.wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert_eq!(
        bob.texts(),
        [
            "while bob was away 1",
            "while bob was away 2",
            "while bob was away 3",
            "after"
        ],
        "the restarted bob sees what was sent meanwhile, once and in order"
    );
    assert_eq!(
        alice.texts(),
        ["after too"],
        "the restarted alice does not see 'hello alice' again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_killed_halfway_through_500_mb_resumes_from_disk() {
    const SIZE: usize = 500_000_000;
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("big.bin");
    let hash = parlor_tests::random_file(&file, SIZE).unwrap();
    let out = work.path().join("out");
    let state = work.path().join("receiver-state");
    std::fs::create_dir_all(&out).unwrap();

    let mut sender = Peer::spawn(
        "sender",
        &["send", "--server", &server.base, file.to_str().unwrap()],
    )
    .unwrap();
    let link = sender.invite().await.unwrap();
    let receive = ["receive", &link, "--out", out.to_str().unwrap()];
    let mut receiver = spawn_in("receiver", &state, &receive);
    let receiver_id = receiver.peer_id().await.unwrap();
    receiver
        .wait_for_within("half the file", Duration::from_secs(120), |v| {
            v["event"] == "progress" && v["done"].as_u64().unwrap_or(0) >= SIZE as u64 / 2
        })
        .await
        .unwrap();
    receiver.kill().await;

    sender
        .wait_event("waiting_for_peer")
        .await
        .expect("the sender waits for the receiver to come back");
    let mut receiver = spawn_in("receiver", &state, &receive);
    assert_eq!(receiver.peer_id().await.unwrap(), receiver_id);
    let resumed = receiver.wait_event("resuming").await.unwrap();
    let offset = resumed["offset"].as_u64().unwrap();
    assert!(
        offset >= SIZE as u64 * 2 / 5,
        "resumed from byte {offset} of {SIZE}"
    );
    assert!(
        receiver.wait_exit(EXIT_TIMEOUT).await.unwrap().success(),
        "receiver: {:?}",
        receiver.history
    );
    assert!(
        sender.wait_exit(EXIT_TIMEOUT).await.unwrap().success(),
        "sender: {:?}",
        sender.history
    );
    let received = receiver.wait_event("file_received").await.unwrap();
    assert_eq!(received["hash"], hash.as_str());
    let path = received["path"].as_str().unwrap();
    assert_eq!(
        parlor_tests::hash_file(std::path::Path::new(path)).unwrap(),
        hash
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "no .part file left: {leftovers:?}");
    let sent = sender.wait_event("file_sent").await.unwrap();
    let bytes_sent = sent["bytes_sent"].as_u64().unwrap();
    let resent = bytes_sent.saturating_sub(SIZE as u64);
    assert!(
        resent * 20 < SIZE as u64,
        "re-sent {resent} bytes of {SIZE} (bytes_sent {bytes_sent}); should be < 5%"
    );
    eprintln!(
        "resumed at {offset}; re-sent {resent} bytes ({:.2}%)",
        resent as f64 * 100.0 / SIZE as f64
    );
}
