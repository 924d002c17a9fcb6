//! Peer-to-peer frames: the binary messages peers exchange over WebRTC data
//! channels (and, as a last resort, over the server relay).
//!
//! Encoding: one byte [`FRAME_FORMAT_VERSION`], then the [`Frame`] in
//! [postcard](https://docs.rs/postcard) (varint integers, length-prefixed
//! strings and bytes). Decoding validates every bound, rejects trailing bytes
//! and never panics, whatever the input.

use serde::{Deserialize, Serialize};

/// First byte of every encoded frame. Bumped on incompatible changes; new
/// [`Frame`] variants are appended and need no bump.
pub const FRAME_FORMAT_VERSION: u8 = 1;

/// Largest encoded frame, in bytes. webrtc-rs 0.17 reads data-channel
/// messages into a 65 535-byte buffer and closes the channel on anything
/// larger, so every frame stays below that, whoever the peer is.
pub const MAX_FRAME_BYTES: usize = 65_000;

/// Largest chunk payload: 63 KiB leaves room under [`MAX_FRAME_BYTES`] for
/// the chunk header (tag, transfer id, offset, length: at most 30 bytes), and
/// being a multiple of BLAKE3's 1 KiB block keeps hashing on its fast path
/// (64 000-byte updates hash about 25% slower).
pub const MAX_CHUNK_BYTES: usize = 63 * 1024;

/// Longest chat message text, in bytes.
pub const MAX_CHAT_TEXT_BYTES: usize = 16 * 1024;

/// Longest file name (a path of several components for folders), in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 1024;

/// Longest MIME type or free-text reason, in bytes.
pub const MAX_SHORT_TEXT_BYTES: usize = 256;

/// A chat message id: 16 random bytes chosen by the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A file transfer id, chosen at random by the sender; unique per sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TransferId(pub u64);

impl std::fmt::Display for TransferId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Unique id; a receiver shows a message with a known id only once.
    pub id: MessageId,
    /// Sequence number on the sender→receiver link, from 1 without gaps;
    /// the receiver shows messages in this order.
    pub seq: u64,
    /// When the sender wrote it, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The text (UTF-8, at most [`MAX_CHAT_TEXT_BYTES`]).
    pub text: String,
}

/// An offer to send a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// The transfer this offer opens.
    pub transfer: TransferId,
    /// The file's name as the sender sees it: a relative path with `/`
    /// separators for files inside a folder. Untrusted: receivers sanitize it.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type (may be empty).
    pub mime: String,
    /// BLAKE3 hash of the whole content.
    pub hash: [u8; 32],
}

/// Why a transfer was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CancelReason {
    /// A person cancelled it.
    User,
    /// The received content's hash differs from the offer's.
    HashMismatch,
    /// The receiver could not store the data (disk full, permission…).
    StorageFailed(String),
    /// The sender could not read the file.
    ReadFailed(String),
    /// The other side broke the transfer protocol.
    ProtocolViolation(String),
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User => f.write_str("cancelled"),
            Self::HashMismatch => f.write_str("content hash mismatch"),
            Self::StorageFailed(why) => write!(f, "receiver could not store the file: {why}"),
            Self::ReadFailed(why) => write!(f, "sender could not read the file: {why}"),
            Self::ProtocolViolation(why) => write!(f, "protocol violation: {why}"),
        }
    }
}

/// A peer-to-peer frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Frame {
    /// A chat message (chat channel).
    Chat(ChatMessage),
    /// The receiver got chat message `id` with sequence number `seq`.
    ChatAck {
        /// The acknowledged message.
        id: MessageId,
        /// Its sequence number.
        seq: u64,
    },
    /// Sender → receiver: may I send this file?
    FileOffer(FileOffer),
    /// Receiver → sender: yes; send from `offset` (0, or more when resuming).
    FileAccept {
        /// The transfer.
        transfer: TransferId,
        /// First byte wanted.
        offset: u64,
    },
    /// Receiver → sender: no.
    FileDecline {
        /// The transfer.
        transfer: TransferId,
        /// Why, for the sender's user.
        reason: String,
    },
    /// Sender → receiver: `data` belongs at `offset`.
    Chunk {
        /// The transfer.
        transfer: TransferId,
        /// Byte offset of `data` in the file.
        offset: u64,
        /// The bytes (at most [`MAX_CHUNK_BYTES`]).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Receiver → sender: the first `received` bytes are stored. Drives the
    /// sender's progress, speed and ETA.
    FileProgress {
        /// The transfer.
        transfer: TransferId,
        /// Contiguous bytes stored from the start of the file.
        received: u64,
    },
    /// Sender → receiver: every chunk has been sent.
    FileDone {
        /// The transfer.
        transfer: TransferId,
    },
    /// Receiver → sender: the whole file arrived and its hash matches.
    FileVerified {
        /// The transfer.
        transfer: TransferId,
    },
    /// Either side: the transfer is abandoned.
    FileCancel {
        /// The transfer.
        transfer: TransferId,
        /// Why.
        reason: CancelReason,
    },
    /// Receiver → sender: continue from `offset` (after a reconnect, or when
    /// a chunk went missing).
    ResumeFrom {
        /// The transfer.
        transfer: TransferId,
        /// First byte wanted.
        offset: u64,
    },
    /// The sender is typing (chat channel). Sent at most every few seconds
    /// while typing; fire-and-forget, never acked or queued. Peers that show
    /// no typing indicator ignore it.
    Typing,
}

/// Why bytes could not be decoded into a [`Frame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Zero bytes.
    #[error("empty frame")]
    Empty,
    /// The format byte is not [`FRAME_FORMAT_VERSION`].
    #[error("unsupported frame format version {0} (this peer speaks {FRAME_FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    /// Larger than [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a valid encoding of any frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A valid frame followed by extra bytes.
    #[error("{0} unexpected bytes after the frame")]
    TrailingBytes(usize),
    /// A field is out of bounds.
    #[error("invalid frame: {0}")]
    Invalid(&'static str),
}

impl Frame {
    /// Encodes the frame: format byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(match self {
            Self::Chunk { data, .. } => data.len() + 32,
            _ => 64,
        });
        out.push(FRAME_FORMAT_VERSION);
        // Serializing into a Vec cannot fail for these types.
        postcard::to_extend(self, out).unwrap_or_default()
    }

    /// Decodes and validates a frame. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let (&version, body) = bytes.split_first().ok_or(FrameError::Empty)?;
        if version != FRAME_FORMAT_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge {
                len: bytes.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let (frame, rest): (Frame, _) =
            postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(FrameError::TrailingBytes(rest.len()));
        }
        frame.validate()?;
        Ok(frame)
    }

    /// Checks the bounds the type system does not.
    pub fn validate(&self) -> Result<(), FrameError> {
        match self {
            Self::Chat(msg) if msg.text.len() > MAX_CHAT_TEXT_BYTES => {
                Err(FrameError::Invalid("chat text too long"))
            }
            Self::Chat(msg) if msg.seq == 0 => {
                Err(FrameError::Invalid("sequence numbers start at 1"))
            }
            Self::FileOffer(offer) if offer.name.len() > MAX_FILE_NAME_BYTES => {
                Err(FrameError::Invalid("file name too long"))
            }
            Self::FileOffer(offer) if offer.mime.len() > MAX_SHORT_TEXT_BYTES => {
                Err(FrameError::Invalid("MIME type too long"))
            }
            Self::FileDecline { reason, .. } if reason.len() > MAX_SHORT_TEXT_BYTES => {
                Err(FrameError::Invalid("reason too long"))
            }
            Self::FileCancel {
                reason:
                    CancelReason::StorageFailed(why)
                    | CancelReason::ReadFailed(why)
                    | CancelReason::ProtocolViolation(why),
                ..
            } if why.len() > MAX_SHORT_TEXT_BYTES => Err(FrameError::Invalid("reason too long")),
            Self::Chunk { data, .. } if data.len() > MAX_CHUNK_BYTES => {
                Err(FrameError::Invalid("chunk too large"))
            }
            Self::Chunk { offset, data, .. } if offset.checked_add(data.len() as u64).is_none() => {
                Err(FrameError::Invalid("chunk offset overflows"))
            }
            _ => Ok(()),
        }
    }

    /// The transfer a file frame belongs to; `None` for chat frames.
    pub fn transfer_id(&self) -> Option<TransferId> {
        match self {
            Self::Chat(_) | Self::ChatAck { .. } | Self::Typing => None,
            Self::FileOffer(offer) => Some(offer.transfer),
            Self::FileAccept { transfer, .. }
            | Self::FileDecline { transfer, .. }
            | Self::Chunk { transfer, .. }
            | Self::FileProgress { transfer, .. }
            | Self::FileDone { transfer }
            | Self::FileVerified { transfer }
            | Self::FileCancel { transfer, .. }
            | Self::ResumeFrom { transfer, .. } => Some(*transfer),
        }
    }

    /// Whether this frame belongs on the chat channel (as opposed to the file
    /// channel).
    pub fn is_chat(&self) -> bool {
        matches!(self, Self::Chat(_) | Self::ChatAck { .. } | Self::Typing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        let t = TransferId(0xdead_beef);
        vec![
            Frame::Chat(ChatMessage {
                id: MessageId([3; 16]),
                seq: 1,
                sent_at_ms: 1_700_000_000_000,
                text: "héllo 你好".into(),
            }),
            Frame::ChatAck {
                id: MessageId([3; 16]),
                seq: 1,
            },
            Frame::FileOffer(FileOffer {
                transfer: t,
                name: "dir/a.txt".into(),
                size: 1 << 40,
                mime: "text/plain".into(),
                hash: [9; 32],
            }),
            Frame::FileAccept {
                transfer: t,
                offset: 0,
            },
            Frame::FileDecline {
                transfer: t,
                reason: "no thanks".into(),
            },
            Frame::Chunk {
                transfer: t,
                offset: 42,
                data: vec![1, 2, 3],
            },
            Frame::FileProgress {
                transfer: t,
                received: 45,
            },
            Frame::FileDone { transfer: t },
            Frame::FileVerified { transfer: t },
            Frame::FileCancel {
                transfer: t,
                reason: CancelReason::User,
            },
            Frame::FileCancel {
                transfer: t,
                reason: CancelReason::StorageFailed("disk full".into()),
            },
            Frame::ResumeFrom {
                transfer: t,
                offset: 1024,
            },
            Frame::Typing,
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in samples() {
            let bytes = frame.encode();
            assert_eq!(bytes[0], FRAME_FORMAT_VERSION);
            assert_eq!(Frame::decode(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn largest_chunk_fits_in_a_frame() {
        let frame = Frame::Chunk {
            transfer: TransferId(u64::MAX),
            offset: u64::MAX - MAX_CHUNK_BYTES as u64,
            data: vec![0xaa; MAX_CHUNK_BYTES],
        };
        let bytes = frame.encode();
        assert!(bytes.len() <= MAX_FRAME_BYTES, "{} bytes", bytes.len());
        assert_eq!(Frame::decode(&bytes).unwrap(), frame);
    }

    #[test]
    fn bad_frames_are_rejected_with_a_reason() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(
            Frame::decode(&[9, 0]),
            Err(FrameError::UnsupportedVersion(9))
        );
        assert!(matches!(
            Frame::decode(&[1, 200]),
            Err(FrameError::Malformed(_))
        ));
        let mut bytes = Frame::FileDone {
            transfer: TransferId(1),
        }
        .encode();
        bytes.push(0);
        assert_eq!(Frame::decode(&bytes), Err(FrameError::TrailingBytes(1)));
        let long = Frame::Chat(ChatMessage {
            id: MessageId([0; 16]),
            seq: 1,
            sent_at_ms: 0,
            text: "x".repeat(MAX_CHAT_TEXT_BYTES + 1),
        });
        assert_eq!(
            Frame::decode(&long.encode()),
            Err(FrameError::Invalid("chat text too long"))
        );
        let zero_seq = Frame::Chat(ChatMessage {
            id: MessageId([0; 16]),
            seq: 0,
            sent_at_ms: 0,
            text: String::new(),
        });
        assert!(Frame::decode(&zero_seq.encode()).is_err());
        let big = vec![FRAME_FORMAT_VERSION; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            Frame::decode(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn chat_frames_are_told_apart_from_file_frames() {
        let frames = samples();
        assert!(frames[0].is_chat() && frames[1].is_chat());
        let typing = frames.len() - 1;
        assert!(frames[typing].is_chat());
        assert!(frames[2..typing].iter().all(|f| !f.is_chat()));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode(&bytes);
        }

        #[test]
        fn decoding_mutated_frames_never_panics(idx in 0usize..13, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = samples()[idx].encode();
            for (pos, val) in flips {
                let n = bytes.len();
                bytes[pos % n] = val;
            }
            if let Ok(frame) = Frame::decode(&bytes) {
                // Whatever decodes must re-encode to a valid frame.
                prop_assert!(Frame::decode(&frame.encode()).is_ok());
            }
        }

        #[test]
        fn decoding_arbitrary_json_never_panics(text in ".{0,300}") {
            let _ = crate::ClientMessage::from_json(&text);
            let _ = crate::ServerMessage::from_json(&text);
        }
    }
}
