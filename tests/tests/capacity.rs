//! What idle peers cost a real `parlor-server`: a crowd of idle signaling
//! peers (real WebSockets from many loopback addresses, in rooms of two,
//! heartbeats on) takes a few KiB each, and the server gives the memory
//! back after they leave. `cargo xtask bench signaling` measures the same at
//! larger sizes against PeerJS's server (BENCHMARKS.md).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parlor_tests::Server;
use parlor_tests::idle::{Flavour, crowd, rss_bytes};

const PEERS: usize = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn a_crowd_of_idle_peers_costs_a_few_kib_each_and_the_memory_returns_when_they_leave() {
    let _serial = parlor_tests::exclusive().await;
    let server = Server::start(&["--no-turn"]).await.unwrap();
    let pid = server.pid().unwrap();
    let addr = server.base.trim_start_matches("http://").parse().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rest = rss_bytes(pid).unwrap();

    let peers = crowd(Flavour::Parlor, addr, PEERS).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_crowd = rss_bytes(pid).unwrap();
    let per_peer = with_crowd.saturating_sub(rest) / PEERS as u64;
    // Release builds take ~9 KiB (BENCHMARKS.md); this debug build's
    // futures are larger. 141 KiB each before the read buffer was cut.
    assert!(
        per_peer < 32 * 1024,
        "{per_peer} bytes per idle peer ({rest} at rest, {with_crowd} with {PEERS} peers)"
    );
    assert_eq!(peers.len(), PEERS, "every peer is still connected");

    peers.leave().await;
    // jemalloc hands freed pages back after its decay time (10 + 10 s).
    let crowd_bytes = with_crowd.saturating_sub(rest);
    let mut kept = u64::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        kept = rss_bytes(pid).unwrap().saturating_sub(rest);
        if kept < crowd_bytes / 2 {
            break;
        }
    }
    assert!(
        kept < crowd_bytes / 2,
        "after the crowd left the server still holds {kept} of its {crowd_bytes} bytes"
    );
}
