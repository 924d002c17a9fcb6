//! The WebSocket upgrade of `GET /ws`, with buffers sized for many idle
//! peers.
//!
//! warp's own [`warp::ws::Ws`] validates the handshake well but gives every
//! connection tungstenite's default 128 KiB read buffer, which tungstenite
//! also zero-fills before each read: most of what an idle peer cost the
//! server, and a quarter of its CPU. [`upgrade`] keeps warp's checks (and
//! its rejections) and finishes the upgrade itself with
//! [`socket_config`].

use std::future::Future;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite_server::WebSocketStream;
use tokio_tungstenite_server::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite_server::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument as _;
use warp::http::{HeaderValue, StatusCode, header};
use warp::{Filter, Rejection, Reply};

/// An upgraded signaling WebSocket.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Read buffer of each connection. Signaling messages are a few hundred
/// bytes to a few KiB; a larger frame (an SDP, a relay packet) grows the
/// buffer as far as it needs, up to the transport's message limit.
pub const READ_BUFFER_BYTES: usize = 2 * 1024;

/// How much the writer buffers before it writes to the socket. The writer
/// flushes whenever its queue runs empty, so this only batches bursts.
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The WebSocket settings of every signaling connection: small buffers
/// (see [`READ_BUFFER_BYTES`]) and `max_message` as the message and frame
/// limit.
pub fn socket_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // Must hold at least one full message past the write buffer.
        .max_write_buffer_size(WRITE_BUFFER_BYTES + 2 * max_message)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// A validated WebSocket handshake, not yet answered.
#[derive(Debug)]
pub struct Upgrade {
    key: String,
    on_upgrade: Option<OnUpgrade>,
}

/// Matches a WebSocket handshake exactly as [`warp::ws()`] does (and
/// rejects what it rejects), keeping the connection's upgrade handle.
pub fn upgrade() -> impl Filter<Extract = (Upgrade,), Error = Rejection> + Clone {
    // The handle is cloned out of the request before `warp::ws()` takes it.
    warp::ext::optional::<OnUpgrade>()
        .and(warp::ws())
        .and(warp::header::<String>("sec-websocket-key"))
        .map(
            |on_upgrade: Option<OnUpgrade>, _checked: warp::ws::Ws, key: String| Upgrade {
                key,
                on_upgrade,
            },
        )
}

impl Upgrade {
    /// Answers `101 Switching Protocols` and, once the connection has
    /// switched, runs `serve` on the socket (in its own task, in the current
    /// tracing span).
    pub fn on_upgrade<F, U>(self, config: WebSocketConfig, serve: F) -> impl Reply
    where
        F: FnOnce(Socket) -> U + Send + 'static,
        U: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        match self.on_upgrade {
            Some(on_upgrade) => {
                let task = async move {
                    match on_upgrade.await {
                        Ok(upgraded) => {
                            let socket = WebSocketStream::from_raw_socket(
                                TokioIo::new(upgraded),
                                Role::Server,
                                Some(config),
                            )
                            .await;
                            // A task of its own: the one that lives as long as
                            // the connection then holds only the session.
                            let session = serve(socket).in_current_span();
                            tokio::spawn(session);
                        }
                        Err(err) => tracing::debug!(%err, "WebSocket upgrade failed"),
                    }
                }
                .in_current_span();
                tokio::spawn(task);
            }
            None => tracing::debug!("no upgrade handle on the connection"),
        }
        let mut response = warp::reply::Response::default();
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // Base64: always a valid header value.
        if let Ok(accept) = HeaderValue::try_from(accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}
