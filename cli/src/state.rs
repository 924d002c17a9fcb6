//! What a `parlor` process keeps on disk about a room, so that a restart
//! loses nothing: its resume token (the same peer id when it comes back),
//! its chat state (unacknowledged outbox, sequence numbers, recently seen
//! ids — a [`ChatSnapshot`]) and the partial files it was receiving.
//!
//! Invariant: the resume token and the chat state live in one file and are
//! written together (atomically: a temporary file renamed over the old one),
//! so a peer never comes back under its old id with fresh sequence numbers.
//!
//! Layout: `DATA_DIR/rooms/ROOMHASH-SLOT.json`, readable by the user only.
//! `ROOMHASH` is a BLAKE3 hash of the room id (the file name does not give
//! the room away); `SLOT` tells apart several processes in one room from the
//! same data directory (a sender and a receiver on one machine): each holds
//! an exclusive lock on `ROOMHASH-SLOT.lock` while it runs and takes the
//! first slot nobody holds. Files older than [`STATE_RETENTION`] are removed
//! when a room is opened.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use parlor_core::ChatSnapshot;
use parlor_protocol::RoomId;
use serde::{Deserialize, Serialize};

/// Format version of the state file.
pub const STATE_VERSION: u32 = 1;
/// Most processes of one room sharing a data directory.
const MAX_SLOTS: u32 = 16;
/// State files untouched this long are removed (the chat retention window
/// is one hour; a partial file is still on disk and named in the message
/// that reported the failure).
pub const STATE_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The state file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The resume token of our last `welcome` in this room.
    pub resume_token: Option<String>,
    /// The chat session, as [`parlor_core::ChatSession::snapshot`] left it.
    pub chat: Option<ChatSnapshot>,
    /// Files being received, to resume after a restart.
    #[serde(default)]
    pub partials: Vec<Partial>,
}

/// A file being received into a `.part` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// BLAKE3 of the whole file, hex (from the offer).
    pub hash: String,
    /// Its size in bytes (from the offer).
    pub size: u64,
    /// Where its bytes are being written.
    pub part_path: PathBuf,
    /// The name it gets once verified.
    pub wanted_path: PathBuf,
}

/// A room's state file, locked for this process.
#[derive(Debug)]
pub struct RoomState {
    path: PathBuf,
    /// Held (locked) while we run.
    _lock: File,
    /// What was on disk when we started (cleared of the chat part once the
    /// driver takes it).
    pub saved: Saved,
}

/// The default data directory (`~/.local/share/parlor` on Linux).
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "parlor").map(|d| d.data_dir().to_owned())
}

impl RoomState {
    /// Opens (or starts) the state of `room` under `data_dir`, in the first
    /// slot no other process holds. A damaged or foreign file is set aside
    /// (renamed `.bad`) and we start afresh, as a new peer.
    pub fn open(data_dir: &Path, room: &RoomId) -> Result<Self> {
        let dir = data_dir.join("rooms");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        remove_stale(&dir);
        let room_hash =
            blake3::derive_key("parlor 2026 cli room state file", room.as_str().as_bytes());
        let stem: String = room_hash[..12].iter().map(|b| format!("{b:02x}")).collect();
        for slot in 0..MAX_SLOTS {
            let lock_path = dir.join(format!("{stem}-{slot}.lock"));
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .with_context(|| format!("cannot open {}", lock_path.display()))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(err)) => {
                    return Err(err)
                        .with_context(|| format!("cannot lock {}", lock_path.display()));
                }
            }
            let path = dir.join(format!("{stem}-{slot}.json"));
            let saved = match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                    Ok(saved) if saved.version == STATE_VERSION => saved,
                    Ok(_) | Err(_) => {
                        tracing::warn!(path = %path.display(), "unreadable state file set aside");
                        let _ = std::fs::rename(&path, path.with_extension("json.bad"));
                        Saved::default()
                    }
                },
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Saved::default(),
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot read {}", path.display()));
                }
            };
            return Ok(Self {
                path,
                _lock: lock,
                saved,
            });
        }
        anyhow::bail!(
            "more than {MAX_SLOTS} parlor processes are in this room from {}",
            data_dir.display()
        )
    }

    /// Writes `saved` atomically (temporary file, then rename). Not synced
    /// to the disk: it is written after every chat message, and surviving a
    /// crash of the process (not of the machine) is what it is for.
    pub fn write(&self, saved: &Saved) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(saved).context("encoding the room state")?;
        let mut options = OpenOptions::new();
        options.create(true).truncate(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))
    }
}

/// Removes state files (and their locks) nobody touched for
/// [`STATE_RETENTION`] and nobody holds.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STATE_RETENTION);
        if !old {
            continue;
        }
        let lock_path = path.with_extension("lock");
        let Ok(lock) = OpenOptions::new().write(true).open(&lock_path) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&lock_path);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn room() -> RoomId {
        RoomId::from_random([7; 16])
    }

    #[test]
    fn state_round_trips_and_a_second_process_gets_its_own_slot() {
        let dir = tempfile::tempdir().unwrap();
        let first = RoomState::open(dir.path(), &room()).unwrap();
        assert!(first.saved.resume_token.is_none());
        let saved = Saved {
            version: STATE_VERSION,
            resume_token: Some("token".into()),
            chat: None,
            partials: vec![],
        };
        first.write(&saved).unwrap();
        // While the first runs, a second process of the room starts empty.
        let second = RoomState::open(dir.path(), &room()).unwrap();
        assert!(second.saved.resume_token.is_none());
        drop(second);
        drop(first);
        let again = RoomState::open(dir.path(), &room()).unwrap();
        assert_eq!(again.saved.resume_token.as_deref(), Some("token"));
    }

    #[test]
    fn a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let state = RoomState::open(dir.path(), &room()).unwrap();
        let path = state.path.clone();
        drop(state);
        std::fs::write(&path, b"{not json").unwrap();
        let state = RoomState::open(dir.path(), &room()).unwrap();
        assert!(state.saved.resume_token.is_none());
        assert!(path.with_extension("json.bad").exists());
    }
}
