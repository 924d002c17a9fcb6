//! Limits: room size, room count, rate, strikes, timeouts, slow peers,
//! connection count.

use futures_util::{SinkExt, StreamExt};
use parlor_protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use parlor_signaling::{Config, close_code};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    OP_CLOSE, OP_PING, OP_TEXT, RawClient, TestServer, new_room, test_config, within,
};

#[tokio::test]
async fn a_full_room_refuses_newcomers() {
    let server = TestServer::start(Config {
        max_peers_per_room: 2,
        ..test_config()
    })
    .await;
    let room = new_room();
    let (_ada, _, _) = server.join(&room, "ada").await;
    let (_bob, _, _) = server.join(&room, "bob").await;

    let mut cyd = server.client().await;
    cyd.send(&ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        room: room.clone(),
        name: None,
        resume: None,
    })
    .await;
    let message = cyd.expect_error(ErrorCode::RoomFull).await;
    assert!(message.contains("2 peers"), "{message}");
    let (code, _) = cyd.expect_close().await;
    assert_eq!(code, close_code::TRY_AGAIN_LATER);

    // Another room is fine.
    server.join(&new_room(), "dan").await;
}

#[tokio::test]
async fn the_room_count_is_capped() {
    let server = TestServer::start(Config {
        max_rooms: 1,
        ..test_config()
    })
    .await;
    let (_ada, _, _) = server.join(&new_room(), "ada").await;
    let mut bob = server.client().await;
    bob.send(&ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        room: new_room(),
        name: None,
        resume: None,
    })
    .await;
    bob.expect_error(ErrorCode::TooManyRooms).await;
    assert_eq!(bob.expect_close().await.0, close_code::TRY_AGAIN_LATER);
}

#[tokio::test]
async fn rooms_are_removed_when_they_empty() {
    let server = TestServer::start(Config {
        max_rooms: 1,
        ..test_config()
    })
    .await;
    let (mut ada, _, _) = server.join(&new_room(), "ada").await;
    ada.ws.close(None).await.unwrap();
    // The server leaves the room before it completes the close handshake, so
    // once ada's connection has ended her room is gone and a new one fits.
    within("ada's close", async {
        while let Some(Ok(_)) = ada.ws.next().await {}
    })
    .await;
    server.join(&new_room(), "bob").await;
}

#[tokio::test]
async fn messages_beyond_the_rate_limit_are_refused_and_dropped() {
    let config = Config {
        rate_per_sec: 1,
        rate_burst: 4,
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let (mut ada, _, _) = server.join(&new_room(), "ada").await; // hello took one token
    for _ in 0..5 {
        ada.send(&ClientMessage::Ping).await;
    }
    for _ in 0..3 {
        assert_eq!(ada.recv().await, ServerMessage::Pong);
    }
    let message = ada.expect_error(ErrorCode::RateLimited).await;
    assert!(
        message.contains("at most 1 messages per second"),
        "{message}"
    );
    ada.expect_error(ErrorCode::RateLimited).await;
}

#[tokio::test]
async fn repeated_abuse_closes_the_connection_with_1008() {
    let server = TestServer::start(Config {
        max_strikes: 3,
        ..test_config()
    })
    .await;
    let (mut ada, _, _) = server.join(&new_room(), "ada").await;
    for _ in 0..4 {
        ada.send_text("garbage").await;
    }
    for _ in 0..4 {
        ada.expect_error(ErrorCode::Malformed).await;
    }
    let (code, reason) = ada.expect_close().await;
    assert_eq!(code, close_code::POLICY_VIOLATION);
    assert_eq!(reason, "too many refused messages (4)");
}

#[tokio::test]
async fn a_connection_without_hello_is_closed() {
    let server = TestServer::start(Config {
        hello_timeout_secs: 1,
        ..test_config()
    })
    .await;
    let mut ada = server.client().await;
    let (code, reason) = ada.expect_close().await;
    assert_eq!(code, close_code::POLICY_VIOLATION);
    assert_eq!(reason, "no hello within 1 s");
}

#[tokio::test]
async fn a_silent_client_gets_pings_and_is_dropped() {
    let config = Config {
        heartbeat_secs: 1,
        idle_timeout_secs: 2,
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let room = new_room();
    let (mut ada, _, _) = server.join(&room, "ada").await;
    // ada keeps reading, so tungstenite answers the server's pings for her.
    let ada = tokio::spawn(async move {
        let joined = ada.recv().await;
        let left = ada.recv().await;
        ada.ping_pong().await;
        (joined, left)
    });

    // A client that never answers pings.
    let mut mute = RawClient::connect(server.addr).await;
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        room,
        name: None,
        resume: None,
    };
    mute.send_text(&hello.to_json()).await;
    let (opcode, welcome) = mute.read_frame().await;
    assert_eq!(opcode, OP_TEXT);
    assert!(matches!(
        ServerMessage::from_json(&String::from_utf8(welcome).unwrap()),
        Ok(ServerMessage::Welcome { .. })
    ));

    let mut pings = 0;
    let close = loop {
        match mute.read_frame().await {
            (OP_PING, _) => pings += 1,
            (OP_CLOSE, payload) => break payload,
            (opcode, payload) => panic!(
                "unexpected opcode {opcode}: {}",
                String::from_utf8_lossy(&payload)
            ),
        }
    };
    assert!(pings >= 1, "the server sends heartbeats");
    assert_eq!(
        u16::from_be_bytes([close[0], close[1]]),
        close_code::POLICY_VIOLATION
    );
    assert_eq!(&close[2..], b"nothing received for 2 s");

    // ada, who answered her pings, stays and hears that mute left.
    let (joined, left) = within("ada", ada).await.unwrap();
    assert!(
        matches!(joined, ServerMessage::PeerJoined { .. }),
        "{joined:?}"
    );
    assert!(matches!(left, ServerMessage::PeerLeft { .. }), "{left:?}");
}

#[tokio::test]
async fn a_peer_too_slow_to_read_is_disconnected() {
    let config = Config {
        rate_per_sec: 100_000,
        rate_burst: 100_000,
        ..test_config()
    };
    let server = TestServer::start(config).await;
    let room = new_room();
    let (mut ada, _, _) = server.join(&room, "ada").await;

    // slow joins, then never reads again.
    let mut slow = RawClient::connect(server.addr).await;
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        room,
        name: None,
        resume: None,
    };
    slow.send_text(&hello.to_json()).await;
    let slow_id = match ada.recv().await {
        ServerMessage::PeerJoined { peer } => peer.id,
        other => panic!("expected peer_joined, got {other:?}"),
    };

    // Flood slow with 60 KB offers until its outbox overflows. Bounded: 64
    // queued messages plus socket buffers is far below 2000 × 60 KB.
    let (mut sink, mut stream) = ada.ws.split();
    let offer = ClientMessage::Offer {
        to: slow_id.clone(),
        sdp: "x".repeat(60_000),
    }
    .to_json();
    let flood = tokio::spawn(async move {
        for _ in 0..2000 {
            if sink.send(Message::text(offer.clone())).await.is_err() {
                break;
            }
        }
        sink
    });
    within("slow peer to be dropped", async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => match ServerMessage::from_json(&text).unwrap() {
                    ServerMessage::PeerLeft { peer_id } => {
                        assert_eq!(peer_id, slow_id);
                        break;
                    }
                    // Offers sent after slow left.
                    ServerMessage::Error {
                        code: ErrorCode::UnknownPeer,
                        ..
                    } => {}
                    other => panic!("unexpected {other:?}"),
                },
                Some(Ok(_)) => {}
                other => panic!("ada's connection ended: {other:?}"),
            }
        }
    })
    .await;
    flood.abort();
}

#[tokio::test]
async fn websockets_beyond_max_connections_get_503() {
    let server = TestServer::start(Config {
        max_connections: 1,
        ..test_config()
    })
    .await;
    let mut ada = server.client().await;
    match tokio_tungstenite::connect_async(server.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
        }
        other => panic!(
            "expected a 503, got {:?}",
            other.map(|(_, response)| response.status())
        ),
    }
    ada.hello(&new_room(), "ada").await;
}

#[tokio::test]
async fn one_address_is_held_to_its_connection_limits() {
    let server = TestServer::start(Config {
        max_connections_per_ip: 2,
        ..test_config()
    })
    .await;
    let _a = server.client().await;
    let b = server.client().await;
    let status = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Ok(_) => 101,
        Err(other) => panic!("{other}"),
    };
    assert_eq!(
        status(tokio_tungstenite::connect_async(server.ws_url()).await),
        429
    );
    drop(b);
    // The slot frees once the session has ended.
    let mut admitted = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if status(tokio_tungstenite::connect_async(server.ws_url()).await) == 101 {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "a closed connection must free its address's slot");

    let fast = TestServer::start(Config {
        ip_connect_rate: 1, // bursts of 3
        ..test_config()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(status(
            tokio_tungstenite::connect_async(fast.ws_url()).await,
        ));
    }
    assert_eq!(statuses, [101, 101, 101, 429, 429]);
}

#[tokio::test]
async fn pages_of_other_sites_cannot_open_the_websocket() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let server = TestServer::start(Config {
        allowed_origins: vec!["https://chat.example.org".into()],
        ..test_config()
    })
    .await;
    let connect = |origin: Option<String>| {
        let mut request = server.ws_url().into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        async move {
            match tokio_tungstenite::connect_async(request).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    let status = response.status().as_u16();
                    let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or(&[]))
                        .into_owned();
                    if status == 403 {
                        assert!(body.contains("may not use this server"), "{body}");
                    }
                    status
                }
                Err(other) => panic!("{other}"),
            }
        }
    };
    let own = format!("http://{}", server.addr);
    assert_eq!(connect(None).await, 101, "no Origin: a native client");
    assert_eq!(connect(Some(own)).await, 101, "the server's own pages");
    assert_eq!(connect(Some("https://chat.example.org".into())).await, 101);
    assert_eq!(connect(Some("https://evil.example".into())).await, 403);
    assert_eq!(connect(Some("null".into())).await, 403);
}
