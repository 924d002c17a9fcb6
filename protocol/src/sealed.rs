//! Sealed signaling: SDP offers/answers and ICE candidates travel through
//! the server inside [`ClientMessage::Signal`](crate::ClientMessage::Signal),
//! sealed with a key derived from the room key (see [`crate::seal`]) and
//! bound to the (sender, addressee) pair.
//!
//! A signaling server that swaps an SDP (to put itself in the middle of the
//! DTLS handshake with its own fingerprint), edits a candidate, or redirects
//! a message to another peer is detected when the peer opens it. Peers then
//! also check that the DTLS certificate they met is the one whose
//! fingerprint the sealed SDP announced.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::ids::{PeerId, RoomKey};
use crate::seal::{Purpose, SealError, SealKey, Sealer};
use crate::signaling::IceCandidate;

/// What a sealed signal carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerSignal {
    /// An SDP offer (also an ICE-restart offer).
    Offer {
        /// The SDP.
        sdp: String,
    },
    /// An SDP answer.
    Answer {
        /// The SDP.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The candidate.
        candidate: IceCandidate,
    },
}

/// Why a sealed signal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealedSignalError {
    /// Not base64url.
    #[error("sealed signal is not base64url")]
    Encoding,
    /// Altered, redirected, or sealed with another room's key.
    #[error(
        "signaling from {from} was altered on the way (or sealed with another invite key): \
         refusing to connect"
    )]
    Tampered {
        /// The claimed sender.
        from: PeerId,
        /// What failed.
        #[source]
        source: SealError,
    },
    /// Opened, but not a [`PeerSignal`] (a newer client's kind, or garbage
    /// sealed with the right key).
    #[error("sealed signal from {from} is not an offer, answer or candidate: {reason}")]
    Unknown {
        /// The sender.
        from: PeerId,
        /// The parser's complaint.
        reason: String,
    },
}

/// Seals and opens one peer's signals with the room key.
#[derive(Debug, Clone)]
pub struct SignalCipher {
    sealer: Sealer,
}

impl SignalCipher {
    /// A cipher for `room_key`; `random_prefix` comes from a CSPRNG.
    pub fn new(room_key: &RoomKey, random_prefix: [u8; 16]) -> Self {
        Self {
            sealer: Sealer::new(SealKey::derive(room_key, Purpose::Signaling), random_prefix),
        }
    }

    /// Seals `signal` from `me` to `to`, as the `sealed` field.
    pub fn seal(&mut self, me: &PeerId, to: &PeerId, signal: &PeerSignal) -> String {
        let json = serde_json::to_vec(signal).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(self.sealer.seal(&aad(me, to), &json))
    }

    /// Opens a `sealed` field that the server says came from `from` to `me`.
    pub fn open(
        &self,
        me: &PeerId,
        from: &PeerId,
        sealed: &str,
    ) -> Result<PeerSignal, SealedSignalError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SealedSignalError::Encoding)?;
        let json = self
            .sealer
            .key()
            .open(&aad(from, me), &bytes)
            .map_err(|source| SealedSignalError::Tampered {
                from: from.clone(),
                source,
            })?;
        serde_json::from_slice(&json).map_err(|err| SealedSignalError::Unknown {
            from: from.clone(),
            reason: err.to_string(),
        })
    }
}

fn aad(from: &PeerId, to: &PeerId) -> Vec<u8> {
    let mut aad = b"signal\0".to_vec();
    aad.extend_from_slice(from.0.as_bytes());
    aad.push(0);
    aad.extend_from_slice(to.0.as_bytes());
    aad
}

/// The DTLS fingerprint an SDP announces: the hash algorithm (lower case)
/// and the fingerprint bytes, from its first `a=fingerprint:` line.
pub fn sdp_fingerprint(sdp: &str) -> Option<(String, Vec<u8>)> {
    let line = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=fingerprint:"))?;
    let (algorithm, hex) = line.split_once(' ')?;
    let bytes = hex
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((algorithm.to_ascii_lowercase(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> PeerId {
        PeerId(s.into())
    }

    #[test]
    fn signals_open_only_for_their_addressee_from_their_sender() {
        let key = RoomKey::from_random([3; 32]);
        let mut ada = SignalCipher::new(&key, [1; 16]);
        let bob = SignalCipher::new(&key, [2; 16]);
        let offer = PeerSignal::Offer {
            sdp: "v=0\r\na=fingerprint:sha-256 AB:CD\r\n".into(),
        };
        let sealed = ada.seal(&peer("a"), &peer("b"), &offer);
        assert!(!sealed.contains("fingerprint"));
        assert_eq!(bob.open(&peer("b"), &peer("a"), &sealed).unwrap(), offer);
        // The server claims another sender, or delivers it to another peer.
        assert!(matches!(
            bob.open(&peer("b"), &peer("c"), &sealed),
            Err(SealedSignalError::Tampered { .. })
        ));
        assert!(bob.open(&peer("c"), &peer("a"), &sealed).is_err());
        // One character changed.
        let mut chars: Vec<char> = sealed.chars().collect();
        chars[40] = if chars[40] == 'A' { 'B' } else { 'A' };
        let edited: String = chars.into_iter().collect();
        let err = bob.open(&peer("b"), &peer("a"), &edited).unwrap_err();
        assert!(err.to_string().contains("altered"), "{err}");
        assert_eq!(
            bob.open(&peer("b"), &peer("a"), "not base64!"),
            Err(SealedSignalError::Encoding)
        );
        // Another room's key.
        let stranger = SignalCipher::new(&RoomKey::from_random([4; 32]), [5; 16]);
        assert!(stranger.open(&peer("b"), &peer("a"), &sealed).is_err());
    }

    #[test]
    fn candidates_round_trip() {
        let key = RoomKey::from_random([3; 32]);
        let mut ada = SignalCipher::new(&key, [1; 16]);
        let candidate = PeerSignal::Candidate {
            candidate: IceCandidate {
                candidate: "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            },
        };
        let sealed = ada.seal(&peer("a"), &peer("b"), &candidate);
        assert_eq!(
            ada.open(&peer("b"), &peer("a"), &sealed).unwrap(),
            candidate
        );
    }

    #[test]
    fn fingerprints_are_read_from_sdp() {
        let sdp = "v=0\r\ns=-\r\na=fingerprint:SHA-256 0A:ff:10\r\na=setup:actpass\r\n";
        assert_eq!(
            sdp_fingerprint(sdp),
            Some(("sha-256".into(), vec![0x0a, 0xff, 0x10]))
        );
        assert_eq!(sdp_fingerprint("v=0\r\n"), None);
        assert_eq!(sdp_fingerprint("a=fingerprint:sha-256 ZZ\r\n"), None);
    }
}
