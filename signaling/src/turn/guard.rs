//! What the relay checks in a client's message before the `turn` crate sees
//! it, answering with the error codes TURN clients expect (RFC 8489, 8656)
//! where the crate would send others:
//!
//! - an authenticated request (Allocate, Refresh, CreatePermission,
//!   ChannelBind with MESSAGE-INTEGRITY) whose credential is malformed,
//!   expired, valid further ahead than the relay ever issues, or whose
//!   MESSAGE-INTEGRITY does not match: `401 Unauthorized` (the crate says
//!   400 for all of these);
//! - a CreatePermission or ChannelBind for a denied peer: `403 Forbidden`
//!   (a Send indication to one is dropped);
//! - an Allocate past a quota: `486 Allocation Quota Reached` (the crate
//!   says 508 for any failure of the relay-socket generator). The slot is
//!   taken here and handed to [`super::Relays`] through [`PendingSlot`]:
//!   each `turn` server handles one message at a time, so the slot taken
//!   for the message just read belongs to the allocation the crate is
//!   about to ask for;
//! - nonces: the crate mints a nonce for every unauthenticated request and
//!   every unknown nonce (401, 438), and keeps each in a map it never
//!   prunes, so a flood of cheap unauthenticated requests grows memory
//!   without bound (about 100 bytes a request, measured). The guard records
//!   the nonces the crate sends ([`Nonces`]) and answers those requests
//!   itself with the newest one while it is younger than
//!   [`NONCE_ROTATION`]: the crate mints about one nonce per rotation.
//!
//! Requests with MESSAGE-INTEGRITY but missing USERNAME, REALM or NONCE
//! pass: the crate answers them itself (400), as it does the first
//! unauthenticated request after a rotation (401 with a fresh nonce).

use std::any::Any;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::error_code::{
    CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN, CODE_STALE_NONCE, CODE_UNAUTHORIZED, ErrorCode,
    ErrorCodeAttribute,
};
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, Getter as _, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND, Message,
    MessageType, Setter,
};
use stun::textattrs::TextAttribute;
use tracing::debug;
use turn::auth::generate_auth_key;
use turn::proto::peeraddr::PeerAddress;
use webrtc_util::Conn;

use crate::cidr::PeerRule;
use crate::metrics::{TurnMetrics, TurnRefusal};

use super::quota::{AllocationCounts, AllocationSlot, Quotas};
use super::{REALM, TurnSecret, check_username, credential, lock, unix_secs};

/// How long the guard hands out the newest nonce the crate minted before it
/// lets the crate mint another.
pub const NONCE_ROTATION: Duration = Duration::from_secs(30 * 60);

/// How long a nonce the crate minted is taken to be valid: under the
/// crate's lifetime of an hour, so the crate never finds one stale that the
/// guard passed as valid (if it did, it would just mint one more).
const NONCE_VALIDITY: Duration = Duration::from_secs(55 * 60);

/// Nonces remembered; an older one is answered with 438 and the newest.
const KNOWN_NONCES: usize = 16;

/// The nonces the crate sent (in 401 and 438 answers), newest last.
#[derive(Debug, Default)]
pub(super) struct Nonces(Mutex<VecDeque<(String, Instant)>>);

impl Nonces {
    fn record(&self, nonce: String, now: Instant) {
        let mut known = lock(&self.0);
        if known.iter().any(|(n, _)| *n == nonce) {
            return;
        }
        known.push_back((nonce, now));
        while known.len() > KNOWN_NONCES {
            known.pop_front();
        }
    }

    /// The nonce to hand out now, if the newest is young enough.
    fn current(&self, now: Instant) -> Option<String> {
        lock(&self.0)
            .back()
            .filter(|(_, minted)| now.saturating_duration_since(*minted) < NONCE_ROTATION)
            .map(|(nonce, _)| nonce.clone())
    }

    /// Whether the crate still takes `nonce`.
    fn is_valid(&self, nonce: &str, now: Instant) -> bool {
        lock(&self.0).iter().any(|(n, minted)| {
            n == nonce && now.saturating_duration_since(*minted) < NONCE_VALIDITY
        })
    }
}

/// The nonce of a 401 or 438 error response the crate is sending.
fn minted_nonce(packet: &[u8]) -> Option<String> {
    const ERROR_CLASS: u16 = 0x0110;
    let typ = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    if typ & ERROR_CLASS != ERROR_CLASS || !stun::message::is_message(packet) {
        return None;
    }
    let mut msg = Message {
        raw: packet.to_vec(),
        ..Message::default()
    };
    msg.decode().ok()?;
    let mut code = ErrorCodeAttribute::default();
    code.get_from(&msg).ok()?;
    if code.code != CODE_UNAUTHORIZED && code.code != CODE_STALE_NONCE {
        return None;
    }
    TextAttribute::get_from_as(&msg, ATTR_NONCE)
        .ok()
        .map(|nonce| nonce.text)
}

/// The slot [`Guard`] took for the Allocate request being handled, if any.
#[derive(Debug, Clone, Default)]
pub(super) struct PendingSlot(Arc<Mutex<Option<AllocationSlot>>>);

impl PendingSlot {
    fn put(&self, slot: AllocationSlot) {
        *lock(&self.0) = Some(slot);
    }

    /// Takes the slot (the relay generator does, for the allocation).
    pub fn take(&self) -> Option<AllocationSlot> {
        lock(&self.0).take()
    }

    /// Drops a slot nobody took (the crate refused the Allocate itself).
    fn release(&self) {
        drop(self.take());
    }
}

/// What the guard needs to know.
#[derive(Debug)]
pub(super) struct Guard {
    pub secret: TurnSecret,
    /// The longest lifetime the server gives a credential (`--turn-ttl-secs`).
    pub credential_lifetime: Duration,
    pub peers: Arc<PeerRule>,
    pub quotas: Quotas,
    pub counts: AllocationCounts,
    pub pending: PendingSlot,
    pub nonces: Nonces,
    pub metrics: TurnMetrics,
}

/// What to do with a message from a client.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Hand it to the `turn` server.
    Pass,
    /// Drop it silently (an indication).
    Drop,
    /// Answer with these bytes instead (an error response).
    Refuse(Vec<u8>),
}

/// The outcome of checking an authenticated request's credential.
enum Auth {
    /// Not ours to check (attributes missing).
    Unchecked,
    /// The credential is good: its username.
    Valid(String),
    /// 401.
    Refused(TurnRefusal),
}

impl Guard {
    /// Looks at one message from `from`.
    pub fn inspect(&self, packet: &[u8], from: SocketAddr) -> Verdict {
        if !stun::message::is_message(packet) {
            return Verdict::Pass; // ChannelData: its channel was checked when bound
        }
        let mut msg = Message {
            raw: packet.to_vec(),
            ..Message::default()
        };
        if msg.decode().is_err() {
            return Verdict::Pass; // the server answers malformed messages itself
        }
        let method = msg.typ.method;
        if msg.typ.class == CLASS_INDICATION && method == METHOD_SEND {
            return match self.forbidden_peer(&msg) {
                Some(ip) => {
                    debug!(%from, %ip, "TURN send indication dropped: peer address denied");
                    self.metrics.refused(TurnRefusal::PeerAddress);
                    Verdict::Drop
                }
                None => Verdict::Pass,
            };
        }
        let authenticated = [
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ];
        if msg.typ.class != CLASS_REQUEST || !authenticated.contains(&method) {
            return Verdict::Pass;
        }
        let now = Instant::now();
        if !msg.contains(ATTR_MESSAGE_INTEGRITY) {
            // The challenge: with a nonce the crate knows, if there is one.
            return match self.nonces.current(now) {
                Some(nonce) => self.answer(&msg, CODE_UNAUTHORIZED, b"", Some(nonce)),
                None => Verdict::Pass,
            };
        }
        let Ok(nonce) = TextAttribute::get_from_as(&msg, ATTR_NONCE) else {
            return Verdict::Pass;
        };
        if !self.nonces.is_valid(&nonce.text, now) {
            return match self.nonces.current(now) {
                Some(current) => self.answer(&msg, CODE_STALE_NONCE, b"", Some(current)),
                None => Verdict::Pass,
            };
        }
        let username = match self.authenticate(&msg) {
            Auth::Unchecked => return Verdict::Pass,
            Auth::Refused(why) => {
                debug!(%from, reason = why.as_str(), "TURN request refused: 401");
                self.metrics.refused(why);
                return self.answer(&msg, CODE_UNAUTHORIZED, b"Unauthorized", Some(nonce.text));
            }
            Auth::Valid(username) => username,
        };
        let names_peer = method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND;
        if names_peer && let Some(ip) = self.forbidden_peer(&msg) {
            debug!(%from, %ip, "TURN permission refused: peer address denied");
            self.metrics.refused(TurnRefusal::PeerAddress);
            return self.answer(&msg, CODE_FORBIDDEN, b"peer address not allowed", None);
        }
        if method == METHOD_ALLOCATE {
            match self.counts.acquire(&username, from.ip(), self.quotas) {
                Ok(slot) => self.pending.put(slot),
                Err(why) => {
                    debug!(%from, username, reason = why.as_str(), "TURN allocation refused: 486");
                    self.metrics.refused(why);
                    return self.answer(
                        &msg,
                        CODE_ALLOC_QUOTA_REACHED,
                        b"Allocation Quota Reached",
                        None,
                    );
                }
            }
        }
        Verdict::Pass
    }

    /// Checks the credential of a request that carries MESSAGE-INTEGRITY.
    fn authenticate(&self, msg: &Message) -> Auth {
        let (Ok(username), Ok(realm)) = (
            TextAttribute::get_from_as(msg, ATTR_USERNAME),
            TextAttribute::get_from_as(msg, ATTR_REALM),
        ) else {
            return Auth::Unchecked;
        };
        let username = username.text;
        let now = unix_secs(SystemTime::now());
        if let Err(err) = check_username(&username, now, self.credential_lifetime) {
            return Auth::Refused(err.refusal());
        }
        let password = credential(self.secret.as_bytes(), &username);
        let key = generate_auth_key(&username, &realm.text, &password);
        if MessageIntegrity(key).check(&mut msg.clone()).is_err() {
            return Auth::Refused(TurnRefusal::BadPassword);
        }
        Auth::Valid(username)
    }

    /// The first XOR-PEER-ADDRESS of `msg` that the peer rule denies.
    fn forbidden_peer(&self, msg: &Message) -> Option<IpAddr> {
        if self.peers.allows_all() {
            return None;
        }
        msg.attributes
            .0
            .iter()
            .filter(|attr| attr.typ == ATTR_XOR_PEER_ADDRESS)
            .filter_map(|attr| {
                let single = Message {
                    transaction_id: msg.transaction_id,
                    attributes: stun::attributes::Attributes(vec![attr.clone()]),
                    ..Message::default()
                };
                let mut peer = PeerAddress::default();
                peer.get_from(&single).ok().map(|()| peer.ip)
            })
            .find(|ip| self.peers.forbids(*ip))
    }

    /// The error response `code` to `msg`; with `nonce` (for 401 and 438)
    /// it carries REALM and that nonce, one the crate knows, so the client
    /// can (re)try with its credential.
    fn answer(
        &self,
        msg: &Message,
        code: ErrorCode,
        reason: &[u8],
        nonce: Option<String>,
    ) -> Verdict {
        let mut attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(Message {
                transaction_id: msg.transaction_id,
                ..Message::default()
            }),
            Box::new(MessageType::new(msg.typ.method, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code,
                reason: reason.to_vec(),
            }),
        ];
        if let Some(nonce) = nonce {
            attrs.push(Box::new(TextAttribute::new(ATTR_REALM, REALM.to_owned())));
            attrs.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce)));
        }
        let mut response = Message::new();
        match response.build(&attrs) {
            Ok(()) => Verdict::Refuse(response.raw),
            Err(_) => Verdict::Drop,
        }
    }
}

/// Whether `packet` is a STUN Allocate success or error response (the end
/// of the crate's handling of an Allocate request).
fn is_allocate_response(packet: &[u8]) -> bool {
    const ALLOCATE_SUCCESS: [u8; 2] = [0x01, 0x03];
    const ALLOCATE_ERROR: [u8; 2] = [0x01, 0x13];
    packet.len() >= 20
        && stun::message::is_message(packet)
        && (packet[..2] == ALLOCATE_SUCCESS || packet[..2] == ALLOCATE_ERROR)
}

/// A listener socket that applies [`Guard::inspect`] to what clients send.
pub(super) struct GuardedListener {
    pub inner: Arc<dyn Conn + Send + Sync>,
    pub guard: Guard,
}

#[async_trait]
impl Conn for GuardedListener {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.inner.recv(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        // The crate handled the previous message completely before asking
        // for this one: a slot nobody took is no one's.
        self.guard.pending.release();
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            let Some(packet) = buf.get(..n) else {
                continue;
            };
            match self.guard.inspect(packet, from) {
                Verdict::Pass => return Ok((n, from)),
                Verdict::Drop => {}
                Verdict::Refuse(response) => {
                    let _ = self.inner.send_to(&response, from).await;
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if is_allocate_response(buf) {
            // Success: the generator took the slot. Error: nobody will.
            self.guard.pending.release();
        }
        if let Some(nonce) = minted_nonce(buf) {
            self.guard.nonces.record(nonce, Instant::now());
        }
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_newest_nonce_is_handed_out_until_rotation_and_valid_for_less_than_an_hour() {
        let nonces = Nonces::default();
        let t0 = Instant::now();
        assert_eq!(nonces.current(t0), None);
        nonces.record("a".into(), t0);
        nonces.record("b".into(), t0 + Duration::from_secs(1));
        nonces.record("a".into(), t0 + Duration::from_secs(2)); // known already
        assert_eq!(
            nonces.current(t0 + Duration::from_secs(3)).as_deref(),
            Some("b")
        );
        assert_eq!(
            nonces.current(t0 + NONCE_ROTATION + Duration::from_secs(1)),
            None
        );
        assert!(nonces.is_valid("a", t0 + NONCE_ROTATION));
        assert!(!nonces.is_valid("a", t0 + NONCE_VALIDITY));
        assert!(!nonces.is_valid("c", t0));
        for i in 0..KNOWN_NONCES {
            nonces.record(i.to_string(), t0);
        }
        assert!(!nonces.is_valid("b", t0), "the oldest are forgotten");
    }

    #[test]
    fn minted_nonces_are_read_from_401_and_438_answers_only() {
        let build = |code: ErrorCode, class| {
            let mut msg = Message::new();
            msg.build(&[
                Box::new(stun::agent::TransactionId::new()),
                Box::new(MessageType::new(METHOD_ALLOCATE, class)),
                Box::new(ErrorCodeAttribute {
                    code,
                    reason: vec![],
                }),
                Box::new(TextAttribute::new(ATTR_NONCE, "n1".into())),
            ])
            .unwrap();
            msg.raw
        };
        assert_eq!(
            minted_nonce(&build(CODE_UNAUTHORIZED, CLASS_ERROR_RESPONSE)).as_deref(),
            Some("n1")
        );
        assert_eq!(
            minted_nonce(&build(CODE_STALE_NONCE, CLASS_ERROR_RESPONSE)).as_deref(),
            Some("n1")
        );
        assert_eq!(
            minted_nonce(&build(CODE_FORBIDDEN, CLASS_ERROR_RESPONSE)),
            None
        );
        assert_eq!(minted_nonce(&build(CODE_UNAUTHORIZED, CLASS_REQUEST)), None);
        assert_eq!(minted_nonce(&[0x01, 0x13]), None);
        assert_eq!(minted_nonce(&[]), None);
    }
}
