//! Reading picked files without loading them whole: `Blob.slice()` pieces
//! read with `arrayBuffer()`, for hashing and for serving chunk reads.

use wasm_bindgen_futures::JsFuture;
use web_sys::Blob;

use crate::util::{get, js_error};

/// Bytes read per step while hashing: large enough that the per-promise cost
/// vanishes, small enough to keep memory flat for any file size.
pub const HASH_PIECE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads `len` bytes at `offset` of `blob`.
pub async fn read_slice(blob: &Blob, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let end = offset + len as u64;
    let piece = blob
        .slice_with_f64_and_f64(offset as f64, end as f64)
        .map_err(|e| js_error(&e))?;
    let buf = JsFuture::from(piece.array_buffer())
        .await
        .map_err(|e| js_error(&e))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

/// The BLAKE3 hash of `blob`, read piece by piece.
pub async fn hash(blob: &Blob) -> Result<[u8; 32], String> {
    let size = blob.size() as u64;
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(HASH_PIECE_BYTES) as usize;
        let data = read_slice(blob, offset, len).await?;
        if data.len() != len {
            return Err(format!(
                "read {} bytes at {offset}, expected {len}",
                data.len()
            ));
        }
        hasher.update(&data);
        offset += len as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// The name to offer for a picked file: its path inside a picked folder
/// (`webkitRelativePath`, `/`-separated) when there is one, else its name;
/// cut to the protocol's limit at a character boundary.
pub fn offered_name(file: &web_sys::File) -> String {
    let relative = get(file, "webkitRelativePath")
        .as_string()
        .unwrap_or_default();
    let mut name = if relative.is_empty() {
        file.name()
    } else {
        relative
    };
    let max = parlor_protocol::frame::MAX_FILE_NAME_BYTES;
    if name.len() > max {
        let mut end = max;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}
