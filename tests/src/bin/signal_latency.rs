//! Benchmark (not a test): how long the second of two signaling messages
//! sent back to back takes from one peer to another through a real
//! `parlor-server` on loopback, with `TCP_NODELAY` on its connections (the
//! default) and without (`--no-tcp-nodelay`), side by side in one run. Run
//! by `cargo xtask bench`; results go in BENCHMARKS.md.
//!
//! Two WebSocket clients (Nagle off on their own sockets, so only the
//! server's side differs) join one room on each server. Each round, B sends
//! A one sealed `signal` (both sides trickle candidates, so the traffic is
//! interactive), then A sends two to B at once; the time runs from just
//! before A's first send to B's receipt of the second. Rounds alternate
//! between the servers and are 20 ms apart.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use parlor_protocol::{
    ClientMessage, IceCandidate, PROTOCOL_VERSION, PeerId, PeerSignal, RoomId, RoomKey,
    ServerMessage, SignalCipher,
};
use parlor_tests::Server;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const ROUNDS: usize = 200;
const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<()> {
    let nodelay = Server::start(&[]).await?;
    let nagle = Server::start(&["--no-tcp-nodelay"]).await?;
    let mut pairs = [pair(&nodelay).await?, pair(&nagle).await?];
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS * 2 {
        let which = round % 2;
        times[which].push(two_signals(&mut pairs[which]).await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("second of two back-to-back signals, A -> server -> B, {ROUNDS} rounds each:");
    for (name, t) in ["TCP_NODELAY (default)", "Nagle (--no-tcp-nodelay)"]
        .iter()
        .zip(&mut times)
    {
        t.sort_by(f64::total_cmp);
        println!(
            "  {name:26} median {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms",
            t[t.len() / 2],
            t[t.len() * 99 / 100],
            t[t.len() - 1]
        );
    }
    let p99 = |t: &Vec<f64>| t[t.len() * 99 / 100];
    println!(
        "  p99 ratio nodelay / nagle: {:.3}",
        p99(&times[0]) / p99(&times[1])
    );
    Ok(())
}

/// Two clients in one room: A sends, B receives.
struct Pair {
    a: Ws,
    a_id: PeerId,
    b: Ws,
    b_id: PeerId,
    cipher: SignalCipher,
}

/// Two clients in one fresh room on `server`.
async fn pair(server: &Server) -> Result<Pair> {
    let room = RoomId::from_random(rand::random());
    let (a, a_id) = join(server, &room, "a").await?;
    let (b, b_id) = join(server, &room, "b").await?;
    let key = RoomKey::from_random([7; 32]);
    Ok(Pair {
        a,
        a_id,
        b,
        b_id,
        cipher: SignalCipher::new(&key, [1; 16]),
    })
}

/// Reads what waits on `ws` (presence, pings) without blocking; answers pings.
async fn drain(ws: &mut Ws) -> Result<()> {
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(1), ws.next()).await {
        if let Message::Text(text) = msg?
            && let Ok(ServerMessage::Ping) = serde_json::from_str(&text)
        {
            pong(ws).await?;
        }
    }
    Ok(())
}

async fn pong(ws: &mut Ws) -> Result<()> {
    ws.send(Message::text(serde_json::to_string(&ClientMessage::Pong)?))
        .await?;
    Ok(())
}

async fn join(server: &Server, room: &RoomId, name: &str) -> Result<(Ws, PeerId)> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(server.ws_url(), None, true).await?;
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        room: room.clone(),
        name: Some(name.into()),
        resume: None,
    };
    ws.send(Message::text(serde_json::to_string(&hello)?))
        .await?;
    loop {
        if let ServerMessage::Welcome { peer_id, .. } = next(&mut ws).await? {
            return Ok((ws, peer_id));
        }
    }
}

async fn next(ws: &mut Ws) -> Result<ServerMessage> {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .context("no message in time")?
            .context("socket closed")??;
        if let Message::Text(text) = msg {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

/// One round: milliseconds until B has the second of two signals.
async fn two_signals(pair: &mut Pair) -> Result<f64> {
    drain(&mut pair.a).await?;
    drain(&mut pair.b).await?;
    let Pair {
        a,
        a_id,
        b,
        b_id,
        cipher,
    } = pair;
    let mut frames = Vec::new();
    for i in 0..2 {
        let signal = PeerSignal::Candidate {
            candidate: IceCandidate {
                candidate: format!("candidate:{i} 1 udp 2122260223 192.0.2.1 5000{i} typ host"),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            },
        };
        let msg = ClientMessage::Signal {
            to: b_id.clone(),
            sealed: cipher.seal(a_id, b_id, &signal),
        };
        frames.push(Message::text(serde_json::to_string(&msg)?));
    }
    // B answers first, as in a trickle exchange (both sides send
    // candidates): interactive traffic, for which receivers delay ACKs.
    let answer = ClientMessage::Signal {
        to: a_id.clone(),
        sealed: cipher.seal(b_id, a_id, &PeerSignal::Answer { sdp: "v=0".into() }),
    };
    b.send(Message::text(serde_json::to_string(&answer)?))
        .await?;
    loop {
        match next(a).await? {
            ServerMessage::Signal { .. } => break,
            ServerMessage::Ping => pong(a).await?,
            _ => {}
        }
    }
    let start = Instant::now();
    for frame in frames {
        a.send(frame).await?;
    }
    let mut got = 0;
    while got < 2 {
        match next(b).await? {
            ServerMessage::Signal { .. } => got += 1,
            ServerMessage::Ping => pong(b).await?,
            ServerMessage::Error { message, .. } => bail!("server: {message}"),
            _ => {}
        }
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}
