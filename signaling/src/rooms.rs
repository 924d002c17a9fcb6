//! Rooms: who is in which room, and delivery of messages to its peers.
//!
//! Sessions talk to rooms only through the [`RoomBackend`] trait, so a shared
//! backend (e.g. Redis pub/sub for several server instances) can replace the
//! in-memory [`MemoryRooms`] without touching the session code.
//!
//! Every peer has a [`PeerOutbox`]: the sending half of a *bounded* queue
//! drained by that peer's WebSocket writer task. Deliveries never wait: when a
//! peer's queue is full, the peer is too slow to keep up, so it is told to
//! disconnect (see [`PeerOutbox::deliver`]) rather than let the queue grow.
//!
//! Architecture invariant: the backend forwards [`ServerMessage`]s without
//! reading SDP or candidates; it only looks at room ids and peer ids.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use parlor_protocol::{ErrorCode, IceServer, PeerId, PeerInfo, RoomId, ServerMessage};

pub use crate::outbox::{
    DeliveryError, OUTBOX_CAPACITY, Outbound, OutboxReceiver, PeerOutbox, RELAY_QUEUE_CAPACITY,
    RELAY_SEND_TIMEOUT, RelayDeliveryError,
};

/// WebSocket close code for a connection replaced by a newer one of the
/// same peer (a private-use code, RFC 6455 §7.4.2).
pub const REPLACED_CLOSE_CODE: u16 = 4000;

/// A peer about to join a room, with what its `welcome` needs.
#[derive(Debug, Clone)]
pub struct Newcomer {
    /// Its id and display name.
    pub info: PeerInfo,
    /// Where messages for it go.
    pub outbox: PeerOutbox,
    /// The protocol version agreed in `hello`, echoed in `welcome`.
    pub version: u32,
    /// The ICE servers listed in `welcome`.
    pub ice_servers: Vec<IceServer>,
    /// The resume token its id derives from, echoed in `welcome`.
    pub resume_token: String,
    /// Tells this connection from an earlier one of the same peer id.
    pub conn: u64,
}

/// Why a peer could not join a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The room has `max` peers already.
    #[error("room is full ({max} peers)")]
    RoomFull {
        /// The limit.
        max: usize,
    },
    /// The server holds `max` rooms already.
    #[error("server has too many rooms ({max}); try again later")]
    TooManyRooms {
        /// The limit.
        max: usize,
    },
    /// The peer id is in the room already (a session bug, never a client's).
    #[error("peer is already in the room")]
    AlreadyInRoom,
}

impl JoinError {
    /// The code reported to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::RoomFull { .. } => ErrorCode::RoomFull,
            Self::TooManyRooms { .. } => ErrorCode::TooManyRooms,
            Self::AlreadyInRoom => ErrorCode::Internal,
        }
    }
}

/// Why a message could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The addressee is not in the sender's room.
    #[error("peer {0} is not in this room")]
    UnknownPeer(PeerId),
}

/// How many rooms and peers a backend holds (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomCounts {
    /// Rooms with at least one peer.
    pub rooms: usize,
    /// Peers in all rooms.
    pub peers: usize,
}

/// Room membership and message routing, as the sessions need it.
///
/// Implementations must make [`join`](Self::join) and [`leave`](Self::leave)
/// atomic with their announcements, so that every peer of a room sees the
/// same order of joins and leaves and a newcomer's first message is its
/// `welcome`. Deliveries must not wait on a slow peer ([`PeerOutbox::deliver`]
/// never does).
#[async_trait]
pub trait RoomBackend: Send + Sync + fmt::Debug + 'static {
    /// Adds the newcomer to `room` (creating the room), queues its `welcome`
    /// (listing the peers already present) and announces `peer_joined` to the
    /// others. Returns the peers that were present.
    async fn join(&self, room: &RoomId, newcomer: Newcomer) -> Result<Vec<PeerInfo>, JoinError>;

    /// Removes `peer` from `room` (dropping the room when it empties) and
    /// announces `peer_left` to the others. Returns whether it was there.
    /// Removes `peer` from `room` if connection `conn` is still the one
    /// holding its place (a peer that reconnected is not removed by its old
    /// connection ending), dropping the room when it empties, and announces
    /// `peer_left` to the others. Returns whether it was removed.
    async fn leave(&self, room: &RoomId, peer: &PeerId, conn: u64) -> bool;

    /// Delivers `msg` to peer `to` if it is in `room`. A slow addressee is
    /// evicted and the message dropped; that is not the sender's error.
    async fn send_to(
        &self,
        room: &RoomId,
        to: &PeerId,
        msg: ServerMessage,
    ) -> Result<(), RouteError>;

    /// Delivers a relay packet (a binary envelope already rewritten to name
    /// the sender) to peer `to` if it is in `room`, waiting for room in its
    /// relay queue (bounded by [`RELAY_SEND_TIMEOUT`]).
    async fn relay_to(
        &self,
        room: &RoomId,
        to: &PeerId,
        packet: Bytes,
    ) -> Result<(), RelayDeliveryError>;

    /// Rooms and peers held now (for metrics; cheap, never blocks for long).
    fn counts(&self) -> RoomCounts;
}

/// The default backend: rooms in a map behind one mutex.
///
/// Each operation takes the lock once, checks and changes the map and queues
/// the announcements, and releases it: no check-then-insert race, and never
/// an `.await` while locked (queueing is `try_send`). The lock is held for
/// microseconds, so a std `Mutex` is right here (tokio's docs say the same).
#[derive(Debug)]
pub struct MemoryRooms {
    max_peers_per_room: usize,
    max_rooms: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Members in join order (rooms are small, so a Vec is fastest).
    rooms: HashMap<RoomId, Vec<Member>>,
    /// Sum of all rooms' member counts.
    peers: usize,
}

#[derive(Debug)]
struct Member {
    info: PeerInfo,
    outbox: PeerOutbox,
    conn: u64,
}

impl MemoryRooms {
    /// An empty set of rooms with these limits.
    pub fn new(max_peers_per_room: usize, max_rooms: usize) -> Self {
        Self {
            max_peers_per_room: max_peers_per_room.max(1),
            max_rooms: max_rooms.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock must not take every other
        // session down with it; the map is consistent after each statement.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn deliver_logged(member: &Member, msg: ServerMessage) {
    if let Err(err) = member.outbox.deliver(msg) {
        tracing::debug!(peer = %member.info.id, %err, "message not delivered");
    }
}

#[async_trait]
impl RoomBackend for MemoryRooms {
    async fn join(&self, room: &RoomId, newcomer: Newcomer) -> Result<Vec<PeerInfo>, JoinError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let room_count = inner.rooms.len();
        let members = match inner.rooms.entry(room.clone()) {
            Entry::Occupied(entry) => {
                let members = entry.into_mut();
                let returning = members.iter().any(|m| m.info.id == newcomer.info.id);
                if members.len() >= self.max_peers_per_room && !returning {
                    return Err(JoinError::RoomFull {
                        max: self.max_peers_per_room,
                    });
                }
                members
            }
            Entry::Vacant(entry) => {
                if room_count >= self.max_rooms {
                    return Err(JoinError::TooManyRooms {
                        max: self.max_rooms,
                    });
                }
                entry.insert(Vec::new())
            }
        };
        // The same peer (same resume token) on a new connection: the old
        // one is closed and replaced in place; the others already know it.
        let replaced = members
            .iter()
            .position(|m| m.info.id == newcomer.info.id)
            .map(|i| members.remove(i));
        if let Some(old) = &replaced {
            let _ = old.outbox.push(Outbound::Close {
                code: REPLACED_CLOSE_CODE,
                reason: "replaced by a newer connection of this peer".into(),
            });
        }
        let present: Vec<PeerInfo> = members.iter().map(|m| m.info.clone()).collect();
        let welcome = ServerMessage::Welcome {
            version: newcomer.version,
            peer_id: newcomer.info.id.clone(),
            peers: present.clone(),
            ice_servers: newcomer.ice_servers,
            resume_token: Some(newcomer.resume_token),
        };
        let member = Member {
            info: newcomer.info,
            outbox: newcomer.outbox,
            conn: newcomer.conn,
        };
        deliver_logged(&member, welcome);
        if replaced.is_some() {
            members.push(member);
            return Ok(present);
        }
        for other in members.iter() {
            deliver_logged(
                other,
                ServerMessage::PeerJoined {
                    peer: member.info.clone(),
                },
            );
        }
        members.push(member);
        inner.peers += 1;
        Ok(present)
    }

    async fn leave(&self, room: &RoomId, peer: &PeerId, conn: u64) -> bool {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(members) = inner.rooms.get_mut(room) else {
            return false;
        };
        let Some(index) = members
            .iter()
            .position(|m| &m.info.id == peer && m.conn == conn)
        else {
            return false;
        };
        members.remove(index);
        inner.peers -= 1;
        if members.is_empty() {
            inner.rooms.remove(room);
        } else {
            for other in members.iter() {
                deliver_logged(
                    other,
                    ServerMessage::PeerLeft {
                        peer_id: peer.clone(),
                    },
                );
            }
        }
        true
    }

    async fn send_to(
        &self,
        room: &RoomId,
        to: &PeerId,
        msg: ServerMessage,
    ) -> Result<(), RouteError> {
        let inner = self.lock();
        let member = inner
            .rooms
            .get(room)
            .and_then(|members| members.iter().find(|m| &m.info.id == to))
            .ok_or_else(|| RouteError::UnknownPeer(to.clone()))?;
        deliver_logged(member, msg);
        Ok(())
    }

    async fn relay_to(
        &self,
        room: &RoomId,
        to: &PeerId,
        packet: Bytes,
    ) -> Result<(), RelayDeliveryError> {
        // Clone the outbox and release the lock before waiting.
        let outbox = {
            let inner = self.lock();
            inner
                .rooms
                .get(room)
                .and_then(|members| members.iter().find(|m| &m.info.id == to))
                .map(|m| m.outbox.clone())
                .ok_or_else(|| RelayDeliveryError::UnknownPeer(to.clone()))?
        };
        outbox.relay(packet).await
    }

    fn counts(&self) -> RoomCounts {
        let inner = self.lock();
        RoomCounts {
            rooms: inner.rooms.len(),
            peers: inner.peers,
        }
    }
}

/// Makes peer ids: a random 32-bit prefix chosen when the server starts, then
/// a counter, in hex (`"9f3a61c2-1f"`). Unique for the life of the server
/// instance; the prefix keeps ids from different runs (and different servers)
/// apart and makes them hard to guess from outside.
#[derive(Debug)]
pub struct PeerIds {
    prefix: u32,
    next: AtomicU64,
}

impl PeerIds {
    /// A generator with a fresh random prefix.
    pub fn new() -> Self {
        Self {
            prefix: rand::random(),
            next: AtomicU64::new(1),
        }
    }

    /// A number no other connection of this server has.
    pub fn next_conn(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The next id.
    pub fn next_id(&self) -> PeerId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        PeerId(format!("{:08x}-{n:x}", self.prefix))
    }
}

impl Default for PeerIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::parse(&format!("{name:_<16}")).unwrap()
    }

    fn newcomer(ids: &PeerIds) -> (Newcomer, OutboxReceiver) {
        let (outbox, rx) = PeerOutbox::channel(4);
        let info = PeerInfo {
            id: ids.next_id(),
            name: String::new(),
        };
        (
            Newcomer {
                info,
                outbox,
                version: 1,
                ice_servers: Vec::new(),
                resume_token: String::new(),
                conn: 0,
            },
            rx,
        )
    }

    fn next_message(rx: &mut OutboxReceiver) -> ServerMessage {
        match rx.try_next().unwrap() {
            crate::outbox::Next::Control(Outbound::Message(msg)) => *msg,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn welcome_comes_first_and_others_hear_of_the_join() {
        let rooms = MemoryRooms::new(4, 4);
        let ids = PeerIds::new();
        let (a, mut a_rx) = newcomer(&ids);
        let (b, mut b_rx) = newcomer(&ids);
        let (a_id, b_info) = (a.info.id.clone(), b.info.clone());
        assert!(rooms.join(&room("r"), a).await.unwrap().is_empty());
        assert_eq!(rooms.join(&room("r"), b).await.unwrap().len(), 1);
        assert!(matches!(
            next_message(&mut a_rx),
            ServerMessage::Welcome { .. }
        ));
        assert_eq!(
            next_message(&mut a_rx),
            ServerMessage::PeerJoined {
                peer: b_info.clone()
            }
        );
        match next_message(&mut b_rx) {
            ServerMessage::Welcome { peers, peer_id, .. } => {
                assert_eq!(peer_id, b_info.id);
                assert_eq!(peers.len(), 1);
                assert_eq!(peers[0].id, a_id);
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        assert_eq!(rooms.counts(), RoomCounts { rooms: 1, peers: 2 });
        assert!(rooms.leave(&room("r"), &b_info.id, 0).await);
        assert_eq!(
            next_message(&mut a_rx),
            ServerMessage::PeerLeft { peer_id: b_info.id }
        );
        assert!(rooms.leave(&room("r"), &a_id, 0).await);
        assert_eq!(
            rooms.counts(),
            RoomCounts::default(),
            "empty rooms are removed"
        );
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let rooms = MemoryRooms::new(1, 1);
        let ids = PeerIds::new();
        let (a, _a_rx) = newcomer(&ids);
        let (b, _b_rx) = newcomer(&ids);
        let (c, _c_rx) = newcomer(&ids);
        rooms.join(&room("one"), a).await.unwrap();
        assert_eq!(
            rooms.join(&room("one"), b).await,
            Err(JoinError::RoomFull { max: 1 })
        );
        assert_eq!(
            rooms.join(&room("two"), c).await,
            Err(JoinError::TooManyRooms { max: 1 })
        );
        assert_eq!(rooms.counts(), RoomCounts { rooms: 1, peers: 1 });
    }

    #[tokio::test]
    async fn send_to_reaches_only_members_of_the_room() {
        let rooms = MemoryRooms::new(4, 4);
        let ids = PeerIds::new();
        let (a, _a_rx) = newcomer(&ids);
        let (b, mut b_rx) = newcomer(&ids);
        let b_id = b.info.id.clone();
        rooms.join(&room("one"), a).await.unwrap();
        rooms.join(&room("two"), b).await.unwrap();
        let msg = ServerMessage::Pong;
        assert_eq!(
            rooms.send_to(&room("one"), &b_id, msg.clone()).await,
            Err(RouteError::UnknownPeer(b_id.clone()))
        );
        rooms
            .send_to(&room("two"), &b_id, msg.clone())
            .await
            .unwrap();
        let _welcome = next_message(&mut b_rx);
        assert_eq!(next_message(&mut b_rx), msg);
    }

    #[tokio::test]
    async fn a_full_outbox_evicts_its_peer() {
        let (outbox, _rx) = PeerOutbox::channel(2);
        outbox.deliver(ServerMessage::Pong).unwrap();
        outbox.deliver(ServerMessage::Pong).unwrap();
        assert_eq!(
            outbox.deliver(ServerMessage::Pong),
            Err(DeliveryError::TooSlow)
        );
        // The eviction notice is stored until the session looks.
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.evicted())
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn relay_packets_wait_for_room_and_then_give_up() {
        let rooms = MemoryRooms::new(4, 4);
        let ids = PeerIds::new();
        let (a, _a_rx) = newcomer(&ids);
        let (b, mut b_rx) = newcomer(&ids);
        let (a_id, b_id) = (a.info.id.clone(), b.info.id.clone());
        let r = room("relay");
        rooms.join(&r, a).await.unwrap();
        rooms.join(&r, b).await.unwrap();
        for i in 0..RELAY_QUEUE_CAPACITY {
            let packet = Bytes::from(vec![i as u8; 10]);
            rooms.relay_to(&r, &b_id, packet).await.unwrap();
        }
        // Full: the next send waits, then is dropped after the timeout (the
        // paused clock jumps ahead), and nobody is evicted.
        assert_eq!(
            rooms.relay_to(&r, &b_id, Bytes::from_static(b"late")).await,
            Err(RelayDeliveryError::Congested)
        );
        // (After b's welcome and presence, which go first.)
        let first = loop {
            match b_rx.next().await.unwrap() {
                crate::outbox::Next::Relay(packet) => break packet,
                crate::outbox::Next::Control(_) => {}
            }
        };
        assert_eq!(first[0], 0);
        rooms
            .relay_to(&r, &b_id, Bytes::from_static(b"fits"))
            .await
            .unwrap();
        assert_eq!(
            rooms
                .relay_to(&room("other"), &a_id, Bytes::from_static(b"x"))
                .await,
            Err(RelayDeliveryError::UnknownPeer(a_id))
        );
    }

    #[test]
    fn peer_ids_are_unique() {
        let ids = PeerIds::new();
        let (a, b) = (ids.next_id(), ids.next_id());
        assert_ne!(a, b);
        assert_ne!(PeerIds::new().next_id(), PeerIds::new().next_id());
    }
}
