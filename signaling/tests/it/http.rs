//! Plain HTTP routes against a real server: health, metrics, the web app.

use parlor_protocol::{ClientMessage, ErrorCode, PeerId, ServerMessage};
use parlor_signaling::Config;

use crate::support::{TestServer, http_get, http_request, new_room, test_config};

#[tokio::test]
async fn healthz_answers_ok() {
    let server = TestServer::start(test_config()).await;
    let (status, _, body) = http_get(server.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let server = TestServer::start(test_config()).await;
    assert_eq!(http_get(server.addr, "/nope").await.0, 404);
    assert_eq!(http_get(server.addr, "/r/a/b/c").await.0, 404);
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn metrics_count_connections_rooms_peers_messages_and_errors() {
    let server = TestServer::start(test_config()).await;
    let room = new_room();
    let (mut ada, _, _) = server.join(&room, "ada").await;
    let (_bob, _, _) = server.join(&room, "bob").await;
    let (_cyd, _, _) = server.join(&new_room(), "cyd").await;
    assert!(matches!(ada.recv().await, ServerMessage::PeerJoined { .. }));
    ada.send(&ClientMessage::Offer {
        to: PeerId("nobody".into()),
        sdp: "v=0".into(),
    })
    .await;
    ada.expect_error(ErrorCode::UnknownPeer).await;
    ada.send_text("{").await;
    ada.expect_error(ErrorCode::Malformed).await;

    let (status, head, body) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for line in [
        "parlor_connections 3",
        "parlor_rooms 2",
        "parlor_peers 3",
        "parlor_connections_total 3",
        "parlor_signaling_messages_total{type=\"hello\"} 3",
        "parlor_signaling_messages_total{type=\"offer\"} 1",
        "parlor_errors_total{code=\"unknown_peer\"} 1",
        "parlor_errors_total{code=\"malformed\"} 1",
    ] {
        assert!(has_line(&body, line), "missing {line:?} in\n{body}");
    }
}

#[tokio::test]
async fn each_server_has_its_own_metrics() {
    let one = TestServer::start(test_config()).await;
    let two = TestServer::start(test_config()).await;
    let room = new_room();
    let (_ada, _, _) = one.join(&room, "ada").await;
    let (_bob, _, _) = one.join(&room, "bob").await;
    assert!(has_line(
        &http_get(one.addr, "/metrics").await.2,
        "parlor_peers 2"
    ));
    assert!(has_line(
        &http_get(two.addr, "/metrics").await.2,
        "parlor_peers 0"
    ));
}

#[tokio::test]
async fn without_a_built_app_the_pages_say_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Config {
        web_dir: Some(dir.path().to_owned()),
        ..test_config()
    })
    .await;
    for path in ["/", "/r/abcdefghijklmnopqrstuv"] {
        let (status, head, body) = http_get(server.addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/html"),
            "{head}"
        );
        assert!(body.contains("not built yet"), "{body}");
        assert!(body.contains("cargo xtask run"), "{body}");
    }
    assert_eq!(http_get(server.addr, "/app.js").await.0, 404);
}

/// A web dir with an `index.html` and a `parlor.js`.
fn built_app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><title>Parlor</title>",
    )
    .unwrap();
    std::fs::write(dir.path().join("parlor.js"), "export {}").unwrap();
    dir
}

#[tokio::test]
async fn a_built_app_is_served_with_index_html_for_room_links() {
    let dir = built_app();
    let server = TestServer::start(Config {
        web_dir: Some(dir.path().to_owned()),
        ..test_config()
    })
    .await;
    for path in ["/", "/r/abcdefghijklmnopqrstuv"] {
        let (status, _, body) = http_get(server.addr, path).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "<!doctype html><title>Parlor</title>"),
            "{path}"
        );
    }
    let (status, head, body) = http_get(server.addr, "/parlor.js").await;
    assert_eq!((status, body.as_str()), (200, "export {}"));
    assert!(head.to_ascii_lowercase().contains("javascript"), "{head}");
    assert_eq!(http_get(server.addr, "/missing.js").await.0, 404);
    assert_eq!(http_get(server.addr, "/healthz").await.2, "ok");
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let server = TestServer::start(test_config()).await;
    for path in ["/healthz", "/", "/nope"] {
        let (_, headers, _) = http_get(server.addr, path).await;
        let headers = headers.to_ascii_lowercase();
        for expected in [
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
            "x-frame-options: deny",
        ] {
            assert!(headers.contains(expected), "{path}: {headers}");
        }
    }
}

/// The value of header `name` in `head`, lower-cased.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_ascii_lowercase())
    })
}

#[tokio::test]
async fn head_answers_wherever_get_does_with_the_same_headers_and_no_body() {
    let dir = built_app();
    let built = TestServer::start(Config {
        web_dir: Some(dir.path().to_owned()),
        ..test_config()
    })
    .await;
    let unbuilt = TestServer::start(test_config()).await;
    let cases = [
        (&built, "/"),
        (&built, "/r/abcdefghijklmnopqrstuv"),
        (&built, "/parlor.js"),
        (&built, "/healthz"),
        (&built, "/metrics"),
        (&unbuilt, "/"),
        (&unbuilt, "/r/abcdefghijklmnopqrstuv"),
    ];
    for (server, path) in cases {
        let (get_status, get_head, get_body) = http_get(server.addr, path).await;
        let (status, head, body) = http_request(server.addr, "HEAD", path).await;
        assert_eq!(get_status, 200, "GET {path}");
        assert_eq!(status, 200, "HEAD {path}: {head}");
        assert_eq!(body, "", "HEAD {path} sent a body");
        assert_eq!(
            header(&head, "content-type"),
            header(&get_head, "content-type"),
            "HEAD {path}"
        );
        assert_eq!(
            header(&head, "x-content-type-options").as_deref(),
            Some("nosniff"),
            "HEAD {path}"
        );
        if path != "/metrics" {
            // The metrics change between the two requests; the rest does not.
            assert_eq!(
                header(&head, "content-length"),
                Some(get_body.len().to_string()),
                "HEAD {path}: {head}"
            );
        }
    }
    // What GET does not serve, HEAD does not either.
    assert_eq!(http_request(built.addr, "HEAD", "/missing.js").await.0, 404);
    assert_eq!(http_request(built.addr, "HEAD", "/nope").await.0, 404);
    assert_eq!(http_request(built.addr, "DELETE", "/healthz").await.0, 405);
}

#[tokio::test]
async fn connections_the_server_accepts_have_nagle_off() {
    // `serve` sets TCP_NODELAY on its listener; accepted sockets inherit it.
    for nodelay in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        parlor_signaling::set_nodelay(&listener, nodelay).unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(accepted.nodelay().unwrap(), nodelay);
    }
}
