//! Signaling messages: JSON text frames on the `/ws` WebSocket.
//!
//! Every message is an object with a `"type"` field. A client first sends
//! [`ClientMessage::Hello`] (protocol version, room, display name); the server
//! answers [`ServerMessage::Welcome`] with the client's peer id, the peers
//! already present and the ICE servers to use. From then on the server
//! forwards offers, answers and ICE candidates between peers of the same room
//! without reading them, and reports peers joining and leaving.

use serde::{Deserialize, Serialize};

use crate::ids::{PeerId, RoomId};

/// Longest signaling message a client may send, in bytes. A browser SDP offer
/// with two data channels is about 1 KB; 64 KiB leaves room for sealed
/// (encrypted) SDP and many candidates while bounding per-message memory.
pub const MAX_SIGNALING_MESSAGE_BYTES: usize = 64 * 1024;

/// Length of a resume token: 32 random bytes in base64url without padding.
pub const RESUME_TOKEN_CHARS: usize = 43;

/// Whether `token` looks like a resume token (43 base64url characters).
pub fn is_resume_token(token: &str) -> bool {
    token.len() == RESUME_TOKEN_CHARS
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The peer id that belongs to a resume token: the first 64 bits of its
/// BLAKE3 hash in hex. Anyone can compute it, nobody can invert it, so
/// showing the id to other peers does not reveal the token.
pub fn peer_id_for_resume_token(token: &str) -> PeerId {
    let hash = blake3::hash(token.as_bytes());
    let mut id = String::with_capacity(16);
    for b in &hash.as_bytes()[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    PeerId(id)
}

/// Longest display name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// A message from a client to the server. Unknown fields are ignored, so a
/// newer client's `hello` still reaches the version check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientMessage {
    /// Join a room. Must be the first message of a connection, sent once.
    Hello {
        /// The protocol version the client speaks ([`crate::PROTOCOL_VERSION`]).
        version: u32,
        /// The room to join (created when it does not exist).
        room: RoomId,
        /// A display name shown to the other peers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The `resume_token` of an earlier `welcome`: rejoin with the same
        /// peer id (after a dropped connection or a server restart).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    /// An SDP offer for peer `to`.
    Offer {
        /// The addressee, a peer of the same room.
        to: PeerId,
        /// The SDP, opaque to the server.
        sdp: String,
    },
    /// An SDP answer for peer `to`.
    Answer {
        /// The addressee, a peer of the same room.
        to: PeerId,
        /// The SDP, opaque to the server.
        sdp: String,
    },
    /// A trickled ICE candidate for peer `to`.
    Candidate {
        /// The addressee, a peer of the same room.
        to: PeerId,
        /// The candidate, opaque to the server.
        candidate: IceCandidate,
    },
    /// An offer, answer or candidate for peer `to`, sealed with the room key
    /// (see [`crate::sealed`]): the server forwards it unread and cannot
    /// alter it unnoticed. Current clients send only this; the unsealed
    /// `offer`/`answer`/`candidate` remain for older clients.
    Signal {
        /// The addressee, a peer of the same room.
        to: PeerId,
        /// base64url of the sealed [`crate::sealed::PeerSignal`].
        sealed: String,
    },
    /// A short-code key-exchange message for peer `to` (see [`crate::code`]):
    /// forwarded unread like `signal`, bounded to
    /// [`crate::code::MAX_PAKE_BODY_CHARS`] base64url characters.
    Pake {
        /// The addressee, a peer of the same room.
        to: PeerId,
        /// base64url of a postcard [`crate::code::PakeMessage`].
        body: String,
    },
    /// Application-level keep-alive; the server answers [`ServerMessage::Pong`].
    Ping,
    /// Answer to a server [`ServerMessage::Ping`].
    Pong,
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerMessage {
    /// The answer to [`ClientMessage::Hello`]: the client is now in the room.
    Welcome {
        /// The protocol version the server will speak on this connection.
        version: u32,
        /// The client's own peer id.
        peer_id: PeerId,
        /// The peers already in the room (not including the client).
        peers: Vec<PeerInfo>,
        /// ICE servers (STUN/TURN) the client should use.
        ice_servers: Vec<IceServer>,
        /// A secret that gets this peer id back: send it as `resume` in the
        /// `hello` of a later connection. The id is derived from it, so it
        /// works with a restarted server too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
    },
    /// A peer joined the room. Newcomers make the offers, so the peers already
    /// present only wait for one.
    PeerJoined {
        /// The newcomer.
        peer: PeerInfo,
    },
    /// A peer left the room (closed its connection or was dropped).
    PeerLeft {
        /// Who left.
        peer_id: PeerId,
    },
    /// An SDP offer from peer `from`.
    Offer {
        /// The sender.
        from: PeerId,
        /// The SDP.
        sdp: String,
    },
    /// An SDP answer from peer `from`.
    Answer {
        /// The sender.
        from: PeerId,
        /// The SDP.
        sdp: String,
    },
    /// An ICE candidate from peer `from`.
    Candidate {
        /// The sender.
        from: PeerId,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// A sealed offer, answer or candidate from peer `from`.
    Signal {
        /// The sender.
        from: PeerId,
        /// base64url of the sealed [`crate::sealed::PeerSignal`].
        sealed: String,
    },
    /// A short-code key-exchange message from peer `from`.
    Pake {
        /// The sender.
        from: PeerId,
        /// base64url of a postcard [`crate::code::PakeMessage`].
        body: String,
    },
    /// Something the client sent was refused. The connection stays open unless
    /// the server also closes it (then the close frame carries the reason).
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// Application-level keep-alive; answer with [`ClientMessage::Pong`].
    Ping,
    /// Answer to [`ClientMessage::Ping`].
    Pong,
}

/// A peer as presented to the others in its room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's id.
    pub id: PeerId,
    /// Its display name (may be empty).
    #[serde(default)]
    pub name: String,
}

/// An ICE server, in the shape of the browser's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:` / `turn:` URLs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// An ICE candidate, in the shape of the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` attribute line.
    pub candidate: String,
    /// Media stream id the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// Media line index the candidate belongs to.
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_m_line_index: Option<u16>,
    /// ICE username fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Machine-readable error codes carried by [`ServerMessage::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The message is not valid JSON or not a known message.
    Malformed,
    /// The message is larger than [`MAX_SIGNALING_MESSAGE_BYTES`].
    TooLarge,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion,
    /// A message other than `hello` arrived before `hello`.
    NotJoined,
    /// A second `hello` on one connection.
    AlreadyJoined,
    /// The room has as many peers as it may hold.
    RoomFull,
    /// The server holds as many rooms as it may.
    TooManyRooms,
    /// The addressed peer is not in the sender's room.
    UnknownPeer,
    /// The client sends messages faster than allowed.
    RateLimited,
    /// A field is out of bounds (e.g. a display name too long).
    InvalidField,
    /// A server-relay packet could not be relayed: the relay is off, or the
    /// addressee is not reading (the packet was dropped).
    RelayUnavailable,
    /// The server failed; not the client's fault.
    Internal,
    /// A code this build does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::RoomFull => "room_full",
            Self::TooManyRooms => "too_many_rooms",
            Self::UnknownPeer => "unknown_peer",
            Self::RateLimited => "rate_limited",
            Self::InvalidField => "invalid_field",
            Self::RelayUnavailable => "relay_unavailable",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

/// Why a signaling message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// Longer than [`MAX_SIGNALING_MESSAGE_BYTES`].
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid JSON, or not a known message.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl SignalingError {
    /// The error code to report to the sender.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::Malformed(_) => ErrorCode::Malformed,
        }
    }
}

fn check_len(text: &str) -> Result<(), SignalingError> {
    if text.len() > MAX_SIGNALING_MESSAGE_BYTES {
        return Err(SignalingError::TooLarge {
            len: text.len(),
            max: MAX_SIGNALING_MESSAGE_BYTES,
        });
    }
    Ok(())
}

impl ClientMessage {
    /// Decodes a client message, enforcing [`MAX_SIGNALING_MESSAGE_BYTES`].
    pub fn from_json(text: &str) -> Result<Self, SignalingError> {
        check_len(text)?;
        Ok(serde_json::from_str(text)?)
    }

    /// Encodes the message as JSON.
    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ServerMessage {
    /// Decodes a server message. The same size limit applies, so a hostile
    /// server cannot make a client buffer without bound either.
    pub fn from_json(text: &str) -> Result<Self, SignalingError> {
        check_len(text)?;
        Ok(serde_json::from_str(text)?)
    }

    /// Encodes the message as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Shorthand for an [`ServerMessage::Error`].
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> PeerId {
        PeerId(id.into())
    }

    #[test]
    fn client_messages_round_trip() {
        let room = RoomId::parse("abcdefghijklmnopqrstuv").unwrap();
        let candidate = IceCandidate {
            candidate: "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        for msg in [
            ClientMessage::Hello {
                version: 1,
                room,
                name: Some("ada".into()),
                resume: Some("t".repeat(43)),
            },
            ClientMessage::Offer {
                to: peer("p1"),
                sdp: "v=0".into(),
            },
            ClientMessage::Answer {
                to: peer("p1"),
                sdp: "v=0".into(),
            },
            ClientMessage::Candidate {
                to: peer("p2"),
                candidate,
            },
            ClientMessage::Signal {
                to: peer("p1"),
                sealed: "c2VhbGVk".into(),
            },
            ClientMessage::Pake {
                to: peer("p1"),
                body: crate::code::PakeMessage::Confirm([1; 32]).encode(),
            },
            ClientMessage::Ping,
            ClientMessage::Pong,
        ] {
            assert_eq!(ClientMessage::from_json(&msg.to_json()).unwrap(), msg);
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let info = PeerInfo {
            id: peer("p1"),
            name: "ada".into(),
        };
        for msg in [
            ServerMessage::Welcome {
                version: 1,
                peer_id: peer("p2"),
                peers: vec![info.clone()],
                ice_servers: vec![IceServer {
                    urls: vec!["turn:127.0.0.1:3478".into()],
                    username: Some("1:p2".into()),
                    credential: Some("x".into()),
                }],
                resume_token: Some("t".repeat(43)),
            },
            ServerMessage::PeerJoined { peer: info },
            ServerMessage::PeerLeft {
                peer_id: peer("p1"),
            },
            ServerMessage::Offer {
                from: peer("p1"),
                sdp: "v=0".into(),
            },
            ServerMessage::Answer {
                from: peer("p1"),
                sdp: "v=0".into(),
            },
            ServerMessage::Pake {
                from: peer("p1"),
                body: crate::code::PakeMessage::Start(vec![2; 33]).encode(),
            },
            ServerMessage::error(ErrorCode::RoomFull, "room is full"),
            ServerMessage::Ping,
            ServerMessage::Pong,
        ] {
            assert_eq!(ServerMessage::from_json(&msg.to_json()).unwrap(), msg);
        }
    }

    #[test]
    fn wire_format_is_stable() {
        let msg = ClientMessage::Candidate {
            to: peer("p1"),
            candidate: IceCandidate {
                candidate: "c".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            },
        };
        assert_eq!(
            msg.to_json(),
            r#"{"type":"candidate","to":"p1","candidate":{"candidate":"c","sdpMid":"0","sdpMLineIndex":0}}"#
        );
        assert_eq!(
            ServerMessage::error(ErrorCode::UnknownPeer, "no").to_json(),
            r#"{"type":"error","code":"unknown_peer","message":"no"}"#
        );
    }

    #[test]
    fn pake_wire_format_is_stable() {
        assert_eq!(
            ClientMessage::Pake {
                to: peer("p1"),
                body: "AAE".into()
            }
            .to_json(),
            r#"{"type":"pake","to":"p1","body":"AAE"}"#
        );
        assert_eq!(
            ServerMessage::Pake {
                from: peer("p2"),
                body: "AAE".into()
            }
            .to_json(),
            r#"{"type":"pake","from":"p2","body":"AAE"}"#
        );
    }

    #[test]
    fn resume_tokens_map_to_stable_opaque_peer_ids() {
        let token = "A".repeat(RESUME_TOKEN_CHARS);
        assert!(is_resume_token(&token));
        assert!(!is_resume_token("short"));
        assert!(!is_resume_token(&"+".repeat(RESUME_TOKEN_CHARS)));
        let id = peer_id_for_resume_token(&token);
        assert_eq!(id, peer_id_for_resume_token(&token));
        assert_eq!(id.0.len(), 16);
        assert!(!id.0.contains('A'));
        assert_ne!(
            id,
            peer_id_for_resume_token(&"B".repeat(RESUME_TOKEN_CHARS))
        );
    }

    #[test]
    fn malformed_and_oversized_messages_are_errors() {
        for bad in [
            "",
            "{",
            "null",
            r#"{"type":"nope"}"#,
            r#"{"type":"offer","to":"p"}"#,
        ] {
            let err = ClientMessage::from_json(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Malformed, "{bad}");
        }
        let huge = format!(
            r#"{{"type":"offer","to":"p","sdp":"{}"}}"#,
            "x".repeat(70_000)
        );
        assert_eq!(
            ClientMessage::from_json(&huge).unwrap_err().code(),
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn a_newer_hello_with_extra_fields_still_reaches_the_version_check() {
        let msg = ClientMessage::from_json(
            r#"{"type":"hello","version":9,"room":"abcdefghijklmnop","resume":"tok"}"#,
        );
        assert!(matches!(msg, Ok(ClientMessage::Hello { version: 9, .. })));
    }

    #[test]
    fn unknown_error_codes_from_newer_servers_decode() {
        let msg = ServerMessage::from_json(r#"{"type":"error","code":"brand_new","message":"m"}"#);
        assert!(matches!(
            msg,
            Ok(ServerMessage::Error {
                code: ErrorCode::Unknown,
                ..
            })
        ));
    }
}
