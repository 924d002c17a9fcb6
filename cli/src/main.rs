//! `parlor`: the native Parlor peer. Chats and sends files with browsers and
//! other CLIs over WebRTC data channels, speaking the same protocol
//! (`parlor-protocol`) and driving the same state machines (`parlor-core`).
//!
//! Modules: [`code`] (short codes: nameplates and the SPAKE2 phase),
//! [`signal`] (WebSocket to the server), [`rtc`] (webrtc-rs peer
//! connections), [`room`] (the driver loop), [`files`] (hashing, safe names,
//! `.part` files), [`report`] (human / `--json` output), [`state`] (what
//! survives a restart: resume token, chat outbox, partial files), [`tls`]
//! (https/wss: webpki roots plus `--ca-cert`).

mod code;
mod files;
mod report;
mod room;
mod rtc;
mod signal;
mod state;
mod tls;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use parlor_protocol::{InviteLink, RoomId, RoomKey, ShortCode};

use crate::report::{Event, Reporter};
use crate::room::{Mode, PathPolicy, Room, RoomAccess};

/// Chat and send files directly between peers (browsers or CLIs) over WebRTC.
#[derive(Debug, Parser)]
#[command(name = "parlor", version)]
struct Cli {
    /// Print one JSON object per line on stdout for each event, for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// Display name shown to the other peers.
    #[arg(long, global = true, env = "PARLOR_NAME", default_value = "")]
    name: String,
    /// Log filter for diagnostics on stderr (e.g. `debug`, `parlor=trace`).
    #[arg(
        long,
        global = true,
        env = "PARLOR_LOG",
        default_value = "error,parlor=warn"
    )]
    log: String,
    /// Send everything through a relay: `turn` uses only TURN relay
    /// candidates (hides your address from peers); `server` carries every
    /// frame over the signaling WebSocket, sealed with the room key (for
    /// networks where only the server's HTTP port is reachable). Without
    /// it, a peer falls back to the server relay by itself when WebRTC
    /// cannot connect.
    #[arg(long, global = true, value_enum, value_name = "RELAY")]
    force_relay: Option<ForceRelay>,
    /// Where to keep what survives a restart (per room: the peer identity,
    /// unacknowledged chat messages, files being received). Default: the
    /// user's data directory (e.g. ~/.local/share/parlor).
    #[arg(long, global = true, env = "PARLOR_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep nothing on disk: a restart comes back as a new peer.
    #[arg(long, global = true)]
    ephemeral: bool,
    /// Also trust the certificate authorities in FILE (PEM, one or more
    /// certificates) for https/wss servers, e.g. a private CA; the public
    /// web roots are always trusted.
    #[arg(long, global = true, env = "PARLOR_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// What `--force-relay` forces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ForceRelay {
    /// Only TURN relay candidates (ICE transport policy `relay`).
    Turn,
    /// Only the parlor-server relay over its WebSocket.
    Server,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a room, print its invite link (or a short code), and send
    /// FILEs to whoever joins.
    Send {
        /// Parlor server to use.
        #[arg(long, env = "PARLOR_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Print a short code to type on the other side (like
        /// `7-apple-river`, single use) instead of an invite link.
        #[arg(long)]
        code: bool,
        /// Files to send.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Chunk payload size in bytes (for benchmarks; the default was chosen by measurement).
        #[arg(long, hide = true)]
        chunk_size: Option<usize>,
        /// Flow-control high watermark in bytes (for benchmarks).
        #[arg(long, hide = true)]
        high_watermark: Option<u64>,
        /// Flow-control low watermark in bytes (for benchmarks).
        #[arg(long, hide = true)]
        low_watermark: Option<u64>,
    },
    /// Join a room by invite link or short code and save the files offered there.
    Receive {
        /// The invite link (`http(s)://HOST/r/ROOM#KEY`) or a short code
        /// (`7-apple-river`, used on `--server`).
        invite: String,
        /// Directory to write files into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Parlor server to use for a short code.
        #[arg(long, env = "PARLOR_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Chat line by line on stdin/stdout; creates a room when no link or
    /// code is given.
    Chat {
        /// The invite link or short code to join.
        invite: Option<String>,
        /// Parlor server to use when creating a room or using a code.
        #[arg(long, env = "PARLOR_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// When creating a room: print a short code instead of an invite link.
        #[arg(long)]
        code: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut report = Reporter::new(cli.json);
    // TURN (and https) need rustls's crypto backend; how the binary was
    // built must not decide whether one is found.
    let _ = rustls::crypto::ring::default_provider().install_default();
    report_task_panics(cli.json);
    match run(cli, &mut report).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report.emit(Event::Error {
                message: format!("{err:#}"),
            });
            ExitCode::FAILURE
        }
    }
}

/// A panic anywhere, a tokio task included, is reported like any other
/// error (as a JSON `error` event with `--json`) and ends the run with a
/// failure: a task must never die in silence while the rest carries on
/// without it.
fn report_task_panics(json: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        Reporter::new(json).emit(Event::Error {
            message: format!("internal error, stopping: {info}"),
        });
        std::process::exit(70);
    }));
}

async fn run(cli: Cli, report: &mut Reporter) -> Result<()> {
    let policy = match cli.force_relay {
        None => PathPolicy::Any,
        Some(ForceRelay::Turn) => PathPolicy::TurnOnly,
        Some(ForceRelay::Server) => PathPolicy::ServerOnly,
    };
    let tls = tls::client_config(cli.ca_cert.as_deref())?;
    let mut config = parlor_core::TransferConfig::default();
    let (mode, access) = match cli.command {
        Command::Send {
            server,
            code,
            files,
            chunk_size,
            high_watermark,
            low_watermark,
        } => {
            config.chunk_size = chunk_size.unwrap_or(config.chunk_size);
            config.high_watermark = high_watermark.unwrap_or(config.high_watermark);
            config.low_watermark = low_watermark.unwrap_or(config.low_watermark);
            let mut queue = VecDeque::new();
            let mut seen = HashSet::new();
            for path in files {
                if seen.insert(path.clone()) {
                    queue.push_back(files::prepare(&path)?);
                }
            }
            (
                Mode::Send {
                    queue,
                    target: None,
                    active: false,
                },
                Access::create(server, code),
            )
        }
        Command::Receive {
            invite,
            out,
            server,
        } => {
            // Checked before anything is sent: a typo must not use up the code.
            let access = Access::join(&invite, server)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            (
                Mode::Receive {
                    out_dir: out,
                    received: 0,
                    failed: 0,
                    senders: HashSet::new(),
                },
                access,
            )
        }
        Command::Chat {
            invite: Some(invite),
            server,
            ..
        } => (Mode::Chat, Access::join(&invite, server)?),
        Command::Chat {
            invite: None,
            server,
            code,
        } => (Mode::Chat, Access::create(server, code)),
    };
    // Where to go: the room, and its key or the code to derive it from.
    let (base, room, secret) = match access {
        Access::Link { link, created } => (link.base, link.room, Secret::Key(link.key, created)),
        Access::NewCode { server } => {
            let (nameplate, room) = code::create(&server, &tls).await?;
            let code = ShortCode::random(nameplate, rand::random());
            (server, room, Secret::Code(code, true))
        }
        Access::Code { server, code } => {
            let room = code::open(&server, &tls, &code).await?;
            (server, room, Secret::Code(code, false))
        }
    };
    let base = base.trim_end_matches('/').to_owned();
    let ws_url = parlor_protocol::ids::websocket_url(&base);
    let store = if cli.ephemeral {
        None
    } else {
        open_state(cli.data_dir.or_else(state::default_data_dir), &room, report)
    };
    let (chat, resume) = restore_chat(store.as_ref(), report);
    let (mut signaling, joined) =
        signal::Signaling::join(&ws_url, &tls, &room, &cli.name, resume.as_deref()).await?;
    if policy == PathPolicy::TurnOnly && !rtc::has_usable_turn(&joined.ice_servers) {
        anyhow::bail!(
            "--force-relay turn: the server offers no TURN relay this peer can use \
             (a turn: URL over UDP with credentials)"
        );
    }
    match &secret {
        Secret::Key(key, true) => {
            let link = InviteLink {
                base: base.clone(),
                room: room.clone(),
                key: key.clone(),
            };
            report.emit(Event::Invite {
                link: &link.to_string(),
            });
        }
        Secret::Code(code, true) => report.emit(Event::Code {
            code: &code.to_string(),
            server: &base,
        }),
        _ => {}
    }
    let peers: Vec<&str> = joined.peers.iter().map(|p| p.id.0.as_str()).collect();
    report.emit(Event::Joined {
        room: room.as_str(),
        peer_id: &joined.peer_id.0,
        peers,
    });
    let key = match secret {
        Secret::Key(key, _) => key,
        Secret::Code(code, _) => {
            match code::exchange(&mut signaling, &joined, &code, &room).await {
                Ok(key) => {
                    report.emit(Event::CodeMatched);
                    key
                }
                Err(err) => {
                    signaling.close().await;
                    return Err(err);
                }
            }
        }
    };
    let json = report.is_json();
    let access = RoomAccess {
        ws_url,
        tls,
        room,
        name: cli.name.clone(),
        key,
    };
    let room = Room::start(
        mode,
        config,
        policy,
        access,
        std::mem::replace(report, Reporter::new(json)),
        room::Persisted { store, chat },
        (signaling, joined),
    )
    .await?;
    room.run().await
}

/// The room's state file in `data_dir`, or `None` (with a warning) when
/// there is no data directory or it cannot be used: the peer then runs as
/// with `--ephemeral`.
fn open_state(
    data_dir: Option<PathBuf>,
    room: &RoomId,
    report: &mut Reporter,
) -> Option<state::RoomState> {
    let Some(dir) = data_dir else {
        report.emit(Event::Error {
            message: "no data directory (set --data-dir): nothing survives a restart".into(),
        });
        return None;
    };
    match state::RoomState::open(&dir, room) {
        Ok(store) => Some(store),
        Err(err) => {
            report.emit(Event::Error {
                message: format!("{err:#}; nothing survives a restart"),
            });
            None
        }
    }
}

/// The chat session to start with (carried over from the state file) and
/// the resume token to join with. The token is used only together with the
/// chat state it was saved with: a peer must not come back under its old id
/// with fresh sequence numbers.
fn restore_chat(
    store: Option<&state::RoomState>,
    report: &mut Reporter,
) -> (parlor_core::ChatSession, Option<String>) {
    let fresh = parlor_core::ChatSession::new();
    let Some(saved) = store.map(|s| &s.saved) else {
        return (fresh, None);
    };
    let (Some(token), Some(snapshot)) = (&saved.resume_token, &saved.chat) else {
        return (fresh, None);
    };
    match parlor_core::ChatSession::new().restore(snapshot.clone(), 0, room::unix_ms()) {
        Ok(chat) => (chat, Some(token.clone())),
        Err(err) => {
            report.emit(Event::Error {
                message: format!("{err}; joining as a new peer"),
            });
            (fresh, None)
        }
    }
}

/// How the command gets into its room.
enum Access {
    /// An invite link (`created`: a fresh room of ours).
    Link { link: InviteLink, created: bool },
    /// A fresh short code from `server`.
    NewCode { server: String },
    /// A short code typed by the user, on `server`.
    Code { server: String, code: ShortCode },
}

impl Access {
    /// A room of our own on `server`, with a link or (`code`) a short code.
    fn create(server: String, code: bool) -> Self {
        if code {
            Self::NewCode { server }
        } else {
            Self::Link {
                link: new_room(&server),
                created: true,
            }
        }
    }

    /// What the user gave us: a short code (`7-apple-river`, on `server`)
    /// or an invite link.
    fn join(invite: &str, server: String) -> Result<Self> {
        if ShortCode::looks_like_code(invite) {
            let code = ShortCode::parse(invite)?;
            return Ok(Self::Code { server, code });
        }
        Ok(Self::Link {
            link: InviteLink::parse(invite)?,
            created: false,
        })
    }
}

/// The room key, or the code it is derived from; `true`: we created it
/// (and print it).
enum Secret {
    Key(RoomKey, bool),
    Code(ShortCode, bool),
}

/// A fresh room on `server` with 128 random bits of room id and 256 of key.
fn new_room(server: &str) -> InviteLink {
    InviteLink {
        base: server.trim_end_matches('/').to_owned(),
        room: RoomId::from_random(rand::random()),
        key: RoomKey::from_random(rand::random()),
    }
}
