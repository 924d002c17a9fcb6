//! A TCP proxy in front of `parlor-server` for fault and attack tests: the
//! client's bytes go to the server unchanged, and the server's bytes go
//! back through a rewriting function (see [`crate::tamper`] and
//! [`crate::chaos`]), which counts what it changed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct RewritingProxy {
    /// `http://127.0.0.1:PORT`, to use instead of the server's base URL.
    pub base: String,
    changed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RewritingProxy {
    /// Proxies to `upstream` (`http://HOST:PORT`); each connection runs
    /// `pipe(client, server, changed)`.
    pub async fn start<F, Fut>(upstream: &str, pipe: F) -> Result<Self>
    where
        F: Fn(TcpStream, TcpStream, Arc<AtomicUsize>) -> Fut + Send + Sync + Copy + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let upstream = upstream
            .strip_prefix("http://")
            .context("upstream must be http://")?
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let changed = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&changed);
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
            changed,
            task,
        })
    }

    /// How many messages the rewriting function changed so far.
    pub fn changed(&self) -> usize {
        self.changed.load(Ordering::Relaxed)
    }
}

impl Drop for RewritingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
