//! A hostile client: garbage, huge frames, floods, messages and relay
//! packets aimed at peers of other rooms. The server stays up, other rooms
//! are unaffected, its memory stays bounded, and the attacker gets errors
//! and then a close with a reason.

use futures_util::SinkExt as _;
use parlor_protocol::relay::encode_envelope;
use parlor_protocol::{ClientMessage, ServerMessage};
use parlor_signaling::close_code;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestServer, listening_addr, new_room, within};

/// Resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_client_is_refused_and_closed_while_other_rooms_carry_on() {
    // The real binary in its own process, so its memory is measured alone.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_parlor-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-turn",
            "--web-dir",
            "/nonexistent",
        ])
        .env("PARLOR_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let addr = listening_addr(&mut stdout).await;
    let server = TestServer::external(addr);
    let room = new_room();
    let (mut ada, _ada_id, _) = server.join(&room, "ada").await;
    let (mut bob, bob_id, _) = server.join(&room, "bob").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));
    let rss_before = rss_bytes(pid);

    // Several attackers, each in its own room, each trying everything.
    let mut closes = Vec::new();
    for round in 0..6 {
        let (mut eve, _, _) = server.join(&new_room(), "eve").await;
        let junk = vec![b'x'; 900 * 1024]; // past the 64 KiB message limit, under the transport's
        let bob = bob_id.clone();
        let attack = async {
            for i in 0..40u32 {
                let frame = match i % 5 {
                    0 => Message::text(String::from_utf8(junk.clone()).unwrap()),
                    1 => Message::text("{\"type\":\"offer\",\"to\""),
                    2 => Message::binary(vec![0xff; 1000]),
                    3 => Message::text(
                        ClientMessage::Offer {
                            to: bob.clone(),
                            sdp: "v=0 hijack".into(),
                        }
                        .to_json(),
                    ),
                    _ => Message::binary(encode_envelope(&bob, b"sealed junk")),
                };
                if eve.ws.send(frame).await.is_err() {
                    break; // closed on us: expected
                }
            }
        };
        within("the attack", attack).await;
        let (code, reason) = eve.expect_close().await;
        assert_eq!(
            code,
            close_code::POLICY_VIOLATION,
            "round {round}: {reason}"
        );
        assert!(reason.contains("too many refused messages"), "{reason}");
        closes.push(reason);
    }

    // A frame past the transport limit ends that connection at once.
    let (mut huge, _, _) = server.join(&new_room(), "huge").await;
    let _ = huge
        .ws
        .send(Message::binary(vec![0u8; 2 * 1024 * 1024]))
        .await;
    within("the huge-frame connection to end", async {
        use futures_util::StreamExt as _;
        while let Some(Ok(_)) = huge.ws.next().await {}
    })
    .await;

    // A flood of pings from one more: rate limited with errors, never served
    // faster than allowed, then closed.
    let (mut flood, _, _) = server.join(&new_room(), "flood").await;
    for _ in 0..400 {
        if flood
            .ws
            .send(Message::text("{\"type\":\"ping\"}"))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason) = flood.expect_close().await;
    assert_eq!(code, close_code::POLICY_VIOLATION, "{reason}");

    // Bob heard nothing of it, and ada and bob still talk.
    ada.send(&ClientMessage::Offer {
        to: bob_id.clone(),
        sdp: "v=0 real".into(),
    })
    .await;
    match bob.recv().await {
        ServerMessage::Offer { sdp, .. } => assert_eq!(sdp, "v=0 real"),
        other => panic!("bob got {other:?}"),
    }
    bob.ping_pong().await;
    ada.ping_pong().await;

    // Megabytes of junk went in; memory did not follow it.
    let grown = rss_bytes(pid).saturating_sub(rss_before);
    assert!(rss_before > 0, "could not read the server's memory");
    assert!(
        grown < 64 * 1024 * 1024,
        "the server's RSS grew by {grown} bytes"
    );
    // And it is still up.
    assert!(child.try_wait().unwrap().is_none());
}
