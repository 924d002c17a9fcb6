//! Benchmark (not a test): page-to-page file transfer speed of Parlor
//! against the raw `RTCDataChannel` baseline (`tests/bench/raw-datachannel.html`),
//! side by side in one run, in real headless Chromium on loopback. Run by
//! `cargo xtask bench browser`; results go in BENCHMARKS.md.
//!
//! Four browsers (each its own process, like four machines): two Parlor
//! pages in one room, on the direct path, and two raw pages. Each round
//! moves the same number of bytes once through each pair, in turn, so the
//! machine's noise falls on both alike:
//! - raw: from `bench.send(bytes)` until the receiver has every byte;
//! - Parlor: from the receiver's Accept click until its row says `done`
//!   (every chunk written to OPFS and the BLAKE3 hash verified).
//!
//! Times are the driver's wall clock, polling each receiver every 10 ms.
//!
//! Chat during a transfer: while a Parlor pair moves its file, the sender
//! types a chat message every 100 ms (stamped with the sending moment,
//! `performance.timeOrigin + performance.now()`, one clock for every
//! browser on this machine); the receiver notes when each is shown (a
//! `MutationObserver` on the message list). The same with no transfer
//! gives the idle figure.
//! `PARLOR_BENCH_MB` (default 64) and `PARLOR_BENCH_ROUNDS` (default 5).
//! `PARLOR_BENCH_BEFORE=DIR` adds a third pair served another build of the
//! app (e.g. a copy of `dist/` from before a change), so a change is
//! measured against what it replaces in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use parlor_tests::browser::Page;
use parlor_tests::{Server, random_file};
use serde_json::{Value, json};

/// Bound on one transfer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a receiver is asked whether it is done.
const POLL: Duration = Duration::from_millis(10);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `script` (a JS expression) on `page` until it is `true`; returns
/// when it first was.
async fn until(page: &Page, what: &str, script: &str) -> Result<Instant> {
    let deadline = Instant::now() + TRANSFER_TIMEOUT;
    loop {
        let v = page
            .client
            .execute(&format!("return ({script});"), vec![])
            .await?;
        if v == Value::Bool(true) {
            return Ok(Instant::now());
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Two raw pages with a data channel open between them.
async fn raw_pair() -> Result<(Page, Page)> {
    let html = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/raw-datachannel.html");
    let url = format!("file://{}", html.canonicalize()?.display());
    let (sender, receiver) = (Page::open().await?, Page::open().await?);
    sender.goto(&url).await?;
    receiver.goto(&url).await?;
    let offer = sender
        .client
        .execute("return bench.offer();", vec![])
        .await?;
    let answer = receiver
        .client
        .execute("return bench.answer(arguments[0]);", vec![offer])
        .await?;
    sender
        .client
        .execute("return bench.connect(arguments[0]);", vec![answer])
        .await?;
    Ok((sender, receiver))
}

/// Seconds the raw pair takes to move `bytes`.
async fn raw_round(sender: &Page, receiver: &Page, bytes: usize) -> Result<f64> {
    receiver
        .client
        .execute("bench.received = 0; return true;", vec![])
        .await?;
    let start = Instant::now();
    sender
        .client
        .execute("return bench.send(arguments[0]);", vec![json!(bytes)])
        .await?;
    let end = until(receiver, "raw bytes", &format!("bench.received >= {bytes}")).await?;
    Ok((end - start).as_secs_f64())
}

/// Run once on a receiving page: records how long after its stamp every
/// `chat-bench:STAMP` message was shown, in `window.__latencies` (ms).
const LATENCY_OBSERVER: &str = "window.__latencies = []; \
    new MutationObserver((records) => { \
      const now = performance.timeOrigin + performance.now(); \
      for (const r of records) for (const n of r.addedNodes) { \
        const t = n.querySelector && n.querySelector('.text'); \
        if (t && t.textContent.startsWith('chat-bench:')) \
          window.__latencies.push(now - Number(t.textContent.slice(11))); \
      } \
    }).observe(document.querySelector('ul.messages'), { childList: true }); \
    return true;";

/// Starts, on a sending page, a chat message every 100 ms stamped with
/// the moment it is sent.
const CHAT_TICKER_START: &str = "window.__ticker = setInterval(() => { \
      const input = document.querySelector(\"[aria-label='Message']\"); \
      input.value = 'chat-bench:' + (performance.timeOrigin + performance.now()); \
      document.querySelector(\"[aria-label='Send']\").click(); \
    }, 100); return true;";

const CHAT_TICKER_STOP: &str = "clearInterval(window.__ticker); return true;";

/// The latencies `receiver` recorded since the last call (ms).
async fn take_latencies(receiver: &Page) -> Result<Vec<f64>> {
    let v = receiver
        .client
        .execute(
            "const l = window.__latencies; window.__latencies = []; return l;",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(v)?)
}

/// Chat latencies (ms) from `sender` to `receiver` over `for_how_long`
/// with nothing else going on.
async fn idle_chat(sender: &Page, receiver: &Page, for_how_long: Duration) -> Result<Vec<f64>> {
    sender.client.execute(CHAT_TICKER_START, vec![]).await?;
    tokio::time::sleep(for_how_long).await;
    sender.client.execute(CHAT_TICKER_STOP, vec![]).await?;
    // The last ones still on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    take_latencies(receiver).await
}

/// The `q` quantile (0..=1) of `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// Two Parlor pages in one room, connected directly.
async fn parlor_pair(server: &Server) -> Result<(Page, Page)> {
    let sender = Page::open().await?;
    let link = sender.start_room(&server.base).await?;
    let receiver = Page::open().await?;
    receiver.goto(&link).await?;
    sender.wait_peers_in_state(1, "direct").await?;
    receiver.wait_peers_in_state(1, "direct").await?;
    receiver.client.execute(LATENCY_OBSERVER, vec![]).await?;
    Ok((sender, receiver))
}

/// The JS expression finding the transfer row of `name`.
fn row(name: &str) -> String {
    format!(
        "[...document.querySelectorAll('[data-transfer-id]')].find(e => e.dataset.name === {})",
        json!(name)
    )
}

/// Seconds from the receiver's Accept of `file` until it verified it, with
/// the sender chatting meanwhile.
async fn parlor_round(sender: &Page, receiver: &Page, file: &Path) -> Result<f64> {
    let name = file
        .file_name()
        .context("file name")?
        .to_string_lossy()
        .into_owned();
    sender.send_files(&[file]).await?;
    let row = row(&name);
    until(
        receiver,
        "the offer",
        &format!("(({row}) || {{dataset: {{}}}}).dataset.state === 'offered'"),
    )
    .await?;
    let accept = format!(
        "const b = [...({row}).querySelectorAll('button')].find(b => b.textContent.trim() === 'Accept' \
         || b.getAttribute('aria-label') === 'Accept'); b.click(); return true;"
    );
    let start = Instant::now();
    receiver.client.execute(&accept, vec![]).await?;
    sender.client.execute(CHAT_TICKER_START, vec![]).await?;
    let end = until(
        receiver,
        "the verified file",
        &format!("({row}).dataset.state === 'done'"),
    )
    .await;
    sender.client.execute(CHAT_TICKER_STOP, vec![]).await?;
    Ok((end? - start).as_secs_f64())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let mb = env_or("PARLOR_BENCH_MB", 64);
    let rounds = env_or("PARLOR_BENCH_ROUNDS", 5);
    let bytes = mb * 1024 * 1024;
    let web = parlor_tests::browser::web_dir();
    ensure!(
        web.join("index.html").exists(),
        "build the web app first (trunk build --release)"
    );
    let server = Server::start(&["--web-dir", web.to_str().context("web dir")?]).await?;
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("source.bin");
    random_file(&source, bytes)?;

    let before = match std::env::var("PARLOR_BENCH_BEFORE") {
        Ok(dir) => Some(Server::start(&["--web-dir", &dir]).await?),
        Err(_) => None,
    };

    let raw_pair = raw_pair().await?;
    let mut pairs = vec![("Parlor", parlor_pair(&server).await?)];
    if let Some(before) = &before {
        pairs.push(("Parlor before", parlor_pair(before).await?));
    }
    // One unmeasured round each: SCTP's window and the pages' code warm up.
    raw_round(&raw_pair.0, &raw_pair.1, bytes).await?;
    for (i, (_, (tx, rx))) in pairs.iter().enumerate() {
        let warm = dir.path().join(format!("warm-up-{i}.bin"));
        std::fs::hard_link(&source, &warm)?;
        parlor_round(tx, rx, &warm).await?;
    }

    let mut idle = Vec::new();
    let mut busy = vec![Vec::new(); pairs.len()];
    for (_, (tx, rx)) in &pairs {
        take_latencies(rx).await?; // the warm-up round's
        idle.push(idle_chat(tx, rx, Duration::from_secs(3)).await?);
    }

    let rate = |secs: f64| bytes as f64 / secs / 1e6;
    let mut raw = Vec::new();
    let mut parlor = vec![Vec::new(); pairs.len()];
    for round in 0..rounds {
        let r = raw_round(&raw_pair.0, &raw_pair.1, bytes).await?;
        let mut line = format!("round {round}: raw {:6.1} MB/s", rate(r));
        for (i, (name, (tx, rx))) in pairs.iter().enumerate() {
            let file = dir.path().join(format!("round-{round}-{i}.bin"));
            std::fs::hard_link(&source, &file)?;
            let p = parlor_round(tx, rx, &file).await?;
            busy[i].extend(take_latencies(rx).await?);
            line += &format!(", {name} {:6.1} MB/s ({:.2}x)", rate(p), r / p);
            parlor[i].push(p);
        }
        println!("{line}");
        raw.push(r);
    }
    println!(
        "{mb} MiB page to page, {rounds} rounds, medians: raw data channel {:.1} MB/s",
        rate(median(&raw))
    );
    for ((name, _), times) in pairs.iter().zip(&parlor) {
        let ratios: Vec<f64> = raw.iter().zip(times).map(|(r, p)| r / p).collect();
        println!(
            "  {name}: {:.1} MB/s, {name} / raw {:.2}x (per-round median {:.2}x, {:.2}-{:.2})",
            rate(median(times)),
            median(&raw) / median(times),
            median(&ratios),
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
    }
    for (((name, _), idle), busy) in pairs.iter().zip(&idle).zip(&busy) {
        println!(
            "  {name} chat: idle p50 {:.1} ms, p99 {:.1} ms ({} messages); during the transfers \
             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} messages)",
            quantile(idle, 0.5),
            quantile(idle, 0.99),
            idle.len(),
            quantile(busy, 0.5),
            quantile(busy, 0.99),
            quantile(busy, 1.0),
            busy.len(),
        );
    }
    let (raw_tx, raw_rx) = raw_pair;
    raw_tx.close().await;
    raw_rx.close().await;
    for (_, (tx, rx)) in pairs {
        tx.close().await;
        rx.close().await;
    }
    Ok(())
}
