//! Prometheus metrics, one registry per server instance (never global, so
//! several servers in one test process keep their numbers apart).
//!
//! Exposed at `GET /metrics` in the Prometheus text format 0.0.4:
//! - gauges `parlor_connections`, `parlor_rooms`, `parlor_peers` (read from
//!   the live state at scrape time, so they can never drift);
//! - counters `parlor_connections_total`, `parlor_signaling_messages_total`
//!   (label `type`: the client message type) and `parlor_errors_total` (label
//!   `code`: [`ErrorCode::as_str`]);
//! - counters `parlor_relay_packets_total`, `parlor_relay_bytes_total` (the
//!   server relay) and `parlor_codes_created_total`,
//!   `parlor_codes_opened_total` (short-code nameplates);
//! - the embedded TURN relay ([`TurnMetrics`]): gauge
//!   `parlor_turn_allocations`, counters `parlor_turn_relayed_bytes_total`
//!   (label `direction`: `to_peer` or `from_peer`) and
//!   `parlor_turn_refusals_total` (label `reason`, see [`TurnRefusal`]).
//!
//! The 0.0.4 text format is used rather than OpenMetrics because there a
//! counter `parlor_connections` (sample `parlor_connections_total`) and the
//! gauge `parlor_connections` would be one metric family declared twice.

use parlor_protocol::ErrorCode;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::rooms::RoomCounts;

/// Why the TURN relay refused a client's request: the `reason` label of
/// `parlor_turn_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnRefusal {
    /// 401: the MESSAGE-INTEGRITY does not match the credential.
    BadPassword,
    /// 401: the username is not `EXPIRY:ID`.
    MalformedUsername,
    /// 401: the credential's expiry has passed.
    ExpiredCredential,
    /// 401: the credential expires further ahead than the server ever issues.
    ExpiryTooFar,
    /// 403: a permission, channel or send to a denied peer address.
    PeerAddress,
    /// 486: the credential holds its quota of allocations.
    QuotaCredential,
    /// 486: the client's address holds its quota of allocations.
    QuotaAddress,
    /// 486: the server holds as many allocations as it has descriptors for.
    QuotaServer,
    /// A TURN-over-TCP connection refused: too many open.
    TcpConnections,
    /// A TURN-over-TCP connection refused: too many open from its address.
    TcpConnectionsAddress,
}

impl TurnRefusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadPassword => "bad_password",
            Self::MalformedUsername => "malformed_username",
            Self::ExpiredCredential => "expired_credential",
            Self::ExpiryTooFar => "expiry_too_far",
            Self::PeerAddress => "peer_address",
            Self::QuotaCredential => "quota_credential",
            Self::QuotaAddress => "quota_address",
            Self::QuotaServer => "quota_server",
            Self::TcpConnections => "tcp_connections",
            Self::TcpConnectionsAddress => "tcp_connections_address",
        }
    }
}

/// The embedded TURN relay's metrics. Cheap to clone (the relay keeps one,
/// the registry of [`Metrics::with_turn`] another, and both see the same
/// numbers); all zero while no relay runs.
#[derive(Debug, Clone, Default)]
pub struct TurnMetrics {
    allocations: Gauge,
    relayed_bytes: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
}

impl TurnMetrics {
    /// Counts one more live allocation.
    pub fn allocation_opened(&self) {
        self.allocations.inc();
    }

    /// Counts one allocation fewer.
    pub fn allocation_closed(&self) {
        self.allocations.dec();
    }

    /// Live allocations now.
    pub fn allocations(&self) -> i64 {
        self.allocations.get()
    }

    /// Counts `bytes` relayed from a client to its peer.
    pub fn relayed_to_peer(&self, bytes: usize) {
        self.relayed_bytes
            .get_or_create(&[("direction", "to_peer")])
            .inc_by(bytes as u64);
    }

    /// Counts `bytes` relayed from a peer to the client.
    pub fn relayed_from_peer(&self, bytes: usize) {
        self.relayed_bytes
            .get_or_create(&[("direction", "from_peer")])
            .inc_by(bytes as u64);
    }

    /// Counts a refusal.
    pub fn refused(&self, why: TurnRefusal) {
        self.refusals
            .get_or_create(&[("reason", why.as_str())])
            .inc();
    }

    /// Refusals for `why` so far.
    pub fn refusals(&self, why: TurnRefusal) -> u64 {
        self.refusals
            .get_or_create(&[("reason", why.as_str())])
            .get()
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = [(&'static str, &'static str); 1];

/// The server's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    rooms: Gauge,
    peers: Gauge,
    connections_total: Counter,
    messages: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    relay_packets: Counter,
    relay_bytes: Counter,
    codes_created: Counter,
    codes_opened: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        Self::with_turn(TurnMetrics::default())
    }

    /// A fresh registry that also renders `turn`, the embedded relay's
    /// metrics.
    pub fn with_turn(turn: TurnMetrics) -> Self {
        let mut registry = Registry::default();
        let connections = Gauge::default();
        let rooms = Gauge::default();
        let peers = Gauge::default();
        let connections_total = Counter::default();
        let messages = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let relay_packets = Counter::default();
        let relay_bytes = Counter::default();
        let codes_created = Counter::default();
        let codes_opened = Counter::default();
        registry.register(
            "parlor_connections",
            "Open signaling WebSockets",
            connections.clone(),
        );
        registry.register(
            "parlor_rooms",
            "Rooms with at least one peer",
            rooms.clone(),
        );
        registry.register("parlor_peers", "Peers in all rooms", peers.clone());
        // prometheus-client appends `_total` to counter names.
        registry.register(
            "parlor_connections",
            "Signaling WebSockets accepted since start",
            connections_total.clone(),
        );
        registry.register(
            "parlor_signaling_messages",
            "Valid signaling messages received, by type",
            messages.clone(),
        );
        registry.register(
            "parlor_errors",
            "Error replies sent to clients, by code",
            errors.clone(),
        );
        registry.register(
            "parlor_relay_packets",
            "Packets forwarded by the WebSocket server relay",
            relay_packets.clone(),
        );
        registry.register(
            "parlor_relay_bytes",
            "Bytes (sealed envelopes) forwarded by the WebSocket server relay",
            relay_bytes.clone(),
        );
        registry.register(
            "parlor_codes_created",
            "Short-code nameplates allocated (POST /api/code)",
            codes_created.clone(),
        );
        registry.register(
            "parlor_codes_opened",
            "Short-code nameplates opened (single use)",
            codes_opened.clone(),
        );
        registry.register(
            "parlor_turn_allocations",
            "Live allocations on the embedded TURN relay",
            turn.allocations,
        );
        registry.register(
            "parlor_turn_relayed_bytes",
            "Bytes relayed by the embedded TURN relay, by direction",
            turn.relayed_bytes,
        );
        registry.register(
            "parlor_turn_refusals",
            "Requests and connections the embedded TURN relay refused, by reason",
            turn.refusals,
        );
        Self {
            registry,
            connections,
            rooms,
            peers,
            connections_total,
            messages,
            errors,
            relay_packets,
            relay_bytes,
            codes_created,
            codes_opened,
        }
    }

    /// Counts an allocated short-code nameplate.
    pub fn code_created(&self) {
        self.codes_created.inc();
    }

    /// Counts an opened short-code nameplate.
    pub fn code_opened(&self) {
        self.codes_opened.inc();
    }

    /// Counts one packet of `bytes` forwarded by the server relay.
    pub fn relayed(&self, bytes: usize) {
        self.relay_packets.inc();
        self.relay_bytes.inc_by(bytes as u64);
    }

    /// Counts an accepted WebSocket.
    pub fn connection_accepted(&self) {
        self.connections_total.inc();
    }

    /// Counts a valid message of type `kind` (`"hello"`, `"offer"`, ...).
    pub fn message(&self, kind: &'static str) {
        self.messages.get_or_create(&[("type", kind)]).inc();
    }

    /// Counts an error reply.
    pub fn error(&self, code: ErrorCode) {
        self.errors.get_or_create(&[("code", code.as_str())]).inc();
    }

    /// Renders every metric, setting the gauges from the live numbers first.
    pub fn render(&self, connections: usize, counts: RoomCounts) -> String {
        self.connections.set(to_i64(connections));
        self.rooms.set(to_i64(counts.rooms));
        self.peers.set(to_i64(counts.peers));
        let mut out = String::new();
        if let Err(err) = prometheus_text::encode(&mut out, &self.registry) {
            // Only a failing `fmt::Write` can cause this, and String's never fails.
            tracing::error!(%err, "encoding metrics failed");
        }
        out
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gauges_and_labelled_counters() {
        let metrics = Metrics::new();
        metrics.connection_accepted();
        metrics.message("hello");
        metrics.message("hello");
        metrics.error(ErrorCode::UnknownPeer);
        let text = metrics.render(3, RoomCounts { rooms: 1, peers: 2 });
        for line in [
            "parlor_connections 3",
            "parlor_rooms 1",
            "parlor_peers 2",
            "parlor_connections_total 1",
            "parlor_signaling_messages_total{type=\"hello\"} 2",
            "parlor_errors_total{code=\"unknown_peer\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn turn_metrics_are_rendered_by_the_registry_they_were_given_to() {
        let turn = TurnMetrics::default();
        let metrics = Metrics::with_turn(turn.clone());
        turn.allocation_opened();
        turn.allocation_opened();
        turn.allocation_closed();
        turn.relayed_to_peer(100);
        turn.relayed_from_peer(7);
        turn.refused(TurnRefusal::QuotaAddress);
        let text = metrics.render(0, RoomCounts::default());
        for line in [
            "parlor_turn_allocations 1",
            "parlor_turn_relayed_bytes_total{direction=\"to_peer\"} 100",
            "parlor_turn_relayed_bytes_total{direction=\"from_peer\"} 7",
            "parlor_turn_refusals_total{reason=\"quota_address\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(turn.refusals(TurnRefusal::QuotaAddress), 1);
    }

    #[test]
    fn instances_do_not_share_numbers() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.connection_accepted();
        let text = b.render(0, RoomCounts::default());
        assert!(
            text.lines().any(|l| l == "parlor_connections_total 0"),
            "{text}"
        );
    }
}
