//! Nameplates for short codes (`7-apple-river`, see
//! [`parlor_protocol::code`]): `POST /api/code` allocates the smallest free
//! number and a fresh room id for it; `POST /api/code/N/open` hands that
//! room id out **once** and forgets the nameplate. The words of a code never
//! reach the server: only the peers know them, and they prove it to each
//! other with SPAKE2 inside the room.
//!
//! Single use is what limits guessing: whoever opens a nameplate gets one
//! SPAKE2 exchange with the peer waiting in the room, i.e. one guess out of
//! 65 536 word pairs, and the legitimate receiver then finds the code dead
//! (the sender sees the mismatch and makes a new one).
//!
//! Kept in memory only, with a time to live and a cap. Nameplates are local
//! to one server process; a multi-node deployment would need them in the
//! shared backend (there is none yet: [`crate::RoomBackend`] has only the
//! in-memory implementation).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use parlor_protocol::RoomId;

/// Why no nameplate was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameplateError {
    /// `--max-codes` nameplates are waiting to be opened.
    #[error("too many codes are waiting to be used; try again later")]
    Full,
}

#[derive(Debug)]
struct Entry {
    room: RoomId,
    expires: Instant,
}

/// The nameplates waiting to be opened.
#[derive(Debug)]
pub struct Nameplates {
    ttl: Duration,
    max: usize,
    entries: Mutex<BTreeMap<u32, Entry>>,
}

impl Nameplates {
    /// At most `max` nameplates at once, each living `ttl`.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Allocates the smallest free nameplate (from 1) for a fresh room id
    /// made from `room_bytes` (128 random bits, like every room id).
    pub fn allocate(
        &self,
        room_bytes: [u8; 16],
        now: Instant,
    ) -> Result<(u32, RoomId), NameplateError> {
        let mut entries = self.lock();
        entries.retain(|_, e| e.expires > now);
        if entries.len() >= self.max {
            return Err(NameplateError::Full);
        }
        // The keys are sorted: the first gap in 1, 2, 3, ... is free.
        let mut nameplate = 1u32;
        for &taken in entries.keys() {
            if taken != nameplate {
                break;
            }
            nameplate += 1;
        }
        let room = RoomId::from_random(room_bytes);
        entries.insert(
            nameplate,
            Entry {
                room: room.clone(),
                expires: now + self.ttl,
            },
        );
        Ok((nameplate, room))
    }

    /// The room of `nameplate`, once: the nameplate is gone afterwards.
    /// `None` when it is unknown, already opened, or expired.
    pub fn open(&self, nameplate: u32, now: Instant) -> Option<RoomId> {
        let mut entries = self.lock();
        let entry = entries.remove(&nameplate)?;
        (entry.expires > now).then_some(entry.room)
    }

    /// Nameplates waiting now (expired ones may still count until the next
    /// allocation sweeps them).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no nameplate is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nameplates_are_small_single_use_and_reused() {
        let plates = Nameplates::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let (a, room_a) = plates.allocate([1; 16], now).unwrap();
        let (b, _) = plates.allocate([2; 16], now).unwrap();
        let (c, _) = plates.allocate([3; 16], now).unwrap();
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(room_a, RoomId::from_random([1; 16]));
        assert_eq!(plates.open(1, now), Some(room_a));
        assert_eq!(plates.open(1, now), None, "single use");
        assert_eq!(plates.open(9, now), None);
        // The smallest free number comes back.
        assert_eq!(plates.allocate([4; 16], now).unwrap().0, 1);
        assert_eq!(plates.allocate([5; 16], now).unwrap().0, 4);
    }

    #[test]
    fn nameplates_expire_and_are_capped() {
        let plates = Nameplates::new(Duration::from_secs(10), 2);
        let now = Instant::now();
        plates.allocate([1; 16], now).unwrap();
        plates.allocate([2; 16], now).unwrap();
        assert_eq!(
            plates.allocate([3; 16], now),
            Err(NameplateError::Full),
            "capped"
        );
        let later = now + Duration::from_secs(11);
        assert_eq!(plates.open(2, later), None, "expired");
        // Expired ones are swept, so allocation works again.
        assert_eq!(plates.allocate([4; 16], later).unwrap().0, 1);
        assert_eq!(plates.len(), 1);
    }
}
