//! Behind a reverse proxy: forwarded client addresses from `--trusted-proxy`
//! peers (and only from them) get their own per-address limits; the
//! `Origin` check against `--public-url` or what the request shows.
//!
//! The tests' connections come from 127.0.0.1, which plays the proxy: it
//! is trusted or not depending on the server's `trusted_proxies`.

use std::net::SocketAddr;

use parlor_signaling::Config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::support::{TestServer, http_post, test_config, within};

/// A WebSocket open to the server, held until dropped.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws` with extra request headers: the socket, or the refusal's
/// status and body.
async fn connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Socket, (u16, String)> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match within(
        "websocket connect",
        tokio_tungstenite::connect_async(request),
    )
    .await
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

fn proxied(trusted: &str) -> Config {
    Config {
        trusted_proxies: vec![trusted.parse().unwrap()],
        max_connections_per_ip: 2,
        ..test_config()
    }
}

#[tokio::test]
async fn each_forwarded_client_gets_its_own_connection_cap() {
    let server = TestServer::start(proxied("127.0.0.1/32")).await;
    let mut held = Vec::new();
    // 6 WebSockets through one proxy address, three times the cap of 2.
    for client in ["198.51.100.1", "198.51.100.2", "2001:db8::3"] {
        for _ in 0..2 {
            let ws = connect(server.addr, &[("x-forwarded-for", client)]).await;
            assert_eq!(status(&ws), 101, "{client}");
            held.push(ws);
        }
    }
    // The cap still applies to each forwarded address.
    let third = connect(server.addr, &[("x-forwarded-for", "198.51.100.1")]).await;
    let Err((429, body)) = third else {
        panic!("expected 429, got {}", status(&third));
    };
    assert!(body.contains("2"), "{body}");
    // Forwarded (RFC 7239) forms count the same address as X-Forwarded-For.
    let quoted = connect(server.addr, &[("forwarded", r#"for="[2001:db8::3]:4711""#)]).await;
    assert_eq!(status(&quoted), 429, "the same client as 2001:db8::3");
    // A forged entry on the left does not move the client elsewhere.
    let forged = connect(
        server.addr,
        &[("x-forwarded-for", "203.0.113.50, 198.51.100.2")],
    )
    .await;
    assert_eq!(status(&forged), 429);
    // The proxy's own requests (no header) have a bucket of their own.
    assert_eq!(status(&connect(server.addr, &[]).await), 101);
    // Closing one frees its slot.
    held.remove(0).unwrap().close(None).await.unwrap();
    within("the slot to be freed", async {
        loop {
            let ws = connect(server.addr, &[("x-forwarded-for", "198.51.100.1")]).await;
            if ws.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_are_ignored() {
    // 127.0.0.1 is not in the trusted range: every connection is 127.0.0.1's.
    let server = TestServer::start(proxied("10.0.0.0/8")).await;
    let a = connect(server.addr, &[("x-forwarded-for", "198.51.100.1")]).await;
    let b = connect(server.addr, &[("forwarded", "for=198.51.100.2")]).await;
    assert_eq!((status(&a), status(&b)), (101, 101));
    let c = connect(server.addr, &[("x-forwarded-for", "198.51.100.3")]).await;
    assert_eq!(status(&c), 429, "a third from 127.0.0.1");
}

#[tokio::test]
async fn the_code_api_rate_is_per_forwarded_client() {
    let server = TestServer::start(Config {
        ip_connect_rate: 1,
        ..proxied("127.0.0.1")
    })
    .await;
    let post = |client: &'static str| {
        let addr = server.addr;
        async move {
            let header = format!("X-Forwarded-For: {client}\r\n");
            http_post(addr, "/api/code", &header).await.0
        }
    };
    // Bursts of three times the rate, then 429, for one client only.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post("198.51.100.1").await);
    }
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    assert_eq!(statuses[3], 429, "{statuses:?}");
    assert_eq!(post("198.51.100.2").await, 200, "another client");
}

#[tokio::test]
async fn an_http_origin_is_refused_for_an_https_site() {
    let server = TestServer::start(Config {
        public_url: Some("https://chat.example.test".parse().unwrap()),
        ..test_config()
    })
    .await;
    let host = ("host", "chat.example.test");
    let refused = connect(server.addr, &[host, ("origin", "http://chat.example.test")]).await;
    let Err((403, body)) = refused else {
        panic!("expected 403, got {}", status(&refused));
    };
    assert!(
        body.contains("http://chat.example.test may not use this server")
            && body.contains("https://chat.example.test")
            && body.contains("--public-url"),
        "{body}"
    );
    let ok = connect(
        server.addr,
        &[host, ("origin", "https://chat.example.test")],
    )
    .await;
    assert_eq!(status(&ok), 101);
    let other_port = connect(
        server.addr,
        &[host, ("origin", "https://chat.example.test:8443")],
    )
    .await;
    assert_eq!(status(&other_port), 403);
}

#[tokio::test]
async fn a_host_header_without_its_port_is_accepted_with_public_url() {
    // nginx's `proxy_set_header Host $host;` drops the port of the page's
    // origin https://chat.example.test:8443.
    let server = TestServer::start(Config {
        public_url: Some("https://chat.example.test:8443".parse().unwrap()),
        ..proxied("127.0.0.1")
    })
    .await;
    let ws = connect(
        server.addr,
        &[
            ("host", "chat.example.test"),
            ("origin", "https://chat.example.test:8443"),
            ("x-forwarded-for", "198.51.100.1"),
        ],
    )
    .await;
    assert_eq!(status(&ws), 101);
    // Without --public-url the same request shows http://chat.example.test.
    let plain = TestServer::start(proxied("127.0.0.1")).await;
    let ws = connect(
        plain.addr,
        &[
            ("host", "chat.example.test"),
            ("origin", "https://chat.example.test:8443"),
        ],
    )
    .await;
    assert_eq!(status(&ws), 403);
}

#[tokio::test]
async fn the_scheme_of_a_trusted_proxy_decides_without_public_url() {
    let trusted = TestServer::start(proxied("127.0.0.1")).await;
    let untrusted = TestServer::start(proxied("10.0.0.0/8")).await;
    let headers = |origin| {
        [
            ("host", "chat.example.test"),
            ("x-forwarded-proto", "https"),
            ("origin", origin),
        ]
    };
    let https = headers("https://chat.example.test");
    let http = headers("http://chat.example.test");
    assert_eq!(status(&connect(trusted.addr, &https).await), 101);
    assert_eq!(status(&connect(trusted.addr, &http).await), 403);
    // From an untrusted peer X-Forwarded-Proto is ignored: the request is
    // plain http.
    assert_eq!(status(&connect(untrusted.addr, &https).await), 403);
    assert_eq!(status(&connect(untrusted.addr, &http).await), 101);
}

#[tokio::test]
async fn the_page_can_ask_whether_its_origin_is_allowed() {
    let server = TestServer::start(Config {
        public_url: Some("https://chat.example.test".parse().unwrap()),
        ..test_config()
    })
    .await;
    for (origin, allowed) in [
        ("http%3A%2F%2Fchat.example.test", false),
        ("https%3A%2F%2Fchat.example.test", true),
    ] {
        let (status, body) =
            http_get_json(server.addr, &format!("/api/origin-check?origin={origin}")).await;
        assert_eq!(status, 200);
        assert_eq!(body["allowed"], allowed, "{body}");
        assert_eq!(body["expected"], "https://chat.example.test", "{body}");
    }
    let (status, head, body) =
        crate::support::http_request(server.addr, "HEAD", "/api/origin-check").await;
    assert_eq!((status, body.as_str()), (200, ""), "{head}");
}

async fn http_get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = crate::support::http_get(addr, path).await;
    (status, serde_json::from_str(&body).unwrap())
}
