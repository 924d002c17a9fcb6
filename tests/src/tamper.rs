//! A tampering TCP proxy in front of `parlor-server`, playing a malicious
//! signaling server: it passes HTTP and WebSocket traffic through, but in
//! what the server sends to clients it alters every sealed signal (one
//! base64 character after each `"sealed":"`). Server-to-client WebSocket
//! frames are not masked, so the JSON is visible in the byte stream, and
//! swapping one base64 character for another keeps the frame valid.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::proxy::RewritingProxy;

const MARKER: &[u8] = b"\"sealed\":\"";

/// Starts the proxy in front of `upstream` (`http://HOST:PORT`); its
/// [`RewritingProxy::changed`] counts the sealed signals it altered.
pub async fn start(upstream: &str) -> Result<RewritingProxy> {
    RewritingProxy::start(upstream, pipe).await
}

async fn pipe(client: TcpStream, server: TcpStream, altered: Arc<AtomicUsize>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let mut at = 0;
        while let Some(pos) = find(&chunk[at..], MARKER) {
            let i = at + pos + MARKER.len();
            if let Some(c) = chunk.get_mut(i) {
                *c = if *c == b'A' { b'B' } else { b'A' };
                altered.fetch_add(1, Ordering::Relaxed);
            }
            at = i;
        }
        if client_write.write_all(chunk).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
