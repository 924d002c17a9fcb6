//! HTTP routes: warp filters built from [`App`], their handlers, and the one
//! [`recover`] function that turns rejections into JSON errors.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ws` | the signaling WebSocket ([`crate::session`]) |
//! | `GET /healthz` | `200 ok` |
//! | `GET /metrics` | Prometheus text ([`crate::metrics`]) |
//! | `POST /api/code` | `{"nameplate": N, "room": ROOM}` ([`crate::codes`]) |
//! | `POST /api/code/{N}/open` | `{"room": ROOM}` once, then `404` |
//! | `GET /api/origin-check[?origin=O]` | `{"allowed": bool, "origin": O, "expected": "https://..."}` |
//! | `GET /`, `GET /r/{room}`, app files | the web app ([`crate::web`]) |
//! | anything else | `404` |
//!
//! Every `GET` route but `/ws` answers `HEAD` too.
//!
//! The client address of every per-address limit and the scheme of the
//! `Origin` check come from [`client`], which reads forwarding headers only
//! from `--trusted-proxy` peers ([`crate::forwarded`]).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use warp::http::header::{HOST, ORIGIN};
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::config::Config;
use crate::forwarded;
use crate::limit::IpRefusal;
use crate::origin::{Scheme, WebOrigin, origin_allowed};
use crate::session::{self, TRANSPORT_MAX_MESSAGE_BYTES};
use crate::state::App;
use crate::{metrics, upgrade, web};

/// Every route of the server, with rejections recovered.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(upgrade::upgrade())
        .and(client(Arc::clone(&app)))
        .and(with_app(Arc::clone(&app)))
        .and_then(websocket);
    let origin_check = warp::path!("api" / "origin-check")
        .and(web::get_or_head())
        .and(warp::query::<OriginQuery>())
        .and(client(Arc::clone(&app)))
        .and(with_app(Arc::clone(&app)))
        .map(origin_check);
    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .and(web::get_or_head())
        .map(|| "ok");
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(web::get_or_head())
        .and(with_app(Arc::clone(&app)))
        .map(metrics);
    let create_code = warp::path!("api" / "code")
        .and(warp::post())
        .and(client_checks(Arc::clone(&app)))
        .and(with_app(Arc::clone(&app)))
        .map(create_code);
    let open_code = warp::path!("api" / "code" / u32 / "open")
        .and(warp::post())
        .and(client_checks(Arc::clone(&app)))
        .and(with_app(Arc::clone(&app)))
        .map(open_code);
    let web = web::app_routes(app.config().web_source());
    ws.or(healthz)
        .or(metrics)
        .or(create_code)
        .or(open_code)
        .or(origin_check)
        .or(web)
        .recover(recover)
        .with(warp::reply::with::headers(web::security_headers()))
}

fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || Arc::clone(&app))
}

/// Why a WebSocket upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// `--max-connections` WebSockets are open.
    #[error("server is at its connection limit; try again later")]
    TooManyConnections,
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
}

impl warp::reject::Reject for Unavailable {}

/// Why a WebSocket upgrade was refused for this client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A browser page from another site (or another scheme or port of this
    /// one) tried to connect.
    #[error(
        "origin {origin} may not use this server, whose own origin is {} \
         (see --public-url, and --allowed-origin for other sites)",
        expected.as_deref().unwrap_or("unknown (no Host header)")
    )]
    Origin {
        /// The page's `Origin`.
        origin: String,
        /// The server's own origin for this request, when known.
        expected: Option<String>,
    },
    /// The client's address is over its limits.
    #[error(transparent)]
    Address(#[from] IpRefusal),
}

impl warp::reject::Reject for Refused {}

/// Who sent a request, as the limits and the `Origin` check see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address: forwarded by a trusted proxy, else the
    /// socket's (0.0.0.0 when unknown, as in in-process tests).
    pub ip: IpAddr,
    /// The socket address the request came from.
    pub peer: Option<SocketAddr>,
    /// The page's `Origin` header.
    pub origin: Option<String>,
    /// The server's own origin for this request: `--public-url`, else the
    /// `Host` header with `https` over TLS or when a trusted proxy says so
    /// (`None` without a usable `Host`).
    pub expected: Option<WebOrigin>,
}

impl Client {
    /// Reads a request's client from its socket address and headers.
    pub fn of(remote: Option<SocketAddr>, headers: &HeaderMap, config: &Config) -> Self {
        let peer_ip = remote.map_or(IpAddr::from([0, 0, 0, 0]), |r| r.ip());
        let resolved = forwarded::resolve(
            peer_ip,
            &config.trusted_proxies,
            config.proxy_header,
            headers,
        );
        let expected = config.public_url.clone().or_else(|| {
            let https = config.tls_files().is_some() || resolved.proto.as_deref() == Some("https");
            let scheme = if https { Scheme::Https } else { Scheme::Http };
            let host = headers.get(HOST)?.to_str().ok()?;
            WebOrigin::from_host(scheme, host).ok()
        });
        let origin = headers
            .get(ORIGIN)
            .and_then(|o| o.to_str().ok())
            .map(str::to_owned);
        Self {
            ip: resolved.ip,
            peer: remote,
            origin,
            expected,
        }
    }

    /// Whether the `Origin` may use the server (see [`origin_allowed`]),
    /// or the refusal to answer with.
    pub fn check_origin(&self, allowed: &[String]) -> Result<(), Refused> {
        if origin_allowed(self.origin.as_deref(), self.expected.as_ref(), allowed) {
            return Ok(());
        }
        Err(Refused::Origin {
            origin: self.origin.clone().unwrap_or_default(),
            expected: self.expected.as_ref().map(ToString::to_string),
        })
    }
}

/// The [`Client`] of a request.
pub fn client(app: Arc<App>) -> impl Filter<Extract = (Client,), Error = Infallible> + Clone {
    remote()
        .and(warp::header::headers_cloned())
        .and(with_app(app))
        .map(
            |remote: Option<SocketAddr>, headers: HeaderMap, app: Arc<App>| {
                Client::of(remote, &headers, app.config())
            },
        )
}

/// `GET /ws`: counts the connection (or refuses it with 503) and upgrades.
async fn websocket(
    ws: upgrade::Upgrade,
    client: Client,
    app: Arc<App>,
) -> Result<impl Reply, Rejection> {
    if app.is_shutting_down() {
        return Err(warp::reject::custom(Unavailable::ShuttingDown));
    }
    if let Err(refused) = client.check_origin(&app.config().allowed_origins) {
        tracing::info!(
            origin = client.origin.as_deref().unwrap_or_default(),
            expected = ?client.expected.as_ref().map(ToString::to_string),
            "WebSocket from a foreign origin refused"
        );
        return Err(warp::reject::custom(refused));
    }
    let ip = client.ip;
    let ip_guard = match app.ip_limits().admit(ip, std::time::Instant::now()) {
        Ok(guard) => guard,
        Err(refusal) => {
            tracing::info!(%ip, peer = ?client.peer, %refusal, "WebSocket refused");
            return Err(warp::reject::custom(Refused::from(refusal)));
        }
    };
    let Some(conn) = app.try_connect() else {
        tracing::warn!(
            max = app.config().max_connections,
            "connection refused: limit reached"
        );
        return Err(warp::reject::custom(Unavailable::TooManyConnections));
    };
    tracing::debug!(%ip, peer = ?client.peer, "WebSocket accepted");
    let config = upgrade::socket_config(TRANSPORT_MAX_MESSAGE_BYTES);
    Ok(ws.on_upgrade(config, move |socket| {
        let session = session::serve(socket, app, conn);
        async move {
            session.await;
            drop(ip_guard);
        }
    }))
}

/// The socket address of a request: warp's own for plain HTTP, the
/// [`ClientAddr`](crate::tls::ClientAddr) extension over TLS. (Limits use
/// [`client`], which sees through trusted proxies.)
pub fn remote() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::addr::remote()
        .and(warp::ext::optional::<crate::tls::ClientAddr>())
        .map(
            |warp: Option<SocketAddr>, tls: Option<crate::tls::ClientAddr>| {
                warp.or(tls.map(|addr| addr.0))
            },
        )
}

/// The checks of `/ws` for the code API: a browser page of another site is
/// refused (403), and the address's connection rate applies (429; one
/// request takes one token of the same bucket as a WebSocket).
fn client_checks(app: Arc<App>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    client(Arc::clone(&app))
        .and(with_app(app))
        .and_then(|client: Client, app: Arc<App>| async move {
            client
                .check_origin(&app.config().allowed_origins)
                .map_err(warp::reject::custom)?;
            match app.ip_limits().admit(client.ip, std::time::Instant::now()) {
                // Counts towards the rate only, not the open connections.
                Ok(guard) => {
                    drop(guard);
                    Ok(())
                }
                Err(refusal) => Err(warp::reject::custom(Refused::from(refusal))),
            }
        })
        .untuple_one()
}

/// The query of `GET /api/origin-check`.
#[derive(Debug, serde::Deserialize)]
struct OriginQuery {
    /// The origin to check (a page passes `location.origin`: browsers send
    /// no `Origin` header with a same-origin `GET`); default: the `Origin`
    /// header.
    origin: Option<String>,
}

/// `GET /api/origin-check`: whether a page of this origin may open the
/// WebSocket, and the origin the server expects, so the page can say what
/// is wrong instead of failing to connect.
fn origin_check(query: OriginQuery, mut client: Client, app: Arc<App>) -> warp::reply::Response {
    if query.origin.is_some() {
        client.origin = query.origin;
    }
    let allowed = client.check_origin(&app.config().allowed_origins).is_ok();
    warp::reply::json(&serde_json::json!({
        "allowed": allowed,
        "origin": client.origin,
        "expected": client.expected.as_ref().map(ToString::to_string),
    }))
    .into_response()
}

fn json_error(status: StatusCode, message: &str) -> warp::reply::Response {
    let body = warp::reply::json(&serde_json::json!({ "error": message }));
    warp::reply::with_status(body, status).into_response()
}

/// `POST /api/code`: a fresh room and the smallest free nameplate for it.
fn create_code(app: Arc<App>) -> warp::reply::Response {
    match app
        .nameplates()
        .allocate(rand::random(), std::time::Instant::now())
    {
        Ok((nameplate, room)) => {
            app.metrics().code_created();
            tracing::debug!(nameplate, "code created");
            warp::reply::json(&serde_json::json!({ "nameplate": nameplate, "room": room }))
                .into_response()
        }
        Err(err) => json_error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

/// `POST /api/code/{N}/open`: the nameplate's room, once.
fn open_code(nameplate: u32, app: Arc<App>) -> warp::reply::Response {
    match app.nameplates().open(nameplate, std::time::Instant::now()) {
        Some(room) => {
            app.metrics().code_opened();
            tracing::debug!(nameplate, "code opened");
            warp::reply::json(&serde_json::json!({ "room": room })).into_response()
        }
        None => json_error(
            StatusCode::NOT_FOUND,
            "no such code: it was used already, has expired, or the number is wrong",
        ),
    }
}

/// `GET /metrics`.
fn metrics(app: Arc<App>) -> impl Reply {
    warp::reply::with_header(app.render_metrics(), "content-type", metrics::CONTENT_TYPE)
}

/// Turns any rejection into a status code and a JSON body `{"error": "..."}`.
pub async fn recover(rejection: Rejection) -> Result<impl Reply, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found".to_owned())
    } else if let Some(unavailable) = rejection.find::<Unavailable>() {
        (StatusCode::SERVICE_UNAVAILABLE, unavailable.to_string())
    } else if let Some(refused) = rejection.find::<Refused>() {
        let status = match refused {
            Refused::Origin { .. } => StatusCode::FORBIDDEN,
            Refused::Address(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        (status, refused.to_string())
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        (StatusCode::BAD_REQUEST, "invalid query string".to_owned())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        )
    } else if rejection
        .find::<warp::filters::ws::MissingConnectionUpgrade>()
        .is_some()
        || rejection.find::<warp::reject::MissingHeader>().is_some()
        || rejection.find::<warp::reject::InvalidHeader>().is_some()
    {
        (
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request".to_owned(),
        )
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error".to_owned(),
        )
    };
    let body = warp::reply::json(&serde_json::json!({ "error": message }));
    Ok(warp::reply::with_status(body, status))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn app(max_connections: usize) -> Arc<App> {
        let web_dir = std::env::temp_dir().join("parlor-signaling-no-such-dir");
        App::new(Config {
            max_connections,
            web_dir: Some(web_dir),
            ..Config::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn healthz_says_ok() {
        let res = warp::test::request()
            .path("/healthz")
            .reply(&routes(app(1)))
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.body().as_ref(), b"ok");
    }

    #[tokio::test]
    async fn unknown_paths_are_404_in_json() {
        let res = warp::test::request()
            .path("/nope")
            .reply(&routes(app(1)))
            .await;
        assert_eq!(res.status(), 404);
        assert_eq!(res.body().as_ref(), br#"{"error":"not found"}"#);
    }

    #[tokio::test]
    async fn ws_without_upgrade_is_a_bad_request() {
        let res = warp::test::request()
            .path("/ws")
            .reply(&routes(app(1)))
            .await;
        assert_eq!(res.status(), 400);
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let res = warp::test::request()
            .path("/metrics")
            .reply(&routes(app(1)))
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], metrics::CONTENT_TYPE);
        let body = String::from_utf8_lossy(res.body());
        assert!(body.lines().any(|l| l == "parlor_connections 0"), "{body}");
    }

    #[tokio::test]
    async fn wrong_method_is_405() {
        let res = warp::test::request()
            .method("POST")
            .path("/healthz")
            .reply(&routes(app(1)))
            .await;
        assert_eq!(res.status(), 405);
    }

    #[tokio::test]
    async fn hello_over_an_in_process_websocket_gets_a_welcome() {
        use parlor_protocol::{ClientMessage, RoomId, ServerMessage};
        let app = app(4);
        let mut ws = warp::test::ws()
            .path("/ws")
            .handshake(routes(Arc::clone(&app)))
            .await
            .unwrap();
        let hello = ClientMessage::Hello {
            version: 1,
            room: RoomId::from_random([3; 16]),
            name: Some("ada".into()),
            resume: None,
        };
        ws.send_text(hello.to_json()).await;
        let reply = ws.recv().await.unwrap();
        let reply = ServerMessage::from_json(reply.to_str().unwrap()).unwrap();
        assert!(matches!(reply, ServerMessage::Welcome { .. }), "{reply:?}");
        assert_eq!(app.open_connections(), 1);
        assert_eq!(app.backend().counts().peers, 1);
    }

    #[tokio::test]
    async fn websockets_beyond_the_limit_get_503() {
        let app = app(1);
        let routes = routes(Arc::clone(&app));
        let _held = app.try_connect().unwrap();
        let res = warp::test::request()
            .path("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .reply(&routes)
            .await;
        assert_eq!(res.status(), 503);
        assert_eq!(app.open_connections(), 1);
    }

    fn client_of(config: &Config, peer: &str, pairs: &[(&str, &str)]) -> Client {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                warp::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Client::of(Some(peer.parse().unwrap()), &headers, config)
    }

    #[test]
    fn the_expected_origin_follows_tls_trusted_proto_or_the_public_url() {
        let host = ("host", "chat.example.test:8443");
        let https = ("origin", "https://chat.example.test:8443");
        let http = ("origin", "http://chat.example.test:8443");
        let tls = Config {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..Config::default()
        };
        let ok = |c: &Config, peer, pairs: &[(&str, &str)]| {
            client_of(c, peer, pairs).check_origin(&[]).is_ok()
        };
        assert!(ok(&tls, "192.0.2.1:1", &[host, https]));
        assert!(!ok(&tls, "192.0.2.1:1", &[host, http]));
        // Plain HTTP: the request shows http, so an https page is not ours
        // unless a trusted proxy says the client used https.
        let plain = Config::default();
        assert!(ok(&plain, "192.0.2.1:1", &[host, http]));
        assert!(!ok(&plain, "192.0.2.1:1", &[host, https]));
        let proto = ("x-forwarded-proto", "https");
        assert!(
            !ok(&plain, "127.0.0.1:1", &[host, https, proto]),
            "untrusted"
        );
        let proxied = Config {
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            ..Config::default()
        };
        assert!(ok(&proxied, "127.0.0.1:1", &[host, https, proto]));
        assert!(!ok(&proxied, "127.0.0.1:1", &[host, http, proto]));
        let fwd = ("forwarded", "for=192.0.2.1;proto=https");
        assert!(ok(&proxied, "127.0.0.1:1", &[host, https, fwd]));
        // --public-url: the Host header (here with its port dropped by the
        // proxy) no longer matters.
        let public = Config {
            public_url: Some("https://chat.example.test:8443".parse().unwrap()),
            ..Config::default()
        };
        let dropped = ("host", "chat.example.test");
        assert!(ok(&public, "127.0.0.1:1", &[dropped, https]));
        assert!(!ok(&public, "127.0.0.1:1", &[dropped, http]));
        assert!(!ok(
            &public,
            "127.0.0.1:1",
            &[dropped, ("origin", "https://chat.example.test")]
        ));
        let refused = client_of(&public, "127.0.0.1:1", &[dropped, http])
            .check_origin(&[])
            .unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains("http://chat.example.test:8443 may not use this server")
                && message.contains("https://chat.example.test:8443 "),
            "{message}"
        );
    }

    #[tokio::test]
    async fn origin_check_says_what_is_expected() {
        let app = App::new(Config {
            public_url: Some("https://chat.example.test".parse().unwrap()),
            web_dir: Some(std::env::temp_dir().join("parlor-signaling-no-such-dir")),
            ..Config::default()
        })
        .unwrap();
        let routes = routes(app);
        let res = warp::test::request()
            .path("/api/origin-check?origin=http%3A%2F%2Fchat.example.test")
            .reply(&routes)
            .await;
        assert_eq!(res.status(), 200);
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["allowed"], false, "{body}");
        assert_eq!(body["expected"], "https://chat.example.test", "{body}");
        let res = warp::test::request()
            .path("/api/origin-check")
            .header("origin", "https://chat.example.test")
            .reply(&routes)
            .await;
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["allowed"], true, "{body}");
        let res = warp::test::request()
            .path("/api/origin-check?origin=%zz&origin=a")
            .reply(&routes)
            .await;
        assert_eq!(res.status(), 400);
    }
}
