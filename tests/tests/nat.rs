//! The NAT matrix: a real `parlor-server` and two real `parlor` CLI peers in
//! Linux network namespaces, each peer behind its own router, for several
//! kinds of NAT and firewall. Each cell sends a 1 MiB file, checks its
//! BLAKE3 hash on arrival, and checks which path both peers report in their
//! `connected` event (`direct`, `turn` or `server-relay`).
//!
//! ```text
//!                 wan bridge, 198.18.0.0/24 ("the internet")
//!      ┌──────────────────────────┼──────────────────────────┐
//!  nat1 198.18.0.11      server 198.18.0.1              nat2 198.18.0.12
//!  (router, NAT,         parlor-server                  (router, NAT,
//!   firewall)            :8080 HTTP/WS, :3478 TURN       firewall)
//!      │                                                     │
//!  peer1 10.0.1.2                                        peer2 10.0.2.2
//!  parlor send                                           parlor receive
//! ```
//!
//! The harness is `parlor_tests::netns` (see its docs for details). The
//! matrix needs root; where namespaces cannot be made, each cell prints a
//! "NAT MATRIX NOT RUN" banner and fails, unless `PARLOR_ALLOW_NO_NETNS=1`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_tests::netns::{self, Firewall, Lab, Nat, Router, SERVER_IP, TURN_PORT};
use parlor_tests::{hash_file, random_file};

/// Bound on connecting (ICE may try several pairs, or fall back to a relay).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on each peer finishing after it connected.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const FILE_BYTES: usize = 1024 * 1024;

/// Runs one cell: peers behind `routers` must transfer a file over `path`.
async fn cell(name: &str, routers: [Router; 2], path: &str) {
    let _serial = parlor_tests::exclusive().await;
    if !netns::available(name).unwrap() {
        return;
    }
    let lab = Lab::build(name, routers).unwrap();
    if let Err(err) = transfer(&lab, path).await {
        panic!("{name}: {err:#}\n{}", lab.diagnostics());
    }
}

async fn transfer(lab: &Lab, path: &str) -> anyhow::Result<()> {
    use anyhow::{Context as _, ensure};

    // The server advertises its TURN relay; the STUN URL gives peers
    // server-reflexive candidates (harmless when the server advertises
    // one itself).
    let stun = format!("stun:{SERVER_IP}:{TURN_PORT}");
    let _server = lab.start_server(&["--ice-server", &stun]).await?;
    let base = format!("http://{SERVER_IP}:{}", netns::HTTP_PORT);

    let dir = tempfile::tempdir()?;
    let src = dir.path().join("nat.bin");
    let hash = random_file(&src, FILE_BYTES)?;
    let out = dir.path().join("out");
    let src = src.to_str().context("temp path")?;
    let out_arg = out.to_str().context("temp path")?;

    let mut sender = lab.spawn_peer(0, "sender", &["send", "--server", &base, src])?;
    let link = sender.invite().await?;
    let mut receiver = lab.spawn_peer(1, "receiver", &["receive", &link, "--out", out_arg])?;

    for peer in [&mut receiver, &mut sender] {
        let connected = peer
            .wait_for_within("connected", CONNECT_TIMEOUT, |v| v["event"] == "connected")
            .await?;
        ensure!(
            connected["path"] == path,
            "[{}] expected path {path:?}: {connected}",
            peer.label
        );
    }
    for peer in [&mut sender, &mut receiver] {
        let status = peer.wait_exit(EXIT_TIMEOUT).await?;
        ensure!(
            status.success(),
            "[{}] exited with {status}; events: {:?}",
            peer.label,
            peer.history
        );
    }
    let received = receiver.wait_event("file_received").await?;
    ensure!(received["hash"] == hash.as_str(), "{received}");
    ensure!(
        hash_file(&out.join("nat.bin"))? == hash,
        "file on disk differs"
    );
    Ok(())
}

/// Both peers have public addresses (their routers only route).
#[tokio::test(flavor = "multi_thread")]
async fn no_nat() {
    cell("no_nat", [Router::open(Nat::None); 2], "direct").await;
}

/// Both behind Linux MASQUERADE: endpoint-independent mapping, address- and
/// port-dependent filtering. STUN candidates let both punch a hole.
#[tokio::test(flavor = "multi_thread")]
async fn port_restricted_cone() {
    cell(
        "port_restricted_cone",
        [Router::open(Nat::PortRestrictedCone); 2],
        "direct",
    )
    .await;
}

/// Both behind `MASQUERADE --random-fully`: each destination sees another
/// port, so no hole punch works; the TURN relay carries the data.
#[tokio::test(flavor = "multi_thread")]
async fn symmetric_both() {
    cell("symmetric_both", [Router::open(Nat::Symmetric); 2], "turn").await;
}

/// Peer 1's network drops all UDP. A browser would reach the TURN relay over
/// TCP (`turn:...?transport=tcp`) and report a relayed path; webrtc-rs 0.17
/// gathers relay candidates over UDP only (webrtc-ice's
/// `gather_candidates_relay` skips TCP TURN URLs), so the CLI falls back to
/// relaying through parlor-server's WebSocket.
#[tokio::test(flavor = "multi_thread")]
async fn udp_blocked_one_side() {
    let udp_blocked = Router {
        nat: Nat::PortRestrictedCone,
        firewall: Firewall::NoUdp,
    };
    cell(
        "udp_blocked_one_side",
        [udp_blocked, Router::open(Nat::PortRestrictedCone)],
        "server-relay",
    )
    .await;
}

/// Both networks let through only TCP to the server's HTTP port: neither
/// STUN nor TURN (UDP or TCP, port 3478) gets out, so only the server's
/// WebSocket relay is left.
#[tokio::test(flavor = "multi_thread")]
async fn only_http_port() {
    let http_only = Router {
        nat: Nat::PortRestrictedCone,
        firewall: Firewall::HttpOnly,
    };
    cell("only_http_port", [http_only; 2], "server-relay").await;
}
