//! The signaling protocol: join, presence, forwarding, errors that leave the
//! connection up.

use parlor_protocol::signaling::MAX_SIGNALING_MESSAGE_BYTES;
use parlor_protocol::{ClientMessage, ErrorCode, IceCandidate, PeerId, PeerInfo, ServerMessage};
use parlor_signaling::{Config, close_code};

use crate::support::{TestServer, new_room, test_config};

#[tokio::test]
async fn welcome_lists_the_peers_present_and_the_ice_servers() {
    let config = Config {
        ice_servers: vec![
            "stun:stun.example.org:3478".into(),
            "turn:turn.example.org:3478".into(),
        ],
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let room = new_room();

    let mut ada = server.client().await;
    let (ada_id, peers, ice_servers) = ada.hello(&room, "ada").await;
    assert!(peers.is_empty());
    assert_eq!(ice_servers.len(), 2);
    assert_eq!(
        ice_servers[0].urls,
        vec!["stun:stun.example.org:3478".to_owned()]
    );
    assert_eq!(
        ice_servers[1].urls,
        vec!["turn:turn.example.org:3478".to_owned()]
    );
    assert_eq!(ice_servers[0].username, None);

    let (_bob, bob_id, peers) = server.join(&room, "bob").await;
    assert_eq!(
        peers,
        vec![PeerInfo {
            id: ada_id.clone(),
            name: "ada".into()
        }]
    );
    assert_ne!(bob_id, ada_id);
    assert_eq!(
        ada.recv().await,
        ServerMessage::PeerJoined {
            peer: PeerInfo {
                id: bob_id,
                name: "bob".into()
            }
        }
    );
}

#[tokio::test]
async fn peer_left_is_reported_when_a_peer_disconnects() {
    let server = TestServer::start(test_config()).await;
    let room = new_room();
    let (mut ada, _, _) = server.join(&room, "ada").await;
    let (mut bob, bob_id, _) = server.join(&room, "bob").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));

    bob.ws.close(None).await.unwrap();
    assert_eq!(
        ada.recv().await,
        ServerMessage::PeerLeft { peer_id: bob_id }
    );
}

#[tokio::test]
async fn offer_answer_and_candidate_are_forwarded_with_the_sender_id() {
    let server = TestServer::start(test_config()).await;
    let room = new_room();
    let (mut ada, ada_id, _) = server.join(&room, "ada").await;
    let (mut bob, bob_id, _) = server.join(&room, "bob").await;
    let (mut cyd, _, _) = server.join(&room, "cyd").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));
    assert!(matches!(bob.recv().await, ServerMessage::PeerJoined { .. }));

    ada.send(&ClientMessage::Offer {
        to: bob_id.clone(),
        sdp: "v=0 offer".into(),
    })
    .await;
    assert_eq!(
        bob.recv().await,
        ServerMessage::Offer {
            from: ada_id.clone(),
            sdp: "v=0 offer".into()
        }
    );

    bob.send(&ClientMessage::Answer {
        to: ada_id.clone(),
        sdp: "v=0 answer".into(),
    })
    .await;
    assert_eq!(
        ada.recv().await,
        ServerMessage::Answer {
            from: bob_id.clone(),
            sdp: "v=0 answer".into()
        }
    );

    let candidate = IceCandidate {
        candidate: "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    };
    ada.send(&ClientMessage::Candidate {
        to: bob_id.clone(),
        candidate: candidate.clone(),
    })
    .await;
    assert_eq!(
        bob.recv().await,
        ServerMessage::Candidate {
            from: ada_id,
            candidate
        }
    );

    // Only the addressee hears it: cyd's next message is the answer to her ping.
    cyd.ping_pong().await;
}

#[tokio::test]
async fn peer_in_another_room_cannot_be_addressed() {
    let server = TestServer::start(test_config()).await;
    let (mut ada, _, _) = server.join(&new_room(), "ada").await;
    let (mut eve, eve_id, _) = server.join(&new_room(), "eve").await;

    ada.send(&ClientMessage::Offer {
        to: eve_id.clone(),
        sdp: "v=0".into(),
    })
    .await;
    let message = ada.expect_error(ErrorCode::UnknownPeer).await;
    assert!(message.contains(&eve_id.0), "{message}");
    ada.ping_pong().await;
    eve.ping_pong().await;

    ada.send(&ClientMessage::Offer {
        to: PeerId("no-such-peer".into()),
        sdp: "v=0".into(),
    })
    .await;
    ada.expect_error(ErrorCode::UnknownPeer).await;
    ada.ping_pong().await;
}

#[tokio::test]
async fn addressing_oneself_is_an_unknown_peer() {
    let server = TestServer::start(test_config()).await;
    let (mut ada, ada_id, _) = server.join(&new_room(), "ada").await;
    ada.send(&ClientMessage::Offer {
        to: ada_id,
        sdp: "v=0".into(),
    })
    .await;
    ada.expect_error(ErrorCode::UnknownPeer).await;
    ada.ping_pong().await;
}

#[tokio::test]
async fn malformed_json_is_answered_and_the_connection_stays_up() {
    let server = TestServer::start(test_config()).await;
    let (mut ada, _, _) = server.join(&new_room(), "ada").await;
    for bad in [
        "{",
        "null",
        r#"{"type":"nope"}"#,
        r#"{"type":"offer","to":"x"}"#,
    ] {
        ada.send_text(bad).await;
        let message = ada.expect_error(ErrorCode::Malformed).await;
        assert!(message.starts_with("malformed message"), "{bad}: {message}");
    }
    ada.ping_pong().await;
}

#[tokio::test]
async fn oversized_message_is_too_large_and_the_connection_stays_up() {
    let server = TestServer::start(test_config()).await;
    let room = new_room();
    let (mut ada, _, _) = server.join(&room, "ada").await;
    let (mut bob, bob_id, _) = server.join(&room, "bob").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));
    let huge = ClientMessage::Offer {
        to: bob_id,
        sdp: "x".repeat(MAX_SIGNALING_MESSAGE_BYTES),
    };
    ada.send(&huge).await;
    ada.expect_error(ErrorCode::TooLarge).await;
    ada.ping_pong().await;
    bob.ping_pong().await;
}

#[tokio::test]
async fn messages_before_hello_are_not_joined_and_a_second_hello_is_refused() {
    let server = TestServer::start(test_config()).await;
    let mut ada = server.client().await;
    ada.send(&ClientMessage::Ping).await;
    ada.expect_error(ErrorCode::NotJoined).await;
    ada.send(&ClientMessage::Offer {
        to: PeerId("x".into()),
        sdp: "v=0".into(),
    })
    .await;
    ada.expect_error(ErrorCode::NotJoined).await;

    let room = new_room();
    ada.hello(&room, "ada").await;
    ada.send(&ClientMessage::Hello {
        version: 1,
        room,
        name: None,
        resume: None,
    })
    .await;
    ada.expect_error(ErrorCode::AlreadyJoined).await;
    ada.ping_pong().await;
}

#[tokio::test]
async fn unsupported_version_is_refused_and_the_connection_closed() {
    let server = TestServer::start(test_config()).await;
    let mut ada = server.client().await;
    ada.send(&ClientMessage::Hello {
        version: 99,
        room: new_room(),
        name: None,
        resume: None,
    })
    .await;
    let message = ada.expect_error(ErrorCode::UnsupportedVersion).await;
    assert_eq!(message, "server speaks versions 1; client asked for 99");
    let (code, reason) = ada.expect_close().await;
    assert_eq!(code, close_code::PROTOCOL_ERROR);
    assert!(reason.contains("99"), "{reason}");
}

#[tokio::test]
async fn invalid_room_id_is_explained() {
    let server = TestServer::start(test_config()).await;
    let mut ada = server.client().await;
    ada.send_text(r#"{"type":"hello","version":1,"room":"../etc/passwd"}"#)
        .await;
    let message = ada.expect_error(ErrorCode::Malformed).await;
    assert!(
        message.starts_with("invalid room id in hello: room id must be"),
        "{message}"
    );
    // Still usable: a correct hello joins.
    ada.hello(&new_room(), "ada").await;
}

#[tokio::test]
async fn too_long_display_name_is_an_invalid_field() {
    let server = TestServer::start(test_config()).await;
    let mut ada = server.client().await;
    let name = "n".repeat(parlor_protocol::signaling::MAX_NAME_BYTES + 1);
    ada.send(&ClientMessage::Hello {
        version: 1,
        room: new_room(),
        name: Some(name),
        resume: None,
    })
    .await;
    let message = ada.expect_error(ErrorCode::InvalidField).await;
    assert!(message.contains("display name"), "{message}");
    ada.hello(&new_room(), "ada").await;
}

#[tokio::test]
async fn a_resume_token_gets_the_same_peer_id_back_and_replaces_the_old_connection() {
    let server = TestServer::start(test_config()).await;
    let room = new_room();
    let (mut ada, _, _) = server.join(&room, "ada").await;
    let mut bob = server.client().await;
    bob.send(&ClientMessage::Hello {
        version: 1,
        room: room.clone(),
        name: Some("bob".into()),
        resume: None,
    })
    .await;
    let (bob_id, token) = match bob.recv().await {
        ServerMessage::Welcome {
            peer_id,
            resume_token: Some(token),
            ..
        } => (peer_id, token),
        other => panic!("expected a welcome with a resume token, got {other:?}"),
    };
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));

    // Bob comes back on a new connection before the old one is noticed dead.
    let mut bob2 = server.client().await;
    bob2.send(&ClientMessage::Hello {
        version: 1,
        room: room.clone(),
        name: Some("bob".into()),
        resume: Some(token.clone()),
    })
    .await;
    match bob2.recv().await {
        ServerMessage::Welcome { peer_id, peers, .. } => {
            assert_eq!(peer_id, bob_id);
            assert_eq!(peers.len(), 1, "only ada: {peers:?}");
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    let (code, reason) = bob.expect_close().await;
    assert_eq!(code, 4000);
    assert!(reason.contains("replaced"), "{reason}");
    // Ada saw neither a leave nor a second join, and reaches the new bob.
    ada.send(&ClientMessage::Offer {
        to: bob_id.clone(),
        sdp: "v=0".into(),
    })
    .await;
    assert!(matches!(bob2.recv().await, ServerMessage::Offer { .. }));
    ada.ping_pong().await;

    // A malformed token is refused.
    let mut eve = server.client().await;
    eve.send(&ClientMessage::Hello {
        version: 1,
        room,
        name: None,
        resume: Some("short".into()),
    })
    .await;
    eve.expect_error(ErrorCode::InvalidField).await;
}
