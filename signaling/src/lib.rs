//! `parlor-signaling`: the library behind `parlor-server`, which introduces
//! Parlor peers to each other and serves the web app.
//!
//! Peers connect to `GET /ws`, say `hello` (protocol version, room, name), get
//! a `welcome` listing the peers already in the room, and from then on the
//! server forwards their WebRTC offers, answers and ICE candidates to peers of
//! the same room and reports joins and leaves. Chat and files then flow
//! peer to peer; the server never sees them.
//!
//! Module map:
//! - [`config`]: [`Config`], the command-line flags (each also a `PARLOR_*`
//!   environment variable) and the documented default of every limit.
//! - [`state`]: [`App`], what one server instance shares between requests:
//!   config, room backend, metrics, connection count, shutdown signal.
//! - [`rooms`]: the [`RoomBackend`] trait (join, leave, route) and its
//!   in-memory implementation [`MemoryRooms`]; bounded [`PeerOutbox`]es; peer
//!   ids.
//! - [`session`]: one WebSocket connection: hello, forwarding, errors and
//!   strikes, rate limit, heartbeat, idle and hello timeouts, close.
//! - [`limit`]: the token bucket (per connection; per TURN allocation).
//! - [`turn`]: the embedded TURN relay (UDP and TCP), TURN REST credentials,
//!   allocation caps per credential, per address and from the descriptor
//!   limit, bandwidth caps, and error codes as TURN clients expect.
//! - [`cidr`]: address ranges and the relay's peer rule (coturn's deny list,
//!   `--turn-allow`, `--turn-deny`).
//! - [`forwarded`]: the client address behind `--trusted-proxy` reverse
//!   proxies (`Forwarded`, `X-Forwarded-For`, `X-Forwarded-Proto`).
//! - [`origin`]: web origins and the `Origin` check (`--public-url`,
//!   `--allowed-origin`).
//! - [`metrics`]: Prometheus metrics, one registry per instance.
//! - [`web`]: the static web app, or a "not built yet" page.
//! - [`codes`]: short-code nameplates (`POST /api/code`, single-use
//!   `POST /api/code/N/open`), in memory with a TTL and a cap.
//! - [`routes`]: the warp filters, handlers and the `recover` function.
//! - [`tls`]: https/wss with `--tls-cert`/`--tls-key`, the certificate
//!   reloaded on SIGHUP.
//!
//! Architecture invariants:
//! - The server forwards SDP and candidates without reading them, and never
//!   sees chat messages, files or the room key (the `#KEY` of invite links).
//! - No globals: every server instance owns its state, so tests run several
//!   servers in one process.
//! - Forwarding headers (`Forwarded`, `X-Forwarded-*`) are believed only
//!   from `--trusted-proxy` peers; every per-address limit uses the address
//!   [`forwarded::resolve`] gives, never a header from anyone else.
//! - No client can make the server buffer without bound: messages are size
//!   checked, rate limited, and queued for each peer in a bounded outbox whose
//!   overflow disconnects that peer.
//! - The TURN relay is not an open relay: only holders of an unexpired
//!   credential from a `welcome` can allocate, and it never relays to or from
//!   the ranges of coturn's recommended deny list (private, loopback, CGNAT,
//!   link-local, reserved, ...) unless `--turn-allow` or
//!   `--turn-allow-private` says so. Nor can one client address exhaust it:
//!   its allocations are capped per address and in all (from the
//!   descriptor limit), leaving most descriptors to HTTP and WebSockets.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::metrics::TurnMetrics;

pub mod cidr;
pub mod codes;
pub mod config;
pub mod forwarded;
pub mod limit;
pub mod metrics;
pub mod origin;
pub mod outbox;
pub mod rooms;
pub mod routes;
pub mod session;
pub mod state;
pub mod tls;
pub mod turn;
pub mod upgrade;
pub mod web;

pub use config::{Config, ConfigError};
pub use rooms::{MemoryRooms, PeerOutbox, RoomBackend};
pub use session::close_code;
pub use state::App;
pub use turn::{TurnAdvert, TurnSecret, TurnServer};

/// How long shutdown waits for open connections to finish closing (each
/// session needs at most a few seconds to send its close frame and hear the
/// client's) before `run` returns anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves on `listener` with in-memory rooms and the embedded TURN relay
/// (unless `--no-turn`) until `shutdown` resolves, then closes every
/// WebSocket (code 1001, "server shutting down") and the relay, and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().context("invalid configuration")?;
    let secret = config
        .turn_secret
        .clone()
        .unwrap_or_else(TurnSecret::random);
    let turn_metrics = TurnMetrics::default();
    let relay = turn::start_embedded(&config, &secret, turn_metrics.clone())
        .await
        .context("cannot start the TURN relay")?;
    let advert = TurnAdvert::for_config(&config, secret, relay.as_ref());
    let backend = Arc::new(MemoryRooms::new(
        config.max_peers_per_room,
        config.max_rooms,
    ));
    let app = App::with_turn_metrics(config, backend, advert, turn_metrics)
        .context("invalid configuration")?;
    let served = serve(listener, app, shutdown).await;
    if let Some(relay) = relay {
        relay.close().await;
    }
    served
}

/// Sets `TCP_NODELAY` on `listener`, which the connections it accepts
/// inherit (Linux copies it to every accepted socket): signaling sends many
/// small messages back to back (trickled candidates, fan-out), and with
/// Nagle's algorithm a second one waits for the client's delayed ACK of the
/// first, up to 40 ms.
pub fn set_nodelay(listener: &TcpListener, nodelay: bool) -> anyhow::Result<()> {
    socket2::SockRef::from(listener)
        .set_tcp_nodelay(nodelay)
        .context("setting TCP_NODELAY on the listener")
}

/// Says at start which origin browser pages must have and which proxies
/// are trusted, since behind a TLS proxy without `--public-url` (or a
/// trusted proxy's `X-Forwarded-Proto`) https pages are refused.
fn log_origin_setup(config: &Config) {
    let proxies: Vec<String> = config
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    match &config.public_url {
        Some(url) => tracing::info!(public_url = %url, trusted_proxies = ?proxies, "page origin"),
        None if config.tls_files().is_none() && proxies.is_empty() => tracing::info!(
            "no --public-url: pages must come from http://HOST as the request's Host header \
             says; behind a TLS proxy set --public-url (and --trusted-proxy)"
        ),
        None => tracing::info!(trusted_proxies = ?proxies, "page origin from the Host header"),
    }
}

/// Like [`run`], with a prepared [`App`] (e.g. one with another
/// [`RoomBackend`], see [`App::with_backend`]).
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    set_nodelay(&listener, !app.config().no_tcp_nodelay)?;
    let filter = routes::routes(Arc::clone(&app));
    let mut server = match app.config().tls_files() {
        Some((cert, key)) => {
            let store = Arc::new(tls::CertStore::open(cert, key)?);
            let reloader = tokio::spawn(tls::reload_on_sighup(Arc::clone(&store)));
            let served = tls::serve_tls(listener, Arc::clone(&app), store, filter);
            tokio::spawn(async move {
                served.await;
                reloader.abort();
            })
        }
        None => tokio::spawn(
            warp::serve(filter)
                .incoming(listener)
                .graceful(app.on_shutdown())
                .run(),
        ),
    };
    tracing::info!(
        %addr,
        scheme = app.config().scheme(),
        web_app = %app.config().web_source().describe(),
        "serving"
    );
    log_origin_setup(app.config());

    tokio::select! {
        () = shutdown => {}
        stopped = &mut server => {
            // Only a panic ends warp's accept loop before shutdown.
            stopped.context("HTTP server failed")?;
            anyhow::bail!("HTTP server stopped unexpectedly");
        }
    }

    tracing::info!(open = app.open_connections(), "shutting down");
    // Stops warp's accept loop and tells every session to close with 1001.
    // Upgraded connections are no longer tracked by warp's graceful shutdown,
    // hence the wait on the connection count.
    app.shut_down();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        if let Err(err) = (&mut server).await {
            tracing::error!(%err, "HTTP server task failed during shutdown");
        }
        app.connections_closed().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = app.open_connections(),
            "shutdown grace period over; dropping connections"
        );
        server.abort();
    }
    tracing::info!("stopped");
    Ok(())
}
