//! [`App`]: everything the requests of one server instance share.
//!
//! No globals: a test process can run several servers side by side, each
//! with its own rooms, metrics, connection count and shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use parlor_protocol::{IceServer, PeerId};
use tokio::sync::watch;

use crate::codes::Nameplates;
use crate::config::{Config, ConfigError};
use crate::limit::{IpLimits, RoomRelayLimits};
use crate::metrics::{Metrics, TurnMetrics};
use crate::rooms::{MemoryRooms, PeerIds, RoomBackend};
use crate::turn::TurnAdvert;

/// Shared state of one server instance.
#[derive(Debug)]
pub struct App {
    config: Config,
    ice_servers: Vec<IceServer>,
    /// TURN servers whose credentials are made per peer, if any.
    turn: Option<TurnAdvert>,
    backend: Arc<dyn RoomBackend>,
    metrics: Metrics,
    peer_ids: PeerIds,
    relay_limits: RoomRelayLimits,
    ip_limits: Arc<IpLimits>,
    /// Short-code nameplates waiting to be opened.
    nameplates: Nameplates,
    /// Open WebSockets. A watch channel rather than an atomic so that
    /// shutdown can wait for zero, and so that check-and-increment happens
    /// under one lock (`send_if_modified`).
    connections: watch::Sender<usize>,
    /// Becomes `true` once, when the server starts shutting down.
    shutdown: watch::Sender<bool>,
}

impl App {
    /// A server state with in-memory rooms.
    pub fn new(config: Config) -> Result<Arc<Self>, ConfigError> {
        let backend = Arc::new(MemoryRooms::new(
            config.max_peers_per_room,
            config.max_rooms,
        ));
        Self::with_backend(config, backend)
    }

    /// A server state with the given room backend (its own limits apply;
    /// `--max-peers-per-room` and `--max-rooms` configure [`MemoryRooms`]).
    /// It advertises only external TURN servers (`--turn-url`); see
    /// [`Self::with_turn`] for the embedded relay.
    pub fn with_backend(
        config: Config,
        backend: Arc<dyn RoomBackend>,
    ) -> Result<Arc<Self>, ConfigError> {
        let turn = TurnAdvert::external(&config);
        Self::with_turn(config, backend, turn)
    }

    /// A server state that hands out credentials for the TURN servers of
    /// `turn` (the embedded relay's URLs once it is bound, see
    /// [`crate::run`]).
    pub fn with_turn(
        config: Config,
        backend: Arc<dyn RoomBackend>,
        turn: Option<TurnAdvert>,
    ) -> Result<Arc<Self>, ConfigError> {
        Self::with_turn_metrics(config, backend, turn, TurnMetrics::default())
    }

    /// Like [`Self::with_turn`], with `/metrics` also rendering
    /// `turn_metrics`, those the embedded relay counts into.
    pub fn with_turn_metrics(
        config: Config,
        backend: Arc<dyn RoomBackend>,
        turn: Option<TurnAdvert>,
        turn_metrics: TurnMetrics,
    ) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        Ok(Arc::new(Self {
            ice_servers: config.ice_server_list(),
            relay_limits: RoomRelayLimits::new(config.relay_max_bandwidth),
            ip_limits: IpLimits::new(
                config.max_connections_per_ip,
                config.ip_connect_rate,
                config.ip_connect_rate.saturating_mul(3),
            ),
            nameplates: Nameplates::new(
                std::time::Duration::from_secs(config.code_ttl_secs),
                config.max_codes,
            ),
            turn,
            config,
            backend,
            metrics: Metrics::with_turn(turn_metrics),
            peer_ids: PeerIds::new(),
            connections: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The ICE servers of `--ice-server`, the same for every peer.
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// The ICE servers for `peer`'s `welcome`: those of `--ice-server`, then
    /// the TURN servers with a TURN REST credential made for `peer` now.
    pub fn ice_servers_for(&self, peer: &PeerId) -> Vec<IceServer> {
        let mut servers = self.ice_servers.clone();
        if let Some(turn) = &self.turn {
            servers.push(turn.ice_server(&peer.0, SystemTime::now()));
        }
        servers
    }

    /// The advertised TURN servers, if any.
    pub fn turn(&self) -> Option<&TurnAdvert> {
        self.turn.as_ref()
    }

    /// The room backend.
    pub fn backend(&self) -> &Arc<dyn RoomBackend> {
        &self.backend
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The server relay's per-room byte buckets.
    pub fn relay_limits(&self) -> &RoomRelayLimits {
        &self.relay_limits
    }

    /// The per-address WebSocket limits.
    pub fn ip_limits(&self) -> &Arc<IpLimits> {
        &self.ip_limits
    }

    /// The short-code nameplates.
    pub fn nameplates(&self) -> &Nameplates {
        &self.nameplates
    }

    /// The peer id generator.
    pub fn peer_ids(&self) -> &PeerIds {
        &self.peer_ids
    }

    /// Metrics in Prometheus text format, with the gauges read now.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .render(self.open_connections(), self.backend.counts())
    }

    /// Open WebSockets now.
    pub fn open_connections(&self) -> usize {
        *self.connections.borrow()
    }

    /// Counts a new WebSocket unless `--max-connections` are open already.
    /// The returned guard uncounts it when dropped, however the session ends.
    pub fn try_connect(self: &Arc<Self>) -> Option<ConnectionGuard> {
        let max = self.config.max_connections;
        let admitted = self.connections.send_if_modified(|open| {
            if *open >= max {
                return false;
            }
            *open += 1;
            true
        });
        admitted.then(|| ConnectionGuard {
            app: Arc::clone(self),
        })
    }

    /// Resolves once no WebSocket is open.
    pub async fn connections_closed(&self) {
        let mut open = self.connections.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Starts shutting down: sessions close their sockets with 1001, new
    /// WebSockets are refused.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether [`Self::shut_down`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A receiver that sessions select on; see [`shutdown_requested`].
    pub fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// A future that resolves when shutdown starts (owns what it needs, so it
    /// can be handed to warp's graceful shutdown).
    pub fn on_shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move { shutdown_requested(&mut rx).await }
    }
}

/// Resolves when the shutdown flag is (or becomes) set, or when its sender is
/// gone (the server is gone too, then).
pub async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// One counted WebSocket; uncounts it on drop (also when a session panics).
#[derive(Debug)]
pub struct ConnectionGuard {
    app: Arc<App>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.app
            .connections
            .send_modify(|open| *open = open.saturating_sub(1));
    }
}
