//! Local files: preparing a file to send (size, type, hash) and storing a
//! received one safely (sanitized names inside the output directory, a
//! `.part` file until the hash is verified, never overwriting anything).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// A file ready to be offered.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Where it is.
    pub path: PathBuf,
    /// The name offered to the peer (the file name, no directories).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type guessed from the extension.
    pub mime: String,
    /// BLAKE3 of the content.
    pub hash: [u8; 32],
}

/// Reads `path` once to learn its size and hash.
pub fn prepare(path: &Path) -> Result<Outgoing> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file.metadata()?;
    anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(&file)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let mime = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_owned();
    Ok(Outgoing {
        path: path.to_owned(),
        name,
        size: meta.len(),
        mime,
        hash: *hasher.finalize().as_bytes(),
    })
}

/// Longest path component we create, in bytes (common filesystem limit,
/// leaving room for a ` (NNN)` suffix and the `.part` extension).
const MAX_COMPONENT_BYTES: usize = 200;

/// Names Windows reserves for devices, with or without an extension.
const DEVICE_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Turns a peer-supplied name (possibly `folder/sub/file.txt`) into safe
/// relative path components: no `..`, no absolute paths, no drive letters,
/// no separators or control characters inside a component, no device names.
/// Never returns an empty list.
pub fn sanitize_name(name: &str) -> Vec<String> {
    let parts: Vec<String> = name
        .split(['/', '\\'])
        .filter_map(|raw| {
            let cleaned: String = raw
                .chars()
                .map(|c| {
                    if c.is_control() || matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            // Windows forbids trailing dots and spaces; leading spaces only confuse.
            let cleaned = cleaned
                .trim_start()
                .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
                .to_owned();
            if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
                return None;
            }
            let stem = cleaned
                .split('.')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let cleaned = if DEVICE_NAMES.contains(&stem.as_str()) {
                format!("_{cleaned}")
            } else {
                cleaned
            };
            Some(truncate_utf8(&cleaned, MAX_COMPONENT_BYTES).to_owned())
        })
        .collect();
    if parts.is_empty() {
        vec!["file".to_owned()]
    } else {
        parts
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A file being received: data goes to `part_path` until verified.
#[derive(Debug)]
pub struct PartFile {
    /// The open `.part` file.
    pub file: File,
    /// Its path.
    pub part_path: PathBuf,
    /// The path the file should get (a free name is chosen at finalize).
    pub wanted_path: PathBuf,
}

/// Creates `OUT/sanitized-name.part` (or a numbered variant) for writing.
pub fn create_part(out_dir: &Path, offered_name: &str) -> Result<PartFile> {
    let parts = sanitize_name(offered_name);
    let mut wanted = out_dir.to_owned();
    for p in &parts {
        wanted.push(p);
    }
    if let Some(parent) = wanted.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    for n in 0..1000u32 {
        let mut part = wanted.clone().into_os_string();
        if n > 0 {
            part.push(format!(".{n}"));
        }
        part.push(".part");
        let part_path = PathBuf::from(part);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&part_path)
        {
            Ok(file) => {
                return Ok(PartFile {
                    file,
                    part_path,
                    wanted_path: wanted,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", part_path.display()));
            }
        }
    }
    anyhow::bail!("too many partial files named like {}", wanted.display())
}

/// Reopens a `.part` file of an interrupted transfer of a file of `size`
/// bytes, to continue it: returns it with the number of bytes it holds and
/// their BLAKE3 state. A file longer than `size` cannot be a prefix of the
/// offered file and is emptied.
pub fn reopen_part(
    part_path: &Path,
    wanted_path: &Path,
    size: u64,
) -> Result<(PartFile, u64, blake3::Hasher)> {
    use std::io::Read as _;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(part_path)
        .with_context(|| format!("cannot open {}", part_path.display()))?;
    let mut len = file.metadata().context("reading .part file size")?.len();
    if len > size {
        file.set_len(0).context("emptying .part file")?;
        len = 0;
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..want])
            .with_context(|| format!("reading {}", part_path.display()))?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    Ok((
        PartFile {
            file,
            part_path: part_path.to_owned(),
            wanted_path: wanted_path.to_owned(),
        },
        len,
        hasher,
    ))
}

/// Flushes the verified `.part` file and gives it its final name without
/// overwriting anything: `name.ext`, else `name (1).ext`, `name (2).ext`…
pub fn finalize(part: &PartFile) -> Result<PathBuf> {
    part.file.sync_all().context("flushing received file")?;
    let wanted = &part.wanted_path;
    let stem = wanted
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = wanted
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    for n in 0..1000u32 {
        let candidate = if n == 0 {
            wanted.clone()
        } else {
            wanted.with_file_name(format!("{stem} ({n}){ext}"))
        };
        // A hard link fails if the target exists, so nothing is overwritten
        // even if another process creates the same name meanwhile.
        match std::fs::hard_link(&part.part_path, &candidate) {
            Ok(()) => {
                std::fs::remove_file(&part.part_path).context("removing .part file")?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) if !candidate.exists() => {
                // Filesystems without hard links: rename (checked just above).
                std::fs::rename(&part.part_path, &candidate).context("renaming .part file")?;
                return Ok(candidate);
            }
            Err(_) => continue,
        }
    }
    anyhow::bail!("no free name for {}", wanted.display())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hostile_names_stay_inside_the_output_directory() {
        assert_eq!(sanitize_name("../../etc/passwd"), ["etc", "passwd"]);
        assert_eq!(sanitize_name("/etc/shadow"), ["etc", "shadow"]);
        assert_eq!(
            sanitize_name("C:\\Windows\\system32"),
            ["C_", "Windows", "system32"]
        );
        assert_eq!(sanitize_name(".."), ["file"]);
        assert_eq!(sanitize_name(""), ["file"]);
        assert_eq!(sanitize_name("a/./b"), ["a", "b"]);
        assert_eq!(sanitize_name("CON"), ["_CON"]);
        assert_eq!(sanitize_name("nul.txt"), ["_nul.txt"]);
        assert_eq!(sanitize_name("evil\u{0}name\n.txt"), ["evil_name_.txt"]);
        assert_eq!(sanitize_name("trailing. . "), ["trailing"]);
        assert_eq!(
            sanitize_name("dir/sub/photo.jpg"),
            ["dir", "sub", "photo.jpg"]
        );
        let long = "é".repeat(300);
        assert!(sanitize_name(&long)[0].len() <= MAX_COMPONENT_BYTES);
    }

    #[test]
    fn receiving_never_overwrites_and_parts_are_not_final() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"existing").unwrap();
        let part = create_part(dir.path(), "../a.txt").unwrap();
        assert!(part.part_path.to_string_lossy().ends_with(".part"));
        assert!(part.part_path.starts_with(dir.path()));
        let final_path = finalize(&part).unwrap();
        assert_eq!(final_path, dir.path().join("a (1).txt"));
        assert_eq!(
            std::fs::read(dir.path().join("a.txt")).unwrap(),
            b"existing"
        );
        assert!(!part.part_path.exists());
    }

    #[test]
    fn two_parts_with_one_name_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let a = create_part(dir.path(), "x.bin").unwrap();
        let b = create_part(dir.path(), "x.bin").unwrap();
        assert_ne!(a.part_path, b.part_path);
    }
}
