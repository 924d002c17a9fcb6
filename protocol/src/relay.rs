//! The server relay: peer-to-peer frames carried over the signaling
//! WebSocket when no WebRTC path works (UDP and the TURN port blocked).
//!
//! Relay packets travel as **binary** WebSocket messages (signaling messages
//! stay JSON text). Each is an [envelope](encode_envelope):
//!
//! ```text
//! [RELAY_FORMAT][peer id length: u8][peer id: UTF-8][sealed payload]
//! ```
//!
//! A client names the addressee; the server checks it is in the same room,
//! rewrites the peer id to the sender's and passes the sealed payload on
//! unread. The payload is sealed with a key derived from the room key (see
//! [`crate::seal`]) and bound to the (sender, addressee) pair, so the server
//! can neither read frames nor redirect them to another peer unnoticed.
//!
//! A payload is one byte of [`RelayPayload`] kind, then the frame bytes.

use crate::ids::{PeerId, RoomKey};
use crate::seal::{Purpose, SEAL_OVERHEAD, SealError, SealKey, Sealer};
use crate::{Channel, MAX_FRAME_BYTES};

/// Format byte of every relay envelope.
pub const RELAY_FORMAT: u8 = 1;

/// Longest peer id an envelope can carry.
pub const MAX_PEER_ID_BYTES: usize = u8::MAX as usize;

/// Largest relay envelope: a full-size frame, its kind byte, sealing and
/// the header. The server refuses larger binary messages.
pub const MAX_RELAY_MESSAGE_BYTES: usize =
    2 + MAX_PEER_ID_BYTES + SEAL_OVERHEAD + 1 + MAX_FRAME_BYTES;

/// Why relay bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Empty, or a format byte this build does not know.
    #[error("not a relay envelope (format byte {0:?}, expected {RELAY_FORMAT})")]
    Format(Option<u8>),
    /// The peer id is cut off or not UTF-8.
    #[error("relay envelope has a truncated or non-UTF-8 peer id")]
    PeerId,
    /// Larger than [`MAX_RELAY_MESSAGE_BYTES`].
    #[error("relay envelope is {0} bytes; at most {MAX_RELAY_MESSAGE_BYTES} are allowed")]
    TooLarge(usize),
    /// The payload did not authenticate.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The payload opened but its kind byte is unknown or it is empty.
    #[error("relay payload has unknown kind {0:?}")]
    Kind(Option<u8>),
    /// A Switch whose body is neither empty nor [`SWITCH_BODY_BYTES`] long.
    #[error("relay Switch has a {0}-byte body; expected 0 or {SWITCH_BODY_BYTES}")]
    Switch(usize),
}

/// A Switch body: the epoch (8 bytes, big-endian) and the reply flag (1 byte).
/// An empty body (from builds before epochs) reads as epoch 0, no reply.
pub const SWITCH_BODY_BYTES: usize = 9;

/// Encodes an envelope addressed to (client → server) or coming from
/// (server → client) `peer`.
pub fn encode_envelope(peer: &PeerId, body: &[u8]) -> Vec<u8> {
    let id = peer.0.as_bytes();
    let id = &id[..id.len().min(MAX_PEER_ID_BYTES)];
    let mut out = Vec::with_capacity(2 + id.len() + body.len());
    out.push(RELAY_FORMAT);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(body);
    out
}

/// Splits an envelope into its peer id and body.
pub fn decode_envelope(bytes: &[u8]) -> Result<(&str, &[u8]), RelayError> {
    if bytes.len() > MAX_RELAY_MESSAGE_BYTES {
        return Err(RelayError::TooLarge(bytes.len()));
    }
    match bytes.first() {
        Some(&RELAY_FORMAT) => {}
        other => return Err(RelayError::Format(other.copied())),
    }
    let len = *bytes.get(1).ok_or(RelayError::PeerId)? as usize;
    let id = bytes.get(2..2 + len).ok_or(RelayError::PeerId)?;
    let id = std::str::from_utf8(id).map_err(|_| RelayError::PeerId)?;
    Ok((id, &bytes[2 + len..]))
}

/// What a relay packet carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayPayload {
    /// "I now talk to you through the server relay": the addressee switches
    /// its side of the link to the relay too and, unless this is itself a
    /// `reply`, answers with a Switch whose `reply` is set.
    Switch {
        /// The sender's instance: chosen at random when a peer starts (a
        /// page load, a CLI run), so a peer restarted under the same id is
        /// told apart from one that only re-sends its Switch.
        epoch: u64,
        /// This Switch confirms one received; it is never answered.
        reply: bool,
    },
    /// An encoded [`crate::Frame`] for one of the two channels.
    Frame {
        /// The channel it would have travelled on.
        channel: Channel,
        /// The encoded frame.
        frame: Vec<u8>,
    },
}

const KIND_SWITCH: u8 = 0;
const KIND_CHAT: u8 = 1;
const KIND_FILE: u8 = 2;

/// Seals and opens relay packets of one peer with the room key.
#[derive(Debug, Clone)]
pub struct RelayCipher {
    sealer: Sealer,
}

impl RelayCipher {
    /// A cipher for `room_key`; `random_prefix` comes from a CSPRNG.
    pub fn new(room_key: &RoomKey, random_prefix: [u8; 16]) -> Self {
        Self {
            sealer: Sealer::new(
                SealKey::derive(room_key, Purpose::RelayFrames),
                random_prefix,
            ),
        }
    }

    /// The complete envelope carrying `payload` from `me` to `to`.
    pub fn seal(&mut self, me: &PeerId, to: &PeerId, payload: &RelayPayload) -> Vec<u8> {
        let switch_body;
        let (kind, bytes): (u8, &[u8]) = match payload {
            RelayPayload::Switch { epoch, reply } => {
                let mut body = [0; SWITCH_BODY_BYTES];
                body[..8].copy_from_slice(&epoch.to_be_bytes());
                body[8] = u8::from(*reply);
                switch_body = body;
                (KIND_SWITCH, &switch_body)
            }
            RelayPayload::Frame {
                channel: Channel::Chat,
                frame,
            } => (KIND_CHAT, frame),
            RelayPayload::Frame {
                channel: Channel::File,
                frame,
            } => (KIND_FILE, frame),
        };
        let mut plain = Vec::with_capacity(1 + bytes.len());
        plain.push(kind);
        plain.extend_from_slice(bytes);
        let body = self.sealer.seal(&aad(me, to), &plain);
        encode_envelope(to, &body)
    }

    /// Opens an envelope the server delivered to `me`: the sender and what it sent.
    pub fn open(&self, me: &PeerId, envelope: &[u8]) -> Result<(PeerId, RelayPayload), RelayError> {
        let (from, body) = decode_envelope(envelope)?;
        let from = PeerId(from.to_owned());
        let mut plain = self.sealer.key().open(&aad(&from, me), body)?;
        let payload = match plain.first().copied() {
            Some(KIND_SWITCH) => match plain.get(1..) {
                Some([]) | None => RelayPayload::Switch {
                    epoch: 0,
                    reply: false,
                },
                Some([e0, e1, e2, e3, e4, e5, e6, e7, reply @ (0 | 1)]) => RelayPayload::Switch {
                    epoch: u64::from_be_bytes([*e0, *e1, *e2, *e3, *e4, *e5, *e6, *e7]),
                    reply: *reply == 1,
                },
                Some(body) => return Err(RelayError::Switch(body.len())),
            },
            Some(kind @ (KIND_CHAT | KIND_FILE)) => {
                plain.remove(0);
                RelayPayload::Frame {
                    channel: if kind == KIND_CHAT {
                        Channel::Chat
                    } else {
                        Channel::File
                    },
                    frame: plain,
                }
            }
            other => return Err(RelayError::Kind(other)),
        };
        Ok((from, payload))
    }
}

/// Binds a payload to its sender and addressee.
fn aad(from: &PeerId, to: &PeerId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(from.0.len() + to.0.len() + 1);
    aad.extend_from_slice(from.0.as_bytes());
    aad.push(0);
    aad.extend_from_slice(to.0.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> PeerId {
        PeerId(s.into())
    }

    /// What the server does: swap the addressee for the sender.
    fn server_forward(envelope: &[u8], from: &PeerId) -> (PeerId, Vec<u8>) {
        let (to, body) = decode_envelope(envelope).unwrap();
        (peer(to), encode_envelope(from, body))
    }

    #[test]
    fn a_frame_crosses_the_server_and_opens_at_the_addressee() {
        let key = RoomKey::from_random([5; 32]);
        let (a, b) = (peer("aaaa-1"), peer("bbbb-2"));
        let mut alice = RelayCipher::new(&key, [1; 16]);
        let bob = RelayCipher::new(&key, [2; 16]);
        let payload = RelayPayload::Frame {
            channel: Channel::File,
            frame: vec![1, 2, 3],
        };
        let envelope = alice.seal(&a, &b, &payload);
        let (to, delivered) = server_forward(&envelope, &a);
        assert_eq!(to, b);
        assert_eq!(bob.open(&b, &delivered).unwrap(), (a.clone(), payload));

        for switch in [
            RelayPayload::Switch {
                epoch: u64::MAX - 7,
                reply: false,
            },
            RelayPayload::Switch {
                epoch: 1,
                reply: true,
            },
        ] {
            let envelope = alice.seal(&a, &b, &switch);
            let (_, delivered) = server_forward(&envelope, &a);
            assert_eq!(bob.open(&b, &delivered).unwrap().1, switch);
        }
    }

    #[test]
    fn a_switch_without_a_body_is_epoch_zero_and_a_bad_body_is_refused() {
        let key = RoomKey::from_random([5; 32]);
        let (a, b) = (peer("aaaa-1"), peer("bbbb-2"));
        let mut alice = RelayCipher::new(&key, [1; 16]);
        let bob = RelayCipher::new(&key, [2; 16]);
        let mut sealed = |plain: &[u8]| {
            let body = alice.sealer.seal(&aad(&a, &b), plain);
            encode_envelope(&a, &body)
        };
        assert_eq!(
            bob.open(&b, &sealed(&[KIND_SWITCH])).unwrap().1,
            RelayPayload::Switch {
                epoch: 0,
                reply: false
            }
        );
        assert!(matches!(
            bob.open(&b, &sealed(&[KIND_SWITCH, 1, 2, 3])),
            Err(RelayError::Switch(3))
        ));
        let mut bad_flag = vec![KIND_SWITCH];
        bad_flag.extend_from_slice(&[0; 8]);
        bad_flag.push(2);
        assert!(matches!(
            bob.open(&b, &sealed(&bad_flag)),
            Err(RelayError::Switch(9))
        ));
    }

    #[test]
    fn a_server_that_lies_about_the_sender_or_reads_another_room_fails() {
        let key = RoomKey::from_random([5; 32]);
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let mut alice = RelayCipher::new(&key, [1; 16]);
        let envelope = alice.seal(
            &a,
            &b,
            &RelayPayload::Switch {
                epoch: 3,
                reply: false,
            },
        );
        // Claims the packet came from c.
        let (_, forged) = server_forward(&envelope, &c);
        let bob = RelayCipher::new(&key, [2; 16]);
        assert!(matches!(
            bob.open(&b, &forged),
            Err(RelayError::Seal(SealError::Forged))
        ));
        // Redirected to c, who holds the key but is not the addressee.
        let (_, delivered) = server_forward(&envelope, &a);
        assert!(bob.open(&c, &delivered).is_err());
        let stranger = RelayCipher::new(&RoomKey::from_random([6; 32]), [3; 16]);
        assert!(stranger.open(&b, &delivered).is_err());
    }

    #[test]
    fn malformed_envelopes_are_explained() {
        assert_eq!(decode_envelope(&[]), Err(RelayError::Format(None)));
        assert_eq!(decode_envelope(&[9, 0]), Err(RelayError::Format(Some(9))));
        assert_eq!(decode_envelope(&[1]), Err(RelayError::PeerId));
        assert_eq!(decode_envelope(&[1, 5, b'a']), Err(RelayError::PeerId));
        assert_eq!(decode_envelope(&[1, 1, 0xff]), Err(RelayError::PeerId));
        let huge = vec![1u8; MAX_RELAY_MESSAGE_BYTES + 1];
        assert_eq!(
            decode_envelope(&huge),
            Err(RelayError::TooLarge(MAX_RELAY_MESSAGE_BYTES + 1))
        );
        assert_eq!(decode_envelope(&[1, 1, b'x']), Ok(("x", &[][..])));
    }

    #[test]
    fn a_full_size_frame_fits_the_limit() {
        let key = RoomKey::from_random([5; 32]);
        let mut cipher = RelayCipher::new(&key, [1; 16]);
        let long_id = peer(&"p".repeat(MAX_PEER_ID_BYTES));
        let envelope = cipher.seal(
            &long_id,
            &long_id,
            &RelayPayload::Frame {
                channel: Channel::File,
                frame: vec![0; MAX_FRAME_BYTES],
            },
        );
        assert_eq!(envelope.len(), MAX_RELAY_MESSAGE_BYTES);
        assert!(decode_envelope(&envelope).is_ok());
    }
}
