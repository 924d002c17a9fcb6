//! End-to-end through the embedded TURN relay: a real `parlor-server` and
//! real `parlor` peers forced onto relay candidates (`--force-relay turn`).
//!
//! On loopback both allocations sit on 127.0.0.1, so relaying between them
//! needs `--turn-allow-private`; without it the relay must refuse, and the
//! peers must not connect.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_tests::{Peer, Server, transfer};

/// 20 MiB: long enough for SCTP to ramp up through the relay, short enough
/// for a debug-build test run.
const FILE_BYTES: usize = 20 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn forced_turn_peers_transfer_a_file_through_the_embedded_relay() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&["--turn-allow-private"]).await.unwrap();
    let mut t = transfer(
        &server.base,
        &["--force-relay", "turn"],
        [&[], &[]],
        FILE_BYTES,
    )
    .await
    .unwrap();
    assert_eq!(t.received, t.sent);
    assert_eq!(t.path().await.unwrap(), "turn");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_relay_refuses_peers_fall_back_to_the_server_relay() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let mut alice = Peer::spawn(
        "alice",
        &["--force-relay", "turn", "chat", "--server", &server.base],
    )
    .unwrap();
    let link = alice.invite().await.unwrap();
    let mut bob = Peer::spawn("bob", &["--force-relay", "turn", "chat", &link]).unwrap();
    bob.peer_id().await.unwrap();
    // Both relay addresses are 127.0.0.1, which the relay refuses to reach,
    // and forced-relay peers have no other candidates: no WebRTC pair can
    // work. (Two loopback peers connect within a second or two when
    // allowed.) After the connect deadline both fall down the ladder to the
    // server relay, and never report a TURN path.
    let started = std::time::Instant::now();
    let connected = bob.wait_event("connected").await.unwrap();
    assert_eq!(connected["path"], "server-relay", "{connected}");
    let connected = alice.wait_event("connected").await.unwrap();
    assert_eq!(connected["path"], "server-relay", "{connected}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fallback took {:?}",
        started.elapsed()
    );
    bob.say("through the server").await.unwrap();
    let message = alice.wait_event("message").await.unwrap();
    assert_eq!(message["text"], "through the server");
    for peer in [&alice, &bob] {
        assert!(
            !peer
                .history
                .iter()
                .any(|v| v["event"] == "connected" && v["path"] == "turn"),
            "{:?}",
            peer.history
        );
    }
    alice.kill().await;
    bob.kill().await;
}
