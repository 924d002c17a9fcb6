//! Short codes end to end: a real server, real CLI peers, SPAKE2 over the
//! server's `pake` messages, then the usual sealed signaling and WebRTC.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_protocol::ShortCode;
use parlor_protocol::code::WORDS;
use parlor_tests::{Peer, Server, hash_file, http_post, random_file};

const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_file_sent_with_a_short_code_arrives_intact() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("code.bin");
    let hash = random_file(&src, 1024 * 1024).unwrap();
    let (mut sender, code) = Peer::send_by_code("sender", &server.base, &src)
        .await
        .unwrap();
    let parsed = ShortCode::parse(&code).unwrap();
    assert_eq!(parsed.to_string(), code);
    assert_eq!(parsed.nameplate, 1, "the first code on a fresh server");

    let out = dir.path().join("out");
    // Typed by hand: another case and stray spaces are fine.
    let typed = format!("  {}  ", code.to_uppercase());
    let mut receiver = Peer::spawn(
        "receiver",
        &[
            "receive",
            &typed,
            "--server",
            &server.base,
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .unwrap();
    receiver.wait_event("code_matched").await.unwrap();
    sender.wait_event("code_matched").await.unwrap();
    let status = receiver.wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert!(status.success(), "{:?}", receiver.history);
    assert_eq!(hash_file(&out.join("code.bin")).unwrap(), hash);
    let received = receiver.wait_event("file_received").await.unwrap();
    assert_eq!(received["hash"], hash);
    assert!(
        sender.wait_exit(EXIT_TIMEOUT).await.unwrap().success(),
        "{:?}",
        sender.history
    );
    // Used once, gone.
    let (status, _) = http_post(
        &server.base,
        &format!("/api/code/{}/open", parsed.nameplate),
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_code_fails_on_both_sides_and_burns_the_nameplate() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("secret.bin");
    random_file(&src, 64 * 1024).unwrap();
    let (mut sender, code) = Peer::send_by_code("sender", &server.base, &src)
        .await
        .unwrap();
    let code = ShortCode::parse(&code).unwrap();
    // Same nameplate, another second word.
    let other = WORDS
        .iter()
        .find(|w| **w != code.words[1])
        .unwrap()
        .to_string();
    let wrong = format!("{}-{}-{other}", code.nameplate, code.words[0]);

    let out = dir.path().join("out");
    let mut receiver = Peer::spawn(
        "receiver",
        &[
            "receive",
            &wrong,
            "--server",
            &server.base,
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .unwrap();
    let status = receiver.wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert!(!status.success(), "{:?}", receiver.history);
    let error = receiver.wait_event("error").await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("did not match"),
        "{error}"
    );
    let status = sender.wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert!(!status.success(), "{:?}", sender.history);
    let error = sender.wait_event("error").await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("did not match"),
        "{error}"
    );
    for peer in [&receiver, &sender] {
        assert_eq!(peer.count("connected"), 0, "{:?}", peer.history);
        assert_eq!(peer.count("code_matched"), 0, "{:?}", peer.history);
        assert_eq!(peer.count("file_received"), 0, "{:?}", peer.history);
    }
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "nothing may be written"
    );
    // The nameplate was used by the wrong guess: the right code is dead too.
    let (status, _) = http_post(&server.base, &format!("/api/code/{}/open", code.nameplate))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let mut late = Peer::spawn(
        "late",
        &["receive", &code.to_string(), "--server", &server.base],
    )
    .unwrap();
    assert!(!late.wait_exit(EXIT_TIMEOUT).await.unwrap().success());
    let error = late.wait_event("error").await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("404"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mistyped_word_is_refused_before_the_code_is_used() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&[]).await.unwrap();
    let mut chat = Peer::spawn("chat", &["chat", "--code", "--server", &server.base]).unwrap();
    let code = ShortCode::parse(&chat.code().await.unwrap()).unwrap();
    let typo = format!("{}-{}-zzzzz", code.nameplate, code.words[0]);
    let mut typist = Peer::spawn("typist", &["chat", &typo, "--server", &server.base]).unwrap();
    assert!(!typist.wait_exit(EXIT_TIMEOUT).await.unwrap().success());
    let error = typist.wait_event("error").await.unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not one of the code words"),
        "{error}"
    );
    // The code still works, and chat over it does too.
    let mut friend = Peer::spawn(
        "friend",
        &["chat", &code.to_string(), "--server", &server.base],
    )
    .unwrap();
    friend.wait_connected(1).await.unwrap();
    chat.wait_connected(1).await.unwrap();
    friend.say("hello over a code").await.unwrap();
    chat.wait_for("the message", |v| {
        v["event"] == "message" && v["text"] == "hello over a code"
    })
    .await
    .unwrap();
}
