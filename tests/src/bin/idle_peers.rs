//! Benchmark (not a test): what an idle signaling peer costs the server, for
//! `parlor-server` and PeerJS's `peer` server side by side in one run. Run
//! by `cargo xtask bench signaling`; results go in BENCHMARKS.md.
//!
//! For each crowd size and each server, in turn: a fresh server process,
//! its resident memory (RSS) at rest, again once the crowd of idle peers
//! has joined ([`parlor_tests::idle`]: real WebSocket clients on many
//! loopback addresses, Parlor peers in rooms of two, heartbeats on), and
//! again [`AFTER_LEAVING`] after every peer has left. Prints the cost per peer,
//! how much of the crowd's memory the server keeps after they leave, and
//! the Parlor / PeerJS ratio.
//!
//! Usage: `idle_peers [SIZE...]` (default 1000 5000 and as many as the
//! open-file limit allows); PeerJS is skipped when `.tools` has no `peer`
//! package (`cargo xtask bench signaling` installs it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use parlor_tests::idle::{Flavour, crowd, rss_bytes};
use parlor_tests::{Server, first_stdout_line};
use tokio::process::{Child, Command};

/// Time for the server to settle before a reading.
const SETTLE: Duration = Duration::from_secs(2);

/// How long after the crowd left the last reading is taken: allocators give
/// freed memory back after a delay (jemalloc's decay: 10 s dirty, then 10 s
/// muzzy).
const AFTER_LEAVING: Duration = Duration::from_secs(25);

#[tokio::main]
async fn main() -> Result<()> {
    let limit = open_file_limit()?;
    // The benchmark holds one socket per peer too; keep headroom for both.
    let most = limit.saturating_sub(1000);
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("sizes are numbers"))
        .collect::<Result<_>>()?;
    if sizes.is_empty() {
        sizes = vec![1000, 5000, most];
    }
    if let Some(too_big) = sizes.iter().find(|&&n| n > most) {
        bail!("{too_big} peers need more than the open-file limit of {limit} allows ({most})");
    }
    let peerjs = peerjs_script();
    if peerjs.is_none() {
        println!("(PeerJS's server is not installed in .tools: Parlor only)");
    }
    println!("idle signaling peers, open-file limit {limit}:");
    for &size in &sizes {
        let parlor = measure_parlor(size).await?;
        print_row("parlor-server", size, parlor);
        if let Some(script) = &peerjs {
            let base = measure_peerjs(script, size).await?;
            print_row("PeerJS server", size, base);
            println!(
                "  {size:>6} peers: Parlor / PeerJS per peer {:.2}x",
                parlor.per_peer() / base.per_peer()
            );
        }
    }
    Ok(())
}

/// Server memory at rest, with the crowd, and after it left.
#[derive(Debug, Clone, Copy)]
struct Reading {
    peers: usize,
    rest: u64,
    crowd: u64,
    after: u64,
}

impl Reading {
    fn per_peer(&self) -> f64 {
        self.crowd.saturating_sub(self.rest) as f64 / self.peers as f64
    }

    fn retained(&self) -> f64 {
        self.after.saturating_sub(self.rest) as f64
            / self.crowd.saturating_sub(self.rest).max(1) as f64
    }
}

fn print_row(name: &str, size: usize, r: Reading) {
    println!(
        "  {size:>6} peers: {name:14} rest {:7.1} MiB  crowd {:7.1} MiB  per peer {:6.2} KiB  \
         after they left {:7.1} MiB ({:3.0}% of the crowd's memory kept)",
        mib(r.rest),
        mib(r.crowd),
        r.per_peer() / 1024.0,
        mib(r.after),
        r.retained() * 100.0
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn measure_parlor(size: usize) -> Result<Reading> {
    let connections = (size + 100).to_string();
    let rooms = size.div_ceil(2).max(1).to_string();
    let mut server = Server::start(&[
        "--no-turn",
        "--max-connections",
        &connections,
        "--max-rooms",
        &rooms,
    ])
    .await?;
    let pid = server.pid().context("server pid")?;
    let addr: SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .context("server address")?;
    let reading = measure(Flavour::Parlor, pid, addr, size).await;
    server.kill().await;
    reading
}

async fn measure_peerjs(script: &PathBuf, size: usize) -> Result<Reading> {
    let port = free_port()?;
    let mut child = start_peerjs(script, port, size).await?;
    let pid = child.id().context("peerjs pid")?;
    let reading = measure(Flavour::PeerJs, pid, ([127, 0, 0, 1], port).into(), size).await;
    let _ = child.kill().await;
    reading
}

async fn measure(flavour: Flavour, pid: u32, addr: SocketAddr, size: usize) -> Result<Reading> {
    tokio::time::sleep(SETTLE).await;
    let rest = rss_bytes(pid)?;
    let peers = crowd(flavour, addr, size).await?;
    tokio::time::sleep(SETTLE).await;
    let with_crowd = rss_bytes(pid)?;
    peers.leave().await;
    tokio::time::sleep(AFTER_LEAVING).await;
    let after = rss_bytes(pid)?;
    Ok(Reading {
        peers: size,
        rest,
        crowd: with_crowd,
        after,
    })
}

/// PeerJS's server script, if `.tools` has the `peer` package.
fn peerjs_script() -> Option<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/node_modules/peer/dist/bin/peerjs.js");
    script.exists().then_some(script)
}

async fn start_peerjs(script: &PathBuf, port: u16, size: usize) -> Result<Child> {
    let mut child = Command::new("node")
        .arg(script)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--concurrent_limit", &(size + 100).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting node (PeerJS server)")?;
    let line = first_stdout_line(&mut child, "the PeerJS server", Duration::from_secs(20)).await?;
    if !line.contains("Started PeerServer") {
        bail!("unexpected first line from the PeerJS server: {line}");
    }
    Ok(child)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// This process's soft open-file limit (children inherit it).
fn open_file_limit() -> Result<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-file limit in /proc/self/limits")?;
    line.split_whitespace()
        .nth(3)
        .context("malformed limits line")?
        .parse()
        .context("open-file limit is not a number")
}
