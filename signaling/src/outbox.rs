//! One peer's outbox: what the server has yet to write to that peer's
//! WebSocket, in two bounded queues drained by its writer task.
//!
//! - Control items (signaling messages, pings, the close frame) go first and
//!   never wait: a full control queue means the peer does not read, so the
//!   delivery fails with [`DeliveryError::TooSlow`] and the peer is told to
//!   disconnect ([`PeerOutbox::evicted`]) rather than let the queue grow.
//! - Relay packets wait for room (up to [`RELAY_SEND_TIMEOUT`]): the wait is
//!   the server relay's backpressure on the sending peer.
//!
//! Both queues live behind one lock in one allocation and hold nothing
//! until something is queued: an idle peer's outbox costs about 200 bytes
//! (tokio's channels allocate a block of 32 slots each up front, and padded
//! wakers: 3 KiB per peer for two of them).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use parlor_protocol::{PeerId, ServerMessage};
use tokio::sync::Notify;

/// Messages a peer's outbox may hold before the peer counts as too slow and
/// is disconnected. A newcomer to a full room receives a burst of about 15
/// offers or answers plus ~150 candidates, but the writer drains the queue as
/// fast as the socket takes it, so 64 queued messages only build up when the
/// client stops reading; bounded, one peer costs at most 64 × 64 KiB.
pub const OUTBOX_CAPACITY: usize = 64;

/// Relay packets (each at most ~64 KiB) a peer's relay queue holds. Unlike
/// signaling messages, relay packets are never dropped for a full queue:
/// the sending session waits (up to [`RELAY_SEND_TIMEOUT`]), which stops it
/// reading its own socket, so TCP pushes back on the sending peer. 32
/// packets bound one peer's queued relay data to about 2 MiB.
pub const RELAY_QUEUE_CAPACITY: usize = 32;

/// How long a relay packet may wait for room in the addressee's queue before
/// it is dropped (the peers' own acks and resume logic recover it).
pub const RELAY_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection's writer task sends on its WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A signaling message (JSON text frame). Boxed, so a queue slot stays
    /// small.
    Message(Box<ServerMessage>),
    /// A WebSocket ping (heartbeat).
    Ping,
    /// A close frame; the writer stops after sending it.
    Close {
        /// The WebSocket close code.
        code: u16,
        /// Why, for the client (at most 123 bytes on the wire).
        reason: String,
    },
}

/// The next thing for the writer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A control item (before any relay packet).
    Control(Outbound),
    /// A relay packet (a binary envelope, already addressed from its sender).
    Relay(Bytes),
}

/// Why a message could not be put in an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The queue is full: the peer does not read fast enough and has been told
    /// to disconnect.
    #[error("peer is too slow: its outbox is full")]
    TooSlow,
    /// The peer's connection is ending.
    #[error("peer is gone")]
    Gone,
}

/// Why a relay packet was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayDeliveryError {
    /// The addressee is not in the sender's room.
    #[error("peer {0} is not in this room")]
    UnknownPeer(PeerId),
    /// The addressee did not read its relay queue for
    /// [`RELAY_SEND_TIMEOUT`]; the packet was dropped.
    #[error("peer is not reading relayed data; packet dropped")]
    Congested,
    /// The addressee's connection is ending.
    #[error("peer is leaving; packet dropped")]
    Gone,
}

/// The receiver is gone.
#[derive(Debug)]
struct Gone;

/// Queue slots kept when a queue runs empty: enough for the steady state
/// (one item at a time) without a reallocation per item.
const IDLE_SLOTS: usize = 4;

#[derive(Debug, Default)]
struct Queues {
    control: VecDeque<Outbound>,
    relay: VecDeque<Bytes>,
    /// Live [`PeerOutbox`] handles; at zero the writer drains and stops.
    senders: usize,
    /// The receiver is gone: every delivery fails with `Gone`.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    queues: Mutex<Queues>,
    /// Wakes the writer: an item arrived, or the last sender left.
    arrived: Notify,
    /// Wakes senders waiting for room.
    drained: Notify,
    /// Signalled when a delivery finds the control queue full.
    evict: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // The queues stay consistent through any panic (each change is one
        // push or pop), so a poisoned lock is still usable.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side of one peer's outbox; cloned into the room.
pub struct PeerOutbox {
    shared: Arc<Shared>,
}

/// The receiving side, drained by the peer's writer task.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl fmt::Debug for PeerOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queues = self.shared.lock();
        f.debug_struct("PeerOutbox")
            .field("queued", &queues.control.len())
            .field("relay", &queues.relay.len())
            .finish()
    }
}

impl Clone for PeerOutbox {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for PeerOutbox {
    fn drop(&mut self) {
        let last = {
            let mut queues = self.shared.lock();
            queues.senders -= 1;
            queues.senders == 0
        };
        if last {
            self.shared.arrived.notify_one();
        }
    }
}

impl PeerOutbox {
    /// A new outbox holding at most `capacity` control items, and the
    /// receiver its writer drains.
    pub fn channel(capacity: usize) -> (Self, OutboxReceiver) {
        let shared = Arc::new(Shared {
            capacity: capacity.max(1),
            queues: Mutex::new(Queues {
                senders: 1,
                ..Queues::default()
            }),
            arrived: Notify::new(),
            drained: Notify::new(),
            evict: Notify::new(),
        });
        (
            Self {
                shared: Arc::clone(&shared),
            },
            OutboxReceiver { shared },
        )
    }

    /// Queues a relay packet, waiting up to [`RELAY_SEND_TIMEOUT`] for room:
    /// the wait is the relay's backpressure.
    pub async fn relay(&self, packet: Bytes) -> Result<(), RelayDeliveryError> {
        let put = self.put_when_room(
            |q| q.relay.len() < RELAY_QUEUE_CAPACITY,
            |q| {
                q.relay.push_back(packet);
            },
        );
        match tokio::time::timeout(RELAY_SEND_TIMEOUT, put).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Gone)) => Err(RelayDeliveryError::Gone),
            Err(_) => Err(RelayDeliveryError::Congested),
        }
    }

    /// Queues a signaling message without waiting. A full queue marks the peer
    /// for eviction (its session closes the connection) and drops the message.
    pub fn deliver(&self, msg: ServerMessage) -> Result<(), DeliveryError> {
        self.push(Outbound::Message(Box::new(msg)))
    }

    /// Like [`Self::deliver`], for any [`Outbound`] item.
    pub fn push(&self, item: Outbound) -> Result<(), DeliveryError> {
        let mut queues = self.shared.lock();
        if queues.closed {
            return Err(DeliveryError::Gone);
        }
        if queues.control.len() >= self.shared.capacity {
            drop(queues);
            self.shared.evict.notify_one();
            return Err(DeliveryError::TooSlow);
        }
        queues.control.push_back(item);
        drop(queues);
        self.shared.arrived.notify_one();
        Ok(())
    }

    /// Queues an item, waiting for room in the queue (used for the final
    /// close frame, where waiting is bounded by the caller).
    pub async fn push_wait(&self, item: Outbound) -> Result<(), DeliveryError> {
        let capacity = self.shared.capacity;
        self.put_when_room(
            |q| q.control.len() < capacity,
            |q| q.control.push_back(item),
        )
        .await
        .map_err(|Gone| DeliveryError::Gone)
    }

    /// Waits until `has_room` holds, then `put`s and wakes the writer; fails
    /// once the receiver is gone.
    async fn put_when_room(
        &self,
        has_room: impl Fn(&Queues) -> bool,
        put: impl FnOnce(&mut Queues),
    ) -> Result<(), Gone> {
        let mut put = Some(put);
        loop {
            // Registered before the check, so a drain in between counts.
            let drained = self.shared.drained.notified();
            {
                let mut queues = self.shared.lock();
                if queues.closed {
                    return Err(Gone);
                }
                if has_room(&queues) {
                    if let Some(put) = put.take() {
                        put(&mut queues);
                    }
                    drop(queues);
                    self.shared.arrived.notify_one();
                    return Ok(());
                }
            }
            drained.await;
        }
    }

    /// Resolves once a delivery has found this outbox full.
    pub async fn evicted(&self) {
        self.shared.evict.notified().await;
    }
}

impl OutboxReceiver {
    /// The next item, control items first; `None` once every sender is gone
    /// and both queues are empty.
    pub async fn next(&mut self) -> Option<Next> {
        loop {
            if let Some(next) = self.try_next() {
                return Some(next);
            }
            if self.shared.lock().senders == 0 {
                // A last item may have come with the last sender's exit.
                return self.try_next();
            }
            self.shared.arrived.notified().await;
        }
    }

    /// The next item, if one is queued.
    pub fn try_next(&mut self) -> Option<Next> {
        let mut queues = self.shared.lock();
        let next = match queues.control.pop_front() {
            Some(item) => Next::Control(item),
            None => Next::Relay(queues.relay.pop_front()?),
        };
        if queues.control.is_empty() && queues.relay.is_empty() {
            // A burst is over: give its memory back, so an idle peer holds
            // at most a few slots (a no-op when there are no more).
            queues.control.shrink_to(IDLE_SLOTS);
            queues.relay.shrink_to(IDLE_SLOTS);
        }
        drop(queues);
        self.shared.drained.notify_waiters();
        Some(next)
    }

    /// Whether nothing is queued (the writer flushes then).
    pub fn is_empty(&self) -> bool {
        let queues = self.shared.lock();
        queues.control.is_empty() && queues.relay.is_empty()
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn control_items_go_before_relay_packets_and_the_end_comes_after_the_last() {
        let (outbox, mut rx) = PeerOutbox::channel(4);
        outbox.relay(Bytes::from_static(b"r1")).await.unwrap();
        outbox.push(Outbound::Ping).unwrap();
        assert_eq!(rx.next().await, Some(Next::Control(Outbound::Ping)));
        assert_eq!(
            rx.next().await,
            Some(Next::Relay(Bytes::from_static(b"r1")))
        );
        let clone = outbox.clone();
        drop(outbox);
        clone.push(Outbound::Ping).unwrap();
        drop(clone);
        assert_eq!(rx.next().await, Some(Next::Control(Outbound::Ping)));
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn a_full_control_queue_refuses_and_evicts_and_a_gone_receiver_refuses() {
        let (outbox, rx) = PeerOutbox::channel(2);
        outbox.push(Outbound::Ping).unwrap();
        outbox.push(Outbound::Ping).unwrap();
        assert_eq!(outbox.push(Outbound::Ping), Err(DeliveryError::TooSlow));
        tokio::time::timeout(Duration::from_secs(1), outbox.evicted())
            .await
            .unwrap();
        drop(rx);
        assert_eq!(outbox.push(Outbound::Ping), Err(DeliveryError::Gone));
        assert_eq!(
            outbox.relay(Bytes::new()).await,
            Err(RelayDeliveryError::Gone)
        );
    }

    #[tokio::test]
    async fn push_wait_waits_for_room() {
        let (outbox, mut rx) = PeerOutbox::channel(1);
        outbox.push(Outbound::Ping).unwrap();
        let sender = outbox.clone();
        let waiting = tokio::spawn(async move {
            sender
                .push_wait(Outbound::Close {
                    code: 1000,
                    reason: String::new(),
                })
                .await
        });
        tokio::task::yield_now().await;
        assert_eq!(rx.next().await, Some(Next::Control(Outbound::Ping)));
        waiting.await.unwrap().unwrap();
        assert!(matches!(
            rx.next().await,
            Some(Next::Control(Outbound::Close { .. }))
        ));
    }
}
