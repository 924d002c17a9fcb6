//! Short codes typed by hand, like `7-apple-river`, and the password-
//! authenticated key exchange (SPAKE2) that turns one into a room key.
//!
//! A code is `NAMEPLATE-WORD-WORD`: the nameplate is a small number the
//! server hands out (`POST /api/code`) and maps, once, to a room id
//! (`POST /api/code/N/open`); the two words come from [`WORDS`] (256 words,
//! so 16 bits) and never reach the server. Both peers run SPAKE2 over
//! `pake` signaling messages ([`PakeMessage`]) with the words as the
//! password, derive the room key from the shared secret, and prove to each
//! other that they hold the same key before anything else is sent
//! ([`PakeSession`]). A wrong guess costs an attacker the nameplate (it is
//! single use), so one code allows one guess out of 65 536.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::ids::{PeerId, RoomId, RoomKey};

/// The word list: 256 short, distinct, lowercase English words, sorted (so a
/// word's index is found by binary search). A code's two words carry 16 bits.
pub const WORDS: [&str; 256] = [
    "acid", "acorn", "alien", "alpha", "amber", "ankle", "apple", "apron", "arrow", "aspen",
    "atlas", "bacon", "badge", "bagel", "baker", "banjo", "barn", "basil", "beach", "beard",
    "bench", "berry", "bison", "blade", "boat", "boot", "bread", "broom", "brush", "bucket",
    "buddy", "cabin", "cable", "cactus", "camel", "candy", "canoe", "canvas", "carrot", "castle",
    "cedar", "chalk", "cherry", "chess", "chili", "cider", "clay", "cliff", "clock", "cloud",
    "clover", "coast", "cobra", "cocoa", "coffee", "comet", "coral", "cotton", "couch", "crane",
    "crayon", "creek", "crown", "curry", "daisy", "delta", "denim", "donut", "dove", "dragon",
    "drum", "eagle", "earth", "easel", "echo", "elbow", "ember", "falcon", "farm", "feast", "fern",
    "ferry", "fiddle", "finch", "flame", "flute", "foam", "forest", "fossil", "fox", "frog",
    "frost", "fudge", "galaxy", "garden", "garlic", "gecko", "ginger", "glass", "globe", "glove",
    "goat", "goose", "grape", "gravel", "guitar", "gull", "hammer", "harbor", "heron", "honey",
    "horse", "husky", "igloo", "iris", "island", "ivory", "jacket", "jaguar", "jazz", "jelly",
    "jewel", "juice", "jungle", "kayak", "kettle", "kite", "kiwi", "koala", "ladder", "lava",
    "lemon", "lens", "lily", "lime", "linen", "lion", "lizard", "llama", "lotus", "magnet",
    "mango", "maple", "marble", "meadow", "melon", "mint", "mirror", "monkey", "moon", "moose",
    "moss", "mouse", "muffin", "napkin", "nectar", "needle", "nest", "nickel", "noodle", "oasis",
    "ocean", "olive", "onion", "opal", "orange", "orbit", "otter", "oyster", "paddle", "panda",
    "parrot", "pasta", "peach", "peanut", "pearl", "pebble", "pepper", "piano", "pickle", "pigeon",
    "pilot", "pine", "pizza", "planet", "plum", "pocket", "pony", "poppy", "potato", "prism",
    "puzzle", "quail", "quartz", "quilt", "rabbit", "radar", "radio", "raft", "raven", "reef",
    "rhino", "ribbon", "rice", "river", "robin", "rocket", "rose", "ruby", "saddle", "salad",
    "salmon", "satin", "scarf", "shell", "silver", "sketch", "sled", "snail", "snow", "sofa",
    "spoon", "squid", "stamp", "stone", "storm", "sugar", "swan", "tango", "teapot", "tiger",
    "toast", "tomato", "topaz", "torch", "tulip", "tuna", "turtle", "urchin", "valley", "velvet",
    "violin", "vortex", "wagon", "walnut", "walrus", "whale", "wheat", "willow", "window",
    "wizard", "wolf", "yarn", "yogurt", "zebra", "zinc",
];

/// Longest nameplate accepted when parsing (the server allocates the
/// smallest free one, so real ones stay short).
pub const MAX_NAMEPLATE: u32 = 999_999;

/// BLAKE3 `derive_key` context of the room key made from a code.
const ROOM_KEY_CONTEXT: &str = "parlor 2026 short-code room key";
/// BLAKE3 `derive_key` context of the key-confirmation MAC key.
const CONFIRM_KEY_CONTEXT: &str = "parlor 2026 short-code key confirmation";
/// Prefix of the SPAKE2 identity (followed by the room id).
const IDENTITY_PREFIX: &[u8] = b"parlor-code:";

/// Longest `body` of a `pake` signaling message (base64url characters).
pub const MAX_PAKE_BODY_CHARS: usize = 256;

/// A short code: `NAMEPLATE-WORD-WORD`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShortCode {
    /// The number the server maps to a room (once).
    pub nameplate: u32,
    /// Two words of [`WORDS`], lowercase: the password.
    pub words: [String; 2],
}

/// Why a string is not a valid [`ShortCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not `NUMBER-WORD-WORD`.
    #[error("a code looks like 7-apple-river: a number and two words, joined by '-'")]
    Format,
    /// The number is not a valid nameplate.
    #[error("the number in a code must be between 1 and {MAX_NAMEPLATE}")]
    Nameplate,
    /// A word that is not in the word list (a typo?).
    #[error("{0:?} is not one of the code words; check the spelling")]
    UnknownWord(String),
}

impl ShortCode {
    /// Parses a code: case-insensitive, surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<Self, CodeError> {
        let text = text.trim().to_ascii_lowercase();
        let mut parts = text.split('-');
        let (Some(number), Some(first), Some(second), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CodeError::Format);
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeError::Format);
        }
        let nameplate = number
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_NAMEPLATE).contains(n))
            .ok_or(CodeError::Nameplate)?;
        let word = |w: &str| {
            if w.is_empty() || !w.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(CodeError::Format);
            }
            word_index(w)
                .map(|i| WORDS[usize::from(i)].to_owned())
                .ok_or_else(|| CodeError::UnknownWord(w.chars().take(32).collect()))
        };
        Ok(Self {
            nameplate,
            words: [word(first)?, word(second)?],
        })
    }

    /// A code for `nameplate` with two words picked by two random bytes
    /// (supplied by the caller: this crate has no RNG).
    pub fn random(nameplate: u32, random: [u8; 2]) -> Self {
        Self {
            nameplate,
            words: random.map(|b| WORDS[usize::from(b)].to_owned()),
        }
    }

    /// Whether `text` has the shape of a code (`^\d+-[a-z]+-[a-z]+$` after
    /// trimming, any case) rather than, say, an invite link. The words may
    /// still be unknown: [`Self::parse`] says so.
    pub fn looks_like_code(text: &str) -> bool {
        let text = text.trim();
        let mut parts = text.split('-');
        let (Some(number), Some(a), Some(b), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        !number.is_empty()
            && number.bytes().all(|c| c.is_ascii_digit())
            && [a, b]
                .iter()
                .all(|w| !w.is_empty() && w.bytes().all(|c| c.is_ascii_alphabetic()))
    }

    /// The SPAKE2 password: the two words joined by `-` (the nameplate is
    /// not secret and is bound through the room id instead).
    fn password(&self) -> String {
        format!("{}-{}", self.words[0], self.words[1])
    }
}

impl fmt::Display for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.nameplate, self.words[0], self.words[1])
    }
}

impl std::str::FromStr for ShortCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The index of `word` in [`WORDS`].
pub fn word_index(word: &str) -> Option<u8> {
    WORDS
        .binary_search(&word)
        .ok()
        .and_then(|i| u8::try_from(i).ok())
}

/// The body of a `pake` signaling message: postcard, then base64url.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PakeMessage {
    /// The SPAKE2 message (33 bytes for Ed25519).
    Start(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Key confirmation: `keyed_hash(confirm_key, "confirm" || sender id)`.
    Confirm([u8; 32]),
}

/// Why a [`PakeMessage`] body could not be read, or the exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PakeError {
    /// Longer than [`MAX_PAKE_BODY_CHARS`], not base64url, or not a
    /// [`PakeMessage`].
    #[error("malformed code-exchange message")]
    Malformed,
    /// The other side's SPAKE2 message was invalid.
    #[error("the other side's code-exchange message was invalid")]
    BadStart,
    /// A message out of order (e.g. a confirmation before the start).
    #[error("code-exchange message out of order")]
    OutOfOrder,
    /// The other side derived another key: it typed another code (or is
    /// someone guessing).
    #[error("the code did not match: check it and try again (codes work once)")]
    Mismatch,
}

impl PakeMessage {
    /// Encodes the message as a signaling `body`.
    pub fn encode(&self) -> String {
        // Serializing these plain types into a Vec cannot fail.
        URL_SAFE_NO_PAD.encode(postcard::to_allocvec(self).unwrap_or_default())
    }

    /// Decodes a signaling `body`, bounded by [`MAX_PAKE_BODY_CHARS`].
    pub fn decode(body: &str) -> Result<Self, PakeError> {
        if !is_pake_body(body) {
            return Err(PakeError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| PakeError::Malformed)?;
        match postcard::from_bytes::<Self>(&bytes) {
            Ok(msg) if postcard::to_allocvec(&msg).is_ok_and(|b| b.len() == bytes.len()) => Ok(msg),
            _ => Err(PakeError::Malformed),
        }
    }
}

/// Whether `body` may be the body of a `pake` message: 1 to
/// [`MAX_PAKE_BODY_CHARS`] base64url characters (what the server checks).
pub fn is_pake_body(body: &str) -> bool {
    (1..=MAX_PAKE_BODY_CHARS).contains(&body.len())
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A random-number generator for SPAKE2 made from 32 random bytes the
/// caller supplies (BLAKE3 in XOF mode: a stream cipher keyed by the seed),
/// so this crate needs no RNG of its own and builds for wasm32 unchanged.
struct SeededRng(blake3::OutputReader);

impl SeededRng {
    fn new(seed: [u8; 32]) -> Self {
        Self(
            blake3::Hasher::new_derive_key("parlor 2026 short-code spake2 rng")
                .update(&seed)
                .finalize_xof(),
        )
    }
}

impl rand_core::RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for SeededRng {}

enum Phase {
    /// Our SPAKE2 message is out; waiting for theirs.
    Started(Spake2<Ed25519Group>),
    /// Keys derived and our confirmation sent; waiting for theirs.
    Keyed {
        room_key: RoomKey,
        confirm_key: [u8; 32],
    },
    /// Confirmed, or failed: nothing more to do.
    Over,
}

/// One side of the code exchange with one peer. Feed it the peer's
/// [`PakeMessage`]s in order; it answers with what to send and, once the
/// peer proved it holds the same key, the room key.
pub struct PakeSession {
    phase: Phase,
    me: PeerId,
    peer: PeerId,
}

impl fmt::Debug for PakeSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Started(_) => "started",
            Phase::Keyed { .. } => "keyed",
            Phase::Over => "over",
        };
        f.debug_struct("PakeSession")
            .field("phase", &phase)
            .field("me", &self.me)
            .field("peer", &self.peer)
            .finish()
    }
}

/// What to do after [`PakeSession::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PakeStep {
    /// Send this to the peer and wait for its next message.
    Send(PakeMessage),
    /// The peer holds the same key: the room key.
    Done(RoomKey),
}

impl PakeSession {
    /// Starts the exchange between `me` and `peer` in `room` for `code`;
    /// `seed` must be 32 fresh random bytes. Returns the session and the
    /// [`PakeMessage::Start`] to send to `peer`.
    pub fn start(
        code: &ShortCode,
        room: &RoomId,
        me: PeerId,
        peer: PeerId,
        seed: [u8; 32],
    ) -> (Self, PakeMessage) {
        let mut identity = IDENTITY_PREFIX.to_vec();
        identity.extend_from_slice(room.as_str().as_bytes());
        let (spake, msg) = Spake2::<Ed25519Group>::start_symmetric_with_rng(
            &Password::new(code.password().as_bytes()),
            &Identity::new(&identity),
            SeededRng::new(seed),
        );
        (
            Self {
                phase: Phase::Started(spake),
                me,
                peer,
            },
            PakeMessage::Start(msg),
        )
    }

    /// The peer this session talks to.
    pub fn peer(&self) -> &PeerId {
        &self.peer
    }

    /// Handles the peer's next message. Any error ends the session.
    pub fn receive(&mut self, msg: PakeMessage) -> Result<PakeStep, PakeError> {
        match (std::mem::replace(&mut self.phase, Phase::Over), msg) {
            (Phase::Started(spake), PakeMessage::Start(theirs)) => {
                let secret = spake.finish(&theirs).map_err(|_| PakeError::BadStart)?;
                let room_key = RoomKey::from_random(blake3::derive_key(ROOM_KEY_CONTEXT, &secret));
                let confirm_key = blake3::derive_key(CONFIRM_KEY_CONTEXT, &secret);
                let ours = confirmation(&confirm_key, &self.me);
                self.phase = Phase::Keyed {
                    room_key,
                    confirm_key,
                };
                Ok(PakeStep::Send(PakeMessage::Confirm(ours)))
            }
            (
                Phase::Keyed {
                    room_key,
                    confirm_key,
                },
                PakeMessage::Confirm(theirs),
            ) => {
                // blake3::Hash compares in constant time.
                let expected = blake3::Hash::from_bytes(confirmation(&confirm_key, &self.peer));
                if expected == blake3::Hash::from_bytes(theirs) {
                    Ok(PakeStep::Done(room_key))
                } else {
                    Err(PakeError::Mismatch)
                }
            }
            _ => Err(PakeError::OutOfOrder),
        }
    }
}

/// `keyed_hash(confirm_key, "confirm" || sender)`.
fn confirmation(confirm_key: &[u8; 32], sender: &PeerId) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(confirm_key);
    hasher.update(b"confirm");
    hasher.update(sender.0.as_bytes());
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn room() -> RoomId {
        RoomId::from_random([5; 16])
    }

    fn peer(id: &str) -> PeerId {
        PeerId(id.into())
    }

    /// Runs the exchange between two sides; each side's result.
    fn exchange(a: &str, b: &str) -> (Result<RoomKey, PakeError>, Result<RoomKey, PakeError>) {
        let code_a = ShortCode::parse(a).unwrap();
        let code_b = ShortCode::parse(b).unwrap();
        let (mut sa, start_a) = PakeSession::start(&code_a, &room(), peer("a"), peer("b"), [1; 32]);
        let (mut sb, start_b) = PakeSession::start(&code_b, &room(), peer("b"), peer("a"), [2; 32]);
        // Every message crosses the wire.
        let start_a = PakeMessage::decode(&start_a.encode()).unwrap();
        let start_b = PakeMessage::decode(&start_b.encode()).unwrap();
        let PakeStep::Send(confirm_a) = sa.receive(start_b).unwrap() else {
            panic!("expected a confirmation")
        };
        let PakeStep::Send(confirm_b) = sb.receive(start_a).unwrap() else {
            panic!("expected a confirmation")
        };
        let done = |s: &mut PakeSession, m: PakeMessage| match s.receive(m)? {
            PakeStep::Done(key) => Ok(key),
            PakeStep::Send(_) => panic!("expected the end"),
        };
        (
            done(&mut sa, PakeMessage::decode(&confirm_b.encode()).unwrap()),
            done(&mut sb, PakeMessage::decode(&confirm_a.encode()).unwrap()),
        )
    }

    #[test]
    fn the_same_code_gives_both_sides_the_same_key() {
        let (a, b) = exchange("7-apple-river", " 7-APPLE-River\n");
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b);
        // And another run (fresh randomness) another key.
        let code = ShortCode::parse("7-apple-river").unwrap();
        let (mut s1, m1) = PakeSession::start(&code, &room(), peer("a"), peer("b"), [3; 32]);
        let (mut s2, m2) = PakeSession::start(&code, &room(), peer("b"), peer("a"), [4; 32]);
        let (PakeStep::Send(c1), PakeStep::Send(c2)) =
            (s1.receive(m2).unwrap(), s2.receive(m1).unwrap())
        else {
            panic!()
        };
        let (PakeStep::Done(k1), PakeStep::Done(k2)) =
            (s1.receive(c2).unwrap(), s2.receive(c1).unwrap())
        else {
            panic!()
        };
        assert_eq!(k1, k2);
        assert_ne!(k1, a);
    }

    #[test]
    fn different_words_fail_the_confirmation_on_both_sides() {
        let (a, b) = exchange("7-apple-river", "7-apple-robin");
        assert_eq!(a, Err(PakeError::Mismatch));
        assert_eq!(b, Err(PakeError::Mismatch));
        let (a, b) = exchange("7-apple-river", "7-river-apple");
        assert_eq!(a, Err(PakeError::Mismatch));
        assert_eq!(b, Err(PakeError::Mismatch));
    }

    #[test]
    fn another_room_gives_another_key() {
        let code = ShortCode::parse("3-acid-zinc").unwrap();
        let (mut sa, ma) = PakeSession::start(&code, &room(), peer("a"), peer("b"), [1; 32]);
        let other = RoomId::from_random([6; 16]);
        let (mut sb, mb) = PakeSession::start(&code, &other, peer("b"), peer("a"), [2; 32]);
        let (PakeStep::Send(ca), PakeStep::Send(cb)) =
            (sa.receive(mb).unwrap(), sb.receive(ma).unwrap())
        else {
            panic!()
        };
        assert_eq!(sa.receive(cb), Err(PakeError::Mismatch));
        assert_eq!(sb.receive(ca), Err(PakeError::Mismatch));
    }

    #[test]
    fn a_reflected_confirmation_is_refused() {
        let code = ShortCode::parse("3-acid-zinc").unwrap();
        let (mut sa, ma) = PakeSession::start(&code, &room(), peer("a"), peer("b"), [1; 32]);
        let (mut sb, _) = PakeSession::start(&code, &room(), peer("b"), peer("a"), [2; 32]);
        // The attacker bounces a's own start and confirmation back to it.
        let PakeStep::Send(ca) = sa.receive(ma.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(sa.receive(ca), Err(PakeError::Mismatch));
        // Out of order, and bad SPAKE2 messages.
        assert_eq!(
            sb.receive(PakeMessage::Confirm([0; 32])),
            Err(PakeError::OutOfOrder)
        );
        let (mut sc, _) = PakeSession::start(&code, &room(), peer("c"), peer("a"), [2; 32]);
        assert_eq!(
            sc.receive(PakeMessage::Start(vec![1, 2, 3])),
            Err(PakeError::BadStart)
        );
    }

    #[test]
    fn codes_parse_and_display() {
        let code = ShortCode::parse("  7-Apple-RIVER ").unwrap();
        assert_eq!(code.nameplate, 7);
        assert_eq!(code.words, ["apple".to_owned(), "river".to_owned()]);
        assert_eq!(code.to_string(), "7-apple-river");
        assert_eq!("7-apple-river".parse::<ShortCode>().unwrap(), code);
        for b in 0..=255u8 {
            let code = ShortCode::random(42, [b, 255 - b]);
            assert_eq!(ShortCode::parse(&code.to_string()).unwrap(), code);
            assert_eq!(word_index(&code.words[0]), Some(b));
        }
    }

    #[test]
    fn bad_codes_say_why() {
        assert_eq!(
            ShortCode::parse("7-apple-rivr"),
            Err(CodeError::UnknownWord("rivr".into()))
        );
        for bad in [
            "",
            "7",
            "7-apple",
            "apple-river",
            "7-apple-river-x",
            "-apple-river",
            "7--river",
            "7-app1e-river",
            "x7-apple-river",
        ] {
            assert_eq!(ShortCode::parse(bad), Err(CodeError::Format), "{bad:?}");
        }
        assert_eq!(ShortCode::parse("0-apple-river"), Err(CodeError::Nameplate));
        assert_eq!(
            ShortCode::parse("99999999999-apple-river"),
            Err(CodeError::Nameplate)
        );
        assert!(ShortCode::looks_like_code("12-Apple-rivr"));
        assert!(!ShortCode::looks_like_code("http://x/r/abc#def"));
        assert!(!ShortCode::looks_like_code("12-apple"));
    }

    #[test]
    fn the_word_list_is_sorted_distinct_and_easy_to_type() {
        assert!(WORDS.windows(2).all(|w| w[0] < w[1]));
        for w in WORDS {
            assert!((3..=6).contains(&w.len()), "{w}");
            assert!(w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
        }
    }

    #[test]
    fn pake_bodies_are_bounded_and_validated() {
        let start = PakeMessage::Start(vec![7; 33]);
        let body = start.encode();
        assert!(body.len() <= MAX_PAKE_BODY_CHARS);
        assert_eq!(PakeMessage::decode(&body).unwrap(), start);
        let confirm = PakeMessage::Confirm([9; 32]);
        assert_eq!(PakeMessage::decode(&confirm.encode()).unwrap(), confirm);
        for bad in ["", "!!!", "AAAA", &"A".repeat(MAX_PAKE_BODY_CHARS + 1)] {
            assert_eq!(
                PakeMessage::decode(bad),
                Err(PakeError::Malformed),
                "{bad:?}"
            );
        }
        // Trailing bytes after a valid message are refused too.
        let mut bytes = postcard::to_allocvec(&confirm).unwrap();
        bytes.push(0);
        assert_eq!(
            PakeMessage::decode(&URL_SAFE_NO_PAD.encode(bytes)),
            Err(PakeError::Malformed)
        );
    }
}
