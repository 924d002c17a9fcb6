//! Harness for Parlor's end-to-end tests: starts the real `parlor-server`
//! binary on a free loopback port and real `parlor` CLI peers, and reads the
//! peers' `--json` event streams.
//!
//! Every wait is bounded by a timeout, and every child process is killed when
//! its handle drops, so a failing test never leaves processes behind.

pub mod browser;
pub mod chaos;
pub mod idle;
pub mod netns;
pub mod nginx;
pub mod pki;
pub mod proxy;
pub mod tamper;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// Default bound on waiting for one event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Held by each end-to-end test for its whole run: every test starts several
/// peers or browsers, and on a two-core machine running them side by side
/// only makes each slower and timing-sensitive. Unit tests elsewhere still
/// run in parallel.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The directory holding the workspace's binaries (same profile as this test).
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test-binary>, or target/<profile>/<bin>
        let exe = std::env::current_exe().expect("test binary path");
        let mut dir = exe.parent().expect("target dir").to_owned();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let release = dir.ends_with("release");
        // Make sure the binaries under test are current (a no-op when they
        // are). They are built as a packager builds them, `cargo build` at
        // the workspace root: every default member's features unified, this
        // test crate's (a second rustls backend among them) included.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        // (Through the root manifest: run from this crate's directory, a
        // plain `cargo build` would select only this crate.)
        let root_manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        cmd.args([
            "build",
            "--quiet",
            "--bins",
            "--manifest-path",
            root_manifest,
        ]);
        if release {
            cmd.arg("--release");
        }
        // Without the variables `cargo test` gives this test binary about
        // its own crate: build scripts that track them (ring's tracks
        // CARGO_MANIFEST_DIR and CARGO_PKG_*) would otherwise see them
        // change between this build and a build from a shell, and rebuild
        // ring and everything above it each time.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
                || name == "CARGO_PRIMARY_PACKAGE"
                || name == "CARGO_TARGET_TMPDIR"
            {
                cmd.env_remove(&*name);
            }
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building parlor binaries failed");
        dir
    })
    .clone()
}

/// The first line `child` (spawned with a piped stdout) prints, within
/// `timeout`; the rest of its stdout is drained in the background so the
/// child never blocks on a full pipe.
pub async fn first_stdout_line(child: &mut Child, what: &str, timeout: Duration) -> Result<String> {
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{what}: no stdout pipe"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(timeout, lines.next_line())
        .await
        .with_context(|| format!("{what} printed nothing within {timeout:?}"))??
        .with_context(|| format!("{what} exited before printing a line"))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(line)
}

/// A running `parlor-server`.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Server {
    /// Starts the server on a free loopback port with extra `args`. Its TURN
    /// relay gets free ports too (`--turn-port 0`), so servers run side by
    /// side.
    pub async fn start(args: &[&str]) -> Result<Self> {
        let mut all = vec!["--listen", "127.0.0.1:0", "--turn-port", "0"];
        all.extend_from_slice(args);
        Self::start_wrapped(&[], &all).await
    }

    /// Starts `WRAPPER... parlor-server ARGS...` with exactly `args` (no
    /// default listen address or ports), e.g. with the wrapper
    /// `ip netns exec NS` to run it inside a network namespace.
    pub async fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Result<Self> {
        let mut child = wrapped_command(wrapper, "parlor-server")
            .args(args)
            .env("PARLOR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting parlor-server")?;
        let line = first_stdout_line(&mut child, "parlor-server", EVENT_TIMEOUT).await?;
        let base = line
            .strip_prefix("parlor-server listening on ")
            .with_context(|| format!("unexpected first line from server: {line}"))?
            .to_owned();
        Ok(Self { child, base })
    }

    /// The signaling WebSocket URL.
    pub fn ws_url(&self) -> String {
        parlor_protocol::ids::websocket_url(&self.base)
    }

    /// The server's process id (to send it signals), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts a new server process on the same address (after [`Self::kill`]:
    /// a server restart as clients see it), with extra `args`.
    pub async fn restart(&mut self, args: &[&str]) -> Result<()> {
        self.kill().await;
        let listen = self
            .base
            .strip_prefix("http://")
            .context("base is not http://")?
            .to_owned();
        let mut all = vec!["--listen", listen.as_str(), "--turn-port", "0"];
        all.extend_from_slice(args);
        // The old socket may linger briefly; retry for a few seconds.
        let mut last = None;
        for _ in 0..20 {
            match Self::start_wrapped(&[], &all).await {
                Ok(server) => {
                    *self = server;
                    return Ok(());
                }
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("restart failed")))
    }
}

/// A running `parlor` CLI with `--json` output.
#[derive(Debug)]
pub struct Peer {
    /// A label for error messages.
    pub label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event seen so far, in order.
    pub history: Vec<Value>,
    /// The peer's own data directory, unless the test gave one.
    _data_dir: Option<tempfile::TempDir>,
}

impl Peer {
    /// Starts `parlor --json ARGS...`.
    pub fn spawn(label: &str, args: &[&str]) -> Result<Self> {
        Self::spawn_wrapped(&[], label, args)
    }

    /// Starts `WRAPPER... parlor --json ARGS...`, e.g. with the wrapper
    /// `ip netns exec NS` to run it inside a network namespace.
    ///
    /// Each peer keeps its state in a fresh data directory of its own,
    /// unless `args` name one with `--data-dir` (to restart a peer where it
    /// stopped).
    pub fn spawn_wrapped(wrapper: &[&str], label: &str, args: &[&str]) -> Result<Self> {
        let data_dir = if args.contains(&"--data-dir") {
            None
        } else {
            Some(tempfile::tempdir()?)
        };
        let mut cmd = wrapped_command(wrapper, "parlor");
        if let Some(dir) = &data_dir {
            cmd.arg("--data-dir").arg(dir.path());
        }
        let mut child = cmd
            .arg("--json")
            .args(["--name", label])
            .args(args)
            .env(
                "PARLOR_LOG",
                std::env::var("PARLOR_TEST_PEER_LOG")
                    .unwrap_or_else(|_| "error,parlor=warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting parlor {args:?}"))?;
        let stdout = child.stdout.take().context("peer stdout")?;
        let stdin = child.stdin.take();
        let (tx, events) = mpsc::unbounded_channel();
        let who = label.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("[{who}] non-JSON stdout line: {line}"),
                }
            }
        });
        Ok(Self {
            label: label.to_owned(),
            child,
            stdin,
            events,
            history: Vec::new(),
            _data_dir: data_dir,
        })
    }

    /// Waits for the first event (seen before or arriving) matching `pred`.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        self.wait_for_within(what, EVENT_TIMEOUT, pred).await
    }

    /// [`Self::wait_for`] with an explicit bound.
    pub async fn wait_for_within(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(v) = self.history.iter().find(|v| pred(v)) {
            return Ok(v.clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) => {
                    self.history.push(v.clone());
                    if pred(&v) {
                        return Ok(v);
                    }
                }
                Ok(None) => bail!(
                    "[{}] exited while waiting for {what}; events: {:?}",
                    self.label,
                    self.history
                ),
                Err(_) => bail!(
                    "[{}] timed out waiting for {what}; events: {:?}",
                    self.label,
                    self.history
                ),
            }
        }
    }

    /// Waits for an event of kind `event`.
    pub async fn wait_event(&mut self, event: &str) -> Result<Value> {
        self.wait_for(event, |v| v["event"] == event).await
    }

    /// The invite link printed by a peer that created a room.
    pub async fn invite(&mut self) -> Result<String> {
        let v = self.wait_event("invite").await?;
        v["link"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("invite without link"))
    }

    /// Starts `parlor send --code --server SERVER FILE` and waits for the
    /// short code it prints.
    pub async fn send_by_code(
        label: &str,
        server: &str,
        file: &std::path::Path,
    ) -> Result<(Self, String)> {
        let file = file.to_str().context("file path is not UTF-8")?;
        let mut sender = Self::spawn(label, &["send", "--code", "--server", server, file])?;
        let code = sender.code().await?;
        Ok((sender, code))
    }

    /// The short code printed by `send --code` / `chat --code`.
    pub async fn code(&mut self) -> Result<String> {
        let v = self.wait_event("code").await?;
        v["code"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("code event without code"))
    }

    /// This peer's id (from its `joined` event).
    pub async fn peer_id(&mut self) -> Result<String> {
        let v = self.wait_event("joined").await?;
        v["peer_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("joined without peer_id"))
    }

    /// Waits until this peer reports `n` WebRTC connections up.
    pub async fn wait_connected(&mut self, n: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while self.count("connected") < n {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) => self.history.push(v),
                Ok(None) => bail!(
                    "[{}] exited with {} connection(s) up; events: {:?}",
                    self.label,
                    self.count("connected"),
                    self.history
                ),
                Err(_) => bail!(
                    "[{}] only {} connection(s) up; events: {:?}",
                    self.label,
                    self.count("connected"),
                    self.history
                ),
            }
        }
        Ok(())
    }

    /// The texts of the chat messages shown so far, in order.
    pub fn texts(&self) -> Vec<String> {
        self.history
            .iter()
            .filter(|v| v["event"] == "message")
            .filter_map(|v| v["text"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until a chat message with exactly `text` is shown.
    pub async fn wait_text(&mut self, text: &str) -> Result<Value> {
        self.wait_for(text, |v| v["event"] == "message" && v["text"] == text)
            .await
    }

    /// How many events of kind `event` were seen so far.
    pub fn count(&self, event: &str) -> usize {
        self.history.iter().filter(|v| v["event"] == event).count()
    }

    /// Types a line on the peer's stdin.
    pub async fn say(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(format!("{text}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Closes stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit, draining its events into `history`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "[{}] did not exit in {timeout:?}; events: {:?}",
                    self.label, self.history
                )
            })??;
        // The reader task ends with stdout; collect what it still holds.
        while let Ok(Some(v)) =
            tokio::time::timeout(Duration::from_secs(2), self.events.recv()).await
        {
            self.history.push(v);
        }
        Ok(status)
    }

    /// Kills the process.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// `WRAPPER... BIN` for the workspace binary `bin` (just `BIN` without a wrapper).
fn wrapped_command(wrapper: &[&str], bin: &str) -> Command {
    let bin = bin_dir().join(bin);
    match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// Writes `len` pseudo-random bytes to `path` and returns their BLAKE3 hash (hex).
pub fn random_file(path: &std::path::Path, len: usize) -> Result<String> {
    use rand::RngCore as _;
    use std::io::Write as _;
    let mut rng = rand::thread_rng();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill_bytes(&mut buf[..n]);
        file.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n;
    }
    file.flush()?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// BLAKE3 of a file on disk (hex).
pub fn hash_file(path: &std::path::Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// `POST path` on the server at `base` (`http://HOST:PORT`) without a body:
/// the status and the body.
pub async fn http_post(base: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::AsyncReadExt as _;
    let authority = base
        .strip_prefix("http://")
        .context("base is not http://")?;
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .context("no HTTP answer")??;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("garbled HTTP answer")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_owned()))
}

/// How long [`transfer`] waits for each peer to finish.
pub const TRANSFER_EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// What [`transfer`] did: both peers (exited, every event in their
/// `history`) and the hashes of the file sent and of the file received.
#[derive(Debug)]
pub struct Transferred {
    /// The `parlor send` peer.
    pub sender: Peer,
    /// The `parlor receive` peer.
    pub receiver: Peer,
    /// BLAKE3 (hex) of the file sent.
    pub sent: String,
    /// BLAKE3 of the file as the receiver left it on disk.
    pub received: String,
}

impl Transferred {
    /// The `path` both peers' `connected` events name (`direct`, `turn`,
    /// `server-relay`), or an error when they differ or one is missing.
    pub async fn path(&mut self) -> Result<String> {
        let mut paths = Vec::new();
        for peer in [&mut self.sender, &mut self.receiver] {
            let connected = peer.wait_event("connected").await?;
            paths.push(connected["path"].as_str().unwrap_or_default().to_owned());
        }
        anyhow::ensure!(paths[0] == paths[1], "the peers disagree: {paths:?}");
        Ok(paths.swap_remove(0))
    }
}

/// The end-to-end tests' file transfer: `parlor send` (`bytes` of
/// pseudo-random data) creates a room on the server at `base`, `parlor
/// receive` opens its invite link; both must exit successfully, and the
/// receiver's `file_received` hash must be the file's. `args` go to both
/// CLIs (e.g. `--ca-cert CA`, `--force-relay turn`); `wrappers` run each
/// (sender, receiver) inside a command prefix (`ip netns exec NS`), empty
/// for none. The caller compares [`Transferred::received`] with
/// [`Transferred::sent`].
pub async fn transfer(
    base: &str,
    args: &[&str],
    wrappers: [&[&str]; 2],
    bytes: usize,
) -> Result<Transferred> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("transfer.bin");
    let sent = random_file(&src, bytes)?;
    let out = dir.path().join("out");
    let src_arg = src.to_str().context("temp path")?;
    let out_arg = out.to_str().context("temp path")?;
    let mut sender = Peer::spawn_wrapped(
        wrappers[0],
        "sender",
        &[&["send", "--server", base, src_arg], args].concat(),
    )?;
    let link = sender.invite().await?;
    anyhow::ensure!(
        link.starts_with(&format!("{base}/r/")),
        "an invite link of another site: {link}"
    );
    let mut receiver = Peer::spawn_wrapped(
        wrappers[1],
        "receiver",
        &[&["receive", &link, "--out", out_arg], args].concat(),
    )?;
    for peer in [&mut receiver, &mut sender] {
        let status = peer.wait_exit(TRANSFER_EXIT_TIMEOUT).await?;
        anyhow::ensure!(
            status.success(),
            "[{}] exited with {status}; events: {:?}",
            peer.label,
            peer.history
        );
    }
    let reported = receiver.wait_event("file_received").await?;
    anyhow::ensure!(
        reported["hash"] == sent.as_str(),
        "the receiver verified another hash: {reported}"
    );
    let received = hash_file(&out.join("transfer.bin"))?;
    Ok(Transferred {
        sender,
        receiver,
        sent,
        received,
    })
}

/// Two `parlor chat` peers (both given `args`, e.g. `--ca-cert CA`) meet
/// in a room on the server at `base` and exchange a message each way, then
/// leave cleanly.
pub async fn chat_both_ways(base: &str, args: &[&str]) -> Result<()> {
    let mut alice = Peer::spawn("alice", &[&["chat", "--server", base], args].concat())?;
    let link = alice.invite().await?;
    anyhow::ensure!(
        link.starts_with(&format!("{base}/r/")),
        "an invite link of another site: {link}"
    );
    let mut bob = Peer::spawn("bob", &[&["chat", link.as_str()], args].concat())?;
    bob.wait_connected(1).await?;
    alice.wait_connected(1).await?;
    alice.say("hello from alice").await?;
    bob.wait_text("hello from alice").await?;
    bob.say("and back from bob").await?;
    alice.wait_text("and back from bob").await?;
    alice.close_stdin();
    bob.close_stdin();
    for peer in [&mut alice, &mut bob] {
        let status = peer.wait_exit(TRANSFER_EXIT_TIMEOUT).await?;
        anyhow::ensure!(status.success(), "[{}] exited with {status}", peer.label);
    }
    Ok(())
}
