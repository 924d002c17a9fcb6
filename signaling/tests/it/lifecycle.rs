//! Shutdown, isolation of a failing session, and the binary itself.

use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use parlor_protocol::{ClientMessage, PeerId, PeerInfo, RoomId, ServerMessage};
use parlor_signaling::rooms::{JoinError, Newcomer, RelayDeliveryError, RoomCounts, RouteError};
use parlor_signaling::{App, MemoryRooms, RoomBackend, close_code};
use tokio::io::{AsyncReadExt, BufReader};

use crate::support::{TestServer, http_get, listening_addr, new_room, test_config, within};

#[tokio::test]
async fn shutdown_closes_every_websocket_with_1001_and_run_returns() {
    let server = TestServer::start(test_config()).await;
    let room = new_room();
    let (mut ada, _, _) = server.join(&room, "ada").await;
    let (mut bob, _, _) = server.join(&room, "bob").await;
    let mut idle = server.client().await; // connected, never joined
    let addr = server.addr;

    let stopped = tokio::spawn(server.stop());
    for client in [&mut ada, &mut bob, &mut idle] {
        let (code, reason) = client.expect_close().await;
        assert_eq!(code, close_code::GOING_AWAY);
        assert_eq!(reason, "server shutting down");
    }
    within("run to return", stopped).await.unwrap().unwrap();
    // And the listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Memory rooms, except that forwarding an offer whose SDP is "panic" panics.
#[derive(Debug)]
struct PanickyRooms(MemoryRooms);

#[async_trait]
impl RoomBackend for PanickyRooms {
    async fn join(&self, room: &RoomId, newcomer: Newcomer) -> Result<Vec<PeerInfo>, JoinError> {
        self.0.join(room, newcomer).await
    }
    async fn leave(&self, room: &RoomId, peer: &PeerId, conn: u64) -> bool {
        self.0.leave(room, peer, conn).await
    }
    async fn send_to(
        &self,
        room: &RoomId,
        to: &PeerId,
        msg: ServerMessage,
    ) -> Result<(), RouteError> {
        if matches!(&msg, ServerMessage::Offer { sdp, .. } if sdp == "panic") {
            panic!("test backend panics on purpose");
        }
        self.0.send_to(room, to, msg).await
    }
    async fn relay_to(
        &self,
        room: &RoomId,
        to: &PeerId,
        packet: bytes::Bytes,
    ) -> Result<(), RelayDeliveryError> {
        self.0.relay_to(room, to, packet).await
    }
    fn counts(&self) -> RoomCounts {
        self.0.counts()
    }
}

#[tokio::test]
async fn a_panicking_session_leaves_its_room_and_spares_the_others() {
    let backend = Arc::new(PanickyRooms(MemoryRooms::new(16, 100)));
    let app = App::with_backend(test_config(), backend).unwrap();
    let server = TestServer::start_app(Arc::clone(&app)).await;
    let room = new_room();
    let (mut ada, ada_id, _) = server.join(&room, "ada").await;
    let (mut bob, bob_id, _) = server.join(&room, "bob").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));

    ada.send(&ClientMessage::Offer {
        to: bob_id.clone(),
        sdp: "panic".into(),
    })
    .await;
    // ada's session is gone; bob hears that she left and carries on.
    assert_eq!(
        bob.recv().await,
        ServerMessage::PeerLeft { peer_id: ada_id }
    );
    bob.ping_pong().await;
    within("ada's connection to end", async {
        use futures_util::StreamExt as _;
        while let Some(Ok(_)) = ada.ws.next().await {}
    })
    .await;
    let (mut cyd, _, peers) = server.join(&room, "cyd").await;
    assert_eq!(
        peers,
        vec![PeerInfo {
            id: bob_id,
            name: "bob".into()
        }]
    );
    assert_eq!(app.open_connections(), 2);
    assert_eq!(app.backend().counts(), RoomCounts { rooms: 1, peers: 2 });

    let stopped = tokio::spawn(server.stop());
    for client in [&mut bob, &mut cyd] {
        assert_eq!(client.expect_close().await.0, close_code::GOING_AWAY);
    }
    within("run to return", stopped).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_binary_prints_its_address_and_stops_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_parlor-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--web-dir",
            "/nonexistent/parlor-web-dir",
        ])
        .env("PARLOR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let addr = listening_addr(&mut stdout).await;
    assert_ne!(addr.port(), 0);
    assert_eq!(http_get(addr, "/healthz").await.2, "ok");

    let pid = child.id().unwrap().to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let status = within("the server to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "", "stdout has exactly one line");
}
