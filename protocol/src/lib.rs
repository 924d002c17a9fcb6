//! Parlor's wire types, shared unchanged by the server, the native peer and the
//! browser peer (this crate builds for `wasm32-unknown-unknown` and native).
//!
//! - [`signaling`]: JSON messages between a peer and `parlor-server` over the
//!   `/ws` WebSocket (join a room, presence, SDP/ICE forwarding, errors).
//! - [`frame`]: the compact binary frames peers exchange over WebRTC data
//!   channels (chat, acks, file transfer).
//! - [`relay`]: frames carried over the signaling WebSocket when no WebRTC
//!   path works, sealed end to end.
//! - [`sealed`]: SDP and ICE candidates sealed end to end inside signaling.
//! - [`seal`]: XChaCha20-Poly1305 sealing under keys derived from the room
//!   key, which never reaches the server.
//! - [`code`]: short codes typed by hand (`7-apple-river`) and the SPAKE2
//!   exchange that turns one into a room key.
//! - [`ids`]: room ids, room keys, peer ids and the invite link that carries
//!   them.
//!
//! This crate only describes and encodes messages; it does no IO.
#![warn(missing_docs)]

pub mod code;
pub mod frame;
pub mod ids;
pub mod relay;
pub mod seal;
pub mod sealed;
pub mod signaling;

pub use code::{CodeError, PakeError, PakeMessage, PakeSession, PakeStep, ShortCode};
pub use frame::{
    CancelReason, ChatMessage, FileOffer, Frame, FrameError, MAX_FRAME_BYTES, MessageId, TransferId,
};
pub use ids::{InviteLink, InviteLinkError, PeerId, RoomId, RoomIdError, RoomKey};
pub use relay::{RelayCipher, RelayError, RelayPayload};
pub use sealed::{PeerSignal, SealedSignalError, SignalCipher};
pub use signaling::{
    ClientMessage, ErrorCode, IceCandidate, IceServer, PeerInfo, ServerMessage, SignalingError,
};

/// The signaling protocol version this build speaks. A client states it in
/// [`ClientMessage::Hello`]; a server that does not support it answers with
/// [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Every signaling protocol version this build can speak, oldest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// Label of the chat data channel. The offerer creates it (and
/// [`FILE_CHANNEL_LABEL`]) in-band; the answerer recognises both by label.
/// Chat has its own channel so that a message typed during a large transfer
/// is never queued behind file chunks.
pub const CHAT_CHANNEL_LABEL: &str = "parlor-chat";
/// Label of the file data channel (offers, chunks, progress, verification).
pub const FILE_CHANNEL_LABEL: &str = "parlor-file";

/// The two data channels of every peer-to-peer link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Chat messages, acks and typing notices: small, latency-sensitive.
    Chat,
    /// File offers, chunks, progress and verification: bulk, flow-controlled.
    File,
}

impl Channel {
    /// Both channels, in the order the offerer creates them.
    pub const ALL: [Channel; 2] = [Channel::Chat, Channel::File];

    /// The data-channel label.
    pub fn label(self) -> &'static str {
        match self {
            Channel::Chat => CHAT_CHANNEL_LABEL,
            Channel::File => FILE_CHANNEL_LABEL,
        }
    }

    /// The channel with this label, if it is one of Parlor's.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.label() == label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_found_by_their_labels_only() {
        for kind in Channel::ALL {
            assert_eq!(Channel::from_label(kind.label()), Some(kind));
        }
        assert_ne!(Channel::Chat.label(), Channel::File.label());
        assert_eq!(Channel::from_label("chat"), None);
    }
}
