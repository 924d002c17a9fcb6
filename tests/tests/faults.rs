//! Faults: the server is killed and restarted mid-chat. Data channels that
//! are up keep working while it is down; the peers reconnect with back-off
//! under their old ids (resume tokens), and a newcomer reaches them through
//! the restarted server. Nothing is lost or shown twice.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_tests::{Peer, Server};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_room_survives_a_server_restart() {
    let _serial = parlor_tests::exclusive().await;
    let mut server = Server::start(&[]).await.unwrap();
    let mut alice = Peer::spawn("alice", &["chat", "--server", &server.base]).unwrap();
    let link = alice.invite().await.unwrap();
    let alice_id = alice.peer_id().await.unwrap();
    let mut bob = Peer::spawn("bob", &["chat", &link]).unwrap();
    let bob_id = bob.peer_id().await.unwrap();
    alice.wait_connected(1).await.unwrap();
    bob.wait_connected(1).await.unwrap();
    alice.say("before").await.unwrap();
    bob.wait_text("before").await.unwrap();

    // The server dies: the data channel carries on.
    server.kill().await;
    for peer in [&mut alice, &mut bob] {
        peer.wait_for("the loss to be noticed", |v| {
            v["event"] == "error"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("reconnecting"))
        })
        .await
        .unwrap();
    }
    alice.say("while down 1").await.unwrap();
    bob.say("while down 2").await.unwrap();
    bob.wait_text("while down 1").await.unwrap();
    alice.wait_text("while down 2").await.unwrap();

    // It comes back on the same address; both rejoin under their old ids.
    server.restart(&[]).await.unwrap();
    for (peer, id) in [(&mut alice, &alice_id), (&mut bob, &bob_id)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while peer.count("joined") < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "[{}] did not rejoin: {:?}",
                peer.label,
                peer.history
            );
            // Collects events into the history for half a second.
            let _ = peer
                .wait_for_within("more events", Duration::from_millis(500), |_| false)
                .await;
        }
        let rejoins: Vec<_> = peer
            .history
            .iter()
            .filter(|v| v["event"] == "joined")
            .map(|v| v["peer_id"].clone())
            .collect();
        assert_eq!(rejoins[0], rejoins[1], "same id after the restart");
        assert_eq!(rejoins[0], id.as_str());
    }

    // A newcomer finds both through the restarted server.
    let mut carol = Peer::spawn("carol", &["chat", &link]).unwrap();
    carol.wait_connected(2).await.unwrap();
    carol.say("hello after restart").await.unwrap();
    alice.wait_text("hello after restart").await.unwrap();
    bob.wait_text("hello after restart").await.unwrap();
    alice.say("after").await.unwrap();
    bob.wait_text("after").await.unwrap();
    carol.wait_text("after").await.unwrap();

    // Exactly once, in order.
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.close_stdin();
        let _ = peer.wait_exit(EXIT_TIMEOUT).await.unwrap();
    }
    assert_eq!(
        bob.texts(),
        ["before", "while down 1", "hello after restart", "after"]
    );
    assert_eq!(alice.texts(), ["while down 2", "hello after restart"]);
    assert_eq!(carol.texts(), ["after"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicated_and_reordered_frames_are_shown_once_in_order_and_files_arrive_intact() {
    use parlor_tests::chaos;
    use parlor_tests::{hash_file, random_file};
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    // Both peers on the server relay, behind a proxy that duplicates every
    // relayed frame and reorders some.
    let proxy = chaos::start(&server.base).await.unwrap();
    let relay = ["--force-relay", "server"];

    let mut alice = Peer::spawn(
        "alice",
        &[&relay[..], &["chat", "--server", &proxy.base]].concat(),
    )
    .unwrap();
    let link = alice.invite().await.unwrap();
    let mut bob = Peer::spawn("bob", &[&relay[..], &["chat", &link]].concat()).unwrap();
    alice.wait_connected(1).await.unwrap();
    bob.wait_connected(1).await.unwrap();
    let lines: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
    for line in &lines {
        alice.say(line).await.unwrap();
        bob.say(&format!("re {line}")).await.unwrap();
    }
    bob.wait_text("line 19").await.unwrap();
    alice.wait_text("re line 19").await.unwrap();
    for peer in [&mut alice, &mut bob] {
        peer.close_stdin();
        let _ = peer.wait_exit(EXIT_TIMEOUT).await.unwrap();
    }
    assert_eq!(bob.texts(), lines);
    let replies: Vec<String> = lines.iter().map(|l| format!("re {l}")).collect();
    assert_eq!(alice.texts(), replies);

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("chaos.bin");
    let hash = random_file(&src, 1024 * 1024).unwrap();
    let out = dir.path().join("out");
    let mut sender = Peer::spawn(
        "sender",
        &[
            &relay[..],
            &["send", "--server", &proxy.base, src.to_str().unwrap()],
        ]
        .concat(),
    )
    .unwrap();
    let link = sender.invite().await.unwrap();
    let mut receiver = Peer::spawn(
        "receiver",
        &[
            &relay[..],
            &["receive", &link, "--out", out.to_str().unwrap()],
        ]
        .concat(),
    )
    .unwrap();
    let status = sender.wait_exit(Duration::from_secs(180)).await.unwrap();
    let errors = |p: &Peer| {
        p.history
            .iter()
            .filter(|v| v["event"] != "progress")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(status.success(), "{:?}", errors(&sender));
    let status = receiver.wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert!(status.success(), "{:?}", errors(&receiver));
    assert_eq!(hash_file(&out.join("chaos.bin")).unwrap(), hash);
    assert!(proxy.changed() > 100, "{}", proxy.changed());
}
