//! The WebSocket server relay: binary envelopes forwarded between peers of
//! one room, rewritten to name the sender, sealed bodies passed on unread,
//! and a per-room bandwidth cap that slows senders down.

use std::time::{Duration, Instant};

use parlor_protocol::relay::{decode_envelope, encode_envelope};
use parlor_protocol::{
    Channel, ErrorCode, PeerId, RelayCipher, RelayPayload, RoomKey, ServerMessage,
};
use parlor_signaling::Config;

use crate::support::{TestServer, new_room, test_config};

#[tokio::test]
async fn sealed_frames_reach_the_addressee_named_by_their_sender() {
    let server = TestServer::start(test_config()).await;
    let room = new_room();
    let (mut ada, ada_id, _) = server.join(&room, "ada").await;
    let (mut bob, bob_id, _) = server.join(&room, "bob").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));

    let key = RoomKey::from_random([7; 32]);
    let mut ada_cipher = RelayCipher::new(&key, [1; 16]);
    let bob_cipher = RelayCipher::new(&key, [2; 16]);
    let payload = RelayPayload::Frame {
        channel: Channel::Chat,
        frame: b"secret words".to_vec(),
    };
    let envelope = ada_cipher.seal(&ada_id, &bob_id, &payload);
    assert!(
        !envelope.windows(12).any(|w| w == b"secret words"),
        "the plaintext must not be on the wire"
    );
    ada.send_binary(envelope).await;
    let delivered = bob.recv_binary().await;
    assert_eq!(decode_envelope(&delivered).unwrap().0, ada_id.0);
    assert_eq!(
        bob_cipher.open(&bob_id, &delivered).unwrap(),
        (ada_id.clone(), payload)
    );

    // And back, in order, many times.
    let mut bob_cipher = bob_cipher;
    for i in 0..50u8 {
        let payload = RelayPayload::Frame {
            channel: Channel::File,
            frame: vec![i; 60_000],
        };
        bob.send_binary(bob_cipher.seal(&bob_id, &ada_id, &payload))
            .await;
    }
    for i in 0..50u8 {
        let (from, payload) = ada_cipher.open(&ada_id, &ada.recv_binary().await).unwrap();
        assert_eq!(from, bob_id);
        assert_eq!(
            payload,
            RelayPayload::Frame {
                channel: Channel::File,
                frame: vec![i; 60_000]
            }
        );
    }
}

#[tokio::test]
async fn bad_relay_packets_are_refused_and_the_connection_stays_up() {
    let server = TestServer::start(test_config()).await;
    let room = new_room();
    let (mut ada, ada_id, _) = server.join(&room, "ada").await;
    let (_eve, eve_id, _) = server.join(&new_room(), "eve").await;

    ada.send_binary(vec![1, 2, 3]).await;
    let message = ada.expect_error(ErrorCode::Malformed).await;
    assert!(message.contains("bad relay packet"), "{message}");

    ada.send_binary(encode_envelope(&eve_id, b"x")).await;
    ada.expect_error(ErrorCode::UnknownPeer).await;
    ada.send_binary(encode_envelope(&ada_id, b"x")).await;
    ada.expect_error(ErrorCode::UnknownPeer).await;
    ada.send_binary(encode_envelope(&PeerId("nobody".into()), b"x"))
        .await;
    ada.expect_error(ErrorCode::UnknownPeer).await;
    ada.ping_pong().await;

    // Before hello.
    let mut early = server.client().await;
    early.send_binary(encode_envelope(&ada_id, b"x")).await;
    early.expect_error(ErrorCode::NotJoined).await;
}

#[tokio::test]
async fn the_relay_can_be_turned_off() {
    let server = TestServer::start(Config {
        no_server_relay: true,
        ..test_config()
    })
    .await;
    let room = new_room();
    let (mut ada, _, _) = server.join(&room, "ada").await;
    let (_bob, bob_id, _) = server.join(&room, "bob").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));
    ada.send_binary(encode_envelope(&bob_id, b"x")).await;
    let message = ada.expect_error(ErrorCode::RelayUnavailable).await;
    assert!(message.contains("turned off"), "{message}");
    ada.ping_pong().await;
}

#[tokio::test]
async fn a_room_is_held_to_its_relay_bandwidth() {
    const RATE: u64 = 256 * 1024;
    let server = TestServer::start(Config {
        relay_max_bandwidth: RATE,
        ..test_config()
    })
    .await;
    let room = new_room();
    let (mut ada, _, _) = server.join(&room, "ada").await;
    let (mut bob, bob_id, _) = server.join(&room, "bob").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));

    // ~1 MiB through a 256 KiB/s room whose bucket holds one packet: at
    // least ~3.5 s however fast the sender pushes.
    let packets = 17;
    let body = vec![0u8; 60_000];
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..packets {
            ada.send_binary(encode_envelope(&bob_id, &body)).await;
        }
        ada
    });
    for _ in 0..packets {
        bob.recv_binary().await;
    }
    let took = start.elapsed();
    let _ada = sender.await.unwrap();
    assert!(took >= Duration::from_secs(3), "1 MiB relayed in {took:?}");
}
