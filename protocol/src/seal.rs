//! End-to-end sealing with the room key.
//!
//! The invite link's KEY (after `#`) never reaches the server. Both peers
//! derive purpose-specific keys from it with BLAKE3's key derivation and seal
//! with XChaCha20-Poly1305, so whatever the server carries for them (frames
//! on the server relay, SDP and ICE candidates) is opaque to it and any
//! change is detected on opening.
//!
//! Nonces are 24 bytes: a random 16-byte prefix chosen once per [`Sealer`]
//! plus a 64-bit counter, so two peers holding the same key never reuse a
//! nonce and no per-message randomness is needed.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::ids::RoomKey;

/// Bytes of nonce in front of every sealed message.
pub const NONCE_BYTES: usize = 24;
/// Bytes of authentication tag at the end of every sealed message.
pub const TAG_BYTES: usize = 16;
/// How many bytes sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_BYTES + TAG_BYTES;

/// What a derived key is for; each purpose gets an independent key, so a
/// sealed relay frame can never be passed off as a sealed SDP or vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Peer-to-peer frames carried by the server relay.
    RelayFrames,
    /// SDP offers/answers and ICE candidates carried by signaling.
    Signaling,
}

impl Purpose {
    fn context(self) -> &'static str {
        match self {
            Purpose::RelayFrames => "parlor 2026-11-24 server-relay frames v1",
            Purpose::Signaling => "parlor 2026-11-24 sealed signaling v1",
        }
    }
}

/// Why a sealed message could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Shorter than a nonce and a tag.
    #[error("sealed message is {0} bytes, shorter than its {SEAL_OVERHEAD}-byte nonce and tag")]
    TooShort(usize),
    /// The tag does not match: the message was sealed with another key
    /// (another room's link) or altered on the way.
    #[error("sealed message failed authentication: altered in transit or sealed with another key")]
    Forged,
}

/// A key derived from the room key for one [`Purpose`]. Opens messages;
/// seal with a [`Sealer`].
#[derive(Clone)]
pub struct SealKey {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// Derives the key for `purpose` from the room key.
    pub fn derive(room_key: &RoomKey, purpose: Purpose) -> Self {
        let key = blake3::derive_key(purpose.context(), room_key.as_bytes());
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// Opens `sealed` (nonce, ciphertext, tag), checking it was sealed with
    /// this key and the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(SealError::TooShort(sealed.len()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::Forged)
    }
}

/// Seals messages under one [`SealKey`] with unique nonces.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: SealKey,
    prefix: [u8; 16],
    counter: u64,
}

impl Sealer {
    /// A sealer whose nonces start with `random_prefix`, which the caller
    /// draws from a CSPRNG (the OS, or the browser's `crypto.getRandomValues`).
    pub fn new(key: SealKey, random_prefix: [u8; 16]) -> Self {
        Self {
            key,
            prefix: random_prefix,
            counter: 0,
        }
    }

    /// The key, to open messages with.
    pub fn key(&self) -> &SealKey {
        &self.key
    }

    /// Seals `plaintext`, bound to `aad`: nonce, ciphertext and tag.
    pub fn seal(&mut self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..16].copy_from_slice(&self.prefix);
        nonce[16..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        let ciphertext = self
            .key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Only fails for plaintexts beyond 256 GiB.
            .unwrap_or_default();
        let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> RoomKey {
        RoomKey::from_random([byte; 32])
    }

    #[test]
    fn sealed_messages_open_with_the_same_key_and_aad_only() {
        let mut sealer = Sealer::new(SealKey::derive(&key(1), Purpose::RelayFrames), [7; 16]);
        let sealed = sealer.seal(b"a->b", b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        let same = SealKey::derive(&key(1), Purpose::RelayFrames);
        assert_eq!(same.open(b"a->b", &sealed).unwrap(), b"hello");
        assert_eq!(same.open(b"c->b", &sealed), Err(SealError::Forged));
        let other_room = SealKey::derive(&key(2), Purpose::RelayFrames);
        assert_eq!(other_room.open(b"a->b", &sealed), Err(SealError::Forged));
        let other_purpose = SealKey::derive(&key(1), Purpose::Signaling);
        assert_eq!(other_purpose.open(b"a->b", &sealed), Err(SealError::Forged));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut sealer = Sealer::new(SealKey::derive(&key(3), Purpose::Signaling), [0; 16]);
        let sealed = sealer.seal(b"", b"v=0 o=- sdp");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(
                sealer.key().open(b"", &bad),
                Err(SealError::Forged),
                "byte {i}"
            );
        }
        assert_eq!(
            sealer.key().open(b"", &sealed[..SEAL_OVERHEAD - 1]),
            Err(SealError::TooShort(SEAL_OVERHEAD - 1))
        );
    }

    #[test]
    fn nonces_never_repeat_within_a_sealer() {
        let mut sealer = Sealer::new(SealKey::derive(&key(4), Purpose::RelayFrames), [9; 16]);
        let a = sealer.seal(b"", b"same");
        let b = sealer.seal(b"", b"same");
        assert_ne!(a[..NONCE_BYTES], b[..NONCE_BYTES]);
        assert_ne!(a, b);
    }
}
