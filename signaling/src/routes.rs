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
//! | `GET /`, `GET /r/{room}`, app files | the web app ([`crate::web`]) |
//! | anything else | `404` |
//!
//! Every `GET` route but `/ws` answers `HEAD` too.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use warp::http::StatusCode;
use warp::ws::Ws;
use warp::{Filter, Rejection, Reply};

use crate::limit::IpRefusal;
use crate::session::{self, TRANSPORT_MAX_MESSAGE_BYTES};
use crate::state::App;
use crate::{metrics, web};

/// Every route of the server, with rejections recovered.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(warp::ws())
        .and(remote())
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("host"))
        .and(with_app(Arc::clone(&app)))
        .and_then(websocket);
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
    let web = web::routes(app.config().web_dir.clone());
    ws.or(healthz)
        .or(metrics)
        .or(create_code)
        .or(open_code)
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
    /// A browser page from another site tried to connect.
    #[error("origin {0} may not use this server (see --allowed-origin)")]
    Origin(String),
    /// The client's address is over its limits.
    #[error(transparent)]
    Address(#[from] IpRefusal),
}

impl warp::reject::Reject for Refused {}

/// Whether a WebSocket with this `Origin` may connect: no `Origin` (not a
/// browser), the server's own origin (same host and port as `Host`; only
/// `https://` when the server terminates TLS itself, `tls`), or one of
/// `--allowed-origin`.
pub fn origin_allowed(
    origin: Option<&str>,
    host: Option<&str>,
    allowed: &[String],
    tls: bool,
) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let plain = (!tls).then(|| origin.strip_prefix("http://")).flatten();
    let authority = plain.or_else(|| origin.strip_prefix("https://"));
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// `GET /ws`: counts the connection (or refuses it with 503) and upgrades.
async fn websocket(
    ws: Ws,
    remote: Option<SocketAddr>,
    origin: Option<String>,
    host: Option<String>,
    app: Arc<App>,
) -> Result<impl Reply, Rejection> {
    if app.is_shutting_down() {
        return Err(warp::reject::custom(Unavailable::ShuttingDown));
    }
    if !origin_allowed(
        origin.as_deref(),
        host.as_deref(),
        &app.config().allowed_origins,
        app.config().tls_files().is_some(),
    ) {
        let origin = origin.unwrap_or_default();
        tracing::info!(%origin, "WebSocket from a foreign origin refused");
        return Err(warp::reject::custom(Refused::Origin(origin)));
    }
    let ip = remote.map_or(IpAddr::from([0, 0, 0, 0]), |r| r.ip());
    let ip_guard = match app.ip_limits().admit(ip, std::time::Instant::now()) {
        Ok(guard) => guard,
        Err(refusal) => {
            tracing::info!(%ip, %refusal, "WebSocket refused");
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
    Ok(ws
        .max_message_size(TRANSPORT_MAX_MESSAGE_BYTES)
        .max_frame_size(TRANSPORT_MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            session::serve(socket, app, conn).await;
            drop(ip_guard);
        }))
}

/// The client's address: warp's own for plain HTTP, the
/// [`ClientAddr`](crate::tls::ClientAddr) extension over TLS.
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
    remote()
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("host"))
        .and(with_app(app))
        .and_then(
            |remote: Option<SocketAddr>,
             origin: Option<String>,
             host: Option<String>,
             app: Arc<App>| async move {
                if !origin_allowed(
                    origin.as_deref(),
                    host.as_deref(),
                    &app.config().allowed_origins,
                    app.config().tls_files().is_some(),
                ) {
                    return Err(warp::reject::custom(Refused::Origin(
                        origin.unwrap_or_default(),
                    )));
                }
                let ip = remote.map_or(IpAddr::from([0, 0, 0, 0]), |r| r.ip());
                match app.ip_limits().admit(ip, std::time::Instant::now()) {
                    // Counts towards the rate only, not the open connections.
                    Ok(guard) => {
                        drop(guard);
                        Ok(())
                    }
                    Err(refusal) => Err(warp::reject::custom(Refused::from(refusal))),
                }
            },
        )
        .untuple_one()
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
            Refused::Origin(_) => StatusCode::FORBIDDEN,
            Refused::Address(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        (status, refused.to_string())
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
    use crate::config::Config;

    fn app(max_connections: usize) -> Arc<App> {
        let web_dir = std::env::temp_dir().join("parlor-signaling-no-such-dir");
        App::new(Config {
            max_connections,
            web_dir,
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

    #[test]
    fn a_tls_server_refuses_its_own_host_under_http() {
        let host = Some("chat.example.test:8443");
        let https = Some("https://chat.example.test:8443");
        let http = Some("http://chat.example.test:8443");
        assert!(origin_allowed(https, host, &[], true));
        assert!(!origin_allowed(http, host, &[], true));
        // Behind a TLS proxy the server speaks HTTP and pages are https.
        assert!(origin_allowed(https, host, &[], false));
        assert!(origin_allowed(http, host, &[], false));
    }
}
