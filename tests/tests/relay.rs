//! End-to-end over the server relay: real `parlor` peers whose frames cross
//! `parlor-server`'s WebSocket, sealed with the room key, because they are
//! told to (`--force-relay server`) or because their peer is.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_tests::{Peer, Server, transfer};

const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// 8 MiB: many relay packets and several flow-control windows.
const FILE_BYTES: usize = 8 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn forced_server_relay_transfers_a_file_with_the_right_hash() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let mut t = transfer(
        &server.base,
        &["--force-relay", "server"],
        [&[], &[]],
        FILE_BYTES,
    )
    .await
    .unwrap();
    assert_eq!(t.received, t.sent);
    assert_eq!(t.path().await.unwrap(), "server-relay");
    // The server saw the bytes go by, sealed.
    let metrics = reqwest_like_get(&format!("{}/metrics", server.base)).await;
    let relayed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("parlor_relay_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(relayed > FILE_BYTES as u64, "relayed {relayed} bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_cannot_use_webrtc_brings_the_other_onto_the_relay() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    // Alice may use any path; Bob only the server relay. Alice switches as
    // soon as Bob's first sealed packet arrives.
    let mut alice = Peer::spawn("alice", &["chat", "--server", &server.base]).unwrap();
    let link = alice.invite().await.unwrap();
    let mut bob = Peer::spawn("bob", &["--force-relay", "server", "chat", &link]).unwrap();
    for peer in [&mut alice, &mut bob] {
        let connected = peer.wait_event("connected").await.unwrap();
        assert_eq!(connected["path"], "server-relay", "{connected}");
    }
    for i in 0..5 {
        alice.say(&format!("a{i}")).await.unwrap();
        bob.say(&format!("b{i}")).await.unwrap();
    }
    for i in 0..5 {
        let text = format!("a{i}");
        bob.wait_for(&text, |v| {
            v["event"] == "message" && v["text"] == text.as_str()
        })
        .await
        .unwrap();
        let text = format!("b{i}");
        alice
            .wait_for(&text, |v| {
                v["event"] == "message" && v["text"] == text.as_str()
            })
            .await
            .unwrap();
    }
    // In order and exactly once.
    for (peer, prefix) in [(&mut alice, "b"), (&mut bob, "a")] {
        peer.close_stdin();
        assert!(peer.wait_exit(EXIT_TIMEOUT).await.unwrap().success());
        let texts: Vec<&str> = peer
            .history
            .iter()
            .filter(|v| v["event"] == "message")
            .filter_map(|v| v["text"].as_str())
            .collect();
        let expected: Vec<String> = (0..5).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(texts, expected, "{:?}", peer.history);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_the_relay_says_so() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&["--no-server-relay"]).await.unwrap();
    let mut alice = Peer::spawn(
        "alice",
        &["--force-relay", "server", "chat", "--server", &server.base],
    )
    .unwrap();
    let link = alice.invite().await.unwrap();
    let mut bob = Peer::spawn("bob", &["--force-relay", "server", "chat", &link]).unwrap();
    let error = bob
        .wait_for("relay refusal", |v| {
            v["event"] == "error"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("relay_unavailable"))
        })
        .await
        .unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("turned off"),
        "{error}"
    );
    alice.kill().await;
    bob.kill().await;
}

/// A plain HTTP GET over loopback (no HTTP client dependency needed).
async fn reqwest_like_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}
