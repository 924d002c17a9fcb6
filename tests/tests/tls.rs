//! TLS end to end: `parlor-server --tls-cert/--tls-key` serving https and
//! wss with a certificate from a private CA made at test time (rcgen), real
//! `parlor` peers trusting it with `--ca-cert`, one without it refused
//! with a clear message, and the certificate reloaded on SIGHUP.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parlor_tests::pki::Pki;
use parlor_tests::{Peer, Server, chat_both_ways, hash_file, random_file, transfer};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Connects to the https server at `base` trusting only `ca`: the DER of
/// the certificate it presents, and its answer to `GET /healthz`.
async fn probe(base: &str, ca: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    probe_with(base, ca, "/healthz", "").await
}

/// [`probe`] with a `GET path` and extra header lines `headers` (each
/// ending in CRLF).
async fn probe_with(
    base: &str,
    ca: &Path,
    path: &str,
    headers: &str,
) -> anyhow::Result<(Vec<u8>, String)> {
    let authority = base.strip_prefix("https://").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    let name = ServerName::try_from("127.0.0.1")?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n{headers}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    // The answer is what counts; a close without close_notify is fine.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    Ok((presented, String::from_utf8_lossy(&answer).into_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_and_chat_travel_through_an_https_server_with_ca_cert() {
    let _serial = parlor_tests::exclusive().await;
    let pki = Pki::new();
    pki.issue("parlor test server", 1);
    let server = pki.server().await.unwrap();
    let ca = pki.ca_path();
    let ca = ca.to_str().unwrap();

    let t = transfer(
        &server.base,
        &["--ca-cert", ca],
        [&[], &[]],
        2 * 1024 * 1024,
    )
    .await
    .unwrap();
    assert_eq!(t.received, t.sent);

    chat_both_ways(&server.base, &["--ca-cert", ca])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_ca_cert_the_certificate_is_refused_with_a_clear_error() {
    let _serial = parlor_tests::exclusive().await;
    let pki = Pki::new();
    pki.issue("parlor test server", 1);
    let server = pki.server().await.unwrap();
    let authority = server.base.strip_prefix("https://").unwrap().to_owned();

    // The WebSocket (chat creating a room) and the code API (send --code).
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f.bin");
    random_file(&src, 1024).unwrap();
    let runs: [&[&str]; 2] = [
        &["chat", "--server", &server.base],
        &[
            "send",
            "--code",
            "--server",
            &server.base,
            src.to_str().unwrap(),
        ],
    ];
    for args in runs {
        let mut peer = Peer::spawn("untrusting", args).unwrap();
        let status = peer.wait_exit(EXIT_TIMEOUT).await.unwrap();
        assert!(!status.success(), "{args:?}: {:?}", peer.history);
        let error = peer.wait_event("error").await.unwrap();
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("not trusted")
                && message.contains(&authority)
                && message.contains("--ca-cert"),
            "{args:?}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn send_code_works_over_https() {
    let _serial = parlor_tests::exclusive().await;
    let pki = Pki::new();
    pki.issue("parlor test server", 1);
    let server = pki.server().await.unwrap();
    let ca = pki.ca_path();
    let ca = ca.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("code.bin");
    let hash = random_file(&src, 512 * 1024).unwrap();
    let mut sender = Peer::spawn(
        "sender",
        &[
            "--ca-cert",
            ca,
            "send",
            "--code",
            "--server",
            &server.base,
            src.to_str().unwrap(),
        ],
    )
    .unwrap();
    let code = sender.code().await.unwrap();
    let out = dir.path().join("out");
    let mut receiver = Peer::spawn(
        "receiver",
        &[
            "--ca-cert",
            ca,
            "receive",
            &code,
            "--server",
            &server.base,
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .unwrap();
    receiver.wait_event("code_matched").await.unwrap();
    let status = receiver.wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert!(status.success(), "{:?}", receiver.history);
    assert_eq!(hash_file(&out.join("code.bin")).unwrap(), hash);
    assert!(
        sender.wait_exit(EXIT_TIMEOUT).await.unwrap().success(),
        "{:?}",
        sender.history
    );
}

fn sighup(server: &Server) {
    let pid = server.pid().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificate_and_a_bad_reload_keeps_serving() {
    let _serial = parlor_tests::exclusive().await;
    let pki = Pki::new();
    let first = pki.issue("parlor test server one", 1).der;
    let server = pki.server().await.unwrap();
    let ca = pki.ca_path();
    let (presented, health) = probe(&server.base, &ca).await.unwrap();
    assert_eq!(presented, first);
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
        "{health}"
    );

    // A page served over http cannot be this https server's own origin.
    let authority = server.base.strip_prefix("https://").unwrap();
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (_, refused) = probe_with(
        &server.base,
        &ca,
        "/ws",
        &format!("{upgrade}Origin: http://{authority}\r\n"),
    )
    .await
    .unwrap();
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    // A new certificate (other subject and serial) in the same files.
    let second = pki.issue("parlor test server two", 2).der;
    assert_ne!(first, second);
    sighup(&server);
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = probe(&server.base, &ca).await.unwrap().0;
        if seen == second {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, second, "the reloaded certificate is not served");

    // A broken file: the reload fails and the second certificate stays.
    std::fs::write(pki.cert_path(), "not a certificate\n").unwrap();
    sighup(&server);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (presented, health) = probe(&server.base, &ca).await.unwrap();
    assert_eq!(presented, second);
    assert!(health.ends_with("ok"), "{health}");

    // And the peers still get through.
    chat_both_ways(&server.base, &["--ca-cert", ca.to_str().unwrap()])
        .await
        .unwrap();
}
