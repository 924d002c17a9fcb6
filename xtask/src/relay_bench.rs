//! `cargo xtask bench relay`: relayed file-transfer throughput on loopback,
//! three relays side by side in one run.
//!
//! - **embedded**: `parlor-server`'s own TURN relay (webrtc-rs `turn`), with
//!   `--turn-allow-private` (both allocations are on 127.0.0.1) and a
//!   bandwidth cap far above what loopback carries;
//! - **coturn**: Debian's `turnserver` on a free loopback port, no bandwidth
//!   limits, with `parlor-server --no-turn --turn-url ... --turn-secret ...`
//!   handing the peers TURN REST credentials for it;
//! - **server relay**: sealed frames over `parlor-server`'s WebSocket
//!   (`--force-relay server`), with an equally large `--relay-max-bandwidth`.
//!
//! The TURN variants use `parlor --force-relay turn` peers, so ICE may only
//! pair relay candidates. Every run starts fresh processes and sends the
//! same pseudo-random file; the time runs from the receiver's `connected`
//! event to its `file_received` event. A run counts only if every
//! `connected` event names the expected path (`turn`, or `server-relay`) and
//! the received file equals the source byte for byte. Variants run
//! interleaved (A B C, A B C, ...), so machine noise spreads evenly, and are
//! compared as ratios. The CPU time the relay process and the two peers used
//! during the transfer comes from `/proc`.
//!
//! Environment: `PARLOR_RELAY_BENCH_MB` (default 64) and
//! `PARLOR_RELAY_BENCH_ROUNDS` (default 10: a round takes about 15 s, and on
//! a busy 2-core machine single runs of one relay vary by a factor of two,
//! so three rounds cannot tell 15% apart).

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{Guard, cargo, median, project_root, run_checked, write_pseudo_random};

/// The TURN REST secret shared by `parlor-server` and coturn.
const SECRET: &str = "parlor-relay-bench";
/// Bytes per second for the relays' caps: 1 GB/s, far above what a
/// loopback relay carries here, i.e. no cap.
const NO_CAP: &str = "1000000000";
/// Bound on waiting for the sender's invite link and for coturn to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the receiver connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one transfer once connected.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// Clock ticks per second in `/proc/PID/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Embedded,
    Coturn,
    ServerRelay,
}

const VARIANTS: [Variant; 3] = [Variant::Embedded, Variant::Coturn, Variant::ServerRelay];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Self::Embedded => "embedded TURN (webrtc-rs turn)",
            Self::Coturn => "coturn 4.6 (Debian)",
            Self::ServerRelay => "server relay (WebSocket)",
        }
    }

    /// `--force-relay` value of the peers.
    fn force(self) -> &'static str {
        match self {
            Self::Embedded | Self::Coturn => "turn",
            Self::ServerRelay => "server",
        }
    }

    /// The `path` every `connected` event must name.
    fn path(self) -> &'static str {
        match self {
            Self::Embedded | Self::Coturn => "turn",
            Self::ServerRelay => "server-relay",
        }
    }
}

/// One successful run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    mib_per_sec: f64,
    /// CPU seconds of the relaying process (parlor-server or turnserver)
    /// during the transfer.
    relay_cpu: f64,
    /// CPU seconds of both peers during the transfer.
    peers_cpu: f64,
    /// UDP datagrams dropped at the relay's sockets (receive buffer full).
    relay_drops: u64,
    /// UDP datagrams dropped at the peers' sockets.
    peers_drops: u64,
}

/// What every run shares.
#[derive(Debug)]
struct Bench {
    bin: PathBuf,
    turnserver: PathBuf,
    dir: PathBuf,
    src: PathBuf,
    mib: usize,
}

/// Entry point of `cargo xtask bench relay`.
pub fn run() -> Result<()> {
    let turnserver = ensure_coturn()?;
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "parlor-signaling",
        "-p",
        "parlor-cli",
        "--bins",
    ]))?;
    let mib: usize = env_or("PARLOR_RELAY_BENCH_MB", 64);
    let rounds: usize = env_or("PARLOR_RELAY_BENCH_ROUNDS", 10);
    ensure!(mib > 0 && rounds > 0, "nothing to measure");
    let dir = std::env::temp_dir().join(format!("parlor-relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("payload.bin");
    write_pseudo_random(&src, mib << 20)?;
    let bench = Bench {
        bin: project_root().join("target/release"),
        turnserver,
        dir,
        src,
        mib,
    };

    println!(
        "relayed loopback transfer, {mib} MiB, {rounds} interleaved rounds of {}",
        VARIANTS.map(Variant::label).join(" / ")
    );
    let mut results: Vec<Vec<Option<Sample>>> = vec![Vec::new(); VARIANTS.len()];
    let mut hash: Option<String> = None;
    let mut failures = 0;
    for round in 0..rounds {
        for (i, &variant) in VARIANTS.iter().enumerate() {
            match bench.run_once(variant, round, &mut hash) {
                Ok(s) => {
                    println!(
                        "  round {:>2} {:<30} {:7.1} MiB/s  CPU-s relay {:4.1} peers {:4.1}  \
                         UDP drops relay {:>5} peers {:>5}",
                        round + 1,
                        variant.label(),
                        s.mib_per_sec,
                        s.relay_cpu,
                        s.peers_cpu,
                        s.relay_drops,
                        s.peers_drops
                    );
                    results[i].push(Some(s));
                }
                Err(err) => {
                    println!(
                        "  round {:>2} {:<30} FAILED: {err:#}",
                        round + 1,
                        variant.label()
                    );
                    failures += 1;
                    results[i].push(None);
                }
            }
        }
    }
    print_table(&bench, rounds, &results);
    let _ = std::fs::remove_dir_all(&bench.dir);
    ensure!(failures == 0, "{failures} relay bench runs failed");
    Ok(())
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `turnserver` binary; installs Debian's coturn when it is missing and
/// this is a Debian-like system where we are root, else says what to do.
fn ensure_coturn() -> Result<PathBuf> {
    let find = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("turnserver"))
            .find(|path| path.is_file())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = Path::new("/usr/bin/apt-get").exists();
    if !(root && apt) {
        bail!(
            "the relay bench needs coturn's `turnserver`, which is not installed: \
             install it (Debian/Ubuntu: `sudo apt-get install coturn`) and run again"
        );
    }
    let install = || {
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "coturn"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        run_checked(Command::new("apt-get").arg("update"))?;
        install()?;
    }
    find().context("coturn installed, but no `turnserver` binary found")
}

/// The child processes of one run, killed in reverse start order on drop.
#[derive(Default)]
struct Procs(Vec<Guard>);

impl Procs {
    fn spawn(&mut self, cmd: &mut Command, what: &str) -> Result<&mut Child> {
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        self.0.push(Guard(child));
        let last = self.0.len() - 1;
        Ok(&mut self.0[last].0)
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some(guard) = self.0.pop() {
            drop(guard);
        }
    }
}

/// Lines of a child's stdout, read on a thread so every wait has a bound.
fn lines_of(child: &mut Child) -> Result<mpsc::Receiver<String>> {
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// The next line before `deadline`.
fn next_line(rx: &mpsc::Receiver<String>, deadline: Instant, what: &str) -> Result<String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(line) => Ok(line),
        Err(mpsc::RecvTimeoutError::Timeout) => bail!("timed out waiting for {what}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!("exited while waiting for {what}"),
    }
}

/// The string value of `"key":"..."` in a JSON line (values here have no
/// escaped quotes).
fn json_str<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    line[start..].split('"').next()
}

/// CPU seconds (user + system) `pid` has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after "(comm)": state is the first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / TICKS_PER_SEC
}

/// Datagrams dropped so far at `pid`'s UDP sockets because their receive
/// buffer was full (the `drops` column of `/proc/PID/net/udp`, summed over
/// the sockets among the process's file descriptors).
fn udp_drops(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    ["udp", "udp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let inode = fields.get(9)?;
                    inodes
                        .contains(*inode)
                        .then(|| fields.get(12)?.parse::<u64>().ok())
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// A loopback UDP port that was free a moment ago.
fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until a STUN server answers a Binding request on `addr`.
fn wait_for_stun(addr: SocketAddr, deadline: Instant) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    // Binding request: type 0x0001, length 0, magic cookie, transaction id.
    let mut request = [0u8; 20];
    request[..2].copy_from_slice(&[0x00, 0x01]);
    request[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    request[8..].copy_from_slice(b"parlor-bench");
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        socket.send_to(&request, addr)?;
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n >= 20
            && buf[..2] == [0x01, 0x01]
            && buf[8..20] == request[8..]
        {
            return Ok(());
        }
    }
    bail!("no STUN answer from {addr}")
}

/// Whether the files hold the same bytes.
fn same_contents(a: &Path, b: &Path) -> Result<bool> {
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    let mut a = BufReader::with_capacity(1 << 20, std::fs::File::open(a)?);
    let mut b = BufReader::with_capacity(1 << 20, std::fs::File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// The last `n` lines of a log file, indented.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("      {l}\n"))
        .collect()
}

impl Bench {
    /// One transfer through `variant` with fresh processes; on failure the
    /// error carries the ends of the processes' logs.
    fn run_once(
        &self,
        variant: Variant,
        round: usize,
        hash: &mut Option<String>,
    ) -> Result<Sample> {
        let dir = self.dir.join(format!("run-{round}-{variant:?}"));
        std::fs::create_dir_all(&dir)?;
        let result = self.transfer(variant, &dir, hash);
        let result = result.map_err(|err| {
            let logs: String = ["coturn", "server", "sender", "receiver"]
                .iter()
                .map(|name| dir.join(format!("{name}.log")))
                .filter(|path| path.exists())
                .map(|path| format!("\n    {}:\n{}", path.display(), tail(&path, 15)))
                .collect();
            err.context(logs)
        });
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn log(dir: &Path, name: &str) -> Result<std::fs::File> {
        Ok(std::fs::File::create(dir.join(format!("{name}.log")))?)
    }

    fn transfer(&self, variant: Variant, dir: &Path, hash: &mut Option<String>) -> Result<Sample> {
        let mut procs = Procs::default();
        let deadline = Instant::now() + START_TIMEOUT;

        // The relay, and the signaling server that hands out its address.
        let mut server_args: Vec<String> = vec!["--listen".into(), "127.0.0.1:0".into()];
        let mut relay_pid = None;
        match variant {
            Variant::Embedded => server_args.extend(
                [
                    "--turn-port",
                    "0",
                    "--turn-allow-private",
                    "--turn-max-bandwidth",
                    NO_CAP,
                ]
                .map(String::from),
            ),
            Variant::Coturn => {
                let port = free_udp_port()?;
                let coturn = procs.spawn(
                    Command::new(&self.turnserver)
                        .args([
                            "-n",
                            "--listening-ip=127.0.0.1",
                            "--relay-ip=127.0.0.1",
                            "--use-auth-secret",
                            "--realm=parlor",
                            "--allow-loopback-peers",
                            "--no-tcp",
                            "--no-tls",
                            "--no-dtls",
                            "--no-cli",
                            "--log-file=stdout",
                            "--simple-log",
                        ])
                        .arg(format!("--listening-port={port}"))
                        .arg(format!("--static-auth-secret={SECRET}"))
                        .arg(format!(
                            "--pidfile={}",
                            dir.join("turnserver.pid").display()
                        ))
                        .arg(format!("--db={}", dir.join("turndb").display()))
                        .stdin(Stdio::null())
                        .stdout(Self::log(dir, "coturn")?)
                        .stderr(Stdio::null()),
                    "turnserver",
                )?;
                relay_pid = Some(coturn.id());
                wait_for_stun(SocketAddr::from(([127, 0, 0, 1], port)), deadline)
                    .context("coturn did not start")?;
                server_args.extend([
                    "--no-turn".into(),
                    "--turn-url".into(),
                    format!("turn:127.0.0.1:{port}?transport=udp"),
                    "--turn-secret".into(),
                    SECRET.into(),
                ]);
            }
            Variant::ServerRelay => {
                server_args.extend(["--no-turn", "--relay-max-bandwidth", NO_CAP].map(String::from))
            }
        }
        let server = procs.spawn(
            Command::new(self.bin.join("parlor-server"))
                .args(&server_args)
                .env("PARLOR_LOG", "warn,turn=off")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Self::log(dir, "server")?),
            "parlor-server",
        )?;
        let server_pid = server.id();
        let server_lines = lines_of(server)?;
        let line = next_line(&server_lines, deadline, "the server's address")?;
        let base = line
            .strip_prefix("parlor-server listening on ")
            .with_context(|| format!("unexpected first server line: {line}"))?
            .to_owned();
        // Keep draining, so the server never blocks on a full pipe.
        std::thread::spawn(move || server_lines.into_iter().for_each(drop));
        let relay_pid = relay_pid.unwrap_or(server_pid);

        // The peers.
        let peer = |name: &str| -> Result<Command> {
            let mut cmd = Command::new(self.bin.join("parlor"));
            cmd.args([
                "--json",
                "--ephemeral",
                "--name",
                name,
                "--force-relay",
                variant.force(),
            ])
            .env("PARLOR_LOG", "error,parlor=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Self::log(dir, name)?);
            Ok(cmd)
        };
        let sender = procs.spawn(
            peer("sender")?
                .args(["send", "--server", &base])
                .arg(&self.src),
            "the sender",
        )?;
        let sender_pid = sender.id();
        let sender_lines = lines_of(sender)?;
        let link = loop {
            let line = next_line(&sender_lines, deadline, "the invite link")?;
            if json_str(&line, "event") == Some("invite") {
                break json_str(&line, "link")
                    .context("invite without link")?
                    .to_owned();
            }
            if json_str(&line, "event") == Some("error") {
                bail!("sender: {line}");
            }
        };
        std::thread::spawn(move || sender_lines.into_iter().for_each(drop));
        let out = dir.join("out");
        let receiver = procs.spawn(
            peer("receiver")?
                .args(["receive", &link, "--out"])
                .arg(&out),
            "the receiver",
        )?;
        let receiver_pid = receiver.id();
        let lines = lines_of(receiver)?;

        // Connected -> file_received, on the expected path only.
        let cpu = || {
            (
                cpu_secs(relay_pid),
                cpu_secs(sender_pid) + cpu_secs(receiver_pid),
            )
        };
        let mut deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut start: Option<(Instant, (f64, f64))> = None;
        let (secs, (relay_cpu, peers_cpu), received_hash) = loop {
            let what = if start.is_some() {
                "file_received"
            } else {
                "connected"
            };
            let line = next_line(&lines, deadline, what)?;
            match json_str(&line, "event") {
                Some("connected") => {
                    let path = json_str(&line, "path").unwrap_or_default();
                    ensure!(
                        path == variant.path(),
                        "connected over {path}, not {}: {line}",
                        variant.path()
                    );
                    if start.is_none() {
                        start = Some((Instant::now(), cpu()));
                        deadline = Instant::now() + TRANSFER_TIMEOUT;
                    }
                }
                Some("file_received") => {
                    let (at, (relay0, peers0)) = start.context("file before connected")?;
                    let secs = at.elapsed().as_secs_f64();
                    let (relay1, peers1) = cpu();
                    let hash = json_str(&line, "hash").unwrap_or_default().to_owned();
                    break (secs, (relay1 - relay0, peers1 - peers0), hash);
                }
                Some("error" | "transfer_failed" | "disconnected") => bail!("receiver: {line}"),
                _ => {}
            }
        };
        // The sockets are new with each run, so their counts are this run's.
        let relay_drops = udp_drops(relay_pid);
        let peers_drops = udp_drops(sender_pid) + udp_drops(receiver_pid);
        drop(procs);

        let name = self.src.file_name().context("source file name")?;
        ensure!(
            same_contents(&self.src, &out.join(name))?,
            "the received file differs from the source"
        );
        match hash {
            Some(first) => ensure!(
                *first == received_hash,
                "hash {received_hash} differs from an earlier run's {first}"
            ),
            None => *hash = Some(received_hash),
        }
        Ok(Sample {
            mib_per_sec: self.mib as f64 / secs,
            relay_cpu,
            peers_cpu,
            relay_drops,
            peers_drops,
        })
    }
}

/// Prints the per-run speeds, medians and ratios as a markdown table.
fn print_table(bench: &Bench, rounds: usize, results: &[Vec<Option<Sample>>]) {
    let ok =
        |v: Variant| -> Vec<Sample> { results[v as usize].iter().flatten().copied().collect() };
    let med = |v: Variant, f: fn(&Sample) -> f64| {
        let samples = ok(v);
        (!samples.is_empty()).then(|| median(&samples.iter().map(f).collect::<Vec<_>>()))
    };
    let speed = |v: Variant| med(v, |s| s.mib_per_sec);
    println!();
    println!(
        "{} MiB, {rounds} rounds; MiB/s from the receiver's `connected` to `file_received`; \
         CPU seconds and UDP datagrams dropped at full receive buffers during that time \
         (medians):",
        bench.mib
    );
    println!();
    let runs: String = (1..=rounds).map(|r| format!(" {r} |")).collect();
    println!(
        "| relay |{runs} median MiB/s | relay CPU-s | peers CPU-s | relay drops | peers drops |"
    );
    println!("|---|{}---|---|---|---|---|", "---|".repeat(rounds));
    let cell = |x: Option<f64>, digits: usize| {
        x.map_or_else(|| "–".to_owned(), |x| format!("{x:.digits$}"))
    };
    for (&variant, runs) in VARIANTS.iter().zip(results) {
        let cells: String = runs
            .iter()
            .map(|s| match s {
                Some(s) => format!(" {:.1} |", s.mib_per_sec),
                None => " failed |".to_owned(),
            })
            .collect();
        println!(
            "| {} |{cells} **{}** | {} | {} | {} | {} |",
            variant.label(),
            cell(speed(variant), 1),
            cell(med(variant, |s| s.relay_cpu), 1),
            cell(med(variant, |s| s.peers_cpu), 1),
            cell(med(variant, |s| s.relay_drops as f64), 0),
            cell(med(variant, |s| s.peers_drops as f64), 0),
        );
    }
    println!();
    // Per-round ratios pair runs made moments apart, so slow drifts in the
    // machine's load cancel out; their median is the steadier figure.
    let ratios = |a: Variant, b: Variant| {
        let paired: Vec<f64> = results[a as usize]
            .iter()
            .zip(&results[b as usize])
            .filter_map(|(x, y)| Some(x.as_ref()?.mib_per_sec / y.as_ref()?.mib_per_sec))
            .collect();
        let of_medians = match (speed(a), speed(b)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "–".to_owned(),
        };
        let list: Vec<String> = paired.iter().map(|x| format!("{x:.2}")).collect();
        format!(
            "**{of_medians}** (ratio of medians); median of per-round ratios {} ({})",
            cell((!paired.is_empty()).then(|| median(&paired)), 2),
            list.join(", ")
        )
    };
    println!(
        "- embedded / coturn: {}",
        ratios(Variant::Embedded, Variant::Coturn)
    );
    println!(
        "- server relay / embedded: {}",
        ratios(Variant::ServerRelay, Variant::Embedded)
    );
}
