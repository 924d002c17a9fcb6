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
//! One cell puts a real headless Chromium behind a router that lets out only
//! TCP port 443, where nothing but TURN over TLS (`turns:`) reaches a relay.
//!
//! The harness is `parlor_tests::netns` (see its docs for details). The
//! matrix needs root; where namespaces cannot be made, each cell prints a
//! "NAT MATRIX NOT RUN" banner and fails, unless `PARLOR_ALLOW_NO_NETNS=1`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_tests::browser;
use parlor_tests::netns::{
    self, Firewall, Lab, Nat, Router, SERVER_IP, SERVER_IP2, TLS_PORT, TURN_PORT,
};
use parlor_tests::pki::{Leaf, Pki};
use parlor_tests::random_file;

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
    // The server advertises its TURN relay; the STUN URL gives peers
    // server-reflexive candidates (harmless when the server advertises
    // one itself).
    let stun = format!("stun:{SERVER_IP}:{TURN_PORT}");
    let _server = lab.start_server(&["--ice-server", &stun]).await?;
    let base = format!("http://{SERVER_IP}:{}", netns::HTTP_PORT);
    send_file(lab, &base, &[], path).await
}

/// `parlor send` on peer 0 sends a file to `parlor receive` on peer 1 via
/// the server at `base` (both CLIs also given `extra`); both must report
/// `path` and the file must arrive intact.
async fn send_file(lab: &Lab, base: &str, extra: &[&str], path: &str) -> anyhow::Result<()> {
    let wrappers = [lab.peer_wrapper(0)?, lab.peer_wrapper(1)?];
    let mut t =
        parlor_tests::transfer(base, extra, [&wrappers[0], &wrappers[1]], FILE_BYTES).await?;
    anyhow::ensure!(t.received == t.sent, "the file on disk differs");
    let got = t.path().await?;
    anyhow::ensure!(
        got == path,
        "expected path {path:?}, the peers report {got:?}"
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

/// Peer 1's network lets out only TCP to port 443 (any address): no STUN,
/// no TURN over UDP or TCP port 3478. The server serves https/wss on
/// [`SERVER_IP`]:443 and TURN over TLS on [`SERVER_IP2`]:443 (both with a
/// certificate from a private CA made here). A browser there reaches the
/// relay with `turns:` and connects through it to a CLI on an open network;
/// a chat message and a file get through.
#[tokio::test(flavor = "multi_thread")]
async fn browser_behind_tls_only_relays_over_turns() {
    let name = "tls_only_browser";
    let _serial = parlor_tests::exclusive().await;
    if !browser::enabled(name) || !netns::available(name).unwrap() {
        return;
    }
    let lab = Lab::build(name, [TLS_ONLY, Router::open(Nat::None)]).unwrap();
    if let Err(err) = browser_over_turns(&lab).await {
        panic!("{name}: {err:#}\n{}", lab.diagnostics());
    }
}

/// Peer 1's network lets out only TCP to port 443, and the CLI (webrtc-rs)
/// cannot use `turns:`: it sends a file to a CLI on an open network through
/// the server's relay over wss, trusting the private CA with `--ca-cert`.
#[tokio::test(flavor = "multi_thread")]
async fn cli_behind_tls_only_uses_the_server_relay_over_wss() {
    let name = "tls_only_cli";
    let _serial = parlor_tests::exclusive().await;
    if !netns::available(name).unwrap() {
        return;
    }
    let lab = Lab::build(name, [TLS_ONLY, Router::open(Nat::None)]).unwrap();
    let result = async {
        let (server, pki, _) = start_tls_server(&lab).await?;
        let ca = pki.ca_path();
        let ca = anyhow::Context::context(ca.to_str(), "temp path")?;
        send_file(&lab, &server.base, &["--ca-cert", ca], "server-relay").await
    }
    .await;
    if let Err(err) = result {
        panic!("{name}: {err:#}\n{}", lab.diagnostics());
    }
}

/// The router of a network that lets out only TCP to port 443.
const TLS_ONLY: Router = Router {
    nat: Nat::PortRestrictedCone,
    firewall: Firewall::TlsOnly,
};

/// A `parlor-server` with a certificate for [`SERVER_IP`] and
/// [`SERVER_IP2`] from a private CA made here: https/wss on
/// [`SERVER_IP`]:443, TURN over TLS (`turns:`) on [`SERVER_IP2`]:443.
/// Returns it, the CA, and the server's certificate (which Chromium is
/// told to trust).
async fn start_tls_server(lab: &Lab) -> anyhow::Result<(parlor_tests::Server, Pki, Leaf)> {
    use anyhow::{Context as _, ensure};

    let pki = Pki::new();
    let leaf = pki.issue_for(&[SERVER_IP, SERVER_IP2], "parlor lab server", 1);
    let (cert, key) = (pki.cert_path(), pki.key_path());
    let (cert, key) = (
        cert.to_str().context("temp path")?,
        key.to_str().context("temp path")?,
    );
    let tls_port = TLS_PORT.to_string();
    let server = lab
        .start_server_on(
            &format!("{SERVER_IP}:{TLS_PORT}"),
            SERVER_IP2,
            &[
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--turn-tls-port",
                &tls_port,
                "--turn-tls-host",
                SERVER_IP2,
            ],
        )
        .await?;
    ensure!(server.base.starts_with("https://"), "{}", server.base);
    Ok((server, pki, leaf))
}

async fn browser_over_turns(lab: &Lab) -> anyhow::Result<()> {
    use anyhow::{Context as _, ensure};

    let dir = tempfile::tempdir()?;
    let (server, pki, leaf) = start_tls_server(lab).await?;
    let (ca, trust) = (pki.ca_path(), leaf.chromium_flag());
    let ca = ca.to_str().context("temp path")?;
    let src = dir.path().join("turns.bin");
    let hash = random_file(&src, 256 * 1024 + 7)?;
    let src = src.to_str().context("temp path")?;
    let mut cli = lab.spawn_peer(
        1,
        "cli",
        &["send", "--server", &server.base, "--ca-cert", ca, src],
    )?;
    let link = cli.invite().await?;

    let page = lab.open_page(0, &[trust]).await?;
    let result = async {
        page.goto(&link).await?;
        page.wait_peers_in_state(1, "turn").await?;
        let labels = page.peer_state_labels().await?;
        ensure!(labels == ["TURN relay"], "page shows {labels:?}");
        let connected = cli
            .wait_for_within("connected", CONNECT_TIMEOUT, |v| v["event"] == "connected")
            .await?;
        ensure!(connected["path"] == "turn", "cli: {connected}");

        page.say("hello over turns").await?;
        cli.wait_for("the page's message", |v| {
            v["event"] == "message" && v["text"] == "hello over turns"
        })
        .await?;
        page.accept("turns.bin").await?;
        let got = page
            .wait_transfer("turns.bin", "done", CONNECT_TIMEOUT)
            .await?;
        ensure!(got == hash, "the page verified {got}, sent {hash}");
        let status = cli.wait_exit(EXIT_TIMEOUT).await?;
        ensure!(
            status.success(),
            "cli exited with {status}: {:?}",
            cli.history
        );
        // The page's network let it reach the relay over TLS on port 443.
        let turns = format!("dst={SERVER_IP2} sport=");
        let tracked = lab.conntrack(0)?;
        ensure!(
            tracked.lines().any(|l| l.contains(" tcp ")
                && l.contains(&turns)
                && l.contains(&format!("dport={TLS_PORT} "))),
            "no TCP connection to {SERVER_IP2}:{TLS_PORT} went through the page's router"
        );
        Ok(())
    }
    .await;
    page.close().await;
    result
}
