//! A malicious signaling server: a proxy in front of the real server alters
//! every sealed offer, answer and candidate. Peers must notice (the room
//! key, which the server never sees, seals them), warn, and refuse to
//! connect, directly or through any relay.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_tests::tamper;
use parlor_tests::{Peer, Server};

#[tokio::test(flavor = "multi_thread")]
async fn a_tampering_signaling_server_is_detected_and_the_connection_refused() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let proxy = tamper::start(&server.base).await.unwrap();

    let mut alice = Peer::spawn("alice", &["chat", "--server", &proxy.base]).unwrap();
    let link = alice.invite().await.unwrap();
    assert!(link.starts_with(&proxy.base), "{link}");
    let mut bob = Peer::spawn("bob", &["chat", &link]).unwrap();
    bob.peer_id().await.unwrap();

    // Bob's offer reaches Alice altered.
    let warning = alice
        .wait_for("a security warning", |v| {
            v["event"] == "error"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("security warning"))
        })
        .await
        .unwrap();
    let message = warning["message"].as_str().unwrap();
    assert!(message.contains("altered"), "{message}");
    assert!(proxy.changed() > 0);

    // Past the 8 s deadline after which peers fall back to the server
    // relay: still nobody connected, on any path.
    tokio::time::sleep(Duration::from_secs(12)).await;
    for peer in [&mut alice, &mut bob] {
        let connected = peer
            .wait_for_within("connected", Duration::from_millis(100), |v| {
                v["event"] == "connected"
            })
            .await;
        assert!(
            connected.is_err(),
            "connected despite tampering: {connected:?}"
        );
    }
    alice.kill().await;
    bob.kill().await;
}
