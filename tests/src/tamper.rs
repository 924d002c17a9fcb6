//! A tampering TCP proxy in front of `parlor-server`, playing a malicious
//! signaling server: it passes HTTP and WebSocket traffic through, but in
//! what the server sends to clients it alters every sealed signal (one
//! base64 character after each `"sealed":"`). Server-to-client WebSocket
//! frames are not masked, so the JSON is visible in the byte stream, and
//! swapping one base64 character for another keeps the frame valid.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const MARKER: &[u8] = b"\"sealed\":\"";

/// A running tampering proxy; stops when dropped.
#[derive(Debug)]
pub struct TamperingProxy {
    /// `http://127.0.0.1:PORT`, to use instead of the server's base URL.
    pub base: String,
    altered: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TamperingProxy {
    /// Proxies to `upstream` (`http://HOST:PORT`).
    pub async fn start(upstream: &str) -> Result<Self> {
        let upstream = upstream
            .strip_prefix("http://")
            .context("upstream must be http://")?
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let altered = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&altered);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, count) = (upstream.clone(), Arc::clone(&count));
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        pipe(client, server, count).await;
                    }
                });
            }
        });
        Ok(Self {
            base,
            altered,
            task,
        })
    }

    /// How many sealed signals it altered so far.
    pub fn altered(&self) -> usize {
        self.altered.load(Ordering::Relaxed)
    }
}

impl Drop for TamperingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
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
