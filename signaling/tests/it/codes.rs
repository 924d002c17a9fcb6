//! Short-code nameplates (`POST /api/code`, single-use `POST
//! /api/code/N/open`) and the `pake` messages peers exchange in the room.

use parlor_protocol::code::{MAX_PAKE_BODY_CHARS, PakeMessage};
use parlor_protocol::{ClientMessage, ErrorCode, RoomId, ServerMessage};
use parlor_signaling::Config;
use serde_json::Value;

use crate::support::{TestServer, http_get, http_post, test_config};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn a_code_maps_to_a_fresh_room_once() {
    let server = TestServer::start(test_config()).await;
    let (status, body) = http_post(server.addr, "/api/code", "").await;
    assert_eq!(status, 200, "{body}");
    let created = json(&body);
    assert_eq!(created["nameplate"], 1);
    let room = RoomId::parse(created["room"].as_str().unwrap()).unwrap();
    assert_eq!(room.as_str().len(), 22, "128 random bits");

    let (status, body) = http_post(server.addr, "/api/code", "").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["nameplate"], 2);
    assert_ne!(json(&body)["room"], created["room"]);

    let (status, body) = http_post(server.addr, "/api/code/1/open", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["room"], created["room"]);
    // Single use: the second open finds nothing.
    let (status, body) = http_post(server.addr, "/api/code/1/open", "").await;
    assert_eq!(status, 404);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("no such code")
    );
    let (status, _) = http_post(server.addr, "/api/code/77/open", "").await;
    assert_eq!(status, 404);
    // Not a number: no route (warp prefers the web app's 405 for POST).
    let (status, _) = http_post(server.addr, "/api/code/x/open", "").await;
    assert!([404, 405].contains(&status), "{status}");
    // The freed number is handed out again, smallest first.
    let (_, body) = http_post(server.addr, "/api/code", "").await;
    assert_eq!(json(&body)["nameplate"], 1);
    // GET is not a way in.
    let (status, _, _) = http_get(server.addr, "/api/code/1/open").await;
    assert_eq!(status, 405);

    let (_, _, metrics) = http_get(server.addr, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "parlor_codes_created_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "parlor_codes_opened_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn codes_expire_and_are_capped() {
    let server = TestServer::start(Config {
        code_ttl_secs: 1,
        max_codes: 1,
        ..test_config()
    })
    .await;
    let (status, _) = http_post(server.addr, "/api/code", "").await;
    assert_eq!(status, 200);
    let (status, body) = http_post(server.addr, "/api/code", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(json(&body)["error"].is_string());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _) = http_post(server.addr, "/api/code/1/open", "").await;
    assert_eq!(status, 404, "expired");
    let (status, _) = http_post(server.addr, "/api/code", "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_code_api_checks_origin_and_rate() {
    let server = TestServer::start(Config {
        ip_connect_rate: 1,
        ..test_config()
    })
    .await;
    let (status, body) =
        http_post(server.addr, "/api/code", "Origin: https://evil.example\r\n").await;
    assert_eq!(status, 403, "{body}");
    let own = format!("Origin: http://{}\r\n", server.addr);
    // Bursts of three times the rate, then 429.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(http_post(server.addr, "/api/code", &own).await.0);
    }
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    assert_eq!(statuses[3], 429, "{statuses:?}");
}

#[tokio::test]
async fn pake_messages_are_forwarded_within_the_room_and_bounded() {
    let server = TestServer::start(test_config()).await;
    let room = RoomId::from_random(rand::random());
    let (mut ada, ada_id, _) = server.join(&room, "ada").await;
    let (mut bob, bob_id, _) = server.join(&room, "bob").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));
    let body = PakeMessage::Start(vec![7; 33]).encode();
    bob.send(&ClientMessage::Pake {
        to: ada_id.clone(),
        body: body.clone(),
    })
    .await;
    assert_eq!(
        ada.recv().await,
        ServerMessage::Pake {
            from: bob_id.clone(),
            body
        }
    );
    for bad in ["", "not base64!", &"A".repeat(MAX_PAKE_BODY_CHARS + 1)] {
        ada.send(&ClientMessage::Pake {
            to: bob_id.clone(),
            body: bad.to_owned(),
        })
        .await;
        ada.expect_error(ErrorCode::InvalidField).await;
    }
    // Nothing reached bob.
    bob.ping_pong().await;
}
