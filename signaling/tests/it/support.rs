//! Test harness: a real server bound to 127.0.0.1:0 and run in-process with
//! `parlor_signaling::run`, WebSocket clients (tokio-tungstenite, plus a raw
//! one that never answers pings or reads unless told), and a tiny HTTP GET.
//! Every wait is bounded by [`STEP`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parlor_protocol::{
    ClientMessage, ErrorCode, IceServer, PROTOCOL_VERSION, PeerId, PeerInfo, RoomId, ServerMessage,
};
use parlor_signaling::{App, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single expected event may take.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test after [`STEP`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Defaults, with a web dir that does not exist (so no `dist/` lying around
/// changes what `/` serves) and no TURN relay (tests that want one turn it
/// on with port 0).
pub fn test_config() -> Config {
    Config {
        web_dir: Some(PathBuf::from("/nonexistent/parlor-web-dir")),
        no_turn: true,
        ..Config::default()
    }
}

/// A fresh random room.
pub fn new_room() -> RoomId {
    RoomId::from_random(rand::random())
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(parlor_signaling::run(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn start_app(app: Arc<App>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(parlor_signaling::serve(listener, app, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A handle on a server running elsewhere (another process) at `addr`.
    pub fn external(addr: SocketAddr) -> Self {
        Self {
            addr,
            stop: None,
            task: None,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A connected client that has not said hello.
    pub async fn client(&self) -> Client {
        let (ws, _) = within(
            "websocket connect",
            tokio_tungstenite::connect_async(self.ws_url()),
        )
        .await
        .unwrap();
        Client { ws }
    }

    /// A client that has joined `room`, its id, and the peers it was told of.
    pub async fn join(&self, room: &RoomId, name: &str) -> (Client, PeerId, Vec<PeerInfo>) {
        let mut client = self.client().await;
        let (id, peers, _) = client.hello(room, name).await;
        (client, id, peers)
    }

    /// Resolves the shutdown future and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        within("run to return", task).await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A signaling client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send(&mut self, msg: &ClientMessage) {
        self.send_text(msg.to_json()).await;
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        within("send", self.ws.send(Message::text(text.into())))
            .await
            .unwrap();
    }

    /// Sends one binary message (a server-relay envelope).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        within("send", self.ws.send(Message::binary(bytes)))
            .await
            .unwrap();
    }

    /// The next binary message (WebSocket pings and pongs are skipped).
    pub async fn recv_binary(&mut self) -> Vec<u8> {
        loop {
            match within("a binary message", self.ws.next()).await {
                Some(Ok(Message::Binary(bytes))) => return bytes.to_vec(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    }

    /// The next signaling message (WebSocket pings and pongs are skipped).
    pub async fn recv(&mut self) -> ServerMessage {
        loop {
            let frame = within("a message", self.ws.next()).await;
            match frame {
                Some(Ok(Message::Text(text))) => return ServerMessage::from_json(&text).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Expects an `error` with `code`; returns its message.
    pub async fn expect_error(&mut self, code: ErrorCode) -> String {
        match self.recv().await {
            ServerMessage::Error { code: got, message } if got == code => message,
            other => panic!("expected a {} error, got {other:?}", code.as_str()),
        }
    }

    /// Sends `hello`; returns the peer id, the peers present and the ICE servers.
    pub async fn hello(
        &mut self,
        room: &RoomId,
        name: &str,
    ) -> (PeerId, Vec<PeerInfo>, Vec<IceServer>) {
        let hello = ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            room: room.clone(),
            name: Some(name.to_owned()),
            resume: None,
        };
        self.send(&hello).await;
        match self.recv().await {
            ServerMessage::Welcome {
                version,
                peer_id,
                peers,
                ice_servers,
                ..
            } => {
                assert_eq!(version, PROTOCOL_VERSION);
                (peer_id, peers, ice_servers)
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// A ping answered by a pong: the connection is up, and everything the
    /// server queued for this client before the pong has been read (so this
    /// doubles as a barrier for "nothing else arrived").
    pub async fn ping_pong(&mut self) {
        self.send(&ClientMessage::Ping).await;
        assert_eq!(self.recv().await, ServerMessage::Pong);
    }

    /// Reads until the server's close frame and returns its code and reason;
    /// then reads on until the connection ends, completing the handshake.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let close = loop {
            match within("a close frame", self.ws.next()).await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    break (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        within("the connection to end", async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        close
    }
}

/// A WebSocket client written by hand: it reads only when asked and never
/// answers pings, to play a dead or slow peer.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// WebSocket opcodes.
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut stream = within("tcp connect", TcpStream::connect(addr))
            .await
            .unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        within("handshake write", stream.write_all(request.as_bytes()))
            .await
            .unwrap();
        let mut client = Self {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(pos) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            client.fill().await;
        };
        let head: Vec<u8> = client.buf.drain(..end).collect();
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = within("raw read", self.stream.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill().await;
        }
        self.buf.drain(..n).collect()
    }

    /// Sends one masked text frame (mask key 0, which leaves the payload as is).
    pub async fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x80 | OP_TEXT];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload);
        within("raw write", self.stream.write_all(&frame))
            .await
            .unwrap();
    }

    /// Reads one (unmasked, server-sent) frame: opcode and payload.
    pub async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let head = self.take(2).await;
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => u16::from_be_bytes(self.take(2).await.try_into().unwrap()) as usize,
            127 => u64::from_be_bytes(self.take(8).await.try_into().unwrap()) as usize,
            n => n as usize,
        };
        (opcode, self.take(len).await)
    }
}

/// `GET path` over a fresh connection; returns the status, headers and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    within("http get", async {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let (status, head, body) = http_exchange(addr, &request).await;
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        (status, head, body)
    })
    .await
}

/// Reads a `parlor-server` process's first stdout line, `parlor-server
/// listening on http://ADDR`, and returns ADDR.
pub async fn listening_addr(stdout: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> SocketAddr {
    use tokio::io::AsyncBufReadExt as _;
    let mut line = String::new();
    within("the listening line", stdout.read_line(&mut line))
        .await
        .unwrap();
    line.trim_end()
        .strip_prefix("parlor-server listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap()
}

/// `METHOD path` without a body over a fresh connection; returns the status,
/// headers and body.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    within("http request", async {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        http_exchange(addr, &request).await
    })
    .await
}

/// Sends `request` over a fresh connection and reads the answer to its end:
/// status, head and body.
async fn http_exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// A tiny HTTP POST without a body, with extra header lines (each ending in
/// `\r\n`); returns the status and the body.
pub async fn http_post(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    within("http post", async {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, _, body) = http_exchange(addr, &request).await;
        (status, body)
    })
    .await
}
