//! End-to-end: a real `parlor-server` on a loopback port and real `parlor`
//! peers talking over real WebRTC data channels.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use parlor_tests::{Peer, Server, hash_file, random_file};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

fn is_message(text: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == "message" && v["text"] == text
}

#[tokio::test(flavor = "multi_thread")]
async fn two_peers_chat_both_ways() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let mut alice = Peer::spawn("alice", &["chat", "--server", &server.base]).unwrap();
    let link = alice.invite().await.unwrap();
    let mut bob = Peer::spawn("bob", &["chat", &link]).unwrap();
    let connected = bob.wait_event("connected").await.unwrap();
    assert_eq!(connected["path"], "direct");
    alice.wait_connected(1).await.unwrap();

    alice.say("hello from alice").await.unwrap();
    let got = bob
        .wait_for("alice's message", is_message("hello from alice"))
        .await
        .unwrap();
    assert_eq!(got["name"], "alice");
    assert_eq!(got["seq"], 1);
    bob.say("hi alice, bob here").await.unwrap();
    alice
        .wait_for("bob's message", is_message("hi alice, bob here"))
        .await
        .unwrap();

    // The sender learns that its message was delivered.
    alice
        .wait_for("delivered", |v| {
            v["event"] == "message_status" && v["status"] == "delivered"
        })
        .await
        .unwrap();

    // Several messages keep their order and are shown once each.
    for i in 0..20 {
        alice.say(&format!("burst {i}")).await.unwrap();
    }
    bob.wait_for("last burst", is_message("burst 19"))
        .await
        .unwrap();
    let burst: Vec<String> = bob
        .history
        .iter()
        .filter(|v| v["event"] == "message" && v["text"].as_str().unwrap().starts_with("burst"))
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        burst,
        (0..20).map(|i| format!("burst {i}")).collect::<Vec<_>>()
    );

    alice.close_stdin();
    bob.close_stdin();
    assert!(alice.wait_exit(EXIT_TIMEOUT).await.unwrap().success());
    assert!(bob.wait_exit(EXIT_TIMEOUT).await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn three_peers_all_see_a_message() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let mut a = Peer::spawn("a", &["chat", "--server", &server.base]).unwrap();
    let link = a.invite().await.unwrap();
    let mut b = Peer::spawn("b", &["chat", &link]).unwrap();
    b.wait_connected(1).await.unwrap();
    let mut c = Peer::spawn("c", &["chat", &link]).unwrap();
    c.wait_connected(2).await.unwrap();
    a.wait_connected(2).await.unwrap();
    b.wait_connected(2).await.unwrap();

    a.say("one for all").await.unwrap();
    b.wait_for("a's message", is_message("one for all"))
        .await
        .unwrap();
    c.wait_for("a's message", is_message("one for all"))
        .await
        .unwrap();
    c.say("c answers").await.unwrap();
    a.wait_for("c's message", is_message("c answers"))
        .await
        .unwrap();
    b.wait_for("c's message", is_message("c answers"))
        .await
        .unwrap();
    // Delivered means every one of the other two acked it.
    a.wait_for("delivered to both", |v| {
        v["event"] == "message_status" && v["status"] == "delivered"
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_leaves_is_reported_to_the_others() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let mut a = Peer::spawn("a", &["chat", "--server", &server.base]).unwrap();
    let link = a.invite().await.unwrap();
    let mut b = Peer::spawn("b", &["chat", &link]).unwrap();
    let b_id = b.peer_id().await.unwrap();
    a.wait_for("b joined", |v| {
        v["event"] == "peer_joined" && v["peer_id"] == b_id.as_str()
    })
    .await
    .unwrap();
    a.wait_connected(1).await.unwrap();

    b.kill().await;
    let left = a
        .wait_for("b left", |v| {
            v["event"] == "peer_left" && v["peer_id"] == b_id.as_str()
        })
        .await
        .unwrap();
    assert_eq!(left["name"], "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_and_receive_a_100_mb_file_with_matching_hash() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let hash = random_file(&src, 100 * 1024 * 1024).unwrap();
    let out = dir.path().join("out");

    let mut sender = Peer::spawn(
        "sender",
        &["send", "--server", &server.base, src.to_str().unwrap()],
    )
    .unwrap();
    let link = sender.invite().await.unwrap();
    let mut receiver = Peer::spawn(
        "receiver",
        &["receive", &link, "--out", out.to_str().unwrap()],
    )
    .unwrap();

    assert!(
        sender.wait_exit(EXIT_TIMEOUT).await.unwrap().success(),
        "{:?}",
        sender.history
    );
    assert!(
        receiver.wait_exit(EXIT_TIMEOUT).await.unwrap().success(),
        "{:?}",
        receiver.history
    );

    let sent = sender.wait_event("file_sent").await.unwrap();
    assert_eq!(sent["hash"], hash.as_str());
    let received = receiver.wait_event("file_received").await.unwrap();
    assert_eq!(received["hash"], hash.as_str());
    assert_eq!(hash_file(&out.join("big.bin")).unwrap(), hash);
    // Progress is reported from the receiver's confirmations, ending at the total.
    let last = sender
        .history
        .iter()
        .rev()
        .find(|v| v["event"] == "progress")
        .unwrap();
    assert_eq!(last["done"], 100 * 1024 * 1024);
    // Nothing half-received is left behind.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["big.bin"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn several_files_arrive_and_existing_files_are_not_overwritten() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("notes.txt");
    let b = dir.path().join("empty.dat");
    let hash_a = random_file(&a, 300_001).unwrap();
    random_file(&b, 0).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"mine, keep me").unwrap();

    let mut sender = Peer::spawn(
        "sender",
        &[
            "send",
            "--server",
            &server.base,
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    )
    .unwrap();
    let link = sender.invite().await.unwrap();
    let mut receiver = Peer::spawn(
        "receiver",
        &["receive", &link, "--out", out.to_str().unwrap()],
    )
    .unwrap();
    assert!(
        sender.wait_exit(EXIT_TIMEOUT).await.unwrap().success(),
        "{:?}",
        sender.history
    );
    assert!(
        receiver.wait_exit(EXIT_TIMEOUT).await.unwrap().success(),
        "{:?}",
        receiver.history
    );

    assert_eq!(
        std::fs::read(out.join("notes.txt")).unwrap(),
        b"mine, keep me"
    );
    assert_eq!(hash_file(&out.join("notes (1).txt")).unwrap(), hash_a);
    assert_eq!(std::fs::metadata(out.join("empty.dat")).unwrap().len(), 0);
    assert_eq!(receiver.count("file_received"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_transfer_leaves_only_a_part_file() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("movie.bin");
    random_file(&src, 200 * 1024 * 1024).unwrap();
    let out = dir.path().join("out");

    let mut sender = Peer::spawn(
        "sender",
        &["send", "--server", &server.base, src.to_str().unwrap()],
    )
    .unwrap();
    let link = sender.invite().await.unwrap();
    let mut receiver = Peer::spawn(
        "receiver",
        &["receive", &link, "--out", out.to_str().unwrap()],
    )
    .unwrap();
    receiver
        .wait_for("some progress", |v| {
            v["event"] == "progress" && v["done"].as_u64().unwrap_or(0) > 0
        })
        .await
        .unwrap();
    sender.kill().await;

    let status = receiver.wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert!(!status.success(), "an incomplete transfer must not exit 0");
    assert_eq!(receiver.count("file_received"), 0);
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["movie.bin.part"], "only the .part file may exist");
}

/// A raw WebSocket client, for talking to the server without a peer.
async fn raw_client(
    server: &Server,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap()
        .0
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_signaling_message_gets_an_error_and_the_connection_stays_usable() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let mut ws = raw_client(&server).await;
    ws.send(Message::text("{not json")).await.unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "malformed");
    assert!(!err["message"].as_str().unwrap().is_empty());

    // Still usable: join a room, then misbehave again and still get answers.
    ws.send(Message::text(
        r#"{"type":"hello","version":1,"room":"e2eRoomForMalformedTest"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    ws.send(Message::text(
        r#"{"type":"offer","to":"nobody-here","sdp":"v=0"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "unknown_peer");
    ws.send(Message::text(r#"{"type":"teleport"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "malformed");
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "pong");
}
