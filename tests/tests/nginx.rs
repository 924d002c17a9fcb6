//! `parlor-server` behind a real nginx (Debian's `nginx-light`, installed by
//! `cargo xtask setup`): nginx runs as an ordinary process of the test
//! (no daemon, no master process, everything in a temporary directory) on
//! a free loopback port with https (a private CA made by rcgen), with the
//! configuration the README recommends: `Host $host` (the port dropped),
//! `X-Forwarded-For $proxy_add_x_forwarded_for`, `X-Forwarded-Proto` and the
//! WebSocket upgrade headers. The server trusts 127.0.0.1 as its proxy.
//!
//! Clients connect to nginx from different loopback source addresses
//! (127.0.0.2, 127.0.0.3, ...), so nginx forwards different client
//! addresses and each gets its own per-address limit; a forged
//! `X-Forwarded-For` from a client does not get it another one; the
//! `Origin` check works against `--public-url` although nginx drops the
//! port from `Host`; `parlor --ca-cert` peers chat and send a file through it.
//!
//! Skipped (with a message) only when nginx is missing and
//! `PARLOR_REQUIRE_NGINX` is not set; `cargo xtask test` sets it.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parlor_tests::nginx::{self, Nginx};
use parlor_tests::pki::Pki;
use parlor_tests::{chat_both_ways, transfer};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Bound on each request.
const STEP: Duration = Duration::from_secs(15);

/// TLS to nginx from the loopback address `from`, trusting only `ca`.
async fn tls_from(
    from: IpAddr,
    port: u16,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = tokio::time::timeout(STEP, socket.connect(([127, 0, 0, 1], port).into()))
        .await
        .unwrap()
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .unwrap()
    .unwrap()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens `wss://localhost:PORT/ws` through nginx from `from` with extra
/// headers: the socket, or the refusal's status and body.
async fn connect(
    nginx: &Nginx,
    ca: &Path,
    from: &str,
    headers: &[(&str, &str)],
) -> Result<Socket, (u16, String)> {
    let tls = tls_from(from.parse().unwrap(), nginx.port, ca).await;
    let mut request = format!("wss://localhost:{}/ws", nginx.port)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, tls))
        .await
        .unwrap()
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or(&[])).into_owned();
            Err((response.status().as_u16(), body))
        }
        Err(other) => panic!("{other}"),
    }
}

fn status(result: &Result<Socket, (u16, String)>) -> u16 {
    match result {
        Ok(_) => 101,
        Err((status, _)) => *status,
    }
}

/// `METHOD path` through nginx from 127.0.0.1: status, head and body.
async fn request(nginx: &Nginx, ca: &Path, method: &str, path: &str) -> (u16, String, String) {
    let mut tls = tls_from([127, 0, 0, 1].into(), nginx.port, ca).await;
    let text = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        nginx.port
    );
    tls.write_all(text.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The answer is what counts; a close without close_notify is fine.
    let _ = tokio::time::timeout(STEP, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_nginx_each_client_has_its_own_limits_and_the_origin_check_holds() {
    let Some(binary) = nginx::binary() else {
        return;
    };
    let _serial = parlor_tests::exclusive().await;
    let pki = Pki::new();
    pki.issue("localhost", 1);
    let ca: PathBuf = pki.ca_path();
    let (_server, nginx) = nginx::stack(
        binary,
        &pki,
        "localhost",
        &["--no-turn", "--max-connections-per-ip", "2"],
    )
    .await
    .unwrap();
    let origin = nginx.origin();
    let page = [("origin", origin.as_str())];

    // Six WebSockets through nginx, three times the per-address cap, from
    // three client addresses: all accepted.
    let mut held = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        for _ in 0..2 {
            let ws = connect(&nginx, &ca, from, &page).await;
            assert_eq!(status(&ws), 101, "from {from}: {:?}", ws.as_ref().err());
            held.push(ws);
        }
    }
    // The cap still holds for each client address.
    let third = connect(&nginx, &ca, "127.0.0.2", &page).await;
    assert_eq!(status(&third), 429, "{:?}", third.as_ref().err());
    // A forged X-Forwarded-For ("203.0.113.9, 127.0.0.3" once nginx has
    // appended the real address) does not buy another address.
    let forged = [
        ("origin", origin.as_str()),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    let spoofed = connect(&nginx, &ca, "127.0.0.3", &forged).await;
    assert_eq!(status(&spoofed), 429, "{:?}", spoofed.as_ref().err());
    // Another client still gets in.
    assert_eq!(status(&connect(&nginx, &ca, "127.0.0.5", &page).await), 101);

    // nginx sends `Host: localhost` (no port); --public-url makes the
    // page's real origin pass, and http:// or another port do not.
    let http_page = format!("http://localhost:{}", nginx.port);
    let refused = connect(&nginx, &ca, "127.0.0.6", &[("origin", http_page.as_str())]).await;
    let Err((403, body)) = refused else {
        panic!("expected 403, got {}", status(&refused));
    };
    assert!(body.contains(&origin), "{body}");
    let other_site = connect(&nginx, &ca, "127.0.0.6", &[("origin", "https://localhost")]).await;
    assert_eq!(status(&other_site), 403);

    // HEAD through the proxy: 200, no body.
    for path in ["/", "/healthz", "/metrics", "/r/abcdefghijklmnopqrstuv"] {
        let (status, head, body) = request(&nginx, &ca, "HEAD", path).await;
        assert_eq!((status, body.as_str()), (200, ""), "HEAD {path}: {head}");
    }
    let (status, _, body) = request(
        &nginx,
        &ca,
        "GET",
        &format!(
            "/api/origin-check?origin=http%3A%2F%2Flocalhost%3A{}",
            nginx.port
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["allowed"], false, "{body}");
    assert_eq!(body["expected"], origin.as_str(), "{body}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_peers_chat_and_send_a_file_through_nginx_with_ca_cert() {
    let Some(binary) = nginx::binary() else {
        return;
    };
    let _serial = parlor_tests::exclusive().await;
    let pki = Pki::new();
    pki.issue("localhost", 1);
    let ca = pki.ca_path();
    let ca = ca.to_str().unwrap();
    // (The CLI sends no Origin; 127.0.0.1 spares it resolving localhost
    // to ::1 first, where nginx does not listen.)
    let (_server, nginx) = nginx::stack(binary, &pki, "127.0.0.1", &["--no-turn"])
        .await
        .unwrap();
    let base = format!("https://127.0.0.1:{}", nginx.port);
    chat_both_ways(&base, &["--ca-cert", ca]).await.unwrap();

    // A file, from `send` to `receive`, through the same https site.
    let t = transfer(&base, &["--ca-cert", ca], [&[], &[]], 2 * 1024 * 1024 + 9)
        .await
        .unwrap();
    assert_eq!(t.received, t.sent);
}
