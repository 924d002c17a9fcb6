//! Identifiers: rooms, room keys, peers, and the invite link.
//!
//! An invite link looks like `http://HOST/r/ROOM#KEY`. `ROOM` identifies the
//! room on the server; `KEY` sits in the URL fragment, which browsers never
//! send to a server, and is reserved for end-to-end peer authentication.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Shortest accepted room id: 16 characters of the URL-safe alphabet carry
/// at least 96 bits; ids made by [`RoomId::from_random`] carry 128.
pub const ROOM_ID_MIN_LEN: usize = 16;
/// Longest accepted room id; keeps keys in server maps small.
pub const ROOM_ID_MAX_LEN: usize = 64;

/// A room identifier: 16 to 64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomId(String);

/// Why a string is not a valid [`RoomId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomIdError {
    /// Too short or too long.
    #[error("room id must be {ROOM_ID_MIN_LEN} to {ROOM_ID_MAX_LEN} characters, got {0}")]
    Length(usize),
    /// Contains a character outside `[A-Za-z0-9_-]`.
    #[error("room id may only contain A-Z, a-z, 0-9, '-' and '_'")]
    Alphabet,
}

impl RoomId {
    /// Parses and validates a room id.
    pub fn parse(s: &str) -> Result<Self, RoomIdError> {
        if !(ROOM_ID_MIN_LEN..=ROOM_ID_MAX_LEN).contains(&s.len()) {
            return Err(RoomIdError::Length(s.len()));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(RoomIdError::Alphabet);
        }
        Ok(Self(s.to_owned()))
    }

    /// Makes a room id from 16 random bytes (128 bits): 22 base64url characters.
    /// The caller supplies the randomness, so this crate needs no RNG.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoomId {
    type Error = RoomIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<RoomId> for String {
    fn from(id: RoomId) -> Self {
        id.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The secret part of an invite link (after `#`): 32 bytes, base64url in the
/// link. It never reaches the server.
#[derive(Clone, PartialEq, Eq)]
pub struct RoomKey([u8; 32]);

impl RoomKey {
    /// Wraps 32 random bytes supplied by the caller.
    pub fn from_random(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the base64url form used in links.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, not even in debug logs.
        f.write_str("RoomKey(..)")
    }
}

/// A peer's id, assigned by the server when the peer joins a room. Opaque to
/// clients; unique among all connections the server has ever accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub String);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An invite link: `BASE/r/ROOM#KEY`, where BASE is the server's http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteLink {
    /// The server's base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    pub base: String,
    /// The room.
    pub room: RoomId,
    /// The secret after `#`.
    pub key: RoomKey,
}

/// Why a string is not a valid invite link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteLinkError {
    /// Not `http://` or `https://`.
    #[error("invite link must start with http:// or https://")]
    Scheme,
    /// No `/r/ROOM` path.
    #[error("invite link has no /r/ROOM part")]
    NoRoom,
    /// The room part is invalid.
    #[error("invalid room in invite link: {0}")]
    Room(#[from] RoomIdError),
    /// No `#KEY`, or the key is not 32 base64url-encoded bytes.
    #[error(
        "invite link has no valid #KEY part (it must be copied whole, including what follows '#')"
    )]
    Key,
}

impl InviteLink {
    /// Parses `BASE/r/ROOM#KEY`.
    pub fn parse(link: &str) -> Result<Self, InviteLinkError> {
        let link = link.trim();
        if !(link.starts_with("http://") || link.starts_with("https://")) {
            return Err(InviteLinkError::Scheme);
        }
        let (before_key, key) = link.split_once('#').ok_or(InviteLinkError::Key)?;
        let key = RoomKey::parse(key).ok_or(InviteLinkError::Key)?;
        let (base, room) = before_key
            .rsplit_once("/r/")
            .ok_or(InviteLinkError::NoRoom)?;
        let room = room.split(['?', '/']).next().unwrap_or_default();
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            room: RoomId::parse(room)?,
            key,
        })
    }

    /// The signaling WebSocket URL for this link's server (`ws(s)://HOST/ws`).
    pub fn websocket_url(&self) -> String {
        websocket_url(&self.base)
    }
}

/// Turns a server base URL (`http(s)://HOST[:PORT]`) into its signaling
/// WebSocket URL (`ws(s)://HOST[:PORT]/ws`).
pub fn websocket_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}/ws")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}/ws")
    } else {
        format!("{base}/ws")
    }
}

impl fmt::Display for InviteLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/r/{}#{}", self.base, self.room, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_link_round_trips() {
        let link = InviteLink {
            base: "http://127.0.0.1:8080".into(),
            room: RoomId::from_random([7; 16]),
            key: RoomKey::from_random([9; 32]),
        };
        let text = link.to_string();
        assert!(text.starts_with("http://127.0.0.1:8080/r/"));
        assert_eq!(InviteLink::parse(&text).unwrap(), link);
        assert_eq!(link.websocket_url(), "ws://127.0.0.1:8080/ws");
    }

    #[test]
    fn invite_link_without_key_is_rejected() {
        let room = RoomId::from_random([1; 16]);
        assert_eq!(
            InviteLink::parse(&format!("https://x.example/r/{room}")),
            Err(InviteLinkError::Key)
        );
        assert_eq!(
            InviteLink::parse("ftp://x/r/abc#def"),
            Err(InviteLinkError::Scheme)
        );
    }

    #[test]
    fn room_ids_are_validated() {
        assert_eq!(RoomId::parse("short"), Err(RoomIdError::Length(5)));
        assert_eq!(
            RoomId::parse("aaaaaaaaaaaaaaaa/../x"),
            Err(RoomIdError::Alphabet)
        );
        assert!(RoomId::parse("abcdefghijklmnop").is_ok());
        assert_eq!(RoomId::from_random([0xff; 16]).as_str().len(), 22);
        let bad: Result<RoomId, _> = serde_json::from_str("\"../../etc/passwd\"");
        assert!(bad.is_err());
    }

    #[test]
    fn room_key_debug_hides_the_secret() {
        assert_eq!(
            format!("{:?}", RoomKey::from_random([1; 32])),
            "RoomKey(..)"
        );
    }
}
