//! A chaos proxy in front of `parlor-server`: it passes HTTP and the
//! WebSocket through, but in what the server sends to clients it
//! duplicates every binary message (server-relay packets) and swaps every
//! third one with the next, so peers on the server relay see duplicated and
//! reordered frames. Server-to-client frames are unmasked and unfragmented,
//! so they can be cut out of the byte stream by their headers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::proxy::RewritingProxy;

/// Starts the proxy in front of `upstream` (`http://HOST:PORT`); its
/// [`RewritingProxy::changed`] counts the binary messages it duplicated.
pub async fn start(upstream: &str) -> Result<RewritingProxy> {
    RewritingProxy::start(upstream, pipe).await
}

/// The length of the complete frame at the start of `buf`, if it is there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)?;
    let masked = b1 & 0x80 != 0;
    let (len, header) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    let total = header + if masked { 4 } else { 0 } + len;
    (buf.len() >= total).then_some(total)
}

async fn pipe(client: TcpStream, server: TcpStream, duplicated: Arc<AtomicUsize>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut in_frames = false;
    let mut binary_seen = 0usize;
    let mut held: Option<Vec<u8>> = None;
    'read: loop {
        let n = match server_read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        if !in_frames {
            // The HTTP response (and any plain HTTP) passes as is.
            match buf.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) if buf.starts_with(b"HTTP/1.1 101") => {
                    out.extend(buf.drain(..end + 4));
                    in_frames = true;
                }
                _ => {
                    out.append(&mut buf);
                }
            }
        }
        while let Some(len) = in_frames.then(|| frame_len(&buf)).flatten() {
            let frame: Vec<u8> = buf.drain(..len).collect();
            if frame[0] & 0x0f != 0x2 {
                out.extend_from_slice(&frame);
                continue;
            }
            binary_seen += 1;
            duplicated.fetch_add(1, Ordering::Relaxed);
            // Every third binary message waits for the next one (reorder),
            // and every one goes out twice (duplicate).
            if binary_seen.is_multiple_of(3) && held.is_none() {
                held = Some(frame);
                continue;
            }
            out.extend_from_slice(&frame);
            out.extend_from_slice(&frame);
            if let Some(h) = held.take() {
                out.extend_from_slice(&h);
                out.extend_from_slice(&h);
            }
        }
        // A held message does not wait for a next one that may never come.
        if buf.is_empty()
            && let Some(h) = held.take()
        {
            out.extend_from_slice(&h);
            out.extend_from_slice(&h);
        }
        if client_write.write_all(&out).await.is_err() {
            break 'read;
        }
    }
    upstream.abort();
}
