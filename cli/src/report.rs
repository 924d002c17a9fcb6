//! What the CLI tells its user: human-readable lines and progress bars, or
//! with `--json` one JSON object per line on stdout for scripts and tests.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parlor_protocol::TransferId;
use serde::Serialize;

/// One event, as printed with `--json` (`{"event": "...", ...}`).
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// The invite link of a room we created.
    Invite { link: &'a str },
    /// The short code of a room we created (`send --code`).
    Code {
        code: &'a str,
        /// The server's base URL (for the human hint only).
        #[serde(skip)]
        server: &'a str,
    },
    /// Both sides proved they typed the same code; the room key is agreed.
    CodeMatched,
    /// We joined the room.
    Joined {
        room: &'a str,
        peer_id: &'a str,
        peers: Vec<&'a str>,
    },
    /// A peer arrived.
    PeerJoined { peer_id: &'a str, name: &'a str },
    /// A peer left.
    PeerLeft { peer_id: &'a str, name: &'a str },
    /// A WebRTC connection is up, and how it travels.
    Connected { peer_id: &'a str, path: &'a str },
    /// The WebRTC connection to a peer failed or closed.
    Disconnected { peer_id: &'a str, state: &'a str },
    /// A chat message arrived.
    Message {
        from: &'a str,
        name: &'a str,
        id: String,
        seq: u64,
        sent_at_ms: u64,
        text: &'a str,
    },
    /// One of our messages changed status.
    MessageStatus { id: String, status: &'a str },
    /// A peer offered a file.
    FileOffered {
        peer_id: &'a str,
        transfer: String,
        name: &'a str,
        size: u64,
        mime: &'a str,
    },
    /// Transfer progress (confirmed bytes).
    Progress {
        transfer: String,
        name: &'a str,
        direction: &'a str,
        done: u64,
        total: u64,
        bytes_per_sec: u64,
        eta_ms: Option<u64>,
    },
    /// We sent a file and the receiver verified its hash.
    FileSent {
        transfer: String,
        name: &'a str,
        size: u64,
        hash: String,
        /// Chunk bytes sent, re-sends after a resume included.
        bytes_sent: u64,
    },
    /// We received a file and verified its hash.
    FileReceived {
        transfer: String,
        name: &'a str,
        path: &'a str,
        size: u64,
        hash: String,
    },
    /// The receiver of our files left mid-way: we wait this long for it to
    /// come back (restarted, or back from a network change).
    WaitingForPeer { peer_id: &'a str, seconds: u64 },
    /// An offered file continues from a partial file already on disk.
    Resuming {
        transfer: String,
        name: &'a str,
        path: &'a str,
        offset: u64,
    },
    /// A transfer failed.
    TransferFailed {
        transfer: String,
        name: &'a str,
        reason: String,
    },
    /// Something went wrong.
    Error { message: String },
}

/// Minimum time between two progress reports of one transfer.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Prints events in the chosen format.
#[derive(Debug)]
pub struct Reporter {
    json: bool,
    bars: Option<MultiProgress>,
    active: HashMap<TransferId, (ProgressBar, Instant)>,
}

impl Reporter {
    /// `json`: machine output on stdout; otherwise human output, with
    /// progress bars on stderr when it is a terminal.
    pub fn new(json: bool) -> Self {
        let bars = (!json && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            json,
            bars,
            active: HashMap::new(),
        }
    }

    /// Whether output is JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Reports `event`.
    pub fn emit(&mut self, event: Event<'_>) {
        if self.json {
            if let Ok(line) = serde_json::to_string(&event) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            return;
        }
        match event {
            Event::Invite { link } => {
                println!("{link}");
                self.note("Share this link; waiting for someone to join…");
            }
            Event::Code { code, server } => {
                println!(
                    "Code: {code}  (on the other side: parlor receive {code}, or type it on {}/ in \
                     a browser)",
                    server.trim_end_matches('/')
                );
                self.note("Waiting for someone to use the code…");
            }
            Event::CodeMatched => self.note("The code matched; connecting…"),
            Event::Joined { peers, .. } => self.note(&format!(
                "Joined the room ({} other peer(s) present)",
                peers.len()
            )),
            Event::PeerJoined { name, peer_id } => {
                self.note(&format!("{} joined", display(name, peer_id)))
            }
            Event::PeerLeft { name, peer_id } => {
                self.note(&format!("{} left", display(name, peer_id)))
            }
            Event::Connected { peer_id, path } => {
                self.note(&format!("Connected to {peer_id} ({path})"))
            }
            Event::Disconnected { peer_id, state } => {
                self.note(&format!("Connection to {peer_id}: {state}"))
            }
            Event::Message {
                from, name, text, ..
            } => println!("[{}] {text}", display(name, from)),
            Event::MessageStatus { .. } => {}
            Event::FileOffered { name, size, .. } => {
                self.note(&format!("Receiving {name} ({size} bytes)"))
            }
            Event::Progress { .. } => {}
            Event::FileSent { name, hash, .. } => {
                self.note(&format!("Sent {name} (verified, blake3 {hash})"))
            }
            Event::FileReceived { path, hash, .. } => {
                self.note(&format!("Saved {path} (verified, blake3 {hash})"))
            }
            Event::WaitingForPeer { peer_id, seconds } => self.note(&format!(
                "{peer_id} left before the files were sent; waiting up to {seconds} s for it to come back"
            )),
            Event::Resuming {
                name, offset, path, ..
            } => self.note(&format!(
                "Resuming {name} from byte {offset} already in {path}"
            )),
            Event::TransferFailed { name, reason, .. } => {
                self.note(&format!("Transfer of {name} failed: {reason}"))
            }
            Event::Error { message } => self.note(&format!("error: {message}")),
        }
    }

    /// Reports progress of a transfer, throttled.
    pub fn progress(
        &mut self,
        transfer: TransferId,
        name: &str,
        direction: &'static str,
        p: &parlor_core::Progress,
    ) {
        let now = Instant::now();
        let last = p.done == p.total;
        if let Some(bars) = &self.bars {
            let (bar, _) = self.active.entry(transfer).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(p.total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(format!("{direction} {name}"));
                (bar, now)
            });
            bar.set_position(p.done);
            if last {
                bar.finish();
            }
            return;
        }
        if !self.json {
            return;
        }
        let entry = self
            .active
            .entry(transfer)
            .or_insert((ProgressBar::hidden(), now - PROGRESS_EVERY));
        if !last && now.duration_since(entry.1) < PROGRESS_EVERY {
            return;
        }
        entry.1 = now;
        self.emit(Event::Progress {
            transfer: transfer.to_string(),
            name,
            direction,
            done: p.done,
            total: p.total,
            bytes_per_sec: p.bytes_per_sec as u64,
            eta_ms: p.eta_ms,
        });
    }

    fn note(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

fn display<'a>(name: &'a str, id: &'a str) -> &'a str {
    if name.is_empty() { id } else { name }
}

/// Lower-case hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
