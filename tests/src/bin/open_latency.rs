//! Benchmark (not a test): how long from opening an invite link in a fresh
//! page until that page has a data channel open to the peer already in the
//! room, in real headless Chromium against a real `parlor-server` on
//! loopback. Run by `cargo xtask bench`; results go in BENCHMARKS.md.
//!
//! Each round navigates a second browser to the invite link and polls (every
//! 5 ms) until its peer entry shows a connected state; the time is the page's
//! own `performance.now()` at that moment, i.e. measured from navigation
//! start. The first round loads the app cold; later ones come from cache.

use std::time::Duration;

use anyhow::{Context as _, Result};
use parlor_tests::Server;
use parlor_tests::browser::Page;

const ROUNDS: usize = 7;

#[tokio::main]
async fn main() -> Result<()> {
    let web = parlor_tests::browser::web_dir();
    anyhow::ensure!(
        web.join("index.html").exists(),
        "build the web app first (trunk build --release)"
    );
    let server = Server::start(&["--web-dir", web.to_str().context("web dir")?]).await?;
    let host = Page::open().await?;
    let link = host.start_room(&server.base).await?;

    let guest = Page::open().await?;
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        guest.goto("about:blank").await?;
        host.wait_js(
            "guest gone",
            "document.querySelectorAll('li[data-peer-id]').length === 0",
            Duration::from_secs(30),
        )
        .await?;
        guest.goto(&link).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let ms = loop {
            let v = guest
                .client
                .execute(
                    "return document.querySelector('li[data-peer-id][data-state=direct], li[data-peer-id][data-state=turn], li[data-peer-id][data-state=server-relay]') ? performance.now() : null;",
                    vec![],
                )
                .await?;
            if let Some(ms) = v.as_f64() {
                break ms;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no connection"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        println!(
            "round {round}: {ms:7.1} ms from opening the link to an open data channel{}",
            if round == 0 { " (cold cache)" } else { "" }
        );
        times.push(ms);
    }
    let mut warm = times[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    println!(
        "cold: {:.1} ms; warm median of {}: {:.1} ms (min {:.1}, max {:.1})",
        times[0],
        warm.len(),
        warm[warm.len() / 2],
        warm[0],
        warm[warm.len() - 1]
    );
    host.close().await;
    guest.close().await;
    Ok(())
}
